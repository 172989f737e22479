/* validate.h - declarative validation of request bodies and query strings.
 *
 * A handler describes its input as a static const table of rules and
 * gets back every failing field at once, as the `details` of a 400
 * VALIDATION_ERROR (SPEC section 5):
 *
 *   static const struct vrule register_rules[] = {
 *           V_STRING("username", V_REQUIRED, 3, 20, .charset = V_CHARSET_WORD),
 *           V_EMAIL("email", V_REQUIRED),
 *           V_STRING("password", V_REQUIRED, 8, 128),
 *           V_END
 *   };
 *   struct verrors errs;
 *   if (validate(body, register_rules, &errs) > 0) ... reply 400 with errs
 *
 * Values are typed: an object or array where a scalar is expected fails
 * ("email must be a string"), which is what keeps operator injection such
 * as {"email": {"$gt": ""}} away from the database. A JSON null counts as
 * absent: it satisfies an optional rule and fails a required one with
 * "<field> is required". Fields without a rule are ignored. Declare rule
 * tables at file scope (V_ENUM builds its list with a compound literal).
 */
#ifndef RESIL_VALIDATE_H
#define RESIL_VALIDATE_H

#include <stddef.h>
#include <stdint.h>

#include "json.h"

enum vrule_type {
	V_T_END = 0,
	V_T_STRING, /* min..max code points; max 0 = no upper bound */
	V_T_EMAIL,  /* pragmatic local@domain.tld, at most 254 bytes */
	V_T_ENUM,   /* one of choices */
	V_T_INT,    /* integer in min..max */
	V_T_BOOL,
	V_T_OBJECTID, /* 24 hex digits */
	V_T_DATE      /* YYYY-MM-DD, a real calendar date */
};

/* Rule flags. */
#define V_OPTIONAL 0u
#define V_REQUIRED 1u
/* Integers and booleans may also arrive as strings ("25", "true"): for
 * query strings and urlencoded bodies, whose values are all strings. */
#define V_FROM_STRING 2u

enum vcharset {
	V_CHARSET_ANY = 0,
	V_CHARSET_WORD /* [A-Za-z0-9_] */
};

struct vrule {
	const char *field; /* NULL ends the table */
	enum vrule_type type;
	unsigned flags;
	int64_t min, max;
	enum vcharset charset;
	const char *const *choices; /* V_T_ENUM, NULL-terminated */
};

#define V_STRING(name, fl, lo, hi, ...)                                                                                \
	{                                                                                                              \
		.field = (name), .type = V_T_STRING, .flags = (fl), .min = (lo), .max = (hi), __VA_ARGS__              \
	}
#define V_EMAIL(name, fl)                                                                                              \
	{                                                                                                              \
		.field = (name), .type = V_T_EMAIL, .flags = (fl)                                                      \
	}
#define V_ENUM(name, fl, ...)                                                                                          \
	{                                                                                                              \
		.field = (name), .type = V_T_ENUM, .flags = (fl), .choices = (const char *const[])                     \
		{                                                                                                      \
			__VA_ARGS__, NULL                                                                              \
		}                                                                                                      \
	}
/* Use INT64_MIN / INT64_MAX for an open bound. */
#define V_INT(name, fl, lo, hi)                                                                                        \
	{                                                                                                              \
		.field = (name), .type = V_T_INT, .flags = (fl), .min = (lo), .max = (hi)                              \
	}
#define V_BOOL(name, fl)                                                                                               \
	{                                                                                                              \
		.field = (name), .type = V_T_BOOL, .flags = (fl)                                                       \
	}
#define V_OBJECTID(name, fl)                                                                                           \
	{                                                                                                              \
		.field = (name), .type = V_T_OBJECTID, .flags = (fl)                                                   \
	}
#define V_DATE(name, fl)                                                                                               \
	{                                                                                                              \
		.field = (name), .type = V_T_DATE, .flags = (fl)                                                       \
	}
#define V_END                                                                                                          \
	{                                                                                                              \
		.field = NULL                                                                                          \
	}

#define VERR_MAX 16
#define VERR_FIELD_MAX 64
#define VERR_MSG_MAX 192

struct verror {
	char field[VERR_FIELD_MAX];
	char message[VERR_MSG_MAX]; /* lower-case English, starts with the field */
};

struct verrors {
	int count;     /* details filled, at most VERR_MAX */
	int truncated; /* 1 when more fields failed than fit */
	struct verror details[VERR_MAX];
};

/* Check body against rules (terminated by V_END); fills *errs (no heap)
 * and returns the number of details, 0 when valid. A body that is not an
 * object (or NULL) gives one detail with field "body". */
int validate(const struct json_value *body, const struct vrule *rules, struct verrors *errs);

/* Append the details as a JSON array [{"field": ..., "message": ...}] to
 * a yajl_gen (void * keeps yajl out of this header). 0 or -1. */
int validate_write_details(void *yajl_gen, const struct verrors *e);

/* Read an integer field that passed a V_INT rule: a JSON integer or a
 * decimal string. Missing or null gives dflt. 0, or -1 if neither. */
int validate_get_int(const struct json_value *obj, const char *field, int64_t dflt, int64_t *out);

/* Individual checks, 1 if s[0..len) qualifies, else 0. */
int validate_is_email(const char *s, size_t len);
int validate_is_objectid(const char *s, size_t len);
int validate_is_date(const char *s, size_t len);
/* Strict decimal integer (optional '-', digits only, fits int64): 0 and
 * *out set, or -1 ("", "abc", "1.5", " 1" all fail). */
int validate_parse_int(const char *s, size_t len, int64_t *out);

/* Number of Unicode code points in s[0..len), or -1 if it is not valid
 * UTF-8. */
long validate_utf8_length(const char *s, size_t len);

#endif
