/* httpclient.c - outbound HTTP/1.1 calls on the worker's event loop (see
 * httpclient.h), on top of libevent's evhttp client.
 *
 * Each call owns one evhttp_connection, a timer bounding the whole call
 * and a "finish" event. libevent reports the outcome from deep inside the
 * connection's own callbacks, where freeing the connection is unsafe, so
 * the request callback only copies what it needs (status, Retry-After,
 * body) and activates the finish event; the finish event frees the
 * connection and then runs the user's callback on a clean stack. The
 * timer frees the connection directly (evhttp_connection_free drops the
 * pending request without running its callbacks).
 */
#include "autoconfig.h"

#include "httpclient.h"

#include "resilience.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define HTTPC_MAX_HEADERS_BYTES (64 * 1024)

struct httpc {
	struct event_base *base;
	struct evdns_base *dns; /* created for the first non-numeric host */
	struct httpc_call *calls;
	unsigned inflight;
};

struct httpc_call {
	struct httpc *hc;
	struct httpc_call *prev, *next;
	struct evhttp_connection *conn;
	struct evhttp_request *req; /* owned by conn until libevent's callback ran */
	struct event *timer;
	struct event *finish;
	httpc_cb cb;
	void *ud;
	int err; /* enum httpc_err, from libevent's error callback */
	int status;
	char *body; /* malloc'd, NUL-terminated */
	size_t body_len;
	char *retry_after;
};

const char *httpc_err_name(int err)
{
	static const char *const names[] = {"OK", "URL",      "UNSUPPORTED", "CONNECT", "TIMEOUT",
	                                    "IO", "PROTOCOL", "TOO_LARGE",   "NOMEM"};
	if (err < 0 || (size_t)err >= sizeof(names) / sizeof(names[0]))
		return "UNKNOWN";
	return names[err];
}

struct httpc *httpc_new(struct event_base *base)
{
	if (!base)
		return NULL;
	struct httpc *hc = calloc(1, sizeof(*hc));
	if (hc)
		hc->base = base;
	return hc;
}

unsigned httpc_inflight(const struct httpc *hc)
{
	return hc ? hc->inflight : 0;
}

/* Release everything the call owns except the call itself. */
static void call_release(struct httpc_call *k)
{
	struct httpc *hc = k->hc;
	if (k->prev)
		k->prev->next = k->next;
	else if (hc->calls == k)
		hc->calls = k->next;
	if (k->next)
		k->next->prev = k->prev;
	k->prev = k->next = NULL;
	hc->inflight--;
	if (k->conn)
		evhttp_connection_free(k->conn); /* frees a still pending request silently */
	k->conn = NULL;
	k->req = NULL;
	if (k->timer)
		event_free(k->timer);
	if (k->finish)
		event_free(k->finish);
	k->timer = k->finish = NULL;
}

static void call_free(struct httpc_call *k)
{
	free(k->body);
	free(k->retry_after);
	free(k);
}

/* Deliver the outcome on a clean stack, then free the call. */
static void call_deliver(struct httpc_call *k)
{
	call_release(k);
	struct httpc_response res;
	memset(&res, 0, sizeof(res));
	res.err = k->err;
	if (res.err == HTTPC_OK) {
		res.status = k->status;
		res.body = k->body ? k->body : "";
		res.body_len = k->body_len;
		res.retry_after = k->retry_after;
		if (k->retry_after)
			res.retry_after_ms = retry_after_ms(k->retry_after, (uint64_t)time(NULL));
	}
	k->cb(&res, k->ud);
	call_free(k);
}

static void on_finish(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	call_deliver(arg);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct httpc_call *k = arg;
	(void)fd;
	(void)what;
	if (k->req)
		k->err = HTTPC_ERR_TIMEOUT;
	/* else the response is complete and the finish event is already
	 * active: deliver what arrived. */
	call_deliver(k);
}

static void on_error(enum evhttp_request_error e, void *arg)
{
	struct httpc_call *k = arg;
	switch (e) {
	case EVREQ_HTTP_TIMEOUT: k->err = HTTPC_ERR_TIMEOUT; break;
	case EVREQ_HTTP_EOF: k->err = HTTPC_ERR_IO; break;
	case EVREQ_HTTP_INVALID_HEADER: k->err = HTTPC_ERR_PROTOCOL; break;
	case EVREQ_HTTP_DATA_TOO_LONG: k->err = HTTPC_ERR_TOO_LARGE; break;
	default: k->err = HTTPC_ERR_IO; break;
	}
}

/* libevent's request callback: req is NULL (or has no status) on failure. */
static void on_done(struct evhttp_request *req, void *arg)
{
	struct httpc_call *k = arg;
	k->req = NULL; /* libevent frees it after we return */
	int code = req ? evhttp_request_get_response_code(req) : 0;
	if (code <= 0) {
		if (k->err == HTTPC_OK)
			k->err = HTTPC_ERR_CONNECT; /* connect failures come without an error callback */
	} else {
		k->err = HTTPC_OK;
		k->status = code;
		struct evkeyvalq *hdrs = evhttp_request_get_input_headers(req);
		const char *ra = hdrs ? evhttp_find_header(hdrs, "Retry-After") : NULL;
		if (ra && !(k->retry_after = strdup(ra)))
			k->err = HTTPC_ERR_NOMEM;
		struct evbuffer *in = evhttp_request_get_input_buffer(req);
		size_t n = in ? evbuffer_get_length(in) : 0;
		if (k->err == HTTPC_OK) {
			k->body = malloc(n + 1);
			if (!k->body) {
				k->err = HTTPC_ERR_NOMEM;
			} else {
				if (n && evbuffer_remove(in, k->body, n) != (int)n)
					k->err = HTTPC_ERR_IO;
				k->body[n] = '\0';
				k->body_len = n;
			}
		}
	}
	evtimer_del(k->timer);
	event_active(k->finish, EV_TIMEOUT, 1);
}

static int is_numeric_host(const char *h)
{
	unsigned char buf[sizeof(struct in6_addr)];
	return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

/* Split url into host, port and request target. */
static int parse_url(const char *url, char *host, size_t hostlen, int *port, char *target, size_t targetlen)
{
	struct evhttp_uri *u = evhttp_uri_parse(url);
	if (!u)
		return HTTPC_ERR_URL;
	int rc = HTTPC_OK;
	const char *scheme = evhttp_uri_get_scheme(u);
	const char *h = evhttp_uri_get_host(u);
	const char *path = evhttp_uri_get_path(u);
	const char *query = evhttp_uri_get_query(u);
	if (!scheme) {
		rc = HTTPC_ERR_URL;
	} else if (strcasecmp(scheme, "http") != 0) {
		rc = strcasecmp(scheme, "https") == 0 ? HTTPC_ERR_UNSUPPORTED : HTTPC_ERR_URL;
	} else if (!h || !h[0] || evhttp_uri_get_userinfo(u)) {
		rc = HTTPC_ERR_URL;
	} else {
		int p = evhttp_uri_get_port(u);
		*port = p < 0 ? 80 : p;
		if (*port <= 0 || *port > 65535)
			rc = HTTPC_ERR_URL;
		int n = snprintf(host, hostlen, "%s", h);
		if (n < 0 || (size_t)n >= hostlen)
			rc = HTTPC_ERR_URL;
		n = snprintf(target, targetlen, "%s%s%s%s", path && path[0] == '/' ? "" : "/", path ? path : "",
		             query ? "?" : "", query ? query : "");
		if (n < 0 || (size_t)n >= targetlen)
			rc = HTTPC_ERR_URL;
	}
	evhttp_uri_free(u);
	return rc;
}

int httpc_start(struct httpc *hc, const struct httpc_request *r, httpc_cb cb, void *ud, struct httpc_call **out)
{
	if (out)
		*out = NULL;
	if (!hc || !r || !r->url || !cb || (r->method != HTTPC_GET && r->method != HTTPC_POST))
		return HTTPC_ERR_URL;
	char host[256];
	char target[4096];
	int port = 80;
	int rc = parse_url(r->url, host, sizeof(host), &port, target, sizeof(target));
	if (rc != HTTPC_OK)
		return rc;
	if (!is_numeric_host(host) && !hc->dns) {
		hc->dns =
		    evdns_base_new(hc->base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
		if (!hc->dns)
			return HTTPC_ERR_NOMEM;
	}
	struct httpc_call *k = calloc(1, sizeof(*k));
	if (!k)
		return HTTPC_ERR_NOMEM;
	k->hc = hc;
	k->cb = cb;
	k->ud = ud;
	hc->inflight++;
	k->next = hc->calls;
	if (hc->calls)
		hc->calls->prev = k;
	hc->calls = k;

	uint64_t tmo = r->timeout_ms ? r->timeout_ms : HTTPC_TIMEOUT_DEFAULT_MS;
	struct timeval tv = {(time_t)(tmo / 1000), (suseconds_t)((tmo % 1000) * 1000)};
	size_t max_body = r->max_body ? r->max_body : HTTPC_MAX_BODY_DEFAULT;
	char hosthdr[300];
	int v6 = strchr(host, ':') != NULL;
	if (port == 80)
		snprintf(hosthdr, sizeof(hosthdr), v6 ? "[%s]" : "%s", host);
	else
		snprintf(hosthdr, sizeof(hosthdr), v6 ? "[%s]:%d" : "%s:%d", host, port);

	k->timer = evtimer_new(hc->base, on_timeout, k);
	k->finish = event_new(hc->base, -1, 0, on_finish, k);
	k->conn =
	    evhttp_connection_base_new(hc->base, is_numeric_host(host) ? NULL : hc->dns, host, (unsigned short)port);
	k->req = k->conn ? evhttp_request_new(on_done, k) : NULL;
	if (!k->timer || !k->finish || !k->req)
		goto nomem;
	evhttp_connection_set_timeout_tv(k->conn, &tv);
	evhttp_connection_set_retries(k->conn, 0);
	evhttp_connection_set_max_body_size(k->conn, (ev_ssize_t)max_body);
	evhttp_connection_set_max_headers_size(k->conn, HTTPC_MAX_HEADERS_BYTES);
	evhttp_request_set_error_cb(k->req, on_error);

	struct evkeyvalq *h = evhttp_request_get_output_headers(k->req);
	int bad = evhttp_add_header(h, "Host", hosthdr) | evhttp_add_header(h, "Accept", "application/json") |
	          evhttp_add_header(h, "Connection", "close") | evhttp_add_header(h, "User-Agent", "resild");
	if (r->bearer && r->bearer[0]) {
		size_t bl = strlen(r->bearer);
		char *auth = malloc(bl + 8);
		if (!auth) {
			bad = -1;
		} else {
			memcpy(auth, "Bearer ", 7);
			memcpy(auth + 7, r->bearer, bl + 1);
			bad |= evhttp_add_header(h, "Authorization", auth);
			free(auth);
		}
	}
	for (size_t i = 0; i < r->nheaders && !bad; i++) {
		const struct httpc_header *x = &r->headers[i];
		if (!x->name || !x->name[0] || !x->value)
			bad = -1;
		else
			bad |= evhttp_add_header(h, x->name, x->value);
	}
	if (r->method == HTTPC_POST) {
		char cl[24];
		snprintf(cl, sizeof(cl), "%zu", r->body_len);
		bad |= evhttp_add_header(h, "Content-Type", "application/json");
		bad |= evhttp_add_header(h, "Content-Length", cl);
		if (r->body_len && evbuffer_add(evhttp_request_get_output_buffer(k->req), r->body, r->body_len) < 0)
			bad = -1;
	}
	if (bad) {
		/* A header with CR/LF in it (a bearer from a bad config, a bad
		 * extra header) or OOM. */
		evhttp_request_free(k->req);
		k->req = NULL;
		call_release(k);
		call_free(k);
		return HTTPC_ERR_URL;
	}
	if (evtimer_add(k->timer, &tv) < 0)
		goto nomem;
	struct evhttp_request *req = k->req;
	if (evhttp_make_request(k->conn, req, r->method == HTTPC_POST ? EVHTTP_REQ_POST : EVHTTP_REQ_GET, target) < 0) {
		k->req = NULL; /* freed by evhttp_make_request */
		call_release(k);
		call_free(k);
		return HTTPC_ERR_NOMEM;
	}
	if (out)
		*out = k;
	return HTTPC_OK;
nomem:
	if (k->req)
		evhttp_request_free(k->req);
	k->req = NULL;
	call_release(k);
	call_free(k);
	return HTTPC_ERR_NOMEM;
}

void httpc_cancel(struct httpc_call *k)
{
	if (!k)
		return;
	call_release(k);
	call_free(k);
}

void httpc_free(struct httpc *hc)
{
	if (!hc)
		return;
	while (hc->calls)
		httpc_cancel(hc->calls);
	if (hc->dns)
		evdns_base_free(hc->dns, 0);
	free(hc);
}
