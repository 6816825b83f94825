/**
 * A fio-like workload runner over {@linkcode VirtioBlk}: keeps `iodepth`
 * requests in flight on each of `queues` queues for `runtime` seconds and
 * measures IOPS, bandwidth and latency. The batch path allocates nothing
 * per request in steady state.
 *
 * @module
 */

import { monotonicClock } from "../../ffi/syscalls.ts";
import type { VirtioBlk } from "../blk/virtio_blk.ts";
import type { VirtioError } from "../errors.ts";
import { LatencyHistogram, type LatencySummary } from "./histogram.ts";

/** Access patterns, as fio names them. */
export type RwPattern = "read" | "write" | "randread" | "randwrite" | "randrw";

/** Every {@linkcode RwPattern}, in the order the usage text lists them. */
export const RW_PATTERNS: readonly RwPattern[] = ["read", "write", "randread", "randwrite", "randrw"];

/** A workload. */
export interface FioJob {
  /** Access pattern. */
  rw: RwPattern;
  /** Block size in bytes (a multiple of the device block size). */
  bs: number;
  /** Requests kept in flight per queue. */
  iodepth: number;
  /** Queues used, 0..queues-1 (at most the device's numQueues). */
  queues: number;
  /** Seconds to run (after `rampTime`). */
  runtime: number;
  /** Seconds of warm-up, not counted. Default 0. */
  rampTime?: number;
  /** Bytes of the device to address, from offset 0; default its capacity. */
  size?: number;
  /** Percentage of reads in `randrw`; default 50. */
  rwmixread?: number;
  /** `"batch"` (default: the queue API, no allocation per request) or `"promise"` (`blk.read`/`blk.write`). */
  api?: "batch" | "promise";
  /** Seed of the offset generator. */
  seed?: number;
  /** Called about once a second with the figures of the last interval. */
  onProgress?: (p: FioProgress) => void;
}

/** One progress report. */
export interface FioProgress {
  /** Seconds since the start (ramp included). */
  elapsed: number;
  /** IOPS over the last interval. */
  iops: number;
  /** MB/s (10^6 bytes) over the last interval. */
  mbps: number;
  /** Whether the ramp is still running. */
  ramping: boolean;
}

/** The result of a run. */
export interface FioResult {
  /** The job (without callbacks). */
  job: Omit<FioJob, "onProgress">;
  /** Requests completed in the measured time. */
  ios: number;
  /** Of which reads. */
  reads: number;
  /** Of which writes. */
  writes: number;
  /** Requests that failed. */
  errors: number;
  /** Measured seconds. */
  seconds: number;
  /** Requests per second. */
  iops: number;
  /** 10^6 bytes per second. */
  mbps: number;
  /** Completion latency, microseconds. */
  latency: LatencySummary;
}

const READ = 0, WRITE = 1;

/**
 * Checks a job against a device.
 *
 * @param blk the device
 * @param job the workload
 * @returns an error message, or undefined when the job is valid
 */
export function validateJob(blk: VirtioBlk, job: FioJob): string | undefined {
  const size = job.size ?? Number(blk.capacity);
  if (!RW_PATTERNS.includes(job.rw)) return `unknown --rw ${job.rw}`;
  if (!(Number.isInteger(job.bs) && job.bs > 0 && job.bs % blk.blockSize === 0)) {
    return `--bs must be a positive multiple of the block size ${blk.blockSize}`;
  }
  if (job.bs > blk.maxSegmentSize) return `--bs is above the device's segment limit ${blk.maxSegmentSize}`;
  if (!(Number.isInteger(job.iodepth) && job.iodepth >= 1)) return "--iodepth must be a positive integer";
  if (job.iodepth > blk.queueSize) return `--iodepth ${job.iodepth} is above --queue-size ${blk.queueSize}`;
  if (!(Number.isInteger(job.queues) && job.queues >= 1 && job.queues <= blk.numQueues)) {
    return `--queues must be from 1 to ${blk.numQueues}`;
  }
  if (!(job.runtime > 0)) return "--runtime must be positive";
  if (!(size >= job.bs && size <= Number(blk.capacity))) {
    return `--size must be from --bs to the capacity ${blk.capacity}`;
  }
  if (job.rw !== "read" && job.rw !== "randread" && blk.readOnly) return "the device is read-only";
  return undefined;
}

class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = (seed >>> 0) || 0x9e3779b9;
  }
  next(): number {
    let x = this.#s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (this.#s = x >>> 0);
  }
}

/**
 * Runs a workload.
 *
 * @param blk a connected device
 * @param job the workload
 * @returns the measurements
 */
export async function runFio(blk: VirtioBlk, job: FioJob): Promise<FioResult> {
  const problem = validateJob(blk, job);
  if (problem) throw new RangeError(problem);
  const now = monotonicClock();
  const size = job.size ?? Number(blk.capacity);
  const blocks = Math.floor(size / job.bs);
  const random = job.rw.startsWith("rand");
  const mix = job.rw === "read" || job.rw === "randread"
    ? 100
    : job.rw === "write" || job.rw === "randwrite"
    ? 0
    : job.rwmixread ?? 50;
  const rng = new Rng(job.seed ?? 0x5eed);
  let cursor = 0;
  const nextOffset = (): number => {
    if (random) return (rng.next() % blocks) * job.bs;
    const o = cursor * job.bs;
    cursor = cursor + 1 === blocks ? 0 : cursor + 1;
    return o;
  };
  const nextKind = (): number => (mix === 100 ? READ : mix === 0 ? WRITE : rng.next() % 100 < mix ? READ : WRITE);

  const hist = new LatencyHistogram();
  const slots = job.iodepth * job.queues;
  const start = new Float64Array(slots);
  const kind = new Uint8Array(slots);
  const bufs = Array.from({ length: slots }, () => {
    const b = blk.allocBuffer(job.bs);
    b.fill(0xa5);
    return b;
  });
  let counting = false; // inside the measured window
  let measured = false; // the window has started (it ends at `end`)
  let stopping = false;
  let ios = 0, reads = 0, writes = 0, errors = 0, intervalIos = 0;
  let firstError: VirtioError | undefined;

  const t0 = now();
  const rampEnd = t0 + (job.rampTime ?? 0) * 1e9;
  const end = rampEnd + job.runtime * 1e9;
  let measureStart = t0;
  let lastReport = t0;

  const complete = (slot: number, error: VirtioError | undefined): void => {
    const t = now();
    if (error) {
      errors++;
      firstError ??= error;
    } else if (counting) {
      hist.record(t - start[slot]);
      ios++;
      if (kind[slot] === READ) reads++;
      else writes++;
    }
    intervalIos++;
  };

  try {
    if (job.api === "promise") {
      const worker = async (slot: number) => {
        while (!stopping) {
          const k = kind[slot] = nextKind();
          start[slot] = now();
          try {
            if (k === READ) await blk.read(nextOffset(), bufs[slot]);
            else await blk.write(nextOffset(), bufs[slot]);
            complete(slot, undefined);
          } catch (e) {
            complete(slot, e as VirtioError);
            if (errors > 100) stopping = true;
          }
        }
      };
      const workers = Array.from({ length: slots }, (_, i) => worker(i));
      while (!stopping) {
        await new Promise((r) => setTimeout(r, 50));
        const t = now();
        if (!measured && t >= rampEnd) {
          counting = measured = true;
          measureStart = t;
        }
        if (t - lastReport >= 1e9) {
          report(t);
        }
        if (t >= end) {
          stopping = true;
          counting = false;
        }
      }
      await Promise.all(workers);
    } else {
      const queues = Array.from({ length: job.queues }, (_, i) => blk.queue<number>(i));
      const issue = (slot: number): void => {
        const q = queues[Math.floor(slot / job.iodepth)];
        const k = kind[slot] = nextKind();
        start[slot] = now();
        if (k === READ) q.read(nextOffset(), bufs[slot], slot);
        else q.write(nextOffset(), bufs[slot], slot);
      };
      const onDone = (slot: number, error: VirtioError | undefined): void => {
        complete(slot, error);
        if (!stopping) issue(slot);
      };
      for (let s = 0; s < slots; s++) issue(s);
      for (const q of queues) q.submit();
      let turns = 0;
      for (;;) {
        let n = 0;
        for (const q of queues) n += q.poll(onDone);
        if (n > 0) { for (const q of queues) q.submit(); }
        const t = now();
        if (!measured && t >= rampEnd) {
          counting = measured = true;
          measureStart = t; // nothing was recorded before: complete() records only while counting
        }
        if (!stopping && (t >= end || errors > 100)) stopping = true;
        if (t >= end) counting = false; // completions while draining are not measured
        if (stopping && queues.every((q) => q.inFlight === 0)) break;
        if (t - lastReport >= 1e9) report(t);
        if (n === 0) {
          if (blk.mode === "eventfd") {
            await (queues.length === 1 ? queues[0].wait() : Promise.race(queues.map((q) => q.wait())));
          } else if (++turns % 4096 === 0) {
            // Let timers, signals and I/O run now and then.
            await new Promise((r) => setImmediate(r));
          }
        }
      }
    }
  } finally {
    for (const b of bufs) if (b.byteLength > 0) blk.freeBuffer(b);
  }
  const seconds = (Math.min(now(), end) - measureStart) / 1e9;
  if (errors > 0 && ios === 0 && firstError) throw firstError;
  const { onProgress: _, ...plain } = job;
  return {
    job: plain,
    ios,
    reads,
    writes,
    errors,
    seconds,
    iops: ios / seconds,
    mbps: (ios * job.bs) / seconds / 1e6,
    latency: hist.summary(),
  };

  function report(t: number): void {
    const dt = (t - lastReport) / 1e9;
    job.onProgress?.({
      elapsed: (t - t0) / 1e9,
      iops: intervalIos / dt,
      mbps: (intervalIos * job.bs) / dt / 1e6,
      ramping: !counting,
    });
    intervalIos = 0;
    lastReport = t;
  }
}
