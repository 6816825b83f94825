// The native shim's loader, run as a user runs it: a child Deno with exactly
// the permissions a program would have. The prebuilt shim must load with
// --allow-ffi alone and no compiler; a missing --allow-ffi is ERR_PERMISSION;
// a damaged prebuilt is refused; an edited shim.c is built from source.
import assert from "node:assert/strict";
import { missing, tempDir } from "./_support.ts";
import { denoArgv, denoEnv, EMULATED, runDeno } from "./_deno.ts";
import { QemuStorageDaemon } from "../testing.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const DENO_DIR = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`;

/** A probe script: loads the shim through `loader` and prints where it came from, or the error. */
function probeScript(loader: string, extra = ""): string {
  return `import { loadShim, shimOrigin } from ${JSON.stringify(loader)};
try {
  await loadShim();
  console.log("origin", shimOrigin());
  ${extra}
} catch (e) {
  console.log("error", e.name, e.code, e.flag ?? "-", e.message);
  Deno.exit(3);
}
`;
}

/** Runs `script` in a child with `flags`, no compiler on PATH unless `path` says otherwise. */
async function run(dir: string, script: string, flags: string[], env: Record<string, string> = {}) {
  await Deno.writeTextFile(`${dir}/probe.ts`, script);
  return await runDeno(["run", "--no-lock", "--no-check", ...flags, `${dir}/probe.ts`], {
    env: { PATH: "/nonexistent", HOME: `${dir}/home`, DENO_DIR, NO_COLOR: "1", ...env },
    clearEnv: true,
  });
}

/** A copy of the package's src/ (and entry points), to break or edit without touching the checkout. */
async function copyPackage(to: string): Promise<void> {
  const copy = async (from: string, dest: string) => {
    for await (const e of Deno.readDir(from)) {
      if (e.isDirectory) {
        await Deno.mkdir(`${dest}/${e.name}`);
        await copy(`${from}/${e.name}`, `${dest}/${e.name}`);
      } else await Deno.copyFile(`${from}/${e.name}`, `${dest}/${e.name}`);
    }
  };
  await Deno.mkdir(`${to}/src`);
  await copy(`${ROOT}src`, `${to}/src`);
  for (const f of ["mod.ts", "testing.ts", "advanced.ts"]) await Deno.copyFile(`${ROOT}${f}`, `${to}/${f}`);
}

Deno.test("shim: the prebuilt shim loads with --allow-ffi alone and no compiler, writes nothing, and its relay wakes", async () => {
  await using dir = await tempDir("virtio-loader-");
  await Deno.mkdir(`${dir.path}/home`);
  const before = [...Deno.readDirSync(`${ROOT}build`).map((e) => e.name)].sort();
  const r = await run(
    dir.path,
    probeScript(
      `${ROOT}src/os/loader.ts`,
      `const { Waker } = await import(${JSON.stringify(`${ROOT}src/transport/waker.ts`)});
  const { eventfd, eventfdSignal } = await import(${JSON.stringify(`${ROOT}src/os/eventfd.ts`)});
  const waker = await Waker.forQueues([]);
  const fd = eventfd();
  waker.watchEventfd(fd, 7);
  setTimeout(() => eventfdSignal(fd), 20);
  await waker.wait();
  await waker.close();
  console.log("relay woke");`,
    ),
    ["--allow-ffi"],
  );
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /origin prebuilt/);
  assert.match(r.stdout, /relay woke/);
  assert.doesNotMatch(r.stderr, /NotCapable|Warning/);
  assert.deepEqual([...Deno.readDirSync(`${dir.path}/home`)], [], "nothing written under HOME");
  assert.deepEqual([...Deno.readDirSync(`${ROOT}build`).map((e) => e.name)].sort(), before, "nothing built");
});

Deno.test({
  name: "shim: in a terminal, loading the shim and its relay asks for no permission beyond --allow-ffi (no prompt)",
  fn: async () => {
    await using dir = await tempDir("virtio-loader-");
    await Deno.mkdir(`${dir.path}/home`);
    await Deno.writeTextFile(
      `${dir.path}/probe.ts`,
      probeScript(`${ROOT}src/os/loader.ts`, `console.log("loaded without a prompt");`),
    );
    // A prompt goes to the terminal only: script(1) gives the child one, and nobody answers.
    const argv = denoArgv(["run", "--no-lock", "--no-check", "--allow-ffi", `${dir.path}/probe.ts`]);
    const quoted = argv.map((a) => `'${a.replaceAll("'", `'\\''`)}'`).join(" ");
    const out = await new Deno.Command("script", {
      args: ["-qec", quoted, "/dev/null"],
      env: denoEnv({
        PATH: "/usr/bin:/bin", // script(1) is Debian's bsdutils, an essential package
        HOME: `${dir.path}/home`,
        DENO_DIR,
        NO_COLOR: "1",
        TERM: "dumb",
      }),
      clearEnv: true,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(EMULATED ? 60_000 : 20_000), // a prompt waits for an answer that never comes
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.doesNotMatch(text, /Deno requests|Allow\?/, text);
    assert.match(text, /origin prebuilt/, text);
    assert.match(text, /loaded without a prompt/, text);
  },
});

Deno.test("shim: without --allow-ffi a real device is ERR_PERMISSION naming the flag, never a NotCapable trace", async () => {
  await using dir = await tempDir("virtio-loader-");
  const r = await run(
    dir.path,
    `import { VirtioBlk } from ${JSON.stringify(`${ROOT}mod.ts`)};
try {
  await VirtioBlk.connect({ transport: "vhost-user", path: "/nonexistent.sock" });
} catch (e) {
  console.log(e.name, e.code, e.flag);
}
await VirtioBlk.connect({ transport: "vhost-user", path: "/nonexistent.sock" }); // uncaught: what a user sees
`,
    [],
  );
  assert.notEqual(r.code, 0);
  assert.match(r.stdout, /^PermissionError ERR_PERMISSION --allow-ffi$/m);
  assert.match(r.stderr, /PermissionError: .*needs --allow-ffi/);
  assert.doesNotMatch(r.stderr, /NotCapable/);
});

Deno.test("shim: the mock device needs no permission at all", async () => {
  await using dir = await tempDir("virtio-loader-");
  const r = await run(
    dir.path,
    `import { VirtioBlk } from ${JSON.stringify(`${ROOT}mod.ts`)};
import { MockBlkDevice } from ${JSON.stringify(`${ROOT}testing.ts`)};
const device = new MockBlkDevice({ capacity: 1 << 20 });
await using blk = await VirtioBlk.connect({ transport: "mock", device });
await blk.write(4096, new Uint8Array(4096).fill(9));
const back = new Uint8Array(4096);
await blk.read(4096, back);
console.log("mock", back.every((b) => b === 9));
`,
    [],
  );
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /mock true/);
});

Deno.test("shim: a prebuilt shim whose bytes do not match the pinned SHA-256 is never loaded", async () => {
  await using dir = await tempDir("virtio-loader-");
  await copyPackage(dir.path);
  const arch = Deno.build.arch === "aarch64" ? "linux_aarch64.ts" : "linux_x86_64.ts";
  const module = `${dir.path}/src/os/prebuilt/${arch}`;
  const text = await Deno.readTextFile(module);
  const at = text.indexOf('  "') + 200; // inside the base64, past the ELF header
  const flipped = text[at] === "A" ? "B" : "A";
  await Deno.writeTextFile(module, text.slice(0, at) + flipped + text.slice(at + 1));
  const r = await run(dir.path, probeScript(`${dir.path}/src/os/loader.ts`), ["--allow-ffi"]);
  assert.equal(r.code, 3, r.stdout + r.stderr);
  assert.match(r.stdout, /error ShimLoadError ERR_SHIM_LOAD - .*does not match its pinned SHA-256/);
});

Deno.test({
  name: "shim: an edited shim.c is built from source into the cache once; VIRTIO_SHIM_PATH is honoured when readable",
  ignore: missing("c-compiler"),
  fn: async () => {
    await using dir = await tempDir("virtio-loader-");
    await copyPackage(dir.path);
    await Deno.mkdir(`${dir.path}/home`);
    await Deno.writeTextFile(`${dir.path}/src/os/shim.c`, "\n/* edited */\n", { append: true });
    const loader = `${dir.path}/src/os/loader.ts`;
    const cache = `${dir.path}/cache`;
    // $CC names the compiler for this platform where `cc` builds for another (CI's aarch64 stage).
    const compiler = Deno.env.get("CC");
    const cc = {
      PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
      VIRTIO_SHIM_CACHE: cache,
      ...(compiler ? { CC: compiler } : {}),
    };

    // Without the permission to read shim.c the edit is not seen: the prebuilt shim, as a registry user gets.
    const ffiOnly = await run(dir.path, probeScript(loader), ["--allow-ffi"], cc);
    assert.match(ffiOnly.stdout, /origin prebuilt/, ffiOnly.stdout + ffiOnly.stderr);

    // Seen, but building needs more than reading: the error names the next flag.
    const readOnly = await run(dir.path, probeScript(loader), ["--allow-ffi", "--allow-read"], cc);
    assert.equal(readOnly.code, 3, readOnly.stdout + readOnly.stderr);
    assert.match(
      readOnly.stdout,
      /error PermissionError ERR_PERMISSION --allow-run building the native shim from source/,
    );

    const built = await run(dir.path, probeScript(loader), ["-A"], cc);
    assert.equal(built.code, 0, built.stdout + built.stderr);
    assert.match(built.stdout, /origin source/);
    const builds = [...Deno.readDirSync(cache)];
    assert.equal(builds.length, 1, "one build, keyed by the source hash");
    const so = `${cache}/${builds[0].name}/libvirtio_shim.so`;
    const mtime = Deno.statSync(so).mtime!.getTime();
    const again = await run(dir.path, probeScript(loader), ["-A"], cc);
    assert.match(again.stdout, /origin source/);
    assert.equal(Deno.statSync(so).mtime!.getTime(), mtime, "the cached build is reused");

    const noCc = await run(dir.path, probeScript(loader), ["-A"], { VIRTIO_SHIM_CACHE: `${dir.path}/cache2` });
    assert.equal(noCc.code, 3);
    assert.match(noCc.stdout, /error ShimLoadError ERR_SHIM_LOAD - .*no C compiler.*VIRTIO_SHIM_PATH/);

    const explicit = await run(dir.path, probeScript(loader), ["-A"], { VIRTIO_SHIM_PATH: so });
    assert.match(explicit.stdout, /origin path/, explicit.stdout + explicit.stderr);
    const wrong = await run(dir.path, probeScript(loader), ["-A"], { VIRTIO_SHIM_PATH: `${dir.path}/nope.so` });
    assert.equal(wrong.code, 3);
    assert.match(wrong.stdout, /error ShimLoadError ERR_SHIM_LOAD - cannot load the native shim from/);
    // Without --allow-env the variable is not read (and not asked for): the prebuilt shim.
    const unread = await run(dir.path, probeScript(loader), ["--allow-ffi"], {
      VIRTIO_SHIM_PATH: `${dir.path}/nope.so`,
    });
    assert.match(unread.stdout, /origin prebuilt/);
  },
});

Deno.test({
  name: "shim: a program using a real device needs --allow-ffi and nothing else (1 MiB written and read back)",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using dir = await tempDir("virtio-loader-");
    await using qsd = await QemuStorageDaemon.start({ size: 16 << 20 });
    for (const mode of EMULATED ? ["eventfd"] : ["eventfd", "poll"]) {
      const r = await run(
        dir.path,
        `import { VirtioBlk } from ${JSON.stringify(`${ROOT}mod.ts`)};
await using blk = await VirtioBlk.connect({
  transport: "vhost-user",
  path: ${JSON.stringify(qsd.socketPath)},
  mode: ${JSON.stringify(mode)},
});
const out = blk.allocBuffer(1 << 20);
for (let i = 0; i < out.length; i++) out[i] = (i * 7 + 3) & 0xff;
await blk.write(0, out);
const back = blk.allocBuffer(1 << 20);
await blk.read(0, back);
console.log("verified", back.every((b, i) => b === out[i]));
`,
        ["--allow-ffi"],
      );
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /verified true/, mode);
    }
  },
});
