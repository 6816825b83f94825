/**
 * A queue handed over to another isolate of this process (a Worker), both
 * sides of it. The owner — the isolate that connected the device — keeps the
 * control plane (memory registration, configuration, close); the other side
 * drives the ring, notifies the device and takes its interrupts on its own,
 * with nothing per request crossing threads.
 *
 * What the two sides share is a {@linkcode HandOverControl}: two words of a
 * SharedArrayBuffer. The owner ends the other side's use (it closed the
 * device, or lost the connection); the other side says when it has let go of
 * the memory (after which nothing there can touch it), so that the owner may
 * unmap it. An owner that waited in vain reclaims the hand-over instead and
 * leaves zero-filled memory at the addresses (see `MemfdRegion.retire`), so
 * a late access reads zeros and never faults.
 *
 * @module
 */

import { eventfdNotifier } from "../os/eventfd.ts";
import { doorbell16 } from "../os/mmio.ts";
import type { RemoteWatchSet } from "../os/watch_set.ts";
import type { NotifySpec, QueueHandOver, QueueNotifier } from "./transport.ts";
import { Waker } from "./waker.ts";

/** The words of the control buffer. */
const STATE = 0, HOLDER = 1, WORDS = 2;

/** Values of the STATE word: whether the owner still serves the queue. */
const RUNNING = 0, CLOSED = 1, LOST = 2;
/** Values of the HOLDER word. */
const FREE = 0, ATTACHED = 1, LET_GO = 2, RECLAIMED = 3;

/** Why the owner ended a hand-over. */
export type HandOverEnd = "closed" | "lost";

/** The two words a queue's owner and the isolate it was handed to share. */
export class HandOverControl {
  readonly #words: Int32Array;

  private constructor(buffer: SharedArrayBuffer) {
    this.#words = new Int32Array(buffer, 0, WORDS);
  }

  /** A new control, for the owner. */
  static create(): HandOverControl {
    return new HandOverControl(new SharedArrayBuffer(WORDS * 4));
  }

  /**
   * The control posted by the owner.
   *
   * @param buffer {@linkcode HandOverControl.buffer} of the owner's control
   * @returns the control, as seen from here
   */
  static from(buffer: SharedArrayBuffer): HandOverControl {
    if (!(buffer instanceof SharedArrayBuffer) || buffer.byteLength < WORDS * 4) {
      throw new TypeError("not a queue hand-over's control buffer");
    }
    return new HandOverControl(buffer);
  }

  /** The buffer to post to the other side. */
  get buffer(): SharedArrayBuffer {
    return this.#words.buffer as SharedArrayBuffer;
  }

  /** Whether the owner still serves the queue, or how it ended. */
  get state(): "running" | HandOverEnd {
    const s = Atomics.load(this.#words, STATE);
    return s === RUNNING ? "running" : s === LOST ? "lost" : "closed";
  }

  /**
   * Owner: ends the other side's use (once; a later call changes nothing).
   *
   * @param why the owner closed the device, or lost the connection
   */
  end(why: HandOverEnd): void {
    Atomics.compareExchange(this.#words, STATE, RUNNING, why === "lost" ? LOST : CLOSED);
    Atomics.notify(this.#words, STATE);
  }

  /**
   * Other side: takes the hand-over (a handle is attached once).
   *
   * @returns false when it was taken before, or reclaimed
   */
  attach(): boolean {
    return Atomics.compareExchange(this.#words, HOLDER, FREE, ATTACHED) === FREE;
  }

  /** Other side: says it no longer touches the memory (call after letting go of every view). */
  letGo(): void {
    Atomics.compareExchange(this.#words, HOLDER, ATTACHED, LET_GO);
  }

  /**
   * Other side: calls `listener` once, in a later task, when the owner ends
   * the hand-over; never keeps the program alive.
   *
   * @param listener what to call
   */
  watch(listener: (why: HandOverEnd) => void): void {
    const look = (): void => {
      const s = this.state;
      if (s !== "running") {
        listener(s);
        return;
      }
      const r = Atomics.waitAsync(this.#words, STATE, RUNNING);
      if (r.async) r.value.then(look);
      else queueMicrotask(look);
    };
    queueMicrotask(look);
  }

  /**
   * Owner, after {@linkcode HandOverControl.end}: waits until the other side
   * let go (or never attached), for up to `timeoutMs`, then reclaims the
   * hand-over either way (an attach after that fails).
   *
   * @param timeoutMs how long to wait
   * @returns true when nothing on the other side touches the memory any more
   */
  async settle(timeoutMs: number): Promise<boolean> {
    const w = this.#words;
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const h = Atomics.load(w, HOLDER);
      if (h === LET_GO) return true;
      if (h === RECLAIMED) return false;
      if (h === FREE) {
        // Never attached: now it cannot be.
        if (Atomics.compareExchange(w, HOLDER, FREE, RECLAIMED) === FREE) return true;
        continue;
      }
      if (performance.now() >= deadline) {
        // Still attached: reclaim (or find that it let go in the very last moment).
        return Atomics.compareExchange(w, HOLDER, ATTACHED, RECLAIMED) === LET_GO;
      }
      await new Promise((r) => setTimeout(r, 2));
    }
  }
}

/**
 * Owner side of a handed-over queue: the control, and the interrupt watch
 * that the other side waits on (owned here: stopped and freed in
 * {@linkcode OwnedHandOver.release}).
 */
export class OwnedHandOver implements QueueHandOver {
  readonly notify: NotifySpec;
  readonly interrupts: RemoteWatchSet | undefined;
  readonly control: SharedArrayBuffer;
  readonly #control: HandOverControl;
  readonly #waker: Waker | undefined;
  #letGo: boolean | undefined;
  #released = false;

  private constructor(notify: NotifySpec, control: HandOverControl, waker: Waker | undefined) {
    this.notify = notify;
    this.#control = control;
    this.control = control.buffer;
    this.#waker = waker;
    this.interrupts = waker?.remote();
  }

  /**
   * Hands a queue over: a control, and (for `callFd`) a waker of this
   * isolate's that watches the queue's interrupt for the other side.
   *
   * @param notify how the other side notifies the device
   * @param callFd the eventfd the device signals, to watch; undefined: none (poll mode)
   * @returns the owner's side
   */
  static async create(notify: NotifySpec, callFd: number | undefined): Promise<OwnedHandOver> {
    const waker = callFd === undefined ? undefined : await Waker.forQueues([callFd]);
    return new OwnedHandOver(notify, HandOverControl.create(), waker);
  }

  end(why: HandOverEnd): void {
    this.#control.end(why);
    this.#waker?.poke(); // a completion loop asleep on the interrupt looks at the state
  }

  async settle(timeoutMs: number): Promise<boolean> {
    this.#letGo ??= await this.#control.settle(timeoutMs);
    return this.#letGo;
  }

  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    if (this.#waker === undefined) return;
    if (this.#letGo) await this.#waker.close();
    else this.#waker.forgetQueue(0); // its descriptor goes; the bitmap stays for a view that may linger
  }
}

/**
 * The notifier another isolate makes from a {@linkcode NotifySpec}.
 *
 * @param spec how to notify
 * @returns the notifier
 */
export function notifierFrom(spec: NotifySpec): QueueNotifier {
  if (spec.kind === "eventfd") return { notify: eventfdNotifier(spec.fd) };
  return { notify: doorbell16(BigInt(spec.address), spec.value) };
}
