// Every `deno task` command the README shows is run exactly as written,
// through `sh -c` in a scratch folder (so `> out.bin` goes through a pipe
// into a file, as in a shell), against a daemon this test starts, whose
// socket is `$SOCK`. The tasks CI runs itself are checked to be in .ci/run.
import assert from "node:assert/strict";
import { QemuStorageDaemon } from "../testing.ts";
import { endedOnSignal, firstDifference, missing, tempDir } from "./_support.ts";
import { RECENT_QSD } from "./_qsd_recent.ts";
import { knownEntry, loadKnown } from "./_fuzz_known.ts";

const root = new URL("..", import.meta.url).pathname;
const readme = await Deno.readTextFile(`${root}README.md`);
const ciRun = await Deno.readTextFile(`${root}.ci/run`);

/** The `deno task …` lines of each sh block, in order (a block's commands share a folder and a daemon). */
function readmeTaskBlocks(): string[][] {
  const blocks: string[][] = [];
  for (const block of readme.matchAll(/```sh\n([\s\S]*?)```/g)) {
    // `deno task …` lines, and pipelines into one (`cat disk.img | deno task copy …`).
    const lines = block[1].split("\n").filter((l) => /^deno task |^[^#]*\| deno task /.test(l)).map((l) => l.trim());
    if (lines.length > 0) blocks.push(lines);
  }
  return blocks;
}

/** `deno task …` in inline code outside the blocks (those the blocks also show are run there). */
function readmeInlineTasks(inBlocks: readonly string[]): string[] {
  const prose = readme.replace(/```[\s\S]*?```/g, "");
  const shown = new Set(inBlocks.map(keyOf));
  return [...new Set([...prose.matchAll(/`(deno task [^`]*)`/g)].map((m) => m[1]))].filter((c) => !shown.has(keyOf(c)));
}

/** A command without its comment and extra spaces: the key of its expectation. */
function keyOf(command: string): string {
  return command.replace(/\s+#.*$/, "").replace(/\s+/g, " ");
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  dir: string;
  qsd: QemuStorageDaemon;
}

/** What a command must do: run here and check, or be run by CI (then it must be in .ci/run). */
type Expectation =
  | { check: (r: Run) => Promise<void> | void; code?: number }
  | { watch: (r: Run) => Promise<void> | void }
  | { ci: string }
  | { generic: true };

const MiB = 1 << 20;
const image = (r: Run) => Deno.readFile(r.qsd.imagePath!);

const EXPECTED: Record<string, Expectation> = {
  "deno task demo": {
    check: (r) => {
      assert.match(r.stdout, /started qemu-storage-daemon/);
      assert.match(r.stdout, /wrote 1MiB at offset 0, flushed, read it back: verified/);
      assert.match(r.stdout, /QD32: [\d,]+ IOPS/);
    },
  },
  "deno task test": { ci: "deno task test" },
  "deno task probe --path $SOCK": {
    check: (r) => {
      assert.match(r.stdout, /^probe of the vhost-user-blk back-end at /);
      assert.match(r.stdout, /conforming: nothing non-conforming was seen/);
    },
  },
  "deno task probe --path SOCKET --write-test": { generic: true },
  "deno task probe --path SOCKET --fuzz 5000 --seed 1 --destructive": { generic: true }, // the real back-ends' runs: .ci/fuzz runs 500
  // The fuzzer against qemu-storage-daemon: its findings are known ones (tests/fuzz_known.json), so exit status 1.
  "deno task probe --path $SOCK --fuzz 200 --seed 1": {
    code: 1,
    check: (r) => {
      assert.match(r.stdout, /^fuzz of the vhost-user-blk back-end at .*: seed 1, split ring, not destructive/);
      assert.match(r.stdout, /^cases\s+200\s+legal \d+, illegal \d+$/m);
      assert.match(r.stdout, /^findings by kind, case, layouts and request type/m);
      assert.match(r.stderr, /200\/200 cases/);
    },
  },
  "deno task probe --path $SOCK --fuzz 200 --seed 1 --destructive --json > fuzz.json": {
    code: 1,
    check: async (r) => {
      const report = JSON.parse(await Deno.readTextFile(`${r.dir}/fuzz.json`));
      assert.equal(report.seed, 1);
      assert.equal(report.cases, 200);
      assert.equal(report.destructive, true);
      assert.equal(report.legal + report.illegal, 200);
      assert.ok(report.findings.length > 0);
      const known = (await loadKnown()).backends["qemu-storage-daemon"].split;
      for (const f of report.findings) assert.ok(knownEntry(f, known), `not a known finding: ${f.id} ${f.signature}`);
    },
  },
  "deno task probe --path $SOCK --replay 1:5": {
    code: 1,
    check: (r) => {
      assert.match(r.stdout, /^replay of case 1:5 \(legal, /);
      assert.match(r.stdout, /^\s+desc\s+address\s+len\s+device\s+flags\s+next\s+holds$/m);
      assert.match(r.stdout, /seen:\s+not completed/);
    },
  },
  "deno task demo --path $SOCK": {
    check: async (r) => {
      assert.match(r.stdout, /not writing to a device the demo did not create: reads only/);
      assert.ok((await image(r)).subarray(0, MiB).every((b) => b === 0), "the device was not written");
    },
  },
  "deno task demo --path $SOCK --yes": {
    check: async (r) => {
      assert.match(r.stdout, /verified/);
      assert.ok((await image(r)).subarray(0, MiB).some((b) => b !== 0), "the demo wrote its 1 MiB");
    },
  },
  "deno task info --path $SOCK": {
    check: (r) => {
      assert.match(r.stdout, /^transport +vhost-user\ncapacity +67108864 bytes/);
    },
  },
  "deno task info --path $SOCK --json > info.json": {
    check: async (r) => {
      const info = JSON.parse(await Deno.readTextFile(`${r.dir}/info.json`));
      assert.equal(info.capacity, 64 * MiB);
      assert.equal(info.transport, "vhost-user");
    },
  },
  // Runs until Ctrl-C: started against a daemon that announces resizes, which is then grown by 64 MiB.
  "deno task info --path $SOCK --watch": {
    watch: (r) => {
      assert.equal(r.code, 130, `exit status after Ctrl-C:\n${r.stderr}`);
      assert.match(r.stdout, /^transport +vhost-user\ncapacity +67108864 bytes/);
      assert.match(r.stderr, /watching for configuration changes \(through the back-end's change messages\)/);
      assert.match(r.stdout, /\n\S+Z {2}capacity 64MiB -> 128MiB \(134217728 bytes\)\n/);
    },
  },
  "deno task fio --path $SOCK --reconnect 30": {
    check: (r) => {
      assert.match(r.stdout, /^randread: bs=4k, iodepth=1 per queue/);
      assert.match(r.stdout, /\n {2}reconnects: none \(the back-end stayed up\)/);
    },
  },
  "deno task fio --bs 64M --iodepth 8": {
    check: (r) => {
      assert.match(r.stdout, /^randread: bs=64M, iodepth=8 per queue/);
      assert.match(r.stdout, /\n {2}read: IOPS=/);
    },
  },
  "deno task fio --rw write --bs 128k --iodepth 16": {
    check: (r) => {
      assert.match(r.stdout, /^write: bs=128k, iodepth=16 per queue/);
      assert.match(r.stdout, /\n {2}write: IOPS=/);
    },
  },
  "deno task copy --from disk.img --to vhost-user:$SOCK --pad --verify": {
    check: async (r) => {
      assert.match(
        r.stdout,
        /^copied 3.00MiB \(3145828 bytes\) from disk.img to vhost-user:.* verified: the destination reads back the same/,
      );
      const disk = await Deno.readFile(`${r.dir}/disk.img`);
      assert.equal(firstDifference((await image(r)).subarray(0, disk.length), disk), -1);
    },
  },
  // The image of the command before, back out at its own length (3 MiB + 100: not whole blocks).
  "deno task copy --from vhost-user:$SOCK --length 3145828 --to back.img": {
    check: async (r) => {
      const back = await Deno.readFile(`${r.dir}/back.img`);
      assert.equal(back.length, 3145828);
      assert.equal(firstDifference(back, await Deno.readFile(`${r.dir}/disk.img`)), -1);
      assert.match(r.stdout, /^copied 3.00MiB \(3145828 bytes\) from vhost-user:/);
    },
  },
  "deno task copy --from vhost-user:$SOCK@1M --length 4M --to part.img": {
    check: async (r) => {
      const part = await Deno.readFile(`${r.dir}/part.img`);
      assert.equal(part.length, 4 * MiB);
      assert.equal(firstDifference(part, (await image(r)).subarray(MiB, 5 * MiB)), -1);
    },
  },
  "cat disk.img | deno task copy --from - --to vhost-user:$SOCK --pad": {
    check: async (r) => {
      assert.match(r.stdout, /^copied 3.00MiB \(3145828 bytes\) from stdin to vhost-user:/);
      const disk = await Deno.readFile(`${r.dir}/disk.img`);
      assert.equal(firstDifference((await image(r)).subarray(0, disk.length), disk), -1);
    },
  },
  "deno task write --path $SOCK --offset 1M --input data.bin": {
    check: async (r) => {
      const data = await Deno.readFile(`${r.dir}/data.bin`);
      assert.equal(firstDifference((await image(r)).subarray(MiB, MiB + data.length), data), -1);
      assert.equal(r.stdout, "");
    },
  },
  "deno task read --path $SOCK --offset 1M --length 4k > out.bin": {
    check: async (r) => {
      const out = await Deno.readFile(`${r.dir}/out.bin`);
      assert.equal(out.length, 4096);
      assert.equal(firstDifference(out, (await image(r)).subarray(MiB, MiB + 4096)), -1, "byte-identical");
      assert.equal(firstDifference(out, (await Deno.readFile(`${r.dir}/data.bin`)).subarray(0, 4096)), -1);
    },
  },
  "deno task fio --rw randread --bs 4k --iodepth 32 --runtime 5": {
    check: (r) => {
      assert.match(r.stdout, /^randread: bs=4k, iodepth=32 per queue/);
      assert.match(r.stdout, /\n {2}read: IOPS=/);
      assert.match(r.stdout, /stores nothing/);
    },
  },
  "deno task fio --path $SOCK --rw randwrite --bs 64k --iodepth 8 --runtime 2 --json > fio.json": {
    check: async (r) => {
      const result = JSON.parse(await Deno.readTextFile(`${r.dir}/fio.json`));
      assert.equal(result.job.rw, "randwrite");
      assert.ok(result.write.ios > 0 && result.errors === 0);
      assert.equal(result.backend.storesData, true);
    },
  },
  "deno task fio --numjobs 2 --iodepth 32 --rw randread --runtime 3": {
    check: (r) => {
      assert.match(r.stdout, /numjobs=2 \(a Worker and a queue each\)/);
      assert.match(r.stdout, /\n {2}job 1 \(queue 1\): IOPS=/);
      assert.match(r.stdout, /errors=0/);
    },
  },
  "deno task fio --numjobs N": { generic: true },
  "deno task build": {
    check: (r) => assert.equal(r.stdout, "", "the build prints nothing on stdout"),
  },
  "deno task bench": { ci: "deno task bench" },
  "deno task fuzz": { ci: "deno task fuzz" },
  "deno task soak": { ci: "deno task soak" },
  "deno task test:guest": { ci: "deno task test:guest" },
  "deno task test:asan": { ci: "deno task test:asan" },
  "deno task check": { ci: "deno task check" },
  // Writes src/os/prebuilt/ (it needs the aarch64 cross-compiler): CI runs its comparing form.
  "deno task prebuilt": { ci: "deno task prebuilt --check" },
  "deno task prebuilt --check": { ci: "deno task prebuilt --check" },
  "deno task <command> --help": { generic: true },
  "deno task copy": { generic: true }, // named in prose; its examples are run above
  "deno task <command>": { generic: true },
};

const blocks = readmeTaskBlocks();
const inline = readmeInlineTasks(blocks.flat());

Deno.test("README: every deno task command it shows has a check here", () => {
  const all = [...blocks.flat(), ...inline];
  assert.ok(all.length >= 10, `found ${all.length}`);
  for (const c of all) assert.ok(keyOf(c) in EXPECTED, `no check for the README command: ${c}`);
});

for (const command of inline) {
  const expected = EXPECTED[keyOf(command)];
  if (expected !== undefined && "ci" in expected) {
    Deno.test(`README: ${keyOf(command)} is run by .ci/run`, () => {
      assert.ok(ciRun.includes(expected.ci), `.ci/run does not run ${expected.ci}`);
    });
  }
}

/**
 * The environment of a user's shell: ours, with `$SOCK`, and without the
 * `INIT_CWD` that the `deno task test` running this left (deno task keeps
 * one already set, and would resolve the user's relative paths from there).
 */
function shellEnv(sock: string): Record<string, string> {
  const env = Deno.env.toObject();
  delete env.INIT_CWD;
  return { ...env, SOCK: sock, NO_COLOR: "1" };
}

/** Runs one README command exactly as written with `sh -c` in `dir`, and applies its check. */
async function runCommand(command: string, dir: string, qsd: QemuStorageDaemon): Promise<void> {
  const expected = EXPECTED[keyOf(command)];
  if (expected === undefined || "generic" in expected) return;
  if ("watch" in expected) throw new Error(`${command} runs until Ctrl-C: show it in prose, not in a block`);
  if ("ci" in expected) {
    assert.ok(ciRun.includes(expected.ci), `.ci/run does not run ${expected.ci}`);
    return;
  }
  const out = await new Deno.Command("sh", {
    args: ["-c", command],
    cwd: dir,
    env: shellEnv(qsd.socketPath),
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const run: Run = {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
    dir,
    qsd,
  };
  assert.equal(run.code, expected.code ?? 0, `${command} exited with ${run.code}:\n${run.stderr}`);
  assert.doesNotMatch(run.stderr, /\n\s+at .*:\d+:\d+/, `${command}: no stack trace`);
  await expected.check(run);
}

/** A scratch folder inside the checkout (where a user's shell would be) and a daemon on a 64 MiB image. */
async function inScratch(fn: (dir: string, qsd: QemuStorageDaemon) => Promise<void>): Promise<void> {
  await using scratch = await tempDir(".readme-run-", root);
  const dir = scratch.path;
  await using qsd = await QemuStorageDaemon.start({ size: 64 * MiB });
  await Deno.writeFile(`${dir}/data.bin`, crypto.getRandomValues(new Uint8Array(8192)));
  const disk = new Uint8Array(3 * MiB + 100); // the README's copy examples: an image that ends inside a block
  for (let at = 0; at < disk.length; at += 65536) crypto.getRandomValues(disk.subarray(at, at + 65536));
  await Deno.writeFile(`${dir}/disk.img`, disk);
  await fn(dir, qsd);
}

/**
 * Runs a command that lasts until Ctrl-C, as a shell runs a foreground job
 * (its own process group), against a daemon with a QMP monitor: once it
 * watches, the disk grows by 64 MiB; once the change is printed, the whole
 * group gets SIGINT.
 */
async function runWatch(command: string, check: (r: Run) => Promise<void> | void): Promise<void> {
  await using scratch = await tempDir(".readme-run-", root);
  const dir = scratch.path;
  await using qsd = await QemuStorageDaemon.start({ size: 64 * MiB, binary: RECENT_QSD, qmp: true });
  const child = new Deno.Command("setsid", {
    args: ["sh", "-c", command],
    cwd: dir,
    env: shellEnv(qsd.socketPath),
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  using _onSignal = endedOnSignal(child, { group: true });
  let stdout = "", stderr = "";
  const collect = async (s: ReadableStream<Uint8Array>, add: (t: string) => void) => {
    for await (const t of s.pipeThrough(new TextDecoderStream())) add(t);
  };
  const reading = Promise.all([collect(child.stdout, (t) => stdout += t), collect(child.stderr, (t) => stderr += t)]);
  const until = async (ok: () => boolean, what: string) => {
    const deadline = performance.now() + 20_000;
    while (!ok()) {
      if (performance.now() > deadline) throw new Error(`${command}: ${what} did not happen:\n${stdout}\n${stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  try {
    await until(() => stderr.includes("Ctrl-C to stop"), "watching");
    await qsd.resize(128 * MiB);
    await until(() => stdout.includes("128MiB"), "printing the change");
  } finally {
    Deno.kill(-child.pid, "SIGINT"); // the whole group, as Ctrl-C does
  }
  const status = await child.status;
  await reading;
  await check({ code: status.code, stdout, stderr, dir, qsd });
}

for (const command of inline) {
  const expected = EXPECTED[keyOf(command)];
  if (expected !== undefined && "watch" in expected) {
    Deno.test({
      name: `README: ${command} (exactly as written, then Ctrl-C)`,
      ignore: missing("qemu-storage-daemon-8.1", RECENT_QSD !== undefined),
      fn: () => runWatch(command, expected.watch),
    });
  }
  if (expected !== undefined && "check" in expected) {
    Deno.test({
      name: `README: ${command} (exactly as written)`,
      ignore: missing("qemu-storage-daemon"),
      fn: () => inScratch((dir, qsd) => runCommand(command, dir, qsd)),
    });
  }
}

for (const block of blocks) {
  Deno.test({
    name: `README: the block starting "${keyOf(block[0])}" runs as written, in order`,
    ignore: missing("qemu-storage-daemon"),
    fn: () =>
      inScratch(async (dir, qsd) => {
        for (const command of block) await runCommand(command, dir, qsd);
      }),
  });
}
