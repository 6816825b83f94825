import assert from "node:assert/strict";
import {
  ClosedError,
  type CompletionMode,
  ConnectionLostError,
  DeviceIoError,
  DeviceProtocolError,
  DeviceUnsupportedError,
  InvalidArgumentError,
  QueueFullError,
  ReadOnlyError,
  VirtioBlk,
  type VirtioBlkOptions,
  type VirtioError,
} from "../mod.ts";
import { MockBlkDevice, type MockBlkDeviceOptions } from "../testing.ts";
import { awaitedLater } from "./_support.ts";
import {
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from "../src/blk/spec.ts";

const MODES: CompletionMode[] = ["poll", "eventfd"];

async function open(
  device: MockBlkDevice,
  options: VirtioBlkOptions = {},
): Promise<VirtioBlk> {
  return await VirtioBlk.connect({ transport: "mock", device, bufferPoolSize: 4 << 20, ...options });
}

function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

async function rejectsWith(p: Promise<unknown>, cls: new (...args: never[]) => VirtioError): Promise<VirtioError> {
  let caught: unknown;
  await p.then(() => assert.fail(`expected ${cls.name}`), (e) => (caught = e));
  assert.ok(caught instanceof cls, `expected ${cls.name}, got ${caught}`);
  return caught as VirtioError;
}

for (const mode of MODES) {
  Deno.test(`mock (${mode}): every request type round-trips`, async () => {
    const device = new MockBlkDevice({ capacity: 1 << 20, id: "serial-1234" });
    await using blk = await open(device, { mode });
    assert.equal(blk.capacity, 1n << 20n);
    assert.equal(blk.blockSize, 512);
    assert.equal(blk.readOnly, false);
    assert.equal(blk.numQueues, 1);
    assert.equal(blk.transportType, "mock");

    const w = blk.allocBuffer(8192);
    w.set(pattern(8192, 1));
    await blk.write(4096, w);
    assert.deepEqual(device.disk.subarray(4096, 12288), pattern(8192, 1));

    const r = blk.allocBuffer(8192);
    await blk.read(4096n, r);
    assert.deepEqual(r, pattern(8192, 1));

    const [a, b] = [blk.allocBuffer(512), blk.allocBuffer(1536)];
    a.set(pattern(512, 2));
    b.set(pattern(1536, 3));
    await blk.writev(65536, [a, b]);
    assert.deepEqual(device.disk.subarray(65536, 66048), pattern(512, 2));
    assert.deepEqual(device.disk.subarray(66048, 67584), pattern(1536, 3));
    const [c, d] = [blk.allocBuffer(1024), blk.allocBuffer(1024)];
    await blk.readv(65536, [c, d]);
    assert.deepEqual([...c, ...d], [...device.disk.subarray(65536, 67584)]);

    await blk.flush();
    await blk.discard(4096, 4096);
    assert.ok(device.disk.subarray(4096, 8192).every((x) => x === 0));
    await blk.writeZeroes(8192, 4096, { unmap: true });
    assert.ok(device.disk.subarray(8192, 12288).every((x) => x === 0));
    assert.equal(await blk.getId(), "serial-1234");

    const s = device.stats.requests;
    assert.equal(s[VIRTIO_BLK_T_OUT], 2);
    assert.equal(s[VIRTIO_BLK_T_IN], 2);
    assert.equal(s[VIRTIO_BLK_T_FLUSH], 1);
    assert.equal(s[VIRTIO_BLK_T_DISCARD], 1);
    assert.equal(s[VIRTIO_BLK_T_WRITE_ZEROES], 1);
    assert.equal(s[VIRTIO_BLK_T_GET_ID], 1);
  });

  Deno.test(`mock (${mode}): plain Uint8Arrays go through bounce buffers`, async () => {
    const device = new MockBlkDevice({ capacity: 1 << 20 });
    await using blk = await open(device, { mode });
    const free = blk.bufferPoolAvailable;
    await blk.write(0, pattern(4096, 9));
    assert.deepEqual(device.disk.subarray(0, 4096), pattern(4096, 9));
    const out = new Uint8Array(2048);
    const shared = blk.allocBuffer(2048);
    await blk.readv(1024, [out, shared]);
    assert.deepEqual(out, pattern(4096, 9).subarray(1024, 3072));
    assert.deepEqual([...shared], [...pattern(4096, 9).subarray(3072, 4096), ...new Uint8Array(1024)]);
    blk.freeBuffer(shared);
    assert.equal(blk.bufferPoolAvailable, free, "bounce buffers are returned");
  });

  Deno.test(`mock (${mode}): many concurrent promises beyond the queue size`, async () => {
    const device = new MockBlkDevice({ capacity: 1 << 20 });
    await using blk = await open(device, { mode, queueSize: 8 });
    const bufs = Array.from({ length: 200 }, (_, i) => {
      const b = blk.allocBuffer(512);
      b.fill(i & 0xff);
      return b;
    });
    await Promise.all(bufs.map((b, i) => blk.write(i * 512, b)));
    for (let i = 0; i < 200; i++) assert.equal(device.disk[i * 512 + 7], i & 0xff);
    const back = Array.from({ length: 200 }, () => blk.allocBuffer(512));
    await Promise.all(back.map((b, i) => blk.read(i * 512, b)));
    back.forEach((b, i) => assert.equal(b[100], i & 0xff));
    assert.ok(device.stats.notifications < 400, "requests of one tick share notifications");
  });
}

Deno.test("mock: writes submitted before a flush reach the device before it", async () => {
  const device = new MockBlkDevice({ capacity: 1 << 20 });
  device.tracing = true;
  await using blk = await open(device);
  const settled: string[] = [];
  const ops = [];
  for (let i = 0; i < 5; i++) {
    const b = blk.allocBuffer(512);
    b.fill(i + 1);
    ops.push(blk.write(i * 512, b).then(() => settled.push(`w${i}`)));
  }
  ops.push(blk.flush().then(() => settled.push("flush")));
  await Promise.all(ops);
  assert.deepEqual(device.trace.map((t) => t.type), [1, 1, 1, 1, 1, 4]);
  assert.equal(settled.at(-1), "flush");
});

Deno.test("batch API: contexts come back with their completions, in device order", async () => {
  const device = new MockBlkDevice({ capacity: 1 << 20, completion: "manual" });
  await using blk = await open(device, { mode: "poll" });
  const q = blk.queue<{ tag: string }>(0);
  const bufs = [0, 1, 2, 3].map(() => blk.allocBuffer(512));
  const ctxs = ["a", "b", "c", "d"].map((tag) => ({ tag }));
  bufs.forEach((b, i) => q.read(i * 512, b, ctxs[i]));
  q.flush({ tag: "f" });
  q.submit();
  assert.equal(q.notifications, 1, "one notification for the batch");
  assert.equal(q.poll(() => assert.fail("nothing is done yet")), 0);
  const reqs = device.fetch(0);
  assert.equal(reqs.length, 5);
  device.complete([reqs[3], reqs[4], reqs[0]]);
  const got: unknown[] = [];
  assert.equal(q.poll((ctx, err) => got.push([ctx, err])), 3);
  assert.deepEqual(got, [[ctxs[3], undefined], [{ tag: "f" }, undefined], [ctxs[0], undefined]]);
  assert.strictEqual((got[0] as unknown[])[0], ctxs[3], "the same object comes back");
  device.complete([reqs[2], reqs[1]]);
  const rest: unknown[] = [];
  q.poll((ctx) => void rest.push(ctx), 1);
  q.poll((ctx) => void rest.push(ctx));
  assert.deepEqual(rest, [ctxs[2], ctxs[1]]);
  assert.equal(q.inFlight, 0);
});

Deno.test("batch API: full queue throws QueueFullError and nothing is lost", async () => {
  const device = new MockBlkDevice({ capacity: 1 << 20, completion: "manual" });
  // Without indirect descriptors (with them, a third read would still fit through a table).
  await using blk = await open(device, { mode: "poll", queueSize: 8, features: { indirect: false } });
  const q = blk.queue<number>(0);
  const buf = blk.allocBuffer(512);
  q.read(0, buf, 0);
  q.read(0, buf, 1); // 6 of 8 descriptors used
  assert.throws(() => q.read(0, buf, 2), QueueFullError);
  q.flush(3); // 2 descriptors: fits
  assert.throws(() => q.flush(4), QueueFullError);
  q.submit();
  device.process(0);
  const got: number[] = [];
  q.poll((ctx) => void got.push(ctx));
  assert.deepEqual(got, [0, 1, 3]);
  q.read(0, buf, 5);
  q.submit();
  device.process(0);
  q.poll((ctx) => void got.push(ctx));
  assert.deepEqual(got, [0, 1, 3, 5]);
});

Deno.test("batch API: the async iterator waits for completions, then ends", async () => {
  for (const mode of MODES) {
    const device = new MockBlkDevice({ capacity: 1 << 20 });
    await using blk = await open(device, { mode });
    const q = blk.queue<number>(0);
    const bufs = Array.from({ length: 16 }, () => blk.allocBuffer(4096));
    bufs.forEach((b, i) => q.write(i * 4096, b, i));
    q.submit();
    const seen: number[] = [];
    for await (const c of q.completions()) {
      assert.equal(c.error, undefined);
      seen.push(c.context);
    }
    assert.deepEqual(seen.sort((a, b) => a - b), [...Array(16).keys()]);
  }
});

Deno.test("device status IOERR and UNSUPP become typed errors", async () => {
  const device = new MockBlkDevice({ capacity: 1 << 20 });
  device.statusHook = ({ sector }) => (sector === 8 ? 1 : sector === 16 ? 2 : undefined);
  await using blk = await open(device);
  const buf = blk.allocBuffer(512);
  const io = await rejectsWith(blk.read(8 * 512, buf), DeviceIoError);
  assert.equal(io.code, "ERR_DEVICE_IO");
  const un = await rejectsWith(blk.write(16 * 512, buf), DeviceUnsupportedError);
  assert.equal(un.code, "ERR_DEVICE_UNSUPPORTED");
  await blk.read(0, buf); // the queue is still usable
  device.statusHook = () => 0x42;
  const bad = await rejectsWith(blk.read(0, buf), DeviceProtocolError);
  assert.equal((bad as DeviceProtocolError).violation, "bad-status");
  await rejectsWith(blk.read(0, buf), DeviceProtocolError); // the queue has failed
});

Deno.test("bad caller input is refused before anything reaches the device", async () => {
  const device = new MockBlkDevice({
    capacity: 1 << 20,
    segMax: 4,
    sizeMax: 8192,
    maxDiscardSectors: 16,
    maxWriteZeroesSectors: 16,
  });
  await using blk = await open(device);
  const buf = blk.allocBuffer(4096);
  const bad: [string, () => Promise<unknown>][] = [
    ["unaligned offset", () => blk.read(100, buf)],
    ["unaligned length", () => blk.read(0, buf.subarray(0, 100))],
    ["negative offset", () => blk.read(-512, buf)],
    ["NaN offset", () => blk.read(NaN, buf)],
    ["fractional offset", () => blk.read(512.5, buf)],
    ["Infinity", () => blk.write(Infinity, buf)],
    ["past capacity", () => blk.read((1 << 20) - 512, buf)],
    ["huge bigint", () => blk.read(1n << 60n, buf)],
    ["empty buffer", () => blk.write(0, new Uint8Array(0))],
    ["not a Uint8Array", () => blk.write(0, [1, 2, 3] as unknown as Uint8Array)],
    ["no vector", () => blk.readv(0, [])],
    ["discard zero length", () => blk.discard(0, 0)],
    ["discard unaligned", () => blk.discard(512, 700)],
    ["discard negative length", () => blk.discard(0, -512)],
    ["discard NaN length", () => blk.discard(0, NaN)],
    ["discard fractional length", () => blk.discard(0, 512.5)],
    ["write-zeroes past capacity", () => blk.writeZeroes((1 << 20) - 512, 1024)],
    ["negative bigint offset", () => blk.read(-512n, buf)],
    ["string offset", () => blk.read("0" as unknown as number, buf)],
    ["vector with a non-buffer", () => blk.writev(0, [buf, "x" as unknown as Uint8Array])],
  ];
  for (const [what, fn] of bad) {
    const e = await rejectsWith(fn(), InvalidArgumentError).catch((err) => {
      throw new Error(`${what}: ${err}`);
    });
    assert.equal(e.code, "ERR_INVALID_ARGUMENT", what);
  }
  // Beyond one request's limits: the batch API refuses (the promise API splits, see bulk_io_test.ts).
  const q = blk.queue(0);
  const overLimit: [string, () => void][] = [
    ["too many segments", () => q.readv(0, [buf, buf, buf, buf, buf].map((b) => b.subarray(0, 512)), 0)],
    ["discard above limit", () => q.discard(0, 16 * 512 + 512, 0)],
    ["write-zeroes above limit", () => q.writeZeroes(0, 32 * 512, 0)],
    ["segment above size_max", () => q.write(0, blk.allocBuffer(16384), 0)],
    ["vector segment above size_max", () => q.writev(0, [buf, blk.allocBuffer(16384)], 0)],
  ];
  for (const [what, fn] of overLimit) assert.throws(fn, InvalidArgumentError, what);
  assert.equal(device.stats.notifications, 0, "nothing reached the device");
  assert.throws(() => blk.allocBuffer(0), InvalidArgumentError);
  assert.throws(() => blk.allocBuffer(-1), InvalidArgumentError);
  assert.throws(() => blk.freeBuffer(new Uint8Array(4)), InvalidArgumentError);
  assert.throws(() => blk.queue(1), InvalidArgumentError);
  assert.throws(() => q.read(3, buf, 0), InvalidArgumentError);
  assert.equal(device.stats.notifications, 0);
  assert.deepEqual(device.stats.requests, {});
});

Deno.test("read-only devices refuse writes before the device sees them", async () => {
  const device = new MockBlkDevice({ capacity: 1 << 20, readOnly: true });
  await using blk = await open(device);
  assert.equal(blk.readOnly, true);
  const buf = blk.allocBuffer(512);
  for (const p of [blk.write(0, buf), blk.writev(0, [buf]), blk.discard(0, 512), blk.writeZeroes(0, 512)]) {
    const e = await rejectsWith(p, ReadOnlyError);
    assert.equal(e.code, "ERR_READ_ONLY");
  }
  assert.throws(() => blk.queue(0).write(0, buf, 0), ReadOnlyError);
  await blk.read(0, buf);
  assert.deepEqual(device.stats.requests, { [VIRTIO_BLK_T_IN]: 1 });
});

Deno.test("features not offered: flush completes at once, discard is unsupported", async () => {
  const device = new MockBlkDevice({
    capacity: 1 << 20,
    flush: false,
    discard: false,
    writeZeroes: false,
    eventIdx: false,
  });
  await using blk = await open(device);
  assert.equal(blk.features.flush, false);
  assert.equal(blk.features.eventIdx, false);
  await blk.flush();
  const q = blk.queue<string>(0);
  q.flush("f");
  const got: string[] = [];
  q.poll((c) => got.push(c));
  assert.deepEqual(got, ["f"]);
  await rejectsWith(blk.discard(0, 512), DeviceUnsupportedError);
  await rejectsWith(blk.writeZeroes(0, 512), DeviceUnsupportedError);
  assert.equal(device.stats.notifications, 0);
});

Deno.test("multi-queue: requests spread over the queues, each completes independently", async () => {
  const device = new MockBlkDevice({ capacity: 1 << 20, numQueues: 4 });
  device.tracing = true;
  await using blk = await open(device, { numQueues: 3 });
  assert.equal(blk.numQueues, 3);
  const bufs = Array.from({ length: 30 }, (_, i) => {
    const b = blk.allocBuffer(512);
    b.fill(i);
    return b;
  });
  await Promise.all(bufs.map((b, i) => blk.write(i * 512, b)));
  const perQueue = [0, 0, 0];
  for (const t of device.trace) perQueue[t.queue]++;
  assert.deepEqual(perQueue, [10, 10, 10]);
  // The batch API addresses one queue explicitly.
  const q2 = blk.queue<number>(2);
  q2.read(0, bufs[0], 7);
  q2.submit();
  for await (const c of q2.completions()) assert.equal(c.context, 7);
  assert.equal(device.trace.at(-1)!.queue, 2);
  await assert.rejects(() => open(new MockBlkDevice({ numQueues: 2 }), { numQueues: 3 }), InvalidArgumentError);
});

Deno.test("close: waits for requests in flight, then rejects stragglers and detaches buffers", async () => {
  const device = new MockBlkDevice({ capacity: 1 << 20, completion: "manual" });
  const blk = await open(device, { mode: "poll", closeTimeoutMs: 50 });
  const buf = blk.allocBuffer(512);
  const pending = rejectsWith(blk.read(0, buf), ClosedError);
  await new Promise((r) => setTimeout(r, 5));
  const closing = blk.close();
  assert.strictEqual(blk.close(), closing, "concurrent close returns the same promise");
  await rejectsWith(blk.read(0, buf), ClosedError);
  await closing;
  await pending;
  assert.equal(buf.byteLength, 0, "buffers read as empty after close");
  assert.throws(() => blk.allocBuffer(512), ClosedError);
  assert.throws(() => blk.queue(0).read(0, new Uint8Array(512), 0), ClosedError);
});

Deno.test("close: requests the device finishes in time resolve normally", async () => {
  const device = new MockBlkDevice({ capacity: 1 << 20, completion: "manual" });
  const blk = await open(device, { mode: "eventfd" });
  const buf = blk.allocBuffer(512);
  const pending = blk.write(0, buf);
  await new Promise((r) => setTimeout(r, 5));
  const closing = blk.close();
  setTimeout(() => device.process(0), 10);
  await closing;
  await pending;
});

Deno.test("a lost device rejects everything in flight with ConnectionLostError", async () => {
  for (const mode of MODES) {
    const device = new MockBlkDevice({ capacity: 1 << 20, completion: "manual" });
    await using blk = await open(device, { mode });
    const buf = blk.allocBuffer(512);
    const pending = Array.from({ length: 10 }, (_, i) => rejectsWith(blk.read(i * 512, buf), ConnectionLostError));
    const q = blk.queue<number>(0);
    q.read(0, buf, 99);
    q.submit();
    await new Promise((r) => setTimeout(r, 5));
    device.disconnect();
    await Promise.all(pending);
    const got: [number, unknown][] = [];
    q.poll((c, e) => got.push([c, e]));
    assert.equal(got.length, 1);
    assert.ok(got[0][1] instanceof ConnectionLostError);
    await rejectsWith(blk.read(0, buf), ConnectionLostError);
    assert.throws(() => q.read(0, buf, 1), ConnectionLostError);
  }
});

Deno.test("impossible config values fail the connect with a typed error", async () => {
  const cases: [string, MockBlkDeviceOptions][] = [];
  const base = new MockBlkDevice({ capacity: 1 << 20 }).config;
  const edit = (at: number, bytes: number[]) => {
    const c = base.slice();
    c.set(bytes, at);
    return c;
  };
  cases.push(["capacity 0", { config: edit(0, [0, 0, 0, 0, 0, 0, 0, 0]) }]);
  cases.push(["blk_size 1000", { config: edit(20, [0xe8, 0x03, 0, 0]) }]);
  cases.push(["num_queues 0", { config: edit(34, [0, 0]) }]);
  cases.push(["seg_max 0", { config: edit(12, [0, 0, 0, 0]) }]);
  for (const [what, options] of cases) {
    await assert.rejects(
      () => open(new MockBlkDevice(options)),
      (e: unknown) => e instanceof DeviceProtocolError && e.violation === "bad-config",
      what,
    );
  }
});

/** Resolves with `p`, or fails the test after `ms`. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: still pending`)), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("a promise request waiting for room in a full ready list goes out once poll() makes room", async () => {
  const device = new MockBlkDevice({ capacity: 1 << 20, completion: "manual" });
  // Every read through an indirect table: 8 in flight on a ring of 8.
  await using blk = await open(device, { mode: "poll", queueSize: 8, indirectThreshold: 2 });
  const q = blk.queue<number>(0);
  const bufs = Array.from({ length: 8 }, () => blk.allocBuffer(512));
  bufs.forEach((b, i) => q.read(i * 512, b, i));
  q.submit();
  const waiting = awaitedLater(blk.read(0, blk.allocBuffer(512))); // no room: into the backlog
  device.process(0);
  // The completion loop reaps the batch into the ready list (full: 8 of 8).
  await new Promise((r) => setTimeout(r, 5));
  const got: number[] = [];
  assert.equal(q.poll((ctx) => void got.push(ctx)), 8);
  device.process(0); // the backlogged read, if it went out
  await within(waiting, 2000, "the backlogged read");
  assert.equal(got.length, 8);
});

Deno.test("a completion handler that throws loses nothing: the rest stay reapable", async () => {
  const device = new MockBlkDevice({ capacity: 1 << 20, completion: "manual" });
  await using blk = await open(device, { mode: "poll", queueSize: 8 });
  const q = blk.queue<number>(0);
  const buf = blk.allocBuffer(512);
  for (let i = 0; i < 3; i++) q.read(0, buf, i);
  q.submit();
  device.process(0);
  assert.throws(() =>
    q.poll((ctx) => {
      if (ctx === 0) throw new Error("handler bug");
    }), /handler bug/);
  const rest: number[] = [];
  q.poll((ctx) => void rest.push(ctx));
  assert.deepEqual(rest, [1, 2]);
  assert.equal(q.inFlight, 0);
});

Deno.test("a failed queue never lends the bounce buffers of its requests in flight to another queue", async () => {
  const device = new MockBlkDevice({ capacity: 1 << 20, completion: "manual", numQueues: 2 });
  device.disk.fill(0xaa, 0, 4096);
  await using blk = await open(device, { mode: "poll", numQueues: 2, stallTimeoutMs: 20 });
  // Queue 0: a bounced read that the device takes and sits on.
  const q0 = blk.queue<number>(0), q1 = blk.queue<number>(1);
  q0.read(0, new Uint8Array(4096), 0);
  q0.submit();
  const stale = device.fetch(0);
  for (let i = 0; i < 200 && q0.error === undefined; i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(q0.error, "the stall watchdog failed queue 0");
  // Queue 1: a bounced write, copied into the pool now.
  const data = pattern(4096, 3);
  q1.write(8192, data, 1);
  q1.submit();
  // The device finally does queue 0's read, writing into its old bounce buffer...
  device.complete(stale);
  // ...and then queue 1's write, from its own.
  device.process(1);
  const errors: unknown[] = [];
  while (q1.inFlight > 0) {
    q1.poll((_c, e) => void errors.push(e));
    await new Promise((r) => setTimeout(r, 1));
  }
  assert.deepEqual(errors, [undefined]);
  assert.deepEqual(device.disk.subarray(8192, 8192 + 4096), data, "queue 1 wrote what it was given");
});

Deno.test("queue sizes too small for a request are refused at connect", async () => {
  for (const queueSize of [1, 2]) {
    await assert.rejects(() => open(new MockBlkDevice(), { queueSize }), InvalidArgumentError);
  }
  await using blk = await open(new MockBlkDevice(), { queueSize: 4 });
  await blk.write(0, blk.allocBuffer(512));
  await blk.readv(0, [blk.allocBuffer(512), blk.allocBuffer(512)]);
});

Deno.test("maxSegments caps the data buffers per request below the device's seg_max", async () => {
  await using blk = await VirtioBlk.connect({ transport: "mock", device: new MockBlkDevice(), maxSegments: 3 });
  assert.equal(blk.maxSegments, 3);
  const segs = Array.from({ length: 4 }, () => blk.allocBuffer(512));
  await blk.readv(0, segs.slice(0, 3));
  assert.throws(() => blk.queue(0).readv(0, segs, 0), InvalidArgumentError, "the batch API refuses 4");
  await blk.readv(0, segs); // the promise API splits: 3 + 1
});
