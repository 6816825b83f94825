// Golden bytes for the vhost-user messages this driver sends, derived from
// QEMU's docs/interop/vhost-user.rst and <linux/vhost_types.h> layouts.
import { decodeVringBase, encodeVringBase, FRESH_VRING_BASE } from "../src/transport/vring_base.ts";
import assert from "node:assert/strict";
import {
  decodeConfigReply,
  decodeHeader,
  decodeU64,
  decodeVringState,
  encodeConfigRequest,
  encodeMemTable,
  encodeMessage,
  encodeSingleMemRegion,
  encodeU64,
  encodeVringAddr,
  encodeVringFile,
  encodeVringState,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VhostUserProtocolFeature,
  VhostUserRequest,
} from "../src/transport/vhost_user/protocol.ts";

function hex(b: Uint8Array): string {
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join(" ");
}

Deno.test("request codes and feature bits match the specification", () => {
  assert.deepEqual(
    [
      VhostUserRequest.GET_FEATURES,
      VhostUserRequest.SET_OWNER,
      VhostUserRequest.SET_MEM_TABLE,
      VhostUserRequest.SET_VRING_ADDR,
      VhostUserRequest.SET_VRING_KICK,
      VhostUserRequest.SET_VRING_CALL,
      VhostUserRequest.GET_PROTOCOL_FEATURES,
      VhostUserRequest.GET_QUEUE_NUM,
      VhostUserRequest.SET_VRING_ENABLE,
      VhostUserRequest.GET_CONFIG,
      VhostUserRequest.GET_MAX_MEM_SLOTS,
      VhostUserRequest.ADD_MEM_REG,
      VhostUserRequest.REM_MEM_REG,
    ],
    [1, 3, 5, 9, 12, 13, 15, 17, 18, 24, 36, 37, 38],
  );
  assert.equal(VHOST_USER_F_PROTOCOL_FEATURES, 0x4000_0000n);
  assert.equal(VhostUserProtocolFeature.REPLY_ACK, 0x8n);
  assert.equal(VhostUserProtocolFeature.CONFIG, 0x200n);
  assert.equal(VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS, 0x8000n);
});

Deno.test("header: request, version 1 flags, NEED_REPLY, size", () => {
  assert.equal(
    hex(encodeMessage(VhostUserRequest.GET_FEATURES, new Uint8Array(0))),
    "01 00 00 00 01 00 00 00 00 00 00 00",
  );
  assert.equal(
    hex(encodeMessage(VhostUserRequest.SET_FEATURES, encodeU64(0x1_4000_0000n), true)),
    "02 00 00 00 09 00 00 00 08 00 00 00 00 00 00 40 01 00 00 00",
  );
  assert.deepEqual(decodeHeader(new Uint8Array([0x18, 0, 0, 0, 5, 0, 0, 0, 0x48, 0, 0, 0])), {
    request: 24,
    flags: 5,
    size: 72,
  });
});

Deno.test("payloads: u64, vring state, vring file, vring address", () => {
  assert.equal(decodeU64(encodeU64(0x0123_4567_89ab_cdefn)), 0x0123_4567_89ab_cdefn);
  assert.equal(hex(encodeVringState(1, 256)), "01 00 00 00 00 01 00 00");
  assert.deepEqual(decodeVringState(encodeVringState(3, 0x8000)), { index: 3, num: 0x8000 });
  assert.equal(hex(encodeVringFile(2, false)), "02 00 00 00 00 00 00 00");
  assert.equal(hex(encodeVringFile(2, true)), "02 01 00 00 00 00 00 00");
  // struct vhost_vring_addr: index, flags, desc, used, avail, log — used before avail.
  assert.equal(
    hex(encodeVringAddr(1, 0x7f00_0000_1000, 0x7f00_0000_3000, 0x7f00_0000_2000)),
    [
      "01 00 00 00",
      "00 00 00 00",
      "00 10 00 00 00 7f 00 00",
      "00 30 00 00 00 7f 00 00",
      "00 20 00 00 00 7f 00 00",
      "00 00 00 00 00 00 00 00",
    ].join(" "),
  );
});

Deno.test("payloads: memory regions (single and table)", () => {
  const r = { guestPhysAddr: 0x7f12_3400_0000, size: 0x20_0000, userAddr: 0x7f12_3400_0000, mmapOffset: 0 };
  assert.equal(
    hex(encodeSingleMemRegion(r)),
    [
      "00 00 00 00 00 00 00 00", // padding
      "00 00 00 34 12 7f 00 00",
      "00 00 20 00 00 00 00 00",
      "00 00 00 34 12 7f 00 00",
      "00 00 00 00 00 00 00 00",
    ].join(" "),
  );
  const t = encodeMemTable([r, { ...r, guestPhysAddr: 0x1000, userAddr: 0x1000, size: 0x1000 }]);
  assert.equal(t.byteLength, 8 + 64);
  assert.equal(hex(t.subarray(0, 8)), "02 00 00 00 00 00 00 00");
  assert.equal(hex(t.subarray(40, 48)), "00 10 00 00 00 00 00 00");
  assert.throws(() => encodeMemTable(Array(9).fill(r)), RangeError);
});

Deno.test("payloads: config request and reply", () => {
  assert.equal(hex(encodeConfigRequest(0, 4)), "00 00 00 00 04 00 00 00 00 00 00 00 00 00 00 00");
  const reply = new Uint8Array([0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd]);
  const d = decodeConfigReply(reply);
  assert.deepEqual([d.offset, d.size, d.flags], [0, 4, 0]);
  assert.equal(hex(d.data), "aa bb cc dd");
  assert.throws(() => encodeConfigRequest(0, 257), RangeError);
});

Deno.test("vring base: packed rings carry both indices and both wrap counters; split only the avail index", () => {
  assert.equal(encodeVringBase("packed", FRESH_VRING_BASE), 0x8000_8000);
  assert.equal(encodeVringBase("split", FRESH_VRING_BASE), 0);
  const pos = { availIdx: 0x1234, availWrap: 0, usedIdx: 0x7ffe, usedWrap: 1 };
  assert.equal(encodeVringBase("packed", pos), 0xfffe_1234);
  assert.deepEqual(decodeVringBase("packed", 0xfffe_1234), pos);
  assert.deepEqual(decodeVringBase("packed", 0x8008), { availIdx: 8, availWrap: 1, usedIdx: 0, usedWrap: 0 });
  assert.deepEqual(decodeVringBase("split", 0x1_0007), { availIdx: 7, availWrap: 0, usedIdx: 0, usedWrap: 0 });
  assert.equal(encodeVringBase("split", { ...pos, availIdx: 0x1_2345 }), 0x2345);
});
