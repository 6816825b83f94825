// `deno task soak`: at least 1,000,000 mixed random reads/writes/flushes over
// 2 queues against a file-backed qemu-storage-daemon, then the image checked
// by reading the file directly. `deno run -A tests/tools/soak.ts [ops] [poll|eventfd]`
import { soak } from "../_soak.ts";

const ops = Number(Deno.args[0] ?? 1_000_000);
const mode = (Deno.args[1] ?? "poll") as "poll" | "eventfd";
const r = await soak({
  ops,
  queues: 2,
  depth: 16,
  sizeMiB: 128,
  mode,
  onProgress: (n) => console.error(`  ${n.toLocaleString("en")} operations`),
});
console.log(
  `soak (${mode}, 2 queues x 16 deep, 128 MiB image): ${r.ops.toLocaleString("en")} operations in ${
    r.seconds.toFixed(1)
  } s`,
);
console.log(
  `  reads ${r.reads}, writes ${r.writes}, flushes ${r.flushes}, ${(r.bytes / 2 ** 30).toFixed(2)} GiB moved`,
);
console.log(
  `  read mismatches: ${r.readMismatches}, image mismatches (independent reader): ${r.imageMismatches}, errors: ${r.errors}`,
);
if (r.readMismatches || r.imageMismatches || r.errors) Deno.exit(1);
