/**
 * The text summary and progress line of `fio`, in fio's vocabulary.
 *
 * @module
 */

import type { FioProgress, FioResult, FioStats } from "./fio.ts";
import { formatBandwidth, formatBytes, formatCount, formatSizeFlag } from "./format.ts";

/** What the run talked to, as the report states it. */
export interface FioBackend {
  /** `"private"`: a qemu-storage-daemon this command started; `"external"`: one given with --path/--device. */
  kind: "private" | "external";
  /** For humans: e.g. `qemu-storage-daemon, null-co` or the socket path. */
  description: string;
  /** Whether the back-end keeps what is written (false for null-co). */
  storesData: boolean;
}

function direction(name: string, s: FioStats, seconds: number): string[] {
  const l = s.latencyUs;
  const f = (v: number) => v.toFixed(2);
  return [
    `  ${name}: IOPS=${formatCount(s.iops)}, BW=${formatBandwidth(s.bytesPerSecond)}(${formatBytes(s.bytes)}/${
      Math.round(seconds * 1000)
    }msec)`,
    `    lat (usec): min=${f(l.min)}, max=${f(l.max)}, avg=${f(l.mean)}, stdev=${f(l.stdev)}`,
    `    lat percentiles (usec): 50th=${f(l.p50)}, 99th=${f(l.p99)}, 99.9th=${f(l.p999)}`,
  ];
}

/**
 * The summary of a run, as text.
 *
 * @param r the result (with `--numjobs`, the jobs together)
 * @param mode the completion mode
 * @param backend what was measured
 * @param jobs with `--numjobs`: each job's result, listed after the total
 * @returns the lines
 */
export function formatFioSummary(r: FioResult, mode: string, backend: FioBackend, jobs?: readonly FioResult[]): string {
  const j = r.job;
  const ramp = j.rampTime ? ` (after ${j.rampTime}s ramp)` : "";
  const where = jobs ? `numjobs=${jobs.length} (a Worker and a queue each)` : `queues=${j.queues}`;
  const lines = [
    `${j.rw}: bs=${formatSizeFlag(j.bs)}, iodepth=${j.iodepth} per queue, ` +
    `${where}, mode=${mode}, api=${j.api ?? "batch"}, runtime=${j.runtime}s${ramp}`,
    `  back-end: ${backend.description}`,
  ];
  if (!backend.storesData) {
    lines.push(
      "  note: this back-end stores nothing (reads return zeroes, writes are dropped): the figures measure the",
      "        driver and the vhost-user path, not storage. --backend file exports a file image instead.",
    );
  }
  if (r.interrupted) {
    lines.push(
      r.seconds > 0
        ? `  interrupted: the figures cover the ${r.seconds.toFixed(2)} s measured before the signal`
        : "  interrupted during the ramp: nothing was measured",
    );
  }
  if (r.read.ios > 0 || j.rw.includes("read")) lines.push(...direction("read", r.read, r.seconds));
  if (r.write.ios > 0 || j.rw.includes("write") || j.rw === "randrw") {
    lines.push(...direction("write", r.write, r.seconds));
  }
  lines.push(
    `  total: ${formatCount(r.total.ios)} I/Os, ${formatBytes(r.total.bytes)} in ${r.seconds.toFixed(2)} s; ` +
      `errors=${r.errors}${r.firstError ? ` (first: ${r.firstError})` : ""}`,
  );
  jobs?.forEach((job, i) => {
    const l = job.total.latencyUs;
    lines.push(
      `  job ${i} (queue ${i}): IOPS=${formatCount(job.total.iops)}, BW=${
        formatBandwidth(job.total.bytesPerSecond)
      }, ` +
        `lat avg=${l.mean.toFixed(2)} usec, 99th=${l.p99.toFixed(2)} usec; errors=${job.errors}`,
    );
  });
  if (r.reconnects) {
    const c = r.reconnects;
    lines.push(
      c.count === 0
        ? "  reconnects: none (the back-end stayed up)"
        : `  reconnects: ${c.count} (longest gap ${c.longestGapMs} ms; ${c.resubmitted} requests resubmitted, none lost)`,
    );
  }
  return lines.join("\n");
}

/**
 * One progress line.
 *
 * @param p the progress report
 * @param total seconds the run lasts (ramp included)
 * @returns e.g. `[  3s/6s] 86.2k IOPS, 337MiB/s (353MB/s)`
 */
export function formatProgress(p: FioProgress, total: number): string {
  return `[${p.elapsed.toFixed(0).padStart(3)}s/${total}s] ${formatCount(p.iops)} IOPS, ${
    formatBandwidth(p.bytesPerSecond)
  }${p.ramping ? " (ramp, not measured)" : ""}`;
}
