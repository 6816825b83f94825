// Runs inside the guest: connects through a kernel transport with 3 queues,
// hands queues 1 and 2 to two Workers (tests/_queue_worker.ts) that write and
// verify their own ranges while this thread writes through queue 0, checks
// every block through queue 0, writes the generations for the host to check
// the image with, then closes with 16 requests in flight in a Worker (they
// must reject within 1 s).
// deno run -A tests/guest/workers_main.ts --transport vfio-pci --device 0000:00:01.0 --mode eventfd \
//   --first-block 4096 --gens-out g.bin
import { parseArgs } from "node:util";
import { TARGET_FLAGS, targetOf } from "./_target.ts";
import { type CompletionMode, VirtioBlk } from "../../mod.ts";
import { BLOCK, holdsBlock, randomBlockWrites } from "../_block_pattern.ts";

const { values: a } = parseArgs({
  args: Deno.args,
  options: {
    ...TARGET_FLAGS,
    mode: { type: "string", default: "eventfd" },
    blocks: { type: "string", default: "256" },
    "first-block": { type: "string", default: "0" },
    writes: { type: "string", default: "600" },
    "gens-out": { type: "string" },
  },
});
const mode = a.mode as CompletionMode;
const label = `${a.transport} ${mode}`;
const blocks = Number(a.blocks), writes = Number(a.writes), first = Number(a["first-block"]);
const target = targetOf(a);
const WORKER = new URL("../_queue_worker.ts", import.meta.url);

function worker(job: Record<string, unknown>): { worker: Worker; next: () => Promise<Record<string, unknown>> } {
  const w = new Worker(WORKER, { type: "module" });
  const inbox: unknown[] = [];
  let waiting: ((m: unknown) => void) | undefined;
  w.onmessage = (e) => (waiting ? (waiting(e.data), waiting = undefined) : inbox.push(e.data));
  w.postMessage(job);
  return {
    worker: w,
    next: async () => {
      const m = (inbox.shift() ?? await new Promise<unknown>((r) => (waiting = r))) as Record<string, unknown>;
      if ("error" in m) throw new Error(`worker: ${m.error}`);
      return m;
    },
  };
}

const t0 = performance.now();
const options = { ...target, numQueues: 3, queueSize: 64, mode, requestTimeoutMs: 30_000 };
{
  const blk = await VirtioBlk.connect(options);
  try {
    const handles = [
      await blk.detachQueue(1, { bufferBytes: 1 << 20 }),
      await blk.detachQueue(2, { bufferBytes: 1 << 20 }),
    ];
    const ws = handles.map((handle, i) =>
      worker({ job: "writes", handle, first: first + (i + 1) * blocks, blocks, count: writes, depth: 16, seed: 11 + i })
    );
    const mine = randomBlockWrites((o, b) => blk.write(o, b), (n) => blk.allocBuffer(n), first, blocks, writes, 16, 3);
    const done = await Promise.all(ws.map((w) => w.next()));
    ws.forEach((w) => w.worker.terminate());
    const gens = [await mine, ...done.map((d) => d.gens as Uint32Array)];
    await blk.flush();
    const buf = blk.allocBuffer(BLOCK);
    for (let r = 0; r < 3; r++) {
      for (let b = 0; b < blocks; b++) {
        const block = first + r * blocks + b;
        await blk.read(block * BLOCK, buf);
        if (!holdsBlock(buf, block, gens[r][b])) throw new Error(`block ${block} read back wrong`);
      }
    }
    if (a["gens-out"]) {
      const all = new Uint32Array(3 * blocks);
      gens.forEach((g, r) => all.set(g, r * blocks));
      await Deno.writeFile(a["gens-out"], new Uint8Array(all.buffer));
    }
    console.log(
      `WORKERS ${label}: OK 3 x ${writes} writes (2 Workers + main) verified in ${
        ((performance.now() - t0) / 1000).toFixed(1)
      } s`,
    );
  } finally {
    await blk.close();
  }
}
{
  const blk = await VirtioBlk.connect(options);
  const w = worker({
    job: "flood",
    handle: await blk.detachQueue(1, { bufferBytes: 1 << 20 }),
    depth: 16,
    first: first + 3 * blocks,
  });
  await w.next();
  await new Promise((r) => setTimeout(r, 100));
  const closing = Date.now();
  await blk.close();
  const { failures, later } = await w.next() as { failures: { name: string; at: number }[]; later: string };
  w.worker.terminate();
  const slowest = Math.max(...failures.map((f) => f.at - closing));
  const names = [...new Set([...failures.map((f) => f.name), later])];
  if (failures.length !== 16 || names.join() !== "ClosedError" || slowest >= 1000) {
    throw new Error(`after the close: ${failures.length} failures, ${names.join()}, the slowest ${slowest} ms`);
  }
  console.log(`WORKERS ${label}: OK close with 16 in flight in a Worker: all ClosedError within ${slowest} ms`);
}
