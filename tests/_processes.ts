/**
 * Finding the processes a test run left behind: those that refer to a
 * folder (named on their command line, their working folder, or their
 * `TMPDIR`), from /proc. For `deno task test`'s clean-up after an
 * interrupted run, and for the test that checks it.
 */

/** A process, as /proc shows it. */
export interface ProcessInfo {
  /** Its id. */
  readonly pid: number;
  /** Its command line, arguments joined by spaces. */
  readonly command: string;
}

/** Whether `text` names `folder` or something in it (not merely a longer name that starts the same). */
function mentions(text: string, folder: string): boolean {
  for (let at = text.indexOf(folder); at >= 0; at = text.indexOf(folder, at + 1)) {
    const next = text[at + folder.length];
    if (next === undefined || !/[\w.-]/.test(next)) return true;
  }
  return false;
}

function under(path: string | undefined, folder: string): boolean {
  return path !== undefined && (path === folder || path.startsWith(`${folder}/`));
}

/**
 * The live processes (zombies aside, this one too) that refer to `folder`:
 * it appears on their command line, or it holds their working folder, or
 * their `TMPDIR` is in it. Processes of other users are not readable and
 * not listed.
 *
 * @param folder an absolute path
 * @returns what refers to it
 */
export function processesUsing(folder: string): ProcessInfo[] {
  const out: ProcessInfo[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name) || Number(e.name) === Deno.pid) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      if (stat[stat.lastIndexOf(")") + 2] === "Z") continue;
      const command = Deno.readTextFileSync(`/proc/${e.name}/cmdline`).split("\0").join(" ").trim();
      if (command === "") continue; // a kernel thread
      let cwd: string | undefined;
      try {
        cwd = Deno.readLinkSync(`/proc/${e.name}/cwd`);
      } catch {
        cwd = undefined;
      }
      let tmpdir: string | undefined;
      try {
        tmpdir = Deno.readTextFileSync(`/proc/${e.name}/environ`).split("\0").find((v) => v.startsWith("TMPDIR="))
          ?.slice(7);
      } catch {
        tmpdir = undefined;
      }
      if (mentions(command, folder) || under(cwd, folder) || under(tmpdir, folder)) {
        out.push({ pid: Number(e.name), command });
      }
    } catch {
      // ended meanwhile, or another user's
    }
  }
  return out;
}
