/**
 * The split virtqueue (virtio 1.2, section 2.7).
 *
 * @module
 */

import { InvalidArgumentError } from "../errors.ts";
import { observe16, observe16AfterPublish, publish16 } from "./barriers.ts";
import {
  DESC_F_INDIRECT,
  DESC_F_NEXT,
  DESC_F_WRITE,
  VRING_AVAIL_F_NO_INTERRUPT,
  VRING_USED_F_NO_NOTIFY,
  vringNeedEvent,
} from "./defs.ts";
import type { VirtqueueFormat } from "./layout.ts";
import { Ring } from "./ring.ts";
import type { RingPosition, VirtqueueOptions } from "./types.ts";

/**
 * A split virtqueue (virtio 1.2, 2.7): descriptor table, available ring,
 * used ring. Memory ordering goes through `barriers.ts`; each use says
 * which reordering it prevents.
 */
export class SplitRing extends Ring {
  /** Always `"split"`. */
  readonly format: VirtqueueFormat = "split";
  // Shared memory, viewed once.
  readonly #descU32: Uint32Array; // [addr_lo, addr_hi, len, flags|next<<16] per descriptor
  readonly #descU16: Uint16Array;
  readonly #avail: Uint16Array; // flags, idx, ring[Q], used_event
  readonly #usedU16: Uint16Array; // flags, idx, ..., avail_event at 2 + 4Q
  readonly #usedU32: Uint32Array; // (flags|idx), then id, len per element
  readonly #mask: number;
  // Private driver state: never read back from shared memory.
  readonly #next: Uint16Array; // free list and chain links
  readonly #chainTail: Uint16Array;
  readonly #chainLen: Uint16Array;
  #freeHead = 0;
  #numFree: number;
  #availIdx = 0; // next avail index to publish (mod 2^16)
  #addedSinceKick = 0; // chains published since the last availNotifNeeded()
  #lastUsed = 0; // next used index to consume (mod 2^16)
  #usedPending = 0; // used elements known published and not yet consumed
  // Used-ring positions counted without wrapping: the elements consumed so
  // far, and the end of the last index loaded from the device. A chain
  // published when that end was E can only be completed by an element at a
  // position >= E: elements before E were written before the chain existed.
  #usedConsumed = 0;
  #usedLoadedEnd = 0;
  readonly #publishedAt: Float64Array; // per head: #usedLoadedEnd when published
  // Chain under construction.
  #building = false;
  #head = 0;
  #cursor = 0;
  #last = 0;
  #remaining = 0;
  #count = 0; // ring descriptors the chain takes (1 when indirect)
  #indirect = false; // the chain being built goes through its slot's table
  #table = 0; // u32 index of that table in the request area
  #tableLen = 0; // entries written so far

  /**
   * Creates the instance.
   *
   * @param options layout, memory, IOVA and features
   */
  constructor(options: VirtqueueOptions) {
    super(options);
    const { layout, memory } = options;
    if (layout.format !== "split") {
      throw new InvalidArgumentError("SplitVirtqueue needs a split layout");
    }
    const q = layout.queueSize;
    const buf = memory.buffer, base = memory.byteOffset;
    if (base % 16 !== 0) throw new InvalidArgumentError("virtqueue memory must be 16-byte aligned");
    this.#descU32 = new Uint32Array(buf, base + layout.descTableOffset, 4 * q);
    this.#descU16 = new Uint16Array(buf, base + layout.descTableOffset, 8 * q);
    this.#avail = new Uint16Array(buf, base + layout.driverAreaOffset, 3 + q);
    this.#usedU16 = new Uint16Array(buf, base + layout.deviceAreaOffset, 3 + 4 * q);
    this.#usedU32 = new Uint32Array(buf, base + layout.deviceAreaOffset, 1 + 2 * q);
    this.#mask = q - 1;
    this.#next = new Uint16Array(q);
    for (let i = 0; i < q; i++) this.#next[i] = i + 1; // the last link is never followed
    this.#chainTail = new Uint16Array(q);
    this.#chainLen = new Uint16Array(q);
    this.#publishedAt = new Float64Array(q);
    this.#numFree = q;
    if (options.resume) {
      // Another object drove this ring until now, and nothing is in flight:
      // the device's last seen index is where it stopped (2.7.6, 2.7.8).
      this.#availIdx = this.#lastUsed = options.resume.next & 0xffff;
    } else {
      // A fresh ring: zero everything the device reads or the driver owns.
      memory.fill(0, layout.descTableOffset, layout.reqOffset);
    }
  }

  /**
   * Where the ring stands (nothing in flight): the next available index.
   *
   * @returns the position, for {@linkcode VirtqueueOptions.resume}
   */
  position(): RingPosition {
    this.checkIdle();
    return { next: this.#availIdx, wrap: false };
  }

  /** Descriptors free for new chains. */
  get freeDescriptors(): number {
    return this.#numFree;
  }

  /** The head of the free list, or -1 when empty. */
  protected peekFreeId(): number {
    return this.#numFree > 0 ? this.#freeHead : -1;
  }

  /**
   * Starts a chain of exactly `count` descriptors from the private free list.
   *
   * @param count descriptors in the chain
   * @returns the chain id, or -1 when fewer than `count` are free
   */
  beginChain(count: number): number {
    if (this.failure) throw this.failure;
    if (this.#building) throw new Error(`${this.name}: a chain is already being built`);
    if (count < 1) return -1;
    const indirect = this.goesIndirect(count, this.#numFree);
    const need = indirect ? 1 : count;
    if (need > this.#numFree) return -1;
    this.#building = true;
    this.#head = this.#cursor = this.#freeHead;
    this.#remaining = count;
    this.#count = need;
    this.#indirect = indirect;
    if (indirect) {
      this.#table = (this.#head * this.reqSize + this.indirectOffset) >> 2;
      this.#tableLen = 0;
    }
    this.writableBytes[this.#head] = 0;
    return this.#head;
  }

  /**
   * Writes the next descriptor of the chain being built, at `base + offset`.
   *
   * @param base an address-base index
   * @param offset bytes from that base
   * @param length the buffer's length
   * @param fromDevice true for a device-writable buffer
   */
  pushDescAt(base: number, offset: number, length: number, fromDevice: boolean): void {
    if (this.#remaining === 0) throw new Error(`${this.name}: more descriptors pushed than begun`);
    const iova = this.bases[base] + offset; // a double kept unboxed in this frame
    if (this.#indirect) {
      // An entry of the slot's indirect table: next links index the table.
      const j = this.#tableLen++;
      const w = this.#table + (j << 2);
      this.reqU32[w] = iova >>> 0;
      this.reqU32[w + 1] = (iova / 4294967296) >>> 0;
      this.reqU32[w + 2] = length;
      const more = --this.#remaining > 0;
      this.reqU16[(w << 1) + 6] = (fromDevice ? DESC_F_WRITE : 0) | (more ? DESC_F_NEXT : 0);
      this.reqU16[(w << 1) + 7] = more ? j + 1 : 0;
      if (fromDevice) this.writableBytes[this.#head] += length;
      return;
    }
    const i = this.#cursor;
    const d = i << 2;
    const more = --this.#remaining > 0;
    const next = this.#next[i];
    const lo = iova >>> 0, hi = (iova / 4294967296) >>> 0;
    const flagsNext = ((fromDevice ? DESC_F_WRITE : 0) | (more ? DESC_F_NEXT : 0)) | ((more ? next : 0) << 16);
    // Store only what changed: the device has a copy of this cache line (it
    // read the descriptor last time), and a store takes the line away from it
    // even when the value is the same. A request reusing a buffer and a slot
    // then costs the device no descriptor miss. The device never writes split
    // descriptors, and one that did would only make us store again.
    const desc = this.#descU32;
    if (desc[d] !== lo || desc[d + 1] !== hi || desc[d + 2] !== length || desc[d + 3] !== flagsNext) {
      desc[d] = lo;
      desc[d + 1] = hi;
      desc[d + 2] = length;
      desc[d + 3] = flagsNext;
    }
    if (fromDevice) this.writableBytes[this.#head] += length;
    this.#last = i;
    this.#cursor = next;
  }

  /**
   * Publishes the chain in the available ring.
   *
   * @returns the chain id
   */
  endChain(): number {
    if (!this.#building || this.#remaining !== 0) {
      throw new Error(`${this.name}: endChain without a complete chain`);
    }
    this.#building = false;
    const head = this.#head;
    if (this.#indirect) {
      // One ring descriptor pointing at the table.
      const iova = this.reqIova + (this.#table << 2);
      const d = head << 2;
      this.#descU32[d] = iova >>> 0;
      this.#descU32[d + 1] = (iova / 4294967296) >>> 0;
      this.#descU32[d + 2] = this.#tableLen << 4;
      this.#descU16[(head << 3) + 6] = DESC_F_INDIRECT;
      this.#descU16[(head << 3) + 7] = 0;
      this.#last = head;
    }
    const tail = this.#last;
    const count = this.#count;
    this.#freeHead = this.#next[tail];
    this.#numFree -= count;
    this.#chainTail[head] = tail;
    this.#chainLen[head] = count;
    this.inFlightMap[head] = 1;
    this.numInFlight++;
    this.#publishedAt[head] = this.#usedLoadedEnd;
    this.#addedSinceKick++;
    const a = this.#availIdx;
    this.#avail[2 + (a & this.#mask)] = head;
    this.#availIdx = (a + 1) & 0xffff;
    // The descriptors and the ring entry written above are visible to the
    // device before the new index (2.7.13).
    publish16(this.#avail, 1, this.#availIdx);
    return head;
  }

  /** Checks that free and in-flight descriptors partition the table (private state only). */
  assertConsistent(): void {
    const q = this.queueSize;
    const owner = new Int32Array(q).fill(-2); // -2 unseen, -1 free, else the head in flight
    let i = this.#freeHead;
    for (let n = 0; n < this.#numFree; n++) {
      if (i >= q) throw new Error(`free list leaves the table at step ${n} (index ${i})`);
      if (owner[i] !== -2) throw new Error(`descriptor ${i} is twice on the free list`);
      owner[i] = -1;
      i = this.#next[i];
    }
    let inFlight = 0, used = 0;
    for (let head = 0; head < q; head++) {
      if (this.inFlightMap[head] !== 1) continue;
      inFlight++;
      if (owner[head] === -1) throw new Error(`chain ${head} is in flight and free`);
      let d = head;
      for (let n = 0; n < this.#chainLen[head]; n++) {
        if (d >= q) throw new Error(`chain ${head} leaves the table`);
        if (owner[d] !== -2) {
          throw new Error(
            `descriptor ${d} of chain ${head} is also ${owner[d] === -1 ? "free" : `in chain ${owner[d]}`}`,
          );
        }
        owner[d] = head;
        used++;
        if (n + 1 < this.#chainLen[head]) d = this.#next[d];
      }
      if (d !== this.#chainTail[head]) throw new Error(`chain ${head} does not end at its recorded tail`);
    }
    if (inFlight !== this.numInFlight) {
      throw new Error(`${inFlight} chains marked in flight, counter says ${this.numInFlight}`);
    }
    if (used + this.#numFree !== q) throw new Error(`${used} descriptors in flight + ${this.#numFree} free != ${q}`);
  }

  /**
   * Takes the next used element, after checking its id and length.
   *
   * @returns the chain id, or -1 when the device has finished nothing new
   */
  nextUsed(): number {
    if (this.failure) throw this.failure;
    if (this.#usedPending === 0) {
      // The used elements (and the data and status the device wrote) are
      // read after the index that publishes them (2.7.14).
      const idx = observe16(this.#usedU16, 1);
      const n = (idx - this.#lastUsed) & 0xffff;
      if (n === 0) return -1;
      if (n > this.numInFlight) {
        this.violation(
          "used-idx-jump",
          `used index moved by ${n} with ${this.numInFlight} chains in flight`,
        );
      }
      this.#usedPending = n;
      this.#usedLoadedEnd = this.#usedConsumed + n;
    }
    const e = 1 + ((this.#lastUsed & this.#mask) << 1);
    const id = this.#usedU32[e];
    const reportedLen = this.#usedU32[e + 1];
    if (id >= this.queueSize) {
      this.violation("used-id-out-of-range", `used id ${id} is not below the queue size ${this.queueSize}`);
    }
    if (this.inFlightMap[id] !== 1) {
      this.violation("used-id-not-in-flight", `used id ${id} is not in flight`);
    }
    if (this.#usedConsumed < this.#publishedAt[id]) {
      // A second element for an id that was completed and reused within one
      // loaded batch: it predates the chain now carrying that id.
      this.violation(
        "used-id-stale",
        `used element ${this.#usedConsumed} names id ${id}, published after that element (at ${this.#publishedAt[id]})`,
      );
    }
    // Checked before any bookkeeping moves: a strict violation leaves the chain in flight.
    const len = this.acceptUsedLength(id, reportedLen);
    this.#lastUsed = (this.#lastUsed + 1) & 0xffff;
    this.#usedPending--;
    this.#usedConsumed++;
    this.inFlightMap[id] = 0;
    this.numInFlight--;
    // Return the chain to the free list in O(1): its private links are intact.
    this.#next[this.#chainTail[id]] = this.#freeHead;
    this.#freeHead = id;
    this.#numFree += this.#chainLen[id];
    this.lastUsedLen = len;
    return id;
  }

  /** Whether a used element is waiting. */
  hasUsed(): boolean {
    if (this.failure) throw this.failure;
    // After setUsedNotifEnabled(true) (a publication), this load is not
    // satisfied before that store is visible: a completion in between is seen.
    return this.#usedPending > 0 || observe16AfterPublish(this.#usedU16, 1) !== this.#lastUsed;
  }

  /** Whether the device wants a notification for the chains published since the last call. */
  availNotifNeeded(): boolean {
    const added = this.#addedSinceKick;
    this.#addedSinceKick = 0;
    if (added === 0) return false;
    // 2^16 or more chains since the last check (possible with a device that
    // polls the ring): the 16-bit event arithmetic cannot tell, and a spare
    // notification is harmless.
    if (added > 0xffff) return true;
    const newIdx = this.#availIdx, oldIdx = (newIdx - added) & 0xffff;
    // After endChain's publication: a stale NO_NOTIFY or avail_event, written
    // by the device before it saw our new index, would skip a needed kick
    // while the device goes to sleep (2.7.13.4).
    if (this.eventIdx) {
      const event = observe16AfterPublish(this.#usedU16, 2 + 4 * this.queueSize);
      return vringNeedEvent(event, newIdx, oldIdx);
    }
    return (observe16AfterPublish(this.#usedU16, 0) & VRING_USED_F_NO_NOTIFY) === 0;
  }

  /**
   * Asks for (or not for) interrupts when chains are used.
   *
   * @param enabled whether to be interrupted
   */
  setUsedNotifEnabled(enabled: boolean): void {
    if (this.eventIdx) {
      // used_event: interrupt once the device uses the entry at lastUsed
      // (enabled), or only after a full wrap of the index (disabled).
      const event = enabled ? this.#lastUsed : (this.#lastUsed - 1) & 0xffff;
      publish16(this.#avail, 2 + this.queueSize, event);
    } else {
      publish16(this.#avail, 0, enabled ? 0 : VRING_AVAIL_F_NO_INTERRUPT);
    }
    // Callers then check hasUsed(), whose observe16AfterPublish keeps the
    // re-check after this update (store-load).
  }
}
