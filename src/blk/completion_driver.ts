/**
 * Drives completions for the promise API and for waiters of the batch API:
 * reaps the used rings while anything waits on them, by polling or by
 * sleeping on the device's interrupts.
 *
 * @module
 */

import type { InterruptSource } from "../transport/transport.ts";
import type { QueueEngine } from "./queue_engine.ts";

/**
 * How completions are noticed.
 * - `"poll"`: interrupts off; the used rings are checked continuously while
 *   requests are in flight (lowest latency; one core busy while I/O is pending).
 * - `"eventfd"`: interrupts on; after an optional short spin the driver sleeps
 *   until the device signals (no CPU while waiting).
 */
export type CompletionMode = "poll" | "eventfd";

/** A macrotask turn: lets timers and I/O run (~1.4 µs here). */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** While spinning on microtasks, yield a macrotask at least this often (ns). */
const MACROTASK_INTERVAL_NS = 50_000;
/** Microtask turns to linger once idle, so a caller's next request finds the loop running. */
const LINGER_TURNS = 8;

/** The completion loop of one device. */
export class CompletionDriver {
  readonly #queues: readonly QueueEngine<unknown>[];
  readonly #interrupts: InterruptSource;
  readonly #mode: CompletionMode;
  readonly #spinNs: number;
  readonly #now: () => number;
  #running = false;
  #closed = false;
  #flushScheduled = false;
  #loop: Promise<void> = Promise.resolve();
  #sleeps = 0;
  readonly #flush = () => {
    this.#flushScheduled = false;
    for (const q of this.#queues) if (q.pendingSubmit) q.submit();
  };

  /**
   * Creates the driver; it runs only while something waits.
   *
   * @param queues the device's queues
   * @param interrupts wakes the loop in eventfd mode; reports hang-ups in both (owned: closed by {@linkcode CompletionDriver.close})
   * @param mode poll or eventfd
   * @param spinMicros eventfd mode: poll this long before sleeping
   * @param now a monotonic clock in nanoseconds
   */
  constructor(
    queues: readonly QueueEngine<unknown>[],
    interrupts: InterruptSource,
    mode: CompletionMode,
    spinMicros: number,
    now: () => number,
  ) {
    this.#queues = queues;
    this.#interrupts = interrupts;
    this.#mode = mode;
    this.#spinNs = spinMicros * 1000;
    this.#now = now;
    // Interrupts stay off while the loop polls or spins (the device then
    // skips its eventfd writes and the waker thread stays asleep); they are
    // armed only for the time the loop sleeps.
    for (const q of queues) q.setInterruptsEnabled(false);
  }

  /** The completion mode. */
  get mode(): CompletionMode {
    return this.#mode;
  }

  /** Times the loop went to sleep on interrupts (a statistic). */
  get sleeps(): number {
    return this.#sleeps;
  }

  /**
   * Called when a promise request was enqueued or a batch waiter waits:
   * schedules one notification for everything enqueued in this tick and
   * starts the loop if it is not running.
   */
  requestDriving(): void {
    if (this.#closed) return;
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      queueMicrotask(this.#flush);
    }
    if (!this.#running) {
      this.#running = true;
      this.#loop = this.#run();
    }
  }

  #needsDriving(): boolean {
    for (const q of this.#queues) if (q.needsDriving()) return true;
    return false;
  }

  #drainAll(): number {
    let n = 0;
    for (const q of this.#queues) n += q.drain();
    return n;
  }

  #anyUsed(): boolean {
    for (const q of this.#queues) if (q.hasUsed()) return true;
    return false;
  }

  async #run(): Promise<void> {
    // Start after the current tick so that one notification covers every
    // request enqueued in it (the flush microtask runs first).
    await null;
    try {
      const now = this.#now;
      let lastYield = now();
      let spinStart = -1;
      let idleTurns = 0;
      for (;;) {
        if (this.#closed) return;
        if (!this.#needsDriving()) {
          // Linger a few microtask turns: the caller's continuation usually
          // submits the next request right away.
          if (++idleTurns > LINGER_TURNS) return;
          await null;
          continue;
        }
        idleTurns = 0;
        const reaped = this.#drainAll();
        const t = now();
        if (t - lastYield > MACROTASK_INTERVAL_NS) {
          // Microtask spinning starves timers and I/O: yield now and then.
          await nextTurn();
          lastYield = now();
          continue;
        }
        if (reaped > 0 || this.#mode === "poll") {
          spinStart = -1;
          await null; // settled promises' continuations run (and may submit more)
          continue;
        }
        if (spinStart < 0) spinStart = t;
        if (t - spinStart < this.#spinNs) {
          await null;
          continue;
        }
        spinStart = -1;
        // Sleep. Re-arm interrupts first (with EVENT_IDX, used_event moves to
        // the next index), then look once more: a completion that landed
        // before the device saw the re-arm is not signalled; one that lands
        // after is, and its wake byte waits in the socket for wait().
        for (const q of this.#queues) q.setInterruptsEnabled(true);
        if (!this.#anyUsed()) {
          this.#sleeps++;
          await this.#interrupts.wait();
          lastYield = now();
        }
        for (const q of this.#queues) q.setInterruptsEnabled(false);
      }
    } finally {
      this.#running = false;
    }
  }

  /** Stops the loop, closes the interrupt source (which this driver owns) and waits for both. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#interrupts.close();
    await this.#loop;
  }
}
