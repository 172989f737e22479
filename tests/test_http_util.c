/* test_http_util.c - the HTTP core: response helpers (gzip threshold and
 * encoding, Accept-Encoding parsing, UUIDs, Date caching, URL decoding),
 * and an in-process server on a loopback socket for output backpressure
 * and draining. */
#include "app.h"
#include "http.h"

#include <check.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

START_TEST(test_accept_encoding_parsing_honours_q_values)
{
	ck_assert(http_accepts_gzip("gzip", 4));
	ck_assert(http_accepts_gzip("deflate, gzip;q=0.5", 19));
	ck_assert(http_accepts_gzip("br, *", 5));
	ck_assert(!http_accepts_gzip("gzip;q=0", 8));
	ck_assert(!http_accepts_gzip("deflate, br", 11));
	ck_assert(!http_accepts_gzip("xgzip", 5));
	ck_assert(!http_accepts_gzip("", 0));
}
END_TEST

START_TEST(test_gzip_output_inflates_to_the_input)
{
	struct evbuffer *src = evbuffer_new(), *dst = evbuffer_new();
	char text[5000];
	for (size_t i = 0; i < sizeof(text); i++)
		text[i] = (char)('a' + i % 7);
	evbuffer_add(src, text, sizeof(text));
	ck_assert_int_eq(http_gzip(src, dst), 0);
	size_t zl = evbuffer_get_length(dst);
	ck_assert(zl > 10 && zl < sizeof(text));
	unsigned char *z = evbuffer_pullup(dst, -1);
	ck_assert(z[0] == 0x1f && z[1] == 0x8b);
	char out[6000];
	z_stream zs;
	memset(&zs, 0, sizeof(zs));
	ck_assert_int_eq(inflateInit2(&zs, 31), Z_OK);
	zs.next_in = z;
	zs.avail_in = (uInt)zl;
	zs.next_out = (unsigned char *)out;
	zs.avail_out = sizeof(out);
	ck_assert_int_eq(inflate(&zs, Z_FINISH), Z_STREAM_END);
	ck_assert_int_eq((int)zs.total_out, (int)sizeof(text));
	ck_assert(memcmp(out, text, sizeof(text)) == 0);
	inflateEnd(&zs);
	evbuffer_free(src);
	evbuffer_free(dst);
}
END_TEST

START_TEST(test_gzip_threshold_is_one_kib)
{
	ck_assert_int_eq(HTTP_GZIP_MIN, 1024);
}
END_TEST

START_TEST(test_uuid4_has_version_and_variant)
{
	char a[37], b[37];
	http_uuid4(a);
	http_uuid4(b);
	ck_assert_int_eq((int)strlen(a), 36);
	ck_assert(a[8] == '-' && a[13] == '-' && a[18] == '-' && a[23] == '-');
	ck_assert(a[14] == '4');
	ck_assert(strchr("89ab", a[19]) != NULL);
	ck_assert_str_ne(a, b);
}
END_TEST

START_TEST(test_date_header_is_rfc7231_format)
{
	size_t len;
	const char *d = http_date_header(&len);
	ck_assert_int_eq((int)len, 37);
	ck_assert(strncmp(d, "Date: ", 6) == 0);
	ck_assert(strncmp(d + len - 6, " GMT\r\n", 6) == 0);
}
END_TEST

START_TEST(test_url_decoding_rejects_bad_escapes)
{
	char out[64];
	ck_assert_int_eq(app_url_decode("a%20b+c", 7, out, sizeof(out), 1), 5);
	ck_assert_str_eq(out, "a b c");
	ck_assert_int_eq(app_url_decode("a+b", 3, out, sizeof(out), 0), 3);
	ck_assert_str_eq(out, "a+b");
	ck_assert_int_eq(app_url_decode("%zz", 3, out, sizeof(out), 1), -1);
	ck_assert_int_eq(app_url_decode("%2", 2, out, sizeof(out), 1), -1);
	ck_assert_int_eq(app_url_decode("%", 1, out, sizeof(out), 1), -1);
	ck_assert_int_eq(app_url_decode("a%00", 4, out, sizeof(out), 1), -1);
	ck_assert_int_eq(app_url_decode("a\0b", 3, out, sizeof(out), 1), -1); /* a raw NUL too */
	ck_assert_int_eq(app_url_decode("%C3%A9", 6, out, sizeof(out), 1), 2);
	ck_assert_int_eq(app_url_decode("abcdef", 6, out, 4, 1), -1);
}
END_TEST

/* ------------------------------------------------- in-process server */

#define BIG_BODY (64 * 1024)

struct srv {
	struct event_base *base;
	struct http_server *http;
	int lfd, port;
	int drained;
	size_t body_size; /* bytes of 'x' per response */
	int refuse;       /* on_headers refuses every body */
	int skipped;      /* requests dispatched with body_skipped */
	size_t bodies;    /* body bytes the handler saw */
};

static int on_headers(struct http_request *req, void *ud)
{
	struct srv *t = ud;
	(void)req;
	return t->refuse ? HTTP_HEADERS_SKIP_BODY : HTTP_HEADERS_READ_BODY;
}

static void on_request(struct http_request *req, void *ud)
{
	struct srv *t = ud;
	t->skipped += req->body_skipped;
	t->bodies += req->body_len;
	if (req->body_skipped) {
		http_send_error(req, 401, "UNAUTHORIZED", "access token required");
		return;
	}
	struct evbuffer *b = http_body(req);
	ck_assert_ptr_nonnull(b);
	char chunk[4096];
	memset(chunk, 'x', sizeof(chunk));
	for (size_t left = t->body_size; left > 0;) {
		size_t n = left < sizeof(chunk) ? left : sizeof(chunk);
		evbuffer_add(b, chunk, n);
		left -= n;
	}
	req->res.content_type = "text/plain";
	http_send(req);
}

static void srv_start_timeouts(struct srv *t, size_t body_size, int64_t keepalive_ms, int64_t send_timeout_ms)
{
	memset(t, 0, sizeof(*t));
	t->body_size = body_size;
	t->base = event_base_new();
	ck_assert_ptr_nonnull(t->base);
	t->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(t->lfd, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	ck_assert_int_eq(bind(t->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(t->lfd, 16), 0);
	socklen_t sl = sizeof(sa);
	ck_assert_int_eq(getsockname(t->lfd, (struct sockaddr *)&sa, &sl), 0);
	t->port = ntohs(sa.sin_port);
	fcntl(t->lfd, F_SETFL, fcntl(t->lfd, F_GETFL) | O_NONBLOCK);
	struct http_server_opts o = {
	    .body_limit = 1 << 20,
	    .max_connections = 16,
	    .keepalive_timeout_ms = keepalive_ms,
	    .body_timeout_ms = send_timeout_ms,
	    .drain_timeout_ms = 10000,
	    .on_headers = on_headers,
	    .on_request = on_request,
	    .ud = t,
	};
	t->http = http_server_new(t->base, t->lfd, &o);
	ck_assert_ptr_nonnull(t->http);
}

static void srv_start(struct srv *t, size_t body_size, int64_t keepalive_ms)
{
	srv_start_timeouts(t, body_size, keepalive_ms, 10000);
}

static void srv_stop(struct srv *t)
{
	http_server_free(t->http);
	event_base_free(t->base);
	close(t->lfd);
}

static int client_connect(const struct srv *t, int rcvbuf)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(fd, 0);
	if (rcvbuf)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	struct sockaddr_in sa = {
	    .sin_family = AF_INET, .sin_port = htons((uint16_t)t->port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	return fd;
}

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Turn the server's loop for about ms milliseconds. */
static void spin(struct srv *t, int ms)
{
	uint64_t end = mono_ms() + (uint64_t)ms;
	while (mono_ms() < end) {
		event_base_loop(t->base, EVLOOP_NONBLOCK);
		usleep(1000);
	}
}

/* Read what the client has, non-blocking, into acc. Returns 0 at EOF,
 * -1 on an error (a reset), 1 otherwise. */
static int client_read(int fd, struct evbuffer *acc)
{
	char buf[65536];
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n > 0) {
			evbuffer_add(acc, buf, (size_t)n);
			continue;
		}
		if (n == 0)
			return 0;
		if (errno == EINTR)
			continue;
		return errno == EAGAIN || errno == EWOULDBLOCK ? 1 : -1;
	}
}

/* Count complete responses at the front of acc (removing them); *closes
 * counts those that said Connection: close. */
static int take_responses(struct evbuffer *acc, int *closes)
{
	int n = 0;
	for (;;) {
		struct evbuffer_ptr end = evbuffer_search(acc, "\r\n\r\n", 4, NULL);
		if (end.pos < 0)
			return n;
		size_t hl = (size_t)end.pos + 4;
		char *head = malloc(hl + 1);
		ck_assert_ptr_nonnull(head);
		evbuffer_copyout(acc, head, hl);
		head[hl] = '\0';
		const char *cl = strstr(head, "Content-Length: ");
		ck_assert_ptr_nonnull(cl);
		size_t body = strtoul(cl + 16, NULL, 10);
		if (closes && strstr(head, "Connection: close"))
			(*closes)++;
		free(head);
		if (evbuffer_get_length(acc) < hl + body)
			return n;
		evbuffer_drain(acc, hl + body);
		n++;
	}
}

static const char GET[] = "GET /x HTTP/1.1\r\nHost: t\r\n\r\n";

START_TEST(test_a_client_that_does_not_read_stops_being_parsed)
{
	struct srv t;
	srv_start(&t, BIG_BODY, 5000);
	int fd = client_connect(&t, 4096);
	enum { N = 400 }; /* 25 MiB of answers: more than any socket buffers */
	size_t sent = 0;
	for (int i = 0; i < N; i++) {
		ssize_t w = send(fd, GET, sizeof(GET) - 1, MSG_NOSIGNAL);
		ck_assert_int_eq(w, (ssize_t)(sizeof(GET) - 1));
		sent++;
	}
	spin(&t, 400);
	const struct http_stats *st = http_server_stats(t.http);
	/* The connection stopped at the output bound: not all requests were
	 * parsed, and the server holds them in its socket, not in memory. */
	ck_assert_uint_ge(st->paused, 1);
	ck_assert_uint_lt(st->requests, N);
	uint64_t served_while_stalled = st->requests;
	spin(&t, 200);
	ck_assert_uint_eq(st->requests, served_while_stalled);
	/* The client drains: every answer arrives, in order and complete. */
	struct evbuffer *acc = evbuffer_new();
	int got = 0;
	uint64_t deadline = mono_ms() + 20000;
	while (got < N && mono_ms() < deadline) {
		event_base_loop(t.base, EVLOOP_NONBLOCK);
		ck_assert_int_eq(client_read(fd, acc), 1);
		got += take_responses(acc, NULL);
	}
	ck_assert_int_eq(got, N);
	ck_assert_uint_eq(st->requests, N);
	ck_assert_uint_eq(evbuffer_get_length(acc), 0);
	evbuffer_free(acc);
	close(fd);
	srv_stop(&t);
}
END_TEST

START_TEST(test_a_client_that_never_reads_is_dropped_after_the_send_timeout)
{
	struct srv t;
	srv_start_timeouts(&t, BIG_BODY, 60000, 300);
	int fd = client_connect(&t, 4096);
	for (int i = 0; i < 400; i++)
		ck_assert_int_eq(send(fd, GET, sizeof(GET) - 1, MSG_NOSIGNAL), (ssize_t)(sizeof(GET) - 1));
	const struct http_stats *st = http_server_stats(t.http);
	for (uint64_t end = mono_ms() + 20000; (st->connections_total == 0 || st->connections > 0) && mono_ms() < end;)
		spin(&t, 20);
	ck_assert_uint_eq(st->connections_total, 1);
	ck_assert_int_eq(st->connections, 0); /* dropped, not kept waiting */
	ck_assert_uint_lt(st->requests, 400); /* it never took its answers */
	close(fd);
	srv_stop(&t);
}
END_TEST

static void on_drained(void *ud)
{
	((struct srv *)ud)->drained = 1;
}

START_TEST(test_drain_answers_the_next_request_with_connection_close)
{
	struct srv t;
	srv_start(&t, 10, 60000);
	int fd = client_connect(&t, 0);
	struct evbuffer *acc = evbuffer_new();
	int closes = 0, got = 0;
	ck_assert_int_eq(send(fd, GET, sizeof(GET) - 1, MSG_NOSIGNAL), (ssize_t)(sizeof(GET) - 1));
	for (uint64_t end = mono_ms() + 5000; got < 1 && mono_ms() < end;) {
		spin(&t, 5);
		client_read(fd, acc);
		got += take_responses(acc, &closes);
	}
	ck_assert_int_eq(got, 1);
	ck_assert_int_eq(closes, 0);
	/* Drain while the connection is idle: it is not closed under the
	 * client, which may be sending its next request right now. */
	http_server_drain(t.http, on_drained, &t);
	spin(&t, 100);
	ck_assert_int_eq(t.drained, 0);
	ck_assert_int_eq(client_read(fd, acc), 1);
	ck_assert_int_eq(send(fd, GET, sizeof(GET) - 1, MSG_NOSIGNAL), (ssize_t)(sizeof(GET) - 1));
	int open = 1;
	for (uint64_t end = mono_ms() + 5000; open == 1 && mono_ms() < end;) {
		spin(&t, 5);
		open = client_read(fd, acc);
		got += take_responses(acc, &closes);
	}
	ck_assert_int_eq(got, 2);
	ck_assert_int_eq(closes, 1);
	ck_assert_int_eq(open, 0); /* closed after the answer */
	spin(&t, 20);
	ck_assert_int_eq(t.drained, 1);
	evbuffer_free(acc);
	close(fd);
	srv_stop(&t);
}
END_TEST

START_TEST(test_drain_closes_an_idle_connection_after_its_keepalive_timeout)
{
	struct srv t;
	srv_start(&t, 10, 300);
	int fd = client_connect(&t, 0);
	struct evbuffer *acc = evbuffer_new();
	int got = 0;
	ck_assert_int_eq(send(fd, GET, sizeof(GET) - 1, MSG_NOSIGNAL), (ssize_t)(sizeof(GET) - 1));
	for (uint64_t end = mono_ms() + 5000; got < 1 && mono_ms() < end;) {
		spin(&t, 5);
		client_read(fd, acc);
		got += take_responses(acc, NULL);
	}
	ck_assert_int_eq(got, 1);
	http_server_drain(t.http, on_drained, &t);
	int open = 1;
	uint64_t t0 = mono_ms();
	for (uint64_t end = t0 + 5000; open && mono_ms() < end;) {
		spin(&t, 5);
		open = client_read(fd, acc);
	}
	ck_assert_int_eq(open, 0);
	spin(&t, 20);
	ck_assert_int_eq(t.drained, 1);
	ck_assert_uint_eq(evbuffer_get_length(acc), 0); /* closed, not answered with junk */
	evbuffer_free(acc);
	close(fd);
	srv_stop(&t);
}
END_TEST

START_TEST(test_a_request_refused_at_header_time_is_answered_without_its_body)
{
	struct srv t;
	srv_start(&t, 10, 60000);
	t.refuse = 1;
	int fd = client_connect(&t, 0);
	static const char head[] = "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n";
	ck_assert_int_eq(send(fd, head, sizeof(head) - 1, MSG_NOSIGNAL), (ssize_t)(sizeof(head) - 1));
	char part[4096];
	memset(part, 'b', sizeof(part));
	ck_assert_int_eq(send(fd, part, sizeof(part), MSG_NOSIGNAL), (ssize_t)sizeof(part));
	struct evbuffer *acc = evbuffer_new();
	int closes = 0, got = 0, open = 1;
	for (uint64_t end = mono_ms() + 5000; open == 1 && mono_ms() < end;) {
		spin(&t, 5);
		open = client_read(fd, acc);
		got += take_responses(acc, &closes);
	}
	ck_assert_int_eq(got, 1);
	ck_assert_int_eq(closes, 1);
	ck_assert_int_eq(open, 0); /* closed after the answer, not kept alive */
	ck_assert_int_eq(t.skipped, 1);
	ck_assert_uint_eq(t.bodies, 0);
	evbuffer_free(acc);
	close(fd);
	srv_stop(&t);
}
END_TEST

START_TEST(test_drain_answers_the_first_of_two_pipelined_requests_and_ends_cleanly)
{
	struct srv t;
	srv_start(&t, 20000, 60000);
	int fd = client_connect(&t, 0);
	spin(&t, 20); /* accepted before the drain disables the listener */
	http_server_drain(t.http, on_drained, &t);
	/* Two requests at once: the first is answered with Connection: close
	 * and the connection ends with a FIN after it, not a reset (the second
	 * is the client's to retry, as HTTP says of a closing answer). */
	char two[2 * sizeof(GET)];
	memcpy(two, GET, sizeof(GET) - 1);
	memcpy(two + sizeof(GET) - 1, GET, sizeof(GET) - 1);
	ck_assert_int_eq(send(fd, two, 2 * (sizeof(GET) - 1), MSG_NOSIGNAL), (ssize_t)(2 * (sizeof(GET) - 1)));
	spin(&t, 100); /* the server answers and closes before the client reads */
	struct evbuffer *acc = evbuffer_new();
	int closes = 0, got = 0, open = 1;
	for (uint64_t end = mono_ms() + 5000; open == 1 && mono_ms() < end;) {
		spin(&t, 5);
		open = client_read(fd, acc);
		got += take_responses(acc, &closes);
	}
	ck_assert_int_eq(open, 0);
	ck_assert_int_eq(got, 1);
	ck_assert_int_eq(closes, 1);
	evbuffer_free(acc);
	close(fd);
	srv_stop(&t);
}
END_TEST

/* ------------------------------------------------ header-time guards */

static int guard_calls;

static int mw_needs_token(struct http_request *req)
{
	(void)req;
	return APP_NEXT;
}

static int handler(struct http_request *req)
{
	(void)req;
	return APP_DONE;
}

static int token_guard(const struct http_request *req)
{
	guard_calls++;
	return http_header_get(req, "authorization", NULL) ? APP_NEXT : APP_DONE;
}

static struct http_request *fake_request(int method, const char *path, const char *auth)
{
	struct http_request *r = calloc(1, sizeof(*r));
	ck_assert_ptr_nonnull(r);
	r->method = method;
	r->path = path;
	r->path_len = strlen(path);
	r->has_body = 1;
	if (auth) {
		r->headers[0] = (struct http_header){"Authorization", auth, 13, (uint16_t)strlen(auth)};
		r->nheaders = 1;
	}
	return r;
}

START_TEST(test_guarded_routes_refuse_at_header_time_and_public_ones_get_a_small_limit)
{
	struct app *a = app_new();
	ck_assert_ptr_nonnull(a);
	ck_assert_int_eq(app_post(a, "/things", mw_needs_token, handler), 0);
	ck_assert_int_eq(app_post(a, "/login", handler), 0);
	ck_assert_int_eq(app_post(a, "/open", handler), 0);
	ck_assert_int_eq(app_guard(a, mw_needs_token, token_guard), 0);
	ck_assert_int_eq(app_body_limit(a, HTTP_M_POST, "/login", 65536), 0);
	ck_assert_int_eq(app_body_limit(a, HTTP_M_POST, "/nowhere", 65536), -1);

	guard_calls = 0;
	struct http_request *r = fake_request(HTTP_M_POST, "/things", NULL);
	ck_assert_int_eq(app_headers(r, a), HTTP_HEADERS_SKIP_BODY);
	free(r);
	r = fake_request(HTTP_M_POST, "/things", "Bearer t");
	ck_assert_int_eq(app_headers(r, a), HTTP_HEADERS_READ_BODY);
	ck_assert_int_eq(r->body_limit, 0); /* the server's limit */
	free(r);
	ck_assert_int_eq(guard_calls, 2);

	r = fake_request(HTTP_M_POST, "/login", NULL);
	ck_assert_int_eq(app_headers(r, a), HTTP_HEADERS_READ_BODY);
	ck_assert_int_eq(r->body_limit, 65536);
	free(r);
	r = fake_request(HTTP_M_POST, "/open", "Bearer t");
	ck_assert_int_eq(app_headers(r, a), HTTP_HEADERS_READ_BODY);
	ck_assert_int_eq(r->body_limit, APP_PUBLIC_BODY_LIMIT);
	free(r);
	r = fake_request(HTTP_M_POST, "/unknown", NULL);
	ck_assert_int_eq(app_headers(r, a), HTTP_HEADERS_READ_BODY);
	ck_assert_int_eq(r->body_limit, APP_PUBLIC_BODY_LIMIT);
	free(r);
	ck_assert_int_eq(guard_calls, 2); /* only guarded routes run it */
	app_free(a);
}
END_TEST

int main(void)
{
	if (sodium_init() < 0)
		return EXIT_FAILURE;
	Suite *s = suite_create("http_util");
	TCase *tc = tcase_create("helpers");
	tcase_add_test(tc, test_accept_encoding_parsing_honours_q_values);
	tcase_add_test(tc, test_gzip_output_inflates_to_the_input);
	tcase_add_test(tc, test_gzip_threshold_is_one_kib);
	tcase_add_test(tc, test_uuid4_has_version_and_variant);
	tcase_add_test(tc, test_date_header_is_rfc7231_format);
	tcase_add_test(tc, test_url_decoding_rejects_bad_escapes);
	tcase_add_test(tc, test_guarded_routes_refuse_at_header_time_and_public_ones_get_a_small_limit);
	suite_add_tcase(s, tc);
	TCase *srv = tcase_create("server");
	tcase_set_timeout(srv, 60);
	tcase_add_test(srv, test_a_client_that_does_not_read_stops_being_parsed);
	tcase_add_test(srv, test_a_client_that_never_reads_is_dropped_after_the_send_timeout);
	tcase_add_test(srv, test_drain_answers_the_next_request_with_connection_close);
	tcase_add_test(srv, test_drain_closes_an_idle_connection_after_its_keepalive_timeout);
	tcase_add_test(srv, test_a_request_refused_at_header_time_is_answered_without_its_body);
	tcase_add_test(srv, test_drain_answers_the_first_of_two_pipelined_requests_and_ends_cleanly);
	suite_add_tcase(s, srv);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
