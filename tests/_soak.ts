/**
 * Data-integrity soak: mixed random reads, writes and flushes over several
 * queues against a file-backed qemu-storage-daemon, every read checked
 * against an in-memory model, and the image verified at the end by reading
 * the file directly (not through the driver).
 */

import type { CompletionMode } from "../src/blk/completion_driver.ts";
import { VirtioBlk } from "../src/blk/virtio_blk.ts";
import type { VirtioError } from "../src/errors.ts";
import { QemuStorageDaemon } from "../src/testing/qsd.ts";
import { Rng } from "./_support.ts";

/** Options of a soak run. */
export interface SoakOptions {
  ops: number;
  queues?: number;
  depth?: number;
  sizeMiB?: number;
  seed?: number;
  mode?: CompletionMode;
  onProgress?: (done: number) => void;
}

/** What a soak run did. */
export interface SoakResult {
  ops: number;
  reads: number;
  writes: number;
  flushes: number;
  bytes: number;
  readMismatches: number;
  imageMismatches: number;
  errors: number;
  seconds: number;
}

const SECTOR = 512;
const MAX_SECTORS = 64; // 32 KiB

/**
 * Runs a soak against a private daemon.
 *
 * @param o sizes and counts
 * @returns the counts; mismatches must be 0
 */
export async function soak(o: SoakOptions): Promise<SoakResult> {
  const queues = o.queues ?? 2, depth = o.depth ?? 16, size = (o.sizeMiB ?? 64) << 20;
  const rng = new Rng(o.seed ?? 0x50a4);
  const qsd = await QemuStorageDaemon.start({ size, numQueues: queues });
  const res: SoakResult = {
    ops: 0,
    reads: 0,
    writes: 0,
    flushes: 0,
    bytes: 0,
    readMismatches: 0,
    imageMismatches: 0,
    errors: 0,
    seconds: 0,
  };
  const t0 = performance.now();
  try {
    const model = new Uint8Array(size);
    const modelWords = new Uint32Array(model.buffer);
    const locks = new Uint8Array(size / SECTOR);
    const blk = await VirtioBlk.connect({
      transport: "vhost-user",
      path: qsd.socketPath,
      numQueues: queues,
      mode: o.mode ?? "poll",
      queueSize: 256,
    });
    let firstError: VirtioError | undefined;
    try {
      const slots = queues * depth;
      const bufs = Array.from({ length: slots }, () => blk.allocBuffer(MAX_SECTORS * SECTOR));
      const words = bufs.map((b) => new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4));
      const kind = new Uint8Array(slots); // 0 idle, 1 read, 2 write, 3 flush
      const first = new Int32Array(slots), count = new Int32Array(slots);
      const qs = Array.from({ length: queues }, (_, i) => blk.queue<number>(i));
      let issued = 0, writeId = 1;

      const issue = (slot: number): boolean => {
        const q = qs[Math.floor(slot / depth)];
        const r = rng.int(0, 99);
        if (r < 6) {
          kind[slot] = 3;
          q.flush(slot);
          return true;
        }
        for (let attempt = 0; attempt < 8; attempt++) {
          const n = rng.int(1, MAX_SECTORS);
          const s = rng.int(0, size / SECTOR - n);
          let busy = false;
          for (let k = s; k < s + n; k++) {
            if (locks[k]) {
              busy = true;
              break;
            }
          }
          if (busy) continue;
          for (let k = s; k < s + n; k++) locks[k] = 1;
          first[slot] = s;
          count[slot] = n;
          const view = bufs[slot].subarray(0, n * SECTOR);
          if (r < 53) {
            kind[slot] = 1;
            q.read(s * SECTOR, view, slot);
          } else {
            kind[slot] = 2;
            // Each sector: [write id, sector number, seed word...]: a cheap, unique pattern.
            const w = words[slot];
            const id = writeId++;
            for (let k = 0; k < n; k++) {
              const base = k * (SECTOR / 4);
              w.fill((id * 2654435761) >>> 0, base, base + SECTOR / 4);
              w[base] = id;
              w[base + 1] = s + k;
            }
            model.set(view, s * SECTOR); // no other request touches these sectors until this one completes
            q.write(s * SECTOR, view, slot);
          }
          return true;
        }
        return false;
      };

      const done = (slot: number, error: VirtioError | undefined): void => {
        res.ops++;
        if (error) {
          res.errors++;
          firstError ??= error;
        }
        const k = kind[slot];
        kind[slot] = 0;
        if (k === 3) {
          res.flushes++;
        } else {
          const s = first[slot], n = count[slot];
          res.bytes += n * SECTOR;
          if (k === 1) {
            res.reads++;
            const w = words[slot], m0 = (s * SECTOR) / 4;
            for (let i = 0; i < (n * SECTOR) / 4; i++) {
              if (w[i] !== modelWords[m0 + i]) {
                res.readMismatches++;
                break;
              }
            }
          } else {
            res.writes++;
          }
          for (let j = s; j < s + n; j++) locks[j] = 0;
        }
        if (issued < o.ops && !firstError && issue(slot)) issued++;
      };

      for (let slot = 0; slot < slots && issued < o.ops; slot++) if (issue(slot)) issued++;
      for (const q of qs) q.submit();
      let lastReport = 0, turns = 0;
      while (res.ops < issued) {
        let n = 0;
        for (const q of qs) n += q.poll(done);
        // Slots that found no free range stay idle; retry them.
        if (issued < o.ops && !firstError) {
          for (let slot = 0; slot < slots; slot++) if (kind[slot] === 0 && issue(slot)) issued++;
        }
        for (const q of qs) q.submit(); // one notification for all issued this turn
        if (n === 0) {
          if (blk.mode === "eventfd") await Promise.race(qs.map((q) => q.wait()));
          else if (++turns % 1024 === 0) await new Promise((r) => setImmediate(r));
        }
        if (res.ops - lastReport >= 100_000) {
          lastReport = res.ops;
          o.onProgress?.(res.ops);
        }
      }
      await blk.flush();
    } finally {
      await blk.close();
    }
    if (firstError) throw firstError;
    // The independent reader: the image file itself.
    const image = await Deno.readFile(qsd.imagePath!);
    const imageWords = new Uint32Array(image.buffer, image.byteOffset, image.byteLength / 4);
    for (let i = 0; i < modelWords.length; i += SECTOR / 4) {
      for (let j = i; j < i + SECTOR / 4; j++) {
        if (imageWords[j] !== modelWords[j]) {
          res.imageMismatches++;
          break;
        }
      }
    }
  } finally {
    await qsd.stop();
  }
  res.seconds = (performance.now() - t0) / 1000;
  return res;
}
