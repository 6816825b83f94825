/**
 * A hostile device: primitives that make the mock device break the virtio
 * protocol the way a buggy or malicious device could — take requests and
 * never complete them, complete ids that are not in flight, report
 * impossible lengths, rewrite descriptors, scribble on driver memory. Tests
 * use them to show the driver fails closed; reach them as
 * `device.hostile` of a {@linkcode MockBlkDevice}.
 *
 * @module
 */

import { VIRTIO_BLK_S_OK } from "../../blk/spec.ts";
import { type DeviceRing, MockDeviceError } from "./device_ring.ts";

/** What the hostile actions need of the device they act for. */
export interface HostileAccess {
  /** The device side of queue `index` (throws when it is not set up). */
  ring(index: number): DeviceRing;
  /** Sends an interrupt for queue `index`, whatever the driver asked for. */
  interrupt(index: number): void;
  /** Driver memory at `[iova, iova + length)`, as the device sees it. */
  translate(iova: number, length: number): Uint8Array;
}

/** The hostile-device primitives of one mock device. */
export class HostileActions {
  readonly #device: HostileAccess;

  /**
   * Creates the instance.
   *
   * @param device what to act through
   */
  constructor(device: HostileAccess) {
    this.#device = device;
  }

  /**
   * Takes every chain the driver made available on queue `index` without
   * processing it.
   *
   * @param index queue index
   * @returns their ids (split: head indices; packed: buffer ids), in ring order
   */
  take(index: number): number[] {
    const ring = this.#device.ring(index);
    const ids: number[] = [];
    for (let c = ring.take(); c !== undefined; c = ring.take()) ids.push(c.id);
    ring.publishAvailEvent();
    return ids;
  }

  /**
   * Writes any used element, moves the used position by `advance` (which may
   * exceed what is in flight) and interrupts.
   *
   * @param index queue index
   * @param id the id to report (need not be valid)
   * @param len the length to report (need not be plausible)
   * @param advance how far to move the used position; default 1 (split) or the chain's ring length (packed)
   */
  pushUsed(index: number, id: number, len: number, advance?: number): void {
    const ring = this.#device.ring(index);
    ring.pushUsed(id, len, advance ?? ring.chainOf(id)?.ringLen ?? 1);
    this.#device.interrupt(index);
  }

  /**
   * Completes chain `id` as if it had done its I/O (status OK in its last
   * buffer, used length all its device-writable bytes) without doing it.
   *
   * @param index queue index
   * @param id a chain the device took
   */
  completeEmpty(index: number, id: number): void {
    this.write(this.statusAddress(index, id), new Uint8Array([VIRTIO_BLK_S_OK]));
    this.pushUsed(index, id, this.writableLength(index, id));
  }

  /**
   * Overwrites descriptor `desc` of queue `index` (address, length, flags,
   * and `next` — the id field in a packed ring).
   *
   * @param index queue index
   * @param desc descriptor index
   * @param fields the values to write
   */
  rewriteDesc(
    index: number,
    desc: number,
    fields: { addr?: number; len?: number; flags?: number; next?: number },
  ): void {
    this.#device.ring(index).rewriteDesc(desc, fields);
  }

  /**
   * Writes driver memory at `iova` (for example a status byte after completion).
   *
   * @param iova where
   * @param bytes what
   */
  write(iova: number, bytes: Uint8Array): void {
    this.#device.translate(iova, bytes.byteLength).set(bytes);
  }

  /**
   * The IOVA of the status byte of a chain taken on queue `index` (its last buffer's last byte).
   *
   * @param index queue index
   * @param id chain id
   * @returns the address
   */
  statusAddress(index: number, id: number): number {
    const c = this.#device.ring(index).chainOf(id);
    if (!c) throw new MockDeviceError(`chain ${id} was not taken on queue ${index}`);
    const last = c.descs[c.descs.length - 1];
    return last.addr + last.len - 1;
  }

  /**
   * The device-writable bytes of a chain the device took (what an honest
   * device reports as the used length once it has written them all).
   *
   * @param index queue index
   * @param id the chain
   * @returns bytes
   */
  writableLength(index: number, id: number): number {
    const c = this.#device.ring(index).chainOf(id);
    if (!c) throw new MockDeviceError(`chain ${id} was not taken on queue ${index}`);
    return c.descs.reduce((n, d) => n + (d.write ? d.len : 0), 0);
  }
}
