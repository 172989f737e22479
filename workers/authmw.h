/* authmw.h - authentication, roles and rate limiting for the reference
 * API (SPEC sections 5 and 6).
 *
 *   app_get(app, "/api/users/me", mw_auth, users_me);
 *   app_get(app, "/api/users", mw_auth, mw_admin, users_list);
 *
 * mw_auth: no token -> 401 UNAUTHORIZED "access token required"; malformed,
 * bad signature, alg other than HS256, expired -> 403 FORBIDDEN; user since
 * deleted or deactivated, or the token revoked -> 401. On success auth_principal(req) is the
 * caller: id, username, email and role from the database, not the token.
 *
 * auth_resolve is the one way a token becomes a principal: mw_auth, the
 * WebSocket upgrade and Socket.IO's CONNECT packet all go through it, and
 * differ only in how they answer each outcome.
 */
#ifndef RESIL_AUTHMW_H
#define RESIL_AUTHMW_H

#include "app.h"
#include "auth.h"

#include "store.h"

#include <bson/bson.h>

struct ratelimit;
struct resil_config;

/* The authenticated caller (app_ctx's principal for this application). */
struct principal {
	char id[25]; /* 24 hex digits */
	bson_oid_t oid;
	char username[32];
	char email[256];
	char role[16];
};

/* What a token resolved to. */
enum auth_status {
	AUTH_OK = 0,  /* r->who is the principal */
	AUTH_MISSING, /* no token (HTTP: 401 "access token required") */
	AUTH_INVALID, /* malformed, bad signature, alg other than HS256, expired,
	               * or a subject that is no id (HTTP: 403) */
	AUTH_GONE,    /* the user was deleted or deactivated (401) */
	AUTH_STORE,   /* the user could not be loaded; r->err says why */
	AUTH_PENDING  /* returned only: the user is being loaded, cb follows */
};

struct auth_result {
	enum auth_status status;
	enum store_err err;          /* AUTH_STORE */
	const struct principal *who; /* AUTH_OK */
	const bson_t *doc;           /* AUTH_OK: the stored user document, or NULL */
	bool revoked;                /* AUTH_GONE: the token was revoked (logout, password or role change) */
	char sid[25];                /* the token's session id, "" for none */
};
/* who and doc point into the per-worker user cache: valid only until the
 * loop runs other work (copy what must last). */
typedef void (*auth_cb)(void *ud, const struct auth_result *r);

/* Resolve tok[0..len): verify the HS256 JWT, then find its user in the
 * per-worker cache (a few seconds old at most, dropped in every worker on
 * any user write), loading it through the store on a miss. A token is
 * revoked (AUTH_GONE, r->revoked) when its "sid" session family is revoked
 * (cached the same way, loaded from the sessions collection on a miss) or
 * its iat is before the user's tokensValidAfter.
 *
 * Returns the outcome with *now filled and cb not called, or AUTH_PENDING:
 * cb(ud, r) then runs exactly once, later, on the loop (r valid only
 * during the call), and ud must stay valid until then.
 * req (may be NULL) names the request for the log line and binds the load
 * to it: its deadline bounds the load, and when the deadline passes first
 * (504) or the load cannot be submitted (503) the request is answered here
 * and cb is not called. Without a request the load has its own 10 s
 * deadline, and a load that cannot be submitted is AUTH_STORE. */
enum auth_status auth_resolve(struct http_request *req, const char *tok, size_t len, auth_cb cb, void *ud,
                              struct auth_result *now);

/* The caller mw_auth authenticated, or NULL (anonymous request). */
const struct principal *auth_principal(struct http_request *req);
/* True if the caller is authenticated with role "admin". */
int auth_is_admin(struct http_request *req);

int mw_auth(struct http_request *req);
int mw_admin(struct http_request *req);
/* Role clinician or admin (patient records), else 403. */
int mw_clinician(struct http_request *req);
/* Per-IP limit on /api/ shared by all workers (RateLimit-* headers, 429). */
int mw_rate_limit(struct http_request *req);

/* Set up (worker start): the shared limiter table and the JWT key. */
void authmw_init(struct ratelimit *rl, const struct resil_config *cfg);
/* Sign a token for a user document's fields and session id (NULL: none). 0 or -1. */
int authmw_issue_token(const char *user_id, const char *email, const char *role, const char *sid, char *out,
                       size_t outlen);
/* The session id of the token mw_auth accepted, or NULL (a token without one). */
const char *authmw_session_id(struct http_request *req);
/* Failed-login throttling, shared by all workers. ip is the client address
 * (req->remote_ip). blocked: 1 when the (account, address) pair or the address
 * has too many recent failures (Retry-After in *retry_after_s); the account
 * alone is never refused, only slowed: authmw_login_delay_ms() is how long the
 * login job waits before answering (0..3000 ms). */
int authmw_login_blocked(const char *email, const char *ip, int64_t *retry_after_s);
unsigned authmw_login_delay_ms(const char *email);
void authmw_login_failed(const char *email, const char *ip);
void authmw_login_succeeded(const char *email, const char *ip);
/* Invalidate cached user and session lookups in every worker (after a user
 * write or a session revocation). */
void authmw_users_changed(void);
/* The authenticated user's stored document as mw_auth found it (a cache
 * entry at most a few seconds old, dropped on any user write), or NULL.
 * Valid only synchronously in the handler that directly follows mw_auth:
 * the cache entry may be replaced once the loop runs other requests. */
const bson_t *authmw_user_doc(struct http_request *req);
/* Free the user cache (worker exit). */
void authmw_shutdown(void);
/* The shared limiter (NULL without a supervisor). */
struct ratelimit *authmw_limiter(void);

#endif
