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

/** Virtio device types (virtio 1.2 §5) by id, for naming a function that is not virtio-blk. */
const VIRTIO_DEVICE_NAMES: Readonly<Record<number, string>> = {
  1: "virtio-net",
  2: "virtio-blk",
  3: "virtio-console",
  4: "virtio-rng",
  5: "virtio-balloon",
  8: "virtio-scsi",
  9: "virtio-9p",
  16: "virtio-gpu",
  18: "virtio-input",
  19: "virtio-vsock",
  20: "virtio-crypto",
  26: "virtio-fs",
  27: "virtio-pmem",
  29: "virtio-mem",
};

/** Transitional (legacy-capable) virtio PCI device ids (virtio 1.2 §4.1.2.1) and their device types. */
const TRANSITIONAL_TYPES: Readonly<Record<number, number>> = {
  0x1000: 1,
  0x1001: 2,
  0x1002: 5,
  0x1003: 3,
  0x1004: 8,
  0x1005: 4,
  0x1009: 9,
};

/** PCI base classes (the class code's top byte), for naming a function that is not virtio. */
const PCI_CLASSES: Readonly<Record<number, string>> = {
  0x01: "a storage controller",
  0x02: "a network controller",
  0x03: "a display controller",
  0x04: "a multimedia device",
  0x06: "a bridge",
  0x0c: "a serial bus controller (USB, SMBus…)",
};

/**
 * Whether a PCI function is a virtio-blk device (vendor 0x1af4, device
 * 0x1042 modern or 0x1001 transitional).
 *
 * @param vendor the vendor id
 * @param device the device id
 * @returns true for virtio-blk
 */
export function isVirtioBlk(vendor: number, device: number): boolean {
  return vendor === VIRTIO_PCI_VENDOR &&
    (device === VIRTIO_PCI_DEVICE_BLK || device === VIRTIO_PCI_DEVICE_BLK_TRANSITIONAL);
}

/**
 * What a PCI function is, for a message: `1af4:1053 (virtio-vsock)`,
 * `8086:0d57 (a bridge)`.
 *
 * @param vendor the vendor id
 * @param device the device id
 * @param classCode the 24-bit class code (base class, subclass, programming interface)
 * @returns the ids in lspci's form and a name
 */
export function describePciFunction(vendor: number, device: number, classCode: number): string {
  const ids = `${vendor.toString(16).padStart(4, "0")}:${device.toString(16).padStart(4, "0")}`;
  if (vendor === VIRTIO_PCI_VENDOR) {
    const type = device >= 0x1040 && device <= 0x107f ? device - 0x1040 : TRANSITIONAL_TYPES[device];
    const name = type === undefined ? undefined : VIRTIO_DEVICE_NAMES[type] ?? `virtio device type ${type}`;
    return `${ids} (${name ?? "a virtio vendor id, not a virtio device"})`;
  }
  const base = PCI_CLASSES[classCode >>> 16];
  return `${ids} (${base ?? `PCI class 0x${classCode.toString(16).padStart(6, "0")}`})`;
}

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
