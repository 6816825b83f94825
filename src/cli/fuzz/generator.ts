/**
 * The generator of fuzz cases: from a seed, a case number and what the
 * device offers, one self-contained case. A legal case has a theme — none,
 * one or two of the legal but uncommon layouts (a header split over several
 * descriptors, the status byte sharing a descriptor with data, data in many
 * or odd-sized pieces, zero-length descriptors, indirect tables after
 * direct descriptors or linked out of order, unaligned buffers, the largest
 * request seg_max and size_max allow) — that its requests use, so that a
 * finding names the layout that caused it. Its requests are of every type
 * (unknown ones too), in batches of one to the queue's size, with flushes
 * among busy batches and sectors biased to the edges of the disk. An
 * illegal case has one illegal request, with legal companions.
 *
 * A case that checks data writes (or, without `destructive`, reads) a range
 * in one phase and reads it back in another layout in a later phase; it
 * never relies on what an earlier case left on the disk.
 *
 * @module
 */

import {
  SECTOR_SIZE,
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
} from "../../blk/spec.ts";
import {
  type ChainMutation,
  type ChainPlan,
  type DeviceFacts,
  type Expectation,
  type FuzzCase,
  type FuzzRequest,
  HEADER_SIZE,
  ID_BYTES,
  type IllegalKind,
  type LayoutFeature,
  type PlannedBuffer,
  type RangeLimits,
  type RequestOp,
  SEGMENT_SIZE,
  streamLength,
} from "./case.ts";
import { fillSectors, FuzzRng } from "./rng.ts";

/** Options of {@linkcode generateCase}. */
export interface GeneratorOptions {
  /** Writes (and discards, write-zeroes) may reach the device; otherwise writes become reads of the same shape. */
  readonly destructive: boolean;
}

/** The most data one request carries (the largest request is capped here). */
export const REQUEST_BYTES = 1 << 20;
/** The most bytes (all streams) one case uses. */
export const CASE_BYTES = (9 << 20) / 4;

/**
 * Request types no device offers here (virtio 1.2 §5.2.6): legacy SCSI
 * commands, GET_LIFETIME and SECURE_ERASE (features never negotiated), the
 * zoned commands (VIRTIO_BLK_F_ZONED never negotiated: the spec requires
 * UNSUPP), and numbers no spec gives a meaning.
 */
export const UNKNOWN_TYPES: readonly number[] = [
  2,
  3,
  6,
  7,
  9,
  10,
  12,
  14,
  15,
  16,
  18,
  20,
  22,
  24,
  26,
  99,
  0x7fff_ffff,
];

const ANY = [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP];

/** Weights of the layout features a case may take as its theme. */
const THEME_WEIGHTS: Readonly<Record<LayoutFeature, number>> = {
  "header-split": 10,
  "header-with-data": 6,
  "status-with-data": 8,
  "many-segments": 8,
  "byte-segments": 8,
  "zero-length": 6,
  "indirect": 12,
  "indirect-after-direct": 5,
  "indirect-shuffled": 5,
  "indirect-write-flag": 4,
  "unaligned-buffers": 8,
  "largest": 4,
  "flush-with-data": 3,
};

const INDIRECT_FEATURES: readonly LayoutFeature[] = [
  "indirect",
  "indirect-after-direct",
  "indirect-shuffled",
  "indirect-write-flag",
];

function legalExpect(allowed: readonly number[]): Expectation {
  return { mustComplete: true, allowed, statusKnown: true, lengthKnown: true };
}

/** The illegal kinds that only make sense for one ring format or feature set. */
function applicable(kind: IllegalKind, f: DeviceFacts, o: GeneratorOptions): boolean {
  switch (kind) {
    case "loop":
    case "next-out-of-range":
      return f.format === "split";
    case "indirect-not-negotiated":
      return !f.indirect;
    case "nested-indirect":
    case "chain-too-long":
    case "indirect-bad-length":
    case "indirect-with-next":
      return f.indirect;
    case "segment-flags":
    case "segment-length":
      return o.destructive && (f.discard !== undefined || f.writeZeroes !== undefined);
    default:
      return true;
  }
}

/** All illegal kinds, in a fixed order (the generator's draw depends on it). */
const ILLEGAL_ORDER: readonly IllegalKind[] = [
  "header-writable",
  "readable-after-writable",
  "no-status",
  "data-not-512",
  "past-capacity",
  "loop",
  "next-out-of-range",
  "address-outside",
  "indirect-not-negotiated",
  "nested-indirect",
  "chain-too-long",
  "type-flags",
  "indirect-with-next",
  "indirect-bad-length",
  "get-id-length",
  "flush-sector",
  "segment-flags",
  "segment-length",
];

interface Range {
  sector: bigint;
  sectors: number;
}

function overlaps(a: Range, b: Range): boolean {
  return a.sector < b.sector + BigInt(b.sectors) && b.sector < a.sector + BigInt(a.sectors);
}

/** What a request needs before it becomes one: everything but its number and phase. */
type Draft = Omit<FuzzRequest, "n" | "phase">;

/** A draft without the features it used (filled in by {@linkcode CaseBuilder.draft}). */
type Body = Omit<Draft, "features">;

const writes = (x: Draft) =>
  x.effect === "write" || x.effect === "zeroes" || x.effect === "discard" || x.effect === "unknown-writes";

/** Builds one case. */
class CaseBuilder {
  readonly rng: FuzzRng;
  readonly f: DeviceFacts;
  readonly o: GeneratorOptions;
  readonly seed: number;
  readonly index: number;
  readonly notes = new Set<string>();
  /** Sectors per logical block. */
  readonly bs: bigint;
  /** The last block-aligned sector end. */
  readonly end: bigint;
  /** The case's theme. */
  theme = new Set<LayoutFeature>();
  /** Theme features no request used yet (the next request that can, does). */
  unused = new Set<LayoutFeature>();
  /** Features the request being drafted uses. */
  cur = new Set<LayoutFeature>();
  bytes = 0;
  drafts: Draft[][] = [];
  touched: Range[] = [];
  requestCount = 0;

  constructor(seed: number, index: number, f: DeviceFacts, o: GeneratorOptions) {
    this.rng = FuzzRng.forCase(seed, index);
    this.f = f;
    this.o = o;
    this.seed = seed;
    this.index = index;
    this.bs = BigInt(Math.max(1, f.blockSize / SECTOR_SIZE));
    this.end = (f.capacity / this.bs) * this.bs;
  }

  /** Whether the request being drafted uses theme feature `f` (the first request that can always does). */
  wants(f: LayoutFeature): boolean {
    if (!this.theme.has(f)) return false;
    return this.unused.has(f) || this.rng.chance(0.6);
  }

  /** Records that the request being drafted uses `f`. */
  uses(f: LayoutFeature): void {
    this.cur.add(f);
    this.unused.delete(f);
  }

  /** Drafts one request: `make` runs with a fresh record of features, which the draft then carries. */
  draft(make: () => Body): Draft {
    const saved = this.cur;
    this.cur = new Set();
    try {
      const body = make();
      return { ...body, features: [...this.cur].sort() };
    } finally {
      this.cur = saved;
    }
  }

  // ------------------------------------------------------------ sizes, sectors

  /** The most data segments a request may have. */
  get maxDataSegments(): number {
    return Math.max(1, Math.min(this.f.segMax ?? this.f.queueSize - 2, this.f.queueSize - 2));
  }

  /** The largest legal read or write, in bytes (a multiple of the block size). */
  get largest(): number {
    const bsBytes = Number(this.bs) * SECTOR_SIZE;
    let max = REQUEST_BYTES;
    if (this.f.sizeMax !== undefined) max = Math.min(max, this.f.sizeMax * this.maxDataSegments);
    max = Math.min(max, Number(this.end) * SECTOR_SIZE);
    return Math.max(bsBytes, Math.floor(max / bsBytes) * bsBytes);
  }

  /** A data size in sectors (a multiple of the block size). */
  dataSectors(): number {
    const bs = Number(this.bs);
    const maxBlocks = Math.max(1, this.largest / SECTOR_SIZE / bs);
    if (this.wants("largest")) {
      this.uses("largest");
      return maxBlocks * bs;
    }
    const kind = this.rng.weighted({ one: 30, few: 36, some: 26, big: 8 });
    let blocks: number;
    if (kind === "one") blocks = 1;
    else if (kind === "few") blocks = this.rng.int(2, 8);
    else if (kind === "some") blocks = this.rng.int(9, 64);
    else blocks = this.rng.int(65, Math.max(65, Math.min(maxBlocks, 512)));
    return Math.max(1, Math.min(blocks, maxBlocks)) * bs;
  }

  /** A start sector for `sectors` sectors inside the capacity, biased to 0 and to the end. */
  start(sectors: number): bigint {
    const n = BigInt(sectors);
    const lastStart = this.end - n;
    if (lastStart <= 0n) return 0n;
    const blocks = lastStart / this.bs;
    const where = this.rng.weighted({ zero: 15, near0: 10, atEnd: 22, nearEnd: 10, any: 43 });
    let block: bigint;
    switch (where) {
      case "zero":
        block = 0n;
        break;
      case "near0":
        block = BigInt(this.rng.int(1, 64));
        break;
      case "atEnd":
        block = blocks; // ends exactly at the capacity (the last block for a one-block request)
        break;
      case "nearEnd":
        block = blocks - BigInt(this.rng.int(1, 64));
        break;
      default:
        block = BigInt(this.rng.int(0, Number(blocks > 1n << 52n ? 1n << 52n : blocks)));
    }
    if (block < 0n) block = 0n;
    if (block > blocks) block = blocks;
    return block * this.bs;
  }

  describe(sector: bigint, sectors: number): string {
    const endS = sector + BigInt(sectors);
    const cap = this.f.capacity;
    const at = sector === 0n
      ? "0"
      : endS === cap
      ? `${sector} (capacity - ${sectors})`
      : sector >= cap
      ? `${sector} (capacity + ${sector - cap})`
      : `${sector}`;
    return `${sectors} sector${sectors === 1 ? "" : "s"} at ${at}`;
  }

  // ------------------------------------------------------------------- layouts

  /** Cuts `total` bytes into `count` pieces (each at most `max`), on sector boundaries when asked. */
  cut(total: number, count: number, max: number | undefined, aligned: boolean): number[] {
    count = Math.max(1, Math.min(count, total));
    if (max !== undefined) count = Math.max(count, Math.ceil(total / max));
    const unit = aligned && total % SECTOR_SIZE === 0 && total / SECTOR_SIZE >= count ? SECTOR_SIZE : 1;
    const units = total / unit;
    for (let attempt = 0; attempt < 8; attempt++) {
      const cuts = new Set<number>();
      while (cuts.size < count - 1) cuts.add(this.rng.int(1, units - 1));
      const points = [0, ...[...cuts].sort((a, b) => a - b), units];
      const pieces = points.slice(1).map((p, i) => (p - points[i]) * unit);
      if (max === undefined || pieces.every((p) => p <= max)) return pieces;
    }
    // Even pieces (within max), the remainder spread over the first ones.
    const base = Math.floor(units / count), rest = units % count;
    return Array.from({ length: count }, (_, i) => (base + (i < rest ? 1 : 0)) * unit);
  }

  /** Cuts data into segments: one or a few on sector boundaries, or as the theme says. */
  segments(bytes: number, maxCount: number, isData: boolean): number[] {
    const rng = this.rng;
    const cap = Math.max(1, Math.min(maxCount, bytes));
    let count: number;
    if (this.cur.has("largest")) count = cap;
    else if (isData && cap >= 9 && this.wants("many-segments")) {
      this.uses("many-segments");
      count = rng.chance(0.3) ? cap : rng.int(9, cap);
    } else count = rng.chance(0.55) ? 1 : Math.min(cap, rng.int(2, 8));
    let aligned = true;
    if (isData && bytes >= 2 && this.wants("byte-segments")) {
      this.uses("byte-segments");
      aligned = false;
      count = Math.max(count, Math.min(cap, 2));
    }
    const pieces = this.cut(bytes, count, this.f.sizeMax, aligned);
    if (!aligned && pieces.every((p) => p % SECTOR_SIZE === 0)) this.cur.delete("byte-segments");
    return pieces;
  }

  /**
   * Lays a stream out as buffers: the header, the readable data, the
   * writable data, the status byte; uncommon layouts as the theme says.
   */
  layout(
    readableData: number,
    writableData: number,
    hasStatus: boolean,
    maxSegs = this.maxDataSegments,
    dataKind: "data" | "other" = "data",
  ): PlannedBuffer[] {
    const rng = this.rng, sizeMax = this.f.sizeMax;
    const out: PlannedBuffer[] = [];
    const headerSplit = this.wants("header-split");
    if (headerSplit) this.uses("header-split");
    const headerCuts = headerSplit ? this.cut(HEADER_SIZE, rng.int(2, 4), undefined, false) : [HEADER_SIZE];
    let at = 0;
    for (const len of headerCuts) {
      out.push({ from: at, to: at + len, write: false });
      at += len;
    }
    let dataSegs = 0;
    if (readableData > 0) {
      const pieces = this.segments(readableData, maxSegs, dataKind === "data");
      dataSegs += pieces.length;
      const merge = !headerSplit && (sizeMax === undefined || pieces[0] + HEADER_SIZE <= sizeMax) &&
        this.wants("header-with-data");
      if (merge) this.uses("header-with-data");
      for (let i = 0; i < pieces.length; i++) {
        if (i === 0 && merge) out[out.length - 1] = { from: 0, to: at + pieces[0], write: false };
        else out.push({ from: at, to: at + pieces[i], write: false });
        at += pieces[i];
      }
    }
    if (writableData > 0) {
      const pieces = this.segments(writableData, Math.max(1, maxSegs - dataSegs), dataKind === "data");
      dataSegs += pieces.length;
      for (const len of pieces) {
        out.push({ from: at, to: at + len, write: true });
        at += len;
      }
    }
    if (hasStatus) {
      const last = out[out.length - 1];
      if (
        writableData > 0 && last.write && (sizeMax === undefined || last.to - last.from < sizeMax) &&
        this.wants("status-with-data")
      ) {
        this.uses("status-with-data");
        out[out.length - 1] = { from: last.from, to: at + 1, write: true };
      } else {
        out.push({ from: at, to: at + 1, write: true });
      }
    }
    if (out.length >= 2 && maxSegs - dataSegs >= 1 && this.wants("zero-length")) {
      this.uses("zero-length");
      const zeros = Math.min(rng.int(1, 2), maxSegs - dataSegs);
      for (let z = 0; z < zeros; z++) {
        const pos = rng.int(1, out.length - 1);
        const before = out[pos - 1], after = out[pos];
        const write = before.write === after.write ? before.write : rng.chance(0.5);
        out.splice(pos, 0, { from: before.to, to: before.to, write });
      }
    }
    if (this.wants("unaligned-buffers")) {
      this.uses("unaligned-buffers");
      return out.map((b) => ({ ...b, unaligned: true }));
    }
    return out;
  }

  /** Whether (and how) a legal chain uses an indirect table, as the theme says. */
  indirect(buffers: readonly PlannedBuffer[]): ChainPlan {
    const plan: ChainPlan = { buffers };
    if (!this.f.indirect) return plan;
    const split = this.f.format === "split";
    if (split && buffers.length >= 2 && this.wants("indirect-after-direct")) {
      this.uses("indirect-after-direct");
      return { ...plan, indirectFrom: this.rng.int(1, buffers.length - 1) };
    }
    if (split && buffers.length >= 3 && this.wants("indirect-shuffled")) {
      this.uses("indirect-shuffled");
      return { ...plan, indirectFrom: 0, shuffledTable: true };
    }
    if (this.wants("indirect-write-flag")) {
      this.uses("indirect-write-flag");
      return { ...plan, indirectFrom: 0, indirectWriteFlag: true };
    }
    if (this.wants("indirect")) {
      this.uses("indirect");
      return { ...plan, indirectFrom: 0 };
    }
    return plan;
  }

  /** Ring entries a chain takes (direct descriptors, plus one for a table). */
  ringEntries(chain: ChainPlan): number {
    if (chain.indirectFrom === undefined) return chain.buffers.length;
    return chain.indirectFrom + 1 + (chain.mutation?.kind === "indirect-with-next" ? 1 : 0);
  }

  // ---------------------------------------------------------------- requests

  header(type: number, sector: bigint, reserved = 0): Uint8Array {
    const h = new Uint8Array(HEADER_SIZE);
    const v = new DataView(h.buffer);
    v.setUint32(0, type >>> 0, true);
    v.setUint32(4, reserved, true);
    v.setBigUint64(8, BigInt.asUintN(64, sector), true);
    return h;
  }

  withData(header: Uint8Array, data: Uint8Array): Uint8Array {
    const out = new Uint8Array(header.byteLength + data.byteLength);
    out.set(header);
    out.set(data, header.byteLength);
    return out;
  }

  /** Pattern data a write of this case carries (different for every request and sector). */
  pattern(sector: bigint, bytes: number): Uint8Array {
    const data = new Uint8Array(Math.ceil(bytes / SECTOR_SIZE) * SECTOR_SIZE);
    fillSectors(data, this.seed, this.index, this.requestCount++, sector);
    return data.subarray(0, bytes);
  }

  read(range?: Range, asWrite = false): Body {
    const sectors = range?.sectors ?? this.dataSectors();
    const sector = range?.sector ?? this.start(sectors);
    const buffers = this.layout(0, sectors * SECTOR_SIZE, true);
    if (asWrite) this.notes.add("writes became reads of the same shape (no --destructive)");
    return {
      op: "read",
      type: VIRTIO_BLK_T_IN,
      sector,
      sectors,
      legal: true,
      what: `${asWrite ? "read (a write without --destructive)" : "read"} of ${this.describe(sector, sectors)}`,
      readable: this.header(VIRTIO_BLK_T_IN, sector),
      writableLen: sectors * SECTOR_SIZE,
      hasStatus: true,
      chain: this.indirect(buffers),
      expect: legalExpect([VIRTIO_BLK_S_OK]),
      effect: "read",
      ranges: [{ sector, sectors }],
    };
  }

  write(range?: Range): Body {
    if (!this.o.destructive) return this.read(range, true);
    const sectors = range?.sectors ?? this.dataSectors();
    const sector = range?.sector ?? this.start(sectors);
    const buffers = this.layout(sectors * SECTOR_SIZE, 0, true);
    const ro = this.f.readOnly;
    return {
      op: "write",
      type: VIRTIO_BLK_T_OUT,
      sector,
      sectors,
      legal: true,
      what: `write of ${this.describe(sector, sectors)}${ro ? " (read-only device: IOERR expected)" : ""}`,
      readable: this.withData(this.header(VIRTIO_BLK_T_OUT, sector), this.pattern(sector, sectors * SECTOR_SIZE)),
      writableLen: 0,
      hasStatus: true,
      chain: this.indirect(buffers),
      expect: legalExpect([ro ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK]),
      effect: ro ? "none" : "write",
      ranges: [{ sector, sectors }],
    };
  }

  flush(): Body {
    const withData = this.wants("flush-with-data");
    if (withData) this.uses("flush-with-data");
    const data = withData ? SECTOR_SIZE : 0;
    const buffers = this.layout(data, 0, true, this.maxDataSegments, "other");
    return {
      op: "flush",
      type: VIRTIO_BLK_T_FLUSH,
      sector: 0n,
      sectors: 0,
      legal: true,
      what: this.f.flush ? `flush${data ? " with a data buffer" : ""}` : "flush (not offered: UNSUPP expected)",
      readable: this.withData(this.header(VIRTIO_BLK_T_FLUSH, 0n), new Uint8Array(data).fill(0x5a)),
      writableLen: 0,
      hasStatus: true,
      chain: this.indirect(buffers),
      expect: legalExpect([this.f.flush ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_UNSUPP]),
      effect: "none",
      ranges: [],
    };
  }

  getId(): Body {
    const buffers = this.layout(0, ID_BYTES, true, 3, "other");
    return {
      op: "get-id",
      type: VIRTIO_BLK_T_GET_ID,
      sector: 0n,
      sectors: 0,
      legal: true,
      what: "get-id",
      readable: this.header(VIRTIO_BLK_T_GET_ID, 0n),
      writableLen: ID_BYTES,
      hasStatus: true,
      chain: this.indirect(buffers),
      // No feature says a device has an id string: UNSUPP is an answer.
      expect: legalExpect([VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP]),
      effect: "none",
      ranges: [],
    };
  }

  unknown(): Body {
    const type = this.rng.pick(UNKNOWN_TYPES);
    const shape = this.rng.weighted({ bare: 50, writable: 30, readable: this.o.destructive ? 20 : 0 });
    const readableData = shape === "readable" ? SECTOR_SIZE : 0, writableData = shape === "writable" ? SECTOR_SIZE : 0;
    const buffers = this.layout(readableData, writableData, true, this.maxDataSegments, "other");
    return {
      op: "unknown",
      type,
      sector: 0n,
      sectors: 0,
      legal: true,
      what: `type ${type} (unknown: UNSUPP expected)`,
      readable: this.withData(this.header(type, 0n), new Uint8Array(readableData).fill(0xa5)),
      writableLen: writableData,
      hasStatus: true,
      chain: this.indirect(buffers),
      expect: legalExpect([VIRTIO_BLK_S_UNSUPP]),
      // A device that took it for a write would have written somewhere.
      effect: readableData > 0 ? "unknown-writes" : "none",
      ranges: [],
    };
  }

  gcd(a: bigint, b: bigint): bigint {
    while (b) [a, b] = [b, a % b];
    return a;
  }

  /** Discard or write-zeroes segments within the limits, not overlapping, inside the capacity. */
  rangeSegments(limits: RangeLimits): Range[] {
    const max = limits.maxSegments > 0 ? limits.maxSegments : 1;
    const count = this.rng.chance(0.7) ? 1 : this.rng.int(1, Math.min(max, 8));
    const a = BigInt(Math.max(1, limits.alignment));
    const align = (a * this.bs) / this.gcd(a, this.bs);
    const maxSectors = Math.max(1, limits.maxSectors > 0 ? limits.maxSectors : 1 << 16);
    const out: Range[] = [];
    for (let tries = 0; out.length < count && tries < count * 8; tries++) {
      const units = Math.max(1, Math.floor(Math.min(maxSectors, 4096) / Number(align)));
      const sectors = Number(align) * this.rng.int(1, units);
      if (sectors > maxSectors || BigInt(sectors) > this.end) break;
      const start = (this.start(sectors) / align) * align;
      const r = { sector: start, sectors };
      if (r.sector + BigInt(sectors) > this.end || out.some((o) => overlaps(o, r))) continue;
      out.push(r);
    }
    return out;
  }

  segmentBytes(ranges: readonly Range[], flags: (i: number) => number): Uint8Array {
    const data = new Uint8Array(ranges.length * SEGMENT_SIZE);
    const v = new DataView(data.buffer);
    ranges.forEach((r, i) => {
      v.setBigUint64(i * SEGMENT_SIZE, BigInt.asUintN(64, r.sector), true);
      v.setUint32(i * SEGMENT_SIZE + 8, r.sectors >>> 0, true);
      v.setUint32(i * SEGMENT_SIZE + 12, flags(i) >>> 0, true);
    });
    return data;
  }

  /** A legal discard or write-zeroes (or, when not offered, one that must get UNSUPP). */
  rangeOp(op: "discard" | "write-zeroes"): Body | undefined {
    if (!this.o.destructive) return undefined;
    const limits = op === "discard" ? this.f.discard : this.f.writeZeroes;
    const type = op === "discard" ? VIRTIO_BLK_T_DISCARD : VIRTIO_BLK_T_WRITE_ZEROES;
    const ranges = this.rangeSegments(limits ?? { maxSectors: 1 << 16, maxSegments: 1, alignment: 1 });
    if (ranges.length === 0) return undefined;
    const unmap = op === "write-zeroes" && this.rng.chance(0.5);
    const data = this.segmentBytes(ranges, () => (unmap ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0));
    const buffers = this.layout(data.byteLength, 0, true, 4, "other");
    const ro = this.f.readOnly;
    const allowed = limits === undefined
      ? [VIRTIO_BLK_S_UNSUPP]
      : ro
      ? [VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP]
      : [VIRTIO_BLK_S_OK];
    const desc = ranges.map((r) => this.describe(r.sector, r.sectors)).join(", ");
    return {
      op,
      type,
      sector: 0n,
      sectors: 0,
      legal: true,
      what: `${op}${unmap ? " (unmap)" : ""} of ${desc}${
        limits === undefined ? " (not offered: UNSUPP expected)" : ""
      }`,
      readable: this.withData(this.header(type, 0n), data),
      writableLen: 0,
      hasStatus: true,
      chain: this.indirect(buffers),
      expect: legalExpect(allowed),
      effect: limits === undefined || ro ? "unknown-writes" : op === "discard" ? "discard" : "zeroes",
      ranges,
    };
  }

  /** One legal request of a random type. */
  legal(): Draft {
    return this.draft(() => {
      for (;;) {
        const op = this.rng.weighted<RequestOp>({
          read: 34,
          write: 26,
          flush: 10,
          "get-id": 6,
          discard: this.o.destructive ? 6 : 0,
          "write-zeroes": this.o.destructive ? 6 : 0,
          unknown: 5,
        });
        switch (op) {
          case "read":
            return this.read();
          case "write":
            return this.write();
          case "flush":
            return this.flush();
          case "get-id":
            return this.getId();
          case "unknown":
            return this.unknown();
          default: {
            const d = this.rangeOp(op);
            if (d) return d;
          }
        }
      }
    });
  }

  // ------------------------------------------------------------------ illegal

  /** A legal request made illegal, with what may come back. */
  refuse(d: Body, kind: IllegalKind, patch: Partial<Body>, expect?: Partial<Expectation>): Body {
    const next = { ...d, ...patch };
    return {
      ...next,
      legal: false,
      illegal: kind,
      what: `${next.what}: ${kind}`,
      expect: { mustComplete: false, allowed: ANY, statusKnown: true, lengthKnown: true, ...expect },
      effect: next.effect === "read" || next.effect === "none" ? "none" : "unknown-writes",
    };
  }

  /** A read (or, when destructive, sometimes a write) of `bytes` at `sector`, laid out plainly. */
  rw(write: boolean, sector: bigint, bytes: number): Body {
    const sectors = Math.ceil(bytes / SECTOR_SIZE);
    const type = write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
    const buffers = this.layout(write ? bytes : 0, write ? 0 : bytes, true);
    return {
      op: write ? "write" : "read",
      type,
      sector,
      sectors,
      legal: true,
      what: `${write ? "write" : "read"} of ${
        bytes % SECTOR_SIZE ? `${bytes} bytes at ${sector}` : this.describe(sector, sectors)
      }`,
      readable: write
        ? this.withData(this.header(type, sector), this.pattern(sector, bytes))
        : this.header(type, sector),
      writableLen: write ? 0 : bytes,
      hasStatus: true,
      chain: { buffers },
      expect: legalExpect([VIRTIO_BLK_S_OK]),
      effect: write ? "write" : "read",
      ranges: [{ sector, sectors }],
    };
  }

  illegal(kind: IllegalKind): Draft {
    return this.draft(() => this.illegalBody(kind));
  }

  illegalBody(kind: IllegalKind): Body {
    const rng = this.rng, f = this.f;
    const base = (): Body => {
      const d = this.o.destructive && rng.chance(0.35) ? this.write() : this.read();
      return { ...d, chain: { buffers: d.chain.buffers } }; // illegal requests start direct
    };
    switch (kind) {
      case "header-writable": {
        const d = base();
        const buffers = d.chain.buffers.map((
          b,
        ) => (b.from < HEADER_SIZE && b.extra === undefined ? { ...b, write: true } : b));
        return this.refuse(d, kind, { chain: { buffers } });
      }
      case "readable-after-writable": {
        const d = base();
        const buffers = d.chain.buffers.slice();
        const firstW = buffers.findIndex((b) => b.write);
        buffers.splice(firstW + 1, 0, { from: 0, to: 0, write: false, extra: rng.pick([1, 16, 512, 4096]) });
        return this.refuse(d, kind, { chain: { buffers } }, { statusKnown: false });
      }
      case "no-status": {
        const op = rng.weighted({ read: 50, flush: 25, write: this.o.destructive ? 25 : 0 });
        const d = op === "read" ? this.read() : op === "flush" ? this.flush() : this.write();
        const buffers = this.layout(d.readable.byteLength - HEADER_SIZE, d.writableLen, false);
        return this.refuse(d, kind, { hasStatus: false, chain: { buffers } }, { statusKnown: false });
      }
      case "data-not-512": {
        const write = this.o.destructive && rng.chance(0.4);
        const bytes = rng.chance(0.3)
          ? rng.int(1, 511)
          : rng.int(1, 64) * SECTOR_SIZE + rng.int(1, 511) * (rng.chance(0.5) ? 1 : -1);
        return this.refuse(this.rw(write, this.start(Math.ceil(bytes / SECTOR_SIZE)), bytes), kind, {});
      }
      case "past-capacity": {
        const write = this.o.destructive && rng.chance(0.4);
        const sectors = rng.chance(0.5) ? Number(this.bs) : Number(this.bs) * rng.int(2, 16);
        const cap = f.capacity;
        const candidates = [
          cap - BigInt(sectors) + this.bs, // crosses the end by one block
          cap,
          cap + BigInt(rng.int(1, 1 << 20)) * this.bs,
          1n << 32n,
          (1n << 55n) + this.bs * BigInt(rng.int(0, 7)), // ×512 wraps around 2^64
          1n << 63n,
          (1n << 64n) - this.bs, // sector + count wraps around 2^64
        ].filter((s) => s + BigInt(sectors) > cap);
        const sector = rng.pick(candidates);
        // The sectors do not exist: success would be made-up data or a write to nowhere.
        return this.refuse(this.rw(write, sector, sectors * SECTOR_SIZE), kind, {}, {
          allowed: [VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP],
        });
      }
      case "loop": {
        const d = base();
        const n = d.chain.buffers.length;
        const mutation: ChainMutation = { kind: "loop", to: rng.int(0, n - 1) };
        const indirectFrom = f.indirect && rng.chance(0.3) ? 0 : undefined;
        return this.refuse(d, kind, { chain: { buffers: d.chain.buffers, indirectFrom, mutation } }, {
          statusKnown: false,
          lengthKnown: false,
        });
      }
      case "next-out-of-range": {
        const d = base();
        const n = d.chain.buffers.length;
        const withTable = f.indirect && rng.chance(0.3);
        const limit = withTable ? n : f.queueSize;
        const next = Math.max(
          rng.pick([limit, limit + rng.int(1, 100), 0xffff, 0x8000 + rng.int(0, 0x7fff)]) & 0xffff,
          limit,
        );
        const mutation: ChainMutation = { kind: "next-out-of-range", at: rng.int(0, n - 1), next };
        return this.refuse(d, kind, {
          chain: { buffers: d.chain.buffers, indirectFrom: withTable ? 0 : undefined, mutation },
        }, { statusKnown: false, lengthKnown: false });
      }
      case "address-outside": {
        const d = base();
        const buffers = d.chain.buffers.slice();
        const candidates = buffers.map((b, i) => ({ b, i })).filter(({ b }) => b.to > b.from);
        const { i } = rng.pick(candidates);
        // Across a region's end: part of it in shared memory (needs 2 bytes at least).
        const crossing = buffers[i].to - buffers[i].from >= 2 && rng.chance(0.3);
        buffers[i] = { ...buffers[i], where: crossing ? "crossing" : "hole" };
        const statusKnown = buffers[i].to !== streamLength({ ...d, n: 0, phase: 0, features: [] });
        return this.refuse(d, kind, { chain: { buffers } }, { statusKnown, lengthKnown: false });
      }
      case "indirect-not-negotiated": {
        const d = base();
        const n = d.chain.buffers.length;
        const from = f.format === "split" && n >= 2 && rng.chance(0.3) ? rng.int(1, n - 1) : 0;
        return this.refuse(d, kind, { chain: { buffers: d.chain.buffers, indirectFrom: from } }, {
          statusKnown: false,
          lengthKnown: false,
        });
      }
      case "nested-indirect": {
        const d = this.read();
        const n = d.chain.buffers.length;
        const mutation: ChainMutation = { kind: "nested-indirect", at: n >= 2 ? rng.int(1, n - 1) : 0 };
        return this.refuse(d, kind, { chain: { buffers: d.chain.buffers, indirectFrom: 0, mutation } }, {
          statusKnown: false,
          lengthKnown: false,
        });
      }
      case "chain-too-long": {
        const count = f.queueSize + 1 + rng.int(0, 8);
        const sectors = count - 2;
        const sector = this.start(sectors);
        const buffers: PlannedBuffer[] = [{ from: 0, to: HEADER_SIZE, write: false }];
        for (let i = 0; i < sectors; i++) {
          buffers.push({ from: HEADER_SIZE + i * SECTOR_SIZE, to: HEADER_SIZE + (i + 1) * SECTOR_SIZE, write: true });
        }
        const st = HEADER_SIZE + sectors * SECTOR_SIZE;
        buffers.push({ from: st, to: st + 1, write: true });
        return this.refuse(this.rw(false, sector, sectors * SECTOR_SIZE), kind, {
          what: `read of ${this.describe(sector, sectors)} in ${count} descriptors`,
          chain: { buffers, indirectFrom: 0 },
        });
      }
      case "type-flags": {
        const write = this.o.destructive && rng.chance(0.3);
        const d = write ? this.write() : rng.pick([() => this.read(), () => this.flush(), () => this.getId()])();
        const flag = rng.chance(0.3) ? 0x8000_0000 : 1 << rng.int(8, 30);
        const type = (d.type | flag) >>> 0;
        const readable = d.readable.slice();
        new DataView(readable.buffer).setUint32(0, type, true);
        return this.refuse(d, kind, {
          type,
          readable,
          what: `${d.what}, type 0x${type.toString(16)}`,
          chain: { buffers: d.chain.buffers },
        });
      }
      case "indirect-with-next": {
        const d = this.read();
        const buffers = d.chain.buffers;
        const split = f.format === "split";
        // Packed rings: an indirect descriptor after direct ones in a list is illegal too (virtio 1.2 §2.8.19).
        const from = !split && buffers.length >= 2 && rng.chance(0.5) ? rng.int(1, buffers.length - 1) : 0;
        const mutation: ChainMutation | undefined = split || from === 0 ? { kind: "indirect-with-next" } : undefined;
        return this.refuse(d, kind, { chain: { buffers, indirectFrom: from, mutation } }, {
          statusKnown: false,
          lengthKnown: false,
        });
      }
      case "indirect-bad-length": {
        const d = this.read();
        const n = d.chain.buffers.length;
        const len = rng.chance(0.2) ? 0 : 16 * n - rng.int(1, 15);
        return this.refuse(d, kind, {
          chain: { buffers: d.chain.buffers, indirectFrom: 0, mutation: { kind: "indirect-bad-length", len } },
        }, { statusKnown: false, lengthKnown: false });
      }
      case "get-id-length": {
        const len = rng.chance(0.5) ? rng.int(1, ID_BYTES - 1) : rng.int(ID_BYTES + 1, 600);
        const buffers = this.layout(0, len, true, 3, "other");
        return this.refuse(this.getId(), kind, {
          what: `get-id with ${len} bytes`,
          writableLen: len,
          chain: { buffers },
        });
      }
      case "flush-sector": {
        const d = this.flush();
        const sector = rng.pick([1n, f.capacity - 1n, f.capacity, 1n << 63n]);
        const readable = d.readable.slice();
        new DataView(readable.buffer).setBigUint64(8, sector, true);
        return this.refuse(d, kind, {
          sector,
          readable,
          what: `flush with sector ${sector}`,
          chain: { buffers: d.chain.buffers },
        });
      }
      case "segment-flags": {
        const op = f.discard !== undefined && (f.writeZeroes === undefined || rng.chance(0.5))
          ? "discard"
          : "write-zeroes";
        const d = this.rangeOp(op);
        if (!d) return this.illegalBody("header-writable");
        const bad = op === "discard" && rng.chance(0.5)
          ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
          : (1 << rng.int(1, 31)) | (rng.chance(0.3) ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0);
        const victim = rng.int(0, d.ranges.length - 1);
        const data = this.segmentBytes(d.ranges, (i) => (i === victim ? bad : 0));
        const buffers = this.layout(data.byteLength, 0, true, 4, "other");
        // virtio 1.2 §5.2.6.2: the device MUST set the status byte to UNSUPP.
        return this.refuse(d, kind, {
          what: `${d.what}, segment ${victim} flags 0x${(bad >>> 0).toString(16)}`,
          readable: this.withData(d.readable.subarray(0, HEADER_SIZE), data),
          chain: { buffers },
        }, { allowed: [VIRTIO_BLK_S_UNSUPP] });
      }
      case "segment-length": {
        const op = f.discard !== undefined && (f.writeZeroes === undefined || rng.chance(0.5))
          ? "discard"
          : "write-zeroes";
        const d = this.rangeOp(op);
        if (!d) return this.illegalBody("header-writable");
        const limits = (op === "discard" ? f.discard : f.writeZeroes)!;
        const how = rng.weighted({ partial: 40, tooMany: 30, tooLong: 30 });
        let data = d.readable.subarray(HEADER_SIZE);
        let what = d.what;
        if (how === "partial") {
          const len = rng.pick([1, 8, 15, 17, 24, 31]);
          const sized = new Uint8Array(len);
          sized.set(data.subarray(0, Math.min(len, data.byteLength)));
          data = sized;
          what += `, ${len} bytes of segments`;
        } else if (how === "tooMany") {
          const count = Math.max(1, limits.maxSegments) + rng.int(1, 3);
          const ranges = Array.from(
            { length: count },
            (_, i) => ({ sector: BigInt(i) * this.bs, sectors: Number(this.bs) }),
          );
          data = this.segmentBytes(ranges, () => 0);
          what += `, ${count} segments (max ${limits.maxSegments})`;
        } else {
          const sectors = Math.min(
            (limits.maxSectors > 0 ? limits.maxSectors : 0xffff_fff0) + Number(this.bs),
            0xffff_ffff,
          );
          data = this.segmentBytes([{ sector: 0n, sectors }], () => 0);
          what += `, ${sectors} sectors in one segment (max ${limits.maxSectors})`;
        }
        const buffers = this.layout(data.byteLength, 0, true, 4, "other");
        return this.refuse(d, kind, {
          what,
          readable: this.withData(d.readable.subarray(0, HEADER_SIZE), data),
          chain: { buffers },
        });
      }
    }
  }

  // -------------------------------------------------------------------- phases

  /** Adds a draft to phase `p` if it fits the budgets and no write overlaps; returns whether it did. */
  add(p: number, d: Draft): boolean {
    const phase = (this.drafts[p] ??= []);
    const entries = phase.reduce((n, x) => n + this.ringEntries(x.chain), 0) + this.ringEntries(d.chain);
    const bytes = streamLength({ ...d, n: 0, phase: p }) + d.chain.buffers.reduce((n, b) => n + (b.extra ?? 0), 0);
    if (entries > this.f.queueSize || this.bytes + bytes > CASE_BYTES) return false;
    for (const x of phase) {
      if (!writes(x) && !writes(d)) continue;
      if (x.ranges.some((a) => d.ranges.some((b) => overlaps(a, b)))) return false;
      // A write whose sectors are not known (illegal, unknown type) must not share a batch with a read.
      if (
        (x.effect === "unknown-writes" && d.effect === "read") || (d.effect === "unknown-writes" && x.effect === "read")
      ) {
        return false;
      }
    }
    phase.push(d);
    this.bytes += bytes;
    if (d.effect === "read" || d.effect === "write" || d.effect === "zeroes") this.touched.push(...d.ranges);
    return true;
  }

  batchSize(): number {
    const k = this.rng.weighted({ one: 34, few: 34, some: 20, many: 9, full: 3 });
    if (k === "one") return 1;
    if (k === "few") return this.rng.int(2, 4);
    if (k === "some") return this.rng.int(5, 16);
    if (k === "many") return this.rng.int(17, 64);
    return this.f.queueSize; // as many as the ring (or the byte budget) takes
  }

  fillPhase(p: number, count: number, make: () => Draft): void {
    let misses = 0;
    for (let i = 0; i < count && misses < 6;) {
      if (this.add(p, make())) i++;
      else misses++;
    }
  }

  /** A sub-range of something an earlier phase touched, to read back in another layout. */
  readBackRange(): Range | undefined {
    if (this.touched.length === 0) return undefined;
    const t = this.rng.pick(this.touched);
    const bs = Number(this.bs);
    const blocks = Math.max(1, t.sectors / bs);
    const first = this.rng.chance(0.5) ? 0 : this.rng.int(0, blocks - 1);
    const last = this.rng.chance(0.5) ? blocks : this.rng.int(first + 1, blocks);
    const sectors = Math.min((last - first) * bs, this.largest / SECTOR_SIZE);
    return { sector: t.sector + BigInt(first * bs), sectors };
  }

  /** Picks the case's theme: none, one or two uncommon layouts (at most one indirect kind). */
  pickTheme(): void {
    const f = this.f;
    const weights: Partial<Record<LayoutFeature, number>> = {};
    for (const [k, w] of Object.entries(THEME_WEIGHTS) as [LayoutFeature, number][]) {
      if (INDIRECT_FEATURES.includes(k) && !f.indirect) continue;
      if ((k === "indirect-after-direct" || k === "indirect-shuffled") && f.format !== "split") continue;
      if (k === "many-segments" && this.maxDataSegments < 9) continue;
      weights[k] = w;
    }
    const count = this.rng.weighted({ none: 35, one: 45, two: 20 });
    const n = count === "none" ? 0 : count === "one" ? 1 : 2;
    for (let i = 0; i < n && Object.keys(weights).length > 0; i++) {
      const k = this.rng.weighted(weights);
      this.theme.add(k);
      delete weights[k];
      if (INDIRECT_FEATURES.includes(k)) { for (const x of INDIRECT_FEATURES) delete weights[x]; }
    }
    this.unused = new Set(this.theme);
  }

  build(): FuzzCase {
    const rng = this.rng;
    const illegalKinds = ILLEGAL_ORDER.filter((k) => applicable(k, this.f, this.o));
    const legal = rng.chance(0.72) || illegalKinds.length === 0;
    if (legal) {
      this.pickTheme();
      const phases = rng.weighted({ one: 45, two: 45, three: 10 });
      const count = phases === "one" ? 1 : phases === "two" ? 2 : 3;
      for (let p = 0; p < count; p++) {
        if (p > 0) {
          // Read back what the phases before touched, in new layouts.
          this.fillPhase(p, rng.int(1, 3), () => {
            const r = this.readBackRange();
            return r ? this.draft(() => this.read(r)) : this.legal();
          });
        }
        this.fillPhase(p, p === 0 ? this.batchSize() : rng.int(0, 4), () => this.legal());
        // A flush in a busy batch.
        if ((this.drafts[p]?.length ?? 0) >= 3 && rng.chance(0.4)) this.add(p, this.draft(() => this.flush()));
      }
    } else {
      const kind = rng.pick(illegalKinds);
      const companions = rng.weighted({ none: 40, one: 30, few: 30 }) === "none" ? 0 : rng.int(1, 3);
      const d = this.illegal(kind);
      this.drafts[0] = [];
      if (!this.add(0, d)) this.drafts[0] = [d]; // too big for the budgets (a very long chain): alone
      this.fillPhase(0, companions, () => {
        const c = this.legal();
        return c.effect === "unknown-writes" ? this.draft(() => this.read()) : c;
      });
    }
    const requests: FuzzRequest[] = [];
    const phases = this.drafts.filter((p) => p && p.length > 0);
    phases.forEach((phase, p) => {
      for (const d of rng.shuffle(phase)) requests.push({ ...d, n: requests.length, phase: p });
    });
    const features = [...new Set(requests.flatMap((r) => r.features))].sort();
    return {
      id: `${this.seed}:${this.index}`,
      seed: this.seed,
      index: this.index,
      legal: requests.every((r) => r.legal),
      requests,
      phases: phases.length,
      notes: [...this.notes],
      features,
    };
  }
}

/**
 * Generates case `index` of a run with seed `seed`: the same arguments (and
 * the same device) always give the same case.
 *
 * @example
 * ```ts ignore
 * import { generateCase } from "./generator.ts";
 * const c = generateCase(1, 0, facts, { destructive: false });
 * console.log(c.id, c.legal, c.features, c.requests.map((r) => r.what));
 * ```
 *
 * @param seed the run's seed
 * @param index the case's number
 * @param facts what the device offers
 * @param options destructive or not
 * @returns the case
 */
export function generateCase(seed: number, index: number, facts: DeviceFacts, options: GeneratorOptions): FuzzCase {
  return new CaseBuilder(seed, index, facts, options).build();
}
