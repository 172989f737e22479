/* store_bench.c - micro-benchmark of the store through the job pool:
 * inserts/s (one per op, and group commits of GROUP documents per op) and
 * reads-by-id/s with a fixed number of ops in flight, for SQLite (temp
 * directory) with db_sync full and normal, the MongoDB test double, and a real MongoDB when
 * RESIL_BENCH_MONGODB_URI is set (it writes OPS documents into that
 * database's posts collection). Prints one table; never passes or fails
 * on a timing (exit status is non-zero only if the benchmark cannot run).
 *
 *   store_bench [-n OPS] [-c IN_FLIGHT] [-t THREADS]
 *
 * The double is found like the tests find it ($MONGO_DOUBLE, tests/...).
 * Its numbers measure the store and libmongoc, not MongoDB.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <event2/event.h>
#include <ftw.h>
#include <mongoc/mongoc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../src/log.h"
#include "../src/store.h"
#include "../tests/mongo_double.h"
#include "../workers/schema.h"

#define MAX_FLIGHT 256
#define GROUP 32 /* documents per INSERT_MANY (a chat group commit) */

struct bench {
	struct event_base *base;
	struct store *st;
	struct store_op ops[MAX_FLIGHT];
	uint64_t started[MAX_FLIGHT];
	bool idle[MAX_FLIGHT];
	uint64_t *lat; /* per completed op, microseconds */
	bson_oid_t *ids;
	size_t nids, next, completed, failed;
	size_t total;
	int kind;
};

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void on_done(struct store_op *op, enum store_err err);

static bson_t *post(size_t seq)
{
	bson_t *d = bson_new();

	BSON_APPEND_UTF8(d, "title", "benchmark post");
	BSON_APPEND_UTF8(d, "content", "Lorem ipsum dolor sit amet, consectetur adipiscing elit.");
	BSON_APPEND_UTF8(d, "category", seq % 2 ? "tech" : "life");
	BSON_APPEND_INT64(d, "seq", (int64_t)seq);
	return d;
}

/* Start the next op in slot i, if any are left. */
static void start(struct bench *b, size_t i)
{
	struct store_op *op = &b->ops[i];

	store_op_clear(op);
	if (b->next >= b->total) {
		b->idle[i] = true;
		return;
	}
	store_op_init(op, b->kind, COLL_POSTS);
	if (b->kind == STORE_OP_INSERT) {
		op->doc = post(b->next);
	} else if (b->kind == STORE_OP_INSERT_MANY) {
		op->batch = calloc(GROUP, sizeof *op->batch);
		if (!op->batch) {
			fprintf(stderr, "store_bench: out of memory\n");
			exit(1);
		}
		op->nbatch = GROUP;
		for (size_t k = 0; k < GROUP; k++)
			op->batch[k] = post(b->next * GROUP + k);
	} else {
		bson_oid_copy(&b->ids[(b->next * 7919u) % b->nids], &op->id);
	}
	op->done = on_done;
	op->user = b;
	op->deadline_ms = jobs_now_ms() + 30000;
	b->next++;
	b->started[i] = now_us();
	b->idle[i] = false;
	if (store_submit(b->st, op) != 0) {
		fprintf(stderr, "store_bench: submit failed: %s\n", strerror(errno));
		exit(1);
	}
}

static void on_done(struct store_op *op, enum store_err err)
{
	struct bench *b = op->user;
	size_t i = (size_t)(op - b->ops);

	b->lat[b->completed++] = now_us() - b->started[i];
	if (err != STORE_OK)
		b->failed++;
	else if (b->kind == STORE_OP_INSERT && b->nids < b->total)
		bson_oid_copy(&op->id, &b->ids[b->nids++]);
	start(b, i);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void phase(struct bench *b, const char *backend, int kind, size_t n, size_t flight)
{
	uint64_t t0, t1;
	double secs;
	size_t per_op = kind == STORE_OP_INSERT_MANY ? GROUP : 1;

	if (kind == STORE_OP_INSERT_MANY)
		n = n / GROUP ? n / GROUP : 1;
	b->kind = kind;
	b->total = n;
	b->next = b->completed = b->failed = 0;
	t0 = now_us();
	for (size_t i = 0; i < flight; i++)
		start(b, i);
	while (b->completed < n)
		event_base_loop(b->base, EVLOOP_ONCE);
	t1 = now_us();
	secs = (double)(t1 - t0) / 1e6;
	qsort(b->lat, n, sizeof *b->lat, cmp_u64);
	printf("%-14s %-11s %8zu %8.2f %10.0f %9.2f %9.2f %7zu\n", backend,
	       kind == STORE_OP_INSERT        ? "insert"
	       : kind == STORE_OP_INSERT_MANY ? "insert x32"
	                                      : "find_by_id",
	       n * per_op, secs, (double)(n * per_op) / secs, (double)b->lat[n / 2] / 1000.0,
	       (double)b->lat[n * 99 / 100] / 1000.0, b->failed);
	fflush(stdout);
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static int run_backend(const char *name, const char *uri, size_t n, size_t flight, unsigned threads, int sync)
{
	struct bench b;
	struct store_opts o = {.pool_size = threads, .max_inflight = MAX_FLIGHT * 2, .sync = sync};
	char err[256];

	memset(&b, 0, sizeof b);
	b.base = event_base_new();
	b.lat = calloc(n, sizeof *b.lat);
	b.ids = calloc(n, sizeof *b.ids);
	if (!b.base || !b.lat || !b.ids) {
		fprintf(stderr, "store_bench: out of memory\n");
		return -1;
	}
	b.st = store_open(uri, b.base, &o, err, sizeof err);
	if (!b.st) {
		fprintf(stderr, "store_bench: %s: %s\n", name, err);
		return -1;
	}
	phase(&b, name, STORE_OP_INSERT, n, flight);
	phase(&b, name, STORE_OP_INSERT_MANY, n, flight);
	if (b.nids > 0)
		phase(&b, name, STORE_OP_FIND_BY_ID, n, flight);
	for (size_t i = 0; i < MAX_FLIGHT; i++)
		store_op_clear(&b.ops[i]);
	store_close(b.st);
	event_base_free(b.base);
	free(b.lat);
	free(b.ids);
	return 0;
}

int main(int argc, char **argv)
{
	size_t n = 20000, flight = 32;
	unsigned threads = 4;
	char dir[] = "/tmp/resil-bench.XXXXXX", uri[512];
	const char *real = getenv("RESIL_BENCH_MONGODB_URI");
	struct mdouble md;
	int opt, rc = 0;

	store_register_schema(&app_schema);
	while ((opt = getopt(argc, argv, "n:c:t:")) != -1) {
		switch (opt) {
		case 'n': n = strtoul(optarg, NULL, 10); break;
		case 'c': flight = strtoul(optarg, NULL, 10); break;
		case 't': threads = (unsigned)strtoul(optarg, NULL, 10); break;
		default: fprintf(stderr, "usage: store_bench [-n OPS] [-c IN_FLIGHT] [-t THREADS]\n"); return 2;
		}
	}
	if (n == 0 || flight == 0 || flight > MAX_FLIGHT || threads == 0 || threads > 256) {
		fprintf(stderr, "store_bench: need -n >= 1, 1 <= -c <= %d, 1 <= -t <= 256\n", MAX_FLIGHT);
		return 2;
	}
	log_init(LOG_LVL_WARN, 0, NULL, -1);
	if (!mkdtemp(dir)) {
		perror("store_bench: mkdtemp");
		return 1;
	}
	printf("store micro-benchmark: %zu documents per row, %zu ops in flight, %u read-lane threads + 1 writer\n", n,
	       flight, threads);
	printf("%-14s %-11s %8s %8s %10s %9s %9s %7s\n", "backend", "op", "ops", "seconds", "ops/s", "p50 ms", "p99 ms",
	       "errors");
	snprintf(uri, sizeof uri, "sqlite://%s/full/bench.db", dir);
	rc |= run_backend("sqlite full", uri, n, flight, threads, STORE_SYNC_FULL);
	snprintf(uri, sizeof uri, "sqlite://%s/normal/bench.db", dir);
	rc |= run_backend("sqlite normal", uri, n, flight, threads, STORE_SYNC_NORMAL);
	nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);

	if (mdouble_start(&md) == 0) {
		snprintf(uri, sizeof uri, "mongodb://127.0.0.1:%d/bench", md.port);
		rc |= run_backend("mongo double", uri, n, flight, threads, STORE_SYNC_FULL);
		mdouble_stop(&md);
	} else {
		printf("%-14s skipped: cannot start tests/mongo_double (build it or set MONGO_DOUBLE)\n",
		       "mongo double");
	}
	if (real && real[0])
		rc |= run_backend("mongodb", real, n, flight, threads, STORE_SYNC_FULL);
	else
		printf("%-14s skipped: RESIL_BENCH_MONGODB_URI not set\n", "mongodb");
	store_global_cleanup();
	return rc ? 1 : 0;
}
