/**
 * virtio-blk, as the spec defines it (virtio 1.2, section 5.2), written once
 * and shared by the driver and the mock device: feature bits (5.2.3), the
 * config space layout (5.2.4), request types and status values (5.2.6).
 *
 * @module
 */

/** VIRTIO_BLK_F_SIZE_MAX (1): size_max is valid. */
export const VIRTIO_BLK_F_SIZE_MAX: bigint = 1n << 1n;
/** VIRTIO_BLK_F_SEG_MAX (2): seg_max is valid. */
export const VIRTIO_BLK_F_SEG_MAX: bigint = 1n << 2n;
/** VIRTIO_BLK_F_GEOMETRY (4): geometry is valid. */
export const VIRTIO_BLK_F_GEOMETRY: bigint = 1n << 4n;
/** VIRTIO_BLK_F_RO (5): the device is read-only. */
export const VIRTIO_BLK_F_RO: bigint = 1n << 5n;
/** VIRTIO_BLK_F_BLK_SIZE (6): blk_size is valid. */
export const VIRTIO_BLK_F_BLK_SIZE: bigint = 1n << 6n;
/** VIRTIO_BLK_F_FLUSH (9): flush requests. */
export const VIRTIO_BLK_F_FLUSH: bigint = 1n << 9n;
/** VIRTIO_BLK_F_TOPOLOGY (10): topology is valid. */
export const VIRTIO_BLK_F_TOPOLOGY: bigint = 1n << 10n;
/** VIRTIO_BLK_F_CONFIG_WCE (11): writeback mode in config. */
export const VIRTIO_BLK_F_CONFIG_WCE: bigint = 1n << 11n;
/** VIRTIO_BLK_F_MQ (12): num_queues is valid. */
export const VIRTIO_BLK_F_MQ: bigint = 1n << 12n;
/** VIRTIO_BLK_F_DISCARD (13): discard requests. */
export const VIRTIO_BLK_F_DISCARD: bigint = 1n << 13n;
/** VIRTIO_BLK_F_WRITE_ZEROES (14): write-zeroes requests. */
export const VIRTIO_BLK_F_WRITE_ZEROES: bigint = 1n << 14n;

/** Names of the virtio-blk bits, for `describeFeatures`. */
export const VIRTIO_BLK_FEATURE_NAMES: Readonly<Record<number, string>> = {
  1: "SIZE_MAX",
  2: "SEG_MAX",
  4: "GEOMETRY",
  5: "RO",
  6: "BLK_SIZE",
  9: "FLUSH",
  10: "TOPOLOGY",
  11: "CONFIG_WCE",
  12: "MQ",
  13: "DISCARD",
  14: "WRITE_ZEROES",
  15: "LIFETIME",
  16: "SECURE_ERASE",
  17: "ZONED",
};

// ---------------------------------------------------------------- requests (5.2.6)

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

/** Human names of the request types, for messages. */
export const VIRTIO_BLK_T_NAMES: Readonly<Record<number, string>> = {
  [VIRTIO_BLK_T_IN]: "read",
  [VIRTIO_BLK_T_OUT]: "write",
  [VIRTIO_BLK_T_FLUSH]: "flush",
  [VIRTIO_BLK_T_GET_ID]: "get-id",
  [VIRTIO_BLK_T_DISCARD]: "discard",
  [VIRTIO_BLK_T_WRITE_ZEROES]: "write-zeroes",
};

/** VIRTIO_BLK_S_OK. */
export const VIRTIO_BLK_S_OK = 0;
/** VIRTIO_BLK_S_IOERR. */
export const VIRTIO_BLK_S_IOERR = 1;
/** VIRTIO_BLK_S_UNSUPP. */
export const VIRTIO_BLK_S_UNSUPP = 2;

/** Flag of a write-zeroes segment: the device may unmap (deallocate) the range. */
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;

/** Length of the device id string (VIRTIO_BLK_ID_BYTES). */
export const VIRTIO_BLK_ID_BYTES = 20;

/** The unit of `sector` fields and of the capacity: 512 bytes, whatever the block size. */
export const SECTOR_SIZE = 512;

// --------------------------------------------------------- config space (5.2.4)

/** Byte offsets of the fields of `struct virtio_blk_config`. */
export const BLK_CONFIG = {
  /** le64 capacity, in 512-byte sectors. */
  CAPACITY: 0,
  /** le32 size_max (SIZE_MAX). */
  SIZE_MAX: 8,
  /** le32 seg_max (SEG_MAX). */
  SEG_MAX: 12,
  /** le16 cylinders, u8 heads, u8 sectors (GEOMETRY). */
  GEOMETRY: 16,
  /** le32 blk_size (BLK_SIZE). */
  BLK_SIZE: 20,
  /** u8 physical_block_exp, u8 alignment_offset, le16 min_io_size, le32 opt_io_size (TOPOLOGY). */
  TOPOLOGY: 24,
  /** u8 writeback (CONFIG_WCE). */
  WRITEBACK: 32,
  /** le16 num_queues (MQ). */
  NUM_QUEUES: 34,
  /** le32 max_discard_sectors, max_discard_seg, discard_sector_alignment (DISCARD). */
  DISCARD: 36,
  /** le32 max_write_zeroes_sectors, max_write_zeroes_seg; u8 write_zeroes_may_unmap (WRITE_ZEROES). */
  WRITE_ZEROES: 48,
  /** Bytes this driver reads (through write_zeroes_may_unmap, padded to 60). */
  SIZE: 60,
} as const;
