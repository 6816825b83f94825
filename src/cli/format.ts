/**
 * Number formats of the CLI, after fio's: `86.2k`, `337MiB/s (353MB/s)`,
 * `1684MiB`.
 *
 * @module
 */

/**
 * A count with a k/M/G suffix (powers of 1000), three significant digits.
 *
 * @param n the count
 * @returns e.g. `86.2k`
 */
export function formatCount(n: number): string {
  for (const [unit, div] of [["G", 1e9], ["M", 1e6], ["k", 1e3]] as const) {
    if (n >= div) return `${significant(n / div)}${unit}`;
  }
  return significant(n);
}

function significant(v: number): string {
  if (Number.isInteger(v) || v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

/**
 * Bytes with a binary unit (KiB, MiB, GiB, TiB).
 *
 * @param n bytes
 * @returns e.g. `1684MiB`
 */
export function formatBytes(n: number): string {
  for (const [unit, div] of [["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]] as const) {
    if (n >= div) return `${significant(n / div)}${unit}`;
  }
  return `${significant(n)}B`;
}

/**
 * A bandwidth as fio prints it: binary units, then decimal ones.
 *
 * @param bytesPerSecond the rate
 * @returns e.g. `337MiB/s (353MB/s)`
 */
export function formatBandwidth(bytesPerSecond: number): string {
  let dec = `${significant(bytesPerSecond)}B/s`;
  for (const [unit, div] of [["TB", 1e12], ["GB", 1e9], ["MB", 1e6], ["kB", 1e3]] as const) {
    if (bytesPerSecond >= div) {
      dec = `${significant(bytesPerSecond / div)}${unit}/s`;
      break;
    }
  }
  return `${formatBytes(bytesPerSecond)}/s (${dec})`;
}

/**
 * A byte count as a size flag takes it: exact, with the largest suffix that
 * divides it (powers of 1024).
 *
 * @param n bytes
 * @returns e.g. `4k`, `1M`, `1536`
 */
export function formatSizeFlag(n: number): string {
  for (const [unit, div] of [["G", 2 ** 30], ["M", 2 ** 20], ["k", 2 ** 10]] as const) {
    if (n >= div && n % div === 0) return `${n / div}${unit}`;
  }
  return String(n);
}
