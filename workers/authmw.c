/* authmw.c - JWT authentication with a per-worker user cache, role checks,
 * and the shared per-IP / per-email rate limiters (see authmw.h).
 *
 * A valid token is not enough: the user must still exist and be active, so
 * mw_auth looks the user up. Lookups are cached per worker for a few seconds
 * and the cache is dropped in every worker whenever any user document
 * changes (a generation counter in the shared scoreboard), so deactivation
 * takes effect at once everywhere while /api/users/me stays off the
 * database on the hot path.
 */
#include "autoconfig.h"

#include "authmw.h"

#include "api.h"
#include "config.h"
#include "log.h"
#include "ratelimit.h"
#include "routes.h"
#include "scoreboard.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define JWT_SKEW_S 5
#define USER_CACHE_SIZE 1024
#define USER_CACHE_TTL_MS 5000
#define LOGIN_FAIL_MAX 5
#define LOGIN_FAIL_WINDOW_MS (15 * 60 * 1000)

static struct ratelimit *g_rl;
static const struct resil_config *g_cfg;

struct cached_user {
	char id[25];
	char username[32];
	char email[256];
	char role[16];
	int active;
	uint64_t at_ms;
	int generation;
	bson_t *doc; /* the stored user document (owned), for GET /api/users/me */
};
static struct cached_user user_cache[USER_CACHE_SIZE];

static void cache_clear(void)
{
	for (int i = 0; i < USER_CACHE_SIZE; i++)
		if (user_cache[i].doc)
			bson_destroy(user_cache[i].doc);
	memset(user_cache, 0, sizeof(user_cache));
}

void authmw_shutdown(void)
{
	cache_clear();
}

static struct scoreboard *sb(void)
{
	struct worker *w = worker_current();
	return w ? w->sb : NULL;
}

static int users_generation(void)
{
	struct scoreboard *s = sb();
	return s ? atomic_load_explicit(&s->hdr.users_generation, memory_order_acquire) : 0;
}

void authmw_users_changed(void)
{
	struct scoreboard *s = sb();
	if (s)
		atomic_fetch_add_explicit(&s->hdr.users_generation, 1, memory_order_acq_rel);
	cache_clear();
}

/* mw_auth's header-time guard (app_guard): the token checks mw_auth makes
 * without the database. A request that fails them is answered by mw_auth
 * before its body is read, so an anonymous upload costs no memory. */
static int auth_guard(const struct http_request *req)
{
	size_t hl, tl;
	const char *tok;
	const char *h = http_header_get(req, "authorization", &hl);
	if (!h || hl == 0 || auth_bearer_token(h, hl, &tok, &tl) < 0)
		return APP_DONE;
	struct jwt_claims cl;
	if (jwt_verify(g_cfg->jwt_secret, g_cfg->jwt_secret_len, tok, tl, (int64_t)time(NULL), JWT_SKEW_S, &cl) !=
	    JWT_OK)
		return APP_DONE;
	return APP_NEXT;
}

void authmw_init(struct ratelimit *rl, const struct resil_config *cfg)
{
	g_rl = rl;
	g_cfg = cfg;
	struct worker *w = worker_current();
	if (w && w->app && app_guard(w->app, mw_auth, auth_guard) < 0)
		log_error(NULL, "cannot register the authentication guard");
}

struct ratelimit *authmw_limiter(void)
{
	return g_rl;
}

static uint64_t now_ms(void)
{
	return sb_now_mono_ms(); /* shared by every process: the limiter's clock */
}

int authmw_issue_token(const char *user_id, const char *email, const char *role, char *out, size_t outlen)
{
	struct jwt_claims c;
	memset(&c, 0, sizeof(c));
	snprintf(c.sub, sizeof(c.sub), "%s", user_id);
	snprintf(c.email, sizeof(c.email), "%s", email);
	snprintf(c.role, sizeof(c.role), "%s", role);
	c.iat = (int64_t)time(NULL);
	c.exp = c.iat + g_cfg->jwt_expire_s;
	return jwt_sign(g_cfg->jwt_secret, g_cfg->jwt_secret_len, &c, out, outlen);
}

static unsigned cache_slot(const char *id)
{
	unsigned h = 2166136261u;
	for (const char *p = id; *p; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	return h % USER_CACHE_SIZE;
}

/* The principal and the document it was loaded from, in the request's arena. */
struct auth_state {
	struct principal p;
	const bson_t *doc; /* valid until the chain next yields (see authmw.h) */
};

static int set_ctx(struct http_request *req, const struct cached_user *u)
{
	struct app_ctx *ctx = app_ctx(req);
	struct auth_state *as = http_alloc(req, sizeof(*as));
	if (!as)
		return -1;
	memset(as, 0, sizeof(*as));
	snprintf(as->p.id, sizeof(as->p.id), "%s", u->id);
	if (store_id_parse(u->id, strlen(u->id), &as->p.oid) < 0)
		return -1;
	snprintf(as->p.username, sizeof(as->p.username), "%s", u->username);
	snprintf(as->p.email, sizeof(as->p.email), "%s", u->email);
	snprintf(as->p.role, sizeof(as->p.role), "%s", u->role);
	as->doc = u->doc;
	ctx->principal = as;
	ctx->principal_id = as->p.id;
	return 0;
}

const struct principal *auth_principal(struct http_request *req)
{
	struct app_ctx *ctx = app_ctx(req);
	const struct auth_state *as = ctx ? ctx->principal : NULL;
	return as ? &as->p : NULL;
}

int auth_is_admin(struct http_request *req)
{
	const struct principal *me = auth_principal(req);
	return me && strcmp(me->role, "admin") == 0;
}

static void user_loaded(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	if (err == STORE_NOT_FOUND || (err == STORE_OK && !api_doc_bool(c->op.result, "isActive", 1))) {
		app_fail(req, 401, "UNAUTHORIZED", "user no longer exists or is inactive");
		return;
	}
	if (err != STORE_OK) {
		api_fail_store(req, err, NULL);
		return;
	}
	struct cached_user u;
	memset(&u, 0, sizeof(u));
	store_id_format(&c->op.id, u.id);
	const char *s;
	if ((s = api_doc_str(c->op.result, "username")))
		snprintf(u.username, sizeof(u.username), "%s", s);
	if ((s = api_doc_str(c->op.result, "email")))
		snprintf(u.email, sizeof(u.email), "%s", s);
	s = api_doc_str(c->op.result, "role");
	snprintf(u.role, sizeof(u.role), "%s", s && (strcmp(s, "admin") == 0 || strcmp(s, "clinician") == 0) ? s : "user");
	u.active = 1;
	u.at_ms = now_ms();
	u.generation = (int)c->n;
	u.doc = bson_copy(c->op.result);
	struct cached_user *slot = &user_cache[cache_slot(u.id)];
	if (slot->doc)
		bson_destroy(slot->doc);
	*slot = u;
	if (set_ctx(req, slot) < 0) {
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
	app_next(req);
}

int mw_auth(struct http_request *req)
{
	size_t hl;
	const char *h = http_header_get(req, "authorization", &hl);
	if (!h || hl == 0)
		return app_fail(req, 401, "UNAUTHORIZED", "access token required");
	const char *tok;
	size_t tl;
	if (auth_bearer_token(h, hl, &tok, &tl) < 0) {
		/* "Bearer <garbage>" is a malformed token (403); any other scheme
		 * or an empty value means no token was given (401). */
		size_t i = 0;
		while (i < hl && (h[i] == ' ' || h[i] == '\t'))
			i++;
		if (hl - i > 7 && strncasecmp(h + i, "bearer ", 7) == 0) {
			size_t j = i + 7;
			while (j < hl && (h[j] == ' ' || h[j] == '\t'))
				j++;
			if (j < hl)
				return app_fail(req, 403, "FORBIDDEN", "invalid or expired token");
		}
		return app_fail(req, 401, "UNAUTHORIZED", "access token required");
	}
	struct jwt_claims cl;
	enum jwt_result jr =
		jwt_verify(g_cfg->jwt_secret, g_cfg->jwt_secret_len, tok, tl, (int64_t)time(NULL), JWT_SKEW_S, &cl);
	if (jr != JWT_OK) {
		log_info(&(struct log_ctx){.request_id = req->request_id}, "token rejected",
		         LF_STR("reason", jwt_result_str(jr)));
		return app_fail(req, 403, "FORBIDDEN", "invalid or expired token");
	}
	int gen = users_generation();
	struct cached_user *u = &user_cache[cache_slot(cl.sub)];
	if (sb() && strcmp(u->id, cl.sub) == 0 && u->generation == gen && now_ms() - u->at_ms < USER_CACHE_TTL_MS) {
		if (set_ctx(req, u) < 0)
			return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return APP_NEXT;
	}
	struct api_call *c = api_call_new(req, STORE_OP_FIND_BY_ID, STORE_USERS, user_loaded);
	if (!c)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	if (store_id_parse(cl.sub, strlen(cl.sub), &c->op.id) < 0) {
		free(c);
		return app_fail(req, 403, "FORBIDDEN", "invalid or expired token");
	}
	c->n = gen;
	return api_call_submit(c);
}

const bson_t *authmw_user_doc(struct http_request *req)
{
	struct app_ctx *ctx = app_ctx(req);
	const struct auth_state *as = ctx ? ctx->principal : NULL;
	return as ? as->doc : NULL;
}

int mw_admin(struct http_request *req)
{
	if (!auth_is_admin(req))
		return app_fail(req, 403, "FORBIDDEN", "admin role required");
	return APP_NEXT;
}

int mw_clinician(struct http_request *req)
{
	const struct principal *me = auth_principal(req);
	if (!me || (strcmp(me->role, "clinician") != 0 && strcmp(me->role, "admin") != 0))
		return app_fail(req, 403, "FORBIDDEN", "clinician or admin role required");
	return APP_NEXT;
}

static void rate_headers(struct http_request *req, const struct rl_result *r)
{
	char v[32];
	snprintf(v, sizeof(v), "%u", r->limit);
	http_add_header(req, "RateLimit-Limit", v);
	snprintf(v, sizeof(v), "%u", r->remaining);
	http_add_header(req, "RateLimit-Remaining", v);
	snprintf(v, sizeof(v), "%llu", (unsigned long long)((r->reset_ms + 999) / 1000));
	http_add_header(req, "RateLimit-Reset", v);
	snprintf(v, sizeof(v), "%u;w=%llu", r->limit, (unsigned long long)((g_cfg->rate_limit_window_ms + 999) / 1000));
	http_add_header(req, "RateLimit-Policy", v);
}

int mw_rate_limit(struct http_request *req)
{
	if (!g_rl || req->path_len < 5 || memcmp(req->path, "/api/", 5) != 0)
		return APP_NEXT;
	char key[80];
	int kl = snprintf(key, sizeof(key), "ip:%s", req->remote_ip);
	struct rl_result r;
	uint32_t limit = g_cfg->rate_limit_max > RL_LIMIT_MAX ? RL_LIMIT_MAX : (uint32_t)g_cfg->rate_limit_max;
	int ok = rl_hit(g_rl, key, (size_t)kl, now_ms(), limit, (uint64_t)g_cfg->rate_limit_window_ms, &r);
	rate_headers(req, &r);
	if (ok == 0) {
		char v[32];
		snprintf(v, sizeof(v), "%llu", (unsigned long long)((r.reset_ms + 999) / 1000));
		http_add_header(req, "Retry-After", v);
		return app_fail(req, 429, "RATE_LIMITED", "too many requests, try again later");
	}
	return APP_NEXT;
}

static int login_key(const char *email, char *key, size_t keylen)
{
	int n = snprintf(key, keylen, "login:");
	for (const char *p = email; *p && (size_t)n + 1 < keylen; p++)
		key[n++] = (char)tolower((unsigned char)*p);
	key[n] = '\0';
	return n;
}

int authmw_login_blocked(const char *email, int64_t *retry_after_s)
{
	if (!g_rl)
		return 0;
	char key[300];
	int kl = login_key(email, key, sizeof(key));
	struct rl_result r;
	int ok = rl_peek(g_rl, key, (size_t)kl, now_ms(), LOGIN_FAIL_MAX, &r);
	if (ok == 0) {
		*retry_after_s = (int64_t)((r.reset_ms + 999) / 1000);
		return 1;
	}
	return 0;
}

void authmw_login_failed(const char *email)
{
	if (!g_rl)
		return;
	char key[300];
	int kl = login_key(email, key, sizeof(key));
	rl_hit(g_rl, key, (size_t)kl, now_ms(), LOGIN_FAIL_MAX, LOGIN_FAIL_WINDOW_MS, NULL);
}

void authmw_login_succeeded(const char *email)
{
	if (!g_rl)
		return;
	char key[300];
	int kl = login_key(email, key, sizeof(key));
	rl_reset(g_rl, key, (size_t)kl);
}
