/**
 * Unix stream sockets with descriptor passing (SCM_RIGHTS), for vhost-user:
 * connect, socket pairs, sendmsg/recvmsg, and a poll on a socket and a
 * cancel eventfd that runs off the event loop.
 *
 * Results are returned as the shim gives them (a negative errno on failure)
 * where the caller decides what an errno means (EAGAIN, EPIPE…).
 *
 * @module
 */

import { requireShim } from "./loader.ts";
import { check, cString, ioctl } from "./syscalls.ts";

/** FIONBIO: set or clear O_NONBLOCK through ioctl (the shim has no fcntl). */
const FIONBIO = 0x5421n;

/**
 * Connects a non-blocking, close-on-exec Unix stream socket to `path`.
 *
 * @param path the socket path
 * @returns the descriptor, or a negative errno
 */
export function unixConnect(path: string): number {
  const p = cString(path);
  return requireShim().vd_unix_connect(p, p.byteLength - 1, 1);
}

/**
 * Makes a socket non-blocking (one handed over by another program may not be).
 *
 * @param fd the socket
 */
export function setNonBlocking(fd: number): void {
  ioctl(fd, FIONBIO, new Uint8Array(new Int32Array([1]).buffer), "FIONBIO");
}

/**
 * A connected pair of non-blocking, close-on-exec Unix stream sockets.
 *
 * @returns both descriptors
 */
export function socketPair(): [number, number] {
  const fds = new Int32Array(2);
  check("socketpair", requireShim().vd_socketpair(1, new Uint8Array(fds.buffer)));
  return [fds[0], fds[1]];
}

/**
 * sendmsg: `data` with up to 16 descriptors attached; never raises SIGPIPE.
 *
 * @param fd the socket
 * @param data the bytes
 * @param fds descriptors to pass (sent with the first byte)
 * @returns bytes sent, or a negative errno
 */
export function sendMsg(fd: number, data: Uint8Array<ArrayBuffer>, fds: Int32Array<ArrayBuffer>): number {
  return Number(
    requireShim().vd_sendmsg(fd, data, BigInt(data.byteLength), new Uint8Array(fds.buffer), fds.length),
  );
}

/**
 * recvmsg without blocking, keeping up to `fdsOut.length` descriptors that
 * came along (more are closed at once). `info` gets `[stored, closed,
 * msg_flags]`.
 *
 * @param fd the socket
 * @param buf where the bytes go
 * @param fdsOut where received descriptors go
 * @param info three words of results
 * @returns bytes received (0 at end of stream), or a negative errno
 */
export function recvMsg(
  fd: number,
  buf: Uint8Array<ArrayBuffer>,
  fdsOut: Int32Array<ArrayBuffer>,
  info: Int32Array<ArrayBuffer>,
): number {
  return Number(
    requireShim().vd_recvmsg(
      fd,
      buf,
      BigInt(buf.byteLength),
      new Uint8Array(fdsOut.buffer),
      fdsOut.length,
      new Uint8Array(info.buffer),
    ),
  );
}

/**
 * poll(2) on two descriptors, on a worker thread (the event loop runs on).
 *
 * @param fd0 the first descriptor
 * @param events0 its events
 * @param fd1 the second (a cancel eventfd, say)
 * @param events1 its events
 * @param timeoutMs how long at most
 * @returns revents of fd0 in bits 0–15 and of fd1 in bits 16–31, 0 on timeout, or a negative errno
 */
export function pollTwo(
  fd0: number,
  events0: number,
  fd1: number,
  events1: number,
  timeoutMs: number,
): Promise<number> {
  return requireShim().vd_poll2(fd0, events0, fd1, events1, timeoutMs);
}
