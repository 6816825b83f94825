/*
 * virtio for Deno: the native shim.
 *
 * Thin wrappers over the Linux system calls the TypeScript driver needs and
 * nothing else: no driver logic lives here. Every function that can fail
 * returns a negative errno instead of relying on the thread-local `errno`,
 * which the JavaScript runtime may clobber between two FFI calls.
 *
 * The one piece with state is the "waker": a thread that sleeps in
 * epoll_wait on eventfds (virtqueue call fds, MSI-X vectors) and on hang-up
 * of a socket, records which ones fired in a shared bitmap, and wakes the
 * Deno event loop by writing one byte to a Unix socket that Deno reads with
 * an ordinary async read. Measured on the target machines, a socket wake
 * costs ~5 us where a thread-safe FFI callback costs ~50 us.
 *
 * Build: cc -O2 -fPIC -shared -o libvirtio_shim.so shim.c -lpthread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
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
VD_API uint32_t vd_abi_version(void) { return 7; }

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

/* Connects a SOCK_STREAM Unix socket to `path` (NUL-terminated; a leading
 * NUL selects the abstract namespace, `path_len` then gives the length).
 * The socket is close-on-exec, and non-blocking when `nonblock` is set. */
VD_API int32_t vd_unix_connect(const char *path, uint32_t path_len,
                               int32_t nonblock) {
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (path_len == 0 || path_len >= sizeof addr.sun_path) return -ENAMETOOLONG;
  memcpy(addr.sun_path, path, path_len);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len);
  for (;;) {
    if (connect(fd, (struct sockaddr *)&addr, len) == 0) break;
    if (errno == EINTR) continue;
    int e = errno;
    close(fd);
    return -e;
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

/* ------------------------------------------------------------------ waker */

#define VD_WAKER_WORDS 1024 /* 32768 tokens */
#define VD_WAKER_STOP_TOKEN 0xffffffffu

struct vd_waker {
  /* Bit t set: token t fired since JavaScript last took the bits.
   * Shared with JavaScript, which takes them with Atomics.exchange. */
  uint32_t pending[VD_WAKER_WORDS];
  /* 1 while a wake byte is unread on the socket (JavaScript clears it). */
  uint32_t signaled;
  uint32_t pad;
  uint64_t wakes; /* statistics: wake bytes written */
  int epfd;
  int stopfd;
  int sockfd;
  pthread_t thread;
  /* Duplicates of the watched descriptors, owned by the waker and closed
   * only after the thread has been joined: the thread may still be reading
   * one when JavaScript closes its own copy, and a closed-and-reused number
   * must never be read from. */
  int *owned;
  uint32_t nowned;
  uint32_t capowned;
};

static void vd_waker_signal(struct vd_waker *w) {
  /* The pending bit was set (seq_cst RMW) before this exchange; JavaScript
   * clears `signaled` before it takes the bits. So either JavaScript sees
   * the bit in its current scan, or we see signaled == 0 here and write a
   * new wake byte: no wake-up can be lost. */
  if (__atomic_exchange_n(&w->signaled, 1, __ATOMIC_SEQ_CST) == 0) {
    char b = 1;
    ssize_t r;
    do {
      r = send(w->sockfd, &b, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    /* EAGAIN: the socket already holds unread wake bytes; one is enough. */
    __atomic_add_fetch(&w->wakes, 1, __ATOMIC_RELAXED);
  }
}

static void *vd_waker_main(void *arg) {
  struct vd_waker *w = arg;
  struct epoll_event evs[64];
  for (;;) {
    int n = epoll_wait(w->epfd, evs, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    int fired = 0;
    for (int i = 0; i < n; i++) {
      uint64_t data = evs[i].data.u64;
      if ((uint32_t)data == VD_WAKER_STOP_TOKEN) return NULL;
      uint32_t token = (uint32_t)data & 0xffffffu;
      uint32_t kind = ((uint32_t)data >> 24) & 0xffu;
      int fd = (int)(data >> 32);
      if (token >= VD_WAKER_WORDS * 32) continue;
      if (kind == 0 && (evs[i].events & EPOLLIN)) {
        /* An eventfd: consume its counter so that level-triggered epoll
         * sleeps again until the next signal. A hang-up watch registers
         * without EPOLLIN and is one-shot; a readable watch is
         * edge-triggered and JavaScript reads the socket itself. */
        uint64_t v;
        ssize_t r;
        do {
          r = read(fd, &v, sizeof v);
        } while (r < 0 && errno == EINTR);
      }
      __atomic_fetch_or(&w->pending[token >> 5], 1u << (token & 31),
                        __ATOMIC_SEQ_CST);
      fired = 1;
    }
    if (fired) vd_waker_signal(w);
  }
  return NULL;
}

/* Creates a waker whose thread connects to the Unix socket at `path` (which
 * the caller is listening on). Stores the handle in handle_out[0]. */
VD_API int32_t vd_waker_create(const char *path, uint32_t path_len,
                               uint64_t *handle_out) {
  struct vd_waker *w = calloc(1, sizeof *w);
  if (!w) return -ENOMEM;
  w->epfd = w->stopfd = w->sockfd = -1;
  int e = 0;
  w->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (w->epfd < 0) goto fail_errno;
  w->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (w->stopfd < 0) goto fail_errno;
  struct epoll_event ev = {.events = EPOLLIN,
                           .data.u64 = VD_WAKER_STOP_TOKEN};
  if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->stopfd, &ev) < 0) goto fail_errno;
  int fd = vd_unix_connect(path, path_len, 1);
  if (fd < 0) {
    e = -fd;
    goto fail;
  }
  w->sockfd = fd;
  e = pthread_create(&w->thread, NULL, vd_waker_main, w);
  if (e != 0) goto fail;
  *handle_out = (uint64_t)(uintptr_t)w;
  return 0;
fail_errno:
  e = errno;
fail:
  if (w->sockfd >= 0) close(w->sockfd);
  if (w->stopfd >= 0) close(w->stopfd);
  if (w->epfd >= 0) close(w->epfd);
  free(w);
  return -e;
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
 * kind 0: an eventfd (level-triggered, counter consumed on each wake).
 * kind 1: hang-up/error only (one-shot), e.g. a vhost-user socket.
 * kind 2: readable or hung up (edge-triggered: one wake per arrival; the
 *         reader drains the socket until EAGAIN), e.g. a back-end channel. */
VD_API int32_t vd_waker_watch(uint64_t handle, int32_t fd, uint32_t token,
                              int32_t kind) {
  struct vd_waker *w = (struct vd_waker *)(uintptr_t)handle;
  if (token >= VD_WAKER_WORDS * 32 || kind < 0 || kind > 2) return -EINVAL;
  if (w->nowned == w->capowned) {
    uint32_t cap = w->capowned ? w->capowned * 2 : 16;
    int *p = realloc(w->owned, cap * sizeof(int));
    if (!p) return -ENOMEM;
    w->owned = p;
    w->capowned = cap;
  }
  int dup = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (dup < 0) return -errno;
  struct epoll_event ev;
  memset(&ev, 0, sizeof ev);
  ev.events = kind == 0   ? EPOLLIN
              : kind == 1 ? (EPOLLRDHUP | EPOLLONESHOT)
                          : (EPOLLIN | EPOLLRDHUP | EPOLLET);
  ev.data.u64 = ((uint64_t)(uint32_t)dup << 32) | ((uint64_t)kind << 24) | token;
  if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, dup, &ev) < 0) {
    int e = errno;
    close(dup);
    return -e;
  }
  w->owned[w->nowned++] = dup;
  return 0;
}

/* Stops and joins the thread, then frees everything. The thread never
 * blocks on anything but epoll_wait, so the join returns promptly. */
VD_API int32_t vd_waker_destroy(uint64_t handle) {
  struct vd_waker *w = (struct vd_waker *)(uintptr_t)handle;
  uint64_t one = 1;
  ssize_t r;
  do {
    r = write(w->stopfd, &one, sizeof one);
  } while (r < 0 && errno == EINTR);
  int e = pthread_join(w->thread, NULL);
  for (uint32_t i = 0; i < w->nowned; i++) close(w->owned[i]);
  free(w->owned);
  close(w->sockfd);
  close(w->stopfd);
  close(w->epfd);
  free(w);
  return -e;
}
