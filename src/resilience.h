/* resilience.h - circuit breaker, retry policy and deadlines (SPEC section 9).
 *
 * Pure decision logic: nothing here performs I/O, sleeps or arms timers. The
 * caller (a worker's event loop or a job-pool thread) asks breaker_allow()
 * before a call, reports the outcome with breaker_record(), asks the retry
 * policy how long to wait and whether to try again, and schedules the retry
 * itself. Time comes from an injectable monotonic millisecond clock so the
 * unit tests drive everything with a fake clock.
 *
 * The breaker follows opossum: a rolling window of buckets counts outcomes;
 * a failure that leaves the window with at least volume_threshold calls and
 * a failure percentage of at least error_threshold_pct opens it; an open
 * breaker rejects for reset_timeout_ms, then the next breaker_allow() turns
 * it half-open and admits exactly one trial call; the trial's success closes
 * it (window cleared), its failure re-opens it (timer restarted). A timed-out
 * call must be recorded as a failure. A struct breaker may be shared by
 * several threads; allow() on a closed breaker is a single atomic load.
 */
#ifndef RESIL_RESILIENCE_H
#define RESIL_RESILIENCE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

/* ---- clock ------------------------------------------------------------ */

/* Monotonic milliseconds; ud is the caller's context (a fake clock in tests). */
typedef uint64_t (*rclock_fn)(void *ud);

/* CLOCK_MONOTONIC in milliseconds (the default when a clock is NULL). */
uint64_t rclock_now_ms(void);

/* ---- deadlines -------------------------------------------------------- */

/* Absolute monotonic time in ms after which the work is abandoned; 0 = none. */
struct deadline {
	uint64_t at_ms;
};

#define DEADLINE_NONE ((struct deadline){.at_ms = 0})

/* Deadline ms from now on clock (NULL: rclock_now_ms); ms == 0 gives none. */
struct deadline deadline_in(rclock_fn clock, void *clock_ud, uint64_t ms);
/* Deadline ms after now_ms (saturating); ms == 0 gives none. */
struct deadline deadline_after(uint64_t now_ms, uint64_t ms);
/* The earlier of two deadlines (a child call inherits its parent's limit). */
struct deadline deadline_min(struct deadline a, struct deadline b);
/* Milliseconds left at now_ms: 0 once passed, UINT64_MAX when there is none. */
uint64_t deadline_remaining_ms(struct deadline d, uint64_t now_ms);
/* 1 if the deadline exists and now_ms has reached it, else 0. */
int deadline_expired(struct deadline d, uint64_t now_ms);

/* ---- circuit breaker -------------------------------------------------- */

enum breaker_state { BREAKER_CLOSED = 0, BREAKER_OPEN = 1, BREAKER_HALF_OPEN = 2 };

#define BREAKER_MAX_BUCKETS 32
#define BREAKER_NAME_MAX 48

#define BREAKER_DEFAULT_WINDOW_MS 10000
#define BREAKER_DEFAULT_BUCKETS 10
#define BREAKER_DEFAULT_VOLUME 5
#define BREAKER_DEFAULT_ERROR_PCT 50
#define BREAKER_DEFAULT_RESET_MS 30000

/* Options; every zero field takes the default named beside it. */
struct breaker_opts {
	const char *name;             /* copied (truncated to BREAKER_NAME_MAX-1); NULL: "breaker" */
	uint64_t window_ms;           /* rolling window, rounded down to whole buckets: 10000 */
	unsigned buckets;             /* window slices, <= BREAKER_MAX_BUCKETS: 10 */
	unsigned volume_threshold;    /* calls in the window before it may open: 5 */
	unsigned error_threshold_pct; /* failure percentage that opens, 1..100: 50 */
	uint64_t reset_timeout_ms;    /* open -> half-open delay: 30000 */
	rclock_fn clock;              /* NULL: rclock_now_ms */
	void *clock_ud;
	/* Called after a transition, outside the breaker's lock, on the thread
	 * that caused it (warn on open, info otherwise). NULL: none. Calls from
	 * different threads may arrive in any order. */
	void (*on_state_change)(void *ud, const char *name, int from, int to);
	void *ud;
};

/* Cumulative counters since init (window_* cover the rolling window only). */
struct breaker_stats {
	int state;      /* enum breaker_state */
	uint64_t calls; /* recorded outcomes: successes + failures */
	uint64_t successes;
	uint64_t failures;
	uint64_t rejections; /* allow() answered 0 */
	uint64_t opens;      /* transitions to open */
	uint32_t window_calls;
	uint32_t window_failures;
};

struct breaker_bucket {
	uint32_t calls;
	uint32_t failures;
};

/* Embed in the owner; fields are private to resilience.c. */
struct breaker {
	_Atomic int state;           /* written under lock, read without */
	_Atomic uint64_t open_until; /* open: first ms at which a trial may start */
	_Atomic uint64_t rejections;
	pthread_mutex_t lock;
	uint64_t trial_at_ms; /* half-open: when the trial was admitted */
	uint64_t bucket_ms;
	uint64_t head_epoch; /* now / bucket_ms of the newest bucket */
	uint32_t win_calls, win_failures;
	uint64_t successes, failures, opens;
	unsigned nbuckets, volume, error_pct;
	uint64_t reset_ms;
	rclock_fn clock;
	void *clock_ud;
	void (*on_state_change)(void *ud, const char *name, int from, int to);
	void *ud;
	char name[BREAKER_NAME_MAX];
	struct breaker_bucket bucket[BREAKER_MAX_BUCKETS];
};

/* Initialise b closed with opts (NULL: all defaults). Returns 0, or -1 with
 * errno EINVAL (buckets > BREAKER_MAX_BUCKETS, window_ms < buckets,
 * error_threshold_pct > 100) or the pthread_mutex_init error. */
int breaker_init(struct breaker *b, const struct breaker_opts *opts);
/* Release what breaker_init acquired; no thread may use b concurrently. */
void breaker_destroy(struct breaker *b);
/* 1: make the call; 0: reject it now (open, or half-open with the trial in
 * flight). A half-open trial not recorded within reset_timeout_ms counts as
 * lost and the next allow() admits a new one. Every 1 must be followed by
 * exactly one breaker_record(). */
int breaker_allow(struct breaker *b);
/* Report the outcome of an allowed call (success 0 = error or timeout).
 * While half-open the first outcome reported settles the trial; outcomes
 * reported while open (calls admitted earlier) are counted but judge nothing. */
void breaker_record(struct breaker *b, int success);
/* Current state (enum breaker_state); an expired open state stays
 * BREAKER_OPEN until the next breaker_allow(). */
int breaker_state(const struct breaker *b);
/* "closed", "open", "half-open" ("unknown" for anything else). */
const char *breaker_state_name(int state);
/* The breaker's name as copied at init. */
const char *breaker_name(const struct breaker *b);
/* Force closed with an empty window (operator reset); counters are kept. */
void breaker_reset(struct breaker *b);
/* Consistent snapshot of the counters and state into *out. */
void breaker_get_stats(struct breaker *b, struct breaker_stats *out);

/* ---- retry policy ----------------------------------------------------- */

struct retry_policy {
	unsigned retries;      /* attempts after the first */
	double factor;         /* cap growth per retry; < 1 (or NaN) acts as 1 */
	uint64_t min_delay_ms; /* cap of the first retry */
	uint64_t max_delay_ms; /* cap never exceeds this */
};

/* External HTTP: 3 retries, factor 2, 100 ms .. 5 s. */
#define RETRY_POLICY_HTTP                                                                                              \
	((struct retry_policy){.retries = 3, .factor = 2.0, .min_delay_ms = 100, .max_delay_ms = 5000})
/* Database calls: 2 retries, factor 2, 20 ms .. 200 ms. */
#define RETRY_POLICY_DB ((struct retry_policy){.retries = 2, .factor = 2.0, .min_delay_ms = 20, .max_delay_ms = 200})

/* Upper bound of Retry-After values returned by retry_after_ms (one day). */
#define RETRY_AFTER_MAX_MS 86400000ULL

/* Delay cap of retry number `attempt` (0 = first retry):
 * min(max_delay_ms, min_delay_ms * factor^attempt), at most UINT32_MAX - 1. */
uint64_t retry_cap_ms(const struct retry_policy *p, unsigned attempt);
/* Full-jitter delay before retry `attempt`: uniform in [0, retry_cap_ms()].
 * rand_fn returns uniform 32-bit values; NULL uses libsodium's
 * randombytes_uniform (sodium_init() must have succeeded first). */
uint64_t retry_backoff_ms(const struct retry_policy *p, unsigned attempt, uint32_t (*rand_fn)(void *ud), void *ud);
/* 1 if another attempt may start: fewer than 1 + retries attempts done,
 * bail == 0, and now_ms + delay_ms is strictly before deadline_ms (0: no
 * deadline). attempt_done counts the attempts already made (1 after the
 * first call); the next backoff index is then attempt_done - 1. */
int retry_should_retry(const struct retry_policy *p, unsigned attempt_done, int bail, uint64_t delay_ms,
                       uint64_t now_ms, uint64_t deadline_ms);
/* Bail predicate for an outbound HTTP status: 0 (retry) for 0 (network
 * error or timeout), 408, 429 and 5xx; 1 (do not retry) for anything else. */
int retry_http_status_bails(int status);
/* Parse a Retry-After value (RFC 9110 delay-seconds or HTTP-date in any of
 * its three forms) against now_realtime_s (seconds since the Unix epoch).
 * Returns the wait in ms clamped to RETRY_AFTER_MAX_MS; 0 when the value is
 * NULL, malformed, or names a time not after now (0 then means "absent"). */
uint64_t retry_after_ms(const char *header_value, uint64_t now_realtime_s);

#endif
