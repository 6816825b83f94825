/**
 * Test helper: a scripted vhost-user back-end in this process. It speaks the
 * control protocol well by default (enough for a virtio-blk handshake) and
 * can be told to misbehave per message. It never touches the rings.
 */

import { eventfd, eventfdSignal } from "../src/os/eventfd.ts";
import { closeFd, LINUX } from "../src/os/syscalls.ts";
import { pollTwo, recvMsg, sendMsg, socketPair } from "../src/os/unix_socket.ts";
import { MockBlkDevice } from "../src/testing/mock/blk_device.ts";
import {
  decodeHeader,
  encodeU64,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_REPLY_MASK,
  VhostUserProtocolFeature as PF,
  VhostUserRequest as R,
} from "../src/transport/vhost_user/protocol.ts";

/** A message the back-end received. */
export interface FakeMessage {
  request: number;
  flags: number;
  payload: Uint8Array;
  /** Descriptors that came with it (already closed by the back-end). */
  fdCount: number;
}

/** What to do about one message. */
export interface FakeAction {
  /** Exact bytes to send instead of a normal reply. */
  raw?: Uint8Array;
  /** Descriptors to attach to the reply. */
  fds?: number[];
  /** Close the connection instead of answering. */
  close?: boolean;
  /** Send nothing at all (never answer). */
  silent?: boolean;
}

/** Decides the fate of a message; return undefined for the default behaviour. */
export type FakeHook = (msg: FakeMessage) => FakeAction | undefined;

/** Options of the fake back-end. */
export interface FakeBackendOptions {
  features?: bigint;
  protocolFeatures?: bigint;
  queueNum?: number;
  maxMemSlots?: number;
  config?: Uint8Array;
  hook?: FakeHook;
}

/**
 * A message as raw bytes: header (request, flags, size) then `payload`. The
 * header's size may lie (`size`), for hostile replies.
 *
 * @param request the request code
 * @param flags the flags word (version 1 is 1; the REPLY bit is 4)
 * @param payload what follows the header
 * @param size the size the header claims; default the payload's length
 * @returns the bytes
 */
export function rawMessage(
  request: number,
  flags: number,
  payload: Uint8Array,
  size: number = payload.byteLength,
): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(12 + payload.byteLength);
  const v = new DataView(b.buffer);
  v.setUint32(0, request, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, size, true);
  b.set(payload, 12);
  return b;
}

function reply(request: number, payload: Uint8Array): Uint8Array<ArrayBuffer> {
  return rawMessage(request, 1 | VHOST_USER_REPLY_MASK, payload);
}

/**
 * A vhost-user back-end served by this process over one end of a socket
 * pair; the driver gets the other end ({@linkcode FakeVhostUserBackend.driverSocket},
 * for `VirtioBlk.connect({ transport: "vhost-user", fd })`).
 */
export class FakeVhostUserBackend {
  readonly received: FakeMessage[] = [];
  readonly #cancelFd: number;
  #connFd: number;
  #driverFd: number;
  #serving: Promise<void>;
  #closed = false;
  #channelFd = -1;
  readonly #opts: Required<Omit<FakeBackendOptions, "hook">> & { hook?: FakeHook };

  private constructor(connFd: number, driverFd: number, options: FakeBackendOptions) {
    this.#connFd = connFd;
    this.#driverFd = driverFd;
    this.#cancelFd = eventfd();
    this.#opts = {
      features: options.features ?? ((new MockBlkDevice().features) | VHOST_USER_F_PROTOCOL_FEATURES),
      protocolFeatures: options.protocolFeatures ?? (PF.MQ | PF.REPLY_ACK | PF.CONFIG | PF.CONFIGURE_MEM_SLOTS),
      queueNum: options.queueNum ?? 1,
      maxMemSlots: options.maxMemSlots ?? 32,
      config: options.config ?? new MockBlkDevice({ capacity: 1 << 20, numQueues: 1 }).config,
      hook: options.hook,
    };
    this.#serving = this.#serve().catch(() => {});
  }

  /** Starts serving. */
  static start(options: FakeBackendOptions = {}): Promise<FakeVhostUserBackend> {
    const [backend, driver] = socketPair();
    return Promise.resolve(new FakeVhostUserBackend(backend, driver, options));
  }

  /** The driver's end of the connection: hand it to the driver, which takes it over (once). */
  get driverSocket(): number {
    const fd = this.#driverFd;
    if (fd < 0) throw new Error("the driver's socket was handed over already");
    this.#driverFd = -1;
    return fd;
  }

  /** Request codes received, in order. */
  get requests(): number[] {
    return this.received.map((m) => m.request);
  }

  async #waitReadable(fd: number): Promise<boolean> {
    const r = await pollTwo(fd, LINUX.POLLIN, this.#cancelFd, LINUX.POLLIN, 10_000);
    return r > 0 && (r >>> 16) === 0 && !this.#closed;
  }

  async #readExact(n: number, fds: number[]): Promise<Uint8Array<ArrayBuffer> | undefined> {
    const buf = new Uint8Array(n);
    const fdOut = new Int32Array(8), info = new Int32Array(3);
    let at = 0;
    while (at < n) {
      const r = recvMsg(this.#connFd, buf.subarray(at), fdOut, info);
      if (r > 0) {
        for (let i = 0; i < info[0]; i++) fds.push(fdOut[i]);
        at += r;
      } else if (r === -LINUX.EAGAIN) {
        if (!(await this.#waitReadable(this.#connFd))) return undefined;
      } else {
        return undefined; // EOF or error: the driver hung up
      }
    }
    return buf;
  }

  #send(bytes: Uint8Array<ArrayBuffer>, fds: number[] = []): void {
    sendMsg(this.#connFd, bytes, new Int32Array(fds));
  }

  #defaultReply(m: FakeMessage): Uint8Array<ArrayBuffer> | undefined {
    const o = this.#opts;
    switch (m.request) {
      case R.GET_FEATURES:
        return reply(m.request, encodeU64(o.features));
      case R.GET_PROTOCOL_FEATURES:
        return reply(m.request, encodeU64(o.protocolFeatures));
      case R.GET_QUEUE_NUM:
        return reply(m.request, encodeU64(o.queueNum));
      case R.GET_MAX_MEM_SLOTS:
        return reply(m.request, encodeU64(o.maxMemSlots));
      case R.GET_CONFIG: {
        const v = new DataView(m.payload.buffer, m.payload.byteOffset);
        const off = v.getUint32(0, true), size = v.getUint32(4, true);
        const out = m.payload.slice();
        out.set(o.config.subarray(off, off + size), 12);
        return reply(m.request, out);
      }
      case R.GET_VRING_BASE:
        return reply(m.request, m.payload.slice(0, 8));
      default:
        return (m.flags & 0x8) ? reply(m.request, encodeU64(0)) : undefined;
    }
  }

  async #serve(): Promise<void> {
    for (;;) {
      const fds: number[] = [];
      const hdr = await this.#readExact(12, fds);
      if (!hdr) return;
      const h = decodeHeader(hdr);
      const payload = h.size > 0 ? await this.#readExact(h.size, fds) : new Uint8Array(0);
      if (!payload) return;
      if (h.request === R.SET_BACKEND_REQ_FD && fds.length === 1 && this.#channelFd < 0) {
        this.#channelFd = fds.pop()!; // the back-end keeps its channel
      }
      for (const fd of fds) closeFd(fd);
      const msg: FakeMessage = { request: h.request, flags: h.flags, payload, fdCount: fds.length };
      this.received.push(msg);
      const action = this.#opts.hook?.(msg);
      if (action?.close) {
        closeFd(this.#connFd);
        this.#connFd = -1;
        return;
      }
      if (action?.silent) continue;
      if (action?.raw) {
        this.#send(action.raw as Uint8Array<ArrayBuffer>, action.fds);
        continue;
      }
      const r = this.#defaultReply(msg);
      if (r) this.#send(r, action?.fds);
    }
  }

  /** The back-end's end of the channel the driver handed over (SET_BACKEND_REQ_FD), or -1. */
  get channelFd(): number {
    return this.#channelFd;
  }

  /**
   * Sends bytes on the back-end channel, as a back-end request would go.
   *
   * @param bytes the message(s)
   * @param fds descriptors to attach
   * @returns what sendmsg returned (bytes, or a negative errno)
   */
  sendOnChannel(bytes: Uint8Array<ArrayBuffer>, fds: number[] = []): number {
    if (this.#channelFd < 0) throw new Error("the driver handed over no back-end channel");
    return sendMsg(this.#channelFd, bytes, new Int32Array(fds));
  }

  /**
   * Reads what the driver answered on the channel: whole messages, within `timeoutMs`.
   *
   * @param count how many 20-byte answers (header and u64) to wait for
   * @param timeoutMs how long at most
   * @returns the answers' request codes, flags and u64 statuses
   */
  async channelAnswers(
    count: number,
    timeoutMs = 2000,
  ): Promise<{ request: number; flags: number; size: number; status: bigint }[]> {
    const out: { request: number; flags: number; size: number; status: bigint }[] = [];
    const buf = new Uint8Array(20 * count);
    const fdOut = new Int32Array(8), info = new Int32Array(3);
    let at = 0;
    const deadline = performance.now() + timeoutMs;
    while (at < buf.byteLength) {
      const r = recvMsg(this.#channelFd, buf.subarray(at), fdOut, info);
      if (r > 0) {
        at += r;
        continue;
      }
      if (r !== -LINUX.EAGAIN) break;
      const left = Math.ceil(deadline - performance.now());
      if (left <= 0) break;
      await pollTwo(this.#channelFd, LINUX.POLLIN, this.#cancelFd, LINUX.POLLIN, left);
    }
    const v = new DataView(buf.buffer);
    for (let o = 0; o + 20 <= at; o += 20) {
      out.push({
        request: v.getUint32(o, true),
        flags: v.getUint32(o + 4, true),
        size: v.getUint32(o + 8, true),
        status: v.getBigUint64(o + 12, true),
      });
    }
    return out;
  }

  /** Closes the back-end's end of the channel (a back-end hanging up on it). */
  closeChannel(): void {
    if (this.#channelFd >= 0) closeFd(this.#channelFd);
    this.#channelFd = -1;
  }

  /** Stops serving and releases everything (the driver's end too, if it was never handed over). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    eventfdSignal(this.#cancelFd);
    await this.#serving;
    this.closeChannel();
    if (this.#connFd >= 0) closeFd(this.#connFd);
    if (this.#driverFd >= 0) closeFd(this.#driverFd);
    closeFd(this.#cancelFd);
  }
}

export { reply as fakeReply };
