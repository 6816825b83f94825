/**
 * {@linkcode VirtioBlkQueueHandle}: one queue of a connected virtio-blk
 * device, handed over to a Worker (`VirtioBlk.detachQueue` on the side that
 * connected, `VirtioBlk.attach` in the Worker). Plain data: post it as it is.
 *
 * @module
 */

import type { AttachedQueueSpec } from "../transport/connect.ts";
import type { CompletionMode } from "./completion_driver.ts";

/** What `VirtioBlk.detachQueue` takes. */
export interface DetachQueueOptions {
  /**
   * Bytes of device-reachable memory for the Worker's buffers
   * (`allocBuffer` there, and the bounce buffers of its plain
   * `Uint8Array`s): shared with the device here, at detach, so the Worker
   * never needs the control plane. At least 64 KiB.
   */
  bufferBytes: number;
}

/** What `VirtioBlk.attach` takes besides the handle. */
export interface AttachOptions {
  /** How the Worker notices completions; default the connecting side's mode. */
  mode?: CompletionMode;
  /** eventfd mode: how long to poll before sleeping; default the connecting side's. */
  spinMicros?: number;
}

/**
 * A queue handed over to another isolate of this process: post it to a
 * Worker and call `VirtioBlk.attach(handle)` there. Plain data
 * (structured-cloneable), attached once; it names memory of this process, so
 * it means nothing in another one.
 *
 * @example
 * ```ts ignore
 * // main.ts
 * const handle = await blk.detachQueue(1, { bufferBytes: 8 << 20 });
 * new Worker(new URL("./worker.ts", import.meta.url), { type: "module" }).postMessage(handle);
 * // worker.ts
 * self.onmessage = async (e) => {
 *   await using blk = await VirtioBlk.attach(e.data);
 *   await blk.write(0, blk.allocBuffer(4096));
 * };
 * ```
 */
export interface VirtioBlkQueueHandle {
  /** What this is. */
  readonly kind: "virtio-blk-queue";
  /** The handle's format. */
  readonly version: 1;
  /** The queue's index on the device (queue 0 in the Worker). */
  readonly index: number;
  /** The queue as the transport hands it over. */
  readonly queue: AttachedQueueSpec;
  /** Most data segments in one request, as the connecting side sized the request slots. */
  readonly maxSegments: number;
  /** The connecting side's completion mode (the Worker's default). */
  readonly mode: CompletionMode;
  /** The connecting side's spin before sleeping (eventfd mode). */
  readonly spinMicros: number;
  /** The connecting side's used-length policy. */
  readonly strictUsedLength: boolean;
  /** The connecting side's indirect threshold. */
  readonly indirectThreshold: number | undefined;
}

/**
 * Whether `value` looks like a {@linkcode VirtioBlkQueueHandle} (its kind and version).
 *
 * @param value what was posted
 * @returns true for a handle of this version
 */
export function isQueueHandle(value: unknown): value is VirtioBlkQueueHandle {
  const h = value as VirtioBlkQueueHandle | null;
  return typeof h === "object" && h !== null && h.kind === "virtio-blk-queue" && h.version === 1 &&
    typeof h.queue === "object" && h.queue !== null;
}
