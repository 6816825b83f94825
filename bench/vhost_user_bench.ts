// vhost-user against qemu-storage-daemon, started by this file: 4 KiB random
// reads and writes at queue depth 1 and 32, polling and eventfd modes, and a
// comparison with Deno.FsFile reads of the same image on tmpfs.
// `deno bench -A bench/vhost_user_bench.ts` (part of `deno task bench`)
import { VirtioBlk } from "../mod.ts";
import { QemuStorageDaemon } from "../testing.ts";
import { fsFileReads, killOnUnload, Offsets, promises, qd1, qdN, rig } from "./_workloads.ts";

const QD1_N = 200; // requests per iteration at queue depth 1
const QD32_N = 8192; // requests per iteration at queue depth 32

if (!(await QemuStorageDaemon.available())) {
  throw new Error("qemu-storage-daemon is not installed (apt-get install qemu-system-common)");
}

// Zero-cost back-ends for the driver's own figures: one daemon per connection
// (a vhost-user-blk export serves one front-end at a time).
const nullDaemons = await Promise.all(
  [0, 1, 2].map(() => QemuStorageDaemon.start({ driver: "null-co", size: 1 << 30 })),
);
// A 256 MiB image on tmpfs, exported by a second daemon and read by Deno.FsFile.
const shmDir = await Deno.makeTempDir({ dir: "/dev/shm", prefix: "virtio-bench-" });
const image = `${shmDir}/disk.img`;
{
  const f = await Deno.open(image, { create: true, write: true });
  const chunk = new Uint8Array(1 << 20);
  for (let i = 0; i < 256; i++) {
    chunk.fill(i);
    await f.write(chunk);
  }
  f.close();
}
// O_DIRECT with Linux AIO is the daemon's fastest file path on tmpfs here
// (measured: ~530k IOPS, against ~130k with its default thread pool).
const fileDaemon = await QemuStorageDaemon.start({ driver: "file", image, cacheDirect: true, aio: "native" });
killOnUnload([...nullDaemons, fileDaemon]);
globalThis.addEventListener("unload", () => Deno.removeSync(shmDir, { recursive: true }));

const poll = rig(
  await VirtioBlk.connect({ transport: "vhost-user", path: nullDaemons[0].socketPath, mode: "poll" }),
  32,
);
const eventfd = rig(
  await VirtioBlk.connect({ transport: "vhost-user", path: nullDaemons[1].socketPath, mode: "eventfd" }),
  32,
);
const eventfdNoSpin = rig(
  await VirtioBlk.connect({
    transport: "vhost-user",
    path: nullDaemons[2].socketPath,
    mode: "eventfd",
    spinMicros: 0,
  }),
  32,
);
const onTmpfs = rig(
  await VirtioBlk.connect({ transport: "vhost-user", path: fileDaemon.socketPath, mode: "poll" }),
  32,
);
onTmpfs.offsets = new Offsets(256 << 20);
const files = await Promise.all(Array.from({ length: 32 }, () => Deno.open(image)));
const fileBufs = Array.from({ length: 32 }, () => new Uint8Array(4096));
const fileOffsets = new Offsets(256 << 20);

// Warm up the daemons' iothreads and our JIT before anything is timed.
for (const r of [poll, eventfd, onTmpfs]) await qdN(r, 32, 50_000, false);

for (const write of [false, true]) {
  const rw = write ? "randwrite" : "randread";
  Deno.bench({
    name: `${rw} 4K QD1 poll (x${QD1_N})`,
    group: `${rw} 4K QD1 (null-co)`,
    baseline: true,
    warmup: 50,
    async fn() {
      await qd1(poll, QD1_N, write);
    },
  });
  Deno.bench({
    name: `${rw} 4K QD1 eventfd, 50 µs spin (x${QD1_N})`,
    group: `${rw} 4K QD1 (null-co)`,
    warmup: 50,
    async fn() {
      await qd1(eventfd, QD1_N, write);
    },
  });
  Deno.bench({
    name: `${rw} 4K QD1 eventfd, no spin (x${QD1_N})`,
    group: `${rw} 4K QD1 (null-co)`,
    warmup: 20,
    n: 100,
    async fn() {
      await qd1(eventfdNoSpin, QD1_N, write);
    },
  });
  Deno.bench({
    name: `${rw} 4K QD32 poll (x${QD32_N})`,
    group: `${rw} 4K QD32 (null-co)`,
    baseline: true,
    warmup: 10,
    n: 100,
    async fn() {
      await qdN(poll, 32, QD32_N, write);
    },
  });
  Deno.bench({
    name: `${rw} 4K QD32 eventfd (x${QD32_N})`,
    group: `${rw} 4K QD32 (null-co)`,
    warmup: 10,
    n: 100,
    async fn() {
      await qdN(eventfd, 32, QD32_N, write);
    },
  });
}

Deno.bench({
  name: `Deno.FsFile seek+read, 32 concurrent promises (x${QD32_N})`,
  group: "randread 4K QD32 vs Deno.FsFile (same image on tmpfs)",
  baseline: true,
  warmup: 2,
  n: 10,
  async fn() {
    await fsFileReads(files, fileBufs, fileOffsets, QD32_N);
  },
});
Deno.bench({
  name: `virtio-blk batch API, poll, QD32 (x${QD32_N})`,
  group: "randread 4K QD32 vs Deno.FsFile (same image on tmpfs)",
  warmup: 5,
  n: 50,
  async fn() {
    await qdN(onTmpfs, 32, QD32_N, false);
  },
});
Deno.bench({
  name: `virtio-blk promise API, poll, 32 concurrent promises (x${QD32_N})`,
  group: "randread 4K QD32 vs Deno.FsFile (same image on tmpfs)",
  warmup: 5,
  n: 50,
  async fn() {
    await promises(onTmpfs, 32, QD32_N);
  },
});
