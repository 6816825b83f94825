// Configuration changes at run time (virtio 1.2, 3.2.1): the mock device's
// resize() drives the same path a real device does (capacity and limits
// updated, then "configchange"); the vhost-user back-end channel is served
// and survives a hostile back-end (malformed, oversized, unknown and
// flooding requests, descriptors, hang-ups) without a hang or a leak.
import assert from "node:assert/strict";
import { DeviceProtocolError, DeviceUnsupportedError, InvalidArgumentError, VirtioBlk } from "../mod.ts";
import { MockBlkDevice } from "../testing.ts";
import { loadShim } from "../src/os/loader.ts";
import { eventfd } from "../src/os/eventfd.ts";
import { closeFd } from "../src/os/syscalls.ts";
import { BLK_CONFIG } from "../src/blk/spec.ts";
import {
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK,
  VhostUserBackendRequest as B,
  VhostUserProtocolFeature as PF,
} from "../src/transport/vhost_user/protocol.ts";
import { FakeVhostUserBackend, rawMessage } from "./_fake_vhost_user.ts";
import { awaitedLater, fdCount, nextEvent } from "./_support.ts";

const MiB = 1 << 20;

const settle = () => new Promise((r) => setTimeout(r, 20));

// ------------------------------------------------------------------ mock device

Deno.test("mock resize: grow → configchange after capacity and limits moved; I/O at the new end works", async () => {
  const device = new MockBlkDevice({ capacity: 4 * MiB });
  await using blk = await VirtioBlk.connect({ transport: "mock", device });
  assert.equal(blk.configStats().signal, "callback");
  const seen: bigint[] = [];
  blk.addEventListener("configchange", () => seen.push(blk.capacity)); // updated before the event
  const change = nextEvent(blk, "configchange");
  device.resize(8 * MiB);
  const detail = await change;
  assert.equal(detail.previousCapacity, BigInt(4 * MiB));
  assert.equal(detail.config.capacity, BigInt(8 * MiB));
  assert.equal(detail.previousConfig.capacity, BigInt(4 * MiB));
  assert.deepEqual(seen, [BigInt(8 * MiB)]);
  assert.equal(blk.config, detail.config);
  const buf = blk.allocBuffer(4096);
  buf.fill(0x5c);
  await blk.write(8 * MiB - 4096, buf);
  assert.equal(device.disk[8 * MiB - 1], 0x5c);
  buf.fill(0);
  await blk.read(8 * MiB - 4096, buf);
  assert.equal(buf[4095], 0x5c);
  await assert.rejects(blk.read(8 * MiB, buf), InvalidArgumentError);
  assert.deepEqual(blk.configStats(), {
    signal: "callback",
    notifications: 1,
    changes: 1,
    unchanged: 0,
    errors: 0,
    lastError: undefined,
    channel: undefined,
  });
});

Deno.test("mock resize: shrink → requests past the new end are refused before they reach the device", async () => {
  const device = new MockBlkDevice({ capacity: 8 * MiB });
  await using blk = await VirtioBlk.connect({ transport: "mock", device });
  const change = nextEvent(blk, "configchange");
  device.resize(2 * MiB);
  assert.equal((await change).previousCapacity, BigInt(8 * MiB));
  assert.equal(blk.capacity, BigInt(2 * MiB));
  const kicks = device.stats.notifications;
  const buf = blk.allocBuffer(4096);
  await assert.rejects(blk.read(4 * MiB, buf), InvalidArgumentError);
  await assert.rejects(blk.write(2 * MiB - 512, buf), InvalidArgumentError); // straddles the end
  await assert.rejects(blk.discard(2 * MiB, 4096), InvalidArgumentError);
  assert.throws(() => blk.queue(0).read(4 * MiB, buf, 1), InvalidArgumentError);
  assert.equal(device.stats.notifications, kicks, "nothing reached the device");
  await blk.read(2 * MiB - 4096, buf);
});

Deno.test("mock resize: a request in flight past a new, smaller end is the device's to answer", async () => {
  const device = new MockBlkDevice({ capacity: 8 * MiB, completion: "manual" });
  await using blk = await VirtioBlk.connect({ transport: "mock", device });
  const buf = blk.allocBuffer(4096);
  const inFlight = awaitedLater(blk.read(6 * MiB, buf));
  await settle();
  const change = nextEvent(blk, "configchange");
  device.resize(2 * MiB);
  await change;
  for (let q = 0; q < blk.numQueues; q++) device.process(q);
  await assert.rejects(inFlight, (e: Error) => e.name === "DeviceIoError");
});

Deno.test("mock resize: 50 in a row lose no state — the last capacity seen is the final one", async () => {
  const device = new MockBlkDevice({ capacity: 1 * MiB });
  await using blk = await VirtioBlk.connect({ transport: "mock", device });
  let events = 0, last = 0n;
  blk.addEventListener("configchange", (e) => {
    events++;
    last = e.detail.config.capacity;
  });
  for (let i = 1; i <= 50; i++) device.resize(MiB + i * 65536);
  await settle();
  await blk.refreshConfig(); // after every read under way
  assert.equal(last, BigInt(MiB + 50 * 65536));
  assert.equal(blk.capacity, BigInt(MiB + 50 * 65536));
  assert.ok(events >= 1 && events <= 50, `${events} events`);
  assert.equal(blk.configStats().notifications, 50);
});

Deno.test("mock resize to 0: the capacity follows, every request is refused", async () => {
  const device = new MockBlkDevice({ capacity: 1 * MiB });
  await using blk = await VirtioBlk.connect({ transport: "mock", device });
  const change = nextEvent(blk, "configchange");
  device.resize(0);
  assert.equal((await change).config.capacity, 0n);
  await assert.rejects(blk.read(0, blk.allocBuffer(512)), InvalidArgumentError);
});

Deno.test("refreshConfig: a config that no longer parses changes nothing and is counted", async () => {
  const device = new MockBlkDevice({ capacity: 1 * MiB, blockSize: 4096 });
  await using blk = await VirtioBlk.connect({ transport: "mock", device });
  new DataView(device.config.buffer).setUint32(BLK_CONFIG.BLK_SIZE, 3000, true); // not a power of two
  await assert.rejects(blk.refreshConfig(), DeviceProtocolError);
  device.changeConfig(); // the same garbage, announced
  await settle();
  await blk.refreshConfig().catch(() => {});
  assert.equal(blk.capacity, BigInt(1 * MiB));
  assert.equal(blk.config.blkSize, 4096);
  const s = blk.configStats();
  assert.ok(s.errors >= 2, JSON.stringify(s));
  assert.match(s.lastError ?? "", /blk_size 3000/);
  assert.equal(s.changes, 0);
});

Deno.test("refreshConfig without a change dispatches nothing", async () => {
  const device = new MockBlkDevice({ capacity: 1 * MiB });
  await using blk = await VirtioBlk.connect({ transport: "mock", device });
  let events = 0;
  blk.addEventListener("configchange", () => events++);
  const c = await blk.refreshConfig();
  assert.equal(c.capacity, BigInt(1 * MiB));
  device.changeConfig(); // a notification with nothing changed
  await settle();
  assert.equal(events, 0);
  assert.equal(blk.configStats().unchanged, 2);
});

Deno.test("setWriteCache: switches writeback through the config space and reads it back; refused without CONFIG_WCE", async () => {
  const device = new MockBlkDevice({ capacity: 1 * MiB, writeCache: true });
  await using blk = await VirtioBlk.connect({ transport: "mock", device });
  assert.equal(blk.config.writeback, 1);
  const change = nextEvent(blk, "configchange");
  assert.equal((await blk.setWriteCache(false)).writeback, 0);
  assert.equal((await change).config.writeback, 0);
  assert.equal(device.config[BLK_CONFIG.WRITEBACK], 0);
  assert.equal((await blk.setWriteCache(true)).writeback, 1);

  const plain = new MockBlkDevice({ capacity: 1 * MiB });
  await using blk2 = await VirtioBlk.connect({ transport: "mock", device: plain });
  await assert.rejects(blk2.setWriteCache(true), DeviceUnsupportedError);
});

Deno.test("a closed device dispatches no more changes", async () => {
  const device = new MockBlkDevice({ capacity: 1 * MiB });
  const blk = await VirtioBlk.connect({ transport: "mock", device });
  let events = 0;
  blk.addEventListener("configchange", () => events++);
  await blk.close();
  device.resize(2 * MiB);
  await settle();
  assert.equal(events, 0);
  await assert.rejects(blk.refreshConfig());
});

// ------------------------------------------------------- vhost-user back-end channel

await loadShim();

const CHANNEL_FEATURES = PF.MQ | PF.REPLY_ACK | PF.CONFIG | PF.CONFIGURE_MEM_SLOTS | PF.BACKEND_REQ;

/** A fake back-end with a channel, a connected driver, and a leak check around both. */
async function withChannel(
  fn: (b: FakeVhostUserBackend, blk: VirtioBlk, config: Uint8Array) => Promise<void>,
  protocolFeatures = CHANNEL_FEATURES,
): Promise<void> {
  const fds = fdCount();
  const config = new MockBlkDevice({ capacity: 4 * MiB, numQueues: 1 }).config;
  const backend = await FakeVhostUserBackend.start({ protocolFeatures, config });
  try {
    const blk = await VirtioBlk.connect({
      transport: "vhost-user",
      fd: backend.driverSocket,
      requestTimeoutMs: 2000,
      bufferPoolSize: 1 << 20,
      closeTimeoutMs: 100,
    });
    try {
      await fn(backend, blk, config);
    } finally {
      await blk.close();
    }
  } finally {
    await backend.close();
  }
  assert.equal(fdCount(), fds, "no descriptor leaked");
}

function setCapacity(config: Uint8Array, bytes: number): void {
  new DataView(config.buffer).setBigUint64(BLK_CONFIG.CAPACITY, BigInt(bytes / 512), true);
}

const change = (flags = 1) => rawMessage(B.CONFIG_CHANGE_MSG, flags, new Uint8Array(0));

Deno.test("back-end channel: handed over at connect; CONFIG_CHANGE_MSG → re-read → configchange", async () => {
  await withChannel(async (b, blk, config) => {
    assert.ok(b.channelFd >= 0, "the driver sent SET_BACKEND_REQ_FD");
    assert.equal(blk.configStats().signal, "message");
    setCapacity(config, 8 * MiB);
    const next = nextEvent(blk, "configchange");
    b.sendOnChannel(change());
    const d = await next;
    assert.equal(d.previousCapacity, BigInt(4 * MiB));
    assert.equal(blk.capacity, BigInt(8 * MiB));
    assert.deepEqual(await b.channelAnswers(1, 100), [], "no answer without NEED_REPLY");
  });
});

Deno.test("back-end channel: NEED_REPLY is answered (0 for a config change, non-zero for what is not served)", async () => {
  await withChannel(async (b, blk) => {
    b.sendOnChannel(change(1 | VHOST_USER_NEED_REPLY_MASK));
    b.sendOnChannel(rawMessage(B.IOTLB_MSG, 1 | VHOST_USER_NEED_REPLY_MASK, new Uint8Array(64)));
    b.sendOnChannel(rawMessage(99, 1 | VHOST_USER_NEED_REPLY_MASK, new Uint8Array(8)));
    b.sendOnChannel(rawMessage(B.VRING_CALL, 1, new Uint8Array(8))); // no answer wanted: ignored
    const answers = await b.channelAnswers(3);
    assert.deepEqual(
      answers.map((a) => [a.request, a.flags, a.size, a.status]),
      [
        [B.CONFIG_CHANGE_MSG, 1 | VHOST_USER_REPLY_MASK, 8, 0n],
        [B.IOTLB_MSG, 1 | VHOST_USER_REPLY_MASK, 8, 1n],
        [99, 1 | VHOST_USER_REPLY_MASK, 8, 1n],
      ],
    );
    await settle();
    const s = channelStats(blk);
    assert.deepEqual(
      [s.requests, s.configChanges, s.refused, s.ignored, s.closed],
      [4, 1, 2, 1, undefined],
    );
    assert.deepEqual(s.byName, { CONFIG_CHANGE_MSG: 1, IOTLB_MSG: 1, "request 99": 1, VRING_CALL: 1 });
  });
});

Deno.test("back-end channel: descriptors sent along are closed unread", async () => {
  await withChannel(async (b, blk) => {
    const before = fdCount();
    const fds = [eventfd(), eventfd(), eventfd()];
    b.sendOnChannel(rawMessage(B.VRING_HOST_NOTIFIER_MSG, 1, new Uint8Array(24)), fds);
    for (const fd of fds) closeFd(fd);
    await settle();
    assert.equal(fdCount(), before, "the driver kept none of them");
    assert.equal(channelStats(blk).fdsClosed, 3);
  });
});

Deno.test("back-end channel: a message split across writes is read whole", async () => {
  await withChannel(async (b, blk, config) => {
    setCapacity(config, 6 * MiB);
    const next = nextEvent(blk, "configchange");
    const m = change(1 | VHOST_USER_NEED_REPLY_MASK);
    b.sendOnChannel(m.slice(0, 5));
    await settle();
    b.sendOnChannel(m.slice(5));
    assert.equal((await next).config.capacity, BigInt(6 * MiB));
    assert.equal((await b.channelAnswers(1))[0].status, 0n);
  });
});

for (
  const [what, bytes, reason] of [
    ["an oversized payload", rawMessage(B.CONFIG_CHANGE_MSG, 1, new Uint8Array(0), 1 << 30), /payload of 1073741824/],
    ["a wrong protocol version", rawMessage(B.CONFIG_CHANGE_MSG, 2, new Uint8Array(0)), /protocol version 2/],
    [
      "a reply where a request must be",
      rawMessage(B.CONFIG_CHANGE_MSG, 1 | VHOST_USER_REPLY_MASK, new Uint8Array(0)),
      /sent a reply/,
    ],
  ] as const
) {
  Deno.test(`back-end channel: ${what} closes the channel; the device keeps working`, async () => {
    await withChannel(async (b, blk, config) => {
      let events = 0;
      blk.addEventListener("configchange", () => events++);
      b.sendOnChannel(bytes as Uint8Array<ArrayBuffer>);
      await settle();
      assert.equal(events, 0);
      assert.equal(await b.channelAnswers(1, 200).then((a) => a.length), 0);
      // The control connection still works: an explicit re-read sees a change.
      setCapacity(config, 8 * MiB);
      assert.equal((await blk.refreshConfig()).capacity, BigInt(8 * MiB));
      const stats = channelStats(blk);
      assert.match(stats.closed ?? "", reason);
    });
  });
}

Deno.test("back-end channel: a flood (20000 requests) is served in bounded turns; timers keep running; changes coalesce", async () => {
  await withChannel(async (b, blk, config) => {
    let events = 0;
    blk.addEventListener("configchange", () => events++);
    setCapacity(config, 16 * MiB);
    const one = change();
    const burst = new Uint8Array(one.byteLength * 500);
    for (let i = 0; i < 500; i++) burst.set(one, i * one.byteLength);
    let ticks = 0;
    const tick = setInterval(() => ticks++, 1);
    try {
      let sent = 0;
      for (let i = 0; i < 40; i++) {
        const r = b.sendOnChannel(burst);
        assert.equal(r, burst.byteLength, "the driver keeps reading");
        sent += 500;
        await new Promise((r) => setTimeout(r, 2));
      }
      const deadline = performance.now() + 5000;
      while (channelStats(blk).requests < sent && performance.now() < deadline) await settle();
      assert.equal(channelStats(blk).requests, sent);
    } finally {
      clearInterval(tick);
    }
    await blk.refreshConfig();
    assert.ok(ticks > 10, `timers ran during the flood (${ticks})`);
    assert.equal(blk.capacity, BigInt(16 * MiB));
    assert.equal(events, 1, "one change, however many notifications");
    assert.ok(blk.configStats().notifications <= 20000);
  });
});

Deno.test("back-end channel: a back-end that never reads its answers gets the channel closed, not a hang", async () => {
  await withChannel(async (b, blk) => {
    const ask = rawMessage(99, 1 | VHOST_USER_NEED_REPLY_MASK, new Uint8Array(0));
    const burst = new Uint8Array(ask.byteLength * 1000);
    for (let i = 0; i < 1000; i++) burst.set(ask, i * ask.byteLength);
    const deadline = performance.now() + 5000;
    while (channelStats(blk).closed === undefined && performance.now() < deadline) {
      b.sendOnChannel(burst); // may be partial or EAGAIN once the driver stops reading
      await new Promise((r) => setTimeout(r, 1));
    }
    assert.match(channelStats(blk).closed ?? "", /does not read its answers/);
    assert.equal((await blk.refreshConfig()).capacity, BigInt(4 * MiB));
  });
});

Deno.test("back-end channel: the back-end hanging up on it leaves the device working, without change messages", async () => {
  await withChannel(async (b, blk, config) => {
    b.closeChannel();
    const deadline = performance.now() + 2000;
    while (channelStats(blk).closed === undefined && performance.now() < deadline) await settle();
    assert.match(channelStats(blk).closed ?? "", /closed its channel/);
    setCapacity(config, 8 * MiB);
    assert.equal((await blk.refreshConfig()).capacity, BigInt(8 * MiB));
  });
});

Deno.test("back-end channel: not offered → no channel, signal 'none', refreshConfig still reads", async () => {
  await withChannel(async (b, blk, config) => {
    assert.equal(b.channelFd, -1);
    assert.equal(blk.configStats().signal, "none");
    setCapacity(config, 8 * MiB);
    assert.equal((await blk.refreshConfig()).capacity, BigInt(8 * MiB));
  }, PF.MQ | PF.REPLY_ACK | PF.CONFIG | PF.CONFIGURE_MEM_SLOTS);
});

/** The back-end channel's statistics of a connected vhost-user device. */
function channelStats(blk: VirtioBlk) {
  const s = blk.configStats().channel;
  assert.ok(s, "a vhost-user device with a back-end channel");
  return s;
}
