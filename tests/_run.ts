/**
 * `deno task test`: runs the test suite (all of `tests/` but the guest
 * tests, or the paths and flags given), then says what was skipped and what
 * to install so that it runs. The exit status is the suite's.
 *
 * Interrupted (Ctrl-C, SIGTERM, SIGHUP), it leaves nothing behind.
 * `deno test` ends at once on SIGINT, before the termination hooks of the
 * running test could stop its daemons (which run in sessions of their own:
 * no Ctrl-C reaches them) or remove its folders. So `deno test` runs here in
 * a session of its own, out of the terminal's reach, with a private
 * `TMPDIR`, and a signal to this process becomes a SIGTERM to that
 * session's process group: in the test process the hooks run (every file
 * gets one, `_interruptible.ts`) and `deno test` then ends, listing the
 * tests that were pending; test children that are not in sessions of their
 * own get the SIGTERM too. Whatever still refers to the private `TMPDIR`
 * afterwards (a process, a file) is removed and named, and the exit status
 * is 130 (143 for SIGTERM, 129 for SIGHUP). A second Ctrl-C, a second or
 * more later, does not wait for the hooks.
 */

import { findExecutable } from "../src/testing/daemon_process.ts";
import { within } from "../src/process/within.ts";
import { processesUsing } from "./_processes.ts";
import { INSTALL_HINTS, type Requirement } from "./_requirements.ts";

type Stop = "SIGINT" | "SIGTERM" | "SIGHUP";
const STATUS: Record<Stop, number> = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 };

let stopping: { signal: Stop; at: number } | undefined;
let target: number | undefined; // the test session's process group (or the process, without setsid)
let ended: Promise<unknown> = Promise.resolve();

function send(signal: Deno.Signal): void {
  if (target === undefined) return;
  try {
    Deno.kill(target, signal);
  } catch {
    // ended already
  }
}

/** SIGTERM (the hooks run), then SIGINT (deno test's own handler), then SIGKILL, each after a wait. */
async function stop(): Promise<void> {
  send("SIGTERM");
  if (await within(ended, 10_000) !== undefined) return;
  send("SIGINT");
  if (await within(ended, 3_000) !== undefined) return;
  send("SIGKILL");
}

const listeners = (["SIGINT", "SIGTERM", "SIGHUP"] as const).map((signal) => {
  const listener = () => {
    if (stopping === undefined) {
      stopping = { signal, at: performance.now() };
      void stop();
    } else if (performance.now() - stopping.at > 1000) {
      send("SIGKILL"); // a second Ctrl-C (not deno task's copy of the first): no more waiting
    }
  };
  Deno.addSignalListener(signal, listener);
  return [signal, listener] as const;
});

const root = await privateFolder();
const log = `${root}/.skipped`;
const given = Deno.args;
const args = [
  "test",
  "--allow-all",
  `--preload=${new URL("./_interruptible.ts", import.meta.url).pathname}`,
  ...(given.some((a) => !a.startsWith("-")) ? given : [...given, "tests/"]),
];
if (!given.some((a) => a.startsWith("tests/guest"))) args.splice(2, 0, "--ignore=tests/guest");
let code = 1;
try {
  await Deno.writeTextFile(log, "");
  const setsid = findExecutable("setsid");
  const child = new Deno.Command(setsid ?? Deno.execPath(), {
    args: setsid ? [Deno.execPath(), ...args] : args,
    env: { VIRTIO_SKIP_LOG: log, TMPDIR: root },
  }).spawn();
  target = setsid ? -child.pid : child.pid;
  ended = child.status;
  if (stopping) void stop(); // a signal while it was being started
  const status = await child.status;
  code = status.signal ? 128 + (status.signal === "SIGINT" ? 2 : 15) : status.code;
  if (stopping) {
    code = STATUS[stopping.signal];
    console.error(`\ninterrupted (${stopping.signal}): the test run was stopped`);
  } else {
    const counts = new Map<string, number>();
    for (const line of (await Deno.readTextFile(log)).split("\n")) {
      if (line) counts.set(line, (counts.get(line) ?? 0) + 1);
    }
    const total = [...counts.values()].reduce((a, b) => a + b, 0);
    if (total === 0) {
      console.error("\nnothing skipped: every test ran (the QEMU-guest tests run with deno task test:guest)");
    } else {
      console.error(`\nSKIPPED ${total} test${total === 1 ? "" : "s"}, for want of:`);
      for (const [what, n] of counts) {
        console.error(`  ${String(n).padStart(4)} need ${what}: ${INSTALL_HINTS[what as Requirement] ?? "?"}`);
      }
    }
  }
} finally {
  // Test children outside the test process's session got the SIGTERM too, and may still be releasing what
  // they own (a deno task fio stopping its private daemon): they have a few seconds to end by themselves.
  const left = await removeLeftovers(root, stopping ? 5000 : 1000);
  if (left.length > 0) {
    console.error(`\nleft behind by the tests, now removed:\n${left.map((l) => `  ${l}`).join("\n")}`);
    if (!stopping && code === 0) code = 1; // a passing run releases what it made
  }
  for (const [signal, listener] of listeners) Deno.removeSignalListener(signal, listener);
}
Deno.exit(code);

/**
 * A new folder for the run in `$TMPDIR` (default /tmp), private to this
 * user. Its name is short: the tests' daemons put Unix sockets a few
 * folders below it, and a socket's path has at most 107 bytes.
 */
async function privateFolder(): Promise<string> {
  const base = (Deno.env.get("TMPDIR") || "/tmp").replace(/\/$/, "");
  for (;;) {
    const name = `${base}/vt-${crypto.getRandomValues(new Uint32Array(1))[0].toString(36)}`;
    try {
      await Deno.mkdir(name, { mode: 0o700 });
      return name;
    } catch (e) {
      if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
    }
  }
}

/**
 * Ends the processes that still refer to the run's folder once `graceMs`
 * has passed (SIGTERM, then SIGKILL after 2 s) and removes the folder.
 *
 * @returns what was there besides the skip log: processes and files
 */
async function removeLeftovers(folder: string, graceMs: number): Promise<string[]> {
  const found: string[] = [];
  let procs = processesUsing(folder);
  for (const deadline = performance.now() + graceMs; procs.length > 0 && performance.now() < deadline;) {
    await new Promise((r) => setTimeout(r, 50));
    procs = processesUsing(folder);
  }
  for (const p of procs) {
    found.push(`process ${p.pid}: ${p.command.length > 160 ? `${p.command.slice(0, 160)}…` : p.command}`);
    try {
      Deno.kill(p.pid, "SIGTERM");
    } catch { /* ended */ }
  }
  for (const deadline = performance.now() + 2000; procs.length > 0 && performance.now() < deadline;) {
    await new Promise((r) => setTimeout(r, 50));
    procs = processesUsing(folder);
  }
  for (const p of procs) {
    try {
      Deno.kill(p.pid, "SIGKILL");
    } catch { /* ended */ }
  }
  try {
    for (const e of Deno.readDirSync(folder)) if (e.name !== ".skipped") found.push(`${folder}/${e.name}`);
  } catch {
    return found; // gone already
  }
  for (let attempt = 0;; attempt++) {
    try {
      await Deno.remove(folder, { recursive: true });
      break;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound || attempt === 10) break;
      await new Promise((r) => setTimeout(r, 100)); // something was still writing in it
    }
  }
  return found;
}
