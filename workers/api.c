/* api.c - store calls bound to requests, error mapping and rendering for
 * the reference API (see api.h). */
#include "autoconfig.h"

#include "api.h"

#include "json.h"
#include "log.h"
#include "routes.h"
#include "validate.h"

#include <event2/event.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <yajl/yajl_gen.h>

static struct store *g_store;

struct store *api_store(void)
{
	return g_store;
}

static void breaker_changed(void *ud, const char *name, int from, int to)
{
	(void)ud;
	static const char *names[] = {"closed", "open", "half-open"};
	const char *f = from >= 0 && from <= 2 ? names[from] : "?";
	const char *t = to >= 0 && to <= 2 ? names[to] : "?";
	if (to == 1)
		log_warn(NULL, "circuit breaker opened", LF_STR("circuit", name), LF_STR("from", f));
	else
		log_info(NULL, "circuit breaker state changed", LF_STR("circuit", name), LF_STR("from", f), LF_STR("to", t));
}

int api_open_store(struct event_base *base, const struct resil_config *cfg, char *err, size_t errlen)
{
	struct store_opts so = {
		.pool_size = (unsigned)cfg->db_pool_size,
		.job_threads = (unsigned)(cfg->job_threads ? cfg->job_threads : cfg->db_pool_size),
		.on_breaker_change = breaker_changed,
		.sync = cfg->db_sync == CONFIG_DB_SYNC_NORMAL ? STORE_SYNC_NORMAL : STORE_SYNC_FULL,
	};
	store_register_schema(&app_schema);
	g_store = store_open(cfg->db, base, &so, err, errlen);
	return g_store ? 0 : -1;
}

void api_close_store(void)
{
	store_close(g_store);
	g_store = NULL;
	store_global_cleanup();
}

static void call_free(struct api_call *c)
{
	if (c->timer)
		event_free(c->timer);
	store_op_clear(&c->op);
	free(c);
}

static void call_done(struct store_op *op, enum store_err err)
{
	struct api_call *c = op->user;
	if (store_op_abandoned(op) || !c->req) {
		call_free(c);
		return;
	}
	if (c->timer)
		evtimer_del(c->timer);
	c->req->app_data[2] = NULL;
	c->cb(c, err); /* may answer (and free) the request */
	call_free(c);
}

static void call_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct api_call *c = arg;
	(void)fd;
	(void)what;
	struct http_request *req = c->req;
	if (!req)
		return;
	c->req = NULL;
	req->app_data[2] = NULL;
	store_op_abandon(&c->op); /* done() frees c later */
	app_fail(req, 504, "TIMEOUT", "request timed out");
}

struct api_call *api_call_new(struct http_request *req, int kind, int coll, api_cb cb)
{
	struct api_call *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	store_op_init(&c->op, kind, coll);
	c->req = req;
	c->cb = cb;
	c->op.done = call_done;
	c->op.user = c;
	return c;
}

int api_call_submit(struct api_call *c)
{
	struct http_request *req = c->req;
	struct worker *w = worker_current();
	if (!g_store) {
		call_free(c);
		return app_fail(req, 503, "DB_UNAVAILABLE", "database unavailable");
	}
	/* The request's deadline (SPEC section 9) bounds the database call. */
	int64_t budget = w->cfg->request_timeout_ms;
	uint64_t elapsed_ms = 0;
	{
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		uint64_t now_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
		elapsed_ms = (now_ns - req->start_ns) / 1000000ull;
	}
	int64_t left = budget - (int64_t)elapsed_ms;
	if (left <= 0) {
		call_free(c);
		return app_fail(req, 504, "TIMEOUT", "request timed out");
	}
	c->op.deadline_ms = jobs_now_ms() + (uint64_t)left;
	c->timer = evtimer_new(w->base, call_deadline, c);
	if (c->timer) {
		struct timeval tv = {(time_t)(left / 1000), (suseconds_t)((left % 1000) * 1000)};
		evtimer_add(c->timer, &tv);
	}
	if (store_submit(g_store, &c->op) < 0) {
		call_free(c);
		return app_fail(req, 503, "DB_UNAVAILABLE", "database unavailable");
	}
	req->app_data[2] = c;
	return APP_DONE;
}

static void work_run(struct job *j)
{
	struct api_work *w = (struct api_work *)j;
	w->work(w);
}

static void work_done(struct job *j, int status)
{
	struct api_work *w = (struct api_work *)j;
	w->cb(w, status);
	sodium_memzero(w->payload, w->payload_len); /* may hold a password */
	free(w);
}

struct api_work *api_work_new(struct http_request *req, size_t payload, api_work_fn work, api_work_cb cb)
{
	if (payload > (1u << 20))
		return NULL;
	struct api_work *w = calloc(1, sizeof(*w) + payload);
	if (!w)
		return NULL;
	w->req = req;
	w->payload_len = payload;
	w->work = work;
	w->cb = cb;
	w->job.work = work_run;
	w->job.done = work_done;
	w->job.slow = true;
	return w;
}

int api_work_submit(struct api_work *w)
{
	struct http_request *req = w->req;
	struct job_pool *pool = store_job_pool(g_store);
	struct worker *wk = worker_current();
	uint64_t elapsed_ms;
	{
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		uint64_t now_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
		elapsed_ms = (now_ns - req->start_ns) / 1000000ull;
	}
	int64_t left = wk->cfg->request_timeout_ms - (int64_t)elapsed_ms;
	if (left <= 0) {
		sodium_memzero(w->payload, w->payload_len);
		free(w);
		return app_fail(req, 504, "TIMEOUT", "request timed out");
	}
	w->job.deadline_ms = jobs_now_ms() + (uint64_t)left;
	if (!pool || jobs_submit(pool, &w->job) < 0) {
		sodium_memzero(w->payload, w->payload_len);
		free(w);
		http_add_header(req, "Retry-After", "1");
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "server busy, try again");
	}
	return APP_DONE;
}

int api_fail_store(struct http_request *req, enum store_err err, const char *dup_field)
{
	char msg[96];
	switch (err) {
	case STORE_DUPLICATE_KEY:
		snprintf(msg, sizeof(msg), "%s already exists", dup_field && dup_field[0] ? dup_field : "value");
		return app_fail(req, 400, "DUPLICATE_KEY", msg);
	case STORE_NOT_FOUND: return app_fail(req, 404, "NOT_FOUND", "not found");
	case STORE_UNAVAILABLE: return app_fail(req, 503, "DB_UNAVAILABLE", "database unavailable");
	case STORE_CIRCUIT_OPEN: return app_fail(req, 503, "CIRCUIT_OPEN", "database circuit open, try again later");
	case STORE_BUSY:
		http_add_header(req, "Retry-After", "1");
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "server busy, try again");
	case STORE_TIMEOUT: return app_fail(req, 504, "TIMEOUT", "request timed out");
	default: return app_fail(req, 500, "INTERNAL", "internal server error");
	}
}

void api_gen_iso(void *gp, int64_t ms)
{
	yajl_gen g = gp;
	time_t t = (time_t)(ms / 1000);
	int frac = (int)(ms % 1000);
	if (frac < 0) {
		frac += 1000;
		t -= 1;
	}
	struct tm tm;
	gmtime_r(&t, &tm);
	char buf[40];
	size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, ".%03dZ", frac);
	yajl_gen_string(g, (const unsigned char *)buf, n);
}

static int omitted(const char *key, const char *const *omit)
{
	for (; omit && *omit; omit++)
		if (strcmp(key, *omit) == 0)
			return 1;
	return 0;
}

static void gen_iter(yajl_gen g, bson_iter_t *it, int is_array, const char *const *omit, int top);

static void gen_value(yajl_gen g, bson_iter_t *it, const char *const *omit)
{
	switch (bson_iter_type(it)) {
	case BSON_TYPE_UTF8: {
		uint32_t len;
		const char *s = bson_iter_utf8(it, &len);
		yajl_gen_string(g, (const unsigned char *)s, len);
		break;
	}
	case BSON_TYPE_INT32: yajl_gen_integer(g, bson_iter_int32(it)); break;
	case BSON_TYPE_INT64: yajl_gen_integer(g, bson_iter_int64(it)); break;
	case BSON_TYPE_DOUBLE: yajl_gen_double(g, bson_iter_double(it)); break;
	case BSON_TYPE_BOOL: yajl_gen_bool(g, bson_iter_bool(it)); break;
	case BSON_TYPE_DATE_TIME: api_gen_iso(g, bson_iter_date_time(it)); break;
	case BSON_TYPE_OID: {
		char hex[25];
		store_id_format(bson_iter_oid(it), hex);
		yajl_gen_string(g, (const unsigned char *)hex, 24);
		break;
	}
	case BSON_TYPE_DOCUMENT:
	case BSON_TYPE_ARRAY: {
		bson_iter_t child;
		int arr = bson_iter_type(it) == BSON_TYPE_ARRAY;
		if (bson_iter_recurse(it, &child))
			gen_iter(g, &child, arr, omit, 0);
		else
			yajl_gen_null(g);
		break;
	}
	default: yajl_gen_null(g); break;
	}
}

static void gen_iter(yajl_gen g, bson_iter_t *it, int is_array, const char *const *omit, int top)
{
	if (is_array)
		yajl_gen_array_open(g);
	else
		yajl_gen_map_open(g);
	while (bson_iter_next(it)) {
		const char *key = bson_iter_key(it);
		if (!is_array) {
			if (top && omitted(key, omit))
				continue;
			if (top && strcmp(key, "_id") == 0)
				key = "id";
			yajl_gen_string(g, (const unsigned char *)key, strlen(key));
		}
		gen_value(g, it, omit);
	}
	if (is_array)
		yajl_gen_array_close(g);
	else
		yajl_gen_map_close(g);
}

void api_gen_doc(void *gp, const bson_t *doc, const char *const *omit)
{
	yajl_gen g = gp;
	bson_iter_t it;
	if (!doc || !bson_iter_init(&it, doc)) {
		yajl_gen_null(g);
		return;
	}
	gen_iter(g, &it, 0, omit, 1);
}

int api_param_id(struct http_request *req, const char *name, bson_oid_t *out)
{
	const char *v = app_param(req, name);
	if (!v || store_id_parse(v, strlen(v), out) < 0) {
		app_fail(req, 404, "NOT_FOUND", "not found");
		return -1;
	}
	return 0;
}

const char *api_doc_str(const bson_t *doc, const char *field)
{
	bson_iter_t it;
	if (doc && bson_iter_init_find(&it, doc, field) && BSON_ITER_HOLDS_UTF8(&it))
		return bson_iter_utf8(&it, NULL);
	return NULL;
}

int api_doc_bool(const bson_t *doc, const char *field, int dflt)
{
	bson_iter_t it;
	if (doc && bson_iter_init_find(&it, doc, field) && BSON_ITER_HOLDS_BOOL(&it))
		return bson_iter_bool(&it);
	return dflt;
}

int api_doc_oid(const bson_t *doc, const char *field, bson_oid_t *out)
{
	bson_iter_t it;
	if (doc && bson_iter_init_find(&it, doc, field) && BSON_ITER_HOLDS_OID(&it)) {
		bson_oid_copy(bson_iter_oid(&it), out);
		return 0;
	}
	return -1;
}

static const struct vrule page_rules[] = {
	V_INT("page", V_OPTIONAL | V_FROM_STRING, 1, 1000000000),
	V_END,
};

int api_pagination(struct http_request *req, int64_t dflt_limit, int64_t max_limit, int64_t *page, int64_t *limit)
{
	const struct json_value *q = app_query(req);
	if (!q) {
		app_fail(req, 400, "VALIDATION_ERROR", "validation failed: malformed query string");
		return -1;
	}
	struct verrors errs;
	memset(&errs, 0, sizeof(errs));
	validate(q, page_rules, &errs);
	struct vrule lim[] = {V_INT("limit", V_OPTIONAL | V_FROM_STRING, 1, max_limit), V_END};
	struct verrors e2;
	memset(&e2, 0, sizeof(e2));
	validate(q, lim, &e2);
	for (int i = 0; i < e2.count && errs.count < (int)(sizeof(errs.details) / sizeof(errs.details[0])); i++)
		errs.details[errs.count++] = e2.details[i];
	if (errs.count) {
		app_fail_validation(req, &errs);
		return -1;
	}
	*page = 1;
	*limit = dflt_limit;
	validate_get_int(q, "page", 1, page);
	validate_get_int(q, "limit", dflt_limit, limit);
	return 0;
}
