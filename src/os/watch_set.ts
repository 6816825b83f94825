/**
 * A watch set of the shim (a `struct vd_waker`): descriptors watched in this
 * isolate's {@linkcode EventRelay} — eventfds, a socket's hang-up or data —
 * with a bitmap shared with JavaScript that gets a bit per token when one
 * fires, and a relay slot that is notified then.
 *
 * This module owns the set and its relay slot; what the bits mean (queues,
 * hang-ups) is the transport layer's (`src/transport/waker.ts`).
 *
 * @module
 */

import { OsError } from "../errors.ts";
import { EventRelay, type RelaySlot } from "./event_relay.ts";
import { requireShim } from "./loader.ts";

/** Words of the shared bitmap (VD_WAKER_WORDS in shim.c). */
export const WAKER_WORDS = 1024;
/** The largest token a waker accepts. */
export const MAX_WAKER_TOKEN: number = WAKER_WORDS * 32 - 1;

/**
 * What a watch reports: an eventfd's signals (the shim consumes the
 * counter), a socket's hang-up (once), or a socket becoming readable or
 * hung up (edge-triggered: the reader drains it until EAGAIN).
 */
export type WatchKind = "eventfd" | "hangup" | "readable";

const WATCH_KIND_CODE: Readonly<Record<WatchKind, number>> = { eventfd: 0, hangup: 1, readable: 2 };

/** A watch set: descriptors, their fired bits, and the relay slot that is notified. */
export class WatchSet {
  /**
   * Shared with the relay's helper: `WAKER_WORDS` words of fired-token
   * bits, then the `signaled` word (1 from a signal until JavaScript clears
   * it). Take bits with `Atomics.exchange`; clear `signaled` before looking
   * at them.
   */
  readonly shared: Uint32Array;
  /** The relay slot this set signals: wait on it for the next signal. */
  readonly slot: RelaySlot;
  readonly #handle: bigint;
  #destroyed = false;

  private constructor(handle: bigint, shared: Uint32Array, slot: RelaySlot) {
    this.#handle = handle;
    this.shared = shared;
    this.slot = slot;
  }

  /**
   * Creates a set (the shim and its relay must be loaded).
   *
   * @returns the set, watching nothing yet
   */
  static start(): Promise<WatchSet> {
    const relay = EventRelay.current();
    const shim = requireShim();
    const slot = relay.allocate();
    const out = new BigUint64Array(1);
    const r = shim.vd_waker_create(relay.handle, slot.index, new Uint8Array(out.buffer));
    if (r < 0) {
      slot.release();
      throw new OsError("vd_waker_create", -r);
    }
    const handle = out[0];
    const ptr = Deno.UnsafePointer.create(shim.vd_waker_shared(handle))!;
    const shared = new Uint32Array(Deno.UnsafePointerView.getArrayBuffer(ptr, (WAKER_WORDS + 1) * 4));
    return Promise.resolve(new WatchSet(handle, shared, slot));
  }

  /**
   * Watches a duplicate of `fd` (the set keeps its own) under `token`.
   *
   * @param fd a non-blocking eventfd, or a socket
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

  /** Signals sent for this set (a statistic). */
  get wakes(): number {
    return Number(requireShim().vd_waker_wakes(this.#handle));
  }

  /** Stops watching, closes the duplicates and gives the relay slot back (ending any wait on it). */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    requireShim().vd_waker_destroy(this.#handle);
    this.slot.release();
  }
}
