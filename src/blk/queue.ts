/**
 * {@linkcode VirtioBlkQueue}: one virtio-blk request queue, for the batch
 * API — enqueue many requests with a context of your own, notify the device
 * once, reap completions in bulk. One request is one descriptor chain.
 *
 * @module
 */

import type { VirtioError } from "../errors.ts";
import { type CompletionHandler, NO_LIMIT, type QueueEngine } from "./queue_engine.ts";
import {
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from "./spec.ts";

export type { CompletionHandler };

/** One finished request of the batch API. */
export interface BlkCompletion<T> {
  /** The context given when the request was enqueued. */
  readonly context: T;
  /** Why it failed, or `undefined` on success. */
  readonly error: VirtioError | undefined;
}

/** Options of write-zeroes requests. */
export interface WriteZeroesOptions {
  /** Let the device deallocate the range (honoured when the device allows it). */
  unmap?: boolean;
}

/** Counters of one queue ({@linkcode VirtioBlkQueue.stats}). */
export interface VirtioBlkQueueStats {
  /** Requests the device completed. */
  readonly completions: number;
  /** Notifications (kicks) sent; fewer than requests when the device suppresses them. */
  readonly notifications: number;
  /**
   * Completions whose used length exceeded the chain's device-writable
   * bytes, clamped (a device bug the spec's intent makes harmless: virtio-blk
   * needs no length). Always 0 with `strictUsedLength`, which fails instead.
   */
  readonly usedLengthOver: number;
  /**
   * Successful reads whose used length was shorter than their data, accepted
   * because the status byte says OK. Always 0 with `strictUsedLength`.
   */
  readonly usedLengthShort: number;
}

let wrap: <T>(engine: QueueEngine<T>) => VirtioBlkQueue<T>;
let unwrap: <T>(queue: VirtioBlkQueue<T>) => QueueEngine<T>;

/**
 * One request queue of a virtio-blk device (`blk.queue(i)`).
 *
 * Enqueue requests with a caller context, notify the device once per
 * {@linkcode VirtioBlkQueue.submit}, and get completions back in bulk
 * through {@linkcode VirtioBlkQueue.poll} (synchronous, no allocation) or
 * {@linkcode VirtioBlkQueue.completions} (an async iterator). A full queue
 * throws {@linkcode QueueFullError}: reap, then retry.
 *
 * @example
 * ```ts
 * import { VirtioBlk } from "../../mod.ts";
 * import { MockBlkDevice } from "../../testing.ts";
 * await using blk = await VirtioBlk.connect({ transport: "mock", device: new MockBlkDevice() });
 * const q = blk.queue<number>(0);
 * const bufs = Array.from({ length: 32 }, () => blk.allocBuffer(4096));
 * bufs.forEach((buf, i) => q.read(i * 4096, buf, i));
 * q.submit();
 * let done = 0;
 * while (done < 32) {
 *   done += q.poll((i, err) => {
 *     if (err) throw err;
 *   });
 *   if (done < 32) await q.wait();
 * }
 * ```
 */
export class VirtioBlkQueue<T = unknown> {
  readonly #e: QueueEngine<T>;

  private constructor(engine: QueueEngine<T>) {
    this.#e = engine;
  }

  static {
    wrap = <T>(engine: QueueEngine<T>) => new VirtioBlkQueue<T>(engine);
    unwrap = <T>(queue: VirtioBlkQueue<T>) => queue.#e;
  }

  /** The queue's index on the device. */
  get index(): number {
    return this.#e.index;
  }

  /** Entries in the underlying virtqueue. */
  get queueSize(): number {
    return this.#e.queueSize;
  }

  /** Requests enqueued and not yet handed back (by poll, the iterator, or a settled promise). */
  get inFlight(): number {
    return this.#e.inFlight;
  }

  /** Notifications sent to the device so far. */
  get notifications(): number {
    return this.#e.notifications;
  }

  /** Why the queue failed (device protocol violation, lost connection, stall), if it did. */
  get error(): VirtioError | undefined {
    return this.#e.error;
  }

  /**
   * How many reads or writes of `segments` buffers this queue holds in flight
   * at once: each takes a header, its buffers and a status descriptor, and
   * without indirect descriptors a ring of N entries holds N / (segments + 2)
   * of them (85 plain requests in 256 entries). Beyond it the batch API
   * throws {@linkcode QueueFullError} and the promise API queues.
   *
   * @param segments data buffers per request (default 1)
   * @returns the number of requests
   */
  maxInFlight(segments = 1): number {
    return Math.min(this.#e.ring.maxChains(segments + 2), this.#e.queueSize);
  }

  /**
   * What this queue has counted so far, among it the device's used-length
   * anomalies that the default (non-strict) policy tolerates.
   *
   * @returns a snapshot
   */
  stats(): VirtioBlkQueueStats {
    return {
      completions: this.#e.reaped,
      notifications: this.#e.notifications,
      usedLengthOver: this.#e.ring.usedLengthClamped,
      usedLengthShort: this.#e.usedLengthShort,
    };
  }

  /**
   * Enqueues a read of `buf.byteLength` bytes at `offset` into `buf`.
   *
   * @param offset byte offset (block-aligned)
   * @param buf destination (from `allocBuffer` for zero-copy; others are bounced)
   * @param context returned with the completion
   * @throws {QueueFullError} when the queue has no room; {@linkcode InvalidArgumentError} for bad arguments
   */
  read(offset: number | bigint, buf: Uint8Array, context: T): void {
    this.#e.addBatch(VIRTIO_BLK_T_IN, offset, buf, 0, false, context);
  }

  /**
   * Enqueues a write of `buf` at `offset`.
   *
   * @param offset byte offset (block-aligned)
   * @param buf source
   * @param context returned with the completion
   */
  write(offset: number | bigint, buf: Uint8Array, context: T): void {
    this.#e.addBatch(VIRTIO_BLK_T_OUT, offset, buf, 0, false, context);
  }

  /**
   * Enqueues a vectored read: the buffers are filled in order from `offset`.
   *
   * @param offset byte offset (block-aligned)
   * @param bufs destinations (total length block-aligned)
   * @param context returned with the completion
   */
  readv(offset: number | bigint, bufs: readonly Uint8Array[], context: T): void {
    this.#e.addBatch(VIRTIO_BLK_T_IN, offset, bufs, 0, false, context);
  }

  /**
   * Enqueues a vectored write of the buffers, in order, from `offset`.
   *
   * @param offset byte offset (block-aligned)
   * @param bufs sources (total length block-aligned)
   * @param context returned with the completion
   */
  writev(offset: number | bigint, bufs: readonly Uint8Array[], context: T): void {
    this.#e.addBatch(VIRTIO_BLK_T_OUT, offset, bufs, 0, false, context);
  }

  /**
   * Enqueues a flush of the device's write cache.
   *
   * @param context returned with the completion
   */
  flush(context: T): void {
    this.#e.addBatch(VIRTIO_BLK_T_FLUSH, 0, undefined, 0, false, context);
  }

  /**
   * Enqueues a discard of `[offset, offset + length)`.
   *
   * @param offset byte offset (block-aligned)
   * @param length byte length
   * @param context returned with the completion
   */
  discard(offset: number | bigint, length: number | bigint, context: T): void {
    this.#e.addBatch(VIRTIO_BLK_T_DISCARD, offset, undefined, length, false, context);
  }

  /**
   * Enqueues a write-zeroes of `[offset, offset + length)`.
   *
   * @param offset byte offset (block-aligned)
   * @param length byte length
   * @param context returned with the completion
   * @param options `unmap: true` lets the device deallocate the range
   */
  writeZeroes(offset: number | bigint, length: number | bigint, context: T, options?: WriteZeroesOptions): void {
    this.#e.addBatch(VIRTIO_BLK_T_WRITE_ZEROES, offset, undefined, length, options?.unmap === true, context);
  }

  /**
   * Notifies the device of everything enqueued since the last submit (one
   * notification for the batch, skipped when the device asked not to be
   * notified).
   */
  submit(): void {
    this.#e.submit();
  }

  /**
   * Reaps finished requests without waiting: calls `handler(context, error)`
   * for each (in completion order) and returns how many. Makes no allocation
   * on success. Requests of the promise API are settled along the way.
   *
   * @param handler receives each completion
   * @param max reap at most this many
   * @returns the number of batch completions handed to `handler`
   */
  poll(handler: CompletionHandler<T>, max: number = NO_LIMIT): number {
    return this.#e.poll(handler, max);
  }

  /**
   * Resolves once {@linkcode VirtioBlkQueue.poll} has something to return,
   * or nothing is in flight, or the queue failed. Waits by polling or on the
   * device's interrupts, per the connect mode. Concurrent calls share one wait.
   *
   * @example A queue-depth-1 loop without allocation per request but the wait
   * ```ts ignore
   * q.read(0, buf, 0);
   * q.submit();
   * while (q.poll(onDone) === 0) await q.wait();
   * ```
   */
  wait(): Promise<void> {
    return this.#e.wait();
  }

  /**
   * Yields the batch completions of this queue as they arrive, waiting on
   * the device (by polling or on its interrupts, per the connect mode), and
   * returns once nothing is left in flight.
   *
   * @returns an async iterator of completions
   */
  async *completions(): AsyncIterableIterator<BlkCompletion<T>> {
    for (;;) {
      for (let c = this.#e.takeReady(); c !== undefined; c = this.#e.takeReady()) yield c;
      if (this.#e.batchInFlight === 0) return;
      await this.#e.wait();
    }
  }
}

/**
 * The public face of a queue engine (for `VirtioBlk`, which makes both).
 *
 * @param engine the queue's engine
 * @returns its facade
 */
export function queueFacade<T>(engine: QueueEngine<T>): VirtioBlkQueue<T> {
  return wrap(engine);
}

/**
 * The engine behind a queue's facade (for the blk layer's own tests and
 * diagnostics; not exported from an entry point).
 *
 * @param queue a queue
 * @returns its engine
 */
export function engineOf<T>(queue: VirtioBlkQueue<T>): QueueEngine<T> {
  return unwrap(queue);
}
