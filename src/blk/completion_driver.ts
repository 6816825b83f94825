/**
 * Drives completions for the promise API and the async iterators: reaps the
 * used rings while anything waits on them, by polling or by sleeping on the
 * device's interrupts.
 *
 * @module
 */

import type { InterruptSource } from "../transport/transport.ts";
import type { VirtioBlkQueue } from "./queue.ts";

/**
 * How completions are noticed.
 * - `"poll"`: interrupts off; the used rings are checked on every turn of
 *   the event loop while requests are in flight (lowest latency, one busy core).
 * - `"eventfd"`: interrupts on; the driver sleeps until the device signals
 *   (no CPU while waiting).
 */
export type CompletionMode = "poll" | "eventfd";

/** A macrotask turn: lets timers and I/O run (~1.4 µs here). */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Turns of back-to-back reaping before yielding a macrotask anyway. */
const MAX_MICROTASK_TURNS = 32;

/** The completion loop of one device. */
export class CompletionDriver {
  readonly #queues: readonly VirtioBlkQueue<unknown>[];
  readonly #interrupts: InterruptSource;
  readonly #mode: CompletionMode;
  readonly #spinMicros: number;
  #running = false;
  #closed = false;
  #flushScheduled = false;
  #loop: Promise<void> = Promise.resolve();
  readonly #flush = () => {
    this.#flushScheduled = false;
    for (const q of this.#queues) if (q.pendingSubmit) q.submit();
  };

  /**
   * Creates the instance.
   *
   * @param queues the device's queues
   * @param interrupts wakes the loop in eventfd mode; reports hang-ups in both (owned: closed by {@linkcode CompletionDriver.close})
   * @param mode poll or eventfd
   * @param spinMicros eventfd mode: poll this long before sleeping
   */
  constructor(
    queues: readonly VirtioBlkQueue<unknown>[],
    interrupts: InterruptSource,
    mode: CompletionMode,
    spinMicros: number,
  ) {
    this.#queues = queues;
    this.#interrupts = interrupts;
    this.#mode = mode;
    this.#spinMicros = spinMicros;
    interrupts.unref();
    for (const q of queues) q.setInterruptsEnabled(mode === "eventfd");
  }

  /** The completion mode. */
  get mode(): CompletionMode {
    return this.#mode;
  }

  /**
   * Called when a promise request was enqueued or an iterator waits:
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
    this.#interrupts.ref();
    try {
      let turns = 0;
      let idleSince = 0;
      while (!this.#closed && this.#needsDriving()) {
        if (this.#drainAll() > 0) {
          idleSince = 0;
          // Let the settled promises' continuations run (and submit more);
          // yield a macrotask now and then so timers and I/O are not starved.
          if (++turns < MAX_MICROTASK_TURNS) await null;
          else {
            turns = 0;
            await nextTurn();
          }
          continue;
        }
        turns = 0;
        if (this.#mode === "poll") {
          await nextTurn();
          continue;
        }
        if (this.#spinMicros > 0) {
          const now = performance.now();
          if (idleSince === 0) idleSince = now;
          if ((now - idleSince) * 1000 < this.#spinMicros) {
            await nextTurn();
            continue;
          }
        }
        idleSince = 0;
        // Re-arm interrupts (with EVENT_IDX, used_event must move to the next
        // index), then look once more: a completion that landed before the
        // device saw the re-arm would not be signalled. One that lands after
        // is signalled, and the wake byte waits in the socket for wait().
        for (const q of this.#queues) q.setInterruptsEnabled(true);
        if (this.#anyUsed()) continue;
        await this.#interrupts.wait();
      }
    } finally {
      this.#interrupts.unref();
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
