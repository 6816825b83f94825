// Queues in Workers: a device connected here, queues handed to Workers that
// drive them alone, the main thread on the rest, everything verified by an
// independent reader of the image; and what happens when this side closes,
// the back-end hangs up, or a Worker is terminated.
import assert from "node:assert/strict";
import {
  ClosedError,
  ConnectionLostError,
  InvalidArgumentError,
  VirtioBlk,
  type VirtioBlkQueueHandle,
} from "../mod.ts";
import { MockBlkDevice, QemuStorageDaemon } from "../testing.ts";
import { loadShim } from "../src/os/loader.ts";
import { BLOCK, holdsBlock, randomBlockWrites } from "./_block_pattern.ts";
import { fdCount, memfdMappings, missing, settledCount } from "./_support.ts";

await loadShim();

const MiB = 1 << 20;
const WORKER = new URL("./_queue_worker.ts", import.meta.url);

/** A Worker running one job of tests/_queue_worker.ts; its messages, in order. */
class QueueWorker implements AsyncDisposable {
  readonly #worker = new Worker(WORKER, { type: "module" });
  readonly #inbox: unknown[] = [];
  #waiting: ((m: unknown) => void) | undefined;

  constructor(job: Record<string, unknown>) {
    this.#worker.onmessage = (e) => {
      if (this.#waiting) {
        const w = this.#waiting;
        this.#waiting = undefined;
        w(e.data);
      } else this.#inbox.push(e.data);
    };
    this.#worker.postMessage(job);
  }

  /** The next message (an `{ error }` one fails the test). */
  async next<T>(): Promise<T> {
    const m = this.#inbox.shift() ?? await new Promise((r) => (this.#waiting = r));
    if (typeof m === "object" && m !== null && "error" in m) {
      throw new Error(`worker: ${(m as { error: string }).error}`);
    }
    return m as T;
  }

  terminate(): void {
    this.#worker.terminate();
  }

  [Symbol.asyncDispose](): Promise<void> {
    this.#worker.terminate();
    return Promise.resolve();
  }
}

for (const mode of ["eventfd", "poll"] as const) {
  Deno.test({
    name: `workers (${mode}): two Workers on their own queues and the main thread on queue 0, every block as written`,
    ignore: missing("qemu-storage-daemon"),
    fn: async () => {
      const blocks = 2048, writes = 3000; // 8 MiB per range
      await using qsd = await QemuStorageDaemon.start({ size: 64 * MiB, numQueues: 3 });
      const gens: Uint32Array[] = [];
      {
        await using blk = await VirtioBlk.connect({
          transport: "vhost-user",
          path: qsd.socketPath,
          numQueues: 3,
          mode,
        });
        const handles = [
          await blk.detachQueue(1, { bufferBytes: MiB }),
          await blk.detachQueue(2, { bufferBytes: MiB }),
        ];
        assert.throws(() => blk.queue(1), InvalidArgumentError);
        const workers = handles.map((handle, i) =>
          new QueueWorker({
            job: "writes",
            handle,
            first: (i + 1) * blocks,
            blocks,
            count: writes,
            depth: 16,
            seed: 7 + i,
          })
        );
        try {
          // Meanwhile this thread writes its own range (all through queue 0: the others were handed over).
          const mine = randomBlockWrites(
            (o, b) => blk.write(o, b),
            (n) => blk.allocBuffer(n),
            0,
            blocks,
            writes,
            16,
            5,
          );
          const done = await Promise.all(
            workers.map((w) => w.next<{ gens: Uint32Array; verified: number; mode: string; numQueues: number }>()),
          );
          gens.push(await mine, ...done.map((d) => d.gens));
          for (const d of done) {
            assert.equal(d.verified, blocks, "the Worker read every block back");
            assert.equal(d.mode, mode);
            assert.equal(d.numQueues, 1);
          }
        } finally {
          for (const w of workers) w.terminate();
        }
        await blk.flush();
        // This thread sees the Workers' writes too.
        const buf = blk.allocBuffer(BLOCK);
        for (let r = 0; r < 3; r++) {
          for (let b = 0; b < blocks; b++) {
            await blk.read((r * blocks + b) * BLOCK, buf);
            assert.ok(holdsBlock(buf, r * blocks + b, gens[r][b]), `block ${r * blocks + b} through queue 0`);
          }
        }
      }
      // And so does an independent reader of the image.
      const image = await Deno.readFile(qsd.imagePath!);
      for (let r = 0; r < 3; r++) {
        for (let b = 0; b < blocks; b++) {
          const at = (r * blocks + b) * BLOCK;
          assert.ok(
            holdsBlock(image.subarray(at, at + BLOCK), r * blocks + b, gens[r][b]),
            `block ${r * blocks + b} in the image`,
          );
        }
      }
    },
  });

  Deno.test({
    name:
      `workers (${mode}): the main side closes with requests in flight in a Worker: they reject with ClosedError within 1 s`,
    ignore: missing("qemu-storage-daemon"),
    fn: async () => {
      const fds = fdCount(), maps = memfdMappings();
      await using qsd = await QemuStorageDaemon.start({ size: 16 * MiB, numQueues: 2 });
      const blk = await VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath, numQueues: 2, mode });
      await using w = new QueueWorker({
        job: "flood",
        handle: await blk.detachQueue(1, { bufferBytes: MiB }),
        depth: 16,
      });
      await w.next<{ started: true }>();
      await new Promise((r) => setTimeout(r, 100));
      const t0 = Date.now();
      await blk.close();
      const { failures, later } = await w.next<
        { failures: { name: string; code: string; at: number }[]; later: string }
      >();
      assert.equal(failures.length, 16, "every request in flight rejected");
      for (const f of failures) {
        assert.equal(f.name, "ClosedError");
        assert.equal(f.code, "ERR_CLOSED");
        assert.ok(f.at - t0 < 1000, `rejected ${f.at - t0} ms after the close began`);
      }
      assert.equal(later, "ClosedError", "and so does a later one");
      assert.ok(Date.now() - t0 < 1000, "the Worker let go: the close did not wait for it");
      w.terminate();
      await qsd.stop();
      assert.equal(await settledCount(fdCount, fds), fds, "every descriptor released");
      assert.equal(await settledCount(memfdMappings, maps), maps, "every mapping released");
    },
  });

  Deno.test({
    name:
      `workers (${mode}): the back-end hangs up with requests in flight in a Worker: ConnectionLostError there within 1 s`,
    ignore: missing("qemu-storage-daemon"),
    fn: async () => {
      await using qsd = await QemuStorageDaemon.start({ size: 16 * MiB, numQueues: 2 });
      await using blk = await VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath, numQueues: 2, mode });
      await using w = new QueueWorker({
        job: "flood",
        handle: await blk.detachQueue(1, { bufferBytes: MiB }),
        depth: 16,
      });
      await w.next<{ started: true }>();
      const t0 = Date.now();
      await qsd.kill();
      const { failures, later } = await w.next<{ failures: { name: string; at: number }[]; later: string }>();
      assert.equal(failures.length, 16);
      for (const f of failures) {
        assert.equal(f.name, "ConnectionLostError");
        assert.ok(f.at - t0 < 1000, `rejected ${f.at - t0} ms after the hang-up`);
      }
      assert.equal(later, "ConnectionLostError");
      await assert.rejects(blk.read(0, blk.allocBuffer(BLOCK)), ConnectionLostError, "the main side lost it too");
    },
  });
}

Deno.test({
  name: "workers: a Worker terminated without close() leaves nothing the main side's close does not reclaim",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    const fds = fdCount(), maps = memfdMappings();
    await using qsd = await QemuStorageDaemon.start({ size: 16 * MiB, numQueues: 2 });
    const blk = await VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath, numQueues: 2 });
    const w = new QueueWorker({ job: "hold", handle: await blk.detachQueue(1, { bufferBytes: MiB }) });
    await w.next<{ attached: true }>();
    w.terminate();
    await blk.close(); // waits a second for a Worker that will never let go, then keeps the addresses taken
    await qsd.stop();
    assert.equal(await settledCount(fdCount, fds), fds, "every descriptor released");
    assert.equal(await settledCount(memfdMappings, maps), maps, "no mapping of shared memory left");
  },
});

Deno.test({
  name: "workers: what cannot be handed over is refused with a typed error, and a handle is attached once",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await QemuStorageDaemon.start({ size: 16 * MiB, numQueues: 2 });
    {
      await using blk = await VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath, numQueues: 2 });
      await assert.rejects(blk.detachQueue(2, { bufferBytes: MiB }), InvalidArgumentError, "out of range");
      await assert.rejects(blk.detachQueue(1, { bufferBytes: 100 }), InvalidArgumentError, "too little memory");
      const handle: VirtioBlkQueueHandle = structuredClone(await blk.detachQueue(1, { bufferBytes: MiB }));
      await assert.rejects(blk.detachQueue(1, { bufferBytes: MiB }), InvalidArgumentError, "twice");
      await using attached = await VirtioBlk.attach(handle); // here, as a Worker would
      await assert.rejects(VirtioBlk.attach(handle), InvalidArgumentError, "a handle is attached once");
      await attached.write(0, attached.allocBuffer(BLOCK));
      await assert.rejects(VirtioBlk.attach({ kind: "nope" } as unknown as VirtioBlkQueueHandle), InvalidArgumentError);
      // With its last queue handed over, this side's requests have nowhere to go.
      const last = await blk.detachQueue(0, { bufferBytes: MiB });
      await assert.rejects(blk.read(0, new Uint8Array(BLOCK)), /every queue of this device was handed to a Worker/);
      await blk.close();
      await assert.rejects(VirtioBlk.attach(last), ClosedError, "a handle of a closed device");
      await assert.rejects(
        attached.read(0, new Uint8Array(BLOCK)),
        ClosedError,
        "the attached one ended with it",
      );
    }
    {
      await using blk = await VirtioBlk.connect({
        transport: "vhost-user",
        path: qsd.socketPath,
        numQueues: 2,
        reconnect: { timeoutMs: 1000 },
      });
      await assert.rejects(blk.detachQueue(1, { bufferBytes: MiB }), /reconnect/);
    }
    await using mock = await VirtioBlk.connect({
      transport: "mock",
      device: new MockBlkDevice({ numQueues: 2 }),
      numQueues: 2,
    });
    await assert.rejects(mock.detachQueue(1, { bufferBytes: MiB }), /runs in this isolate/);
  },
});
