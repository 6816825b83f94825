/**
 * {@linkcode HandOvers}: the queues a `VirtioBlk` handed over to Workers —
 * each one's hand-over (see `Transport.handOverQueue`) and the buffer memory
 * shared with the device for it — ended, waited for and released when the
 * device closes or loses its back-end.
 *
 * @module
 */

import type { SharedRegion } from "../memory/region.ts";
import type { QueueHandOver } from "../transport/transport.ts";

/** How long a close waits for each Worker to let go of the memory. */
export const LET_GO_TIMEOUT_MS = 1000;

interface Entry {
  readonly handOver: QueueHandOver;
  readonly region: SharedRegion;
  letGo?: boolean;
}

/** The hand-overs of one device. */
export class HandOvers {
  readonly #entries = new Map<number, Entry>();

  /** Queues handed over so far. */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * Whether queue `index` was handed over.
   *
   * @param index the queue
   * @returns true when it was
   */
  has(index: number): boolean {
    return this.#entries.has(index);
  }

  /**
   * Records a hand-over.
   *
   * @param index the queue
   * @param handOver the transport's side of it
   * @param region the buffer memory shared for it (closed, or retired, by {@linkcode HandOvers.release})
   */
  add(index: number, handOver: QueueHandOver, region: SharedRegion): void {
    this.#entries.set(index, { handOver, region });
  }

  /** The back-end hung up: every Worker's requests fail with `ConnectionLostError`. */
  lost(): void {
    for (const e of this.#entries.values()) e.handOver.end("lost");
  }

  /**
   * Closing: every Worker's requests fail with `ClosedError` (unless they
   * failed already), then waits for each Worker to let go of the memory.
   *
   * @param timeoutMs how long to wait for each (they wait together)
   * @returns true when every Worker let go (or never attached)
   */
  async end(timeoutMs = LET_GO_TIMEOUT_MS): Promise<boolean> {
    const entries = [...this.#entries.values()];
    for (const e of entries) e.handOver.end("closed");
    const settled = await Promise.all(entries.map((e) => e.handOver.settle(timeoutMs)));
    entries.forEach((e, i) => (e.letGo = settled[i]));
    return settled.every((s) => s);
  }

  /**
   * After {@linkcode HandOvers.end} and the transport's close: stops the
   * interrupt watches and releases the buffer memory — unmapped where its
   * Worker let go, retired (zero-filled, its addresses kept) where it did
   * not, so that a late access reads zeros instead of faulting.
   */
  async release(): Promise<void> {
    for (const e of this.#entries.values()) {
      await e.handOver.release();
      if (e.letGo || e.region.retire === undefined) e.region.close();
      else e.region.retire();
    }
    this.#entries.clear();
  }
}
