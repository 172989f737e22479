/* sessions.c - refresh-token sessions (see sessions.h).
 *
 * Document: {tokenHash, parentHash, userId, family, expiresAt, spent,
 * revoked, createdAt}. tokenHash is the BLAKE2b-256 (crypto_generichash)
 * of the token, hex; the token itself (32 random bytes, base64url) is
 * never stored.
 *
 * Spending atomically: the store has no conditional update, and a
 * read-then-write through the write lane would not serialize two workers
 * (each has its own pool) nor MongoDB's several writer threads. So the
 * gate is a unique key instead: the next document of a family carries
 * parentHash = the spent token's hash, and parentHash is unique (a UNIQUE
 * column in SQLite, a unique index in MongoDB). Of two concurrent refreshes
 * of one token exactly one insert succeeds; the other gets DUPLICATE_KEY,
 * which is treated as reuse (the family is revoked). A family's first
 * document gets parentHash "root:<its tokenHash>", unique by construction.
 * The `spent` flag is set after the insert and only speeds detection up.
 */
#include "autoconfig.h"

#include "clock.h"
#include "sessions.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define HASH_HEX 65          /* 32 bytes as hex + NUL */
#define REVOKE_PAGE 100      /* documents marked per FIND */
#define REVOKE_PAGES_MAX 100 /* bound on one revocation's work */

static int64_t wall_ms(void)
{
	return clock_real_ms();
}

int64_t session_valid_after_now(void)
{
	return wall_ms() / 1000 * 1000;
}

static void token_hash(const char *tok, size_t len, char out[HASH_HEX])
{
	unsigned char h[32];
	crypto_generichash(h, sizeof(h), (const unsigned char *)tok, len, NULL, 0);
	sodium_bin2hex(out, HASH_HEX, h, sizeof(h));
}

static void token_new(char out[SESSION_TOKEN_MAX])
{
	unsigned char raw[32];
	randombytes_buf(raw, sizeof(raw));
	sodium_bin2base64(out, SESSION_TOKEN_MAX, raw, sizeof(raw), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	sodium_memzero(raw, sizeof(raw));
}

/* Insert the next document of family (parent: the spent token's hash, or
 * NULL for a new family). Returns the store's error (recorded unless it is
 * DUPLICATE_KEY, which the caller interprets). */
static enum store_err insert_session(struct api_job *j, const bson_oid_t *user, const char *family, const char *parent,
                                     int64_t lifetime_s, struct session_new *out)
{
	char hash[HASH_HEX], parent_buf[HASH_HEX + 5];
	token_new(out->token);
	snprintf(out->family, sizeof(out->family), "%s", family);
	token_hash(out->token, strlen(out->token), hash);
	if (!parent) {
		snprintf(parent_buf, sizeof(parent_buf), "root:%s", hash);
		parent = parent_buf;
	}
	struct store_op op;
	store_op_init(&op, STORE_OP_INSERT, COLL_SESSIONS);
	op.doc = BCON_NEW("tokenHash", BCON_UTF8(hash), "parentHash", BCON_UTF8(parent), "userId", BCON_OID(user),
	                  "family", BCON_UTF8(family), "expiresAt", BCON_DATE_TIME(wall_ms() + lifetime_s * 1000),
	                  "spent", BCON_BOOL(false), "revoked", BCON_BOOL(false));
	enum store_err err;
	if (!op.doc) {
		api_job_fail(j, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		err = STORE_INTERNAL;
	} else if ((err = api_exec(j, &op)) != STORE_OK && err != STORE_DUPLICATE_KEY) {
		j->err = err;
	}
	store_op_clear(&op);
	if (err != STORE_OK)
		sodium_memzero(out->token, sizeof(out->token));
	return err;
}

int session_create(struct api_job *j, const bson_oid_t *user, int64_t lifetime_s, struct session_new *out)
{
	bson_oid_t fam;
	char family[25];
	bson_oid_init(&fam, NULL);
	store_id_format(&fam, family);
	enum store_err err = insert_session(j, user, family, NULL, lifetime_s, out);
	if (err == STORE_DUPLICATE_KEY) /* 256 random bits collided: a bug */
		return api_job_fail(j, 500, "INTERNAL", "internal server error");
	return err == STORE_OK ? 0 : -1;
}

/* Mark up to REVOKE_PAGES_MAX pages of documents matching the filter built
 * by add (plus revoked == false) as revoked. */
static int revoke_where(struct api_job *j, int (*add)(struct store_filter *f, const void *arg), const void *arg)
{
	for (int page = 0; page < REVOKE_PAGES_MAX; page++) {
		struct store_op op;
		store_op_init(&op, STORE_OP_FIND, COLL_SESSIONS);
		if (add(&op.filter, arg) < 0 || store_filter_bool(&op.filter, "revoked", STORE_EQ, false) < 0) {
			store_op_clear(&op);
			return api_job_fail(j, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		}
		store_filter_page(&op.filter, 0, REVOKE_PAGE);
		if (api_run(j, &op) < 0) {
			store_op_clear(&op);
			return -1;
		}
		size_t n = op.ndocs;
		for (size_t i = 0; i < n; i++) {
			struct store_op up;
			store_op_init(&up, STORE_OP_UPDATE_BY_ID, COLL_SESSIONS);
			if (api_doc_oid(op.docs[i], "_id", &up.id) < 0 ||
			    !(up.doc = BCON_NEW("revoked", BCON_BOOL(true)))) {
				store_op_clear(&up);
				continue;
			}
			enum store_err err = api_exec(j, &up);
			store_op_clear(&up);
			if (err != STORE_OK && err != STORE_NOT_FOUND) {
				j->err = err;
				store_op_clear(&op);
				return -1;
			}
		}
		store_op_clear(&op);
		if (n < REVOKE_PAGE)
			return 0;
	}
	return 0;
}

static int by_family(struct store_filter *f, const void *arg)
{
	return store_filter_str(f, "family", STORE_EQ, arg);
}

static int live_of_user(struct store_filter *f, const void *arg)
{
	if (store_filter_oid(f, "userId", STORE_EQ, arg) < 0)
		return -1;
	return store_filter_bool(f, "spent", STORE_EQ, false);
}

int session_revoke_family(struct api_job *j, const char *family)
{
	return revoke_where(j, by_family, family);
}

int session_revoke_user(struct api_job *j, const bson_oid_t *user)
{
	return revoke_where(j, live_of_user, user);
}

static int64_t doc_date(const bson_t *doc, const char *field)
{
	bson_iter_t it;
	if (bson_iter_init_find(&it, doc, field) && BSON_ITER_HOLDS_DATE_TIME(&it))
		return bson_iter_date_time(&it);
	return 0;
}

static int refuse(struct api_job *j)
{
	return api_job_fail(j, 401, "UNAUTHORIZED", "invalid or expired refresh token");
}

int session_rotate(struct api_job *j, const char *token, size_t len, int64_t lifetime_s, bson_t **user,
                   struct session_new *out, bool *reused)
{
	char hash[HASH_HEX], family[25];
	bson_oid_t uid, sid;
	int rc = -1;
	*user = NULL;
	*reused = false;
	token_hash(token, len, hash);
	struct store_op op;
	store_op_init(&op, STORE_OP_FIND_ONE, COLL_SESSIONS);
	if (store_filter_str(&op.filter, "tokenHash", STORE_EQ, hash) < 0) {
		api_job_fail(j, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		goto out;
	}
	enum store_err err = api_exec(j, &op);
	if (err == STORE_NOT_FOUND) {
		refuse(j);
		goto out;
	}
	if (err != STORE_OK) {
		j->err = err;
		goto out;
	}
	const char *fam = api_doc_str(op.result, "family");
	if (!fam || strlen(fam) != 24 || api_doc_oid(op.result, "userId", &uid) < 0 ||
	    api_doc_oid(op.result, "_id", &sid) < 0) {
		refuse(j);
		goto out;
	}
	memcpy(family, fam, 25);
	if (api_doc_bool(op.result, "revoked", 0) || doc_date(op.result, "expiresAt") <= wall_ms()) {
		refuse(j);
		goto out;
	}
	if (api_doc_bool(op.result, "spent", 0)) {
		*reused = true;
		if (session_revoke_family(j, family) == 0)
			refuse(j);
		goto out;
	}
	err = insert_session(j, &uid, family, hash, lifetime_s, out);
	if (err == STORE_DUPLICATE_KEY) { /* a concurrent refresh spent it first */
		*reused = true;
		if (session_revoke_family(j, family) == 0)
			refuse(j);
		goto out;
	}
	if (err != STORE_OK)
		goto out;
	struct store_op up;
	store_op_init(&up, STORE_OP_UPDATE_BY_ID, COLL_SESSIONS);
	up.id = sid;
	if ((up.doc = BCON_NEW("spent", BCON_BOOL(true))))
		(void)api_exec(j, &up); /* best effort: the unique parentHash already spent it */
	store_op_clear(&up);
	store_op_clear(&op);
	store_op_init(&op, STORE_OP_FIND_BY_ID, COLL_USERS);
	op.id = uid;
	err = api_exec(j, &op);
	if (err == STORE_NOT_FOUND || (err == STORE_OK && !api_doc_bool(op.result, "isActive", 1))) {
		refuse(j);
		goto out;
	}
	if (err != STORE_OK) {
		j->err = err;
		goto out;
	}
	*user = op.result;
	op.result = NULL;
	rc = 0;
out:
	if (rc < 0)
		sodium_memzero(out->token, sizeof(out->token));
	store_op_clear(&op);
	return rc;
}
