/**
 * {@linkcode SignalWatch}: a watch that lasts as long as the device, for
 * signals that may come while no request is in flight — a configuration
 * change interrupt (an eventfd) or a back-end's request channel (a socket).
 * A waker of its own watches the descriptor; the callback runs in
 * a macrotask after each signal. The watch never keeps the program alive.
 *
 * @module
 */

import { Waker } from "./waker.ts";

/** Calls back on an eventfd's signals or a socket's arrivals until closed. */
export class SignalWatch {
  readonly #waker: Waker;
  readonly #onSignal: () => void;
  #closed = false;
  #loop: Promise<void> = Promise.resolve();

  private constructor(waker: Waker, onSignal: () => void) {
    this.#waker = waker;
    this.#onSignal = onSignal;
  }

  /**
   * Watches an eventfd (its counter is consumed when it fires).
   *
   * @param fd the eventfd
   * @param onSignal runs after each signal (several signals may coalesce into one call)
   * @returns the running watch
   */
  static eventfd(fd: number, onSignal: () => void): Promise<SignalWatch> {
    return SignalWatch.#start((w) => w.watchEventfd(fd, 0), onSignal);
  }

  /**
   * Watches a non-blocking socket for data and hang-up, edge-triggered:
   * `onReadable` must read until EAGAIN (or the end) each time.
   *
   * @param fd the socket
   * @param onReadable runs after data arrived or the peer hung up
   * @returns the running watch
   */
  static readable(fd: number, onReadable: () => void): Promise<SignalWatch> {
    return SignalWatch.#start((w) => w.watchReadable(fd, 0), onReadable);
  }

  /**
   * Watches a connected socket for the peer hanging up (once).
   *
   * @param fd the socket
   * @param onHangup runs once the peer is gone
   * @returns the running watch
   */
  static hangup(fd: number, onHangup: () => void): Promise<SignalWatch> {
    return SignalWatch.#start((w) => w.watchHangup(fd, 0), onHangup);
  }

  static async #start(watch: (w: Waker) => void, onSignal: () => void): Promise<SignalWatch> {
    const waker = await Waker.forQueues([]);
    try {
      watch(waker);
      waker.unref();
    } catch (e) {
      await waker.close();
      throw e;
    }
    const s = new SignalWatch(waker, onSignal);
    s.#loop = s.#run();
    return s;
  }

  async #run(): Promise<void> {
    while (!this.#closed) {
      await this.#waker.wait();
      if (this.#closed) return;
      this.#onSignal();
    }
  }

  /** Wake-ups so far (a statistic). */
  get wakes(): number {
    return this.#waker.wakes;
  }

  /** Stops watching and releases the descriptor; an outstanding wait ends. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#waker.close();
    await this.#loop;
  }
}
