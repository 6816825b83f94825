/**
 * Reconnect soak: random writes of 512 B to 128 KiB (and reads) over two
 * queues, 32 deep each, while the back-end is SIGKILLed at random moments
 * and restarted on the same socket after 0–500 ms. The driver runs with
 * `reconnect`, so no request may reject. Writes in flight together never
 * overlap (virtio leaves their order undefined); every acknowledged write
 * goes into a model, every read is checked against it, and at the end the
 * contents are compared with the model — by reading the image file
 * directly for qemu-storage-daemon, through the driver for DPDK's example,
 * whose memory-backed disk starts empty after each restart (the model
 * starts empty again at each disconnect: what was acknowledged before it is
 * gone, what was in flight is resubmitted to the new process).
 */

import { type CompletionMode, VirtioBlk } from "../mod.ts";
import { DpdkVhostBlk, QemuStorageDaemon, type VhostUserDaemon } from "../testing.ts";
import { Rng } from "./_support.ts";

/** Options of a run. */
export interface ReconnectSoakOptions {
  /** Which back-end. */
  backend: "qemu-storage-daemon" | "dpdk";
  /** How long to run. */
  seconds: number;
  /** How many times to kill the back-end. */
  kills: number;
  /** Completion mode; default eventfd. */
  mode?: CompletionMode;
  /** Requests in flight per queue; default 32. */
  depth?: number;
  /** Seed. */
  seed?: number;
}

/** What a run did. */
export interface ReconnectSoakResult {
  writes: number;
  reads: number;
  bytes: number;
  kills: number;
  reconnects: number;
  resubmitted: number;
  longestDowntimeMs: number;
  /** Requests that rejected (must be 0). */
  errors: string[];
  readMismatches: number;
  /** DPDK: acknowledged bytes that a restart took away with the example's memory. */
  lostAtRestart: number;
  /** Bytes of the final contents that differ from the model. */
  finalMismatches: number;
  seconds: number;
}

const MiB = 1 << 20;
const MAX_IO = 128 << 10;

export async function reconnectSoak(o: ReconnectSoakOptions): Promise<ReconnectSoakResult> {
  const size = o.backend === "dpdk" ? 128 * MiB : 64 * MiB;
  const daemon: VhostUserDaemon = o.backend === "dpdk"
    ? await DpdkVhostBlk.start()
    : await QemuStorageDaemon.start({ size, numQueues: 2 });
  const rng = new Rng(o.seed ?? 1);
  const model = new Uint8Array(size);
  const r: ReconnectSoakResult = {
    writes: 0,
    reads: 0,
    bytes: 0,
    kills: 0,
    reconnects: 0,
    resubmitted: 0,
    longestDowntimeMs: 0,
    errors: [],
    readMismatches: 0,
    lostAtRestart: 0,
    finalMismatches: 0,
    seconds: 0,
  };
  const t0 = performance.now();
  try {
    const blk = await VirtioBlk.connect({
      transport: "vhost-user",
      path: daemon.socketPath,
      numQueues: o.backend === "dpdk" ? 1 : 2, // the example serves queue 0 only
      queueSize: 256,
      mode: o.mode ?? "eventfd",
      bufferPoolSize: 32 * MiB,
      maxSegments: o.backend === "dpdk" ? 126 : undefined,
      reconnect: { timeoutMs: 30_000, backoffMs: 20 },
    });
    if (o.backend === "dpdk") {
      // A fresh, empty disk comes back: what was acknowledged before is gone.
      blk.addEventListener("disconnect", () => {
        for (let i = 0; i < size; i++) if (model[i] !== 0) r.lostAtRestart++;
        model.fill(0);
      });
    }
    try {
      const depth = (o.depth ?? 32) * blk.numQueues;
      const busy: { start: number; end: number }[] = []; // writes in flight
      const overlaps = (start: number, end: number) => busy.some((b) => start < b.end && b.start < end);
      const end = t0 + o.seconds * 1000;
      let tag = 0;

      const worker = async () => {
        const buf = blk.allocBuffer(MAX_IO);
        const u32 = new Uint32Array(buf.buffer, buf.byteOffset, MAX_IO / 4);
        while (performance.now() < end) {
          const len = 512 * rng.int(1, MAX_IO / 512);
          let off = 0;
          for (let tries = 0; tries < 20; tries++) {
            off = 512 * rng.int(0, (size - len) / 512);
            if (!overlaps(off, off + len)) break;
          }
          if (overlaps(off, off + len)) {
            await new Promise((res) => setTimeout(res, 0));
            continue;
          }
          const range = { start: off, end: off + len };
          busy.push(range);
          const view = buf.subarray(0, len);
          const isRead = rng.int(0, 3) === 0;
          try {
            if (isRead) {
              await blk.read(off, view);
              r.reads++;
              const want = model.subarray(off, off + len);
              for (let i = 0; i < len; i++) {
                if (view[i] !== want[i]) {
                  r.readMismatches++;
                  break;
                }
              }
            } else {
              const t = ++tag;
              for (let i = 0; i < len / 4; i++) u32[i] = (t * 2654435761 + i) >>> 0;
              await blk.write(off, view);
              model.set(view, off);
              r.writes++;
            }
            r.bytes += len;
          } catch (e) {
            r.errors.push(`${isRead ? "read" : "write"} [${off}, +${len}): ${e instanceof Error ? e.message : e}`);
          } finally {
            busy.splice(busy.indexOf(range), 1);
          }
        }
      };

      const killer = async () => {
        for (let k = 0; k < o.kills; k++) {
          // Spread the kills over the run, each at a random moment of its slot.
          const slot = (o.seconds * 1000) / o.kills;
          const at = t0 + k * slot + rng.int(0, Math.floor(slot * 0.6));
          const wait = at - performance.now();
          if (wait > 0) await new Promise((res) => setTimeout(res, wait));
          // Only once the driver is back: each kill then costs one reconnect.
          while (blk.connectionStats().state !== "connected") await new Promise((res) => setTimeout(res, 20));
          await daemon.kill("SIGKILL");
          r.kills++;
          await new Promise((res) => setTimeout(res, rng.int(0, 500)));
          await daemon.restart();
        }
      };

      await Promise.all([...Array.from({ length: depth }, worker), killer()]);
      // The last restart may still be under way: a request waits for it.
      await blk.read(0, blk.allocBuffer(blk.blockSize));
      if (o.backend !== "dpdk") await blk.flush();
      const s = blk.connectionStats();
      r.reconnects = s.reconnects;
      r.resubmitted = s.resubmitted;
      r.longestDowntimeMs = s.longestDowntimeMs;
      if (o.backend === "dpdk") {
        // The contents live in the example's memory: read them back through the driver.
        const chunk = blk.allocBuffer(MAX_IO);
        for (let off = 0; off < size; off += MAX_IO) {
          await blk.read(off, chunk);
          r.finalMismatches += countDiff(chunk, model.subarray(off, off + MAX_IO));
        }
      }
    } finally {
      await blk.close();
    }
    if (daemon instanceof QemuStorageDaemon) {
      // The independent reader: the image file itself.
      r.finalMismatches = countDiff(await Deno.readFile(daemon.imagePath!), model);
    }
  } finally {
    await daemon.stop();
  }
  r.seconds = (performance.now() - t0) / 1000;
  return r;
}

function countDiff(a: Uint8Array, b: Uint8Array): number {
  let n = Math.abs(a.byteLength - b.byteLength);
  const len = Math.min(a.byteLength, b.byteLength);
  for (let i = 0; i < len; i++) if (a[i] !== b[i]) n++;
  return n;
}

/** One line per figure, for humans. */
export function describeSoak(o: ReconnectSoakOptions, r: ReconnectSoakResult): string {
  return [
    `reconnect soak (${o.backend}, ${o.mode ?? "eventfd"}, ${o.kills} kills in ${o.seconds} s): ` +
    `${r.writes} writes, ${r.reads} reads, ${(r.bytes / 2 ** 30).toFixed(2)} GiB in ${r.seconds.toFixed(1)} s`,
    `  killed ${r.kills} times, reconnected ${r.reconnects} times, ${r.resubmitted} requests resubmitted, ` +
    `longest downtime ${r.longestDowntimeMs.toFixed(0)} ms`,
    `  rejected requests: ${r.errors.length}, read mismatches: ${r.readMismatches}, ` +
    `final mismatched bytes: ${r.finalMismatches}` +
    (o.backend === "dpdk" ? `, acknowledged bytes lost with the example's memory: ${r.lostAtRestart}` : ""),
    ...r.errors.slice(0, 5).map((e) => `    ${e}`),
  ].join("\n");
}
