/**
 * The symbol table of the native shim (`src/os/shim.c`): one entry per C
 * function, each parameter annotated with its C type. Functions that can fail
 * return a negative errno.
 *
 * 64-bit parameters on calls made per request are passed as `bigint` (a
 * `number` takes V8's slow path, ~250 ns instead of ~10 ns).
 *
 * @module
 */

/** The ABI version `vd_abi_version()` must report. */
export const SHIM_ABI_VERSION = 8;

/** `Deno.dlopen` symbol definitions for the shim. */
export const SHIM_SYMBOLS = {
  vd_abi_version: { parameters: [], result: "u32" },
  vd_memfd_create: {
    parameters: [
      "buffer", // const char *name (NUL-terminated)
      "u32", // unsigned int flags
    ],
    result: "i32",
  },
  vd_ftruncate: {
    parameters: [
      "i32", // int fd
      "u64", // uint64_t size
    ],
    result: "i32",
  },
  vd_mmap: {
    parameters: [
      "u64", // uint64_t addr (hint, or the fixed address)
      "u64", // uint64_t len
      "i32", // int prot
      "i32", // int flags
      "i32", // int fd
      "u64", // uint64_t offset
    ],
    result: "i64", // address, or -errno
  },
  vd_munmap: {
    parameters: [
      "u64", // uint64_t addr
      "u64", // uint64_t len
    ],
    result: "i32",
  },
  vd_now_ns: { parameters: [], result: "f64" },
  vd_mmio_read8: { parameters: ["u64" /* uint64_t addr */], result: "u32" },
  vd_mmio_read16: { parameters: ["u64" /* uint64_t addr */], result: "u32" },
  vd_mmio_read32: { parameters: ["u64" /* uint64_t addr */], result: "u32" },
  vd_mmio_fence_write8: { parameters: ["u64", /* uint64_t addr */ "u32" /* uint32_t value */], result: "void" },
  vd_mmio_fence_write16: { parameters: ["u64", /* uint64_t addr */ "u32" /* uint32_t value */], result: "void" },
  vd_mmio_fence_write32: { parameters: ["u64", /* uint64_t addr */ "u32" /* uint32_t value */], result: "void" },
  vd_close: {
    parameters: [
      "i32", // int fd
    ],
    result: "i32",
  },
  vd_open: {
    parameters: [
      "buffer", // const char *path (NUL-terminated)
      "i32", // int flags (O_CLOEXEC is added)
    ],
    result: "i32",
  },
  vd_readlink: {
    parameters: [
      "buffer", // const char *path (NUL-terminated)
      "buffer", // char *buf
      "u64", // size_t len
    ],
    result: "i64", // the target's length, or -errno
  },
  vd_eventfd: {
    parameters: [
      "u32", // unsigned int initval
      "i32", // int flags
    ],
    result: "i32",
  },
  vd_eventfd_write: {
    parameters: [
      "i32", // int fd
      "u64", // uint64_t value
    ],
    result: "i32",
  },
  vd_eventfd_read: {
    parameters: [
      "i32", // int fd
    ],
    result: "i64",
  },
  vd_poll2: {
    parameters: [
      "i32", // int fd0
      "i32", // short events0
      "i32", // int fd1
      "i32", // short events1
      "i32", // int timeout_ms
    ],
    result: "i32",
    nonblocking: true, // runs on a worker thread: the event loop keeps going
  },
  vd_write: {
    parameters: [
      "i32", // int fd
      "buffer", // const void *buf
      "u64", // size_t len
    ],
    result: "i64",
  },
  vd_pread: {
    parameters: [
      "i32", // int fd
      "buffer", // void *buf
      "u64", // size_t len
      "u64", // off_t offset
    ],
    result: "i64",
  },
  vd_pwrite: {
    parameters: [
      "i32", // int fd
      "buffer", // const void *buf
      "u64", // size_t len
      "u64", // off_t offset
    ],
    result: "i64",
  },
  vd_ioctl_ptr: {
    parameters: [
      "i32", // int fd
      "u64", // unsigned long request
      "buffer", // void *arg
    ],
    result: "i32",
  },
  vd_ioctl_val: {
    parameters: [
      "i32", // int fd
      "u64", // unsigned long request
      "u64", // unsigned long value
    ],
    result: "i32",
  },
  vd_unix_connect: {
    parameters: [
      "buffer", // const char *path
      "u32", // uint32_t path_len
      "i32", // int nonblock
    ],
    result: "i32",
  },
  vd_socketpair: {
    parameters: [
      "i32", // int nonblock
      "buffer", // int32_t fds_out[2]
    ],
    result: "i32",
  },
  vd_sendmsg: {
    parameters: [
      "i32", // int fd
      "buffer", // const void *buf
      "u64", // size_t len
      "buffer", // const int32_t *fds
      "u32", // uint32_t nfds
    ],
    result: "i64",
  },
  vd_recvmsg: {
    parameters: [
      "i32", // int fd
      "buffer", // void *buf
      "u64", // size_t len
      "buffer", // int32_t *fds_out
      "u32", // uint32_t max_fds
      "buffer", // int32_t info_out[3]
    ],
    result: "i64",
  },
  vd_relay_create: {
    parameters: [
      "buffer", // uint64_t *handle_out
    ],
    result: "i32",
  },
  vd_relay_wait_address: { parameters: [], result: "u64" }, // int32_t (*)(uint64_t handle)
  vd_relay_stop: {
    parameters: [
      "u64", // struct vd_relay *handle
    ],
    result: "void",
  },
  vd_waker_create: {
    parameters: [
      "u64", // struct vd_relay *relay
      "u32", // uint32_t slot
      "buffer", // uint64_t *handle_out
    ],
    result: "i32",
  },
  vd_waker_shared: {
    parameters: [
      "u64", // struct vd_waker *handle
    ],
    result: "u64",
  },
  vd_waker_wakes: {
    parameters: [
      "u64", // struct vd_waker *handle
    ],
    result: "u64",
  },
  vd_waker_watch: {
    parameters: [
      "u64", // struct vd_waker *handle
      "i32", // int fd
      "u32", // uint32_t token
      "i32", // int kind (0 eventfd, 1 hang-up, 2 readable)
    ],
    result: "i32",
  },
  vd_waker_unwatch: {
    parameters: [
      "u64", // struct vd_waker *handle
      "u32", // uint32_t token
    ],
    result: "i32", // descriptors no longer watched
  },
  vd_waker_destroy: {
    parameters: [
      "u64", // struct vd_waker *handle
    ],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** The bound shim: `Deno.dlopen` of {@linkcode SHIM_SYMBOLS}. */
export type ShimLibrary = Deno.DynamicLibrary<typeof SHIM_SYMBOLS>;

/** The shim's functions. */
export type Shim = ShimLibrary["symbols"];
