/* test_store_faults.c - the store under injected MongoDB faults, against
 * the wire-protocol test double (tests/mongo_double): server gone, breaker
 * opening and recovering, error replies and dropped connections, a slow
 * server with the event loop still on time, deadlines shorter than the
 * server's delay, and a full queue.
 *
 * Each test starts its own double (in its own forked check process) and a
 * store with serverSelectionTimeoutMS=1000. Waits are bounded; the only
 * timing assertions are generous bounds named in the store's contract.
 */
#define _GNU_SOURCE
#include "../src/store.h"

#include <check.h>
#include <errno.h>
#include <event2/event.h>
#include <mongoc/mongoc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../src/log.h"
#include "../workers/schema.h"
#include "mongo_double.h"

#define SST_MS 1000
#define TEST_TIMEOUT_S 120
#define NTRANS 64

static struct {
	struct mdouble md;
	struct event_base *base;
	struct store *st;
	char uri[256];
	int trans_from[NTRANS], trans_to[NTRANS];
	_Atomic int ntrans;
} T;

struct waiter {
	bool done;
	int calls;
	enum store_err err;
	uint64_t submitted_ms, done_ms;
};

static void on_change(void *ud, const char *name, int from, int to)
{
	int i = atomic_fetch_add(&T.ntrans, 1);

	(void)ud;
	ck_assert_str_eq(name, "mongodb");
	if (i < NTRANS) {
		T.trans_from[i] = from;
		T.trans_to[i] = to;
	}
}

static void open_store(uint64_t reset_ms, unsigned max_inflight)
{
	struct store_opts o = {.pool_size = 4,
	                       .write_threads = 1,
	                       .breaker_reset_ms = reset_ms,
	                       .max_inflight = max_inflight,
	                       .socket_timeout_ms = 10000,
	                       .ping_interval_ms = 60000,
	                       .on_breaker_change = on_change};
	char err[256] = "";

	T.st = store_open(T.uri, T.base, &o, err, sizeof err);
	ck_assert_msg(T.st != NULL, "store_open: %s", err);
}

static void setup(void)
{
	memset(&T, 0, sizeof T);
	ck_assert_msg(mdouble_start(&T.md) == 0, "cannot start tests/mongo_double");
	snprintf(T.uri, sizeof T.uri, "mongodb://127.0.0.1:%d/faults?serverSelectionTimeoutMS=%d", T.md.port, SST_MS);
	T.base = event_base_new();
	ck_assert_ptr_nonnull(T.base);
}

static void teardown(void)
{
	store_close(T.st);
	event_base_free(T.base);
	mdouble_stop(&T.md);
}

static void cmd(const char *line)
{
	ck_assert_msg(mdouble_cmd(&T.md, line) == 0, "double refused '%s'", line);
}

static void on_done(struct store_op *op, enum store_err err)
{
	struct waiter *w = op->user;

	w->done = true;
	w->calls++;
	w->err = err;
	w->done_ms = jobs_now_ms();
}

static void wake(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

/* Turn the loop until every waiter is done or limit_ms pass. */
static bool loop_until_all(struct waiter *w, size_t n, uint64_t limit_ms)
{
	struct event *tick = event_new(T.base, -1, EV_PERSIST, wake, NULL);
	struct timeval tv = {0, 10000};
	uint64_t until = jobs_now_ms() + limit_ms;
	bool all = false;

	ck_assert_int_eq(event_add(tick, &tv), 0);
	while (!all && jobs_now_ms() < until) {
		all = true;
		for (size_t i = 0; i < n; i++)
			all = all && w[i].done;
		if (!all)
			event_base_loop(T.base, EVLOOP_ONCE);
	}
	event_free(tick);
	return all;
}

static void sleep_loop(uint64_t ms)
{
	struct waiter never = {0};

	loop_until_all(&never, 1, ms);
}

static void submit(struct store_op *op, struct waiter *w, uint64_t deadline_in_ms)
{
	memset(w, 0, sizeof *w);
	op->done = on_done;
	op->user = w;
	op->deadline_ms = jobs_now_ms() + deadline_in_ms;
	w->submitted_ms = jobs_now_ms();
	ck_assert_int_eq(store_submit(T.st, op), 0);
}

static enum store_err run(struct store_op *op, uint64_t deadline_in_ms)
{
	struct waiter w;

	submit(op, &w, deadline_in_ms);
	ck_assert_msg(loop_until_all(&w, 1, deadline_in_ms + 15000), "op never completed");
	ck_assert_int_eq(w.calls, 1);
	return w.err;
}

static void post_op(struct store_op *op, int seq)
{
	store_op_init(op, STORE_OP_INSERT, COLL_POSTS);
	op->doc = bson_new();
	BSON_APPEND_INT32(op->doc, "seq", seq);
}

/* Stop the double and fail ops until the breaker opens. */
static void break_circuit(void)
{
	struct store_op ops[4];
	struct waiter w[4];
	int rounds = 0, unavailable = 0;

	cmd("stop");
	while (store_breaker_state(T.st) != BREAKER_OPEN && rounds++ < 5) {
		for (int i = 0; i < 4; i++) {
			store_op_init(&ops[i], STORE_OP_PING, COLL_USERS);
			submit(&ops[i], &w[i], 10000);
		}
		ck_assert(loop_until_all(w, 4, 20000));
		for (int i = 0; i < 4; i++) {
			ck_assert_msg(w[i].err == STORE_UNAVAILABLE || w[i].err == STORE_CIRCUIT_OPEN, "got %s",
			              store_err_name(w[i].err));
			unavailable += w[i].err == STORE_UNAVAILABLE;
			/* Server selection fails once, in its timeout, not once per retry. */
			ck_assert_uint_le(w[i].done_ms - w[i].submitted_ms, SST_MS + 1500);
			store_op_clear(&ops[i]);
		}
	}
	ck_assert_int_eq(store_breaker_state(T.st), BREAKER_OPEN);
	ck_assert_int_ge(unavailable, 5); /* the breaker's volume threshold */
}

START_TEST(test_faults_server_down_gives_unavailable_then_circuit_open_fast)
{
	struct store_op op;
	struct waiter w;
	uint64_t lat[9];
	struct breaker_stats bs;

	open_store(60000, 0);
	ck_assert_int_eq(store_db_state(T.st), 1);
	break_circuit();
	ck_assert_int_eq(store_db_state(T.st), 0);
	ck_assert_int_ge(atomic_load(&T.ntrans), 1);
	ck_assert_int_eq(T.trans_to[0], BREAKER_OPEN);

	/* Open: answered on the next loop turn, without the pool. */
	for (int i = 0; i < 9; i++) {
		post_op(&op, i);
		submit(&op, &w, 10000);
		ck_assert(!w.done);
		ck_assert(loop_until_all(&w, 1, 5000));
		ck_assert_int_eq(w.err, STORE_CIRCUIT_OPEN);
		lat[i] = w.done_ms - w.submitted_ms;
		store_op_clear(&op);
	}
	for (int i = 1; i < 9; i++) /* insertion sort for the median */
		for (int k = i; k > 0 && lat[k] < lat[k - 1]; k--) {
			uint64_t t = lat[k];

			lat[k] = lat[k - 1];
			lat[k - 1] = t;
		}
	ck_assert_msg(lat[4] < 5, "median fail-fast latency %llu ms", (unsigned long long)lat[4]);
	store_breaker_stats(T.st, &bs);
	ck_assert_uint_ge(bs.rejections, 9);
}
END_TEST

START_TEST(test_faults_breaker_half_opens_and_closes_when_server_returns)
{
	struct store_op op;
	int n;

	open_store(500, 0);
	break_circuit();
	cmd("start");
	sleep_loop(600); /* past the reset timeout */
	post_op(&op, 1);
	ck_assert_int_eq(run(&op, 10000), STORE_OK); /* the half-open trial */
	store_op_clear(&op);
	ck_assert_int_eq(store_breaker_state(T.st), BREAKER_CLOSED);
	ck_assert_int_eq(store_db_state(T.st), 1);
	n = atomic_load(&T.ntrans);
	ck_assert_int_ge(n, 3);
	ck_assert_int_eq(T.trans_to[n - 2], BREAKER_HALF_OPEN);
	ck_assert_int_eq(T.trans_to[n - 1], BREAKER_CLOSED);
	for (int i = 0; i < 5; i++) {
		post_op(&op, 10 + i);
		ck_assert_int_eq(run(&op, 10000), STORE_OK);
		store_op_clear(&op);
	}
}
END_TEST

START_TEST(test_faults_acknowledged_writes_are_never_lost)
{
	const char *faults[] = {"error 91 1", "drop-next 1", "error 11600 2", "drop", "error 189 1", NULL};
	bson_oid_t acked[60];
	int nacked = 0, nfailed = 0;
	struct store_op op;

	open_store(60000, 0);
	for (int i = 0; i < 60; i++) {
		if (i % 10 == 5 && faults[i / 10])
			cmd(faults[i / 10]);
		post_op(&op, i);
		if (run(&op, 10000) == STORE_OK)
			bson_oid_copy(&op.id, &acked[nacked++]);
		else
			nfailed++;
		store_op_clear(&op);
	}
	/* Retries absorb one-off faults. */
	ck_assert_int_ge(nacked, 55);
	cmd("reset");
	for (int i = 0; i < nacked; i++) {
		store_op_init(&op, STORE_OP_FIND_BY_ID, COLL_POSTS);
		bson_oid_copy(&acked[i], &op.id);
		ck_assert_int_eq(run(&op, 10000), STORE_OK);
		store_op_clear(&op);
	}
	/* Each insert landed at most once. */
	store_op_init(&op, STORE_OP_COUNT, COLL_POSTS);
	ck_assert_int_eq(run(&op, 10000), STORE_OK);
	ck_assert_int_ge(op.count, nacked);
	ck_assert_int_le(op.count, 60);
	store_op_clear(&op);
	(void)nfailed;
}
END_TEST

struct ticker {
	struct event *ev;
	uint64_t next_due;
	uint64_t max_late;
	int fired;
};

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	struct ticker *t = arg;
	uint64_t now = jobs_now_ms();

	(void)fd;
	(void)what;
	if (now > t->next_due && now - t->next_due > t->max_late)
		t->max_late = now - t->next_due;
	t->next_due = now + 50;
	t->fired++;
}

START_TEST(test_faults_loop_keeps_time_while_server_is_slow)
{
	struct ticker t = {0};
	struct timeval tv = {0, 50000};
	struct store_op op;
	struct waiter w;

	open_store(60000, 0);
	cmd("delay 2000");
	t.ev = event_new(T.base, -1, EV_PERSIST, on_tick, &t);
	ck_assert_ptr_nonnull(t.ev);
	post_op(&op, 1);
	submit(&op, &w, 10000);
	t.next_due = jobs_now_ms() + 50;
	ck_assert_int_eq(event_add(t.ev, &tv), 0);
	ck_assert(loop_until_all(&w, 1, 15000));
	event_free(t.ev);
	ck_assert_int_eq(w.err, STORE_OK);
	ck_assert_uint_ge(w.done_ms - w.submitted_ms, 1900); /* really was slow */
	ck_assert_int_ge(t.fired, 20);
	ck_assert_msg(t.max_late < 250, "timer was %llu ms late", (unsigned long long)t.max_late);
	/* The figure for bench/RESULTS.md (a measurement, not the assertion). */
	printf("timer lateness with a 2 s database call in flight: max %llu ms over %d ticks of 50 ms\n",
	       (unsigned long long)t.max_late, t.fired);
	store_op_clear(&op);
}
END_TEST

static void free_in_done(struct store_op *op, enum store_err err)
{
	int *calls = op->user;

	(void)err;
	ck_assert(store_op_abandoned(op));
	(*calls)++;
	store_op_clear(op);
	free(op);
}

static void abandon_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	store_op_abandon(arg);
}

START_TEST(test_faults_deadline_shorter_than_delay_times_out_safely)
{
	struct store_op op, fill[2], queued;
	struct waiter w, wf[2], wq;
	struct store_op *gone = malloc(sizeof *gone);
	int gone_calls = 0;
	struct timeval tv = {0, 100000};
	struct event *ev;
	uint64_t until;

	ck_assert_ptr_nonnull(gone);
	open_store(60000, 0); /* 4 read-lane threads, 1 write-lane thread */
	cmd("delay 1500");

	/* A result after the deadline is discarded and reported as TIMEOUT. */
	store_op_init(&op, STORE_OP_FIND, COLL_POSTS);
	submit(&op, &w, 300);

	/* A caller that gives up mid-flight frees the op in done(). */
	post_op(gone, 99);
	gone->done = free_in_done;
	gone->user = &gone_calls;
	gone->deadline_ms = jobs_now_ms() + 10000;
	ck_assert_int_eq(store_submit(T.st, gone), 0);
	ev = event_new(T.base, -1, 0, abandon_cb, gone);
	ck_assert_int_eq(event_add(ev, &tv), 0);

	/* Two more slow calls fill the read lane; an insert queued behind
	 * the first one on the write lane expires before the writer is free
	 * and never reaches the server. */
	for (int i = 0; i < 2; i++) {
		store_op_init(&fill[i], STORE_OP_PING, COLL_USERS);
		submit(&fill[i], &wf[i], 10000);
	}
	post_op(&queued, 777);
	submit(&queued, &wq, 200);

	ck_assert(loop_until_all(&w, 1, 15000));
	ck_assert_int_eq(w.err, STORE_TIMEOUT);
	ck_assert_ptr_null(op.docs);
	ck_assert_uint_eq(op.ndocs, 0);
	ck_assert_uint_ge(w.done_ms - w.submitted_ms, 300);
	store_op_clear(&op);
	ck_assert(loop_until_all(&wq, 1, 15000));
	ck_assert_int_eq(wq.err, STORE_TIMEOUT);
	store_op_clear(&queued);
	ck_assert(loop_until_all(wf, 2, 15000));
	ck_assert_int_eq(wf[0].err, STORE_OK);
	store_op_clear(&fill[0]);
	store_op_clear(&fill[1]);
	until = jobs_now_ms() + 15000;
	while (gone_calls == 0 && jobs_now_ms() < until)
		sleep_loop(50);
	ck_assert_int_eq(gone_calls, 1);
	event_free(ev);

	cmd("delay 0");
	store_op_init(&op, STORE_OP_COUNT, COLL_POSTS);
	ck_assert_int_eq(store_filter_int(&op.filter, "seq", STORE_EQ, 777), 0);
	ck_assert_int_eq(run(&op, 10000), STORE_OK);
	ck_assert_int_eq(op.count, 0);
	store_op_clear(&op);
}
END_TEST

START_TEST(test_faults_full_queue_answers_busy_without_waiting)
{
	struct store_op ops[3];
	struct waiter w[3];

	open_store(60000, 2);
	cmd("delay 500");
	for (int i = 0; i < 3; i++) {
		store_op_init(&ops[i], STORE_OP_PING, COLL_USERS);
		submit(&ops[i], &w[i], 10000);
	}
	ck_assert(loop_until_all(&w[2], 1, 5000));
	ck_assert_int_eq(w[2].err, STORE_BUSY);
	ck_assert(!w[0].done && !w[1].done);
	ck_assert(loop_until_all(w, 3, 15000));
	ck_assert_int_eq(w[0].err, STORE_OK);
	ck_assert_int_eq(w[1].err, STORE_OK);
	ck_assert_int_eq(store_breaker_state(T.st), BREAKER_CLOSED);
}
END_TEST

START_TEST(test_faults_store_opens_disconnected_and_recovers)
{
	struct store_op op;
	struct store_opts o = {.pool_size = 2, .ping_interval_ms = 100};
	char err[256] = "";
	uint64_t until;

	cmd("stop");
	T.st = store_open(T.uri, T.base, &o, err, sizeof err);
	ck_assert_msg(T.st != NULL, "store_open: %s", err);
	ck_assert_int_eq(store_db_state(T.st), 0);
	cmd("start");
	until = jobs_now_ms() + 10000;
	while (store_db_state(T.st) == 0 && jobs_now_ms() < until)
		sleep_loop(50);
	ck_assert_int_eq(store_db_state(T.st), 1); /* the health ping noticed */
	/* The deferred index creation ran: uniqueness holds. */
	sleep_loop(300);
	for (int i = 0; i < 2; i++) {
		store_op_init(&op, STORE_OP_INSERT, COLL_USERS);
		op.doc = bson_new();
		BSON_APPEND_UTF8(op.doc, "email", "same@example.com");
		BSON_APPEND_UTF8(op.doc, "username", i ? "b" : "a");
		ck_assert_int_eq(run(&op, 10000), i ? STORE_DUPLICATE_KEY : STORE_OK);
		store_op_clear(&op);
	}
}
END_TEST

static Suite *faults_suite(void)
{
	Suite *s = suite_create("store_faults");
	struct {
		const char *name;
		const TTest *t;
	} cases[] = {
	    {"server_down", test_faults_server_down_gives_unavailable_then_circuit_open_fast},
	    {"recovery", test_faults_breaker_half_opens_and_closes_when_server_returns},
	    {"no_lost_writes", test_faults_acknowledged_writes_are_never_lost},
	    {"slow_server", test_faults_loop_keeps_time_while_server_is_slow},
	    {"deadline", test_faults_deadline_shorter_than_delay_times_out_safely},
	    {"busy", test_faults_full_queue_answers_busy_without_waiting},
	    {"open_disconnected", test_faults_store_opens_disconnected_and_recovers},
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		TCase *tc = tcase_create(cases[i].name);

		tcase_set_timeout(tc, TEST_TIMEOUT_S);
		tcase_add_checked_fixture(tc, setup, teardown);
		tcase_add_test(tc, cases[i].t);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(void)
{
	SRunner *sr;
	int failed;

	store_register_schema(&app_schema);
	log_init(LOG_LVL_ERROR, 0, NULL, -1);
	mongoc_init();
	sr = srunner_create(faults_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	mongoc_cleanup();
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
