/* posts.c - /api/posts (SPEC section 6): public listing and reading, writes
 * by authenticated users, edits and deletes by the author or an admin.
 *
 * A post is {title 1-200, content 1-50000, category optional 1-50, author
 * (ObjectId of the user)}; responses embed the author as {id, username,
 * email}. A list is one route job: count, the page (createdAt descending,
 * _id as tie-break), then the page's authors with one IN query (api_list).
 *
 * List responses are cached per worker for POSTS_CACHE_TTL_MS, keyed by
 * (page, limit, category), as the exact JSON bytes. Every post write bumps
 * post_generation in the shared scoreboard header after the write is
 * stored (on the route job's thread) and before the writer gets its
 * answer; an entry made under another
 * generation is never served, so a list asked for after a write returns
 * that write in every worker. A list computed while a write was landing is
 * stored under the generation read before its first database call, so it
 * cannot outlive that write either.
 *
 * With the cross-host bus configured (RESIL_BUS) lists are not cached: a
 * write on another host could not reach this host's cache before that
 * writer's answer without a Redis round trip on every cached read, which
 * costs about what the list query it saves (see HACKING.md, "Scale-out").
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
#define POSTS_CACHE_ENTRY_MAX (256u * 1024) /* larger pages are not cached */
#define POSTS_CACHE_BYTES_MAX (4u * 1024 * 1024)
#define CATEGORY_KEY_MAX 208 /* 50 code points of up to 4 bytes, NUL */

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
static atomic_int local_generation; /* without a supervisor (no scoreboard) */

static int post_generation(void)
{
	struct worker *w = worker_current();
	if (w && w->sb)
		return atomic_load_explicit(&w->sb->hdr.post_generation, memory_order_acquire);
	return atomic_load_explicit(&local_generation, memory_order_acquire);
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

/* A post was created, changed or deleted: every worker's cached lists are
 * stale from now on (entries of an older generation are never served).
 * Atomic only, so a route job calls it on its pool thread right after the
 * write, before the writer gets its answer. */
static void posts_changed(void)
{
	struct worker *w = worker_current();
	if (w && w->sb)
		atomic_fetch_add_explicit(&w->sb->hdr.post_generation, 1, memory_order_acq_rel);
	atomic_fetch_add_explicit(&local_generation, 1, memory_order_acq_rel);
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

/* Whether lists may be cached on this host (not with the cross-host bus). */
static int cache_on(void)
{
	struct worker *w = worker_current();
	return !w || !w->cfg || !w->cfg->bus[0];
}

static const struct cache_entry *cache_get(int64_t page, int64_t limit, const char *category)
{
	if (!cache_on())
		return NULL;
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
	if (len > POSTS_CACHE_ENTRY_MAX || strlen(category) >= CATEGORY_KEY_MAX || generation != post_generation() ||
	    !cache_on())
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

static int fail_nomem(struct http_request *req)
{
	return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
}

/* ---- rendering ---------------------------------------------------------- */

static void gen_str_field(yajl_gen g, const bson_t *doc, const char *field)
{
	bson_iter_t it;
	json_gen_cstr(g, field);
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
	json_gen_cstr(g, field);
	if (bson_iter_init_find(&it, doc, field) && BSON_ITER_HOLDS_DATE_TIME(&it))
		api_gen_iso(g, bson_iter_date_time(&it));
	else
		yajl_gen_null(g);
}

static void gen_opt_str(yajl_gen g, const char *key, const char *s)
{
	json_gen_cstr(g, key);
	if (s)
		json_gen_cstr(g, s);
	else
		yajl_gen_null(g);
}

/* The one wire format of a post: its fields and the author as {id,
 * username, email} from the author's user document (null fields if the
 * user is gone). */
static void gen_post(yajl_gen g, const bson_t *post, const bson_t *author)
{
	bson_iter_t it;
	bson_oid_t aid;
	char hex[25];
	yajl_gen_map_open(g);
	json_gen_cstr(g, "id");
	if (api_doc_oid(post, "_id", &aid) == 0) {
		store_id_format(&aid, hex);
		yajl_gen_string(g, (const unsigned char *)hex, 24);
	} else {
		yajl_gen_null(g);
	}
	gen_str_field(g, post, "title");
	gen_str_field(g, post, "content");
	if (bson_iter_init_find(&it, post, "category") && BSON_ITER_HOLDS_UTF8(&it))
		gen_str_field(g, post, "category");
	json_gen_cstr(g, "author");
	yajl_gen_map_open(g);
	json_gen_cstr(g, "id");
	if (api_doc_oid(post, "author", &aid) == 0) {
		store_id_format(&aid, hex);
		yajl_gen_string(g, (const unsigned char *)hex, 24);
	} else {
		yajl_gen_null(g);
	}
	gen_opt_str(g, "username", api_doc_str(author, "username"));
	gen_opt_str(g, "email", api_doc_str(author, "email"));
	yajl_gen_map_close(g);
	gen_date_field(g, post, "createdAt");
	gen_date_field(g, post, "updatedAt");
	yajl_gen_map_close(g);
}

static void gen_list_item(void *g, const bson_t *post, const struct api_list *l)
{
	gen_post(g, post, api_list_ref(l, post));
}

/* ---- GET /api/posts ----------------------------------------------------- */

struct list_job {
	struct api_job base;
	struct api_list list;
	char category[CATEGORY_KEY_MAX]; /* the cache key; "" = all */
	int generation;                  /* read before the first database call */
};

static void list_work(struct api_job *j)
{
	api_list_run(j, &((struct list_job *)j)->list);
}

static void list_done(struct api_job *j, struct http_request *req)
{
	struct list_job *lj = (struct list_job *)j;
	yajl_gen g = api_list_json(&lj->list, gen_list_item);
	const unsigned char *buf;
	size_t len;
	if (!g || yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok) {
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	} else {
		cache_put(lj->list.page, lj->list.limit, lj->category, lj->generation, buf, len);
		api_send_json(req, 200, buf, len);
	}
	if (g)
		yajl_gen_free(g);
}

static void list_cleanup(struct api_job *j)
{
	api_list_clear(&((struct list_job *)j)->list);
}

static int posts_list(struct http_request *req)
{
	int64_t page, limit;
	if (api_pagination(req, POSTS_DEFAULT_LIMIT, POSTS_MAX_LIMIT, &page, &limit) < 0)
		return APP_DONE;
	struct verrors errs;
	if (validate(app_query(req), query_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	const char *category = json_get_str(app_query(req), "category", NULL);
	category = category ? category : "";
	const struct cache_entry *hit = cache_get(page, limit, category);
	if (hit) {
		api_send_json(req, 200, hit->body, hit->len);
		return APP_DONE;
	}
	struct list_job *lj = api_job_new(req, sizeof(*lj), list_work, list_done);
	if (!lj)
		return fail_nomem(req);
	lj->base.cleanup = list_cleanup;
	api_job_reads(&lj->base);
	lj->list = (struct api_list){
	    .coll = COLL_POSTS, .page = page, .limit = limit, .join_field = "author", .join_coll = COLL_USERS};
	snprintf(lj->category, sizeof(lj->category), "%s", category);
	lj->generation = post_generation();
	if ((category[0] && store_filter_str(&lj->list.filter, "category", STORE_EQ, category) < 0) ||
	    store_filter_sort(&lj->list.filter, "createdAt", -1) < 0)
		return api_job_drop(&lj->base);
	return api_job_submit(&lj->base);
}

/* ---- one post: GET, POST, PATCH, DELETE ---------------------------------- */

struct post_job {
	struct api_job base;
	bson_oid_t id; /* the post (not for create) */
	bson_oid_t me; /* the caller (writes) */
	bool admin;
	bool remove;    /* DELETE rather than PATCH */
	bson_t *fields; /* create / patch input, consumed by the store */
	bson_t *post;   /* results */
	bson_t *author;
	int status;
};

static void post_cleanup(struct api_job *j)
{
	struct post_job *pj = (struct post_job *)j;
	if (pj->fields)
		bson_destroy(pj->fields);
	if (pj->post)
		bson_destroy(pj->post);
	if (pj->author)
		bson_destroy(pj->author);
}

/* The post's author's user document (NULL if gone or on a failed read: the
 * post is still answered, with null author fields). */
static void load_author(struct api_job *j, struct post_job *pj)
{
	bson_oid_t aid;
	struct store_op op;
	if (api_doc_oid(pj->post, "author", &aid) < 0)
		return;
	store_op_init(&op, STORE_OP_FIND_BY_ID, COLL_USERS);
	bson_oid_copy(&aid, &op.id);
	if (api_exec(j, &op) == STORE_OK) {
		pj->author = op.result;
		op.result = NULL;
	}
	store_op_clear(&op);
}

static void post_done(struct api_job *j, struct http_request *req)
{
	struct post_job *pj = (struct post_job *)j;
	if (!pj->post) {
		app_no_content(req);
		return;
	}
	yajl_gen g = app_gen(req);
	if (!g) {
		fail_nomem(req);
		return;
	}
	gen_post(g, pj->post, pj->author);
	app_send_gen(req, pj->status);
}

static void get_work(struct api_job *j)
{
	struct post_job *pj = (struct post_job *)j;
	if ((pj->post = api_find_by_id(j, COLL_POSTS, &pj->id)))
		load_author(j, pj);
}

static void create_work(struct api_job *j)
{
	struct post_job *pj = (struct post_job *)j;
	struct store_op op;
	store_op_init(&op, STORE_OP_INSERT, COLL_POSTS);
	op.doc = pj->fields;
	pj->fields = NULL;
	int rc = api_run(j, &op);
	posts_changed(); /* even on a reported error the insert may have landed */
	if (rc == 0) {
		pj->post = op.result;
		op.result = NULL;
		load_author(j, pj);
	}
	store_op_clear(&op);
}

/* PATCH or DELETE: the post must exist and the caller be its author or an admin. */
static void change_work(struct api_job *j)
{
	struct post_job *pj = (struct post_job *)j;
	bson_t *post = api_find_by_id(j, COLL_POSTS, &pj->id);
	bson_oid_t aid;
	if (!post)
		return;
	int mine = api_doc_oid(post, "author", &aid) == 0 && bson_oid_equal(&aid, &pj->me);
	bson_destroy(post);
	if (!mine && !pj->admin) {
		api_job_fail(j, 403, "FORBIDDEN", "only the author or an admin may change this post");
		return;
	}
	if (pj->remove) {
		struct store_op op;
		store_op_init(&op, STORE_OP_DELETE_BY_ID, COLL_POSTS);
		bson_oid_copy(&pj->id, &op.id);
		api_run(j, &op);
		store_op_clear(&op);
	} else if ((pj->post = api_update_by_id(j, COLL_POSTS, &pj->id, pj->fields))) {
		load_author(j, pj);
	}
	pj->fields = NULL; /* consumed by api_update_by_id */
	posts_changed();
}

static struct post_job *post_job_new(struct http_request *req, api_job_fn work, int status)
{
	struct post_job *pj = api_job_new(req, sizeof(*pj), work, post_done);
	if (!pj)
		return NULL;
	pj->base.cleanup = post_cleanup;
	pj->status = status;
	const struct principal *me = auth_principal(req);
	if (me) {
		bson_oid_copy(&me->oid, &pj->me);
		pj->admin = auth_is_admin(req);
	}
	return pj;
}

static int posts_get(struct http_request *req)
{
	bson_oid_t id;
	if (api_param_id(req, "id", &id) < 0)
		return APP_DONE;
	struct post_job *pj = post_job_new(req, get_work, 200);
	if (!pj)
		return fail_nomem(req);
	api_job_reads(&pj->base);
	bson_oid_copy(&id, &pj->id);
	return api_job_submit(&pj->base);
}

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

static int posts_create(struct http_request *req)
{
	const struct json_value *body = app_body(req);
	struct verrors errs;
	if (validate(body, create_rules, &errs) > 0)
		return app_fail_validation(req, &errs);
	struct post_job *pj = post_job_new(req, create_work, 201);
	if (!pj)
		return fail_nomem(req);
	pj->fields = fields_doc(body);
	if (!pj->fields || !BSON_APPEND_OID(pj->fields, "author", &pj->me))
		return api_job_drop(&pj->base);
	return api_job_submit(&pj->base);
}

static int posts_patch(struct http_request *req)
{
	const struct json_value *body = app_body(req);
	struct verrors errs;
	bson_oid_t id;
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
	if (api_param_id(req, "id", &id) < 0)
		return APP_DONE;
	struct post_job *pj = post_job_new(req, change_work, 200);
	if (!pj)
		return fail_nomem(req);
	bson_oid_copy(&id, &pj->id);
	if (!(pj->fields = fields_doc(body)))
		return api_job_drop(&pj->base);
	return api_job_submit(&pj->base);
}

static int posts_delete(struct http_request *req)
{
	bson_oid_t id;
	if (api_param_id(req, "id", &id) < 0)
		return APP_DONE;
	struct post_job *pj = post_job_new(req, change_work, 204);
	if (!pj)
		return fail_nomem(req);
	bson_oid_copy(&id, &pj->id);
	pj->remove = true;
	return api_job_submit(&pj->base);
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
