/**
 * What the mock device does with one virtio-blk request (virtio 1.2, 5.2.6):
 * read the header from the driver-readable buffers, do the I/O on a disk
 * held in a `Uint8Array`, fill the device-writable buffers, and say what
 * status byte to write and how many bytes it wrote.
 *
 * @module
 */

import {
  SECTOR_SIZE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from "../../blk/spec.ts";
import { MockDeviceError } from "./device_ring.ts";

/** A buffer of a request, as the device sees it. */
export interface Segment {
  /** A view of the driver's memory. */
  bytes: Uint8Array;
  /** Device-writable. */
  write: boolean;
}

/** The result of a request. */
export interface Executed {
  /** The request type from its header. */
  readonly type: number;
  /** The sector from its header. */
  readonly sector: number;
  /** The status byte to write. */
  readonly status: number;
  /** Bytes written to device-writable buffers, status byte included. */
  readonly written: number;
  /** Where the status byte goes (the last device-writable byte). */
  readonly statusByte: { readonly buf: Uint8Array; readonly at: number };
}

/**
 * Runs one request against `disk`.
 *
 * @param segs the request's buffers, in chain order
 * @param disk the disk contents
 * @param negotiated the features the driver accepted
 * @param id the GET_ID string
 * @returns what happened (the status byte is not written yet)
 */
export function executeBlkRequest(
  segs: readonly Segment[],
  disk: Uint8Array,
  negotiated: bigint,
  id: string,
): Executed {
  // Gather the driver-readable bytes and the device-writable buffers.
  const out: Uint8Array[] = [], inn: Uint8Array[] = [];
  for (const s of segs) (s.write ? inn : out).push(s.bytes);
  const outBytes = concat(out);
  if (outBytes.byteLength < 16 || inn.length === 0) {
    throw new MockDeviceError("a request needs a 16-byte header and a status byte");
  }
  const hv = new DataView(outBytes.buffer, outBytes.byteOffset, outBytes.byteLength);
  const type = hv.getUint32(0, true);
  const sector = Number(hv.getBigUint64(8, true));
  const last = inn[inn.length - 1];
  const statusByte = { buf: last, at: last.byteLength - 1 };
  // Device-writable data: everything writable except the final status byte.
  const dataIn = inn.slice(0, -1);
  if (last.byteLength > 1) dataIn.push(last.subarray(0, last.byteLength - 1));
  let status = VIRTIO_BLK_S_OK;
  let written = 1;
  const readOnly = (negotiated & VIRTIO_BLK_F_RO) !== 0n;
  const inRange = (start: number, len: number) => start >= 0 && start + len <= disk.byteLength;
  switch (type) {
    case VIRTIO_BLK_T_IN: {
      let pos = sector * SECTOR_SIZE;
      const total = dataIn.reduce((a, b) => a + b.byteLength, 0);
      if (!inRange(pos, total)) {
        status = VIRTIO_BLK_S_IOERR;
        break;
      }
      for (const b of dataIn) {
        b.set(disk.subarray(pos, pos + b.byteLength));
        pos += b.byteLength;
      }
      written += total;
      break;
    }
    case VIRTIO_BLK_T_OUT: {
      const data = outBytes.subarray(16);
      const pos = sector * SECTOR_SIZE;
      if (readOnly || !inRange(pos, data.byteLength)) {
        status = VIRTIO_BLK_S_IOERR;
        break;
      }
      disk.set(data, pos);
      break;
    }
    case VIRTIO_BLK_T_FLUSH:
      if (!(negotiated & VIRTIO_BLK_F_FLUSH)) status = VIRTIO_BLK_S_UNSUPP;
      break;
    case VIRTIO_BLK_T_GET_ID: {
      const idBuf = dataIn[0];
      if (!idBuf || idBuf.byteLength < VIRTIO_BLK_ID_BYTES) {
        status = VIRTIO_BLK_S_IOERR;
        break;
      }
      const bytes = new TextEncoder().encode(id).subarray(0, VIRTIO_BLK_ID_BYTES);
      idBuf.fill(0, 0, VIRTIO_BLK_ID_BYTES);
      idBuf.set(bytes);
      written += VIRTIO_BLK_ID_BYTES;
      break;
    }
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES: {
      const feature = type === VIRTIO_BLK_T_DISCARD ? VIRTIO_BLK_F_DISCARD : VIRTIO_BLK_F_WRITE_ZEROES;
      if (!(negotiated & feature)) {
        status = VIRTIO_BLK_S_UNSUPP;
        break;
      }
      if (readOnly) {
        status = VIRTIO_BLK_S_IOERR;
        break;
      }
      // struct virtio_blk_discard_write_zeroes: le64 sector, le32 num_sectors, le32 flags.
      for (let at = 16; at + 16 <= outBytes.byteLength; at += 16) {
        const s = Number(hv.getBigUint64(at, true)) * SECTOR_SIZE;
        const n = hv.getUint32(at + 8, true) * SECTOR_SIZE;
        const flags = hv.getUint32(at + 12, true);
        if (!inRange(s, n) || (flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0) {
          status = VIRTIO_BLK_S_IOERR;
          break;
        }
        disk.fill(0, s, s + n); // the mock's discard reads back as zeroes too
      }
      break;
    }
    default:
      status = VIRTIO_BLK_S_UNSUPP;
  }
  return { type, sector, status, written, statusByte };
}

function concat(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0];
  const total = parts.reduce((a, b) => a + b.byteLength, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}
