/* test_json.c - unit tests for src/json.c: limits, strict UTF-8, escapes,
 * numbers, duplicate keys, accessors, built objects and the writer. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_gen.h>

#include "../src/json.h"

static enum json_status parse_n(const char *s, size_t n, struct json_value **out)
{
	return json_parse(s, n, 64, 0, out);
}

static enum json_status parse(const char *s, struct json_value **out)
{
	return parse_n(s, strlen(s), out);
}

static enum json_status status_of(const char *s)
{
	struct json_value *v = NULL;
	enum json_status st = parse(s, &v);
	json_free(v);
	return st;
}

/* Builds n opening brackets, then n closing ones when closed is set. */
static char *nested(int n, int closed)
{
	char *s = malloc((size_t)n * 2 + 1);
	int i;

	ck_assert_ptr_nonnull(s);
	for (i = 0; i < n; i++)
		s[i] = '[';
	for (int j = 0; closed && j < n; j++)
		s[i++] = ']';
	s[i] = '\0';
	return s;
}

/* Serialises v compactly into a fresh string the caller frees. */
static char *gen(const struct json_value *v)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	const unsigned char *buf;
	size_t len;
	char *out;

	ck_assert_ptr_nonnull(g);
	ck_assert_int_eq(json_gen_value(g, v), 0);
	ck_assert_int_eq(yajl_gen_get_buf(g, &buf, &len), yajl_gen_status_ok);
	out = malloc(len + 1);
	ck_assert_ptr_nonnull(out);
	memcpy(out, buf, len);
	out[len] = '\0';
	yajl_gen_free(g);
	return out;
}

START_TEST(test_json_accepts_depth_64_and_rejects_65)
{
	struct json_value *v = NULL;
	char *ok = nested(64, 1), *deep = nested(65, 1);

	ck_assert_int_eq(parse(ok, &v), JSON_OK);
	ck_assert_int_eq(v->type, JSON_ARRAY);
	json_free(v);
	ck_assert_int_eq(parse(deep, &v), JSON_ERR_DEPTH);
	ck_assert_ptr_null(v);
	ck_assert_int_eq(status_of("{\"a\":{\"b\":[1]}}"), JSON_OK);
	ck_assert_int_eq(json_parse("[[1]]", 5, 1, 0, &v), JSON_ERR_DEPTH);
	ck_assert_int_eq(json_parse("[1]", 3, 1, 0, &v), JSON_OK);
	json_free(v);
	ck_assert_int_eq(json_parse("{\"a\":{}}", 8, 1, 0, &v), JSON_ERR_DEPTH);
	free(ok);
	free(deep);
}
END_TEST

START_TEST(test_json_depth_error_is_reported_before_the_end_of_input)
{
	struct json_value *v = NULL;
	/* Never closed: a parser that built first and measured later would
	 * call this a syntax error; the limit must trip on the 65th bracket. */
	char *s = nested(100000, 0);

	ck_assert_int_eq(parse(s, &v), JSON_ERR_DEPTH);
	ck_assert_ptr_null(v);
	free(s);
}
END_TEST

START_TEST(test_json_rejects_input_over_the_size_limit)
{
	struct json_value *v = NULL;

	ck_assert_int_eq(json_parse("[1,2]", 5, 64, 4, &v), JSON_ERR_SIZE);
	ck_assert_ptr_null(v);
	ck_assert_int_eq(json_parse("[1,2]", 5, 64, 5, &v), JSON_OK);
	json_free(v);
	ck_assert_int_eq(json_parse("[1,2]", 5, 64, 0, &v), JSON_OK);
	json_free(v);
}
END_TEST

static const char *const bad_utf8[] = {
    "\xC0\x80",         /* overlong NUL */
    "\xC1\xBF",         /* overlong 2-byte */
    "\xE0\x80\x80",     /* overlong 3-byte */
    "\xE0\x9F\xBF",     /* overlong U+07FF */
    "\xED\xA0\x80",     /* U+D800 */
    "\xED\xBF\xBF",     /* U+DFFF */
    "\xF0\x80\x80\x80", /* overlong 4-byte */
    "\xF0\x8F\xBF\xBF", /* overlong U+FFFF */
    "\xF4\x90\x80\x80", /* U+110000 */
    "\xF5\x80\x80\x80", /* lead beyond F4 */
    "\xFF",
    "\xFE",
    "\x80", /* stray continuation */
    "\xBF",
    "\xC3", /* truncated */
    "\xE2\x82",
    "\xF0\x9F\x98",
    "\xC3\x28", /* bad continuation */
    "\xE2\x28\xA1",
    "\xF0\x9F\x28\x80",
};

static const char *const good_utf8[] = {
    "\x7F",
    "\xC2\x80",
    "\xDF\xBF",
    "\xE0\xA0\x80",
    "\xED\x9F\xBF",
    "\xEE\x80\x80",
    "\xEF\xBF\xBF",
    "\xF0\x90\x80\x80",
    "\xF4\x8F\xBF\xBF",
    "h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80",
};

START_TEST(test_json_utf8_check_rejects_every_malformed_form)
{
	for (size_t i = 0; i < sizeof(bad_utf8) / sizeof(bad_utf8[0]); i++) {
		const char *b = bad_utf8[i];
		char doc[64];
		ck_assert_msg(!json_utf8_valid(b, strlen(b)), "accepted case %zu", i);
		snprintf(doc, sizeof(doc), "{\"k\":\"%s\"}", b);
		ck_assert_int_eq(status_of(doc), JSON_ERR_UTF8);
	}
	for (size_t i = 0; i < sizeof(good_utf8) / sizeof(good_utf8[0]); i++) {
		const char *g = good_utf8[i];
		char doc[64];
		ck_assert_msg(json_utf8_valid(g, strlen(g)), "rejected case %zu", i);
		snprintf(doc, sizeof(doc), "[\"%s\"]", g);
		ck_assert_int_eq(status_of(doc), JSON_OK);
	}
	ck_assert(json_utf8_valid("", 0));
}
END_TEST

START_TEST(test_json_utf8_check_finds_bad_bytes_at_any_offset)
{
	char buf[80];

	/* Moves one bad sequence across the 16-byte ASCII fast path. */
	for (size_t pos = 0; pos + 3 <= sizeof(buf); pos++) {
		memset(buf, 'a', sizeof(buf));
		ck_assert(json_utf8_valid(buf, sizeof(buf)));
		memcpy(buf + pos, "\xED\xA0\x80", 3);
		ck_assert_msg(!json_utf8_valid(buf, sizeof(buf)), "missed at %zu", pos);
		memcpy(buf + pos, "\xE2\x82\xAC", 3);
		ck_assert_msg(json_utf8_valid(buf, sizeof(buf)), "false alarm at %zu", pos);
	}
	/* A sequence cut by the end of the buffer. */
	memset(buf, 'a', sizeof(buf));
	buf[sizeof(buf) - 1] = '\xC3';
	ck_assert(!json_utf8_valid(buf, sizeof(buf)));
}
END_TEST

START_TEST(test_json_rejects_lone_surrogate_escapes)
{
	ck_assert_int_eq(status_of("\"\\ud800\""), JSON_ERR_UTF8);
	ck_assert_int_eq(status_of("\"\\uDBFF\""), JSON_ERR_UTF8);
	ck_assert_int_eq(status_of("\"\\udc00\""), JSON_ERR_UTF8);
	ck_assert_int_eq(status_of("\"\\uDFFF x\""), JSON_ERR_UTF8);
	ck_assert_int_eq(status_of("\"\\ud800\\u0041\""), JSON_ERR_UTF8);
	ck_assert_int_eq(status_of("\"\\ud800\\ud800\""), JSON_ERR_UTF8);
	ck_assert_int_eq(status_of("\"\\ud800x\""), JSON_ERR_UTF8);
	ck_assert_int_eq(status_of("\"\\udc00\\ud800\""), JSON_ERR_UTF8);
	ck_assert_int_eq(status_of("{\"\\ud800\":1}"), JSON_ERR_UTF8);
	ck_assert_int_eq(status_of("[\"ok\",\"\\ud83d\"]"), JSON_ERR_UTF8);
}
END_TEST

START_TEST(test_json_accepts_surrogate_pairs_and_escaped_backslashes)
{
	struct json_value *v = NULL;

	ck_assert_int_eq(parse("\"\\ud83d\\ude00\"", &v), JSON_OK);
	ck_assert_int_eq(v->type, JSON_STRING);
	ck_assert_uint_eq(v->len, 4);
	ck_assert_mem_eq(v->s, "\xF0\x9F\x98\x80", 4);
	json_free(v);
	ck_assert_int_eq(parse("\"\\uDBFF\\uDFFF\"", &v), JSON_OK);
	ck_assert_mem_eq(v->s, "\xF4\x8F\xBF\xBF", 4);
	json_free(v);
	/* "\\ud800" is a backslash followed by the text ud800, not an escape. */
	ck_assert_int_eq(parse("\"\\\\ud800\"", &v), JSON_OK);
	ck_assert_str_eq(v->s, "\\ud800");
	json_free(v);
	ck_assert_int_eq(parse("\"\\u00e9\\n\\\"\"", &v), JSON_OK);
	ck_assert_str_eq(v->s, "\xC3\xA9\n\"");
	json_free(v);
}
END_TEST

START_TEST(test_json_numbers_keep_int64_exactly_and_fall_back_to_double)
{
	struct json_value *v = NULL;

	ck_assert_int_eq(parse("[0,-0,9223372036854775807,-9223372036854775808,"
	                       "9223372036854775808,-9223372036854775809,1.5,1e2,-2.5E-3,1e-400]",
	                       &v),
	                 JSON_OK);
	ck_assert_uint_eq(v->len, 10);
	ck_assert(v->items[0]->is_int && v->items[0]->i == 0);
	ck_assert(v->items[1]->is_int && v->items[1]->i == 0);
	ck_assert(v->items[2]->is_int && v->items[2]->i == INT64_MAX);
	ck_assert(v->items[3]->is_int && v->items[3]->i == INT64_MIN);
	ck_assert(!v->items[4]->is_int);
	ck_assert(v->items[4]->d == 9223372036854775808.0);
	ck_assert(!v->items[5]->is_int);
	ck_assert(v->items[5]->d == -9223372036854775809.0);
	ck_assert(!v->items[6]->is_int && v->items[6]->d == 1.5);
	ck_assert(!v->items[7]->is_int && v->items[7]->d == 100.0);
	ck_assert(v->items[8]->d == -2.5e-3);
	ck_assert(v->items[9]->d == 0.0);
	ck_assert(v->items[2]->d == 9223372036854775807.0);
	for (size_t i = 0; i < v->len; i++)
		ck_assert_int_eq(v->items[i]->type, JSON_NUMBER);
	json_free(v);
}
END_TEST

START_TEST(test_json_long_numbers_parse_and_infinite_ones_fail)
{
	struct json_value *v = NULL;
	char big[400];

	memset(big, '9', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	ck_assert_int_eq(parse(big, &v), JSON_ERR_SYNTAX); /* 1e399: beyond double */
	big[300] = '\0';
	ck_assert_int_eq(parse(big, &v), JSON_OK);
	ck_assert(!v->is_int && v->d > 9e299 && isfinite(v->d));
	json_free(v);
	big[1] = '.';
	ck_assert_int_eq(parse(big, &v), JSON_OK);
	ck_assert(!v->is_int && v->d > 9.9 && v->d <= 10.0);
	json_free(v);
	ck_assert_int_eq(status_of("1e400"), JSON_ERR_SYNTAX);
	ck_assert_int_eq(status_of("-1e400"), JSON_ERR_SYNTAX);
}
END_TEST

START_TEST(test_json_duplicate_keys_keep_the_last_value)
{
	struct json_value *v = NULL;
	int64_t i;

	ck_assert_int_eq(parse("{\"a\":1,\"b\":2,\"a\":{\"x\":[1,2]},\"a\":3}", &v), JSON_OK);
	ck_assert_uint_eq(v->len, 2);
	ck_assert_str_eq(v->keys[0], "a");
	ck_assert_str_eq(v->keys[1], "b");
	ck_assert_int_eq(json_get_int(v, "a", &i), 0);
	ck_assert_int_eq(i, 3);
	json_free(v);
}
END_TEST

START_TEST(test_json_duplicate_keys_in_big_objects_keep_the_last_value)
{
	char doc[4096];
	size_t off = 0;
	struct json_value *v = NULL;
	int64_t i;

	/* 40 distinct keys, each given three times: the sorted path. */
	doc[off++] = '{';
	for (int round = 0; round < 3; round++)
		for (int k = 0; k < 40; k++)
			off += (size_t)snprintf(doc + off, sizeof(doc) - off, "%s\"k%d\":%d", off > 1 ? "," : "", k,
			                        round * 100 + k);
	doc[off++] = '}';
	ck_assert_int_eq(parse_n(doc, off, &v), JSON_OK);
	ck_assert_uint_eq(v->len, 40);
	for (int k = 0; k < 40; k++) {
		char key[16];
		snprintf(key, sizeof(key), "k%d", k);
		ck_assert_str_eq(v->keys[k], key);
		ck_assert_int_eq(json_get_int(v, key, &i), 0);
		ck_assert_int_eq(i, 200 + k);
	}
	json_free(v);
}
END_TEST

START_TEST(test_json_accessors_return_typed_values_or_fail)
{
	struct json_value *v = NULL;
	size_t len = 0;
	int64_t i = 0;
	int b = -1;

	ck_assert_int_eq(parse("{\"s\":\"h\\u0000i\",\"n\":42,\"f\":1.5,\"t\":true,"
	                       "\"z\":null,\"o\":{},\"a\":[]}",
	                       &v),
	                 JSON_OK);
	ck_assert_str_eq(json_get_str(v, "s", &len), "h");
	ck_assert_uint_eq(len, 3);
	ck_assert_mem_eq(json_get_str(v, "s", NULL), "h\0i", 3);
	ck_assert_int_eq(json_get_int(v, "n", &i), 0);
	ck_assert_int_eq(i, 42);
	ck_assert_int_eq(json_get_int(v, "f", &i), -1);
	ck_assert_int_eq(json_get_int(v, "s", &i), -1);
	ck_assert_int_eq(json_get_bool(v, "t", &b), 0);
	ck_assert_int_eq(b, 1);
	ck_assert_int_eq(json_get_bool(v, "n", &b), -1);
	ck_assert_ptr_null(json_get_str(v, "n", NULL));
	ck_assert_ptr_null(json_get(v, "missing"));
	ck_assert_ptr_null(json_get(v, ""));
	ck_assert_int_eq(json_get(v, "z")->type, JSON_NULL);
	ck_assert_int_eq(json_get(v, "o")->type, JSON_OBJECT);
	ck_assert_uint_eq(json_get(v, "o")->len, 0);
	ck_assert_int_eq(json_get(v, "a")->type, JSON_ARRAY);
	ck_assert_ptr_null(json_get(json_get(v, "a"), "x"));
	ck_assert_ptr_null(json_get(NULL, "x"));
	json_free(v);
}
END_TEST

START_TEST(test_json_rejects_nul_in_object_keys)
{
	ck_assert_int_eq(status_of("{\"a\\u0000b\":1}"), JSON_ERR_SYNTAX);
}
END_TEST

START_TEST(test_json_rejects_trailing_garbage)
{
	struct json_value *v = NULL;

	ck_assert_int_eq(status_of("{} x"), JSON_ERR_SYNTAX);
	ck_assert_int_eq(status_of("[1] [2]"), JSON_ERR_SYNTAX);
	ck_assert_int_eq(status_of("1 2"), JSON_ERR_SYNTAX);
	ck_assert_int_eq(status_of("{}}"), JSON_ERR_SYNTAX);
	ck_assert_int_eq(status_of("{\"a\":[1,{\"b\":2}]},"), JSON_ERR_SYNTAX);
	ck_assert_int_eq(parse(" \t\r\n[1] \n", &v), JSON_OK);
	json_free(v);
}
END_TEST

START_TEST(test_json_rejects_empty_input)
{
	struct json_value *v = NULL;

	ck_assert_int_eq(parse("", &v), JSON_ERR_SYNTAX);
	ck_assert_ptr_null(v);
	ck_assert_int_eq(parse("  \n ", &v), JSON_ERR_SYNTAX);
	ck_assert_int_eq(json_parse(NULL, 0, 64, 0, &v), JSON_ERR_SYNTAX);
}
END_TEST

START_TEST(test_json_rejects_malformed_documents)
{
	static const char *const bad[] = {
	    "[1,]", "{\"a\":1,}", "{\"a\"}", "{a:1}",     "01",     "-",  "1.",      ".5",  "+1",
	    "nul",  "[\"a\tb\"]", "\"\\x\"", "\"\\u12\"", "/*c*/1", "[1", "{\"a\":", "'a'", "\"abc",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(status_of(bad[i]) == JSON_ERR_SYNTAX, "accepted %s", bad[i]);
}
END_TEST

START_TEST(test_json_accepts_top_level_scalars)
{
	struct json_value *v = NULL;

	ck_assert_int_eq(parse("7", &v), JSON_OK);
	ck_assert(v->type == JSON_NUMBER && v->is_int && v->i == 7);
	json_free(v);
	ck_assert_int_eq(parse("\"x\"", &v), JSON_OK);
	ck_assert_str_eq(v->s, "x");
	json_free(v);
	ck_assert_int_eq(parse("false", &v), JSON_OK);
	ck_assert(v->type == JSON_BOOL && v->b == 0);
	json_free(v);
	ck_assert_int_eq(parse("null", &v), JSON_OK);
	ck_assert_int_eq(v->type, JSON_NULL);
	json_free(v);
}
END_TEST

START_TEST(test_json_writer_round_trips_a_document)
{
	const char *doc = "{\"s\":\"a\\\"b\\\\c\\n\\u0001\\u0000\xC3\xA9\",\"n\":-12,\"d\":0.1,"
	                  "\"big\":1e+300,\"t\":true,\"f\":false,\"z\":null,"
	                  "\"a\":[1,[],{}],\"o\":{\"k\":\"v\"}}";
	struct json_value *v = NULL, *w = NULL;
	char *out, *again;

	ck_assert_int_eq(parse(doc, &v), JSON_OK);
	out = gen(v);
	ck_assert_str_eq(out, doc);
	ck_assert_int_eq(parse(out, &w), JSON_OK);
	again = gen(w);
	ck_assert_str_eq(again, out);
	free(out);
	free(again);
	json_free(v);
	json_free(w);
}
END_TEST

START_TEST(test_json_writer_keeps_doubles_exact)
{
	struct json_value *v = NULL, *w = NULL;
	char *out;

	ck_assert_int_eq(parse("[0.30000000000000004,3.141592653589793,1e-7,123456789012345680000]", &v), JSON_OK);
	out = gen(v);
	ck_assert_int_eq(parse(out, &w), JSON_OK);
	for (size_t i = 0; i < v->len; i++)
		ck_assert(v->items[i]->d == w->items[i]->d);
	free(out);
	json_free(v);
	json_free(w);
}
END_TEST

START_TEST(test_json_built_objects_set_replace_and_grow)
{
	struct json_value *o = json_new_object();
	char key[16];
	size_t len;
	char *out;

	ck_assert_ptr_nonnull(o);
	ck_assert_int_eq(o->type, JSON_OBJECT);
	ck_assert_int_eq(json_object_set(o, "name", 4, json_new_string("ann", 3)), 0);
	ck_assert_int_eq(json_object_set(o, "name", 4, json_new_string("bob", 3)), 0);
	ck_assert_uint_eq(o->len, 1);
	ck_assert_str_eq(json_get_str(o, "name", &len), "bob");
	ck_assert_int_eq(json_object_set(o, "limitX", 5, json_new_string("25", 2)), 0);
	ck_assert_str_eq(json_get_str(o, "limit", NULL), "25");
	for (int i = 0; i < 20; i++) {
		snprintf(key, sizeof(key), "k%d", i);
		ck_assert_int_eq(json_object_set(o, key, strlen(key), json_new_string(key, strlen(key))), 0);
	}
	ck_assert_uint_eq(o->len, 22);
	ck_assert_str_eq(json_get_str(o, "k19", NULL), "k19");
	ck_assert_int_eq(json_object_set(o, "a\0b", 3, json_new_string("x", 1)), -1);
	ck_assert_int_eq(json_object_set(NULL, "a", 1, json_new_string("x", 1)), -1);
	ck_assert_int_eq(json_object_set(o, "a", 1, NULL), -1);
	json_free(o);

	o = json_new_object();
	ck_assert_int_eq(json_object_set(o, "q", 1, json_new_string("a\"b", 3)), 0);
	out = gen(o);
	ck_assert_str_eq(out, "{\"q\":\"a\\\"b\"}");
	free(out);
	json_free(o);
}
END_TEST

START_TEST(test_json_parsed_objects_accept_new_keys)
{
	struct json_value *v = NULL;
	char *out;

	ck_assert_int_eq(parse("{\"a\":1,\"b\":2}", &v), JSON_OK);
	ck_assert_int_eq(json_object_set(v, "b", 1, json_new_string("x", 1)), 0);
	ck_assert_int_eq(json_object_set(v, "c", 1, json_new_string("y", 1)), 0);
	ck_assert_int_eq(json_object_set(v, "d", 1, json_new_object()), 0);
	out = gen(v);
	ck_assert_str_eq(out, "{\"a\":1,\"b\":\"x\",\"c\":\"y\",\"d\":{}}");
	free(out);
	json_free(v);

	ck_assert_int_eq(parse("{}", &v), JSON_OK);
	ck_assert_int_eq(json_object_set(v, "k", 1, json_new_string("", 0)), 0);
	ck_assert_str_eq(json_get_str(v, "k", NULL), "");
	json_free(v);
}
END_TEST

START_TEST(test_json_status_strings_are_distinct)
{
	ck_assert_str_eq(json_status_str(JSON_OK), "ok");
	ck_assert_str_ne(json_status_str(JSON_ERR_SYNTAX), json_status_str(JSON_ERR_UTF8));
	ck_assert_str_ne(json_status_str(JSON_ERR_DEPTH), json_status_str(JSON_ERR_SIZE));
	ck_assert_ptr_nonnull(json_status_str(JSON_ERR_NOMEM));
}
END_TEST

static Suite *json_suite(void)
{
	const TTest *const tests[] = {
	    test_json_accepts_depth_64_and_rejects_65,
	    test_json_depth_error_is_reported_before_the_end_of_input,
	    test_json_rejects_input_over_the_size_limit,
	    test_json_utf8_check_rejects_every_malformed_form,
	    test_json_utf8_check_finds_bad_bytes_at_any_offset,
	    test_json_rejects_lone_surrogate_escapes,
	    test_json_accepts_surrogate_pairs_and_escaped_backslashes,
	    test_json_numbers_keep_int64_exactly_and_fall_back_to_double,
	    test_json_long_numbers_parse_and_infinite_ones_fail,
	    test_json_duplicate_keys_keep_the_last_value,
	    test_json_duplicate_keys_in_big_objects_keep_the_last_value,
	    test_json_accessors_return_typed_values_or_fail,
	    test_json_rejects_nul_in_object_keys,
	    test_json_rejects_trailing_garbage,
	    test_json_rejects_empty_input,
	    test_json_rejects_malformed_documents,
	    test_json_accepts_top_level_scalars,
	    test_json_writer_round_trips_a_document,
	    test_json_writer_keeps_doubles_exact,
	    test_json_built_objects_set_replace_and_grow,
	    test_json_parsed_objects_accept_new_keys,
	    test_json_status_strings_are_distinct,
	};
	Suite *s = suite_create("json");

	for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
		TCase *tc = tcase_create(tests[i]->name);
		tcase_set_timeout(tc, 10);
		tcase_add_test(tc, tests[i]);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(json_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
