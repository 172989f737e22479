/* middleware.h - the standard middleware of SPEC section 5: security
 * headers, CORS, body parsing, and the access log. Request ids and
 * traceparent are taken care of by the HTTP core (http.c) so that even
 * framing errors carry one.
 */
#ifndef RESIL_MIDDLEWARE_H
#define RESIL_MIDDLEWARE_H

#include "app.h"

#include <stddef.h>
#include <stdint.h>

struct mw_config {
	const char *cors_origins; /* comma-separated exact origins */
	int json_max_depth;       /* 64 */
};

/* Set the configuration used by the middleware below (copied). */
int mw_configure(const struct mw_config *cfg);
void mw_shutdown(void);

/* The helmet-equivalent header block for http_server_opts.fixed_headers. */
const char *mw_security_headers(void);

/* CORS: echo allowed origins with Vary/Allow-Credentials; answer preflight
 * OPTIONS with 204. */
int mw_cors(struct http_request *req);
/* Parse JSON or urlencoded bodies; 400 INVALID_JSON, 415 otherwise. */
int mw_body(struct http_request *req);
/* Access log line (http_server_opts.on_complete). */
void mw_access_log(struct http_request *req, size_t bytes_out, void *ud);

/* 1 if origin (len bytes) is listed in a comma-separated list. */
int mw_origin_listed(const char *list, const char *origin, size_t len);

#endif
