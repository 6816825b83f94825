/**
 * What the device streams share: the device they need, their options, and
 * the checks of those options.
 *
 * @module
 */

import { ClosedError, InvalidArgumentError } from "../errors.ts";
import { toByteOffset } from "./limits.ts";

/** What the streams need of a device (a `VirtioBlk`). */
export interface StreamDevice {
  /** Logical block size. */
  readonly blockSize: number;
  /** Capacity in bytes. */
  readonly capacity: bigint;
  /** Reads into a buffer. */
  read(offset: number, buf: Uint8Array): Promise<void>;
  /** Writes a buffer. */
  write(offset: number, buf: Uint8Array): Promise<void>;
  /** Flushes the write cache. */
  flush(): Promise<void>;
  /** A buffer in device-reachable memory. */
  allocBuffer(size: number): Uint8Array<ArrayBuffer>;
  /** Gives one back. */
  freeBuffer(buf: Uint8Array<ArrayBuffer>): void;
}

/** Options of `VirtioBlk.readable`. */
export interface ReadableOptions {
  /** Where to start, a multiple of the block size; default 0. */
  offset?: number | bigint;
  /** How many bytes, a multiple of the block size; default up to the end of the device. */
  length?: number | bigint;
  /** Bytes per read (a multiple of the block size); default 1 MiB. */
  chunkSize?: number;
  /** Reads in flight ahead of the reader; default 8. */
  queueDepth?: number;
}

/** Options of `VirtioBlk.writable`. */
export interface WritableOptions {
  /** Where to start, a multiple of the block size; default 0. */
  offset?: number | bigint;
  /** Bytes per write (a multiple of the block size); default 1 MiB. */
  chunkSize?: number;
  /** Writes in flight; default 8. */
  queueDepth?: number;
  /** Zero-fill a last partial block instead of refusing it; default false. */
  pad?: boolean;
  /** Flush the device's write cache on close; default true. */
  flush?: boolean;
  /** `writeFrom`: stop early (the promise rejects with the signal's reason once the writes in flight settled). */
  signal?: AbortSignal;
}

export const DEFAULT_CHUNK = 1 << 20;
export const DEFAULT_DEPTH = 8;

/** Checks a chunk size (default 1 MiB). */
export function chunkSizeOf(dev: StreamDevice, chunkSize: number | undefined): number {
  const n = chunkSize ?? Math.max(DEFAULT_CHUNK, dev.blockSize);
  if (!Number.isSafeInteger(n) || n < dev.blockSize || n % dev.blockSize !== 0 || n > 64 << 20) {
    throw new InvalidArgumentError(
      `chunkSize must be a multiple of the block size ${dev.blockSize}, at most 64 MiB, got ${chunkSize}`,
    );
  }
  return n;
}

/** Checks a queue depth (default 8). */
export function depthOf(queueDepth: number | undefined): number {
  const d = queueDepth ?? DEFAULT_DEPTH;
  if (!Number.isInteger(d) || d < 1 || d > 256) {
    throw new InvalidArgumentError(`queueDepth must be an integer from 1 to 256, got ${queueDepth}`);
  }
  return d;
}

/** Checks a block-aligned offset within the device. */
export function alignedOffset(dev: StreamDevice, offset: number | bigint | undefined, what: string): number {
  const off = toByteOffset(offset ?? 0, what);
  if (off % dev.blockSize !== 0) {
    throw new InvalidArgumentError(`${what} ${off} is not a multiple of the block size ${dev.blockSize}`);
  }
  if (off > Number(dev.capacity)) throw new InvalidArgumentError(`${what} ${off} is past the device's end`);
  return off;
}

/** Gives pool buffers back, quietly once the device is closed (it took them back itself). */
export function release(dev: StreamDevice, bufs: Iterable<Uint8Array<ArrayBuffer>>): void {
  for (const b of bufs) {
    try {
      if (b.byteLength > 0) dev.freeBuffer(b);
    } catch (e) {
      if (!(e instanceof ClosedError)) throw e;
    }
  }
}
