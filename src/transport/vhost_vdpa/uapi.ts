/**
 * The vhost / vhost-vdpa kernel interface (`<linux/vhost.h>`,
 * `<linux/vhost_types.h>`): ioctl numbers and argument encodings. Pure
 * functions over bytes, tested against values compiled from the headers.
 *
 * @module
 */

import { io, ior, iow, iowr } from "../linux/ioctl.ts";

const VHOST_VIRTIO = 0xaf;

/** vhost and vhost-vdpa ioctl requests. */
export const VHOST = {
  GET_FEATURES: ior(VHOST_VIRTIO, 0x00, 8),
  SET_FEATURES: iow(VHOST_VIRTIO, 0x00, 8),
  SET_OWNER: io(VHOST_VIRTIO, 0x01),
  SET_VRING_NUM: iow(VHOST_VIRTIO, 0x10, 8),
  SET_VRING_ADDR: iow(VHOST_VIRTIO, 0x11, 40),
  SET_VRING_BASE: iow(VHOST_VIRTIO, 0x12, 8),
  GET_VRING_BASE: iowr(VHOST_VIRTIO, 0x12, 8),
  SET_VRING_KICK: iow(VHOST_VIRTIO, 0x20, 8),
  SET_VRING_CALL: iow(VHOST_VIRTIO, 0x21, 8),
  SET_BACKEND_FEATURES: iow(VHOST_VIRTIO, 0x25, 8),
  GET_BACKEND_FEATURES: ior(VHOST_VIRTIO, 0x26, 8),
  VDPA_GET_DEVICE_ID: ior(VHOST_VIRTIO, 0x70, 4),
  VDPA_GET_STATUS: ior(VHOST_VIRTIO, 0x71, 1),
  VDPA_SET_STATUS: iow(VHOST_VIRTIO, 0x72, 1),
  VDPA_GET_CONFIG: ior(VHOST_VIRTIO, 0x73, 8),
  VDPA_SET_CONFIG: iow(VHOST_VIRTIO, 0x74, 8),
  VDPA_SET_VRING_ENABLE: iow(VHOST_VIRTIO, 0x75, 8),
  VDPA_GET_VRING_NUM: ior(VHOST_VIRTIO, 0x76, 2),
  VDPA_SET_CONFIG_CALL: iow(VHOST_VIRTIO, 0x77, 4),
  VDPA_GET_IOVA_RANGE: ior(VHOST_VIRTIO, 0x78, 16),
  VDPA_GET_CONFIG_SIZE: ior(VHOST_VIRTIO, 0x79, 4),
  VDPA_GET_VQS_COUNT: ior(VHOST_VIRTIO, 0x80, 4),
} as const;

/** Backend feature bit: IOTLB messages in the `vhost_msg_v2` format. */
export const VHOST_BACKEND_F_IOTLB_MSG_V2: bigint = 1n << 1n;
/** `vhost_msg_v2.type` for an IOTLB message. */
export const VHOST_IOTLB_MSG_V2 = 2;
/** IOTLB message: add a mapping. */
export const VHOST_IOTLB_UPDATE = 2;
/** IOTLB message: remove a mapping. */
export const VHOST_IOTLB_INVALIDATE = 3;
/** IOTLB permission: read and write. */
export const VHOST_ACCESS_RW = 3;
/** Size of `struct vhost_msg_v2`. */
export const VHOST_MSG_V2_SIZE = 72;

/** Virtio device id of a block device. */
export const VIRTIO_ID_BLOCK = 2;

/**
 * A u64 ioctl argument.
 *
 * @param v the value
 * @returns 8 bytes
 */
export function u64Arg(v: bigint): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
}

/**
 * `struct vhost_vring_state { unsigned int index, num; }` (also `vhost_vring_file { index; int fd; }`).
 *
 * @param index queue index
 * @param num the value (or a descriptor)
 * @returns 8 bytes
 */
export function vringState(index: number, num: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(8);
  const v = new DataView(b.buffer);
  v.setUint32(0, index, true);
  v.setUint32(4, num >>> 0, true);
  return b;
}

/**
 * `struct vhost_vring_addr`: index, flags, then the descriptor, used and
 * available ring addresses (IOVAs for vhost-vdpa) and the log address.
 *
 * @param index queue index
 * @param desc descriptor table
 * @param used device area
 * @param avail driver area
 * @returns 40 bytes
 */
export function vringAddr(index: number, desc: number, used: number, avail: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(40);
  const v = new DataView(b.buffer);
  v.setUint32(0, index, true);
  v.setBigUint64(8, BigInt(desc), true);
  v.setBigUint64(16, BigInt(used), true);
  v.setBigUint64(24, BigInt(avail), true);
  return b;
}

/**
 * An IOTLB message (`struct vhost_msg_v2` with a `vhost_iotlb_msg`), written
 * to the vhost-vdpa descriptor to map or unmap memory for the device.
 *
 * @param type {@linkcode VHOST_IOTLB_UPDATE} or {@linkcode VHOST_IOTLB_INVALIDATE}
 * @param iova the device address
 * @param size bytes
 * @param uaddr the process address (UPDATE)
 * @returns 72 bytes
 */
export function iotlbMsg(type: number, iova: number, size: number, uaddr: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(VHOST_MSG_V2_SIZE);
  const v = new DataView(b.buffer);
  v.setUint32(0, VHOST_IOTLB_MSG_V2, true);
  v.setUint32(4, 0, true); // asid
  v.setBigUint64(8, BigInt(iova), true);
  v.setBigUint64(16, BigInt(size), true);
  v.setBigUint64(24, BigInt(uaddr), true);
  v.setUint8(32, type === VHOST_IOTLB_UPDATE ? VHOST_ACCESS_RW : 0);
  v.setUint8(33, type);
  return b;
}

/**
 * An `int` argument (VHOST_VDPA_SET_CONFIG_CALL's eventfd, -1 to detach).
 *
 * @param n the value
 * @returns 4 bytes
 */
export function int32Arg(n: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(new Int32Array([n]).buffer);
}

/**
 * `struct vhost_vdpa_config { u32 off; u32 len; u8 buf[len]; }` for GET_CONFIG and SET_CONFIG.
 *
 * @param offset config offset
 * @param length bytes
 * @returns 8 + length bytes (the kernel fills `buf`)
 */
export function vdpaConfig(offset: number, length: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(8 + length);
  const v = new DataView(b.buffer);
  v.setUint32(0, offset, true);
  v.setUint32(4, length, true);
  return b;
}
