/* test_validate.c - unit tests for src/validate.c: every rule type, the
 * details list, operator-injection objects, query-string integers and
 * code-point lengths. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_gen.h>

#include "../src/json.h"
#include "../src/validate.h"

static const struct vrule register_rules[] = {
    V_STRING("username", V_REQUIRED, 3, 20, .charset = V_CHARSET_WORD),
    V_EMAIL("email", V_REQUIRED),
    V_STRING("password", V_REQUIRED, 8, 128),
    V_END,
};

static const struct vrule patient_rules[] = {
    V_STRING("name", V_REQUIRED, 1, 100),
    V_DATE("dateOfBirth", V_OPTIONAL),
    V_ENUM("status", V_OPTIONAL, "active", "inactive", "discharged"),
    V_OBJECTID("externalId", V_OPTIONAL),
    V_BOOL("isActive", V_OPTIONAL),
    V_STRING("category", V_OPTIONAL, 0, 50),
    V_END,
};

static const struct vrule query_rules[] = {
    V_INT("page", V_FROM_STRING, 1, INT64_MAX),
    V_INT("limit", V_FROM_STRING, 1, 100),
    V_BOOL("mine", V_FROM_STRING),
    V_END,
};

static const struct vrule body_int_rules[] = {
    V_INT("limit", V_REQUIRED, 1, 100),
    V_END,
};

static struct json_value *doc(const char *s)
{
	struct json_value *v = NULL;
	ck_assert_int_eq(json_parse(s, strlen(s), 64, 0, &v), JSON_OK);
	return v;
}

/* Validates the JSON text s; returns the count and fills *e. */
static int run(const char *s, const struct vrule *rules, struct verrors *e)
{
	struct json_value *v = doc(s);
	int n = validate(v, rules, e);
	json_free(v);
	return n;
}

/* Builds a query-string-like object: every value a string. */
static struct json_value *query(const char *k1, const char *v1, const char *k2, const char *v2)
{
	struct json_value *o = json_new_object();
	ck_assert_ptr_nonnull(o);
	if (k1 != NULL)
		ck_assert_int_eq(json_object_set(o, k1, strlen(k1), json_new_string(v1, strlen(v1))), 0);
	if (k2 != NULL)
		ck_assert_int_eq(json_object_set(o, k2, strlen(k2), json_new_string(v2, strlen(v2))), 0);
	return o;
}

static int run_query(const char *k1, const char *v1, const char *k2, const char *v2, struct verrors *e)
{
	struct json_value *o = query(k1, v1, k2, v2);
	int n = validate(o, query_rules, e);
	json_free(o);
	return n;
}

START_TEST(test_validate_accepts_a_valid_registration)
{
	struct verrors e;

	ck_assert_int_eq(run("{\"username\":\"ann_1\",\"email\":\"ann@example.com\","
	                     "\"password\":\"correct horse\",\"extra\":{\"$gt\":1}}",
	                     register_rules, &e),
	                 0);
	ck_assert_int_eq(e.count, 0);
}
END_TEST

START_TEST(test_validate_details_list_every_failing_field_in_rule_order)
{
	struct verrors e;

	ck_assert_int_eq(run("{\"username\":\"a!\",\"email\":\"nope\"}", register_rules, &e), 3);
	ck_assert_str_eq(e.details[0].field, "username");
	ck_assert_str_eq(e.details[0].message, "username must be between 3 and 20 characters");
	ck_assert_str_eq(e.details[1].field, "email");
	ck_assert_str_eq(e.details[1].message, "email must be a valid email address");
	ck_assert_str_eq(e.details[2].field, "password");
	ck_assert_str_eq(e.details[2].message, "password is required");
	ck_assert_int_eq(e.truncated, 0);
}
END_TEST

START_TEST(test_validate_rejects_operator_injection_objects)
{
	struct verrors e;

	ck_assert_int_eq(run("{\"username\":{\"$ne\":null},\"email\":{\"$gt\":\"\"},"
	                     "\"password\":[\"12345678\"]}",
	                     register_rules, &e),
	                 3);
	ck_assert_str_eq(e.details[0].message, "username must be a string");
	ck_assert_str_eq(e.details[1].message, "email must be a string");
	ck_assert_str_eq(e.details[2].message, "password must be a string");
	ck_assert_int_eq(run("{\"name\":\"x\",\"status\":{\"$in\":[\"active\"]},"
	                     "\"externalId\":{\"$exists\":true},\"dateOfBirth\":[1]}",
	                     patient_rules, &e),
	                 3);
	ck_assert_str_eq(e.details[0].message, "dateOfBirth must be a string");
	ck_assert_str_eq(e.details[1].message, "status must be a string");
	ck_assert_str_eq(e.details[2].message, "externalId must be a string");
	ck_assert_int_eq(run("{\"limit\":{\"$gt\":0}}", body_int_rules, &e), 1);
	ck_assert_str_eq(e.details[0].message, "limit must be an integer between 1 and 100");
	ck_assert_int_eq(run("{\"name\":\"x\",\"isActive\":{\"$ne\":false}}", patient_rules, &e), 1);
	ck_assert_str_eq(e.details[0].message, "isActive must be a boolean");
}
END_TEST

START_TEST(test_validate_reports_a_non_object_body_as_one_body_detail)
{
	struct verrors e;

	ck_assert_int_eq(run("[{\"username\":\"ann\"}]", register_rules, &e), 1);
	ck_assert_str_eq(e.details[0].field, "body");
	ck_assert_str_eq(e.details[0].message, "body must be an object");
	ck_assert_int_eq(run("\"text\"", register_rules, &e), 1);
	ck_assert_str_eq(e.details[0].field, "body");
	ck_assert_int_eq(validate(NULL, register_rules, &e), 1);
	ck_assert_str_eq(e.details[0].field, "body");
}
END_TEST

START_TEST(test_validate_counts_string_length_in_code_points)
{
	static const struct vrule r[] = {V_STRING("name", V_REQUIRED, 3, 5), V_END};
	struct verrors e;

	ck_assert_int_eq(run("{\"name\":\"\xC3\xA9\xC3\xA9\xC3\xA9\"}", r, &e), 0); /* 6 bytes */
	ck_assert_int_eq(run("{\"name\":\"\xC3\xA9\xC3\xA9\"}", r, &e), 1);
	ck_assert_int_eq(run("{\"name\":\"\xF0\x9F\x98\x80\xE2\x82\xAC\xC3\xA9x\xF0\x9F\x98\x80\"}", r, &e),
	                 0); /* 5 code points, 14 bytes */
	ck_assert_int_eq(run("{\"name\":\"abcdef\"}", r, &e), 1);
	ck_assert_str_eq(e.details[0].message, "name must be between 3 and 5 characters");
	ck_assert_int_eq(validate_utf8_length("\xC3\xA9\xC3\xA9\xC3\xA9", 6), 3);
	ck_assert_int_eq(validate_utf8_length("", 0), 0);
	ck_assert_int_eq(validate_utf8_length("\xC3", 1), -1);
	ck_assert_int_eq(validate_utf8_length("\xED\xA0\x80", 3), -1);
}
END_TEST

START_TEST(test_validate_string_bounds_have_matching_messages)
{
	static const struct vrule r[] = {
	    V_STRING("code", V_REQUIRED, 4, 4),
	    V_STRING("bio", V_OPTIONAL, 0, 3),
	    V_STRING("title", V_OPTIONAL, 2, 0),
	    V_STRING("free", V_OPTIONAL, 0, 0),
	    V_END,
	};
	struct verrors e;

	ck_assert_int_eq(run("{\"code\":\"abc\",\"bio\":\"abcd\",\"title\":\"a\",\"free\":\"\"}", r, &e), 3);
	ck_assert_str_eq(e.details[0].message, "code must be exactly 4 characters");
	ck_assert_str_eq(e.details[1].message, "bio must be at most 3 characters");
	ck_assert_str_eq(e.details[2].message, "title must be at least 2 characters");
	ck_assert_int_eq(run("{\"code\":\"abcd\",\"bio\":\"\",\"title\":\"ab\"}", r, &e), 0);
}
END_TEST

START_TEST(test_validate_string_rejects_nul_and_invalid_utf8)
{
	static const struct vrule r[] = {V_STRING("name", V_REQUIRED, 1, 10), V_END};
	struct verrors e;
	struct json_value *o = json_new_object();

	ck_assert_int_eq(run("{\"name\":\"a\\u0000b\"}", r, &e), 1);
	ck_assert_str_eq(e.details[0].message, "name must not contain null characters");
	/* Query strings are percent-decoded bytes and may not be UTF-8. */
	ck_assert_int_eq(json_object_set(o, "name", 4, json_new_string("a\xFF", 2)), 0);
	ck_assert_int_eq(validate(o, r, &e), 1);
	ck_assert_str_eq(e.details[0].message, "name must be valid utf-8 text");
	json_free(o);
}
END_TEST

START_TEST(test_validate_word_charset_allows_only_letters_digits_underscore)
{
	struct verrors e;
	static const char *const bad[] = {"ann smith", "ann-1", "ann.x", "\xC3\xA9t\xC3\xA9", "ann$"};
	char buf[128];

	ck_assert_int_eq(
	    run("{\"username\":\"Ann_99\",\"email\":\"a@b.co\",\"password\":\"12345678\"}", register_rules, &e), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(buf, sizeof(buf), "{\"username\":\"%s\",\"email\":\"a@b.co\",\"password\":\"12345678\"}",
		         bad[i]);
		ck_assert_int_eq(run(buf, register_rules, &e), 1);
		ck_assert_str_eq(e.details[0].message, "username may only contain letters, numbers and underscores");
	}
}
END_TEST

START_TEST(test_validate_email_accepts_common_addresses_and_rejects_malformed_ones)
{
	static const char *const good[] = {
	    "a@b.co", "john.doe@example.com", "x+tag@sub.example.org", "o'neil@mail-host.io", "A_B@EXAMPLE.COM",
	};
	static const char *const bad[] = {
	    "",
	    "plain",
	    "@example.com",
	    "a@",
	    "a@b",
	    "a@b.",
	    "a@.com",
	    "a b@example.com",
	    "a@exa mple.com",
	    "a@@example.com",
	    "a@b@example.com",
	    ".a@example.com",
	    "a.@example.com",
	    "a..b@example.com",
	    "a@-example.com",
	    "a@example-.com",
	    "a@example..com",
	    "a@example.c",
	    "a@example.c0m",
	    "a\"b@example.com",
	    "a@ex_ample.com",
	    "\xC3\xA9@example.com",
	    "a@example.com\n",
	};
	char longer[300];

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		ck_assert_msg(validate_is_email(good[i], strlen(good[i])), "rejected %s", good[i]);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(!validate_is_email(bad[i], strlen(bad[i])), "accepted %s", bad[i]);

	/* 254 bytes is the limit: 64 + '@' + 189-byte domain ending in .com */
	memset(longer, 'a', sizeof(longer));
	longer[64] = '@';
	for (size_t i = 65 + 60; i < 254; i += 61)
		longer[i] = '.';
	memcpy(longer + 250, ".com", 4);
	ck_assert(validate_is_email(longer, 254));
	longer[250] = 'a';
	memcpy(longer + 251, ".com", 4);
	ck_assert(!validate_is_email(longer, 255));
	memset(longer, 'a', 65); /* 65-byte local part */
	longer[65] = '@';
	memcpy(longer + 66, "b.co", 4);
	ck_assert(!validate_is_email(longer, 70));
}
END_TEST

START_TEST(test_validate_enum_lists_the_allowed_values)
{
	struct verrors e;

	ck_assert_int_eq(run("{\"name\":\"x\",\"status\":\"inactive\"}", patient_rules, &e), 0);
	ck_assert_int_eq(run("{\"name\":\"x\",\"status\":\"Active\"}", patient_rules, &e), 1);
	ck_assert_str_eq(e.details[0].field, "status");
	ck_assert_str_eq(e.details[0].message, "status must be one of: active, inactive, discharged");
	ck_assert_int_eq(run("{\"name\":\"x\",\"status\":\"active\\u0000\"}", patient_rules, &e), 1);
	ck_assert_int_eq(run("{\"name\":\"x\",\"status\":\"\"}", patient_rules, &e), 1);
}
END_TEST

START_TEST(test_validate_integer_checks_type_and_range)
{
	struct verrors e;

	ck_assert_int_eq(run("{\"limit\":1}", body_int_rules, &e), 0);
	ck_assert_int_eq(run("{\"limit\":100}", body_int_rules, &e), 0);
	ck_assert_int_eq(run("{\"limit\":0}", body_int_rules, &e), 1);
	ck_assert_str_eq(e.details[0].message, "limit must be an integer between 1 and 100");
	ck_assert_int_eq(run("{\"limit\":101}", body_int_rules, &e), 1);
	ck_assert_int_eq(run("{\"limit\":1.5}", body_int_rules, &e), 1);
	ck_assert_int_eq(run("{\"limit\":true}", body_int_rules, &e), 1);
	ck_assert_int_eq(run("{\"limit\":50.0}", body_int_rules, &e), 1);
	ck_assert_int_eq(run("{}", body_int_rules, &e), 1);
	ck_assert_str_eq(e.details[0].message, "limit is required");
}
END_TEST

START_TEST(test_validate_integer_in_a_json_body_must_not_be_a_string)
{
	struct verrors e;

	ck_assert_int_eq(run("{\"limit\":\"25\"}", body_int_rules, &e), 1);
	ck_assert_str_eq(e.details[0].message, "limit must be an integer between 1 and 100");
	ck_assert_int_eq(run("{\"limit\":9223372036854775808}", body_int_rules, &e), 1);
}
END_TEST

START_TEST(test_validate_query_string_integers_are_decimal_strings)
{
	struct verrors e;
	static const char *const bad[] = {
	    "abc", "1.5", "", "-", " 5", "5 ", "+5", "0x10", "1e2", "101", "0", "-1", "99999999999999999999"};
	struct json_value *q;
	int64_t v = 0;

	ck_assert_int_eq(run_query("page", "2", "limit", "25", &e), 0);
	ck_assert_int_eq(run_query("limit", "100", NULL, NULL, &e), 0);
	ck_assert_int_eq(run_query("limit", "007", NULL, NULL, &e), 0);
	ck_assert_int_eq(run_query(NULL, NULL, NULL, NULL, &e), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(run_query("limit", bad[i], NULL, NULL, &e) == 1, "accepted '%s'", bad[i]);
		ck_assert_str_eq(e.details[0].message, "limit must be an integer between 1 and 100");
	}
	ck_assert_int_eq(run_query("page", "0", NULL, NULL, &e), 1);
	ck_assert_str_eq(e.details[0].message, "page must be an integer greater than or equal to 1");

	q = query("limit", "25", "page", "x");
	ck_assert_int_eq(validate_get_int(q, "limit", 10, &v), 0);
	ck_assert_int_eq(v, 25);
	ck_assert_int_eq(validate_get_int(q, "missing", 10, &v), 0);
	ck_assert_int_eq(v, 10);
	ck_assert_int_eq(validate_get_int(q, "page", 1, &v), -1);
	json_free(q);

	ck_assert_int_eq(validate_parse_int("-9223372036854775808", 20, &v), 0);
	ck_assert(v == INT64_MIN);
	ck_assert_int_eq(validate_parse_int("9223372036854775807", 19, &v), 0);
	ck_assert(v == INT64_MAX);
	ck_assert_int_eq(validate_parse_int("9223372036854775808", 19, &v), -1);
	ck_assert_int_eq(validate_parse_int("-0", 2, &v), 0);
	ck_assert_int_eq(v, 0);
}
END_TEST

START_TEST(test_validate_integer_messages_follow_open_bounds)
{
	static const struct vrule r[] = {
	    V_INT("a", V_OPTIONAL, 0, INT64_MAX),
	    V_INT("b", V_OPTIONAL, INT64_MIN, 10),
	    V_INT("c", V_OPTIONAL, INT64_MIN, INT64_MAX),
	    V_END,
	};
	struct verrors e;

	ck_assert_int_eq(run("{\"a\":-1,\"b\":11,\"c\":\"1\"}", r, &e), 3);
	ck_assert_str_eq(e.details[0].message, "a must be an integer greater than or equal to 0");
	ck_assert_str_eq(e.details[1].message, "b must be an integer less than or equal to 10");
	ck_assert_str_eq(e.details[2].message, "c must be an integer");
	ck_assert_int_eq(run("{\"a\":9223372036854775807,\"b\":-9223372036854775808,\"c\":0}", r, &e), 0);
}
END_TEST

START_TEST(test_validate_boolean_accepts_only_booleans)
{
	struct verrors e;

	ck_assert_int_eq(run("{\"name\":\"x\",\"isActive\":false}", patient_rules, &e), 0);
	ck_assert_int_eq(run("{\"name\":\"x\",\"isActive\":\"true\"}", patient_rules, &e), 1);
	ck_assert_str_eq(e.details[0].message, "isActive must be a boolean");
	ck_assert_int_eq(run("{\"name\":\"x\",\"isActive\":1}", patient_rules, &e), 1);
	ck_assert_int_eq(run_query("mine", "true", NULL, NULL, &e), 0);
	ck_assert_int_eq(run_query("mine", "false", NULL, NULL, &e), 0);
	ck_assert_int_eq(run_query("mine", "yes", NULL, NULL, &e), 1);
	ck_assert_str_eq(e.details[0].message, "mine must be a boolean");
}
END_TEST

START_TEST(test_validate_objectid_is_24_hex_digits)
{
	struct verrors e;

	ck_assert(validate_is_objectid("507f1f77bcf86cd799439011", 24));
	ck_assert(validate_is_objectid("507F1F77BCF86CD799439011", 24));
	ck_assert(!validate_is_objectid("507f1f77bcf86cd79943901", 23));
	ck_assert(!validate_is_objectid("507f1f77bcf86cd7994390111", 25));
	ck_assert(!validate_is_objectid("507f1f77bcf86cd79943901g", 24));
	ck_assert(!validate_is_objectid("", 0));
	ck_assert_int_eq(run("{\"name\":\"x\",\"externalId\":\"507f1f77bcf86cd799439011\"}", patient_rules, &e), 0);
	ck_assert_int_eq(run("{\"name\":\"x\",\"externalId\":\"12\"}", patient_rules, &e), 1);
	ck_assert_str_eq(e.details[0].message, "externalId must be a valid id");
}
END_TEST

START_TEST(test_validate_date_must_be_a_real_calendar_date)
{
	static const char *const good[] = {"2024-02-29", "2000-02-29", "1999-12-31", "0001-01-01", "2023-04-30"};
	static const char *const bad[] = {"2023-02-29",
	                                  "1900-02-29",
	                                  "2024-13-01",
	                                  "2024-00-10",
	                                  "2024-04-31",
	                                  "2024-01-00",
	                                  "2024-1-01",
	                                  "2024/01/01",
	                                  "24-01-01",
	                                  "2024-01-01T00:00:00Z",
	                                  "0000-01-01",
	                                  "2024-0a-01",
	                                  ""};
	struct verrors e;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		ck_assert_msg(validate_is_date(good[i], strlen(good[i])), "rejected %s", good[i]);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(!validate_is_date(bad[i], strlen(bad[i])), "accepted %s", bad[i]);
	ck_assert_int_eq(run("{\"name\":\"x\",\"dateOfBirth\":\"1990-02-30\"}", patient_rules, &e), 1);
	ck_assert_str_eq(e.details[0].message, "dateOfBirth must be a valid date (yyyy-mm-dd)");
}
END_TEST

START_TEST(test_validate_null_counts_as_absent)
{
	struct verrors e;

	ck_assert_int_eq(
	    run("{\"name\":\"x\",\"status\":null,\"dateOfBirth\":null,\"isActive\":null}", patient_rules, &e), 0);
	ck_assert_int_eq(run("{\"name\":null}", patient_rules, &e), 1);
	ck_assert_str_eq(e.details[0].message, "name is required");
}
END_TEST

START_TEST(test_validate_keeps_at_most_16_details)
{
	static const struct vrule many[] = {
	    V_BOOL("f0", V_REQUIRED),
	    V_BOOL("f1", V_REQUIRED),
	    V_BOOL("f2", V_REQUIRED),
	    V_BOOL("f3", V_REQUIRED),
	    V_BOOL("f4", V_REQUIRED),
	    V_BOOL("f5", V_REQUIRED),
	    V_BOOL("f6", V_REQUIRED),
	    V_BOOL("f7", V_REQUIRED),
	    V_BOOL("f8", V_REQUIRED),
	    V_BOOL("f9", V_REQUIRED),
	    V_BOOL("f10", V_REQUIRED),
	    V_BOOL("f11", V_REQUIRED),
	    V_BOOL("f12", V_REQUIRED),
	    V_BOOL("f13", V_REQUIRED),
	    V_BOOL("f14", V_REQUIRED),
	    V_BOOL("f15", V_REQUIRED),
	    V_BOOL("f16", V_REQUIRED),
	    V_BOOL("f17", V_REQUIRED),
	    V_END,
	};
	struct verrors e;

	ck_assert_int_eq(run("{}", many, &e), VERR_MAX);
	ck_assert_int_eq(e.truncated, 1);
	ck_assert_str_eq(e.details[15].field, "f15");
	ck_assert_int_eq(run("{\"f0\":true}", register_rules, &e), 3);
	ck_assert_int_eq(e.truncated, 0);
}
END_TEST

START_TEST(test_validate_writes_details_as_a_json_array)
{
	struct verrors e;
	yajl_gen g = yajl_gen_alloc(NULL);
	const unsigned char *buf;
	size_t len;

	ck_assert_ptr_nonnull(g);
	ck_assert_int_eq(run("{\"username\":\"ann\",\"email\":\"x\",\"password\":\"short\"}", register_rules, &e), 2);
	ck_assert_int_eq(validate_write_details(g, &e), 0);
	ck_assert_int_eq(yajl_gen_get_buf(g, &buf, &len), yajl_gen_status_ok);
	ck_assert_str_eq((const char *)buf,
	                 "[{\"field\":\"email\",\"message\":\"email must be a valid email address\"},"
	                 "{\"field\":\"password\",\"message\":\"password must be between 8 and 128 "
	                 "characters\"}]");
	yajl_gen_free(g);

	g = yajl_gen_alloc(NULL);
	ck_assert_int_eq(
	    run("{\"username\":\"ann\",\"email\":\"a@b.co\",\"password\":\"12345678\"}", register_rules, &e), 0);
	ck_assert_int_eq(validate_write_details(g, &e), 0);
	ck_assert_int_eq(yajl_gen_get_buf(g, &buf, &len), yajl_gen_status_ok);
	ck_assert_str_eq((const char *)buf, "[]");
	yajl_gen_free(g);
}
END_TEST

static Suite *validate_suite(void)
{
	const TTest *const tests[] = {
	    test_validate_accepts_a_valid_registration,
	    test_validate_details_list_every_failing_field_in_rule_order,
	    test_validate_rejects_operator_injection_objects,
	    test_validate_reports_a_non_object_body_as_one_body_detail,
	    test_validate_counts_string_length_in_code_points,
	    test_validate_string_bounds_have_matching_messages,
	    test_validate_string_rejects_nul_and_invalid_utf8,
	    test_validate_word_charset_allows_only_letters_digits_underscore,
	    test_validate_email_accepts_common_addresses_and_rejects_malformed_ones,
	    test_validate_enum_lists_the_allowed_values,
	    test_validate_integer_checks_type_and_range,
	    test_validate_integer_in_a_json_body_must_not_be_a_string,
	    test_validate_query_string_integers_are_decimal_strings,
	    test_validate_integer_messages_follow_open_bounds,
	    test_validate_boolean_accepts_only_booleans,
	    test_validate_objectid_is_24_hex_digits,
	    test_validate_date_must_be_a_real_calendar_date,
	    test_validate_null_counts_as_absent,
	    test_validate_keeps_at_most_16_details,
	    test_validate_writes_details_as_a_json_array,
	};
	Suite *s = suite_create("validate");

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
	SRunner *sr = srunner_create(validate_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
