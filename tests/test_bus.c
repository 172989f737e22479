/* test_bus.c - unit tests for src/bus.c, the cross-worker broadcast bus.
 *
 * The hub and several worker ends live in one process on one libevent base
 * (the socketpairs are real; only the fork is missing), so a test can
 * publish from "worker" A and watch what B and C deliver. Loops are bounded
 * by a number of non-blocking turns.
 */
#define _GNU_SOURCE
#include "../src/bus.h"

#include <check.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NPEERS 3
#define MAXREC 20000

struct peer {
	struct bus *bus;
	int n;
	char rec[64][16]; /* the first records delivered */
};

static struct event_base *base;
static struct bus_hub *hub;
static struct peer peers[NPEERS];
static int in_publish; /* set while bus_publish runs (delivery must not happen inside) */
static int delivered_inside;

static void deliver(const unsigned char *msg, size_t len, void *ud)
{
	struct peer *p = ud;
	if (in_publish)
		delivered_inside = 1;
	if (p->n < 64 && len < 16) {
		memcpy(p->rec[p->n], msg, len);
		p->rec[p->n][len] = '\0';
	}
	p->n++;
}

static void setup(void)
{
	base = event_base_new();
	ck_assert_ptr_nonnull(base);
	hub = bus_hub_new(base, 8);
	ck_assert_ptr_nonnull(hub);
	memset(peers, 0, sizeof(peers));
	for (int i = 0; i < NPEERS; i++) {
		int fd = -1;
		ck_assert_int_eq(bus_hub_attach(hub, i, &fd), 0);
		peers[i].bus = bus_open(base, fd, deliver, &peers[i]);
		ck_assert_ptr_nonnull(peers[i].bus);
	}
	in_publish = delivered_inside = 0;
}

static void teardown(void)
{
	for (int i = 0; i < NPEERS; i++)
		bus_close(peers[i].bus);
	bus_hub_free(hub);
	event_base_free(base);
}

static void turn_until(int *counter, int want)
{
	for (int i = 0; i < 100000 && *counter < want; i++)
		event_base_loop(base, EVLOOP_NONBLOCK);
}

static int publish(struct bus *b, const char *s)
{
	in_publish = 1;
	int rc = bus_publish(b, s, strlen(s));
	in_publish = 0;
	return rc;
}

START_TEST(test_bus_every_worker_gets_every_record_in_one_order)
{
	ck_assert_int_eq(publish(peers[0].bus, "a1"), 0);
	ck_assert_int_eq(publish(peers[1].bus, "b1"), 0);
	ck_assert_int_eq(publish(peers[0].bus, "a2"), 0);
	ck_assert_int_eq(publish(peers[2].bus, "c1"), 0);
	for (int i = 0; i < NPEERS; i++)
		turn_until(&peers[i].n, 4);
	for (int i = 0; i < NPEERS; i++) {
		ck_assert_int_eq(peers[i].n, 4);
		for (int k = 0; k < 4; k++)
			ck_assert_str_eq(peers[i].rec[k], peers[0].rec[k]);
	}
	/* One publisher's records keep their order. */
	int a1 = -1, a2 = -1;
	for (int k = 0; k < 4; k++) {
		if (!strcmp(peers[0].rec[k], "a1"))
			a1 = k;
		if (!strcmp(peers[0].rec[k], "a2"))
			a2 = k;
	}
	ck_assert_int_lt(a1, a2);
	ck_assert_int_eq(delivered_inside, 0);
	ck_assert_uint_eq(bus_hub_stats(hub)->received, 4);
	ck_assert_uint_eq(bus_hub_stats(hub)->forwarded, 12);
}
END_TEST

START_TEST(test_bus_a_worker_that_never_reads_loses_records_but_not_the_others)
{
	int fd = -1;
	ck_assert_int_eq(bus_hub_attach(hub, 5, &fd), 0); /* attached, never read */
	const int n = BUS_PEER_QUEUE_MSGS + 40000;        /* more than the kernel and the hub queue hold */
	char msg[16];
	int sent = 0;
	for (int i = 0; i < n; i++) {
		snprintf(msg, sizeof(msg), "m%d", i);
		if (publish(peers[0].bus, msg) == 0)
			sent++;
		if (i % 64 == 0)
			event_base_loop(base, EVLOOP_NONBLOCK);
	}
	ck_assert_int_eq(sent, n);
	for (int i = 0; i < NPEERS; i++)
		turn_until(&peers[i].n, n);
	for (int i = 0; i < NPEERS; i++)
		ck_assert_int_eq(peers[i].n, n);
	ck_assert_uint_gt(bus_hub_stats(hub)->dropped, 0);
	close(fd);
	bus_hub_detach(hub, 5);
}
END_TEST

START_TEST(test_bus_records_sent_before_a_worker_exits_are_still_forwarded)
{
	ck_assert_int_eq(publish(peers[2].bus, "last"), 0);
	bus_close(peers[2].bus); /* the worker dies before the hub read it */
	peers[2].bus = NULL;
	bus_hub_detach(hub, 2);
	turn_until(&peers[0].n, 1);
	turn_until(&peers[1].n, 1);
	ck_assert_int_eq(peers[0].n, 1);
	ck_assert_str_eq(peers[0].rec[0], "last");
	ck_assert_int_eq(peers[1].n, 1);
	/* A fresh pair for the slot works like the first. */
	int fd = -1;
	ck_assert_int_eq(bus_hub_attach(hub, 2, &fd), 0);
	peers[2].bus = bus_open(base, fd, deliver, &peers[2]);
	peers[2].n = 0;
	ck_assert_int_eq(publish(peers[0].bus, "again"), 0);
	turn_until(&peers[2].n, 1);
	ck_assert_int_eq(peers[2].n, 1);
	ck_assert_str_eq(peers[2].rec[0], "again");
}
END_TEST

START_TEST(test_bus_without_a_hub_loops_back_after_publish_returns)
{
	struct peer solo;
	memset(&solo, 0, sizeof(solo));
	struct bus *b = bus_open(base, -1, deliver, &solo);
	ck_assert_ptr_nonnull(b);
	ck_assert_int_eq(publish(b, "x"), 0);
	ck_assert_int_eq(publish(b, "y"), 0);
	ck_assert_int_eq(solo.n, 0);
	turn_until(&solo.n, 2);
	ck_assert_int_eq(solo.n, 2);
	ck_assert_str_eq(solo.rec[0], "x");
	ck_assert_str_eq(solo.rec[1], "y");
	ck_assert_int_eq(delivered_inside, 0);
	bus_close(b);
}
END_TEST

START_TEST(test_bus_refuses_empty_and_oversized_records)
{
	static char big[BUS_MAX_MSG + 1];
	ck_assert_int_eq(bus_publish(peers[0].bus, big, 0), -1);
	ck_assert_int_eq(bus_publish(peers[0].bus, big, sizeof(big)), -1);
	ck_assert_int_eq(bus_publish(peers[0].bus, big, BUS_MAX_MSG), 0);
	turn_until(&peers[1].n, 1);
	ck_assert_int_eq(peers[1].n, 1);
	ck_assert_uint_eq(bus_stats(peers[0].bus)->dropped, 2);
}
END_TEST

static Suite *bus_suite(void)
{
	Suite *s = suite_create("bus");
	struct {
		const char *name;
		const TTest *test;
	} cases[] = {
	    {"order", test_bus_every_worker_gets_every_record_in_one_order},
	    {"slow_peer", test_bus_a_worker_that_never_reads_loses_records_but_not_the_others},
	    {"exit", test_bus_records_sent_before_a_worker_exits_are_still_forwarded},
	    {"loopback", test_bus_without_a_hub_loops_back_after_publish_returns},
	    {"sizes", test_bus_refuses_empty_and_oversized_records},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		TCase *tc = tcase_create(cases[i].name);
		tcase_add_checked_fixture(tc, setup, teardown);
		tcase_set_timeout(tc, 30);
		tcase_add_test(tc, cases[i].test);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(bus_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
