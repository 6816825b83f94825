/**
 * Device-independent virtio definitions, written once and shared by the
 * driver, the transports and the mock device: the reserved feature bits
 * (virtio 1.2, section 6) as bigint masks with their names, and the device
 * status bits (section 2.1).
 *
 * @module
 */

/** Bit number → mask. */
function bit(n: number): bigint {
  return 1n << BigInt(n);
}

/** VIRTIO_F_INDIRECT_DESC (28): descriptors may point to descriptor tables. */
export const VIRTIO_F_INDIRECT_DESC: bigint = bit(28);
/** VIRTIO_F_EVENT_IDX (29): used_event / avail_event notification suppression. */
export const VIRTIO_F_EVENT_IDX: bigint = bit(29);
/** VIRTIO_F_VERSION_1 (32): virtio 1.x (little-endian, modern layout). */
export const VIRTIO_F_VERSION_1: bigint = bit(32);
/** VIRTIO_F_ACCESS_PLATFORM (33): the device accesses memory through an IOMMU. */
export const VIRTIO_F_ACCESS_PLATFORM: bigint = bit(33);
/** VIRTIO_F_RING_PACKED (34): packed virtqueues. */
export const VIRTIO_F_RING_PACKED: bigint = bit(34);

/** Names of device-independent bits, for {@linkcode describeFeatures}. */
export const VIRTIO_FEATURE_NAMES: Readonly<Record<number, string>> = {
  24: "NOTIFY_ON_EMPTY",
  26: "LOG_ALL",
  27: "ANY_LAYOUT",
  28: "INDIRECT_DESC",
  29: "EVENT_IDX",
  32: "VERSION_1",
  33: "ACCESS_PLATFORM",
  34: "RING_PACKED",
  35: "IN_ORDER",
  36: "ORDER_PLATFORM",
  37: "SR_IOV",
  38: "NOTIFICATION_DATA",
  40: "RING_RESET",
};

/**
 * Names the set bits of `features`.
 *
 * @param features a feature mask
 * @param deviceNames names of device-specific bits (0–23)
 * @returns e.g. `["VERSION_1", "FLUSH", "bit 41"]`
 */
export function describeFeatures(
  features: bigint,
  deviceNames: Readonly<Record<number, string>> = {},
): string[] {
  const names: string[] = [];
  for (let b = 0; b < 64; b++) {
    if ((features >> BigInt(b)) & 1n) {
      names.push(deviceNames[b] ?? VIRTIO_FEATURE_NAMES[b] ?? `bit ${b}`);
    }
  }
  return names;
}

/** Virtio device status bits (virtio 1.2, section 2.1). */
export const VIRTIO_STATUS = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  NEEDS_RESET: 0x40,
  FAILED: 0x80,
} as const;
