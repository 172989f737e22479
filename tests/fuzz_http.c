/* fuzz_http.c - libFuzzer target for the HTTP request path: the bytes a
 * client sends, through the HTTP core (src/http.c, llhttp in strict mode)
 * into the application layer (app.c, router.c, middleware.c: CORS, body
 * parsing, JSON and urlencoded bodies, query strings, route parameters,
 * validation) and back out as responses and access-log lines.
 *
 *   make fuzz && ./tests/fuzz_http -max_total_time=20 CORPUS tests/fuzz-corpus/http
 *
 * Input: byte 0 picks how the stream is cut into writes, byte 1 is a set
 * of scenario flags, the rest is the client's byte stream. Both header
 * bytes are XORed with '0' so that seed files can start with "00" (one
 * write, no flags); see FZ_* below. Each input gets a fresh server on a
 * shared event_base; the connection is one end of a socketpair handed to
 * the server's accept callback (http.c is included for that). The loop is
 * run without blocking, a bounded number of times, after every write and
 * until the server has answered and closed; then everything is freed.
 *
 * Besides the sanitizers, these are checked (abort() on failure): every
 * connection ends (no stuck connection, no request left in flight), what
 * the client receives starts with "HTTP/1.1 ", and every access-log line
 * is one valid JSON document (strict UTF-8) whatever the request held.
 *
 * FUZZ_HTTP_TRACE=1 ./tests/fuzz_http FILE... prints what the client
 * receives and the access-log lines, to see what an input does.
 */
#include "../src/http.c" /* accept_cb() and the connection list */

#include "app.h"
#include "json.h"
#include "log.h"
#include "middleware.h"
#include "validate.h"

#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <yajl/yajl_gen.h>

/* Scenario flags (input byte 1 XOR '0'). */
#define FZ_HALF_CLOSE 0x01   /* shut the client's write side after the last byte */
#define FZ_SMALL_SNDBUF 0x02 /* tiny server send buffer: partial writes, EV_WRITE */
#define FZ_TIMER 0x04        /* fire the connection's timer (slowloris / idle) at the end */
#define FZ_DRAIN 0x08        /* start draining the server after the first write */
#define FZ_ASYNC 0x10        /* the application answers later, from the loop */
#define FZ_ABORT 0x20        /* the client disconnects after the first write */
#define FZ_REJECT 0x40       /* connection cap of 1 and a second client (503) */
#define FZ_INET 0x80         /* the peer looks like a TCP client */

#define FZ_BODY_LIMIT 4096 /* small, so that 413 is in reach */
#define FZ_MAX_WRITES 64

static struct event_base *fz_base;
static struct app *fz_app;
static int fz_listen_fd = -1;
static int fz_log_rd = -1;
static int fz_trace;

static struct {
	unsigned flags;
	int deferred; /* requests waiting in fz_defer_cb */
	int drained;  /* on_drained ran */
} fz;

/* ---------------------------------------------------------- log oracle */

static char fz_logbuf[1 << 20];
static size_t fz_loglen;

static void fz_check_log_line(const char *line, size_t len)
{
	struct json_value *v = NULL;
	if (fz_trace)
		fprintf(stderr, "[log] %.*s\n", (int)len, line);
	enum json_status st = json_parse(line, len, 8, 0, &v);
	if (st != JSON_OK || !v || v->type != JSON_OBJECT) {
		fprintf(stderr, "fuzz_http: access log line is not a JSON object (%s): %.*s\n", json_status_str(st),
		        (int)(len > 2000 ? 2000 : len), line);
		abort();
	}
	json_free(v);
}

static void fz_read_log(void)
{
	for (;;) {
		if (fz_loglen == sizeof(fz_logbuf)) {
			fprintf(stderr, "fuzz_http: a log line longer than %zu bytes\n", sizeof(fz_logbuf));
			abort();
		}
		ssize_t n = read(fz_log_rd, fz_logbuf + fz_loglen, sizeof(fz_logbuf) - fz_loglen);
		if (n <= 0)
			break;
		fz_loglen += (size_t)n;
		size_t start = 0;
		char *nl;
		while ((nl = memchr(fz_logbuf + start, '\n', fz_loglen - start)) != NULL) {
			size_t end = (size_t)(nl - fz_logbuf);
			fz_check_log_line(fz_logbuf + start, end - start);
			start = end + 1;
		}
		memmove(fz_logbuf, fz_logbuf + start, fz_loglen - start);
		fz_loglen -= start;
	}
}

/* -------------------------------------------------------------- client */

struct fz_client {
	int fd;
	char head[9]; /* the first bytes received */
	size_t head_len;
};

static void fz_client_read(struct fz_client *cl)
{
	char buf[65536];
	if (cl->fd < 0)
		return;
	for (;;) {
		ssize_t n = read(cl->fd, buf, sizeof(buf));
		if (n <= 0)
			break;
		if (fz_trace)
			fwrite(buf, 1, (size_t)n, stderr);
		size_t take = sizeof(cl->head) - cl->head_len;
		if (take > (size_t)n)
			take = (size_t)n;
		memcpy(cl->head + cl->head_len, buf, take);
		cl->head_len += take;
		if (take && cl->head_len == sizeof(cl->head) && memcmp(cl->head, "HTTP/1.1 ", 9) != 0) {
			fprintf(stderr, "fuzz_http: the response does not start with a status line: %.9s\n", cl->head);
			abort();
		}
	}
}

static void fz_pump(struct fz_client *cl, int rounds)
{
	for (int i = 0; i < rounds; i++) {
		event_base_loop(fz_base, EVLOOP_NONBLOCK);
		fz_client_read(cl);
		fz_read_log();
	}
}

static void fz_client_write(struct fz_client *cl, const char *p, size_t n)
{
	int stalls = 0;
	while (n > 0 && cl->fd >= 0) {
		ssize_t w = send(cl->fd, p, n, MSG_NOSIGNAL);
		if (w > 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && stalls++ < 100) {
			fz_pump(cl, 1);
			continue;
		}
		return; /* the server closed, or does not read any more */
	}
}

/* --------------------------------------------------------- application */

#define GS(g, s) yajl_gen_string(g, (const unsigned char *)(s), strlen(s))

struct fz_defer {
	struct event *ev;
	struct http_request *req;
};

static void fz_defer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fz_defer *d = arg;
	struct http_request *req = d->req;
	(void)fd;
	(void)what;
	event_free(d->ev);
	free(d);
	fz.deferred--;
	app_next(req); /* the client may be gone: then the answer is dropped */
}

/* App-level middleware: with FZ_ASYNC the rest of the chain runs later,
 * from the loop, as after a job on the thread pool. */
static int fz_defer(struct http_request *req)
{
	if (!(fz.flags & FZ_ASYNC))
		return APP_NEXT;
	struct fz_defer *d = malloc(sizeof(*d));
	if (d)
		d->ev = event_new(fz_base, -1, 0, fz_defer_cb, d);
	if (!d || !d->ev) {
		free(d);
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	}
	d->req = req;
	fz.deferred++;
	event_active(d->ev, EV_TIMEOUT, 1);
	return APP_DONE;
}

/* Route-level middleware standing in for authentication. */
static int fz_auth(struct http_request *req)
{
	size_t n;
	const char *v = http_header_get(req, "authorization", &n);
	if (!v || n != 11 || memcmp(v, "Bearer fuzz", 11) != 0)
		return app_fail(req, 401, "UNAUTHORIZED", "authentication required");
	static const char fuzz_principal[] = "650000000000000000000001";
	struct app_ctx *ctx = app_ctx(req);
	ctx->principal = fuzz_principal; /* opaque to src/: any application value */
	ctx->principal_id = fuzz_principal;
	return APP_NEXT;
}

/* fz_auth's header-time guard: the same check, so a refused upload is
 * answered by fz_auth without its body. */
static int fz_auth_guard(const struct http_request *req)
{
	size_t n;
	const char *v = http_header_get(req, "authorization", &n);
	return v && n == 11 && memcmp(v, "Bearer fuzz", 11) == 0 ? APP_NEXT : APP_DONE;
}

/* FZ_INET peers (127.0.0.1) are trusted proxies: forwarded headers count. */
static struct cidr_list fz_trust;

static const struct vrule fz_register_rules[] = {
    V_STRING("username", V_REQUIRED, 3, 20, .charset = V_CHARSET_WORD),
    V_EMAIL("email", V_REQUIRED),
    V_STRING("password", V_REQUIRED, 8, 128),
    V_END,
};

static const struct vrule fz_post_patch_rules[] = {
    V_STRING("title", V_OPTIONAL, 1, 200),
    V_STRING("content", V_OPTIONAL, 1, 50000),
    V_STRING("category", V_OPTIONAL, 1, 50),
    V_END,
};

static const struct vrule fz_list_rules[] = {
    V_INT("page", V_OPTIONAL | V_FROM_STRING, 1, 1000000000),
    V_INT("limit", V_OPTIONAL | V_FROM_STRING, 1, 100),
    V_STRING("category", V_OPTIONAL, 0, 50),
    V_BOOL("mine", V_OPTIONAL | V_FROM_STRING),
    V_END,
};

static const struct vrule fz_patient_rules[] = {
    V_STRING("name", V_REQUIRED, 1, 100),
    V_EMAIL("email", V_REQUIRED),
    V_DATE("dateOfBirth", V_OPTIONAL),
    V_ENUM("status", V_OPTIONAL, "active", "inactive", "discharged"),
    V_STRING("ssn", V_OPTIONAL, 1, 20),
    V_OBJECTID("roomId", V_OPTIONAL),
    V_END,
};

static int fz_health(struct http_request *req)
{
	yajl_gen g = app_gen(req);
	if (!g)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	yajl_gen_map_open(g);
	GS(g, "status");
	GS(g, "ok");
	GS(g, "method");
	GS(g, req->method_name);
	GS(g, "path");
	yajl_gen_string(g, (const unsigned char *)req->path, req->path_len);
	yajl_gen_map_close(g);
	app_send_gen(req, 200);
	return APP_DONE;
}

/* Echo the body; optional response headers taken from the request. */
static int fz_echo(struct http_request *req)
{
	size_t n;
	const char *v = http_header_get(req, "x-echo", &n);
	if (v && http_add_headern(req, "X-Echo", v, n) < 0)
		return app_fail(req, 400, "BAD_REQUEST", "header rejected");
	v = http_header_get(req, "x-content-type", &n);
	if (v)
		req->res.content_type = http_strndup(req, v, n);
	if (http_header_get(req, "x-close", NULL))
		req->res.close = 1;
	if (http_header_get(req, "x-no-compress", NULL))
		req->res.no_compress = 1;
	yajl_gen g = app_gen(req);
	if (!g)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	const struct json_value *body = app_body(req);
	if (body)
		json_gen_value(g, body); /* on failure app_send_gen answers 500 */
	else
		yajl_gen_null(g);
	app_send_gen(req, 201);
	return APP_DONE;
}

static int fz_register(struct http_request *req)
{
	struct verrors errs;
	if (validate(app_body(req), fz_register_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	yajl_gen g = app_gen(req);
	if (!g)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	size_t n;
	const char *u = json_get_str(app_body(req), "username", &n);
	yajl_gen_map_open(g);
	GS(g, "username");
	yajl_gen_string(g, (const unsigned char *)u, n);
	yajl_gen_map_close(g);
	app_send_gen(req, 201);
	return APP_DONE;
}

static int fz_posts_list(struct http_request *req)
{
	const struct json_value *q = app_query(req);
	if (!q)
		return app_fail(req, 400, "VALIDATION_ERROR", "validation failed: malformed query string");
	struct verrors errs;
	if (validate(q, fz_list_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	int64_t page, limit;
	if (validate_get_int(q, "page", 1, &page) < 0 || validate_get_int(q, "limit", 20, &limit) < 0)
		return app_fail(req, 500, "INTERNAL", "internal server error"); /* passed V_INT: cannot fail */
	yajl_gen g = app_gen(req);
	if (!g)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	yajl_gen_array_open(g);
	yajl_gen_array_close(g);
	app_gen_pagination(req, page, limit, 0);
	app_send_gen(req, 200);
	return APP_DONE;
}

static int fz_post_one(struct http_request *req)
{
	const char *id = app_param(req, "id");
	if (!id || !validate_is_objectid(id, strlen(id)))
		return app_fail(req, 400, "INVALID_ID", "invalid id");
	if (req->method == HTTP_M_DELETE)
		return app_no_content(req);
	if (req->method == HTTP_M_PATCH) {
		struct verrors errs;
		if (validate(app_body(req), fz_post_patch_rules, &errs) > 0)
			return app_fail_validation(req, &errs);
	}
	yajl_gen g = app_gen(req);
	if (!g)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	yajl_gen_map_open(g);
	GS(g, "id");
	GS(g, id);
	yajl_gen_map_close(g);
	app_send_gen(req, 200);
	return APP_DONE;
}

static int fz_room_message(struct http_request *req)
{
	const char *room = app_param(req, "room"), *msg = app_param(req, "msg");
	if (!room || !msg)
		return app_fail(req, 400, "BAD_REQUEST", "malformed path parameter");
	yajl_gen g = app_gen(req);
	if (!g)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	yajl_gen_map_open(g);
	GS(g, "room");
	GS(g, room);
	GS(g, "message");
	GS(g, msg);
	yajl_gen_map_close(g);
	app_send_gen(req, 200);
	return APP_DONE;
}

static int fz_patient_create(struct http_request *req)
{
	struct verrors errs;
	if (validate(app_body(req), fz_patient_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	return app_no_content(req);
}

/* A body of several KiB: gzip when the client accepts it. */
static int fz_big(struct http_request *req)
{
	yajl_gen g = app_gen(req);
	if (!g)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	yajl_gen_array_open(g);
	for (int i = 0; i < 300; i++)
		yajl_gen_integer(g, (long long)i * 7919);
	yajl_gen_array_close(g);
	app_send_gen(req, 200);
	return APP_DONE;
}

/* A handler that wrongly continues the chain: answered with a 500. */
static int fz_bug(struct http_request *req)
{
	(void)req;
	return APP_NEXT;
}

/* Protocol upgrade as the chat does it: take the socket, then drop it. */
static int fz_ws(struct http_request *req)
{
	static const char head[] =
	    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
	/* With a full send buffer http_takeover() would wait for the client,
	 * which is this very thread. */
	if (!(fz.flags & FZ_SMALL_SNDBUF) && http_header_get(req, "upgrade", NULL)) {
		struct evbuffer *left = evbuffer_new();
		int fd = -1;
		if (left && http_takeover(req, head, sizeof(head) - 1, &fd, left) == 0) {
			evbuffer_free(left);
			close(fd);
			return APP_DONE;
		}
		if (left)
			evbuffer_free(left);
	}
	return app_fail(req, 426, "UPGRADE_REQUIRED", "upgrade required");
}

static void fz_route_hook(struct http_request *req, const char *route)
{
	if (!req || !route || !route[0])
		abort();
}

static void fz_on_drained(void *ud)
{
	(void)ud;
	fz.drained = 1;
}

/* ---------------------------------------------------------------- setup */

static void fz_init(void)
{
	signal(SIGPIPE, SIG_IGN);
	fz_trace = getenv("FUZZ_HTTP_TRACE") != NULL;
	fz_base = event_base_new();
	fz_app = app_new();
	struct mw_config mc = {.cors_origins = "https://app.example, http://localhost:3000", .json_max_depth = 64};
	if (!fz_base || !fz_app || mw_configure(&mc) < 0)
		abort();
	app_set_route_hook(fz_app, fz_route_hook);
	app_use(fz_app, fz_defer);
	app_use(fz_app, mw_cors);
	app_use(fz_app, mw_body);
	int rc = 0;
	rc |= app_get(fz_app, "/api/health", fz_health);
	rc |= app_route(fz_app, HTTP_M_POST | HTTP_M_PUT, "/api/echo", APP_CHAIN_(fz_echo));
	rc |= app_post(fz_app, "/api/auth/register", fz_register);
	rc |= app_get(fz_app, "/api/posts", fz_posts_list);
	rc |= app_route(fz_app, HTTP_M_GET | HTTP_M_PATCH | HTTP_M_DELETE, "/api/posts/:id", APP_CHAIN_(fz_post_one));
	rc |= app_get(fz_app, "/api/rooms/:room/messages/:msg", fz_room_message);
	rc |= app_post(fz_app, "/api/patients", fz_auth, fz_patient_create);
	rc |= app_get(fz_app, "/api/big", fz_big);
	rc |= app_get(fz_app, "/api/bug", fz_bug);
	rc |= app_get(fz_app, "/ws", fz_ws);
	rc |= app_guard(fz_app, fz_auth, fz_auth_guard);
	rc |= app_body_limit(fz_app, HTTP_M_POST, "/api/auth/register", 2 * APP_PUBLIC_BODY_LIMIT);
	char err[128];
	rc |= cidr_list_parse("127.0.0.0/8, 10.0.0.0/8, ::1", &fz_trust, err, sizeof(err));
	if (rc)
		abort();

	/* Access-log lines go to a pipe that fz_read_log() checks. */
	int lp[2];
	if (pipe2(lp, O_NONBLOCK | O_CLOEXEC) < 0)
		abort();
	(void)fcntl(lp[1], F_SETPIPE_SZ, 1 << 20);
	fz_log_rd = lp[0];
	log_set_fd(lp[1]);
	log_set_level(LOG_LVL_INFO);

	/* http_server_new() wants a listening socket; nobody connects to it
	 * (connections are handed to accept_cb() directly). */
	fz_listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	int len = snprintf(sun.sun_path + 1, sizeof(sun.sun_path) - 1, "resil-fuzz-http-%d", (int)getpid());
	if (fz_listen_fd < 0 ||
	    bind(fz_listen_fd, (struct sockaddr *)&sun, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len)) <
	        0 ||
	    listen(fz_listen_fd, 1) < 0)
		abort();
}

static void fz_accept(struct http_server *s, int fd)
{
	if (fz.flags & FZ_INET) {
		struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(40000)};
		sin.sin_addr.s_addr = htonl(0x7f000001);
		accept_cb(s->listener, fd, (struct sockaddr *)&sin, sizeof(sin), s);
	} else {
		struct sockaddr_un sun = {.sun_family = AF_UNIX};
		accept_cb(s->listener, fd, (struct sockaddr *)&sun, sizeof(sa_family_t), s);
	}
}

/* With a connection cap of 1, a second client gets the canned 503. */
static void fz_second_client(struct http_server *s)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		return;
	int had_conn = s->conns != NULL;
	fz_accept(s, sv[0]); /* closes sv[0] when rejected */
	if (had_conn) {
		char buf[512];
		ssize_t n = read(sv[1], buf, sizeof(buf));
		if (n < 12 || memcmp(buf, "HTTP/1.1 503", 12) != 0) {
			fprintf(stderr, "fuzz_http: no 503 over the connection cap\n");
			abort();
		}
	} else {
		/* The first connection is already gone: this one is served
		 * (and closed at once, as it sends nothing). */
	}
	close(sv[1]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!fz_base)
		fz_init();
	if (size < 2)
		return 0;
	unsigned hint = data[0] ^ '0';
	fz.flags = data[1] ^ '0';
	fz.deferred = 0;
	fz.drained = 0;
	const char *p = (const char *)data + 2;
	size_t n = size - 2;

	struct http_server_opts opts = {
	    .body_limit = FZ_BODY_LIMIT,
	    .max_connections = (fz.flags & FZ_REJECT) ? 1 : 0,
	    /* Long enough never to expire during an input; FZ_TIMER fires
	     * the timer on purpose instead. */
	    .header_timeout_ms = 600000,
	    .keepalive_timeout_ms = 600000,
	    .body_timeout_ms = 600000,
	    .trust_proxy = &fz_trust,
	    .on_headers = app_headers,
	    .on_request = app_handle,
	    .on_complete = mw_access_log,
	    .fixed_headers = mw_security_headers(),
	    .ud = fz_app,
	};
	struct http_server *s = http_server_new(fz_base, fz_listen_fd, &opts);
	if (!s)
		abort();
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		abort();
	if (fz.flags & FZ_SMALL_SNDBUF) {
		int one = 1; /* the kernel rounds up to its minimum */
		(void)setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &one, sizeof(one));
	}
	fz_accept(s, sv[0]);
	struct fz_client cl = {.fd = sv[1]};

	/* hint 0: one write; otherwise writes of hint bytes (at most
	 * FZ_MAX_WRITES of them), with the loop run in between. */
	size_t chunk = n ? n : 1;
	if (hint) {
		chunk = hint;
		if (chunk < (n + FZ_MAX_WRITES - 1) / FZ_MAX_WRITES)
			chunk = (n + FZ_MAX_WRITES - 1) / FZ_MAX_WRITES;
	}
	size_t off = 0;
	int first = 1;
	do {
		size_t len = n - off < chunk ? n - off : chunk;
		fz_client_write(&cl, p + off, len);
		off += len;
		fz_pump(&cl, 1);
		if (first) {
			first = 0;
			if (fz.flags & FZ_REJECT)
				fz_second_client(s);
			if (fz.flags & FZ_DRAIN)
				http_server_drain(s, fz_on_drained, NULL);
			if (fz.flags & FZ_ABORT) {
				close(cl.fd);
				cl.fd = -1;
			}
		}
	} while (off < n && cl.fd >= 0);

	if (cl.fd >= 0 && (fz.flags & FZ_HALF_CLOSE))
		shutdown(cl.fd, SHUT_WR);
	fz_pump(&cl, 4);
	if (fz.flags & FZ_TIMER) {
		for (struct http_conn *c = s->conns; c; c = c->next)
			event_active(c->timer, EV_TIMEOUT, 1);
		fz_pump(&cl, 4);
	}
	/* The client goes away; everything must wind down. */
	if (cl.fd >= 0) {
		fz_client_read(&cl);
		close(cl.fd);
		cl.fd = -1;
	}
	for (int i = 0; i < 100 && (s->conns || fz.deferred); i++)
		fz_pump(&cl, 1);
	if (s->conns || fz.deferred || s->stats.inflight != 0 || s->stats.connections != 0) {
		fprintf(stderr,
		        "fuzz_http: did not wind down: conns=%p state=%d deferred=%d inflight=%" PRId64
		        " connections=%" PRId64 "\n",
		        (void *)s->conns, s->conns ? s->conns->state : -1, fz.deferred, s->stats.inflight,
		        s->stats.connections);
		abort();
	}
	if ((fz.flags & FZ_DRAIN) && !fz.drained) {
		fprintf(stderr, "fuzz_http: drained server never reported it\n");
		abort();
	}
	http_server_free(s);
	fz_read_log();
	return 0;
}
