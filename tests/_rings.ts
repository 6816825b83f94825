/**
 * Test helper: a virtqueue of either format over heap memory, with the mock
 * device's device-side ring attached to it (which tests may also drive with
 * hostile writes).
 */

import { type RingPair, ringPair, type RingPairOptions } from "../src/testing/mock/ring_pair.ts";

/** A ring pair and an address base for data buffers (above 4 GiB). */
export interface TestRing extends RingPair {
  /** An address base for pushDescAt (a data area above 4 GiB). */
  readonly data: number;
}

/**
 * Builds a ring with its device side (see `src/testing/mock/ring_pair.ts`).
 *
 * @param format split or packed
 * @param size queue size
 * @param options EVENT_IDX, indirect tables, used-length policy
 * @returns the ring, both sides
 */
export function makeRing(format: "split" | "packed", size: number, options: RingPairOptions = {}): TestRing {
  const pair = ringPair(format, size, options);
  return { ...pair, data: pair.vq.addressBase(0x1_0000_0000) };
}

/**
 * Adds a blk-like chain: header (readable), `dataLen` writable bytes, status.
 *
 * @param r the ring
 * @param dataLen writable data bytes
 * @param segments data segments (default 1)
 * @returns the chain id, or -1 when it does not fit
 */
export function addChain(r: TestRing, dataLen = 512, segments = 1): number {
  const id = r.vq.beginChain(segments + 2);
  if (id < 0) return -1;
  r.vq.pushDescAt(r.data, 64 * id, 16, false);
  for (let s = 0; s < segments; s++) r.vq.pushDescAt(r.data, 0x10_0000 + 4096 * s, dataLen / segments, true);
  r.vq.pushDescAt(r.data, 64 * id + 32, 1, true);
  return r.vq.endChain();
}
