/**
 * A deterministic fuzzer for the split ring's completion path. A seeded
 * PRNG drives the driver (adding chains, reaping) and a hostile device that
 * completes chains properly, writes arbitrary used elements, jumps the used
 * index and scribbles over the descriptor table. After every step the
 * driver's private bookkeeping must be consistent, and every completion it
 * accepted must be one that was really in flight with a plausible length.
 */

import { DeviceProtocolError } from "../src/errors.ts";
import { RingDevice } from "./_ring_device.ts";
import { Rng } from "./_support.ts";

/** What a fuzz run did. */
export interface FuzzStats {
  seed: number;
  iterations: number;
  added: number;
  accepted: number;
  hostileWrites: number;
  violations: Record<string, number>;
  resets: number;
}

const SIZES = [1, 2, 4, 8, 16, 64];

/**
 * Runs the fuzzer.
 *
 * @param seed PRNG seed (the whole run is a function of it)
 * @param iterations steps
 * @returns counts of what happened
 * @throws Error at the first invariant violation, naming the seed and step
 */
export function fuzzSplitRing(seed: number, iterations: number): FuzzStats {
  const rng = new Rng(seed);
  const stats: FuzzStats = { seed, iterations, added: 0, accepted: 0, hostileWrites: 0, violations: {}, resets: 0 };
  let dev = new RingDevice(SIZES[rng.int(0, SIZES.length - 1)]);
  // The model: chains in flight (by head) and their device-writable bytes.
  let writable = new Map<number, number>();
  let taken: number[] = []; // heads the device has taken from the avail ring and not completed

  const fail = (step: number, what: string): never => {
    throw new Error(`fuzz invariant broken (seed ${seed}, step ${step}): ${what}`);
  };
  const reset = () => {
    dev = new RingDevice(SIZES[rng.int(0, SIZES.length - 1)]);
    writable = new Map();
    taken = [];
    stats.resets++;
  };

  // Per-seed hostility, so that some runs go deep into normal operation
  // (wrap-around, recycling) and others are mostly attack.
  const hostility = [0, 1, 5, 25][seed % 4];
  for (let step = 0; step < iterations; step++) {
    const vq = dev.vq;
    const q = dev.q;
    // 0–59 normal driver/device actions, 60–89 hostile device writes, 90–99 reaping.
    const r = rng.int(0, 99);
    const action = r < hostility ? 60 + rng.int(0, 29) : rng.int(0, 99 - 30) < 60 ? rng.int(0, 59) : 90 + rng.int(0, 9);
    try {
      if (action < 35) {
        // Driver: add a chain of 1–6 descriptors if it fits.
        const n = rng.int(1, Math.min(6, q));
        const w = rng.int(0, n);
        let bytes = 0;
        const id = vq.beginChain(n);
        if (id >= 0) {
          for (let k = 0; k < n; k++) {
            const len = rng.int(1, 65536);
            const fromDevice = k >= n - w;
            if (fromDevice) bytes += len;
            vq.pushDesc(0x1_0000_0000 + rng.int(0, 1 << 20) * 16, len, fromDevice);
          }
          vq.endChain();
          if (writable.has(id)) fail(step, `chain id ${id} handed out while in flight`);
          writable.set(id, bytes);
          stats.added++;
        }
      } else if (action < 60) {
        // Device: take what is available, complete one properly.
        for (let h = dev.takeAvail(); h >= 0; h = dev.takeAvail()) taken.push(h);
        if (taken.length > 0) {
          const h = taken.splice(rng.int(0, taken.length - 1), 1)[0];
          dev.pushUsed(h, rng.int(0, writable.get(h) ?? 0));
        }
      } else if (action < 72) {
        // Device: an arbitrary used element.
        const id = rng.int(0, 3) === 0 ? rng.next() : rng.int(0, 2 * q);
        const len = rng.int(0, 3) === 0 ? rng.next() : rng.int(0, 70000);
        dev.pushUsed(id, len);
        stats.hostileWrites++;
      } else if (action < 78) {
        // Device: move the used index anywhere.
        dev.usedIdx = rng.int(0, 1) ? rng.int(0, 0xffff) : (dev.usedIdx + rng.int(1, 3 * q)) & 0xffff;
        dev.setUsedIdx(dev.usedIdx);
        stats.hostileWrites++;
      } else if (action < 90) {
        // Device: scribble over descriptors, next links and flags included.
        for (let k = rng.int(1, 4); k > 0; k--) {
          dev.scribbleDesc(rng.int(0, q - 1), {
            addr: rng.next() * 4096,
            len: rng.next(),
            flags: rng.int(0, 0xffff),
            next: rng.int(0, 0xffff),
          });
        }
        stats.hostileWrites++;
      } else {
        // Driver: reap.
        for (let id = vq.nextUsed(); id >= 0; id = vq.nextUsed()) {
          const w = writable.get(id);
          if (w === undefined) return fail(step, `accepted id ${id}, which was not in flight`);
          if (vq.lastUsedLen > w) fail(step, `accepted length ${vq.lastUsedLen} above ${w} writable bytes`);
          writable.delete(id);
          taken = taken.filter((h) => h !== id);
          stats.accepted++;
        }
      }
    } catch (e) {
      if (!(e instanceof DeviceProtocolError)) throw e;
      stats.violations[e.violation] = (stats.violations[e.violation] ?? 0) + 1;
      // The queue is failed: every later call must throw the same error.
      let again: unknown;
      try {
        vq.nextUsed();
      } catch (e2) {
        again = e2;
      }
      if (again !== e) fail(step, "a failed queue did not keep failing with the same error");
      let refused: unknown;
      try {
        vq.beginChain(1);
      } catch (e3) {
        refused = e3;
      }
      if (refused !== e) fail(step, "a failed queue did not refuse a new chain with the same error");
      vq.assertConsistent();
      reset();
      continue;
    }
    try {
      vq.assertConsistent();
    } catch (e) {
      fail(step, (e as Error).message);
    }
    // The driver's chains in flight are exactly the model's.
    let inFlight = 0;
    vq.forEachInFlight((id) => {
      inFlight++;
      if (!writable.has(id)) fail(step, `driver has ${id} in flight, the model does not`);
    });
    if (inFlight !== writable.size) fail(step, `driver has ${inFlight} in flight, the model ${writable.size}`);
  }
  return stats;
}
