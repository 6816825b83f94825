/**
 * {@linkcode Waker}: the {@linkcode InterruptSource} of the kernel-backed
 * transports. A waker thread of the OS layer watches each queue's call
 * eventfd under the queue's index as token, and optionally a control socket
 * for hang-up; `wait()` resolves on the thread's wake byte.
 *
 * @module
 */

import { MAX_WAKER_TOKEN, WAKER_WORDS, WakerThread } from "../os/waker_thread.ts";
import type { InterruptSource } from "./transport.ts";

export { MAX_WAKER_TOKEN };

/** Wakes JavaScript on the device's signals and on a socket's hang-up. */
export class Waker implements InterruptSource {
  readonly #thread: WakerThread;
  readonly #pending: Uint32Array; // shared with the thread
  readonly #readBuf = new Uint8Array(64);
  #reading: Promise<number | null> | undefined;
  #hangupToken = -1;
  #words = 0; // words of the bitmap in use (highest token watched)
  #hungUp = false;
  #closed = false;

  private constructor(thread: WakerThread) {
    this.#thread = thread;
    this.#pending = thread.shared;
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
    const waker = new Waker(await WakerThread.start());
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
   * Watches an eventfd under `token`.
   *
   * @param fd the eventfd
   * @param token 0 to {@linkcode MAX_WAKER_TOKEN}
   */
  watchEventfd(fd: number, token: number): void {
    this.#thread.watch(fd, token, "eventfd");
    this.#words = Math.max(this.#words, (token >>> 5) + 1);
  }

  /**
   * Watches a socket for hang-up under `token` (one-shot).
   *
   * @param fd the socket
   * @param token 0 to {@linkcode MAX_WAKER_TOKEN}
   */
  watchHangup(fd: number, token: number): void {
    this.#thread.watch(fd, token, "hangup");
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
    this.#thread.watch(fd, token, "readable");
    this.#words = Math.max(this.#words, (token >>> 5) + 1);
  }

  /** Lets the program end while a wait is outstanding (for watches that run for the device's lifetime). */
  unref(): void {
    this.#thread.conn.unref();
  }

  /** True once the watched socket hung up (checked in shared memory, no system call). */
  get hungUp(): boolean {
    if (!this.#hungUp && this.#hangupToken >= 0) {
      // Pairs with the thread's seq_cst fetch_or.
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
   * already has). Only one wait may be outstanding.
   */
  async wait(): Promise<void> {
    if (this.#closed) return;
    this.#reading ??= this.#thread.conn.read(this.#readBuf);
    try {
      await this.#reading;
    } catch {
      // Closed under us: close() is running.
    } finally {
      this.#reading = undefined;
    }
    // Clear `signaled` before clearing the bits (seq_cst): any bit the
    // thread sets after that makes it write a new wake byte.
    Atomics.store(this.#pending, WAKER_WORDS, 0);
    this.#clearFired();
  }

  /** Wake bytes the thread has written (a statistic). */
  get wakes(): number {
    return this.#thread.wakes;
  }

  /** Stops the thread, closes the socket and every duplicate descriptor. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const reading = this.#reading;
    // An unref'd read still has to settle: let the event loop wait for it.
    this.#thread.conn.ref();
    this.#thread.conn.close();
    await reading?.catch(() => null);
    this.#thread.destroy();
  }
}
