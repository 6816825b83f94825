/**
 * A PCI function opened through VFIO (Linux `Documentation/driver-api/vfio.rst`):
 * its IOMMU group joined to a type1v2 container that maps our memory at the
 * IOVAs we choose, its config space read and written through the device fd,
 * its BARs mapped into this process, and its MSI-X vectors routed to
 * eventfds. Nothing here knows virtio; the virtio-pci transport
 * (`transport.ts`) is built on top.
 *
 * @module
 */

import {
  closeFd,
  cString,
  ioctl,
  ioctlValue,
  LINUX,
  mmapShared,
  munmap,
  openFile,
  preadExact,
  pwriteExact,
  readLink,
} from "../../os/syscalls.ts";
import { DeviceProtocolError, FeatureNegotiationError, InvalidArgumentError, OsError } from "../../errors.ts";
import { IovaAllocator } from "../../memory/iova_allocator.ts";
import { IovaMappings } from "../../memory/iova_mappings.ts";
import { settle } from "../settle.ts";
import { Teardown } from "../teardown.ts";
import { PCI } from "./pci.ts";
import {
  decodeIovaRanges,
  decodeRegionInfo,
  dmaMap,
  dmaUnmap,
  groupStatus,
  iommuInfo,
  irqSet,
  regionInfo,
  VFIO,
  VFIO_API_VERSION,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_TYPE1v2_IOMMU,
} from "./uapi.ts";

/** A BAR mapped into this process. */
export interface MappedBar {
  /** Where it is mapped. */
  addr: number;
  /** Its size in bytes. */
  size: number;
}

/** The container, group and device fds of one PCI function, and what is mapped through them. */
export class VfioDevice {
  /** The PCI address. */
  readonly bdf: string;
  #container = -1;
  #group = -1;
  #device = -1;
  #configOffset = 0;
  readonly #bars = new Map<number, MappedBar>();
  #mappings: IovaMappings | undefined; // once the container has its IOMMU

  private constructor(bdf: string) {
    this.bdf = bdf;
  }

  /**
   * Joins the function's IOMMU group to a new type1v2 container and opens
   * the device. On failure everything opened so far is closed again.
   *
   * @param bdf the PCI address, e.g. `0000:00:04.0`
   * @returns the open device
   */
  static open(bdf: string): Promise<VfioDevice> {
    return settle(() => {
      const d = new VfioDevice(bdf);
      try {
        d.#open();
      } catch (e) {
        try {
          d.close();
        } catch { /* the first failure is the one to report */ }
        throw e;
      }
      return d;
    });
  }

  #open(): void {
    const bdf = this.bdf;
    let groupLink: string;
    try {
      groupLink = readLink(`/sys/bus/pci/devices/${bdf}/iommu_group`); // through the shim: --allow-ffi only
    } catch (cause) {
      if (!(cause instanceof OsError && cause.errno === LINUX.ENOENT)) throw cause;
      throw new InvalidArgumentError(
        `${bdf} is in no IOMMU group: is the IOMMU on (intel_iommu=on or amd_iommu=on on the kernel command line)?`,
      );
    }
    const group = groupLink.slice(groupLink.lastIndexOf("/") + 1);
    this.#container = openFile("/dev/vfio/vfio", LINUX.O_RDWR);
    if (ioctlValue(this.#container, VFIO.GET_API_VERSION, 0, "VFIO_GET_API_VERSION") !== VFIO_API_VERSION) {
      throw new FeatureNegotiationError("unknown VFIO API version");
    }
    if (ioctlValue(this.#container, VFIO.CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU, "VFIO_CHECK_EXTENSION") !== 1) {
      throw new FeatureNegotiationError("the VFIO container does not support the type1v2 IOMMU");
    }
    this.#group = openFile(`/dev/vfio/${group}`, LINUX.O_RDWR);
    const status = groupStatus();
    ioctl(this.#group, VFIO.GROUP_GET_STATUS, status, "VFIO_GROUP_GET_STATUS");
    if ((new DataView(status.buffer).getUint32(4, true) & VFIO_GROUP_FLAGS_VIABLE) === 0) {
      throw new InvalidArgumentError(`IOMMU group ${group} is not viable: bind every device in it to vfio-pci`);
    }
    ioctl(
      this.#group,
      VFIO.GROUP_SET_CONTAINER,
      new Uint8Array(new Int32Array([this.#container]).buffer),
      "VFIO_GROUP_SET_CONTAINER",
    );
    ioctlValue(this.#container, VFIO.SET_IOMMU, VFIO_TYPE1v2_IOMMU, "VFIO_SET_IOMMU");
    const info = iommuInfo();
    ioctl(this.#container, VFIO.IOMMU_GET_INFO, info, "VFIO_IOMMU_GET_INFO");
    this.#mappings = new IovaMappings(
      new IovaAllocator(decodeIovaRanges(info) ?? [{ first: 0, last: 2 ** 39 - 1 }]),
      (region, iova) =>
        void ioctl(this.#container, VFIO.IOMMU_MAP_DMA, dmaMap(region.addr, iova, region.size), "VFIO_IOMMU_MAP_DMA"),
      (iova, size) => void ioctl(this.#container, VFIO.IOMMU_UNMAP_DMA, dmaUnmap(iova, size), "VFIO_IOMMU_UNMAP_DMA"),
    );
    this.#device = ioctl(this.#group, VFIO.GROUP_GET_DEVICE_FD, cString(bdf), "VFIO_GROUP_GET_DEVICE_FD");
    this.#configOffset = this.#region(VFIO_PCI_CONFIG_REGION_INDEX).offset;
  }

  /** The memory regions mapped for the device's DMA, at the IOVAs the container's IOMMU accepts. */
  get mappings(): IovaMappings {
    return this.#mappings!;
  }

  /** Reads the first 256 bytes of the PCI config space (header and capability list). */
  readConfigSpace(): Uint8Array {
    const config = new Uint8Array(256);
    preadExact(this.#device, config, this.#configOffset, "PCI config space");
    return config;
  }

  /** The PCI command register. */
  get command(): number {
    const b = new Uint8Array(2);
    preadExact(this.#device, b, this.#configOffset + PCI.COMMAND, "PCI command register");
    return new DataView(b.buffer).getUint16(0, true);
  }

  set command(value: number) {
    const b = new Uint8Array(2);
    new DataView(b.buffer).setUint16(0, value, true);
    pwriteExact(this.#device, b, this.#configOffset + PCI.COMMAND, "PCI command register");
  }

  /**
   * Maps a BAR into this process (once; later calls return the same mapping).
   *
   * @param index the BAR number
   * @returns where it is mapped and its size
   */
  mapBar(index: number): MappedBar {
    let bar = this.#bars.get(index);
    if (!bar) {
      const r = this.#region(index);
      if ((r.flags & VFIO_REGION_INFO_FLAG_MMAP) === 0 || r.size === 0) {
        throw new DeviceProtocolError("bad-pci-config", `BAR ${index} cannot be mapped`);
      }
      bar = { addr: mmapShared(this.#device, r.size, r.offset), size: r.size };
      this.#bars.set(index, bar);
    }
    return bar;
  }

  /**
   * Routes MSI-X vectors 0.. to these eventfds, in order; an empty list
   * turns MSI-X off.
   *
   * @param fds one eventfd per vector
   */
  setMsixEventfds(fds: readonly number[]): void {
    ioctl(this.#device, VFIO.DEVICE_SET_IRQS, irqSet(VFIO_PCI_MSIX_IRQ_INDEX, fds), "VFIO_DEVICE_SET_IRQS");
  }

  #region(index: number): { flags: number; size: number; offset: number } {
    const b = regionInfo(index);
    ioctl(this.#device, VFIO.DEVICE_GET_REGION_INFO, b, `VFIO_DEVICE_GET_REGION_INFO ${index}`);
    return decodeRegionInfo(b);
  }

  /**
   * Unmaps every DMA mapping and BAR and closes the device, group and
   * container; every step runs even when one before it fails. Stop the
   * device (reset, bus mastering off) first.
   */
  close(): void {
    const steps = new Teardown();
    for (const region of this.#mappings?.regions ?? []) steps.run(() => this.#mappings!.unmap(region));
    for (const bar of this.#bars.values()) steps.run(() => munmap(bar.addr, bar.size));
    this.#bars.clear();
    if (this.#device >= 0) steps.run(() => closeFd(this.#device));
    if (this.#group >= 0) {
      steps.run(() => ioctlValue(this.#group, VFIO.GROUP_UNSET_CONTAINER, 0, "VFIO_GROUP_UNSET_CONTAINER"));
      steps.run(() => closeFd(this.#group));
    }
    if (this.#container >= 0) steps.run(() => closeFd(this.#container));
    this.#device = this.#group = this.#container = -1;
    steps.finish();
  }
}
