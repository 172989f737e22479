/* authmw.h - authentication, roles and rate limiting for the reference
 * API (SPEC sections 5 and 6).
 *
 *   app_get(app, "/api/users/me", mw_auth, users_me);
 *   app_get(app, "/api/users", mw_auth, mw_admin, users_list);
 *
 * mw_auth: no token -> 401 UNAUTHORIZED "access token required"; malformed,
 * bad signature, alg other than HS256, expired -> 403 FORBIDDEN; user since
 * deleted or deactivated -> 401. On success auth_principal(req) is the
 * caller: id, username, email and role from the database, not the token.
 */
#ifndef RESIL_AUTHMW_H
#define RESIL_AUTHMW_H

#include "app.h"
#include "auth.h"

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
/* Sign a token for a user document's fields. 0 or -1. */
int authmw_issue_token(const char *user_id, const char *email, const char *role, char *out, size_t outlen);
/* Failed-login limiter per email: 1 if blocked now. */
int authmw_login_blocked(const char *email, int64_t *retry_after_s);
void authmw_login_failed(const char *email);
void authmw_login_succeeded(const char *email);
/* Invalidate cached user lookups in every worker (after a user write). */
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
