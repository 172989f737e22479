/* json.c - JSON documents for request bodies and responses.
 *
 * Parsing runs in three steps over the raw bytes: a size check, a strict
 * RFC 3629 UTF-8 check (yajl's own check lets overlong forms and encoded
 * surrogates through, so it is switched off), and a scan of \u escapes
 * for lone surrogates (yajl turns them into '?' or into encoded
 * surrogates). Then yajl's event parser drives a small tree builder:
 * children wait on a scratch stack until their container closes, so each
 * container is allocated once at its final size, with its item and key
 * pointers and its key bytes in the same block; strings live in their
 * node's block. Nesting is counted as containers open, so an attack of
 * deep nesting stops at the first bracket past the limit.
 *
 * Nodes built by json_new_object()/json_object_set() keep their arrays in
 * separate blocks (capacity = arr_cap(len)); a parsed object that gets
 * json_object_set() is converted to that form first.
 */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>

/* A value waiting for its container to close; koff/klen locate its key
 * in parser.keys when the container is an object. */
struct pending {
	struct json_value *v;
	size_t koff;
	size_t klen;
};

struct frame {
	enum json_type type;
	size_t start;  /* first pending entry of this container */
	size_t kstart; /* first key byte of this container */
};

struct parser {
	struct pending *stack;
	size_t n, cap;
	struct frame *frames;
	size_t nframes, fcap;
	char *keys;
	size_t klen, kcap;
	struct json_value *root;
	int max_depth;
	enum json_status err;
};

/* ---- UTF-8 and escapes ------------------------------------------------ */

int json_utf8_valid(const char *str, size_t len)
{
	if (len == 0)
		return 1; /* also for str == NULL (no pointer arithmetic on NULL) */
	const unsigned char *s = (const unsigned char *)str;
	const unsigned char *end = s + len;

	while (s < end) {
		while (end - s >= 16) {
			uint64_t a, b;
			memcpy(&a, s, 8);
			memcpy(&b, s + 8, 8);
			if ((a | b) & UINT64_C(0x8080808080808080))
				break;
			s += 16;
		}
		if (s == end)
			break;
		unsigned c = *s;
		if (c < 0x80) {
			s++;
			continue;
		}
		if (c < 0xC2) /* continuation byte, or C0/C1 overlong lead */
			return 0;
		if (c < 0xE0) {
			if (end - s < 2 || (s[1] & 0xC0) != 0x80)
				return 0;
			s += 2;
			continue;
		}
		unsigned lo = 0x80, hi = 0xBF;
		if (c < 0xF0) {
			if (c == 0xE0)
				lo = 0xA0; /* overlong below U+0800 */
			else if (c == 0xED)
				hi = 0x9F; /* U+D800..DFFF */
			if (end - s < 3 || s[1] < lo || s[1] > hi || (s[2] & 0xC0) != 0x80)
				return 0;
			s += 3;
			continue;
		}
		if (c > 0xF4)
			return 0;
		if (c == 0xF0)
			lo = 0x90; /* overlong below U+10000 */
		else if (c == 0xF4)
			hi = 0x8F; /* above U+10FFFF */
		if (end - s < 4 || s[1] < lo || s[1] > hi || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
			return 0;
		s += 4;
	}
	return 1;
}

static int hex4(const char *p, unsigned *out)
{
	unsigned v = 0;
	for (int i = 0; i < 4; i++) {
		unsigned c = (unsigned char)p[i];
		if (c >= '0' && c <= '9')
			c -= '0';
		else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
			c = (c | 0x20) - 'a' + 10;
		else
			return -1;
		v = v << 4 | c;
	}
	*out = v;
	return 0;
}

/* Every backslash in valid JSON starts an escape inside a string, so
 * walking them left to right, skipping each whole escape, sees exactly the
 * escapes (a backslash outside a string is a syntax error either way). */
static enum json_status check_escapes(const char *s, size_t len)
{
	const char *p = s, *end = s + len;

	while ((p = memchr(p, '\\', (size_t)(end - p))) != NULL) {
		if (end - p < 2)
			return JSON_ERR_SYNTAX;
		if (p[1] != 'u') {
			p += 2;
			continue;
		}
		unsigned cp, lo;
		if (end - p < 6 || hex4(p + 2, &cp) != 0)
			return JSON_ERR_SYNTAX;
		p += 6;
		if (cp >= 0xDC00 && cp <= 0xDFFF)
			return JSON_ERR_UTF8;
		if (cp >= 0xD800 && cp <= 0xDBFF) {
			if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &lo) != 0 || lo < 0xDC00 ||
			    lo > 0xDFFF)
				return JSON_ERR_UTF8;
			p += 6;
		}
	}
	return JSON_OK;
}

/* ---- nodes ------------------------------------------------------------ */

static size_t arr_cap(size_t n)
{
	size_t c = 4;
	if (n == 0)
		return 0;
	while (c < n)
		c <<= 1;
	return c;
}

static int is_inline(const struct json_value *v)
{
	return v->len > 0 && (const void *)v->items == (const void *)(v + 1);
}

static struct json_value *node_new(enum json_type t, size_t extra)
{
	struct json_value *v;
	if (extra > SIZE_MAX - sizeof(*v))
		return NULL;
	v = malloc(sizeof(*v) + extra);
	if (v == NULL)
		return NULL;
	memset(v, 0, sizeof(*v));
	v->type = t;
	return v;
}

void json_free(struct json_value *v)
{
	if (v == NULL)
		return;
	if (v->type == JSON_ARRAY || v->type == JSON_OBJECT) {
		int sep = !is_inline(v);
		for (size_t i = 0; i < v->len; i++) {
			json_free(v->items[i]);
			if (sep && v->type == JSON_OBJECT)
				free(v->keys[i]);
		}
		if (sep) {
			free(v->items);
			free(v->keys);
		}
	}
	free(v);
}

struct json_value *json_new_string(const char *s, size_t len)
{
	struct json_value *v;
	if (len == SIZE_MAX)
		return NULL;
	v = node_new(JSON_STRING, len + 1);
	if (v == NULL)
		return NULL;
	v->s = (char *)(v + 1);
	if (len > 0)
		memcpy(v->s, s, len);
	v->s[len] = '\0';
	v->len = len;
	return v;
}

struct json_value *json_new_object(void)
{
	/* The spare pointer makes v + 1 lie inside this block, so separately
	 * allocated arrays can never be mistaken for inline ones. */
	return node_new(JSON_OBJECT, sizeof(void *));
}

/* Move a parsed object's inline arrays and keys into separate blocks. */
static int detach_arrays(struct json_value *obj)
{
	size_t cap = arr_cap(obj->len);
	struct json_value **items = malloc(cap * sizeof(*items));
	char **keys = malloc(cap * sizeof(*keys));
	size_t i;

	if (items == NULL || keys == NULL)
		goto fail;
	for (i = 0; i < obj->len; i++) {
		keys[i] = strdup(obj->keys[i]);
		if (keys[i] == NULL) {
			while (i > 0)
				free(keys[--i]);
			goto fail;
		}
		items[i] = obj->items[i];
	}
	obj->items = items;
	obj->keys = keys;
	return 0;
fail:
	free(items);
	free(keys);
	return -1;
}

int json_object_set(struct json_value *obj, const char *key, size_t keylen, struct json_value *val)
{
	char *k;

	if (obj == NULL || obj->type != JSON_OBJECT || val == NULL || keylen == SIZE_MAX ||
	    memchr(key, '\0', keylen) != NULL)
		goto fail;
	for (size_t i = 0; i < obj->len; i++) {
		if (strncmp(obj->keys[i], key, keylen) == 0 && obj->keys[i][keylen] == '\0') {
			json_free(obj->items[i]);
			obj->items[i] = val;
			return 0;
		}
	}
	if (is_inline(obj) && detach_arrays(obj) != 0)
		goto fail;
	if (obj->len + 1 > arr_cap(obj->len)) {
		size_t cap = arr_cap(obj->len + 1);
		if (cap > SIZE_MAX / sizeof(void *))
			goto fail;
		struct json_value **items = realloc(obj->items, cap * sizeof(*items));
		if (items == NULL)
			goto fail;
		obj->items = items;
		char **keys = realloc(obj->keys, cap * sizeof(*keys));
		if (keys == NULL)
			goto fail;
		obj->keys = keys;
	}
	k = malloc(keylen + 1);
	if (k == NULL)
		goto fail;
	memcpy(k, key, keylen);
	k[keylen] = '\0';
	obj->keys[obj->len] = k;
	obj->items[obj->len] = val;
	obj->len++;
	return 0;
fail:
	json_free(val);
	return -1;
}

/* ---- tree builder (yajl callbacks) -------------------------------------- */

static int grow(void **buf, size_t *cap, size_t need, size_t elem)
{
	size_t c = *cap ? *cap : 16;
	void *p;

	while (c < need) {
		if (c > SIZE_MAX / 2 / elem)
			return -1;
		c *= 2;
	}
	p = realloc(*buf, c * elem);
	if (p == NULL)
		return -1;
	*buf = p;
	*cap = c;
	return 0;
}

static int parse_fail(struct parser *p, enum json_status st)
{
	if (p->err == JSON_OK)
		p->err = st;
	return 0;
}

/* Hand a finished value to its container (or make it the root). The
 * value is owned by the parser's stack from here on. */
static int attach(struct parser *p, struct json_value *v)
{
	if (v == NULL)
		return parse_fail(p, JSON_ERR_NOMEM);
	if (p->nframes == 0) {
		p->root = v;
		return 1;
	}
	if (p->frames[p->nframes - 1].type == JSON_OBJECT) {
		p->stack[p->n - 1].v = v; /* its key was pushed by on_key */
		return 1;
	}
	if (p->n == p->cap && grow((void **)&p->stack, &p->cap, p->n + 1, sizeof(*p->stack)) != 0) {
		json_free(v);
		return parse_fail(p, JSON_ERR_NOMEM);
	}
	p->stack[p->n++] = (struct pending){.v = v};
	return 1;
}

static int on_null(void *ctx)
{
	return attach(ctx, node_new(JSON_NULL, 0));
}

static int on_bool(void *ctx, int b)
{
	struct json_value *v = node_new(JSON_BOOL, 0);
	if (v != NULL)
		v->b = b != 0;
	return attach(ctx, v);
}

/* Integers are parsed here rather than by yajl, which fails the whole
 * document on an integer beyond int64; those become doubles instead. */
static int on_number(void *ctx, const char *s, size_t len)
{
	struct parser *p = ctx;
	struct json_value *v = node_new(JSON_NUMBER, 0);
	char small[64], *buf = small;
	char *endp;

	if (v == NULL)
		return parse_fail(p, JSON_ERR_NOMEM);
	if (memchr(s, '.', len) == NULL && memchr(s, 'e', len) == NULL && memchr(s, 'E', len) == NULL) {
		int neg = len > 0 && s[0] == '-';
		uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
		uint64_t acc = 0;
		size_t i;
		for (i = (size_t)neg; i < len; i++) {
			unsigned dg = (unsigned)(s[i] - '0');
			if (acc > (limit - dg) / 10)
				break;
			acc = acc * 10 + dg;
		}
		if (i == len) {
			v->is_int = 1;
			v->i = !neg ? (int64_t)acc : acc == 0 ? 0 : -(int64_t)(acc - 1) - 1;
			v->d = (double)v->i;
			return attach(p, v);
		}
	}
	if (len >= sizeof(small)) {
		buf = malloc(len + 1);
		if (buf == NULL) {
			free(v);
			return parse_fail(p, JSON_ERR_NOMEM);
		}
	}
	memcpy(buf, s, len);
	buf[len] = '\0';
	errno = 0;
	v->d = strtod(buf, &endp);
	int bad = (errno == ERANGE && isinf(v->d)) || endp != buf + len;
	if (buf != small)
		free(buf);
	if (bad) {
		free(v);
		return parse_fail(p, JSON_ERR_SYNTAX); /* beyond double range */
	}
	return attach(p, v);
}

static int on_string(void *ctx, const unsigned char *s, size_t len)
{
	return attach(ctx, json_new_string((const char *)s, len));
}

static int on_key(void *ctx, const unsigned char *s, size_t len)
{
	struct parser *p = ctx;

	/* A NUL inside a key would make lookups by C string ambiguous. */
	if (memchr(s, '\0', len) != NULL)
		return parse_fail(p, JSON_ERR_SYNTAX);
	if (len >= SIZE_MAX - p->klen)
		return parse_fail(p, JSON_ERR_NOMEM);
	if (p->klen + len + 1 > p->kcap && grow((void **)&p->keys, &p->kcap, p->klen + len + 1, 1) != 0)
		return parse_fail(p, JSON_ERR_NOMEM);
	if (p->n == p->cap && grow((void **)&p->stack, &p->cap, p->n + 1, sizeof(*p->stack)) != 0)
		return parse_fail(p, JSON_ERR_NOMEM);
	memcpy(p->keys + p->klen, s, len);
	p->keys[p->klen + len] = '\0';
	p->stack[p->n++] = (struct pending){.v = NULL, .koff = p->klen, .klen = len};
	p->klen += len + 1;
	return 1;
}

static int open_container(struct parser *p, enum json_type t)
{
	if (p->nframes >= (size_t)(p->max_depth > 0 ? p->max_depth : 0))
		return parse_fail(p, JSON_ERR_DEPTH);
	if (p->nframes == p->fcap && grow((void **)&p->frames, &p->fcap, p->nframes + 1, sizeof(*p->frames)) != 0)
		return parse_fail(p, JSON_ERR_NOMEM);
	p->frames[p->nframes++] = (struct frame){.type = t, .start = p->n, .kstart = p->klen};
	return 1;
}

static int on_start_map(void *ctx)
{
	return open_container(ctx, JSON_OBJECT);
}

static int on_start_array(void *ctx)
{
	return open_container(ctx, JSON_ARRAY);
}

struct keyref {
	const char *k;
	size_t len;
	size_t idx;
};

static int keyref_cmp(const void *a, const void *b)
{
	const struct keyref *x = a, *y = b;
	int c = memcmp(x->k, y->k, x->len < y->len ? x->len : y->len);
	if (c != 0)
		return c;
	if (x->len != y->len)
		return x->len < y->len ? -1 : 1;
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Merge duplicate keys in e[0..n): the first occurrence keeps its place
 * and takes the last occurrence's value. Returns the new count. Small
 * objects compare pairwise; big ones sort, so crafted input stays
 * O(n log n). */
static int dedupe(struct parser *p, struct pending *e, size_t n, size_t *out)
{
	const char *kb = p->keys;
	size_t i, j, w;

	if (n <= 16) {
		for (i = 1; i < n; i++) {
			for (j = 0; j < i; j++) {
				if (e[j].v != NULL && e[j].klen == e[i].klen &&
				    memcmp(kb + e[j].koff, kb + e[i].koff, e[i].klen) == 0) {
					json_free(e[j].v);
					e[j].v = e[i].v;
					e[i].v = NULL;
					break;
				}
			}
		}
	} else {
		struct keyref *r = malloc(n * sizeof(*r));
		if (r == NULL)
			return -1;
		for (i = 0; i < n; i++)
			r[i] = (struct keyref){kb + e[i].koff, e[i].klen, i};
		qsort(r, n, sizeof(*r), keyref_cmp);
		for (i = 0; i < n; i = j) {
			for (j = i + 1; j < n && r[j].len == r[i].len && memcmp(r[j].k, r[i].k, r[i].len) == 0; j++)
				;
			if (j - i < 2)
				continue;
			size_t first = r[i].idx, last = r[j - 1].idx;
			json_free(e[first].v);
			for (size_t m = i + 1; m < j - 1; m++) {
				json_free(e[r[m].idx].v);
				e[r[m].idx].v = NULL;
			}
			e[first].v = e[last].v;
			e[last].v = NULL;
		}
		free(r);
	}
	for (i = 0, w = 0; i < n; i++)
		if (e[i].v != NULL)
			e[w++] = e[i];
	*out = w;
	return 0;
}

static int close_container(struct parser *p)
{
	struct frame *f = &p->frames[p->nframes - 1];
	struct pending *e = p->stack != NULL ? p->stack + f->start : NULL;
	size_t n = p->n - f->start;
	size_t kbytes = 0, extra;
	struct json_value *v;
	int obj = f->type == JSON_OBJECT;

	if (obj) {
		if (dedupe(p, e, n, &n) != 0)
			return parse_fail(p, JSON_ERR_NOMEM);
		p->n = f->start + n; /* dropped duplicates are already freed */
		for (size_t i = 0; i < n; i++)
			kbytes += e[i].klen + 1;
	}
	/* n and kbytes are bounded by the input length, which fits memory. */
	extra = n * sizeof(struct json_value *) * (obj ? 2 : 1) + kbytes;
	v = node_new(f->type, extra);
	if (v == NULL)
		return parse_fail(p, JSON_ERR_NOMEM);
	v->len = n;
	if (n > 0) {
		v->items = (struct json_value **)(void *)(v + 1);
		for (size_t i = 0; i < n; i++)
			v->items[i] = e[i].v;
	}
	if (obj && n > 0) {
		char *kp;
		v->keys = (char **)(void *)(v->items + n);
		kp = (char *)(v->keys + n);
		for (size_t i = 0; i < n; i++) {
			memcpy(kp, p->keys + e[i].koff, e[i].klen + 1);
			v->keys[i] = kp;
			kp += e[i].klen + 1;
		}
	}
	p->n = f->start;
	p->klen = f->kstart;
	p->nframes--;
	return attach(p, v);
}

static int on_end_container(void *ctx)
{
	return close_container(ctx);
}

static const yajl_callbacks parse_callbacks = {
    .yajl_null = on_null,
    .yajl_boolean = on_bool,
    .yajl_number = on_number,
    .yajl_string = on_string,
    .yajl_start_map = on_start_map,
    .yajl_map_key = on_key,
    .yajl_end_map = on_end_container,
    .yajl_start_array = on_start_array,
    .yajl_end_array = on_end_container,
};

enum json_status json_parse(const char *buf, size_t len, int max_depth, size_t max_bytes, struct json_value **out)
{
	struct parser p = {.max_depth = max_depth, .err = JSON_OK};
	yajl_handle h;
	yajl_status ys;
	enum json_status st;

	*out = NULL;
	if (max_bytes != 0 && len > max_bytes)
		return JSON_ERR_SIZE;
	if (buf == NULL)
		return JSON_ERR_SYNTAX;
	if (!json_utf8_valid(buf, len))
		return JSON_ERR_UTF8;
	st = check_escapes(buf, len);
	if (st != JSON_OK)
		return st;

	h = yajl_alloc(&parse_callbacks, NULL, &p);
	if (h == NULL)
		return JSON_ERR_NOMEM;
	/* Strings were checked above, more strictly than yajl would. */
	yajl_config(h, yajl_dont_validate_strings, 1);
	ys = yajl_parse(h, (const unsigned char *)buf, len);
	if (ys == yajl_status_ok)
		ys = yajl_complete_parse(h);
	yajl_free(h);

	if (ys == yajl_status_ok && p.err == JSON_OK && p.root != NULL && p.nframes == 0) {
		*out = p.root;
		st = JSON_OK;
	} else {
		st = p.err != JSON_OK ? p.err : JSON_ERR_SYNTAX;
		for (size_t i = 0; i < p.n; i++)
			json_free(p.stack[i].v);
		json_free(p.root);
	}
	free(p.stack);
	free(p.frames);
	free(p.keys);
	return st;
}

const char *json_status_str(enum json_status st)
{
	switch (st) {
	case JSON_OK: return "ok";
	case JSON_ERR_SYNTAX: return "invalid json";
	case JSON_ERR_UTF8: return "invalid utf-8 in json";
	case JSON_ERR_DEPTH: return "json nested too deeply";
	case JSON_ERR_SIZE: return "json body too large";
	case JSON_ERR_NOMEM: return "out of memory";
	}
	return "unknown json error";
}

/* ---- accessors -------------------------------------------------------- */

const struct json_value *json_get(const struct json_value *obj, const char *key)
{
	if (obj == NULL || obj->type != JSON_OBJECT || key == NULL)
		return NULL;
	for (size_t i = 0; i < obj->len; i++)
		if (obj->keys[i][0] == key[0] && strcmp(obj->keys[i], key) == 0)
			return obj->items[i];
	return NULL;
}

const char *json_get_str(const struct json_value *obj, const char *key, size_t *len)
{
	const struct json_value *v = json_get(obj, key);
	if (v == NULL || v->type != JSON_STRING)
		return NULL;
	if (len != NULL)
		*len = v->len;
	return v->s;
}

int json_get_int(const struct json_value *obj, const char *key, int64_t *out)
{
	const struct json_value *v = json_get(obj, key);
	if (v == NULL || v->type != JSON_NUMBER || !v->is_int)
		return -1;
	*out = v->i;
	return 0;
}

int json_get_bool(const struct json_value *obj, const char *key, int *out)
{
	const struct json_value *v = json_get(obj, key);
	if (v == NULL || v->type != JSON_BOOL)
		return -1;
	*out = v->b;
	return 0;
}

/* ---- writer ----------------------------------------------------------- */

/* Shortest of %.15g / %.17g that reads back as the same double. */
static int gen_double(yajl_gen g, double d)
{
	char buf[40];
	int n;

	if (!isfinite(d))
		return -1;
	n = snprintf(buf, sizeof(buf), "%.15g", d);
	if (n < 0 || (size_t)n >= sizeof(buf))
		return -1;
	if (strtod(buf, NULL) != d) {
		n = snprintf(buf, sizeof(buf), "%.17g", d);
		if (n < 0 || (size_t)n >= sizeof(buf))
			return -1;
	}
	return yajl_gen_number(g, buf, (size_t)n) == yajl_gen_status_ok ? 0 : -1;
}

int json_gen_value(void *yajl_gen_handle, const struct json_value *v)
{
	yajl_gen g = yajl_gen_handle;
	yajl_gen_status s;

	if (g == NULL || v == NULL)
		return -1;
	switch (v->type) {
	case JSON_NULL: s = yajl_gen_null(g); break;
	case JSON_BOOL: s = yajl_gen_bool(g, v->b); break;
	case JSON_NUMBER:
		if (!v->is_int)
			return gen_double(g, v->d);
		s = yajl_gen_integer(g, (long long)v->i);
		break;
	case JSON_STRING: s = yajl_gen_string(g, (const unsigned char *)v->s, v->len); break;
	case JSON_ARRAY:
		if (yajl_gen_array_open(g) != yajl_gen_status_ok)
			return -1;
		for (size_t i = 0; i < v->len; i++)
			if (json_gen_value(g, v->items[i]) != 0)
				return -1;
		s = yajl_gen_array_close(g);
		break;
	case JSON_OBJECT:
		if (yajl_gen_map_open(g) != yajl_gen_status_ok)
			return -1;
		for (size_t i = 0; i < v->len; i++) {
			const char *k = v->keys[i];
			if (yajl_gen_string(g, (const unsigned char *)k, strlen(k)) != yajl_gen_status_ok ||
			    json_gen_value(g, v->items[i]) != 0)
				return -1;
		}
		s = yajl_gen_map_close(g);
		break;
	default: return -1;
	}
	return s == yajl_gen_status_ok ? 0 : -1;
}
