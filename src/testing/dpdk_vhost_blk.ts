/**
 * DPDK's vhost library as a vhost-user-blk back-end, through the
 * `vhost_blk` example that Debian ships in `dpdk-doc`: built once (with the
 * documented packed-ring fix of `dpdk_vhost_blk_packed.patch`, unless asked
 * for the example as shipped) and run per test, on a temporary socket.
 *
 * What the example is: a 128 MiB memory-backed disk (4 KiB blocks, lost when
 * the process ends), one request queue, split and packed rings, no
 * EVENT_IDX, no indirect descriptors, no FLUSH/DISCARD/WRITE_ZEROES. It
 * busy-polls its ring on one core while a front-end is connected, serves one
 * front-end at a time (a second connection breaks the first), and takes up
 * to about a second to answer the first message of a connection.
 *
 * @module
 */

import { DaemonProcess, findExecutable, removedOnSignal, VhostUserDaemon } from "./daemon_process.ts";

/** Where Debian's `dpdk-doc` puts the example's source. */
export const DPDK_VHOST_BLK_SOURCE = "/usr/share/dpdk/examples/vhost_blk";

/** What to install when something is missing (one line, for messages). */
export const DPDK_INSTALL_HINT =
  "install it (Debian/Ubuntu: apt-get install dpdk libdpdk-dev dpdk-doc make pkg-config patch gcc)";

const PATCH = new URL("./dpdk_vhost_blk_packed.patch", import.meta.url);

/** Options of {@linkcode DpdkVhostBlk.start}. */
export interface DpdkVhostBlkOptions {
  /** Build the example as shipped, without the packed-ring fix (default false). */
  unpatched?: boolean;
  /** Where the socket and log go; default a new temporary folder (removed on stop). */
  dir?: string;
  /** Stop it and remove its folder on SIGINT/SIGTERM/SIGHUP (default true). */
  stopOnSignal?: boolean;
}

let uniq = 0;

async function run(cmd: string, args: string[], cwd: string, stdin?: Uint8Array): Promise<void> {
  const child = new Deno.Command(cmd, { args, cwd, stdin: stdin ? "piped" : "null", stdout: "piped", stderr: "piped" })
    .spawn();
  if (stdin) {
    const w = child.stdin.getWriter();
    await w.write(stdin);
    await w.close();
  }
  const out = await child.output();
  if (!out.success) {
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    throw new Error(`${cmd} ${args.join(" ")} failed in ${cwd}:\n${text}`);
  }
}

async function sha256Hex(parts: readonly Uint8Array[]): Promise<string> {
  const total = parts.reduce((n, p) => n + p.byteLength, 0);
  const all = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.byteLength;
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return Array.from(digest.subarray(0, 12), (b) => b.toString(16).padStart(2, "0")).join("");
}

function buildRoot(): string {
  const url = new URL("../../build/dpdk-vhost-blk", import.meta.url);
  if (url.protocol === "file:") return decodeURIComponent(url.pathname);
  return `${Deno.env.get("HOME") ?? "/tmp"}/.cache/virtio-deno/dpdk-vhost-blk`;
}

/**
 * A running `vhost_blk` example of DPDK's vhost library. A restart is a
 * fresh process with a fresh, zeroed disk.
 */
export class DpdkVhostBlk extends VhostUserDaemon {
  private constructor(process: DaemonProcess, socketPath: string, logPath: string) {
    super(process, socketPath, logPath, 2000); // SIGINT (its handler unlinks the socket), SIGKILL after 2 s
  }

  /**
   * Why the example cannot be built here, or undefined when it can.
   *
   * @returns a one-line reason naming what to install, or undefined
   */
  static async missing(): Promise<string | undefined> {
    const have = await Deno.stat(`${DPDK_VHOST_BLK_SOURCE}/vhost_blk.c`).then(() => true, () => false);
    if (!have) return `DPDK's vhost_blk example (${DPDK_VHOST_BLK_SOURCE}) not found: ${DPDK_INSTALL_HINT}`;
    for (const tool of ["make", "pkg-config", "patch", "cc"]) {
      if (!findExecutable(tool)) return `${tool} not found: ${DPDK_INSTALL_HINT}`;
    }
    const lib = await new Deno.Command("pkg-config", { args: ["--exists", "libdpdk"] }).output().catch(() => undefined);
    if (!lib?.success) return `libdpdk (pkg-config) not found: ${DPDK_INSTALL_HINT}`;
    return undefined;
  }

  /**
   * Builds the example (once per source and patch; cached under `build/`).
   *
   * @param unpatched build it as shipped, without the packed-ring fix
   * @returns the binary's path
   */
  static async build(unpatched = false): Promise<string> {
    const why = await DpdkVhostBlk.missing();
    if (why) throw new Deno.errors.NotFound(why);
    const files = [...Deno.readDirSync(DPDK_VHOST_BLK_SOURCE)].filter((e) => e.isFile).map((e) => e.name).sort();
    const patch = unpatched ? new Uint8Array(0) : await Deno.readFile(PATCH);
    const parts = [patch];
    for (const f of files) {
      parts.push(new TextEncoder().encode(f), await Deno.readFile(`${DPDK_VHOST_BLK_SOURCE}/${f}`));
    }
    const dir = `${buildRoot()}/${await sha256Hex(parts)}${unpatched ? "-unpatched" : ""}`;
    const binary = `${dir}/build/vhost-blk`;
    if (await Deno.stat(binary).then(() => true, () => false)) return binary;
    // Build in a fresh folder, then move it into place (a concurrent build loses the rename, harmlessly).
    await Deno.mkdir(buildRoot(), { recursive: true });
    const tmp = await Deno.makeTempDir({ dir: buildRoot(), prefix: ".build-" });
    using _onSignal = removedOnSignal(tmp);
    try {
      for (const f of files) await Deno.copyFile(`${DPDK_VHOST_BLK_SOURCE}/${f}`, `${tmp}/${f}`);
      if (!unpatched) await run("patch", ["-p1", "--quiet"], tmp, patch);
      await run("make", ["-s"], tmp);
      await Deno.rename(tmp, dir).catch(async (e) => {
        if (!await Deno.stat(binary).then(() => true, () => false)) throw e;
      });
    } finally {
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
    return binary;
  }

  /**
   * Builds (if needed) and starts the example, and waits until its socket
   * listens. Each start is a fresh process with a fresh, zeroed disk.
   *
   * @param options patched or not, where, signals
   * @returns the running back-end
   */
  static async start(options: DpdkVhostBlkOptions = {}): Promise<DpdkVhostBlk> {
    const binary = await DpdkVhostBlk.build(options.unpatched ?? false);
    const ownsDir = options.dir === undefined;
    const dir = options.dir ?? await Deno.makeTempDir({ prefix: "virtio-dpdk-" });
    using _untilStarted = ownsDir ? removedOnSignal(dir) : undefined;
    const socketPath = `${dir}/vhost.socket`;
    const logPath = `${dir}/vhost-blk.log`;
    const eal = [
      "--no-huge", // plain memory: no hugepages needed
      "-m",
      "512",
      "--no-pci",
      "-l",
      "1",
      "--file-prefix",
      `virtio-${Deno.pid}-${++uniq}`,
      "--no-shconf", // no shared config files to leave behind
      "--no-telemetry",
    ];
    // Line-buffered stdout, so that its log reads in order.
    const stdbuf = findExecutable("stdbuf");
    const process = await DaemonProcess.start(
      {
        name: "DPDK vhost_blk",
        binary: stdbuf ?? binary,
        args: stdbuf ? ["-oL", binary, ...eal] : eal,
        env: { RUNTIME_DIRECTORY: dir }, // DPDK's runtime files go in the folder, not /var/run/dpdk
        socketPath,
        logPath,
        installHint: DPDK_INSTALL_HINT,
        stopSignal: "SIGINT", // its handler unlinks the socket and exits
      },
      dir,
      ownsDir,
      options.stopOnSignal ?? true,
    );
    return new DpdkVhostBlk(process, socketPath, logPath);
  }
}
