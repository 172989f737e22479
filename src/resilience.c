/* resilience.c - circuit breaker, retry policy, deadlines (see resilience.h).
 *
 * Decision logic only: no I/O, no sleeping, no timers. The breaker keeps its
 * hot paths off the mutex: a closed breaker answers allow() with one atomic
 * load, and an open one that is still cooling down answers with a clock read
 * and an atomic increment. Transitions and outcome recording happen under a
 * short mutex; the state-change callback always runs after it is released.
 */
#include "resilience.h"

#include "metrics.h"

#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include <time.h>

/* ---- clock and deadlines ---------------------------------------------- */

uint64_t rclock_now_ms(void)
{
	return clock_mono_ms();
}

static uint64_t clock_default(void *ud)
{
	(void)ud;
	return rclock_now_ms();
}

static uint64_t add_sat(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

struct deadline deadline_after(uint64_t now_ms, uint64_t ms)
{
	struct deadline d = {.at_ms = ms ? add_sat(now_ms, ms) : 0};
	return d;
}

struct deadline deadline_in(rclock_fn clock, void *clock_ud, uint64_t ms)
{
	if (ms == 0)
		return DEADLINE_NONE;
	return deadline_after(clock ? clock(clock_ud) : rclock_now_ms(), ms);
}

struct deadline deadline_min(struct deadline a, struct deadline b)
{
	if (a.at_ms == 0)
		return b;
	if (b.at_ms == 0)
		return a;
	return a.at_ms < b.at_ms ? a : b;
}

uint64_t deadline_remaining_ms(struct deadline d, uint64_t now_ms)
{
	if (d.at_ms == 0)
		return UINT64_MAX;
	return now_ms >= d.at_ms ? 0 : d.at_ms - now_ms;
}

int deadline_expired(struct deadline d, uint64_t now_ms)
{
	return d.at_ms != 0 && now_ms >= d.at_ms;
}

/* ---- circuit breaker -------------------------------------------------- */

/* A transition decided under the lock, reported after it is released. */
struct transition {
	int from, to;
};

static void lock_or_die(pthread_mutex_t *m)
{
	/* A default mutex only fails to lock when it is corrupt. */
	if (pthread_mutex_lock(m) != 0)
		abort();
}

static void unlock_or_die(pthread_mutex_t *m)
{
	if (pthread_mutex_unlock(m) != 0)
		abort();
}

static void notify(const struct breaker *b, const struct transition *t)
{
	if (t->from == t->to)
		return;
	metrics_circuit_transition(b->name, t->to);
	if (b->on_state_change)
		b->on_state_change(b->ud, b->name, t->from, t->to);
}

static void set_state_locked(struct breaker *b, int to, struct transition *t)
{
	t->from = atomic_load_explicit(&b->state, memory_order_relaxed);
	t->to = to;
	atomic_store_explicit(&b->state, to, memory_order_release);
}

static void window_clear(struct breaker *b)
{
	memset(b->bucket, 0, sizeof(b->bucket));
	b->win_calls = 0;
	b->win_failures = 0;
}

/* Retire the buckets that have slid out of the window by now. */
static void window_advance(struct breaker *b, uint64_t now)
{
	uint64_t epoch = now / b->bucket_ms;
	uint64_t gap;

	if (epoch <= b->head_epoch)
		return;
	gap = epoch - b->head_epoch;
	if (gap >= b->nbuckets) {
		window_clear(b);
	} else {
		for (uint64_t i = 1; i <= gap; i++) {
			struct breaker_bucket *k = &b->bucket[(b->head_epoch + i) % b->nbuckets];

			b->win_calls -= k->calls;
			b->win_failures -= k->failures;
			k->calls = 0;
			k->failures = 0;
		}
	}
	b->head_epoch = epoch;
}

static void open_locked(struct breaker *b, uint64_t now, struct transition *t)
{
	/* open_until is published before the state so that a lock-free reader
	 * that sees OPEN also sees the matching cool-down end. */
	atomic_store_explicit(&b->open_until, add_sat(now, b->reset_ms), memory_order_relaxed);
	b->opens++;
	set_state_locked(b, BREAKER_OPEN, t);
}

int breaker_init(struct breaker *b, const struct breaker_opts *opts)
{
	static const struct breaker_opts none;
	const struct breaker_opts *o = opts ? opts : &none;
	unsigned nb = o->buckets ? o->buckets : BREAKER_DEFAULT_BUCKETS;
	uint64_t window = o->window_ms ? o->window_ms : BREAKER_DEFAULT_WINDOW_MS;
	int rc;

	if (nb > BREAKER_MAX_BUCKETS || window < nb || o->error_threshold_pct > 100) {
		errno = EINVAL;
		return -1;
	}
	memset(b, 0, sizeof(*b));
	rc = pthread_mutex_init(&b->lock, NULL);
	if (rc != 0) {
		errno = rc;
		return -1;
	}
	atomic_init(&b->state, BREAKER_CLOSED);
	atomic_init(&b->open_until, 0);
	atomic_init(&b->rejections, 0);
	b->nbuckets = nb;
	b->bucket_ms = window / nb;
	b->volume = o->volume_threshold ? o->volume_threshold : BREAKER_DEFAULT_VOLUME;
	b->error_pct = o->error_threshold_pct ? o->error_threshold_pct : BREAKER_DEFAULT_ERROR_PCT;
	b->reset_ms = o->reset_timeout_ms ? o->reset_timeout_ms : BREAKER_DEFAULT_RESET_MS;
	b->clock = o->clock ? o->clock : clock_default;
	b->clock_ud = o->clock ? o->clock_ud : NULL;
	b->on_state_change = o->on_state_change;
	b->ud = o->ud;
	snprintf(b->name, sizeof(b->name), "%s", o->name ? o->name : "breaker");
	return 0;
}

void breaker_destroy(struct breaker *b)
{
	/* Destroying an unlocked, initialised mutex cannot fail. */
	(void)pthread_mutex_destroy(&b->lock);
}

int breaker_allow(struct breaker *b)
{
	struct transition t = {0, 0};
	int st = atomic_load_explicit(&b->state, memory_order_acquire);
	uint64_t now;
	int ok = 0;

	if (st == BREAKER_CLOSED)
		return 1;
	now = b->clock(b->clock_ud);
	if (st == BREAKER_OPEN && now < atomic_load_explicit(&b->open_until, memory_order_relaxed)) {
		atomic_fetch_add_explicit(&b->rejections, 1, memory_order_relaxed);
		return 0;
	}

	lock_or_die(&b->lock);
	switch (atomic_load_explicit(&b->state, memory_order_relaxed)) {
	case BREAKER_CLOSED: ok = 1; break;
	case BREAKER_OPEN:
		if (now >= atomic_load_explicit(&b->open_until, memory_order_relaxed)) {
			set_state_locked(b, BREAKER_HALF_OPEN, &t);
			b->trial_at_ms = now;
			ok = 1;
		}
		break;
	case BREAKER_HALF_OPEN:
		/* The single trial is in flight; replace it only when it has been
		 * silent for a whole reset timeout (its caller lost it). */
		if (now >= b->trial_at_ms && now - b->trial_at_ms >= b->reset_ms) {
			b->trial_at_ms = now;
			ok = 1;
		}
		break;
	default: abort();
	}
	unlock_or_die(&b->lock);

	if (!ok)
		atomic_fetch_add_explicit(&b->rejections, 1, memory_order_relaxed);
	notify(b, &t);
	return ok;
}

void breaker_record(struct breaker *b, int success)
{
	struct transition t = {0, 0};
	uint64_t now = b->clock(b->clock_ud);
	struct breaker_bucket *k;

	lock_or_die(&b->lock);
	window_advance(b, now);
	if (success)
		b->successes++;
	else
		b->failures++;
	switch (atomic_load_explicit(&b->state, memory_order_relaxed)) {
	case BREAKER_CLOSED:
		k = &b->bucket[b->head_epoch % b->nbuckets];
		k->calls++;
		b->win_calls++;
		if (success)
			break;
		k->failures++;
		b->win_failures++;
		/* As in opossum, only a failure can trip the breaker. */
		if (b->win_calls >= b->volume &&
		    (uint64_t)b->win_failures * 100u >= (uint64_t)b->error_pct * b->win_calls)
			open_locked(b, now, &t);
		break;
	case BREAKER_HALF_OPEN:
		/* The first outcome reported while half-open settles the trial. */
		if (success) {
			window_clear(b);
			set_state_locked(b, BREAKER_CLOSED, &t);
		} else {
			open_locked(b, now, &t);
		}
		break;
	case BREAKER_OPEN:
		/* A call admitted before the breaker opened; counted, not judged. */
		break;
	default: abort();
	}
	unlock_or_die(&b->lock);
	notify(b, &t);
}

int breaker_state(const struct breaker *b)
{
	return atomic_load_explicit(&b->state, memory_order_acquire);
}

const char *breaker_state_name(int state)
{
	switch (state) {
	case BREAKER_CLOSED: return "closed";
	case BREAKER_OPEN: return "open";
	case BREAKER_HALF_OPEN: return "half-open";
	default: return "unknown";
	}
}

const char *breaker_name(const struct breaker *b)
{
	return b->name;
}

void breaker_reset(struct breaker *b)
{
	struct transition t = {0, 0};

	lock_or_die(&b->lock);
	window_clear(b);
	set_state_locked(b, BREAKER_CLOSED, &t);
	unlock_or_die(&b->lock);
	notify(b, &t);
}

void breaker_get_stats(struct breaker *b, struct breaker_stats *out)
{
	uint64_t now = b->clock(b->clock_ud);

	lock_or_die(&b->lock);
	window_advance(b, now);
	out->state = atomic_load_explicit(&b->state, memory_order_relaxed);
	out->successes = b->successes;
	out->failures = b->failures;
	out->calls = b->successes + b->failures;
	out->opens = b->opens;
	out->window_calls = b->win_calls;
	out->window_failures = b->win_failures;
	out->rejections = atomic_load_explicit(&b->rejections, memory_order_relaxed);
	unlock_or_die(&b->lock);
}

/* ---- retry policy ----------------------------------------------------- */

/* Keeps cap + 1 representable for randombytes_uniform(). */
#define RETRY_CAP_LIMIT ((uint64_t)UINT32_MAX - 1u)

uint64_t retry_cap_ms(const struct retry_policy *p, unsigned attempt)
{
	uint64_t hi = p->max_delay_ms < RETRY_CAP_LIMIT ? p->max_delay_ms : RETRY_CAP_LIMIT;
	double base = p->factor >= 1.0 ? p->factor : 1.0; /* also maps NaN to 1 */
	double cap = (double)p->min_delay_ms;
	unsigned e = attempt;

	if (p->min_delay_ms == 0)
		return 0;
	/* min_delay * factor^attempt by squaring, stopping once it passes hi
	 * (the product only grows, so overflow to infinity is harmless). */
	while (e != 0 && cap < (double)hi) {
		if (e & 1u)
			cap *= base;
		base *= base;
		e >>= 1;
	}
	return cap >= (double)hi ? hi : (uint64_t)cap;
}

uint64_t retry_backoff_ms(const struct retry_policy *p, unsigned attempt, uint32_t (*rand_fn)(void *ud), void *ud)
{
	uint64_t cap = retry_cap_ms(p, attempt);

	if (cap == 0)
		return 0;
	if (rand_fn == NULL)
		return randombytes_uniform((uint32_t)(cap + 1));
	/* Scale a 32-bit draw onto [0, cap]; the bias is below 2^-32 * cap. */
	return ((uint64_t)rand_fn(ud) * (cap + 1)) >> 32;
}

int retry_should_retry(const struct retry_policy *p, unsigned attempt_done, int bail, uint64_t delay_ms,
                       uint64_t now_ms, uint64_t deadline_ms)
{
	if (bail || attempt_done > p->retries)
		return 0;
	if (deadline_ms != 0 && add_sat(now_ms, delay_ms) >= deadline_ms)
		return 0;
	return 1;
}

int retry_http_status_bails(int status)
{
	if (status == 0 || status == 408 || status == 429)
		return 0;
	if (status >= 500 && status <= 599)
		return 0;
	return 1;
}

/* ---- Retry-After (RFC 9110 section 10.2.3) ---------------------------- */

static const char day_short[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *const day_long[7] = {"Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"};
static const char month_short[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* A cursor over the trimmed header value. */
struct cur {
	const char *p, *end;
};

static int eat(struct cur *c, const char *lit)
{
	size_t n = strlen(lit);

	if ((size_t)(c->end - c->p) < n || memcmp(c->p, lit, n) != 0)
		return -1;
	c->p += n;
	return 0;
}

/* Exactly n digits (n <= 4). */
static int eat_digits(struct cur *c, unsigned n, unsigned *out)
{
	unsigned v = 0;

	if ((size_t)(c->end - c->p) < n)
		return -1;
	for (unsigned i = 0; i < n; i++) {
		if (c->p[i] < '0' || c->p[i] > '9')
			return -1;
		v = v * 10u + (unsigned)(c->p[i] - '0');
	}
	c->p += n;
	*out = v;
	return 0;
}

static int eat_month(struct cur *c, unsigned *mon)
{
	for (unsigned i = 0; i < 12; i++) {
		if (eat(c, month_short[i]) == 0) {
			*mon = i + 1;
			return 0;
		}
	}
	return -1;
}

/* time-of-day = hour ":" minute ":" second (second 60 is a leap second). */
static int eat_time(struct cur *c, unsigned *h, unsigned *m, unsigned *s)
{
	if (eat_digits(c, 2, h) || eat(c, ":") || eat_digits(c, 2, m) || eat(c, ":") || eat_digits(c, 2, s))
		return -1;
	return *h <= 23 && *m <= 59 && *s <= 60 ? 0 : -1;
}

static int is_leap(unsigned y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned month_days(unsigned y, unsigned m)
{
	static const unsigned char len[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

	return m == 2 && is_leap(y) ? 29 : len[m - 1];
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar, with
 * the year shifted to start in March so that the leap day comes last. */
static int64_t days_from_civil(unsigned y, unsigned m, unsigned d)
{
	int64_t yy = (int64_t)y - (m <= 2);
	int64_t era = (yy >= 0 ? yy : yy - 399) / 400;
	int64_t yoe = yy - era * 400;
	int64_t mp = m > 2 ? m - 3 : m + 9;
	int64_t doy = (153 * mp + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

	return era * 146097 + doe - 719468;
}

/* Seconds since the epoch of a validated date; -1 if the date does not
 * exist or the weekday given with it is not the date's weekday. */
static int64_t date_to_epoch(unsigned y, unsigned mon, unsigned day, unsigned h, unsigned mi, unsigned s, unsigned wday)
{
	int64_t days;

	if (day < 1 || day > month_days(y, mon))
		return -1;
	days = days_from_civil(y, mon, day);
	if ((unsigned)(((days % 7) + 11) % 7) != wday) /* 1970-01-01 was a Thursday */
		return -1;
	return days * 86400 + (int64_t)h * 3600 + (int64_t)mi * 60 + (int64_t)s;
}

/* RFC 850 two-digit years: the most recent year with those digits that is
 * not more than 50 years in the future. */
static unsigned rfc850_year(unsigned yy, uint64_t now_s)
{
	/* Clamp far-future clocks so gmtime_r stays within a four-digit year. */
	time_t t = (time_t)(now_s < 253402300799u ? now_s : 253402300799u);
	struct tm tm;
	unsigned cur = 1970, y;

	if (gmtime_r(&t, &tm) != NULL)
		cur = (unsigned)tm.tm_year + 1900u;
	y = cur - cur % 100 + yy;
	if (y > cur + 50)
		y -= 100;
	return y;
}

/* day-name followed by the separator that tells the three forms apart:
 * "Sun, " IMF-fixdate (0), "Sunday, " RFC 850 (1), "Sun " asctime (2). */
static int eat_weekday(struct cur *c, unsigned *wday, int *form)
{
	for (unsigned i = 0; i < 7; i++) {
		struct cur at = *c;
		int f = -1;

		if (eat(&at, day_long[i]) == 0 && eat(&at, ", ") == 0) {
			f = 1;
		} else {
			at = *c;
			if (eat(&at, day_short[i]) == 0)
				f = eat(&at, ", ") == 0 ? 0 : eat(&at, " ") == 0 ? 2 : -1;
		}
		if (f >= 0) {
			*c = at;
			*wday = i;
			*form = f;
			return 0;
		}
	}
	return -1;
}

/* HTTP-date in any of its three forms -> epoch seconds, or -1. */
static int64_t parse_http_date(struct cur *c, uint64_t now_s)
{
	unsigned wd, day = 0, mon = 0, year = 0, h, mi, s;
	int form;

	if (eat_weekday(c, &wd, &form))
		return -1;
	if (form == 0) { /* Sun, 06 Nov 1994 08:49:37 GMT */
		if (eat_digits(c, 2, &day) || eat(c, " ") || eat_month(c, &mon) || eat(c, " ") ||
		    eat_digits(c, 4, &year) || eat(c, " ") || eat_time(c, &h, &mi, &s) || eat(c, " GMT"))
			return -1;
	} else if (form == 1) { /* Sunday, 06-Nov-94 08:49:37 GMT */
		if (eat_digits(c, 2, &day) || eat(c, "-") || eat_month(c, &mon) || eat(c, "-") ||
		    eat_digits(c, 2, &year) || eat(c, " ") || eat_time(c, &h, &mi, &s) || eat(c, " GMT"))
			return -1;
		year = rfc850_year(year, now_s);
	} else { /* Sun Nov  6 08:49:37 1994 */
		if (eat_month(c, &mon) || eat(c, " "))
			return -1;
		if (eat(c, " ") == 0) {
			if (eat_digits(c, 1, &day))
				return -1;
		} else if (eat_digits(c, 2, &day)) {
			return -1;
		}
		if (eat(c, " ") || eat_time(c, &h, &mi, &s) || eat(c, " ") || eat_digits(c, 4, &year))
			return -1;
	}
	if (c->p != c->end)
		return -1;
	return date_to_epoch(year, mon, day, h, mi, s, wd);
}

uint64_t retry_after_ms(const char *header_value, uint64_t now_realtime_s)
{
	struct cur c;
	int64_t at;

	if (header_value == NULL)
		return 0;
	c.p = header_value;
	c.end = header_value + strlen(header_value);
	while (c.p < c.end && (*c.p == ' ' || *c.p == '\t'))
		c.p++;
	while (c.end > c.p && (c.end[-1] == ' ' || c.end[-1] == '\t'))
		c.end--;
	if (c.p == c.end)
		return 0;

	if (*c.p >= '0' && *c.p <= '9') { /* delay-seconds = 1*DIGIT */
		uint64_t secs = 0;

		for (; c.p < c.end; c.p++) {
			if (*c.p < '0' || *c.p > '9')
				return 0;
			if (secs <= RETRY_AFTER_MAX_MS / 1000u)
				secs = secs * 10u + (uint64_t)(*c.p - '0');
		}
		return secs >= RETRY_AFTER_MAX_MS / 1000u ? RETRY_AFTER_MAX_MS : secs * 1000u;
	}

	at = parse_http_date(&c, now_realtime_s);
	if (at < 0 || (uint64_t)at <= now_realtime_s)
		return 0;
	if ((uint64_t)at - now_realtime_s >= RETRY_AFTER_MAX_MS / 1000u)
		return RETRY_AFTER_MAX_MS;
	return ((uint64_t)at - now_realtime_s) * 1000u;
}
