/**
 * {@linkcode MockBlkDevice}: an in-memory virtio-blk device that really
 * processes virtqueues from the device side — it reads the available ring
 * and descriptor chains from the driver's memory, does the I/O on a
 * `Uint8Array` disk, and writes used elements and status bytes back. For
 * the unit tests and for users' own tests (through `./testing`); it can
 * also misbehave on purpose ({@linkcode MockBlkDevice.hostile}).
 *
 * @module
 */

import {
  BLK_CONFIG,
  SECTOR_SIZE,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_S_OK,
} from "../../blk/spec.ts";
import { HeapRegion, type SharedRegion } from "../../memory/region.ts";
import type { InProcessDevice } from "../../transport/in_process.ts";
import type { QueueConfig } from "../../transport/transport.ts";
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from "../../virtio/spec.ts";
import { type DeviceChain, type DeviceRing, MockDeviceError } from "./device_ring.ts";
import { DevicePackedRing } from "./device_packed_ring.ts";
import { DeviceSplitRing } from "./device_split_ring.ts";
import { executeBlkRequest, type Segment } from "./executor.ts";
import { HostileActions } from "./hostile.ts";

/** When the mock device processes what the driver made available. */
export type MockCompletionMode = "immediate" | "microtask" | "manual";

/** Options of {@linkcode MockBlkDevice}. */
export interface MockBlkDeviceOptions {
  /** Disk size in bytes (a multiple of 512); default 16 MiB. */
  capacity?: number;
  /** Initial disk contents (copied); sets the capacity when given. */
  contents?: Uint8Array;
  /** Logical block size; default 512. */
  blockSize?: number;
  /** Offer VIRTIO_BLK_F_RO. */
  readOnly?: boolean;
  /** Queues offered (VIRTIO_BLK_F_MQ when above 1); default 4. */
  numQueues?: number;
  /** Largest queue size accepted; default 1024. */
  maxQueueSize?: number;
  /** seg_max; default 254. */
  segMax?: number;
  /** size_max (offers VIRTIO_BLK_F_SIZE_MAX when set). */
  sizeMax?: number;
  /** Offer FLUSH (default true). */
  flush?: boolean;
  /** Offer DISCARD (default true). */
  discard?: boolean;
  /** Offer WRITE_ZEROES (default true). */
  writeZeroes?: boolean;
  /** max_discard_sectors; default 32768. */
  maxDiscardSectors?: number;
  /** discard_sector_alignment (in sectors); default 1. */
  discardSectorAlignment?: number;
  /** max_write_zeroes_sectors; default 32768. */
  maxWriteZeroesSectors?: number;
  /** write_zeroes_may_unmap; default true. */
  writeZeroesMayUnmap?: boolean;
  /** Offer VIRTIO_F_EVENT_IDX (default true). */
  eventIdx?: boolean;
  /** Offer VIRTIO_F_INDIRECT_DESC (default true). */
  indirect?: boolean;
  /** Offer VIRTIO_F_RING_PACKED (default true). */
  packed?: boolean;
  /** The GET_ID string; default "mock-virtio-blk". */
  id?: string;
  /** When requests are processed; default "microtask". */
  completion?: MockCompletionMode;
  /** Replace the offered feature bits entirely. */
  features?: bigint;
  /** Replace the config space bytes entirely (for tests of bad configs). */
  config?: Uint8Array;
  /**
   * Offer VIRTIO_BLK_F_CONFIG_WCE with the write cache on (true) or off
   * (false); the driver may switch it. Not offered when undefined.
   */
  writeCache?: boolean;
}

/** Request counters of the mock device. */
export interface MockBlkStats {
  /** Notifications (kicks) received. */
  notifications: number;
  /** Interrupts sent. */
  interrupts: number;
  /** Requests completed, by virtio-blk request type. */
  requests: Record<number, number>;
}

/** A chain the device took from the available ring and has not completed yet. */
export interface MockRequest {
  /** The queue it came from. */
  readonly queue: number;
  /** Its head descriptor id. */
  readonly id: number;
  /** virtio-blk request type from its header. */
  readonly type: number;
  /** Sector from its header. */
  readonly sector: number;
}

interface MemMapping {
  iova: number;
  size: number;
  region: SharedRegion;
}

/**
 * An in-memory virtio-blk device.
 *
 * @example
 * ```ts
 * import { MockBlkDevice } from "../../testing.ts";
 * import { VirtioBlk } from "../../mod.ts";
 * const device = new MockBlkDevice({ capacity: 1 << 20 });
 * await using blk = await VirtioBlk.connect({ transport: "mock", device });
 * const buf = blk.allocBuffer(4096);
 * buf.fill(7);
 * await blk.write(0, buf);
 * console.log(device.disk[0]); // 7
 * ```
 */
export class MockBlkDevice implements InProcessDevice {
  #disk: Uint8Array;
  /** Feature bits offered. */
  readonly features: bigint;
  #negotiated = 0n;
  #eventIdx = false; // cached: a BigInt test on every request would allocate
  /** The config space. */
  readonly config: Uint8Array;
  /** Counters. */
  readonly stats: MockBlkStats = { notifications: 0, interrupts: 0, requests: {} };
  /** Requests completed, in completion order (type and sector), when `trace` is on. */
  readonly trace: { queue: number; type: number; sector: number }[] = [];
  /** Record {@linkcode MockBlkDevice.trace}. */
  tracing = false;
  /**
   * Called for each request after it ran; a number returned replaces the
   * status byte the device writes (e.g. 1 for IOERR). For fault injection.
   */
  statusHook: ((request: { queue: number; type: number; sector: number }) => number | undefined) | undefined;
  /** When requests are processed. */
  completion: MockCompletionMode;
  /** Queues offered. */
  readonly numQueues: number;
  /** Largest queue size accepted. */
  readonly maxQueueSize: number;
  #id: string;
  #mem: MemMapping[] = [];
  #queues: (DeviceRing | undefined)[] = [];
  #pending: Map<number, { segs: Segment[]; ringLen: number }>[] = [];
  #scheduled: boolean[] = [];
  #onInterrupt: ((queue: number) => void) | undefined;
  #onConfigChange: (() => void) | undefined;
  #configGeneration = 0;
  #disconnected = false;
  #hostile: HostileActions | undefined;

  /**
   * Creates the instance.
   *
   * @param options size, features and behaviour
   */
  constructor(options: MockBlkDeviceOptions = {}) {
    const capacity = options.contents?.byteLength ?? options.capacity ?? 16 << 20;
    if (capacity % SECTOR_SIZE !== 0) throw new RangeError("capacity must be a multiple of 512");
    this.#disk = new Uint8Array(capacity);
    if (options.contents) this.#disk.set(options.contents);
    this.numQueues = options.numQueues ?? 4;
    this.maxQueueSize = options.maxQueueSize ?? 1024;
    this.completion = options.completion ?? "microtask";
    this.#id = options.id ?? "mock-virtio-blk";
    let f = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_TOPOLOGY;
    if (options.readOnly) f |= VIRTIO_BLK_F_RO;
    if (options.writeCache !== undefined) f |= VIRTIO_BLK_F_CONFIG_WCE;
    if (this.numQueues > 1) f |= VIRTIO_BLK_F_MQ;
    if (options.sizeMax !== undefined) f |= VIRTIO_BLK_F_SIZE_MAX;
    if (options.flush ?? true) f |= VIRTIO_BLK_F_FLUSH;
    if (options.discard ?? true) f |= VIRTIO_BLK_F_DISCARD;
    if (options.writeZeroes ?? true) f |= VIRTIO_BLK_F_WRITE_ZEROES;
    if (options.eventIdx ?? true) f |= VIRTIO_F_EVENT_IDX;
    if (options.indirect ?? true) f |= VIRTIO_F_INDIRECT_DESC;
    if (options.packed ?? true) f |= VIRTIO_F_RING_PACKED;
    this.features = options.features ?? f;
    if (options.config) {
      this.config = options.config.slice();
    } else {
      const c = new DataView(new ArrayBuffer(BLK_CONFIG.SIZE));
      c.setBigUint64(BLK_CONFIG.CAPACITY, BigInt(capacity / SECTOR_SIZE), true);
      c.setUint32(BLK_CONFIG.SIZE_MAX, options.sizeMax ?? 0, true);
      c.setUint32(BLK_CONFIG.SEG_MAX, options.segMax ?? 254, true);
      c.setUint32(BLK_CONFIG.BLK_SIZE, options.blockSize ?? 512, true);
      c.setUint16(BLK_CONFIG.TOPOLOGY + 2, 1, true); // min_io_size
      c.setUint32(BLK_CONFIG.TOPOLOGY + 4, 1, true); // opt_io_size
      c.setUint16(BLK_CONFIG.NUM_QUEUES, this.numQueues, true);
      c.setUint32(BLK_CONFIG.DISCARD, options.maxDiscardSectors ?? 32768, true);
      c.setUint32(BLK_CONFIG.DISCARD + 4, 1, true); // max_discard_seg
      c.setUint32(BLK_CONFIG.DISCARD + 8, options.discardSectorAlignment ?? 1, true);
      c.setUint32(BLK_CONFIG.WRITE_ZEROES, options.maxWriteZeroesSectors ?? 32768, true);
      c.setUint32(BLK_CONFIG.WRITE_ZEROES + 4, 1, true); // max_write_zeroes_seg
      c.setUint8(BLK_CONFIG.WRITE_ZEROES + 8, (options.writeZeroesMayUnmap ?? true) ? 1 : 0);
      c.setUint8(BLK_CONFIG.WRITEBACK, options.writeCache ? 1 : 0);
      this.config = new Uint8Array(c.buffer);
    }
  }

  /** The disk contents (a new array after {@linkcode MockBlkDevice.resize}). */
  get disk(): Uint8Array {
    return this.#disk;
  }

  /** Configuration changes so far (the config generation of virtio 1.2, 2.5). */
  get configGeneration(): number {
    return this.#configGeneration;
  }

  /**
   * Changes the capacity, as a volume grown or shrunk under a running
   * program: the disk keeps its contents up to the smaller size (a grown
   * part reads as zeroes), the config space gets the new capacity, and the
   * driver is told (virtio 1.2, 3.2.1) — `VirtioBlk` then dispatches
   * `"configchange"`. Requests in flight past a new, smaller end fail with
   * an I/O error, as on a real device.
   *
   * @param bytes the new capacity, a multiple of the block size
   */
  resize(bytes: number): void {
    const blk = new DataView(this.config.buffer, this.config.byteOffset).getUint32(BLK_CONFIG.BLK_SIZE, true) ||
      SECTOR_SIZE;
    if (!Number.isSafeInteger(bytes) || bytes < 0 || bytes % SECTOR_SIZE !== 0 || bytes % blk !== 0) {
      throw new RangeError(`capacity ${bytes} is not a non-negative multiple of the block size ${blk}`);
    }
    const disk = new Uint8Array(bytes);
    disk.set(this.#disk.subarray(0, Math.min(bytes, this.#disk.byteLength)));
    this.#disk = disk;
    new DataView(this.config.buffer, this.config.byteOffset).setBigUint64(
      BLK_CONFIG.CAPACITY,
      BigInt(bytes / SECTOR_SIZE),
      true,
    );
    this.changeConfig();
  }

  /**
   * Announces a change of the config space (after a test edited
   * {@linkcode MockBlkDevice.config} directly): bumps the generation and
   * notifies the driver.
   */
  changeConfig(): void {
    this.#configGeneration++;
    this.#onConfigChange?.();
  }

  /**
   * Writes config bytes as a driver does; only `writeback` (with
   * VIRTIO_BLK_F_CONFIG_WCE offered) is writable, other writes are ignored
   * as a device that does not implement them would.
   *
   * @param offset where
   * @param data the bytes
   */
  writeConfig(offset: number, data: Uint8Array): void {
    if ((this.features & VIRTIO_BLK_F_CONFIG_WCE) === 0n) return;
    if (offset !== BLK_CONFIG.WRITEBACK || data.byteLength !== 1) return;
    this.config[BLK_CONFIG.WRITEBACK] = data[0] ? 1 : 0;
    this.#configGeneration++;
  }

  /**
   * Sets the function called after the config changed; undefined to stop.
   *
   * @param fn the handler
   */
  setConfigChangeHandler(fn: (() => void) | undefined): void {
    this.#onConfigChange = fn;
  }

  /** Feature bits the driver accepted. */
  get negotiated(): bigint {
    return this.#negotiated;
  }

  /**
   * Takes the features the driver accepted (the transport's negotiation).
   *
   * @param features the negotiated bits
   */
  acceptFeatures(features: bigint): void {
    this.#negotiated = features;
    this.#eventIdx = (features & VIRTIO_F_EVENT_IDX) !== 0n;
  }

  /** True after {@linkcode MockBlkDevice.disconnect}. */
  get disconnected(): boolean {
    return this.#disconnected;
  }

  /** Simulates the device going away: the driver sees a hang-up. */
  disconnect(): void {
    this.#disconnected = true;
    this.#onInterrupt?.(-1);
  }

  /**
   * Sets the function called on each interrupt (-1: hang-up).
   *
   * @param fn the handler, or undefined
   */
  setInterruptHandler(fn: ((queue: number) => void) | undefined): void {
    this.#onInterrupt = fn;
  }

  /**
   * Makes `region` reachable at `iova`.
   *
   * @param iova where the device sees it
   * @param region the memory
   */
  map(iova: number, region: SharedRegion): void {
    this.#mem.push({ iova, size: region.size, region });
  }

  /**
   * Withdraws the mapping at `iova`.
   *
   * @param iova a mapped address
   */
  unmap(iova: number): void {
    this.#mem = this.#mem.filter((m) => m.iova !== iova);
  }

  /**
   * The driver memory at `[iova, iova + length)`, as the device sees it.
   *
   * @param iova the address
   * @param length the length
   * @returns a view of the driver's memory
   * @throws {MockDeviceError} when the range is not mapped
   */
  translate(iova: number, length: number): Uint8Array {
    for (const m of this.#mem) {
      if (iova >= m.iova && iova + length <= m.iova + m.size) {
        try {
          return m.region.deviceBytes(iova - m.iova, length);
        } catch (e) {
          throw new MockDeviceError(`the driver gave ${iova.toString(16)} (+${length}): ${(e as Error).message}`);
        }
      }
    }
    throw new MockDeviceError(`the driver gave an unmapped address ${iova.toString(16)} (+${length})`);
  }

  /**
   * Sets up the device side of the queues.
   *
   * @param queues where the driver put them
   */
  setupQueues(queues: readonly QueueConfig[]): void {
    const mem = { view: (iova: number, len: number) => this.translate(iova, len) };
    const eventIdx = () => this.#eventIdx;
    for (const q of queues) {
      if (q.size > this.maxQueueSize) throw new MockDeviceError(`queue size ${q.size} above ${this.maxQueueSize}`);
      if (q.format === "packed" && !(this.#negotiated & VIRTIO_F_RING_PACKED)) {
        throw new MockDeviceError("a packed ring without VIRTIO_F_RING_PACKED");
      }
      this.#queues[q.index] = q.format === "packed"
        ? new DevicePackedRing(q, mem, eventIdx)
        : new DeviceSplitRing(q, mem, eventIdx);
      this.#pending[q.index] = new Map();
      this.#scheduled[q.index] = false;
    }
  }

  /**
   * A notification for queue `index` (the driver's kick).
   *
   * @param index the queue
   */
  notify(index: number): void {
    this.stats.notifications++;
    if (!this.#queues[index] || this.#disconnected) return;
    if (this.completion === "immediate") this.process(index);
    else if (this.completion === "microtask" && !this.#scheduled[index]) {
      this.#scheduled[index] = true;
      queueMicrotask(() => {
        this.#scheduled[index] = false;
        if (!this.#disconnected) this.process(index);
      });
    }
  }

  /**
   * Takes every chain the driver made available on queue `index` without
   * completing it (for tests of completion order). Complete them with
   * {@linkcode MockBlkDevice.complete}.
   *
   * @param index queue index
   * @returns the chains taken
   */
  fetch(index: number): MockRequest[] {
    const ring = this.#ring(index);
    const out: MockRequest[] = [];
    for (let c = ring.take(); c !== undefined; c = ring.take()) {
      const segs = this.#segments(c);
      this.#pending[index].set(c.id, { segs, ringLen: c.ringLen });
      const hdr = segs[0]?.bytes;
      const hv = hdr && hdr.byteLength >= 16 ? new DataView(hdr.buffer, hdr.byteOffset, 16) : undefined;
      out.push({
        queue: index,
        id: c.id,
        type: hv ? hv.getUint32(0, true) : -1,
        sector: hv ? Number(hv.getBigUint64(8, true)) : -1,
      });
    }
    ring.publishAvailEvent();
    return out;
  }

  /**
   * Executes and completes fetched chains, in the order given.
   *
   * @param requests chains from {@linkcode MockBlkDevice.fetch}
   */
  complete(requests: readonly MockRequest[]): void {
    const touched = new Set<number>();
    for (const r of requests) {
      const p = this.#pending[r.queue]?.get(r.id);
      if (!p) throw new MockDeviceError(`request ${r.id} on queue ${r.queue} is not pending`);
      this.#pending[r.queue].delete(r.id);
      const written = this.#execute(r.queue, p.segs);
      this.#ring(r.queue).pushUsed(r.id, written, p.ringLen);
      touched.add(r.queue);
    }
    for (const index of touched) this.#maybeInterrupt(index);
  }

  /**
   * Processes everything available on queue `index` (or every queue), in order.
   *
   * @param index a queue, or all when omitted
   * @returns the number of requests completed
   */
  process(index?: number): number {
    if (index === undefined) {
      let n = 0;
      for (let i = 0; i < this.#queues.length; i++) if (this.#queues[i]) n += this.process(i);
      return n;
    }
    const reqs = this.fetch(index);
    if (reqs.length > 0) this.complete(reqs);
    return reqs.length;
  }

  /**
   * Completes everything available on queue `index` without doing any I/O:
   * writes status OK into each chain's last (status) buffer and reports the
   * chain's whole device-writable length as used. Allocation-free, for benchmarks of the driver's own path.
   *
   * @param index queue index
   * @returns the number of chains completed
   */
  echo(index: number): number {
    const ring = this.#ring(index);
    let n = 0;
    for (let id = ring.takeFast(); id >= 0; id = ring.takeFast()) {
      // The status byte is the last byte of the last buffer (found inline:
      // a large address passed to a call would be boxed).
      const addr = ring.statusAddr;
      let written = false;
      for (let k = 0; k < this.#mem.length; k++) {
        const m = this.#mem[k];
        if (addr >= m.iova && addr < m.iova + m.size) {
          // Status bytes live in the queue region's request slots, which hand
          // out no caller views: its own bytes are what the device sees.
          const r = m.region;
          if (r instanceof HeapRegion && r.liveViews === 0) r.bytes[addr - m.iova] = VIRTIO_BLK_S_OK;
          else r.deviceBytes(addr - m.iova, 1)[0] = VIRTIO_BLK_S_OK;
          written = true;
          break;
        }
      }
      if (!written) throw new MockDeviceError(`the driver gave an unmapped status address ${addr.toString(16)}`);
      ring.pushUsed(id, ring.writableLen, ring.ringLen);
      n++;
    }
    if (n > 0) {
      ring.publishAvailEvent();
      this.#maybeInterrupt(index);
    }
    return n;
  }

  /** The hostile-device primitives of this device (see `hostile.ts`). */
  get hostile(): HostileActions {
    return this.#hostile ??= new HostileActions({
      ring: (index) => this.#ring(index),
      interrupt: (index) => {
        this.stats.interrupts++;
        this.#onInterrupt?.(index);
      },
      translate: (iova, length) => this.translate(iova, length),
    });
  }

  #ring(index: number): DeviceRing {
    const q = this.#queues[index];
    if (!q) throw new MockDeviceError(`queue ${index} is not set up`);
    return q;
  }

  #maybeInterrupt(index: number): void {
    if (this.#ring(index).interruptDue()) {
      this.stats.interrupts++;
      this.#onInterrupt?.(index);
    }
  }

  #segments(c: DeviceChain): Segment[] {
    const segs: Segment[] = [];
    for (const d of c.descs) {
      if (!d.write && segs.length > 0 && segs[segs.length - 1].write) {
        throw new MockDeviceError("a driver-readable descriptor follows a device-writable one");
      }
      segs.push({ bytes: this.translate(d.addr, d.len), write: d.write });
    }
    return segs;
  }

  /** Runs one request; returns the bytes written to device-writable buffers. */
  #execute(queue: number, segs: Segment[]): number {
    const r = executeBlkRequest(segs, this.disk, this.negotiated, this.#id);
    const forced = this.statusHook?.({ queue, type: r.type, sector: r.sector });
    r.statusByte.buf[r.statusByte.at] = forced ?? r.status;
    this.stats.requests[r.type] = (this.stats.requests[r.type] ?? 0) + 1;
    if (this.tracing) this.trace.push({ queue, type: r.type, sector: r.sector });
    return r.written;
  }
}
