/* patients.c - /api/patients (SPEC section 6): patient records for
 * authenticated users, writes for admins, and the sync with the external
 * patient records API through its own circuit breaker ("external-api").
 *
 * Field rules (the SPEC names the fields; where it is silent we chose):
 *   name           required, 1-100 characters
 *   email          required, a valid address; stored lower-case
 *   dateOfBirth    optional, "YYYY-MM-DD", a real calendar date, not after
 *                  today (UTC)
 *   status         optional, active | inactive | discharged (default active)
 *   ssn            optional, 1-20 characters
 *   medicalRecord  optional, 0-10000 characters
 *   externalId     optional, 1-100 characters (the external API's key)
 * PATCH takes the same rules with every field optional and at least one
 * present. A JSON null counts as absent. Lists (newest first, ?status=
 * filter) leave out ssn and medicalRecord; GET /:id returns everything.
 * DELETE is a hard delete.
 *
 * POST /api/patients/:id/sync (admin):
 *   - RESIL_EXTERNAL_API_URL unset -> 503 SERVICE_UNAVAILABLE (checked
 *     before the database); an https:// URL likewise (the client speaks
 *     plain http only, see httpclient.h) and is logged at error level.
 *   - unknown patient -> 404; patient without externalId -> 400
 *     VALIDATION_ERROR.
 *   - GET {url}/patients/{externalId, percent-encoded} with Authorization:
 *     Bearer {RESIL_EXTERNAL_API_KEY}; each attempt is bounded by
 *     RESIL_EXTERNAL_API_TIMEOUT and by what is left of the request's
 *     deadline. Retries follow RETRY_POLICY_HTTP (3 retries, full jitter)
 *     and never run past the deadline.
 *   - 2xx -> merge name, email, dateOfBirth, status, medicalRecord from the
 *     JSON object returned (or from its "data" object when the top level
 *     has none of them); each field is validated with the rules above and
 *     an invalid one is skipped (its name is logged, never its value);
 *     other fields are ignored. The updated patient is returned (200).
 *   - 404 -> 404 NOT_FOUND. Other 4xx except 408/429 -> 503
 *     SERVICE_UNAVAILABLE at once (not retried: a bad key or request).
 *   - 429 -> wait Retry-After (or the backoff when it has none) if that
 *     fits the retry budget and the deadline, else 503 SERVICE_UNAVAILABLE
 *     with our own Retry-After.
 *   - 408, 5xx, timeouts and connection errors count as breaker failures
 *     and are retried; when retries are exhausted -> 503
 *     SERVICE_UNAVAILABLE; if the request's deadline cut the last attempt
 *     short -> 504 TIMEOUT. 2xx, 404, 429 and other 4xx count as
 *     successes: the service answered.
 *   - breaker open (before or between attempts) -> 503 CIRCUIT_OPEN at
 *     once, the envelope carrying "fallback": true and, as "data", the
 *     patient as stored (the last synced state).
 * Logs carry the patient id, attempts and statuses; never ssn,
 * medicalRecord, the external payload or the API key.
 */
#include "autoconfig.h"

#include "api.h"
#include "authmw.h"
#include "handlers.h"
#include "httpclient.h"
#include "json.h"
#include "log.h"
#include "resilience.h"
#include "routes.h"
#include "validate.h"

#include <ctype.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <yajl/yajl_gen.h>

#define PATIENTS_DEFAULT_LIMIT 25
#define PATIENTS_MAX_LIMIT 100
#define SYNC_MAX_BODY (1u << 20)

#define GS(g, s) yajl_gen_string(g, (const unsigned char *)(s), strlen(s))
#define STATUSES "active", "inactive", "discharged"

static const struct vrule create_rules[] = {
	V_STRING("name", V_REQUIRED, 1, 100),
	V_EMAIL("email", V_REQUIRED),
	V_DATE("dateOfBirth", V_OPTIONAL),
	V_ENUM("status", V_OPTIONAL, STATUSES),
	V_STRING("ssn", V_OPTIONAL, 1, 20),
	V_STRING("medicalRecord", V_OPTIONAL, 0, 10000),
	V_STRING("externalId", V_OPTIONAL, 1, 100),
	V_END,
};

static const struct vrule patch_rules[] = {
	V_STRING("name", V_OPTIONAL, 1, 100),
	V_EMAIL("email", V_OPTIONAL),
	V_DATE("dateOfBirth", V_OPTIONAL),
	V_ENUM("status", V_OPTIONAL, STATUSES),
	V_STRING("ssn", V_OPTIONAL, 1, 20),
	V_STRING("medicalRecord", V_OPTIONAL, 0, 10000),
	V_STRING("externalId", V_OPTIONAL, 1, 100),
	V_END,
};

/* What the external API may change. */
static const struct vrule sync_rules[] = {
	V_STRING("name", V_OPTIONAL, 1, 100),
	V_EMAIL("email", V_OPTIONAL),
	V_DATE("dateOfBirth", V_OPTIONAL),
	V_ENUM("status", V_OPTIONAL, STATUSES),
	V_STRING("medicalRecord", V_OPTIONAL, 0, 10000),
	V_END,
};

static const struct vrule list_rules[] = {
	V_ENUM("status", V_OPTIONAL, STATUSES),
	V_END,
};

static const char *const list_omit[] = {"ssn", "medicalRecord", NULL};

/* ---- shared helpers ----------------------------------------------------- */

static int fail_nomem(struct http_request *req)
{
	return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
}

static struct log_ctx req_log(struct http_request *req)
{
	struct app_ctx *ctx = app_ctx(req);
	return (struct log_ctx){
		.request_id = req->request_id,
		.trace_id = req->trace_id[0] ? req->trace_id : NULL,
		.user_id = ctx ? ctx->principal_id : NULL,
	};
}

static int has_error(const struct verrors *e, const char *field)
{
	for (int i = 0; i < e->count; i++)
		if (strcmp(e->details[i].field, field) == 0)
			return 1;
	return 0;
}

static void add_error(struct verrors *e, const char *field, const char *message)
{
	if (e->count >= VERR_MAX) {
		e->truncated = 1;
		return;
	}
	snprintf(e->details[e->count].field, VERR_FIELD_MAX, "%s", field);
	snprintf(e->details[e->count].message, VERR_MSG_MAX, "%s", message);
	e->count++;
}

/* Validate against rules, plus: a date of birth may not be in the future. */
static int check_patient(const struct json_value *body, const struct vrule *rules, struct verrors *e)
{
	validate(body, rules, e);
	size_t len;
	const char *dob = json_get_str(body, "dateOfBirth", &len);
	if (dob && len == 10 && !has_error(e, "dateOfBirth")) {
		char today[16];
		time_t now = time(NULL);
		struct tm tm;
		gmtime_r(&now, &tm);
		strftime(today, sizeof(today), "%Y-%m-%d", &tm);
		if (memcmp(dob, today, 10) > 0)
			add_error(e, "dateOfBirth", "dateOfBirth must not be in the future");
	}
	return e->count;
}

/* Append the string fields named by rules that are present in obj and
 * have no entry in e; the email lower-cased. 0 or -1 (OOM). */
static int append_fields(bson_t *doc, const struct json_value *obj, const struct vrule *rules, const struct verrors *e)
{
	for (const struct vrule *r = rules; r->field; r++) {
		size_t len;
		const char *s = json_get_str(obj, r->field, &len);
		if (!s || has_error(e, r->field) || len > INT32_MAX)
			continue;
		int ok;
		if (strcmp(r->field, "email") == 0) {
			char low[256];
			if (len >= sizeof(low))
				continue; /* cannot happen: validated emails are at most 254 bytes */
			for (size_t i = 0; i < len; i++)
				low[i] = (char)tolower((unsigned char)s[i]);
			ok = bson_append_utf8(doc, r->field, -1, low, (int)len);
		} else {
			ok = bson_append_utf8(doc, r->field, -1, s, (int)len);
		}
		if (!ok)
			return -1;
	}
	return 0;
}

struct raw_doc {
	const uint8_t *data;
	uint32_t len;
};

static int keep_doc(struct http_request *req, const bson_t *doc, struct raw_doc *out)
{
	uint8_t *p = http_alloc(req, doc->len);
	if (!p)
		return -1;
	memcpy(p, bson_get_data(doc), doc->len);
	out->data = p;
	out->len = doc->len;
	return 0;
}

static void send_patient(struct http_request *req, int status, const bson_t *doc)
{
	yajl_gen g = app_gen(req);
	if (!g) {
		fail_nomem(req);
		return;
	}
	api_gen_doc(g, doc, NULL);
	app_send_gen(req, status);
}

/* ---- CRUD --------------------------------------------------------------- */

struct list_state {
	int64_t page, limit, total;
	const char *status; /* NULL: all */
};

static int build_filter(struct store_filter *f, const char *status)
{
	if (status && store_filter_str(f, "status", STORE_EQ, status) < 0)
		return -1;
	return 0;
}

static void got_list(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	struct list_state *ls = c->data;
	if (err != STORE_OK) {
		api_fail_store(req, err, NULL);
		return;
	}
	yajl_gen g = app_gen(req);
	if (!g) {
		fail_nomem(req);
		return;
	}
	yajl_gen_array_open(g);
	for (size_t i = 0; i < c->op.ndocs; i++)
		api_gen_doc(g, c->op.docs[i], list_omit);
	yajl_gen_array_close(g);
	app_gen_pagination(req, ls->page, ls->limit, ls->total);
	app_send_gen(req, 200);
}

static void got_count(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	struct list_state *ls = c->data;
	if (err != STORE_OK) {
		api_fail_store(req, err, NULL);
		return;
	}
	ls->total = c->op.count;
	int64_t skip = (ls->page - 1) * ls->limit;
	if (ls->total <= skip) {
		yajl_gen g = app_gen(req);
		if (!g) {
			fail_nomem(req);
			return;
		}
		yajl_gen_array_open(g);
		yajl_gen_array_close(g);
		app_gen_pagination(req, ls->page, ls->limit, ls->total);
		app_send_gen(req, 200);
		return;
	}
	struct api_call *lc = api_call_new(req, STORE_OP_FIND, STORE_PATIENTS, got_list);
	if (!lc) {
		fail_nomem(req);
		return;
	}
	lc->data = ls;
	if (build_filter(&lc->op.filter, ls->status) < 0 || store_filter_sort(&lc->op.filter, "createdAt", -1) < 0) {
		store_op_clear(&lc->op);
		free(lc);
		fail_nomem(req);
		return;
	}
	store_filter_page(&lc->op.filter, skip, ls->limit);
	api_call_submit(lc);
}

static int patients_list(struct http_request *req)
{
	int64_t page, limit;
	if (api_pagination(req, PATIENTS_DEFAULT_LIMIT, PATIENTS_MAX_LIMIT, &page, &limit) < 0)
		return APP_DONE;
	const struct json_value *q = app_query(req);
	struct verrors errs;
	if (validate(q, list_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	struct list_state *ls = http_alloc(req, sizeof(*ls));
	if (!ls)
		return fail_nomem(req);
	memset(ls, 0, sizeof(*ls));
	ls->page = page;
	ls->limit = limit;
	ls->status = json_get_str(q, "status", NULL);
	struct api_call *c = api_call_new(req, STORE_OP_COUNT, STORE_PATIENTS, got_count);
	if (!c)
		return fail_nomem(req);
	c->data = ls;
	if (build_filter(&c->op.filter, ls->status) < 0) {
		store_op_clear(&c->op);
		free(c);
		return fail_nomem(req);
	}
	return api_call_submit(c);
}

/* One-document answers: c->n is the success status. */
static void got_doc(struct api_call *c, enum store_err err)
{
	if (err != STORE_OK) {
		api_fail_store(c->req, err, c->op.dup_field);
		return;
	}
	send_patient(c->req, (int)c->n, c->op.result);
}

static void got_deleted(struct api_call *c, enum store_err err)
{
	if (err != STORE_OK) {
		api_fail_store(c->req, err, NULL);
		return;
	}
	app_no_content(c->req);
}

static int by_id(struct http_request *req, int kind, api_cb cb, bson_t *doc, int status)
{
	bson_oid_t id;
	if (api_param_id(req, "id", &id) < 0) {
		if (doc)
			bson_destroy(doc);
		return APP_DONE;
	}
	struct api_call *c = api_call_new(req, kind, STORE_PATIENTS, cb);
	if (!c) {
		if (doc)
			bson_destroy(doc);
		return fail_nomem(req);
	}
	bson_oid_copy(&id, &c->op.id);
	c->op.doc = doc;
	c->n = status;
	return api_call_submit(c);
}

static int patients_get(struct http_request *req)
{
	return by_id(req, STORE_OP_FIND_BY_ID, got_doc, NULL, 200);
}

static int patients_delete(struct http_request *req)
{
	return by_id(req, STORE_OP_DELETE_BY_ID, got_deleted, NULL, 204);
}

static int patients_create(struct http_request *req)
{
	const struct json_value *body = app_body(req);
	struct verrors errs;
	if (check_patient(body, create_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	bson_t *doc = bson_new();
	if (!doc || append_fields(doc, body, create_rules, &errs) < 0 ||
	    (!json_get_str(body, "status", NULL) && !BSON_APPEND_UTF8(doc, "status", "active"))) {
		if (doc)
			bson_destroy(doc);
		return fail_nomem(req);
	}
	struct api_call *c = api_call_new(req, STORE_OP_INSERT, STORE_PATIENTS, got_doc);
	if (!c) {
		bson_destroy(doc);
		return fail_nomem(req);
	}
	c->op.doc = doc;
	c->n = 201;
	return api_call_submit(c);
}

static int patients_patch(struct http_request *req)
{
	const struct json_value *body = app_body(req);
	struct verrors errs;
	if (check_patient(body, patch_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	bson_t *doc = bson_new();
	if (!doc || append_fields(doc, body, patch_rules, &errs) < 0) {
		if (doc)
			bson_destroy(doc);
		return fail_nomem(req);
	}
	if (bson_count_keys(doc) == 0) {
		bson_destroy(doc);
		add_error(&errs, "body", "body must contain at least one patient field");
		return app_fail_validation(req, &errs);
	}
	return by_id(req, STORE_OP_UPDATE_BY_ID, got_doc, doc, 200);
}

/* ---- sync with the external API ----------------------------------------- */

static struct breaker ext_breaker;
static int ext_breaker_ready;
static struct httpc *ext_client;
static int stopping;

/* Sync requests waiting on the external API (an attempt or a backoff). */
struct sync {
	struct http_request *req;
	struct sync *prev, *next;
	int linked;
	bson_oid_t id;
	struct raw_doc patient; /* as stored before the sync */
	char *url;
	unsigned attempts;
	uint64_t deadline_ms; /* request deadline, CLOCK_MONOTONIC ms */
	uint64_t timeout_ms;  /* configured per-call timeout */
	int capped;           /* this attempt's timeout was cut by the deadline */
	struct httpc_call *call;
	struct event *timer;
};

static struct sync *syncs;

static void breaker_changed(void *ud, const char *name, int from, int to)
{
	(void)ud;
	if (to == BREAKER_OPEN)
		log_warn(NULL, "circuit breaker opened", LF_STR("circuit", name), LF_STR("from", breaker_state_name(from)));
	else
		log_info(NULL, "circuit breaker state changed", LF_STR("circuit", name),
		         LF_STR("from", breaker_state_name(from)), LF_STR("to", breaker_state_name(to)));
}

int patients_breaker_state(void)
{
	return ext_breaker_ready ? breaker_state(&ext_breaker) : BREAKER_CLOSED;
}

static void sync_link(struct sync *s)
{
	if (s->linked)
		return;
	s->prev = NULL;
	s->next = syncs;
	if (syncs)
		syncs->prev = s;
	syncs = s;
	s->linked = 1;
}

/* Leave the outbound phase: no call, no timer, off the list. */
static void sync_unlink(struct sync *s)
{
	if (s->call) {
		httpc_cancel(s->call);
		s->call = NULL;
	}
	if (s->timer) {
		event_free(s->timer);
		s->timer = NULL;
	}
	if (!s->linked)
		return;
	if (s->prev)
		s->prev->next = s->next;
	else
		syncs = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->prev = s->next = NULL;
	s->linked = 0;
}

static void sync_fail(struct sync *s, int status, const char *code, const char *message)
{
	sync_unlink(s);
	app_fail(s->req, status, code, message);
}

/* 503 CIRCUIT_OPEN with "fallback": true and the stored patient. */
static void sync_fallback(struct sync *s)
{
	struct http_request *req = s->req;
	sync_unlink(s);
	struct log_ctx lc = req_log(req);
	log_warn(&lc, "patient sync rejected: external api circuit open", LF_STR("circuit", "external-api"));
	yajl_gen g = yajl_gen_alloc(NULL);
	bson_t doc;
	if (!g) {
		fail_nomem(req);
		return;
	}
	yajl_gen_map_open(g);
	GS(g, "success");
	yajl_gen_bool(g, 0);
	GS(g, "error");
	GS(g, "external api circuit open, try again later");
	GS(g, "code");
	GS(g, "CIRCUIT_OPEN");
	GS(g, "fallback");
	yajl_gen_bool(g, 1);
	if (bson_init_static(&doc, s->patient.data, s->patient.len)) {
		GS(g, "data");
		api_gen_doc(g, &doc, NULL);
	}
	GS(g, "requestId");
	GS(g, req->request_id);
	yajl_gen_map_close(g);
	const unsigned char *buf;
	size_t len;
	if (yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok || evbuffer_add(http_body(req), buf, len) < 0) {
		yajl_gen_free(g);
		fail_nomem(req);
		return;
	}
	yajl_gen_free(g);
	http_set_status(req, 503);
	http_send(req);
}

static void attempt(struct sync *s);

static void backoff_done(evutil_socket_t fd, short what, void *arg)
{
	struct sync *s = arg;
	(void)fd;
	(void)what;
	event_free(s->timer);
	s->timer = NULL;
	attempt(s);
}

/* Wait delay_ms, then attempt again. */
static void retry_later(struct sync *s, uint64_t delay_ms)
{
	s->timer = evtimer_new(worker_current()->base, backoff_done, s);
	struct timeval tv = {(time_t)(delay_ms / 1000), (suseconds_t)((delay_ms % 1000) * 1000)};
	if (!s->timer || evtimer_add(s->timer, &tv) < 0) {
		sync_fail(s, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
}

static void updated(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	if (err != STORE_OK) {
		api_fail_store(req, err, NULL);
		return;
	}
	struct log_ctx lc = req_log(req);
	char hex[25];
	store_id_format(&c->op.id, hex);
	log_info(&lc, "patient synced", LF_STR("patientId", hex), LF_INT("fields", (int64_t)c->n));
	send_patient(req, 200, c->op.result);
}

/* A 2xx body: merge the known, valid fields and store them. */
static void merge(struct sync *s, const char *body, size_t len)
{
	struct http_request *req = s->req;
	struct log_ctx lc = req_log(req);
	char hex[25];
	store_id_format(&s->id, hex);
	sync_unlink(s);
	struct json_value *v = NULL;
	if (json_parse(body, len, 64, SYNC_MAX_BODY, &v) != JSON_OK || v->type != JSON_OBJECT) {
		if (v)
			json_free(v);
		log_warn(&lc, "patient sync: external api returned no json object", LF_STR("patientId", hex));
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "external api returned an invalid response");
		return;
	}
	const struct json_value *obj = v;
	int known = 0;
	for (const struct vrule *r = sync_rules; r->field; r++)
		known |= json_get(v, r->field) != NULL;
	const struct json_value *data = json_get(v, "data");
	if (!known && data && data->type == JSON_OBJECT)
		obj = data;
	struct verrors errs;
	check_patient(obj, sync_rules, &errs);
	for (int i = 0; i < errs.count; i++)
		log_warn(&lc, "patient sync: ignored an invalid field from the external api",
		         LF_STR("patientId", hex), LF_STR("field", errs.details[i].field));
	bson_t *doc = bson_new();
	if (!doc || append_fields(doc, obj, sync_rules, &errs) < 0) {
		if (doc)
			bson_destroy(doc);
		json_free(v);
		fail_nomem(req);
		return;
	}
	json_free(v);
	uint32_t nfields = bson_count_keys(doc);
	if (nfields == 0) {
		bson_destroy(doc);
		bson_t cur;
		log_info(&lc, "patient synced", LF_STR("patientId", hex), LF_INT("fields", 0));
		if (!bson_init_static(&cur, s->patient.data, s->patient.len)) {
			app_fail(req, 500, "INTERNAL", "internal server error");
			return;
		}
		send_patient(req, 200, &cur);
		return;
	}
	struct api_call *c = api_call_new(req, STORE_OP_UPDATE_BY_ID, STORE_PATIENTS, updated);
	if (!c) {
		bson_destroy(doc);
		fail_nomem(req);
		return;
	}
	bson_oid_copy(&s->id, &c->op.id);
	c->op.doc = doc;
	c->n = nfields;
	api_call_submit(c);
}

static void got_reply(const struct httpc_response *res, void *ud)
{
	struct sync *s = ud;
	s->call = NULL;
	struct log_ctx lc = req_log(s->req);
	char hex[25];
	store_id_format(&s->id, hex);
	int status = res->err == HTTPC_OK ? res->status : 0;
	int ok_for_breaker = status >= 200 && status < 500 && status != 408;
	breaker_record(&ext_breaker, ok_for_breaker);
	log_info(&lc, "external api call", LF_STR("patientId", hex), LF_INT("attempt", s->attempts),
	         LF_INT("status", status), LF_STR("error", httpc_err_name(res->err)));

	if (status >= 200 && status < 300) {
		merge(s, res->body, res->body_len);
		return;
	}
	if (status == 404) {
		sync_fail(s, 404, "NOT_FOUND", "patient not found in the external api");
		return;
	}
	if (status && retry_http_status_bails(status)) {
		sync_fail(s, 503, "SERVICE_UNAVAILABLE", "external api rejected the request");
		return;
	}
	uint64_t now = rclock_now_ms();
	if (res->err == HTTPC_ERR_TIMEOUT && s->capped && now + 1 >= s->deadline_ms) {
		sync_fail(s, 504, "TIMEOUT", "request timed out");
		return;
	}
	struct retry_policy p = RETRY_POLICY_HTTP;
	uint64_t delay = retry_backoff_ms(&p, s->attempts - 1, NULL, NULL);
	if (status == 429 && res->retry_after_ms)
		delay = res->retry_after_ms;
	if (retry_should_retry(&p, s->attempts, 0, delay, now, s->deadline_ms)) {
		retry_later(s, delay);
		return;
	}
	if (status == 429) {
		char ra[24];
		uint64_t secs = res->retry_after_ms ? (res->retry_after_ms + 999) / 1000 : 1;
		snprintf(ra, sizeof(ra), "%llu", (unsigned long long)secs);
		http_add_header(s->req, "Retry-After", ra);
		sync_fail(s, 503, "SERVICE_UNAVAILABLE", "external api rate limit, try again later");
		return;
	}
	log_warn(&lc, "patient sync failed: external api unavailable", LF_STR("patientId", hex),
	         LF_INT("attempts", s->attempts), LF_INT("status", status), LF_STR("error", httpc_err_name(res->err)));
	sync_fail(s, 503, "SERVICE_UNAVAILABLE", "external api unavailable");
}

static void attempt(struct sync *s)
{
	if (stopping) {
		sync_fail(s, 503, "SHUTTING_DOWN", "server is shutting down");
		return;
	}
	uint64_t now = rclock_now_ms();
	if (now >= s->deadline_ms) {
		sync_fail(s, 504, "TIMEOUT", "request timed out");
		return;
	}
	if (!breaker_allow(&ext_breaker)) {
		sync_fallback(s);
		return;
	}
	uint64_t left = s->deadline_ms - now;
	uint64_t tmo = s->timeout_ms < left ? s->timeout_ms : left;
	s->capped = tmo < s->timeout_ms;
	s->attempts++;
	const struct resil_config *cfg = worker_current()->cfg;
	struct httpc_request r = {
		.method = HTTPC_GET,
		.url = s->url,
		.bearer = cfg->external_api_key,
		.timeout_ms = tmo,
		.max_body = SYNC_MAX_BODY,
	};
	if (!ext_client)
		ext_client = httpc_new(worker_current()->base);
	int rc = ext_client ? httpc_start(ext_client, &r, got_reply, s, &s->call) : HTTPC_ERR_NOMEM;
	if (rc != HTTPC_OK) {
		breaker_record(&ext_breaker, 0);
		struct log_ctx lc = req_log(s->req);
		log_error(&lc, "patient sync: cannot call the external api", LF_STR("error", httpc_err_name(rc)));
		sync_fail(s, 503, "SERVICE_UNAVAILABLE", "external api unavailable");
		return;
	}
	sync_link(s);
}

static void got_sync_patient(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	struct sync *s = c->data;
	if (err != STORE_OK) {
		api_fail_store(req, err, NULL);
		return;
	}
	size_t xlen;
	const char *xid = api_doc_str(c->op.result, "externalId");
	if (!xid || !(xlen = strlen(xid))) {
		struct verrors errs = {0};
		add_error(&errs, "externalId", "externalId is required to sync a patient");
		app_fail_validation(req, &errs);
		return;
	}
	const struct resil_config *cfg = worker_current()->cfg;
	char *enc = evhttp_uriencode(xid, (ev_ssize_t)xlen, 0);
	size_t ulen = enc ? strlen(cfg->external_api_url) + strlen(enc) + 16 : 0;
	s->url = enc ? http_alloc(req, ulen) : NULL;
	if (!s->url || keep_doc(req, c->op.result, &s->patient) < 0) {
		free(enc);
		fail_nomem(req);
		return;
	}
	snprintf(s->url, ulen, "%s/patients/%s", cfg->external_api_url, enc);
	free(enc);
	bson_oid_copy(&c->op.id, &s->id);
	attempt(s);
}

static int patients_sync(struct http_request *req)
{
	bson_oid_t id;
	if (api_param_id(req, "id", &id) < 0)
		return APP_DONE;
	struct worker *w = worker_current();
	const char *url = w->cfg->external_api_url;
	if (!url[0])
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "external api not configured");
	if (strncasecmp(url, "http://", 7) != 0) {
		struct log_ctx lc = req_log(req);
		log_error(&lc, "patient sync: RESIL_EXTERNAL_API_URL must be an http:// URL (https is not supported)",
		          LF_STR("setting", "external_api_url"));
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "external api not available");
	}
	if (stopping)
		return app_fail(req, 503, "SHUTTING_DOWN", "server is shutting down");
	if (!ext_breaker_ready)
		return fail_nomem(req);
	struct sync *s = http_alloc(req, sizeof(*s));
	if (!s)
		return fail_nomem(req);
	memset(s, 0, sizeof(*s));
	s->req = req;
	s->deadline_ms = req->start_ns / 1000000u + (uint64_t)w->cfg->request_timeout_ms;
	s->timeout_ms = w->cfg->external_api_timeout_ms > 0 ? (uint64_t)w->cfg->external_api_timeout_ms
	                                                     : HTTPC_TIMEOUT_DEFAULT_MS;
	struct api_call *c = api_call_new(req, STORE_OP_FIND_BY_ID, STORE_PATIENTS, got_sync_patient);
	if (!c)
		return fail_nomem(req);
	bson_oid_copy(&id, &c->op.id);
	c->data = s;
	return api_call_submit(c);
}

int patients_routes(struct app *app)
{
	if (!ext_breaker_ready) {
		struct breaker_opts bo = {.name = "external-api", .on_state_change = breaker_changed};
		if (breaker_init(&ext_breaker, &bo) < 0)
			return -1;
		ext_breaker_ready = 1;
	}
	stopping = 0;
	health_add_circuit("external-api", patients_breaker_state);
	int rc = 0;
	rc |= app_get(app, "/api/patients", mw_auth, patients_list);
	rc |= app_get(app, "/api/patients/:id", mw_auth, patients_get);
	rc |= app_post(app, "/api/patients", mw_auth, mw_admin, patients_create);
	rc |= app_patch(app, "/api/patients/:id", mw_auth, mw_admin, patients_patch);
	rc |= app_delete(app, "/api/patients/:id", mw_auth, mw_admin, patients_delete);
	rc |= app_post(app, "/api/patients/:id/sync", mw_auth, mw_admin, patients_sync);
	return rc;
}

void patients_stop(void)
{
	stopping = 1;
	while (syncs) {
		struct sync *s = syncs;
		sync_fail(s, 503, "SHUTTING_DOWN", "server is shutting down");
	}
	httpc_free(ext_client);
	ext_client = NULL;
	if (ext_breaker_ready)
		breaker_destroy(&ext_breaker);
	ext_breaker_ready = 0;
}
