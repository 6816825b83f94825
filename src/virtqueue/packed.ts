/**
 * The packed virtqueue (virtio 1.2, section 2.8; VIRTIO_F_RING_PACKED).
 *
 * @module
 */

import { InvalidArgumentError } from "../errors.ts";
import { observe16, observe16AfterPublish, observe32AfterPublish, publish16 } from "./barriers.ts";
import {
  DESC_F_INDIRECT,
  DESC_F_NEXT,
  DESC_F_WRITE,
  PACKED_DESC_F_AVAIL,
  PACKED_DESC_F_USED,
  PACKED_EVENT_FLAG_DESC,
  PACKED_EVENT_FLAG_DISABLE,
  PACKED_EVENT_FLAG_ENABLE,
  vringNeedEvent,
} from "./defs.ts";
import type { VirtqueueFormat } from "./layout.ts";
import { Ring } from "./ring.ts";
import type { RingPosition, VirtqueueOptions } from "./types.ts";

/**
 * A packed virtqueue: one descriptor ring that the driver and the device
 * both write, with wrap counters, plus two event-suppression structures.
 *
 * Buffer ids come from a driver-private free list; the descriptors of a
 * chain are consecutive ring entries. A chain is published by writing its
 * first descriptor's flags last. The device writes one used descriptor per
 * chain at its own position; the driver finds it by its AVAIL/USED bits and
 * skips by the chain's length, which it kept privately. Every id and length
 * the device writes is checked as in the split ring.
 *
 * Memory ordering goes through `barriers.ts`: the head's flags are
 * published last, a used descriptor's flags are observed before its id and
 * length, and the device's event suppression is read as one 32-bit snapshot.
 */
export class PackedRing extends Ring {
  /** Always `"packed"`. */
  readonly format: VirtqueueFormat = "packed";
  readonly #descU32: Uint32Array; // [addr_lo, addr_hi, len, id | flags << 16]
  readonly #descU16: Uint16Array; // id at 8i + 6, flags at 8i + 7
  readonly #driverEvent: Uint16Array; // [off_wrap, flags]: written by the driver
  readonly #deviceEvent: Uint32Array; // off_wrap | flags << 16: written by the device, read as one snapshot
  readonly #size: number;
  // Private driver state.
  readonly #freeIds: Uint16Array; // a stack of free buffer ids
  #numFreeIds: number;
  readonly #chainLen: Uint16Array; // ring descriptors each buffer id took
  #numFree: number; // ring descriptors not owned by the device
  #nextAvail = 0;
  #availWrap = 1;
  #lastUsed = 0;
  #usedWrap = 1;
  #addedSinceKick = 0;
  // Chain under construction.
  #building = false;
  #id = 0;
  #headPos = 0;
  #headFlags = 0;
  #pos = 0;
  #wrap = 1;
  #remaining = 0;
  #count = 0;
  #indirect = false;
  #table = 0;
  #tableLen = 0;

  /**
   * Creates a packed ring over `options.memory`.
   *
   * @param options layout (format "packed"), memory, IOVA and features
   */
  constructor(options: VirtqueueOptions) {
    super(options);
    const { layout, memory } = options;
    if (layout.format !== "packed") throw new InvalidArgumentError("PackedVirtqueue needs a packed layout");
    const q = layout.queueSize;
    const buf = memory.buffer, base = memory.byteOffset;
    if (base % 16 !== 0) throw new InvalidArgumentError("virtqueue memory must be 16-byte aligned");
    this.#size = q;
    this.#descU32 = new Uint32Array(buf, base + layout.descTableOffset, 4 * q);
    this.#descU16 = new Uint16Array(buf, base + layout.descTableOffset, 8 * q);
    this.#driverEvent = new Uint16Array(buf, base + layout.driverAreaOffset, 2);
    this.#deviceEvent = new Uint32Array(buf, base + layout.deviceAreaOffset, 1);
    this.#freeIds = new Uint16Array(q);
    for (let i = 0; i < q; i++) this.#freeIds[i] = q - 1 - i; // pop gives 0, 1, 2…
    this.#numFreeIds = q;
    this.#chainLen = new Uint16Array(q);
    this.#numFree = q;
    if (options.resume) {
      // Another object drove this ring until now, and nothing is in flight:
      // the descriptors keep the flags the device left (2.8.1), so the ring
      // memory stays as it is and both sides go on from the same position.
      const { next, wrap } = options.resume;
      if (!Number.isInteger(next) || next < 0 || next >= q) {
        throw new InvalidArgumentError(`resume position ${next} is outside a ring of ${q}`);
      }
      this.#nextAvail = this.#lastUsed = next;
      this.#availWrap = this.#usedWrap = wrap ? 1 : 0;
    } else {
      memory.fill(0, layout.descTableOffset, layout.reqOffset);
    }
  }

  /**
   * Where the ring stands (nothing in flight): the next position and its
   * wrap counter.
   *
   * @returns the position, for {@linkcode VirtqueueOptions.resume}
   */
  position(): RingPosition {
    this.checkIdle();
    return { next: this.#nextAvail, wrap: this.#availWrap === 1 };
  }

  /** Ring descriptors not owned by the device. */
  get freeDescriptors(): number {
    return this.#numFree;
  }

  /** The buffer id the next chain will get, or -1. */
  protected peekFreeId(): number {
    return this.#numFreeIds > 0 && this.#numFree > 0 ? this.#freeIds[this.#numFreeIds - 1] : -1;
  }

  /**
   * Starts a chain of `count` descriptors (1 ring entry when it goes indirect).
   *
   * @param count descriptors in the chain
   * @returns the buffer id, or -1 when there is no room
   */
  beginChain(count: number): number {
    if (this.failure) throw this.failure;
    if (this.#building) throw new Error(`${this.name}: a chain is already being built`);
    if (count < 1 || this.#numFreeIds === 0) return -1;
    const indirect = this.goesIndirect(count, this.#numFree);
    const need = indirect ? 1 : count;
    if (need > this.#numFree) return -1;
    this.#building = true;
    this.#id = this.#freeIds[--this.#numFreeIds];
    this.#headPos = this.#pos = this.#nextAvail;
    this.#wrap = this.#availWrap;
    this.#remaining = count;
    this.#count = need;
    this.#indirect = indirect;
    if (indirect) {
      this.#table = (this.#id * this.reqSize + this.indirectOffset) >> 2;
      this.#tableLen = 0;
    }
    this.writableBytes[this.#id] = 0;
    return this.#id;
  }

  /**
   * Writes the next descriptor at `base + offset` (the head's flags wait for endChain).
   *
   * @param base an address-base index
   * @param offset bytes from that base
   * @param length the buffer's length
   * @param fromDevice true for a device-writable buffer
   */
  pushDescAt(base: number, offset: number, length: number, fromDevice: boolean): void {
    if (this.#remaining === 0) throw new Error(`${this.name}: more descriptors pushed than begun`);
    const iova = this.bases[base] + offset;
    if (fromDevice) this.writableBytes[this.#id] += length;
    if (this.#indirect) {
      // Packed indirect tables are read in order; NEXT is not used.
      const w = this.#table + (this.#tableLen++ << 2);
      this.reqU32[w] = iova >>> 0;
      this.reqU32[w + 1] = (iova / 4294967296) >>> 0;
      this.reqU32[w + 2] = length;
      this.reqU16[(w << 1) + 6] = 0;
      this.reqU16[(w << 1) + 7] = fromDevice ? DESC_F_WRITE : 0;
      this.#remaining--;
      return;
    }
    const p = this.#pos;
    const more = --this.#remaining > 0;
    const d = p << 2;
    this.#descU32[d] = iova >>> 0;
    this.#descU32[d + 1] = (iova / 4294967296) >>> 0;
    this.#descU32[d + 2] = length;
    this.#descU16[(p << 3) + 6] = this.#id;
    const flags = (fromDevice ? DESC_F_WRITE : 0) | (more ? DESC_F_NEXT : 0) |
      (this.#wrap ? PACKED_DESC_F_AVAIL : PACKED_DESC_F_USED);
    if (p === this.#headPos) this.#headFlags = flags;
    else this.#descU16[(p << 3) + 7] = flags;
    if (++this.#pos === this.#size) {
      this.#pos = 0;
      this.#wrap ^= 1;
    }
  }

  /**
   * Publishes the chain by writing its first descriptor's flags.
   *
   * @returns the buffer id
   */
  endChain(): number {
    if (!this.#building || this.#remaining !== 0) throw new Error(`${this.name}: endChain without a complete chain`);
    this.#building = false;
    const id = this.#id, head = this.#headPos;
    if (this.#indirect) {
      const iova = this.reqIova + (this.#table << 2);
      const d = head << 2;
      this.#descU32[d] = iova >>> 0;
      this.#descU32[d + 1] = (iova / 4294967296) >>> 0;
      this.#descU32[d + 2] = this.#tableLen << 4;
      this.#descU16[(head << 3) + 6] = id;
      this.#headFlags = DESC_F_INDIRECT | (this.#wrap ? PACKED_DESC_F_AVAIL : PACKED_DESC_F_USED);
      if (++this.#pos === this.#size) {
        this.#pos = 0;
        this.#wrap ^= 1;
      }
    }
    this.#nextAvail = this.#pos;
    this.#availWrap = this.#wrap;
    this.#numFree -= this.#count;
    this.#chainLen[id] = this.#count;
    this.#addedSinceKick += this.#count;
    this.inFlightMap[id] = 1;
    this.numInFlight++;
    // Every other descriptor of the chain (and the head's address, length
    // and id) is visible before the head's flags make the chain available
    // (2.8.21.3).
    publish16(this.#descU16, (head << 3) + 7, this.#headFlags);
    return id;
  }

  /** Whether the descriptor at the driver's used position has been used in the current lap. */
  #usedAt(pos: number): boolean {
    // The id and length of a used descriptor are read after its flags (2.8.21.2).
    return this.#isUsed(observe16(this.#descU16, (pos << 3) + 7));
  }

  /** Whether a descriptor's flags mark it used in the current lap. */
  #isUsed(flags: number): boolean {
    const avail = (flags & PACKED_DESC_F_AVAIL) !== 0 ? 1 : 0;
    const used = (flags & PACKED_DESC_F_USED) !== 0 ? 1 : 0;
    return avail === used && used === this.#usedWrap;
  }

  /**
   * Takes the next used descriptor, after checking its id and length.
   *
   * @returns the buffer id, or -1 when the device has finished nothing new
   */
  nextUsed(): number {
    if (this.failure) throw this.failure;
    const pos = this.#lastUsed;
    if (!this.#usedAt(pos)) return -1;
    const id = this.#descU16[(pos << 3) + 6];
    const reportedLen = this.#descU32[(pos << 2) + 2];
    if (id >= this.queueSize) {
      this.violation("used-id-out-of-range", `used buffer id ${id} is not below the queue size ${this.queueSize}`);
    }
    if (this.inFlightMap[id] !== 1) this.violation("used-id-not-in-flight", `used buffer id ${id} is not in flight`);
    // Checked before any bookkeeping moves: a strict violation leaves the chain in flight.
    const len = this.acceptUsedLength(id, reportedLen);
    const n = this.#chainLen[id];
    let next = pos + n;
    if (next >= this.#size) {
      next -= this.#size;
      this.#usedWrap ^= 1;
    }
    this.#lastUsed = next;
    this.inFlightMap[id] = 0;
    this.numInFlight--;
    this.#numFree += n;
    this.#freeIds[this.#numFreeIds++] = id;
    this.lastUsedLen = len;
    return id;
  }

  /** Whether a used descriptor is waiting. */
  hasUsed(): boolean {
    if (this.failure) throw this.failure;
    // After setUsedNotifEnabled (a publication): a completion in between is seen.
    return this.numInFlight > 0 &&
      this.#isUsed(observe16AfterPublish(this.#descU16, (this.#lastUsed << 3) + 7));
  }

  /** Whether the device wants a notification for the descriptors made available since the last call. */
  availNotifNeeded(): boolean {
    const added = this.#addedSinceKick;
    this.#addedSinceKick = 0;
    if (added === 0) return false;
    // 2^16 or more descriptors since the last check (possible with a device
    // that polls the ring): the 16-bit event arithmetic cannot tell, and a
    // spare notification is harmless.
    if (added > 0xffff) return true;
    // After the flag store that published the chain: a stale "disabled" read
    // could skip a needed kick. One snapshot, so flags and off_wrap agree.
    const event32 = observe32AfterPublish(this.#deviceEvent, 0);
    const flags = event32 >>> 16;
    if (flags !== PACKED_EVENT_FLAG_DESC || !this.eventIdx) return flags !== PACKED_EVENT_FLAG_DISABLE;
    const offWrap = event32 & 0xffff;
    let event = offWrap & 0x7fff;
    if ((offWrap >> 15) !== this.#availWrap) event -= this.#size;
    const newIdx = this.#nextAvail;
    return vringNeedEvent(event & 0xffff, newIdx, (newIdx - added) & 0xffff);
  }

  /**
   * Asks for (or not for) interrupts: ENABLE/DISABLE, or with EVENT_IDX an
   * interrupt at the driver's next used position.
   *
   * @param enabled whether to be interrupted
   */
  setUsedNotifEnabled(enabled: boolean): void {
    if (enabled && this.eventIdx) {
      publish16(this.#driverEvent, 0, this.#lastUsed | (this.#usedWrap << 15));
      publish16(this.#driverEvent, 1, PACKED_EVENT_FLAG_DESC);
    } else {
      publish16(this.#driverEvent, 1, enabled ? PACKED_EVENT_FLAG_ENABLE : PACKED_EVENT_FLAG_DISABLE);
    }
  }

  /** Checks that the free ids, free descriptors and chains in flight add up (private state only). */
  assertConsistent(): void {
    const q = this.queueSize;
    const seen = new Uint8Array(q);
    for (let i = 0; i < this.#numFreeIds; i++) {
      const id = this.#freeIds[i];
      if (id >= q) throw new Error(`free id ${id} out of range`);
      if (seen[id]) throw new Error(`id ${id} is twice on the free list`);
      if (this.inFlightMap[id] === 1) throw new Error(`id ${id} is free and in flight`);
      seen[id] = 1;
    }
    let inFlight = 0, descs = 0;
    for (let id = 0; id < q; id++) {
      if (this.inFlightMap[id] !== 1) continue;
      inFlight++;
      descs += this.#chainLen[id];
    }
    if (inFlight !== this.numInFlight) throw new Error(`${inFlight} ids in flight, counter says ${this.numInFlight}`);
    if (inFlight + this.#numFreeIds !== q) {
      throw new Error(`${inFlight} in flight + ${this.#numFreeIds} free ids != ${q}`);
    }
    if (descs + this.#numFree !== q) throw new Error(`${descs} descriptors in flight + ${this.#numFree} free != ${q}`);
  }
}
