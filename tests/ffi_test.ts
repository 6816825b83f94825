import assert from "node:assert/strict";
import { loadShim } from "../src/os/loader.ts";
import { eventfd, eventfdSignal } from "../src/os/eventfd.ts";
import { closeFd } from "../src/os/syscalls.ts";
import { unixConnect } from "../src/os/unix_socket.ts";
import { Waker } from "../src/transport/waker.ts";

await loadShim();

const ROOT = new URL("..", import.meta.url).pathname;

Deno.test("waker: an eventfd signal wakes the event loop and names its token", async () => {
  const waker = await Waker.forQueues([]);
  const efd = eventfd();
  try {
    waker.watchEventfd(efd, 3);
    waker.watchEventfd(efd, 40); // same descriptor, second token: the waker holds its own duplicates
    let woke = false;
    const waiting = waker.wait().then(() => (woke = true));
    await new Promise((r) => setTimeout(r, 10));
    assert.equal(woke, false, "nothing fired yet");
    eventfdSignal(efd);
    await waiting;
    assert.equal(woke, true, "the signal woke the wait");
    assert.equal(waker.hungUp, false);
  } finally {
    closeFd(efd); // closing our copy first is safe: the thread reads only its duplicates
    await waker.close();
  }
});

Deno.test("waker: a socket hang-up is seen without a system call", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/s`;
  const listener = Deno.listen({ transport: "unix", path });
  const waker = await Waker.forQueues([]);
  const fd = unixConnect(path);
  assert.ok(fd >= 0);
  try {
    const peer = await listener.accept();
    waker.watchHangup(fd, 100);
    const waiting = waker.wait();
    assert.equal(waker.hungUp, false);
    peer.close();
    await waiting;
    assert.equal(waker.hungUp, true);
  } finally {
    closeFd(fd);
    listener.close();
    await waker.close();
    await Deno.remove(dir, { recursive: true });
  }
});

async function runLoader(env: Record<string, string>, dir: string): Promise<{ ok: boolean; out: string }> {
  const script = `${dir}/probe.ts`;
  await Deno.writeTextFile(
    script,
    `import { isShimLoaded, loadShim } from "./os/loader.ts";
     try { await loadShim(); console.log("loaded", isShimLoaded()); }
     catch (e) { console.log(e.name, e.code, e.message); Deno.exit(3); }`,
  );
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-lock", script],
    env,
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { ok: out.success, out: new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr) };
}

Deno.test("loader: builds into the cache once, honours VIRTIO_SHIM_PATH, explains a missing compiler", async () => {
  // A copy of the loader with no build folder beside it, as a registry import would be.
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/os`);
    for (const f of ["loader.ts", "symbols.ts", "shim.c"]) await Deno.copyFile(`${ROOT}src/os/${f}`, `${dir}/os/${f}`);
    await Deno.copyFile(`${ROOT}src/errors.ts`, `${dir}/errors.ts`);
    const base = {
      PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
      HOME: dir,
      DENO_DIR: Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`,
    };

    const first = await runLoader({ ...base, VIRTIO_SHIM_CACHE: `${dir}/cache` }, dir);
    assert.ok(first.ok, first.out);
    assert.match(first.out, /loaded true/);
    const built = [...Deno.readDirSync(`${dir}/cache`)];
    assert.equal(built.length, 1, "one build, keyed by the source hash");
    const so = `${dir}/cache/${built[0].name}/libvirtio_shim.so`;
    const mtime = Deno.statSync(so).mtime!.getTime();
    const second = await runLoader({ ...base, VIRTIO_SHIM_CACHE: `${dir}/cache` }, dir);
    assert.ok(second.ok, second.out);
    assert.equal(Deno.statSync(so).mtime!.getTime(), mtime, "the cached build is reused");

    const explicit = await runLoader({ ...base, VIRTIO_SHIM_PATH: so }, dir);
    assert.ok(explicit.ok, explicit.out);
    const wrong = await runLoader({ ...base, VIRTIO_SHIM_PATH: `${dir}/nope.so` }, dir);
    assert.equal(wrong.ok, false);
    assert.match(wrong.out, /ShimLoadError ERR_SHIM_LOAD/);

    const noCc = await runLoader({
      PATH: "/nonexistent",
      HOME: dir,
      DENO_DIR: base.DENO_DIR,
      VIRTIO_SHIM_CACHE: `${dir}/cache2`,
    }, dir);
    assert.equal(noCc.ok, false);
    assert.match(noCc.out, /no C compiler/);
    assert.match(noCc.out, /VIRTIO_SHIM_PATH/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
