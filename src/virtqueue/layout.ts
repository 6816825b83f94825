/**
 * Memory layout of N virtqueues of size Q.
 *
 * @module
 */

import { InvalidArgumentError } from "../errors.ts";
import { DESC_SIZE, MAX_QUEUE_SIZE } from "./defs.ts";

/** The ring format: split (virtio 1.0) or packed (VIRTIO_F_RING_PACKED). */
export type VirtqueueFormat = "split" | "packed";

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/** Options for {@linkcode VirtqueueLayout}. */
export interface VirtqueueLayoutOptions {
  /** Ring format; default `"split"`. */
  format?: VirtqueueFormat;
  /** Bytes of per-request data (headers, status) per slot; default 64. */
  reqSize?: number;
  /** Alignment of each queue's block (and of the request area); default 4096. */
  queueAlign?: number;
}

/**
 * Where each part of each virtqueue lives in one block of shared memory.
 *
 * Each queue occupies `stride` bytes starting at `queueOffset(i)`:
 *
 * | part | split | packed |
 * |---|---|---|
 * | descriptor table | 16·Q, at 0 | 16·Q, at 0 |
 * | driver area | avail ring, 6 + 2·Q | event suppression, 4 |
 * | device area | used ring, 6 + 8·Q (4-aligned) | event suppression, 4 |
 * | request data | reqSize·Q (64-aligned) | reqSize·Q (64-aligned) |
 *
 * @example
 * ```ts
 * import { VirtqueueLayout } from "../../advanced.ts";
 * const layout = new VirtqueueLayout(2, 256);
 * layout.deviceAreaOffset; // 4616: the used ring of queue 0
 * layout.totalSize;        // both queues, page-aligned
 * ```
 */
export class VirtqueueLayout {
  /** Number of queues. */
  readonly numQueues: number;
  /** Entries per queue (a power of two, at most 32768). */
  readonly queueSize: number;
  /** Ring format. */
  readonly format: VirtqueueFormat;
  /** Bytes of per-request data per slot. */
  readonly reqSize: number;
  /** Offset of the descriptor table within a queue's block (always 0). */
  readonly descTableOffset = 0;
  /** Offset of the driver area (split: available ring). */
  readonly driverAreaOffset: number;
  /** Offset of the device area (split: used ring). */
  readonly deviceAreaOffset: number;
  /** Offset of the per-request data slots. */
  readonly reqOffset: number;
  /** End of the used part of a queue's block. */
  readonly endOffset: number;
  /** Bytes between the starts of two queues' blocks. */
  readonly stride: number;
  /** Bytes for all queues. */
  readonly totalSize: number;

  /**
   * Creates the instance.
   *
   * @param numQueues how many queues (at least 1)
   * @param queueSize entries per queue: a power of two from 1 to 32768
   * @param options format and per-request data size
   * @throws {InvalidArgumentError} for an impossible size
   */
  constructor(
    numQueues: number,
    queueSize: number,
    options: VirtqueueLayoutOptions = {},
  ) {
    const format = options.format ?? "split";
    const reqSize = options.reqSize ?? 64;
    const queueAlign = options.queueAlign ?? 4096;
    if (!Number.isInteger(numQueues) || numQueues < 1 || numQueues > 65535) {
      throw new InvalidArgumentError(`numQueues must be an integer from 1 to 65535, got ${numQueues}`);
    }
    if (
      !Number.isInteger(queueSize) || queueSize < 1 || queueSize > MAX_QUEUE_SIZE ||
      (queueSize & (queueSize - 1)) !== 0
    ) {
      throw new InvalidArgumentError(
        `queueSize must be a power of two from 1 to ${MAX_QUEUE_SIZE}, got ${queueSize}`,
      );
    }
    if (format !== "split" && format !== "packed") {
      throw new InvalidArgumentError(`format must be "split" or "packed", got ${format}`);
    }
    if (!Number.isInteger(reqSize) || reqSize < 0 || reqSize % 8 !== 0) {
      throw new InvalidArgumentError(`reqSize must be a non-negative multiple of 8, got ${reqSize}`);
    }
    this.numQueues = numQueues;
    this.queueSize = queueSize;
    this.format = format;
    this.reqSize = reqSize;
    const descBytes = DESC_SIZE * queueSize;
    if (format === "split") {
      this.driverAreaOffset = descBytes; // 16-aligned, and the avail ring needs 2
      this.deviceAreaOffset = alignUp(this.driverAreaOffset + 6 + 2 * queueSize, 4);
      this.reqOffset = alignUp(this.deviceAreaOffset + 6 + 8 * queueSize, 64);
    } else {
      this.driverAreaOffset = descBytes;
      this.deviceAreaOffset = descBytes + 4;
      this.reqOffset = alignUp(this.deviceAreaOffset + 4, 64);
    }
    this.endOffset = this.reqOffset + reqSize * queueSize;
    this.stride = alignUp(this.endOffset, queueAlign);
    this.totalSize = this.stride * numQueues;
  }

  /**
   * Offset of queue `i`'s block.
   *
   * @param i the queue index
   * @returns its offset in the shared block
   */
  queueOffset(i: number): number {
    return i * this.stride;
  }
}
