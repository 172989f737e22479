/* api.c - store calls bound to requests, error mapping and rendering for
 * the reference API (see api.h). */
#include "autoconfig.h"

#include "api.h"
#include "auth.h"

#include "json.h"
#include "log.h"
#include "routes.h"
#include "validate.h"

#include <event2/buffer.h>
#include <event2/event.h>
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
		log_info(NULL, "circuit breaker state changed", LF_STR("circuit", name), LF_STR("from", f),
		         LF_STR("to", t));
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
	if (strncmp(cfg->db, "mongodb", 7) == 0)
		auth_expect_bcrypt(12); /* the Node app's bcryptjs cost: unknown users cost as much from the start */
	g_store = store_open(cfg->db, base, &so, err, errlen);
	return g_store ? 0 : -1;
}

void api_close_store(void)
{
	store_close(g_store);
	g_store = NULL;
	store_global_cleanup();
}

/* ---- the request's deadline ---------------------------------------------
 *
 * One timer per request, armed by its first job or store call at the
 * request's start + request_timeout_ms. While a job or call is in flight
 * the timer knows how to abandon it; when it fires the client gets 504 at
 * once. The timer lives in app_data[2] and is freed with the request (its
 * on_free hook is chained in front of the application layer's).
 */
struct req_timer {
	struct event *ev;
	uint64_t deadline_ms;     /* jobs_now_ms() clock */
	void (*expire)(void *op); /* abandons the op in flight; NULL: none */
	void *op;
	void (*chained_free)(struct http_request *req);
};

static void timer_release(struct http_request *req)
{
	struct req_timer *t = req->app_data[2];
	void (*chained)(struct http_request *) = t ? t->chained_free : NULL;
	if (t && t->ev)
		event_free(t->ev);
	req->app_data[2] = NULL;
	if (chained)
		chained(req);
}

static void timer_fired(evutil_socket_t fd, short what, void *arg)
{
	struct http_request *req = arg;
	struct req_timer *t = req->app_data[2];
	(void)fd;
	(void)what;
	if (!t || !t->expire)
		return; /* nothing of ours in flight: the other party keeps its own deadline */
	t->expire(t->op);
	t->expire = NULL;
	t->op = NULL;
	app_fail(req, 504, "TIMEOUT", "request timed out");
}

/* The client went away: stop the job or call in flight and release the
 * request now (the access log records 499, as nginx does). */
static void client_gone(struct http_request *req)
{
	struct req_timer *t = req->app_data[2];
	if (!t || !t->expire)
		return; /* nothing of ours in flight: whoever answers releases it */
	t->expire(t->op);
	t->expire = NULL;
	t->op = NULL;
	app_fail(req, 499, "CLIENT_CLOSED", "client closed request");
}

/* Arm (or re-use) the request's timer for op; returns the absolute deadline,
 * or 0 when it has already passed (the caller answers 504). */
static uint64_t deadline_arm(struct http_request *req, void (*expire)(void *op), void *op)
{
	struct req_timer *t = req->app_data[2];
	if (!t) {
		struct worker *w = worker_current();
		uint64_t start_ms = req->start_ns / 1000000ull;
		t = http_alloc(req, sizeof(*t));
		if (!t)
			return 0;
		memset(t, 0, sizeof(*t));
		t->deadline_ms = start_ms + (uint64_t)w->cfg->request_timeout_ms;
		uint64_t now = jobs_now_ms();
		if (now >= t->deadline_ms)
			return 0;
		t->ev = evtimer_new(w->base, timer_fired, req);
		if (!t->ev)
			return 0;
		uint64_t left = t->deadline_ms - now;
		struct timeval tv = {(time_t)(left / 1000), (suseconds_t)((left % 1000) * 1000)};
		evtimer_add(t->ev, &tv);
		t->chained_free = req->on_free;
		req->on_free = timer_release;
		req->on_abort = client_gone;
		req->app_data[2] = t;
	} else if (jobs_now_ms() >= t->deadline_ms) {
		return 0;
	}
	t->expire = expire;
	t->op = op;
	return t->deadline_ms;
}

/* The op in flight finished: the timer no longer abandons it. */
static void deadline_settle(struct http_request *req)
{
	struct req_timer *t = req->app_data[2];
	if (t) {
		t->expire = NULL;
		t->op = NULL;
	}
}

static int fail_timeout(struct http_request *req)
{
	return app_fail(req, 504, "TIMEOUT", "request timed out");
}

static int fail_busy(struct http_request *req)
{
	http_add_header(req, "Retry-After", "1");
	return app_fail(req, 503, "SERVICE_UNAVAILABLE", "server busy, try again");
}

/* ---- route jobs --------------------------------------------------------- */

static void job_free(struct api_job *j)
{
	if (j->cleanup)
		j->cleanup(j);
	free(j);
}

static void job_run(struct job *job)
{
	struct api_job *j = (struct api_job *)job;
	j->work(j);
}

static void job_done(struct job *job, int status)
{
	struct api_job *j = (struct api_job *)job;
	struct http_request *req = j->req;
	if (req) {
		deadline_settle(req);
		if (status == JOB_EXPIRED)
			fail_timeout(req);
		else if (status != JOB_OK)
			app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		else if (j->fail_status)
			app_fail(req, j->fail_status, j->fail_code, j->fail_msg);
		else if (j->err != STORE_OK)
			api_fail_store(req, j->err, j->dup_field);
		else
			j->done(j, req);
	}
	job_free(j);
}

static void job_expire(void *op)
{
	struct api_job *j = op;
	j->req = NULL;
	jobs_abandon(&j->job); /* done() still runs once; it frees j */
}

void *api_job_new(struct http_request *req, size_t size, api_job_fn work, api_job_done_fn done)
{
	if (size < sizeof(struct api_job))
		return NULL;
	struct api_job *j = calloc(1, size);
	if (!j)
		return NULL;
	j->req = req;
	j->work = work;
	j->done = done;
	j->job.work = job_run;
	j->job.done = job_done;
	return j;
}

void api_job_slow(struct api_job *j)
{
	j->job.slow = true;
}

void api_job_reads(struct api_job *j)
{
	j->job.lane = JOB_LANE_READ;
}

int api_job_drop(struct api_job *j)
{
	struct http_request *req = j->req;
	job_free(j);
	return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
}

int api_job_submit(struct api_job *j)
{
	struct http_request *req = j->req;
	struct job_pool *pool = g_store ? store_job_pool(g_store) : NULL;
	if (!pool) {
		job_free(j);
		return app_fail(req, 503, "DB_UNAVAILABLE", "database unavailable");
	}
	uint64_t deadline = deadline_arm(req, job_expire, j);
	if (!deadline) {
		job_free(j);
		return fail_timeout(req);
	}
	j->job.deadline_ms = deadline;
	if (jobs_submit(pool, &j->job) < 0) {
		deadline_settle(req);
		job_free(j);
		return fail_busy(req);
	}
	return APP_DONE;
}

enum store_err api_exec(struct api_job *j, struct store_op *op)
{
	if (atomic_load(&j->job.abandoned) || jobs_now_ms() >= j->job.deadline_ms)
		return op->err = STORE_TIMEOUT;
	op->deadline_ms = j->job.deadline_ms;
	return store_exec(g_store, op);
}

int api_run(struct api_job *j, struct store_op *op)
{
	enum store_err err = api_exec(j, op);
	if (err == STORE_OK)
		return 0;
	if (j->err == STORE_OK && !j->fail_status) {
		j->err = err;
		memcpy(j->dup_field, op->dup_field, sizeof(j->dup_field));
	}
	return -1;
}

int api_job_fail(struct api_job *j, int status, const char *code, const char *msg)
{
	if (j->err == STORE_OK && !j->fail_status) {
		j->fail_status = status;
		j->fail_code = code;
		j->fail_msg = msg;
	}
	return -1;
}

/* Run a one-document op and hand its result to the caller. */
static bson_t *take_result(struct api_job *j, struct store_op *op)
{
	bson_t *doc = NULL;
	if (api_run(j, op) == 0) {
		doc = op->result;
		op->result = NULL;
	}
	store_op_clear(op);
	return doc;
}

bson_t *api_find_by_id(struct api_job *j, int coll, const bson_oid_t *id)
{
	struct store_op op;
	store_op_init(&op, STORE_OP_FIND_BY_ID, coll);
	bson_oid_copy(id, &op.id);
	return take_result(j, &op);
}

bson_t *api_update_by_id(struct api_job *j, int coll, const bson_oid_t *id, bson_t *fields)
{
	struct store_op op;
	store_op_init(&op, STORE_OP_UPDATE_BY_ID, coll);
	bson_oid_copy(id, &op.id);
	op.doc = fields;
	return take_result(j, &op);
}

/* ---- lists -------------------------------------------------------------- */

size_t api_distinct_oids(bson_t *const *docs, size_t n, const char *field, const char *unless,
                         bson_oid_t ids[STORE_IN_MAX])
{
	size_t nids = 0;
	for (size_t i = 0; i < n && nids < STORE_IN_MAX; i++) {
		bson_oid_t id;
		if ((unless && bson_has_field(docs[i], unless)) || api_doc_oid(docs[i], field, &id) < 0)
			continue;
		size_t k = 0;
		while (k < nids && !bson_oid_equal(&ids[k], &id))
			k++;
		if (k == nids)
			bson_oid_copy(&id, &ids[nids++]);
	}
	return nids;
}

/* Fetch the documents the page's items refer to through join_field. */
static int list_join(struct api_job *j, struct api_list *l)
{
	bson_oid_t ids[STORE_IN_MAX];
	size_t nids = api_distinct_oids(l->docs, l->ndocs, l->join_field, NULL, ids);
	if (nids == 0)
		return 0;
	struct store_op op;
	store_op_init(&op, STORE_OP_FIND, l->join_coll);
	int rc = -1;
	if (store_filter_in_oids(&op.filter, "_id", ids, nids) < 0)
		api_job_fail(j, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	else if (api_run(j, &op) == 0) {
		l->refs = op.docs;
		l->nrefs = op.ndocs;
		op.docs = NULL;
		op.ndocs = 0;
		rc = 0;
	}
	store_op_clear(&op);
	return rc;
}

int api_list_run(struct api_job *j, struct api_list *l)
{
	struct store_op op;
	int rc = -1;
	store_op_init(&op, STORE_OP_COUNT, l->coll);
	op.filter = l->filter; /* borrowed: not cleared with the op */
	if (api_run(j, &op) < 0)
		goto out;
	l->total = op.count;
	int64_t skip = (l->page - 1) * l->limit;
	if (skip < l->total) {
		op.kind = STORE_OP_FIND;
		store_filter_page(&op.filter, skip, l->limit);
		if (api_run(j, &op) < 0)
			goto out;
		l->docs = op.docs;
		l->ndocs = op.ndocs;
		op.docs = NULL;
		op.ndocs = 0;
	}
	rc = l->join_field ? list_join(j, l) : 0;
out:
	memset(&op.filter, 0, sizeof(op.filter));
	store_op_clear(&op);
	return rc;
}

const bson_t *api_list_ref(const struct api_list *l, const bson_t *item)
{
	bson_oid_t want, id;
	if (!l->join_field || api_doc_oid(item, l->join_field, &want) < 0)
		return NULL;
	for (size_t i = 0; i < l->nrefs; i++)
		if (api_doc_oid(l->refs[i], "_id", &id) == 0 && bson_oid_equal(&id, &want))
			return l->refs[i];
	return NULL;
}

static void docs_free(bson_t **docs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		bson_destroy(docs[i]);
	free(docs);
}

void api_list_clear(struct api_list *l)
{
	docs_free(l->docs, l->ndocs);
	docs_free(l->refs, l->nrefs);
	l->docs = l->refs = NULL;
	l->ndocs = l->nrefs = 0;
	store_filter_clear(&l->filter);
}

void *api_list_json(const struct api_list *l, api_item_gen gen)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	if (!g)
		return NULL;
	yajl_gen_map_open(g);
	json_gen_cstr(g, "success");
	yajl_gen_bool(g, 1);
	json_gen_cstr(g, "data");
	yajl_gen_array_open(g);
	for (size_t i = 0; i < l->ndocs; i++)
		gen(g, l->docs[i], l);
	yajl_gen_array_close(g);
	json_gen_cstr(g, "pagination");
	yajl_gen_map_open(g);
	json_gen_cstr(g, "page");
	yajl_gen_integer(g, l->page);
	json_gen_cstr(g, "limit");
	yajl_gen_integer(g, l->limit);
	json_gen_cstr(g, "total");
	yajl_gen_integer(g, l->total);
	json_gen_cstr(g, "pages");
	yajl_gen_integer(g, l->limit > 0 ? (l->total + l->limit - 1) / l->limit : 0);
	yajl_gen_map_close(g);
	if (yajl_gen_map_close(g) != yajl_gen_status_ok) {
		yajl_gen_free(g);
		return NULL;
	}
	return g;
}

void api_send_json(struct http_request *req, int status, const void *buf, size_t len)
{
	struct evbuffer *b = http_body(req);
	if (!b || evbuffer_add(b, buf, len) < 0) {
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
	http_set_status(req, status);
	http_send(req);
}

void api_send_list(struct http_request *req, const struct api_list *l, api_item_gen gen)
{
	yajl_gen g = api_list_json(l, gen);
	const unsigned char *buf;
	size_t len;
	if (!g || yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok)
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	else
		api_send_json(req, 200, buf, len);
	if (g)
		yajl_gen_free(g);
}

/* ---- single store calls (middleware, the chat upgrade) ------------------ */

static void call_free(struct api_call *c)
{
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
	deadline_settle(c->req);
	c->cb(c, err); /* may answer (and free) the request */
	call_free(c);
}

static void call_expire(void *op)
{
	struct api_call *c = op;
	c->req = NULL;
	store_op_abandon(&c->op); /* done() frees c later */
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
	if (!g_store) {
		call_free(c);
		return app_fail(req, 503, "DB_UNAVAILABLE", "database unavailable");
	}
	uint64_t deadline = deadline_arm(req, call_expire, c);
	if (!deadline) {
		call_free(c);
		return fail_timeout(req);
	}
	c->op.deadline_ms = deadline;
	if (store_submit(g_store, &c->op) < 0) {
		deadline_settle(req);
		call_free(c);
		return app_fail(req, 503, "DB_UNAVAILABLE", "database unavailable");
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

static void gen_value(yajl_gen g, bson_iter_t *it);

/* A sub-document or array, every element rendered (values only: what a
 * serializer lists at the top level decides what is sent). */
static void gen_nested(yajl_gen g, bson_iter_t *it, int is_array)
{
	if (is_array)
		yajl_gen_array_open(g);
	else
		yajl_gen_map_open(g);
	while (bson_iter_next(it)) {
		if (!is_array) {
			const char *key = bson_iter_key(it);
			yajl_gen_string(g, (const unsigned char *)key, strlen(key));
		}
		gen_value(g, it);
	}
	if (is_array)
		yajl_gen_array_close(g);
	else
		yajl_gen_map_close(g);
}

static void gen_value(yajl_gen g, bson_iter_t *it)
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
		if (bson_iter_recurse(it, &child))
			gen_nested(g, &child, bson_iter_type(it) == BSON_TYPE_ARRAY);
		else
			yajl_gen_null(g);
		break;
	}
	default: yajl_gen_null(g); break;
	}
}

void api_gen_field(void *gp, const bson_t *doc, const char *field)
{
	yajl_gen g = gp;
	bson_iter_t it;
	yajl_gen_string(g, (const unsigned char *)field, strlen(field));
	if (doc && bson_iter_init_find(&it, doc, field))
		gen_value(g, &it);
	else
		yajl_gen_null(g);
}

void api_gen_ids(void *gp, const bson_t *doc)
{
	yajl_gen g = gp;
	bson_oid_t id;
	char hex[25];
	int have = api_doc_oid(doc, "_id", &id) == 0;
	if (have)
		store_id_format(&id, hex);
	for (int i = 0; i < 2; i++) {
		const char *key = i ? "_id" : "id";
		yajl_gen_string(g, (const unsigned char *)key, strlen(key));
		if (have)
			yajl_gen_string(g, (const unsigned char *)hex, 24);
		else
			yajl_gen_null(g);
	}
}

void api_gen_object(void *gp, const bson_t *doc, const char *const *fields)
{
	yajl_gen g = gp;
	if (!doc) {
		yajl_gen_null(g);
		return;
	}
	yajl_gen_map_open(g);
	api_gen_ids(g, doc);
	for (; *fields; fields++)
		if (bson_has_field(doc, *fields)) /* absent stays absent, as in Mongoose's toJSON */
			api_gen_field(g, doc, *fields);
	yajl_gen_map_close(g);
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
