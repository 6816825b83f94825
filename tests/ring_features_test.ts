// Ring features: EVENT_IDX, INDIRECT_DESC, packed rings and multi-queue, each
// negotiated only when both sides offer it, each run through the full request
// matrix against a real peer (qemu-storage-daemon for split rings; the mock
// device for packed rings, which qemu-storage-daemon 7.2 does not offer).
import assert from "node:assert/strict";
import { engineOf } from "../src/blk/queue.ts";
import { FeatureNegotiationError, QueueFullError, VirtioBlk, type VirtioBlkOptions } from "../mod.ts";
import { MockBlkDevice, QemuStorageDaemon } from "../testing.ts";
import { loadShim } from "../src/os/loader.ts";
import { requestMatrix } from "./_matrix.ts";
import { stressBursts } from "./_stress.ts";
import { firstDifference, missing, Rng } from "./_support.ts";

await loadShim();

const MiB = 1 << 20;

const SPLIT_CONFIGS: [string, { eventIdx: boolean; indirect: boolean }][] = [
  ["split", { eventIdx: false, indirect: false }],
  ["split+EVENT_IDX", { eventIdx: true, indirect: false }],
  ["split+INDIRECT", { eventIdx: false, indirect: true }],
  ["split+EVENT_IDX+INDIRECT", { eventIdx: true, indirect: true }],
];

for (const [name, features] of SPLIT_CONFIGS) {
  for (const mode of ["poll", "eventfd"] as const) {
    Deno.test({
      name: `qsd ${name} (${mode}): the request matrix, verified by an independent reader`,
      ignore: missing("qemu-storage-daemon"),
      fn: async () => {
        const size = 16 * MiB;
        const qsd = await QemuStorageDaemon.start({ size });
        try {
          const model = new Uint8Array(size);
          const blk = await VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath, features, mode });
          try {
            assert.equal(blk.features.eventIdx, features.eventIdx);
            assert.equal(blk.features.indirect, features.indirect);
            assert.equal(blk.features.packed, false);
            await requestMatrix(blk, model, 1500, new Rng(name.length * 7 + (mode === "poll" ? 1 : 2)));
          } finally {
            await blk.close();
          }
          const image = await Deno.readFile(qsd.imagePath!);
          assert.equal(firstDifference(image, model), -1, "the image matches the model");
        } finally {
          await qsd.stop();
        }
      },
    });
  }
}

const MOCK_CONFIGS: [string, VirtioBlkOptions][] = [
  ["packed", { ring: "packed", features: { eventIdx: false, indirect: false } }],
  ["packed+EVENT_IDX", { ring: "packed", features: { eventIdx: true, indirect: false } }],
  ["packed+INDIRECT", { ring: "packed", features: { eventIdx: false, indirect: true } }],
  ["packed+EVENT_IDX+INDIRECT", { ring: "packed", features: { eventIdx: true, indirect: true } }],
  ["split+EVENT_IDX+INDIRECT", { ring: "split", features: { eventIdx: true, indirect: true } }],
];

for (const [name, options] of MOCK_CONFIGS) {
  for (const mode of ["poll", "eventfd"] as const) {
    Deno.test(`mock ${name} (${mode}): the request matrix, verified on the device's disk`, async () => {
      const size = 16 * MiB;
      const device = new MockBlkDevice({ capacity: size });
      const model = new Uint8Array(size);
      await using blk = await VirtioBlk.connect({ transport: "mock", device, mode, queueSize: 64, ...options });
      assert.equal(blk.features.packed, options.ring === "packed");
      assert.equal(blk.features.eventIdx, options.features!.eventIdx);
      assert.equal(blk.features.indirect, options.features!.indirect);
      await requestMatrix(blk, model, 1500, new Rng(name.length * 13 + (mode === "poll" ? 1 : 2)));
      assert.equal(firstDifference(device.disk, model), -1, "the disk matches the model");
    });
  }
}

Deno.test("packed rings asked of a device that lacks them: a typed error, nothing leaked", async () => {
  await assert.rejects(
    VirtioBlk.connect({ transport: "mock", device: new MockBlkDevice({ packed: false }), ring: "packed" }),
    FeatureNegotiationError,
  );
});

for (const indirect of [true, false]) {
  Deno.test({
    name: `qsd: more segments than free descriptors ${
      indirect ? "succeeds with INDIRECT" : "is 'queue full' without it"
    }`,
    ignore: missing("qemu-storage-daemon"),
    fn: async () => {
      const qsd = await QemuStorageDaemon.start({ size: 4 * MiB });
      try {
        await using blk = await VirtioBlk.connect({
          transport: "vhost-user",
          path: qsd.socketPath,
          queueSize: 32,
          features: { indirect },
          mode: "poll",
        });
        const q = blk.queue<string>(0);
        const one = blk.allocBuffer(512);
        for (let i = 0; i < 8; i++) q.read(i * 512, one, `single ${i}`); // 24 of 32 descriptors
        assert.equal(engineOf(q).ring.freeDescriptors, 8);
        const segs = Array.from({ length: 10 }, (_, i) => blk.allocBuffer(512).fill(i + 1));
        if (indirect) {
          q.writev(8192, segs, "vectored"); // 12 descriptors through one table entry
          q.submit();
          const done: string[] = [];
          for await (const c of q.completions()) {
            assert.equal(c.error, undefined);
            done.push(c.context);
          }
          assert.ok(done.includes("vectored"));
          const back = blk.allocBuffer(5120);
          await blk.read(8192, back);
          for (let i = 0; i < 10; i++) assert.equal(back[i * 512 + 7], i + 1);
        } else {
          assert.throws(() => q.writev(8192, segs, "vectored"), QueueFullError);
          q.submit();
          for await (const c of q.completions()) assert.equal(c.error, undefined);
          q.writev(8192, segs, "vectored"); // fits once the ring drained
          q.submit();
          for await (const c of q.completions()) assert.equal(c.context, "vectored");
        }
      } finally {
        await qsd.stop();
      }
    },
  });
}

Deno.test({
  name: "qsd: a num-queues=4 export with all 4 queues, each completing independently",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    const size = 8 * MiB;
    const qsd = await QemuStorageDaemon.start({ size, numQueues: 4 });
    try {
      const blk = await VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath, numQueues: 4 });
      try {
        assert.equal(blk.numQueues, 4);
        // Promise API: round-robin over the four queues.
        const bufs = Array.from({ length: 64 }, (_, i) => blk.allocBuffer(4096).fill(i + 1));
        await Promise.all(bufs.map((b, i) => blk.write(i * 4096, b)));
        for (let i = 0; i < 4; i++) assert.ok(blk.queue(i).notifications > 0, `queue ${i} was used`);
        // Batch API: each queue its own range; queue 2 is left in flight while the others finish.
        const qs = [0, 1, 2, 3].map((i) => blk.queue<number>(i));
        for (const [i, q] of qs.entries()) {
          for (let k = 0; k < 16; k++) q.read((i * 16 + k) * 4096, bufs[i * 16 + k], k);
          q.submit();
        }
        for (const i of [3, 0, 1, 2]) {
          let n = 0;
          for await (const c of qs[i].completions()) {
            assert.equal(c.error, undefined);
            n++;
          }
          assert.equal(n, 16);
        }
        for (let i = 0; i < 64; i++) assert.equal(bufs[i][100], i + 1);
      } finally {
        await blk.close();
      }
      const image = await Deno.readFile(qsd.imagePath!);
      for (let i = 0; i < 64; i++) assert.equal(image[i * 4096 + 5], i + 1);
    } finally {
      await qsd.stop();
    }
  },
});

for (const spinMicros of [0, 50]) {
  Deno.test({
    name: `qsd: eventfd lost-wakeup stress, EVENT_IDX on, spin ${spinMicros} µs: every request accounted for`,
    ignore: missing("qemu-storage-daemon"),
    fn: async () => {
      const qsd = await QemuStorageDaemon.start({ driver: "null-co", size: 1 << 30 });
      try {
        await using blk = await VirtioBlk.connect({
          transport: "vhost-user",
          path: qsd.socketPath,
          mode: "eventfd",
          spinMicros,
          queueSize: 512,
        });
        assert.ok(blk.features.eventIdx);
        const r = await stressBursts(blk, 3, spinMicros + 7);
        assert.ok(r.bursts > 100 && r.maxDepth === 128, JSON.stringify(r));
        if (spinMicros === 0) assert.ok(r.sleeps > 50, "the sleep path was exercised");
      } finally {
        await qsd.stop();
      }
    },
  });
}
