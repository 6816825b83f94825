/**
 * The vhost-vdpa transport: the device is a vDPA device (a SmartNIC/DPU
 * function, or VDUSE in software) driven through `/dev/vhost-vdpa-N`.
 * Memory is mapped for the device with IOTLB messages written to the
 * descriptor, at IOVAs chosen inside the range the device reports; queue
 * memory is memfd-backed (VDUSE hands the file to its user-space daemon).
 *
 * @module
 */

import { eventfd, eventfdNotifier } from "../../os/eventfd.ts";
import { closeFd, ioctl, ioctlValue, LINUX, openFile, writeExact } from "../../os/syscalls.ts";
import { Waker } from "../waker.ts";
import { OwnedHandOver } from "../hand_over.ts";
import { SignalWatch } from "../signal_watch.ts";
import { DeviceProtocolError, FeatureNegotiationError, InvalidArgumentError, OsError } from "../../errors.ts";
import { VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1, VIRTIO_STATUS as S } from "../../virtio/spec.ts";
import { IovaAllocator } from "../../memory/iova_allocator.ts";
import { IovaMappings } from "../../memory/iova_mappings.ts";
import { MemfdRegion, type SharedRegion } from "../../memory/region.ts";
import { settle } from "../settle.ts";
import { encodeVringBase, FRESH_VRING_BASE } from "../vring_base.ts";
import { Teardown } from "../teardown.ts";
import {
  checkDriverOk,
  type ConfigChangeSignal,
  type InterruptSource,
  type InterruptSourceOptions,
  notifierOf,
  type QueueConfig,
  type QueueHandOver,
  type QueueNotifier,
  type Transport,
} from "../transport.ts";
import {
  int32Arg,
  iotlbMsg,
  u64Arg,
  vdpaConfig,
  VHOST,
  VHOST_BACKEND_F_IOTLB_MSG_V2,
  VHOST_IOTLB_INVALIDATE,
  VHOST_IOTLB_UPDATE,
  VIRTIO_ID_BLOCK,
  vringAddr,
  vringState,
} from "./uapi.ts";

/** Options of {@linkcode VhostVdpaTransport.connect}. */
export interface VhostVdpaTransportOptions {
  /**
   * An already-open descriptor of the vhost-vdpa device (as libvirt hands one
   * over) instead of a path. The transport takes ownership and closes it.
   */
  fd?: number;
}

function readU64(fd: number, request: bigint, name: string): bigint {
  const b = new Uint8Array(8);
  ioctl(fd, request, b, name);
  return new DataView(b.buffer).getBigUint64(0, true);
}

function readU32(fd: number, request: bigint, name: string): number {
  const b = new Uint8Array(4);
  ioctl(fd, request, b, name);
  return new DataView(b.buffer).getUint32(0, true);
}

/**
 * A connection to a vhost-vdpa character device.
 *
 * @example
 * ```ts ignore
 * import { VirtioBlk } from "./mod.ts";
 * await using blk = await VirtioBlk.connect({ transport: "vhost-vdpa", path: "/dev/vhost-vdpa-0" });
 * ```
 */
export class VhostVdpaTransport implements Transport {
  readonly type = "vhost-vdpa" as const;
  readonly deviceFeatures: bigint;
  readonly maxQueues: number;
  readonly maxQueueSize: number;
  readonly maxMemRegions = 1024;
  readonly maxTransferBytes: number = Infinity;
  /** The IOVA range the device accepts. */
  readonly iovaRange: { first: number; last: number };
  readonly #path: string;
  #fd: number;
  #status = 0;
  readonly #mappings: IovaMappings;
  #kickFds: number[] = [];
  #callFds: number[] = [];
  #configFd = -1; // the config call eventfd, once watched
  #configWatch: SignalWatch | undefined;
  #notifiers: QueueNotifier[] = [];
  #closed = false;

  private constructor(path: string, fd: number) {
    this.#path = path;
    this.#fd = fd;
    ioctlValue(fd, VHOST.SET_OWNER, 0, "VHOST_SET_OWNER");
    const backend = readU64(fd, VHOST.GET_BACKEND_FEATURES, "VHOST_GET_BACKEND_FEATURES");
    if ((backend & VHOST_BACKEND_F_IOTLB_MSG_V2) === 0n) {
      throw new FeatureNegotiationError(
        `${path} does not support IOTLB messages v2 (backend features 0x${backend.toString(16)})`,
      );
    }
    ioctl(fd, VHOST.SET_BACKEND_FEATURES, u64Arg(VHOST_BACKEND_F_IOTLB_MSG_V2), "VHOST_SET_BACKEND_FEATURES");
    const id = readU32(fd, VHOST.VDPA_GET_DEVICE_ID, "VHOST_VDPA_GET_DEVICE_ID");
    if (id !== VIRTIO_ID_BLOCK) {
      throw new InvalidArgumentError(`${path} is virtio device ${id}, not a block device (2)`);
    }
    // Reset, then ACKNOWLEDGE and DRIVER.
    this.#setStatus(0);
    this.#setStatus(S.ACKNOWLEDGE);
    this.#setStatus(S.ACKNOWLEDGE | S.DRIVER);
    this.deviceFeatures = readU64(fd, VHOST.GET_FEATURES, "VHOST_GET_FEATURES");
    let vqs = 1;
    try {
      vqs = readU32(fd, VHOST.VDPA_GET_VQS_COUNT, "VHOST_VDPA_GET_VQS_COUNT");
    } catch (e) {
      if (!(e instanceof OsError) || e.errno !== 25) throw e; // ENOTTY: an older kernel
    }
    if (vqs < 1 || vqs > 65535) throw new DeviceProtocolError("bad-queue-num", `the device reports ${vqs} virtqueues`);
    this.maxQueues = vqs;
    const num = new Uint8Array(2);
    ioctl(fd, VHOST.VDPA_GET_VRING_NUM, num, "VHOST_VDPA_GET_VRING_NUM");
    this.maxQueueSize = new DataView(num.buffer).getUint16(0, true) || 32768;
    const range = new Uint8Array(16);
    ioctl(fd, VHOST.VDPA_GET_IOVA_RANGE, range, "VHOST_VDPA_GET_IOVA_RANGE");
    const rv = new DataView(range.buffer);
    const first = rv.getBigUint64(0, true), last = rv.getBigUint64(8, true);
    this.iovaRange = {
      first: Number(first),
      last: last > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(last),
    };
    this.#mappings = new IovaMappings(
      new IovaAllocator([this.iovaRange]),
      (region, iova) =>
        writeExact(this.#fd, iotlbMsg(VHOST_IOTLB_UPDATE, iova, region.size, region.addr), "IOTLB update"),
      (iova, size) => writeExact(this.#fd, iotlbMsg(VHOST_IOTLB_INVALIDATE, iova, size, 0), "IOTLB invalidate"),
    );
  }

  /**
   * Opens the device and runs the start of the set-up: owner, backend
   * features (IOTLB v2), device id, reset, ACKNOWLEDGE | DRIVER, features,
   * queue count and size, IOVA range. Needs the shim loaded.
   *
   * @param path e.g. `/dev/vhost-vdpa-0`
   * @param options an already-open descriptor instead
   * @returns the transport
   */
  static connect(path: string, options: VhostVdpaTransportOptions = {}): Promise<VhostVdpaTransport> {
    return settle(() => {
      const fd = options.fd ?? openFile(path, LINUX.O_RDWR);
      try {
        return new VhostVdpaTransport(path, fd);
      } catch (e) {
        closeFd(fd);
        throw e;
      }
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  #setStatus(status: number): void {
    ioctl(this.#fd, VHOST.VDPA_SET_STATUS, new Uint8Array([status]), "VHOST_VDPA_SET_STATUS");
    this.#status = status;
  }

  #getStatus(): number {
    const b = new Uint8Array(1);
    ioctl(this.#fd, VHOST.VDPA_GET_STATUS, b, "VHOST_VDPA_GET_STATUS");
    return b[0];
  }

  negotiateFeatures(driverFeatures: bigint): Promise<bigint> {
    return settle(() => {
      const features = (driverFeatures | VIRTIO_F_ACCESS_PLATFORM) & this.deviceFeatures;
      if ((features & VIRTIO_F_VERSION_1) === 0n) {
        throw new FeatureNegotiationError("the vDPA device does not offer VIRTIO_F_VERSION_1");
      }
      ioctl(this.#fd, VHOST.SET_FEATURES, u64Arg(features), "VHOST_SET_FEATURES");
      this.#setStatus(this.#status | S.FEATURES_OK);
      if ((this.#getStatus() & S.FEATURES_OK) === 0) {
        throw new FeatureNegotiationError(`the vDPA device refused features 0x${features.toString(16)}`);
      }
      return features;
    });
  }

  readConfig(offset: number, length: number): Promise<Uint8Array> {
    return settle(() => {
      const arg = vdpaConfig(offset, length);
      ioctl(this.#fd, VHOST.VDPA_GET_CONFIG, arg, "VHOST_VDPA_GET_CONFIG");
      return arg.slice(8);
    });
  }

  writeConfig(offset: number, data: Uint8Array): Promise<void> {
    return settle(() => {
      const arg = vdpaConfig(offset, data.byteLength);
      arg.set(data, 8);
      ioctl(this.#fd, VHOST.VDPA_SET_CONFIG, arg, "VHOST_VDPA_SET_CONFIG");
    });
  }

  async watchConfig(listener: () => void): Promise<ConfigChangeSignal> {
    if (this.#configWatch) throw new InvalidArgumentError("the configuration is watched already");
    const fd = eventfd();
    try {
      ioctl(this.#fd, VHOST.VDPA_SET_CONFIG_CALL, int32Arg(fd), "VHOST_VDPA_SET_CONFIG_CALL");
      this.#configFd = fd;
      this.#configWatch = await SignalWatch.eventfd(fd, listener);
    } catch (e) {
      if (this.#configFd === fd) this.#releaseConfigCall();
      else closeFd(fd);
      throw e;
    }
    return "interrupt";
  }

  /** Detaches and closes the config call eventfd (after its watch has stopped). */
  #releaseConfigCall(): void {
    if (this.#configFd < 0) return;
    const steps = new Teardown();
    if (this.#fd >= 0) {
      steps.run(() => ioctl(this.#fd, VHOST.VDPA_SET_CONFIG_CALL, int32Arg(-1), "VHOST_VDPA_SET_CONFIG_CALL"));
    }
    steps.run(() => closeFd(this.#configFd));
    this.#configFd = -1;
    steps.finish();
  }

  /** A character device does not hang up: the listener is never called. */
  watchHangup(_listener: () => void): Promise<void> {
    return Promise.resolve();
  }

  createRegion(size: number, name: string): SharedRegion {
    return new MemfdRegion(name, size);
  }

  mapMemRegion(region: SharedRegion): Promise<void> {
    return settle(() => {
      if (region.fd < 0) throw new InvalidArgumentError(`region ${region.name} is not memfd-backed`);
      this.#mappings.map(region);
    });
  }

  unmapMemRegion(region: SharedRegion): Promise<void> {
    return settle(() => this.#mappings.unmap(region));
  }

  setupQueues(queues: readonly QueueConfig[]): Promise<void> {
    return settle(() => {
      for (const q of queues) {
        const kick = eventfd(), call = eventfd();
        this.#kickFds[q.index] = kick;
        this.#callFds[q.index] = call;
        const fd = this.#fd;
        ioctl(fd, VHOST.SET_VRING_NUM, vringState(q.index, q.size), "VHOST_SET_VRING_NUM");
        ioctl(
          fd,
          VHOST.SET_VRING_BASE,
          vringState(q.index, encodeVringBase(q.format, FRESH_VRING_BASE)),
          "VHOST_SET_VRING_BASE",
        );
        ioctl(
          fd,
          VHOST.SET_VRING_ADDR,
          vringAddr(q.index, q.descIova, q.deviceIova, q.driverIova),
          "VHOST_SET_VRING_ADDR",
        );
        ioctl(fd, VHOST.SET_VRING_KICK, vringState(q.index, kick), "VHOST_SET_VRING_KICK");
        ioctl(fd, VHOST.SET_VRING_CALL, vringState(q.index, call), "VHOST_SET_VRING_CALL");
        ioctl(fd, VHOST.VDPA_SET_VRING_ENABLE, vringState(q.index, 1), "VHOST_VDPA_SET_VRING_ENABLE");
        this.#notifiers[q.index] = { notify: eventfdNotifier(kick) };
      }
      this.#setStatus(this.#status | S.DRIVER_OK);
      checkDriverOk(this.#getStatus(), "vDPA device");
    });
  }

  notifier(index: number): QueueNotifier {
    return notifierOf(this.#notifiers, index);
  }

  handOverQueue(index: number): Promise<QueueHandOver> {
    notifierOf(this.#notifiers, index); // set up, or a typed error
    return OwnedHandOver.create({ kind: "eventfd", fd: this.#kickFds[index] }, this.#callFds[index]);
  }

  createInterruptSource(options: InterruptSourceOptions = {}): Promise<InterruptSource> {
    return Waker.forQueues((options.queues ?? true) ? this.#callFds : []);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#configWatch?.close();
    this.#configWatch = undefined;
    return settle(() => {
      const steps = new Teardown();
      steps.run(() => this.#releaseConfigCall());
      // Reset first: the device stops using the rings and memory.
      steps.run(() => this.#setStatus(0));
      for (const region of this.#mappings.regions) steps.run(() => this.#mappings.unmap(region));
      for (const fd of [...this.#kickFds, ...this.#callFds]) if (fd !== undefined) steps.run(() => closeFd(fd));
      steps.run(() => closeFd(this.#fd));
      this.#fd = -1;
      this.#kickFds = [];
      this.#callFds = [];
      steps.finish();
    });
  }

  /** The device path (for messages). */
  get path(): string {
    return this.#path;
  }
}
