/**
 * {@linkcode VirtioBlkQueue}: one virtio-blk request queue, with a batch API
 * (enqueue many, one notification, reap in bulk) and the machinery behind
 * the promise API of {@linkcode VirtioBlk}.
 *
 * @module
 */

import {
  ClosedError,
  DeviceIoError,
  DeviceProtocolError,
  DeviceUnsupportedError,
  InvalidArgumentError,
  QueueFullError,
  ReadOnlyError,
  TimeoutError,
  type VirtioError,
} from "../errors.ts";
import type { BufferPool } from "../memory/buffer_pool.ts";
import type { QueueNotifier } from "../transport/transport.ts";
import type { Virtqueue } from "../virtqueue/virtqueue.ts";
import { type BlkLimits, checkRange, toByteLength, toByteOffset } from "./limits.ts";
import {
  decodeDeviceId,
  OP_DISCARD,
  OP_FLUSH,
  OP_GET_ID,
  OP_NAMES,
  OP_READ,
  OP_WRITE,
  OP_WRITE_ZEROES,
  SLOT,
  STATUS_UNSET,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from "./request.ts";

/** One finished request of the batch API. */
export interface BlkCompletion<T> {
  /** The context given when the request was enqueued. */
  readonly context: T;
  /** Why it failed, or `undefined` on success. */
  readonly error: VirtioError | undefined;
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

/** Receives finished requests from {@linkcode VirtioBlkQueue.poll}. */
export type CompletionHandler<T> = (context: T, error: VirtioError | undefined) => void;

/** Options of write-zeroes requests. */
export interface WriteZeroesOptions {
  /** Let the device deallocate the range (honoured when the device allows it). */
  unmap?: boolean;
}

/** What the queue needs from the device object that owns it. */
export interface QueueHost {
  /** Make sure the completion driver is running (promise requests or an iterator wait). */
  requestDriving(): void;
  /** The error to fail with when the connection is gone, else undefined. */
  connectionError(): VirtioError | undefined;
}

/** Settles a promise-API request. */
interface Deferred {
  resolve(value: unknown): void;
  reject(reason: unknown): void;
}

/** A promise-API request waiting for room in the queue. */
interface Backlogged {
  op: number;
  offset: number | bigint;
  buffers: Uint8Array | readonly Uint8Array[] | undefined;
  length: number | bigint;
  unmap: boolean;
  deferred: Deferred;
}

/** Bounce buffers of one request (foreign caller buffers copied through the pool). */
interface Bounce {
  offsets: number[];
  lengths: number[];
  targets: Uint8Array[]; // caller buffers to copy back into (reads)
}

const OWNER_BATCH = 0;
const OWNER_PROMISE = 1;
const NO_BUFFERS: readonly Uint8Array[] = [];
/** "No limit" for reaping: a small integer, since Infinity would be boxed on every call. */
const NO_LIMIT = 0x3fff_ffff;

/**
 * One request queue of a virtio-blk device.
 *
 * The batch API enqueues requests with a caller context, notifies the
 * device once per {@linkcode VirtioBlkQueue.submit}, and hands completions
 * back in bulk through {@linkcode VirtioBlkQueue.poll} (synchronous, no
 * allocation) or {@linkcode VirtioBlkQueue.completions} (an async iterator).
 * A full queue throws {@linkcode QueueFullError}: reap, then retry.
 *
 * @example
 * ```ts ignore
 * const q = blk.queue(0);
 * for (let i = 0; i < 32; i++) q.read(i * 4096, bufs[i], i);
 * q.submit();
 * let done = 0;
 * while (done < 32) {
 *   done += q.poll((i, err) => { if (err) throw err; console.log("read", i); });
 * }
 * ```
 */
export class VirtioBlkQueue<T = unknown> {
  /** The queue's index on the device. */
  readonly index: number;
  readonly #vq: Virtqueue;
  readonly #notifier: QueueNotifier;
  readonly #pool: BufferPool;
  readonly #limits: BlkLimits;
  readonly #host: QueueHost;
  readonly #reqU32: Uint32Array;
  readonly #reqU8: Uint8Array;
  readonly #reqBase: number; // address base of the request area in the virtqueue
  readonly #poolBase: number; // address base of the buffer pool
  readonly #queueSize: number;
  readonly #slotSize: number;
  // Per chain id.
  readonly #ctx: unknown[];
  readonly #owner: Uint8Array;
  readonly #op: Uint8Array;
  readonly #bounce: (Bounce | undefined)[];
  readonly #segOffset: Float64Array;
  // Batch completions reaped by the driver, waiting for poll() or the iterator.
  readonly #readyCtx: unknown[];
  readonly #readyErr: (VirtioError | undefined)[];
  #readyHead = 0;
  #readyCount = 0;
  #waiting: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  // Requests added and not yet delivered (settled, handed over, or put in the ready list).
  #outstanding = 0;
  // Promise API.
  #promiseInFlight = 0;
  readonly #backlog: Backlogged[] = [];
  #needKick = false;
  #failure: VirtioError | undefined;
  #closed = false;
  #notifications = 0;
  #usedLengthShort = 0;
  #reaped = 0; // chains reaped so far (watchdog progress)
  #watchReaped = 0;
  #stalledMs = 0;

  /**
   * Built by {@linkcode VirtioBlk}; not for direct use.
   *
   * @param init the queue's parts
   * @internal
   */
  constructor(init: {
    index: number;
    virtqueue: Virtqueue;
    notifier: QueueNotifier;
    pool: BufferPool;
    limits: BlkLimits;
    host: QueueHost;
    /** The queue's request-slot area in shared memory. */
    requestArea: Uint8Array<ArrayBuffer>;
    /** The IOVA of requestArea[0]. */
    requestAreaIova: number;
    /** Bytes per request slot (header, status, id, and the indirect table). */
    slotSize: number;
  }) {
    this.index = init.index;
    this.#vq = init.virtqueue;
    this.#notifier = init.notifier;
    this.#pool = init.pool;
    this.#limits = init.limits;
    this.#host = init.host;
    const area = init.requestArea;
    this.#reqU8 = area;
    this.#slotSize = init.slotSize;
    this.#reqU32 = new Uint32Array(area.buffer, area.byteOffset, area.byteLength >> 2);
    this.#reqBase = this.#vq.addressBase(init.requestAreaIova);
    this.#poolBase = this.#vq.addressBase(init.pool.region.iova);
    const q = this.#queueSize = this.#vq.queueSize;
    this.#ctx = new Array(q).fill(undefined);
    this.#owner = new Uint8Array(q);
    this.#op = new Uint8Array(q);
    this.#bounce = new Array(q).fill(undefined);
    this.#segOffset = new Float64Array(Math.max(1, this.#limits.maxSegments));
    this.#readyCtx = new Array(q).fill(undefined);
    this.#readyErr = new Array(q).fill(undefined);
  }

  /** Entries in the underlying virtqueue. */
  get queueSize(): number {
    return this.#queueSize;
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
    return Math.min(this.#vq.maxChains(segments + 2), this.#queueSize);
  }

  /** Requests enqueued and not yet handed back (by poll, the iterator, or a settled promise). */
  get inFlight(): number {
    return this.#outstanding + this.#readyCount;
  }

  /** Notifications sent to the device so far. */
  get notifications(): number {
    return this.#notifications;
  }

  /**
   * What this queue has counted so far, among it the device's used-length
   * anomalies that the default (non-strict) policy tolerates.
   *
   * @returns a snapshot
   */
  stats(): VirtioBlkQueueStats {
    return {
      completions: this.#reaped,
      notifications: this.#notifications,
      usedLengthOver: this.#vq.usedLengthClamped,
      usedLengthShort: this.#usedLengthShort,
    };
  }

  /** Why the queue failed (device protocol violation or lost connection), if it did. */
  get error(): VirtioError | undefined {
    return this.#failure;
  }

  /** The underlying virtqueue (for diagnostics and tests). */
  get virtqueue(): Virtqueue {
    return this.#vq;
  }

  // ------------------------------------------------------------ batch API

  /**
   * Enqueues a read of `buf.byteLength` bytes at `offset` into `buf`.
   *
   * @param offset byte offset (block-aligned)
   * @param buf destination (from `allocBuffer` for zero-copy; others are bounced)
   * @param context returned with the completion
   * @throws {QueueFullError} when the queue has no room; {@linkcode InvalidArgumentError} for bad arguments
   */
  read(offset: number | bigint, buf: Uint8Array, context: T): void {
    this.#addOrThrow(OP_READ, offset, buf, 0, false, context, OWNER_BATCH);
  }

  /**
   * Enqueues a write of `buf` at `offset`.
   *
   * @param offset byte offset (block-aligned)
   * @param buf source
   * @param context returned with the completion
   */
  write(offset: number | bigint, buf: Uint8Array, context: T): void {
    this.#addOrThrow(OP_WRITE, offset, buf, 0, false, context, OWNER_BATCH);
  }

  /**
   * Enqueues a vectored read: the buffers are filled in order from `offset`.
   *
   * @param offset byte offset (block-aligned)
   * @param bufs destinations (total length block-aligned)
   * @param context returned with the completion
   */
  readv(offset: number | bigint, bufs: readonly Uint8Array[], context: T): void {
    this.#addOrThrow(OP_READ, offset, bufs, 0, false, context, OWNER_BATCH);
  }

  /**
   * Enqueues a vectored write of the buffers, in order, from `offset`.
   *
   * @param offset byte offset (block-aligned)
   * @param bufs sources (total length block-aligned)
   * @param context returned with the completion
   */
  writev(offset: number | bigint, bufs: readonly Uint8Array[], context: T): void {
    this.#addOrThrow(OP_WRITE, offset, bufs, 0, false, context, OWNER_BATCH);
  }

  /**
   * Enqueues a flush of the device's write cache.
   *
   * @param context returned with the completion
   */
  flush(context: T): void {
    this.#addOrThrow(OP_FLUSH, 0, undefined, 0, false, context, OWNER_BATCH);
  }

  /**
   * Enqueues a discard of `[offset, offset + length)`.
   *
   * @param offset byte offset (block-aligned)
   * @param length byte length
   * @param context returned with the completion
   */
  discard(offset: number | bigint, length: number | bigint, context: T): void {
    this.#addOrThrow(OP_DISCARD, offset, undefined, length, false, context, OWNER_BATCH);
  }

  /**
   * Enqueues a write-zeroes of `[offset, offset + length)`.
   *
   * @param offset byte offset (block-aligned)
   * @param length byte length
   * @param context returned with the completion
   * @param options `unmap: true` lets the device deallocate the range
   */
  writeZeroes(
    offset: number | bigint,
    length: number | bigint,
    context: T,
    options?: WriteZeroesOptions,
  ): void {
    this.#addOrThrow(OP_WRITE_ZEROES, offset, undefined, length, options?.unmap === true, context, OWNER_BATCH);
  }

  /**
   * Notifies the device of everything enqueued since the last submit (one
   * notification for the batch, skipped when the device asked not to be
   * notified).
   */
  submit(): void {
    if (!this.#needKick) return;
    this.#needKick = false;
    const lost = this.#host.connectionError();
    if (lost) {
      this.fail(lost);
      return;
    }
    if (this.#vq.availNotifNeeded()) {
      this.#notifications++;
      this.#notifier.notify();
    }
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
    let n = 0;
    while (this.#readyCount > 0 && n < max) {
      const h = this.#readyHead;
      const ctx = this.#readyCtx[h] as T, err = this.#readyErr[h];
      this.#dropReadyHead();
      n++;
      handler(ctx, err);
    }
    // Room in the ready list may be what the backlog waits for.
    if (n > 0 && this.#backlog.length > 0) this.#pumpBacklog();
    if (n < max) n += this.#reap(handler, max - n);
    return n;
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
    if (this.#readyCount > 0 || this.#batchInFlight() === 0 || this.#failure || this.hasUsed()) {
      return Promise.resolve();
    }
    if (this.#waiting === undefined) {
      this.#waiting = new Promise<void>((resolve) => (this.#wake = resolve));
      this.#host.requestDriving();
    }
    return this.#waiting;
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
      if (this.#readyCount === 0) this.#reap(undefined, NO_LIMIT);
      while (this.#readyCount > 0) {
        const h = this.#readyHead;
        const c = { context: this.#readyCtx[h] as T, error: this.#readyErr[h] };
        this.#dropReadyHead();
        if (this.#backlog.length > 0) this.#pumpBacklog(); // room in the ready list
        yield c;
      }
      if (this.#batchInFlight() === 0) return;
      await this.wait();
    }
  }

  // ------------------------------------------------------ promise API (internal)

  /**
   * Starts a request for the promise API. When the queue is full the request
   * waits in a backlog, in order.
   *
   * @internal
   */
  enqueuePromise(
    op: number,
    offset: number | bigint,
    buffers: Uint8Array | readonly Uint8Array[] | undefined,
    length: number | bigint,
    unmap: boolean,
  ): Promise<unknown> {
    const deferred = Promise.withResolvers<unknown>();
    try {
      if (this.#backlog.length > 0 || this.#add(op, offset, buffers, length, unmap, deferred, OWNER_PROMISE) < 0) {
        this.#checkUsable();
        this.#prevalidate(op, offset, buffers, length);
        this.#backlog.push({ op, offset, buffers, length, unmap, deferred });
      }
      this.#host.requestDriving();
    } catch (e) {
      deferred.reject(e);
    }
    return deferred.promise;
  }

  /** Whether the completion driver has work here. @internal */
  needsDriving(): boolean {
    return this.#promiseInFlight > 0 || this.#backlog.length > 0 ||
      this.#wake !== undefined;
  }

  /** Whether a notification is owed for requests enqueued by the promise API. @internal */
  get pendingSubmit(): boolean {
    return this.#needKick;
  }

  /**
   * Reaps everything finished (promise requests settle, batch ones go to the
   * ready list for poll() or the iterator). Returns the number reaped.
   *
   * @internal
   */
  drain(): number {
    const n = this.#reap(undefined, NO_LIMIT);
    if (this.#wake && (this.#readyCount > 0 || this.#batchInFlight() === 0 || this.#failure)) {
      const wake = this.#wake;
      this.#wake = undefined;
      this.#waiting = undefined;
      wake();
    }
    return n;
  }

  /** Whether the device has finished requests not yet reaped. @internal */
  hasUsed(): boolean {
    if (this.#failure) return false;
    try {
      return this.#vq.hasUsed();
    } catch {
      return true; // the violation surfaces in drain()
    }
  }

  /** Enables or disables used-buffer notifications. @internal */
  setInterruptsEnabled(enabled: boolean): void {
    if (!this.#failure) this.#vq.setUsedNotifEnabled(enabled);
  }

  /**
   * Fails the queue: every request in flight or waiting completes with
   * `error`, and every later request throws it. The device is not stopped
   * here: until `close()` resets it, it may still write the buffers of the
   * requests that were in flight (bounce buffers among them are retired, never
   * reused).
   *
   * @internal
   */
  fail(error: VirtioError): void {
    if (this.#failure) return;
    this.#failure = error;
    this.#vq.fail(error);
    this.#vq.forEachInFlight((id) => {
      // The device may still write what it was given (nothing has stopped
      // it yet: that is close()'s reset), so bounce buffers in flight never
      // return to the pool that other queues draw from.
      this.#bounce[id] = undefined;
      this.#deliver(id, error, undefined, undefined);
    });
    this.#rejectBacklog(error);
    this.drain();
  }

  /**
   * Refuses new requests from now on (closing). Requests in flight continue.
   *
   * @internal
   */
  closeForNew(): void {
    this.#closed = true;
    this.#rejectBacklog(new ClosedError("the device was closed before this request was submitted"));
  }

  // ------------------------------------------------------------ internals

  #rejectBacklog(error: VirtioError): void {
    const backlog = this.#backlog.splice(0);
    for (const b of backlog) b.deferred.reject(error);
  }

  #batchInFlight(): number {
    return this.#outstanding - this.#promiseInFlight + this.#readyCount;
  }

  #checkUsable(): void {
    if (this.#failure) throw this.#failure;
    if (this.#closed) throw new ClosedError();
    const lost = this.#host.connectionError();
    if (lost) {
      this.fail(lost);
      throw lost;
    }
  }

  #addOrThrow(
    op: number,
    offset: number | bigint,
    buffers: Uint8Array | readonly Uint8Array[] | undefined,
    length: number | bigint,
    unmap: boolean,
    context: unknown,
    owner: number,
  ): void {
    if (this.#add(op, offset, buffers, length, unmap, context, owner) < 0) {
      throw new QueueFullError(
        `queue ${this.index} is full (${this.#vq.inFlight} requests in flight, ${this.#vq.freeDescriptors} descriptors free)`,
      );
    }
  }

  /** Validation without side effects (for backlogged requests). */
  #prevalidate(
    op: number,
    offset: number | bigint,
    buffers: Uint8Array | readonly Uint8Array[] | undefined,
    length: number | bigint,
  ): void {
    const limits = this.#limits;
    if ((op === OP_WRITE || op === OP_DISCARD || op === OP_WRITE_ZEROES) && limits.readOnly) {
      throw new ReadOnlyError(`${OP_NAMES[op]} on a read-only device`);
    }
    if (op === OP_READ || op === OP_WRITE) {
      const off = toByteOffset(offset);
      const segs = buffers instanceof Uint8Array ? undefined : buffers ?? NO_BUFFERS;
      const total = segs === undefined ? this.#checkSegment(buffers as Uint8Array, 0) : this.#checkSegments(segs);
      checkRange(limits, off, total, OP_NAMES[op]);
    } else if (op === OP_DISCARD || op === OP_WRITE_ZEROES) {
      this.#checkZeroRange(op, toByteOffset(offset), toByteLength(length));
    }
  }

  #checkSegment(buf: Uint8Array, i: number): number {
    if (!(buf instanceof Uint8Array)) {
      throw new InvalidArgumentError(`buffer ${i} is not a Uint8Array`);
    }
    const len = buf.byteLength;
    if (len === 0) {
      throw new InvalidArgumentError(
        (buf.buffer as ArrayBuffer).detached ? `buffer ${i} was freed (or its device closed)` : `buffer ${i} is empty`,
      );
    }
    if (len > this.#limits.maxSegmentSize) {
      throw new InvalidArgumentError(
        `buffer ${i} is ${len} bytes, above the device's segment limit of ${this.#limits.maxSegmentSize}`,
      );
    }
    return len;
  }

  #checkSegments(segs: readonly Uint8Array[]): number {
    if (!Array.isArray(segs)) throw new InvalidArgumentError("buffers must be an array of Uint8Array");
    const n = segs.length;
    if (n === 0) throw new InvalidArgumentError("a vectored request needs at least one buffer");
    if (n > this.#limits.maxSegments) {
      throw new InvalidArgumentError(
        `${n} buffers exceed the limit of ${this.#limits.maxSegments} segments per request`,
      );
    }
    let total = 0;
    for (let i = 0; i < n; i++) total += this.#checkSegment(segs[i], i);
    return total;
  }

  #checkZeroRange(op: number, off: number, len: number): void {
    const limits = this.#limits;
    const lim = op === OP_DISCARD ? limits.discard : limits.writeZeroes;
    if (!lim) {
      throw new DeviceUnsupportedError(
        `the device did not negotiate ${op === OP_DISCARD ? "VIRTIO_BLK_F_DISCARD" : "VIRTIO_BLK_F_WRITE_ZEROES"}`,
      );
    }
    checkRange(limits, off, len, OP_NAMES[op]);
    if (op === OP_DISCARD) {
      const a = limits.discard!.alignment;
      if (off % a !== 0 || len % a !== 0) {
        throw new InvalidArgumentError(`discard: offset and length must be multiples of ${a} bytes`);
      }
    }
    if (len > lim.maxBytes) {
      throw new InvalidArgumentError(
        `${OP_NAMES[op]}: ${len} bytes exceed the device's limit of ${lim.maxBytes} per request`,
      );
    }
  }

  /**
   * Validates and adds one request. Returns its chain id, or -1 when the
   * queue has no room (nothing was changed). Throws for bad arguments.
   */
  #add(
    op: number,
    offset: number | bigint,
    buffers: Uint8Array | readonly Uint8Array[] | undefined,
    length: number | bigint,
    unmap: boolean,
    context: unknown,
    owner: number,
  ): number {
    if (this.#failure !== undefined || this.#closed) this.#checkUsable();
    const limits = this.#limits;
    const vq = this.#vq;
    let type: number, off = 0, nsegs = 0, total = 0, single: Uint8Array | undefined;
    let segs: readonly Uint8Array[] | undefined;
    switch (op) {
      case OP_READ:
      case OP_WRITE: {
        if (op === OP_WRITE && limits.readOnly) throw new ReadOnlyError("write on a read-only device");
        type = op === OP_READ ? VIRTIO_BLK_T_IN : VIRTIO_BLK_T_OUT;
        // Checks written out here, not in helpers: numbers above 2^30 passed
        // to a call that is not inlined are boxed (an allocation each).
        off = typeof offset === "number" && Number.isSafeInteger(offset) && offset >= 0 ? offset : toByteOffset(offset);
        if (buffers instanceof Uint8Array) {
          single = buffers;
          total = single.byteLength;
          if (total === 0 || total > limits.maxSegmentSize) this.#checkSegment(single, 0);
          nsegs = 1;
        } else {
          segs = buffers ?? NO_BUFFERS;
          total = this.#checkSegments(segs);
          nsegs = segs.length;
        }
        if (off % limits.alignment !== 0 || total % limits.alignment !== 0 || off + total > limits.capacity) {
          checkRange(limits, off, total, op === OP_READ ? "read" : "write");
        }
        break;
      }
      case OP_FLUSH:
        // Without VIRTIO_BLK_F_FLUSH the device has no volatile cache to flush.
        if (!limits.flush) return this.#completeAtOnce(context, owner);
        type = VIRTIO_BLK_T_FLUSH;
        break;
      case OP_DISCARD:
      case OP_WRITE_ZEROES: {
        if (limits.readOnly) throw new ReadOnlyError(`${OP_NAMES[op]} on a read-only device`);
        type = op === OP_DISCARD ? VIRTIO_BLK_T_DISCARD : VIRTIO_BLK_T_WRITE_ZEROES;
        off = toByteOffset(offset);
        total = toByteLength(length);
        this.#checkZeroRange(op, off, total);
        break;
      }
      case OP_GET_ID:
        type = VIRTIO_BLK_T_GET_ID;
        break;
      default:
        throw new InvalidArgumentError(`unknown operation ${op}`);
    }
    const count = op === OP_FLUSH ? 2 : op === OP_READ || op === OP_WRITE ? nsegs + 2 : 3;
    if (!vq.fits(count)) return -1;
    // Batch completions wait in a ready list of queueSize entries until
    // reaped: keep requests not yet handed back within that bound.
    if (this.#outstanding + this.#readyCount >= this.#queueSize) return -1;

    // Translate data buffers to pool offsets; foreign ones are bounced.
    let bounce: Bounce | undefined;
    let off0 = 0;
    if (single !== undefined) {
      off0 = this.#pool.offsetOf(single);
      if (off0 < 0) {
        bounce = { offsets: [], lengths: [], targets: [] };
        off0 = this.#bounceIn(bounce, single, op === OP_WRITE);
      }
    } else if (segs !== undefined) {
      for (let i = 0; i < nsegs; i++) {
        const s = segs[i];
        let o = this.#pool.offsetOf(s);
        if (o < 0) {
          bounce ??= { offsets: [], lengths: [], targets: [] };
          o = this.#bounceIn(bounce, s, op === OP_WRITE);
        }
        this.#segOffset[i] = o;
      }
    }

    const id = vq.beginChain(count);
    if (id < 0) {
      this.#freeBounce(bounce);
      return -1;
    }
    // Header: le32 type, le32 reserved, le64 sector.
    const w = (id * this.#slotSize) >> 2;
    const sector = off / 512;
    const u32 = this.#reqU32;
    u32[w] = type;
    u32[w + 1] = 0;
    u32[w + 2] = sector >>> 0;
    u32[w + 3] = (sector / 4294967296) >>> 0;
    this.#reqU8[id * this.#slotSize + SLOT.STATUS] = STATUS_UNSET;
    const slot = id * this.#slotSize; // offset of the slot from the request area's base
    const REQ = this.#reqBase, POOL = this.#poolBase;
    vq.pushDescAt(REQ, slot + SLOT.HEADER, SLOT.HEADER_SIZE, false);
    const fromDevice = op === OP_READ;
    if (single !== undefined) {
      vq.pushDescAt(POOL, off0, total, fromDevice);
    } else if (segs !== undefined) {
      for (let i = 0; i < nsegs; i++) vq.pushDescAt(POOL, this.#segOffset[i], segs[i].byteLength, fromDevice);
    } else if (op === OP_DISCARD || op === OP_WRITE_ZEROES) {
      // struct virtio_blk_discard_write_zeroes: le64 sector, le32 num_sectors, le32 flags.
      const s = (id * this.#slotSize + SLOT.SEGMENT) >> 2;
      u32[s] = sector >>> 0;
      u32[s + 1] = (sector / 4294967296) >>> 0;
      u32[s + 2] = total / 512;
      u32[s + 3] = op === OP_WRITE_ZEROES && unmap && limits.writeZeroes!.mayUnmap
        ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        : 0;
      vq.pushDescAt(REQ, slot + SLOT.SEGMENT, SLOT.SEGMENT_SIZE, false);
    } else if (op === OP_GET_ID) {
      vq.pushDescAt(REQ, slot + SLOT.ID, VIRTIO_BLK_ID_BYTES, true);
    }
    vq.pushDescAt(REQ, slot + SLOT.STATUS, 1, true);
    vq.endChain();
    this.#ctx[id] = context;
    this.#owner[id] = owner;
    this.#op[id] = op;
    this.#bounce[id] = bounce;
    if (owner === OWNER_PROMISE) this.#promiseInFlight++;
    this.#outstanding++;
    this.#needKick = true;
    return id;
  }

  /** Completes a request that needs nothing from the device. Returns -1 when there is no room. */
  #completeAtOnce(context: unknown, owner: number): number {
    if (owner === OWNER_PROMISE) {
      (context as Deferred).resolve(undefined);
      return 0;
    }
    if (this.#outstanding + this.#readyCount >= this.#queueSize) return -1;
    this.#pushReady(context, undefined);
    return 0;
  }

  /** Appends a batch completion to the ready list (kept within queueSize by #add). */
  #pushReady(context: unknown, error: VirtioError | undefined): void {
    const tail = (this.#readyHead + this.#readyCount) & (this.#queueSize - 1);
    this.#readyCtx[tail] = context;
    this.#readyErr[tail] = error;
    this.#readyCount++;
  }

  /** Removes the oldest entry of the ready list (read it first). */
  #dropReadyHead(): void {
    const h = this.#readyHead;
    this.#readyCtx[h] = undefined;
    this.#readyErr[h] = undefined;
    this.#readyHead = (h + 1) & (this.#queueSize - 1);
    this.#readyCount--;
  }

  #bounceIn(bounce: Bounce, buf: Uint8Array, copyIn: boolean): number {
    const pool = this.#pool;
    let offset: number;
    try {
      offset = pool.allocOffset(buf.byteLength);
    } catch (e) {
      this.#freeBounce(bounce);
      throw e;
    }
    bounce.offsets.push(offset);
    bounce.lengths.push(buf.byteLength);
    bounce.targets.push(buf);
    if (copyIn) pool.region.bytes.set(buf, offset);
    return offset;
  }

  #freeBounce(bounce: Bounce | undefined): void {
    if (bounce) { for (const o of bounce.offsets) this.#pool.freeOffset(o); }
  }

  /** Frees per-request state; on success copies bounced read data back. */
  #release(id: number, success: boolean): void {
    const bounce = this.#bounce[id];
    if (bounce !== undefined) {
      this.#bounce[id] = undefined;
      if (success && this.#op[id] === OP_READ) {
        const bytes = this.#pool.region.bytes;
        for (let i = 0; i < bounce.offsets.length; i++) {
          const o = bounce.offsets[i];
          bounce.targets[i].set(bytes.subarray(o, o + bounce.lengths[i]));
        }
      }
      this.#freeBounce(bounce);
    }
  }

  /** Reaps up to `max` used chains; batch ones go to `handler` or the ready list. */
  #reap(handler: CompletionHandler<T> | undefined, max: number): number {
    if (this.#failure) return 0;
    const lost = this.#host.connectionError();
    if (lost) {
      this.fail(lost);
      return 0;
    }
    const vq = this.#vq;
    const u8 = this.#reqU8;
    let n = 0;
    try {
      while (n < max) {
        let id: number;
        try {
          id = vq.nextUsed();
        } catch (e) {
          this.fail(e as VirtioError);
          break;
        }
        if (id < 0) break;
        n++;
        const status = u8[id * this.#slotSize + SLOT.STATUS];
        const op = this.#op[id];
        let error: VirtioError | undefined;
        let value: unknown;
        if (status === VIRTIO_BLK_S_OK) {
          const dataBytes = vq.writableOf(id) - 1; // all it could write but the status byte
          const short = (op === OP_READ || op === OP_GET_ID) && vq.lastUsedLen < dataBytes;
          if (short && vq.strictUsedLength) {
            // Strict: success with fewer bytes written than the data asked for
            // means what is in the buffer beyond them is not the device's answer.
            error = new DeviceProtocolError(
              "short-read",
              `${OP_NAMES[op]} on queue ${this.index}: status OK but the device wrote ` +
                `${vq.lastUsedLen} of ${dataBytes} data bytes`,
            );
          } else {
            // The status byte decides; a short used length is only counted.
            if (short) this.#usedLengthShort++;
            this.#release(id, true);
            if (op === OP_GET_ID) {
              const at = id * this.#slotSize + SLOT.ID;
              value = decodeDeviceId(u8.subarray(at, at + VIRTIO_BLK_ID_BYTES));
            }
            this.#deliver(id, undefined, value, handler);
            continue;
          }
        } else if (status === VIRTIO_BLK_S_IOERR) {
          error = new DeviceIoError(`${OP_NAMES[op]} on queue ${this.index}: the device reported an I/O error`);
        } else if (status === VIRTIO_BLK_S_UNSUPP) {
          error = new DeviceUnsupportedError(`${OP_NAMES[op]} on queue ${this.index}: the device does not support it`);
        } else {
          error = new DeviceProtocolError(
            "bad-status",
            `${OP_NAMES[op]} on queue ${this.index}: invalid status byte ${status}`,
          );
        }
        this.#release(id, false);
        this.#deliver(id, error, undefined, handler);
        if (error instanceof DeviceProtocolError) {
          this.fail(error);
          break;
        }
      }
    } finally {
      // Also when a handler threw: what was reaped counts as progress, and
      // the backlog gets the room it freed.
      this.#reaped += n;
      if (n > 0 && this.#backlog.length > 0) this.#pumpBacklog();
    }
    return n;
  }

  /**
   * Stall watchdog tick: fails the queue with {@linkcode TimeoutError} once
   * the device has completed nothing for `timeoutMs` while requests are in
   * flight. A completion waiting in the used ring counts as progress.
   *
   * @internal
   */
  watchdogTick(elapsedMs: number, timeoutMs: number): void {
    if (this.#failure || this.#vq.inFlight === 0 || this.#reaped !== this.#watchReaped || this.hasUsed()) {
      this.#watchReaped = this.#reaped;
      this.#stalledMs = 0;
      return;
    }
    this.#stalledMs += elapsedMs;
    if (this.#stalledMs >= timeoutMs) {
      this.fail(
        new TimeoutError(
          `queue ${this.index}: the device completed nothing for ${this.#stalledMs} ms with ${this.#vq.inFlight} requests in flight (stalled)`,
        ),
      );
    }
  }

  #deliver(
    id: number,
    error: VirtioError | undefined,
    value: unknown,
    handler: CompletionHandler<T> | undefined,
  ): void {
    const ctx = this.#ctx[id];
    this.#ctx[id] = undefined;
    this.#outstanding--;
    if (this.#owner[id] === OWNER_PROMISE) {
      this.#promiseInFlight--;
      const d = ctx as Deferred;
      if (error) d.reject(error);
      else d.resolve(value);
    } else if (handler !== undefined) {
      handler(ctx as T, error);
    } else {
      this.#pushReady(ctx, error);
    }
  }

  #pumpBacklog(): void {
    const backlog = this.#backlog;
    while (backlog.length > 0) {
      const b = backlog[0];
      let id: number;
      try {
        id = this.#add(b.op, b.offset, b.buffers, b.length, b.unmap, b.deferred, OWNER_PROMISE);
      } catch (e) {
        backlog.shift();
        b.deferred.reject(e);
        continue;
      }
      if (id < 0) break;
      backlog.shift();
    }
    this.submit();
  }
}
