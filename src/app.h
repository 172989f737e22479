/* app.h - the Express-like application layer: app-level middleware, routes
 * with route-level middleware, the JSON envelope of SPEC section 5, and the
 * error handler.
 *
 *   app_use(app, mw_cors);
 *   app_get(app, "/api/posts/:id", mw_auth, posts_get);
 *
 * A middleware or handler has the signature `int fn(struct http_request *)`
 * and returns APP_NEXT to continue the chain, or APP_DONE once it has sent a
 * response or started asynchronous work that will later call app_next()
 * (continue) or send a response itself. After sending, the request is gone:
 * return APP_DONE and do not touch it again.
 */
#ifndef RESIL_APP_H
#define RESIL_APP_H

#include "http.h"
#include "router.h"

#include <stddef.h>
#include <stdint.h>

struct app;
struct json_value;
struct verrors;

enum { APP_NEXT = 0, APP_DONE = 1 };

typedef int (*app_fn)(struct http_request *req);

#define APP_MAX_CHAIN 8

/* Per-request state of the application layer (in the request's arena). */
struct app_ctx {
	struct app *app;
	int phase; /* 0: app middleware, 1: route chain */
	int pos;
	const app_fn *chain; /* route chain, NULL-terminated */
	const char *route;   /* matched pattern, e.g. "GET /api/posts/:id" */
	int route_index;     /* app_template() index of the route the path matches (set on arrival, before
	                      * any middleware); -1: none */
	struct route_params params;
	struct json_value *body;  /* parsed JSON or urlencoded body (owned) */
	struct json_value *query; /* parsed query string (owned), lazily */
	void *gen;                /* yajl_gen for the response (owned) */
	/* Set by the application's authentication middleware: who is asking,
	 * as the application defines it (opaque here), and its id for the
	 * access log. NULL for an anonymous request. */
	const void *principal;
	const char *principal_id;
	void *user_data; /* free-form slot for handlers */
};

struct app *app_new(void);
void app_free(struct app *app);
void app_use(struct app *app, app_fn mw);
/* Called when a request matched a route (crash attribution). */
void app_set_route_hook(struct app *app, void (*hook)(struct http_request *req, const char *route));
/* Register a route: chain is NULL-terminated, last entry the handler.
 * Returns 0 or -1 (bad pattern, too long a chain). */
int app_route(struct app *app, int methods, const char *pattern, const app_fn *chain);
#define APP_CHAIN_(...) ((const app_fn[]){__VA_ARGS__, NULL})
#define app_get(a, p, ...) app_route(a, HTTP_M_GET, p, APP_CHAIN_(__VA_ARGS__))
#define app_post(a, p, ...) app_route(a, HTTP_M_POST, p, APP_CHAIN_(__VA_ARGS__))
#define app_patch(a, p, ...) app_route(a, HTTP_M_PATCH, p, APP_CHAIN_(__VA_ARGS__))
#define app_put(a, p, ...) app_route(a, HTTP_M_PUT, p, APP_CHAIN_(__VA_ARGS__))
#define app_delete(a, p, ...) app_route(a, HTTP_M_DELETE, p, APP_CHAIN_(__VA_ARGS__))

/* Route templates ("/api/posts/:id"), one per distinct pattern whatever
 * its methods, numbered 0..count-1 in registration order: the index a
 * matched request carries in app_ctx.route_index (metrics). */
int app_template_count(const struct app *app);
const char *app_template(const struct app *app, int i);

/* Header-time guards. A middleware that decides from the headers alone
 * (authentication) can come with a guard, a predicate run when a request's
 * headers are complete and before its body is read, on every route whose
 * chain contains that middleware:
 *
 *   app_guard(app, mw_auth, auth_guard);
 *
 * The guard returns APP_NEXT to let the body in, or APP_DONE when the
 * middleware will refuse the request anyway: the request is then dispatched
 * at once without its body (req->body_skipped; body parsing is skipped) so
 * that the middleware answers it, and its connection is closed after the
 * answer. A guard only reads the request; it never sends.
 *
 * Body limits by route: a request that passed a guard may send up to the
 * server's body limit; one to a route without a guard (a public route, so
 * an unauthenticated request) or to no route gets APP_PUBLIC_BODY_LIMIT,
 * unless app_body_limit() gave that route its own. Returns 0 or -1 (too
 * many guards). */
#define APP_PUBLIC_BODY_LIMIT (16 * 1024)
typedef int (*app_guard_fn)(const struct http_request *req);
int app_guard(struct app *app, app_fn mw, app_guard_fn guard);
/* Body limit of an unguarded route registered with exactly this method
 * mask and pattern (register, login: a little more than the public
 * default). 0 or -1 (no such route). */
int app_body_limit(struct app *app, int methods, const char *pattern, int64_t limit);
/* Entry point for http_server_opts.on_headers (ud = struct app *). */
int app_headers(struct http_request *req, void *ud);

/* Entry point for http_server_opts.on_request (ud = struct app *). */
void app_handle(struct http_request *req, void *ud);
/* Continue the chain after asynchronous middleware. */
void app_next(struct http_request *req);

struct app_ctx *app_ctx(struct http_request *req);
/* Route parameter, percent-decoded into the arena; NULL if absent or
 * malformed. */
const char *app_param(struct http_request *req, const char *name);
/* Parsed query string: an object whose values are strings (a repeated key
 * becomes an array of strings, so it fails scalar validation). NULL on a
 * malformed query (bad percent escape) or allocation failure. */
const struct json_value *app_query(struct http_request *req);
/* Parsed body, or NULL when there was none. */
const struct json_value *app_body(struct http_request *req);

/* Responses. app_gen() returns a yajl_gen positioned inside
 * {"success":true,"data": ... ; write exactly one value for data, then
 * optionally app_gen_pagination(), then app_send_gen(). */
void *app_gen(struct http_request *req);
void app_gen_pagination(struct http_request *req, int64_t page, int64_t limit, int64_t total);
void app_send_gen(struct http_request *req, int status);
/* Error envelope; message is lower-case human text, never internals. */
int app_fail(struct http_request *req, int status, const char *code, const char *message);
/* 400 VALIDATION_ERROR with details[] from the validator. */
int app_fail_validation(struct http_request *req, const struct verrors *errs);
/* Send an empty 204. */
int app_no_content(struct http_request *req);

/* Percent-decode src into dst (capacity dstlen incl. NUL). plus_space: '+'
 * means space (query strings). Returns decoded length or -1 (bad escape,
 * NUL byte, too long). */
long app_url_decode(const char *src, size_t len, char *dst, size_t dstlen, int plus_space);

#endif
