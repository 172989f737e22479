/* test_ws.c - unit tests for src/ws.c, the RFC 6455 connection layer.
 *
 * Each test serves one end of an AF_UNIX socketpair with a real ws_server on
 * a libevent base and plays the client on the other end with hand-built
 * frames. Loops are bounded (a few thousand non-blocking turns, or a 5 s
 * deadline for the timer tests), so a bug fails instead of hanging.
 */
#define _GNU_SOURCE
#include "../src/ws.h"

#include <check.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct event_base *base;
static struct ws_server *srv;
static int cli = -1;         /* the client's end */
static struct ws_conn *conn; /* the server's connection */
static char got[70000];      /* last text message the server received */
static size_t got_len;
static int texts, closes, drained;
static size_t last_count;
static int echo;                    /* on_text echoes the message back */
static int no_uring;                /* this run's ws_limits.no_io_uring */
static unsigned char rbuf[1 << 20]; /* bytes the client has read, not yet parsed */
static size_t rlen;

static void on_text(struct ws_conn *c, const char *msg, size_t len)
{
	memcpy(got, msg, len < sizeof(got) ? len : sizeof(got));
	got_len = len;
	texts++;
	if (echo)
		ws_send_text(c, msg, len);
}

static void on_close(struct ws_conn *c)
{
	(void)c;
	closes++;
}

static void on_count(size_t n, void *ud)
{
	(void)ud;
	last_count = n;
}

static void on_empty(void *ud)
{
	(void)ud;
	drained++;
}

static void start(const struct ws_limits *lim)
{
	int sv[2];
	struct ws_handlers h = {.on_text = on_text, .on_close = on_close, .on_count = on_count};
	struct ws_limits l = lim ? *lim : (struct ws_limits){0};
	l.no_io_uring = no_uring;
	base = event_base_new();
	ck_assert_ptr_nonnull(base);
	srv = ws_server_new(base, &l, &h);
	ck_assert_ptr_nonnull(srv);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
	cli = sv[1];
	conn = ws_conn_new(srv, sv[0], 16);
	ck_assert_ptr_nonnull(conn);
	ck_assert_int_eq(ws_conn_start(conn, NULL, 0), 0);
	got_len = 0;
	rlen = 0;
	texts = closes = drained = echo = 0;
}

static void setup(void)
{
	start(NULL);
}

static void teardown(void)
{
	ws_server_free(srv);
	srv = NULL;
	if (cli >= 0)
		close(cli);
	cli = -1;
	event_base_free(base);
	base = NULL;
}

static void turn(int n)
{
	for (int i = 0; i < n; i++)
		event_base_loop(base, EVLOOP_NONBLOCK);
}

/* Masked client frame. */
static void send_frame(int opcode, const void *payload, size_t len, int masked, int fin)
{
	unsigned char *f = malloc(len + 14);
	size_t o = 0;
	f[o++] = (unsigned char)((fin ? 0x80 : 0) | opcode);
	unsigned char m = masked ? 0x80 : 0;
	if (len < 126) {
		f[o++] = (unsigned char)(m | len);
	} else if (len < 65536) {
		f[o++] = m | 126;
		f[o++] = (unsigned char)(len >> 8);
		f[o++] = (unsigned char)len;
	} else {
		f[o++] = m | 127;
		for (int i = 7; i >= 0; i--)
			f[o++] = (unsigned char)((uint64_t)len >> (8 * i));
	}
	unsigned char key[4] = {0x12, 0x34, 0x56, 0x78};
	if (masked) {
		memcpy(f + o, key, 4);
		o += 4;
	}
	for (size_t i = 0; i < len; i++)
		f[o + i] = ((const unsigned char *)payload)[i] ^ (masked ? key[i % 4] : 0);
	size_t total = o + len, off = 0;
	for (int tries = 0; off < total && tries < 100000; tries++) {
		ssize_t w = write(cli, f + off, total - off);
		if (w > 0)
			off += (size_t)w;
		else
			turn(1); /* let the server read */
	}
	ck_assert_uint_eq(off, total);
	free(f);
}

/* Read one server frame; returns its opcode (-1: none within the budget, -2: EOF). */
static int recv_frame(unsigned char *payload, size_t *plen)
{
	for (int tries = 0; tries < 4000; tries++) {
		if (rlen >= 2) {
			size_t n = rbuf[1] & 0x7f, o = 2;
			ck_assert_msg(!(rbuf[1] & 0x80), "server frames are never masked");
			if (n == 126 && rlen >= 4) {
				n = (size_t)rbuf[2] << 8 | rbuf[3];
				o = 4;
			} else if (n == 127 && rlen >= 10) {
				n = 0;
				for (int i = 0; i < 8; i++)
					n = n << 8 | rbuf[2 + i];
				o = 10;
			} else if (n >= 126) {
				n = SIZE_MAX;
			}
			if (n != SIZE_MAX && rlen >= o + n) {
				int op = rbuf[0] & 0x0f;
				if (payload)
					memcpy(payload, rbuf + o, n);
				if (plen)
					*plen = n;
				memmove(rbuf, rbuf + o + n, rlen - o - n);
				rlen -= o + n;
				return op;
			}
		}
		ssize_t r = read(cli, rbuf + rlen, sizeof(rbuf) - rlen);
		if (r > 0) {
			rlen += (size_t)r;
			continue;
		}
		if (r == 0)
			return -2;
		turn(1);
	}
	return -1;
}

/* Read frames until a close; returns its status code (-1: none). */
static int close_code(void)
{
	unsigned char p[1 << 16];
	size_t n;
	for (int i = 0; i < 100000; i++) {
		int op = recv_frame(p, &n);
		if (op < 0)
			return -1;
		if (op == 0x8)
			return n >= 2 ? p[0] << 8 | p[1] : 1005;
	}
	return -1;
}

START_TEST(test_ws_accept_key_matches_rfc_6455_example)
{
	char acc[WS_ACCEPT_LEN + 1];
	ck_assert_int_eq(ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, acc), 0);
	ck_assert_str_eq(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}
END_TEST

START_TEST(test_ws_frames_use_the_shortest_length_encoding)
{
	static char payload[70000];
	const size_t lens[] = {0, 125, 126, 65535, 65536};
	const size_t hdrs[] = {2, 2, 4, 4, 10};
	for (size_t i = 0; i < 5; i++) {
		struct ws_frame *f = ws_frame_text(payload, lens[i]);
		ck_assert_ptr_nonnull(f);
		ck_assert_uint_eq(f->len, lens[i] + hdrs[i]);
		ck_assert_uint_eq(f->data[0], 0x81);
		ws_frame_unref(f);
	}
}
END_TEST

START_TEST(test_ws_text_message_reaches_the_handler_and_replies_are_unmasked)
{
	echo = 1;
	send_frame(0x1, "{\"event\":\"x\"}", 13, 1, 1);
	unsigned char p[64];
	size_t n;
	ck_assert_int_eq(recv_frame(p, &n), 0x1);
	ck_assert_uint_eq(n, 13);
	ck_assert_int_eq(memcmp(p, "{\"event\":\"x\"}", 13), 0);
	ck_assert_int_eq(texts, 1);
	ck_assert_uint_eq(last_count, 1);
}
END_TEST

START_TEST(test_ws_fragments_are_joined_and_pings_between_them_answered)
{
	send_frame(0x1, "hel", 3, 1, 0);
	send_frame(0x9, "pp", 2, 1, 1);
	send_frame(0x0, "lo", 2, 1, 1);
	unsigned char p[16];
	size_t n;
	ck_assert_int_eq(recv_frame(p, &n), 0xA);
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(memcmp(p, "pp", 2), 0);
	ck_assert_int_eq(texts, 1);
	ck_assert_uint_eq(got_len, 5);
	ck_assert_int_eq(memcmp(got, "hello", 5), 0);
}
END_TEST

START_TEST(test_ws_unmasked_client_frame_closes_with_1002)
{
	send_frame(0x1, "hi", 2, 0, 1);
	ck_assert_int_eq(close_code(), 1002);
	ck_assert_int_eq(texts, 0);
}
END_TEST

START_TEST(test_ws_oversized_control_frame_closes_with_1002)
{
	static char p[126];
	send_frame(0x9, p, sizeof(p), 1, 1);
	ck_assert_int_eq(close_code(), 1002);
}
END_TEST

START_TEST(test_ws_binary_message_closes_with_1003)
{
	send_frame(0x2, "\x00\x01", 2, 1, 1);
	ck_assert_int_eq(close_code(), 1003);
}
END_TEST

START_TEST(test_ws_invalid_utf8_closes_with_1007)
{
	send_frame(0x1, "a\xc0\xaf", 3, 1, 1); /* overlong '/' */
	ck_assert_int_eq(close_code(), 1007);
	ck_assert_int_eq(texts, 0);
}
END_TEST

START_TEST(test_ws_message_over_the_limit_closes_with_1009)
{
	teardown();
	struct ws_limits lim = {.max_message = 1024};
	start(&lim);
	static char p[1025];
	memset(p, 'a', sizeof(p));
	send_frame(0x1, p, 1024, 1, 1);
	turn(5);
	ck_assert_int_eq(texts, 1);
	send_frame(0x1, p, 1025, 1, 1);
	ck_assert_int_eq(close_code(), 1009);
	ck_assert_int_eq(texts, 1);
}
END_TEST

START_TEST(test_ws_slow_reader_is_closed_with_1013_and_its_backlog_dropped)
{
	teardown();
	struct ws_limits lim = {.max_backlog = 8192, .sndbuf = 4096};
	start(&lim);
	static char p[1000];
	memset(p, 'b', sizeof(p));
	struct ws_frame *f = ws_frame_text(p, sizeof(p));
	int refused = 0;
	for (int i = 0; i < 100000 && !refused; i++) {
		refused = ws_send_frame(conn, f) < 0;
		if (i % 8 == 0)
			turn(1);
	}
	ws_frame_unref(f);
	ck_assert_int_eq(refused, 1);
	ck_assert_uint_eq(ws_server_stats(srv)->closed_backlog, 1);
	ck_assert_int_eq(ws_conn_closing(conn), 1);
	ck_assert_int_eq(close_code(), 1013);
}
END_TEST

START_TEST(test_ws_client_close_is_echoed_and_the_socket_closed)
{
	send_frame(0x8,
	           "\x03\xe8"
	           "bye",
	           5, 1, 1);
	ck_assert_int_eq(close_code(), 1000);
	ck_assert_int_eq(recv_frame(NULL, NULL), -2); /* server closed first */
	ck_assert_int_eq(closes, 1);
	ck_assert_uint_eq(ws_server_count(srv), 0);
	conn = NULL;
}
END_TEST

START_TEST(test_ws_drain_sends_1001_and_reports_empty_after_the_handshake)
{
	ws_server_drain(srv, on_empty, NULL);
	ck_assert_int_eq(close_code(), 1001);
	ck_assert_int_eq(drained, 0);
	send_frame(0x8, "\x03\xe9", 2, 1, 1);
	for (int i = 0; i < 1000 && !drained; i++)
		turn(1);
	ck_assert_int_eq(drained, 1);
	ck_assert_int_eq(closes, 1);
	ck_assert_int_eq(ws_server_draining(srv), 1);
}
END_TEST

START_TEST(test_ws_idle_socket_is_pinged_then_closed_when_silent)
{
	teardown();
	struct ws_limits lim = {.ping_idle_ms = 100, .idle_timeout_ms = 300, .close_timeout_ms = 200};
	start(&lim);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int ping = 0, code = -1;
	unsigned char p[256];
	size_t n;
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &t1);
		ck_assert_msg(t1.tv_sec - t0.tv_sec < 5, "no ping/close within 5 s");
		event_base_loop(base, EVLOOP_ONCE);
		ssize_t r = read(cli, rbuf + rlen, sizeof(rbuf) - rlen);
		if (r > 0)
			rlen += (size_t)r;
		while (rlen >= 2) {
			int op = recv_frame(p, &n);
			if (op == 0x9)
				ping = 1;
			if (op == 0x8) {
				code = p[0] << 8 | p[1];
				break;
			}
			if (op < 0)
				break;
		}
		if (code >= 0)
			break;
	}
	ck_assert_int_eq(ping, 1);
	ck_assert_int_eq(code, 1001);
	/* The client never answers: the close handshake times out. */
	for (int i = 0; i < 200 && closes == 0; i++)
		event_base_loop(base, EVLOOP_ONCE);
	ck_assert_int_eq(closes, 1);
}
END_TEST

START_TEST(test_ws_leftover_bytes_are_processed_before_the_socket)
{
	teardown();
	struct ws_handlers h = {.on_text = on_text, .on_close = on_close};
	base = event_base_new();
	srv = ws_server_new(base, NULL, &h);
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
	cli = sv[1];
	conn = ws_conn_new(srv, sv[0], 0);
	/* A masked "ab" text frame that arrived with the handshake. */
	unsigned char f[] = {0x81, 0x82, 1, 2, 3, 4, 'a' ^ 1, 'b' ^ 2};
	texts = 0;
	ck_assert_int_eq(ws_conn_start(conn, f, sizeof(f)), 0);
	ck_assert_int_eq(texts, 1);
	ck_assert_uint_eq(got_len, 2);
}
END_TEST

/* One loop iteration's writes to many sockets (more than one io_uring
 * batch, more frames per socket than one request gathers): every live
 * socket gets every frame once and in order; a socket whose peer is gone
 * in the middle of the batch is finished without disturbing the others. */
START_TEST(test_ws_broadcast_reaches_every_socket_in_order_past_a_dead_peer)
{
	struct rlimit rl;
	ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_cur < 2048 && rl.rlim_max > rl.rlim_cur) {
		rl.rlim_cur = rl.rlim_max < 2048 ? rl.rlim_max : 2048;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	int n = rl.rlim_cur >= 2048 ? 600 : (int)(rl.rlim_cur - 64) / 2;
	if (n < 600)
		fprintf(stderr, "test_ws: only %d sockets (RLIMIT_NOFILE %llu): one io_uring batch holds 512\n", n,
		        (unsigned long long)rl.rlim_cur);
	int *cl = calloc((size_t)n, sizeof(*cl));
	struct ws_conn **sc = calloc((size_t)n, sizeof(*sc));
	ck_assert_ptr_nonnull(cl);
	ck_assert_ptr_nonnull(sc);
	for (int i = 0; i < n; i++) {
		int sv[2];
		ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
		sc[i] = ws_conn_new(srv, sv[0], 0);
		ck_assert_ptr_nonnull(sc[i]);
		ck_assert_int_eq(ws_conn_start(sc[i], NULL, 0), 0);
		cl[i] = sv[1];
	}
	int dead = n / 2;
	close(cl[dead]);
	cl[dead] = -1;
	enum { FRAMES = 12 };
	for (int m = 0; m < FRAMES; m++) {
		char t[4];
		snprintf(t, sizeof(t), "m%02d", m);
		struct ws_frame *f = ws_frame_text(t, 3);
		for (int i = 0; i < n; i++)
			ck_assert_int_eq(ws_send_frame(sc[i], f), 0);
		ws_frame_unref(f);
	}
	turn(4);
	for (int i = 0; i < n; i++) {
		if (i == dead)
			continue;
		unsigned char b[256];
		size_t have = 0;
		for (int tries = 0; tries < 100 && have < FRAMES * 5; tries++) {
			ssize_t r = read(cl[i], b + have, sizeof(b) - have);
			if (r > 0)
				have += (size_t)r;
			else
				turn(1);
		}
		ck_assert_msg(have == FRAMES * 5, "socket %d got %zu bytes", i, have);
		for (int m = 0; m < FRAMES; m++) {
			char t[4];
			snprintf(t, sizeof(t), "m%02d", m);
			ck_assert_int_eq(b[m * 5], 0x81);
			ck_assert_int_eq(b[m * 5 + 1], 3);
			ck_assert_msg(memcmp(b + m * 5 + 2, t, 3) == 0, "socket %d frame %d out of order", i, m);
		}
		close(cl[i]);
	}
	ck_assert_int_eq(closes, 1); /* the dead peer, finished by its failed write */
	if (no_uring)
		ck_assert_uint_eq(ws_server_stats(srv)->batched_writes, 0);
	else if (ws_server_batched(srv))
		ck_assert_uint_ge(ws_server_stats(srv)->batched_writes, (uint64_t)n);
	else
		fprintf(stderr, "test_ws: io_uring is not available here: the batched run wrote with sendmsg\n");
	free(cl);
	free(sc);
}
END_TEST

static Suite *ws_suite(void)
{
	Suite *s = suite_create("ws");
	struct {
		const char *name;
		const TTest *test;
	} cases[] = {
	    {"accept", test_ws_accept_key_matches_rfc_6455_example},
	    {"frames", test_ws_frames_use_the_shortest_length_encoding},
	    {"text", test_ws_text_message_reaches_the_handler_and_replies_are_unmasked},
	    {"fragments", test_ws_fragments_are_joined_and_pings_between_them_answered},
	    {"unmasked", test_ws_unmasked_client_frame_closes_with_1002},
	    {"control_too_long", test_ws_oversized_control_frame_closes_with_1002},
	    {"binary", test_ws_binary_message_closes_with_1003},
	    {"utf8", test_ws_invalid_utf8_closes_with_1007},
	    {"too_big", test_ws_message_over_the_limit_closes_with_1009},
	    {"backlog", test_ws_slow_reader_is_closed_with_1013_and_its_backlog_dropped},
	    {"client_close", test_ws_client_close_is_echoed_and_the_socket_closed},
	    {"drain", test_ws_drain_sends_1001_and_reports_empty_after_the_handshake},
	    {"idle", test_ws_idle_socket_is_pinged_then_closed_when_silent},
	    {"leftover", test_ws_leftover_bytes_are_processed_before_the_socket},
	    {"broadcast", test_ws_broadcast_reaches_every_socket_in_order_past_a_dead_peer},
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

/* The suite runs twice: writes batched through io_uring (where the kernel
 * allows it), then one sendmsg() per socket. */
int main(void)
{
	int failed = 0;
	for (no_uring = 0; no_uring <= 1; no_uring++) {
		fprintf(stderr, "test_ws: writes %s\n",
		        no_uring ? "with one sendmsg per socket (io_uring off)" : "batched through io_uring");
		SRunner *sr = srunner_create(ws_suite());
		srunner_run_all(sr, CK_NORMAL);
		failed += srunner_ntests_failed(sr);
		srunner_free(sr);
	}
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
