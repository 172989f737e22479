/* middleware.c - security headers, CORS, body parsing and access log. */
#include "middleware.h"
#include "clock.h"

#include "json.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static char *cors_list;
static int json_depth = 64;

static const char security_headers[] =
    "Content-Security-Policy: default-src 'none'; base-uri 'self'; font-src 'self' https: data:; "
    "form-action 'self'; frame-ancestors 'self'; img-src 'self' data:; object-src 'none'; "
    "script-src 'self'; script-src-attr 'none'; style-src 'self' https: 'unsafe-inline'; "
    "upgrade-insecure-requests\r\n"
    "Cross-Origin-Opener-Policy: same-origin\r\n"
    "Cross-Origin-Resource-Policy: same-origin\r\n"
    "Origin-Agent-Cluster: ?1\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "Strict-Transport-Security: max-age=15552000; includeSubDomains\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "X-DNS-Prefetch-Control: off\r\n"
    "X-Download-Options: noopen\r\n"
    "X-Frame-Options: SAMEORIGIN\r\n"
    "X-Permitted-Cross-Domain-Policies: none\r\n"
    "X-XSS-Protection: 0\r\n";

int mw_configure(const struct mw_config *cfg)
{
	char *dup = strdup(cfg->cors_origins ? cfg->cors_origins : "");
	if (!dup)
		return -1;
	free(cors_list);
	cors_list = dup;
	json_depth = cfg->json_max_depth > 0 ? cfg->json_max_depth : 64;
	return 0;
}

void mw_shutdown(void)
{
	free(cors_list);
	cors_list = NULL;
}

const char *mw_security_headers(void)
{
	return security_headers;
}

int mw_origin_listed(const char *list, const char *origin, size_t len)
{
	const char *p = list;
	while (p && *p) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		const char *end = p;
		while (*end && *end != ',')
			end++;
		const char *e = end;
		while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		if ((size_t)(e - p) == len && len > 0 && memcmp(p, origin, len) == 0)
			return 1;
		p = end;
	}
	return 0;
}

int mw_cors(struct http_request *req)
{
	size_t ol;
	const char *origin = http_header_get(req, "origin", &ol);
	if (!origin)
		return APP_NEXT;
	int allowed = cors_list && mw_origin_listed(cors_list, origin, ol);
	http_add_header(req, "Vary", "Origin");
	if (allowed) {
		http_add_headern(req, "Access-Control-Allow-Origin", origin, ol);
		http_add_header(req, "Access-Control-Allow-Credentials", "true");
	}
	size_t ml;
	const char *acrm = http_header_get(req, "access-control-request-method", &ml);
	if (req->method == HTTP_M_OPTIONS && acrm) {
		if (allowed) {
			http_add_header(req, "Access-Control-Allow-Methods", "GET,HEAD,PUT,PATCH,POST,DELETE");
			size_t hl;
			const char *hdrs = http_header_get(req, "access-control-request-headers", &hl);
			if (hdrs && hl)
				http_add_headern(req, "Access-Control-Allow-Headers", hdrs, hl);
			else
				http_add_header(req, "Access-Control-Allow-Headers",
				                "Content-Type, Authorization, X-Request-ID");
			http_add_header(req, "Access-Control-Max-Age", "600");
		}
		return app_no_content(req);
	}
	if (allowed)
		http_add_header(req, "Access-Control-Expose-Headers",
		                "X-Request-ID, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Retry-After");
	return APP_NEXT;
}

static int media_type_is(const char *ct, size_t len, const char *want)
{
	size_t wl = strlen(want);
	while (len && (*ct == ' ' || *ct == '\t')) {
		ct++;
		len--;
	}
	if (len < wl || strncasecmp(ct, want, wl) != 0)
		return 0;
	return len == wl || ct[wl] == ';' || ct[wl] == ' ' || ct[wl] == '\t';
}

int app_parse_urlencoded(struct http_request *req); /* app.c */

int mw_body(struct http_request *req)
{
	/* body_skipped: refused at header time (app_headers), the chain
	 * answers without the body. */
	if (!req->has_body || req->body_skipped)
		return APP_NEXT;
	size_t cl;
	const char *ct = http_header_get(req, "content-type", &cl);
	struct app_ctx *ctx = app_ctx(req);
	if (ct && (media_type_is(ct, cl, "application/json") ||
	           /* application/<something>+json */
	           (cl > 17 && strncasecmp(ct, "application/", 12) == 0 && memchr(ct, '+', cl) &&
	            (strstr(ct, "+json") != NULL)))) {
		struct json_value *v = NULL;
		enum json_status st = json_parse(req->body ? req->body : "", req->body_len, json_depth, 0, &v);
		if (st == JSON_ERR_NOMEM)
			return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		if (st == JSON_ERR_DEPTH)
			return app_fail(req, 400, "INVALID_JSON", "invalid json: nesting too deep");
		if (st != JSON_OK)
			return app_fail(req, 400, "INVALID_JSON", "invalid json");
		ctx->body = v;
		return APP_NEXT;
	}
	if (ct && media_type_is(ct, cl, "application/x-www-form-urlencoded")) {
		if (app_parse_urlencoded(req) < 0)
			return app_fail(req, 400, "VALIDATION_ERROR", "validation failed: malformed form body");
		return APP_NEXT;
	}
	if (req->method == HTTP_M_POST || req->method == HTTP_M_PUT || req->method == HTTP_M_PATCH)
		return app_fail(req, 415, "UNSUPPORTED_MEDIA_TYPE", "unsupported media type: use application/json");
	return APP_NEXT;
}

/* Access line level (SPEC section 10): info for 2xx/3xx, warn for every
 * 4xx (404, 401 and 429 included: an operator at warn wants to see them),
 * error for 5xx. The line is written whenever log_level admits its own
 * level, so log_level=warn keeps 4xx/5xx and drops the rest. */
static int access_level(int status)
{
	return status >= 500 ? LOG_LVL_ERROR : status >= 400 ? LOG_LVL_WARN : LOG_LVL_INFO;
}

void mw_access_log(struct http_request *req, size_t bytes_out, void *ud)
{
	(void)ud;
	int st = req->res.status;
	int level = access_level(st);
	if (!log_enabled(level))
		return;
	double ms = (double)(clock_mono_ns() - req->start_ns) / 1e6;
	struct app_ctx *ctx = app_ctx(req);
	struct log_ctx lc = {
	    .request_id = req->request_id,
	    .trace_id = req->trace_id[0] ? req->trace_id : NULL,
	    .user_id = ctx ? ctx->principal_id : NULL,
	};
	size_t ual = 0;
	const char *ua = http_header_get(req, "user-agent", &ual);
	/* ctx->route is "<METHOD> <template>"; the line has the method already.
	 * No route matched (404, 405): null. */
	const char *route = ctx ? ctx->route : NULL;
	if (route) {
		const char *sp = strchr(route, ' ');
		if (sp)
			route = sp + 1;
	}
	log_emit(level, &lc, "request",
	         (const struct log_field[]){LF_STR("method", req->method_name),
	                                    LF_STRN("path", req->path, req->path_len), LF_STR("route", route),
	                                    LF_INT("status", st), LF_DBL("durationMs", ms), LF_INT("bytes", bytes_out),
	                                    LF_STR("ip", req->remote_ip), LF_STRN("userAgent", ua ? ua : "", ual)},
	         8);
}
