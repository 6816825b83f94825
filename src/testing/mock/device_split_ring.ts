/**
 * The device side of a split ring (virtio 1.2 §2.7): take available chains,
 * publish used elements, decide when to interrupt (§2.7.7, §2.7.10).
 *
 * @module
 */

import type { QueueConfig } from "../../transport/transport.ts";
import {
  DESC_F_INDIRECT,
  DESC_F_NEXT,
  DESC_F_WRITE,
  VRING_AVAIL_F_NO_INTERRUPT,
  VRING_USED_F_NO_NOTIFY,
  vringNeedEvent,
} from "../../virtqueue/defs.ts";
import {
  descAt,
  type DescFields,
  type DeviceChain,
  type DeviceMemory,
  type DeviceRing,
  MockDeviceError,
  type RawDesc,
  readTable,
  rewriteDescAt,
  tableWritable,
} from "./device_ring.ts";

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

  rewriteDesc(i: number, f: Partial<DescFields>): void {
    rewriteDescAt(this.#desc, i, f, true);
  }

  descriptor(i: number): DescFields {
    return descAt(this.#desc, i, true);
  }

  chainOf(id: number): DeviceChain | undefined {
    return this.#chains.get(id);
  }
}
