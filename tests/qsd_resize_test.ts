// Live resize against a real back-end: qemu-storage-daemon with a QMP
// monitor and a file-backed image, resized with block_resize while the
// driver runs. QEMU 8.1 and later announce it on the back-end channel
// (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG); 7.2, Debian 12's, does not — the
// last test here pins that down, which is why the others use a recent build.
import assert from "node:assert/strict";
import { InvalidArgumentError, VirtioBlk } from "../mod.ts";
import { QemuStorageDaemon } from "../testing.ts";
import { awaitedLater, HAVE_QSD, imageBytes, missing, nextEvent, Rng } from "./_support.ts";
import { qsdVersion, RECENT_QSD } from "./_qsd_recent.ts";
import { loadShim } from "../src/os/loader.ts";

if (HAVE_QSD || RECENT_QSD) await loadShim();

const MiB = 1 << 20;

async function start(size: number, iothread = true): Promise<{ qsd: QemuStorageDaemon; blk: VirtioBlk }> {
  const qsd = await QemuStorageDaemon.start({ size, binary: RECENT_QSD, qmp: true, iothread });
  try {
    const blk = await VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath, numQueues: 1 });
    return { qsd, blk };
  } catch (e) {
    await qsd.stop();
    throw e;
  }
}

const noRecent = () => missing("qemu-storage-daemon-8.1", RECENT_QSD !== undefined);

Deno.test({
  name:
    "qemu-storage-daemon 8.1+: grow by 64 MiB with 32 requests in flight → configchange within 1 s; I/O at the new end",
  ignore: noRecent(),
  fn: async () => {
    // Without an iothread: qemu-storage-daemon 10.0 with one now and then
    // (1 in 10 to 100 here) never finishes block_resize when requests are in
    // flight — its drain waits forever although every request completed and
    // the driver has nothing outstanding. As far as its source shows,
    // vhost_user_server_dec_in_flight() wakes no one waiting in a drain
    // (no aio_wait_kick()), so a drain that looked just before the export's
    // count dropped sleeps on. Without an iothread it never happened (400
    // runs), nor with one and no requests in flight (400 runs).
    const { qsd, blk } = await start(64 * MiB, false);
    try {
      assert.equal(blk.configStats().signal, "message");
      const rng = new Rng(7);
      const bufs = Array.from({ length: 32 }, () => blk.allocBuffer(4096));
      const reads = awaitedLater(Promise.all(bufs.map((b) => blk.read(rng.int(0, 64 * MiB / 4096 - 1) * 4096, b))));
      const change = nextEvent(blk, "configchange", 1000);
      const t0 = performance.now();
      await qsd.resize(128 * MiB);
      const d = await change;
      const ms = performance.now() - t0;
      await reads;
      assert.equal(d.previousCapacity, BigInt(64 * MiB));
      assert.equal(blk.capacity, BigInt(128 * MiB));
      assert.equal(BigInt((await Deno.stat(qsd.imagePath!)).size), blk.capacity, "the image's new size");
      assert.ok(ms < 1000, `${ms.toFixed(0)} ms`);
      const buf = blk.allocBuffer(4096);
      for (let i = 0; i < buf.byteLength; i++) buf[i] = (i * 7 + 3) & 0xff;
      await blk.write(128 * MiB - 4096, buf);
      await blk.flush();
      const back = blk.allocBuffer(4096);
      await blk.read(128 * MiB - 4096, back);
      assert.deepEqual(back, buf);
      assert.deepEqual(await imageBytes(qsd.imagePath!, 128 * MiB - 4096, 4096), new Uint8Array(buf));
    } finally {
      await blk.close();
      await qsd.stop();
    }
  },
});

Deno.test({
  name: "qemu-storage-daemon 8.1+: shrink → configchange; requests past the new end are refused before the device",
  ignore: noRecent(),
  fn: async () => {
    const { qsd, blk } = await start(64 * MiB);
    try {
      const change = nextEvent(blk, "configchange", 1000);
      await qsd.resize(16 * MiB);
      assert.equal((await change).config.capacity, BigInt(16 * MiB));
      assert.equal(blk.capacity, BigInt((await Deno.stat(qsd.imagePath!)).size));
      const buf = blk.allocBuffer(4096);
      await assert.rejects(blk.read(32 * MiB, buf), InvalidArgumentError);
      await assert.rejects(blk.write(16 * MiB - 512, buf), InvalidArgumentError);
      assert.equal(blk.queue(0).stats().completions, 0, "nothing went to the device");
      await blk.read(16 * MiB - 4096, buf);
    } finally {
      await blk.close();
      await qsd.stop();
    }
  },
});

Deno.test({
  name: "qemu-storage-daemon 8.1+: 50 resizes in a row lose no event (the last capacity seen is the final one)",
  ignore: noRecent(),
  fn: async () => {
    const { qsd, blk } = await start(16 * MiB);
    try {
      let last = 0n, events = 0;
      blk.addEventListener("configchange", (e) => {
        last = e.detail.config.capacity;
        events++;
      });
      for (let i = 1; i <= 50; i++) await qsd.resize(16 * MiB + i * MiB);
      const final = BigInt(66 * MiB);
      const deadline = performance.now() + 2000;
      while (last !== final && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      assert.equal(last, final, `${events} events`);
      assert.equal(blk.capacity, final);
      assert.ok(events >= 1 && events <= 50, `${events} events`);
      assert.equal(blk.configStats().channel?.configChanges, 50, "every message was served");
    } finally {
      await blk.close();
      await qsd.stop();
    }
  },
});

const systemVersion = HAVE_QSD ? await qsdVersion("qemu-storage-daemon") : undefined;

Deno.test({
  name: "qemu-storage-daemon 7.2 announces no resize and keeps the old capacity in its config (the documented limit)",
  ignore: systemVersion === undefined || systemVersion[0] !== 7,
  fn: async () => {
    const qsd = await QemuStorageDaemon.start({ size: 16 * MiB, qmp: true });
    try {
      await using blk = await VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath });
      assert.equal(blk.configStats().signal, "message", "7.2 accepts the channel");
      let events = 0;
      blk.addEventListener("configchange", () => events++);
      await qsd.resize(32 * MiB);
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal((await Deno.stat(qsd.imagePath!)).size, 32 * MiB, "the image grew");
      assert.equal(events, 0, "no message came");
      assert.equal(blk.configStats().channel?.requests, 0);
      assert.equal((await blk.refreshConfig()).capacity, BigInt(16 * MiB), "GET_CONFIG still has the old capacity");
    } finally {
      await qsd.stop();
    }
  },
});

Deno.test({
  name: "cli info --watch --json: one JSON line for the device, one per change; Ctrl-C ends it with 130",
  ignore: noRecent(),
  fn: async () => {
    const qsd = await QemuStorageDaemon.start({ size: 16 * MiB, binary: RECENT_QSD, qmp: true });
    try {
      const cli = new URL("../cli.ts", import.meta.url).pathname;
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", cli, "info", "--path", qsd.socketPath, "--watch", "--json"],
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      let out = "", err = "";
      const reading = Promise.all([
        (async () => {
          for await (const t of child.stdout.pipeThrough(new TextDecoderStream())) out += t;
        })(),
        (async () => {
          for await (const t of child.stderr.pipeThrough(new TextDecoderStream())) err += t;
        })(),
      ]);
      const until = async (ok: () => boolean) => {
        const deadline = performance.now() + 20_000;
        while (!ok() && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      };
      await until(() => err.includes("Ctrl-C to stop"));
      await qsd.resize(32 * MiB);
      await until(() => out.split("\n").filter(Boolean).length >= 2);
      await qsd.resize(48 * MiB);
      await until(() => out.split("\n").filter(Boolean).length >= 3);
      child.kill("SIGINT");
      const status = await child.status;
      await reading;
      assert.equal(status.code, 130, err);
      const lines = out.trim().split("\n").map((l) => JSON.parse(l));
      assert.equal(lines[0].event, "info");
      assert.equal(lines[0].capacity, 16 * MiB);
      assert.deepEqual(
        lines.slice(1).map((l) => [l.event, l.previousCapacity, l.capacity]),
        [["configchange", 16 * MiB, 32 * MiB], ["configchange", 32 * MiB, 48 * MiB]],
      );
    } finally {
      await qsd.stop();
    }
  },
});
