/**
 * Lost-wakeup stress for eventfd mode: bursts of requests at queue depths
 * from 1 to 128, separated by idle gaps long enough for the driver to go to
 * sleep, through both the batch API (`wait()`) and the promise API. Every
 * request must complete; a lost wake-up shows up as a hang, which the
 * deadline turns into a failure.
 */

import type { VirtioBlk } from "../src/blk/virtio_blk.ts";
import type { VirtioError } from "../src/errors.ts";
import { Rng } from "./_support.ts";

/** What a stress run did. */
export interface StressResult {
  bursts: number;
  requests: number;
  maxDepth: number;
  sleeps: number;
  seconds: number;
}

/**
 * Runs bursts for `seconds`.
 *
 * @param blk a device connected in eventfd mode (queue size ≥ 512: 128 requests of 3 descriptors)
 * @param seconds how long
 * @param seed PRNG seed
 * @returns counts
 * @throws Error when a burst does not complete within 10 s (a lost wake-up)
 */
export async function stressBursts(blk: VirtioBlk, seconds: number, seed = 1): Promise<StressResult> {
  const rng = new Rng(seed);
  const q = blk.queue<number>(0);
  const bufs = Array.from({ length: 128 }, () => blk.allocBuffer(4096));
  const blocks = Math.floor(Math.min(Number(blk.capacity), 1 << 30) / 4096);
  const res: StressResult = { bursts: 0, requests: 0, maxDepth: 0, sleeps: 0, seconds: 0 };
  const t0 = performance.now();
  let error: VirtioError | undefined;
  const onDone = (_slot: number, e: VirtioError | undefined) => {
    if (e) error = e;
    res.requests++;
  };
  while (performance.now() - t0 < seconds * 1000) {
    const depth = [1, 2, 4, 8, 16, 32, 64, 128][rng.int(0, 7)];
    res.maxDepth = Math.max(res.maxDepth, depth);
    const deadline = performance.now() + 10_000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const watchdog = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`burst ${res.bursts} (depth ${depth}): lost wake-up`)), 10_000);
    });
    watchdog.catch(() => {}); // observed through the races below
    try {
      if (rng.int(0, 1) === 0) {
        for (let i = 0; i < depth; i++) q.read(rng.int(0, blocks - 1) * 4096, bufs[i], i);
        q.submit();
        let done = 0;
        while (done < depth) {
          const n = q.poll(onDone);
          done += n;
          if (n === 0) await Promise.race([q.wait(), watchdog]);
          if (performance.now() > deadline) throw new Error("burst did not complete");
        }
      } else {
        const before = res.requests;
        await Promise.race([
          Promise.all(
            bufs.slice(0, depth).map((b) => blk.read(rng.int(0, blocks - 1) * 4096, b).then(() => res.requests++)),
          ),
          watchdog,
        ]);
        if (res.requests - before !== depth) throw new Error("a promise settled twice or not at all");
      }
    } finally {
      clearTimeout(timer);
    }
    if (error) throw error;
    res.bursts++;
    // An idle gap: long enough for the driver to give up spinning and sleep.
    const gap = rng.int(0, 3);
    if (gap > 0) await new Promise((r) => setTimeout(r, gap === 3 ? 2 : 0));
  }
  for (const b of bufs) blk.freeBuffer(b);
  res.seconds = (performance.now() - t0) / 1000;
  res.sleeps = blk.completionSleeps;
  return res;
}
