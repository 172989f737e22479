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
 * Each handler validates its input, then runs a short sequence of store
 * calls (load the room, check ownership or membership, act), every one
 * bound to the request's deadline through api_call. Per-request state lives
 * in the request's arena. Documents: rooms {name, owner, members[]},
 * messages {room, sender, senderName, content}.
 */
#include "autoconfig.h"

#include "api.h"
#include "authmw.h"
#include "handlers.h"
#include "validate.h"

#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_gen.h>

#define ROOMS_PAGE_DEFAULT 25
#define ROOMS_PAGE_MAX 100
#define HISTORY_DEFAULT 50
#define HISTORY_MAX 100

#define GS(g, s) yajl_gen_string(g, (const unsigned char *)(s), strlen(s))

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

/* What a room request carries from one store call to the next. */
struct room_req {
	bson_oid_t me;
	bson_oid_t room;
	bson_oid_t target;   /* members: the user being added */
	const char *content; /* messages: points into the parsed body */
	size_t content_len;
	int64_t limit;
	int64_t page;
	void (*step)(struct http_request *req, struct room_req *rr, const bson_t *room);
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

/* Allocate the request state with the caller's id. NULL after answering. */
static struct room_req *room_req_new(struct http_request *req)
{
	struct room_req *rr = http_alloc(req, sizeof(*rr));
	if (!rr) {
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return NULL;
	}
	memset(rr, 0, sizeof(*rr));
	bson_oid_copy(&auth_principal(req)->oid, &rr->me);
	return rr;
}

static struct api_call *call_new(struct http_request *req, int kind, int coll, api_cb cb, struct room_req *rr)
{
	struct api_call *c = api_call_new(req, kind, coll, cb);
	if (!c) {
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return NULL;
	}
	c->data = rr;
	return c;
}

/* Drop a call that was never submitted and answer 503. */
static int call_abort(struct api_call *c, struct http_request *req)
{
	store_op_clear(&c->op);
	free(c);
	return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
}

static int room_has_member(const bson_t *room, const bson_oid_t *user)
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

static void gen_oid(yajl_gen g, const bson_oid_t *id)
{
	char hex[25];
	store_id_format(id, hex);
	yajl_gen_string(g, (const unsigned char *)hex, 24);
}

/* {id, roomId, content, sender: {id, username}, createdAt} - the shape
 * the WebSocket chat sends as new_message, too. */
static void gen_message(yajl_gen g, const bson_t *m)
{
	bson_oid_t oid;
	bson_iter_t it;
	const char *s;
	yajl_gen_map_open(g);
	GS(g, "id");
	if (api_doc_oid(m, "_id", &oid) == 0)
		gen_oid(g, &oid);
	else
		yajl_gen_null(g);
	GS(g, "roomId");
	if (api_doc_oid(m, "room", &oid) == 0)
		gen_oid(g, &oid);
	else
		yajl_gen_null(g);
	GS(g, "content");
	if (bson_iter_init_find(&it, m, "content") && BSON_ITER_HOLDS_UTF8(&it)) {
		uint32_t len;
		s = bson_iter_utf8(&it, &len);
		yajl_gen_string(g, (const unsigned char *)s, len);
	} else {
		yajl_gen_null(g);
	}
	GS(g, "sender");
	yajl_gen_map_open(g);
	GS(g, "id");
	if (api_doc_oid(m, "sender", &oid) == 0)
		gen_oid(g, &oid);
	else
		yajl_gen_null(g);
	GS(g, "username");
	if ((s = api_doc_str(m, "senderName")))
		GS(g, s);
	else
		yajl_gen_null(g);
	yajl_gen_map_close(g);
	GS(g, "createdAt");
	if (bson_iter_init_find(&it, m, "createdAt") && BSON_ITER_HOLDS_DATE_TIME(&it))
		api_gen_iso(g, bson_iter_date_time(&it));
	else
		yajl_gen_null(g);
	yajl_gen_map_close(g);
}

static void send_room(struct http_request *req, const bson_t *room, int status)
{
	yajl_gen g = app_gen(req);
	if (!g) {
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
	api_gen_doc(g, room, NULL);
	app_send_gen(req, status);
}

/* ---- POST /api/rooms -------------------------------------------------- */

static void room_created(struct api_call *c, enum store_err err)
{
	if (err != STORE_OK) {
		api_fail_store(c->req, err, c->op.dup_field);
		return;
	}
	send_room(c->req, c->op.result, 201);
}

static int rooms_create(struct http_request *req)
{
	if (check_body(req, room_rules) < 0)
		return APP_DONE;
	struct room_req *rr = room_req_new(req);
	if (!rr)
		return APP_DONE;
	size_t nlen = 0;
	const char *name = json_get_str(app_body(req), "name", &nlen);
	if (!name)
		return app_fail(req, 500, "INTERNAL", "internal server error"); /* the rule let it through */
	struct api_call *c = call_new(req, STORE_OP_INSERT, STORE_ROOMS, room_created, rr);
	if (!c)
		return APP_DONE;
	bson_t *doc = bson_new();
	bson_t members;
	int ok = doc && nlen <= INT32_MAX && bson_append_utf8(doc, "name", 4, name, (int)nlen) &&
	         bson_append_oid(doc, "owner", 5, &rr->me) && bson_append_array_begin(doc, "members", 7, &members) &&
	         bson_append_oid(&members, "0", 1, &rr->me) && bson_append_array_end(doc, &members);
	c->op.doc = doc; /* owned by the call from here on */
	if (!ok)
		return call_abort(c, req);
	return api_call_submit(c);
}

/* ---- GET /api/rooms --------------------------------------------------- */

static void rooms_counted(struct api_call *c, enum store_err err)
{
	struct room_req *rr = c->data;
	if (err != STORE_OK) {
		api_fail_store(c->req, err, NULL);
		return;
	}
	app_gen_pagination(c->req, rr->page, rr->limit, c->op.count);
	app_send_gen(c->req, 200);
}

static int filter_my_rooms(struct store_filter *f, const bson_oid_t *me)
{
	return store_filter_oid(f, "members", STORE_CONTAINS, me);
}

static void rooms_found(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	struct room_req *rr = c->data;
	if (err != STORE_OK) {
		api_fail_store(req, err, NULL);
		return;
	}
	/* The page goes into the response generator now (the op's documents
	 * are freed with the call); the total is appended afterwards. */
	yajl_gen g = app_gen(req);
	if (!g) {
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
	yajl_gen_array_open(g);
	for (size_t i = 0; i < c->op.ndocs; i++)
		api_gen_doc(g, c->op.docs[i], NULL);
	yajl_gen_array_close(g);
	int64_t skip = (rr->page - 1) * rr->limit;
	int64_t n = (int64_t)c->op.ndocs;
	if (n < rr->limit && (n > 0 || skip == 0)) {
		/* A short page is the last one: the total is known. */
		app_gen_pagination(req, rr->page, rr->limit, skip + n);
		app_send_gen(req, 200);
		return;
	}
	struct api_call *cc = call_new(req, STORE_OP_COUNT, STORE_ROOMS, rooms_counted, rr);
	if (!cc)
		return;
	if (filter_my_rooms(&cc->op.filter, &rr->me) < 0) {
		call_abort(cc, req);
		return;
	}
	api_call_submit(cc);
}

static int rooms_list(struct http_request *req)
{
	struct room_req *rr = room_req_new(req);
	if (!rr)
		return APP_DONE;
	if (api_pagination(req, ROOMS_PAGE_DEFAULT, ROOMS_PAGE_MAX, &rr->page, &rr->limit) < 0)
		return APP_DONE;
	struct api_call *c = call_new(req, STORE_OP_FIND, STORE_ROOMS, rooms_found, rr);
	if (!c)
		return APP_DONE;
	if (filter_my_rooms(&c->op.filter, &rr->me) < 0 || store_filter_sort(&c->op.filter, "createdAt", -1) < 0)
		return call_abort(c, req);
	store_filter_page(&c->op.filter, (rr->page - 1) * rr->limit, rr->limit);
	return api_call_submit(c);
}

/* ---- routes on one room ----------------------------------------------- */

static void room_loaded(struct api_call *c, enum store_err err)
{
	struct room_req *rr = c->data;
	if (err == STORE_NOT_FOUND) {
		app_fail(c->req, 404, "NOT_FOUND", "room not found");
		return;
	}
	if (err != STORE_OK) {
		api_fail_store(c->req, err, NULL);
		return;
	}
	rr->step(c->req, rr, c->op.result);
}

/* Load rr->room, then run step with it (404 if it does not exist). */
static int load_room(struct http_request *req, struct room_req *rr,
                     void (*step)(struct http_request *, struct room_req *, const bson_t *))
{
	rr->step = step;
	struct api_call *c = call_new(req, STORE_OP_FIND_BY_ID, STORE_ROOMS, room_loaded, rr);
	if (!c)
		return APP_DONE;
	c->op.id = rr->room;
	return api_call_submit(c);
}

/* The room-scoped request state: caller and :id. NULL after answering. */
static struct room_req *room_req_for(struct http_request *req)
{
	bson_oid_t room;
	if (api_param_id(req, "id", &room) < 0)
		return NULL;
	struct room_req *rr = room_req_new(req);
	if (rr)
		rr->room = room;
	return rr;
}

/* ---- POST /api/rooms/:id/members -------------------------------------- */

static void member_added(struct api_call *c, enum store_err err)
{
	if (err == STORE_NOT_FOUND) {
		app_fail(c->req, 404, "NOT_FOUND", "room not found");
		return;
	}
	if (err != STORE_OK) {
		api_fail_store(c->req, err, NULL);
		return;
	}
	send_room(c->req, c->op.result, 200);
}

static void target_loaded(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	struct room_req *rr = c->data;
	if (err == STORE_NOT_FOUND || (err == STORE_OK && !api_doc_bool(c->op.result, "isActive", 1))) {
		app_fail(req, 404, "NOT_FOUND", "user not found");
		return;
	}
	if (err != STORE_OK) {
		api_fail_store(req, err, NULL);
		return;
	}
	/* $addToSet: adding a member twice changes nothing. */
	struct api_call *u = call_new(req, STORE_OP_UPDATE_BY_ID, STORE_ROOMS, member_added, rr);
	if (!u)
		return;
	u->op.id = rr->room;
	if (store_op_add_to_set_oid(&u->op, "members", &rr->target) < 0) {
		call_abort(u, req);
		return;
	}
	api_call_submit(u);
}

static void add_member_step(struct http_request *req, struct room_req *rr, const bson_t *room)
{
	bson_oid_t owner;
	if (api_doc_oid(room, "owner", &owner) < 0 || !bson_oid_equal(&owner, &rr->me)) {
		app_fail(req, 403, "FORBIDDEN", "only the room owner can add members");
		return;
	}
	struct api_call *c = call_new(req, STORE_OP_FIND_BY_ID, STORE_USERS, target_loaded, rr);
	if (!c)
		return;
	c->op.id = rr->target;
	api_call_submit(c);
}

static int rooms_add_member(struct http_request *req)
{
	struct room_req *rr = room_req_for(req);
	if (!rr || check_body(req, member_rules) < 0)
		return APP_DONE;
	size_t len;
	const char *uid = json_get_str(app_body(req), "userId", &len);
	if (!uid || store_id_parse(uid, len, &rr->target) < 0)
		return app_fail(req, 500, "INTERNAL", "internal server error"); /* the rule let it through */
	return load_room(req, rr, add_member_step);
}

/* ---- GET /api/rooms/:id/messages -------------------------------------- */

static void history_found(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	if (err != STORE_OK) {
		api_fail_store(req, err, NULL);
		return;
	}
	yajl_gen g = app_gen(req);
	if (!g) {
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
	/* Fetched newest first (so the limit keeps the latest); sent oldest first. */
	yajl_gen_array_open(g);
	for (size_t i = c->op.ndocs; i-- > 0;)
		gen_message(g, c->op.docs[i]);
	yajl_gen_array_close(g);
	app_send_gen(req, 200);
}

static void history_step(struct http_request *req, struct room_req *rr, const bson_t *room)
{
	if (!room_has_member(room, &rr->me)) {
		app_fail(req, 403, "FORBIDDEN", "access denied to room");
		return;
	}
	struct api_call *c = call_new(req, STORE_OP_FIND, STORE_MESSAGES, history_found, rr);
	if (!c)
		return;
	if (store_filter_oid(&c->op.filter, "room", STORE_EQ, &rr->room) < 0 ||
	    store_filter_sort(&c->op.filter, "createdAt", -1) < 0) {
		call_abort(c, req);
		return;
	}
	store_filter_page(&c->op.filter, 0, rr->limit);
	api_call_submit(c);
}

static int rooms_messages(struct http_request *req)
{
	struct room_req *rr = room_req_for(req);
	if (!rr)
		return APP_DONE;
	const struct json_value *q = app_query(req);
	struct verrors errs;
	if (!q)
		return app_fail(req, 400, "VALIDATION_ERROR", "validation failed: malformed query string");
	if (validate(q, history_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	if (validate_get_int(q, "limit", HISTORY_DEFAULT, &rr->limit) < 0)
		return app_fail(req, 500, "INTERNAL", "internal server error"); /* the rule let it through */
	return load_room(req, rr, history_step);
}

/* ---- POST /api/rooms/:id/messages ------------------------------------- */

static void message_stored(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	if (err != STORE_OK) {
		api_fail_store(req, err, c->op.dup_field);
		return;
	}
	yajl_gen g = app_gen(req);
	if (!g) {
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
	gen_message(g, c->op.result);
	/* Stored first, then broadcast: WebSocket members see REST-posted
	 * messages too (best effort: a full bus is logged by the chat). */
	chat_publish_message(c->op.result);
	app_send_gen(req, 201);
}

static void send_step(struct http_request *req, struct room_req *rr, const bson_t *room)
{
	if (!room_has_member(room, &rr->me)) {
		app_fail(req, 403, "FORBIDDEN", "access denied to room");
		return;
	}
	struct api_call *c = call_new(req, STORE_OP_INSERT, STORE_MESSAGES, message_stored, rr);
	if (!c)
		return;
	const char *name = auth_principal(req)->username;
	bson_t *doc = bson_new();
	c->op.doc = doc;
	if (!doc || rr->content_len > INT32_MAX || !bson_append_oid(doc, "room", 4, &rr->room) ||
	    !bson_append_oid(doc, "sender", 6, &rr->me) || !bson_append_utf8(doc, "senderName", 10, name, -1) ||
	    !bson_append_utf8(doc, "content", 7, rr->content, (int)rr->content_len)) {
		call_abort(c, req);
		return;
	}
	api_call_submit(c);
}

static int rooms_send(struct http_request *req)
{
	struct room_req *rr = room_req_for(req);
	if (!rr || check_body(req, message_rules) < 0)
		return APP_DONE;
	rr->content = json_get_str(app_body(req), "content", &rr->content_len);
	if (!rr->content)
		return app_fail(req, 500, "INTERNAL", "internal server error"); /* the rule let it through */
	return load_room(req, rr, send_step);
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
