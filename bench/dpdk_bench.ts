// vhost-user against a polling back-end we did not write: DPDK's vhost library
// through its vhost_blk example (started by this file, with the documented
// packed-ring fix). 4 KiB random reads at queue depth 1 and 32, split and
// packed rings, batch and promise APIs, poll mode.
// `deno bench -A bench/dpdk_bench.ts` (part of `deno task bench`)
//
// The example serves one front-end at a time and busy-polls a core while
// connected, so the rings are measured one after the other on one process:
// the first bench of each ring connects (in its warm-up) and closes the other.
import { VirtioBlk } from "../mod.ts";
import { DpdkVhostBlk } from "../src/testing/dpdk_vhost_blk.ts";
import { promises, qd1, qdN, type Rig, rig } from "./_workloads.ts";

const QD1_N = 2000; // requests per iteration at queue depth 1
const QD32_N = 8192; // requests per iteration at queue depth 32

const why = await DpdkVhostBlk.missing();
if (why) throw new Error(why);
const dpdk = await DpdkVhostBlk.start();
globalThis.addEventListener("unload", () => {
  try {
    Deno.kill(dpdk.pid, "SIGKILL");
    Deno.removeSync(dpdk.dir, { recursive: true });
  } catch { /* gone */ }
});

let current: { ring: "split" | "packed"; r: Rig } | undefined;
/** The rig for `ring`, connecting it (and closing the other) when needed. */
async function rigFor(ring: "split" | "packed"): Promise<Rig> {
  if (current?.ring === ring) return current.r;
  await current?.r.blk.close();
  const blk = await VirtioBlk.connect({ transport: "vhost-user", path: dpdk.socketPath, mode: "poll", ring });
  current = { ring, r: rig(blk, 32) };
  await qdN(current.r, 32, 20_000, false); // warm the JIT and the back-end
  return current.r;
}

for (const ring of ["split", "packed"] as const) {
  Deno.bench({
    name: `dpdk ${ring} randread 4K QD1 batch (x${QD1_N})`,
    group: `dpdk ${ring} QD1`,
    baseline: true,
    warmup: 20,
    n: 200,
    async fn() {
      await qd1(await rigFor(ring), QD1_N, false);
    },
  });
  Deno.bench({
    name: `dpdk ${ring} randread 4K QD1 promise (x${QD1_N})`,
    group: `dpdk ${ring} QD1`,
    warmup: 20,
    n: 200,
    async fn() {
      await promises(await rigFor(ring), 1, QD1_N);
    },
  });
  Deno.bench({
    name: `dpdk ${ring} randread 4K QD32 batch (x${QD32_N})`,
    group: `dpdk ${ring} QD32`,
    baseline: true,
    warmup: 10,
    n: 100,
    async fn() {
      await qdN(await rigFor(ring), 32, QD32_N, false);
    },
  });
  Deno.bench({
    name: `dpdk ${ring} randread 4K QD32 promise, 32 concurrent (x${QD32_N})`,
    group: `dpdk ${ring} QD32`,
    warmup: 10,
    n: 100,
    async fn() {
      await promises(await rigFor(ring), 32, QD32_N);
    },
  });
}
