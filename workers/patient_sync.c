/* patient_sync.c - POST /api/patients/:id/sync (admin, SPEC section 6):
 * merge what the external patient records API knows about a patient,
 * through its own circuit breaker ("external-api").
 *
 * The one route that is more than one job: load the patient (a job), call
 * the external API asynchronously on the loop (attempts, backoff timers and
 * the breaker live here), then store the merge (a second job). The outbound
 * phase keeps its own deadline (the request's), since no job is in flight
 * while it waits.
 *
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
#include "audit.h"
#include "handlers.h"
#include "httpclient.h"
#include "json.h"
#include "log.h"
#include "patients.h"
#include "resilience.h"
#include "routes.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yajl/yajl_gen.h>

#define SYNC_MAX_BODY (1u << 20)

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

struct raw_doc {
	const uint8_t *data;
	uint32_t len;
};

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
	uint64_t deadline_ms;     /* request deadline, CLOCK_MONOTONIC ms */
	uint64_t timeout_ms;      /* configured per-call timeout */
	int capped;               /* this attempt's timeout was cut by the deadline */
	uint64_t call_started_ms; /* this attempt's start, CLOCK_MONOTONIC ms */
	struct httpc_call *call;
	struct event *timer;
};

static struct sync *syncs;

static void breaker_changed(void *ud, const char *name, int from, int to)
{
	(void)ud;
	if (to == BREAKER_OPEN)
		log_warn(NULL, "circuit breaker opened", LF_STR("circuit", name),
		         LF_STR("from", breaker_state_name(from)));
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
	json_gen_cstr(g, "success");
	yajl_gen_bool(g, 0);
	json_gen_cstr(g, "error");
	json_gen_cstr(g, "external api circuit open, try again later");
	json_gen_cstr(g, "code");
	json_gen_cstr(g, "CIRCUIT_OPEN");
	json_gen_cstr(g, "fallback");
	yajl_gen_bool(g, 1);
	if (bson_init_static(&doc, s->patient.data, s->patient.len)) {
		json_gen_cstr(g, "data");
		patients_gen(g, &doc, true);
	}
	json_gen_cstr(g, "requestId");
	json_gen_cstr(g, req->request_id);
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

/* The two jobs of a sync: load the patient, then store the merge. */
struct sync_job {
	struct api_job base;
	struct sync *s; /* in the request's arena: touched by done() only */
	bson_oid_t id;
	bson_t *fields; /* the merge, consumed by the store */
	uint32_t nfields;
	bson_t *patient; /* result */
	struct audit_actor actor;
};

static void sync_job_cleanup(struct api_job *j)
{
	struct sync_job *sj = (struct sync_job *)j;
	if (sj->fields)
		bson_destroy(sj->fields);
	if (sj->patient)
		bson_destroy(sj->patient);
}

static struct sync_job *sync_job_new(struct http_request *req, struct sync *s, api_job_fn work, api_job_done_fn done)
{
	struct sync_job *sj = api_job_new(req, sizeof(*sj), work, done);
	if (!sj)
		return NULL;
	sj->base.cleanup = sync_job_cleanup;
	sj->s = s;
	bson_oid_copy(&s->id, &sj->id);
	return sj;
}

static void store_work(struct api_job *j)
{
	struct sync_job *sj = (struct sync_job *)j;
	sj->patient = api_update_by_id(j, COLL_PATIENTS, &sj->id, sj->fields);
	sj->fields = NULL; /* consumed */
}

static void store_done(struct api_job *j, struct http_request *req)
{
	struct sync_job *sj = (struct sync_job *)j;
	struct log_ctx lc = req_log(req);
	char hex[25];
	store_id_format(&sj->id, hex);
	log_info(&lc, "patient synced", LF_STR("patientId", hex), LF_INT("fields", (int64_t)sj->nfields));
	patients_send(req, 200, sj->patient);
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
	for (const struct vrule *r = patient_sync_rules; r->field; r++)
		known |= json_get(v, r->field) != NULL;
	const struct json_value *data = json_get(v, "data");
	if (!known && data && data->type == JSON_OBJECT)
		obj = data;
	struct verrors errs;
	patient_check(obj, patient_sync_rules, &errs);
	for (int i = 0; i < errs.count; i++)
		log_warn(&lc, "patient sync: ignored an invalid field from the external api", LF_STR("patientId", hex),
		         LF_STR("field", errs.details[i].field));
	bson_t *doc = bson_new();
	if (!doc || patient_append_fields(doc, obj, patient_sync_rules, &errs) < 0) {
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
		patients_send(req, 200, &cur);
		return;
	}
	struct sync_job *sj = sync_job_new(req, s, store_work, store_done);
	if (!sj) {
		bson_destroy(doc);
		fail_nomem(req);
		return;
	}
	sj->fields = doc;
	sj->nfields = nfields;
	api_job_submit(&sj->base);
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
	uint64_t now = rclock_now_ms();
	uint64_t took = now >= s->call_started_ms ? now - s->call_started_ms : 0;
	log_info(&lc, "external api call", LF_STR("patientId", hex), LF_INT("attempt", s->attempts),
	         LF_INT("status", status), LF_STR("error", httpc_err_name(res->err)), LF_INT("durationMs", took));

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

/* W3C trace context for one outbound attempt: the request's trace id (one
 * is made up, and kept on the request for its log lines, when the client
 * sent none) and a fresh span id per attempt. out: 56 bytes. */
static void make_traceparent(struct http_request *req, char *out, size_t outlen)
{
	static const char hexd[] = "0123456789abcdef";
	unsigned char rnd[16];
	if (!req->trace_id[0]) {
		do
			randombytes_buf(rnd, sizeof(rnd));
		while (sodium_is_zero(rnd, sizeof(rnd)));
		for (size_t i = 0; i < sizeof(rnd); i++) {
			req->trace_id[2 * i] = hexd[rnd[i] >> 4];
			req->trace_id[2 * i + 1] = hexd[rnd[i] & 15];
		}
		req->trace_id[32] = '\0';
	}
	char span[17];
	do
		randombytes_buf(rnd, 8);
	while (sodium_is_zero(rnd, 8));
	for (size_t i = 0; i < 8; i++) {
		span[2 * i] = hexd[rnd[i] >> 4];
		span[2 * i + 1] = hexd[rnd[i] & 15];
	}
	span[16] = '\0';
	snprintf(out, outlen, "00-%s-%s-01", req->trace_id, span);
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
	char traceparent[64];
	make_traceparent(s->req, traceparent, sizeof(traceparent));
	const struct httpc_header hdrs[] = {
	    {"traceparent", traceparent},
	    {"X-Request-ID", s->req->request_id},
	};
	struct httpc_request r = {
	    .method = HTTPC_GET,
	    .url = s->url,
	    .bearer = cfg->external_api_key,
	    .timeout_ms = tmo,
	    .max_body = SYNC_MAX_BODY,
	    .headers = hdrs,
	    .nheaders = s->req->request_id[0] ? 2 : 1,
	};
	s->call_started_ms = now;
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

static void load_work(struct api_job *j)
{
	struct sync_job *sj = (struct sync_job *)j;
	sj->patient = api_find_by_id(j, COLL_PATIENTS, &sj->id);
	/* Audited before anything of the record can be sent (the merge, the
	 * unchanged record or the breaker's fallback all carry it). */
	static const char *const sensitive[] = {"ssn", "medicalRecord", NULL};
	char hex[25];
	store_id_format(&sj->id, hex);
	const char *outcome = sj->patient ? "success" : j->err == STORE_NOT_FOUND ? "not_found" : "failed";
	if (audit_log_as(&sj->actor, "patient.sync", hex, sj->patient ? sensitive : NULL, outcome) < 0 && sj->patient)
		api_job_fail(j, 503, "SERVICE_UNAVAILABLE", "audit trail unavailable");
}

static void load_done(struct api_job *j, struct http_request *req)
{
	struct sync_job *sj = (struct sync_job *)j;
	struct sync *s = sj->s;
	size_t xlen;
	const char *xid = api_doc_str(sj->patient, "externalId");
	if (!xid || !(xlen = strlen(xid))) {
		struct verrors errs = {0};
		snprintf(errs.details[0].field, VERR_FIELD_MAX, "externalId");
		snprintf(errs.details[0].message, VERR_MSG_MAX, "externalId is required to sync a patient");
		errs.count = 1;
		app_fail_validation(req, &errs);
		return;
	}
	const struct resil_config *cfg = worker_current()->cfg;
	char *enc = evhttp_uriencode(xid, (ev_ssize_t)xlen, 0);
	size_t ulen = enc ? strlen(cfg->external_api_url) + strlen(enc) + 16 : 0;
	s->url = enc ? http_alloc(req, ulen) : NULL;
	uint8_t *copy = s->url ? http_alloc(req, sj->patient->len) : NULL;
	if (!copy) {
		free(enc);
		fail_nomem(req);
		return;
	}
	memcpy(copy, bson_get_data(sj->patient), sj->patient->len);
	s->patient.data = copy;
	s->patient.len = sj->patient->len;
	snprintf(s->url, ulen, "%s/patients/%s", cfg->external_api_url, enc);
	free(enc);
	attempt(s);
}

int patient_sync_route(struct http_request *req)
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
	s->timeout_ms =
	    w->cfg->external_api_timeout_ms > 0 ? (uint64_t)w->cfg->external_api_timeout_ms : HTTPC_TIMEOUT_DEFAULT_MS;
	bson_oid_copy(&id, &s->id);
	struct sync_job *sj = sync_job_new(req, s, load_work, load_done);
	if (!sj)
		return fail_nomem(req);
	api_job_reads(&sj->base);
	audit_actor_from(&sj->actor, req);
	return api_job_submit(&sj->base);
}

int patient_sync_init(void)
{
	if (!ext_breaker_ready) {
		struct breaker_opts bo = {.name = "external-api", .on_state_change = breaker_changed};
		if (breaker_init(&ext_breaker, &bo) < 0)
			return -1;
		ext_breaker_ready = 1;
	}
	stopping = 0;
	health_add_circuit("external-api", patients_breaker_state);
	return 0;
}

void patient_sync_stop(void)
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
