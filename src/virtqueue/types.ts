/**
 * The virtqueue as drivers of other virtio devices use it (the `./advanced`
 * entry point): add a request as a descriptor chain, reap completions,
 * steer notifications — what the Rust crate `virtio-driver` exposes. Split
 * and packed rings are private behind {@linkcode Virtqueue}.
 *
 * @module
 */

import type { VirtqueueFormat, VirtqueueLayout } from "./layout.ts";
import type { VirtioError } from "../errors.ts";

/** The per-request data slot of a chain: a view into shared memory. */
export interface RequestSlot {
  /** The chain id this slot belongs to. */
  readonly id: number;
  /** The slot's bytes (layout.reqSize of them). */
  readonly bytes: Uint8Array;
  /** The same bytes as a DataView (little-endian accessors). */
  readonly view: DataView;
  /** The IOVA of the slot's first byte. */
  readonly iova: number;
}

/** A buffer given by address: `length` bytes at `iova`. */
export interface DeviceBuffer {
  /** I/O virtual address. */
  readonly iova: number;
  /** Length in bytes. */
  readonly length: number;
}

/** Adds one buffer to the chain being prepared; `fromDevice` marks it device-writable. */
export type AddDesc = (buffer: DeviceBuffer | Uint8Array, fromDevice: boolean) => void;

/** One finished chain. */
export interface Completion {
  /** The chain id {@linkcode Virtqueue.addRequest} returned. */
  readonly id: number;
  /** Its request slot. */
  readonly req: RequestSlot;
  /** Bytes the device says it wrote (clamped to the chain's writable bytes unless strict). */
  readonly len: number;
}

/** Indirect descriptor tables, one per request slot. */
export interface IndirectOptions {
  /** Byte offset of the table inside each request slot (16-byte aligned). */
  slotOffset: number;
  /** Entries per table (the longest chain that can go indirect). */
  maxDescriptors: number;
  /**
   * Chains of at least this many descriptors go indirect; shorter ones go
   * indirect only when there are fewer free descriptors than they need.
   * Default 4 (so a plain header + data + status request stays direct).
   */
  threshold?: number;
}

/** Options of {@linkcode createVirtqueue}. */
export interface VirtqueueOptions {
  /** The layout (format, queue size, slot size). */
  layout: VirtqueueLayout;
  /** This queue's block of shared memory (`layout.stride` bytes, or more), 16-byte aligned. */
  memory: Uint8Array<ArrayBuffer>;
  /** The IOVA of `memory[0]`. */
  iova: number;
  /** Whether VIRTIO_F_EVENT_IDX was negotiated. */
  eventIdx?: boolean;
  /**
   * Translates a Uint8Array passed to `addDesc` into an IOVA (-1 when it is
   * not device-reachable). Without it, only {@linkcode DeviceBuffer}s work.
   */
  translate?: (buffer: Uint8Array) => number;
  /** A name for error messages, e.g. `"queue 0"`. */
  name?: string;
  /**
   * VIRTIO_F_INDIRECT_DESC: where each request slot keeps its indirect
   * descriptor table, and when to use it. Tables are preallocated (one per
   * slot), so using them allocates nothing.
   */
  indirect?: IndirectOptions;
  /**
   * A used length above the chain's device-writable bytes fails the queue
   * (`used-len-too-large`) instead of being clamped and counted in
   * {@linkcode Virtqueue.usedLengthClamped}. Default false: many devices
   * report lengths the spec does not allow (Linux reverted its own check for
   * that reason), and nothing in the driver uses the length to touch memory.
   */
  strictUsedLength?: boolean;
  /**
   * Continue a ring that another driver-side object drove until now, over
   * the same memory, from the position {@linkcode Virtqueue.position} gave
   * with nothing in flight (a queue handed to a Worker). The memory is kept
   * as it is; without this option a new ring zeroes it.
   */
  resume?: RingPosition;
}

/**
 * Where an idle ring stands: the next position the driver makes available,
 * which is also the next it expects used (virtio 1.2, 2.7.6 / 2.7.8 split:
 * the 16-bit `idx`; 2.8.1 packed: the ring position and its wrap counter).
 */
export interface RingPosition {
  /** Split: the next available (= used) index, mod 2^16. Packed: the next ring position. */
  readonly next: number;
  /** Packed: the driver's (= the device's) wrap counter there; split: false. */
  readonly wrap: boolean;
}

/**
 * The driver side of one virtqueue in shared memory (virtio 1.2, 2.7 split
 * and 2.8 packed). The device is untrusted: every id and length it writes is
 * checked before use, the free list lives in private memory, and a
 * violation fails the queue with a `DeviceProtocolError` that every later
 * call rethrows.
 *
 * @example
 * ```ts
 * import { createVirtqueue, VirtqueueLayout } from "../../advanced.ts";
 * const layout = new VirtqueueLayout(1, 8);
 * const vq = createVirtqueue({ layout, memory: new Uint8Array(layout.totalSize), iova: 0x10000 });
 * const id = vq.addRequest((req, addDesc) => {
 *   req.view.setUint32(0, 1, true);
 *   addDesc({ iova: req.iova, length: 16 }, false);
 *   addDesc({ iova: req.iova + 16, length: 1 }, true);
 * });
 * // ... tell the device (your transport's notifier, when vq.availNotifNeeded()) ...
 * for (const c of vq.completions()) console.log(c.id === id, c.len);
 * ```
 */
export interface Virtqueue {
  /** Entries in the ring. */
  readonly queueSize: number;
  /** The ring format. */
  readonly format: VirtqueueFormat;
  /** IOVA of the descriptor table (descriptor ring, when packed). */
  readonly descTableIova: number;
  /** IOVA of the driver area (split: available ring; packed: driver event suppression). */
  readonly driverAreaIova: number;
  /** IOVA of the device area (split: used ring; packed: device event suppression). */
  readonly deviceAreaIova: number;
  /** Whether VIRTIO_F_EVENT_IDX is in use. */
  readonly eventIdx: boolean;
  /** Chains submitted and not yet completed. */
  readonly inFlight: number;
  /** Descriptors free for new chains. */
  readonly freeDescriptors: number;
  /**
   * Where the ring stands, for another driver-side object to continue it
   * ({@linkcode VirtqueueOptions.resume}); after that this one must not be
   * used again.
   *
   * @returns the position
   * @throws {InvalidArgumentError} while a chain is in flight or being built
   */
  position(): RingPosition;
  /** The error that failed this queue, if any. */
  readonly error: VirtioError | undefined;
  /** Used elements whose length exceeded their chain's writable bytes, clamped (a statistic). */
  readonly usedLengthClamped: number;
  /**
   * Adds a chain, as `virtio-driver` does: `prepare(req, addDesc)` fills the
   * request slot and calls `addDesc` once per buffer, in order (driver-readable
   * buffers first, then device-writable ones). Nothing reaches the ring unless
   * prepare returns normally and the whole chain fits.
   *
   * @param prepare fills the slot and lists the buffers
   * @returns the chain id
   * @throws {QueueFullError} when there are fewer free descriptors than buffers
   */
  addRequest(prepare: (req: RequestSlot, addDesc: AddDesc) => void): number;
  /**
   * Yields every chain the device has finished since the last call, each
   * validated first; a violation fails the queue and throws.
   */
  completions(): IterableIterator<Completion>;
  /**
   * Whether the device must be notified of chains added since the last call
   * (honours VRING_USED_F_NO_NOTIFY, or avail_event with EVENT_IDX).
   */
  availNotifNeeded(): boolean;
  /**
   * Asks the device for (or not for) a notification when it uses chains.
   * After enabling, check {@linkcode Virtqueue.hasUsed}: chains finished
   * before the device saw the change will not be notified.
   *
   * @param enabled whether to be notified
   */
  setUsedNotifEnabled(enabled: boolean): void;
  /** Whether the device has finished a chain not yet taken. */
  hasUsed(): boolean;
}
