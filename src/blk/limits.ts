/**
 * What a caller may ask of a device — alignment, capacity, segment limits,
 * the operations negotiated — and the one place that checks a request
 * against them, before anything reaches the device.
 *
 * @module
 */

import { DeviceUnsupportedError, InvalidArgumentError, ReadOnlyError } from "../errors.ts";
import type { VirtioBlkConfig } from "./config.ts";
import type { VirtioBlkFeatures } from "./features.ts";
import {
  SECTOR_SIZE,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_NAMES,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from "./spec.ts";

/** The request limits of one device, derived from its config and features. */
export interface BlkLimits {
  /** Capacity in bytes (updated when the device reports a new one). */
  capacity: number;
  /** Offsets and lengths must be multiples of this (the logical block size). */
  readonly alignment: number;
  /** Whether the device refuses writes. */
  readonly readOnly: boolean;
  /** Most data segments in one request. */
  readonly maxSegments: number;
  /** Largest data segment in bytes. */
  readonly maxSegmentSize: number;
  /** Most data bytes in one request (segments x segment size, the transport's limit, 1 GiB; block-aligned). */
  readonly maxTransfer: number;
  /** Whether FLUSH was negotiated (without it, flush completes at once). */
  readonly flush: boolean;
  /** Discard limits, when negotiated. */
  readonly discard: { readonly maxBytes: number; readonly alignment: number } | undefined;
  /** Write-zeroes limits, when negotiated. */
  readonly writeZeroes: { readonly maxBytes: number; readonly mayUnmap: boolean } | undefined;
}

/** The largest byte count a 32-bit sector count covers. */
const MAX_RANGE_BYTES = 0xffff_ffff * SECTOR_SIZE;

/**
 * The limits a device's config and features impose on requests
 * (virtio 1.2, 5.2.4).
 *
 * @param config the device's config
 * @param features the negotiated features
 * @param maxSegments data segments per request the driver allows
 * @param transportMax the most bytes per request the transport carries
 * @returns the limits
 */
export function limitsOf(
  config: VirtioBlkConfig,
  features: VirtioBlkFeatures,
  maxSegments: number,
  transportMax: number = Infinity,
): BlkLimits {
  const sectorsToBytes = (s: number) => (s === 0 ? MAX_RANGE_BYTES : Math.min(s * SECTOR_SIZE, MAX_RANGE_BYTES));
  return {
    capacity: Number(config.capacity),
    alignment: config.blkSize,
    readOnly: features.readOnly,
    maxSegments,
    maxSegmentSize: config.sizeMax ?? 0xffff_ffff,
    maxTransfer: maxTransferOf(config, maxSegments, transportMax),
    flush: features.flush,
    discard: config.discard && {
      maxBytes: sectorsToBytes(config.discard.maxSectors),
      alignment: Math.max(1, config.discard.sectorAlignment) * SECTOR_SIZE,
    },
    writeZeroes: config.writeZeroes && {
      maxBytes: sectorsToBytes(config.writeZeroes.maxSectors),
      mayUnmap: config.writeZeroes.mayUnmap,
    },
  };
}

/**
 * A device's request limits under libblkio's property names (camelCased:
 * `request-alignment` is `requestAlignment`), for `VirtioBlk.limits`. The
 * promise API takes requests of any size and splits them by these; the
 * batch API takes one request per chain and refuses what exceeds them.
 */
export interface VirtioBlkLimits {
  /** request-alignment: offsets and lengths are multiples of this (the logical block size). */
  readonly requestAlignment: number;
  /** optimal-io-alignment: the physical block size (TOPOLOGY), else the logical one. */
  readonly optimalIoAlignment: number;
  /** max-transfer: the most bytes one batch-API request carries. */
  readonly maxTransfer: number;
  /** max-segments: data buffers in one batch-API request. */
  readonly maxSegments: number;
  /** max-segment-len: bytes in one data buffer of a batch-API request. */
  readonly maxSegmentLen: number;
  /** buf-alignment: the memory alignment a buffer needs — 1, any `Uint8Array` (but `allocBuffer`'s go zero-copy). */
  readonly bufAlignment: number;
  /** discard-alignment: discard offsets and lengths are multiples of this (0 without discard). */
  readonly discardAlignment: number;
  /** max-discard-len: bytes in one discard request (0 without discard). */
  readonly maxDiscardLen: number;
  /** max-write-zeroes-len: bytes in one write-zeroes request (0 without write-zeroes). */
  readonly maxWriteZeroesLen: number;
}

/**
 * The limits under libblkio's names.
 *
 * @param l the driver's limits
 * @param config the device's config
 * @returns them, frozen
 */
export function publicLimits(l: BlkLimits, config: VirtioBlkConfig): VirtioBlkLimits {
  return Object.freeze({
    requestAlignment: l.alignment,
    optimalIoAlignment: l.alignment * 2 ** (config.topology?.physicalBlockExp ?? 0),
    maxTransfer: l.maxTransfer,
    maxSegments: l.maxSegments,
    maxSegmentLen: l.maxSegmentSize,
    bufAlignment: 1,
    discardAlignment: l.discard?.alignment ?? 0,
    maxDiscardLen: l.discard?.maxBytes ?? 0,
    maxWriteZeroesLen: l.writeZeroes?.maxBytes ?? 0,
  });
}

/** The cap on one request's data whatever the device allows: larger ones gain nothing and hold memory longer. */
const MAX_TRANSFER_CAP = 1 << 30;

function maxTransferOf(config: VirtioBlkConfig, maxSegments: number, transportMax: number): number {
  const bytes = Math.min(maxSegments * (config.sizeMax ?? 0xffff_ffff), transportMax, MAX_TRANSFER_CAP);
  return Math.max(config.blkSize, bytes - (bytes % config.blkSize));
}

/**
 * Converts a caller's byte offset to a number.
 *
 * @param offset a non-negative safe integer, as number or bigint
 * @param what the argument's name for the message
 * @returns the offset as a number
 * @throws {InvalidArgumentError} for negative, fractional, NaN or too large values
 */
export function toByteOffset(offset: number | bigint, what = "offset"): number {
  if (typeof offset === "number") {
    if (Number.isSafeInteger(offset) && offset >= 0) return offset;
  } else if (typeof offset === "bigint") {
    if (offset >= 0n && offset <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(offset);
  }
  throw new InvalidArgumentError(`${what} must be a non-negative integer, got ${String(offset)}`);
}

/**
 * Converts and checks a caller's length.
 *
 * @param length a positive safe integer, as number or bigint
 * @param what the argument's name for the message
 * @returns the length as a number
 */
export function toByteLength(length: number | bigint, what = "length"): number {
  const n = toByteOffset(length, what);
  if (n === 0) throw new InvalidArgumentError(`${what} must be positive`);
  return n;
}

/**
 * Checks that `[offset, offset + length)` is aligned and inside the device.
 *
 * @param limits the device's limits
 * @param offset byte offset
 * @param length byte length (> 0)
 * @param what the request, for the message
 * @throws {InvalidArgumentError} otherwise
 */
export function checkRange(limits: BlkLimits, offset: number, length: number, what: string): void {
  const a = limits.alignment;
  if (offset % a !== 0) {
    throw new InvalidArgumentError(`${what}: offset ${offset} is not a multiple of the block size ${a}`);
  }
  if (!(length > 0) || length % a !== 0) {
    throw new InvalidArgumentError(`${what}: length ${length} is not a positive multiple of the block size ${a}`);
  }
  if (offset + length > limits.capacity) {
    throw new InvalidArgumentError(
      `${what}: [${offset}, ${offset + length}) goes past the capacity ${limits.capacity}`,
    );
  }
}

/**
 * Checks one data buffer.
 *
 * @param limits the device's limits
 * @param buf the buffer
 * @param i its index, for the message
 * @returns its length
 */
function checkBuffer(limits: BlkLimits, buf: Uint8Array, i: number): number {
  const len = checkDataBuffer(buf, i);
  if (len > limits.maxSegmentSize) {
    throw new InvalidArgumentError(
      `buffer ${i} is ${len} bytes, above the device's segment limit of ${limits.maxSegmentSize}`,
    );
  }
  return len;
}

/**
 * Checks that a data buffer is a usable, non-empty `Uint8Array` (whatever its size).
 *
 * @param buf the buffer
 * @param i its index, for the message
 * @returns its length
 * @throws {InvalidArgumentError} otherwise
 */
export function checkDataBuffer(buf: Uint8Array, i: number): number {
  if (!(buf instanceof Uint8Array)) throw new InvalidArgumentError(`buffer ${i} is not a Uint8Array`);
  const len = buf.byteLength;
  if (len === 0) {
    throw new InvalidArgumentError(
      (buf.buffer as ArrayBuffer).detached ? `buffer ${i} was freed (or its device closed)` : `buffer ${i} is empty`,
    );
  }
  return len;
}

/**
 * Checks the buffers of a vectored request.
 *
 * @param limits the device's limits
 * @param segs the buffers
 * @returns their total length
 */
function checkBuffers(limits: BlkLimits, segs: readonly Uint8Array[]): number {
  if (!Array.isArray(segs)) throw new InvalidArgumentError("buffers must be an array of Uint8Array");
  const n = segs.length;
  if (n === 0) throw new InvalidArgumentError("a vectored request needs at least one buffer");
  if (n > limits.maxSegments) {
    throw new InvalidArgumentError(`${n} buffers exceed the limit of ${limits.maxSegments} segments per request`);
  }
  let total = 0;
  for (let i = 0; i < n; i++) total += checkBuffer(limits, segs[i], i);
  return total;
}

/**
 * Checks a request against the device's limits: the one place that decides
 * what reaches the device. Flush and get-id take no arguments to check.
 *
 * @param limits the device's limits
 * @param type the request type (VIRTIO_BLK_T_*)
 * @param offset byte offset (read, write, discard, write-zeroes)
 * @param buffers one buffer or several (read, write)
 * @param length byte length (discard, write-zeroes)
 * @returns the offset as a number and the bytes the request covers
 * @throws {InvalidArgumentError}, {@linkcode ReadOnlyError}, {@linkcode DeviceUnsupportedError}
 */
export function validateRequest(
  limits: BlkLimits,
  type: number,
  offset: number | bigint,
  buffers: Uint8Array | readonly Uint8Array[] | undefined,
  length: number | bigint,
): { offset: number; bytes: number } {
  const name = VIRTIO_BLK_T_NAMES[type] ?? `request ${type}`;
  if (type === VIRTIO_BLK_T_IN || type === VIRTIO_BLK_T_OUT) {
    if (type === VIRTIO_BLK_T_OUT && limits.readOnly) throw new ReadOnlyError("write on a read-only device");
    const off = toByteOffset(offset);
    const bytes = buffers instanceof Uint8Array ? checkBuffer(limits, buffers, 0) : checkBuffers(limits, buffers ?? []);
    checkRange(limits, off, bytes, name);
    if (bytes > limits.maxTransfer) {
      throw new InvalidArgumentError(
        `${name}: ${bytes} bytes exceed the ${limits.maxTransfer} one request may carry (max-transfer; ` +
          `the promise API splits larger requests)`,
      );
    }
    return { offset: off, bytes };
  }
  if (type === VIRTIO_BLK_T_DISCARD || type === VIRTIO_BLK_T_WRITE_ZEROES) {
    if (limits.readOnly) throw new ReadOnlyError(`${name} on a read-only device`);
    const discard = type === VIRTIO_BLK_T_DISCARD;
    const lim = discard ? limits.discard : limits.writeZeroes;
    if (!lim) {
      throw new DeviceUnsupportedError(
        `the device did not negotiate ${discard ? "VIRTIO_BLK_F_DISCARD" : "VIRTIO_BLK_F_WRITE_ZEROES"}`,
      );
    }
    const off = toByteOffset(offset), bytes = toByteLength(length);
    checkRange(limits, off, bytes, name);
    if (discard) {
      const a = limits.discard!.alignment;
      if (off % a !== 0 || bytes % a !== 0) {
        throw new InvalidArgumentError(`discard: offset and length must be multiples of ${a} bytes`);
      }
    }
    if (bytes > lim.maxBytes) {
      throw new InvalidArgumentError(
        `${name}: ${bytes} bytes exceed the device's limit of ${lim.maxBytes} per request`,
      );
    }
    return { offset: off, bytes };
  }
  return { offset: 0, bytes: 0 };
}
