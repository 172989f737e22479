/* ratelimit.h - fixed-window rate limiter in shared memory, one table for all
 * worker processes (SPEC §5: per client IP on /api/, failed logins per email).
 *
 * The supervisor calls rl_create() before forking; workers inherit the
 * mapping. Each key gets its own window, opened by its first hit and lasting
 * window_ms (express-rate-limit's MemoryStore semantics). Keys are arbitrary
 * bytes; callers put a namespace in front ("ip:203.0.113.7",
 * "login:alice@example.com") so one table serves every limiter. Only a keyed
 * 64-bit hash of each key is stored, never the key itself.
 *
 * No locks: every update is a compare-and-swap, so no process ever waits for
 * another (a worker killed mid-call cannot wedge the table). The table never
 * grows: a key is looked for in RL_PROBE consecutive slots; when they are all
 * taken, the entry whose window has ended (else the one ending soonest) is
 * evicted. Trade-off: under a table full of live clients an evicted client
 * starts a fresh window, and racing first hits of one new key on a full table
 * may lose (never add) a few counts. Size the table above the number of
 * clients active per window (the default holds 65536 entries in 1 MiB).
 *
 * now_ms must come from one clock shared by all processes (CLOCK_MONOTONIC or
 * CLOCK_REALTIME, in milliseconds), the same clock on every call.
 */
#ifndef RESIL_RATELIMIT_H
#define RESIL_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

#define RL_DEFAULT_CAPACITY 65536u
#define RL_CAPACITY_MAX (1u << 24)   /* 16M entries, 256 MiB */
#define RL_PROBE 8                   /* slots examined per key */
#define RL_LIMIT_MAX 1048575u        /* larger limits are clamped to this */
#define RL_WINDOW_MAX_MS 4294967295u /* longer windows are clamped to this (~49 days) */

struct ratelimit; /* opaque; the pointer is the start of the shared mapping */

struct rl_result {
	uint32_t limit;     /* the limit applied (RateLimit-Limit) */
	uint32_t remaining; /* hits left in this window (RateLimit-Remaining) */
	uint64_t reset_ms;  /* ms until the window ends (RateLimit-Reset, Retry-After); 0: no window */
};

/* Map a table of at least capacity entries (rounded up to a power of two, at
 * least RL_PROBE; 0 means RL_DEFAULT_CAPACITY) shared with future children,
 * with a random hash key. NULL with errno set on failure (EINVAL: too large). */
struct ratelimit *rl_create(unsigned capacity);
/* The same, memfd-backed: *fd_out receives the descriptor (close-on-exec)
 * that an exec'd process passes to rl_attach(). */
struct ratelimit *rl_create_fd(unsigned capacity, int *fd_out);
/* Map the table behind fd (left open). NULL with errno EPROTO when its
 * layout is not this binary's. */
struct ratelimit *rl_attach(int fd);

/* Unmap the table from this process (other processes keep their mapping). NULL is ok. */
void rl_destroy(struct ratelimit *rl);

/* Count one hit for key at now_ms: 1 allowed, 0 limited (the hit is not
 * counted), -1 bad arguments. limit 0 limits everything; window_ms 0 counts as 1.
 * res (may be NULL) receives the header values. */
int rl_hit(struct ratelimit *rl, const char *key, size_t keylen, uint64_t now_ms, uint32_t limit, uint64_t window_ms,
           struct rl_result *res);

/* Like rl_hit but counts nothing: 1 when a hit now would be allowed, 0 when the
 * key is blocked, -1 bad arguments. */
int rl_peek(struct ratelimit *rl, const char *key, size_t keylen, uint64_t now_ms, uint32_t limit,
            struct rl_result *res);

/* Forget key's current window (e.g. failed logins after a successful one). */
void rl_reset(struct ratelimit *rl, const char *key, size_t keylen);

/* Number of entries (a power of two), entries holding a key, and the size in
 * bytes of the shared mapping that starts at rl. */
unsigned rl_capacity(const struct ratelimit *rl);
unsigned rl_used(const struct ratelimit *rl);
size_t rl_bytes(const struct ratelimit *rl);

#endif
