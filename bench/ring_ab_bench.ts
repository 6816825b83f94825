// The split ring's driver side alone, with a bare device side written here, so
// that two checkouts can be compared on the same footing (A/B):
//   ROOT=/path/to/other/checkout deno bench -A bench/ring_ab_bench.ts
// ROOT defaults to this checkout. It loads the ring by path, as both the old
// (SplitVirtqueue) and the new (SplitRing) layouts name it.
const ROOT = Deno.env.get("ROOT") ?? new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const split = await import(`${ROOT}/src/virtqueue/split.ts`);
const Ring = split.SplitRing ?? split.SplitVirtqueue;
const { VirtqueueLayout } = await import(`${ROOT}/src/virtqueue/layout.ts`);
const { HeapRegion } = await import(`${ROOT}/src/memory/region.ts`);
const layout = new VirtqueueLayout(1, 256, { reqSize: 64 });
const region = new HeapRegion("ring", layout.totalSize);
const vq = new Ring({ layout, memory: region.bytes, iova: 0x7_0000_0000, eventIdx: true, name: "q" });
const view = new DataView(region.bytes.buffer);
const q = 256;
let lastAvail = 0, usedIdx = 0;
const base = vq.addressBase(0x7f12_0000_0000);
const REQUESTS = 10_000;
Deno.bench({
  name: `split ring driver: 3-descriptor chain + kick check + reap, x${REQUESTS}`,
  fn() {
    for (let i = 0; i < REQUESTS; i++) {
      const id = vq.beginChain(3);
      vq.pushDescAt(base, 0, 16, false);
      vq.pushDescAt(base, 4096, 4096, true);
      vq.pushDescAt(base, 32, 1, true);
      vq.endChain();
      vq.availNotifNeeded();
      // device: take the head, publish it used
      view.getUint16(layout.driverAreaOffset + 4 + 2 * (lastAvail % q), true);
      lastAvail = (lastAvail + 1) & 0xffff;
      const at = layout.deviceAreaOffset + 4 + 8 * (usedIdx % q);
      view.setUint32(at, id, true);
      view.setUint32(at + 4, 1, true);
      usedIdx = (usedIdx + 1) & 0xffff;
      view.setUint16(layout.deviceAreaOffset + 2, usedIdx, true);
      vq.nextUsed();
    }
  },
});
