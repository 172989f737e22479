/* store_mongo.c - the MongoDB backend of the store (libmongoc 1.23).
 *
 * One mongoc_client_pool_t per store, created in the worker after fork;
 * each attempt pops a client on the calling pool thread and pushes it back.
 * mongoc_init() runs once per process (pthread_once) the first time a
 * MongoDB store opens; store_global_cleanup() calls mongoc_cleanup() at
 * exit. URI options the operator did not set are filled from store_opts:
 * serverSelectionTimeoutMS, socketTimeoutMS, maxPoolSize, appname, and
 * retryReads/retryWrites = true.
 *
 * Errors: duplicate key (11000) -> STORE_DUPLICATE_KEY with the field taken
 * from the error's keyPattern or index name; server selection, stream,
 * client and protocol errors and the "node is going away" server codes ->
 * STORE_UNAVAILABLE (store.c retries them); a stream error after a whole
 * socket timeout, or MaxTimeMSExpired -> STORE_TIMEOUT. Server error
 * messages are never logged: E11000 messages quote the duplicate value.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mongoc/mongoc.h>

#include "jobs.h"
#include "log.h"
#include "store_internal.h"

#define MG_DB_MAX 64

struct mg_ctx {
	mongoc_client_pool_t *pool;
	const struct store_schema *schema;
	char db[MG_DB_MAX];
	int32_t socket_timeout_ms;
};

static pthread_once_t mg_once = PTHREAD_ONCE_INIT;
static atomic_bool mg_inited;

/* libmongoc's own diagnostics into our log: errors and warnings only (its
 * messages name hosts and operations, never document contents). */
static void mg_log(mongoc_log_level_t level, const char *domain, const char *message, void *ud)
{
	(void)ud;
	if (level <= MONGOC_LOG_LEVEL_ERROR)
		log_error(NULL, "libmongoc", LF_STR("domain", domain), LF_STR("error", message));
	else if (level == MONGOC_LOG_LEVEL_WARNING)
		log_warn(NULL, "libmongoc", LF_STR("domain", domain), LF_STR("error", message));
}

static void mg_init_once(void)
{
	mongoc_log_set_handler(mg_log, NULL);
	mongoc_init();
	atomic_store(&mg_inited, true);
}

void store_global_cleanup(void)
{
	if (atomic_exchange(&mg_inited, false))
		mongoc_cleanup();
}

/* ---- open / close ------------------------------------------------------ */

static bool set_default_i32(mongoc_uri_t *uri, const char *key, int32_t v)
{
	return mongoc_uri_has_option(uri, key) || mongoc_uri_set_option_as_int32(uri, key, v);
}

static bool set_default_bool(mongoc_uri_t *uri, const char *key, bool v)
{
	return mongoc_uri_has_option(uri, key) || mongoc_uri_set_option_as_bool(uri, key, v);
}

static int mg_open(const char *uristr, const struct store_opts *o, const struct store_schema *schema, void **ctxp,
                   char *err, size_t errlen)
{
	bson_error_t e;
	mongoc_uri_t *uri;
	struct mg_ctx *ctx;
	const char *db;
	bool ok;

	if (pthread_once(&mg_once, mg_init_once) != 0) {
		snprintf(err, errlen, "store: mongoc initialisation failed");
		return -1;
	}
	uri = mongoc_uri_new_with_error(uristr, &e);
	if (!uri) {
		snprintf(err, errlen, "invalid MongoDB URI: %s", e.message);
		return -1;
	}
	ok = set_default_i32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, (int32_t)o->server_selection_timeout_ms) &&
	     set_default_i32(uri, MONGOC_URI_SOCKETTIMEOUTMS, (int32_t)o->socket_timeout_ms) &&
	     set_default_i32(uri, MONGOC_URI_MAXPOOLSIZE, (int32_t)o->pool_size) &&
	     set_default_bool(uri, MONGOC_URI_RETRYWRITES, true) &&
	     set_default_bool(uri, MONGOC_URI_RETRYREADS, true) &&
	     (mongoc_uri_get_appname(uri) || mongoc_uri_set_appname(uri, o->appname));
	db = mongoc_uri_get_database(uri);
	if (!db || !*db)
		db = "resil";
	if (!ok || strlen(db) >= MG_DB_MAX) {
		snprintf(err, errlen, ok ? "MongoDB URI: database name too long" : "MongoDB URI: bad options");
		mongoc_uri_destroy(uri);
		return -1;
	}
	ctx = calloc(1, sizeof *ctx);
	if (!ctx) {
		mongoc_uri_destroy(uri);
		snprintf(err, errlen, "store: out of memory");
		return -1;
	}
	snprintf(ctx->db, sizeof ctx->db, "%s", db);
	ctx->schema = schema;
	ctx->socket_timeout_ms = mongoc_uri_get_option_as_int32(uri, MONGOC_URI_SOCKETTIMEOUTMS, 0);
	ctx->pool = mongoc_client_pool_new_with_error(uri, &e);
	mongoc_uri_destroy(uri);
	if (!ctx->pool) {
		snprintf(err, errlen, "MongoDB client pool: %s", e.message);
		free(ctx);
		return -1;
	}
	if (!mongoc_client_pool_set_error_api(ctx->pool, MONGOC_ERROR_API_VERSION_2)) {
		snprintf(err, errlen, "MongoDB client pool: cannot select the error API");
		mongoc_client_pool_destroy(ctx->pool);
		free(ctx);
		return -1;
	}
	*ctxp = ctx;
	return 0;
}

static void mg_close(void *vctx)
{
	struct mg_ctx *ctx = vctx;

	mongoc_client_pool_destroy(ctx->pool);
	free(ctx);
}

/* Clients are popped per attempt: no per-thread handle. */
static int mg_conn_open(void *vctx, bool writer, void **connp, char *err, size_t errlen)
{
	(void)vctx;
	(void)writer;
	(void)err;
	(void)errlen;
	*connp = NULL;
	return 0;
}

static void mg_conn_close(void *vctx, void *conn)
{
	(void)vctx;
	(void)conn;
}

/* ---- errors ------------------------------------------------------------ */

/* "name_1" -> "name", "_id_" -> "_id", "a_1_createdAt_-1" -> "a". */
static void index_field(const char *name, size_t len, char *out)
{
	size_t n = 0;

	if (len >= 4 && strncmp(name, "_id_", 4) == 0) {
		snprintf(out, STORE_FIELD_MAX, "_id");
		return;
	}
	while (n < len && n < STORE_FIELD_MAX - 1 &&
	       !(name[n] == '_' && n + 1 < len && (name[n + 1] == '1' || name[n + 1] == '-')))
		n++;
	memcpy(out, name, n);
	out[n] = '\0';
}

/* The field of a duplicate-key error: keyPattern's first key if the reply
 * has one, else the index named in the message. */
static void dup_field(const bson_error_t *e, const bson_t *reply, char *out)
{
	bson_iter_t it, kp;
	const char *p;

	out[0] = '\0';
	if (reply && bson_iter_init(&it, reply) &&
	    (bson_iter_find_descendant(&it, "writeErrors.0.keyPattern", &kp) ||
	     (bson_iter_init(&it, reply) && bson_iter_find_descendant(&it, "keyPattern", &kp))) &&
	    BSON_ITER_HOLDS_DOCUMENT(&kp) && bson_iter_recurse(&kp, &it) && bson_iter_next(&it)) {
		snprintf(out, STORE_FIELD_MAX, "%s", bson_iter_key(&it));
		return;
	}
	p = strstr(e->message, "index: ");
	if (p) {
		p += strlen("index: ");
		index_field(p, strcspn(p, " "), out);
	}
}

static bool code_unavailable(uint32_t code)
{
	switch (code) {
	case 6:     /* HostUnreachable */
	case 7:     /* HostNotFound */
	case 91:    /* ShutdownInProgress */
	case 189:   /* PrimarySteppedDown */
	case 9001:  /* SocketException */
	case 10107: /* NotWritablePrimary */
	case 11600: /* InterruptedAtShutdown */
	case 11602: /* InterruptedDueToReplStateChange */
	case 13435: /* NotPrimaryNoSecondaryOk */
	case 13436: /* NotPrimaryOrSecondary */ return true;
	default: return false;
	}
}

static enum store_err map_err(const struct mg_ctx *ctx, const bson_error_t *e, const bson_t *reply, struct store_op *op,
                              struct store_call *call, uint64_t started_ms, const char *what)
{
	uint64_t took = jobs_now_ms() - started_ms;

	switch (e->domain) {
	case MONGOC_ERROR_SERVER:
	case MONGOC_ERROR_WRITE_CONCERN:
		if (e->code == 11000 || e->code == 11001 || e->code == 12582) {
			dup_field(e, reply, op->dup_field);
			return STORE_DUPLICATE_KEY;
		}
		if (e->code == 50 || e->code == 262) /* MaxTimeMSExpired, ExceededTimeLimit */
			return STORE_TIMEOUT;
		if (code_unavailable(e->code) || e->code == 89 /* NetworkTimeout */) {
			log_warn(NULL, "mongodb: server unavailable", LF_STR("during", what), LF_INT("code", e->code));
			return STORE_UNAVAILABLE;
		}
		/* The message may quote document values: log the code only. */
		log_error(NULL, "mongodb: server error", LF_STR("during", what), LF_INT("code", e->code));
		return STORE_INTERNAL;
	case MONGOC_ERROR_STREAM:
		if (ctx->socket_timeout_ms > 0 && took * 10 >= (uint64_t)ctx->socket_timeout_ms * 9) {
			log_warn(NULL, "mongodb: socket timeout", LF_STR("during", what), LF_INT("tookMs", took));
			return STORE_TIMEOUT;
		}
		/* fall through */
	case MONGOC_ERROR_SERVER_SELECTION:
	case MONGOC_ERROR_CLIENT:
	case MONGOC_ERROR_PROTOCOL:
		/* Selection already waited serverSelectionTimeoutMS, and client
		 * errors (authentication) do not heal in milliseconds: repeating
		 * either would only multiply the wait. */
		if (call && (e->domain == MONGOC_ERROR_SERVER_SELECTION || e->domain == MONGOC_ERROR_CLIENT))
			call->no_retry = true;
		log_warn(NULL, "mongodb: unavailable", LF_STR("during", what), LF_INT("domain", e->domain),
		         LF_INT("code", e->code), LF_STR("error", e->message));
		return STORE_UNAVAILABLE;
	default:
		log_error(NULL, "mongodb: driver error", LF_STR("during", what), LF_INT("domain", e->domain),
		          LF_INT("code", e->code), LF_STR("error", e->message));
		return STORE_INTERNAL;
	}
}

/* ---- set-up ------------------------------------------------------------- */

/* createIndexes for one collection. */
static enum store_err create_indexes(struct mg_ctx *ctx, mongoc_client_t *client, unsigned coll, char *err,
                                     size_t errlen)
{
	bson_t cmd = BSON_INITIALIZER, arr, ix, key, reply;
	bson_error_t e;
	char ibuf[16];
	const char *ikey;
	uint32_t n = 0;
	uint64_t t0 = jobs_now_ms();
	enum store_err serr = STORE_OK;
	struct store_op scratch;
	bool ok;

	const struct store_collection *co = &ctx->schema->collections[coll];

	ok = BSON_APPEND_UTF8(&cmd, "createIndexes", co->name) && BSON_APPEND_ARRAY_BEGIN(&cmd, "indexes", &arr);
	for (unsigned i = 0; ok && i < co->nindexes; i++) {
		const struct store_index *m = &co->indexes[i];

		bson_uint32_to_string(n++, &ikey, ibuf, sizeof ibuf);
		ok = BSON_APPEND_DOCUMENT_BEGIN(&arr, ikey, &ix) && BSON_APPEND_DOCUMENT_BEGIN(&ix, "key", &key);
		for (unsigned k = 0; ok && k < STORE_INDEX_KEYS_MAX && m->keys[k].field; k++)
			ok = BSON_APPEND_INT32(&key, m->keys[k].field, m->keys[k].dir);
		ok = ok && bson_append_document_end(&ix, &key) && BSON_APPEND_UTF8(&ix, "name", m->name) &&
		     (!m->unique || BSON_APPEND_BOOL(&ix, "unique", true)) && bson_append_document_end(&arr, &ix);
	}
	ok = ok && bson_append_array_end(&cmd, &arr);
	if (!ok) {
		bson_destroy(&cmd);
		snprintf(err, errlen, "mongodb: cannot build createIndexes");
		return STORE_INTERNAL;
	}
	if (n > 0 && !mongoc_client_write_command_with_opts(client, ctx->db, &cmd, NULL, &reply, &e)) {
		memset(&scratch, 0, sizeof scratch);
		serr = map_err(ctx, &e, &reply, &scratch, NULL, t0, "createIndexes");
		snprintf(err, errlen, "mongodb: cannot create indexes on %s: %s", co->name,
		         e.domain == MONGOC_ERROR_SERVER ? "server error" : e.message);
		if (serr == STORE_DUPLICATE_KEY)
			serr = STORE_INTERNAL; /* existing data violates a unique index */
	}
	if (n > 0)
		bson_destroy(&reply);
	bson_destroy(&cmd);
	return serr;
}

static enum store_err mg_setup(void *vctx, void *conn, char *err, size_t errlen)
{
	struct mg_ctx *ctx = vctx;
	mongoc_client_t *client = mongoc_client_pool_pop(ctx->pool);
	enum store_err serr = STORE_OK;

	(void)conn;
	for (unsigned c = 0; c < ctx->schema->ncollections && serr == STORE_OK; c++)
		serr = create_indexes(ctx, client, c, err, errlen);
	mongoc_client_pool_push(ctx->pool, client);
	return serr;
}

/* ---- operations --------------------------------------------------------- */

/* The MongoDB query for op's filter; conditions on the same field are
 * combined with $and so none overwrites another. */
static bool build_filter(const struct store_filter *f, bson_t *q)
{
	bool repeat = false, ok = true;
	bson_t and, *dst = q, item, sub, arr;
	char ibuf[16];
	const char *ikey;

	for (unsigned i = 0; i < f->n && !repeat; i++)
		for (unsigned k = 0; k < i; k++)
			if (strcmp(f->cond[i].field, f->cond[k].field) == 0)
				repeat = true;
	if (repeat)
		ok = BSON_APPEND_ARRAY_BEGIN(q, "$and", &and);
	for (unsigned i = 0; ok && i < f->n; i++) {
		const struct store_cond *c = &f->cond[i];

		if (repeat) {
			bson_uint32_to_string(i, &ikey, ibuf, sizeof ibuf);
			ok = BSON_APPEND_DOCUMENT_BEGIN(&and, ikey, &item);
			dst = &item;
		}
		switch (c->op) {
		case STORE_EQ:
		case STORE_CONTAINS: ok = ok && store_value_append(dst, c->field, &c->v); break;
		case STORE_NE:
			ok = ok && BSON_APPEND_DOCUMENT_BEGIN(dst, c->field, &sub) &&
			     store_value_append(&sub, "$ne", &c->v) && bson_append_document_end(dst, &sub);
			break;
		case STORE_IN:
			ok = ok && BSON_APPEND_DOCUMENT_BEGIN(dst, c->field, &sub) &&
			     BSON_APPEND_ARRAY_BEGIN(&sub, "$in", &arr);
			for (size_t k = 0; ok && k < c->nin; k++) {
				bson_uint32_to_string((uint32_t)k, &ikey, ibuf, sizeof ibuf);
				ok = store_value_append(&arr, ikey, &c->in[k]);
			}
			ok = ok && bson_append_array_end(&sub, &arr) && bson_append_document_end(dst, &sub);
			break;
		default: ok = false; break;
		}
		if (repeat)
			ok = ok && bson_append_document_end(&and, &item);
	}
	if (repeat)
		ok = ok && bson_append_array_end(q, &and);
	return ok;
}

/* Milliseconds left before the deadline for maxTimeMS (0: no deadline). */
static int64_t time_left(const struct store_call *call)
{
	uint64_t now = jobs_now_ms();

	if (!call->deadline_ms)
		return 0;
	return call->deadline_ms > now ? (int64_t)(call->deadline_ms - now) : 1;
}

static enum store_err do_insert(struct mg_ctx *ctx, mongoc_collection_t *coll, struct store_op *op,
                                struct store_call *call)
{
	bson_t reply;
	bson_error_t e;
	uint64_t t0 = jobs_now_ms();
	enum store_err err = STORE_OK;

	if (!mongoc_collection_insert_one(coll, op->result, NULL, &reply, &e))
		err = map_err(ctx, &e, &reply, op, call, t0, "insert");
	bson_destroy(&reply);
	return err;
}

/* Documents one by one from op->count (where an earlier attempt stopped),
 * each a retryable write. A duplicate _id on the first document of a
 * repeated attempt is that document's earlier write having landed. */
static enum store_err do_insert_many(struct mg_ctx *ctx, mongoc_collection_t *coll, struct store_op *op,
                                     struct store_call *call)
{
	size_t first = (size_t)op->count;

	for (size_t i = first; i < op->ndocs; i++) {
		bson_t reply;
		bson_error_t e;
		uint64_t t0 = jobs_now_ms();
		enum store_err err = STORE_OK;

		if (!mongoc_collection_insert_one(coll, op->docs[i], NULL, &reply, &e))
			err = map_err(ctx, &e, &reply, op, call, t0, "insert");
		bson_destroy(&reply);
		if (err == STORE_DUPLICATE_KEY && i == first && call->attempt > 1 &&
		    strcmp(op->dup_field, "_id") == 0) {
			op->dup_field[0] = '\0';
			err = STORE_OK;
		}
		if (err != STORE_OK)
			return err;
		op->count = (int64_t)(i + 1);
	}
	return STORE_OK;
}

static enum store_err do_find(struct mg_ctx *ctx, mongoc_collection_t *coll, struct store_op *op,
                              struct store_call *call)
{
	const struct store_filter *f = &op->filter;
	bson_t q = BSON_INITIALIZER, opts = BSON_INITIALIZER, sort;
	bool one = op->kind != STORE_OP_FIND, by_id = op->kind == STORE_OP_FIND_BY_ID;
	int dir = f->sort_dir < 0 ? -1 : 1;
	int64_t limit = one ? 1 : f->limit, left = time_left(call);
	uint64_t t0 = jobs_now_ms();
	mongoc_cursor_t *cur = NULL;
	const bson_t *doc, *errdoc = NULL;
	bson_error_t e;
	size_t cap = 0;
	enum store_err err = STORE_OK;
	bool ok;

	if (by_id)
		ok = BSON_APPEND_OID(&q, "_id", &op->id);
	else
		ok = build_filter(f, &q) && BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort) &&
		     (!f->sort_field[0] || strcmp(f->sort_field, "_id") == 0 ||
		      BSON_APPEND_INT32(&sort, f->sort_field, dir)) &&
		     BSON_APPEND_INT32(&sort, "_id", dir) && bson_append_document_end(&opts, &sort) &&
		     (f->skip <= 0 || BSON_APPEND_INT64(&opts, "skip", f->skip));
	ok = ok && (limit <= 0 || BSON_APPEND_INT64(&opts, "limit", limit)) &&
	     (!one || BSON_APPEND_BOOL(&opts, "singleBatch", true)) &&
	     (!left || BSON_APPEND_INT64(&opts, "maxTimeMS", left));
	if (!ok) {
		err = STORE_INTERNAL;
		goto out;
	}
	cur = mongoc_collection_find_with_opts(coll, &q, &opts, NULL);
	while (mongoc_cursor_next(cur, &doc)) {
		bson_t *copy = bson_copy(doc);

		if (!copy) {
			err = STORE_INTERNAL;
			goto out;
		}
		if (one) {
			if (op->result)
				bson_destroy(op->result);
			op->result = copy;
			continue;
		}
		if (op->ndocs == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			bson_t **nd = reallocarray(op->docs, ncap, sizeof *nd);

			if (!nd) {
				bson_destroy(copy);
				err = STORE_INTERNAL;
				goto out;
			}
			op->docs = nd;
			cap = ncap;
		}
		op->docs[op->ndocs++] = copy;
	}
	if (mongoc_cursor_error_document(cur, &e, &errdoc))
		err = map_err(ctx, &e, errdoc, op, call, t0, "find");
	else if (one && !op->result)
		err = STORE_NOT_FOUND;
out:
	if (cur)
		mongoc_cursor_destroy(cur);
	bson_destroy(&q);
	bson_destroy(&opts);
	return err;
}

static enum store_err do_count(struct mg_ctx *ctx, mongoc_collection_t *coll, struct store_op *op,
                               struct store_call *call)
{
	bson_t q = BSON_INITIALIZER, opts = BSON_INITIALIZER, reply;
	bson_error_t e;
	int64_t left = time_left(call), n;
	uint64_t t0 = jobs_now_ms();
	enum store_err err = STORE_OK;

	if (!build_filter(&op->filter, &q) || (left && !BSON_APPEND_INT64(&opts, "maxTimeMS", left))) {
		bson_destroy(&q);
		bson_destroy(&opts);
		return STORE_INTERNAL;
	}
	n = mongoc_collection_count_documents(coll, &q, &opts, NULL, &reply, &e);
	if (n < 0)
		err = map_err(ctx, &e, &reply, op, call, t0, "count");
	else
		op->count = n;
	bson_destroy(&reply);
	bson_destroy(&q);
	bson_destroy(&opts);
	return err;
}

/* {$set: {fields..., updatedAt}, $addToSet: {field: value}} */
static bool build_update(const struct store_op *op, int64_t now_ms, bson_t *u)
{
	bson_t set, add;
	bson_iter_t it;
	bool ok = BSON_APPEND_DOCUMENT_BEGIN(u, "$set", &set);

	if (ok && op->doc && bson_iter_init(&it, op->doc))
		while (ok && bson_iter_next(&it))
			if (!store_key_protected(bson_iter_key(&it)))
				ok = bson_append_iter(&set, bson_iter_key(&it), -1, &it);
	ok = ok && BSON_APPEND_DATE_TIME(&set, "updatedAt", now_ms) && bson_append_document_end(u, &set);
	if (ok && op->push_field[0])
		ok = BSON_APPEND_DOCUMENT_BEGIN(u, "$addToSet", &add) &&
		     store_value_append(&add, op->push_field, &op->push_value) && bson_append_document_end(u, &add);
	return ok;
}

static enum store_err do_update(struct mg_ctx *ctx, mongoc_collection_t *coll, struct store_op *op,
                                struct store_call *call)
{
	bson_t q = BSON_INITIALIZER, u = BSON_INITIALIZER, reply;
	bson_error_t e;
	bson_iter_t it;
	mongoc_find_and_modify_opts_t *fam = mongoc_find_and_modify_opts_new();
	int64_t left = time_left(call);
	uint64_t t0 = jobs_now_ms();
	enum store_err err = STORE_OK;
	bool ok;

	ok = fam && BSON_APPEND_OID(&q, "_id", &op->id) && build_update(op, call->now_ms, &u) &&
	     mongoc_find_and_modify_opts_set_update(fam, &u) &&
	     mongoc_find_and_modify_opts_set_flags(fam, MONGOC_FIND_AND_MODIFY_RETURN_NEW) &&
	     (!left ||
	      mongoc_find_and_modify_opts_set_max_time_ms(fam, (uint32_t)(left > UINT32_MAX ? UINT32_MAX : left)));
	if (!ok) {
		err = STORE_INTERNAL;
	} else if (!mongoc_collection_find_and_modify_with_opts(coll, &q, fam, &reply, &e)) {
		err = map_err(ctx, &e, &reply, op, call, t0, "update");
		bson_destroy(&reply);
	} else {
		if (bson_iter_init_find(&it, &reply, "value") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
			uint32_t len;
			const uint8_t *data;

			bson_iter_document(&it, &len, &data);
			op->result = bson_new_from_data(data, len);
			err = op->result ? STORE_OK : STORE_INTERNAL;
		} else {
			err = STORE_NOT_FOUND;
		}
		bson_destroy(&reply);
	}
	if (fam)
		mongoc_find_and_modify_opts_destroy(fam);
	bson_destroy(&q);
	bson_destroy(&u);
	return err;
}

static enum store_err do_delete(struct mg_ctx *ctx, mongoc_collection_t *coll, struct store_op *op,
                                struct store_call *call)
{
	bson_t q = BSON_INITIALIZER, reply;
	bson_error_t e;
	bson_iter_t it;
	uint64_t t0 = jobs_now_ms();
	enum store_err err = STORE_OK;

	if (!BSON_APPEND_OID(&q, "_id", &op->id)) {
		bson_destroy(&q);
		return STORE_INTERNAL;
	}
	if (!mongoc_collection_delete_one(coll, &q, NULL, &reply, &e))
		err = map_err(ctx, &e, &reply, op, call, t0, "delete");
	else if (!bson_iter_init_find(&it, &reply, "deletedCount") || bson_iter_as_int64(&it) == 0)
		err = STORE_NOT_FOUND;
	bson_destroy(&reply);
	bson_destroy(&q);
	return err;
}

static enum store_err do_ping(struct mg_ctx *ctx, mongoc_client_t *client, struct store_op *op, struct store_call *call)
{
	bson_t cmd = BSON_INITIALIZER, reply;
	bson_error_t e;
	uint64_t t0 = jobs_now_ms();
	enum store_err err = STORE_OK;

	BSON_APPEND_INT32(&cmd, "ping", 1);
	if (!mongoc_client_command_simple(client, "admin", &cmd, NULL, &reply, &e))
		err = map_err(ctx, &e, &reply, op, call, t0, "ping");
	bson_destroy(&reply);
	bson_destroy(&cmd);
	return err;
}

static enum store_err mg_exec(void *vctx, void *conn, struct store_op *op, struct store_call *call)
{
	struct mg_ctx *ctx = vctx;
	mongoc_client_t *client = mongoc_client_pool_pop(ctx->pool);
	mongoc_collection_t *coll = NULL;
	enum store_err err;

	(void)conn;
	if (op->kind != STORE_OP_PING)
		coll = mongoc_client_get_collection(client, ctx->db, ctx->schema->collections[op->coll].name);
	switch (op->kind) {
	case STORE_OP_INSERT: err = do_insert(ctx, coll, op, call); break;
	case STORE_OP_INSERT_MANY: err = do_insert_many(ctx, coll, op, call); break;
	case STORE_OP_FIND_BY_ID:
	case STORE_OP_FIND_ONE:
	case STORE_OP_FIND: err = do_find(ctx, coll, op, call); break;
	case STORE_OP_COUNT: err = do_count(ctx, coll, op, call); break;
	case STORE_OP_UPDATE_BY_ID: err = do_update(ctx, coll, op, call); break;
	case STORE_OP_DELETE_BY_ID: err = do_delete(ctx, coll, op, call); break;
	case STORE_OP_PING: err = do_ping(ctx, client, op, call); break;
	default: err = STORE_INTERNAL; break;
	}
	if (coll)
		mongoc_collection_destroy(coll);
	mongoc_client_pool_push(ctx->pool, client);
	return err;
}

const struct store_backend store_mongo_backend = {
    .name = "mongodb",
    .open = mg_open,
    .close = mg_close,
    .conn_open = mg_conn_open,
    .conn_close = mg_conn_close,
    .setup = mg_setup,
    .exec = mg_exec,
};
