/**
 * For drivers of other virtio devices: the pieces `VirtioBlk` is built on,
 * as the Rust crate `virtio-driver` exposes them — the memory layout of
 * virtqueues, a {@linkcode Virtqueue} over it (split or packed), and the
 * {@linkcode Transport} interface with the concrete transports (vhost-user,
 * vhost-vdpa, vfio-pci) and the regions of memory they share.
 *
 * @example A virtqueue of your own over a transport
 * ```ts ignore
 * import { createVirtqueue, VhostUserTransport, VirtqueueLayout } from "@virtio/deno/advanced";
 * const transport = await VhostUserTransport.connect("/tmp/x.sock");
 * await transport.negotiateFeatures(1n << 32n); // VIRTIO_F_VERSION_1
 * const layout = new VirtqueueLayout(1, 256);
 * const region = transport.createRegion(layout.totalSize, "my-queues");
 * await transport.mapMemRegion(region);
 * const vq = createVirtqueue({ layout, memory: region.bytes, iova: region.iova });
 * await transport.setupQueues([{
 *   index: 0, size: 256, format: "split",
 *   descIova: vq.descTableIova, driverIova: vq.driverAreaIova, deviceIova: vq.deviceAreaIova,
 * }]);
 * ```
 *
 * @module
 */

export { type VirtqueueFormat, VirtqueueLayout, type VirtqueueLayoutOptions } from "./src/virtqueue/layout.ts";
export { createVirtqueue } from "./src/virtqueue/create.ts";
export type {
  AddDesc,
  Completion,
  DeviceBuffer,
  IndirectOptions,
  RequestSlot,
  RingPosition,
  Virtqueue,
  VirtqueueOptions,
} from "./src/virtqueue/types.ts";
export { MAX_QUEUE_SIZE } from "./src/virtqueue/defs.ts";
export type {
  BackendChannelStats,
  ConfigChangeSignal,
  InterruptSource,
  InterruptSourceOptions,
  NotifySpec,
  QueueConfig,
  QueueHandOver,
  QueueNotifier,
  Transport,
  TransportType,
} from "./src/transport/transport.ts";
export type { RemoteWatchSet } from "./src/os/watch_set.ts";
export { type ConnectTarget, connectTransport, type TransportSettings } from "./src/transport/connect.ts";
export { VhostUserTransport, type VhostUserTransportOptions } from "./src/transport/vhost_user/transport.ts";
export { VhostVdpaTransport, type VhostVdpaTransportOptions } from "./src/transport/vhost_vdpa/transport.ts";
export { VfioPciTransport, type VfioPciTransportOptions } from "./src/transport/vfio_pci/transport.ts";
export { type InProcessDevice, MockTransport } from "./src/transport/in_process.ts";
export { AttachedRegion, HeapRegion, MappedRegion, MemfdRegion, type SharedRegion } from "./src/memory/region.ts";
export { BufferPool } from "./src/memory/buffer_pool.ts";
export { describeFeatures, VIRTIO_STATUS } from "./src/virtio/spec.ts";
export { loadShim } from "./src/os/loader.ts";
