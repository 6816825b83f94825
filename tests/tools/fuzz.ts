// `deno task fuzz`: at least 1,000,000 iterations of the ring fuzzer for each
// format (over several seeds), reporting what it exercised.
// `deno run -A tests/tools/fuzz.ts [iterations per format] [first seed]`
import { fuzzRing } from "../_fuzz_ring.ts";

const total = Number(Deno.args[0] ?? 1_000_000);
const firstSeed = Number(Deno.args[1] ?? 1);
const perSeed = 250_000;
for (const format of ["split", "packed"] as const) {
  const sum = { iterations: 0, added: 0, accepted: 0, hostileWrites: 0, resets: 0 };
  const violations: Record<string, number> = {};
  const t0 = performance.now();
  for (let seed = firstSeed; sum.iterations < total; seed++) {
    const s = fuzzRing(seed, Math.min(perSeed, total - sum.iterations), format);
    sum.iterations += s.iterations;
    sum.added += s.added;
    sum.accepted += s.accepted;
    sum.hostileWrites += s.hostileWrites;
    sum.resets += s.resets;
    for (const [k, v] of Object.entries(s.violations)) violations[k] = (violations[k] ?? 0) + v;
  }
  const secs = ((performance.now() - t0) / 1000).toFixed(1);
  console.log(`${format} ring fuzz: ${sum.iterations.toLocaleString("en")} iterations in ${secs} s`);
  console.log(
    `  chains added ${sum.added}, completions accepted ${sum.accepted}, hostile device writes ${sum.hostileWrites}`,
  );
  console.log(`  violations detected (queue failed, then a fresh queue): ${JSON.stringify(violations)}`);
  console.log("  crashes: 0, invariant violations: 0 (the fuzzer throws at the first one)");
}
