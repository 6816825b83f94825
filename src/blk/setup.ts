/**
 * Bringing a virtio-blk device up on a transport (virtio 1.2, 3.1.1 driver
 * initialization, and 5.2.5 for virtio-blk): agree on features, read and
 * check the config space, size the queues and their request slots, share
 * memory with the device, set the rings up and start them. Split in steps
 * so that a reconnect can redo the per-connection ones over the same memory.
 *
 * @module
 */

import { FeatureNegotiationError, IncompatibleDeviceError, InvalidArgumentError } from "../errors.ts";
import { BufferPool } from "../memory/buffer_pool.ts";
import type { SharedRegion } from "../memory/region.ts";
import type { InterruptSource, QueueConfig, Transport } from "../transport/transport.ts";
import {
  describeFeatures,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from "../virtio/spec.ts";
import { VirtqueueLayout } from "../virtqueue/layout.ts";
import { PackedRing } from "../virtqueue/packed.ts";
import type { Ring } from "../virtqueue/ring.ts";
import { SplitRing } from "../virtqueue/split.ts";
import { parseBlkConfig, VIRTIO_BLK_CONFIG_SIZE, type VirtioBlkConfig } from "./config.ts";
import type { ResolvedOptions } from "./options.ts";
import { SLOT } from "./request.ts";
import {
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_GEOMETRY,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_FEATURE_NAMES,
} from "./spec.ts";

/** Every virtio-blk feature this driver can use (ring features are added per options). */
const DRIVER_FEATURES = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_RO | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_SEG_MAX |
  VIRTIO_BLK_F_SIZE_MAX | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_TOPOLOGY | VIRTIO_BLK_F_MQ | VIRTIO_BLK_F_DISCARD |
  VIRTIO_BLK_F_WRITE_ZEROES | VIRTIO_BLK_F_GEOMETRY | VIRTIO_BLK_F_CONFIG_WCE;

/** What was agreed with the device, and the sizes that follow from it. */
export interface Negotiated {
  /** The negotiated feature bits. */
  readonly features: bigint;
  /** The device's config, checked. */
  readonly config: VirtioBlkConfig;
  /** Where each queue's rings and slots go. */
  readonly layout: VirtqueueLayout;
  /** Most data segments in one request. */
  readonly maxSegments: number;
  /** Entries per indirect table (0 without indirect descriptors). */
  readonly tableEntries: number;
}

/**
 * Agrees on features (3.1.1 steps 4–6), reads the config space (5.2.4) and
 * sizes the queues for the options.
 *
 * @param transport a connected transport
 * @param o the resolved options
 * @returns the agreement
 */
export async function negotiate(transport: Transport, o: ResolvedOptions): Promise<Negotiated> {
  let wanted = DRIVER_FEATURES;
  if (o.eventIdx) wanted |= VIRTIO_F_EVENT_IDX;
  if (o.indirect) wanted |= VIRTIO_F_INDIRECT_DESC;
  if (o.ring === "packed") {
    if ((transport.deviceFeatures & VIRTIO_F_RING_PACKED) === 0n) {
      throw new FeatureNegotiationError(
        "packed rings were asked for, but the device does not offer VIRTIO_F_RING_PACKED",
      );
    }
    wanted |= VIRTIO_F_RING_PACKED;
  }
  if ((transport.deviceFeatures & VIRTIO_F_VERSION_1) === 0n) {
    throw new FeatureNegotiationError(
      "the device does not offer VIRTIO_F_VERSION_1 (legacy devices are not supported)",
    );
  }
  const features = await transport.negotiateFeatures(wanted);
  const config = parseBlkConfig(await transport.readConfig(0, VIRTIO_BLK_CONFIG_SIZE), features);
  const offered = Math.min(config.numQueues, transport.maxQueues);
  if (o.numQueues > offered) {
    throw new InvalidArgumentError(`numQueues ${o.numQueues} is more than the device offers (${offered})`);
  }
  if (o.queueSize > transport.maxQueueSize) {
    throw new InvalidArgumentError(`queueSize ${o.queueSize} is above the device's maximum ${transport.maxQueueSize}`);
  }
  const indirect = (features & VIRTIO_F_INDIRECT_DESC) !== 0n;
  // A chain is header + data segments + status, never longer than the ring
  // (nor than an indirect table, which has as many entries as the ring).
  const maxSegments = Math.max(1, Math.min(config.segMax ?? Infinity, o.queueSize - 2, o.maxSegments ?? Infinity));
  const tableEntries = indirect ? Math.min(o.queueSize, maxSegments + 2) : 0;
  const slotSize = SLOT.SIZE + Math.ceil((16 * tableEntries) / 64) * 64;
  const layout = new VirtqueueLayout(o.numQueues, o.queueSize, { reqSize: slotSize, format: o.ring });
  return { features, config, layout, maxSegments, tableEntries };
}

/**
 * On a reconnect (a back-end restart): agrees on exactly the features of the
 * first connection — the rings and request slots were sized for them — and
 * checks that the device is the one the driver was using: the same block
 * size, at least as many queues, segments and bytes per segment, and a
 * capacity not smaller than the one in force (unless `allowShrink`).
 *
 * @param transport the new connection
 * @param n what the first connection agreed on
 * @param current the configuration in force before the back-end went away
 * @param allowShrink accept a smaller capacity
 * @returns the device's configuration now
 * @throws {IncompatibleDeviceError} naming what differs
 */
export async function renegotiate(
  transport: Transport,
  n: Negotiated,
  current: VirtioBlkConfig,
  allowShrink: boolean,
): Promise<VirtioBlkConfig> {
  if ((transport.deviceFeatures & VIRTIO_BLK_F_RO) !== 0n && (n.features & VIRTIO_BLK_F_RO) === 0n) {
    throw new IncompatibleDeviceError("the back-end came back read-only");
  }
  const gone = n.features & ~transport.deviceFeatures;
  if (gone !== 0n) {
    throw new IncompatibleDeviceError(
      `the back-end came back without ${describeFeatures(gone, VIRTIO_BLK_FEATURE_NAMES).join(", ")}`,
    );
  }
  let features: bigint;
  try {
    features = await transport.negotiateFeatures(n.features);
  } catch (e) {
    if (e instanceof FeatureNegotiationError) throw new IncompatibleDeviceError(e.message);
    throw e;
  }
  if (features !== n.features) {
    throw new IncompatibleDeviceError(
      `the back-end agreed on features 0x${features.toString(16)}, not 0x${n.features.toString(16)}`,
    );
  }
  const config = parseBlkConfig(await transport.readConfig(0, VIRTIO_BLK_CONFIG_SIZE), features, {
    allowZeroCapacity: allowShrink,
  });
  const differs = (what: string) => {
    throw new IncompatibleDeviceError(`the back-end came back with ${what}`);
  };
  if (config.blkSize !== current.blkSize) differs(`block size ${config.blkSize} (was ${current.blkSize})`);
  if (config.capacity < current.capacity && !allowShrink) {
    differs(`a capacity of ${config.capacity} bytes (was ${current.capacity}; allowShrink accepts that)`);
  }
  const queues = Math.min(config.numQueues, transport.maxQueues);
  if (queues < n.layout.numQueues) differs(`${queues} queues (${n.layout.numQueues} in use)`);
  if (n.layout.queueSize > transport.maxQueueSize) differs(`queues of at most ${transport.maxQueueSize} entries`);
  if (config.segMax !== undefined && config.segMax < n.maxSegments) {
    differs(`seg_max ${config.segMax} (requests of ${n.maxSegments} segments are allowed)`);
  }
  if ((config.sizeMax ?? Infinity) < (current.sizeMax ?? Infinity)) {
    differs(`size_max ${config.sizeMax} (was ${current.sizeMax ?? "unlimited"})`);
  }
  return config;
}

/** The device-reachable memory of a connection: queues and the buffer pool. */
export interface DeviceMemory {
  /** Rings and request slots of every queue. */
  readonly queueRegion: SharedRegion;
  /** Caller buffers and bounce buffers. */
  readonly pool: BufferPool;
}

/**
 * Allocates the memory the device will reach (not yet shared with it).
 *
 * @param transport the transport (it knows what kind of memory it can share)
 * @param n the agreement
 * @param poolSize bytes of the buffer pool
 * @returns the memory; the caller closes its regions
 */
export function allocateMemory(transport: Transport, n: Negotiated, poolSize: number): DeviceMemory {
  const queueRegion = transport.createRegion(n.layout.totalSize, "virtio-blk-queues");
  try {
    return { queueRegion, pool: new BufferPool(transport.createRegion(poolSize, "virtio-blk-buffers")) };
  } catch (e) {
    queueRegion.close();
    throw e;
  }
}

/** A started device: its rings and interrupt source. */
export interface Started {
  /** One ring per queue. */
  readonly rings: Ring[];
  /** Wakes the completion loop (and reports hang-ups). */
  readonly interrupts: InterruptSource;
}

/**
 * Shares the memory with the device, builds fresh rings over it, and starts
 * the queues (3.1.1 steps 7–8).
 *
 * @param transport the transport
 * @param n the agreement
 * @param mem the memory from {@linkcode allocateMemory}
 * @param o the resolved options
 * @returns the rings and the interrupt source (the caller closes it before the transport)
 */
export async function startQueues(
  transport: Transport,
  n: Negotiated,
  mem: DeviceMemory,
  o: ResolvedOptions,
): Promise<Started> {
  const { layout, features } = n;
  const { queueRegion, pool } = mem;
  await transport.mapMemRegion(queueRegion);
  await transport.mapMemRegion(pool.region);
  const eventIdx = (features & VIRTIO_F_EVENT_IDX) !== 0n;
  const rings: Ring[] = [];
  const queueConfigs: QueueConfig[] = [];
  for (let i = 0; i < layout.numQueues; i++) {
    const off = layout.queueOffset(i);
    const ringOptions = {
      layout,
      memory: queueRegion.bytes.subarray(off, off + layout.stride),
      iova: queueRegion.iova + off,
      eventIdx,
      translate: (b: Uint8Array) => pool.iovaOf(b),
      name: `queue ${i}`,
      strictUsedLength: o.strictUsedLength,
      indirect: n.tableEntries > 0
        ? { slotOffset: SLOT.SIZE, maxDescriptors: n.tableEntries, threshold: o.indirectThreshold }
        : undefined,
      // A queue handed over goes on where its ring stands (the memory is kept).
      resume: transport.ringPositions?.[i],
    };
    const ring = layout.format === "packed" ? new PackedRing(ringOptions) : new SplitRing(ringOptions);
    rings.push(ring);
    queueConfigs.push({
      index: i,
      size: layout.queueSize,
      format: layout.format,
      descIova: ring.descTableIova,
      driverIova: ring.driverAreaIova,
      deviceIova: ring.deviceAreaIova,
    });
  }
  await transport.setupQueues(queueConfigs);
  // Poll mode waits on no interrupt: the queues' signals are not watched.
  const interrupts = await transport.createInterruptSource({ queues: o.mode === "eventfd" });
  return { rings, interrupts };
}
