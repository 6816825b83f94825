/**
 * The ready list of a queue's batch API: completions reaped by the
 * completion loop (for promise requests' neighbours) and not yet handed to
 * the caller's `poll()` or iterator. A ring of `capacity` entries
 * (a power of two) over preallocated arrays: pushing and popping allocate
 * nothing.
 *
 * @module
 */

import type { VirtioError } from "../errors.ts";

/** Completions waiting for the caller, oldest first. */
export class ReadyList {
  readonly #ctx: unknown[];
  readonly #err: (VirtioError | undefined)[];
  readonly #mask: number;
  #head = 0;
  #count = 0;

  /**
   * Creates the instance.
   *
   * @param capacity entries (a power of two)
   */
  constructor(capacity: number) {
    this.#ctx = new Array(capacity).fill(undefined);
    this.#err = new Array(capacity).fill(undefined);
    this.#mask = capacity - 1;
  }

  /** Entries waiting. */
  get count(): number {
    return this.#count;
  }

  /**
   * Appends a completion (the caller keeps the count within the capacity).
   *
   * @param context the request's context
   * @param error its error, or undefined
   */
  push(context: unknown, error: VirtioError | undefined): void {
    const tail = (this.#head + this.#count) & this.#mask;
    this.#ctx[tail] = context;
    this.#err[tail] = error;
    this.#count++;
  }

  /** The oldest entry's context (read it, then {@linkcode ReadyList.drop}). */
  get headContext(): unknown {
    return this.#ctx[this.#head];
  }

  /** The oldest entry's error. */
  get headError(): VirtioError | undefined {
    return this.#err[this.#head];
  }

  /** Removes the oldest entry. */
  drop(): void {
    const h = this.#head;
    this.#ctx[h] = undefined;
    this.#err[h] = undefined;
    this.#head = (h + 1) & this.#mask;
    this.#count--;
  }
}
