/* store_sqlite.c - the embedded SQLite backend of the store.
 *
 * Layout (declared by the application's schema, see store.h): one table per
 * collection, `id TEXT PRIMARY KEY` (the 24-hex ObjectId), `doc BLOB` (the
 * BSON document, the source of truth) and real columns copied from the
 * document for the fields the schema lists (filtered, sorted or UNIQUE). A
 * collection may mirror one array field into a join table (value, id) kept
 * in step with the documents, so "array contains x" is an index lookup.
 * The tables themselves come from the schema's migrations, applied in
 * order under PRAGMA user_version. Filters on other fields go through two SQL
 * functions registered on every connection, resil_field(doc, path) and
 * resil_contains(doc, path, value), which read the BSON directly, so every
 * filter the interface can express works here exactly as on MongoDB.
 *
 * Values map to SQL as: string -> TEXT, int32/int64/bool/datetime ->
 * INTEGER, double -> REAL, ObjectId -> 12-byte BLOB (so an id never equals
 * a string), anything else -> NULL. Indexed columns have no declared type
 * (no affinity), so SQL compares them exactly like the functions' results.
 *
 * Durability (store_opts.sync, RESIL_DB_SYNC): WAL mode. A committed
 * transaction is in the WAL file before COMMIT returns, so killing the
 * process (even with kill -9) never loses an acknowledged write. With
 * synchronous=FULL (the default) the WAL is also fsynced at every commit,
 * so power loss or an OS crash loses nothing acknowledged either; with
 * NORMAL they may drop the last commits (the file stays consistent).
 *
 * WAL size: every connection checkpoints passively once the WAL passes
 * SQ_WAL_AUTOCHECKPOINT pages (the size trigger, on the committing writer),
 * and each health ping (every couple of seconds, on a read-lane thread)
 * runs a passive checkpoint too, so the writer rarely pays for one; when
 * the WAL restarts it is truncated to journal_size_limit. Passive
 * checkpoints never wait for locks, so they do not stall group commits.
 *
 * Faults: a write-lane connection that opens read-only is refused; an op
 * failing with a read-only, permission, I/O, cannot-open or disk-full error
 * marks its connection broken, and store.c reopens it with backoff, so
 * writes resume once the file or the disk is fixed.
 *
 * Concurrency: one connection per pool thread, opened in the pool's
 * thread_init; several worker processes share the file. Every write runs in
 * BEGIN IMMEDIATE, so a writer takes the lock up front and waits for it in
 * the busy handler (busy_timeout_ms, bounded by the op's deadline) instead
 * of failing half-way; SQLITE_BUSY left after that is UNAVAILABLE, which
 * store.c retries (a failed SQLite transaction has no effect, so repeating
 * it is always safe). Migrations run in one BEGIN IMMEDIATE transaction that
 * re-reads PRAGMA user_version under the lock, so processes starting
 * together apply each step exactly once.
 *
 * One file on purpose: everything that knows SQLite (connections, the
 * schema's tables and mirrors, filters as SQL, checkpoints and fault
 * classification) is this backend; the rest of the store does not.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <sqlite3.h>

#include "clock.h"
#include "jobs.h"
#include "log.h"
#include "store_internal.h"

#define SQ_CACHE 32     /* prepared statements kept per connection */
#define SQ_SQL_MAX 8192 /* longest generated statement */
#define SQ_SETUP_WAIT_MS 30000
#define SQ_PROGRESS_OPS 4000                 /* VM steps between deadline checks */
#define SQ_WAL_AUTOCHECKPOINT 1000           /* pages (4 KiB): ~4 MiB of WAL */
#define SQ_WAL_LIMIT_BYTES (4 * 1024 * 1024) /* WAL truncated to this on restart */

/* ---- handles ------------------------------------------------------------ */

struct sq_ctx {
	const struct store_schema *schema;
	char *path;
	uint32_t busy_ms;
	int sync; /* enum store_sync */
	/* Writers of this process queue here rather than polling SQLite's
	 * lock in the busy handler; other processes still meet at the file
	 * lock. Held from BEGIN IMMEDIATE to COMMIT/ROLLBACK. */
	pthread_mutex_t wlock;
};

struct sq_stmt {
	char *sql;
	uint32_t hash;
	sqlite3_stmt *st;
	uint64_t used;
};

struct sq_conn {
	sqlite3 *db;
	struct sq_ctx *ctx;
	uint64_t deadline_ms;         /* current op's, 0 = none */
	const atomic_bool *abandoned; /* current op's flag, or NULL */
	uint64_t busy_since;
	bool wlocked; /* holds ctx->wlock */
	bool writer;  /* write-lane connection */
	bool broken;  /* failed in a way only a new connection may fix */
	uint64_t tick;
	unsigned ncache;
	struct sq_stmt cache[SQ_CACHE];
};

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Lock wait: short sleeps, bounded by busy_ms and by the op's deadline. */
static int on_busy(void *arg, int count)
{
	struct sq_conn *c = arg;
	uint64_t now = jobs_now_ms();

	if (count == 0)
		c->busy_since = now;
	if (now - c->busy_since >= c->ctx->busy_ms || (c->deadline_ms && now >= c->deadline_ms))
		return 0;
	sleep_ms(count < 20 ? 1 : count < 100 ? 2 : 5);
	return 1;
}

/* Interrupts a statement whose op is past its deadline or abandoned. */
static int on_progress(void *arg)
{
	struct sq_conn *c = arg;

	return (c->deadline_ms && jobs_now_ms() >= c->deadline_ms) || (c->abandoned && atomic_load(c->abandoned));
}

static uint32_t hash_str(const char *s)
{
	uint32_t h = 2166136261u;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

/* The cached prepared statement for sql (prepared on first use), or NULL. */
static sqlite3_stmt *stmt_get(struct sq_conn *c, const char *sql)
{
	uint32_t h = hash_str(sql);
	struct sq_stmt *slot = NULL;
	sqlite3_stmt *st;

	for (unsigned i = 0; i < c->ncache; i++) {
		if (c->cache[i].hash == h && strcmp(c->cache[i].sql, sql) == 0) {
			c->cache[i].used = ++c->tick;
			return c->cache[i].st;
		}
	}
	if (sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK)
		return NULL;
	if (c->ncache < SQ_CACHE) {
		slot = &c->cache[c->ncache];
	} else {
		slot = &c->cache[0];
		for (unsigned i = 1; i < SQ_CACHE; i++)
			if (c->cache[i].used < slot->used)
				slot = &c->cache[i];
		sqlite3_finalize(slot->st);
		free(slot->sql);
		slot->st = NULL;
		slot->sql = NULL;
	}
	slot->sql = strdup(sql);
	if (!slot->sql) {
		sqlite3_finalize(st);
		if (slot == &c->cache[c->ncache])
			return NULL;
		/* The evicted slot is now empty: close the gap. */
		*slot = c->cache[--c->ncache];
		memset(&c->cache[c->ncache], 0, sizeof c->cache[0]);
		return NULL;
	}
	if (slot == &c->cache[c->ncache])
		c->ncache++;
	slot->hash = h;
	slot->st = st;
	slot->used = ++c->tick;
	return st;
}

static void stmt_done(sqlite3_stmt *st)
{
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
}

/* ---- values ------------------------------------------------------------- */

enum { SV_NULL, SV_INT, SV_REAL, SV_TEXT, SV_BLOB };

struct sq_val {
	int t;
	int64_t i;
	double d;
	const void *p;
	int n;
};

static struct sq_val val_of_iter(const bson_iter_t *it)
{
	struct sq_val v = {.t = SV_NULL};
	uint32_t len;

	switch (bson_iter_type(it)) {
	case BSON_TYPE_UTF8:
		v.p = bson_iter_utf8(it, &len);
		v.n = (int)len;
		v.t = SV_TEXT;
		break;
	case BSON_TYPE_INT32:
	case BSON_TYPE_INT64:
		v.i = bson_iter_as_int64(it);
		v.t = SV_INT;
		break;
	case BSON_TYPE_BOOL:
		v.i = bson_iter_bool(it) ? 1 : 0;
		v.t = SV_INT;
		break;
	case BSON_TYPE_DATE_TIME:
		v.i = bson_iter_date_time(it);
		v.t = SV_INT;
		break;
	case BSON_TYPE_DOUBLE:
		v.d = bson_iter_double(it);
		v.t = SV_REAL;
		break;
	case BSON_TYPE_OID:
		v.p = bson_iter_oid(it)->bytes;
		v.n = 12;
		v.t = SV_BLOB;
		break;
	default: break;
	}
	return v;
}

static struct sq_val val_of_store(const struct store_value *s)
{
	struct sq_val v = {.t = SV_NULL};

	switch (s->type) {
	case STORE_V_STR:
		v.p = s->u.s;
		v.n = (int)strlen(s->u.s);
		v.t = SV_TEXT;
		break;
	case STORE_V_INT:
		v.i = s->u.i;
		v.t = SV_INT;
		break;
	case STORE_V_BOOL:
		v.i = s->u.b ? 1 : 0;
		v.t = SV_INT;
		break;
	case STORE_V_OID:
		v.p = s->u.oid.bytes;
		v.n = 12;
		v.t = SV_BLOB;
		break;
	default: break;
	}
	return v;
}

static int bind_val(sqlite3_stmt *st, int idx, const struct sq_val *v)
{
	switch (v->t) {
	case SV_INT: return sqlite3_bind_int64(st, idx, v->i);
	case SV_REAL: return sqlite3_bind_double(st, idx, v->d);
	case SV_TEXT: return sqlite3_bind_text(st, idx, v->p, v->n, SQLITE_STATIC);
	case SV_BLOB: return sqlite3_bind_blob(st, idx, v->p, v->n, SQLITE_STATIC);
	default: return sqlite3_bind_null(st, idx);
	}
}

/* Same value as SQL would compare it (numbers by value, bytes exactly). */
static bool val_eq_sql(const struct sq_val *a, sqlite3_value *b)
{
	switch (sqlite3_value_type(b)) {
	case SQLITE_INTEGER:
		if (a->t == SV_INT)
			return a->i == sqlite3_value_int64(b);
		return a->t == SV_REAL && a->d == (double)sqlite3_value_int64(b);
	case SQLITE_FLOAT:
		if (a->t == SV_REAL)
			return a->d == sqlite3_value_double(b);
		return a->t == SV_INT && (double)a->i == sqlite3_value_double(b);
	case SQLITE_TEXT:
		return a->t == SV_TEXT && sqlite3_value_bytes(b) == a->n &&
		       memcmp(sqlite3_value_text(b), a->p, (size_t)a->n) == 0;
	case SQLITE_BLOB:
		return a->t == SV_BLOB && sqlite3_value_bytes(b) == a->n &&
		       memcmp(sqlite3_value_blob(b), a->p, (size_t)a->n) == 0;
	default: return false;
	}
}

/* Find path in the BSON blob argv[0]. */
static bool fn_find(sqlite3_value **argv, bson_t *doc, bson_iter_t *out)
{
	const void *blob = sqlite3_value_blob(argv[0]);
	int n = sqlite3_value_bytes(argv[0]);
	const char *path = (const char *)sqlite3_value_text(argv[1]);
	bson_iter_t it;

	if (!blob || n < 5 || !path || !bson_init_static(doc, blob, (size_t)n) || !bson_iter_init(&it, doc))
		return false;
	return bson_iter_find_descendant(&it, path, out);
}

/* resil_field(doc, path): the field's value as SQL, NULL if absent. */
static void fn_field(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	bson_t doc;
	bson_iter_t it;
	struct sq_val v;

	(void)argc;
	if (!fn_find(argv, &doc, &it)) {
		sqlite3_result_null(ctx);
		return;
	}
	v = val_of_iter(&it);
	switch (v.t) {
	case SV_INT: sqlite3_result_int64(ctx, v.i); break;
	case SV_REAL: sqlite3_result_double(ctx, v.d); break;
	case SV_TEXT: sqlite3_result_text(ctx, v.p, v.n, SQLITE_TRANSIENT); break;
	case SV_BLOB: sqlite3_result_blob(ctx, v.p, v.n, SQLITE_TRANSIENT); break;
	default: sqlite3_result_null(ctx); break;
	}
}

/* resil_contains(doc, path, value): 1 if the array (or scalar) at path
 * has an element equal to value. */
static void fn_contains(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	bson_t doc;
	bson_iter_t it, child;
	struct sq_val v;
	int found = 0;

	(void)argc;
	if (fn_find(argv, &doc, &it)) {
		if (BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &child)) {
			while (!found && bson_iter_next(&child)) {
				v = val_of_iter(&child);
				found = val_eq_sql(&v, argv[2]);
			}
		} else {
			v = val_of_iter(&it);
			found = val_eq_sql(&v, argv[2]);
		}
	}
	sqlite3_result_int(ctx, found);
}

/* ---- errors ------------------------------------------------------------- */

/* The document field named by a "UNIQUE constraint failed: t.col" message. */
static void dup_field_of(const struct store_collection *co, const char *msg, char *out)
{
	const char *dot = msg ? strrchr(msg, '.') : NULL;
	const char *col = dot ? dot + 1 : "";

	snprintf(out, STORE_FIELD_MAX, "%s", strcmp(col, "id") == 0 ? "_id" : col);
	for (unsigned i = 0; i < co->ncolumns; i++)
		if (strcmp(co->columns[i].column, col) == 0)
			snprintf(out, STORE_FIELD_MAX, "%s", co->columns[i].field);
}

static enum store_err map_rc(struct sq_conn *c, int rc, const char *what)
{
	switch (rc & 0xff) {
	case SQLITE_OK:
	case SQLITE_ROW:
	case SQLITE_DONE: return STORE_OK;
	case SQLITE_INTERRUPT: return STORE_TIMEOUT;
	case SQLITE_CONSTRAINT:
		if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY)
			return STORE_DUPLICATE_KEY;
		break;
	case SQLITE_IOERR:
	case SQLITE_FULL:
	case SQLITE_CANTOPEN:
	case SQLITE_READONLY:
	case SQLITE_PERM:
		c->broken = true;
		/* fall through */
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
	case SQLITE_PROTOCOL:
	case SQLITE_NOMEM:
		log_warn(NULL, "sqlite: database unavailable", LF_STR("during", what), LF_INT("code", rc),
		         LF_STR("error", sqlite3_errmsg(c->db)));
		return STORE_UNAVAILABLE;
	default: break;
	}
	log_error(NULL, "sqlite: unexpected error", LF_STR("during", what), LF_INT("code", rc),
	          LF_STR("error", sqlite3_errmsg(c->db)));
	return STORE_INTERNAL;
}

/* Run a cached statement without results. */
static int exec_simple(struct sq_conn *c, const char *sql)
{
	sqlite3_stmt *st = stmt_get(c, sql);
	int rc;

	if (!st)
		return sqlite3_errcode(c->db) ? sqlite3_extended_errcode(c->db) : SQLITE_NOMEM;
	rc = sqlite3_step(st);
	stmt_done(st);
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

static void rollback(struct sq_conn *c)
{
	if (sqlite3_get_autocommit(c->db))
		return;     /* SQLite already rolled back (e.g. after an I/O error) */
	c->deadline_ms = 0; /* never interrupt the rollback itself */
	c->abandoned = NULL;
	if (exec_simple(c, "ROLLBACK") != SQLITE_OK)
		log_error(NULL, "sqlite: rollback failed", LF_STR("error", sqlite3_errmsg(c->db)));
}

/* ---- open / setup ------------------------------------------------------- */

/* The file path of a sqlite: URI. */
static int parse_uri(const char *uri, char **path, char *err, size_t errlen)
{
	const char *p = uri + strlen("sqlite:");

	if (strncmp(p, "//", 2) == 0) {
		p += 2;
		if (*p != '/') {
			snprintf(err, errlen, "database URI: expected sqlite:///absolute/path or sqlite:relative/path");
			return -1;
		}
	}
	if (!*p || p[strlen(p) - 1] == '/') {
		snprintf(err, errlen, "database URI: no database file name");
		return -1;
	}
	*path = strdup(p);
	if (!*path) {
		snprintf(err, errlen, "store: out of memory");
		return -1;
	}
	return 0;
}

/* mkdir -p of path's parent directory. */
static int make_parent(const char *path, char *err, size_t errlen)
{
	char *dir = strdup(path), *slash;
	struct stat sb;
	int rc = 0;

	if (!dir) {
		snprintf(err, errlen, "store: out of memory");
		return -1;
	}
	slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = '\0';
		for (char *p = dir + 1; rc == 0; p++) {
			bool end = *p == '\0';

			if (*p != '/' && !end)
				continue;
			*p = '\0';
			if (mkdir(dir, 0750) != 0 && errno != EEXIST)
				rc = -1;
			else if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
				rc = (errno = ENOTDIR, -1);
			if (rc != 0)
				snprintf(err, errlen, "cannot create database directory %s: %s", dir, strerror(errno));
			if (end)
				break;
			*p = '/';
		}
	}
	free(dir);
	return rc;
}

static int sq_open(const char *uri, const struct store_opts *o, const struct store_schema *schema, void **ctxp,
                   char *err, size_t errlen)
{
	struct sq_ctx *ctx = calloc(1, sizeof *ctx);

	if (!ctx) {
		snprintf(err, errlen, "store: out of memory");
		return -1;
	}
	if (parse_uri(uri, &ctx->path, err, errlen) != 0 || make_parent(ctx->path, err, errlen) != 0) {
		free(ctx->path);
		free(ctx);
		return -1;
	}
	ctx->schema = schema;
	ctx->busy_ms = o->busy_timeout_ms;
	ctx->sync = o->sync;
	if (pthread_mutex_init(&ctx->wlock, NULL) != 0) {
		snprintf(err, errlen, "store: mutex initialisation failed");
		free(ctx->path);
		free(ctx);
		return -1;
	}
	*ctxp = ctx;
	return 0;
}

static void sq_close(void *vctx)
{
	struct sq_ctx *ctx = vctx;

	pthread_mutex_destroy(&ctx->wlock);
	free(ctx->path);
	free(ctx);
}

static void sq_conn_close(void *vctx, void *vconn)
{
	struct sq_conn *c = vconn;

	(void)vctx;
	if (!c)
		return;
	for (unsigned i = 0; i < c->ncache; i++) {
		sqlite3_finalize(c->cache[i].st);
		free(c->cache[i].sql);
	}
	if (sqlite3_close(c->db) != SQLITE_OK)
		log_error(NULL, "sqlite: close failed", LF_STR("error", sqlite3_errmsg(c->db)));
	free(c);
}

static int sq_conn_open(void *vctx, bool writer, void **connp, char *err, size_t errlen)
{
	struct sq_ctx *ctx = vctx;
	struct sq_conn *c = calloc(1, sizeof *c);
	const int fn = SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS;
	char pragmas[256];
	int rc;

	if (!c) {
		snprintf(err, errlen, "store: out of memory");
		return -1;
	}
	c->ctx = ctx;
	c->writer = writer;
	snprintf(pragmas, sizeof pragmas,
	         "PRAGMA synchronous=%s; PRAGMA temp_store=MEMORY; PRAGMA wal_autocheckpoint=%d;"
	         " PRAGMA journal_size_limit=%d;",
	         ctx->sync == STORE_SYNC_NORMAL ? "NORMAL" : "FULL", SQ_WAL_AUTOCHECKPOINT, SQ_WAL_LIMIT_BYTES);
	rc = sqlite3_open_v2(ctx->path, &c->db,
	                     SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE,
	                     NULL);
	/* SQLite silently falls back to read-only when the file is not
	 * writable. A writer must not, or every write would fail until a
	 * restart; a reader must not either, because its first read would
	 * create the -shm file read-only and so keep the database read-only
	 * for everyone after the file is fixed. So check before anything
	 * reads the file, and report a failed open, which store.c retries
	 * with backoff. */
	if (rc == SQLITE_OK && sqlite3_db_readonly(c->db, "main") == 1)
		rc = SQLITE_READONLY;
	if (rc == SQLITE_OK)
		rc = sqlite3_busy_handler(c->db, on_busy, c);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(c->db, pragmas, NULL, NULL, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_create_function(c->db, "resil_field", 2, fn, NULL, fn_field, NULL, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_create_function(c->db, "resil_contains", 3, fn, NULL, fn_contains, NULL, NULL);
	if (rc != SQLITE_OK) {
		snprintf(err, errlen, "cannot open database %s: %s", ctx->path,
		         rc == SQLITE_READONLY ? "the file is read-only"
		         : c->db               ? sqlite3_errmsg(c->db)
		                               : sqlite3_errstr(rc));
		sqlite3_close(c->db);
		free(c);
		return -1;
	}
	sqlite3_progress_handler(c->db, SQ_PROGRESS_OPS, on_progress, c);
	*connp = c;
	return 0;
}

static int user_version(struct sq_conn *c, int *out)
{
	sqlite3_stmt *st = stmt_get(c, "PRAGMA user_version");
	int rc;

	if (!st)
		return sqlite3_extended_errcode(c->db);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*out = sqlite3_column_int(st, 0);
		rc = SQLITE_OK;
	}
	stmt_done(st);
	return rc;
}

/* Apply the pending migrations in one write transaction. */
static int migrate(struct sq_conn *c, char *err, size_t errlen)
{
	const struct store_schema *sc = c->ctx->schema;
	const int nver = (int)sc->nsqlite_migrations;
	char sql[64];
	int v = 0, rc;

	rc = sqlite3_exec(c->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		return rc;
	rc = user_version(c, &v);
	if (rc == SQLITE_OK && v > nver) {
		snprintf(err, errlen, "database %s has schema version %d, newer than this resild supports (%d)",
		         c->ctx->path, v, nver);
		rollback(c);
		return SQLITE_ERROR;
	}
	for (int i = v; rc == SQLITE_OK && i < nver; i++)
		rc = sqlite3_exec(c->db, sc->sqlite_migrations[i], NULL, NULL, NULL);
	if (rc == SQLITE_OK && v < nver) {
		snprintf(sql, sizeof sql, "PRAGMA user_version = %d", nver);
		rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
	}
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		snprintf(err, errlen, "database %s: migration to version %d failed: %s", c->ctx->path, nver,
		         sqlite3_errmsg(c->db));
		rollback(c);
	} else if (v < nver) {
		log_info(NULL, "sqlite: schema migrated", LF_INT("from", v), LF_INT("to", nver));
	}
	return rc;
}

static enum store_err sq_setup(void *vctx, void *vconn, char *err, size_t errlen)
{
	struct sq_conn *c = vconn;
	uint64_t until = jobs_now_ms() + SQ_SETUP_WAIT_MS;
	sqlite3_stmt *st = NULL;
	int rc;

	(void)vctx;
	err[0] = '\0';
	/* WAL is persistent in the file; switching needs a moment alone with
	 * it, so processes starting together may see BUSY here: wait. */
	for (;;) {
		rc = sqlite3_prepare_v2(c->db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
		if (rc == SQLITE_OK) {
			rc = sqlite3_step(st);
			if (rc == SQLITE_ROW) {
				const char *mode = (const char *)sqlite3_column_text(st, 0);

				rc = mode && strcmp(mode, "wal") == 0 ? SQLITE_OK : SQLITE_ERROR;
			}
			sqlite3_finalize(st);
		}
		if (rc == SQLITE_OK)
			rc = migrate(c, err, errlen);
		if ((rc & 0xff) != SQLITE_BUSY && (rc & 0xff) != SQLITE_LOCKED)
			break;
		if (jobs_now_ms() >= until)
			break;
		sleep_ms(10);
	}
	if (rc == SQLITE_OK)
		return STORE_OK;
	if (!err[0])
		snprintf(err, errlen, "database %s: set-up failed: %s", c->ctx->path, sqlite3_errmsg(c->db));
	switch (rc & 0xff) {
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
	case SQLITE_READONLY:
	case SQLITE_CANTOPEN:
	case SQLITE_IOERR:
	case SQLITE_FULL:
	case SQLITE_PERM:
	case SQLITE_NOMEM: return STORE_UNAVAILABLE; /* may heal: retried */
	default: return STORE_INTERNAL;
	}
}

/* ---- operations --------------------------------------------------------- */

/* Bind op's id (hex text) at idx. */
static int bind_id(sqlite3_stmt *st, int idx, const bson_oid_t *id)
{
	char hex[25];

	bson_oid_to_string(id, hex);
	return sqlite3_bind_text(st, idx, hex, 24, SQLITE_TRANSIENT);
}

/* A heap copy of the document in column col of the current row. */
static bson_t *row_doc(sqlite3_stmt *st, int col)
{
	const uint8_t *p = sqlite3_column_blob(st, col);
	int n = sqlite3_column_bytes(st, col);

	return p && n >= 5 ? bson_new_from_data(p, (size_t)n) : NULL;
}

/* INSERT or UPDATE one row: id, doc, then the mirrored columns. */
static int write_row(struct sq_conn *c, const struct store_collection *co, const bson_oid_t *id, const bson_t *doc,
                     bool update)
{
	char sql[4096]; /* STORE_COLUMNS_MAX identifiers fit */
	size_t n = 0;
	sqlite3_stmt *st;
	bson_iter_t it;
	int rc = SQLITE_OK, idx = 1;

	if (update) {
		n = (size_t)snprintf(sql, sizeof sql, "UPDATE %s SET doc = ?", co->name);
		for (unsigned i = 0; i < co->ncolumns; i++)
			n += (size_t)snprintf(sql + n, sizeof sql - n, ", %s = ?", co->columns[i].column);
		snprintf(sql + n, sizeof sql - n, " WHERE id = ?");
	} else {
		n = (size_t)snprintf(sql, sizeof sql, "INSERT INTO %s (doc", co->name);
		for (unsigned i = 0; i < co->ncolumns; i++)
			n += (size_t)snprintf(sql + n, sizeof sql - n, ", %s", co->columns[i].column);
		n += (size_t)snprintf(sql + n, sizeof sql - n, ", id) VALUES (?");
		for (unsigned i = 0; i < co->ncolumns; i++)
			n += (size_t)snprintf(sql + n, sizeof sql - n, ", ?");
		snprintf(sql + n, sizeof sql - n, ", ?)");
	}
	st = stmt_get(c, sql);
	if (!st)
		return sqlite3_extended_errcode(c->db);
	rc = sqlite3_bind_blob(st, idx++, bson_get_data(doc), (int)doc->len, SQLITE_STATIC);
	for (unsigned i = 0; rc == SQLITE_OK && i < co->ncolumns; i++) {
		struct sq_val v = {.t = SV_NULL};

		if (bson_iter_init_find(&it, doc, co->columns[i].field))
			v = val_of_iter(&it);
		rc = bind_val(st, idx++, &v);
	}
	if (rc == SQLITE_OK)
		rc = bind_id(st, idx, id);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	if (rc == SQLITE_DONE)
		rc = update && sqlite3_changes(c->db) == 0 ? SQLITE_NOTFOUND : SQLITE_OK;
	else
		rc = sqlite3_extended_errcode(c->db);
	stmt_done(st);
	return rc;
}

/* Rewrite the collection's array mirror for document id from doc's array
 * (doc NULL: the document is gone). */
static int sync_mirror(struct sq_conn *c, const struct store_collection *co, const bson_oid_t *id, const bson_t *doc)
{
	const struct store_array_mirror *m = co->mirror;
	char sql[256];
	sqlite3_stmt *del;
	bson_iter_t it, child;
	int rc;

	snprintf(sql, sizeof sql, "DELETE FROM %s WHERE %s = ?", m->table, m->id_column);
	del = stmt_get(c, sql);
	if (!del)
		return sqlite3_extended_errcode(c->db);
	rc = bind_id(del, 1, id);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(del) == SQLITE_DONE ? SQLITE_OK : sqlite3_extended_errcode(c->db);
	stmt_done(del);
	if (rc != SQLITE_OK || !doc || !bson_iter_init_find(&it, doc, m->field) || !BSON_ITER_HOLDS_ARRAY(&it) ||
	    !bson_iter_recurse(&it, &child))
		return rc;
	snprintf(sql, sizeof sql, "INSERT OR IGNORE INTO %s (%s, %s) VALUES (?, ?)", m->table, m->value_column,
	         m->id_column);
	while (rc == SQLITE_OK && bson_iter_next(&child)) {
		struct sq_val v = val_of_iter(&child);
		sqlite3_stmt *ins;

		if (v.t == SV_NULL)
			continue;
		ins = stmt_get(c, sql);
		if (!ins)
			return sqlite3_extended_errcode(c->db);
		rc = bind_val(ins, 1, &v);
		if (rc == SQLITE_OK)
			rc = bind_id(ins, 2, id);
		if (rc == SQLITE_OK)
			rc = sqlite3_step(ins) == SQLITE_DONE ? SQLITE_OK : sqlite3_extended_errcode(c->db);
		stmt_done(ins);
	}
	return rc;
}

/* Take this process's writer turn (bounded like the busy handler), then
 * the database write lock. */
static int begin_write(struct sq_conn *c)
{
	uint64_t wait = c->ctx->busy_ms, now = jobs_now_ms();
	bool by_deadline = false;
	struct timespec ts;
	int rc;

	if (c->deadline_ms && (c->deadline_ms <= now || c->deadline_ms - now < wait)) {
		wait = c->deadline_ms > now ? c->deadline_ms - now : 0;
		by_deadline = true;
	}
	ts = clock_real_ts();
	ts.tv_sec += (time_t)(wait / 1000);
	ts.tv_nsec += (long)(wait % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	rc = pthread_mutex_timedlock(&c->ctx->wlock, &ts);
	if (rc == ETIMEDOUT)
		return by_deadline ? SQLITE_INTERRUPT : SQLITE_BUSY;
	if (rc != 0)
		abort(); /* a default mutex fails only when corrupt */
	c->wlocked = true;
	rc = exec_simple(c, "BEGIN IMMEDIATE");
	if (rc != SQLITE_OK) {
		c->wlocked = false;
		pthread_mutex_unlock(&c->ctx->wlock);
	}
	return rc;
}

/* Leave the writer turn, rolling back whatever is still open. */
static void end_turn(struct sq_conn *c)
{
	if (!c->wlocked)
		return;
	rollback(c);
	c->wlocked = false;
	pthread_mutex_unlock(&c->ctx->wlock);
}

/* Commit, or roll back and map rc. dup_field is filled for unique errors. */
static enum store_err end_write(struct sq_conn *c, struct store_op *op, int rc, const char *what)
{
	enum store_err err;

	if (rc == SQLITE_OK)
		rc = exec_simple(c, "COMMIT");
	if (rc == SQLITE_OK) {
		end_turn(c);
		return STORE_OK;
	}
	if (rc == SQLITE_NOTFOUND) {
		end_turn(c);
		return STORE_NOT_FOUND;
	}
	err = map_rc(c, rc, what);
	if (err == STORE_DUPLICATE_KEY)
		dup_field_of(&c->ctx->schema->collections[op->coll], sqlite3_errmsg(c->db), op->dup_field);
	end_turn(c);
	return err;
}

static enum store_err do_insert(struct sq_conn *c, struct store_op *op)
{
	const struct store_collection *co = &c->ctx->schema->collections[op->coll];
	int rc = begin_write(c);

	if (rc != SQLITE_OK)
		return map_rc(c, rc, "begin");
	rc = write_row(c, co, &op->id, op->result, false);
	if (rc == SQLITE_OK && co->mirror)
		rc = sync_mirror(c, co, &op->id, op->result);
	return end_write(c, op, rc, "insert");
}

/* Group commit: every document of the batch in one transaction, so the
 * commit (WAL append, locks, page-cache revalidation) is paid once. */
static enum store_err do_insert_many(struct sq_conn *c, struct store_op *op)
{
	const struct store_collection *co = &c->ctx->schema->collections[op->coll];
	int rc = begin_write(c);
	enum store_err err;

	if (rc != SQLITE_OK)
		return map_rc(c, rc, "begin");
	for (size_t i = 0; rc == SQLITE_OK && i < op->ndocs; i++) {
		rc = write_row(c, co, &op->batch_ids[i], op->docs[i], false);
		if (rc == SQLITE_OK && co->mirror)
			rc = sync_mirror(c, co, &op->batch_ids[i], op->docs[i]);
	}
	err = end_write(c, op, rc, "insert");
	if (err == STORE_OK)
		op->count = (int64_t)op->ndocs;
	return err;
}

/* The document with op->id, or NULL with *rc set (SQLITE_NOTFOUND if none). */
static bson_t *load(struct sq_conn *c, const struct store_op *op, int *rc)
{
	char sql[128];
	sqlite3_stmt *st;
	bson_t *doc = NULL;

	snprintf(sql, sizeof sql, "SELECT doc FROM %s WHERE id = ?", c->ctx->schema->collections[op->coll].name);
	st = stmt_get(c, sql);
	if (!st) {
		*rc = sqlite3_extended_errcode(c->db);
		return NULL;
	}
	*rc = bind_id(st, 1, &op->id);
	if (*rc == SQLITE_OK) {
		*rc = sqlite3_step(st);
		if (*rc == SQLITE_ROW) {
			doc = row_doc(st, 0);
			*rc = doc ? SQLITE_OK : SQLITE_CORRUPT;
		} else if (*rc == SQLITE_DONE) {
			*rc = SQLITE_NOTFOUND;
		} else {
			*rc = sqlite3_extended_errcode(c->db);
		}
	}
	stmt_done(st);
	return doc;
}

static enum store_err do_find_by_id(struct sq_conn *c, struct store_op *op)
{
	int rc;

	op->result = load(c, op, &rc);
	if (rc == SQLITE_NOTFOUND)
		return STORE_NOT_FOUND;
	return map_rc(c, rc, "find");
}

static enum store_err do_update(struct sq_conn *c, struct store_op *op, const struct store_call *call)
{
	const struct store_collection *co = &c->ctx->schema->collections[op->coll];
	bson_t *old, updated;
	int rc = begin_write(c);

	if (rc != SQLITE_OK)
		return map_rc(c, rc, "begin");
	old = load(c, op, &rc);
	if (!old)
		return end_write(c, op, rc, "update");
	if (store_doc_apply_update(old, op, call->now_ms, &updated) != STORE_OK) {
		bson_destroy(old);
		bson_destroy(&updated);
		end_turn(c);
		log_error(NULL, "store: add-to-set on a field that is not an array", LF_STR("collection", co->name),
		          LF_STR("field", op->push_field));
		return STORE_INTERNAL;
	}
	bson_destroy(old);
	rc = write_row(c, co, &op->id, &updated, true);
	if (rc == SQLITE_OK && co->mirror)
		rc = sync_mirror(c, co, &op->id, &updated);
	if (rc == SQLITE_OK) {
		op->result = bson_copy(&updated);
		if (!op->result)
			rc = SQLITE_NOMEM;
	}
	bson_destroy(&updated);
	return end_write(c, op, rc, "update");
}

static enum store_err do_delete(struct sq_conn *c, struct store_op *op)
{
	const struct store_collection *co = &c->ctx->schema->collections[op->coll];
	char sql[128];
	sqlite3_stmt *st;
	int rc = begin_write(c);

	if (rc != SQLITE_OK)
		return map_rc(c, rc, "begin");
	snprintf(sql, sizeof sql, "DELETE FROM %s WHERE id = ?", co->name);
	st = stmt_get(c, sql);
	if (!st)
		return end_write(c, op, sqlite3_extended_errcode(c->db), "delete");
	rc = bind_id(st, 1, &op->id);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : sqlite3_extended_errcode(c->db);
	if (rc == SQLITE_OK && sqlite3_changes(c->db) == 0)
		rc = SQLITE_NOTFOUND;
	stmt_done(st);
	if (rc == SQLITE_OK && co->mirror)
		rc = sync_mirror(c, co, &op->id, NULL);
	return end_write(c, op, rc, "delete");
}

/* ---- queries ------------------------------------------------------------ */

/* The SQL expression for field (a column, or resil_field(doc, ?) whose
 * parameter is the field name). *is_id: the id column (hex text). */
static const char *field_expr(const struct store_collection *co, const char *field, bool *is_id)
{
	*is_id = strcmp(field, "_id") == 0;
	if (*is_id)
		return "id";
	for (unsigned i = 0; i < co->ncolumns; i++)
		if (strcmp(co->columns[i].field, field) == 0)
			return co->columns[i].column;
	return NULL;
}

struct sqlbuf {
	char s[SQ_SQL_MAX];
	size_t n;
	bool overflow;
};

static void sb_add(struct sqlbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(struct sqlbuf *b, const char *fmt, ...)
{
	va_list ap;
	int w;

	if (b->overflow)
		return;
	va_start(ap, fmt);
	w = vsnprintf(b->s + b->n, sizeof b->s - b->n, fmt, ap);
	va_end(ap);
	if (w < 0 || (size_t)w >= sizeof b->s - b->n)
		b->overflow = true;
	else
		b->n += (size_t)w;
}

static bool mirror_cond(const struct store_collection *co, const struct store_cond *k)
{
	return co->mirror && k->op == STORE_CONTAINS && strcmp(k->field, co->mirror->field) == 0;
}

static void cond_sql(struct sqlbuf *b, const struct store_collection *co, const struct store_cond *k)
{
	bool is_id;
	const char *col = field_expr(co, k->field, &is_id);
	const char *expr = col ? col : "resil_field(doc, ?)";

	if (mirror_cond(co, k)) {
		sb_add(b, "id IN (SELECT %s FROM %s WHERE %s = ?)", co->mirror->id_column, co->mirror->table,
		       co->mirror->value_column);
		return;
	}
	switch (k->op) {
	case STORE_EQ: sb_add(b, "%s = ?", expr); break;
	case STORE_NE: sb_add(b, "%s IS NOT ?", expr); break;
	case STORE_IN:
		sb_add(b, "%s IN (", expr);
		for (size_t i = 0; i < k->nin; i++)
			sb_add(b, i ? ", ?" : "?");
		sb_add(b, ")");
		break;
	case STORE_CONTAINS:
		if (col && !is_id)
			sb_add(b, "%s = ?", col); /* a mirrored column holds a scalar */
		else if (is_id)
			sb_add(b, "id = ?");
		else
			sb_add(b, "resil_contains(doc, ?, ?)");
		break;
	default: b->overflow = true; break;
	}
}

/* Bind one value compared against field (ids as hex text). */
static int bind_cmp(sqlite3_stmt *st, int idx, bool is_id, const struct store_value *v)
{
	struct sq_val sv;

	if (is_id) {
		/* Only an ObjectId can equal an _id; anything else binds NULL. */
		return v->type == STORE_V_OID ? bind_id(st, idx, &v->u.oid) : sqlite3_bind_null(st, idx);
	}
	sv = val_of_store(v);
	return bind_val(st, idx, &sv);
}

static int cond_bind(sqlite3_stmt *st, int *idx, const struct store_collection *co, const struct store_cond *k)
{
	bool is_id;
	const char *col = field_expr(co, k->field, &is_id);
	int rc = SQLITE_OK;

	if (mirror_cond(co, k))
		return bind_cmp(st, (*idx)++, false, &k->v);
	if (!col)
		rc = sqlite3_bind_text(st, (*idx)++, k->field, -1, SQLITE_STATIC);
	if (k->op == STORE_IN) {
		for (size_t i = 0; rc == SQLITE_OK && i < k->nin; i++)
			rc = bind_cmp(st, (*idx)++, is_id, &k->in[i]);
		return rc;
	}
	return rc == SQLITE_OK ? bind_cmp(st, (*idx)++, is_id, &k->v) : rc;
}

/* Prepare and bind "SELECT <what> FROM t WHERE ... [ORDER/LIMIT]". */
static sqlite3_stmt *query(struct sq_conn *c, const struct store_op *op, bool count, int64_t limit, int *rcp)
{
	const struct store_collection *co = &c->ctx->schema->collections[op->coll];
	const struct store_filter *f = &op->filter;
	struct sqlbuf b = {.n = 0};
	const char *dir = f->sort_dir < 0 ? "DESC" : "ASC";
	const char *sort_col = NULL;
	bool sort_id = true;
	sqlite3_stmt *st;
	int idx = 1, rc = SQLITE_OK;

	sb_add(&b, "SELECT %s FROM %s", count ? "count(*)" : "doc", co->name);
	for (unsigned i = 0; i < f->n; i++) {
		sb_add(&b, i ? " AND " : " WHERE ");
		cond_sql(&b, co, &f->cond[i]);
	}
	if (!count) {
		if (f->sort_field[0]) {
			sort_col = field_expr(co, f->sort_field, &sort_id);
			sb_add(&b, " ORDER BY %s %s", sort_col ? sort_col : "resil_field(doc, ?)", dir);
			if (!sort_id)
				sb_add(&b, ", id %s", dir);
		} else {
			sb_add(&b, " ORDER BY id %s", dir);
		}
		sb_add(&b, " LIMIT ? OFFSET ?");
	}
	if (b.overflow) {
		*rcp = SQLITE_TOOBIG;
		return NULL;
	}
	st = stmt_get(c, b.s);
	if (!st) {
		*rcp = sqlite3_extended_errcode(c->db);
		return NULL;
	}
	for (unsigned i = 0; rc == SQLITE_OK && i < f->n; i++)
		rc = cond_bind(st, &idx, co, &f->cond[i]);
	if (rc == SQLITE_OK && !count && f->sort_field[0] && !sort_col && !sort_id)
		rc = sqlite3_bind_text(st, idx++, f->sort_field, -1, SQLITE_STATIC);
	if (rc == SQLITE_OK && !count)
		rc = sqlite3_bind_int64(st, idx++, limit > 0 ? limit : -1);
	if (rc == SQLITE_OK && !count)
		rc = sqlite3_bind_int64(st, idx++, f->skip);
	if (rc != SQLITE_OK) {
		stmt_done(st);
		*rcp = rc;
		return NULL;
	}
	*rcp = SQLITE_OK;
	return st;
}

static enum store_err do_count(struct sq_conn *c, struct store_op *op)
{
	int rc;
	sqlite3_stmt *st = query(c, op, true, 0, &rc);

	if (!st)
		return map_rc(c, rc, "count");
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		op->count = sqlite3_column_int64(st, 0);
		rc = SQLITE_OK;
	} else {
		rc = sqlite3_extended_errcode(c->db);
	}
	stmt_done(st);
	return map_rc(c, rc, "count");
}

static enum store_err do_find(struct sq_conn *c, struct store_op *op)
{
	bool one = op->kind == STORE_OP_FIND_ONE;
	size_t cap = 0;
	int rc;
	sqlite3_stmt *st = query(c, op, false, one ? 1 : op->filter.limit, &rc);

	if (!st)
		return map_rc(c, rc, "find");
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		bson_t *d = row_doc(st, 0);

		if (!d) {
			rc = SQLITE_CORRUPT;
			break;
		}
		if (one) {
			op->result = d;
			continue;
		}
		if (op->ndocs == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			bson_t **nd = reallocarray(op->docs, ncap, sizeof *nd);

			if (!nd) {
				bson_destroy(d);
				rc = SQLITE_NOMEM;
				break;
			}
			op->docs = nd;
			cap = ncap;
		}
		op->docs[op->ndocs++] = d;
	}
	if (rc == SQLITE_DONE)
		rc = SQLITE_OK;
	else if (rc != SQLITE_CORRUPT && rc != SQLITE_NOMEM)
		rc = sqlite3_extended_errcode(c->db);
	stmt_done(st);
	if (rc == SQLITE_OK && one && !op->result)
		return STORE_NOT_FOUND;
	return map_rc(c, rc, "find");
}

/* Prove a write gets through: rewrite user_version with its own value in
 * a write transaction (one page, one commit). */
static int write_probe(struct sq_conn *c)
{
	char sql[64];
	int v = 0, rc = begin_write(c);

	if (rc != SQLITE_OK)
		return rc;
	rc = user_version(c, &v);
	if (rc == SQLITE_OK) {
		snprintf(sql, sizeof sql, "PRAGMA user_version = %d", v);
		rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
	}
	if (rc == SQLITE_OK)
		rc = exec_simple(c, "COMMIT");
	if (rc != SQLITE_OK)
		rc = sqlite3_extended_errcode(c->db) ? sqlite3_extended_errcode(c->db) : rc;
	end_turn(c);
	return rc;
}

/* A round trip, then a passive checkpoint (the periodic one that keeps the
 * WAL short; it never waits for a lock, so BUSY from it means nothing).
 * On the write lane (where store.c sends the ping while writes fail) the
 * round trip is a write, so the ping says whether writes heal. */
static enum store_err do_ping(struct sq_conn *c)
{
	int rc = c->writer ? write_probe(c) : exec_simple(c, "SELECT count(*) FROM sqlite_schema");

	if (rc == SQLITE_OK) {
		int crc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);

		if ((crc & 0xff) != SQLITE_OK && (crc & 0xff) != SQLITE_BUSY && (crc & 0xff) != SQLITE_LOCKED)
			rc = crc;
	}
	return map_rc(c, rc, "ping");
}

static enum store_err sq_exec(void *vctx, void *vconn, struct store_op *op, struct store_call *call)
{
	struct sq_conn *c = vconn;
	enum store_err err;

	(void)vctx;
	c->deadline_ms = call->deadline_ms;
	c->abandoned = &op->job.abandoned;
	switch (op->kind) {
	case STORE_OP_INSERT: err = do_insert(c, op); break;
	case STORE_OP_INSERT_MANY: err = do_insert_many(c, op); break;
	case STORE_OP_FIND_BY_ID: err = do_find_by_id(c, op); break;
	case STORE_OP_FIND_ONE:
	case STORE_OP_FIND: err = do_find(c, op); break;
	case STORE_OP_COUNT: err = do_count(c, op); break;
	case STORE_OP_UPDATE_BY_ID: err = do_update(c, op, call); break;
	case STORE_OP_DELETE_BY_ID: err = do_delete(c, op); break;
	case STORE_OP_PING: err = do_ping(c); break;
	default: err = STORE_INTERNAL; break;
	}
	end_turn(c); /* no path leaves a write open, but never hold the turn */
	call->reopen = c->broken;
	c->deadline_ms = 0;
	c->abandoned = NULL;
	return err;
}

const struct store_backend store_sqlite_backend = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .conn_open = sq_conn_open,
    .conn_close = sq_conn_close,
    .setup = sq_setup,
    .exec = sq_exec,
    .setup_first = true,
};
