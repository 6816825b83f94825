// Integration tests against a real qemu-storage-daemon (vhost-user-blk export)
// started by each test on a temporary socket and image.
import { EMULATED } from "./_deno.ts";
import assert from "node:assert/strict";
import {
  type CompletionMode,
  ConnectionLostError,
  ReadOnlyError,
  VirtioBlk,
  type VirtioBlkOptions,
  type VirtioError,
} from "../mod.ts";
import { QemuStorageDaemon, type QemuStorageDaemonOptions } from "../testing.ts";
import { loadShim } from "../src/os/loader.ts";
import { randomWrites, spotCheckReads } from "./_matrix.ts";
import { fdCount, firstDifference, memfdMappings, missing, Rng, stopProcess } from "./_support.ts";

await loadShim(); // process-wide; loaded outside the tests' resource accounting

const MiB = 1 << 20;

async function withDaemon(
  options: QemuStorageDaemonOptions,
  fn: (qsd: QemuStorageDaemon) => Promise<void>,
): Promise<void> {
  const qsd = await QemuStorageDaemon.start(options);
  try {
    await fn(qsd);
  } catch (e) {
    const log = await Deno.readTextFile(qsd.logPath).catch(() => "");
    if (log.trim()) console.error(`qemu-storage-daemon log:\n${log}`);
    throw e;
  } finally {
    await qsd.stop();
  }
}

function connect(qsd: QemuStorageDaemon, options: VirtioBlkOptions = {}): Promise<VirtioBlk> {
  return VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath, requestTimeoutMs: 5000, ...options });
}

/** Random writes of the first test: fewer under an emulator (CI's aarch64 stage), where each costs ~100 times more. */
const RANDOM_WRITES = EMULATED ? 400 : 10_000;

Deno.test({
  name: `qsd: ${RANDOM_WRITES.toLocaleString("en")} random writes match an independent read of the image`,
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    const size = 64 * MiB;
    await withDaemon({ size }, async (qsd) => {
      const seed = 0x5eed_0001;
      const rng = new Rng(seed);
      const model = new Uint8Array(size);
      const blk = await connect(qsd, { numQueues: 1, queueSize: 256 });
      try {
        assert.equal(blk.capacity, BigInt(size), "capacity equals the image size");
        assert.equal(blk.blockSize, 512);
        assert.equal(blk.readOnly, false);
        await randomWrites(blk, model, RANDOM_WRITES, rng);
        await blk.flush();
        // Spot-check reads through the driver too (some vectored, some bounced).
        await spotCheckReads(blk, model, 200, 256, rng, ` (seed ${seed})`);
      } finally {
        await blk.close();
      }
      const image = await Deno.readFile(qsd.imagePath!);
      const diff = firstDifference(image, model);
      assert.equal(diff, -1, `image differs from the model at byte ${diff} (seed ${seed})`);
    });
  },
});

// Under emulation (CI's aarch64 stage, where each takes 18 s) in one mode: what differs by architecture is the same.
for (const mode of (EMULATED ? ["eventfd"] : ["poll", "eventfd"]) as CompletionMode[]) {
  Deno.test({
    name: `qsd (${mode}): discard and write-zeroes leave zeroes an independent reader sees`,
    ignore: missing("qemu-storage-daemon"),
    fn: async () => {
      const size = 16 * MiB;
      await withDaemon({ size }, async (qsd) => {
        const blk = await connect(qsd, { mode });
        try {
          assert.ok(blk.features.discard && blk.features.writeZeroes);
          const ones = blk.allocBuffer(4 * MiB);
          ones.fill(0x11);
          await blk.write(0, ones);
          await blk.discard(MiB, MiB);
          await blk.writeZeroes(2 * MiB, 512 * 1024, { unmap: true });
          await blk.writeZeroes(3 * MiB, 4096);
          await blk.flush();
          const back = blk.allocBuffer(4 * MiB);
          await blk.read(0, back);
          assert.ok(back.subarray(MiB, 2 * MiB).every((b) => b === 0), "discarded range reads as zeroes");
        } finally {
          await blk.close();
        }
        const image = await Deno.readFile(qsd.imagePath!);
        const zero = (a: number, b: number) => image.subarray(a, b).every((x) => x === 0);
        const ones = (a: number, b: number) => image.subarray(a, b).every((x) => x === 0x11);
        assert.ok(ones(0, MiB), "before the discard: intact");
        assert.ok(zero(MiB, 2 * MiB), "discarded");
        assert.ok(zero(2 * MiB, 2 * MiB + 512 * 1024), "write-zeroes (unmap)");
        assert.ok(ones(2 * MiB + 512 * 1024, 3 * MiB), "between: intact");
        assert.ok(zero(3 * MiB, 3 * MiB + 4096), "write-zeroes");
        assert.ok(ones(3 * MiB + 4096, 4 * MiB), "after: intact");
        assert.ok(zero(4 * MiB, 16 * MiB), "never written");
      });
    },
  });
}

Deno.test({
  name: "qsd: a num-queues=2 export, both queues used",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    const size = 8 * MiB;
    await withDaemon({ size, numQueues: 2 }, async (qsd) => {
      const blk = await connect(qsd, { numQueues: 2 });
      try {
        assert.equal(blk.numQueues, 2);
        assert.equal(blk.config.numQueues, 2);
        // Batch API, one queue each, 64 writes per queue.
        for (const qi of [0, 1]) {
          const q = blk.queue<number>(qi);
          const bufs: Uint8Array<ArrayBuffer>[] = [];
          for (let i = 0; i < 64; i++) {
            const b = blk.allocBuffer(4096);
            b.fill(qi * 64 + i + 1);
            bufs.push(b);
            q.write((qi * 64 + i) * 4096, b, i);
          }
          q.submit();
          const seen = new Set<number>();
          for await (const c of q.completions()) {
            assert.equal(c.error, undefined);
            seen.add(c.context);
          }
          assert.equal(seen.size, 64);
          assert.equal(q.inFlight, 0);
        }
        // The promise API spreads over both queues.
        const tail = blk.allocBuffer(4096);
        tail.fill(0xee);
        await Promise.all(Array.from({ length: 64 }, (_, i) => blk.write((128 + i) * 4096, tail)));
        assert.ok(blk.queue(0).notifications > 1 && blk.queue(1).notifications > 1);
      } finally {
        await blk.close();
      }
      const image = await Deno.readFile(qsd.imagePath!);
      for (let i = 0; i < 128; i++) assert.equal(image[i * 4096 + 100], i + 1, `block ${i}`);
      for (let i = 128; i < 192; i++) assert.equal(image[i * 4096], 0xee);
    });
  },
});

Deno.test({
  name: "qsd: a writable=off export is read-only and refuses writes",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await withDaemon({ size: 4 * MiB, writable: false }, async (qsd) => {
      const blk = await connect(qsd);
      try {
        assert.equal(blk.readOnly, true);
        const buf = blk.allocBuffer(4096);
        await blk.read(0, buf);
        for (const request of [() => blk.write(0, buf), () => blk.writeZeroes(0, 4096), () => blk.discard(0, 4096)]) {
          await assert.rejects(request(), ReadOnlyError);
        }
      } finally {
        await blk.close();
      }
    });
  },
});

for (const mode of ["poll", "eventfd"] as CompletionMode[]) {
  Deno.test({
    name: `qsd (${mode}): daemon killed with 32 requests in flight: all reject within 1 s, close releases everything`,
    ignore: missing("qemu-storage-daemon"),
    fn: async () => {
      const fds = fdCount();
      const maps = memfdMappings();
      await withDaemon({ size: 8 * MiB }, async (qsd) => {
        const blk = await connect(qsd, { mode });
        try {
          assert.ok(memfdMappings() > maps);
          const buf = blk.allocBuffer(4096);
          await blk.read(0, buf); // the connection works
          await stopProcess(qsd.pid); // keep the requests in the ring
          const results = Array.from({ length: 32 }, (_, i) =>
            blk.read(i * 4096, buf).then(
              () => "resolved",
              (e) => e,
            ));
          await new Promise((r) => setTimeout(r, 20));
          const t0 = performance.now();
          await qsd.kill("SIGKILL");
          const settled = await Promise.all(results);
          const ms = performance.now() - t0;
          assert.ok(ms < 1000, `took ${ms} ms`);
          for (const r of settled) {
            assert.ok(r instanceof ConnectionLostError, `expected ConnectionLostError, got ${r}`);
            assert.equal((r as VirtioError).code, "ERR_CONNECTION_LOST");
          }
          // Later requests fail fast with the same kind of error.
          await assert.rejects(blk.read(0, buf), ConnectionLostError);
        } finally {
          await blk.close();
        }
      });
      assert.equal(fdCount(), fds, "every descriptor released");
      assert.equal(memfdMappings(), maps, "every mapping released");
    },
  });
}
