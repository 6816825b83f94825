/**
 * Following the device's configuration at run time (virtio 1.2, 3.2.1): on
 * each change notification from the transport — or an explicit
 * `refreshConfig()` — the config space is read again, checked, compared
 * with what the driver holds, and, when it differs, handed to the device
 * facade, which updates its capacity and limits and dispatches
 * `"configchange"`.
 *
 * Notifications coalesce: while a read runs, any number of new ones cause
 * one more read after it, so the last state is always the one seen, and a
 * burst of 50 resizes costs at most a few reads. Reads are serialised, so
 * events arrive in order. A failed read or an invalid config (a device
 * that writes garbage) changes nothing and is counted.
 *
 * @module
 */

import type { BackendChannelStats, ConfigChangeSignal } from "../transport/transport.ts";
import { parseBlkConfig, type VirtioBlkConfig } from "./config.ts";

/** The `detail` of a `"configchange"` event. */
export interface ConfigChangeDetail {
  /** The configuration now in force. */
  readonly config: VirtioBlkConfig;
  /** The configuration before the change. */
  readonly previousConfig: VirtioBlkConfig;
  /** The capacity before the change, in bytes. */
  readonly previousCapacity: bigint;
}

/** How the driver follows configuration changes, and what it saw so far. */
export interface ConfigWatchStats {
  /** How the device signals changes (`"none"`: it cannot; only `refreshConfig()` sees them). */
  readonly signal: ConfigChangeSignal;
  /** Change notifications received from the device. */
  readonly notifications: number;
  /** `"configchange"` events dispatched. */
  readonly changes: number;
  /** Re-reads that found the configuration as it was (a spurious or repeated notification). */
  readonly unchanged: number;
  /** Re-reads that failed, or found a configuration that does not parse (nothing was changed). */
  readonly errors: number;
  /** The last such failure, for humans. */
  readonly lastError: string | undefined;
  /** vhost-user: what the back-end sent on its request channel, and whether it is open. */
  readonly channel: BackendChannelStats | undefined;
}

/** Re-reads and applies the configuration on notifications, in order and coalesced. */
export class ConfigWatch {
  readonly #read: () => Promise<Uint8Array>;
  readonly #features: bigint;
  readonly #apply: (next: VirtioBlkConfig, previous: VirtioBlkConfig) => void;
  readonly #channel: () => BackendChannelStats | undefined;
  #current: VirtioBlkConfig;
  #bytes: Uint8Array | undefined; // the raw bytes #current came from
  #tail: Promise<void> = Promise.resolve();
  #queued = false;
  #closed = false;
  signal: ConfigChangeSignal = "none";
  #notifications = 0;
  #changes = 0;
  #unchanged = 0;
  #errors = 0;
  #lastError: string | undefined;

  /**
   * Creates the watch over the configuration read at connect.
   *
   * @param read reads the whole config space (`VIRTIO_BLK_CONFIG_SIZE` bytes)
   * @param features the negotiated features (which fields are valid)
   * @param current the configuration read at connect
   * @param apply takes a changed configuration (called in order, never concurrently)
   * @param channel the transport's back-end channel statistics, if it has a channel
   */
  constructor(
    read: () => Promise<Uint8Array>,
    features: bigint,
    current: VirtioBlkConfig,
    apply: (next: VirtioBlkConfig, previous: VirtioBlkConfig) => void,
    channel: () => BackendChannelStats | undefined = () => undefined,
  ) {
    this.#channel = channel;
    this.#read = read;
    this.#features = features;
    this.#current = current;
    this.#apply = apply;
  }

  /** The configuration in force. */
  get current(): VirtioBlkConfig {
    return this.#current;
  }

  /** The transport's notification: schedules a re-read (one, however many arrive while one waits). */
  notify(): void {
    if (this.#closed) return;
    this.#notifications++;
    if (this.#queued) return;
    this.#queued = true;
    this.#tail = this.#tail.then(async () => {
      this.#queued = false; // a notification from now on needs another read
      try {
        await this.#readOnce();
      } catch (e) {
        this.#errors++;
        this.#lastError = e instanceof Error ? e.message : String(e);
      }
    });
  }

  /**
   * Reads the configuration now (after any read under way) and applies it
   * when it changed.
   *
   * @returns the configuration in force afterwards
   * @throws what the read or the check threw (nothing is changed then)
   */
  refresh(): Promise<VirtioBlkConfig> {
    const run = this.#tail.then(() => this.#readOnce());
    this.#tail = run.catch((e) => {
      this.#errors++;
      this.#lastError = e instanceof Error ? e.message : String(e);
    });
    return run.then(() => this.#current);
  }

  async #readOnce(): Promise<void> {
    if (this.#closed) return;
    const bytes = await this.#read();
    if (this.#closed) return;
    if (this.#bytes !== undefined && sameBytes(bytes, this.#bytes)) {
      this.#unchanged++;
      return;
    }
    // A volume may shrink to nothing; every other check of connect time holds.
    const next = parseBlkConfig(bytes, this.#features, { allowZeroCapacity: true });
    const previous = this.#current;
    this.#bytes = bytes;
    if (sameConfig(next, previous)) {
      this.#unchanged++;
      return;
    }
    this.#current = next;
    this.#changes++;
    this.#apply(next, previous);
  }

  /** What was seen so far. */
  stats(): ConfigWatchStats {
    return {
      signal: this.signal,
      notifications: this.#notifications,
      changes: this.#changes,
      unchanged: this.#unchanged,
      errors: this.#errors,
      lastError: this.#lastError,
      channel: this.#channel(),
    };
  }

  /** Stops applying changes and waits for a read under way. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#tail;
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}

function sameConfig(a: VirtioBlkConfig, b: VirtioBlkConfig): boolean {
  return JSON.stringify(a, bigintAsString) === JSON.stringify(b, bigintAsString);
}

function bigintAsString(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? value.toString() : value;
}
