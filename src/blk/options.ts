/**
 * The options of `VirtioBlk.connect`: where the device is (a union keyed on
 * `transport`, from the transport layer) and how to drive it, with their
 * defaults and the checks that refuse bad values before anything is opened.
 *
 * @module
 */

import { InvalidArgumentError } from "../errors.ts";
import type { ConnectTarget } from "../transport/connect.ts";
import { MAX_QUEUE_SIZE } from "../virtqueue/defs.ts";
import type { CompletionMode } from "./completion_driver.ts";

/** How to drive the device (everything but where it is). */
export interface VirtioBlkOptions {
  /** Request queues to set up; default 1 (at most what the device offers). */
  numQueues?: number;
  /** Entries per queue: a power of two from 4 to 32768; default 256. */
  queueSize?: number;
  /** How completions are noticed; default `"eventfd"`. */
  mode?: CompletionMode;
  /**
   * eventfd mode: keep polling this many microseconds before sleeping; default 50.
   * Waking a sleeping thread costs ~15–25 µs on a VM, so a short spin both cuts
   * latency and saves CPU per request when the device answers quickly; 0 sleeps
   * at once. Nothing spins while no request is in flight.
   */
  spinMicros?: number;
  /** Bytes of device-reachable memory for `allocBuffer` and bounce buffers; default 64 MiB. */
  bufferPoolSize?: number;
  /** Control-path reply timeout (vhost-user messages); default 10000 ms. */
  requestTimeoutMs?: number;
  /** How long `close()` waits for requests in flight; default 5000 ms. */
  closeTimeoutMs?: number;
  /**
   * Fail a queue with `TimeoutError` when the device completes nothing for
   * this long while requests are in flight (a stalled device). Its requests
   * reject, later ones fail fast. Default: no limit (a request to a slow
   * device is never abandoned, as with libblkio).
   */
  stallTimeoutMs?: number;
  /**
   * Ring format: `"split"` (default) or `"packed"` (VIRTIO_F_RING_PACKED; the
   * connect fails with `FeatureNegotiationError` when the device does not
   * offer it).
   */
  ring?: "split" | "packed";
  /** Optional ring features; each is used only when the device offers it too. */
  features?: {
    /** VIRTIO_F_EVENT_IDX (default true). */
    eventIdx?: boolean;
    /** VIRTIO_F_INDIRECT_DESC (default true). */
    indirect?: boolean;
  };
  /**
   * With indirect descriptors: chains of at least this many descriptors go
   * through a table (shorter ones only when the ring lacks room). Default 4,
   * so a plain read or write (header, data, status) stays direct.
   */
  indirectThreshold?: number;
  /**
   * Most data buffers per request, below what the device's seg_max and the
   * ring allow: for a back-end that offers no seg_max but drops requests
   * above a limit of its own (DPDK's vhost_blk example: 126). Requests with
   * more are refused before they reach the device.
   */
  maxSegments?: number;
  /**
   * Fail a queue (`used-len-too-large`, `short-read`) when the device reports
   * a used length above what a request let it write, or a successful read
   * shorter than its data. Default false: such lengths are clamped or
   * accepted (the status byte decides) and counted in `queue.stats()`.
   * virtio-blk needs no used length and the driver never uses it to touch
   * memory, while real devices get it wrong (DPDK's vhost_blk example
   * reports the data length for writes).
   */
  strictUsedLength?: boolean;
  /**
   * vhost-user by path: ride out a back-end restart (off by default, as
   * QEMU's `reconnect=`). When the back-end hangs up, requests in flight are
   * kept, the driver connects again (every `backoffMs`, doubling up to 1 s,
   * until `timeoutMs`), checks that the device is the same, and resubmits
   * them in submission order; `"disconnect"` and `"reconnect"` events say
   * when. See the README's "Back-end restarts" for what is guaranteed.
   */
  reconnect?: ReconnectOptions;
}

/** How to reconnect after a back-end restart. */
export interface ReconnectOptions {
  /** Give up (everything pending rejects with `ConnectionLostError`) after this long without a back-end. */
  timeoutMs: number;
  /** Wait between attempts, doubling up to 1000 ms; default 50 ms. */
  backoffMs?: number;
  /**
   * Accept a back-end that comes back with a smaller capacity (requests past
   * the new end then fail); default false: that is an `IncompatibleDeviceError`.
   */
  allowShrink?: boolean;
}

/** Options of `VirtioBlk.connect`: where the device is, and how to drive it. */
export type VirtioBlkConnectOptions = ConnectTarget & VirtioBlkOptions;

/** The options with their defaults filled in, checked. */
export interface ResolvedOptions {
  readonly numQueues: number;
  readonly queueSize: number;
  readonly mode: CompletionMode;
  readonly spinMicros: number;
  readonly bufferPoolSize: number;
  readonly requestTimeoutMs: number | undefined;
  readonly closeTimeoutMs: number;
  readonly stallTimeoutMs: number | undefined;
  readonly ring: "split" | "packed";
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  readonly indirectThreshold: number | undefined;
  readonly maxSegments: number | undefined;
  readonly strictUsedLength: boolean;
  readonly reconnect: Required<ReconnectOptions> | undefined;
}

/** The smallest ring a request fits in: header, data and status descriptors (a power of two). */
const MIN_QUEUE_SIZE = 4;
const DEFAULT_POOL = 64 << 20;
/** Default eventfd-mode spin (see bench/RESULTS.md for the sweep behind it). */
const DEFAULT_SPIN_MICROS = 50;

function positiveInt(name: string, v: number | undefined, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (!Number.isInteger(v) || v < 1 || v > max) {
    throw new InvalidArgumentError(`${name} must be an integer from 1 to ${max}, got ${v}`);
  }
  return v;
}

/**
 * Checks the options and fills in the defaults.
 *
 * @param options as given to `VirtioBlk.connect`
 * @returns the resolved options
 * @throws {InvalidArgumentError} for a bad value
 */
export function resolveOptions(options: VirtioBlkOptions): ResolvedOptions {
  if (typeof options !== "object" || options === null) {
    throw new InvalidArgumentError("connect needs an options object");
  }
  const queueSize = positiveInt("queueSize", options.queueSize, MAX_QUEUE_SIZE) ?? 256;
  if (queueSize < MIN_QUEUE_SIZE || (queueSize & (queueSize - 1)) !== 0) {
    throw new InvalidArgumentError(
      `queueSize must be a power of two from ${MIN_QUEUE_SIZE} to ${MAX_QUEUE_SIZE} ` +
        `(a read or write is a header, data and a status), got ${queueSize}`,
    );
  }
  const ring = options.ring ?? "split";
  if (ring !== "split" && ring !== "packed") {
    throw new InvalidArgumentError(`ring must be "split" or "packed", got ${JSON.stringify(ring)}`);
  }
  const mode = options.mode ?? "eventfd";
  if (mode !== "poll" && mode !== "eventfd") {
    throw new InvalidArgumentError(`mode must be "poll" or "eventfd", got ${JSON.stringify(mode)}`);
  }
  const spinMicros = options.spinMicros ?? DEFAULT_SPIN_MICROS;
  if (!(spinMicros >= 0 && spinMicros <= 1e6)) {
    throw new InvalidArgumentError(`spinMicros must be from 0 to 1000000, got ${spinMicros}`);
  }
  let reconnect: Required<ReconnectOptions> | undefined;
  if (options.reconnect !== undefined) {
    const r = options.reconnect;
    const target = options as { transport?: unknown; path?: unknown };
    if (target.transport !== "vhost-user" || typeof target.path !== "string") {
      throw new InvalidArgumentError("reconnect needs a vhost-user back-end given by its socket path");
    }
    if (!(typeof r === "object" && r !== null && Number.isFinite(r.timeoutMs) && r.timeoutMs > 0)) {
      throw new InvalidArgumentError(`reconnect.timeoutMs must be a positive number of milliseconds`);
    }
    const backoffMs = r.backoffMs ?? 50;
    if (!(Number.isFinite(backoffMs) && backoffMs >= 1 && backoffMs <= 60_000)) {
      throw new InvalidArgumentError(`reconnect.backoffMs must be from 1 to 60000, got ${backoffMs}`);
    }
    reconnect = { timeoutMs: r.timeoutMs, backoffMs, allowShrink: r.allowShrink ?? false };
  }
  return {
    reconnect,
    numQueues: positiveInt("numQueues", options.numQueues, 65535) ?? 1,
    queueSize,
    mode,
    spinMicros,
    bufferPoolSize: positiveInt("bufferPoolSize", options.bufferPoolSize, 2 ** 40) ?? DEFAULT_POOL,
    requestTimeoutMs: options.requestTimeoutMs,
    closeTimeoutMs: positiveInt("closeTimeoutMs", options.closeTimeoutMs, 2 ** 31) ?? 5000,
    stallTimeoutMs: positiveInt("stallTimeoutMs", options.stallTimeoutMs, 2 ** 31),
    ring,
    eventIdx: options.features?.eventIdx ?? true,
    indirect: options.features?.indirect ?? true,
    indirectThreshold: positiveInt("indirectThreshold", options.indirectThreshold, MAX_QUEUE_SIZE),
    maxSegments: positiveInt("maxSegments", options.maxSegments, MAX_QUEUE_SIZE),
    strictUsedLength: options.strictUsedLength ?? false,
  };
}
