/**
 * The in-process transport: connects the driver to a device model running
 * in this process ({@linkcode InProcessDevice}; the mock virtio-blk device of
 * `./testing` is one). Memory is ordinary heap memory, notifications are
 * method calls: no native code, no daemon, no permissions.
 *
 * @module
 */

import { DeviceProtocolError } from "../errors.ts";
import { HeapRegion, type SharedRegion } from "../memory/region.ts";
import { settle } from "./settle.ts";
import {
  type ConfigChangeSignal,
  type InterruptSource,
  notifierOf,
  type QueueConfig,
  type QueueNotifier,
  type Transport,
} from "./transport.ts";

/** What the in-process transport needs of a device model. */
export interface InProcessDevice {
  /** Feature bits offered. */
  readonly features: bigint;
  /** Request queues offered. */
  readonly numQueues: number;
  /** Largest queue size accepted. */
  readonly maxQueueSize: number;
  /** The device-specific config space. */
  readonly config: Uint8Array;
  /** True once the device went away (the driver sees a hang-up). */
  readonly disconnected: boolean;
  /**
   * Takes the features the driver accepted.
   *
   * @param features the negotiated bits
   */
  acceptFeatures(features: bigint): void;
  /**
   * Makes `region` reachable at `iova`.
   *
   * @param iova where the device sees it
   * @param region the memory
   */
  map(iova: number, region: SharedRegion): void;
  /**
   * Withdraws the mapping at `iova`.
   *
   * @param iova a mapped address
   */
  unmap(iova: number): void;
  /**
   * Sets up the device side of the queues.
   *
   * @param queues where the driver put them
   */
  setupQueues(queues: readonly QueueConfig[]): void;
  /**
   * The driver's notification (kick) for queue `index`.
   *
   * @param index the queue
   */
  notify(index: number): void;
  /**
   * Sets the function the device calls to interrupt the driver (with the
   * queue's index, or -1 for a hang-up); undefined to stop.
   *
   * @param fn the handler
   */
  setInterruptHandler(fn: ((queue: number) => void) | undefined): void;
  /**
   * Writes bytes of the config space as a driver would.
   *
   * @param offset where
   * @param data the bytes
   */
  writeConfig(offset: number, data: Uint8Array): void;
  /**
   * Sets the function the device calls after it changed its config space;
   * undefined to stop.
   *
   * @param fn the handler
   */
  setConfigChangeHandler(fn: (() => void) | undefined): void;
}

class InProcessInterruptSource implements InterruptSource {
  readonly #device: InProcessDevice;
  #pending = false;
  #closed = false;
  #resolve: (() => void) | undefined;

  constructor(device: InProcessDevice) {
    this.#device = device;
  }

  get hungUp(): boolean {
    return this.#device.disconnected;
  }

  signal(): void {
    const r = this.#resolve;
    if (r) {
      this.#resolve = undefined;
      r();
    } else {
      this.#pending = true;
    }
  }

  wait(): Promise<void> {
    if (this.#pending || this.#closed || this.hungUp) {
      this.#pending = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => (this.#resolve = resolve));
  }

  close(): Promise<void> {
    this.#closed = true;
    this.#device.setInterruptHandler(undefined);
    this.signal();
    return Promise.resolve();
  }
}

/**
 * A {@linkcode Transport} to an {@linkcode InProcessDevice} in this process.
 * IOVAs start above 4 GiB so that descriptors exercise both address halves.
 *
 * @example
 * ```ts
 * import { MockBlkDevice, MockTransport } from "../../testing.ts";
 * import { VirtioBlk } from "../../mod.ts";
 * const transport = new MockTransport(new MockBlkDevice({ capacity: 1 << 20 }));
 * await using blk = await VirtioBlk.connect({ transport });
 * console.log(blk.capacity); // 1048576n
 * ```
 */
export class MockTransport implements Transport {
  readonly type = "mock" as const;
  /** The device behind this transport. */
  readonly device: InProcessDevice;
  #nextIova = 0x1_0000_0000;
  #notifiers: QueueNotifier[] = [];
  #closed = false;
  #onHangup: (() => void) | undefined;

  /**
   * Creates the instance.
   *
   * @param device the device to drive
   */
  constructor(device: InProcessDevice) {
    this.device = device;
  }

  get deviceFeatures(): bigint {
    return this.device.features;
  }

  get maxQueues(): number {
    return this.device.numQueues;
  }

  get maxQueueSize(): number {
    return this.device.maxQueueSize;
  }

  get maxTransferBytes(): number {
    return Infinity;
  }

  get maxMemRegions(): number {
    return 64;
  }

  get closed(): boolean {
    return this.#closed;
  }

  negotiateFeatures(driverFeatures: bigint): Promise<bigint> {
    const n = driverFeatures & this.device.features;
    this.device.acceptFeatures(n);
    return Promise.resolve(n);
  }

  readConfig(offset: number, length: number): Promise<Uint8Array> {
    const c = this.device.config;
    if (offset < 0 || offset + length > c.byteLength) {
      return Promise.reject(
        new DeviceProtocolError("bad-config", `config read [${offset}, +${length}) beyond its ${c.byteLength} bytes`),
      );
    }
    return Promise.resolve(c.slice(offset, offset + length));
  }

  createRegion(size: number, name: string): SharedRegion {
    return new HeapRegion(name, size);
  }

  mapMemRegion(region: SharedRegion): Promise<void> {
    region.iova = this.#nextIova;
    this.#nextIova += Math.ceil(region.size / 0x20_0000) * 0x20_0000 + 0x20_0000;
    this.device.map(region.iova, region);
    return Promise.resolve();
  }

  unmapMemRegion(region: SharedRegion): Promise<void> {
    this.device.unmap(region.iova);
    region.iova = -1;
    return Promise.resolve();
  }

  setupQueues(queues: readonly QueueConfig[]): Promise<void> {
    return settle(() => {
      this.device.setupQueues(queues);
      this.#notifiers = queues.map((q) => ({ notify: () => this.device.notify(q.index) }));
    });
  }

  notifier(index: number): QueueNotifier {
    return notifierOf(this.#notifiers, index);
  }

  createInterruptSource(): Promise<InterruptSource> {
    const source = new InProcessInterruptSource(this.device);
    this.device.setInterruptHandler((queue) => {
      source.signal();
      const onHangup = this.#onHangup;
      if (queue === -1 && onHangup) queueMicrotask(onHangup);
    });
    return Promise.resolve(source);
  }

  watchHangup(listener: () => void): Promise<void> {
    this.#onHangup = listener;
    return Promise.resolve();
  }

  writeConfig(offset: number, data: Uint8Array): Promise<void> {
    return settle(() => {
      if (offset < 0 || offset + data.byteLength > this.device.config.byteLength) {
        throw new DeviceProtocolError("bad-config", `config [${offset}, +${data.byteLength}) beyond its end`);
      }
      this.device.writeConfig(offset, data);
    });
  }

  watchConfig(listener: () => void): Promise<ConfigChangeSignal> {
    // A later task, as from a real device (the handler may run inside a test's call to resize()).
    this.device.setConfigChangeHandler(() => queueMicrotask(listener));
    return Promise.resolve("callback");
  }

  close(): Promise<void> {
    this.#closed = true;
    this.#onHangup = undefined;
    this.device.setConfigChangeHandler(undefined);
    return Promise.resolve();
  }
}
