/* users.c - the /api/users routes (SPEC section 6): me, get by id, the
 * admin list, PATCH (self or admin) and soft DELETE (admin).
 *
 * The user object is the stored document without passwordHash. Choices
 * where the SPEC is silent: the list is newest first (createdAt, then _id,
 * descending) and includes deactivated users; GET /api/users/:id of a
 * deactivated user is 404 for anyone but an admin or that user; DELETE
 * answers 204 (like posts and patients) and is idempotent; a PATCH without
 * any updatable field is 400 VALIDATION_ERROR. Every write bumps the auth
 * cache generation (authmw_users_changed) so all workers see it at once.
 */
#include "autoconfig.h"

#include "api.h"
#include "authmw.h"
#include "handlers.h"
#include "log.h"
#include "validate.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_gen.h>

#define USERS_PAGE_DEFAULT 25
#define USERS_PAGE_MAX 100

static const char *const user_omit[] = {"passwordHash", NULL};

static const struct vrule patch_rules[] = {
    V_STRING("username", V_OPTIONAL, 3, 20, .charset = V_CHARSET_WORD),
    V_EMAIL("email", V_OPTIONAL),
    V_STRING("password", V_OPTIONAL, 8, 128),
    V_ENUM("role", V_OPTIONAL, "user", "admin"),
    V_BOOL("isActive", V_OPTIONAL),
    V_END,
};

static void call_discard(struct api_call *c)
{
	store_op_clear(&c->op);
	free(c);
}

static int fail_unavailable(struct http_request *req)
{
	return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
}

static int is_admin(struct http_request *req)
{
	return auth_is_admin(req);
}

static int is_self(struct http_request *req, const bson_oid_t *id)
{
	char hex[25];
	store_id_format(id, hex);
	return strcmp(auth_principal(req)->id, hex) == 0;
}

static void reply_user(struct http_request *req, int status, const bson_t *doc)
{
	yajl_gen g = app_gen(req);
	if (!g) {
		fail_unavailable(req);
		return;
	}
	api_gen_doc(g, doc, user_omit);
	app_send_gen(req, status);
}

/* A non-null value for key in the body (null counts as absent). */
static int has_value(const struct json_value *body, const char *key)
{
	const struct json_value *v = json_get(body, key);
	return v && v->type != JSON_NULL;
}

/* ------------------------------------------------------------ reads */

static void got_user(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	if (err != STORE_OK) {
		api_fail_store(req, err, NULL);
		return;
	}
	/* A soft-deleted user is gone for everyone but admins. */
	if (!api_doc_bool(c->op.result, "isActive", 1) && !is_admin(req) && !is_self(req, &c->op.id)) {
		app_fail(req, 404, "NOT_FOUND", "not found");
		return;
	}
	reply_user(req, 200, c->op.result);
}

static int find_user(struct http_request *req, const bson_oid_t *id)
{
	struct api_call *c = api_call_new(req, STORE_OP_FIND_BY_ID, STORE_USERS, got_user);
	if (!c)
		return fail_unavailable(req);
	bson_oid_copy(id, &c->op.id);
	return api_call_submit(c);
}

static int users_me(struct http_request *req)
{
	/* mw_auth has just read (or re-used, at most a few seconds old and
	 * never across a user write) this user's document: answer from it. */
	const bson_t *doc = authmw_user_doc(req);
	if (doc) {
		reply_user(req, 200, doc);
		return APP_DONE;
	}
	bson_oid_t id;
	const char *me = auth_principal(req)->id;
	if (store_id_parse(me, strlen(me), &id) < 0)
		return app_fail(req, 401, "UNAUTHORIZED", "access token required");
	return find_user(req, &id);
}

static int users_get(struct http_request *req)
{
	bson_oid_t id;
	if (api_param_id(req, "id", &id) < 0)
		return APP_DONE;
	return find_user(req, &id);
}

struct page {
	int64_t page, limit, total;
};

static void listed(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	struct page *p = app_ctx(req)->user_data;
	if (err != STORE_OK) {
		api_fail_store(req, err, NULL);
		return;
	}
	yajl_gen g = app_gen(req);
	if (!g) {
		fail_unavailable(req);
		return;
	}
	yajl_gen_array_open(g);
	for (size_t i = 0; i < c->op.ndocs; i++)
		api_gen_doc(g, c->op.docs[i], user_omit);
	yajl_gen_array_close(g);
	app_gen_pagination(req, p->page, p->limit, p->total);
	app_send_gen(req, 200);
}

static void counted(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	struct page *p = app_ctx(req)->user_data;
	if (err != STORE_OK) {
		api_fail_store(req, err, NULL);
		return;
	}
	p->total = c->op.count;
	int64_t skip = (p->page - 1) * p->limit;
	if (skip >= p->total) {
		/* Past the end: no need to ask the database for nothing. */
		c->op.ndocs = 0;
		listed(c, STORE_OK);
		return;
	}
	struct api_call *f = api_call_new(req, STORE_OP_FIND, STORE_USERS, listed);
	if (!f) {
		fail_unavailable(req);
		return;
	}
	if (store_filter_sort(&f->op.filter, "createdAt", -1) < 0) {
		call_discard(f);
		fail_unavailable(req);
		return;
	}
	store_filter_page(&f->op.filter, skip, p->limit);
	api_call_submit(f);
}

static int users_list(struct http_request *req)
{
	struct page *p = http_alloc(req, sizeof(*p));
	if (!p)
		return fail_unavailable(req);
	memset(p, 0, sizeof(*p));
	if (api_pagination(req, USERS_PAGE_DEFAULT, USERS_PAGE_MAX, &p->page, &p->limit) < 0)
		return APP_DONE;
	app_ctx(req)->user_data = p;
	struct api_call *c = api_call_new(req, STORE_OP_COUNT, STORE_USERS, counted);
	if (!c)
		return fail_unavailable(req);
	return api_call_submit(c);
}

/* ------------------------------------------------------------ writes */

static void written(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	if (err != STORE_OK) {
		api_fail_store(req, err, c->op.dup_field);
		return;
	}
	authmw_users_changed();
	char id[25];
	store_id_format(&c->op.id, id);
	struct log_ctx lc = {.request_id = req->request_id, .user_id = auth_principal(req)->id};
	if (req->method == HTTP_M_DELETE) {
		log_info(&lc, "user deactivated", LF_STR("targetUserId", id));
		app_no_content(req);
		return;
	}
	log_info(&lc, "user updated", LF_STR("targetUserId", id));
	reply_user(req, 200, c->op.result);
}

struct patch {
	bson_oid_t id;
	char *username, *email, *role;
	int active; /* -1: unchanged */
};

static void patch_apply(struct http_request *req, const char *hash)
{
	struct patch *p = app_ctx(req)->user_data;
	struct api_call *c = api_call_new(req, STORE_OP_UPDATE_BY_ID, STORE_USERS, written);
	if (!c) {
		fail_unavailable(req);
		return;
	}
	bson_oid_copy(&p->id, &c->op.id);
	bson_t *d = bson_new();
	c->op.doc = d;
	bool ok = d != NULL;
	if (ok && p->username)
		ok = BSON_APPEND_UTF8(d, "username", p->username);
	if (ok && p->email)
		ok = BSON_APPEND_UTF8(d, "email", p->email);
	if (ok && hash)
		ok = BSON_APPEND_UTF8(d, "passwordHash", hash);
	if (ok && p->role)
		ok = BSON_APPEND_UTF8(d, "role", p->role);
	if (ok && p->active >= 0)
		ok = BSON_APPEND_BOOL(d, "isActive", p->active != 0);
	if (!ok) {
		call_discard(c);
		fail_unavailable(req);
		return;
	}
	api_call_submit(c);
}

static int users_patch(struct http_request *req)
{
	struct patch *p = http_alloc(req, sizeof(*p));
	if (!p)
		return fail_unavailable(req);
	memset(p, 0, sizeof(*p));
	p->active = -1;
	if (api_param_id(req, "id", &p->id) < 0)
		return APP_DONE;
	int admin = is_admin(req);
	if (!admin && !is_self(req, &p->id))
		return app_fail(req, 403, "FORBIDDEN", "you can only update your own account");
	const struct json_value *body = app_body(req);
	if (!admin && body && body->type == JSON_OBJECT && (json_get(body, "role") || json_get(body, "isActive")))
		return app_fail(req, 403, "FORBIDDEN", "only an admin can change role or active state");
	struct verrors errs;
	if (validate(body, patch_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	size_t len;
	const char *s;
	if (has_value(body, "username") && (s = json_get_str(body, "username", &len)) &&
	    !(p->username = http_strndup(req, s, len)))
		return fail_unavailable(req);
	if (has_value(body, "email") && (s = json_get_str(body, "email", &len))) {
		if (!(p->email = http_strndup(req, s, len)))
			return fail_unavailable(req);
		for (char *q = p->email; *q; q++)
			*q = (char)tolower((unsigned char)*q);
	}
	if (has_value(body, "role") && (s = json_get_str(body, "role", &len)) && !(p->role = http_strndup(req, s, len)))
		return fail_unavailable(req);
	int b;
	if (has_value(body, "isActive") && json_get_bool(body, "isActive", &b) == 0)
		p->active = b != 0;
	const char *pw = has_value(body, "password") ? json_get_str(body, "password", &len) : NULL;
	if (!p->username && !p->email && !p->role && p->active < 0 && !pw) {
		errs = (struct verrors){.count = 1};
		snprintf(errs.details[0].field, sizeof(errs.details[0].field), "body");
		snprintf(errs.details[0].message, sizeof(errs.details[0].message),
		         "body must contain at least one of username, email, password, role, isActive");
		return app_fail_validation(req, &errs);
	}
	app_ctx(req)->user_data = p;
	if (pw)
		return auth_hash_password(req, pw, len, patch_apply);
	patch_apply(req, NULL);
	return APP_DONE;
}

static int users_delete(struct http_request *req)
{
	bson_oid_t id;
	if (api_param_id(req, "id", &id) < 0)
		return APP_DONE;
	struct api_call *c = api_call_new(req, STORE_OP_UPDATE_BY_ID, STORE_USERS, written);
	if (!c)
		return fail_unavailable(req);
	bson_oid_copy(&id, &c->op.id);
	if (!(c->op.doc = BCON_NEW("isActive", BCON_BOOL(false)))) {
		call_discard(c);
		return fail_unavailable(req);
	}
	return api_call_submit(c);
}

int users_routes(struct app *app)
{
	int rc = 0;
	rc |= app_get(app, "/api/users/me", mw_auth, users_me);
	rc |= app_get(app, "/api/users", mw_auth, mw_admin, users_list);
	rc |= app_get(app, "/api/users/:id", mw_auth, users_get);
	rc |= app_patch(app, "/api/users/:id", mw_auth, users_patch);
	rc |= app_delete(app, "/api/users/:id", mw_auth, mw_admin, users_delete);
	return rc;
}
