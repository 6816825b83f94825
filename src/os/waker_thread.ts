/**
 * The waker thread of the shim: it sleeps in epoll_wait on duplicates of
 * watched descriptors (eventfds, a socket's hang-up), sets a bit per token
 * in a bitmap shared with JavaScript, and writes one byte to a Unix socket
 * whose other end Deno reads with an ordinary async read — one socket read
 * (~5 µs here) where a thread-safe FFI callback costs ~50 µs and an awaited
 * `nonblocking` call ~80 µs.
 *
 * This module owns the thread and its socket; what the bits mean (queues,
 * hang-ups) is the transport layer's (`src/transport/waker.ts`).
 *
 * @module
 */

import { OsError } from "../errors.ts";
import { requireShim } from "./loader.ts";
import { cString } from "./syscalls.ts";

/** Words of the shared bitmap (VD_WAKER_WORDS in shim.c). */
export const WAKER_WORDS = 1024;
/** The largest token a waker accepts. */
export const MAX_WAKER_TOKEN: number = WAKER_WORDS * 32 - 1;

/**
 * What a watch reports: an eventfd's signals (the thread consumes the
 * counter), a socket's hang-up (once), or a socket becoming readable or
 * hung up (edge-triggered: the reader drains it until EAGAIN).
 */
export type WatchKind = "eventfd" | "hangup" | "readable";

const WATCH_KIND_CODE: Readonly<Record<WatchKind, number>> = { eventfd: 0, hangup: 1, readable: 2 };

/** A running waker thread. */
export class WakerThread {
  /** The socket the thread writes a byte to when something fired (read it to wait). */
  readonly conn: Deno.UnixConn;
  /**
   * Shared with the thread: `WAKER_WORDS` words of fired-token bits, then
   * the `signaled` word (1 while a wake byte is unread). Take bits with
   * `Atomics.exchange`; clear `signaled` before looking at them.
   */
  readonly shared: Uint32Array;
  readonly #handle: bigint;
  #destroyed = false;

  private constructor(handle: bigint, conn: Deno.UnixConn, shared: Uint32Array) {
    this.#handle = handle;
    this.conn = conn;
    this.shared = shared;
  }

  /**
   * Starts a thread. Its socket is reached through a private temporary
   * directory (mode 0700), unlinked as soon as the thread has connected.
   *
   * @returns the running thread
   */
  static async start(): Promise<WakerThread> {
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
      const shared = new Uint32Array(Deno.UnsafePointerView.getArrayBuffer(ptr, (WAKER_WORDS + 1) * 4));
      return new WakerThread(handle, conn, shared);
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
   * Watches a duplicate of `fd` (the thread keeps its own) under `token`.
   *
   * @param fd an eventfd or a socket
   * @param token 0 to {@linkcode MAX_WAKER_TOKEN}
   * @param kind what to report
   */
  watch(fd: number, token: number, kind: WatchKind): void {
    if (!Number.isInteger(token) || token < 0 || token > MAX_WAKER_TOKEN) {
      throw new RangeError(`waker token ${token} out of range`);
    }
    const r = requireShim().vd_waker_watch(this.#handle, fd, token, WATCH_KIND_CODE[kind]);
    if (r < 0) throw new OsError("epoll_ctl", -r, `fd ${fd}`);
  }

  /** Wake bytes the thread has written (a statistic). */
  get wakes(): number {
    return Number(requireShim().vd_waker_wakes(this.#handle));
  }

  /** Stops and joins the thread and closes its duplicates (the caller closes {@linkcode WakerThread.conn} first). */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    const r = requireShim().vd_waker_destroy(this.#handle);
    if (r < 0) throw new OsError("pthread_join", -r);
  }
}
