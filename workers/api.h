/* api.h - glue between the HTTP layer and the store for the reference
 * API's handlers: route jobs, error mapping to SPEC section 5 codes, and
 * BSON documents rendered as the API's JSON (ids as 24-hex strings, dates
 * as ISO 8601).
 *
 * A route is: validate on the loop -> one job on the pool -> answer on the
 * loop. The job embeds struct api_job first and owns copies of everything
 * it needs (ids, the caller's id and role, parsed input): work() runs the
 * route's whole store sequence synchronously on a pool thread with
 * api_run()/api_exec() (through the store's breaker and retry, bounded by
 * the request's deadline) and never touches loop state; done() runs on the
 * loop and answers. A failure recorded by work() (api_job_fail, a failed
 * api_run) is answered by this layer and done() is not called.
 *
 *   struct get_job { struct api_job base; bson_oid_t id; bson_t *doc; };
 *   static void get_work(struct api_job *j) {
 *           struct get_job *g = (struct get_job *)j;
 *           g->doc = api_find_by_id(j, COLL_POSTS, &g->id);
 *   }
 *   static void get_done(struct api_job *j, struct http_request *req) {
 *           ... answer from ((struct get_job *)j)->doc ...
 *   }
 *   struct get_job *g = api_job_new(req, sizeof(*g), get_work, get_done);
 *   g->id = id;
 *   return api_job_submit(&g->base);
 *
 * Each request has one deadline timer (SPEC section 9), armed by its first
 * job or call: when it fires, the client gets 504 TIMEOUT at once, the job
 * is abandoned (api_run() refuses further store calls) and its late result
 * is discarded.
 */
#ifndef RESIL_API_H
#define RESIL_API_H

#include "app.h"
#include "jobs.h"
#include "schema.h"
#include "store.h"

struct api_call;
struct api_job;
struct event_base;
struct resil_config;
typedef void (*api_cb)(struct api_call *c, enum store_err err);
typedef void (*api_job_fn)(struct api_job *j);
typedef void (*api_job_done_fn)(struct api_job *j, struct http_request *req);

struct api_job {
	struct job job;           /* private: the pool's work item */
	struct http_request *req; /* private: loop side; NULL once answered */
	api_job_fn work;          /* pool thread */
	api_job_done_fn done;     /* loop thread, only on success and while the request waits */
	api_job_fn cleanup;       /* optional, loop thread, always: frees what the job owns */
	/* Outcome, written by work(). */
	enum store_err err; /* first failed store call (api_run) */
	char dup_field[STORE_FIELD_MAX];
	int fail_status; /* api_job_fail(): status, code, message (static strings) */
	const char *fail_code, *fail_msg;
};

/* A zeroed job of size bytes (>= sizeof(struct api_job), the route's struct
 * that embeds it first), or NULL (out of memory). */
void *api_job_new(struct http_request *req, size_t size, api_job_fn work, api_job_done_fn done);
/* Mark the job slow (password hashing): it may not take every thread. */
void api_job_slow(struct api_job *j);
/* The job only reads: it runs on the read lane, never behind writes. */
void api_job_reads(struct api_job *j);
/* Queue it under the request's deadline. On failure answers the request
 * itself (503 busy, 504 past the deadline) and frees the job (cleanup
 * runs). Always returns APP_DONE. */
int api_job_submit(struct api_job *j);
/* Drop a job that was never submitted and answer 503 (cleanup runs).
 * Returns APP_DONE. */
int api_job_drop(struct api_job *j);

/* Pool thread, inside work(). */
/* Run op through the store (breaker, retry, the request's deadline) and
 * return its error; once the request was abandoned (deadline passed, 504
 * sent) nothing runs and STORE_TIMEOUT is returned. */
enum store_err api_exec(struct api_job *j, struct store_op *op);
/* api_exec(), recording any error but OK as the job's failure (answered
 * with the SPEC error envelope). 0 or -1. */
int api_run(struct api_job *j, struct store_op *op);
/* Record an HTTP failure (static strings); returns -1. */
int api_job_fail(struct api_job *j, int status, const char *code, const char *msg);
/* FIND_BY_ID: the document (caller owns), or NULL with the failure recorded
 * (404 NOT_FOUND when there is none). */
bson_t *api_find_by_id(struct api_job *j, int coll, const bson_oid_t *id);
/* UPDATE_BY_ID with fields ($set, consumed), then the updated document
 * (caller owns), or NULL with the failure recorded. */
bson_t *api_update_by_id(struct api_job *j, int coll, const bson_oid_t *id, bson_t *fields);

/* A list: count, one page, and optionally the documents its items refer to
 * (join_field holds an ObjectId of join_coll; fetched with one IN query).
 * Fill the inputs on the loop, api_list_run() in work(), render in done(),
 * api_list_clear() in cleanup. */
struct api_list {
	int coll;
	struct store_filter filter; /* conditions and sort; paging is set by api_list_run */
	int64_t page, limit;
	const char *join_field; /* NULL: no join */
	int join_coll;
	/* results */
	int64_t total;
	bson_t **docs;
	size_t ndocs;
	bson_t **refs;
	size_t nrefs;
};
int api_list_run(struct api_job *j, struct api_list *l);
/* The distinct ObjectIds of field in docs[0..n) (skipping documents that
 * have the field unless, when given), at most STORE_IN_MAX; returns how many. */
size_t api_distinct_oids(bson_t *const *docs, size_t n, const char *field, const char *unless,
                         bson_oid_t ids[STORE_IN_MAX]);
/* The joined document item's join_field refers to, or NULL. */
const bson_t *api_list_ref(const struct api_list *l, const bson_t *item);
void api_list_clear(struct api_list *l);
typedef void (*api_item_gen)(void *yajl_gen, const bson_t *item, const struct api_list *l);
/* {"success":true,"data":[gen(item)...],"pagination":{...}} as a finished
 * yajl_gen (caller frees), or NULL. */
void *api_list_json(const struct api_list *l, api_item_gen gen);
/* Answer 200 with that body. */
void api_send_list(struct http_request *req, const struct api_list *l, api_item_gen gen);
/* Answer status with ready JSON bytes. */
void api_send_json(struct http_request *req, int status, const void *buf, size_t len);

struct api_call {
	struct store_op op;
	struct http_request *req; /* NULL once the request was answered (timeout) */
	api_cb cb;
	void *data; /* handler state (arena of req while req lives) */
	int64_t n;  /* handler scratch */
};

/* The worker's store (NULL until opened). */
struct store *api_store(void);
int api_open_store(struct event_base *base, const struct resil_config *cfg, char *err, size_t errlen);
void api_close_store(void);

/* A single store call (middleware such as mw_auth, the chat's upgrade):
 * store_submit under the request's deadline; cb runs on the loop unless the
 * deadline answered first. The call is freed after cb returns. */
struct api_call *api_call_new(struct http_request *req, int kind, int coll, api_cb cb);
/* Submit; on failure answers the request itself. Always returns APP_DONE. */
int api_call_submit(struct api_call *c);
/* Answer the request with the error envelope for a store error. */
int api_fail_store(struct http_request *req, enum store_err err, const char *dup_field);

/* Serializers list the fields they emit: a stored field not listed
 * (password hashes, __v, anything unknown) is never sent (SPEC section 6).
 * Values: ObjectIds as 24 hex digits, datetimes as ISO 8601, sub-documents
 * and arrays as they are stored. */
/* {"id": hex, "_id": hex, field: value...} for the listed fields the
 * document has (NULL doc: null). */
void api_gen_object(void *yajl_gen, const bson_t *doc, const char *const *fields);
/* "id" and "_id" keys with the document's ObjectId. */
void api_gen_ids(void *yajl_gen, const bson_t *doc);
/* field: its stored value, or null when absent. */
void api_gen_field(void *yajl_gen, const bson_t *doc, const char *field);
void api_gen_iso(void *yajl_gen, int64_t ms_since_epoch);
/* Parse the :id route parameter; on failure answers 404 and returns -1. */
int api_param_id(struct http_request *req, const char *name, bson_oid_t *out);
/* Read a string field of a document (NULL if absent or not a string). */
const char *api_doc_str(const bson_t *doc, const char *field);
int api_doc_bool(const bson_t *doc, const char *field, int dflt);
int api_doc_oid(const bson_t *doc, const char *field, bson_oid_t *out);

/* Pagination from the query string: page >= 1 (default 1), limit 1-100
 * (default dflt). On invalid values answers 400 VALIDATION_ERROR and
 * returns -1. */
int api_pagination(struct http_request *req, int64_t dflt_limit, int64_t max_limit, int64_t *page, int64_t *limit);

#endif
