/*
 * virtio for Deno: the native shim.
 *
 * Thin wrappers over the Linux system calls the TypeScript driver needs and
 * nothing else: no driver logic lives here. Every function that can fail
 * returns a negative errno instead of relying on the thread-local `errno`,
 * which the JavaScript runtime may clobber between two FFI calls.
 *
 * The pieces with state are the "relay" and its "wakers". A relay is one
 * per JavaScript isolate: an epoll set that a helper Worker of that isolate
 * sleeps on in vd_relay_wait() (a blocking call on the helper's thread,
 * never on an event loop). A waker is a set of watched descriptors
 * (virtqueue call eventfds, MSI-X vectors, sockets) with a bitmap shared
 * with JavaScript: when one fires, the helper sets the watch's bit in its
 * waker's bitmap and the waker's bit in the relay's `fired` words, then
 * turns each waker's bit into an Atomics.notify that the isolate's event
 * loop awaits with Atomics.waitAsync. No thread here ever calls into
 * JavaScript (a thread-safe FFI callback would: it runs on a runtime that
 * may already be torn down), the shim starts no thread of its own, and
 * nothing needs a socket, a file or any permission but FFI.
 *
 * Build: cc -O2 -fPIC -shared -o libvirtio_shim.so shim.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define VD_API __attribute__((visibility("default")))

/* Version of this ABI; the loader refuses a library that reports another. */
VD_API uint32_t vd_abi_version(void) { return 8; }

/* ------------------------------------------------------------------ memory */

VD_API int32_t vd_memfd_create(const char *name, uint32_t flags) {
  int fd = memfd_create(name, flags);
  return fd < 0 ? -errno : fd;
}

VD_API int32_t vd_ftruncate(int32_t fd, uint64_t size) {
  return ftruncate(fd, (off_t)size) < 0 ? -errno : 0;
}

/* Returns the mapping's address, or a negative errno. */
VD_API int64_t vd_mmap(uint64_t addr, uint64_t len, int32_t prot, int32_t flags,
                       int32_t fd, uint64_t offset) {
  void *p = mmap((void *)(uintptr_t)addr, (size_t)len, prot, flags, fd,
                 (off_t)offset);
  return p == MAP_FAILED ? -errno : (int64_t)(uintptr_t)p;
}

VD_API int32_t vd_munmap(uint64_t addr, uint64_t len) {
  return munmap((void *)(uintptr_t)addr, (size_t)len) < 0 ? -errno : 0;
}

/* CLOCK_MONOTONIC in nanoseconds, as a double (exact to the nanosecond for
 * the first 104 days of uptime, to 2 ns after that). A fast call: ~25 ns,
 * where performance.now() costs ~100 ns here. */
VD_API double vd_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* ------------------------------------------------------------------- MMIO */

/* Device register accesses of exactly the given width (volatile: never
 * merged, split, elided or reordered by the compiler). Used for virtio-pci
 * registers in a mapped BAR. */
VD_API uint32_t vd_mmio_read8(uint64_t addr) { return *(volatile uint8_t *)(uintptr_t)addr; }
VD_API uint32_t vd_mmio_read16(uint64_t addr) { return *(volatile uint16_t *)(uintptr_t)addr; }
VD_API uint32_t vd_mmio_read32(uint64_t addr) { return *(volatile uint32_t *)(uintptr_t)addr; }

/* Fence-then-write: a full fence precedes each register write, so every
 * store to the rings (descriptors, the available index) is visible to the
 * device before the write that tells it to look (store-store and store-MMIO
 * ordering; an mfence/dmb). The names say so. */
VD_API void vd_mmio_fence_write8(uint64_t addr, uint32_t v) {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  *(volatile uint8_t *)(uintptr_t)addr = (uint8_t)v;
}
VD_API void vd_mmio_fence_write16(uint64_t addr, uint32_t v) {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  *(volatile uint16_t *)(uintptr_t)addr = (uint16_t)v;
}
VD_API void vd_mmio_fence_write32(uint64_t addr, uint32_t v) {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  *(volatile uint32_t *)(uintptr_t)addr = v;
}

/* ------------------------------------------------------------ descriptors */

VD_API int32_t vd_close(int32_t fd) { return close(fd) < 0 ? -errno : 0; }

VD_API int32_t vd_open(const char *path, int32_t flags) {
  int fd = open(path, flags | O_CLOEXEC);
  return fd < 0 ? -errno : fd;
}

/* readlink(2) into `buf` (not NUL-terminated): the length, or -errno;
 * -ENAMETOOLONG when the target does not fit. */
VD_API int64_t vd_readlink(const char *path, char *buf, uint64_t len) {
  ssize_t n = readlink(path, buf, (size_t)len);
  if (n < 0) return -errno;
  return (uint64_t)n == len ? -ENAMETOOLONG : n;
}

VD_API int32_t vd_eventfd(uint32_t initval, int32_t flags) {
  int fd = eventfd(initval, flags);
  return fd < 0 ? -errno : fd;
}

VD_API int32_t vd_eventfd_write(int32_t fd, uint64_t value) {
  ssize_t r = write(fd, &value, sizeof value);
  if (r == (ssize_t)sizeof value) return 0;
  return r < 0 ? -errno : -EIO;
}

/* Returns the counter (which is never negative as an int64 in practice:
 * it saturates at 0xfffffffffffffffe), or a negative errno (-EAGAIN when
 * the eventfd is non-blocking and zero). */
VD_API int64_t vd_eventfd_read(int32_t fd) {
  uint64_t value = 0;
  ssize_t r = read(fd, &value, sizeof value);
  if (r == (ssize_t)sizeof value) return (int64_t)(value & INT64_MAX);
  return r < 0 ? -errno : -EIO;
}

/* poll() on two descriptors (a socket and a cancel eventfd): returns
 * revents of the first in bits 0..15 and of the second in bits 16..31,
 * 0 on timeout, or -errno. */
VD_API int32_t vd_poll2(int32_t fd0, int32_t events0, int32_t fd1,
                        int32_t events1, int32_t timeout_ms) {
  struct pollfd p[2] = {{.fd = fd0, .events = (short)events0},
                        {.fd = fd1, .events = (short)events1}};
  for (;;) {
    int r = poll(p, 2, timeout_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -errno;
    if (r == 0) return 0;
    return (int32_t)((uint32_t)(uint16_t)p[0].revents |
                     ((uint32_t)(uint16_t)p[1].revents << 16));
  }
}

VD_API int64_t vd_write(int32_t fd, const void *buf, uint64_t len) {
  ssize_t r = write(fd, buf, (size_t)len);
  return r < 0 ? -errno : r;
}

VD_API int64_t vd_pread(int32_t fd, void *buf, uint64_t len, uint64_t off) {
  ssize_t r = pread(fd, buf, (size_t)len, (off_t)off);
  return r < 0 ? -errno : r;
}

VD_API int64_t vd_pwrite(int32_t fd, const void *buf, uint64_t len,
                         uint64_t off) {
  ssize_t r = pwrite(fd, buf, (size_t)len, (off_t)off);
  return r < 0 ? -errno : r;
}

/* ioctl with a pointer argument (a struct in a caller's buffer). */
VD_API int32_t vd_ioctl_ptr(int32_t fd, uint64_t request, void *arg) {
  int r = ioctl(fd, (unsigned long)request, arg);
  return r < 0 ? -errno : r;
}

/* ioctl with an integer argument (or none). */
VD_API int32_t vd_ioctl_val(int32_t fd, uint64_t request, uint64_t value) {
  int r = ioctl(fd, (unsigned long)request, (unsigned long)value);
  return r < 0 ? -errno : r;
}

/* ------------------------------------------------------------ unix socket */

/* connect(2) with a sockaddr_un holding `name` (`len` bytes, not
 * necessarily NUL-terminated: Linux takes a full 108-byte sun_path). */
static int connect_unix_name(int fd, const char *name, size_t len) {
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, name, len);
  socklen_t addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
  for (;;) {
    if (connect(fd, (struct sockaddr *)&addr, addr_len) == 0) return 0;
    if (errno != EINTR) return -errno;
  }
}

/* connect(2) to a filesystem socket whose path does not fit in sun_path:
 * through the folder's descriptor, as /proc/self/fd/DIRFD/NAME (the kernel
 * resolves the rest of the path). -ENAMETOOLONG when the last component
 * alone does not fit, or when /proc is not mounted. */
static int connect_unix_long(int fd, const char *path, size_t path_len) {
  const char *slash = memrchr(path, '/', path_len);
  if (slash == NULL) return -ENAMETOOLONG;
  size_t dir_len = slash == path ? 1 : (size_t)(slash - path);
  if (dir_len >= 4096) return -ENAMETOOLONG;
  char dir[4096];
  memcpy(dir, path, dir_len);
  dir[dir_len] = 0;
  const char *base = slash + 1;
  size_t base_len = path_len - (size_t)(base - path);
  int dir_fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return -errno;
  char via[sizeof ((struct sockaddr_un *)0)->sun_path + 1];
  int n = snprintf(via, sizeof via, "/proc/self/fd/%d/", dir_fd);
  int r;
  if (n < 0 || (size_t)n + base_len > sizeof via - 1 || access("/proc/self/fd", F_OK) != 0) {
    r = -ENAMETOOLONG;
  } else {
    memcpy(via + n, base, base_len);
    r = connect_unix_name(fd, via, (size_t)n + base_len);
  }
  close(dir_fd);
  return r;
}

/* Connects a SOCK_STREAM Unix socket to `path` (NUL-terminated; a leading
 * NUL selects the abstract namespace, `path_len` then gives the length).
 * A filesystem path may be longer than sun_path's 108 bytes (a deep
 * temporary folder): it is reached through its folder's descriptor.
 * The socket is close-on-exec, and non-blocking when `nonblock` is set. */
VD_API int32_t vd_unix_connect(const char *path, uint32_t path_len,
                               int32_t nonblock) {
  size_t sun_path_size = sizeof ((struct sockaddr_un *)0)->sun_path;
  if (path_len == 0) return -ENAMETOOLONG;
  if (path_len > sun_path_size && path[0] == 0) return -ENAMETOOLONG;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int r = path_len <= sun_path_size ? connect_unix_name(fd, path, path_len)
                                    : connect_unix_long(fd, path, path_len);
  if (r < 0) {
    close(fd);
    return r;
  }
  if (nonblock) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
      int e = errno;
      close(fd);
      return -e;
    }
  }
  return fd;
}

/* A connected pair of SOCK_STREAM Unix sockets, close-on-exec, non-blocking
 * when `nonblock` is set: fds_out[0] and fds_out[1]. For vhost-user's
 * back-end channel (one end goes to the back-end) and in-process peers. */
VD_API int32_t vd_socketpair(int32_t nonblock, int32_t *fds_out) {
  int type = SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0);
  return socketpair(AF_UNIX, type, 0, fds_out) < 0 ? -errno : 0;
}

/* Sends `len` bytes with up to 16 descriptors attached (SCM_RIGHTS).
 * Returns the number of bytes sent or -errno. Never raises SIGPIPE. */
VD_API int64_t vd_sendmsg(int32_t fd, const void *buf, uint64_t len,
                          const int32_t *fds, uint32_t nfds) {
  if (nfds > 16) return -EINVAL;
  struct iovec iov = {.iov_base = (void *)buf, .iov_len = (size_t)len};
  union {
    char buf[CMSG_SPACE(sizeof(int) * 16)];
    struct cmsghdr align;
  } ctl;
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 0) {
    memset(&ctl, 0, sizeof ctl);
    msg.msg_control = ctl.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  for (;;) {
    ssize_t r = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    return r < 0 ? -errno : r;
  }
}

/* Receives up to `len` bytes (MSG_DONTWAIT) and any descriptors that come
 * with them. Up to `max_fds` descriptors are stored in `fds_out`; any
 * beyond that are closed at once so that none leaks. `info_out[0]` gets the
 * number of descriptors stored, `info_out[1]` the number closed, and
 * `info_out[2]` the msg_flags (MSG_TRUNC, MSG_CTRUNC). Returns the number
 * of bytes received (0 at end of stream) or -errno. */
VD_API int64_t vd_recvmsg(int32_t fd, void *buf, uint64_t len, int32_t *fds_out,
                          uint32_t max_fds, int32_t *info_out) {
  struct iovec iov = {.iov_base = buf, .iov_len = (size_t)len};
  union {
    char buf[CMSG_SPACE(sizeof(int) * 64)];
    struct cmsghdr align;
  } ctl;
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl.buf;
  msg.msg_controllen = sizeof ctl.buf;
  ssize_t r;
  for (;;) {
    r = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (r < 0 && errno == EINTR) continue;
    break;
  }
  if (r < 0) return -errno;
  int32_t stored = 0, closed = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int *p = (int *)CMSG_DATA(c);
    for (size_t i = 0; i < n; i++) {
      int got;
      memcpy(&got, p + i, sizeof got);
      if ((uint32_t)stored < max_fds) {
        fds_out[stored++] = got;
      } else {
        close(got);
        closed++;
      }
    }
  }
  info_out[0] = stored;
  info_out[1] = closed;
  info_out[2] = msg.msg_flags;
  return r;
}

/* ------------------------------------------------------------ relay, wakers */

#define VD_RELAY_SLOTS 1024     /* wakers per relay (per isolate) */
#define VD_WAKER_WORDS 1024     /* tokens per waker: 32768 */
#define VD_WAKER_MAX_WATCHES 65535
#define VD_STOP_DATA UINT64_MAX /* epoll data of the relay's stop eventfd */

/* A tiny lock: held only for a few loads, stores and non-blocking system
 * calls, by the helper while it files events and by JavaScript while it
 * adds or removes a waker or a watch. */
static void vd_lock(uint32_t *l) {
  while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE) != 0) {
    while (__atomic_load_n(l, __ATOMIC_RELAXED) != 0) sched_yield();
  }
}
static void vd_unlock(uint32_t *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

struct vd_waker;

struct vd_relay {
  /* Bit s set: waker s signalled since the helper last took the bits.
   * First in the struct: the helper maps them at the handle's address. */
  uint32_t fired[VD_RELAY_SLOTS / 32];
  uint32_t lock;
  int epfd;
  int stopfd;
  uint32_t next_gen;
  struct vd_waker *wakers[VD_RELAY_SLOTS];
};

struct vd_waker {
  /* Bit t set: token t fired since JavaScript last took the bits.
   * Shared with JavaScript, which takes them with Atomics.exchange. */
  uint32_t pending[VD_WAKER_WORDS];
  /* 1 from the helper's signal until JavaScript takes the bits (it clears
   * this word first). */
  uint32_t signaled;
  uint32_t pad;
  uint64_t wakes; /* statistics: signals sent */
  struct vd_relay *relay;
  uint32_t slot;
  uint32_t gen; /* tells this waker's events from those of a slot's earlier owner */
  /* Duplicates of the watched descriptors (owned here, closed under the
   * relay's lock: the helper may be reading one when JavaScript closes its
   * own copy, and a closed-and-reused number must never be read from), and
   * each watch's token. */
  int *fds;
  uint32_t *tokens;
  uint32_t nwatch;
  uint32_t capwatch;
};

/* epoll data of a watch: the watch's index, the waker's slot, the kind,
 * and the waker's generation. */
static uint64_t vd_watch_data(uint32_t index, uint32_t slot, uint32_t kind, uint32_t gen) {
  return (uint64_t)index | ((uint64_t)slot << 16) | ((uint64_t)kind << 26) | ((uint64_t)gen << 32);
}

/* Creates a relay; stores its handle in handle_out[0]. */
VD_API int32_t vd_relay_create(uint64_t *handle_out) {
  struct vd_relay *r = calloc(1, sizeof *r);
  if (!r) return -ENOMEM;
  r->epfd = epoll_create1(EPOLL_CLOEXEC);
  r->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = VD_STOP_DATA};
  if (r->epfd < 0 || r->stopfd < 0 || epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->stopfd, &ev) < 0) {
    int e = errno;
    if (r->epfd >= 0) close(r->epfd);
    if (r->stopfd >= 0) close(r->stopfd);
    free(r);
    return -e;
  }
  *handle_out = (uint64_t)(uintptr_t)r;
  return 0;
}

/* Files one event under the lock: the watch's bit in its waker (whose
 * eventfd counter is consumed, so that level-triggered epoll sleeps again).
 * Returns the waker, or NULL for an event of a waker that is gone. */
static struct vd_waker *vd_file_event(struct vd_relay *r, uint64_t data, uint32_t events) {
  uint32_t index = (uint32_t)data & 0xffffu;
  uint32_t slot = ((uint32_t)data >> 16) & 0x3ffu;
  uint32_t kind = ((uint32_t)data >> 26) & 3u;
  struct vd_waker *w = r->wakers[slot];
  if (!w || w->gen != (uint32_t)(data >> 32) || index >= w->nwatch || w->fds[index] < 0) return NULL;
  if (kind == 0 && (events & EPOLLIN)) {
    uint64_t v;
    ssize_t n;
    do {
      n = read(w->fds[index], &v, sizeof v);
    } while (n < 0 && errno == EINTR);
  }
  uint32_t token = w->tokens[index];
  __atomic_fetch_or(&w->pending[token >> 5], 1u << (token & 31), __ATOMIC_SEQ_CST);
  return w;
}

/* Blocks until a watched descriptor fires and its waker was signalled (its
 * bit set in `fired`); returns the number of wakers signalled, or -1 once
 * the relay is stopped. Called by the isolate's helper Worker only. */
VD_API int32_t vd_relay_wait(uint64_t handle) {
  struct vd_relay *r = (struct vd_relay *)(uintptr_t)handle;
  struct epoll_event evs[64];
  for (;;) {
    int n = epoll_wait(r->epfd, evs, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    int signalled = 0, stopped = 0;
    struct vd_waker *seen[64];
    int nseen = 0;
    vd_lock(&r->lock);
    for (int i = 0; i < n; i++) {
      if (evs[i].data.u64 == VD_STOP_DATA) {
        stopped = 1;
        continue;
      }
      struct vd_waker *w = vd_file_event(r, evs[i].data.u64, evs[i].events);
      if (!w) continue;
      int dup = 0;
      for (int k = 0; k < nseen; k++) dup |= seen[k] == w;
      if (!dup) seen[nseen++] = w;
    }
    for (int k = 0; k < nseen; k++) {
      struct vd_waker *w = seen[k];
      /* The pending bits were set (seq_cst RMW) before this exchange;
       * JavaScript clears `signaled` before it takes the bits. So either
       * JavaScript sees a bit in its current scan, or signaled is 0 here and
       * it is signalled again: no wake-up can be lost. */
      if (__atomic_exchange_n(&w->signaled, 1, __ATOMIC_SEQ_CST) == 0) {
        __atomic_fetch_or(&r->fired[w->slot >> 5], 1u << (w->slot & 31), __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&w->wakes, 1, __ATOMIC_RELAXED);
        signalled++;
      }
    }
    vd_unlock(&r->lock);
    if (stopped) return -1;
    if (signalled > 0) return signalled;
  }
}

/* The address of vd_relay_wait, for the helper Worker to call it through
 * Deno.UnsafeFnPointer without loading the library a second time. */
VD_API uint64_t vd_relay_wait_address(void) {
  return (uint64_t)(uintptr_t)&vd_relay_wait;
}

/* Ends every wait, now and later (the helper then returns for good). The
 * relay itself is never freed: the helper may still be inside
 * vd_relay_wait. */
VD_API void vd_relay_stop(uint64_t handle) {
  struct vd_relay *r = (struct vd_relay *)(uintptr_t)handle;
  uint64_t one = 1;
  ssize_t n;
  do {
    n = write(r->stopfd, &one, sizeof one);
  } while (n < 0 && errno == EINTR);
}

/* Creates a waker in `slot` of `relay` (a free slot: JavaScript keeps
 * track). Stores the handle in handle_out[0]. */
VD_API int32_t vd_waker_create(uint64_t relay, uint32_t slot, uint64_t *handle_out) {
  struct vd_relay *r = (struct vd_relay *)(uintptr_t)relay;
  if (slot >= VD_RELAY_SLOTS) return -EINVAL;
  struct vd_waker *w = calloc(1, sizeof *w);
  if (!w) return -ENOMEM;
  w->relay = r;
  w->slot = slot;
  vd_lock(&r->lock);
  if (r->wakers[slot]) {
    vd_unlock(&r->lock);
    free(w);
    return -EBUSY;
  }
  w->gen = ++r->next_gen;
  r->wakers[slot] = w;
  vd_unlock(&r->lock);
  *handle_out = (uint64_t)(uintptr_t)w;
  return 0;
}

/* The address of the pending bitmap (VD_WAKER_WORDS u32 words) followed by
 * the `signaled` word, for JavaScript to map once. */
VD_API uint64_t vd_waker_shared(uint64_t handle) {
  return (uint64_t)(uintptr_t)((struct vd_waker *)(uintptr_t)handle)->pending;
}

VD_API uint64_t vd_waker_wakes(uint64_t handle) {
  struct vd_waker *w = (struct vd_waker *)(uintptr_t)handle;
  return __atomic_load_n(&w->wakes, __ATOMIC_RELAXED);
}

/* Watches a duplicate of `fd` under `token`.
 * kind 0: a non-blocking eventfd (level-triggered, counter consumed on each
 *         wake; -EINVAL when it blocks: the helper reads it under the lock).
 * kind 1: hang-up/error only (one-shot), e.g. a vhost-user socket.
 * kind 2: readable or hung up (edge-triggered: one wake per arrival; the
 *         reader drains the socket until EAGAIN), e.g. a back-end channel. */
VD_API int32_t vd_waker_watch(uint64_t handle, int32_t fd, uint32_t token, int32_t kind) {
  struct vd_waker *w = (struct vd_waker *)(uintptr_t)handle;
  struct vd_relay *r = w->relay;
  if (token >= VD_WAKER_WORDS * 32 || kind < 0 || kind > 2) return -EINVAL;
  if (kind == 0) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) return -errno;
    if (!(fl & O_NONBLOCK)) return -EINVAL;
  }
  int e = 0;
  vd_lock(&r->lock);
  if (w->nwatch == VD_WAKER_MAX_WATCHES) {
    e = ENOSPC;
    goto out;
  }
  if (w->nwatch == w->capwatch) {
    uint32_t cap = w->capwatch ? w->capwatch * 2 : 16;
    int *fds = realloc(w->fds, cap * sizeof(int));
    if (fds) w->fds = fds;
    uint32_t *tokens = realloc(w->tokens, cap * sizeof(uint32_t));
    if (tokens) w->tokens = tokens;
    if (!fds || !tokens) {
      e = ENOMEM;
      goto out;
    }
    w->capwatch = cap;
  }
  int dup = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (dup < 0) {
    e = errno;
    goto out;
  }
  struct epoll_event ev;
  memset(&ev, 0, sizeof ev);
  ev.events = kind == 0   ? EPOLLIN
              : kind == 1 ? (EPOLLRDHUP | EPOLLONESHOT)
                          : (EPOLLIN | EPOLLRDHUP | EPOLLET);
  ev.data.u64 = vd_watch_data(w->nwatch, w->slot, (uint32_t)kind, w->gen);
  w->fds[w->nwatch] = dup;
  w->tokens[w->nwatch] = token;
  if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, dup, &ev) < 0) {
    e = errno;
    close(dup);
    goto out;
  }
  w->nwatch++;
out:
  vd_unlock(&r->lock);
  return -e;
}

/* Stops watching every descriptor watched under `token` (closing their
 * duplicates); returns how many there were. An event of one that the helper
 * took from epoll but has not filed yet is dropped. */
VD_API int32_t vd_waker_unwatch(uint64_t handle, uint32_t token) {
  struct vd_waker *w = (struct vd_waker *)(uintptr_t)handle;
  struct vd_relay *r = w->relay;
  int32_t n = 0;
  vd_lock(&r->lock);
  for (uint32_t i = 0; i < w->nwatch; i++) {
    if (w->fds[i] < 0 || w->tokens[i] != token) continue;
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, w->fds[i], NULL);
    close(w->fds[i]);
    w->fds[i] = -1;
    n++;
  }
  vd_unlock(&r->lock);
  return n;
}

/* Stops watching, closes the duplicates and frees the waker. An event of
 * it that the helper took from epoll but has not filed yet finds the slot
 * empty (or of a later generation) and is dropped. */
VD_API int32_t vd_waker_destroy(uint64_t handle) {
  struct vd_waker *w = (struct vd_waker *)(uintptr_t)handle;
  struct vd_relay *r = w->relay;
  vd_lock(&r->lock);
  for (uint32_t i = 0; i < w->nwatch; i++) {
    if (w->fds[i] < 0) continue;
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, w->fds[i], NULL);
    close(w->fds[i]);
  }
  r->wakers[w->slot] = NULL;
  vd_unlock(&r->lock);
  free(w->fds);
  free(w->tokens);
  free(w);
  return 0;
}
