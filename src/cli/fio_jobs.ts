/**
 * `fio --numjobs N`: N jobs side by side, each in a Worker of its own on a
 * queue of its own (handed over with `VirtioBlk.detachQueue`), as fio runs
 * jobs in processes; the main thread only starts them, adds their progress
 * up and merges their measurements.
 *
 * @module
 */

import type { VirtioBlk } from "../blk/virtio_blk.ts";
import type { VirtioBlkQueueHandle } from "../blk/queue_handle.ts";
import { type FioJob, type FioMeasurement, type FioProgress, type FioResult, mergeFioResults } from "./fio.ts";
import { LatencyHistogram, type LatencyHistogramData } from "./histogram.ts";
import { poolFor } from "./buffer_memory.ts";

/** What the main thread posts to start a job. */
export interface FioJobStart {
  /** The queue to run on. */
  handle: VirtioBlkQueueHandle;
  /** The workload (`queues` 1; no callbacks). */
  job: Omit<FioJob, "onProgress" | "signal">;
}

/** What a job posts. */
export type FioJobMessage =
  | { progress: FioProgress }
  | { result: FioResult; read: LatencyHistogramData; write: LatencyHistogramData }
  | { error: { name: string; message: string; code?: string } };

/** The outcome of `--numjobs`: the jobs together, and each. */
export interface FioJobsResult {
  /** All jobs as one (IOPS and bandwidth added up, latencies of every request). */
  aggregate: FioResult;
  /** Each job's own figures, by job (job i ran on queue i). */
  jobs: FioResult[];
}

/** A job that failed before it measured anything (its error, as the Worker saw it). */
export class FioJobError extends Error {
  /** The error's code, when it was a library error. */
  readonly code: string | undefined;
  /**
   * @param job which job
   * @param e what it posted
   */
  constructor(job: number, e: { name: string; message: string; code?: string }) {
    super(`job ${job}: ${e.message}`);
    this.name = e.name;
    this.code = e.code;
  }
}

/**
 * Runs `job` (with `queues` jobs, one per queue) in Workers: hands queues
 * 0…queues-1 of `blk` over, one per Worker, starts them together and waits
 * for all. `job.onProgress` gets the jobs' progress added up; `job.signal`
 * ends them all early.
 *
 * @param blk a device with at least `job.queues` queues, none used yet
 * @param job the workload of each job
 * @returns the aggregate and each job's figures
 * @throws {FioJobError} when a job failed before it measured anything
 */
export async function runFioJobs(blk: VirtioBlk, job: FioJob): Promise<FioJobsResult> {
  const n = job.queues;
  const { onProgress, signal, ...plain } = job;
  const handles: VirtioBlkQueueHandle[] = [];
  for (let i = 0; i < n; i++) {
    handles.push(await blk.detachQueue(i, { bufferBytes: Math.max(65536, poolFor(job.iodepth, job.bs)) }));
  }
  const workers: Worker[] = [];
  const latest: (FioProgress | undefined)[] = new Array(n).fill(undefined);
  const onStop = () => workers.forEach((w) => w.postMessage("stop"));
  signal?.addEventListener("abort", onStop);
  try {
    const outcomes = handles.map((handle, i) => {
      const w = new Worker(new URL("./fio_job_worker.ts", import.meta.url), { type: "module" });
      workers.push(w);
      return new Promise<FioMeasurement>((resolve, reject) => {
        w.onerror = (e) => {
          e.preventDefault();
          reject(new FioJobError(i, { name: "Error", message: e.message }));
        };
        w.onmessage = (e: MessageEvent<FioJobMessage>) => {
          const m = e.data;
          if ("progress" in m) {
            latest[i] = m.progress;
            // Job 0 sets the pace: one line a second, with every job's last second added up.
            if (i === 0 && onProgress) {
              const seen = latest.filter((p) => p !== undefined) as FioProgress[];
              onProgress({
                elapsed: m.progress.elapsed,
                iops: seen.reduce((s, p) => s + p.iops, 0),
                bytesPerSecond: seen.reduce((s, p) => s + p.bytesPerSecond, 0),
                ramping: m.progress.ramping,
              });
            }
          } else if ("error" in m) reject(new FioJobError(i, m.error));
          else {
            resolve({
              result: m.result,
              histograms: { read: LatencyHistogram.from(m.read), write: LatencyHistogram.from(m.write) },
            });
          }
        };
        w.postMessage({ handle, job: { ...plain, queues: 1 } } satisfies FioJobStart);
      });
    });
    const runs = await Promise.all(outcomes);
    return { aggregate: mergeFioResults(runs), jobs: runs.map((r) => r.result) };
  } finally {
    signal?.removeEventListener("abort", onStop);
    for (const w of workers) w.terminate();
  }
}
