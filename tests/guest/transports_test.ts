// vhost-vdpa and VFIO virtio-pci, each proven against a real device inside a
// QEMU guest (`deno task test:guest`): a VDUSE device exported by
// qemu-storage-daemon on /dev/vhost-vdpa-0, and QEMU's virtio-blk-pci behind an
// emulated intel-iommu bound to vfio-pci (split, then packed=on). Each runs the
// request matrix in poll and eventfd modes; the image is then compared, byte
// for byte, with the model the guest program kept.
import assert from "node:assert/strict";
import { awaitedLater, firstDifference } from "../_support.ts";
import { BLOCK, holdsBlock } from "../_block_pattern.ts";
import { describeFailure, type GuestAssets, isSkip, prepareGuest, runInGuest } from "./harness.ts";
import { qmpExecute } from "../../testing.ts";

const assets = await prepareGuest();
const skip = isSkip(assets) ? assets.skip : undefined;
if (skip) console.warn(`\n*** guest tests SKIPPED: ${skip} ***\n`);

const ROOT = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
const SIZE = 16 << 20;

/**
 * Runs the matrix program for each mode, chaining the model through the shared
 * folder: poll without EVENT_IDX, then eventfd with it, so both notification
 * schemes are exercised for every ring format.
 */
function matrixRuns(transport: string, target: string, ring: string): string {
  const runs = [{ mode: "poll", eventIdx: "off" }, { mode: "eventfd", eventIdx: "on" }];
  return runs.map(({ mode, eventIdx }, i) => {
    const modelIn = i === 0 ? "" : `--model-in "$GUEST_SHARE/model-${i - 1}.bin"`;
    return `deno run -A "$GUEST_SHARE/project/tests/guest/matrix_main.ts" --transport ${transport} ${target} ` +
      `--ring ${ring} --mode ${mode} --event-idx ${eventIdx} --writes 120 --seed ${i + 1} ` +
      `${modelIn} --model-out "$GUEST_SHARE/model-${i}.bin"`;
  }).join("\n");
}

/**
 * Copies the project's code into the share: the guest mounts a tmpfs over /tmp,
 * so a checkout under /tmp (as in a CI clone) would not be visible there.
 */
async function copyProject(share: string): Promise<void> {
  const copy = async (from: string, to: string) => {
    const info = await Deno.stat(from);
    if (info.isDirectory) {
      await Deno.mkdir(to, { recursive: true });
      for await (const e of Deno.readDir(from)) await copy(`${from}/${e.name}`, `${to}/${e.name}`);
    } else {
      await Deno.copyFile(from, to);
    }
  };
  await Deno.mkdir(`${share}/project`);
  for (const part of ["mod.ts", "testing.ts", "advanced.ts", "deno.json", "src", "tests"]) {
    await copy(`${ROOT}/${part}`, `${share}/project/${part}`);
  }
}

/** After the VFIO matrix: two live resizes from the host's monitor, with a config vector, then polling config_generation. */
const RESIZE_VFIO =
  [["eventfd", 2 * SIZE], ["poll", 3 * SIZE]].map(([mode, to]) =>
    `deno run -A "$GUEST_SHARE/project/tests/guest/resize_main.ts" --transport vfio-pci --device "$bdf" --mode ${mode} --to ${to}`
  ).join("\n") + "\n";

const WAIT_FOR = String
  .raw`wait_for() { i=0; while [ ! -e "$1" ]; do i=$((i + 1)); [ "$i" -gt 300 ] && { echo "GUEST: $1 did not appear"; return 1; }; sleep 0.1; done; }`;

/** Where the Workers' test writes (beyond the matrix's 16 MiB, clear of the resizes' last blocks), and how much. */
const WORKER_FIRST_BLOCK = SIZE / BLOCK, WORKER_BLOCKS = 128;

/** Queues in Workers: two Workers and the guest's main thread on a 3-queue device (tests/guest/workers_main.ts). */
function workersRun(transport: string, target: string, mode: string): string {
  return `deno run -A "$GUEST_SHARE/project/tests/guest/workers_main.ts" --transport ${transport} ${target} ` +
    `--mode ${mode} --blocks ${WORKER_BLOCKS} --writes 200 --first-block ${WORKER_FIRST_BLOCK} --gens-out "$GUEST_SHARE/gens.bin"`;
}

/** The Workers' blocks in the image, read on the host: each holds the last write the guest made to it. */
async function checkWorkerBlocks(image: string, gensFile: string): Promise<void> {
  const [img, raw] = await Promise.all([Deno.readFile(image), Deno.readFile(gensFile)]);
  const gens = new Uint32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
  assert.equal(gens.length, 3 * WORKER_BLOCKS);
  gens.forEach((gen, i) => {
    const at = (WORKER_FIRST_BLOCK + i) * BLOCK;
    assert.ok(holdsBlock(img.subarray(at, at + BLOCK), WORKER_FIRST_BLOCK + i, gen), `block ${WORKER_FIRST_BLOCK + i}`);
  });
}

/** Shows the guest's resize reports (how the change came, how long it took). */
function printResizes(log: string): void {
  for (const line of log.split("\n")) if (/^(RESIZE|WORKERS) /.test(line)) console.log(`  ${line.trim()}`);
}

/** Compares the image's first bytes (a resize may have grown it since) with the model. */
async function compare(image: string, model: string): Promise<void> {
  const [whole, b] = await Promise.all([Deno.readFile(image), Deno.readFile(model)]);
  assert.ok(whole.byteLength >= b.byteLength, "the image is at least as large as the model");
  const a = whole.subarray(0, b.byteLength);
  const diff = firstDifference(a, b);
  assert.equal(diff, -1, `the image differs from the model at byte ${diff}`);
}

async function withShare(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "virtio-guest-share-" });
  await copyProject(dir);
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name:
    "guest: vhost-vdpa on a VDUSE device (qemu-storage-daemon), request matrix in poll (no EVENT_IDX) and eventfd (EVENT_IDX) modes, then a live resize",
  ignore: skip !== undefined,
  fn: async () => {
    await withShare(async (share) => {
      const script = String.raw`set -e
${WAIT_FOR}
truncate -s ${SIZE} /tmp/disk.img
qemu-storage-daemon --blockdev driver=file,node-name=f,filename=/tmp/disk.img,discard=unmap \
  --export type=vduse-blk,id=v0,name=vduse0,node-name=f,writable=on,num-queues=3 \
  --chardev socket,id=m,path=/tmp/qmp.sock,server=on,wait=off --monitor chardev=m,mode=control &
qsd=$!
wait_for /dev/vduse/vduse0
vdpa dev add name vduse0 mgmtdev vduse
wait_for /dev/vhost-vdpa-0
echo "GUEST: /dev/vhost-vdpa-0 ready"
${matrixRuns("vhost-vdpa", "--path /dev/vhost-vdpa-0", "split")}
head -c ${SIZE} /tmp/disk.img > "$GUEST_SHARE/disk.img"
echo "GUEST: image copied"
# Live resize: qemu-storage-daemon's vduse-blk export updates the VDUSE config and injects a config interrupt.
deno run -A "$GUEST_SHARE/project/tests/guest/resize_main.ts" --transport vhost-vdpa --path /dev/vhost-vdpa-0 \
  --mode eventfd --to ${2 * SIZE} --ready-file /tmp/resize-ready &
resizer=$!
wait_for /tmp/resize-ready
deno eval "import { qmpExecute } from '$GUEST_SHARE/project/testing.ts'; \
  await qmpExecute('/tmp/qmp.sock', 'block_resize', { 'node-name': 'f', size: ${2 * SIZE} });"
wait "$resizer"
${workersRun("vhost-vdpa", "--path /dev/vhost-vdpa-0", "poll")}
cp /tmp/disk.img "$GUEST_SHARE/disk-workers.img"
vdpa dev del vduse0
kill "$qsd"; wait "$qsd" || true
`;
      const r = await runInGuest(assets as GuestAssets, {
        name: "vduse",
        script,
        modules: ["vduse", "vhost_vdpa"],
        shareDir: share,
        timeoutMs: 240_000,
      });
      assert.ok(r.ok, describeFailure(r, "the VDUSE matrix"));
      assert.equal((r.log.match(/MATRIX vhost-vdpa split \w+: OK/g) ?? []).length, 2, describeFailure(r, "both modes"));
      assert.match(
        r.log,
        new RegExp(`RESIZE vhost-vdpa eventfd: OK ${SIZE} -> ${2 * SIZE} via interrupt`),
        describeFailure(r, "the live resize"),
      );
      assert.equal(
        (r.log.match(/WORKERS vhost-vdpa poll: OK/g) ?? []).length,
        2,
        describeFailure(r, "queues in Workers"),
      );
      printResizes(r.log);
      await compare(`${share}/disk.img`, `${share}/model-1.bin`);
      await checkWorkerBlocks(`${share}/disk-workers.img`, `${share}/gens.bin`);
    });
  },
});

for (const ring of ["split", "packed"]) {
  Deno.test({
    name: `guest: vfio-pci on QEMU's virtio-blk-pci (${ring}${
      ring === "packed" ? ", packed=on" : ""
    }), request matrix in poll (no EVENT_IDX) and eventfd (EVENT_IDX) modes${
      ring === "split" ? ", then live resizes (config vector, then config_generation)" : ""
    }`,
    ignore: skip !== undefined,
    fn: async () => {
      await withShare(async (share) => {
        const image = `${share}/host.img`;
        await Deno.writeFile(image, new Uint8Array(SIZE));
        const script = String.raw`set -e
bdf=
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat "$d/vendor")" = 0x1af4 ] && [ "$(cat "$d/device")" = 0x1042 ]; then bdf=$(basename "$d"); break; fi
done
[ -n "$bdf" ] || { echo "GUEST: no virtio-blk-pci function"; exit 20; }
dev=/sys/bus/pci/devices/$bdf
if [ -e "$dev/driver" ]; then echo "$bdf" > "$dev/driver/unbind"; fi
echo vfio-pci > "$dev/driver_override"
echo "$bdf" > /sys/bus/pci/drivers_probe
group=$(basename "$(readlink "$dev/iommu_group")")
i=0; while [ ! -e "/dev/vfio/$group" ]; do i=$((i + 1)); [ "$i" -gt 100 ] && { echo "GUEST: no /dev/vfio/$group"; exit 21; }; sleep 0.1; done
echo "GUEST: $bdf bound to $(basename "$(readlink "$dev/driver")"), IOMMU group $(basename "$(readlink "$dev/iommu_group")")"
${matrixRuns("vfio-pci", '--device "$bdf"', ring)}
${ring === "split" ? RESIZE_VFIO + workersRun("vfio-pci", '--device "$bdf"', "eventfd") : ""}`;
        const qmp = `${share}/qmp.sock`;
        const resizes: Promise<unknown>[] = [];
        const r = await runInGuest(assets as GuestAssets, {
          name: `vfio-${ring}`,
          // The guest's driver is connected: grow the drive from the host's monitor.
          onLine: (line) => {
            const m = /^RESIZE-READY (\d+)$/.exec(line.trim());
            if (m) resizes.push(awaitedLater(qmpExecute(qmp, "block_resize", { device: "d0", size: Number(m[1]) })));
          },
          script,
          modules: ["vfio-pci"],
          qemuArgs: [
            ...["-machine", "q35", "-device", "intel-iommu"],
            ...["-qmp", `unix:${qmp},server=on,wait=off`],
            ...["-drive", `file=${image},if=none,id=d0,format=raw,cache=writethrough,discard=unmap`],
            ...[
              "-device",
              `virtio-blk-pci,drive=d0,disable-legacy=on,iommu_platform=on,num-queues=3${
                ring === "packed" ? ",packed=on" : ""
              }`,
            ],
          ],
          append: "intel_iommu=on",
          shareDir: share,
          timeoutMs: 240_000,
        });
        assert.ok(r.ok, describeFailure(r, `the VFIO ${ring} matrix`));
        assert.equal(
          (r.log.match(new RegExp(`MATRIX vfio-pci ${ring} \\w+: OK`, "g")) ?? []).length,
          2,
          describeFailure(r, "both modes"),
        );
        await Promise.all(resizes);
        // The guest has powered off: the host's image is the independent reader.
        await compare(image, `${share}/model-1.bin`);
        if (ring === "split") {
          assert.equal(resizes.length, 2, describeFailure(r, "two resizes asked for"));
          assert.match(r.log, new RegExp(`RESIZE vfio-pci eventfd: OK ${SIZE} -> ${2 * SIZE} via interrupt`));
          assert.match(r.log, new RegExp(`RESIZE vfio-pci poll: OK ${2 * SIZE} -> ${3 * SIZE} via generation`));
          assert.equal(
            (r.log.match(/WORKERS vfio-pci eventfd: OK/g) ?? []).length,
            2,
            describeFailure(r, "queues in Workers"),
          );
          printResizes(r.log);
          await checkWorkerBlocks(image, `${share}/gens.bin`);
          const img = await Deno.readFile(image);
          assert.equal(img.byteLength, 3 * SIZE);
          for (const end of [2 * SIZE, 3 * SIZE]) {
            const tail = img.subarray(end - 4096, end);
            assert.ok(tail.every((b, i) => b === ((i * 13 + 5) & 0xff)), `the 4 KiB written at ${end - 4096}`);
          }
        }
      });
    },
  });
}
