/**
 * {@linkcode QueueEngine}: one virtio-blk request queue's machinery, behind
 * both APIs — the batch API's {@linkcode VirtioBlkQueue} facade and the
 * promise API of `VirtioBlk` — and driven by the completion loop. It turns a
 * request into a descriptor chain (virtio 1.2, 5.2.6) on its ring, reaps
 * used chains and decodes their status, and settles or hands back each
 * request exactly once, also when the queue fails.
 *
 * Internal to the blk layer: nothing here is exported from an entry point.
 *
 * @module
 */

import {
  ClosedError,
  DeviceProtocolError,
  QueueFullError,
  ReconnectingError,
  TimeoutError,
  type VirtioError,
} from "../errors.ts";
import type { BufferPool } from "../memory/buffer_pool.ts";
import type { QueueNotifier } from "../transport/transport.ts";
import type { Ring } from "../virtqueue/ring.ts";
import { type Backlogged, type Deferred, PromiseBacklog } from "./backlog.ts";
import { type Bounce, Bouncer } from "./bounce.ts";
import { type BlkLimits, validateRequest } from "./limits.ts";
import { ReadyList } from "./ready_list.ts";
import { decodeDeviceId, SLOT, statusError, writeHeader, writeRangeSegment } from "./request.ts";
import {
  SECTOR_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_NAMES,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from "./spec.ts";

/** Receives finished requests (context, error). */
export type CompletionHandler<T> = (context: T, error: VirtioError | undefined) => void;

/** What the queue needs from the device object that owns it. */
export interface QueueHost {
  /** Make sure the completion loop runs (a promise request or a batch waiter waits). */
  requestDriving(): void;
  /** The error to fail with when the connection is gone, else undefined. */
  connectionError(): VirtioError | undefined;
}

/** Who a request belongs to. */
const OWNER_BATCH = 0;
const OWNER_PROMISE = 1;
const NO_BUFFERS: readonly Uint8Array[] = [];
/** "No limit" for reaping: a small integer, since Infinity would be boxed on every call. */
export const NO_LIMIT = 0x3fff_ffff;
/** Submission order across every queue (a reconnect resubmits in it). */
let submissions = 0;

/** A request that was in flight when the device went away, as it was submitted. */
export interface InFlightRequest {
  /** Its place in the submission order of all queues. */
  readonly seq: number;
  /** The queue it was on. */
  readonly queue: number;
  /** VIRTIO_BLK_T_*. */
  readonly type: number;
  /** Byte offset. */
  readonly offset: number;
  /** Data buffers, as the caller gave them. */
  readonly buffers: Uint8Array | readonly Uint8Array[] | undefined;
  /** Byte length (discard, write-zeroes). */
  readonly length: number;
  /** Write-zeroes may unmap. */
  readonly unmap: boolean;
  /** The caller's context (batch) or the promise's resolvers. */
  readonly context: unknown;
  /** Batch or promise. */
  readonly owner: number;
}

/** The parts of a queue, made by the device's setup. */
export interface QueueEngineInit {
  /** The queue's index on the device. */
  index: number;
  /** Its ring. */
  ring: Ring;
  /** How to kick the device. */
  notifier: QueueNotifier;
  /** The device's buffer pool (zero-copy buffers and bounce buffers). */
  pool: BufferPool;
  /** The device's limits (shared by its queues). */
  limits: BlkLimits;
  /** The device object. */
  host: QueueHost;
  /** The queue's request-slot area in shared memory. */
  requestArea: Uint8Array<ArrayBuffer>;
  /** The IOVA of requestArea[0]. */
  requestAreaIova: number;
  /** Bytes per request slot (header, status, id, and the indirect table). */
  slotSize: number;
}

/** One queue's submission, completion and bookkeeping. */
export class QueueEngine<T = unknown> {
  /** The queue's index on the device. */
  readonly index: number;
  /** Entries in the ring. */
  readonly queueSize: number;
  #ring: Ring;
  #notifier: QueueNotifier;
  readonly #pool: BufferPool;
  readonly #bouncer: Bouncer;
  readonly #limits: BlkLimits;
  readonly #host: QueueHost;
  readonly #reqU32: Uint32Array;
  readonly #reqU8: Uint8Array;
  #reqBase: number; // address base of the request area in the ring
  #poolBase: number; // address base of the buffer pool
  readonly #requestAreaIova: number;
  readonly #slotSize: number;
  // Per chain id.
  readonly #ctx: unknown[];
  readonly #owner: Uint8Array;
  readonly #type: Uint8Array;
  readonly #bounce: (Bounce | undefined)[];
  // Per chain id, what a reconnect needs to submit it again.
  readonly #seq: Float64Array;
  readonly #offset: Float64Array;
  readonly #length: Float64Array;
  readonly #buffers: (Uint8Array | readonly Uint8Array[] | undefined)[];
  readonly #unmap: Uint8Array;
  readonly #segOffset: Float64Array;
  readonly #ready: ReadyList;
  readonly #backlog = new PromiseBacklog();
  #waiting: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  #outstanding = 0; // added and not yet delivered (settled, handed over, or put in the ready list)
  #promiseInFlight = 0;
  #needKick = false;
  #failure: VirtioError | undefined;
  #closed = false;
  #paused = false; // the device went away; a reconnect is under way
  #taken = 0; // taken off the ring by a reconnect, not yet resubmitted or rejected
  #takenBatch = 0; // of which batch requests
  #detached = false; // the in-flight requests were taken off the ring (takeInFlight)
  #notifications = 0;
  #usedLengthShort = 0;
  #reaped = 0; // chains reaped so far (the stall watchdog's measure of progress)

  /**
   * Creates the instance.
   *
   * @param init the queue's parts
   */
  constructor(init: QueueEngineInit) {
    this.index = init.index;
    this.#ring = init.ring;
    this.#notifier = init.notifier;
    this.#pool = init.pool;
    this.#bouncer = new Bouncer(init.pool);
    this.#limits = init.limits;
    this.#host = init.host;
    const area = init.requestArea;
    this.#reqU8 = area;
    this.#slotSize = init.slotSize;
    this.#reqU32 = new Uint32Array(area.buffer, area.byteOffset, area.byteLength >> 2);
    this.#requestAreaIova = init.requestAreaIova;
    this.#reqBase = this.#ring.addressBase(init.requestAreaIova);
    this.#poolBase = this.#ring.addressBase(init.pool.region.iova);
    const q = this.queueSize = this.#ring.queueSize;
    this.#ctx = new Array(q).fill(undefined);
    this.#owner = new Uint8Array(q);
    this.#type = new Uint8Array(q);
    this.#bounce = new Array(q).fill(undefined);
    this.#seq = new Float64Array(q);
    this.#offset = new Float64Array(q);
    this.#length = new Float64Array(q);
    this.#buffers = new Array(q).fill(undefined);
    this.#unmap = new Uint8Array(q);
    this.#segOffset = new Float64Array(Math.max(1, this.#limits.maxSegments));
    this.#ready = new ReadyList(q);
  }

  /** The ring (for the completion loop and diagnostics). */
  get ring(): Ring {
    return this.#ring;
  }

  /** Requests added and not yet handed back. */
  get inFlight(): number {
    return this.#outstanding + this.#ready.count + this.#taken;
  }

  /** Notifications sent so far. */
  get notifications(): number {
    return this.#notifications;
  }

  /** Successful reads accepted with a short used length. */
  get usedLengthShort(): number {
    return this.#usedLengthShort;
  }

  /** Chains reaped so far. */
  get reaped(): number {
    return this.#reaped;
  }

  /** Why the queue failed, if it did. */
  get error(): VirtioError | undefined {
    return this.#failure;
  }

  /** Batch requests not yet handed back (in the ring or the ready list). */
  get batchInFlight(): number {
    return this.#outstanding - this.#promiseInFlight + this.#ready.count + this.#takenBatch;
  }

  // ------------------------------------------------------------- adding

  /**
   * Adds a batch request, or throws {@linkcode QueueFullError}.
   *
   * @param type VIRTIO_BLK_T_*
   * @param offset byte offset
   * @param buffers data buffers
   * @param length byte length (discard, write-zeroes)
   * @param unmap write-zeroes may unmap
   * @param context handed back with the completion
   */
  addBatch(
    type: number,
    offset: number | bigint,
    buffers: Uint8Array | readonly Uint8Array[] | undefined,
    length: number | bigint,
    unmap: boolean,
    context: T,
  ): void {
    if (this.#add(type, offset, buffers, length, unmap, context, OWNER_BATCH) < 0) {
      throw new QueueFullError(
        `queue ${this.index} is full (${this.#ring.inFlight} requests in flight, ${this.#ring.freeDescriptors} descriptors free)`,
      );
    }
  }

  /**
   * Starts a promise-API request; when the queue is full it waits in the
   * backlog, in order.
   *
   * @param type VIRTIO_BLK_T_*
   * @param offset byte offset
   * @param buffers data buffers
   * @param length byte length
   * @param unmap write-zeroes may unmap
   * @returns its promise
   */
  addPromise(
    type: number,
    offset: number | bigint,
    buffers: Uint8Array | readonly Uint8Array[] | undefined,
    length: number | bigint,
    unmap: boolean,
  ): Promise<unknown> {
    const deferred = Promise.withResolvers<unknown>();
    try {
      if (this.#backlog.length > 0 || this.#add(type, offset, buffers, length, unmap, deferred, OWNER_PROMISE) < 0) {
        this.#checkUsable();
        validateRequest(this.#limits, type, offset, buffers, length);
        this.#backlog.push({ type, offset, buffers, length, unmap, deferred });
      }
      this.#host.requestDriving();
    } catch (e) {
      deferred.reject(e);
    }
    return deferred.promise;
  }

  /**
   * Validates and adds one request. Returns its chain id, or -1 when the
   * queue has no room (nothing was changed). Throws for bad arguments.
   */
  #add(
    type: number,
    offset: number | bigint,
    buffers: Uint8Array | readonly Uint8Array[] | undefined,
    length: number | bigint,
    unmap: boolean,
    context: unknown,
    owner: number,
  ): number {
    if (this.#failure !== undefined || this.#closed || this.#paused) {
      this.#checkUsable();
      // Reconnecting: batch requests are refused, promise requests wait in the backlog.
      if (this.#paused) {
        if (owner === OWNER_BATCH) throw new ReconnectingError();
        return -1;
      }
    }
    const limits = this.#limits;
    let off = 0, nsegs = 0, total = 0, single: Uint8Array | undefined;
    let segs: readonly Uint8Array[] | undefined;
    if (type === VIRTIO_BLK_T_IN || type === VIRTIO_BLK_T_OUT) {
      // The common case, checked inline (numbers above 2^30 passed to a call
      // that is not inlined are boxed: an allocation each); anything unusual
      // goes through the one validator, which throws the precise error.
      if (buffers instanceof Uint8Array) {
        single = buffers;
        total = single.byteLength;
        nsegs = 1;
      } else {
        segs = buffers ?? NO_BUFFERS;
        nsegs = segs.length;
      }
      if (
        typeof offset === "number" && offset >= 0 && Number.isSafeInteger(offset) && single !== undefined &&
        total > 0 && total <= limits.maxSegmentSize && total <= limits.maxTransfer && offset % limits.alignment === 0 &&
        total % limits.alignment === 0 && offset + total <= limits.capacity &&
        !(type === VIRTIO_BLK_T_OUT && limits.readOnly)
      ) {
        off = offset;
      } else {
        const v = validateRequest(limits, type, offset, buffers, length);
        off = v.offset;
        total = v.bytes;
      }
    } else if (type === VIRTIO_BLK_T_FLUSH) {
      // Without VIRTIO_BLK_F_FLUSH the device has no volatile cache to flush.
      if (!limits.flush) return this.#completeAtOnce(context, owner);
    } else if (type === VIRTIO_BLK_T_DISCARD || type === VIRTIO_BLK_T_WRITE_ZEROES) {
      const v = validateRequest(limits, type, offset, buffers, length);
      off = v.offset;
      total = v.bytes;
    } else if (type !== VIRTIO_BLK_T_GET_ID) {
      throw new RangeError(`unknown request type ${type}`);
    }
    const count = type === VIRTIO_BLK_T_FLUSH
      ? 2
      : type === VIRTIO_BLK_T_IN || type === VIRTIO_BLK_T_OUT
      ? nsegs + 2
      : 3;
    const ring = this.#ring;
    if (!ring.fits(count)) return -1;
    // Batch completions wait in a ready list of queueSize entries until
    // reaped: keep requests not yet handed back within that bound.
    if (this.#outstanding + this.#ready.count >= this.queueSize) return -1;

    // Translate data buffers to pool offsets; foreign ones are bounced.
    let bounce: Bounce | undefined;
    let off0 = 0;
    const write = type === VIRTIO_BLK_T_OUT;
    if (single !== undefined) {
      off0 = this.#pool.offsetOf(single);
      if (off0 < 0) ({ bounce, offset: off0 } = this.#bouncer.add(undefined, single, write));
    } else if (segs !== undefined) {
      for (let i = 0; i < nsegs; i++) {
        let o = this.#pool.offsetOf(segs[i]);
        if (o < 0) ({ bounce, offset: o } = this.#bouncer.add(bounce, segs[i], write));
        this.#segOffset[i] = o;
      }
    }

    const id = ring.beginChain(count);
    if (id < 0) {
      this.#bouncer.free(bounce);
      return -1;
    }
    const slot = id * this.#slotSize; // the slot's offset from the request area's base
    const sector = off / SECTOR_SIZE;
    writeHeader(this.#reqU32, slot >> 2, type, sector, this.#reqU8);
    const REQ = this.#reqBase, POOL = this.#poolBase;
    ring.pushDescAt(REQ, slot + SLOT.HEADER, SLOT.HEADER_SIZE, false);
    const fromDevice = type === VIRTIO_BLK_T_IN;
    if (single !== undefined) {
      ring.pushDescAt(POOL, off0, total, fromDevice);
    } else if (segs !== undefined) {
      for (let i = 0; i < nsegs; i++) ring.pushDescAt(POOL, this.#segOffset[i], segs[i].byteLength, fromDevice);
    } else if (type === VIRTIO_BLK_T_DISCARD || type === VIRTIO_BLK_T_WRITE_ZEROES) {
      const flags = type === VIRTIO_BLK_T_WRITE_ZEROES && unmap && limits.writeZeroes!.mayUnmap
        ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        : 0;
      writeRangeSegment(this.#reqU32, slot >> 2, sector, total / SECTOR_SIZE, flags);
      ring.pushDescAt(REQ, slot + SLOT.SEGMENT, SLOT.SEGMENT_SIZE, false);
    } else if (type === VIRTIO_BLK_T_GET_ID) {
      ring.pushDescAt(REQ, slot + SLOT.ID, VIRTIO_BLK_ID_BYTES, true);
    }
    ring.pushDescAt(REQ, slot + SLOT.STATUS, 1, true);
    ring.endChain();
    this.#ctx[id] = context;
    this.#owner[id] = owner;
    this.#type[id] = type;
    this.#bounce[id] = bounce;
    this.#seq[id] = ++submissions;
    this.#offset[id] = off;
    this.#length[id] = total;
    this.#buffers[id] = buffers;
    this.#unmap[id] = unmap ? 1 : 0;
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
    if (this.#outstanding + this.#ready.count >= this.queueSize) return -1;
    this.#ready.push(context, undefined);
    return 0;
  }

  /** Whether a notification is owed for what was added. */
  get pendingSubmit(): boolean {
    return this.#needKick;
  }

  /**
   * Notifies the device of everything added since the last submit (one
   * notification for the batch, skipped when the device asked for none).
   */
  submit(): void {
    if (!this.#needKick) return;
    const lost = this.#host.connectionError();
    if (lost) {
      this.#needKick = false;
      this.fail(lost);
      return;
    }
    if (this.#paused) return; // the chains wait for the new connection
    this.#needKick = false;
    if (this.#ring.availNotifNeeded()) {
      this.#notifications++;
      this.#notifier.notify();
    }
  }

  // ------------------------------------------------------------ reaping

  /**
   * Hands back up to `max` batch completions to `handler`: first those
   * waiting in the ready list, then what the device finished.
   *
   * @param handler receives each completion
   * @param max at most this many
   * @returns how many were handed back
   */
  poll(handler: CompletionHandler<T>, max: number): number {
    let n = 0;
    const ready = this.#ready;
    while (ready.count > 0 && n < max) {
      const ctx = ready.headContext as T, err = ready.headError;
      ready.drop();
      n++;
      handler(ctx, err);
    }
    // Room in the ready list may be what the backlog waits for.
    if (n > 0 && this.#backlog.length > 0) this.#pumpBacklog();
    if (n < max) n += this.#reap(handler, max - n);
    return n;
  }

  /**
   * Takes the oldest batch completion from the ready list (reaping first
   * when it is empty).
   *
   * @returns the completion, or undefined when none is ready
   */
  takeReady(): { context: T; error: VirtioError | undefined } | undefined {
    if (this.#ready.count === 0) this.#reap(undefined, NO_LIMIT);
    if (this.#ready.count === 0) return undefined;
    const c = { context: this.#ready.headContext as T, error: this.#ready.headError };
    this.#ready.drop();
    if (this.#backlog.length > 0) this.#pumpBacklog(); // room in the ready list
    return c;
  }

  /**
   * Resolves once a batch completion is ready, nothing is in flight, or the
   * queue failed; concurrent calls share one wait.
   *
   * @returns the wait
   */
  wait(): Promise<void> {
    if (this.#ready.count > 0 || this.batchInFlight === 0 || this.#failure || this.hasUsed()) {
      return Promise.resolve();
    }
    if (this.#waiting === undefined) {
      this.#waiting = new Promise<void>((resolve) => (this.#wake = resolve));
      this.#host.requestDriving();
    }
    return this.#waiting;
  }

  /** Promise requests waiting for room on this queue. */
  get backlogLength(): number {
    return this.#backlog.length;
  }

  /** Whether the completion loop has work here (promise requests, the backlog, a waiter). */
  needsDriving(): boolean {
    if (this.#paused) return false; // nothing to reap until the device is back
    return this.#promiseInFlight > 0 || this.#backlog.length > 0 || this.#wake !== undefined;
  }

  /**
   * Reaps everything finished (promise requests settle, batch ones go to
   * the ready list) and wakes a waiter that can go on.
   *
   * @returns the number reaped
   */
  drain(): number {
    const n = this.#reap(undefined, NO_LIMIT);
    if (this.#wake && (this.#ready.count > 0 || this.batchInFlight === 0 || this.#failure)) {
      const wake = this.#wake;
      this.#wake = undefined;
      this.#waiting = undefined;
      wake();
    }
    return n;
  }

  /** Whether the device has finished requests not yet reaped. */
  hasUsed(): boolean {
    if (this.#failure || this.#paused) return false;
    try {
      return this.#ring.hasUsed();
    } catch {
      return true; // the violation surfaces in drain()
    }
  }

  /**
   * Enables or disables used-buffer notifications.
   *
   * @param enabled whether the device should interrupt
   */
  setInterruptsEnabled(enabled: boolean): void {
    if (!this.#failure && !this.#paused) this.#ring.setUsedNotifEnabled(enabled);
  }

  /** Reaps up to `max` used chains; batch ones go to `handler` or the ready list. */
  #reap(handler: CompletionHandler<T> | undefined, max: number): number {
    if (this.#failure || this.#paused) return 0;
    const lost = this.#host.connectionError();
    if (lost) {
      this.fail(lost);
      return 0;
    }
    const ring = this.#ring;
    const u8 = this.#reqU8;
    let n = 0;
    try {
      while (n < max) {
        let id: number;
        try {
          id = ring.nextUsed();
        } catch (e) {
          this.fail(e as VirtioError);
          break;
        }
        if (id < 0) break;
        n++;
        const type = this.#type[id];
        let error = statusError(u8[id * this.#slotSize + SLOT.STATUS], type, this.index);
        if (error === undefined) {
          const dataBytes = ring.writableOf(id) - 1; // all it could write but the status byte
          const short = (type === VIRTIO_BLK_T_IN || type === VIRTIO_BLK_T_GET_ID) && ring.lastUsedLen < dataBytes;
          if (short && ring.strictUsedLength) {
            // Strict: success with fewer bytes written than the data asked
            // for means the buffer beyond them is not the device's answer.
            error = new DeviceProtocolError(
              "short-read",
              `${VIRTIO_BLK_T_NAMES[type]} on queue ${this.index}: status OK but the device wrote ` +
                `${ring.lastUsedLen} of ${dataBytes} data bytes`,
            );
          } else {
            // The status byte decides; a short used length is only counted.
            if (short) this.#usedLengthShort++;
            this.#release(id, true);
            let value: unknown;
            if (type === VIRTIO_BLK_T_GET_ID) {
              const at = id * this.#slotSize + SLOT.ID;
              value = decodeDeviceId(u8.subarray(at, at + VIRTIO_BLK_ID_BYTES));
            }
            this.#deliver(id, undefined, value, handler);
            continue;
          }
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

  /** Frees per-request state; on success copies bounced read data back. */
  #release(id: number, success: boolean): void {
    this.#buffers[id] = undefined;
    const bounce = this.#bounce[id];
    if (bounce === undefined) return;
    this.#bounce[id] = undefined;
    if (success && this.#type[id] === VIRTIO_BLK_T_IN) this.#bouncer.copyOut(bounce);
    this.#bouncer.free(bounce);
  }

  #deliver(id: number, error: VirtioError | undefined, value: unknown, handler: CompletionHandler<T> | undefined) {
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
      this.#ready.push(ctx, error);
    }
  }

  #pumpBacklog(): void {
    this.#backlog.pump((b: Backlogged) =>
      this.#add(b.type, b.offset, b.buffers, b.length, b.unmap, b.deferred, OWNER_PROMISE)
    );
    this.submit();
  }

  // ---------------------------------------------------------- reconnect

  /** Whether the queue waits for a reconnect. */
  get paused(): boolean {
    return this.#paused;
  }

  /**
   * The device went away and a reconnect begins: hands back what the device
   * finished before it went (its used ring is still in our memory), then
   * stops touching the ring. Requests in flight are kept; new batch
   * requests are refused with {@linkcode ReconnectingError}, new promise
   * requests wait.
   */
  pause(): void {
    if (this.#paused || this.#failure) return;
    this.drain();
    this.#paused = true;
  }

  /**
   * Takes every request still in flight off the old ring, as it was
   * submitted, for {@linkcode QueueEngine.resubmit} on the new one. Their
   * bounce buffers go back to the pool (the old device is gone; a
   * resubmission bounces again from the caller's buffers).
   *
   * @returns the requests, in no particular order
   */
  takeInFlight(): InFlightRequest[] {
    const out: InFlightRequest[] = [];
    if (this.#detached) return out;
    this.#detached = true;
    this.#ring.forEachInFlight((id) => {
      out.push({
        seq: this.#seq[id],
        queue: this.index,
        type: this.#type[id],
        offset: this.#offset[id],
        buffers: this.#buffers[id],
        length: this.#length[id],
        unmap: this.#unmap[id] === 1,
        context: this.#ctx[id],
        owner: this.#owner[id],
      });
      this.#bouncer.free(this.#bounce[id]);
      this.#bounce[id] = undefined;
      this.#buffers[id] = undefined;
      this.#ctx[id] = undefined;
      this.#outstanding--;
      this.#taken++;
      if (this.#owner[id] === OWNER_PROMISE) this.#promiseInFlight--;
      else this.#takenBatch++;
    });
    return out;
  }

  /**
   * Continues on a new ring (a fresh one over the same memory, set up on
   * the new connection) with a new notifier.
   *
   * @param ring the new ring
   * @param notifier how to kick the device now
   */
  resume(ring: Ring, notifier: QueueNotifier): void {
    this.#ring = ring;
    this.#notifier = notifier;
    this.#reqBase = ring.addressBase(this.#requestAreaIova);
    this.#poolBase = ring.addressBase(this.#pool.region.iova);
    this.#paused = false;
    this.#detached = false;
  }

  /**
   * Submits a request taken with {@linkcode QueueEngine.takeInFlight} again
   * (checked again: a device that came back smaller refuses what no longer
   * fits, and that request completes with the error). Call
   * {@linkcode QueueEngine.submit} after a batch of them.
   *
   * @param r the request
   */
  resubmit(r: InFlightRequest): void {
    this.#untake(r);
    try {
      if (this.#add(r.type, r.offset, r.buffers, r.length, r.unmap, r.context, r.owner) >= 0) return;
      throw new ReconnectingError("the request could not be submitted again: no room on the new ring");
    } catch (e) {
      this.#rejectResubmitted(r, e as VirtioError);
    }
  }

  /**
   * Completes a request taken with {@linkcode QueueEngine.takeInFlight}
   * with an error (the reconnect gave up, or the device is closing).
   *
   * @param r the request
   * @param error why
   */
  rejectTaken(r: InFlightRequest, error: VirtioError): void {
    this.#untake(r);
    this.#rejectResubmitted(r, error);
  }

  #untake(r: InFlightRequest): void {
    this.#taken--;
    if (r.owner !== OWNER_PROMISE) this.#takenBatch--;
  }

  #rejectResubmitted(r: InFlightRequest, error: VirtioError): void {
    if (r.owner === OWNER_PROMISE) {
      (r.context as Deferred).reject(error);
      return;
    }
    this.#ready.push(r.context, error);
    this.drain(); // wakes a batch waiter
  }

  /** Starts what waited in the promise backlog during the reconnect. */
  pumpBacklog(): void {
    if (this.#backlog.length > 0) this.#pumpBacklog();
    this.#host.requestDriving();
  }

  // ------------------------------------------------------------ failure

  /**
   * Fails the queue: every request in flight or waiting completes with
   * `error`, and every later request throws it. The device is not stopped
   * here: until `close()` resets it, it may still write the buffers of the
   * requests that were in flight (bounce buffers among them are retired,
   * never reused).
   *
   * @param error why
   */
  fail(error: VirtioError): void {
    if (this.#failure) return;
    this.#failure = error;
    this.#ring.fail(error);
    if (this.#detached) {
      // Taken off the ring for a reconnect: the reconnect rejects them.
      this.#backlog.rejectAll(error);
      this.drain();
      return;
    }
    this.#ring.forEachInFlight((id) => {
      // The device may still write what it was given (nothing has stopped
      // it yet: that is close()'s reset), so bounce buffers in flight never
      // return to the pool that other queues draw from.
      this.#bounce[id] = undefined;
      this.#deliver(id, error, undefined, undefined);
    });
    this.#backlog.rejectAll(error);
    this.drain();
  }

  /**
   * Stall watchdog: fails the queue with {@linkcode TimeoutError} when the
   * device has made no progress for `stalledMs` while requests are in flight.
   *
   * @param stalledMs how long nothing was reaped
   */
  failStalled(stalledMs: number): void {
    this.fail(
      new TimeoutError(
        `queue ${this.index}: the device completed nothing for ${stalledMs} ms with ${this.#ring.inFlight} requests in flight (stalled)`,
      ),
    );
  }

  /** Refuses new requests from now on (closing); requests in flight continue. */
  closeForNew(): void {
    this.#closed = true;
    this.#backlog.rejectAll(new ClosedError("the device was closed before this request was submitted"));
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
}
