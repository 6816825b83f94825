/**
 * virtio-blk request encoding (virtio 1.2, section 5.2.6): request types,
 * status values, and where each part lives in a request's data slot.
 *
 * A request is a descriptor chain: the 16-byte header (driver-readable),
 * then data buffers (readable for writes, writable for reads) or a
 * discard/write-zeroes segment, then the 1-byte status (device-writable).
 * Header, segment, status and the GET_ID buffer live in the request's slot
 * in the queue's shared memory; data buffers are the caller's.
 *
 * @module
 */

/** VIRTIO_BLK_T_IN: read. */
export const VIRTIO_BLK_T_IN = 0;
/** VIRTIO_BLK_T_OUT: write. */
export const VIRTIO_BLK_T_OUT = 1;
/** VIRTIO_BLK_T_FLUSH: flush the write cache. */
export const VIRTIO_BLK_T_FLUSH = 4;
/** VIRTIO_BLK_T_GET_ID: read the 20-byte device id string. */
export const VIRTIO_BLK_T_GET_ID = 8;
/** VIRTIO_BLK_T_DISCARD: discard ranges. */
export const VIRTIO_BLK_T_DISCARD = 11;
/** VIRTIO_BLK_T_WRITE_ZEROES: zero ranges. */
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;

/** VIRTIO_BLK_S_OK. */
export const VIRTIO_BLK_S_OK = 0;
/** VIRTIO_BLK_S_IOERR. */
export const VIRTIO_BLK_S_IOERR = 1;
/** VIRTIO_BLK_S_UNSUPP. */
export const VIRTIO_BLK_S_UNSUPP = 2;
/** Written to the status byte before submission: a device that never writes it is caught. */
export const STATUS_UNSET = 0xff;

/** Flag of a write-zeroes segment: the device may unmap (deallocate) the range. */
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;

/** Length of the device id string (VIRTIO_BLK_ID_BYTES). */
export const VIRTIO_BLK_ID_BYTES = 20;

/** Layout of one request data slot. */
export const SLOT = {
  /** Bytes per slot. */
  SIZE: 64,
  /** struct virtio_blk_outhdr { le32 type; le32 reserved; le64 sector; } */
  HEADER: 0,
  HEADER_SIZE: 16,
  /** struct virtio_blk_discard_write_zeroes { le64 sector; le32 num_sectors; le32 flags; } */
  SEGMENT: 16,
  SEGMENT_SIZE: 16,
  /** u8 status */
  STATUS: 32,
  /** GET_ID output */
  ID: 40,
} as const;

/** Operation kinds the queue tracks per request. */
export const OP_READ = 1;
/** A write. */
export const OP_WRITE = 2;
/** A flush. */
export const OP_FLUSH = 3;
/** A discard. */
export const OP_DISCARD = 4;
/** A write-zeroes. */
export const OP_WRITE_ZEROES = 5;
/** A get-id. */
export const OP_GET_ID = 6;

/** Human names of the OP_ kinds, for error messages. */
export const OP_NAMES: readonly string[] = [
  "",
  "read",
  "write",
  "flush",
  "discard",
  "write-zeroes",
  "get-id",
];

/**
 * Decodes a GET_ID buffer: up to 20 bytes, NUL-terminated unless all 20 are used.
 *
 * @param bytes the 20 bytes the device wrote
 * @returns the id string
 */
export function decodeDeviceId(bytes: Uint8Array): string {
  let end = bytes.indexOf(0);
  if (end < 0) end = bytes.length;
  return new TextDecoder("utf-8", { fatal: false }).decode(bytes.subarray(0, end));
}
