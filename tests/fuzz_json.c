/* fuzz_json.c - libFuzzer target for JSON request bodies: the parser of
 * src/json.c (depth and size limits, strict UTF-8, lone-surrogate checks,
 * duplicate keys), its writer, the tree editing used for form bodies, and
 * the declarative validator of src/validate.c with rule tables like the
 * API's.
 *
 *   make fuzz && ./tests/fuzz_json -max_total_time=20 CORPUS tests/fuzz-corpus/json
 *
 * Input: byte 0 selects the limits (bit 7: a size limit of half the
 * document; bit 6: depth 64 as in production, else depth = bits 0-5),
 * the rest is the document. Properties checked, abort() on a violation:
 *  - the UTF-8 check agrees with a plain reference decoder, and invalid
 *    UTF-8 is always reported as JSON_ERR_UTF8;
 *  - a parsed tree respects the depth limit, its strings are strict UTF-8,
 *    its object keys are unique and free of NUL, and json_get() finds them;
 *  - a document accepted under a depth limit is accepted under a larger
 *    one too, as the same tree;
 *  - writing a tree and parsing the output gives an equal tree (also after
 *    json_object_set() edits);
 *  - the validator never lets a value of the wrong JSON type through,
 *    keeps its error list within bounds, and writes its details as valid
 *    JSON.
 */
#include "json.h"
#include "validate.h"

#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_gen.h>

#define FZ_FAIL(...)                                                                                                   \
	do {                                                                                                           \
		fprintf(stderr, "fuzz_json: " __VA_ARGS__);                                                            \
		fputc('\n', stderr);                                                                                   \
		abort();                                                                                               \
	} while (0)

/* ------------------------------------------------------------ reference */

/* RFC 3629 by decoding each sequence and checking the code point. */
static int ref_utf8(const unsigned char *s, size_t n, long *count)
{
	long cps = 0;
	size_t i = 0;
	while (i < n) {
		unsigned c = s[i];
		uint32_t cp;
		size_t k;
		cps++;
		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xE0) == 0xC0) {
			k = 1;
			cp = c & 0x1F;
		} else if ((c & 0xF0) == 0xE0) {
			k = 2;
			cp = c & 0x0F;
		} else if ((c & 0xF8) == 0xF0) {
			k = 3;
			cp = c & 0x07;
		} else {
			return 0;
		}
		if (n - i <= k)
			return 0;
		for (size_t j = 1; j <= k; j++) {
			if ((s[i + j] & 0xC0) != 0x80)
				return 0;
			cp = cp << 6 | (s[i + j] & 0x3F);
		}
		uint32_t min = k == 1 ? 0x80 : k == 2 ? 0x800 : 0x10000;
		if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
			return 0;
		i += k + 1;
	}
	if (count)
		*count = cps;
	return 1;
}

/* ---------------------------------------------------------- tree checks */

static int cmp_keyp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int check_tree(const struct json_value *v, int depth, int max_depth)
{
	int deepest = depth;
	switch (v->type) {
	case JSON_NULL:
	case JSON_BOOL: break;
	case JSON_NUMBER:
		if (!isfinite(v->d))
			FZ_FAIL("non-finite number in a parsed tree");
		if (v->is_int && (double)v->i != v->d)
			FZ_FAIL("integer %" PRId64 " and its double %.17g disagree", v->i, v->d);
		break;
	case JSON_STRING:
		if (v->s[v->len] != '\0')
			FZ_FAIL("string not NUL-terminated");
		if (!ref_utf8((const unsigned char *)v->s, v->len, NULL))
			FZ_FAIL("parsed string is not strict UTF-8 (len %zu)", v->len);
		break;
	case JSON_ARRAY:
	case JSON_OBJECT:
		if (depth + 1 > max_depth)
			FZ_FAIL("container at depth %d with max_depth %d", depth + 1, max_depth);
		for (size_t i = 0; i < v->len; i++) {
			int d = check_tree(v->items[i], depth + 1, max_depth);
			if (d > deepest)
				deepest = d;
		}
		if (deepest < depth + 1)
			deepest = depth + 1;
		if (v->type == JSON_OBJECT && v->len > 0) {
			char **keys = malloc(v->len * sizeof(*keys));
			if (!keys)
				abort();
			for (size_t i = 0; i < v->len; i++) {
				size_t kl = strlen(v->keys[i]);
				if (!ref_utf8((const unsigned char *)v->keys[i], kl, NULL))
					FZ_FAIL("object key is not strict UTF-8");
				if (json_get(v, v->keys[i]) != v->items[i])
					FZ_FAIL("json_get() does not find key #%zu", i);
				keys[i] = v->keys[i];
			}
			qsort(keys, v->len, sizeof(*keys), cmp_keyp);
			for (size_t i = 1; i < v->len; i++)
				if (strcmp(keys[i - 1], keys[i]) == 0)
					FZ_FAIL("duplicate key \"%s\" survived parsing", keys[i]);
			free(keys);
		}
		break;
	default: FZ_FAIL("unknown node type %d", (int)v->type);
	}
	return deepest;
}

/* Equal as JSON values; numbers by value (1.0 is written as 1 and comes
 * back as an integer), object members in order. */
static int tree_equal(const struct json_value *a, const struct json_value *b)
{
	if (a->type != b->type)
		return 0;
	switch (a->type) {
	case JSON_NULL: return 1;
	case JSON_BOOL: return a->b == b->b;
	case JSON_NUMBER:
		if (a->is_int && b->is_int)
			return a->i == b->i;
		return a->d == b->d;
	case JSON_STRING: return a->len == b->len && memcmp(a->s, b->s, a->len) == 0;
	case JSON_ARRAY:
	case JSON_OBJECT:
		if (a->len != b->len)
			return 0;
		for (size_t i = 0; i < a->len; i++) {
			if (a->type == JSON_OBJECT && strcmp(a->keys[i], b->keys[i]) != 0)
				return 0;
			if (!tree_equal(a->items[i], b->items[i]))
				return 0;
		}
		return 1;
	}
	return 0;
}

/* Write v, parse the output, compare. */
static void round_trip(const struct json_value *v, int max_depth, const char *when)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	const unsigned char *buf;
	size_t len;
	if (!g)
		abort();
	if (json_gen_value(g, v) != 0 || yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok)
		FZ_FAIL("json_gen_value() failed on a parsed tree (%s)", when);
	struct json_value *back = NULL;
	enum json_status st = json_parse((const char *)buf, len, max_depth, 0, &back);
	if (st != JSON_OK)
		FZ_FAIL("own output does not parse (%s): %s: %.*s", when, json_status_str(st),
		        (int)(len > 2000 ? 2000 : len), buf);
	if (!tree_equal(v, back))
		FZ_FAIL("round trip changed the document (%s): %.*s", when, (int)(len > 2000 ? 2000 : len), buf);
	json_free(back);
	yajl_gen_free(g);
}

/* ------------------------------------------------------------ validator */

static const struct vrule rules_register[] = {
    V_STRING("username", V_REQUIRED, 3, 20, .charset = V_CHARSET_WORD),
    V_EMAIL("email", V_REQUIRED),
    V_STRING("password", V_REQUIRED, 8, 128),
    V_END,
};

static const struct vrule rules_post[] = {
    V_STRING("title", V_REQUIRED, 1, 200),
    V_STRING("content", V_REQUIRED, 1, 50000),
    V_STRING("category", V_OPTIONAL, 1, 50),
    V_END,
};

static const struct vrule rules_patient[] = {
    V_STRING("name", V_REQUIRED, 1, 100), V_EMAIL("email", V_REQUIRED),
    V_DATE("dateOfBirth", V_OPTIONAL),    V_ENUM("status", V_OPTIONAL, "active", "inactive", "discharged"),
    V_STRING("ssn", V_OPTIONAL, 1, 20),   V_STRING("medicalRecord", V_OPTIONAL, 0, 10000),
    V_OBJECTID("roomId", V_OPTIONAL),     V_END,
};

/* Query-string style rules and every bound shape of V_INT / V_STRING. */
static const struct vrule rules_query[] = {
    V_INT("page", V_OPTIONAL | V_FROM_STRING, 1, 1000000000),
    V_INT("limit", V_OPTIONAL | V_FROM_STRING, 1, 100),
    V_BOOL("mine", V_OPTIONAL | V_FROM_STRING),
    V_BOOL("flag", V_OPTIONAL),
    V_INT("neg", V_OPTIONAL, INT64_MIN, 0),
    V_INT("pos", V_OPTIONAL, 0, INT64_MAX),
    V_INT("any", V_REQUIRED, INT64_MIN, INT64_MAX),
    V_STRING("code", V_OPTIONAL, 4, 4),
    V_STRING("long", V_OPTIONAL, 2, 0),
    V_STRING("short", V_OPTIONAL, 0, 3),
    V_ENUM("sort", V_OPTIONAL, "asc", "desc"),
    V_END,
};

/* More required fields than the error list holds. */
#define R(n) V_STRING(n, V_REQUIRED, 1, 2)
static const struct vrule rules_many[] = {
    R("a"), R("b"), R("c"), R("d"), R("e"), R("f"), R("g"), R("h"), R("i"), R("j"), R("k"),
    R("l"), R("m"), R("n"), R("o"), R("p"), R("q"), R("r"), R("s"), R("t"), V_END,
};
#undef R

static const struct vrule *const rule_tables[] = {rules_register, rules_post, rules_patient, rules_query, rules_many};

static int listed(const struct verrors *e, const char *field)
{
	for (int i = 0; i < e->count; i++)
		if (strcmp(e->details[i].field, field) == 0)
			return 1;
	return 0;
}

static void check_validation(const struct json_value *body, const struct vrule *rules)
{
	struct verrors e;
	memset(&e, 0x5a, sizeof(e)); /* no reliance on a cleared struct */
	int rc = validate(body, rules, &e);
	if (rc != e.count || e.count < 0 || e.count > VERR_MAX || (e.truncated && e.count != VERR_MAX))
		FZ_FAIL("validate() returned %d with count %d, truncated %d", rc, e.count, e.truncated);
	for (int i = 0; i < e.count; i++)
		if (!memchr(e.details[i].field, '\0', sizeof(e.details[i].field)) ||
		    !memchr(e.details[i].message, '\0', sizeof(e.details[i].message)))
			FZ_FAIL("unterminated error detail #%d", i);
	if (!body || body->type != JSON_OBJECT) {
		if (rc != 1 || strcmp(e.details[0].field, "body") != 0)
			FZ_FAIL("a non-object body must give one \"body\" error");
	} else if (!e.truncated) {
		/* A field without an error holds nothing or a value of the
		 * right JSON type: no object or array passes as a scalar. */
		for (const struct vrule *r = rules; r->field; r++) {
			if (listed(&e, r->field))
				continue;
			const struct json_value *v = json_get(body, r->field);
			if (!v || v->type == JSON_NULL) {
				if (r->flags & V_REQUIRED)
					FZ_FAIL("required field %s missing but accepted", r->field);
				continue;
			}
			int ok;
			int64_t iv;
			switch (r->type) {
			case V_T_INT:
				ok = (v->type == JSON_NUMBER && v->is_int && v->i >= r->min && v->i <= r->max) ||
				     ((r->flags & V_FROM_STRING) && v->type == JSON_STRING &&
				      validate_parse_int(v->s, v->len, &iv) == 0 && iv >= r->min && iv <= r->max);
				if (ok && validate_get_int(body, r->field, 0, &iv) != 0)
					FZ_FAIL("validate_get_int() fails on accepted field %s", r->field);
				break;
			case V_T_BOOL:
				ok = v->type == JSON_BOOL || ((r->flags & V_FROM_STRING) && v->type == JSON_STRING &&
				                              ((v->len == 4 && !memcmp(v->s, "true", 4)) ||
				                               (v->len == 5 && !memcmp(v->s, "false", 5))));
				break;
			case V_T_STRING: {
				long cps = validate_utf8_length(v->s, v->len);
				ok = v->type == JSON_STRING && !memchr(v->s, '\0', v->len) && cps >= r->min &&
				     (r->max == 0 || cps <= r->max);
				break;
			}
			case V_T_EMAIL: ok = v->type == JSON_STRING && validate_is_email(v->s, v->len); break;
			case V_T_OBJECTID: ok = v->type == JSON_STRING && validate_is_objectid(v->s, v->len); break;
			case V_T_DATE: ok = v->type == JSON_STRING && validate_is_date(v->s, v->len); break;
			default: ok = v->type == JSON_STRING; break;
			}
			if (!ok)
				FZ_FAIL("field %s accepted with a value that breaks its rule", r->field);
		}
	}
	/* The details must serialise to valid JSON. */
	yajl_gen g = yajl_gen_alloc(NULL);
	const unsigned char *buf;
	size_t len;
	if (!g)
		abort();
	if (validate_write_details(g, &e) != 0 || yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok)
		FZ_FAIL("validate_write_details() failed");
	struct json_value *d = NULL;
	if (json_parse((const char *)buf, len, 4, 0, &d) != JSON_OK || d->type != JSON_ARRAY ||
	    d->len != (size_t)e.count)
		FZ_FAIL("validation details are not a JSON array of %d: %.*s", e.count, (int)len, buf);
	json_free(d);
	yajl_gen_free(g);
}

/* ---------------------------------------------------------------- edits */

static void edit_object(struct json_value *v, int max_depth)
{
	size_t before = v->len;
	int had = json_get(v, "__fz") != NULL;
	if (json_object_set(v, "__fz", 4, json_new_string("x\0y", 3)) != 0)
		FZ_FAIL("json_object_set() failed");
	size_t n;
	const char *s = json_get_str(v, "__fz", &n);
	if (!s || n != 3 || memcmp(s, "x\0y", 3) != 0 || v->len != before + !had)
		FZ_FAIL("json_object_set() did not add the key");
	/* Replace the first member's value by an empty object. */
	const char *k0 = v->keys[0];
	if (json_object_set(v, k0, strlen(k0), json_new_object()) != 0)
		FZ_FAIL("json_object_set() failed to replace");
	const struct json_value *r = json_get(v, v->keys[0]);
	if (!r || r->type != JSON_OBJECT || r->len != 0 || v->len != before + !had)
		FZ_FAIL("json_object_set() did not replace the value");
	/* A key with a NUL is refused, and the value is freed. */
	if (json_object_set(v, "a\0b", 3, json_new_string("z", 1)) == 0)
		FZ_FAIL("json_object_set() accepted a key with a NUL");
	/* Accessors on the edited object. */
	int64_t i;
	int b;
	(void)json_get_int(v, "page", &i);
	(void)json_get_bool(v, "flag", &b);
	/* The replacement may sit one level deeper than anything before. */
	round_trip(v, max_depth > 2 ? max_depth : 2, "after json_object_set");
}

/* ----------------------------------------------------------------- entry */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned mode = data[0];
	const char *p = (const char *)data + 1;
	size_t n = size - 1;
	int max_depth = (mode & 0x40) ? 64 : (int)(mode & 0x3f);
	size_t max_bytes = (mode & 0x80) ? n / 2 + 1 : 0;

	long ref_count = 0;
	int ref_ok = ref_utf8((const unsigned char *)p, n, &ref_count);
	if (json_utf8_valid(p, n) != ref_ok)
		FZ_FAIL("json_utf8_valid() says %d, the reference %d", json_utf8_valid(p, n), ref_ok);
	long cps = validate_utf8_length(p, n);
	if (ref_ok ? cps != ref_count : cps != -1)
		FZ_FAIL("validate_utf8_length() says %ld, the reference %ld", cps, ref_ok ? ref_count : -1L);
	int64_t iv;
	(void)validate_parse_int(p, n, &iv);
	(void)validate_is_email(p, n);
	(void)validate_is_date(p, n);

	struct json_value *v = (struct json_value *)1;
	enum json_status st = json_parse(p, n, max_depth, max_bytes, &v);
	if ((st == JSON_OK) != (v != NULL))
		FZ_FAIL("status %d with tree %p", (int)st, (void *)v);
	if (max_bytes && n > max_bytes) {
		if (st != JSON_ERR_SIZE)
			FZ_FAIL("%zu bytes over a limit of %zu gave %s", n, max_bytes, json_status_str(st));
		return 0;
	}
	if (!ref_ok && st != JSON_ERR_UTF8)
		FZ_FAIL("invalid UTF-8 gave %s", json_status_str(st));

	/* The same document under the production depth, when it is larger. */
	if (max_depth < 64 && st != JSON_ERR_UTF8) {
		struct json_value *w = NULL;
		enum json_status st64 = json_parse(p, n, 64, 0, &w);
		if (st == JSON_OK && (st64 != JSON_OK || !tree_equal(v, w)))
			FZ_FAIL("accepted at depth %d but not the same at depth 64 (%s)", max_depth,
			        json_status_str(st64));
		if (st != JSON_OK && st != JSON_ERR_DEPTH && st != JSON_ERR_NOMEM && st64 != st)
			FZ_FAIL("%s at depth %d but %s at depth 64", json_status_str(st), max_depth,
			        json_status_str(st64));
		json_free(w);
	}

	for (size_t t = 0; t < sizeof(rule_tables) / sizeof(rule_tables[0]); t++)
		check_validation(st == JSON_OK ? v : NULL, rule_tables[t]);
	if (st != JSON_OK)
		return 0;

	check_tree(v, 0, max_depth);
	round_trip(v, max_depth, "parsed");
	if (v->type == JSON_OBJECT && v->len > 0)
		edit_object(v, max_depth);
	json_free(v);
	return 0;
}
