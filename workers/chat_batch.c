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
#include "chat_rooms.h"
#include "handlers.h"
#include "rbus.h"
#include "ws.h"

#include <stdlib.h>
#include <string.h>

struct chat_batch {
	struct store_op op;
	size_t n;
	uint64_t seq;     /* first cross-host sequence number (rbus_reserve); 0: none */
	int64_t *created; /* with seq: the createdAt and ids the sequence gives, one block */
	bson_oid_t *ids;
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

static void batch_free(struct chat_batch *b)
{
	store_op_clear(&b->op);
	free(b->created); /* ids live in the same block */
	free(b);
}

/* With the cross-host bus: release the batch's slots in sequence order,
 * each stored message as its record, the rest as given-up slots. ok[i]:
 * message i went out (else its sender hears so). */
static void publish_ordered(struct chat_batch *b, unsigned char *ok)
{
	struct iovec *iov = calloc(b->n, sizeof(*iov));
	for (size_t i = 0; iov && i < b->op.ndocs && i < b->n; i++) {
		size_t len;
		unsigned char *rec;
		if (chat_message_record(b->op.docs[i], &rec, &len) == 0) {
			iov[i].iov_base = rec;
			iov[i].iov_len = len;
		}
	}
	int sent = iov && rbus_publish_ordered(b->seq, iov, (unsigned)b->n) == 0;
	for (size_t i = 0; i < b->n && i < b->op.ndocs; i++) {
		/* Redis went away since the reserve: this host only. */
		ok[i] = iov && iov[i].iov_len && (sent || chat_publish_local(iov[i].iov_base, iov[i].iov_len) == 0);
	}
	for (size_t i = 0; iov && i < b->n; i++)
		free(iov[i].iov_base);
	free(iov);
}

static void batch_done(struct store_op *sop, enum store_err err)
{
	struct chat_batch *b = sop->user;
	q.inflight = 0;
	unsigned char *ok = NULL;
	if (b->seq && (ok = calloc(b->n, 1)))
		publish_ordered(b, ok);
	/* The stored prefix goes out in order; the rest hear why not. */
	for (size_t i = 0; i < b->n; i++) {
		struct ws_conn *c = b->c[i];
		if (i < b->op.ndocs) {
			if (b->seq ? !(ok && ok[i]) : chat_publish_message(b->op.docs[i]) < 0) {
				if (!ws_conn_closing(c))
					chat_fail(c, "message stored but not delivered, server busy");
			} else {
				chat_ack_message(c, b->op.docs[i]);
			}
		} else if (!ws_conn_closing(c)) {
			chat_fail(c, chat_store_message(err));
		}
	}
	free(ok);
	q.inflight = 1; /* what the releases queue waits for the next batch */
	for (size_t i = 0; i < b->n; i++)
		chat_sock_resume(b->c[i]);
	q.inflight = 0;
	batch_free(b);
	batch_submit();
}

/* A batch the store would not take (after its reservation): every sender
 * hears so and is released; its slots are given up at once. */
static void batch_refused(struct chat_batch *b)
{
	if (b->seq) {
		struct iovec *none = calloc(b->n, sizeof(*none));
		if (none)
			rbus_publish_ordered(b->seq, none, (unsigned)b->n);
		free(none);
	}
	q.inflight = 1;
	for (size_t i = 0; i < b->n; i++) {
		if (!ws_conn_closing(b->c[i]))
			chat_fail(b->c[i], "service unavailable");
		chat_sock_resume(b->c[i]);
	}
	q.inflight = 0;
	batch_free(b);
	batch_submit();
}

/* The sequence range came back (or the bus failed: ok 0, the batch is
 * stored with this host's ids and delivered on this host only). */
static void batch_reserved(void *ud, int ok, uint64_t seq, uint64_t us)
{
	struct chat_batch *b = ud;
	struct store *st = api_store();
	if (ok && (b->created = malloc(b->n * (sizeof(*b->created) + sizeof(*b->ids))))) {
		b->ids = (bson_oid_t *)(void *)(b->created + b->n); /* the int64s first: aligned */
		for (size_t i = 0; i < b->n; i++)
			rbus_stamp(us + i, b->ids[i].bytes, &b->created[i]);
		b->seq = seq;
		b->op.given_ids = b->ids;
		b->op.given_created_ms = b->created;
	} else if (ok) {
		/* No memory for the ids: give the slots up, store as usual. */
		b->seq = seq;
		struct iovec *none = calloc(b->n, sizeof(*none));
		if (none)
			rbus_publish_ordered(b->seq, none, (unsigned)b->n);
		free(none);
		b->seq = 0;
	}
	if (!st || store_submit(st, &b->op) < 0)
		batch_refused(b);
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
	b->seq = 0;
	b->ids = NULL;
	b->created = NULL;
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
	/* Cross-host: take the batch's place in the one order first (the
	 * store waits for it, never the loop). */
	if (rbus_state() == RBUS_UP && st && rbus_reserve((unsigned)n, batch_reserved, b) == 0) {
		q.nqueue = 0;
		q.inflight = 1;
		return 0;
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
