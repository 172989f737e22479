/* json.h - JSON documents for request bodies (parsed with yajl's event
 * API into a small tree, with depth and size limits and strict UTF-8),
 * typed accessors, and a writer for responses on top of yajl_gen.
 */
#ifndef RESIL_JSON_H
#define RESIL_JSON_H

#include <stddef.h>
#include <stdint.h>

enum json_type { JSON_NULL = 0, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT };

struct json_value {
	enum json_type type;
	int is_int;                /* JSON_NUMBER that is an integer fitting int64 */
	int64_t i;                 /* valid when is_int */
	double d;                  /* JSON_NUMBER, always set */
	int b;                     /* JSON_BOOL */
	char *s;                   /* JSON_STRING, NUL-terminated (may contain NUL: use len) */
	size_t len;                /* JSON_STRING length; JSON_ARRAY / JSON_OBJECT item count */
	char **keys;               /* JSON_OBJECT keys (NUL-terminated), len entries */
	struct json_value **items; /* JSON_ARRAY items / JSON_OBJECT values */
};

enum json_status {
	JSON_OK = 0,
	JSON_ERR_SYNTAX, /* not valid JSON */
	JSON_ERR_UTF8,   /* bytes are not strict UTF-8 (overlong, surrogate, ...) */
	JSON_ERR_DEPTH,  /* nesting deeper than max_depth */
	JSON_ERR_SIZE,   /* input longer than max_bytes */
	JSON_ERR_NOMEM
};

/* Parse len bytes. max_depth: containers nested deeper fail (64 per SPEC).
 * max_bytes: 0 = unlimited. On success *out owns a tree freed by
 * json_free(). Duplicate object keys: the last one wins. */
enum json_status json_parse(const char *buf, size_t len, int max_depth, size_t max_bytes, struct json_value **out);
void json_free(struct json_value *v);
const char *json_status_str(enum json_status st);

/* 1 if s[0..len) is well-formed UTF-8 per RFC 3629 (no overlong forms,
 * no surrogates U+D800..DFFF, nothing above U+10FFFF). */
int json_utf8_valid(const char *s, size_t len);

/* Accessors: NULL / -1 when missing or of another type. */
const struct json_value *json_get(const struct json_value *obj, const char *key);
const char *json_get_str(const struct json_value *obj, const char *key, size_t *len);
int json_get_int(const struct json_value *obj, const char *key, int64_t *out);
int json_get_bool(const struct json_value *obj, const char *key, int *out);

/* Build values (used for urlencoded bodies and query strings, whose
 * values are all strings). Return NULL on allocation failure. */
struct json_value *json_new_object(void);
struct json_value *json_new_string(const char *s, size_t len);
/* Takes ownership of val; replaces an existing key. 0 or -1. */
int json_object_set(struct json_value *obj, const char *key, size_t keylen, struct json_value *val);

/* Writer: append a compact JSON serialisation of v to a yajl_gen
 * (declared as void* so that callers need not see yajl). 0 or -1. */
int json_gen_value(void *yajl_gen_handle, const struct json_value *v);

/* Append a NUL-terminated string (a key or a value) to a yajl_gen: the
 * one spelling of what response writers do most. */
#include <string.h>
#include <yajl/yajl_gen.h>
static inline yajl_gen_status json_gen_cstr(yajl_gen g, const char *s)
{
	return yajl_gen_string(g, (const unsigned char *)s, strlen(s));
}

#endif
