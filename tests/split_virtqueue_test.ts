import assert from "node:assert/strict";
import { DeviceProtocolError, InvalidArgumentError, QueueFullError } from "../mod.ts";
import { DESC_F_NEXT, DESC_F_WRITE } from "../src/virtqueue/defs.ts";
import { RingDevice } from "./_ring_device.ts";

/** Adds a 3-descriptor request: header (readable), data (writable, `len`), status (writable). */
function addBlkLike(dev: RingDevice, len = 512): number {
  return dev.vq.addRequest((req, addDesc) => {
    req.view.setUint32(0, 0, true);
    addDesc({ iova: req.iova, length: 16 }, false);
    addDesc({ iova: 0x1_0000_0000 + 4096 * req.id, length: len }, true);
    addDesc({ iova: req.iova + 32, length: 1 }, true);
  });
}

function assertViolation(fn: () => unknown, violation: string): void {
  assert.throws(fn, (e: unknown) => e instanceof DeviceProtocolError && e.violation === violation);
}

Deno.test("addRequest writes a chain the device can follow, with 64-bit addresses", () => {
  const dev = new RingDevice(8);
  const id = addBlkLike(dev, 4096);
  assert.equal(dev.availIdx(), 1);
  assert.equal(dev.takeAvail(), id);
  const chain = dev.chain(id);
  assert.equal(chain.length, 3);
  assert.deepEqual(chain.map((d) => d.flags), [DESC_F_NEXT, DESC_F_NEXT | DESC_F_WRITE, DESC_F_WRITE]);
  assert.equal(chain[0].addr, dev.base + dev.layout.reqOffset + 64 * id);
  assert.equal(chain[0].len, 16);
  assert.equal(chain[1].addr, 0x1_0000_0000 + 4096 * id);
  assert.equal(chain[1].len, 4096);
  assert.equal(chain[2].len, 1);
  assert.equal(dev.vq.inFlight, 1);
  assert.equal(dev.vq.freeDescriptors, 5);
  assert.equal(dev.vq.descTableIova, dev.base);
  assert.equal(dev.vq.driverAreaIova, dev.base + dev.layout.driverAreaOffset);
  assert.equal(dev.vq.deviceAreaIova, dev.base + dev.layout.deviceAreaOffset);
});

Deno.test("completions() yields each finished chain with its slot and length", () => {
  const dev = new RingDevice(8);
  const a = addBlkLike(dev), b = addBlkLike(dev);
  dev.pushUsed(b, 513);
  dev.pushUsed(a, 1);
  const got = [...dev.vq.completions()].map((c) => [c.id, c.len, c.req.id]);
  assert.deepEqual(got, [[b, 513, b], [a, 1, a]]);
  assert.equal(dev.vq.inFlight, 0);
  assert.equal(dev.vq.freeDescriptors, 8);
  assert.deepEqual([...dev.vq.completions()], []);
});

Deno.test("full queue: typed error, ring untouched, and room again after completions", () => {
  const dev = new RingDevice(8);
  const ids = [addBlkLike(dev), addBlkLike(dev)];
  assert.equal(dev.vq.freeDescriptors, 2);
  const before = dev.region.bytes.slice();
  assert.throws(() => addBlkLike(dev), QueueFullError);
  assert.deepEqual(dev.region.bytes.slice(0, dev.layout.reqOffset), before.slice(0, dev.layout.reqOffset));
  assert.equal(dev.availIdx(), 2);
  // Two descriptors still fit.
  const small = dev.vq.addRequest((req, addDesc) => {
    addDesc({ iova: req.iova, length: 16 }, false);
    addDesc({ iova: req.iova + 32, length: 1 }, true);
  });
  assert.equal(dev.vq.freeDescriptors, 0);
  assert.throws(() =>
    dev.vq.addRequest((req, addDesc) => {
      addDesc({ iova: req.iova, length: 16 }, false);
    }), QueueFullError);
  dev.pushUsed(ids[0], 0);
  assert.equal(dev.vq.nextUsed(), ids[0]);
  assert.equal(dev.vq.freeDescriptors, 3);
  assert.ok(addBlkLike(dev) >= 0);
  assert.ok(small >= 0);
});

Deno.test("chains longer than the queue and empty chains are argument errors", () => {
  const dev = new RingDevice(4);
  assert.throws(() => dev.vq.addRequest(() => {}), InvalidArgumentError);
  assert.throws(
    () =>
      dev.vq.addRequest((req, addDesc) => {
        for (let i = 0; i < 5; i++) addDesc({ iova: req.iova, length: 1 }, false);
      }),
    InvalidArgumentError,
  );
  assert.throws(
    () => dev.vq.addRequest((req, addDesc) => addDesc({ iova: req.iova, length: 0 }, false)),
    InvalidArgumentError,
  );
  assert.throws(
    () => dev.vq.addRequest((_req, addDesc) => addDesc({ iova: -1, length: 1 }, false)),
    InvalidArgumentError,
  );
  assert.throws(
    () => dev.vq.addRequest((req, addDesc) => addDesc({ iova: req.iova, length: 2 ** 32 }, false)),
    InvalidArgumentError,
  );
  // Uint8Arrays need a translator; without one they are refused.
  assert.throws(() => dev.vq.addRequest((_req, addDesc) => addDesc(new Uint8Array(8), false)), InvalidArgumentError);
  assert.equal(dev.vq.inFlight, 0);
  assert.equal(dev.vq.freeDescriptors, 4);
  assert.equal(dev.availIdx(), 0);
});

Deno.test("out-of-order completion recycles every descriptor exactly once", () => {
  const dev = new RingDevice(16);
  const ids = [];
  for (let i = 0; i < 5; i++) ids.push(addBlkLike(dev));
  assert.equal(new Set(ids).size, 5);
  for (const id of [ids[3], ids[0], ids[4], ids[2], ids[1]]) dev.pushUsed(id, 1);
  const order = [...dev.vq.completions()].map((c) => c.id);
  assert.deepEqual(order, [ids[3], ids[0], ids[4], ids[2], ids[1]]);
  assert.equal(dev.vq.freeDescriptors, 16);
  // Refill the whole queue: every descriptor comes back, none twice.
  const seen = new Set<number>();
  for (let i = 0; i < 5; i++) {
    const id = addBlkLike(dev);
    for (const d of [id, ...dev.chain(id).slice(0, -1).map((x) => x.next)]) {
      assert.ok(!seen.has(d), `descriptor ${d} handed out twice`);
      seen.add(d);
    }
  }
  assert.equal(seen.size, 15);
});

Deno.test("ring indices wrap past 65536 requests with the free list intact", () => {
  const dev = new RingDevice(8);
  let inFlight: number[] = [];
  let completed = 0;
  for (let i = 0; i < 70_000; i++) {
    while (dev.vq.freeDescriptors >= 3) {
      inFlight.push(addBlkLike(dev));
    }
    // Complete in a rotating order so chains interleave on the free list.
    const pick = inFlight.splice(i % inFlight.length, 1)[0];
    dev.pushUsed(pick, 1);
    assert.equal(dev.vq.nextUsed(), pick);
    completed++;
    if (i % 10_000 === 0) {
      // The descriptors in flight plus the free ones cover the table exactly.
      const used = new Set<number>();
      for (const id of inFlight) {
        for (let d = 0, cur = id; d < 3; d++) {
          used.add(cur);
          cur = dev.desc(cur).next;
        }
      }
      assert.equal(used.size, 3 * inFlight.length);
      assert.equal(dev.vq.freeDescriptors, 8 - used.size);
    }
  }
  while (inFlight.length > 0) {
    dev.pushUsed(inFlight.pop()!, 1);
    dev.vq.nextUsed();
    completed++;
  }
  inFlight = [];
  assert.ok(completed > 65536);
  assert.equal(dev.vq.freeDescriptors, 8);
  assert.equal(dev.vq.inFlight, 0);
});

Deno.test("device violation: used id out of range fails the queue", () => {
  const dev = new RingDevice(8);
  addBlkLike(dev);
  dev.pushUsed(8, 1);
  assertViolation(() => dev.vq.nextUsed(), "used-id-out-of-range");
  assert.ok(dev.vq.error instanceof DeviceProtocolError);
  // Every later call fails fast with the same error.
  assert.throws(() => addBlkLike(dev), (e) => e === dev.vq.error);
  assert.throws(() => dev.vq.nextUsed(), (e) => e === dev.vq.error);
  assert.deepEqual(collectInFlight(dev), [0]);
});

Deno.test("device violation: id not in flight, and the same id twice", () => {
  const dev = new RingDevice(8);
  const a = addBlkLike(dev);
  addBlkLike(dev);
  dev.pushUsed(a, 1);
  dev.pushUsed(a, 1);
  assert.equal(dev.vq.nextUsed(), a);
  assertViolation(() => dev.vq.nextUsed(), "used-id-not-in-flight");

  const dev2 = new RingDevice(8);
  addBlkLike(dev2);
  dev2.pushUsed(5, 0); // a descriptor inside a chain, never a head in flight
  assertViolation(() => dev2.vq.nextUsed(), "used-id-not-in-flight");
});

Deno.test("device violation: an id completed twice in one batch, reused in between, is caught as stale", () => {
  const dev = new RingDevice(8);
  const a = addBlkLike(dev);
  addBlkLike(dev);
  dev.pushUsed(a, 513, false);
  dev.pushUsed(a, 513); // both elements published by one index update
  assert.equal(dev.vq.nextUsed(), a);
  // The completion handler submits again and gets id a back from the free list.
  assert.equal(addBlkLike(dev), a);
  // The second element was written before this chain existed: it cannot complete it.
  assertViolation(() => dev.vq.nextUsed(), "used-id-stale");
});

Deno.test("an id reused after its batch was consumed completes normally", () => {
  const dev = new RingDevice(8);
  for (let round = 0; round < 100; round++) {
    const a = addBlkLike(dev);
    dev.takeAvail();
    dev.pushUsed(a, 513);
    assert.equal(dev.vq.nextUsed(), a);
    assert.equal(dev.vq.nextUsed(), -1);
  }
  dev.vq.assertConsistent();
});

Deno.test("device violation (strict): used length above the chain's writable bytes", () => {
  const dev = new RingDevice(8, { strictUsedLength: true });
  const a = addBlkLike(dev, 512); // 512 + 1 writable bytes
  dev.pushUsed(a, 514);
  assertViolation(() => dev.vq.nextUsed(), "used-len-too-large");
  assert.equal(dev.vq.inFlight, 1, "the chain stays in flight for its owner to reject");
  const dev2 = new RingDevice(8, { strictUsedLength: true });
  const b = addBlkLike(dev2, 512);
  dev2.pushUsed(b, 513);
  assert.equal(dev2.vq.nextUsed(), b);
  assert.equal(dev2.vq.lastUsedLen, 513);
});

Deno.test("device violation: used index moved past what is in flight", () => {
  const dev = new RingDevice(8);
  addBlkLike(dev);
  dev.setUsedIdx(9);
  assertViolation(() => dev.vq.nextUsed(), "used-idx-jump");
  const dev2 = new RingDevice(8);
  addBlkLike(dev2);
  addBlkLike(dev2);
  dev2.setUsedIdx(3);
  assertViolation(() => dev2.vq.hasUsed() && dev2.vq.nextUsed(), "used-idx-jump");
});

Deno.test("rewriting descriptors or next fields after submission cannot corrupt the free list", () => {
  const dev = new RingDevice(8);
  const a = addBlkLike(dev);
  const b = addBlkLike(dev);
  // The device scribbles over every descriptor, including next links and flags.
  for (let i = 0; i < 8; i++) dev.scribbleDesc(i, { addr: 0xdead, len: 0xffffffff, flags: 0xffff, next: 7 - i });
  dev.pushUsed(b, 1);
  dev.pushUsed(a, 1);
  assert.deepEqual([...dev.vq.completions()].map((c) => c.id), [b, a]);
  assert.equal(dev.vq.freeDescriptors, 8);
  // The next chains are built from private links: valid and disjoint again.
  const x = addBlkLike(dev), y = addBlkLike(dev);
  const descs = [...dev.chain(x), ...dev.chain(y)];
  assert.equal(descs.length, 6);
  assert.equal(descs.filter((d) => d.len === 16).length, 2);
});

Deno.test("availNotifNeeded honours VRING_USED_F_NO_NOTIFY", () => {
  const dev = new RingDevice(8);
  assert.equal(dev.vq.availNotifNeeded(), false, "nothing new");
  addBlkLike(dev);
  assert.equal(dev.vq.availNotifNeeded(), true);
  assert.equal(dev.vq.availNotifNeeded(), false, "already notified for that index");
  dev.setUsedFlags(1);
  addBlkLike(dev);
  assert.equal(dev.vq.availNotifNeeded(), false);
  dev.setUsedFlags(0);
  dev.takeAvail();
  dev.takeAvail();
  dev.pushUsed(0, 1);
  dev.vq.nextUsed();
  addBlkLike(dev);
  assert.equal(dev.vq.availNotifNeeded(), true);
});

Deno.test("setUsedNotifEnabled toggles VRING_AVAIL_F_NO_INTERRUPT", () => {
  const dev = new RingDevice(8);
  assert.equal(dev.availFlags(), 0);
  dev.vq.setUsedNotifEnabled(false);
  assert.equal(dev.availFlags(), 1);
  dev.vq.setUsedNotifEnabled(true);
  assert.equal(dev.availFlags(), 0);
});

Deno.test("EVENT_IDX: used_event and avail_event drive notifications", () => {
  const dev = new RingDevice(8, { eventIdx: true });
  // used_event follows the next index to consume when enabled.
  const a = addBlkLike(dev);
  dev.setAvailEvent(0); // the device wants a kick when avail moves past 0
  assert.equal(dev.vq.availNotifNeeded(), true);
  addBlkLike(dev);
  dev.setAvailEvent(5); // not interested until index 5
  assert.equal(dev.vq.availNotifNeeded(), false);
  dev.pushUsed(a, 1);
  dev.vq.nextUsed();
  dev.vq.setUsedNotifEnabled(true);
  assert.equal(dev.usedEvent(), 1);
  dev.vq.setUsedNotifEnabled(false);
  assert.equal(dev.usedEvent(), 0, "disabled: an index the device has already passed");
  assert.equal(dev.availFlags(), 0, "with EVENT_IDX the flags stay 0");
});

function collectInFlight(dev: RingDevice): number[] {
  const ids: number[] = [];
  dev.vq.forEachInFlight((id) => ids.push(id));
  return ids;
}

Deno.test("default policy: a used length above the chain's writable bytes is clamped and counted", () => {
  const dev = new RingDevice(8);
  const a = addBlkLike(dev, 512);
  dev.pushUsed(a, 0xffff_ffff);
  assert.equal(dev.vq.nextUsed(), a);
  assert.equal(dev.vq.lastUsedLen, 513, "clamped to the writable bytes");
  assert.equal(dev.vq.usedLengthClamped, 1);
  dev.vq.assertConsistent();
});
