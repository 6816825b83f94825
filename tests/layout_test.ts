import assert from "node:assert/strict";
import { InvalidArgumentError } from "../mod.ts";
import { MAX_QUEUE_SIZE, VirtqueueLayout } from "../advanced.ts";

Deno.test("split layout: offsets and sizes for several queue sizes", () => {
  // [queue size, driver area, device area, request area, stride] with 64-byte slots.
  const cases: [number, number, number, number, number][] = [
    [1, 16, 24, 64, 4096],
    [2, 32, 44, 128, 4096],
    [8, 128, 152, 256, 4096],
    [16, 256, 296, 448, 4096],
    [256, 4096, 4616, 6720, 24576],
    [1024, 16384, 18440, 26688, 94208],
    [32768, 524288, 589832, 852032, 2953216],
  ];
  for (const [q, driver, device, req, stride] of cases) {
    const l = new VirtqueueLayout(3, q);
    assert.equal(l.descTableOffset, 0);
    assert.equal(l.driverAreaOffset, driver, `driver area for ${q}`);
    assert.equal(l.deviceAreaOffset, device, `device area for ${q}`);
    assert.equal(l.reqOffset, req, `request area for ${q}`);
    assert.equal(l.endOffset, req + 64 * q);
    assert.equal(l.stride, stride, `stride for ${q}`);
    assert.equal(l.totalSize, 3 * stride);
    assert.equal(l.queueOffset(2), 2 * stride);
    // The parts never overlap and keep their alignment.
    assert.ok(l.driverAreaOffset >= 16 * q);
    assert.ok(l.deviceAreaOffset >= l.driverAreaOffset + 6 + 2 * q);
    assert.equal(l.deviceAreaOffset % 4, 0);
    assert.ok(l.reqOffset >= l.deviceAreaOffset + 6 + 8 * q);
  }
});

Deno.test("packed layout: event suppression areas follow the descriptor ring", () => {
  const l = new VirtqueueLayout(1, 64, { format: "packed", reqSize: 128 });
  assert.equal(l.driverAreaOffset, 1024);
  assert.equal(l.deviceAreaOffset, 1028);
  assert.equal(l.reqOffset, 1088);
  assert.equal(l.endOffset, 1088 + 128 * 64);
});

Deno.test("layout rejects sizes that are not a power of two or exceed 32768", () => {
  for (const bad of [0, 3, 6, 100, 1000, MAX_QUEUE_SIZE * 2, 65536, -8, 1.5, NaN]) {
    assert.throws(() => new VirtqueueLayout(1, bad), InvalidArgumentError, `queue size ${bad}`);
  }
  assert.throws(() => new VirtqueueLayout(0, 8), InvalidArgumentError);
  assert.throws(() => new VirtqueueLayout(1, 8, { reqSize: 12 }), InvalidArgumentError);
  assert.doesNotThrow(() => new VirtqueueLayout(1, MAX_QUEUE_SIZE));
});
