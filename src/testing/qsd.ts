/**
 * Starts and stops a private qemu-storage-daemon exporting a vhost-user-blk
 * device on a temporary socket: for tests, the demo, the CLI and benchmarks.
 *
 * A daemon started here never outlives an interrupted program: on SIGINT,
 * SIGTERM or SIGHUP it is killed and its folder removed before the process
 * exits (see `daemon_process.ts`).
 *
 * @module
 */

import { DaemonProcess, removedOnSignal, VhostUserDaemon } from "./daemon_process.ts";
import { qmpExecute } from "./qmp.ts";

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
  /**
   * Open a QMP monitor on a socket in the folder ({@linkcode QemuStorageDaemon.qmpPath}),
   * for {@linkcode QemuStorageDaemon.qmp} and {@linkcode QemuStorageDaemon.resize}; default false.
   */
  qmp?: boolean;
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
export class QemuStorageDaemon extends VhostUserDaemon {
  /** The exported image file (undefined for null-co). */
  readonly imagePath: string | undefined;
  /** The QMP monitor's socket (with the `qmp` option), else undefined. */
  readonly qmpPath: string | undefined;

  private constructor(
    process: DaemonProcess,
    socketPath: string,
    imagePath: string | undefined,
    logPath: string,
    qmpPath: string | undefined,
  ) {
    // SIGTERM, then SIGKILL after 1 s: qemu-storage-daemon 7.2 occasionally hangs in its graceful shutdown
    // right after a front-end disconnected.
    super(process, socketPath, logPath, 1000);
    this.imagePath = imagePath;
    this.qmpPath = qmpPath;
  }

  /**
   * Runs a QMP command on the daemon's monitor (needs the `qmp` option).
   *
   * @param command e.g. `query-block-exports`
   * @param args its arguments
   * @returns the command's `return` value
   * @throws {QmpError} when the daemon answers with an error
   */
  qmp(command: string, args?: Record<string, unknown>): Promise<unknown> {
    if (!this.qmpPath) return Promise.reject(new Error("start the daemon with { qmp: true } to use its monitor"));
    return qmpExecute(this.qmpPath, command, args);
  }

  /**
   * Resizes the exported disk (QMP `block_resize` on its node, `disk`), as
   * an administrator growing or shrinking a volume under a running program.
   * qemu-storage-daemon 8.1 and later tell the front-end (a back-end
   * CONFIG_CHANGE_MSG); 7.2 changes the disk without telling anyone, and
   * keeps reporting the old capacity in its config space.
   *
   * @param bytes the new size, a multiple of 512
   */
  async resize(bytes: number): Promise<void> {
    await this.qmp("block_resize", { "node-name": "disk", size: bytes });
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

  /**
   * Starts a daemon and waits until its socket accepts connections.
   *
   * @param options what to export
   * @returns the running daemon
   * @throws {Deno.errors.NotFound} (one line naming what to install) when the binary is missing
   */
  static async start(options: QemuStorageDaemonOptions = {}): Promise<QemuStorageDaemon> {
    const ownsDir = options.dir === undefined;
    const dir = options.dir ?? await Deno.makeTempDir({ prefix: "virtio-qsd-" });
    using _untilStarted = ownsDir ? removedOnSignal(dir) : undefined;
    const socketPath = `${dir}/vhost-user-blk.sock`;
    const logPath = `${dir}/qsd.log`;
    const driver = options.driver ?? "file";
    const size = options.size ?? 64 << 20;
    let imagePath: string | undefined;
    let blockdev: string;
    try {
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
    } catch (e) {
      if (ownsDir) await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw e;
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
    const qmpPath = options.qmp ? `${dir}/qmp.sock` : undefined;
    if (qmpPath) {
      args.push("--chardev", `socket,id=qmp0,path=${qmpPath},server=on,wait=off`);
      args.push("--monitor", "chardev=qmp0,mode=control");
    }
    const process = await DaemonProcess.start(
      {
        name: "qemu-storage-daemon",
        binary: options.binary ?? defaultBinary(),
        args,
        socketPath,
        logPath,
        installHint: QSD_INSTALL_HINT,
      },
      dir,
      ownsDir,
      options.stopOnSignal ?? true,
    );
    return new QemuStorageDaemon(process, socketPath, imagePath, logPath, qmpPath);
  }
}
