// The back-end crashes (SIGKILL) and comes back: requests in flight reject
// quickly, a new connection works in the same process, and repeated cycles
// leak no descriptor and no mapping.
import assert from "node:assert/strict";
import { type CompletionMode, ConnectionLostError, VirtioBlk } from "../mod.ts";
import { QemuStorageDaemon } from "../testing.ts";
import { loadShim } from "../src/os/loader.ts";
import { fdCount, memfdMappings, missing, stopProcess } from "./_support.ts";

await loadShim();

for (const mode of ["poll", "eventfd"] as CompletionMode[]) {
  Deno.test({
    name: `crash (${mode}): SIGKILL with 64 requests in flight, every one rejects within 1 s`,
    ignore: missing("qemu-storage-daemon"),
    fn: async () => {
      const qsd = await QemuStorageDaemon.start({ size: 16 << 20 });
      try {
        const blk = await VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath, mode, queueSize: 256 });
        try {
          const bufs = Array.from({ length: 64 }, () => blk.allocBuffer(4096));
          await stopProcess(qsd.pid);
          // Half through the promise API, half through the batch API.
          const results = bufs.slice(0, 32).map((b, i) => blk.write(i * 4096, b).then(() => "resolved", (e) => e));
          const q = blk.queue<number>(0);
          bufs.slice(32).forEach((b, i) => q.read(i * 4096, b, i));
          q.submit();
          await new Promise((r) => setTimeout(r, 20));
          const t0 = performance.now();
          await qsd.kill("SIGKILL");
          const batch: unknown[] = [];
          const batchDone = (async () => {
            for await (const c of q.completions()) batch.push(c.error);
          })();
          const settled = await Promise.all(results);
          await batchDone;
          const ms = performance.now() - t0;
          assert.ok(ms < 1000, `took ${ms} ms`);
          assert.equal(settled.length + batch.length, 64);
          for (const r of [...settled, ...batch]) assert.ok(r instanceof ConnectionLostError, `got ${r}`);
        } finally {
          await blk.close();
        }
      } finally {
        await qsd.stop();
      }
    },
  });
}

Deno.test({
  name: "crash: a new connection to the restarted daemon works in the same process, data intact",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    const qsd = await QemuStorageDaemon.start({ size: 16 << 20 });
    try {
      const first = await VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath });
      const data = first.allocBuffer(8192).fill(0x3c);
      await first.write(65536, data);
      await first.flush();
      await qsd.kill("SIGKILL");
      await assert.rejects(first.read(0, data), ConnectionLostError);
      await first.close();

      await qsd.restart();
      await using second = await VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath });
      const back = second.allocBuffer(8192);
      await second.read(65536, back);
      assert.ok(back.every((b) => b === 0x3c), "flushed data survived the crash");
      await second.write(0, back);
    } finally {
      await qsd.stop();
    }
  },
});

Deno.test({
  name: "crash: 100 connect / kill / close cycles leak no descriptor and no mapping",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    const qsd = await QemuStorageDaemon.start({ size: 4 << 20 });
    try {
      const fds = fdCount();
      const maps = memfdMappings();
      for (let i = 0; i < 100; i++) {
        if (i > 0) await qsd.restart();
        const blk = await VirtioBlk.connect({
          transport: "vhost-user",
          path: qsd.socketPath,
          mode: i % 2 ? "poll" : "eventfd",
          bufferPoolSize: 1 << 20,
        });
        const buf = blk.allocBuffer(4096);
        await blk.read(0, buf);
        const inFlight = blk.read(4096, buf).catch((e) => e);
        await qsd.kill("SIGKILL");
        const r = await inFlight;
        assert.ok(r === undefined || r instanceof ConnectionLostError, `cycle ${i}: ${r}`);
        await blk.close();
      }
      // The daemon's own pipes come and go with it: measure with it running, as before.
      await qsd.restart();
      assert.equal(memfdMappings(), maps, "no mapping left behind");
      assert.equal(fdCount(), fds, "no descriptor left behind");
    } finally {
      await qsd.stop();
    }
  },
});
