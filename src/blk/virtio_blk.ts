/**
 * {@linkcode VirtioBlk}: a virtio-blk device, connected and ready for I/O —
 * the promise API, buffers, the batch API's queues, and close. Where a
 * request goes from here: `queue_engine.ts` turns it into a descriptor chain
 * on a ring (`src/virtqueue/`), the transport (`src/transport/`) tells the
 * device, and the completion loop (`completion_driver.ts`) brings it back.
 *
 * @module
 */

import {
  ClosedError,
  ConnectionLostError,
  DeviceProtocolError,
  DeviceUnsupportedError,
  InvalidArgumentError,
  TimeoutError,
  type VirtioError,
} from "../errors.ts";
import type { BufferPool } from "../memory/buffer_pool.ts";
import { monotonicClock } from "../os/syscalls.ts";
import { attachTransport, type ConnectTarget, connectTransport } from "../transport/connect.ts";
import type { InterruptSource, Transport, TransportType } from "../transport/transport.ts";
import { CompletionDriver, type CompletionMode } from "./completion_driver.ts";
import { VIRTIO_BLK_CONFIG_SIZE, type VirtioBlkConfig } from "./config.ts";
import { type BlkLimits, limitsOf, publicLimits, type VirtioBlkLimits } from "./limits.ts";
import { type ConfigChangeDetail, ConfigWatch, type ConfigWatchStats } from "./config_watch.ts";
import { featuresOf, type VirtioBlkFeatures } from "./features.ts";
import { type ResolvedOptions, resolveOptions, type VirtioBlkConnectOptions } from "./options.ts";
import { queueFacade, type VirtioBlkQueue, type WriteZeroesOptions } from "./queue.ts";
import { QueueEngine, type QueueHost } from "./queue_engine.ts";
import {
  allocateMemory,
  type DeviceMemory,
  negotiate,
  type Negotiated,
  renegotiate,
  type Started,
  startQueues,
} from "./setup.ts";
import {
  BLK_CONFIG,
  VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from "./spec.ts";
import { StallWatchdog } from "./stall_watchdog.ts";
import { VirtioBlkEvents } from "./events.ts";
import { BulkSplitter } from "./bulk.ts";
import { deviceReadable } from "./device_readable.ts";
import { deviceWritable, writeFromStream } from "./device_writable.ts";
import type { ReadableOptions, WritableOptions } from "./stream_options.ts";
import { type ConnectionStats, Reconnector } from "./reconnect.ts";
import { HandOvers } from "./hand_overs.ts";
import {
  type AttachOptions,
  type DetachQueueOptions,
  isQueueHandle,
  type VirtioBlkQueueHandle,
} from "./queue_handle.ts";
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED } from "../virtio/spec.ts";

/**
 * A virtio-blk device.
 *
 * @example Read and write through vhost-user
 * ```ts ignore
 * import { VirtioBlk } from "@virtio/deno";
 * await using blk = await VirtioBlk.connect({ transport: "vhost-user", path: "/tmp/x.sock" });
 * const buf = blk.allocBuffer(4096);
 * buf.fill(0xab);
 * await blk.write(0, buf);
 * await blk.read(0, buf);
 * await blk.flush();
 * ```
 *
 * @example Against the in-process mock device
 * ```ts
 * import { VirtioBlk } from "../../mod.ts";
 * import { MockBlkDevice } from "../../testing.ts";
 * const device = new MockBlkDevice({ capacity: 1 << 20 });
 * await using blk = await VirtioBlk.connect({ transport: "mock", device });
 * await blk.write(0, new Uint8Array(512).fill(7));
 * console.log(device.disk[0]); // 7
 * ```
 */
export class VirtioBlk extends VirtioBlkEvents implements AsyncDisposable {
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
  /** Most data buffers in one request. */
  readonly maxSegments: number;
  /** Largest data buffer in one request, in bytes. */
  readonly maxSegmentSize: number;
  /** How completions are noticed. */
  readonly mode: CompletionMode;
  /** The transport in use. */
  readonly transportType: TransportType;

  #transport: Transport;
  readonly #memory: DeviceMemory;
  readonly #pool: BufferPool;
  readonly #engines: QueueEngine<unknown>[];
  /** Where promise requests go, round-robin: the queues not handed over. */
  readonly #submitTo: QueueEngine<unknown>[];
  /** What the completion loop reaps: the queues not handed over. */
  readonly #driven: QueueEngine<unknown>[];
  readonly #handOvers = new HandOvers();
  readonly #detaching = new Set<number>();
  #hangupWatch: Promise<void> | undefined;
  readonly #queues: VirtioBlkQueue<unknown>[];
  #driver: CompletionDriver;
  #interrupts: InterruptSource;
  readonly #target: ConnectTarget;
  readonly #negotiated: Negotiated;
  readonly #options: ResolvedOptions;
  readonly #reconnector: Reconnector | undefined;
  readonly #closeTimeoutMs: number;
  readonly #watchdog: StallWatchdog | undefined;
  readonly #limits: BlkLimits;
  readonly #configWatch: ConfigWatch;
  readonly #bulk: BulkSplitter;
  readonly #publicLimits: VirtioBlkLimits;
  #nextQueue = 0;
  #lost: VirtioError | undefined;
  #endedWith: VirtioError | undefined;
  #closing: Promise<void> | undefined;

  private constructor(
    target: ConnectTarget,
    transport: Transport,
    n: Negotiated,
    memory: DeviceMemory,
    started: Started,
    o: ResolvedOptions,
  ) {
    super();
    const { config, layout } = n;
    this.#target = target;
    this.#negotiated = n;
    this.#options = o;
    this.#transport = transport;
    this.#memory = memory;
    this.#pool = memory.pool;
    this.#interrupts = started.interrupts;
    this.#closeTimeoutMs = o.closeTimeoutMs;
    this.transportType = transport.type;
    this.blockSize = config.blkSize;
    this.features = featuresOf(n.features);
    this.readOnly = this.features.readOnly;
    this.numQueues = layout.numQueues;
    this.queueSize = layout.queueSize;
    this.mode = o.mode;
    this.maxSegments = n.maxSegments;
    this.maxSegmentSize = config.sizeMax ?? 0xffff_ffff;
    const limits = this.#limits = limitsOf(n.config, this.features, n.maxSegments, transport.maxTransferBytes);
    this.#configWatch = new ConfigWatch(
      () => this.#transport.readConfig(0, VIRTIO_BLK_CONFIG_SIZE),
      n.features,
      config,
      (next, previous) => this.#configChanged(next, previous),
      () => this.#transport.backendChannel,
    );
    const host: QueueHost = {
      requestDriving: () => {
        this.#watchdog?.engage();
        this.#driver.requestDriving();
      },
      connectionError: () => this.#connectionError(),
    };
    this.#engines = started.rings.map((ring, i) => {
      const base = layout.queueOffset(i) + layout.reqOffset;
      return new QueueEngine<unknown>({
        index: i,
        ring,
        notifier: transport.notifier(i),
        pool: memory.pool,
        limits,
        host,
        requestArea: memory.queueRegion.bytes.subarray(base, base + layout.reqSize * layout.queueSize),
        requestAreaIova: memory.queueRegion.iova + base,
        slotSize: layout.reqSize,
      });
    });
    this.#submitTo = [...this.#engines];
    this.#driven = [...this.#engines];
    this.#queues = this.#engines.map((e) => queueFacade(e));
    this.#publicLimits = publicLimits(limits, config);
    this.#bulk = new BulkSplitter(
      limits,
      memory.pool,
      (type, off, bufs, len, unmap) => this.#submitOne(type, off, bufs, len, unmap),
    );
    this.#driver = new CompletionDriver(this.#driven, started.interrupts, o.mode, o.spinMicros, monotonicClock());
    this.#watchdog = o.stallTimeoutMs === undefined ? undefined : new StallWatchdog(this.#engines, o.stallTimeoutMs);
    this.#reconnector = o.reconnect === undefined ? undefined : new Reconnector(this.#engines, o.reconnect, {
      drop: () => this.#dropConnection(),
      attempt: (replyTimeoutMs, wanted) => this.#reconnectOnce(replyTimeoutMs, wanted),
      dispatch: (event) => this.dispatchEvent(event),
      lost: (error) => {
        this.#lost = error;
        for (const e of this.#engines) e.fail(error);
      },
    });
  }

  /**
   * Connects to a virtio-blk device: negotiates features, reads the config,
   * maps the queue memory and a buffer pool, and starts the queues.
   *
   * @param options where the device is (`transport`, and its `path`, `fd` or `device`), queues and modes
   * @returns the connected device
   * @throws {InvalidArgumentError} for bad options, {@linkcode ConnectFailedError},
   *   {@linkcode FeatureNegotiationError}, {@linkcode DeviceProtocolError},
   *   {@linkcode ConnectionLostError}, {@linkcode TimeoutError}
   */
  static async connect(options: VirtioBlkConnectOptions): Promise<VirtioBlk> {
    const o = resolveOptions(options);
    const transport = await connectTransport(options, {
      requestTimeoutMs: o.requestTimeoutMs,
      interrupts: o.mode === "eventfd",
    });
    let memory: DeviceMemory | undefined;
    let started: Started | undefined;
    let n: Negotiated;
    try {
      n = await negotiate(transport, o);
      memory = allocateMemory(transport, n, o.bufferPoolSize);
      started = await startQueues(transport, n, memory, o);
    } catch (e) {
      await started?.interrupts.close().catch(() => {});
      await transport.close().catch(() => {});
      memory?.queueRegion.close();
      memory?.pool.region.close();
      throw e;
    }
    const blk = new VirtioBlk(options, transport, n, memory, started, o);
    try {
      blk.#configWatch.signal = await transport.watchConfig(() => blk.#configWatch.notify());
      if (blk.#reconnector) await transport.watchHangup(() => blk.#hangUp());
      transport.watchEnd?.((error) => blk.#ended(error));
    } catch (e) {
      await blk.close().catch(() => {});
      throw e;
    }
    return blk;
  }

  /** The request limits, under libblkio's names (`requestAlignment` for request-alignment, …). */
  get limits(): VirtioBlkLimits {
    return this.#publicLimits;
  }

  /** Capacity in bytes (follows the device: see {@linkcode VirtioBlk.refreshConfig}). */
  get capacity(): bigint {
    return this.#configWatch.current.capacity;
  }

  /** The device's configuration (replaced, never mutated, when the device changes it). */
  get config(): VirtioBlkConfig {
    return this.#configWatch.current;
  }

  /**
   * Reads the configuration again now — for a change learned of elsewhere,
   * or from a device that cannot signal one (`configStats().signal` is
   * `"none"`). A change dispatches `"configchange"` before this resolves.
   *
   * @returns the configuration in force
   * @throws {DeviceProtocolError} when the device's config does not parse (nothing is changed)
   */
  refreshConfig(): Promise<VirtioBlkConfig> {
    if (this.#closing) return Promise.reject(this.#closedError());
    return this.#configWatch.refresh();
  }

  /** How configuration changes reach this driver, and how many did. */
  configStats(): ConfigWatchStats {
    return this.#configWatch.stats();
  }

  /**
   * Switches the device's volatile write cache between writeback (true) and
   * writethrough (false) through the config space's `writeback` field
   * (VIRTIO_BLK_F_CONFIG_WCE; virtio 1.2, 5.2.5), then reads it back.
   *
   * @param enabled writeback (true) or writethrough (false)
   * @returns the configuration in force afterwards
   * @throws {DeviceUnsupportedError} when the device does not offer CONFIG_WCE, or did not take the new mode
   */
  async setWriteCache(enabled: boolean): Promise<VirtioBlkConfig> {
    this.#checkOpen();
    if ((this.features.bits & VIRTIO_BLK_F_CONFIG_WCE) === 0n) {
      throw new DeviceUnsupportedError(
        "the device does not offer VIRTIO_BLK_F_CONFIG_WCE: its write cache mode cannot be switched",
      );
    }
    const want = enabled ? 1 : 0;
    try {
      await this.#transport.writeConfig(BLK_CONFIG.WRITEBACK, Uint8Array.of(want));
    } catch (e) {
      if (e instanceof DeviceProtocolError && e.violation === "request-refused") {
        throw new DeviceUnsupportedError(`the device refused to switch its write cache: ${e.message}`);
      }
      throw e;
    }
    const config = await this.refreshConfig();
    if (config.writeback !== want) {
      throw new DeviceUnsupportedError(
        `the device kept writeback = ${config.writeback} after it was asked for ${want}`,
      );
    }
    return config;
  }

  /** Takes a changed configuration: capacity and limits first, then the event. */
  #configChanged(next: VirtioBlkConfig, previous: VirtioBlkConfig): void {
    // Requests are checked against the capacity as of their submission; one
    // in flight past a new, smaller end is the device's to answer.
    this.#limits.capacity = Number(next.capacity);
    const detail: ConfigChangeDetail = { config: next, previousConfig: previous, previousCapacity: previous.capacity };
    this.dispatchEvent(new CustomEvent("configchange", { detail }));
  }

  /** With `reconnect`: the back-end hung up (noticed at once, also while nothing is in flight). */
  #hangUp(): void {
    if (this.#lost !== undefined || this.#closing !== undefined) return;
    this.#reconnector?.begin(new ConnectionLostError(`the ${this.transportType} backend hung up`));
  }

  /** What a request meets once the device is closing: why a handed-over queue ended, or `ClosedError`. */
  #closedError(): VirtioError {
    return this.#endedWith ?? new ClosedError();
  }

  /** A queue handed over: its owner closed the device or lost the back-end; everything here fails, then closes. */
  #ended(error: VirtioError): void {
    if (this.#closing !== undefined) return;
    this.#endedWith = error;
    this.#lost ??= error;
    for (const e of this.#engines) e.fail(error);
    void this.close();
  }

  /**
   * Hands queue `index` over to a Worker: returns a plain handle to post to
   * it, where {@linkcode VirtioBlk.attach} makes a one-queue `VirtioBlk` of
   * it. From then on this side sends no request to that queue (the promise
   * API uses the others; `queue(index)` throws), and the Worker drives it
   * alone — its rings, its notifications, its interrupts, and `bufferBytes`
   * of buffer memory shared with the device here, now — with nothing per
   * request crossing threads. This side keeps the control plane: when it
   * closes, or loses the back-end, the Worker's requests fail at once with
   * `ClosedError` or `ConnectionLostError`.
   *
   * Requests in flight on the queue complete first. Refused (typed errors):
   * an index out of range, a queue handed over before, a device connected
   * with `reconnect` (its rings are rebuilt on a new connection, which a
   * Worker cannot follow), and the mock device (it lives in this isolate).
   *
   * @example
   * ```ts ignore
   * await using blk = await VirtioBlk.connect({ transport: "vhost-user", path: "/tmp/x.sock", numQueues: 2 });
   * const worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
   * worker.postMessage(await blk.detachQueue(1, { bufferBytes: 16 << 20 }));
   * await blk.read(0, blk.allocBuffer(4096)); // queue 0, here
   * ```
   *
   * @param index the queue
   * @param options the Worker's buffer memory
   * @returns the handle (structured-cloneable)
   * @throws {InvalidArgumentError} for what cannot be handed over
   */
  async detachQueue(index: number, options: DetachQueueOptions): Promise<VirtioBlkQueueHandle> {
    this.#checkOpen();
    const e = this.#engines[index];
    if (!Number.isInteger(index) || e === undefined) {
      throw new InvalidArgumentError(`queue index must be from 0 to ${this.numQueues - 1}, got ${index}`);
    }
    const bytes = options?.bufferBytes;
    if (!Number.isSafeInteger(bytes) || bytes < 65536) {
      throw new InvalidArgumentError(`bufferBytes must be an integer of at least 65536, got ${bytes}`);
    }
    if (this.#handOvers.has(index) || this.#detaching.has(index)) {
      throw new InvalidArgumentError(`queue ${index} was handed over already`);
    }
    if (this.#reconnector) {
      throw new InvalidArgumentError(
        "detachQueue: a device connected with `reconnect` keeps its queues (a new connection rebuilds the rings)",
      );
    }
    const transport = this.#transport;
    if (transport.handOverQueue === undefined) {
      throw new InvalidArgumentError(
        `detachQueue: the ${transport.type} device runs in this isolate; a Worker cannot reach its queues`,
      );
    }
    if (e.error) throw e.error;
    this.#detaching.add(index);
    try {
      return await this.#detach(index, e, bytes);
    } finally {
      this.#detaching.delete(index);
    }
  }

  async #detach(index: number, e: QueueEngine<unknown>, bytes: number): Promise<VirtioBlkQueueHandle> {
    const transport = this.#transport;
    // No new requests here; those in flight (or waiting for room) complete.
    const at = this.#submitTo.indexOf(e);
    if (at >= 0) this.#submitTo.splice(at, 1);
    try {
      await this.#quiesce(e);
    } catch (err) {
      if (at >= 0) this.#submitTo.splice(at, 0, e);
      throw err;
    }
    const region = transport.createRegion(bytes, `virtio-blk-queue${index}-worker-buffers`);
    let handOver;
    let config: Uint8Array<ArrayBuffer>;
    try {
      await transport.mapMemRegion(region);
      config = new Uint8Array(await transport.readConfig(0, VIRTIO_BLK_CONFIG_SIZE));
      // Once per device: the back-end's hang-up ends every hand-over.
      this.#hangupWatch ??= transport.watchHangup(() => this.#handOvers.lost()).catch((err) => {
        this.#hangupWatch = undefined;
        throw err;
      });
      await this.#hangupWatch;
      handOver = await transport.handOverQueue!(index);
    } catch (err) {
      if (region.iova >= 0) await transport.unmapMemRegion(region).catch(() => {});
      region.close();
      if (at >= 0) this.#submitTo.splice(at, 0, e);
      throw err;
    }
    if (this.#closing) {
      // Closed meanwhile: nothing was handed over.
      handOver.end("closed");
      await handOver.settle(0);
      await handOver.release();
      await transport.unmapMemRegion(region).catch(() => {}); // or the transport's close did
      region.close();
      throw this.#closedError();
    }
    // From here the queue is the Worker's: this side never touches its ring again.
    const position = e.ring.position();
    e.fail(new InvalidArgumentError(`queue ${index} was handed to a Worker (detachQueue): use it there`));
    this.#driven.splice(this.#driven.indexOf(e), 1);
    this.#interrupts.forgetQueue?.(index);
    this.#handOvers.add(index, handOver, region);
    const layout = this.#negotiated.layout, qr = this.#memory.queueRegion, off = layout.queueOffset(index);
    const ring = e.ring, o = this.#options;
    return {
      kind: "virtio-blk-queue",
      version: 1,
      index,
      queue: {
        type: transport.type,
        features: this.#negotiated.features,
        config,
        maxQueueSize: transport.maxQueueSize,
        maxTransferBytes: transport.maxTransferBytes,
        queue: {
          index,
          size: layout.queueSize,
          format: layout.format,
          descIova: ring.descTableIova,
          driverIova: ring.driverAreaIova,
          deviceIova: ring.deviceAreaIova,
        },
        position,
        rings: { address: qr.addr + off, length: layout.stride, iova: qr.iova + off },
        buffers: { address: region.addr, length: region.size, iova: region.iova },
        notify: handOver.notify,
        interrupts: handOver.interrupts,
        control: handOver.control,
      },
      maxSegments: this.maxSegments,
      mode: o.mode,
      spinMicros: o.spinMicros,
      strictUsedLength: o.strictUsedLength,
      indirectThreshold: o.indirectThreshold,
    };
  }

  /** Waits (driving completions) until `e` has nothing in flight or waiting, within the close timeout. */
  async #quiesce(e: QueueEngine<unknown>): Promise<void> {
    const deadline = performance.now() + this.#closeTimeoutMs;
    while (e.ring.inFlight > 0 || e.backlogLength > 0) {
      if (e.error) throw e.error;
      if (performance.now() > deadline) {
        throw new TimeoutError(
          `queue ${e.index}: requests in flight did not complete within ${this.#closeTimeoutMs} ms`,
        );
      }
      this.#driver.requestDriving();
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /**
   * The `VirtioBlk` of a queue handed over by {@linkcode VirtioBlk.detachQueue}
   * in another isolate of this process (call it in the Worker the handle
   * was posted to). It has one queue — queue 0 here, the handed-over one on
   * the device — and the same API: `read`, `write`, `readv`, `writev`,
   * `flush`, `discard`, `writeZeroes`, `getId`, streams, `allocBuffer` (from
   * the memory handed over), `queue(0)`, poll or eventfd mode, `close()`.
   * Its configuration is the one at hand-over (the connecting side keeps
   * watching the device). Needs `--allow-ffi` in the Worker.
   *
   * @example
   * ```ts ignore
   * // worker.ts
   * import { VirtioBlk } from "@virtio/deno";
   * self.onmessage = async (e: MessageEvent) => {
   *   await using blk = await VirtioBlk.attach(e.data);
   *   const buf = blk.allocBuffer(4096);
   *   await blk.read(0, buf);
   *   self.postMessage("done");
   * };
   * ```
   *
   * @param handle what {@linkcode VirtioBlk.detachQueue} returned, posted here
   * @param options completion mode and spin, when not the connecting side's
   * @returns the device, limited to that queue
   * @throws {ClosedError} when the connecting side closed the device already;
   *   {@linkcode InvalidArgumentError} for a handle attached before, or not a handle
   */
  static async attach(handle: VirtioBlkQueueHandle, options: AttachOptions = {}): Promise<VirtioBlk> {
    if (!isQueueHandle(handle)) {
      throw new InvalidArgumentError("VirtioBlk.attach needs a handle from VirtioBlk.detachQueue (posted as it is)");
    }
    const transport = await attachTransport(handle.queue);
    const f = handle.queue.features;
    try {
      return await VirtioBlk.connect({
        transport,
        numQueues: 1,
        queueSize: handle.queue.queue.size,
        ring: (f & VIRTIO_F_RING_PACKED) !== 0n ? "packed" : "split",
        features: { eventIdx: (f & VIRTIO_F_EVENT_IDX) !== 0n, indirect: (f & VIRTIO_F_INDIRECT_DESC) !== 0n },
        maxSegments: handle.maxSegments,
        bufferPoolSize: handle.queue.buffers.length,
        mode: options.mode ?? handle.mode,
        spinMicros: options.spinMicros ?? handle.spinMicros,
        strictUsedLength: handle.strictUsedLength,
        indirectThreshold: handle.indirectThreshold,
      });
    } catch (e) {
      await transport.close().catch(() => {}); // lets go
      throw e;
    }
  }

  #connectionError(): VirtioError | undefined {
    if (this.#lost !== undefined) return this.#lost;
    const r = this.#reconnector;
    if (r !== undefined && r.state !== "connected") return undefined; // the queues are paused meanwhile
    if (this.#interrupts.hungUp) {
      const error = new ConnectionLostError(`the ${this.transportType} backend hung up`);
      if (r !== undefined && this.#closing === undefined) {
        r.begin(error);
        return undefined;
      }
      this.#lost = error;
    }
    return this.#lost;
  }

  /** Reconnect, first step: releases the lost connection (its completion loop, interrupt source and transport). */
  async #dropConnection(): Promise<void> {
    await this.#driver.close();
    await this.#transport.close();
  }

  /**
   * Reconnect, one attempt: connects to the same socket, checks that the
   * device is the same, sets up fresh rings over the same memory and resumes
   * the queues on them. What it opened is closed again when it fails.
   */
  async #reconnectOnce(replyTimeoutMs: number, wanted: () => boolean): Promise<void> {
    const o = this.#options;
    const transport = await connectTransport(this.#target, {
      requestTimeoutMs: replyTimeoutMs,
      interrupts: o.mode === "eventfd",
    });
    let started: Started | undefined;
    try {
      const n = this.#negotiated;
      await renegotiate(transport, n, this.config, o.reconnect!.allowShrink);
      this.#memory.queueRegion.bytes.fill(0); // fresh rings over the same memory
      started = await startQueues(transport, n, this.#memory, o);
      if (!wanted()) throw new ClosedError("the reconnect was called off");
      const rings = started.rings;
      this.#transport = transport;
      this.#interrupts = started.interrupts;
      this.#engines.forEach((e, i) => e.resume(rings[i], transport.notifier(i)));
      this.#driver = new CompletionDriver(this.#driven, started.interrupts, o.mode, o.spinMicros, monotonicClock());
    } catch (e) {
      await started?.interrupts.close().catch(() => {});
      await transport.close().catch(() => {});
      throw e;
    }
    // The device may have changed while it was away (grown, say): look.
    this.#configWatch.signal = await transport.watchConfig(() => this.#configWatch.notify()).catch(() => "none");
    this.#configWatch.notify();
    await transport.watchHangup(() => this.#hangUp());
  }

  /** The connection's state, and what back-end restarts it rode out (with `reconnect`). */
  connectionStats(): ConnectionStats {
    if (this.#reconnector) return this.#reconnector.stats();
    const state = this.#closing ? "closed" : this.#lost ? "lost" : "connected";
    return { state, reconnects: 0, resubmitted: 0, attempts: 0, lastDowntimeMs: undefined, longestDowntimeMs: 0 };
  }

  #checkOpen(): void {
    if (this.#closing) throw this.#closedError();
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
    if (this.#handOvers.has(index)) {
      throw new InvalidArgumentError(`queue ${index} was handed to a Worker (detachQueue): use it there`);
    }
    return q as VirtioBlkQueue<T>;
  }

  #submit(
    type: number,
    offset: number | bigint,
    buffers: Uint8Array | readonly Uint8Array[] | undefined,
    length: number | bigint,
    unmap: boolean,
  ): Promise<unknown> {
    if (!this.#bulk.fits(type, buffers, length)) {
      if (this.#closing) return Promise.reject(this.#closedError());
      return this.#bulk.run(type, offset, buffers, length, unmap);
    }
    return this.#submitOne(type, offset, buffers, length, unmap);
  }

  /** One request that fits, on the next queue in turn. */
  #submitOne(
    type: number,
    offset: number | bigint,
    buffers: Uint8Array | readonly Uint8Array[] | undefined,
    length: number | bigint,
    unmap: boolean,
  ): Promise<unknown> {
    if (this.#closing) return Promise.reject(this.#closedError());
    const to = this.#submitTo, n = to.length;
    if (n === 0) {
      return Promise.reject(
        new InvalidArgumentError(
          "every queue of this device was handed to a Worker (detachQueue): requests go through the Workers",
        ),
      );
    }
    if (this.#nextQueue >= n) this.#nextQueue = 0;
    const e = to[this.#nextQueue];
    this.#nextQueue = this.#nextQueue + 1 === n ? 0 : this.#nextQueue + 1;
    return e.addPromise(type, offset, buffers, length, unmap);
  }

  /**
   * Reads `buf.byteLength` bytes at `offset` into `buf`.
   *
   * @param offset byte offset, a multiple of {@linkcode VirtioBlk.blockSize}
   * @param buf destination; from {@linkcode VirtioBlk.allocBuffer} for zero-copy (others are bounced)
   */
  read(offset: number | bigint, buf: Uint8Array): Promise<void> {
    return this.#submit(VIRTIO_BLK_T_IN, offset, buf, 0, false) as Promise<void>;
  }

  /**
   * Writes `buf` at `offset`.
   *
   * @param offset byte offset, block-aligned
   * @param buf source
   */
  write(offset: number | bigint, buf: Uint8Array): Promise<void> {
    return this.#submit(VIRTIO_BLK_T_OUT, offset, buf, 0, false) as Promise<void>;
  }

  /**
   * Reads into several buffers, filled in order from `offset`.
   *
   * @param offset byte offset, block-aligned
   * @param bufs destinations; their total length is block-aligned
   */
  readv(offset: number | bigint, bufs: readonly Uint8Array[]): Promise<void> {
    return this.#submit(VIRTIO_BLK_T_IN, offset, bufs, 0, false) as Promise<void>;
  }

  /**
   * Writes several buffers, in order, from `offset`.
   *
   * @param offset byte offset, block-aligned
   * @param bufs sources; their total length is block-aligned
   */
  writev(offset: number | bigint, bufs: readonly Uint8Array[]): Promise<void> {
    return this.#submit(VIRTIO_BLK_T_OUT, offset, bufs, 0, false) as Promise<void>;
  }

  /** Flushes the device's volatile write cache (completes at once when it has none). */
  flush(): Promise<void> {
    return this.#submit(VIRTIO_BLK_T_FLUSH, 0, undefined, 0, false) as Promise<void>;
  }

  /**
   * Discards `[offset, offset + length)`: the device may deallocate it.
   *
   * @param offset byte offset, aligned to the device's discard alignment
   * @param length byte length, at most the device's discard limit
   */
  discard(offset: number | bigint, length: number | bigint): Promise<void> {
    return this.#submit(VIRTIO_BLK_T_DISCARD, offset, undefined, length, false) as Promise<void>;
  }

  /**
   * Writes zeroes to `[offset, offset + length)`.
   *
   * @param offset byte offset, block-aligned
   * @param length byte length, at most the device's write-zeroes limit
   * @param options `unmap: true` lets the device deallocate the range
   */
  writeZeroes(offset: number | bigint, length: number | bigint, options?: WriteZeroesOptions): Promise<void> {
    return this.#submit(VIRTIO_BLK_T_WRITE_ZEROES, offset, undefined, length, options?.unmap === true) as Promise<void>;
  }

  /**
   * The device's id string (VIRTIO_BLK_T_GET_ID), e.g. a serial number.
   *
   * @returns up to 20 characters
   * @throws {DeviceUnsupportedError} when the device does not implement it
   */
  getId(): Promise<string> {
    return this.#submit(VIRTIO_BLK_T_GET_ID, 0, undefined, 0, false) as Promise<string>;
  }

  /**
   * A byte stream of the device's contents (BYOB readers supported), with
   * `queueDepth` reads of `chunkSize` in flight ahead of the reader.
   *
   * @example Copy the first 64 MiB into a file
   * ```ts ignore
   * using file = await Deno.open("head.img", { write: true, create: true, truncate: true });
   * await blk.readable({ offset: 0, length: 64 << 20 }).pipeTo(file.writable);
   * ```
   *
   * @param options range (default: from 0 to the end), chunk size, read-ahead
   * @returns the stream
   */
  readable(options?: ReadableOptions): ReadableStream<Uint8Array> {
    this.#checkOpen();
    return deviceReadable(this, options);
  }

  /**
   * A sink that writes everything piped into it from `offset` on: chunks of
   * any size, `queueDepth` writes in flight, backpressure while they are
   * all busy; `close()` waits for them and flushes the device. A tail that
   * does not fill a block is refused unless `pad`.
   *
   * @example Write an image file onto the device
   * ```ts ignore
   * using file = await Deno.open("disk.img");
   * await file.readable.pipeTo(blk.writable({ offset: 0 }));
   * ```
   *
   * @param options start, chunk size, writes in flight, padding, flush
   * @returns the stream
   */
  writable(options?: WritableOptions): WritableStream<Uint8Array> {
    this.#checkOpen();
    return deviceWritable(this, options);
  }

  /**
   * Writes everything a stream yields from `offset` on, then flushes — what
   * `source.pipeTo(blk.writable(options))` does, but a byte stream (such as
   * {@linkcode fileReadable}) is read into reused buffers, with no chunk
   * allocated on the way: the fast way to put an image onto the device.
   *
   * @example
   * ```ts ignore
   * import { fileReadable } from "@virtio/deno";
   * const bytes = await blk.writeFrom(fileReadable(await Deno.open("disk.img")));
   * ```
   *
   * @param source what to write (consumed)
   * @param options start, chunk size, writes in flight, padding, flush
   * @returns the bytes written (before padding)
   */
  writeFrom(source: ReadableStream<Uint8Array>, options?: WritableOptions): Promise<number> {
    if (this.#closing) return Promise.reject(this.#closedError());
    return writeFromStream(this, source, options);
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
    // Workers' requests fail at once; they let go of the memory meanwhile.
    const workersLetGo = this.#handOvers.size > 0 ? this.#handOvers.end() : Promise.resolve(true);
    for (const e of this.#engines) e.closeForNew();
    // A reconnect under way ends: what it kept fails, what it opened is closed.
    await this.#reconnector?.close(
      new ClosedError("the device was closed while this request waited for the back-end to come back"),
    );
    const deadline = performance.now() + this.#closeTimeoutMs;
    // Requests the device still owns (on queues that have not failed or paused).
    const busy = () => this.#engines.some((e) => e.error === undefined && !e.paused && e.ring.inFlight > 0);
    let turns = 0;
    while (busy() && this.#connectionError() === undefined && performance.now() < deadline) {
      for (const e of this.#engines) e.drain();
      if (!busy()) break;
      await new Promise((r) => (++turns < 1000 ? setImmediate(r) : setTimeout(r, 1)));
    }
    const closed = new ClosedError("the device was closed while this request was in flight");
    for (const e of this.#engines) {
      e.drain();
      if (e.ring.inFlight > 0) e.fail(closed);
    }
    this.#watchdog?.stop();
    await this.#configWatch.close();
    await this.#driver.close();
    const letGo = await workersLetGo;
    try {
      await this.#transport.close();
    } finally {
      await this.#handOvers.release();
      // Rings a Worker did not let go of in time stay readable there (zeros), never unmapped under it.
      if (letGo) this.#memory.queueRegion.close();
      else (this.#memory.queueRegion.retire ?? this.#memory.queueRegion.close).call(this.#memory.queueRegion);
      this.#memory.pool.region.close();
    }
  }

  /** Same as {@linkcode VirtioBlk.close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
