/**
 * The events of a device, typed: {@linkcode VirtioBlkEventMap} names them,
 * and {@linkcode VirtioBlkEvents} (the `EventTarget` `VirtioBlk` extends)
 * gives `addEventListener` and `removeEventListener` their types.
 *
 * @module
 */

import type { ConfigChangeDetail } from "./config_watch.ts";
import type { DisconnectDetail, ReconnectDetail } from "./reconnect.ts";

/** The events a `VirtioBlk` dispatches. */
export interface VirtioBlkEventMap {
  /**
   * The device changed its configuration — a volume grown or shrunk, the
   * write cache switched. Dispatched after `capacity`, `config` and the
   * request limits were updated; `detail` has the new configuration and the
   * previous capacity.
   */
  configchange: CustomEvent<ConfigChangeDetail>;
  /**
   * With `reconnect`: the back-end hung up. Requests in flight are kept
   * (`detail.inFlight`) and the driver is reconnecting; promise-API
   * requests wait, the batch API refuses new ones (`ERR_RECONNECTING`).
   */
  disconnect: CustomEvent<DisconnectDetail>;
  /** With `reconnect`: the back-end is back and `detail.resubmitted` requests went to it again. */
  reconnect: CustomEvent<ReconnectDetail>;
}

/** An `EventTarget` whose listeners know the events of {@linkcode VirtioBlkEventMap}. */
export class VirtioBlkEvents extends EventTarget {
  /**
   * Listens for an event of {@linkcode VirtioBlkEventMap}.
   *
   * @param type the event's name
   * @param listener its handler
   * @param options as for any `EventTarget`
   */
  override addEventListener<K extends keyof VirtioBlkEventMap>(
    type: K,
    listener: (this: VirtioBlkEvents, event: VirtioBlkEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  /**
   * Listens for an event by name.
   *
   * @param type the event's name
   * @param listener its handler
   * @param options as for any `EventTarget`
   */
  override addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  override addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null | ((event: never) => void),
    options?: boolean | AddEventListenerOptions,
  ): void {
    super.addEventListener(type, listener as EventListenerOrEventListenerObject | null, options);
  }

  /**
   * Stops listening for an event of {@linkcode VirtioBlkEventMap}.
   *
   * @param type the event's name
   * @param listener the handler given to addEventListener
   * @param options as for any `EventTarget`
   */
  override removeEventListener<K extends keyof VirtioBlkEventMap>(
    type: K,
    listener: (this: VirtioBlkEvents, event: VirtioBlkEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  /**
   * Stops listening for an event by name.
   *
   * @param type the event's name
   * @param listener the handler given to addEventListener
   * @param options as for any `EventTarget`
   */
  override removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
  override removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null | ((event: never) => void),
    options?: boolean | EventListenerOptions,
  ): void {
    super.removeEventListener(type, listener as EventListenerOrEventListenerObject | null, options);
  }
}
