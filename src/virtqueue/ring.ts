/**
 * {@linkcode Ring}: what the split and packed rings share — the chain
 * bookkeeping, the checks on what the device writes, the generic
 * `addRequest`/`completions` API of {@linkcode Virtqueue}, and the
 * allocation-free API the virtio-blk queue drives (`beginChain` /
 * `pushDescAt` / `endChain`, `nextUsed`). Internal: drivers of other devices
 * get a {@linkcode Virtqueue} from `createVirtqueue`.
 *
 * @module
 */

import {
  DeviceProtocolError,
  InvalidArgumentError,
  type ProtocolViolation,
  QueueFullError,
  type VirtioError,
} from "../errors.ts";
import type { VirtqueueFormat } from "./layout.ts";
import type {
  AddDesc,
  Completion,
  DeviceBuffer,
  RequestSlot,
  RingPosition,
  Virtqueue,
  VirtqueueOptions,
} from "./types.ts";

/** The address-base slot {@linkcode Ring.pushDesc} uses. */
const SCRATCH_BASE = 7;

/**
 * The driver side of one ring in shared memory, either format.
 *
 * Two APIs share the ring. The generic one ({@linkcode Virtqueue}) mirrors
 * the Rust crate `virtio-driver`: {@linkcode Ring.addRequest} and
 * {@linkcode Ring.completions}. The allocation-free one is for the
 * virtio-blk hot path: {@linkcode Ring.beginChain} /
 * {@linkcode Ring.pushDescAt} / {@linkcode Ring.endChain} and
 * {@linkcode Ring.nextUsed}.
 */
export abstract class Ring implements Virtqueue {
  /** Entries in the ring. */
  readonly queueSize: number;
  /** The ring format. */
  abstract readonly format: VirtqueueFormat;
  /** IOVA of the descriptor table (descriptor ring, when packed). */
  readonly descTableIova: number;
  /** IOVA of the driver area (split: available ring; packed: driver event suppression). */
  readonly driverAreaIova: number;
  /** IOVA of the device area (split: used ring; packed: device event suppression). */
  readonly deviceAreaIova: number;
  /** Whether VIRTIO_F_EVENT_IDX is in use. */
  readonly eventIdx: boolean;
  /** A name for messages. */
  readonly name: string;
  /**
   * Bytes the device reported for the chain last returned by
   * {@linkcode Ring.nextUsed}, clamped to the chain's device-writable
   * bytes (unless strict, when a larger one fails the queue).
   */
  lastUsedLen = 0;
  /** Used elements whose length exceeded their chain's writable bytes and was clamped (a statistic). */
  usedLengthClamped = 0;
  /** Whether a used length above the writable bytes fails the queue. */
  readonly strictUsedLength: boolean;

  /** The request slot of each chain id. */
  protected readonly slots: RequestSlot[];
  /** Chains in flight, by id (1 = in flight). */
  protected readonly inFlightMap: Uint8Array;
  /** Device-writable bytes of each chain in flight, by id. */
  protected readonly writableBytes: Float64Array;
  /** Number of chains in flight. */
  protected numInFlight = 0;
  /** Set once the queue has failed. */
  protected failure: VirtioError | undefined;
  /** Turns caller Uint8Arrays into IOVAs (-1 when not device-reachable). */
  protected readonly translate: ((buffer: Uint8Array) => number) | undefined;
  /** Indirect tables: byte offset in a slot, entries, threshold; maxDescriptors 0 = off. */
  protected readonly indirectOffset: number;
  /** Entries per indirect table (0 when indirect descriptors are off). */
  protected readonly indirectMax: number;
  /** Chains this long or longer go indirect. */
  protected readonly indirectThreshold: number;
  /** Bytes per request slot. */
  protected readonly reqSize: number;
  /** IOVA of the request area (slot 0). */
  protected readonly reqIova: number;
  /** The request area as 32-bit words (indirect tables are written through it). */
  protected readonly reqU32: Uint32Array;
  /** The request area as 16-bit words. */
  protected readonly reqU16: Uint16Array;
  /** Base IOVAs for {@linkcode Ring.pushDescAt}; the last one is scratch for pushDesc. */
  protected readonly bases: Float64Array = new Float64Array(SCRATCH_BASE + 1);
  #numBases = 0;

  // Scratch for the generic addRequest: descriptors collected before any is written.
  #scratchIova: Float64Array;
  #scratchLen: Float64Array;
  #scratchWrite: Uint8Array;
  #scratchCount = 0;
  #addDesc: AddDesc;

  /**
   * Creates the instance.
   *
   * @param options layout, memory and IOVA
   */
  constructor(options: VirtqueueOptions) {
    const { layout, memory, iova } = options;
    if (memory.byteLength < layout.endOffset) {
      throw new InvalidArgumentError(
        `virtqueue memory is ${memory.byteLength} bytes, the layout needs ${layout.endOffset}`,
      );
    }
    this.queueSize = layout.queueSize;
    this.eventIdx = options.eventIdx ?? false;
    this.strictUsedLength = options.strictUsedLength ?? false;
    this.name = options.name ?? "virtqueue";
    this.translate = options.translate;
    this.descTableIova = iova + layout.descTableOffset;
    this.driverAreaIova = iova + layout.driverAreaOffset;
    this.deviceAreaIova = iova + layout.deviceAreaOffset;
    const q = layout.queueSize;
    this.inFlightMap = new Uint8Array(q);
    this.writableBytes = new Float64Array(q);
    this.slots = new Array(q);
    for (let id = 0; id < q; id++) {
      const off = memory.byteOffset + layout.reqOffset + id * layout.reqSize;
      this.slots[id] = Object.freeze({
        id,
        bytes: new Uint8Array(memory.buffer, off, layout.reqSize),
        view: new DataView(memory.buffer, off, layout.reqSize),
        iova: iova + layout.reqOffset + id * layout.reqSize,
      });
    }
    const ind = options.indirect;
    this.indirectMax = ind ? ind.maxDescriptors : 0;
    this.indirectOffset = ind ? ind.slotOffset : 0;
    this.indirectThreshold = ind?.threshold ?? 4;
    this.reqSize = layout.reqSize;
    this.reqIova = iova + layout.reqOffset;
    const reqBytes = layout.reqSize * q;
    this.reqU32 = new Uint32Array(memory.buffer, memory.byteOffset + layout.reqOffset, reqBytes >> 2);
    this.reqU16 = new Uint16Array(memory.buffer, memory.byteOffset + layout.reqOffset, reqBytes >> 1);
    if (ind) {
      if (ind.maxDescriptors < 1 || ind.maxDescriptors > q) {
        throw new InvalidArgumentError(`an indirect table holds 1 to ${q} descriptors, got ${ind.maxDescriptors}`);
      }
      if (ind.slotOffset % 16 !== 0 || ind.slotOffset + 16 * ind.maxDescriptors > layout.reqSize) {
        throw new InvalidArgumentError("the indirect table does not fit 16-byte aligned in the request slot");
      }
    }
    this.#scratchIova = new Float64Array(q);
    this.#scratchLen = new Float64Array(q);
    this.#scratchWrite = new Uint8Array(q);
    this.#addDesc = (buffer, fromDevice) => this.#collect(buffer, fromDevice);
  }

  /** Chains submitted and not yet completed. */
  get inFlight(): number {
    return this.numInFlight;
  }

  /** Where the ring stands, for another object to continue it (see {@linkcode VirtqueueOptions.resume}). */
  abstract position(): RingPosition;

  /** Throws unless nothing is in flight or being built (for {@linkcode Ring.position}). */
  protected checkIdle(): void {
    if (this.numInFlight > 0) {
      throw new InvalidArgumentError(`${this.name}: ${this.numInFlight} chains are in flight: the ring is not idle`);
    }
  }

  /** Descriptors free for new chains. */
  abstract readonly freeDescriptors: number;

  /** The error that failed this queue (a device violation or a lost connection), if any. */
  get error(): VirtioError | undefined {
    return this.failure;
  }

  /**
   * Calls `fn` with the id of every chain in flight (e.g. to reject them all
   * after a failure).
   *
   * @param fn called once per chain
   */
  forEachInFlight(fn: (id: number) => void): void {
    for (let id = 0; id < this.queueSize; id++) if (this.inFlightMap[id] === 1) fn(id);
  }

  /**
   * Marks the queue failed: every later call throws `error`. Chains in
   * flight stay marked so that their owner can reject them.
   *
   * @param error the violation, or the loss of the device
   */
  fail(error: VirtioError): void {
    this.failure ??= error;
  }

  /**
   * Adds a chain, as `virtio-driver` does: `prepare(req, addDesc)` fills the
   * request slot and calls `addDesc` once per buffer, in order (driver-readable
   * buffers first, then device-writable ones). Nothing reaches the ring unless
   * prepare returns normally and the whole chain fits.
   *
   * @param prepare fills the slot and lists the buffers
   * @returns the chain id
   * @throws {QueueFullError} when there are fewer free descriptors than buffers
   * @throws {InvalidArgumentError} for no buffers, a bad buffer, or more than the queue can ever hold
   */
  addRequest(prepare: (req: RequestSlot, addDesc: AddDesc) => void): number {
    if (this.failure) throw this.failure;
    const head = this.peekFreeId();
    if (head < 0) throw new QueueFullError(`${this.name} is full`);
    this.#scratchCount = 0;
    prepare(this.slots[head], this.#addDesc);
    const n = this.#scratchCount;
    if (n === 0) throw new InvalidArgumentError("a request needs at least one buffer");
    if (this.beginChain(n) < 0) {
      throw new QueueFullError(`${this.name}: ${n} descriptors needed, ${this.freeDescriptors} free`);
    }
    for (let i = 0; i < n; i++) {
      this.pushDesc(this.#scratchIova[i], this.#scratchLen[i], this.#scratchWrite[i] === 1);
    }
    return this.endChain();
  }

  #collect(buffer: DeviceBuffer | Uint8Array, fromDevice: boolean): void {
    let iova: number, length: number;
    if (buffer instanceof Uint8Array) {
      iova = this.translate ? this.translate(buffer) : -1;
      length = buffer.byteLength;
      if (iova < 0) throw new InvalidArgumentError("buffer is not in device-reachable memory");
    } else {
      iova = buffer.iova;
      length = buffer.length;
    }
    checkDesc(iova, length);
    if (this.#scratchCount === this.queueSize) {
      throw new InvalidArgumentError(`a chain cannot have more than ${this.queueSize} buffers`);
    }
    const i = this.#scratchCount++;
    this.#scratchIova[i] = iova;
    this.#scratchLen[i] = length;
    this.#scratchWrite[i] = fromDevice ? 1 : 0;
  }

  /**
   * Yields every chain the device has finished since the last call. Each
   * used element is validated first; a violation fails the queue and throws.
   *
   * @returns an iterator of completions
   */
  *completions(): IterableIterator<Completion> {
    for (;;) {
      const id = this.nextUsed();
      if (id < 0) return;
      yield { id, req: this.slots[id], len: this.lastUsedLen };
    }
  }

  /**
   * Device-writable bytes of chain `id` (kept after it is used, until the id
   * is reused): compare with {@linkcode Ring.lastUsedLen}.
   *
   * @param id a chain id
   * @returns the bytes
   */
  writableOf(id: number): number {
    return this.writableBytes[id];
  }

  /** The id the next chain will get, or -1 when no descriptor is free. */
  protected abstract peekFreeId(): number;

  /**
   * Whether a chain of `count` descriptors fits now (directly, or through an
   * indirect table when those are on).
   *
   * @param count descriptors in the chain
   * @returns true when {@linkcode Ring.beginChain} would succeed
   */
  fits(count: number): boolean {
    if (count < 1 || this.peekFreeId() < 0) return false;
    const free = this.freeDescriptors;
    // The same choice beginChain makes: one ring entry when it goes indirect.
    return (this.goesIndirect(count, free) ? 1 : count) <= free;
  }

  /**
   * How many chains of `count` descriptors an empty ring holds at once,
   * under the same placement policy as {@linkcode Ring.beginChain}:
   * direct while they fit, then (with indirect descriptors) one ring entry
   * each for the rest. A 256-entry ring holds 85 direct chains of 3, plus
   * one indirect chain with indirect descriptors on.
   *
   * @param count descriptors per chain
   * @returns the number of chains
   */
  maxChains(count: number): number {
    const q = this.queueSize;
    if (!(count >= 1)) return 0;
    const canIndirect = this.indirectMax > 0 && count > 1 && count <= this.indirectMax;
    if (canIndirect && count >= this.indirectThreshold) return q;
    const direct = Math.floor(q / count);
    return canIndirect ? direct + (q - direct * count) : direct;
  }

  /**
   * Whether a chain of `count` descriptors goes through an indirect table:
   * long chains always, shorter ones when the ring lacks room for them.
   *
   * @param count descriptors in the chain
   * @param freeDescriptors ring descriptors free now
   * @returns true to write the chain into the slot's indirect table
   */
  protected goesIndirect(count: number, freeDescriptors: number): boolean {
    return this.indirectMax > 0 && count > 1 && count <= this.indirectMax &&
      (count >= this.indirectThreshold || count > freeDescriptors);
  }

  /**
   * Starts a chain of exactly `count` descriptors.
   *
   * @param count descriptors in the chain
   * @returns the chain id, or -1 when fewer than `count` descriptors are free
   */
  abstract beginChain(count: number): number;

  /**
   * Appends a descriptor to the chain begun by {@linkcode Ring.beginChain}.
   * The caller has validated `iova` and `length` (see {@linkcode checkDesc}).
   *
   * IOVAs are usually above 2^30, where V8 boxes a number passed to a call
   * that is not inlined (one allocation per descriptor); hot paths use
   * {@linkcode Ring.pushDescAt} with small offsets instead.
   *
   * @param iova the buffer's IOVA
   * @param length its length (1 to 2^32-1)
   * @param fromDevice true for a device-writable buffer
   */
  pushDesc(iova: number, length: number, fromDevice: boolean): void {
    this.bases[SCRATCH_BASE] = iova;
    this.pushDescAt(SCRATCH_BASE, 0, length, fromDevice);
  }

  /**
   * Registers a base IOVA for {@linkcode Ring.pushDescAt} (up to 7).
   *
   * @param iova the base address
   * @returns its index
   */
  addressBase(iova: number): number {
    if (this.#numBases === SCRATCH_BASE) throw new RangeError("at most 7 address bases");
    this.bases[this.#numBases] = iova;
    return this.#numBases++;
  }

  /**
   * Appends a descriptor at `base + offset`: the allocation-free form of
   * {@linkcode Ring.pushDesc} (offsets below 2^30 are small integers).
   *
   * @param base an index from {@linkcode Ring.addressBase}
   * @param offset bytes from that base
   * @param length the buffer's length (1 to 2^32-1)
   * @param fromDevice true for a device-writable buffer
   */
  abstract pushDescAt(base: number, offset: number, length: number, fromDevice: boolean): void;

  /**
   * Makes the chain visible to the device (the notification is separate).
   *
   * @returns the chain id
   */
  abstract endChain(): number;

  /**
   * Checks the driver-private bookkeeping (for tests and the fuzzer): every
   * descriptor is either free or in exactly one chain in flight, and the
   * counters agree. Reads nothing from shared memory.
   *
   * @throws {Error} describing the first inconsistency
   */
  abstract assertConsistent(): void;

  /**
   * The id of the next finished chain, or -1 when there is none. Sets
   * {@linkcode Ring.lastUsedLen}. Validates the used element.
   *
   * @returns a chain id or -1
   * @throws {DeviceProtocolError} when the device broke the protocol (the queue is failed)
   */
  abstract nextUsed(): number;

  /** Whether the device has finished a chain not yet taken by {@linkcode Ring.nextUsed}. */
  abstract hasUsed(): boolean;

  /**
   * Whether the device must be notified of chains added since the last call
   * (honours VRING_USED_F_NO_NOTIFY, or avail_event with EVENT_IDX).
   */
  abstract availNotifNeeded(): boolean;

  /**
   * Asks the device for (or not for) a notification when it uses chains
   * (VRING_AVAIL_F_NO_INTERRUPT, or used_event with EVENT_IDX). After enabling,
   * check {@linkcode Ring.hasUsed}: chains finished before the device saw
   * the change will not be notified.
   *
   * @param enabled whether to be notified
   */
  abstract setUsedNotifEnabled(enabled: boolean): void;

  /**
   * The used length to accept for chain `id`: `len` when it is within the
   * chain's device-writable bytes; else those bytes, counted (or, strict, a
   * `used-len-too-large` violation).
   *
   * @param id the chain
   * @param len the length the device wrote
   * @returns the length to keep
   */
  protected acceptUsedLength(id: number, len: number): number {
    const writable = this.writableBytes[id];
    if (len <= writable) return len;
    if (this.strictUsedLength) {
      this.violation(
        "used-len-too-large",
        `used length ${len} of id ${id} exceeds its ${writable} device-writable bytes`,
      );
    }
    this.usedLengthClamped++;
    return writable;
  }

  /** Throws a {@linkcode DeviceProtocolError} after failing the queue. */
  protected violation(kind: ProtocolViolation, message: string): never {
    const err = new DeviceProtocolError(kind, `${this.name}: ${message}`);
    this.fail(err);
    throw this.failure;
  }
}

/**
 * Checks a descriptor's address and length.
 *
 * @param iova the buffer's IOVA: a non-negative safe integer
 * @param length its length: 1 to 2^32-1
 * @throws {InvalidArgumentError} otherwise
 */
function checkDesc(iova: number, length: number): void {
  if (!(iova >= 0 && iova <= Number.MAX_SAFE_INTEGER && Math.floor(iova) === iova)) {
    throw new InvalidArgumentError(`invalid buffer address ${iova}`);
  }
  if (!(length >= 1 && length <= 0xffffffff && Math.floor(length) === length)) {
    throw new InvalidArgumentError(`a buffer must be 1 to 4294967295 bytes long, got ${length}`);
  }
}
