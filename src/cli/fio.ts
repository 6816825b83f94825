/**
 * A fio-like workload runner over {@linkcode VirtioBlk}: keeps `iodepth`
 * requests in flight on each of `queues` queues for `runtime` seconds (after
 * a warm-up of `rampTime`) and measures IOPS, bandwidth and latency, for
 * reads and writes apart. The batch path allocates nothing per request in
 * steady state. An abort signal ends the run early with what was measured.
 *
 * @module
 */

import { monotonicClock } from "../os/syscalls.ts";
import { MAX_QUEUE_SIZE } from "../virtqueue/defs.ts";
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
  /** Seconds to measure (after `rampTime`). */
  runtime: number;
  /** Seconds of warm-up before measuring. Default 0. */
  rampTime?: number;
  /** Bytes of the device to address, from offset 0; default its capacity. */
  size?: number;
  /** Percentage of reads in `randrw`; default 50. */
  rwmixread?: number;
  /** `"batch"` (default: the queue API, no allocation per request) or `"promise"` (`blk.read`/`blk.write`). */
  api?: "batch" | "promise";
  /** Seed of the offset generator. */
  seed?: number;
  /** Called once a second with the figures of the last second (not while draining). */
  onProgress?: (p: FioProgress) => void;
  /** Ends the run early: requests in flight finish, nothing after the abort is measured. */
  signal?: AbortSignal;
  /** The device was connected with `reconnect`: report the restarts it rode out. */
  reconnect?: boolean;
}

/** One progress report. */
export interface FioProgress {
  /** Seconds since the start (ramp included). */
  elapsed: number;
  /** IOPS over the last second. */
  iops: number;
  /** Bytes per second over the last second. */
  bytesPerSecond: number;
  /** Whether this second was part of the ramp (not measured). */
  ramping: boolean;
}

/** Figures of one direction (or both) over the measured time. */
export interface FioStats {
  /** Requests completed. */
  ios: number;
  /** Bytes transferred. */
  bytes: number;
  /** Requests per second. */
  iops: number;
  /** Bytes per second. */
  bytesPerSecond: number;
  /** Completion latency in microseconds (min, max, mean, stdev, percentiles). */
  latencyUs: LatencySummary;
}

/** The result of a run. */
export interface FioResult {
  /** The job (without callbacks). */
  job: Omit<FioJob, "onProgress" | "signal">;
  /** Reads. */
  read: FioStats;
  /** Writes. */
  write: FioStats;
  /** Reads and writes together. */
  total: FioStats;
  /** Requests that failed before the run ended (the first error ends it, as in fio). */
  errors: number;
  /** The first failure's message, when there was one. */
  firstError?: string;
  /** Measured seconds (0 when stopped during the ramp). */
  seconds: number;
  /** Whether the run was stopped early by its signal. */
  interrupted: boolean;
  /** With `reconnect`: the back-end restarts the run rode out. */
  reconnects?: { count: number; longestGapMs: number; resubmitted: number };
}

const READ = 0, WRITE = 1;

function reconnectSummary(blk: VirtioBlk): NonNullable<FioResult["reconnects"]> {
  const s = blk.connectionStats();
  return { count: s.reconnects, longestGapMs: Math.round(s.longestDowntimeMs), resubmitted: s.resubmitted };
}

function nextPowerOfTwo(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/**
 * The queue size that holds `iodepth` plain requests in flight: 3 ring
 * entries each (header, data, status), or one each when every request goes
 * through an indirect table (`--indirect always`); at least 256.
 *
 * @param iodepth requests per queue
 * @param oneEntryEach whether each request takes one entry (indirect always)
 * @returns a power of two
 */
export function queueSizeFor(iodepth: number, oneEntryEach = false): number {
  return Math.max(256, nextPowerOfTwo(oneEntryEach ? iodepth : 3 * iodepth));
}

/**
 * The most requests a queue can keep in flight: as many as the largest
 * ring (32768 entries) holds, 3 entries each, or one each with indirect
 * tables for every request.
 *
 * @param oneEntryEach whether each request takes one entry (indirect always)
 * @returns requests
 */
export function maxIodepth(oneEntryEach = false): number {
  return oneEntryEach ? MAX_QUEUE_SIZE : Math.floor(MAX_QUEUE_SIZE / 3);
}

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
  if (job.bs > Number(blk.capacity)) return `--bs ${job.bs} is larger than the device (${blk.capacity} bytes)`;
  if (job.bs > blk.maxSegmentSize) return `--bs is above the device's segment limit ${blk.maxSegmentSize}`;
  if (!(Number.isInteger(job.iodepth) && job.iodepth >= 1)) return "--iodepth must be a positive integer";
  const holds = blk.queue(0).maxInFlight(1);
  if (job.iodepth > holds) {
    const fits = queueSizeFor(job.iodepth);
    return `--iodepth ${job.iodepth} is more than a queue holds: a ring of ${blk.queueSize} entries takes ` +
      `${holds} requests of 3 descriptors (header, data, status)${
        blk.features.indirect ? "" : " and the device offers no indirect descriptors"
      }. Use --queue-size ${fits} (or leave --queue-size out to size it from --iodepth)` +
      `${blk.features.indirect ? ", --indirect always (one ring entry per request)" : ""}, or --iodepth ${holds}`;
  }
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

function stats(hist: LatencyHistogram, bs: number, seconds: number): FioStats {
  const latency = hist.summary();
  const bytes = latency.count * bs;
  return {
    ios: latency.count,
    bytes,
    iops: seconds > 0 ? latency.count / seconds : 0,
    bytesPerSecond: seconds > 0 ? bytes / seconds : 0,
    latencyUs: latency,
  };
}

/**
 * Runs a workload.
 *
 * @param blk a connected device
 * @param job the workload
 * @returns the measurements
 * @throws {RangeError} for a job the device cannot run (see {@linkcode validateJob})
 */
export async function runFio(blk: VirtioBlk, job: FioJob): Promise<FioResult> {
  return (await measureFio(blk, job)).result;
}

/** A run's result with its latency histograms, to merge with other runs' (see {@linkcode mergeFioResults}). */
export interface FioMeasurement {
  /** The result. */
  result: FioResult;
  /** Latencies of reads and of writes. */
  histograms: { read: LatencyHistogram; write: LatencyHistogram };
}

/**
 * Runs a workload, keeping its histograms.
 *
 * @param blk a connected device
 * @param job the workload
 * @returns the measurements and histograms
 * @throws {RangeError} for a job the device cannot run (see {@linkcode validateJob})
 */
export async function measureFio(blk: VirtioBlk, job: FioJob): Promise<FioMeasurement> {
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

  const hists = [new LatencyHistogram(), new LatencyHistogram()];
  const slots = job.iodepth * job.queues;
  const start = new Float64Array(slots);
  const kind = new Uint8Array(slots);
  const bufs = Array.from({ length: slots }, () => {
    const b = blk.allocBuffer(job.bs);
    b.fill(0xa5);
    return b;
  });
  let counting = false; // inside the measured window
  let stopping = false;
  let errors = 0, intervalIos = 0;
  let firstError: VirtioError | undefined;

  const t0 = now();
  const rampEnd = t0 + (job.rampTime ?? 0) * 1e9;
  let end = Infinity; // set when the measured window opens; moves up when the run is aborted
  let measureStart = -1; // set when the measured window opens
  let nextReport = t0 + 1e9;
  let lastReport = t0;

  /** Ends the run at `t`: nothing is issued or measured after it; what is in flight drains. */
  const stop = (t: number): void => {
    if (!stopping) {
      stopping = true;
      if (t < end) end = t;
    }
    counting = false;
  };

  const complete = (slot: number, error: VirtioError | undefined): void => {
    if (error) {
      // As fio by default: the first error ends the run. Failures while
      // draining (after the end, or after an abort, when a Ctrl-C may have
      // reached the device's daemon too) are not the run's.
      if (!stopping) {
        errors++;
        firstError ??= error;
        stop(now());
      }
    } else if (counting) {
      hists[kind[slot]].record(now() - start[slot]);
    }
    intervalIos++;
  };

  /** Opens and closes the measured window, reports progress, notices an abort. */
  const tick = (t: number): void => {
    if (job.signal?.aborted) stop(t);
    if (measureStart < 0 && t >= rampEnd && !stopping) {
      counting = true;
      measureStart = t;
      end = t + job.runtime * 1e9;
    }
    if (t >= end) stop(t); // completions while draining are not measured
    if (!stopping && t >= nextReport) {
      const dt = (t - lastReport) / 1e9;
      job.onProgress?.({
        elapsed: (nextReport - t0) / 1e9,
        iops: intervalIos / dt,
        bytesPerSecond: (intervalIos * job.bs) / dt,
        ramping: nextReport <= rampEnd,
      });
      intervalIos = 0;
      lastReport = t;
      while (nextReport <= t) nextReport += 1e9;
    }
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
          }
        }
      };
      const workers = Array.from({ length: slots }, (_, i) => worker(i));
      while (!stopping) {
        await new Promise((r) => setTimeout(r, 20));
        tick(now());
      }
      await Promise.all(workers);
    } else {
      const queues = Array.from({ length: job.queues }, (_, i) => blk.queue<number>(i));
      // With reconnect: while the back-end is away the batch API refuses new
      // requests (ERR_RECONNECTING); their slots rest until it is back.
      const parked: number[] = [];
      let back = Promise.withResolvers<void>();
      const onBack = () => back.resolve();
      blk.addEventListener("reconnect", onBack);
      const issue = (slot: number): void => {
        const q = queues[Math.floor(slot / job.iodepth)];
        const k = kind[slot] = nextKind();
        start[slot] = now();
        if (k === READ) q.read(nextOffset(), bufs[slot], slot);
        else q.write(nextOffset(), bufs[slot], slot);
      };
      // A failed queue refuses new requests at once: count that as the
      // request's failure (its slot then rests) rather than let it escape.
      const reissue = (slot: number): void => {
        try {
          issue(slot);
        } catch (e) {
          if ((e as VirtioError).code === "ERR_RECONNECTING") parked.push(slot);
          else complete(slot, e as VirtioError);
        }
      };
      const onDone = (slot: number, error: VirtioError | undefined): void => {
        complete(slot, error);
        if (!stopping) reissue(slot);
      };
      for (let s = 0; s < slots; s++) reissue(s);
      for (const q of queues) q.submit();
      let turns = 0;
      try {
        for (;;) {
          if (parked.length > 0 && (stopping || blk.connectionStats().state !== "reconnecting")) {
            const rest = parked.splice(0);
            if (!stopping) { for (const s of rest) reissue(s); }
            for (const q of queues) q.submit();
          }
          let n = 0;
          for (const q of queues) n += q.poll(onDone);
          if (n > 0) { for (const q of queues) q.submit(); }
          tick(now());
          if (stopping && parked.length === 0 && queues.every((q) => q.inFlight === 0)) break;
          if (n !== 0) continue;
          if (parked.length > 0) {
            // Wait for the back-end (ticking on: progress lines, the end of the run, a Ctrl-C).
            await Promise.race([back.promise, new Promise((r) => setTimeout(r, 20))]);
            back = Promise.withResolvers<void>();
          } else if (blk.mode === "eventfd") {
            await (queues.length === 1 ? queues[0].wait() : Promise.race(queues.map((q) => q.wait())));
          } else if (++turns % 4096 === 0) {
            // Let timers, signals and I/O run now and then.
            await new Promise((r) => setImmediate(r));
          }
        }
      } finally {
        blk.removeEventListener("reconnect", onBack);
      }
    }
  } finally {
    for (const b of bufs) if (b.byteLength > 0) blk.freeBuffer(b);
  }
  const seconds = measureStart < 0 ? 0 : (end - measureStart) / 1e9;
  const [read, write] = hists.map((h) => stats(h, job.bs, seconds));
  const interrupted = job.signal?.aborted ?? false;
  if (errors > 0 && read.ios + write.ios === 0 && firstError && !interrupted) throw firstError;
  const total = new LatencyHistogram();
  total.merge(hists[READ]);
  total.merge(hists[WRITE]);
  const { onProgress: _p, signal: _s, ...plain } = job;
  const result: FioResult = {
    job: plain,
    read,
    write,
    total: stats(total, job.bs, seconds),
    errors,
    ...(firstError ? { firstError: firstError.message } : {}),
    seconds,
    interrupted,
    ...(job.reconnect ? { reconnects: reconnectSummary(blk) } : {}),
  };
  return { result, histograms: { read: hists[READ], write: hists[WRITE] } };
}

/**
 * The figures of several jobs run side by side (`--numjobs`), as one: the
 * latencies of all their requests, and IOPS and bandwidth added up (each
 * job's over its own measured window, which start and end within
 * milliseconds of each other).
 *
 * @param runs the jobs' measurements
 * @returns the aggregate (its job: the first's, with `queues` the number of jobs)
 */
export function mergeFioResults(runs: readonly FioMeasurement[]): FioResult {
  const first = runs[0].result;
  const merged = { read: new LatencyHistogram(), write: new LatencyHistogram(), total: new LatencyHistogram() };
  for (const r of runs) {
    merged.read.merge(r.histograms.read);
    merged.write.merge(r.histograms.write);
    merged.total.merge(r.histograms.read);
    merged.total.merge(r.histograms.write);
  }
  const sum = (which: "read" | "write" | "total", h: LatencyHistogram): FioStats => {
    const latency = h.summary();
    return {
      ios: latency.count,
      bytes: runs.reduce((n, r) => n + r.result[which].bytes, 0),
      iops: runs.reduce((n, r) => n + r.result[which].iops, 0),
      bytesPerSecond: runs.reduce((n, r) => n + r.result[which].bytesPerSecond, 0),
      latencyUs: latency,
    };
  };
  const failed = runs.find((r) => r.result.firstError !== undefined);
  return {
    job: { ...first.job, queues: runs.length },
    read: sum("read", merged.read),
    write: sum("write", merged.write),
    total: sum("total", merged.total),
    errors: runs.reduce((n, r) => n + r.result.errors, 0),
    ...(failed ? { firstError: failed.result.firstError } : {}),
    seconds: Math.max(...runs.map((r) => r.result.seconds)),
    interrupted: runs.some((r) => r.result.interrupted),
  };
}
