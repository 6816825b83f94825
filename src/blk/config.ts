/**
 * The virtio-blk configuration space (virtio 1.2, section 5.2.4), parsed
 * and checked.
 *
 * @module
 */

import { DeviceProtocolError } from "../errors.ts";
import {
  BLK_CONFIG,
  SECTOR_SIZE,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_GEOMETRY,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_F_WRITE_ZEROES,
} from "./spec.ts";

/** Bytes of config space this driver reads (through write_zeroes_may_unmap and its padding). */
export const VIRTIO_BLK_CONFIG_SIZE: number = BLK_CONFIG.SIZE;

/** The parsed virtio-blk configuration. Fields of features not negotiated are `undefined`. */
export interface VirtioBlkConfig {
  /** Capacity in 512-byte sectors. */
  readonly capacitySectors: bigint;
  /** Capacity in bytes. */
  readonly capacity: bigint;
  /** Largest single segment in bytes (SIZE_MAX; undefined when not offered or 0, i.e. unlimited). */
  readonly sizeMax: number | undefined;
  /** Most data segments in one request (SEG_MAX). */
  readonly segMax: number | undefined;
  /** Legacy geometry (GEOMETRY). */
  readonly geometry:
    | { readonly cylinders: number; readonly heads: number; readonly sectors: number }
    | undefined;
  /** Logical block size in bytes (BLK_SIZE; 512 when not offered). */
  readonly blkSize: number;
  /** I/O topology (TOPOLOGY). */
  readonly topology:
    | {
      /** log2 of logical blocks per physical block. */
      readonly physicalBlockExp: number;
      /** Offset of the first aligned logical block. */
      readonly alignmentOffset: number;
      /** Suggested minimum I/O size, in logical blocks. */
      readonly minIoSize: number;
      /** Optimal (and maximum) I/O size, in logical blocks. */
      readonly optIoSize: number;
    }
    | undefined;
  /** Cache mode (CONFIG_WCE): 0 writethrough, 1 writeback. */
  readonly writeback: number | undefined;
  /** Number of request queues (MQ; 1 when not offered). */
  readonly numQueues: number;
  /** Discard limits (DISCARD). 0 in a limit means "no limit". */
  readonly discard:
    | {
      readonly maxSectors: number;
      readonly maxSegments: number;
      readonly sectorAlignment: number;
    }
    | undefined;
  /** Write-zeroes limits (WRITE_ZEROES). 0 in a limit means "no limit". */
  readonly writeZeroes:
    | {
      readonly maxSectors: number;
      readonly maxSegments: number;
      readonly mayUnmap: boolean;
    }
    | undefined;
}

function bad(message: string): never {
  throw new DeviceProtocolError("bad-config", `invalid virtio-blk config: ${message}`);
}

/**
 * Parses and checks the config space. Impossible values (zero capacity, a
 * block size that is not a power of two, zero queues or segments) are
 * protocol violations.
 *
 * @param bytes at least {@linkcode VIRTIO_BLK_CONFIG_SIZE} bytes from offset 0
 * @param features the negotiated feature bits
 * @param options `allowZeroCapacity` for a re-read at run time (a volume may shrink to nothing)
 * @returns the parsed config
 * @throws {DeviceProtocolError} with violation `"bad-config"`
 */
export function parseBlkConfig(
  bytes: Uint8Array,
  features: bigint,
  options: { allowZeroCapacity?: boolean } = {},
): VirtioBlkConfig {
  if (bytes.byteLength < VIRTIO_BLK_CONFIG_SIZE) {
    bad(`${bytes.byteLength} bytes, need ${VIRTIO_BLK_CONFIG_SIZE}`);
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const has = (f: bigint) => (features & f) !== 0n;
  const capacitySectors = v.getBigUint64(BLK_CONFIG.CAPACITY, true);
  if (capacitySectors === 0n && !options.allowZeroCapacity) bad("capacity is 0");
  const capacity = capacitySectors * BigInt(SECTOR_SIZE);
  if (capacity > BigInt(Number.MAX_SAFE_INTEGER)) {
    bad(`capacity ${capacity} bytes is beyond 2^53 (the largest this driver addresses)`);
  }
  let sizeMax: number | undefined;
  if (has(VIRTIO_BLK_F_SIZE_MAX)) {
    // 0 means "no limit": qemu-storage-daemon offers SIZE_MAX with size_max 0.
    const v32 = v.getUint32(BLK_CONFIG.SIZE_MAX, true);
    if (v32 !== 0 && v32 < SECTOR_SIZE) bad(`size_max ${v32} is below one sector`);
    sizeMax = v32 === 0 ? undefined : v32;
  }
  let segMax: number | undefined;
  if (has(VIRTIO_BLK_F_SEG_MAX)) {
    segMax = v.getUint32(BLK_CONFIG.SEG_MAX, true);
    if (segMax === 0) bad("seg_max is 0");
  }
  const geometry = has(VIRTIO_BLK_F_GEOMETRY)
    ? {
      cylinders: v.getUint16(BLK_CONFIG.GEOMETRY, true),
      heads: v.getUint8(BLK_CONFIG.GEOMETRY + 2),
      sectors: v.getUint8(BLK_CONFIG.GEOMETRY + 3),
    }
    : undefined;
  let blkSize = SECTOR_SIZE;
  if (has(VIRTIO_BLK_F_BLK_SIZE)) {
    blkSize = v.getUint32(BLK_CONFIG.BLK_SIZE, true);
    if (blkSize < SECTOR_SIZE || blkSize > 1 << 20 || (blkSize & (blkSize - 1)) !== 0) {
      bad(`blk_size ${blkSize} is not a power of two from 512 to 1 MiB`);
    }
    if (capacity % BigInt(blkSize) !== 0n) {
      bad(`capacity ${capacity} bytes is not a multiple of blk_size ${blkSize}`);
    }
  }
  let topology: VirtioBlkConfig["topology"];
  if (has(VIRTIO_BLK_F_TOPOLOGY)) {
    topology = {
      physicalBlockExp: v.getUint8(BLK_CONFIG.TOPOLOGY),
      alignmentOffset: v.getUint8(BLK_CONFIG.TOPOLOGY + 1),
      minIoSize: v.getUint16(BLK_CONFIG.TOPOLOGY + 2, true),
      optIoSize: v.getUint32(BLK_CONFIG.TOPOLOGY + 4, true),
    };
    if (topology.physicalBlockExp > 16) bad(`physical_block_exp ${topology.physicalBlockExp} is too large`);
  }
  const writeback = has(VIRTIO_BLK_F_CONFIG_WCE) ? v.getUint8(BLK_CONFIG.WRITEBACK) : undefined;
  let numQueues = 1;
  if (has(VIRTIO_BLK_F_MQ)) {
    numQueues = v.getUint16(BLK_CONFIG.NUM_QUEUES, true);
    if (numQueues === 0) bad("num_queues is 0");
  }
  let discard: VirtioBlkConfig["discard"];
  if (has(VIRTIO_BLK_F_DISCARD)) {
    discard = {
      maxSectors: v.getUint32(BLK_CONFIG.DISCARD, true),
      maxSegments: v.getUint32(BLK_CONFIG.DISCARD + 4, true),
      sectorAlignment: v.getUint32(BLK_CONFIG.DISCARD + 8, true),
    };
  }
  let writeZeroes: VirtioBlkConfig["writeZeroes"];
  if (has(VIRTIO_BLK_F_WRITE_ZEROES)) {
    writeZeroes = {
      maxSectors: v.getUint32(BLK_CONFIG.WRITE_ZEROES, true),
      maxSegments: v.getUint32(BLK_CONFIG.WRITE_ZEROES + 4, true),
      mayUnmap: v.getUint8(BLK_CONFIG.WRITE_ZEROES + 8) !== 0,
    };
  }
  return Object.freeze({
    capacitySectors,
    capacity,
    sizeMax,
    segMax,
    geometry,
    blkSize,
    topology,
    writeback,
    numQueues,
    discard,
    writeZeroes,
  });
}
