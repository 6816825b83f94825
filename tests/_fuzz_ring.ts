/**
 * A deterministic fuzzer for the completion path of both ring formats. A
 * seeded PRNG drives the driver (adding chains, direct or indirect, and
 * reaping) and a hostile device that completes chains properly, writes used
 * elements with arbitrary ids and lengths, moves its used position
 * arbitrarily, and scribbles over the descriptor ring (flags included, which
 * in a packed ring forges used descriptors). After every step the driver's
 * private bookkeeping must be consistent, and every completion it accepted
 * must be one that was in flight with a plausible length.
 */

import { DeviceProtocolError } from "../src/errors.ts";
import { MockDeviceError } from "../src/testing/mock/device_ring.ts";
import type { VirtqueueFormat } from "../src/virtqueue/layout.ts";
import { makeRing, type TestRing } from "./_rings.ts";
import { Rng } from "./_support.ts";

/** What a fuzz run did. */
export interface FuzzStats {
  seed: number;
  format: VirtqueueFormat;
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
 * @param seed PRNG seed (the whole run is a function of it and the format)
 * @param iterations steps
 * @param format ring format
 * @returns counts of what happened
 * @throws Error at the first invariant violation, naming the seed and step
 */
export function fuzzRing(seed: number, iterations: number, format: VirtqueueFormat = "split"): FuzzStats {
  const rng = new Rng(seed);
  const stats: FuzzStats = {
    seed,
    format,
    iterations,
    added: 0,
    accepted: 0,
    hostileWrites: 0,
    violations: {},
    resets: 0,
  };
  const fresh = (): TestRing => {
    const size = SIZES[rng.int(0, SIZES.length - 1)];
    const indirect = rng.int(0, 1) ? Math.min(size, 8) : 0;
    return makeRing(format, size, {
      eventIdx: rng.int(0, 1) === 1,
      indirect: size >= 2 ? indirect : 0,
      strictUsedLength: rng.int(0, 1) === 1,
    });
  };
  let r = fresh();
  // The model: chains in flight and their device-writable bytes; what the device holds.
  let writable = new Map<number, number>();
  let held: { id: number; ringLen: number }[] = [];

  const fail = (step: number, what: string): never => {
    throw new Error(`fuzz invariant broken (${format}, seed ${seed}, step ${step}): ${what}`);
  };
  // Per-seed hostility, so that some runs go deep into normal operation
  // (wrap-around, recycling) and others are mostly attack.
  const hostility = [0, 1, 5, 25][seed % 4];

  for (let step = 0; step < iterations; step++) {
    const vq = r.vq, q = r.layout.queueSize;
    // 0–59 normal driver/device actions, 60–89 hostile device writes, 90–99 reaping.
    const action = rng.int(0, 99) < hostility
      ? 60 + rng.int(0, 29)
      : rng.int(0, 69) < 60
      ? rng.int(0, 59)
      : 90 + rng.int(0, 9);
    try {
      if (action < 35) {
        // Driver: a chain of 1–6 descriptors, the last `w` device-writable.
        const n = rng.int(1, 6);
        const w = rng.int(0, n);
        let bytes = 0;
        const id = vq.beginChain(n);
        if (id >= 0) {
          for (let k = 0; k < n; k++) {
            const len = rng.int(1, 65536);
            const fromDevice = k >= n - w;
            if (fromDevice) bytes += len;
            vq.pushDescAt(r.data, rng.int(0, 1 << 20) * 16, len, fromDevice);
          }
          vq.endChain();
          if (writable.has(id)) fail(step, `chain id ${id} handed out while in flight`);
          writable.set(id, bytes);
          stats.added++;
        }
      } else if (action < 60) {
        // Device: take what is available, complete one properly.
        try {
          for (let c = r.dev.take(); c; c = r.dev.take()) held.push(c);
        } catch (e) {
          if (!(e instanceof MockDeviceError)) throw e; // the device got confused by its own scribbles
        }
        if (held.length > 0) {
          const c = held.splice(rng.int(0, held.length - 1), 1)[0];
          r.dev.pushUsed(c.id, rng.int(0, writable.get(c.id) ?? 0), c.ringLen);
        }
      } else if (action < 72) {
        // Device: an arbitrary used element.
        const id = rng.int(0, 3) === 0 ? rng.next() : rng.int(0, 2 * q);
        const len = rng.int(0, 3) === 0 ? rng.next() : rng.int(0, 70000);
        r.dev.pushUsed(id, len, rng.int(1, 3));
        stats.hostileWrites++;
      } else if (action < 78) {
        // Device: move the used position far.
        r.dev.pushUsed(rng.int(0, q), rng.int(0, 4096), rng.int(1, 3 * q));
        stats.hostileWrites++;
      } else if (action < 90) {
        // Device: scribble over descriptors (flags too).
        for (let k = rng.int(1, 4); k > 0; k--) {
          r.dev.rewriteDesc(rng.int(0, q - 1), {
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
          held = held.filter((h) => h.id !== id);
          stats.accepted++;
        }
      }
    } catch (e) {
      if (!(e instanceof DeviceProtocolError)) throw e;
      stats.violations[e.violation] = (stats.violations[e.violation] ?? 0) + 1;
      // The queue is failed: every later call must throw the same error.
      let again: unknown, refused: unknown;
      try {
        vq.nextUsed();
      } catch (e2) {
        again = e2;
      }
      try {
        vq.beginChain(1);
      } catch (e3) {
        refused = e3;
      }
      if (again !== e || refused !== e) fail(step, "a failed queue did not keep failing with the same error");
      vq.assertConsistent();
      r = fresh();
      writable = new Map();
      held = [];
      stats.resets++;
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
