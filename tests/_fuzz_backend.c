/*
 * A vhost-user-blk back-end for the back-end fuzzer's tests
 * (tests/fuzz_backend_test.ts): careful by default, with one planted bug
 * on request (--bug NAME). The fuzzer must find each bug with the right
 * kind, and find nothing without one.
 *
 * Careful means: every descriptor index, chain length, table length and
 * address is checked before use; a chain that cannot be walked safely (an
 * index out of range, a loop, an address outside the memory table, a
 * device-readable descriptor after a device-writable one, an indirect table
 * where none may be) makes the device refuse to go on: it closes the
 * connection, as a device entering NEEDS_RESET would; a request that can be
 * walked but is wrong (a short header, a length that is not whole sectors,
 * sectors past the capacity, unknown flags) gets IOERR or UNSUPP.
 *
 * One front-end at a time, one queue, split and (with --packed) packed
 * rings, indirect descriptors, EVENT_IDX, an in-memory disk. Single
 * threaded: a poll loop over the listening socket, the connection and the
 * kick eventfd.
 *
 *   _fuzz_backend --socket PATH [--size BYTES] [--packed] [--bug NAME]
 *
 * Bugs: crash-header-split (abort() when the header is split over several
 * descriptors), flush-hang (a flush in a batch of 3 or more requests is
 * never completed), oob-write (read data is copied in whole 4 KiB pieces,
 * past the end of a descriptor that is not a multiple of 4 KiB),
 * write-readable (a write request's header gets a tag written into it),
 * double-completion (the last request of a batch of 2 or more is completed
 * twice), capacity-off-by-one (a request that ends exactly at the capacity
 * gets IOERR), multi-desc-read (a read's data descriptors are all filled
 * from its first sector).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* ------------------------------------------------------------- protocol */

enum {
	GET_FEATURES = 1, SET_FEATURES = 2, SET_OWNER = 3, RESET_OWNER = 4, SET_MEM_TABLE = 5,
	SET_VRING_NUM = 8, SET_VRING_ADDR = 9, SET_VRING_BASE = 10, GET_VRING_BASE = 11,
	SET_VRING_KICK = 12, SET_VRING_CALL = 13, SET_VRING_ERR = 14, GET_PROTOCOL_FEATURES = 15,
	SET_PROTOCOL_FEATURES = 16, GET_QUEUE_NUM = 17, SET_VRING_ENABLE = 18, GET_CONFIG = 24,
	SET_CONFIG = 25, GET_MAX_MEM_SLOTS = 36, ADD_MEM_REG = 37, REM_MEM_REG = 38,
};

#define FLAG_REPLY 0x4u
#define FLAG_NEED_REPLY 0x8u
#define VRING_NOFD 0x100u

#define F_SIZE_MAX (1ull << 1)
#define F_SEG_MAX (1ull << 2)
#define F_BLK_SIZE (1ull << 6)
#define F_FLUSH (1ull << 9)
#define F_DISCARD (1ull << 13)
#define F_WRITE_ZEROES (1ull << 14)
#define F_INDIRECT (1ull << 28)
#define F_EVENT_IDX (1ull << 29)
#define F_PROTOCOL (1ull << 30)
#define F_VERSION_1 (1ull << 32)
#define F_PACKED (1ull << 34)

#define PF_REPLY_ACK (1ull << 3)
#define PF_CONFIG (1ull << 9)
#define PF_MEM_SLOTS (1ull << 15)

#define DESC_NEXT 1
#define DESC_WRITE 2
#define DESC_INDIRECT 4
#define PACKED_AVAIL (1u << 7)
#define PACKED_USED (1u << 15)

#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define T_DISCARD 11
#define T_WRITE_ZEROES 13
#define S_OK 0
#define S_IOERR 1
#define S_UNSUPP 2

#define SEG_MAX 126
#define SIZE_MAX_BYTES 65536
#define RANGE_MAX_SECTORS 32768
#define RANGE_MAX_SEGS 4
#define MAX_REGIONS 32
#define MAX_CHAIN 32768

struct desc { /* split (virtio 1.2 §2.7.5) */
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct pdesc { /* packed (§2.8.13) */
	uint64_t addr;
	uint32_t len;
	uint16_t id;
	uint16_t flags;
};

struct region {
	uint64_t gpa, size, uva;
	uint8_t *map;
	size_t map_len;
	uint64_t map_off;
};

struct seg {
	uint8_t *p;
	uint32_t len;
	bool write;
};

struct chain {
	struct seg seg[MAX_CHAIN];
	int n;
	uint64_t readable, writable;
	uint32_t entries; /* packed: ring entries */
	bool split_header; /* the header is not whole in the first readable descriptor */
};

enum bug {
	BUG_NONE, BUG_CRASH_HEADER_SPLIT, BUG_FLUSH_HANG, BUG_OOB_WRITE, BUG_WRITE_READABLE,
	BUG_DOUBLE_COMPLETION, BUG_CAPACITY_OFF_BY_ONE, BUG_MULTI_DESC_READ,
};

static const char *const BUG_NAMES[] = {
	"none", "crash-header-split", "flush-hang", "oob-write", "write-readable",
	"double-completion", "capacity-off-by-one", "multi-desc-read",
};

static struct {
	const char *socket;
	uint64_t size;
	bool packed;
	enum bug bug;
} opt = { .size = 16u << 20 };

/* ---------------------------------------------------------------- state */

static uint8_t *disk;
static uint64_t capacity; /* sectors */
static int listen_fd = -1, conn = -1;
static uint64_t features, protocol_features;
static struct region regions[MAX_REGIONS];
static int nregions;
static struct chain chain;

static struct vq {
	uint32_t num;
	uint64_t desc_uva, avail_uva, used_uva;
	bool addr_set, enabled, started;
	int kick, call;
	/* split */
	struct desc *desc;
	struct pdesc *pdesc;
	uint16_t *avail; /* flags, idx, ring[num], used_event */
	uint16_t *used16; /* flags, idx, then elements; avail_event after them */
	uint32_t *used32;
	uint16_t last_avail, used_idx, signalled;
	/* packed */
	uint16_t *driver_event, *device_event;
	uint16_t avail_pos, used_pos;
	bool avail_wrap, used_wrap;
} vq = { .kick = -1, .call = -1 };

static void die(const char *what)
{
	perror(what);
	exit(1);
}

/* ------------------------------------------------------------- memory */

static void unmap_all(void)
{
	for (int i = 0; i < nregions; i++) munmap(regions[i].map, regions[i].map_len);
	nregions = 0;
}

static bool add_region(uint64_t gpa, uint64_t size, uint64_t uva, uint64_t off, int fd)
{
	if (nregions >= MAX_REGIONS || size == 0) {
		close(fd);
		return false;
	}
	size_t len = size + off;
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED) return false;
	regions[nregions++] = (struct region){ gpa, size, uva, (uint8_t *)p + off, len, off };
	return true;
}

static void remove_region(uint64_t gpa, uint64_t size)
{
	for (int i = 0; i < nregions; i++) {
		if (regions[i].gpa == gpa && regions[i].size == size) {
			munmap(regions[i].map - regions[i].map_off, regions[i].map_len);
			regions[i] = regions[--nregions];
			return;
		}
	}
}

/* [addr, addr + len) inside one region, or NULL (every byte checked, no overflow) */
static uint8_t *translate(uint64_t addr, uint64_t len, bool by_uva)
{
	for (int i = 0; i < nregions; i++) {
		uint64_t base = by_uva ? regions[i].uva : regions[i].gpa;
		if (addr < base) continue;
		uint64_t off = addr - base;
		if (off > regions[i].size || len > regions[i].size - off) continue;
		return regions[i].map + off;
	}
	return NULL;
}

/* the end of the region that holds p (for the oob-write bug, which stays inside it) */
static uint8_t *region_end(const uint8_t *p)
{
	for (int i = 0; i < nregions; i++) {
		if (p >= regions[i].map && p < regions[i].map + regions[i].size) return regions[i].map + regions[i].size;
	}
	return (uint8_t *)p;
}

/* ------------------------------------------------------------ messages */

struct msg {
	uint32_t request, flags, size;
	uint8_t payload[4096];
	int fds[8];
	int nfds;
};

static bool read_full(int fd, void *buf, size_t n)
{
	uint8_t *b = buf;
	while (n > 0) {
		ssize_t r = read(fd, b, n);
		if (r <= 0) {
			if (r < 0 && errno == EINTR) continue;
			return false;
		}
		b += r;
		n -= (size_t)r;
	}
	return true;
}

static bool read_msg(struct msg *m)
{
	struct iovec iov = { m, 12 };
	char control[CMSG_SPACE(8 * sizeof(int))];
	struct msghdr h = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control };
	ssize_t r;
	do r = recvmsg(conn, &h, MSG_CMSG_CLOEXEC);
	while (r < 0 && errno == EINTR);
	if (r <= 0) return false;
	m->nfds = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&h); c; c = CMSG_NXTHDR(&h, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
		int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		for (int i = 0; i < n && m->nfds < 8; i++) memcpy(&m->fds[m->nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
	}
	if (r < 12 && !read_full(conn, (uint8_t *)m + r, 12 - (size_t)r)) return false;
	if (m->size > sizeof m->payload) return false;
	return read_full(conn, m->payload, m->size);
}

static void reply(const struct msg *m, const void *payload, uint32_t size)
{
	uint8_t buf[12 + 4096];
	uint32_t hdr[3] = { m->request, 1 | FLAG_REPLY, size };
	memcpy(buf, hdr, 12);
	memcpy(buf + 12, payload, size);
	if (write(conn, buf, 12 + size) != (ssize_t)(12 + size)) { /* the front-end is gone: noticed on the next read */
	}
}

static void reply_u64(const struct msg *m, uint64_t v)
{
	reply(m, &v, 8);
}

/* ---------------------------------------------------------------- rings */

static void reset_vq(void)
{
	if (vq.kick >= 0) close(vq.kick);
	if (vq.call >= 0) close(vq.call);
	memset(&vq, 0, sizeof vq);
	vq.kick = vq.call = -1;
	vq.avail_wrap = vq.used_wrap = true;
}

static void drop_connection(const char *why)
{
	if (why) fprintf(stderr, "fuzz-backend: closing the connection: %s\n", why);
	if (conn >= 0) close(conn);
	conn = -1;
	reset_vq();
	unmap_all();
	features = protocol_features = 0;
}

static bool event_idx(void)
{
	return (features & F_EVENT_IDX) != 0;
}

static bool start_vq(void)
{
	if (vq.started || !vq.addr_set || vq.kick < 0 || vq.num == 0) return vq.started;
	if ((protocol_features || (features & F_PROTOCOL)) && !vq.enabled) return false;
	if (features & F_PACKED) {
		vq.pdesc = (struct pdesc *)translate(vq.desc_uva, 16ull * vq.num, true);
		vq.driver_event = (uint16_t *)translate(vq.avail_uva, 4, true);
		vq.device_event = (uint16_t *)translate(vq.used_uva, 4, true);
		if (!vq.pdesc || !vq.driver_event || !vq.device_event) return false;
	} else {
		vq.desc = (struct desc *)translate(vq.desc_uva, 16ull * vq.num, true);
		vq.avail = (uint16_t *)translate(vq.avail_uva, 6 + 2ull * vq.num, true);
		vq.used16 = (uint16_t *)translate(vq.used_uva, 6 + 8ull * vq.num, true);
		vq.used32 = (uint32_t *)vq.used16;
		if (!vq.desc || !vq.avail || !vq.used16) return false;
	}
	vq.started = true;
	return true;
}

/* Adds one buffer to the chain; false when it cannot be used safely. */
static bool add_seg(uint64_t addr, uint32_t len, bool write, bool *saw_write)
{
	if (!write && *saw_write) return false; /* device-readable after device-writable */
	*saw_write |= write;
	if (chain.n >= MAX_CHAIN) return false;
	if (len == 0) return true;
	uint8_t *p = translate(addr, len, false);
	if (!p) return false;
	if (!write && chain.readable == 0 && len < 16) chain.split_header = true;
	chain.seg[chain.n++] = (struct seg){ p, len, write };
	if (write) chain.writable += len;
	else chain.readable += len;
	return true;
}

/* Walks an indirect table (split: by next from entry 0; packed: in order). */
static bool walk_table(uint64_t addr, uint32_t len, bool split, bool *saw_write, uint32_t *total)
{
	if (!(features & F_INDIRECT) || len == 0 || len % 16 != 0) return false;
	uint8_t *t = translate(addr, len, false);
	if (!t) return false;
	uint32_t n = len / 16, i = 0;
	for (uint32_t hops = 0;; hops++) {
		if (hops >= n || i >= n || ++*total > vq.num) return false; /* loop, next out of range, too long */
		uint64_t a;
		uint32_t l;
		uint16_t flags, next = 0;
		memcpy(&a, t + 16 * i, 8);
		memcpy(&l, t + 16 * i + 8, 4);
		if (split) {
			memcpy(&flags, t + 16 * i + 12, 2);
			memcpy(&next, t + 16 * i + 14, 2);
		} else {
			memcpy(&flags, t + 16 * i + 14, 2);
		}
		if (flags & DESC_INDIRECT) return false; /* nested */
		if (!add_seg(a, l, flags & DESC_WRITE, saw_write)) return false;
		if (split) {
			if (!(flags & DESC_NEXT)) return true;
			i = next;
		} else if (++i == n) {
			return true;
		}
	}
}

static bool walk_split(uint16_t head)
{
	chain.n = 0;
	chain.readable = chain.writable = 0;
	chain.split_header = false;
	bool saw_write = false;
	uint32_t total = 0, i = head;
	for (;;) {
		if (i >= vq.num || ++total > vq.num) return false;
		struct desc d = vq.desc[i];
		if (d.flags & DESC_INDIRECT) {
			if (d.flags & DESC_NEXT) return false;
			return walk_table(d.addr, d.len, true, &saw_write, &total);
		}
		if (!add_seg(d.addr, d.len, d.flags & DESC_WRITE, &saw_write)) return false;
		if (!(d.flags & DESC_NEXT)) return true;
		i = d.next;
	}
}

static void signal_call(void)
{
	uint64_t one = 1;
	if (vq.call >= 0 && write(vq.call, &one, 8) < 0) { /* nothing to do */
	}
}

static void push_used_split(uint32_t id, uint32_t len)
{
	uint32_t e = 1 + 2 * (vq.used_idx % vq.num);
	vq.used32[e] = id;
	vq.used32[e + 1] = len;
	vq.used_idx++;
	__atomic_store_n(&vq.used16[1], vq.used_idx, __ATOMIC_RELEASE);
}

static void push_used_packed(uint16_t id, uint32_t len, uint32_t entries)
{
	struct pdesc *d = &vq.pdesc[vq.used_pos];
	d->id = id;
	d->len = len;
	uint16_t flags = (vq.used_wrap ? PACKED_AVAIL | PACKED_USED : 0) | (len ? DESC_WRITE : 0);
	__atomic_store_n(&d->flags, flags, __ATOMIC_RELEASE);
	vq.used_pos += entries;
	if (vq.used_pos >= vq.num) {
		vq.used_pos -= vq.num;
		vq.used_wrap = !vq.used_wrap;
	}
}

static void notify_driver(uint16_t old_used)
{
	if (features & F_PACKED) {
		uint16_t flags = __atomic_load_n(&vq.driver_event[1], __ATOMIC_ACQUIRE);
		if ((flags & 3) != 1) signal_call();
		return;
	}
	if (event_idx()) {
		uint16_t ev = __atomic_load_n(&vq.avail[2 + vq.num], __ATOMIC_ACQUIRE);
		if ((uint16_t)(vq.used_idx - ev - 1) < (uint16_t)(vq.used_idx - old_used)) signal_call();
	} else if (!(__atomic_load_n(&vq.avail[0], __ATOMIC_ACQUIRE) & 1)) {
		signal_call();
	}
}

/* ------------------------------------------------------------- requests */

/* Copies between the chain's bytes [from, from + n) and buf (to_chain: buf → chain). */
static void chain_copy(uint64_t from, uint8_t *buf, uint64_t n, bool writable, bool to_chain)
{
	uint64_t at = 0;
	for (int i = 0; i < chain.n && n > 0; i++) {
		struct seg *s = &chain.seg[i];
		if (s->write != writable) continue;
		if (from >= at + s->len) {
			at += s->len;
			continue;
		}
		uint64_t off = from > at ? from - at : 0;
		uint64_t k = s->len - off < n ? s->len - off : n;
		if (to_chain) memcpy(s->p + off, buf, k);
		else memcpy(buf, s->p + off, k);
		buf += k;
		n -= k;
		from += k;
		at += s->len;
	}
}

static bool range_ok(uint64_t sector, uint64_t sectors)
{
	if (sector > capacity || sectors > capacity - sector) return false;
	if (opt.bug == BUG_CAPACITY_OFF_BY_ONE && sector + sectors >= capacity) return false;
	return true;
}

/* Reads into the chain's writable data; the planted read bugs live here. */
static void read_data(uint64_t sector, uint64_t bytes)
{
	uint64_t at = 0;
	for (int i = 0; i < chain.n && at < bytes; i++) {
		struct seg *s = &chain.seg[i];
		if (!s->write) continue;
		uint64_t k = s->len < bytes - at ? s->len : bytes - at;
		uint64_t src = opt.bug == BUG_MULTI_DESC_READ ? sector * 512 : sector * 512 + at;
		memcpy(s->p, disk + src, k);
		if (opt.bug == BUG_OOB_WRITE && k % 4096 != 0) {
			/* whole 4 KiB pieces, past the descriptor's end (within its region) */
			uint64_t extra = 4096 - k % 4096;
			uint8_t *end = region_end(s->p);
			if ((uint64_t)(end - (s->p + k)) < extra) extra = (uint64_t)(end - (s->p + k));
			uint64_t from = src + k;
			for (uint64_t j = 0; j < extra; j++) s->p[k + j] = from + j < opt.size ? disk[from + j] : 0;
		}
		at += k;
	}
}

/* Handles one request; returns the used length, or -1 to leave it uncompleted. */
static int64_t handle(uint32_t batch)
{
	if (chain.writable < 1) return -2; /* nowhere to put a status: refuse to go on */
	uint8_t *status = NULL;
	for (int i = chain.n - 1; i >= 0; i--) {
		if (chain.seg[i].write) {
			status = chain.seg[i].p + chain.seg[i].len - 1;
			break;
		}
	}
	if (opt.bug == BUG_CRASH_HEADER_SPLIT && chain.split_header) abort();
	uint64_t in_len = chain.writable - 1;
	if (chain.readable < 16) {
		*status = S_IOERR;
		return 1;
	}
	uint8_t hdr[16];
	chain_copy(0, hdr, 16, false, false);
	uint32_t type;
	uint64_t sector;
	memcpy(&type, hdr, 4);
	memcpy(&sector, hdr + 8, 8);
	uint64_t out_len = chain.readable - 16;
	uint8_t st = S_OK;
	int64_t written = 1;
	switch (type) {
	case T_IN:
		if (out_len != 0 || in_len == 0 || in_len % 512 != 0 || !range_ok(sector, in_len / 512)) {
			st = S_IOERR;
			break;
		}
		read_data(sector, in_len);
		written += (int64_t)in_len;
		break;
	case T_OUT: {
		if (in_len != 0 || out_len == 0 || out_len % 512 != 0 || !range_ok(sector, out_len / 512)) {
			st = S_IOERR;
			break;
		}
		chain_copy(16, disk + sector * 512, out_len, false, false);
		if (opt.bug == BUG_WRITE_READABLE) {
			static uint32_t tag = 0x80000000u;
			/* a tag of its own in the header's reserved field: a device-readable buffer */
			uint8_t t[4];
			tag++;
			memcpy(t, &tag, 4);
			for (int i = 0, at = 0; i < chain.n && at < 8; i++) {
				struct seg *s = &chain.seg[i];
				if (s->write) break;
				for (uint32_t j = 0; j < s->len && at < 8; j++, at++) if (at >= 4) s->p[j] = t[at - 4];
			}
		}
		break;
	}
	case T_FLUSH:
		if (opt.bug == BUG_FLUSH_HANG && batch >= 3) return -1;
		break;
	case T_GET_ID: {
		static const char id[20] = "fuzz-backend";
		uint64_t n = in_len < 20 ? in_len : 20;
		chain_copy(0, (uint8_t *)id, n, true, true);
		written += (int64_t)n;
		break;
	}
	case T_DISCARD:
	case T_WRITE_ZEROES: {
		if (in_len != 0 || out_len == 0 || out_len % 16 != 0 || out_len / 16 > RANGE_MAX_SEGS) {
			st = S_IOERR;
			break;
		}
		uint8_t segs[16 * RANGE_MAX_SEGS];
		chain_copy(16, segs, out_len, false, false);
		for (uint64_t i = 0; i < out_len / 16 && st == S_OK; i++) {
			uint64_t s;
			uint32_t n, flags;
			memcpy(&s, segs + 16 * i, 8);
			memcpy(&n, segs + 16 * i + 8, 4);
			memcpy(&flags, segs + 16 * i + 12, 4);
			if (type == T_DISCARD ? flags != 0 : (flags & ~1u) != 0) st = S_UNSUPP;
			else if (n > RANGE_MAX_SECTORS || !range_ok(s, n)) st = S_IOERR;
		}
		for (uint64_t i = 0; i < out_len / 16 && st == S_OK; i++) {
			uint64_t s;
			uint32_t n;
			memcpy(&s, segs + 16 * i, 8);
			memcpy(&n, segs + 16 * i + 8, 4);
			memset(disk + s * 512, 0, (size_t)n * 512);
		}
		break;
	}
	default:
		st = S_UNSUPP;
	}
	*status = st;
	return written;
}

static void process_split(void)
{
	uint16_t avail_idx = __atomic_load_n(&vq.avail[1], __ATOMIC_ACQUIRE);
	uint16_t pending = (uint16_t)(avail_idx - vq.last_avail);
	if (pending > vq.num) { drop_connection("the available index moved by more than the queue size"); return; }
	uint16_t old_used = vq.used_idx;
	uint32_t last_id = 0, last_len = 0, done = 0;
	while (vq.last_avail != avail_idx) {
		uint16_t head = vq.avail[2 + vq.last_avail % vq.num];
		vq.last_avail++;
		if (head >= vq.num || !walk_split(head)) { drop_connection("a chain that cannot be walked safely"); return; }
		int64_t len = handle(pending);
		if (len == -2) { drop_connection("a chain without a device-writable byte for the status"); return; }
		if (len < 0) continue;
		push_used_split(head, (uint32_t)len);
		last_id = head;
		last_len = (uint32_t)len;
		done++;
	}
	if (opt.bug == BUG_DOUBLE_COMPLETION && done >= 2) push_used_split(last_id, last_len);
	if (event_idx()) __atomic_store_n(&vq.used16[2 + 4 * vq.num], vq.last_avail, __ATOMIC_RELEASE);
	if (vq.used_idx != old_used) notify_driver(old_used);
}

static bool available(uint16_t pos, bool wrap)
{
	uint16_t flags = __atomic_load_n(&vq.pdesc[pos].flags, __ATOMIC_ACQUIRE);
	return ((flags & PACKED_AVAIL) != 0) == wrap && ((flags & PACKED_USED) != 0) != wrap;
}

static void process_packed(void)
{
	/* How many chains are available now (for the batch-dependent bugs). */
	uint32_t pending = 0;
	{
		uint16_t pos = vq.avail_pos;
		bool wrap = vq.avail_wrap;
		for (uint32_t k = 0; k < vq.num && available(pos, wrap); k++) {
			if (!(vq.pdesc[pos].flags & DESC_NEXT)) pending++;
			if (++pos == vq.num) {
				pos = 0;
				wrap = !wrap;
			}
		}
	}
	uint16_t old_used = vq.used_pos;
	uint32_t last_id = 0, last_len = 0, last_entries = 0, done = 0;
	while (available(vq.avail_pos, vq.avail_wrap)) {
		chain.n = 0;
		chain.readable = chain.writable = 0;
		chain.split_header = false;
		bool saw_write = false;
		uint32_t total = 0, entries = 0;
		uint16_t pos = vq.avail_pos, id = 0;
		bool wrap = vq.avail_wrap;
		for (;;) {
			if (entries > 0 && !available(pos, wrap)) { drop_connection("a chain runs into a descriptor not made available"); return; }
			if (++entries > vq.num) { drop_connection("a chain longer than the queue"); return; }
			struct pdesc d = vq.pdesc[pos];
			uint16_t flags = d.flags;
			id = d.id;
			if (++pos == vq.num) {
				pos = 0;
				wrap = !wrap;
			}
			if (flags & DESC_INDIRECT) {
				/* packed: an indirect descriptor is a list of its own */
				if ((flags & DESC_NEXT) || entries > 1 || !walk_table(d.addr, d.len, false, &saw_write, &total)) {
					{ drop_connection("an indirect descriptor that cannot be used"); return; }
				}
				break;
			}
			if (++total > vq.num || !add_seg(d.addr, d.len, flags & DESC_WRITE, &saw_write)) {
				{ drop_connection("a chain that cannot be walked safely"); return; }
			}
			if (!(flags & DESC_NEXT)) break;
		}
		vq.avail_pos = pos;
		vq.avail_wrap = wrap;
		int64_t len = handle(pending);
		if (len == -2) { drop_connection("a chain without a device-writable byte for the status"); return; }
		if (len < 0) continue;
		push_used_packed(id, (uint32_t)len, entries);
		last_id = id;
		last_len = (uint32_t)len;
		last_entries = entries;
		done++;
	}
	if (opt.bug == BUG_DOUBLE_COMPLETION && done >= 2) push_used_packed((uint16_t)last_id, last_len, last_entries);
	if (vq.used_pos != old_used || done > 0) notify_driver(old_used);
}

static void process(void)
{
	if (!start_vq()) return;
	if (features & F_PACKED) process_packed();
	else process_split();
}

/* ------------------------------------------------------------- control */

static void config_space(uint8_t *c)
{
	memset(c, 0, 256);
	uint32_t v32;
	memcpy(c + 0, &capacity, 8);
	v32 = SIZE_MAX_BYTES;
	memcpy(c + 8, &v32, 4);
	v32 = SEG_MAX;
	memcpy(c + 12, &v32, 4);
	v32 = 512;
	memcpy(c + 20, &v32, 4);
	uint16_t q = 1;
	memcpy(c + 34, &q, 2);
	v32 = RANGE_MAX_SECTORS;
	memcpy(c + 36, &v32, 4);
	v32 = RANGE_MAX_SEGS;
	memcpy(c + 40, &v32, 4);
	v32 = 1;
	memcpy(c + 44, &v32, 4);
	v32 = RANGE_MAX_SECTORS;
	memcpy(c + 48, &v32, 4);
	v32 = RANGE_MAX_SEGS;
	memcpy(c + 52, &v32, 4);
	c[56] = 1;
}

static uint64_t offered(void)
{
	return F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_DISCARD | F_WRITE_ZEROES | F_INDIRECT |
	       F_EVENT_IDX | F_PROTOCOL | F_VERSION_1 | (opt.packed ? F_PACKED : 0);
}

/* Handles one control message; false to drop the connection. */
static bool control(struct msg *m)
{
	uint64_t u;
	uint32_t idx, num;
	bool ack = true;
	int fd = m->nfds > 0 ? m->fds[0] : -1;
	for (int i = 1; i < m->nfds; i++) if (m->request != SET_MEM_TABLE) close(m->fds[i]);
	switch (m->request) {
	case GET_FEATURES:
		reply_u64(m, offered());
		return true;
	case SET_FEATURES:
		memcpy(&u, m->payload, 8);
		features = u & offered();
		break;
	case SET_OWNER:
	case RESET_OWNER:
		break;
	case GET_PROTOCOL_FEATURES:
		reply_u64(m, PF_REPLY_ACK | PF_CONFIG | PF_MEM_SLOTS);
		return true;
	case SET_PROTOCOL_FEATURES:
		memcpy(&u, m->payload, 8);
		protocol_features = u;
		break;
	case GET_QUEUE_NUM:
		reply_u64(m, 1);
		return true;
	case GET_MAX_MEM_SLOTS:
		reply_u64(m, MAX_REGIONS);
		return true;
	case SET_MEM_TABLE: {
		uint32_t n;
		memcpy(&n, m->payload, 4);
		unmap_all();
		for (uint32_t i = 0; i < n && i < (uint32_t)m->nfds; i++) {
			uint64_t r[4];
			memcpy(r, m->payload + 8 + 32 * i, 32);
			if (!add_region(r[0], r[1], r[2], r[3], m->fds[i])) ack = false;
		}
		fd = -1;
		break;
	}
	case ADD_MEM_REG: {
		uint64_t r[4];
		memcpy(r, m->payload + 8, 32);
		if (fd < 0 || !add_region(r[0], r[1], r[2], r[3], fd)) ack = false;
		fd = -1;
		break;
	}
	case REM_MEM_REG: {
		uint64_t r[4];
		memcpy(r, m->payload + 8, 32);
		remove_region(r[0], r[1]);
		break;
	}
	case SET_VRING_NUM:
		memcpy(&idx, m->payload, 4);
		memcpy(&num, m->payload + 4, 4);
		if (idx != 0 || num == 0 || num > 32768 || (num & (num - 1))) return false;
		vq.num = num;
		break;
	case SET_VRING_BASE:
		memcpy(&num, m->payload + 4, 4);
		if (features & F_PACKED) {
			vq.avail_pos = num & 0x7fff;
			vq.avail_wrap = (num >> 15) & 1;
			vq.used_pos = (num >> 16) & 0x7fff;
			vq.used_wrap = (num >> 31) & 1;
		} else {
			vq.last_avail = vq.used_idx = (uint16_t)num;
		}
		break;
	case SET_VRING_ADDR:
		memcpy(&vq.desc_uva, m->payload + 8, 8);
		memcpy(&vq.used_uva, m->payload + 16, 8);
		memcpy(&vq.avail_uva, m->payload + 24, 8);
		vq.addr_set = true;
		break;
	case SET_VRING_KICK:
	case SET_VRING_CALL:
	case SET_VRING_ERR:
		memcpy(&u, m->payload, 8);
		if ((u & 0xff) != 0) return false;
		if (u & VRING_NOFD) fd = -1;
		if (m->request == SET_VRING_KICK) {
			if (vq.kick >= 0) close(vq.kick);
			vq.kick = fd;
		} else if (m->request == SET_VRING_CALL) {
			if (vq.call >= 0) close(vq.call);
			vq.call = fd;
		} else if (fd >= 0) {
			close(fd);
		}
		fd = -1;
		break;
	case SET_VRING_ENABLE:
		memcpy(&num, m->payload + 4, 4);
		vq.enabled = num != 0;
		break;
	case GET_VRING_BASE: {
		uint32_t state[2] = { 0, 0 };
		if (features & F_PACKED) {
			state[1] = vq.avail_pos | (uint32_t)vq.avail_wrap << 15 | (uint32_t)vq.used_pos << 16 |
			           (uint32_t)vq.used_wrap << 31;
		} else {
			state[1] = vq.last_avail;
		}
		vq.started = false;
		vq.addr_set = false;
		if (vq.kick >= 0) close(vq.kick);
		vq.kick = -1;
		reply(m, state, 8);
		return true;
	}
	case GET_CONFIG: {
		uint32_t off, size;
		memcpy(&off, m->payload, 4);
		memcpy(&size, m->payload + 4, 4);
		uint8_t out[12 + 256], c[256];
		if (off > 256 || size > 256 - off) return false;
		config_space(c);
		memcpy(out, m->payload, 12);
		memcpy(out + 12, c + off, size);
		reply(m, out, 12 + size);
		return true;
	}
	case SET_CONFIG:
		break;
	default:
		ack = false;
	}
	if (fd >= 0) close(fd);
	if ((m->flags & FLAG_NEED_REPLY) && (protocol_features & PF_REPLY_ACK)) reply_u64(m, ack ? 0 : 1);
	if (m->request == SET_VRING_KICK || m->request == SET_VRING_ENABLE) process();
	return true;
}

/* ---------------------------------------------------------------- main */

static void usage(void)
{
	fprintf(stderr, "usage: _fuzz_backend --socket PATH [--size BYTES] [--packed] [--bug NAME]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--socket") && i + 1 < argc) opt.socket = argv[++i];
		else if (!strcmp(argv[i], "--size") && i + 1 < argc) opt.size = strtoull(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--packed")) opt.packed = true;
		else if (!strcmp(argv[i], "--bug") && i + 1 < argc) {
			const char *name = argv[++i];
			bool found = false;
			for (size_t b = 0; b < sizeof BUG_NAMES / sizeof *BUG_NAMES; b++) {
				if (!strcmp(name, BUG_NAMES[b])) {
					opt.bug = (enum bug)b;
					found = true;
				}
			}
			if (!found) usage();
		} else usage();
	}
	if (!opt.socket || opt.size == 0 || opt.size % 512) usage();
	signal(SIGPIPE, SIG_IGN);
	capacity = opt.size / 512;
	disk = calloc(1, opt.size + 4096);
	if (!disk) die("calloc");
	reset_vq();

	listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (listen_fd < 0) die("socket");
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	if (strlen(opt.socket) >= sizeof a.sun_path) usage();
	strcpy(a.sun_path, opt.socket);
	unlink(opt.socket);
	if (bind(listen_fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
	if (listen(listen_fd, 4) < 0) die("listen");
	fprintf(stderr, "fuzz-backend: listening on %s (bug: %s)\n", opt.socket, BUG_NAMES[opt.bug]);

	static struct msg m;
	for (;;) {
		struct pollfd p[2];
		int n = 0;
		p[n++] = (struct pollfd){ conn >= 0 ? conn : listen_fd, POLLIN, 0 };
		if (conn >= 0 && vq.kick >= 0) p[n++] = (struct pollfd){ vq.kick, POLLIN, 0 };
		if (poll(p, (nfds_t)n, -1) < 0) {
			if (errno == EINTR) continue;
			die("poll");
		}
		if (conn < 0) {
			if (p[0].revents & POLLIN) conn = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
			continue;
		}
		if (n > 1 && (p[1].revents & POLLIN)) {
			uint64_t v;
			if (read(vq.kick, &v, 8) < 0 && errno != EAGAIN) { /* nothing to read */
			}
			process();
		}
		if (conn >= 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
			if (!read_msg(&m)) drop_connection(NULL);
			else if (!control(&m)) drop_connection("a control message it does not take");
		}
	}
}
