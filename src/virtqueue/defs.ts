/**
 * Virtqueue definitions from the spec, written once and shared by the
 * driver's rings and the mock device's side of them: descriptor flags
 * (virtio 1.2, 2.7.5 and 2.8.3), the split ring's notification flags
 * (2.7.7 and 2.7.10), the packed ring's flags and event suppression
 * (2.8.1 and 2.8.10), and the event-index arithmetic (2.7.7.2).
 *
 * @module
 */

/** Largest queue size virtio allows. */
export const MAX_QUEUE_SIZE = 32768;

/** Size of one descriptor (split and packed alike). */
export const DESC_SIZE = 16;

/** Descriptor flag: the chain continues in `next` (split) or the next descriptor (packed). */
export const DESC_F_NEXT = 1;
/** Descriptor flag: device-writable buffer. */
export const DESC_F_WRITE = 2;
/** Descriptor flag: the buffer is a table of descriptors. */
export const DESC_F_INDIRECT = 4;

/** Split ring, `used.flags`: the device does not need notifications. */
export const VRING_USED_F_NO_NOTIFY = 1;
/** Split ring, `avail.flags`: the driver does not need interrupts. */
export const VRING_AVAIL_F_NO_INTERRUPT = 1;

/** Packed descriptor flag: available (bit 7). */
export const PACKED_DESC_F_AVAIL = 1 << 7;
/** Packed descriptor flag: used (bit 15). */
export const PACKED_DESC_F_USED = 1 << 15;
/** Packed event suppression: notifications on. */
export const PACKED_EVENT_FLAG_ENABLE = 0;
/** Packed event suppression: notifications off. */
export const PACKED_EVENT_FLAG_DISABLE = 1;
/** Packed event suppression: notify at a given descriptor (with VIRTIO_F_EVENT_IDX). */
export const PACKED_EVENT_FLAG_DESC = 2;

/**
 * `vring_need_event`: whether moving an index from `oldIdx` to `newIdx`
 * crosses the other side's event index `event` (all modulo 2^16).
 *
 * @param event the other side's event index
 * @param newIdx the index after the update
 * @param oldIdx the index at the last notification
 * @returns true when a notification is due
 *
 * @example
 * ```ts
 * import { vringNeedEvent } from "./defs.ts";
 * vringNeedEvent(5, 6, 4); // true: 4 → 6 passes the entry at 5
 * vringNeedEvent(9, 6, 4); // false
 * ```
 */
export function vringNeedEvent(event: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - event - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}
