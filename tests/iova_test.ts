// IOVA allocation and the book of mapped regions that the kernel transports
// (vhost-vdpa, VFIO) share.
import assert from "node:assert/strict";
import { OutOfBufferMemoryError } from "../src/errors.ts";
import { IovaAllocator } from "../src/memory/iova_allocator.ts";
import { IovaMappings } from "../src/memory/iova_mappings.ts";
import { HeapRegion } from "../src/memory/region.ts";

const MiB = 1 << 20;
const ALIGN = IovaAllocator.ALIGN;

Deno.test("IOVA allocator: aligned, inside the ranges, skipping what does not fit, reusing freed blocks", () => {
  const a = new IovaAllocator([{ first: 0x4000_0000, last: 0x4000_0000 + 3 * ALIGN - 1 }, {
    first: 0x1_0000_0000,
    last: 0x1_0000_0000 + 8 * ALIGN - 1,
  }]);
  const x = a.alloc(4096);
  assert.equal(x, 0x4000_0000);
  const y = a.alloc(ALIGN + 1); // two blocks: still fits the first range
  assert.equal(y, 0x4000_0000 + ALIGN);
  const z = a.alloc(2 * ALIGN); // no room left in the first range
  assert.equal(z, 0x1_0000_0000);
  for (const v of [x, y, z]) assert.equal(v % ALIGN, 0);
  a.free(y, ALIGN + 1);
  assert.equal(a.alloc(2 * ALIGN), y, "a freed block that is large enough is reused");
  assert.throws(() => a.alloc(7 * ALIGN), OutOfBufferMemoryError);
});

Deno.test("IOVA allocator: keeps clear of page 0 and of addresses a number cannot hold", () => {
  const a = new IovaAllocator([{ first: 0, last: 2 ** 64 - 1 }]);
  const x = a.alloc(4096);
  assert.ok(x >= MiB, `first IOVA ${x} must stay above 1 MiB`);
  assert.throws(() => new IovaAllocator([{ first: 2 ** 60, last: 2 ** 61 }]), OutOfBufferMemoryError);
  assert.throws(() => new IovaAllocator([]), OutOfBufferMemoryError);
});

Deno.test("IOVA mappings: map records the IOVA; a failed map gives it back; unmap revokes once", () => {
  const programmed: [string, number][] = [];
  const revoked: [number, number][] = [];
  let failNext = false;
  const m = new IovaMappings(
    new IovaAllocator([{ first: 0, last: 2 ** 40 }]),
    (region, iova) => {
      if (failNext) {
        failNext = false;
        throw new Error("the IOMMU refused");
      }
      programmed.push([region.name, iova]);
    },
    (iova, size) => void revoked.push([iova, size]),
  );
  const a = new HeapRegion("a", 64 * 1024), b = new HeapRegion("b", 3 * MiB);
  failNext = true;
  assert.throws(() => m.map(a), /refused/);
  assert.equal(a.iova, -1, "a failed map leaves the region unmapped");
  assert.deepEqual(m.regions, []);
  m.map(a);
  m.map(b);
  assert.deepEqual(programmed, [["a", a.iova], ["b", b.iova]]);
  assert.equal(programmed[0][1], MiB * 2, "the IOVA of the failed map was handed out again");
  assert.deepEqual(m.regions, [a, b]);
  m.unmap(a);
  m.unmap(a); // a second unmap does nothing
  assert.deepEqual(revoked, [[MiB * 2, a.size]]);
  assert.equal(a.iova, -1);
  assert.deepEqual(m.regions, [b]);
  a.close();
  b.close();
});

Deno.test("IOVA mappings: a range whose revocation failed is never handed out again", () => {
  const m = new IovaMappings(
    new IovaAllocator([{ first: 0, last: 2 ** 40 }]),
    () => {},
    () => {
      throw new Error("unmap failed");
    },
  );
  const a = new HeapRegion("a", 4096), b = new HeapRegion("b", 4096);
  m.map(a);
  const first = a.iova;
  assert.throws(() => m.unmap(a), /unmap failed/);
  m.map(b);
  assert.notEqual(b.iova, first);
  a.close();
  b.close();
});
