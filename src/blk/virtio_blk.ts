/**
 * {@linkcode VirtioBlk}: a virtio-blk device, connected and ready for I/O.
 *
 * @module
 */

import { loadShim } from "../os/loader.ts";
import { monotonicClock } from "../os/syscalls.ts";
import {
  ClosedError,
  ConnectionLostError,
  FeatureNegotiationError,
  InvalidArgumentError,
  type VirtioError,
} from "../errors.ts";
import {
  describeFeatures,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from "../features.ts";
import { BufferPool } from "../memory/buffer_pool.ts";
import type { SharedRegion } from "../memory/region.ts";
import { MockBlkDevice } from "../transport/mock_device.ts";
import { MockTransport } from "../transport/mock.ts";
import type { InterruptSource, QueueConfig, Transport, TransportType } from "../transport/transport.ts";
import { VfioPciTransport } from "../transport/vfio_pci.ts";
import { VhostUserTransport } from "../transport/vhost_user/transport.ts";
import { VhostVdpaTransport } from "../transport/vhost_vdpa.ts";
import { VirtqueueLayout } from "../virtqueue/layout.ts";
import { PackedVirtqueue } from "../virtqueue/packed.ts";
import { SplitVirtqueue } from "../virtqueue/split.ts";
import type { Virtqueue } from "../virtqueue/virtqueue.ts";
import { CompletionDriver, type CompletionMode } from "./completion_driver.ts";
import { parseBlkConfig, SECTOR_SIZE, VIRTIO_BLK_CONFIG_SIZE, type VirtioBlkConfig } from "./config.ts";
import {
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_GEOMETRY,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_FEATURE_NAMES,
} from "./features.ts";
import type { BlkLimits } from "./limits.ts";
import { type QueueHost, VirtioBlkQueue, type WriteZeroesOptions } from "./queue.ts";
import { OP_DISCARD, OP_FLUSH, OP_GET_ID, OP_READ, OP_WRITE, OP_WRITE_ZEROES, SLOT } from "./request.ts";

/** Options of {@linkcode VirtioBlk.connect}. */
export interface VirtioBlkConnectOptions {
  /**
   * How to reach the device: `"vhost-user"` (a Unix socket at `path`),
   * `"mock"` (an in-process {@linkcode MockBlkDevice}), or a
   * {@linkcode Transport} object already connected.
   */
  transport: "vhost-user" | "vhost-vdpa" | "vfio-pci" | "mock" | Transport;
  /** vhost-user: the socket path. vhost-vdpa: the character device, e.g. `/dev/vhost-vdpa-0`. */
  path?: string;
  /**
   * vhost-vdpa: an already-open descriptor of the device; vhost-user: a
   * connected socket to the back-end. Instead of `path`; the driver takes
   * it over (and closes it).
   */
  fd?: number;
  /** vfio-pci: the PCI address, e.g. `"0000:00:04.0"`. mock: the device (a fresh 16 MiB one when omitted). */
  device?: string | MockBlkDevice;
  /** Request queues to set up; default 1 (at most what the device offers). */
  numQueues?: number;
  /** Entries per queue: a power of two from 4 to 32768; default 256. */
  queueSize?: number;
  /** How completions are noticed; default `"eventfd"`. */
  mode?: CompletionMode;
  /**
   * eventfd mode: keep polling this many microseconds before sleeping; default 50.
   * Waking a sleeping thread costs ~15–25 µs on a VM, so a short spin both cuts
   * latency and saves CPU per request when the device answers quickly; 0 sleeps
   * at once. Nothing spins while no request is in flight.
   */
  spinMicros?: number;
  /** Bytes of device-reachable memory for {@linkcode VirtioBlk.allocBuffer} and bounce buffers; default 64 MiB. */
  bufferPoolSize?: number;
  /** Control-path reply timeout (vhost-user messages); default 10000 ms. */
  requestTimeoutMs?: number;
  /** How long {@linkcode VirtioBlk.close} waits for requests in flight; default 5000 ms. */
  closeTimeoutMs?: number;
  /**
   * Fail a queue with {@linkcode TimeoutError} when the device completes
   * nothing for this long while requests are in flight (a stalled device).
   * Its requests reject, later ones fail fast. Default: no limit (a request
   * to a slow device is never abandoned, as with libblkio).
   */
  stallTimeoutMs?: number;
  /**
   * Ring format: `"split"` (default) or `"packed"` (VIRTIO_F_RING_PACKED; the
   * connect fails with {@linkcode FeatureNegotiationError} when the device
   * does not offer it).
   */
  ring?: "split" | "packed";
  /** Optional ring features; each is used only when the device offers it too. */
  features?: {
    /** VIRTIO_F_EVENT_IDX (default true). */
    eventIdx?: boolean;
    /** VIRTIO_F_INDIRECT_DESC (default true). */
    indirect?: boolean;
  };
  /**
   * Most data buffers per request, below what the device's seg_max and the
   * ring allow: for a back-end that offers no seg_max but drops requests
   * above a limit of its own (DPDK's vhost_blk example: 126). Requests with
   * more are refused before they reach the device.
   */
  maxSegments?: number;
  /**
   * Fail a queue (`used-len-too-large`, `short-read`) when the device reports
   * a used length above what a request let it write, or a successful read
   * shorter than its data. Default false: such lengths are clamped or
   * accepted (the status byte decides) and counted in
   * {@linkcode VirtioBlkQueue.stats}. virtio-blk needs no used length and
   * the driver never uses it to touch memory, while real devices get it
   * wrong (DPDK's vhost_blk example reports the data length for writes).
   */
  strictUsedLength?: boolean;
  /**
   * With indirect descriptors: chains of at least this many descriptors go
   * through a table (shorter ones only when the ring lacks room). Default 4,
   * so a plain read or write (header, data, status) stays direct.
   */
  indirectThreshold?: number;
}

/** The features negotiated with the device. */
export interface VirtioBlkFeatures {
  /** The raw negotiated bits. */
  readonly bits: bigint;
  /** Names of the negotiated bits. */
  readonly names: readonly string[];
  /** VIRTIO_F_EVENT_IDX. */
  readonly eventIdx: boolean;
  /** VIRTIO_F_INDIRECT_DESC. */
  readonly indirect: boolean;
  /** VIRTIO_F_RING_PACKED. */
  readonly packed: boolean;
  /** VIRTIO_BLK_F_FLUSH. */
  readonly flush: boolean;
  /** VIRTIO_BLK_F_DISCARD. */
  readonly discard: boolean;
  /** VIRTIO_BLK_F_WRITE_ZEROES. */
  readonly writeZeroes: boolean;
  /** VIRTIO_BLK_F_RO. */
  readonly readOnly: boolean;
  /** VIRTIO_BLK_F_MQ. */
  readonly multiQueue: boolean;
}

/** The smallest ring a request fits in: header, data and status descriptors (a power of two). */
const MIN_QUEUE_SIZE = 4;
const DEFAULT_POOL = 64 << 20;
/** Default eventfd-mode spin (see bench/RESULTS.md for the sweep behind it). */
const DEFAULT_SPIN_MICROS = 50;

/** Every feature bit this driver can use (ring features are added per options). */
const DRIVER_FEATURES = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_RO | VIRTIO_BLK_F_BLK_SIZE |
  VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_SIZE_MAX | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_TOPOLOGY |
  VIRTIO_BLK_F_MQ | VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES | VIRTIO_BLK_F_GEOMETRY |
  VIRTIO_BLK_F_CONFIG_WCE;

function checkPositiveInt(name: string, v: number | undefined, max: number): void {
  if (v === undefined) return;
  if (!Number.isInteger(v) || v < 1 || v > max) {
    throw new InvalidArgumentError(`${name} must be an integer from 1 to ${max}, got ${v}`);
  }
}

async function openTransport(options: VirtioBlkConnectOptions): Promise<Transport> {
  const t = options.transport;
  if (typeof t === "object" && t !== null) return t;
  switch (t) {
    case "mock":
      if (typeof options.device === "string") {
        throw new InvalidArgumentError('transport "mock" takes a MockBlkDevice as `device`');
      }
      return new MockTransport(options.device ?? new MockBlkDevice());
    case "vhost-vdpa": {
      if (options.fd === undefined && (typeof options.path !== "string" || options.path === "")) {
        throw new InvalidArgumentError('transport "vhost-vdpa" needs `path` (e.g. /dev/vhost-vdpa-0) or `fd`');
      }
      await loadShim();
      return await VhostVdpaTransport.connect(options.path ?? `fd ${options.fd}`, { fd: options.fd });
    }
    case "vfio-pci": {
      if (typeof options.device !== "string") {
        throw new InvalidArgumentError('transport "vfio-pci" needs `device`, the PCI address (e.g. "0000:00:04.0")');
      }
      await loadShim();
      // Interrupts only when they are waited for: poll mode needs none.
      return await VfioPciTransport.connect(options.device, { interrupts: (options.mode ?? "eventfd") === "eventfd" });
    }
    case "vhost-user": {
      if (options.fd === undefined && (typeof options.path !== "string" || options.path === "")) {
        throw new InvalidArgumentError('transport "vhost-user" needs `path`, the socket of the back-end, or `fd`');
      }
      await loadShim();
      const target = options.fd !== undefined ? { fd: options.fd } : options.path!;
      return await VhostUserTransport.connect(target, { timeoutMs: options.requestTimeoutMs });
    }
    default:
      throw new InvalidArgumentError(`unknown transport ${JSON.stringify(t)}`);
  }
}

/**
 * A virtio-blk device.
 *
 * @example Read and write through vhost-user
 * ```ts ignore
 * import { VirtioBlk } from "./mod.ts";
 * await using blk = await VirtioBlk.connect({ transport: "vhost-user", path: "/tmp/x.sock" });
 * const buf = blk.allocBuffer(4096);
 * buf.fill(0xab);
 * await blk.write(0, buf);
 * await blk.read(0, buf);
 * await blk.flush();
 * ```
 */
export class VirtioBlk implements AsyncDisposable {
  /** Capacity in bytes. */
  readonly capacity: bigint;
  /** Logical block size in bytes; offsets and lengths must be multiples of it. */
  readonly blockSize: number;
  /** Whether the device is read-only. */
  readonly readOnly: boolean;
  /** Number of request queues set up. */
  readonly numQueues: number;
  /** Entries per queue. */
  readonly queueSize: number;
  /** The negotiated features. */
  readonly features: VirtioBlkFeatures;
  /** The device's configuration. */
  readonly config: VirtioBlkConfig;
  /** Most data buffers in one request. */
  readonly maxSegments: number;
  /** Largest data buffer in one request, in bytes. */
  readonly maxSegmentSize: number;
  /** How completions are noticed. */
  readonly mode: CompletionMode;
  /** The transport in use. */
  readonly transportType: TransportType;

  readonly #transport: Transport;
  readonly #regions: SharedRegion[];
  readonly #pool: BufferPool;
  readonly #queues: VirtioBlkQueue<unknown>[];
  readonly #driver: CompletionDriver;
  readonly #interrupts: InterruptSource;
  readonly #closeTimeoutMs: number;
  #nextQueue = 0;
  #watchdog: ReturnType<typeof setInterval> | undefined;
  #watchdogRefed = false;
  #lost: VirtioError | undefined;
  #closing: Promise<void> | undefined;

  private constructor(init: {
    transport: Transport;
    regions: SharedRegion[];
    pool: BufferPool;
    config: VirtioBlkConfig;
    features: bigint;
    layout: VirtqueueLayout;
    virtqueues: Virtqueue[];
    queueRegion: SharedRegion;
    interrupts: InterruptSource;
    mode: CompletionMode;
    spinMicros: number;
    closeTimeoutMs: number;
    stallTimeoutMs: number | undefined;
    maxSegments: number;
  }) {
    const { config, features, layout } = init;
    this.#transport = init.transport;
    this.#regions = init.regions;
    this.#pool = init.pool;
    this.#interrupts = init.interrupts;
    this.#closeTimeoutMs = init.closeTimeoutMs;
    this.transportType = init.transport.type;
    this.capacity = config.capacity;
    this.blockSize = config.blkSize;
    this.readOnly = (features & VIRTIO_BLK_F_RO) !== 0n;
    this.numQueues = layout.numQueues;
    this.queueSize = layout.queueSize;
    this.config = config;
    this.mode = init.mode;
    const has = (f: bigint) => (features & f) !== 0n;
    this.features = Object.freeze({
      bits: features,
      names: Object.freeze(describeFeatures(features, VIRTIO_BLK_FEATURE_NAMES)),
      eventIdx: has(VIRTIO_F_EVENT_IDX),
      indirect: has(VIRTIO_F_INDIRECT_DESC),
      packed: has(VIRTIO_F_RING_PACKED),
      flush: has(VIRTIO_BLK_F_FLUSH),
      discard: has(VIRTIO_BLK_F_DISCARD),
      writeZeroes: has(VIRTIO_BLK_F_WRITE_ZEROES),
      readOnly: has(VIRTIO_BLK_F_RO),
      multiQueue: has(VIRTIO_BLK_F_MQ),
    });
    this.maxSegments = init.maxSegments;
    this.maxSegmentSize = config.sizeMax ?? 0xffff_ffff;
    const sectorsToBytes = (s: number) => (s === 0 ? Number.MAX_SAFE_INTEGER : s * SECTOR_SIZE);
    const limits: BlkLimits = {
      capacity: Number(config.capacity),
      alignment: config.blkSize,
      readOnly: this.readOnly,
      maxSegments: this.maxSegments,
      maxSegmentSize: this.maxSegmentSize,
      flush: this.features.flush,
      discard: config.discard && {
        // A request carries one segment, whose sector count is a 32-bit field.
        maxBytes: Math.min(sectorsToBytes(config.discard.maxSectors), 0xffff_ffff * SECTOR_SIZE),
        alignment: Math.max(1, config.discard.sectorAlignment) * SECTOR_SIZE,
      },
      writeZeroes: config.writeZeroes && {
        maxBytes: Math.min(sectorsToBytes(config.writeZeroes.maxSectors), 0xffff_ffff * SECTOR_SIZE),
        mayUnmap: config.writeZeroes.mayUnmap,
      },
    };
    const host: QueueHost = {
      requestDriving: () => {
        if (this.#watchdog !== undefined && !this.#watchdogRefed) {
          this.#watchdogRefed = true;
          Deno.refTimer(this.#watchdog);
        }
        this.#driver.requestDriving();
      },
      connectionError: () => this.#connectionError(),
    };
    this.#queues = init.virtqueues.map((vq, i) => {
      const base = layout.queueOffset(i) + layout.reqOffset;
      return new VirtioBlkQueue<unknown>({
        index: i,
        virtqueue: vq,
        notifier: init.transport.notifier(i),
        pool: init.pool,
        limits,
        host,
        requestArea: init.queueRegion.bytes.subarray(base, base + layout.reqSize * layout.queueSize),
        requestAreaIova: init.queueRegion.iova + base,
        slotSize: layout.reqSize,
      });
    });
    this.#driver = new CompletionDriver(this.#queues, init.interrupts, init.mode, init.spinMicros, monotonicClock());
    const stall = init.stallTimeoutMs;
    if (stall !== undefined) {
      const tick = Math.max(1, Math.min(1000, Math.floor(stall / 4)));
      const timer = setInterval(() => {
        let busy = false;
        for (const q of this.#queues) {
          q.watchdogTick(tick, stall);
          if (q.virtqueue.inFlight > 0 && q.error === undefined) busy = true;
        }
        // While something waits on the device the watchdog keeps the process
        // alive (it will end the wait one way or the other); idle, it does not.
        if (!busy && this.#watchdogRefed) {
          this.#watchdogRefed = false;
          Deno.unrefTimer(timer);
        }
      }, tick);
      Deno.unrefTimer(timer);
      this.#watchdog = timer;
    }
  }

  /**
   * Connects to a virtio-blk device: negotiates features, reads the config,
   * maps the queue memory and a buffer pool, and starts the queues.
   *
   * @param options transport, queues and modes
   * @returns the connected device
   * @throws {InvalidArgumentError} for bad options, {@linkcode FeatureNegotiationError},
   *   {@linkcode DeviceProtocolError}, {@linkcode ConnectionLostError}, {@linkcode TimeoutError}
   */
  static async connect(options: VirtioBlkConnectOptions): Promise<VirtioBlk> {
    if (typeof options !== "object" || options === null) {
      throw new InvalidArgumentError("connect needs an options object");
    }
    checkPositiveInt("numQueues", options.numQueues, 65535);
    checkPositiveInt("queueSize", options.queueSize, 32768);
    checkPositiveInt("bufferPoolSize", options.bufferPoolSize, 2 ** 40);
    checkPositiveInt("stallTimeoutMs", options.stallTimeoutMs, 2 ** 31);
    checkPositiveInt("closeTimeoutMs", options.closeTimeoutMs, 2 ** 31);
    checkPositiveInt("indirectThreshold", options.indirectThreshold, 32768);
    checkPositiveInt("maxSegments", options.maxSegments, 32768);
    if (options.ring !== undefined && options.ring !== "split" && options.ring !== "packed") {
      throw new InvalidArgumentError(`ring must be "split" or "packed", got ${JSON.stringify(options.ring)}`);
    }
    const mode = options.mode ?? "eventfd";
    if (mode !== "poll" && mode !== "eventfd") {
      throw new InvalidArgumentError(`mode must be "poll" or "eventfd", got ${JSON.stringify(mode)}`);
    }
    const spinMicros = options.spinMicros ?? DEFAULT_SPIN_MICROS;
    if (!(spinMicros >= 0 && spinMicros <= 1e6)) {
      throw new InvalidArgumentError(`spinMicros must be from 0 to 1000000, got ${spinMicros}`);
    }
    const queueSize = options.queueSize ?? 256;
    if (queueSize < MIN_QUEUE_SIZE) {
      throw new InvalidArgumentError(
        `queueSize must be at least ${MIN_QUEUE_SIZE} (a read or write is a header, data and a status), got ${queueSize}`,
      );
    }
    // Validates the power of two before anything is opened.
    new VirtqueueLayout(options.numQueues ?? 1, queueSize, { format: options.ring ?? "split" });

    const transport = await openTransport(options);
    const regions: SharedRegion[] = [];
    let interrupts: InterruptSource | undefined;
    try {
      let wanted = DRIVER_FEATURES;
      if (options.features?.eventIdx ?? true) wanted |= VIRTIO_F_EVENT_IDX;
      if (options.features?.indirect ?? true) wanted |= VIRTIO_F_INDIRECT_DESC;
      const ring = options.ring ?? "split";
      if (ring === "packed") {
        if ((transport.deviceFeatures & VIRTIO_F_RING_PACKED) === 0n) {
          throw new FeatureNegotiationError(
            "packed rings were asked for, but the device does not offer VIRTIO_F_RING_PACKED",
          );
        }
        wanted |= VIRTIO_F_RING_PACKED;
      }
      if ((transport.deviceFeatures & VIRTIO_F_VERSION_1) === 0n) {
        throw new FeatureNegotiationError(
          "the device does not offer VIRTIO_F_VERSION_1 (legacy devices are not supported)",
        );
      }
      const features = await transport.negotiateFeatures(wanted);
      const config = parseBlkConfig(await transport.readConfig(0, VIRTIO_BLK_CONFIG_SIZE), features);
      const numQueues = options.numQueues ?? 1;
      const offered = Math.min(config.numQueues, transport.maxQueues);
      if (numQueues > offered) {
        throw new InvalidArgumentError(`numQueues ${numQueues} is more than the device offers (${offered})`);
      }
      if (queueSize > transport.maxQueueSize) {
        throw new InvalidArgumentError(
          `queueSize ${queueSize} is above the device's maximum ${transport.maxQueueSize}`,
        );
      }
      const indirect = (features & VIRTIO_F_INDIRECT_DESC) !== 0n;
      // A chain is header + data segments + status, never longer than the ring
      // (nor than an indirect table, which has as many entries as the ring).
      const maxSegments = Math.max(
        1,
        Math.min(config.segMax ?? Infinity, queueSize - 2, options.maxSegments ?? Infinity),
      );
      const tableEntries = Math.min(queueSize, maxSegments + 2);
      const slotSize = SLOT.SIZE + (indirect ? Math.ceil((16 * tableEntries) / 64) * 64 : 0);
      const layout = new VirtqueueLayout(numQueues, queueSize, { reqSize: slotSize, format: ring });
      const queueRegion = transport.createRegion(layout.totalSize, "virtio-blk-queues");
      regions.push(queueRegion);
      const poolRegion = transport.createRegion(options.bufferPoolSize ?? DEFAULT_POOL, "virtio-blk-buffers");
      regions.push(poolRegion);
      await transport.mapMemRegion(queueRegion);
      await transport.mapMemRegion(poolRegion);
      const pool = new BufferPool(poolRegion);
      const eventIdx = (features & VIRTIO_F_EVENT_IDX) !== 0n;
      const virtqueues: Virtqueue[] = [];
      const queueConfigs: QueueConfig[] = [];
      for (let i = 0; i < numQueues; i++) {
        const off = layout.queueOffset(i);
        const vqOptions = {
          layout,
          memory: queueRegion.bytes.subarray(off, off + layout.stride),
          iova: queueRegion.iova + off,
          eventIdx,
          translate: (b: Uint8Array) => pool.iovaOf(b),
          name: `queue ${i}`,
          strictUsedLength: options.strictUsedLength ?? false,
          indirect: indirect
            ? { slotOffset: SLOT.SIZE, maxDescriptors: tableEntries, threshold: options.indirectThreshold }
            : undefined,
        };
        const vq = ring === "packed" ? new PackedVirtqueue(vqOptions) : new SplitVirtqueue(vqOptions);
        virtqueues.push(vq);
        queueConfigs.push({
          index: i,
          size: queueSize,
          format: ring,
          descIova: vq.descTableIova,
          driverIova: vq.driverAreaIova,
          deviceIova: vq.deviceAreaIova,
        });
      }
      await transport.setupQueues(queueConfigs);
      // Poll mode waits on no interrupt: the queues' signals are not watched.
      interrupts = await transport.createInterruptSource({ queues: mode === "eventfd" });
      return new VirtioBlk({
        transport,
        regions,
        pool,
        config,
        features,
        layout,
        virtqueues,
        queueRegion,
        interrupts,
        mode,
        spinMicros,
        closeTimeoutMs: options.closeTimeoutMs ?? 5000,
        stallTimeoutMs: options.stallTimeoutMs,
        maxSegments,
      });
    } catch (e) {
      await interrupts?.close().catch(() => {});
      await transport.close().catch(() => {});
      for (const r of regions) r.close();
      throw e;
    }
  }

  #connectionError(): VirtioError | undefined {
    if (this.#lost === undefined && this.#interrupts.hungUp) {
      this.#lost = new ConnectionLostError(`the ${this.transportType} backend hung up`);
    }
    return this.#lost;
  }

  #checkOpen(): void {
    if (this.#closing) throw new ClosedError();
  }

  /**
   * Allocates a buffer the device can reach directly (zero-copy I/O). Its
   * view is detached when freed or when the device is closed.
   *
   * @param size bytes (> 0)
   * @returns the buffer
   * @throws {OutOfBufferMemoryError} when the pool is exhausted
   */
  allocBuffer(size: number): Uint8Array<ArrayBuffer> {
    this.#checkOpen();
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new InvalidArgumentError(`buffer size must be a positive integer, got ${size}`);
    }
    return this.#pool.alloc(size);
  }

  /**
   * Returns a buffer from {@linkcode VirtioBlk.allocBuffer} to the pool; the
   * view reads as empty afterwards.
   *
   * @param buf the buffer (not a subarray of it)
   */
  freeBuffer(buf: Uint8Array<ArrayBuffer>): void {
    this.#checkOpen();
    if (!this.#pool.free(buf)) {
      throw new InvalidArgumentError("freeBuffer: not a buffer from this device's allocBuffer (or already freed)");
    }
  }

  /** Times the completion loop went to sleep on the device's interrupts (eventfd mode; a statistic). */
  get completionSleeps(): number {
    return this.#driver.sleeps;
  }

  /** Bytes of the buffer pool not allocated. */
  get bufferPoolAvailable(): number {
    return this.#pool.available;
  }

  /**
   * Queue `index`, for the batch API.
   *
   * @param index 0 to numQueues - 1
   * @returns the queue
   */
  queue<T = unknown>(index: number): VirtioBlkQueue<T> {
    const q = this.#queues[index];
    if (!Number.isInteger(index) || q === undefined) {
      throw new InvalidArgumentError(`queue index must be from 0 to ${this.numQueues - 1}, got ${index}`);
    }
    return q as VirtioBlkQueue<T>;
  }

  #pick(): VirtioBlkQueue<unknown> {
    const n = this.#queues.length;
    const q = this.#queues[this.#nextQueue];
    this.#nextQueue = this.#nextQueue + 1 === n ? 0 : this.#nextQueue + 1;
    return q;
  }

  #submit(
    op: number,
    offset: number | bigint,
    buffers: Uint8Array | readonly Uint8Array[] | undefined,
    length: number | bigint,
    unmap: boolean,
  ): Promise<unknown> {
    if (this.#closing) return Promise.reject(new ClosedError());
    return this.#pick().enqueuePromise(op, offset, buffers, length, unmap);
  }

  /**
   * Reads `buf.byteLength` bytes at `offset` into `buf`.
   *
   * @param offset byte offset, a multiple of {@linkcode VirtioBlk.blockSize}
   * @param buf destination; from {@linkcode VirtioBlk.allocBuffer} for zero-copy (others are bounced)
   */
  read(offset: number | bigint, buf: Uint8Array): Promise<void> {
    return this.#submit(OP_READ, offset, buf, 0, false) as Promise<void>;
  }

  /**
   * Writes `buf` at `offset`.
   *
   * @param offset byte offset, block-aligned
   * @param buf source
   */
  write(offset: number | bigint, buf: Uint8Array): Promise<void> {
    return this.#submit(OP_WRITE, offset, buf, 0, false) as Promise<void>;
  }

  /**
   * Reads into several buffers, filled in order from `offset`.
   *
   * @param offset byte offset, block-aligned
   * @param bufs destinations; their total length is block-aligned
   */
  readv(offset: number | bigint, bufs: readonly Uint8Array[]): Promise<void> {
    return this.#submit(OP_READ, offset, bufs, 0, false) as Promise<void>;
  }

  /**
   * Writes several buffers, in order, from `offset`.
   *
   * @param offset byte offset, block-aligned
   * @param bufs sources; their total length is block-aligned
   */
  writev(offset: number | bigint, bufs: readonly Uint8Array[]): Promise<void> {
    return this.#submit(OP_WRITE, offset, bufs, 0, false) as Promise<void>;
  }

  /** Flushes the device's volatile write cache (completes at once when it has none). */
  flush(): Promise<void> {
    return this.#submit(OP_FLUSH, 0, undefined, 0, false) as Promise<void>;
  }

  /**
   * Discards `[offset, offset + length)`: the device may deallocate it.
   *
   * @param offset byte offset, aligned to the device's discard alignment
   * @param length byte length, at most the device's discard limit
   */
  discard(offset: number | bigint, length: number | bigint): Promise<void> {
    return this.#submit(OP_DISCARD, offset, undefined, length, false) as Promise<void>;
  }

  /**
   * Writes zeroes to `[offset, offset + length)`.
   *
   * @param offset byte offset, block-aligned
   * @param length byte length, at most the device's write-zeroes limit
   * @param options `unmap: true` lets the device deallocate the range
   */
  writeZeroes(offset: number | bigint, length: number | bigint, options?: WriteZeroesOptions): Promise<void> {
    return this.#submit(OP_WRITE_ZEROES, offset, undefined, length, options?.unmap === true) as Promise<void>;
  }

  /**
   * The device's id string (VIRTIO_BLK_T_GET_ID), e.g. a serial number.
   *
   * @returns up to 20 characters
   * @throws {DeviceUnsupportedError} when the device does not implement it
   */
  getId(): Promise<string> {
    return this.#submit(OP_GET_ID, 0, undefined, 0, false) as Promise<string>;
  }

  /**
   * Closes the device: refuses new requests, waits up to `closeTimeoutMs`
   * for requests in flight (those left reject with {@linkcode ClosedError}),
   * stops the queues, and releases every descriptor and mapping. Buffers
   * from {@linkcode VirtioBlk.allocBuffer} read as empty afterwards.
   * Calling it again returns the same promise.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    for (const q of this.#queues) q.closeForNew();
    const deadline = performance.now() + this.#closeTimeoutMs;
    // Requests the device still owns (on queues that have not failed).
    const busy = () => this.#queues.some((q) => q.error === undefined && q.virtqueue.inFlight > 0);
    let turns = 0;
    while (busy() && this.#connectionError() === undefined && performance.now() < deadline) {
      for (const q of this.#queues) q.drain();
      if (!busy()) break;
      await new Promise((r) => (++turns < 1000 ? setImmediate(r) : setTimeout(r, 1)));
    }
    const closed = new ClosedError("the device was closed while this request was in flight");
    for (const q of this.#queues) {
      q.drain();
      if (q.virtqueue.inFlight > 0) q.fail(closed);
    }
    if (this.#watchdog !== undefined) clearInterval(this.#watchdog);
    await this.#driver.close();
    try {
      await this.#transport.close();
    } finally {
      for (const r of this.#regions) r.close();
    }
  }

  /** Same as {@linkcode VirtioBlk.close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
