// vhost-vdpa and VFIO encodings against golden values derived from the Linux
// UAPI headers (<linux/vhost.h>, <linux/vhost_types.h>, <linux/vfio.h>):
// compiled and printed by a C program on 2026-11-24 (linux-libc-dev 6.1), and
// re-derived live below when a C compiler and the headers are present.
import assert from "node:assert/strict";
import { missing, tempDir } from "./_support.ts";
import { io, ior, iow, iowr } from "../src/transport/linux/ioctl.ts";
import {
  iotlbMsg,
  u64Arg,
  vdpaConfig,
  VHOST,
  VHOST_BACKEND_F_IOTLB_MSG_V2,
  VHOST_IOTLB_INVALIDATE,
  VHOST_IOTLB_UPDATE,
  VHOST_MSG_V2_SIZE,
  vringAddr,
  vringState,
} from "../src/transport/vhost_vdpa/uapi.ts";
import {
  decodeIovaRanges,
  decodeRegionInfo,
  dmaMap,
  dmaUnmap,
  groupStatus,
  irqSet,
  regionInfo,
  VFIO,
} from "../src/transport/vfio_pci/uapi.ts";
import { parsePciCapabilities, VIRTIO_PCI_CAP } from "../src/transport/vfio_pci/pci.ts";
import { DeviceProtocolError } from "../mod.ts";

function hex(b: Uint8Array): string {
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join(" ");
}

/** ioctl numbers as the C preprocessor computes them from the headers. */
const GOLDEN_IOCTLS: Record<string, bigint> = {
  VHOST_GET_FEATURES: 0x8008af00n,
  VHOST_SET_FEATURES: 0x4008af00n,
  VHOST_SET_OWNER: 0xaf01n,
  VHOST_SET_VRING_NUM: 0x4008af10n,
  VHOST_SET_VRING_ADDR: 0x4028af11n,
  VHOST_SET_VRING_BASE: 0x4008af12n,
  VHOST_GET_VRING_BASE: 0xc008af12n,
  VHOST_SET_VRING_KICK: 0x4008af20n,
  VHOST_SET_VRING_CALL: 0x4008af21n,
  VHOST_SET_BACKEND_FEATURES: 0x4008af25n,
  VHOST_GET_BACKEND_FEATURES: 0x8008af26n,
  VHOST_VDPA_GET_DEVICE_ID: 0x8004af70n,
  VHOST_VDPA_GET_STATUS: 0x8001af71n,
  VHOST_VDPA_SET_STATUS: 0x4001af72n,
  VHOST_VDPA_GET_CONFIG: 0x8008af73n,
  VHOST_VDPA_SET_CONFIG: 0x4008af74n,
  VHOST_VDPA_SET_VRING_ENABLE: 0x4008af75n,
  VHOST_VDPA_GET_VRING_NUM: 0x8002af76n,
  VHOST_VDPA_SET_CONFIG_CALL: 0x4004af77n,
  VHOST_VDPA_GET_IOVA_RANGE: 0x8010af78n,
  VHOST_VDPA_GET_CONFIG_SIZE: 0x8004af79n,
  VHOST_VDPA_GET_VQS_COUNT: 0x8004af80n,
  VFIO_GET_API_VERSION: 0x3b64n,
  VFIO_CHECK_EXTENSION: 0x3b65n,
  VFIO_SET_IOMMU: 0x3b66n,
  VFIO_GROUP_GET_STATUS: 0x3b67n,
  VFIO_GROUP_SET_CONTAINER: 0x3b68n,
  VFIO_GROUP_GET_DEVICE_FD: 0x3b6an,
  VFIO_DEVICE_GET_INFO: 0x3b6bn,
  VFIO_DEVICE_GET_REGION_INFO: 0x3b6cn,
  VFIO_DEVICE_GET_IRQ_INFO: 0x3b6dn,
  VFIO_DEVICE_SET_IRQS: 0x3b6en,
  VFIO_DEVICE_RESET: 0x3b6fn,
  VFIO_IOMMU_GET_INFO: 0x3b70n,
  VFIO_IOMMU_MAP_DMA: 0x3b71n,
  VFIO_IOMMU_UNMAP_DMA: 0x3b72n,
};

const OURS: Record<string, bigint> = {
  VHOST_GET_FEATURES: VHOST.GET_FEATURES,
  VHOST_SET_FEATURES: VHOST.SET_FEATURES,
  VHOST_SET_OWNER: VHOST.SET_OWNER,
  VHOST_SET_VRING_NUM: VHOST.SET_VRING_NUM,
  VHOST_SET_VRING_ADDR: VHOST.SET_VRING_ADDR,
  VHOST_SET_VRING_BASE: VHOST.SET_VRING_BASE,
  VHOST_GET_VRING_BASE: VHOST.GET_VRING_BASE,
  VHOST_SET_VRING_KICK: VHOST.SET_VRING_KICK,
  VHOST_SET_VRING_CALL: VHOST.SET_VRING_CALL,
  VHOST_SET_BACKEND_FEATURES: VHOST.SET_BACKEND_FEATURES,
  VHOST_GET_BACKEND_FEATURES: VHOST.GET_BACKEND_FEATURES,
  VHOST_VDPA_GET_DEVICE_ID: VHOST.VDPA_GET_DEVICE_ID,
  VHOST_VDPA_GET_STATUS: VHOST.VDPA_GET_STATUS,
  VHOST_VDPA_SET_STATUS: VHOST.VDPA_SET_STATUS,
  VHOST_VDPA_GET_CONFIG: VHOST.VDPA_GET_CONFIG,
  VHOST_VDPA_SET_CONFIG: VHOST.VDPA_SET_CONFIG,
  VHOST_VDPA_SET_VRING_ENABLE: VHOST.VDPA_SET_VRING_ENABLE,
  VHOST_VDPA_GET_VRING_NUM: VHOST.VDPA_GET_VRING_NUM,
  VHOST_VDPA_SET_CONFIG_CALL: VHOST.VDPA_SET_CONFIG_CALL,
  VHOST_VDPA_GET_IOVA_RANGE: VHOST.VDPA_GET_IOVA_RANGE,
  VHOST_VDPA_GET_CONFIG_SIZE: VHOST.VDPA_GET_CONFIG_SIZE,
  VHOST_VDPA_GET_VQS_COUNT: VHOST.VDPA_GET_VQS_COUNT,
  VFIO_GET_API_VERSION: VFIO.GET_API_VERSION,
  VFIO_CHECK_EXTENSION: VFIO.CHECK_EXTENSION,
  VFIO_SET_IOMMU: VFIO.SET_IOMMU,
  VFIO_GROUP_GET_STATUS: VFIO.GROUP_GET_STATUS,
  VFIO_GROUP_SET_CONTAINER: VFIO.GROUP_SET_CONTAINER,
  VFIO_GROUP_GET_DEVICE_FD: VFIO.GROUP_GET_DEVICE_FD,
  VFIO_DEVICE_GET_INFO: VFIO.DEVICE_GET_INFO,
  VFIO_DEVICE_GET_REGION_INFO: VFIO.DEVICE_GET_REGION_INFO,
  VFIO_DEVICE_GET_IRQ_INFO: VFIO.DEVICE_GET_IRQ_INFO,
  VFIO_DEVICE_SET_IRQS: VFIO.DEVICE_SET_IRQS,
  VFIO_DEVICE_RESET: VFIO.DEVICE_RESET,
  VFIO_IOMMU_GET_INFO: VFIO.IOMMU_GET_INFO,
  VFIO_IOMMU_MAP_DMA: VFIO.IOMMU_MAP_DMA,
  VFIO_IOMMU_UNMAP_DMA: VFIO.IOMMU_UNMAP_DMA,
};

Deno.test("ioctl encoding: _IO/_IOR/_IOW/_IOWR", () => {
  assert.equal(io(0xaf, 1), 0xaf01n);
  assert.equal(ior(0xaf, 0, 8), 0x8008af00n);
  assert.equal(iow(0xaf, 0x11, 40), 0x4028af11n);
  assert.equal(iowr(0xaf, 0x12, 8), 0xc008af12n);
  assert.throws(() => iow(0xaf, 0, 1 << 14), RangeError);
});

Deno.test("vhost-vdpa and VFIO ioctl numbers match the headers (golden values)", () => {
  for (const [name, value] of Object.entries(GOLDEN_IOCTLS)) {
    assert.equal(OURS[name], value, `${name}: 0x${OURS[name]?.toString(16)} != 0x${value.toString(16)}`);
  }
});

Deno.test("vhost structs: vring state/file/addr, u64, vdpa config", () => {
  assert.equal(hex(vringState(2, 256)), "02 00 00 00 00 01 00 00");
  assert.equal(hex(vringState(1, 0x8000_8000)), "01 00 00 00 00 80 00 80", "packed base: both wrap counters");
  assert.equal(hex(vringState(0, 7)), "00 00 00 00 07 00 00 00", "a vring file carries the eventfd in num");
  assert.equal(
    hex(vringAddr(1, 0x10_0000, 0x10_2000, 0x10_1000)),
    "01 00 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00 20 10 00 00 00 00 00 00 10 10 00 00 00 00 00 00 00 00 00 00 00 00 00",
  );
  assert.equal(hex(u64Arg(VHOST_BACKEND_F_IOTLB_MSG_V2)), "02 00 00 00 00 00 00 00");
  assert.equal(hex(vdpaConfig(0, 4)), "00 00 00 00 04 00 00 00 00 00 00 00");
});

Deno.test("vhost_msg_v2 IOTLB messages: 72 bytes, iotlb at 8, perm at 32, type at 33", () => {
  const m = iotlbMsg(VHOST_IOTLB_UPDATE, 0x20_0000, 0x40_0000, 0x7f12_3456_0000);
  assert.equal(m.byteLength, VHOST_MSG_V2_SIZE);
  assert.equal(
    hex(m.subarray(0, 40)),
    [
      "02 00 00 00", // type VHOST_IOTLB_MSG_V2
      "00 00 00 00", // asid 0
      "00 00 20 00 00 00 00 00", // iova
      "00 00 40 00 00 00 00 00", // size
      "00 00 56 34 12 7f 00 00", // uaddr
      "03 02 00 00 00 00 00 00", // perm RW, type UPDATE, padding
    ].join(" "),
  );
  assert.ok(m.subarray(40).every((b) => b === 0), "the rest of the union is zero");
  const inv = iotlbMsg(VHOST_IOTLB_INVALIDATE, 0x20_0000, 0x40_0000, 0);
  assert.equal(inv[33], 3);
});

Deno.test("VFIO structs: argsz, region info, irq set, DMA map/unmap, IOVA ranges", () => {
  assert.equal(hex(groupStatus()), "08 00 00 00 00 00 00 00");
  const ri = regionInfo(7);
  assert.equal(ri.byteLength, 32);
  assert.equal(hex(ri.subarray(0, 12)), "20 00 00 00 00 00 00 00 07 00 00 00");
  const filled = ri.slice();
  const v = new DataView(filled.buffer);
  v.setUint32(4, 0b111, true);
  v.setBigUint64(16, 0x4000n, true);
  v.setBigUint64(24, 0x70000000000n, true);
  assert.deepEqual(decodeRegionInfo(filled), { flags: 7, size: 0x4000, offset: 0x70000000000 });
  assert.equal(
    hex(irqSet(2, [10, 11])),
    "1c 00 00 00 24 00 00 00 02 00 00 00 00 00 00 00 02 00 00 00 0a 00 00 00 0b 00 00 00",
  );
  assert.equal(
    hex(irqSet(2, [])),
    "14 00 00 00 21 00 00 00 02 00 00 00 00 00 00 00 00 00 00 00",
    "disable: DATA_NONE, count 0",
  );
  assert.equal(
    hex(dmaMap(0x7f00_0000_0000, 0x20_0000, 0x100_0000)),
    "20 00 00 00 03 00 00 00 00 00 00 00 00 7f 00 00 00 00 20 00 00 00 00 00 00 00 00 01 00 00 00 00",
  );
  assert.equal(
    hex(dmaUnmap(0x20_0000, 0x1000)),
    "18 00 00 00 00 00 00 00 00 00 20 00 00 00 00 00 00 10 00 00 00 00 00 00",
  );
  // vfio_iommu_type1_info { argsz, flags (CAPS), u64 iova_pgsizes, cap_offset, pad } + IOVA range cap.
  const info = new Uint8Array(96);
  const iv = new DataView(info.buffer);
  iv.setUint32(0, 96, true);
  iv.setUint32(4, 3, true);
  iv.setUint32(16, 24, true);
  iv.setUint16(24, 1, true); // cap id IOVA_RANGE
  iv.setUint16(26, 1, true); // version
  iv.setUint32(28, 0, true); // next
  iv.setUint32(32, 2, true); // nr_iovas
  iv.setBigUint64(40, 0n, true);
  iv.setBigUint64(48, 0xfedf_ffffn, true);
  iv.setBigUint64(56, 0xfef0_0000n, true);
  iv.setBigUint64(64, 0xffff_ffff_ffffn, true);
  assert.deepEqual(decodeIovaRanges(info), [{ first: 0, last: 0xfedfffff }, {
    first: 0xfef00000,
    last: 0xffffffffffff,
  }]);
  iv.setUint32(4, 1, true);
  assert.equal(decodeIovaRanges(info), undefined, "no CAPS flag, no ranges");
});

/** A config space shaped like QEMU's virtio-blk-pci: MSI-X and the virtio capabilities. */
function pciConfig(): Uint8Array {
  const c = new Uint8Array(256);
  const v = new DataView(c.buffer);
  v.setUint16(0, 0x1af4, true);
  v.setUint16(2, 0x1042, true);
  v.setUint16(6, 0x10, true); // status: capability list
  c[0x34] = 0x98;
  const cap = (at: number, next: number, type: number, bar: number, off: number, len: number, capLen = 16) => {
    c[at] = 0x09;
    c[at + 1] = next;
    c[at + 2] = capLen;
    c[at + 3] = type;
    c[at + 4] = bar;
    v.setUint32(at + 8, off, true);
    v.setUint32(at + 12, len, true);
  };
  c[0x98] = 0x11; // MSI-X
  c[0x99] = 0x84;
  v.setUint16(0x9a, 2, true); // 3 vectors
  cap(0x84, 0x74, VIRTIO_PCI_CAP.COMMON, 4, 0, 0x1000);
  cap(0x74, 0x64, VIRTIO_PCI_CAP.ISR, 4, 0x1000, 0x1000);
  cap(0x64, 0x4c, VIRTIO_PCI_CAP.DEVICE, 4, 0x2000, 0x1000);
  cap(0x4c, 0xb0, VIRTIO_PCI_CAP.NOTIFY, 4, 0x3000, 0x1000, 20);
  v.setUint32(0x4c + 16, 4, true); // notify_off_multiplier
  cap(0xb0, 0x00, VIRTIO_PCI_CAP.PCI, 0, 0, 0, 20);
  return c;
}

Deno.test("PCI capability walk: virtio caps, notify multiplier, MSI-X table size", () => {
  const caps = parsePciCapabilities(pciConfig());
  assert.equal(caps.msixTableSize, 3);
  assert.deepEqual(caps.virtio.get(VIRTIO_PCI_CAP.COMMON), { cfgType: 1, bar: 4, offset: 0, length: 0x1000 });
  assert.deepEqual(caps.virtio.get(VIRTIO_PCI_CAP.NOTIFY), {
    cfgType: 2,
    bar: 4,
    offset: 0x3000,
    length: 0x1000,
    notifyOffMultiplier: 4,
  });
  assert.equal(caps.virtio.get(VIRTIO_PCI_CAP.DEVICE)?.offset, 0x2000);
});

Deno.test("PCI capability walk: a hostile config space is a typed error", () => {
  const bad = (mutate: (c: Uint8Array) => void) => {
    const c = pciConfig();
    mutate(c);
    assert.throws(
      () => parsePciCapabilities(c),
      (e) => e instanceof DeviceProtocolError && e.violation === "bad-pci-config",
    );
  };
  bad((c) => c[0x34] = 0x20); // pointer into the standard header
  bad((c) => c[0xb1] = 0x84); // a loop
  bad((c) => c[0x86] = 200); // capability runs past the config space
  bad((c) => c[0x4e] = 16); // notify capability too short for its multiplier
  assert.throws(() => parsePciCapabilities(new Uint8Array(64)), DeviceProtocolError);
});

Deno.test({
  name: "golden values re-derived live from the installed Linux headers",
  ignore: missing("linux-headers"),
  fn: async () => {
    await using tmp = await tempDir();
    const dir = tmp.path;
    const names = Object.keys(GOLDEN_IOCTLS);
    const src =
      `#include <stdio.h>\n#include <stddef.h>\n#include <linux/vhost.h>\n#include <linux/vfio.h>\nint main(void){\n` +
      names.map((n) => `printf("%s %lx\\n", "${n}", (unsigned long)(${n}));`).join("\n") +
      `\nprintf("msg_v2 %zu %zu %zu %zu\\n", sizeof(struct vhost_msg_v2), offsetof(struct vhost_msg_v2, iotlb), ` +
      `offsetof(struct vhost_msg_v2, iotlb) + offsetof(struct vhost_iotlb_msg, perm), offsetof(struct vhost_msg_v2, iotlb) + offsetof(struct vhost_iotlb_msg, type));\n` +
      `printf("sizes %zu %zu %zu %zu\\n", sizeof(struct vfio_region_info), sizeof(struct vfio_irq_set), sizeof(struct vfio_iommu_type1_dma_map), sizeof(struct vfio_iommu_type1_dma_unmap));\n` +
      `return 0;}\n`;
    await Deno.writeTextFile(`${dir}/g.c`, src);
    const cc = await new Deno.Command("cc", { args: ["-o", `${dir}/g`, `${dir}/g.c`], stderr: "piped" }).output();
    assert.ok(cc.success, new TextDecoder().decode(cc.stderr));
    const out = new TextDecoder().decode((await new Deno.Command(`${dir}/g`).output()).stdout).trim().split("\n");
    for (const line of out) {
      const [name, ...rest] = line.split(" ");
      if (name === "msg_v2") assert.deepEqual(rest.map(Number), [72, 8, 32, 33]);
      else if (name === "sizes") assert.deepEqual(rest.map(Number), [32, 20, 32, 24]);
      else assert.equal(OURS[name], BigInt(`0x${rest[0]}`), name);
    }
  },
});
