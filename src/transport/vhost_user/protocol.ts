/**
 * The vhost-user wire protocol (QEMU docs/interop/vhost-user.rst): request
 * codes, flags, feature bits, and the encoding of each payload this driver
 * sends or receives. Pure functions over bytes, tested against golden bytes.
 *
 * Every message is a 12-byte header (`u32 request`, `u32 flags`, `u32 size`)
 * followed by `size` bytes of payload, all little-endian; file descriptors
 * travel as SCM_RIGHTS ancillary data.
 *
 * @module
 */

/** Front-end request codes. */
export const VhostUserRequest = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SET_BACKEND_REQ_FD: 21,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
} as const;

/** Names of request codes, for messages. */
export const VHOST_USER_REQUEST_NAMES: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(VhostUserRequest).map(([k, v]) => [v, k]),
);

/**
 * Back-end request codes: what a back-end may send on the channel it was
 * given with SET_BACKEND_REQ_FD.
 */
export const VhostUserBackendRequest = {
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
  VRING_CALL: 4,
  VRING_ERR: 5,
  SHARED_OBJECT_ADD: 6,
  SHARED_OBJECT_REMOVE: 7,
  SHARED_OBJECT_LOOKUP: 8,
} as const;

/** Names of back-end request codes, for messages and statistics. */
export const VHOST_USER_BACKEND_REQUEST_NAMES: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(VhostUserBackendRequest).map(([k, v]) => [v, k]),
);

/** Header flags: protocol version 1 in bits 0–1. */
export const VHOST_USER_VERSION = 0x1;
/** Header flag: this message is a reply. */
export const VHOST_USER_REPLY_MASK = 0x4;
/** Header flag: the front-end wants a reply (REPLY_ACK). */
export const VHOST_USER_NEED_REPLY_MASK = 0x8;
/** Size of the message header. */
export const VHOST_USER_HEADER_SIZE = 12;
/** The largest payload this driver accepts in a reply. */
export const VHOST_USER_MAX_PAYLOAD = 4096;
/** The largest config space payload (VHOST_USER_MAX_CONFIG_SIZE). */
export const VHOST_USER_MAX_CONFIG_SIZE = 256;
/** Regions SET_MEM_TABLE can carry (VHOST_MEMORY_BASELINE_NREGIONS). */
export const VHOST_MEMORY_BASELINE_NREGIONS = 8;
/** In SET_VRING_KICK/CALL: no descriptor attached (polling). */
export const VHOST_USER_VRING_NOFD_MASK = 0x100;

/** Virtio feature bit 30: the back-end speaks the protocol-feature extension. */
export const VHOST_USER_F_PROTOCOL_FEATURES: bigint = 1n << 30n;

/** Protocol feature bits (GET/SET_PROTOCOL_FEATURES). */
export const VhostUserProtocolFeature = {
  MQ: 1n << 0n,
  LOG_SHMFD: 1n << 1n,
  RARP: 1n << 2n,
  REPLY_ACK: 1n << 3n,
  MTU: 1n << 4n,
  BACKEND_REQ: 1n << 5n,
  CROSS_ENDIAN: 1n << 6n,
  CRYPTO_SESSION: 1n << 7n,
  PAGEFAULT: 1n << 8n,
  CONFIG: 1n << 9n,
  BACKEND_SEND_FD: 1n << 10n,
  HOST_NOTIFIER: 1n << 11n,
  INFLIGHT_SHMFD: 1n << 12n,
  RESET_DEVICE: 1n << 13n,
  INBAND_NOTIFICATIONS: 1n << 14n,
  CONFIGURE_MEM_SLOTS: 1n << 15n,
  STATUS: 1n << 16n,
} as const;

/**
 * Names the set bits of a protocol-feature mask.
 *
 * @param features the mask
 * @returns e.g. `["MQ", "REPLY_ACK", "bit 20"]`
 */
export function describeProtocolFeatures(features: bigint): string[] {
  const names: string[] = [];
  for (let b = 0n; b < 64n; b++) {
    if (!((features >> b) & 1n)) continue;
    const name = Object.entries(VhostUserProtocolFeature).find(([, v]) => v === 1n << b)?.[0];
    names.push(name ?? `bit ${b}`);
  }
  return names;
}

/** A memory region as vhost-user describes it. */
export interface VhostUserMemRegion {
  /** Address the driver uses in descriptors (IOVA; here the process address). */
  guestPhysAddr: number;
  /** Length in bytes. */
  size: number;
  /** The front-end's virtual address (used by SET_VRING_ADDR). */
  userAddr: number;
  /** Offset of the region in the file descriptor. */
  mmapOffset: number;
}

/** A decoded message header. */
export interface VhostUserHeader {
  /** Request code. */
  request: number;
  /** Flags (version, REPLY, NEED_REPLY). */
  flags: number;
  /** Payload size. */
  size: number;
}

function u64(v: DataView, at: number, n: number | bigint): void {
  v.setBigUint64(at, BigInt(n), true);
}

/**
 * A whole message: header and payload.
 *
 * @param request the request code
 * @param payload the payload bytes
 * @param needReply sets NEED_REPLY (REPLY_ACK)
 * @returns header + payload
 */
export function encodeMessage(request: number, payload: Uint8Array, needReply = false): Uint8Array<ArrayBuffer> {
  const msg = new Uint8Array(VHOST_USER_HEADER_SIZE + payload.byteLength);
  const v = new DataView(msg.buffer);
  v.setUint32(0, request, true);
  v.setUint32(4, VHOST_USER_VERSION | (needReply ? VHOST_USER_NEED_REPLY_MASK : 0), true);
  v.setUint32(8, payload.byteLength, true);
  msg.set(payload, VHOST_USER_HEADER_SIZE);
  return msg;
}

/**
 * Decodes a 12-byte header.
 *
 * @param bytes at least 12 bytes
 * @returns the header fields
 */
export function decodeHeader(bytes: Uint8Array): VhostUserHeader {
  const v = new DataView(bytes.buffer, bytes.byteOffset, VHOST_USER_HEADER_SIZE);
  return { request: v.getUint32(0, true), flags: v.getUint32(4, true), size: v.getUint32(8, true) };
}

/**
 * A u64 payload (features, protocol features, queue index…).
 *
 * @param n the value
 * @returns 8 bytes
 */
export function encodeU64(n: number | bigint): Uint8Array {
  const b = new Uint8Array(8);
  u64(new DataView(b.buffer), 0, n);
  return b;
}

/**
 * Reads a u64 payload.
 *
 * @param payload exactly 8 bytes
 * @returns the value
 */
export function decodeU64(payload: Uint8Array): bigint {
  return new DataView(payload.buffer, payload.byteOffset, 8).getBigUint64(0, true);
}

/**
 * `struct vhost_vring_state { u32 index; u32 num; }`.
 *
 * @param index queue index
 * @param num the value (size, base, enable)
 * @returns 8 bytes
 */
export function encodeVringState(index: number, num: number): Uint8Array {
  const b = new Uint8Array(8);
  const v = new DataView(b.buffer);
  v.setUint32(0, index, true);
  v.setUint32(4, num, true);
  return b;
}

/**
 * Reads a vring state payload.
 *
 * @param payload 8 bytes
 * @returns index and num
 */
export function decodeVringState(payload: Uint8Array): { index: number; num: number } {
  const v = new DataView(payload.buffer, payload.byteOffset, 8);
  return { index: v.getUint32(0, true), num: v.getUint32(4, true) };
}

/**
 * `struct vhost_vring_addr { u32 index; u32 flags; u64 desc; u64 used; u64 avail; u64 log; }`
 * (note the order: descriptor table, used ring, available ring).
 *
 * @param index queue index
 * @param desc front-end address of the descriptor table
 * @param used of the used ring (device area)
 * @param avail of the available ring (driver area)
 * @returns 40 bytes
 */
export function encodeVringAddr(index: number, desc: number, used: number, avail: number): Uint8Array {
  const b = new Uint8Array(40);
  const v = new DataView(b.buffer);
  v.setUint32(0, index, true);
  v.setUint32(4, 0, true); // flags: no dirty logging
  u64(v, 8, desc);
  u64(v, 16, used);
  u64(v, 24, avail);
  u64(v, 32, 0); // log_guest_addr
  return b;
}

/**
 * The u64 of SET_VRING_KICK / SET_VRING_CALL: queue index in bits 0–7,
 * bit 8 set when no descriptor is attached.
 *
 * @param index queue index (0–255)
 * @param noFd true when no descriptor travels with the message
 * @returns 8 bytes
 */
export function encodeVringFile(index: number, noFd: boolean): Uint8Array {
  return encodeU64((index & 0xff) | (noFd ? VHOST_USER_VRING_NOFD_MASK : 0));
}

function putRegion(v: DataView, at: number, r: VhostUserMemRegion): void {
  u64(v, at, r.guestPhysAddr);
  u64(v, at + 8, r.size);
  u64(v, at + 16, r.userAddr);
  u64(v, at + 24, r.mmapOffset);
}

/**
 * ADD_MEM_REG / REM_MEM_REG payload: `u64 padding` then one region.
 *
 * @param r the region
 * @returns 40 bytes
 */
export function encodeSingleMemRegion(r: VhostUserMemRegion): Uint8Array {
  const b = new Uint8Array(40);
  putRegion(new DataView(b.buffer), 8, r);
  return b;
}

/**
 * SET_MEM_TABLE payload: `u32 nregions; u32 padding;` then the regions.
 *
 * @param regions up to 8 regions
 * @returns 8 + 32·n bytes
 */
export function encodeMemTable(regions: readonly VhostUserMemRegion[]): Uint8Array {
  if (regions.length > VHOST_MEMORY_BASELINE_NREGIONS) {
    throw new RangeError(`SET_MEM_TABLE carries at most ${VHOST_MEMORY_BASELINE_NREGIONS} regions`);
  }
  const b = new Uint8Array(8 + 32 * regions.length);
  const v = new DataView(b.buffer);
  v.setUint32(0, regions.length, true);
  regions.forEach((r, i) => putRegion(v, 8 + 32 * i, r));
  return b;
}

/**
 * GET_CONFIG request payload: `u32 offset; u32 size; u32 flags;` then `size` zero bytes.
 *
 * @param offset config space offset
 * @param size bytes wanted (at most 256)
 * @returns 12 + size bytes
 */
export function encodeConfigRequest(offset: number, size: number): Uint8Array {
  if (size > VHOST_USER_MAX_CONFIG_SIZE) {
    throw new RangeError(`config reads are at most ${VHOST_USER_MAX_CONFIG_SIZE} bytes`);
  }
  const b = new Uint8Array(12 + size);
  const v = new DataView(b.buffer);
  v.setUint32(0, offset, true);
  v.setUint32(4, size, true);
  v.setUint32(8, 0, true);
  return b;
}

/**
 * SET_CONFIG payload: `u32 offset; u32 size; u32 flags;` then the bytes
 * (flags 0: written by the front-end, not during migration).
 *
 * @param offset config space offset
 * @param data the bytes to write (at most 256)
 * @returns 12 + data.length bytes
 */
export function encodeSetConfig(offset: number, data: Uint8Array): Uint8Array {
  if (data.byteLength > VHOST_USER_MAX_CONFIG_SIZE) {
    throw new RangeError(`config writes are at most ${VHOST_USER_MAX_CONFIG_SIZE} bytes`);
  }
  const b = new Uint8Array(12 + data.byteLength);
  const v = new DataView(b.buffer);
  v.setUint32(0, offset, true);
  v.setUint32(4, data.byteLength, true);
  v.setUint32(8, 0, true);
  b.set(data, 12);
  return b;
}

/**
 * Reads a GET_CONFIG reply payload.
 *
 * @param payload the reply's payload
 * @returns offset, size, flags and the config bytes
 */
export function decodeConfigReply(
  payload: Uint8Array,
): { offset: number; size: number; flags: number; data: Uint8Array } {
  const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  return {
    offset: v.getUint32(0, true),
    size: v.getUint32(4, true),
    flags: v.getUint32(8, true),
    data: payload.subarray(12),
  };
}
