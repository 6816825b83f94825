/**
 * The waker: wakes the Deno event loop when an eventfd fires or a socket
 * hangs up, at the cost of one socket read (~5 µs here, where a thread-safe
 * FFI callback costs ~50 µs and an awaited `nonblocking` call ~80 µs).
 *
 * A shim thread sleeps in epoll_wait on duplicates of the watched
 * descriptors, sets a bit per token in a bitmap shared with JavaScript, and
 * writes one byte to a Unix socket whose other end Deno reads with an
 * ordinary async read. The socket is reached through a private temporary
 * directory (mode 0700) and unlinked as soon as the thread has connected.
 *
 * @module
 */

import { OsError } from "../src/errors.ts";
import { requireShim } from "./loader.ts";
import { cString } from "./syscalls.ts";

const WORDS = 1024; // VD_WAKER_WORDS in shim.c
/** The largest token a waker accepts. */
export const MAX_WAKER_TOKEN = WORDS * 32 - 1;

/**
 * Wakes JavaScript on eventfd signals and socket hang-ups.
 *
 * Create it, {@linkcode Waker.watchEventfd} / {@linkcode Waker.watchHangup},
 * then `await waker.wait()` and read {@linkcode Waker.takeFired} /
 * {@linkcode Waker.hasFired}.
 */
export class Waker {
  readonly #handle: bigint;
  readonly #conn: Deno.UnixConn;
  readonly #pending: Uint32Array; // shared with the thread
  readonly #signaledIndex = WORDS;
  readonly #sticky = new Uint32Array(WORDS); // bits taken from the shared map, not yet consumed
  readonly #readBuf = new Uint8Array(64);
  #reading: Promise<number | null> | undefined;
  #hangupToken = -1;
  #words = 0; // words of the bitmap in use (highest token watched)
  #hungUp = false;
  #refed = true;
  #closed = false;

  private constructor(handle: bigint, conn: Deno.UnixConn, pending: Uint32Array) {
    this.#handle = handle;
    this.#conn = conn;
    this.#pending = pending;
  }

  /**
   * Starts a waker thread.
   *
   * @returns the waker
   */
  static async create(): Promise<Waker> {
    const shim = requireShim();
    const dir = await Deno.makeTempDir({ prefix: "virtio-waker-" });
    const path = `${dir}/s`;
    let listener: Deno.UnixListener | undefined;
    let conn: Deno.UnixConn | undefined;
    let handle = 0n;
    try {
      listener = Deno.listen({ transport: "unix", path });
      const accepting = listener.accept();
      const p = cString(path);
      const out = new BigUint64Array(1);
      const r = shim.vd_waker_create(p, p.byteLength - 1, new Uint8Array(out.buffer));
      if (r < 0) {
        listener.close();
        await accepting.catch(() => {});
        throw new OsError("vd_waker_create", -r);
      }
      handle = out[0];
      conn = await accepting;
      const addr = Number(shim.vd_waker_shared(handle));
      const ptr = Deno.UnsafePointer.create(BigInt(addr))!;
      const pending = new Uint32Array(Deno.UnsafePointerView.getArrayBuffer(ptr, (WORDS + 1) * 4));
      return new Waker(handle, conn, pending);
    } catch (e) {
      conn?.close();
      if (handle !== 0n) shim.vd_waker_destroy(handle);
      throw e;
    } finally {
      try {
        listener?.close();
      } catch { /* already closed */ }
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
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
  static async forQueues(
    callFds: readonly number[],
    hangup?: { fd: number; token: number },
  ): Promise<Waker> {
    const waker = await Waker.create();
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
   * Watches an eventfd under `token` (the waker keeps a duplicate of it).
   *
   * @param fd the eventfd
   * @param token 0 to {@linkcode MAX_WAKER_TOKEN}
   */
  watchEventfd(fd: number, token: number): void {
    this.#watch(fd, token, 0);
  }

  /**
   * Watches a socket for hang-up under `token` (one-shot).
   *
   * @param fd the socket
   * @param token 0 to {@linkcode MAX_WAKER_TOKEN}
   */
  watchHangup(fd: number, token: number): void {
    this.#hangupToken = token;
    this.#watch(fd, token, 1);
  }

  #watch(fd: number, token: number, kind: number): void {
    if (!Number.isInteger(token) || token < 0 || token > MAX_WAKER_TOKEN) {
      throw new RangeError(`waker token ${token} out of range`);
    }
    const r = requireShim().vd_waker_watch(this.#handle, fd, token, kind);
    if (r < 0) throw new OsError("epoll_ctl", -r, `fd ${fd}`);
    this.#words = Math.max(this.#words, (token >>> 5) + 1);
  }

  /** True once the watched socket hung up (checked in shared memory, no system call). */
  get hungUp(): boolean {
    if (!this.#hungUp && this.#hangupToken >= 0) {
      const t = this.#hangupToken;
      const w = t >>> 5, bit = 1 << (t & 31);
      // Acquire: pairs with the thread's seq_cst fetch_or.
      if (((Atomics.load(this.#pending, w) | this.#sticky[w]) & bit) !== 0) this.#hungUp = true;
    }
    return this.#hungUp;
  }

  /**
   * Moves the fired bits out of shared memory and reports whether `token` fired
   * since it was last consumed (consuming it).
   *
   * @param token the token
   * @returns true if it fired
   */
  takeFired(token: number): boolean {
    this.#collect();
    const w = token >>> 5, bit = 1 << (token & 31);
    const was = (this.#sticky[w] & bit) !== 0;
    this.#sticky[w] &= ~bit;
    return was;
  }

  #collect(): void {
    const words = this.#pending;
    for (let w = 0; w < this.#words; w++) {
      if (words[w] !== 0) this.#sticky[w] |= Atomics.exchange(words, w, 0);
    }
    this.hungUp;
  }

  /**
   * Resolves once something fired since the last wait (at once if it
   * already has). Only one wait may be outstanding.
   */
  async wait(): Promise<void> {
    if (this.#closed) return;
    this.#reading ??= this.#conn.read(this.#readBuf);
    try {
      await this.#reading;
    } catch {
      // Closed under us: close() is running.
    } finally {
      this.#reading = undefined;
    }
    // Clear `signaled` before looking at the bits (seq_cst): any bit the
    // thread sets after our look makes it write a new wake byte.
    Atomics.store(this.#pending, this.#signaledIndex, 0);
    this.#collect();
  }

  /** Keeps the event loop alive while a wait is outstanding. */
  ref(): void {
    if (!this.#refed && !this.#closed) {
      this.#refed = true;
      this.#conn.ref();
    }
  }

  /** Lets the process exit while a wait is outstanding. */
  unref(): void {
    if (this.#refed && !this.#closed) {
      this.#refed = false;
      this.#conn.unref();
    }
  }

  /** Wake bytes the thread has written (a statistic). */
  get wakes(): number {
    return Number(requireShim().vd_waker_wakes(this.#handle));
  }

  /** Stops the thread, closes the socket and every duplicate descriptor. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const reading = this.#reading;
    this.#conn.close();
    await reading?.catch(() => null);
    const r = requireShim().vd_waker_destroy(this.#handle);
    if (r < 0) throw new OsError("pthread_join", -r);
  }
}
