/**
 * `deno task demo`: connects to a vhost-user-blk device (its own private
 * qemu-storage-daemon on a temporary image, unless `--path SOCKET` is given),
 * writes a pattern, reads it back and verifies it, then measures 4 KiB
 * random reads at queue depth 1 and 32 and prints capacity, IOPS and latency.
 *
 * Flags: `--path SOCKET`, `--mode poll|eventfd` (default poll), `--seconds N` (default 2).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type CompletionMode, QemuStorageDaemon, VirtioBlk } from "./mod.ts";

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

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      path: { type: "string" },
      mode: { type: "string", default: "poll" },
      seconds: { type: "string", default: "2" },
    },
  });
  const mode = values.mode as CompletionMode;
  const seconds = Number(values.seconds);
  if (mode !== "poll" && mode !== "eventfd") throw new Error("--mode must be poll or eventfd");
  let daemon: QemuStorageDaemon | undefined;
  let path = values.path;
  if (!path) {
    daemon = await QemuStorageDaemon.start({ size: 256 << 20 });
    path = daemon.socketPath;
    console.log(`started qemu-storage-daemon (pid ${daemon.pid}) on ${daemon.imagePath}`);
  }
  try {
    await using blk = await VirtioBlk.connect({ transport: "vhost-user", path, mode });
    console.log(`connected to ${path} (${mode} mode)`);
    console.log(`capacity:   ${blk.capacity} bytes (${Number(blk.capacity) / 2 ** 20} MiB)`);
    console.log(`block size: ${blk.blockSize}, read-only: ${blk.readOnly}, queues: ${blk.numQueues}`);
    console.log(`features:   ${blk.features.names.join(" ")}`);
    if (!blk.readOnly) {
      const data = blk.allocBuffer(1 << 20);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 12)) & 0xff;
      await blk.write(0, data);
      await blk.flush();
      const back = blk.allocBuffer(1 << 20);
      await blk.read(0, back);
      const bad = back.findIndex((b, i) => b !== data[i]);
      if (bad >= 0) throw new Error(`verification failed at byte ${bad}`);
      console.log("wrote 1 MiB, flushed, read it back: verified");
    }
    for (const depth of [1, 32]) {
      const { iops, meanUs } = await measure(blk, depth, seconds);
      console.log(
        `4 KiB random reads, QD${depth}: ${Math.round(iops).toLocaleString("en")} IOPS, mean latency ${
          meanUs.toFixed(2)
        } µs`,
      );
    }
  } finally {
    await daemon?.stop();
  }
}

if (import.meta.main) await main();
