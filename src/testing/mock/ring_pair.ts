/**
 * A driver ring and its device side over one block of heap memory, for the
 * ring tests, the fuzzer and the virtqueue benchmarks: no transport, no
 * device model, just the two ends of one virtqueue.
 *
 * @module
 */

import { HeapRegion } from "../../memory/region.ts";
import { type VirtqueueFormat, VirtqueueLayout } from "../../virtqueue/layout.ts";
import { PackedRing } from "../../virtqueue/packed.ts";
import type { Ring } from "../../virtqueue/ring.ts";
import { SplitRing } from "../../virtqueue/split.ts";
import { type DeviceRing, MockDeviceError } from "./device_ring.ts";
import { DevicePackedRing } from "./device_packed_ring.ts";
import { DeviceSplitRing } from "./device_split_ring.ts";

/** Both ends of one virtqueue. */
export interface RingPair<D extends DeviceRing = DeviceRing> {
  /** The ring format. */
  readonly format: VirtqueueFormat;
  /** The driver side. */
  readonly vq: Ring;
  /** The device side. */
  readonly dev: D;
  /** Where the parts are. */
  readonly layout: VirtqueueLayout;
  /** The memory. */
  readonly region: HeapRegion;
  /** The IOVA of the ring block (above 4 GiB on purpose). */
  readonly base: number;
}

/** Options of {@linkcode ringPair}. */
export interface RingPairOptions {
  /** VIRTIO_F_EVENT_IDX on both sides. */
  eventIdx?: boolean;
  /** Indirect tables of this many entries (0: none). */
  indirect?: number;
  /** The driver's used-length policy. */
  strictUsedLength?: boolean;
}

/**
 * Builds a ring of `format` and `size` with its device side.
 *
 * @param format split or packed
 * @param size queue size
 * @param options EVENT_IDX, indirect tables, used-length policy
 * @returns both sides
 */
export function ringPair(format: "split", size: number, options?: RingPairOptions): RingPair<DeviceSplitRing>;
export function ringPair(format: VirtqueueFormat, size: number, options?: RingPairOptions): RingPair;
export function ringPair(format: VirtqueueFormat, size: number, options: RingPairOptions = {}): RingPair {
  const indirect = options.indirect ?? 0;
  const reqSize = Math.ceil((64 + 16 * indirect) / 64) * 64;
  const layout = new VirtqueueLayout(1, size, { format, reqSize });
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
  const vq = format === "packed" ? new PackedRing(opts) : new SplitRing(opts);
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
  return { format, vq, dev, layout, region, base };
}
