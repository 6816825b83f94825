// The command-line tool, run as a user would run it (a subprocess each).
import assert from "node:assert/strict";
import { parseSize } from "../cli.ts";
import { QemuStorageDaemon } from "../mod.ts";
import { HAVE_QSD } from "./_support.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;

async function cli(args: string[], stdin?: Uint8Array): Promise<{ code: number; stdout: Uint8Array; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    stdin: stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin) {
    const w = child.stdin.getWriter();
    await w.write(stdin);
    await w.close();
  }
  const out = await child.output();
  return { code: out.code, stdout: out.stdout, stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("cli: sizes with suffixes", () => {
  assert.equal(parseSize("4096", "x"), 4096);
  assert.equal(parseSize("4k", "x"), 4096);
  assert.equal(parseSize("1M", "x"), 1 << 20);
  assert.equal(parseSize("2g", "x"), 2 * 2 ** 30);
  assert.equal(parseSize("16KiB", "x"), 16384);
  assert.throws(() => parseSize("4x", "--bs"), /--bs: not a size/);
  assert.throws(() => parseSize("-1", "--bs"));
  assert.throws(() => parseSize("1.5k", "--bs"));
});

Deno.test("cli: bad flags print one line and exit with status 2", async () => {
  for (
    const args of [
      ["bench", "--bogus"],
      ["bench", "--rw", "sideways"],
      ["bench", "--bs", "4q"],
      ["bench", "--iodepth", "0"],
      ["bench", "--mode", "fast"],
      ["frobnicate"],
      ["info"], // --path is required
      [],
    ]
  ) {
    const r = await cli(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    if (args.length > 0) {
      const lines = r.stderr.trim().split("\n");
      assert.equal(lines.length, 1, `${args.join(" ")}: one line, got ${r.stderr}`);
      assert.match(lines[0], /^error: /);
    }
  }
});

Deno.test({
  name: "cli: bench prints progress and a summary; --json parses (private daemon)",
  ignore: !HAVE_QSD,
  fn: async () => {
    const text = await cli([
      "bench",
      "--rw",
      "randread",
      "--bs",
      "4k",
      "--iodepth",
      "8",
      "--runtime",
      "1.2",
      "--ramp",
      "0",
    ]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stderr, /\[\s*1s\] [\d,]+ IOPS, [\d.]+ MB\/s/, "a progress line");
    const summary = new TextDecoder().decode(text.stdout);
    assert.match(summary, /randread bs=4096 iodepth=8 .*: [\d,]+ IOPS/);
    assert.match(summary, /latency \(µs\): mean [\d.]+ +min [\d.]+ +p50 [\d.]+ +p99 [\d.]+ +p99\.9 [\d.]+ +max [\d.]+/);

    const json = await cli([
      "bench",
      "--rw",
      "randrw",
      "--bs",
      "8k",
      "--iodepth",
      "4",
      "--runtime",
      "0.5",
      "--ramp",
      "0",
      "--json",
      "--backend",
      "file",
    ]);
    assert.equal(json.code, 0, json.stderr);
    const r = JSON.parse(new TextDecoder().decode(json.stdout));
    assert.equal(r.job.rw, "randrw");
    assert.equal(r.job.bs, 8192);
    assert.ok(r.ios > 0 && r.reads > 0 && r.writes > 0 && r.errors === 0);
    assert.ok(r.iops > 0 && r.latency.p50 > 0 && r.latency.max >= r.latency.p99);
  },
});

Deno.test({
  name: "cli: info, write and read against a daemon",
  ignore: !HAVE_QSD,
  fn: async () => {
    const qsd = await QemuStorageDaemon.start({ size: 4 << 20 });
    try {
      const info = await cli(["info", "--path", qsd.socketPath, "--json"]);
      assert.equal(info.code, 0, info.stderr);
      const i = JSON.parse(new TextDecoder().decode(info.stdout));
      assert.equal(i.capacity, 4 << 20);
      assert.equal(i.blockSize, 512);
      assert.ok(i.features.includes("VERSION_1"));

      const data = new Uint8Array(8192).map((_, k) => (k * 13) & 0xff);
      const w = await cli(["write", "--path", qsd.socketPath, "--offset", "1M"], data);
      assert.equal(w.code, 0, w.stderr);
      const r = await cli(["read", "--path", qsd.socketPath, "--offset", String((1 << 20) + 100), "--length", "1000"]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(r.stdout, data.subarray(100, 1100), "any byte range reads back");
      const image = await Deno.readFile(qsd.imagePath!);
      assert.deepEqual(image.subarray(1 << 20, (1 << 20) + 8192), data);
      const bad = await cli(["write", "--path", qsd.socketPath, "--offset", "100"], data);
      assert.equal(bad.code, 2);
    } finally {
      await qsd.stop();
    }
  },
});
