import assert from "node:assert/strict";
import { DeviceProtocolError } from "../mod.ts";
import { PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED } from "../src/virtqueue/defs.ts";
import { addChain, makeRing, type TestRing } from "./_rings.ts";

function complete(r: TestRing, len = 1): number[] {
  const done: number[] = [];
  for (let c = r.dev.take(); c; c = r.dev.take()) {
    r.dev.pushUsed(c.id, len, c.ringLen);
    done.push(c.id);
  }
  return done;
}

function reap(r: TestRing): number[] {
  const ids: number[] = [];
  for (let id = r.vq.nextUsed(); id >= 0; id = r.vq.nextUsed()) ids.push(id);
  return ids;
}

function assertViolation(fn: () => unknown, violation: string): void {
  assert.throws(fn, (e: unknown) => e instanceof DeviceProtocolError && e.violation === violation);
}

Deno.test("packed: a chain is published by its head's flags, with the wrap counter", () => {
  const r = makeRing("packed", 8);
  const id = addChain(r, 4096);
  const c = r.dev.take()!;
  assert.equal(c.id, id);
  assert.equal(c.ringLen, 3);
  assert.deepEqual(c.descs.map((d) => [d.len, d.write]), [[16, false], [4096, true], [1, true]]);
  assert.equal(c.descs[1].addr, 0x1_0010_0000, "64-bit address");
  const flags = new DataView(r.region.bytes.buffer).getUint16(14, true);
  assert.equal(flags & (PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED), PACKED_DESC_F_AVAIL, "first lap: AVAIL=1, USED=0");
  assert.equal(r.vq.freeDescriptors, 5);
  r.dev.pushUsed(c.id, 4097, c.ringLen);
  assert.deepEqual(reap(r), [id]);
  assert.equal(r.vq.lastUsedLen, 4097);
  assert.equal(r.vq.freeDescriptors, 8);
});

Deno.test("packed: wrap-around past many full wraps, in and out of order, free list intact", () => {
  for (const size of [1, 4, 8, 64]) {
    const r = makeRing("packed", size);
    let completed = 0;
    const inFlight: number[] = [];
    const held: { id: number; ringLen: number }[] = []; // taken by the device, not yet completed
    for (let step = 0; step < 50 * size + 500; step++) {
      // Fill what fits (chains of 1 or 3 descriptors, so positions wrap unevenly).
      for (;;) {
        const id = size >= 3 && step % 3 !== 0 ? addChain(r) : (() => {
          const i = r.vq.beginChain(1);
          if (i < 0) return -1;
          r.vq.pushDescAt(r.data, 0, 512, true);
          return r.vq.endChain();
        })();
        if (id < 0) break;
        inFlight.push(id);
      }
      // The device takes everything and completes a rotating subset, out of order.
      for (let c = r.dev.take(); c; c = r.dev.take()) held.push(c);
      const now = held.splice(step % held.length, Math.min(1 + (step % held.length), held.length));
      for (const c of now.reverse()) r.dev.pushUsed(c.id, 1, c.ringLen);
      for (const id of reap(r)) {
        const i = inFlight.indexOf(id);
        assert.ok(i >= 0, `id ${id} came back but was not in flight`);
        inFlight.splice(i, 1);
        completed++;
      }
      r.vq.assertConsistent();
    }
    assert.ok(completed > 3 * size, `size ${size}: ${completed} completions`);
  }
});

Deno.test("packed violation: used id out of range", () => {
  const r = makeRing("packed", 8);
  addChain(r);
  r.dev.take();
  r.dev.pushUsed(9, 1, 3);
  assertViolation(() => r.vq.nextUsed(), "used-id-out-of-range");
  assert.throws(() => addChain(r), (e) => e === r.vq.error);
});

Deno.test("packed violation: id not in flight, and the same id twice", () => {
  const r = makeRing("packed", 8);
  const a = addChain(r);
  addChain(r);
  complete(r).length;
  // complete() used both; forge a third used descriptor reusing the first id.
  assert.equal(reap(r).length, 2);
  r.dev.pushUsed(a, 1, 3);
  assertViolation(() => r.vq.nextUsed(), "used-id-not-in-flight");

  const r2 = makeRing("packed", 8);
  addChain(r2);
  r2.dev.take();
  r2.dev.pushUsed(5, 0, 3);
  assertViolation(() => r2.vq.nextUsed(), "used-id-not-in-flight");
});

Deno.test("packed violation (strict): used length above the writable bytes", () => {
  const r = makeRing("packed", 8, { strictUsedLength: true });
  const id = addChain(r, 512);
  const c = r.dev.take()!;
  r.dev.pushUsed(id, 514, c.ringLen);
  assertViolation(() => r.vq.nextUsed(), "used-len-too-large");
  assert.equal(r.vq.inFlight, 1, "the chain stays in flight for its owner to reject");
});

Deno.test("packed default policy: a used length above the writable bytes is clamped and counted", () => {
  const r = makeRing("packed", 8);
  const id = addChain(r, 512);
  const c = r.dev.take()!;
  r.dev.pushUsed(id, 100_000, c.ringLen);
  assert.equal(r.vq.nextUsed(), id);
  assert.equal(r.vq.lastUsedLen, 513);
  assert.equal(r.vq.usedLengthClamped, 1);
  r.vq.assertConsistent();
});

Deno.test("packed: descriptors rewritten after submission cannot corrupt the driver", () => {
  const r = makeRing("packed", 8);
  const a = addChain(r), b = addChain(r);
  const ca = r.dev.take()!, cb = r.dev.take()!;
  for (let i = 0; i < 8; i++) r.dev.rewriteDesc(i, { addr: 0xdead, len: 0xffff_ffff, flags: 0, next: 7 });
  r.dev.pushUsed(cb.id, 1, cb.ringLen);
  r.dev.pushUsed(ca.id, 1, ca.ringLen);
  assert.deepEqual(reap(r), [b, a]);
  r.vq.assertConsistent();
  assert.equal(r.vq.freeDescriptors, 8);
});

Deno.test("packed: a descriptor whose AVAIL/USED bits disagree is not taken as used", () => {
  const r = makeRing("packed", 8);
  addChain(r);
  r.dev.take();
  r.dev.rewriteDesc(0, { flags: PACKED_DESC_F_AVAIL }); // AVAIL=1, USED=0: still "available", not used
  assert.equal(r.vq.nextUsed(), -1);
  assert.equal(r.vq.hasUsed(), false);
});

Deno.test("packed: event suppression — DISABLE, ENABLE and EVENT_IDX descriptors", () => {
  const r = makeRing("packed", 8, { eventIdx: true });
  const view = new DataView(r.region.bytes.buffer);
  const devFlags = r.layout.deviceAreaOffset + 2, drvOffWrap = r.layout.driverAreaOffset, drvFlags = drvOffWrap + 2;
  addChain(r);
  assert.equal(r.vq.availNotifNeeded(), true, "ENABLE (0) by default");
  view.setUint16(devFlags, 1, true); // DISABLE
  addChain(r);
  assert.equal(r.vq.availNotifNeeded(), false);
  // The device takes both chains, completes the first, and asks for a kick at
  // position 6 (lap 1): the next chain (positions 6, 7, 0) crosses it.
  const first = r.dev.take()!;
  r.dev.take();
  r.dev.pushUsed(first.id, 1, first.ringLen);
  assert.equal(reap(r).length, 1);
  r.dev.publishAvailEvent();
  assert.ok(addChain(r) >= 0);
  assert.equal(r.vq.availNotifNeeded(), true);
  r.vq.setUsedNotifEnabled(true);
  assert.equal(view.getUint16(drvFlags, true), 2, "DESC");
  assert.equal(view.getUint16(drvOffWrap, true), 3 | (1 << 15), "the driver's used position 3, wrap 1");
  r.vq.setUsedNotifEnabled(false);
  assert.equal(view.getUint16(drvFlags, true), 1, "DISABLE");
});

Deno.test("indirect (split and packed): a long chain takes one ring descriptor", () => {
  for (const format of ["split", "packed"] as const) {
    const r = makeRing(format, 8, { indirect: 8 });
    const id = addChain(r, 4 * 512, 4); // 6 descriptors through the table
    assert.ok(id >= 0);
    assert.equal(r.vq.freeDescriptors, 7, `${format}: one ring entry`);
    const c = r.dev.take()!;
    assert.equal(c.descs.length, 6);
    assert.deepEqual(c.descs.map((d) => d.write), [false, true, true, true, true, true]);
    r.dev.pushUsed(c.id, 2049, c.ringLen);
    assert.deepEqual(reap(r), [id]);
    assert.equal(r.vq.lastUsedLen, 2049);
    r.vq.assertConsistent();
  }
});

Deno.test("indirect: more segments than free descriptors succeeds; without indirect it is 'full'", () => {
  for (const format of ["split", "packed"] as const) {
    const withInd = makeRing(format, 8, { indirect: 8 });
    const without = makeRing(format, 8);
    for (const r of [withInd, without]) {
      addChain(r);
      assert.equal(r.vq.freeDescriptors, r === withInd ? 5 : 5);
    }
    // 4 data segments + header + status = 6 descriptors; 5 free.
    assert.ok(addChain(withInd, 2048, 4) >= 0, `${format}: indirect fits`);
    assert.equal(addChain(without, 2048, 4), -1, `${format}: direct does not`);
  }
});

for (const format of ["split", "packed"] as const) {
  Deno.test(`${format}: 2^16 made available between notification checks still notifies`, () => {
    // A device that polls the ring consumes everything without notifications;
    // the split ring counts chains, the packed ring descriptors (4 per chain here).
    const r = makeRing(format, 16, { eventIdx: true });
    const segments = format === "split" ? 1 : 2;
    const chains = format === "split" ? 65536 : 65536 / 4;
    for (let i = 0; i < chains - 1; i++) {
      const id = addChain(r, 512, segments);
      const c = r.dev.take()!;
      r.dev.publishAvailEvent(); // "notify me for anything after this one"
      r.dev.pushUsed(c.id, 513, c.ringLen);
      assert.equal(r.vq.nextUsed(), id);
    }
    addChain(r, 512, segments); // the device has gone to sleep: this one needs a notification
    assert.equal(r.vq.availNotifNeeded(), true);
    assert.equal(r.vq.availNotifNeeded(), false, "nothing new since the last check");
  });
}
