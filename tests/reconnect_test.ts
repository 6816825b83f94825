// A back-end restart with `reconnect` on: requests in flight are kept and
// resubmitted (nothing rejects, the data lands), the batch API refuses new
// work with ERR_RECONNECTING meanwhile, promise requests wait, a back-end
// that comes back different or not at all fails everything with a typed
// error in bounded time, and cycles leak nothing.
import assert from "node:assert/strict";
import {
  type CompletionMode,
  ConnectionLostError,
  IncompatibleDeviceError,
  InvalidArgumentError,
  ReconnectingError,
  VirtioBlk,
} from "../mod.ts";
import { QemuStorageDaemon } from "../testing.ts";
import { loadShim } from "../src/os/loader.ts";
import {
  awaitedLater,
  fdCount,
  imageBytes,
  memfdMappings,
  missing,
  nextEvent,
  stopProcess,
  tempDir,
} from "./_support.ts";

await loadShim();

const MiB = 1 << 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

for (const mode of ["eventfd", "poll"] as CompletionMode[]) {
  Deno.test({
    name: `reconnect (${mode}): SIGKILL with 64 requests in flight, restart after 200 ms → none rejects, all land`,
    ignore: missing("qemu-storage-daemon"),
    fn: async () => {
      await using qsd = await QemuStorageDaemon.start({ size: 16 * MiB });
      await using blk = await VirtioBlk.connect({
        transport: "vhost-user",
        path: qsd.socketPath,
        mode,
        numQueues: 1,
        reconnect: { timeoutMs: 10_000 },
      });
      const disconnected = nextEvent(blk, "disconnect", 10_000);
      const reconnected = nextEvent(blk, "reconnect", 10_000);
      await stopProcess(qsd.pid); // frozen: what is submitted now stays in flight
      const bufs = Array.from({ length: 64 }, (_, i) => blk.allocBuffer(4096).fill(i + 1));
      const settling = Promise.allSettled(bufs.map((b, i) => blk.write(i * 4096, b)));
      await sleep(20);
      await qsd.kill();
      const d = await disconnected;
      assert.equal(d.inFlight, 64);
      assert.ok(d.error instanceof ConnectionLostError);
      await sleep(200);
      await qsd.restart();
      const r = await reconnected;
      assert.equal(r.resubmitted, 64);
      assert.ok(r.attempts >= 1 && r.downtimeMs >= 200, JSON.stringify(r));
      const settled = await settling;
      assert.deepEqual(settled.filter((s) => s.status === "rejected"), []);
      await blk.flush();
      for (let i = 0; i < 64; i++) {
        assert.ok((await imageBytes(qsd.imagePath!, i * 4096, 4096)).every((b) => b === i + 1), `block ${i}`);
      }
      const s = blk.connectionStats();
      assert.deepEqual([s.state, s.reconnects, s.resubmitted], ["connected", 1, 64]);
    },
  });
}

Deno.test({
  name:
    "reconnect: meanwhile the batch API refuses new work (ERR_RECONNECTING), promise requests wait; batch requests in flight complete",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await QemuStorageDaemon.start({ size: 16 * MiB });
    await using blk = await VirtioBlk.connect({
      transport: "vhost-user",
      path: qsd.socketPath,
      reconnect: { timeoutMs: 10_000 },
    });
    const q = blk.queue<number>(0);
    await stopProcess(qsd.pid);
    const inFlight = Array.from({ length: 8 }, () => blk.allocBuffer(4096).fill(0x77));
    inFlight.forEach((b, i) => q.write(i * 4096, b, i));
    q.submit();
    await sleep(20);
    const disconnected = nextEvent(blk, "disconnect", 10_000);
    await qsd.kill();
    await disconnected;
    const extra = blk.allocBuffer(4096);
    assert.throws(
      () => q.read(0, extra, 99),
      (e: Error) => e instanceof ReconnectingError && e.code === "ERR_RECONNECTING",
    );
    const waiting = awaitedLater(blk.read(0, extra)); // waits for the back-end
    assert.equal(blk.connectionStats().state, "reconnecting");
    await qsd.restart();
    await waiting;
    assert.ok(extra.every((b) => b === 0x77), "the wait ran after the resubmitted writes");
    const done: number[] = [];
    for await (const c of q.completions()) {
      assert.equal(c.error, undefined);
      done.push(c.context);
    }
    assert.deepEqual(done.sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7]);
    q.read(0, extra, 100); // accepted again
    q.submit();
    for await (const c of q.completions()) assert.equal(c.context, 100);
  },
});

Deno.test({
  name: "reconnect: a flush in flight goes out again only after the writes before it completed again",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await QemuStorageDaemon.start({ size: 16 * MiB });
    await using blk = await VirtioBlk.connect({
      transport: "vhost-user",
      path: qsd.socketPath,
      numQueues: 1,
      reconnect: { timeoutMs: 10_000 },
    });
    await stopProcess(qsd.pid);
    const order: string[] = [];
    const reqs = awaitedLater(Promise.all([
      ...Array.from(
        { length: 16 },
        (_, i) => blk.write(i * 65536, blk.allocBuffer(65536).fill(i)).then(() => order.push(`w${i}`)),
      ),
      blk.flush().then(() => order.push("flush")),
      blk.write(32 * 65536, blk.allocBuffer(4096)).then(() => order.push("after")),
    ]));
    await sleep(20);
    await qsd.kill();
    await sleep(50);
    await qsd.restart();
    await reqs;
    const flushAt = order.indexOf("flush");
    assert.equal(order.slice(0, flushAt).filter((x) => x.startsWith("w")).length, 16, order.join(" "));
  },
});

/**
 * Open descriptors of the kinds the driver opens (sockets, eventfds, memfds,
 * epoll): the daemon's log file, pipes and pidfd close when it is killed.
 */
function driverFds(): number {
  let n = 0;
  for (const e of Deno.readDirSync("/proc/self/fd")) {
    try {
      const target = Deno.readLinkSync(`/proc/self/fd/${e.name}`);
      if (/^socket:|^anon_inode:\[(eventfd|eventpoll)\]|^\/memfd:/.test(target)) n++;
    } catch {
      // closed meanwhile (the directory's own descriptor)
    }
  }
  return n;
}

/** Starts a daemon in a folder of the test's own, so that a different one can take its socket. */
async function inFolder(fn: (dir: string) => Promise<void>): Promise<void> {
  await using dir = await tempDir("virtio-reconnect-");
  await fn(dir.path);
}

for (
  const [what, second] of [
    ["a different block size", { logicalBlockSize: 4096 }],
    ["a smaller capacity", { size: 8 * MiB, fresh: true }],
    ["read-only", { writable: false }],
  ] as const
) {
  Deno.test({
    name: `reconnect: a back-end that comes back with ${what} → IncompatibleDeviceError for everything, nothing hangs`,
    ignore: missing("qemu-storage-daemon"),
    fn: () =>
      inFolder(async (dir) => {
        const first = await QemuStorageDaemon.start({ dir, size: 16 * MiB });
        let other: QemuStorageDaemon | undefined;
        try {
          const blk = await VirtioBlk.connect({
            transport: "vhost-user",
            path: first.socketPath,
            reconnect: { timeoutMs: 10_000 },
          });
          try {
            await stopProcess(first.pid);
            const pending = Array.from({ length: 8 }, (_, i) => blk.write(i * 4096, blk.allocBuffer(4096)));
            // Handled from the start: the driver may see the other back-end and
            // reject them all while start() below is still waiting for it.
            const settling = Promise.allSettled(pending);
            await sleep(20);
            await first.kill();
            const { fresh, ...options } = { fresh: false, ...second };
            other = await QemuStorageDaemon.start({ dir, image: fresh ? undefined : first.imagePath, ...options });
            const t0 = performance.now();
            const settled = await settling;
            assert.ok(performance.now() - t0 < 5000);
            for (const s of settled) {
              assert.equal(s.status, "rejected");
              assert.ok(
                (s as PromiseRejectedResult).reason instanceof IncompatibleDeviceError,
                String((s as PromiseRejectedResult).reason),
              );
            }
            await assert.rejects(blk.read(0, blk.allocBuffer(4096)), IncompatibleDeviceError);
            assert.equal(blk.connectionStats().state, "lost");
          } finally {
            await blk.close();
          }
        } finally {
          await other?.stop();
          await first.stop();
        }
      }),
  });
}

Deno.test({
  name: "reconnect: a back-end that never comes back → everything pending rejects within timeoutMs + 1 s",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await QemuStorageDaemon.start({ size: 16 * MiB });
    const blk = await VirtioBlk.connect({
      transport: "vhost-user",
      path: qsd.socketPath,
      reconnect: { timeoutMs: 1000, backoffMs: 20 },
    });
    await stopProcess(qsd.pid);
    const pending = Array.from({ length: 16 }, (_, i) => blk.write(i * 4096, blk.allocBuffer(4096)));
    const settling = Promise.allSettled(pending); // handled from the start, however soon they fail
    await sleep(20);
    const t0 = performance.now();
    await qsd.kill();
    const waiting = blk.read(0, blk.allocBuffer(4096)); // queued while reconnecting
    const settled = [...await settling, ...await Promise.allSettled([waiting])];
    const ms = performance.now() - t0;
    assert.ok(ms < 2000, `${ms.toFixed(0)} ms`);
    for (const s of settled) assert.ok((s as PromiseRejectedResult).reason instanceof ConnectionLostError);
    assert.equal(blk.connectionStats().state, "lost");
    await blk.close();
  },
});

Deno.test({
  name:
    "reconnect: closing while it waits for the back-end rejects what it kept with ClosedError and releases everything",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await QemuStorageDaemon.start({ size: 16 * MiB });
    const fds = driverFds(), maps = memfdMappings();
    const blk = await VirtioBlk.connect({
      transport: "vhost-user",
      path: qsd.socketPath,
      reconnect: { timeoutMs: 60_000 },
    });
    await stopProcess(qsd.pid);
    const pending = blk.write(0, blk.allocBuffer(4096)).then(() => "resolved", (e: Error) => e.name);
    await sleep(20);
    const disconnected = nextEvent(blk, "disconnect", 10_000);
    await qsd.kill();
    await disconnected;
    await blk.close();
    assert.equal(await pending, "ClosedError");
    assert.equal(driverFds(), fds);
    assert.equal(memfdMappings(), maps);
  },
});

Deno.test({
  name: "reconnect: 100 disconnect/reconnect cycles leak no descriptor and no mapping",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await QemuStorageDaemon.start({ size: 4 * MiB, iothread: false });
    const blk = await VirtioBlk.connect({
      transport: "vhost-user",
      path: qsd.socketPath,
      reconnect: { timeoutMs: 10_000, backoffMs: 5 },
    });
    const buf = blk.allocBuffer(4096);
    await blk.read(0, buf); // warm: every lazy allocation made
    const fds = fdCount(), maps = memfdMappings();
    for (let i = 0; i < 100; i++) {
      await qsd.restart();
      buf.fill(i & 0xff);
      await blk.write(4096 * (i % 16), buf); // notices the hang-up, reconnects, resubmits
    }
    assert.equal(blk.connectionStats().reconnects, 100);
    assert.equal(fdCount(), fds, "no descriptor left behind");
    assert.equal(memfdMappings(), maps, "no mapping left behind");
    await blk.close();
  },
});

Deno.test("reconnect is refused where it cannot work (not vhost-user by path; bad values)", async () => {
  await assert.rejects(
    VirtioBlk.connect({ transport: "vhost-vdpa", path: "/dev/null", reconnect: { timeoutMs: 1000 } }),
    InvalidArgumentError,
  );
  await assert.rejects(
    VirtioBlk.connect({ transport: "vhost-user", path: "/tmp/x.sock", reconnect: { timeoutMs: 0 } }),
    InvalidArgumentError,
  );
  await assert.rejects(
    VirtioBlk.connect({ transport: "vhost-user", path: "/tmp/x.sock", reconnect: { timeoutMs: 10, backoffMs: 0 } }),
    InvalidArgumentError,
  );
});

Deno.test({
  name: "cli fio --reconnect: keeps running across a daemon restart and reports the gap (--json)",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await QemuStorageDaemon.start({ size: 64 * MiB });
    const cli = new URL("../cli.ts", import.meta.url).pathname;
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        cli,
        "fio",
        ...["--path", qsd.socketPath, "--rw", "randwrite", "--iodepth", "8", "--runtime", "3", "--ramp", "0"],
        ...["--reconnect", "10", "--json"],
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    await sleep(1500);
    await qsd.kill();
    await sleep(300);
    await qsd.restart();
    const out = await child;
    const text = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    const r = JSON.parse(text);
    assert.equal(r.errors, 0);
    assert.equal(r.reconnects.count, 1);
    assert.ok(r.reconnects.longestGapMs >= 300, JSON.stringify(r.reconnects));
    assert.ok(r.write.ios > 0);
  },
});
