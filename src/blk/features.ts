/**
 * virtio-blk feature bits (virtio 1.2, section 5.2.3).
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
