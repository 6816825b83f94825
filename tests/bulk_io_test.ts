// Bulk I/O: requests of any size on the promise API (split by every device
// limit), the device's limits under libblkio's names, Web Streams in and out
// of the device (BYOB, backpressure, padding, errors), and the copy command.
import assert from "node:assert/strict";
import { DeviceIoError, fileReadable, InvalidArgumentError, VirtioBlk } from "../mod.ts";
import { MockBlkDevice, QemuStorageDaemon } from "../testing.ts";
import { loadShim } from "../src/os/loader.ts";
import { awaitedLater, firstDifference, HAVE_QSD, imageBytes, missing, Rng, tempDir } from "./_support.ts";

if (HAVE_QSD) await loadShim();

const MiB = 1 << 20;

function pattern(n: number, seed: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(n);
  const u32 = new Uint32Array(b.buffer, 0, n >> 2);
  for (let i = 0; i < u32.length; i++) u32[i] = Math.imul(i + 1, 2654435761) ^ seed;
  return b;
}

// ------------------------------------------------------- any size, mock limits

Deno.test("any size (mock, seg_max 3, size_max 1536): random reads and writes of odd segments hit every split boundary", async () => {
  const device = new MockBlkDevice({ capacity: 8 * MiB, segMax: 3, sizeMax: 1536 });
  await using blk = await VirtioBlk.connect({ transport: "mock", device, bufferPoolSize: 2 * MiB });
  const model = new Uint8Array(8 * MiB);
  const rng = new Rng(3);
  for (let round = 0; round < 60; round++) {
    const segs: Uint8Array[] = [];
    let total = 0;
    const want = 512 * rng.int(1, 600);
    while (total < want) {
      const n = Math.min(want - total, rng.int(1, 3000));
      segs.push(round % 2 ? blk.allocBuffer(n) : new Uint8Array(n)); // pool (zero-copy) and plain (bounced)
      total += n;
    }
    const off = 512 * rng.int(0, (8 * MiB - total) / 512);
    if (rng.int(0, 1)) {
      let at = off;
      for (const s of segs) {
        rng.fill(s);
        model.set(s, at);
        at += s.byteLength;
      }
      await blk.writev(off, segs);
    } else {
      await blk.readv(off, segs);
      let at = off;
      for (const s of segs) {
        assert.equal(firstDifference(s, model.subarray(at, at + s.byteLength)), -1, `round ${round}`);
        at += s.byteLength;
      }
    }
    for (const s of segs) if (round % 2) blk.freeBuffer(s as Uint8Array<ArrayBuffer>);
  }
  assert.equal(firstDifference(device.disk, model), -1);
  assert.equal(blk.bufferPoolAvailable, 2 * MiB, "every bounce buffer came back");
});

Deno.test("any size (mock): a single write far larger than the pool goes through bounced pieces", async () => {
  const device = new MockBlkDevice({ capacity: 64 * MiB });
  await using blk = await VirtioBlk.connect({ transport: "mock", device, bufferPoolSize: 4 * MiB });
  const data = pattern(48 * MiB, 5);
  await blk.write(MiB, data);
  assert.equal(firstDifference(device.disk.subarray(MiB, 49 * MiB), data), -1);
  const back = new Uint8Array(48 * MiB);
  await blk.read(MiB, back);
  assert.equal(firstDifference(back, data), -1);
});

Deno.test("any size (mock): discard and write-zeroes over ranges larger than the device's maxima", async () => {
  const device = new MockBlkDevice({
    capacity: 16 * MiB,
    maxDiscardSectors: 64,
    discardSectorAlignment: 8,
    maxWriteZeroesSectors: 100,
  });
  await using blk = await VirtioBlk.connect({ transport: "mock", device });
  device.disk.fill(0xee);
  await blk.discard(4096, 10 * MiB);
  await blk.writeZeroes(12 * MiB, 3 * MiB + 512);
  assert.ok(device.disk.subarray(4096, 4096 + 10 * MiB).every((b) => b === 0));
  assert.ok(device.disk.subarray(12 * MiB, 15 * MiB + 512).every((b) => b === 0));
  assert.equal(device.disk[4095], 0xee);
  assert.equal(device.disk[15 * MiB + 512], 0xee);
  assert.equal(device.stats.requests[11], Math.ceil((10 * MiB) / (64 * 512)), "discards of at most 32 KiB");
  await assert.rejects(blk.discard(512, 64 * 512 * 3), InvalidArgumentError, "the alignment still holds");
});

Deno.test("limits under libblkio's names; the batch API refuses what does not fit, naming the limit", async () => {
  const device = new MockBlkDevice({
    capacity: 8 * MiB,
    blockSize: 4096,
    segMax: 4,
    sizeMax: 65536,
    maxDiscardSectors: 256,
  });
  await using blk = await VirtioBlk.connect({ transport: "mock", device });
  assert.deepEqual({ ...blk.limits }, {
    requestAlignment: 4096,
    optimalIoAlignment: 4096,
    maxTransfer: 4 * 65536,
    maxSegments: 4,
    maxSegmentLen: 65536,
    bufAlignment: 1,
    discardAlignment: 512,
    maxDiscardLen: 256 * 512,
    maxWriteZeroesLen: 32768 * 512,
  });
  const q = blk.queue(0);
  assert.throws(() => q.read(0, blk.allocBuffer(128 * 1024), 0), /segment limit of 65536/);
  assert.throws(
    () => q.readv(0, Array.from({ length: 5 }, () => blk.allocBuffer(4096)), 0),
    /5 buffers exceed the limit of 4 segments/,
  );
  await blk.read(0, blk.allocBuffer(1024 * 1024)); // the promise API splits it
});

// --------------------------------------------------------- qemu-storage-daemon

Deno.test({
  name:
    "any size (qemu-storage-daemon): one 256 MiB write from a plain Uint8Array, a readv of 3,000 segments; the image agrees",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await QemuStorageDaemon.start({ size: 300 * MiB });
    await using blk = await VirtioBlk.connect({
      transport: "vhost-user",
      path: qsd.socketPath,
      bufferPoolSize: 16 * MiB,
    });
    const data = pattern(256 * MiB, 9);
    await blk.write(4 * MiB, data);
    await blk.flush();
    const image = await imageBytes(qsd.imagePath!, 4 * MiB, 256 * MiB);
    assert.equal(firstDifference(image, data), -1, "the independent reader sees the write");
    const rng = new Rng(4);
    const segs = Array.from({ length: 3000 }, () => new Uint8Array(512 * rng.int(1, 8)));
    const total = segs.reduce((s, b) => s + b.byteLength, 0);
    await blk.readv(4 * MiB, segs);
    let at = 0;
    for (const s of segs) {
      assert.equal(firstDifference(s, data.subarray(at, at + s.byteLength)), -1);
      at += s.byteLength;
    }
    assert.equal(at, total);
  },
});

Deno.test({
  name: "streams (qemu-storage-daemon): a 512 MiB file piped in, piped back out byte-identical; memory stays bounded",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using tmp = await tempDir("virtio-streams-");
    const dir = tmp.path;
    const src = `${dir}/src.img`, out = `${dir}/out.img`;
    {
      using f = await Deno.open(src, { write: true, create: true });
      for (let i = 0; i < 32; i++) await f.write(pattern(16 * MiB, i));
    }
    await Deno.mkdir(`${dir}/qsd`);
    await using qsd = await QemuStorageDaemon.start({ dir: `${dir}/qsd`, size: 520 * MiB });
    await using blk = await VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath });
    const base = Deno.memoryUsage().rss;
    let peak = base;
    const sampler = setInterval(() => peak = Math.max(peak, Deno.memoryUsage().rss), 20);
    try {
      await (await Deno.open(src)).readable.pipeTo(blk.writable({ offset: 0 }));
      using o = await Deno.open(out, { write: true, create: true, truncate: true });
      await blk.readable({ offset: 0, length: 512 * MiB }).pipeTo(o.writable);
    } finally {
      clearInterval(sampler);
    }
    const a = await Deno.readFile(src), b = await Deno.readFile(out);
    assert.equal(b.byteLength, 512 * MiB);
    assert.equal(firstDifference(a, b), -1);
    // The bound the README gives: the pool the streams use (queueDepth x chunkSize each way, within the
    // default 64 MiB pool, which is mapped) plus what the pipes hold; 512 MiB went through. (Not under
    // AddressSanitizer, whose allocator keeps freed memory in quarantine by design.)
    const asan = (Deno.env.get("LD_PRELOAD") ?? "").includes("libasan");
    if (!asan) assert.ok(peak - base < 160 * MiB, `RSS grew by ${((peak - base) / MiB).toFixed(0)} MiB`);
  },
});

// ----------------------------------------------------------------- streams, mock

Deno.test("readable: BYOB readers fill their own buffers; ranges are checked", async () => {
  const device = new MockBlkDevice({ capacity: 4 * MiB, contents: pattern(4 * MiB, 1) });
  await using blk = await VirtioBlk.connect({ transport: "mock", device });
  const reader = blk.readable({ offset: 512, length: 3 * MiB, chunkSize: 65536, queueDepth: 3 }).getReader({
    mode: "byob",
  });
  let buf = new Uint8Array(10_000);
  const got = new Uint8Array(3 * MiB);
  let at = 0;
  for (;;) {
    const { value, done } = await reader.read(buf);
    if (done) break;
    got.set(value, at);
    at += value.byteLength;
    buf = new Uint8Array(value.buffer);
  }
  assert.equal(at, 3 * MiB);
  assert.equal(firstDifference(got, device.disk.subarray(512, 512 + 3 * MiB)), -1);
  assert.throws(() => blk.readable({ offset: 100 }), InvalidArgumentError);
  assert.throws(() => blk.readable({ offset: 0, length: 1000 }), InvalidArgumentError);
  assert.throws(() => blk.readable({ offset: 0, length: 8 * MiB }), InvalidArgumentError);
  assert.equal(blk.bufferPoolAvailable, 64 * MiB, "the read-ahead buffers came back");
});

Deno.test("writable: chunks of any size; a tail inside a block is refused unless pad; close flushes", async () => {
  const device = new MockBlkDevice({ capacity: 4 * MiB });
  await using blk = await VirtioBlk.connect({ transport: "mock", device });
  const data = pattern(MiB + 700, 2);
  const feed = (chunks: number) =>
    new ReadableStream<Uint8Array>({
      start(c) {
        const step = Math.ceil(data.byteLength / chunks);
        for (let at = 0; at < data.byteLength; at += step) c.enqueue(data.slice(at, at + step));
        c.close();
      },
    });
  await assert.rejects(feed(7).pipeTo(blk.writable({ offset: 4096 })), /ended 188 bytes into a block/);
  const flushes = device.stats.requests[4] ?? 0;
  await feed(13).pipeTo(blk.writable({ offset: 4096, pad: true, chunkSize: 65536 }));
  assert.equal(firstDifference(device.disk.subarray(4096, 4096 + data.byteLength), data), -1);
  assert.ok(device.disk.subarray(4096 + data.byteLength, 4096 + MiB + 1024).every((b) => b === 0), "zero padding");
  assert.equal(device.stats.requests[4], flushes + 1, "one flush at close");
  assert.equal(await blk.writeFrom(feed(3), { offset: 0, pad: true }), data.byteLength);
  assert.equal(firstDifference(device.disk.subarray(0, data.byteLength), data), -1);
});

Deno.test("writable: a device error midway errors the stream and the pipe rejects", async () => {
  const device = new MockBlkDevice({ capacity: 8 * MiB });
  device.statusHook = (r) => (r.type === 1 && r.sector >= 4096 ? 1 : undefined); // IOERR from 2 MiB on
  await using blk = await VirtioBlk.connect({ transport: "mock", device });
  let sent = 0;
  const src = new ReadableStream<Uint8Array>({
    pull(c) {
      if (sent === 6 * MiB) return c.close();
      sent += 256 * 1024;
      c.enqueue(new Uint8Array(256 * 1024));
    },
  });
  await assert.rejects(src.pipeTo(blk.writable({ offset: 0 })), DeviceIoError);
  await assert.rejects(blk.writeFrom(new Blob([new Uint8Array(4 * MiB)]).stream()), DeviceIoError);
  assert.equal(blk.bufferPoolAvailable, 64 * MiB, "the stream's buffers came back");
});

Deno.test("writable: backpressure — a slow device slows the producer; what it produced ahead stays bounded", async () => {
  const device = new MockBlkDevice({ capacity: 64 * MiB, completion: "manual" });
  await using blk = await VirtioBlk.connect({ transport: "mock", device });
  let produced = 0;
  const src = new ReadableStream<Uint8Array>({
    pull(c) {
      if (produced >= 32 * MiB) return c.close();
      produced += 64 * 1024;
      c.enqueue(new Uint8Array(64 * 1024));
    },
  }, { highWaterMark: 0 });
  const piping = awaitedLater(src.pipeTo(blk.writable({ offset: 0, chunkSize: MiB, queueDepth: 4 })));
  const completer = setInterval(() => {
    for (let q = 0; q < blk.numQueues; q++) device.process(q);
  }, 100);
  try {
    await new Promise((r) => setTimeout(r, 350));
    const written = Object.values(device.stats.requests).reduce((a, b) => a + b, 0) * MiB;
    // In flight (4 x 1 MiB), one buffer filling, and the pipe's own chunk or two.
    assert.ok(produced - written <= 6 * MiB, `produced ${produced / MiB} MiB, written ${written / MiB} MiB`);
    assert.ok(produced < 32 * MiB, "the producer was held back");
    await piping;
  } finally {
    clearInterval(completer);
  }
  assert.equal(produced, 32 * MiB);
});

Deno.test("fileReadable: reads in large pieces, feeds writeFrom straight into the device's buffers, closes the file", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const data = pattern(3 * MiB + 4096, 8);
  await Deno.writeFile(`${dir}/f`, data);
  const device = new MockBlkDevice({ capacity: 8 * MiB });
  await using blk = await VirtioBlk.connect({ transport: "mock", device });
  assert.equal(await blk.writeFrom(fileReadable(await Deno.open(`${dir}/f`), { chunkSize: MiB })), data.byteLength);
  assert.equal(firstDifference(device.disk.subarray(0, data.byteLength), data), -1);
  const chunks: number[] = [];
  for await (const c of fileReadable(await Deno.open(`${dir}/f`))) chunks.push(c.byteLength);
  assert.deepEqual(chunks, [3 * MiB + 4096]);
});

// ---------------------------------------------------------------------- copy

Deno.test({
  name: "copy: file → device and device → file with --verify, and through a pipe (cat img | deno task copy --from -)",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using tmp = await tempDir("virtio-copy-");
    const dir = tmp.path;
    await using qsd = await QemuStorageDaemon.start({ size: 64 * MiB });
    const src = `${dir}/src.img`;
    await Deno.writeFile(src, pattern(20 * MiB + 1000, 6));
    const cli = new URL("../cli.ts", import.meta.url).pathname;
    const sh = (command: string) =>
      new Deno.Command("sh", {
        args: ["-c", command],
        env: { CLI: cli, DENO: Deno.execPath(), D: dir, S: qsd.socketPath },
      })
        .output();
    let r = await sh(`"$DENO" run -A "$CLI" copy --from "$D/src.img" --to vhost-user:"$S"@1M --pad --verify --json`);
    assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
    const j = JSON.parse(new TextDecoder().decode(r.stdout));
    assert.deepEqual([j.bytes, j.verified], [20 * MiB + 1000, true]);
    r = await sh(`"$DENO" run -A "$CLI" copy --from vhost-user:"$S"@1M --length 20M --to "$D/back.img" --verify`);
    assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
    assert.match(new TextDecoder().decode(r.stdout), /verified: the destination reads back the same/);
    const a = await Deno.readFile(src), b = await Deno.readFile(`${dir}/back.img`);
    assert.equal(firstDifference(a.subarray(0, 20 * MiB), b), -1);
    r = await sh(`cat "$D/src.img" | "$DENO" run -A "$CLI" copy --from - --to vhost-user:"$S"@32M --pad --verify`);
    assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
    assert.equal(firstDifference(await imageBytes(qsd.imagePath!, 32 * MiB, a.byteLength), a), -1);
    r = await sh(`cat "$D/src.img" | "$DENO" run -A "$CLI" copy --from - --to vhost-user:"$S"@32M`);
    assert.equal(r.code, 2, "a tail inside a block without --pad: the input, refused in the flags' words");
    assert.match(new TextDecoder().decode(r.stderr), /ended 488 bytes into a block of 512: give --pad/);
  },
});
