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
 * Access (SPEC section 6): patient routes are for clinicians and admins
 * (anyone else authenticated: 403); writes for admins. The sync with the
 * external API is patient_sync.c.
 *
 * Every route is one job (api.h). The record's wire format is
 * patients_gen(): the fields are listed, so nothing else stored is sent.
 * Every access is audited (audit.h) by the job, before the answer: if the
 * record cannot be written the route answers 503 and sends no data.
 */
#include "autoconfig.h"

#include "api.h"
#include "audit.h"
#include "authmw.h"
#include "handlers.h"
#include "json.h"
#include "patients.h"
#include "validate.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <yajl/yajl_gen.h>

#define PATIENTS_DEFAULT_LIMIT 25
#define PATIENTS_MAX_LIMIT 100

#define STATUSES "active", "inactive", "discharged"

static const struct vrule create_rules[] = {
    V_STRING("name", V_REQUIRED, 1, 100),       V_EMAIL("email", V_REQUIRED),
    V_DATE("dateOfBirth", V_OPTIONAL),          V_ENUM("status", V_OPTIONAL, STATUSES),
    V_STRING("ssn", V_OPTIONAL, 1, 20),         V_STRING("medicalRecord", V_OPTIONAL, 0, 10000),
    V_STRING("externalId", V_OPTIONAL, 1, 100), V_END,
};

static const struct vrule patch_rules[] = {
    V_STRING("name", V_OPTIONAL, 1, 100),       V_EMAIL("email", V_OPTIONAL),
    V_DATE("dateOfBirth", V_OPTIONAL),          V_ENUM("status", V_OPTIONAL, STATUSES),
    V_STRING("ssn", V_OPTIONAL, 1, 20),         V_STRING("medicalRecord", V_OPTIONAL, 0, 10000),
    V_STRING("externalId", V_OPTIONAL, 1, 100), V_END,
};

/* What the external API may change. */
const struct vrule patient_sync_rules[] = {
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

static const char *const full_fields[] = {"name",          "email",      "dateOfBirth", "status",    "ssn",
                                          "medicalRecord", "externalId", "createdAt",   "updatedAt", NULL};
static const char *const list_fields[] = {"name",       "email",     "dateOfBirth", "status",
                                          "externalId", "createdAt", "updatedAt",   NULL};

static int fail_nomem(struct http_request *req)
{
	return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
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
int patient_check(const struct json_value *body, const struct vrule *rules, struct verrors *e)
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
int patient_append_fields(bson_t *doc, const struct json_value *obj, const struct vrule *rules, const struct verrors *e)
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

void patients_gen(void *g, const bson_t *patient, bool full)
{
	api_gen_object(g, patient, full ? full_fields : list_fields);
}

void patients_send(struct http_request *req, int status, const bson_t *patient)
{
	yajl_gen g = app_gen(req);
	if (!g) {
		fail_nomem(req);
		return;
	}
	patients_gen(g, patient, true);
	app_send_gen(req, status);
}

/* ---- the list ------------------------------------------------------------ */

struct list_job {
	struct api_job base;
	struct api_list list;
	struct audit_actor actor;
};

static const char MSG_NO_AUDIT[] = "audit trail unavailable";

static void list_item(void *g, const bson_t *patient, const struct api_list *l)
{
	(void)l;
	patients_gen(g, patient, false);
}

static void list_work(struct api_job *j)
{
	struct list_job *lj = (struct list_job *)j;
	int rc = api_list_run(j, &lj->list);
	/* Lists never carry ssn or medicalRecord: no sensitive field disclosed. */
	if (audit_log_as(&lj->actor, "patient.list", NULL, NULL, rc == 0 ? "success" : "failed") < 0 && rc == 0)
		api_job_fail(j, 503, "SERVICE_UNAVAILABLE", MSG_NO_AUDIT);
}

static void list_done(struct api_job *j, struct http_request *req)
{
	api_send_list(req, &((struct list_job *)j)->list, list_item);
}

static void list_cleanup(struct api_job *j)
{
	api_list_clear(&((struct list_job *)j)->list);
}

static int patients_list(struct http_request *req)
{
	int64_t page, limit;
	if (api_pagination(req, PATIENTS_DEFAULT_LIMIT, PATIENTS_MAX_LIMIT, &page, &limit) < 0)
		return APP_DONE;
	struct verrors errs;
	if (validate(app_query(req), list_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	const char *status = json_get_str(app_query(req), "status", NULL);
	struct list_job *lj = api_job_new(req, sizeof(*lj), list_work, list_done);
	if (!lj)
		return fail_nomem(req);
	lj->base.cleanup = list_cleanup;
	api_job_reads(&lj->base);
	audit_actor_from(&lj->actor, req);
	lj->list = (struct api_list){.coll = COLL_PATIENTS, .page = page, .limit = limit};
	if ((status && store_filter_str(&lj->list.filter, "status", STORE_EQ, status) < 0) ||
	    store_filter_sort(&lj->list.filter, "createdAt", -1) < 0)
		return api_job_drop(&lj->base);
	return api_job_submit(&lj->base);
}

/* ---- one record ------------------------------------------------------- */

struct patient_job {
	struct api_job base;
	int kind; /* enum store_kind: FIND_BY_ID, INSERT, UPDATE_BY_ID, DELETE_BY_ID */
	bson_oid_t id;
	bson_t *fields; /* INSERT / UPDATE input, consumed by the store */
	bson_t *result;
	int status;
	struct audit_actor actor;
	const char *action;
};

/* The sensitive fields a full record of doc discloses. */
static void disclosed(const bson_t *doc, const char *out[3])
{
	int n = 0;
	if (doc && bson_has_field(doc, "ssn"))
		out[n++] = "ssn";
	if (doc && bson_has_field(doc, "medicalRecord"))
		out[n++] = "medicalRecord";
	out[n] = NULL;
}

static void patient_cleanup(struct api_job *j)
{
	struct patient_job *pj = (struct patient_job *)j;
	if (pj->fields)
		bson_destroy(pj->fields);
	if (pj->result)
		bson_destroy(pj->result);
}

static void patient_work(struct api_job *j)
{
	struct patient_job *pj = (struct patient_job *)j;
	struct store_op op;
	store_op_init(&op, pj->kind, COLL_PATIENTS);
	bson_oid_copy(&pj->id, &op.id);
	op.doc = pj->fields;
	pj->fields = NULL;
	int rc = api_run(j, &op);
	if (rc == 0) {
		pj->result = op.result;
		op.result = NULL;
	}
	char hex[25];
	store_id_format(pj->kind == STORE_OP_INSERT ? &op.id : &pj->id, hex);
	store_op_clear(&op);
	const char *fields[3];
	disclosed(pj->result, fields);
	const char *outcome = rc == 0 ? "success" : j->err == STORE_NOT_FOUND ? "not_found" : "failed";
	if (audit_log_as(&pj->actor, pj->action, hex, fields, outcome) < 0 && rc == 0)
		api_job_fail(j, 503, "SERVICE_UNAVAILABLE", MSG_NO_AUDIT); /* and no data is sent */
}

static void patient_done(struct api_job *j, struct http_request *req)
{
	struct patient_job *pj = (struct patient_job *)j;
	if (pj->kind == STORE_OP_DELETE_BY_ID)
		app_no_content(req);
	else
		patients_send(req, pj->status, pj->result);
}

/* One store call on one record: kind with fields (owned; freed on every path). */
static int patient_op(struct http_request *req, int kind, bson_t *fields, int status)
{
	bson_oid_t id = {{0}};
	if (kind != STORE_OP_INSERT && api_param_id(req, "id", &id) < 0) {
		if (fields)
			bson_destroy(fields);
		return APP_DONE;
	}
	struct patient_job *pj = api_job_new(req, sizeof(*pj), patient_work, patient_done);
	if (!pj) {
		if (fields)
			bson_destroy(fields);
		return fail_nomem(req);
	}
	pj->base.cleanup = patient_cleanup;
	pj->kind = kind;
	pj->id = id;
	pj->fields = fields;
	pj->status = status;
	audit_actor_from(&pj->actor, req);
	pj->action = kind == STORE_OP_FIND_BY_ID     ? "patient.read"
	             : kind == STORE_OP_INSERT       ? "patient.create"
	             : kind == STORE_OP_UPDATE_BY_ID ? "patient.update"
	                                             : "patient.delete";
	if (kind == STORE_OP_FIND_BY_ID)
		api_job_reads(&pj->base);
	return api_job_submit(&pj->base);
}

static int patients_get(struct http_request *req)
{
	return patient_op(req, STORE_OP_FIND_BY_ID, NULL, 200);
}

static int patients_delete(struct http_request *req)
{
	return patient_op(req, STORE_OP_DELETE_BY_ID, NULL, 204);
}

static int patients_create(struct http_request *req)
{
	const struct json_value *body = app_body(req);
	struct verrors errs;
	if (patient_check(body, create_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	bson_t *doc = bson_new();
	if (!doc || patient_append_fields(doc, body, create_rules, &errs) < 0 ||
	    (!json_get_str(body, "status", NULL) && !BSON_APPEND_UTF8(doc, "status", "active"))) {
		if (doc)
			bson_destroy(doc);
		return fail_nomem(req);
	}
	return patient_op(req, STORE_OP_INSERT, doc, 201);
}

static int patients_patch(struct http_request *req)
{
	const struct json_value *body = app_body(req);
	struct verrors errs;
	if (patient_check(body, patch_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	bson_t *doc = bson_new();
	if (!doc || patient_append_fields(doc, body, patch_rules, &errs) < 0) {
		if (doc)
			bson_destroy(doc);
		return fail_nomem(req);
	}
	if (bson_count_keys(doc) == 0) {
		bson_destroy(doc);
		add_error(&errs, "body", "body must contain at least one patient field");
		return app_fail_validation(req, &errs);
	}
	return patient_op(req, STORE_OP_UPDATE_BY_ID, doc, 200);
}

int patients_routes(struct app *app)
{
	if (patient_sync_init() < 0)
		return -1;
	int rc = 0;
	rc |= app_get(app, "/api/patients", mw_audit, mw_auth, mw_clinician, patients_list);
	rc |= app_get(app, "/api/patients/:id", mw_audit, mw_auth, mw_clinician, patients_get);
	rc |= app_post(app, "/api/patients", mw_audit, mw_auth, mw_admin, patients_create);
	rc |= app_patch(app, "/api/patients/:id", mw_audit, mw_auth, mw_admin, patients_patch);
	rc |= app_delete(app, "/api/patients/:id", mw_audit, mw_auth, mw_admin, patients_delete);
	rc |= app_post(app, "/api/patients/:id/sync", mw_audit, mw_auth, mw_admin, patient_sync_route);
	return rc;
}

void patients_stop(void)
{
	patient_sync_stop();
}
