// The vhost-user handshake, message by message, against a scripted back-end.
import assert from "node:assert/strict";
import { ConnectionLostError, DeviceProtocolError, FeatureNegotiationError, TimeoutError, VirtioBlk } from "../mod.ts";
import { loadShim } from "../src/os/loader.ts";
import {
  decodeU64,
  encodeU64,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_NEED_REPLY_MASK,
  VhostUserProtocolFeature as PF,
  VhostUserRequest as R,
} from "../src/transport/vhost_user/protocol.ts";
import { type FakeBackendOptions, fakeReply, FakeVhostUserBackend, rawMessage } from "./_fake_vhost_user.ts";
import { fdCount } from "./_support.ts";

await loadShim();

async function withBackend(
  options: FakeBackendOptions,
  fn: (b: FakeVhostUserBackend) => Promise<void>,
): Promise<void> {
  const fds = fdCount();
  const backend = await FakeVhostUserBackend.start(options);
  try {
    await fn(backend);
  } finally {
    await backend.close();
  }
  assert.equal(fdCount(), fds, "no descriptor leaked");
}

function connect(b: FakeVhostUserBackend, timeout = 2000): Promise<VirtioBlk> {
  return VirtioBlk.connect({
    transport: "vhost-user",
    fd: b.driverSocket,
    requestTimeoutMs: timeout,
    bufferPoolSize: 1 << 20,
  });
}

Deno.test("handshake with every protocol feature: ADD_MEM_REG, REPLY_ACK, vring setup, GET_VRING_BASE on close", async () => {
  await withBackend({}, async (b) => {
    const blk = await connect(b);
    assert.equal(blk.capacity, 1n << 20n);
    await blk.close();
    const names = b.received.map((m) => m.request);
    assert.deepEqual(names, [
      R.SET_OWNER,
      R.GET_FEATURES,
      R.GET_PROTOCOL_FEATURES,
      R.SET_PROTOCOL_FEATURES,
      R.GET_QUEUE_NUM,
      R.GET_MAX_MEM_SLOTS,
      R.SET_FEATURES,
      R.GET_CONFIG,
      R.ADD_MEM_REG,
      R.ADD_MEM_REG,
      R.SET_VRING_NUM,
      R.SET_VRING_BASE,
      R.SET_VRING_ADDR,
      R.SET_VRING_CALL,
      R.SET_VRING_KICK,
      R.SET_VRING_ENABLE,
      R.GET_VRING_BASE,
    ]);
    const by = (r: number) => b.received.filter((m) => m.request === r);
    assert.equal(
      decodeU64(by(R.SET_PROTOCOL_FEATURES)[0].payload),
      PF.MQ | PF.REPLY_ACK | PF.CONFIG | PF.CONFIGURE_MEM_SLOTS,
    );
    const setFeatures = by(R.SET_FEATURES)[0];
    assert.ok(decodeU64(setFeatures.payload) & VHOST_USER_F_PROTOCOL_FEATURES, "acks the protocol-features bit");
    assert.ok(setFeatures.flags & VHOST_USER_NEED_REPLY_MASK, "asks for an ack");
    for (const m of [...by(R.ADD_MEM_REG), ...by(R.SET_VRING_CALL), ...by(R.SET_VRING_KICK)]) {
      assert.equal(m.fdCount, 1);
    }
    assert.equal(by(R.GET_FEATURES)[0].flags & VHOST_USER_NEED_REPLY_MASK, 0, "GET_* never asks for an ack");
  });
});

Deno.test("without CONFIGURE_MEM_SLOTS the memory table goes by SET_MEM_TABLE", async () => {
  await withBackend({ protocolFeatures: PF.REPLY_ACK | PF.CONFIG }, async (b) => {
    const blk = await connect(b);
    await blk.close();
    const tables = b.received.filter((m) => m.request === R.SET_MEM_TABLE);
    assert.equal(tables.length, 2);
    const regions = (m: { payload: Uint8Array }) =>
      new DataView(m.payload.buffer, m.payload.byteOffset).getUint32(0, true);
    assert.deepEqual(tables.map(regions), [1, 2], "the whole table each time");
    assert.deepEqual(tables.map((m) => m.fdCount), [1, 2]);
    assert.equal(tables[1].payload.byteLength, 8 + 2 * 32);
    assert.ok(!b.requests.includes(R.ADD_MEM_REG));
    assert.ok(!b.requests.includes(R.GET_MAX_MEM_SLOTS));
    assert.ok(!b.requests.includes(R.GET_QUEUE_NUM));
  });
});

Deno.test("without REPLY_ACK nothing asks for an ack", async () => {
  await withBackend({ protocolFeatures: PF.CONFIG | PF.CONFIGURE_MEM_SLOTS }, async (b) => {
    const blk = await connect(b);
    await blk.close();
    assert.ok(b.received.every((m) => (m.flags & VHOST_USER_NEED_REPLY_MASK) === 0));
  });
});

Deno.test("a back-end without the CONFIG protocol feature is refused with a typed error", async () => {
  await withBackend({ protocolFeatures: PF.REPLY_ACK }, async (b) => {
    await assert.rejects(connect(b), FeatureNegotiationError);
  });
});

const protocolError = (violation: string) => (e: unknown) =>
  e instanceof DeviceProtocolError && e.violation === violation;

/** A hostile back-end: [what, hook, expected error]. Each hits GET_FEATURES unless said otherwise. */
const HOSTILE: [string, FakeBackendOptions["hook"], (e: unknown) => boolean][] = [
  [
    "wrong request code",
    (m) => (m.request === R.GET_FEATURES ? { raw: fakeReply(R.GET_QUEUE_NUM, new Uint8Array(8)) } : undefined),
    protocolError("reply-wrong-request"),
  ],
  [
    "missing REPLY flag",
    (
      m,
    ) => (m.request === R.GET_FEATURES ? { raw: rawMessage(R.GET_FEATURES, 1, new Uint8Array(8)) } : undefined),
    protocolError("reply-missing-reply-flag"),
  ],
  [
    "wrong protocol version",
    (
      m,
    ) => (m.request === R.GET_FEATURES ? { raw: rawMessage(R.GET_FEATURES, 2 | 4, new Uint8Array(8)) } : undefined),
    protocolError("reply-bad-version"),
  ],
  [
    "oversized payload",
    (
      m,
    ) => (m.request === R.GET_FEATURES
      ? { raw: rawMessage(R.GET_FEATURES, 5, new Uint8Array(64), 1 << 20) }
      : undefined),
    protocolError("reply-oversized"),
  ],
  [
    "truncated reply (payload shorter than a u64)",
    (
      m,
    ) => (m.request === R.GET_FEATURES ? { raw: rawMessage(R.GET_FEATURES, 5, new Uint8Array(4)) } : undefined),
    protocolError("reply-bad-size"),
  ],
  [
    "truncated reply, then silence",
    (
      m,
    ) => (m.request === R.GET_FEATURES
      ? { raw: rawMessage(R.GET_FEATURES, 5, new Uint8Array(0), 8).subarray(0, 7) }
      : undefined),
    (e) => e instanceof TimeoutError,
  ],
  [
    "truncated reply, then hang-up",
    (
      m,
    ) => (m.request === R.GET_FEATURES
      ? { raw: rawMessage(R.GET_FEATURES, 5, new Uint8Array(3), 8), close: true }
      : undefined),
    (e) => e instanceof ConnectionLostError,
  ],
  [
    "extra file descriptors on a reply",
    (
      m,
    ) => (m.request === R.GET_FEATURES
      ? { raw: fakeReply(R.GET_FEATURES, encodeU64(1n << 32n)), fds: [0, 1, 2] }
      : undefined),
    protocolError("reply-unexpected-fds"),
  ],
  [
    "closes mid-handshake",
    (m) => (m.request === R.GET_PROTOCOL_FEATURES ? { close: true } : undefined),
    (e) => e instanceof ConnectionLostError,
  ],
  [
    "never answers",
    (m) => (m.request === R.GET_CONFIG ? { silent: true } : undefined),
    (e) => e instanceof TimeoutError,
  ],
  [
    "refuses SET_FEATURES",
    (m) => (m.request === R.SET_FEATURES ? { raw: fakeReply(R.SET_FEATURES, encodeU64(1)) } : undefined),
    (e) => e instanceof FeatureNegotiationError,
  ],
  [
    "refuses ADD_MEM_REG",
    (m) => (m.request === R.ADD_MEM_REG ? { raw: fakeReply(R.ADD_MEM_REG, encodeU64(22)) } : undefined),
    protocolError("request-refused"),
  ],
  [
    "returns an empty config",
    (m) => (m.request === R.GET_CONFIG ? { raw: rawMessage(R.GET_CONFIG, 5, new Uint8Array(0)) } : undefined),
    protocolError("config-refused"),
  ],
  [
    "returns a config for another range",
    (m) => {
      if (m.request !== R.GET_CONFIG) return undefined;
      const p = m.payload.slice();
      p[0] = 4; // offset 4 instead of 0
      return { raw: fakeReply(R.GET_CONFIG, p) };
    },
    protocolError("reply-bad-config"),
  ],
  [
    "claims 0 queues",
    (m) => (m.request === R.GET_QUEUE_NUM ? { raw: fakeReply(R.GET_QUEUE_NUM, encodeU64(0)) } : undefined),
    protocolError("bad-queue-num"),
  ],
];

for (const [what, hook, check] of HOSTILE) {
  Deno.test(`hostile back-end: ${what} is a typed error, fast, and leaks nothing`, async () => {
    await withBackend({ hook }, async (b) => {
      const t0 = performance.now();
      await assert.rejects(connect(b, 300), check, what);
      assert.ok(performance.now() - t0 < 2000, `${what}: failed fast`);
    });
  });
}

Deno.test("hostile back-end: one that never answers GET_VRING_BASE cannot stop close() from releasing everything", async () => {
  await withBackend({ hook: (m) => (m.request === R.GET_VRING_BASE ? { silent: true } : undefined) }, async (b) => {
    const blk = await connect(b, 200);
    const t0 = performance.now();
    await blk.close();
    assert.ok(performance.now() - t0 < 2000);
  });
});

Deno.test("SET_VRING_BASE: 0 for a split ring; both wrap counters (0x80008000) for a packed one", async () => {
  const offered = (1n << 32n) | (1n << 34n) | VHOST_USER_F_PROTOCOL_FEATURES; // VERSION_1, RING_PACKED
  for (const [ring, golden] of [["split", "00 00 00 00 00 00 00 00"], ["packed", "00 00 00 00 00 80 00 80"]] as const) {
    await withBackend({ features: offered }, async (b) => {
      const blk = await VirtioBlk.connect({
        transport: "vhost-user",
        fd: b.driverSocket,
        requestTimeoutMs: 2000,
        bufferPoolSize: 1 << 20,
        ring,
      });
      await blk.close();
      const base = b.received.filter((m) => m.request === R.SET_VRING_BASE);
      assert.equal(base.length, 1);
      const hex = [...base[0].payload].map((x) => x.toString(16).padStart(2, "0")).join(" ");
      assert.equal(hex, golden, `${ring}: struct vhost_vring_state { index 0, num }`);
    });
  }
});
