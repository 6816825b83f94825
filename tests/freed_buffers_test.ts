// A freed buffer behaves the same on the mock device as on shared memory:
// it reads as empty, refuses to be used, and never aliases the next buffer.
import assert from "node:assert/strict";
import { InvalidArgumentError, VirtioBlk } from "../mod.ts";
import { MockBlkDevice, QemuStorageDaemon } from "../testing.ts";
import { loadShim } from "../src/os/loader.ts";
import { missing } from "./_support.ts";

await loadShim();

async function check(blk: VirtioBlk): Promise<void> {
  const a = blk.allocBuffer(4096);
  a.fill(0x11);
  await blk.write(0, a);
  blk.freeBuffer(a);
  assert.equal(a.byteLength, 0, "a freed buffer reads as empty");
  assert.equal(a[0], undefined);
  await assert.rejects(blk.read(0, a), InvalidArgumentError, "a freed buffer is refused");
  const b = blk.allocBuffer(4096); // likely the same memory again
  b.fill(0x22);
  assert.equal(a.byteLength, 0, "the old view does not see the new buffer");
  assert.throws(() => a.fill(0x33), TypeError, "a detached view cannot be written");
  assert.equal(b[0], 0x22, "the new buffer is not reachable through the old view");
  await blk.read(0, b);
  assert.equal(b[4095], 0x11, "the device writes the live buffer");
  assert.throws(() => blk.freeBuffer(a), InvalidArgumentError, "freeing twice is refused");
  blk.freeBuffer(b);
}

Deno.test("freed buffers on the mock device read as empty and alias nothing", async () => {
  await using blk = await VirtioBlk.connect({ transport: "mock", device: new MockBlkDevice() });
  await check(blk);
});

Deno.test({
  name: "freed buffers over vhost-user read as empty and alias nothing",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await QemuStorageDaemon.start({ size: 1 << 20 });
    await using blk = await VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath });
    await check(blk);
  },
});

Deno.test("a new buffer over memory the device wrote sees what it wrote, on the mock as in shared memory", async () => {
  const device = new MockBlkDevice();
  await using blk = await VirtioBlk.connect({ transport: "mock", device });
  device.disk.fill(0x5a, 0, 512);
  const a = blk.allocBuffer(512);
  await blk.read(0, a);
  blk.freeBuffer(a);
  const b = blk.allocBuffer(512); // the same pool memory
  assert.equal(b[0], 0x5a, "pool memory keeps its bytes, as a memfd does");
});
