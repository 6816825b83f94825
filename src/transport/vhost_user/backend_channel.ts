/**
 * The back-end's request channel (vhost-user.rst, "Back-end communication";
 * protocol feature BACKEND_REQ): a socket pair whose other end the back-end
 * got with SET_BACKEND_REQ_FD, on which it sends requests of its own. This
 * driver serves one: VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, the vhost-user
 * form of a configuration change notification (virtio 1.2, 3.2.1). Every
 * other request is refused when it wants an answer and ignored otherwise.
 *
 * The channel is input from the device like any other: headers are checked
 * before their sizes are believed, descriptors that come along are closed
 * unread, a flood is served a bounded number of requests per event-loop
 * turn, and anything that makes the byte stream untrustworthy (a bad
 * version, a reply flag, an oversized payload, replies the back-end does not
 * read) closes the channel — the device keeps working, without change
 * notifications — with the reason kept in {@linkcode BackendChannelStats}.
 *
 * @module
 */

import { closeFd, LINUX } from "../../os/syscalls.ts";
import { recvMsg, sendMsg } from "../../os/unix_socket.ts";
import { SignalWatch } from "../signal_watch.ts";
import type { BackendChannelStats } from "../transport.ts";
import {
  encodeU64,
  VHOST_USER_BACKEND_REQUEST_NAMES,
  VHOST_USER_HEADER_SIZE,
  VHOST_USER_MAX_PAYLOAD,
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK,
  VHOST_USER_VERSION,
  VhostUserBackendRequest as B,
} from "./protocol.ts";

/** Requests served per event-loop turn before the rest waits for the next turn. */
const REQUESTS_PER_TURN = 256;

/** The driver's end of a back-end channel. */
export class BackendChannel {
  #fd: number;
  #watch: SignalWatch | undefined;
  readonly #buf = new Uint8Array(VHOST_USER_HEADER_SIZE + VHOST_USER_MAX_PAYLOAD);
  readonly #fdsOut = new Int32Array(8);
  readonly #info = new Int32Array(3);
  readonly #reply = new Uint8Array(VHOST_USER_HEADER_SIZE + 8);
  #have = 0; // bytes buffered in #buf
  #listener: (() => void) | undefined;
  #changePending = false;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #requests = 0;
  #configChanges = 0;
  #refused = 0;
  #ignored = 0;
  #fdsClosed = 0;
  readonly #byName: Record<string, number> = {};
  #closedReason: string | undefined;
  #released: Promise<void> | undefined;

  private constructor(fd: number) {
    this.#fd = fd;
  }

  /**
   * Starts serving the driver's end of the channel (taken over: closed by
   * {@linkcode BackendChannel.close}, also when starting fails).
   *
   * @param fd the driver's end of the socket pair (non-blocking)
   * @returns the running channel
   */
  static async open(fd: number): Promise<BackendChannel> {
    const c = new BackendChannel(fd);
    try {
      c.#watch = await SignalWatch.readable(fd, () => c.#drain());
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    // Anything sent before the watch existed raised no edge: look now.
    c.#drain();
    return c;
  }

  /**
   * The callback for configuration changes. Changes announced before it was
   * set are delivered (once) when it is set.
   */
  set onConfigChange(listener: (() => void) | undefined) {
    this.#listener = listener;
    if (listener && this.#changePending) {
      this.#changePending = false;
      listener();
    }
  }

  /** Whether the channel is open (false once closed by either side or for a violation). */
  get open(): boolean {
    return this.#closedReason === undefined;
  }

  /** What came on the channel so far. */
  stats(): BackendChannelStats {
    return {
      requests: this.#requests,
      configChanges: this.#configChanges,
      refused: this.#refused,
      ignored: this.#ignored,
      fdsClosed: this.#fdsClosed,
      byName: { ...this.#byName },
      closed: this.#closedReason,
    };
  }

  /** Reads and serves until the socket is empty, or schedules the rest after a bounded number of requests. */
  #drain(): void {
    this.#timer = undefined;
    let served = 0;
    let changed = false;
    while (this.#closedReason === undefined) {
      // Serve every whole message buffered.
      const n = this.#serveBuffered(REQUESTS_PER_TURN - served);
      served += n.served;
      changed ||= n.changed;
      if (this.#closedReason !== undefined) break;
      if (served >= REQUESTS_PER_TURN) {
        // A flood: let the event loop run, then go on (edge-triggered, so no
        // new wake-up would come for what is already waiting).
        this.#timer = setTimeout(() => this.#drain(), 0);
        break;
      }
      const r = recvMsg(this.#fd, this.#buf.subarray(this.#have), this.#fdsOut, this.#info);
      if (r > 0) {
        const fds = this.#info[0] + this.#info[1];
        for (let i = 0; i < this.#info[0]; i++) closeFd(this.#fdsOut[i]);
        this.#fdsClosed += fds;
        this.#have += r;
        continue;
      }
      if (r === -LINUX.EAGAIN) break;
      this.#shut(r === 0 ? "the back-end closed its channel" : `reading the channel failed (errno ${-r})`);
    }
    if (changed) this.#announce();
  }

  #announce(): void {
    if (this.#listener) this.#listener();
    else this.#changePending = true;
  }

  /** Serves up to `budget` whole buffered messages. */
  #serveBuffered(budget: number): { served: number; changed: boolean } {
    const v = new DataView(this.#buf.buffer);
    let at = 0, served = 0, changed = false;
    while (served < budget && this.#have - at >= VHOST_USER_HEADER_SIZE) {
      const request = v.getUint32(at, true), flags = v.getUint32(at + 4, true), size = v.getUint32(at + 8, true);
      if ((flags & 0x3) !== VHOST_USER_VERSION) {
        this.#shut(`the back-end sent a request with protocol version ${flags & 0x3} (expected 1)`);
        return { served, changed };
      }
      if (flags & VHOST_USER_REPLY_MASK) {
        this.#shut(`the back-end sent a reply (flags 0x${flags.toString(16)}) where only requests may come`);
        return { served, changed };
      }
      if (size > VHOST_USER_MAX_PAYLOAD) {
        this.#shut(`the back-end sent a request with a payload of ${size} bytes (at most ${VHOST_USER_MAX_PAYLOAD})`);
        return { served, changed };
      }
      if (this.#have - at < VHOST_USER_HEADER_SIZE + size) break; // the rest is still on its way
      at += VHOST_USER_HEADER_SIZE + size;
      served++;
      this.#requests++;
      const name = VHOST_USER_BACKEND_REQUEST_NAMES[request] ?? `request ${request}`;
      this.#byName[name] = (this.#byName[name] ?? 0) + 1;
      const needReply = (flags & VHOST_USER_NEED_REPLY_MASK) !== 0;
      if (request === B.CONFIG_CHANGE_MSG) {
        // The payload (none in QEMU's libvhost-user) carries nothing we use.
        this.#configChanges++;
        changed = true;
        if (needReply) this.#answer(request, 0n);
      } else if (needReply) {
        this.#refused++;
        this.#answer(request, 1n);
      } else {
        this.#ignored++;
      }
      if (this.#closedReason !== undefined) return { served, changed };
    }
    if (at > 0) {
      this.#buf.copyWithin(0, at, this.#have);
      this.#have -= at;
    }
    return { served, changed };
  }

  /** Sends a REPLY_ACK answer (0: done; non-zero: failed) without blocking. */
  #answer(request: number, status: bigint): void {
    const v = new DataView(this.#reply.buffer);
    v.setUint32(0, request, true);
    v.setUint32(4, VHOST_USER_VERSION | VHOST_USER_REPLY_MASK, true);
    v.setUint32(8, 8, true);
    this.#reply.set(encodeU64(status), VHOST_USER_HEADER_SIZE);
    const r = sendMsg(this.#fd, this.#reply, new Int32Array(0));
    if (r === this.#reply.byteLength) return;
    // A full socket means the back-end does not read its answers; a partial
    // write would desynchronise the stream. Neither can be waited out here.
    this.#shut(
      r < 0 && -r !== LINUX.EAGAIN ? `answering failed (errno ${-r})` : "the back-end does not read its answers",
    );
  }

  /** Closes the channel for `reason`: the back-end sees a hang-up; the device itself keeps working. */
  #shut(reason: string): void {
    if (this.#closedReason !== undefined) return;
    this.#closedReason = reason;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#released = this.#release();
  }

  /** Stops the watch, then closes the descriptor (never while the waker thread may still use it). */
  async #release(): Promise<void> {
    try {
      await this.#watch?.close();
    } finally {
      this.#watch = undefined;
      if (this.#fd >= 0) closeFd(this.#fd);
      this.#fd = -1;
    }
  }

  /** Stops serving and closes the driver's end. Idempotent. */
  async close(): Promise<void> {
    this.#shut("closed by the driver");
    await this.#released;
  }
}
