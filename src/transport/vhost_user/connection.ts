/**
 * One vhost-user control connection: sends requests (with descriptors),
 * waits for replies without blocking the event loop, and checks every reply
 * before trusting a byte of it.
 *
 * @module
 */

import { isGranted } from "../../os/permissions.ts";
import { eventfd, eventfdSignal } from "../../os/eventfd.ts";
import { closeFd, LINUX } from "../../os/syscalls.ts";
import { pollTwo, recvMsg, sendMsg, setNonBlocking, unixConnect } from "../../os/unix_socket.ts";
import {
  ClosedError,
  ConnectFailedError,
  ConnectionLostError,
  DeviceProtocolError,
  errnoName,
  OsError,
  TimeoutError,
  type VirtioError,
} from "../../errors.ts";
import {
  decodeHeader,
  encodeMessage,
  VHOST_USER_HEADER_SIZE,
  VHOST_USER_MAX_PAYLOAD,
  VHOST_USER_REPLY_MASK,
  VHOST_USER_REQUEST_NAMES,
  VHOST_USER_VERSION,
} from "./protocol.ts";

/** What a request expects back. */
export type ReplyKind =
  | { kind: "none" }
  | { kind: "payload"; size: number; allowEmpty?: boolean };

/** Default time to wait for a reply. */
export const DEFAULT_TIMEOUT_MS = 10_000;

function name(request: number): string {
  return VHOST_USER_REQUEST_NAMES[request] ?? `request ${request}`;
}

/**
 * What is at `path`, for a message: "a regular file", "a directory", or
 * undefined (missing, a socket, or not ours to look at: a program with
 * `--allow-ffi` alone is never asked for more).
 */
function describeNonSocket(path: string): string | undefined {
  if (!isGranted({ name: "read", path })) return undefined;
  try {
    const st = Deno.statSync(path);
    if (st.isFile) return "a regular file";
    if (st.isDirectory) return "a directory";
    if (st.isSocket) return undefined;
    return "not a socket";
  } catch {
    return undefined;
  }
}

/**
 * The error for a failed connect(2) to a vhost-user socket, naming the cause.
 *
 * @param path the socket path
 * @param errno the positive errno
 * @returns the error
 */
export function connectError(path: string, errno: number): ConnectFailedError {
  const e = errnoName(errno);
  const cause = new OsError("connect", errno, path);
  const other = describeNonSocket(path);
  let message: string;
  if (other !== undefined) {
    message = `not a socket: ${path} is ${other} (${e}); give the path of the back-end's vhost-user socket`;
  } else if (e === "ENOENT") {
    message = `no such socket: ${path} (ENOENT); is the back-end running, and is this the socket it listens on?`;
  } else if (e === "ECONNREFUSED") {
    message = `connection refused: ${path} (ECONNREFUSED); nothing listens on this socket ` +
      `(a back-end that exited and left it behind?)`;
  } else if (e === "EACCES" || e === "EPERM") {
    message = `permission denied: ${path} (${e}); this user may not connect to the socket (or enter a folder above it)`;
  } else if (e === "ENOTDIR") {
    message = `no such socket: ${path} (ENOTDIR); a part of the path is not a folder`;
  } else if (e === "ENAMETOOLONG") {
    message = `socket path too long: ${path} (ENAMETOOLONG); the folders above a socket may be ` +
      `any length, but its own name (after the last /) must stay under about 90 bytes, and the whole path under 4096`;
  } else {
    message = `cannot connect to the vhost-user socket ${path} (${e})`;
  }
  return new ConnectFailedError(path, e, message, { cause });
}

/**
 * A connected vhost-user socket. Requests are serialised: one is on the wire
 * at a time. A malformed reply, a timeout or a hang-up breaks the connection
 * for good; every later request fails with the same error.
 */
export class VhostUserConnection {
  readonly #path: string;
  readonly #timeoutMs: number;
  #fd: number;
  #cancelFd: number;
  #tail: Promise<unknown> = Promise.resolve();
  #broken: VirtioError | undefined;
  #closed = false;
  #answered = false; // a reply arrived on this connection
  readonly #fdsOut = new Int32Array(8);
  readonly #info = new Int32Array(3);

  private constructor(path: string, fd: number, cancelFd: number, timeoutMs: number) {
    this.#path = path;
    this.#fd = fd;
    this.#cancelFd = cancelFd;
    this.#timeoutMs = timeoutMs;
  }

  /**
   * Connects to the back-end's socket.
   *
   * @param path the Unix socket path
   * @param timeoutMs reply timeout
   * @returns the connection
   * @throws {ConnectFailedError} naming the cause: no such socket, nothing listening, not a socket…
   */
  static connect(path: string, timeoutMs = DEFAULT_TIMEOUT_MS): VhostUserConnection {
    const fd = unixConnect(path);
    if (fd < 0) throw connectError(path, -fd);
    return VhostUserConnection.#over(path, fd, timeoutMs);
  }

  /**
   * Runs over a socket that is already connected (handed over by the program
   * that made it, as libvirt does), which this connection then owns.
   *
   * @param fd the connected socket
   * @param timeoutMs reply timeout
   * @returns the connection
   */
  static fromSocket(fd: number, timeoutMs = DEFAULT_TIMEOUT_MS): VhostUserConnection {
    try {
      setNonBlocking(fd);
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    return VhostUserConnection.#over(`fd ${fd}`, fd, timeoutMs);
  }

  static #over(path: string, fd: number, timeoutMs: number): VhostUserConnection {
    let cancel: number;
    try {
      cancel = eventfd();
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    return new VhostUserConnection(path, fd, cancel, timeoutMs);
  }

  /** The socket descriptor (owned by this connection). */
  get fd(): number {
    return this.#fd;
  }

  /** The error that broke the connection, if any. */
  get broken(): VirtioError | undefined {
    return this.#broken;
  }

  /**
   * Sends a request and waits for its reply.
   *
   * @param request the request code
   * @param payload its payload
   * @param options descriptors to attach, NEED_REPLY, and the reply expected
   * @returns the reply's payload (empty when no reply is expected)
   */
  call(
    request: number,
    payload: Uint8Array,
    options: { fds?: readonly number[]; needReply?: boolean; reply: ReplyKind },
  ): Promise<Uint8Array> {
    const run = this.#tail.then(() => this.#call(request, payload, options));
    this.#tail = run.catch(() => {});
    return run;
  }

  async #call(
    request: number,
    payload: Uint8Array,
    options: { fds?: readonly number[]; needReply?: boolean; reply: ReplyKind },
  ): Promise<Uint8Array> {
    if (this.#closed) throw new ClosedError("the vhost-user connection is closed");
    if (this.#broken) throw this.#broken;
    try {
      const deadline = performance.now() + this.#timeoutMs;
      await this.#send(
        request,
        encodeMessage(request, payload, options.needReply ?? false),
        options.fds ?? [],
        deadline,
      );
      if (options.reply.kind === "none") return new Uint8Array(0);
      return await this.#receive(request, options.reply.size, options.reply.allowEmpty ?? false, deadline);
    } catch (e) {
      if (!this.#closed) this.#broken ??= e as VirtioError;
      throw e;
    }
  }

  async #send(request: number, msg: Uint8Array<ArrayBuffer>, fds: readonly number[], deadline: number): Promise<void> {
    let at = 0;
    let fdBuf = new Int32Array(fds);
    while (at < msg.byteLength) {
      const chunk = at === 0 ? msg : msg.subarray(at);
      const r = sendMsg(this.#fd, chunk, fdBuf);
      if (r >= 0) {
        at += r;
        fdBuf = new Int32Array(0); // descriptors travel with the first byte only
        continue;
      }
      if (-r === LINUX.EAGAIN) {
        await this.#wait(LINUX.POLLOUT, deadline, `sending ${name(request)}`);
        continue;
      }
      if (-r === 32 || -r === 104) { // EPIPE, ECONNRESET
        throw new ConnectionLostError(
          `the vhost-user back-end at ${this.#path} closed the connection (sending ${name(request)})`,
        );
      }
      throw new OsError("sendmsg", -r, name(request));
    }
  }

  /** The error for a reply that did not come in time. */
  #timeout(what: string): TimeoutError {
    const base = `no answer from the vhost-user back-end at ${this.#path} within ${this.#timeoutMs} ms (${what})`;
    if (this.#answered) return new TimeoutError(base);
    // Nothing ever answered: the back-end took the connection into its listen
    // backlog but does not serve it.
    return new TimeoutError(
      `${base}: it accepted the connection but never answered. Back-ends such as qemu-storage-daemon, ` +
        `SPDK and DPDK serve one front-end at a time: is another program connected to this socket?`,
    );
  }

  /** Waits until the socket is ready for `events`, the deadline passes, or close() cancels. */
  async #wait(events: number, deadline: number, what: string): Promise<void> {
    const remaining = Math.ceil(deadline - performance.now());
    if (remaining <= 0) throw this.#timeout(what);
    const r = await pollTwo(this.#fd, events | LINUX.POLLRDHUP, this.#cancelFd, LINUX.POLLIN, remaining);
    if (r < 0) throw new OsError("poll", -r, what);
    if (this.#closed || (r >>> 16) !== 0) throw new ClosedError("the vhost-user connection was closed");
    if (r === 0) throw this.#timeout(what);
    // POLLHUP/POLLERR/POLLRDHUP: the next read or write reports the details.
  }

  /** Reads exactly `buf.byteLength` bytes; collects stray descriptors to close. */
  async #readExact(buf: Uint8Array<ArrayBuffer>, deadline: number, what: string, strayFds: number[]): Promise<void> {
    let at = 0;
    while (at < buf.byteLength) {
      const view = at === 0 ? buf : buf.subarray(at);
      const r = recvMsg(this.#fd, view, this.#fdsOut, this.#info);
      if (r > 0) {
        for (let i = 0; i < this.#info[0]; i++) strayFds.push(this.#fdsOut[i]);
        if (this.#info[1] > 0) strayFds.push(-1); // some were closed by the shim already
        at += r;
        continue;
      }
      if (r === 0) {
        throw new ConnectionLostError(`the vhost-user back-end at ${this.#path} closed the connection (${what})`);
      }
      if (-r === LINUX.EAGAIN) {
        await this.#wait(LINUX.POLLIN, deadline, what);
        continue;
      }
      if (-r === 104) {
        throw new ConnectionLostError(`the vhost-user back-end at ${this.#path} reset the connection (${what})`);
      }
      throw new OsError("recvmsg", -r, what);
    }
  }

  async #receive(request: number, size: number, allowEmpty: boolean, deadline: number): Promise<Uint8Array> {
    const what = `reply to ${name(request)}`;
    const stray: number[] = [];
    try {
      const hdr = new Uint8Array(VHOST_USER_HEADER_SIZE);
      await this.#readExact(hdr, deadline, what, stray);
      this.#answered = true;
      const h = decodeHeader(hdr);
      if (h.request !== request) {
        throw new DeviceProtocolError("reply-wrong-request", `${what}: the back-end answered ${name(h.request)}`);
      }
      if ((h.flags & 0x3) !== VHOST_USER_VERSION) {
        throw new DeviceProtocolError("reply-bad-version", `${what}: protocol version ${h.flags & 0x3}, expected 1`);
      }
      if ((h.flags & VHOST_USER_REPLY_MASK) === 0) {
        throw new DeviceProtocolError("reply-missing-reply-flag", `${what}: the REPLY flag is not set`);
      }
      if (h.size > VHOST_USER_MAX_PAYLOAD) {
        throw new DeviceProtocolError("reply-oversized", `${what}: payload of ${h.size} bytes`);
      }
      const payload = new Uint8Array(h.size);
      if (h.size > 0) await this.#readExact(payload, deadline, what, stray);
      if (stray.length > 0) {
        throw new DeviceProtocolError("reply-unexpected-fds", `${what}: the back-end sent file descriptors`);
      }
      if (h.size !== size && !(allowEmpty && h.size === 0)) {
        throw new DeviceProtocolError("reply-bad-size", `${what}: payload of ${h.size} bytes, expected ${size}`);
      }
      return payload;
    } finally {
      for (const fd of stray) if (fd >= 0) closeFd(fd);
    }
  }

  /**
   * Closes the socket. A request waiting for its reply fails with
   * {@linkcode ClosedError}; the descriptors are closed after it has stopped.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    eventfdSignal(this.#cancelFd);
    await this.#tail;
    closeFd(this.#fd);
    closeFd(this.#cancelFd);
    this.#fd = -1;
    this.#cancelFd = -1;
  }
}
