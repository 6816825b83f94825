/**
 * The event relay: how the device's signals wake this isolate's event loop
 * with nothing but `--allow-ffi` — no socket, no file, no thread-safe
 * callback.
 *
 * The shim keeps one epoll set per isolate (the relay) holding every
 * watched descriptor of every watch set (`watch_set.ts`). One helper Worker
 * per isolate sleeps on it in `vd_relay_wait`, a plain blocking FFI call
 * that blocks the helper's thread, never an event loop. When a descriptor
 * fires, the shim sets the watch's bit in its waker's bitmap and the waker's
 * bit in the relay's `fired` words; the helper takes those and turns each
 * into an `Atomics.notify` on the waker's slot of a `SharedArrayBuffer`,
 * which the waiting code awaits with `Atomics.waitAsync`. A wake-up crosses
 * one thread, as a socket read would (measured: the same ~19 µs here).
 *
 * Why not a thread-safe FFI callback: a foreign thread that calls one runs
 * JavaScript on a runtime that may be torn down under it (at exit, or when a
 * Worker ends), which crashes the process (measured here: 8 of 10 exits with
 * a callback firing). The helper never enters another isolate. Why not an
 * awaited `nonblocking` call: it keeps the program alive and cannot be made
 * not to, while watches that last as long as a device must not. The helper
 * is unref'd; a wait that must keep the program alive holds a timer for as
 * long as it waits (see {@linkcode RelaySlot.wait}).
 *
 * @module
 */

import { OsError, ShimLoadError } from "../errors.ts";
import type { Shim } from "./symbols.ts";

/** Slots per isolate (VD_RELAY_SLOTS in shim.c): one per waker. */
export const RELAY_SLOTS = 1024;

/**
 * The helper Worker's whole program (a CommonJS script run with `eval`):
 * wait for signals, take the fired bits, notify their slots.
 */
const HELPER_SOURCE = `"use strict";
const { parentPort, workerData } = require("node:worker_threads");
const wait = new Deno.UnsafeFnPointer(Deno.UnsafePointer.create(workerData.wait), {
  parameters: ["u64"],
  result: "i32",
});
const fired = new Uint32Array(
  Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(workerData.handle), workerData.words * 4),
);
const slots = new Int32Array(workerData.slots);
parentPort.postMessage("ready");
while (wait.call(workerData.handle) >= 0) {
  for (let w = 0; w < fired.length; w++) {
    if (fired[w] === 0) continue;
    let bits = Atomics.exchange(fired, w, 0);
    while (bits !== 0) {
      const b = 31 - Math.clz32(bits);
      bits = (bits & ~(1 << b)) >>> 0;
      Atomics.add(slots, w * 32 + b, 1);
      Atomics.notify(slots, w * 32 + b);
    }
  }
}
`;

let relay: EventRelay | undefined;

/**
 * Starts this isolate's relay (the loader does, right after loading the
 * shim): a helper Worker that never keeps the program alive and lasts as
 * long as the isolate. Resolves once the helper runs, so that everything it
 * holds exists before the caller goes on.
 *
 * @param shim the loaded shim
 */
export async function startEventRelay(shim: Shim): Promise<void> {
  if (relay) return;
  const out = new BigUint64Array(1);
  const r = shim.vd_relay_create(new Uint8Array(out.buffer));
  if (r < 0) throw new OsError("vd_relay_create", -r);
  const handle = out[0];
  const slots = new Int32Array(new SharedArrayBuffer(RELAY_SLOTS * 4));
  try {
    const { Worker } = await import("node:worker_threads");
    const worker = new Worker(HELPER_SOURCE, {
      eval: true,
      // The helper needs no environment; by default node:worker_threads copies process.env, which asks for env
      // access (a prompt in a terminal, although --allow-ffi is all a program using a device needs).
      env: {},
      workerData: {
        handle,
        wait: shim.vd_relay_wait_address(),
        words: RELAY_SLOTS / 32,
        slots: slots.buffer,
      },
    });
    await new Promise<void>((resolve, reject) => {
      worker.once("message", () => resolve());
      worker.once("error", reject);
      worker.once("exit", (code) => reject(new Error(`it exited with status ${code}`)));
    });
    worker.removeAllListeners();
    worker.unref();
  } catch (cause) {
    shim.vd_relay_stop(handle); // never freed: a helper that did start may still look at it
    throw new ShimLoadError(`cannot start the event relay's helper Worker: ${(cause as Error).message}`, { cause });
  }
  relay = new EventRelay(handle, slots);
}

/** This isolate's relay: its helper Worker and its slots. */
export class EventRelay {
  /** The relay's handle in the shim (a `struct vd_relay *`). */
  readonly handle: bigint;
  readonly #slots: Int32Array;
  readonly #free: number[] = [];
  #next = 0;

  /**
   * This isolate's relay.
   *
   * @returns the relay {@linkcode startEventRelay} started
   */
  static current(): EventRelay {
    if (!relay) throw new ShimLoadError("the event relay is not started: await loadShim() first");
    return relay;
  }

  /**
   * @param handle the relay in the shim
   * @param slots the words the helper notifies
   */
  constructor(handle: bigint, slots: Int32Array) {
    this.handle = handle;
    this.#slots = slots;
  }

  /**
   * Takes a slot for a waker: a new one while there are, then the one free
   * the longest.
   *
   * @returns the slot, to pass to the waker and to wait on
   */
  allocate(): RelaySlot {
    const index = this.#next < RELAY_SLOTS ? this.#next++ : this.#free.shift() ?? -1;
    if (index < 0) {
      throw new OsError("vd_waker_create", 24, /* EMFILE */ `more than ${RELAY_SLOTS} wakers in one isolate`);
    }
    return new RelaySlot(this.#slots, index, () => this.#free.push(index));
  }
}

const KEEP_ALIVE_MS = 2 ** 31 - 1;

/** One waker's word in the relay: what its waits await. */
export class RelaySlot {
  /**
   * The same slot, in another isolate of this process (a Worker): `slots` is
   * the relay's SharedArrayBuffer, posted there. Its waits work as here;
   * releasing it gives nothing back (the relay's owner does that).
   *
   * @param slots the relay's SharedArrayBuffer
   * @param index the slot
   * @returns the slot
   */
  static foreign(slots: SharedArrayBuffer, index: number): RelaySlot {
    if (!Number.isInteger(index) || index < 0 || index >= RELAY_SLOTS || slots.byteLength < RELAY_SLOTS * 4) {
      throw new RangeError(`relay slot ${index} out of range`);
    }
    return new RelaySlot(new Int32Array(slots), index, () => {});
  }

  /** The relay's words, to post to another isolate (see {@linkcode RelaySlot.foreign}). */
  get buffer(): SharedArrayBuffer {
    return this.#slots.buffer as SharedArrayBuffer;
  }

  /** The slot's index (the waker's bit in the relay). */
  readonly index: number;
  readonly #slots: Int32Array;
  readonly #release: () => void;
  #keepAlive: ReturnType<typeof setInterval> | undefined;
  #wake: (() => void) | undefined;
  #released = false;

  /**
   * @param slots the relay's words
   * @param index this slot
   * @param release gives the slot back
   */
  constructor(slots: Int32Array, index: number, release: () => void) {
    this.#slots = slots;
    this.index = index;
    this.#release = release;
  }

  /** The slot's count now: read it before looking at what fired, then {@linkcode RelaySlot.wait} for a change. */
  get sequence(): number {
    return Atomics.load(this.#slots, this.index);
  }

  /**
   * Resolves once the slot's count differs from `seen` (at once if it does
   * already), or on {@linkcode RelaySlot.interrupt}.
   *
   * @param seen the count read before looking
   * @param keepAlive whether the program must stay alive while this waits
   */
  async wait(seen: number, keepAlive: boolean): Promise<void> {
    const r = Atomics.waitAsync(this.#slots, this.index, seen);
    if (!r.async) return;
    // The wait's promise is settled by a task V8 posts, which does not keep
    // Deno's event loop alive: an interrupt settles this one directly.
    const woken = Promise.withResolvers<void>();
    this.#wake = woken.resolve;
    r.value.then(() => woken.resolve());
    if (!keepAlive) {
      await woken.promise;
      return;
    }
    // Nor does the helper Worker (unref'd): a timer does, for as long as
    // this waits.
    const timer = this.#keepAlive ??= setInterval(() => {}, KEEP_ALIVE_MS);
    Deno.refTimer(timer);
    try {
      await woken.promise;
    } finally {
      if (this.#keepAlive !== undefined) Deno.unrefTimer(this.#keepAlive);
    }
  }

  /**
   * Moves the slot's count and wakes its waiters, in whichever isolate they
   * are (a wake-up that is not a signal: they look and find nothing fired).
   */
  poke(): void {
    Atomics.add(this.#slots, this.index, 1);
    Atomics.notify(this.#slots, this.index);
  }

  /** Ends a wait now (a spurious wake for it: the waiter looks again). */
  interrupt(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
    Atomics.notify(this.#slots, this.index); // and V8 lets go of its waiter
  }

  /** Ends every wait and gives the slot back (after its waker is gone). */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    if (this.#keepAlive !== undefined) clearInterval(this.#keepAlive);
    this.#keepAlive = undefined;
    this.interrupt();
    this.#release();
  }
}
