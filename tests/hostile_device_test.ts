// A hostile device (the mock, told to misbehave): each violation fails the
// queue with a typed error naming it, every request in flight rejects, later
// requests fail fast with the same error, and close() still releases everything.
import assert from "node:assert/strict";
import { engineOf } from "../src/blk/queue.ts";
import { type CompletionMode, DeviceProtocolError, TimeoutError, VirtioBlk, type VirtioError } from "../mod.ts";
import { MockBlkDevice } from "../testing.ts";

const MODES: CompletionMode[] = ["poll", "eventfd"];

interface Setup {
  device: MockBlkDevice;
  blk: VirtioBlk;
  heads: number[];
  pending: Promise<unknown>[];
}

/** A device in manual mode with `n` reads submitted and taken by the device. */
async function setup(
  mode: CompletionMode,
  n = 3,
  options: { stallTimeoutMs?: number; strictUsedLength?: boolean } = {},
): Promise<Setup> {
  const device = new MockBlkDevice({ capacity: 1 << 20, completion: "manual" });
  const blk = await VirtioBlk.connect({ transport: "mock", device, mode, queueSize: 16, ...options });
  const pending = Array.from(
    { length: n },
    (_, i) => blk.read(i * 512, blk.allocBuffer(512)).then(() => "ok", (e) => e),
  );
  await new Promise((r) => setTimeout(r, 1)); // the notification goes out in a microtask
  const heads = device.hostile.take(0);
  assert.equal(heads.length, n);
  return { device, blk, heads, pending };
}

async function expectViolation(s: Setup, violation: string): Promise<void> {
  const results = await Promise.all(s.pending);
  for (const r of results) {
    assert.ok(r instanceof DeviceProtocolError, `expected DeviceProtocolError, got ${r}`);
    assert.equal(r.violation, violation);
    assert.equal(r.code, "ERR_DEVICE_PROTOCOL");
  }
  // Later requests fail fast, with the same error, before reaching the device.
  const notifications = s.device.stats.notifications;
  const later = await s.blk.read(0, new Uint8Array(512)).then(() => undefined, (e) => e as VirtioError);
  assert.strictEqual(later, results[0]);
  assert.throws(() => s.blk.queue(0).read(0, new Uint8Array(512), 0), (e) => e === results[0]);
  assert.equal(s.device.stats.notifications, notifications);
  await s.blk.close();
}

for (const mode of MODES) {
  Deno.test(`hostile (${mode}): completes an id that is out of range`, async () => {
    const s = await setup(mode);
    s.device.hostile.pushUsed(0, 16, 1);
    await expectViolation(s, "used-id-out-of-range");
  });

  Deno.test(`hostile (${mode}): completes an id that is not in flight`, async () => {
    const s = await setup(mode);
    const notHead = [...Array(16).keys()].find((i) => !s.heads.includes(i))!;
    s.device.hostile.pushUsed(0, notHead, 1);
    await expectViolation(s, "used-id-not-in-flight");
  });

  Deno.test(`hostile (${mode}): completes the same id twice`, async () => {
    const s = await setup(mode, 3);
    const [first, ...rest] = s.pending;
    s.pending = rest;
    s.device.hostile.completeEmpty(0, s.heads[0]);
    assert.equal(await first, "ok");
    s.device.hostile.pushUsed(0, s.heads[0], 1);
    await expectViolation(s, "used-id-not-in-flight");
  });

  Deno.test(`hostile (${mode}, strict): reports a used length above the chain's writable bytes`, async () => {
    const s = await setup(mode, 3, { strictUsedLength: true });
    s.device.hostile.pushUsed(0, s.heads[1], 512 + 1 + 1);
    await expectViolation(s, "used-len-too-large");
  });

  Deno.test(`hostile (${mode}, strict): reports success for a read with fewer bytes than its data`, async () => {
    const s = await setup(mode, 3, { strictUsedLength: true });
    s.device.hostile.write(s.device.hostile.statusAddress(0, s.heads[1]), new Uint8Array([0]));
    s.device.hostile.pushUsed(0, s.heads[1], 511); // 512 data bytes + status asked for
    await expectViolation(s, "short-read");
  });

  Deno.test(`hostile (${mode}, default): over-long and short used lengths are clamped and counted, no hang`, async () => {
    const s = await setup(mode, 3);
    for (const [i, len] of [[0, 0xffff_ffff], [1, 511], [2, 0]] as const) {
      s.device.hostile.write(s.device.hostile.statusAddress(0, s.heads[i]), new Uint8Array([0]));
      s.device.hostile.pushUsed(0, s.heads[i], len);
    }
    assert.deepEqual(await Promise.all(s.pending), ["ok", "ok", "ok"], "the status byte decides");
    const stats = s.blk.queue(0).stats();
    assert.equal(stats.usedLengthOver, 1);
    assert.equal(stats.usedLengthShort, 2);
    assert.equal(stats.completions, 3);
    // The queue works on: the next request completes normally.
    s.device.completion = "immediate";
    await s.blk.read(0, s.blk.allocBuffer(512));
    await s.blk.close();
  });

  Deno.test(`hostile (${mode}): a used length that covers the data but not the status byte is accepted`, async () => {
    const s = await setup(mode, 1);
    s.device.hostile.write(s.device.hostile.statusAddress(0, s.heads[0]), new Uint8Array([0]));
    s.device.hostile.pushUsed(0, s.heads[0], 512);
    assert.equal(await s.pending[0], "ok");
    await s.blk.close();
  });

  Deno.test(`hostile (${mode}): advances the used index by more than the queue size`, async () => {
    const s = await setup(mode);
    s.device.hostile.pushUsed(0, s.heads[0], 1, 17);
    await expectViolation(s, "used-idx-jump");
  });

  Deno.test(`hostile (${mode}): writes an invalid status byte`, async () => {
    const s = await setup(mode);
    s.device.hostile.write(s.device.hostile.statusAddress(0, s.heads[2]), new Uint8Array([0x7f]));
    s.device.hostile.pushUsed(0, s.heads[2], 1);
    await expectViolation(s, "bad-status");
  });

  Deno.test(`hostile (${mode}): rewriting descriptors and next fields after submission changes nothing`, async () => {
    const s = await setup(mode, 4);
    for (let d = 0; d < 16; d++) {
      s.device.hostile.rewriteDesc(0, d, { addr: 0xdead0000, len: 0xffffffff, flags: 0xffff, next: (d * 7) & 15 });
    }
    // Completing by head id still works: the driver never follows next links from
    // shared memory. The device skipped the I/O and never wrote a status byte, so
    // the driver's preset (0xff) shows through: bad-status, caught.
    for (const h of s.heads) s.device.hostile.pushUsed(0, h, 1);
    await expectViolation(s, "bad-status");

    // Scribbling then completing properly: the driver's free list stays intact.
    const t = await setup(mode, 4);
    const statuses = t.heads.map((h) => t.device.hostile.statusAddress(0, h));
    for (let d = 0; d < 16; d++) t.device.hostile.rewriteDesc(0, d, { addr: 0, len: 0, flags: 0xffff, next: 15 - d });
    for (const [i, h] of t.heads.entries()) {
      t.device.hostile.write(statuses[i], new Uint8Array([0]));
      t.device.hostile.pushUsed(0, h, t.device.hostile.writableLength(0, h)); // 512 data bytes + status
    }
    assert.deepEqual(await Promise.all(t.pending), ["ok", "ok", "ok", "ok"]);
    engineOf(t.blk.queue(0)).ring.assertConsistent();
    t.device.completion = "microtask";
    const bufs = Array.from({ length: 12 }, () => t.blk.allocBuffer(512).fill(9));
    await Promise.all(bufs.map((b, i) => t.blk.write(i * 512, b)));
    assert.equal(t.device.disk[11 * 512], 9);
    await t.blk.close();
  });

  Deno.test(`hostile (${mode}): flipping a status byte after completion cannot change the result`, async () => {
    const s = await setup(mode, 1);
    const at = s.device.hostile.statusAddress(0, s.heads[0]);
    s.device.hostile.completeEmpty(0, s.heads[0]);
    assert.equal(await s.pending[0], "ok");
    s.device.hostile.write(at, new Uint8Array([1])); // IOERR, too late
    s.device.completion = "microtask";
    await s.blk.read(0, s.blk.allocBuffer(512)); // the slot is reused: the driver resets it first
    engineOf(s.blk.queue(0)).ring.assertConsistent();
    await s.blk.close();
  });

  Deno.test(`hostile (${mode}): a device that stalls forever fails the queue after stallTimeoutMs`, async () => {
    const s = await setup(mode, 3, { stallTimeoutMs: 40 });
    const t0 = performance.now();
    const results = await Promise.all(s.pending);
    assert.ok(performance.now() - t0 < 2000);
    for (const r of results) {
      assert.ok(r instanceof TimeoutError, `expected TimeoutError, got ${r}`);
      assert.match((r as Error).message, /stalled/);
    }
    await assert.rejects(s.blk.read(0, new Uint8Array(512)), TimeoutError);
    await s.blk.close();
  });

  Deno.test(`hostile (${mode}): a stall is timed by the clock, not by timer ticks a busy event loop delays`, async () => {
    const s = await setup(mode, 1, { stallTimeoutMs: 400 });
    const blockedUntil = performance.now() + 1000;
    while (performance.now() < blockedUntil) { /* the event loop is busy: no timer runs */ }
    const [r] = await Promise.all(s.pending);
    assert.ok(r instanceof TimeoutError, `expected TimeoutError, got ${r}`);
    const ms = Number(/completed nothing for (\d+) ms/.exec((r as Error).message)?.[1]);
    assert.ok(ms >= 1000, `the queue failed after ${ms} ms of ticks, though 1000 ms had passed`);
    await s.blk.close();
  });
}
