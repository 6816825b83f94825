/**
 * The request matrix every configuration must pass: random writes (some
 * vectored, some bounced) mirrored in a model, reads checked against it,
 * discard, write-zeroes, flush. The caller verifies the result with an
 * independent reader (the image file, or the mock's disk).
 */

import assert from "node:assert/strict";
import type { VirtioBlk } from "../src/blk/virtio_blk.ts";
import { firstDifference, type Rng } from "./_support.ts";

/** Random writes (sizes 512 B–128 KiB, 4 KiB-aligned offsets, some vectored, some bounced), mirrored in `model`. */
export async function randomWrites(blk: VirtioBlk, model: Uint8Array, count: number, rng: Rng): Promise<void> {
  const cap = model.byteLength;
  let done = 0;
  while (done < count) {
    const batch: Promise<void>[] = [];
    const ranges: [number, number][] = [];
    const pool: Uint8Array<ArrayBuffer>[] = [];
    while (batch.length < 32 && done + batch.length < count) {
      const size = 512 * rng.int(1, 256);
      const offset = 4096 * rng.int(0, Math.floor((cap - size) / 4096));
      if (ranges.some(([s, e]) => offset < e && s < offset + size)) continue; // no overlap in flight
      ranges.push([offset, offset + size]);
      const data = new Uint8Array(size);
      rng.fill(data);
      model.set(data, offset);
      const kind = rng.int(0, 9);
      if (kind < 6) {
        const buf = blk.allocBuffer(size);
        buf.set(data);
        pool.push(buf);
        batch.push(blk.write(offset, buf));
      } else if (kind < 8 && size >= 1024) {
        // Vectored: 2–4 segments, each a multiple of 512, from the pool and plain memory.
        const nsegs = Math.min(rng.int(2, 4), size / 512);
        const segs: Uint8Array[] = [];
        let at = 0;
        for (let i = 0; i < nsegs; i++) {
          const left = (size - at) / 512 - (nsegs - 1 - i);
          const len = i === nsegs - 1 ? size - at : 512 * rng.int(1, left);
          let seg: Uint8Array;
          if (rng.int(0, 1) === 0) {
            const b = blk.allocBuffer(len);
            pool.push(b);
            seg = b;
          } else {
            seg = new Uint8Array(len);
          }
          seg.set(data.subarray(at, at + len));
          segs.push(seg);
          at += len;
        }
        batch.push(blk.writev(offset, segs));
      } else {
        batch.push(blk.write(offset, data)); // plain memory: bounced
      }
    }
    await Promise.all(batch);
    for (const b of pool) blk.freeBuffer(b);
    done += batch.length;
  }
}

/**
 * Reads random ranges through the driver and compares them with `model`: every
 * other one into a pool buffer (the rest bounce), every third one vectored.
 *
 * @param blk the device
 * @param model its expected contents
 * @param count how many reads
 * @param maxSectors the longest read, in 512-byte sectors
 * @param rng the seeded PRNG
 * @param context appended to a failure's message (a seed, say)
 */
export async function spotCheckReads(
  blk: VirtioBlk,
  model: Uint8Array,
  count: number,
  maxSectors: number,
  rng: Rng,
  context = "",
): Promise<void> {
  const size = model.byteLength;
  for (let i = 0; i < count; i++) {
    const len = 512 * rng.int(1, maxSectors);
    const off = 512 * rng.int(0, (size - len) / 512);
    const buf = i % 2 ? blk.allocBuffer(len) : new Uint8Array(len);
    if (i % 3 === 0 && len >= 1024) {
      const half = 512 * Math.floor(len / 1024);
      await blk.readv(off, [buf.subarray(0, half), buf.subarray(half)]);
    } else {
      await blk.read(off, buf);
    }
    assert.equal(firstDifference(buf, model.subarray(off, off + len)), -1, `read at ${off}${context}`);
    if (i % 2) blk.freeBuffer(buf as Uint8Array<ArrayBuffer>);
  }
}

/**
 * Runs the matrix on `blk` (capacity ≥ 8 MiB), updating `model`.
 *
 * @param blk the device
 * @param model its expected contents (starts as the device's contents)
 * @param writes how many random writes
 * @param rng the seeded PRNG
 */
export async function requestMatrix(blk: VirtioBlk, model: Uint8Array, writes: number, rng: Rng): Promise<void> {
  await randomWrites(blk, model, writes, rng);
  await blk.flush();
  await spotCheckReads(blk, model, 50, 128, rng);
  // Discard and write-zeroes: both must read back as zeroes afterwards.
  const mib = 1 << 20;
  await blk.discard(mib, 256 * 1024);
  model.fill(0, mib, mib + 256 * 1024);
  await blk.writeZeroes(2 * mib, 64 * 1024, { unmap: true });
  model.fill(0, 2 * mib, 2 * mib + 64 * 1024);
  await blk.writeZeroes(3 * mib + 4096, 8192);
  model.fill(0, 3 * mib + 4096, 3 * mib + 4096 + 8192);
  await blk.flush();
  // Read back in 1 MiB requests: with an IOMMU, QEMU maps each 4 KiB page as
  // its own segment and refuses requests of more than 1024 of them.
  const back = blk.allocBuffer(mib);
  for (let at = 0; at < 4 * mib; at += mib) {
    await blk.read(at, back);
    assert.equal(
      firstDifference(back, model.subarray(at, at + mib)),
      -1,
      `after discard / write-zeroes, MiB ${at / mib}`,
    );
  }
  blk.freeBuffer(back);
}
