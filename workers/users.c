/* users.c - the /api/users routes (SPEC section 6): me, get by id, the
 * admin list, PATCH (self or admin) and soft DELETE (admin).
 *
 * The user object lists its fields (users_gen): a password hash or any
 * other stored field is never sent. Every route is one job (api.h). Choices
 * where the SPEC is silent: the list is newest first (createdAt, then _id,
 * descending) and includes deactivated users; GET /api/users/:id of a
 * deactivated user is 404 for anyone but an admin or that user; DELETE
 * answers 204 (like posts and patients) and is idempotent; a PATCH without
 * any updatable field is 400 VALIDATION_ERROR. Every write bumps the auth
 * cache generation (authmw_users_changed) so all workers see it at once.
 *
 * Revocation: a password change (one's own needs currentPassword, checked
 * in the job), an admin's role change and DELETE set the target's
 * tokensValidAfter and revoke their refresh sessions. One's own password
 * change answers data = the user object with "token" and "refreshToken"
 * added (a fresh session), so a client keeps working.
 */
#include "autoconfig.h"

#include "api.h"
#include "audit.h"
#include "authmw.h"
#include "config.h"
#include "handlers.h"
#include "log.h"
#include "routes.h"
#include "sessions.h"
#include "validate.h"

#include <ctype.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_gen.h>

#define USERS_PAGE_DEFAULT 25
#define USERS_PAGE_MAX 100

/* The user object's fields beside id and _id (SPEC section 6). */
static const char *const user_fields[] = {"username", "email", "role", "isActive", "createdAt", "updatedAt", NULL};

static const struct vrule patch_rules[] = {
    V_STRING("username", V_OPTIONAL, 3, 20, .charset = V_CHARSET_WORD),
    V_EMAIL("email", V_OPTIONAL),
    V_STRING("password", V_OPTIONAL, 8, 128),
    V_STRING("currentPassword", V_OPTIONAL, 1, 128),
    V_ENUM("role", V_OPTIONAL, USERS_ROLES),
    V_BOOL("isActive", V_OPTIONAL),
    V_END,
};

const struct vrule users_new_rules[] = {
    V_STRING("username", V_REQUIRED, 3, 20, .charset = V_CHARSET_WORD),
    V_EMAIL("email", V_REQUIRED),
    V_STRING("password", V_REQUIRED, 8, 128),
    V_END,
};

bson_t *users_new_doc(const char *username, const char *email, const char *hash, const char *role)
{
	return BCON_NEW("username", BCON_UTF8(username), "email", BCON_UTF8(email), "password", BCON_UTF8(hash), "role",
	                BCON_UTF8(role), "isActive", BCON_BOOL(true));
}

int users_email_lower(const char *s, size_t len, char *out, size_t outlen)
{
	if (len >= outlen)
		return -1;
	for (size_t i = 0; i < len; i++)
		out[i] = (char)tolower((unsigned char)s[i]);
	out[len] = '\0';
	return 0;
}

static int fail_unavailable(struct http_request *req)
{
	return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
}

const char *users_password_hash(const bson_t *user)
{
	const char *h = api_doc_str(user, "password");
	return h && h[0] == '$' ? h : api_doc_str(user, "passwordHash");
}

void users_gen(void *g, const bson_t *user)
{
	api_gen_object(g, user, user_fields);
}

static void list_item(void *g, const bson_t *user, const struct api_list *l)
{
	(void)l;
	users_gen(g, user);
}

static void reply_user(struct http_request *req, int status, const bson_t *doc)
{
	yajl_gen g = app_gen(req);
	if (!g) {
		fail_unavailable(req);
		return;
	}
	users_gen(g, doc);
	app_send_gen(req, status);
}

/* A non-null value for key in the body (null counts as absent). */
static int has_value(const struct json_value *body, const char *key)
{
	const struct json_value *v = json_get(body, key);
	return v && v->type != JSON_NULL;
}

/* ------------------------------------------------------------ one user */

struct user_job {
	struct api_job base;
	bson_oid_t id;             /* the target user */
	bool privileged;           /* the caller is an admin or the target */
	bool deactivate;           /* DELETE */
	bson_t *fields;            /* PATCH: $set (without the password hash) */
	char pw[PW_MAX_BYTES + 1]; /* PATCH: the new password, wiped after use */
	size_t pwlen;
	char cur[PW_MAX_BYTES + 1]; /* PATCH of one's own password: the current one, wiped after use */
	size_t curlen;
	bool self_pw;               /* one's own password change: verify cur, answer a fresh pair */
	bool revoke;                /* password, role change or DELETE: revoke the target's tokens */
	struct session_new session; /* self_pw: the fresh refresh token */
	bson_t *user;               /* result */
	struct audit_actor actor;   /* a role change is audited */
	bool role_change;
};

static void user_cleanup(struct api_job *j)
{
	struct user_job *uj = (struct user_job *)j;
	sodium_memzero(uj->pw, sizeof(uj->pw));
	sodium_memzero(uj->cur, sizeof(uj->cur));
	sodium_memzero(&uj->session, sizeof(uj->session));
	if (uj->fields)
		bson_destroy(uj->fields);
	if (uj->user)
		bson_destroy(uj->user);
}

static void get_work(struct api_job *j)
{
	struct user_job *uj = (struct user_job *)j;
	uj->user = api_find_by_id(j, COLL_USERS, &uj->id);
	/* A soft-deleted user is gone for everyone but admins and themselves. */
	if (uj->user && !api_doc_bool(uj->user, "isActive", 1) && !uj->privileged)
		api_job_fail(j, 404, "NOT_FOUND", "not found");
}

static void get_done(struct api_job *j, struct http_request *req)
{
	reply_user(req, 200, ((struct user_job *)j)->user);
}

static struct user_job *user_job_new(struct http_request *req, const bson_oid_t *id, api_job_fn work,
                                     api_job_done_fn done)
{
	struct user_job *uj = api_job_new(req, sizeof(*uj), work, done);
	if (!uj)
		return NULL;
	uj->base.cleanup = user_cleanup;
	bson_oid_copy(id, &uj->id);
	const struct principal *me = auth_principal(req);
	uj->privileged = auth_is_admin(req) || (me && bson_oid_equal(&me->oid, id));
	return uj;
}

static int find_user(struct http_request *req, const bson_oid_t *id)
{
	struct user_job *uj = user_job_new(req, id, get_work, get_done);
	if (!uj)
		return fail_unavailable(req);
	api_job_reads(&uj->base);
	return api_job_submit(&uj->base);
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
	return find_user(req, &auth_principal(req)->oid);
}

static int users_get(struct http_request *req)
{
	bson_oid_t id;
	if (api_param_id(req, "id", &id) < 0)
		return APP_DONE;
	return find_user(req, &id);
}

/* ------------------------------------------------------------ the list */

struct list_job {
	struct api_job base;
	struct api_list list;
};

static void list_work(struct api_job *j)
{
	api_list_run(j, &((struct list_job *)j)->list);
}

static void list_done(struct api_job *j, struct http_request *req)
{
	api_send_list(req, &((struct list_job *)j)->list, list_item);
}

static void list_cleanup(struct api_job *j)
{
	api_list_clear(&((struct list_job *)j)->list);
}

static int users_list(struct http_request *req)
{
	int64_t page, limit;
	if (api_pagination(req, USERS_PAGE_DEFAULT, USERS_PAGE_MAX, &page, &limit) < 0)
		return APP_DONE;
	struct list_job *lj = api_job_new(req, sizeof(*lj), list_work, list_done);
	if (!lj)
		return fail_unavailable(req);
	lj->base.cleanup = list_cleanup;
	api_job_reads(&lj->base);
	lj->list = (struct api_list){.coll = COLL_USERS, .page = page, .limit = limit};
	if (store_filter_sort(&lj->list.filter, "createdAt", -1) < 0)
		return api_job_drop(&lj->base);
	return api_job_submit(&lj->base);
}

/* ------------------------------------------------------------ writes */

/* One's own password change: the current password must verify. */
static int verify_current(struct api_job *j, struct user_job *uj)
{
	bson_t *doc = api_find_by_id(j, COLL_USERS, &uj->id);
	if (!doc)
		return -1;
	const char *hash = users_password_hash(doc);
	int ok = hash && strlen(hash) < AUTH_HASH_MAX ? auth_password_verify(hash, uj->cur, uj->curlen) == 1 : 0;
	if (!hash)
		auth_dummy_verify(uj->cur, uj->curlen);
	sodium_memzero(uj->cur, sizeof(uj->cur));
	bson_destroy(doc);
	if (!ok)
		return api_job_fail(j, 401, "UNAUTHORIZED", "current password is incorrect");
	return 0;
}

static void write_work(struct api_job *j)
{
	struct user_job *uj = (struct user_job *)j;
	if (uj->self_pw && verify_current(j, uj) < 0)
		return;
	if (uj->revoke && !BSON_APPEND_DATE_TIME(uj->fields, "tokensValidAfter", session_valid_after_now())) {
		api_job_fail(j, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
	if (uj->pwlen) {
		char hash[AUTH_HASH_MAX];
		int rc = auth_password_hash(uj->pw, uj->pwlen, hash);
		sodium_memzero(uj->pw, sizeof(uj->pw));
		if (rc < 0 || !BSON_APPEND_UTF8(uj->fields, "password", hash)) {
			sodium_memzero(hash, sizeof(hash));
			api_job_fail(j, 503, "SERVICE_UNAVAILABLE", "server busy, try again");
			return;
		}
		sodium_memzero(hash, sizeof(hash));
	}
	uj->user = api_update_by_id(j, COLL_USERS, &uj->id, uj->fields);
	uj->fields = NULL; /* consumed */
	if (uj->role_change) {
		char target[25];
		store_id_format(&uj->id, target);
		if (audit_role_change(&uj->actor, target, uj->user ? "success" : "failed") < 0 && uj->user)
			api_job_fail(j, 503, "SERVICE_UNAVAILABLE", "audit trail unavailable");
	}
	if (!uj->user || !uj->revoke)
		return;
	/* tokensValidAfter refuses older access tokens; revoking the sessions
	 * refuses their refresh tokens, and the access tokens of this second. */
	if (session_revoke_user(j, &uj->id) < 0 || !uj->self_pw)
		return;
	session_create(j, &uj->id, worker_current()->cfg->refresh_expire_s, &uj->session);
}

/* 200 with data = the user object plus the fresh "token" and
 * "refreshToken" of a password change (SPEC section 6 does not shape the
 * pair; the user object stays data, as for every other PATCH). */
static void reply_user_pair(struct http_request *req, const bson_t *doc, const struct session_new *s)
{
	char id[25];
	store_id_format(&auth_principal(req)->oid, id);
	const char *email = api_doc_str(doc, "email");
	const char *role = api_doc_str(doc, "role");
	char *token = http_alloc(req, JWT_MAX + 1);
	if (!token ||
	    authmw_issue_token(id, email ? email : "", role ? role : "user", s->family, token, JWT_MAX + 1) < 0) {
		app_fail(req, 500, "INTERNAL", "internal server error");
		return;
	}
	yajl_gen g = app_gen(req);
	if (!g) {
		fail_unavailable(req);
		return;
	}
	yajl_gen_map_open(g);
	api_gen_ids(g, doc);
	for (const char *const *f = user_fields; *f; f++)
		api_gen_field(g, doc, *f);
	yajl_gen_string(g, (const unsigned char *)"token", 5);
	yajl_gen_string(g, (const unsigned char *)token, strlen(token));
	yajl_gen_string(g, (const unsigned char *)"refreshToken", 12);
	yajl_gen_string(g, (const unsigned char *)s->token, strlen(s->token));
	yajl_gen_map_close(g);
	app_send_gen(req, 200);
}

static void write_done(struct api_job *j, struct http_request *req)
{
	struct user_job *uj = (struct user_job *)j;
	char id[25];
	store_id_format(&uj->id, id);
	struct log_ctx lc = {.request_id = req->request_id, .user_id = auth_principal(req)->id};
	authmw_users_changed();
	log_info(&lc, uj->deactivate ? "user deactivated" : "user updated", LF_STR("targetUserId", id));
	if (uj->revoke)
		log_info(&lc, "user's tokens revoked", LF_STR("targetUserId", id));
	if (uj->deactivate)
		app_no_content(req);
	else if (uj->self_pw)
		reply_user_pair(req, uj->user, &uj->session);
	else
		reply_user(req, 200, uj->user);
}

/* The body's changes as a $set document (the password is hashed by the job). */
static bson_t *patch_fields(const struct json_value *body)
{
	bson_t *d = bson_new();
	size_t len;
	const char *s;
	int b;
	bool ok = d != NULL;
	if (ok && has_value(body, "username") && (s = json_get_str(body, "username", &len)))
		ok = bson_append_utf8(d, "username", -1, s, (int)len);
	if (ok && has_value(body, "email") && (s = json_get_str(body, "email", &len))) {
		char email[256];
		ok = users_email_lower(s, len, email, sizeof(email)) == 0 && BSON_APPEND_UTF8(d, "email", email);
	}
	if (ok && has_value(body, "role") && (s = json_get_str(body, "role", &len)))
		ok = BSON_APPEND_UTF8(d, "role", s);
	if (ok && has_value(body, "isActive") && json_get_bool(body, "isActive", &b) == 0)
		ok = BSON_APPEND_BOOL(d, "isActive", b != 0);
	if (!ok && d) {
		bson_destroy(d);
		d = NULL;
	}
	return d;
}

static int users_patch(struct http_request *req)
{
	bson_oid_t id;
	if (api_param_id(req, "id", &id) < 0)
		return APP_DONE;
	int admin = auth_is_admin(req);
	if (!admin && !bson_oid_equal(&auth_principal(req)->oid, &id))
		return app_fail(req, 403, "FORBIDDEN", "you can only update your own account");
	const struct json_value *body = app_body(req);
	if (!admin && body && body->type == JSON_OBJECT && (json_get(body, "role") || json_get(body, "isActive")))
		return app_fail(req, 403, "FORBIDDEN", "only an admin can change role or active state");
	struct verrors errs;
	if (validate(body, patch_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	size_t pwlen = 0;
	const char *pw = has_value(body, "password") ? json_get_str(body, "password", &pwlen) : NULL;
	if (pw && pwlen > PW_MAX_BYTES)
		return app_fail(req, 400, "VALIDATION_ERROR", "validation failed: password too long");
	/* Changing one's own password proves the current one (SPEC section 6). */
	bool self = bson_oid_equal(&auth_principal(req)->oid, &id);
	size_t curlen = 0;
	const char *cur = has_value(body, "currentPassword") ? json_get_str(body, "currentPassword", &curlen) : NULL;
	if (pw && self && !cur) {
		errs = (struct verrors){.count = 1};
		snprintf(errs.details[0].field, sizeof(errs.details[0].field), "currentPassword");
		snprintf(errs.details[0].message, sizeof(errs.details[0].message),
		         "currentPassword is required to change your password");
		return app_fail_validation(req, &errs);
	}
	if (cur && curlen > PW_MAX_BYTES)
		return app_fail(req, 400, "VALIDATION_ERROR", "validation failed: currentPassword too long");
	static const char *const updatable[] = {"username", "email", "role", "isActive", "password", NULL};
	int any = 0;
	for (const char *const *k = updatable; *k; k++)
		any |= has_value(body, *k);
	if (!any) {
		errs = (struct verrors){.count = 1};
		snprintf(errs.details[0].field, sizeof(errs.details[0].field), "body");
		snprintf(errs.details[0].message, sizeof(errs.details[0].message),
		         "body must contain at least one of username, email, password, role, isActive");
		return app_fail_validation(req, &errs);
	}
	struct user_job *uj = user_job_new(req, &id, write_work, write_done);
	if (!uj)
		return fail_unavailable(req);
	if (!(uj->fields = patch_fields(body)))
		return api_job_drop(&uj->base);
	if (pw) {
		memcpy(uj->pw, pw, pwlen);
		uj->pwlen = pwlen;
		uj->revoke = true;
		api_job_slow(&uj->base); /* argon2id */
		if (self) {
			memcpy(uj->cur, cur, curlen);
			uj->curlen = curlen;
			uj->self_pw = true;
		}
	}
	if (admin && has_value(body, "role")) {
		uj->revoke = true;
		uj->role_change = true;
		audit_actor_from(&uj->actor, req);
	}
	return api_job_submit(&uj->base);
}

static int users_delete(struct http_request *req)
{
	bson_oid_t id;
	if (api_param_id(req, "id", &id) < 0)
		return APP_DONE;
	struct user_job *uj = user_job_new(req, &id, write_work, write_done);
	if (!uj)
		return fail_unavailable(req);
	uj->deactivate = true;
	uj->revoke = true;
	if (!(uj->fields = BCON_NEW("isActive", BCON_BOOL(false))))
		return api_job_drop(&uj->base);
	return api_job_submit(&uj->base);
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
