// Connecting to something that is not a serving vhost-user back-end: the
// error names its cause, and nothing is left open afterwards.
import assert from "node:assert/strict";
import { ConnectFailedError, TimeoutError, VirtioBlk, VirtioError } from "../mod.ts";
import { QemuStorageDaemon } from "../testing.ts";
import { loadShim } from "../src/os/loader.ts";
import { fdCount, missing, tempDir } from "./_support.ts";
import { denoCommand } from "./_deno.ts";

await loadShim();

async function connectError(path: string, requestTimeoutMs = 5000): Promise<VirtioError> {
  try {
    const blk = await VirtioBlk.connect({ transport: "vhost-user", path, requestTimeoutMs });
    await blk.close();
  } catch (e) {
    assert.ok(e instanceof VirtioError, `a typed error, got ${e}`);
    return e;
  }
  throw new Error(`connecting to ${path} succeeded`);
}

Deno.test("connect: a missing path, a regular file, a directory and a dead socket each name their cause", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  await Deno.writeTextFile(`${dir}/file`, "not a socket");
  await Deno.mkdir(`${dir}/dir`);
  // A back-end that died and left its socket behind: killed, it cannot unlink it.
  const child = denoCommand([
    "eval",
    `Deno.listen({ transport: "unix", path: "${dir}/dead.sock" }); console.log("up"); setTimeout(() => {}, 60000);`,
  ], { stdout: "piped" }).spawn();
  const reader = child.stdout.getReader();
  await reader.read(); // "up"
  await reader.cancel();
  child.kill("SIGKILL");
  await child.status;
  const cases: [string, string, RegExp][] = [
    [`${dir}/missing.sock`, "ENOENT", /^no such socket: .*missing\.sock \(ENOENT\)/],
    [`${dir}/file`, "ECONNREFUSED", /^not a socket: .*file is a regular file \(ECONNREFUSED\)/],
    [`${dir}/dir`, "ECONNREFUSED", /^not a socket: .*dir is a directory \(ECONNREFUSED\)/],
    [`${dir}/dead.sock`, "ECONNREFUSED", /^connection refused: .*dead\.sock \(ECONNREFUSED\); nothing listens/],
    [`${dir}/file/below`, "ENOTDIR", /^no such socket: .*below \(ENOTDIR\); a part of the path is not a folder/],
  ];
  const fds = fdCount();
  for (const [path, errno, message] of cases) {
    const e = await connectError(path);
    assert.ok(e instanceof ConnectFailedError, `${path}: ${e.name}`);
    assert.equal(e.code, "ERR_CONNECT_FAILED", "never connected: not ERR_CONNECTION_LOST");
    assert.equal(e.errno, errno);
    assert.equal(e.target, path);
    assert.match(e.message, message);
  }
  assert.equal(fdCount(), fds, "nothing left open");
});

Deno.test("connect: a socket nobody accepts on times out with a message about one front-end at a time", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const listener = Deno.listen({ transport: "unix", path: `${dir}/busy.sock` }); // never accepts
  try {
    const e = await connectError(`${dir}/busy.sock`, 300);
    assert.ok(e instanceof TimeoutError);
    assert.match(e.message, /within 300 ms \(reply to GET_FEATURES\): it accepted the connection but never answered/);
    assert.match(e.message, /serve one front-end at a time: is another program connected to this socket\?/);
  } finally {
    listener.close();
  }
});

Deno.test({
  name: "connect: a second client of a busy qemu-storage-daemon is told why it gets no answer",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await QemuStorageDaemon.start({ size: 1 << 20 });
    await using _first = await VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath });
    const e = await connectError(qsd.socketPath, 500);
    assert.ok(e instanceof TimeoutError);
    assert.match(e.message, /serve one front-end at a time/);
  },
});

Deno.test("connect: control-path timeouts release every descriptor", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const listener = Deno.listen({ transport: "unix", path: `${dir}/silent.sock` });
  const accepted: Deno.UnixConn[] = [];
  const accepting = (async () => {
    for await (const c of listener) accepted.push(c);
  })();
  try {
    // Deno itself opens a socketpair about 0.5 s after start (with its
    // SIGINT/SIGTERM/SIGHUP handlers): count after that, so as to count only ours.
    await new Promise((r) => setTimeout(r, 700));
    const fds = fdCount();
    for (let i = 0; i < 5; i++) {
      assert.ok((await connectError(`${dir}/silent.sock`, 100)) instanceof TimeoutError);
      for (const c of accepted.splice(0)) c.close();
    }
    assert.equal(fdCount(), fds, "no descriptor outlives a timed-out connect");
  } finally {
    listener.close();
    await accepting;
    for (const c of accepted) c.close();
  }
});

Deno.test({
  name: "connect: a socket deeper than sun_path's 108 bytes is reached (108 exactly, 300, a folder path of 3000)",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using tmp = await tempDir("v-");
    const name = "vhost-user-blk.sock";
    // qemu-storage-daemon binds a path of up to 108 bytes (a full sun_path, no NUL).
    const at108 = `${tmp.path}/${"d".repeat(108 - tmp.path.length - 2 - name.length)}`;
    await Deno.mkdir(at108);
    await using qsd = await QemuStorageDaemon.start({ dir: at108, size: 1 << 20 });
    assert.equal(new TextEncoder().encode(qsd.socketPath).length, 108);
    const fds = fdCount();
    const roundTrip = async (path: string, fill: number) => {
      await using blk = await VirtioBlk.connect({ transport: "vhost-user", path });
      const buf = blk.allocBuffer(4096);
      buf.fill(fill);
      await blk.write(0, buf);
      buf.fill(0);
      await blk.read(0, buf);
      assert.equal(buf[4095], fill, path.length.toString());
    };
    await roundTrip(qsd.socketPath, 1);
    // Longer paths than any back-end can bind: the socket is moved there (a
    // bound socket keeps working when renamed).
    for (const [i, total] of [[2, 300], [3, 3000]]) {
      let dir = tmp.path;
      while (dir.length + 1 + name.length < total) {
        dir += `/${"e".repeat(Math.min(200, total - dir.length - name.length - 2))}`;
      }
      await Deno.mkdir(dir, { recursive: true });
      const deep = `${dir}/${name}`;
      assert.equal(deep.length, total);
      await Deno.rename(qsd.socketPath, deep);
      await roundTrip(deep, i);
      await Deno.rename(deep, qsd.socketPath);
    }
    assert.equal(fdCount(), fds, "nothing left open (the folder's descriptor neither)");
    // A name that cannot fit even on its own is refused with the cause.
    const e = await connectError(`${tmp.path}/${"n".repeat(120)}.sock`);
    assert.ok(e instanceof ConnectFailedError);
    assert.equal(e.errno, "ENAMETOOLONG");
    assert.match(e.message, /^socket path too long: .*must stay under about 90 bytes/);
  },
});
