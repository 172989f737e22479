/* rooms.c - chat rooms and their message history over REST (SPEC section 6).
 *
 *   POST /api/rooms                  create; the creator is owner and member
 *   GET  /api/rooms                  rooms I am a member of, newest first,
 *                                    paginated (page, limit 1-100, default 25)
 *   POST /api/rooms/:id/members      owner adds an active user ($addToSet)
 *   GET  /api/rooms/:id/messages     members: the last `limit` (1-100,
 *                                    default 50) messages, oldest first
 *   POST /api/rooms/:id/messages     members: store a message (an addition
 *                                    beyond the SPEC; the WebSocket chat is
 *                                    the usual writer)
 *
 * Each handler validates its input on the loop, then one route job (api.h)
 * runs the whole sequence on the pool: load the room, check ownership or
 * membership, act. Documents: rooms {name, owner, members[]}, messages
 * {room, sender, senderName, content}.
 */
#include "autoconfig.h"

#include "api.h"
#include "authmw.h"
#include "chat.h"
#include "chat_rooms.h"
#include "handlers.h"
#include "message.h"
#include "rbus.h"
#include "validate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_gen.h>

#define ROOMS_PAGE_DEFAULT 25
#define ROOMS_PAGE_MAX 100
#define HISTORY_DEFAULT 50
#define HISTORY_MAX 100

static const struct vrule room_rules[] = {
    V_STRING("name", V_REQUIRED, 1, 100),
    V_END,
};
static const struct vrule member_rules[] = {
    V_OBJECTID("userId", V_REQUIRED),
    V_END,
};
static const struct vrule message_rules[] = {
    V_STRING("content", V_REQUIRED, 1, 2000),
    V_END,
};
static const struct vrule history_rules[] = {
    V_INT("limit", V_OPTIONAL | V_FROM_STRING, 1, HISTORY_MAX),
    V_END,
};

/* Validate the body (a missing body counts as an empty object, so the
 * details name the missing fields). 0, or -1 after answering 400. */
static int check_body(struct http_request *req, const struct vrule *rules)
{
	static const struct json_value empty = {.type = JSON_OBJECT};
	const struct json_value *b = app_body(req);
	struct verrors errs;
	if (validate(b ? b : &empty, rules, &errs) > 0) {
		app_fail_validation(req, &errs);
		return -1;
	}
	return 0;
}

int rooms_has_member(const bson_t *room, const bson_oid_t *user)
{
	bson_iter_t it, child;
	if (!bson_iter_init_find(&it, room, "members") || !BSON_ITER_HOLDS_ARRAY(&it) ||
	    !bson_iter_recurse(&it, &child))
		return 0;
	while (bson_iter_next(&child))
		if (BSON_ITER_HOLDS_OID(&child) && bson_oid_equal(bson_iter_oid(&child), user))
			return 1;
	return 0;
}

/* The one wire format of a room. */
static const char *const room_fields[] = {"name", "owner", "members", "createdAt", "updatedAt", NULL};

static void gen_room(void *g, const bson_t *room, const struct api_list *l)
{
	(void)l;
	api_gen_object(g, room, room_fields);
}

/* ---- the route jobs ------------------------------------------------------ */

struct room_job {
	struct api_job base;
	bson_oid_t me;
	char my_name[32];
	bson_oid_t room;
	bson_oid_t target; /* members: the user being added */
	bson_t *doc;       /* create: the room; send: the message (consumed by the store) */
	int64_t limit;     /* history */
	int status;
	bson_t *result;      /* the room or the message */
	uint64_t seq;        /* send with the cross-host bus: the message's slot (rbus.h); 0: none */
	int released;        /* the slot was released (the message or nothing) */
	bson_oid_t given_id; /* with seq: the id and createdAt the slot gives */
	int64_t given_created;
	struct store_op found; /* history: the messages, newest first */
	struct api_list list;  /* GET /api/rooms */
};

static void room_cleanup(struct api_job *j)
{
	struct room_job *rj = (struct room_job *)j;
	if (rj->seq && !rj->released) {
		/* Not stored (or not answered): give the slot up at once. */
		struct iovec none = {0};
		rbus_publish_ordered(rj->seq, &none, 1);
	}
	if (rj->doc)
		bson_destroy(rj->doc);
	if (rj->result)
		bson_destroy(rj->result);
	store_op_clear(&rj->found);
	api_list_clear(&rj->list);
}

static struct room_job *room_job_new(struct http_request *req, api_job_fn work, api_job_done_fn done, int status)
{
	struct room_job *rj = api_job_new(req, sizeof(*rj), work, done);
	if (!rj)
		return NULL;
	rj->base.cleanup = room_cleanup;
	rj->status = status;
	const struct principal *me = auth_principal(req);
	bson_oid_copy(&me->oid, &rj->me);
	snprintf(rj->my_name, sizeof(rj->my_name), "%s", me->username);
	return rj;
}

/* A job on the room named by :id; NULL after answering. */
static struct room_job *room_job_for(struct http_request *req, api_job_fn work, api_job_done_fn done, int status)
{
	bson_oid_t room;
	if (api_param_id(req, "id", &room) < 0)
		return NULL;
	struct room_job *rj = room_job_new(req, work, done, status);
	if (!rj) {
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return NULL;
	}
	rj->room = room;
	return rj;
}

/* The room, if it exists and (member_only) the caller is a member. */
static bson_t *load_room(struct api_job *j, struct room_job *rj, bool member_only)
{
	struct store_op op;
	store_op_init(&op, STORE_OP_FIND_BY_ID, COLL_ROOMS);
	op.id = rj->room;
	enum store_err err = api_exec(j, &op);
	bson_t *room = op.result;
	op.result = NULL;
	store_op_clear(&op);
	if (err == STORE_NOT_FOUND)
		api_job_fail(j, 404, "NOT_FOUND", "room not found");
	else if (err != STORE_OK)
		j->err = err;
	else if (member_only && !rooms_has_member(room, &rj->me))
		api_job_fail(j, 403, "FORBIDDEN", "access denied to room");
	else
		return room;
	if (room)
		bson_destroy(room);
	return NULL;
}

static void send_room_done(struct api_job *j, struct http_request *req)
{
	struct room_job *rj = (struct room_job *)j;
	yajl_gen g = app_gen(req);
	if (!g) {
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
	gen_room(g, rj->result, NULL);
	app_send_gen(req, rj->status);
}

/* Insert rj->doc into coll; the stored document becomes rj->result. */
static void insert_doc(struct api_job *j, struct room_job *rj, int coll)
{
	struct store_op op;
	store_op_init(&op, STORE_OP_INSERT, coll);
	op.doc = rj->doc;
	rj->doc = NULL;
	if (api_run(j, &op) == 0) {
		rj->result = op.result;
		op.result = NULL;
	}
	store_op_clear(&op);
}

/* ---- POST /api/rooms -------------------------------------------------- */

static void create_work(struct api_job *j)
{
	insert_doc(j, (struct room_job *)j, COLL_ROOMS);
}

static int rooms_create(struct http_request *req)
{
	if (check_body(req, room_rules) < 0)
		return APP_DONE;
	size_t nlen = 0;
	const char *name = json_get_str(app_body(req), "name", &nlen);
	struct room_job *rj = room_job_new(req, create_work, send_room_done, 201);
	if (!rj)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	bson_t members;
	bson_t *doc = rj->doc = bson_new();
	if (!doc || !name || nlen > INT32_MAX || !bson_append_utf8(doc, "name", 4, name, (int)nlen) ||
	    !bson_append_oid(doc, "owner", 5, &rj->me) || !bson_append_array_begin(doc, "members", 7, &members) ||
	    !bson_append_oid(&members, "0", 1, &rj->me) || !bson_append_array_end(doc, &members))
		return api_job_drop(&rj->base);
	return api_job_submit(&rj->base);
}

/* ---- GET /api/rooms --------------------------------------------------- */

static void list_work(struct api_job *j)
{
	api_list_run(j, &((struct room_job *)j)->list);
}

static void list_done(struct api_job *j, struct http_request *req)
{
	api_send_list(req, &((struct room_job *)j)->list, gen_room);
}

static int rooms_list(struct http_request *req)
{
	int64_t page, limit;
	if (api_pagination(req, ROOMS_PAGE_DEFAULT, ROOMS_PAGE_MAX, &page, &limit) < 0)
		return APP_DONE;
	struct room_job *rj = room_job_new(req, list_work, list_done, 200);
	if (!rj)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	api_job_reads(&rj->base);
	rj->list = (struct api_list){.coll = COLL_ROOMS, .page = page, .limit = limit};
	if (store_filter_oid(&rj->list.filter, "members", STORE_CONTAINS, &rj->me) < 0 ||
	    store_filter_sort(&rj->list.filter, "createdAt", -1) < 0)
		return api_job_drop(&rj->base);
	return api_job_submit(&rj->base);
}

/* ---- POST /api/rooms/:id/members -------------------------------------- */

static void add_member_work(struct api_job *j)
{
	struct room_job *rj = (struct room_job *)j;
	bson_t *room = load_room(j, rj, false);
	bson_oid_t owner;
	if (!room)
		return;
	int mine = api_doc_oid(room, "owner", &owner) == 0 && bson_oid_equal(&owner, &rj->me);
	bson_destroy(room);
	if (!mine) {
		api_job_fail(j, 403, "FORBIDDEN", "only the room owner can add members");
		return;
	}
	struct store_op op;
	store_op_init(&op, STORE_OP_FIND_BY_ID, COLL_USERS);
	op.id = rj->target;
	enum store_err err = api_exec(j, &op);
	if (err == STORE_NOT_FOUND || (err == STORE_OK && !api_doc_bool(op.result, "isActive", 1)))
		api_job_fail(j, 404, "NOT_FOUND", "user not found");
	else if (err != STORE_OK)
		j->err = err;
	store_op_clear(&op);
	if (err != STORE_OK || j->fail_status)
		return;
	/* $addToSet: adding a member twice changes nothing. */
	store_op_init(&op, STORE_OP_UPDATE_BY_ID, COLL_ROOMS);
	op.id = rj->room;
	if (store_op_add_to_set_oid(&op, "members", &rj->target) < 0) {
		api_job_fail(j, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	} else if ((err = api_exec(j, &op)) == STORE_NOT_FOUND) {
		api_job_fail(j, 404, "NOT_FOUND", "room not found");
	} else if (err != STORE_OK) {
		j->err = err;
	} else {
		rj->result = op.result;
		op.result = NULL;
	}
	store_op_clear(&op);
}

/* The room as for every route, and the added user's sockets hear of it
 * (added_to_room through their personal room, on every worker; best
 * effort: a full bus is logged by the chat). */
static void add_member_done(struct api_job *j, struct http_request *req)
{
	struct room_job *rj = (struct room_job *)j;
	send_room_done(j, req);
	chat_notify_added_to_room(&rj->target, rj->result);
}

static int rooms_add_member(struct http_request *req)
{
	if (check_body(req, member_rules) < 0)
		return APP_DONE;
	size_t len;
	const char *uid = json_get_str(app_body(req), "userId", &len);
	bson_oid_t target;
	if (!uid || store_id_parse(uid, len, &target) < 0)
		return app_fail(req, 500, "INTERNAL", "internal server error"); /* the rule let it through */
	struct room_job *rj = room_job_for(req, add_member_work, add_member_done, 200);
	if (!rj)
		return APP_DONE;
	rj->target = target;
	return api_job_submit(&rj->base);
}

/* ---- GET /api/rooms/:id/messages -------------------------------------- */

/* Messages written by the Node app carry no senderName: look the senders
 * up (one IN query) and add it to those messages, so every message of a
 * history names its sender. A failed lookup leaves the names out. */
static void name_senders(struct api_job *j, struct store_op *found)
{
	bson_oid_t ids[STORE_IN_MAX];
	size_t nids = api_distinct_oids(found->docs, found->ndocs, "sender", "senderName", ids);
	if (nids == 0)
		return;
	struct store_op users;
	store_op_init(&users, STORE_OP_FIND, COLL_USERS);
	if (store_filter_in_oids(&users.filter, "_id", ids, nids) == 0 && api_exec(j, &users) == STORE_OK) {
		for (size_t i = 0; i < found->ndocs; i++) {
			bson_oid_t sid, uid;
			if (bson_has_field(found->docs[i], "senderName") ||
			    api_doc_oid(found->docs[i], "sender", &sid) < 0)
				continue;
			for (size_t u = 0; u < users.ndocs; u++) {
				const char *name = api_doc_str(users.docs[u], "username");
				if (api_doc_oid(users.docs[u], "_id", &uid) < 0 || !bson_oid_equal(&uid, &sid) || !name)
					continue;
				bson_t *named = bson_copy(found->docs[i]);
				if (named && BSON_APPEND_UTF8(named, "senderName", name)) {
					bson_destroy(found->docs[i]);
					found->docs[i] = named;
				} else if (named) {
					bson_destroy(named);
				}
				break;
			}
		}
	}
	store_op_clear(&users);
}

static void history_work(struct api_job *j)
{
	struct room_job *rj = (struct room_job *)j;
	bson_t *room = load_room(j, rj, true);
	if (!room)
		return;
	bson_destroy(room);
	store_op_init(&rj->found, STORE_OP_FIND, COLL_MESSAGES);
	if (store_filter_oid(&rj->found.filter, "room", STORE_EQ, &rj->room) < 0 ||
	    store_filter_sort(&rj->found.filter, "createdAt", -1) < 0) {
		api_job_fail(j, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
	store_filter_page(&rj->found.filter, 0, rj->limit);
	if (api_run(j, &rj->found) == 0)
		name_senders(j, &rj->found);
}

static void history_done(struct api_job *j, struct http_request *req)
{
	struct room_job *rj = (struct room_job *)j;
	yajl_gen g = app_gen(req);
	if (!g) {
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
	/* Fetched newest first (so the limit keeps the latest); sent oldest first. */
	yajl_gen_array_open(g);
	for (size_t i = rj->found.ndocs; i-- > 0;)
		message_gen(g, rj->found.docs[i]);
	yajl_gen_array_close(g);
	app_send_gen(req, 200);
}

static int rooms_messages(struct http_request *req)
{
	const struct json_value *q = app_query(req);
	struct verrors errs;
	int64_t limit;
	if (!q)
		return app_fail(req, 400, "VALIDATION_ERROR", "validation failed: malformed query string");
	if (validate(q, history_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	if (validate_get_int(q, "limit", HISTORY_DEFAULT, &limit) < 0)
		return app_fail(req, 500, "INTERNAL", "internal server error"); /* the rule let it through */
	struct room_job *rj = room_job_for(req, history_work, history_done, 200);
	if (!rj)
		return APP_DONE;
	rj->limit = limit;
	api_job_reads(&rj->base);
	return api_job_submit(&rj->base);
}

/* ---- POST /api/rooms/:id/messages ------------------------------------- */

static void send_work(struct api_job *j)
{
	struct room_job *rj = (struct room_job *)j;
	bson_t *room = load_room(j, rj, true);
	if (!room)
		return;
	bson_destroy(room);
	if (!rj->seq) {
		insert_doc(j, rj, COLL_MESSAGES);
		return;
	}
	/* With its cross-host slot: stored under the slot's id and createdAt. */
	struct store_op op;
	store_op_init(&op, STORE_OP_INSERT_MANY, COLL_MESSAGES);
	op.batch = malloc(sizeof(*op.batch));
	if (!op.batch) {
		api_job_fail(j, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
	op.batch[0] = rj->doc;
	op.nbatch = 1;
	rj->doc = NULL;
	op.given_ids = &rj->given_id;
	op.given_created_ms = &rj->given_created;
	if (api_run(j, &op) == 0 && op.ndocs == 1) {
		rj->result = op.docs[0];
		op.docs[0] = NULL;
	}
	store_op_clear(&op);
}

static void send_done(struct api_job *j, struct http_request *req)
{
	struct room_job *rj = (struct room_job *)j;
	yajl_gen g = app_gen(req);
	if (!g) {
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
	message_gen(g, rj->result);
	/* Stored first, then broadcast: WebSocket members see REST-posted
	 * messages too (best effort: a full bus is logged by the chat). With
	 * the cross-host bus the message takes its reserved place in the one
	 * order (or, Redis gone since, goes to this host's sockets only). */
	if (rj->seq) {
		unsigned char *rec;
		size_t len;
		if (chat_message_record(rj->result, &rec, &len) == 0) {
			struct iovec one = {.iov_base = rec, .iov_len = len};
			if (rbus_publish_ordered(rj->seq, &one, 1) == 0)
				rj->released = 1;
			else
				chat_publish_local(rec, len);
			free(rec);
		}
	} else {
		chat_publish_message(rj->result);
	}
	app_send_gen(req, 201);
}

/* The message's cross-host slot came back (ok 0: the bus failed meanwhile;
 * stored and delivered as on a single host). */
static void send_reserved(void *ud, int ok, uint64_t seq, uint64_t us)
{
	struct room_job *rj = ud;
	if (ok) {
		rj->seq = seq;
		rbus_stamp(us, rj->given_id.bytes, &rj->given_created);
	}
	api_job_submit(&rj->base);
}

static int rooms_send(struct http_request *req)
{
	if (check_body(req, message_rules) < 0)
		return APP_DONE;
	size_t clen = 0;
	const char *content = json_get_str(app_body(req), "content", &clen);
	struct room_job *rj = room_job_for(req, send_work, send_done, 201);
	if (!rj)
		return APP_DONE;
	bson_t *doc = rj->doc = bson_new();
	if (!doc || !content || clen > INT32_MAX || !bson_append_oid(doc, "room", 4, &rj->room) ||
	    !bson_append_oid(doc, "sender", 6, &rj->me) || !bson_append_utf8(doc, "senderName", 10, rj->my_name, -1) ||
	    !bson_append_utf8(doc, "content", 7, content, (int)clen))
		return api_job_drop(&rj->base);
	/* Cross-host: take the message's place in the one order before the
	 * store (the request waits for it; the loop does not). */
	if (rbus_state() == RBUS_UP && rbus_reserve(1, send_reserved, rj) == 0)
		return APP_DONE;
	return api_job_submit(&rj->base);
}

int rooms_routes(struct app *app)
{
	int rc = 0;
	rc |= app_post(app, "/api/rooms", mw_auth, rooms_create);
	rc |= app_get(app, "/api/rooms", mw_auth, rooms_list);
	rc |= app_post(app, "/api/rooms/:id/members", mw_auth, rooms_add_member);
	rc |= app_get(app, "/api/rooms/:id/messages", mw_auth, rooms_messages);
	rc |= app_post(app, "/api/rooms/:id/messages", mw_auth, rooms_send);
	return rc;
}
