/**
 * Starts and stops a private qemu-storage-daemon exporting a vhost-user-blk
 * device on a temporary socket: for tests, the demo, the CLI and benchmarks.
 *
 * A daemon started here never outlives an interrupted program: on SIGINT or
 * SIGTERM it is killed and its folder removed before the process exits
 * (with status 130 or 143; see `src/process/terminate.ts`).
 *
 * @module
 */

import { onTermination } from "../process/terminate.ts";

/** What to install when the daemon is missing (one line, for messages). */
export const QSD_INSTALL_HINT = "install it (Debian/Ubuntu: apt-get install qemu-system-common qemu-utils)";

/** Options of {@linkcode QemuStorageDaemon.start}. */
export interface QemuStorageDaemonOptions {
  /** `"file"`: a raw image file (created when `image` is not given); `"null-co"`: no storage at all (reads return zeroes). Default `"file"`. */
  driver?: "file" | "null-co";
  /** An existing raw image to export (driver "file"). */
  image?: string;
  /** Size in bytes of the created image or the null device; default 64 MiB. */
  size?: number;
  /** Queues the export offers; default 1. */
  numQueues?: number;
  /** Whether the export accepts writes; default true. */
  writable?: boolean;
  /** File driver: bypass the page cache (O_DIRECT); default false. */
  cacheDirect?: boolean;
  /** File driver: the AIO engine; default QEMU's ("threads"). `"native"` needs `cacheDirect`. */
  aio?: "threads" | "native" | "io_uring";
  /** Logical block size of the export; default 512. */
  logicalBlockSize?: number;
  /** Run the export in its own iothread; default true. */
  iothread?: boolean;
  /** The binary; default `$QEMU_STORAGE_DAEMON` or `qemu-storage-daemon`. */
  binary?: string;
  /** Where the socket, image and log go; default a new temporary directory (removed on stop). */
  dir?: string;
  /**
   * Kill the daemon and remove its folder when this process gets SIGINT or
   * SIGTERM, then exit with 130 or 143 (default true). Set it to false when
   * your program handles those signals itself and stops the daemon.
   */
  stopOnSignal?: boolean;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * The path of an executable: `name` itself when it has a slash, else the
 * first match on `$PATH`; undefined when there is none.
 */
function findExecutable(name: string): string | undefined {
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
    // no --allow-env
  }
  for (const dir of path.split(":")) if (dir && isExecutable(`${dir}/${name}`)) return `${dir}/${name}`;
  return undefined;
}

function defaultBinary(): string {
  try {
    return Deno.env.get("QEMU_STORAGE_DAEMON") || "qemu-storage-daemon";
  } catch {
    return "qemu-storage-daemon";
  }
}

/**
 * A running qemu-storage-daemon with one vhost-user-blk export.
 *
 * @example
 * ```ts ignore
 * import { QemuStorageDaemon, VirtioBlk } from "./mod.ts";
 * await using qsd = await QemuStorageDaemon.start({ size: 16 << 20 });
 * await using blk = await VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath });
 * ```
 */
export class QemuStorageDaemon implements AsyncDisposable {
  /** The vhost-user socket. */
  readonly socketPath: string;
  /** The exported image file (undefined for null-co). */
  readonly imagePath: string | undefined;
  /** The daemon's stdout and stderr. */
  readonly logPath: string;
  /** The folder holding socket, log (and a created image). */
  readonly dir: string;
  readonly #ownsDir: boolean;
  readonly #binary: string;
  readonly #args: string[];
  #child: Deno.ChildProcess | undefined;
  #status: Promise<Deno.CommandStatus | undefined> = Promise.resolve(undefined);
  #stopped = false;
  #signalHook: Disposable | undefined;

  private constructor(
    binary: string,
    args: string[],
    dir: string,
    ownsDir: boolean,
    socketPath: string,
    imagePath: string | undefined,
    logPath: string,
  ) {
    this.#binary = binary;
    this.#args = args;
    this.dir = dir;
    this.#ownsDir = ownsDir;
    this.socketPath = socketPath;
    this.imagePath = imagePath;
    this.logPath = logPath;
  }

  /**
   * Whether qemu-storage-daemon can be run here.
   *
   * @param binary the binary to try
   * @returns true when `--version` succeeds
   */
  static async available(binary: string = defaultBinary()): Promise<boolean> {
    try {
      const out = await new Deno.Command(binary, { args: ["--version"], stdout: "null", stderr: "null" }).output();
      return out.success;
    } catch {
      return false;
    }
  }

  /** The process id (of the current run). */
  get pid(): number {
    if (!this.#child) throw new Error("qemu-storage-daemon is not running");
    return this.#child.pid;
  }

  /**
   * Starts a daemon and waits until its socket accepts connections.
   *
   * @param options what to export
   * @returns the running daemon
   */
  static async start(options: QemuStorageDaemonOptions = {}): Promise<QemuStorageDaemon> {
    const ownsDir = options.dir === undefined;
    const dir = options.dir ?? await Deno.makeTempDir({ prefix: "virtio-qsd-" });
    const socketPath = `${dir}/vhost-user-blk.sock`;
    const logPath = `${dir}/qsd.log`;
    const driver = options.driver ?? "file";
    const size = options.size ?? 64 << 20;
    let imagePath: string | undefined;
    let blockdev: string;
    if (driver === "file") {
      imagePath = options.image ?? `${dir}/disk.img`;
      if (!options.image) {
        const f = await Deno.open(imagePath, { create: true, write: true, truncate: true });
        await f.truncate(size);
        f.close();
      }
      blockdev = `driver=file,node-name=disk,filename=${imagePath},cache.direct=${
        options.cacheDirect ? "on" : "off"
      },discard=unmap${options.aio ? `,aio=${options.aio}` : ""}`;
    } else {
      blockdev = `driver=null-co,node-name=disk,size=${size},read-zeroes=on`;
    }
    const exportArgs = [
      "type=vhost-user-blk",
      "id=export0",
      "addr.type=unix",
      `addr.path=${socketPath}`,
      "node-name=disk",
      `writable=${(options.writable ?? true) ? "on" : "off"}`,
      `num-queues=${options.numQueues ?? 1}`,
      `logical-block-size=${options.logicalBlockSize ?? 512}`,
    ];
    const args = ["--blockdev", blockdev];
    if (options.iothread ?? true) {
      args.push("--object", "iothread,id=iothread0");
      exportArgs.push("iothread=iothread0");
    }
    args.push("--export", exportArgs.join(","));
    const daemon = new QemuStorageDaemon(
      options.binary ?? defaultBinary(),
      args,
      dir,
      ownsDir,
      socketPath,
      imagePath,
      logPath,
    );
    if (options.stopOnSignal ?? true) daemon.#signalHook = onTermination(() => daemon.#stopNow());
    try {
      await daemon.#spawn();
    } catch (e) {
      daemon.#signalHook?.[Symbol.dispose]();
      if (ownsDir) await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw e;
    }
    return daemon;
  }

  /** The termination hook: kills the daemon and removes its folder, synchronously. */
  #stopNow(): void {
    this.#stopped = true;
    try {
      this.#child?.kill("SIGKILL");
    } catch {
      // already exited
    }
    if (this.#ownsDir) {
      try {
        Deno.removeSync(this.dir, { recursive: true });
      } catch {
        // already gone
      }
    }
  }

  /** Starts the process and waits for its socket. */
  async #spawn(): Promise<void> {
    await Deno.remove(this.socketPath).catch(() => {}); // a stale socket of a killed run
    const log = await Deno.open(this.logPath, { create: true, append: true });
    let child: Deno.ChildProcess;
    try {
      const binary = findExecutable(this.#binary);
      if (binary === undefined) throw new Deno.errors.NotFound(`${this.#binary} not found: ${QSD_INSTALL_HINT}`);
      // In a session of its own, so that a Ctrl-C meant for this program does
      // not reach the daemon first: the termination hook stops it once the
      // program has finished with it (fio prints its summary before).
      const setsid = findExecutable("setsid");
      child = new Deno.Command(setsid ?? binary, {
        args: setsid ? [binary, ...this.#args] : this.#args,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
    } catch (e) {
      log.close();
      throw e;
    }
    this.#child = child;
    // Copy the daemon's output into the log file (a writable stream takes one pipe at a time).
    const copy = async (stream: ReadableStream<Uint8Array>) => {
      for await (const chunk of stream) await log.write(chunk);
    };
    const pump = Promise.all([copy(child.stdout), copy(child.stderr)]).finally(() => log.close());
    this.#status = Promise.all([child.status, pump.catch(() => {})]).then(([s]) => s);
    const deadline = performance.now() + 10_000;
    let exited = false;
    this.#status.then(() => (exited = true));
    while (!(await exists(this.socketPath))) {
      if (exited || performance.now() > deadline) {
        await this.kill();
        const text = await Deno.readTextFile(this.logPath).catch(() => "");
        throw new Error(`qemu-storage-daemon did not start (${this.#args.join(" ")}):\n${text}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /**
   * Kills the daemon if it runs (SIGKILL) and starts it again on the same
   * socket and image, as after a crash.
   */
  async restart(): Promise<void> {
    if (this.#stopped) throw new Error("qemu-storage-daemon was stopped");
    await this.kill();
    await this.#spawn();
  }

  /**
   * Sends a signal (SIGKILL by default) and waits for the process to exit.
   * The folder stays until {@linkcode QemuStorageDaemon.stop}.
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
   * Stops the daemon (SIGTERM, then SIGKILL after 1 s: qemu-storage-daemon 7.2 occasionally hangs in its
   * graceful shutdown right after a front-end disconnected) and removes the folder it created.
   */
  async stop(): Promise<void> {
    this.#signalHook?.[Symbol.dispose]();
    if (this.#stopped) return;
    this.#stopped = true;
    let done = false;
    const status = this.#status.then(() => (done = true));
    try {
      this.#child?.kill("SIGTERM");
    } catch {
      // already exited
    }
    const t = setTimeout(() => {
      if (!done) {
        try {
          this.#child?.kill("SIGKILL");
        } catch { /* exited */ }
      }
    }, 1000);
    await status;
    clearTimeout(t);
    if (this.#ownsDir) await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }

  /** Same as {@linkcode QemuStorageDaemon.stop}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}
