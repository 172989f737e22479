/* validate.c - the rule checker behind validate.h.
 *
 * One pass over the rule table; each rule looks its field up in the
 * object, checks type first (so objects and arrays never reach a string,
 * number or enum check) and then the constraint, and appends at most one
 * message per field. Errors go to a fixed-size caller-owned struct: no
 * allocation on this path. String lengths are Unicode code points.
 */
#include "validate.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <yajl/yajl_gen.h>

__attribute__((format(printf, 3, 4))) static void add_error(struct verrors *e, const char *field, const char *fmt, ...)
{
	struct verror *d;
	va_list ap;

	if (e->count >= VERR_MAX) {
		e->truncated = 1;
		return;
	}
	d = &e->details[e->count++];
	snprintf(d->field, sizeof(d->field), "%s", field);
	va_start(ap, fmt);
	vsnprintf(d->message, sizeof(d->message), fmt, ap);
	va_end(ap);
}

/* ---- individual checks ------------------------------------------------ */

long validate_utf8_length(const char *s, size_t len)
{
	long n = 0;

	if (!json_utf8_valid(s, len))
		return -1;
	for (size_t i = 0; i < len; i++)
		n += ((unsigned char)s[i] & 0xC0) != 0x80;
	return n;
}

int validate_parse_int(const char *s, size_t len, int64_t *out)
{
	size_t i = 0;
	int neg = 0;
	uint64_t acc = 0, limit;

	if (s == NULL)
		return -1;
	if (len > 0 && s[0] == '-') {
		neg = 1;
		i = 1;
	}
	if (i == len)
		return -1;
	limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	for (; i < len; i++) {
		unsigned dg = (unsigned)((unsigned char)s[i] - '0');
		if (dg > 9 || acc > (limit - dg) / 10)
			return -1;
		acc = acc * 10 + dg;
	}
	*out = !neg ? (int64_t)acc : acc == 0 ? 0 : -(int64_t)(acc - 1) - 1;
	return 0;
}

static int is_alpha(unsigned c)
{
	return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}

static int is_alnum(unsigned c)
{
	return is_alpha(c) || (c >= '0' && c <= '9');
}

static int is_hex(unsigned c)
{
	return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

/* RFC 5322 atext: what may appear in an unquoted local part besides '.'. */
static int is_atext(unsigned c)
{
	return is_alnum(c) || (c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", (int)c) != NULL);
}

/* Pragmatic rather than RFC 5322 complete: dot-atom local part (no
 * quoted strings), one '@', two or more LDH labels, an alphabetic TLD. */
int validate_is_email(const char *s, size_t len)
{
	const char *at, *d;
	size_t local, dlen, lab = 0, labels = 0, tld = 0;

	if (s == NULL || len == 0 || len > 254)
		return 0;
	at = memchr(s, '@', len);
	if (at == NULL)
		return 0;
	local = (size_t)(at - s);
	d = at + 1;
	dlen = len - local - 1;
	if (local == 0 || local > 64 || dlen == 0)
		return 0;
	for (size_t i = 0; i < local; i++) {
		unsigned c = (unsigned char)s[i];
		if (c == '.') {
			if (i == 0 || i == local - 1 || s[i - 1] == '.')
				return 0;
		} else if (!is_atext(c)) {
			return 0;
		}
	}
	for (size_t i = 0; i < dlen; i++) {
		unsigned c = (unsigned char)d[i];
		if (c == '.') {
			if (lab == 0 || d[i - 1] == '-')
				return 0;
			labels++;
			lab = 0;
			tld = i + 1;
		} else if (is_alnum(c) || c == '-') {
			if ((lab == 0 && c == '-') || ++lab > 63)
				return 0;
		} else {
			return 0; /* spaces, a second '@', anything else */
		}
	}
	if (lab < 2 || labels == 0)
		return 0;
	for (size_t i = tld; i < dlen; i++)
		if (!is_alpha((unsigned char)d[i]))
			return 0;
	return 1;
}

int validate_is_objectid(const char *s, size_t len)
{
	if (s == NULL || len != 24)
		return 0;
	for (size_t i = 0; i < len; i++)
		if (!is_hex((unsigned char)s[i]))
			return 0;
	return 1;
}

static int digits(const char *s, size_t n, int *out)
{
	int v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	*out = v;
	return 0;
}

int validate_is_date(const char *s, size_t len)
{
	static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int y, m, d, dim;

	if (s == NULL || len != 10 || s[4] != '-' || s[7] != '-')
		return 0;
	if (digits(s, 4, &y) != 0 || digits(s + 5, 2, &m) != 0 || digits(s + 8, 2, &d) != 0)
		return 0;
	if (y < 1 || m < 1 || m > 12 || d < 1)
		return 0;
	dim = mdays[m - 1];
	if (m == 2 && y % 4 == 0 && (y % 100 != 0 || y % 400 == 0))
		dim = 29;
	return d <= dim;
}

/* ---- rules ------------------------------------------------------------ */

static const char *plural(int64_t n)
{
	return n == 1 ? "character" : "characters";
}

static void check_string(const struct vrule *r, const struct json_value *v, struct verrors *e)
{
	long n;
	int64_t lo = r->min, hi = r->max;

	if (memchr(v->s, '\0', v->len) != NULL) {
		add_error(e, r->field, "%s must not contain null characters", r->field);
		return;
	}
	n = validate_utf8_length(v->s, v->len);
	if (n < 0) {
		add_error(e, r->field, "%s must be valid utf-8 text", r->field);
		return;
	}
	if (n < lo || (hi > 0 && n > hi)) {
		if (hi > 0 && lo == hi)
			add_error(e, r->field, "%s must be exactly %" PRId64 " %s", r->field, lo, plural(lo));
		else if (hi > 0 && lo > 0)
			add_error(e, r->field, "%s must be between %" PRId64 " and %" PRId64 " characters", r->field,
			          lo, hi);
		else if (hi > 0)
			add_error(e, r->field, "%s must be at most %" PRId64 " %s", r->field, hi, plural(hi));
		else
			add_error(e, r->field, "%s must be at least %" PRId64 " %s", r->field, lo, plural(lo));
		return;
	}
	if (r->charset == V_CHARSET_WORD) {
		for (size_t i = 0; i < v->len; i++) {
			unsigned c = (unsigned char)v->s[i];
			if (!is_alnum(c) && c != '_') {
				add_error(e, r->field, "%s may only contain letters, numbers and underscores",
				          r->field);
				return;
			}
		}
	}
}

static void check_enum(const struct vrule *r, const struct json_value *v, struct verrors *e)
{
	char msg[VERR_MSG_MAX];
	size_t off;
	int n;

	for (const char *const *c = r->choices; c != NULL && *c != NULL; c++)
		if (strlen(*c) == v->len && memcmp(*c, v->s, v->len) == 0)
			return;
	n = snprintf(msg, sizeof(msg), "%s must be one of: ", r->field);
	off = n < 0 ? 0 : (size_t)n;
	for (const char *const *c = r->choices; c != NULL && *c != NULL && off < sizeof(msg); c++) {
		n = snprintf(msg + off, sizeof(msg) - off, "%s%s", c == r->choices ? "" : ", ", *c);
		if (n < 0)
			break;
		off += (size_t)n;
	}
	add_error(e, r->field, "%s", msg);
}

static void int_error(const struct vrule *r, struct verrors *e)
{
	if (r->min != INT64_MIN && r->max != INT64_MAX)
		add_error(e, r->field, "%s must be an integer between %" PRId64 " and %" PRId64, r->field, r->min,
		          r->max);
	else if (r->min != INT64_MIN)
		add_error(e, r->field, "%s must be an integer greater than or equal to %" PRId64, r->field, r->min);
	else if (r->max != INT64_MAX)
		add_error(e, r->field, "%s must be an integer less than or equal to %" PRId64, r->field, r->max);
	else
		add_error(e, r->field, "%s must be an integer", r->field);
}

/* A JSON integer, or with V_FROM_STRING a decimal string. 0 or -1. */
static int int_value(const struct json_value *v, unsigned flags, int64_t *out)
{
	if (v->type == JSON_NUMBER && v->is_int) {
		*out = v->i;
		return 0;
	}
	if (v->type == JSON_STRING && (flags & V_FROM_STRING))
		return validate_parse_int(v->s, v->len, out);
	return -1;
}

static int is_lit(const struct json_value *v, const char *lit)
{
	return v->len == strlen(lit) && memcmp(v->s, lit, v->len) == 0;
}

static void check_value(const struct vrule *r, const struct json_value *v, struct verrors *e)
{
	int64_t i;

	switch (r->type) {
	case V_T_INT:
		if (int_value(v, r->flags, &i) != 0 || i < r->min || i > r->max)
			int_error(r, e);
		return;
	case V_T_BOOL:
		if (v->type != JSON_BOOL && !((r->flags & V_FROM_STRING) && v->type == JSON_STRING &&
		                              (is_lit(v, "true") || is_lit(v, "false"))))
			add_error(e, r->field, "%s must be a boolean", r->field);
		return;
	default: break;
	}
	if (v->type != JSON_STRING) {
		add_error(e, r->field, "%s must be a string", r->field);
		return;
	}
	switch (r->type) {
	case V_T_STRING: check_string(r, v, e); break;
	case V_T_EMAIL:
		if (!validate_is_email(v->s, v->len))
			add_error(e, r->field, "%s must be a valid email address", r->field);
		break;
	case V_T_ENUM: check_enum(r, v, e); break;
	case V_T_OBJECTID:
		if (!validate_is_objectid(v->s, v->len))
			add_error(e, r->field, "%s must be a valid id", r->field);
		break;
	case V_T_DATE:
		if (!validate_is_date(v->s, v->len))
			add_error(e, r->field, "%s must be a valid date (yyyy-mm-dd)", r->field);
		break;
	default: add_error(e, r->field, "%s has no valid rule", r->field); break;
	}
}

int validate(const struct json_value *body, const struct vrule *rules, struct verrors *errs)
{
	errs->count = 0;
	errs->truncated = 0;
	if (body == NULL || body->type != JSON_OBJECT) {
		add_error(errs, "body", "body must be an object");
		return errs->count;
	}
	for (const struct vrule *r = rules; r != NULL && r->field != NULL; r++) {
		const struct json_value *v = json_get(body, r->field);
		if (v == NULL || v->type == JSON_NULL) {
			if (r->flags & V_REQUIRED)
				add_error(errs, r->field, "%s is required", r->field);
			continue;
		}
		check_value(r, v, errs);
	}
	return errs->count;
}

int validate_get_int(const struct json_value *obj, const char *field, int64_t dflt, int64_t *out)
{
	const struct json_value *v = json_get(obj, field);

	if (v == NULL || v->type == JSON_NULL) {
		*out = dflt;
		return 0;
	}
	return int_value(v, V_FROM_STRING, out);
}

static int gen_str(yajl_gen g, const char *s)
{
	return yajl_gen_string(g, (const unsigned char *)s, strlen(s)) == yajl_gen_status_ok ? 0 : -1;
}

int validate_write_details(void *yajl_gen_handle, const struct verrors *e)
{
	yajl_gen g = yajl_gen_handle;

	if (g == NULL || e == NULL || yajl_gen_array_open(g) != yajl_gen_status_ok)
		return -1;
	for (int i = 0; i < e->count && i < VERR_MAX; i++) {
		if (yajl_gen_map_open(g) != yajl_gen_status_ok || gen_str(g, "field") != 0 ||
		    gen_str(g, e->details[i].field) != 0 || gen_str(g, "message") != 0 ||
		    gen_str(g, e->details[i].message) != 0 || yajl_gen_map_close(g) != yajl_gen_status_ok)
			return -1;
	}
	return yajl_gen_array_close(g) == yajl_gen_status_ok ? 0 : -1;
}
