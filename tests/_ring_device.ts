/**
 * Test helper: a split ring and its device side (the one implementation in
 * `src/testing/mock/device_ring.ts`), with the raw views of the ring the
 * split-ring tests inspect and the hostile writes they make.
 */

import type { HeapRegion } from "../src/memory/region.ts";
import type { DeviceSplitRing } from "../src/testing/mock/device_split_ring.ts";
import { ringPair } from "../src/testing/mock/ring_pair.ts";
import { DESC_F_NEXT, VRING_USED_F_NO_NOTIFY } from "../src/virtqueue/defs.ts";
import type { VirtqueueLayout } from "../src/virtqueue/layout.ts";
import type { Ring } from "../src/virtqueue/ring.ts";

/** One descriptor as the device reads it. */
export interface Desc {
  addr: number;
  len: number;
  flags: number;
  next: number;
}

/** A split ring and its device side. */
export class RingDevice {
  readonly layout: VirtqueueLayout;
  readonly vq: Ring;
  readonly base: number; // IOVA of the ring block: above 4 GiB on purpose
  readonly dev: DeviceSplitRing;
  readonly region: HeapRegion;

  constructor(queueSize: number, options: { eventIdx?: boolean; strictUsedLength?: boolean } = {}) {
    const pair = ringPair("split", queueSize, options);
    this.layout = pair.layout;
    this.vq = pair.vq;
    this.base = pair.base;
    this.dev = pair.dev;
    this.region = pair.region;
  }

  get q(): number {
    return this.layout.queueSize;
  }

  availIdx(): number {
    return this.dev.availIdx;
  }

  availFlags(): number {
    return this.dev.availFlags;
  }

  usedEvent(): number {
    return this.dev.usedEvent;
  }

  /** Takes the next available head, or -1. */
  takeAvail(): number {
    return this.dev.take()?.id ?? -1;
  }

  desc(i: number): Desc {
    return this.dev.descriptor(i);
  }

  /** Follows a chain by its shared-memory `next` fields (as a device would). */
  chain(head: number): Desc[] {
    const out: Desc[] = [];
    let i = head;
    for (let n = 0; n <= this.q; n++) {
      const d = this.desc(i);
      out.push(d);
      if ((d.flags & DESC_F_NEXT) === 0) return out;
      i = d.next;
    }
    throw new Error("loop in chain");
  }

  /** Writes a used element and (unless `publish` is false) bumps the used index. */
  pushUsed(id: number, len: number, publish = true): void {
    this.dev.pushUsed(id, len, 1, publish);
  }

  setUsedIdx(idx: number): void {
    this.dev.setUsedIdx(idx);
  }

  setUsedFlags(flags: number): void {
    this.dev.setNoNotify((flags & VRING_USED_F_NO_NOTIFY) !== 0);
  }

  setAvailEvent(idx: number): void {
    this.dev.setAvailEvent(idx);
  }

  /** Overwrites a descriptor in shared memory (a device tampering after submission). */
  scribbleDesc(i: number, d: Partial<Desc>): void {
    this.dev.rewriteDesc(i, d);
  }
}
