/* test_resilience.c - unit tests for src/resilience.c: circuit breaker,
 * retry policy, Retry-After parsing and deadlines, all driven by a fake clock.
 */
#include "../src/resilience.h"

#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---------------------------------------------------------- */

static uint64_t fake_clock(void *ud)
{
	return *(const uint64_t *)ud;
}

#define MAX_EVENTS 32

struct events {
	int n;
	int from[MAX_EVENTS];
	int to[MAX_EVENTS];
	char name[BREAKER_NAME_MAX];
};

static void on_change(void *ud, const char *name, int from, int to)
{
	struct events *ev = ud;

	ck_assert_int_lt(ev->n, MAX_EVENTS);
	ev->from[ev->n] = from;
	ev->to[ev->n] = to;
	ev->n++;
	snprintf(ev->name, sizeof(ev->name), "%s", name);
}

/* A breaker with the SPEC defaults on a fake clock starting at *now. */
static void make_breaker(struct breaker *b, uint64_t *now, struct events *ev)
{
	struct breaker_opts o = {.name = "db", .clock = fake_clock, .clock_ud = now};

	if (ev) {
		memset(ev, 0, sizeof(*ev));
		o.on_state_change = on_change;
		o.ud = ev;
	}
	ck_assert_int_eq(breaker_init(b, &o), 0);
}

static void record_n(struct breaker *b, int n, int success)
{
	for (int i = 0; i < n; i++) {
		ck_assert_int_eq(breaker_allow(b), 1);
		breaker_record(b, success);
	}
}

/* Trip a default breaker with five failures at *now. */
static void trip(struct breaker *b)
{
	record_n(b, 5, 0);
	ck_assert_int_eq(breaker_state(b), BREAKER_OPEN);
}

/* xorshift32: a deterministic uniform source for jitter tests. */
static uint32_t xorshift(void *ud)
{
	uint32_t *s = ud;

	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

static uint32_t rand_const(void *ud)
{
	return *(const uint32_t *)ud;
}

/* ---- breaker ---------------------------------------------------------- */

START_TEST(test_breaker_stays_closed_under_volume_threshold)
{
	uint64_t now = 1000;
	struct breaker b;
	struct breaker_stats st;

	make_breaker(&b, &now, NULL);
	record_n(&b, 4, 0);
	ck_assert_int_eq(breaker_state(&b), BREAKER_CLOSED);
	ck_assert_int_eq(breaker_allow(&b), 1);
	breaker_get_stats(&b, &st);
	ck_assert_uint_eq(st.window_calls, 4);
	ck_assert_uint_eq(st.window_failures, 4);
	ck_assert_uint_eq(st.failures, 4);
	ck_assert_uint_eq(st.opens, 0);
	breaker_destroy(&b);
}
END_TEST

START_TEST(test_breaker_opens_at_half_failures)
{
	uint64_t now = 1000;
	struct breaker b;
	struct breaker_stats st;

	make_breaker(&b, &now, NULL);
	record_n(&b, 5, 1);
	record_n(&b, 4, 0); /* 4 of 9 = 44% */
	ck_assert_int_eq(breaker_state(&b), BREAKER_CLOSED);
	record_n(&b, 1, 0); /* 5 of 10 = 50% */
	ck_assert_int_eq(breaker_state(&b), BREAKER_OPEN);
	breaker_get_stats(&b, &st);
	ck_assert_uint_eq(st.calls, 10);
	ck_assert_uint_eq(st.successes, 5);
	ck_assert_uint_eq(st.failures, 5);
	ck_assert_uint_eq(st.opens, 1);
	ck_assert_int_eq(st.state, BREAKER_OPEN);
	breaker_destroy(&b);
}
END_TEST

START_TEST(test_breaker_opens_on_the_fifth_call_when_failing)
{
	uint64_t now = 1000;
	struct breaker b;

	make_breaker(&b, &now, NULL);
	record_n(&b, 2, 1);
	record_n(&b, 2, 0);
	ck_assert_int_eq(breaker_state(&b), BREAKER_CLOSED);
	record_n(&b, 1, 0); /* 3 of 5 */
	ck_assert_int_eq(breaker_state(&b), BREAKER_OPEN);
	breaker_destroy(&b);
}
END_TEST

START_TEST(test_breaker_only_a_failure_trips_it)
{
	uint64_t now = 1000;
	struct breaker b;

	make_breaker(&b, &now, NULL);
	record_n(&b, 3, 0);
	record_n(&b, 2, 1); /* 3 of 5 failed, but the last outcome succeeded */
	ck_assert_int_eq(breaker_state(&b), BREAKER_CLOSED);
	record_n(&b, 1, 0);
	ck_assert_int_eq(breaker_state(&b), BREAKER_OPEN);
	breaker_destroy(&b);
}
END_TEST

START_TEST(test_breaker_forgets_failures_older_than_the_window)
{
	uint64_t now = 0;
	struct breaker b;
	struct breaker_stats st;

	/* Just inside the window the old failures still count. */
	make_breaker(&b, &now, NULL);
	record_n(&b, 4, 0);
	now = 9999;
	record_n(&b, 1, 0);
	ck_assert_int_eq(breaker_state(&b), BREAKER_OPEN);
	breaker_destroy(&b);

	/* A full window later they are gone. */
	now = 0;
	make_breaker(&b, &now, NULL);
	record_n(&b, 4, 0);
	now = 10000;
	record_n(&b, 1, 0);
	ck_assert_int_eq(breaker_state(&b), BREAKER_CLOSED);
	breaker_get_stats(&b, &st);
	ck_assert_uint_eq(st.window_calls, 1);
	ck_assert_uint_eq(st.window_failures, 1);
	ck_assert_uint_eq(st.failures, 5);
	breaker_destroy(&b);

	/* Buckets retire one by one: failures from t=0 go, t=5000 stay. */
	now = 0;
	make_breaker(&b, &now, NULL);
	record_n(&b, 2, 0);
	now = 5000;
	record_n(&b, 2, 0);
	now = 10500;
	breaker_get_stats(&b, &st);
	ck_assert_uint_eq(st.window_calls, 2);
	record_n(&b, 2, 1);
	record_n(&b, 1, 0); /* 3 of 5 = 60% */
	ck_assert_int_eq(breaker_state(&b), BREAKER_OPEN);
	now = 25000;
	breaker_get_stats(&b, &st);
	ck_assert_uint_eq(st.window_calls, 0);
	breaker_destroy(&b);
}
END_TEST

START_TEST(test_breaker_open_rejects_until_reset_timeout)
{
	uint64_t now = 5000;
	struct breaker b;
	struct breaker_stats st;

	make_breaker(&b, &now, NULL);
	trip(&b);
	ck_assert_int_eq(breaker_allow(&b), 0);
	now = 5000 + 29999;
	ck_assert_int_eq(breaker_allow(&b), 0);
	ck_assert_int_eq(breaker_state(&b), BREAKER_OPEN);
	breaker_get_stats(&b, &st);
	ck_assert_uint_eq(st.rejections, 2);
	now = 5000 + 30000;
	ck_assert_int_eq(breaker_allow(&b), 1);
	ck_assert_int_eq(breaker_state(&b), BREAKER_HALF_OPEN);
	breaker_destroy(&b);
}
END_TEST

START_TEST(test_breaker_half_open_admits_exactly_one_trial)
{
	uint64_t now = 0;
	struct breaker b;
	struct breaker_stats st;

	make_breaker(&b, &now, NULL);
	trip(&b);
	now = 30000;
	ck_assert_int_eq(breaker_allow(&b), 1);
	for (int i = 0; i < 10; i++) {
		now += 1000;
		ck_assert_int_eq(breaker_allow(&b), 0);
	}
	ck_assert_int_eq(breaker_state(&b), BREAKER_HALF_OPEN);
	breaker_get_stats(&b, &st);
	ck_assert_uint_eq(st.rejections, 10);
	breaker_destroy(&b);
}
END_TEST

START_TEST(test_breaker_trial_success_closes_and_clears_window)
{
	uint64_t now = 0;
	struct breaker b;
	struct breaker_stats st;
	/* A reset timeout shorter than the window, so that the failures which
	 * opened the breaker would still be inside it when the trial ends. */
	struct breaker_opts o = {.reset_timeout_ms = 1000, .clock = fake_clock, .clock_ud = &now};

	ck_assert_int_eq(breaker_init(&b, &o), 0);
	trip(&b);
	now = 1000;
	ck_assert_int_eq(breaker_allow(&b), 1);
	breaker_record(&b, 1);
	ck_assert_int_eq(breaker_state(&b), BREAKER_CLOSED);
	breaker_get_stats(&b, &st);
	ck_assert_uint_eq(st.window_calls, 0);
	ck_assert_uint_eq(st.window_failures, 0);
	/* The failures that opened it no longer count. */
	record_n(&b, 4, 0);
	ck_assert_int_eq(breaker_state(&b), BREAKER_CLOSED);
	record_n(&b, 1, 0);
	ck_assert_int_eq(breaker_state(&b), BREAKER_OPEN);
	breaker_destroy(&b);
}
END_TEST

START_TEST(test_breaker_trial_failure_reopens_and_restarts_timer)
{
	uint64_t now = 0;
	struct breaker b;
	struct breaker_stats st;

	make_breaker(&b, &now, NULL);
	trip(&b);
	now = 40000;
	ck_assert_int_eq(breaker_allow(&b), 1);
	breaker_record(&b, 0);
	ck_assert_int_eq(breaker_state(&b), BREAKER_OPEN);
	now = 40000 + 29999;
	ck_assert_int_eq(breaker_allow(&b), 0);
	now = 40000 + 30000;
	ck_assert_int_eq(breaker_allow(&b), 1);
	ck_assert_int_eq(breaker_state(&b), BREAKER_HALF_OPEN);
	breaker_get_stats(&b, &st);
	ck_assert_uint_eq(st.opens, 2);
	breaker_destroy(&b);
}
END_TEST

START_TEST(test_breaker_replaces_a_lost_trial_after_reset_timeout)
{
	uint64_t now = 0;
	struct breaker b;

	make_breaker(&b, &now, NULL);
	trip(&b);
	now = 30000;
	ck_assert_int_eq(breaker_allow(&b), 1); /* never recorded */
	now = 30000 + 29999;
	ck_assert_int_eq(breaker_allow(&b), 0);
	now = 60000;
	ck_assert_int_eq(breaker_allow(&b), 1);
	ck_assert_int_eq(breaker_allow(&b), 0);
	breaker_record(&b, 1);
	ck_assert_int_eq(breaker_state(&b), BREAKER_CLOSED);
	breaker_destroy(&b);
}
END_TEST

START_TEST(test_breaker_ignores_outcomes_recorded_while_open)
{
	uint64_t now = 0;
	struct breaker b;
	struct breaker_stats st;

	make_breaker(&b, &now, NULL);
	record_n(&b, 5, 0);
	breaker_record(&b, 1); /* admitted before it opened */
	breaker_record(&b, 0);
	ck_assert_int_eq(breaker_state(&b), BREAKER_OPEN);
	breaker_get_stats(&b, &st);
	ck_assert_uint_eq(st.calls, 7);
	ck_assert_uint_eq(st.opens, 1);
	now = 30000;
	ck_assert_int_eq(breaker_allow(&b), 1);
	breaker_destroy(&b);
}
END_TEST

START_TEST(test_breaker_reports_state_changes_in_order)
{
	uint64_t now = 0;
	struct breaker b;
	struct events ev;
	static const int want[][2] = {
	    {BREAKER_CLOSED, BREAKER_OPEN},    {BREAKER_OPEN, BREAKER_HALF_OPEN},   {BREAKER_HALF_OPEN, BREAKER_OPEN},
	    {BREAKER_OPEN, BREAKER_HALF_OPEN}, {BREAKER_HALF_OPEN, BREAKER_CLOSED}, {BREAKER_CLOSED, BREAKER_OPEN},
	    {BREAKER_OPEN, BREAKER_CLOSED},
	};

	make_breaker(&b, &now, &ev);
	trip(&b);
	now = 30000;
	ck_assert_int_eq(breaker_allow(&b), 1);
	ck_assert_int_eq(breaker_allow(&b), 0); /* rejection: no event */
	breaker_record(&b, 0);
	now = 60000;
	ck_assert_int_eq(breaker_allow(&b), 1);
	breaker_record(&b, 1);
	breaker_reset(&b); /* already closed: no event */
	trip(&b);
	breaker_reset(&b);
	ck_assert_int_eq(breaker_state(&b), BREAKER_CLOSED);
	ck_assert_int_eq(breaker_allow(&b), 1);

	ck_assert_int_eq(ev.n, (int)(sizeof(want) / sizeof(want[0])));
	for (int i = 0; i < ev.n; i++) {
		ck_assert_int_eq(ev.from[i], want[i][0]);
		ck_assert_int_eq(ev.to[i], want[i][1]);
	}
	ck_assert_str_eq(ev.name, "db");
	breaker_destroy(&b);
}
END_TEST

struct requery {
	struct breaker *b;
	int seen_state;
	uint64_t seen_opens;
};

static void requery_change(void *ud, const char *name, int from, int to)
{
	struct requery *q = ud;
	struct breaker_stats st;

	(void)name;
	(void)from;
	(void)to;
	breaker_get_stats(q->b, &st); /* would deadlock if called under the lock */
	q->seen_state = st.state;
	q->seen_opens = st.opens;
}

START_TEST(test_breaker_callback_runs_outside_the_lock)
{
	uint64_t now = 0;
	struct breaker b;
	struct requery q = {.b = &b, .seen_state = -1};
	struct breaker_opts o = {.clock = fake_clock, .clock_ud = &now, .on_state_change = requery_change, .ud = &q};

	ck_assert_int_eq(breaker_init(&b, &o), 0);
	trip(&b);
	ck_assert_int_eq(q.seen_state, BREAKER_OPEN);
	ck_assert_uint_eq(q.seen_opens, 1);
	breaker_reset(&b);
	ck_assert_int_eq(q.seen_state, BREAKER_CLOSED);
	breaker_destroy(&b);
}
END_TEST

#define THREADS 4
#define ITERATIONS 50000

struct thread_arg {
	struct breaker *b;
	_Atomic uint64_t *clock;
	uint64_t allowed, rejected;
};

static _Atomic unsigned long n_to_open, n_to_half, n_to_closed, n_bad_events;

static uint64_t atomic_clock(void *ud)
{
	return atomic_load((_Atomic uint64_t *)ud);
}

static void count_change(void *ud, const char *name, int from, int to)
{
	(void)ud;
	if (from == to || strcmp(name, "mt") != 0)
		atomic_fetch_add(&n_bad_events, 1);
	if (to == BREAKER_OPEN)
		atomic_fetch_add(&n_to_open, 1);
	else if (to == BREAKER_HALF_OPEN)
		atomic_fetch_add(&n_to_half, 1);
	else if (to == BREAKER_CLOSED)
		atomic_fetch_add(&n_to_closed, 1);
	else
		atomic_fetch_add(&n_bad_events, 1);
}

static void *hammer(void *p)
{
	struct thread_arg *a = p;

	for (unsigned i = 0; i < ITERATIONS; i++) {
		atomic_fetch_add(a->clock, 1);
		if (breaker_allow(a->b)) {
			a->allowed++;
			breaker_record(a->b, i % 4 == 0); /* 75% failures */
		} else {
			a->rejected++;
		}
	}
	return NULL;
}

START_TEST(test_breaker_counters_stay_consistent_across_threads)
{
	_Atomic uint64_t clock = 0;
	struct breaker b;
	struct breaker_opts o = {.name = "mt",
	                         .window_ms = 1000,
	                         .reset_timeout_ms = 50,
	                         .clock = atomic_clock,
	                         .clock_ud = (void *)&clock,
	                         .on_state_change = count_change};
	pthread_t th[THREADS];
	struct thread_arg arg[THREADS];
	struct breaker_stats st;
	uint64_t allowed = 0, rejected = 0;

	atomic_store(&n_to_open, 0);
	atomic_store(&n_to_half, 0);
	atomic_store(&n_to_closed, 0);
	atomic_store(&n_bad_events, 0);
	ck_assert_int_eq(breaker_init(&b, &o), 0);
	for (int i = 0; i < THREADS; i++) {
		arg[i] = (struct thread_arg){.b = &b, .clock = &clock};
		ck_assert_int_eq(pthread_create(&th[i], NULL, hammer, &arg[i]), 0);
	}
	for (int i = 0; i < THREADS; i++) {
		ck_assert_int_eq(pthread_join(th[i], NULL), 0);
		allowed += arg[i].allowed;
		rejected += arg[i].rejected;
	}
	breaker_get_stats(&b, &st);
	ck_assert_uint_eq(allowed + rejected, (uint64_t)THREADS * ITERATIONS);
	ck_assert_uint_eq(st.calls, allowed);
	ck_assert_uint_eq(st.successes + st.failures, st.calls);
	ck_assert_uint_eq(st.rejections, rejected);
	ck_assert_uint_ge(st.opens, 1);
	ck_assert_uint_eq(st.opens, atomic_load(&n_to_open));
	ck_assert_uint_eq(atomic_load(&n_bad_events), 0);
	/* Every open except the first follows a half-open trial; the last
	 * trial may still be pending or may have closed the breaker. */
	ck_assert_uint_eq(atomic_load(&n_to_half), st.opens - 1 + (st.state != BREAKER_OPEN));
	ck_assert_int_eq(st.state, breaker_state(&b));
	breaker_destroy(&b);
}
END_TEST

START_TEST(test_breaker_init_applies_defaults_and_rejects_bad_options)
{
	struct breaker b;
	struct breaker_opts o;
	char longname[100];

	ck_assert_int_eq(breaker_init(&b, NULL), 0);
	ck_assert_int_eq(breaker_state(&b), BREAKER_CLOSED);
	ck_assert_str_eq(breaker_name(&b), "breaker");
	ck_assert_int_eq(breaker_allow(&b), 1);
	breaker_destroy(&b);

	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	o = (struct breaker_opts){.name = longname};
	ck_assert_int_eq(breaker_init(&b, &o), 0);
	ck_assert_uint_eq(strlen(breaker_name(&b)), BREAKER_NAME_MAX - 1);
	breaker_destroy(&b);

	o = (struct breaker_opts){.buckets = BREAKER_MAX_BUCKETS + 1};
	errno = 0;
	ck_assert_int_eq(breaker_init(&b, &o), -1);
	ck_assert_int_eq(errno, EINVAL);
	o = (struct breaker_opts){.error_threshold_pct = 101};
	ck_assert_int_eq(breaker_init(&b, &o), -1);
	o = (struct breaker_opts){.window_ms = 5, .buckets = 10};
	ck_assert_int_eq(breaker_init(&b, &o), -1);
}
END_TEST

START_TEST(test_breaker_honours_custom_thresholds)
{
	uint64_t now = 0;
	struct breaker b;
	struct breaker_opts o = {.volume_threshold = 10,
	                         .error_threshold_pct = 80,
	                         .reset_timeout_ms = 100,
	                         .clock = fake_clock,
	                         .clock_ud = &now};

	ck_assert_int_eq(breaker_init(&b, &o), 0);
	record_n(&b, 9, 0);
	ck_assert_int_eq(breaker_state(&b), BREAKER_CLOSED);
	breaker_reset(&b);
	record_n(&b, 3, 1);
	record_n(&b, 9, 0); /* 9 of 12 = 75% */
	ck_assert_int_eq(breaker_state(&b), BREAKER_CLOSED);
	record_n(&b, 3, 0); /* 12 of 15 = 80% */
	ck_assert_int_eq(breaker_state(&b), BREAKER_OPEN);
	now = 99;
	ck_assert_int_eq(breaker_allow(&b), 0);
	now = 100;
	ck_assert_int_eq(breaker_allow(&b), 1);
	breaker_destroy(&b);
}
END_TEST

START_TEST(test_breaker_state_names_match_the_spec)
{
	ck_assert_str_eq(breaker_state_name(BREAKER_CLOSED), "closed");
	ck_assert_str_eq(breaker_state_name(BREAKER_OPEN), "open");
	ck_assert_str_eq(breaker_state_name(BREAKER_HALF_OPEN), "half-open");
	ck_assert_str_eq(breaker_state_name(42), "unknown");
}
END_TEST

/* ---- retry ------------------------------------------------------------ */

START_TEST(test_retry_cap_grows_by_factor_and_clamps_at_max)
{
	struct retry_policy http = RETRY_POLICY_HTTP, db = RETRY_POLICY_DB;
	static const uint64_t want_http[] = {100, 200, 400, 800, 1600, 3200, 5000, 5000};
	static const uint64_t want_db[] = {20, 40, 80, 160, 200, 200};
	struct retry_policy flat = {.retries = 3, .factor = 0.5, .min_delay_ms = 100, .max_delay_ms = 5000};
	struct retry_policy none = {.retries = 3, .factor = 2, .min_delay_ms = 0, .max_delay_ms = 5000};
	struct retry_policy low_max = {.retries = 3, .factor = 2, .min_delay_ms = 300, .max_delay_ms = 100};

	for (unsigned i = 0; i < sizeof(want_http) / sizeof(want_http[0]); i++)
		ck_assert_uint_eq(retry_cap_ms(&http, i), want_http[i]);
	for (unsigned i = 0; i < sizeof(want_db) / sizeof(want_db[0]); i++)
		ck_assert_uint_eq(retry_cap_ms(&db, i), want_db[i]);
	ck_assert_uint_eq(retry_cap_ms(&http, 64), 5000);
	ck_assert_uint_eq(retry_cap_ms(&http, UINT32_MAX), 5000);
	ck_assert_uint_eq(retry_cap_ms(&flat, 5), 100);
	ck_assert_uint_eq(retry_cap_ms(&none, 5), 0);
	ck_assert_uint_eq(retry_cap_ms(&low_max, 0), 100);
	ck_assert_int_eq(http.retries, 3);
	ck_assert_int_eq(db.retries, 2);
}
END_TEST

START_TEST(test_retry_backoff_stays_within_cap_with_full_jitter)
{
	struct retry_policy http = RETRY_POLICY_HTTP;
	uint32_t seed = 0x9e3779b9u, zero = 0, top = UINT32_MAX;

	for (unsigned attempt = 0; attempt < 8; attempt++) {
		uint64_t cap = retry_cap_ms(&http, attempt), lo = UINT64_MAX, hi = 0;

		for (int i = 0; i < 4000; i++) {
			uint64_t d = retry_backoff_ms(&http, attempt, xorshift, &seed);

			ck_assert_uint_le(d, cap);
			lo = d < lo ? d : lo;
			hi = d > hi ? d : hi;
		}
		/* Full jitter spreads over the whole range, not just near the cap. */
		ck_assert_uint_lt(lo, cap / 10);
		ck_assert_uint_gt(hi, cap - cap / 10);
		ck_assert_uint_eq(retry_backoff_ms(&http, attempt, rand_const, &zero), 0);
		ck_assert_uint_eq(retry_backoff_ms(&http, attempt, rand_const, &top), cap);
	}
}
END_TEST

START_TEST(test_retry_backoff_uses_libsodium_by_default)
{
	struct retry_policy db = RETRY_POLICY_DB;

	ck_assert_int_ge(sodium_init(), 0);
	for (unsigned attempt = 0; attempt < 6; attempt++)
		for (int i = 0; i < 500; i++)
			ck_assert_uint_le(retry_backoff_ms(&db, attempt, NULL, NULL), retry_cap_ms(&db, attempt));
}
END_TEST

START_TEST(test_retry_should_retry_respects_retries_bail_and_deadline)
{
	struct retry_policy http = RETRY_POLICY_HTTP;

	ck_assert_int_eq(retry_should_retry(&http, 1, 0, 100, 1000, 0), 1);
	ck_assert_int_eq(retry_should_retry(&http, 3, 0, 100, 1000, 0), 1);
	ck_assert_int_eq(retry_should_retry(&http, 4, 0, 100, 1000, 0), 0);
	ck_assert_int_eq(retry_should_retry(&http, 1, 1, 100, 1000, 0), 0);
	/* Never past, nor exactly at, the deadline. */
	ck_assert_int_eq(retry_should_retry(&http, 1, 0, 500, 1000, 1501), 1);
	ck_assert_int_eq(retry_should_retry(&http, 1, 0, 500, 1000, 1500), 0);
	ck_assert_int_eq(retry_should_retry(&http, 1, 0, 0, 2000, 1500), 0);
	ck_assert_int_eq(retry_should_retry(&http, 1, 0, UINT64_MAX, UINT64_MAX - 1, UINT64_MAX), 0);
	ck_assert_int_eq(retry_should_retry(&(struct retry_policy){0}, 1, 0, 0, 0, 0), 0);
}
END_TEST

START_TEST(test_retry_bails_on_4xx_except_408_and_429)
{
	static const int bail[] = {400, 401, 403, 404, 405, 409, 413, 422, 499};
	static const int retry[] = {0, 408, 429, 500, 502, 503, 504, 599};

	for (unsigned i = 0; i < sizeof(bail) / sizeof(bail[0]); i++)
		ck_assert_msg(retry_http_status_bails(bail[i]) == 1, "%d should bail", bail[i]);
	for (unsigned i = 0; i < sizeof(retry) / sizeof(retry[0]); i++)
		ck_assert_msg(retry_http_status_bails(retry[i]) == 0, "%d should retry", retry[i]);
}
END_TEST

START_TEST(test_retry_after_parses_delay_seconds)
{
	ck_assert_uint_eq(retry_after_ms("120", 0), 120000);
	ck_assert_uint_eq(retry_after_ms(" 7\t", 0), 7000);
	ck_assert_uint_eq(retry_after_ms("007", 0), 7000);
	ck_assert_uint_eq(retry_after_ms("0", 0), 0);
	ck_assert_uint_eq(retry_after_ms("86399", 0), 86399000);
	ck_assert_uint_eq(retry_after_ms("86400", 0), RETRY_AFTER_MAX_MS);
	ck_assert_uint_eq(retry_after_ms("99999999999999999999999999999999", 0), RETRY_AFTER_MAX_MS);
}
END_TEST

START_TEST(test_retry_after_rejects_garbage_and_negative_values)
{
	static const char *const bad[] = {"",     "   ", "abc", "12a", "1.5",         "+5",     "-5",      "5 s",
	                                  "0x10", "1e3", "5,6", "GMT", "Sun, 06 Nov", "-1 GMT", "\xff\xfe"};

	ck_assert_uint_eq(retry_after_ms(NULL, 0), 0);
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(retry_after_ms(bad[i], 784111777) == 0, "\"%s\" accepted", bad[i]);
}
END_TEST

START_TEST(test_retry_after_parses_http_dates)
{
	const uint64_t now = 784111777; /* Sun, 06 Nov 1994 08:49:37 GMT */

	ck_assert_uint_eq(retry_after_ms("Sun, 06 Nov 1994 08:50:07 GMT", now), 30000);
	ck_assert_uint_eq(retry_after_ms("Sunday, 06-Nov-94 08:50:07 GMT", now), 30000);
	ck_assert_uint_eq(retry_after_ms("Sun Nov  6 08:50:07 1994", now), 30000);
	ck_assert_uint_eq(retry_after_ms("  Sun, 06 Nov 1994 08:49:38 GMT ", now), 1000);
	/* Now or in the past: retry at once. */
	ck_assert_uint_eq(retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", now), 0);
	ck_assert_uint_eq(retry_after_ms("Sat, 05 Nov 1994 08:49:37 GMT", now), 0);
	/* Far future clamps. */
	ck_assert_uint_eq(retry_after_ms("Fri, 31 Dec 9999 23:59:59 GMT", now), RETRY_AFTER_MAX_MS);
	/* Leap day. */
	ck_assert_uint_eq(retry_after_ms("Thu, 29 Feb 2024 00:00:00 GMT", 1709164800 - 60), 60000);
	/* RFC 850 years: at most 50 years ahead, else the previous century. */
	ck_assert_uint_eq(retry_after_ms("Friday, 01-Jan-99 00:00:00 GMT", 915148800 - 60), 60000);
	ck_assert_uint_eq(retry_after_ms("Wednesday, 01-Jan-70 00:00:00 GMT", 1764028800), RETRY_AFTER_MAX_MS);
	ck_assert_uint_eq(retry_after_ms("Thursday, 01-Jan-99 00:00:00 GMT", 1764028800), 0);
}
END_TEST

START_TEST(test_retry_after_rejects_malformed_http_dates)
{
	const uint64_t now = 784111777 - 3600;
	static const char *const bad[] = {
	    "Mon, 06 Nov 1994 08:50:07 GMT",    /* wrong weekday */
	    "sun, 06 Nov 1994 08:50:07 GMT",    /* names are case-sensitive */
	    "Sun, 06 nov 1994 08:50:07 GMT",    /* month too */
	    "Sun, 6 Nov 1994 08:50:07 GMT",     /* day is two digits */
	    "Sun, 06 Nov 94 08:50:07 GMT",      /* year is four digits */
	    "Sun, 06 Nov 1994 08:50:07 UTC",    /* only GMT */
	    "Sun, 06 Nov 1994 08:50:07",        /* zone missing */
	    "Sun, 06 Nov 1994 08:50:07 GMT x",  /* trailing bytes */
	    "Sun, 06 Nov 1994 24:00:00 GMT",    /* hour */
	    "Sun, 06 Nov 1994 08:60:00 GMT",    /* minute */
	    "Sun, 06 Nov 1994 08:50:61 GMT",    /* second */
	    "Sun,  06 Nov 1994 08:50:07 GMT",   /* double space */
	    "Sun, 06 Nov 1994 8:50:07 GMT",     /* hour is two digits */
	    "Thu, 31 Nov 1994 08:50:07 GMT",    /* no such day */
	    "Wed, 29 Feb 2023 00:00:00 GMT",    /* not a leap year */
	    "Sun, 00 Nov 1994 08:50:07 GMT",    /* day zero */
	    "Sun, 06 Nov 1994 08:50:07 GMT\n",  /* control byte */
	    "Sun 06 Nov 1994 08:50:07 GMT",     /* IMF-fixdate without comma */
	    "Sun, 06-Nov-94 08:50:07 GMT",      /* RFC 850 needs the long name */
	    "Sunday, 06 Nov 1994 08:50:07 GMT", /* mixed forms */
	    "Sun Nov 6 08:50:07 1994",          /* asctime pads with a space */
	    "Sun Nov  6 08:50:07 94",           /* asctime year */
	    "Sun Nov  6 08:50:07 1994 GMT",     /* asctime has no zone */
	};

	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(retry_after_ms(bad[i], now) == 0, "\"%s\" accepted", bad[i]);
	ck_assert_uint_eq(retry_after_ms("Sun Nov 06 08:50:07 1994", now), 3630000);
}
END_TEST

/* ---- deadlines -------------------------------------------------------- */

START_TEST(test_deadline_helpers_count_down_and_expire)
{
	uint64_t now = 1000;
	struct deadline d = deadline_after(1000, 500), none = DEADLINE_NONE, real;

	ck_assert_uint_eq(d.at_ms, 1500);
	ck_assert_uint_eq(deadline_remaining_ms(d, 1200), 300);
	ck_assert_uint_eq(deadline_remaining_ms(d, 1500), 0);
	ck_assert_uint_eq(deadline_remaining_ms(d, 9000), 0);
	ck_assert_int_eq(deadline_expired(d, 1499), 0);
	ck_assert_int_eq(deadline_expired(d, 1500), 1);

	ck_assert_uint_eq(deadline_remaining_ms(none, 123), UINT64_MAX);
	ck_assert_int_eq(deadline_expired(none, UINT64_MAX), 0);
	ck_assert_uint_eq(deadline_after(1000, 0).at_ms, 0);
	ck_assert_uint_eq(deadline_after(UINT64_MAX - 5, 10).at_ms, UINT64_MAX);

	ck_assert_uint_eq(deadline_in(fake_clock, &now, 250).at_ms, 1250);
	ck_assert_uint_eq(deadline_in(fake_clock, &now, 0).at_ms, 0);
	real = deadline_in(NULL, NULL, 1000);
	ck_assert_uint_le(deadline_remaining_ms(real, rclock_now_ms()), 1000);
}
END_TEST

START_TEST(test_deadline_min_prefers_the_earlier_limit)
{
	struct deadline a = {.at_ms = 100}, b = {.at_ms = 200}, none = DEADLINE_NONE;

	ck_assert_uint_eq(deadline_min(a, b).at_ms, 100);
	ck_assert_uint_eq(deadline_min(b, a).at_ms, 100);
	ck_assert_uint_eq(deadline_min(none, b).at_ms, 200);
	ck_assert_uint_eq(deadline_min(a, none).at_ms, 100);
	ck_assert_uint_eq(deadline_min(none, none).at_ms, 0);
}
END_TEST

START_TEST(test_rclock_is_monotonic)
{
	uint64_t a = rclock_now_ms(), b = rclock_now_ms();

	ck_assert_uint_ge(b, a);
	ck_assert_uint_gt(a, 0);
}
END_TEST

/* ---- suite ------------------------------------------------------------ */

static void add(Suite *s, const char *name, const TTest *t)
{
	TCase *tc = tcase_create(name);

	tcase_add_test(tc, t);
	suite_add_tcase(s, tc);
}

static Suite *resilience_suite(void)
{
	Suite *s = suite_create("resilience");

	add(s, "breaker_under_volume", test_breaker_stays_closed_under_volume_threshold);
	add(s, "breaker_half_failures", test_breaker_opens_at_half_failures);
	add(s, "breaker_fifth_call", test_breaker_opens_on_the_fifth_call_when_failing);
	add(s, "breaker_failure_trips", test_breaker_only_a_failure_trips_it);
	add(s, "breaker_window", test_breaker_forgets_failures_older_than_the_window);
	add(s, "breaker_open_rejects", test_breaker_open_rejects_until_reset_timeout);
	add(s, "breaker_one_trial", test_breaker_half_open_admits_exactly_one_trial);
	add(s, "breaker_trial_success", test_breaker_trial_success_closes_and_clears_window);
	add(s, "breaker_trial_failure", test_breaker_trial_failure_reopens_and_restarts_timer);
	add(s, "breaker_lost_trial", test_breaker_replaces_a_lost_trial_after_reset_timeout);
	add(s, "breaker_open_records", test_breaker_ignores_outcomes_recorded_while_open);
	add(s, "breaker_events", test_breaker_reports_state_changes_in_order);
	add(s, "breaker_callback_query", test_breaker_callback_runs_outside_the_lock);
	add(s, "breaker_threads", test_breaker_counters_stay_consistent_across_threads);
	add(s, "breaker_init", test_breaker_init_applies_defaults_and_rejects_bad_options);
	add(s, "breaker_custom", test_breaker_honours_custom_thresholds);
	add(s, "breaker_names", test_breaker_state_names_match_the_spec);
	add(s, "retry_cap", test_retry_cap_grows_by_factor_and_clamps_at_max);
	add(s, "retry_jitter", test_retry_backoff_stays_within_cap_with_full_jitter);
	add(s, "retry_sodium", test_retry_backoff_uses_libsodium_by_default);
	add(s, "retry_should_retry", test_retry_should_retry_respects_retries_bail_and_deadline);
	add(s, "retry_http_bail", test_retry_bails_on_4xx_except_408_and_429);
	add(s, "retry_after_seconds", test_retry_after_parses_delay_seconds);
	add(s, "retry_after_garbage", test_retry_after_rejects_garbage_and_negative_values);
	add(s, "retry_after_dates", test_retry_after_parses_http_dates);
	add(s, "retry_after_bad_dates", test_retry_after_rejects_malformed_http_dates);
	add(s, "deadline_helpers", test_deadline_helpers_count_down_and_expire);
	add(s, "deadline_min", test_deadline_min_prefers_the_earlier_limit);
	add(s, "rclock", test_rclock_is_monotonic);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(resilience_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
