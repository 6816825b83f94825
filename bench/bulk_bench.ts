// Bulk throughput: a 1 GiB file on tmpfs streamed into a qemu-storage-daemon
// export (its image on tmpfs too), against `deno task fio --rw write --bs 128k
// --iodepth 16` on the same export in the same run (alternated, 3 rounds),
// with `qemu-img convert -O raw` of the same file beside it for scale (no
// vhost-user involved). `deno run -A bench/bulk_bench.ts [GiB]`
import { fileReadable, VirtioBlk } from "../mod.ts";
import { QemuStorageDaemon } from "../testing.ts";
import { runFio } from "../src/cli/fio.ts";
import { QUICK } from "./_workloads.ts";

const GiB = 2 ** 30;
const size = Number(Deno.args[0] ?? (QUICK ? 0.25 : 1)) * GiB;
const root = await Deno.stat("/dev/shm").then(() => "/dev/shm", () => undefined);
const dir = await Deno.makeTempDir({ dir: root, prefix: "virtio-bulk-" });
const mibs = (bytes: number, ms: number) => bytes / 2 ** 20 / (ms / 1000);
try {
  const src = `${dir}/src.img`;
  {
    using f = await Deno.open(src, { write: true, create: true });
    const chunk = new Uint8Array(16 << 20);
    const u32 = new Uint32Array(chunk.buffer);
    for (let i = 0; i < size / chunk.byteLength; i++) {
      for (let j = 0; j < u32.length; j += 1024) u32[j] = i * u32.length + j;
      await f.write(chunk);
    }
  }
  await Deno.mkdir(`${dir}/qsd`);
  await using qsd = await QemuStorageDaemon.start({ dir: `${dir}/qsd`, size: size + (64 << 20) });
  // One front-end at a time: the streams connect as `deno task copy` does (eventfd: the
  // file's reads get the core instead of a polling loop), fio as `deno task fio` does (poll).
  const connect = (mode: "poll" | "eventfd") =>
    VirtioBlk.connect({ transport: "vhost-user", path: qsd.socketPath, mode });
  {
    // The first pass over a fresh tmpfs image allocates its pages: not measured.
    await using blk = await connect("eventfd");
    await blk.writeFrom(fileReadable(await Deno.open(src)));
  }
  const rows: string[] = [];
  for (let round = 1; round <= 3; round++) {
    let stream: number, pipe: number;
    {
      await using blk = await connect("eventfd");
      // A connection's first pass touches its buffers for the first time, on both sides of the
      // socket (page faults, dear on a VM): a ramp, as fio has one. The second pass is measured.
      await blk.writeFrom(fileReadable(await Deno.open(src)));
      let t0 = performance.now();
      const n = await blk.writeFrom(fileReadable(await Deno.open(src)));
      stream = mibs(n, performance.now() - t0);
      t0 = performance.now();
      await (await Deno.open(src)).readable.pipeTo(blk.writable());
      pipe = mibs(size, performance.now() - t0);
    }
    await using blk = await connect("poll");
    const fio = await runFio(blk, { rw: "write", bs: 128 << 10, iodepth: 16, queues: 1, runtime: 3, rampTime: 1 });
    const fioMiBs = fio.write.bytesPerSecond / 2 ** 20;
    rows.push(
      `round ${round}: writeFrom(fileReadable) ${stream.toFixed(0)} MiB/s (${
        ((stream / fioMiBs) * 100).toFixed(0)
      } % of fio), ` +
        `FsFile.readable.pipeTo(writable) ${pipe.toFixed(0)} MiB/s, fio write 128k QD16 ${fioMiBs.toFixed(0)} MiB/s`,
    );
  }
  for (let round = 1; round <= 2; round++) {
    await Deno.remove(`${dir}/converted.img`).catch(() => {});
    const t0 = performance.now();
    const out = await new Deno.Command("qemu-img", { args: ["convert", "-O", "raw", src, `${dir}/converted.img`] })
      .output();
    if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
    rows.push(
      `qemu-img convert -O raw (fresh image on the same tmpfs), run ${round}: ${
        mibs(size, performance.now() - t0).toFixed(0)
      } MiB/s`,
    );
  }
  console.log(`bulk: ${size / GiB} GiB file on ${root ?? "the temporary folder"} into a qemu-storage-daemon export`);
  for (const r of rows) console.log(`  ${r}`);
} finally {
  await Deno.remove(dir, { recursive: true });
}
