import assert from "node:assert/strict";
import { OutOfBufferMemoryError } from "../mod.ts";
import { BufferPool, HeapRegion, MemfdRegion } from "../advanced.ts";
import { loadShim } from "../src/os/loader.ts";
import { bufferAlignment } from "../src/memory/buffer_pool.ts";

// The shim stays loaded for the whole process: load it outside any test.
await loadShim();

Deno.test("alignment grows with the buffer up to a page", () => {
  assert.equal(bufferAlignment(1), 64);
  assert.equal(bufferAlignment(512), 512);
  assert.equal(bufferAlignment(513), 1024);
  assert.equal(bufferAlignment(4096), 4096);
  assert.equal(bufferAlignment(1 << 20), 4096);
});

Deno.test("first fit, coalescing, exhaustion", () => {
  const region = new HeapRegion("pool", 64 * 1024);
  region.iova = 0x10_0000_0000;
  const pool = new BufferPool(region);
  const a = pool.allocOffset(4096), b = pool.allocOffset(4096), c = pool.allocOffset(4096);
  assert.deepEqual([a, b, c], [0, 4096, 8192]);
  pool.freeOffset(b);
  assert.equal(pool.allocOffset(512), 4096, "reuses the hole");
  pool.freeOffset(4096);
  pool.freeOffset(a);
  pool.freeOffset(c);
  assert.equal(pool.available, 64 * 1024);
  assert.equal(pool.allocOffset(64 * 1024), 0, "everything coalesced back into one extent");
  assert.throws(() => pool.allocOffset(1), OutOfBufferMemoryError);
  pool.freeOffset(0);
  assert.throws(() => pool.freeOffset(0), RangeError);
  region.close();
});

Deno.test("caller buffers translate to IOVAs; foreign ones do not", () => {
  const region = new HeapRegion("pool", 16 * 1024);
  region.iova = 0x2_0000_0000;
  const pool = new BufferPool(region);
  const buf = pool.alloc(4096);
  assert.equal(pool.iovaOf(buf), 0x2_0000_0000);
  assert.equal(pool.iovaOf(buf.subarray(512)), 0x2_0000_0000 + 512);
  assert.equal(pool.iovaOf(new Uint8Array(4096)), -1);
  region.close();
});

Deno.test("memfd buffers: own ArrayBuffer, detached when freed or when the region closes", () => {
  const region = new MemfdRegion("test-pool", 1 << 20);
  region.iova = region.addr;
  const pool = new BufferPool(region);
  const a = pool.alloc(4096);
  const b = pool.alloc(100);
  assert.notEqual(a.buffer, region.bytes.buffer);
  assert.equal(a.buffer.byteLength, 4096, "a caller cannot see past its buffer");
  a.fill(0xab);
  assert.equal(region.bytes[pool.iovaOf(a) - region.iova], 0xab, "the view aliases the shared memory");
  assert.equal(pool.free(a), true);
  assert.equal(a.byteLength, 0, "freed buffers read as empty");
  assert.equal(pool.iovaOf(a), -1);
  assert.equal(pool.free(a), false);
  assert.equal(pool.free(b.subarray(1)), false, "only whole buffers are freed");
  region.close();
  assert.equal(b.byteLength, 0, "closing the region detaches what is left");
  assert.equal(region.bytes.byteLength, 0);
});
