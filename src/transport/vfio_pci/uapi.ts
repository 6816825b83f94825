/**
 * The VFIO kernel interface (`<linux/vfio.h>`): ioctl numbers and argument
 * encodings for the type1 IOMMU and PCI devices. Pure functions over bytes,
 * tested against values compiled from the header.
 *
 * @module
 */

import { io } from "../linux/ioctl.ts";

const T = 0x3b; // ';'
const BASE = 100;

/** VFIO ioctl requests (all `_IO`: the size lives in each struct's argsz). */
export const VFIO = {
  GET_API_VERSION: io(T, BASE + 0),
  CHECK_EXTENSION: io(T, BASE + 1),
  SET_IOMMU: io(T, BASE + 2),
  GROUP_GET_STATUS: io(T, BASE + 3),
  GROUP_SET_CONTAINER: io(T, BASE + 4),
  GROUP_UNSET_CONTAINER: io(T, BASE + 5),
  GROUP_GET_DEVICE_FD: io(T, BASE + 6),
  DEVICE_GET_INFO: io(T, BASE + 7),
  DEVICE_GET_REGION_INFO: io(T, BASE + 8),
  DEVICE_GET_IRQ_INFO: io(T, BASE + 9),
  DEVICE_SET_IRQS: io(T, BASE + 10),
  DEVICE_RESET: io(T, BASE + 11),
  IOMMU_GET_INFO: io(T, BASE + 12),
  IOMMU_MAP_DMA: io(T, BASE + 13),
  IOMMU_UNMAP_DMA: io(T, BASE + 14),
} as const;

/** VFIO_API_VERSION. */
export const VFIO_API_VERSION = 0;
/** The type1 IOMMU, version 2. */
export const VFIO_TYPE1v2_IOMMU = 3;
/** Group flag: all devices of the group are bound to VFIO (or unbound). */
export const VFIO_GROUP_FLAGS_VIABLE = 1;
/** Region flag: the region can be mmap'ed. */
export const VFIO_REGION_INFO_FLAG_MMAP = 4;
/** PCI region index of the config space. */
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;
/** PCI interrupt index of MSI-X. */
export const VFIO_PCI_MSIX_IRQ_INDEX = 2;
/** SET_IRQS: no data (with count 0: disable). */
export const VFIO_IRQ_SET_DATA_NONE = 1;
/** SET_IRQS: data is an array of eventfds. */
export const VFIO_IRQ_SET_DATA_EVENTFD = 4;
/** SET_IRQS: the interrupt triggers the eventfd. */
export const VFIO_IRQ_SET_ACTION_TRIGGER = 0x20;
/** IOMMU info flag: a capability chain follows. */
export const VFIO_IOMMU_INFO_CAPS = 2;
/** IOMMU info capability: usable IOVA ranges. */
export const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1;
/** DMA map flags: the device may read and write. */
export const VFIO_DMA_MAP_FLAG_READ_WRITE = 3;

function withArgsz(size: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(size);
  new DataView(b.buffer).setUint32(0, size, true);
  return b;
}

/**
 * `struct vfio_group_status { u32 argsz, flags; }`.
 *
 * @returns 8 bytes with argsz set
 */
export function groupStatus(): Uint8Array<ArrayBuffer> {
  return withArgsz(8);
}

/**
 * `struct vfio_region_info { u32 argsz, flags, index, cap_offset; u64 size, offset; }`.
 *
 * @param index the region
 * @returns 32 bytes with argsz and index set
 */
export function regionInfo(index: number): Uint8Array<ArrayBuffer> {
  const b = withArgsz(32);
  new DataView(b.buffer).setUint32(8, index, true);
  return b;
}

/** A decoded `vfio_region_info`. */
export interface RegionInfo {
  /** READ 1, WRITE 2, MMAP 4, CAPS 8. */
  flags: number;
  /** Bytes. */
  size: number;
  /** Offset of the region in the device descriptor (for pread/pwrite/mmap). */
  offset: number;
}

/**
 * Reads a region info the kernel filled.
 *
 * @param b the 32 bytes
 * @returns flags, size and offset
 */
export function decodeRegionInfo(b: Uint8Array): RegionInfo {
  const v = new DataView(b.buffer, b.byteOffset, 32);
  return {
    flags: v.getUint32(4, true),
    size: Number(v.getBigUint64(16, true)),
    offset: Number(v.getBigUint64(24, true)),
  };
}

/**
 * `struct vfio_irq_set { u32 argsz, flags, index, start, count; u8 data[]; }`
 * with eventfds as data (none: disable).
 *
 * @param index the interrupt index (MSI-X: 2)
 * @param eventfds one per vector from 0; empty disables
 * @returns 20 + 4·n bytes
 */
export function irqSet(index: number, eventfds: readonly number[]): Uint8Array<ArrayBuffer> {
  const b = withArgsz(20 + 4 * eventfds.length);
  const v = new DataView(b.buffer);
  v.setUint32(
    4,
    VFIO_IRQ_SET_ACTION_TRIGGER | (eventfds.length ? VFIO_IRQ_SET_DATA_EVENTFD : VFIO_IRQ_SET_DATA_NONE),
    true,
  );
  v.setUint32(8, index, true);
  v.setUint32(12, 0, true);
  v.setUint32(16, eventfds.length, true);
  eventfds.forEach((fd, i) => v.setInt32(20 + 4 * i, fd, true));
  return b;
}

/**
 * `struct vfio_iommu_type1_dma_map { u32 argsz, flags; u64 vaddr, iova, size; }`.
 *
 * @param vaddr process address
 * @param iova device address
 * @param size bytes
 * @returns 32 bytes
 */
export function dmaMap(vaddr: number, iova: number, size: number): Uint8Array<ArrayBuffer> {
  const b = withArgsz(32);
  const v = new DataView(b.buffer);
  v.setUint32(4, VFIO_DMA_MAP_FLAG_READ_WRITE, true);
  v.setBigUint64(8, BigInt(vaddr), true);
  v.setBigUint64(16, BigInt(iova), true);
  v.setBigUint64(24, BigInt(size), true);
  return b;
}

/**
 * `struct vfio_iommu_type1_dma_unmap { u32 argsz, flags; u64 iova, size; }`.
 *
 * @param iova device address
 * @param size bytes
 * @returns 24 bytes
 */
export function dmaUnmap(iova: number, size: number): Uint8Array<ArrayBuffer> {
  const b = withArgsz(24);
  const v = new DataView(b.buffer);
  v.setBigUint64(8, BigInt(iova), true);
  v.setBigUint64(16, BigInt(size), true);
  return b;
}

/**
 * An IOMMU info request with room for its capability chain.
 *
 * @param size bytes of room (at least 24)
 * @returns the buffer with argsz set
 */
export function iommuInfo(size = 4096): Uint8Array<ArrayBuffer> {
  return withArgsz(size);
}

/**
 * Reads the IOVA ranges from a `vfio_iommu_type1_info` and its capability
 * chain (as filled by `VFIO_IOMMU_GET_INFO`).
 *
 * @param b the buffer the kernel filled
 * @returns the ranges, or undefined when the kernel reported none
 */
export function decodeIovaRanges(b: Uint8Array): { first: number; last: number }[] | undefined {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if ((v.getUint32(4, true) & VFIO_IOMMU_INFO_CAPS) === 0) return undefined;
  let off = v.getUint32(16, true); // cap_offset
  for (let hops = 0; off !== 0 && off + 16 <= b.byteLength && hops < 16; hops++) {
    const id = v.getUint16(off, true);
    const next = v.getUint32(off + 4, true);
    if (id === VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
      const n = v.getUint32(off + 8, true);
      const out: { first: number; last: number }[] = [];
      for (let i = 0; i < n && off + 32 + 16 * i <= b.byteLength; i++) {
        const first = v.getBigUint64(off + 16 + 16 * i, true), last = v.getBigUint64(off + 24 + 16 * i, true);
        out.push({
          first: Number(first),
          last: last > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(last),
        });
      }
      return out;
    }
    off = next;
  }
  return undefined;
}
