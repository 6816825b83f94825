/**
 * The promise API's backlog: requests that found their queue full wait here,
 * in order, and start as completions make room. (The batch API never waits:
 * it throws `QueueFullError`.)
 *
 * @module
 */

import type { VirtioError } from "../errors.ts";

/** Settles a promise-API request. */
export interface Deferred {
  /** Fulfils it. */
  resolve(value: unknown): void;
  /** Rejects it. */
  reject(reason: unknown): void;
}

/** A promise-API request waiting for room in the queue. */
export interface Backlogged {
  /** VIRTIO_BLK_T_*. */
  readonly type: number;
  /** As given by the caller. */
  readonly offset: number | bigint;
  /** As given by the caller. */
  readonly buffers: Uint8Array | readonly Uint8Array[] | undefined;
  /** As given by the caller. */
  readonly length: number | bigint;
  /** Write-zeroes: may unmap. */
  readonly unmap: boolean;
  /** Its promise. */
  readonly deferred: Deferred;
}

/** Requests waiting, oldest first. */
export class PromiseBacklog {
  readonly #items: Backlogged[] = [];

  /** Requests waiting. */
  get length(): number {
    return this.#items.length;
  }

  /**
   * Adds a request at the end.
   *
   * @param item the request
   */
  push(item: Backlogged): void {
    this.#items.push(item);
  }

  /**
   * Starts waiting requests, oldest first, for as long as `start` finds room
   * for them (it returns -1 when there is none). One that `start` throws for
   * is rejected with what it threw, and the next is tried.
   *
   * @param start adds one request to the queue
   */
  pump(start: (b: Backlogged) => number): void {
    const items = this.#items;
    while (items.length > 0) {
      const b = items[0];
      let id: number;
      try {
        id = start(b);
      } catch (e) {
        items.shift();
        b.deferred.reject(e);
        continue;
      }
      if (id < 0) return;
      items.shift();
    }
  }

  /**
   * Rejects every waiting request.
   *
   * @param error why
   */
  rejectAll(error: VirtioError): void {
    for (const b of this.#items.splice(0)) b.deferred.reject(error);
  }
}
