/* http.c - HTTP/1.1 connections: accept, parse (llhttp, strict), dispatch
 * one request at a time per connection, write responses in order.
 *
 * Lifecycle of a connection: accepted -> waiting for a request (header
 * timer armed) -> request dispatched (parser paused, reads still buffered
 * but not parsed) -> response queued -> next pipelined request or idle
 * (keep-alive timer) -> closed. Framing errors are answered with a JSON
 * 400/413/414/431 and the connection is closed after the response, so a
 * smuggled second request is never parsed.
 *
 * One file on purpose (~1,700 lines): the connection state machine, the
 * parser callbacks, the output bounds and the drain all act on the same
 * struct http_conn in the same few states; split, every piece would need
 * the others' invariants.
 */
#include "autoconfig.h"

#include "clock.h"
#include "http.h"

#include "cidr.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

struct arena_block {
	struct arena_block *next;
	size_t cap, used;
	char data[];
};

enum conn_state { CONN_IDLE, CONN_READING, CONN_DISPATCHED, CONN_CLOSING, CONN_LINGERING };

/* How long an errored connection keeps draining unread input before the
 * close, so the client sees the error response instead of a reset. */
#define LINGER_MS 2000

struct http_conn {
	struct http_server *server;
	evutil_socket_t fd;
	struct event *rev, *wev, *timer;
	struct evbuffer *in, *out;
	int reading, writing; /* rev / wev added */
	int in_process;       /* inside conn_process(): defer frees */
	int dead;             /* conn_free() ran; destroy when safe */
	int eof;              /* the client half-closed */
	llhttp_t parser;
	struct http_request *req; /* being parsed or dispatched */
	struct http_conn *prev, *next;
	int state;
	int close_after; /* close once output is flushed */
	int served;      /* requests dispatched on this connection */
	int linger;      /* after an error: half-close and drain input first */
	int err_status;  /* protocol error found by a callback */
	const char *err_code, *err_msg;
	int in_header_value; /* llhttp field/value tracking */
	int host_count;
	int content_length_seen;
	int expect_continue;
	int out_paused; /* output over HTTP_OUTPUT_HIGH: not reading or parsing */
	int resume;     /* output fell below HTTP_OUTPUT_LOW: parse again */
	int more;       /* yielded after REQUESTS_PER_TURN with input left */
	char remote_ip[64];
};

struct http_server {
	struct event_base *base;
	struct evconnlistener *listener;
	struct http_server_opts opts;
	llhttp_settings_t settings;
	struct http_conn *conns; /* list of open connections */
	struct http_stats stats;
	const struct timeval *tv_header, *tv_keepalive, *tv_body;
	struct timeval tv_header_raw, tv_keepalive_raw, tv_body_raw;
	int draining;
	void (*on_drained)(void *ud);
	void *drained_ud;
	struct event *drain_ev;
	struct event *drain_timer;      /* drain timeout: close what is left */
	struct event *accept_retry;     /* re-enable the listener after an accept error */
	struct http_request *free_reqs; /* small cache of request structs */
	size_t fixed_len;               /* strlen(opts.fixed_headers), once */
	int nfree_reqs;
};

#define REQ_CACHE_MAX 64

static void conn_free(struct http_conn *c);
static void conn_process(struct http_conn *c);
static void conn_write_error(struct http_conn *c, int status, const char *code, const char *msg);
static void server_check_drained(struct http_server *s);
static void conn_start_linger(struct http_conn *c);
static void conn_destroy(struct http_conn *c);
static int conn_flush(struct http_conn *c);

/* ---------------------------------------------------------------- time */

static uint64_t now_ns(void)
{
	return clock_mono_ns();
}

static __thread time_t date_sec = -1;
static __thread char date_line[64];
static __thread size_t date_len;

const char *http_date_header(size_t *len)
{
	time_t t = time(NULL);
	if (t != date_sec) {
		struct tm tm;
		gmtime_r(&t, &tm);
		date_len = strftime(date_line, sizeof(date_line), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
		date_sec = t;
	}
	*len = date_len;
	return date_line;
}

/* --------------------------------------------------------------- arena */

void *http_alloc(struct http_request *req, size_t n)
{
	n = (n + 15u) & ~(size_t)15u;
	if (n <= sizeof(req->arena) - req->arena_used) {
		void *p = req->arena + req->arena_used;
		req->arena_used += n;
		return p;
	}
	struct arena_block *b = req->arena_more;
	if (b && n <= b->cap - b->used) {
		void *p = b->data + b->used;
		b->used += n;
		return p;
	}
	size_t cap = n > 8192 ? n : 8192;
	if (cap > SIZE_MAX - sizeof(*b))
		return NULL;
	b = malloc(sizeof(*b) + cap);
	if (!b)
		return NULL;
	b->cap = cap;
	b->used = n;
	b->next = req->arena_more;
	req->arena_more = b;
	return b->data;
}

char *http_strndup(struct http_request *req, const char *s, size_t n)
{
	if (n == SIZE_MAX)
		return NULL;
	char *p = http_alloc(req, n + 1);
	if (!p)
		return NULL;
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

/* ------------------------------------------------------------- request */

static struct http_request *request_new(struct http_server *s, struct http_conn *c)
{
	struct http_request *r = s->free_reqs;
	if (r) {
		s->free_reqs = (struct http_request *)r->app_data[0];
		s->nfree_reqs--;
	} else {
		r = malloc(sizeof(*r));
		if (!r)
			return NULL;
	}
	/* Clear the fixed part only; hbuf and arena are written before read. */
	memset(r, 0, offsetof(struct http_request, hbuf));
	r->hlen = 0;
	r->arena_more = NULL;
	r->arena_used = 0;
	r->body_cap = 0;
	r->conn = c;
	r->server = s;
	r->start_ns = now_ns();
	r->res.status = 200;
	return r;
}

static void request_free(struct http_request *r)
{
	if (r->on_free) {
		void (*fn)(struct http_request *) = r->on_free;
		r->on_free = NULL;
		fn(r);
	}
	free(r->body);
	if (r->res.body)
		evbuffer_free(r->res.body);
	struct arena_block *b = r->arena_more;
	while (b) {
		struct arena_block *n = b->next;
		free(b);
		b = n;
	}
	struct http_server *s = r->server;
	if (s && s->nfree_reqs < REQ_CACHE_MAX) {
		r->app_data[0] = s->free_reqs;
		s->free_reqs = r;
		s->nfree_reqs++;
	} else {
		free(r);
	}
}

const char *http_header_get(const struct http_request *req, const char *name, size_t *len)
{
	size_t nl = strlen(name);
	for (int i = 0; i < req->nheaders; i++) {
		const struct http_header *h = &req->headers[i];
		if (h->name_len == nl && strncasecmp(h->name, name, nl) == 0) {
			if (len)
				*len = h->value_len;
			return h->value;
		}
	}
	return NULL;
}

static int header_count(const struct http_request *req, const char *name)
{
	size_t nl = strlen(name);
	int n = 0;
	for (int i = 0; i < req->nheaders; i++)
		if (req->headers[i].name_len == nl && strncasecmp(req->headers[i].name, name, nl) == 0)
			n++;
	return n;
}

/* ------------------------------------------------------- llhttp callbacks */

static int hbuf_append(struct http_conn *c, const char *at, size_t len, int status, const char *code)
{
	struct http_request *r = c->req;
	if (len > HTTP_MAX_HEADER_BYTES - r->hlen) {
		c->err_status = status;
		c->err_code = code;
		c->err_msg = status == 414 ? "request uri too long" : "request header fields too large";
		return -1;
	}
	memcpy(r->hbuf + r->hlen, at, len);
	r->hlen += len;
	return 0;
}

static int on_message_begin(llhttp_t *p)
{
	struct http_conn *c = p->data;
	if (!c->req) {
		c->req = request_new(c->server, c);
		if (!c->req) {
			c->err_status = 503;
			return -1;
		}
		memcpy(c->req->remote_ip, c->remote_ip, sizeof(c->remote_ip));
		memcpy(c->req->peer_ip, c->remote_ip, sizeof(c->remote_ip));
	}
	c->state = CONN_READING;
	c->in_header_value = 0;
	c->host_count = 0;
	c->content_length_seen = 0;
	c->expect_continue = 0;
	/* The header timer started at accept or when the connection became
	 * idle; it keeps running until the headers are complete. */
	return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
	struct http_conn *c = p->data;
	if (c->req->hlen + len > HTTP_MAX_URL_BYTES) {
		c->err_status = 414;
		c->err_code = "URI_TOO_LONG";
		c->err_msg = "request uri too long";
		return -1;
	}
	return hbuf_append(c, at, len, 431, "HEADERS_TOO_LARGE");
}

static int on_url_complete(llhttp_t *p)
{
	struct http_conn *c = p->data;
	struct http_request *r = c->req;
	r->url_len = r->hlen;
	if (hbuf_append(c, "", 1, 431, "HEADERS_TOO_LARGE") < 0)
		return -1;
	r->url = r->hbuf;
	return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
	struct http_conn *c = p->data;
	struct http_request *r = c->req;
	if (c->in_header_value || r->nheaders == 0 || r->headers[r->nheaders - 1].value) {
		/* A new header starts. */
		if (r->nheaders >= HTTP_MAX_HEADERS) {
			c->err_status = 431;
			c->err_code = "HEADERS_TOO_LARGE";
			c->err_msg = "too many request header fields";
			return -1;
		}
		r->headers[r->nheaders].name = r->hbuf + r->hlen;
		r->headers[r->nheaders].name_len = 0;
		r->headers[r->nheaders].value = NULL;
		r->headers[r->nheaders].value_len = 0;
		r->nheaders++;
		c->in_header_value = 0;
	}
	if (hbuf_append(c, at, len, 431, "HEADERS_TOO_LARGE") < 0)
		return -1;
	r->headers[r->nheaders - 1].name_len += (uint16_t)len;
	return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
	struct http_conn *c = p->data;
	struct http_request *r = c->req;
	if (hbuf_append(c, "", 1, 431, "HEADERS_TOO_LARGE") < 0)
		return -1;
	r->headers[r->nheaders - 1].value = r->hbuf + r->hlen;
	c->in_header_value = 1;
	return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
	struct http_conn *c = p->data;
	struct http_request *r = c->req;
	if (hbuf_append(c, at, len, 431, "HEADERS_TOO_LARGE") < 0)
		return -1;
	r->headers[r->nheaders - 1].value_len += (uint16_t)len;
	return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
	struct http_conn *c = p->data;
	struct http_request *r = c->req;
	struct http_header *h = &r->headers[r->nheaders - 1];
	if (hbuf_append(c, "", 1, 431, "HEADERS_TOO_LARGE") < 0)
		return -1;
	/* llhttp leaves these framing checks to the server (RFC 9112). */
	for (size_t i = 0; i < h->value_len; i++) {
		unsigned char ch = (unsigned char)h->value[i];
		if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
			c->err_status = 400;
			c->err_code = "BAD_REQUEST";
			c->err_msg = "invalid character in header value";
			return -1;
		}
	}
	c->in_header_value = 0;
	return 0;
}

static int valid_request_id(const char *v, size_t n)
{
	if (n < 1 || n > 128)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)v[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
		      ch == '_' || ch == '-'))
			return 0;
	}
	return 1;
}

static int is_lower_hex(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return 1;
}

/* W3C traceparent: "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>". */
static void parse_traceparent(struct http_request *r, const char *v, size_t n)
{
	if (n < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-')
		return;
	if (!is_lower_hex(v, 2) || !is_lower_hex(v + 3, 32) || !is_lower_hex(v + 36, 16))
		return;
	if (memcmp(v, "ff", 2) == 0 || memcmp(v + 3, "00000000000000000000000000000000", 32) == 0)
		return;
	memcpy(r->trace_id, v + 3, 32);
	r->trace_id[32] = '\0';
}

/* Every value of a repeated header joined with ", " (RFC 9110 5.3), in
 * the arena; NULL when absent. */
static const char *header_joined(struct http_request *r, const char *name, size_t *len)
{
	size_t nl = strlen(name), total = 0;
	int n = 0;
	for (int i = 0; i < r->nheaders; i++)
		if (r->headers[i].name_len == nl && strncasecmp(r->headers[i].name, name, nl) == 0) {
			total += r->headers[i].value_len + 2;
			n++;
		}
	if (n == 0)
		return NULL;
	if (n == 1)
		return http_header_get(r, name, len);
	char *out = http_alloc(r, total + 1), *w = out;
	if (!out)
		return NULL;
	for (int i = 0; i < r->nheaders; i++)
		if (r->headers[i].name_len == nl && strncasecmp(r->headers[i].name, name, nl) == 0) {
			if (w != out) {
				*w++ = ',';
				*w++ = ' ';
			}
			memcpy(w, r->headers[i].value, r->headers[i].value_len);
			w += r->headers[i].value_len;
		}
	*w = '\0';
	*len = (size_t)(w - out);
	return out;
}

/* Behind a trusted proxy the client address is the one it forwarded. */
static void resolve_client_address(struct http_request *r, const struct cidr_list *trusted)
{
	size_t xl = 0, fl = 0;
	const char *xff = header_joined(r, "x-forwarded-for", &xl);
	const char *fwd = header_joined(r, "forwarded", &fl);
	char client[CIDR_ADDRSTRLEN];
	cidr_client_address(trusted, r->peer_ip, xff, xff ? xl : 0, fwd, fwd ? fl : 0, client);
	snprintf(r->remote_ip, sizeof(r->remote_ip), "%s", client);
}

/* The smaller of the server's body limit and the request's own. */
static int64_t request_body_limit(const struct http_request *r)
{
	int64_t limit = r->server->opts.body_limit;
	if (r->body_limit > 0 && (limit <= 0 || r->body_limit < limit))
		limit = r->body_limit;
	return limit;
}

static int on_headers_complete(llhttp_t *p)
{
	struct http_conn *c = p->data;
	struct http_request *r = c->req;
	struct http_server *s = c->server;

	r->http_minor = p->http_minor;
	r->method = HTTP_M_OTHER;
	switch (p->method) {
	case HTTP_GET: r->method = HTTP_M_GET; break;
	case HTTP_HEAD: r->method = HTTP_M_HEAD; break;
	case HTTP_POST: r->method = HTTP_M_POST; break;
	case HTTP_PUT: r->method = HTTP_M_PUT; break;
	case HTTP_PATCH: r->method = HTTP_M_PATCH; break;
	case HTTP_DELETE: r->method = HTTP_M_DELETE; break;
	case HTTP_OPTIONS: r->method = HTTP_M_OPTIONS; break;
	default: break;
	}
	r->method_name = llhttp_method_name((llhttp_method_t)p->method);

	/* Split the target into path and query. */
	const char *q = memchr(r->url, '?', r->url_len);
	r->path = r->url;
	r->path_len = q ? (size_t)(q - r->url) : r->url_len;
	r->query = q ? q + 1 : r->url + r->url_len;
	r->query_len = q ? r->url_len - r->path_len - 1 : 0;
	if (r->path_len == 0 || r->path[0] != '/') {
		/* Absolute-form and asterisk-form are not served here. */
		if (!(r->method == HTTP_M_OPTIONS && r->url_len == 1 && r->url[0] == '*')) {
			c->err_status = 400;
			c->err_code = "BAD_REQUEST";
			c->err_msg = "invalid request target";
			return -1;
		}
	}
	/* Make path NUL-terminated without copying: copy into the arena. */
	if (q) {
		char *pp = http_strndup(r, r->path, r->path_len);
		if (!pp) {
			c->err_status = 503;
			return -1;
		}
		r->path = pp;
	}

	int hosts = header_count(r, "host");
	if ((p->http_major == 1 && p->http_minor == 1 && hosts != 1) || hosts > 1) {
		c->err_status = 400;
		c->err_code = "BAD_REQUEST";
		c->err_msg = hosts ? "multiple host headers" : "missing host header";
		return -1;
	}

	size_t vl;
	const char *v = http_header_get(r, "x-request-id", &vl);
	if (v && valid_request_id(v, vl)) {
		memcpy(r->request_id, v, vl);
		r->request_id[vl] = '\0';
	} else {
		http_uuid4(r->request_id);
	}
	v = http_header_get(r, "traceparent", &vl);
	if (v)
		parse_traceparent(r, v, vl);
	if (s->opts.trust_proxy && s->opts.trust_proxy->n > 0)
		resolve_client_address(r, s->opts.trust_proxy);

	r->has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
	r->keep_alive = llhttp_should_keep_alive(p);
	if (r->has_body && s->opts.on_headers && s->opts.on_headers(r, s->opts.ud) == HTTP_HEADERS_SKIP_BODY) {
		/* Refused from the headers alone: dispatch now, never read the
		 * body, and end the connection after the answer (the unread body
		 * is what follows in the stream). */
		r->body_skipped = 1;
		r->keep_alive = 0;
		c->close_after = 1;
		c->linger = 1;
		c->state = CONN_DISPATCHED;
		evtimer_del(c->timer);
		return HPE_PAUSED;
	}
	int64_t limit = request_body_limit(r);
	if ((p->flags & F_CONTENT_LENGTH) && limit > 0 && p->content_length > (uint64_t)limit) {
		c->err_status = 413;
		c->err_code = "PAYLOAD_TOO_LARGE";
		c->err_msg = "request body too large";
		return -1;
	}

	v = http_header_get(r, "expect", &vl);
	if (v) {
		if (vl == 12 && strncasecmp(v, "100-continue", 12) == 0) {
			if (r->has_body && r->http_minor >= 1)
				evbuffer_add(c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
		} else {
			c->err_status = 417;
			c->err_code = "EXPECTATION_FAILED";
			c->err_msg = "expectation failed";
			return -1;
		}
	}

	/* Headers are complete: the slowloris timer becomes a body timer. */
	if (r->has_body)
		evtimer_add(c->timer, s->tv_body);
	else
		evtimer_del(c->timer);
	return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
	struct http_conn *c = p->data;
	struct http_request *r = c->req;
	int64_t limit = request_body_limit(r);
	if (limit > 0 && (uint64_t)r->body_len + len > (uint64_t)limit) {
		c->err_status = 413;
		c->err_code = "PAYLOAD_TOO_LARGE";
		c->err_msg = "request body too large";
		return -1;
	}
	if (r->body_len + len + 1 > r->body_cap) {
		size_t cap = r->body_cap ? r->body_cap : 1024;
		while (cap < r->body_len + len + 1) {
			if (cap > SIZE_MAX / 2)
				return -1;
			cap *= 2;
		}
		char *nb = realloc(r->body, cap);
		if (!nb) {
			c->err_status = 503;
			return -1;
		}
		r->body = nb;
		r->body_cap = cap;
	}
	memcpy(r->body + r->body_len, at, len);
	r->body_len += len;
	r->body[r->body_len] = '\0';
	return 0;
}

static int on_message_complete(llhttp_t *p)
{
	struct http_conn *c = p->data;
	c->state = CONN_DISPATCHED;
	evtimer_del(c->timer);
	/* Stop parsing here: the next pipelined request waits for this
	 * response. */
	return HPE_PAUSED;
}

/* ------------------------------------------------------------ responses */

const char *http_status_text(int st)
{
	switch (st) {
	case 100: return "Continue";
	case 101: return "Switching Protocols";
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 204: return "No Content";
	case 301: return "Moved Permanently";
	case 302: return "Found";
	case 304: return "Not Modified";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 413: return "Payload Too Large";
	case 414: return "URI Too Long";
	case 415: return "Unsupported Media Type";
	case 417: return "Expectation Failed";
	case 422: return "Unprocessable Entity";
	case 426: return "Upgrade Required";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 499: return "Client Closed Request"; /* nginx's: never seen by the client */
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default: return "Unknown";
	}
}

void http_set_status(struct http_request *req, int status)
{
	req->res.status = status;
}

static int header_safe(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
			return 0;
	return 1;
}

int http_add_headern(struct http_request *req, const char *name, const char *value, size_t vlen)
{
	size_t nl = strlen(name);
	if (!header_safe(name, nl) || !header_safe(value, vlen))
		return -1;
	struct http_response *res = &req->res;
	size_t need = nl + 2 + vlen + 2;
	if (res->headers_len + need > res->headers_cap) {
		size_t cap = res->headers_cap ? res->headers_cap * 2 : 512;
		while (cap < res->headers_len + need)
			cap *= 2;
		char *nb = http_alloc(req, cap);
		if (!nb)
			return -1;
		if (res->headers_len)
			memcpy(nb, res->headers, res->headers_len);
		res->headers = nb;
		res->headers_cap = cap;
	}
	char *w = res->headers + res->headers_len;
	memcpy(w, name, nl);
	w += nl;
	*w++ = ':';
	*w++ = ' ';
	memcpy(w, value, vlen);
	w += vlen;
	*w++ = '\r';
	*w++ = '\n';
	res->headers_len += need;
	return 0;
}

int http_add_header(struct http_request *req, const char *name, const char *value)
{
	return http_add_headern(req, name, value, strlen(value));
}

struct evbuffer *http_body(struct http_request *req)
{
	if (!req->res.body)
		req->res.body = evbuffer_new();
	return req->res.body;
}

int http_accepts_gzip(const char *v, size_t len)
{
	/* Look for a "gzip" (or "*") coding whose q is not zero. */
	size_t i = 0;
	while (i < len) {
		while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		size_t start = i;
		while (i < len && v[i] != ',' && v[i] != ';' && v[i] != ' ' && v[i] != '\t')
			i++;
		size_t tl = i - start;
		int match = (tl == 4 && strncasecmp(v + start, "gzip", 4) == 0) || (tl == 1 && v[start] == '*');
		double q = 1.0;
		while (i < len && v[i] != ',') {
			if (v[i] == ';') {
				i++;
				while (i < len && (v[i] == ' ' || v[i] == '\t'))
					i++;
				if (i + 1 < len && (v[i] == 'q' || v[i] == 'Q') && v[i + 1] == '=') {
					char num[16];
					size_t k = 0;
					i += 2;
					while (i < len && k < sizeof(num) - 1 &&
					       ((v[i] >= '0' && v[i] <= '9') || v[i] == '.'))
						num[k++] = v[i++];
					num[k] = '\0';
					q = k ? strtod(num, NULL) : 0.0;
				}
			} else {
				i++;
			}
		}
		if (match && q > 0.0)
			return 1;
	}
	return 0;
}

int http_gzip(struct evbuffer *src, struct evbuffer *dst)
{
	z_stream zs;
	memset(&zs, 0, sizeof(zs));
	if (deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		return -1;
	size_t inlen = evbuffer_get_length(src);
	unsigned char *in = evbuffer_pullup(src, -1);
	if (!in && inlen) {
		deflateEnd(&zs);
		return -1;
	}
	uLong bound = deflateBound(&zs, (uLong)inlen);
	struct evbuffer_iovec iov;
	if (evbuffer_reserve_space(dst, bound, &iov, 1) < 1) {
		deflateEnd(&zs);
		return -1;
	}
	zs.next_in = in;
	zs.avail_in = (uInt)inlen;
	zs.next_out = iov.iov_base;
	zs.avail_out = (uInt)iov.iov_len;
	int rc = deflate(&zs, Z_FINISH);
	if (rc != Z_STREAM_END) {
		deflateEnd(&zs);
		iov.iov_len = 0;
		evbuffer_commit_space(dst, &iov, 1);
		return -1;
	}
	iov.iov_len = zs.total_out;
	evbuffer_commit_space(dst, &iov, 1);
	deflateEnd(&zs);
	return 0;
}

/* Request ids need uniqueness, not secrecy: draw them from a pool of
 * random bytes refilled from libsodium 4 KiB at a time (one getrandom
 * instead of one per request). The pool is emptied in a forked child so
 * that workers never share ids. */
static __thread unsigned char uuid_pool[4096];
static __thread size_t uuid_pool_left;
static int uuid_atfork_set;

static void uuid_pool_reset(void)
{
	uuid_pool_left = 0;
}

void http_uuid4(char out[37])
{
	static const char hex[] = "0123456789abcdef";
	if (!uuid_atfork_set) {
		uuid_atfork_set = 1;
		pthread_atfork(NULL, NULL, uuid_pool_reset);
	}
	if (uuid_pool_left < 16) {
		randombytes_buf(uuid_pool, sizeof(uuid_pool));
		uuid_pool_left = sizeof(uuid_pool);
	}
	unsigned char *b = uuid_pool + sizeof(uuid_pool) - uuid_pool_left;
	uuid_pool_left -= 16;
	b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
	b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
	int k = 0;
	for (int i = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out[k++] = '-';
		out[k++] = hex[b[i] >> 4];
		out[k++] = hex[b[i] & 15];
	}
	out[k] = '\0';
}

static void append_json_string(struct evbuffer *b, const char *s)
{
	evbuffer_add(b, "\"", 1);
	for (const char *p = s; *p; p++) {
		unsigned char ch = (unsigned char)*p;
		if (ch == '"' || ch == '\\') {
			char e[2] = {'\\', (char)ch};
			evbuffer_add(b, e, 2);
		} else if (ch < 0x20) {
			char e[8];
			snprintf(e, sizeof(e), "\\u%04x", ch);
			evbuffer_add(b, e, 6);
		} else {
			evbuffer_add(b, p, 1);
		}
	}
	evbuffer_add(b, "\"", 1);
}

void http_send_error(struct http_request *req, int status, const char *code, const char *message)
{
	struct evbuffer *b = http_body(req);
	if (b) {
		evbuffer_drain(b, evbuffer_get_length(b));
		evbuffer_add_printf(b, "{\"success\":false,\"error\":");
		append_json_string(b, message);
		evbuffer_add_printf(b, ",\"code\":\"%s\",\"requestId\":", code);
		append_json_string(b, req->request_id);
		evbuffer_add(b, "}", 1);
	}
	req->res.status = status;
	req->res.content_type = NULL;
	http_send(req);
}

static size_t fmt_u64(char *out, uint64_t v)
{
	char tmp[24];
	int i = sizeof(tmp);
	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	size_t n = sizeof(tmp) - (size_t)i;
	memcpy(out, tmp + i, n);
	return n;
}

#define PUT(lit)                                                                                                       \
	do {                                                                                                           \
		memcpy(w, lit, sizeof(lit) - 1);                                                                       \
		w += sizeof(lit) - 1;                                                                                  \
	} while (0)

/* Append the status line and headers; returns bytes queued. The head is
 * assembled in one stack buffer (no printf on the hot path) and added with
 * one copy; the fixed and extra header blocks follow. */
static size_t write_head(struct http_request *r, struct evbuffer *out, size_t body_len, int gz, int close)
{
	struct http_server *s = r->server;
	char head[1024];
	char *w = head;
	int st = r->res.status;
	if (st < 100 || st > 999)
		st = 500;
	PUT("HTTP/1.1 ");
	*w++ = (char)('0' + st / 100);
	*w++ = (char)('0' + st / 10 % 10);
	*w++ = (char)('0' + st % 10);
	*w++ = ' ';
	const char *reason = http_status_text(st);
	size_t rl = strlen(reason);
	memcpy(w, reason, rl);
	w += rl;
	PUT("\r\n");
	size_t dl;
	const char *d = http_date_header(&dl);
	memcpy(w, d, dl);
	w += dl;
	if (st != 204 && st != 304 && !(st >= 100 && st < 200)) {
		const char *ct = r->res.content_type;
		if (ct && strlen(ct) < 200) {
			PUT("Content-Type: ");
			size_t cl = strlen(ct);
			memcpy(w, ct, cl);
			w += cl;
			PUT("\r\n");
		} else {
			PUT("Content-Type: application/json; charset=utf-8\r\n");
		}
		PUT("Content-Length: ");
		w += fmt_u64(w, body_len);
		PUT("\r\n");
	}
	if (gz)
		PUT("Content-Encoding: gzip\r\n");
	if (st != 101)
		PUT("Vary: Accept-Encoding\r\n"); /* any body may be compressed */
	PUT("X-Request-ID: ");
	size_t il = strnlen(r->request_id, sizeof(r->request_id) - 1);
	memcpy(w, r->request_id, il);
	w += il;
	PUT("\r\n");
	size_t total = (size_t)(w - head);
	evbuffer_add(out, head, total);
	if (s->opts.fixed_headers) {
		if (!s->fixed_len)
			s->fixed_len = strlen(s->opts.fixed_headers);
		evbuffer_add(out, s->opts.fixed_headers, s->fixed_len);
		total += s->fixed_len;
	}
	if (r->res.headers_len) {
		evbuffer_add(out, r->res.headers, r->res.headers_len);
		total += r->res.headers_len;
	}
	if (close) {
		evbuffer_add(out, "Connection: close\r\n\r\n", 21);
		total += 21;
	} else if (r->http_minor == 0) {
		evbuffer_add(out, "Connection: keep-alive\r\n\r\n", 26);
		total += 26;
	} else {
		evbuffer_add(out, "\r\n", 2);
		total += 2;
	}
	return total;
}
#undef PUT

#define SMALL_BODY 2048

void http_send(struct http_request *r)
{
	struct http_conn *c = r->conn;
	struct http_server *s = r->server;
	if (r->sent)
		return;
	r->sent = 1;
	if (!c) {
		/* The client went away while the application worked: nothing is
		 * sent, but the request is logged with the status it ended with. */
		s->stats.inflight--;
		if (s->opts.on_complete)
			s->opts.on_complete(r, 0, s->opts.ud);
		request_free(r);
		server_check_drained(s);
		return;
	}
	struct evbuffer *out = c->out;
	struct evbuffer *body = r->res.body;
	size_t body_len = body ? evbuffer_get_length(body) : 0;
	int st = r->res.status;
	if (st == 204 || st == 304 || (st >= 100 && st < 200)) {
		body_len = 0;
		if (body)
			evbuffer_drain(body, evbuffer_get_length(body));
	}
	int gz = 0;
	struct evbuffer *zbody = NULL;
	if (body_len >= HTTP_GZIP_MIN && !r->res.no_compress) {
		size_t al;
		const char *ae = http_header_get(r, "accept-encoding", &al);
		if (ae && http_accepts_gzip(ae, al)) {
			zbody = evbuffer_new();
			if (zbody && http_gzip(body, zbody) == 0) {
				gz = 1;
				body_len = evbuffer_get_length(zbody);
			} else if (zbody) {
				evbuffer_free(zbody);
				zbody = NULL;
			}
		}
	}
	/* A request that asked for an upgrade we did not perform leaves llhttp
	 * in upgrade mode: end the connection after answering it. */
	int close = !r->keep_alive || r->res.close || s->draining || c->close_after || c->eof || c->parser.upgrade;
	size_t bytes = write_head(r, out, body_len, gz, close);
	if (r->method != HTTP_M_HEAD && body_len) {
		struct evbuffer *b = gz ? zbody : body;
		unsigned char *flat;
		/* A small body is copied behind its head: moving its mostly empty
		 * chain would leave each queued response holding several times
		 * its size (what the output bound counts is bytes). */
		if (body_len <= SMALL_BODY && (flat = evbuffer_pullup(b, -1)) != NULL)
			evbuffer_add(out, flat, body_len);
		else
			evbuffer_add_buffer(out, b);
		bytes += body_len;
	}
	if (zbody)
		evbuffer_free(zbody);
	if (close)
		c->close_after = 1;
	s->stats.requests++;
	s->stats.inflight--;
	if (s->opts.on_complete)
		s->opts.on_complete(r, bytes, s->opts.ud);
	c->req = NULL;
	request_free(r);
	if (s->opts.on_stats)
		s->opts.on_stats(s->opts.ud);
	if (c->close_after) {
		c->state = CONN_CLOSING;
		if (!c->in_process)
			conn_flush(c);
		return;
	}
	c->state = CONN_IDLE;
	if (c->in_process)
		return; /* conn_process() continues with pipelined input */
	/* Answered later (after a job): parse what the client pipelined
	 * meanwhile, then write everything with one writev. */
	conn_process(c);
}

int http_takeover(struct http_request *r, const char *raw, size_t len, int *fd, struct evbuffer *leftover)
{
	struct http_conn *c = r->conn;
	struct http_server *s = r->server;
	if (!c || r->sent || c->state != CONN_DISPATCHED || c->in_process)
		return -1;
	/* Flush anything still queued (an earlier pipelined response) first. */
	while (evbuffer_get_length(c->out) > 0) {
		int n = evbuffer_write(c->out, c->fd);
		if (n <= 0)
			return -1;
	}
	size_t off = 0;
	while (off < len) {
		ssize_t n = send(c->fd, raw + off, len - off, MSG_NOSIGNAL);
		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			/* A fresh socket accepts a 101 head; if not, give up cleanly. */
			struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
			if (poll(&pfd, 1, 1000) > 0)
				continue;
		}
		return -1;
	}
	if (leftover)
		evbuffer_add_buffer(leftover, c->in);
	*fd = c->fd;
	r->sent = 1;
	s->stats.requests++;
	s->stats.inflight--;
	if (s->opts.on_complete)
		s->opts.on_complete(r, off, s->opts.ud);
	c->req = NULL;
	request_free(r);
	/* Release the connection without closing the socket. */
	c->fd = -1;
	conn_free(c);
	return 0;
}

/* A protocol error found before dispatch: answer it and close. */
static void conn_write_error(struct http_conn *c, int status, const char *code, const char *msg)
{
	struct http_server *s = c->server;
	if (!c->req) {
		c->req = request_new(s, c);
		if (!c->req) {
			conn_free(c);
			return;
		}
		memcpy(c->req->remote_ip, c->remote_ip, sizeof(c->remote_ip));
		memcpy(c->req->peer_ip, c->remote_ip, sizeof(c->remote_ip));
	}
	struct http_request *r = c->req;
	if (!r->request_id[0])
		http_uuid4(r->request_id);
	if (!r->method_name)
		r->method_name = "-";
	if (!r->path) {
		r->path = "-";
		r->url = "-";
	}
	r->http_minor = 1;
	r->keep_alive = 0;
	c->close_after = 1;
	c->linger = 1;
	/* Headers of a bad request cannot be trusted (no gzip). */
	r->nheaders = 0;
	c->state = CONN_DISPATCHED;
	s->stats.inflight++;
	http_send_error(r, status, code, msg);
}

/* ------------------------------------------------------------ connection
 *
 * Raw events instead of bufferevents: the read side reads into an evbuffer
 * without the FIONREAD ioctl libevent's evbuffer_read() issues, and the
 * write side writes responses directly with one writev and registers for
 * EV_WRITE only when the socket is full. Two syscalls per request instead
 * of four or five matters more than anything else at 100k requests/s.
 */

#define READ_CHUNK 16384
#define MAX_BUFFERED_INPUT (64 * 1024) /* unparsed input: stop reading beyond */
/* Pipelined requests answered in one turn before the other connections
 * get theirs: the rest waits for the socket to be writable again, which
 * goes through the event loop like any other event. */
#define REQUESTS_PER_TURN 64

static void conn_update_read(struct http_conn *c)
{
	int want =
	    c->state != CONN_CLOSING && !c->eof && !c->out_paused && evbuffer_get_length(c->in) < MAX_BUFFERED_INPUT;
	if (c->state == CONN_LINGERING)
		want = 1;
	if (want && !c->reading) {
		event_add(c->rev, NULL);
		c->reading = 1;
	} else if (!want && c->reading) {
		event_del(c->rev);
		c->reading = 0;
	}
}

/* Nothing is being parsed: wait for the client to take what is queued (a
 * send timeout, restarted on every progress) or, once it has, for its next
 * request (the keep-alive timeout). */
static void conn_wait_idle(struct http_conn *c)
{
	struct http_server *s = c->server;
	evtimer_add(c->timer, evbuffer_get_length(c->out) ? s->tv_body : s->tv_keepalive);
}

static int conn_waiting(const struct http_conn *c)
{
	return c->out_paused || (c->state == CONN_IDLE && evbuffer_get_length(c->in) == 0);
}

/* 1 if the client has sent bytes we have not read yet. */
static int conn_input_pending(const struct http_conn *c)
{
	char b;
	return c->fd >= 0 && recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 1;
}

/* Write what is queued. Returns -1 if the connection was freed. */
static int conn_flush(struct http_conn *c)
{
	while (evbuffer_get_length(c->out) > 0) {
		int n = evbuffer_write(c->out, c->fd);
		if (n > 0)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
			if (errno == EINTR)
				continue;
			if (!c->writing) {
				event_add(c->wev, NULL);
				c->writing = 1;
			}
			if (c->state == CONN_CLOSING)
				evtimer_add(c->timer, c->server->tv_body);
			if (c->out_paused && evbuffer_get_length(c->out) < HTTP_OUTPUT_LOW) {
				c->out_paused = 0;
				c->resume = 1;
			}
			return 0;
		}
		/* EPIPE, ECONNRESET: the client is gone. */
		conn_free(c);
		return -1;
	}
	if (c->writing) {
		event_del(c->wev);
		c->writing = 0;
	}
	if (c->out_paused) {
		c->out_paused = 0;
		c->resume = 1;
	}
	if (c->state == CONN_CLOSING) {
		/* Unread input (a request pipelined behind the one we answered
		 * with Connection: close) would make close() send a reset that
		 * can destroy our last response in flight: linger instead. */
		if (c->linger || evbuffer_get_length(c->in) > 0 || conn_input_pending(c))
			conn_start_linger(c);
		else
			conn_free(c);
		return -1;
	}
	return 0;
}

static void conn_process(struct http_conn *c)
{
	struct http_server *s = c->server;
	int turn = 0;
	c->more = 0;
	c->in_process++;
again:
	while (!c->dead && c->state != CONN_DISPATCHED && c->state != CONN_CLOSING) {
		size_t avail = evbuffer_get_length(c->in);
		if (avail == 0)
			break;
		if (c->state == CONN_IDLE && turn >= REQUESTS_PER_TURN) {
			c->more = 1;
			break;
		}
		if (c->state == CONN_IDLE && evbuffer_get_length(c->out) >= HTTP_OUTPUT_HIGH) {
			/* Output backpressure: the client does not read what it
			 * asked for. Give the socket what it takes; if the bound is
			 * still exceeded, stop reading and parsing this connection
			 * until the client drains it below HTTP_OUTPUT_LOW. */
			if (conn_flush(c) < 0)
				break;
			c->resume = 0;
			if (evbuffer_get_length(c->out) >= HTTP_OUTPUT_HIGH) {
				c->out_paused = 1;
				s->stats.paused++;
				break;
			}
		}
		struct evbuffer_iovec v;
		if (evbuffer_peek(c->in, -1, NULL, &v, 1) < 1)
			break;
		const char *data = v.iov_base;
		size_t len = v.iov_len;
		if (c->state == CONN_IDLE) {
			/* First bytes of a new request: the header deadline starts. */
			evtimer_add(c->timer, s->tv_header);
		}
		llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
		if (err == HPE_OK) {
			evbuffer_drain(c->in, len);
			continue;
		}
		if (err == HPE_PAUSED) {
			const char *pos = llhttp_get_error_pos(&c->parser);
			size_t used = pos ? (size_t)(pos - data) : len;
			evbuffer_drain(c->in, used);
			llhttp_resume(&c->parser);
			struct http_request *r = c->req;
			s->stats.inflight++;
			if (s->opts.on_stats)
				s->opts.on_stats(s->opts.ud);
			if (s->draining)
				r->res.close = 1;
			c->served++;
			turn++;
			s->opts.on_request(r, s->opts.ud);
			/* Answered synchronously: state is IDLE again and the loop
			 * goes on with pipelined input; otherwise we wait. */
			continue;
		}
		/* Protocol error. */
		int status = c->err_status ? c->err_status : 400;
		const char *code = c->err_code ? c->err_code : (status == 503 ? "SERVICE_UNAVAILABLE" : "BAD_REQUEST");
		const char *msg = c->err_msg ? c->err_msg : (status == 503 ? "service unavailable" : "bad request");
		if (err == HPE_PAUSED_UPGRADE) {
			status = 400;
			code = "BAD_REQUEST";
			msg = "protocol upgrade not supported here";
		}
		evbuffer_drain(c->in, evbuffer_get_length(c->in));
		conn_write_error(c, status, code, msg);
		break;
	}
	c->in_process--;
	if (c->dead) {
		if (!c->in_process)
			conn_destroy(c);
		return;
	}
	if (c->in_process)
		return;
	if (conn_flush(c) < 0)
		return;
	if (c->resume && !c->more) {
		/* The socket took enough of a paused connection's output. */
		c->resume = 0;
		c->in_process++;
		goto again;
	}
	c->resume = 0;
	if (c->more) {
		/* Yielded: continue when the socket is writable (conn_write_cb);
		 * a client that never takes its answers meets the send timeout. */
		if (!c->writing) {
			event_add(c->wev, NULL);
			c->writing = 1;
		}
		conn_wait_idle(c);
	} else if (conn_waiting(c)) {
		if (c->eof && !c->out_paused && evbuffer_get_length(c->out) == 0) {
			conn_free(c);
			return;
		}
		conn_wait_idle(c);
	}
	conn_update_read(c);
}

static void conn_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_conn *c = arg;
	(void)what;
	for (int rounds = 0; rounds < 4 && evbuffer_get_length(c->in) < MAX_BUFFERED_INPUT; rounds++) {
		struct evbuffer_iovec iov;
		if (evbuffer_reserve_space(c->in, READ_CHUNK, &iov, 1) < 1) {
			conn_free(c);
			return;
		}
		ssize_t n = read(fd, iov.iov_base, iov.iov_len);
		if (n > 0) {
			iov.iov_len = (size_t)n;
			evbuffer_commit_space(c->in, &iov, 1);
			if (c->state == CONN_LINGERING)
				evbuffer_drain(c->in, evbuffer_get_length(c->in));
			if ((size_t)n < READ_CHUNK)
				break;
			continue;
		}
		iov.iov_len = 0;
		evbuffer_commit_space(c->in, &iov, 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		/* EOF or error. */
		if (n < 0 || c->state == CONN_LINGERING || c->state == CONN_CLOSING ||
		    (c->state != CONN_DISPATCHED && evbuffer_get_length(c->in) == 0)) {
			conn_free(c);
			return;
		}
		/* EOF while the application works on a request that can be
		 * abandoned: the client is gone (nginx's 499). Otherwise a
		 * half-close after a complete request still gets its answer. */
		if (c->state == CONN_DISPATCHED && c->req && c->req->on_abort) {
			conn_free(c);
			return;
		}
		c->eof = 1;
		break;
	}
	if (c->state == CONN_LINGERING)
		return;
	if (c->state == CONN_DISPATCHED || c->state == CONN_CLOSING) {
		conn_update_read(c);
		return;
	}
	conn_process(c);
}

static void conn_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_conn *c = arg;
	(void)fd;
	(void)what;
	if (conn_flush(c) < 0)
		return;
	if (c->resume || c->more) {
		c->resume = 0;
		c->more = 0;
		conn_process(c); /* parses what waited, re-arms timer and reads */
		return;
	}
	if (conn_waiting(c))
		conn_wait_idle(c); /* progress: the send timeout starts again */
}

/* Lingering close: we answered an error while the client may still be
 * sending (a body over the limit, say). Closing now would make the kernel
 * reset the connection and the client could lose our response, so
 * half-close and discard input until EOF or LINGER_MS. */
static void conn_start_linger(struct http_conn *c)
{
	struct timeval tv = {LINGER_MS / 1000, (LINGER_MS % 1000) * 1000};
	c->state = CONN_LINGERING;
	shutdown(c->fd, SHUT_WR);
	evbuffer_drain(c->in, evbuffer_get_length(c->in));
	conn_update_read(c);
	evtimer_add(c->timer, &tv);
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_conn *c = arg;
	(void)fd;
	(void)what;
	if (c->state == CONN_READING && c->req && c->req->hlen > 0 && !c->req->has_body) {
		/* Slow headers (slowloris): answer 408 and drop. */
		conn_write_error(c, 408, "REQUEST_TIMEOUT", "request timeout"); /* flushes or frees c */
		return;
	}
	if (c->state == CONN_IDLE && !c->out_paused && evbuffer_get_length(c->out) == 0 && conn_input_pending(c)) {
		/* The keep-alive timeout raced a request that is already in the
		 * socket: answer it rather than close under it. */
		conn_read_cb(c->fd, EV_READ, c);
		return;
	}
	conn_free(c);
}

static void server_check_drained(struct http_server *s)
{
	/* Orphaned requests (client gone, application still working) keep
	 * the server alive: they will call http_send() later. */
	if (s->draining && !s->conns && s->stats.inflight == 0 && s->on_drained && !s->drain_ev) {
		void (*fn)(void *) = s->on_drained;
		s->on_drained = NULL;
		if (s->drain_timer)
			evtimer_del(s->drain_timer);
		fn(s->drained_ud);
	}
}

static void conn_destroy(struct http_conn *c)
{
	event_free(c->rev);
	event_free(c->wev);
	event_free(c->timer);
	evbuffer_free(c->in);
	evbuffer_free(c->out);
	if (c->fd >= 0)
		close(c->fd);
	free(c);
}

static void conn_free(struct http_conn *c)
{
	struct http_server *s = c->server;
	if (c->dead)
		return;
	c->dead = 1;
	if (c->req) {
		struct http_request *r = c->req;
		c->req = NULL;
		if (c->state == CONN_DISPATCHED && !r->sent) {
			/* The application still holds it; http_send frees it. */
			r->conn = NULL;
			if (r->on_abort) {
				void (*abort_fn)(struct http_request *) = r->on_abort;
				r->on_abort = NULL;
				abort_fn(r); /* may answer: r is released then; not touched below */
			}
		} else {
			request_free(r);
		}
	}
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	event_del(c->rev);
	event_del(c->wev);
	evtimer_del(c->timer);
	s->stats.connections--;
	if (!c->in_process)
		conn_destroy(c);
	if (s->opts.on_stats)
		s->opts.on_stats(s->opts.ud);
	server_check_drained(s);
}

static void format_peer(const struct sockaddr *sa, char *out, size_t outlen)
{
	out[0] = '\0';
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		evutil_inet_ntop(AF_INET, &in->sin_addr, out, outlen);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		evutil_inet_ntop(AF_INET6, &in6->sin6_addr, out, outlen);
	} else {
		snprintf(out, outlen, "unix");
	}
}

static const char reject_503[] =
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
    "Content-Length: 96\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    "{\"success\":false,\"error\":\"too many connections, try again\",\"code\":\"SERVICE_UNAVAILABLE\"}    ";

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	struct http_server *s = arg;
	(void)l;
	(void)salen;
	/* Accepted while draining (the listener is disabled, so only in a
	 * batch libevent accepted before): still served, with
	 * Connection: close. */
	if (s->opts.max_connections > 0 && s->stats.connections >= s->opts.max_connections) {
		/* Best effort: the socket is fresh, the small reply fits. */
		ssize_t w = send(fd, reject_503, sizeof(reject_503) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		(void)w;
		s->stats.rejected++;
		close(fd);
		return;
	}
	struct http_conn *c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return;
	}
	c->server = s;
	c->fd = fd;
	format_peer(sa, c->remote_ip, sizeof(c->remote_ip));
	if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	evutil_make_socket_nonblocking(fd);
	c->in = evbuffer_new();
	c->out = evbuffer_new();
	c->rev = event_new(s->base, fd, EV_READ | EV_PERSIST, conn_read_cb, c);
	c->wev = event_new(s->base, fd, EV_WRITE | EV_PERSIST, conn_write_cb, c);
	c->timer = evtimer_new(s->base, conn_timer_cb, c);
	if (!c->in || !c->out || !c->rev || !c->wev || !c->timer) {
		if (c->in)
			evbuffer_free(c->in);
		if (c->out)
			evbuffer_free(c->out);
		if (c->rev)
			event_free(c->rev);
		if (c->wev)
			event_free(c->wev);
		if (c->timer)
			event_free(c->timer);
		close(fd);
		free(c);
		return;
	}
	llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
	c->parser.data = c;
	c->state = CONN_IDLE;
	event_add(c->rev, NULL);
	c->reading = 1;
	evtimer_add(c->timer, s->tv_header);
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	s->stats.connections++;
	s->stats.connections_total++;
	if (s->opts.on_stats)
		s->opts.on_stats(s->opts.ud);
}

static void ms_to_tv(int64_t ms, struct timeval *tv)
{
	if (ms <= 0)
		ms = 1;
	tv->tv_sec = (time_t)(ms / 1000);
	tv->tv_usec = (suseconds_t)((ms % 1000) * 1000);
}

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_server *s = arg;
	(void)fd;
	(void)what;
	if (!s->draining)
		evconnlistener_enable(s->listener);
}

/* accept() failed for a reason libevent does not retry by itself: out of
 * descriptors (EMFILE, ENFILE), or the listening socket was shut down by
 * the supervisor at shutdown (EINVAL). Left enabled, the listener would
 * spin on a socket that stays readable: pause it and try again shortly,
 * unless this server is draining anyway. */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
	struct http_server *s = arg;
	struct timeval tv = {0, 100 * 1000};
	evconnlistener_disable(l);
	if (!s->draining)
		evtimer_add(s->accept_retry, &tv);
}

struct http_server *http_server_new(struct event_base *base, int listen_fd, const struct http_server_opts *opts)
{
	struct http_server *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->base = base;
	s->opts = *opts;
	if (s->opts.header_timeout_ms <= 0)
		s->opts.header_timeout_ms = 10000;
	if (s->opts.keepalive_timeout_ms <= 0)
		s->opts.keepalive_timeout_ms = 5000;
	if (s->opts.body_timeout_ms <= 0)
		s->opts.body_timeout_ms = 30000;
	ms_to_tv(s->opts.header_timeout_ms, &s->tv_header_raw);
	ms_to_tv(s->opts.keepalive_timeout_ms, &s->tv_keepalive_raw);
	ms_to_tv(s->opts.body_timeout_ms, &s->tv_body_raw);
	/* Common timeouts keep thousands of equal timers O(1). */
	s->tv_header = event_base_init_common_timeout(base, &s->tv_header_raw);
	s->tv_keepalive = event_base_init_common_timeout(base, &s->tv_keepalive_raw);
	s->tv_body = event_base_init_common_timeout(base, &s->tv_body_raw);
	if (!s->tv_header)
		s->tv_header = &s->tv_header_raw;
	if (!s->tv_keepalive)
		s->tv_keepalive = &s->tv_keepalive_raw;
	if (!s->tv_body)
		s->tv_body = &s->tv_body_raw;

	llhttp_settings_init(&s->settings);
	s->settings.on_message_begin = on_message_begin;
	s->settings.on_url = on_url;
	s->settings.on_url_complete = on_url_complete;
	s->settings.on_header_field = on_header_field;
	s->settings.on_header_field_complete = on_header_field_complete;
	s->settings.on_header_value = on_header_value;
	s->settings.on_header_value_complete = on_header_value_complete;
	s->settings.on_headers_complete = on_headers_complete;
	s->settings.on_body = on_body;
	s->settings.on_message_complete = on_message_complete;

	s->listener = evconnlistener_new(base, accept_cb, s, LEV_OPT_CLOSE_ON_EXEC, -1, listen_fd);
	s->accept_retry = evtimer_new(base, accept_retry_cb, s);
	if (!s->listener || !s->accept_retry) {
		if (s->listener)
			evconnlistener_free(s->listener);
		if (s->accept_retry)
			event_free(s->accept_retry);
		free(s);
		return NULL;
	}
	evconnlistener_set_error_cb(s->listener, accept_error_cb);
	return s;
}

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_server *s = arg;
	(void)fd;
	(void)what;
	event_free(s->drain_ev);
	s->drain_ev = NULL;
	server_check_drained(s);
}

/* The drain timeout ended: close every connection left. Requests still
 * with the application become orphans and are released when answered. */
static void drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_server *s = arg;
	(void)fd;
	(void)what;
	while (s->conns)
		conn_free(s->conns);
}

void http_server_drain(struct http_server *s, void (*on_drained)(void *ud), void *ud)
{
	s->draining = 1;
	s->on_drained = on_drained;
	s->drained_ud = ud;
	if (s->listener)
		evconnlistener_disable(s->listener);
	evtimer_del(s->accept_retry);
	/* Nothing is closed here: the next response on every connection says
	 * Connection: close (http_send and conn_process see draining), and an
	 * idle keep-alive connection closes when its keep-alive timer ends
	 * (after answering a request that raced it), so no request already
	 * sent is lost. What is left when the drain timeout ends is closed. */
	if (s->opts.drain_timeout_ms > 0 && !s->drain_timer) {
		struct timeval tv;
		ms_to_tv(s->opts.drain_timeout_ms, &tv);
		s->drain_timer = evtimer_new(s->base, drain_timeout_cb, s);
		if (s->drain_timer)
			evtimer_add(s->drain_timer, &tv);
	}
	/* Report from the loop, never from inside the caller. */
	if (!s->drain_ev) {
		s->drain_ev = event_new(s->base, -1, 0, drain_cb, s);
		if (s->drain_ev)
			event_active(s->drain_ev, 0, 0);
	}
}

int http_server_draining(const struct http_server *s)
{
	return s->draining;
}

const struct http_stats *http_server_stats(const struct http_server *s)
{
	return &s->stats;
}

void http_server_free(struct http_server *s)
{
	if (!s)
		return;
	s->on_drained = NULL;
	s->opts.on_stats = NULL;
	while (s->conns)
		conn_free(s->conns);
	if (s->drain_ev)
		event_free(s->drain_ev);
	if (s->drain_timer)
		event_free(s->drain_timer);
	if (s->accept_retry)
		event_free(s->accept_retry);
	if (s->listener)
		evconnlistener_free(s->listener);
	while (s->free_reqs) {
		struct http_request *r = s->free_reqs;
		s->free_reqs = (struct http_request *)r->app_data[0];
		free(r);
	}
	free(s);
}
