/**
 * The device side of the split and packed rings — the one implementation,
 * used by the mock device, the ring tests and the benchmarks: take what the
 * driver made available (following chains and indirect tables), publish
 * used elements, decide when to interrupt, and, for hostile tests, write
 * whatever a misbehaving device could.
 *
 * @module
 */

import type { QueueConfig } from "../../transport/transport.ts";
import {
  DESC_F_INDIRECT,
  DESC_F_NEXT,
  DESC_F_WRITE,
  PACKED_DESC_F_AVAIL,
  PACKED_DESC_F_USED,
  PACKED_EVENT_FLAG_DESC,
  VRING_AVAIL_F_NO_INTERRUPT,
  VRING_USED_F_NO_NOTIFY,
  vringNeedEvent,
} from "../../virtqueue/defs.ts";

/** One buffer of a chain, as the device reads it. */
export interface RawDesc {
  /** IOVA. */
  addr: number;
  /** Length. */
  len: number;
  /** Device-writable. */
  write: boolean;
}

/** A chain the device took. */
export interface DeviceChain {
  /** Split: head index; packed: buffer id. */
  id: number;
  /** Its buffers, indirect tables expanded. */
  descs: RawDesc[];
  /** Ring entries it occupies (packed: how far the used position moves). */
  ringLen: number;
}

/** How the device reaches driver memory. */
export interface DeviceMemory {
  /** A view of driver memory (throws for unmapped addresses). */
  view(iova: number, length: number): Uint8Array;
}

/** An error in how the driver used the mock device or its rings (a driver bug). */
export class MockDeviceError extends Error {
  /**
   * Creates the instance.
   *
   * @param message what the driver did wrong
   */
  constructor(message: string) {
    super(message);
    this.name = "MockDeviceError";
  }
}

/** The device side of one ring. */
export interface DeviceRing {
  /** Entries. */
  readonly size: number;
  /** Takes the next available chain, or undefined (records it for {@linkcode DeviceRing.chainOf}). */
  take(): DeviceChain | undefined;
  /**
   * Takes the next available chain without allocating; returns its id or -1
   * and sets {@linkcode DeviceRing.statusAddr} (last byte of its last buffer),
   * {@linkcode DeviceRing.writableLen} and {@linkcode DeviceRing.ringLen}.
   */
  takeFast(): number;
  /** Status address of the chain last returned by takeFast. */
  statusAddr: number;
  /** Device-writable bytes of the chain last returned by takeFast. */
  writableLen: number;
  /** Ring entries of the chain last returned by takeFast. */
  ringLen: number;
  /**
   * Publishes a used element (split) or descriptor (packed) with any id and
   * length, moving the used position by `advance`: the chain's `ringLen` for
   * a proper completion, anything at all for a hostile device.
   */
  pushUsed(id: number, len: number, advance: number): void;
  /** Whether an interrupt is due for what was used since the last call. */
  interruptDue(): boolean;
  /** EVENT_IDX: asks the driver for a notification once it passes the current position. */
  publishAvailEvent(): void;
  /** Hostile: rewrites a descriptor of the ring. */
  rewriteDesc(i: number, fields: { addr?: number; len?: number; flags?: number; next?: number }): void;
  /** Descriptor `i` of the ring as it is in memory (`next` is the id field in a packed ring). */
  descriptor(i: number): { addr: number; len: number; flags: number; next: number };
  /** A chain taken with {@linkcode DeviceRing.take}, as recorded then. */
  chainOf(id: number): DeviceChain | undefined;
}

/** Device-writable bytes of an indirect table our driver wrote (entries in order). */
function tableWritable(tv: DataView, split: boolean): number {
  let writable = 0;
  for (let at = 0; at + 16 <= tv.byteLength; at += 16) {
    if (tv.getUint16(at + (split ? 12 : 14), true) & DESC_F_WRITE) writable += tv.getUint32(at + 8, true);
  }
  return writable;
}

function readTable(mem: DeviceMemory, addr: number, len: number, split: boolean, out: RawDesc[]): void {
  if (len === 0 || len % 16 !== 0) throw new MockDeviceError(`indirect table of ${len} bytes`);
  const n = len / 16;
  const t = mem.view(addr, len);
  const v = new DataView(t.buffer, t.byteOffset, len);
  let i = 0;
  for (let hops = 0; hops < n; hops++) {
    const at = 16 * i;
    const flags = v.getUint16(at + (split ? 12 : 14), true);
    if (flags & DESC_F_INDIRECT) throw new MockDeviceError("nested indirect table");
    out.push({
      addr: Number(v.getBigUint64(at, true)),
      len: v.getUint32(at + 8, true),
      write: (flags & DESC_F_WRITE) !== 0,
    });
    if (split) {
      if ((flags & DESC_F_NEXT) === 0) return;
      i = v.getUint16(at + 14, true);
      if (i >= n) throw new MockDeviceError(`indirect next ${i} out of a table of ${n}`);
    } else {
      i++;
    }
  }
  if (split) throw new MockDeviceError("loop in an indirect table");
}

/** Device side of a split ring. */
export class DeviceSplitRing implements DeviceRing {
  readonly size: number;
  statusAddr = 0;
  writableLen = 0;
  ringLen = 1;
  readonly #mem: DeviceMemory;
  readonly #desc: DataView;
  readonly #avail: Uint16Array;
  readonly #usedU16: Uint16Array;
  readonly #usedU32: Uint32Array;
  readonly #eventIdx: () => boolean;
  readonly #chains = new Map<number, DeviceChain>();
  #lastAvail = 0;
  #usedIdx = 0;
  #signalled = 0;

  /**
   * @param cfg where the driver put the ring
   * @param mem driver memory
   * @param eventIdx whether EVENT_IDX was negotiated
   */
  constructor(cfg: QueueConfig, mem: DeviceMemory, eventIdx: () => boolean) {
    const q = this.size = cfg.size;
    this.#mem = mem;
    this.#eventIdx = eventIdx;
    const desc = mem.view(cfg.descIova, 16 * q);
    const avail = mem.view(cfg.driverIova, 6 + 2 * q);
    const used = mem.view(cfg.deviceIova, 6 + 8 * q);
    this.#desc = new DataView(desc.buffer, desc.byteOffset, 16 * q);
    this.#avail = new Uint16Array(avail.buffer, avail.byteOffset, 3 + q);
    this.#usedU16 = new Uint16Array(used.buffer, used.byteOffset, 3 + 4 * q);
    this.#usedU32 = new Uint32Array(used.buffer, used.byteOffset, 1 + 2 * q);
  }

  #nextHead(): number {
    if (this.#lastAvail === Atomics.load(this.#avail, 1)) return -1;
    const head = this.#avail[2 + (this.#lastAvail & (this.size - 1))];
    this.#lastAvail = (this.#lastAvail + 1) & 0xffff;
    if (head >= this.size) throw new MockDeviceError(`available head ${head} out of range`);
    return head;
  }

  take(): DeviceChain | undefined {
    const head = this.#nextHead();
    if (head < 0) return undefined;
    const d = this.#desc, out: RawDesc[] = [];
    let i = head;
    for (let hops = 0;; hops++) {
      if (i >= this.size) throw new MockDeviceError(`descriptor index ${i} out of range`);
      if (hops >= this.size) throw new MockDeviceError("descriptor chain loops");
      const at = 16 * i;
      const flags = d.getUint16(at + 12, true);
      const addr = Number(d.getBigUint64(at, true)), len = d.getUint32(at + 8, true);
      if (flags & DESC_F_INDIRECT) {
        if (flags & DESC_F_NEXT) throw new MockDeviceError("an indirect descriptor with NEXT");
        readTable(this.#mem, addr, len, true, out);
        break;
      }
      out.push({ addr, len, write: (flags & DESC_F_WRITE) !== 0 });
      if ((flags & DESC_F_NEXT) === 0) break;
      i = d.getUint16(at + 14, true);
    }
    const chain = { id: head, descs: out, ringLen: 1 };
    this.#chains.set(head, chain);
    return chain;
  }

  takeFast(): number {
    const head = this.#nextHead();
    if (head < 0) return -1;
    const d = this.#desc;
    let at = 16 * head, writable = 0;
    for (let hops = 0;; hops++) {
      const flags = d.getUint16(at + 12, true);
      if (flags & DESC_F_WRITE) writable += d.getUint32(at + 8, true);
      if ((flags & DESC_F_NEXT) === 0 || hops >= this.size) break;
      at = 16 * d.getUint16(at + 14, true);
    }
    let addr = d.getUint32(at, true) + d.getUint32(at + 4, true) * 4294967296;
    let len = d.getUint32(at + 8, true);
    if (d.getUint16(at + 12, true) & DESC_F_INDIRECT) {
      const t = this.#mem.view(addr, len);
      const tv = new DataView(t.buffer, t.byteOffset, len);
      writable = tableWritable(tv, true);
      at = len - 16; // our driver writes tables in order: the last entry ends the chain
      addr = tv.getUint32(at, true) + tv.getUint32(at + 4, true) * 4294967296;
      len = tv.getUint32(at + 8, true);
    }
    this.statusAddr = addr + len - 1;
    this.writableLen = writable;
    this.ringLen = 1;
    return head;
  }

  /**
   * Writes a used element and moves the used index by `advance`, publishing
   * it unless `publish` is false (a hostile device may hold it back).
   */
  pushUsed(id: number, len: number, advance: number, publish = true): void {
    const e = 1 + 2 * (this.#usedIdx & (this.size - 1));
    this.#usedU32[e] = id >>> 0;
    this.#usedU32[e + 1] = len >>> 0;
    this.#usedIdx = (this.#usedIdx + advance) & 0xffff;
    // Publish: the element (and the data and status) before the index.
    if (publish) Atomics.store(this.#usedU16, 1, this.#usedIdx);
  }

  /** Hostile: sets the published used index to anything. */
  setUsedIdx(idx: number): void {
    Atomics.store(this.#usedU16, 1, idx & 0xffff);
  }

  /** Sets or clears VRING_USED_F_NO_NOTIFY (a polling device asks for no kicks). */
  setNoNotify(on: boolean): void {
    Atomics.store(this.#usedU16, 0, on ? VRING_USED_F_NO_NOTIFY : 0);
  }

  /** EVENT_IDX: sets avail_event to anything. */
  setAvailEvent(idx: number): void {
    Atomics.store(this.#usedU16, 2 + 4 * this.size, idx & 0xffff);
  }

  /** The driver's published available index. */
  get availIdx(): number {
    return Atomics.load(this.#avail, 1);
  }

  /** The driver's available-ring flags. */
  get availFlags(): number {
    return Atomics.load(this.#avail, 0);
  }

  /** The driver's used_event (EVENT_IDX). */
  get usedEvent(): number {
    return Atomics.load(this.#avail, 2 + this.size);
  }

  interruptDue(): boolean {
    const old = this.#signalled;
    this.#signalled = this.#usedIdx;
    if (old === this.#usedIdx) return false;
    if (this.#eventIdx()) return vringNeedEvent(Atomics.load(this.#avail, 2 + this.size), this.#usedIdx, old);
    return (Atomics.load(this.#avail, 0) & VRING_AVAIL_F_NO_INTERRUPT) === 0;
  }

  publishAvailEvent(): void {
    if (this.#eventIdx()) Atomics.store(this.#usedU16, 2 + 4 * this.size, this.#lastAvail);
  }

  rewriteDesc(i: number, f: { addr?: number; len?: number; flags?: number; next?: number }): void {
    const at = 16 * i;
    if (f.addr !== undefined) this.#desc.setBigUint64(at, BigInt(f.addr), true);
    if (f.len !== undefined) this.#desc.setUint32(at + 8, f.len, true);
    if (f.flags !== undefined) this.#desc.setUint16(at + 12, f.flags, true);
    if (f.next !== undefined) this.#desc.setUint16(at + 14, f.next, true);
  }

  descriptor(i: number): { addr: number; len: number; flags: number; next: number } {
    const at = 16 * i, d = this.#desc;
    return {
      addr: Number(d.getBigUint64(at, true)),
      len: d.getUint32(at + 8, true),
      flags: d.getUint16(at + 12, true),
      next: d.getUint16(at + 14, true),
    };
  }

  chainOf(id: number): DeviceChain | undefined {
    return this.#chains.get(id);
  }
}

/** Device side of a packed ring. */
export class DevicePackedRing implements DeviceRing {
  readonly size: number;
  statusAddr = 0;
  writableLen = 0;
  ringLen = 1;
  readonly #mem: DeviceMemory;
  readonly #desc: DataView;
  readonly #descU16: Uint16Array;
  readonly #driverEvent: Uint16Array;
  readonly #deviceEvent: Uint32Array; // off_wrap | flags << 16, written as one store
  readonly #eventIdx: () => boolean;
  readonly #chains = new Map<number, DeviceChain>();
  #availPos = 0;
  #availWrap = 1;
  #usedPos = 0;
  #usedWrap = 1;
  #signalledPos = 0;
  #signalledWrap = 1;

  /**
   * @param cfg where the driver put the ring
   * @param mem driver memory
   * @param eventIdx whether EVENT_IDX was negotiated
   */
  constructor(cfg: QueueConfig, mem: DeviceMemory, eventIdx: () => boolean) {
    const q = this.size = cfg.size;
    this.#mem = mem;
    this.#eventIdx = eventIdx;
    const ring = mem.view(cfg.descIova, 16 * q);
    this.#desc = new DataView(ring.buffer, ring.byteOffset, 16 * q);
    this.#descU16 = new Uint16Array(ring.buffer, ring.byteOffset, 8 * q);
    const drv = mem.view(cfg.driverIova, 4), dev = mem.view(cfg.deviceIova, 4);
    this.#driverEvent = new Uint16Array(drv.buffer, drv.byteOffset, 2);
    this.#deviceEvent = new Uint32Array(dev.buffer, dev.byteOffset, 1);
  }

  #available(pos: number, wrap: number): boolean {
    const flags = Atomics.load(this.#descU16, 8 * pos + 7);
    const avail = (flags & PACKED_DESC_F_AVAIL) ? 1 : 0, used = (flags & PACKED_DESC_F_USED) ? 1 : 0;
    return avail === wrap && used !== wrap;
  }

  /**
   * Walks the chain at the avail position, calling `each` per buffer (or, for
   * takeFast, setting statusAddr and writableLen); sets ringLen. Allocates
   * nothing without `each`.
   *
   * @returns the buffer id, or -1 when nothing is available
   */
  #walk(each: ((d: RawDesc) => void) | undefined): number {
    let pos = this.#availPos, wrap = this.#availWrap;
    if (!this.#available(pos, wrap)) return -1;
    const d = this.#desc;
    let n = 0, id = 0;
    if (!each) this.writableLen = 0;
    for (;;) {
      if (n >= this.size) throw new MockDeviceError("packed chain longer than the ring");
      if (n > 0 && !this.#available(pos, wrap)) {
        throw new MockDeviceError("packed chain continues into an unavailable descriptor");
      }
      const at = 16 * pos;
      const flags = d.getUint16(at + 14, true);
      const addr = d.getUint32(at, true) + d.getUint32(at + 4, true) * 4294967296, len = d.getUint32(at + 8, true);
      id = d.getUint16(at + 12, true);
      n++;
      if (++pos === this.size) {
        pos = 0;
        wrap ^= 1;
      }
      if (flags & DESC_F_INDIRECT) {
        if (each) {
          const out: RawDesc[] = [];
          readTable(this.#mem, addr, len, false, out);
          out.forEach(each);
        } else {
          const t = this.#mem.view(addr, len);
          const tv = new DataView(t.buffer, t.byteOffset, len);
          this.statusAddr = tv.getUint32(len - 16, true) + tv.getUint32(len - 12, true) * 4294967296 +
            tv.getUint32(len - 8, true) - 1;
          this.writableLen = tableWritable(tv, false);
        }
        break;
      }
      if (each) each({ addr, len, write: (flags & DESC_F_WRITE) !== 0 });
      else {
        this.statusAddr = addr + len - 1;
        if (flags & DESC_F_WRITE) this.writableLen += len;
      }
      if ((flags & DESC_F_NEXT) === 0) break;
    }
    this.#availPos = pos;
    this.#availWrap = wrap;
    this.ringLen = n;
    return id;
  }

  take(): DeviceChain | undefined {
    const out: RawDesc[] = [];
    const id = this.#walk((x) => out.push(x));
    if (id < 0) return undefined;
    const chain = { id, descs: out, ringLen: this.ringLen };
    this.#chains.set(id, chain);
    return chain;
  }

  takeFast(): number {
    return this.#walk(undefined);
  }

  pushUsed(id: number, len: number, advance: number): void {
    const at = 16 * this.#usedPos;
    this.#desc.setUint32(at + 8, len >>> 0, true);
    this.#desc.setUint16(at + 12, id & 0xffff, true);
    // Publish: id and length before the flags that mark the descriptor used.
    Atomics.store(this.#descU16, 8 * this.#usedPos + 7, this.#usedWrap ? PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED : 0);
    this.#usedPos += advance;
    while (this.#usedPos >= this.size) {
      this.#usedPos -= this.size;
      this.#usedWrap ^= 1;
    }
  }

  interruptDue(): boolean {
    const oldPos = this.#signalledPos, oldWrap = this.#signalledWrap;
    this.#signalledPos = this.#usedPos;
    this.#signalledWrap = this.#usedWrap;
    if (oldPos === this.#usedPos && oldWrap === this.#usedWrap) return false;
    const flags = Atomics.load(this.#driverEvent, 1);
    if (flags !== PACKED_EVENT_FLAG_DESC || !this.#eventIdx()) return flags === 0;
    const offWrap = Atomics.load(this.#driverEvent, 0);
    let event = offWrap & 0x7fff;
    if ((offWrap >> 15) !== this.#usedWrap) event -= this.size;
    const newIdx = this.#usedPos;
    const oldIdx = oldWrap === this.#usedWrap ? oldPos : oldPos - this.size;
    return vringNeedEvent(event & 0xffff, newIdx, oldIdx & 0xffff);
  }

  publishAvailEvent(): void {
    if (!this.#eventIdx()) return;
    Atomics.store(
      this.#deviceEvent,
      0,
      (this.#availPos | (this.#availWrap << 15) | (PACKED_EVENT_FLAG_DESC << 16)) >>> 0,
    );
  }

  rewriteDesc(i: number, f: { addr?: number; len?: number; flags?: number; next?: number }): void {
    const at = 16 * i;
    if (f.addr !== undefined) this.#desc.setBigUint64(at, BigInt(f.addr), true);
    if (f.len !== undefined) this.#desc.setUint32(at + 8, f.len, true);
    if (f.next !== undefined) this.#desc.setUint16(at + 12, f.next, true); // the id field
    if (f.flags !== undefined) this.#desc.setUint16(at + 14, f.flags, true);
  }

  descriptor(i: number): { addr: number; len: number; flags: number; next: number } {
    const at = 16 * i, d = this.#desc;
    return {
      addr: Number(d.getBigUint64(at, true)),
      len: d.getUint32(at + 8, true),
      next: d.getUint16(at + 12, true),
      flags: d.getUint16(at + 14, true),
    };
  }

  chainOf(id: number): DeviceChain | undefined {
    return this.#chains.get(id);
  }
}
