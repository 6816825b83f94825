/** Shared test helpers. */

import type { VirtioBlk, VirtioBlkEventMap } from "../mod.ts";
import { DpdkVhostBlk } from "../src/testing/dpdk_vhost_blk.ts";
import { QemuStorageDaemon } from "../src/testing/qsd.ts";
import { onTermination } from "../src/process/terminate.ts";
import { within } from "../src/process/within.ts";

import { INSTALL_HINTS, type Requirement } from "./_requirements.ts";

const available: Record<Exclude<Requirement, "qemu-storage-daemon-8.1">, boolean> = {
  "qemu-storage-daemon": await QemuStorageDaemon.available(),
  "linux-headers": await Deno.stat("/usr/include/linux/vfio.h").then(() => true, () => false),
  "dpdk-vhost-blk": (await DpdkVhostBlk.missing()) === undefined,
  "c-compiler": await new Deno.Command(Deno.env.get("CC") || "cc", {
    args: ["--version"],
    stdout: "null",
    stderr: "null",
  })
    .output().then((o) => o.success, () => false),
};

/** Whether qemu-storage-daemon can run here; when not, integration tests are skipped loudly. */
export const HAVE_QSD = available["qemu-storage-daemon"];

for (const [what, ok] of Object.entries(available)) {
  if (ok) continue;
  const msg = `${what} not found: SKIPPING the tests that need it (${INSTALL_HINTS[what as Requirement]})`;
  // CI sets this: there, a skip is a failure.
  if (Deno.env.get("VIRTIO_REQUIRE_ALL") === "1") {
    throw new Error(msg);
  }
  console.warn(`\n*** ${msg} ***\n`);
}

/**
 * Whether a test that needs `what` must be skipped here (use as `ignore:`).
 * Each skip is recorded in `$VIRTIO_SKIP_LOG` (set by `deno task test`),
 * which prints a summary of what was skipped and why at the end.
 *
 * @param what the requirement
 * @param here whether it is met, for requirements this module does not check itself
 * @returns true to skip
 */
export function missing(what: Requirement, here?: boolean): boolean {
  if (here ?? available[what as keyof typeof available]) return false;
  const log = Deno.env.get("VIRTIO_SKIP_LOG");
  if (log) Deno.writeTextFileSync(log, `${what}\n`, { append: true });
  return true;
}

/** Open descriptors of this process. */
export function fdCount(): number {
  let n = 0;
  for (const _ of Deno.readDirSync("/proc/self/fd")) n++;
  return n;
}

/**
 * A count (descriptors, mappings) once it has come back to `expected`, or
 * after `ms`: a terminated Worker's thread releases what its own runtime
 * holds (its event loop's descriptors) after `terminate()` returns. A leak
 * still fails: the count never comes back.
 *
 * @param count what to count
 * @param expected the count to wait for
 * @param ms how long at most
 * @returns the last count seen
 */
export async function settledCount(count: () => number, expected: number, ms = 2000): Promise<number> {
  const deadline = performance.now() + ms;
  let n = count();
  while (n !== expected && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
    n = count();
  }
  return n;
}

/** Mappings of this library's memfds in this process. */
export function memfdMappings(): number {
  return Deno.readTextFileSync("/proc/self/maps").split("\n").filter((l) => l.includes("memfd:virtio")).length;
}

/** A deterministic PRNG (xorshift32). */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0 || 1;
  }
  next(): number {
    let x = this.#s;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    this.#s = x;
    return x;
  }
  /** An integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + (this.next() % (hi - lo + 1));
  }
  fill(buf: Uint8Array): void {
    let i = 0;
    for (; i + 4 <= buf.length; i += 4) {
      const v = this.next();
      buf[i] = v;
      buf[i + 1] = v >>> 8;
      buf[i + 2] = v >>> 16;
      buf[i + 3] = v >>> 24;
    }
    for (; i < buf.length; i++) buf[i] = this.next();
  }
}

/** Finds the first differing byte of two arrays, or -1. */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/**
 * SIGSTOPs a process and waits until every one of its threads is stopped.
 *
 * @param pid the process
 */
export async function stopProcess(pid: number): Promise<void> {
  Deno.kill(pid, "SIGSTOP");
  for (const deadline = performance.now() + 5000;;) {
    const states = [...Deno.readDirSync(`/proc/${pid}/task`)].map((t) => {
      const stat = Deno.readTextFileSync(`/proc/${pid}/task/${t.name}/stat`);
      return stat[stat.lastIndexOf(")") + 2]; // the state field follows "(comm) "
    });
    if (states.every((s) => s === "T" || s === "t")) return;
    if (performance.now() > deadline) throw new Error(`process ${pid} did not stop: ${states}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

/**
 * The `detail` of the next event `type` of `blk`, or a failure after `ms`
 * (the listener is removed either way). The failure is the awaiting test's:
 * a timeout while the test still awaits something else is not an unhandled
 * rejection that takes the whole file down.
 */
export function nextEvent<K extends keyof VirtioBlkEventMap>(
  blk: VirtioBlk,
  type: K,
  ms = 1000,
): Promise<VirtioBlkEventMap[K]["detail"]> {
  const next = new Promise<VirtioBlkEventMap[K]["detail"]>((resolve, reject) => {
    const on = (e: VirtioBlkEventMap[K]) => {
      clearTimeout(timer);
      blk.removeEventListener(type, on);
      resolve(e.detail);
    };
    const timer = setTimeout(() => {
      blk.removeEventListener(type, on);
      reject(new Error(`no ${type} within ${ms} ms`));
    }, ms);
    blk.addEventListener(type, on);
  });
  return awaitedLater(next); // whoever awaits it still gets the rejection
}

/**
 * `p`, already handled: a test that makes a request, awaits other things
 * (a sleep, a daemon's restart, an event) and only then awaits the request
 * would otherwise turn a rejection in between into an unhandled rejection
 * that takes the whole file down. Awaiting the result still throws it.
 *
 * @param p a promise the test awaits later
 * @returns `p`
 */
export function awaitedLater<T>(p: Promise<T>): Promise<T> {
  p.catch(() => {});
  return p;
}

/** `length` bytes of a file from `offset`, read directly (the independent reader of an image). */
export async function imageBytes(path: string, offset: number, length: number): Promise<Uint8Array> {
  using f = await Deno.open(path);
  await f.seek(offset, Deno.SeekMode.Start);
  const out = new Uint8Array(length);
  for (let at = 0; at < length;) {
    const n = await f.read(out.subarray(at));
    if (n === null) break;
    at += n;
  }
  return out;
}

/** A temporary folder a test owns (see {@linkcode tempDir}). */
export interface TempDir extends AsyncDisposable {
  /** Its path. */
  readonly path: string;
}

/**
 * A new temporary folder (in `dir`, default `$TMPDIR`), removed with all it
 * holds when disposed — and, should the run be interrupted (SIGINT, SIGTERM,
 * SIGHUP: `deno task test` turns a Ctrl-C into a SIGTERM to the test
 * process), by a termination hook of `src/process/terminate.ts` before the
 * process ends, as the fixtures' daemons are stopped.
 *
 * @param prefix the folder name's start
 * @param dir where to make it
 * @returns the folder; `await using` it
 */
export async function tempDir(prefix = "virtio-test-", dir?: string): Promise<TempDir> {
  const path = await Deno.makeTempDir({ prefix, ...(dir ? { dir } : {}) });
  const hook = onTermination(() => removeTree(path));
  return {
    path,
    async [Symbol.asyncDispose]() {
      hook[Symbol.dispose]();
      await Deno.remove(path, { recursive: true }).catch((e) => {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      });
    },
  };
}

/**
 * A file or folder to remove should the run be interrupted (a termination
 * hook), as {@linkcode tempDir} does for a folder it makes; for paths made
 * elsewhere (a script saved in the checkout). Disposing it unregisters the
 * hook and removes nothing.
 *
 * @param path what to remove on a signal
 * @returns the registration
 */
export function removedOnSignal(path: string): Disposable {
  return onTermination(() => removeTree(path));
}

function removeTree(path: string): void {
  try {
    Deno.removeSync(path, { recursive: true });
  } catch {
    // gone already
  }
}

/**
 * Makes a test's child process end with the run should the run be
 * interrupted: a termination hook sends it `signal` (to its whole process
 * group when it leads one, e.g. started through `setsid`, since a group
 * signal from the terminal no longer reaches it) and waits a little for it,
 * so that its own hooks remove what it made, then SIGKILLs what is left.
 *
 * @param child the process
 * @param options `group`: signal its process group (it was started in a session of its own)
 * @returns the registration; dispose it once the child has ended
 */
export function endedOnSignal(
  child: Deno.ChildProcess,
  options: { group?: boolean; signal?: Deno.Signal } = {},
): Disposable {
  const target = options.group ? -child.pid : child.pid;
  return onTermination(async () => {
    const send = (signal: Deno.Signal) => {
      try {
        Deno.kill(target, signal);
      } catch {
        // ended already
      }
    };
    send(options.signal ?? "SIGINT");
    if (await within(child.status, 1200) === undefined) send("SIGKILL");
  });
}

/** What a command run through `deno task` left: its status and the files its output went to. */
export interface TaskRun {
  /** The exit status (128 + n when a signal ended it). */
  code: number;
  /** Its stdout, read back from the file it went to. */
  stdout: string;
  /** The same, as bytes. */
  stdoutBytes: Uint8Array;
  /** Its stderr, without `deno task`'s own `Task …` line. */
  stderr: string;
}

const ROOT = new URL("..", import.meta.url).pathname;

/**
 * The environment of a user's shell: this process's, with `extra`, and
 * without the `INIT_CWD` that a `deno task test` running the tests left
 * (deno task keeps one already set, and would take the user's relative
 * paths from there instead of from the folder the command runs in).
 */
function shellEnv(extra: Record<string, string>): Record<string, string> {
  const env = Deno.env.toObject();
  delete env.INIT_CWD;
  return { ...env, ...extra, NO_COLOR: "1" };
}

/** The shell line that runs `deno task "$@"` with stdout and stderr in files ($STDIN, when set, as stdin). */
const TASK_LINE =
  'if [ -n "$STDIN" ]; then exec < "$STDIN"; fi; exec "$DENO" task "$@" > "$OUT/stdout" 2> "$OUT/stderr"';

/**
 * Runs `deno task ARGS…` as a user does in a shell: from `cwd` (default the
 * checkout), with stdout and stderr going to files (not pipes), stdin from
 * a file or /dev/null. `NO_COLOR` is set.
 *
 * @param args the task and its arguments, e.g. `["fio", "--runtime", "1"]`
 * @param options `cwd`, extra `env`, `stdin` (a file)
 * @returns the exit status and what was written
 */
export async function denoTask(
  args: string[],
  options: { cwd?: string; env?: Record<string, string>; stdin?: string } = {},
): Promise<TaskRun> {
  await using out = await tempDir("virtio-task-");
  const child = new Deno.Command("sh", {
    args: ["-c", TASK_LINE, "sh", ...args],
    cwd: options.cwd ?? ROOT,
    env: shellEnv({ ...options.env, DENO: Deno.execPath(), OUT: out.path, STDIN: options.stdin ?? "/dev/null" }),
    clearEnv: true,
    stdin: "null",
  }).spawn();
  using _onSignal = endedOnSignal(child);
  const status = await child.status;
  return await taskOutput(status, out.path);
}

async function taskOutput(status: Deno.CommandStatus, dir: string): Promise<TaskRun> {
  const stdoutBytes = await Deno.readFile(`${dir}/stdout`);
  const stderr = (await Deno.readTextFile(`${dir}/stderr`)).split("\n").filter((l) => !/^Task \S+ /.test(l)).join("\n");
  return {
    code: status.signal
      ? 128 + ({ SIGINT: 2, SIGTERM: 15, SIGKILL: 9 } as Record<string, number>)[status.signal]
      : status.code,
    stdout: new TextDecoder().decode(stdoutBytes),
    stdoutBytes,
    stderr,
  };
}

/**
 * Runs `deno task ARGS…` (or a shell pipeline that ends in one, with
 * `shell`) as a terminal runs a foreground job — a process group of its
 * own, output in files — and sends the whole group `signal` once `ready`
 * holds for what it has written so far (checked every 50 ms), as Ctrl-C
 * does.
 *
 * @param args the task and its arguments; or, with `options.shell`, arguments of that shell line
 * @param ready when to send the signal, given stdout and stderr so far
 * @param options `signal` (default SIGINT), `cwd`, `env`, `shell` (a line ending in `"$DENO" task "$@"`), `timeoutMs`
 * @returns the exit status and what was written
 */
export async function interruptTask(
  args: string[],
  ready: (stdout: string, stderr: string) => boolean | Promise<boolean>,
  options: { signal?: Deno.Signal; cwd?: string; env?: Record<string, string>; shell?: string; timeoutMs?: number } =
    {},
): Promise<TaskRun> {
  await using out = await tempDir("virtio-task-");
  const line = options.shell !== undefined
    // The shell waits for the pipeline and exits with its status (deno task's): a caught signal does not end it, and
    // its commands get the default action.
    ? `trap : INT TERM HUP; exec > "$OUT/stdout" 2> "$OUT/stderr" < /dev/null; ${options.shell}`
    : TASK_LINE.replace('if [ -n "$STDIN" ]; then exec < "$STDIN"; fi; ', "exec < /dev/null; ");
  const child = new Deno.Command("setsid", {
    args: ["sh", "-c", line, "sh", ...args],
    cwd: options.cwd ?? ROOT,
    env: shellEnv({ ...options.env, DENO: Deno.execPath(), OUT: out.path }),
    clearEnv: true,
    stdin: "null",
  }).spawn();
  using _onSignal = endedOnSignal(child, { group: true });
  const read = (name: string) => Deno.readTextFile(`${out.path}/${name}`).catch(() => "");
  const deadline = performance.now() + (options.timeoutMs ?? 60_000);
  try {
    while (!await ready(await read("stdout"), await read("stderr"))) {
      if (await within(child.status, 50) !== undefined) {
        throw new Error(`ended before it was time to signal it:\n${await read("stdout")}\n${await read("stderr")}`);
      }
      if (performance.now() > deadline) {
        throw new Error(`not ready in time:\n${await read("stdout")}\n${await read("stderr")}`);
      }
    }
    Deno.kill(-child.pid, options.signal ?? "SIGINT");
  } catch (e) {
    try {
      Deno.kill(-child.pid, "SIGKILL");
    } catch { /* ended */ }
    await child.status;
    throw e;
  }
  const status = await within(child.status, 20_000);
  // A pipeline's shell may end before its commands: the output is complete once the whole group is gone.
  for (const deadline = performance.now() + 20_000; status !== undefined && groupAlive(child.pid);) {
    if (performance.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  if (status === undefined || groupAlive(child.pid)) {
    Deno.kill(-child.pid, "SIGKILL");
    throw new Error("still running 20 s after the signal");
  }
  return await taskOutput(status, out.path);
}

/** Whether a process of group `pgid` (zombies aside) still runs. */
function groupAlive(pgid: number): boolean {
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (fields[0] !== "Z" && Number(fields[2]) === pgid) return true;
    } catch {
      // ended meanwhile
    }
  }
  return false;
}
