/**
 * Runs one case on a session: places every buffer (with guards), writes
 * each phase's chains with the raw ring writer, makes the whole batch
 * available at once, kicks, and waits for the completions — a legal phase
 * up to the timeout, an illegal one for a short grace period — reading the
 * used ring with every id and length checked. Then it copies out what the
 * device wrote (status bytes, read data) and checks the whole of the shared
 * memory. What it all means is for `check.ts` to say.
 *
 * @module
 */

import {
  bufferLength,
  type FuzzCase,
  type FuzzRequest,
  HEADER_SIZE,
  type PlannedBuffer,
  streamLength,
} from "./case.ts";
import type { MemoryDamage, PlacedBuffer } from "./memory.ts";
import type { ChainBuffer, PostedChain } from "./ring.ts";
import { FuzzRng } from "./rng.ts";
import type { FuzzSession, WaitOutcome } from "./session.ts";

/** The longest an illegal request may take before it counts as unanswered (or the timeout, when shorter). */
export const ILLEGAL_GRACE_MS = 250;
/** The shortest wait for an illegal request. */
export const MIN_GRACE_MS = 50;
/** How many full-timeout hangs of one request shape before later ones are waited for briefly. */
export const HANG_CONFIRMATIONS = 2;

/**
 * How long to wait, learned during a run: the latencies of legal requests
 * (an illegal request is waited for 4 times their 99th percentile, 50 to
 * 250 ms), and the request shapes (type and uncommon layouts) that hung for
 * the full timeout already. Once a shape hung {@linkcode HANG_CONFIRMATIONS}
 * times, a phase whose unfinished requests all have such shapes is waited
 * for only 20 times the 99th percentile (at least 100 ms): the finding is
 * the same, and a replay waits the full timeout. A replay starts with no
 * history.
 */
export class Pace {
  readonly #latencies: number[] = [];
  #next = 0;
  readonly #hung = new Map<string, number>();

  /** Records a legal request's latency. */
  latency(ms: number): void {
    if (this.#latencies.length < 512) this.#latencies.push(ms);
    else this.#latencies[this.#next++ % 512] = ms;
  }

  /** The 99th percentile of recent legal latencies (ms), or undefined before any. */
  get p99(): number | undefined {
    if (this.#latencies.length < 20) return undefined;
    const sorted = this.#latencies.slice().sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length * 0.99)];
  }

  /** How long an illegal phase is waited for. */
  graceMs(timeoutMs: number): number {
    const p = this.p99;
    const grace = p === undefined ? ILLEGAL_GRACE_MS : Math.min(ILLEGAL_GRACE_MS, Math.max(MIN_GRACE_MS, 4 * p));
    return Math.min(timeoutMs, grace);
  }

  /** How long a phase whose unfinished requests all hung before is waited for. */
  knownHangMs(timeoutMs: number): number {
    const p = this.p99 ?? ILLEGAL_GRACE_MS;
    return Math.min(timeoutMs, Math.max(100, 20 * p));
  }

  /** Records that a request hung for the full timeout (each of its keys counts one). */
  hung(r: FuzzRequest): void {
    for (const k of hangKeys(r)) this.#hung.set(k, (this.#hung.get(k) ?? 0) + 1);
  }

  /** Whether requests like this one hung often enough already (any of its keys). */
  knownHang(r: FuzzRequest): boolean {
    return hangKeys(r).some((k) => (this.#hung.get(k) ?? 0) >= HANG_CONFIRMATIONS);
  }
}

/**
 * What makes requests alike for {@linkcode Pace}: each uncommon layout a
 * request uses, or its type when it uses none.
 *
 * @param r the request
 * @returns e.g. `["indirect-after-direct", "zero-length"]` or `["plain read"]`
 */
export function hangKeys(r: FuzzRequest): string[] {
  return r.features.length > 0 ? [...r.features] : [`plain ${r.op}`];
}

/** What happened to one request. */
export interface RequestRun {
  /** The request. */
  readonly request: FuzzRequest;
  /** Its buffers, as placed (plan order). */
  readonly buffers: readonly PlacedBuffer[];
  /** Its chain, once posted. */
  chain?: PostedChain;
  /** When it was made available (ms). */
  postedAt?: number;
  /** Whether it completed. */
  completed: boolean;
  /** The used length. */
  len?: number;
  /** Whether the used length means anything (packed rings: VIRTQ_DESC_F_WRITE in the used descriptor). */
  lenValid: boolean;
  /** Milliseconds from availability to completion. */
  latencyMs?: number;
  /** The status byte after completion, when it can be read. */
  status?: number;
  /** What the device wrote before the status (read data, GET_ID), when all of it is in shared memory. */
  written?: Uint8Array;
  /** Waited for less than the timeout: its shape hung before (see {@linkcode Pace}). */
  shortWait?: number;
}

/** What happened to one case. */
export interface CaseRun {
  /** The case. */
  readonly fuzzCase: FuzzCase;
  /** Every request, in case order. */
  readonly requests: RequestRun[];
  /** How each phase's wait ended (phases not reached are missing). */
  readonly phases: WaitOutcome[];
  /** Completion problems the ring reported. */
  readonly anomalies: string[];
  /** Whether the back-end hung up during the case. */
  hungUp: boolean;
  /** Memory the device must not have written but did. */
  damage: MemoryDamage[];
  /** Milliseconds the case took. */
  elapsedMs: number;
}

/** A placement generator of its own per case (the case's generator is not consumed here). */
function placementRng(c: FuzzCase): FuzzRng {
  return FuzzRng.forCase(c.seed ^ 0x5bd1e995, c.index);
}

/**
 * What a buffer holds, in words: `header`, `header[4,16)`, `data[0,4096)`,
 * `data[4096,4097)+status`, `status`, `zero length`, `stray 512 bytes`.
 *
 * @param r the request
 * @param b the buffer
 * @returns the description
 */
export function holds(r: FuzzRequest, b: PlannedBuffer): string {
  if (b.extra !== undefined) return `stray ${b.extra} bytes`;
  if (b.to === b.from) return "zero length";
  const readableEnd = r.readable.byteLength, dataEnd = readableEnd + r.writableLen;
  const parts: string[] = [];
  const part = (name: string, start: number, end: number, base: number) => {
    const s = Math.max(b.from, start), e = Math.min(b.to, end);
    if (s >= e) return;
    parts.push(s === start && e === end && name !== "data" ? name : `${name}[${s - base},${e - base})`);
  };
  part("header", 0, HEADER_SIZE, 0);
  const dataName = r.op === "discard" || r.op === "write-zeroes" ? "segments" : r.op === "get-id" ? "id" : "data";
  part(dataName, HEADER_SIZE, readableEnd, HEADER_SIZE);
  part(dataName, readableEnd, dataEnd, readableEnd);
  if (r.hasStatus) part("status", dataEnd, dataEnd + 1, dataEnd);
  return parts.join("+");
}

/** The stream's bytes a readable buffer holds (its own pattern for a stray one). */
function contents(r: FuzzRequest, b: PlannedBuffer): Uint8Array | undefined {
  if (b.write) return undefined;
  if (b.extra !== undefined) return new Uint8Array(b.extra).map((_, i) => (i * 7 + 0x3c) & 0xff);
  const out = new Uint8Array(b.to - b.from);
  out.set(r.readable.subarray(Math.min(b.from, r.readable.byteLength), Math.min(b.to, r.readable.byteLength)));
  return out;
}

/** The device-written bytes of the stream in [from, to), if all of them are in shared memory. */
function gather(s: FuzzSession, run: RequestRun, from: number, to: number): Uint8Array | undefined {
  const out = new Uint8Array(to - from);
  let got = 0;
  run.request.chain.buffers.forEach((b, i) => {
    if (b.extra !== undefined || b.to <= from || b.from >= to) return;
    const s0 = Math.max(b.from, from), e0 = Math.min(b.to, to);
    const placed = run.buffers[i];
    const bytes = s.memory.read(placed);
    const have = Math.min(e0, b.from + bytes.byteLength);
    if (have <= s0) return;
    out.set(bytes.subarray(s0 - b.from, have - b.from), s0 - from);
    got += have - s0;
  });
  return got === to - from ? out : undefined;
}

/**
 * Runs a case on a session.
 *
 * @param s the session (its ring idle: nothing in flight)
 * @param c the case
 * @param timeoutMs how long a legal request may take
 * @param pace what the run learned about waiting (a fresh one for a replay)
 * @returns what happened
 */
export async function executeCase(s: FuzzSession, c: FuzzCase, timeoutMs: number, pace: Pace): Promise<CaseRun> {
  const t0 = performance.now();
  const prng = placementRng(c);
  s.memory.beginCase(prng);
  s.ring.beginCase(FuzzRng.forCase(c.seed ^ 0x27d4eb2f, c.index));
  const runs: RequestRun[] = c.requests.map((r) => ({
    request: r,
    buffers: r.chain.buffers.map((b, i) =>
      s.memory.place(
        prng,
        bufferLength(b),
        b.write,
        contents(r, b),
        b.where ?? "region",
        `request ${r.n}'s buffer ${i}`,
        b.unaligned === true,
      )
    ),
    completed: false,
    lenValid: false,
  }));
  const run: CaseRun = {
    fuzzCase: c,
    requests: runs,
    phases: [],
    anomalies: [],
    hungUp: false,
    damage: [],
    elapsedMs: 0,
  };
  const byChain = new Map<PostedChain, RequestRun>();
  const reap = () => {
    const { used, anomalies } = s.ring.reap();
    run.anomalies.push(...anomalies);
    for (const u of used) {
      const r = byChain.get(u.chain);
      if (!r) continue;
      r.completed = true;
      r.len = u.len;
      r.lenValid = u.lenValid;
      r.latencyMs = u.at - (r.postedAt ?? u.at);
    }
  };
  for (let p = 0; p < c.phases; p++) {
    const phase = runs.filter((r) => r.request.phase === p);
    if (phase.length === 0) continue;
    for (const r of phase) {
      const buffers: ChainBuffer[] = r.request.chain.buffers.map((b, i) => ({
        placed: r.buffers[i],
        holds: holds(r.request, b),
      }));
      r.chain = s.ring.post(
        r.request.n,
        buffers,
        r.request.chain,
        (bytes, owner) => s.memory.place(prng, bytes.byteLength, false, bytes, "region", owner),
      );
      byChain.set(r.chain, r);
    }
    s.ring.publish();
    const now = performance.now();
    for (const r of phase) r.postedAt = now;
    s.kick();
    const legal = phase.every((r) => r.request.legal);
    const full = now + (legal ? timeoutMs : pace.graceMs(timeoutMs));
    let short: number | undefined;
    const deadline = () => {
      if (!legal || short !== undefined) return short ?? full;
      const open = phase.filter((r) => !r.completed);
      if (open.length > 0 && open.every((r) => pace.knownHang(r.request))) {
        const wait = pace.knownHangMs(timeoutMs);
        short = Math.min(full, performance.now() + wait);
        for (const r of open) r.shortWait = wait;
      }
      return short ?? full;
    };
    const outcome = await s.waitFor(() => {
      reap();
      return s.ring.broken || phase.every((r) => r.completed);
    }, deadline);
    reap();
    run.phases.push(outcome);
    for (const r of phase) {
      if (!r.completed) continue;
      collect(s, r);
      if (r.request.legal && r.latencyMs !== undefined) pace.latency(r.latencyMs);
    }
    if (outcome !== "done" || s.ring.broken || run.anomalies.length > 0) break;
  }
  // A second completion of something already completed shows up now, or at the next case.
  reap();
  run.hungUp = s.hungUp;
  run.damage = s.memory.check(s.ring.guards(), s.ring.writable());
  run.elapsedMs = performance.now() - t0;
  return run;
}

/** Copies out a completed request's status byte and device-written data. */
function collect(s: FuzzSession, r: RequestRun): void {
  const req = r.request;
  const end = streamLength(req);
  if (req.hasStatus) r.status = gather(s, r, end - 1, end)?.[0];
  if (req.writableLen > 0) {
    const from = req.readable.byteLength;
    r.written = gather(s, r, from, from + req.writableLen);
  }
}

/**
 * Looks at the used ring once more after a case (a late second completion),
 * and at the memory again.
 *
 * @param s the session
 * @param run the case's run (its anomalies and damage grow)
 */
export function lateCheck(s: FuzzSession, run: CaseRun): void {
  const { anomalies } = s.ring.reap();
  run.anomalies.push(...anomalies.map((a) => `after the case: ${a}`));
}
