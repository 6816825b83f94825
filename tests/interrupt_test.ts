// Ctrl-C during `deno task test` (SIGINT to its process group, as a terminal
// sends it) leaves nothing behind: no qemu-storage-daemon or DPDK process,
// no child of a test, nothing in TMPDIR — and it is the fixtures' own
// termination hooks that release them, not the last-resort sweep of
// tests/_run.ts (which would say "left behind by the tests").
import assert from "node:assert/strict";
import { DpdkVhostBlk } from "../src/testing/dpdk_vhost_blk.ts";
import { within } from "../src/process/within.ts";
import { processesUsing, type ProcessInfo } from "./_processes.ts";
import { endedOnSignal, missing, tempDir } from "./_support.ts";

const root = new URL("..", import.meta.url).pathname;
const INNER = "VIRTIO_NEWCOMER_INNER_RUN"; // set in the nested runs of newcomer_test.ts: no nesting in those

interface Interrupted {
  code: number;
  stdout: string;
  stderr: string;
  /** What ran when the signal was sent. */
  running: ProcessInfo[];
  /** Processes that still refer to the private TMPDIR a second after the run ended. */
  left: ProcessInfo[];
  /** What is still in the private TMPDIR. */
  files: string[];
}

/**
 * Runs `deno task test FILES` as a shell runs a foreground job (a process
 * group of its own), with a private TMPDIR and its output in files; once
 * `ready` holds for the processes that use that TMPDIR, waits `settleMs` and
 * sends SIGINT to the whole group.
 */
async function interruptTestRun(
  files: string[],
  ready: (procs: ProcessInfo[]) => boolean,
  what: string,
  settleMs = 300,
): Promise<Interrupted> {
  await using tmp = await tempDir("vi-"); // short: the fixtures nest sockets four folders below it
  await using out = await tempDir("virtio-i-out-");
  const child = new Deno.Command("setsid", {
    args: ["sh", "-c", 'exec "$DENO" task test "$@" > "$OUT/stdout" 2> "$OUT/stderr"', "sh", ...files],
    cwd: root,
    env: { DENO: Deno.execPath(), OUT: out.path, TMPDIR: tmp.path, NO_COLOR: "1" },
    stdin: "null",
  }).spawn();
  using _onSignal = endedOnSignal(child, { group: true });
  let running: ProcessInfo[] = [];
  try {
    for (const deadline = performance.now() + 180_000;;) {
      running = processesUsing(tmp.path);
      if (ready(running)) {
        // Still so after a moment (a slow machine may have moved on to the next test meanwhile): now.
        await new Promise((r) => setTimeout(r, settleMs));
        running = processesUsing(tmp.path);
        if (ready(running)) break;
      }
      if (await within(child.status, 100) !== undefined) {
        const text = await Deno.readTextFile(`${out.path}/stdout`) + await Deno.readTextFile(`${out.path}/stderr`);
        throw new Error(`the run ended before ${what}:\n${text.slice(-3000)}`);
      }
      if (performance.now() > deadline) throw new Error(`no ${what} within 180 s`);
    }
    Deno.kill(-child.pid, "SIGINT"); // the whole group, as Ctrl-C does
  } catch (e) {
    try {
      Deno.kill(-child.pid, "SIGKILL");
    } catch {
      // ended already
    }
    await child.status;
    throw e;
  }
  const status = await within(child.status, 30_000);
  if (status === undefined) Deno.kill(-child.pid, "SIGKILL");
  assert.ok(status !== undefined, "deno task test ended within 30 s of the signal");
  await new Promise((r) => setTimeout(r, 1000));
  return {
    code: status.code,
    stdout: await Deno.readTextFile(`${out.path}/stdout`),
    stderr: await Deno.readTextFile(`${out.path}/stderr`),
    running,
    left: processesUsing(tmp.path),
    files: [...Deno.readDirSync(tmp.path)].map((e) => e.name),
  };
}

function isQsd(p: ProcessInfo): boolean {
  return /(^|\/)qemu-storage-daemon /.test(p.command);
}

function isDpdk(p: ProcessInfo): boolean {
  return /\/build\/vhost-blk /.test(p.command);
}

function checkClean(r: Interrupted): void {
  const all = `${r.stdout}\n${r.stderr}`;
  const output = `\n--- output:\n${all.slice(-4000)}`;
  assert.equal(r.code, 130, output);
  assert.deepEqual(r.left.map((p) => p.command), [], `no process of the run is left (daemons included)${output}`);
  assert.deepEqual(r.files, [], `nothing is left in TMPDIR${output}`);
  assert.match(r.stderr, /interrupted \(SIGINT\): the test run was stopped/, output);
  assert.match(all, /The following tests were pending/, `deno test said which test it stopped${output}`);
  assert.doesNotMatch(r.stderr, /left behind by the tests/, `the fixtures released everything themselves${output}`);
}

Deno.test({
  name: "Ctrl-C during deno task test, while a daemon serves a 512 MiB stream test: no daemon, no folder, exit 130",
  ignore: missing("qemu-storage-daemon") || Deno.env.get(INNER) === "1",
  fn: async () => {
    const r = await interruptTestRun(
      ["tests/bulk_io_test.ts"],
      (procs) => procs.some((p) => isQsd(p) && p.command.includes("virtio-streams-")),
      "qemu-storage-daemon of the stream test",
    );
    assert.ok(r.running.some(isQsd), "a qemu-storage-daemon was running when the signal came");
    checkClean(r);
    assert.match(r.stdout + r.stderr, /streams \(qemu-storage-daemon\): a 512 MiB file/);
  },
});

Deno.test({
  name: "Ctrl-C during deno task test, while a test runs deno task fio (its own private daemon): nothing left",
  ignore: missing("qemu-storage-daemon") || Deno.env.get(INNER) === "1",
  fn: async () => {
    const r = await interruptTestRun(
      ["tests/cli_test.ts"],
      (procs) => procs.some((p) => /cli\.ts fio /.test(p.command)) && procs.filter(isQsd).length >= 1,
      "fio child with its daemon",
    );
    assert.ok(r.running.some((p) => /cli\.ts fio /.test(p.command)), "fio was running when the signal came");
    checkClean(r);
  },
});

Deno.test({
  name: "Ctrl-C during deno task test, while DPDK's vhost_blk example serves a test: nothing left",
  ignore: missing("dpdk-vhost-blk") || Deno.env.get(INNER) === "1",
  fn: async () => {
    await DpdkVhostBlk.build(); // built before the run, so that the signal comes while it serves
    const r = await interruptTestRun(
      ["tests/dpdk_interop_test.ts"],
      (procs) => procs.some(isDpdk),
      "DPDK vhost_blk process",
      500,
    );
    assert.ok(r.running.some(isDpdk), "DPDK's example was running when the signal came");
    checkClean(r);
  },
});
