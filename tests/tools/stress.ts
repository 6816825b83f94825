// `deno task stress`: the eventfd-mode lost-wakeup stress against
// qemu-storage-daemon, EVENT_IDX on, for 10 minutes by default (half of it
// with no spin, so that every gap ends in a sleep).
// `deno run -A tests/tools/stress.ts [seconds]`
import { VirtioBlk } from "../../mod.ts";
import { QemuStorageDaemon } from "../../testing.ts";
import { stressBursts } from "../_stress.ts";

const seconds = Number(Deno.args[0] ?? 600);
await using qsd = await QemuStorageDaemon.start({ driver: "null-co", size: 1 << 30 });
for (const spinMicros of [0, 50]) {
  await using blk = await VirtioBlk.connect({
    transport: "vhost-user",
    path: qsd.socketPath,
    mode: "eventfd",
    spinMicros,
    queueSize: 512, // 128 requests of 3 descriptors
  });
  if (!blk.features.eventIdx) throw new Error("EVENT_IDX was not negotiated");
  const r = await stressBursts(blk, seconds / 2, spinMicros + 1);
  console.log(
    `eventfd stress (spin ${spinMicros} µs, EVENT_IDX): ${r.bursts.toLocaleString("en")} bursts, ` +
      `${r.requests.toLocaleString("en")} requests, depth up to ${r.maxDepth}, ${
        r.sleeps.toLocaleString("en")
      } sleeps on ` +
      `the eventfd, ${r.seconds.toFixed(0)} s: none lost`,
  );
}
