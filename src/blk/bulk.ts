/**
 * Requests of any size on the promise API. A read or write larger than one
 * request may carry — more segments than seg_max, a segment above size_max,
 * more bytes than max-transfer (the IOMMU's limit on vfio-pci) — and a
 * discard or write-zeroes above the device's maximum are cut into pieces
 * that each fit, kept in flight together (a bounded window), and the caller's
 * promise settles when every piece has, with the first error.
 *
 * Pieces are block-aligned: a cut that would split a block between two
 * pieces moves back to the block boundary, the rest going to the next piece
 * (segments are cut with `subarray`, never copied). Buffers from the
 * device's pool travel zero-copy in pieces of up to 4 MiB; other buffers
 * are bounced in pieces of up to 1 MiB, so a 1 GiB plain `Uint8Array` goes
 * through a pool of a few MiB: a piece that finds the pool full waits for
 * one in flight to give its memory back. Only when one block is spread over
 * more segments than a request takes is a block gathered into a buffer of
 * its own.
 *
 * Requests that fit skip all of this: `fits()` is the only cost they pay.
 *
 * @module
 */

import {
  DeviceUnsupportedError,
  InvalidArgumentError,
  OutOfBufferMemoryError,
  ReadOnlyError,
  type VirtioError,
} from "../errors.ts";
import type { BufferPool } from "../memory/buffer_pool.ts";
import { type BlkLimits, checkDataBuffer, checkRange, toByteLength, toByteOffset } from "./limits.ts";
import {
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_NAMES,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from "./spec.ts";

/** Sends one request that fits (the device facade's round-robin over its queues). */
export type SubmitOne = (
  type: number,
  offset: number,
  buffers: Uint8Array | readonly Uint8Array[] | undefined,
  length: number,
  unmap: boolean,
) => Promise<unknown>;

/** Pieces of one large request in flight together. */
export const BULK_WINDOW = 16;
/** The largest piece of buffers that must be bounced: the pool memory a piece holds while in flight. */
export const BOUNCED_PIECE = 1 << 20;
/** The largest piece of pool buffers: several in flight keep the device busier than one huge one. */
export const ZERO_COPY_PIECE = 4 << 20;

/** One piece: a request that fits, and for a gathered read where its bytes go. */
interface Piece {
  readonly type: number;
  readonly offset: number;
  readonly buffers: Uint8Array | readonly Uint8Array[] | undefined;
  readonly length: number;
  readonly unmap: boolean;
  /** A gathered read: copy the buffer into these views, in order, once it completed. */
  readonly scatter?: readonly Uint8Array[];
}

/** Cuts requests that do not fit into ones that do, and runs them in a window. */
export class BulkSplitter {
  readonly #limits: BlkLimits;
  readonly #pool: BufferPool;
  readonly #submit: SubmitOne;

  /**
   * Creates the splitter of a device.
   *
   * @param limits the device's limits
   * @param pool its buffer pool (which buffers travel zero-copy)
   * @param submit sends one request that fits
   */
  constructor(limits: BlkLimits, pool: BufferPool, submit: SubmitOne) {
    this.#limits = limits;
    this.#pool = pool;
    this.#submit = submit;
  }

  /**
   * Whether the request goes out as it is. Arguments that are not even
   * well-formed "fit": the queue's validation then names what is wrong.
   *
   * @param type VIRTIO_BLK_T_*
   * @param buffers data buffers
   * @param length byte length (discard, write-zeroes)
   * @returns false when it must be split
   */
  fits(type: number, buffers: Uint8Array | readonly Uint8Array[] | undefined, length: number | bigint): boolean {
    const l = this.#limits;
    if (type === VIRTIO_BLK_T_IN || type === VIRTIO_BLK_T_OUT) {
      if (buffers instanceof Uint8Array) {
        const n = buffers.byteLength;
        return n <= l.maxSegmentSize && n <= l.maxTransfer && (n <= BOUNCED_PIECE || this.#pool.offsetOf(buffers) >= 0);
      }
      if (!Array.isArray(buffers) || buffers.length > l.maxSegments) return !Array.isArray(buffers);
      let total = 0, bounced = 0;
      for (const b of buffers) {
        if (!(b instanceof Uint8Array)) return true;
        if (b.byteLength > l.maxSegmentSize) return false;
        total += b.byteLength;
        if (this.#pool.offsetOf(b) < 0) bounced += b.byteLength;
      }
      return total <= l.maxTransfer && bounced <= BOUNCED_PIECE;
    }
    if (type === VIRTIO_BLK_T_DISCARD || type === VIRTIO_BLK_T_WRITE_ZEROES) {
      const lim = type === VIRTIO_BLK_T_DISCARD ? l.discard : l.writeZeroes;
      const n = typeof length === "bigint" ? Number(length) : length;
      return lim === undefined || !(n > lim.maxBytes);
    }
    return true;
  }

  /**
   * Checks the whole request as the device would (capacity, alignment,
   * read-only), then runs it in pieces.
   *
   * @param type VIRTIO_BLK_T_*
   * @param offset byte offset
   * @param buffers data buffers (read, write)
   * @param length byte length (discard, write-zeroes)
   * @param unmap write-zeroes may unmap
   */
  async run(
    type: number,
    offset: number | bigint,
    buffers: Uint8Array | readonly Uint8Array[] | undefined,
    length: number | bigint,
    unmap: boolean,
  ): Promise<void> {
    const l = this.#limits;
    const name = VIRTIO_BLK_T_NAMES[type] ?? `request ${type}`;
    if (type === VIRTIO_BLK_T_IN || type === VIRTIO_BLK_T_OUT) {
      if (type === VIRTIO_BLK_T_OUT && l.readOnly) throw new ReadOnlyError("write on a read-only device");
      const off = toByteOffset(offset);
      const segs = buffers instanceof Uint8Array ? [buffers] : buffers;
      if (!Array.isArray(segs) || segs.length === 0) {
        throw new InvalidArgumentError("buffers must be a Uint8Array or a non-empty array of them");
      }
      let total = 0;
      segs.forEach((b, i) => total += checkDataBuffer(b, i));
      checkRange(l, off, total, name);
      await this.#window(this.#dataPieces(type, off, segs));
      return;
    }
    // Discard and write-zeroes: ranges of at most the device's maximum, on its alignment.
    if (l.readOnly) throw new ReadOnlyError(`${name} on a read-only device`);
    const off = toByteOffset(offset), bytes = toByteLength(length);
    checkRange(l, off, bytes, name);
    const discard = type === VIRTIO_BLK_T_DISCARD;
    const lim = discard ? l.discard : l.writeZeroes;
    if (lim === undefined) {
      throw new DeviceUnsupportedError(
        `the device did not negotiate ${discard ? "VIRTIO_BLK_F_DISCARD" : "VIRTIO_BLK_F_WRITE_ZEROES"}`,
      );
    }
    const align = discard ? l.discard!.alignment : l.alignment;
    if (discard && (off % align !== 0 || bytes % align !== 0)) {
      throw new InvalidArgumentError(`discard: offset and length must be multiples of ${align} bytes`);
    }
    const chunk = lim.maxBytes - (lim.maxBytes % align);
    if (chunk <= 0) throw new InvalidArgumentError(`${name}: the device's limit is below its alignment`);
    await this.#window(rangePieces(type, off, bytes, chunk, unmap));
  }

  /** Runs pieces with at most {@linkcode BULK_WINDOW} in flight; rejects with the first failure once all settled. */
  async #window(pieces: Iterator<Piece>): Promise<void> {
    const inFlight = new Set<Promise<void>>();
    const retry: Piece[] = [];
    let failure: { error: unknown } | undefined;
    // The pool is full: submit nothing more until a piece in flight completes and gives memory back.
    let starved = false;
    const take = (): Piece | undefined => {
      if (retry.length > 0) return retry.shift();
      const next = pieces.next();
      return next.done ? undefined : next.value;
    };
    while (failure === undefined) {
      while (inFlight.size < BULK_WINDOW && !starved) {
        const piece = take();
        if (piece === undefined) break;
        const p: Promise<void> = this.#one(piece).then(
          () => {
            inFlight.delete(p);
            starved = false;
          },
          (e) => {
            inFlight.delete(p);
            // The pool is full of other pieces' bounce buffers: try again when one is back.
            if (e instanceof OutOfBufferMemoryError && inFlight.size > 0) {
              retry.push(piece);
              starved = true;
            } else {
              failure ??= { error: e };
            }
          },
        );
        inFlight.add(p);
      }
      if (inFlight.size === 0) break;
      await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    if (failure !== undefined) throw failure.error as VirtioError;
  }

  async #one(p: Piece): Promise<void> {
    await this.#submit(p.type, p.offset, p.buffers, p.length, p.unmap);
    if (p.scatter) {
      const from = p.buffers as Uint8Array;
      let at = 0;
      for (const v of p.scatter) {
        v.set(from.subarray(at, at + v.byteLength));
        at += v.byteLength;
      }
    }
  }

  /** Cuts a read or write into pieces that fit, in order, without copying (but for a gathered block). */
  *#dataPieces(type: number, offset: number, segs: readonly Uint8Array[]): Generator<Piece> {
    const l = this.#limits, align = l.alignment;
    const pooled = segs.map((s) => this.#pool.offsetOf(s) >= 0);
    let si = 0, so = 0; // the cursor: segment, offset in it
    let pos = offset;
    while (si < segs.length) {
      // As many bytes and segments as one request takes.
      let cap = Math.min(l.maxTransfer, pooled[si] ? ZERO_COPY_PIECE : BOUNCED_PIECE);
      const views: Uint8Array[] = [];
      let bytes = 0, i = si, o = so;
      while (i < segs.length && views.length < l.maxSegments && bytes < cap) {
        if (!pooled[i]) cap = Math.min(cap, BOUNCED_PIECE);
        if (bytes >= cap) break;
        const n = Math.min(segs[i].byteLength - o, l.maxSegmentSize, cap - bytes);
        views.push(segs[i].subarray(o, o + n));
        bytes += n;
        o += n;
        if (o === segs[i].byteLength) {
          i++;
          o = 0;
        }
      }
      const aligned = bytes - (bytes % align);
      if (aligned === 0) {
        // One block over more segments than a request takes: gather it.
        const block = new Uint8Array(align);
        const parts: Uint8Array[] = [];
        let got = 0;
        while (got < align) {
          const n = Math.min(segs[si].byteLength - so, align - got);
          const part = segs[si].subarray(so, so + n);
          if (type === VIRTIO_BLK_T_OUT) block.set(part, got);
          parts.push(part);
          got += n;
          so += n;
          if (so === segs[si].byteLength) {
            si++;
            so = 0;
          }
        }
        yield {
          type,
          offset: pos,
          buffers: block,
          length: 0,
          unmap: false,
          scatter: type === VIRTIO_BLK_T_IN ? parts : undefined,
        };
        pos += align;
        continue;
      }
      // Keep whole blocks; the cursor moves to just after them.
      let keep = aligned;
      const piece: Uint8Array[] = [];
      for (const v of views) {
        if (keep === 0) break;
        const n = Math.min(v.byteLength, keep);
        piece.push(n === v.byteLength ? v : v.subarray(0, n));
        keep -= n;
        so += n;
        if (so === segs[si].byteLength) {
          si++;
          so = 0;
        }
      }
      yield { type, offset: pos, buffers: piece.length === 1 ? piece[0] : piece, length: 0, unmap: false };
      pos += aligned;
    }
  }
}

/** Discard or write-zeroes pieces of at most `chunk` bytes. */
function* rangePieces(type: number, offset: number, bytes: number, chunk: number, unmap: boolean): Generator<Piece> {
  for (let at = 0; at < bytes; at += chunk) {
    yield { type, offset: offset + at, buffers: undefined, length: Math.min(chunk, bytes - at), unmap };
  }
}
