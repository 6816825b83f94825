/**
 * Buffers the device can reach, carved out of one {@linkcode SharedRegion}.
 *
 * @module
 */

import { OutOfBufferMemoryError } from "../errors.ts";
import type { SharedRegion } from "./region.ts";

/**
 * The alignment a buffer of `size` bytes gets: 4096 from a page up, else the
 * next power of two from 64 (so a 512-byte sector buffer is 512-aligned).
 *
 * @param size the buffer size
 * @returns its alignment
 */
export function bufferAlignment(size: number): number {
  if (size >= 4096) return 4096;
  let a = 64;
  while (a < size) a *= 2;
  return a;
}

/**
 * A first-fit allocator with coalescing over a shared region, and the
 * translation from caller buffers to I/O virtual addresses.
 *
 * A caller buffer is recognised by its ArrayBuffer (a WeakMap lookup, no FFI),
 * so only buffers this pool handed out translate; anything else returns -1
 * and takes the bounce-buffer path.
 */
export class BufferPool {
  /** The region the buffers live in. */
  readonly region: SharedRegion;
  // Free extents, sorted by offset, never adjacent (always coalesced).
  #freeStart: number[] = [];
  #freeLen: number[] = [];
  #allocated = new Map<number, number>(); // offset -> length
  #bases = new WeakMap<ArrayBuffer, number>(); // caller ArrayBuffer -> region offset of its byte 0
  #available: number;

  /**
   * Creates the instance.
   *
   * @param region the memory to allocate from (already mapped for the device)
   */
  constructor(region: SharedRegion) {
    this.region = region;
    this.#freeStart.push(0);
    this.#freeLen.push(region.size);
    this.#available = region.size;
  }

  /** Bytes not allocated (possibly fragmented). */
  get available(): number {
    return this.#available;
  }

  /**
   * Allocates `size` bytes at `align` and returns the region offset.
   *
   * @param size bytes wanted (> 0)
   * @param align a power of two
   * @returns the offset in the region
   * @throws {OutOfBufferMemoryError} when no free extent fits
   */
  allocOffset(size: number, align: number = bufferAlignment(size)): number {
    const starts = this.#freeStart, lens = this.#freeLen;
    for (let i = 0; i < starts.length; i++) {
      const s = starts[i], l = lens[i];
      const at = Math.ceil(s / align) * align;
      const pad = at - s;
      if (pad + size > l) continue;
      const tail = l - pad - size;
      if (pad > 0 && tail > 0) {
        lens[i] = pad;
        starts.splice(i + 1, 0, at + size);
        lens.splice(i + 1, 0, tail);
      } else if (pad > 0) {
        lens[i] = pad;
      } else if (tail > 0) {
        starts[i] = at + size;
        lens[i] = tail;
      } else {
        starts.splice(i, 1);
        lens.splice(i, 1);
      }
      this.#allocated.set(at, size);
      this.#available -= size;
      return at;
    }
    throw new OutOfBufferMemoryError(
      `cannot allocate ${size} bytes of device-reachable memory: ${this.#available} of ${this.region.size} bytes free (raise the bufferPoolSize option)`,
    );
  }

  /**
   * Returns an allocation made by {@linkcode BufferPool.allocOffset}.
   *
   * @param offset what allocOffset returned
   */
  freeOffset(offset: number): void {
    const size = this.#allocated.get(offset);
    if (size === undefined) throw new RangeError(`offset ${offset} is not allocated`);
    this.#allocated.delete(offset);
    this.#available += size;
    const starts = this.#freeStart, lens = this.#freeLen;
    let lo = 0, hi = starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (starts[mid] < offset) lo = mid + 1;
      else hi = mid;
    }
    // lo: first extent after offset.
    const joinPrev = lo > 0 && starts[lo - 1] + lens[lo - 1] === offset;
    const joinNext = lo < starts.length && offset + size === starts[lo];
    if (joinPrev && joinNext) {
      lens[lo - 1] += size + lens[lo];
      starts.splice(lo, 1);
      lens.splice(lo, 1);
    } else if (joinPrev) {
      lens[lo - 1] += size;
    } else if (joinNext) {
      starts[lo] = offset;
      lens[lo] += size;
    } else {
      starts.splice(lo, 0, offset);
      lens.splice(lo, 0, size);
    }
  }

  /**
   * A caller buffer of `size` bytes.
   *
   * @param size bytes wanted (> 0)
   * @returns a view the device can reach
   */
  alloc(size: number): Uint8Array<ArrayBuffer> {
    const offset = this.allocOffset(size);
    let view: Uint8Array<ArrayBuffer>;
    try {
      view = this.region.slice(offset, size);
    } catch (e) {
      this.freeOffset(offset);
      throw e;
    }
    this.#bases.set(view.buffer, offset); // every view has an ArrayBuffer of its own
    return view;
  }

  /**
   * Returns a caller buffer; its view is detached where the region allows it.
   *
   * @param view a buffer from {@linkcode BufferPool.alloc} (not a subarray of one)
   * @returns false if the view did not come from this pool
   */
  free(view: Uint8Array<ArrayBuffer>): boolean {
    const base = this.#bases.get(view.buffer);
    if (base === undefined) return false;
    const offset = base + view.byteOffset;
    if (this.#allocated.get(offset) !== view.byteLength) return false;
    this.#bases.delete(view.buffer);
    this.region.release(view);
    this.freeOffset(offset);
    return true;
  }

  /**
   * The region offset of a caller buffer's first byte, or -1 when the buffer
   * is not from this pool (or was freed). A small integer for pools below
   * 1 GiB, so passing it around allocates nothing.
   *
   * @param view any Uint8Array
   * @returns the offset or -1
   */
  offsetOf(view: Uint8Array): number {
    const base = this.#bases.get(view.buffer as ArrayBuffer);
    return base === undefined ? -1 : base + view.byteOffset;
  }

  /**
   * The I/O virtual address of a caller buffer's first byte, or -1 when the
   * buffer is not from this pool (or was freed).
   *
   * @param view any Uint8Array
   * @returns the IOVA or -1
   */
  iovaOf(view: Uint8Array): number {
    const offset = this.offsetOf(view);
    return offset < 0 ? -1 : this.region.iova + offset;
  }
}
