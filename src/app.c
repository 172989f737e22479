/* app.c - Express-like chain runner, routing glue and JSON envelopes.
 *
 * Each request gets a struct app_ctx in its arena. app_handle() runs the
 * app-level middleware, then matches the route and runs its chain; 404 and
 * 405 (with Allow) come from the router. Everything the context owns (JSON
 * trees, the response generator) is released by the request's on_free
 * hook, so asynchronous handlers never have to clean up.
 */
#include "app.h"

#include "json.h"
#include "validate.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_gen.h>

#define APP_MAX_MW 16
#define APP_MAX_GUARDS 4

struct route_entry {
	char pattern[192]; /* "GET /api/posts/:id", for crash reports */
	app_fn chain[APP_MAX_CHAIN + 1];
	int methods;
	int tmpl;           /* app_template() index */
	int64_t body_limit; /* unguarded routes: 0 = APP_PUBLIC_BODY_LIMIT */
};

struct app {
	struct router *router;
	void (*route_hook)(struct http_request *req, const char *route);
	app_fn mw[APP_MAX_MW];
	int nmw;
	struct {
		app_fn mw;
		app_guard_fn guard;
	} guards[APP_MAX_GUARDS];
	int nguards;
	struct route_entry **chains; /* owned route entries */
	size_t nchains;
	int ntemplates;
};

struct app *app_new(void)
{
	struct app *a = calloc(1, sizeof(*a));
	if (!a)
		return NULL;
	a->router = router_new();
	if (!a->router) {
		free(a);
		return NULL;
	}
	return a;
}

void app_free(struct app *a)
{
	if (!a)
		return;
	router_free(a->router);
	for (size_t i = 0; i < a->nchains; i++)
		free(a->chains[i]);
	free(a->chains);
	free(a);
}

void app_set_route_hook(struct app *a, void (*hook)(struct http_request *req, const char *route))
{
	a->route_hook = hook;
}

void app_use(struct app *a, app_fn mw)
{
	if (a->nmw < APP_MAX_MW)
		a->mw[a->nmw++] = mw;
	else
		abort(); /* a programming error, found at start-up */
}

/* "GET /api/posts/:id": the first method and the pattern. */
static void route_name(int methods, const char *pattern, char *out, size_t outlen)
{
	char allow[96];
	router_allow_string(methods, allow, sizeof(allow));
	char *sp = strchr(allow, ',');
	if (sp)
		*sp = '\0';
	snprintf(out, outlen, "%s %s", allow, pattern);
}

/* The pattern part of a route entry's "GET /api/posts/:id". */
static const char *entry_template(const struct route_entry *re)
{
	const char *sp = strchr(re->pattern, ' ');
	return sp ? sp + 1 : re->pattern;
}

int app_template_count(const struct app *a)
{
	return a->ntemplates;
}

const char *app_template(const struct app *a, int i)
{
	for (size_t k = 0; k < a->nchains; k++)
		if (a->chains[k]->tmpl == i)
			return entry_template(a->chains[k]);
	return NULL;
}

int app_route(struct app *a, int methods, const char *pattern, const app_fn *chain)
{
	size_t n = 0;
	while (chain[n])
		n++;
	if (n == 0 || n > APP_MAX_CHAIN)
		return -1;
	struct route_entry *copy = calloc(1, sizeof(*copy));
	if (!copy)
		return -1;
	memcpy(copy->chain, chain, n * sizeof(*chain));
	route_name(methods, pattern, copy->pattern, sizeof(copy->pattern));
	copy->methods = methods;
	copy->tmpl = -1;
	for (size_t k = 0; k < a->nchains && copy->tmpl < 0; k++)
		if (strcmp(entry_template(a->chains[k]), entry_template(copy)) == 0)
			copy->tmpl = a->chains[k]->tmpl;
	struct route_entry **nc = realloc(a->chains, (a->nchains + 1) * sizeof(*nc));
	if (!nc) {
		free(copy);
		return -1;
	}
	a->chains = nc;
	if (copy->tmpl < 0)
		copy->tmpl = a->ntemplates++;
	a->chains[a->nchains++] = copy;
	if (router_add(a->router, methods, pattern, copy) < 0)
		return -1;
	return 0;
}

int app_guard(struct app *a, app_fn mw, app_guard_fn guard)
{
	if (a->nguards >= APP_MAX_GUARDS || !mw || !guard)
		return -1;
	a->guards[a->nguards].mw = mw;
	a->guards[a->nguards].guard = guard;
	a->nguards++;
	return 0;
}

int app_body_limit(struct app *a, int methods, const char *pattern, int64_t limit)
{
	char name[192];
	route_name(methods, pattern, name, sizeof(name));
	for (size_t i = 0; i < a->nchains; i++) {
		struct route_entry *re = a->chains[i];
		if (re->methods == methods && strcmp(re->pattern, name) == 0) {
			re->body_limit = limit;
			return 0;
		}
	}
	return -1;
}

int app_headers(struct http_request *req, void *ud)
{
	struct app *a = ud;
	void *route = NULL;
	struct route_params params;
	int allow = 0;
	if (router_match(a->router, req->method, req->path, req->path_len, &route, &params, &allow) != ROUTER_FOUND) {
		req->body_limit = APP_PUBLIC_BODY_LIMIT; /* answered 404/405 without it */
		return HTTP_HEADERS_READ_BODY;
	}
	const struct route_entry *re = route;
	int guarded = 0;
	for (const app_fn *fn = re->chain; *fn; fn++)
		for (int g = 0; g < a->nguards; g++)
			if (a->guards[g].mw == *fn) {
				guarded = 1;
				if (a->guards[g].guard(req) != APP_NEXT)
					return HTTP_HEADERS_SKIP_BODY;
			}
	if (!guarded)
		req->body_limit = re->body_limit > 0 ? re->body_limit : APP_PUBLIC_BODY_LIMIT;
	return HTTP_HEADERS_READ_BODY;
}

/* The context with the route match, made once when the request arrives
 * (so a request that app-level middleware answers, a 429, still has its
 * route for the metrics) and used when the middleware is done. */
struct ctx_priv {
	struct app_ctx pub; /* first: app_ctx() is this */
	enum router_result rr;
	struct route_entry *re;
	int allow;
};

static void ctx_free(struct http_request *req)
{
	struct app_ctx *ctx = req->app_data[1];
	if (!ctx)
		return;
	if (ctx->body)
		json_free(ctx->body);
	if (ctx->query)
		json_free(ctx->query);
	if (ctx->gen)
		yajl_gen_free(ctx->gen);
	req->app_data[1] = NULL;
}

struct app_ctx *app_ctx(struct http_request *req)
{
	return req->app_data[1];
}

static void run(struct http_request *req)
{
	struct app_ctx *ctx = req->app_data[1];
	struct app *a = ctx->app;
	for (;;) {
		app_fn fn = NULL;
		if (ctx->phase == 0) {
			if (ctx->pos < a->nmw) {
				fn = a->mw[ctx->pos++];
			} else {
				const struct ctx_priv *cp = (const struct ctx_priv *)ctx;
				enum router_result rr = cp->rr;
				int allow = cp->allow;
				if (rr == ROUTER_NOT_FOUND) {
					app_fail(req, 404, "NOT_FOUND", "route not found");
					return;
				}
				if (rr == ROUTER_METHOD_NOT_ALLOWED) {
					char allow_s[96];
					router_allow_string(allow | HTTP_M_OPTIONS, allow_s, sizeof(allow_s));
					if (req->method == HTTP_M_OPTIONS) {
						/* Plain OPTIONS (not a CORS preflight): list methods. */
						http_add_header(req, "Allow", allow_s);
						app_no_content(req);
						return;
					}
					http_add_header(req, "Allow", allow_s);
					app_fail(req, 405, "METHOD_NOT_ALLOWED", "method not allowed");
					return;
				}
				struct route_entry *re = cp->re;
				ctx->phase = 1;
				ctx->pos = 0;
				ctx->chain = re->chain;
				ctx->route = re->pattern;
				if (a->route_hook)
					a->route_hook(req, re->pattern);
				continue;
			}
		} else {
			fn = ctx->chain[ctx->pos];
			if (!fn) {
				/* A handler returned APP_NEXT: a bug in that handler. */
				app_fail(req, 500, "INTERNAL", "internal server error");
				return;
			}
			ctx->pos++;
		}
		if (fn(req) != APP_NEXT)
			return;
	}
}

void app_handle(struct http_request *req, void *ud)
{
	struct ctx_priv *cp = http_alloc(req, sizeof(*cp));
	if (!cp) {
		http_send_error(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
	memset(cp, 0, sizeof(*cp));
	struct app_ctx *ctx = &cp->pub;
	struct app *a = ud;
	void *route = NULL;
	cp->rr = router_match(a->router, req->method, req->path, req->path_len, &route, &ctx->params, &cp->allow);
	cp->re = route;
	ctx->route_index = cp->rr == ROUTER_FOUND ? cp->re->tmpl : -1;
	ctx->app = ud;
	req->app_data[1] = ctx;
	req->on_free = ctx_free;
	run(req);
}

void app_next(struct http_request *req)
{
	run(req);
}

long app_url_decode(const char *src, size_t len, char *dst, size_t dstlen, int plus_space)
{
	size_t w = 0;
	for (size_t i = 0; i < len; i++) {
		char ch = src[i];
		if (ch == '%') {
			if (i + 2 >= len)
				return -1;
			int hi = src[i + 1], lo = src[i + 2];
			int h = (hi >= '0' && hi <= '9')   ? hi - '0'
			        : (hi >= 'a' && hi <= 'f') ? hi - 'a' + 10
			        : (hi >= 'A' && hi <= 'F') ? hi - 'A' + 10
			                                   : -1;
			int l = (lo >= '0' && lo <= '9')   ? lo - '0'
			        : (lo >= 'a' && lo <= 'f') ? lo - 'a' + 10
			        : (lo >= 'A' && lo <= 'F') ? lo - 'A' + 10
			                                   : -1;
			if (h < 0 || l < 0)
				return -1;
			ch = (char)(h * 16 + l);
			if (ch == '\0')
				return -1;
			i += 2;
		} else if (ch == '+' && plus_space) {
			ch = ' ';
		} else if (ch == '\0') {
			return -1; /* a raw NUL, like %00 */
		}
		if (w + 1 >= dstlen)
			return -1;
		dst[w++] = ch;
	}
	if (w >= dstlen)
		return -1;
	dst[w] = '\0';
	return (long)w;
}

const char *app_param(struct http_request *req, const char *name)
{
	struct app_ctx *ctx = req->app_data[1];
	for (int i = 0; i < ctx->params.n; i++) {
		if (strcmp(ctx->params.name[i], name) != 0)
			continue;
		size_t vl = ctx->params.value_len[i];
		char *out = http_alloc(req, vl + 1);
		if (!out)
			return NULL;
		if (app_url_decode(ctx->params.value[i], vl, out, vl + 1, 0) < 0)
			return NULL;
		return out;
	}
	return NULL;
}

/* Parse "a=1&b=x+y" into an object of strings; repeated keys -> array. */
static struct json_value *parse_form(struct http_request *req, const char *s, size_t len, int *bad)
{
	struct json_value *obj = json_new_object();
	*bad = 0;
	if (!obj)
		return NULL;
	size_t i = 0;
	while (i < len) {
		size_t start = i;
		while (i < len && s[i] != '&')
			i++;
		size_t pl = i - start;
		if (i < len)
			i++;
		if (pl == 0)
			continue;
		const char *pair = s + start;
		const char *eq = memchr(pair, '=', pl);
		size_t kl = eq ? (size_t)(eq - pair) : pl;
		size_t vl = eq ? pl - kl - 1 : 0;
		char *k = http_alloc(req, kl + 1);
		char *v = http_alloc(req, vl + 1);
		if (!k || !v)
			goto fail;
		long dk = app_url_decode(pair, kl, k, kl + 1, 1);
		long dv = app_url_decode(eq ? eq + 1 : "", vl, v, vl + 1, 1);
		if (dk < 0 || dv < 0 || !json_utf8_valid(k, (size_t)dk) || !json_utf8_valid(v, (size_t)dv)) {
			*bad = 1;
			goto fail;
		}
		if (dk == 0)
			continue;
		struct json_value *sv = json_new_string(v, (size_t)dv);
		if (!sv)
			goto fail;
		struct json_value *prev = (struct json_value *)json_get(obj, k);
		if (prev) {
			/* Repeated key: collect into an array so it is never taken
			 * for a scalar. */
			struct json_value *arr = prev;
			if (prev->type != JSON_ARRAY) {
				/* the spare pointer keeps arr + 1 inside arr, so json_free()
				 * never takes the separate items for inline ones */
				arr = calloc(1, sizeof(*arr) + sizeof(void *));
				struct json_value *copy = json_new_string(prev->s, prev->len);
				struct json_value **items = calloc(2, sizeof(*items));
				if (!arr || !copy || !items) {
					free(arr);
					if (copy)
						json_free(copy);
					free(items);
					json_free(sv);
					goto fail;
				}
				arr->type = JSON_ARRAY;
				arr->items = items;
				arr->items[0] = copy;
				arr->len = 1;
				if (json_object_set(obj, k, (size_t)dk, arr) < 0) {
					json_free(sv); /* arr was freed by json_object_set() */
					goto fail;
				}
			}
			struct json_value **ni = realloc(arr->items, (arr->len + 1) * sizeof(*ni));
			if (!ni) {
				json_free(sv);
				goto fail;
			}
			arr->items = ni;
			arr->items[arr->len++] = sv;
		} else if (json_object_set(obj, k, (size_t)dk, sv) < 0) {
			goto fail; /* it freed sv */
		}
	}
	return obj;
fail:
	json_free(obj);
	return NULL;
}

const struct json_value *app_query(struct http_request *req)
{
	struct app_ctx *ctx = req->app_data[1];
	if (!ctx->query) {
		int bad;
		ctx->query = parse_form(req, req->query, req->query_len, &bad);
	}
	return ctx->query;
}

const struct json_value *app_body(struct http_request *req)
{
	struct app_ctx *ctx = req->app_data[1];
	return ctx->body;
}

/* Used by the body parser middleware (middleware.c). */
int app_parse_urlencoded(struct http_request *req)
{
	struct app_ctx *ctx = req->app_data[1];
	int bad;
	ctx->body = parse_form(req, req->body ? req->body : "", req->body_len, &bad);
	return ctx->body ? 0 : -1;
}

void *app_gen(struct http_request *req)
{
	struct app_ctx *ctx = req->app_data[1];
	if (!ctx->gen) {
		ctx->gen = yajl_gen_alloc(NULL);
		if (!ctx->gen)
			return NULL;
		yajl_gen_map_open(ctx->gen);
		yajl_gen_string(ctx->gen, (const unsigned char *)"success", 7);
		yajl_gen_bool(ctx->gen, 1);
		yajl_gen_string(ctx->gen, (const unsigned char *)"data", 4);
	}
	return ctx->gen;
}

void app_gen_pagination(struct http_request *req, int64_t page, int64_t limit, int64_t total)
{
	yajl_gen g = app_gen(req);
	if (!g)
		return;
	int64_t pages = limit > 0 ? (total + limit - 1) / limit : 0;
	yajl_gen_string(g, (const unsigned char *)"pagination", 10);
	yajl_gen_map_open(g);
	yajl_gen_string(g, (const unsigned char *)"page", 4);
	yajl_gen_integer(g, page);
	yajl_gen_string(g, (const unsigned char *)"limit", 5);
	yajl_gen_integer(g, limit);
	yajl_gen_string(g, (const unsigned char *)"total", 5);
	yajl_gen_integer(g, total);
	yajl_gen_string(g, (const unsigned char *)"pages", 5);
	yajl_gen_integer(g, pages);
	yajl_gen_map_close(g);
}

void app_send_gen(struct http_request *req, int status)
{
	struct app_ctx *ctx = req->app_data[1];
	yajl_gen g = app_gen(req);
	const unsigned char *buf;
	size_t len;
	if (!g || yajl_gen_map_close(g) != yajl_gen_status_ok ||
	    yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok) {
		app_fail(req, 500, "INTERNAL", "internal server error");
		return;
	}
	struct evbuffer *b = http_body(req);
	if (!b || evbuffer_add(b, buf, len) < 0) {
		http_send_error(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
	yajl_gen_free(ctx->gen);
	ctx->gen = NULL;
	http_set_status(req, status);
	http_send(req);
}

int app_fail(struct http_request *req, int status, const char *code, const char *message)
{
	http_send_error(req, status, code, message);
	return APP_DONE;
}

int app_fail_validation(struct http_request *req, const struct verrors *errs)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	const unsigned char *buf;
	size_t len;
	if (!g)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	yajl_gen_map_open(g);
	yajl_gen_string(g, (const unsigned char *)"success", 7);
	yajl_gen_bool(g, 0);
	yajl_gen_string(g, (const unsigned char *)"error", 5);
	yajl_gen_string(g, (const unsigned char *)"validation failed", 17);
	yajl_gen_string(g, (const unsigned char *)"code", 4);
	yajl_gen_string(g, (const unsigned char *)"VALIDATION_ERROR", 16);
	yajl_gen_string(g, (const unsigned char *)"details", 7);
	validate_write_details(g, errs);
	yajl_gen_string(g, (const unsigned char *)"requestId", 9);
	yajl_gen_string(g, (const unsigned char *)req->request_id, strlen(req->request_id));
	yajl_gen_map_close(g);
	if (yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok)
		evbuffer_add(http_body(req), buf, len);
	yajl_gen_free(g);
	http_set_status(req, 400);
	http_send(req);
	return APP_DONE;
}

int app_no_content(struct http_request *req)
{
	http_set_status(req, 204);
	http_send(req);
	return APP_DONE;
}
