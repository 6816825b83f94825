/**
 * The back-end of the fuzzer's tests: `tests/_fuzz_backend.c`, a careful
 * vhost-user-blk back-end with one planted bug on request, built with the C
 * compiler once per source (into `build/fuzz-backend/<hash>/`) and run per
 * test on a socket in a temporary folder.
 */

import { findExecutable, isListening } from "../src/testing/daemon_process.ts";
import { endedOnSignal, type TempDir, tempDir } from "./_support.ts";

const SOURCE = new URL("./_fuzz_backend.c", import.meta.url).pathname;
const ROOT = new URL("..", import.meta.url).pathname;

/** The bugs `_fuzz_backend.c` can plant, and the kind of finding each must give. */
export const PLANTED_BUGS = {
  "crash-header-split": "crash",
  "flush-hang": "hang",
  "oob-write": "memory",
  "write-readable": "memory",
  "double-completion": "completion",
  "capacity-off-by-one": "status",
  "multi-desc-read": "data",
} as const;

/** A planted bug's name. */
export type PlantedBug = keyof typeof PLANTED_BUGS;

/** Why the back-end cannot be built here, or undefined when it can. */
export function fuzzBackendMissing(): string | undefined {
  return ["cc", "gcc", "clang"].some((c) => findExecutable(c)) ? undefined : "no C compiler (cc, gcc or clang)";
}

/**
 * Builds the back-end (once per source: the binary's folder is named by a
 * hash of it).
 *
 * @returns the binary's path
 */
export async function buildFuzzBackend(): Promise<string> {
  const source = await Deno.readFile(SOURCE);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", source));
  const hash = Array.from(digest.subarray(0, 10), (b) => b.toString(16).padStart(2, "0")).join("");
  const dir = `${ROOT}build/fuzz-backend/${hash}`;
  const binary = `${dir}/fuzz-backend`;
  if (await Deno.stat(binary).then(() => true, () => false)) return binary;
  const cc = ["cc", "gcc", "clang"].map((c) => findExecutable(c)).find((c) => c !== undefined);
  if (!cc) throw new Error("no C compiler (cc, gcc or clang) to build tests/_fuzz_backend.c");
  await Deno.mkdir(dir, { recursive: true });
  const tmp = `${binary}.${Deno.pid}.tmp`;
  const out = await new Deno.Command(cc, {
    args: ["-O2", "-g", "-Wall", "-Wextra", "-Werror", "-o", tmp, SOURCE],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`building ${SOURCE} failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
  await Deno.rename(tmp, binary);
  return binary;
}

/** Options of {@linkcode FuzzBackend.start}. */
export interface FuzzBackendOptions {
  /** The bug to plant (none: careful). */
  readonly bug?: PlantedBug;
  /** Offer packed rings too. */
  readonly packed?: boolean;
  /** Disk size in bytes; default 16 MiB. */
  readonly size?: number;
}

/** A running `_fuzz_backend` on a socket of its own. */
export class FuzzBackend implements AsyncDisposable {
  /** Its socket. */
  readonly socketPath: string;
  /** The binary. */
  readonly binary: string;
  /** Its arguments (socket included). */
  readonly args: readonly string[];
  readonly #dir: TempDir;
  #child: Deno.ChildProcess | undefined;
  #hook: Disposable | undefined;
  #log = "";
  #pump: Promise<void> = Promise.resolve();

  private constructor(dir: TempDir, binary: string, args: string[]) {
    this.#dir = dir;
    this.binary = binary;
    this.args = args;
    this.socketPath = `${dir.path}/fuzz.sock`;
  }

  /**
   * Builds (if needed) and starts the back-end, and waits until it listens.
   *
   * @param o the bug, the ring formats, the size
   * @returns the running back-end
   */
  static async start(o: FuzzBackendOptions = {}): Promise<FuzzBackend> {
    const binary = await buildFuzzBackend();
    const dir = await tempDir("virtio-fuzz-backend-");
    const socket = `${dir.path}/fuzz.sock`;
    const args = ["--socket", socket, "--size", String(o.size ?? 16 << 20)];
    if (o.packed) args.push("--packed");
    if (o.bug) args.push("--bug", o.bug);
    const b = new FuzzBackend(dir, binary, args);
    try {
      await b.spawn();
    } catch (e) {
      await b[Symbol.asyncDispose]();
      throw e;
    }
    return b;
  }

  /** A shell command that runs the same back-end in the foreground (for `--restart`). */
  get command(): string {
    return `exec ${[this.binary, ...this.args].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(" ")}`;
  }

  /** What it printed so far. */
  get log(): string {
    return this.#log;
  }

  /** Starts it (again) and waits until its socket listens. */
  async spawn(): Promise<void> {
    await this.stop();
    const child = new Deno.Command(this.binary, {
      args: [...this.args],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    })
      .spawn();
    this.#child = child;
    this.#hook = endedOnSignal(child, { signal: "SIGKILL" });
    this.#pump = (async () => {
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) this.#log += chunk;
    })();
    const deadline = performance.now() + 10_000;
    while (!(await isListening(this.socketPath))) {
      if (performance.now() > deadline) throw new Error(`the fuzz back-end did not listen:\n${this.#log}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Kills the current run (if any) and waits for it. */
  async stop(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    try {
      child.kill("SIGKILL");
    } catch {
      // ended already
    }
    await child.status;
    await this.#pump;
    this.#hook?.[Symbol.dispose]();
    this.#hook = undefined;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
    await this.#dir[Symbol.asyncDispose]();
  }
}
