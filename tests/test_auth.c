/* test_auth.c - unit tests for src/auth.c: argon2id password hashes, HS256 JWT
 * signing and verification (including the usual attacks on JWT verifiers),
 * and Bearer header parsing. Drop-in for the Node app: bcrypt hashes (one
 * made by bcryptjs, others by libxcrypt here) and tokens signed by npm
 * jsonwebtoken, embedded once (tests/mongoose has both packages).
 */
#include "../src/auth.h"

#include <check.h>
#include <crypt.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define B64URL sodium_base64_VARIANT_URLSAFE_NO_PADDING
#define NOW 1700000000
#define HDR "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
#define SUB "5f1d7a3b9c2e4d6f8a0b1c2d"

static const unsigned char KEY[] = "0123456789abcdef0123456789abcdef"; /* 32 bytes + NUL */
#define KEYLEN ((size_t)32)

/* ---- helpers ---------------------------------------------------------- */

static void setup(void)
{
	ck_assert_int_eq(auth_init(), 0);
}

static struct jwt_claims claims(const char *role)
{
	struct jwt_claims c;

	memset(&c, 0, sizeof c);
	memcpy(c.sub, SUB, 25);
	snprintf(c.email, sizeof c.email, "%s", "alice@example.com");
	snprintf(c.role, sizeof c.role, "%s", role);
	c.iat = NOW;
	c.exp = NOW + 3600;
	return c;
}

static void sign_ok(const struct jwt_claims *c, char *tok, size_t cap)
{
	ck_assert_int_eq(jwt_sign(KEY, KEYLEN, c, tok, cap), 0);
}

static enum jwt_result verify(const char *tok, struct jwt_claims *out)
{
	return jwt_verify(KEY, KEYLEN, tok, strlen(tok), NOW, 60, out);
}

/* Append base64url(bin) to out at *pos. */
static void put_b64(char *out, size_t cap, size_t *pos, const void *bin, size_t n)
{
	ck_assert_uint_lt(*pos + sodium_base64_encoded_len(n, B64URL), cap);
	sodium_bin2base64(out + *pos, cap - *pos, bin, n, B64URL);
	*pos += strlen(out + *pos);
}

static void hmac(const unsigned char *key, size_t keylen, const char *msg, size_t n, unsigned char mac[32])
{
	crypto_auth_hmacsha256_state st;

	ck_assert_int_eq(crypto_auth_hmacsha256_init(&st, key, keylen), 0);
	ck_assert_int_eq(crypto_auth_hmacsha256_update(&st, (const unsigned char *)msg, n), 0);
	ck_assert_int_eq(crypto_auth_hmacsha256_final(&st, mac), 0);
}

/* Build header.payload.signature from raw JSON texts, signed with key (an
 * empty signature when key is NULL): what an attacker or another issuer does. */
static void forge(char *out, size_t cap, const char *hdr, const char *payload, const unsigned char *key, size_t keylen)
{
	unsigned char mac[32];
	size_t pos = 0;

	put_b64(out, cap, &pos, hdr, strlen(hdr));
	out[pos++] = '.';
	put_b64(out, cap, &pos, payload, strlen(payload));
	if (key)
		hmac(key, keylen, out, pos, mac);
	out[pos++] = '.';
	out[pos] = '\0';
	if (key)
		put_b64(out, cap, &pos, mac, sizeof mac);
}

static const char *payload_json(const char *sub, const char *role, long long iat, long long exp)
{
	static char buf[512];

	snprintf(buf, sizeof buf, "{\"sub\":\"%s\",\"email\":\"a@b.c\",\"role\":\"%s\",\"iat\":%lld,\"exp\":%lld}", sub,
	         role, iat, exp);
	return buf;
}

static enum jwt_result verify_forged(const char *hdr, const char *payload)
{
	char tok[JWT_MAX + 1];

	forge(tok, sizeof tok, hdr, payload, KEY, KEYLEN);
	return verify(tok, NULL);
}

/* Decode segment idx (0, 1, 2) of tok into out (NUL-terminated). */
static size_t segment(const char *tok, int idx, char *out, size_t cap)
{
	const char *s = tok, *e;
	size_t n;

	while (idx-- > 0)
		s = strchr(s, '.') + 1;
	e = strchr(s, '.');
	if (!e)
		e = s + strlen(s);
	ck_assert_int_eq(sodium_base642bin((unsigned char *)out, cap - 1, s, (size_t)(e - s), NULL, &n, NULL, B64URL),
	                 0);
	out[n] = '\0';
	return n;
}

/* ---- passwords -------------------------------------------------------- */

START_TEST(test_password_hash_round_trips)
{
	char h[AUTH_HASH_MAX];

	ck_assert_int_eq(auth_password_hash("correct horse", 13, h), 0);
	ck_assert_int_eq(auth_password_verify(h, "correct horse", 13), 1);
	/* only len bytes count */
	ck_assert_int_eq(auth_password_verify(h, "correct horse battery", 13), 1);
}
END_TEST

START_TEST(test_password_hash_is_argon2id_with_current_limits)
{
	char h[AUTH_HASH_MAX], h2[AUTH_HASH_MAX];

	ck_assert_int_eq(auth_password_hash("s3cret-pass", 11, h), 0);
	ck_assert_int_eq(strncmp(h, "$argon2id$", 10), 0);
	ck_assert_int_eq(auth_password_needs_rehash(h), 0);
	/* salted: the same password never gives the same string */
	ck_assert_int_eq(auth_password_hash("s3cret-pass", 11, h2), 0);
	ck_assert_str_ne(h, h2);
}
END_TEST

START_TEST(test_password_verify_rejects_wrong_password)
{
	char h[AUTH_HASH_MAX];

	ck_assert_int_eq(auth_password_hash("password1", 9, h), 0);
	ck_assert_int_eq(auth_password_verify(h, "password2", 9), 0);
	ck_assert_int_eq(auth_password_verify(h, "password", 8), 0);
	ck_assert_int_eq(auth_password_verify(h, "", 0), 0);
}
END_TEST

START_TEST(test_password_verify_reports_malformed_hashes_as_errors)
{
	char unterminated[AUTH_HASH_MAX];

	memset(unterminated, 'a', sizeof unterminated);
	ck_assert_int_eq(auth_password_verify("plaintext", "plaintext", 9), -1);
	ck_assert_int_eq(auth_password_verify("$argon2id$garbage", "x", 1), -1);
	ck_assert_int_eq(auth_password_verify("$2b$10$abcdefghijklmnopqrstuv", "x", 1), -1);
	ck_assert_int_eq(auth_password_verify(unterminated, "x", 1), -1);
	ck_assert_int_eq(auth_password_verify(NULL, "x", 1), -1);
	ck_assert_int_eq(auth_password_needs_rehash(unterminated), -1);
	ck_assert_int_eq(auth_password_needs_rehash("plaintext"), -1);
	ck_assert_int_eq(auth_password_needs_rehash("$argon2id$garbage"), -1);
}
END_TEST

START_TEST(test_password_needs_rehash_flags_weaker_or_argon2i_hashes)
{
	char weak[AUTH_HASH_MAX], old[AUTH_HASH_MAX];

	ck_assert_int_eq(crypto_pwhash_str_alg(weak, "pw", 2, crypto_pwhash_OPSLIMIT_MIN, crypto_pwhash_MEMLIMIT_MIN,
	                                       crypto_pwhash_ALG_ARGON2ID13),
	                 0);
	ck_assert_int_eq(auth_password_needs_rehash(weak), 1);
	ck_assert_int_eq(auth_password_verify(weak, "pw", 2), 1);
	ck_assert_int_eq(crypto_pwhash_argon2i_str(old, "pw", 2, crypto_pwhash_argon2i_OPSLIMIT_MIN,
	                                           crypto_pwhash_argon2i_MEMLIMIT_MIN),
	                 0);
	ck_assert_int_eq(auth_password_needs_rehash(old), 1);
	ck_assert_int_eq(auth_password_verify(old, "pw", 2), 1);
	ck_assert_int_eq(auth_password_verify(old, "px", 2), 0);
}
END_TEST

static void *dummy_thread(void *arg)
{
	(void)arg;
	auth_dummy_verify("guess", 5);
	return NULL;
}

START_TEST(test_dummy_verify_runs_once_initialised_from_many_threads)
{
	pthread_t t[3];
	int i;

	for (i = 0; i < 3; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, dummy_thread, NULL), 0);
	for (i = 0; i < 3; i++)
		ck_assert_int_eq(pthread_join(t[i], NULL), 0);
	auth_dummy_verify(NULL, 0);
	auth_dummy_verify("another guess", 13);
}
END_TEST

/* ---- passwords: bcrypt from the Node app ------------------------------ */

/* bcryptjs 2.4.3: bcrypt.hashSync("node-password-42", 12), as the Node app's
 * pre-save hook stores it. */
#define BCRYPTJS_HASH "$2a$12$t2mqYNhVeDDDabUOnkWF..0qbCFdp0oz2.GFCfPCTrgsYdPxG769K"
#define BCRYPTJS_PW "node-password-42"

/* A bcrypt hash of pw made by libxcrypt itself with prefix ("$2b$", "$2y$"). */
static void crypt_hash(const char *prefix, unsigned long cost, const char *pw, char out[128])
{
	char setting[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd = calloc(1, sizeof *cd);
	const char *h;

	ck_assert_ptr_nonnull(cd);
	ck_assert_ptr_nonnull(crypt_gensalt_rn(prefix, cost, NULL, 0, setting, (int)sizeof setting));
	h = crypt_rn(pw, setting, cd, (int)sizeof *cd);
	ck_assert_ptr_nonnull(h);
	ck_assert_uint_eq(strlen(h), 60);
	memcpy(out, h, 61);
	free(cd);
}

START_TEST(test_password_verifies_a_bcryptjs_hash_of_cost_12)
{
	ck_assert_int_eq(auth_password_verify(BCRYPTJS_HASH, BCRYPTJS_PW, strlen(BCRYPTJS_PW)), 1);
	ck_assert_int_eq(auth_password_verify(BCRYPTJS_HASH, "node-password-43", 16), 0);
	ck_assert_int_eq(auth_password_verify(BCRYPTJS_HASH, BCRYPTJS_PW, strlen(BCRYPTJS_PW) - 1), 0);
	ck_assert_int_eq(auth_password_needs_rehash(BCRYPTJS_HASH), 1);
	ck_assert_int_eq(auth_is_bcrypt_hash(BCRYPTJS_HASH), 1);
	/* verifying it announced cost 12: every verify now pads with bcrypt 12 */
	ck_assert_int_ge(auth_bcrypt_padding_cost(), 12);
}
END_TEST

START_TEST(test_password_verifies_bcrypt_hashes_made_by_crypt)
{
	char h2b[128], h2y[128], hlong[128];
	char pw72[80], pw73[80];

	crypt_hash("$2b$", 5, "crypt-made pw", h2b);
	ck_assert_int_eq(strncmp(h2b, "$2b$05$", 7), 0);
	ck_assert_int_eq(auth_password_verify(h2b, "crypt-made pw", 13), 1);
	ck_assert_int_eq(auth_password_verify(h2b, "crypt-made pX", 13), 0);
	ck_assert_int_eq(auth_password_verify(h2b, "", 0), 0);
	ck_assert_int_eq(auth_password_needs_rehash(h2b), 1);
	crypt_hash("$2y$", 4, "with $2y$", h2y);
	ck_assert_int_eq(auth_password_verify(h2y, "with $2y$", 9), 1);
	ck_assert_int_eq(auth_password_verify(h2y, "with $2b$", 9), 0);
	/* only len bytes count, and a NUL inside the password never matches
	 * (crypt would see the shorter C string) */
	ck_assert_int_eq(auth_password_verify(h2b, "crypt-made pw and more", 13), 1);
	ck_assert_int_eq(auth_password_verify(h2b, "crypt-made pw\0x", 15), 0);
	/* bcrypt uses 72 bytes: a 73rd byte changes nothing, as in bcryptjs */
	memset(pw72, 'q', 72);
	memcpy(pw73, pw72, 72);
	pw73[72] = 'Z';
	pw72[72] = pw73[73] = '\0';
	crypt_hash("$2b$", 4, pw72, hlong);
	ck_assert_int_eq(auth_password_verify(hlong, pw73, 73), 1);
	ck_assert_int_eq(auth_password_verify(hlong, pw72, 71), 0);
}
END_TEST

START_TEST(test_password_refuses_malformed_bcrypt_hashes)
{
	char h[128];

	crypt_hash("$2b$", 4, "pw", h);
	ck_assert_int_eq(auth_password_verify(h, "pw", 2), 1);
	h[2] = 'x'; /* $2x$: the buggy variant, never written by bcryptjs */
	ck_assert_int_eq(auth_password_verify(h, "pw", 2), -1);
	ck_assert_int_eq(auth_password_needs_rehash(h), -1);
	h[2] = 'b';
	h[59] = '\0'; /* 59 characters */
	ck_assert_int_eq(auth_password_verify(h, "pw", 2), -1);
	ck_assert_int_eq(auth_is_bcrypt_hash(h), 0);
	ck_assert_int_eq(auth_password_verify("$2b$03$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyz01234", "pw", 2),
	                 -1);
	ck_assert_int_eq(auth_password_verify("$2b$1x$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyz01234", "pw", 2),
	                 -1);
	ck_assert_int_eq(auth_password_verify("$2b$04$abcdefghijklmnopqrstu!abcdefghijklmnopqrstuvwxyz01234", "pw", 2),
	                 -1);
	ck_assert_int_eq(auth_password_verify("$2b$04$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyz0123", "pw", 2),
	                 -1);
	ck_assert_int_eq(auth_is_bcrypt_hash(NULL), 0);
}
END_TEST

START_TEST(test_expect_bcrypt_turns_on_padding_for_every_verify)
{
	char h[AUTH_HASH_MAX];
	/* 0 in a fresh process; an earlier test may have verified bcrypt when
	 * check does not fork (CK_FORK=no) */
	int before = auth_bcrypt_padding_cost();

	ck_assert_int_eq(auth_expect_bcrypt(3), -1);
	ck_assert_int_eq(auth_expect_bcrypt(32), -1);
	ck_assert_int_eq(auth_bcrypt_padding_cost(), before);
	ck_assert_int_eq(auth_expect_bcrypt(5), 0);
	ck_assert_int_eq(auth_bcrypt_padding_cost(), before > 5 ? before : 5);
	ck_assert_int_eq(auth_expect_bcrypt(4), 0);
	ck_assert_int_eq(auth_bcrypt_padding_cost(), before > 5 ? before : 5); /* the highest cost stays */
	/* argon2id verifies and the dummy verify still answer the same with padding */
	ck_assert_int_eq(auth_password_hash("padded-pw", 9, h), 0);
	ck_assert_int_eq(auth_password_verify(h, "padded-pw", 9), 1);
	ck_assert_int_eq(auth_password_verify(h, "padded-px", 9), 0);
	auth_dummy_verify("padded-pw", 9);
	auth_dummy_verify(NULL, 0);
}
END_TEST

/* ---- JWT: the happy path ---------------------------------------------- */

START_TEST(test_jwt_sign_verify_round_trips)
{
	struct jwt_claims c = claims("admin"), out;
	char tok[JWT_MAX + 1], seg[JWT_MAX];

	sign_ok(&c, tok, sizeof tok);
	ck_assert_ptr_null(strchr(tok, '='));
	ck_assert_ptr_null(strchr(tok, '+'));
	ck_assert_ptr_null(strchr(tok, '/'));
	segment(tok, 0, seg, sizeof seg);
	ck_assert_str_eq(seg, HDR);
	segment(tok, 1, seg, sizeof seg);
	ck_assert_str_eq(seg, "{\"sub\":\"" SUB "\",\"email\":\"alice@example.com\",\"role\":\"admin\","
	                      "\"iat\":1700000000,\"exp\":1700003600}");

	ck_assert_int_eq(verify(tok, &out), JWT_OK);
	ck_assert_str_eq(out.sub, SUB);
	ck_assert_str_eq(out.email, "alice@example.com");
	ck_assert_str_eq(out.role, "admin");
	ck_assert_int_eq(out.iat, NOW);
	ck_assert_int_eq(out.exp, NOW + 3600);
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, tok, strlen(tok), NOW, 0, NULL), JWT_OK);
}
END_TEST

START_TEST(test_jwt_carries_an_optional_session_id)
{
	struct jwt_claims c = claims("user"), out;
	char tok[JWT_MAX + 1], seg[JWT_MAX];

	memcpy(c.sid, "0123456789abcdef01234567", 25);
	sign_ok(&c, tok, sizeof tok);
	segment(tok, 1, seg, sizeof seg);
	ck_assert_str_eq(seg, "{\"sub\":\"" SUB "\",\"email\":\"alice@example.com\",\"role\":\"user\","
	                      "\"iat\":1700000000,\"exp\":1700003600,\"sid\":\"0123456789abcdef01234567\"}");
	ck_assert_int_eq(verify(tok, &out), JWT_OK);
	ck_assert_str_eq(out.sid, "0123456789abcdef01234567");
	/* Without one (tokens issued before sessions): no claim, "" back. */
	c = claims("user");
	sign_ok(&c, tok, sizeof tok);
	ck_assert_int_eq(verify(tok, &out), JWT_OK);
	ck_assert_str_eq(out.sid, "");
	/* A bad sid is refused on both sides. */
	memcpy(c.sid, "0123456789ABCDEF01234567", 25);
	ck_assert_int_eq(jwt_sign(KEY, KEYLEN, &c, tok, sizeof tok), -1);
	memcpy(c.sid, "0123", 5);
	ck_assert_int_eq(jwt_sign(KEY, KEYLEN, &c, tok, sizeof tok), -1);
	ck_assert_int_eq(verify_forged(HDR, "{\"sub\":\"" SUB "\",\"email\":\"a@b\",\"role\":\"user\",\"iat\":1,"
	                                    "\"exp\":2000000000,\"sid\":\"xyz\"}"),
	                 JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, "{\"sub\":\"" SUB "\",\"email\":\"a@b\",\"role\":\"user\",\"iat\":1,"
	                                    "\"exp\":2000000000,\"sid\":7}"),
	                 JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, "{\"sub\":\"" SUB "\",\"email\":\"a@b\",\"role\":\"user\",\"iat\":1,"
	                                    "\"exp\":2000000000,\"sid\":\"0123456789abcdef01234567\"}"),
	                 JWT_OK);
}
END_TEST

START_TEST(test_jwt_signature_is_hmac_sha256_of_the_first_two_segments)
{
	struct jwt_claims c = claims("user");
	char tok[JWT_MAX + 1], expect[64];
	unsigned char mac[32];
	const char *dot;

	sign_ok(&c, tok, sizeof tok);
	dot = strrchr(tok, '.');
	hmac(KEY, KEYLEN, tok, (size_t)(dot - tok), mac);
	sodium_bin2base64(expect, sizeof expect, mac, sizeof mac, B64URL);
	ck_assert_str_eq(dot + 1, expect);
}
END_TEST

START_TEST(test_jwt_verify_accepts_rfc7515_example_signature)
{
	/* RFC 7515 appendix A.1: another issuer's header layout (slow path) and a
	 * 64-byte key. The signature is right; its claims are not ours. */
	static const char tok[] =
	    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9"
	    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
	    ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
	static const char jwk[] =
	    "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
	unsigned char key[64];
	size_t keylen;

	ck_assert_int_eq(sodium_base642bin(key, sizeof key, jwk, strlen(jwk), NULL, &keylen, NULL, B64URL), 0);
	ck_assert_uint_eq(keylen, 64);
	ck_assert_int_eq(jwt_verify(key, keylen, tok, strlen(tok), 1300819000, 0, NULL), JWT_MALFORMED);
	key[0] ^= 1;
	ck_assert_int_eq(jwt_verify(key, keylen, tok, strlen(tok), 1300819000, 0, NULL), JWT_BAD_SIGNATURE);
}
END_TEST

START_TEST(test_jwt_accepts_reordered_header_and_long_keys)
{
	unsigned char longkey[100];
	char tok[JWT_MAX + 1];
	struct jwt_claims c = claims("user"), out;

	ck_assert_int_eq(verify_forged("{\"typ\":\"JWT\",\"alg\":\"HS256\"}", payload_json(SUB, "user", NOW, NOW + 9)),
	                 JWT_OK);
	ck_assert_int_eq(verify_forged("{\"alg\":\"HS256\",\"kid\":\"k1\"}", payload_json(SUB, "user", NOW, NOW + 9)),
	                 JWT_OK);
	memset(longkey, 0x5a, sizeof longkey);
	ck_assert_int_eq(jwt_sign(longkey, sizeof longkey, &c, tok, sizeof tok), 0);
	ck_assert_int_eq(jwt_verify(longkey, sizeof longkey, tok, strlen(tok), NOW, 0, &out), JWT_OK);
	ck_assert_int_eq(jwt_verify(longkey, 99, tok, strlen(tok), NOW, 0, &out), JWT_BAD_SIGNATURE);
}
END_TEST

START_TEST(test_jwt_escapes_email_as_json)
{
	struct jwt_claims c = claims("user"), out;
	char tok[JWT_MAX + 1], seg[JWT_MAX];
	static const char email[] = "a\"b\\c\x01\xc3\xa9@x.org";

	memcpy(c.email, email, sizeof email);
	sign_ok(&c, tok, sizeof tok);
	segment(tok, 1, seg, sizeof seg);
	ck_assert_ptr_nonnull(strstr(seg, "\"email\":\"a\\\"b\\\\c\\u0001\xc3\xa9@x.org\""));
	ck_assert_int_eq(verify(tok, &out), JWT_OK);
	ck_assert_str_eq(out.email, email);
}
END_TEST

START_TEST(test_jwt_sign_fits_the_longest_email_and_refuses_small_buffers)
{
	struct jwt_claims c = claims("user"), out;
	char tok[JWT_MAX + 1], small[64];

	memset(c.email, 0x01, sizeof c.email - 1); /* worst case: every byte escaped as \u0001 */
	c.email[sizeof c.email - 1] = '\0';
	sign_ok(&c, tok, sizeof tok);
	ck_assert_uint_le(strlen(tok), JWT_MAX);
	ck_assert_int_eq(verify(tok, &out), JWT_OK);
	ck_assert_str_eq(out.email, c.email);

	ck_assert_int_eq(jwt_sign(KEY, KEYLEN, &c, small, sizeof small), -1);
	ck_assert_str_eq(small, "");
	ck_assert_int_eq(jwt_sign(KEY, KEYLEN, &c, tok, strlen(tok)), -1); /* no room for the NUL */
}
END_TEST

START_TEST(test_jwt_sign_refuses_invalid_claims)
{
	struct jwt_claims c;
	char tok[JWT_MAX + 1];

	c = claims("ro ot");
	ck_assert_int_eq(jwt_sign(KEY, KEYLEN, &c, tok, sizeof tok), -1);
	c = claims("");
	ck_assert_int_eq(jwt_sign(KEY, KEYLEN, &c, tok, sizeof tok), -1);
	c = claims("user");
	c.sub[3] = 'G';
	ck_assert_int_eq(jwt_sign(KEY, KEYLEN, &c, tok, sizeof tok), -1);
	c = claims("user");
	c.sub[3] = 'A'; /* ids are lower-case */
	ck_assert_int_eq(jwt_sign(KEY, KEYLEN, &c, tok, sizeof tok), -1);
	c = claims("user");
	c.sub[23] = '\0';
	ck_assert_int_eq(jwt_sign(KEY, KEYLEN, &c, tok, sizeof tok), -1);
	c = claims("user");
	memset(c.email, 'e', sizeof c.email); /* unterminated */
	ck_assert_int_eq(jwt_sign(KEY, KEYLEN, &c, tok, sizeof tok), -1);
	c = claims("user");
	memcpy(c.email, "\xff\xfe@x", 5); /* not UTF-8 */
	ck_assert_int_eq(jwt_sign(KEY, KEYLEN, &c, tok, sizeof tok), -1);
	c = claims("user");
	c.exp = -1;
	ck_assert_int_eq(jwt_sign(KEY, KEYLEN, &c, tok, sizeof tok), -1);
	ck_assert_int_eq(jwt_sign(KEY, KEYLEN, NULL, tok, sizeof tok), -1);
}
END_TEST

START_TEST(test_jwt_refuses_keys_shorter_than_32_bytes)
{
	struct jwt_claims c = claims("user");
	char tok[JWT_MAX + 1];

	ck_assert_int_eq(jwt_sign(KEY, 31, &c, tok, sizeof tok), -1);
	ck_assert_int_eq(jwt_sign(NULL, 32, &c, tok, sizeof tok), -1);
	sign_ok(&c, tok, sizeof tok);
	ck_assert_int_eq(jwt_verify(KEY, 31, tok, strlen(tok), NOW, 0, NULL), JWT_BAD_KEY);
	ck_assert_int_eq(jwt_verify(KEY, 0, tok, strlen(tok), NOW, 0, NULL), JWT_BAD_KEY);
	ck_assert_int_eq(jwt_verify(NULL, 32, tok, strlen(tok), NOW, 0, NULL), JWT_BAD_KEY);
}
END_TEST

/* ---- JWT: shape ------------------------------------------------------- */

START_TEST(test_jwt_rejects_missing_or_extra_segments)
{
	struct jwt_claims c = claims("user"), out;
	char tok[JWT_MAX + 1], buf[JWT_MAX + 8];
	const char *dot;

	sign_ok(&c, tok, sizeof tok);
	ck_assert_int_eq(verify("", &out), JWT_MALFORMED);
	ck_assert_int_eq(verify(".", &out), JWT_MALFORMED);
	ck_assert_int_eq(verify("..", &out), JWT_MALFORMED);
	ck_assert_int_eq(verify("abc", &out), JWT_MALFORMED);
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, NULL, 0, NOW, 0, &out), JWT_MALFORMED);
	dot = strrchr(tok, '.');
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, tok, (size_t)(dot - tok), NOW, 0, &out), JWT_MALFORMED);
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, tok, (size_t)(strchr(tok, '.') - tok), NOW, 0, &out), JWT_MALFORMED);
	snprintf(buf, sizeof buf, "%s.", tok);
	ck_assert_int_eq(verify(buf, &out), JWT_MALFORMED);
	snprintf(buf, sizeof buf, "%s.eyJ9", tok);
	ck_assert_int_eq(verify(buf, &out), JWT_MALFORMED);
	ck_assert_str_eq(out.sub, ""); /* untouched on failure */
}
END_TEST

/* Replace tok's signature with the correct one for its first two segments, so
 * that only the encoding is wrong. */
static void resign(char *tok, size_t cap)
{
	unsigned char mac[32];
	size_t pos = (size_t)(strrchr(tok, '.') - tok);

	hmac(KEY, KEYLEN, tok, pos, mac);
	pos++;
	put_b64(tok, cap, &pos, mac, sizeof mac);
}

START_TEST(test_jwt_rejects_padding_and_characters_outside_base64url)
{
	struct jwt_claims c = claims("user");
	char tok[JWT_MAX + 1], buf[JWT_MAX + 8];
	size_t h, p;

	sign_ok(&c, tok, sizeof tok);
	h = (size_t)(strchr(tok, '.') - tok);
	p = (size_t)(strrchr(tok, '.') - tok);

	snprintf(buf, sizeof buf, "%.*s=%s", (int)h, tok, tok + h); /* header= */
	resign(buf, sizeof buf);
	ck_assert_int_eq(verify(buf, NULL), JWT_MALFORMED);
	snprintf(buf, sizeof buf, "%.*s==%s", (int)p, tok, tok + p); /* payload== */
	resign(buf, sizeof buf);
	ck_assert_int_eq(verify(buf, NULL), JWT_MALFORMED);
	snprintf(buf, sizeof buf, "%s=", tok); /* signature= */
	ck_assert_int_eq(verify(buf, NULL), JWT_MALFORMED);
	snprintf(buf, sizeof buf, "%s ", tok);
	ck_assert_int_eq(verify(buf, NULL), JWT_MALFORMED);
	snprintf(buf, sizeof buf, " %s", tok);
	resign(buf, sizeof buf);
	ck_assert_int_eq(verify(buf, NULL), JWT_MALFORMED);
	snprintf(buf, sizeof buf, "%.*s %s", (int)p, tok, tok + p); /* payload + space */
	resign(buf, sizeof buf);
	ck_assert_int_eq(verify(buf, NULL), JWT_MALFORMED);
	snprintf(buf, sizeof buf, "%s", tok);
	buf[h + 5] = '+'; /* standard base64, not url-safe */
	resign(buf, sizeof buf);
	ck_assert_int_eq(verify(buf, NULL), JWT_MALFORMED);
	snprintf(buf, sizeof buf, "%s", tok);
	buf[3] = '/';
	resign(buf, sizeof buf);
	ck_assert_int_eq(verify(buf, NULL), JWT_MALFORMED);
	snprintf(buf, sizeof buf, "%s", tok);
	buf[p + 3] = '_' == buf[p + 3] ? '-' : '_';
	buf[p + 4] = '\n';
	ck_assert_int_eq(verify(buf, NULL), JWT_MALFORMED);
	/* the final character may not carry stray bits (one spelling per token) */
	snprintf(buf, sizeof buf, "%s", tok);
	buf[strlen(buf) - 1] ^= 1;
	ck_assert_int_ne(verify(buf, NULL), JWT_OK);
}
END_TEST

START_TEST(test_jwt_rejects_tokens_over_4_kib)
{
	char *big = malloc(JWT_MAX + 2);
	struct jwt_claims c = claims("user");
	char tok[JWT_MAX + 1];

	ck_assert_ptr_nonnull(big);
	memset(big, 'A', JWT_MAX + 1);
	big[100] = '.';
	big[200] = '.';
	big[JWT_MAX + 1] = '\0';
	ck_assert_int_eq(verify(big, NULL), JWT_MALFORMED);
	/* a valid token followed by bytes outside len is still valid */
	sign_ok(&c, tok, sizeof tok);
	memcpy(big, tok, strlen(tok));
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, big, strlen(tok), NOW, 0, NULL), JWT_OK);
	free(big);
}
END_TEST

/* ---- JWT: alg and header ---------------------------------------------- */

START_TEST(test_jwt_rejects_alg_none_with_empty_signature)
{
	char tok[JWT_MAX + 1];

	forge(tok, sizeof tok, "{\"alg\":\"none\",\"typ\":\"JWT\"}", payload_json(SUB, "admin", NOW, NOW + 60), NULL,
	      0);
	ck_assert_int_eq(tok[strlen(tok) - 1], '.');
	ck_assert_int_eq(verify(tok, NULL), JWT_BAD_ALG);
	/* even when correctly MACed */
	ck_assert_int_eq(verify_forged("{\"alg\":\"none\"}", payload_json(SUB, "user", NOW, NOW + 60)), JWT_BAD_ALG);
}
END_TEST

START_TEST(test_jwt_rejects_other_algorithms_and_spellings)
{
	const char *p = payload_json(SUB, "user", NOW, NOW + 60);

	ck_assert_int_eq(verify_forged("{\"alg\":\"HS512\",\"typ\":\"JWT\"}", p), JWT_BAD_ALG);
	ck_assert_int_eq(verify_forged("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", p), JWT_BAD_ALG);
	ck_assert_int_eq(verify_forged("{\"alg\":\"hs256\",\"typ\":\"JWT\"}", p), JWT_BAD_ALG);
	ck_assert_int_eq(verify_forged("{\"alg\":\"HS256 \"}", p), JWT_BAD_ALG);
	ck_assert_int_eq(verify_forged("{\"alg\":[\"HS256\"]}", p), JWT_BAD_ALG);
	ck_assert_int_eq(verify_forged("{\"typ\":\"JWT\"}", p), JWT_BAD_ALG);
	ck_assert_int_eq(verify_forged("{\"alg\":\"HS256\",\"typ\":\"JWS\"}", p), JWT_BAD_ALG);
	ck_assert_int_eq(verify_forged("{\"alg\":\"HS256\",\"typ\":1}", p), JWT_BAD_ALG);
	ck_assert_int_eq(verify_forged("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", p), JWT_BAD_ALG);
	ck_assert_int_eq(verify_forged("{\"alg\":\"HS256\",\"crit\":[]}", p), JWT_BAD_ALG);
}
END_TEST

START_TEST(test_jwt_checks_alg_before_the_signature)
{
	char tok[JWT_MAX + 1];
	size_t n;

	forge(tok, sizeof tok, "{\"alg\":\"HS512\"}", payload_json(SUB, "user", NOW, NOW + 60), NULL, 0);
	n = strlen(tok);
	snprintf(tok + n, sizeof tok - n, "%s", "AAAA");
	ck_assert_int_eq(verify(tok, NULL), JWT_BAD_ALG);
}
END_TEST

START_TEST(test_jwt_rejects_ambiguous_header_json)
{
	const char *p = payload_json(SUB, "user", NOW, NOW + 60);

	ck_assert_int_eq(verify_forged("{\"alg\":\"HS256\",\"alg\":\"none\"}", p), JWT_MALFORMED);
	ck_assert_int_eq(verify_forged("{\"alg\":\"HS256\"/*x*/}", p), JWT_MALFORMED);
	ck_assert_int_eq(verify_forged("{\"alg\":\"HS256\\u0000x\"}", p), JWT_MALFORMED);
	ck_assert_int_eq(verify_forged("[\"HS256\"]", p), JWT_MALFORMED);
	ck_assert_int_eq(verify_forged("{\"alg\":\"HS256\"", p), JWT_MALFORMED);
	ck_assert_int_eq(verify_forged("{\"alg\":\"HS256\"} {}", p), JWT_MALFORMED);
	ck_assert_int_eq(verify_forged("", p), JWT_MALFORMED);
}
END_TEST

/* ---- JWT: signature --------------------------------------------------- */

START_TEST(test_jwt_rejects_payload_tampered_to_admin)
{
	struct jwt_claims c = claims("user");
	char tok[JWT_MAX + 1], seg[JWT_MAX], forged[JWT_MAX + 1], *role;
	size_t n, pos = 0;

	sign_ok(&c, tok, sizeof tok);
	n = segment(tok, 1, seg, sizeof seg);
	role = strstr(seg, "\"user\"");
	ck_assert_ptr_nonnull(role);
	memmove(role + 7, role + 6, n - (size_t)(role + 6 - seg) + 1);
	memcpy(role, "\"admin\"", 7);

	memcpy(forged, tok, (size_t)(strchr(tok, '.') - tok) + 1);
	pos = (size_t)(strchr(tok, '.') - tok) + 1;
	put_b64(forged, sizeof forged, &pos, seg, strlen(seg));
	snprintf(forged + pos, sizeof forged - pos, "%s", strrchr(tok, '.'));
	ck_assert_int_eq(verify(forged, NULL), JWT_BAD_SIGNATURE);
}
END_TEST

START_TEST(test_jwt_rejects_tampered_or_truncated_signature)
{
	struct jwt_claims c = claims("user");
	char tok[JWT_MAX + 1], buf[JWT_MAX + 8];
	char *sig;

	sign_ok(&c, tok, sizeof tok);
	snprintf(buf, sizeof buf, "%s", tok);
	sig = strrchr(buf, '.') + 1;
	sig[0] = sig[0] == 'A' ? 'B' : 'A';
	ck_assert_int_eq(verify(buf, NULL), JWT_BAD_SIGNATURE);
	snprintf(buf, sizeof buf, "%s", tok);
	sig = strrchr(buf, '.') + 1;
	sig[40] = '\0'; /* 30 bytes */
	ck_assert_int_eq(verify(buf, NULL), JWT_BAD_SIGNATURE);
	snprintf(buf, sizeof buf, "%sAAAA", tok); /* 35 bytes */
	ck_assert_int_eq(verify(buf, NULL), JWT_BAD_SIGNATURE);
	snprintf(buf, sizeof buf, "%s", tok);
	strrchr(buf, '.')[1] = '\0'; /* empty */
	ck_assert_int_eq(verify(buf, NULL), JWT_BAD_SIGNATURE);
}
END_TEST

START_TEST(test_jwt_rejects_a_token_signed_with_another_key)
{
	static const unsigned char other[] = "fedcba9876543210fedcba9876543210";
	struct jwt_claims c = claims("admin");
	char tok[JWT_MAX + 1];

	ck_assert_int_eq(jwt_sign(other, 32, &c, tok, sizeof tok), 0);
	ck_assert_int_eq(verify(tok, NULL), JWT_BAD_SIGNATURE);
	ck_assert_int_eq(jwt_verify(other, 32, tok, strlen(tok), NOW, 0, NULL), JWT_OK);
}
END_TEST

START_TEST(test_jwt_checks_the_signature_before_parsing_the_payload)
{
	char tok[JWT_MAX + 1];

	forge(tok, sizeof tok, HDR, "not json", NULL, 0);
	strcat(tok, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
	ck_assert_int_eq(verify(tok, NULL), JWT_BAD_SIGNATURE);
	ck_assert_int_eq(verify_forged(HDR, "not json"), JWT_MALFORMED);
}
END_TEST

/* ---- JWT: claims and time --------------------------------------------- */

START_TEST(test_jwt_rejects_bad_sub_and_role)
{
	ck_assert_int_eq(verify_forged(HDR, payload_json("zzzzzzzzzzzzzzzzzzzzzzzz", "user", NOW, NOW + 60)),
	                 JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, payload_json("5F1D7A3B9C2E4D6F8A0B1C2D", "user", NOW, NOW + 60)),
	                 JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, payload_json("5f1d7a3b9c2e4d6f8a0b1c2", "user", NOW, NOW + 60)),
	                 JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, payload_json("5f1d7a3b9c2e4d6f8a0b1c2d0", "user", NOW, NOW + 60)),
	                 JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, payload_json("{\\\"$gt\\\":1}", "user", NOW, NOW + 60)), JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, payload_json(SUB, "ro-ot", NOW, NOW + 60)), JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, payload_json(SUB, "abcdefghijklmnop", NOW, NOW + 60)), JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, payload_json(SUB, "Admin", NOW, NOW + 60)), JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, payload_json(SUB, "", NOW, NOW + 60)), JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, payload_json(SUB, "admin", NOW, NOW + 60)), JWT_OK);
}
END_TEST

START_TEST(test_jwt_rejects_missing_or_mistyped_claims)
{
	ck_assert_int_eq(verify_forged(HDR, "{\"sub\":\"" SUB "\",\"role\":\"user\",\"iat\":1,\"exp\":2000000000}"),
	                 JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, "{\"sub\":\"" SUB "\",\"email\":\"a@b\",\"role\":\"user\",\"iat\":1}"),
	                 JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, "{\"sub\":\"" SUB "\",\"email\":\"a@b\",\"role\":\"user\",\"iat\":1,"
	                                    "\"exp\":\"2000000000\"}"),
	                 JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, "{\"sub\":\"" SUB "\",\"email\":\"a@b\",\"role\":\"user\",\"iat\":1.5,"
	                                    "\"exp\":2000000000}"),
	                 JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, "{\"sub\":\"" SUB "\",\"email\":\"a@b\",\"role\":\"user\",\"iat\":1,"
	                                    "\"exp\":2e9}"),
	                 JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, "{\"sub\":\"" SUB "\",\"email\":\"a@b\",\"role\":\"user\",\"iat\":-1,"
	                                    "\"exp\":2000000000}"),
	                 JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, "{\"sub\":\"" SUB "\",\"email\":7,\"role\":\"user\",\"iat\":1,"
	                                    "\"exp\":2000000000}"),
	                 JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, "{\"sub\":\"" SUB "\",\"sub\":\"" SUB "\",\"email\":\"a@b\","
	                                    "\"role\":\"user\",\"iat\":1,\"exp\":2000000000}"),
	                 JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, "[1,2,3]"), JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, "\"sub\""), JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, "{\"sub\":\"" SUB "\",\"email\":\"a@b\",\"role\":\"user\",\"iat\":1,"
	                                    "\"exp\":2000000000}"),
	                 JWT_OK);
}
END_TEST

START_TEST(test_jwt_rejects_expired_tokens_beyond_skew)
{
	struct jwt_claims c = claims("user");
	char tok[JWT_MAX + 1];
	size_t n;

	sign_ok(&c, tok, sizeof tok);
	n = strlen(tok);
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, tok, n, c.exp, 0, NULL), JWT_OK);
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, tok, n, c.exp + 1, 0, NULL), JWT_EXPIRED);
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, tok, n, c.exp + 30, 30, NULL), JWT_OK);
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, tok, n, c.exp + 31, 30, NULL), JWT_EXPIRED);
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, tok, n, c.exp + 1, -5, NULL), JWT_EXPIRED);
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, tok, n, c.exp + 1, INT64_MAX, NULL), JWT_OK);
}
END_TEST

START_TEST(test_jwt_rejects_tokens_issued_in_the_future_beyond_skew)
{
	struct jwt_claims c = claims("user");
	char tok[JWT_MAX + 1];
	size_t n;

	sign_ok(&c, tok, sizeof tok);
	n = strlen(tok);
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, tok, n, c.iat - 31, 30, NULL), JWT_NOT_YET_VALID);
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, tok, n, c.iat - 30, 30, NULL), JWT_OK);
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, tok, n, c.iat - 1, 0, NULL), JWT_NOT_YET_VALID);
	ck_assert_int_eq(verify_forged(HDR, "{\"sub\":\"" SUB "\",\"email\":\"a@b\",\"role\":\"user\",\"iat\":1,"
	                                    "\"exp\":2000000000,\"nbf\":1700000061}"),
	                 JWT_NOT_YET_VALID);
	ck_assert_int_eq(verify_forged(HDR, "{\"sub\":\"" SUB "\",\"email\":\"a@b\",\"role\":\"user\",\"iat\":1,"
	                                    "\"exp\":2000000000,\"nbf\":1700000060}"),
	                 JWT_OK);
	ck_assert_int_eq(verify_forged(HDR, "{\"sub\":\"" SUB "\",\"email\":\"a@b\",\"role\":\"user\",\"iat\":1,"
	                                    "\"exp\":2000000000,\"nbf\":\"soon\"}"),
	                 JWT_MALFORMED);
}
END_TEST

START_TEST(test_jwt_result_names_are_lower_case)
{
	ck_assert_str_eq(jwt_result_str(JWT_OK), "ok");
	ck_assert_str_eq(jwt_result_str(JWT_BAD_ALG), "bad alg");
	ck_assert_str_eq(jwt_result_str(JWT_EXPIRED), "expired");
	ck_assert_str_eq(jwt_result_str((enum jwt_result)99), "unknown");
}
END_TEST

/* ---- JWT: tokens issued by the Node app -------------------------------- */

/* npm jsonwebtoken 9: jwt.sign({userId, email, iat, exp}, KEY) with the key
 * above, as the Node app signs {userId, email} (HS256, typ JWT). */
#define NODE_UID "5f1d7a3b9c2e4d6f8a0b1c2d"
#define NODE_TOKEN_2100                                                                                                \
	"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VySWQiOiI1ZjFkN2EzYjljMmU0ZDZmOGEwYjFjMmQiLCJlbWFpbCI6Im5v"        \
	"ZGUudXNlckBleGFtcGxlLmNvbSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjo0MTAyNDQ0ODAwfQ.lza4_cSnyE19Ne5_6DTWRBMiZAXy"      \
	"EKTk3q3P7x20VsA"
/* iat 1600000000, exp one day later */
#define NODE_TOKEN_2020                                                                                                \
	"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VySWQiOiI1ZjFkN2EzYjljMmU0ZDZmOGEwYjFjMmQiLCJlbWFpbCI6Im5v"        \
	"ZGUudXNlckBleGFtcGxlLmNvbSIsImlhdCI6MTYwMDAwMDAwMCwiZXhwIjoxNjAwMDg2NDAwfQ.h1LI1QBTkGmdFD8TkTu0KS2C04C_"      \
	"pLXJkNQRkWN6fc4"

START_TEST(test_jwt_accepts_a_node_app_token_until_it_expires)
{
	struct jwt_claims c;

	memset(&c, 0x55, sizeof c);
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, NODE_TOKEN_2100, strlen(NODE_TOKEN_2100), (int64_t)time(NULL), 60, &c),
	                 JWT_OK);
	ck_assert_str_eq(c.sub, NODE_UID);
	ck_assert_str_eq(c.email, "node.user@example.com");
	ck_assert_str_eq(c.role, "");
	ck_assert_int_eq(c.issuer, JWT_ISSUER_NODE);
	ck_assert_int_eq(c.iat, 1700000000);
	ck_assert_int_eq(c.exp, 4102444800LL);
	/* the same checks as ours: expiry, key, tampering */
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, NODE_TOKEN_2100, strlen(NODE_TOKEN_2100), 4102444800LL + 61, 60, &c),
	                 JWT_EXPIRED);
	ck_assert_str_eq(c.sub, "");
	ck_assert_int_eq(jwt_verify((const unsigned char *)"another key of at least 32 bytes!!", 34, NODE_TOKEN_2100,
	                            strlen(NODE_TOKEN_2100), NOW, 60, NULL),
	                 JWT_BAD_SIGNATURE);
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, NODE_TOKEN_2020, strlen(NODE_TOKEN_2020), (int64_t)time(NULL), 60, &c),
	                 JWT_EXPIRED);
	ck_assert_int_eq(jwt_verify(KEY, KEYLEN, NODE_TOKEN_2020, strlen(NODE_TOKEN_2020), 1600000000 + 3600, 60, &c),
	                 JWT_OK);
	ck_assert_str_eq(c.sub, NODE_UID);
}
END_TEST

START_TEST(test_jwt_own_tokens_report_resil_as_issuer)
{
	struct jwt_claims c = claims("admin"), out;
	char tok[JWT_MAX + 1];

	c.issuer = JWT_ISSUER_NODE; /* ignored: jwt_sign issues resil's shape only */
	sign_ok(&c, tok, sizeof tok);
	ck_assert_int_eq(verify(tok, &out), JWT_OK);
	ck_assert_int_eq(out.issuer, JWT_ISSUER_RESIL);
	ck_assert_str_eq(out.sub, SUB);
	ck_assert_str_eq(out.role, "admin");
	segment(tok, 1, tok, sizeof tok);
	ck_assert_ptr_null(strstr(tok, "userId"));
}
END_TEST

START_TEST(test_jwt_rejects_ambiguous_or_bad_node_claims)
{
	/* sub and userId together: which user? */
	ck_assert_int_eq(verify_forged(HDR, "{\"sub\":\"" SUB "\",\"userId\":\"" SUB "\",\"email\":\"a@b\","
	                                    "\"role\":\"user\",\"iat\":1,\"exp\":2000000000}"),
	                 JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, "{\"userId\":\"5F1D7A3B9C2E4D6F8A0B1C2D\",\"email\":\"a@b\",\"iat\":1,"
	                                    "\"exp\":2000000000}"),
	                 JWT_MALFORMED);
	ck_assert_int_eq(
	    verify_forged(HDR, "{\"userId\":{\"$gt\":\"\"},\"email\":\"a@b\",\"iat\":1,\"exp\":2000000000}"),
	    JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, "{\"userId\":\"" SUB "\",\"iat\":1,\"exp\":2000000000}"), JWT_MALFORMED);
	/* jsonwebtoken without expiresIn: no exp, never accepted */
	ck_assert_int_eq(verify_forged(HDR, "{\"userId\":\"" SUB "\",\"email\":\"a@b\",\"iat\":1}"), JWT_MALFORMED);
	ck_assert_int_eq(verify_forged(HDR, "{\"userId\":\"" SUB "\",\"email\":\"a@b\",\"iat\":1,\"exp\":1700000000,"
	                                    "\"nbf\":1700000061}"),
	                 JWT_NOT_YET_VALID);
	/* a role in a Node token is ignored, never trusted */
	{
		char tok[JWT_MAX + 1];
		struct jwt_claims c;

		forge(tok, sizeof tok, HDR,
		      "{\"userId\":\"" SUB "\",\"email\":\"a@b\",\"role\":\"admin\",\"iat\":1,\"exp\":2000000000}", KEY,
		      KEYLEN);
		ck_assert_int_eq(verify(tok, &c), JWT_OK);
		ck_assert_str_eq(c.role, "");
		ck_assert_int_eq(c.issuer, JWT_ISSUER_NODE);
	}
	/* other algorithms stay refused for Node tokens too */
	ck_assert_int_eq(verify_forged("{\"alg\":\"HS512\",\"typ\":\"JWT\"}",
	                               "{\"userId\":\"" SUB "\",\"email\":\"a@b\",\"iat\":1,\"exp\":2000000000}"),
	                 JWT_BAD_ALG);
}
END_TEST

/* ---- Bearer ----------------------------------------------------------- */

static int bearer(const char *v, const char *expect)
{
	const char *tok = NULL;
	size_t n = 0;

	if (auth_bearer_token(v, strlen(v), &tok, &n) != 0)
		return -1;
	ck_assert_uint_eq(n, strlen(expect));
	ck_assert_int_eq(memcmp(tok, expect, n), 0);
	return 0;
}

START_TEST(test_bearer_extracts_the_token)
{
	const char *tok;
	size_t n;

	ck_assert_int_eq(bearer("Bearer abc.def.ghi", "abc.def.ghi"), 0);
	ck_assert_int_eq(bearer("bearer x", "x"), 0);
	ck_assert_int_eq(bearer("BEARER    a-b_c~d+e/f==", "a-b_c~d+e/f=="), 0);
	ck_assert_int_eq(bearer("  Bearer tok \t", "tok"), 0);
	/* the value need not be NUL-terminated */
	ck_assert_int_eq(auth_bearer_token("Bearer abcdef", 9, &tok, &n), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(memcmp(tok, "ab", 2), 0);
}
END_TEST

START_TEST(test_bearer_rejects_other_shapes)
{
	const char *tok;
	size_t n;

	ck_assert_int_eq(bearer("", ""), -1);
	ck_assert_int_eq(bearer("Bearer", ""), -1);
	ck_assert_int_eq(bearer("Bearer ", ""), -1);
	ck_assert_int_eq(bearer("Bearer    ", ""), -1);
	ck_assert_int_eq(bearer("Bearerabc", ""), -1);
	ck_assert_int_eq(bearer("Bearer\tabc", ""), -1);
	ck_assert_int_eq(bearer("Basic dXNlcjpwYXNz", ""), -1);
	ck_assert_int_eq(bearer("Bearer a b", ""), -1);
	ck_assert_int_eq(bearer("Bearer a,b", ""), -1);
	ck_assert_int_eq(bearer("Bearer ==", ""), -1);
	ck_assert_int_eq(bearer("Bearer a=b", ""), -1);
	ck_assert_int_eq(bearer("Token abc", ""), -1);
	ck_assert_int_eq(bearer("Bearer abc\x01", ""), -1);
	ck_assert_int_eq(auth_bearer_token(NULL, 0, &tok, &n), -1);
	ck_assert_int_eq(auth_bearer_token("Bearer abc", 6, &tok, &n), -1);
}
END_TEST

/* ---- suite ------------------------------------------------------------ */

static void add(Suite *s, const char *name, const TTest *t, int timeout)
{
	TCase *tc = tcase_create(name);

	tcase_add_checked_fixture(tc, setup, NULL);
	if (timeout)
		tcase_set_timeout(tc, timeout);
	tcase_add_test(tc, t);
	suite_add_tcase(s, tc);
}

static Suite *auth_suite(void)
{
	Suite *s = suite_create("auth");
	/* argon2id at interactive limits is slow under valgrind; generous bound */
	const int slow = 300;

	add(s, "password_round_trip", test_password_hash_round_trips, slow);
	add(s, "password_argon2id", test_password_hash_is_argon2id_with_current_limits, slow);
	add(s, "password_wrong", test_password_verify_rejects_wrong_password, slow);
	add(s, "password_malformed", test_password_verify_reports_malformed_hashes_as_errors, 0);
	add(s, "password_rehash", test_password_needs_rehash_flags_weaker_or_argon2i_hashes, 0);
	add(s, "password_dummy", test_dummy_verify_runs_once_initialised_from_many_threads, slow);
	add(s, "password_bcryptjs", test_password_verifies_a_bcryptjs_hash_of_cost_12, slow);
	add(s, "password_bcrypt_crypt", test_password_verifies_bcrypt_hashes_made_by_crypt, slow);
	add(s, "password_bcrypt_malformed", test_password_refuses_malformed_bcrypt_hashes, slow);
	add(s, "password_bcrypt_padding", test_expect_bcrypt_turns_on_padding_for_every_verify, slow);
	add(s, "jwt_round_trip", test_jwt_sign_verify_round_trips, 0);
	add(s, "jwt_session_id", test_jwt_carries_an_optional_session_id, 0);
	add(s, "jwt_hmac", test_jwt_signature_is_hmac_sha256_of_the_first_two_segments, 0);
	add(s, "jwt_rfc7515", test_jwt_verify_accepts_rfc7515_example_signature, 0);
	add(s, "jwt_other_issuer", test_jwt_accepts_reordered_header_and_long_keys, 0);
	add(s, "jwt_email_escape", test_jwt_escapes_email_as_json, 0);
	add(s, "jwt_longest", test_jwt_sign_fits_the_longest_email_and_refuses_small_buffers, 0);
	add(s, "jwt_sign_claims", test_jwt_sign_refuses_invalid_claims, 0);
	add(s, "jwt_short_key", test_jwt_refuses_keys_shorter_than_32_bytes, 0);
	add(s, "jwt_segments", test_jwt_rejects_missing_or_extra_segments, 0);
	add(s, "jwt_base64url", test_jwt_rejects_padding_and_characters_outside_base64url, 0);
	add(s, "jwt_huge", test_jwt_rejects_tokens_over_4_kib, 0);
	add(s, "jwt_alg_none", test_jwt_rejects_alg_none_with_empty_signature, 0);
	add(s, "jwt_alg_other", test_jwt_rejects_other_algorithms_and_spellings, 0);
	add(s, "jwt_alg_first", test_jwt_checks_alg_before_the_signature, 0);
	add(s, "jwt_header_json", test_jwt_rejects_ambiguous_header_json, 0);
	add(s, "jwt_tampered_payload", test_jwt_rejects_payload_tampered_to_admin, 0);
	add(s, "jwt_tampered_sig", test_jwt_rejects_tampered_or_truncated_signature, 0);
	add(s, "jwt_wrong_key", test_jwt_rejects_a_token_signed_with_another_key, 0);
	add(s, "jwt_sig_first", test_jwt_checks_the_signature_before_parsing_the_payload, 0);
	add(s, "jwt_sub_role", test_jwt_rejects_bad_sub_and_role, 0);
	add(s, "jwt_claims", test_jwt_rejects_missing_or_mistyped_claims, 0);
	add(s, "jwt_expired", test_jwt_rejects_expired_tokens_beyond_skew, 0);
	add(s, "jwt_future", test_jwt_rejects_tokens_issued_in_the_future_beyond_skew, 0);
	add(s, "jwt_result_str", test_jwt_result_names_are_lower_case, 0);
	add(s, "jwt_node_token", test_jwt_accepts_a_node_app_token_until_it_expires, 0);
	add(s, "jwt_own_issuer", test_jwt_own_tokens_report_resil_as_issuer, 0);
	add(s, "jwt_node_claims", test_jwt_rejects_ambiguous_or_bad_node_claims, 0);
	add(s, "bearer_ok", test_bearer_extracts_the_token, 0);
	add(s, "bearer_bad", test_bearer_rejects_other_shapes, 0);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(auth_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
