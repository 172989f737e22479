/* auth_routes.c - POST /api/auth/register, login, refresh and logout
 * (SPEC section 6). Register and login open a session (sessions.h) and
 * answer an access token carrying its id ("sid") with a refresh token;
 * refresh rotates the refresh token; logout revokes the access token's
 * session in every worker (the users generation drops their caches).
 *
 * Each route is one job (api.h) marked slow: argon2id runs on the worker's
 * job pool, never on the loop. Passwords are copied only into the job,
 * wiped after use, and never logged. Register: validate -> [job: hash ->
 * "any user yet?" -> insert (role "admin" for the first user, development
 * only) -> admin bootstrap] -> token. Login: failed-attempt limiter ->
 * [job: find by e-mail -> verify (or a dummy verify for an unknown e-mail,
 * so both failures cost the same and get the same answer) -> re-hash if
 * the stored hash is outdated] -> token.
 *
 * Production: no registration ever yields an admin (the operator creates
 * one locally); development keeps first-user-admin and warns in the log.
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
#include "config.h"
#include "handlers.h"
#include "log.h"
#include "metrics.h"
#include "routes.h"
#include "sessions.h"
#include "validate.h"

#include <ctype.h>
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <yajl/yajl_gen.h>

#define MSG_BAD_CREDENTIALS "invalid email or password"

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

static int fail_unavailable(struct http_request *req)
{
	return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
}

/* Sign an access token for a stored user document in session sid into the
 * request's arena; NULL (and answered 500) on failure. */
static char *issue_token(struct http_request *req, const bson_t *user, const char *sid)
{
	char id[25];
	bson_oid_t oid;
	if (api_doc_oid(user, "_id", &oid) < 0) {
		app_fail(req, 500, "INTERNAL", "internal server error");
		return NULL;
	}
	store_id_format(&oid, id);
	const char *email = api_doc_str(user, "email");
	const char *role = api_doc_str(user, "role");
	char *token = http_alloc(req, JWT_MAX + 1);
	if (!token || authmw_issue_token(id, email ? email : "", role ? role : "user", sid, token, JWT_MAX + 1) < 0) {
		struct log_ctx lc = lctx(req);
		log_error(&lc, "cannot issue token", LF_STR("userId", id));
		app_fail(req, 500, "INTERNAL", "internal server error");
		return NULL;
	}
	return token;
}

/* Write "token" and "refreshToken" members into an open map. */
static void gen_pair(yajl_gen g, const char *token, const struct session_new *s)
{
	yajl_gen_string(g, (const unsigned char *)"token", 5);
	yajl_gen_string(g, (const unsigned char *)token, strlen(token));
	yajl_gen_string(g, (const unsigned char *)"refreshToken", 12);
	yajl_gen_string(g, (const unsigned char *)s->token, strlen(s->token));
}

/* 200/201 {"user": {...}, "token": "...", "refreshToken": "..."} for a
 * stored user document and its new session. */
static void reply_session(struct http_request *req, int status, const bson_t *user, const struct session_new *s)
{
	char *token = issue_token(req, user, s->family);
	if (!token)
		return;
	yajl_gen g = app_gen(req);
	if (!g) {
		fail_unavailable(req);
		return;
	}
	yajl_gen_map_open(g);
	yajl_gen_string(g, (const unsigned char *)"user", 4);
	users_gen(g, user);
	gen_pair(g, token, s);
	yajl_gen_map_close(g);
	app_send_gen(req, status);
}

/* What register and login carry: the password (wiped after use), the
 * e-mail, and the resulting user document. */
struct cred_job {
	struct api_job base;
	char pw[PW_MAX_BYTES + 1];
	size_t pwlen;
	char email[256];
	char username[32];
	bool may_bootstrap; /* register: the first user becomes admin (development) */
	bson_t *user;       /* result */
	int demoted;        /* register: later admin candidates demoted (-1: this one was) */
	bool match;         /* login */
	unsigned delay_ms;  /* login: account-wide throttling delay, slept on the pool */
	bool rehashed;      /* login: the stored hash was upgraded */
	enum store_err rehash_err;
	struct session_new session; /* the new refresh token (wiped after use) */
};

static void cred_cleanup(struct api_job *j)
{
	struct cred_job *cj = (struct cred_job *)j;
	sodium_memzero(cj->pw, sizeof(cj->pw));
	sodium_memzero(&cj->session, sizeof(cj->session));
	if (cj->user)
		bson_destroy(cj->user);
}

/* Pool thread: open a session for the job's user (register, login). */
static void open_session(struct api_job *j, struct cred_job *cj)
{
	bson_oid_t id;
	if (api_doc_oid(cj->user, "_id", &id) < 0) {
		api_job_fail(j, 500, "INTERNAL", "internal server error");
		return;
	}
	session_create(j, &id, worker_current()->cfg->refresh_expire_s, &cj->session);
}

static struct cred_job *cred_job_new(struct http_request *req, api_job_fn work, api_job_done_fn done,
                                     const struct json_value *body)
{
	size_t pl, el;
	const char *pw = json_get_str(body, "password", &pl);
	const char *email = json_get_str(body, "email", &el);
	if (!pw || pl > PW_MAX_BYTES || !email || el >= sizeof(((struct cred_job *)0)->email))
		return NULL;
	struct cred_job *cj = api_job_new(req, sizeof(*cj), work, done);
	if (!cj)
		return NULL;
	cj->base.cleanup = cred_cleanup;
	api_job_slow(&cj->base);
	memcpy(cj->pw, pw, pl);
	cj->pwlen = pl;
	users_email_lower(email, el, cj->email, sizeof(cj->email)); /* fits: checked above */
	return cj;
}

/* ------------------------------------------------------------ register */

#define BOOTSTRAP_ADMINS_MAX 16 /* concurrent first registrations examined */

static int set_role_user(struct api_job *j, const bson_oid_t *id, bson_t **out)
{
	bson_t *fields = BCON_NEW("role", BCON_UTF8("user"));
	if (!fields)
		return api_job_fail(j, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	bson_t *doc = api_update_by_id(j, COLL_USERS, id, fields);
	if (!doc)
		return -1;
	if (out) {
		bson_destroy(*out);
		*out = doc;
	} else {
		bson_destroy(doc);
	}
	return 0;
}

/* Several registrations saw an empty database: the earliest admin by
 * (createdAt, _id) stays admin and demotes the others; any other candidate
 * demotes itself. */
static void bootstrap(struct api_job *j, struct cred_job *cj)
{
	struct store_op op;
	bson_oid_t mine, first;
	store_op_init(&op, STORE_OP_FIND, COLL_USERS);
	if (api_doc_oid(cj->user, "_id", &mine) < 0 || store_filter_str(&op.filter, "role", STORE_EQ, "admin") < 0 ||
	    store_filter_sort(&op.filter, "createdAt", 1) < 0) {
		api_job_fail(j, 500, "INTERNAL", "internal server error");
		goto out;
	}
	store_filter_page(&op.filter, 0, BOOTSTRAP_ADMINS_MAX + 1);
	if (api_run(j, &op) < 0)
		goto out;
	if (op.ndocs == 0 || api_doc_oid(op.docs[0], "_id", &first) < 0 || !bson_oid_equal(&first, &mine)) {
		if (set_role_user(j, &mine, &cj->user) == 0)
			cj->demoted = -1;
		goto out;
	}
	for (size_t i = 1; i < op.ndocs; i++) {
		bson_oid_t other;
		if (api_doc_oid(op.docs[i], "_id", &other) < 0)
			continue;
		if (set_role_user(j, &other, NULL) < 0) {
			if (j->err != STORE_NOT_FOUND)
				goto out;
			j->err = STORE_OK; /* already gone */
		}
		cj->demoted++;
	}
out:
	store_op_clear(&op);
}

static void register_work(struct api_job *j)
{
	struct cred_job *cj = (struct cred_job *)j;
	char hash[AUTH_HASH_MAX];
	struct store_op op;
	int rc = auth_password_hash(cj->pw, cj->pwlen, hash);
	sodium_memzero(cj->pw, sizeof(cj->pw));
	if (rc < 0) {
		api_job_fail(j, 503, "SERVICE_UNAVAILABLE", "server busy, try again");
		return;
	}
	bool admin = false;
	if (cj->may_bootstrap) {
		/* "Is there any user?" just before the insert keeps the first-user
		 * window short; FIND_ONE without a filter is a LIMIT 1 probe. */
		store_op_init(&op, STORE_OP_FIND_ONE, COLL_USERS);
		enum store_err err = api_exec(j, &op);
		store_op_clear(&op);
		if (err != STORE_OK && err != STORE_NOT_FOUND) {
			j->err = err;
			sodium_memzero(hash, sizeof(hash));
			return;
		}
		admin = err == STORE_NOT_FOUND;
	}
	store_op_init(&op, STORE_OP_INSERT, COLL_USERS);
	op.doc = users_new_doc(cj->username, cj->email, hash, admin ? "admin" : "user");
	sodium_memzero(hash, sizeof(hash));
	if (!op.doc)
		api_job_fail(j, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	else if (api_run(j, &op) == 0) {
		cj->user = op.result;
		op.result = NULL;
	}
	store_op_clear(&op);
	if (cj->user && admin)
		bootstrap(j, cj);
	if (cj->user && !j->fail_status && j->err == STORE_OK)
		open_session(j, cj);
}

static void register_done(struct api_job *j, struct http_request *req)
{
	struct cred_job *cj = (struct cred_job *)j;
	struct log_ctx lc = lctx(req);
	authmw_users_changed();
	if (cj->demoted < 0)
		log_warn(&lc, "concurrent first registration: demoted to user", LF_STR("role", "user"));
	else if (cj->demoted > 0)
		log_warn(&lc, "concurrent first registration: demoted later candidates", LF_INT("count", cj->demoted));
	const char *role = api_doc_str(cj->user, "role");
	bson_oid_t oid;
	char id[25] = "";
	if (api_doc_oid(cj->user, "_id", &oid) == 0)
		store_id_format(&oid, id);
	if (role && strcmp(role, "admin") == 0)
		log_warn(&lc, "first user registered on an empty database became admin (development only)",
		         LF_STR("userId", id));
	log_info(&lc, "user registered", LF_STR("userId", id), LF_STR("role", role ? role : "user"));
	reply_session(req, 201, cj->user, &cj->session);
}

static int auth_register(struct http_request *req)
{
	const struct json_value *body = app_body(req);
	struct verrors errs;
	if (validate(body, users_new_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	struct cred_job *cj = cred_job_new(req, register_work, register_done, body);
	if (!cj)
		return fail_unavailable(req);
	snprintf(cj->username, sizeof(cj->username), "%s", json_get_str(body, "username", NULL));
	cj->may_bootstrap = worker_current()->cfg->env != CONFIG_ENV_PRODUCTION;
	return api_job_submit(&cj->base);
}

/* ------------------------------------------------------------ login */

static void login_work(struct api_job *j)
{
	struct cred_job *cj = (struct cred_job *)j;
	struct store_op op;
	char rehash[AUTH_HASH_MAX] = "";
	if (cj->delay_ms) { /* this job runs on the pool: the loop keeps serving */
		struct timespec ts = {.tv_sec = cj->delay_ms / 1000, .tv_nsec = (long)(cj->delay_ms % 1000) * 1000000L};
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	}
	store_op_init(&op, STORE_OP_FIND_ONE, COLL_USERS);
	if (store_filter_str(&op.filter, "email", STORE_EQ, cj->email) < 0) {
		api_job_fail(j, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		goto out;
	}
	enum store_err err = api_exec(j, &op);
	if (err != STORE_OK && err != STORE_NOT_FOUND) {
		j->err = err;
		goto out;
	}
	const char *hash = err == STORE_OK ? users_password_hash(op.result) : NULL;
	if (hash && strlen(hash) < AUTH_HASH_MAX) {
		cj->match = auth_password_verify(hash, cj->pw, cj->pwlen) == 1;
		if (cj->match && auth_password_needs_rehash(hash) == 1 &&
		    auth_password_hash(cj->pw, cj->pwlen, rehash) < 0)
			rehash[0] = '\0';
	} else {
		auth_dummy_verify(cj->pw, cj->pwlen); /* unknown e-mail: the same cost, never a match */
	}
	sodium_memzero(cj->pw, sizeof(cj->pw));
	if (!cj->match)
		goto out;
	cj->user = op.result;
	op.result = NULL;
	if (rehash[0] && api_doc_bool(cj->user, "isActive", 1)) {
		bson_oid_t id;
		store_op_clear(&op);
		store_op_init(&op, STORE_OP_UPDATE_BY_ID, COLL_USERS);
		if (api_doc_oid(cj->user, "_id", &id) == 0 && (op.doc = BCON_NEW("password", BCON_UTF8(rehash)))) {
			bson_oid_copy(&id, &op.id);
			cj->rehash_err = api_exec(j, &op);
			cj->rehashed = cj->rehash_err == STORE_OK;
		}
	}
	if (api_doc_bool(cj->user, "isActive", 1))
		open_session(j, cj);
out:
	sodium_memzero(rehash, sizeof(rehash));
	store_op_clear(&op);
}

static void login_done(struct api_job *j, struct http_request *req)
{
	struct cred_job *cj = (struct cred_job *)j;
	struct log_ctx lc = lctx(req);
	if (!cj->match) {
		authmw_login_failed(cj->email, req->remote_ip);
		log_info(&lc, "login failed", LF_STR("email", cj->email));
		app_fail(req, 401, "UNAUTHORIZED", MSG_BAD_CREDENTIALS);
		return;
	}
	if (!api_doc_bool(cj->user, "isActive", 1)) {
		log_info(&lc, "login refused: account deactivated", LF_STR("email", cj->email));
		app_fail(req, 401, "UNAUTHORIZED", "account is deactivated");
		return;
	}
	authmw_login_succeeded(cj->email, req->remote_ip);
	if (cj->rehashed)
		authmw_users_changed();
	else if (cj->rehash_err != STORE_OK)
		log_warn(&lc, "password rehash not stored", LF_STR("error", store_err_name(cj->rehash_err)));
	bson_oid_t oid;
	char id[25] = "";
	if (api_doc_oid(cj->user, "_id", &oid) == 0)
		store_id_format(&oid, id);
	log_info(&lc, "user logged in", LF_STR("userId", id));
	reply_session(req, 200, cj->user, &cj->session);
}

static int auth_login(struct http_request *req)
{
	const struct json_value *body = app_body(req);
	struct verrors errs;
	if (validate(body, login_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	size_t el;
	const char *email = json_get_str(body, "email", &el);
	char *lower = lower_dup(req, email, el);
	if (!lower)
		return fail_unavailable(req);
	int64_t retry_s = 0;
	if (authmw_login_blocked(lower, req->remote_ip, &retry_s)) {
		char v[24];
		snprintf(v, sizeof(v), "%lld", (long long)(retry_s > 0 ? retry_s : 1));
		http_add_header(req, "Retry-After", v);
		struct log_ctx lc = lctx(req);
		log_info(&lc, "login blocked: too many failed attempts from this address", LF_STR("email", lower));
		metrics_count(MC_RATELIMIT_LOGIN);
		return app_fail(req, 429, "RATE_LIMITED", "too many failed login attempts, try again later");
	}
	struct cred_job *cj = cred_job_new(req, login_work, login_done, body);
	if (!cj)
		return fail_unavailable(req);
	cj->delay_ms = authmw_login_delay_ms(lower);
	return api_job_submit(&cj->base);
}

/* ------------------------------------------------------------ refresh */

static const struct vrule refresh_rules[] = {
    V_STRING("refreshToken", V_REQUIRED, 1, 128),
    V_END,
};

struct refresh_job {
	struct api_job base;
	char token[SESSION_TOKEN_MAX + 1]; /* the presented one (wiped after use) */
	size_t len;
	struct session_new next;
	bson_t *user;
	bool reused;
};

static void refresh_cleanup(struct api_job *j)
{
	struct refresh_job *rj = (struct refresh_job *)j;
	sodium_memzero(rj->token, sizeof(rj->token));
	sodium_memzero(&rj->next, sizeof(rj->next));
	if (rj->user)
		bson_destroy(rj->user);
	/* A reused token revoked its family: every worker must drop what it
	 * cached about that session, even though the request failed. */
	if (rj->reused)
		authmw_users_changed();
}

static void refresh_work(struct api_job *j)
{
	struct refresh_job *rj = (struct refresh_job *)j;
	session_rotate(j, rj->token, rj->len, worker_current()->cfg->refresh_expire_s, &rj->user, &rj->next,
	               &rj->reused);
	sodium_memzero(rj->token, sizeof(rj->token));
}

static void refresh_done(struct api_job *j, struct http_request *req)
{
	struct refresh_job *rj = (struct refresh_job *)j;
	char *token = issue_token(req, rj->user, rj->next.family);
	if (!token)
		return;
	yajl_gen g = app_gen(req);
	if (!g) {
		fail_unavailable(req);
		return;
	}
	yajl_gen_map_open(g);
	gen_pair(g, token, &rj->next);
	yajl_gen_map_close(g);
	app_send_gen(req, 200);
}

static int auth_refresh(struct http_request *req)
{
	const struct json_value *body = app_body(req);
	struct verrors errs;
	if (validate(body, refresh_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	size_t len;
	const char *tok = json_get_str(body, "refreshToken", &len);
	if (!tok || len > SESSION_TOKEN_MAX)
		return app_fail(req, 401, "UNAUTHORIZED", "invalid or expired refresh token");
	struct refresh_job *rj = api_job_new(req, sizeof(*rj), refresh_work, refresh_done);
	if (!rj)
		return fail_unavailable(req);
	rj->base.cleanup = refresh_cleanup;
	memcpy(rj->token, tok, len);
	rj->len = len;
	return api_job_submit(&rj->base);
}

/* ------------------------------------------------------------ logout */

struct logout_job {
	struct api_job base;
	char sid[25]; /* the access token's session; "" for a token without one */
	bson_oid_t user;
};

static void logout_work(struct api_job *j)
{
	struct logout_job *lj = (struct logout_job *)j;
	if (lj->sid[0]) {
		session_revoke_family(j, lj->sid);
		return;
	}
	/* A token without a session (issued before sessions, or by the Node
	 * app) can only be revoked with every older token of its user. */
	bson_t *fields = BCON_NEW("tokensValidAfter", BCON_DATE_TIME(session_valid_after_now()));
	if (!fields) {
		api_job_fail(j, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
	bson_t *doc = api_update_by_id(j, COLL_USERS, &lj->user, fields);
	if (doc)
		bson_destroy(doc);
}

static void logout_done(struct api_job *j, struct http_request *req)
{
	struct logout_job *lj = (struct logout_job *)j;
	struct log_ctx lc = {.request_id = req->request_id, .user_id = auth_principal(req)->id};
	authmw_users_changed();
	log_info(&lc, "logged out", LF_STR("scope", lj->sid[0] ? "session" : "all tokens"));
	app_no_content(req);
}

static int auth_logout(struct http_request *req)
{
	struct logout_job *lj = api_job_new(req, sizeof(*lj), logout_work, logout_done);
	if (!lj)
		return fail_unavailable(req);
	const char *sid = authmw_session_id(req);
	if (sid)
		snprintf(lj->sid, sizeof(lj->sid), "%s", sid);
	lj->user = auth_principal(req)->oid;
	return api_job_submit(&lj->base);
}

int auth_routes(struct app *app)
{
	int rc = 0;
	rc |= app_post(app, "/api/auth/register", auth_register);
	rc |= app_post(app, "/api/auth/login", auth_login);
	rc |= app_body_limit(app, HTTP_M_POST, "/api/auth/register", 64 * 1024);
	rc |= app_body_limit(app, HTTP_M_POST, "/api/auth/login", 64 * 1024);
	rc |= app_post(app, "/api/auth/refresh", auth_refresh);
	rc |= app_post(app, "/api/auth/logout", mw_auth, auth_logout);
	return rc;
}
