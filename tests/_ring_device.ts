/**
 * Test helper: the device side of a split ring, written by hand so that tests
 * can behave exactly as they like (including badly).
 */

import { HeapRegion } from "../src/memory/region.ts";
import { VirtqueueLayout } from "../src/virtqueue/layout.ts";
import { SplitVirtqueue } from "../src/virtqueue/split.ts";

/** One descriptor as the device reads it. */
export interface Desc {
  addr: number;
  len: number;
  flags: number;
  next: number;
}

/** A split ring and a hand-driven device side over it. */
export class RingDevice {
  readonly layout: VirtqueueLayout;
  readonly region: HeapRegion;
  readonly vq: SplitVirtqueue;
  readonly base = 0x7_0000_0000; // IOVA of the ring block: above 4 GiB on purpose
  readonly #view: DataView;
  lastAvail = 0;
  usedIdx = 0;

  constructor(queueSize: number, options: { eventIdx?: boolean; strictUsedLength?: boolean } = {}) {
    this.layout = new VirtqueueLayout(1, queueSize, { reqSize: 64 });
    this.region = new HeapRegion("ring", this.layout.totalSize);
    this.vq = new SplitVirtqueue({
      layout: this.layout,
      memory: this.region.bytes,
      iova: this.base,
      eventIdx: options.eventIdx,
      name: "test queue",
      strictUsedLength: options.strictUsedLength,
    });
    this.#view = new DataView(this.region.bytes.buffer);
  }

  get q(): number {
    return this.layout.queueSize;
  }

  availIdx(): number {
    return this.#view.getUint16(this.layout.driverAreaOffset + 2, true);
  }

  availFlags(): number {
    return this.#view.getUint16(this.layout.driverAreaOffset, true);
  }

  usedEvent(): number {
    return this.#view.getUint16(this.layout.driverAreaOffset + 4 + 2 * this.q, true);
  }

  /** Takes the next available head, or -1. */
  takeAvail(): number {
    if (this.lastAvail === this.availIdx()) return -1;
    const head = this.#view.getUint16(this.layout.driverAreaOffset + 4 + 2 * (this.lastAvail % this.q), true);
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    return head;
  }

  desc(i: number): Desc {
    const at = 16 * i;
    return {
      addr: Number(this.#view.getBigUint64(at, true)),
      len: this.#view.getUint32(at + 8, true),
      flags: this.#view.getUint16(at + 12, true),
      next: this.#view.getUint16(at + 14, true),
    };
  }

  /** Follows a chain by its shared-memory `next` fields (as a device would). */
  chain(head: number): Desc[] {
    const out: Desc[] = [];
    let i = head;
    for (let n = 0; n <= this.q; n++) {
      const d = this.desc(i);
      out.push(d);
      if ((d.flags & 1) === 0) return out;
      i = d.next;
    }
    throw new Error("loop in chain");
  }

  /** Writes a used element and (unless `publish` is false) bumps the used index. */
  pushUsed(id: number, len: number, publish = true): void {
    const at = this.layout.deviceAreaOffset + 4 + 8 * (this.usedIdx % this.q);
    this.#view.setUint32(at, id, true);
    this.#view.setUint32(at + 4, len, true);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    if (publish) this.setUsedIdx(this.usedIdx);
  }

  setUsedIdx(idx: number): void {
    this.#view.setUint16(this.layout.deviceAreaOffset + 2, idx & 0xffff, true);
  }

  setUsedFlags(flags: number): void {
    this.#view.setUint16(this.layout.deviceAreaOffset, flags, true);
  }

  setAvailEvent(idx: number): void {
    this.#view.setUint16(this.layout.deviceAreaOffset + 4 + 8 * this.q, idx & 0xffff, true);
  }

  /** Overwrites a descriptor in shared memory (a device tampering after submission). */
  scribbleDesc(i: number, d: Partial<Desc>): void {
    const at = 16 * i;
    if (d.addr !== undefined) this.#view.setBigUint64(at, BigInt(d.addr), true);
    if (d.len !== undefined) this.#view.setUint32(at + 8, d.len, true);
    if (d.flags !== undefined) this.#view.setUint16(at + 12, d.flags, true);
    if (d.next !== undefined) this.#view.setUint16(at + 14, d.next, true);
  }
}
