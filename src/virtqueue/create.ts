/**
 * {@linkcode createVirtqueue}: a {@linkcode Virtqueue} of the layout's
 * format, for drivers of other virtio devices.
 *
 * @module
 */

import { PackedRing } from "./packed.ts";
import { SplitRing } from "./split.ts";
import type { Virtqueue, VirtqueueOptions } from "./types.ts";

/**
 * A virtqueue over `options.memory`: a split ring (virtio 1.2, 2.7) or a
 * packed ring (2.8), as the layout says.
 *
 * @example
 * ```ts
 * import { createVirtqueue, VirtqueueLayout } from "../../advanced.ts";
 * const layout = new VirtqueueLayout(1, 64, { format: "packed" });
 * const vq = createVirtqueue({ layout, memory: new Uint8Array(layout.totalSize), iova: 0x1_0000_0000 });
 * console.log(vq.format, vq.queueSize); // packed 64
 * ```
 *
 * @param options layout, memory, IOVA and features
 * @returns the virtqueue
 */
export function createVirtqueue(options: VirtqueueOptions): Virtqueue {
  return options.layout.format === "packed" ? new PackedRing(options) : new SplitRing(options);
}
