// A ring handed over: one driver-side object drives it, stops with nothing in
// flight, and another continues over the same memory from position() — what
// a queue given to a Worker does. The device side never notices.
import assert from "node:assert/strict";
import { InvalidArgumentError } from "../mod.ts";
import type { Ring } from "../src/virtqueue/ring.ts";
import { PackedRing } from "../src/virtqueue/packed.ts";
import { SplitRing } from "../src/virtqueue/split.ts";
import type { RingPosition } from "../src/virtqueue/types.ts";
import { addChain, makeRing, type TestRing } from "./_rings.ts";

/** A new driver-side ring over `r`'s memory, continuing at `resume`. */
function successor(r: TestRing, resume: RingPosition, eventIdx: boolean): Ring {
  const opts = { layout: r.layout, memory: r.region.bytes, iova: r.base, eventIdx, name: "successor", resume };
  return r.format === "packed" ? new PackedRing(opts) : new SplitRing(opts);
}

/** Adds what fits, lets the device take all, completes them out of order, reaps: `rounds` times. */
function drive(r: TestRing, vq: Ring, rounds: number): number {
  let completed = 0;
  for (let round = 0; round < rounds; round++) {
    const added = new Set<number>();
    for (let id = addChain({ ...r, vq }); id >= 0; id = addChain({ ...r, vq })) added.add(id);
    const taken = [];
    for (let c = r.dev.take(); c; c = r.dev.take()) taken.push(c);
    assert.equal(taken.length, added.size, "the device sees every chain added, and nothing else");
    for (const c of taken.reverse()) r.dev.pushUsed(c.id, 1, c.ringLen);
    for (let id = vq.nextUsed(); id >= 0; id = vq.nextUsed()) {
      assert.ok(added.delete(id), `id ${id} came back once, and was in flight`);
      completed++;
    }
    assert.equal(added.size, 0);
  }
  return completed;
}

for (const format of ["split", "packed"] as const) {
  for (const eventIdx of [false, true]) {
    Deno.test(`${format}${eventIdx ? "+EVENT_IDX" : ""}: a ring continued from position() by another object goes on where the first stopped`, () => {
      for (const size of [4, 8, 256]) {
        const r = makeRing(format, size, { eventIdx });
        // Past a few wraps of the ring (and, for a small split ring, of nothing else).
        let first = drive(r, r.vq, 7);
        // An odd number of single-descriptor chains, so that the packed ring stops mid-lap.
        const id = r.vq.beginChain(1);
        r.vq.pushDescAt(r.data, 0, 512, true);
        assert.equal(r.vq.endChain(), id);
        assert.throws(() => r.vq.position(), InvalidArgumentError, "not while a chain is in flight");
        const c = r.dev.take()!;
        r.dev.pushUsed(c.id, 1, c.ringLen);
        assert.equal(r.vq.nextUsed(), id);
        first++;
        const at = r.vq.position();
        const before = r.region.bytes.slice(0, r.layout.reqOffset);
        const next = successor(r, at, eventIdx);
        assert.deepEqual(r.region.bytes.slice(0, r.layout.reqOffset), before, "the ring memory is kept as it was");
        assert.deepEqual(next.position(), at);
        const second = drive(r, next, 9);
        assert.ok(first > 0 && second > 0);
        assert.equal(next.freeDescriptors, size);
      }
    });
  }
}

Deno.test("resume: a position outside the ring is refused", () => {
  const r = makeRing("packed", 8);
  assert.throws(() => successor(r, { next: 8, wrap: true }, false), InvalidArgumentError);
});
