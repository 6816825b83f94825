/**
 * The vhost-user transport: the device is a back-end process
 * (qemu-storage-daemon, SPDK…) reached through a Unix socket. Memory is
 * shared as memfds passed over the socket; in vhost-user the IOVA is the
 * front-end's own virtual address. Notifications are eventfd writes and
 * interrupts arrive on eventfds.
 *
 * @module
 */

import { eventfd, eventfdNotifier, eventfdTake } from "../../os/eventfd.ts";
import { closeFd } from "../../os/syscalls.ts";
import { socketPair } from "../../os/unix_socket.ts";
import { MAX_WAKER_TOKEN, Waker } from "../waker.ts";
import { OwnedHandOver } from "../hand_over.ts";
import { SignalWatch } from "../signal_watch.ts";
import {
  ConnectionLostError,
  DeviceProtocolError,
  FeatureNegotiationError,
  InvalidArgumentError,
} from "../../errors.ts";
import { MemfdRegion, type SharedRegion } from "../../memory/region.ts";
import {
  type BackendChannelStats,
  type ConfigChangeSignal,
  type InterruptSource,
  type InterruptSourceOptions,
  notifierOf,
  type QueueConfig,
  type QueueHandOver,
  type QueueNotifier,
  type Transport,
} from "../transport.ts";
import { encodeVringBase, FRESH_VRING_BASE } from "../vring_base.ts";
import { BackendChannel } from "./backend_channel.ts";
import { DEFAULT_TIMEOUT_MS, type ReplyKind, VhostUserConnection } from "./connection.ts";
import {
  decodeConfigReply,
  decodeU64,
  encodeConfigRequest,
  encodeMemTable,
  encodeSetConfig,
  encodeSingleMemRegion,
  encodeU64,
  encodeVringAddr,
  encodeVringFile,
  encodeVringState,
  VHOST_MEMORY_BASELINE_NREGIONS,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_MAX_CONFIG_SIZE,
  type VhostUserMemRegion,
  VhostUserProtocolFeature as PF,
  VhostUserRequest as R,
} from "./protocol.ts";

/** Options of {@linkcode VhostUserTransport.connect}. */
export interface VhostUserTransportOptions {
  /** How long to wait for each reply; default 10000 ms. */
  timeoutMs?: number;
}

/** Protocol features this driver uses when the back-end offers them. */
export const VHOST_USER_DRIVER_PROTOCOL_FEATURES: bigint = PF.MQ | PF.REPLY_ACK | PF.CONFIG |
  PF.CONFIGURE_MEM_SLOTS | PF.BACKEND_REQ;

const NONE: ReplyKind = { kind: "none" };
const U64: ReplyKind = { kind: "payload", size: 8 };
const EMPTY = new Uint8Array(0);

function regionDesc(r: SharedRegion): VhostUserMemRegion {
  return { guestPhysAddr: r.addr, size: r.size, userAddr: r.addr, mmapOffset: 0 };
}

/**
 * A connection to a vhost-user back-end.
 *
 * @example
 * ```ts ignore
 * import { VhostUserTransport, VirtioBlk } from "./mod.ts";
 * const transport = await VhostUserTransport.connect("/tmp/x.sock");
 * await using blk = await VirtioBlk.connect({ transport });
 * ```
 */
export class VhostUserTransport implements Transport {
  readonly type = "vhost-user" as const;
  readonly deviceFeatures: bigint;
  /** Protocol features both sides use. */
  readonly protocolFeatures: bigint;
  /** Protocol features the back-end offered (0 without VHOST_USER_F_PROTOCOL_FEATURES). */
  readonly offeredProtocolFeatures: bigint;
  readonly maxQueues: number;
  readonly maxQueueSize = 32768;
  readonly maxMemRegions: number;
  readonly maxTransferBytes: number = Infinity;
  readonly #conn: VhostUserConnection;
  readonly #path: string;
  readonly #channel: BackendChannel | undefined;
  #hangupWatch: SignalWatch | undefined;
  #regions: SharedRegion[] = [];
  #kickFds: number[] = [];
  #callFds: number[] = [];
  #notifiers: QueueNotifier[] = [];
  #closed = false;

  private constructor(
    path: string,
    conn: VhostUserConnection,
    deviceFeatures: bigint,
    offeredProtocolFeatures: bigint,
    protocolFeatures: bigint,
    maxQueues: number,
    maxMemRegions: number,
    channel: BackendChannel | undefined,
  ) {
    this.#path = path;
    this.#conn = conn;
    this.#channel = channel;
    this.deviceFeatures = deviceFeatures;
    this.protocolFeatures = protocolFeatures;
    this.offeredProtocolFeatures = offeredProtocolFeatures;
    this.maxQueues = maxQueues;
    this.maxMemRegions = maxMemRegions;
  }

  /**
   * Connects and runs the start of the handshake: SET_OWNER, GET_FEATURES,
   * GET/SET_PROTOCOL_FEATURES, SET_BACKEND_REQ_FD (the back-end's channel,
   * right away: a back-end may use it as soon as it is negotiated),
   * GET_QUEUE_NUM, GET_MAX_MEM_SLOTS.
   * Needs the shim loaded (`loadShim()`).
   *
   * @param target the back-end's socket path, or a connected socket (`{ fd }`, taken over)
   * @param options timeouts
   * @returns the transport
   */
  static async connect(
    target: string | { fd: number },
    options: VhostUserTransportOptions = {},
  ): Promise<VhostUserTransport> {
    const timeout = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (!(timeout > 0)) throw new InvalidArgumentError(`timeoutMs must be positive, got ${timeout}`);
    const conn = typeof target === "string"
      ? VhostUserConnection.connect(target, timeout)
      : VhostUserConnection.fromSocket(target.fd, timeout);
    const path = typeof target === "string" ? target : `fd ${target.fd}`;
    let channel: BackendChannel | undefined;
    try {
      await conn.call(R.SET_OWNER, EMPTY, { reply: NONE });
      const features = decodeU64(await conn.call(R.GET_FEATURES, EMPTY, { reply: U64 }));
      let proto = 0n, offered = 0n;
      if (features & VHOST_USER_F_PROTOCOL_FEATURES) {
        offered = decodeU64(await conn.call(R.GET_PROTOCOL_FEATURES, EMPTY, { reply: U64 }));
        proto = offered & VHOST_USER_DRIVER_PROTOCOL_FEATURES;
        await conn.call(R.SET_PROTOCOL_FEATURES, encodeU64(proto), { reply: NONE });
      }
      if (proto & PF.BACKEND_REQ) channel = await VhostUserTransport.#openChannel(conn, proto);
      let maxQueues = 1;
      if (proto & PF.MQ) {
        const n = decodeU64(await conn.call(R.GET_QUEUE_NUM, EMPTY, { reply: U64 }));
        if (n < 1n || n > 65535n) throw new DeviceProtocolError("bad-queue-num", `GET_QUEUE_NUM answered ${n}`);
        maxQueues = Number(n);
      }
      let slots = VHOST_MEMORY_BASELINE_NREGIONS;
      if (proto & PF.CONFIGURE_MEM_SLOTS) {
        const n = decodeU64(await conn.call(R.GET_MAX_MEM_SLOTS, EMPTY, { reply: U64 }));
        if (n < 1n || n > 65536n) throw new DeviceProtocolError("bad-mem-slots", `GET_MAX_MEM_SLOTS answered ${n}`);
        slots = Number(n);
      }
      return new VhostUserTransport(
        path,
        conn,
        features & ~VHOST_USER_F_PROTOCOL_FEATURES,
        offered,
        proto,
        maxQueues,
        slots,
        channel,
      );
    } catch (e) {
      await channel?.close();
      await conn.close();
      throw e;
    }
  }

  /** Hands the back-end its end of a new channel and starts serving ours. */
  static async #openChannel(conn: VhostUserConnection, proto: bigint): Promise<BackendChannel> {
    const [ours, theirs] = socketPair();
    try {
      if (proto & PF.REPLY_ACK) {
        const ack = decodeU64(
          await conn.call(R.SET_BACKEND_REQ_FD, EMPTY, { fds: [theirs], needReply: true, reply: U64 }),
        );
        if (ack !== 0n) {
          throw new DeviceProtocolError("request-refused", `the back-end refused SET_BACKEND_REQ_FD (status ${ack})`);
        }
      } else {
        await conn.call(R.SET_BACKEND_REQ_FD, EMPTY, { fds: [theirs], reply: NONE });
      }
    } catch (e) {
      closeFd(ours);
      throw e;
    } finally {
      closeFd(theirs); // the back-end has its own copy now
    }
    return await BackendChannel.open(ours);
  }

  /** What the back-end sent on its channel (undefined when BACKEND_REQ was not negotiated). */
  get backendChannel(): BackendChannelStats | undefined {
    return this.#channel?.stats();
  }

  get closed(): boolean {
    return this.#closed || this.#conn.broken !== undefined;
  }

  /** Sends a request that has no reply of its own, waiting for the ack when REPLY_ACK is on. */
  async #set(request: number, payload: Uint8Array, fds?: readonly number[]): Promise<void> {
    if (this.protocolFeatures & PF.REPLY_ACK) {
      const ack = decodeU64(await this.#conn.call(request, payload, { fds, needReply: true, reply: U64 }));
      if (ack !== 0n) {
        throw new DeviceProtocolError(
          "request-refused",
          `the vhost-user back-end refused request ${request} (status ${ack})`,
        );
      }
    } else {
      await this.#conn.call(request, payload, { fds, reply: NONE });
    }
  }

  async negotiateFeatures(driverFeatures: bigint): Promise<bigint> {
    const features = driverFeatures & this.deviceFeatures;
    const wire = features | (this.protocolFeatures !== 0n ? VHOST_USER_F_PROTOCOL_FEATURES : 0n);
    try {
      await this.#set(R.SET_FEATURES, encodeU64(wire));
    } catch (e) {
      if (e instanceof DeviceProtocolError && e.violation === "request-refused") {
        throw new FeatureNegotiationError(`the back-end refused features 0x${features.toString(16)}`);
      }
      throw e;
    }
    return features;
  }

  async readConfig(offset: number, length: number): Promise<Uint8Array> {
    if ((this.protocolFeatures & PF.CONFIG) === 0n) {
      throw new FeatureNegotiationError(
        "the back-end does not offer VHOST_USER_PROTOCOL_F_CONFIG, so its config space cannot be read",
      );
    }
    if (offset < 0 || length < 1 || offset + length > VHOST_USER_MAX_CONFIG_SIZE) {
      throw new InvalidArgumentError(`config range [${offset}, +${length}) is outside the 256-byte config space`);
    }
    const payload = await this.#conn.call(R.GET_CONFIG, encodeConfigRequest(offset, length), {
      reply: { kind: "payload", size: 12 + length, allowEmpty: true },
    });
    if (payload.byteLength === 0) {
      throw new DeviceProtocolError(
        "config-refused",
        "the back-end could not read its config space (empty GET_CONFIG reply)",
      );
    }
    const reply = decodeConfigReply(payload);
    if (reply.offset !== offset || reply.size !== length) {
      throw new DeviceProtocolError(
        "reply-bad-config",
        `GET_CONFIG reply covers [${reply.offset}, +${reply.size}), asked [${offset}, +${length})`,
      );
    }
    return reply.data.slice();
  }

  async writeConfig(offset: number, data: Uint8Array): Promise<void> {
    if ((this.protocolFeatures & PF.CONFIG) === 0n) {
      throw new FeatureNegotiationError(
        "the back-end does not offer VHOST_USER_PROTOCOL_F_CONFIG, so its config space cannot be written",
      );
    }
    if (offset < 0 || data.byteLength < 1 || offset + data.byteLength > VHOST_USER_MAX_CONFIG_SIZE) {
      throw new InvalidArgumentError(
        `config range [${offset}, +${data.byteLength}) is outside the 256-byte config space`,
      );
    }
    await this.#set(R.SET_CONFIG, encodeSetConfig(offset, data));
  }

  watchConfig(listener: () => void): Promise<ConfigChangeSignal> {
    const channel = this.#channel;
    if (!channel?.open) return Promise.resolve("none");
    channel.onConfigChange = () => queueMicrotask(listener);
    return Promise.resolve("message");
  }

  async watchHangup(listener: () => void): Promise<void> {
    if (this.#hangupWatch) throw new InvalidArgumentError("the connection is watched already");
    this.#hangupWatch = await SignalWatch.hangup(this.#conn.fd, listener);
  }

  createRegion(size: number, name: string): SharedRegion {
    return new MemfdRegion(name, size);
  }

  async mapMemRegion(region: SharedRegion): Promise<void> {
    if (region.fd < 0) throw new InvalidArgumentError(`region ${region.name} has no file descriptor to share`);
    if (this.#regions.length >= this.maxMemRegions) {
      throw new InvalidArgumentError(`the back-end takes at most ${this.maxMemRegions} memory regions`);
    }
    region.iova = region.addr; // vhost-user: IOVA = front-end virtual address
    try {
      if (this.protocolFeatures & PF.CONFIGURE_MEM_SLOTS) {
        await this.#set(R.ADD_MEM_REG, encodeSingleMemRegion(regionDesc(region)), [region.fd]);
        this.#regions.push(region);
      } else {
        const all = [...this.#regions, region];
        await this.#set(R.SET_MEM_TABLE, encodeMemTable(all.map(regionDesc)), all.map((r) => r.fd));
        this.#regions = all;
      }
    } catch (e) {
      region.iova = -1;
      throw e;
    }
  }

  async unmapMemRegion(region: SharedRegion): Promise<void> {
    const rest = this.#regions.filter((r) => r !== region);
    if (rest.length === this.#regions.length) return;
    if (this.protocolFeatures & PF.CONFIGURE_MEM_SLOTS) {
      // No descriptor: the spec recommends none for REM_MEM_REG.
      await this.#set(R.REM_MEM_REG, encodeSingleMemRegion(regionDesc(region)));
    } else {
      await this.#set(R.SET_MEM_TABLE, encodeMemTable(rest.map(regionDesc)), rest.map((r) => r.fd));
    }
    this.#regions = rest;
    region.iova = -1;
  }

  async setupQueues(queues: readonly QueueConfig[]): Promise<void> {
    for (const q of queues) {
      if (q.index > 255) throw new InvalidArgumentError("vhost-user addresses queues 0 to 255 in kick/call messages");
      const kick = eventfd();
      this.#kickFds[q.index] = kick;
      const call = eventfd();
      this.#callFds[q.index] = call;
      await this.#set(R.SET_VRING_NUM, encodeVringState(q.index, q.size));
      // Packed rings carry both wrap counters (1 at the start): 0x80008000.
      await this.#set(R.SET_VRING_BASE, encodeVringState(q.index, encodeVringBase(q.format, FRESH_VRING_BASE)));
      await this.#set(R.SET_VRING_ADDR, encodeVringAddr(q.index, q.descIova, q.deviceIova, q.driverIova));
      await this.#set(R.SET_VRING_CALL, encodeVringFile(q.index, false), [call]);
      await this.#set(R.SET_VRING_KICK, encodeVringFile(q.index, false), [kick]);
      if (this.protocolFeatures !== 0n) {
        // With protocol features, rings start disabled until enabled.
        await this.#set(R.SET_VRING_ENABLE, encodeVringState(q.index, 1));
      }
      this.#notifiers[q.index] = { notify: eventfdNotifier(kick) };
    }
  }

  notifier(index: number): QueueNotifier {
    return notifierOf(this.#notifiers, index);
  }

  handOverQueue(index: number): Promise<QueueHandOver> {
    notifierOf(this.#notifiers, index); // set up, or a typed error
    return OwnedHandOver.create({ kind: "eventfd", fd: this.#kickFds[index] }, this.#callFds[index]);
  }

  async createInterruptSource(options: InterruptSourceOptions = {}): Promise<InterruptSource> {
    if (this.closed) throw new ConnectionLostError(`the vhost-user connection to ${this.#path} is closed`);
    const callFds = (options.queues ?? true) ? this.#callFds : [];
    return await Waker.forQueues(callFds, { fd: this.#conn.fd, token: MAX_WAKER_TOKEN });
  }

  /**
   * Interrupts the back-end signalled on queue `index` since the last call
   * (its call eventfd's counter), for diagnostics such as whether it honours
   * interrupt suppression. Meaningful only while no interrupt source watches
   * the queue (poll mode), which would take the counter itself.
   *
   * @param index the queue
   * @returns the number of signals
   */
  takeInterruptCount(index: number): number {
    const fd = this.#callFds[index];
    if (fd === undefined) throw new InvalidArgumentError(`queue ${index} is not set up`);
    return eventfdTake(fd);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      if (this.#conn.broken === undefined) {
        // GET_VRING_BASE stops each ring: the back-end no longer touches it.
        for (let i = 0; i < this.#kickFds.length; i++) {
          if (this.#kickFds[i] === undefined) continue;
          await this.#conn.call(R.GET_VRING_BASE, encodeVringState(i, 0), { reply: { kind: "payload", size: 8 } });
        }
      }
    } catch {
      // The back-end is gone or misbehaving: tear down regardless.
    } finally {
      await this.#hangupWatch?.close();
      this.#hangupWatch = undefined;
      await this.#channel?.close();
      await this.#conn.close();
      for (const fd of [...this.#kickFds, ...this.#callFds]) if (fd !== undefined) closeFd(fd);
      this.#kickFds = [];
      this.#callFds = [];
      this.#regions = [];
    }
  }
}
