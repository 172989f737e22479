/* test_httpclient.c - unit tests for src/httpclient.c against a tiny evhttp
 * server running on 127.0.0.1 in the same process and event loop.
 *
 * The server's routes: /ok (200 with a JSON body that echoes the request's
 * Authorization header and body), /missing (404), /limited (429 with
 * Retry-After: 7), /boom (500), /big (a body larger than the client's
 * limit) and /never (holds the request and never answers, so the
 * client's timeout is what ends the call, whatever the machine's speed).
 */
#include "../src/httpclient.h"

#include <check.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct fixture {
	struct event_base *base;
	struct evhttp *srv;
	struct httpc *hc;
	int port;
	struct evhttp_request *held; /* /never */
};

struct result {
	int done;
	int calls;
	int err;
	int status;
	char body[512];
	size_t body_len;
	char retry_after[32];
	uint64_t retry_after_ms;
	struct event_base *base;
};

static void reply(struct evhttp_request *req, int code, const char *body)
{
	struct evbuffer *b = evbuffer_new();
	evbuffer_add(b, body, strlen(body));
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
	evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", b);
	evbuffer_free(b);
}

static void serve(struct evhttp_request *req, void *arg)
{
	struct fixture *fx = arg;
	const char *uri = evhttp_request_get_uri(req);
	if (strncmp(uri, "/ok", 3) == 0) {
		const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
		struct evbuffer *in = evhttp_request_get_input_buffer(req);
		char body[128] = "";
		size_t n = evbuffer_get_length(in);
		if (n >= sizeof(body))
			n = sizeof(body) - 1;
		evbuffer_remove(in, body, n);
		body[n] = '\0';
		char out[400];
		snprintf(out, sizeof(out), "{\"auth\":\"%s\",\"method\":%d,\"uri\":\"%s\",\"body\":%s}",
		         auth ? auth : "", (int)evhttp_request_get_command(req), uri, n ? body : "null");
		reply(req, 200, out);
	} else if (strcmp(uri, "/headers") == 0) {
		struct evkeyvalq *in = evhttp_request_get_input_headers(req);
		const char *tp = evhttp_find_header(in, "traceparent");
		const char *rid = evhttp_find_header(in, "X-Request-ID");
		char out[300];
		snprintf(out, sizeof(out), "{\"traceparent\":\"%s\",\"rid\":\"%s\"}", tp ? tp : "", rid ? rid : "");
		reply(req, 200, out);
	} else if (strcmp(uri, "/missing") == 0) {
		reply(req, 404, "{\"error\":\"not found\"}");
	} else if (strcmp(uri, "/limited") == 0) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "7");
		reply(req, 429, "{}");
	} else if (strcmp(uri, "/boom") == 0) {
		reply(req, 500, "{\"error\":\"boom\"}");
	} else if (strcmp(uri, "/big") == 0) {
		char big[2048];
		memset(big, 'x', sizeof(big) - 1);
		big[sizeof(big) - 1] = '\0';
		reply(req, 200, big);
	} else if (strcmp(uri, "/never") == 0) {
		fx->held = req; /* answered never; freed with the server */
	} else {
		reply(req, 400, "{}");
	}
}

static void setup(struct fixture *fx)
{
	memset(fx, 0, sizeof(*fx));
	fx->base = event_base_new();
	ck_assert_ptr_nonnull(fx->base);
	fx->srv = evhttp_new(fx->base);
	ck_assert_ptr_nonnull(fx->srv);
	struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(fx->srv, "127.0.0.1", 0);
	ck_assert_ptr_nonnull(bs);
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);
	ck_assert_int_eq(getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sin, &sl), 0);
	fx->port = ntohs(sin.sin_port);
	evhttp_set_gencb(fx->srv, serve, fx);
	fx->hc = httpc_new(fx->base);
	ck_assert_ptr_nonnull(fx->hc);
}

static void teardown(struct fixture *fx)
{
	httpc_free(fx->hc);
	evhttp_free(fx->srv);
	event_base_free(fx->base);
}

static void got(const struct httpc_response *res, void *ud)
{
	struct result *r = ud;
	r->done = 1;
	r->calls++;
	r->err = res->err;
	r->status = res->status;
	if (res->err == HTTPC_OK) {
		ck_assert_ptr_nonnull(res->body);
		r->body_len = res->body_len;
		snprintf(r->body, sizeof(r->body), "%s", res->body);
		if (res->retry_after)
			snprintf(r->retry_after, sizeof(r->retry_after), "%s", res->retry_after);
		r->retry_after_ms = res->retry_after_ms;
	}
	event_base_loopbreak(r->base);
}

static void safety(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	event_base_loopbreak(arg);
}

/* Run the loop until the callback ran (or a generous safety limit). */
static void run_until_done(struct fixture *fx, struct result *r)
{
	struct event *ev = evtimer_new(fx->base, safety, fx->base);
	struct timeval tv = {20, 0};
	evtimer_add(ev, &tv);
	while (!r->done) {
		event_base_dispatch(fx->base);
		if (!evtimer_pending(ev, NULL))
			break;
	}
	event_free(ev);
	ck_assert_msg(r->done, "callback did not run");
}

static void get(struct fixture *fx, const char *path, uint64_t timeout_ms, size_t max_body, struct result *r)
{
	char url[128];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", fx->port, path);
	memset(r, 0, sizeof(*r));
	r->base = fx->base;
	struct httpc_request rq = {
	    .method = HTTPC_GET, .url = url, .bearer = "sekret", .timeout_ms = timeout_ms, .max_body = max_body};
	struct httpc_call *call = NULL;
	ck_assert_int_eq(httpc_start(fx->hc, &rq, got, r, &call), HTTPC_OK);
	ck_assert_ptr_nonnull(call);
	ck_assert_int_eq(r->done, 0); /* never synchronously */
	run_until_done(fx, r);
	ck_assert_int_eq(r->calls, 1);
	ck_assert_uint_eq(httpc_inflight(fx->hc), 0);
}

START_TEST(test_httpc_returns_status_and_body_of_200)
{
	struct fixture fx;
	struct result r;
	setup(&fx);
	get(&fx, "/ok?x=1", 5000, 0, &r);
	ck_assert_int_eq(r.err, HTTPC_OK);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_eq(r.body, "{\"auth\":\"Bearer sekret\",\"method\":1,\"uri\":\"/ok?x=1\",\"body\":null}");
	ck_assert_uint_eq(r.body_len, strlen(r.body));
	ck_assert_str_eq(r.retry_after, "");
	teardown(&fx);
}
END_TEST

START_TEST(test_httpc_sends_extra_headers_as_given)
{
	struct fixture fx;
	struct result r;
	setup(&fx);
	char url[128];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/headers", fx.port);
	memset(&r, 0, sizeof(r));
	r.base = fx.base;
	const struct httpc_header hdrs[] = {
	    {"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
	    {"X-Request-ID", "req-42"},
	};
	struct httpc_request rq = {.method = HTTPC_GET, .url = url, .headers = hdrs, .nheaders = 2};
	ck_assert_int_eq(httpc_start(fx.hc, &rq, got, &r, NULL), HTTPC_OK);
	run_until_done(&fx, &r);
	ck_assert_int_eq(r.err, HTTPC_OK);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_eq(r.body, "{\"traceparent\":\"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\","
	                         "\"rid\":\"req-42\"}");
	teardown(&fx);
}
END_TEST

START_TEST(test_httpc_refuses_a_bad_extra_header_at_request_time)
{
	struct fixture fx;
	struct result r;
	setup(&fx);
	memset(&r, 0, sizeof(r));
	struct httpc_header hdrs[] = {{"X-Request-ID", "a\r\nInjected: yes"}};
	struct httpc_request rq = {.method = HTTPC_GET, .url = "http://127.0.0.1/x", .headers = hdrs, .nheaders = 1};
	ck_assert_int_eq(httpc_start(fx.hc, &rq, got, &r, NULL), HTTPC_ERR_URL);
	hdrs[0].name = "";
	hdrs[0].value = "x";
	ck_assert_int_eq(httpc_start(fx.hc, &rq, got, &r, NULL), HTTPC_ERR_URL);
	hdrs[0].name = "X-Ok";
	hdrs[0].value = NULL;
	ck_assert_int_eq(httpc_start(fx.hc, &rq, got, &r, NULL), HTTPC_ERR_URL);
	ck_assert_uint_eq(httpc_inflight(fx.hc), 0);
	ck_assert_int_eq(r.calls, 0);
	teardown(&fx);
}
END_TEST

START_TEST(test_httpc_posts_a_json_body)
{
	struct fixture fx;
	struct result r;
	setup(&fx);
	char url[128];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/ok", fx.port);
	memset(&r, 0, sizeof(r));
	r.base = fx.base;
	const char *json = "{\"a\":1}";
	struct httpc_request rq = {.method = HTTPC_POST, .url = url, .body = json, .body_len = strlen(json)};
	ck_assert_int_eq(httpc_start(fx.hc, &rq, got, &r, NULL), HTTPC_OK);
	run_until_done(&fx, &r);
	ck_assert_int_eq(r.err, HTTPC_OK);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_eq(r.body, "{\"auth\":\"\",\"method\":2,\"uri\":\"/ok\",\"body\":{\"a\":1}}");
	teardown(&fx);
}
END_TEST

START_TEST(test_httpc_reports_404_as_a_response)
{
	struct fixture fx;
	struct result r;
	setup(&fx);
	get(&fx, "/missing", 5000, 0, &r);
	ck_assert_int_eq(r.err, HTTPC_OK);
	ck_assert_int_eq(r.status, 404);
	ck_assert_str_eq(r.body, "{\"error\":\"not found\"}");
	teardown(&fx);
}
END_TEST

START_TEST(test_httpc_parses_retry_after_of_429)
{
	struct fixture fx;
	struct result r;
	setup(&fx);
	get(&fx, "/limited", 5000, 0, &r);
	ck_assert_int_eq(r.err, HTTPC_OK);
	ck_assert_int_eq(r.status, 429);
	ck_assert_str_eq(r.retry_after, "7");
	ck_assert_uint_eq(r.retry_after_ms, 7000);
	teardown(&fx);
}
END_TEST

START_TEST(test_httpc_reports_500_as_a_response)
{
	struct fixture fx;
	struct result r;
	setup(&fx);
	get(&fx, "/boom", 5000, 0, &r);
	ck_assert_int_eq(r.err, HTTPC_OK);
	ck_assert_int_eq(r.status, 500);
	teardown(&fx);
}
END_TEST

START_TEST(test_httpc_times_out_when_the_server_never_answers)
{
	struct fixture fx;
	struct result r;
	setup(&fx);
	get(&fx, "/never", 100, 0, &r);
	ck_assert_int_eq(r.err, HTTPC_ERR_TIMEOUT);
	ck_assert_int_eq(r.status, 0);
	ck_assert_ptr_nonnull(fx.held); /* the server did receive it */
	teardown(&fx);
}
END_TEST

START_TEST(test_httpc_refuses_a_body_over_the_limit)
{
	struct fixture fx;
	struct result r;
	setup(&fx);
	get(&fx, "/big", 5000, 1024, &r);
	ck_assert_int_eq(r.err, HTTPC_ERR_TOO_LARGE);
	teardown(&fx);
}
END_TEST

START_TEST(test_httpc_reports_connection_refused)
{
	struct fixture fx;
	struct result r;
	setup(&fx);
	/* A port that was just free: bind, learn it, close. */
	int s = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(s, 0);
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sin);
	ck_assert_int_eq(bind(s, (struct sockaddr *)&sin, sizeof(sin)), 0);
	ck_assert_int_eq(getsockname(s, (struct sockaddr *)&sin, &sl), 0);
	close(s);
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/ok", ntohs(sin.sin_port));
	memset(&r, 0, sizeof(r));
	r.base = fx.base;
	struct httpc_request rq = {.method = HTTPC_GET, .url = url, .timeout_ms = 5000};
	ck_assert_int_eq(httpc_start(fx.hc, &rq, got, &r, NULL), HTTPC_OK);
	run_until_done(&fx, &r);
	ck_assert_int_eq(r.calls, 1);
	ck_assert_int_eq(r.err, HTTPC_ERR_CONNECT);
	teardown(&fx);
}
END_TEST

START_TEST(test_httpc_refuses_https_and_bad_urls_at_request_time)
{
	struct fixture fx;
	struct result r;
	setup(&fx);
	memset(&r, 0, sizeof(r));
	struct httpc_call *call = (struct httpc_call *)&r;
	struct httpc_request rq = {.method = HTTPC_GET, .url = "https://127.0.0.1/x"};
	ck_assert_int_eq(httpc_start(fx.hc, &rq, got, &r, &call), HTTPC_ERR_UNSUPPORTED);
	ck_assert_ptr_null(call);
	rq.url = "ftp://127.0.0.1/x";
	ck_assert_int_eq(httpc_start(fx.hc, &rq, got, &r, NULL), HTTPC_ERR_URL);
	rq.url = "not a url";
	ck_assert_int_eq(httpc_start(fx.hc, &rq, got, &r, NULL), HTTPC_ERR_URL);
	rq.url = "http:///nohost";
	ck_assert_int_eq(httpc_start(fx.hc, &rq, got, &r, NULL), HTTPC_ERR_URL);
	rq.url = "http://127.0.0.1/x";
	rq.bearer = "bad\r\nInjected: yes";
	ck_assert_int_eq(httpc_start(fx.hc, &rq, got, &r, NULL), HTTPC_ERR_URL);
	ck_assert_uint_eq(httpc_inflight(fx.hc), 0);
	ck_assert_int_eq(r.calls, 0);
	ck_assert_str_eq(httpc_err_name(HTTPC_ERR_UNSUPPORTED), "UNSUPPORTED");
	teardown(&fx);
}
END_TEST

START_TEST(test_httpc_cancel_and_free_never_run_the_callback)
{
	struct fixture fx;
	struct result r1, r2;
	setup(&fx);
	char url[128];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/ok", fx.port);
	memset(&r1, 0, sizeof(r1));
	memset(&r2, 0, sizeof(r2));
	r1.base = r2.base = fx.base;
	struct httpc_request rq = {.method = HTTPC_GET, .url = url};
	struct httpc_call *c1 = NULL, *c2 = NULL;
	ck_assert_int_eq(httpc_start(fx.hc, &rq, got, &r1, &c1), HTTPC_OK);
	ck_assert_int_eq(httpc_start(fx.hc, &rq, got, &r2, &c2), HTTPC_OK);
	ck_assert_uint_eq(httpc_inflight(fx.hc), 2);
	httpc_cancel(c1);
	ck_assert_uint_eq(httpc_inflight(fx.hc), 1);
	/* A third, completed call proves the loop ran while c2 was pending. */
	struct result r3;
	get(&fx, "/missing", 5000, 0, &r3);
	ck_assert_int_eq(r1.calls, 0);
	teardown(&fx); /* httpc_free cancels c2 if still pending */
	ck_assert_int_eq(r1.calls, 0);
	ck_assert_int_le(r2.calls, 1);
}
END_TEST

/* A callback may start the next call (retries do this). */
struct chain {
	struct fixture *fx;
	int step;
	int statuses[2];
};

static void chained(const struct httpc_response *res, void *ud)
{
	struct chain *ch = ud;
	ch->statuses[ch->step++] = res->status;
	if (ch->step == 1) {
		char url[128];
		snprintf(url, sizeof(url), "http://127.0.0.1:%d/ok", ch->fx->port);
		struct httpc_request rq = {.method = HTTPC_GET, .url = url};
		ck_assert_int_eq(httpc_start(ch->fx->hc, &rq, chained, ch, NULL), HTTPC_OK);
		return;
	}
	event_base_loopbreak(ch->fx->base);
}

START_TEST(test_httpc_callback_may_start_another_call)
{
	struct fixture fx;
	setup(&fx);
	struct chain ch = {.fx = &fx};
	char url[128];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/boom", fx.port);
	struct httpc_request rq = {.method = HTTPC_GET, .url = url};
	ck_assert_int_eq(httpc_start(fx.hc, &rq, chained, &ch, NULL), HTTPC_OK);
	struct event *ev = evtimer_new(fx.base, safety, fx.base);
	struct timeval tv = {20, 0};
	evtimer_add(ev, &tv);
	while (ch.step < 2 && evtimer_pending(ev, NULL))
		event_base_dispatch(fx.base);
	event_free(ev);
	ck_assert_int_eq(ch.step, 2);
	ck_assert_int_eq(ch.statuses[0], 500);
	ck_assert_int_eq(ch.statuses[1], 200);
	teardown(&fx);
}
END_TEST

static Suite *httpclient_suite(void)
{
	Suite *s = suite_create("httpclient");
	struct {
		const char *name;
		const TTest *t;
	} cases[] = {
	    {"200", test_httpc_returns_status_and_body_of_200},
	    {"post", test_httpc_posts_a_json_body},
	    {"headers", test_httpc_sends_extra_headers_as_given},
	    {"bad_header", test_httpc_refuses_a_bad_extra_header_at_request_time},
	    {"404", test_httpc_reports_404_as_a_response},
	    {"429", test_httpc_parses_retry_after_of_429},
	    {"500", test_httpc_reports_500_as_a_response},
	    {"timeout", test_httpc_times_out_when_the_server_never_answers},
	    {"too_large", test_httpc_refuses_a_body_over_the_limit},
	    {"refused", test_httpc_reports_connection_refused},
	    {"bad_urls", test_httpc_refuses_https_and_bad_urls_at_request_time},
	    {"cancel", test_httpc_cancel_and_free_never_run_the_callback},
	    {"chain", test_httpc_callback_may_start_another_call},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		TCase *tc = tcase_create(cases[i].name);
		tcase_set_timeout(tc, 30);
		tcase_add_test(tc, cases[i].t);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(httpclient_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
