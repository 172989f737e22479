/* test_mongo_double.c - drives tests/mongo_double with the real libmongoc.
 *
 * Every test starts its own double (mongo_double.h) and talks to it through a
 * mongoc_client_pool_t, as resil's MongoDB store does: CRUD, unique indexes,
 * cursors with getMore, count_documents' aggregate, array membership, then the
 * fault injection the store's resilience tests rely on (stop/start, delay,
 * error codes, dropped and refused connections). A few tests speak raw wire
 * protocol to pin down framing details libmongoc never exercises.
 */
#define _GNU_SOURCE
#include "mongo_double.h"

#include <check.h>
#include <errno.h>
#include <mongoc/mongoc.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DB "resil_test"

static struct mdouble md;
static mongoc_client_pool_t *pool;
static mongoc_client_t *client;

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void quiet_log(mongoc_log_level_t level, const char *domain, const char *message, void *data)
{
	(void)data;
	if (level <= MONGOC_LOG_LEVEL_ERROR)
		fprintf(stderr, "mongoc %s: %s\n", domain, message);
}

static void setup(void)
{
	mongoc_uri_t *uri;

	ck_assert_int_eq(mdouble_start(&md), 0);
	uri = mongoc_uri_new(md.uri);
	ck_assert_ptr_nonnull(uri);
	pool = mongoc_client_pool_new(uri);
	mongoc_uri_destroy(uri);
	ck_assert_ptr_nonnull(pool);
	ck_assert(mongoc_client_pool_set_error_api(pool, MONGOC_ERROR_API_VERSION_2));
	client = mongoc_client_pool_pop(pool);
	ck_assert_ptr_nonnull(client);
}

static void teardown(void)
{
	if (client)
		mongoc_client_pool_push(pool, client);
	client = NULL;
	if (pool)
		mongoc_client_pool_destroy(pool);
	pool = NULL;
	mdouble_stop(&md);
}

static bool ping(bson_error_t *err)
{
	bson_t *cmd = BCON_NEW("ping", BCON_INT32(1));
	bool ok = mongoc_client_command_simple(client, "admin", cmd, NULL, NULL, err);

	bson_destroy(cmd);
	return ok;
}

/* Pings until it works or timeout_ms passes; returns the attempts used, 0 if none worked. */
static int ping_until_ok(int64_t timeout_ms)
{
	int64_t end = now_ms() + timeout_ms;
	bson_error_t err;

	for (int attempt = 1;; attempt++) {
		if (ping(&err))
			return attempt;
		if (now_ms() > end)
			return 0;
		sleep_ms(50);
	}
}

static mongoc_collection_t *coll(const char *name)
{
	return mongoc_client_get_collection(client, DB, name);
}

static void create_unique_index(const char *collection, const char *field)
{
	mongoc_database_t *db = mongoc_client_get_database(client, DB);
	char name[64];
	bson_error_t err;
	bson_t *cmd;
	bool ok;

	snprintf(name, sizeof name, "%s_1", field);
	cmd = BCON_NEW("createIndexes", BCON_UTF8(collection), "indexes", "[", "{", "key", "{", field, BCON_INT32(1),
	               "}", "name", BCON_UTF8(name), "unique", BCON_BOOL(true), "}", "]");
	ok = mongoc_database_write_command_with_opts(db, cmd, NULL, NULL, &err);
	bson_destroy(cmd);
	mongoc_database_destroy(db);
	ck_assert_msg(ok, "createIndexes: %s", err.message);
}

static void insert_json(mongoc_collection_t *c, const char *json)
{
	bson_error_t err;
	bson_t *doc = bson_new_from_json((const uint8_t *)json, -1, &err);
	bool ok;

	ck_assert_msg(doc != NULL, "bad json %s", json);
	ok = mongoc_collection_insert_one(c, doc, NULL, NULL, &err);
	bson_destroy(doc);
	ck_assert_msg(ok, "insert %s: %s", json, err.message);
}

static int64_t count_json(mongoc_collection_t *c, const char *filter_json)
{
	bson_error_t err;
	bson_t *filter = bson_new_from_json((const uint8_t *)filter_json, -1, &err);
	int64_t n;

	ck_assert_msg(filter != NULL, "bad json %s", filter_json);
	n = mongoc_collection_count_documents(c, filter, NULL, NULL, NULL, &err);
	bson_destroy(filter);
	ck_assert_msg(n >= 0, "count %s: %s", filter_json, err.message);
	return n;
}

static int32_t int_field(const bson_t *doc, const char *key)
{
	bson_iter_t it;

	ck_assert_msg(bson_iter_init_find(&it, doc, key), "missing %s", key);
	return (int32_t)bson_iter_as_int64(&it);
}

static const char *str_field(const bson_t *doc, const char *key)
{
	bson_iter_t it;

	if (!bson_iter_init_find(&it, doc, key) || !BSON_ITER_HOLDS_UTF8(&it))
		return NULL;
	return bson_iter_utf8(&it, NULL);
}

/* ------------------------------------------------------------ basics */

START_TEST(test_double_answers_ping_through_client_pool)
{
	bson_error_t err;

	ck_assert_msg(ping(&err), "ping: %s", err.message);
	ck_assert_int_ge(mdouble_stat(&md, "ping"), 1);
}
END_TEST

START_TEST(test_unknown_command_fails_with_code_59)
{
	bson_t *cmd = BCON_NEW("frobnicate", BCON_INT32(1));
	bson_error_t err;
	bool ok = mongoc_client_command_simple(client, DB, cmd, NULL, NULL, &err);

	bson_destroy(cmd);
	ck_assert(!ok);
	ck_assert_uint_eq(err.domain, MONGOC_ERROR_SERVER);
	ck_assert_uint_eq(err.code, 59);
	ck_assert_ptr_nonnull(strstr(err.message, "no such command"));
}
END_TEST

START_TEST(test_unique_index_rejects_duplicate_with_11000)
{
	mongoc_collection_t *users = coll("users");
	bson_error_t err;
	bson_t *dup = BCON_NEW("email", BCON_UTF8("a@example.com"), "username", BCON_UTF8("other"));
	bool ok;

	create_unique_index("users", "email");
	insert_json(users, "{\"email\": \"a@example.com\", \"username\": \"alice\"}");
	insert_json(users, "{\"email\": \"b@example.com\", \"username\": \"bob\"}");
	ok = mongoc_collection_insert_one(users, dup, NULL, NULL, &err);
	ck_assert(!ok);
	ck_assert_uint_eq(err.domain, MONGOC_ERROR_SERVER);
	ck_assert_uint_eq(err.code, 11000);
	ck_assert_ptr_nonnull(strstr(err.message, "E11000 duplicate key error"));
	ck_assert_int_eq(count_json(users, "{}"), 2);
	bson_destroy(dup);
	mongoc_collection_destroy(users);
}
END_TEST

START_TEST(test_find_applies_filter_sort_skip_limit)
{
	mongoc_collection_t *posts = coll("posts");
	bson_t *filter = BCON_NEW("group", BCON_UTF8("even"));
	bson_t *opts = BCON_NEW("sort", "{", "n", BCON_INT32(-1), "}", "skip", BCON_INT64(1), "limit", BCON_INT64(3));
	const int expected[] = {6, 4, 2};
	mongoc_cursor_t *cur;
	const bson_t *doc;
	bson_error_t err;
	int seen = 0;

	for (int i = 0; i < 10; i++) {
		int n = (i * 7) % 10;
		bson_t *d = BCON_NEW("n", BCON_INT32(n), "group", BCON_UTF8(n % 2 ? "odd" : "even"));

		ck_assert(mongoc_collection_insert_one(posts, d, NULL, NULL, &err));
		bson_destroy(d);
	}
	cur = mongoc_collection_find_with_opts(posts, filter, opts, NULL);
	while (mongoc_cursor_next(cur, &doc)) {
		ck_assert_int_lt(seen, 3);
		ck_assert_int_eq(int_field(doc, "n"), expected[seen]);
		seen++;
	}
	ck_assert_msg(!mongoc_cursor_error(cur, &err), "find: %s", err.message);
	ck_assert_int_eq(seen, 3);
	mongoc_cursor_destroy(cur);
	bson_destroy(filter);
	bson_destroy(opts);
	mongoc_collection_destroy(posts);
}
END_TEST

START_TEST(test_small_batch_size_forces_get_more)
{
	mongoc_collection_t *msgs = coll("messages");
	bson_t filter = BSON_INITIALIZER;
	bson_t *opts = BCON_NEW("sort", "{", "n", BCON_INT32(1), "}", "batchSize", BCON_INT32(4));
	mongoc_cursor_t *cur;
	const bson_t *doc;
	bson_error_t err;
	int seen = 0;

	for (int i = 24; i >= 0; i--) {
		bson_t *d = BCON_NEW("n", BCON_INT32(i));

		ck_assert(mongoc_collection_insert_one(msgs, d, NULL, NULL, &err));
		bson_destroy(d);
	}
	cur = mongoc_collection_find_with_opts(msgs, &filter, opts, NULL);
	while (mongoc_cursor_next(cur, &doc))
		ck_assert_int_eq(int_field(doc, "n"), seen++);
	ck_assert_msg(!mongoc_cursor_error(cur, &err), "find: %s", err.message);
	ck_assert_int_eq(seen, 25);
	mongoc_cursor_destroy(cur);
	ck_assert_int_ge(mdouble_stat(&md, "getMore"), 6);
	ck_assert_int_eq(mdouble_stat(&md, "cursors"), 0);
	bson_destroy(opts);
	mongoc_collection_destroy(msgs);
}
END_TEST

START_TEST(test_abandoned_cursor_is_killed)
{
	mongoc_collection_t *msgs = coll("messages");
	bson_t filter = BSON_INITIALIZER;
	bson_t *opts = BCON_NEW("batchSize", BCON_INT32(2));
	mongoc_cursor_t *cur;
	const bson_t *doc;
	bson_error_t err;

	for (int i = 0; i < 10; i++) {
		bson_t *d = BCON_NEW("n", BCON_INT32(i));

		ck_assert(mongoc_collection_insert_one(msgs, d, NULL, NULL, &err));
		bson_destroy(d);
	}
	cur = mongoc_collection_find_with_opts(msgs, &filter, opts, NULL);
	ck_assert(mongoc_cursor_next(cur, &doc));
	ck_assert_int_eq(mdouble_stat(&md, "cursors"), 1);
	mongoc_cursor_destroy(cur);
	ck_assert_int_eq(mdouble_stat(&md, "cursors"), 0);
	ck_assert_int_ge(mdouble_stat(&md, "killCursors"), 1);
	bson_destroy(opts);
	mongoc_collection_destroy(msgs);
}
END_TEST

START_TEST(test_update_operators_change_only_matching_documents)
{
	mongoc_collection_t *users = coll("users");
	bson_t *sel = BCON_NEW("username", BCON_UTF8("bob"));
	bson_t *upd = BCON_NEW("$set", "{", "role", BCON_UTF8("admin"), "}", "$inc", "{", "logins", BCON_INT32(2), "}");
	bson_t *all = BCON_NEW("role", BCON_UTF8("user"));
	bson_t *unset = BCON_NEW("$unset", "{", "tmp", BCON_UTF8(""), "}");
	bson_t reply;
	bson_error_t err;

	insert_json(users, "{\"username\": \"alice\", \"role\": \"user\", \"tmp\": 1, \"logins\": 1}");
	insert_json(users, "{\"username\": \"bob\", \"role\": \"user\", \"tmp\": 1, \"logins\": 1}");
	insert_json(users, "{\"username\": \"carol\", \"role\": \"user\", \"tmp\": 1}");
	ck_assert_msg(mongoc_collection_update_one(users, sel, upd, NULL, &reply, &err), "%s", err.message);
	ck_assert_int_eq(int_field(&reply, "matchedCount"), 1);
	ck_assert_int_eq(int_field(&reply, "modifiedCount"), 1);
	bson_destroy(&reply);
	ck_assert_int_eq(count_json(users, "{\"role\": \"admin\", \"logins\": 3}"), 1);
	ck_assert_int_eq(count_json(users, "{\"role\": \"user\", \"logins\": 1}"), 1);

	ck_assert_msg(mongoc_collection_update_many(users, all, unset, NULL, &reply, &err), "%s", err.message);
	ck_assert_int_eq(int_field(&reply, "matchedCount"), 2);
	ck_assert_int_eq(int_field(&reply, "modifiedCount"), 2);
	bson_destroy(&reply);
	ck_assert_int_eq(count_json(users, "{\"tmp\": {\"$exists\": true}}"), 1);

	bson_destroy(sel);
	bson_destroy(upd);
	bson_destroy(all);
	bson_destroy(unset);
	mongoc_collection_destroy(users);
}
END_TEST

START_TEST(test_upsert_inserts_query_fields_and_reports_id)
{
	mongoc_collection_t *users = coll("users");
	bson_t *sel = BCON_NEW("username", BCON_UTF8("dave"));
	bson_t *upd = BCON_NEW("$set", "{", "email", BCON_UTF8("d@example.com"), "}");
	bson_t *opts = BCON_NEW("upsert", BCON_BOOL(true));
	bson_t reply;
	bson_error_t err;
	bson_iter_t it;

	ck_assert_msg(mongoc_collection_update_one(users, sel, upd, opts, &reply, &err), "%s", err.message);
	ck_assert_int_eq(int_field(&reply, "upsertedCount"), 1);
	ck_assert(bson_iter_init_find(&it, &reply, "upsertedId") && BSON_ITER_HOLDS_OID(&it));
	bson_destroy(&reply);
	ck_assert_int_eq(count_json(users, "{\"username\": \"dave\", \"email\": \"d@example.com\"}"), 1);
	bson_destroy(sel);
	bson_destroy(upd);
	bson_destroy(opts);
	mongoc_collection_destroy(users);
}
END_TEST

START_TEST(test_update_into_duplicate_key_fails_with_11000)
{
	mongoc_collection_t *users = coll("users");
	bson_t *sel = BCON_NEW("username", BCON_UTF8("bob"));
	bson_t *upd = BCON_NEW("$set", "{", "email", BCON_UTF8("a@example.com"), "}");
	bson_error_t err;

	create_unique_index("users", "email");
	insert_json(users, "{\"username\": \"alice\", \"email\": \"a@example.com\"}");
	insert_json(users, "{\"username\": \"bob\", \"email\": \"b@example.com\"}");
	ck_assert(!mongoc_collection_update_one(users, sel, upd, NULL, NULL, &err));
	ck_assert_uint_eq(err.code, 11000);
	ck_assert_int_eq(count_json(users, "{\"email\": \"b@example.com\"}"), 1);
	bson_destroy(sel);
	bson_destroy(upd);
	mongoc_collection_destroy(users);
}
END_TEST

START_TEST(test_delete_one_and_many_remove_matching_documents)
{
	mongoc_collection_t *posts = coll("posts");
	bson_t *sel = BCON_NEW("kind", BCON_UTF8("draft"));
	bson_t reply;
	bson_error_t err;

	for (int i = 0; i < 4; i++)
		insert_json(posts, "{\"kind\": \"draft\"}");
	insert_json(posts, "{\"kind\": \"final\"}");
	ck_assert_msg(mongoc_collection_delete_one(posts, sel, NULL, &reply, &err), "%s", err.message);
	ck_assert_int_eq(int_field(&reply, "deletedCount"), 1);
	bson_destroy(&reply);
	ck_assert_msg(mongoc_collection_delete_many(posts, sel, NULL, &reply, &err), "%s", err.message);
	ck_assert_int_eq(int_field(&reply, "deletedCount"), 3);
	bson_destroy(&reply);
	ck_assert_int_eq(count_json(posts, "{}"), 1);
	ck_assert_int_eq(count_json(posts, "{\"kind\": \"final\"}"), 1);
	bson_destroy(sel);
	mongoc_collection_destroy(posts);
}
END_TEST

START_TEST(test_count_documents_counts_matching_with_skip_and_limit)
{
	mongoc_collection_t *patients = coll("patients");
	bson_t *filter = BCON_NEW("status", BCON_UTF8("active"));
	bson_t *opts = BCON_NEW("skip", BCON_INT64(1), "limit", BCON_INT64(2));
	bson_error_t err;

	ck_assert_int_eq(count_json(patients, "{}"), 0);
	for (int i = 0; i < 4; i++)
		insert_json(patients, "{\"status\": \"active\"}");
	insert_json(patients, "{\"status\": \"discharged\"}");
	ck_assert_int_eq(count_json(patients, "{\"status\": \"active\"}"), 4);
	ck_assert_int_eq(count_json(patients, "{}"), 5);
	ck_assert_int_eq(mongoc_collection_count_documents(patients, filter, opts, NULL, NULL, &err), 2);
	ck_assert_int_ge(mdouble_stat(&md, "aggregate"), 4);
	bson_destroy(filter);
	bson_destroy(opts);
	mongoc_collection_destroy(patients);
}
END_TEST

START_TEST(test_array_field_matches_when_it_contains_the_value)
{
	mongoc_collection_t *rooms = coll("rooms");
	bson_t *sel = BCON_NEW("name", BCON_UTF8("r3"));
	bson_t *upd = BCON_NEW("$addToSet", "{", "members", BCON_UTF8("u1"), "}");
	bson_error_t err;

	insert_json(rooms, "{\"name\": \"r1\", \"members\": [\"u1\", \"u2\"]}");
	insert_json(rooms, "{\"name\": \"r2\", \"members\": [\"u2\"]}");
	insert_json(rooms, "{\"name\": \"r3\", \"members\": [\"u3\"]}");
	ck_assert_int_eq(count_json(rooms, "{\"members\": \"u2\"}"), 2);
	ck_assert_int_eq(count_json(rooms, "{\"members\": \"u1\"}"), 1);
	ck_assert_int_eq(count_json(rooms, "{\"members\": {\"$in\": [\"u3\", \"u9\"]}}"), 1);
	ck_assert_int_eq(count_json(rooms, "{\"members\": {\"$ne\": \"u2\"}}"), 1);
	ck_assert(mongoc_collection_update_one(rooms, sel, upd, NULL, NULL, &err));
	ck_assert(mongoc_collection_update_one(rooms, sel, upd, NULL, NULL, &err));
	ck_assert_int_eq(count_json(rooms, "{\"members\": \"u1\"}"), 2);
	ck_assert_int_eq(count_json(rooms, "{\"members\": {\"$size\": 2}}"), 2);
	bson_destroy(sel);
	bson_destroy(upd);
	mongoc_collection_destroy(rooms);
}
END_TEST

START_TEST(test_filter_operators_follow_mongodb_semantics)
{
	mongoc_collection_t *users = coll("users");
	bson_oid_t oid;
	bson_t *byid, *doc;
	bson_error_t err;

	bson_oid_init(&oid, NULL);
	doc = BCON_NEW("_id", BCON_OID(&oid), "age", BCON_INT32(40), "name", BCON_UTF8("x"));
	ck_assert(mongoc_collection_insert_one(users, doc, NULL, NULL, &err));
	bson_destroy(doc);
	insert_json(users, "{\"age\": 25.0, \"name\": \"y\", \"nick\": null}");
	insert_json(users, "{\"age\": 31, \"name\": \"z\", \"active\": true, \"addr\": {\"city\": \"Oslo\"}}");
	byid = BCON_NEW("_id", BCON_OID(&oid));
	ck_assert_int_eq(mongoc_collection_count_documents(users, byid, NULL, NULL, NULL, &err), 1);
	bson_destroy(byid);
	ck_assert_int_eq(count_json(users, "{\"age\": 25}"), 1);
	ck_assert_int_eq(count_json(users, "{\"age\": {\"$gt\": 25, \"$lte\": 40}}"), 2);
	ck_assert_int_eq(count_json(users, "{\"age\": {\"$lt\": 31}}"), 1);
	ck_assert_int_eq(count_json(users, "{\"age\": {\"$gte\": \"a\"}}"), 0);
	ck_assert_int_eq(count_json(users, "{\"name\": {\"$in\": [\"x\", \"z\"]}}"), 2);
	ck_assert_int_eq(count_json(users, "{\"name\": {\"$ne\": \"x\"}}"), 2);
	ck_assert_int_eq(count_json(users, "{\"$or\": [{\"name\": \"x\"}, {\"active\": true}]}"), 2);
	ck_assert_int_eq(count_json(users, "{\"$and\": [{\"age\": {\"$gt\": 20}}, {\"name\": \"y\"}]}"), 1);
	ck_assert_int_eq(count_json(users, "{\"active\": {\"$exists\": false}}"), 2);
	ck_assert_int_eq(count_json(users, "{\"nick\": null}"), 3);
	ck_assert_int_eq(count_json(users, "{\"addr.city\": \"Oslo\"}"), 1);
	mongoc_collection_destroy(users);
}
END_TEST

START_TEST(test_projection_and_regex_shape_find_results)
{
	mongoc_collection_t *patients = coll("patients");
	bson_t *filter = BCON_NEW("name", BCON_REGEX("^an", "i"));
	bson_t *opts = BCON_NEW("projection", "{", "ssn", BCON_INT32(0), "medicalRecord", BCON_INT32(0), "}", "sort",
	                        "{", "name", BCON_INT32(1), "}");
	mongoc_cursor_t *cur;
	const bson_t *doc;
	bson_error_t err;
	const char *expected[] = {"Anna", "andrew"};
	int seen = 0;

	insert_json(patients,
	            "{\"name\": \"andrew\", \"ssn\": \"1\", \"medicalRecord\": \"m\", \"status\": \"active\"}");
	insert_json(patients, "{\"name\": \"Anna\", \"ssn\": \"2\", \"medicalRecord\": \"m\", \"status\": \"active\"}");
	insert_json(patients, "{\"name\": \"Bob\", \"ssn\": \"3\", \"medicalRecord\": \"m\", \"status\": \"active\"}");
	cur = mongoc_collection_find_with_opts(patients, filter, opts, NULL);
	while (mongoc_cursor_next(cur, &doc)) {
		ck_assert_int_lt(seen, 2);
		ck_assert_str_eq(str_field(doc, "name"), expected[seen]);
		ck_assert_str_eq(str_field(doc, "status"), "active");
		ck_assert(!bson_has_field(doc, "ssn"));
		ck_assert(!bson_has_field(doc, "medicalRecord"));
		ck_assert(bson_has_field(doc, "_id"));
		seen++;
	}
	ck_assert_msg(!mongoc_cursor_error(cur, &err), "find: %s", err.message);
	ck_assert_int_eq(seen, 2);
	mongoc_cursor_destroy(cur);
	bson_destroy(filter);
	bson_destroy(opts);
	mongoc_collection_destroy(patients);
}
END_TEST

START_TEST(test_find_and_modify_returns_updated_document)
{
	mongoc_collection_t *posts = coll("posts");
	mongoc_find_and_modify_opts_t *opts = mongoc_find_and_modify_opts_new();
	bson_t *query = BCON_NEW("title", BCON_UTF8("t1"));
	bson_t *upd = BCON_NEW("$set", "{", "title", BCON_UTF8("t2"), "}");
	bson_t reply, value;
	bson_iter_t it;
	bson_error_t err;

	insert_json(posts, "{\"title\": \"t1\"}");
	mongoc_find_and_modify_opts_set_update(opts, upd);
	mongoc_find_and_modify_opts_set_flags(opts, MONGOC_FIND_AND_MODIFY_RETURN_NEW);
	ck_assert_msg(mongoc_collection_find_and_modify_with_opts(posts, query, opts, &reply, &err), "%s", err.message);
	ck_assert(bson_iter_init_find(&it, &reply, "value") && BSON_ITER_HOLDS_DOCUMENT(&it));
	{
		uint32_t len;
		const uint8_t *data;

		bson_iter_document(&it, &len, &data);
		ck_assert(bson_init_static(&value, data, len));
		ck_assert_str_eq(str_field(&value, "title"), "t2");
	}
	bson_destroy(&reply);
	mongoc_find_and_modify_opts_destroy(opts);
	bson_destroy(query);
	bson_destroy(upd);
	mongoc_collection_destroy(posts);
}
END_TEST

START_TEST(test_drop_and_clear_remove_data)
{
	mongoc_collection_t *posts = coll("posts");
	bson_error_t err;

	insert_json(posts, "{\"a\": 1}");
	ck_assert_msg(mongoc_collection_drop(posts, &err), "%s", err.message);
	ck_assert_int_eq(count_json(posts, "{}"), 0);
	insert_json(posts, "{\"a\": 1}");
	ck_assert_int_eq(mdouble_cmd(&md, "clear"), 0);
	ck_assert_int_eq(count_json(posts, "{}"), 0);
	mongoc_collection_destroy(posts);
}
END_TEST

struct inserter {
	int id;
	int inserted;
};

static void *insert_many(void *arg)
{
	struct inserter *ins = arg;
	mongoc_client_t *c = mongoc_client_pool_pop(pool);
	mongoc_collection_t *msgs = mongoc_client_get_collection(c, DB, "messages");

	for (int i = 0; i < 50; i++) {
		bson_t *d = BCON_NEW("thread", BCON_INT32(ins->id), "i", BCON_INT32(i));

		if (mongoc_collection_insert_one(msgs, d, NULL, NULL, NULL))
			ins->inserted++;
		bson_destroy(d);
	}
	mongoc_collection_destroy(msgs);
	mongoc_client_pool_push(pool, c);
	return NULL;
}

START_TEST(test_concurrent_pooled_clients_are_all_served)
{
	mongoc_collection_t *msgs = coll("messages");
	struct inserter ins[8];
	pthread_t threads[8];

	for (int t = 0; t < 8; t++) {
		ins[t].id = t;
		ins[t].inserted = 0;
		ck_assert_int_eq(pthread_create(&threads[t], NULL, insert_many, &ins[t]), 0);
	}
	for (int t = 0; t < 8; t++) {
		ck_assert_int_eq(pthread_join(threads[t], NULL), 0);
		ck_assert_int_eq(ins[t].inserted, 50);
	}
	ck_assert_int_eq(count_json(msgs, "{}"), 400);
	ck_assert_int_eq(count_json(msgs, "{\"thread\": 7}"), 50);
	ck_assert_int_ge(mdouble_stat(&md, "accepted"), 3);
	mongoc_collection_destroy(msgs);
}
END_TEST

/* ------------------------------------------------------------ faults */

START_TEST(test_stop_fails_commands_and_start_recovers)
{
	bson_error_t err;
	int64_t t0, elapsed;

	ck_assert(ping(&err));
	ck_assert_int_eq(mdouble_cmd(&md, "stop"), 0);
	ck_assert(!ping(&err)); /* the pooled connection was closed */
	t0 = now_ms();
	ck_assert(!ping(&err)); /* server selection finds nothing listening */
	elapsed = now_ms() - t0;
	ck_assert_int_lt(elapsed, 5000);
	ck_assert_int_eq(mdouble_cmd(&md, "start"), 0);
	ck_assert_int_gt(ping_until_ok(5000), 0);
}
END_TEST

START_TEST(test_delay_holds_every_reply)
{
	bson_error_t err;
	int64_t t0;

	ck_assert(ping(&err));
	ck_assert_int_eq(mdouble_cmd(&md, "delay 300"), 0);
	t0 = now_ms();
	ck_assert_msg(ping(&err), "%s", err.message);
	ck_assert_int_ge(now_ms() - t0, 300);
	ck_assert_int_eq(mdouble_cmd(&md, "reset"), 0);
	ck_assert(ping(&err));
}
END_TEST

START_TEST(test_error_fault_fails_next_command_with_code)
{
	mongoc_collection_t *posts = coll("posts");
	bson_t *doc = BCON_NEW("a", BCON_INT32(1));
	bson_error_t err;

	ck_assert(ping(&err));
	ck_assert_int_eq(mdouble_cmd(&md, "error 91 1"), 0);
	ck_assert(!ping(&err));
	ck_assert_uint_eq(err.domain, MONGOC_ERROR_SERVER);
	ck_assert_uint_eq(err.code, 91);
	ck_assert_int_gt(ping_until_ok(5000), 0);

	ck_assert_int_eq(mdouble_cmd(&md, "error 11600 1"), 0);
	ck_assert(!mongoc_collection_insert_one(posts, doc, NULL, NULL, &err));
	ck_assert_uint_eq(err.code, 11600);
	ck_assert_int_gt(ping_until_ok(5000), 0);
	ck_assert_int_eq(count_json(posts, "{}"), 0);
	bson_destroy(doc);
	mongoc_collection_destroy(posts);
}
END_TEST

START_TEST(test_drop_closes_connections_and_retry_recovers)
{
	bson_error_t err;
	long long accepted;

	ck_assert(ping(&err));
	accepted = mdouble_stat(&md, "accepted");
	ck_assert_int_gt(accepted, 0);
	ck_assert_int_eq(mdouble_cmd(&md, "drop"), 0);
	ck_assert_int_gt(ping_until_ok(5000), 0);
	ck_assert_int_gt(mdouble_stat(&md, "accepted"), accepted);
}
END_TEST

START_TEST(test_drop_next_closes_instead_of_replying)
{
	bson_error_t err;

	ck_assert(ping(&err));
	ck_assert_int_eq(mdouble_cmd(&md, "drop-next 1"), 0);
	ck_assert(!ping(&err));
	ck_assert_uint_eq(err.domain, MONGOC_ERROR_STREAM);
	ck_assert_int_gt(ping_until_ok(5000), 0);
}
END_TEST

START_TEST(test_refuse_blocks_new_connections_until_off)
{
	bson_error_t err;

	ck_assert(ping(&err));
	ck_assert_int_eq(mdouble_cmd(&md, "refuse on"), 0);
	ck_assert_int_eq(mdouble_cmd(&md, "drop"), 0);
	ck_assert(!ping(&err));
	ck_assert(!ping(&err));
	ck_assert_int_eq(mdouble_cmd(&md, "refuse off"), 0);
	ck_assert_int_gt(ping_until_ok(5000), 0);
}
END_TEST

START_TEST(test_control_rejects_malformed_commands)
{
	char reply[256];

	ck_assert_int_eq(mdouble_query(&md, "delay soon", reply, sizeof reply), -1);
	ck_assert_ptr_nonnull(strstr(reply, "err"));
	ck_assert_int_eq(mdouble_cmd(&md, "explode"), -1);
	ck_assert_int_eq(mdouble_cmd(&md, "error 91 2"), 0);
	ck_assert_int_eq(mdouble_cmd(&md, "reset"), 0);
	ck_assert_int_eq(mdouble_query(&md, "stats", reply, sizeof reply), 0);
	ck_assert_ptr_nonnull(strstr(reply, "served="));
}
END_TEST

/* ------------------------------------------------------------ process */

START_TEST(test_double_exits_cleanly_on_sigterm)
{
	int status;

	ck_assert_int_eq(kill(md.pid, SIGTERM), 0);
	ck_assert_int_eq(waitpid(md.pid, &status, 0), md.pid);
	md.pid = 0;
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), 0);
}
END_TEST

START_TEST(test_double_exits_after_max_lifetime)
{
	struct mdouble short_lived;
	int status = 0;
	pid_t r = 0;

	ck_assert_int_eq(mdouble_start_lifetime(&short_lived, 1), 0);
	for (int i = 0; i < 1000 && r == 0; i++) {
		r = waitpid(short_lived.pid, &status, WNOHANG);
		if (r == 0)
			sleep_ms(10);
	}
	ck_assert_int_eq(r, short_lived.pid);
	short_lived.pid = 0;
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), 0);
	mdouble_stop(&short_lived);
}
END_TEST

/* ------------------------------------------------------------ raw wire */

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

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int raw_connect(void)
{
	struct sockaddr_in sa;
	struct timeval tv = {5, 0};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	ck_assert_int_ge(fd, 0);
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)md.port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	return fd;
}

/* Builds an OP_MSG with one body section into buf; returns its length. */
static size_t op_msg(uint8_t *buf, size_t cap, int32_t req_id, uint32_t flags, const bson_t *body)
{
	size_t len = 16 + 4 + 1 + body->len + ((flags & 1u) ? 4 : 0);

	ck_assert_uint_le(len, cap);
	put32(buf, (uint32_t)len);
	put32(buf + 4, (uint32_t)req_id);
	put32(buf + 8, 0);
	put32(buf + 12, 2013);
	put32(buf + 16, flags);
	buf[20] = 0;
	memcpy(buf + 21, bson_get_data(body), body->len);
	if (flags & 1u)
		put32(buf + len - 4, crc32c(buf, len - 4));
	return len;
}

/* Reads one whole message; returns its length, or 0 if the peer closed. */
static size_t read_msg(int fd, uint8_t *buf, size_t cap)
{
	size_t got = 0, want = 16;

	while (got < want) {
		ssize_t n = recv(fd, buf + got, want - got, 0);

		if (n < 0 && errno == EINTR)
			continue;
		ck_assert_msg(n >= 0, "recv: %s", strerror(errno));
		if (n == 0)
			return 0;
		got += (size_t)n;
		if (got == 16) {
			want = get32(buf);
			ck_assert_uint_le(want, cap);
			ck_assert_uint_ge(want, 16);
		}
	}
	return got;
}

START_TEST(test_op_msg_checksum_is_verified)
{
	uint8_t buf[1024];
	bson_t *cmd = BCON_NEW("ping", BCON_INT32(1), "$db", BCON_UTF8("admin"));
	bson_t reply;
	size_t len;
	int fd = raw_connect();

	len = op_msg(buf, sizeof buf, 77, 1u, cmd);
	ck_assert_int_eq(send(fd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
	len = read_msg(fd, buf, sizeof buf);
	ck_assert_uint_gt(len, 21);
	ck_assert_uint_eq(get32(buf + 8), 77);
	ck_assert_uint_eq(get32(buf + 12), 2013);
	ck_assert_uint_eq(get32(buf + 16), 0);
	ck_assert(bson_init_static(&reply, buf + 21, len - 21));
	ck_assert_int_eq(int_field(&reply, "ok"), 1);

	len = op_msg(buf, sizeof buf, 78, 1u, cmd);
	buf[len - 1] ^= 0xFF;
	ck_assert_int_eq(send(fd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
	ck_assert_uint_eq(read_msg(fd, buf, sizeof buf), 0);
	close(fd);
	bson_destroy(cmd);
}
END_TEST

START_TEST(test_op_msg_unknown_required_flag_closes_connection)
{
	uint8_t buf[1024];
	bson_t *cmd = BCON_NEW("ping", BCON_INT32(1), "$db", BCON_UTF8("admin"));
	size_t len = op_msg(buf, sizeof buf, 5, 1u << 4, cmd);
	int fd = raw_connect();

	ck_assert_int_eq(send(fd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
	ck_assert_uint_eq(read_msg(fd, buf, sizeof buf), 0);
	close(fd);
	bson_destroy(cmd);
}
END_TEST

START_TEST(test_op_msg_more_to_come_gets_no_reply)
{
	uint8_t buf[1024];
	bson_t *ins = BCON_NEW("insert", BCON_UTF8("posts"), "documents", "[", "{", "a", BCON_INT32(1), "}", "]", "$db",
	                       BCON_UTF8(DB));
	bson_t *cmd = BCON_NEW("ping", BCON_INT32(1), "$db", BCON_UTF8("admin"));
	mongoc_collection_t *posts = coll("posts");
	size_t len;
	int fd = raw_connect();

	len = op_msg(buf, sizeof buf, 10, 2u, ins);
	ck_assert_int_eq(send(fd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
	len = op_msg(buf, sizeof buf, 11, 0, cmd);
	ck_assert_int_eq(send(fd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
	ck_assert_uint_gt(read_msg(fd, buf, sizeof buf), 0);
	ck_assert_uint_eq(get32(buf + 8), 11);
	ck_assert_int_eq(count_json(posts, "{}"), 1);
	close(fd);
	mongoc_collection_destroy(posts);
	bson_destroy(ins);
	bson_destroy(cmd);
}
END_TEST

START_TEST(test_op_query_handshake_gets_op_reply)
{
	uint8_t buf[2048];
	bson_t *q = BCON_NEW("isMaster", BCON_INT32(1));
	bson_t *find = BCON_NEW("find", BCON_UTF8("posts"));
	const bson_t *docs[] = {q, find};
	int fd = raw_connect();

	for (int i = 0; i < 2; i++) {
		size_t len = 16 + 4 + 11 + 8 + docs[i]->len, got;
		bson_t reply;

		put32(buf, (uint32_t)len);
		put32(buf + 4, (uint32_t)(40 + i));
		put32(buf + 8, 0);
		put32(buf + 12, 2004);
		put32(buf + 16, 0);
		memcpy(buf + 20, "admin.$cmd", 11);
		put32(buf + 31, 0);
		put32(buf + 35, (uint32_t)-1);
		memcpy(buf + 39, bson_get_data(docs[i]), docs[i]->len);
		ck_assert_int_eq(send(fd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
		got = read_msg(fd, buf, sizeof buf);
		ck_assert_uint_gt(got, 36);
		ck_assert_uint_eq(get32(buf + 8), (uint32_t)(40 + i));
		ck_assert_uint_eq(get32(buf + 12), 1);
		ck_assert_uint_eq(get32(buf + 32), 1);
		ck_assert(bson_init_static(&reply, buf + 36, got - 36));
		if (i == 0) {
			ck_assert_int_eq(int_field(&reply, "ok"), 1);
			ck_assert_int_eq(int_field(&reply, "maxWireVersion"), 17);
			ck_assert_int_eq(int_field(&reply, "ismaster"), 1);
		} else {
			ck_assert_int_eq(int_field(&reply, "ok"), 0);
			ck_assert_int_eq(int_field(&reply, "code"), 352);
		}
	}
	close(fd);
	bson_destroy(q);
	bson_destroy(find);
}
END_TEST

static void add(Suite *s, const char *name, const TTest *test)
{
	TCase *tc = tcase_create(name);

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test);
	suite_add_tcase(s, tc);
}

int main(void)
{
	Suite *s = suite_create("mongo_double");
	SRunner *sr;
	int failed;

	mongoc_init();
	mongoc_log_set_handler(quiet_log, NULL);
	add(s, "ping", test_double_answers_ping_through_client_pool);
	add(s, "unknown_command", test_unknown_command_fails_with_code_59);
	add(s, "unique_index", test_unique_index_rejects_duplicate_with_11000);
	add(s, "find", test_find_applies_filter_sort_skip_limit);
	add(s, "get_more", test_small_batch_size_forces_get_more);
	add(s, "kill_cursors", test_abandoned_cursor_is_killed);
	add(s, "update", test_update_operators_change_only_matching_documents);
	add(s, "upsert", test_upsert_inserts_query_fields_and_reports_id);
	add(s, "update_duplicate", test_update_into_duplicate_key_fails_with_11000);
	add(s, "delete", test_delete_one_and_many_remove_matching_documents);
	add(s, "count", test_count_documents_counts_matching_with_skip_and_limit);
	add(s, "array_membership", test_array_field_matches_when_it_contains_the_value);
	add(s, "filter_operators", test_filter_operators_follow_mongodb_semantics);
	add(s, "projection_regex", test_projection_and_regex_shape_find_results);
	add(s, "find_and_modify", test_find_and_modify_returns_updated_document);
	add(s, "drop_and_clear", test_drop_and_clear_remove_data);
	add(s, "concurrency", test_concurrent_pooled_clients_are_all_served);
	add(s, "fault_stop_start", test_stop_fails_commands_and_start_recovers);
	add(s, "fault_delay", test_delay_holds_every_reply);
	add(s, "fault_error", test_error_fault_fails_next_command_with_code);
	add(s, "fault_drop", test_drop_closes_connections_and_retry_recovers);
	add(s, "fault_drop_next", test_drop_next_closes_instead_of_replying);
	add(s, "fault_refuse", test_refuse_blocks_new_connections_until_off);
	add(s, "control_errors", test_control_rejects_malformed_commands);
	add(s, "sigterm", test_double_exits_cleanly_on_sigterm);
	add(s, "max_lifetime", test_double_exits_after_max_lifetime);
	add(s, "raw_checksum", test_op_msg_checksum_is_verified);
	add(s, "raw_unknown_flag", test_op_msg_unknown_required_flag_closes_connection);
	add(s, "raw_more_to_come", test_op_msg_more_to_come_gets_no_reply);
	add(s, "raw_op_query", test_op_query_handshake_gets_op_reply);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	mongoc_cleanup();
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
