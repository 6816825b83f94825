// The command-line tool, run as a user would run it (a subprocess each).
import assert from "node:assert/strict";
import { parseSize } from "../cli.ts";
import { QemuStorageDaemon } from "../testing.ts";
import { missing, tempDir } from "./_support.ts";
import { runDeno } from "./_deno.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const decoder = new TextDecoder();

async function cli(
  args: string[],
  stdin?: Uint8Array,
): Promise<{ code: number; stdout: Uint8Array; text: string; stderr: string }> {
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
  return { code: out.code, stdout: out.stdout, text: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

async function withDaemon(fn: (qsd: QemuStorageDaemon) => Promise<void>, size = 4 << 20): Promise<void> {
  const qsd = await QemuStorageDaemon.start({ size });
  try {
    await fn(qsd);
  } finally {
    await qsd.stop();
  }
}

Deno.test("cli: sizes with suffixes", () => {
  assert.equal(parseSize("4096", "x"), 4096);
  assert.equal(parseSize("4k", "x"), 4096);
  assert.equal(parseSize("1M", "x"), 1 << 20);
  assert.equal(parseSize("2g", "x"), 2 * 2 ** 30);
  assert.equal(parseSize("16KiB", "x"), 16384);
  assert.throws(() => parseSize("4x", "--bs"), /--bs must be a byte count/);
  assert.throws(() => parseSize("-1", "--bs"), /negative/);
  assert.throws(() => parseSize("1.5k", "--bs"));
});

Deno.test("cli: bad flags print one line that says what is expected, and exit with status 2", async () => {
  const cases: [string[], RegExp][] = [
    [["fio", "--bogus"], /fio has no flag --bogus/],
    [["fio", "--rw", "sideways"], /--rw must be one of read, write, randread, randwrite, randrw/],
    [["fio", "--bs", "4q"], /--bs must be a byte count/],
    [["fio", "--iodepth", "0"], /--iodepth must be a whole number from 1/],
    [["fio", "--mode", "fast", "--path", "x"], /--mode must be one of poll, eventfd/],
    [["fio", "--runtime", "0"], /--runtime must be a number of seconds greater than 0/],
    [["fio", "--path", "x.sock", "--backend", "file"], /--backend .* does not apply with --path/],
    [["info", "--path", "x", "--queue-size", "2"], /--queue-size must be a power of two from 4 to 32768/],
    [["read", "--path", "x", "--offset", "-1", "--length", "1"], /--offset .* negative/],
    [["read", "--path", "x"], /--length is required/],
    [["read", "--path", "x", "--length", "1", "--input", "f"], /read has no flag --input/],
    [["read", "--path", "x", "--length", "1", "--json"], /--json .* give --output FILE/],
    [["write", "--path", "x", "--output", "f"], /write has no flag --output/],
    [["frobnicate"], /unknown command "frobnicate"/],
    [["info"], /--path is required/],
    [["info", "--path"], /--path needs a value/],
    [["info", "stray"], /unexpected argument "stray"/],
  ];
  for (const [args, want] of cases) {
    const r = await cli(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, `${args.join(" ")}: one line, got ${r.stderr}`);
    assert.match(lines[0], /^error: /);
    assert.match(lines[0], want, args.join(" "));
  }
  const none = await cli([]);
  assert.equal(none.code, 2);
  assert.match(none.text, /usage: deno task <command>/);
});

Deno.test("cli: a permission deno run was not given is one line naming the flag, ERR_PERMISSION, exit status 2", async () => {
  await using tmp = await tempDir();
  const cases: [string[], string[], RegExp][] = [
    [[], ["info", "--path", `${tmp.path}/x.sock`], /needs --allow-ffi/],
    [["--allow-ffi"], ["fio", "--runtime", "1"], /run again with the --allow-write flag \(deno task fio grants/],
    [
      ["--allow-ffi"],
      ["probe", "--path", `${tmp.path}/x.sock`, "--fuzz", "3", "--restart", "true"],
      /--allow-run\b.*\(deno task probe grants/, // Deno words it otherwise under LD_PRELOAD (test:asan)
    ],
  ];
  for (const [perms, args, said] of cases) {
    const out = await runDeno(["run", ...perms, CLI, ...args]);
    assert.equal(out.code, 2, `${args.join(" ")}: ${out.stderr}`);
    const errors = out.stderr.split("\n").filter((l) => l.startsWith("error:"));
    assert.equal(errors.length, 1, out.stderr);
    assert.match(errors[0], said);
    assert.match(errors[0], /\[ERR_PERMISSION\]$/);
    assert.doesNotMatch(out.stderr, /^\s+at /m, "no stack trace");
  }
});

Deno.test("cli: --help is per command: every flag with its default, and examples that name the task", async () => {
  for (const command of ["info", "read", "write", "fio"]) {
    const r = await cli([command, "--help"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.text, new RegExp(`^usage: deno task ${command} `));
    assert.match(r.text, /examples:\n {2}deno task /);
    assert.doesNotMatch(r.text, /\bbench\b/);
  }
  const fio = (await cli(["fio", "--help"])).text;
  for (
    const [flag, def] of [
      ["rw", "randread"],
      ["bs", "4k"],
      ["iodepth", "1"],
      ["runtime", "5"],
      ["ramp", "1"],
      ["api", "batch"],
      ["backend", "null"],
      ["mode", "poll"],
    ]
  ) {
    assert.match(fio, new RegExp(`--${flag} .*\\(default: ${def}\\)`), `--${flag} shows its default`);
  }
  assert.match(fio, /--iodepth N +requests in flight per queue/);
  assert.match(fio, /null-co.*stores nothing/);
});

Deno.test({
  name: "cli: fio prints progress, fio-style read and write lines, and says when the back-end stores nothing",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    const text = await cli([
      "fio",
      "--rw",
      "randrw",
      "--bs",
      "4k",
      "--iodepth",
      "8",
      "--runtime",
      "1.2",
      "--ramp",
      "1",
    ]);
    assert.equal(text.code, 0, text.stderr);
    const progress = text.stderr.split("\n").filter((l) => l.startsWith("["));
    assert.match(
      progress[0],
      /^\[\s*1s\/2\.2s\] [\d.]+[kM]? IOPS, [\d.]+[KMG]iB\/s \([\d.]+[kMG]B\/s\) \(ramp, not measured\)$/,
    );
    assert.ok(progress.slice(1).every((l) => !l.includes("ramp")), `only the ramp is labelled: ${progress}`);
    const summary = text.text;
    assert.match(summary, /^randrw: bs=4k, iodepth=8 per queue, queues=1, mode=poll, api=batch, runtime=1.2s/);
    assert.match(summary, /back-end: private qemu-storage-daemon, null-co/);
    assert.match(summary, /stores nothing/);
    for (const dir of ["read", "write"]) {
      assert.match(
        summary,
        new RegExp(
          `\\n  ${dir}: IOPS=[\\d.]+[kM]?, BW=[\\d.]+[KMG]iB/s \\([\\d.]+[kMG]B/s\\)\\([\\d.]+[KMG]iB/\\d+msec\\)`,
        ),
      );
    }
    assert.match(summary, /lat \(usec\): min=[\d.]+, max=[\d.]+, avg=[\d.]+, stdev=[\d.]+/);
    assert.match(summary, /total: [\d.]+[kM]? I\/Os, [\d.]+[KMG]iB in 1\.2\d s; errors=0/);

    const json = await cli([
      "fio",
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
    assert.equal(json.stderr.split("\n").filter((l) => l.startsWith("[")).length, 0, "no progress lines with --json");
    const r = JSON.parse(json.text);
    assert.equal(r.job.rw, "randrw");
    assert.equal(r.job.bs, 8192);
    assert.equal(r.backend.storesData, true);
    assert.ok(r.read.ios > 0 && r.write.ios > 0 && r.errors === 0);
    assert.equal(r.total.ios, r.read.ios + r.write.ios);
    assert.equal(r.total.bytes, r.total.ios * 8192);
    assert.ok(Math.abs(r.seconds - 0.5) < 0.01, `measured ${r.seconds} s`);
    assert.ok(r.read.latencyUs.p50 > 0 && r.read.latencyUs.max >= r.read.latencyUs.p99 && r.read.latencyUs.stdev >= 0);
  },
});

Deno.test({
  name: "cli: fio at iodepth 1, 86, 87, 128 and 256, both APIs: runs, or refuses naming the limit and the way round",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await withDaemon(async (qsd) => {
      for (const api of ["batch", "promise"]) {
        for (const depth of [1, 86, 87, 128, 256]) {
          const base = ["fio", "--path", qsd.socketPath, "--api", api, "--iodepth", String(depth)];
          const quick = ["--runtime", "0.2", "--ramp", "0", "--json"];
          // A 256-entry ring: 86 plain requests fit (85 direct, one indirect).
          const pinned = await cli([...base, "--queue-size", "256", ...quick]);
          if (depth <= 86) {
            assert.equal(pinned.code, 0, `${api} ${depth}: ${pinned.stderr}`);
            assert.ok(JSON.parse(pinned.text).total.ios > 0);
          } else {
            assert.equal(pinned.code, 2, `${api} ${depth}: ${pinned.stderr}`);
            assert.match(
              pinned.stderr,
              /^error: --iodepth \d+ is more than a queue holds: a ring of 256 entries takes 86 requests .* Use --queue-size \d+ .*--indirect always .*--iodepth 86\n$/,
            );
            assert.doesNotMatch(pinned.stderr, /\n\s+at /, "no stack trace");
          }
          // Without --queue-size the ring is sized from --iodepth: every depth runs.
          const sized = await cli([...base, ...quick]);
          assert.equal(sized.code, 0, `${api} ${depth} (sized): ${sized.stderr}`);
          assert.ok(JSON.parse(sized.text).queueSize >= 3 * depth || depth <= 85);
        }
      }
      // With every request through an indirect table, a 256-entry ring holds 256.
      const indirect = await cli([
        "fio",
        "--path",
        qsd.socketPath,
        "--iodepth",
        "256",
        "--queue-size",
        "256",
        "--indirect",
        "always",
        "--runtime",
        "0.2",
        "--ramp",
        "0",
        "--json",
      ]);
      assert.equal(indirect.code, 0, indirect.stderr);
    });
  },
});

Deno.test({
  name: "cli: info, write and read against a daemon: binary-safe, symmetric about byte ranges, --json honoured",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await withDaemon(async (qsd) => {
      const info = await cli(["info", "--path", qsd.socketPath, "--json"]);
      assert.equal(info.code, 0, info.stderr);
      const i = JSON.parse(info.text);
      assert.equal(i.capacity, 4 << 20);
      assert.equal(i.blockSize, 512);
      assert.ok(i.features.includes("VERSION_1"));

      const data = new Uint8Array(8192).map((_, k) => (k * 13 + 1) & 0xff);
      const w = await cli(["write", "--path", qsd.socketPath, "--offset", "1M"], data);
      assert.equal(w.code, 0, w.stderr);
      assert.equal(w.text, "", "write prints nothing on stdout without --json");
      const r = await cli(["read", "--path", qsd.socketPath, "--offset", String((1 << 20) + 100), "--length", "1000"]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(r.stdout, data.subarray(100, 1100), "any byte range reads back, and nothing else is on stdout");

      // A write at an unaligned offset and length keeps the bytes around it (read-modify-write).
      const patch = new TextEncoder().encode("hello, device");
      const wj = await cli(["write", "--path", qsd.socketPath, "--offset", String((1 << 20) + 510), "--json"], patch);
      assert.equal(wj.code, 0, wj.stderr);
      assert.equal(JSON.parse(wj.text).written, patch.length);
      const expected = data.slice();
      expected.set(patch, 510);
      const image = await Deno.readFile(qsd.imagePath!);
      assert.deepEqual(image.subarray(1 << 20, (1 << 20) + 8192), expected);

      {
        await using tmp = await tempDir();
        const dir = tmp.path;
        const rj = await cli([
          "read",
          "--path",
          qsd.socketPath,
          "--offset",
          "1M",
          "--length",
          "8k",
          "--output",
          `${dir}/o.bin`,
          "--json",
        ]);
        assert.equal(rj.code, 0, rj.stderr);
        const summary = JSON.parse(rj.text);
        assert.equal(summary.read, 8192);
        assert.deepEqual(await Deno.readFile(`${dir}/o.bin`), expected);
      }
      const past = await cli(["read", "--path", qsd.socketPath, "--offset", "4M", "--length", "1"]);
      assert.equal(past.code, 2);
      assert.match(past.stderr, /past the capacity of 4194304 bytes/);
    });
  },
});

Deno.test({
  name: "cli: flags the device cannot take, and missing files, are usage errors naming the flag (exit 2)",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await withDaemon(async (qsd) => {
      const cases: [string[], RegExp][] = [
        [["info", "--path", qsd.socketPath, "--queues", "4"], /--queues 4 is more than the device offers \(1\)/],
        [["fio", "--path", qsd.socketPath, "--bs", "100M"], /--bs 104857600 is larger than the device/],
        [
          ["write", "--path", qsd.socketPath, "--input", "/nonexistent/x.bin"],
          /--input \/nonexistent\/x.bin: no such file/,
        ],
        [
          ["read", "--path", qsd.socketPath, "--length", "1", "--output", "/nonexistent/x"],
          /--output .*: no such file/,
        ],
      ];
      for (const [args, want] of cases) {
        const r = await cli(args);
        assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
        assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
        assert.match(r.stderr, want);
      }
    });
  },
});

Deno.test({
  name: "cli: fio against a back-end that dies: the summary covers the time that ran, exit status 1",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await withDaemon(async (qsd) => {
      const run = cli(["fio", "--path", qsd.socketPath, "--runtime", "10", "--ramp", "0", "--json"]);
      await new Promise((r) => setTimeout(r, 2500));
      await qsd.kill("SIGKILL");
      const r = await run;
      assert.equal(r.code, 1, r.stderr);
      const result = JSON.parse(r.text);
      assert.equal(result.errors, 1, "the first error ends the run");
      assert.match(result.firstError, /hung up|connection/);
      assert.ok(result.seconds > 0.5 && result.seconds < 4, `measured ${result.seconds} s, not the 10 asked for`);
      assert.match(r.stderr, /^error: the run ended at its first error/m);
    });
  },
});
