// Virtqueue hot path on the mock device: no daemon, no kernel, one core.
// `deno bench -A bench/virtqueue_bench.ts`
import { VirtioBlk } from "../mod.ts";
import { MockBlkDevice } from "../testing.ts";
import { ringPair } from "../src/testing/mock/ring_pair.ts";
import { echoBatches, echoQd1, rig } from "./_workloads.ts";

const REQUESTS = 10_000;

// The split ring alone, with the mock's device side completing each chain.
const ring = ringPair("split", 256);
const base = ring.vq.addressBase(0x7f12_0000_0000);

Deno.bench({
  name: `split ring: add (3 descriptors) + complete, x${REQUESTS}`,
  group: "virtqueue",
  baseline: true,
  fn() {
    const vq = ring.vq;
    for (let i = 0; i < REQUESTS; i++) {
      const id = vq.beginChain(3);
      vq.pushDescAt(base, 0, 16, false);
      vq.pushDescAt(base, 4096, 4096, true);
      vq.pushDescAt(base, 32, 1, true);
      vq.endChain();
      vq.availNotifNeeded();
      ring.dev.takeFast();
      ring.dev.pushUsed(id, 1, 1);
      vq.nextUsed();
    }
  },
});

Deno.bench({
  name: `split ring: generic addRequest(prepare) + completions(), x${REQUESTS}`,
  group: "virtqueue",
  fn() {
    const vq = ring.vq;
    for (let i = 0; i < REQUESTS; i++) {
      const id = vq.addRequest((req, addDesc) => {
        addDesc({ iova: req.iova, length: 16 }, false);
        addDesc({ iova: 0x7f12_0000_1000, length: 4096 }, true);
        addDesc({ iova: req.iova + 32, length: 1 }, true);
      });
      ring.dev.takeFast();
      ring.dev.pushUsed(id, 1, 1);
      for (const _ of vq.completions()) { /* one */ }
    }
  },
});

// The whole virtio-blk batch path: validation, request encoding, ring, device
// (the mock's allocation-free echo), completion delivery.
const device = new MockBlkDevice({ capacity: 256 << 20, completion: "manual" });
const blk = await VirtioBlk.connect({ transport: "mock", device, mode: "poll", queueSize: 256 });
const { q, bufs, offsets } = rig(blk, 32);

Deno.bench({
  name: `VirtioBlkQueue read + submit + device + poll, QD1, x${REQUESTS}`,
  group: "virtio-blk on the mock device",
  baseline: true,
  fn: () => echoQd1(q, device, offsets, bufs[0], REQUESTS),
});

Deno.bench({
  name: `VirtioBlkQueue 32 reads + one submit + device + poll, x${REQUESTS}`,
  group: "virtio-blk on the mock device",
  fn: () => echoBatches(q, device, offsets, bufs, REQUESTS),
});

Deno.bench({
  name: `VirtioBlk.read (promise API), QD1, x${REQUESTS / 10}`,
  group: "virtio-blk on the mock device",
  async fn() {
    device.completion = "immediate";
    for (let i = 0; i < REQUESTS / 10; i++) await blk.read(offsets.next(), bufs[0]);
    device.completion = "manual";
  },
});
