/**
 * The device side of a packed ring (virtio 1.2 §2.8): take available chains
 * by their avail/used flags and wrap counter, write used descriptors back,
 * decide when to interrupt (§2.8.10, §2.8.14).
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

  rewriteDesc(i: number, f: Partial<DescFields>): void {
    rewriteDescAt(this.#desc, i, f, false);
  }

  descriptor(i: number): DescFields {
    return descAt(this.#desc, i, false);
  }

  chainOf(id: number): DeviceChain | undefined {
    return this.#chains.get(id);
  }
}
