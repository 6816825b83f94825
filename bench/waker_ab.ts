// eventfd mode's wake-up path, for an A/B of two checkouts (how a waker
// thread wakes the event loop): 4 KiB random reads against a null-co
// qemu-storage-daemon at QD1 and QD32, with the default 50 µs spin and with
// none (every completion then goes through the wake-up). One JSON line:
//   ROOT=/path/to/checkout deno run -A bench/waker_ab.ts [seconds per row]
// ROOT defaults to this checkout; the workload loops are this checkout's.
import { qd1, qdN, rig } from "./_workloads.ts";

const ROOT = Deno.env.get("ROOT") ?? new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const { VirtioBlk } = await import(`${ROOT}/mod.ts`);
const { QemuStorageDaemon } = await import(`${ROOT}/testing.ts`);
const seconds = Number(Deno.args[0] ?? 2);

await using qsd = await QemuStorageDaemon.start({ driver: "null-co", size: 1 << 30 });
const out: Record<string, number> = {};
for (const spinMicros of [50, 0]) {
  await using blk = await VirtioBlk.connect({
    transport: "vhost-user",
    path: qsd.socketPath,
    mode: "eventfd",
    spinMicros,
  });
  const r = rig(blk, 32);
  await qdN(r, 32, 20_000, false); // warm up: the daemon's iothread and our JIT
  let n = 0;
  let t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) {
    await qd1(r, 500, false);
    n += 500;
  }
  out[`qd1_us_spin${spinMicros}`] = +((performance.now() - t0) * 1000 / n).toFixed(2);
  n = 0;
  t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) {
    await qdN(r, 32, 8192, false);
    n += 8192;
  }
  out[`qd32_kiops_spin${spinMicros}`] = +(n / (performance.now() - t0)).toFixed(1);
}
console.log(JSON.stringify(out));
