/* http.h - the HTTP/1.1 server core of a worker.
 *
 * Connections are accepted with an evconnlistener and driven by raw read
 * and write events over evbuffers; requests are parsed by llhttp in strict
 * mode. One request
 * per connection is in progress at a time: the parser pauses at the end of
 * each message and resumes after its response is queued, so pipelined
 * requests are answered in order without buffering responses.
 *
 * A request owns all of its memory (header bytes, an arena, the body and
 * the response) and is freed in exactly one place, http_request_free(),
 * after its response is queued or after its connection died and the
 * application let go of it. Handlers may answer later (after a job on the
 * thread pool): they keep the request pointer and call http_send(); if the
 * client went away meanwhile, http_send() just releases the request.
 *
 * Output backpressure: a connection whose unsent output (pipelined
 * responses included) reaches HTTP_OUTPUT_HIGH is neither read nor parsed
 * until the client has taken it below HTTP_OUTPUT_LOW; the kernel's socket
 * buffers then hold the client back. A client that takes nothing for the
 * body timeout is dropped. So a worker holds at most about
 * max_connections x (HTTP_OUTPUT_HIGH + one response) of output.
 *
 * Draining (http_server_drain) closes nothing under a client: in-flight
 * requests finish, the next response on each connection carries
 * Connection: close, idle keep-alive connections close when their
 * keep-alive timer ends (a request that raced the timer is answered
 * first), and the drain timeout closes whatever is left.
 */
#ifndef RESIL_HTTP_H
#define RESIL_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct cidr_list;
struct event_base;
struct evbuffer;
struct http_server;
struct http_conn;

#define HTTP_MAX_HEADER_BYTES 16384 /* request line + headers; beyond: 431 */
#define HTTP_MAX_URL_BYTES 8192     /* beyond: 414 */
#define HTTP_MAX_HEADERS 100        /* beyond: 431 */
#define HTTP_ARENA_BYTES 4096
#define HTTP_OUTPUT_HIGH (1024 * 1024) /* unsent bytes per connection: stop reading */
#define HTTP_OUTPUT_LOW (256 * 1024)   /* ... until the client took it below this */

enum http_method {
	HTTP_M_OTHER = 0,
	HTTP_M_GET = 1 << 0,
	HTTP_M_HEAD = 1 << 1,
	HTTP_M_POST = 1 << 2,
	HTTP_M_PUT = 1 << 3,
	HTTP_M_PATCH = 1 << 4,
	HTTP_M_DELETE = 1 << 5,
	HTTP_M_OPTIONS = 1 << 6,
};

struct http_header {
	const char *name;
	const char *value;
	uint16_t name_len;
	uint16_t value_len;
};

struct arena_block;

/* Response under construction. */
struct http_response {
	int status;
	char *headers; /* extra "Name: value\r\n" lines (arena) */
	size_t headers_len, headers_cap;
	struct evbuffer *body;
	const char *content_type; /* default application/json; charset=utf-8 */
	int close;                /* send Connection: close and close after */
	int no_compress;
};

struct http_request {
	struct http_conn *conn; /* NULL once the client is gone */
	struct http_server *server;
	int method; /* enum http_method */
	const char *method_name;
	int http_minor; /* 1.0 or 1.1 */
	int keep_alive;
	/* Raw target, path (not decoded) and query (without '?'), NUL-terminated. */
	const char *url, *path, *query;
	size_t url_len, path_len, query_len;
	struct http_header headers[HTTP_MAX_HEADERS];
	int nheaders;
	char *body; /* NUL-terminated, may be NULL */
	size_t body_len;
	int has_body;
	/* Set at header time by http_server_opts.on_headers: a body limit
	 * for this request below the server's (0: the server's), and whether
	 * the request was dispatched without reading its body. */
	int64_t body_limit;
	int body_skipped;
	uint64_t start_ns; /* CLOCK_MONOTONIC at first byte */
	/* The client address: the peer's, or behind a trusted proxy the one
	 * it forwarded (http_server_opts.trust_proxy); peer_ip is always the
	 * socket's peer. */
	char remote_ip[64];
	char peer_ip[64];
	char request_id[130];
	char trace_id[33];
	struct http_response res;
	int sent; /* http_send() called */
	/* Application state. */
	void *app_data[8];                      /* slots owned by the application layers */
	void (*on_free)(struct http_request *); /* app cleanup, once */
	/* Called once, on the loop, when the client goes away while the
	 * application holds the request (dispatched, not yet answered): it may
	 * stop the work it started and answer at once (the answer is dropped
	 * and the request released) or answer later as usual. May be NULL.
	 * While it is set, end of input from the client counts as going away
	 * (as nginx's 499); without it a client that half-closes after its
	 * request still gets the answer. */
	void (*on_abort)(struct http_request *);
	/* Private. */
	char hbuf[HTTP_MAX_HEADER_BYTES + 64];
	size_t hlen;
	struct arena_block *arena_more;
	size_t arena_used;
	size_t body_cap;
	char arena[HTTP_ARENA_BYTES];
};

struct http_server_opts {
	int64_t body_limit;           /* bytes; beyond: 413 */
	int64_t max_connections;      /* beyond: 503 and close */
	int64_t header_timeout_ms;    /* complete headers within this (slowloris) */
	int64_t keepalive_timeout_ms; /* idle between requests */
	int64_t body_timeout_ms;      /* body inactivity; client not reading our output */
	int64_t drain_timeout_ms;     /* http_server_drain closes what is left after it; 0: never */
	/* Trusted proxies (owned by the caller, outlives the server); NULL or
	 * empty: the client address is always the peer's. */
	const struct cidr_list *trust_proxy;
	/* Called when the headers of a request with a body are complete,
	 * before any of the body is read (Expect: 100-continue is answered
	 * after it); may be NULL. It may lower req->body_limit. Returning
	 * HTTP_HEADERS_SKIP_BODY dispatches the request at once with
	 * req->body_skipped set and no body: the application must answer it
	 * without one (a refusal); the connection is then closed, after
	 * discarding input for a moment so that the client reads the answer. */
	int (*on_headers)(struct http_request *req, void *ud);
	/* Called for each complete request. The application must eventually
	 * call http_send(req) exactly once. */
	void (*on_request)(struct http_request *req, void *ud);
	/* Called after the response is queued (access log); may be NULL. */
	void (*on_complete)(struct http_request *req, size_t bytes_out, void *ud);
	/* Fill in fixed per-response headers (security headers, ...) as one
	 * preformatted block of "Name: value\r\n" lines, may be NULL. */
	const char *fixed_headers;
	/* Called when the connection count or in-flight count changes. */
	void (*on_stats)(void *ud);
	void *ud;
};

enum { HTTP_HEADERS_READ_BODY = 0, HTTP_HEADERS_SKIP_BODY = 1 };

struct http_stats {
	uint64_t requests; /* completed */
	uint64_t connections_total;
	int64_t connections; /* open now */
	int64_t inflight;    /* requests dispatched, not yet sent */
	uint64_t rejected;   /* over the connection cap */
	uint64_t paused;     /* times a connection hit HTTP_OUTPUT_HIGH */
};

/* Create a server accepting on an already bound, listening fd (inherited
 * from the supervisor). The fd is not closed by the server. NULL on error. */
struct http_server *http_server_new(struct event_base *base, int listen_fd, const struct http_server_opts *opts);
/* Stop accepting, answer the next request of every connection with
 * Connection: close, close idle keep-alive connections when their
 * keep-alive timer ends and everything after drain_timeout_ms;
 * on_drained() runs once when no connection or request is left. */
void http_server_drain(struct http_server *s, void (*on_drained)(void *ud), void *ud);
int http_server_draining(const struct http_server *s);
/* Close everything now (pending requests become orphans) and free. */
void http_server_free(struct http_server *s);
const struct http_stats *http_server_stats(const struct http_server *s);

/* Request accessors. */
const char *http_header_get(const struct http_request *req, const char *name, size_t *len);
/* Allocate from the request's arena (freed with the request); NULL on OOM. */
void *http_alloc(struct http_request *req, size_t n);
char *http_strndup(struct http_request *req, const char *s, size_t n);

/* Response. */
void http_set_status(struct http_request *req, int status);
/* Add a header line; name/value must not contain CR/LF (checked). 0 or -1. */
int http_add_header(struct http_request *req, const char *name, const char *value);
int http_add_headern(struct http_request *req, const char *name, const char *value, size_t vlen);
/* Body buffer of the response (created on first use). */
struct evbuffer *http_body(struct http_request *req);
/* Queue the response (status line, Date, Content-Length, headers, body,
 * gzip when accepted and the body is at least 1 KiB) and release the
 * request. Safe when the client is already gone. */
void http_send(struct http_request *req);
/* Convenience: JSON error envelope of SPEC section 5 and send. */
void http_send_error(struct http_request *req, int status, const char *code, const char *message);

/* Protocol upgrade (WebSocket): take the connection away from the HTTP
 * server after the handler has validated the request. raw_response (e.g.
 * the "101 Switching Protocols" head) is written first, best effort, then
 * the socket is handed over: *fd receives it (now owned by the caller,
 * non-blocking) and any bytes the client sent after the request are moved
 * into leftover. The request is released. Returns 0, or -1 if the request
 * cannot be upgraded (client gone, pipelined data pending in our output):
 * then nothing changed and the caller must answer normally. */
int http_takeover(struct http_request *req, const char *raw_response, size_t len, int *fd, struct evbuffer *leftover);

const char *http_status_text(int status);
/* Cached "Date: ...\r\n" header line for this second. */
const char *http_date_header(size_t *len);
/* Generate a random UUIDv4 into out (37 bytes). */
void http_uuid4(char out[37]);
/* Gzip src into dst (a new evbuffer chain appended). 0 or -1. */
int http_gzip(struct evbuffer *src, struct evbuffer *dst);
/* 1 if an Accept-Encoding value accepts gzip (q > 0). */
int http_accepts_gzip(const char *v, size_t len);

#define HTTP_GZIP_MIN 1024

#endif
