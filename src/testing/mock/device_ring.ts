/**
 * The device side of the split and packed rings — the one implementation
 * (device_split_ring.ts, device_packed_ring.ts; this file has what both share),
 * used by the mock device, the ring tests and the benchmarks: take what the
 * driver made available (following chains and indirect tables), publish
 * used elements, decide when to interrupt, and, for hostile tests, write
 * whatever a misbehaving device could.
 *
 * @module
 */

import { DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE } from "../../virtqueue/defs.ts";

/** One buffer of a chain, as the device reads it. */
export interface RawDesc {
  /** IOVA. */
  addr: number;
  /** Length. */
  len: number;
  /** Device-writable. */
  write: boolean;
}

/** A chain the device took. */
export interface DeviceChain {
  /** Split: head index; packed: buffer id. */
  id: number;
  /** Its buffers, indirect tables expanded. */
  descs: RawDesc[];
  /** Ring entries it occupies (packed: how far the used position moves). */
  ringLen: number;
}

/** How the device reaches driver memory. */
export interface DeviceMemory {
  /** A view of driver memory (throws for unmapped addresses). */
  view(iova: number, length: number): Uint8Array;
}

/** An error in how the driver used the mock device or its rings (a driver bug). */
export class MockDeviceError extends Error {
  /**
   * Creates the instance.
   *
   * @param message what the driver did wrong
   */
  constructor(message: string) {
    super(message);
    this.name = "MockDeviceError";
  }
}

/** The device side of one ring. */
export interface DeviceRing {
  /** Entries. */
  readonly size: number;
  /** Takes the next available chain, or undefined (records it for {@linkcode DeviceRing.chainOf}). */
  take(): DeviceChain | undefined;
  /**
   * Takes the next available chain without allocating; returns its id or -1
   * and sets {@linkcode DeviceRing.statusAddr} (last byte of its last buffer),
   * {@linkcode DeviceRing.writableLen} and {@linkcode DeviceRing.ringLen}.
   */
  takeFast(): number;
  /** Status address of the chain last returned by takeFast. */
  statusAddr: number;
  /** Device-writable bytes of the chain last returned by takeFast. */
  writableLen: number;
  /** Ring entries of the chain last returned by takeFast. */
  ringLen: number;
  /**
   * Publishes a used element (split) or descriptor (packed) with any id and
   * length, moving the used position by `advance`: the chain's `ringLen` for
   * a proper completion, anything at all for a hostile device.
   */
  pushUsed(id: number, len: number, advance: number): void;
  /** Whether an interrupt is due for what was used since the last call. */
  interruptDue(): boolean;
  /** EVENT_IDX: asks the driver for a notification once it passes the current position. */
  publishAvailEvent(): void;
  /** Hostile: rewrites a descriptor of the ring. */
  rewriteDesc(i: number, fields: Partial<DescFields>): void;
  /** Descriptor `i` of the ring as it is in memory (`next` is the id field in a packed ring). */
  descriptor(i: number): DescFields;
  /** A chain taken with {@linkcode DeviceRing.take}, as recorded then. */
  chainOf(id: number): DeviceChain | undefined;
}

/** The fields of one descriptor (`next` is the id field in a packed ring). */
export interface DescFields {
  /** Buffer address. */
  addr: number;
  /** Buffer length. */
  len: number;
  /** Descriptor flags. */
  flags: number;
  /** Split: the next descriptor; packed: the buffer id. */
  next: number;
}

/** Descriptor `i` of a table (split: flags at 12, next at 14; packed: id at 12, flags at 14). */
export function descAt(desc: DataView, i: number, split: boolean): DescFields {
  const at = 16 * i;
  return {
    addr: Number(desc.getBigUint64(at, true)),
    len: desc.getUint32(at + 8, true),
    flags: desc.getUint16(at + (split ? 12 : 14), true),
    next: desc.getUint16(at + (split ? 14 : 12), true),
  };
}

/** Rewrites the given fields of descriptor `i` of a table (layout as in {@linkcode descAt}). */
export function rewriteDescAt(desc: DataView, i: number, f: Partial<DescFields>, split: boolean): void {
  const at = 16 * i;
  if (f.addr !== undefined) desc.setBigUint64(at, BigInt(f.addr), true);
  if (f.len !== undefined) desc.setUint32(at + 8, f.len, true);
  if (f.flags !== undefined) desc.setUint16(at + (split ? 12 : 14), f.flags, true);
  if (f.next !== undefined) desc.setUint16(at + (split ? 14 : 12), f.next, true);
}

/** Device-writable bytes of an indirect table our driver wrote (entries in order). */
export function tableWritable(tv: DataView, split: boolean): number {
  let writable = 0;
  for (let at = 0; at + 16 <= tv.byteLength; at += 16) {
    if (tv.getUint16(at + (split ? 12 : 14), true) & DESC_F_WRITE) writable += tv.getUint32(at + 8, true);
  }
  return writable;
}

/** Reads an indirect table (split: follows next; packed: in order) into `out`. */
export function readTable(mem: DeviceMemory, addr: number, len: number, split: boolean, out: RawDesc[]): void {
  if (len === 0 || len % 16 !== 0) throw new MockDeviceError(`indirect table of ${len} bytes`);
  const n = len / 16;
  const t = mem.view(addr, len);
  const v = new DataView(t.buffer, t.byteOffset, len);
  let i = 0;
  for (let hops = 0; hops < n; hops++) {
    const at = 16 * i;
    const flags = v.getUint16(at + (split ? 12 : 14), true);
    if (flags & DESC_F_INDIRECT) throw new MockDeviceError("nested indirect table");
    out.push({
      addr: Number(v.getBigUint64(at, true)),
      len: v.getUint32(at + 8, true),
      write: (flags & DESC_F_WRITE) !== 0,
    });
    if (split) {
      if ((flags & DESC_F_NEXT) === 0) return;
      i = v.getUint16(at + 14, true);
      if (i >= n) throw new MockDeviceError(`indirect next ${i} out of a table of ${n}`);
    } else {
      i++;
    }
  }
  if (split) throw new MockDeviceError("loop in an indirect table");
}
