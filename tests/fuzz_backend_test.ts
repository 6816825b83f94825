// The back-end fuzzer (`deno task probe --fuzz`), run as a user runs it, against a back-end of its own
// (tests/_fuzz_backend.c): silent against the careful back-end (2000 cases, seed 1), and against each planted
// bug a finding of the right kind (every finding, not just one), whose --replay on a freshly started back-end
// gives the same kind. A fuzzer that cannot fail a back-end proves nothing.
import assert from "node:assert/strict";
import type { FuzzReport } from "../src/cli/fuzz/report.ts";
import { FuzzBackend, fuzzBackendMissing, PLANTED_BUGS, type PlantedBug } from "./_fuzz_backend.ts";
import { denoTask, interruptTask, type TaskRun, tempDir } from "./_support.ts";

const NO_CC = fuzzBackendMissing();
if (NO_CC) console.warn(`\n*** ${NO_CC}: SKIPPING the back-end fuzzer's tests (apt-get install gcc) ***\n`);

/** `deno task probe --path SOCK …`, its JSON report parsed. */
async function probe(path: string, ...flags: string[]): Promise<{ run: TaskRun; report: FuzzReport }> {
  const run = await denoTask(["probe", "--path", path, "--json", ...flags]);
  assert.ok(run.stdout.startsWith("{"), `no JSON (exit ${run.code}):\n${run.stdout}\n${run.stderr}`);
  return { run, report: JSON.parse(run.stdout) };
}

interface ReplayJson {
  id: string;
  legal: boolean;
  finding: { kind: string; id: string; summary: string } | null;
  requests: { descriptors: unknown[] }[];
}

Deno.test({
  name: "fuzz: the careful back-end passes 2000 cases (seed 1, destructive): exit 0, no findings",
  ignore: NO_CC !== undefined,
  fn: async () => {
    await using b = await FuzzBackend.start();
    const { run, report } = await probe(b.socketPath, "--fuzz", "2000", "--seed", "1", "--destructive");
    assert.deepEqual(report.findings, [], run.stdout.slice(0, 4000));
    assert.equal(run.code, 0, run.stderr);
    assert.equal(report.cases, 2000);
    assert.equal(report.seed, 1);
    assert.equal(report.legal + report.illegal, 2000);
    assert.ok(report.illegal > 300 && report.legal > 1200, `${report.legal} legal, ${report.illegal} illegal`);
    // The illegal requests were refused in the ways the careful back-end refuses them.
    assert.ok((report.refusedBy["hang-up"] ?? 0) > 100, JSON.stringify(report.refusedBy));
    assert.ok((report.refusedBy.IOERR ?? 0) > 50, JSON.stringify(report.refusedBy));
    assert.ok((report.refusedBy.UNSUPP ?? 0) > 10, JSON.stringify(report.refusedBy));
    assert.match(run.stderr, /2000\/2000 cases/);
  },
});

Deno.test({
  name: "fuzz: the careful back-end passes 600 cases on a packed ring, and 600 without --destructive",
  ignore: NO_CC !== undefined,
  fn: async () => {
    await using b = await FuzzBackend.start({ packed: true });
    const packed = await probe(b.socketPath, "--fuzz", "600", "--seed", "2", "--destructive", "--ring", "packed");
    assert.deepEqual(packed.report.findings, []);
    assert.equal(packed.run.code, 0);
    assert.equal(packed.report.ring, "packed");
    const reads = await probe(b.socketPath, "--fuzz", "600", "--seed", "3");
    assert.deepEqual(reads.report.findings, []);
    assert.equal(reads.report.destructive, false);
    assert.ok(reads.report.notes.some((n) => /writes became reads/.test(n)), reads.report.notes.join("\n"));
  },
});

/** How many cases each bug needs (the crash stops the run at once; the hang costs a timeout each). */
const CASES: Record<PlantedBug, string[]> = {
  "crash-header-split": ["--fuzz", "2000"],
  "flush-hang": ["--fuzz", "150", "--timeout", "400"],
  "oob-write": ["--fuzz", "200"],
  "write-readable": ["--fuzz", "200"],
  "double-completion": ["--fuzz", "200"],
  "capacity-off-by-one": ["--fuzz", "300"],
  "multi-desc-read": ["--fuzz", "300"],
};

for (const [bug, kind] of Object.entries(PLANTED_BUGS) as [PlantedBug, string][]) {
  Deno.test({
    name: `fuzz: a planted ${bug} is found as ${kind} (exit 1), and --replay of the first finding gives ${kind} again`,
    ignore: NO_CC !== undefined,
    fn: async () => {
      await using b = await FuzzBackend.start({ bug });
      const extra = CASES[bug].includes("--timeout") ? CASES[bug].slice(2) : [];
      const { run, report } = await probe(b.socketPath, ...CASES[bug], "--seed", "1", "--destructive");
      assert.equal(run.code, 1, run.stderr);
      assert.ok(report.findings.length > 0, "no finding");
      const kinds = new Set(report.findings.map((f) => f.kind));
      assert.deepEqual([...kinds], [kind], report.findings.map((f) => `${f.id} ${f.kind}: ${f.summary}`).join("\n"));
      if (bug === "crash-header-split") {
        assert.equal(report.findings.length, 1);
        assert.ok(report.cases < 2000, "the run stops at a crash without --restart");
        assert.ok(report.notes.some((n) => /the back-end is gone/.test(n)), report.notes.join("\n"));
      }
      const first = report.findings[0];
      assert.match(first.id, /^1:\d+$/);
      const submitted = first.requests.filter((r) => r.seen !== "not submitted");
      assert.ok(
        submitted.length > 0 && submitted.every((r) => r.descriptors.length > 0),
        JSON.stringify(first.requests),
      );
      // A fresh back-end (the crash left none), then the case alone.
      await b.spawn();
      const replay = await denoTask([
        "probe",
        "--path",
        b.socketPath,
        "--replay",
        first.id,
        "--destructive",
        "--json",
        ...extra,
      ]);
      assert.equal(replay.code, 1, `${replay.stdout}\n${replay.stderr}`);
      const r: ReplayJson = JSON.parse(replay.stdout);
      assert.equal(r.id, first.id);
      assert.equal(r.finding?.kind, kind, replay.stdout.slice(0, 3000));
      // The text form shows the descriptors.
      await b.spawn();
      const text = await denoTask(["probe", "--path", b.socketPath, "--replay", first.id, "--destructive", ...extra]);
      assert.equal(text.code, 1);
      assert.match(text.stdout, new RegExp(`^replay of case ${first.id} `));
      assert.match(text.stdout, /desc\s+address\s+len\s+device\s+flags\s+next\s+holds/);
      assert.match(text.stdout, new RegExp(`FINDING ${first.id}\\s+${kind}`));
    },
  });
}

Deno.test({
  name: "fuzz: --restart brings a crashed back-end back and the run goes on; the back-end it started is stopped",
  ignore: NO_CC !== undefined,
  fn: async () => {
    await using b = await FuzzBackend.start({ bug: "crash-header-split" });
    await b.stop(); // nothing listens: the fuzzer starts it with --restart, and again after each crash
    const { run, report } = await probe(
      b.socketPath,
      "--fuzz",
      "300",
      "--seed",
      "1",
      "--destructive",
      "--restart",
      b.command,
    );
    assert.equal(run.code, 1, run.stderr);
    assert.equal(report.cases, 300);
    const crashes = report.findings.filter((f) => f.kind === "crash");
    assert.ok(crashes.length >= 2, `${crashes.length} crashes`);
    // One restart per crash (none after a crash in the last case).
    const lastCrashed = crashes.some((f) => f.id === "1:299");
    assert.equal(report.restarts, crashes.length - (lastCrashed ? 1 : 0));
    assert.ok(crashes.every((f) => /killed by SIGABRT/.test(f.summary)), crashes.map((f) => f.summary).join("\n"));
    assert.deepEqual(new Set(report.findings.map((f) => f.kind)), new Set(["crash"]));
    // Nothing listens any more: the fuzzer stopped what it started.
    const after = await denoTask(["probe", "--path", b.socketPath, "--fuzz", "1"]);
    assert.equal(after.code, 1);
    assert.match(after.stderr, /ERR_CONNECT_FAILED/);
  },
});

Deno.test("fuzz: a --restart command that ends without listening is named with what it printed (or that it printed nothing)", async () => {
  await using tmp = await tempDir();
  for (
    const [command, said] of [
      ["exec false", /\(exit status 1\) and nothing listens on .*: it printed nothing \[ERR_CONNECT_FAILED\]$/m],
      [
        "echo 'cannot open disk.img' >&2; exit 3",
        /\(exit status 3\) and nothing listens on .*: cannot open disk\.img \[ERR_CONNECT_FAILED\]$/m,
      ],
    ] as const
  ) {
    const run = await denoTask(["probe", "--path", `${tmp.path}/none.sock`, "--fuzz", "5", "--restart", command]);
    assert.equal(run.code, 1, run.stderr);
    assert.match(run.stderr, /the --restart command ended/);
    assert.match(run.stderr, said);
  }
});

Deno.test({
  name: "fuzz: Ctrl-C prints what was found so far and exits with 130",
  ignore: NO_CC !== undefined,
  fn: async () => {
    await using b = await FuzzBackend.start({ bug: "double-completion" });
    const start = performance.now();
    const run = await interruptTask(
      ["probe", "--path", b.socketPath, "--fuzz", "1000000", "--seed", "1"],
      (_out, err) => /fuzzing .*1000000 cases/.test(err) && performance.now() - start > 2500,
    );
    assert.equal(run.code, 130, `${run.stdout}\n${run.stderr}`);
    assert.match(run.stdout, /^fuzz of the vhost-user-blk back-end/);
    assert.match(run.stdout, /note: interrupted after \d+ of 1000000 cases/);
    assert.match(run.stdout, /completion\s+[1-9]\d*\s+1:/);
  },
});

Deno.test({
  name: "fuzz: flags that do not go together are usage errors (exit 2, one line)",
  fn: async () => {
    for (
      const [flags, message] of [
        [["--fuzz", "0"], /--fuzz must be a whole number from 1/],
        [["--seed", "5"], /--seed goes with --fuzz or --replay/],
        [["--fuzz", "5", "--replay", "1:2"], /--fuzz and --replay do not go together/],
        [["--replay", "x"], /--replay takes a finding's ID, SEED:CASE/],
        [["--fuzz", "5", "--ring", "ring"], /--ring must be one of split, packed/],
        [["--fuzz", "5", "--write-test"], /--write-test does not go with --fuzz/],
      ] as const
    ) {
      const run = await denoTask(["probe", "--path", "/nonexistent.sock", ...flags]);
      assert.equal(run.code, 2, `${flags.join(" ")}: ${run.stderr}`);
      assert.match(run.stderr.trim(), message);
      assert.equal(run.stderr.trim().split("\n").length, 1, run.stderr);
    }
  },
});
