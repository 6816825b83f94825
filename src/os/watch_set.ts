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
import { EventRelay, RelaySlot } from "./event_relay.ts";
import { loadShim, requireShim } from "./loader.ts";
import { viewAt } from "./syscalls.ts";

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

/** A watch set as another isolate of this process reaches it: plain data, posted to a Worker. */
export interface RemoteWatchSet {
  /** Address of its fired bits and `signaled` word. */
  readonly address: number;
  /** The owner's relay words. */
  readonly slots: SharedArrayBuffer;
  /** Its slot there. */
  readonly slot: number;
}

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
  /** Where {@linkcode WatchSet.shared} is (for another isolate: {@linkcode WatchSet.foreign}). */
  readonly sharedAddress: number;
  readonly #handle: bigint; // 0n: a set owned by another isolate
  #destroyed = false;

  private constructor(handle: bigint, sharedAddress: number, slot: RelaySlot) {
    this.#handle = handle;
    this.sharedAddress = sharedAddress;
    this.shared = new Uint32Array(viewAt(sharedAddress, (WAKER_WORDS + 1) * 4));
    this.slot = slot;
  }

  /**
   * A set another isolate of this process owns and watches with (a queue
   * handed to a Worker): this side takes its fired bits and waits on its
   * slot; it cannot watch or unwatch, and {@linkcode WatchSet.destroy} only
   * lets go of the view (the owner frees the set).
   *
   * @param remote the owner's {@linkcode WatchSet.remote}
   * @returns the set, as seen from here
   */
  static foreign(remote: RemoteWatchSet): WatchSet {
    return new WatchSet(0n, remote.address, RelaySlot.foreign(remote.slots, remote.slot));
  }

  /** What another isolate needs to use this set (plain data; see {@linkcode WatchSet.foreign}). */
  remote(): RemoteWatchSet {
    return { address: this.sharedAddress, slots: this.slot.buffer, slot: this.slot.index };
  }

  /**
   * Creates a set (starting this isolate's relay, when only the shim's
   * library was loaded so far).
   *
   * @returns the set, watching nothing yet
   */
  static async start(): Promise<WatchSet> {
    await loadShim(); // the relay, when only the library was loaded so far
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
    return new WatchSet(handle, Number(shim.vd_waker_shared(handle)), slot);
  }

  #owned(what: string): void {
    if (this.#handle === 0n) throw new Error(`WatchSet.${what}: this set is another isolate's`);
  }

  /**
   * Watches a duplicate of `fd` (the set keeps its own) under `token`.
   *
   * @param fd a non-blocking eventfd, or a socket
   * @param token 0 to {@linkcode MAX_WAKER_TOKEN}
   * @param kind what to report
   */
  watch(fd: number, token: number, kind: WatchKind): void {
    this.#owned("watch");
    if (!Number.isInteger(token) || token < 0 || token > MAX_WAKER_TOKEN) {
      throw new RangeError(`waker token ${token} out of range`);
    }
    const r = requireShim().vd_waker_watch(this.#handle, fd, token, WATCH_KIND_CODE[kind]);
    if (r < 0) throw new OsError("epoll_ctl", -r, `fd ${fd}`);
  }

  /**
   * Stops watching what was watched under `token` (its duplicates are closed).
   *
   * @param token the token
   * @returns how many descriptors that was
   */
  unwatch(token: number): number {
    this.#owned("unwatch");
    return requireShim().vd_waker_unwatch(this.#handle, token);
  }

  /** Signals sent for this set (a statistic). */
  get wakes(): number {
    if (this.#handle === 0n) return 0;
    return Number(requireShim().vd_waker_wakes(this.#handle));
  }

  /** Stops watching, closes the duplicates and gives the relay slot back (ending any wait on it). */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    const view = this.shared.buffer as ArrayBuffer;
    if (!view.detached) view.transfer(0); // nothing here reads the set from now on
    // Another isolate's set is freed there; here only the slot's waits and timer end.
    if (this.#handle !== 0n) requireShim().vd_waker_destroy(this.#handle);
    this.slot.release();
  }
}
