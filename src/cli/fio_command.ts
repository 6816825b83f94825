/**
 * `fio`: a fio-like workload against a device, or against a private
 * qemu-storage-daemon this command starts (and stops, also on Ctrl-C).
 *
 * @module
 */

import { onTermination } from "../process/terminate.ts";
import { QemuStorageDaemon } from "../testing/qsd.ts";
import {
  type CommandSpec,
  parseChoice,
  type ParsedFlags,
  parseInteger,
  parseQueueSize,
  parseSeconds,
  parseSize,
  UsageError,
} from "./args.ts";
import { checkPoolFits, poolFor } from "./buffer_memory.ts";
import { deviceFlags, openDevice } from "./device_flags.ts";
import { type FioJob, maxIodepth, queueSizeFor, runFio, RW_PATTERNS } from "./fio.ts";
import { runFioJobs } from "./fio_jobs.ts";
import { formatSizeFlag } from "./format.ts";
import { type FioBackend, formatFioSummary, formatProgress } from "./fio_report.ts";

/** The `fio` command. */
export const FIO: CommandSpec = {
  name: "fio",
  usage: "deno task fio [--path SOCKET] [--rw R] [--bs N] [--iodepth N] [--runtime S] [flags]",
  description:
    "Keeps --iodepth requests in flight on each of --queues queues for --ramp seconds (not measured), then\n" +
    "--runtime seconds (measured), and prints IOPS, bandwidth (MiB/s and MB/s) and latency for reads and\n" +
    "writes (latencies in microseconds). Without --path it starts a private qemu-storage-daemon (null-co:\n" +
    "stores nothing) and stops it at the end or on Ctrl-C, which prints what was measured so far (exit\n" +
    "status 130). The first failed request ends the run (exit status 1), as in fio. Write workloads\n" +
    "overwrite what the device holds in --size (default: all of it).",
  flags: [
    ...deviceFlags("poll", "a vhost-user socket (or /dev/vhost-vdpa-N); default: a private qemu-storage-daemon")
      .map((f) =>
        f.name === "queue-size"
          ? {
            ...f,
            default: "256, or 3 × --iodepth (--iodepth with --indirect always) rounded up to a power of two",
          }
          : f
      ),
    { name: "rw", kind: "string", value: "R", default: "randread", help: RW_PATTERNS.join(", ") },
    { name: "bs", kind: "string", value: "N", default: "4k", help: "bytes per request (k, M suffixes)" },
    {
      name: "iodepth",
      kind: "string",
      value: "N",
      default: "1",
      help: `requests in flight per queue: 1 to ${maxIodepth()} (${maxIodepth(true)} with --indirect always)`,
    },
    { name: "runtime", kind: "string", value: "S", default: "5", help: "seconds measured (after the ramp)" },
    { name: "ramp", kind: "string", value: "S", default: "1", help: "seconds of warm-up first, not measured" },
    { name: "size", kind: "string", value: "N", default: "the whole device", help: "bytes addressed, from 0" },
    { name: "rwmixread", kind: "string", value: "PCT", default: "50", help: "randrw: percentage of reads" },
    {
      name: "api",
      kind: "string",
      value: "A",
      default: "batch",
      help: "batch (VirtioBlkQueue, no allocation per request) or promise (blk.read/blk.write)",
    },
    {
      name: "backend",
      kind: "string",
      value: "B",
      default: "null",
      help: "private daemon only: null (null-co, 1GiB, stores nothing) or file (a 256MiB image)",
    },
    {
      name: "reconnect",
      kind: "string",
      value: "S",
      default: "off",
      help: "with --path: ride out a back-end restart of up to S seconds (requests in flight are resubmitted)",
    },
    {
      name: "numjobs",
      kind: "string",
      value: "N",
      default: "off",
      help: "N jobs side by side, each in a Worker of its own on a queue of its own (the device needs N queues)",
    },
    { name: "json", kind: "boolean", help: "print one JSON object instead of text (no progress lines)" },
  ],
  examples: [
    "deno task fio --rw randread --bs 4k --iodepth 32 --runtime 5",
    "deno task fio --rw randrw --rwmixread 70 --iodepth 16 --backend file",
    "deno task fio --path /tmp/x.sock --rw write --bs 128k --iodepth 16 --json > result.json",
    "deno task fio --numjobs 2 --iodepth 32 --rw randread --runtime 3",
  ],
};

/**
 * Parses `--iodepth`, whose limit is the most a queue's ring holds: a
 * request takes 3 of its at most 32768 entries, or one with `--indirect
 * always`.
 *
 * @param s the flag's value
 * @param oneEntryEach whether `--indirect always` was given
 * @returns the depth
 * @throws {UsageError} naming the limit and why
 */
function parseIodepth(s: string | true, oneEntryEach: boolean): number {
  const n = typeof s === "string" && /^\d+$/.test(s.trim()) ? Number(s) : NaN;
  const max = maxIodepth(oneEntryEach);
  if (Number.isSafeInteger(n) && n >= 1 && n <= max) return n;
  const why = oneEntryEach
    ? `a queue's ring has at most ${max} entries, and with --indirect always a request takes one`
    : `a queue's ring has at most ${maxIodepth(true)} entries and a request takes 3 (header, data, status); ` +
      `with --indirect always a request takes one, and --iodepth may be up to ${maxIodepth(true)}`;
  throw new UsageError(`--iodepth must be a whole number from 1 to ${max}, got ${JSON.stringify(s)}: ${why}`);
}

/**
 * Runs `fio`.
 *
 * @param flags the parsed flags
 */
export async function fio(flags: ParsedFlags): Promise<void> {
  const external = flags.path !== undefined || flags.device !== undefined ||
    (flags.transport !== undefined && flags.transport !== "vhost-user");
  if (external && flags.backend !== undefined) {
    throw new UsageError("--backend chooses the private daemon's storage; it does not apply with --path or --device");
  }
  const backend = parseChoice(flags.backend ?? "null", "--backend", ["null", "file"] as const);
  const oneEntryEach = flags.indirect === "always";
  const iodepth = parseIodepth(flags.iodepth ?? "1", oneEntryEach);
  const numjobs = flags.numjobs === undefined ? undefined : parseInteger(flags.numjobs, "--numjobs", 1, 256);
  if (numjobs !== undefined && flags.queues !== undefined) {
    throw new UsageError("--numjobs runs each job on a queue of its own: leave --queues out (it is --numjobs then)");
  }
  if (numjobs !== undefined && flags.reconnect !== undefined) {
    throw new UsageError("--numjobs and --reconnect do not go together: a queue handed to a Worker is not reconnected");
  }
  const queues = numjobs ?? (flags.queues === undefined ? 1 : parseInteger(flags.queues, "--queues", 1, 65535));
  const job: FioJob = {
    rw: parseChoice(flags.rw ?? "randread", "--rw", RW_PATTERNS),
    bs: parseSize(flags.bs ?? "4k", "--bs"),
    iodepth,
    queues,
    runtime: parseSeconds(flags.runtime ?? "5", "--runtime", false),
    rampTime: parseSeconds(flags.ramp ?? "1", "--ramp", true),
    rwmixread: parseInteger(flags.rwmixread ?? "50", "--rwmixread", 0, 100),
    size: flags.size === undefined ? undefined : parseSize(flags.size, "--size"),
    api: parseChoice(flags.api ?? "batch", "--api", ["batch", "promise"] as const),
  };
  if (job.bs === 0) throw new UsageError("--bs must be at least one block");
  const queueSize = flags["queue-size"] === undefined
    ? queueSizeFor(iodepth, oneEntryEach)
    : parseQueueSize(flags["queue-size"]);
  // Every request in flight has a buffer of its own: the pool holds them all
  // (with --numjobs each job's Worker gets that much memory of its own).
  const bufferPoolSize = poolFor(iodepth * queues, job.bs);
  checkPoolFits(
    bufferPoolSize,
    `--bs ${formatSizeFlag(job.bs)} × --iodepth ${iodepth} × --queues ${queues}`,
    "--bs, --iodepth or --queues",
  );
  const reconnectSeconds = flags.reconnect === undefined
    ? undefined
    : parseSeconds(flags.reconnect, "--reconnect", false);
  if (reconnectSeconds !== undefined && flags.path === undefined) {
    throw new UsageError("--reconnect needs --path: a private daemon is never restarted");
  }

  let daemon: QemuStorageDaemon | undefined;
  let described: FioBackend;
  if (external) {
    described = { kind: "external", description: String(flags.path ?? flags.device), storesData: true };
  } else {
    daemon = await QemuStorageDaemon.start({
      driver: backend === "null" ? "null-co" : "file",
      size: job.size ?? (backend === "null" ? 2 ** 30 : 256 * 2 ** 20),
      numQueues: queues,
    });
    described = backend === "null"
      ? { kind: "private", description: "private qemu-storage-daemon, null-co (1GiB)", storesData: false }
      : {
        kind: "private",
        description: `private qemu-storage-daemon, file image ${daemon.imagePath}`,
        storesData: true,
      };
  }
  try {
    // With --numjobs the jobs sleep on interrupts unless told otherwise: N polling threads on a machine
    // with no spare core for each (and for the back-end) take the back-end's CPU and lose throughput.
    await using blk = await openDevice(flags, numjobs === undefined ? "poll" : "eventfd", {
      // With --numjobs, the queues asked for are the jobs'.
      ...(numjobs === undefined ? {} : { queuesFlag: "--numjobs" }),
      path: daemon?.socketPath,
      queueSize,
      reconnectSeconds,
      // With --numjobs the Workers get buffer memory of their own; this side keeps the default.
      bufferPoolSize: numjobs === undefined ? bufferPoolSize : undefined,
      numQueues: queues,
    });
    job.reconnect = reconnectSeconds !== undefined;
    const tty = Deno.stderr.isTerminal();
    const encoder = new TextEncoder();
    const total = job.runtime + (job.rampTime ?? 0);
    if (!flags.json) {
      job.onProgress = (p) => {
        const line = formatProgress(p, total);
        if (tty) Deno.stderr.writeSync(encoder.encode(`\r${line}\x1b[K`));
        else console.error(line);
      };
    }
    // Ctrl-C or SIGTERM: stop issuing, let what is in flight finish, print
    // what was measured; the daemon's own hook then stops it.
    const abort = new AbortController();
    job.signal = abort.signal;
    const printed = Promise.withResolvers<void>();
    using _hook = onTermination(async () => {
      abort.abort();
      await printed.promise;
    });
    try {
      const jobs = numjobs === undefined ? undefined : await runFioJobs(blk, job);
      const result = jobs?.aggregate ?? await runFio(blk, job);
      if (tty && !flags.json) Deno.stderr.writeSync(encoder.encode("\r\x1b[K"));
      if (flags.json) {
        const more = jobs ? { numjobs, jobs: jobs.jobs } : {};
        console.log(
          JSON.stringify({ ...result, ...more, mode: blk.mode, queueSize: blk.queueSize, backend: described }, null, 2),
        );
      } else {
        console.log(formatFioSummary(result, blk.mode, described, jobs?.jobs));
      }
      if (result.errors > 0 && !result.interrupted) {
        throw new Error(`the run ended at its first error, after ${result.seconds.toFixed(2)} s: ${result.firstError}`);
      }
    } finally {
      printed.resolve();
    }
  } finally {
    await daemon?.stop();
  }
}
