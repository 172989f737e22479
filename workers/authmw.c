/* authmw.c - JWT authentication with a per-worker user cache, role checks,
 * and the shared per-IP / per-email rate limiters (see authmw.h).
 *
 * A valid token is not enough: the user must still exist and be active, so
 * mw_auth looks the user up. Lookups are cached per worker for a few seconds
 * and the cache is dropped in every worker whenever any user document
 * changes (a generation counter in the shared scoreboard), so deactivation
 * takes effect at once everywhere while /api/users/me stays off the
 * database on the hot path.
 *
 * auth_resolve is that whole token -> principal path (verify, cache, load)
 * for every caller: mw_auth here, and the chat's upgrade and Socket.IO
 * CONNECT (chat_upgrade.c). A load bound to an HTTP request goes through
 * api_call (the request's deadline, 504 when it passes); one for a
 * WebSocket owns a plain store op with its own deadline.
 */
#include "autoconfig.h"

#include "authmw.h"

#include "api.h"
#include "config.h"
#include "log.h"
#include "ratelimit.h"
#include "rbus.h"
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
#define SESSION_CACHE_SIZE 1024
#define AUTH_LOAD_TIMEOUT_MS 10000 /* a load bound to no request (WebSocket CONNECT) */
#define LOGIN_FAIL_WINDOW_MS (15 * 60 * 1000)

static struct ratelimit *g_rl;
static const struct resil_config *g_cfg;

struct cached_user {
	struct principal p; /* p.id[0] == '\0': an empty slot */
	uint64_t at_ms;
	int generation;
	bson_t *doc; /* the stored user document (owned), for GET /api/users/me */
};
static struct cached_user user_cache[USER_CACHE_SIZE];

struct cached_session {
	char sid[25]; /* "" : an empty slot */
	bool revoked;
	uint64_t at_ms;
	int generation;
};
static struct cached_session session_cache[SESSION_CACHE_SIZE];

static void cache_clear(void)
{
	for (int i = 0; i < USER_CACHE_SIZE; i++)
		if (user_cache[i].doc)
			bson_destroy(user_cache[i].doc);
	memset(user_cache, 0, sizeof(user_cache));
	memset(session_cache, 0, sizeof(session_cache));
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
/* Verified tokens, per worker: a token is checked at header time (the
 * guard) and again by mw_auth, and a keep-alive client sends the same one
 * with every request. A hit compares the whole token (a copy is kept) and
 * re-checks its expiry; the secret never changes in a worker's life. */
#define TOKEN_MEMO_SLOTS 64
#define TOKEN_MEMO_MAX 640 /* longer tokens are verified every time */

struct token_memo {
	size_t len;
	char tok[TOKEN_MEMO_MAX];
	struct jwt_claims cl;
};
static struct token_memo token_memo[TOKEN_MEMO_SLOTS];

static enum jwt_result verify_token(const char *tok, size_t len, struct jwt_claims *cl)
{
	int64_t now = (int64_t)time(NULL);
	struct token_memo *m = NULL;
	if (len <= TOKEN_MEMO_MAX) {
		uint32_t h = 2166136261u;
		for (size_t i = 0; i < len; i++)
			h = (h ^ (unsigned char)tok[i]) * 16777619u;
		m = &token_memo[h % TOKEN_MEMO_SLOTS];
		if (m->len == len && memcmp(m->tok, tok, len) == 0) {
			if (now > m->cl.exp + JWT_SKEW_S)
				return JWT_EXPIRED;
			*cl = m->cl;
			return JWT_OK;
		}
	}
	enum jwt_result jr = jwt_verify(g_cfg->jwt_secret, g_cfg->jwt_secret_len, tok, len, now, JWT_SKEW_S, cl);
	if (jr == JWT_OK && m) {
		m->len = len;
		memcpy(m->tok, tok, len);
		m->cl = *cl;
	}
	return jr;
}

static int auth_guard(const struct http_request *req)
{
	size_t hl, tl;
	const char *tok;
	const char *h = http_header_get(req, "authorization", &hl);
	if (!h || hl == 0 || auth_bearer_token(h, hl, &tok, &tl) < 0)
		return APP_DONE;
	struct jwt_claims cl;
	if (verify_token(tok, tl, &cl) != JWT_OK)
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

int authmw_issue_token(const char *user_id, const char *email, const char *role, const char *sid, char *out,
                       size_t outlen)
{
	struct jwt_claims c;
	memset(&c, 0, sizeof(c));
	snprintf(c.sub, sizeof(c.sub), "%s", user_id);
	snprintf(c.email, sizeof(c.email), "%s", email);
	snprintf(c.role, sizeof(c.role), "%s", role);
	c.iat = (int64_t)time(NULL);
	c.exp = c.iat + g_cfg->jwt_expire_s;
	if (sid)
		snprintf(c.sid, sizeof(c.sid), "%s", sid);
	return jwt_sign(g_cfg->jwt_secret, g_cfg->jwt_secret_len, &c, out, outlen);
}

static unsigned cache_slot(const char *id)
{
	unsigned h = 2166136261u;
	for (const char *p = id; *p; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	return h % USER_CACHE_SIZE;
}

/* ------------------------------------------------- token -> principal */

/* The cached user with this id (24 lower-case hex digits), if fresh and
 * of this generation. Only with a scoreboard: without one no other worker
 * could tell us that a user changed. */
static struct cached_user *cache_lookup(const char *id, int gen)
{
	struct cached_user *u = &user_cache[cache_slot(id)];
	if (sb() && u->p.id[0] && strcmp(u->p.id, id) == 0 && u->generation == gen &&
	    now_ms() - u->at_ms < USER_CACHE_TTL_MS)
		return u;
	return NULL;
}

/* Store a loaded, active user document; returns its slot. */
static struct cached_user *cache_fill(const bson_oid_t *id, int gen, const bson_t *doc)
{
	struct cached_user u;
	memset(&u, 0, sizeof(u));
	store_id_format(id, u.p.id);
	u.p.oid = *id;
	const char *s;
	if ((s = api_doc_str(doc, "username")))
		snprintf(u.p.username, sizeof(u.p.username), "%s", s);
	if ((s = api_doc_str(doc, "email")))
		snprintf(u.p.email, sizeof(u.p.email), "%s", s);
	s = api_doc_str(doc, "role");
	snprintf(u.p.role, sizeof(u.p.role), "%s",
	         s && (strcmp(s, "admin") == 0 || strcmp(s, "clinician") == 0) ? s : "user");
	u.at_ms = now_ms();
	u.generation = gen;
	u.doc = bson_copy(doc);
	struct cached_user *slot = &user_cache[cache_slot(u.p.id)];
	if (slot->doc)
		bson_destroy(slot->doc);
	*slot = u;
	return slot;
}

/* ---- session state: is a token's session (refresh family) revoked? ---- */

/* Like cache_lookup: fresh, same generation, only with a scoreboard. */
static struct cached_session *session_lookup(const char *sid, int gen)
{
	struct cached_session *s = &session_cache[cache_slot(sid) % SESSION_CACHE_SIZE];
	if (sb() && s->sid[0] && strcmp(s->sid, sid) == 0 && s->generation == gen &&
	    now_ms() - s->at_ms < USER_CACHE_TTL_MS)
		return s;
	return NULL;
}

static void session_fill(const char *sid, int gen, bool revoked)
{
	struct cached_session *s = &session_cache[cache_slot(sid) % SESSION_CACHE_SIZE];
	snprintf(s->sid, sizeof(s->sid), "%s", sid);
	s->revoked = revoked;
	s->at_ms = now_ms();
	s->generation = gen;
}

/* The user's tokensValidAfter (ms), 0 when unset. */
static int64_t valid_after_ms(const bson_t *doc)
{
	bson_iter_t it;
	if (doc && bson_iter_init_find(&it, doc, "tokensValidAfter") && BSON_ITER_HOLDS_DATE_TIME(&it))
		return bson_iter_date_time(&it);
	return 0;
}

/* The verdict for a token (iat, sid) of an active user whose document is
 * doc, given its session's state. tokensValidAfter is stored truncated to
 * the second (session_valid_after_now), so the fresh pair issued in the
 * same second as a password change stays valid; older tokens of that
 * second carry a sid whose family the change revoked. */
static void decide(struct auth_result *r, const struct cached_user *u, int64_t iat, bool revoked)
{
	if (revoked || iat * 1000 < valid_after_ms(u->doc)) {
		r->status = AUTH_GONE;
		r->revoked = true;
		return;
	}
	r->status = AUTH_OK;
	r->who = &u->p;
	r->doc = u->doc;
}

/* One resolution in progress (the request's arena, or malloc'd without a
 * request). Loads run one at a time; each outcome is cached and the next
 * step decides from the caches, or from the loaded values when there is no
 * scoreboard (no cache). */
struct auth_wait {
	auth_cb cb;
	void *ud;
	struct http_request *req; /* NULL: malloc'd, loads own their op */
	bson_oid_t id;
	int gen;
	int64_t iat;
	char sid[25];
	bson_t *user;      /* loaded user document (owned), NULL until loaded */
	int session_state; /* -1 unknown, 0 live, 1 revoked */
};

static enum auth_status step(struct auth_wait *w, struct auth_result *r);

/* Answer the waiter. w is released first: cb may answer and free the
 * request whose arena holds w (r points into the caches, not into w). */
static void wait_finish(struct auth_wait *w, struct auth_result *r)
{
	auth_cb cb = w->cb;
	void *ud = w->ud;
	memcpy(r->sid, w->sid, sizeof(r->sid));
	if (w->user)
		bson_destroy(w->user);
	w->user = NULL;
	if (!w->req)
		free(w);
	cb(ud, r);
}

/* A load finished: record it and take the next step. */
static void wait_loaded(struct auth_wait *w, int coll, enum store_err err, bson_t **result)
{
	struct auth_result r;
	memset(&r, 0, sizeof(r));
	if (coll == COLL_USERS) {
		if (err == STORE_NOT_FOUND || (err == STORE_OK && !api_doc_bool(*result, "isActive", 1))) {
			r.status = AUTH_GONE;
			wait_finish(w, &r);
			return;
		}
		if (err == STORE_OK) {
			w->user = *result;
			*result = NULL;
		}
	} else if (err == STORE_OK || err == STORE_NOT_FOUND) {
		w->session_state = err == STORE_OK; /* found a revoked document of the family */
		session_fill(w->sid, w->gen, err == STORE_OK);
		err = STORE_OK;
	}
	if (err != STORE_OK) {
		r.status = AUTH_STORE;
		r.err = err;
		wait_finish(w, &r);
		return;
	}
	if (step(w, &r) != AUTH_PENDING)
		wait_finish(w, &r);
}

static void req_loaded(struct api_call *c, enum store_err err)
{
	wait_loaded(c->data, c->op.coll, err, &c->op.result);
}

/* A load without a request: the op and who waits for it (malloc'd). */
struct auth_load {
	struct store_op op;
	struct auth_wait *w;
};

static void load_done(struct store_op *op, enum store_err err)
{
	struct auth_load *l = op->user;
	wait_loaded(l->w, op->coll, err, &op->result);
	store_op_clear(&l->op);
	free(l);
}

/* Start the load of coll for w: users by id, or "a revoked document of the
 * session's family". 0, or -1 (r filled; with a request it is answered). */
static int start_load(struct auth_wait *w, int coll, struct auth_result *r)
{
	int kind = coll == COLL_USERS ? STORE_OP_FIND_BY_ID : STORE_OP_FIND_ONE;
	struct store_op *op;
	struct api_call *c = NULL;
	struct auth_load *l = NULL;
	if (w->req) {
		if (!(c = api_call_new(w->req, kind, coll, req_loaded))) {
			app_fail(w->req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
			return -1;
		}
		c->data = w;
		op = &c->op;
	} else {
		if (!(l = calloc(1, sizeof(*l))))
			goto unavailable;
		store_op_init(&l->op, kind, coll);
		l->op.done = load_done;
		l->op.user = l;
		l->op.deadline_ms = jobs_now_ms() + AUTH_LOAD_TIMEOUT_MS;
		l->w = w;
		op = &l->op;
	}
	if (coll == COLL_USERS)
		op->id = w->id;
	else if (store_filter_str(&op->filter, "family", STORE_EQ, w->sid) < 0 ||
	         store_filter_bool(&op->filter, "revoked", STORE_EQ, true) < 0)
		goto fail;
	if (c) {
		api_call_submit(c); /* answers the request itself on failure */
		return 0;
	}
	struct store *st = api_store();
	if (st && store_submit(st, &l->op) == 0)
		return 0;
fail:
	if (c) {
		store_op_clear(&c->op);
		free(c);
		app_fail(w->req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return -1;
	}
	store_op_clear(&l->op);
	free(l);
unavailable:
	r->status = AUTH_STORE;
	r->err = STORE_UNAVAILABLE;
	return -1;
}

/* Start the load of coll: AUTH_PENDING, or the failure (with a request it
 * was answered: AUTH_PENDING too, and cb will not run). */
static enum auth_status start(struct auth_wait *w, int coll, struct auth_result *r)
{
	if (start_load(w, coll, r) < 0 && !w->req)
		return r->status;
	return AUTH_PENDING;
}

/* Decide from what is known, or start the missing load. The session is
 * checked first so that the user document, once loaded, is decided on at
 * once and never held across a load. */
static enum auth_status step(struct auth_wait *w, struct auth_result *r)
{
	bool revoked = false;
	if (w->sid[0]) {
		struct cached_session *s = session_lookup(w->sid, w->gen);
		if (s)
			revoked = s->revoked;
		else if (w->session_state >= 0)
			revoked = w->session_state == 1;
		else
			return start(w, COLL_SESSIONS, r);
	}
	char hex[25];
	store_id_format(&w->id, hex);
	struct cached_user *u = w->user ? cache_fill(&w->id, w->gen, w->user) : cache_lookup(hex, w->gen);
	if (!u)
		return start(w, COLL_USERS, r);
	decide(r, u, w->iat, revoked);
	return r->status;
}

enum auth_status auth_resolve(struct http_request *req, const char *tok, size_t len, auth_cb cb, void *ud,
                              struct auth_result *now)
{
	memset(now, 0, sizeof(*now));
	if (!tok || !len)
		return now->status = AUTH_MISSING;
	struct jwt_claims cl;
	bson_oid_t id;
	enum jwt_result jr = verify_token(tok, len, &cl);
	if (jr != JWT_OK || store_id_parse(cl.sub, strlen(cl.sub), &id) < 0) {
		log_info(&(struct log_ctx){.request_id = req ? req->request_id : NULL}, "token rejected",
		         LF_STR("reason", jr != JWT_OK ? jwt_result_str(jr) : "subject is not an id"));
		return now->status = AUTH_INVALID;
	}
	int gen = users_generation();
	/* The hot path: user and session both cached, nothing allocated. */
	char hex[25]; /* the id as the cache spells it, whatever case the token used */
	store_id_format(&id, hex);
	struct cached_user *u = cache_lookup(hex, gen);
	struct cached_session *s = cl.sid[0] ? session_lookup(cl.sid, gen) : NULL;
	if (u && (!cl.sid[0] || s)) {
		decide(now, u, cl.iat, s && s->revoked);
		memcpy(now->sid, cl.sid, sizeof(now->sid));
		return now->status;
	}
	struct auth_wait *w = req ? http_alloc(req, sizeof(*w)) : calloc(1, sizeof(*w));
	if (!w) {
		if (req) {
			app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
			return AUTH_PENDING;
		}
		now->err = STORE_UNAVAILABLE;
		return now->status = AUTH_STORE;
	}
	memset(w, 0, sizeof(*w));
	w->cb = cb;
	w->ud = ud;
	w->req = req;
	w->id = id;
	w->gen = gen;
	w->iat = cl.iat;
	w->session_state = -1;
	memcpy(w->sid, cl.sid, sizeof(w->sid));
	enum auth_status st = step(w, now);
	if (st != AUTH_PENDING && !req)
		free(w); /* failed to start the load */
	return st;
}

/* ---------------------------------------------------------- mw_auth */

/* The principal and the document it was loaded from, in the request's arena. */
struct auth_state {
	struct principal p;
	char sid[25];      /* the token's session, "" for none */
	const bson_t *doc; /* valid until the chain next yields (see authmw.h) */
};

static int set_ctx(struct http_request *req, const struct auth_result *r)
{
	struct app_ctx *ctx = app_ctx(req);
	struct auth_state *as = http_alloc(req, sizeof(*as));
	if (!as)
		return -1;
	as->p = *r->who;
	memcpy(as->sid, r->sid, sizeof(as->sid));
	as->doc = r->doc;
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

/* mw_auth's answer to an outcome: APP_NEXT, or APP_DONE once answered. */
static int mw_auth_answer(struct http_request *req, const struct auth_result *r)
{
	switch (r->status) {
	case AUTH_OK:
		if (set_ctx(req, r) < 0)
			return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return APP_NEXT;
	case AUTH_MISSING: return app_fail(req, 401, "UNAUTHORIZED", "access token required");
	case AUTH_GONE:
		if (r->revoked)
			return app_fail(req, 401, "UNAUTHORIZED", "token has been revoked");
		return app_fail(req, 401, "UNAUTHORIZED", "user no longer exists or is inactive");
	case AUTH_STORE: return api_fail_store(req, r->err, NULL);
	default: return app_fail(req, 403, "FORBIDDEN", "invalid or expired token");
	}
}

static void mw_auth_loaded(void *ud, const struct auth_result *r)
{
	struct http_request *req = ud;
	if (mw_auth_answer(req, r) == APP_NEXT)
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
	struct auth_result r;
	if (auth_resolve(req, tok, tl, mw_auth_loaded, req, &r) == AUTH_PENDING)
		return APP_DONE;
	return mw_auth_answer(req, &r);
}

const char *authmw_session_id(struct http_request *req)
{
	struct app_ctx *ctx = app_ctx(req);
	const struct auth_state *as = ctx ? ctx->principal : NULL;
	return as && as->sid[0] ? as->sid : NULL;
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

/* The local limiter (shared memory, this host): the single-host path, and
 * the cross-host path's fallback while Redis is down. */
static int rate_local(struct http_request *req, const char *key, size_t kl, uint32_t limit)
{
	struct rl_result r;
	int ok = rl_hit(g_rl, key, kl, now_ms(), limit, (uint64_t)g_cfg->rate_limit_window_ms, &r);
	rate_headers(req, &r);
	if (ok == 0) {
		char v[32];
		snprintf(v, sizeof(v), "%llu", (unsigned long long)((r.reset_ms + 999) / 1000));
		http_add_header(req, "Retry-After", v);
		return app_fail(req, 429, "RATE_LIMITED", "too many requests, try again later");
	}
	return APP_NEXT;
}

static uint32_t rate_max(void)
{
	return g_cfg->rate_limit_max > RL_LIMIT_MAX ? RL_LIMIT_MAX : (uint32_t)g_cfg->rate_limit_max;
}

/* ---- the cross-host limit: one counter per client in Redis (src/rbus.h),
 * the request waiting for the reply (never the loop). */
#define RL_SLOT 4 /* req->app_data slot */

struct rl_wait {
	struct rbus_req *rq; /* in flight; NULL once answered */
	void (*chained_free)(struct http_request *);
};

static void rl_wait_free(struct http_request *req)
{
	struct rl_wait *w = req->app_data[RL_SLOT];
	void (*next)(struct http_request *) = w ? w->chained_free : NULL;
	if (w && w->rq)
		rbus_cancel(w->rq);
	req->app_data[RL_SLOT] = NULL;
	if (next)
		next(req);
}

static void rl_gone(struct http_request *req)
{
	struct rl_wait *w = req->app_data[RL_SLOT];
	if (!w || !w->rq)
		return;
	rbus_cancel(w->rq);
	w->rq = NULL;
	req->on_abort = NULL;
	app_fail(req, 499, "CLIENT_CLOSED", "client closed request");
}

static void rl_counted(void *ud, int ok, int64_t hits, int64_t reset_ms)
{
	struct http_request *req = ud;
	struct rl_wait *w = req->app_data[RL_SLOT];
	w->rq = NULL;
	req->on_abort = NULL;
	uint32_t limit = rate_max();
	if (!ok) {
		char key[80];
		int kl = snprintf(key, sizeof(key), "ip:%s", req->remote_ip);
		if (rate_local(req, key, (size_t)kl, limit) == APP_NEXT)
			app_next(req);
		return;
	}
	struct rl_result r = {.limit = limit,
	                      .remaining = hits >= (int64_t)limit ? 0 : limit - (uint32_t)hits,
	                      .reset_ms = reset_ms > 0 ? (uint64_t)reset_ms : 0};
	rate_headers(req, &r);
	if (hits > (int64_t)limit) {
		char v[32];
		snprintf(v, sizeof(v), "%llu", (unsigned long long)((r.reset_ms + 999) / 1000));
		http_add_header(req, "Retry-After", v);
		app_fail(req, 429, "RATE_LIMITED", "too many requests, try again later");
		return;
	}
	app_next(req);
}

int mw_rate_limit(struct http_request *req)
{
	if (!g_rl || req->path_len < 5 || memcmp(req->path, "/api/", 5) != 0)
		return APP_NEXT;
	char key[80];
	int kl = snprintf(key, sizeof(key), "ip:%s", req->remote_ip);
	if (g_cfg->bus[0] && rbus_state() == RBUS_UP) {
		struct rl_wait *w = http_alloc(req, sizeof(*w));
		if (w) {
			w->rq = rbus_count(key, (size_t)kl, (uint64_t)g_cfg->rate_limit_window_ms, rl_counted, req);
			if (w->rq) {
				w->chained_free = req->on_free;
				req->on_free = rl_wait_free;
				req->on_abort = rl_gone;
				req->app_data[RL_SLOT] = w;
				return APP_DONE;
			}
		}
	}
	return rate_local(req, key, (size_t)kl, rate_max());
}

/* Login throttling (issue 13 item 6). Three shared counters of failed logins,
 * none of which a third party can turn into a lockout of the account's owner:
 *  - per (account, client address): LOGIN_PAIR_MAX failures per window -> 429
 *    for that pair only;
 *  - per client address, any account: LOGIN_IP_MAX failures -> 429 for that
 *    address (it stops one address spraying many accounts);
 *  - per account, any address: never refuses; each failure beyond
 *    LOGIN_ACCT_FREE adds LOGIN_DELAY_STEP_MS of delay before the next attempt
 *    is answered, capped at LOGIN_DELAY_MAX_MS (the login job sleeps on the
 *    pool, never on the loop). */
#define LOGIN_PAIR_MAX 5
#define LOGIN_IP_MAX 20
#define LOGIN_ACCT_COUNT_MAX 100000u /* counting only: never reached as a refusal */
#define LOGIN_ACCT_FREE 5
#define LOGIN_DELAY_STEP_MS 250
#define LOGIN_DELAY_MAX_MS 3000

static int login_key(const char *ns, const char *ip, const char *email, char *key, size_t keylen)
{
	int n = snprintf(key, keylen, "%s%s%s", ns, ip ? ip : "", ip && email ? "|" : "");
	if (n < 0 || (size_t)n >= keylen)
		n = (int)keylen - 1;
	for (const char *p = email; p && *p && (size_t)n + 1 < keylen; p++)
		key[n++] = (char)tolower((unsigned char)*p);
	key[n] = '\0';
	return n;
}

static int login_peek(const char *key, int kl, uint32_t limit, int64_t *retry_after_s)
{
	struct rl_result r;
	if (rl_peek(g_rl, key, (size_t)kl, now_ms(), limit, &r) == 0) {
		int64_t s = (int64_t)((r.reset_ms + 999) / 1000);
		if (s > *retry_after_s)
			*retry_after_s = s;
		return 1;
	}
	return 0;
}

int authmw_login_blocked(const char *email, const char *ip, int64_t *retry_after_s)
{
	if (!g_rl)
		return 0;
	char key[320];
	int blocked = 0;
	*retry_after_s = 0;
	int kl = login_key("lfp:", ip, email, key, sizeof(key));
	blocked |= login_peek(key, kl, LOGIN_PAIR_MAX, retry_after_s);
	kl = login_key("lfi:", ip, NULL, key, sizeof(key));
	blocked |= login_peek(key, kl, LOGIN_IP_MAX, retry_after_s);
	return blocked;
}

unsigned authmw_login_delay_ms(const char *email)
{
	if (!g_rl)
		return 0;
	char key[320];
	int kl = login_key("lfa:", NULL, email, key, sizeof(key));
	struct rl_result r;
	if (rl_peek(g_rl, key, (size_t)kl, now_ms(), LOGIN_ACCT_COUNT_MAX, &r) < 0 || r.reset_ms == 0)
		return 0;
	uint32_t fails = r.limit > r.remaining ? r.limit - r.remaining : 0;
	if (fails <= LOGIN_ACCT_FREE)
		return 0;
	uint64_t d = (uint64_t)(fails - LOGIN_ACCT_FREE) * LOGIN_DELAY_STEP_MS;
	return d > LOGIN_DELAY_MAX_MS ? LOGIN_DELAY_MAX_MS : (unsigned)d;
}

void authmw_login_failed(const char *email, const char *ip)
{
	if (!g_rl)
		return;
	char key[320];
	uint64_t now = now_ms();
	int kl = login_key("lfp:", ip, email, key, sizeof(key));
	rl_hit(g_rl, key, (size_t)kl, now, LOGIN_PAIR_MAX, LOGIN_FAIL_WINDOW_MS, NULL);
	kl = login_key("lfi:", ip, NULL, key, sizeof(key));
	rl_hit(g_rl, key, (size_t)kl, now, LOGIN_IP_MAX, LOGIN_FAIL_WINDOW_MS, NULL);
	kl = login_key("lfa:", NULL, email, key, sizeof(key));
	rl_hit(g_rl, key, (size_t)kl, now, LOGIN_ACCT_COUNT_MAX, LOGIN_FAIL_WINDOW_MS, NULL);
}

void authmw_login_succeeded(const char *email, const char *ip)
{
	if (!g_rl)
		return;
	/* Only this pair is forgiven: the address's and the account's counts
	 * stay, so a success cannot launder an attacker's failures. */
	char key[320];
	int kl = login_key("lfp:", ip, email, key, sizeof(key));
	rl_reset(g_rl, key, (size_t)kl);
}
