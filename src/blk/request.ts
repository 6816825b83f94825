/**
 * How a virtio-blk request is laid out (virtio 1.2, 5.2.6): a descriptor
 * chain of the 16-byte header (driver-readable), then data buffers
 * (readable for writes, writable for reads) or a discard/write-zeroes
 * segment, then the 1-byte status (device-writable). Header, segment,
 * status and the GET_ID buffer live in the request's slot in the queue's
 * shared memory; data buffers are the caller's. This module writes the
 * slot's fields and reads the answers back.
 *
 * @module
 */

import { DeviceIoError, DeviceProtocolError, DeviceUnsupportedError, type VirtioError } from "../errors.ts";
import {
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_NAMES,
} from "./spec.ts";

/** Layout of one request slot (byte offsets). */
export const SLOT = {
  /** Bytes per slot before any indirect table. */
  SIZE: 64,
  /** struct virtio_blk_outhdr { le32 type; le32 reserved; le64 sector; } */
  HEADER: 0,
  HEADER_SIZE: 16,
  /** struct virtio_blk_discard_write_zeroes { le64 sector; le32 num_sectors; le32 flags; } */
  SEGMENT: 16,
  SEGMENT_SIZE: 16,
  /** u8 status */
  STATUS: 32,
  /** GET_ID output (VIRTIO_BLK_ID_BYTES) */
  ID: 40,
} as const;

/** Written to the status byte before submission: a device that never writes it is caught. */
const STATUS_UNSET = 0xff;

/**
 * Writes a request header (and presets the status byte) into a slot.
 *
 * @param u32 the request area as 32-bit words
 * @param slotWord the slot's first word (its byte offset / 4)
 * @param type VIRTIO_BLK_T_*
 * @param sector the 512-byte sector (below 2^53)
 * @param u8 the request area as bytes (for the status)
 */
export function writeHeader(u32: Uint32Array, slotWord: number, type: number, sector: number, u8: Uint8Array): void {
  u32[slotWord] = type;
  u32[slotWord + 1] = 0;
  u32[slotWord + 2] = sector >>> 0;
  u32[slotWord + 3] = (sector / 4294967296) >>> 0;
  u8[(slotWord << 2) + SLOT.STATUS] = STATUS_UNSET;
}

/**
 * Writes the one discard / write-zeroes segment of a request into its slot.
 *
 * @param u32 the request area as 32-bit words
 * @param slotWord the slot's first word
 * @param sector first sector
 * @param sectors how many
 * @param flags VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP or 0
 */
export function writeRangeSegment(u32: Uint32Array, slotWord: number, sector: number, sectors: number, flags: number) {
  const s = slotWord + (SLOT.SEGMENT >> 2);
  u32[s] = sector >>> 0;
  u32[s + 1] = (sector / 4294967296) >>> 0;
  u32[s + 2] = sectors;
  u32[s + 3] = flags;
}

/**
 * The error a completed request's status byte means, or undefined for OK.
 * An unknown value (the preset 0xff included: the device never wrote it) is
 * a protocol violation.
 *
 * @param status the status byte
 * @param type the request type
 * @param queue the queue, for the message
 * @returns the error, or undefined
 */
export function statusError(status: number, type: number, queue: number): VirtioError | undefined {
  if (status === VIRTIO_BLK_S_OK) return undefined;
  const what = `${VIRTIO_BLK_T_NAMES[type] ?? `request ${type}`} on queue ${queue}`;
  if (status === VIRTIO_BLK_S_IOERR) return new DeviceIoError(`${what}: the device reported an I/O error`);
  if (status === VIRTIO_BLK_S_UNSUPP) return new DeviceUnsupportedError(`${what}: the device does not support it`);
  return new DeviceProtocolError("bad-status", `${what}: invalid status byte ${status}`);
}

/**
 * Decodes a GET_ID buffer: up to 20 bytes, NUL-terminated unless all 20 are used.
 *
 * @param bytes the 20 bytes the device wrote
 * @returns the id string
 */
export function decodeDeviceId(bytes: Uint8Array): string {
  let end = bytes.subarray(0, VIRTIO_BLK_ID_BYTES).indexOf(0);
  if (end < 0) end = Math.min(bytes.length, VIRTIO_BLK_ID_BYTES);
  return new TextDecoder("utf-8", { fatal: false }).decode(bytes.subarray(0, end));
}
