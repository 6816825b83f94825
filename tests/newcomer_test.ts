// What a newcomer meets: Ctrl-C in the middle of a run, and a machine that
// has Deno but not qemu-storage-daemon or a C compiler.
import assert from "node:assert/strict";
import { endedOnSignal, missing, removedOnSignal, type TempDir, tempDir } from "./_support.ts";
import { runDeno } from "./_deno.ts";

const root = new URL("..", import.meta.url).pathname;
const decoder = new TextDecoder();
const INNER = "VIRTIO_NEWCOMER_INNER_RUN";

/** Process ids whose process group is `pgid`. */
function processesInGroup(pgid: number): number[] {
  const pids: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (fields[0] !== "Z" && Number(fields[2]) === pgid) pids.push(Number(e.name));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/**
 * Starts `deno task …` in a process group of its own (as a shell does for a
 * foreground job), with a private TMPDIR, and signals the whole group after
 * `afterMs`. Returns its exit status, output, and what remained 2 s later.
 */
async function interrupt(args: string[], signal: Deno.Signal, afterMs: number) {
  await using dir = await tempDir("virtio-sig-");
  const tmp = dir.path;
  const child = new Deno.Command("setsid", {
    args: [Deno.execPath(), "task", ...args],
    cwd: root,
    env: { TMPDIR: tmp, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  using _onSignal = endedOnSignal(child, { group: true });
  const output = child.output();
  await new Promise((r) => setTimeout(r, afterMs));
  assert.ok(processesInGroup(child.pid).length >= 2, "deno task and its children are running");
  Deno.kill(-child.pid, signal); // the whole group, as Ctrl-C does
  const t0 = performance.now();
  const out = await output;
  const exitMs = performance.now() - t0;
  const left = processesInGroup(child.pid);
  await new Promise((r) => setTimeout(r, Math.max(0, 2000 - (performance.now() - t0))));
  return {
    code: out.code,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
    exitMs,
    left: [...left, ...processesInGroup(child.pid)],
    tmpLeft: [...Deno.readDirSync(tmp)].map((e) => e.name),
  };
}

Deno.test({
  name: "Ctrl-C during deno task fio: the summary so far, no daemon, no temp folder, exit 130",
  ignore: missing("qemu-storage-daemon") || Deno.env.get(INNER) === "1",
  fn: async () => {
    const r = await interrupt(["fio", "--runtime", "30", "--ramp", "1"], "SIGINT", 3000);
    assert.equal(r.code, 130, r.stderr);
    assert.deepEqual(r.left, [], "no process of the group remains (qemu-storage-daemon included)");
    assert.deepEqual(r.tmpLeft, [], "the daemon's temporary folder is gone");
    assert.match(r.stdout, /interrupted: the figures cover the [\d.]+ s measured before the signal/);
    assert.match(r.stdout, /\n {2}read: IOPS=[\d.]+[kM]?, BW=/);
    assert.ok(r.exitMs < 2000, `exited ${r.exitMs.toFixed(0)} ms after the signal`);
  },
});

Deno.test({
  name: "SIGTERM during deno task demo: no daemon, no temp folder, exit 143",
  ignore: missing("qemu-storage-daemon") || Deno.env.get(INNER) === "1",
  fn: async () => {
    const r = await interrupt(["demo", "--seconds", "10"], "SIGTERM", 2500);
    assert.equal(r.code, 143, r.stderr);
    assert.deepEqual(r.left, []);
    assert.deepEqual(r.tmpLeft, []);
    assert.match(r.stdout, /started qemu-storage-daemon/);
  },
});

Deno.test({
  name: "a user's program with a QemuStorageDaemon, interrupted: the daemon and its folder go, exit 130",
  ignore: missing("qemu-storage-daemon") || Deno.env.get(INNER) === "1",
  fn: async () => {
    const script = `${root}.readme-example-signal.ts`;
    using _removed = removedOnSignal(script);
    await Deno.writeTextFile(
      script,
      `import { QemuStorageDaemon } from "./testing.ts";
       const qsd = await QemuStorageDaemon.start({ size: 1 << 20 });
       console.log("started", qsd.dir);
       await new Promise((r) => setTimeout(r, 60_000));
       await qsd.stop();`,
    );
    try {
      await using dir = await tempDir();
      const tmp = dir.path;
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", script],
        env: { TMPDIR: tmp },
        stdout: "piped",
      }).spawn();
      using _onSignal = endedOnSignal(child);
      const reader = child.stdout.getReader();
      const line = decoder.decode((await reader.read()).value);
      await reader.cancel();
      assert.match(line, /^started /);
      assert.equal([...Deno.readDirSync(tmp)].length, 1, "the daemon's folder exists");
      child.kill("SIGINT");
      const status = await child.status;
      assert.equal(status.code, 130);
      assert.deepEqual([...Deno.readDirSync(tmp)].map((e) => e.name), [], "its folder is gone");
      const running = (await new Deno.Command("pgrep", { args: ["-f", tmp] }).output()).stdout;
      assert.equal(decoder.decode(running), "", "no daemon of that folder is running");
    } finally {
      await Deno.remove(script);
    }
  },
});

/** A PATH with every program of the current one except `without` (symlinks in a new folder). */
async function strippedPath(without: RegExp): Promise<TempDir> {
  const folder = await tempDir("virtio-path-");
  const bin = folder.path;
  const seen = new Set<string>();
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(dir)];
    } catch {
      continue;
    }
    for (const e of entries) {
      if (seen.has(e.name) || without.test(e.name)) continue;
      seen.add(e.name);
      await Deno.symlink(`${dir}/${e.name}`, `${bin}/${e.name}`);
    }
  }
  return folder;
}

const COMPILERS = /^(cc|c89|c99|gcc|clang|tcc|x86_64-linux-gnu-gcc.*|aarch64-linux-gnu-gcc.*|gcc-\d+|clang-\d+)$/;

Deno.test({
  name: "demo run with --allow-ffi alone says it is the permission, not the daemon, that is missing",
  ignore: Deno.env.get(INNER) === "1",
  fn: async () => {
    const out = await runDeno(["run", "--allow-ffi", "demo.ts", "--seconds", "0.2"], {
      cwd: root,
      env: { NO_COLOR: "1" },
    });
    const stdout = out.stdout;
    assert.equal(out.code, 0, out.stderr);
    assert.match(stdout, /^without --allow-run the demo cannot start qemu-storage-daemon: running on the .*mock/);
    assert.match(stdout, /^For the real thing: deno task demo \(it runs with -A/m);
    assert.doesNotMatch(stdout, /not found|apt-get/);
  },
});

Deno.test({
  name: "deno task demo with only Deno (no qemu-storage-daemon, no C compiler) runs on the mock device and says so",
  ignore: Deno.env.get(INNER) === "1",
  fn: async () => {
    await using path = await strippedPath(new RegExp(`${COMPILERS.source}|^qemu-storage-daemon$`));
    await using shimCache = await tempDir();
    const bin = path.path, cache = shimCache.path;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["task", "demo", "--seconds", "0.2"],
      cwd: root,
      // An empty shim cache: nothing prebuilt to fall back on.
      env: { PATH: bin, VIRTIO_SHIM_CACHE: cache, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = decoder.decode(out.stdout), stderr = decoder.decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    assert.match(stdout, /^qemu-storage-daemon not found: running on the in-process mock device instead/);
    assert.match(stdout, /For the real thing: apt-get install qemu-system-common qemu-utils$/m);
    assert.match(stdout, /wrote 1MiB at offset 0, flushed, read it back: verified/);
    assert.doesNotMatch(stderr, /\n\s+at /, "no stack trace");

    // The commands that need the real thing say what to install, in one line.
    const fio = await new Deno.Command(Deno.execPath(), {
      args: ["task", "fio", "--runtime", "1"],
      cwd: root,
      env: { PATH: bin, VIRTIO_SHIM_CACHE: cache, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(fio.code, 1);
    const lines = decoder.decode(fio.stderr).trim().split("\n").filter((l) => !l.startsWith("Task "));
    assert.equal(lines.length, 1, lines.join("\n"));
    assert.match(lines[0], /^error: .*not found: install it \(Debian\/Ubuntu: apt-get install qemu-system-common/);
  },
});

Deno.test({
  name: "deno task demo with qemu-storage-daemon but no C compiler runs on the real daemon (the prebuilt shim)",
  ignore: Deno.env.get(INNER) === "1" || missing("qemu-storage-daemon"),
  fn: async () => {
    await using path = await strippedPath(COMPILERS);
    await using shimCache = await tempDir();
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["task", "demo", "--seconds", "0.2"],
      cwd: root,
      // An empty cache for builds from source: the shim must come from the package itself.
      env: { PATH: path.path, VIRTIO_SHIM_CACHE: shimCache.path, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = decoder.decode(out.stdout), stderr = decoder.decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    assert.match(stdout, /started qemu-storage-daemon/);
    assert.match(stdout, /wrote 1MiB at offset 0, flushed, read it back: verified/);
    assert.deepEqual([...Deno.readDirSync(shimCache.path)], [], "nothing was built");
  },
});

Deno.test({
  name: "deno task test without qemu-storage-daemon passes and names what it skipped",
  ignore: Deno.env.get(INNER) === "1",
  fn: async () => {
    await using path = await strippedPath(/^qemu-storage-daemon$/);
    const bin = path.path;
    const env: Record<string, string> = { ...Deno.env.toObject(), PATH: bin, [INNER]: "1", NO_COLOR: "1" };
    delete env.VIRTIO_REQUIRE_ALL; // CI refuses skips; this run is about them
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["task", "test"],
      cwd: root,
      env,
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = decoder.decode(out.stdout) + decoder.decode(out.stderr);
    assert.equal(out.code, 0, text.slice(-3000));
    assert.match(text, /\| \d+ passed \| 0 failed \| \d+ ignored/);
    assert.match(
      text,
      /SKIPPED \d+ tests, for want of:\n +\d+ need qemu-storage-daemon: apt-get install qemu-system-common qemu-utils/,
    );
  },
});
