// Ring formats and features: split vs split+EVENT_IDX vs packed vs
// packed+EVENT_IDX at QD1 and QD32. Packed rings run on the mock device
// (qemu-storage-daemon 7.2 does not offer them); split rings run on both.
// `deno bench -A bench/ring_features_bench.ts` (part of `deno task bench`)
import { VirtioBlk, type VirtioBlkOptions } from "../mod.ts";
import { MockBlkDevice, QemuStorageDaemon } from "../testing.ts";
import { echoBatches, echoQd1, killOnUnload, qd1, qdN, rig } from "./_workloads.ts";

const N = 10_000;
const CONFIGS: [string, VirtioBlkOptions][] = [
  ["split", { ring: "split", features: { eventIdx: false, indirect: false } }],
  ["split+EVENT_IDX", { ring: "split", features: { eventIdx: true, indirect: false } }],
  ["packed", { ring: "packed", features: { eventIdx: false, indirect: false } }],
  ["packed+EVENT_IDX", { ring: "packed", features: { eventIdx: true, indirect: false } }],
];

// The mock device's allocation-free echo: the driver's ring path alone.
for (const [name, options] of CONFIGS) {
  const device = new MockBlkDevice({ capacity: 256 << 20, completion: "manual" });
  const blk = await VirtioBlk.connect({ transport: "mock", device, mode: "poll", queueSize: 256, ...options });
  const { q, bufs, offsets } = rig(blk, 32);
  Deno.bench({
    name: `${name}, QD1 (x${N})`,
    group: "ring formats on the mock device (echo), QD1",
    baseline: name === "split",
    fn: () => echoQd1(q, device, offsets, bufs[0], N),
  });
  Deno.bench({
    name: `${name}, batches of 32 (x${N})`,
    group: "ring formats on the mock device (echo), QD32",
    baseline: name === "split",
    fn: () => echoBatches(q, device, offsets, bufs, N),
  });
}

// qemu-storage-daemon, null-co: split with and without EVENT_IDX, one daemon each.
if (await QemuStorageDaemon.available()) {
  for (const [name, options] of CONFIGS.filter(([n]) => n.startsWith("split"))) {
    const daemons = await Promise.all([0, 1].map(() => QemuStorageDaemon.start({ driver: "null-co", size: 1 << 30 })));
    killOnUnload(daemons);
    const r = rig(
      await VirtioBlk.connect({ transport: "vhost-user", path: daemons[0].socketPath, mode: "poll", ...options }),
      32,
    );
    const e = rig(
      await VirtioBlk.connect({ transport: "vhost-user", path: daemons[1].socketPath, mode: "eventfd", ...options }),
      32,
    );
    await qdN(r, 32, 50_000, false);
    await qdN(e, 32, 50_000, false);
    Deno.bench({
      name: `${name}, poll (x200)`,
      group: "qemu-storage-daemon randread 4K QD1",
      baseline: name === "split",
      warmup: 50,
      async fn() {
        await qd1(r, 200, false);
      },
    });
    Deno.bench({
      name: `${name}, eventfd (x200)`,
      group: "qemu-storage-daemon randread 4K QD1",
      warmup: 50,
      async fn() {
        await qd1(e, 200, false);
      },
    });
    Deno.bench({
      name: `${name}, poll (x8192)`,
      group: "qemu-storage-daemon randread 4K QD32",
      baseline: name === "split",
      warmup: 10,
      n: 100,
      async fn() {
        await qdN(r, 32, 8192, false);
      },
    });
    Deno.bench({
      name: `${name}, eventfd (x8192)`,
      group: "qemu-storage-daemon randread 4K QD32",
      warmup: 10,
      n: 100,
      async fn() {
        await qdN(e, 32, 8192, false);
      },
    });
  }
}
