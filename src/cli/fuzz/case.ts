/**
 * What a fuzz case is made of, as the generator plans it and before any
 * memory is touched: requests (type, sector, the bytes they carry), each
 * laid out as a chain of buffers (which bytes each descriptor holds, its
 * direction, whether it sits in an indirect table, and for illegal chains
 * what is wrong with them), grouped in phases that are submitted one after
 * the other, each as one batch. Plus what the back-end may answer.
 *
 * Every request is a byte stream: the 16-byte header, then the data the
 * device reads (a write's data, discard segments), then the data the device
 * writes (a read's data, GET_ID's string), then the status byte. Buffers
 * are slices of that stream, in order.
 *
 * @module
 */

import type { VirtqueueFormat } from "../../virtqueue/layout.ts";

/** Request types as the fuzzer names them. */
export type RequestOp = "read" | "write" | "flush" | "get-id" | "discard" | "write-zeroes" | "unknown";

/** What makes an illegal request illegal (one thing per request). */
export type IllegalKind =
  | "header-writable"
  | "readable-after-writable"
  | "no-status"
  | "data-not-512"
  | "past-capacity"
  | "loop"
  | "next-out-of-range"
  | "address-outside"
  | "indirect-not-negotiated"
  | "nested-indirect"
  | "chain-too-long"
  | "type-flags"
  | "indirect-with-next"
  | "indirect-bad-length"
  | "get-id-length"
  | "flush-sector"
  | "segment-flags"
  | "segment-length";

/** What each illegal kind means, for reports. */
export const ILLEGAL_KINDS: Readonly<Record<IllegalKind, string>> = {
  "header-writable": "the header is in a device-writable descriptor",
  "readable-after-writable": "a device-readable descriptor after a device-writable one",
  "no-status": "no status byte at the end of the chain",
  "data-not-512": "data length not a multiple of 512",
  "past-capacity": "sectors past the capacity",
  "loop": "a descriptor loop",
  "next-out-of-range": "a next index out of range",
  "address-outside": "a buffer address outside the memory table",
  "indirect-not-negotiated": "an indirect descriptor without VIRTIO_F_INDIRECT_DESC",
  "nested-indirect": "an indirect descriptor inside an indirect table",
  "chain-too-long": "a chain longer than the queue",
  "type-flags": "a type with unknown flag bits",
  "indirect-with-next": "an indirect descriptor with NEXT set",
  "indirect-bad-length": "an indirect table length that is not a positive multiple of 16",
  "get-id-length": "a GET_ID buffer that is not 20 bytes",
  "flush-sector": "a flush with a non-zero sector",
  "segment-flags": "a discard or write-zeroes segment with flags the spec refuses",
  "segment-length": "discard or write-zeroes data that is not whole segments, or too many of them",
};

/**
 * Legal but uncommon things a request's layout can do (each case picks a
 * few as its theme; a finding names the ones its case used).
 */
export type LayoutFeature =
  | "header-split"
  | "header-with-data"
  | "status-with-data"
  | "many-segments"
  | "byte-segments"
  | "zero-length"
  | "indirect"
  | "indirect-after-direct"
  | "indirect-shuffled"
  | "indirect-write-flag"
  | "unaligned-buffers"
  | "largest"
  | "flush-with-data";

/** What each layout feature means, for reports. */
export const LAYOUT_FEATURES: Readonly<Record<LayoutFeature, string>> = {
  "header-split": "the 16-byte header split over 2 to 4 descriptors",
  "header-with-data": "the header and the data after it in one descriptor",
  "status-with-data": "the status byte at the end of the last data descriptor",
  "many-segments": "data in 9 to seg_max descriptors",
  "byte-segments": "data descriptors whose lengths are not multiples of 512",
  "zero-length": "zero-length descriptors between the others",
  "indirect": "the whole chain in an indirect table",
  "indirect-after-direct": "direct descriptors followed by an indirect table (split rings, virtio 1.2 §2.7.5.3.2)",
  "indirect-shuffled": "an indirect table whose entries are linked out of order",
  "indirect-write-flag": "VRING_DESC_F_WRITE on a descriptor that refers to a table (the device must ignore it)",
  "unaligned-buffers": "buffers at addresses that are not 64-byte aligned",
  "largest": "the largest request seg_max and size_max allow (at most 1 MiB)",
  "flush-with-data": "a flush with a data buffer (discouraged, not forbidden)",
};

/** Where a buffer's address is: in shared memory, or not (address-outside). */
export type Placement = "region" | "hole" | "crossing";

/** One buffer (one descriptor) of a chain. */
export interface PlannedBuffer {
  /** First byte of the request's stream it holds. */
  readonly from: number;
  /** End of the bytes it holds (`from` for a zero-length descriptor). */
  readonly to: number;
  /** Device-writable. */
  readonly write: boolean;
  /** Bytes of its own that are not part of the stream (a stray readable buffer), instead of [from, to). */
  readonly extra?: number;
  /** Where its address points (default: shared memory). */
  readonly where?: Placement;
  /** Placed at an address that is not 64-byte aligned. */
  readonly unaligned?: boolean;
}

/** Illegal structures a chain can have besides wrong buffers. */
export type ChainMutation =
  /** The last descriptor links (NEXT) to buffer `to` of the same chain or table. */
  | { readonly kind: "loop"; readonly to: number }
  /** Buffer `at` links (NEXT) to descriptor `next`, past the end of the ring or table. */
  | { readonly kind: "next-out-of-range"; readonly at: number; readonly next: number }
  /** The table's entries from `at` on are in a second table, referred to from the first. */
  | { readonly kind: "nested-indirect"; readonly at: number }
  /** The descriptor that refers to the table also has NEXT, linking to a stray descriptor. */
  | { readonly kind: "indirect-with-next" }
  /** The descriptor that refers to the table says `len` bytes. */
  | { readonly kind: "indirect-bad-length"; readonly len: number };

/** How a request's buffers become descriptors. */
export interface ChainPlan {
  /** The buffers, in the order the device walks them. */
  readonly buffers: readonly PlannedBuffer[];
  /** From this buffer on, the buffers are in one indirect table (undefined: all direct). */
  readonly indirectFrom?: number;
  /** Split rings: the table's entries are linked in a shuffled order (legal: `next` may point anywhere). */
  readonly shuffledTable?: boolean;
  /** VRING_DESC_F_WRITE on the descriptor that refers to the table (legal: the device ignores it). */
  readonly indirectWriteFlag?: boolean;
  /** An illegal structure. */
  readonly mutation?: ChainMutation;
}

/** What the back-end may do with a request without it being a finding. */
export interface Expectation {
  /** A legal request: it must complete within the timeout. */
  readonly mustComplete: boolean;
  /** Status values that are no finding. */
  readonly allowed: readonly number[];
  /** Whether the status byte is where the fuzzer put it (the chain's structure is well defined). */
  readonly statusKnown: boolean;
  /** Whether the used length can be checked (the chain's buffers are well defined). */
  readonly lengthKnown: boolean;
}

/** One request of a case. */
export interface FuzzRequest {
  /** Its number within the case (0-based). */
  readonly n: number;
  /** The phase (batch) it is submitted in. */
  readonly phase: number;
  /** What kind of request it is. */
  readonly op: RequestOp;
  /** The raw `type` field. */
  readonly type: number;
  /** The raw `sector` field. */
  readonly sector: bigint;
  /** Sectors it reads or writes (0 when it does neither). */
  readonly sectors: number;
  /** Legal (true) or illegal. */
  readonly legal: boolean;
  /** What is wrong with it, when illegal. */
  readonly illegal?: IllegalKind;
  /** A short description: type, size, where. */
  readonly what: string;
  /** The device-readable bytes of the stream: header, then write data or segments. */
  readonly readable: Uint8Array;
  /** Device-writable bytes of the stream before the status (read data, GET_ID's string). */
  readonly writableLen: number;
  /** Whether the stream ends with a status byte. */
  readonly hasStatus: boolean;
  /** The chain. */
  readonly chain: ChainPlan;
  /** What may come back. */
  readonly expect: Expectation;
  /** How its completion touches the case's model of the disk. */
  readonly effect: "read" | "write" | "zeroes" | "discard" | "unknown-writes" | "none";
  /** The sector ranges it names (for discard and write-zeroes: its segments). */
  readonly ranges: readonly { readonly sector: bigint; readonly sectors: number }[];
  /** The uncommon layout features it uses. */
  readonly features: readonly LayoutFeature[];
}

/** A generated case. */
export interface FuzzCase {
  /** `SEED:INDEX`. */
  readonly id: string;
  /** The run's seed. */
  readonly seed: number;
  /** The case's number. */
  readonly index: number;
  /** True when every request is legal. */
  readonly legal: boolean;
  /** Every request, in submission order (by phase, then position in the batch). */
  readonly requests: readonly FuzzRequest[];
  /** How many phases. */
  readonly phases: number;
  /** The uncommon layout features its requests use (the case's theme). */
  readonly features: readonly LayoutFeature[];
  /** Notes for the report (e.g. a write turned into a read). */
  readonly notes: readonly string[];
}

/** Discard and write-zeroes limits (virtio 1.2 §5.2.4). */
export interface RangeLimits {
  /** Most sectors per segment. */
  readonly maxSectors: number;
  /** Most segments per request. */
  readonly maxSegments: number;
  /** Alignment of a segment's start, in sectors (1: none). */
  readonly alignment: number;
}

/** What the generator needs to know about the device. */
export interface DeviceFacts {
  /** Capacity in 512-byte sectors. */
  readonly capacity: bigint;
  /** Logical block size in bytes (512 when not offered). */
  readonly blockSize: number;
  /** seg_max, when offered. */
  readonly segMax: number | undefined;
  /** size_max, when offered (and not 0). */
  readonly sizeMax: number | undefined;
  /** VIRTIO_BLK_F_RO. */
  readonly readOnly: boolean;
  /** FLUSH negotiated. */
  readonly flush: boolean;
  /** DISCARD negotiated, with its limits. */
  readonly discard: RangeLimits | undefined;
  /** WRITE_ZEROES negotiated, with its limits. */
  readonly writeZeroes: RangeLimits | undefined;
  /** VIRTIO_F_INDIRECT_DESC negotiated. */
  readonly indirect: boolean;
  /** The ring format. */
  readonly format: VirtqueueFormat;
  /** Entries of the queue. */
  readonly queueSize: number;
}

/** Size of the request header (type, reserved, sector). */
export const HEADER_SIZE = 16;
/** Size of one discard / write-zeroes segment. */
export const SEGMENT_SIZE = 16;
/** Length of GET_ID's data. */
export const ID_BYTES = 20;

/**
 * The device-writable bytes of a chain as planned (the most the used length
 * may say).
 *
 * @param r the request
 * @returns bytes
 */
export function writableBytes(r: FuzzRequest): number {
  let n = 0;
  for (const b of r.chain.buffers) if (b.write) n += bufferLength(b);
  return n;
}

/**
 * A buffer's length.
 *
 * @param b the buffer
 * @returns bytes
 */
export function bufferLength(b: PlannedBuffer): number {
  return b.extra ?? b.to - b.from;
}

/**
 * The request's stream length (header, data, status).
 *
 * @param r the request
 * @returns bytes
 */
export function streamLength(r: FuzzRequest): number {
  return r.readable.byteLength + r.writableLen + (r.hasStatus ? 1 : 0);
}
