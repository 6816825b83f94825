/**
 * Workload loops shared by the benchmark suites. Each runs a fixed number of
 * requests so that a `Deno.bench` iteration has a known size; the batch
 * loops allocate nothing per request.
 */

import type { VirtioBlk, VirtioBlkQueue, VirtioError } from "../mod.ts";
import type { MockBlkDevice, QemuStorageDaemon } from "../testing.ts";

/**
 * `VIRTIO_BENCH_QUICK=1`, as CI runs `deno task bench` (there the benchmarks
 * must run, not measure): the scripts with long defaults shorten them.
 */
export const QUICK: boolean = Deno.env.get("VIRTIO_BENCH_QUICK") === "1";

/** 4 KiB-block offsets in [0, blocks), from a fixed-seed xorshift. */
export class Offsets {
  #s = 0x2545f491;
  readonly #blocks: number;
  /** @param bytes the size of the area to address */
  constructor(bytes: number) {
    this.#blocks = Math.floor(bytes / 4096);
  }
  /** The next random 4 KiB-aligned offset. */
  next(): number {
    let x = this.#s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#s = x >>> 0;
    return (this.#s % this.#blocks) * 4096;
  }
}

/**
 * SIGKILLs `daemons` and removes their folders when the process unloads:
 * `Deno.bench` has no teardown hook, and a daemon left behind keeps its
 * image and socket.
 *
 * @param daemons the benchmark's daemons
 */
export function killOnUnload(daemons: readonly QemuStorageDaemon[]): void {
  globalThis.addEventListener("unload", () => {
    for (const d of daemons) {
      try {
        Deno.kill(d.pid, "SIGKILL");
      } catch { /* gone */ }
      try {
        Deno.removeSync(d.dir, { recursive: true });
      } catch { /* gone */ }
    }
  });
}

/** Per-device state the loops reuse between iterations. */
export interface Rig {
  blk: VirtioBlk;
  q: VirtioBlkQueue<number>;
  bufs: Uint8Array<ArrayBuffer>[];
  offsets: Offsets;
}

/**
 * Connects the buffers and queue a loop needs.
 *
 * @param blk a connected device
 * @param depth buffers to allocate (the queue depth)
 * @returns the rig
 */
export function rig(blk: VirtioBlk, depth: number): Rig {
  return {
    blk,
    q: blk.queue<number>(0),
    bufs: Array.from({ length: depth }, () => blk.allocBuffer(4096).fill(0x5a)),
    offsets: new Offsets(Math.min(Number(blk.capacity), 2 ** 30)),
  };
}

let failed: VirtioError | undefined;
const onDone = (_slot: number, error: VirtioError | undefined): void => {
  if (error) failed = error;
};

/**
 * `count` requests one after the other (queue depth 1), batch API. In eventfd
 * mode it waits with `q.wait()` (spin, then sleep); in poll mode it spins.
 *
 * @param r the rig
 * @param count requests
 * @param write writes instead of reads
 */
export async function qd1(r: Rig, count: number, write: boolean): Promise<void> {
  const { q, bufs, offsets } = r;
  const eventfd = r.blk.mode === "eventfd";
  for (let i = 0; i < count; i++) {
    if (write) q.write(offsets.next(), bufs[0], 0);
    else q.read(offsets.next(), bufs[0], 0);
    q.submit();
    while (q.poll(onDone) === 0) {
      if (eventfd) await q.wait();
    }
  }
  if (failed) throw failed;
}

/**
 * `count` requests keeping `depth` in flight, batch API.
 *
 * @param r the rig (with `depth` buffers)
 * @param depth requests in flight
 * @param count requests in all
 * @param write writes instead of reads
 */
export async function qdN(r: Rig, depth: number, count: number, write: boolean): Promise<void> {
  const { q, bufs, offsets } = r;
  const eventfd = r.blk.mode === "eventfd";
  let issued = 0, done = 0;
  const reissue = (slot: number, error: VirtioError | undefined): void => {
    if (error) failed = error;
    done++;
    if (issued < count) {
      issued++;
      if (write) q.write(offsets.next(), bufs[slot], slot);
      else q.read(offsets.next(), bufs[slot], slot);
    }
  };
  for (; issued < Math.min(depth, count); issued++) {
    if (write) q.write(offsets.next(), bufs[issued], issued);
    else q.read(offsets.next(), bufs[issued], issued);
  }
  q.submit();
  let turns = 0;
  while (done < count) {
    const n = q.poll(reissue);
    if (n > 0) q.submit();
    else if (eventfd) await q.wait();
    else if (++turns % 4096 === 0) await new Promise((res) => setImmediate(res));
  }
  if (failed) throw failed;
}

/**
 * `count` requests with `depth` concurrent promises (the promise API).
 *
 * @param r the rig
 * @param depth concurrent requests
 * @param count requests in all
 */
export async function promises(r: Rig, depth: number, count: number): Promise<void> {
  let left = count;
  await Promise.all(
    r.bufs.slice(0, depth).map(async (buf) => {
      while (left-- > 0) await r.blk.read(r.offsets.next(), buf);
    }),
  );
}

/**
 * `count` positioned 4 KiB reads with `files.length` concurrent promises on
 * `Deno.FsFile` handles (seek + read each: Deno has no pread).
 *
 * @param files one handle per concurrent reader
 * @param bufs one buffer per reader
 * @param offsets where to read
 * @param count reads in all
 */
export async function fsFileReads(
  files: Deno.FsFile[],
  bufs: Uint8Array[],
  offsets: Offsets,
  count: number,
): Promise<void> {
  let left = count;
  await Promise.all(files.map(async (f, i) => {
    const buf = bufs[i];
    while (left-- > 0) {
      await f.seek(offsets.next(), Deno.SeekMode.Start);
      let got = 0;
      while (got < buf.length) {
        const n = await f.read(buf.subarray(got));
        if (n === null) throw new Error("short read");
        got += n;
      }
    }
  }));
}

const rethrow = (_slot: number, error: VirtioError | undefined): void => {
  if (error) throw error;
};

/**
 * `count` reads on the mock device in manual completion mode, each submitted,
 * echoed (the device's allocation-free completion) and reaped before the next:
 * the driver's own per-request cost at queue depth 1.
 *
 * @param q a queue of a mock-backed device
 * @param device the mock device
 * @param offsets where to read
 * @param buf the buffer
 * @param count requests
 */
export function echoQd1(
  q: VirtioBlkQueue<number>,
  device: MockBlkDevice,
  offsets: Offsets,
  buf: Uint8Array,
  count: number,
): void {
  for (let i = 0; i < count; i++) {
    q.read(offsets.next(), buf, 0);
    q.submit();
    device.echo(0);
    q.poll(rethrow);
  }
}

/**
 * `count` reads on the mock device in batches of `bufs.length`: one submit,
 * one echo and one poll per batch.
 *
 * @param q a queue of a mock-backed device
 * @param device the mock device
 * @param offsets where to read
 * @param bufs one buffer per request of a batch
 * @param count requests (a multiple of the batch size)
 */
export function echoBatches(
  q: VirtioBlkQueue<number>,
  device: MockBlkDevice,
  offsets: Offsets,
  bufs: readonly Uint8Array[],
  count: number,
): void {
  const batch = bufs.length;
  for (let i = 0; i < count; i += batch) {
    for (let j = 0; j < batch; j++) q.read(offsets.next(), bufs[j], j);
    q.submit();
    device.echo(0);
    q.poll(rethrow);
  }
}
