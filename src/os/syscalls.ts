/**
 * Typed wrappers over the shim's general system calls (memory, files,
 * ioctl, the clock): each checks the result and throws {@linkcode OsError}
 * on failure. Only this folder (`src/os/`) calls the shim; eventfds,
 * sockets, MMIO and the waker thread have modules of their own here.
 *
 * @module
 */

import { OsError } from "../errors.ts";
import { isShimLoaded, requireShim } from "./loader.ts";

/** Linux constants used by the transports (x86_64 and aarch64 agree on these). */
export const LINUX = {
  PROT_READ: 0x1,
  PROT_WRITE: 0x2,
  MAP_SHARED: 0x01,
  MAP_PRIVATE: 0x02,
  MAP_FIXED: 0x10,
  MAP_ANONYMOUS: 0x20,
  MAP_NORESERVE: 0x4000,
  MFD_CLOEXEC: 0x1,
  EFD_CLOEXEC: 0o2000000,
  EFD_NONBLOCK: 0o4000,
  O_RDONLY: 0,
  O_WRONLY: 1,
  O_RDWR: 2,
  O_NONBLOCK: 0o4000,
  POLLIN: 0x1,
  POLLOUT: 0x4,
  POLLERR: 0x8,
  POLLHUP: 0x10,
  POLLNVAL: 0x20,
  POLLRDHUP: 0x2000,
  FALLOC_FL_KEEP_SIZE: 0x1,
  FALLOC_FL_PUNCH_HOLE: 0x2,
  EAGAIN: 11,
  ENOENT: 2,
  EINTR: 4,
  ETIMEDOUT: 110,
} as const;

/** The size of a page on this machine. */
export const PAGE_SIZE = 4096;

const encoder = new TextEncoder();

/**
 * A NUL-terminated C string.
 *
 * @param s the string
 * @returns its UTF-8 bytes and a trailing NUL
 */
export function cString(s: string): Uint8Array<ArrayBuffer> {
  return encoder.encode(`${s}\0`);
}

/**
 * Throws {@linkcode OsError} for a negative result, else returns it.
 *
 * @param syscall the call's name, for the message
 * @param result what the shim returned (a negative errno on failure)
 * @param detail extra context for the message
 * @returns the non-negative result
 */
export function check(
  syscall: string,
  result: number | bigint,
  detail?: string,
): number {
  const r = Number(result);
  if (r < 0) throw new OsError(syscall, -r, detail);
  return r;
}

/**
 * A memfd of `size` bytes.
 *
 * @param name the name shown in /proc/PID/fd
 * @param size its length
 * @returns the descriptor
 */
export function memfdCreate(name: string, size: number): number {
  const shim = requireShim();
  const fd = check("memfd_create", shim.vd_memfd_create(cString(name), LINUX.MFD_CLOEXEC));
  const r = shim.vd_ftruncate(fd, BigInt(size));
  if (r < 0) {
    shim.vd_close(fd);
    throw new OsError("ftruncate", -r, `memfd ${name} to ${size} bytes`);
  }
  return fd;
}

/**
 * Maps `len` bytes of `fd` shared and read/write.
 *
 * @param fd the descriptor
 * @param len the length (a multiple of the page size)
 * @param offset where in the file
 * @returns the address
 */
export function mmapShared(fd: number, len: number, offset = 0): number {
  return check(
    "mmap",
    requireShim().vd_mmap(
      0n,
      BigInt(len),
      LINUX.PROT_READ | LINUX.PROT_WRITE,
      LINUX.MAP_SHARED,
      fd,
      BigInt(offset),
    ),
    `${len} bytes of fd ${fd}`,
  );
}

/**
 * Unmaps a mapping.
 *
 * @param addr its address
 * @param len its length
 */
export function munmap(addr: number, len: number): void {
  check("munmap", requireShim().vd_munmap(BigInt(addr), BigInt(len)));
}

/**
 * The target of a symbolic link (readlink(2)) — through the shim, so that
 * it needs `--allow-ffi` only.
 *
 * @param path the link
 * @returns its target
 * @throws {OsError} (ENOENT, EINVAL for a file that is not a link, …)
 */
export function readLink(path: string): string {
  const buf = new Uint8Array(4096);
  const n = Number(requireShim().vd_readlink(cString(path), buf, BigInt(buf.length)));
  check("readlink", n, path);
  return new TextDecoder().decode(buf.subarray(0, n));
}

/**
 * Replaces a mapping with private, zero-filled memory at the same address
 * (MAP_FIXED), releasing what was mapped there: for memory that another
 * isolate of this process may still hold views of, which then read zeros
 * and write nowhere instead of faulting. The address range stays taken.
 *
 * @param addr the mapping's address
 * @param len its length
 */
export function retireMapping(addr: number, len: number): void {
  const flags = LINUX.MAP_PRIVATE | LINUX.MAP_ANONYMOUS | LINUX.MAP_FIXED | LINUX.MAP_NORESERVE;
  const r = requireShim().vd_mmap(BigInt(addr), BigInt(len), LINUX.PROT_READ | LINUX.PROT_WRITE, flags, -1, 0n);
  check("mmap", r, `retiring ${len} bytes at 0x${addr.toString(16)}`);
}

/**
 * Closes a descriptor (errors are reported, but the descriptor is gone either way).
 *
 * @param fd the descriptor
 */
export function closeFd(fd: number): void {
  check("close", requireShim().vd_close(fd), `fd ${fd}`);
}

/**
 * A view of `len` bytes at process address `addr`, with its own ArrayBuffer.
 * Costs ~650 ns: make views once, never per request.
 *
 * @param addr the address
 * @param len the length
 * @returns an ArrayBuffer over that memory (it does not own it)
 */
export function viewAt(addr: number, len: number): ArrayBuffer {
  const ptr = Deno.UnsafePointer.create(BigInt(addr));
  if (ptr === null) throw new OsError("getArrayBuffer", 22, "null address");
  return Deno.UnsafePointerView.getArrayBuffer(ptr, len);
}

/**
 * A monotonic clock in nanoseconds: CLOCK_MONOTONIC through the shim (~25 ns
 * a call) when it is loaded, else `performance.now()` (~100 ns).
 *
 * @returns a function returning nanoseconds
 */
export function monotonicClock(): () => number {
  if (isShimLoaded()) return requireShim().vd_now_ns;
  return () => performance.now() * 1e6;
}

/**
 * ioctl with a pointer argument (a struct in `arg`, which the kernel may fill).
 *
 * @param fd the descriptor
 * @param request the request number
 * @param arg the argument bytes
 * @param name the request's name, for errors
 * @returns the non-negative result
 */
export function ioctl(fd: number, request: bigint, arg: Uint8Array<ArrayBuffer>, name: string): number {
  return check("ioctl", requireShim().vd_ioctl_ptr(fd, request, arg), name);
}

/**
 * ioctl with an integer argument (or none).
 *
 * @param fd the descriptor
 * @param request the request number
 * @param value the argument
 * @param name the request's name, for errors
 * @returns the non-negative result
 */
export function ioctlValue(fd: number, request: bigint, value: number | bigint, name: string): number {
  return check("ioctl", requireShim().vd_ioctl_val(fd, request, BigInt(value)), name);
}

/**
 * Opens a file (close-on-exec).
 *
 * @param path the path
 * @param flags O_ flags
 * @returns the descriptor
 */
export function openFile(path: string, flags: number): number {
  return check("open", requireShim().vd_open(cString(path), flags), path);
}

/**
 * Writes all of `data` at once (one write call; a short write is an error).
 *
 * @param fd the descriptor
 * @param data the bytes
 * @param what for errors
 */
export function writeExact(fd: number, data: Uint8Array<ArrayBuffer>, what: string): void {
  const n = check("write", requireShim().vd_write(fd, data, BigInt(data.byteLength)), what);
  if (n !== data.byteLength) throw new OsError("write", 5, `${what}: ${n} of ${data.byteLength} bytes written`);
}

/**
 * pread of exactly `buf.byteLength` bytes.
 *
 * @param fd the descriptor
 * @param buf where
 * @param offset file offset
 * @param what for errors
 */
export function preadExact(fd: number, buf: Uint8Array<ArrayBuffer>, offset: number, what: string): void {
  const n = check("pread", requireShim().vd_pread(fd, buf, BigInt(buf.byteLength), BigInt(offset)), what);
  if (n !== buf.byteLength) throw new OsError("pread", 5, `${what}: ${n} of ${buf.byteLength} bytes`);
}

/**
 * pwrite of exactly `buf.byteLength` bytes.
 *
 * @param fd the descriptor
 * @param buf the bytes
 * @param offset file offset
 * @param what for errors
 */
export function pwriteExact(fd: number, buf: Uint8Array<ArrayBuffer>, offset: number, what: string): void {
  const n = check("pwrite", requireShim().vd_pwrite(fd, buf, BigInt(buf.byteLength), BigInt(offset)), what);
  if (n !== buf.byteLength) throw new OsError("pwrite", 5, `${what}: ${n} of ${buf.byteLength} bytes`);
}
