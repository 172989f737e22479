/* chat_batch.c - send_message's group commit (see chat_batch.h).
 *
 * Messages are stored in batches: while one batch is in the database, the
 * messages that arrive wait in the queue and go together in the next one
 * (one STORE_OP_INSERT_MANY: one transaction on SQLite), so under load the
 * commit is shared instead of paid per message. Every queued message
 * holds its socket busy (its later events wait behind it, keeping
 * per-socket order) and a reference to it; the queue is bounded by
 * CHAT_BATCH_MAX. A stored message is published on the bus in the order
 * of the batch, so a room's messages reach everyone in the order they
 * were stored.
 */
#include "autoconfig.h"

#include "chat_batch.h"

#include "api.h"
#include "handlers.h"
#include "ws.h"

#include <stdlib.h>
#include <string.h>

struct chat_batch {
	struct store_op op;
	size_t n;
	struct ws_conn *c[];
};

static struct {
	struct {
		struct ws_conn *c;
		bson_t *doc;
	} queue[CHAT_BATCH_MAX]; /* messages waiting for the next batch */
	size_t nqueue;
	int inflight;
} q;

static void batch_submit(void);

int chat_batch_full(void)
{
	return q.nqueue >= CHAT_BATCH_MAX;
}

static void batch_done(struct store_op *sop, enum store_err err)
{
	struct chat_batch *b = sop->user;
	q.inflight = 0;
	/* The stored prefix goes out in order; the rest hear why not. */
	for (size_t i = 0; i < b->n; i++) {
		struct ws_conn *c = b->c[i];
		if (i < b->op.ndocs) {
			if (chat_publish_message(b->op.docs[i]) < 0) {
				if (!ws_conn_closing(c))
					chat_fail(c, "message stored but not delivered, server busy");
			} else {
				chat_ack_message(c, b->op.docs[i]);
			}
		} else if (!ws_conn_closing(c)) {
			chat_fail(c, chat_store_message(err));
		}
	}
	q.inflight = 1; /* what the releases queue waits for the next batch */
	for (size_t i = 0; i < b->n; i++)
		chat_sock_resume(b->c[i]);
	q.inflight = 0;
	store_op_clear(&b->op);
	free(b);
	batch_submit();
}

/* Hand what is queued to the store as one batch. 0, or -1 if it could not
 * be submitted (the entries are then still queued, their documents freed). */
static int batch_start(void)
{
	size_t n = q.nqueue;
	struct chat_batch *b = malloc(sizeof(*b) + n * sizeof(b->c[0]));
	bson_t **docs = calloc(n, sizeof(*docs));
	struct store *st = api_store();
	if (!b || !docs) {
		for (size_t i = 0; i < n; i++)
			bson_destroy(q.queue[i].doc);
		free(docs);
		free(b);
		return -1;
	}
	store_op_init(&b->op, STORE_OP_INSERT_MANY, COLL_MESSAGES);
	b->op.batch = docs;
	b->op.nbatch = n;
	b->op.done = batch_done;
	b->op.user = b;
	b->op.deadline_ms = jobs_now_ms() + CHAT_OP_TIMEOUT_MS;
	b->n = n;
	for (size_t i = 0; i < n; i++) {
		b->c[i] = q.queue[i].c;
		docs[i] = q.queue[i].doc;
	}
	if (!st || store_submit(st, &b->op) < 0) {
		store_op_clear(&b->op); /* frees the documents */
		free(b);
		return -1;
	}
	q.nqueue = 0;
	q.inflight = 1;
	return 0;
}

/* Submit the queue unless a batch is in flight. When the store refuses it,
 * every sender hears so and is released (its next queued event may queue
 * again: those are tried in the next round). */
static void batch_submit(void)
{
	while (!q.inflight && q.nqueue) {
		if (batch_start() == 0)
			return;
		size_t n = q.nqueue;
		q.inflight = 1; /* releases queue behind the failed entries */
		for (size_t i = 0; i < n; i++) {
			struct ws_conn *c = q.queue[i].c;
			if (!ws_conn_closing(c))
				chat_fail(c, "service unavailable");
			chat_sock_resume(c);
		}
		q.inflight = 0;
		memmove(q.queue, q.queue + n, (q.nqueue - n) * sizeof(q.queue[0]));
		q.nqueue -= n;
	}
}

int chat_batch_add(struct ws_conn *c, bson_t *doc)
{
	if (chat_batch_full())
		return -1;
	struct chat_sock *cs = ws_conn_app(c);
	q.queue[q.nqueue].c = c;
	q.queue[q.nqueue].doc = doc;
	q.nqueue++;
	cs->busy = 1;
	ws_conn_ref(c);
	batch_submit();
	return 0;
}
