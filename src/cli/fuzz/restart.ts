/**
 * `--restart 'COMMAND'`: the command that brings a back-end back after it
 * is gone. The fuzzer runs it (`sh -c`, in a session of its own) as its
 * child and owns it: its output is kept (the last few KiB, for the crash
 * report), and it is stopped — the whole process group, SIGTERM then
 * SIGKILL — when the fuzzer ends, also on Ctrl-C. The command should run the
 * back-end in the foreground, listening on the socket given with `--path`.
 *
 * @module
 */

import { onTermination } from "../../process/terminate.ts";
import { within } from "../../process/within.ts";
import { findExecutable } from "../../testing/daemon_process.ts";

/** Bytes of the child's output kept. */
const TAIL_BYTES = 4096;

/** A back-end the fuzzer started with `--restart`. */
export class RestartedBackend {
  /** The command line. */
  readonly command: string;
  #child: Deno.ChildProcess | undefined;
  #status: Promise<Deno.CommandStatus> | undefined;
  #ended: Deno.CommandStatus | undefined;
  #tail = "";
  #pump: Promise<unknown> = Promise.resolve();
  #hook: Disposable | undefined;
  #starts = 0;

  /**
   * Remembers the command; nothing runs until {@linkcode RestartedBackend.start}.
   *
   * @param command the shell command that runs the back-end
   */
  constructor(command: string) {
    this.command = command;
  }

  /** How many times it was started. */
  get starts(): number {
    return this.#starts;
  }

  /** Whether the current run still runs. */
  get running(): boolean {
    return this.#child !== undefined && this.#ended === undefined;
  }

  /** How the current run ended (undefined while it runs or before any). */
  get ended(): Deno.CommandStatus | undefined {
    return this.#ended;
  }

  /** The last few KiB of what the current (or last) run printed. */
  get output(): string {
    return this.#tail;
  }

  /** Runs the command (the previous run must have ended or been stopped). */
  start(): void {
    if (this.running) throw new Error("the --restart command is still running");
    const setsid = findExecutable("setsid");
    const child = new Deno.Command(setsid ?? "sh", {
      args: setsid ? ["sh", "-c", this.command] : ["-c", this.command],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#starts++;
    this.#child = child;
    this.#ended = undefined;
    this.#tail = "";
    const decoder = new TextDecoder();
    const keep = async (stream: ReadableStream<Uint8Array>) => {
      for await (const chunk of stream) {
        this.#tail = (this.#tail + decoder.decode(chunk, { stream: true })).slice(-TAIL_BYTES);
      }
    };
    this.#pump = Promise.all([keep(child.stdout), keep(child.stderr)]).catch(() => {});
    this.#status = child.status.then((s) => {
      this.#ended = s;
      return s;
    });
    this.#hook ??= onTermination(() => this.#kill("SIGKILL"));
  }

  /** Sends `signal` to the child's process group (or to the child alone without setsid). */
  #kill(signal: Deno.Signal): void {
    const child = this.#child;
    if (!child || this.#ended) return;
    try {
      Deno.kill(findExecutable("setsid") ? -child.pid : child.pid, signal);
    } catch {
      try {
        child.kill(signal);
      } catch {
        // it has ended
      }
    }
  }

  /**
   * Waits up to `ms` for the current run to end.
   *
   * @param ms how long
   * @returns its status, or undefined while it runs
   */
  async exited(ms: number): Promise<Deno.CommandStatus | undefined> {
    if (!this.#status) return undefined;
    return await within(this.#status, ms);
  }

  /** Stops the current run: SIGTERM to its group, SIGKILL after 2 s; waits for it and its output. */
  async stop(): Promise<void> {
    if (this.#child && !this.#ended) {
      this.#kill("SIGTERM");
      if (await this.exited(2000) === undefined) {
        this.#kill("SIGKILL");
        await this.#status;
      }
    }
    await this.#pump;
  }

  /** Stops it and forgets the signal hook. */
  async close(): Promise<void> {
    await this.stop();
    this.#hook?.[Symbol.dispose]();
    this.#hook = undefined;
  }
}

/**
 * Describes how a process ended: `exit status 1`, `killed by SIGABRT`.
 *
 * @param s the status
 * @returns the words
 */
export function describeExit(s: Deno.CommandStatus): string {
  if (s.signal) return `killed by ${s.signal}`;
  // A shell that ran the back-end as its child reports a signal as 128 + its number.
  const names: Record<number, string> = {
    6: "SIGABRT",
    7: "SIGBUS",
    9: "SIGKILL",
    11: "SIGSEGV",
    8: "SIGFPE",
    4: "SIGILL",
  };
  const n = s.code - 128;
  return names[n] ? `exit status ${s.code} (${names[n]}, as a shell reports it)` : `exit status ${s.code}`;
}
