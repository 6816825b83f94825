/**
 * How much device-reachable buffer memory a command asks for: as much as
 * it keeps in flight (fio: `--bs` × `--iodepth` × `--queues`; copy: its
 * chunks), never less than the library's default, and never more than the
 * machine has: that is refused as a usage error naming the flags.
 *
 * @module
 */

import { bufferAlignment } from "../memory/buffer_pool.ts";
import { UsageError } from "./args.ts";
import { formatBytes } from "./format.ts";

/** The library's default pool (VirtioBlkOptions.bufferPoolSize). */
const DEFAULT_POOL = 64 << 20;

/**
 * The pool that holds `count` buffers of `size` bytes side by side (each
 * aligned as the pool aligns it) plus `headroom`, and at least the default.
 *
 * @param count buffers
 * @param size bytes each
 * @param headroom bytes for anything else (bounce buffers, a verify pass)
 * @returns bytes
 */
export function poolFor(count: number, size: number, headroom = 1 << 20): number {
  const align = bufferAlignment(size);
  return Math.max(DEFAULT_POOL, count * Math.ceil(size / align) * align + headroom);
}

/**
 * Bytes of memory available to new programs (`MemAvailable` of
 * /proc/meminfo), or undefined where that cannot be read.
 *
 * @returns bytes, or undefined
 */
export function availableMemory(): number | undefined {
  try {
    const m = /^MemAvailable:\s+(\d+) kB$/m.exec(Deno.readTextFileSync("/proc/meminfo"));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Refuses a pool the machine cannot hold (its buffers are all touched).
 *
 * @param bytes the pool
 * @param what the flags that make it so, e.g. `--bs 1G × --iodepth 64 × --queues 1`
 * @param lower the flags to lower, e.g. `--bs, --iodepth or --queues`
 * @param available the machine's available memory (default: read now)
 * @throws {UsageError} when it does not fit
 */
export function checkPoolFits(bytes: number, what: string, lower: string, available = availableMemory()): void {
  if (available !== undefined && bytes > available) {
    throw new UsageError(
      `${what} needs ${formatBytes(bytes)} of buffer memory, more than the ${
        formatBytes(available)
      } this machine has available: lower ${lower}`,
    );
  }
}
