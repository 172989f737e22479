/* api.h - glue between the HTTP layer and the store for the reference
 * API's handlers: database calls bound to a request (with its deadline),
 * error mapping to SPEC section 5 codes, and BSON documents rendered as the
 * API's JSON (ids as 24-hex strings, dates as ISO 8601).
 *
 *   static void got_post(struct api_call *c, enum store_err err) { ... }
 *   struct api_call *c = api_call_new(req, STORE_OP_FIND_BY_ID, STORE_POSTS, got_post);
 *   c->op.id = id;
 *   return api_call_submit(c);
 *
 * The call is freed after its callback returns. If the request's deadline
 * passes first, the client gets 504 TIMEOUT at once and the late result is
 * discarded (the callback is not run).
 */
#ifndef RESIL_API_H
#define RESIL_API_H

#include "app.h"
#include "jobs.h"
#include "schema.h"
#include "store.h"

struct api_call;
struct event_base;
struct resil_config;
typedef void (*api_cb)(struct api_call *c, enum store_err err);

struct api_call {
	struct store_op op;
	struct http_request *req; /* NULL once the request was answered (timeout) */
	api_cb cb;
	void *data;               /* handler state (arena of req while req lives) */
	int64_t n;                /* handler scratch */
	struct event *timer;
};

/* Blocking work that is not a database call (argon2id hashing), on the
 * worker's job pool. Allocate with api_work_new (payload bytes zeroed at
 * w->payload), fill the payload, api_work_submit. work() runs on a pool
 * thread and may only touch the payload; cb() runs on the loop with status
 * JOB_OK (or JOB_EXPIRED / JOB_CANCELLED: work did not run) and w->req set;
 * w is freed after cb returns. */
struct api_work;
typedef void (*api_work_fn)(struct api_work *w);
typedef void (*api_work_cb)(struct api_work *w, int status);
struct api_work {
	struct job job;
	struct http_request *req;
	api_work_fn work;
	api_work_cb cb;
	size_t payload_len;
	unsigned char payload[];
};
struct api_work *api_work_new(struct http_request *req, size_t payload, api_work_fn work, api_work_cb cb);
int api_work_submit(struct api_work *w); /* returns APP_DONE; answers 503 itself on failure */

/* The worker's store (NULL until opened). */
struct store *api_store(void);
int api_open_store(struct event_base *base, const struct resil_config *cfg, char *err, size_t errlen);
void api_close_store(void);

struct api_call *api_call_new(struct http_request *req, int kind, int coll, api_cb cb);
/* Submit; on failure answers the request itself. Always returns APP_DONE. */
int api_call_submit(struct api_call *c);
/* Answer the request with the error envelope for a store error. */
int api_fail_store(struct http_request *req, enum store_err err, const char *dup_field);

/* Render a stored document as JSON: _id -> "id", ObjectIds -> hex strings,
 * datetimes -> ISO 8601 strings. omit: NULL-terminated field names left out. */
void api_gen_doc(void *yajl_gen, const bson_t *doc, const char *const *omit);
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
