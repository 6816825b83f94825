/**
 * The ring position a vhost back-end starts from (`SET_VRING_BASE`) and
 * reports when stopped (`GET_VRING_BASE`), shared by vhost-user
 * (docs/interop/vhost-user.rst, "Ring states") and the kernel's vhost and
 * vhost-vdpa (`struct vhost_vring_state`).
 *
 * - Split rings: `num` is the next available index the back-end reads
 *   (bits 0–15).
 * - Packed rings (virtio 1.2 §2.8): bits 0–14 the next available index,
 *   bit 15 the available wrap counter, bits 16–30 the next used index,
 *   bit 31 the used wrap counter. Both counters start at 1 (§2.8.1), so a
 *   fresh packed ring is `0x8000_8000`: a back-end that reads the used half
 *   (QEMU sends both halves) must not find a used wrap counter of 0.
 *
 * @module
 */

import type { VirtqueueFormat } from "../virtqueue/layout.ts";

/** A ring position. For split rings only `availIdx` is meaningful. */
export interface VringBase {
  /** The next available index (split: 16 bits; packed: 15). */
  readonly availIdx: number;
  /** Packed: the available wrap counter (0 or 1). */
  readonly availWrap: number;
  /** Packed: the next used index (15 bits). */
  readonly usedIdx: number;
  /** Packed: the used wrap counter (0 or 1). */
  readonly usedWrap: number;
}

/** Where a fresh ring starts (virtio 1.2 §2.7.1 and §2.8.1). */
export const FRESH_VRING_BASE: VringBase = Object.freeze({ availIdx: 0, availWrap: 1, usedIdx: 0, usedWrap: 1 });

/**
 * Encodes a ring position as the `num` of `SET_VRING_BASE`.
 *
 * @param format the ring format
 * @param base the position
 * @returns the 32-bit value
 *
 * @example
 * ```ts
 * import { encodeVringBase, FRESH_VRING_BASE } from "./vring_base.ts";
 * encodeVringBase("packed", FRESH_VRING_BASE); // 0x80008000
 * encodeVringBase("split", FRESH_VRING_BASE); // 0
 * ```
 */
export function encodeVringBase(format: VirtqueueFormat, base: VringBase): number {
  if (format === "split") return base.availIdx & 0xffff;
  return ((base.availIdx & 0x7fff) | ((base.availWrap & 1) << 15) | ((base.usedIdx & 0x7fff) << 16) |
    ((base.usedWrap & 1) << 31)) >>> 0;
}

/**
 * Decodes the `num` of `GET_VRING_BASE`. A back-end that reports only the
 * available half of a packed ring (DPDK 22.11 does) leaves the used half 0.
 *
 * @param format the ring format
 * @param num the 32-bit value
 * @returns the position
 */
export function decodeVringBase(format: VirtqueueFormat, num: number): VringBase {
  if (format === "split") return { availIdx: num & 0xffff, availWrap: 0, usedIdx: 0, usedWrap: 0 };
  return {
    availIdx: num & 0x7fff,
    availWrap: (num >>> 15) & 1,
    usedIdx: (num >>> 16) & 0x7fff,
    usedWrap: (num >>> 31) & 1,
  };
}
