/**
 * eventfds: how vhost and vDPA devices are notified (kick) and how they
 * signal (call). Created non-blocking and close-on-exec.
 *
 * @module
 */

import { OsError } from "../errors.ts";
import { requireShim } from "./loader.ts";
import { check, LINUX } from "./syscalls.ts";

/**
 * A non-blocking, close-on-exec eventfd.
 *
 * @returns its descriptor
 */
export function eventfd(): number {
  return check("eventfd", requireShim().vd_eventfd(0, LINUX.EFD_CLOEXEC | LINUX.EFD_NONBLOCK));
}

/**
 * Adds 1 to an eventfd's counter (wakes whoever waits on it).
 *
 * @param fd the eventfd
 */
export function eventfdSignal(fd: number): void {
  const r = requireShim().vd_eventfd_write(fd, 1n);
  if (r < 0) throw new OsError("write", -r, `eventfd ${fd}`);
}

/**
 * A function that signals `fd`: the hot-path form of
 * {@linkcode eventfdSignal} (one fast FFI call, nothing checked: a kick that
 * fails leaves the device to notice the ring by itself or not at all, which
 * the stall watchdog and hang-up detection cover).
 *
 * @param fd the eventfd
 * @returns the notifier
 */
export function eventfdNotifier(fd: number): () => void {
  const write = requireShim().vd_eventfd_write;
  return () => void write(fd, 1n);
}

/**
 * Takes an eventfd's counter without blocking: the number of signals since
 * the last take (0 when there was none).
 *
 * @param fd a non-blocking eventfd
 * @returns the counter
 */
export function eventfdTake(fd: number): number {
  const r = Number(requireShim().vd_eventfd_read(fd));
  if (r === -LINUX.EAGAIN) return 0;
  return check("read", r, `eventfd ${fd}`);
}
