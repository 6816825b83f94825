/**
 * One connection of the fuzzer to the back-end, over the library's
 * vhost-user transport (the handshake is the tested one): features, the
 * config space, the fuzzer's memory and ring, the queue's kick and
 * interrupts. Requests are the fuzzer's own; a session never uses
 * `VirtioBlk`.
 *
 * @module
 */

import { parseBlkConfig, VIRTIO_BLK_CONFIG_SIZE } from "../../blk/config.ts";
import {
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_GEOMETRY,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_F_WRITE_ZEROES,
} from "../../blk/spec.ts";
import { FeatureNegotiationError } from "../../errors.ts";
import type { InterruptSource } from "../../transport/transport.ts";
import { VhostUserTransport } from "../../transport/vhost_user/transport.ts";
import type { VirtqueueFormat } from "../../virtqueue/layout.ts";
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from "../../virtio/spec.ts";
import type { DeviceFacts } from "./case.ts";
import { FuzzMemory } from "./memory.ts";
import { createRawRing, type RawRing } from "./ring.ts";

/** The virtio-blk features the fuzzer takes when offered. */
const BLK_FEATURES = VIRTIO_BLK_F_SIZE_MAX | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_GEOMETRY | VIRTIO_BLK_F_RO |
  VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_TOPOLOGY | VIRTIO_BLK_F_CONFIG_WCE | VIRTIO_BLK_F_MQ |
  VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;

/** Options of {@linkcode FuzzSession.open}. */
export interface SessionOptions {
  /** The back-end's socket. */
  readonly path: string;
  /** The ring format. */
  readonly ring: VirtqueueFormat;
  /** Entries of the queue. */
  readonly queueSize: number;
  /** How long a control message may take. */
  readonly controlTimeoutMs: number;
}

/** How a wait for completions ended. */
export type WaitOutcome = "done" | "timeout" | "hangup";

/** A connection with the fuzzer's memory and ring on queue 0. */
export class FuzzSession {
  /** The transport. */
  readonly transport: VhostUserTransport;
  /** The shared memory. */
  readonly memory: FuzzMemory;
  /** The ring writer. */
  readonly ring: RawRing;
  /** What the device offers, as the generator needs it. */
  readonly facts: DeviceFacts;
  /** Features the back-end offered. */
  readonly offered: bigint;
  /** Features taken. */
  readonly features: bigint;
  readonly #source: InterruptSource;
  readonly #kick: () => void;
  #wake: Promise<void> | undefined;
  #closed = false;

  private constructor(
    transport: VhostUserTransport,
    memory: FuzzMemory,
    ring: RawRing,
    facts: DeviceFacts,
    features: bigint,
    source: InterruptSource,
  ) {
    this.transport = transport;
    this.memory = memory;
    this.ring = ring;
    this.facts = facts;
    this.offered = transport.deviceFeatures;
    this.features = features;
    this.#source = source;
    const notifier = transport.notifier(0);
    this.#kick = () => notifier.notify();
  }

  /**
   * Connects, negotiates, reads the config space, shares the fuzzer's
   * memory and starts queue 0 on a fresh ring.
   *
   * @param o where, which ring, timeouts
   * @param reuse memory of a closed session that had nothing in flight (fresh memory otherwise)
   * @returns the session
   * @throws {ConnectFailedError} when nothing listens (the back-end is gone)
   */
  static async open(o: SessionOptions, reuse?: FuzzMemory): Promise<FuzzSession> {
    const t = await VhostUserTransport.connect(o.path, { timeoutMs: o.controlTimeoutMs });
    let memory: FuzzMemory | undefined;
    let source: InterruptSource | undefined;
    try {
      const offered = t.deviceFeatures;
      if (!(offered & VIRTIO_F_VERSION_1)) {
        throw new FeatureNegotiationError("the back-end does not offer VIRTIO_F_VERSION_1: not a virtio 1.x device");
      }
      if (o.ring === "packed" && !(offered & VIRTIO_F_RING_PACKED)) {
        throw new FeatureNegotiationError("the back-end does not offer VIRTIO_F_RING_PACKED (--ring packed)");
      }
      const wanted = VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | BLK_FEATURES |
        (o.ring === "packed" ? VIRTIO_F_RING_PACKED : 0n);
      const features = await t.negotiateFeatures(wanted & offered);
      const config = parseBlkConfig(await t.readConfig(0, VIRTIO_BLK_CONFIG_SIZE), features);
      const facts: DeviceFacts = {
        capacity: config.capacitySectors,
        blockSize: config.blkSize,
        segMax: config.segMax,
        sizeMax: config.sizeMax,
        readOnly: (features & VIRTIO_BLK_F_RO) !== 0n,
        flush: (features & VIRTIO_BLK_F_FLUSH) !== 0n,
        discard: config.discard && {
          maxSectors: config.discard.maxSectors,
          maxSegments: config.discard.maxSegments,
          alignment: Math.max(1, config.discard.sectorAlignment),
        },
        writeZeroes: config.writeZeroes && {
          maxSectors: config.writeZeroes.maxSectors,
          maxSegments: config.writeZeroes.maxSegments,
          alignment: 1,
        },
        indirect: (features & VIRTIO_F_INDIRECT_DESC) !== 0n,
        format: o.ring,
        queueSize: o.queueSize,
      };
      if (reuse?.fits(o.ring, o.queueSize)) {
        await reuse.share(t);
        memory = reuse;
      } else {
        memory = await FuzzMemory.create(t, o.ring, o.queueSize);
      }
      const ring = createRawRing(memory, (features & VIRTIO_F_EVENT_IDX) !== 0n);
      const a = ring.addresses();
      await t.setupQueues([
        { index: 0, size: o.queueSize, format: o.ring, descIova: a.desc, driverIova: a.driver, deviceIova: a.device },
      ]);
      source = await t.createInterruptSource({ queues: true });
      return new FuzzSession(t, memory, ring, facts, features, source);
    } catch (e) {
      await source?.close();
      await t.close();
      if (memory !== reuse) memory?.close();
      throw e;
    }
  }

  /** Whether the back-end hung up. */
  get hungUp(): boolean {
    return this.#closed || this.#source.hungUp || this.transport.closed;
  }

  /** Notifies the device (an eventfd write). */
  kick(): void {
    this.#kick();
  }

  /**
   * Waits until `done()` holds, the back-end hangs up, or `deadline`
   * (performance.now()) passes: interrupts wake it, and it looks at the
   * ring every few milliseconds as well (a back-end need not interrupt).
   *
   * @param done looked at after every wake-up
   * @param deadline when to give up (looked at again after each wake-up: it may move)
   * @returns how it ended
   */
  async waitFor(done: () => boolean, deadline: () => number): Promise<WaitOutcome> {
    for (let round = 0;; round++) {
      if (done()) return "done";
      if (this.hungUp) return done() ? "done" : "hangup";
      const left = deadline() - performance.now();
      if (left <= 0) return "timeout";
      if (round < 2) {
        // A short spin: a fast back-end answers within microseconds.
        const until = performance.now() + 0.05;
        while (performance.now() < until) if (done()) return "done";
        continue;
      }
      this.ring.arm();
      if (done()) return "done";
      this.#wake ??= this.#source.wait().then(() => {
        this.#wake = undefined;
      });
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        this.#wake,
        new Promise<void>((r) => {
          timer = setTimeout(r, Math.min(left, 5));
        }),
      ]);
      clearTimeout(timer);
    }
  }

  /**
   * Stops the ring (GET_VRING_BASE: the back-end no longer touches it) and
   * closes the connection. The memory stays mapped for a last look
   * ({@linkcode FuzzSession.release} frees it).
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#source.close();
    await this.#wake;
    await this.transport.close();
  }

  /** Frees the memory (after {@linkcode FuzzSession.close}). */
  release(): void {
    this.memory.close();
  }
}
