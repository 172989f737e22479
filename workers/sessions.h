/* sessions.h - refresh-token sessions (SPEC section 6, "Sessions").
 *
 * A session family starts at register/login (or a password change) and is
 * named by a 24-hex id that access tokens carry as their "sid" claim. Each
 * refresh token is one document of the sessions collection (only its hash
 * is stored); refreshing spends it and adds the next one to the family.
 * A family is revoked when any of its documents is marked revoked.
 *
 * Every function but session_token_new runs on a pool thread inside a route
 * job's work() (api.h) and records its HTTP failure in the job.
 */
#ifndef RESIL_SESSIONS_H
#define RESIL_SESSIONS_H

#include "api.h"

#include <bson/bson.h>
#include <stdint.h>

#define SESSION_TOKEN_MAX 48 /* base64url of 32 bytes (43) + NUL */

/* A freshly issued refresh token and the family it belongs to. */
struct session_new {
	char token[SESSION_TOKEN_MAX]; /* the secret: sent once, never stored or logged */
	char family[25];
};

/* Start a new family for user; 0, or -1 with the failure recorded. */
int session_create(struct api_job *j, const bson_oid_t *user, int64_t lifetime_s, struct session_new *out);
/* Spend the presented refresh token and issue the next one of its family.
 * 0 with *user the stored user document (caller owns; active) and out
 * filled; -1 with the failure recorded: 401 for an unknown, expired,
 * revoked or spent token (a spent one revokes its family first, and
 * *reused is set), or the store's error. */
int session_rotate(struct api_job *j, const char *token, size_t len, int64_t lifetime_s, bson_t **user,
                   struct session_new *out, bool *reused);
/* Mark every session of the family revoked. 0 or -1 (recorded). */
int session_revoke_family(struct api_job *j, const char *family);
/* Revoke every live session of the user. 0 or -1 (recorded). */
int session_revoke_user(struct api_job *j, const bson_oid_t *user);
/* Wall-clock "now" truncated to the second, in ms: the value stored as a
 * user's tokensValidAfter (access tokens whose iat is before it are
 * refused; see authmw.c). */
int64_t session_valid_after_now(void);

#endif
