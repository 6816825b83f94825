/**
 * The transport interface: how the driver reaches a virtio device.
 *
 * A transport negotiates features, reads the device's config space, makes
 * memory reachable by the device, sets queues up, and gives each queue a way
 * to notify the device and a source of interrupts. It knows nothing of
 * virtio-blk; the virtqueues know nothing of transports.
 *
 * @module
 */

import { DeviceProtocolError, InvalidArgumentError, type VirtioError } from "../errors.ts";
import type { SharedRegion } from "../memory/region.ts";
import type { RemoteWatchSet } from "../os/watch_set.ts";
import type { RingPosition } from "../virtqueue/types.ts";
import type { VirtqueueFormat } from "../virtqueue/layout.ts";
import { VIRTIO_STATUS as S } from "../virtio/spec.ts";

/** The transports this library implements. */
export type TransportType = "vhost-user" | "vhost-vdpa" | "vfio-pci" | "mock";

/** Where a queue's rings are, for {@linkcode Transport.setupQueues}. */
export interface QueueConfig {
  /** Queue index. */
  readonly index: number;
  /** Entries in the ring. */
  readonly size: number;
  /** Ring format. */
  readonly format: VirtqueueFormat;
  /** IOVA of the descriptor table / ring. */
  readonly descIova: number;
  /** IOVA of the driver area. */
  readonly driverIova: number;
  /** IOVA of the device area. */
  readonly deviceIova: number;
}

/** Tells the device a queue has new buffers. */
export interface QueueNotifier {
  /** Sends the notification (an eventfd write, a doorbell store, or a call). */
  notify(): void;
}

/**
 * How another isolate of this process notifies the device of a queue handed
 * over to it: plain data, posted to a Worker.
 * - `"eventfd"`: write to this kick eventfd (vhost-user, vhost-vdpa);
 * - `"doorbell16"`: store `value` as 16 bits at `address` after a full fence
 *   (virtio-pci's notify register, 4.1.4.4, in a BAR mapped by the owner).
 */
export type NotifySpec =
  | { readonly kind: "eventfd"; readonly fd: number }
  | { readonly kind: "doorbell16"; readonly address: number; readonly value: number };

/**
 * The owner's side of a queue handed over to another isolate of this
 * process (see {@linkcode Transport.handOverQueue}). Its plain-data parts go
 * to the other side; its methods end and release the hand-over.
 */
export interface QueueHandOver {
  /** How the other side notifies the device. */
  readonly notify: NotifySpec;
  /** The watch of the queue's interrupt the other side waits on (absent: it polls). */
  readonly interrupts: RemoteWatchSet | undefined;
  /** The words both sides share (see `hand_over.ts`). */
  readonly control: SharedArrayBuffer;
  /**
   * Ends the other side's use: its requests fail at once (`"closed"`:
   * `ClosedError`; `"lost"`: `ConnectionLostError`), and it lets go of the
   * memory.
   *
   * @param why the owner closed the device, or lost the connection
   */
  end(why: "closed" | "lost"): void;
  /**
   * After {@linkcode QueueHandOver.end}: waits up to `timeoutMs` for the
   * other side to let go of the memory.
   *
   * @param timeoutMs how long to wait
   * @returns true when nothing there touches the memory any more; false: keep its addresses taken
   */
  settle(timeoutMs: number): Promise<boolean>;
  /** After {@linkcode QueueHandOver.settle}: stops the interrupt watch and frees what may be freed. */
  release(): Promise<void>;
}

/**
 * Wakes the driver when the device signals a queue (or the connection drops).
 * Used by the eventfd completion mode and for hang-up detection.
 */
export interface InterruptSource {
  /**
   * Resolves when at least one interrupt (or a hang-up) arrived since the
   * last call. Only one wait may be outstanding.
   */
  wait(): Promise<void>;
  /** True once the peer hung up (the connection is gone). */
  readonly hungUp: boolean;
  /**
   * Stops watching queue `index`'s interrupt (the queue was handed over to
   * another isolate, which watches it from then on). Sources that watch no
   * queue ignore it.
   *
   * @param index the queue
   */
  forgetQueue?(index: number): void;
  /** Stops waiting and releases everything (an outstanding wait resolves). */
  close(): Promise<void>;
}

/** Options of {@linkcode Transport.createInterruptSource}. */
export interface InterruptSourceOptions {
  /** Watch the queues' interrupts (default true); false in poll mode. */
  readonly queues?: boolean;
}

/**
 * How a transport learns that the device changed its configuration
 * (virtio 1.2, 3.2.1):
 * - `"interrupt"`: a configuration change interrupt on an eventfd (vhost-vdpa's
 *   config call; vfio-pci's MSI-X config vector, 4.1.5.4);
 * - `"message"`: vhost-user's VHOST_USER_BACKEND_CONFIG_CHANGE_MSG on the
 *   back-end's channel;
 * - `"generation"`: vfio-pci without a config vector: `config_generation`
 *   is looked at a few times a second (one register read, never per request);
 * - `"callback"`: an in-process device calls back;
 * - `"none"`: the device cannot tell (a vhost-user back-end without
 *   BACKEND_REQ): only an explicit re-read sees a change.
 */
export type ConfigChangeSignal = "interrupt" | "message" | "generation" | "callback" | "none";

/**
 * What a back-end sent on its request channel (vhost-user's BACKEND_REQ)
 * so far, and whether the channel is still open.
 */
export interface BackendChannelStats {
  /** Well-formed requests received. */
  readonly requests: number;
  /** CONFIG_CHANGE_MSG among them. */
  readonly configChanges: number;
  /** Requests this driver does not serve that wanted an answer (answered with a failure). */
  readonly refused: number;
  /** Requests this driver does not serve that wanted none (dropped). */
  readonly ignored: number;
  /** Descriptors that came with requests, closed unread. */
  readonly fdsClosed: number;
  /** Requests by name (`CONFIG_CHANGE_MSG`, `IOTLB_MSG`, `request 99`…). */
  readonly byName: Readonly<Record<string, number>>;
  /** Why the channel is closed, or undefined while it is open. */
  readonly closed: string | undefined;
}

/**
 * A way to reach one virtio device.
 *
 * Life cycle, driven by the device layer:
 * `connect` (transport-specific) → {@linkcode Transport.negotiateFeatures} →
 * {@linkcode Transport.readConfig} → {@linkcode Transport.createRegion} +
 * {@linkcode Transport.mapMemRegion} → {@linkcode Transport.setupQueues} →
 * I/O → {@linkcode Transport.close}.
 */
export interface Transport {
  /** Which transport this is. */
  readonly type: TransportType;
  /** Virtio feature bits the device offers. */
  readonly deviceFeatures: bigint;
  /** How many queues the device supports. */
  readonly maxQueues: number;
  /** Largest queue size the device accepts. */
  readonly maxQueueSize: number;
  /** How many memory regions can be mapped at once. */
  readonly maxMemRegions: number;
  /**
   * The most bytes one request may carry through this transport, whatever
   * the device's own limits (Infinity: none). vfio-pci: 4 MiB, as QEMU maps
   * a request behind an emulated IOMMU page by page into at most 1024 pieces.
   */
  readonly maxTransferBytes: number;
  /** True once closed or once the connection was lost. */
  readonly closed: boolean;
  /** The back-end's request channel, where the transport has one (vhost-user with BACKEND_REQ). */
  readonly backendChannel?: BackendChannelStats;

  /**
   * Agrees on features: offers `driverFeatures & deviceFeatures` and
   * returns the set the device accepted. Call once, before anything else.
   *
   * @param driverFeatures what the driver supports
   * @returns the negotiated virtio feature bits
   */
  negotiateFeatures(driverFeatures: bigint): Promise<bigint>;

  /**
   * Reads `length` bytes of the device-specific config space at `offset`.
   *
   * @param offset where to start
   * @param length how many bytes
   * @returns a copy of the bytes
   */
  readConfig(offset: number, length: number): Promise<Uint8Array>;

  /**
   * Writes bytes of the device-specific config space (virtio 1.2, 2.5), for
   * the fields a driver may write (virtio-blk's `writeback`). Read the field
   * back to learn whether the device took it.
   *
   * @param offset where to start
   * @param data the bytes
   */
  writeConfig(offset: number, data: Uint8Array): Promise<void>;

  /**
   * Starts watching for configuration changes: `listener` runs (in a later
   * task, never re-entrantly) after the device signalled one; several
   * signals may coalesce into one call. Call once, after
   * {@linkcode Transport.setupQueues}. The watch ends with
   * {@linkcode Transport.close}.
   *
   * @param listener what to call
   * @returns how changes are signalled (`"none"`: they are not)
   */
  watchConfig(listener: () => void): Promise<ConfigChangeSignal>;

  /**
   * Calls `listener` once, in a later task, when the connection to the
   * device is lost — also while no request is in flight — for a driver that
   * reconnects at once. Transports without a connection to lose (a kernel
   * device, an in-process one) never call it. The watch ends with
   * {@linkcode Transport.close}.
   *
   * @param listener what to call
   */
  watchHangup(listener: () => void): Promise<void>;

  /**
   * Allocates memory of the kind this transport can share (a memfd, or heap
   * memory for the mock). The caller owns it and closes it after unmapping.
   *
   * @param size bytes (rounded up to a page)
   * @param name for diagnostics
   * @returns the region, not yet mapped
   */
  createRegion(size: number, name: string): SharedRegion;

  /**
   * Makes a region reachable by the device and sets its `iova`.
   *
   * @param region memory from {@linkcode Transport.createRegion}
   */
  mapMemRegion(region: SharedRegion): Promise<void>;

  /**
   * Withdraws a region from the device (its `iova` becomes -1).
   *
   * @param region a mapped region
   */
  unmapMemRegion(region: SharedRegion): Promise<void>;

  /**
   * Tells the device where the queues are and starts them.
   *
   * @param queues one entry per queue, indices 0..n-1
   */
  setupQueues(queues: readonly QueueConfig[]): Promise<void>;

  /**
   * The notifier of queue `index` (valid after {@linkcode Transport.setupQueues}).
   *
   * @param index queue index
   * @returns its notifier
   */
  notifier(index: number): QueueNotifier;

  /**
   * Hands queue `index` over to another isolate of this process (a Worker):
   * how that isolate notifies the device, and (when the device signals the
   * queue on an eventfd) a watch of that interrupt it can wait on — which
   * the caller must take off its own interrupt source
   * ({@linkcode InterruptSource.forgetQueue}). The
   * rings and the memory stay set up, and the control plane stays here.
   * Absent where the device cannot be reached from another isolate (an
   * in-process device).
   *
   * @param index a queue set up by {@linkcode Transport.setupQueues}
   * @returns the owner's side of the hand-over
   */
  handOverQueue?(index: number): Promise<QueueHandOver>;

  /**
   * Where each queue's ring stands, when its rings were driven by another
   * object before (a queue handed over: the ring goes on from there; see
   * `VirtqueueOptions.resume`). Absent for fresh rings.
   */
  readonly ringPositions?: readonly (RingPosition | undefined)[];

  /**
   * A transport driving a queue handed over by another isolate calls
   * `listener` once, in a later task, when that owner ends it (closed the
   * device, or lost the connection); the driver then fails what is pending
   * with the error and closes. Other transports lack it.
   *
   * @param listener what to call, with the error every request is to get
   */
  watchEnd?(listener: (error: VirtioError) => void): void;

  /**
   * An interrupt source covering every queue set up (unless `queues` is
   * false: poll mode waits on no interrupt), plus hang-up of the connection
   * where the transport has one. The caller closes it before closing the
   * transport.
   *
   * @param options `queues: false` to watch no queue interrupt
   */
  createInterruptSource(options?: InterruptSourceOptions): Promise<InterruptSource>;

  /** Stops the device's use of the queues and releases every resource. Idempotent. */
  close(): Promise<void>;
}

/**
 * Looks a queue's notifier up in a transport's table of them (for
 * implementations of {@linkcode Transport.notifier}).
 *
 * @param notifiers the transport's notifiers, by queue index
 * @param index the queue
 * @returns its notifier
 * @throws InvalidArgumentError when that queue is not set up
 */
export function notifierOf(notifiers: readonly (QueueNotifier | undefined)[], index: number): QueueNotifier {
  const n = notifiers[index];
  if (!n) throw new InvalidArgumentError(`queue ${index} is not set up`);
  return n;
}

/**
 * Checks the status a device shows after the driver set DRIVER_OK (virtio 1.2
 * §3.1.1 step 8): DRIVER_OK, and neither NEEDS_RESET nor FAILED.
 *
 * @param status the device status read back
 * @param device what to call the device in the message, e.g. `vDPA device`
 * @throws {DeviceProtocolError} (`driver-ok-refused`) otherwise
 */
export function checkDriverOk(status: number, device: string): void {
  if ((status & (S.DRIVER_OK | S.NEEDS_RESET | S.FAILED)) !== S.DRIVER_OK) {
    throw new DeviceProtocolError(
      "driver-ok-refused",
      `the ${device} did not accept DRIVER_OK (status 0x${status.toString(16)})`,
    );
  }
}
