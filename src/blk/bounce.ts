/**
 * Bounce buffers: a caller's buffer that the device cannot reach (a plain
 * `Uint8Array`) is copied through buffer-pool memory — in before a write,
 * out after a successful read. One record per request, freed on completion.
 *
 * @module
 */

import type { BufferPool } from "../memory/buffer_pool.ts";

/** The bounce buffers of one request. */
export interface Bounce {
  /** Pool offsets, one per bounced buffer. */
  readonly offsets: number[];
  /** Their lengths. */
  readonly lengths: number[];
  /** The caller's buffers, to copy back into after a read. */
  readonly targets: Uint8Array[];
}

/** Makes bounce records against one pool. */
export class Bouncer {
  readonly #pool: BufferPool;

  /**
   * Creates the instance.
   *
   * @param pool the device-reachable memory to bounce through
   */
  constructor(pool: BufferPool) {
    this.#pool = pool;
  }

  /**
   * Bounces `buf`: allocates pool memory for it (copying it in for a
   * write) and records it in `bounce` (a new record when undefined).
   *
   * @param bounce the request's record so far
   * @param buf the caller's buffer
   * @param copyIn whether the device reads it (a write)
   * @returns the record, and the pool offset standing in for `buf`
   * @throws {OutOfBufferMemoryError} when the pool is exhausted (the record's other buffers are freed)
   */
  add(bounce: Bounce | undefined, buf: Uint8Array, copyIn: boolean): { bounce: Bounce; offset: number } {
    const record = bounce ?? { offsets: [], lengths: [], targets: [] };
    let offset: number;
    try {
      offset = this.#pool.allocOffset(buf.byteLength);
    } catch (e) {
      this.free(record);
      throw e;
    }
    record.offsets.push(offset);
    record.lengths.push(buf.byteLength);
    record.targets.push(buf);
    if (copyIn) this.#pool.region.bytes.set(buf, offset);
    return { bounce: record, offset };
  }

  /**
   * Copies a completed read's data out to the caller's buffers.
   *
   * @param bounce the request's record
   */
  copyOut(bounce: Bounce): void {
    const bytes = this.#pool.region.bytes;
    for (let i = 0; i < bounce.offsets.length; i++) {
      const o = bounce.offsets[i];
      bounce.targets[i].set(bytes.subarray(o, o + bounce.lengths[i]));
    }
  }

  /**
   * Returns a record's pool memory.
   *
   * @param bounce the record, or undefined
   */
  free(bounce: Bounce | undefined): void {
    if (bounce) { for (const o of bounce.offsets) this.#pool.freeOffset(o); }
  }
}
