/* httpclient.h - outbound HTTP/1.1 client on a worker's libevent loop
 * (SPEC section 9), built on libevent's evhttp client.
 *
 *   struct httpc *hc = httpc_new(base);
 *   struct httpc_request r = {.method = HTTPC_GET, .url = url, .bearer = key, .timeout_ms = 5000};
 *   httpc_start(hc, &r, got_reply, state, &call);
 *
 * One connection per call (Connection: close), so a slow or broken peer
 * never poisons a later call. The whole call - DNS, connect, send, response
 * - is bounded by timeout_ms; the response body by max_body. Host names
 * are resolved with evdns (created on first use), never with a blocking
 * getaddrinfo on the loop; numeric addresses need no resolver.
 *
 * Only plain http:// URLs are supported: https:// is refused at request
 * time with HTTPC_ERR_UNSUPPORTED (TLS is out of scope; put a local TLS
 * proxy in front of an https-only service).
 *
 * The callback runs on the loop exactly once per successful httpc_start(),
 * never from inside httpc_start() itself, unless the call is cancelled
 * first (httpc_cancel, httpc_free): then it never runs.
 */
#ifndef RESIL_HTTPCLIENT_H
#define RESIL_HTTPCLIENT_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct httpc;
struct httpc_call;

#define HTTPC_MAX_BODY_DEFAULT (1u << 20) /* 1 MiB */
#define HTTPC_TIMEOUT_DEFAULT_MS 5000

enum httpc_method { HTTPC_GET = 1, HTTPC_POST };

enum httpc_err {
	HTTPC_OK = 0,
	HTTPC_ERR_URL,         /* not an absolute http URL with a host */
	HTTPC_ERR_UNSUPPORTED, /* https:// (or another scheme we do not speak) */
	HTTPC_ERR_CONNECT,     /* name did not resolve, or the connection was refused */
	HTTPC_ERR_TIMEOUT,     /* timeout_ms passed before the whole response arrived */
	HTTPC_ERR_IO,          /* connection reset or closed mid-response */
	HTTPC_ERR_PROTOCOL,    /* malformed response */
	HTTPC_ERR_TOO_LARGE,   /* body larger than max_body */
	HTTPC_ERR_NOMEM,
};

/* One extra request header; name and value must not contain CR or LF. */
struct httpc_header {
	const char *name;
	const char *value;
};

struct httpc_request {
	int method;         /* enum httpc_method */
	const char *url;    /* http://host[:port]/path[?query], already percent-encoded */
	const char *bearer; /* Authorization: Bearer <bearer>; NULL or "" = none */
	const char *body;   /* POST body (JSON), may be NULL */
	size_t body_len;
	uint64_t timeout_ms;                /* whole call; 0 = HTTPC_TIMEOUT_DEFAULT_MS */
	size_t max_body;                    /* 0 = HTTPC_MAX_BODY_DEFAULT */
	const struct httpc_header *headers; /* extra headers, sent as given; may be NULL */
	size_t nheaders;
};

/* What the callback gets; every pointer is valid only during the callback. */
struct httpc_response {
	int err;          /* enum httpc_err; the fields below are set only for HTTPC_OK */
	int status;       /* HTTP status code */
	const char *body; /* NUL-terminated copy of the body (never NULL for HTTPC_OK) */
	size_t body_len;
	const char *retry_after; /* raw Retry-After header, or NULL */
	uint64_t retry_after_ms; /* parsed with retry_after_ms(): 0 when absent or invalid */
};

typedef void (*httpc_cb)(const struct httpc_response *res, void *ud);

/* A client bound to base (loop thread only). NULL on allocation failure. */
struct httpc *httpc_new(struct event_base *base);
/* Cancel every call in flight (their callbacks never run) and free the
 * client. NULL is a no-op. Not from inside one of its callbacks. */
void httpc_free(struct httpc *hc);

/* Start a call. Returns HTTPC_OK with *out set (the handle stays valid
 * until the callback returns or httpc_cancel), or an error code (bad URL,
 * https, a header with CR/LF or an empty name, out of memory) with nothing started: the callback will not run.
 * The request and its strings are copied; the caller may free them. A
 * callback may start new calls on the same client. */
int httpc_start(struct httpc *hc, const struct httpc_request *r, httpc_cb cb, void *ud, struct httpc_call **out);
/* Abort a call in flight; its callback never runs. NULL is a no-op; not
 * from inside that call's own callback. */
void httpc_cancel(struct httpc_call *call);
/* Calls in flight on the client. */
unsigned httpc_inflight(const struct httpc *hc);

/* "OK", "URL", "UNSUPPORTED", "CONNECT", "TIMEOUT", "IO", "PROTOCOL",
 * "TOO_LARGE", "NOMEM". */
const char *httpc_err_name(int err);

#endif
