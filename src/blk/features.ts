/**
 * The virtio-blk features negotiated with a device (virtio 1.2, 5.2.3 and
 * 6), as named booleans.
 *
 * @module
 */

import { describeFeatures, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED } from "../virtio/spec.ts";
import {
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_FEATURE_NAMES,
} from "./spec.ts";

/** The features negotiated with the device. */
export interface VirtioBlkFeatures {
  /** The raw negotiated bits. */
  readonly bits: bigint;
  /** Names of the negotiated bits. */
  readonly names: readonly string[];
  /** VIRTIO_F_EVENT_IDX. */
  readonly eventIdx: boolean;
  /** VIRTIO_F_INDIRECT_DESC. */
  readonly indirect: boolean;
  /** VIRTIO_F_RING_PACKED. */
  readonly packed: boolean;
  /** VIRTIO_BLK_F_FLUSH. */
  readonly flush: boolean;
  /** VIRTIO_BLK_F_DISCARD. */
  readonly discard: boolean;
  /** VIRTIO_BLK_F_WRITE_ZEROES. */
  readonly writeZeroes: boolean;
  /** VIRTIO_BLK_F_RO. */
  readonly readOnly: boolean;
  /** VIRTIO_BLK_F_MQ. */
  readonly multiQueue: boolean;
}

/**
 * Names the negotiated bits.
 *
 * @param bits the negotiated feature bits
 * @returns them as named booleans (frozen)
 */
export function featuresOf(bits: bigint): VirtioBlkFeatures {
  const has = (f: bigint) => (bits & f) !== 0n;
  return Object.freeze({
    bits,
    names: Object.freeze(describeFeatures(bits, VIRTIO_BLK_FEATURE_NAMES)),
    eventIdx: has(VIRTIO_F_EVENT_IDX),
    indirect: has(VIRTIO_F_INDIRECT_DESC),
    packed: has(VIRTIO_F_RING_PACKED),
    flush: has(VIRTIO_BLK_F_FLUSH),
    discard: has(VIRTIO_BLK_F_DISCARD),
    writeZeroes: has(VIRTIO_BLK_F_WRITE_ZEROES),
    readOnly: has(VIRTIO_BLK_F_RO),
    multiQueue: has(VIRTIO_BLK_F_MQ),
  });
}
