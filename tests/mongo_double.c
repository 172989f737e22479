/*
 * mongo_double.c - a MongoDB wire-protocol test double for resil's store tests.
 *
 * A single-threaded poll(2) server that speaks enough of the MongoDB protocol for
 * libmongoc 1.23 and for the npm `mongodb` 6 driver under mongoose 8 (the Node
 * app resil replaces): the OP_QUERY hello handshake (answered with OP_REPLY) and
 * OP_MSG commands with document sequences (hello, ping, buildInfo, endSessions,
 * insert, find, getMore, killCursors, update, delete, findAndModify, count, a
 * small aggregate, createIndexes with unique enforcement, listIndexes,
 * dropIndexes, listCollections, create, drop, dropDatabase). Data lives in
 * memory as plain arrays of BSON documents per database and collection;
 * correctness matters more than speed here.
 *
 * What drivers expect of a server beyond the commands:
 * - hello carries a topologyVersion; an awaitable hello (maxAwaitTimeMS with
 *   the current topologyVersion) waits that long, and with the exhaustAllowed
 *   flag turns into a stream of moreToCome replies, as the drivers' streaming
 *   monitors use it. An injected state-change error (91, 189, 10107, 11600,
 *   ...) moves topologyVersion on and pushes a hello to every stream.
 * - --replset NAME answers as the primary of a one-member replica set (setName,
 *   hosts, electionId; $clusterTime and operationTime on every reply), so
 *   drivers send retryable writes: insert/update/delete/findAndModify with lsid
 *   and txnNumber run once per txnNumber and session, a retry gets the recorded
 *   reply (the "drop-reply" fault loses one to make drivers retry);
 *   endSessions forgets sessions. Transactions are refused.
 * - hello with loadBalanced: true gets a serviceId, as behind a load balancer.
 *
 * Query language: equality (an array matches when it contains the value),
 * $eq $ne $gt $gte $lt $lte (within one BSON type bracket) $in $nin $exists
 * $size $all $not $elemMatch $regex, $and $or $nor, dotted paths. Updates:
 * $set $unset $inc $min $max $push $addToSet $pull $currentDate $setOnInsert,
 * replacement, upsert, multi. Aggregation: $match $sort $skip $limit $project
 * $count $group (constant or "$field" _id; $sum, $count). Anything else fails
 * loudly with an error reply rather than matching silently.
 *
 * A control socket (Unix stream path, "@name" for the abstract namespace, or a
 * 127.0.0.1 TCP port when the argument is numeric)
 * takes one command per line so tests can inject faults at run time: delay, drop,
 * drop-next, drop-reply, error, refuse, stop/start, reset, clear, stats. Each gets one reply
 * line starting with "ok" or "err". drop-next and error count data commands
 * only (everything but hello/isMaster and endSessions), so the driver's
 * monitoring traffic never consumes an injected fault.
 *
 * Test support only: never installed, never linked into resil. It exits on
 * SIGTERM/SIGINT, when its parent dies, and after --max-lifetime seconds.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <bson/bson.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <regex.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MD_MAX_BSON (16 * 1024 * 1024)
#define MD_MAX_MSG 48000000
#define MD_MAX_WRITE_BATCH 100000
#define MD_WIRE_VERSION 17
#define MD_FIRST_BATCH 101
#define MD_SESSION_MINUTES 30
#define MD_MAX_KEYS 32
#define MD_MAX_SEQUENCES 8
#define MD_MAX_ACCUMULATORS 16
#define MD_READ_CHUNK 65536
#define MD_NS_MAX 300
#define MD_DEFAULT_LIFETIME 600
#define MD_MAX_SESSIONS 4096
#define MD_MAX_AWAIT_MS 600000

enum { OP_REPLY = 1, OP_QUERY = 2004, OP_COMPRESSED = 2012, OP_MSG = 2013 };

#define MSG_CHECKSUM_PRESENT 0x1u
#define MSG_MORE_TO_COME 0x2u
#define MSG_EXHAUST_ALLOWED 0x10000u
#define REPLY_QUERY_FAILURE 0x2u
#define REPLY_AWAIT_CAPABLE 0x8u

enum {
	E_BAD_VALUE = 2,
	E_FAILED_TO_PARSE = 9,
	E_ILLEGAL_OPERATION = 20,
	E_UNAUTHORIZED = 13,
	E_TYPE_MISMATCH = 14,
	E_NS_NOT_FOUND = 26,
	E_INDEX_NOT_FOUND = 27,
	E_PATH_NOT_VIABLE = 28,
	E_CURSOR_NOT_FOUND = 43,
	E_NS_EXISTS = 48,
	E_CMD_NOT_FOUND = 59,
	E_IMMUTABLE_FIELD = 66,
	E_INVALID_OPTIONS = 72,
	E_INVALID_NS = 73,
	E_INDEX_OPTIONS_CONFLICT = 85,
	E_INDEX_KEY_SPECS_CONFLICT = 86,
	E_TRANSACTION_TOO_OLD = 225,
	E_UNSUPPORTED_OP_QUERY = 352,
	E_BSON_TOO_LARGE = 10334,
	E_DUPLICATE_KEY = 11000,
	E_UNKNOWN_GROUP_OP = 15952,
	E_UNKNOWN_STAGE = 40324,
	E_MISSING_DB = 40414,
};

static const struct {
	int code;
	const char *name;
} code_names[] = {
    {2, "BadValue"},
    {6, "HostUnreachable"},
    {7, "HostNotFound"},
    {9, "FailedToParse"},
    {13, "Unauthorized"},
    {14, "TypeMismatch"},
    {20, "IllegalOperation"},
    {26, "NamespaceNotFound"},
    {27, "IndexNotFound"},
    {28, "PathNotViable"},
    {43, "CursorNotFound"},
    {48, "NamespaceExists"},
    {50, "MaxTimeMSExpired"},
    {59, "CommandNotFound"},
    {66, "ImmutableField"},
    {72, "InvalidOptions"},
    {73, "InvalidNamespace"},
    {85, "IndexOptionsConflict"},
    {86, "IndexKeySpecsConflict"},
    {89, "NetworkTimeout"},
    {91, "ShutdownInProgress"},
    {189, "PrimarySteppedDown"},
    {225, "TransactionTooOld"},
    {262, "ExceededTimeLimit"},
    {352, "UnsupportedOpQueryCommand"},
    {9001, "SocketException"},
    {10107, "NotWritablePrimary"},
    {10334, "BSONObjectTooLarge"},
    {11000, "DuplicateKey"},
    {11600, "InterruptedAtShutdown"},
    {11602, "InterruptedDueToReplStateChange"},
    {13435, "NotPrimaryNoSecondaryOk"},
    {13436, "NotPrimaryOrSecondary"},
};

/* An error on its way into a reply; extra holds fields such as keyPattern. */
struct mderr {
	int code;
	char msg[512];
	bool has_extra;
	bson_t extra;
};

struct doclist {
	bson_t **v;
	size_t n, cap;
};

struct index {
	char *name;
	bson_t *key;
	bool unique;
	bool sparse;
};

struct coll {
	char *db;
	char *name;
	struct doclist docs;
	struct index *idx;
	size_t nidx;
};

struct cursor {
	int64_t id;
	char *ns;
	struct doclist docs;
	size_t pos;
};

/* One queued reply; written once its due time (monotonic ms) has come. */
struct chunk {
	struct chunk *next;
	int64_t due;
	size_t len, off;
	uint8_t data[];
};

struct conn {
	int fd;
	bool dead;
	int64_t id;
	uint8_t *in;
	size_t in_len, in_cap;
	struct chunk *head, *tail;
	/* An exhaust hello stream (streaming SDAM monitoring): while stream_cmd
	 * is set, a hello reply with moreToCome goes out every stream_every ms,
	 * each answering the previous one (stream_to), until the client closes. */
	bson_t *stream_cmd;
	char stream_db[80];
	int64_t stream_due, stream_every;
	int32_t stream_to;
};

/* Retryable-write state of one logical session (lsid.id): the last
 * txnNumber executed and its reply, replayed when the driver retries. */
struct session {
	uint8_t id[64];
	uint32_t idlen;
	int64_t txn;
	int64_t used; /* monotonic ms, for eviction when the table is full */
	bson_t *reply;
};

struct ctl {
	int fd;
	bool dead;
	size_t len;
	char buf[256];
};

struct cmdctx;
struct server;
typedef void (*cmd_fn)(struct server *s, const struct cmdctx *x, bson_t *r);

struct cmd_def {
	const char *name;
	cmd_fn fn;
	bool data;      /* faults apply; hello and endSessions are exempt */
	bool retryable; /* a retryable write: txnNumber replays its reply */
};

struct cmdctx {
	const char *db;
	const char *name;
	const bson_t *cmd;
	const struct conn *conn;
};

struct server {
	int lfd, port;
	int ctl_lfd, ctl_port;
	const char *ctl_path;
	bool verbose;
	struct conn **conns;
	size_t nconns, capconns;
	struct ctl **ctls;
	size_t nctls, capctls;
	struct coll **colls;
	size_t ncolls, capcolls;
	struct cursor **curs;
	size_t ncurs, capcurs;
	int64_t next_cursor_id, next_conn_id;
	int32_t next_request_id;
	/* faults */
	int delay_ms;
	uint64_t drop_next, err_left;
	int err_code;
	bool refuse, stopped;
	uint64_t drop_reply;
	/* topology: standalone, or a one-member replica set named replset */
	const char *replset;
	bson_oid_t process_id; /* topologyVersion.processId, serviceId */
	int64_t tv_counter;    /* topologyVersion.counter: moves on an injected state change */
	uint32_t cluster_secs, cluster_inc;
	struct session *sessions;
	size_t nsessions, capsessions;
	/* counters */
	uint64_t served, data_served, accepted;
	uint64_t with_lsid, retryable, retried, streamed;
	uint64_t *cmd_counts;
};

static volatile sig_atomic_t g_term;

/* ------------------------------------------------------------------ helpers */

static int fail(struct mderr *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(struct mderr *e, int code, const char *fmt, ...)
{
	va_list ap;

	e->code = code;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof e->msg, fmt, ap);
	va_end(ap);
	return -1;
}

static void err_clear(struct mderr *e)
{
	if (e->has_extra)
		bson_destroy(&e->extra);
	e->has_extra = false;
	e->code = 0;
	e->msg[0] = '\0';
}

static const char *code_name(int code)
{
	static char located[32];

	for (size_t i = 0; i < sizeof code_names / sizeof code_names[0]; i++)
		if (code_names[i].code == code)
			return code_names[i].name;
	snprintf(located, sizeof located, "Location%d", code);
	return located;
}

static void reply_fail(bson_t *r, const struct mderr *e)
{
	bson_reinit(r);
	BSON_APPEND_DOUBLE(r, "ok", 0.0);
	BSON_APPEND_UTF8(r, "errmsg", e->msg);
	BSON_APPEND_INT32(r, "code", e->code);
	BSON_APPEND_UTF8(r, "codeName", code_name(e->code));
	if (e->has_extra)
		bson_concat(r, &e->extra);
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Grows an array to hold need elements of elem bytes (libbson aborts on OOM). */
static void *grow(void *p, size_t *cap, size_t need, size_t elem)
{
	size_t nc;

	if (need <= *cap)
		return p;
	nc = *cap ? *cap : 8;
	while (nc < need)
		nc *= 2;
	if (nc > SIZE_MAX / elem)
		abort();
	*cap = nc;
	return bson_realloc(p, nc * elem);
}

static void doclist_push(struct doclist *l, bson_t *d)
{
	l->v = grow(l->v, &l->cap, l->n + 1, sizeof *l->v);
	l->v[l->n++] = d;
}

/* Frees the array only: for lists that borrow their documents. */
static void doclist_release(struct doclist *l)
{
	bson_free(l->v);
	memset(l, 0, sizeof *l);
}

static void doclist_free(struct doclist *l)
{
	for (size_t i = 0; i < l->n; i++)
		bson_destroy(l->v[i]);
	doclist_release(l);
}

static uint32_t rd32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return BSON_UINT32_FROM_LE(v);
}

static void wr32(uint8_t *p, uint32_t v)
{
	v = BSON_UINT32_TO_LE(v);
	memcpy(p, &v, 4);
}

static bool val_doc(const bson_value_t *v, bson_t *out)
{
	if (v->value_type != BSON_TYPE_DOCUMENT && v->value_type != BSON_TYPE_ARRAY)
		return false;
	return bson_init_static(out, v->value.v_doc.data, v->value.v_doc.data_len);
}

/* Reads an optional document field; a present field of another type is an error. */
static int opt_doc(const bson_t *b, const char *key, bson_t *out, bool *present, struct mderr *err)
{
	bson_iter_t it;

	*present = false;
	if (!bson_iter_init_find(&it, b, key) || BSON_ITER_HOLDS_NULL(&it))
		return 0;
	if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !val_doc(bson_iter_value(&it), out))
		return fail(err, E_TYPE_MISMATCH, "BSON field '%s' must be an object", key);
	*present = true;
	return 0;
}

static int opt_array(const bson_t *b, const char *key, bson_t *out, bool *present, struct mderr *err)
{
	bson_iter_t it;

	*present = false;
	if (!bson_iter_init_find(&it, b, key))
		return 0;
	if (!BSON_ITER_HOLDS_ARRAY(&it) || !val_doc(bson_iter_value(&it), out))
		return fail(err, E_TYPE_MISMATCH, "BSON field '%s' must be an array", key);
	*present = true;
	return 0;
}

static int opt_i64(const bson_t *b, const char *key, int64_t def, int64_t *out, struct mderr *err)
{
	bson_iter_t it;

	*out = def;
	if (!bson_iter_init_find(&it, b, key) || BSON_ITER_HOLDS_NULL(&it))
		return 0;
	if (!BSON_ITER_HOLDS_NUMBER(&it))
		return fail(err, E_TYPE_MISMATCH, "BSON field '%s' must be a number", key);
	*out = bson_iter_as_int64(&it);
	return 0;
}

static bool opt_bool(const bson_t *b, const char *key, bool def)
{
	bson_iter_t it;

	if (!bson_iter_init_find(&it, b, key))
		return def;
	return bson_iter_as_bool(&it);
}

static bool valid_db(const char *db)
{
	size_t n = strlen(db);

	return n > 0 && n < 64 && strpbrk(db, "/\\. \"$") == NULL;
}

static bool valid_coll(const char *name)
{
	size_t n = strlen(name);

	return n > 0 && n <= 200 && name[0] != '.' && strchr(name, '$') == NULL;
}

static void make_ns(char *ns, const char *db, const char *name)
{
	snprintf(ns, MD_NS_MAX, "%s.%s", db, name);
}

/* The decimal key of array element i. */
struct ikey {
	const char *str;
	int len;
	char buf[16];
};

static void ikey_set(struct ikey *k, uint32_t i)
{
	k->len = (int)bson_uint32_to_string(i, &k->str, k->buf, sizeof k->buf);
}

/* ------------------------------------------------------- value comparison */

static int type_rank(bson_type_t t)
{
	switch (t) {
	case BSON_TYPE_MINKEY: return 1;
	case BSON_TYPE_UNDEFINED:
	case BSON_TYPE_NULL: return 2;
	case BSON_TYPE_INT32:
	case BSON_TYPE_INT64:
	case BSON_TYPE_DOUBLE:
	case BSON_TYPE_DECIMAL128: return 3;
	case BSON_TYPE_SYMBOL:
	case BSON_TYPE_UTF8: return 4;
	case BSON_TYPE_DOCUMENT: return 5;
	case BSON_TYPE_ARRAY: return 6;
	case BSON_TYPE_BINARY: return 7;
	case BSON_TYPE_OID: return 8;
	case BSON_TYPE_BOOL: return 9;
	case BSON_TYPE_DATE_TIME: return 10;
	case BSON_TYPE_TIMESTAMP: return 11;
	case BSON_TYPE_REGEX: return 12;
	case BSON_TYPE_DBPOINTER: return 13;
	case BSON_TYPE_CODE: return 14;
	case BSON_TYPE_CODEWSCOPE: return 15;
	case BSON_TYPE_MAXKEY: return 127;
	case BSON_TYPE_EOD:
	default: return 100;
	}
}

static bool val_is_num(const bson_value_t *v)
{
	return type_rank(v->value_type) == 3;
}

static bool val_is_int(const bson_value_t *v)
{
	return v->value_type == BSON_TYPE_INT32 || v->value_type == BSON_TYPE_INT64;
}

static double val_d(const bson_value_t *v)
{
	char buf[BSON_DECIMAL128_STRING];

	switch (v->value_type) {
	case BSON_TYPE_INT32: return v->value.v_int32;
	case BSON_TYPE_INT64: return (double)v->value.v_int64;
	case BSON_TYPE_DOUBLE: return v->value.v_double;
	case BSON_TYPE_DECIMAL128: bson_decimal128_to_string(&v->value.v_decimal128, buf); return strtod(buf, NULL);
	default: return 0.0;
	}
}

static int64_t val_i64(const bson_value_t *v)
{
	if (v->value_type == BSON_TYPE_INT32)
		return v->value.v_int32;
	if (v->value_type == BSON_TYPE_INT64)
		return v->value.v_int64;
	return (int64_t)val_d(v);
}

static bool val_truthy(const bson_value_t *v)
{
	switch (v->value_type) {
	case BSON_TYPE_BOOL: return v->value.v_bool;
	case BSON_TYPE_NULL:
	case BSON_TYPE_UNDEFINED: return false;
	case BSON_TYPE_INT32:
	case BSON_TYPE_INT64:
	case BSON_TYPE_DOUBLE:
	case BSON_TYPE_DECIMAL128: return val_d(v) != 0.0;
	default: return true;
	}
}

static int sign(int64_t a, int64_t b)
{
	return (a > b) - (a < b);
}

static int bytes_cmp(const void *a, size_t al, const void *b, size_t bl)
{
	size_t m = al < bl ? al : bl;
	int c = m ? memcmp(a, b, m) : 0;

	if (c)
		return c < 0 ? -1 : 1;
	return sign((int64_t)al, (int64_t)bl);
}

static int num_cmp(const bson_value_t *a, const bson_value_t *b)
{
	double x, y;

	if (val_is_int(a) && val_is_int(b))
		return sign(val_i64(a), val_i64(b));
	x = val_d(a);
	y = val_d(b);
	if (isnan(x) || isnan(y))
		return isnan(x) ? (isnan(y) ? 0 : -1) : 1;
	return (x > y) - (x < y);
}

static const char *val_str(const bson_value_t *v, uint32_t *len)
{
	if (v->value_type == BSON_TYPE_SYMBOL) {
		*len = v->value.v_symbol.len;
		return v->value.v_symbol.symbol;
	}
	*len = v->value.v_utf8.len;
	return v->value.v_utf8.str;
}

static int val_cmp(const bson_value_t *a, const bson_value_t *b);

/* Element-wise order of two documents or arrays: type, then name, then value. */
static int doc_cmp(const bson_value_t *a, const bson_value_t *b, bool is_array)
{
	bson_t da, db;
	bson_iter_t ia, ib;

	if (!val_doc(a, &da) || !val_doc(b, &db) || !bson_iter_init(&ia, &da) || !bson_iter_init(&ib, &db))
		return 0;
	for (;;) {
		bool na = bson_iter_next(&ia), nb = bson_iter_next(&ib);
		const bson_value_t *va, *vb;
		int c;

		if (!na || !nb)
			return na == nb ? 0 : (na ? 1 : -1);
		va = bson_iter_value(&ia);
		vb = bson_iter_value(&ib);
		c = sign(type_rank(va->value_type), type_rank(vb->value_type));
		if (c)
			return c;
		if (!is_array) {
			c = strcmp(bson_iter_key(&ia), bson_iter_key(&ib));
			if (c)
				return c < 0 ? -1 : 1;
		}
		c = val_cmp(va, vb);
		if (c)
			return c;
	}
}

/* Total order over BSON values following MongoDB's comparison order. */
static int val_cmp(const bson_value_t *a, const bson_value_t *b)
{
	int ra = type_rank(a->value_type), rb = type_rank(b->value_type);
	uint32_t al, bl;
	const char *as, *bs;
	int c;

	if (ra != rb)
		return ra < rb ? -1 : 1;
	switch (a->value_type) {
	case BSON_TYPE_INT32:
	case BSON_TYPE_INT64:
	case BSON_TYPE_DOUBLE:
	case BSON_TYPE_DECIMAL128: return num_cmp(a, b);
	case BSON_TYPE_UTF8:
	case BSON_TYPE_SYMBOL:
		as = val_str(a, &al);
		bs = val_str(b, &bl);
		return bytes_cmp(as, al, bs, bl);
	case BSON_TYPE_DOCUMENT:
	case BSON_TYPE_ARRAY: return doc_cmp(a, b, a->value_type == BSON_TYPE_ARRAY);
	case BSON_TYPE_BINARY:
		c = sign(a->value.v_binary.data_len, b->value.v_binary.data_len);
		if (!c)
			c = sign(a->value.v_binary.subtype, b->value.v_binary.subtype);
		if (!c)
			c = bytes_cmp(a->value.v_binary.data, a->value.v_binary.data_len, b->value.v_binary.data,
			              b->value.v_binary.data_len);
		return c;
	case BSON_TYPE_OID: c = bson_oid_compare(&a->value.v_oid, &b->value.v_oid); return (c > 0) - (c < 0);
	case BSON_TYPE_BOOL: return sign(a->value.v_bool, b->value.v_bool);
	case BSON_TYPE_DATE_TIME: return sign(a->value.v_datetime, b->value.v_datetime);
	case BSON_TYPE_TIMESTAMP:
		c = sign(a->value.v_timestamp.timestamp, b->value.v_timestamp.timestamp);
		return c ? c : sign(a->value.v_timestamp.increment, b->value.v_timestamp.increment);
	case BSON_TYPE_REGEX:
		c = strcmp(a->value.v_regex.regex, b->value.v_regex.regex);
		if (!c)
			c = strcmp(a->value.v_regex.options, b->value.v_regex.options);
		return (c > 0) - (c < 0);
	case BSON_TYPE_CODE:
		return bytes_cmp(a->value.v_code.code, a->value.v_code.code_len, b->value.v_code.code,
		                 b->value.v_code.code_len);
	case BSON_TYPE_EOD:
	case BSON_TYPE_UNDEFINED:
	case BSON_TYPE_NULL:
	case BSON_TYPE_DBPOINTER:
	case BSON_TYPE_CODEWSCOPE:
	case BSON_TYPE_MINKEY:
	case BSON_TYPE_MAXKEY:
	default: return 0;
	}
}

/* ---------------------------------------------------------- path lookups */

typedef bool (*visit_fn)(const bson_value_t *v, void *ctx); /* true = stop */

static bool key_is(const char *key, const char *comp, size_t len)
{
	return strncmp(key, comp, len) == 0 && key[len] == '\0';
}

/* Calls fn for every value a dotted path reaches, descending into arrays of
 * documents and numeric array positions; *found tells whether any was reached. */
static bool visit_container(const bson_value_t *container, const char *path, visit_fn fn, void *ctx, bool *found)
{
	bool is_array = container->value_type == BSON_TYPE_ARRAY;
	const char *dot = strchr(path, '.');
	size_t hl = dot ? (size_t)(dot - path) : strlen(path);
	bson_t d;
	bson_iter_t it;

	if (!val_doc(container, &d) || !bson_iter_init(&it, &d))
		return false;
	while (bson_iter_next(&it)) {
		const bson_value_t *v = bson_iter_value(&it);

		if (key_is(bson_iter_key(&it), path, hl)) {
			if (!dot) {
				*found = true;
				if (fn(v, ctx))
					return true;
			} else if (v->value_type == BSON_TYPE_DOCUMENT || v->value_type == BSON_TYPE_ARRAY) {
				if (visit_container(v, dot + 1, fn, ctx, found))
					return true;
			}
			if (!is_array)
				return false;
		} else if (is_array && v->value_type == BSON_TYPE_DOCUMENT) {
			if (visit_container(v, path, fn, ctx, found))
				return true;
		}
	}
	return false;
}

static bson_value_t doc_value(const bson_t *doc)
{
	bson_value_t v;

	memset(&v, 0, sizeof v);
	v.value_type = BSON_TYPE_DOCUMENT;
	v.value.v_doc.data = (uint8_t *)bson_get_data(doc);
	v.value.v_doc.data_len = doc->len;
	return v;
}

/* Where a predicate's values come from: a path in a document, or one value. */
struct vsrc {
	const bson_t *doc;
	const char *path;
	const bson_value_t *single;
};

static bool vsrc_visit(const struct vsrc *src, visit_fn fn, void *ctx, bool *found)
{
	bson_value_t top;

	*found = false;
	if (src->single) {
		*found = true;
		return fn(src->single, ctx);
	}
	top = doc_value(src->doc);
	return visit_container(&top, src->path, fn, ctx, found);
}

struct first {
	bson_value_t v;
};

static bool first_visit(const bson_value_t *v, void *ctx)
{
	((struct first *)ctx)->v = *v;
	return true;
}

/* The first value at path, or null when the path reaches nothing. */
static bson_value_t path_value(const bson_t *doc, const char *path, bool *found)
{
	struct first f;
	bson_value_t top = doc_value(doc);

	memset(&f, 0, sizeof f);
	f.v.value_type = BSON_TYPE_NULL;
	*found = false;
	visit_container(&top, path, first_visit, &f, found);
	return f.v;
}

/* --------------------------------------------------------------- matching */

enum mop { MOP_EQ, MOP_GT, MOP_GTE, MOP_LT, MOP_LTE, MOP_IN, MOP_SIZE, MOP_ALL };

static bool array_has(const bson_value_t *arr, const bson_value_t *x)
{
	bson_t d;
	bson_iter_t it;

	if (!val_doc(arr, &d) || !bson_iter_init(&it, &d))
		return false;
	while (bson_iter_next(&it))
		if (val_cmp(bson_iter_value(&it), x) == 0)
			return true;
	return false;
}

static bool value_hits(enum mop op, const bson_value_t *v, const bson_value_t *arg)
{
	bson_t d;
	bson_iter_t it;
	bool any = false;
	int c;

	switch (op) {
	case MOP_EQ: return val_cmp(v, arg) == 0;
	case MOP_GT:
	case MOP_GTE:
	case MOP_LT:
	case MOP_LTE:
		if (type_rank(v->value_type) != type_rank(arg->value_type))
			return false;
		c = val_cmp(v, arg);
		return op == MOP_GT ? c > 0 : op == MOP_GTE ? c >= 0 : op == MOP_LT ? c < 0 : c <= 0;
	case MOP_IN:
		if (!val_doc(arg, &d) || !bson_iter_init(&it, &d))
			return false;
		while (bson_iter_next(&it))
			if (val_cmp(v, bson_iter_value(&it)) == 0)
				return true;
		return false;
	case MOP_SIZE:
		if (v->value_type != BSON_TYPE_ARRAY || !val_doc(v, &d))
			return false;
		return (int64_t)bson_count_keys(&d) == val_i64(arg);
	case MOP_ALL:
		if (!val_doc(arg, &d) || !bson_iter_init(&it, &d))
			return false;
		while (bson_iter_next(&it)) {
			const bson_value_t *e = bson_iter_value(&it);

			if (val_cmp(v, e) != 0 && !(v->value_type == BSON_TYPE_ARRAY && array_has(v, e)))
				return false;
			any = true;
		}
		return any;
	default: return false;
	}
}

struct leaf {
	enum mop op;
	const bson_value_t *arg;
	bool hit;
};

static bool leaf_visit(const bson_value_t *v, void *ctx)
{
	struct leaf *l = ctx;
	bson_t d;
	bson_iter_t it;

	if (value_hits(l->op, v, l->arg)) {
		l->hit = true;
	} else if (v->value_type == BSON_TYPE_ARRAY && l->op != MOP_SIZE && l->op != MOP_ALL && val_doc(v, &d) &&
	           bson_iter_init(&it, &d)) {
		while (!l->hit && bson_iter_next(&it))
			l->hit = value_hits(l->op, bson_iter_value(&it), l->arg);
	}
	return l->hit;
}

/* A leaf predicate: true if any reached value (or array element) satisfies it;
 * a missing field behaves as null. */
static bool leaf_match(const struct vsrc *src, enum mop op, const bson_value_t *arg)
{
	struct leaf l = {op, arg, false};
	bool found;

	vsrc_visit(src, leaf_visit, &l, &found);
	if (!found && op != MOP_SIZE && op != MOP_ALL) {
		bson_value_t nv;

		memset(&nv, 0, sizeof nv);
		nv.value_type = BSON_TYPE_NULL;
		l.hit = value_hits(op, &nv, arg);
	}
	return l.hit;
}

static bool stop_visit(const bson_value_t *v, void *ctx)
{
	(void)v;
	(void)ctx;
	return true;
}

static bool is_operator_doc(const bson_value_t *v, bson_t *out)
{
	bson_iter_t it;

	return v->value_type == BSON_TYPE_DOCUMENT && val_doc(v, out) && bson_iter_init(&it, out) &&
	       bson_iter_next(&it) && bson_iter_key(&it)[0] == '$';
}

static int match_doc(const bson_t *doc, const bson_t *filter, struct mderr *err);
static int eval_ops(const struct vsrc *src, const bson_t *ops, struct mderr *err);

struct elem_match {
	bson_t cond;
	bool ops;
	struct mderr *err;
	int rc;
};

static bool elem_visit(const bson_value_t *v, void *ctx)
{
	struct elem_match *em = ctx;
	bson_t d, ed;
	bson_iter_t it;

	if (!val_doc(v, &d) || v->value_type != BSON_TYPE_ARRAY || !bson_iter_init(&it, &d))
		return false;
	while (bson_iter_next(&it)) {
		const bson_value_t *e = bson_iter_value(&it);
		int r = 0;

		if (em->ops) {
			struct vsrc one = {NULL, NULL, e};

			r = eval_ops(&one, &em->cond, em->err);
		} else if (e->value_type == BSON_TYPE_DOCUMENT && val_doc(e, &ed)) {
			r = match_doc(&ed, &em->cond, em->err);
		}
		if (r != 0) {
			em->rc = r;
			return true;
		}
	}
	return false;
}

static bool regex_visit(const bson_value_t *v, void *ctx)
{
	const regex_t *re = ctx;
	bson_t d;
	bson_iter_t it;

	if (v->value_type == BSON_TYPE_UTF8)
		return regexec(re, v->value.v_utf8.str, 0, NULL, 0) == 0;
	if (v->value_type != BSON_TYPE_ARRAY || !val_doc(v, &d) || !bson_iter_init(&it, &d))
		return false;
	while (bson_iter_next(&it))
		if (BSON_ITER_HOLDS_UTF8(&it) && regexec(re, bson_iter_utf8(&it, NULL), 0, NULL, 0) == 0)
			return true;
	return false;
}

/* Pattern match on string values, with POSIX extended regular expressions
 * standing in for PCRE (options i and m are honoured). */
static int regex_match(const struct vsrc *src, const char *pattern, const char *options, struct mderr *err)
{
	int flags = REG_EXTENDED | REG_NOSUB;
	regex_t re;
	bool found, hit;

	for (const char *o = options ? options : ""; *o; o++) {
		if (*o == 'i')
			flags |= REG_ICASE;
		else if (*o == 'm')
			flags |= REG_NEWLINE;
	}
	if (regcomp(&re, pattern, flags) != 0)
		return fail(err, 51091, "Regular expression is invalid: %s", pattern);
	hit = vsrc_visit(src, regex_visit, &re, &found);
	regfree(&re);
	return hit;
}

static const struct {
	const char *name;
	enum mop op;
	bool negate;
} leaf_ops[] = {
    {"$eq", MOP_EQ, false},     {"$ne", MOP_EQ, true},    {"$gt", MOP_GT, false}, {"$gte", MOP_GTE, false},
    {"$lt", MOP_LT, false},     {"$lte", MOP_LTE, false}, {"$in", MOP_IN, false}, {"$nin", MOP_IN, true},
    {"$size", MOP_SIZE, false}, {"$all", MOP_ALL, false},
};

/* Evaluates one query operator against the values of src. */
static int eval_op(const struct vsrc *src, const char *name, const bson_value_t *arg, struct mderr *err)
{
	bson_t sub;
	bool found;
	int r;

	for (size_t i = 0; i < sizeof leaf_ops / sizeof leaf_ops[0]; i++) {
		if (strcmp(name, leaf_ops[i].name) != 0)
			continue;
		if ((leaf_ops[i].op == MOP_IN || leaf_ops[i].op == MOP_ALL) && arg->value_type != BSON_TYPE_ARRAY)
			return fail(err, E_BAD_VALUE, "%s needs an array", name);
		if (leaf_ops[i].op == MOP_SIZE && !val_is_num(arg))
			return fail(err, E_BAD_VALUE, "$size needs a number");
		return leaf_match(src, leaf_ops[i].op, arg) != leaf_ops[i].negate;
	}
	if (strcmp(name, "$exists") == 0) {
		vsrc_visit(src, stop_visit, NULL, &found);
		return found == val_truthy(arg);
	}
	if (strcmp(name, "$not") == 0) {
		if (arg->value_type == BSON_TYPE_REGEX) {
			r = regex_match(src, arg->value.v_regex.regex, arg->value.v_regex.options, err);
			return r < 0 ? r : !r;
		}
		if (!is_operator_doc(arg, &sub))
			return fail(err, E_BAD_VALUE, "$not needs a document of operators");
		r = eval_ops(src, &sub, err);
		return r < 0 ? r : !r;
	}
	if (strcmp(name, "$elemMatch") == 0) {
		struct elem_match em;

		memset(&em, 0, sizeof em);
		if (arg->value_type != BSON_TYPE_DOCUMENT || !val_doc(arg, &em.cond))
			return fail(err, E_BAD_VALUE, "$elemMatch needs an Object");
		em.ops = is_operator_doc(arg, &sub);
		em.err = err;
		vsrc_visit(src, elem_visit, &em, &found);
		return em.rc;
	}
	return fail(err, E_BAD_VALUE, "unknown operator: %s", name);
}

/* 1 if every operator of ops holds for src, 0 if one does not, -1 on error. */
static int eval_ops(const struct vsrc *src, const bson_t *ops, struct mderr *err)
{
	bson_iter_t it, opt;

	if (!bson_iter_init(&it, ops))
		return fail(err, E_BAD_VALUE, "invalid operator document");
	while (bson_iter_next(&it)) {
		const char *name = bson_iter_key(&it);
		bson_value_t arg = *bson_iter_value(&it);
		const char *options = NULL;
		int r;

		if (strcmp(name, "$options") == 0)
			continue;
		if (strcmp(name, "$regex") == 0) {
			if (bson_iter_init_find(&opt, ops, "$options") && BSON_ITER_HOLDS_UTF8(&opt))
				options = bson_iter_utf8(&opt, NULL);
			if (arg.value_type == BSON_TYPE_REGEX)
				r = regex_match(src, arg.value.v_regex.regex,
				                options ? options : arg.value.v_regex.options, err);
			else if (arg.value_type == BSON_TYPE_UTF8)
				r = regex_match(src, arg.value.v_utf8.str, options, err);
			else
				r = fail(err, E_BAD_VALUE, "$regex has to be a string");
		} else {
			r = eval_op(src, name, &arg, err);
		}
		if (r <= 0)
			return r;
	}
	return 1;
}

static int eval_field(const struct vsrc *src, const bson_value_t *operand, struct mderr *err)
{
	bson_t ops;

	if (is_operator_doc(operand, &ops))
		return eval_ops(src, &ops, err);
	if (operand->value_type == BSON_TYPE_REGEX)
		return regex_match(src, operand->value.v_regex.regex, operand->value.v_regex.options, err);
	return leaf_match(src, MOP_EQ, operand);
}

static int match_logical(const bson_t *doc, const char *op, const bson_value_t *arg, struct mderr *err)
{
	bool is_and = strcmp(op, "$and") == 0, is_or = strcmp(op, "$or") == 0;
	bson_t arr, sub;
	bson_iter_t it;
	int any = 0;

	if (arg->value_type != BSON_TYPE_ARRAY || !val_doc(arg, &arr) || bson_empty(&arr) || !bson_iter_init(&it, &arr))
		return fail(err, E_BAD_VALUE, "%s must be a nonempty array", op);
	while (bson_iter_next(&it)) {
		int r;

		if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !val_doc(bson_iter_value(&it), &sub))
			return fail(err, E_BAD_VALUE, "%s argument's entries must be objects", op);
		r = match_doc(doc, &sub, err);
		if (r < 0)
			return r;
		if (is_and && !r)
			return 0;
		if (!is_and && r) {
			any = 1;
			break;
		}
	}
	if (is_and)
		return 1;
	return is_or ? any : !any;
}

/* 1 if doc matches the query filter, 0 if not, -1 with err on a bad filter. */
static int match_doc(const bson_t *doc, const bson_t *filter, struct mderr *err)
{
	bson_iter_t it;

	if (!filter)
		return 1;
	if (!bson_iter_init(&it, filter))
		return fail(err, E_BAD_VALUE, "invalid filter");
	while (bson_iter_next(&it)) {
		const char *key = bson_iter_key(&it);
		int r;

		if (key[0] == '$') {
			if (strcmp(key, "$comment") == 0)
				continue;
			if (strcmp(key, "$and") != 0 && strcmp(key, "$or") != 0 && strcmp(key, "$nor") != 0)
				return fail(err, E_BAD_VALUE, "unknown top level operator: %s", key);
			r = match_logical(doc, key, bson_iter_value(&it), err);
		} else {
			struct vsrc src = {doc, key, NULL};

			r = eval_field(&src, bson_iter_value(&it), err);
		}
		if (r <= 0)
			return r;
	}
	return 1;
}

/* Runs the filter once against an empty document to report syntax errors even
 * when a collection is empty. */
static int check_filter(const bson_t *filter, struct mderr *err)
{
	bson_t empty = BSON_INITIALIZER;
	int r = match_doc(&empty, filter, err);

	bson_destroy(&empty);
	return r < 0 ? -1 : 0;
}

/* ---------------------------------------------------------------- sorting */

struct sortspec {
	const char *path[MD_MAX_KEYS];
	int dir[MD_MAX_KEYS];
	size_t n;
};

struct sortpick {
	int dir;
	bool have;
	bson_value_t best;
};

struct sortrow {
	bson_t *doc;
	size_t pos;
	bson_value_t *keys;
};

static int parse_sort(const bson_t *spec, struct sortspec *ss, struct mderr *err)
{
	bson_iter_t it;

	ss->n = 0;
	if (!bson_iter_init(&it, spec))
		return fail(err, E_BAD_VALUE, "invalid sort specification");
	while (bson_iter_next(&it)) {
		const bson_value_t *v = bson_iter_value(&it);
		double d = val_is_num(v) ? val_d(v) : 0.0;

		if (d != 1.0 && d != -1.0)
			return fail(err, E_BAD_VALUE, "bad sort specification for '%s'", bson_iter_key(&it));
		if (ss->n == MD_MAX_KEYS)
			return fail(err, E_BAD_VALUE, "too many sort keys");
		ss->path[ss->n] = bson_iter_key(&it);
		ss->dir[ss->n++] = d > 0 ? 1 : -1;
	}
	return 0;
}

static void sort_pick(struct sortpick *p, const bson_value_t *v)
{
	int c;

	if (!p->have) {
		p->best = *v;
		p->have = true;
		return;
	}
	c = val_cmp(v, &p->best);
	if (p->dir > 0 ? c < 0 : c > 0)
		p->best = *v;
}

/* Arrays sort by their smallest element ascending, largest descending. */
static bool sortkey_visit(const bson_value_t *v, void *ctx)
{
	struct sortpick *p = ctx;
	bson_t d;
	bson_iter_t it;

	if (v->value_type == BSON_TYPE_ARRAY && val_doc(v, &d) && !bson_empty(&d) && bson_iter_init(&it, &d)) {
		while (bson_iter_next(&it))
			sort_pick(p, bson_iter_value(&it));
	} else {
		sort_pick(p, v);
	}
	return false;
}

static int sortrow_cmp(const void *a, const void *b, void *ctx)
{
	const struct sortspec *ss = ctx;
	const struct sortrow *ra = a, *rb = b;

	for (size_t i = 0; i < ss->n; i++) {
		int c = val_cmp(&ra->keys[i], &rb->keys[i]);

		if (c)
			return ss->dir[i] < 0 ? -c : c;
	}
	return sign((int64_t)ra->pos, (int64_t)rb->pos);
}

/* Stable sort of a document list by a sort specification. */
static int sort_docs(struct doclist *l, const bson_t *spec, struct mderr *err)
{
	struct sortspec ss;
	struct sortrow *rows;
	bson_value_t *keys;

	if (parse_sort(spec, &ss, err))
		return -1;
	if (ss.n == 0 || l->n < 2)
		return 0;
	if (l->n > SIZE_MAX / sizeof *keys / ss.n)
		abort();
	rows = bson_malloc(l->n * sizeof *rows);
	keys = bson_malloc(l->n * ss.n * sizeof *keys);
	for (size_t i = 0; i < l->n; i++) {
		bson_value_t top = doc_value(l->v[i]);

		rows[i].doc = l->v[i];
		rows[i].pos = i;
		rows[i].keys = keys + i * ss.n;
		for (size_t k = 0; k < ss.n; k++) {
			struct sortpick p;
			bool found;

			memset(&p, 0, sizeof p);
			p.dir = ss.dir[k];
			visit_container(&top, ss.path[k], sortkey_visit, &p, &found);
			if (!p.have)
				p.best.value_type = BSON_TYPE_NULL;
			rows[i].keys[k] = p.best;
		}
	}
	qsort_r(rows, l->n, sizeof *rows, sortrow_cmp, &ss);
	for (size_t i = 0; i < l->n; i++)
		l->v[i] = rows[i].doc;
	bson_free(keys);
	bson_free(rows);
	return 0;
}

/* ------------------------------------------------------------- projection */

/* Appends doc's fields selected by a top-level inclusion or exclusion
 * projection to out (initialised by the caller). */
static int project_doc(const bson_t *doc, const bson_t *proj, bson_t *out, struct mderr *err)
{
	bson_iter_t it, pit;
	bool keep_id = true;
	int mode = 0; /* 1 inclusion, -1 exclusion, 0 only _id given */

	if (!proj || bson_empty(proj)) {
		bson_concat(out, doc);
		return 0;
	}
	if (!bson_iter_init(&pit, proj))
		return fail(err, E_BAD_VALUE, "invalid projection");
	while (bson_iter_next(&pit)) {
		const char *key = bson_iter_key(&pit);
		const bson_value_t *v = bson_iter_value(&pit);
		int m;

		if (!val_is_num(v) && v->value_type != BSON_TYPE_BOOL)
			return fail(err, E_BAD_VALUE, "projection of '%s' is not supported by mongo_double", key);
		if (strchr(key, '.') || key[0] == '$')
			return fail(err, E_BAD_VALUE, "projection path '%s' is not supported by mongo_double", key);
		if (strcmp(key, "_id") == 0) {
			keep_id = val_truthy(v);
			continue;
		}
		m = val_truthy(v) ? 1 : -1;
		if (mode && mode != m)
			return fail(err, E_BAD_VALUE, "Cannot do %s on field %s in %s projection",
			            m > 0 ? "inclusion" : "exclusion", key, m > 0 ? "exclusion" : "inclusion");
		mode = m;
	}
	if (mode == 0 && keep_id)
		mode = 1; /* {_id: 1} alone returns only _id */
	if (!bson_iter_init(&it, doc))
		return fail(err, E_BAD_VALUE, "invalid document");
	while (bson_iter_next(&it)) {
		const char *key = bson_iter_key(&it);
		bool listed = bson_iter_init_find(&pit, proj, key);
		bool keep;

		if (strcmp(key, "_id") == 0)
			keep = keep_id;
		else if (mode > 0)
			keep = listed && bson_iter_as_bool(&pit);
		else
			keep = !listed;
		if (keep)
			bson_append_iter(out, NULL, 0, &it);
	}
	return 0;
}

static int check_projection(const bson_t *proj, struct mderr *err)
{
	bson_t empty = BSON_INITIALIZER, out = BSON_INITIALIZER;
	int rc = project_doc(&empty, proj, &out, err);

	bson_destroy(&out);
	bson_destroy(&empty);
	return rc;
}

/* ---------------------------------------------------------------- updates */

enum uop { UOP_SET, UOP_UNSET, UOP_INC, UOP_MIN, UOP_MAX, UOP_PUSH, UOP_ADDTOSET, UOP_PULL };

static void num_add(const bson_value_t *a, const bson_value_t *b, bson_value_t *r)
{
	int64_t s;

	memset(r, 0, sizeof *r);
	if (val_is_int(a) && val_is_int(b) && !__builtin_add_overflow(val_i64(a), val_i64(b), &s)) {
		if (a->value_type == BSON_TYPE_INT32 && b->value_type == BSON_TYPE_INT32 && s >= INT32_MIN &&
		    s <= INT32_MAX) {
			r->value_type = BSON_TYPE_INT32;
			r->value.v_int32 = (int32_t)s;
		} else {
			r->value_type = BSON_TYPE_INT64;
			r->value.v_int64 = s;
		}
		return;
	}
	r->value_type = BSON_TYPE_DOUBLE;
	r->value.v_double = val_d(a) + val_d(b);
}

static int match_pull(const bson_value_t *e, const bson_value_t *cond, struct mderr *err);

/* Appends elements of an array value to arr starting at *n. */
static void append_elements(bson_t *arr, const bson_value_t *src, uint32_t *n)
{
	bson_t d;
	bson_iter_t it;
	struct ikey k;

	if (!src || !val_doc(src, &d) || !bson_iter_init(&it, &d))
		return;
	while (bson_iter_next(&it)) {
		ikey_set(&k, (*n)++);
		bson_append_iter(arr, k.str, k.len, &it);
	}
}

static bson_value_t array_value(const bson_t *arr)
{
	bson_value_t v = doc_value(arr);

	v.value_type = BSON_TYPE_ARRAY;
	return v;
}

static int leaf_push(bson_t *out, const char *key, size_t klen, const bson_value_t *cur, enum uop op,
                     const bson_value_t *arg, struct mderr *err)
{
	bson_t items, added, arr, argdoc;
	bson_value_t added_v;
	bson_iter_t it;
	bool own_items = false;
	uint32_t na = 0, n = 0;
	struct ikey k;

	if (cur && cur->value_type != BSON_TYPE_ARRAY)
		return fail(err, E_BAD_VALUE, "The field '%.*s' must be an array", (int)klen, key);
	if (arg->value_type == BSON_TYPE_DOCUMENT && val_doc(arg, &argdoc) &&
	    bson_iter_init_find(&it, &argdoc, "$each")) {
		if (!BSON_ITER_HOLDS_ARRAY(&it) || bson_count_keys(&argdoc) != 1 ||
		    !val_doc(bson_iter_value(&it), &items))
			return fail(err, E_BAD_VALUE, "only a plain $each array is supported by mongo_double");
	} else {
		bson_init(&items);
		own_items = true;
		bson_append_value(&items, "0", 1, arg);
	}
	bson_init(&added);
	bson_iter_init(&it, &items);
	while (bson_iter_next(&it)) {
		const bson_value_t *v = bson_iter_value(&it);

		added_v = array_value(&added);
		if (op == UOP_ADDTOSET && ((cur && array_has(cur, v)) || array_has(&added_v, v)))
			continue;
		ikey_set(&k, na++);
		bson_append_value(&added, k.str, k.len, v);
	}
	added_v = array_value(&added);
	bson_append_array_begin(out, key, (int)klen, &arr);
	append_elements(&arr, cur, &n);
	append_elements(&arr, &added_v, &n);
	bson_append_array_end(out, &arr);
	bson_destroy(&added);
	if (own_items)
		bson_destroy(&items);
	return 0;
}

/* Applies one update operator to one field: cur is its value or NULL. */
static int leaf_apply(bson_t *out, const char *key, size_t klen, const bson_value_t *cur, enum uop op,
                      const bson_value_t *arg, struct mderr *err)
{
	bson_value_t sum;
	bson_t d, arr;
	bson_iter_t it;
	uint32_t n = 0;
	struct ikey k;
	int c;

	switch (op) {
	case UOP_SET: bson_append_value(out, key, (int)klen, arg); return 0;
	case UOP_UNSET: return 0;
	case UOP_INC:
		if (!val_is_num(arg))
			return fail(err, E_TYPE_MISMATCH, "Cannot increment with non-numeric argument");
		if (cur && !val_is_num(cur))
			return fail(err, E_TYPE_MISMATCH,
			            "Cannot apply $inc to a value of non-numeric type in field '%.*s'", (int)klen, key);
		if (!cur) {
			bson_append_value(out, key, (int)klen, arg);
			return 0;
		}
		num_add(cur, arg, &sum);
		bson_append_value(out, key, (int)klen, &sum);
		return 0;
	case UOP_MIN:
	case UOP_MAX:
		c = cur ? val_cmp(arg, cur) : (op == UOP_MIN ? -1 : 1);
		bson_append_value(out, key, (int)klen, (op == UOP_MIN ? c < 0 : c > 0) ? arg : cur);
		return 0;
	case UOP_PUSH:
	case UOP_ADDTOSET: return leaf_push(out, key, klen, cur, op, arg, err);
	case UOP_PULL:
		if (!cur)
			return 0;
		if (cur->value_type != BSON_TYPE_ARRAY || !val_doc(cur, &d) || !bson_iter_init(&it, &d))
			return fail(err, E_BAD_VALUE, "Cannot apply $pull to a non-array value");
		bson_append_array_begin(out, key, (int)klen, &arr);
		while (bson_iter_next(&it)) {
			int r = match_pull(bson_iter_value(&it), arg, err);

			if (r < 0) {
				bson_append_array_end(out, &arr);
				return -1;
			}
			if (!r) {
				ikey_set(&k, n++);
				bson_append_value(&arr, k.str, k.len, bson_iter_value(&it));
			}
		}
		bson_append_array_end(out, &arr);
		return 0;
	default: return fail(err, E_BAD_VALUE, "unsupported update operator");
	}
}

static int match_pull(const bson_value_t *e, const bson_value_t *cond, struct mderr *err)
{
	bson_t cd, ed;
	struct vsrc one = {NULL, NULL, e};

	if (is_operator_doc(cond, &cd))
		return eval_ops(&one, &cd, err);
	if (cond->value_type == BSON_TYPE_DOCUMENT && e->value_type == BSON_TYPE_DOCUMENT && val_doc(cond, &cd) &&
	    val_doc(e, &ed))
		return match_doc(&ed, &cd, err);
	return val_cmp(e, cond) == 0;
}

/* Copies in to out (initialised by the caller) with op applied at the dotted
 * path, creating missing intermediate documents. */
static int apply_path(const bson_t *in, bool in_array, const char *path, enum uop op, const bson_value_t *arg,
                      bson_t *out, struct mderr *err)
{
	const char *dot = strchr(path, '.');
	size_t hl = dot ? (size_t)(dot - path) : strlen(path);
	bool found = false;
	bson_iter_t it;
	int rc = 0;

	if (hl == 0 || path[0] == '$')
		return fail(err, E_BAD_VALUE, "bad update path '%s'", path);
	if (!bson_iter_init(&it, in))
		return fail(err, E_BAD_VALUE, "invalid document");
	while (bson_iter_next(&it)) {
		const char *key = bson_iter_key(&it);
		const bson_value_t *v;
		bson_t sub_in, sub_out;

		if (found || !key_is(key, path, hl)) {
			bson_append_iter(out, NULL, 0, &it);
			continue;
		}
		found = true;
		v = bson_iter_value(&it);
		if (!dot) {
			rc = leaf_apply(out, key, hl, v, op, arg, err);
		} else if (val_doc(v, &sub_in)) {
			bool arr = v->value_type == BSON_TYPE_ARRAY;

			bson_init(&sub_out);
			rc = apply_path(&sub_in, arr, dot + 1, op, arg, &sub_out, err);
			if (!rc && arr)
				bson_append_array(out, key, (int)hl, &sub_out);
			else if (!rc)
				bson_append_document(out, key, (int)hl, &sub_out);
			bson_destroy(&sub_out);
		} else if (op != UOP_UNSET && op != UOP_PULL) {
			rc =
			    fail(err, E_PATH_NOT_VIABLE, "Cannot create field '%s' in element {%s: ...}", dot + 1, key);
		} else {
			bson_append_iter(out, NULL, 0, &it);
		}
		if (rc)
			return rc;
	}
	if (found || op == UOP_UNSET || op == UOP_PULL)
		return 0;
	if (in_array)
		return fail(err, E_PATH_NOT_VIABLE, "Cannot create field '%.*s' in an array", (int)hl, path);
	if (!dot)
		return leaf_apply(out, path, hl, NULL, op, arg, err);
	{
		bson_t empty = BSON_INITIALIZER, sub_out = BSON_INITIALIZER;

		rc = apply_path(&empty, false, dot + 1, op, arg, &sub_out, err);
		if (!rc)
			bson_append_document(out, path, (int)hl, &sub_out);
		bson_destroy(&sub_out);
		bson_destroy(&empty);
	}
	return rc;
}

/* Replaces *doc by a copy with op applied at path. */
static int apply_path_swap(bson_t **doc, const char *path, enum uop op, const bson_value_t *arg, struct mderr *err)
{
	bson_t *next = bson_new();

	if (apply_path(*doc, false, path, op, arg, next, err)) {
		bson_destroy(next);
		return -1;
	}
	bson_destroy(*doc);
	*doc = next;
	return 0;
}

static bool parse_uop(const char *name, bool inserting, enum uop *op, bool *skip)
{
	static const struct {
		const char *name;
		enum uop op;
	} ops[] = {
	    {"$set", UOP_SET},         {"$unset", UOP_UNSET},     {"$inc", UOP_INC},           {"$min", UOP_MIN},
	    {"$max", UOP_MAX},         {"$push", UOP_PUSH},       {"$addToSet", UOP_ADDTOSET}, {"$pull", UOP_PULL},
	    {"$currentDate", UOP_SET}, {"$setOnInsert", UOP_SET},
	};

	*skip = strcmp(name, "$setOnInsert") == 0 && !inserting;
	for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
		if (strcmp(name, ops[i].name) == 0) {
			*op = ops[i].op;
			return true;
		}
	}
	return false;
}

static bool same_id(const bson_t *a, const bson_t *b)
{
	bson_iter_t ia, ib;
	bool ha = bson_iter_init_find(&ia, a, "_id"), hb = bson_iter_init_find(&ib, b, "_id");

	if (!ha || !hb)
		return !ha;
	return val_cmp(bson_iter_value(&ia), bson_iter_value(&ib)) == 0 && bson_iter_type(&ia) == bson_iter_type(&ib);
}

static int apply_replacement(const bson_t *old, const bson_t *upd, bson_t **out, struct mderr *err)
{
	bson_t *cur = bson_new();
	bson_iter_t it;

	if (bson_iter_init_find(&it, old, "_id"))
		bson_append_iter(cur, "_id", 3, &it);
	bson_iter_init(&it, upd);
	while (bson_iter_next(&it)) {
		if (strcmp(bson_iter_key(&it), "_id") != 0)
			bson_append_iter(cur, NULL, 0, &it);
		else if (!bson_has_field(old, "_id"))
			bson_append_iter(cur, "_id", 3, &it);
	}
	if (!same_id(old, upd) && bson_has_field(upd, "_id")) {
		bson_destroy(cur);
		return fail(err, E_IMMUTABLE_FIELD,
		            "After applying the update, the (immutable) field '_id' was found to have been altered");
	}
	*out = cur;
	return 0;
}

/* Builds the new version of old under an update document (operators or a
 * replacement); *out is a new document owned by the caller. */
static int apply_update(const bson_t *old, const bson_t *upd, bool inserting, bson_t **out, struct mderr *err)
{
	bson_iter_t it, fit;
	bool ops = false, plain = false;
	bson_t *cur;

	if (!bson_iter_init(&it, upd))
		return fail(err, E_BAD_VALUE, "invalid update document");
	while (bson_iter_next(&it)) {
		if (bson_iter_key(&it)[0] == '$')
			ops = true;
		else
			plain = true;
	}
	if (ops && plain)
		return fail(err, E_FAILED_TO_PARSE, "update document mixes operators and plain fields");
	if (!ops)
		return apply_replacement(old, upd, out, err);
	cur = bson_copy(old);
	bson_iter_init(&it, upd);
	while (bson_iter_next(&it)) {
		const char *name = bson_iter_key(&it);
		bson_t fields;
		enum uop op;
		bool skip;

		if (!parse_uop(name, inserting, &op, &skip)) {
			bson_destroy(cur);
			return fail(err, E_FAILED_TO_PARSE, "Unknown modifier: %s", name);
		}
		if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !val_doc(bson_iter_value(&it), &fields)) {
			bson_destroy(cur);
			return fail(err, E_FAILED_TO_PARSE, "Modifiers operate on fields; %s needs an object", name);
		}
		if (skip)
			continue;
		bson_iter_init(&fit, &fields);
		while (bson_iter_next(&fit)) {
			bson_value_t arg = *bson_iter_value(&fit);

			if (strcmp(name, "$currentDate") == 0) {
				if (arg.value_type != BSON_TYPE_BOOL) {
					bson_destroy(cur);
					return fail(err, E_BAD_VALUE,
					            "only $currentDate: true is supported by mongo_double");
				}
				arg.value_type = BSON_TYPE_DATE_TIME;
				arg.value.v_datetime = (int64_t)time(NULL) * 1000;
			}
			if (apply_path_swap(&cur, bson_iter_key(&fit), op, &arg, err)) {
				bson_destroy(cur);
				return -1;
			}
		}
	}
	if (!same_id(old, cur) || (bson_has_field(old, "_id") && !bson_has_field(cur, "_id"))) {
		bson_destroy(cur);
		return fail(err, E_IMMUTABLE_FIELD,
		            "Performing an update on the path '_id' would modify the immutable field '_id'");
	}
	*out = cur;
	return 0;
}

/* A copy of in with _id as its first field, generating an ObjectId if absent. */
static bson_t *with_id_first(const bson_t *in)
{
	bson_t *out = bson_new();
	bson_iter_t it;
	bson_oid_t oid;

	if (bson_iter_init_find(&it, in, "_id")) {
		bson_append_iter(out, "_id", 3, &it);
	} else {
		bson_oid_init(&oid, NULL);
		BSON_APPEND_OID(out, "_id", &oid);
	}
	bson_iter_init(&it, in);
	while (bson_iter_next(&it))
		if (strcmp(bson_iter_key(&it), "_id") != 0)
			bson_append_iter(out, NULL, 0, &it);
	return out;
}

static int check_new_doc(const bson_t *doc, struct mderr *err)
{
	bson_iter_t it;

	if (doc->len > MD_MAX_BSON)
		return fail(err, E_BSON_TOO_LARGE, "BSONObj size: %u is invalid", doc->len);
	if (bson_iter_init_find(&it, doc, "_id") && BSON_ITER_HOLDS_ARRAY(&it))
		return fail(err, E_BAD_VALUE, "can't use an array for _id");
	return 0;
}

/* Seeds an upserted document with the equality fields of the query. */
static int upsert_base(const bson_t *q, bson_t **base, struct mderr *err)
{
	bson_iter_t it, eq;
	bson_t sub, ops;

	if (!bson_iter_init(&it, q))
		return fail(err, E_BAD_VALUE, "invalid filter");
	while (bson_iter_next(&it)) {
		const char *key = bson_iter_key(&it);
		const bson_value_t *v = bson_iter_value(&it);

		if (strcmp(key, "$and") == 0 && val_doc(v, &sub)) {
			bson_iter_t ai;

			bson_iter_init(&ai, &sub);
			while (bson_iter_next(&ai)) {
				bson_t clause;

				if (val_doc(bson_iter_value(&ai), &clause) && upsert_base(&clause, base, err))
					return -1;
			}
		} else if (key[0] == '$') {
			continue;
		} else if (is_operator_doc(v, &ops)) {
			if (bson_iter_init_find(&eq, &ops, "$eq") &&
			    apply_path_swap(base, key, UOP_SET, bson_iter_value(&eq), err))
				return -1;
		} else if (apply_path_swap(base, key, UOP_SET, v, err)) {
			return -1;
		}
	}
	return 0;
}

/* ---------------------------------------------------------------- storage */

static struct coll *coll_find(struct server *s, const char *db, const char *name)
{
	for (size_t i = 0; i < s->ncolls; i++)
		if (strcmp(s->colls[i]->db, db) == 0 && strcmp(s->colls[i]->name, name) == 0)
			return s->colls[i];
	return NULL;
}

static struct coll *coll_get(struct server *s, const char *db, const char *name, bool *created)
{
	struct coll *c = coll_find(s, db, name);

	if (created)
		*created = c == NULL;
	if (c)
		return c;
	c = bson_malloc0(sizeof *c);
	c->db = bson_strdup(db);
	c->name = bson_strdup(name);
	c->idx = bson_malloc0(sizeof *c->idx);
	c->idx[0].name = bson_strdup("_id_");
	c->idx[0].key = BCON_NEW("_id", BCON_INT32(1));
	c->idx[0].unique = true;
	c->nidx = 1;
	s->colls = grow(s->colls, &s->capcolls, s->ncolls + 1, sizeof *s->colls);
	s->colls[s->ncolls++] = c;
	return c;
}

static void index_free(struct index *ix)
{
	bson_free(ix->name);
	bson_destroy(ix->key);
}

static void coll_free(struct coll *c)
{
	for (size_t i = 0; i < c->nidx; i++)
		index_free(&c->idx[i]);
	bson_free(c->idx);
	doclist_free(&c->docs);
	bson_free(c->db);
	bson_free(c->name);
	bson_free(c);
}

static void coll_remove(struct server *s, struct coll *c)
{
	for (size_t i = 0; i < s->ncolls; i++) {
		if (s->colls[i] == c) {
			s->colls[i] = s->colls[--s->ncolls];
			coll_free(c);
			return;
		}
	}
}

/* Index key values of doc, null for missing fields; *any says if one existed. */
static size_t index_values(const struct index *ix, const bson_t *doc, bson_value_t *vals, bool *any)
{
	bson_iter_t it;
	size_t n = 0;

	*any = false;
	if (!bson_iter_init(&it, ix->key))
		return 0;
	while (n < MD_MAX_KEYS && bson_iter_next(&it)) {
		bool found;

		vals[n++] = path_value(doc, bson_iter_key(&it), &found);
		*any = *any || found;
	}
	return n;
}

static int dup_error(const struct coll *c, const struct index *ix, const bson_value_t *vals, size_t n,
                     struct mderr *err)
{
	bson_t kv = BSON_INITIALIZER;
	bson_iter_t it;
	size_t i = 0;
	char *json;

	bson_iter_init(&it, ix->key);
	while (i < n && bson_iter_next(&it))
		bson_append_value(&kv, bson_iter_key(&it), -1, &vals[i++]);
	json = bson_as_relaxed_extended_json(&kv, NULL);
	fail(err, E_DUPLICATE_KEY, "E11000 duplicate key error collection: %s.%s index: %s dup key: %s", c->db, c->name,
	     ix->name, json ? json : "{}");
	bson_free(json);
	if (!err->has_extra) {
		bson_init(&err->extra);
		err->has_extra = true;
	}
	BSON_APPEND_DOCUMENT(&err->extra, "keyPattern", ix->key);
	BSON_APPEND_DOCUMENT(&err->extra, "keyValue", &kv);
	bson_destroy(&kv);
	return -1;
}

/* Fails with 11000 if doc collides under one unique index with any document
 * other than the one at position skip. */
static int check_index(const struct coll *c, const struct index *ix, const bson_t *doc, size_t skip, struct mderr *err)
{
	bson_value_t mine[MD_MAX_KEYS], theirs[MD_MAX_KEYS];
	bool any;
	size_t n;

	if (!ix->unique)
		return 0;
	n = index_values(ix, doc, mine, &any);
	if (ix->sparse && !any)
		return 0;
	for (size_t j = 0; j < c->docs.n; j++) {
		bool equal = true;

		if (j == skip)
			continue;
		index_values(ix, c->docs.v[j], theirs, &any);
		if (ix->sparse && !any)
			continue;
		for (size_t k = 0; k < n && equal; k++)
			equal = val_cmp(&mine[k], &theirs[k]) == 0;
		if (equal)
			return dup_error(c, ix, mine, n, err);
	}
	return 0;
}

static int check_unique(const struct coll *c, const bson_t *doc, size_t skip, struct mderr *err)
{
	for (size_t i = 0; i < c->nidx; i++)
		if (check_index(c, &c->idx[i], doc, skip, err))
			return -1;
	return 0;
}

/* Borrowed pointers to the documents of c matching filter, in natural order. */
static int collect(const struct coll *c, const bson_t *filter, struct doclist *out, struct mderr *err)
{
	if (check_filter(filter, err))
		return -1;
	for (size_t i = 0; c && i < c->docs.n; i++) {
		int m = match_doc(c->docs.v[i], filter, err);

		if (m < 0)
			return -1;
		if (m)
			doclist_push(out, c->docs.v[i]);
	}
	return 0;
}

static size_t coll_pos(const struct coll *c, const bson_t *doc)
{
	for (size_t i = 0; i < c->docs.n; i++)
		if (c->docs.v[i] == doc)
			return i;
	return SIZE_MAX;
}

static void coll_erase(struct coll *c, size_t pos)
{
	bson_destroy(c->docs.v[pos]);
	memmove(&c->docs.v[pos], &c->docs.v[pos + 1], (c->docs.n - pos - 1) * sizeof *c->docs.v);
	c->docs.n--;
}

/* ---------------------------------------------------------------- cursors */

static void cursor_free(struct cursor *cur)
{
	doclist_free(&cur->docs);
	bson_free(cur->ns);
	bson_free(cur);
}

static size_t cursor_find(const struct server *s, int64_t id)
{
	for (size_t i = 0; i < s->ncurs; i++)
		if (s->curs[i]->id == id)
			return i;
	return SIZE_MAX;
}

static void cursor_remove(struct server *s, size_t i)
{
	cursor_free(s->curs[i]);
	s->curs[i] = s->curs[--s->ncurs];
}

static void fill_batch(bson_t *arr, struct doclist *l, size_t *pos, int64_t batch)
{
	size_t bytes = 0;
	uint32_t n = 0;
	struct ikey k;

	while (*pos < l->n && (batch < 0 || (int64_t)n < batch)) {
		const bson_t *d = l->v[*pos];

		if (n > 0 && bytes + d->len > MD_MAX_BSON)
			break;
		bytes += d->len;
		ikey_set(&k, n++);
		bson_append_document(arr, k.str, k.len, d);
		(*pos)++;
	}
}

/* Answers a cursor-returning command; takes ownership of the documents in l. */
static void reply_cursor(struct server *s, const char *ns, struct doclist *l, int64_t batch, bool single, bson_t *r)
{
	bson_t cur, arr;
	size_t pos = 0;
	int64_t id = 0;

	BSON_APPEND_DOCUMENT_BEGIN(r, "cursor", &cur);
	BSON_APPEND_ARRAY_BEGIN(&cur, "firstBatch", &arr);
	fill_batch(&arr, l, &pos, batch < 0 ? MD_FIRST_BATCH : batch);
	bson_append_array_end(&cur, &arr);
	if (pos < l->n && !single) {
		struct cursor *c = bson_malloc0(sizeof *c);

		id = c->id = s->next_cursor_id++;
		c->ns = bson_strdup(ns);
		c->docs = *l;
		c->pos = pos;
		memset(l, 0, sizeof *l);
		s->curs = grow(s->curs, &s->capcurs, s->ncurs + 1, sizeof *s->curs);
		s->curs[s->ncurs++] = c;
	} else {
		doclist_free(l);
	}
	BSON_APPEND_INT64(&cur, "id", id);
	BSON_APPEND_UTF8(&cur, "ns", ns);
	bson_append_document_end(r, &cur);
	BSON_APPEND_DOUBLE(r, "ok", 1.0);
}

/* --------------------------------------------------------------- commands */

static int coll_arg(const struct cmdctx *x, const char **name, struct mderr *err)
{
	bson_iter_t it;

	if (!bson_iter_init(&it, x->cmd) || !bson_iter_next(&it) || !BSON_ITER_HOLDS_UTF8(&it))
		return fail(err, E_INVALID_NS, "collection name has invalid type");
	*name = bson_iter_utf8(&it, NULL);
	if (!valid_coll(*name))
		return fail(err, E_INVALID_NS, "Invalid collection name: '%s'", *name);
	return 0;
}

/* The awaitable form of hello (streaming monitoring): maxAwaitTimeMS with the
 * topologyVersion the client last saw. 1 and *wait_ms when the reply must wait
 * (the client's topologyVersion is ours: nothing changed), 0 when it is due at
 * once, -1 with err when the two fields are malformed. */
static int hello_await(const struct server *s, const bson_t *cmd, int64_t *wait_ms, struct mderr *err)
{
	bson_t tv;
	bool has_tv, has_wait = bson_has_field(cmd, "maxAwaitTimeMS");
	bson_iter_t it;

	*wait_ms = 0;
	if (opt_doc(cmd, "topologyVersion", &tv, &has_tv, err) || opt_i64(cmd, "maxAwaitTimeMS", 0, wait_ms, err))
		return -1;
	if (has_wait != has_tv)
		return fail(err, E_FAILED_TO_PARSE, "topologyVersion and maxAwaitTimeMS go together");
	if (!has_wait)
		return 0;
	if (*wait_ms < 0 || *wait_ms > MD_MAX_AWAIT_MS)
		return fail(err, E_BAD_VALUE, "maxAwaitTimeMS must be 0-%d", MD_MAX_AWAIT_MS);
	if (!bson_iter_init_find(&it, &tv, "processId") || !BSON_ITER_HOLDS_OID(&it) ||
	    !bson_oid_equal(bson_iter_oid(&it), &s->process_id))
		return 0; /* another process (a restart): the client is out of date */
	if (!bson_iter_init_find(&it, &tv, "counter") || !BSON_ITER_HOLDS_NUMBER(&it))
		return fail(err, E_TYPE_MISMATCH, "topologyVersion.counter must be a number");
	return bson_iter_as_int64(&it) == s->tv_counter ? 1 : 0;
}

static void cmd_hello(struct server *s, const struct cmdctx *x, bson_t *r)
{
	struct mderr err = {0};
	int64_t wait_ms;
	bson_t doc, arr;
	char host[32];

	if (hello_await(s, x->cmd, &wait_ms, &err) < 0) {
		reply_fail(r, &err);
		return;
	}
	snprintf(host, sizeof host, "127.0.0.1:%d", s->port);
	if (opt_bool(x->cmd, "helloOk", false))
		BSON_APPEND_BOOL(r, "helloOk", true);
	BSON_APPEND_BOOL(r, strcmp(x->name, "hello") == 0 ? "isWritablePrimary" : "ismaster", true);
	BSON_APPEND_DOCUMENT_BEGIN(r, "topologyVersion", &doc);
	BSON_APPEND_OID(&doc, "processId", &s->process_id);
	BSON_APPEND_INT64(&doc, "counter", s->tv_counter);
	bson_append_document_end(r, &doc);
	if (s->replset) {
		bson_oid_t election;

		bson_oid_init_from_string(&election, "7fffffff0000000000000001");
		BSON_APPEND_UTF8(r, "setName", s->replset);
		BSON_APPEND_INT32(r, "setVersion", 1);
		BSON_APPEND_ARRAY_BEGIN(r, "hosts", &arr);
		BSON_APPEND_UTF8(&arr, "0", host);
		bson_append_array_end(r, &arr);
		BSON_APPEND_UTF8(r, "primary", host);
		BSON_APPEND_UTF8(r, "me", host);
		BSON_APPEND_BOOL(r, "secondary", false);
		BSON_APPEND_OID(r, "electionId", &election);
	}
	/* Behind a load balancer (a mongos) every connection names its service. */
	if (opt_bool(x->cmd, "loadBalanced", false)) {
		BSON_APPEND_UTF8(r, "msg", "isdbgrid");
		BSON_APPEND_OID(r, "serviceId", &s->process_id);
	}
	BSON_APPEND_INT32(r, "maxBsonObjectSize", MD_MAX_BSON);
	BSON_APPEND_INT32(r, "maxMessageSizeBytes", MD_MAX_MSG);
	BSON_APPEND_INT32(r, "maxWriteBatchSize", MD_MAX_WRITE_BATCH);
	BSON_APPEND_DATE_TIME(r, "localTime", (int64_t)time(NULL) * 1000);
	BSON_APPEND_INT32(r, "logicalSessionTimeoutMinutes", MD_SESSION_MINUTES);
	BSON_APPEND_INT32(r, "connectionId", (int32_t)x->conn->id);
	BSON_APPEND_INT32(r, "minWireVersion", 0);
	BSON_APPEND_INT32(r, "maxWireVersion", MD_WIRE_VERSION);
	BSON_APPEND_BOOL(r, "readOnly", false);
	BSON_APPEND_DOUBLE(r, "ok", 1.0);
}

static void cmd_ok(struct server *s, const struct cmdctx *x, bson_t *r)
{
	(void)s;
	(void)x;
	BSON_APPEND_DOUBLE(r, "ok", 1.0);
}

/* ---------------------------------------------------------------- sessions */

/* The binary id of a session document {id: UUID}; false when it has none. */
static bool session_id(const bson_value_t *v, const uint8_t **id, uint32_t *len)
{
	bson_t doc;
	bson_iter_t it;

	if (!val_doc(v, &doc) || !bson_iter_init_find(&it, &doc, "id") || !BSON_ITER_HOLDS_BINARY(&it))
		return false;
	bson_iter_binary(&it, NULL, len, id);
	return *len > 0 && *len <= sizeof((struct session *)0)->id;
}

static struct session *session_find(struct server *s, const uint8_t *id, uint32_t len)
{
	for (size_t i = 0; i < s->nsessions; i++)
		if (s->sessions[i].idlen == len && memcmp(s->sessions[i].id, id, len) == 0)
			return &s->sessions[i];
	return NULL;
}

static void session_remove(struct server *s, struct session *ss)
{
	if (ss->reply)
		bson_destroy(ss->reply);
	*ss = s->sessions[--s->nsessions];
}

/* The session's slot, made when new (the least recently used one is evicted
 * when the table is full, as a server expires idle sessions). */
static struct session *session_get(struct server *s, const uint8_t *id, uint32_t len)
{
	struct session *ss = session_find(s, id, len);

	if (!ss) {
		if (s->nsessions == MD_MAX_SESSIONS) {
			size_t old = 0;

			for (size_t i = 1; i < s->nsessions; i++)
				if (s->sessions[i].used < s->sessions[old].used)
					old = i;
			session_remove(s, &s->sessions[old]);
		}
		s->sessions = grow(s->sessions, &s->capsessions, s->nsessions + 1, sizeof *s->sessions);
		ss = &s->sessions[s->nsessions++];
		memset(ss, 0, sizeof *ss);
		memcpy(ss->id, id, len);
		ss->idlen = len;
		ss->txn = -1;
	}
	ss->used = now_ms();
	return ss;
}

static void sessions_clear(struct server *s)
{
	while (s->nsessions > 0)
		session_remove(s, &s->sessions[s->nsessions - 1]);
}

static void cmd_end_sessions(struct server *s, const struct cmdctx *x, bson_t *r)
{
	struct mderr err = {0};
	bson_iter_t it, ids;

	if (!bson_iter_init_find(&it, x->cmd, "endSessions") || !BSON_ITER_HOLDS_ARRAY(&it) ||
	    !bson_iter_recurse(&it, &ids)) {
		fail(&err, E_TYPE_MISMATCH, "BSON field 'endSessions' must be an array of session ids");
		reply_fail(r, &err);
		return;
	}
	while (bson_iter_next(&ids)) {
		const uint8_t *id;
		uint32_t len;
		struct session *ss;

		if (!session_id(bson_iter_value(&ids), &id, &len)) {
			fail(&err, E_TYPE_MISMATCH, "endSessions: each element must be {id: UUID}");
			reply_fail(r, &err);
			return;
		}
		if ((ss = session_find(s, id, len)) != NULL)
			session_remove(s, ss);
	}
	BSON_APPEND_DOUBLE(r, "ok", 1.0);
}

/* Runs a retryable write (txnNumber with lsid): a txnNumber seen before on
 * this session replays the reply it got instead of writing twice, an older
 * one is refused, a newer one runs and is remembered when it succeeds. */
static void run_retryable(struct server *s, const struct cmdctx *x, const struct cmd_def *def, const bson_value_t *lsid,
                          bson_t *r)
{
	struct mderr err = {0};
	const uint8_t *id;
	uint32_t len;
	struct session *ss;
	bson_iter_t it;
	int64_t txn = -1;

	if (!bson_iter_init_find(&it, x->cmd, "txnNumber") ||
	    (!BSON_ITER_HOLDS_INT64(&it) && !BSON_ITER_HOLDS_INT32(&it)) || (txn = bson_iter_as_int64(&it)) < 0)
		fail(&err, E_TYPE_MISMATCH, "BSON field 'txnNumber' must be a non-negative integer");
	else if (!lsid)
		fail(&err, E_INVALID_OPTIONS, "Transaction number requires a session ID to also be specified");
	else if (bson_has_field(x->cmd, "startTransaction") || bson_has_field(x->cmd, "autocommit"))
		fail(&err, E_ILLEGAL_OPERATION, "mongo_double: multi-document transactions are not supported");
	if (err.code) {
		reply_fail(r, &err);
		return;
	}
	session_id(lsid, &id, &len); /* checked by run_command */
	ss = session_get(s, id, len);
	s->retryable++;
	if (txn < ss->txn) {
		fail(&err, E_TRANSACTION_TOO_OLD,
		     "Cannot start transaction %lld on session because a newer "
		     "transaction %lld has already started",
		     (long long)txn, (long long)ss->txn);
		reply_fail(r, &err);
		return;
	}
	if (txn == ss->txn && ss->reply) {
		s->retried++;
		bson_reinit(r);
		bson_concat(r, ss->reply);
		return;
	}
	def->fn(s, x, r);
	ss->txn = txn;
	if (ss->reply)
		bson_destroy(ss->reply);
	ss->reply = NULL;
	if (bson_iter_init_find(&it, r, "ok") && bson_iter_as_double(&it) == 1.0)
		ss->reply = bson_copy(r);
}

static void cmd_build_info(struct server *s, const struct cmdctx *x, bson_t *r)
{
	bson_t arr;

	(void)s;
	(void)x;
	BSON_APPEND_UTF8(r, "version", "6.0.0");
	BSON_APPEND_UTF8(r, "gitVersion", "mongo_double");
	BSON_APPEND_ARRAY_BEGIN(r, "versionArray", &arr);
	BSON_APPEND_INT32(&arr, "0", 6);
	BSON_APPEND_INT32(&arr, "1", 0);
	BSON_APPEND_INT32(&arr, "2", 0);
	BSON_APPEND_INT32(&arr, "3", 0);
	bson_append_array_end(r, &arr);
	BSON_APPEND_INT32(r, "bits", 64);
	BSON_APPEND_INT32(r, "maxBsonObjectSize", MD_MAX_BSON);
	BSON_APPEND_DOUBLE(r, "ok", 1.0);
}

static void add_write_error(bson_t *arr, uint32_t *n, uint32_t pos, const struct mderr *e)
{
	bson_t we;
	struct ikey k;

	ikey_set(&k, (*n)++);
	bson_append_document_begin(arr, k.str, k.len, &we);
	BSON_APPEND_INT32(&we, "index", (int32_t)pos);
	BSON_APPEND_INT32(&we, "code", e->code);
	if (e->has_extra)
		bson_concat(&we, &e->extra);
	BSON_APPEND_UTF8(&we, "errmsg", e->msg);
	bson_append_document_end(arr, &we);
}

/* Common frame of insert/update/delete: the statements array and ordering. */
struct write_batch {
	const char *name;
	bson_t stmts;
	bool ordered;
	bson_t errors;
	uint32_t nerrors;
};

static int write_begin(const struct cmdctx *x, const char *field, struct write_batch *wb, struct mderr *err)
{
	bool present;

	bson_init(&wb->errors);
	wb->nerrors = 0;
	if (coll_arg(x, &wb->name, err) || opt_array(x->cmd, field, &wb->stmts, &present, err))
		return -1;
	if (!present)
		return fail(err, E_FAILED_TO_PARSE, "BSON field '%s.%s' is missing but a required field", x->name,
		            field);
	if (bson_count_keys(&wb->stmts) > MD_MAX_WRITE_BATCH)
		return fail(err, E_INVALID_OPTIONS, "Write batch sizes must be between 1 and %d", MD_MAX_WRITE_BATCH);
	wb->ordered = opt_bool(x->cmd, "ordered", true);
	return 0;
}

static void write_end(struct write_batch *wb, bson_t *r)
{
	if (wb->nerrors)
		BSON_APPEND_ARRAY(r, "writeErrors", &wb->errors);
	BSON_APPEND_DOUBLE(r, "ok", 1.0);
	bson_destroy(&wb->errors);
}

static void write_fail(struct write_batch *wb, bson_t *r, struct mderr *err)
{
	bson_destroy(&wb->errors);
	reply_fail(r, err);
	err_clear(err);
}

static int insert_one(struct server *s, const char *db, const char *name, const bson_value_t *v, struct mderr *err)
{
	struct coll *c = coll_get(s, db, name, NULL);
	bson_t src, *doc;

	if (v->value_type != BSON_TYPE_DOCUMENT || !val_doc(v, &src))
		return fail(err, E_TYPE_MISMATCH, "insert documents must be objects");
	doc = with_id_first(&src);
	if (check_new_doc(doc, err) || check_unique(c, doc, SIZE_MAX, err)) {
		bson_destroy(doc);
		return -1;
	}
	doclist_push(&c->docs, doc);
	return 0;
}

static void cmd_insert(struct server *s, const struct cmdctx *x, bson_t *r)
{
	struct mderr err = {0};
	struct write_batch wb;
	bson_iter_t it;
	uint32_t pos = 0;
	int32_t n = 0;

	if (write_begin(x, "documents", &wb, &err)) {
		write_fail(&wb, r, &err);
		return;
	}
	coll_get(s, x->db, wb.name, NULL);
	bson_iter_init(&it, &wb.stmts);
	for (; bson_iter_next(&it); pos++) {
		if (!insert_one(s, x->db, wb.name, bson_iter_value(&it), &err)) {
			n++;
			continue;
		}
		add_write_error(&wb.errors, &wb.nerrors, pos, &err);
		err_clear(&err);
		if (wb.ordered)
			break;
	}
	BSON_APPEND_INT32(r, "n", n);
	write_end(&wb, r);
}

struct upd_result {
	int64_t matched, modified;
	const bson_t *upserted;
};

static int upsert_doc(struct server *s, const char *db, const char *name, const bson_t *q, const bson_t *u,
                      const bson_t **stored, struct mderr *err)
{
	bson_t *base = bson_new(), *nd = NULL, *doc;
	struct coll *c;

	if (upsert_base(q, &base, err) || apply_update(base, u, true, &nd, err)) {
		bson_destroy(base);
		return -1;
	}
	bson_destroy(base);
	doc = with_id_first(nd);
	bson_destroy(nd);
	c = coll_get(s, db, name, NULL);
	if (check_new_doc(doc, err) || check_unique(c, doc, SIZE_MAX, err)) {
		bson_destroy(doc);
		return -1;
	}
	doclist_push(&c->docs, doc);
	*stored = doc;
	return 0;
}

/* Applies u to the first (or every, with multi) document matching q. */
static int run_update(struct server *s, const char *db, const char *name, const bson_t *q, const bson_t *u, bool upsert,
                      bool multi, struct upd_result *res, struct mderr *err)
{
	struct coll *c = coll_find(s, db, name);

	memset(res, 0, sizeof *res);
	if (check_filter(q, err))
		return -1;
	for (size_t i = 0; c && i < c->docs.n; i++) {
		bson_t *nd;
		int m = match_doc(c->docs.v[i], q, err);

		if (m < 0)
			return -1;
		if (!m)
			continue;
		if (apply_update(c->docs.v[i], u, false, &nd, err))
			return -1;
		if (check_new_doc(nd, err) || check_unique(c, nd, i, err)) {
			bson_destroy(nd);
			return -1;
		}
		res->matched++;
		if (bson_equal(nd, c->docs.v[i])) {
			bson_destroy(nd);
		} else {
			bson_destroy(c->docs.v[i]);
			c->docs.v[i] = nd;
			res->modified++;
		}
		if (!multi)
			break;
	}
	if (res->matched > 0 || !upsert)
		return 0;
	return upsert_doc(s, db, name, q, u, &res->upserted, err);
}

static int update_stmt(struct server *s, const struct cmdctx *x, const char *name, const bson_value_t *v,
                       struct upd_result *res, struct mderr *err)
{
	bson_t stmt, q, u;
	bson_iter_t it;
	bool present, multi;

	if (v->value_type != BSON_TYPE_DOCUMENT || !val_doc(v, &stmt))
		return fail(err, E_TYPE_MISMATCH, "update statements must be objects");
	if (opt_doc(&stmt, "q", &q, &present, err))
		return -1;
	if (!present)
		return fail(err, E_FAILED_TO_PARSE, "BSON field 'q' is missing but a required field");
	if (!bson_iter_init_find(&it, &stmt, "u"))
		return fail(err, E_FAILED_TO_PARSE, "BSON field 'u' is missing but a required field");
	if (BSON_ITER_HOLDS_ARRAY(&it))
		return fail(err, E_BAD_VALUE, "pipeline-style updates are not supported by mongo_double");
	if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !val_doc(bson_iter_value(&it), &u))
		return fail(err, E_FAILED_TO_PARSE, "BSON field 'u' must be an object");
	multi = opt_bool(&stmt, "multi", false);
	if (multi && !bson_empty(&u)) {
		bson_iter_init(&it, &u);
		bson_iter_next(&it);
		if (bson_iter_key(&it)[0] != '$')
			return fail(err, E_FAILED_TO_PARSE,
			            "multi update is not supported for replacement-style update");
	}
	return run_update(s, x->db, name, &q, &u, opt_bool(&stmt, "upsert", false), multi, res, err);
}

static void cmd_update(struct server *s, const struct cmdctx *x, bson_t *r)
{
	struct mderr err = {0};
	struct write_batch wb;
	bson_t upserted = BSON_INITIALIZER;
	uint32_t nup = 0, pos = 0;
	int64_t n = 0, modified = 0;
	bson_iter_t it;

	if (write_begin(x, "updates", &wb, &err)) {
		bson_destroy(&upserted);
		write_fail(&wb, r, &err);
		return;
	}
	bson_iter_init(&it, &wb.stmts);
	for (; bson_iter_next(&it); pos++) {
		struct upd_result res;

		if (update_stmt(s, x, wb.name, bson_iter_value(&it), &res, &err)) {
			add_write_error(&wb.errors, &wb.nerrors, pos, &err);
			err_clear(&err);
			if (wb.ordered)
				break;
			continue;
		}
		n += res.matched;
		modified += res.modified;
		if (res.upserted) {
			bson_t up;
			bson_iter_t idit;
			struct ikey k;

			n++;
			ikey_set(&k, nup++);
			bson_append_document_begin(&upserted, k.str, k.len, &up);
			BSON_APPEND_INT32(&up, "index", (int32_t)pos);
			if (bson_iter_init_find(&idit, res.upserted, "_id"))
				bson_append_iter(&up, "_id", 3, &idit);
			bson_append_document_end(&upserted, &up);
		}
	}
	BSON_APPEND_INT32(r, "n", (int32_t)n);
	BSON_APPEND_INT32(r, "nModified", (int32_t)modified);
	if (nup)
		BSON_APPEND_ARRAY(r, "upserted", &upserted);
	bson_destroy(&upserted);
	write_end(&wb, r);
}

/* Removes the first (limit 1) or every (limit 0) document matching q. */
static int run_delete(struct coll *c, const bson_t *q, bool just_one, int64_t *n, struct mderr *err)
{
	size_t w = 0, i;
	int rc = 0;

	*n = 0;
	if (check_filter(q, err))
		return -1;
	for (i = 0; c && i < c->docs.n; i++) {
		int m = 0;

		if (!rc && !(just_one && *n)) {
			m = match_doc(c->docs.v[i], q, err);
			if (m < 0) {
				rc = -1;
				m = 0;
			}
		}
		if (m) {
			bson_destroy(c->docs.v[i]);
			(*n)++;
		} else {
			c->docs.v[w++] = c->docs.v[i];
		}
	}
	if (c)
		c->docs.n = w;
	return rc;
}

static void cmd_delete(struct server *s, const struct cmdctx *x, bson_t *r)
{
	struct mderr err = {0};
	struct write_batch wb;
	bson_iter_t it;
	uint32_t pos = 0;
	int64_t total = 0;

	if (write_begin(x, "deletes", &wb, &err)) {
		write_fail(&wb, r, &err);
		return;
	}
	bson_iter_init(&it, &wb.stmts);
	for (; bson_iter_next(&it); pos++) {
		bson_t stmt, q;
		bool present = false;
		int64_t limit = 0, n = 0;
		int rc;

		if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !val_doc(bson_iter_value(&it), &stmt))
			rc = fail(&err, E_TYPE_MISMATCH, "delete statements must be objects");
		else if (opt_doc(&stmt, "q", &q, &present, &err) || opt_i64(&stmt, "limit", 0, &limit, &err))
			rc = -1;
		else if (!present)
			rc = fail(&err, E_FAILED_TO_PARSE, "BSON field 'q' is missing but a required field");
		else if (limit != 0 && limit != 1)
			rc = fail(&err, E_FAILED_TO_PARSE, "The limit field in delete objects must be 0 or 1");
		else
			rc = run_delete(coll_find(s, x->db, wb.name), &q, limit == 1, &n, &err);
		total += n;
		if (rc) {
			add_write_error(&wb.errors, &wb.nerrors, pos, &err);
			err_clear(&err);
			if (wb.ordered)
				break;
		}
	}
	BSON_APPEND_INT32(r, "n", (int32_t)total);
	write_end(&wb, r);
}

static int append_projected(bson_t *r, const char *key, const bson_t *doc, const bson_t *proj, struct mderr *err)
{
	bson_t out = BSON_INITIALIZER;

	if (project_doc(doc, proj, &out, err)) {
		bson_destroy(&out);
		return -1;
	}
	BSON_APPEND_DOCUMENT(r, key, &out);
	bson_destroy(&out);
	return 0;
}

static void cmd_find_and_modify(struct server *s, const struct cmdctx *x, bson_t *r)
{
	struct mderr err = {0};
	struct doclist hits = {0};
	bson_t q, sort, proj, u, leo;
	bool has_q, has_sort, has_proj, has_u, do_remove, want_new, upsert;
	const char *name;
	struct coll *c;
	bson_t *old = NULL, *nd = NULL;
	const bson_t *stored = NULL;
	size_t pos = SIZE_MAX;

	if (coll_arg(x, &name, &err) || opt_doc(x->cmd, "query", &q, &has_q, &err) ||
	    opt_doc(x->cmd, "sort", &sort, &has_sort, &err) || opt_doc(x->cmd, "fields", &proj, &has_proj, &err) ||
	    opt_doc(x->cmd, "update", &u, &has_u, &err))
		goto fail;
	do_remove = opt_bool(x->cmd, "remove", false);
	want_new = opt_bool(x->cmd, "new", false);
	upsert = opt_bool(x->cmd, "upsert", false);
	if (do_remove == has_u || (do_remove && upsert)) {
		fail(&err, E_FAILED_TO_PARSE, "Either an update or remove=true must be specified, not both");
		goto fail;
	}
	c = coll_find(s, x->db, name);
	if (collect(c, has_q ? &q : NULL, &hits, &err) || (has_sort && sort_docs(&hits, &sort, &err)))
		goto fail;
	if (hits.n > 0) {
		pos = coll_pos(c, hits.v[0]);
		old = c->docs.v[pos];
	}
	bson_init(&leo);
	if (old && do_remove) {
		if (append_projected(r, "value", old, has_proj ? &proj : NULL, &err)) {
			bson_destroy(&leo);
			goto fail;
		}
		coll_erase(c, pos);
		BSON_APPEND_INT32(&leo, "n", 1);
	} else if (old) {
		if (apply_update(old, &u, false, &nd, &err) || check_new_doc(nd, &err) ||
		    check_unique(c, nd, pos, &err) ||
		    append_projected(r, "value", want_new ? nd : old, has_proj ? &proj : NULL, &err)) {
			if (nd)
				bson_destroy(nd);
			bson_destroy(&leo);
			goto fail;
		}
		bson_destroy(old);
		c->docs.v[pos] = nd;
		BSON_APPEND_INT32(&leo, "n", 1);
		BSON_APPEND_BOOL(&leo, "updatedExisting", true);
	} else if (upsert) {
		bson_iter_t idit;

		if (!has_q)
			bson_init(&q);
		if (upsert_doc(s, x->db, name, &q, &u, &stored, &err)) {
			bson_destroy(&leo);
			goto fail;
		}
		BSON_APPEND_INT32(&leo, "n", 1);
		BSON_APPEND_BOOL(&leo, "updatedExisting", false);
		if (bson_iter_init_find(&idit, stored, "_id"))
			bson_append_iter(&leo, "upserted", -1, &idit);
		if (!want_new)
			BSON_APPEND_NULL(r, "value");
		else if (append_projected(r, "value", stored, has_proj ? &proj : NULL, &err)) {
			bson_destroy(&leo);
			goto fail;
		}
	} else {
		BSON_APPEND_INT32(&leo, "n", 0);
		if (!do_remove)
			BSON_APPEND_BOOL(&leo, "updatedExisting", false);
		BSON_APPEND_NULL(r, "value");
	}
	BSON_APPEND_DOCUMENT(r, "lastErrorObject", &leo);
	BSON_APPEND_DOUBLE(r, "ok", 1.0);
	bson_destroy(&leo);
	doclist_release(&hits);
	return;
fail:
	doclist_release(&hits);
	reply_fail(r, &err);
	err_clear(&err);
}

static void cmd_find(struct server *s, const struct cmdctx *x, bson_t *r)
{
	struct mderr err = {0};
	struct doclist hits = {0}, out = {0};
	bson_t filter, sort, proj;
	bool has_filter, has_sort, has_proj, single;
	int64_t skip, limit, batch;
	const char *name;
	char ns[MD_NS_MAX];

	if (coll_arg(x, &name, &err) || opt_doc(x->cmd, "filter", &filter, &has_filter, &err) ||
	    opt_doc(x->cmd, "sort", &sort, &has_sort, &err) || opt_doc(x->cmd, "projection", &proj, &has_proj, &err) ||
	    opt_i64(x->cmd, "skip", 0, &skip, &err) || opt_i64(x->cmd, "limit", 0, &limit, &err) ||
	    opt_i64(x->cmd, "batchSize", -1, &batch, &err))
		goto fail;
	if (skip < 0 || batch < -1 || (batch == -1 && bson_has_field(x->cmd, "batchSize"))) {
		fail(&err, E_BAD_VALUE, "skip and batchSize must be non-negative");
		goto fail;
	}
	single = opt_bool(x->cmd, "singleBatch", false);
	if (limit < 0) {
		limit = -limit;
		single = true;
	}
	if ((has_proj && check_projection(&proj, &err)) ||
	    collect(coll_find(s, x->db, name), has_filter ? &filter : NULL, &hits, &err) ||
	    (has_sort && sort_docs(&hits, &sort, &err)))
		goto fail;
	for (size_t i = (size_t)skip; i < hits.n && (limit == 0 || (int64_t)out.n < limit); i++) {
		bson_t *d = bson_new();

		if (project_doc(hits.v[i], has_proj ? &proj : NULL, d, &err)) {
			bson_destroy(d);
			goto fail;
		}
		doclist_push(&out, d);
	}
	make_ns(ns, x->db, name);
	reply_cursor(s, ns, &out, batch, single, r);
	doclist_release(&hits);
	return;
fail:
	doclist_release(&hits);
	doclist_free(&out);
	reply_fail(r, &err);
	err_clear(&err);
}

static void cmd_get_more(struct server *s, const struct cmdctx *x, bson_t *r)
{
	struct mderr err = {0};
	bson_iter_t it;
	bson_t cur, arr;
	int64_t id, batch;
	const char *coll;
	char ns[MD_NS_MAX];
	size_t i;
	struct cursor *c;

	if (!bson_iter_init(&it, x->cmd) || !bson_iter_next(&it) || !BSON_ITER_HOLDS_INT64(&it)) {
		fail(&err, E_TYPE_MISMATCH, "getMore cursor id must be a long");
		goto fail;
	}
	id = bson_iter_int64(&it);
	if (!bson_iter_init_find(&it, x->cmd, "collection") || !BSON_ITER_HOLDS_UTF8(&it)) {
		fail(&err, E_FAILED_TO_PARSE, "BSON field 'getMore.collection' is missing");
		goto fail;
	}
	coll = bson_iter_utf8(&it, NULL);
	if (opt_i64(x->cmd, "batchSize", -1, &batch, &err))
		goto fail;
	i = cursor_find(s, id);
	if (i == SIZE_MAX) {
		fail(&err, E_CURSOR_NOT_FOUND, "cursor id %lld not found", (long long)id);
		goto fail;
	}
	c = s->curs[i];
	make_ns(ns, x->db, coll);
	if (strcmp(ns, c->ns) != 0) {
		fail(&err, E_UNAUTHORIZED, "Requested getMore on namespace '%s', but cursor belongs to '%s'", ns,
		     c->ns);
		goto fail;
	}
	BSON_APPEND_DOCUMENT_BEGIN(r, "cursor", &cur);
	BSON_APPEND_ARRAY_BEGIN(&cur, "nextBatch", &arr);
	fill_batch(&arr, &c->docs, &c->pos, batch <= 0 ? -1 : batch);
	bson_append_array_end(&cur, &arr);
	BSON_APPEND_INT64(&cur, "id", c->pos < c->docs.n ? id : 0);
	BSON_APPEND_UTF8(&cur, "ns", ns);
	bson_append_document_end(r, &cur);
	BSON_APPEND_DOUBLE(r, "ok", 1.0);
	if (c->pos >= c->docs.n)
		cursor_remove(s, i);
	return;
fail:
	reply_fail(r, &err);
	err_clear(&err);
}

static void cmd_kill_cursors(struct server *s, const struct cmdctx *x, bson_t *r)
{
	struct mderr err = {0};
	bson_t ids, killed = BSON_INITIALIZER, missing = BSON_INITIALIZER, empty = BSON_INITIALIZER;
	bson_iter_t it;
	bool present;
	uint32_t nk = 0, nm = 0;
	const char *name;

	if (coll_arg(x, &name, &err) || opt_array(x->cmd, "cursors", &ids, &present, &err)) {
		reply_fail(r, &err);
		err_clear(&err);
	} else {
		bson_iter_init(&it, &ids);
		while (present && bson_iter_next(&it)) {
			int64_t id = bson_iter_as_int64(&it);
			size_t i = cursor_find(s, id);
			struct ikey k;

			if (i != SIZE_MAX) {
				cursor_remove(s, i);
				ikey_set(&k, nk++);
				bson_append_int64(&killed, k.str, k.len, id);
			} else {
				ikey_set(&k, nm++);
				bson_append_int64(&missing, k.str, k.len, id);
			}
		}
		BSON_APPEND_ARRAY(r, "cursorsKilled", &killed);
		BSON_APPEND_ARRAY(r, "cursorsNotFound", &missing);
		BSON_APPEND_ARRAY(r, "cursorsAlive", &empty);
		BSON_APPEND_ARRAY(r, "cursorsUnknown", &empty);
		BSON_APPEND_DOUBLE(r, "ok", 1.0);
	}
	bson_destroy(&killed);
	bson_destroy(&missing);
	bson_destroy(&empty);
}

static void cmd_count(struct server *s, const struct cmdctx *x, bson_t *r)
{
	struct mderr err = {0};
	struct doclist hits = {0};
	bson_t q;
	bool has_q;
	int64_t skip, limit, n;
	const char *name;

	if (coll_arg(x, &name, &err) || opt_doc(x->cmd, "query", &q, &has_q, &err) ||
	    opt_i64(x->cmd, "skip", 0, &skip, &err) || opt_i64(x->cmd, "limit", 0, &limit, &err) ||
	    collect(coll_find(s, x->db, name), has_q ? &q : NULL, &hits, &err)) {
		doclist_release(&hits);
		reply_fail(r, &err);
		err_clear(&err);
		return;
	}
	n = (int64_t)hits.n - (skip > 0 ? skip : 0);
	if (n < 0)
		n = 0;
	if (limit < 0)
		limit = -limit;
	if (limit > 0 && n > limit)
		n = limit;
	doclist_release(&hits);
	BSON_APPEND_INT32(r, "n", (int32_t)n);
	BSON_APPEND_DOUBLE(r, "ok", 1.0);
}

/* ---------------------------------------------------- aggregation (small) */

struct sum {
	int64_t i;
	double d;
	bool as_double;
};

struct group {
	bson_value_t key;
	struct sum acc[MD_MAX_ACCUMULATORS];
};

struct group_spec {
	bson_value_t id; /* constant, or a "$path" string */
	const char *field[MD_MAX_ACCUMULATORS];
	bson_value_t arg[MD_MAX_ACCUMULATORS]; /* number, or a "$path" string */
	size_t n;
};

static bool is_field_path(const bson_value_t *v)
{
	return v->value_type == BSON_TYPE_UTF8 && v->value.v_utf8.len > 1 && v->value.v_utf8.str[0] == '$';
}

static int parse_group(const bson_value_t *stage, struct group_spec *gs, struct mderr *err)
{
	bson_t spec, acc;
	bson_iter_t it, ait;
	bool has_id = false;

	memset(gs, 0, sizeof *gs);
	if (!val_doc(stage, &spec) || stage->value_type != BSON_TYPE_DOCUMENT || !bson_iter_init(&it, &spec))
		return fail(err, E_FAILED_TO_PARSE, "a group's fields must be specified in an object");
	while (bson_iter_next(&it)) {
		const char *key = bson_iter_key(&it);
		const bson_value_t *v = bson_iter_value(&it);

		if (strcmp(key, "_id") == 0) {
			bson_t sub;

			if (is_operator_doc(v, &sub))
				return fail(err, E_BAD_VALUE,
				            "$group _id expressions are not supported by mongo_double");
			gs->id = *v;
			has_id = true;
			continue;
		}
		if (gs->n == MD_MAX_ACCUMULATORS)
			return fail(err, E_BAD_VALUE, "too many $group accumulators");
		if (!val_doc(v, &acc) || v->value_type != BSON_TYPE_DOCUMENT || bson_count_keys(&acc) != 1 ||
		    !bson_iter_init(&ait, &acc) || !bson_iter_next(&ait))
			return fail(err, 40234, "The field '%s' must be an accumulator object", key);
		gs->field[gs->n] = key;
		if (strcmp(bson_iter_key(&ait), "$count") == 0) {
			gs->arg[gs->n].value_type = BSON_TYPE_INT32;
			gs->arg[gs->n].value.v_int32 = 1;
		} else if (strcmp(bson_iter_key(&ait), "$sum") == 0 &&
		           (val_is_num(bson_iter_value(&ait)) || is_field_path(bson_iter_value(&ait)))) {
			gs->arg[gs->n] = *bson_iter_value(&ait);
		} else {
			return fail(err, E_UNKNOWN_GROUP_OP, "unknown group operator '%s'", bson_iter_key(&ait));
		}
		gs->n++;
	}
	if (!has_id)
		return fail(err, 15955, "a group specification must include an _id");
	return 0;
}

static bson_value_t eval_arg(const bson_t *doc, const bson_value_t *arg)
{
	bool found;

	if (is_field_path(arg))
		return path_value(doc, arg->value.v_utf8.str + 1, &found);
	return *arg;
}

static void sum_add(struct sum *acc, const bson_value_t *v)
{
	if (!val_is_num(v))
		return;
	acc->d += val_d(v);
	if (!val_is_int(v) || __builtin_add_overflow(acc->i, val_i64(v), &acc->i))
		acc->as_double = true;
}

static void append_sum(bson_t *out, const char *key, const struct sum *acc)
{
	if (acc->as_double)
		BSON_APPEND_DOUBLE(out, key, acc->d);
	else if (acc->i >= INT32_MIN && acc->i <= INT32_MAX)
		BSON_APPEND_INT32(out, key, (int32_t)acc->i);
	else
		BSON_APPEND_INT64(out, key, acc->i);
}

static int stage_group(struct doclist *l, const bson_value_t *stage, struct mderr *err)
{
	struct group_spec gs;
	struct group *groups = NULL;
	size_t ng = 0, capg = 0;
	struct doclist out = {0};

	if (parse_group(stage, &gs, err))
		return -1;
	for (size_t i = 0; i < l->n; i++) {
		bson_value_t key = eval_arg(l->v[i], &gs.id);
		size_t g;

		for (g = 0; g < ng; g++)
			if (val_cmp(&groups[g].key, &key) == 0)
				break;
		if (g == ng) {
			groups = grow(groups, &capg, ng + 1, sizeof *groups);
			memset(&groups[ng], 0, sizeof groups[ng]);
			bson_value_copy(&key, &groups[ng].key);
			ng++;
		}
		for (size_t a = 0; a < gs.n; a++) {
			bson_value_t v = eval_arg(l->v[i], &gs.arg[a]);

			sum_add(&groups[g].acc[a], &v);
		}
	}
	for (size_t g = 0; g < ng; g++) {
		bson_t *d = bson_new();

		bson_append_value(d, "_id", 3, &groups[g].key);
		for (size_t a = 0; a < gs.n; a++)
			append_sum(d, gs.field[a], &groups[g].acc[a]);
		doclist_push(&out, d);
		bson_value_destroy(&groups[g].key);
	}
	bson_free(groups);
	doclist_free(l);
	*l = out;
	return 0;
}

/* Keeps the documents at positions [from, to) of l. */
static void keep_range(struct doclist *l, size_t from, size_t to)
{
	size_t w = 0;

	for (size_t i = 0; i < l->n; i++) {
		if (i >= from && i < to)
			l->v[w++] = l->v[i];
		else
			bson_destroy(l->v[i]);
	}
	l->n = w;
}

static int run_stage(struct doclist *l, const char *op, const bson_value_t *arg, struct mderr *err)
{
	bson_t sub;

	if (strcmp(op, "$match") == 0) {
		size_t w = 0;

		if (!val_doc(arg, &sub) || arg->value_type != BSON_TYPE_DOCUMENT)
			return fail(err, 15959, "the match filter must be an expression in an object");
		if (check_filter(&sub, err))
			return -1;
		int rc = 0;

		for (size_t i = 0; i < l->n; i++) {
			int m = rc ? 0 : match_doc(l->v[i], &sub, err);

			if (m > 0)
				l->v[w++] = l->v[i];
			else
				bson_destroy(l->v[i]);
			if (m < 0)
				rc = -1;
		}
		l->n = w;
		return rc;
	}
	if (strcmp(op, "$sort") == 0) {
		if (!val_doc(arg, &sub) || arg->value_type != BSON_TYPE_DOCUMENT)
			return fail(err, 15973, "the $sort key specification must be an object");
		return sort_docs(l, &sub, err);
	}
	if (strcmp(op, "$skip") == 0 || strcmp(op, "$limit") == 0) {
		int64_t n = val_is_num(arg) ? val_i64(arg) : -1;
		bool skip = op[1] == 's';

		if (n < 0 || (!skip && n == 0))
			return fail(err, 15956, "invalid argument to %s stage", op);
		if (skip)
			keep_range(l, (size_t)n, SIZE_MAX);
		else
			keep_range(l, 0, (size_t)n);
		return 0;
	}
	if (strcmp(op, "$project") == 0) {
		if (!val_doc(arg, &sub) || arg->value_type != BSON_TYPE_DOCUMENT)
			return fail(err, 15969, "$project specification must be an object");
		for (size_t i = 0; i < l->n; i++) {
			bson_t *d = bson_new();

			if (project_doc(l->v[i], &sub, d, err)) {
				bson_destroy(d);
				return -1;
			}
			bson_destroy(l->v[i]);
			l->v[i] = d;
		}
		return 0;
	}
	if (strcmp(op, "$count") == 0) {
		size_t n = l->n;

		if (arg->value_type != BSON_TYPE_UTF8 || arg->value.v_utf8.len == 0 || arg->value.v_utf8.str[0] == '$')
			return fail(err, 40156, "the count field must be a non-empty string");
		doclist_free(l);
		if (n > 0) {
			bson_t *d = bson_new();

			if (n <= INT32_MAX)
				BSON_APPEND_INT32(d, arg->value.v_utf8.str, (int32_t)n);
			else
				BSON_APPEND_INT64(d, arg->value.v_utf8.str, (int64_t)n);
			doclist_push(l, d);
		}
		return 0;
	}
	if (strcmp(op, "$group") == 0)
		return stage_group(l, arg, err);
	return fail(err, E_UNKNOWN_STAGE, "Unrecognized pipeline stage name: '%s'", op);
}

static void cmd_aggregate(struct server *s, const struct cmdctx *x, bson_t *r)
{
	struct mderr err = {0};
	struct doclist l = {0};
	bson_t pipeline, cursor, stage;
	bool has_pipeline, has_cursor;
	bson_iter_t it, sit;
	int64_t batch = -1;
	const char *name;
	struct coll *c;
	char ns[MD_NS_MAX];

	if (coll_arg(x, &name, &err) || opt_array(x->cmd, "pipeline", &pipeline, &has_pipeline, &err) ||
	    opt_doc(x->cmd, "cursor", &cursor, &has_cursor, &err) ||
	    (has_cursor && opt_i64(&cursor, "batchSize", -1, &batch, &err)))
		goto fail;
	if (!has_pipeline || !has_cursor) {
		fail(&err, E_FAILED_TO_PARSE, "aggregate needs a 'pipeline' array and a 'cursor' option");
		goto fail;
	}
	c = coll_find(s, x->db, name);
	for (size_t i = 0; c && i < c->docs.n; i++)
		doclist_push(&l, bson_copy(c->docs.v[i]));
	bson_iter_init(&it, &pipeline);
	while (bson_iter_next(&it)) {
		if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !val_doc(bson_iter_value(&it), &stage) ||
		    bson_count_keys(&stage) != 1 || !bson_iter_init(&sit, &stage) || !bson_iter_next(&sit)) {
			fail(&err, 40323, "A pipeline stage specification object must contain exactly one field");
			goto fail;
		}
		if (run_stage(&l, bson_iter_key(&sit), bson_iter_value(&sit), &err))
			goto fail;
	}
	make_ns(ns, x->db, name);
	reply_cursor(s, ns, &l, batch, false, r);
	return;
fail:
	doclist_free(&l);
	reply_fail(r, &err);
	err_clear(&err);
}

/* ---------------------------------------------------- indexes/collections */

static int create_index(struct coll *c, const bson_t *spec, struct mderr *err)
{
	bson_t key;
	bson_iter_t it;
	bool has_key;
	const char *name;
	struct index ix;

	if (opt_doc(spec, "key", &key, &has_key, err))
		return -1;
	if (!has_key || bson_empty(&key))
		return fail(err, E_FAILED_TO_PARSE, "The 'key' field is a required property of an index specification");
	if (bson_count_keys(&key) > MD_MAX_KEYS)
		return fail(err, E_BAD_VALUE, "too many fields in index key");
	if (!bson_iter_init_find(&it, spec, "name") || !BSON_ITER_HOLDS_UTF8(&it))
		return fail(err, E_FAILED_TO_PARSE,
		            "The 'name' field is a required property of an index specification");
	name = bson_iter_utf8(&it, NULL);
	if (bson_has_field(spec, "partialFilterExpression"))
		return fail(err, E_BAD_VALUE, "partial indexes are not supported by mongo_double");
	ix.name = (char *)name;
	ix.key = &key;
	ix.unique = opt_bool(spec, "unique", false);
	ix.sparse = opt_bool(spec, "sparse", false);
	for (size_t i = 0; i < c->nidx; i++) {
		const struct index *o = &c->idx[i];
		bool same_key = bson_equal(o->key, &key);

		if (strcmp(o->name, name) == 0) {
			if (same_key && o->unique == ix.unique && o->sparse == ix.sparse)
				return 0;
			return fail(err, E_INDEX_KEY_SPECS_CONFLICT,
			            "An existing index has the same name as the requested index: %s", name);
		}
		if (same_key)
			return fail(err, E_INDEX_OPTIONS_CONFLICT, "Index already exists with a different name: %s",
			            o->name);
	}
	for (size_t i = 0; i < c->docs.n; i++)
		if (check_index(c, &ix, c->docs.v[i], i, err))
			return -1;
	c->idx = bson_realloc(c->idx, (c->nidx + 1) * sizeof *c->idx);
	c->idx[c->nidx].name = bson_strdup(name);
	c->idx[c->nidx].key = bson_copy(&key);
	c->idx[c->nidx].unique = ix.unique;
	c->idx[c->nidx].sparse = ix.sparse;
	c->nidx++;
	return 0;
}

static void cmd_create_indexes(struct server *s, const struct cmdctx *x, bson_t *r)
{
	struct mderr err = {0};
	bson_t specs, spec;
	bool present, created;
	bson_iter_t it;
	const char *name;
	struct coll *c;
	size_t before;

	if (coll_arg(x, &name, &err) || opt_array(x->cmd, "indexes", &specs, &present, &err))
		goto fail;
	if (!present || bson_empty(&specs)) {
		fail(&err, E_FAILED_TO_PARSE, "Must specify at least one index to create");
		goto fail;
	}
	c = coll_get(s, x->db, name, &created);
	before = c->nidx;
	bson_iter_init(&it, &specs);
	while (bson_iter_next(&it)) {
		if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !val_doc(bson_iter_value(&it), &spec)) {
			fail(&err, E_TYPE_MISMATCH, "index specifications must be objects");
			goto fail;
		}
		if (create_index(c, &spec, &err))
			goto fail;
	}
	BSON_APPEND_INT32(r, "numIndexesBefore", (int32_t)before);
	BSON_APPEND_INT32(r, "numIndexesAfter", (int32_t)c->nidx);
	BSON_APPEND_BOOL(r, "createdCollectionAutomatically", created);
	if (before == c->nidx)
		BSON_APPEND_UTF8(r, "note", "all indexes already exist");
	BSON_APPEND_DOUBLE(r, "ok", 1.0);
	return;
fail:
	reply_fail(r, &err);
	err_clear(&err);
}

static void cmd_list_indexes(struct server *s, const struct cmdctx *x, bson_t *r)
{
	struct mderr err = {0};
	struct doclist l = {0};
	const char *name;
	struct coll *c;
	char ns[MD_NS_MAX];
	int64_t batch = -1;
	bson_t cursor;
	bool has_cursor;

	if (coll_arg(x, &name, &err) || opt_doc(x->cmd, "cursor", &cursor, &has_cursor, &err) ||
	    (has_cursor && opt_i64(&cursor, "batchSize", -1, &batch, &err)))
		goto fail;
	make_ns(ns, x->db, name);
	c = coll_find(s, x->db, name);
	if (!c) {
		fail(&err, E_NS_NOT_FOUND, "ns does not exist: %s", ns);
		goto fail;
	}
	for (size_t i = 0; i < c->nidx; i++) {
		bson_t *d = BCON_NEW("v", BCON_INT32(2), "key", BCON_DOCUMENT(c->idx[i].key), "name",
		                     BCON_UTF8(c->idx[i].name));

		if (c->idx[i].unique && i > 0)
			BSON_APPEND_BOOL(d, "unique", true);
		if (c->idx[i].sparse)
			BSON_APPEND_BOOL(d, "sparse", true);
		doclist_push(&l, d);
	}
	reply_cursor(s, ns, &l, batch, false, r);
	return;
fail:
	reply_fail(r, &err);
	err_clear(&err);
}

static void cmd_drop_indexes(struct server *s, const struct cmdctx *x, bson_t *r)
{
	struct mderr err = {0};
	const char *name;
	struct coll *c;
	bson_iter_t it;
	size_t before, w = 1;
	bson_t keydoc;

	if (coll_arg(x, &name, &err))
		goto fail;
	c = coll_find(s, x->db, name);
	if (!c) {
		fail(&err, E_NS_NOT_FOUND, "ns not found %s.%s", x->db, name);
		goto fail;
	}
	if (!bson_iter_init_find(&it, x->cmd, "index")) {
		fail(&err, E_FAILED_TO_PARSE, "BSON field 'dropIndexes.index' is missing");
		goto fail;
	}
	before = c->nidx;
	for (size_t i = 1; i < c->nidx; i++) {
		bool drop = false;

		if (BSON_ITER_HOLDS_UTF8(&it))
			drop = strcmp(bson_iter_utf8(&it, NULL), "*") == 0 ||
			       strcmp(bson_iter_utf8(&it, NULL), c->idx[i].name) == 0;
		else if (BSON_ITER_HOLDS_DOCUMENT(&it) && val_doc(bson_iter_value(&it), &keydoc))
			drop = bson_equal(&keydoc, c->idx[i].key);
		if (drop)
			index_free(&c->idx[i]);
		else
			c->idx[w++] = c->idx[i];
	}
	c->nidx = w;
	if (w == before && !(BSON_ITER_HOLDS_UTF8(&it) && strcmp(bson_iter_utf8(&it, NULL), "*") == 0)) {
		if (BSON_ITER_HOLDS_UTF8(&it) && strcmp(bson_iter_utf8(&it, NULL), "_id_") == 0)
			fail(&err, E_INVALID_OPTIONS, "cannot drop _id index");
		else
			fail(&err, E_INDEX_NOT_FOUND, "index not found");
		goto fail;
	}
	BSON_APPEND_INT32(r, "nIndexesWas", (int32_t)before);
	BSON_APPEND_DOUBLE(r, "ok", 1.0);
	return;
fail:
	reply_fail(r, &err);
	err_clear(&err);
}

static void cmd_list_collections(struct server *s, const struct cmdctx *x, bson_t *r)
{
	struct mderr err = {0};
	struct doclist l = {0};
	bson_t filter;
	bool has_filter, name_only = opt_bool(x->cmd, "nameOnly", false);
	char ns[MD_NS_MAX];

	if (opt_doc(x->cmd, "filter", &filter, &has_filter, &err) || check_filter(has_filter ? &filter : NULL, &err))
		goto fail;
	for (size_t i = 0; i < s->ncolls; i++) {
		bson_t *d;
		int m;

		if (strcmp(s->colls[i]->db, x->db) != 0)
			continue;
		d = BCON_NEW("name", BCON_UTF8(s->colls[i]->name), "type", BCON_UTF8("collection"));
		if (!name_only) {
			BCON_APPEND(d, "options", "{", "}", "info", "{", "readOnly", BCON_BOOL(false), "}");
			BCON_APPEND(d, "idIndex", "{", "v", BCON_INT32(2), "key", "{", "_id", BCON_INT32(1), "}",
			            "name", BCON_UTF8("_id_"), "}");
		}
		m = match_doc(d, has_filter ? &filter : NULL, &err);
		if (m > 0)
			doclist_push(&l, d);
		else
			bson_destroy(d);
		if (m < 0)
			goto fail;
	}
	snprintf(ns, sizeof ns, "%s.$cmd.listCollections", x->db);
	reply_cursor(s, ns, &l, -1, false, r);
	return;
fail:
	doclist_free(&l);
	reply_fail(r, &err);
	err_clear(&err);
}

static void cmd_create(struct server *s, const struct cmdctx *x, bson_t *r)
{
	struct mderr err = {0};
	const char *name;

	if (!coll_arg(x, &name, &err) && coll_find(s, x->db, name))
		fail(&err, E_NS_EXISTS, "Collection %s.%s already exists.", x->db, name);
	if (err.code) {
		reply_fail(r, &err);
		err_clear(&err);
		return;
	}
	coll_get(s, x->db, name, NULL);
	BSON_APPEND_DOUBLE(r, "ok", 1.0);
}

static void cmd_drop(struct server *s, const struct cmdctx *x, bson_t *r)
{
	struct mderr err = {0};
	const char *name;
	struct coll *c;
	char ns[MD_NS_MAX];

	c = coll_arg(x, &name, &err) ? NULL : coll_find(s, x->db, name);
	if (!c) {
		if (!err.code)
			fail(&err, E_NS_NOT_FOUND, "ns not found");
		reply_fail(r, &err);
		err_clear(&err);
		return;
	}
	make_ns(ns, x->db, name);
	BSON_APPEND_INT32(r, "nIndexesWas", (int32_t)c->nidx);
	BSON_APPEND_UTF8(r, "ns", ns);
	BSON_APPEND_DOUBLE(r, "ok", 1.0);
	coll_remove(s, c);
}

static void cmd_drop_database(struct server *s, const struct cmdctx *x, bson_t *r)
{
	for (size_t i = s->ncolls; i-- > 0;)
		if (strcmp(s->colls[i]->db, x->db) == 0)
			coll_remove(s, s->colls[i]);
	BSON_APPEND_UTF8(r, "dropped", x->db);
	BSON_APPEND_DOUBLE(r, "ok", 1.0);
}

static const struct cmd_def commands[] = {
    {"hello", cmd_hello, false, false},
    {"isMaster", cmd_hello, false, false},
    {"ismaster", cmd_hello, false, false},
    {"endSessions", cmd_end_sessions, false, false},
    {"ping", cmd_ok, true, false},
    {"buildInfo", cmd_build_info, true, false},
    {"buildinfo", cmd_build_info, true, false},
    {"insert", cmd_insert, true, true},
    {"find", cmd_find, true, false},
    {"getMore", cmd_get_more, true, false},
    {"killCursors", cmd_kill_cursors, true, false},
    {"update", cmd_update, true, true},
    {"delete", cmd_delete, true, true},
    {"findAndModify", cmd_find_and_modify, true, true},
    {"findandmodify", cmd_find_and_modify, true, true},
    {"count", cmd_count, true, false},
    {"aggregate", cmd_aggregate, true, false},
    {"createIndexes", cmd_create_indexes, true, false},
    {"listIndexes", cmd_list_indexes, true, false},
    {"dropIndexes", cmd_drop_indexes, true, false},
    {"listCollections", cmd_list_collections, true, false},
    {"create", cmd_create, true, false},
    {"drop", cmd_drop, true, false},
    {"dropDatabase", cmd_drop_database, true, false},
};

#define N_COMMANDS (sizeof commands / sizeof commands[0])

/* "Not primary" and "node is recovering/shutting down" errors: the server's
 * state changed (SDAM). */
static bool is_state_change(int code)
{
	static const int codes[] = {91, 189, 10058, 10107, 11600, 11602, 13435, 13436};

	for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
		if (codes[i] == code)
			return true;
	return false;
}

/* An injected state change, as a real server shows one: topologyVersion moves
 * on, the error carries the new one, and every streaming monitor gets a fresh
 * hello at once. Whichever a driver sees first, it ends up knowing the server
 * is back (the error is stale against the newer hello, or the hello follows
 * the error), instead of waiting out maxAwaitTimeMS with the server unknown. */
static void state_change(struct server *s, struct mderr *err)
{
	bson_t tv;

	s->tv_counter++;
	for (size_t i = 0; i < s->nconns; i++)
		if (s->conns[i]->stream_cmd)
			s->conns[i]->stream_due = 0;
	if (!err->has_extra)
		bson_init(&err->extra);
	err->has_extra = true;
	BSON_APPEND_DOCUMENT_BEGIN(&err->extra, "topologyVersion", &tv);
	BSON_APPEND_OID(&tv, "processId", &s->process_id);
	BSON_APPEND_INT64(&tv, "counter", s->tv_counter);
	bson_append_document_end(&err->extra, &tv);
}

/* Runs one command with faults applied; returns true if the connection must
 * be closed instead of answered. */
static bool run_command(struct server *s, struct conn *c, const char *db, const bson_t *cmd, bson_t *r)
{
	struct mderr err = {0};
	struct cmdctx x = {db, "", cmd, c};
	const struct cmd_def *def = NULL;
	const bson_value_t *lsid = NULL;
	bson_iter_t it;
	size_t i;

	s->served++;
	if (bson_iter_init(&it, cmd) && bson_iter_next(&it))
		x.name = bson_iter_key(&it);
	for (i = 0; i < N_COMMANDS && !def; i++)
		if (strcmp(commands[i].name, x.name) == 0)
			def = &commands[i];
	s->cmd_counts[def ? (size_t)(def - commands) : N_COMMANDS]++;
	if (s->verbose) {
		char *json = bson_as_relaxed_extended_json(cmd, NULL);

		fprintf(stderr, "mongo_double: conn %lld db %s: %.400s\n", (long long)c->id, db, json ? json : "?");
		bson_free(json);
	}
	if (!def || def->data) {
		s->data_served++;
		if (s->drop_next > 0) {
			s->drop_next--;
			return true;
		}
		if (s->err_left > 0) {
			s->err_left--;
			fail(&err, s->err_code, "mongo_double: injected error %d", s->err_code);
			if (is_state_change(s->err_code))
				state_change(s, &err);
			reply_fail(r, &err);
			err_clear(&err);
			return false;
		}
	}
	if (bson_iter_init_find(&it, cmd, "lsid")) {
		const uint8_t *id;
		uint32_t len;

		lsid = bson_iter_value(&it);
		s->with_lsid++;
		if (!session_id(lsid, &id, &len))
			fail(&err, E_TYPE_MISMATCH, "BSON field 'lsid' must be {id: UUID}");
	}
	if (err.code)
		;
	else if (!def)
		fail(&err, E_CMD_NOT_FOUND, "no such command: '%s'", x.name);
	else if (!valid_db(db))
		fail(&err, E_INVALID_NS, "Invalid database name: '%s'", db);
	else if (!def->retryable && bson_has_field(cmd, "txnNumber"))
		fail(&err, E_INVALID_OPTIONS, "txnNumber may only be provided for retryable write commands");
	if (err.code) {
		reply_fail(r, &err);
		return false;
	}
	if (def->retryable && bson_has_field(cmd, "txnNumber"))
		run_retryable(s, &x, def, lsid, r);
	else
		def->fn(s, &x, r);
	/* drop-reply: the command took effect, its answer is lost */
	if (def->data && s->drop_reply > 0) {
		s->drop_reply--;
		return true;
	}
	return false;
}

/* ------------------------------------------------------------ wire format */

static uint32_t crc32c(const uint8_t *p, size_t n)
{
	uint32_t crc = 0xFFFFFFFFu;

	while (n--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
	}
	return ~crc;
}

/* Queues one reply; returns the requestID it carries. */
static int32_t conn_queue(struct server *s, struct conn *c, int32_t response_to, int32_t opcode, const uint8_t *prefix,
                          size_t plen, const bson_t *doc)
{
	size_t len = 16 + plen + doc->len;
	struct chunk *ch = bson_malloc(sizeof *ch + len);

	ch->next = NULL;
	ch->due = now_ms() + s->delay_ms;
	ch->len = len;
	ch->off = 0;
	wr32(ch->data, (uint32_t)len);
	wr32(ch->data + 4, (uint32_t)++s->next_request_id);
	wr32(ch->data + 8, (uint32_t)response_to);
	wr32(ch->data + 12, (uint32_t)opcode);
	memcpy(ch->data + 16, prefix, plen);
	memcpy(ch->data + 16 + plen, bson_get_data(doc), doc->len);
	if (c->tail)
		c->tail->next = ch;
	else
		c->head = ch;
	c->tail = ch;
	return s->next_request_id;
}

static bool parse_doc(const uint8_t *p, size_t avail, bson_t *out, size_t *used)
{
	uint32_t len;
	size_t off;

	if (avail < 5)
		return false;
	len = rd32(p);
	if (len < 5 || len > avail || !bson_init_static(out, p, len))
		return false;
	*used = len;
	return bson_validate(out, BSON_VALIDATE_NONE, &off);
}

struct sequence {
	const char *ident;
	const uint8_t *data;
	size_t len;
};

/* Builds the command: the body with every kind-1 sequence appended as an array. */
static bool merge_sections(const bson_t *body, const struct sequence *seq, size_t nseq, bson_t *cmd)
{
	bson_init(cmd);
	bson_concat(cmd, body);
	for (size_t i = 0; i < nseq; i++) {
		bson_t arr, d;
		size_t off = 0, used;
		uint32_t n = 0;
		struct ikey k;

		if (bson_has_field(body, seq[i].ident)) {
			bson_destroy(cmd);
			return false;
		}
		bson_append_array_begin(cmd, seq[i].ident, -1, &arr);
		while (off < seq[i].len) {
			if (!parse_doc(seq[i].data + off, seq[i].len - off, &d, &used)) {
				bson_append_array_end(cmd, &arr);
				bson_destroy(cmd);
				return false;
			}
			ikey_set(&k, n++);
			bson_append_document(&arr, k.str, k.len, &d);
			off += used;
		}
		bson_append_array_end(cmd, &arr);
	}
	return true;
}

/* A replica-set member's gossip: $clusterTime (signed with a zero key, as a
 * server without keys does) and operationTime, moving forward on every reply. */
static void append_cluster_time(struct server *s, bson_t *r)
{
	static const uint8_t zero_hash[20];
	uint32_t now = (uint32_t)time(NULL);
	bson_t ct, sig;

	if (now > s->cluster_secs) {
		s->cluster_secs = now;
		s->cluster_inc = 0;
	}
	s->cluster_inc++;
	BSON_APPEND_DOCUMENT_BEGIN(r, "$clusterTime", &ct);
	BSON_APPEND_TIMESTAMP(&ct, "clusterTime", s->cluster_secs, s->cluster_inc);
	BSON_APPEND_DOCUMENT_BEGIN(&ct, "signature", &sig);
	BSON_APPEND_BINARY(&sig, "hash", BSON_SUBTYPE_BINARY, zero_hash, sizeof zero_hash);
	BSON_APPEND_INT64(&sig, "keyId", 0);
	bson_append_document_end(&ct, &sig);
	bson_append_document_end(r, &ct);
	BSON_APPEND_TIMESTAMP(r, "operationTime", s->cluster_secs, s->cluster_inc);
}

static bool is_hello(const bson_t *cmd)
{
	bson_iter_t it;
	const char *name;

	if (!bson_iter_init(&it, cmd) || !bson_iter_next(&it))
		return false;
	name = bson_iter_key(&it);
	return strcmp(name, "hello") == 0 || strcmp(name, "isMaster") == 0 || strcmp(name, "ismaster") == 0;
}

static bool reply_ok(const bson_t *r)
{
	bson_iter_t it;

	return bson_iter_init_find(&it, r, "ok") && bson_iter_as_double(&it) == 1.0;
}

static void stream_end(struct conn *c)
{
	if (c->stream_cmd)
		bson_destroy(c->stream_cmd);
	c->stream_cmd = NULL;
}

/* Sends the next reply of an exhaust hello stream when it is due and the
 * previous one has left. */
static void stream_tick(struct server *s, struct conn *c, int64_t now)
{
	uint8_t prefix[5] = {0};
	struct cmdctx x = {c->stream_db, "", c->stream_cmd, c};
	bson_iter_t it;
	bson_t r;

	if (!c->stream_cmd || c->dead || c->head || now < c->stream_due)
		return;
	if (bson_iter_init(&it, c->stream_cmd) && bson_iter_next(&it))
		x.name = bson_iter_key(&it);
	bson_init(&r);
	cmd_hello(s, &x, &r);
	if (s->replset)
		append_cluster_time(s, &r);
	wr32(prefix, MSG_MORE_TO_COME);
	c->stream_to = conn_queue(s, c, c->stream_to, OP_MSG, prefix, sizeof prefix, &r);
	c->stream_due = now + c->stream_every;
	s->streamed++;
	bson_destroy(&r);
}

/* Queues the reply to an OP_MSG command. An awaitable hello (the client's
 * topologyVersion is current) is answered after maxAwaitTimeMS; with the
 * exhaustAllowed flag it starts a stream of replies with moreToCome instead,
 * the way a server feeds a driver's streaming monitor. */
static void queue_op_msg_reply(struct server *s, struct conn *c, const char *db, const bson_t *cmd, uint32_t flags,
                               int32_t req_id, const bson_t *reply)
{
	uint8_t prefix[5] = {0};
	struct mderr err = {0};
	int64_t wait_ms = 0;
	int await = 0;

	if (is_hello(cmd) && reply_ok(reply) && bson_has_field(cmd, "maxAwaitTimeMS"))
		await = hello_await(s, cmd, &wait_ms, &err); /* ok reply: the fields are valid */
	if (await >= 0 && bson_has_field(cmd, "maxAwaitTimeMS") && (flags & MSG_EXHAUST_ALLOWED) && is_hello(cmd) &&
	    reply_ok(reply)) {
		/* The stream starts at once when the client's topologyVersion is
		 * stale, after maxAwaitTimeMS when it is current. */
		stream_end(c);
		c->stream_cmd = bson_copy(cmd);
		snprintf(c->stream_db, sizeof c->stream_db, "%s", db);
		c->stream_every = wait_ms < 100 ? 100 : wait_ms;
		c->stream_due = await == 1 ? now_ms() + wait_ms : 0;
		c->stream_to = req_id;
		return;
	}
	conn_queue(s, c, req_id, OP_MSG, prefix, sizeof prefix, reply);
	if (await == 1)
		c->tail->due += wait_ms;
}

/* Handles one OP_MSG; returns false on a protocol error (connection closes). */
static bool handle_op_msg(struct server *s, struct conn *c, const uint8_t *msg, size_t len, int32_t req_id)
{
	struct sequence seq[MD_MAX_SEQUENCES];
	size_t nseq = 0, pos = 20, end = len, used;
	bson_t body, cmd, reply;
	bool have_body = false, close_conn;
	bson_iter_t it;
	uint32_t flags;

	if (len < 21)
		return false;
	flags = rd32(msg + 16);
	if (flags & 0xFFFFu & ~(MSG_CHECKSUM_PRESENT | MSG_MORE_TO_COME)) {
		fprintf(stderr, "mongo_double: OP_MSG with unknown required flag bits 0x%x\n", flags);
		return false;
	}
	if (flags & MSG_CHECKSUM_PRESENT) {
		if (len < 25)
			return false;
		end -= 4;
		if (crc32c(msg, end) != rd32(msg + end)) {
			fprintf(stderr, "mongo_double: OP_MSG checksum mismatch\n");
			return false;
		}
	}
	while (pos < end) {
		uint8_t kind = msg[pos++];

		if (kind == 0) {
			if (have_body || !parse_doc(msg + pos, end - pos, &body, &used))
				return false;
			have_body = true;
			pos += used;
		} else if (kind == 1) {
			uint32_t slen;
			const uint8_t *nul;

			if (end - pos < 4 || nseq == MD_MAX_SEQUENCES)
				return false;
			slen = rd32(msg + pos);
			if (slen < 5 || slen > end - pos)
				return false;
			nul = memchr(msg + pos + 4, '\0', slen - 4);
			if (!nul)
				return false;
			seq[nseq].ident = (const char *)msg + pos + 4;
			seq[nseq].data = nul + 1;
			seq[nseq].len = (size_t)(msg + pos + slen - (nul + 1));
			nseq++;
			pos += slen;
		} else {
			fprintf(stderr, "mongo_double: OP_MSG section kind %u not supported\n", kind);
			return false;
		}
	}
	if (!have_body || !merge_sections(&body, seq, nseq, &cmd))
		return false;
	bson_init(&reply);
	if (!bson_iter_init_find(&it, &cmd, "$db") || !BSON_ITER_HOLDS_UTF8(&it)) {
		struct mderr err = {0};

		fail(&err, E_MISSING_DB, "BSON field '$db' is missing but a required field");
		reply_fail(&reply, &err);
		s->served++;
		close_conn = false;
	} else {
		close_conn = run_command(s, c, bson_iter_utf8(&it, NULL), &cmd, &reply);
	}
	if (!close_conn && s->replset)
		append_cluster_time(s, &reply);
	if (!close_conn && !(flags & MSG_MORE_TO_COME))
		queue_op_msg_reply(s, c,
		                   bson_iter_init_find(&it, &cmd, "$db") && BSON_ITER_HOLDS_UTF8(&it)
		                       ? bson_iter_utf8(&it, NULL)
		                       : "admin",
		                   &cmd, flags, req_id, &reply);
	bson_destroy(&reply);
	bson_destroy(&cmd);
	return !close_conn;
}

static void queue_op_reply(struct server *s, struct conn *c, int32_t req_id, uint32_t flags, const bson_t *doc)
{
	uint8_t prefix[20] = {0};

	wr32(prefix, flags);
	wr32(prefix + 16, 1); /* numberReturned; cursorID and startingFrom stay 0 */
	conn_queue(s, c, req_id, OP_REPLY, prefix, sizeof prefix, doc);
}

/* OP_QUERY is accepted only for the hello handshake on <db>.$cmd, as in 6.0. */
static bool handle_op_query(struct server *s, struct conn *c, const uint8_t *msg, size_t len, int32_t req_id)
{
	const uint8_t *nul;
	const char *ns;
	size_t nslen, pos, used;
	bson_t query, cmd, reply;
	bson_iter_t it;
	char db[80];
	const char *name = "";
	bool close_conn = false;

	if (len < 21)
		return false;
	nul = memchr(msg + 20, '\0', len - 20);
	if (!nul)
		return false;
	ns = (const char *)msg + 20;
	nslen = (size_t)((const char *)nul - ns);
	pos = 20 + nslen + 1 + 8;
	if (pos > len || !parse_doc(msg + pos, len - pos, &query, &used))
		return false;
	bson_init(&reply);
	if (nslen < 6 || strcmp(ns + nslen - 5, ".$cmd") != 0 || nslen - 5 >= sizeof db) {
		BSON_APPEND_UTF8(&reply, "$err", "OP_QUERY is only supported for commands");
		BSON_APPEND_INT32(&reply, "code", 5739101);
		queue_op_reply(s, c, req_id, REPLY_QUERY_FAILURE, &reply);
		bson_destroy(&reply);
		return true;
	}
	memcpy(db, ns, nslen - 5);
	db[nslen - 5] = '\0';
	cmd = query;
	if (bson_iter_init_find(&it, &query, "$query") && BSON_ITER_HOLDS_DOCUMENT(&it))
		val_doc(bson_iter_value(&it), &cmd);
	if (bson_iter_init(&it, &cmd) && bson_iter_next(&it))
		name = bson_iter_key(&it);
	if (strcmp(name, "hello") == 0 || strcmp(name, "isMaster") == 0 || strcmp(name, "ismaster") == 0) {
		close_conn = run_command(s, c, db, &cmd, &reply);
	} else {
		struct mderr err = {0};

		s->served++;
		fail(&err, E_UNSUPPORTED_OP_QUERY,
		     "Unsupported OP_QUERY command: %s. The client driver may require an upgrade.", name);
		reply_fail(&reply, &err);
	}
	if (!close_conn)
		queue_op_reply(s, c, req_id, REPLY_AWAIT_CAPABLE, &reply);
	bson_destroy(&reply);
	return !close_conn;
}

static bool handle_message(struct server *s, struct conn *c, const uint8_t *msg, size_t len)
{
	int32_t req_id = (int32_t)rd32(msg + 4);
	uint32_t opcode = rd32(msg + 12);

	stream_end(c); /* a client that speaks again has left the stream */
	if (opcode == OP_MSG)
		return handle_op_msg(s, c, msg, len, req_id);
	if (opcode == OP_QUERY)
		return handle_op_query(s, c, msg, len, req_id);
	fprintf(stderr, "mongo_double: opcode %u not supported, closing connection\n", opcode);
	return false;
}

/* ------------------------------------------------------------- networking */

static void conn_free(struct conn *c)
{
	stream_end(c);
	while (c->head) {
		struct chunk *next = c->head->next;

		bson_free(c->head);
		c->head = next;
	}
	if (c->fd >= 0)
		close(c->fd);
	bson_free(c->in);
	bson_free(c);
}

static void conn_read(struct server *s, struct conn *c)
{
	size_t off = 0, want = MD_READ_CHUNK;
	ssize_t n;

	if (c->in_len >= 4) {
		uint32_t mlen = rd32(c->in);

		if (mlen <= MD_MAX_MSG && mlen > c->in_len && mlen - c->in_len > want)
			want = mlen - c->in_len;
	}
	c->in = grow(c->in, &c->in_cap, c->in_len + want, 1);
	n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
		c->dead = true;
		return;
	}
	if (n < 0)
		return;
	c->in_len += (size_t)n;
	while (!c->dead && c->in_len - off >= 16) {
		uint32_t mlen = rd32(c->in + off);

		if (mlen < 16 || mlen > MD_MAX_MSG) {
			fprintf(stderr, "mongo_double: bad message length %u, closing connection\n", mlen);
			c->dead = true;
			break;
		}
		if (c->in_len - off < mlen)
			break;
		if (!handle_message(s, c, c->in + off, mlen))
			c->dead = true;
		off += mlen;
	}
	if (c->dead)
		return;
	memmove(c->in, c->in + off, c->in_len - off);
	c->in_len -= off;
	if (c->in_len == 0 && c->in_cap > 4 * MD_READ_CHUNK) {
		bson_free(c->in);
		c->in = NULL;
		c->in_cap = 0;
	}
}

/* Writes the replies that are due, as far as the socket takes them. */
static void conn_flush(struct conn *c, int64_t now)
{
	while (!c->dead && c->head && c->head->due <= now) {
		struct chunk *ch = c->head;
		ssize_t n = send(c->fd, ch->data + ch->off, ch->len - ch->off, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				c->dead = true;
			return;
		}
		ch->off += (size_t)n;
		if (ch->off < ch->len)
			return;
		c->head = ch->next;
		if (!c->head)
			c->tail = NULL;
		bson_free(ch);
	}
}

static void drop_all(struct server *s)
{
	for (size_t i = 0; i < s->nconns; i++)
		s->conns[i]->dead = true;
}

static int listen_tcp(int port, int *bound)
{
	struct sockaddr_in sa;
	socklen_t sl = sizeof sa;
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 128) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &sl) < 0) {
		close(fd);
		return -1;
	}
	*bound = ntohs(sa.sin_port);
	return fd;
}

/* Fills a Unix socket address; a leading '@' names the Linux abstract
 * namespace, which leaves nothing behind on disk. Returns its length or 0. */
static socklen_t unix_addr(struct sockaddr_un *sa, const char *path)
{
	size_t len = strlen(path);

	memset(sa, 0, sizeof *sa);
	sa->sun_family = AF_UNIX;
	if (len < 2 || len >= sizeof sa->sun_path)
		return 0;
	memcpy(sa->sun_path, path, len);
	if (path[0] == '@')
		sa->sun_path[0] = '\0';
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] != '@'));
}

static int listen_unix(const char *path)
{
	struct sockaddr_un sa;
	socklen_t sl = unix_addr(&sa, path);
	struct stat st;
	int fd;

	if (sl == 0) {
		errno = ENAMETOOLONG;
		return -1;
	}
	if (path[0] != '@' && lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)&sa, sl) < 0 || listen(fd, 16) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static void accept_clients(struct server *s)
{
	for (;;) {
		int one = 1;
		int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct conn *c;

		if (fd < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		s->accepted++;
		if (s->refuse) {
			close(fd);
			continue;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		c = bson_malloc0(sizeof *c);
		c->fd = fd;
		c->id = ++s->next_conn_id;
		s->conns = grow(s->conns, &s->capconns, s->nconns + 1, sizeof *s->conns);
		s->conns[s->nconns++] = c;
	}
}

static void accept_controls(struct server *s)
{
	for (;;) {
		int fd = accept4(s->ctl_lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct ctl *k;

		if (fd < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		k = bson_malloc0(sizeof *k);
		k->fd = fd;
		s->ctls = grow(s->ctls, &s->capctls, s->nctls + 1, sizeof *s->ctls);
		s->ctls[s->nctls++] = k;
	}
}

static void ctl_send(struct ctl *k, const char *line)
{
	size_t len = strlen(line);

	if (send(k->fd, line, len, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)len)
		k->dead = true;
}

static void reset_faults(struct server *s)
{
	s->delay_ms = 0;
	s->drop_next = 0;
	s->err_left = 0;
	s->err_code = 0;
	s->drop_reply = 0;
	s->refuse = false;
}

static void clear_data(struct server *s)
{
	for (size_t i = 0; i < s->ncolls; i++)
		coll_free(s->colls[i]);
	s->ncolls = 0;
	for (size_t i = 0; i < s->ncurs; i++)
		cursor_free(s->curs[i]);
	s->ncurs = 0;
	sessions_clear(s);
}

static void format_stats(const struct server *s, char *out, size_t len)
{
	size_t used, nopen = 0;

	for (size_t i = 0; i < s->nconns; i++)
		nopen += !s->conns[i]->dead;
	used = (size_t)snprintf(out, len,
	                        "ok served=%llu data=%llu accepted=%llu open=%zu cursors=%zu listening=%d"
	                        " lsid=%llu retryable=%llu retried=%llu sessions=%zu streamed=%llu",
	                        (unsigned long long)s->served, (unsigned long long)s->data_served,
	                        (unsigned long long)s->accepted, nopen, s->ncurs, !s->stopped,
	                        (unsigned long long)s->with_lsid, (unsigned long long)s->retryable,
	                        (unsigned long long)s->retried, s->nsessions, (unsigned long long)s->streamed);
	for (size_t i = 0; i <= N_COMMANDS && used + 64 < len; i++) {
		if (s->cmd_counts[i])
			used += (size_t)snprintf(out + used, len - used, " %s=%llu",
			                         i < N_COMMANDS ? commands[i].name : "unknown",
			                         (unsigned long long)s->cmd_counts[i]);
	}
	snprintf(out + used, len - used, "\n");
}

static bool parse_count(const char *arg, uint64_t lo, uint64_t hi, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!arg || !*arg || *arg == '-')
		return false;
	errno = 0;
	v = strtoull(arg, &end, 10);
	if (errno || *end || v < lo || v > hi)
		return false;
	*out = v;
	return true;
}

/* Executes one control line and writes the reply line. */
static void ctl_exec(struct server *s, struct ctl *k, char *line)
{
	char *save = NULL, *cmd = strtok_r(line, " \t\r", &save);
	char *a1 = strtok_r(NULL, " \t\r", &save), *a2 = strtok_r(NULL, " \t\r", &save);
	char out[1024];
	uint64_t v, n = 1;
	bool ok = true;

	if (!cmd) {
		ok = false;
	} else if (strcmp(cmd, "delay") == 0 && parse_count(a1, 0, 600000, &v)) {
		s->delay_ms = (int)v;
	} else if (strcmp(cmd, "drop") == 0 && !a1) {
		drop_all(s);
	} else if (strcmp(cmd, "drop-next") == 0 && (!a1 || parse_count(a1, 0, UINT32_MAX, &n))) {
		s->drop_next = n;
	} else if (strcmp(cmd, "drop-reply") == 0 && (!a1 || parse_count(a1, 0, UINT32_MAX, &n))) {
		s->drop_reply = n;
	} else if (strcmp(cmd, "error") == 0 && parse_count(a1, 1, INT32_MAX, &v) &&
	           (!a2 || parse_count(a2, 0, UINT32_MAX, &n))) {
		s->err_code = (int)v;
		s->err_left = n;
	} else if (strcmp(cmd, "refuse") == 0 && a1 && (!strcmp(a1, "on") || !strcmp(a1, "off"))) {
		s->refuse = strcmp(a1, "on") == 0;
	} else if (strcmp(cmd, "stop") == 0) {
		if (s->lfd >= 0)
			close(s->lfd);
		s->lfd = -1;
		s->stopped = true;
		drop_all(s);
	} else if (strcmp(cmd, "start") == 0) {
		int bound;

		if (s->lfd < 0) {
			s->lfd = listen_tcp(s->port, &bound);
			if (s->lfd < 0) {
				snprintf(out, sizeof out, "err listen: %s\n", strerror(errno));
				ctl_send(k, out);
				return;
			}
		}
		s->stopped = false;
	} else if (strcmp(cmd, "reset") == 0) {
		reset_faults(s);
	} else if (strcmp(cmd, "clear") == 0) {
		clear_data(s);
	} else if (strcmp(cmd, "stats") == 0) {
		format_stats(s, out, sizeof out);
		ctl_send(k, out);
		return;
	} else {
		ok = strcmp(cmd, "ping") == 0;
	}
	ctl_send(k, ok ? "ok\n" : "err unknown or malformed command\n");
}

static void ctl_read(struct server *s, struct ctl *k)
{
	ssize_t n = recv(k->fd, k->buf + k->len, sizeof k->buf - 1 - k->len, 0);
	char *nl;

	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
		k->dead = true;
		return;
	}
	if (n < 0)
		return;
	k->len += (size_t)n;
	k->buf[k->len] = '\0';
	while (!k->dead && (nl = strchr(k->buf, '\n')) != NULL) {
		size_t used = (size_t)(nl - k->buf) + 1;

		*nl = '\0';
		ctl_exec(s, k, k->buf);
		memmove(k->buf, k->buf + used, k->len - used + 1);
		k->len -= used;
	}
	if (k->len == sizeof k->buf - 1) {
		ctl_send(k, "err line too long\n");
		k->dead = true;
	}
}

static void sweep(struct server *s)
{
	size_t w = 0;

	for (size_t i = 0; i < s->nconns; i++) {
		if (s->conns[i]->dead)
			conn_free(s->conns[i]);
		else
			s->conns[w++] = s->conns[i];
	}
	s->nconns = w;
	w = 0;
	for (size_t i = 0; i < s->nctls; i++) {
		if (s->ctls[i]->dead) {
			close(s->ctls[i]->fd);
			bson_free(s->ctls[i]);
		} else {
			s->ctls[w++] = s->ctls[i];
		}
	}
	s->nctls = w;
}

static void on_term(int sig)
{
	(void)sig;
	g_term = 1;
}

static void serve(struct server *s, int64_t deadline, const sigset_t *waitmask)
{
	struct pollfd *pfds = NULL;
	size_t cap = 0;

	while (!g_term) {
		int64_t now = now_ms(), wake = deadline;
		size_t n = 2, nctls, nconns;
		struct timespec ts;
		int rc;

		if (now >= deadline)
			break;
		for (size_t i = 0; i < s->nconns; i++) {
			stream_tick(s, s->conns[i], now);
			conn_flush(s->conns[i], now);
		}
		sweep(s);
		nctls = s->nctls;
		nconns = s->nconns;
		pfds = grow(pfds, &cap, 2 + nctls + nconns, sizeof *pfds);
		pfds[0] = (struct pollfd){s->lfd, POLLIN, 0};
		pfds[1] = (struct pollfd){s->ctl_lfd, POLLIN, 0};
		for (size_t i = 0; i < nctls; i++)
			pfds[n++] = (struct pollfd){s->ctls[i]->fd, POLLIN, 0};
		for (size_t i = 0; i < nconns; i++) {
			struct conn *c = s->conns[i];

			pfds[n++] =
			    (struct pollfd){c->fd, (short)(POLLIN | (c->head && c->head->due <= now ? POLLOUT : 0)), 0};
			if (c->head && c->head->due > now && c->head->due < wake)
				wake = c->head->due;
			if (c->stream_cmd && !c->head && c->stream_due < wake)
				wake = c->stream_due > now ? c->stream_due : now;
		}
		ts.tv_sec = (wake - now) / 1000;
		ts.tv_nsec = (long)((wake - now) % 1000) * 1000000L;
		rc = ppoll(pfds, n, &ts, waitmask);
		if (rc < 0) {
			if (errno == EINTR)
				continue;
			perror("mongo_double: ppoll");
			break;
		}
		if (pfds[0].fd >= 0 && pfds[0].revents)
			accept_clients(s);
		if (pfds[1].fd >= 0 && pfds[1].revents)
			accept_controls(s);
		for (size_t i = 0; i < nctls; i++)
			if (!s->ctls[i]->dead && pfds[2 + i].revents)
				ctl_read(s, s->ctls[i]);
		for (size_t i = 0; i < nconns; i++) {
			struct conn *c = s->conns[i];
			short re = pfds[2 + nctls + i].revents;

			if (!c->dead && (re & (POLLIN | POLLERR | POLLHUP)))
				conn_read(s, c);
			if (!c->dead && (re & POLLOUT))
				conn_flush(c, now_ms());
		}
	}
	bson_free(pfds);
}

static int write_port_file(const char *path, int port, int ctl_port)
{
	char tmp[4096];
	FILE *f;
	int ok;

	if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
		return -1;
	f = fopen(tmp, "we");
	if (!f)
		return -1;
	ok = fprintf(f, "%d\n", port) > 0;
	if (ctl_port > 0)
		ok = ok && fprintf(f, "%d\n", ctl_port) > 0;
	if (fclose(f) != 0 || !ok || rename(tmp, path) != 0) {
		unlink(tmp);
		return -1;
	}
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: mongo_double [--port N] [--port-file FILE] [--control PATH|@NAME|PORT]\n"
	           "                    [--max-lifetime SECONDS (default 600)] [--replset NAME] [--verbose]\n"
	           "A MongoDB wire-protocol test double bound to 127.0.0.1. The port file gets the\n"
	           "bound port (and the control port on a second line when --control is numeric).\n"
	           "The control socket is a Unix stream socket (@NAME: abstract namespace).\n"
	           "--replset: answer as the primary of a one-member replica set (drivers then send\n"
	           "retryable writes with txnNumber and gossip $clusterTime); default: standalone.\n"
	           "Control lines: delay MS | drop | drop-next [N] | drop-reply [N] | error CODE [N] |\n"
	           "               refuse on|off | stop | start | reset | clear | stats | ping\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"port", required_argument, NULL, 'p'},    {"port-file", required_argument, NULL, 'f'},
	    {"control", required_argument, NULL, 'c'}, {"max-lifetime", required_argument, NULL, 'l'},
	    {"verbose", no_argument, NULL, 'v'},       {"replset", required_argument, NULL, 'r'},
	    {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
	};
	struct server s;
	const char *port_file = NULL, *control = NULL;
	uint64_t port = 0, lifetime = MD_DEFAULT_LIFETIME, v;
	sigset_t block, waitmask;
	struct sigaction sa;
	int opt, rc = 0;

	memset(&s, 0, sizeof s);
	s.lfd = s.ctl_lfd = -1;
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 'p':
			if (!parse_count(optarg, 0, 65535, &port))
				goto bad_usage;
			break;
		case 'f': port_file = optarg; break;
		case 'c': control = optarg; break;
		case 'l':
			if (!parse_count(optarg, 1, 86400, &lifetime))
				goto bad_usage;
			break;
		case 'v': s.verbose = true; break;
		case 'r':
			if (!*optarg || strlen(optarg) > 64)
				goto bad_usage;
			s.replset = optarg;
			break;
		case 'h': usage(stdout); return 0;
		default: goto bad_usage;
		}
	}
	if (optind != argc)
		goto bad_usage;

	/* Die with the test that started us, whatever happens to it. */
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigprocmask(SIG_BLOCK, &block, &waitmask);
	sigdelset(&waitmask, SIGTERM);
	sigdelset(&waitmask, SIGINT);
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	s.lfd = listen_tcp((int)port, &s.port);
	if (s.lfd < 0) {
		perror("mongo_double: listen");
		return 1;
	}
	if (control && parse_count(control, 0, 65535, &v)) {
		s.ctl_lfd = listen_tcp((int)v, &s.ctl_port);
	} else if (control) {
		s.ctl_lfd = listen_unix(control);
		s.ctl_path = control;
	}
	if (control && s.ctl_lfd < 0) {
		perror("mongo_double: control socket");
		close(s.lfd);
		return 1;
	}
	if (port_file && write_port_file(port_file, s.port, s.ctl_port) != 0) {
		perror("mongo_double: port file");
		rc = 1;
	}
	s.cmd_counts = bson_malloc0((N_COMMANDS + 1) * sizeof *s.cmd_counts);
	s.next_cursor_id = ((int64_t)(time(NULL) & 0xFFFF) << 32) + 1;
	bson_oid_init(&s.process_id, NULL);
	if (!rc)
		serve(&s, now_ms() + (int64_t)lifetime * 1000, &waitmask);

	for (size_t i = 0; i < s.nconns; i++)
		conn_free(s.conns[i]);
	for (size_t i = 0; i < s.nctls; i++) {
		close(s.ctls[i]->fd);
		bson_free(s.ctls[i]);
	}
	clear_data(&s);
	bson_free(s.conns);
	bson_free(s.ctls);
	bson_free(s.colls);
	bson_free(s.curs);
	bson_free(s.sessions);
	bson_free(s.cmd_counts);
	if (s.lfd >= 0)
		close(s.lfd);
	if (s.ctl_lfd >= 0)
		close(s.ctl_lfd);
	if (s.ctl_path && s.ctl_path[0] != '@')
		unlink(s.ctl_path);
	return rc;

bad_usage:
	usage(stderr);
	return 2;
}
