/**
 * The VFIO virtio-pci transport: a virtio-blk PCI function bound to
 * `vfio-pci`, driven from user space. The IOMMU (type1, through a VFIO
 * container) maps every memory region at an IOVA we choose; the device's
 * registers are reached through its BARs, mapped into this process; MSI-X
 * vectors are routed to eventfds (or left off for a polling-only mode).
 *
 * @module
 */

import {
  doorbell16,
  mmioFenceWrite16,
  mmioFenceWrite32,
  mmioFenceWrite8,
  mmioRead16,
  mmioRead32,
  mmioRead8,
} from "../../os/mmio.ts";
import { eventfd } from "../../os/eventfd.ts";
import { closeFd, LINUX, openFile, preadExact } from "../../os/syscalls.ts";
import { OwnedHandOver } from "../hand_over.ts";
import { Waker } from "../waker.ts";
import { SignalWatch } from "../signal_watch.ts";
import {
  ConnectFailedError,
  DeviceProtocolError,
  FeatureNegotiationError,
  InvalidArgumentError,
  OsError,
  TimeoutError,
} from "../../errors.ts";
import { VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1, VIRTIO_STATUS as S } from "../../virtio/spec.ts";
import { MemfdRegion, type SharedRegion } from "../../memory/region.ts";
import { settle } from "../settle.ts";
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
  COMMON_CFG as C,
  describePciFunction,
  isVirtioBlk,
  parsePciCapabilities,
  PCI,
  VIRTIO_MSI_NO_VECTOR,
  VIRTIO_PCI_CAP,
  type VirtioPciCap,
} from "./pci.ts";
import { VfioDevice } from "./vfio_device.ts";

/** Options of {@linkcode VfioPciTransport.connect}. */
export interface VfioPciTransportOptions {
  /**
   * Route one MSI-X vector per queue to an eventfd (needed for the eventfd
   * completion mode). With false the device raises no interrupts: poll mode
   * only. Default true.
   */
  interrupts?: boolean;
  /** How long a device reset may take; default 1000 ms. */
  resetTimeoutMs?: number;
}

/** How often config_generation is looked at when the device has no config vector. */
const GENERATION_POLL_MS = 250;

const BDF = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;

/** How to find the virtio-blk functions of a machine, for messages. */
const FIND_VIRTIO_BLK = "lspci -nn -d 1af4:1042 and lspci -nn -d 1af4:1001 list the virtio-blk functions";

/**
 * Refuses a PCI address that is not a virtio-blk function, before anything
 * is opened through VFIO: the identity comes from the first bytes of its
 * config space in sysfs, which any user may read (through the shim: no
 * `--allow-read`).
 *
 * @param bdf the PCI address
 * @throws {ConnectFailedError} when there is no such function
 * @throws {InvalidArgumentError} naming what it is, when it is not virtio-blk
 */
function checkIsVirtioBlk(bdf: string): void {
  const path = `/sys/bus/pci/devices/${bdf}/config`;
  let fd: number;
  try {
    fd = openFile(path, LINUX.O_RDONLY);
  } catch (e) {
    if (e instanceof OsError && (e.errno === 2 || e.errno === 20)) {
      throw new ConnectFailedError(bdf, "ENOENT", `no PCI function ${bdf} on this machine (${FIND_VIRTIO_BLK})`, {
        cause: e,
      });
    }
    throw e;
  }
  const header = new Uint8Array(12);
  try {
    preadExact(fd, header, 0, path);
  } finally {
    closeFd(fd);
  }
  const v = new DataView(header.buffer);
  const vendor = v.getUint16(PCI.VENDOR_ID, true), device = v.getUint16(PCI.DEVICE_ID, true);
  if (!isVirtioBlk(vendor, device)) {
    const classCode = (header[11] << 16) | (header[10] << 8) | header[9];
    throw new InvalidArgumentError(
      `${bdf} is ${describePciFunction(vendor, device, classCode)}, not a virtio-blk function (${FIND_VIRTIO_BLK})`,
    );
  }
}

/**
 * A virtio-blk PCI function driven through VFIO.
 *
 * @example
 * ```ts ignore
 * import { VirtioBlk } from "./mod.ts";
 * await using blk = await VirtioBlk.connect({ transport: "vfio-pci", device: "0000:00:04.0" });
 * ```
 */
export class VfioPciTransport implements Transport {
  readonly type = "vfio-pci" as const;
  readonly maxMemRegions = 1024;
  /** 4 MiB: QEMU maps a request behind an emulated IOMMU into at most 1024 pages of 4 KiB. */
  readonly maxTransferBytes: number = 4 << 20;
  /** The PCI address. */
  readonly device: string;
  /** Whether MSI-X vectors are routed to eventfds. */
  readonly interrupts: boolean;
  #vfio: VfioDevice | undefined;
  #common = 0; // address of the common config
  #deviceCfg = 0; // address of the device-specific config
  #deviceCfgLength = 0;
  #notifyBase = 0;
  #notifyLength = 0;
  #notifyMultiplier = 0;
  #msixSize = 0;
  #callFds: number[] = [];
  #configFd = -1; // the eventfd of the MSI-X config vector, when it has one
  #configWatch: SignalWatch | undefined;
  #generationTimer: ReturnType<typeof setInterval> | undefined;
  #notifiers: QueueNotifier[] = [];
  #notifyAddresses: number[] = [];
  #resetTimeoutMs: number;
  #closed = false;
  #deviceFeatures = 0n;
  #maxQueues = 0;
  #maxQueueSize = 0;

  private constructor(device: string, options: VfioPciTransportOptions) {
    this.device = device;
    this.interrupts = options.interrupts ?? true;
    this.#resetTimeoutMs = options.resetTimeoutMs ?? 1000;
  }

  /** Feature bits the device offers. */
  get deviceFeatures(): bigint {
    return this.#deviceFeatures;
  }

  /** Queues the device has. */
  get maxQueues(): number {
    return this.#maxQueues;
  }

  /** Largest size of queue 0. */
  get maxQueueSize(): number {
    return this.#maxQueueSize;
  }

  /**
   * Opens the device through its VFIO group and container, maps its BARs,
   * finds its virtio capabilities, resets it and reads its features. Needs
   * the shim loaded, the function bound to `vfio-pci`, and access to
   * `/dev/vfio/*`.
   *
   * @param device the PCI address, e.g. `0000:00:04.0`
   * @param options interrupts, reset timeout
   * @returns the transport
   */
  static async connect(device: string, options: VfioPciTransportOptions = {}): Promise<VfioPciTransport> {
    if (!BDF.test(device)) {
      throw new InvalidArgumentError(`not a PCI address (dddd:bb:ss.f): ${JSON.stringify(device)}`);
    }
    checkIsVirtioBlk(device);
    const t = new VfioPciTransport(device, options);
    try {
      await t.#open();
    } catch (e) {
      await t.close().catch(() => {});
      throw e;
    }
    return t;
  }

  get closed(): boolean {
    return this.#closed;
  }

  // ---------------------------------------------------------------- set-up

  async #open(): Promise<void> {
    const bdf = this.device;
    const vfio = this.#vfio = await VfioDevice.open(bdf);

    // Config space: identity, bus mastering, capabilities (virtio 1.2, 4.1.4).
    const config = vfio.readConfigSpace();
    const cv = new DataView(config.buffer);
    const vendor = cv.getUint16(PCI.VENDOR_ID, true), id = cv.getUint16(PCI.DEVICE_ID, true);
    if (!isVirtioBlk(vendor, id)) {
      const classCode = (config[0x0b] << 16) | (config[0x0a] << 8) | config[0x09];
      throw new InvalidArgumentError(
        `${bdf} is ${describePciFunction(vendor, id, classCode)}, not a virtio-blk function`,
      );
    }
    vfio.command = (cv.getUint16(PCI.COMMAND, true) | PCI.COMMAND_MEMORY | PCI.COMMAND_MASTER) & 0xffff;
    const caps = parsePciCapabilities(config);
    this.#msixSize = caps.msixTableSize ?? 0;
    const need = (type: number, name: string): VirtioPciCap => {
      const c = caps.virtio.get(type);
      if (!c) {
        throw new DeviceProtocolError(
          "bad-pci-config",
          `${bdf} has no virtio ${name} capability (not a modern device?)`,
        );
      }
      return c;
    };
    const common = need(VIRTIO_PCI_CAP.COMMON, "common config");
    const notify = need(VIRTIO_PCI_CAP.NOTIFY, "notify");
    const dev = need(VIRTIO_PCI_CAP.DEVICE, "device config");
    if (common.length < C.SIZE) {
      throw new DeviceProtocolError("bad-pci-config", `common config of ${common.length} bytes`);
    }
    this.#common = this.#capAddress(common);
    this.#deviceCfg = this.#capAddress(dev);
    this.#deviceCfgLength = dev.length;
    this.#notifyBase = this.#capAddress(notify);
    this.#notifyLength = notify.length;
    this.#notifyMultiplier = notify.notifyOffMultiplier ?? 0;

    // Device initialization (3.1.1) up to reading the features.
    await this.#reset();
    this.#setStatus(S.ACKNOWLEDGE);
    this.#setStatus(S.ACKNOWLEDGE | S.DRIVER);
    this.#w32(C.DEVICE_FEATURE_SELECT, 0);
    const lo = this.#r32(C.DEVICE_FEATURE);
    this.#w32(C.DEVICE_FEATURE_SELECT, 1);
    const hi = this.#r32(C.DEVICE_FEATURE);
    this.#deviceFeatures = (BigInt(hi) << 32n) | BigInt(lo);
    const nq = this.#r16(C.NUM_QUEUES);
    if (nq === 0) throw new DeviceProtocolError("bad-queue-num", "the device reports 0 queues");
    this.#maxQueues = nq;
    this.#w16(C.QUEUE_SELECT, 0);
    const qs = this.#r16(C.QUEUE_SIZE);
    if (qs === 0) throw new DeviceProtocolError("bad-queue-num", "queue 0 is not available");
    this.#maxQueueSize = qs;
  }

  /** Maps the capability's BAR (once) and returns the address of the capability's structure. */
  #capAddress(cap: VirtioPciCap): number {
    const bar = this.#vfio!.mapBar(cap.bar);
    if (cap.offset + cap.length > bar.size || cap.length === 0) {
      throw new DeviceProtocolError(
        "bad-pci-config",
        `capability type ${cap.cfgType} [${cap.offset}, +${cap.length}) lies outside BAR ${cap.bar} (${bar.size} bytes)`,
      );
    }
    return bar.addr + cap.offset;
  }

  // Register accesses of the exact width (volatile); each write follows a full fence.
  #r8(off: number): number {
    return mmioRead8(BigInt(this.#common + off));
  }
  #r16(off: number): number {
    return mmioRead16(BigInt(this.#common + off));
  }
  #r32(off: number): number {
    return mmioRead32(BigInt(this.#common + off));
  }
  #w8(off: number, v: number): void {
    mmioFenceWrite8(BigInt(this.#common + off), v);
  }
  #w16(off: number, v: number): void {
    mmioFenceWrite16(BigInt(this.#common + off), v);
  }
  #w32(off: number, v: number): void {
    mmioFenceWrite32(BigInt(this.#common + off), v);
  }
  #w64(off: number, v: number): void {
    // 64-bit fields may be written as two 32-bit halves, low first (virtio 1.2, 4.1.3.1).
    this.#w32(off, v >>> 0);
    this.#w32(off + 4, Math.floor(v / 4294967296) >>> 0);
  }

  #setStatus(status: number): void {
    this.#w8(C.DEVICE_STATUS, status);
  }

  async #reset(): Promise<void> {
    this.#w8(C.DEVICE_STATUS, 0);
    // The device has reset once the status reads back as 0.
    const deadline = performance.now() + this.#resetTimeoutMs;
    while (this.#r8(C.DEVICE_STATUS) !== 0) {
      if (performance.now() > deadline) {
        throw new TimeoutError(`${this.device} did not reset within ${this.#resetTimeoutMs} ms`);
      }
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  // ------------------------------------------------------------- Transport

  negotiateFeatures(driverFeatures: bigint): Promise<bigint> {
    return settle(() => {
      const dev = this.deviceFeatures;
      if ((dev & VIRTIO_F_VERSION_1) === 0n) {
        throw new FeatureNegotiationError(`${this.device} does not offer VIRTIO_F_VERSION_1`);
      }
      if ((dev & VIRTIO_F_ACCESS_PLATFORM) === 0n) {
        throw new FeatureNegotiationError(
          `${this.device} does not offer VIRTIO_F_ACCESS_PLATFORM: it would bypass the IOMMU (QEMU: iommu_platform=on)`,
        );
      }
      const features = (driverFeatures | VIRTIO_F_ACCESS_PLATFORM) & dev;
      this.#w32(C.DRIVER_FEATURE_SELECT, 0);
      this.#w32(C.DRIVER_FEATURE, Number(features & 0xffff_ffffn));
      this.#w32(C.DRIVER_FEATURE_SELECT, 1);
      this.#w32(C.DRIVER_FEATURE, Number(features >> 32n));
      this.#setStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK);
      if ((this.#r8(C.DEVICE_STATUS) & S.FEATURES_OK) === 0) {
        throw new FeatureNegotiationError(`${this.device} refused features 0x${features.toString(16)}`);
      }
      return features;
    });
  }

  readConfig(offset: number, length: number): Promise<Uint8Array> {
    return settle(() => {
      if (offset < 0 || offset + length > this.#deviceCfgLength) {
        throw new DeviceProtocolError(
          "bad-config",
          `config [${offset}, +${length}) beyond its ${this.#deviceCfgLength} bytes`,
        );
      }
      const out = new Uint8Array(length);
      const v = new DataView(out.buffer);
      // Retry until config_generation is the same before and after (4.1.4.3.2).
      for (let attempt = 0; attempt < 100; attempt++) {
        const before = this.#r8(C.CONFIG_GENERATION);
        for (let at = 0; at < length;) {
          const a = BigInt(this.#deviceCfg + offset + at);
          if ((offset + at) % 4 === 0 && length - at >= 4) {
            v.setUint32(at, mmioRead32(a), true);
            at += 4;
          } else if ((offset + at) % 2 === 0 && length - at >= 2) {
            v.setUint16(at, mmioRead16(a), true);
            at += 2;
          } else {
            v.setUint8(at, mmioRead8(a));
            at += 1;
          }
        }
        if (this.#r8(C.CONFIG_GENERATION) === before) return out;
      }
      throw new DeviceProtocolError("config-unstable", "the config generation kept changing while the config was read");
    });
  }

  writeConfig(offset: number, data: Uint8Array): Promise<void> {
    return settle(() => {
      if (offset < 0 || offset + data.byteLength > this.#deviceCfgLength) {
        throw new InvalidArgumentError(
          `config [${offset}, +${data.byteLength}) beyond its ${this.#deviceCfgLength} bytes`,
        );
      }
      // Byte by byte: the fields a driver writes (writeback) are single bytes.
      data.forEach((b, i) => mmioFenceWrite8(BigInt(this.#deviceCfg + offset + i), b));
    });
  }

  async watchConfig(listener: () => void): Promise<ConfigChangeSignal> {
    if (this.#configWatch || this.#generationTimer !== undefined) {
      throw new InvalidArgumentError("the configuration is watched already");
    }
    if (this.#configFd >= 0) {
      this.#configWatch = await SignalWatch.eventfd(this.#configFd, listener);
      return "interrupt";
    }
    // No config vector: look at config_generation a few times a second (one register read).
    let generation = this.#r8(C.CONFIG_GENERATION);
    const timer = this.#generationTimer = setInterval(() => {
      if (!this.#common) return;
      const g = this.#r8(C.CONFIG_GENERATION);
      if (g === generation) return;
      generation = g;
      listener();
    }, GENERATION_POLL_MS);
    Deno.unrefTimer(timer);
    return "generation";
  }

  /** A PCI function does not hang up: the listener is never called. */
  watchHangup(_listener: () => void): Promise<void> {
    return Promise.resolve();
  }

  createRegion(size: number, name: string): SharedRegion {
    return new MemfdRegion(name, size);
  }

  mapMemRegion(region: SharedRegion): Promise<void> {
    return settle(() => this.#vfio!.mappings.map(region));
  }

  unmapMemRegion(region: SharedRegion): Promise<void> {
    return settle(() => this.#vfio!.mappings.unmap(region));
  }

  setupQueues(queues: readonly QueueConfig[]): Promise<void> {
    return settle(() => {
      if (this.interrupts) {
        if (this.#msixSize < queues.length) {
          throw new FeatureNegotiationError(
            `${this.device} has ${this.#msixSize} MSI-X vectors, ${queues.length} queues need one each`,
          );
        }
        this.#callFds = queues.map(() => eventfd());
        // One more vector, when the function has it, for configuration changes (4.1.5.4).
        if (this.#msixSize > queues.length) this.#configFd = eventfd();
        this.#vfio!.setMsixEventfds(this.#configFd >= 0 ? [...this.#callFds, this.#configFd] : this.#callFds);
      }
      const configVector = this.#configFd >= 0 ? queues.length : VIRTIO_MSI_NO_VECTOR;
      this.#w16(C.CONFIG_MSIX_VECTOR, configVector);
      if (this.#r16(C.CONFIG_MSIX_VECTOR) !== configVector) {
        // The device would not take it: changes are then noticed through config_generation.
        this.#w16(C.CONFIG_MSIX_VECTOR, VIRTIO_MSI_NO_VECTOR);
        if (this.#configFd >= 0) closeFd(this.#configFd);
        this.#configFd = -1;
      }
      for (const q of queues) {
        this.#w16(C.QUEUE_SELECT, q.index);
        const max = this.#r16(C.QUEUE_SIZE);
        if (q.size > max) throw new InvalidArgumentError(`queue ${q.index}: size ${q.size} above the device's ${max}`);
        this.#w16(C.QUEUE_SIZE, q.size);
        this.#w64(C.QUEUE_DESC, q.descIova);
        this.#w64(C.QUEUE_DRIVER, q.driverIova);
        this.#w64(C.QUEUE_DEVICE, q.deviceIova);
        const vector = this.interrupts ? q.index : VIRTIO_MSI_NO_VECTOR;
        this.#w16(C.QUEUE_MSIX_VECTOR, vector);
        if (this.#r16(C.QUEUE_MSIX_VECTOR) !== vector) {
          throw new DeviceProtocolError(
            "msix-refused",
            `queue ${q.index}: the device did not take MSI-X vector ${vector}`,
          );
        }
        const off = this.#r16(C.QUEUE_NOTIFY_OFF) * this.#notifyMultiplier;
        if (off + 2 > this.#notifyLength) {
          throw new DeviceProtocolError(
            "bad-pci-config",
            `queue ${q.index}: notify offset ${off} outside the notify area`,
          );
        }
        this.#notifyAddresses[q.index] = this.#notifyBase + off;
        this.#notifiers[q.index] = { notify: doorbell16(BigInt(this.#notifyBase + off), q.index) };
        this.#w16(C.QUEUE_ENABLE, 1);
      }
      this.#setStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK);
      checkDriverOk(this.#r8(C.DEVICE_STATUS), "device");
    });
  }

  notifier(index: number): QueueNotifier {
    return notifierOf(this.#notifiers, index);
  }

  handOverQueue(index: number): Promise<QueueHandOver> {
    notifierOf(this.#notifiers, index); // set up, or a typed error
    // The notify register in the BAR this transport mapped; the queue's MSI-X eventfd (none in poll mode).
    const notify = { kind: "doorbell16", address: this.#notifyAddresses[index], value: index } as const;
    return OwnedHandOver.create(notify, this.#callFds[index]);
  }

  createInterruptSource(options: InterruptSourceOptions = {}): Promise<InterruptSource> {
    return Waker.forQueues((options.queues ?? true) ? this.#callFds : []);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#generationTimer !== undefined) clearInterval(this.#generationTimer);
    this.#generationTimer = undefined;
    await this.#configWatch?.close();
    this.#configWatch = undefined;
    const steps = new Teardown();
    const vfio = this.#vfio;
    if (vfio) {
      // Stop the device before anything it might use goes away.
      if (this.#common) await steps.runAsync(() => this.#reset());
      if (this.#callFds.length) steps.run(() => vfio.setMsixEventfds([]));
      steps.run(() => vfio.command = vfio.command & ~PCI.COMMAND_MASTER); // bus mastering off
      this.#common = 0;
      steps.run(() => vfio.close());
      this.#vfio = undefined;
    }
    for (const fd of this.#callFds) steps.run(() => closeFd(fd));
    this.#callFds = [];
    if (this.#configFd >= 0) steps.run(() => closeFd(this.#configFd));
    this.#configFd = -1;
    steps.finish();
  }
}
