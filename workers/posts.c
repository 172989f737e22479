/* posts.c - /api/posts (SPEC section 6): public listing and reading, writes
 * by authenticated users, edits and deletes by the author or an admin.
 *
 * A post is {title 1-200, content 1-50000, category optional 1-50, author
 * (ObjectId of the user)}; responses embed the author as {id, username,
 * email}. A list is three store calls: count, the page (createdAt
 * descending, _id as tie-break), then the page's authors with one IN query,
 * joined here.
 *
 * List responses are cached per worker for POSTS_CACHE_TTL_MS, keyed by
 * (page, limit, category), as the exact JSON bytes. Every post write bumps
 * post_generation in the shared scoreboard header after the write is
 * stored and before the writer gets its answer; an entry made under another
 * generation is never served, so a list asked for after a write returns
 * that write in every worker. A list computed while a write was landing is
 * stored under the generation read before its first database call, so it
 * cannot outlive that write either.
 *
 * Query strings are typed: `category` must be a single string (a repeated
 * key becomes an array and fails validation); keys such as `category[$gt]`
 * are unknown and ignored. An empty `category=` means no filter.
 */
#include "autoconfig.h"

#include "api.h"
#include "authmw.h"
#include "handlers.h"
#include "json.h"
#include "log.h"
#include "routes.h"
#include "scoreboard.h"
#include "validate.h"

#include <event2/buffer.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_gen.h>

#define POSTS_DEFAULT_LIMIT 25
#define POSTS_MAX_LIMIT 100
#define POSTS_CACHE_SLOTS 64
#define POSTS_CACHE_TTL_MS 5000
#define POSTS_CACHE_ENTRY_MAX (256u * 1024)  /* larger pages are not cached */
#define POSTS_CACHE_BYTES_MAX (4u * 1024 * 1024)
#define CATEGORY_KEY_MAX 208 /* 50 code points of up to 4 bytes, NUL */

#define GS(g, s) yajl_gen_string(g, (const unsigned char *)(s), strlen(s))

static const struct vrule create_rules[] = {
	V_STRING("title", V_REQUIRED, 1, 200),
	V_STRING("content", V_REQUIRED, 1, 50000),
	V_STRING("category", V_OPTIONAL, 1, 50),
	V_END,
};

static const struct vrule patch_rules[] = {
	V_STRING("title", V_OPTIONAL, 1, 200),
	V_STRING("content", V_OPTIONAL, 1, 50000),
	V_STRING("category", V_OPTIONAL, 1, 50),
	V_END,
};

static const struct vrule query_rules[] = {
	V_STRING("category", V_OPTIONAL, 0, 50),
	V_END,
};

static const char *const post_fields[] = {"title", "content", "category", NULL};

/* ---- list cache --------------------------------------------------------- */

struct cache_entry {
	char *body; /* NULL: slot empty */
	size_t len;
	int generation;
	uint64_t at_ms;
	int64_t page, limit;
	char category[CATEGORY_KEY_MAX];
};

static struct cache_entry cache[POSTS_CACHE_SLOTS];
static size_t cache_bytes;
static int local_generation; /* without a supervisor (no scoreboard) */

static int post_generation(void)
{
	struct worker *w = worker_current();
	if (w && w->sb)
		return atomic_load_explicit(&w->sb->hdr.post_generation, memory_order_acquire);
	return local_generation;
}

static void cache_drop(struct cache_entry *e)
{
	if (!e->body)
		return;
	cache_bytes -= e->len;
	free(e->body);
	e->body = NULL;
	e->len = 0;
}

/* A post was created, changed or deleted: invalidate every worker's cache. */
static void posts_changed(void)
{
	struct worker *w = worker_current();
	if (w && w->sb)
		atomic_fetch_add_explicit(&w->sb->hdr.post_generation, 1, memory_order_acq_rel);
	local_generation++;
	for (size_t i = 0; i < POSTS_CACHE_SLOTS; i++)
		cache_drop(&cache[i]);
}

static size_t cache_slot(int64_t page, int64_t limit, const char *category)
{
	uint64_t h = 1469598103934665603ull;
	uint64_t parts[2] = {(uint64_t)page, (uint64_t)limit};
	const unsigned char *p = (const unsigned char *)parts;
	for (size_t i = 0; i < sizeof(parts); i++)
		h = (h ^ p[i]) * 1099511628211ull;
	for (p = (const unsigned char *)category; *p; p++)
		h = (h ^ *p) * 1099511628211ull;
	return (size_t)(h % POSTS_CACHE_SLOTS);
}

static const struct cache_entry *cache_get(int64_t page, int64_t limit, const char *category)
{
	struct cache_entry *e = &cache[cache_slot(page, limit, category)];
	if (!e->body || e->page != page || e->limit != limit || strcmp(e->category, category) != 0)
		return NULL;
	if (e->generation != post_generation() || jobs_now_ms() - e->at_ms >= POSTS_CACHE_TTL_MS) {
		cache_drop(e);
		return NULL;
	}
	return e;
}

static void cache_put(int64_t page, int64_t limit, const char *category, int generation, const unsigned char *buf,
                      size_t len)
{
	if (len > POSTS_CACHE_ENTRY_MAX || strlen(category) >= CATEGORY_KEY_MAX || generation != post_generation())
		return;
	struct cache_entry *e = &cache[cache_slot(page, limit, category)];
	cache_drop(e);
	if (cache_bytes + len > POSTS_CACHE_BYTES_MAX) {
		/* Over budget: drop what is stale first, then give up. */
		uint64_t now = jobs_now_ms();
		for (size_t i = 0; i < POSTS_CACHE_SLOTS; i++)
			if (cache[i].body && now - cache[i].at_ms >= POSTS_CACHE_TTL_MS)
				cache_drop(&cache[i]);
		if (cache_bytes + len > POSTS_CACHE_BYTES_MAX)
			return;
	}
	e->body = malloc(len);
	if (!e->body)
		return;
	memcpy(e->body, buf, len);
	e->len = len;
	cache_bytes += len;
	e->generation = generation;
	e->at_ms = jobs_now_ms();
	e->page = page;
	e->limit = limit;
	strcpy(e->category, category);
}

/* ---- rendering ---------------------------------------------------------- */

struct raw_doc {
	const uint8_t *data;
	uint32_t len;
};

/* Keep a copy of a store result in the request's arena (freed with it on
 * every path, also when the deadline answers first). */
static int keep_doc(struct http_request *req, const bson_t *doc, struct raw_doc *out)
{
	uint8_t *p = http_alloc(req, doc->len);
	if (!p)
		return -1;
	memcpy(p, bson_get_data(doc), doc->len);
	out->data = p;
	out->len = doc->len;
	return 0;
}

static int raw_view(const struct raw_doc *r, bson_t *out)
{
	return bson_init_static(out, r->data, r->len) ? 0 : -1;
}

static void gen_str_field(yajl_gen g, const bson_t *doc, const char *field)
{
	bson_iter_t it;
	GS(g, field);
	if (bson_iter_init_find(&it, doc, field) && BSON_ITER_HOLDS_UTF8(&it)) {
		uint32_t n;
		const char *s = bson_iter_utf8(&it, &n);
		yajl_gen_string(g, (const unsigned char *)s, n);
	} else {
		yajl_gen_null(g);
	}
}

static void gen_date_field(yajl_gen g, const bson_t *doc, const char *field)
{
	bson_iter_t it;
	GS(g, field);
	if (bson_iter_init_find(&it, doc, field) && BSON_ITER_HOLDS_DATE_TIME(&it))
		api_gen_iso(g, bson_iter_date_time(&it));
	else
		yajl_gen_null(g);
}

/* The author object: from a users document, or NULL fields if it is gone. */
struct author {
	bson_oid_t id;
	const char *username, *email;
};

static void gen_post(yajl_gen g, const bson_t *post, const struct author *a)
{
	bson_iter_t it;
	char hex[25];
	yajl_gen_map_open(g);
	GS(g, "id");
	if (bson_iter_init_find(&it, post, "_id") && BSON_ITER_HOLDS_OID(&it)) {
		store_id_format(bson_iter_oid(&it), hex);
		yajl_gen_string(g, (const unsigned char *)hex, 24);
	} else {
		yajl_gen_null(g);
	}
	gen_str_field(g, post, "title");
	gen_str_field(g, post, "content");
	if (bson_iter_init_find(&it, post, "category") && BSON_ITER_HOLDS_UTF8(&it))
		gen_str_field(g, post, "category");
	GS(g, "author");
	yajl_gen_map_open(g);
	GS(g, "id");
	store_id_format(&a->id, hex);
	yajl_gen_string(g, (const unsigned char *)hex, 24);
	GS(g, "username");
	if (a->username)
		GS(g, a->username);
	else
		yajl_gen_null(g);
	GS(g, "email");
	if (a->email)
		GS(g, a->email);
	else
		yajl_gen_null(g);
	yajl_gen_map_close(g);
	gen_date_field(g, post, "createdAt");
	gen_date_field(g, post, "updatedAt");
	yajl_gen_map_close(g);
}

static void author_from_user(struct author *a, const bson_oid_t *id, const bson_t *user)
{
	bson_oid_copy(id, &a->id);
	a->username = api_doc_str(user, "username");
	a->email = api_doc_str(user, "email");
}

static void author_from_ctx(struct author *a, struct http_request *req)
{
	const struct principal *me = auth_principal(req);
	bson_oid_copy(&me->oid, &a->id);
	a->username = me->username;
	a->email = me->email;
}

/* Answer {"success":true,"data":<post>} with the given status. */
static void send_post(struct http_request *req, int status, const bson_t *post, const struct author *a)
{
	yajl_gen g = app_gen(req);
	if (!g) {
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
	gen_post(g, post, a);
	app_send_gen(req, status);
}

static int is_admin(struct http_request *req)
{
	return auth_is_admin(req);
}

static int is_author(struct http_request *req, const bson_t *post)
{
	bson_oid_t author;
	char hex[25];
	if (api_doc_oid(post, "author", &author) < 0)
		return 0;
	store_id_format(&author, hex);
	const struct principal *me = auth_principal(req);
	return me && strcmp(hex, me->id) == 0;
}

static int fail_nomem(struct http_request *req)
{
	return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
}

/* ---- GET /api/posts ----------------------------------------------------- */

struct list_state {
	int64_t page, limit, total;
	const char *category; /* "" = all */
	int generation;
	struct raw_doc *posts;
	size_t nposts;
};

static int build_filter(struct store_filter *f, const char *category)
{
	if (category[0] && store_filter_str(f, "category", STORE_EQ, category) < 0)
		return -1;
	return 0;
}

static void send_list(struct http_request *req, struct list_state *ls, bson_t **users, size_t nusers)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	if (!g) {
		fail_nomem(req);
		return;
	}
	yajl_gen_map_open(g);
	GS(g, "success");
	yajl_gen_bool(g, 1);
	GS(g, "data");
	yajl_gen_array_open(g);
	for (size_t i = 0; i < ls->nposts; i++) {
		bson_t post;
		if (raw_view(&ls->posts[i], &post) < 0)
			continue;
		struct author a = {0};
		bson_oid_t aid;
		if (api_doc_oid(&post, "author", &aid) == 0) {
			bson_oid_copy(&aid, &a.id);
			for (size_t u = 0; u < nusers; u++) {
				bson_oid_t uid;
				if (api_doc_oid(users[u], "_id", &uid) == 0 && bson_oid_equal(&uid, &aid)) {
					author_from_user(&a, &aid, users[u]);
					break;
				}
			}
		}
		gen_post(g, &post, &a);
	}
	yajl_gen_array_close(g);
	GS(g, "pagination");
	yajl_gen_map_open(g);
	GS(g, "page");
	yajl_gen_integer(g, ls->page);
	GS(g, "limit");
	yajl_gen_integer(g, ls->limit);
	GS(g, "total");
	yajl_gen_integer(g, ls->total);
	GS(g, "pages");
	yajl_gen_integer(g, (ls->total + ls->limit - 1) / ls->limit);
	yajl_gen_map_close(g);
	yajl_gen_map_close(g);
	const unsigned char *buf;
	size_t len;
	if (yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok || evbuffer_add(http_body(req), buf, len) < 0) {
		yajl_gen_free(g);
		fail_nomem(req);
		return;
	}
	cache_put(ls->page, ls->limit, ls->category, ls->generation, buf, len);
	yajl_gen_free(g);
	http_set_status(req, 200);
	http_send(req);
}

static void got_authors(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	if (err != STORE_OK) {
		api_fail_store(req, err, NULL);
		return;
	}
	send_list(req, c->data, c->op.docs, c->op.ndocs);
}

static void got_page(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	struct list_state *ls = c->data;
	if (err != STORE_OK) {
		api_fail_store(req, err, NULL);
		return;
	}
	ls->posts = c->op.ndocs ? http_alloc(req, c->op.ndocs * sizeof(*ls->posts)) : NULL;
	bson_oid_t *ids = c->op.ndocs ? http_alloc(req, c->op.ndocs * sizeof(*ids)) : NULL;
	if (c->op.ndocs && (!ls->posts || !ids)) {
		fail_nomem(req);
		return;
	}
	size_t nids = 0;
	for (size_t i = 0; i < c->op.ndocs; i++) {
		if (keep_doc(req, c->op.docs[i], &ls->posts[ls->nposts]) < 0) {
			fail_nomem(req);
			return;
		}
		ls->nposts++;
		bson_oid_t aid;
		if (api_doc_oid(c->op.docs[i], "author", &aid) < 0)
			continue;
		size_t k = 0;
		while (k < nids && !bson_oid_equal(&ids[k], &aid))
			k++;
		if (k == nids)
			bson_oid_copy(&aid, &ids[nids++]);
	}
	if (nids == 0) {
		send_list(req, ls, NULL, 0);
		return;
	}
	struct api_call *uc = api_call_new(req, STORE_OP_FIND, STORE_USERS, got_authors);
	if (!uc) {
		fail_nomem(req);
		return;
	}
	uc->data = ls;
	if (store_filter_in_oids(&uc->op.filter, "_id", ids, nids) < 0) {
		store_op_clear(&uc->op);
		free(uc);
		fail_nomem(req);
		return;
	}
	api_call_submit(uc);
}

static void got_count(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	struct list_state *ls = c->data;
	if (err != STORE_OK) {
		api_fail_store(req, err, NULL);
		return;
	}
	ls->total = c->op.count;
	int64_t skip = (ls->page - 1) * ls->limit;
	if (ls->total <= skip) {
		send_list(req, ls, NULL, 0); /* past the end: an empty page */
		return;
	}
	struct api_call *pc = api_call_new(req, STORE_OP_FIND, STORE_POSTS, got_page);
	if (!pc) {
		fail_nomem(req);
		return;
	}
	pc->data = ls;
	if (build_filter(&pc->op.filter, ls->category) < 0 || store_filter_sort(&pc->op.filter, "createdAt", -1) < 0) {
		store_op_clear(&pc->op);
		free(pc);
		fail_nomem(req);
		return;
	}
	store_filter_page(&pc->op.filter, skip, ls->limit);
	api_call_submit(pc);
}

static int posts_list(struct http_request *req)
{
	int64_t page, limit;
	if (api_pagination(req, POSTS_DEFAULT_LIMIT, POSTS_MAX_LIMIT, &page, &limit) < 0)
		return APP_DONE;
	const struct json_value *q = app_query(req);
	struct verrors errs;
	if (validate(q, query_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	const char *category = json_get_str(q, "category", NULL);
	if (!category)
		category = "";
	const struct cache_entry *hit = cache_get(page, limit, category);
	if (hit) {
		if (evbuffer_add(http_body(req), hit->body, hit->len) < 0)
			return fail_nomem(req);
		http_set_status(req, 200);
		http_send(req);
		return APP_DONE;
	}
	struct list_state *ls = http_alloc(req, sizeof(*ls));
	if (!ls)
		return fail_nomem(req);
	memset(ls, 0, sizeof(*ls));
	ls->page = page;
	ls->limit = limit;
	ls->category = category; /* lives in the query tree, owned by the request */
	ls->generation = post_generation();
	struct api_call *c = api_call_new(req, STORE_OP_COUNT, STORE_POSTS, got_count);
	if (!c)
		return fail_nomem(req);
	c->data = ls;
	if (build_filter(&c->op.filter, category) < 0) {
		store_op_clear(&c->op);
		free(c);
		return fail_nomem(req);
	}
	return api_call_submit(c);
}

/* ---- GET /api/posts/:id ------------------------------------------------- */

/* Answer with a post whose author must be looked up (unless it is the
 * caller): the post is kept in the arena across the second call. */
static void got_post_author(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	struct raw_doc *raw = c->data;
	bson_t post;
	if (err != STORE_OK && err != STORE_NOT_FOUND) {
		api_fail_store(req, err, NULL);
		return;
	}
	if (raw_view(raw, &post) < 0) {
		app_fail(req, 500, "INTERNAL", "internal server error");
		return;
	}
	struct author a = {0};
	bson_oid_t aid;
	if (api_doc_oid(&post, "author", &aid) == 0)
		author_from_user(&a, &aid, err == STORE_OK ? c->op.result : NULL);
	send_post(req, (int)c->n, &post, &a);
}

static void send_with_author(struct http_request *req, int status, const bson_t *post)
{
	bson_oid_t aid;
	struct author a = {0};
	if (api_doc_oid(post, "author", &aid) < 0) {
		send_post(req, status, post, &a);
		return;
	}
	if (is_author(req, post)) {
		author_from_ctx(&a, req);
		send_post(req, status, post, &a);
		return;
	}
	struct raw_doc *raw = http_alloc(req, sizeof(*raw));
	struct api_call *c = raw && keep_doc(req, post, raw) == 0
	                             ? api_call_new(req, STORE_OP_FIND_BY_ID, STORE_USERS, got_post_author)
	                             : NULL;
	if (!c) {
		fail_nomem(req);
		return;
	}
	c->data = raw;
	c->n = status;
	bson_oid_copy(&aid, &c->op.id);
	api_call_submit(c);
}

static void got_post(struct api_call *c, enum store_err err)
{
	if (err != STORE_OK) {
		api_fail_store(c->req, err, NULL);
		return;
	}
	send_with_author(c->req, 200, c->op.result);
}

static int posts_get(struct http_request *req)
{
	bson_oid_t id;
	if (api_param_id(req, "id", &id) < 0)
		return APP_DONE;
	struct api_call *c = api_call_new(req, STORE_OP_FIND_BY_ID, STORE_POSTS, got_post);
	if (!c)
		return fail_nomem(req);
	bson_oid_copy(&id, &c->op.id);
	return api_call_submit(c);
}

/* ---- POST /api/posts ---------------------------------------------------- */

/* The validated post fields of the body as a document ($set or insert). */
static bson_t *fields_doc(const struct json_value *body)
{
	bson_t *doc = bson_new();
	if (!doc)
		return NULL;
	for (const char *const *f = post_fields; *f; f++) {
		size_t len;
		const char *s = json_get_str(body, *f, &len);
		if (s && (len > INT32_MAX || !bson_append_utf8(doc, *f, (int)strlen(*f), s, (int)len))) {
			bson_destroy(doc);
			return NULL;
		}
	}
	return doc;
}

static void created(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	posts_changed(); /* even on a reported error the insert may have landed */
	if (err != STORE_OK) {
		api_fail_store(req, err, c->op.dup_field);
		return;
	}
	struct author a;
	author_from_ctx(&a, req);
	send_post(req, 201, c->op.result, &a);
}

static int posts_create(struct http_request *req)
{
	const struct json_value *body = app_body(req);
	struct verrors errs;
	if (validate(body, create_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	bson_t *doc = fields_doc(body);
	if (!doc || !BSON_APPEND_OID(doc, "author", &auth_principal(req)->oid)) {
		if (doc)
			bson_destroy(doc);
		return fail_nomem(req);
	}
	struct api_call *c = api_call_new(req, STORE_OP_INSERT, STORE_POSTS, created);
	if (!c) {
		bson_destroy(doc);
		return fail_nomem(req);
	}
	c->op.doc = doc;
	return api_call_submit(c);
}

/* ---- PATCH and DELETE /api/posts/:id ------------------------------------ */

static void updated(struct api_call *c, enum store_err err)
{
	posts_changed();
	if (err != STORE_OK) {
		api_fail_store(c->req, err, c->op.dup_field);
		return;
	}
	send_with_author(c->req, 200, c->op.result);
}

static void deleted(struct api_call *c, enum store_err err)
{
	posts_changed();
	if (err != STORE_OK) {
		api_fail_store(c->req, err, NULL);
		return;
	}
	app_no_content(c->req);
}

/* The post exists: check ownership, then run the write (c->n: 1 patch, 0 delete). */
static void got_target(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	if (err != STORE_OK) {
		api_fail_store(req, err, NULL);
		return;
	}
	if (!is_author(req, c->op.result) && !is_admin(req)) {
		app_fail(req, 403, "FORBIDDEN", "only the author or an admin may change this post");
		return;
	}
	int patch = c->n == 1;
	struct api_call *w = api_call_new(req, patch ? STORE_OP_UPDATE_BY_ID : STORE_OP_DELETE_BY_ID, STORE_POSTS,
	                                  patch ? updated : deleted);
	if (!w) {
		fail_nomem(req);
		return;
	}
	bson_oid_copy(&c->op.id, &w->op.id);
	if (patch && !(w->op.doc = fields_doc(app_body(req)))) {
		store_op_clear(&w->op);
		free(w);
		fail_nomem(req);
		return;
	}
	api_call_submit(w);
}

static int load_target(struct http_request *req, int patch)
{
	bson_oid_t id;
	if (api_param_id(req, "id", &id) < 0)
		return APP_DONE;
	struct api_call *c = api_call_new(req, STORE_OP_FIND_BY_ID, STORE_POSTS, got_target);
	if (!c)
		return fail_nomem(req);
	bson_oid_copy(&id, &c->op.id);
	c->n = patch;
	return api_call_submit(c);
}

static int posts_patch(struct http_request *req)
{
	const struct json_value *body = app_body(req);
	struct verrors errs;
	if (validate(body, patch_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	int any = 0;
	for (const char *const *f = post_fields; *f; f++)
		any |= json_get_str(body, *f, NULL) != NULL;
	if (!any) {
		memset(&errs, 0, sizeof(errs));
		errs.count = 1;
		strcpy(errs.details[0].field, "body");
		strcpy(errs.details[0].message, "body must contain at least one of title, content, category");
		return app_fail_validation(req, &errs);
	}
	return load_target(req, 1);
}

static int posts_delete(struct http_request *req)
{
	return load_target(req, 0);
}

int posts_routes(struct app *app)
{
	int rc = 0;
	rc |= app_get(app, "/api/posts", posts_list);
	rc |= app_get(app, "/api/posts/:id", posts_get);
	rc |= app_post(app, "/api/posts", mw_auth, posts_create);
	rc |= app_patch(app, "/api/posts/:id", mw_auth, posts_patch);
	rc |= app_delete(app, "/api/posts/:id", mw_auth, posts_delete);
	return rc;
}

void posts_stop(void)
{
	for (size_t i = 0; i < POSTS_CACHE_SLOTS; i++)
		cache_drop(&cache[i]);
}
