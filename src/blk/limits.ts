/**
 * What a caller may ask of a device: alignment, capacity, segment limits.
 * Checked before anything reaches the device.
 *
 * @module
 */

import { InvalidArgumentError } from "../errors.ts";

/** The request limits of one device, derived from its config and features. */
export interface BlkLimits {
  /** Capacity in bytes. */
  readonly capacity: number;
  /** Offsets and lengths must be multiples of this (the logical block size). */
  readonly alignment: number;
  /** Whether the device refuses writes. */
  readonly readOnly: boolean;
  /** Most data segments in one request. */
  readonly maxSegments: number;
  /** Largest data segment in bytes. */
  readonly maxSegmentSize: number;
  /** Whether FLUSH was negotiated (without it, flush completes at once). */
  readonly flush: boolean;
  /** Discard limits, when negotiated. */
  readonly discard: { readonly maxBytes: number; readonly alignment: number } | undefined;
  /** Write-zeroes limits, when negotiated. */
  readonly writeZeroes: { readonly maxBytes: number; readonly mayUnmap: boolean } | undefined;
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
    throw new InvalidArgumentError(
      `${what}: length ${length} is not a positive multiple of the block size ${a}`,
    );
  }
  if (offset + length > limits.capacity) {
    throw new InvalidArgumentError(
      `${what}: [${offset}, ${offset + length}) goes past the capacity ${limits.capacity}`,
    );
  }
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
