/* auth.h - password hashing (argon2id) and HS256 JSON Web Tokens (SPEC §6).
 *
 * Everything here uses libsodium, plus libxcrypt's crypt_rn for the bcrypt
 * hashes the replaced Node app stored (verify only; see auth.c for how their
 * timing is kept equal to an argon2id verify). The password functions are slow on
 * purpose (tens of milliseconds and 64 MiB each): callers run them on the
 * worker's job pool, never on the event loop. The JWT and Bearer functions are
 * cheap, allocate only inside yajl, and are safe on the event loop.
 * auth_init() must have succeeded (once per process) before any other call.
 */
#ifndef RESIL_AUTH_H
#define RESIL_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define AUTH_HASH_MAX 128 /* crypto_pwhash_STRBYTES: hash string incl. NUL */
#define JWT_KEY_MIN 32    /* shortest HS256 key accepted (SPEC: RESIL_JWT_SECRET) */
#define JWT_MAX 4096      /* longest token jwt_verify accepts; jwt_sign fits in JWT_MAX + 1 */

/* Initialise libsodium; 0 on success, -1 on failure. Idempotent, thread-safe. */
int auth_init(void);

/* Hash pw[0..len) with argon2id (interactive limits) into out (NUL-terminated
 * "$argon2id$..."). 0 on success, -1 on failure (out memory). Blocks: job pool only. */
int auth_password_hash(const char *pw, size_t len, char out[AUTH_HASH_MAX]);

/* Check pw against a stored hash in constant time: 1 match, 0 no match, -1 error
 * (malformed hash, out of memory). The hash is argon2id/argon2i (libsodium) or
 * bcrypt "$2a$"/"$2b$"/"$2y$" as the Node app's bcryptjs wrote it (of pw only
 * the first 72 bytes count there, as in bcrypt; a NUL byte never matches).
 * Blocks: job pool only. */
int auth_password_verify(const char *hash, const char *pw, size_t len);

/* 1 when hash is valid but not argon2id with the current limits (every bcrypt
 * hash: rehash it with auth_password_hash after a successful login), 0 when
 * current, -1 when it is not a password hash. */
int auth_password_needs_rehash(const char *hash);

/* 1 when hash is a well-formed bcrypt hash, 0 otherwise. */
int auth_is_bcrypt_hash(const char *hash);

/* Announce that the database may hold bcrypt hashes of this cost (4-31), e.g.
 * at start on a database the Node app wrote: from then on every verify and
 * auth_dummy_verify also spends a bcrypt of the highest cost announced or
 * verified, so that no login reveals which kind of hash an account has (or
 * whether it exists). A verified bcrypt hash announces its cost by itself.
 * 0 on success, -1 for a cost out of range. Thread-safe. */
int auth_expect_bcrypt(int cost);

/* The bcrypt cost every verify currently spends as padding, 0 for none. */
int auth_bcrypt_padding_cost(void);

/* Spend the time of one auth_password_verify against a fixed dummy hash (made
 * once per process, on first use) so that "unknown email" costs the same as
 * "wrong password". Thread-safe. Blocks: job pool only. */
void auth_dummy_verify(const char *pw, size_t len);

/* Who issued a verified token: resil ({sub, email, role, iat, exp}) or the Node
 * app being replaced ({userId, email, iat, exp}, HS256 with the same secret). */
enum jwt_issuer {
	JWT_ISSUER_RESIL = 0,
	JWT_ISSUER_NODE,
};

struct jwt_claims {
	char sub[25];           /* 24 lower-case hex digits (user id: sub, or the Node app's userId) + NUL */
	char email[256];        /* NUL-terminated, at most 255 bytes of UTF-8 */
	char role[16];          /* a role word (1-15 of [a-z_]); "" in a Node token: the role is the user record's */
	int64_t iat, exp;       /* seconds since the epoch, >= 0 */
	char sid[25];           /* optional session (refresh family) id: 24 lower-case hex digits, or "" for
	                         * none (Node tokens and resil tokens issued before sessions) */
	enum jwt_issuer issuer; /* set by jwt_verify; jwt_sign always issues resil's shape */
};

enum jwt_result {
	JWT_OK = 0,
	JWT_MALFORMED,     /* not header.payload.signature, bad base64url/JSON/claims, > JWT_MAX */
	JWT_BAD_ALG,       /* alg not exactly "HS256", typ not "JWT", or a crit header */
	JWT_BAD_SIGNATURE, /* HMAC mismatch (wrong key or tampered token) */
	JWT_EXPIRED,       /* now > exp + skew */
	JWT_NOT_YET_VALID, /* iat (or nbf) > now + skew */
	JWT_BAD_KEY,       /* server error: key missing or shorter than JWT_KEY_MIN */
};

/* Sign c as an HS256 JWT into out (NUL-terminated); a non-empty c->sid adds a "sid"
 * claim. 0 on success; -1 when the key
 * is shorter than JWT_KEY_MIN, a claim is invalid (sub or sid not 24-hex, role, email not
 * UTF-8 or unterminated, negative times) or outlen is too small (JWT_MAX + 1 always fits). */
int jwt_sign(const unsigned char *key, size_t keylen, const struct jwt_claims *c, char *out, size_t outlen);

/* Verify token[0..len) at time now_s with skew_s seconds of tolerance (negative
 * counts as 0). Checks, in order: shape, alg, signature (constant time), claims,
 * times. Accepts resil's tokens and the Node app's ({userId, email, iat, exp};
 * out->issuer says which, out->sub holds the user id for both). *out is filled
 * only on JWT_OK (zeroed otherwise). */
enum jwt_result jwt_verify(const unsigned char *key, size_t keylen, const char *token, size_t len, int64_t now_s,
                           int64_t skew_s, struct jwt_claims *out);

/* Lower-case name of r ("ok", "malformed", "bad alg", ...), for logs. */
const char *jwt_result_str(enum jwt_result r);

/* Find the token in an Authorization value "Bearer <token68>" (scheme
 * case-insensitive, one or more spaces, surrounding whitespace ignored).
 * 0 and *tok, *toklen point into header_value; -1 for any other shape. */
int auth_bearer_token(const char *header_value, size_t len, const char **tok, size_t *toklen);

#endif
