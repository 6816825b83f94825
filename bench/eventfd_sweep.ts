// eventfd (interrupt) mode: how long to spin before sleeping. For each spin
// budget, 4 KiB random reads at QD1 against qemu-storage-daemon (null-co):
// mean latency and the CPU this process spends per I/O; then the CPU used
// while connected and idle. `deno run -A bench/eventfd_sweep.ts`
import process from "node:process";
import { VirtioBlk } from "../mod.ts";
import { QemuStorageDaemon } from "../testing.ts";
import { qd1, QUICK, rig } from "./_workloads.ts";

const seconds = Number(Deno.args[0] ?? (QUICK ? 1 : 3));
await using qsd = await QemuStorageDaemon.start({ driver: "null-co", size: 1 << 30 });

function cpuMicros(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

console.log("| spinMicros | QD1 mean latency (µs) | IOPS | CPU per I/O (µs) | CPU while busy (%) |");
console.log("| ---: | ---: | ---: | ---: | ---: |");
for (const spin of [0, 10, 25, 50, 100]) {
  await using blk = await VirtioBlk.connect({
    transport: "vhost-user",
    path: qsd.socketPath,
    mode: "eventfd",
    spinMicros: spin,
  });
  const r = rig(blk, 1);
  await qd1(r, 20_000, false); // warm up (the daemon's iothread and our JIT)
  let ios = 0;
  const c0 = cpuMicros(), t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) {
    await qd1(r, 1000, false);
    ios += 1000;
  }
  const wall = (performance.now() - t0) * 1000, cpu = cpuMicros() - c0;
  console.log(
    `| ${spin} | ${(wall / ios).toFixed(2)} | ${Math.round(ios / (wall / 1e6)).toLocaleString("en")} | ${
      (cpu / ios).toFixed(2)
    } | ${(100 * cpu / wall).toFixed(0)} |`,
  );
}

{
  await using blk = await VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath, mode: "eventfd" });
  await qd1(rig(blk, 1), 1000, false);
  const c0 = cpuMicros(), t0 = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const cpu = cpuMicros() - c0, wall = (performance.now() - t0) * 1000;
  console.log(
    `\nidle (connected, eventfd mode, nothing in flight) for ${seconds} s: CPU ${(100 * cpu / wall).toFixed(2)} %`,
  );
}
