/* ratelimit.c - lock-free fixed-window rate limiter in a MAP_SHARED table.
 *
 * Each slot is two 64-bit atomics:
 *   key   = ident << 4 | gen     (0: never used; ident = 60 bits of SipHash)
 *   state = gen << 60 | count << 40 | end
 * where end is the window's end in ms since the table's epoch (the first
 * now_ms it saw). gen changes every time the slot changes owner; a state whose
 * gen differs from the key's belongs to the previous owner and reads as "no
 * window", so taking over a slot is one CAS on key and the state needs no
 * separate reset. Writers CAS the state and then check that the key is still
 * theirs; if the slot changed owner meanwhile, they count again elsewhere.
 *
 * Slots go from empty to used, never back (rl_reset zeroes the count, not the
 * key), so a lookup stops at the first empty slot and two processes claiming
 * the same new key both aim at that same first empty slot: one CAS wins and
 * the other finds the key on its next scan, so nothing is counted twice.
 */
#include "ratelimit.h"

#include "shm.h"

#include <errno.h>
#include <sodium.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "shared-memory atomics must be lock-free");

#define GEN_BITS 4
#define GEN_MASK ((1u << GEN_BITS) - 1)
#define COUNT_BITS 20
#define END_BITS 40
#define COUNT_MAX ((1ull << COUNT_BITS) - 1)
#define END_MAX ((1ull << END_BITS) - 1)
#define RETRIES 16 /* rescans before giving up (fail open); each one means another process made progress */

_Static_assert(RL_LIMIT_MAX == COUNT_MAX, "count field holds RL_LIMIT_MAX");
_Static_assert(GEN_BITS + COUNT_BITS + END_BITS == 64, "state packs into 64 bits");

struct rl_slot {
	_Atomic uint64_t key;
	_Atomic uint64_t state;
};

struct ratelimit {
	size_t bytes;
	uint32_t mask;
	unsigned char hashkey[crypto_shorthash_KEYBYTES];
	_Atomic uint64_t epoch; /* first now_ms seen, plus one; 0: none yet */
	alignas(64) struct rl_slot slots[];
};

_Static_assert(sizeof(struct rl_slot) == 16, "slot is two words");

static inline unsigned st_gen(uint64_t s)
{
	return (unsigned)(s >> (COUNT_BITS + END_BITS));
}

static inline uint64_t st_count(uint64_t s)
{
	return (s >> END_BITS) & COUNT_MAX;
}

static inline uint64_t st_end(uint64_t s)
{
	return s & END_MAX;
}

static inline uint64_t st_pack(unsigned gen, uint64_t count, uint64_t end)
{
	return (uint64_t)gen << (COUNT_BITS + END_BITS) | count << END_BITS | end;
}

static inline unsigned key_gen(uint64_t k)
{
	return (unsigned)(k & GEN_MASK);
}

/* An open window for the slot's current owner k. */
static inline int st_live(uint64_t k, uint64_t s, uint64_t off)
{
	return st_gen(s) == key_gen(k) && st_count(s) > 0 && st_end(s) > off;
}

struct ratelimit *rl_create_fd(unsigned capacity, int *fd_out)
{
	struct ratelimit *rl;
	size_t cap = RL_PROBE, bytes;
	void *p;

	if (capacity == 0)
		capacity = RL_DEFAULT_CAPACITY;
	if (capacity > RL_CAPACITY_MAX) {
		errno = EINVAL;
		return NULL;
	}
	while (cap < capacity)
		cap <<= 1;
	if (sodium_init() < 0) {
		errno = ENOSYS;
		return NULL;
	}
	bytes = sizeof *rl + cap * sizeof(struct rl_slot);
	p = shm_create("resil-ratelimit", bytes, fd_out);
	if (!p)
		return NULL;
	rl = p; /* new pages are zero: every slot empty, no epoch yet */
	rl->bytes = bytes;
	rl->mask = (uint32_t)(cap - 1);
	randombytes_buf(rl->hashkey, sizeof rl->hashkey);
	return rl;
}

struct ratelimit *rl_create(unsigned capacity)
{
	return rl_create_fd(capacity, NULL);
}

struct ratelimit *rl_attach(int fd)
{
	size_t bytes;
	struct ratelimit *rl = shm_attach(fd, &bytes);

	if (!rl)
		return NULL;
	if (bytes < sizeof *rl || rl->bytes != bytes ||
	    bytes != sizeof *rl + ((size_t)rl->mask + 1) * sizeof(struct rl_slot)) {
		munmap(rl, bytes);
		errno = EPROTO;
		return NULL;
	}
	return rl;
}

void rl_destroy(struct ratelimit *rl)
{
	if (rl)
		munmap(rl, rl->bytes);
}

unsigned rl_capacity(const struct ratelimit *rl)
{
	return rl->mask + 1;
}

size_t rl_bytes(const struct ratelimit *rl)
{
	return rl->bytes;
}

unsigned rl_used(const struct ratelimit *rl)
{
	unsigned i, n = 0;

	for (i = 0; i <= rl->mask; i++)
		n += atomic_load_explicit(&rl->slots[i].key, memory_order_relaxed) != 0;
	return n;
}

/* 60-bit identity of key (never 0); its probe window starts at ident & mask. */
static uint64_t key_ident(const struct ratelimit *rl, const char *key, size_t keylen)
{
	unsigned char h[crypto_shorthash_BYTES];
	uint64_t v;

	crypto_shorthash(h, (const unsigned char *)key, keylen, rl->hashkey);
	memcpy(&v, h, sizeof v);
	v >>= GEN_BITS;
	return v ? v : 1;
}

/* now_ms as an offset from the table's epoch (set by the first call). */
static uint64_t now_offset(struct ratelimit *rl, uint64_t now_ms)
{
	uint64_t e = atomic_load(&rl->epoch), want;

	if (e == 0) {
		want = now_ms == UINT64_MAX ? now_ms : now_ms + 1;
		if (atomic_compare_exchange_strong(&rl->epoch, &e, want))
			e = want;
	}
	e--;
	return now_ms > e ? now_ms - e : 0;
}

/* Slot index holding ident (its key word in *k), or -1 when absent. When
 * absent and claim is set, take a slot for ident first: the first empty one,
 * else a victim (window over, else the one ending soonest); the caller scans
 * again either way, since a CAS lost to another process is also progress. */
static long find(struct ratelimit *rl, uint64_t ident, uint64_t off, int claim, uint64_t *k)
{
	uint64_t vk = 0, vend = UINT64_MAX, key, s;
	long victim = -1;
	uint32_t i;
	int j;

	for (j = 0; j < RL_PROBE; j++) {
		i = (uint32_t)(ident + (uint64_t)j) & rl->mask;
		key = atomic_load(&rl->slots[i].key);
		if (key == 0) {
			if (claim)
				atomic_compare_exchange_strong(&rl->slots[i].key, &key, ident << GEN_BITS | 1u);
			return -1;
		}
		if (key >> GEN_BITS == ident) {
			*k = key;
			return i;
		}
		if (!claim || vend == 0)
			continue;
		s = atomic_load(&rl->slots[i].state);
		if (!st_live(key, s, off) || st_end(s) < vend) {
			victim = i;
			vk = key;
			vend = st_live(key, s, off) ? st_end(s) : 0;
		}
	}
	if (claim && victim >= 0)
		atomic_compare_exchange_strong(&rl->slots[victim].key, &vk, ident << GEN_BITS | ((vk + 1) & GEN_MASK));
	return -1;
}

static void fill(struct rl_result *res, uint32_t limit, uint64_t remaining, uint64_t reset_ms)
{
	if (res) {
		res->limit = limit;
		res->remaining = (uint32_t)remaining;
		res->reset_ms = reset_ms;
	}
}

enum { HIT_LIMITED = 0, HIT_ALLOWED = 1, HIT_RETRY = 2 };

/* Count one hit in slot sl owned by k. HIT_RETRY when the slot changed owner. */
static int count_hit(struct rl_slot *sl, uint64_t k, uint64_t off, uint32_t limit, uint64_t window,
                     struct rl_result *res)
{
	uint64_t s = atomic_load(&sl->state), count, end;

	for (;;) {
		if (st_live(k, s, off)) {
			count = st_count(s);
			end = st_end(s);
		} else {
			count = 0;
			end = off + window < END_MAX ? off + window : END_MAX;
		}
		if (count >= limit) {
			if (atomic_load(&sl->key) != k)
				return HIT_RETRY;
			fill(res, limit, 0, end - off);
			return HIT_LIMITED;
		}
		if (atomic_compare_exchange_weak(&sl->state, &s, st_pack(key_gen(k), count + 1, end)))
			break;
		if (atomic_load(&sl->key) != k)
			return HIT_RETRY;
	}
	/* Taken over between our key read and the CAS: that count went to a
	 * state the new owner ignores, so count this hit again. */
	if (atomic_load(&sl->key) != k)
		return HIT_RETRY;
	fill(res, limit, limit - (count + 1), end - off);
	return HIT_ALLOWED;
}

int rl_hit(struct ratelimit *rl, const char *key, size_t keylen, uint64_t now_ms, uint32_t limit, uint64_t window_ms,
           struct rl_result *res)
{
	uint64_t ident, off, k;
	long i;
	int r, attempt;

	if (!rl || (!key && keylen))
		return -1;
	if (limit > RL_LIMIT_MAX)
		limit = RL_LIMIT_MAX;
	if (window_ms == 0)
		window_ms = 1;
	else if (window_ms > RL_WINDOW_MAX_MS)
		window_ms = RL_WINDOW_MAX_MS;
	ident = key_ident(rl, key ? key : "", keylen);
	off = now_offset(rl, now_ms);
	for (attempt = 0; attempt < RETRIES; attempt++) {
		if ((i = find(rl, ident, off, 1, &k)) < 0)
			continue;
		if ((r = count_hit(&rl->slots[i], k, off, limit, window_ms, res)) != HIT_RETRY)
			return r;
	}
	/* Only reachable under pathological contention: fail open. */
	fill(res, limit, limit ? limit - 1 : 0, window_ms);
	return 1;
}

int rl_peek(struct ratelimit *rl, const char *key, size_t keylen, uint64_t now_ms, uint32_t limit,
            struct rl_result *res)
{
	uint64_t ident, off, k = 0, s = 0, count;
	long i;

	if (!rl || (!key && keylen))
		return -1;
	if (limit > RL_LIMIT_MAX)
		limit = RL_LIMIT_MAX;
	ident = key_ident(rl, key ? key : "", keylen);
	off = now_offset(rl, now_ms);
	if ((i = find(rl, ident, off, 0, &k)) >= 0)
		s = atomic_load(&rl->slots[i].state);
	if (i < 0 || !st_live(k, s, off)) {
		fill(res, limit, limit, 0);
		return limit > 0;
	}
	count = st_count(s) < limit ? st_count(s) : limit;
	fill(res, limit, limit - count, st_end(s) - off);
	return count < limit;
}

void rl_reset(struct ratelimit *rl, const char *key, size_t keylen)
{
	uint64_t ident, k, s;
	uint32_t i;
	int j;

	if (!rl || (!key && keylen))
		return;
	ident = key_ident(rl, key ? key : "", keylen);
	/* every slot holding ident: a full-table race may have left a duplicate */
	for (j = 0; j < RL_PROBE; j++) {
		i = (uint32_t)(ident + (uint64_t)j) & rl->mask;
		k = atomic_load(&rl->slots[i].key);
		if (k == 0)
			return;
		if (k >> GEN_BITS != ident)
			continue;
		s = atomic_load(&rl->slots[i].state);
		while (st_gen(s) == key_gen(k) && st_count(s) > 0 &&
		       !atomic_compare_exchange_weak(&rl->slots[i].state, &s, st_pack(key_gen(k), 0, 0)))
			;
	}
}
