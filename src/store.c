/* store.c - the backend-independent half of the document store.
 *
 * An op goes: store_submit() on the loop thread (validate, generate the
 * insert id, breaker_allow(), jobs_submit()) -> run() on a pool thread (the
 * attempts with retry and backoff, through the backend's exec()) -> op_done()
 * back on the loop thread (breaker_record(), database state, the caller's
 * done()). Ops refused before reaching the pool (breaker open, queue full,
 * deadline already gone) wait on a small intrusive list that one libevent
 * event drains on the next loop turn, so done() never runs inside
 * store_submit() and nothing is allocated per op.
 *
 * Retries: only STORE_UNAVAILABLE is retried, with RETRY_POLICY_DB and never
 * past the deadline. Every op kind is safe to repeat by construction: the
 * insert id is chosen before the first attempt (a repeat that finds its own
 * id reports success), updates are $set/$addToSet, and a repeated delete
 * that finds nothing means the first attempt landed.
 *
 * One file on purpose: the op life cycle (submit, lanes, breaker, retry,
 * deadline, results, health ping, handle reopening) is one state machine
 * over struct store_op and struct store; the backends live apart.
 */
#define _GNU_SOURCE
#include "store.h"
#include "clock.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <sodium.h>

#include "log.h"
#include "store_internal.h"

#define STORE_DEFAULT_POOL 4
#define STORE_DEFAULT_INFLIGHT 1024
#define STORE_DEFAULT_SST_MS 5000
#define STORE_DEFAULT_SOCKET_MS 30000
#define STORE_DEFAULT_BUSY_MS 5000
#define STORE_DEFAULT_PING_MS 2000
#define STORE_MAX_THREADS 256
#define STORE_REOPEN_MIN_MS 100  /* first wait before reopening a failed handle */
#define STORE_REOPEN_MAX_MS 2000 /* longest: a healed fault is seen within this */

/* One per pool thread (and one for store_exec() off the pool): the
 * thread's database handle, reopened with backoff when it breaks. */
struct thread_slot {
	struct store *st;
	void *conn;            /* the backend's handle (MongoDB: none, NULL) */
	bool open;             /* conn is valid (else: failed, or dropped as broken) */
	bool writer;           /* write-lane handle */
	bool failing;          /* the last open failed (logged once per episode) */
	uint64_t next_open_ms; /* no open attempt before this (jobs_now_ms clock) */
	uint32_t backoff_ms;
};

struct store {
	const struct store_backend *be;
	const struct store_schema *schema;
	void *bctx;
	struct event_base *base;
	struct job_pool *pool;
	struct breaker breaker;
	bson_context_t *oidctx;
	struct store_opts o;     /* defaults resolved */
	_Atomic int db_state;    /* reads reach the database */
	_Atomic int write_state; /* writes reach it (set by write-lane outcomes) */
	atomic_bool setup_done;
	pthread_mutex_t setup_lock; /* one set-up attempt at a time, and its backoff */
	uint64_t next_setup_ms;
	uint32_t setup_backoff_ms;
	unsigned inflight; /* loop thread only */
	bool closing;

	/* ops answered without the pool, delivered on the next loop turn */
	struct event *imm_ev;
	struct store_op *imm_head, *imm_tail;

	struct event *ping_ev;
	struct store_op ping;

	pthread_mutex_t sync_lock; /* guards sync_slot for store_exec() */
	struct thread_slot sync_slot;

	struct thread_slot *slots;
	unsigned nslots;
};

static _Thread_local struct thread_slot *tls_slot;

/* ---- small helpers ----------------------------------------------------- */

static int64_t realtime_ms(void)
{
	return clock_real_ms();
}

static void sleep_ms(uint64_t ms)
{
	struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

const char *store_err_name(enum store_err err)
{
	switch (err) {
	case STORE_OK: return "OK";
	case STORE_DUPLICATE_KEY: return "DUPLICATE_KEY";
	case STORE_NOT_FOUND: return "NOT_FOUND";
	case STORE_UNAVAILABLE: return "UNAVAILABLE";
	case STORE_TIMEOUT: return "TIMEOUT";
	case STORE_CIRCUIT_OPEN: return "CIRCUIT_OPEN";
	case STORE_BUSY: return "BUSY";
	case STORE_INTERNAL: return "INTERNAL";
	}
	return "INTERNAL";
}

/* ---- schema ------------------------------------------------------------ */

static const struct store_schema *registered_schema;

void store_register_schema(const struct store_schema *schema)
{
	registered_schema = schema;
}

const struct store_schema *store_registered_schema(void)
{
	return registered_schema;
}

const char *store_coll_name(int coll)
{
	const struct store_schema *s = registered_schema;

	return s && coll >= 0 && (unsigned)coll < s->ncollections ? s->collections[coll].name : NULL;
}

/* A name usable unquoted in SQL: [A-Za-z_][A-Za-z0-9_]*, under 64 bytes. */
static bool ident_ok(const char *s)
{
	size_t n = 0;

	if (!s || !((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_'))
		return false;
	for (; s[n]; n++)
		if (!((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= 'A' && s[n] <= 'Z') || (s[n] >= '0' && s[n] <= '9') ||
		      s[n] == '_'))
			return false;
	return n < 64;
}

static bool field_ok(const char *field);

/* Checks a schema before a store uses it; a one-line reason in err. */
static int schema_check(const struct store_schema *s, char *err, size_t errlen)
{
	if (!s || !s->collections || s->ncollections == 0) {
		snprintf(err, errlen, "store: no schema registered (store_register_schema)");
		return -1;
	}
	if (s->nsqlite_migrations > 0 && !s->sqlite_migrations) {
		snprintf(err, errlen, "store schema: migrations missing");
		return -1;
	}
	for (unsigned c = 0; c < s->ncollections; c++) {
		const struct store_collection *co = &s->collections[c];
		const struct store_array_mirror *m = co->mirror;

		if (!ident_ok(co->name) || co->ncolumns > STORE_COLUMNS_MAX || (co->ncolumns && !co->columns) ||
		    (co->nindexes && !co->indexes)) {
			snprintf(err, errlen, "store schema: collection %u: bad name or tables", c);
			return -1;
		}
		for (unsigned i = 0; i < co->ncolumns; i++)
			if (!field_ok(co->columns[i].field) || !ident_ok(co->columns[i].column)) {
				snprintf(err, errlen, "store schema: %s: bad column %u", co->name, i);
				return -1;
			}
		if (m && (!field_ok(m->field) || !ident_ok(m->table) || !ident_ok(m->value_column) ||
		          !ident_ok(m->id_column))) {
			snprintf(err, errlen, "store schema: %s: bad array mirror", co->name);
			return -1;
		}
		for (unsigned i = 0; i < co->nindexes; i++) {
			const struct store_index *ix = &co->indexes[i];

			if (!ix->name || !ix->name[0] || !ix->keys[0].field) {
				snprintf(err, errlen, "store schema: %s: bad index %u", co->name, i);
				return -1;
			}
			for (unsigned k = 0; k < STORE_INDEX_KEYS_MAX && ix->keys[k].field; k++)
				if (!field_ok(ix->keys[k].field) || (ix->keys[k].dir != 1 && ix->keys[k].dir != -1)) {
					snprintf(err, errlen, "store schema: %s: index %s: bad key", co->name,
					         ix->name);
					return -1;
				}
		}
	}
	return 0;
}

int store_id_parse(const char *s, size_t len, bson_oid_t *out)
{
	if (!s || len != 24 || !bson_oid_is_valid(s, len))
		return -1;
	bson_oid_init_from_string(out, s);
	return 0;
}

void store_id_format(const bson_oid_t *id, char out[25])
{
	bson_oid_to_string(id, out);
}

bool store_key_protected(const char *key)
{
	return strcmp(key, "_id") == 0 || strcmp(key, "createdAt") == 0 || strcmp(key, "updatedAt") == 0;
}

/* ---- values and filters ------------------------------------------------ */

static bool field_ok(const char *field)
{
	bool after_dot = true;
	size_t n = 0;

	if (!field)
		return false;
	for (const char *p = field; *p; p++, n++) {
		char c = *p;

		if (c == '.') {
			if (after_dot)
				return false;
			after_dot = true;
		} else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_') {
			after_dot = false;
		} else {
			return false;
		}
	}
	return n > 0 && n < STORE_FIELD_MAX && !after_dot;
}

static void value_free(struct store_value *v)
{
	if (v->type == STORE_V_STR)
		free(v->u.s);
	memset(v, 0, sizeof *v);
}

static int value_str(struct store_value *v, const char *s)
{
	char *copy;

	if (!s) {
		errno = EINVAL;
		return -1;
	}
	copy = strdup(s);
	if (!copy)
		return -1;
	v->type = STORE_V_STR;
	v->u.s = copy;
	return 0;
}

bool store_value_append(bson_t *b, const char *key, const struct store_value *v)
{
	switch (v->type) {
	case STORE_V_STR: return bson_append_utf8(b, key, -1, v->u.s, -1);
	case STORE_V_INT: return bson_append_int64(b, key, -1, v->u.i);
	case STORE_V_BOOL: return bson_append_bool(b, key, -1, v->u.b);
	case STORE_V_OID: return bson_append_oid(b, key, -1, &v->u.oid);
	default: return false;
	}
}

/* The next free condition for field/op, or NULL (errno EINVAL). */
static struct store_cond *cond_slot(struct store_filter *f, const char *field, int op)
{
	struct store_cond *c;

	if (!f || f->n >= STORE_FILTER_MAX || !field_ok(field) || op < STORE_EQ || op > STORE_CONTAINS) {
		errno = EINVAL;
		return NULL;
	}
	c = &f->cond[f->n];
	memset(c, 0, sizeof *c);
	strcpy(c->field, field); /* length checked by field_ok */
	c->op = op;
	return c;
}

static int add_scalar(struct store_filter *f, const char *field, int op, const struct store_value *v)
{
	struct store_cond *c = op == STORE_IN ? NULL : cond_slot(f, field, op);

	if (!c) {
		errno = EINVAL;
		return -1;
	}
	if (v->type == STORE_V_STR) {
		if (value_str(&c->v, v->u.s) != 0)
			return -1;
	} else {
		c->v = *v;
	}
	f->n++;
	return 0;
}

int store_filter_str(struct store_filter *f, const char *field, int op, const char *s)
{
	struct store_value v = {.type = STORE_V_STR, .u.s = (char *)s};

	if (!s) {
		errno = EINVAL;
		return -1;
	}
	return add_scalar(f, field, op, &v);
}

int store_filter_int(struct store_filter *f, const char *field, int op, int64_t i)
{
	struct store_value v = {.type = STORE_V_INT, .u.i = i};

	return add_scalar(f, field, op, &v);
}

int store_filter_bool(struct store_filter *f, const char *field, int op, bool b)
{
	struct store_value v = {.type = STORE_V_BOOL, .u.b = b};

	return add_scalar(f, field, op, &v);
}

int store_filter_oid(struct store_filter *f, const char *field, int op, const bson_oid_t *oid)
{
	struct store_value v = {.type = STORE_V_OID};

	if (!oid) {
		errno = EINVAL;
		return -1;
	}
	bson_oid_copy(oid, &v.u.oid);
	return add_scalar(f, field, op, &v);
}

static struct store_cond *in_slot(struct store_filter *f, const char *field, size_t n)
{
	struct store_cond *c;

	if (n == 0 || n > STORE_IN_MAX) {
		errno = EINVAL;
		return NULL;
	}
	c = cond_slot(f, field, STORE_IN);
	if (!c)
		return NULL;
	c->in = calloc(n, sizeof *c->in);
	return c->in ? c : NULL;
}

int store_filter_in_oids(struct store_filter *f, const char *field, const bson_oid_t *ids, size_t n)
{
	struct store_cond *c = ids ? in_slot(f, field, n) : NULL;

	if (!c) {
		if (!ids)
			errno = EINVAL;
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		c->in[i].type = STORE_V_OID;
		bson_oid_copy(&ids[i], &c->in[i].u.oid);
	}
	c->nin = n;
	f->n++;
	return 0;
}

int store_filter_in_strs(struct store_filter *f, const char *field, const char *const *strs, size_t n)
{
	struct store_cond *c = strs ? in_slot(f, field, n) : NULL;

	if (!c) {
		if (!strs)
			errno = EINVAL;
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		if (value_str(&c->in[i], strs[i]) != 0) {
			int e = errno;

			for (size_t k = 0; k < i; k++)
				value_free(&c->in[k]);
			free(c->in);
			memset(c, 0, sizeof *c);
			errno = e;
			return -1;
		}
	}
	c->nin = n;
	f->n++;
	return 0;
}

int store_filter_sort(struct store_filter *f, const char *field, int dir)
{
	if (!f || (dir != 1 && dir != -1) || (field && !field_ok(field))) {
		errno = EINVAL;
		return -1;
	}
	if (field)
		strcpy(f->sort_field, field);
	else
		f->sort_field[0] = '\0';
	f->sort_dir = dir;
	return 0;
}

void store_filter_page(struct store_filter *f, int64_t skip, int64_t limit)
{
	f->skip = skip > 0 ? skip : 0;
	f->limit = limit > 0 ? limit : 0;
}

void store_filter_clear(struct store_filter *f)
{
	for (unsigned i = 0; i < f->n && i < STORE_FILTER_MAX; i++) {
		struct store_cond *c = &f->cond[i];

		value_free(&c->v);
		for (size_t k = 0; k < c->nin; k++)
			value_free(&c->in[k]);
		free(c->in);
	}
	memset(f, 0, sizeof *f);
}

/* ---- documents --------------------------------------------------------- */

/* 1 if the element at it equals v (numbers compare by value). */
static bool iter_equals(const bson_iter_t *it, const struct store_value *v)
{
	switch (v->type) {
	case STORE_V_STR: {
		uint32_t len;
		const char *s;

		if (!BSON_ITER_HOLDS_UTF8(it))
			return false;
		s = bson_iter_utf8(it, &len);
		return strlen(v->u.s) == len && memcmp(s, v->u.s, len) == 0;
	}
	case STORE_V_INT:
		if (BSON_ITER_HOLDS_INT32(it) || BSON_ITER_HOLDS_INT64(it))
			return bson_iter_as_int64(it) == v->u.i;
		return BSON_ITER_HOLDS_DOUBLE(it) && bson_iter_double(it) == (double)v->u.i;
	case STORE_V_BOOL: return BSON_ITER_HOLDS_BOOL(it) && bson_iter_bool(it) == v->u.b;
	case STORE_V_OID: return BSON_ITER_HOLDS_OID(it) && bson_oid_equal(bson_iter_oid(it), &v->u.oid);
	default: return false;
	}
}

/* Append key: the array at it plus v unless already present. */
static bool append_added(bson_t *out, const char *key, const bson_iter_t *it, const struct store_value *v)
{
	bson_iter_t child;
	bson_t arr;
	uint32_t n = 0;
	bool found = false, ok;
	char ibuf[16];
	const char *ikey;

	if (!bson_iter_recurse(it, &child) || !bson_append_array_begin(out, key, -1, &arr))
		return false;
	ok = true;
	while (ok && bson_iter_next(&child)) {
		found = found || iter_equals(&child, v);
		bson_uint32_to_string(n++, &ikey, ibuf, sizeof ibuf);
		ok = bson_append_iter(&arr, ikey, -1, &child);
	}
	if (ok && !found) {
		bson_uint32_to_string(n, &ikey, ibuf, sizeof ibuf);
		ok = store_value_append(&arr, ikey, v);
	}
	return bson_append_array_end(out, &arr) && ok;
}

enum store_err store_doc_apply_update(const bson_t *old, const struct store_op *op, int64_t now_ms, bson_t *out)
{
	bson_iter_t it, s;
	bool pushed = false, stamped = false, ok = true;
	const char *pf = op->push_field[0] ? op->push_field : NULL;

	bson_init(out);
	if (!bson_iter_init(&it, old))
		return STORE_INTERNAL;
	while (ok && bson_iter_next(&it)) {
		const char *key = bson_iter_key(&it);

		if (strcmp(key, "updatedAt") == 0) {
			ok = bson_append_date_time(out, key, -1, now_ms);
			stamped = true;
		} else if (!store_key_protected(key) && op->doc && bson_iter_init_find(&s, op->doc, key)) {
			ok = bson_append_iter(out, key, -1, &s);
		} else if (pf && strcmp(key, pf) == 0) {
			if (!BSON_ITER_HOLDS_ARRAY(&it))
				return STORE_INTERNAL;
			ok = append_added(out, key, &it, &op->push_value);
			pushed = true;
		} else {
			ok = bson_append_iter(out, key, -1, &it);
		}
	}
	if (ok && op->doc && bson_iter_init(&s, op->doc)) {
		while (ok && bson_iter_next(&s)) {
			const char *key = bson_iter_key(&s);

			if (!store_key_protected(key) && !bson_has_field(old, key))
				ok = bson_append_iter(out, key, -1, &s);
		}
	}
	if (ok && pf && !pushed) {
		bson_t arr;

		ok = bson_append_array_begin(out, pf, -1, &arr) && store_value_append(&arr, "0", &op->push_value);
		ok = bson_append_array_end(out, &arr) && ok;
	}
	if (ok && !stamped)
		ok = bson_append_date_time(out, "updatedAt", -1, now_ms);
	return ok ? STORE_OK : STORE_INTERNAL;
}

/* The stored form of an insert: _id, the caller's fields, timestamps. */
static bson_t *stored_form(const bson_oid_t *id, const bson_t *fields, int64_t now_ms)
{
	bson_iter_t it;
	bson_t *d = bson_new();
	bool ok = bson_append_oid(d, "_id", -1, id);

	if (ok && bson_iter_init(&it, fields))
		while (ok && bson_iter_next(&it))
			if (!store_key_protected(bson_iter_key(&it)))
				ok = bson_append_iter(d, bson_iter_key(&it), -1, &it);
	ok = ok && bson_append_date_time(d, "createdAt", -1, now_ms) &&
	     bson_append_date_time(d, "updatedAt", -1, now_ms);
	if (!ok) {
		bson_destroy(d);
		return NULL;
	}
	return d;
}

static enum store_err build_insert(struct store_op *op, int64_t now_ms)
{
	op->result = stored_form(&op->id, op->doc, now_ms);
	return op->result ? STORE_OK : STORE_INTERNAL;
}

/* INSERT_MANY: docs[i] is the stored form of batch[i]; count = how many of
 * them the backend has stored so far (it resumes there on a retry). */
static enum store_err build_insert_many(struct store_op *op, int64_t now_ms)
{
	op->docs = calloc(op->nbatch, sizeof *op->docs);
	if (!op->docs)
		return STORE_INTERNAL;
	for (size_t i = 0; i < op->nbatch; i++) {
		op->docs[i] = stored_form(&op->batch_ids[i], op->batch[i],
		                          op->given_created_ms ? op->given_created_ms[i] : now_ms);
		if (!op->docs[i])
			return STORE_INTERNAL;
		op->ndocs = i + 1;
	}
	op->count = 0;
	return STORE_OK;
}

/* Deep checks kept off the loop thread: keys a database would read as
 * operators or paths, and invalid UTF-8. */
static bool doc_valid(const bson_t *doc)
{
	size_t off;

	return bson_validate(
	    doc, BSON_VALIDATE_UTF8 | BSON_VALIDATE_DOLLAR_KEYS | BSON_VALIDATE_DOT_KEYS | BSON_VALIDATE_EMPTY_KEYS,
	    &off);
}

static bool batch_valid(const struct store_op *op)
{
	for (size_t i = 0; i < op->nbatch; i++)
		if (!doc_valid(op->batch[i]))
			return false;
	return true;
}

/* ---- op lifecycle ------------------------------------------------------- */

void store_op_init(struct store_op *op, int kind, int coll)
{
	memset(op, 0, sizeof *op);
	op->kind = kind;
	op->coll = coll;
}

static int add_to_set(struct store_op *op, const char *field, const struct store_value *v)
{
	if (!field_ok(field) || op->priv.busy) {
		errno = EINVAL;
		return -1;
	}
	value_free(&op->push_value);
	if (v->type == STORE_V_STR) {
		if (value_str(&op->push_value, v->u.s) != 0)
			return -1;
	} else {
		op->push_value = *v;
	}
	strcpy(op->push_field, field);
	return 0;
}

int store_op_add_to_set_str(struct store_op *op, const char *field, const char *s)
{
	struct store_value v = {.type = STORE_V_STR, .u.s = (char *)s};

	if (!s) {
		errno = EINVAL;
		return -1;
	}
	return add_to_set(op, field, &v);
}

int store_op_add_to_set_oid(struct store_op *op, const char *field, const bson_oid_t *oid)
{
	struct store_value v = {.type = STORE_V_OID};

	if (!oid) {
		errno = EINVAL;
		return -1;
	}
	bson_oid_copy(oid, &v.u.oid);
	return add_to_set(op, field, &v);
}

static void results_free(struct store_op *op)
{
	if (op->result)
		bson_destroy(op->result);
	op->result = NULL;
	for (size_t i = 0; i < op->ndocs; i++)
		bson_destroy(op->docs[i]);
	free(op->docs);
	op->docs = NULL;
	op->ndocs = 0;
	op->count = 0;
	op->dup_field[0] = '\0';
}

void store_op_clear(struct store_op *op)
{
	results_free(op);
	if (op->doc)
		bson_destroy(op->doc);
	op->doc = NULL;
	for (size_t i = 0; i < op->nbatch; i++)
		bson_destroy(op->batch[i]);
	free(op->batch);
	op->batch = NULL;
	op->nbatch = 0;
	free(op->batch_ids);
	op->batch_ids = NULL;
	store_filter_clear(&op->filter);
	value_free(&op->push_value);
	op->push_field[0] = '\0';
	op->err = STORE_OK;
}

void store_op_abandon(struct store_op *op)
{
	if (!op->priv.busy || op->priv.abandoned)
		return;
	op->priv.abandoned = true;
	if (op->priv.in_pool)
		jobs_abandon(&op->job);
}

bool store_op_abandoned(const struct store_op *op)
{
	return op->priv.abandoned;
}

/* True for the kinds that change the database (write lane). */
static bool op_writes(const struct store_op *op)
{
	return op->kind == STORE_OP_INSERT || op->kind == STORE_OP_INSERT_MANY || op->kind == STORE_OP_UPDATE_BY_ID ||
	       op->kind == STORE_OP_DELETE_BY_ID;
}

/* Cheap structural checks done on the loop thread. */
static bool op_valid(const struct store *st, const struct store_op *op)
{
	if (op->coll < 0 || (unsigned)op->coll >= st->schema->ncollections)
		return false;
	switch (op->kind) {
	case STORE_OP_INSERT: return op->doc != NULL;
	case STORE_OP_INSERT_MANY:
		if (!op->batch || !op->nbatch || op->nbatch > STORE_BATCH_MAX)
			return false;
		for (size_t i = 0; i < op->nbatch; i++)
			if (!op->batch[i])
				return false;
		return true;
	case STORE_OP_UPDATE_BY_ID:
		if (op->push_field[0] &&
		    (!field_ok(op->push_field) || op->push_value.type < STORE_V_STR ||
		     op->push_value.type > STORE_V_OID || (op->doc && bson_has_field(op->doc, op->push_field))))
			return false;
		return true;
	case STORE_OP_FIND_BY_ID:
	case STORE_OP_FIND_ONE:
	case STORE_OP_FIND:
	case STORE_OP_COUNT:
	case STORE_OP_DELETE_BY_ID:
	case STORE_OP_PING: return true;
	default: return false;
	}
}

/* Map a finished op to database connectivity; TIMEOUT says nothing. A
 * write-lane outcome says whether writes get through (and, when they do,
 * that reads do too), a read-lane one whether reads do; the store is
 * connected when both do. */
static void note_db_state(struct store *st, bool write_lane, enum store_err err)
{
	int now, before, after;

	if (err == STORE_UNAVAILABLE)
		now = 0;
	else if (err == STORE_OK || err == STORE_DUPLICATE_KEY || err == STORE_NOT_FOUND)
		now = 1;
	else
		return;
	before = atomic_load(&st->db_state) && atomic_load(&st->write_state);
	if (write_lane)
		atomic_store(&st->write_state, now);
	if (!write_lane || now) /* a write that got through read the database too */
		atomic_store(&st->db_state, now);
	after = atomic_load(&st->db_state) && atomic_load(&st->write_state);
	if (before == after)
		return;
	if (after)
		log_info(NULL, "database connected", LF_STR("backend", st->be->name));
	else
		log_warn(NULL, "database disconnected", LF_STR("backend", st->be->name),
		         LF_STR("lane", write_lane ? "write" : "read"));
}

/* Breaker verdict: only an unreachable or too slow database is a failure. */
static int breaker_success(enum store_err err)
{
	return err != STORE_UNAVAILABLE && err != STORE_TIMEOUT;
}

static uint32_t next_backoff(uint32_t cur)
{
	if (!cur)
		return STORE_REOPEN_MIN_MS;
	return cur >= STORE_REOPEN_MAX_MS / 2 ? STORE_REOPEN_MAX_MS : cur * 2;
}

/* Open the slot's handle now if it has none and its backoff allows.
 * false: the database cannot be reached through it yet. */
static bool slot_conn(struct store *st, struct thread_slot *s)
{
	char msg[256] = "";
	uint64_t now;

	if (s->open)
		return true;
	now = jobs_now_ms();
	if (now < s->next_open_ms)
		return false;
	if (st->be->conn_open(st->bctx, s->writer, &s->conn, msg, sizeof msg) == 0) {
		if (s->failing)
			log_info(NULL, "database handle reopened", LF_STR("backend", st->be->name),
			         LF_STR("lane", s->writer ? "write" : "read"));
		s->open = true;
		s->failing = false;
		s->backoff_ms = 0;
		return true;
	}
	s->conn = NULL;
	s->backoff_ms = next_backoff(s->backoff_ms);
	s->next_open_ms = now + s->backoff_ms;
	if (!s->failing)
		log_warn(NULL, "cannot open the database; retrying with backoff", LF_STR("backend", st->be->name),
		         LF_STR("lane", s->writer ? "write" : "read"), LF_STR("error", msg));
	s->failing = true;
	return false;
}

/* Close a handle the backend found broken; the next attempt reopens it. */
static void slot_drop(struct store *st, struct thread_slot *s)
{
	if (!s->open)
		return;
	st->be->conn_close(st->bctx, s->conn);
	s->conn = NULL;
	s->open = false;
	s->next_open_ms = 0;
}

/* Run the schema set-up if it has not succeeded yet (at most one attempt at
 * a time per process, with backoff). STORE_OK once it has. */
static enum store_err ensure_setup(struct store *st, struct thread_slot *slot)
{
	enum store_err err = STORE_UNAVAILABLE;
	char msg[256] = "";
	uint64_t now;

	if (atomic_load(&st->setup_done))
		return STORE_OK;
	if (pthread_mutex_lock(&st->setup_lock) != 0)
		abort();
	now = jobs_now_ms();
	if (atomic_load(&st->setup_done)) {
		err = STORE_OK;
	} else if (now >= st->next_setup_ms && slot_conn(st, slot)) {
		err = st->be->setup(st->bctx, slot->conn, msg, sizeof msg);
		if (err == STORE_OK) {
			atomic_store(&st->setup_done, true);
			st->setup_backoff_ms = 0;
			log_info(NULL, "database set-up completed", LF_STR("backend", st->be->name));
		} else {
			st->setup_backoff_ms = next_backoff(st->setup_backoff_ms);
			st->next_setup_ms = now + st->setup_backoff_ms;
			log_warn(NULL, "database set-up failed; retrying with backoff", LF_STR("backend", st->be->name),
			         LF_STR("error", msg));
			if (err != STORE_INTERNAL)
				err = STORE_UNAVAILABLE;
			slot_drop(st, slot); /* the next try starts from a fresh handle */
		}
	}
	if (pthread_mutex_unlock(&st->setup_lock) != 0)
		abort();
	return err;
}

/* All attempts of op on slot's handle. Sets and returns op->err. */
static enum store_err run(struct store *st, struct thread_slot *slot, struct store_op *op)
{
	const struct retry_policy pol = RETRY_POLICY_DB;
	struct store_call call = {.deadline_ms = op->deadline_ms, .now_ms = realtime_ms()};
	enum store_err err = STORE_OK;

	/* SQLite ops need the tables; a MongoDB op works without its indexes,
	 * so there only the health ping retries their creation. */
	if ((op->priv.internal || st->be->setup_first) && !atomic_load(&st->setup_done)) {
		enum store_err serr = ensure_setup(st, slot);

		if (st->be->setup_first && serr != STORE_OK) {
			op->err = serr;
			return serr;
		}
	}
	if ((op->kind == STORE_OP_INSERT && !doc_valid(op->doc)) ||
	    (op->kind == STORE_OP_UPDATE_BY_ID && op->doc && !doc_valid(op->doc)) ||
	    (op->kind == STORE_OP_INSERT_MANY && !batch_valid(op))) {
		log_error(NULL, "store: document with invalid keys or UTF-8 refused",
		          LF_STR("collection", st->schema->collections[op->coll].name));
		err = STORE_INTERNAL;
	} else if (op->kind == STORE_OP_INSERT) {
		err = build_insert(op, call.now_ms);
	} else if (op->kind == STORE_OP_INSERT_MANY) {
		err = build_insert_many(op, call.now_ms);
	}
	for (call.attempt = 1; err == STORE_OK; call.attempt++) {
		uint64_t delay;

		if (op->deadline_ms && jobs_now_ms() >= op->deadline_ms) {
			err = STORE_TIMEOUT;
			break;
		}
		call.no_retry = false;
		call.reopen = false;
		if (!slot_conn(st, slot)) {
			err = STORE_UNAVAILABLE;
		} else {
			err = st->be->exec(st->bctx, slot->conn, op, &call);
			if (call.reopen)
				slot_drop(st, slot);
		}
		op->priv.attempts = call.attempt;
		if (err != STORE_UNAVAILABLE || call.no_retry)
			break;
		delay = retry_backoff_ms(&pol, call.attempt - 1, NULL, NULL);
		if (atomic_load(&op->job.abandoned) ||
		    !retry_should_retry(&pol, call.attempt, 0, delay, jobs_now_ms(), op->deadline_ms))
			break;
		sleep_ms(delay);
		err = STORE_OK;
	}
	if (op->priv.attempts > 1) {
		/* A repeat that finds the first attempt's effect: it landed. */
		if ((op->kind == STORE_OP_INSERT && err == STORE_DUPLICATE_KEY && strcmp(op->dup_field, "_id") == 0) ||
		    (op->kind == STORE_OP_DELETE_BY_ID && err == STORE_NOT_FOUND)) {
			op->dup_field[0] = '\0';
			err = STORE_OK;
		}
	}
	if (err == STORE_OK && op->deadline_ms && jobs_now_ms() >= op->deadline_ms)
		err = STORE_TIMEOUT; /* too late: the caller has given up */
	if (err != STORE_OK && op->kind == STORE_OP_INSERT_MANY) {
		/* Keep what was stored; the caller reports err for the rest. */
		size_t kept = (size_t)op->count;

		for (size_t i = kept; i < op->ndocs; i++)
			bson_destroy(op->docs[i]);
		op->ndocs = kept;
	} else if (err != STORE_OK) {
		char keep[STORE_FIELD_MAX];

		memcpy(keep, op->dup_field, sizeof keep);
		results_free(op);
		if (err == STORE_DUPLICATE_KEY)
			memcpy(op->dup_field, keep, sizeof keep);
	}
	op->err = err;
	return err;
}

static void op_work(struct job *job)
{
	struct store_op *op = (struct store_op *)job;

	run(op->priv.st, tls_slot, op);
}

static void finish(struct store_op *op)
{
	op->priv.busy = false;
	op->priv.in_pool = false;
	op->priv.next = NULL;
	op->done(op, op->err);
}

static void op_done(struct job *job, int status)
{
	struct store_op *op = (struct store_op *)job;
	struct store *st = op->priv.st;

	st->inflight--;
	if (status == JOB_EXPIRED) {
		op->err = STORE_TIMEOUT;
	} else if (status == JOB_CANCELLED) {
		op->err = op->deadline_ms && jobs_now_ms() >= op->deadline_ms ? STORE_TIMEOUT : STORE_UNAVAILABLE;
		/* Never ran: no verdict on the database. A half-open trial lost
		 * this way is replaced by the breaker after its reset timeout. */
		op->priv.allowed = false;
	}
	if (op->priv.allowed)
		breaker_record(&st->breaker, breaker_success(op->err));
	op->priv.allowed = false;
	if (status == JOB_OK)
		note_db_state(st, op->job.lane == JOB_LANE_WRITE, op->err);
	finish(op);
}

static void imm_cb(evutil_socket_t fd, short what, void *arg)
{
	struct store *st = arg;
	struct store_op *op = st->imm_head;

	(void)fd;
	(void)what;
	st->imm_head = st->imm_tail = NULL;
	while (op) {
		struct store_op *next = op->priv.next;

		finish(op); /* may free op, or submit and re-arm the event */
		op = next;
	}
}

/* Answer op on the next loop turn with err, without the pool. */
static void answer_later(struct store *st, struct store_op *op, enum store_err err)
{
	op->err = err;
	op->priv.next = NULL;
	if (st->imm_tail)
		st->imm_tail->priv.next = op;
	else
		st->imm_head = op;
	st->imm_tail = op;
	event_active(st->imm_ev, EV_TIMEOUT, 0);
}

/* One ObjectId per batch document, made on the loop thread with the
 * store's context, so ids keep their order within and across batches. */
static int assign_batch_ids(struct store *st, struct store_op *op)
{
	bson_oid_t *ids = realloc(op->batch_ids, op->nbatch * sizeof *ids);

	if (!ids)
		return -1;
	op->batch_ids = ids;
	for (size_t i = 0; i < op->nbatch; i++)
		if (op->given_ids)
			ids[i] = op->given_ids[i];
		else
			bson_oid_init(&ids[i], st->oidctx);
	return 0;
}

int store_submit(struct store *st, struct store_op *op)
{
	if (!st || !op || op->priv.busy || !op->done || !op_valid(st, op)) {
		errno = EINVAL;
		return -1;
	}
	if (st->closing) {
		errno = ESHUTDOWN;
		return -1;
	}
	if (op->kind == STORE_OP_INSERT_MANY && assign_batch_ids(st, op) < 0)
		return -1;
	results_free(op);
	op->err = STORE_OK;
	op->priv.st = st;
	op->priv.next = NULL;
	op->priv.busy = true;
	op->priv.abandoned = false;
	op->priv.allowed = false;
	op->priv.in_pool = false;
	op->priv.attempts = 0;
	if (op->kind == STORE_OP_INSERT)
		bson_oid_init(&op->id, st->oidctx);

	if (op->deadline_ms && jobs_now_ms() >= op->deadline_ms) {
		answer_later(st, op, STORE_TIMEOUT);
	} else if (st->inflight >= st->o.max_inflight) {
		answer_later(st, op, STORE_BUSY);
	} else if (!op->priv.internal && !breaker_allow(&st->breaker)) {
		answer_later(st, op, STORE_CIRCUIT_OPEN);
	} else {
		op->priv.allowed = !op->priv.internal;
		op->job.work = op_work;
		op->job.done = op_done;
		op->job.deadline_ms = op->deadline_ms;
		op->job.slow = false;
		/* The health ping probes the write lane while writes fail or the
		 * set-up is pending, so it notices when they heal. */
		op->job.lane = op_writes(op) || (op->priv.internal &&
		                                 (!atomic_load(&st->setup_done) || !atomic_load(&st->write_state)))
		                   ? JOB_LANE_WRITE
		                   : JOB_LANE_READ;
		if (jobs_submit(st->pool, &op->job) != 0) {
			/* Unreachable: the queue holds max_inflight + 1 and closing
			 * was checked; the unrecorded allow is a lost trial at worst. */
			op->priv.allowed = false;
			answer_later(st, op, STORE_BUSY);
		} else {
			op->priv.in_pool = true;
			st->inflight++;
		}
	}
	return 0;
}

enum store_err store_exec(struct store *st, struct store_op *op)
{
	bool allowed = false, locked = false;
	struct thread_slot *slot;
	enum store_err err;

	if (!st || !op)
		return STORE_INTERNAL;
	if (op->priv.busy || !op_valid(st, op))
		return op->err = STORE_INTERNAL;
	results_free(op);
	op->priv.st = st;
	op->priv.attempts = 0;
	atomic_store(&op->job.abandoned, false);
	if (op->kind == STORE_OP_INSERT)
		bson_oid_init(&op->id, st->oidctx);
	else if (op->kind == STORE_OP_INSERT_MANY && assign_batch_ids(st, op) < 0)
		return op->err = STORE_INTERNAL;
	if (op->deadline_ms && jobs_now_ms() >= op->deadline_ms)
		return op->err = STORE_TIMEOUT;
	if (tls_slot && tls_slot->st == st && !tls_slot->writer && op_writes(op) && jobs_job_lane() != JOB_LANE_WRITE) {
		log_error(NULL, "store: write refused on a read-lane job (submit the job with JOB_LANE_WRITE)",
		          LF_STR("collection", st->schema->collections[op->coll].name));
		return op->err = STORE_INTERNAL;
	}
	if (!op->priv.internal) {
		if (!breaker_allow(&st->breaker))
			return op->err = STORE_CIRCUIT_OPEN;
		allowed = true;
	}
	if (tls_slot && tls_slot->st == st) {
		slot = tls_slot;
	} else {
		if (pthread_mutex_lock(&st->sync_lock) != 0)
			abort();
		locked = true;
		slot = &st->sync_slot;
	}
	err = run(st, slot, op);
	if (locked && pthread_mutex_unlock(&st->sync_lock) != 0)
		abort();
	if (allowed)
		breaker_record(&st->breaker, breaker_success(err));
	note_db_state(st, slot->writer, err);
	return err;
}

/* ---- health ping ------------------------------------------------------- */

static void ping_done(struct store_op *op, enum store_err err)
{
	(void)op;
	(void)err; /* op_done() already folded the outcome into db_state */
}

static void ping_cb(evutil_socket_t fd, short what, void *arg)
{
	struct store *st = arg;

	(void)fd;
	(void)what;
	if (st->ping.priv.busy || st->closing)
		return;
	st->ping.deadline_ms = jobs_now_ms() + st->o.server_selection_timeout_ms + 1000;
	if (store_submit(st, &st->ping) != 0)
		log_warn(NULL, "store: health ping not submitted", LF_STR("backend", st->be->name));
}

/* ---- open / close ------------------------------------------------------ */

static void log_breaker(void *ud, const char *name, int from, int to)
{
	(void)ud;
	if (to == BREAKER_OPEN)
		log_warn(NULL, "circuit breaker opened", LF_STR("breaker", name),
		         LF_STR("from", breaker_state_name(from)));
	else
		log_info(NULL, "circuit breaker state changed", LF_STR("breaker", name),
		         LF_STR("from", breaker_state_name(from)), LF_STR("to", breaker_state_name(to)));
}

static int thread_init(void *ud, unsigned idx)
{
	struct store *st = ud;
	struct thread_slot *s = &st->slots[idx];

	s->st = st;
	s->writer = idx < st->o.write_threads;
	(void)slot_conn(st, s); /* a failure is retried by the first op */
	tls_slot = s;
	(void)jobs_set_thread_data(s); /* cannot fail on a pool thread */
	return 0;
}

static void thread_fini(void *ud, unsigned idx)
{
	struct store *st = ud;

	slot_drop(st, &st->slots[idx]);
	tls_slot = NULL;
}

static void resolve_opts(struct store_opts *o, const struct store_opts *in)
{
	static const struct store_opts none;

	*o = in ? *in : none;
	if (!o->pool_size)
		o->pool_size = STORE_DEFAULT_POOL;
	if (!o->job_threads)
		o->job_threads = o->pool_size;
	if (o->job_threads > STORE_MAX_THREADS)
		o->job_threads = STORE_MAX_THREADS;
	if (!o->max_inflight)
		o->max_inflight = STORE_DEFAULT_INFLIGHT;
	if (!o->server_selection_timeout_ms)
		o->server_selection_timeout_ms = STORE_DEFAULT_SST_MS;
	if (!o->socket_timeout_ms)
		o->socket_timeout_ms = STORE_DEFAULT_SOCKET_MS;
	if (!o->busy_timeout_ms)
		o->busy_timeout_ms = STORE_DEFAULT_BUSY_MS;
	if (!o->appname)
		o->appname = "resild";
	if (!o->ping_interval_ms)
		o->ping_interval_ms = STORE_DEFAULT_PING_MS;
	if (o->write_threads > STORE_MAX_THREADS - o->job_threads)
		o->write_threads = STORE_MAX_THREADS - o->job_threads;
	if (!o->on_breaker_change)
		o->on_breaker_change = log_breaker;
}

static void seterr(char *err, size_t errlen, const char *msg)
{
	if (err && errlen)
		snprintf(err, errlen, "%s", msg);
}

struct store *store_open(const char *uri, struct event_base *base, const struct store_opts *opts, char *err,
                         size_t errlen)
{
	struct store *st;
	struct breaker_opts bo = {0};
	struct timeval tv;
	char msg[256] = "";
	enum store_err serr;

	if (!uri || !base) {
		seterr(err, errlen, "store: no database URI");
		return NULL;
	}
	if (schema_check(registered_schema, msg, sizeof msg) != 0) {
		seterr(err, errlen, msg);
		return NULL;
	}
	if (sodium_init() < 0) {
		seterr(err, errlen, "store: libsodium initialisation failed");
		return NULL;
	}
	st = calloc(1, sizeof *st);
	if (!st) {
		seterr(err, errlen, "store: out of memory");
		return NULL;
	}
	if (strncmp(uri, "sqlite:", 7) == 0) {
		st->be = &store_sqlite_backend;
	} else if (strncmp(uri, "mongodb://", 10) == 0 || strncmp(uri, "mongodb+srv://", 14) == 0) {
		st->be = &store_mongo_backend;
	} else {
		free(st);
		seterr(err, errlen, "database URI must start with sqlite: or mongodb://");
		return NULL;
	}
	resolve_opts(&st->o, opts);
	if (!st->o.write_threads) /* SQLite has one writer at a time anyway */
		st->o.write_threads = st->be == &store_sqlite_backend ? 1 : (st->o.job_threads + 1) / 2;
	st->schema = registered_schema;
	st->base = base;
	atomic_init(&st->db_state, 1);
	atomic_init(&st->write_state, 1);
	atomic_init(&st->setup_done, false);
	bo.name = st->be->name;
	bo.window_ms = st->o.breaker_window_ms;
	bo.reset_timeout_ms = st->o.breaker_reset_ms;
	bo.volume_threshold = st->o.breaker_volume;
	bo.on_state_change = st->o.on_breaker_change;
	bo.ud = st->o.ud;
	if (breaker_init(&st->breaker, &bo) != 0) {
		free(st);
		seterr(err, errlen, "store: bad circuit breaker options");
		return NULL;
	}
	if (pthread_mutex_init(&st->sync_lock, NULL) != 0) {
		breaker_destroy(&st->breaker);
		free(st);
		seterr(err, errlen, "store: mutex initialisation failed");
		return NULL;
	}
	if (pthread_mutex_init(&st->setup_lock, NULL) != 0) {
		pthread_mutex_destroy(&st->sync_lock);
		breaker_destroy(&st->breaker);
		free(st);
		seterr(err, errlen, "store: mutex initialisation failed");
		return NULL;
	}
	st->sync_slot.st = st;
	st->sync_slot.writer = true;
	st->oidctx = bson_context_new(BSON_CONTEXT_NONE); /* after fork: fresh random part */
	st->imm_ev = event_new(base, -1, 0, imm_cb, st);
	st->ping_ev = event_new(base, -1, EV_PERSIST, ping_cb, st);
	st->nslots = st->o.job_threads + st->o.write_threads;
	st->slots = calloc(st->nslots, sizeof *st->slots);
	if (!st->oidctx || !st->imm_ev || !st->ping_ev || !st->slots) {
		snprintf(msg, sizeof msg, "store: out of memory");
		goto fail;
	}
	if (st->be->open(uri, &st->o, st->schema, &st->bctx, msg, sizeof msg) != 0)
		goto fail;
	/* Only what retrying cannot fix fails the open (a newer database, a
	 * broken migration); an unreachable, unreadable or read-only database
	 * starts the store disconnected, and the health ping retries the
	 * set-up with backoff until it heals. */
	serr = slot_conn(st, &st->sync_slot) ? st->be->setup(st->bctx, st->sync_slot.conn, msg, sizeof msg)
	                                     : STORE_UNAVAILABLE;
	if (serr == STORE_OK) {
		atomic_store(&st->setup_done, true);
	} else if (serr == STORE_UNAVAILABLE || serr == STORE_TIMEOUT) {
		atomic_store(&st->db_state, 0);
		atomic_store(&st->write_state, 0);
		log_warn(NULL, "database unavailable at start; continuing disconnected",
		         LF_STR("backend", st->be->name), LF_STR("error", msg[0] ? msg : "cannot open"));
		msg[0] = '\0';
		slot_drop(st, &st->sync_slot);
	} else {
		goto fail;
	}
	st->pool = jobs_create_lanes(base, st->o.job_threads, st->o.write_threads, st->o.max_inflight + 1, thread_init,
	                             thread_fini, st);
	if (!st->pool) {
		int e = errno;

		snprintf(msg, sizeof msg, "store: cannot start %u database threads: %s", st->nslots, strerror(e));
		goto fail;
	}
	store_op_init(&st->ping, STORE_OP_PING, 0);
	st->ping.priv.internal = true;
	st->ping.done = ping_done;
	tv.tv_sec = st->o.ping_interval_ms / 1000;
	tv.tv_usec = (st->o.ping_interval_ms % 1000) * 1000;
	if (event_add(st->ping_ev, &tv) != 0) {
		snprintf(msg, sizeof msg, "store: cannot arm the health ping timer");
		goto fail;
	}
	return st;

fail:
	seterr(err, errlen, msg[0] ? msg : "store: cannot open the database");
	st->closing = true;
	store_close(st);
	return NULL;
}

void store_close(struct store *st)
{
	if (!st)
		return;
	st->closing = true;
	if (st->ping_ev)
		event_free(st->ping_ev);
	st->ping_ev = NULL;
	jobs_free(st->pool); /* runs every outstanding done() */
	st->pool = NULL;
	while (st->imm_head)
		imm_cb(-1, 0, st);
	if (st->imm_ev)
		event_free(st->imm_ev);
	slot_drop(st, &st->sync_slot);
	if (st->bctx)
		st->be->close(st->bctx);
	if (st->oidctx)
		bson_context_destroy(st->oidctx);
	pthread_mutex_destroy(&st->sync_lock);
	pthread_mutex_destroy(&st->setup_lock);
	breaker_destroy(&st->breaker);
	free(st->slots);
	free(st);
}

const char *store_backend_name(const struct store *st)
{
	return st->be->name;
}

int store_breaker_state(const struct store *st)
{
	return breaker_state(&st->breaker);
}

void store_breaker_stats(struct store *st, struct breaker_stats *out)
{
	breaker_get_stats(&st->breaker, out);
}

struct job_pool *store_job_pool(struct store *st)
{
	return st ? st->pool : NULL;
}

int store_db_state(const struct store *st)
{
	return atomic_load(&st->db_state) && atomic_load(&st->write_state);
}
