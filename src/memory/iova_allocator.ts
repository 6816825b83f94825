/**
 * Hands out I/O virtual addresses for memory regions, inside the range a
 * device (or IOMMU) accepts.
 *
 * @module
 */

import { OutOfBufferMemoryError } from "../errors.ts";
import { alignUp } from "./region.ts";

/** One usable IOVA range, inclusive. */
export interface IovaRange {
  /** First usable address. */
  first: number;
  /** Last usable address. */
  last: number;
}

/**
 * A bump allocator with reuse of freed blocks, aligned to 2 MiB (huge-page
 * friendly and far above the 4 KiB the IOMMUs need).
 */
export class IovaAllocator {
  static readonly ALIGN = 0x20_0000;
  readonly #ranges: IovaRange[];
  #next: number;
  #rangeIndex = 0;
  readonly #freed: { iova: number; size: number }[] = [];

  /**
   * @param ranges the usable ranges (addresses above 2^53 are out of reach and ignored)
   * @param start lowest address to hand out (default 1 MiB: stay clear of page 0)
   */
  constructor(ranges: IovaRange[], start = 0x10_0000) {
    this.#ranges = ranges
      .map((r) => ({ first: Math.max(r.first, start), last: Math.min(r.last, Number.MAX_SAFE_INTEGER) }))
      .filter((r) => r.last > r.first)
      .sort((a, b) => a.first - b.first);
    if (this.#ranges.length === 0) throw new OutOfBufferMemoryError("the device accepts no usable IOVA range");
    this.#next = alignUp(this.#ranges[0].first, IovaAllocator.ALIGN);
  }

  /**
   * An IOVA for `size` bytes.
   *
   * @param size bytes
   * @returns the address
   */
  alloc(size: number): number {
    const span = alignUp(size, IovaAllocator.ALIGN);
    const i = this.#freed.findIndex((f) => f.size >= span);
    if (i >= 0) return this.#freed.splice(i, 1)[0].iova;
    for (; this.#rangeIndex < this.#ranges.length; this.#rangeIndex++) {
      const r = this.#ranges[this.#rangeIndex];
      const at = Math.max(this.#next, alignUp(r.first, IovaAllocator.ALIGN));
      if (at + span - 1 <= r.last) {
        this.#next = at + span;
        return at;
      }
    }
    throw new OutOfBufferMemoryError(`no IOVA space left for ${size} bytes`);
  }

  /**
   * Returns an address from {@linkcode IovaAllocator.alloc}.
   *
   * @param iova the address
   * @param size the size it was allocated for
   */
  free(iova: number, size: number): void {
    this.#freed.push({ iova, size: alignUp(size, IovaAllocator.ALIGN) });
  }
}
