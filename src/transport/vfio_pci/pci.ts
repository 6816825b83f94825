/**
 * PCI configuration space, as a virtio-pci driver reads it: the capability
 * list with its virtio capabilities (common, notify, ISR, device config) and
 * MSI-X. Pure functions over the config bytes; every pointer the device
 * gives is checked (inside the standard header range, aligned, no loops).
 *
 * @module
 */

import { DeviceProtocolError } from "../../errors.ts";

/** Offsets in the PCI config header. */
export const PCI = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  CAPABILITY_LIST: 0x34,
  COMMAND_MEMORY: 0x2,
  COMMAND_MASTER: 0x4,
  STATUS_CAP_LIST: 0x10,
  CAP_ID_MSIX: 0x11,
  CAP_ID_VENDOR: 0x09,
} as const;

/** The virtio PCI vendor id. */
export const VIRTIO_PCI_VENDOR = 0x1af4;
/** Modern virtio-blk PCI device id (0x1040 + 2). */
export const VIRTIO_PCI_DEVICE_BLK = 0x1042;
/** Transitional virtio-blk PCI device id. */
export const VIRTIO_PCI_DEVICE_BLK_TRANSITIONAL = 0x1001;

/** virtio_pci_cap.cfg_type values. */
export const VIRTIO_PCI_CAP = {
  COMMON: 1,
  NOTIFY: 2,
  ISR: 3,
  DEVICE: 4,
  PCI: 5,
} as const;

/** One virtio vendor capability. */
export interface VirtioPciCap {
  /** COMMON, NOTIFY, ISR, DEVICE, PCI… */
  cfgType: number;
  /** The BAR it lives in (0–5). */
  bar: number;
  /** Offset within the BAR. */
  offset: number;
  /** Length in bytes. */
  length: number;
  /** NOTIFY only: `notify_off_multiplier`. */
  notifyOffMultiplier?: number;
}

/** What the capability list says. */
export interface PciCapabilities {
  /** The virtio capabilities, first of each type kept (the spec's "preferred" one). */
  virtio: Map<number, VirtioPciCap>;
  /** MSI-X: number of table entries, when present. */
  msixTableSize?: number;
}

function bad(message: string): never {
  throw new DeviceProtocolError("bad-pci-config", `PCI config space: ${message}`);
}

/**
 * Walks the capability list of a config space.
 *
 * @param config at least the 256-byte standard config space
 * @returns the virtio capabilities and MSI-X
 * @throws {DeviceProtocolError} with violation `bad-pci-config` for pointers outside the config space, loops, or truncated capabilities
 */
export function parsePciCapabilities(config: Uint8Array): PciCapabilities {
  if (config.byteLength < 256) bad(`${config.byteLength} bytes, need 256`);
  const v = new DataView(config.buffer, config.byteOffset, config.byteLength);
  const out: PciCapabilities = { virtio: new Map() };
  if ((v.getUint16(PCI.STATUS, true) & PCI.STATUS_CAP_LIST) === 0) return out;
  let ptr = v.getUint8(PCI.CAPABILITY_LIST) & 0xfc;
  const seen = new Set<number>();
  while (ptr !== 0) {
    if (ptr < 0x40 || ptr > 0xfc) bad(`capability pointer 0x${ptr.toString(16)} outside 0x40..0xfc`);
    if (seen.has(ptr)) bad(`capability list loops at 0x${ptr.toString(16)}`);
    if (seen.size >= 48) bad("more than 48 capabilities");
    seen.add(ptr);
    const id = v.getUint8(ptr), next = v.getUint8(ptr + 1) & 0xfc;
    if (id === PCI.CAP_ID_VENDOR) {
      const len = v.getUint8(ptr + 2);
      if (len < 16 || ptr + len > 256) bad(`virtio capability at 0x${ptr.toString(16)} has length ${len}`);
      const cap: VirtioPciCap = {
        cfgType: v.getUint8(ptr + 3),
        bar: v.getUint8(ptr + 4),
        offset: v.getUint32(ptr + 8, true),
        length: v.getUint32(ptr + 12, true),
      };
      if (cap.cfgType === VIRTIO_PCI_CAP.NOTIFY) {
        if (len < 20) bad("notify capability without notify_off_multiplier");
        cap.notifyOffMultiplier = v.getUint32(ptr + 16, true);
      }
      if (cap.bar <= 5 && !out.virtio.has(cap.cfgType)) out.virtio.set(cap.cfgType, cap);
    } else if (id === PCI.CAP_ID_MSIX) {
      out.msixTableSize = (v.getUint16(ptr + 2, true) & 0x7ff) + 1;
    }
    ptr = next;
  }
  return out;
}

/** Offsets in `struct virtio_pci_common_cfg` (virtio 1.2, 4.1.4.3). */
export const COMMON_CFG = {
  DEVICE_FEATURE_SELECT: 0x00,
  DEVICE_FEATURE: 0x04,
  DRIVER_FEATURE_SELECT: 0x08,
  DRIVER_FEATURE: 0x0c,
  CONFIG_MSIX_VECTOR: 0x10,
  NUM_QUEUES: 0x12,
  DEVICE_STATUS: 0x14,
  CONFIG_GENERATION: 0x15,
  QUEUE_SELECT: 0x16,
  QUEUE_SIZE: 0x18,
  QUEUE_MSIX_VECTOR: 0x1a,
  QUEUE_ENABLE: 0x1c,
  QUEUE_NOTIFY_OFF: 0x1e,
  QUEUE_DESC: 0x20,
  QUEUE_DRIVER: 0x28,
  QUEUE_DEVICE: 0x30,
  /** Size of the fields this driver uses. */
  SIZE: 0x38,
} as const;

/** "No MSI-X vector" in the common config. */
export const VIRTIO_MSI_NO_VECTOR = 0xffff;
