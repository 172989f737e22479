/* auth.c - argon2id password hashes and HS256 JWTs with libsodium (SPEC §6).
 *
 * Drop-in for the Node app (issue 15): bcrypt hashes it stored ("$2a$",
 * "$2b$", "$2y$", bcryptjs) verify through libxcrypt's crypt_rn and always
 * report needs_rehash, so the caller moves them to argon2id on the first
 * successful login; its tokens ({userId, email, iat, exp}) verify like ours.
 *
 * Equal timing across the two hash families: once a process knows that bcrypt
 * hashes exist (it verified one, or auth_expect_bcrypt() said so), every
 * verify costs one argon2id verify plus one bcrypt of the highest cost seen:
 * an argon2id verify adds a dummy bcrypt, a bcrypt verify adds a dummy
 * argon2id verify, and auth_dummy_verify (unknown e-mail) does both. So an
 * unknown user, a migrated user and a not yet migrated user cost the same.
 * Before that point only argon2id runs (and bcrypt hashes cost more).
 *
 * Tokens are signed with HMAC-SHA256 over "b64url(header).b64url(payload)".
 * jwt_verify trusts nothing before the signature: it checks the shape, then
 * the header's alg (a fast path compares the header segment with the one we
 * issue), then the MAC in constant time, and only then parses the claims.
 * Base64url is libsodium's strict no-padding variant (no '=', no whitespace,
 * no characters outside the alphabet, no stray bits), so every token has
 * exactly one spelling.
 */
#include "auth.h"

#include <crypt.h>
#include <errno.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

_Static_assert(AUTH_HASH_MAX == crypto_pwhash_STRBYTES, "AUTH_HASH_MAX must match libsodium");

#define PW_OPS crypto_pwhash_OPSLIMIT_INTERACTIVE
#define PW_MEM crypto_pwhash_MEMLIMIT_INTERACTIVE
#define PW_ALG crypto_pwhash_ALG_ARGON2ID13
#define PREFIX_ID "$argon2id$"
#define PREFIX_I "$argon2i$"

/* bcrypt: "$2b$" cost "$" then 22 characters of salt and 31 of hash. */
#define BCRYPT_LEN 60
#define BCRYPT_COST_MIN 4
#define BCRYPT_COST_MAX 31
#define BCRYPT_KEY_MAX 72 /* bcrypt (and bcryptjs) use at most 72 bytes */

#define B64URL sodium_base64_VARIANT_URLSAFE_NO_PADDING
#define MAC_LEN crypto_auth_hmacsha256_BYTES
#define SIG_B64_LEN 43                /* 32 bytes without padding */
#define SEG_BUF (JWT_MAX / 4 * 3 + 1) /* any decoded segment, plus a NUL */
#define HEADER_MEMBERS_MAX 16
#define PAYLOAD_MEMBERS_MAX 32

/* base64url('{"alg":"HS256","typ":"JWT"}'), the only header we issue. */
static const char header_b64[] = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
#define HEADER_B64_LEN (sizeof header_b64 - 1)

int auth_init(void)
{
	return sodium_init() < 0 ? -1 : 0;
}

/* ---- passwords -------------------------------------------------------- */

/* A hash string must end inside AUTH_HASH_MAX bytes. */
static int hash_terminated(const char *hash)
{
	return hash && strnlen(hash, AUTH_HASH_MAX) < AUTH_HASH_MAX;
}

static int has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int is_bcrypt64(char ch)
{
	return ch == '.' || ch == '/' || (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
	       (ch >= '0' && ch <= '9');
}

/* The cost of a well-formed bcrypt hash ("$2a$", "$2b$" or "$2y$", a two-digit
 * cost, 53 characters of salt and hash), or 0 when hash is anything else. */
static int bcrypt_cost(const char *hash)
{
	int cost;

	if (strnlen(hash, BCRYPT_LEN + 1) != BCRYPT_LEN || hash[0] != '$' || hash[1] != '2' ||
	    (hash[2] != 'a' && hash[2] != 'b' && hash[2] != 'y') || hash[3] != '$' || hash[6] != '$')
		return 0;
	if (hash[4] < '0' || hash[4] > '9' || hash[5] < '0' || hash[5] > '9')
		return 0;
	cost = (hash[4] - '0') * 10 + (hash[5] - '0');
	if (cost < BCRYPT_COST_MIN || cost > BCRYPT_COST_MAX)
		return 0;
	for (int i = 7; i < BCRYPT_LEN; i++)
		if (!is_bcrypt64(hash[i]))
			return 0;
	return cost;
}

/* Highest bcrypt cost verified (or announced) in this process, 0 for none. */
static atomic_int bcrypt_seen;

static void bcrypt_note(int cost)
{
	int cur = atomic_load(&bcrypt_seen);

	while (cur < cost && !atomic_compare_exchange_weak(&bcrypt_seen, &cur, cost))
		;
}

/* crypt_rn over pw[0..len) (at most BCRYPT_KEY_MAX bytes count, as in bcrypt
 * itself) with setting; 1 when the result equals expect (NULL: never), 0 when
 * not, -1 when libxcrypt fails. A password with a NUL byte never matches: the
 * C string crypt sees would be a shorter password. */
static int bcrypt_run(const char *setting, const char *pw, size_t len, const char *expect)
{
	char key[BCRYPT_KEY_MAX + 1];
	struct crypt_data *cd;
	const char *out;
	int r = -1;

	if (len > BCRYPT_KEY_MAX)
		len = BCRYPT_KEY_MAX;
	memcpy(key, pw, len);
	key[len] = '\0';
	cd = calloc(1, sizeof *cd); /* 32 KiB: too big for a pool thread's stack */
	if (cd) {
		out = crypt_rn(key, setting, cd, (int)sizeof *cd);
		if (out && out[0] != '*') {
			r = expect && strlen(out) == strlen(expect) &&
			    sodium_memcmp(out, expect, strlen(expect)) == 0 && !memchr(pw, '\0', len);
		}
		sodium_memzero(cd, sizeof *cd);
		free(cd);
	}
	sodium_memzero(key, sizeof key);
	return r;
}

/* Spend one bcrypt of the highest cost seen, if any (timing padding). */
static void bcrypt_pad(const char *pw, size_t len)
{
	char setting[CRYPT_GENSALT_OUTPUT_SIZE];
	unsigned char salt[16];
	int cost = atomic_load(&bcrypt_seen);

	if (cost == 0)
		return;
	randombytes_buf(salt, sizeof salt);
	if (crypt_gensalt_rn("$2b$", (unsigned long)cost, (const char *)salt, (int)sizeof salt, setting,
	                     (int)sizeof setting))
		(void)bcrypt_run(setting, pw, len, NULL);
	sodium_memzero(salt, sizeof salt);
}

int auth_password_hash(const char *pw, size_t len, char out[AUTH_HASH_MAX])
{
	if (!out || (!pw && len))
		return -1;
	return crypto_pwhash_str_alg(out, pw ? pw : "", len, PW_OPS, PW_MEM, PW_ALG) == 0 ? 0 : -1;
}

static void argon2_pad(const char *pw, size_t len);

int auth_password_verify(const char *hash, const char *pw, size_t len)
{
	int cost, r;

	if (!hash_terminated(hash) || (!pw && len))
		return -1;
	if (!pw)
		pw = "";
	if ((cost = bcrypt_cost(hash)) > 0) {
		r = bcrypt_run(hash, pw, len, hash);
		if (r >= 0) {
			bcrypt_note(cost);
			argon2_pad(pw, len);
		}
		return r;
	}
	if (!has_prefix(hash, PREFIX_ID) && !has_prefix(hash, PREFIX_I))
		return -1;
	/* libsodium returns -1 for both a mismatch and a failure; only a
	 * mismatch sets errno to EINVAL. */
	errno = 0;
	if (crypto_pwhash_str_verify(hash, pw, len) == 0)
		r = 1;
	else
		r = errno == EINVAL ? 0 : -1;
	if (r >= 0)
		bcrypt_pad(pw, len);
	return r;
}

int auth_password_needs_rehash(const char *hash)
{
	int r;

	if (!hash_terminated(hash))
		return -1;
	if (bcrypt_cost(hash) > 0)
		return 1; /* every bcrypt hash moves to argon2id */
	if (has_prefix(hash, PREFIX_ID))
		r = crypto_pwhash_argon2id_str_needs_rehash(hash, PW_OPS, PW_MEM);
	else if (has_prefix(hash, PREFIX_I))
		r = crypto_pwhash_argon2i_str_needs_rehash(hash, PW_OPS, PW_MEM) < 0 ? -1 : 1;
	else
		return -1;
	return r < 0 ? -1 : r > 0;
}

int auth_is_bcrypt_hash(const char *hash)
{
	return hash_terminated(hash) && bcrypt_cost(hash) > 0;
}

int auth_expect_bcrypt(int cost)
{
	if (cost < BCRYPT_COST_MIN || cost > BCRYPT_COST_MAX)
		return -1;
	bcrypt_note(cost);
	return 0;
}

int auth_bcrypt_padding_cost(void)
{
	return atomic_load(&bcrypt_seen);
}

static pthread_once_t dummy_once = PTHREAD_ONCE_INIT;
static char dummy_hash[AUTH_HASH_MAX];
static int dummy_ready;

static void dummy_make(void)
{
	unsigned char pw[16];

	randombytes_buf(pw, sizeof pw);
	dummy_ready = crypto_pwhash_str_alg(dummy_hash, (const char *)pw, sizeof pw, PW_OPS, PW_MEM, PW_ALG) == 0;
	sodium_memzero(pw, sizeof pw);
}

/* Spend the time of one argon2id verify with the current limits. */
static void argon2_pad(const char *pw, size_t len)
{
	char tmp[AUTH_HASH_MAX];
	int r;

	if (pthread_once(&dummy_once, dummy_make) == 0 && dummy_ready) {
		r = crypto_pwhash_str_verify(dummy_hash, pw, len);
	} else {
		/* No dummy hash (out of memory when it was made): hashing with the
		 * same limits costs the same as verifying. */
		r = crypto_pwhash_str_alg(tmp, pw, len, PW_OPS, PW_MEM, PW_ALG);
		sodium_memzero(tmp, sizeof tmp);
	}
	(void)r;
}

void auth_dummy_verify(const char *pw, size_t len)
{
	if (!pw) {
		pw = "";
		len = 0;
	}
	argon2_pad(pw, len);
	bcrypt_pad(pw, len);
}

/* ---- JWT helpers ------------------------------------------------------ */

static int is_hex24(const char *s, size_t n)
{
	size_t i;

	if (n != 24)
		return 0;
	for (i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return 1;
}

/* A role is the application's word for it: 1-15 bytes of [a-z_]. */
static int role_ok(const char *s)
{
	size_t n = 0;
	for (; s[n]; n++)
		if (n >= 15 || !((s[n] >= 'a' && s[n] <= 'z') || s[n] == '_'))
			return 0;
	return n > 0;
}

static int hmac(const unsigned char *key, size_t keylen, const char *msg, size_t len, unsigned char mac[MAC_LEN])
{
	crypto_auth_hmacsha256_state st;
	int rc = 0;

	if (crypto_auth_hmacsha256_init(&st, key, keylen) != 0 ||
	    crypto_auth_hmacsha256_update(&st, (const unsigned char *)msg, len) != 0 ||
	    crypto_auth_hmacsha256_final(&st, mac) != 0)
		rc = -1;
	sodium_memzero(&st, sizeof st);
	return rc;
}

/* JSON text that yajl_tree would accept but RFC 8259 does not, or that would
 * hide bytes behind a NUL: comments (a '/' outside strings) and \u0000. */
static int json_text_suspicious(const unsigned char *s, size_t n)
{
	int in_str = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		if (!in_str) {
			if (s[i] == '/')
				return 1;
			in_str = s[i] == '"';
		} else if (s[i] == '\\') {
			if (i + 5 < n && s[i + 1] == 'u' && memcmp(s + i + 2, "0000", 4) == 0)
				return 1;
			i++;
		} else if (s[i] == '"') {
			in_str = 0;
		}
	}
	return 0;
}

static yajl_val member(yajl_val obj, const char *name)
{
	size_t i;

	for (i = 0; i < obj->u.object.len; i++)
		if (strcmp(obj->u.object.keys[i], name) == 0)
			return obj->u.object.values[i];
	return NULL;
}

/* Decode a base64url segment holding one JSON object with at most max_members
 * distinct keys; NULL when it is anything else. Caller frees with yajl_tree_free. */
static yajl_val parse_segment(const char *s, size_t n, unsigned char buf[SEG_BUF], size_t max_members)
{
	yajl_val v;
	size_t len, i, j;

	if (sodium_base642bin(buf, SEG_BUF - 1, s, n, NULL, &len, NULL, B64URL) != 0)
		return NULL;
	if (memchr(buf, '\0', len) || json_text_suspicious(buf, len))
		return NULL;
	buf[len] = '\0';
	v = yajl_tree_parse((const char *)buf, NULL, 0);
	if (!v)
		return NULL;
	if (!YAJL_IS_OBJECT(v) || v->u.object.len > max_members)
		goto bad;
	for (i = 1; i < v->u.object.len; i++)
		for (j = 0; j < i; j++)
			if (strcmp(v->u.object.keys[i], v->u.object.keys[j]) == 0)
				goto bad;
	return v;
bad:
	yajl_tree_free(v);
	return NULL;
}

static enum jwt_result check_header(const char *s, size_t n, unsigned char buf[SEG_BUF])
{
	yajl_val h, alg, typ;
	enum jwt_result r = JWT_OK;

	if (n == HEADER_B64_LEN && memcmp(s, header_b64, n) == 0)
		return JWT_OK;
	h = parse_segment(s, n, buf, HEADER_MEMBERS_MAX);
	if (!h)
		return JWT_MALFORMED;
	alg = member(h, "alg");
	typ = member(h, "typ");
	if (!YAJL_IS_STRING(alg) || strcmp(alg->u.string, "HS256") != 0)
		r = JWT_BAD_ALG;
	else if (typ && (!YAJL_IS_STRING(typ) || strcmp(typ->u.string, "JWT") != 0))
		r = JWT_BAD_ALG;
	else if (member(h, "crit"))
		r = JWT_BAD_ALG; /* we understand no extensions */
	yajl_tree_free(h);
	return r;
}

static int read_time(yajl_val v, int64_t *out)
{
	if (!YAJL_IS_INTEGER(v) || YAJL_GET_INTEGER(v) < 0)
		return -1;
	*out = YAJL_GET_INTEGER(v);
	return 0;
}

/* Copy and validate the claims; nbf is 0 when absent. A token carries either
 * resil's claims (sub, email, role) or the Node app's (userId, email: its
 * jwt.sign({userId, email}, secret)); both "sub" and "userId" is ambiguous. */
static int read_claims(yajl_val p, struct jwt_claims *c, int64_t *nbf)
{
	yajl_val sub = member(p, "sub"), uid = member(p, "userId"), email = member(p, "email");
	yajl_val role = member(p, "role");
	yajl_val v;
	size_t n;

	if ((sub != NULL) == (uid != NULL))
		return -1;
	c->issuer = sub ? JWT_ISSUER_RESIL : JWT_ISSUER_NODE;
	if (!sub)
		sub = uid;
	if (!YAJL_IS_STRING(sub) || !is_hex24(sub->u.string, strlen(sub->u.string)))
		return -1;
	if (!YAJL_IS_STRING(email) || (n = strlen(email->u.string)) >= sizeof c->email)
		return -1;
	if (c->issuer == JWT_ISSUER_RESIL) {
		if (!YAJL_IS_STRING(role) || !role_ok(role->u.string))
			return -1;
		memcpy(c->role, role->u.string, strlen(role->u.string) + 1); /* a role word (role_ok) */
	} /* a role in a Node token is not trusted: the user record has the role */
	if (read_time(member(p, "iat"), &c->iat) || read_time(member(p, "exp"), &c->exp))
		return -1;
	*nbf = 0;
	if ((v = member(p, "nbf")) && read_time(v, nbf))
		return -1;
	/* sid is optional (tokens issued before sessions, the Node app's):
	 * when present it must be a 24-hex session id. */
	if ((v = member(p, "sid"))) {
		if (!YAJL_IS_STRING(v) || !is_hex24(v->u.string, strlen(v->u.string)))
			return -1;
		memcpy(c->sid, v->u.string, 25);
	}
	memcpy(c->sub, sub->u.string, 25);
	memcpy(c->email, email->u.string, n + 1);
	return 0;
}

static int64_t add_sat(int64_t a, int64_t b)
{
	return a > INT64_MAX - b ? INT64_MAX : a + b;
}

/* ---- JWT -------------------------------------------------------------- */

static int gen_key(yajl_gen g, const char *k)
{
	return yajl_gen_string(g, (const unsigned char *)k, strlen(k)) == yajl_gen_status_ok ? 0 : -1;
}

static int gen_str(yajl_gen g, const char *k, const char *v, size_t vlen)
{
	if (gen_key(g, k))
		return -1;
	return yajl_gen_string(g, (const unsigned char *)v, vlen) == yajl_gen_status_ok ? 0 : -1;
}

static int gen_int(yajl_gen g, const char *k, int64_t v)
{
	if (gen_key(g, k))
		return -1;
	return yajl_gen_integer(g, (long long)v) == yajl_gen_status_ok ? 0 : -1;
}

int jwt_sign(const unsigned char *key, size_t keylen, const struct jwt_claims *c, char *out, size_t outlen)
{
	const unsigned char *json;
	unsigned char mac[MAC_LEN];
	size_t elen, jlen, need, pos, sidlen;
	yajl_gen g;
	int rc = -1;

	if (!out || outlen == 0)
		return -1;
	out[0] = '\0';
	if (!key || keylen < JWT_KEY_MIN || !c)
		return -1;
	if (strnlen(c->sub, sizeof c->sub) != 24 || !is_hex24(c->sub, 24))
		return -1;
	if ((elen = strnlen(c->email, sizeof c->email)) == sizeof c->email)
		return -1;
	if (strnlen(c->role, sizeof c->role) == sizeof c->role || !role_ok(c->role))
		return -1;
	if (c->iat < 0 || c->exp < 0)
		return -1;
	sidlen = strnlen(c->sid, sizeof c->sid);
	if (sidlen != 0 && (sidlen != 24 || !is_hex24(c->sid, 24)))
		return -1;
	if (!(g = yajl_gen_alloc(NULL)))
		return -1;
	if (!yajl_gen_config(g, yajl_gen_validate_utf8, 1) || yajl_gen_map_open(g) != yajl_gen_status_ok ||
	    gen_str(g, "sub", c->sub, 24) || gen_str(g, "email", c->email, elen) ||
	    gen_str(g, "role", c->role, strlen(c->role)) || gen_int(g, "iat", c->iat) || gen_int(g, "exp", c->exp) ||
	    (sidlen && gen_str(g, "sid", c->sid, 24)) || yajl_gen_map_close(g) != yajl_gen_status_ok ||
	    yajl_gen_get_buf(g, &json, &jlen) != yajl_gen_status_ok)
		goto done;
	/* encoded_len counts the NUL */
	need = HEADER_B64_LEN + 1 + (sodium_base64_encoded_len(jlen, B64URL) - 1) + 1 + SIG_B64_LEN;
	if (need > JWT_MAX || need >= outlen)
		goto done;
	memcpy(out, header_b64, HEADER_B64_LEN);
	pos = HEADER_B64_LEN;
	out[pos++] = '.';
	sodium_bin2base64(out + pos, outlen - pos, json, jlen, B64URL);
	pos += strlen(out + pos);
	if (hmac(key, keylen, out, pos, mac))
		goto done;
	out[pos++] = '.';
	sodium_bin2base64(out + pos, outlen - pos, mac, sizeof mac, B64URL);
	rc = 0;
done:
	yajl_gen_free(g);
	if (rc)
		out[0] = '\0';
	return rc;
}

enum jwt_result jwt_verify(const unsigned char *key, size_t keylen, const char *token, size_t len, int64_t now_s,
                           int64_t skew_s, struct jwt_claims *out)
{
	unsigned char buf[SEG_BUF], mac[MAC_LEN];
	const char *d1, *d2, *end;
	struct jwt_claims c;
	enum jwt_result r;
	int64_t nbf;
	yajl_val p;
	size_t siglen;
	int bad;

	if (out)
		memset(out, 0, sizeof *out);
	if (!key || keylen < JWT_KEY_MIN)
		return JWT_BAD_KEY;
	if (!token || len > JWT_MAX)
		return JWT_MALFORMED;
	end = token + len;
	if (!(d1 = memchr(token, '.', len)) || !(d2 = memchr(d1 + 1, '.', (size_t)(end - d1 - 1))) ||
	    memchr(d2 + 1, '.', (size_t)(end - d2 - 1)))
		return JWT_MALFORMED;

	if ((r = check_header(token, (size_t)(d1 - token), buf)) != JWT_OK)
		return r;

	if (sodium_base642bin(buf, sizeof buf, d2 + 1, (size_t)(end - d2 - 1), NULL, &siglen, NULL, B64URL) != 0)
		return JWT_MALFORMED;
	if (siglen != MAC_LEN)
		return JWT_BAD_SIGNATURE;
	if (hmac(key, keylen, token, (size_t)(d2 - token), mac))
		return JWT_BAD_KEY;
	if (sodium_memcmp(mac, buf, MAC_LEN) != 0)
		return JWT_BAD_SIGNATURE;

	if (!(p = parse_segment(d1 + 1, (size_t)(d2 - d1 - 1), buf, PAYLOAD_MEMBERS_MAX)))
		return JWT_MALFORMED;
	memset(&c, 0, sizeof c);
	bad = read_claims(p, &c, &nbf);
	yajl_tree_free(p);
	if (bad)
		return JWT_MALFORMED;

	if (skew_s < 0)
		skew_s = 0;
	if (now_s > add_sat(c.exp, skew_s))
		return JWT_EXPIRED;
	if (c.iat > add_sat(now_s, skew_s) || nbf > add_sat(now_s, skew_s))
		return JWT_NOT_YET_VALID;
	if (out)
		*out = c;
	return JWT_OK;
}

const char *jwt_result_str(enum jwt_result r)
{
	switch (r) {
	case JWT_OK: return "ok";
	case JWT_MALFORMED: return "malformed";
	case JWT_BAD_ALG: return "bad alg";
	case JWT_BAD_SIGNATURE: return "bad signature";
	case JWT_EXPIRED: return "expired";
	case JWT_NOT_YET_VALID: return "not yet valid";
	case JWT_BAD_KEY: return "bad key";
	}
	return "unknown";
}

/* ---- Authorization header --------------------------------------------- */

static int is_token68(unsigned char ch)
{
	return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
	       ch == '.' || ch == '_' || ch == '~' || ch == '+' || ch == '/';
}

int auth_bearer_token(const char *v, size_t len, const char **tok, size_t *toklen)
{
	static const char scheme[] = "bearer";
	size_t i = 0, end = len, j, k;

	if (!v || !tok || !toklen)
		return -1;
	while (i < end && (v[i] == ' ' || v[i] == '\t'))
		i++;
	while (end > i && (v[end - 1] == ' ' || v[end - 1] == '\t'))
		end--;
	if (end - i < sizeof scheme + 1) /* scheme, a space, one character */
		return -1;
	for (k = 0; k < sizeof scheme - 1; k++)
		if ((v[i + k] | 0x20) != scheme[k])
			return -1;
	i += sizeof scheme - 1;
	if (v[i] != ' ')
		return -1;
	while (i < end && v[i] == ' ')
		i++;
	for (j = i; j < end && is_token68((unsigned char)v[j]); j++)
		;
	if (j == i)
		return -1;
	while (j < end && v[j] == '=')
		j++;
	if (j != end)
		return -1;
	*tok = v + i;
	*toklen = end - i;
	return 0;
}
