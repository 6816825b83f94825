/**
 * Test helper: a virtqueue of either format over heap memory, with the mock
 * device's device-side ring attached to it (which tests may also drive with
 * hostile writes).
 */

import { HeapRegion } from "../src/memory/region.ts";
import { DevicePackedRing, type DeviceRing, DeviceSplitRing, MockDeviceError } from "../src/transport/mock_rings.ts";
import { type VirtqueueFormat, VirtqueueLayout } from "../src/virtqueue/layout.ts";
import { PackedVirtqueue } from "../src/virtqueue/packed.ts";
import { SplitVirtqueue } from "../src/virtqueue/split.ts";
import type { Virtqueue } from "../src/virtqueue/virtqueue.ts";

/** A driver-side queue and the device side of the same ring. */
export interface TestRing {
  format: VirtqueueFormat;
  vq: Virtqueue;
  dev: DeviceRing;
  layout: VirtqueueLayout;
  region: HeapRegion;
  /** IOVA of the ring block. */
  base: number;
  /** An address base for pushDescAt (a data area above 4 GiB). */
  data: number;
}

/**
 * Builds a ring.
 *
 * @param format split or packed
 * @param size queue size
 * @param options EVENT_IDX, indirect tables
 * @returns the ring, both sides
 */
export function makeRing(
  format: VirtqueueFormat,
  size: number,
  options: { eventIdx?: boolean; indirect?: number; strictUsedLength?: boolean } = {},
): TestRing {
  const indirect = options.indirect ?? 0;
  const reqSize = 64 + 16 * indirect;
  const layout = new VirtqueueLayout(1, size, { format, reqSize: Math.ceil(reqSize / 64) * 64 });
  const region = new HeapRegion("ring", layout.totalSize);
  const base = 0x7_0000_0000;
  const opts = {
    layout,
    memory: region.bytes,
    iova: base,
    eventIdx: options.eventIdx,
    name: `test ${format} queue`,
    indirect: indirect > 0 ? { slotOffset: 64, maxDescriptors: indirect } : undefined,
    strictUsedLength: options.strictUsedLength,
  };
  const vq = format === "packed" ? new PackedVirtqueue(opts) : new SplitVirtqueue(opts);
  const mem = {
    view(iova: number, len: number): Uint8Array {
      if (iova < base || iova + len > base + region.size) {
        throw new MockDeviceError(`device read outside the ring block: ${iova}`);
      }
      return region.bytes.subarray(iova - base, iova - base + len);
    },
  };
  const cfg = {
    index: 0,
    size,
    format,
    descIova: vq.descTableIova,
    driverIova: vq.driverAreaIova,
    deviceIova: vq.deviceAreaIova,
  };
  const eventIdx = () => options.eventIdx ?? false;
  const dev = format === "packed" ? new DevicePackedRing(cfg, mem, eventIdx) : new DeviceSplitRing(cfg, mem, eventIdx);
  const data = vq.addressBase(0x1_0000_0000);
  return { format, vq, dev, layout, region, base, data };
}

/**
 * Adds a blk-like chain: header (readable), `dataLen` writable bytes, status.
 *
 * @param r the ring
 * @param dataLen writable data bytes
 * @param segments data segments (default 1)
 * @returns the chain id, or -1 when it does not fit
 */
export function addChain(r: TestRing, dataLen = 512, segments = 1): number {
  const id = r.vq.beginChain(segments + 2);
  if (id < 0) return -1;
  r.vq.pushDescAt(r.data, 64 * id, 16, false);
  for (let s = 0; s < segments; s++) r.vq.pushDescAt(r.data, 0x10_0000 + 4096 * s, dataLen / segments, true);
  r.vq.pushDescAt(r.data, 64 * id + 32, 1, true);
  return r.vq.endChain();
}
