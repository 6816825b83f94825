/**
 * virtio for Deno: a userspace virtio-blk driver.
 *
 * A Deno program talks to a virtio-blk device directly — through a
 * vhost-user socket (qemu-storage-daemon, SPDK, DPDK), a vhost-vdpa
 * character device, a virtio-pci function behind VFIO, or an in-process mock
 * device — placing requests in virtqueues in shared memory and reaping
 * completions, with no kernel block layer in between.
 *
 * This entry point is what a user of {@linkcode VirtioBlk} needs. Testing
 * aids (the mock device, a private qemu-storage-daemon) are in `./testing`;
 * the virtqueue and transports, for drivers of other virtio devices, in
 * `./advanced`.
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

export { VirtioBlk } from "./src/blk/virtio_blk.ts";
export { type VirtioBlkEventMap, VirtioBlkEvents } from "./src/blk/events.ts";
export type { ConfigChangeDetail, ConfigWatchStats } from "./src/blk/config_watch.ts";
export type { ConnectionStats, DisconnectDetail, ReconnectDetail } from "./src/blk/reconnect.ts";
export type { VirtioBlkFeatures } from "./src/blk/features.ts";
export type { VirtioBlkLimits } from "./src/blk/limits.ts";
export { fileReadable, type FileReadableOptions } from "./src/blk/file_readable.ts";
export type { ReadableOptions, WritableOptions } from "./src/blk/stream_options.ts";
export {
  type BlkCompletion,
  type CompletionHandler,
  VirtioBlkQueue,
  type VirtioBlkQueueStats,
  type WriteZeroesOptions,
} from "./src/blk/queue.ts";
export type { AttachOptions, DetachQueueOptions, VirtioBlkQueueHandle } from "./src/blk/queue_handle.ts";
// What a queue handle holds (plain data; see VirtioBlk.detachQueue).
export type { AttachedMemory, AttachedQueueSpec } from "./src/transport/attached.ts";
export type { RemoteWatchSet } from "./src/os/watch_set.ts";
export type { RingPosition } from "./src/virtqueue/types.ts";
export type { ReconnectOptions, VirtioBlkConnectOptions, VirtioBlkOptions } from "./src/blk/options.ts";
export type { CompletionMode } from "./src/blk/completion_driver.ts";
export type { VirtioBlkConfig } from "./src/blk/config.ts";
export type {
  ConnectTarget,
  MockTarget,
  TransportTarget,
  VfioPciTarget,
  VhostUserTarget,
  VhostVdpaTarget,
} from "./src/transport/connect.ts";
export {
  ClosedError,
  ConnectFailedError,
  ConnectionLostError,
  DeviceIoError,
  DeviceProtocolError,
  DeviceUnsupportedError,
  FeatureNegotiationError,
  IncompatibleDeviceError,
  InvalidArgumentError,
  OsError,
  OutOfBufferMemoryError,
  PermissionError,
  type PermissionFlag,
  type ProtocolViolation,
  QueueFullError,
  ReadOnlyError,
  ReconnectingError,
  ShimLoadError,
  TimeoutError,
  VirtioError,
  type VirtioErrorCode,
} from "./src/errors.ts";
// Types the connect options refer to (a device in this process, a transport of your own).
export type { InProcessDevice } from "./src/transport/in_process.ts";
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
export type { SharedRegion } from "./src/memory/region.ts";
export type { VirtqueueFormat } from "./src/virtqueue/layout.ts";
