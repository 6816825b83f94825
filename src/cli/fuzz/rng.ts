/**
 * The fuzzer's random numbers: a small seeded generator (sfc32), and the
 * derivation of each case's own generator from the run's seed and the
 * case's number, so that one case can be generated again alone
 * (`--replay SEED:CASE`) without the cases before it.
 *
 * @module
 */

/** The largest seed `--seed` takes. */
export const MAX_SEED = 0xffff_ffff;

/** Mixes a 32-bit value (the finaliser of MurmurHash3). */
function mix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x85ebca6b);
  x ^= x >>> 13;
  x = Math.imul(x, 0xc2b2ae35);
  x ^= x >>> 16;
  return x >>> 0;
}

/**
 * A deterministic generator of 32-bit numbers (sfc32), with the helpers the
 * generator of cases needs.
 *
 * @example
 * ```ts
 * import { FuzzRng } from "./rng.ts";
 * const a = FuzzRng.forCase(1, 17), b = FuzzRng.forCase(1, 17);
 * a.int(0, 99) === b.int(0, 99); // true: the same case, the same choices
 * ```
 */
export class FuzzRng {
  #a: number;
  #b: number;
  #c: number;
  #d: number;

  /**
   * Creates a generator from four words of state.
   *
   * @param a first word
   * @param b second word
   * @param c third word
   * @param d fourth word (a counter)
   */
  constructor(a: number, b: number, c: number, d: number) {
    this.#a = a >>> 0;
    this.#b = b >>> 0;
    this.#c = c >>> 0;
    this.#d = d >>> 0;
    for (let i = 0; i < 12; i++) this.next();
  }

  /**
   * The generator of case `index` of a run with seed `seed`: the same pair
   * always gives the same sequence, whatever ran before.
   *
   * @param seed the run's seed (0 to {@linkcode MAX_SEED})
   * @param index the case's number (0-based)
   * @returns the case's generator
   */
  static forCase(seed: number, index: number): FuzzRng {
    const s = mix32(seed ^ 0x9e3779b9), i = mix32(index + 0x7f4a7c15);
    return new FuzzRng(s, i, mix32(s ^ i ^ 0x2545f491), index);
  }

  /**
   * The next 32-bit value.
   *
   * @returns an unsigned 32-bit integer
   */
  next(): number {
    const t = (((this.#a + this.#b) >>> 0) + this.#d) >>> 0;
    this.#d = (this.#d + 1) >>> 0;
    this.#a = this.#b ^ (this.#b >>> 9);
    this.#b = (this.#c + (this.#c << 3)) >>> 0;
    this.#c = ((this.#c << 21) | (this.#c >>> 11)) >>> 0;
    this.#c = (this.#c + t) >>> 0;
    return t;
  }

  /**
   * A uniform integer in `[lo, hi]` (both inclusive; up to 2^53).
   *
   * @param lo the smallest value
   * @param hi the largest value
   * @returns the integer
   */
  int(lo: number, hi: number): number {
    const span = hi - lo + 1;
    if (span <= 0) return lo;
    if (span <= 0x1_0000_0000) return lo + Math.floor((this.next() / 0x1_0000_0000) * span);
    const r = this.next() * 0x1_0000_0000 + this.next(); // 64 random bits, enough for 2^53
    return lo + (r % span);
  }

  /**
   * True with probability `p`.
   *
   * @param p a probability in [0, 1]
   * @returns the outcome
   */
  chance(p: number): boolean {
    return this.next() / 0x1_0000_0000 < p;
  }

  /**
   * One element of a list.
   *
   * @param items a non-empty list
   * @returns one of them
   */
  pick<T>(items: readonly T[]): T {
    return items[this.int(0, items.length - 1)];
  }

  /**
   * One key, drawn with the weights given.
   *
   * @param weights key → weight (non-negative; at least one positive)
   * @returns a key
   */
  weighted<K extends string>(weights: Readonly<Partial<Record<K, number>>>): K {
    const entries = Object.entries(weights) as [K, number][];
    const total = entries.reduce((n, [, w]) => n + Math.max(0, w), 0);
    let r = (this.next() / 0x1_0000_0000) * total;
    for (const [k, w] of entries) {
      if (w <= 0) continue;
      if ((r -= w) < 0) return k;
    }
    return entries.filter(([, w]) => w > 0).at(-1)![0];
  }

  /**
   * The elements of a list in a random order (a new array).
   *
   * @param items the list
   * @returns a shuffled copy
   */
  shuffle<T>(items: readonly T[]): T[] {
    const out = items.slice();
    for (let i = out.length - 1; i > 0; i--) {
      const j = this.int(0, i);
      [out[i], out[j]] = [out[j], out[i]];
    }
    return out;
  }
}

/**
 * Bytes of a pattern that a given (case, request, sector) owns, for data
 * checks: a different 512-byte block for every sector of every request of
 * every case, so that data from the wrong sector, request or case is told
 * apart from the right one.
 *
 * @param out where the bytes go (a multiple of 512 bytes)
 * @param seed the run's seed
 * @param index the case's number
 * @param request the request's number within the case
 * @param sector the first sector `out` stands for
 */
export function fillSectors(out: Uint8Array, seed: number, index: number, request: number, sector: bigint): void {
  for (let at = 0; at < out.byteLength; at += 512) {
    const s = sector + BigInt(at / 512);
    let x = mix32(seed ^ mix32(index ^ mix32(request ^ mix32(Number(s & 0xffff_ffffn) ^ Number(s >> 32n)))));
    const end = Math.min(at + 512, out.byteLength);
    for (let i = at; i < end; i += 4) {
      x = mix32(x + 0x6d2b79f5);
      out[i] = x;
      if (i + 1 < end) out[i + 1] = x >>> 8;
      if (i + 2 < end) out[i + 2] = x >>> 16;
      if (i + 3 < end) out[i + 3] = x >>> 24;
    }
  }
}
