/* auth_routes.c - POST /api/auth/register and POST /api/auth/login (SPEC
 * section 6), and the password-hashing helper users.c shares.
 *
 * argon2id runs on the worker's job pool (api_work), never on the loop.
 * Passwords are copied only into job payloads, wiped after use, and never
 * logged. Register: validate -> hash -> "any user yet?" -> insert (role
 * "admin" for the first user) -> token. Login: failed-attempt limiter ->
 * find by e-mail -> verify (or a dummy verify for an unknown e-mail, so both
 * failures cost the same and get the same answer) -> token.
 *
 * First-user race: registrations that run concurrently on an empty database
 * (in any worker, or any resild sharing the database) can all see no user
 * and all insert as admin. Each one inserted as admin then lists the admins
 * by (createdAt, _id): if it is not the earliest it demotes itself to
 * "user"; if it is, it demotes every later admin it sees. The earliest
 * candidate is never demoted, and every later one is demoted by itself or
 * by it, so exactly one admin remains once they have all answered. The only
 * blemish: a candidate that checked before an earlier-sorting one (same
 * createdAt millisecond) had inserted has already answered "admin" when it
 * is demoted; its next request sees role "user" (mw_auth reads the role
 * from the database, not from the token).
 */
#include "autoconfig.h"

#include "api.h"
#include "authmw.h"
#include "handlers.h"
#include "log.h"
#include "validate.h"

#include <ctype.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_gen.h>

#define PW_MAX_BYTES 512 /* 128 code points of UTF-8 */
#define MSG_BAD_CREDENTIALS "invalid email or password"

static const char *const user_omit[] = {"passwordHash", NULL};

static const struct vrule register_rules[] = {
    V_STRING("username", V_REQUIRED, 3, 20, .charset = V_CHARSET_WORD),
    V_EMAIL("email", V_REQUIRED),
    V_STRING("password", V_REQUIRED, 8, 128),
    V_END,
};

static const struct vrule login_rules[] = {
    V_EMAIL("email", V_REQUIRED),
    V_STRING("password", V_REQUIRED, 1, 128),
    V_END,
};

static struct log_ctx lctx(struct http_request *req)
{
	return (struct log_ctx){.request_id = req->request_id, .trace_id = req->trace_id[0] ? req->trace_id : NULL};
}

/* Copy of s with ASCII letters lower-cased, in the request's arena. */
static char *lower_dup(struct http_request *req, const char *s, size_t len)
{
	char *d = http_strndup(req, s, len);
	if (d)
		for (char *p = d; *p; p++)
			*p = (char)tolower((unsigned char)*p);
	return d;
}

/* Free an api_call that was never submitted. */
static void call_discard(struct api_call *c)
{
	store_op_clear(&c->op);
	free(c);
}

static int fail_unavailable(struct http_request *req)
{
	return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
}

static int fail_job_status(struct http_request *req, int status)
{
	if (status == JOB_EXPIRED)
		return app_fail(req, 504, "TIMEOUT", "request timed out");
	http_add_header(req, "Retry-After", "1");
	return app_fail(req, 503, "SERVICE_UNAVAILABLE", "server busy, try again");
}

/* ------------------------------------------------------------ hashing */

struct hash_job {
	char pw[PW_MAX_BYTES + 1];
	size_t pwlen;
	int rc;
	char hash[AUTH_HASH_MAX];
	void (*done)(struct http_request *req, const char *hash);
};

static void hash_work(struct api_work *w)
{
	struct hash_job *j = (struct hash_job *)w->payload;
	j->rc = auth_password_hash(j->pw, j->pwlen, j->hash);
	sodium_memzero(j->pw, sizeof(j->pw));
}

static void hash_done(struct api_work *w, int status)
{
	struct hash_job *j = (struct hash_job *)w->payload;
	sodium_memzero(j->pw, sizeof(j->pw));
	if (status != JOB_OK) {
		fail_job_status(w->req, status);
		return;
	}
	if (j->rc < 0) {
		struct log_ctx lc = lctx(w->req);
		log_error(&lc, "password hashing failed", LF_STR("reason", "out of memory"));
		http_add_header(w->req, "Retry-After", "1");
		app_fail(w->req, 503, "SERVICE_UNAVAILABLE", "server busy, try again");
		return;
	}
	j->done(w->req, j->hash);
	sodium_memzero(j->hash, sizeof(j->hash));
}

int auth_hash_password(struct http_request *req, const char *pw, size_t len,
                       void (*done)(struct http_request *req, const char *hash))
{
	if (len > PW_MAX_BYTES)
		return app_fail(req, 400, "VALIDATION_ERROR", "validation failed: password too long");
	struct api_work *w = api_work_new(req, sizeof(struct hash_job), hash_work, hash_done);
	if (!w)
		return fail_unavailable(req);
	struct hash_job *j = (struct hash_job *)w->payload;
	memcpy(j->pw, pw, len);
	j->pwlen = len;
	j->done = done;
	return api_work_submit(w);
}

/* ------------------------------------------------------------ replies */

/* 200/201 {"user": {...}, "token": "..."} for a stored user document. */
static void reply_session(struct http_request *req, int status, const bson_t *user)
{
	char id[25];
	bson_iter_t it;
	if (!bson_iter_init_find(&it, user, "_id") || !BSON_ITER_HOLDS_OID(&it)) {
		app_fail(req, 500, "INTERNAL", "internal server error");
		return;
	}
	store_id_format(bson_iter_oid(&it), id);
	const char *email = api_doc_str(user, "email");
	const char *role = api_doc_str(user, "role");
	role = role && strcmp(role, "admin") == 0 ? "admin" : "user";
	char *token = http_alloc(req, JWT_MAX + 1);
	if (!token || authmw_issue_token(id, email ? email : "", role, token, JWT_MAX + 1) < 0) {
		struct log_ctx lc = lctx(req);
		log_error(&lc, "cannot issue token", LF_STR("userId", id));
		app_fail(req, 500, "INTERNAL", "internal server error");
		return;
	}
	yajl_gen g = app_gen(req);
	if (!g) {
		fail_unavailable(req);
		return;
	}
	yajl_gen_map_open(g);
	yajl_gen_string(g, (const unsigned char *)"user", 4);
	api_gen_doc(g, user, user_omit);
	yajl_gen_string(g, (const unsigned char *)"token", 5);
	yajl_gen_string(g, (const unsigned char *)token, strlen(token));
	yajl_gen_map_close(g);
	app_send_gen(req, status);
}

/* ------------------------------------------------------------ register */

#define BOOTSTRAP_ADMINS_MAX 16 /* concurrent first registrations examined */

struct reg {
	char *username;
	char *email;
	char hash[AUTH_HASH_MAX];
	int admin;
	bson_oid_t id;
	/* Admin bootstrap: this user's document (BSON bytes in the arena) and
	 * the other admin candidates it demotes. */
	uint8_t *doc;
	uint32_t doc_len;
	bson_oid_t others[BOOTSTRAP_ADMINS_MAX];
	int nothers, next;
};

static void reg_reply(struct http_request *req, const bson_t *user)
{
	struct reg *r = app_ctx(req)->user_data;
	struct log_ctx lc = lctx(req);
	char id[25];
	store_id_format(&r->id, id);
	const char *role = api_doc_str(user, "role");
	log_info(&lc, "user registered", LF_STR("userId", id), LF_STR("role", role ? role : "user"));
	reply_session(req, 201, user);
}

static int reg_demote(struct http_request *req, const bson_oid_t *id, api_cb cb)
{
	struct api_call *u = api_call_new(req, STORE_OP_UPDATE_BY_ID, STORE_USERS, cb);
	if (!u || !(u->op.doc = BCON_NEW("role", BCON_UTF8("user")))) {
		if (u)
			call_discard(u);
		return fail_unavailable(req);
	}
	bson_oid_copy(id, &u->op.id);
	return api_call_submit(u);
}

static void reg_demoted_other(struct api_call *c, enum store_err err);

/* The earliest admin demotes the later candidates one by one, then answers. */
static void reg_demote_next(struct http_request *req)
{
	struct reg *r = app_ctx(req)->user_data;
	if (r->next < r->nothers) {
		reg_demote(req, &r->others[r->next++], reg_demoted_other);
		return;
	}
	bson_t user;
	if (!bson_init_static(&user, r->doc, r->doc_len)) {
		app_fail(req, 500, "INTERNAL", "internal server error");
		return;
	}
	reg_reply(req, &user);
}

static void reg_demoted_other(struct api_call *c, enum store_err err)
{
	if (err != STORE_OK && err != STORE_NOT_FOUND) {
		api_fail_store(c->req, err, NULL);
		return;
	}
	if (err == STORE_OK)
		authmw_users_changed();
	reg_demote_next(c->req);
}

static void reg_demoted_self(struct api_call *c, enum store_err err)
{
	if (err != STORE_OK) {
		api_fail_store(c->req, err, NULL);
		return;
	}
	authmw_users_changed();
	reg_reply(c->req, c->op.result);
}

/* Several registrations saw an empty database: the earliest admin by
 * (createdAt, _id) stays admin and demotes the others; any other candidate
 * demotes itself. */
static void reg_bootstrap(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	struct reg *r = app_ctx(req)->user_data;
	if (err != STORE_OK) {
		api_fail_store(req, err, NULL);
		return;
	}
	bson_oid_t first;
	struct log_ctx lc = lctx(req);
	if (c->op.ndocs == 0 || api_doc_oid(c->op.docs[0], "_id", &first) < 0 || !bson_oid_equal(&first, &r->id)) {
		log_warn(&lc, "concurrent first registration: demoted to user", LF_STR("role", "user"));
		reg_demote(req, &r->id, reg_demoted_self);
		return;
	}
	const bson_t *mine = c->op.docs[0];
	if (!(r->doc = http_alloc(req, mine->len))) {
		fail_unavailable(req);
		return;
	}
	memcpy(r->doc, bson_get_data(mine), mine->len);
	r->doc_len = mine->len;
	for (size_t i = 1; i < c->op.ndocs && r->nothers < BOOTSTRAP_ADMINS_MAX; i++)
		if (api_doc_oid(c->op.docs[i], "_id", &r->others[r->nothers]) == 0)
			r->nothers++;
	if (r->nothers)
		log_warn(&lc, "concurrent first registration: demoting later candidates", LF_INT("count", r->nothers));
	r->next = 0;
	reg_demote_next(req);
}

static void reg_inserted(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	struct reg *r = app_ctx(req)->user_data;
	if (err != STORE_OK) {
		api_fail_store(req, err, c->op.dup_field);
		return;
	}
	authmw_users_changed();
	if (api_doc_oid(c->op.result, "_id", &r->id) < 0) {
		app_fail(req, 500, "INTERNAL", "internal server error");
		return;
	}
	if (!r->admin) {
		reg_reply(req, c->op.result);
		return;
	}
	struct api_call *f = api_call_new(req, STORE_OP_FIND, STORE_USERS, reg_bootstrap);
	if (!f) {
		fail_unavailable(req);
		return;
	}
	if (store_filter_str(&f->op.filter, "role", STORE_EQ, "admin") < 0 ||
	    store_filter_sort(&f->op.filter, "createdAt", 1) < 0) {
		call_discard(f);
		fail_unavailable(req);
		return;
	}
	store_filter_page(&f->op.filter, 0, BOOTSTRAP_ADMINS_MAX + 1);
	api_call_submit(f);
}

static void reg_counted(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	struct reg *r = app_ctx(req)->user_data;
	if (err != STORE_OK && err != STORE_NOT_FOUND) {
		api_fail_store(req, err, NULL);
		return;
	}
	r->admin = err == STORE_NOT_FOUND; /* no user at all yet */
	struct api_call *ins = api_call_new(req, STORE_OP_INSERT, STORE_USERS, reg_inserted);
	if (ins)
		ins->op.doc = BCON_NEW("username", BCON_UTF8(r->username), "email", BCON_UTF8(r->email), "passwordHash",
		                       BCON_UTF8(r->hash), "role", BCON_UTF8(r->admin ? "admin" : "user"), "isActive",
		                       BCON_BOOL(true));
	sodium_memzero(r->hash, sizeof(r->hash));
	if (!ins || !ins->op.doc) {
		if (ins)
			call_discard(ins);
		fail_unavailable(req);
		return;
	}
	api_call_submit(ins);
}

static void reg_hashed(struct http_request *req, const char *hash)
{
	struct reg *r = app_ctx(req)->user_data;
	snprintf(r->hash, sizeof(r->hash), "%s", hash);
	/* "Is there any user?" just before the insert keeps the first-user
	 * window short; FIND_ONE without a filter is a LIMIT 1 probe. */
	struct api_call *c = api_call_new(req, STORE_OP_FIND_ONE, STORE_USERS, reg_counted);
	if (!c) {
		fail_unavailable(req);
		return;
	}
	api_call_submit(c);
}

static int auth_register(struct http_request *req)
{
	const struct json_value *body = app_body(req);
	struct verrors errs;
	if (validate(body, register_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	size_t ul, el, pl;
	const char *username = json_get_str(body, "username", &ul);
	const char *email = json_get_str(body, "email", &el);
	const char *pw = json_get_str(body, "password", &pl);
	struct reg *r = http_alloc(req, sizeof(*r));
	if (!r)
		return fail_unavailable(req);
	memset(r, 0, sizeof(*r));
	r->username = http_strndup(req, username, ul);
	r->email = lower_dup(req, email, el);
	if (!r->username || !r->email)
		return fail_unavailable(req);
	app_ctx(req)->user_data = r;
	return auth_hash_password(req, pw, pl, reg_hashed);
}

/* ------------------------------------------------------------ login */

struct login {
	char *email;
	uint8_t *user; /* the user document's BSON bytes (arena), NULL: unknown e-mail */
	uint32_t user_len;
	bson_oid_t id;
};

struct verify_job {
	char pw[PW_MAX_BYTES + 1];
	size_t pwlen;
	char hash[AUTH_HASH_MAX]; /* "" for an unknown e-mail */
	int match;
	char rehash[AUTH_HASH_MAX]; /* set when the stored hash uses old limits */
};

static void verify_work(struct api_work *w)
{
	struct verify_job *j = (struct verify_job *)w->payload;
	if (j->hash[0]) {
		j->match = auth_password_verify(j->hash, j->pw, j->pwlen) == 1;
		if (j->match && auth_password_needs_rehash(j->hash) == 1 &&
		    auth_password_hash(j->pw, j->pwlen, j->rehash) < 0)
			j->rehash[0] = '\0';
	} else {
		auth_dummy_verify(j->pw, j->pwlen);
		j->match = 0;
	}
	sodium_memzero(j->pw, sizeof(j->pw));
}

static void login_reply(struct http_request *req)
{
	struct login *l = app_ctx(req)->user_data;
	bson_t user;
	if (!bson_init_static(&user, l->user, l->user_len)) {
		app_fail(req, 500, "INTERNAL", "internal server error");
		return;
	}
	char id[25];
	store_id_format(&l->id, id);
	struct log_ctx lc = lctx(req);
	log_info(&lc, "user logged in", LF_STR("userId", id));
	reply_session(req, 200, &user);
}

static void login_rehashed(struct api_call *c, enum store_err err)
{
	if (err == STORE_OK) {
		authmw_users_changed();
	} else {
		struct log_ctx lc = lctx(c->req);
		log_warn(&lc, "password rehash not stored", LF_STR("error", store_err_name(err)));
	}
	login_reply(c->req);
}

static void login_verified(struct api_work *w, int status)
{
	struct http_request *req = w->req;
	struct verify_job *j = (struct verify_job *)w->payload;
	struct login *l = app_ctx(req)->user_data;
	sodium_memzero(j->pw, sizeof(j->pw));
	if (status != JOB_OK) {
		fail_job_status(req, status);
		return;
	}
	struct log_ctx lc = lctx(req);
	if (!j->match) {
		authmw_login_failed(l->email);
		log_info(&lc, "login failed", LF_STR("email", l->email),
		         LF_STR("reason", l->user ? "wrong password" : "unknown email"));
		app_fail(req, 401, "UNAUTHORIZED", MSG_BAD_CREDENTIALS);
		return;
	}
	bson_t user;
	if (!bson_init_static(&user, l->user, l->user_len)) {
		app_fail(req, 500, "INTERNAL", "internal server error");
		return;
	}
	if (!api_doc_bool(&user, "isActive", 1)) {
		log_info(&lc, "login refused: account deactivated", LF_STR("email", l->email));
		app_fail(req, 401, "UNAUTHORIZED", "account is deactivated");
		return;
	}
	authmw_login_succeeded(l->email);
	if (j->rehash[0]) {
		struct api_call *c = api_call_new(req, STORE_OP_UPDATE_BY_ID, STORE_USERS, login_rehashed);
		if (c && (c->op.doc = BCON_NEW("passwordHash", BCON_UTF8(j->rehash)))) {
			sodium_memzero(j->rehash, sizeof(j->rehash));
			bson_oid_copy(&l->id, &c->op.id);
			api_call_submit(c);
			return;
		}
		if (c)
			call_discard(c);
	}
	login_reply(req);
}

static void login_found(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	struct login *l = app_ctx(req)->user_data;
	const char *pw = json_get_str(app_body(req), "password", NULL);
	size_t pl = pw ? strlen(pw) : 0;
	if (err != STORE_OK && err != STORE_NOT_FOUND) {
		api_fail_store(req, err, NULL);
		return;
	}
	if (!pw || pl > PW_MAX_BYTES) {
		app_fail(req, 500, "INTERNAL", "internal server error");
		return;
	}
	struct api_work *w = api_work_new(req, sizeof(struct verify_job), verify_work, login_verified);
	if (!w) {
		fail_unavailable(req);
		return;
	}
	struct verify_job *j = (struct verify_job *)w->payload;
	memcpy(j->pw, pw, pl);
	j->pwlen = pl;
	if (err == STORE_OK) {
		/* Keep the document for the reply as raw bytes in the arena
		 * (a bson_t needs 128-byte alignment; one is made on the stack). */
		const bson_t *doc = c->op.result;
		const char *hash = api_doc_str(doc, "passwordHash");
		l->user = http_alloc(req, doc->len);
		if (!l->user || api_doc_oid(doc, "_id", &l->id) < 0) {
			sodium_memzero(j->pw, sizeof(j->pw));
			free(w);
			fail_unavailable(req);
			return;
		}
		memcpy(l->user, bson_get_data(doc), doc->len);
		l->user_len = doc->len;
		/* A missing or oversized hash is verified as a dummy: never a match. */
		if (hash && strlen(hash) < sizeof(j->hash))
			memcpy(j->hash, hash, strlen(hash) + 1);
	}
	api_work_submit(w);
}

static int auth_login(struct http_request *req)
{
	const struct json_value *body = app_body(req);
	struct verrors errs;
	if (validate(body, login_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	size_t el;
	const char *email = json_get_str(body, "email", &el);
	struct login *l = http_alloc(req, sizeof(*l));
	if (!l)
		return fail_unavailable(req);
	memset(l, 0, sizeof(*l));
	if (!(l->email = lower_dup(req, email, el)))
		return fail_unavailable(req);
	int64_t retry_s = 0;
	if (authmw_login_blocked(l->email, &retry_s)) {
		char v[24];
		snprintf(v, sizeof(v), "%lld", (long long)(retry_s > 0 ? retry_s : 1));
		http_add_header(req, "Retry-After", v);
		struct log_ctx lc = lctx(req);
		log_info(&lc, "login blocked: too many failed attempts", LF_STR("email", l->email));
		return app_fail(req, 429, "RATE_LIMITED", "too many failed login attempts, try again later");
	}
	app_ctx(req)->user_data = l;
	struct api_call *c = api_call_new(req, STORE_OP_FIND_ONE, STORE_USERS, login_found);
	if (!c)
		return fail_unavailable(req);
	if (store_filter_str(&c->op.filter, "email", STORE_EQ, l->email) < 0) {
		call_discard(c);
		return fail_unavailable(req);
	}
	return api_call_submit(c);
}

int auth_routes(struct app *app)
{
	int rc = 0;
	rc |= app_post(app, "/api/auth/register", auth_register);
	rc |= app_post(app, "/api/auth/login", auth_login);
	rc |= app_body_limit(app, HTTP_M_POST, "/api/auth/register", 64 * 1024);
	rc |= app_body_limit(app, HTTP_M_POST, "/api/auth/login", 64 * 1024);
	return rc;
}
