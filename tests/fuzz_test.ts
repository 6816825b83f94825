// A slice of the ring fuzzer (the full run is `deno task fuzz`).
import assert from "node:assert/strict";
import { fuzzRing } from "./_fuzz_ring.ts";

for (const format of ["split", "packed"] as const) {
  Deno.test(`fuzz (${format}): 20,000 seeded iterations of hostile device writes keep the ring consistent`, () => {
    let accepted = 0, violations = 0;
    for (const seed of [11, 12, 13, 14]) {
      const s = fuzzRing(seed, 5_000, format);
      accepted += s.accepted;
      violations += Object.values(s.violations).reduce((a, b) => a + b, 0);
    }
    assert.ok(accepted > 100, "the fuzzer exercised normal completions");
    assert.ok(violations > 10, "the fuzzer provoked device violations");
  });

  Deno.test(`fuzz (${format}): the same seed gives the same run`, () => {
    assert.deepEqual(fuzzRing(99, 3000, format), fuzzRing(99, 3000, format));
  });
}
