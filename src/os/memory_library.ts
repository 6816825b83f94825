/**
 * Loading a shared library from bytes in memory, without writing a file:
 * the bytes go into an anonymous memory file (`memfd_create(2)`, through the
 * C library, since the shim is what is being loaded), which `dlopen` opens
 * by its `/proc/self/fd/N` path; the descriptor is closed once the library
 * is mapped. Needs `--allow-ffi` and nothing else.
 *
 * @module
 */

import { OsError, ShimLoadError } from "../errors.ts";

/** glibc's soname, the same on x86_64 and aarch64. */
const LIBC_SONAME = "libc.so.6";

const LIBC_SYMBOLS = {
  memfd_create: {
    parameters: [
      "buffer", // const char *name
      "u32", // unsigned int flags
    ],
    result: "i32",
  },
  write: {
    parameters: [
      "i32", // int fd
      "buffer", // const void *buf
      "usize", // size_t count
    ],
    result: "isize",
  },
  close: { parameters: ["i32" /* int fd */], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" }, // int *
} as const satisfies Deno.ForeignLibraryInterface;

/** memfd_create(2): close-on-exec. */
const MFD_CLOEXEC = 1;
/** errno: interrupted by a signal (try again). */
const EINTR = 4;

/**
 * `dlopen`s `bytes` as a shared library.
 *
 * @param name the memory file's name (shows in `/proc/PID/maps`)
 * @param bytes the library's image
 * @param symbols what to bind
 * @returns the loaded library
 * @throws {ShimLoadError} when it cannot be loaded (the cause says why)
 */
export function dlopenFromMemory<S extends Deno.ForeignLibraryInterface>(
  name: string,
  bytes: Uint8Array<ArrayBuffer>,
  symbols: S,
): Deno.DynamicLibrary<S> {
  let libc: Deno.DynamicLibrary<typeof LIBC_SYMBOLS>;
  try {
    libc = Deno.dlopen(LIBC_SONAME, LIBC_SYMBOLS);
  } catch (cause) {
    throw new ShimLoadError(`cannot open the C library (${LIBC_SONAME}) to load the native shim from memory`, {
      cause,
    });
  }
  try {
    const c = libc.symbols;
    const errno = () => new Deno.UnsafePointerView(c.__errno_location()!).getInt32();
    const fd = c.memfd_create(new TextEncoder().encode(`${name}\0`), MFD_CLOEXEC);
    if (fd < 0) throw new OsError("memfd_create", errno());
    try {
      for (let done = 0; done < bytes.length;) {
        const n = Number(c.write(fd, bytes.subarray(done), BigInt(bytes.length - done)));
        if (n < 0) {
          const e = errno();
          if (e === EINTR) continue;
          throw new OsError("write", e, "memfd");
        }
        done += n;
      }
      return Deno.dlopen(`/proc/self/fd/${fd}`, symbols);
    } finally {
      c.close(fd);
    }
  } catch (cause) {
    throw new ShimLoadError(`cannot load the native shim from memory: ${(cause as Error).message}`, { cause });
  } finally {
    libc.close();
  }
}
