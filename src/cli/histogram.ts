/**
 * A latency histogram with log-linear buckets (32 per power of two, ~3%
 * precision) over nanoseconds: recording allocates nothing.
 *
 * @module
 */

const SUB_BITS = 5;
const SUB = 1 << SUB_BITS; // 32
const LINEAR = 2 * SUB; // values below 64 ns get a bucket each
const BUCKETS = LINEAR + (32 - SUB_BITS - 1) * SUB;

function bucketOf(ns: number): number {
  if (ns < LINEAR) return ns < 0 ? 0 : Math.floor(ns);
  const v = ns >= 4294967295 ? 4294967295 : Math.floor(ns);
  const msb = 31 - Math.clz32(v);
  const shift = msb - SUB_BITS;
  return LINEAR + (msb - SUB_BITS - 1) * SUB + ((v >>> shift) - SUB);
}

function bucketMid(i: number): number {
  if (i < LINEAR) return i;
  const k = i - LINEAR;
  const msb = Math.floor(k / SUB) + SUB_BITS + 1;
  const shift = msb - SUB_BITS;
  const lo = ((k % SUB) + SUB) * 2 ** shift;
  return lo + 2 ** shift / 2;
}

/** Latency statistics in microseconds. */
export interface LatencySummary {
  /** Samples. */
  count: number;
  /** Mean (exact). */
  mean: number;
  /** Standard deviation (exact, population). */
  stdev: number;
  /** Minimum (exact). */
  min: number;
  /** Median (bucket precision). */
  p50: number;
  /** 99th percentile. */
  p99: number;
  /** 99.9th percentile. */
  p999: number;
  /** Maximum (exact). */
  max: number;
}

/** A histogram as plain data (to post from a Worker; see {@linkcode LatencyHistogram.data}). */
export interface LatencyHistogramData {
  /** Samples per bucket. */
  readonly counts: Float64Array;
  /** Samples. */
  readonly count: number;
  /** Running mean (ns). */
  readonly mean: number;
  /** Sum of squared deviations from the mean. */
  readonly m2: number;
  /** Smallest sample (ns). */
  readonly min: number;
  /** Largest sample (ns). */
  readonly max: number;
}

/** Records latencies in nanoseconds. */
export class LatencyHistogram {
  readonly #counts = new Float64Array(BUCKETS);
  #count = 0;
  #mean = 0; // Welford's running mean and sum of squared deviations
  #m2 = 0;
  #min = Infinity;
  #max = 0;

  /**
   * Adds one sample.
   *
   * @param ns latency in nanoseconds
   */
  record(ns: number): void {
    this.#counts[bucketOf(ns)]++;
    const n = ++this.#count;
    const d = ns - this.#mean;
    this.#mean += d / n;
    this.#m2 += d * (ns - this.#mean);
    if (ns < this.#min) this.#min = ns;
    if (ns > this.#max) this.#max = ns;
  }

  /**
   * Adds every sample of `other` (as if each had been recorded here).
   *
   * @param other another histogram
   */
  merge(other: LatencyHistogram): void {
    if (other.#count === 0) return;
    for (let i = 0; i < BUCKETS; i++) this.#counts[i] += other.#counts[i];
    const n = this.#count + other.#count;
    const d = other.#mean - this.#mean;
    this.#m2 += other.#m2 + (d * d * this.#count * other.#count) / n;
    this.#mean += (d * other.#count) / n;
    this.#count = n;
    if (other.#min < this.#min) this.#min = other.#min;
    if (other.#max > this.#max) this.#max = other.#max;
  }

  /** The histogram as plain data (structured-cloneable). */
  data(): LatencyHistogramData {
    return {
      counts: this.#counts.slice(),
      count: this.#count,
      mean: this.#mean,
      m2: this.#m2,
      min: this.#min,
      max: this.#max,
    };
  }

  /**
   * A histogram from {@linkcode LatencyHistogram.data} (made in another isolate).
   *
   * @param d the data
   * @returns the histogram
   */
  static from(d: LatencyHistogramData): LatencyHistogram {
    const h = new LatencyHistogram();
    if (d.counts.length !== BUCKETS) throw new RangeError(`a histogram of ${d.counts.length} buckets, not ${BUCKETS}`);
    h.#counts.set(d.counts);
    h.#count = d.count;
    h.#mean = d.mean;
    h.#m2 = d.m2;
    h.#min = d.min;
    h.#max = d.max;
    return h;
  }

  /**
   * The value below which `p` percent of samples fall (bucket midpoint).
   *
   * @param p a percentage from 0 to 100
   * @returns nanoseconds
   */
  percentile(p: number): number {
    if (this.#count === 0) return 0;
    const rank = Math.max(1, Math.ceil((p / 100) * this.#count));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.#counts[i];
      if (seen >= rank) return Math.min(Math.max(bucketMid(i), this.#min), this.#max);
    }
    return this.#max;
  }

  /** Mean, percentiles and extremes, in microseconds. */
  summary(): LatencySummary {
    const us = (ns: number) => ns / 1000;
    return {
      count: this.#count,
      mean: this.#count ? us(this.#mean) : 0,
      stdev: this.#count ? us(Math.sqrt(this.#m2 / this.#count)) : 0,
      min: this.#count ? us(this.#min) : 0,
      p50: us(this.percentile(50)),
      p99: us(this.percentile(99)),
      p999: us(this.percentile(99.9)),
      max: us(this.#max),
    };
  }
}
