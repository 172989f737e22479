/* test_store_sqlite.c - what only the SQLite backend of the store
 * (src/store_sqlite.c, with the lanes and handle recovery of src/store.c)
 * can show with a real file: reads served while another connection holds
 * the write lock, the lane rules of store_exec() on pool threads, a WAL
 * that stays bounded, and faults that heal - a full disk (RLIMIT_FSIZE),
 * a read-only and an unreadable database file - without a restart.
 *
 * Each test runs in its own forked process (check's default) with its own
 * temp directory and event_base; every wait is bounded. Permission faults
 * need an unprivileged process: when run as root the test process first
 * drops to nobody (65534), which root's file access would otherwise defeat.
 */
#define _GNU_SOURCE
#include "../src/store.h"

#include <check.h>
#include <errno.h>
#include <event2/event.h>
#include <ftw.h>
#include <grp.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/log.h"
#include "../workers/schema.h"

#define OP_LIMIT_MS 15000
#define HEAL_LIMIT_MS 10000 /* a fixed fault must be gone from writes within this */
#define NOBODY 65534

static struct {
	struct event_base *base;
	struct store *st;
	char dir[64];
	char path[128];
	char wal[136];
	char uri[256];
} T;

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static void open_store(const struct store_opts *o)
{
	char err[256] = "";

	T.st = store_open(T.uri, T.base, o, err, sizeof err);
	ck_assert_msg(T.st != NULL, "store_open: %s", err);
}

static void setup(void)
{
	memset(&T, 0, sizeof T);
	T.base = event_base_new();
	ck_assert_ptr_nonnull(T.base);
	snprintf(T.dir, sizeof T.dir, "/tmp/resil-sqlite.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(T.dir));
	snprintf(T.path, sizeof T.path, "%s/resil.db", T.dir);
	snprintf(T.wal, sizeof T.wal, "%s-wal", T.path);
	snprintf(T.uri, sizeof T.uri, "sqlite://%s", T.path);
}

static void teardown(void)
{
	store_close(T.st);
	T.st = NULL;
	event_base_free(T.base);
	nftw(T.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

struct waiter {
	bool done;
	enum store_err err;
};

static void on_done(struct store_op *op, enum store_err err)
{
	struct waiter *w = op->user;

	w->done = true;
	w->err = err;
}

static void wake(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

/* Turn the loop until *flag or limit_ms pass; false on timeout. */
static bool loop_until(const bool *flag, uint64_t limit_ms)
{
	struct event *tick = event_new(T.base, -1, EV_PERSIST, wake, NULL);
	struct timeval tv = {0, 10000};
	uint64_t until = jobs_now_ms() + limit_ms;

	ck_assert_ptr_nonnull(tick);
	ck_assert_int_eq(event_add(tick, &tv), 0);
	while (!*flag && jobs_now_ms() < until)
		event_base_loop(T.base, EVLOOP_ONCE);
	event_free(tick);
	return *flag;
}

static void submit(struct store_op *op, struct waiter *w, uint64_t deadline_in_ms)
{
	memset(w, 0, sizeof *w);
	op->done = on_done;
	op->user = w;
	op->deadline_ms = jobs_now_ms() + deadline_in_ms;
	ck_assert_int_eq(store_submit(T.st, op), 0);
}

static enum store_err run_op(struct store_op *op)
{
	struct waiter w;

	submit(op, &w, 10000);
	ck_assert_msg(loop_until(&w.done, OP_LIMIT_MS), "op did not complete");
	return w.err;
}

/* A post of about `size` bytes of content. */
static bson_t *post_doc(int seq, size_t size)
{
	bson_t *d = bson_new();
	char *content = malloc(size + 1);

	ck_assert_ptr_nonnull(content);
	memset(content, 'x', size);
	content[size] = '\0';
	BSON_APPEND_UTF8(d, "title", "post");
	BSON_APPEND_INT32(d, "seq", seq);
	BSON_APPEND_UTF8(d, "content", content);
	free(content);
	return d;
}

static enum store_err insert_post(int seq, size_t size)
{
	struct store_op op;
	enum store_err err;

	store_op_init(&op, STORE_OP_INSERT, COLL_POSTS);
	op.doc = post_doc(seq, size);
	err = run_op(&op);
	store_op_clear(&op);
	return err;
}

static int64_t count_posts(enum store_err *err)
{
	struct store_op op;
	int64_t n;

	store_op_init(&op, STORE_OP_COUNT, COLL_POSTS);
	*err = run_op(&op);
	n = op.count;
	store_op_clear(&op);
	return n;
}

/* Insert until one succeeds; returns how long that took (ms), or -1 if
 * HEAL_LIMIT_MS passed first. Every failure must be UNAVAILABLE. */
static int64_t insert_until_healed(int seq)
{
	uint64_t t0 = jobs_now_ms();

	for (;;) {
		enum store_err err = insert_post(seq, 64);

		if (err == STORE_OK)
			return (int64_t)(jobs_now_ms() - t0);
		ck_assert_msg(err == STORE_UNAVAILABLE || err == STORE_CIRCUIT_OPEN, "unexpected %s",
		              store_err_name(err));
		if (jobs_now_ms() - t0 > HEAL_LIMIT_MS)
			return -1;
		event_base_loop(T.base, EVLOOP_NONBLOCK);
		usleep(100000);
	}
}

static off_t file_size(const char *path)
{
	struct stat sb;

	return stat(path, &sb) == 0 ? sb.st_size : 0;
}

/* ---- lanes -------------------------------------------------------------- */

START_TEST(test_sqlite_reads_are_served_while_another_connection_holds_the_write_lock)
{
	struct store_opts o = {.pool_size = 2, .busy_timeout_ms = 8000, .ping_interval_ms = 60000};
	struct store_op wop, rop;
	struct waiter ww;
	sqlite3 *holder;
	enum store_err err;
	uint64_t worst = 0;

	open_store(&o);
	ck_assert_int_eq(insert_post(0, 64), STORE_OK);

	/* Another process's connection (here: another connection of this
	 * process, outside the store) takes the write lock and keeps it. */
	ck_assert_int_eq(sqlite3_open_v2(T.path, &holder, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_exec(holder, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);

	store_op_init(&wop, STORE_OP_INSERT, COLL_POSTS);
	wop.doc = post_doc(1, 64);
	submit(&wop, &ww, 12000); /* waits for the lock on the write lane */

	for (int i = 0; i < 20; i++) {
		uint64_t t0 = jobs_now_ms();

		store_op_init(&rop, i % 2 ? STORE_OP_COUNT : STORE_OP_FIND, COLL_POSTS);
		err = run_op(&rop);
		ck_assert_int_eq(err, STORE_OK);
		ck_assert(rop.kind == STORE_OP_COUNT ? rop.count == 1 : rop.ndocs == 1);
		store_op_clear(&rop);
		if (jobs_now_ms() - t0 > worst)
			worst = jobs_now_ms() - t0;
	}
	/* Every read was answered while the write still waited for the lock. */
	ck_assert(!ww.done);
	printf("reads under a held write lock: worst %llu ms over 20\n", (unsigned long long)worst);

	ck_assert_int_eq(sqlite3_exec(holder, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(holder);
	ck_assert(loop_until(&ww.done, OP_LIMIT_MS));
	ck_assert_int_eq(ww.err, STORE_OK);
	store_op_clear(&wop);
	ck_assert_int_eq(count_posts(&err), 2);
}
END_TEST

struct route_job {
	struct job job;
	struct store *st;
	enum store_err read_err, write_err;
	int64_t seen;
	bool done;
};

/* A route's whole store sequence on one pool thread: count, then insert. */
static void route_work(struct job *job)
{
	struct route_job *r = (struct route_job *)job;
	struct store_op op;

	store_op_init(&op, STORE_OP_COUNT, COLL_POSTS);
	r->read_err = store_exec(r->st, &op);
	r->seen = op.count;
	store_op_clear(&op);
	store_op_init(&op, STORE_OP_INSERT, COLL_POSTS);
	op.doc = post_doc(7, 16);
	r->write_err = store_exec(r->st, &op);
	store_op_clear(&op);
}

static void route_done(struct job *job, int status)
{
	struct route_job *r = (struct route_job *)job;

	ck_assert_int_eq(status, JOB_OK);
	r->done = true;
}

static void run_route(struct route_job *r, int lane, bool slow)
{
	memset(r, 0, sizeof *r);
	r->st = T.st;
	r->job.work = route_work;
	r->job.done = route_done;
	r->job.lane = lane;
	r->job.slow = slow;
	ck_assert_int_eq(jobs_submit(store_job_pool(T.st), &r->job), 0);
	ck_assert(loop_until(&r->done, OP_LIMIT_MS));
}

START_TEST(test_sqlite_route_job_writes_only_on_the_write_lane)
{
	struct store_opts o = {.pool_size = 2, .ping_interval_ms = 60000};
	struct route_job r;
	enum store_err err;

	open_store(&o);
	run_route(&r, JOB_LANE_READ, false);
	ck_assert_int_eq(r.read_err, STORE_OK);
	ck_assert_int_eq(r.write_err, STORE_INTERNAL); /* refused, not run */
	ck_assert_int_eq(count_posts(&err), 0);
	run_route(&r, JOB_LANE_READ, true); /* slow: still a read-lane job */
	ck_assert_int_eq(r.write_err, STORE_INTERNAL);
	ck_assert_int_eq(count_posts(&err), 0);
	run_route(&r, JOB_LANE_WRITE, false);
	ck_assert_int_eq(r.read_err, STORE_OK);
	ck_assert_int_eq(r.seen, 0);
	ck_assert_int_eq(r.write_err, STORE_OK);
	ck_assert_int_eq(count_posts(&err), 1);
	/* A slow write-lane job (hash, then store) runs on a reader thread and
	 * may write from there. */
	run_route(&r, JOB_LANE_WRITE, true);
	ck_assert_int_eq(r.seen, 1);
	ck_assert_int_eq(r.write_err, STORE_OK);
	ck_assert_int_eq(count_posts(&err), 2);
	ck_assert_int_eq(err, STORE_OK);
}
END_TEST

/* ---- WAL ---------------------------------------------------------------- */

#define WAL_WRITES 10000
#define WAL_INFLIGHT 32
#define WAL_BOUND (16 * 1024 * 1024) /* the old 8000-page autocheckpoint let it reach ~32 MiB */

START_TEST(test_sqlite_wal_stays_bounded_over_10000_writes)
{
	struct store_opts o = {.pool_size = 2, .ping_interval_ms = 500, .sync = STORE_SYNC_NORMAL};
	struct store_op ops[WAL_INFLIGHT];
	struct waiter w[WAL_INFLIGHT];
	off_t peak = 0;
	int sent = 0, acked = 0;
	enum store_err err;

	open_store(&o);
	for (int i = 0; i < WAL_INFLIGHT; i++) {
		store_op_init(&ops[i], STORE_OP_INSERT, COLL_POSTS);
		ops[i].doc = post_doc(sent++, 300);
		submit(&ops[i], &w[i], 30000);
	}
	while (acked < WAL_WRITES) {
		ck_assert(event_base_loop(T.base, EVLOOP_ONCE) >= 0);
		for (int i = 0; i < WAL_INFLIGHT; i++) {
			off_t sz;

			if (!w[i].done)
				continue;
			ck_assert_msg(w[i].err == STORE_OK, "write %d: %s", acked, store_err_name(w[i].err));
			acked++;
			sz = file_size(T.wal);
			if (sz > peak)
				peak = sz;
			store_op_clear(&ops[i]);
			w[i].done = false;
			if (sent < WAL_WRITES) {
				store_op_init(&ops[i], STORE_OP_INSERT, COLL_POSTS);
				ops[i].doc = post_doc(sent++, 300);
				submit(&ops[i], &w[i], 30000);
			} else {
				w[i].done = false;
				ops[i].kind = 0; /* spent */
			}
		}
	}
	ck_assert_int_eq(count_posts(&err), WAL_WRITES);
	printf("WAL peak over %d writes: %lld bytes (database %lld bytes)\n", WAL_WRITES, (long long)peak,
	       (long long)file_size(T.path));
	ck_assert_msg(peak > 0, "no WAL seen");
	ck_assert_msg(peak <= WAL_BOUND, "WAL grew to %lld bytes", (long long)peak);
}
END_TEST

/* ---- faults that heal --------------------------------------------------- */

START_TEST(test_sqlite_writes_resume_after_the_disk_was_full)
{
	/* No health ping: its write probe (one page) could fit where the big
	 * writes do not and mark writes healthy again during the fault. */
	struct store_opts o = {.pool_size = 2, .ping_interval_ms = 60000, .breaker_volume = 1000};
	struct rlimit old, full;
	sqlite3 *db;
	enum store_err err;
	int64_t healed;

	open_store(&o);
	for (int i = 0; i < 5; i++)
		ck_assert_int_eq(insert_post(i, 64), STORE_OK);
	/* Empty the WAL so the next big write has to grow a file. */
	ck_assert_int_eq(sqlite3_open_v2(T.path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);

	/* A full disk: no file of this process may grow past its size now. */
	ck_assert(signal(SIGXFSZ, SIG_IGN) != SIG_ERR);
	ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
	full = old;
	full.rlim_cur = (rlim_t)file_size(T.path) + 4096;
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &full), 0);
	ck_assert_int_eq(insert_post(100, 256 * 1024), STORE_UNAVAILABLE);
	ck_assert_int_eq(insert_post(101, 256 * 1024), STORE_UNAVAILABLE);
	ck_assert_int_eq(store_db_state(T.st), 0); /* /health says degraded */

	/* Space freed: writes resume without reopening the store. */
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
	healed = insert_until_healed(200);
	ck_assert_msg(healed >= 0, "writes did not resume within %d ms", HEAL_LIMIT_MS);
	for (int i = 0; i < 20; i++)
		ck_assert_int_eq(insert_post(300 + i, 256 * 1024), STORE_OK);
	ck_assert_int_eq(store_db_state(T.st), 1);
	ck_assert_int_eq(count_posts(&err), 5 + 1 + 20);
}
END_TEST

static int chown_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return lchown(p, NOBODY, NOBODY);
}

/* Make file permissions bind this process: as root, become nobody (owning
 * the test directory); otherwise nothing to do. */
static void become_unprivileged(void)
{
	if (geteuid() != 0)
		return;
	ck_assert_int_eq(nftw(T.dir, chown_entry, 16, FTW_PHYS), 0);
	ck_assert_int_eq(setgroups(0, NULL), 0);
	ck_assert_int_eq(setgid(NOBODY), 0);
	ck_assert_int_eq(setuid(NOBODY), 0);
}

/* The database file gets mode during a "restart" (store closed and opened
 * again); the store must open anyway, disconnected, refuse writes with
 * UNAVAILABLE, then serve them again within HEAL_LIMIT_MS of the fix. */
static void fault_at_open_heals(mode_t mode)
{
	struct store_opts o = {.pool_size = 2, .ping_interval_ms = 200, .breaker_volume = 1000};
	enum store_err err;
	int64_t healed;

	open_store(&o);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(insert_post(i, 64), STORE_OK);
	store_close(T.st);
	T.st = NULL;
	become_unprivileged();

	ck_assert_int_eq(chmod(T.path, mode), 0);
	open_store(&o); /* never fatal: the fault may heal */
	ck_assert_int_eq(store_db_state(T.st), 0);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(insert_post(10 + i, 64), STORE_UNAVAILABLE);
	ck_assert_int_eq(store_db_state(T.st), 0);

	ck_assert_int_eq(chmod(T.path, 0640), 0);
	healed = insert_until_healed(20);
	if (healed < 0 && getenv("T_DEBUG")) {
		char cmd[160];

		snprintf(cmd, sizeof cmd, "ls -la %s", T.dir);
		(void)system(cmd);
	}
	ck_assert_msg(healed >= 0, "writes did not resume within %d ms", HEAL_LIMIT_MS);
	printf("mode %03o: writes resumed %lld ms after the fix\n", (unsigned)mode, (long long)healed);
	for (int i = 0; i < 20; i++)
		ck_assert_int_eq(insert_post(30 + i, 64), STORE_OK);
	ck_assert_int_eq(count_posts(&err), 3 + 1 + 20);
	ck_assert_int_eq(err, STORE_OK);
	ck_assert_int_eq(store_db_state(T.st), 1);
}

START_TEST(test_sqlite_read_only_file_at_open_heals_when_fixed)
{
	fault_at_open_heals(0440);
}
END_TEST

START_TEST(test_sqlite_unreadable_file_at_open_heals_when_fixed)
{
	fault_at_open_heals(0000);
}
END_TEST

START_TEST(test_sqlite_bad_schema_and_uri_still_fail_open)
{
	static const struct store_collection bad_coll = {.name = "no spaces"};
	static const struct store_schema bad = {.collections = &bad_coll, .ncollections = 1};
	char err[256] = "";

	store_register_schema(&bad);
	ck_assert_ptr_null(store_open(T.uri, T.base, NULL, err, sizeof err));
	ck_assert_msg(strstr(err, "store schema") != NULL, "%s", err);
	store_register_schema(NULL);
	ck_assert_ptr_null(store_open(T.uri, T.base, NULL, err, sizeof err));
	ck_assert_msg(strstr(err, "no schema registered") != NULL, "%s", err);
	store_register_schema(&app_schema);
	ck_assert_ptr_null(store_open("sqlite:", T.base, NULL, err, sizeof err));
	ck_assert_msg(strstr(err, "no database file name") != NULL, "%s", err);
}
END_TEST

/* ---- compatibility ------------------------------------------------------ */

/* The tables the build before the schema moved to workers/ created (schema
 * version 1), written here byte for byte as a fixture. */
static const char legacy_v1[] =
    "CREATE TABLE users (id TEXT PRIMARY KEY NOT NULL, doc BLOB NOT NULL, created_at,"
    "  email UNIQUE, username UNIQUE);"
    "CREATE TABLE posts (id TEXT PRIMARY KEY NOT NULL, doc BLOB NOT NULL, created_at, category, author);"
    "CREATE INDEX posts_created ON posts (created_at, id);"
    "CREATE INDEX posts_category ON posts (category, created_at, id);"
    "CREATE INDEX posts_author ON posts (author, created_at, id);"
    "CREATE TABLE patients (id TEXT PRIMARY KEY NOT NULL, doc BLOB NOT NULL, created_at, status);"
    "CREATE INDEX patients_status ON patients (status, created_at, id);"
    "CREATE TABLE rooms (id TEXT PRIMARY KEY NOT NULL, doc BLOB NOT NULL, created_at, owner);"
    "CREATE INDEX rooms_owner ON rooms (owner);"
    "CREATE TABLE room_members (member NOT NULL, room_id TEXT NOT NULL, PRIMARY KEY (member, room_id))"
    "  WITHOUT ROWID;"
    "CREATE INDEX room_members_room ON room_members (room_id);"
    "CREATE TABLE messages (id TEXT PRIMARY KEY NOT NULL, doc BLOB NOT NULL, created_at, room);"
    "CREATE INDEX messages_room ON messages (room, created_at, id);"
    "PRAGMA user_version = 1;";

/* Rooms of member m (array-contains through the mirror table). */
static size_t rooms_of(const bson_oid_t *m)
{
	struct store_op op;
	size_t n;

	store_op_init(&op, STORE_OP_FIND, COLL_ROOMS);
	ck_assert_int_eq(store_filter_oid(&op.filter, "members", STORE_CONTAINS, m), 0);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	n = op.ndocs;
	store_op_clear(&op);
	return n;
}

START_TEST(test_sqlite_database_of_the_previous_build_keeps_working)
{
	struct store_opts o = {.pool_size = 2, .ping_interval_ms = 60000};
	bson_oid_t room, alice, bob;
	char hex[25];
	bson_t *doc, arr;
	sqlite3 *db;
	sqlite3_stmt *st;
	struct store_op op;

	bson_oid_init(&room, NULL);
	bson_oid_init(&alice, NULL);
	bson_oid_init(&bob, NULL);
	doc = bson_new();
	BSON_APPEND_OID(doc, "_id", &room);
	BSON_APPEND_UTF8(doc, "name", "old room");
	BSON_APPEND_OID(doc, "owner", &alice);
	BSON_APPEND_ARRAY_BEGIN(doc, "members", &arr);
	BSON_APPEND_OID(&arr, "0", &alice);
	bson_append_array_end(doc, &arr);
	BSON_APPEND_DATE_TIME(doc, "createdAt", 1700000000000);
	BSON_APPEND_DATE_TIME(doc, "updatedAt", 1700000000000);
	bson_oid_to_string(&room, hex);
	ck_assert_int_eq(sqlite3_open(T.path, &db), SQLITE_OK);
	ck_assert_int_eq(sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_exec(db, legacy_v1, NULL, NULL, NULL), SQLITE_OK);
	ck_assert_int_eq(
	    sqlite3_prepare_v2(db, "INSERT INTO rooms (id, doc, created_at, owner) VALUES (?, ?, ?, ?)", -1, &st, NULL),
	    SQLITE_OK);
	sqlite3_bind_text(st, 1, hex, 24, SQLITE_STATIC);
	sqlite3_bind_blob(st, 2, bson_get_data(doc), (int)doc->len, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, 1700000000000);
	sqlite3_bind_blob(st, 4, alice.bytes, 12, SQLITE_STATIC);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
	sqlite3_finalize(st);
	ck_assert_int_eq(
	    sqlite3_prepare_v2(db, "INSERT INTO room_members (member, room_id) VALUES (?, ?)", -1, &st, NULL),
	    SQLITE_OK);
	sqlite3_bind_blob(st, 1, alice.bytes, 12, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, hex, 24, SQLITE_STATIC);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
	sqlite3_finalize(st);
	sqlite3_close(db);
	bson_destroy(doc);

	open_store(&o);
	ck_assert_uint_eq(rooms_of(&alice), 1);
	ck_assert_uint_eq(rooms_of(&bob), 0);
	/* Membership written now lands in the old mirror table too. */
	store_op_init(&op, STORE_OP_UPDATE_BY_ID, COLL_ROOMS);
	bson_oid_copy(&room, &op.id);
	ck_assert_int_eq(store_op_add_to_set_oid(&op, "members", &bob), 0);
	ck_assert_int_eq(run_op(&op), STORE_OK);
	store_op_clear(&op);
	ck_assert_uint_eq(rooms_of(&bob), 1);
	store_close(T.st);
	T.st = NULL;
	ck_assert_int_eq(sqlite3_open(T.path, &db), SQLITE_OK);
	ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT count(*) FROM room_members WHERE room_id = ?", -1, &st, NULL),
	                 SQLITE_OK);
	sqlite3_bind_text(st, 1, hex, 24, SQLITE_STATIC);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	ck_assert_int_eq(sqlite3_column_int(st, 0), 2);
	sqlite3_finalize(st);
	ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	ck_assert_int_eq(sqlite3_column_int(st, 0), (int)app_schema.nsqlite_migrations);
	sqlite3_finalize(st);
	sqlite3_close(db);
}
END_TEST

static Suite *sqlite_suite(void)
{
	const struct {
		const char *name;
		const TTest *test;
	} cases[] = {
	    {"held_lock", test_sqlite_reads_are_served_while_another_connection_holds_the_write_lock},
	    {"route_lanes", test_sqlite_route_job_writes_only_on_the_write_lane},
	    {"wal_bounded", test_sqlite_wal_stays_bounded_over_10000_writes},
	    {"disk_full", test_sqlite_writes_resume_after_the_disk_was_full},
	    {"read_only", test_sqlite_read_only_file_at_open_heals_when_fixed},
	    {"unreadable", test_sqlite_unreadable_file_at_open_heals_when_fixed},
	    {"fatal_open", test_sqlite_bad_schema_and_uri_still_fail_open},
	    {"legacy_db", test_sqlite_database_of_the_previous_build_keeps_working},
	};
	Suite *s = suite_create("store_sqlite");

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		TCase *tc = tcase_create(cases[i].name);

		tcase_add_checked_fixture(tc, setup, teardown);
		tcase_set_timeout(tc, 120);
		tcase_add_test(tc, cases[i].test);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(void)
{
	SRunner *sr;
	int failed;

	log_init(getenv("T_DEBUG") ? LOG_LVL_DEBUG : LOG_LVL_ERROR, 0, NULL, -1);
	store_register_schema(&app_schema);
	sr = srunner_create(sqlite_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
