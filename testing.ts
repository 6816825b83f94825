/**
 * Testing aids for programs that use virtio for Deno: an in-memory
 * virtio-blk device that really processes the rings ({@linkcode MockBlkDevice},
 * reached with `VirtioBlk.connect({ transport: "mock", device })`), its
 * hostile mode, and real back-ends started on temporary sockets —
 * {@linkcode QemuStorageDaemon} and DPDK's vhost_blk example
 * ({@linkcode DpdkVhostBlk}). Daemons started here are stopped, and their
 * folders removed, when the program ends or is interrupted.
 *
 * @example A unit test without a daemon or native code
 * ```ts
 * import { VirtioBlk } from "./mod.ts";
 * import { MockBlkDevice } from "./testing.ts";
 * const device = new MockBlkDevice({ capacity: 1 << 20 });
 * await using blk = await VirtioBlk.connect({ transport: "mock", device });
 * await blk.write(0, new Uint8Array(512).fill(7));
 * console.log(device.disk[0]); // 7
 * ```
 *
 * @module
 */

export {
  MockBlkDevice,
  type MockBlkDeviceOptions,
  type MockBlkStats,
  type MockCompletionMode,
  type MockRequest,
} from "./src/testing/mock/blk_device.ts";
export { HostileActions } from "./src/testing/mock/hostile.ts";
export { MockDeviceError } from "./src/testing/mock/device_ring.ts";
export { MockTransport } from "./src/transport/in_process.ts";
export { VhostUserDaemon } from "./src/testing/daemon_process.ts";
export { QmpError, qmpExecute } from "./src/testing/qmp.ts";
export { QemuStorageDaemon, type QemuStorageDaemonOptions } from "./src/testing/qsd.ts";
export { DpdkVhostBlk, type DpdkVhostBlkOptions } from "./src/testing/dpdk_vhost_blk.ts";
