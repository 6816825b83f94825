/**
 * `deno task demo`: connects to a virtio-blk device, writes a pattern, reads
 * it back and verifies it, then measures 4 KiB random reads at queue depth 1
 * and 32 and prints capacity, IOPS and latency.
 *
 * Which device:
 * - by default, a private qemu-storage-daemon on a temporary image (stopped
 *   and removed at the end, also on Ctrl-C);
 * - when qemu-storage-daemon is missing (or the native shim cannot load:
 *   a platform without a prebuilt one, and no C compiler), the in-process
 *   mock device instead, saying so and what to install;
 * - with `--path SOCKET`, an existing vhost-user-blk back-end. The demo then
 *   only reads, unless `--yes` allows it to write (and verify) 1 MiB at
 *   offset 0, overwriting what is there.
 *
 * @module
 */

import { type CommandSpec, formatHelp, parseChoice, parseFlags, parseSeconds, UsageError } from "./src/cli/args.ts";
import { loadShim } from "./src/os/loader.ts";
import { isGranted } from "./src/os/permissions.ts";
import { exitProcess, isTerminating, onTermination } from "./src/process/terminate.ts";
import { formatBytes } from "./src/cli/format.ts";
import { VirtioBlk, type VirtioBlkConnectOptions, VirtioError } from "./mod.ts";
import { MockBlkDevice, QemuStorageDaemon } from "./testing.ts";
import { ShimLoadError } from "./src/errors.ts";

/** What to install for the real back-end (Debian/Ubuntu package names; the shim comes prebuilt). */
const REAL_THING = "apt-get install qemu-system-common qemu-utils";

const DEMO: CommandSpec = {
  name: "demo",
  usage: "deno task demo [--path SOCKET [--yes]] [--mode M] [--seconds S]",
  description: "Writes 1MiB, flushes, reads it back and verifies it, then measures 4KiB random reads at QD1 and\n" +
    "QD32. Without --path it starts a private qemu-storage-daemon (or, when that is missing, uses the\n" +
    "in-process mock device and says so). With --path it only reads unless --yes.",
  flags: [
    { name: "path", kind: "string", value: "SOCKET", help: "an existing vhost-user-blk socket to use instead" },
    { name: "yes", kind: "boolean", help: "with --path: allow writing 1MiB at offset 0 (overwrites it)" },
    { name: "mode", kind: "string", value: "M", default: "poll", help: "poll or eventfd" },
    { name: "seconds", kind: "string", value: "S", default: "2", help: "seconds per measurement" },
  ],
  examples: ["deno task demo", "deno task demo --path /tmp/x.sock", "deno task demo --path /tmp/x.sock --yes"],
};

const MiB = 1 << 20;

async function measure(blk: VirtioBlk, depth: number, seconds: number): Promise<{ iops: number; meanUs: number }> {
  const blocks = Math.min(Number(blk.capacity / 4096n), 1 << 20);
  const bufs = Array.from({ length: depth }, () => blk.allocBuffer(4096));
  let ops = 0;
  let seed = 12345;
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  await Promise.all(bufs.map(async (buf) => {
    while (performance.now() < end) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      await blk.read((seed % blocks) * 4096, buf);
      ops++;
    }
  }));
  const elapsed = (performance.now() - t0) / 1000;
  for (const b of bufs) blk.freeBuffer(b);
  return { iops: ops / elapsed, meanUs: (elapsed * 1e6 * depth) / ops };
}

/** Why the real back-end cannot run here and what would change that, or undefined when it can. */
async function realBackendMissing(): Promise<{ why: string; fix: string } | undefined> {
  // The daemon helper needs -A (README, "What each use needs"); asked first, so
  // that a missing permission is not taken for a missing program.
  if (!isGranted({ name: "run" })) {
    return {
      why: "without --allow-run the demo cannot start qemu-storage-daemon",
      fix: "deno task demo (it runs with -A, which the daemon needs)",
    };
  }
  if (!await QemuStorageDaemon.available()) return { why: "qemu-storage-daemon not found", fix: REAL_THING };
  try {
    await loadShim();
  } catch (e) {
    const why = e instanceof ShimLoadError && /no C compiler/.test(e.message)
      ? `no prebuilt native shim for ${Deno.build.target}, and no C compiler to build one`
      : `the native shim did not load (${(e as Error).message.split("\n")[0]})`;
    return { why, fix: 'see the README\'s "What each use needs"' };
  }
  return undefined;
}

async function writeAndVerify(blk: VirtioBlk): Promise<void> {
  const data = blk.allocBuffer(MiB);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 12)) & 0xff;
  await blk.write(0, data);
  await blk.flush();
  const back = blk.allocBuffer(MiB);
  await blk.read(0, back);
  const bad = back.findIndex((b, i) => b !== data[i]);
  if (bad >= 0) throw new Error(`verification failed at byte ${bad}`);
  blk.freeBuffer(data);
  blk.freeBuffer(back);
  console.log(`wrote ${formatBytes(MiB)} at offset 0, flushed, read it back: verified`);
}

async function main(args: string[]): Promise<number> {
  const flags = parseFlags(DEMO, args);
  if (flags.help) {
    console.log(formatHelp(DEMO));
    return 0;
  }
  const mode = parseChoice(flags.mode ?? "poll", "--mode", ["poll", "eventfd"] as const);
  const seconds = parseSeconds(flags.seconds ?? "2", "--seconds", false);
  if (flags.yes && flags.path === undefined) throw new UsageError("--yes only applies with --path");
  let daemon: QemuStorageDaemon | undefined;
  let options: VirtioBlkConnectOptions;
  let mayWrite = true;
  if (typeof flags.path === "string") {
    options = { transport: "vhost-user", path: flags.path, mode };
    mayWrite = flags.yes === true;
  } else {
    const missing = await realBackendMissing();
    if (missing === undefined) {
      daemon = await QemuStorageDaemon.start({ size: 256 * MiB });
      console.log(
        `started qemu-storage-daemon (pid ${daemon.pid}) on a ${
          formatBytes(256 * MiB)
        } file image, ${daemon.imagePath}: ` +
          "reads and writes go through the host's page cache",
      );
      options = { transport: "vhost-user", path: daemon.socketPath, mode };
    } else {
      console.log(`${missing.why}: running on the in-process mock device instead (no daemon, no native code).`);
      console.log(`For the real thing: ${missing.fix}`);
      options = { transport: "mock", device: new MockBlkDevice({ capacity: 256 * MiB }), mode };
    }
  }
  // Runs before the daemon's own hook stops it (hooks run newest first).
  using _interrupted = onTermination((signal) => console.log(`interrupted (${signal}): stopping`));
  try {
    await using blk = await VirtioBlk.connect(options);
    const where = options.transport === "mock" ? "the mock device" : (options as { path: string }).path;
    console.log(`connected to ${where} (${mode} mode)`);
    console.log(`capacity:   ${blk.capacity} bytes (${formatBytes(Number(blk.capacity))})`);
    console.log(`block size: ${blk.blockSize}, read-only: ${blk.readOnly}, queues: ${blk.numQueues}`);
    console.log(`features:   ${blk.features.names.join(" ")}`);
    if (blk.readOnly) {
      console.log("the device is read-only: skipping the write test");
    } else if (!mayWrite) {
      console.log(
        `not writing to a device the demo did not create: reads only (--yes writes ${formatBytes(MiB)} at offset 0)`,
      );
    } else {
      await writeAndVerify(blk);
    }
    for (const depth of [1, 32]) {
      const { iops, meanUs } = await measure(blk, depth, seconds);
      console.log(
        `${formatBytes(4096)} random reads, QD${depth}: ${Math.round(iops).toLocaleString("en")} IOPS, mean latency ${
          meanUs.toFixed(2)
        } µs`,
      );
    }
  } finally {
    await daemon?.stop();
  }
  return 0;
}

if (import.meta.main) {
  let status: number;
  try {
    status = await main(Deno.args);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}`);
      status = 2;
    } else {
      // On Ctrl-C the hooks stop the daemon, and the requests in flight fail with it: that is the
      // interruption, already reported, not an error of its own. (A signal may still be on its way.)
      await new Promise((r) => setTimeout(r, 20));
      if (!isTerminating()) {
        console.error(`error: ${(e as Error)?.message ?? e}${e instanceof VirtioError ? ` [${e.code}]` : ""}`);
      }
      status = 1;
    }
  }
  await exitProcess(status);
}
