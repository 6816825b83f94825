/**
 * The interop request set, the same for every back-end: random writes of one
 * block to 64 KiB at queue depth 8 (never two overlapping writes in flight),
 * mirrored in a model, then everything read back at queue depth 8 and
 * compared.
 */

import assert from "node:assert/strict";
import type { VirtioBlk } from "../src/blk/virtio_blk.ts";
import { firstDifference, type Rng } from "./_support.ts";

/** What a run did. */
export interface InteropRun {
  writes: number;
  bytesWritten: number;
}

/**
 * Random verified writes over `[0, region)` of `blk`.
 *
 * @param blk the device
 * @param region bytes of the device used (from 0)
 * @param writes how many writes
 * @param rng the seeded PRNG
 * @returns what was done
 */
export async function verifiedRandomWrites(
  blk: VirtioBlk,
  region: number,
  writes: number,
  rng: Rng,
): Promise<InteropRun> {
  const bs = blk.blockSize;
  const model = new Uint8Array(region);
  // What the device holds before: the model starts from a read of it.
  await readAll(blk, model);
  const inFlight = new Map<number, [number, number]>();
  let issued = 0, bytes = 0;
  const worker = async (w: number) => {
    const buf = blk.allocBuffer(64 * 1024);
    try {
      while (issued < writes) {
        issued++;
        const size = bs * rng.int(1, (64 * 1024) / bs);
        let offset: number;
        do {
          offset = bs * rng.int(0, (region - size) / bs);
        } while ([...inFlight.values()].some(([s, e]) => offset < e && s < offset + size));
        inFlight.set(w, [offset, offset + size]);
        const data = buf.subarray(0, size);
        rng.fill(data);
        model.set(data, offset);
        await blk.write(offset, data);
        inFlight.delete(w);
        bytes += size;
      }
    } finally {
      blk.freeBuffer(buf);
    }
  };
  await Promise.all(Array.from({ length: 8 }, (_, w) => worker(w)));
  const back = new Uint8Array(region);
  await readAll(blk, back);
  assert.equal(firstDifference(back, model), -1, "every write reads back");
  return { writes, bytesWritten: bytes };
}

/** Reads `[0, out.length)` into `out` in 64 KiB requests, 8 at a time. */
async function readAll(blk: VirtioBlk, out: Uint8Array): Promise<void> {
  const chunk = 64 * 1024;
  let next = 0;
  const worker = async () => {
    const buf = blk.allocBuffer(chunk);
    try {
      for (let at = next; at < out.length; at = next) {
        next += chunk;
        const view = buf.subarray(0, Math.min(chunk, out.length - at));
        await blk.read(at, view);
        out.set(view, at);
      }
    } finally {
      blk.freeBuffer(buf);
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
}
