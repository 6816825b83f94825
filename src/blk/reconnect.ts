/**
 * Riding out a back-end restart (vhost-user by path, `reconnect` option):
 * when the back-end hangs up, the queues stop using their rings and hand
 * over every request still in flight; the driver connects again with
 * backoff until the deadline, checks that the device is the same, sets up
 * fresh rings over the same memory, and submits the requests again in
 * their original submission order. Block reads and writes are idempotent at
 * the device, and the order of requests in flight together was never
 * defined, so a resubmission is a correct execution of the same requests.
 *
 * Flushes keep their meaning: a flush that completed before the crash stays
 * completed; one in flight is resubmitted only after every request
 * submitted before it has completed again on the new connection.
 *
 * The steps that touch the device (dropping the old connection, one
 * attempt) are the device facade's; this module owns the policy, the order
 * and the bookkeeping.
 *
 * @module
 */

import { ConnectionLostError, IncompatibleDeviceError, type VirtioError } from "../errors.ts";
import type { ReconnectOptions } from "./options.ts";
import type { InFlightRequest, QueueEngine } from "./queue_engine.ts";
import { VIRTIO_BLK_T_FLUSH } from "./spec.ts";

/** The `detail` of a `"disconnect"` event. */
export interface DisconnectDetail {
  /** Why the connection ended. */
  readonly error: VirtioError;
  /** Requests kept for resubmission. */
  readonly inFlight: number;
}

/** The `detail` of a `"reconnect"` event. */
export interface ReconnectDetail {
  /** Requests submitted again on the new connection. */
  readonly resubmitted: number;
  /** Connection attempts it took. */
  readonly attempts: number;
  /** From the hang-up to the new connection, in milliseconds. */
  readonly downtimeMs: number;
}

/** The connection's state and its history of restarts. */
export interface ConnectionStats {
  /** `"connected"`, `"reconnecting"`, `"lost"` (gave up, or the device came back different) or `"closed"`. */
  readonly state: "connected" | "reconnecting" | "lost" | "closed";
  /** Reconnects that succeeded. */
  readonly reconnects: number;
  /** Requests resubmitted over all of them. */
  readonly resubmitted: number;
  /** Connection attempts over all of them. */
  readonly attempts: number;
  /** The downtime of the last reconnect, in milliseconds. */
  readonly lastDowntimeMs: number | undefined;
  /** The longest downtime, in milliseconds. */
  readonly longestDowntimeMs: number;
}

/** What the device facade does for a reconnect. */
export interface ReconnectSteps {
  /** Releases the lost connection: completion loop, interrupt source, transport. */
  drop(): Promise<void>;
  /**
   * One attempt: connect, check the device, set up fresh rings over the same
   * memory and resume the queues on them. Throws on failure
   * (`IncompatibleDeviceError` ends the reconnect), and must release what it
   * opened when `wanted()` is false once it is ready to commit.
   */
  attempt(replyTimeoutMs: number, wanted: () => boolean): Promise<void>;
  /** Dispatches an event on the device. */
  dispatch(event: Event): void;
  /** Called when the reconnect gave up: the device is lost with `error`. */
  lost(error: VirtioError): void;
}

/** Longest wait between attempts. */
const MAX_BACKOFF_MS = 1000;
/** Longest an attempt may wait for one reply (a back-end that accepts but does not answer). */
const MAX_ATTEMPT_REPLY_MS = 3000;

/** Runs reconnects for one device. */
export class Reconnector {
  readonly #engines: readonly QueueEngine<unknown>[];
  readonly #options: Required<ReconnectOptions>;
  readonly #steps: ReconnectSteps;
  #state: ConnectionStats["state"] = "connected";
  #generation = 0; // one per disconnect: a run that is no longer current stops
  #pending: InFlightRequest[] = []; // taken off the old rings, not yet resubmitted, by submission order
  #run: Promise<void> = Promise.resolve();
  #wakeSleep: (() => void) | undefined;
  #deadline: ReturnType<typeof setTimeout> | undefined;
  #reconnects = 0;
  #resubmitted = 0;
  #attempts = 0;
  #lastDowntimeMs: number | undefined;
  #longestDowntimeMs = 0;

  /**
   * Creates the reconnector of a device.
   *
   * @param engines the device's queues
   * @param options timeout, backoff, shrink policy
   * @param steps the facade's part
   */
  constructor(engines: readonly QueueEngine<unknown>[], options: Required<ReconnectOptions>, steps: ReconnectSteps) {
    this.#engines = engines;
    this.#options = options;
    this.#steps = steps;
  }

  /** The connection's state. */
  get state(): ConnectionStats["state"] {
    return this.#state;
  }

  /** The state and the history of restarts. */
  stats(): ConnectionStats {
    return {
      state: this.#state,
      reconnects: this.#reconnects,
      resubmitted: this.#resubmitted,
      attempts: this.#attempts,
      lastDowntimeMs: this.#lastDowntimeMs,
      longestDowntimeMs: this.#longestDowntimeMs,
    };
  }

  /**
   * The back-end hung up: stops the queues, keeps their requests, and starts
   * reconnecting (synchronously up to the first wait, so no request slips
   * onto a dead ring after this returns).
   *
   * @param why the hang-up, for the disconnect event
   */
  begin(why: ConnectionLostError): void {
    if (this.#state !== "connected") return;
    this.#state = "reconnecting";
    const generation = ++this.#generation;
    for (const e of this.#engines) e.pause();
    const taken = this.#engines.flatMap((e) => e.takeInFlight());
    this.#pending = [...this.#pending, ...taken].sort((a, b) => a.seq - b.seq);
    const inFlight = this.#pending.length;
    const t0 = performance.now();
    queueMicrotask(() => this.#steps.dispatch(new CustomEvent("disconnect", { detail: { error: why, inFlight } })));
    this.#deadline = setTimeout(() => {
      this.#giveUp(
        new ConnectionLostError(
          `the vhost-user back-end did not come back within ${this.#options.timeoutMs} ms ` +
            `(reconnect.timeoutMs): ${inFlight} requests in flight and every one waiting fail`,
        ),
      );
    }, this.#options.timeoutMs);
    const previous = this.#run;
    this.#run = previous.then(() => this.#reconnect(generation, t0));
  }

  async #reconnect(generation: number, t0: number): Promise<void> {
    const current = () => generation === this.#generation && this.#state === "reconnecting";
    try {
      await this.#steps.drop();
    } catch {
      // The old connection is gone anyway; what matters is the new one.
    }
    let backoff = this.#options.backoffMs;
    let attempts = 0;
    while (current()) {
      attempts++;
      this.#attempts++;
      const left = t0 + this.#options.timeoutMs - performance.now();
      try {
        await this.#steps.attempt(Math.max(100, Math.min(MAX_ATTEMPT_REPLY_MS, left)), current);
        if (!current()) return;
        break;
      } catch (e) {
        if (e instanceof IncompatibleDeviceError) {
          this.#giveUp(e);
          return;
        }
      }
      if (!current()) return;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, backoff);
        this.#wakeSleep = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.#wakeSleep = undefined;
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    }
    if (!current()) return;
    clearTimeout(this.#deadline);
    this.#deadline = undefined;
    this.#state = "connected";
    const downtimeMs = performance.now() - t0;
    const resubmitted = await this.#resubmit(generation);
    this.#reconnects++;
    this.#lastDowntimeMs = downtimeMs;
    this.#longestDowntimeMs = Math.max(this.#longestDowntimeMs, downtimeMs);
    this.#steps.dispatch(new CustomEvent("reconnect", { detail: { resubmitted, attempts, downtimeMs } }));
  }

  /**
   * Submits the kept requests again, in submission order; a flush waits
   * until everything before it has completed. Stops (keeping the rest) when
   * the new connection is lost meanwhile.
   */
  async #resubmit(generation: number): Promise<number> {
    const engines = this.#engines;
    const current = () => generation === this.#generation && this.#state === "connected";
    let n = 0;
    let sinceFlush = 0; // resubmitted since the last flush went out
    while (this.#pending.length > 0) {
      const r = this.#pending[0];
      if (r.type === VIRTIO_BLK_T_FLUSH && sinceFlush > 0) {
        for (const e of engines) e.submit();
        await this.#quiesce(current);
        if (!current()) return n;
        sinceFlush = 0;
      }
      this.#pending.shift();
      engines[r.queue].resubmit(r);
      n++;
      this.#resubmitted++;
      if (r.type !== VIRTIO_BLK_T_FLUSH) sinceFlush++;
    }
    for (const e of engines) {
      e.submit();
      e.pumpBacklog();
    }
    return n;
  }

  /** Waits until every queue has completed all it was given (or the connection changes). */
  async #quiesce(current: () => boolean): Promise<void> {
    for (let turn = 0; current(); turn++) {
      let busy = false;
      for (const e of this.#engines) {
        e.drain();
        if (!e.paused && e.error === undefined && e.ring.inFlight > 0) busy = true;
      }
      if (!busy) return;
      await new Promise((r) => (turn < 1000 ? setImmediate(r) : setTimeout(r, 1)));
    }
  }

  /** Fails every kept and waiting request with `error`; the device is lost. */
  #giveUp(error: VirtioError): void {
    if (this.#state === "lost" || this.#state === "closed") return;
    this.#state = "lost";
    this.#generation++;
    this.#stopTimers();
    this.#rejectPending(error);
    this.#steps.lost(error);
  }

  #rejectPending(error: VirtioError): void {
    const pending = this.#pending;
    this.#pending = [];
    for (const r of pending) this.#engines[r.queue].rejectTaken(r, error);
  }

  #stopTimers(): void {
    if (this.#deadline !== undefined) clearTimeout(this.#deadline);
    this.#deadline = undefined;
    this.#wakeSleep?.();
  }

  /**
   * Stops reconnecting for good (the device is closing): kept requests fail
   * with `error`; resolves once no attempt is under way.
   *
   * @param error what the kept requests fail with
   */
  async close(error: VirtioError): Promise<void> {
    if (this.#state !== "lost") this.#state = "closed";
    this.#generation++;
    this.#stopTimers();
    this.#rejectPending(error);
    await this.#run;
  }
}
