// Queues in Workers (`fio --numjobs`): 4 KiB random reads at QD32 with 1, 2
// and 4 jobs (a Worker and a queue each) in eventfd mode (fio --numjobs's
// default) and 1 and 2 in poll mode, against a null-co qemu-storage-daemon
// with its export in the main loop and in an iothread, each beside a job on
// the main thread; then QD1 latency of a queue driven in a Worker against one
// driven on the main thread (poll and eventfd mode).
// Rows are repeated `rounds` times in alternating order; each figure is the
// median, with the range. Markdown on stdout:
//   deno run -A bench/workers_bench.ts [seconds per run, default 1] [rounds, default 1]
// (`deno task bench` runs it with the defaults; bench/RESULTS.md has `3 3`.)
import { VirtioBlk } from "../mod.ts";
import { QemuStorageDaemon } from "../testing.ts";
import { type FioJob, runFio } from "../src/cli/fio.ts";
import { runFioJobs } from "../src/cli/fio_jobs.ts";

const seconds = Number(Deno.args[0] ?? 1);
const rounds = Number(Deno.args[1] ?? 1);

interface Row {
  name: string;
  run: () => Promise<{ kiops: number; meanUs: number }>;
}

const daemons: QemuStorageDaemon[] = [];
async function daemon(iothread: boolean): Promise<QemuStorageDaemon> {
  const d = await QemuStorageDaemon.start({ driver: "null-co", size: 1 << 30, numQueues: 4, iothread });
  daemons.push(d);
  return d;
}

function job(iodepth: number, queues: number): FioJob {
  return { rw: "randread", bs: 4096, iodepth, queues, runtime: seconds, rampTime: 0.5, api: "batch" };
}

/** A device on `d` with `queues` queues, in `mode`, closed after `fn`. */
async function withDevice<T>(
  d: QemuStorageDaemon,
  queues: number,
  mode: "poll" | "eventfd",
  fn: (blk: VirtioBlk) => Promise<T>,
): Promise<T> {
  await using blk = await VirtioBlk.connect({
    transport: "vhost-user",
    path: d.socketPath,
    numQueues: queues,
    mode,
    queueSize: 256,
  });
  return await fn(blk);
}

const rows: Row[] = [];
/** QD32 random reads: a job on the main thread (n = 0) or n jobs in Workers. */
function qd32(d: QemuStorageDaemon, where: string, mode: "poll" | "eventfd", n: number): Row {
  return {
    name: `QD32 ${mode}, ${n === 0 ? "main thread (no Worker)" : `${n} job${n > 1 ? "s" : ""} (Workers)`}, ${where}`,
    run: () =>
      withDevice(d, Math.max(1, n), mode, async (blk) => {
        const r = n === 0 ? await runFio(blk, job(32, 1)) : (await runFioJobs(blk, job(32, n))).aggregate;
        return { kiops: r.total.iops / 1000, meanUs: r.total.latencyUs.mean };
      }),
  };
}
for (const iothread of [false, true]) {
  const d = await daemon(iothread);
  const where = iothread ? "export in an iothread" : "export in the main loop";
  for (const n of [0, 1, 2, 4]) rows.push(qd32(d, where, "eventfd", n));
  for (const n of [0, 1, 2]) rows.push(qd32(d, where, "poll", n));
}
{
  const d = await daemon(true);
  for (const mode of ["poll", "eventfd"] as const) {
    for (const worker of [false, true]) {
      rows.push({
        name: `QD1 ${mode}, ${worker ? "a Worker" : "main thread"}`,
        run: () =>
          withDevice(d, 1, mode, async (blk) => {
            const r = worker ? (await runFioJobs(blk, job(1, 1))).aggregate : await runFio(blk, job(1, 1));
            return { kiops: r.total.iops / 1000, meanUs: r.total.latencyUs.mean };
          }),
      });
    }
  }
}

const results = new Map<string, { kiops: number[]; meanUs: number[] }>();
try {
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? rows : [...rows].reverse();
    for (const row of order) {
      const got = await row.run();
      const e = results.get(row.name) ?? { kiops: [], meanUs: [] };
      e.kiops.push(got.kiops);
      e.meanUs.push(got.meanUs);
      results.set(row.name, e);
      console.error(`${row.name}: ${got.kiops.toFixed(0)}k IOPS, ${got.meanUs.toFixed(2)} µs`);
    }
  }
} finally {
  for (const d of daemons) await d.stop();
}
const med = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
const span = (a: number[], f: (n: number) => string) => `${f(med(a))} (${f(Math.min(...a))}–${f(Math.max(...a))})`;
console.log("| run | IOPS (k), median (range) | mean latency (µs), median (range) |");
console.log("| --- | ---: | ---: |");
for (const row of rows) {
  const e = results.get(row.name)!;
  console.log(`| ${row.name} | ${span(e.kiops, (n) => n.toFixed(0))} | ${span(e.meanUs, (n) => n.toFixed(2))} |`);
}
