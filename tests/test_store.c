/* test_store.c - the store conformance suite (src/store*.c), one set of
 * tests run against every available backend: SQLite in a temp directory,
 * the MongoDB wire-protocol test double (tests/mongo_double), and a real
 * MongoDB when RESIL_TEST_MONGODB_URI is set. Each skipped backend is named
 * with its reason on stdout. SQLite-only cases cover what only a file can
 * show: reopen, several writer processes, kill -9 mid-write, migrations.
 *
 * Every op goes through store_submit() and the job pool, with a real
 * event_base on the test's thread; loops are bounded (15 s per op).
 */
#define _GNU_SOURCE
#include "../src/store.h"

#include <check.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <mongoc/mongoc.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../src/log.h"
#include "../workers/schema.h"
#include "mongo_double.h"

#define OP_LIMIT_MS 15000
#define TEST_TIMEOUT_S 120

enum { BK_SQLITE, BK_DOUBLE, BK_REAL, BK_N };

static const char *const bk_name[BK_N] = {"sqlite", "mongo double", "real mongodb"};
static int avail[BK_N], navail;
static struct mdouble md;
static bool md_running;
static unsigned db_seq;

/* Per-test state (each test runs in its own forked process). */
static struct {
	int bk;
	struct event_base *base;
	struct store *st;
	char dir[64];
	char path[128];
	char uri[512];
	char dbname[64];
} T;

/* ---- harness ------------------------------------------------------------ */

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

/* A MongoDB URI: base with its database path replaced by db. */
static void mongo_uri_with_db(const char *base, const char *db, char *out, size_t len)
{
	const char *hosts = strstr(base, "://");
	const char *path, *query;
	int n;

	ck_assert_ptr_nonnull(hosts);
	hosts += 3;
	path = strchr(hosts, '/');
	query = strchr(hosts, '?');
	if (!path || (query && query < path))
		path = query ? query : hosts + strlen(hosts);
	if (!query)
		query = "";
	n = snprintf(out, len, "%.*s/%s%s", (int)(path - base), base, db, query);
	ck_assert(n > 0 && (size_t)n < len);
}

static void drop_db(void)
{
	mongoc_client_t *c = mongoc_client_new(T.uri);
	mongoc_database_t *d;
	bson_error_t e;

	if (!c)
		return;
	d = mongoc_client_get_database(c, T.dbname);
	(void)mongoc_database_drop_with_opts(d, NULL, &e); /* best effort */
	mongoc_database_destroy(d);
	mongoc_client_destroy(c);
}

static struct store *open_store_opts(const struct store_opts *o)
{
	char err[256] = "";
	struct store *st = store_open(T.uri, T.base, o, err, sizeof err);

	ck_assert_msg(st != NULL, "store_open(%s): %s", bk_name[T.bk], err);
	return st;
}

static void open_store(void)
{
	struct store_opts o = {.pool_size = 4, .ping_interval_ms = 200};

	T.st = open_store_opts(&o);
}

static void setup_backend(int bk)
{
	memset(&T, 0, sizeof T);
	T.bk = bk;
	T.base = event_base_new();
	ck_assert_ptr_nonnull(T.base);
	snprintf(T.dir, sizeof T.dir, "/tmp/resil-store.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(T.dir));
	snprintf(T.path, sizeof T.path, "%s/db/resil.db", T.dir);
	snprintf(T.dbname, sizeof T.dbname, "resiltest_%ld_%u", (long)getpid(), db_seq++);
	if (bk == BK_SQLITE)
		snprintf(T.uri, sizeof T.uri, "sqlite://%s", T.path);
	else if (bk == BK_DOUBLE)
		mongo_uri_with_db(md.uri, T.dbname, T.uri, sizeof T.uri);
	else
		mongo_uri_with_db(getenv("RESIL_TEST_MONGODB_URI"), T.dbname, T.uri, sizeof T.uri);
	open_store();
}

static void teardown_backend(void)
{
	store_close(T.st);
	T.st = NULL;
	if (T.bk != BK_SQLITE)
		drop_db();
	event_base_free(T.base);
	nftw(T.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static uint64_t now_ms(void)
{
	return jobs_now_ms();
}

struct waiter {
	bool done;
	int calls;
	enum store_err err;
	bool on_loop;
};

static pthread_t loop_thread;

static void on_done(struct store_op *op, enum store_err err)
{
	struct waiter *w = op->user;

	w->done = true;
	w->calls++;
	w->err = err;
	w->on_loop = pthread_equal(pthread_self(), loop_thread);
}

static void wake(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

/* Turn the loop until *flag or limit_ms pass; false on timeout. */
static bool loop_until(struct event_base *base, const bool *flag, uint64_t limit_ms)
{
	struct event *tick = event_new(base, -1, EV_PERSIST, wake, NULL);
	struct timeval tv = {0, 20000};
	uint64_t until = now_ms() + limit_ms;

	ck_assert_ptr_nonnull(tick);
	ck_assert_int_eq(event_add(tick, &tv), 0);
	while (!*flag && now_ms() < until)
		event_base_loop(base, EVLOOP_ONCE);
	event_free(tick);
	return *flag;
}

/* Submit op on T.st and run the loop until its done(). */
static enum store_err run_op_on(struct store *st, struct event_base *base, struct store_op *op)
{
	struct waiter w = {0};

	loop_thread = pthread_self();
	op->done = on_done;
	op->user = &w;
	if (!op->deadline_ms)
		op->deadline_ms = now_ms() + 10000;
	ck_assert_int_eq(store_submit(st, op), 0);
	ck_assert_msg(loop_until(base, &w.done, OP_LIMIT_MS), "op did not complete");
	ck_assert_int_eq(w.calls, 1);
	ck_assert(w.on_loop);
	ck_assert_int_eq(w.err, op->err);
	return w.err;
}

static enum store_err run_op(struct store_op *op)
{
	return run_op_on(T.st, T.base, op);
}

static bson_t *user_doc(const char *username, const char *email)
{
	bson_t *d = bson_new();

	BSON_APPEND_UTF8(d, "username", username);
	BSON_APPEND_UTF8(d, "email", email);
	BSON_APPEND_UTF8(d, "role", "user");
	BSON_APPEND_BOOL(d, "isActive", true);
	return d;
}

/* Insert doc (ownership taken) into coll; *id receives the new id. */
static enum store_err insert(int coll, bson_t *doc, bson_oid_t *id)
{
	struct store_op op;
	enum store_err err;

	store_op_init(&op, STORE_OP_INSERT, coll);
	op.doc = doc;
	err = run_op(&op);
	if (err == STORE_OK && id) {
		bson_iter_t it;

		ck_assert(bson_iter_init_find(&it, op.result, "_id") && BSON_ITER_HOLDS_OID(&it));
		bson_oid_copy(bson_iter_oid(&it), id);
	}
	store_op_clear(&op);
	return err;
}

static bson_oid_t insert_ok(int coll, bson_t *doc)
{
	bson_oid_t id;

	ck_assert_int_eq(insert(coll, doc, &id), STORE_OK);
	return id;
}

/* find_by_id; *out (if not NULL) receives the document (caller destroys). */
static enum store_err get(int coll, const bson_oid_t *id, bson_t **out)
{
	struct store_op op;
	enum store_err err;

	store_op_init(&op, STORE_OP_FIND_BY_ID, coll);
	bson_oid_copy(id, &op.id);
	err = run_op(&op);
	if (out) {
		*out = op.result;
		op.result = NULL;
	}
	store_op_clear(&op);
	return err;
}

static const char *str_field(const bson_t *d, const char *key)
{
	bson_iter_t it;

	if (!d || !bson_iter_init_find(&it, d, key) || !BSON_ITER_HOLDS_UTF8(&it))
		return NULL;
	return bson_iter_utf8(&it, NULL);
}

static int64_t int_field(const bson_t *d, const char *key)
{
	bson_iter_t it;

	ck_assert(d && bson_iter_init_find(&it, d, key));
	return bson_iter_as_int64(&it);
}

static int64_t date_field(const bson_t *d, const char *key)
{
	bson_iter_t it;

	ck_assert_msg(d && bson_iter_init_find(&it, d, key) && BSON_ITER_HOLDS_DATE_TIME(&it), "%s missing", key);
	return bson_iter_date_time(&it);
}

static int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Insert n posts: seq i, category tech (even) / life (odd), tags. */
static void insert_posts(int n, bson_oid_t *ids)
{
	for (int i = 0; i < n; i++) {
		bson_t *d = bson_new(), tags;

		BSON_APPEND_UTF8(d, "title", "post");
		BSON_APPEND_INT32(d, "seq", i);
		BSON_APPEND_UTF8(d, "category", i % 2 ? "life" : "tech");
		if (i % 3 == 0)
			BSON_APPEND_BOOL(d, "pinned", true);
		BSON_APPEND_ARRAY_BEGIN(d, "tags", &tags);
		BSON_APPEND_UTF8(&tags, "0", "all");
		if (i % 5 == 0)
			BSON_APPEND_UTF8(&tags, "1", "five");
		bson_append_array_end(d, &tags);
		ids[i] = insert_ok(COLL_POSTS, d);
	}
}

/* Run a FIND op and return the seq values, in order, in seqs (max 64). */
static size_t find_seqs(struct store_op *op, int64_t *seqs)
{
	ck_assert_int_eq(run_op(op), STORE_OK);
	ck_assert_uint_le(op->ndocs, 64);
	for (size_t i = 0; i < op->ndocs; i++)
		seqs[i] = int_field(op->docs[i], "seq");
	return op->ndocs;
}

#define BK_SETUP() setup_backend(avail[_i])
#define BK_TEARDOWN() teardown_backend()

/* ---- conformance tests (every backend) ----------------------------------- */

START_TEST(test_store_insert_returns_document_with_hex_id_and_timestamps)
{
	struct store_op op;
	int64_t before, after;
	bson_iter_t it;
	char hex[25];
	bson_oid_t fake;
	bson_t *d;

	BK_SETUP();
	d = user_doc("alice", "alice@example.com");
	bson_oid_init_from_string(&fake, "000000000000000000000001");
	BSON_APPEND_OID(d, "_id", &fake); /* ignored: the store chooses ids */
	BSON_APPEND_DATE_TIME(d, "createdAt", 1);
	store_op_init(&op, STORE_OP_INSERT, COLL_USERS);
	op.doc = d;
	before = wall_ms();
	ck_assert_int_eq(run_op(&op), STORE_OK);
	after = wall_ms();
	ck_assert(bson_iter_init_find(&it, op.result, "_id") && BSON_ITER_HOLDS_OID(&it));
	ck_assert(!bson_oid_equal(bson_iter_oid(&it), &fake));
	store_id_format(bson_iter_oid(&it), hex);
	ck_assert_uint_eq(strlen(hex), 24);
	ck_assert_uint_eq(strspn(hex, "0123456789abcdef"), 24);
	ck_assert_str_eq(str_field(op.result, "username"), "alice");
	ck_assert_str_eq(str_field(op.result, "email"), "alice@example.com");
	ck_assert_int_ge(date_field(op.result, "createdAt"), before);
	ck_assert_int_le(date_field(op.result, "createdAt"), after);
	ck_assert_int_eq(date_field(op.result, "updatedAt"), date_field(op.result, "createdAt"));
	store_op_clear(&op);
	BK_TEARDOWN();
}
END_TEST

static int64_t count_where(int coll, const char *field, const bson_oid_t *oid)
{
	struct store_op op;
	int64_t n;

	store_op_init(&op, STORE_OP_COUNT, coll);
	if (field)
		ck_assert_int_eq(store_filter_oid(&op.filter, field, STORE_EQ, oid), 0);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	n = op.count;
	store_op_clear(&op);
	return n;
}

/* Group commit: a batch is stored in order with one createdAt, reads back
 * oldest first, and a failing batch reports exactly what was stored. */
START_TEST(test_store_insert_many_stores_in_order_and_reports_the_stored_prefix)
{
	struct store_op op;
	bson_oid_t room;
	char want[32];
	bson_iter_t it;

	BK_SETUP();
	bson_oid_init_from_string(&room, "650000000000000000000042");
	store_op_init(&op, STORE_OP_INSERT_MANY, COLL_MESSAGES);
	op.nbatch = 5;
	op.batch = calloc(op.nbatch, sizeof *op.batch);
	ck_assert_ptr_nonnull(op.batch);
	for (size_t i = 0; i < op.nbatch; i++) {
		op.batch[i] = bson_new();
		snprintf(want, sizeof want, "m%zu", i);
		BSON_APPEND_OID(op.batch[i], "room", &room);
		BSON_APPEND_UTF8(op.batch[i], "content", want);
	}
	ck_assert_int_eq(run_op(&op), STORE_OK);
	ck_assert_uint_eq(op.ndocs, 5);
	ck_assert_int_eq(op.count, 5);
	for (size_t i = 0; i < op.ndocs; i++) {
		snprintf(want, sizeof want, "m%zu", i);
		ck_assert_str_eq(str_field(op.docs[i], "content"), want);
		ck_assert_int_eq(date_field(op.docs[i], "createdAt"), date_field(op.docs[0], "createdAt"));
		ck_assert(bson_iter_init_find(&it, op.docs[i], "_id") && BSON_ITER_HOLDS_OID(&it));
		if (i) {
			bson_iter_t prev;

			ck_assert(bson_iter_init_find(&prev, op.docs[i - 1], "_id"));
			ck_assert_int_lt(bson_oid_compare(bson_iter_oid(&prev), bson_iter_oid(&it)), 0);
		}
	}
	store_op_clear(&op);
	ck_assert_int_eq(count_where(COLL_MESSAGES, "room", &room), 5);

	/* Read back oldest first (createdAt ties break on _id). */
	store_op_init(&op, STORE_OP_FIND, COLL_MESSAGES);
	ck_assert_int_eq(store_filter_oid(&op.filter, "room", STORE_EQ, &room), 0);
	ck_assert_int_eq(store_filter_sort(&op.filter, "createdAt", 1), 0);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	ck_assert_uint_eq(op.ndocs, 5);
	for (size_t i = 0; i < op.ndocs; i++) {
		snprintf(want, sizeof want, "m%zu", i);
		ck_assert_str_eq(str_field(op.docs[i], "content"), want);
	}
	store_op_clear(&op);

	/* A unique clash in the third document: SQLite stores none of the
	 * batch (one transaction), MongoDB the two before it. */
	ck_assert_int_eq(insert(COLL_USERS, user_doc("taken", "taken@example.com"), NULL), STORE_OK);
	store_op_init(&op, STORE_OP_INSERT_MANY, COLL_USERS);
	op.nbatch = 3;
	op.batch = calloc(op.nbatch, sizeof *op.batch);
	ck_assert_ptr_nonnull(op.batch);
	op.batch[0] = user_doc("b1", "b1@example.com");
	op.batch[1] = user_doc("b2", "b2@example.com");
	op.batch[2] = user_doc("b3", "taken@example.com");
	ck_assert_int_eq(run_op(&op), STORE_DUPLICATE_KEY);
	ck_assert_str_eq(op.dup_field, "email");
	ck_assert(op.ndocs == 0 || op.ndocs == 2);
	ck_assert_int_eq(op.count, (int64_t)op.ndocs);
	ck_assert_int_eq(count_where(COLL_USERS, NULL, NULL), 1 + (int64_t)op.ndocs);
	store_op_clear(&op);

	/* Empty or holed batches are refused at submit. */
	store_op_init(&op, STORE_OP_INSERT_MANY, COLL_MESSAGES);
	op.done = on_done;
	ck_assert_int_eq(store_submit(T.st, &op), -1);
	op.nbatch = 2;
	op.batch = calloc(2, sizeof *op.batch);
	ck_assert_ptr_nonnull(op.batch);
	op.batch[0] = bson_new();
	ck_assert_int_eq(store_submit(T.st, &op), -1);
	store_op_clear(&op);
	BK_TEARDOWN();
}
END_TEST

START_TEST(test_store_find_by_id_returns_stored_document_or_not_found)
{
	bson_oid_t id, missing;
	bson_t *got = NULL;

	BK_SETUP();
	id = insert_ok(COLL_USERS, user_doc("bob", "bob@example.com"));
	ck_assert_int_eq(get(COLL_USERS, &id, &got), STORE_OK);
	ck_assert_str_eq(str_field(got, "username"), "bob");
	ck_assert_int_gt(date_field(got, "createdAt"), 0);
	bson_destroy(got);
	bson_oid_init(&missing, NULL);
	ck_assert_int_eq(get(COLL_USERS, &missing, &got), STORE_NOT_FOUND);
	ck_assert_ptr_null(got);
	ck_assert_int_eq(get(COLL_POSTS, &id, NULL), STORE_NOT_FOUND); /* collections are separate */
	BK_TEARDOWN();
}
END_TEST

START_TEST(test_store_update_sets_fields_and_bumps_updated_at)
{
	struct store_op op;
	bson_oid_t id, missing;
	bson_t *got = NULL;
	int64_t created;

	BK_SETUP();
	id = insert_ok(COLL_USERS, user_doc("carol", "carol@example.com"));
	ck_assert_int_eq(get(COLL_USERS, &id, &got), STORE_OK);
	created = date_field(got, "createdAt");
	bson_destroy(got);
	usleep(5000);

	store_op_init(&op, STORE_OP_UPDATE_BY_ID, COLL_USERS);
	bson_oid_copy(&id, &op.id);
	op.doc = bson_new();
	BSON_APPEND_UTF8(op.doc, "role", "admin");
	BSON_APPEND_UTF8(op.doc, "bio", "new field");
	BSON_APPEND_DATE_TIME(op.doc, "createdAt", 1); /* protected: ignored */
	ck_assert_int_eq(run_op(&op), STORE_OK);
	ck_assert_str_eq(str_field(op.result, "role"), "admin");
	ck_assert_str_eq(str_field(op.result, "bio"), "new field");
	ck_assert_str_eq(str_field(op.result, "username"), "carol");
	ck_assert_int_eq(date_field(op.result, "createdAt"), created);
	ck_assert_int_gt(date_field(op.result, "updatedAt"), created);
	store_op_clear(&op);

	ck_assert_int_eq(get(COLL_USERS, &id, &got), STORE_OK);
	ck_assert_str_eq(str_field(got, "role"), "admin");
	bson_destroy(got);

	store_op_init(&op, STORE_OP_UPDATE_BY_ID, COLL_USERS);
	bson_oid_init(&missing, NULL);
	bson_oid_copy(&missing, &op.id);
	op.doc = bson_new();
	BSON_APPEND_UTF8(op.doc, "role", "admin");
	ck_assert_int_eq(run_op(&op), STORE_NOT_FOUND);
	ck_assert_ptr_null(op.result);
	store_op_clear(&op);
	BK_TEARDOWN();
}
END_TEST

START_TEST(test_store_delete_removes_document_once)
{
	struct store_op op;
	bson_oid_t id;

	BK_SETUP();
	id = insert_ok(COLL_POSTS, bson_new());
	store_op_init(&op, STORE_OP_DELETE_BY_ID, COLL_POSTS);
	bson_oid_copy(&id, &op.id);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	ck_assert_int_eq(get(COLL_POSTS, &id, NULL), STORE_NOT_FOUND);
	ck_assert_int_eq(run_op(&op), STORE_NOT_FOUND);
	store_op_clear(&op);
	BK_TEARDOWN();
}
END_TEST

START_TEST(test_store_duplicate_email_or_username_rejected_on_insert)
{
	struct store_op op;

	BK_SETUP();
	insert_ok(COLL_USERS, user_doc("dave", "dave@example.com"));
	store_op_init(&op, STORE_OP_INSERT, COLL_USERS);
	op.doc = user_doc("dave2", "dave@example.com");
	ck_assert_int_eq(run_op(&op), STORE_DUPLICATE_KEY);
	ck_assert_str_eq(op.dup_field, "email");
	ck_assert_ptr_null(op.result);
	store_op_clear(&op);

	store_op_init(&op, STORE_OP_INSERT, COLL_USERS);
	op.doc = user_doc("dave", "other@example.com");
	ck_assert_int_eq(run_op(&op), STORE_DUPLICATE_KEY);
	ck_assert_str_eq(op.dup_field, "username");
	store_op_clear(&op);

	/* The same e-mail in another collection is not a conflict. */
	insert_ok(COLL_PATIENTS, user_doc("dave", "dave@example.com"));
	ck_assert_int_eq(store_breaker_state(T.st), BREAKER_CLOSED);
	BK_TEARDOWN();
}
END_TEST

START_TEST(test_store_duplicate_email_or_username_rejected_on_update)
{
	struct store_op op;
	bson_oid_t a, b;
	bson_t *got = NULL;

	BK_SETUP();
	a = insert_ok(COLL_USERS, user_doc("erin", "erin@example.com"));
	b = insert_ok(COLL_USERS, user_doc("frank", "frank@example.com"));
	(void)a;
	store_op_init(&op, STORE_OP_UPDATE_BY_ID, COLL_USERS);
	bson_oid_copy(&b, &op.id);
	op.doc = bson_new();
	BSON_APPEND_UTF8(op.doc, "email", "erin@example.com");
	ck_assert_int_eq(run_op(&op), STORE_DUPLICATE_KEY);
	ck_assert_str_eq(op.dup_field, "email");
	store_op_clear(&op);

	op.doc = bson_new();
	BSON_APPEND_UTF8(op.doc, "username", "erin");
	ck_assert_int_eq(run_op(&op), STORE_DUPLICATE_KEY);
	ck_assert_str_eq(op.dup_field, "username");
	store_op_clear(&op);

	ck_assert_int_eq(get(COLL_USERS, &b, &got), STORE_OK);
	ck_assert_str_eq(str_field(got, "email"), "frank@example.com");
	ck_assert_str_eq(str_field(got, "username"), "frank");
	bson_destroy(got);

	/* Setting one's own value again is not a conflict. */
	op.doc = bson_new();
	BSON_APPEND_UTF8(op.doc, "email", "frank@example.com");
	ck_assert_int_eq(run_op(&op), STORE_OK);
	store_op_clear(&op);
	BK_TEARDOWN();
}
END_TEST

START_TEST(test_store_find_filters_sorts_pages_and_counts)
{
	struct store_op op;
	bson_oid_t ids[10];
	int64_t s[64];

	BK_SETUP();
	insert_posts(10, ids);

	/* Newest first within a category (createdAt ties break on _id). */
	store_op_init(&op, STORE_OP_FIND, COLL_POSTS);
	ck_assert_int_eq(store_filter_str(&op.filter, "category", STORE_EQ, "tech"), 0);
	ck_assert_int_eq(store_filter_sort(&op.filter, "createdAt", -1), 0);
	ck_assert_uint_eq(find_seqs(&op, s), 5);
	ck_assert(s[0] == 8 && s[1] == 6 && s[2] == 4 && s[3] == 2 && s[4] == 0);
	store_filter_page(&op.filter, 1, 2);
	ck_assert_uint_eq(find_seqs(&op, s), 2);
	ck_assert(s[0] == 6 && s[1] == 4);
	store_filter_page(&op.filter, 4, 10);
	ck_assert_uint_eq(find_seqs(&op, s), 1);
	store_filter_page(&op.filter, 10, 10);
	ck_assert_uint_eq(find_seqs(&op, s), 0);
	store_op_clear(&op);

	/* Sort on a field without an index, ascending; default order is _id. */
	store_op_init(&op, STORE_OP_FIND, COLL_POSTS);
	ck_assert_int_eq(store_filter_sort(&op.filter, "seq", -1), 0);
	store_filter_page(&op.filter, 0, 3);
	ck_assert_uint_eq(find_seqs(&op, s), 3);
	ck_assert(s[0] == 9 && s[1] == 8 && s[2] == 7);
	store_op_clear(&op);
	store_op_init(&op, STORE_OP_FIND, COLL_POSTS);
	ck_assert_uint_eq(find_seqs(&op, s), 10);
	for (int i = 0; i < 10; i++)
		ck_assert_int_eq(s[i], i);
	store_op_clear(&op);

	/* Integer, boolean, NE (a missing field matches) and IN. */
	store_op_init(&op, STORE_OP_FIND, COLL_POSTS);
	ck_assert_int_eq(store_filter_int(&op.filter, "seq", STORE_EQ, 7), 0);
	ck_assert_uint_eq(find_seqs(&op, s), 1);
	ck_assert_int_eq(s[0], 7);
	store_op_clear(&op);
	store_op_init(&op, STORE_OP_FIND, COLL_POSTS);
	ck_assert_int_eq(store_filter_bool(&op.filter, "pinned", STORE_EQ, true), 0);
	ck_assert_uint_eq(find_seqs(&op, s), 4); /* 0 3 6 9 */
	store_op_clear(&op);
	store_op_init(&op, STORE_OP_FIND, COLL_POSTS);
	ck_assert_int_eq(store_filter_bool(&op.filter, "pinned", STORE_NE, true), 0);
	ck_assert_int_eq(store_filter_str(&op.filter, "category", STORE_NE, "life"), 0);
	ck_assert_uint_eq(find_seqs(&op, s), 3); /* 2 4 8 */
	ck_assert(s[0] == 2 && s[1] == 4 && s[2] == 8);
	store_op_clear(&op);
	store_op_init(&op, STORE_OP_FIND, COLL_POSTS);
	ck_assert_int_eq(store_filter_in_oids(&op.filter, "_id", (bson_oid_t[]){ids[1], ids[5], ids[9]}, 3), 0);
	ck_assert_uint_eq(find_seqs(&op, s), 3);
	ck_assert(s[0] == 1 && s[1] == 5 && s[2] == 9);
	store_op_clear(&op);
	store_op_init(&op, STORE_OP_FIND, COLL_POSTS);
	ck_assert_int_eq(store_filter_in_strs(&op.filter, "category", (const char *[]){"life", "none"}, 2), 0);
	ck_assert_int_eq(store_filter_int(&op.filter, "seq", STORE_NE, 1), 0);
	ck_assert_int_eq(store_filter_int(&op.filter, "seq", STORE_NE, 3), 0); /* same field twice */
	ck_assert_uint_eq(find_seqs(&op, s), 3);                               /* 5 7 9 */
	store_op_clear(&op);

	/* Counts ignore paging. */
	store_op_init(&op, STORE_OP_COUNT, COLL_POSTS);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	ck_assert_int_eq(op.count, 10);
	ck_assert_int_eq(store_filter_str(&op.filter, "category", STORE_EQ, "life"), 0);
	store_filter_page(&op.filter, 2, 1);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	ck_assert_int_eq(op.count, 5);
	store_op_clear(&op);
	store_op_init(&op, STORE_OP_COUNT, COLL_POSTS);
	ck_assert_int_eq(store_filter_str(&op.filter, "category", STORE_EQ, "none"), 0);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	ck_assert_int_eq(op.count, 0);
	store_op_clear(&op);
	BK_TEARDOWN();
}
END_TEST

START_TEST(test_store_find_one_returns_first_match_or_not_found)
{
	struct store_op op;
	bson_oid_t ids[6];

	BK_SETUP();
	insert_posts(6, ids);
	store_op_init(&op, STORE_OP_FIND_ONE, COLL_POSTS);
	ck_assert_int_eq(store_filter_str(&op.filter, "category", STORE_EQ, "life"), 0);
	ck_assert_int_eq(store_filter_sort(&op.filter, "seq", -1), 0);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	ck_assert_int_eq(int_field(op.result, "seq"), 5);
	store_op_clear(&op);
	store_op_init(&op, STORE_OP_FIND_ONE, COLL_USERS);
	ck_assert_int_eq(store_filter_str(&op.filter, "email", STORE_EQ, "nobody@example.com"), 0);
	ck_assert_int_eq(run_op(&op), STORE_NOT_FOUND);
	ck_assert_ptr_null(op.result);
	store_op_clear(&op);
	BK_TEARDOWN();
}
END_TEST

START_TEST(test_store_array_contains_and_add_to_set)
{
	struct store_op op;
	bson_oid_t owner, guest, room1, room2, ids[10];
	bson_t *d, arr;
	bson_iter_t it, el;
	int n;

	BK_SETUP();
	bson_oid_init(&owner, NULL);
	bson_oid_init(&guest, NULL);
	for (int i = 0; i < 2; i++) {
		d = bson_new();
		BSON_APPEND_UTF8(d, "name", i ? "two" : "one");
		BSON_APPEND_OID(d, "owner", &owner);
		BSON_APPEND_ARRAY_BEGIN(d, "members", &arr);
		BSON_APPEND_OID(&arr, "0", &owner);
		bson_append_array_end(d, &arr);
		if (i)
			room2 = insert_ok(COLL_ROOMS, d);
		else
			room1 = insert_ok(COLL_ROOMS, d);
	}

	/* guest joins room2, twice: one entry. */
	for (int k = 0; k < 2; k++) {
		store_op_init(&op, STORE_OP_UPDATE_BY_ID, COLL_ROOMS);
		bson_oid_copy(&room2, &op.id);
		ck_assert_int_eq(store_op_add_to_set_oid(&op, "members", &guest), 0);
		ck_assert_int_eq(run_op(&op), STORE_OK);
		ck_assert(bson_iter_init_find(&it, op.result, "members") && bson_iter_recurse(&it, &el));
		for (n = 0; bson_iter_next(&el); n++)
			;
		ck_assert_int_eq(n, 2);
		store_op_clear(&op);
	}

	store_op_init(&op, STORE_OP_FIND, COLL_ROOMS);
	ck_assert_int_eq(store_filter_oid(&op.filter, "members", STORE_CONTAINS, &guest), 0);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	ck_assert_uint_eq(op.ndocs, 1);
	ck_assert_str_eq(str_field(op.docs[0], "name"), "two");
	store_op_clear(&op);
	store_op_init(&op, STORE_OP_COUNT, COLL_ROOMS);
	ck_assert_int_eq(store_filter_oid(&op.filter, "members", STORE_CONTAINS, &owner), 0);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	ck_assert_int_eq(op.count, 2);
	store_op_clear(&op);

	/* Deleting a room removes it from membership queries. */
	store_op_init(&op, STORE_OP_DELETE_BY_ID, COLL_ROOMS);
	bson_oid_copy(&room1, &op.id);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	store_op_clear(&op);
	store_op_init(&op, STORE_OP_COUNT, COLL_ROOMS);
	ck_assert_int_eq(store_filter_oid(&op.filter, "members", STORE_CONTAINS, &owner), 0);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	ck_assert_int_eq(op.count, 1);
	store_op_clear(&op);

	/* add-to-set creates a missing array; contains on an unindexed array. */
	insert_posts(10, ids);
	store_op_init(&op, STORE_OP_UPDATE_BY_ID, COLL_POSTS);
	bson_oid_copy(&ids[3], &op.id);
	ck_assert_int_eq(store_op_add_to_set_str(&op, "likes", "u1"), 0);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	store_op_clear(&op);
	store_op_init(&op, STORE_OP_FIND, COLL_POSTS);
	ck_assert_int_eq(store_filter_str(&op.filter, "likes", STORE_CONTAINS, "u1"), 0);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	ck_assert_uint_eq(op.ndocs, 1);
	ck_assert_int_eq(int_field(op.docs[0], "seq"), 3);
	store_op_clear(&op);
	store_op_init(&op, STORE_OP_COUNT, COLL_POSTS);
	ck_assert_int_eq(store_filter_str(&op.filter, "tags", STORE_CONTAINS, "five"), 0);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	ck_assert_int_eq(op.count, 2);
	store_op_clear(&op);
	BK_TEARDOWN();
}
END_TEST

START_TEST(test_store_values_are_never_operators)
{
	struct store_op op;

	BK_SETUP();
	insert_ok(COLL_USERS, user_doc("gina", "gina@example.com"));
	/* A string that looks like an operator is only a string. */
	store_op_init(&op, STORE_OP_FIND, COLL_USERS);
	ck_assert_int_eq(store_filter_str(&op.filter, "email", STORE_EQ, "{\"$gt\": \"\"}"), 0);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	ck_assert_uint_eq(op.ndocs, 0);
	store_op_clear(&op);
	/* Field names are checked by the builders. */
	ck_assert_int_eq(store_filter_str(&op.filter, "$where", STORE_EQ, "1"), -1);
	ck_assert_int_eq(store_filter_str(&op.filter, "a..b", STORE_EQ, "1"), -1);
	ck_assert_int_eq(store_filter_str(&op.filter, "", STORE_EQ, "1"), -1);
	ck_assert_uint_eq(op.filter.n, 0);
	/* Documents with operator keys are refused before the database. */
	store_op_init(&op, STORE_OP_INSERT, COLL_USERS);
	op.doc = bson_new();
	BSON_APPEND_UTF8(op.doc, "$where", "1");
	ck_assert_int_eq(run_op(&op), STORE_INTERNAL);
	store_op_clear(&op);
	BK_TEARDOWN();
}
END_TEST

START_TEST(test_store_ping_marks_database_connected)
{
	struct store_op op;
	struct breaker_stats bs;

	BK_SETUP();
	store_op_init(&op, STORE_OP_PING, COLL_USERS);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	ck_assert_int_eq(store_db_state(T.st), 1);
	ck_assert_int_eq(store_breaker_state(T.st), BREAKER_CLOSED);
	ck_assert_str_eq(store_backend_name(T.st), T.bk == BK_SQLITE ? "sqlite" : "mongodb");
	store_breaker_stats(T.st, &bs);
	ck_assert_uint_ge(bs.successes, 1);
	BK_TEARDOWN();
}
END_TEST

START_TEST(test_store_exec_runs_on_the_calling_thread)
{
	struct store_op op;
	bson_oid_t id;

	BK_SETUP();
	store_op_init(&op, STORE_OP_INSERT, COLL_USERS);
	op.doc = user_doc("hank", "hank@example.com");
	ck_assert_int_eq(store_exec(T.st, &op), STORE_OK);
	bson_oid_copy(&op.id, &id);
	store_op_clear(&op);
	ck_assert_int_eq(get(COLL_USERS, &id, NULL), STORE_OK);
	store_op_init(&op, STORE_OP_FIND_BY_ID, COLL_USERS);
	bson_oid_copy(&id, &op.id);
	ck_assert_int_eq(store_exec(T.st, &op), STORE_OK);
	ck_assert_str_eq(str_field(op.result, "username"), "hank");
	store_op_clear(&op);
	BK_TEARDOWN();
}
END_TEST

START_TEST(test_store_expired_deadline_times_out_without_running)
{
	struct store_op op;
	struct waiter w = {0};

	BK_SETUP();
	store_op_init(&op, STORE_OP_INSERT, COLL_USERS);
	op.doc = user_doc("ivy", "ivy@example.com");
	op.deadline_ms = now_ms() - 1;
	op.done = on_done;
	op.user = &w;
	loop_thread = pthread_self();
	ck_assert_int_eq(store_submit(T.st, &op), 0);
	ck_assert(!w.done); /* never inside store_submit */
	ck_assert(loop_until(T.base, &w.done, OP_LIMIT_MS));
	ck_assert_int_eq(w.err, STORE_TIMEOUT);
	store_op_clear(&op);
	/* Nothing was written. */
	store_op_init(&op, STORE_OP_COUNT, COLL_USERS);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	ck_assert_int_eq(op.count, 0);
	store_op_clear(&op);
	BK_TEARDOWN();
}
END_TEST

static void free_abandoned(struct store_op *op, enum store_err err)
{
	bool *flag = op->user;

	(void)err;
	ck_assert(store_op_abandoned(op));
	*flag = true;
	store_op_clear(op);
	free(op);
}

START_TEST(test_store_abandoned_op_is_freed_in_done)
{
	bool freed = false;
	struct store_op *op = malloc(sizeof *op);

	BK_SETUP();
	ck_assert_ptr_nonnull(op);
	store_op_init(op, STORE_OP_INSERT, COLL_POSTS);
	op->doc = bson_new();
	op->done = free_abandoned;
	op->user = &freed;
	ck_assert_int_eq(store_submit(T.st, op), 0);
	store_op_abandon(op);
	ck_assert(!freed);
	ck_assert(loop_until(T.base, &freed, OP_LIMIT_MS));
	BK_TEARDOWN();
}
END_TEST

START_TEST(test_store_submit_rejects_malformed_ops)
{
	struct store_op op;

	BK_SETUP();
	store_op_init(&op, STORE_OP_INSERT, COLL_USERS); /* no document */
	op.done = on_done;
	ck_assert_int_eq(store_submit(T.st, &op), -1);
	ck_assert_int_eq(errno, EINVAL);
	store_op_init(&op, 99, COLL_USERS);
	op.done = on_done;
	ck_assert_int_eq(store_submit(T.st, &op), -1);
	store_op_init(&op, STORE_OP_PING, COLL_COUNT);
	op.done = on_done;
	ck_assert_int_eq(store_submit(T.st, &op), -1);
	store_op_init(&op, STORE_OP_UPDATE_BY_ID, COLL_ROOMS); /* same field set and added */
	op.doc = bson_new();
	BSON_APPEND_UTF8(op.doc, "members", "x");
	ck_assert_int_eq(store_op_add_to_set_str(&op, "members", "y"), 0);
	op.done = on_done;
	ck_assert_int_eq(store_submit(T.st, &op), -1);
	store_op_clear(&op);
	BK_TEARDOWN();
}
END_TEST

START_TEST(test_store_periodic_ping_keeps_database_state)
{
	struct store_op op;
	bool never = false;

	BK_SETUP();
	/* Let a couple of 200 ms health pings run through the pool. */
	loop_until(T.base, &never, 700);
	ck_assert_int_eq(store_db_state(T.st), 1);
	store_op_init(&op, STORE_OP_COUNT, COLL_USERS);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	store_op_clear(&op);
	BK_TEARDOWN();
}
END_TEST

/* ---- SQLite only ---------------------------------------------------------- */

static void sqlite_setup(void)
{
	setup_backend(BK_SQLITE);
}

START_TEST(test_sqlite_data_survives_reopen)
{
	bson_oid_t id;
	bson_t *got = NULL;

	id = insert_ok(COLL_USERS, user_doc("jack", "jack@example.com"));
	store_close(T.st);
	open_store();
	ck_assert_int_eq(get(COLL_USERS, &id, &got), STORE_OK);
	ck_assert_str_eq(str_field(got, "email"), "jack@example.com");
	bson_destroy(got);
	/* Unique indexes survive too. */
	ck_assert_int_eq(insert(COLL_USERS, user_doc("jack", "x@example.com"), NULL), STORE_DUPLICATE_KEY);
	teardown_backend();
}
END_TEST

static int query_int(const char *path, const char *sql, char *text, size_t tlen)
{
	sqlite3 *db;
	sqlite3_stmt *st;
	int v = -1;

	ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
	if (sqlite3_step(st) == SQLITE_ROW) {
		v = sqlite3_column_int(st, 0);
		if (text)
			snprintf(text, tlen, "%s", (const char *)sqlite3_column_text(st, 0));
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

START_TEST(test_sqlite_schema_is_versioned_and_newer_schema_refused)
{
	char mode[16] = "", err[256] = "";
	struct store *st;

	ck_assert_int_eq(query_int(T.path, "PRAGMA user_version", NULL, 0), (int)app_schema.nsqlite_migrations);
	query_int(T.path, "PRAGMA journal_mode", mode, sizeof mode);
	ck_assert_str_eq(mode, "wal");
	store_close(T.st);
	T.st = NULL;
	/* A file written by a newer resild is not touched. */
	query_int(T.path, "PRAGMA user_version = 99", NULL, 0);
	st = store_open(T.uri, T.base, NULL, err, sizeof err);
	ck_assert_ptr_null(st);
	ck_assert_msg(strstr(err, "schema version 99") != NULL, "%s", err);
	teardown_backend();
}
END_TEST

START_TEST(test_sqlite_uri_forms_and_unusable_directory)
{
	char cwd[PATH_MAX], err[256] = "", uri[256];
	struct store *st;

	/* Relative path: the parent directory is created. */
	ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
	ck_assert_int_eq(chdir(T.dir), 0);
	st = store_open("sqlite:rel/sub/x.db", T.base, NULL, err, sizeof err);
	ck_assert_msg(st != NULL, "%s", err);
	store_close(st);
	ck_assert_int_eq(access("rel/sub/x.db", F_OK), 0);
	ck_assert_int_eq(chdir(cwd), 0);

	/* A parent that is a file cannot become a directory. */
	snprintf(uri, sizeof uri, "sqlite://%s/db/resil.db/inner/x.db", T.dir);
	st = store_open(uri, T.base, NULL, err, sizeof err);
	ck_assert_ptr_null(st);
	ck_assert_msg(strstr(err, "cannot create database directory") != NULL, "%s", err);
	st = store_open("sqlite://relative/x.db", T.base, NULL, err, sizeof err);
	ck_assert_ptr_null(st);
	st = store_open("postgres://x", T.base, NULL, err, sizeof err);
	ck_assert_ptr_null(st);
	ck_assert_msg(strstr(err, "sqlite:") != NULL, "%s", err);
	teardown_backend();
}
END_TEST

/* Child process: open the store at uri and insert n posts, 16 in flight.
 * Exit status 0 only if every insert succeeded. */
static void writer_child(const char *uri, int n, int tag)
{
	struct event_base *base = event_base_new();
	struct store_opts o = {.pool_size = 4};
	char err[256];
	struct store *st = base ? store_open(uri, base, &o, err, sizeof err) : NULL;
	struct store_op ops[16];
	struct waiter w[16];
	int next = 0, finished = 0, failed = 0;
	uint64_t until = jobs_now_ms() + 60000;

	if (!st)
		_exit(2);
	loop_thread = pthread_self();
	memset(w, 0, sizeof w);
	for (int i = 0; i < 16; i++) {
		store_op_init(&ops[i], STORE_OP_INSERT, COLL_POSTS);
		w[i].done = true; /* idle slot */
	}
	while (finished < n && jobs_now_ms() < until) {
		for (int i = 0; i < 16; i++) {
			if (!w[i].done)
				continue;
			if (w[i].calls) {
				failed += w[i].err != STORE_OK;
				finished++;
			}
			memset(&w[i], 0, sizeof w[i]);
			store_op_clear(&ops[i]);
			if (next >= n) {
				w[i].done = false; /* retired */
				continue;
			}
			ops[i].doc = bson_new();
			BSON_APPEND_INT32(ops[i].doc, "writer", tag);
			BSON_APPEND_INT32(ops[i].doc, "seq", next++);
			ops[i].done = on_done;
			ops[i].user = &w[i];
			ops[i].deadline_ms = jobs_now_ms() + 30000;
			if (store_submit(st, &ops[i]) != 0)
				_exit(3);
		}
		if (finished < n)
			event_base_loop(base, EVLOOP_ONCE);
	}
	for (int i = 0; i < 16; i++)
		store_op_clear(&ops[i]);
	store_close(st);
	event_base_free(base);
	_exit(failed || finished != n ? 1 : 0);
}

START_TEST(test_sqlite_concurrent_writer_processes_lose_nothing)
{
	pid_t pid[2];
	struct store_op op;

	/* Start from no file at all: both children also race through creating
	 * the database, switching it to WAL and migrating the schema. */
	store_close(T.st);
	T.st = NULL;
	for (int k = 0; k < 3; k++) {
		char p[160];

		snprintf(p, sizeof p, "%s%s", T.path, k == 0 ? "" : k == 1 ? "-wal" : "-shm");
		ck_assert(unlink(p) == 0 || errno == ENOENT);
	}
	for (int k = 0; k < 2; k++) {
		pid[k] = fork();
		ck_assert_int_ge(pid[k], 0);
		if (pid[k] == 0)
			writer_child(T.uri, 300, k);
	}
	for (int k = 0; k < 2; k++) {
		int status;

		ck_assert_int_eq(waitpid(pid[k], &status, 0), pid[k]);
		ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer %d failed (status %d)", k, status);
	}
	open_store();
	for (int k = 0; k < 3; k++) {
		store_op_init(&op, STORE_OP_COUNT, COLL_POSTS);
		if (k < 2)
			ck_assert_int_eq(store_filter_int(&op.filter, "writer", STORE_EQ, k), 0);
		ck_assert_int_eq(run_op(&op), STORE_OK);
		ck_assert_int_eq(op.count, k < 2 ? 300 : 600);
		store_op_clear(&op);
	}
	teardown_backend();
}
END_TEST

/* Child: insert forever, one at a time, writing each acknowledged id. */
static void acked_writer(const char *uri, int fd)
{
	struct event_base *base = event_base_new();
	char err[256], line[26];
	struct store *st = base ? store_open(uri, base, NULL, err, sizeof err) : NULL;
	struct store_op op;

	if (!st)
		_exit(2);
	for (int i = 0; i < 1000000; i++) {
		store_op_init(&op, STORE_OP_INSERT, COLL_MESSAGES);
		op.doc = bson_new();
		BSON_APPEND_INT32(op.doc, "n", i);
		BSON_APPEND_UTF8(op.doc, "content", "a message that is long enough to make a few pages of WAL");
		if (run_op_on(st, base, &op) != STORE_OK)
			_exit(4);
		store_id_format(&op.id, line);
		line[24] = '\n';
		if (write(fd, line, 25) != 25)
			_exit(5);
		store_op_clear(&op);
	}
	_exit(0);
}

START_TEST(test_sqlite_kill_9_loses_no_acknowledged_write)
{
	int pfd[2], status, n = 0, rc;
	char buf[25 * 64];
	static char ids[20000][25];
	size_t have = 0;
	pid_t pid;
	char check[32] = "";

	store_close(T.st);
	T.st = NULL;
	ck_assert_int_eq(pipe(pfd), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(pfd[0]);
		acked_writer(T.uri, pfd[1]);
	}
	close(pfd[1]);
	for (;;) {
		struct pollfd p = {.fd = pfd[0], .events = POLLIN};
		ssize_t r;

		ck_assert_msg(poll(&p, 1, 20000) == 1, "writer went silent");
		r = read(pfd[0], buf + have, sizeof buf - have);
		if (r <= 0)
			break;
		have += (size_t)r;
		while (have >= 25 && n < 20000) {
			memcpy(ids[n], buf, 24);
			ids[n++][24] = '\0';
			memmove(buf, buf + 25, have - 25);
			have -= 25;
		}
		if (n >= 300 && kill(pid, 0) == 0)
			kill(pid, SIGKILL); /* mid-write: the loop never pauses */
	}
	close(pfd[0]);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	ck_assert_int_ge(n, 300);

	open_store();
	for (int i = 0; i < n; i++) {
		bson_oid_t id;

		ck_assert_int_eq(store_id_parse(ids[i], 24, &id), 0);
		rc = get(COLL_MESSAGES, &id, NULL);
		ck_assert_msg(rc == STORE_OK, "acknowledged id %s lost", ids[i]);
	}
	query_int(T.path, "PRAGMA integrity_check", check, sizeof check);
	ck_assert_str_eq(check, "ok");
	teardown_backend();
}
END_TEST

START_TEST(test_store_filter_builders_validate_and_own_their_values)
{
	struct store_filter f;
	char s[8] = "abc";
	bson_oid_t ids[STORE_IN_MAX + 1];

	memset(&f, 0, sizeof f);
	ck_assert_int_eq(store_filter_str(&f, "a.b_c", STORE_EQ, s), 0);
	s[0] = 'X'; /* the filter keeps its own copy */
	ck_assert_str_eq(f.cond[0].v.u.s, "abc");
	ck_assert_int_eq(store_filter_str(&f, "x", STORE_IN, "v"), -1); /* IN needs a list */
	ck_assert_int_eq(store_filter_str(&f, ".x", STORE_EQ, "v"), -1);
	ck_assert_int_eq(store_filter_str(&f, "x.", STORE_EQ, "v"), -1);
	ck_assert_int_eq(store_filter_str(&f, "x", 0, "v"), -1);
	ck_assert_int_eq(store_filter_str(&f, "x", STORE_EQ, NULL), -1);
	ck_assert_int_eq(store_filter_str(&f, "abcdefghijabcdefghijabcdefghijab", STORE_EQ, "v"), -1);
	memset(ids, 0, sizeof ids);
	ck_assert_int_eq(store_filter_in_oids(&f, "_id", ids, 0), -1);
	ck_assert_int_eq(store_filter_in_oids(&f, "_id", ids, STORE_IN_MAX + 1), -1);
	ck_assert_int_eq(store_filter_in_oids(&f, "_id", ids, STORE_IN_MAX), 0);
	ck_assert_int_eq(store_filter_sort(&f, "createdAt", 2), -1);
	ck_assert_int_eq(store_filter_sort(&f, "createdAt", -1), 0);
	for (int i = 2; i < STORE_FILTER_MAX; i++)
		ck_assert_int_eq(store_filter_int(&f, "n", STORE_NE, i), 0);
	ck_assert_int_eq(store_filter_int(&f, "n", STORE_NE, 0), -1);
	ck_assert_uint_eq(f.n, STORE_FILTER_MAX);
	store_filter_clear(&f);
	ck_assert_uint_eq(f.n, 0);
	{
		bson_oid_t id;
		char hex[25];

		ck_assert_int_eq(store_id_parse("0123456789abcdef01234567", 24, &id), 0);
		store_id_format(&id, hex);
		ck_assert_str_eq(hex, "0123456789abcdef01234567");
		ck_assert_int_eq(store_id_parse("0123456789abcdef0123456", 23, &id), -1);
		ck_assert_int_eq(store_id_parse("0123456789abcdef0123456z", 24, &id), -1);
	}
	ck_assert_str_eq(store_err_name(STORE_CIRCUIT_OPEN), "CIRCUIT_OPEN");
	ck_assert_str_eq(store_coll_name(COLL_MESSAGES), "messages");
	ck_assert_ptr_null(store_coll_name(COLL_COUNT));
}
END_TEST

/* ---- suite ---------------------------------------------------------------- */

static void add_bk(Suite *s, const char *name, const TTest *t)
{
	TCase *tc = tcase_create(name);

	tcase_set_timeout(tc, TEST_TIMEOUT_S);
	tcase_add_loop_test(tc, t, 0, navail);
	suite_add_tcase(s, tc);
}

static void add_sqlite(Suite *s, const char *name, const TTest *t)
{
	TCase *tc = tcase_create(name);

	tcase_set_timeout(tc, TEST_TIMEOUT_S);
	tcase_add_checked_fixture(tc, sqlite_setup, NULL);
	tcase_add_test(tc, t);
	suite_add_tcase(s, tc);
}

static Suite *store_suite(void)
{
	Suite *s = suite_create("store");
	TCase *tc = tcase_create("filter_builders");

	tcase_add_test(tc, test_store_filter_builders_validate_and_own_their_values);
	suite_add_tcase(s, tc);
	add_bk(s, "insert", test_store_insert_returns_document_with_hex_id_and_timestamps);
	add_bk(s, "insert_many", test_store_insert_many_stores_in_order_and_reports_the_stored_prefix);
	add_bk(s, "find_by_id", test_store_find_by_id_returns_stored_document_or_not_found);
	add_bk(s, "update", test_store_update_sets_fields_and_bumps_updated_at);
	add_bk(s, "delete", test_store_delete_removes_document_once);
	add_bk(s, "unique_insert", test_store_duplicate_email_or_username_rejected_on_insert);
	add_bk(s, "unique_update", test_store_duplicate_email_or_username_rejected_on_update);
	add_bk(s, "find", test_store_find_filters_sorts_pages_and_counts);
	add_bk(s, "find_one", test_store_find_one_returns_first_match_or_not_found);
	add_bk(s, "arrays", test_store_array_contains_and_add_to_set);
	add_bk(s, "injection", test_store_values_are_never_operators);
	add_bk(s, "ping", test_store_ping_marks_database_connected);
	add_bk(s, "exec", test_store_exec_runs_on_the_calling_thread);
	add_bk(s, "expired", test_store_expired_deadline_times_out_without_running);
	add_bk(s, "abandon", test_store_abandoned_op_is_freed_in_done);
	add_bk(s, "malformed", test_store_submit_rejects_malformed_ops);
	add_bk(s, "health_ping", test_store_periodic_ping_keeps_database_state);
	add_sqlite(s, "sqlite_reopen", test_sqlite_data_survives_reopen);
	add_sqlite(s, "sqlite_schema", test_sqlite_schema_is_versioned_and_newer_schema_refused);
	add_sqlite(s, "sqlite_uri", test_sqlite_uri_forms_and_unusable_directory);
	add_sqlite(s, "sqlite_concurrent", test_sqlite_concurrent_writer_processes_lose_nothing);
	add_sqlite(s, "sqlite_kill9", test_sqlite_kill_9_loses_no_acknowledged_write);
	return s;
}

int main(void)
{
	SRunner *sr;
	int failed, md_failed = 0;
	const char *real = getenv("RESIL_TEST_MONGODB_URI");

	store_register_schema(&app_schema);
	log_init(LOG_LVL_ERROR, 0, NULL, -1);
	mongoc_init();
	avail[navail++] = BK_SQLITE;
	if (mdouble_start(&md) == 0) {
		md_running = true;
		avail[navail++] = BK_DOUBLE;
	} else {
		printf("mongo test double: cannot start tests/mongo_double (set MONGO_DOUBLE or build it): FAILING\n");
		md_failed = 1;
	}
	if (real && real[0])
		avail[navail++] = BK_REAL;
	else
		printf("skipping real MongoDB: RESIL_TEST_MONGODB_URI not set\n");
	printf("store backends under test:");
	for (int i = 0; i < navail; i++)
		printf(" [%d] %s", i, bk_name[avail[i]]);
	printf("\n");
	fflush(stdout);

	sr = srunner_create(store_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	if (md_running)
		mdouble_stop(&md);
	mongoc_cleanup();
	return failed == 0 && !md_failed ? EXIT_SUCCESS : EXIT_FAILURE;
}
