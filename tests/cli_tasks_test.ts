// What a newcomer's first hour tripped on (issue 19), each command run as a
// user runs it: `deno task …` from a shell, output in files, against a
// qemu-storage-daemon this test starts, checking the exit status and the words.
import assert from "node:assert/strict";
import { QemuStorageDaemon } from "../testing.ts";
import { denoTask, firstDifference, imageBytes, interruptTask, missing, type TaskRun, tempDir } from "./_support.ts";

const root = new URL("..", import.meta.url).pathname;
const MiB = 1 << 20;

/** One line on stderr, starting with `error: `. */
function oneErrorLine(r: TaskRun, what: string): string {
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `${what}: one line on stderr, got:\n${r.stderr}`);
  assert.match(lines[0], /^error: /, what);
  assert.doesNotMatch(r.stderr, /\n\s+at /, `${what}: no stack trace`);
  return lines[0];
}

/** A file image with a pattern, exported by a daemon. */
async function patternedDaemon(size = 64 * MiB): Promise<QemuStorageDaemon> {
  const qsd = await QemuStorageDaemon.start({ size });
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i += 4) new DataView(data.buffer).setUint32(i, Math.imul(i + 7, 2654435761));
  await Deno.writeFile(qsd.imagePath!, data);
  return qsd;
}

// ------------------------------------------------------------------ item 2: fio's buffer pool

Deno.test({
  name:
    "deno task fio --bs 64M --iodepth 8 --runtime 1: runs (its pool holds bs × iodepth × queues), private and --path",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    const r = await denoTask(["fio", "--bs", "64M", "--iodepth", "8", "--runtime", "1"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^randread: bs=64M, iodepth=8 per queue/);
    assert.match(r.stdout, /\n {2}read: IOPS=[\d.]+[kM]?, BW=/);
    await using qsd = await QemuStorageDaemon.start({ size: 256 * MiB });
    for (const [bs, depth] of [["64M", "8"], ["4M", "64"]]) {
      const p = await denoTask(["fio", "--path", qsd.socketPath, "--bs", bs, "--iodepth", depth, "--runtime", "1"]);
      assert.equal(p.code, 0, `--bs ${bs} --iodepth ${depth}: ${p.stderr}`);
      assert.match(p.stdout, new RegExp(`^randread: bs=${bs}, iodepth=${depth} per queue`));
      assert.match(p.stdout, /errors=0/);
    }
  },
});

Deno.test({
  name: "deno task fio: a pool beyond the machine's memory is a usage error naming --bs, --iodepth and --queues",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    const r = await denoTask(["fio", "--bs", "1G", "--iodepth", "10000", "--queues", "2"]);
    assert.equal(r.code, 2, r.stderr);
    const line = oneErrorLine(r, "fio --bs 1G --iodepth 10000 --queues 2");
    assert.match(line, /--bs 1G × --iodepth 10000 × --queues 2 needs [\d.]+TiB of buffer memory, more than the /);
    assert.match(line, /lower --bs, --iodepth or --queues$/);
    assert.doesNotMatch(line, /bufferPoolSize/);
  },
});

// ------------------------------------------------------------------ item 3: --iodepth limits

Deno.test({
  name: "deno task fio --iodepth: the real limits (10922; 32768 with --indirect always), said in terms of --iodepth",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    const help = await denoTask(["fio", "--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--iodepth N +requests in flight per queue: 1 to 10922 \(32768 with --indirect always\)/);
    for (
      const [args, max] of [
        [["--iodepth", "32768"], 10922],
        [["--iodepth", "10923"], 10922],
        [["--iodepth", "32769", "--indirect", "always"], 32768],
      ] as const
    ) {
      const r = await denoTask(["fio", ...args]);
      assert.equal(r.code, 2, r.stderr);
      const line = oneErrorLine(r, args.join(" "));
      assert.match(line, new RegExp(`^error: --iodepth must be a whole number from 1 to ${max}, got "${args[1]}"`));
      assert.doesNotMatch(line, /--queue-size/, "not a flag the user gave");
      if (max === 10922) {
        assert.match(line, /with --indirect always a request takes one, and --iodepth may be up to 32768/);
      }
    }
    // The limits hold: the largest depth of each kind runs.
    for (const args of [["--iodepth", "10922"], ["--iodepth", "16384", "--indirect", "always"]]) {
      const r = await denoTask(["fio", ...args, "--runtime", "0.5", "--ramp", "0"]);
      assert.equal(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stdout, new RegExp(`iodepth=${args[1]} per queue`));
    }
  },
});

// ------------------------------------------------------------------ item 4: copy

Deno.test({
  name: "deno task copy: bad offsets and partial blocks are usage errors in the flags' words (exit 2), nothing written",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await patternedDaemon(8 * MiB);
    await using dir = await tempDir(".cli-run-", root);
    await Deno.writeTextFile(`${dir.path}/six.bin`, "hello\n");
    const before = await Deno.readFile(qsd.imagePath!);
    const dev = `vhost-user:${qsd.socketPath}`;
    const cases: [string[], RegExp][] = [
      [
        ["--from", "six.bin", "--to", `${dev}@1`],
        /--to .*@1: the offset must be a multiple of the device's block size 512/,
      ],
      [["--from", "six.bin", "--to", dev], /--from six.bin: its 6 bytes end 6 bytes into a block of 512: give --pad/],
      [["--from", "six.bin", "--to", dev, "--chunk", "1000"], /--chunk must be whole blocks of .* 512 bytes, got 1000/],
      [["--from", `${dev}@9M`, "--to", "x.bin"], /the offset is at or past the device's end \(8388608 bytes\)/],
      [["--from", `${dev}@8M`, "--to", "x.bin"], /the offset is at or past the device's end/],
      [
        ["--from", `${dev}@4M`, "--length", "5M", "--to", "x.bin"],
        /5242880 bytes from offset 4194304 go past the device's end/,
      ],
    ];
    for (const [args, want] of cases) {
      const r = await denoTask(["copy", ...args], { cwd: dir.path });
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      const line = oneErrorLine(r, args.join(" "));
      assert.match(line, want, args.join(" "));
      assert.doesNotMatch(line, /pass pad: true|chunkSize|ERR_INVALID_ARGUMENT/, "the flags' words, not the library's");
    }
    assert.equal(firstDifference(await Deno.readFile(qsd.imagePath!), before), -1, "nothing was written");

    // A pipe that ends inside a block: refused at its end, in the same words.
    const piped = await denoTask(["copy", "--from", "-", "--to", dev], { cwd: dir.path, stdin: `${dir.path}/six.bin` });
    assert.equal(piped.code, 2, piped.stderr);
    assert.match(oneErrorLine(piped, "pipe"), /--from -: the input ended 6 bytes into a block of 512: give --pad/);
  },
});

Deno.test({
  name: "deno task copy: a 6-byte file in with --pad comes back out at its own length; any byte range to stdout",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await patternedDaemon(8 * MiB);
    await using dir = await tempDir(".cli-run-", root);
    const dev = `vhost-user:${qsd.socketPath}`;
    await Deno.writeTextFile(`${dir.path}/six.bin`, "hello\n");
    let r = await denoTask(["copy", "--from", "six.bin", "--to", `${dev}@1M`, "--pad"], { cwd: dir.path });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^copied 6B \(6 bytes\) from six.bin to /);
    r = await denoTask(["copy", "--from", `${dev}@1M`, "--length", "6", "--to", "back.bin"], { cwd: dir.path });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await Deno.readTextFile(`${dir.path}/back.bin`), "hello\n");

    // The issue's own: a range that is no whole number of blocks, to stdout (a file here, as `> part.bin` makes it).
    r = await denoTask(["copy", "--from", `${dev}@4M`, "--length", "3000000", "--to", "-"], { cwd: dir.path });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdoutBytes.length, 3000000);
    assert.equal(firstDifference(r.stdoutBytes, await imageBytes(qsd.imagePath!, 4 * MiB, 3000000)), -1);
    assert.match(r.stderr, /^copied 2.86MiB \(3000000 bytes\) from vhost-user:.*@4M to stdout/);
    r = await denoTask(["copy", "--from", `${dev}@4000001`, "--length", "3000000", "--to", "part.bin", "--verify"], {
      cwd: dir.path,
    });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /verified: the destination reads back the same/);
    assert.equal(
      firstDifference(await Deno.readFile(`${dir.path}/part.bin`), await imageBytes(qsd.imagePath!, 4000001, 3000000)),
      -1,
    );
  },
});

Deno.test({
  name: "Ctrl-C on a piped deno task copy: it says it was interrupted, with what was copied, and exits 130",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await QemuStorageDaemon.start({ size: 64 * MiB });
    // A producer that has written 16 MiB and waits; the Ctrl-C ends it too, and with it the input, which a copy
    // must not take for the end of its work. Signalled once the 16 MiB are on the device.
    const r = await interruptTask(
      [`vhost-user:${qsd.socketPath}`],
      async () => (await imageBytes(qsd.imagePath!, 15 * MiB, MiB)).some((b) => b !== 0),
      { shell: '(head -c 16777216 /dev/urandom; sleep 30) | "$DENO" task copy --from - --to "$1"', timeoutMs: 30_000 },
    );
    assert.equal(r.code, 130, r.stderr);
    assert.match(r.stdout, /^interrupted after copying 16MiB \(16777216 bytes\) from stdin to vhost-user:/);
    assert.doesNotMatch(r.stdout, /^copied/m);
    assert.doesNotMatch(r.stderr, /error/);
  },
});

// ------------------------------------------------------------------ item 5 and sizes: the demo

Deno.test({
  name:
    "Ctrl-C during deno task demo: 'interrupted (SIGINT): stopping', no spurious error, exit 130; sizes as the CLI's",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    for (let attempt = 0; attempt < 3; attempt++) {
      // Signalled while the QD1 measurement runs, requests in flight on the daemon the hook stops.
      const r = await interruptTask(["demo", "--seconds", "10"], (out) => out.includes("read it back: verified"));
      assert.equal(r.code, 130, r.stderr);
      assert.match(r.stdout, /\ninterrupted \(SIGINT\): stopping\n/);
      assert.doesNotMatch(r.stderr, /error/, `try ${attempt + 1}: no error after the interruption`);
      // One style of sizes, the CLI's (info, copy, fio): 256MiB, not 256 MiB.
      assert.match(r.stdout, /on a 256MiB file image/);
      assert.match(r.stdout, /\ncapacity: +268435456 bytes \(256MiB\)\n/);
      assert.match(r.stdout, /\nwrote 1MiB at offset 0, flushed, read it back: verified\n/);
      assert.doesNotMatch(r.stdout, /\d [KMG]iB/);
    }
  },
});

// ------------------------------------------------------------------ item 7: info --watch, the QMP example

Deno.test({
  name: "deno task info --watch on qemu-storage-daemon says once that before 8.1 it announces nothing; exit 130",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await QemuStorageDaemon.start({ size: 8 * MiB });
    const r = await interruptTask(["info", "--path", qsd.socketPath, "--watch"], (_o, err) => err.includes("Ctrl-C"));
    assert.equal(r.code, 130, r.stderr);
    assert.match(r.stderr, /watching for configuration changes \(through the back-end's change messages\)/);
    const notes = r.stderr.split("\n").filter((l) => l.startsWith("note: "));
    assert.equal(notes.length, 1, r.stderr);
    assert.match(notes[0], /qemu-storage-daemon's export, which announces changes from QEMU 8\.1 on: an older one/);
    assert.match(notes[0], /\(README\.md, Device changes\)$/);
    const readme = await Deno.readTextFile(`${root}README.md`);
    assert.match(readme, /\n## Device changes\n[\s\S]*qemu-storage-daemon \*\*8\.1 and later\*\* send the message/);
  },
});

Deno.test({
  name: "README: the QMP resize needs no socat: its deno eval line, run as written, grows the disk",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    const readme = await Deno.readTextFile(`${root}README.md`);
    const line = /`(deno eval '[^`]*qmpExecute\("\/tmp\/qmp\.sock", "block_resize"[^`]*')`/.exec(readme)?.[1];
    assert.ok(line, "the README shows the resize as a deno eval line");
    await using qsd = await QemuStorageDaemon.start({ size: 64 * MiB, qmp: true });
    const out = await new Deno.Command("sh", {
      args: ["-c", line.replace("/tmp/qmp.sock", qsd.qmpPath!).replace(/^deno /, '"$DENO" ')],
      cwd: root,
      env: { DENO: Deno.execPath() },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.equal((await Deno.stat(qsd.imagePath!)).size, 134217728, "block_resize grew the image");
  },
});

// ------------------------------------------------------------------ item 8 and 9: vfio-pci addresses

/** The PCI functions of this machine with their ids, from sysfs. */
function pciFunctions(): { bdf: string; vendor: number; device: number }[] {
  const out: { bdf: string; vendor: number; device: number }[] = [];
  try {
    for (const e of Deno.readDirSync("/sys/bus/pci/devices")) {
      const id = (f: string) => parseInt(Deno.readTextFileSync(`/sys/bus/pci/devices/${e.name}/${f}`).trim(), 16);
      out.push({ bdf: e.name, vendor: id("vendor"), device: id("device") });
    }
  } catch {
    // no PCI here
  }
  return out.sort((a, b) => a.bdf.localeCompare(b.bdf));
}

const VIRTIO_NAMES: Record<number, string> = { 0x1041: "virtio-net", 0x1043: "virtio-console", 0x1044: "virtio-rng" };
const functions = pciFunctions();
/** A function that is not virtio-blk (never a virtio-blk one: those may be this machine's disks). */
const notBlk = functions.find((f) => !(f.vendor === 0x1af4 && (f.device === 0x1042 || f.device === 0x1001)));

Deno.test({
  name: "vfio-pci: a --device that is not virtio-blk is refused, naming what it is (exit 2); nothing is unbound",
  ignore: notBlk === undefined, // a machine without PCI functions
  fn: async () => {
    const f = notBlk!;
    const ids = `${f.vendor.toString(16).padStart(4, "0")}:${f.device.toString(16).padStart(4, "0")}`;
    const driver = () => Deno.readLinkSync(`/sys/bus/pci/devices/${f.bdf}/driver`).split("/").pop();
    const before = (() => {
      try {
        return driver();
      } catch {
        return undefined; // no driver bound
      }
    })();
    for (
      const args of [
        ["info", "--transport", "vfio-pci", "--device", f.bdf],
        ["copy", "--from", `vfio-pci:${f.bdf}`, "--length", "4k", "--to", "-"],
      ]
    ) {
      const r = await denoTask(args);
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      const line = oneErrorLine(r, args.join(" "));
      assert.match(line, new RegExp(`^error: ${f.bdf.replaceAll(".", "\\.")} is ${ids} \\(`));
      assert.match(line, /, not a virtio-blk function \(lspci -nn -d 1af4:1042 and lspci -nn -d 1af4:1001 list/);
      if (VIRTIO_NAMES[f.device] && f.vendor === 0x1af4) {
        assert.match(line, new RegExp(`\\(${VIRTIO_NAMES[f.device]}\\)`));
      }
      assert.equal(r.stdout, "");
    }
    const after = (() => {
      try {
        return driver();
      } catch {
        return undefined;
      }
    })();
    assert.equal(after, before, "its driver binding is untouched");
  },
});

Deno.test("vfio-pci: an address with no function is ERR_CONNECT_FAILED in one line (exit 1), not a readlink trace", async () => {
  let bdf = "0000:ff:1f.7";
  for (let n = 7; functions.some((f) => f.bdf === bdf); n--) bdf = `0000:ff:1f.${n}`;
  const r = await denoTask(["info", "--transport", "vfio-pci", "--device", bdf]);
  assert.equal(r.code, 1, r.stderr);
  const line = oneErrorLine(r, "a missing function");
  assert.match(line, new RegExp(`^error: no PCI function ${bdf.replaceAll(".", "\\.")} on this machine \\(lspci`));
  assert.match(line, /\[ERR_CONNECT_FAILED\]$/);
  assert.doesNotMatch(line, /NotFound|readlink|os error/);
});

// ------------------------------------------------------------------ item 9: the small things

Deno.test({
  name: "deno task probe on a missing socket: could not connect (exit 1, one line, as info), no report",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    for (const command of ["probe", "info"]) {
      const r = await denoTask([command, "--path", "/nonexistent/x.sock"]);
      assert.equal(r.code, 1, `${command}: ${r.stderr}`);
      const line = oneErrorLine(r, command);
      assert.match(line, /^error: no such socket: \/nonexistent\/x\.sock \(ENOENT\).*\[ERR_CONNECT_FAILED\]$/);
      assert.equal(r.stdout, "", `${command}: no report`);
      assert.doesNotMatch(r.stderr, /non-conforming/);
    }
  },
});

Deno.test({
  name: "deno task info: segments without a size limit say so (not 4294967295 bytes); sizes in the CLI's style",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await QemuStorageDaemon.start({ size: 64 * MiB });
    const r = await denoTask(["info", "--path", qsd.socketPath]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /\nsegments +at most 126 per request, of any size \(the device sets no limit\)\n/);
    assert.doesNotMatch(r.stdout, /4294967295/);
    assert.match(r.stdout, /\ncapacity +67108864 bytes \(64MiB\)\n/);
  },
});

Deno.test("the cli task's description and the README's Layout name every command the CLI has", async () => {
  const r = await denoTask(["cli", "--help"]);
  assert.equal(r.code, 0, r.stderr);
  const commands = [...r.stdout.matchAll(/^ {2}(\w+) {2,}\S/gm)].map((m) => m[1]);
  assert.deepEqual(commands, ["info", "read", "write", "fio", "probe", "copy"]);
  const config = JSON.parse(await Deno.readTextFile(`${root}deno.json`));
  assert.equal(config.tasks.cli.description, `the command-line tool: ${commands.join(", ")}`);
  const readme = await Deno.readTextFile(`${root}README.md`);
  const row = /\| `cli\.ts` \(`\.\/cli`\) +\| the command-line tool \(([^)]*)\)/.exec(readme)?.[1];
  assert.equal(row, commands.map((c) => `\`${c}\``).join(", "));
});

Deno.test("what the README's commands leave in the checkout is in .gitignore (part.img, back.img…)", async () => {
  const readme = await Deno.readTextFile(`${root}README.md`);
  const ignored = (await Deno.readTextFile(`${root}.gitignore`)).split("\n").filter((l) => l.startsWith("/"));
  const made = new Set<string>();
  for (const block of readme.matchAll(/```sh\n([\s\S]*?)```/g)) {
    for (const line of block[1].split("\n")) {
      const command = line.replace(/\s+#.*$/, "");
      // Files written in the folder the commands run in: redirections, --to/--output FILE, qemu-img create.
      for (const m of command.matchAll(/(?:>|--to|--output|qemu-img create -f raw) +([\w.-]+\.\w+)\b/g)) made.add(m[1]);
    }
  }
  assert.ok(made.has("part.img") && made.has("back.img") && made.has("disk.img"), [...made].join(" "));
  for (const f of made) assert.ok(ignored.includes(`/${f}`), `${f} is not in .gitignore`);
});

Deno.test("deno task bench runs the bulk benchmark once: deno bench leaves out the scripts the task runs itself", async () => {
  const config = JSON.parse(await Deno.readTextFile(`${root}deno.json`));
  const parts = (config.tasks.bench.command as string).split(" && ");
  const scripts = parts.filter((p) => p.startsWith("deno run ")).map((p) => p.split(" ").pop()!);
  assert.ok(scripts.includes("bench/bulk_bench.ts"), parts.join("\n"));
  const bench = parts.find((p) => p.startsWith("deno bench "))!;
  // What deno bench picks, as the files it type-checks (an empty cache: it names every one).
  await using cache = await tempDir("virtio-deno-dir-");
  const out = await new Deno.Command(Deno.execPath(), {
    args: [...bench.split(" ").slice(1), "--no-run"],
    cwd: root,
    env: { NO_COLOR: "1", DENO_DIR: cache.path },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, text);
  const checked = [...text.matchAll(/^Check (?:file:\/\/\S*\/)?(bench\/\S+\.ts)$/gm)].map((m) => m[1]);
  assert.ok(checked.length >= 3, text);
  for (const s of scripts) assert.ok(!checked.includes(s), `${s} runs in deno bench too (an empty table) and again`);
  for (const f of checked) {
    assert.match(await Deno.readTextFile(`${root}${f}`), /Deno\.bench\(/, `${f} has benchmarks`);
  }
});

Deno.test({
  name: "README: the probe reports it shows take what the probe says it takes (BACKEND_REQ among them)",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await QemuStorageDaemon.start({ size: 64 * MiB });
    const r = await denoTask(["probe", "--path", qsd.socketPath]);
    assert.equal(r.code, 0, r.stderr);
    const taken = /^protocol features +ok +offered: ([^;]*); taken: (.*)$/m.exec(r.stdout);
    assert.ok(taken, r.stdout);
    assert.match(taken[2], /\bBACKEND_REQ\b/);
    const readme = await Deno.readTextFile(`${root}README.md`);
    const sample = readme.split("**qemu-storage-daemon 7.2**")[1].split("```text")[1].split("```")[0];
    assert.ok(sample.includes(`offered: ${taken[1]}; taken: ${taken[2]}\n`), "the README's qemu-storage-daemon sample");
    const dpdk = readme.split("**DPDK 22.11 `vhost_blk` example**")[1].split("```text")[1].split("```")[0];
    assert.match(dpdk, /taken: MQ REPLY_ACK BACKEND_REQ CONFIG\n/, "the README's DPDK sample");
  },
});
