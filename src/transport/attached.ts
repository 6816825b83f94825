/**
 * {@linkcode AttachedTransport}: the transport of a queue handed over by
 * another isolate of this process (see `hand_over.ts`). It drives nothing of
 * the control plane: the features, configuration, rings and memory are the
 * owner's, as they were when the queue was handed over; this side builds a
 * ring over the same memory from where the owner's stopped, notifies the
 * device, waits on the owner's watch of the queue's interrupt, and lets go
 * of the memory when the owner ends the hand-over or this side closes.
 *
 * The other methods of {@linkcode Transport} do what a freshly connected
 * transport would, against what the owner set up: `createRegion` hands out
 * the queue's block, then the buffer memory; `setupQueues` checks that the
 * ring goes exactly where the owner's is.
 *
 * @module
 */

import { ClosedError, ConnectionLostError, FeatureNegotiationError, InvalidArgumentError } from "../errors.ts";
import { AttachedRegion, type SharedRegion } from "../memory/region.ts";
import type { RemoteWatchSet } from "../os/watch_set.ts";
import type { RingPosition } from "../virtqueue/types.ts";
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED } from "../virtio/spec.ts";
import { HandOverControl, notifierFrom } from "./hand_over.ts";
import type {
  ConfigChangeSignal,
  InterruptSource,
  InterruptSourceOptions,
  NotifySpec,
  QueueConfig,
  QueueNotifier,
  Transport,
  TransportType,
} from "./transport.ts";
import { Waker } from "./waker.ts";

/** Memory the owner mapped: where it is here, and where the device sees it. */
export interface AttachedMemory {
  /** Process virtual address. */
  readonly address: number;
  /** Length in bytes. */
  readonly length: number;
  /** The IOVA the device sees it at. */
  readonly iova: number;
}

/** A queue as its owner hands it over: plain data, structured-cloneable, valid only in the process that made it. */
export interface AttachedQueueSpec {
  /** The owner's transport. */
  readonly type: TransportType;
  /** The features the owner negotiated. */
  readonly features: bigint;
  /** The device's config space as the owner last read it. */
  readonly config: Uint8Array<ArrayBuffer>;
  /** Largest queue size the device accepts. */
  readonly maxQueueSize: number;
  /** Most bytes one request may carry through the owner's transport. */
  readonly maxTransferBytes: number;
  /** The queue: its index on the device, size, format and where its parts are. */
  readonly queue: QueueConfig;
  /** Where its ring stands (nothing is in flight). */
  readonly position: RingPosition;
  /** The queue's block: its rings and request slots. */
  readonly rings: AttachedMemory;
  /** Buffer memory the owner shared with the device for this side. */
  readonly buffers: AttachedMemory;
  /** How to notify the device. */
  readonly notify: NotifySpec;
  /** The owner's watch of the queue's interrupt (absent: this side polls). */
  readonly interrupts: RemoteWatchSet | undefined;
  /** The words both sides share. */
  readonly control: SharedArrayBuffer;
}

const RING_FEATURES = VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_RING_PACKED;

function endError(why: "closed" | "lost", type: TransportType): ClosedError | ConnectionLostError {
  return why === "lost"
    ? new ConnectionLostError(`the ${type} backend hung up (seen by the side that connected the device)`)
    : new ClosedError("the device was closed by the side that connected it");
}

/** The interrupt source of an attached queue: the owner's watch, and the owner's end of the hand-over. */
class AttachedInterrupts implements InterruptSource {
  readonly #control: HandOverControl;
  readonly #waker: Waker | undefined;
  readonly #ended: Promise<void>;

  constructor(control: HandOverControl, waker: Waker | undefined) {
    this.#control = control;
    this.#waker = waker;
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#ended = promise;
    control.watch(() => resolve());
  }

  wait(): Promise<void> {
    if (this.#waker) return this.#waker.wait(() => this.#control.state !== "running");
    return this.#ended; // poll mode does not sleep; a wait ends with the hand-over
  }

  get hungUp(): boolean {
    return this.#control.state === "lost";
  }

  async close(): Promise<void> {
    await this.#waker?.close(); // a foreign waker only lets go of its view
  }
}

/** The transport of a queue handed over by another isolate of this process. */
export class AttachedTransport implements Transport {
  /** The owner's transport. */
  readonly type: TransportType;
  /** The features the owner negotiated (all the device gets). */
  readonly deviceFeatures: bigint;
  /** One queue. */
  readonly maxQueues = 1;
  /** As the owner saw it. */
  readonly maxQueueSize: number;
  /** The queue's block and the buffer memory. */
  readonly maxMemRegions = 2;
  /** As through the owner's transport. */
  readonly maxTransferBytes: number;
  /** Where the ring stands. */
  readonly ringPositions: readonly RingPosition[];
  readonly #spec: AttachedQueueSpec;
  readonly #control: HandOverControl;
  readonly #regions: AttachedRegion[] = [];
  readonly #interrupts: AttachedInterrupts[] = [];
  #closed = false;

  private constructor(spec: AttachedQueueSpec, control: HandOverControl) {
    this.#spec = spec;
    this.#control = control;
    this.type = spec.type;
    this.deviceFeatures = spec.features;
    this.maxQueueSize = spec.maxQueueSize;
    this.maxTransferBytes = spec.maxTransferBytes;
    this.ringPositions = [spec.position];
  }

  /**
   * Takes a handed-over queue (once: a second attach of the same hand-over fails).
   *
   * @param spec what the owner handed over
   * @returns the transport
   * @throws {ClosedError} when the owner closed the device already
   * @throws {InvalidArgumentError} when the hand-over was attached before
   */
  static attach(spec: AttachedQueueSpec): AttachedTransport {
    const control = HandOverControl.from(spec.control);
    const state = control.state;
    if (state !== "running") throw endError(state, spec.type);
    if (!control.attach()) {
      throw new InvalidArgumentError("this queue handle was attached already (a handle is attached once)");
    }
    return new AttachedTransport(spec, control);
  }

  get closed(): boolean {
    return this.#closed;
  }

  negotiateFeatures(driverFeatures: bigint): Promise<bigint> {
    // The ring features decide how the ring is driven: the driver here must take
    // each one the owner agreed on. (Transport features, such as
    // VIRTIO_F_ACCESS_PLATFORM, are the transport's own.)
    const missing = this.#spec.features & RING_FEATURES & ~driverFeatures;
    if (missing !== 0n) {
      return Promise.reject(
        new FeatureNegotiationError(
          `the attaching side does not take features the owner agreed on (0x${missing.toString(16)})`,
        ),
      );
    }
    return Promise.resolve(this.#spec.features);
  }

  readConfig(offset: number, length: number): Promise<Uint8Array> {
    const c = this.#spec.config;
    if (offset < 0 || length < 0 || offset + length > c.length) {
      return Promise.reject(new InvalidArgumentError(`config [${offset}, +${length}) is outside what was handed over`));
    }
    return Promise.resolve(c.slice(offset, offset + length));
  }

  writeConfig(): Promise<void> {
    return Promise.reject(
      new InvalidArgumentError("the side that connected the device keeps its configuration: write it there"),
    );
  }

  watchConfig(): Promise<ConfigChangeSignal> {
    return Promise.resolve("none");
  }

  watchHangup(): Promise<void> {
    return Promise.resolve(); // the owner's end of the hand-over says it (watchEnd)
  }

  watchEnd(listener: (error: ClosedError | ConnectionLostError) => void): void {
    this.#control.watch((why) => {
      if (!this.#closed) listener(endError(why, this.type));
    });
  }

  /**
   * Hands out the queue's block (first call), then the buffer memory
   * (second); the size asked must fit.
   *
   * @param size bytes wanted
   * @param name for diagnostics
   * @returns the region, mapped already
   */
  createRegion(size: number, name: string): SharedRegion {
    const which = this.#regions.length === 0
      ? this.#spec.rings
      : this.#regions.length === 1
      ? this.#spec.buffers
      : null;
    if (which === null) throw new InvalidArgumentError("an attached queue has no more memory than it was handed");
    if (size > which.length) {
      throw new InvalidArgumentError(`${name}: ${size} bytes asked of ${which.length} handed over`);
    }
    const region = new AttachedRegion(name, which.address, which.length, which.iova);
    this.#regions.push(region);
    return region;
  }

  mapMemRegion(region: SharedRegion): Promise<void> {
    if (!this.#regions.includes(region as AttachedRegion)) {
      return Promise.reject(new InvalidArgumentError(`region ${region.name} was not handed over`));
    }
    return Promise.resolve(); // the owner mapped it
  }

  unmapMemRegion(): Promise<void> {
    return Promise.resolve(); // the owner unmaps
  }

  setupQueues(queues: readonly QueueConfig[]): Promise<void> {
    const q = this.#spec.queue, got = queues[0];
    const same = queues.length === 1 && got.index === 0 && got.size === q.size && got.format === q.format &&
      got.descIova === q.descIova && got.driverIova === q.driverIova && got.deviceIova === q.deviceIova;
    if (!same) {
      return Promise.reject(new InvalidArgumentError("the attached queue's ring must go exactly where the owner's is"));
    }
    return Promise.resolve(); // set up by the owner, and running
  }

  notifier(index: number): QueueNotifier {
    if (index !== 0) throw new InvalidArgumentError(`an attached device has queue 0 only, not ${index}`);
    return notifierFrom(this.#spec.notify);
  }

  createInterruptSource(options: InterruptSourceOptions = {}): Promise<InterruptSource> {
    const remote = (options.queues ?? true) ? this.#spec.interrupts : undefined;
    if ((options.queues ?? true) && remote === undefined) {
      return Promise.reject(
        new InvalidArgumentError("the queue was handed over for poll mode: no interrupt is watched for it"),
      );
    }
    const source = new AttachedInterrupts(this.#control, remote ? Waker.foreign(remote) : undefined);
    this.#interrupts.push(source);
    return Promise.resolve(source);
  }

  /** Lets go: every view of the memory is detached (they read as empty), then the owner is told. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of this.#interrupts) await s.close();
    for (const r of this.#regions) r.close();
    this.#control.letGo();
  }
}
