/**
 * The fuzzer's own ring writer, split (virtio 1.2 §2.7) and packed (§2.8):
 * it writes whatever chain a case plans — descriptors in any order of the
 * table, indirect tables after direct descriptors or nested in each other,
 * loops, `next` out of range, lengths an indirect table cannot have — makes
 * a whole batch available at once, and reads the used ring back with every
 * id, length and index checked against what is in flight. It is not the
 * library's ring: that one cannot build what this one must.
 *
 * @module
 */

import {
  DESC_F_INDIRECT,
  DESC_F_NEXT,
  DESC_F_WRITE,
  PACKED_DESC_F_AVAIL,
  PACKED_DESC_F_USED,
  PACKED_EVENT_FLAG_ENABLE,
} from "../../virtqueue/defs.ts";
import { observe16, publish16 } from "../../virtqueue/barriers.ts";
import type { VirtqueueFormat } from "../../virtqueue/layout.ts";
import type { ChainPlan } from "./case.ts";
import type { FuzzMemory, PlacedBuffer, RingGuard, RingWritable } from "./memory.ts";
import type { FuzzRng } from "./rng.ts";

/** One descriptor as written, for the replay table. */
export interface DescRecord {
  /** Where it is: `ring[12]`, `table 1[3]`. */
  readonly place: string;
  /** Its address. */
  readonly gpa: bigint;
  /** Where that address is, for humans (`data1+0x2000`, `hole …`). */
  readonly label: string;
  /** Its length. */
  readonly len: number;
  /** Its flags word as written (packed rings: with AVAIL/USED). */
  readonly flags: number;
  /** Split: `next` as written (meaningful with NEXT); packed: the buffer id. */
  readonly next: number;
  /** What it holds: `header`, `data[0,4096)`, `status`, `table (5 entries)`… */
  readonly holds: string;
}

/** A chain made available to the device. */
export interface PostedChain {
  /** The request's number in its case. */
  readonly request: number;
  /** Split: the head's index; packed: the buffer id. */
  readonly id: number;
  /** Ring entries it takes (packed: how far the used position moves). */
  readonly entries: number;
  /** Every descriptor, direct ones first, then each table's. */
  readonly descs: readonly DescRecord[];
}

/** What a buffer of a chain is, for the writer: where it was placed, and what it holds. */
export interface ChainBuffer {
  /** The placed buffer. */
  readonly placed: PlacedBuffer;
  /** What it holds (for the table). */
  readonly holds: string;
}

/** Places an indirect table (device-readable) and says where it is. */
export type TablePlacer = (bytes: Uint8Array, owner: string) => PlacedBuffer;

/** A completion read from the used ring. */
export interface UsedElement {
  /** The chain it completes. */
  readonly chain: PostedChain;
  /** The length the device wrote there. */
  readonly len: number;
  /** Packed rings: VIRTQ_DESC_F_WRITE in the used descriptor (the length is meaningful only with it). */
  readonly lenValid: boolean;
  /** When it was seen (ms, performance.now()). */
  readonly at: number;
}

/** What one look at the used ring found. */
export interface Reaped {
  /** New completions of chains in flight. */
  readonly used: UsedElement[];
  /** Completion problems: ids not in flight, twice, index jumps. */
  readonly anomalies: string[];
}

/** The ring writer, either format. */
export interface RawRing {
  /** The format. */
  readonly format: VirtqueueFormat;
  /** Entries. */
  readonly size: number;
  /** Chains the device has and has not completed. */
  readonly inFlight: number;
  /** Whether the ring can no longer be trusted (a completion problem was seen): reconnect. */
  readonly broken: boolean;
  /** Starts a case: picks descriptor slots with the case's generator from now on. */
  beginCase(rng: FuzzRng): void;
  /** Writes a chain's descriptors (not yet visible to the device). */
  post(request: number, buffers: readonly ChainBuffer[], plan: ChainPlan, placeTable: TablePlacer): PostedChain;
  /** Makes every chain posted since the last call available at once. */
  publish(): void;
  /** Asks for an interrupt at the next completion (split with EVENT_IDX: used_event). */
  arm(): void;
  /** Reads the used ring. */
  reap(): Reaped;
  /** Ring parts the device must not write, with their contents. */
  guards(): RingGuard[];
  /** Ring parts the device may write. */
  writable(): RingWritable[];
  /** The descriptor table / ring, the driver area and the device area, as guest addresses. */
  addresses(): { desc: number; driver: number; device: number };
}

function flagNames(flags: number, packed: boolean): string {
  const out: string[] = [];
  if (flags & DESC_F_NEXT) out.push("NEXT");
  if (flags & DESC_F_WRITE) out.push("WRITE");
  if (flags & DESC_F_INDIRECT) out.push("INDIRECT");
  if (packed && flags & PACKED_DESC_F_AVAIL) out.push("AVAIL");
  if (packed && flags & PACKED_DESC_F_USED) out.push("USED");
  const known = DESC_F_NEXT | DESC_F_WRITE | DESC_F_INDIRECT | (packed ? PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED : 0);
  if (flags & ~known) out.push(`0x${(flags & ~known).toString(16)}`);
  return out.join("|") || "-";
}

/**
 * The names of a descriptor's flags, for reports.
 *
 * @param flags the flags word
 * @param packed whether it is a packed ring's
 * @returns e.g. `NEXT|WRITE`
 */
export function describeFlags(flags: number, packed: boolean): string {
  return flagNames(flags, packed);
}

/** Encodes one 16-byte descriptor (split: flags at 12, next at 14; packed: id at 12, flags at 14). */
function encodeDesc(v: DataView, at: number, addr: bigint, len: number, flags: number, next: number, split: boolean) {
  v.setBigUint64(at, BigInt.asUintN(64, addr), true);
  v.setUint32(at + 8, len >>> 0, true);
  v.setUint16(at + (split ? 12 : 14), flags & 0xffff, true);
  v.setUint16(at + (split ? 14 : 12), next & 0xffff, true);
}

/** An entry of a chain before it is written: its buffer (or table) and flags without NEXT. */
interface Entry {
  addr: bigint;
  len: number;
  flags: number;
  label: string;
  holds: string;
}

/**
 * The descriptors of a chain in the ring, in order: the direct buffers, then
 * (when the plan says so) the descriptor that points at the indirect table,
 * with the plan's mutations of it, and for `indirect-with-next` a stray
 * descriptor after it (the status byte again).
 *
 * @param request the request's number (for labels)
 * @param buffers the request's buffers, in chain order
 * @param plan the chain's layout
 * @param split whether the ring is split (tables use its `next` links)
 * @param rng the case's generator
 * @param placeTable where tables go
 * @param tableRecords collects the tables' descriptors
 * @returns the ring entries
 */
function chainEntries(
  request: number,
  buffers: readonly ChainBuffer[],
  plan: ChainPlan,
  split: boolean,
  rng: FuzzRng,
  placeTable: TablePlacer,
  tableRecords: DescRecord[],
): Entry[] {
  const m = plan.mutation;
  const direct = plan.indirectFrom ?? buffers.length;
  const entries: Entry[] = buffers.slice(0, direct).map((b) => ({
    addr: b.placed.gpa,
    len: b.placed.len,
    flags: b.placed.write ? DESC_F_WRITE : 0,
    label: b.placed.label,
    holds: b.holds,
  }));
  if (plan.indirectFrom === undefined) return entries;
  const t = buildTables(buffers, plan, plan.indirectFrom, split, rng, placeTable, `request ${request}`, tableRecords, {
    n: 1,
  });
  if (m?.kind === "indirect-bad-length") t.len = m.len;
  if (plan.indirectWriteFlag) t.flags |= DESC_F_WRITE;
  entries.push(t);
  if (m?.kind === "indirect-with-next") {
    const last = buffers[buffers.length - 1];
    entries.push({
      addr: last.placed.gpa,
      len: last.placed.len,
      flags: DESC_F_WRITE,
      label: last.placed.label,
      holds: `${last.holds} (again)`,
    });
  }
  return entries;
}

/** Builds the entries of an indirect table for `bufs` (and any nested table), places it, returns its entry. */
function buildTables(
  bufs: readonly ChainBuffer[],
  plan: ChainPlan,
  from: number,
  split: boolean,
  rng: FuzzRng,
  placeTable: TablePlacer,
  owner: string,
  records: DescRecord[],
  tableNo: { n: number },
): Entry {
  const mutation = plan.mutation;
  const entries: Entry[] = bufs.slice(from).map((b) => ({
    addr: b.placed.gpa,
    len: b.placed.len,
    flags: b.placed.write ? DESC_F_WRITE : 0,
    label: b.placed.label,
    holds: b.holds,
  }));
  // nested-indirect: entries from `at` on go into a second table, referred to from the first.
  if (mutation?.kind === "nested-indirect") {
    const at = Math.max(0, Math.min(entries.length - 1, mutation.at - from));
    const inner = buildTables(
      bufs,
      { buffers: plan.buffers },
      from + at,
      split,
      rng,
      placeTable,
      owner,
      records,
      tableNo,
    );
    entries.splice(at, entries.length - at, inner);
  }
  const n = entries.length;
  // Where each entry sits in the table: in order, or shuffled (split tables link by `next`).
  // The chain starts at entry 0 (virtio 1.2 §2.7.5.3.1); the rest may sit anywhere.
  const pos = plan.shuffledTable && split ? [0, ...rng.shuffle([...Array(n).keys()].slice(1))] : [...Array(n).keys()];
  const bytes = new Uint8Array(16 * n);
  const v = new DataView(bytes.buffer);
  const no = tableNo.n++;
  const nexts: number[] = new Array(n).fill(0);
  const flags: number[] = entries.map((e) => e.flags);
  if (split) {
    for (let i = 0; i < n - 1; i++) {
      flags[i] |= DESC_F_NEXT;
      nexts[i] = pos[i + 1];
    }
    if (mutation?.kind === "loop" && from === (plan.indirectFrom ?? -1)) {
      flags[n - 1] |= DESC_F_NEXT;
      nexts[n - 1] = pos[Math.max(0, Math.min(n - 1, mutation.to - from))];
    }
    if (mutation?.kind === "next-out-of-range" && from === (plan.indirectFrom ?? -1)) {
      const i = Math.max(0, Math.min(n - 1, mutation.at - from));
      flags[i] |= DESC_F_NEXT;
      nexts[i] = Math.max(mutation.next, n) & 0xffff;
    }
  }
  for (let i = 0; i < n; i++) encodeDesc(v, 16 * pos[i], entries[i].addr, entries[i].len, flags[i], nexts[i], split);
  const placed = placeTable(bytes, `${owner}, table ${no}`);
  // The entries in table order, for reading.
  const byPos: DescRecord[] = new Array(n);
  for (let i = 0; i < n; i++) {
    byPos[pos[i]] = {
      place: `table ${no}[${pos[i]}]`,
      gpa: entries[i].addr,
      label: entries[i].label,
      len: entries[i].len,
      flags: flags[i],
      next: nexts[i],
      holds: entries[i].holds,
    };
  }
  records.push(...byPos);
  return {
    addr: placed.gpa,
    len: 16 * n,
    flags: DESC_F_INDIRECT,
    label: placed.label,
    holds: `table ${no} (${n} entries)`,
  };
}

/** The split ring (virtio 1.2 §2.7). */
class SplitRing implements RawRing {
  readonly format = "split" as const;
  readonly size: number;
  readonly #mem: FuzzMemory;
  readonly #eventIdx: boolean;
  readonly #descOff: number;
  readonly #availOff: number;
  readonly #usedOff: number;
  readonly #desc: DataView;
  readonly #avail: Uint16Array;
  readonly #usedU16: Uint16Array;
  readonly #usedView: DataView;
  readonly #shadowDesc: Uint8Array;
  readonly #shadowDescView: DataView;
  readonly #shadowAvail: Uint16Array;
  #rng: FuzzRng | undefined;
  #availIdx = 0;
  #lastUsed = 0;
  #pending: number[] = [];
  readonly #inFlight = new Map<number, PostedChain>();
  readonly #completed = new Map<number, PostedChain>();
  #broken = false;

  constructor(mem: FuzzMemory, eventIdx: boolean) {
    const l = mem.layout;
    this.size = l.queueSize;
    this.#mem = mem;
    this.#eventIdx = eventIdx;
    this.#descOff = l.descTableOffset;
    this.#availOff = l.driverAreaOffset;
    this.#usedOff = l.deviceAreaOffset;
    const bytes = mem.regions[0].bytes;
    const q = this.size;
    bytes.fill(0, this.#descOff, this.#descOff + 16 * q);
    bytes.fill(0, this.#availOff, this.#availOff + 6 + 2 * q);
    bytes.fill(0, this.#usedOff, this.#usedOff + 6 + 8 * q);
    this.#desc = new DataView(bytes.buffer, bytes.byteOffset + this.#descOff, 16 * q);
    this.#avail = new Uint16Array(bytes.buffer, bytes.byteOffset + this.#availOff, 3 + q);
    this.#usedU16 = new Uint16Array(bytes.buffer, bytes.byteOffset + this.#usedOff, 3 + 4 * q);
    this.#usedView = new DataView(bytes.buffer, bytes.byteOffset + this.#usedOff, 6 + 8 * q);
    this.#shadowDesc = new Uint8Array(16 * q);
    this.#shadowDescView = new DataView(this.#shadowDesc.buffer);
    this.#shadowAvail = new Uint16Array(3 + q);
  }

  get inFlight(): number {
    return this.#inFlight.size;
  }

  get broken(): boolean {
    return this.#broken;
  }

  beginCase(rng: FuzzRng): void {
    this.#rng = rng;
    this.#completed.clear();
  }

  #write(i: number, e: { addr: bigint; len: number }, flags: number, next: number): void {
    encodeDesc(this.#desc, 16 * i, e.addr, e.len, flags, next, true);
    encodeDesc(this.#shadowDescView, 16 * i, e.addr, e.len, flags, next, true);
  }

  post(request: number, buffers: readonly ChainBuffer[], plan: ChainPlan, placeTable: TablePlacer): PostedChain {
    const rng = this.#rng!;
    const m = plan.mutation;
    const records: DescRecord[] = [];
    const tableRecords: DescRecord[] = [];
    const entries = chainEntries(request, buffers, plan, true, rng, placeTable, tableRecords);
    const free = [...Array(this.size).keys()].filter((i) => !this.#busy.has(i));
    if (free.length < entries.length) {
      throw new RangeError(`${entries.length} descriptors do not fit in ${free.length} free`);
    }
    const slots = rng.shuffle(free).slice(0, entries.length);
    const n = entries.length;
    const flags = entries.map((e) => e.flags);
    const nexts = new Array(n).fill(0);
    for (let i = 0; i < n - 1; i++) {
      flags[i] |= DESC_F_NEXT;
      nexts[i] = slots[i + 1];
    }
    if (m?.kind === "loop" && plan.indirectFrom === undefined) {
      flags[n - 1] |= DESC_F_NEXT;
      nexts[n - 1] = slots[Math.max(0, Math.min(n - 1, m.to))];
    }
    if (m?.kind === "next-out-of-range" && plan.indirectFrom === undefined) {
      const i = Math.max(0, Math.min(n - 1, m.at));
      flags[i] |= DESC_F_NEXT;
      nexts[i] = Math.max(m.next, this.size) & 0xffff;
    }
    for (let i = 0; i < n; i++) {
      this.#write(slots[i], entries[i], flags[i], nexts[i]);
      records.push({
        place: `ring[${slots[i]}]`,
        gpa: entries[i].addr,
        label: entries[i].label,
        len: entries[i].len,
        flags: flags[i],
        next: nexts[i],
        holds: entries[i].holds,
      });
    }
    const chain: PostedChain = { request, id: slots[0], entries: n, descs: [...records, ...tableRecords] };
    this.#inFlight.set(slots[0], chain);
    this.#held.set(slots[0], slots);
    for (const s of slots) this.#busy.add(s);
    this.#pending.push(slots[0]);
    return chain;
  }

  readonly #held = new Map<number, number[]>();
  readonly #busy = new Set<number>();

  publish(): void {
    const q = this.size;
    for (const head of this.#pending) {
      const slot = 2 + (this.#availIdx & (q - 1));
      this.#avail[slot] = head;
      this.#shadowAvail[slot] = head;
      this.#availIdx = (this.#availIdx + 1) & 0xffff;
    }
    this.#pending = [];
    this.#shadowAvail[1] = this.#availIdx;
    publish16(this.#avail, 1, this.#availIdx);
  }

  arm(): void {
    if (!this.#eventIdx) return;
    this.#shadowAvail[2 + this.size] = this.#lastUsed;
    publish16(this.#avail, 2 + this.size, this.#lastUsed);
  }

  reap(): Reaped {
    const used: UsedElement[] = [], anomalies: string[] = [];
    if (this.#broken) return { used, anomalies };
    const idx = observe16(this.#usedU16, 1);
    const count = (idx - this.#lastUsed) & 0xffff;
    if (count === 0) return { used, anomalies };
    if (count > this.#inFlight.size) {
      anomalies.push(
        `the used index moved by ${count} (from ${this.#lastUsed} to ${idx}) with ${this.#inFlight.size} chain${
          this.#inFlight.size === 1 ? "" : "s"
        } in flight`,
      );
      this.#broken = true;
      return { used, anomalies };
    }
    const now = performance.now();
    for (let k = 0; k < count; k++) {
      const e = 4 + 8 * ((this.#lastUsed + k) & (this.size - 1));
      const id = this.#usedView.getUint32(e, true), len = this.#usedView.getUint32(e + 4, true);
      const chain = this.#inFlight.get(id);
      if (!chain) {
        const before = this.#completed.get(id);
        anomalies.push(
          before
            ? `request ${before.request} (head ${id}) was completed a second time (used element ${
              this.#lastUsed + k
            }, len ${len})`
            : `used element ${(this.#lastUsed + k) & 0xffff} names id ${id}, which is not in flight${
              id >= this.size ? " (not even a descriptor index)" : ""
            }`,
        );
        this.#broken = true;
        continue;
      }
      this.#inFlight.delete(id);
      for (const s of this.#held.get(id) ?? []) this.#busy.delete(s);
      this.#held.delete(id);
      this.#completed.set(id, chain);
      used.push({ chain, len, lenValid: true, at: now });
    }
    this.#lastUsed = idx;
    return { used, anomalies };
  }

  guards(): RingGuard[] {
    return [
      { offset: this.#descOff, expected: this.#shadowDesc, name: "descriptor table" },
      { offset: this.#availOff, expected: new Uint8Array(this.#shadowAvail.buffer), name: "available ring" },
    ];
  }

  writable(): RingWritable[] {
    return [{ offset: this.#usedOff, len: 6 + 8 * this.size }];
  }

  addresses(): { desc: number; driver: number; device: number } {
    const base = this.#mem.ringGpa;
    return { desc: base + this.#descOff, driver: base + this.#availOff, device: base + this.#usedOff };
  }
}

/** The packed ring (virtio 1.2 §2.8). */
class PackedRing implements RawRing {
  readonly format = "packed" as const;
  readonly size: number;
  readonly #mem: FuzzMemory;
  readonly #descOff: number;
  readonly #driverOff: number;
  readonly #deviceOff: number;
  readonly #desc: DataView;
  readonly #descU16: Uint16Array;
  readonly #driverShadow = new Uint8Array(4);
  #rng: FuzzRng | undefined;
  #availPos = 0;
  #availWrap = 1;
  #usedPos = 0;
  #usedWrap = 1;
  #pending: { pos: number; flags: number }[] = [];
  readonly #inFlight = new Map<number, PostedChain>();
  readonly #completed = new Map<number, PostedChain>();
  #broken = false;

  constructor(mem: FuzzMemory) {
    const l = mem.layout;
    this.size = l.queueSize;
    this.#mem = mem;
    this.#descOff = l.descTableOffset;
    this.#driverOff = l.driverAreaOffset;
    this.#deviceOff = l.deviceAreaOffset;
    const bytes = mem.regions[0].bytes;
    bytes.fill(0, this.#descOff, this.#descOff + 16 * this.size); // the ring starts zeroed (§2.8.21)
    bytes.fill(0, this.#driverOff, this.#driverOff + 4);
    bytes.fill(0, this.#deviceOff, this.#deviceOff + 4);
    this.#desc = new DataView(bytes.buffer, bytes.byteOffset + this.#descOff, 16 * this.size);
    this.#descU16 = new Uint16Array(bytes.buffer, bytes.byteOffset + this.#descOff, 8 * this.size);
    new DataView(this.#driverShadow.buffer).setUint16(2, PACKED_EVENT_FLAG_ENABLE, true);
    bytes.set(this.#driverShadow, this.#driverOff);
  }

  get inFlight(): number {
    return this.#inFlight.size;
  }

  get broken(): boolean {
    return this.#broken;
  }

  beginCase(rng: FuzzRng): void {
    this.#rng = rng;
    this.#completed.clear();
  }

  post(request: number, buffers: readonly ChainBuffer[], plan: ChainPlan, placeTable: TablePlacer): PostedChain {
    const rng = this.#rng!;
    const records: DescRecord[] = [];
    const tableRecords: DescRecord[] = [];
    const entries = chainEntries(request, buffers, plan, false, rng, placeTable, tableRecords);
    const n = entries.length;
    const outstanding = [...this.#inFlight.values()].reduce((k, c) => k + c.entries, 0);
    if (outstanding + n > this.size) {
      throw new RangeError(`${n} descriptors do not fit in the packed ring`);
    }
    const used = new Set(this.#inFlight.keys());
    const freeIds = [...Array(this.size).keys()].filter((i) => !used.has(i));
    const id = rng.pick(freeIds);
    let pos = this.#availPos, wrap = this.#availWrap;
    let headFlags = 0;
    const headPos = pos;
    for (let i = 0; i < n; i++) {
      let flags = entries[i].flags | (i < n - 1 ? DESC_F_NEXT : 0);
      flags |= wrap ? PACKED_DESC_F_AVAIL : PACKED_DESC_F_USED;
      const at = 16 * pos;
      this.#desc.setBigUint64(at, BigInt.asUintN(64, entries[i].addr), true);
      this.#desc.setUint32(at + 8, entries[i].len >>> 0, true);
      this.#desc.setUint16(at + 12, id, true);
      if (i === 0) headFlags = flags;
      else this.#desc.setUint16(at + 14, flags, true);
      records.push({
        place: `ring[${pos}]`,
        gpa: entries[i].addr,
        label: entries[i].label,
        len: entries[i].len,
        flags,
        next: id,
        holds: entries[i].holds,
      });
      if (++pos === this.size) {
        pos = 0;
        wrap ^= 1;
      }
    }
    this.#availPos = pos;
    this.#availWrap = wrap;
    const chain: PostedChain = { request, id, entries: n, descs: [...records, ...tableRecords] };
    this.#inFlight.set(id, chain);
    this.#pending.push({ pos: headPos, flags: headFlags });
    return chain;
  }

  publish(): void {
    // Heads last to first: when the first becomes available, the whole batch is.
    for (let i = this.#pending.length - 1; i >= 0; i--) {
      const { pos, flags } = this.#pending[i];
      publish16(this.#descU16, 8 * pos + 7, flags);
    }
    this.#pending = [];
  }

  arm(): void {
    // Interrupts stay enabled (RING_EVENT_FLAGS_ENABLE): nothing to do.
  }

  reap(): Reaped {
    const used: UsedElement[] = [], anomalies: string[] = [];
    const now = performance.now();
    while (!this.#broken && this.#inFlight.size > 0) {
      const flags = observe16(this.#descU16, 8 * this.#usedPos + 7);
      const a = (flags & PACKED_DESC_F_AVAIL) ? 1 : 0, u = (flags & PACKED_DESC_F_USED) ? 1 : 0;
      if (a !== this.#usedWrap || u !== this.#usedWrap) break;
      const at = 16 * this.#usedPos;
      const id = this.#desc.getUint16(at + 12, true), len = this.#desc.getUint32(at + 8, true);
      const chain = this.#inFlight.get(id);
      if (!chain) {
        const before = this.#completed.get(id);
        anomalies.push(
          before
            ? `request ${before.request} (buffer id ${id}) was completed a second time (used descriptor at ring[${this.#usedPos}], len ${len})`
            : `the used descriptor at ring[${this.#usedPos}] names buffer id ${id}, which is not in flight`,
        );
        this.#broken = true;
        break;
      }
      this.#inFlight.delete(id);
      this.#completed.set(id, chain);
      used.push({ chain, len, lenValid: (flags & DESC_F_WRITE) !== 0, at: now });
      this.#usedPos += chain.entries;
      if (this.#usedPos >= this.size) {
        this.#usedPos -= this.size;
        this.#usedWrap ^= 1;
      }
    }
    if (!this.#broken && this.#inFlight.size === 0) {
      // Nothing in flight: a used descriptor now would complete something twice (or nothing).
      const flags = observe16(this.#descU16, 8 * this.#usedPos + 7);
      const a = (flags & PACKED_DESC_F_AVAIL) ? 1 : 0, u = (flags & PACKED_DESC_F_USED) ? 1 : 0;
      if (a === this.#usedWrap && u === this.#usedWrap) {
        const id = this.#desc.getUint16(16 * this.#usedPos + 12, true);
        const before = this.#completed.get(id);
        anomalies.push(
          before
            ? `request ${before.request} (buffer id ${id}) was completed a second time (used descriptor at ring[${this.#usedPos}])`
            : `a used descriptor at ring[${this.#usedPos}] (buffer id ${id}) with nothing in flight`,
        );
        this.#broken = true;
      }
    }
    return { used, anomalies };
  }

  guards(): RingGuard[] {
    return [{ offset: this.#driverOff, expected: this.#driverShadow, name: "driver event suppression" }];
  }

  writable(): RingWritable[] {
    return [{ offset: this.#descOff, len: 16 * this.size }, { offset: this.#deviceOff, len: 4 }];
  }

  addresses(): { desc: number; driver: number; device: number } {
    const base = this.#mem.ringGpa;
    return { desc: base + this.#descOff, driver: base + this.#driverOff, device: base + this.#deviceOff };
  }
}

/**
 * A ring writer over the ring region of `mem`.
 *
 * @param mem the connection's memory
 * @param eventIdx whether VIRTIO_F_EVENT_IDX was negotiated
 * @returns the writer
 */
export function createRawRing(mem: FuzzMemory, eventIdx: boolean): RawRing {
  return mem.layout.format === "split" ? new SplitRing(mem, eventIdx) : new PackedRing(mem);
}
