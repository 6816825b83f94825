/**
 * Proves the guest harness: one boot for the VDUSE path (a vhost-vdpa device
 * from qemu-storage-daemon's vduse-blk export) and one for the VFIO path (a
 * virtio-blk-pci function behind an emulated intel-iommu, bound to vfio-pci).
 *
 * ```sh
 * deno run -A tests/guest/smoke.ts            # both boots
 * deno run -A tests/guest/smoke.ts vfio       # only one of them (vduse, vfio)
 * deno run -A tests/guest/smoke.ts --echo     # stream the guests' consoles
 * deno run -A tests/guest/smoke.ts --guest-shim  # also build the shim from source inside the guest (~4 s under TCG)
 * ```
 *
 * Exits 0 when every boot passed (or the guest is unavailable here: then it
 * prints `SKIP: <reason>`), 1 otherwise, with the failing boot's console log.
 *
 * @module
 */

import { describeFailure, type GuestAssets, type GuestResult, isSkip, prepareGuest, runInGuest } from "./harness.ts";

const VDUSE_SCRIPT = String.raw`set -e
wait_for() { # path, tenths of a second
  i=0
  while [ ! -e "$1" ]; do
    i=$((i + 1))
    if [ "$i" -gt "$2" ]; then echo "SMOKE: $1 did not appear"; return 1; fi
    sleep 0.1
  done
}
echo "SMOKE: kernel $(uname -r)"
truncate -s 64M /tmp/disk.img
qemu-storage-daemon --blockdev driver=file,node-name=f,filename=/tmp/disk.img \
  --export type=vduse-blk,id=v0,name=vduse0,node-name=f,writable=on,num-queues=1 &
qsd=$!
wait_for /dev/vduse/vduse0 300
vdpa dev add name vduse0 mgmtdev vduse
wait_for /dev/vhost-vdpa-0 300
vdpa dev show vduse0
ls -l /dev/vhost-vdpa-*
echo "SMOKE: vdpa driver $(basename "$(readlink /sys/bus/vdpa/devices/vduse0/driver)")"
deno --version
two=$(deno eval 'console.log(1+1)')
echo "SMOKE: deno eval says $two"
[ "$two" = 2 ]
printf 'int main(void) { return 42; }\n' > /tmp/cc-probe.c
cc -o /tmp/cc-probe /tmp/cc-probe.c
rc=0; /tmp/cc-probe || rc=$?
echo "SMOKE: cc works (probe exited $rc)"
[ "$rc" = 42 ]
# The shim: the package's prebuilt one, loaded from memory; with --guest-shim also built from source here.
if [ "$GUEST_SHIM" = 1 ]; then
  deno eval "const c = await import('${new URL("../../src/os/compile.ts", import.meta.url).href}');
    console.log('SMOKE: compiled the shim in the guest with ' + await c.compileShim('/tmp/shim-cache/smoke/libvirtio_shim.so'));"
fi
deno eval "const m = await import('${new URL("../../src/os/loader.ts", import.meta.url).href}');
  await m.loadShim();
  console.log('SMOKE: shim loaded: ' + m.shimOrigin());"
vdpa dev del vduse0
kill "$qsd"
wait "$qsd" || true
echo "SMOKE: vduse done"
`;

const VFIO_SCRIPT = String.raw`set -e
bdf=
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat "$d/vendor")" = 0x1af4 ] && [ "$(cat "$d/device")" = 0x1042 ]; then bdf=$(basename "$d"); break; fi
done
if [ -z "$bdf" ]; then echo "SMOKE: no virtio-blk-pci function (1af4:1042)"; exit 20; fi
dev=/sys/bus/pci/devices/$bdf
echo "SMOKE: virtio-blk-pci at $bdf, driver $(basename "$(readlink "$dev/driver")")"
disk=$(ls "$dev"/virtio*/block/ | head -n 1)
if [ -z "$disk" ]; then echo "SMOKE: $bdf has no block device (virtio_blk not loaded?)"; exit 21; fi
echo "SMOKE: its disk is /dev/$disk ($(cat /sys/class/block/$disk/size) sectors)"
# A known pattern at offset 4096, written through virtio-blk before the unbind; the host checks the image.
yes "$SMOKE_PATTERN" | head -c 4096 > /tmp/pattern
dd if=/tmp/pattern of="/dev/$disk" bs=4096 seek=1 count=1 oflag=direct conv=fsync status=none
sync
echo "$bdf" > "$dev/driver/unbind"
echo vfio-pci > "$dev/driver_override"
echo "$bdf" > /sys/bus/pci/drivers_probe
driver=$(basename "$(readlink "$dev/driver")")
group=$(basename "$(readlink "$dev/iommu_group")")
echo "SMOKE: $bdf now bound to $driver, IOMMU group $group"
ls -l /dev/vfio
[ "$driver" = vfio-pci ]
[ -c "/dev/vfio/$group" ]
dmesg | grep -m 2 -E 'DMAR: IOMMU enabled|DMAR: Host address width' || true
echo "SMOKE: vfio done"
`;

interface Outcome {
  name: string;
  result?: GuestResult;
  problems: string[];
}

function fail(outcome: Outcome, msg: string): void {
  outcome.problems.push(msg);
}

async function vduse(assets: GuestAssets, echo: boolean, guestShim: boolean): Promise<Outcome> {
  const outcome: Outcome = { name: "vduse", problems: [] };
  const result = await runInGuest(assets, {
    name: "vduse",
    script: VDUSE_SCRIPT,
    modules: ["vduse", "vhost_vdpa"],
    env: { GUEST_SHIM: guestShim ? "1" : "0" },
    timeoutMs: 60_000,
    echo,
  });
  outcome.result = result;
  if (!result.ok) fail(outcome, describeFailure(result, "the VDUSE boot", Infinity));
  else {
    if (!/\/dev\/vhost-vdpa-0/.test(result.log)) fail(outcome, "no /dev/vhost-vdpa-0 in the listing");
    if (!/SMOKE: deno eval says 2/.test(result.log)) fail(outcome, "deno eval did not print 2");
    if (!/SMOKE: shim loaded: prebuilt/.test(result.log)) fail(outcome, "the prebuilt shim did not load in the guest");
  }
  return outcome;
}

async function vfio(assets: GuestAssets, echo: boolean): Promise<Outcome> {
  const outcome: Outcome = { name: "vfio", problems: [] };
  const pattern = `virtio-deno-guest-smoke-${crypto.randomUUID()}`;
  const image = await Deno.makeTempFile({ prefix: "virtio-guest-vfio-", suffix: ".img" });
  try {
    await Deno.truncate(image, 64 << 20);
    const result = await runInGuest(assets, {
      name: "vfio",
      script: VFIO_SCRIPT,
      modules: ["virtio_blk", "vfio-pci"], // Debian builds virtio_blk as a module
      qemuArgs: [
        ...["-machine", "q35", "-device", "intel-iommu"],
        ...["-drive", `file=${image},if=none,id=d0,format=raw`],
        ...["-device", "virtio-blk-pci,drive=d0,disable-legacy=on,iommu_platform=on"],
      ],
      append: "intel_iommu=on",
      env: { SMOKE_PATTERN: pattern },
      timeoutMs: 60_000,
      echo,
    });
    outcome.result = result;
    if (!result.ok) fail(outcome, describeFailure(result, "the VFIO boot", Infinity));
    else {
      if (!/bound to vfio-pci, IOMMU group \d+/.test(result.log)) fail(outcome, "no vfio-pci binding reported");
      // the guest's write through virtio-blk must be in the host's image file
      const f = await Deno.open(image);
      const got = new Uint8Array(4096);
      try {
        await f.seek(4096, Deno.SeekMode.Start);
        let n = 0;
        while (n < got.length) {
          const r = await f.read(got.subarray(n));
          if (r === null) break;
          n += r;
        }
      } finally {
        f.close();
      }
      const want = new TextEncoder().encode(`${pattern}\n`.repeat(Math.ceil(4096 / (pattern.length + 1))))
        .subarray(0, 4096);
      if (got.every((b, i) => b === want[i])) console.error("[smoke] host image holds the guest's pattern at 4096");
      else {
        fail(
          outcome,
          `the host image does not hold the guest's pattern at offset 4096; found ${
            JSON.stringify(new TextDecoder().decode(got.subarray(0, 80)))
          }\n${describeFailure(result, "the VFIO boot", Infinity)}`,
        );
      }
    }
  } finally {
    await Deno.remove(image).catch(() => {});
  }
  return outcome;
}

async function main(): Promise<number> {
  const echo = Deno.args.includes("--echo");
  const only = Deno.args.filter((a) => !a.startsWith("--"));
  const t0 = performance.now();
  const assets = await prepareGuest();
  const prepMs = performance.now() - t0;
  if (isSkip(assets)) {
    console.log(`SKIP: ${assets.skip}`);
    return 0;
  }
  const outcomes: Outcome[] = [];
  if (only.length === 0 || only.includes("vduse")) {
    outcomes.push(await vduse(assets, echo, Deno.args.includes("--guest-shim")));
  }
  if (only.length === 0 || only.includes("vfio")) outcomes.push(await vfio(assets, echo));

  console.log(`\nguest ${assets.kernelVersion}, accelerator ${assets.accel}`);
  console.log(`  prepare: ${(prepMs / 1000).toFixed(1)} s`);
  let failed = false;
  for (const o of outcomes) {
    const r = o.result;
    const status = o.problems.length === 0 ? "ok" : "FAILED";
    console.log(`  ${o.name}: ${status}, boot ${r ? (r.durationMs / 1000).toFixed(1) : "?"} s`);
    for (const line of (r?.log ?? "").split("\n")) {
      if (/^SMOKE/.test(line)) console.log(`    ${line}`);
    }
    for (const p of o.problems) {
      failed = true;
      console.log(`\n${o.name} FAILED: ${p}\n`);
    }
  }
  console.log(`  total: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return failed ? 1 : 0;
}

Deno.exit(await main());
