// A short data-integrity soak (the full one is `deno task soak`).
import assert from "node:assert/strict";
import { loadShim } from "../src/os/loader.ts";
import { soak } from "./_soak.ts";
import { missing } from "./_support.ts";

await loadShim();

for (const mode of ["poll", "eventfd"] as const) {
  Deno.test({
    name: `soak (${mode}): 20,000 mixed operations over 2 queues, verified by an independent reader`,
    ignore: missing("qemu-storage-daemon"),
    fn: async () => {
      const r = await soak({ ops: 20_000, queues: 2, depth: 16, sizeMiB: 16, mode, seed: mode === "poll" ? 7 : 8 });
      assert.equal(r.ops, 20_000);
      assert.ok(r.reads > 5000 && r.writes > 5000 && r.flushes > 500, JSON.stringify(r));
      assert.equal(r.errors, 0);
      assert.equal(r.readMismatches, 0);
      assert.equal(r.imageMismatches, 0);
    },
  });
}
