/* test_ratelimit.c - unit tests for src/ratelimit.c: fixed windows driven by
 * explicit clock values, key independence, counts shared across forked
 * processes, eviction in a tiny table, reset/peek, and no keys in memory.
 */
#define _GNU_SOURCE /* memmem */
#include "../src/ratelimit.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MIN15 (15 * 60 * 1000ull)

static struct ratelimit *rl;

static void setup(void)
{
	rl = rl_create(1024);
	ck_assert_ptr_nonnull(rl);
}

static void teardown(void)
{
	rl_destroy(rl);
	rl = NULL;
}

static int hit(const char *key, uint64_t now, uint32_t limit, uint64_t window, struct rl_result *res)
{
	return rl_hit(rl, key, strlen(key), now, limit, window, res);
}

/* ---- windows ---------------------------------------------------------- */

START_TEST(test_rl_allows_limit_hits_then_limits_with_headers)
{
	struct rl_result r;
	uint32_t i;

	for (i = 0; i < 5; i++) {
		ck_assert_int_eq(hit("ip:192.0.2.1", 1000 + i * 100, 5, 60000, &r), 1);
		ck_assert_uint_eq(r.limit, 5);
		ck_assert_uint_eq(r.remaining, 4 - i);
		ck_assert_uint_eq(r.reset_ms, 60000 - i * 100); /* the window opened at the first hit */
	}
	ck_assert_int_eq(hit("ip:192.0.2.1", 2000, 5, 60000, &r), 0);
	ck_assert_uint_eq(r.limit, 5);
	ck_assert_uint_eq(r.remaining, 0);
	ck_assert_uint_eq(r.reset_ms, 59000);
	ck_assert_int_eq(hit("ip:192.0.2.1", 60999, 5, 60000, &r), 0);
	ck_assert_uint_eq(r.reset_ms, 1);
}
END_TEST

START_TEST(test_rl_window_resets_after_window_ms)
{
	struct rl_result r;
	int i;

	for (i = 0; i < 3; i++)
		ck_assert_int_eq(hit("k", 500, 3, 1000, &r), 1);
	ck_assert_int_eq(hit("k", 1499, 3, 1000, &r), 0);
	ck_assert_int_eq(hit("k", 1500, 3, 1000, &r), 1); /* a new window opens at 1500 */
	ck_assert_uint_eq(r.remaining, 2);
	ck_assert_uint_eq(r.reset_ms, 1000);
	ck_assert_int_eq(hit("k", 2000, 3, 1000, &r), 1);
	ck_assert_uint_eq(r.remaining, 1);
	ck_assert_uint_eq(r.reset_ms, 500);
}
END_TEST

START_TEST(test_rl_limited_hits_are_not_counted)
{
	struct rl_result r;
	int i;

	ck_assert_int_eq(hit("k", 0, 2, 100, &r), 1);
	ck_assert_int_eq(hit("k", 0, 2, 100, &r), 1);
	for (i = 0; i < 50; i++)
		ck_assert_int_eq(hit("k", 50, 2, 100, &r), 0);
	ck_assert_int_eq(hit("k", 100, 2, 100, &r), 1);
	ck_assert_uint_eq(r.remaining, 1);
}
END_TEST

START_TEST(test_rl_works_with_wall_clock_milliseconds)
{
	const uint64_t t = 1700000000123ull; /* CLOCK_REALTIME in ms, beyond 40 bits */
	struct rl_result r;

	ck_assert_int_eq(hit("k", t, 1, MIN15, &r), 1);
	ck_assert_uint_eq(r.reset_ms, MIN15);
	ck_assert_int_eq(hit("k", t + MIN15 - 1, 1, MIN15, &r), 0);
	ck_assert_uint_eq(r.reset_ms, 1);
	ck_assert_int_eq(hit("k", t + MIN15, 1, MIN15, &r), 1);
	/* an older reading from another process counts in the current window */
	ck_assert_int_eq(hit("other", t - 5, 1, 1000, &r), 1);
	ck_assert_int_eq(hit("other", t - 5, 1, 1000, &r), 0);
}
END_TEST

START_TEST(test_rl_keys_are_independent)
{
	struct rl_result r;

	ck_assert_int_eq(hit("ip:198.51.100.1", 0, 1, 1000, &r), 1);
	ck_assert_int_eq(hit("ip:198.51.100.1", 0, 1, 1000, &r), 0);
	ck_assert_int_eq(hit("ip:198.51.100.2", 0, 1, 1000, &r), 1);
	ck_assert_int_eq(hit("login:198.51.100.1", 0, 1, 1000, &r), 1); /* another namespace */
	ck_assert_int_eq(rl_hit(rl, "", 0, 0, 1, 1000, &r), 1);
	ck_assert_int_eq(rl_hit(rl, "a\0b", 3, 0, 1, 1000, &r), 1); /* keys are bytes */
	ck_assert_int_eq(rl_hit(rl, "a\0c", 3, 0, 1, 1000, &r), 1);
	ck_assert_int_eq(rl_hit(rl, "a\0c", 3, 0, 1, 1000, &r), 0);
	ck_assert_uint_eq(rl_used(rl), 6);
}
END_TEST

START_TEST(test_rl_zero_limit_and_clamped_arguments)
{
	struct rl_result r;

	ck_assert_int_eq(hit("z", 0, 0, 1000, &r), 0);
	ck_assert_uint_eq(r.remaining, 0);
	ck_assert_uint_eq(r.reset_ms, 1000);
	ck_assert_int_eq(hit("w", 7, 1, 0, &r), 1); /* window 0 counts as 1 ms */
	ck_assert_uint_eq(r.reset_ms, 1);
	ck_assert_int_eq(hit("w", 7, 1, 0, &r), 0);
	ck_assert_int_eq(hit("w", 8, 1, 0, &r), 1);
	ck_assert_int_eq(hit("big", 0, UINT32_MAX, UINT64_MAX, &r), 1);
	ck_assert_uint_eq(r.limit, RL_LIMIT_MAX);
	ck_assert_uint_eq(r.remaining, RL_LIMIT_MAX - 1);
	ck_assert_uint_eq(r.reset_ms, RL_WINDOW_MAX_MS);
	ck_assert_int_eq(rl_hit(NULL, "k", 1, 0, 1, 1, &r), -1);
	ck_assert_int_eq(rl_hit(rl, NULL, 1, 0, 1, 1, &r), -1);
	ck_assert_int_eq(rl_peek(NULL, "k", 1, 0, 1, &r), -1);
	ck_assert_int_eq(hit("nores", 0, 1, 1, NULL), 1);
}
END_TEST

START_TEST(test_rl_create_rounds_capacity_to_a_power_of_two)
{
	struct ratelimit *t;

	t = rl_create(0);
	ck_assert_ptr_nonnull(t);
	ck_assert_uint_eq(rl_capacity(t), RL_DEFAULT_CAPACITY);
	ck_assert_uint_ge(rl_bytes(t), RL_DEFAULT_CAPACITY * 16u);
	ck_assert_uint_eq(rl_used(t), 0);
	rl_destroy(t);
	t = rl_create(1000);
	ck_assert_uint_eq(rl_capacity(t), 1024);
	rl_destroy(t);
	t = rl_create(1);
	ck_assert_uint_eq(rl_capacity(t), RL_PROBE);
	rl_destroy(t);
	errno = 0;
	ck_assert_ptr_null(rl_create(RL_CAPACITY_MAX + 1));
	ck_assert_int_eq(errno, EINVAL);
	rl_destroy(NULL);
}
END_TEST

/* ---- processes -------------------------------------------------------- */

#define CHILDREN 4
#define ROUNDS 32

static void read_full(int fd, void *buf, size_t n)
{
	char *p = buf;
	ssize_t r;

	while (n > 0) {
		r = read(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		ck_assert_int_gt(r, 0);
		p += r;
		n -= (size_t)r;
	}
}

/* Fork CHILDREN processes that wait for a common start, then each make hits
 * hits per round on key "<prefix><round>" (the same keys, in the same order,
 * so first hits race); sum[round] receives the allowed hits over all children. */
static void run_children(const char *prefix, uint32_t limit, int hits, int sum[ROUNDS])
{
	int out[2], go[2], c, r, n, status;
	pid_t pids[CHILDREN];
	int counts[ROUNDS];
	char key[64], b;

	ck_assert_int_eq(pipe(out), 0);
	ck_assert_int_eq(pipe(go), 0);
	for (c = 0; c < CHILDREN; c++) {
		pids[c] = fork();
		ck_assert_int_ge(pids[c], 0);
		if (pids[c] == 0) {
			close(out[0]);
			close(go[1]);
			if (read(go[0], &b, 1) != 0) /* EOF: everyone starts */
				_exit(2);
			for (r = 0; r < ROUNDS; r++) {
				counts[r] = 0;
				n = snprintf(key, sizeof key, "%s%d", prefix, r);
				for (int h = 0; h < hits; h++)
					counts[r] += rl_hit(rl, key, (size_t)n, 5000, limit, MIN15, NULL) == 1;
			}
			_exit(write(out[1], counts, sizeof counts) == (ssize_t)sizeof counts ? 0 : 3);
		}
	}
	close(out[1]);
	close(go[0]);
	close(go[1]);
	memset(sum, 0, sizeof(int) * ROUNDS);
	for (c = 0; c < CHILDREN; c++) {
		read_full(out[0], counts, sizeof counts); /* each record < PIPE_BUF: written at once */
		for (r = 0; r < ROUNDS; r++)
			sum[r] += counts[r];
	}
	close(out[0]);
	for (c = 0; c < CHILDREN; c++) {
		ck_assert_int_eq(waitpid(pids[c], &status, 0), pids[c]);
		ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
}

START_TEST(test_rl_limit_is_shared_by_forked_processes)
{
	int sum[ROUNDS], r;
	struct rl_result res;

	run_children("ip:203.0.113.", 150, 100, sum);
	for (r = 0; r < ROUNDS; r++)
		ck_assert_int_eq(sum[r], 150);
	ck_assert_int_eq(rl_peek(rl, "ip:203.0.113.0", 14, 5000, 150, &res), 0);
	ck_assert_uint_eq(res.remaining, 0);
}
END_TEST

START_TEST(test_rl_concurrent_hits_are_neither_lost_nor_doubled)
{
	int sum[ROUNDS], r, n;
	char key[64];
	struct rl_result res;

	/* enough hits that the children overlap for a while even on one core */
	run_children("login:user", 50000, 4000, sum);
	for (r = 0; r < ROUNDS; r++) {
		ck_assert_int_eq(sum[r], CHILDREN * 4000);
		n = snprintf(key, sizeof key, "login:user%d", r);
		ck_assert_int_eq(rl_peek(rl, key, (size_t)n, 5000, 50000, &res), 1);
		ck_assert_uint_eq(res.remaining, 50000 - CHILDREN * 4000);
	}
	ck_assert_uint_eq(rl_used(rl), ROUNDS);
}
END_TEST

/* ---- eviction --------------------------------------------------------- */

START_TEST(test_rl_tiny_table_evicts_and_never_grows)
{
	struct ratelimit *big = rl;
	struct rl_result r;
	size_t bytes;
	char key[32];
	int i, n;

	rl = rl_create(8);
	ck_assert_uint_eq(rl_capacity(rl), 8);
	bytes = rl_bytes(rl);
	for (i = 0; i < 1000; i++) {
		n = snprintf(key, sizeof key, "ip:%d", i);
		ck_assert_int_eq(rl_hit(rl, key, (size_t)n, (uint64_t)i, 1, 60000, &r), 1);
		ck_assert_uint_le(rl_used(rl), 8);
	}
	ck_assert_uint_eq(rl_used(rl), 8);
	ck_assert_uint_eq(rl_bytes(rl), bytes);
	/* the newest clients are still tracked; the oldest were evicted */
	for (i = 992; i < 1000; i++) {
		n = snprintf(key, sizeof key, "ip:%d", i);
		ck_assert_int_eq(rl_peek(rl, key, (size_t)n, 1000, 1, &r), 0);
	}
	ck_assert_int_eq(hit("ip:0", 1000, 1, 60000, &r), 1);
	rl_destroy(rl);
	rl = big;
}
END_TEST

START_TEST(test_rl_eviction_prefers_ended_windows_then_the_soonest_ending)
{
	struct ratelimit *big = rl;
	struct rl_result r;
	char key[32];
	int i, n;

	rl = rl_create(8);
	ck_assert_int_eq(hit("vip", 0, 1, 100000, &r), 1);
	for (i = 0; i < 7; i++) {
		n = snprintf(key, sizeof key, "short:%d", i);
		ck_assert_int_eq(rl_hit(rl, key, (size_t)n, 0, 1, 1000, &r), 1);
	}
	/* the seven short windows have ended: they make room, vip stays */
	for (i = 0; i < 7; i++) {
		n = snprintf(key, sizeof key, "new:%d", i);
		ck_assert_int_eq(rl_hit(rl, key, (size_t)n, 2000, 1, (uint64_t)(10000 + i), &r), 1);
	}
	ck_assert_int_eq(hit("vip", 2000, 1, 100000, &r), 0);
	/* all live now: the window ending soonest (new:0, at 12000) goes first */
	ck_assert_int_eq(hit("late", 3000, 1, 50000, &r), 1);
	ck_assert_int_eq(hit("new:0", 3000, 1, 10000, &r), 1);
	ck_assert_int_eq(hit("vip", 3000, 1, 100000, &r), 0);
	ck_assert_int_eq(hit("late", 3000, 1, 50000, &r), 0);
	rl_destroy(rl);
	rl = big;
}
END_TEST

/* ---- reset and peek --------------------------------------------------- */

START_TEST(test_rl_peek_reads_without_counting)
{
	struct rl_result r;
	int i;

	ck_assert_int_eq(rl_peek(rl, "login:a@b.c", 11, 0, 3, &r), 1);
	ck_assert_uint_eq(r.remaining, 3);
	ck_assert_uint_eq(r.reset_ms, 0);
	for (i = 0; i < 10; i++)
		ck_assert_int_eq(rl_peek(rl, "login:a@b.c", 11, 0, 3, &r), 1);
	ck_assert_uint_eq(rl_used(rl), 0);
	ck_assert_int_eq(hit("login:a@b.c", 100, 3, 1000, &r), 1);
	ck_assert_int_eq(rl_peek(rl, "login:a@b.c", 11, 200, 3, &r), 1);
	ck_assert_uint_eq(r.remaining, 2);
	ck_assert_uint_eq(r.reset_ms, 900);
	ck_assert_int_eq(hit("login:a@b.c", 300, 3, 1000, &r), 1);
	ck_assert_int_eq(hit("login:a@b.c", 300, 3, 1000, &r), 1);
	ck_assert_int_eq(rl_peek(rl, "login:a@b.c", 11, 400, 3, &r), 0);
	ck_assert_uint_eq(r.remaining, 0);
	ck_assert_uint_eq(r.reset_ms, 700);
	ck_assert_int_eq(rl_peek(rl, "login:a@b.c", 11, 1100, 3, &r), 1); /* window over */
	ck_assert_int_eq(rl_peek(rl, "login:a@b.c", 11, 400, 0, &r), 0);
}
END_TEST

START_TEST(test_rl_reset_forgets_failed_logins)
{
	struct rl_result r;

	/* failed-login flow: peek before verifying, hit on failure, reset on success */
	ck_assert_int_eq(hit("login:x@y.z", 0, 2, MIN15, &r), 1);
	ck_assert_int_eq(hit("login:x@y.z", 0, 2, MIN15, &r), 1);
	ck_assert_int_eq(rl_peek(rl, "login:x@y.z", 11, 10, 2, &r), 0);
	rl_reset(rl, "login:x@y.z", 11);
	ck_assert_int_eq(rl_peek(rl, "login:x@y.z", 11, 10, 2, &r), 1);
	ck_assert_uint_eq(r.remaining, 2);
	ck_assert_int_eq(hit("login:x@y.z", 20, 2, MIN15, &r), 1);
	ck_assert_uint_eq(r.remaining, 1);
	ck_assert_uint_eq(r.reset_ms, MIN15); /* a fresh window */
	rl_reset(rl, "login:unknown", 13);
	rl_reset(rl, NULL, 1);
	ck_assert_uint_eq(rl_used(rl), 1);
}
END_TEST

/* ---- privacy ---------------------------------------------------------- */

START_TEST(test_rl_stores_hashes_not_keys)
{
	static const char *keys[] = {"login:alice.liddell@example.com", "ip:203.0.113.77", "ip:2001:db8::1"};
	struct rl_result r;
	size_t i;

	for (i = 0; i < 3; i++)
		ck_assert_int_eq(hit(keys[i], 0, 5, 1000, &r), 1);
	ck_assert_uint_eq(rl_used(rl), 3);
	for (i = 0; i < 3; i++) {
		ck_assert_ptr_null(memmem(rl, rl_bytes(rl), keys[i], strlen(keys[i])));
		ck_assert_ptr_null(memmem(rl, rl_bytes(rl), strchr(keys[i], ':') + 1, strlen(keys[i]) - 6));
	}
	ck_assert_ptr_null(memmem(rl, rl_bytes(rl), "alice", 5));
	ck_assert_ptr_null(memmem(rl, rl_bytes(rl), "203.0.113", 9));
}
END_TEST

/* ---- suite ------------------------------------------------------------ */

static void add(Suite *s, const char *name, const TTest *t)
{
	TCase *tc = tcase_create(name);

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60); /* the fork tests under valgrind */
	tcase_add_test(tc, t);
	suite_add_tcase(s, tc);
}

static Suite *ratelimit_suite(void)
{
	Suite *s = suite_create("ratelimit");

	add(s, "limit_headers", test_rl_allows_limit_hits_then_limits_with_headers);
	add(s, "window_reset", test_rl_window_resets_after_window_ms);
	add(s, "limited_not_counted", test_rl_limited_hits_are_not_counted);
	add(s, "wall_clock", test_rl_works_with_wall_clock_milliseconds);
	add(s, "independent_keys", test_rl_keys_are_independent);
	add(s, "arguments", test_rl_zero_limit_and_clamped_arguments);
	add(s, "capacity", test_rl_create_rounds_capacity_to_a_power_of_two);
	add(s, "shared_limit", test_rl_limit_is_shared_by_forked_processes);
	add(s, "no_lost_counts", test_rl_concurrent_hits_are_neither_lost_nor_doubled);
	add(s, "tiny_table", test_rl_tiny_table_evicts_and_never_grows);
	add(s, "eviction_order", test_rl_eviction_prefers_ended_windows_then_the_soonest_ending);
	add(s, "peek", test_rl_peek_reads_without_counting);
	add(s, "reset", test_rl_reset_forgets_failed_logins);
	add(s, "no_keys_stored", test_rl_stores_hashes_not_keys);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(ratelimit_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
