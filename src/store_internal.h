/* store_internal.h - the contract between store.c and a store backend.
 *
 * store.c owns everything that does not depend on the database: the op
 * lifecycle on the job pool, breaker, retries, deadlines, id and timestamp
 * generation, the document rules. A backend (store_sqlite.c, store_mongo.c)
 * only knows how to open handles and run ONE attempt of an op on the calling
 * thread. Like redis's ae_*.c files, a backend is a small table of
 * functions; nothing else in it is visible.
 */
#ifndef RESIL_STORE_INTERNAL_H
#define RESIL_STORE_INTERNAL_H

#include "store.h"

/* Per-attempt context handed to exec(). */
struct store_call {
	uint64_t deadline_ms; /* the op's absolute deadline (jobs_now_ms clock), 0 = none */
	int64_t now_ms;       /* wall clock, ms since the epoch: the value of updatedAt */
	unsigned attempt;     /* 1 for the first try */
	bool no_retry;        /* set by exec(): this UNAVAILABLE already waited its full
	                       * timeout (e.g. server selection); do not repeat it */
	bool reopen;          /* set by exec(): the handle is broken (read-only, I/O,
	                       * permission, disk full): store.c closes it and opens a
	                       * new one, with backoff, before the next attempt */
};

struct store_backend {
	const char *name; /* breaker and backend name */
	/* Parse uri, create the shared handle (*ctx) for schema (checked,
	 * outlives the store). 0, or -1 with err set. */
	int (*open)(const char *uri, const struct store_opts *o, const struct store_schema *schema, void **ctx,
	            char *err, size_t errlen);
	void (*close)(void *ctx);
	/* A handle for one thread (SQLite connection; MongoDB: none needed,
	 * clients are popped per op). writer: a write-lane handle, which must
	 * be able to write (a read-only open is a failure). 0, or -1 with err
	 * set; a failure is retried with backoff. */
	int (*conn_open)(void *ctx, bool writer, void **conn, char *err, size_t errlen);
	void (*conn_close)(void *ctx, void *conn);
	/* Schema migrations or index creation, idempotent; safe when several
	 * processes run it at once. STORE_OK or an error with err set:
	 * STORE_UNAVAILABLE / STORE_TIMEOUT for faults that may heal (retried),
	 * anything else for faults that will not (store_open fails). */
	enum store_err (*setup)(void *ctx, void *conn, char *err, size_t errlen);
	/* One attempt of op. On STORE_OK the op's results are filled (INSERT:
	 * op->result already holds the complete document to store). On
	 * STORE_DUPLICATE_KEY op->dup_field is set. The caller frees partial
	 * results on failure. */
	enum store_err (*exec)(void *ctx, void *conn, struct store_op *op, struct store_call *call);
	bool setup_first; /* ops need setup() to have succeeded (SQLite: the tables) */
};

extern const struct store_backend store_sqlite_backend;
extern const struct store_backend store_mongo_backend;

/* True for the keys only the store may write: _id, createdAt, updatedAt. */
bool store_key_protected(const char *key);

/* Build into out (initialised here; the caller destroys it) the document
 * old becomes after op's update: op->doc's fields replace or extend the
 * old ones (protected keys ignored), op->push_field gains push_value if
 * absent, updatedAt = now_ms. Returns STORE_OK or STORE_INTERNAL (the
 * add-to-set target exists and is not an array). */
enum store_err store_doc_apply_update(const bson_t *old, const struct store_op *op, int64_t now_ms, bson_t *out);

/* Append v under key to b. Returns true on success. */
bool store_value_append(bson_t *b, const char *key, const struct store_value *v);

#endif
