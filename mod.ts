/**
 * virtio for Deno: a userspace virtio-blk driver.
 *
 * A Deno program talks to a virtio-blk device directly — through a
 * vhost-user socket (qemu-storage-daemon, SPDK), a vhost-vdpa character
 * device, a virtio-pci function behind VFIO, or an in-process mock device —
 * placing requests in virtqueues in shared memory and reaping completions,
 * with no kernel block layer in between.
 *
 * @example Write, read back, flush
 * ```ts ignore
 * import { VirtioBlk } from "@virtio/deno";
 * await using blk = await VirtioBlk.connect({ transport: "vhost-user", path: "/tmp/x.sock" });
 * const buf = blk.allocBuffer(4096);
 * buf.fill(0x5a);
 * await blk.write(0, buf);
 * await blk.read(0, buf);
 * await blk.flush();
 * console.log(blk.capacity, blk.blockSize, blk.readOnly);
 * ```
 *
 * @module
 */

export { VirtioBlk, type VirtioBlkConnectOptions, type VirtioBlkFeatures } from "./src/blk/virtio_blk.ts";
export {
  type BlkCompletion,
  type CompletionHandler,
  VirtioBlkQueue,
  type VirtioBlkQueueStats,
  type WriteZeroesOptions,
} from "./src/blk/queue.ts";
export type { CompletionMode } from "./src/blk/completion_driver.ts";
export { parseBlkConfig, VIRTIO_BLK_CONFIG_SIZE, type VirtioBlkConfig } from "./src/blk/config.ts";
export * from "./src/errors.ts";
export {
  MAX_QUEUE_SIZE,
  type VirtqueueFormat,
  VirtqueueLayout,
  type VirtqueueLayoutOptions,
} from "./src/virtqueue/layout.ts";
export {
  type AddDesc,
  type Completion,
  type DeviceBuffer,
  type IndirectOptions,
  type RequestSlot,
  Virtqueue,
  type VirtqueueOptions,
} from "./src/virtqueue/virtqueue.ts";
export { SplitVirtqueue } from "./src/virtqueue/split.ts";
export { PackedVirtqueue } from "./src/virtqueue/packed.ts";
export type {
  InterruptSource,
  QueueConfig,
  QueueNotifier,
  Transport,
  TransportType,
} from "./src/transport/transport.ts";
export { VhostUserTransport, type VhostUserTransportOptions } from "./src/transport/vhost_user/transport.ts";
export { VhostVdpaTransport, type VhostVdpaTransportOptions } from "./src/transport/vhost_vdpa.ts";
export { VfioPciTransport, type VfioPciTransportOptions } from "./src/transport/vfio_pci.ts";
export { MockTransport } from "./src/transport/mock.ts";
export {
  MockBlkDevice,
  type MockBlkDeviceOptions,
  type MockBlkStats,
  type MockCompletionMode,
  MockDeviceError,
  type MockRequest,
} from "./src/transport/mock_device.ts";
export { HeapRegion, MemfdRegion, type SharedRegion } from "./src/memory/region.ts";
export { BufferPool } from "./src/memory/buffer_pool.ts";
export { loadShim } from "./src/os/loader.ts";
export { QemuStorageDaemon, type QemuStorageDaemonOptions } from "./src/testing/qsd.ts";
