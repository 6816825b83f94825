/**
 * {@linkcode Waker}: the {@linkcode InterruptSource} of the kernel-backed
 * transports. A watch set of the OS layer watches each queue's call
 * eventfd under the queue's index as token, and optionally a control socket
 * for hang-up; `wait()` resolves on its signal (through the
 * isolate's event relay).
 *
 * @module
 */

import { MAX_WAKER_TOKEN, type RemoteWatchSet, WAKER_WORDS, WatchSet } from "../os/watch_set.ts";
import type { InterruptSource } from "./transport.ts";

export { MAX_WAKER_TOKEN };

/** Wakes JavaScript on the device's signals and on a socket's hang-up. */
export class Waker implements InterruptSource {
  readonly #set: WatchSet;
  readonly #pending: Uint32Array; // shared with the relay's helper
  #waiting = false;
  #keepAlive = true;
  #hangupToken = -1;
  #words = 0; // words of the bitmap in use (highest token watched)
  #hungUp = false;
  #closed = false;

  private constructor(set: WatchSet) {
    this.#set = set;
    this.#pending = set.shared;
  }

  /**
   * Starts a waker that watches one call eventfd per queue (queue `i` under
   * token `i`) and, optionally, a socket for hang-up; nothing is left running
   * when a watch fails.
   *
   * @param callFds the queues' call eventfds, by queue index
   * @param hangup a socket whose hang-up is reported under its token
   * @returns the waker
   */
  static async forQueues(callFds: readonly number[], hangup?: { fd: number; token: number }): Promise<Waker> {
    const waker = new Waker(await WatchSet.start());
    try {
      callFds.forEach((fd, i) => waker.watchEventfd(fd, i));
      if (hangup) waker.watchHangup(hangup.fd, hangup.token);
    } catch (e) {
      await waker.close();
      throw e;
    }
    return waker;
  }

  /**
   * A waker whose watches another isolate of this process owns (a queue
   * handed to a Worker): this side waits for their signals and takes the
   * fired bits; {@linkcode Waker.close} only lets go (the owner stops the
   * watches and frees them).
   *
   * @param remote the owner's {@linkcode Waker.remote}
   * @returns the waker
   */
  static foreign(remote: RemoteWatchSet): Waker {
    return new Waker(WatchSet.foreign(remote));
  }

  /** Wakes whoever waits on this waker's signals, here or in another isolate, without a signal (they look at what changed). */
  poke(): void {
    this.#set.slot.poke();
  }

  /** What another isolate needs to wait on this waker's signals (plain data; see {@linkcode Waker.foreign}). */
  remote(): RemoteWatchSet {
    return this.#set.remote();
  }

  /**
   * Watches an eventfd under `token`.
   *
   * @param fd the eventfd
   * @param token 0 to {@linkcode MAX_WAKER_TOKEN}
   */
  watchEventfd(fd: number, token: number): void {
    this.#set.watch(fd, token, "eventfd");
    this.#words = Math.max(this.#words, (token >>> 5) + 1);
  }

  /**
   * Watches a socket for hang-up under `token` (one-shot).
   *
   * @param fd the socket
   * @param token 0 to {@linkcode MAX_WAKER_TOKEN}
   */
  watchHangup(fd: number, token: number): void {
    this.#set.watch(fd, token, "hangup");
    this.#hangupToken = token;
    this.#words = Math.max(this.#words, (token >>> 5) + 1);
  }

  /**
   * Watches a socket for data or hang-up under `token` (edge-triggered: a
   * wake per arrival; drain the socket until EAGAIN after each wake).
   *
   * @param fd the socket (non-blocking)
   * @param token 0 to {@linkcode MAX_WAKER_TOKEN}
   */
  watchReadable(fd: number, token: number): void {
    this.#set.watch(fd, token, "readable");
    this.#words = Math.max(this.#words, (token >>> 5) + 1);
  }

  /**
   * Stops watching queue `index`'s eventfd (watched under its index as
   * token): the queue was handed over to a Worker.
   *
   * @param index the queue
   */
  forgetQueue(index: number): void {
    this.#set.unwatch(index);
  }

  /** Lets the program end while a wait is outstanding (for watches that run for the device's lifetime). */
  unref(): void {
    this.#keepAlive = false;
  }

  /** True once the watched socket hung up (checked in shared memory, no system call). */
  get hungUp(): boolean {
    if (!this.#hungUp && !this.#closed && this.#hangupToken >= 0) {
      // Pairs with the helper's seq_cst fetch_or (in the shim).
      if (this.#hangupBit(Atomics.load(this.#pending, this.#hangupToken >>> 5))) this.#hungUp = true;
    }
    return this.#hungUp;
  }

  #hangupBit(word: number): boolean {
    return (word & (1 << (this.#hangupToken & 31))) !== 0;
  }

  /** Clears the fired bits (the loop reaps every queue anyway), latching a hang-up. */
  #clearFired(): void {
    const words = this.#pending;
    for (let w = 0; w < this.#words; w++) {
      if (words[w] === 0) continue;
      const fired = Atomics.exchange(words, w, 0);
      if (this.#hangupToken >>> 5 === w && this.#hangupBit(fired)) this.#hungUp = true;
    }
  }

  /**
   * Resolves once something fired since the last wait (at once if it
   * already has), or once `stop` says so after a wake-up that was not a
   * signal (an owner's {@linkcode Waker.poke}). Only one wait may be
   * outstanding.
   *
   * @param stop looked at before each sleep
   */
  async wait(stop?: () => boolean): Promise<void> {
    if (this.#closed) return;
    if (this.#waiting) throw new Error("Waker.wait: a wait is already outstanding");
    this.#waiting = true;
    const slot = this.#set.slot;
    try {
      for (;;) {
        // The slot's count first, then `signaled`: a signal after this look
        // moves the count, so the wait below returns at once.
        const seen = slot.sequence;
        if (this.#closed || Atomics.load(this.#pending, WAKER_WORDS) !== 0 || stop?.()) break;
        await slot.wait(seen, this.#keepAlive);
      }
    } finally {
      this.#waiting = false;
    }
    if (this.#closed) return; // the shared words are gone with the set
    // Clear `signaled` before clearing the bits (seq_cst): any bit the
    // helper sets after that makes it signal again.
    Atomics.store(this.#pending, WAKER_WORDS, 0);
    this.#clearFired();
  }

  /** Signals sent so far (a statistic). */
  get wakes(): number {
    return this.#set.wakes;
  }

  /** Stops watching and closes every duplicate descriptor; an outstanding wait resolves. */
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    this.#set.destroy(); // gives the relay slot back, which ends a wait
    return Promise.resolve();
  }
}
