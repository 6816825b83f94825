/**
 * The memory the fuzzer shares with the back-end, and the guard checks over
 * it. One region holds the ring; two more hold every buffer of a case
 * (headers, data, status bytes, indirect tables), each placed with a gap of
 * guard bytes around it. Every byte no buffer uses holds a known pattern
 * (the canary); after each case the fuzzer checks every byte of every
 * region: canaries unchanged, device-readable buffers unchanged, the parts
 * of the ring the device must not write unchanged. Then it puts the pattern
 * back where buffers were.
 *
 * Addresses are guest addresses as the back-end's memory table has them
 * (for vhost-user, this process's own addresses). An address "outside the
 * memory table" is one no region covers.
 *
 * @module
 */

import type { SharedRegion } from "../../memory/region.ts";
import type { Transport } from "../../transport/transport.ts";
import { type VirtqueueFormat, VirtqueueLayout } from "../../virtqueue/layout.ts";
import type { Placement } from "./case.ts";
import type { FuzzRng } from "./rng.ts";

/** Data regions. */
export const DATA_REGIONS = 2;
/** Bytes per data region. */
export const DATA_REGION_SIZE = 3 << 20;
/** The tail of each data region kept free for buffers that cross the region's end. */
export const CROSSING_RESERVE = 64 << 10;
/** What device-writable bytes hold before the device writes them (not a valid status). */
export const POISON = 0xa5;

const canaries = new Map<string, Uint8Array>();

/**
 * The canary pattern of region `region` (`size` bytes): a pattern, not a
 * constant, so that misplaced copies show. Computed once per region and size.
 */
function canary(region: number, size: number): Uint8Array {
  const key = `${region}:${size}`;
  let c = canaries.get(key);
  if (!c) {
    c = new Uint8Array(size);
    const w = new Uint32Array(c.buffer, 0, size >>> 2);
    let x = 0x9e3779b9 ^ Math.imul(region + 1, 0x85ebca6b);
    for (let i = 0; i < w.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      w[i] = x;
    }
    canaries.set(key, c);
  }
  return c;
}

/** A buffer placed for the device. */
export interface PlacedBuffer {
  /** The address the descriptor carries. */
  readonly gpa: bigint;
  /** The descriptor's length. */
  readonly len: number;
  /** Device-writable. */
  readonly write: boolean;
  /** Region (0 the ring, 1… data) it starts in, or -1 outside every region. */
  readonly region: number;
  /** Offset in that region. */
  readonly offset: number;
  /** Bytes of it inside the region (fewer than `len` for one that crosses the region's end). */
  readonly inside: number;
  /** Where it is, for reports: `data1+0x1f40`, `hole 0x1000`, `data2+0x2ff800 (crosses the end)`. */
  readonly label: string;
  /** Whose it is, for reports. */
  readonly owner: string;
}

/** A place the device must not have written, and what was there. */
export interface MemoryDamage {
  /** `canary` (guard bytes, unused memory) or `readable` (a device-readable buffer or ring part). */
  readonly what: "canary" | "readable";
  /** Where, for reports: region and offset. */
  readonly where: string;
  /** Bytes that differ. */
  readonly bytes: number;
  /** A description: whose buffer, how far from it. */
  readonly detail: string;
  /** The request whose buffer it is, or is nearest to, when there is one. */
  readonly request?: number;
}

/** A range of the ring region the device must not write, with what it must hold. */
export interface RingGuard {
  /** Offset in the ring region. */
  readonly offset: number;
  /** The bytes it must hold. */
  readonly expected: Uint8Array;
  /** What it is, for reports. */
  readonly name: string;
}

/** A range of the ring region the device may write. */
export interface RingWritable {
  /** Offset in the ring region. */
  readonly offset: number;
  /** Length. */
  readonly len: number;
}

interface Span {
  offset: number;
  len: number;
  expected?: Uint8Array;
  owner: string;
  name: string;
}

/** The request an owner names (`request 3's buffer 2`, `request 3, table 1`). */
function requestOf(s: Span | undefined): number | undefined {
  const m = s ? /^request (\d+)/.exec(s.owner) : null;
  return m ? Number(m[1]) : undefined;
}

function hex(n: number | bigint): string {
  return `0x${n.toString(16)}`;
}

/**
 * The regions of one connection, with the allocator of a case's buffers
 * and the checks after it.
 */
export class FuzzMemory {
  /** Where the rings are. */
  readonly layout: VirtqueueLayout;
  /** Region 0 is the ring; 1… the data regions. */
  readonly regions: readonly SharedRegion[];
  readonly #ref: Uint8Array[];
  #spans: Span[][];
  #cursor: number[];
  #crossing: number[];

  private constructor(layout: VirtqueueLayout, regions: SharedRegion[]) {
    this.layout = layout;
    this.regions = regions;
    this.#ref = regions.map((r, i) => canary(i, r.size));
    regions.forEach((r, i) => r.bytes.set(this.#ref[i]));
    this.#spans = regions.map(() => []);
    this.#cursor = regions.map(() => 0);
    this.#crossing = regions.map(() => 0);
  }

  /**
   * Creates the regions and shares them with the device (the ring region
   * first).
   *
   * @param transport the connection
   * @param format the ring format
   * @param queueSize the ring's entries
   * @returns the memory, shared
   */
  static async create(transport: Transport, format: VirtqueueFormat, queueSize: number): Promise<FuzzMemory> {
    const layout = new VirtqueueLayout(1, queueSize, { format, reqSize: 0 });
    const regions: SharedRegion[] = [];
    try {
      regions.push(transport.createRegion(layout.totalSize + 4096, "virtio-fuzz-ring"));
      for (let i = 0; i < DATA_REGIONS; i++) {
        regions.push(transport.createRegion(DATA_REGION_SIZE, `virtio-fuzz-data${i + 1}`));
      }
      const mem = new FuzzMemory(layout, regions);
      await mem.share(transport);
      return mem;
    } catch (e) {
      for (const r of regions) r.close();
      throw e;
    }
  }

  /**
   * Shares the regions with a connection (again, after the last one closed
   * with nothing in flight: nothing of the old one can write here any more).
   *
   * @param transport the connection
   */
  async share(transport: Transport): Promise<void> {
    for (const r of this.regions) await transport.mapMemRegion(r);
  }

  /** Whether this memory can be shared with another ring of this format and size. */
  fits(format: VirtqueueFormat, queueSize: number): boolean {
    return this.layout.format === format && this.layout.queueSize === queueSize && !this.regions[0].closed;
  }

  /** The ring region's guest address. */
  get ringGpa(): number {
    return this.regions[0].iova;
  }

  /** A name for region `i`. */
  regionName(i: number): string {
    return i === 0 ? "ring" : `data${i}`;
  }

  /**
   * Starts a case: puts the canaries back where the last case's buffers
   * were, and forgets them.
   *
   * @param rng the case's placement generator
   */
  beginCase(rng: FuzzRng): void {
    this.regions.forEach((r, i) => {
      for (const s of this.#spans[i]) r.bytes.set(this.#ref[i].subarray(s.offset, s.offset + s.len), s.offset);
    });
    this.#spans = this.regions.map(() => []);
    this.#cursor = this.regions.map((_, i) => (i === 0 ? 0 : rng.int(0, 64) * 64));
    this.#crossing = this.regions.map(() => 0);
  }

  /**
   * Places a buffer: in a data region with guard bytes before it (and the
   * next one's after it), or outside every region, or across a region's end.
   *
   * @param rng the case's placement generator
   * @param len its length
   * @param write device-writable (filled with {@linkcode POISON}) or not (filled with `contents`)
   * @param contents what a device-readable buffer holds
   * @param where in a region, in a hole, or crossing a region's end
   * @param owner whose it is, for reports
   * @param unaligned at an address that is not 64-byte aligned (otherwise aligned to 64, 512 or 4096)
   * @returns the placed buffer
   */
  place(
    rng: FuzzRng,
    len: number,
    write: boolean,
    contents: Uint8Array | undefined,
    where: Placement,
    owner: string,
    unaligned = false,
  ): PlacedBuffer {
    if (where === "hole" || (where === "crossing" && len < 2)) {
      const gpa = this.hole(rng, len);
      return { gpa, len, write, region: -1, offset: 0, inside: 0, label: `hole ${hex(gpa)} (no region)`, owner };
    }
    // A random region, or (half of the time, and always for large buffers) the emptier one.
    let emptier = 1;
    for (let i = 2; i <= DATA_REGIONS; i++) if (this.#cursor[i] < this.#cursor[emptier]) emptier = i;
    const first = len >= 65536 || rng.chance(0.5) ? emptier : rng.int(1, DATA_REGIONS);
    for (let k = 0; k < DATA_REGIONS; k++) {
      const ri = 1 + ((first - 1 + k) % DATA_REGIONS);
      const r = this.regions[ri];
      if (where === "crossing") {
        const limit = Math.min(len - 1, CROSSING_RESERVE - 64);
        if (limit < 1 || this.#crossing[ri] > 0) continue;
        const inside = rng.int(1, limit);
        // The part past the end must be in no region (regions can be neighbours in the address space).
        const past = BigInt(r.iova + r.size);
        if (this.#covered(past, len - inside)) continue;
        const offset = r.size - inside;
        this.#crossing[ri] = inside;
        this.#fill(ri, offset, inside, write, contents, owner, "crossing");
        return {
          gpa: BigInt(r.iova + offset),
          len,
          write,
          region: ri,
          offset,
          inside,
          label: `${this.regionName(ri)}+${hex(offset)} (${len - inside} bytes past the region's end)`,
          owner,
        };
      }
      const gap = rng.pick([16, 16, 32, 64, 100, 256, 512, 1024]);
      // Alignment as drivers align buffers of that size (small ones need not waste a page).
      const a = unaligned ? 64 : rng.pick(len >= 4096 ? [512, 4096] : len >= 512 ? [64, 512] : [16, 64]);
      let offset = Math.ceil((this.#cursor[ri] + gap) / a) * a;
      if (unaligned) offset += rng.int(1, 63);
      if (offset + len + 16 > r.size - CROSSING_RESERVE) continue;
      this.#cursor[ri] = offset + len;
      this.#fill(ri, offset, len, write, contents, owner, "buffer");
      return {
        gpa: BigInt(r.iova + offset),
        len,
        write,
        region: ri,
        offset,
        inside: len,
        label: `${this.regionName(ri)}+${hex(offset)}`,
        owner,
      };
    }
    if (where === "crossing") return this.place(rng, len, write, contents, "hole", owner);
    throw new RangeError(`no room for a buffer of ${len} bytes in this case's memory`);
  }

  /** Whether any region covers a byte of [gpa, gpa + len). */
  #covered(gpa: bigint, len: number): boolean {
    return this.regions.some((r) => gpa < BigInt(r.iova + r.size) && BigInt(r.iova) < gpa + BigInt(Math.max(1, len)));
  }

  #fill(
    ri: number,
    offset: number,
    len: number,
    write: boolean,
    contents: Uint8Array | undefined,
    owner: string,
    name: string,
  ) {
    const bytes = this.regions[ri].bytes;
    let expected: Uint8Array | undefined;
    if (write) {
      bytes.fill(POISON, offset, offset + len);
    } else {
      expected = (contents ?? new Uint8Array(len)).subarray(0, len);
      bytes.set(expected, offset);
    }
    this.#spans[ri].push({ offset, len, expected, owner, name });
  }

  /**
   * A guest address no region covers, with room for `len` bytes after it
   * (low memory, just past a region, the top of the address space…).
   *
   * @param rng the case's placement generator
   * @param len the buffer's length
   * @returns the address
   */
  hole(rng: FuzzRng, len: number): bigint {
    const covered = (a: bigint) => this.#covered(a, len);
    const last = this.regions.reduce((m, r) => Math.max(m, r.iova + r.size), 0);
    const candidates: bigint[] = [
      0n,
      0x1000n * BigInt(rng.int(1, 255)),
      BigInt(last) + 0x1000n * BigInt(rng.int(1, 16)),
      BigInt(this.regions[rng.int(1, DATA_REGIONS)].iova) - 0x10000n,
      (1n << 47n) - 0x1000n * BigInt(rng.int(1, 16)),
      (1n << 64n) - 0x1000n,
      1n << 63n,
    ];
    for (let i = 0; i < 16; i++) {
      const a = rng.pick(candidates);
      if (a >= 0n && !covered(a)) return a;
    }
    return (1n << 64n) - 0x1000n;
  }

  /**
   * The bytes of a placed buffer that lie in shared memory (a copy).
   *
   * @param b the buffer
   * @returns its bytes (fewer than its length when it crosses a region's end; none in a hole)
   */
  read(b: PlacedBuffer): Uint8Array {
    if (b.region < 0) return new Uint8Array(0);
    return this.regions[b.region].bytes.slice(b.offset, b.offset + b.inside);
  }

  /**
   * Checks every byte of every region: canaries where no buffer is,
   * device-readable buffers as they were placed, and the ring's parts the
   * device must not write. It changes nothing, so it can look again later
   * (after the connection closed, for late writes); the next
   * {@linkcode FuzzMemory.beginCase} restores the canaries.
   *
   * @param ringGuards ring parts the device must not write, with their contents
   * @param ringWritable ring parts the device may write
   * @returns the damage found
   */
  check(ringGuards: readonly RingGuard[], ringWritable: readonly RingWritable[]): MemoryDamage[] {
    const damage: MemoryDamage[] = [];
    for (let ri = 0; ri < this.regions.length; ri++) {
      const bytes = this.regions[ri].bytes, ref = this.#ref[ri];
      const spans: Span[] = ri === 0
        ? [
          ...ringGuards.map((g) => ({
            offset: g.offset,
            len: g.expected.byteLength,
            expected: g.expected,
            owner: "the ring",
            name: g.name,
          })),
          ...ringWritable.map((w) => ({ offset: w.offset, len: w.len, owner: "the ring", name: "device area" })),
        ]
        : this.#spans[ri];
      const sorted = spans.slice().sort((a, b) => a.offset - b.offset);
      let at = 0;
      for (const s of sorted) {
        if (s.offset > at) this.#compare(ri, bytes, ref, at, s.offset, sorted, damage);
        if (s.expected) {
          const n = differing(bytes, s.offset, s.expected);
          if (n > 0) {
            damage.push({
              what: "readable",
              where: `${this.regionName(ri)}+${hex(s.offset)}`,
              bytes: n,
              detail: `${n} byte${
                n === 1 ? "" : "s"
              } of ${s.owner}'s device-readable ${s.name} (${s.len} bytes) changed`,
              request: requestOf(s),
            });
          }
        }
        at = Math.max(at, s.offset + s.len);
      }
      if (at < bytes.byteLength) this.#compare(ri, bytes, ref, at, bytes.byteLength, sorted, damage);
    }
    return damage;
  }

  /** Compares [from, to) with the canary; records a damage per run of changed bytes (at most 4 per region). */
  #compare(
    ri: number,
    bytes: Uint8Array,
    ref: Uint8Array,
    from: number,
    to: number,
    spans: readonly Span[],
    damage: MemoryDamage[],
  ): void {
    let i = firstDifference(bytes, ref, from, to);
    let reported = 0;
    while (i >= 0 && reported < 4) {
      let j = i;
      while (j < to && bytes[j] !== ref[j]) j++;
      damage.push({
        what: "canary",
        where: `${this.regionName(ri)}+${hex(i)}`,
        bytes: j - i,
        ...this.#near(ri, i, j - i, spans),
      });
      reported++;
      i = j < to ? firstDifference(bytes, ref, j, to) : -1;
    }
  }

  /** Describes where damage at [at, at + n) is, relative to the nearest buffer (and names that buffer's request). */
  #near(ri: number, at: number, n: number, spans: readonly Span[]): { detail: string; request?: number } {
    const what = `${n} byte${n === 1 ? "" : "s"} written outside every buffer`;
    let before: Span | undefined, after: Span | undefined;
    for (const s of spans) {
      if (s.offset + s.len <= at && (!before || s.offset + s.len > before.offset + before.len)) before = s;
      if (s.offset >= at + n && (!after || s.offset < after.offset)) after = s;
    }
    const parts: string[] = [];
    const gapBefore = before ? at - (before.offset + before.len) : Infinity;
    const gapAfter = after ? after.offset - (at + n) : Infinity;
    if (before) parts.push(`${gapBefore} bytes after the end of ${before.owner}'s ${before.name}`);
    if (after) parts.push(`${gapAfter} bytes before ${after.owner}'s ${after.name}`);
    const request = requestOf(gapBefore <= gapAfter ? before : after);
    if (ri === 0) return { detail: `${what}: in the ring region${parts.length ? ` (${parts.join("; ")})` : ""}` };
    return {
      detail: `${what}${parts.length ? `: ${parts.join("; ")}` : " (in memory no buffer of this case used)"}`,
      request,
    };
  }

  /** Stops sharing nothing (the connection is gone or closing) and frees the regions. */
  close(): void {
    for (const r of this.regions) r.close();
  }
}

/** The first offset in [from, to) where `a` and `b` differ, or -1 (words where both are aligned). */
function firstDifference(a: Uint8Array, b: Uint8Array, from: number, to: number): number {
  let i = from;
  while (i < to && (i & 3) !== 0) {
    if (a[i] !== b[i]) return i;
    i++;
  }
  const wordsEnd = to & ~3;
  if (i < wordsEnd && a.byteOffset % 4 === 0 && b.byteOffset % 4 === 0) {
    const wa = new Int32Array(a.buffer, a.byteOffset + i, (wordsEnd - i) >> 2);
    const wb = new Int32Array(b.buffer, b.byteOffset + i, (wordsEnd - i) >> 2);
    const n = wa.length;
    for (let k = 0; k < n; k++) {
      if (wa[k] !== wb[k]) {
        for (let j = i + 4 * k; j < i + 4 * k + 4; j++) if (a[j] !== b[j]) return j;
      }
    }
    i = wordsEnd;
  }
  for (; i < to; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/** How many bytes at `offset` of `bytes` differ from `expected`. */
function differing(bytes: Uint8Array, offset: number, expected: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < expected.byteLength; i++) if (bytes[offset + i] !== expected[i]) n++;
  return n;
}
