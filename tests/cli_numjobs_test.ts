// `deno task fio --numjobs N` as a user runs it (a shell, output in files):
// N Workers, a queue each, against the private daemon and against --path;
// the JSON has the jobs and their sum; Ctrl-C prints what was measured.
import assert from "node:assert/strict";
import { QemuStorageDaemon } from "../testing.ts";
import { denoTask, interruptTask, missing, type TaskRun } from "./_support.ts";

function lines(r: TaskRun): string {
  return `exit ${r.code}\n${r.stdout}\n${r.stderr}`;
}

Deno.test({
  name:
    "deno task fio --numjobs 2 --iodepth 32 --rw randread --runtime 3: a Worker and a queue per job, private and --path",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    const args = ["--numjobs", "2", "--iodepth", "32", "--rw", "randread", "--runtime", "3"];
    const r = await denoTask(["fio", ...args]);
    assert.equal(r.code, 0, lines(r));
    assert.match(r.stdout, /^randread: bs=4k, iodepth=32 per queue, numjobs=2 \(a Worker and a queue each\)/);
    for (const j of [0, 1]) assert.match(r.stdout, new RegExp(`\\n  job ${j} \\(queue ${j}\\): IOPS=[\\d.]+[kM]?, `));
    assert.match(r.stdout, /errors=0/);

    await using qsd = await QemuStorageDaemon.start({ size: 64 << 20, numQueues: 2, driver: "null-co" });
    const p = await denoTask(["fio", "--path", qsd.socketPath, ...args, "--json"]);
    assert.equal(p.code, 0, lines(p));
    const out = JSON.parse(p.stdout);
    assert.equal(out.numjobs, 2);
    assert.equal(out.jobs.length, 2);
    assert.equal(out.errors, 0);
    for (const job of out.jobs) {
      assert.ok(job.read.ios > 0, "each job did I/O");
      assert.equal(job.job.queues, 1, "on one queue");
    }
    assert.equal(out.read.ios, out.jobs[0].read.ios + out.jobs[1].read.ios, "the total is the jobs' sum");
    assert.ok(Math.abs(out.read.iops - out.jobs[0].read.iops - out.jobs[1].read.iops) < 1e-6 * out.read.iops);
    assert.ok(out.read.latencyUs.count === out.read.ios, "the latencies of every request");
  },
});

Deno.test({
  name: "deno task fio --numjobs: more jobs than the device's queues, with --queues or --reconnect: one line, exit 2",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await QemuStorageDaemon.start({ size: 16 << 20, numQueues: 2, driver: "null-co" });
    const cases: [string[], RegExp][] = [
      [["--path", qsd.socketPath, "--numjobs", "3"], /^error: --numjobs 3 is more than the device offers \(2\)/],
      [["--numjobs", "2", "--queues", "2"], /--numjobs runs each job on a queue of its own: leave --queues out/],
      [
        ["--path", qsd.socketPath, "--numjobs", "2", "--reconnect", "5"],
        /--numjobs and --reconnect do not go together/,
      ],
      [["--numjobs", "0"], /--numjobs must be/],
    ];
    for (const [args, want] of cases) {
      const r = await denoTask(["fio", ...args, "--runtime", "1"]);
      assert.equal(r.code, 2, `${args.join(" ")}: ${lines(r)}`);
      const errs = r.stderr.trim().split("\n");
      assert.equal(errs.length, 1, lines(r));
      assert.match(errs[0], want);
    }
  },
});

Deno.test({
  name: "Ctrl-C during deno task fio --numjobs 2: the jobs stop, what was measured is printed, exit 130",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    const r = await interruptTask(
      ["fio", "--numjobs", "2", "--iodepth", "8", "--runtime", "30"],
      (_out, err) => /\[\s+3s\/31s\]/.test(err),
    );
    assert.equal(r.code, 130, lines(r));
    assert.match(r.stdout, /interrupted: the figures cover the [\d.]+ s measured before the signal/);
    assert.match(r.stdout, /\n {2}job 1 \(queue 1\): IOPS=/);
  },
});
