// Short reconnect soaks for `deno task test` (the 60 s, 20-kill run is part of
// `deno task soak`): qemu-storage-daemon in both completion modes, and DPDK's
// example, whose memory-backed disk comes back empty — what a caller sees then.
import assert from "node:assert/strict";
import { loadShim } from "../src/os/loader.ts";
import { describeSoak, reconnectSoak, type ReconnectSoakOptions } from "./_reconnect_soak.ts";
import { missing } from "./_support.ts";

await loadShim();

for (const mode of ["eventfd", "poll"] as const) {
  Deno.test({
    name:
      `reconnect soak (${mode}): 8 s, 4 SIGKILLs of qemu-storage-daemon → nothing rejects, the image has every write`,
    ignore: missing("qemu-storage-daemon"),
    fn: async () => {
      const o: ReconnectSoakOptions = { backend: "qemu-storage-daemon", seconds: 8, kills: 4, mode, seed: 11 };
      const r = await reconnectSoak(o);
      console.log(describeSoak(o, r));
      assert.deepEqual(r.errors, []);
      assert.equal(r.readMismatches, 0);
      assert.equal(r.finalMismatches, 0);
      assert.equal(r.kills, 4);
      assert.equal(r.reconnects, 4);
      assert.ok(r.writes > 100);
    },
  });
}

Deno.test({
  name:
    "reconnect soak (DPDK example): nothing rejects; acknowledged writes from before a restart are gone (the disk is in its memory), later ones are there",
  ignore: missing("dpdk-vhost-blk"),
  fn: async () => {
    const o: ReconnectSoakOptions = { backend: "dpdk", seconds: 8, kills: 3, seed: 5 };
    const r = await reconnectSoak(o);
    console.log(describeSoak(o, r));
    assert.deepEqual(r.errors, []);
    assert.equal(r.readMismatches, 0, "reads match the model, which starts empty at each restart");
    assert.equal(r.finalMismatches, 0, "the final contents are exactly the writes since the last restart");
    assert.equal(r.reconnects, 3);
    assert.ok(r.lostAtRestart > 0, "acknowledged data was lost with the example's memory");
  },
});
