/**
 * A back-end daemon run as a child process for tests, the demo, the CLI and
 * benchmarks: started in a session of its own, its output copied to a log,
 * ready once its socket exists, and never outliving the program (stopped and
 * its folder removed on SIGINT, SIGTERM or SIGHUP; see
 * `src/process/terminate.ts`).
 *
 * Its own session keeps a Ctrl-C meant for the program from reaching the
 * daemon first: the program finishes with it (fio prints its summary), then
 * the termination hook stops it.
 *
 * @module
 */

import { isTerminating, onTermination } from "../process/terminate.ts";
import { within } from "../process/within.ts";

/**
 * The path of an executable: `name` itself when it has a slash, else the
 * first match on `$PATH`.
 *
 * @param name a program name or path
 * @returns its path, or undefined when there is none
 */
export function findExecutable(name: string): string | undefined {
  const isExecutable = (p: string) => {
    try {
      const st = Deno.statSync(p);
      return st.isFile && ((st.mode ?? 0o111) & 0o111) !== 0;
    } catch {
      return false;
    }
  };
  if (name.includes("/")) return isExecutable(name) ? name : undefined;
  let path = "";
  try {
    path = Deno.env.get("PATH") ?? "";
  } catch {
    // no --allow-env: nothing to search
  }
  for (const dir of path.split(":")) if (dir && isExecutable(`${dir}/${name}`)) return `${dir}/${name}`;
  return undefined;
}

/**
 * Whether a Unix socket is listening at `path` (from /proc/net/unix: the
 * socket file appears at bind(), a moment before listen(), and a connect in
 * between is refused).
 *
 * @param path the socket path
 * @returns true once it accepts connections
 */
export async function isListening(path: string): Promise<boolean> {
  const SO_ACCEPTCON = 0x10000;
  const table = await Deno.readTextFile("/proc/net/unix").catch(() => "");
  for (const line of table.split("\n")) {
    if (!line.endsWith(` ${path}`)) continue;
    const flags = parseInt(line.split(/\s+/)[3], 16);
    if (flags & SO_ACCEPTCON) return true;
  }
  return false;
}

/**
 * Removes `dir` should the process get SIGINT, SIGTERM or SIGHUP while the
 * registration lasts: for a folder made before its daemon's own hook is
 * registered (which then takes over), or one a build fills.
 *
 * @param dir the folder
 * @returns the registration; dispose it when the folder has another owner or is gone
 */
export function removedOnSignal(dir: string): Disposable {
  return onTermination(() => {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch {
      // gone already
    }
  });
}

/** How to run a daemon. */
export interface DaemonSpec {
  /** For messages, e.g. `qemu-storage-daemon`. */
  readonly name: string;
  /** The program (a name looked up on `$PATH`, or a path). */
  readonly binary: string;
  /** Its arguments. */
  readonly args: readonly string[];
  /** Its working folder (default: the daemon's folder). */
  readonly cwd?: string;
  /** Extra environment variables. */
  readonly env?: Readonly<Record<string, string>>;
  /** The socket whose appearance means it is ready. */
  readonly socketPath: string;
  /** Where its stdout and stderr go (appended). */
  readonly logPath: string;
  /** What to install when the binary is missing (one line). */
  readonly installHint: string;
  /** The signal that asks it to stop; default SIGTERM. */
  readonly stopSignal?: Deno.Signal;
  /** How long to wait for its socket; default 10000 ms. */
  readonly startTimeoutMs?: number;
}

/** A daemon process, restartable, owning its folder when it created it. */
export class DaemonProcess {
  /** The folder of its socket, log and data. */
  readonly dir: string;
  readonly #spec: DaemonSpec;
  readonly #ownsDir: boolean;
  #child: Deno.ChildProcess | undefined;
  #status: Promise<Deno.CommandStatus | undefined> = Promise.resolve(undefined);
  #exited = true;
  #stopped = false;
  #hook: Disposable | undefined;

  private constructor(spec: DaemonSpec, dir: string, ownsDir: boolean) {
    this.#spec = spec;
    this.dir = dir;
    this.#ownsDir = ownsDir;
  }

  /**
   * Starts a daemon and waits until its socket exists. On failure nothing is
   * left running and an owned folder is removed.
   *
   * @param spec how to run it
   * @param dir its folder
   * @param ownsDir whether {@linkcode DaemonProcess.stop} removes the folder
   * @param stopOnSignal whether SIGINT/SIGTERM/SIGHUP stop it (default true)
   * @returns the running daemon
   */
  static async start(spec: DaemonSpec, dir: string, ownsDir: boolean, stopOnSignal = true): Promise<DaemonProcess> {
    if (isTerminating()) {
      // Its hook would never run: the hooks of a signal already being handled are running.
      if (ownsDir) await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw new Error(`${spec.name} not started: this process is stopping on a signal`);
    }
    const d = new DaemonProcess(spec, dir, ownsDir);
    if (stopOnSignal) d.#hook = onTermination(() => d.#stopOnSignal());
    try {
      await d.spawn();
    } catch (e) {
      d.#hook?.[Symbol.dispose]();
      if (ownsDir) await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw e;
    }
    return d;
  }

  /** The process id of the current run. */
  get pid(): number {
    if (!this.#child) throw new Error(`${this.#spec.name} is not running`);
    return this.#child.pid;
  }

  /** Whether the current run has ended. */
  get exited(): boolean {
    return this.#exited;
  }

  /**
   * Waits for the current run to end, for at most `timeoutMs`; then its
   * whole output is in the log.
   *
   * @param timeoutMs how long to wait
   * @returns how it ended, or undefined if it still runs (or never started)
   */
  exitStatus(timeoutMs: number): Promise<Deno.CommandStatus | undefined> {
    return within(this.#status, timeoutMs);
  }

  /** Starts (again) and waits until its socket listens; a stale socket of an earlier run is removed first. */
  async spawn(): Promise<void> {
    if (this.#stopped) throw new Error(`${this.#spec.name} was stopped`);
    if (isTerminating()) throw new Error(`${this.#spec.name} not started: this process is stopping on a signal`);
    const spec = this.#spec;
    await Deno.remove(spec.socketPath).catch(() => {});
    const binary = findExecutable(spec.binary);
    if (binary === undefined) throw new Deno.errors.NotFound(`${spec.binary} not found: ${spec.installHint}`);
    const setsid = findExecutable("setsid");
    const log = await Deno.open(spec.logPath, { create: true, append: true });
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(setsid ?? binary, {
        args: setsid ? [binary, ...spec.args] : [...spec.args],
        cwd: spec.cwd ?? this.dir,
        env: spec.env ? { ...spec.env } : undefined,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
    } catch (e) {
      log.close();
      throw e;
    }
    this.#child = child;
    this.#exited = false;
    // Copy the output into the log (a writable stream takes one pipe at a time).
    const copy = async (stream: ReadableStream<Uint8Array>) => {
      for await (const chunk of stream) await log.write(chunk);
    };
    const pump = Promise.all([copy(child.stdout), copy(child.stderr)]).finally(() => log.close());
    this.#status = Promise.all([child.status, pump.catch(() => {})]).then(([s]) => {
      this.#exited = true;
      return s;
    });
    const deadline = performance.now() + (spec.startTimeoutMs ?? 10_000);
    while (!(await isListening(spec.socketPath))) {
      if (this.#exited || performance.now() > deadline) {
        await this.kill();
        const text = await Deno.readTextFile(spec.logPath).catch(() => "");
        throw new Error(`${spec.name} did not start (${spec.args.join(" ")}):\n${text}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /**
   * Sends a signal (SIGKILL by default) and waits for the process to exit.
   * The folder stays until {@linkcode DaemonProcess.stop}.
   *
   * @param signal the signal
   */
  async kill(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    try {
      this.#child?.kill(signal);
    } catch {
      // already exited
    }
    await this.#status;
  }

  /**
   * Stops the daemon (its stop signal, then SIGKILL after `graceMs`: some
   * hang in a graceful shutdown) and removes the folder it owns.
   *
   * @param graceMs how long to wait before SIGKILL
   */
  async stop(graceMs = 1000): Promise<void> {
    this.#hook?.[Symbol.dispose]();
    if (this.#stopped) return;
    this.#stopped = true;
    if (!this.#exited) {
      try {
        this.#child?.kill(this.#spec.stopSignal ?? "SIGTERM");
      } catch {
        // already exited
      }
      const t = setTimeout(() => {
        try {
          this.#child?.kill("SIGKILL");
        } catch { /* exited */ }
      }, graceMs);
      await this.#status;
      clearTimeout(t);
    }
    if (this.#ownsDir) await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }

  /**
   * The termination hook: kills the daemon, waits (briefly) for it to be
   * gone, and removes its folder — again if something was still writing in
   * it the first time.
   */
  async #stopOnSignal(): Promise<void> {
    this.#stopped = true;
    try {
      this.#child?.kill("SIGKILL");
    } catch {
      // already exited
    }
    await this.exitStatus(1000);
    if (!this.#ownsDir) return;
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        Deno.removeSync(this.dir, { recursive: true });
        return;
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) return;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }
}

/**
 * What the test back-ends share: a vhost-user socket served by a daemon
 * process that can be killed, restarted on the same socket, and stopped
 * (its folder removed). {@linkcode QemuStorageDaemon} and
 * {@linkcode DpdkVhostBlk} are the two kinds.
 */
export abstract class VhostUserDaemon implements AsyncDisposable {
  /** The vhost-user socket. */
  readonly socketPath: string;
  /** The daemon's stdout and stderr. */
  readonly logPath: string;
  /** Its folder (socket, log, and what else it keeps). */
  readonly dir: string;
  readonly #process: DaemonProcess;
  readonly #stopGraceMs: number;

  /**
   * Wraps a started daemon.
   *
   * @param process the running daemon
   * @param socketPath its vhost-user socket
   * @param logPath its log
   * @param stopGraceMs how long {@linkcode VhostUserDaemon.stop} waits before SIGKILL
   */
  protected constructor(process: DaemonProcess, socketPath: string, logPath: string, stopGraceMs: number) {
    this.#process = process;
    this.dir = process.dir;
    this.socketPath = socketPath;
    this.logPath = logPath;
    this.#stopGraceMs = stopGraceMs;
  }

  /** The process id (of the current run). */
  get pid(): number {
    return this.#process.pid;
  }

  /**
   * Waits for the current run to end by itself (a crash, say), for at most
   * `timeoutMs`; then its whole output is in the log.
   *
   * @param timeoutMs how long to wait
   * @returns how it ended, or undefined if it still runs after `timeoutMs`
   *
   * @example
   * ```ts ignore
   * const status = await daemon.exitStatus(5000);
   * if (status?.signal === "SIGABRT") console.log(await Deno.readTextFile(daemon.logPath));
   * ```
   */
  exitStatus(timeoutMs: number): Promise<Deno.CommandStatus | undefined> {
    return this.#process.exitStatus(timeoutMs);
  }

  /**
   * Kills the daemon if it runs (SIGKILL) and starts it again on the same
   * socket, as after a crash; resolves once the socket listens again.
   */
  async restart(): Promise<void> {
    await this.#process.kill();
    await this.#process.spawn();
  }

  /**
   * Sends a signal (SIGKILL by default) and waits for the process to exit.
   * The folder stays until {@linkcode VhostUserDaemon.stop}.
   *
   * @param signal the signal
   */
  kill(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    return this.#process.kill(signal);
  }

  /** Stops the daemon (its stop signal, then SIGKILL after a grace period) and removes the folder it created. */
  stop(): Promise<void> {
    return this.#process.stop(this.#stopGraceMs);
  }

  /** Same as {@linkcode VhostUserDaemon.stop}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}
