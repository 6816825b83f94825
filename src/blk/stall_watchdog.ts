/**
 * The stall watchdog (the `stallTimeoutMs` option): fails a queue with
 * `TimeoutError` when its device completes nothing for that long while
 * requests are in flight, so that a stalled device ends in an error instead
 * of a wait without end. A completion waiting in the used ring counts as
 * progress. The timer keeps the process alive only while something waits
 * on the device.
 *
 * @module
 */

import type { QueueEngine } from "./queue_engine.ts";

/** Watches a device's queues for progress. */
export class StallWatchdog {
  readonly #queues: readonly QueueEngine<unknown>[];
  readonly #timeoutMs: number;
  readonly #tickMs: number;
  readonly #seen: Float64Array; // reaped count at the last tick, per queue
  readonly #progressAt: Float64Array; // when each queue last made progress (or had nothing to wait for)
  readonly #timer: ReturnType<typeof setInterval>;
  #refed = false;

  /**
   * Starts watching (unref'd until {@linkcode StallWatchdog.engage}).
   *
   * @param queues the device's queues
   * @param timeoutMs how long without progress fails a queue
   */
  constructor(queues: readonly QueueEngine<unknown>[], timeoutMs: number) {
    this.#queues = queues;
    this.#timeoutMs = timeoutMs;
    this.#tickMs = Math.max(1, Math.min(1000, Math.floor(timeoutMs / 4)));
    this.#seen = new Float64Array(queues.length);
    this.#progressAt = new Float64Array(queues.length).fill(performance.now());
    this.#timer = setInterval(() => this.#tick(), this.#tickMs);
    Deno.unrefTimer(this.#timer);
  }

  /** Something waits on the device: keep the process alive until it is answered one way or the other. */
  engage(): void {
    if (this.#refed) return;
    this.#refed = true;
    Deno.refTimer(this.#timer);
  }

  #tick(): void {
    // Elapsed time, not a count of ticks: on a busy event loop (polling queues, a slow machine) ticks come late,
    // and a stall must still fail after stallTimeoutMs of wall-clock time.
    const now = performance.now();
    let busy = false;
    this.#queues.forEach((q, i) => {
      const inFlight = q.ring.inFlight;
      // A paused queue waits for a reconnect, which has a deadline of its own.
      if (q.error !== undefined || q.paused || inFlight === 0 || q.reaped !== this.#seen[i] || q.hasUsed()) {
        this.#seen[i] = q.reaped;
        this.#progressAt[i] = now;
      } else {
        const stalledMs = now - this.#progressAt[i];
        if (stalledMs >= this.#timeoutMs) q.failStalled(Math.round(stalledMs));
      }
      if (q.ring.inFlight > 0 && q.error === undefined && !q.paused) busy = true;
    });
    if (!busy && this.#refed) {
      this.#refed = false;
      Deno.unrefTimer(this.#timer);
    }
  }

  /** Stops the timer. */
  stop(): void {
    clearInterval(this.#timer);
  }
}
