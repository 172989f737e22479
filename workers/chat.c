/* chat.c - the WebSocket chat of SPEC section 7 on GET /ws.
 *
 * Upgrade: the JWT (?token= or Authorization: Bearer) is checked before
 * anything else (401 without an upgrade), then the upgrade headers, then
 * the user is loaded from the store (401 if gone or inactive); only then
 * does src/ws.c answer 101 and take the socket.
 *
 * Events of one socket are handled strictly in arrival order: while one
 * waits for the store (join_room, send_message), later ones queue on the
 * socket (bounded; past a few dozen the socket is no longer read, so a
 * fast sender is slowed by TCP instead of by our memory). A token bucket
 * per socket limits the rate: excess messages get an `error` event, and a
 * sender that keeps going is closed with 1008.
 *
 * Rooms: each worker keeps a registry room id -> joined sockets of this
 * worker. send_message stores the message, then publishes new_message on
 * the bus (src/bus.h); every worker - this one included - receives the
 * record from the supervisor in one total order and queues one shared
 * frame on each of its member sockets. While a join is loading history,
 * live frames for that socket are held and released after
 * recent_messages, minus those the history already contained.
 */
#include "autoconfig.h"

#include <sodium.h>

#include "api.h"
#include "auth.h"
#include "bus.h"
#include "handlers.h"
#include "json.h"
#include "log.h"
#include "routes.h"
#include "scoreboard.h"
#include "ws.h"

#include <errno.h>
#include <event2/event.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <yajl/yajl_gen.h>

#define CHAT_HISTORY 50
#define CHAT_CONTENT_MAX 2000      /* characters (code points) */
#define CHAT_ROOMS_PER_SOCKET 64
#define CHAT_PENDING_PAUSE 32      /* queued events before the socket stops being read */
#define CHAT_PENDING_MAX 512       /* beyond: the event is refused */
#define CHAT_BURST_S 4.0           /* token bucket: ws_message_rate events/s, 4 s worth of burst; */
				   /* as many refused events (refilled at the rate) before 1008 */
#define CHAT_JOIN_HOLD 128         /* live frames held while a join loads history */
#define CHAT_OP_TIMEOUT_MS 10000
#define CHAT_BATCH_MAX 1024        /* messages waiting for the next group commit (as many as */
				   /* the store takes in flight: beyond, "server busy") */
#define CHAT_JSON_DEPTH 16
#define JWT_SKEW_S 5

/* Bus record: kind, room id, message id (zero: none), excluded socket tag
 * (zero: none), then the event's JSON text. */
#define REC_ROOM_EVENT 1
#define REC_HDR (1 + 12 + 12 + 8)

enum chat_kind { EV_JOIN = 1, EV_LEAVE, EV_SEND, EV_TYPING_START, EV_TYPING_STOP };

struct chat_sock;

struct held {
	struct ws_frame *f;
	bson_oid_t mid;
	int has_mid;
};

struct join_hold {
	uint32_t n;
	struct held e[CHAT_JOIN_HOLD];
};

struct room_member {
	struct chat_sock *s;
	struct join_hold *hold; /* non-NULL while this socket's join loads history */
};

struct room {
	bson_oid_t id;
	struct room *next; /* hash chain */
	struct room_member *m;
	uint32_t n, cap;
};

struct member_ref {
	struct room *room;
	uint32_t idx; /* position in room->m */
};

struct pending {
	struct pending *next;
	size_t len;
	char data[];
};

/* Per-socket state: the application area of its ws_conn. */
struct chat_sock {
	bson_oid_t user;
	char user_hex[25];
	char username[32];
	uint64_t tag; /* unique per socket across workers: pid << 32 | serial */
	struct member_ref *rooms;
	uint16_t nrooms, caprooms;
	double tokens, abuse;
	uint64_t bucket_ms;
	int limited; /* an error was sent for the current run of refusals */
	struct pending *ph, *pt;
	uint32_t npending;
	int busy; /* a store call for this socket is in flight */
	uint8_t sio;    /* Socket.IO v4 client on /socket.io/ (Engine.IO framing) */
	uint8_t sio_ns; /* its "/" namespace is connected */
	uint8_t authed; /* user known (always, except a Socket.IO socket before CONNECT) */
};

/* A parsed client event (pure: no state touched). */
struct chat_cmd {
	int kind;
	bson_oid_t room;
	int room_ok;         /* roomId present and a valid id */
	const char *content; /* EV_SEND, into doc */
	size_t content_len;
	const char *error;   /* message of the `error` event, when parsing failed */
	struct json_value *doc;
};

struct chat {
	struct ws_server *ws;
	struct bus *bus;
	struct room **buckets;
	uint32_t nbuckets, nrooms;
	yajl_gen gen;
	uint32_t serial;
	uint64_t pid_tag;
	struct sb_entry *sbe;
	const struct resil_config *cfg;
	double rate, burst; /* ws_message_rate, CHAT_BURST_S of it */
	uint32_t ping_ms;   /* keep-alive period (Engine.IO pingInterval) */
	uint64_t sid_key;   /* masks Socket.IO session ids */
	uint32_t sio_auth_ms; /* a Socket.IO socket without a token must CONNECT with one within this */
	struct {
		struct ws_conn *c;
		bson_t *doc;
	} queue[CHAT_BATCH_MAX]; /* messages waiting for the next batch */
	size_t nqueue;
	int batch_inflight;
};

static struct chat g;

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------- parsing */

static size_t utf8_chars(const char *s, size_t len)
{
	size_t n = 0;
	for (size_t i = 0; i < len; i++)
		n += ((unsigned char)s[i] & 0xC0u) != 0x80u;
	return n;
}

static void chat_cmd_free(struct chat_cmd *cmd)
{
	json_free(cmd->doc);
	cmd->doc = NULL;
}

/* Parse one text message into cmd. 0, or -1 with cmd->error set. The
 * caller frees cmd with chat_cmd_free() either way. */
static int chat_parse_event(struct chat_cmd *cmd, const char *ev, size_t el, const struct json_value *data);

static int chat_parse(const char *msg, size_t len, struct chat_cmd *cmd)
{
	memset(cmd, 0, sizeof(*cmd));
	if (json_parse(msg, len, CHAT_JSON_DEPTH, 0, &cmd->doc) != JSON_OK || cmd->doc->type != JSON_OBJECT) {
		cmd->error = "invalid JSON";
		return -1;
	}
	size_t el;
	const char *ev = json_get_str(cmd->doc, "event", &el);
	if (!ev) {
		cmd->error = "event name required";
		return -1;
	}
	return chat_parse_event(cmd, ev, el, json_get(cmd->doc, "data"));
}

/* A Socket.IO EVENT packet's payload: ["name", data]. */
static int chat_parse_sio(const char *msg, size_t len, struct chat_cmd *cmd)
{
	memset(cmd, 0, sizeof(*cmd));
	if (json_parse(msg, len, CHAT_JSON_DEPTH, 0, &cmd->doc) != JSON_OK || cmd->doc->type != JSON_ARRAY) {
		cmd->error = "invalid JSON";
		return -1;
	}
	const struct json_value *a = cmd->doc;
	if (!a->len || a->items[0]->type != JSON_STRING) {
		cmd->error = "event name required";
		return -1;
	}
	return chat_parse_event(cmd, a->items[0]->s, a->items[0]->len, a->len > 1 ? a->items[1] : NULL);
}

static int chat_parse_event(struct chat_cmd *cmd, const char *ev, size_t el, const struct json_value *data)
{
	static const struct {
		const char *name;
		int kind;
	} names[] = {{"join_room", EV_JOIN},       {"leave_room", EV_LEAVE},        {"send_message", EV_SEND},
	             {"typing_start", EV_TYPING_START}, {"typing_stop", EV_TYPING_STOP}};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strlen(names[i].name) == el && memcmp(names[i].name, ev, el) == 0)
			cmd->kind = names[i].kind;
	if (!cmd->kind) {
		cmd->error = "unknown event";
		return -1;
	}
	if (!data || data->type != JSON_OBJECT) {
		cmd->error = "data must be an object";
		return -1;
	}
	size_t rl;
	const char *rid = json_get_str(data, "roomId", &rl);
	cmd->room_ok = rid && store_id_parse(rid, rl, &cmd->room) == 0;
	if (cmd->kind == EV_SEND) {
		cmd->content = json_get_str(data, "content", &cmd->content_len);
		size_t chars = cmd->content ? utf8_chars(cmd->content, cmd->content_len) : 0;
		if (!cmd->content || chars < 1 || chars > CHAT_CONTENT_MAX) {
			cmd->error = "content must be 1-2000 characters";
			return -1;
		}
	}
	if (!cmd->room_ok && cmd->kind != EV_JOIN) {
		cmd->error = "roomId must be a valid id";
		return -1;
	}
	return 0;
}

static void sock_set_user(struct chat_sock *cs, const bson_oid_t *id, const char *username)
{
	cs->user = *id;
	store_id_format(id, cs->user_hex);
	snprintf(cs->username, sizeof(cs->username), "%s", username ? username : "");
}

/* ------------------------------------------------------------- output */

#define GS(gn, s) yajl_gen_string(gn, (const unsigned char *)(s), strlen(s))

static yajl_gen gen_begin(const char *event)
{
	yajl_gen gn = g.gen;
	yajl_gen_clear(gn);
	yajl_gen_reset(gn, NULL);
	yajl_gen_map_open(gn);
	GS(gn, "event");
	GS(gn, event);
	GS(gn, "data");
	return gn;
}

static int gen_end(const char **out, size_t *len)
{
	yajl_gen_map_close(g.gen);
	const unsigned char *buf;
	if (yajl_gen_get_buf(g.gen, &buf, len) != yajl_gen_status_ok)
		return -1;
	*out = (const char *)buf;
	return 0;
}

static void gen_oid(yajl_gen gn, const bson_oid_t *id)
{
	char hex[25];
	store_id_format(id, hex);
	yajl_gen_string(gn, (const unsigned char *)hex, 24);
}

/* An event as generated here, {"event":"NAME","data":DATA}, as a Socket.IO
 * EVENT packet 42["NAME",DATA] in a new frame (NULL if it is not one). */
static struct ws_frame *sio_frame(const char *json, size_t len)
{
	static const char pre[] = "{\"event\":\"";
	const size_t pl = sizeof(pre) - 1;
	if (len < pl + 2 || memcmp(json, pre, pl) != 0 || json[len - 1] != '}')
		return NULL;
	const char *name = json + pl;
	const char *q = memchr(name, '"', len - pl);
	static const char mid[] = "\",\"data\":";
	const size_t ml = sizeof(mid) - 1;
	if (!q || (size_t)(json + len - q) < ml + 1 || memcmp(q, mid, ml) != 0)
		return NULL;
	const char *data = q + ml;
	size_t nl = (size_t)(q - name), dl = (size_t)(json + len - 1 - data);
	char *out = malloc(4 + nl + 2 + dl + 1);
	if (!out)
		return NULL;
	size_t n = 0;
	memcpy(out + n, "42[\"", 4), n += 4;
	memcpy(out + n, name, nl), n += nl;
	memcpy(out + n, "\",", 2), n += 2;
	memcpy(out + n, data, dl), n += dl;
	out[n++] = ']';
	struct ws_frame *f = ws_frame_text(out, n);
	free(out);
	return f;
}

/* Send a generated event to one socket in its protocol's framing. */
static void send_event(struct ws_conn *c, const char *buf, size_t len)
{
	struct chat_sock *cs = ws_conn_app(c);
	if (!cs->sio) {
		ws_send_text(c, buf, len);
		return;
	}
	struct ws_frame *f = sio_frame(buf, len);
	if (f) {
		ws_send_frame(c, f);
		ws_frame_unref(f);
	}
}

static void send_gen(struct ws_conn *c)
{
	const char *buf;
	size_t len;
	if (gen_end(&buf, &len) == 0)
		send_event(c, buf, len);
}

static void send_error(struct ws_conn *c, const char *message)
{
	yajl_gen gn = gen_begin("error");
	yajl_gen_map_open(gn);
	GS(gn, "message");
	GS(gn, message);
	yajl_gen_map_close(gn);
	send_gen(c);
}

/* {id, roomId, content, sender: {id, username}, createdAt} of a stored
 * message (the REST history uses the same shape). */
static void gen_message(yajl_gen gn, const bson_t *m)
{
	bson_oid_t oid;
	bson_iter_t it;
	const char *s;
	yajl_gen_map_open(gn);
	GS(gn, "id");
	if (api_doc_oid(m, "_id", &oid) == 0)
		gen_oid(gn, &oid);
	else
		yajl_gen_null(gn);
	GS(gn, "roomId");
	if (api_doc_oid(m, "room", &oid) == 0)
		gen_oid(gn, &oid);
	else
		yajl_gen_null(gn);
	GS(gn, "content");
	if (bson_iter_init_find(&it, m, "content") && BSON_ITER_HOLDS_UTF8(&it)) {
		uint32_t len;
		s = bson_iter_utf8(&it, &len);
		yajl_gen_string(gn, (const unsigned char *)s, len);
	} else {
		yajl_gen_null(gn);
	}
	GS(gn, "sender");
	yajl_gen_map_open(gn);
	GS(gn, "id");
	if (api_doc_oid(m, "sender", &oid) == 0)
		gen_oid(gn, &oid);
	else
		yajl_gen_null(gn);
	GS(gn, "username");
	if ((s = api_doc_str(m, "senderName")))
		GS(gn, s);
	else
		yajl_gen_null(gn);
	yajl_gen_map_close(gn);
	GS(gn, "createdAt");
	if (bson_iter_init_find(&it, m, "createdAt") && BSON_ITER_HOLDS_DATE_TIME(&it))
		api_gen_iso(gn, bson_iter_date_time(&it));
	else
		yajl_gen_null(gn);
	yajl_gen_map_close(gn);
}

/* ------------------------------------------------------------ registry */

static uint32_t room_hash(const bson_oid_t *id)
{
	uint32_t h = 2166136261u;
	for (int i = 0; i < 12; i++)
		h = (h ^ id->bytes[i]) * 16777619u;
	return h;
}

static struct room *room_find(const bson_oid_t *id)
{
	if (!g.nbuckets)
		return NULL;
	for (struct room *r = g.buckets[room_hash(id) & (g.nbuckets - 1)]; r; r = r->next)
		if (bson_oid_equal(&r->id, id))
			return r;
	return NULL;
}

static int registry_grow(void)
{
	uint32_t nb = g.nbuckets ? g.nbuckets * 2 : 64;
	struct room **b = calloc(nb, sizeof(*b));
	if (!b)
		return -1;
	for (uint32_t i = 0; i < g.nbuckets; i++) {
		struct room *r = g.buckets[i], *next;
		for (; r; r = next) {
			next = r->next;
			uint32_t k = room_hash(&r->id) & (nb - 1);
			r->next = b[k];
			b[k] = r;
		}
	}
	free(g.buckets);
	g.buckets = b;
	g.nbuckets = nb;
	return 0;
}

static struct room *room_get(const bson_oid_t *id)
{
	struct room *r = room_find(id);
	if (r)
		return r;
	if (g.nrooms >= g.nbuckets && registry_grow() < 0)
		return NULL;
	r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->id = *id;
	uint32_t k = room_hash(id) & (g.nbuckets - 1);
	r->next = g.buckets[k];
	g.buckets[k] = r;
	g.nrooms++;
	return r;
}

static void room_release(struct room *r)
{
	if (r->n)
		return;
	struct room **pp = &g.buckets[room_hash(&r->id) & (g.nbuckets - 1)];
	while (*pp && *pp != r)
		pp = &(*pp)->next;
	if (*pp)
		*pp = r->next;
	g.nrooms--;
	free(r->m);
	free(r);
}

static void hold_free(struct join_hold *h)
{
	if (!h)
		return;
	for (uint32_t i = 0; i < h->n; i++)
		ws_frame_unref(h->e[i].f);
	free(h);
}

static int member_index(const struct chat_sock *cs, const struct room *r)
{
	for (int k = 0; k < cs->nrooms; k++)
		if (cs->rooms[k].room == r)
			return k;
	return -1;
}

/* Add cs to room id (if not there yet); returns the member entry. */
static struct room_member *member_add(struct chat_sock *cs, const bson_oid_t *id)
{
	struct room *r = room_get(id);
	if (!r)
		return NULL;
	int k = member_index(cs, r);
	if (k >= 0)
		return &r->m[cs->rooms[k].idx];
	if (cs->nrooms >= CHAT_ROOMS_PER_SOCKET)
		goto fail;
	if (cs->nrooms == cs->caprooms) {
		uint16_t nc = cs->caprooms ? (uint16_t)(cs->caprooms * 2) : 2;
		struct member_ref *nr = realloc(cs->rooms, sizeof(*nr) * nc);
		if (!nr)
			goto fail;
		cs->rooms = nr;
		cs->caprooms = nc;
	}
	if (r->n == r->cap) {
		uint32_t nc = r->cap ? r->cap * 2 : 4;
		struct room_member *nm = realloc(r->m, sizeof(*nm) * nc);
		if (!nm)
			goto fail;
		r->m = nm;
		r->cap = nc;
	}
	r->m[r->n] = (struct room_member){.s = cs};
	cs->rooms[cs->nrooms++] = (struct member_ref){.room = r, .idx = r->n};
	r->n++;
	return &r->m[r->n - 1];
fail:
	room_release(r);
	return NULL;
}

static void member_remove_at(struct chat_sock *cs, int k)
{
	struct room *r = cs->rooms[k].room;
	uint32_t idx = cs->rooms[k].idx;
	hold_free(r->m[idx].hold);
	uint32_t last = r->n - 1;
	if (idx != last) {
		r->m[idx] = r->m[last];
		struct chat_sock *moved = r->m[idx].s;
		int mk = member_index(moved, r);
		if (mk >= 0)
			moved->rooms[mk].idx = idx;
	}
	r->n--;
	cs->rooms[k] = cs->rooms[cs->nrooms - 1];
	cs->nrooms--;
	if (!cs->nrooms) {
		free(cs->rooms);
		cs->rooms = NULL;
		cs->caprooms = 0;
	}
	room_release(r);
}

static struct room_member *member_get(struct chat_sock *cs, const bson_oid_t *id)
{
	struct room *r = room_find(id);
	int k = r ? member_index(cs, r) : -1;
	return k < 0 ? NULL : &r->m[cs->rooms[k].idx];
}

/* ------------------------------------------------------------ broadcast */

static int publish(const bson_oid_t *room, const bson_oid_t *mid, uint64_t exclude, const char *json, size_t len)
{
	unsigned char rec[REC_HDR + 16384];
	unsigned char *p = rec;
	unsigned char *heap = NULL;
	if (len > sizeof(rec) - REC_HDR) {
		if (len > BUS_MAX_MSG - REC_HDR)
			return -1;
		heap = malloc(REC_HDR + len);
		if (!heap)
			return -1;
		p = heap;
	}
	p[0] = REC_ROOM_EVENT;
	memcpy(p + 1, room->bytes, 12);
	if (mid)
		memcpy(p + 13, mid->bytes, 12);
	else
		memset(p + 13, 0, 12);
	for (int i = 0; i < 8; i++)
		p[25 + i] = (unsigned char)(exclude >> (8 * i));
	memcpy(p + REC_HDR, json, len);
	int rc = bus_publish(g.bus, p, REC_HDR + len);
	free(heap);
	if (rc < 0)
		log_warn(NULL, "chat broadcast dropped: bus queue full", LF_INT("bytes", (int64_t)len));
	return rc;
}

static void hold_frame(struct join_hold *h, struct ws_frame *f, const bson_oid_t *mid)
{
	if (h->n >= CHAT_JOIN_HOLD)
		return; /* bounded: the socket is catching up through its history */
	struct held *e = &h->e[h->n++];
	e->f = f;
	f->refs++;
	e->has_mid = mid != NULL;
	if (mid)
		e->mid = *mid;
}

/* A bus record: queue one shared frame on every local member socket. */
static void chat_deliver(const unsigned char *rec, size_t len, void *ud)
{
	(void)ud;
	if (len < REC_HDR || rec[0] != REC_ROOM_EVENT)
		return;
	bson_oid_t room, mid;
	memcpy(room.bytes, rec + 1, 12);
	memcpy(mid.bytes, rec + 13, 12);
	static const unsigned char zero[12];
	int has_mid = memcmp(mid.bytes, zero, 12) != 0;
	uint64_t exclude = 0;
	for (int i = 0; i < 8; i++)
		exclude |= (uint64_t)rec[25 + i] << (8 * i);
	struct room *r = room_find(&room);
	if (!r || !r->n)
		return;
	const char *json = (const char *)rec + REC_HDR;
	struct ws_frame *f = ws_frame_text(json, len - REC_HDR);
	struct ws_frame *fs = NULL; /* the Socket.IO variant, made on first use */
	if (!f)
		return;
	/* Sending never changes membership (a socket closed for its backlog
	 * leaves its rooms later, from ws.c's close path). */
	for (uint32_t i = 0; i < r->n; i++) {
		struct room_member *m = &r->m[i];
		struct ws_frame *mf = f;
		if (exclude && m->s->tag == exclude)
			continue;
		if (m->s->sio) {
			if (!fs && !(fs = sio_frame(json, len - REC_HDR)))
				continue;
			mf = fs;
		}
		if (m->hold)
			hold_frame(m->hold, mf, has_mid ? &mid : NULL);
		else
			ws_send_frame(ws_conn_from_app(m->s), mf);
	}
	ws_frame_unref(f);
	ws_frame_unref(fs);
}

/* ------------------------------------------------------- store calls */

struct chat_op;
typedef void (*chat_step)(struct chat_op *o, struct ws_conn *c, enum store_err err);

struct chat_op {
	struct store_op op;
	struct ws_conn *c;
	chat_step step;
	bson_oid_t room;
	char room_name[128];
};

static void process_pending(struct ws_conn *c);

static void op_done(struct store_op *sop, enum store_err err)
{
	struct chat_op *o = sop->user;
	struct ws_conn *c = o->c;
	struct chat_sock *cs = ws_conn_app(c);
	cs->busy = 0;
	o->step(o, c, err); /* may submit the next call (busy again) */
	store_op_clear(&o->op);
	free(o);
	if (!cs->busy)
		process_pending(c);
	ws_conn_unref(c);
}

static struct chat_op *op_new(struct ws_conn *c, int kind, int coll, chat_step step)
{
	struct chat_op *o = calloc(1, sizeof(*o));
	if (!o)
		return NULL;
	store_op_init(&o->op, kind, coll);
	o->c = c;
	o->step = step;
	o->op.done = op_done;
	o->op.user = o;
	o->op.deadline_ms = jobs_now_ms() + CHAT_OP_TIMEOUT_MS;
	return o;
}

/* Submit o; on failure tell the client and free o. 0 or -1. */
static int op_submit(struct chat_op *o)
{
	struct ws_conn *c = o->c;
	struct chat_sock *cs = ws_conn_app(c);
	struct store *st = api_store();
	if (!st || store_submit(st, &o->op) < 0) {
		store_op_clear(&o->op);
		free(o);
		send_error(c, "service unavailable");
		return -1;
	}
	cs->busy = 1;
	ws_conn_ref(c);
	return 0;
}

static const char *store_message(enum store_err err)
{
	switch (err) {
	case STORE_TIMEOUT:
		return "request timed out";
	case STORE_BUSY:
		return "server busy, try again";
	default:
		return "service unavailable";
	}
}

/* ---- join_room */

static void release_hold(struct chat_sock *cs, const bson_oid_t *room, bson_t **docs, size_t ndocs)
{
	struct room_member *m = member_get(cs, room);
	if (!m || !m->hold)
		return;
	struct join_hold *h = m->hold;
	m->hold = NULL;
	struct ws_conn *c = ws_conn_from_app(cs);
	for (uint32_t i = 0; i < h->n; i++) {
		int dup = 0;
		bson_oid_t id;
		for (size_t k = 0; h->e[i].has_mid && k < ndocs && !dup; k++)
			dup = api_doc_oid(docs[k], "_id", &id) == 0 && bson_oid_equal(&id, &h->e[i].mid);
		if (!dup)
			ws_send_frame(c, h->e[i].f);
	}
	hold_free(h);
}

static void history_loaded(struct chat_op *o, struct ws_conn *c, enum store_err err)
{
	struct chat_sock *cs = ws_conn_app(c);
	if (ws_conn_closing(c))
		return;
	if (err != STORE_OK) {
		send_error(c, store_message(err));
		release_hold(cs, &o->room, NULL, 0);
		return;
	}
	/* Fetched newest first (so the limit keeps the latest); sent oldest first. */
	yajl_gen gn = gen_begin("recent_messages");
	yajl_gen_array_open(gn);
	for (size_t i = o->op.ndocs; i-- > 0;)
		gen_message(gn, o->op.docs[i]);
	yajl_gen_array_close(gn);
	send_gen(c);
	release_hold(cs, &o->room, o->op.docs, o->op.ndocs);
}

static int room_has_member(const bson_t *room, const bson_oid_t *user)
{
	bson_iter_t it, child;
	if (!bson_iter_init_find(&it, room, "members") || !BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &child))
		return 0;
	while (bson_iter_next(&child))
		if (BSON_ITER_HOLDS_OID(&child) && bson_oid_equal(bson_iter_oid(&child), user))
			return 1;
	return 0;
}

static void room_loaded(struct chat_op *o, struct ws_conn *c, enum store_err err)
{
	struct chat_sock *cs = ws_conn_app(c);
	if (ws_conn_closing(c))
		return;
	if (err == STORE_NOT_FOUND || (err == STORE_OK && !room_has_member(o->op.result, &cs->user))) {
		send_error(c, "access denied to room");
		return;
	}
	if (err != STORE_OK) {
		send_error(c, store_message(err));
		return;
	}
	struct room_member *m = member_add(cs, &o->room);
	if (!m) {
		send_error(c, cs->nrooms >= CHAT_ROOMS_PER_SOCKET ? "too many rooms joined" : "service unavailable");
		return;
	}
	if (!m->hold)
		m->hold = calloc(1, sizeof(*m->hold)); /* NULL: no holding, live frames flow at once */
	const char *name = api_doc_str(o->op.result, "name");
	yajl_gen gn = gen_begin("room_joined");
	yajl_gen_map_open(gn);
	GS(gn, "roomId");
	gen_oid(gn, &o->room);
	GS(gn, "roomName");
	GS(gn, name ? name : "");
	yajl_gen_map_close(gn);
	send_gen(c);

	struct chat_op *h = op_new(c, STORE_OP_FIND, STORE_MESSAGES, history_loaded);
	if (!h) {
		send_error(c, "service unavailable");
		release_hold(cs, &o->room, NULL, 0);
		return;
	}
	h->room = o->room;
	if (store_filter_oid(&h->op.filter, "room", STORE_EQ, &o->room) < 0 ||
	    store_filter_sort(&h->op.filter, "createdAt", -1) < 0) {
		store_op_clear(&h->op);
		free(h);
		send_error(c, "service unavailable");
		release_hold(cs, &o->room, NULL, 0);
		return;
	}
	store_filter_page(&h->op.filter, 0, CHAT_HISTORY);
	if (op_submit(h) < 0)
		release_hold(cs, &o->room, NULL, 0);
}

static void do_join(struct ws_conn *c, const struct chat_cmd *cmd)
{
	if (!cmd->room_ok) {
		send_error(c, "access denied to room");
		return;
	}
	struct chat_op *o = op_new(c, STORE_OP_FIND_BY_ID, STORE_ROOMS, room_loaded);
	if (!o) {
		send_error(c, "service unavailable");
		return;
	}
	o->room = cmd->room;
	o->op.id = cmd->room;
	op_submit(o);
}

/* ---- send_message: group commit
 *
 * Messages are stored in batches: while one batch is in the database, the
 * messages that arrive wait in g.queue and go together in the next one
 * (one transaction on SQLite), so under load the commit is shared instead
 * of paid per message. Every queued message holds its socket busy (its
 * later events wait behind it, keeping per-socket order) and a reference
 * to it; the queue is bounded by CHAT_BATCH_MAX. */

struct chat_batch {
	struct store_op op;
	size_t n;
	struct ws_conn *c[];
};

static void batch_submit(void);

static void batch_release(struct ws_conn *c)
{
	struct chat_sock *cs = ws_conn_app(c);
	cs->busy = 0;
	process_pending(c); /* may queue this socket's next message */
	ws_conn_unref(c);
}

static void batch_done(struct store_op *sop, enum store_err err)
{
	struct chat_batch *b = sop->user;
	g.batch_inflight = 0;
	/* The stored prefix goes out in order; the rest hear why not. */
	for (size_t i = 0; i < b->n; i++) {
		struct ws_conn *c = b->c[i];
		if (i < b->op.ndocs) {
			if (chat_publish_message(b->op.docs[i]) < 0 && !ws_conn_closing(c))
				send_error(c, "message stored but not delivered, server busy");
		} else if (!ws_conn_closing(c)) {
			send_error(c, store_message(err));
		}
	}
	g.batch_inflight = 1; /* what the releases queue waits for the next batch */
	for (size_t i = 0; i < b->n; i++)
		batch_release(b->c[i]);
	g.batch_inflight = 0;
	store_op_clear(&b->op);
	free(b);
	batch_submit();
}

/* Hand what is queued to the store as one batch. 0, or -1 if it could not
 * be submitted (the entries are then still queued, their documents freed). */
static int batch_start(void)
{
	size_t n = g.nqueue;
	struct chat_batch *b = malloc(sizeof(*b) + n * sizeof(b->c[0]));
	bson_t **docs = calloc(n, sizeof(*docs));
	struct store *st = api_store();
	if (!b || !docs) {
		for (size_t i = 0; i < n; i++)
			bson_destroy(g.queue[i].doc);
		free(docs);
		free(b);
		return -1;
	}
	store_op_init(&b->op, STORE_OP_INSERT_MANY, STORE_MESSAGES);
	b->op.batch = docs;
	b->op.nbatch = n;
	b->op.done = batch_done;
	b->op.user = b;
	b->op.deadline_ms = jobs_now_ms() + CHAT_OP_TIMEOUT_MS;
	b->n = n;
	for (size_t i = 0; i < n; i++) {
		b->c[i] = g.queue[i].c;
		docs[i] = g.queue[i].doc;
	}
	if (!st || store_submit(st, &b->op) < 0) {
		store_op_clear(&b->op); /* frees the documents */
		free(b);
		return -1;
	}
	g.nqueue = 0;
	g.batch_inflight = 1;
	return 0;
}

/* Submit the queue unless a batch is in flight. When the store refuses it,
 * every sender hears so and is released (its next queued event may queue
 * again: those are tried in the next round). */
static void batch_submit(void)
{
	while (!g.batch_inflight && g.nqueue) {
		if (batch_start() == 0)
			return;
		size_t n = g.nqueue;
		g.batch_inflight = 1; /* releases queue behind the failed entries */
		for (size_t i = 0; i < n; i++) {
			struct ws_conn *c = g.queue[i].c;
			if (!ws_conn_closing(c))
				send_error(c, "service unavailable");
			batch_release(c);
		}
		g.batch_inflight = 0;
		memmove(g.queue, g.queue + n, (g.nqueue - n) * sizeof(g.queue[0]));
		g.nqueue -= n;
	}
}

int chat_publish_message(const bson_t *msg)
{
	bson_oid_t room, mid;
	if (!g.bus || api_doc_oid(msg, "room", &room) < 0)
		return -1;
	int has_mid = api_doc_oid(msg, "_id", &mid) == 0;
	yajl_gen gn = gen_begin("new_message");
	gen_message(gn, msg);
	const char *buf;
	size_t len;
	if (gen_end(&buf, &len) < 0)
		return -1;
	return publish(&room, has_mid ? &mid : NULL, 0, buf, len);
}

static void do_send(struct ws_conn *c, const struct chat_cmd *cmd)
{
	struct chat_sock *cs = ws_conn_app(c);
	if (!member_get(cs, &cmd->room)) {
		send_error(c, "join the room first");
		return;
	}
	if (cmd->content_len > INT32_MAX) {
		send_error(c, "content must be 1-2000 characters");
		return;
	}
	if (g.nqueue >= CHAT_BATCH_MAX) {
		send_error(c, "server busy, try again");
		return;
	}
	bson_t *doc = bson_new();
	if (!doc || !bson_append_oid(doc, "room", 4, &cmd->room) || !bson_append_oid(doc, "sender", 6, &cs->user) ||
	    !bson_append_utf8(doc, "senderName", 10, cs->username, -1) ||
	    !bson_append_utf8(doc, "content", 7, cmd->content, (int)cmd->content_len)) {
		if (doc)
			bson_destroy(doc);
		send_error(c, "service unavailable");
		return;
	}
	g.queue[g.nqueue].c = c;
	g.queue[g.nqueue].doc = doc;
	g.nqueue++;
	cs->busy = 1;
	ws_conn_ref(c);
	batch_submit();
}

/* ---- typing */

static void do_typing(struct ws_conn *c, const struct chat_cmd *cmd)
{
	struct chat_sock *cs = ws_conn_app(c);
	if (!member_get(cs, &cmd->room)) {
		send_error(c, "join the room first");
		return;
	}
	int start = cmd->kind == EV_TYPING_START;
	yajl_gen gn = gen_begin(start ? "user_typing" : "user_stopped_typing");
	yajl_gen_map_open(gn);
	GS(gn, "userId");
	GS(gn, cs->user_hex);
	if (start) {
		GS(gn, "username");
		GS(gn, cs->username);
	}
	yajl_gen_map_close(gn);
	const char *buf;
	size_t len;
	if (gen_end(&buf, &len) == 0)
		publish(&cmd->room, NULL, cs->tag, buf, len);
}

/* ---------------------------------------------------------- Socket.IO
 *
 * Engine.IO v4 over the websocket transport only (no long-polling), the
 * default namespace, no binary events and no acknowledgements. The token
 * comes with the upgrade (?token= or Authorization), as on /ws; the auth
 * object of the CONNECT packet is not read. */

#define SIO_PING_TIMEOUT_MS 20000
#define SIO_AUTH_TIMEOUT_MS 10000

/* The socket's tag (unique across workers) masked with a per-worker random
 * key, so a session id tells nothing about pids or connection counts. */
static void sio_sid(const struct chat_sock *cs, char sid[17])
{
	static const char hex[] = "0123456789abcdef";
	uint64_t v = cs->tag ^ g.sid_key;
	for (int i = 0; i < 16; i++)
		sid[i] = hex[(v >> (60 - 4 * i)) & 15];
	sid[16] = '\0';
}

static void sio_open(struct ws_conn *c)
{
	struct chat_sock *cs = ws_conn_app(c);
	char sid[17], open[192];
	sio_sid(cs, sid);
	int n = snprintf(open, sizeof(open),
	                 "0{\"sid\":\"%s\",\"upgrades\":[],\"pingInterval\":%u,\"pingTimeout\":%u,\"maxPayload\":%u}",
	                 sid, g.ping_ms, SIO_PING_TIMEOUT_MS, 64u * 1024u);
	ws_conn_use_text_ping(c);
	ws_send_text(c, open, (size_t)n);
}

/* The default namespace is connected: CONNECT answered with the sid. */
static void sio_connected(struct ws_conn *c)
{
	struct chat_sock *cs = ws_conn_app(c);
	char sid[17], ok[48];
	sio_sid(cs, sid);
	int k = snprintf(ok, sizeof(ok), "40{\"sid\":\"%s\"}", sid);
	cs->sio_ns = 1;
	ws_send_text(c, ok, (size_t)k);
}

/* CONNECT_ERROR, then close: the client reports connect_error. */
static void sio_refuse(struct ws_conn *c, const char *message, uint16_t code)
{
	char buf[160];
	int n = snprintf(buf, sizeof(buf), "44{\"message\":\"%s\"}", message);
	ws_send_text(c, buf, (size_t)n);
	ws_close(c, code, message);
}

static void sio_user_loaded(struct chat_op *o, struct ws_conn *c, enum store_err err)
{
	struct chat_sock *cs = ws_conn_app(c);
	if (ws_conn_closing(c))
		return;
	if (err == STORE_NOT_FOUND || (err == STORE_OK && !api_doc_bool(o->op.result, "isActive", 1))) {
		sio_refuse(c, "user no longer exists or is inactive", WS_POLICY_VIOLATION);
		return;
	}
	if (err != STORE_OK) {
		sio_refuse(c, store_message(err), WS_TRY_AGAIN_LATER);
		return;
	}
	sock_set_user(cs, &o->op.id, api_doc_str(o->op.result, "username"));
	cs->authed = 1;
	ws_conn_deadline(c, 0, 0);
	sio_connected(c);
}

/* "40{...}" from a socket that came without a token: the auth object's
 * token is checked as on /ws, then the user is loaded from the store. */
static void sio_authenticate(struct ws_conn *c, const char *payload, size_t len)
{
	struct json_value *doc = NULL;
	const char *tok = NULL;
	size_t tl = 0;
	if (len && json_parse(payload, len, CHAT_JSON_DEPTH, 0, &doc) == JSON_OK && doc->type == JSON_OBJECT)
		tok = json_get_str(doc, "token", &tl);
	if (!tok || !tl) {
		json_free(doc);
		sio_refuse(c, "access token required", WS_POLICY_VIOLATION);
		return;
	}
	struct jwt_claims cl;
	enum jwt_result jr =
	    jwt_verify(g.cfg->jwt_secret, g.cfg->jwt_secret_len, tok, tl, (int64_t)time(NULL), JWT_SKEW_S, &cl);
	json_free(doc);
	bson_oid_t user;
	if (jr != JWT_OK || store_id_parse(cl.sub, strlen(cl.sub), &user) < 0) {
		log_info(NULL, "websocket token rejected", LF_STR("reason", jwt_result_str(jr)));
		sio_refuse(c, "invalid or expired token", WS_POLICY_VIOLATION);
		return;
	}
	struct chat_op *o = op_new(c, STORE_OP_FIND_BY_ID, STORE_USERS, sio_user_loaded);
	if (!o) {
		sio_refuse(c, "service unavailable", WS_TRY_AGAIN_LATER);
		return;
	}
	o->op.id = user;
	op_submit(o); /* on failure it sends an error event and frees o */
}

/* Engine.IO packet types: 1 close, 2 ping, 3 pong, 4 message; Socket.IO
 * (inside 4): 0 CONNECT, 1 DISCONNECT, 2 EVENT. 0 with *msg and *len set to
 * the EVENT's JSON array for the chat; 1 if the packet was handled here. */
static int sio_packet(struct ws_conn *c, const char **msg, size_t *len)
{
	struct chat_sock *cs = ws_conn_app(c);
	const char *p = *msg;
	size_t n = *len;
	if (n == 1 && p[0] == '3')
		return 1; /* pong: the traffic already counted */
	if (n == 1 && p[0] == '2') {
		ws_send_text(c, "3", 1);
		return 1;
	}
	if (n == 1 && p[0] == '1') {
		ws_close(c, WS_NORMAL, "client closed");
		return 1;
	}
	if (n >= 2 && p[0] == '4' && p[1] == '0') {
		if (n > 2 && p[2] == '/' && !(n >= 4 && p[3] == ',')) {
			/* "40/other,...": only the default namespace exists */
			const char *comma = memchr(p + 2, ',', n - 2);
			size_t nl = comma ? (size_t)(comma - (p + 2)) : n - 2;
			char err[160];
			int k = snprintf(err, sizeof(err), "44%.*s,{\"message\":\"Invalid namespace\"}",
			                 (int)(nl > 64 ? 64 : nl), p + 2);
			ws_send_text(c, err, (size_t)k);
			return 1;
		}
		if (!cs->authed) {
			sio_authenticate(c, p + 2, n - 2);
			return 1;
		}
		sio_connected(c);
		return 1;
	}
	if (n >= 2 && p[0] == '4' && p[1] == '1') {
		cs->sio_ns = 0;
		ws_close(c, WS_NORMAL, "client namespace disconnect");
		return 1;
	}
	if (n >= 2 && p[0] == '4' && p[1] == '2' && cs->sio_ns) {
		size_t i = 2;
		if (i < n && p[i] == '/') { /* "42/,": the default namespace spelled out */
			if (n < 4 || p[3] != ',')
				goto unsupported;
			i = 4;
		}
		while (i < n && p[i] >= '0' && p[i] <= '9')
			i++; /* an acknowledgement id: acks are not supported, the event is */
		*msg = p + i;
		*len = n - i;
		return 0;
	}
unsupported:
	send_error(c, cs->sio_ns ? "unsupported packet" : "connect to the namespace first");
	return 1;
}

/* ------------------------------------------------------------- events */

static int sio_packet(struct ws_conn *c, const char **msg, size_t *len);

static void handle_event(struct ws_conn *c, const char *msg, size_t len)
{
	struct chat_cmd cmd;
	struct chat_sock *cs0 = ws_conn_app(c);
	if (cs0->sio && sio_packet(c, &msg, &len) != 0)
		return; /* an Engine.IO / Socket.IO control packet, handled */
	if ((cs0->sio ? chat_parse_sio(msg, len, &cmd) : chat_parse(msg, len, &cmd)) < 0) {
		send_error(c, cmd.error);
		chat_cmd_free(&cmd);
		return;
	}
	struct chat_sock *cs = ws_conn_app(c);
	switch (cmd.kind) {
	case EV_JOIN:
		do_join(c, &cmd);
		break;
	case EV_LEAVE: {
		struct room *r = room_find(&cmd.room);
		int k = r ? member_index(cs, r) : -1;
		if (k >= 0)
			member_remove_at(cs, k);
		break;
	}
	case EV_SEND:
		do_send(c, &cmd);
		break;
	default:
		do_typing(c, &cmd);
		break;
	}
	chat_cmd_free(&cmd);
}

static void process_pending(struct ws_conn *c)
{
	struct chat_sock *cs = ws_conn_app(c);
	while (!cs->busy && cs->ph && !ws_conn_closing(c)) {
		struct pending *p = cs->ph;
		cs->ph = p->next;
		if (!cs->ph)
			cs->pt = NULL;
		cs->npending--;
		handle_event(c, p->data, p->len);
		free(p);
	}
	if (cs->npending < CHAT_PENDING_PAUSE / 2)
		ws_conn_pause(c, 0);
}

/* Token buckets: 1 if the message may be handled. */
static int rate_allow(struct ws_conn *c, struct chat_sock *cs)
{
	uint64_t now = now_ms();
	double dt = (double)(now - cs->bucket_ms) / 1000.0;
	cs->bucket_ms = now;
	cs->tokens += dt * g.rate;
	if (cs->tokens > g.burst)
		cs->tokens = g.burst;
	cs->abuse += dt * g.rate;
	if (cs->abuse > g.burst)
		cs->abuse = g.burst;
	if (cs->tokens >= 1.0) {
		cs->tokens -= 1.0;
		cs->limited = 0;
		return 1;
	}
	cs->abuse -= 1.0;
	if (cs->abuse < 0) {
		ws_close(c, WS_POLICY_VIOLATION, "rate limit exceeded");
		return 0;
	}
	if (!cs->limited) {
		cs->limited = 1;
		send_error(c, "rate limited");
	}
	return 0;
}

static void on_text(struct ws_conn *c, const char *msg, size_t len)
{
	struct chat_sock *cs = ws_conn_app(c);
	if (!rate_allow(c, cs))
		return;
	if (!cs->busy && !cs->ph) {
		handle_event(c, msg, len);
		return;
	}
	if (cs->npending >= CHAT_PENDING_MAX) {
		send_error(c, "server busy, try again");
		return;
	}
	struct pending *p = malloc(sizeof(*p) + len);
	if (!p) {
		send_error(c, "server busy, try again");
		return;
	}
	p->next = NULL;
	p->len = len;
	memcpy(p->data, msg, len);
	if (cs->pt)
		cs->pt->next = p;
	else
		cs->ph = p;
	cs->pt = p;
	if (++cs->npending >= CHAT_PENDING_PAUSE)
		ws_conn_pause(c, 1);
}

static void on_close(struct ws_conn *c)
{
	struct chat_sock *cs = ws_conn_app(c);
	while (cs->nrooms)
		member_remove_at(cs, cs->nrooms - 1);
	struct pending *p = cs->ph, *next;
	for (; p; p = next) {
		next = p->next;
		free(p);
	}
	cs->ph = cs->pt = NULL;
	cs->npending = 0;
}

static void on_count(size_t open, void *ud)
{
	(void)ud;
	if (g.sbe)
		atomic_store_explicit(&g.sbe->websockets, (int64_t)open, memory_order_relaxed);
}

/* ------------------------------------------------------------- upgrade */

struct upgrade {
	char accept[WS_ACCEPT_LEN + 1];
	bson_oid_t user;
	const char *username;
	int sio;
	int authed;
};

static void sock_init(struct ws_conn *c, void *arg)
{
	struct upgrade *u = arg;
	struct chat_sock *cs = ws_conn_app(c);
	sock_set_user(cs, &u->user, u->username);
	cs->tag = g.pid_tag | ++g.serial;
	cs->tokens = g.burst;
	cs->abuse = g.burst;
	cs->bucket_ms = now_ms();
	cs->sio = (uint8_t)u->sio;
	cs->authed = (uint8_t)u->authed;
	if (cs->sio)
		sio_open(c);
	if (!cs->authed)
		ws_conn_deadline(c, g.sio_auth_ms, WS_POLICY_VIOLATION);
}

static int refuse_draining(struct http_request *req)
{
	return app_fail(req, 503, "SHUTTING_DOWN", "server is shutting down");
}

static void ws_user_loaded(struct api_call *c, enum store_err err)
{
	struct http_request *req = c->req;
	struct upgrade *u = c->data;
	if (err == STORE_NOT_FOUND || (err == STORE_OK && !api_doc_bool(c->op.result, "isActive", 1))) {
		app_fail(req, 401, "UNAUTHORIZED", "user no longer exists or is inactive");
		return;
	}
	if (err != STORE_OK) {
		api_fail_store(req, err, NULL);
		return;
	}
	struct worker *w = worker_current();
	if (!g.ws || (w && w->draining) || ws_server_draining(g.ws)) {
		refuse_draining(req);
		return;
	}
	/* ws_upgrade() frees the request (and u, in its arena) before it
	 * calls sock_init(): hand it a copy that lives on this stack. */
	struct upgrade up = *u;
	const char *uname = api_doc_str(c->op.result, "username");
	char name[32];
	snprintf(name, sizeof(name), "%s", uname ? uname : "");
	up.user = c->op.id;
	up.username = name;
	up.authed = 1;
	char *uid = http_alloc(req, 25);
	if (uid) {
		store_id_format(&up.user, uid);
		app_ctx(req)->principal_id = uid; /* the access log's userId */
	}
	if (ws_upgrade(g.ws, req, up.accept, sizeof(struct chat_sock), sock_init, &up) < 0)
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
}

/* ws_check_upgrade()'s refusal as an error envelope. */
static int upgrade_refused(struct http_request *req, int st, const char *why)
{
	return app_fail(req, st, st == 426 ? "UPGRADE_REQUIRED" : st == 400 ? "BAD_REQUEST" : "INTERNAL", why);
}

/* /socket.io/ without a token in the URL or headers: the client sends it in
 * the CONNECT packet's auth object. The takeover cannot happen inside the
 * handler, so the upgrade runs on the next loop turn (the request stays
 * ours until answered, even if the client goes away). */
struct sio_later {
	struct http_request *req;
	char accept[WS_ACCEPT_LEN + 1];
};

static void sio_upgrade_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct sio_later *l = arg;
	struct http_request *req = l->req;
	struct upgrade up = {.sio = 1, .authed = 0, .username = ""};
	memcpy(up.accept, l->accept, sizeof(up.accept));
	free(l);
	struct worker *w = worker_current();
	if (!g.ws || (w && w->draining) || ws_server_draining(g.ws)) {
		refuse_draining(req);
		return;
	}
	if (ws_upgrade(g.ws, req, up.accept, sizeof(struct chat_sock), sock_init, &up) < 0)
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
}

static int sio_upgrade_unauthenticated(struct http_request *req)
{
	struct worker *w = worker_current();
	struct sio_later *l = calloc(1, sizeof(*l));
	if (!l)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	const char *why = NULL;
	int st = ws_check_upgrade(req, l->accept, &why);
	if (st) {
		free(l);
		return upgrade_refused(req, st, why);
	}
	l->req = req;
	struct timeval now = {0, 0};
	if (event_base_once(w->base, -1, EV_TIMEOUT, sio_upgrade_cb, l, &now) < 0) {
		free(l);
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	}
	return APP_DONE;
}

static int ws_route_proto(struct http_request *req, int sio)
{
	struct worker *w = worker_current();
	if (!g.ws || !w || w->draining || ws_server_draining(g.ws))
		return refuse_draining(req);
	/* The token: ?token= first, else Authorization: Bearer. */
	const char *tok = NULL;
	size_t tl = 0;
	const struct json_value *q = req->query_len ? app_query(req) : NULL;
	if (q)
		tok = json_get_str(q, "token", &tl);
	if (!tok || !tl) {
		size_t hl;
		const char *h = http_header_get(req, "authorization", &hl);
		if (!h || auth_bearer_token(h, hl, &tok, &tl) < 0)
			tok = NULL;
	}
	if ((!tok || !tl) && sio)
		return sio_upgrade_unauthenticated(req);
	if (!tok || !tl)
		return app_fail(req, 401, "UNAUTHORIZED", "access token required");
	struct jwt_claims cl;
	enum jwt_result jr =
		jwt_verify(g.cfg->jwt_secret, g.cfg->jwt_secret_len, tok, tl, (int64_t)time(NULL), JWT_SKEW_S, &cl);
	if (jr != JWT_OK) {
		log_info(&(struct log_ctx){.request_id = req->request_id}, "websocket token rejected",
		         LF_STR("reason", jwt_result_str(jr)));
		return app_fail(req, 401, "UNAUTHORIZED", "invalid or expired token");
	}
	struct upgrade *u = http_alloc(req, sizeof(*u));
	if (!u)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	memset(u, 0, sizeof(*u));
	u->sio = sio;
	const char *why = NULL;
	int st = ws_check_upgrade(req, u->accept, &why);
	if (st)
		return upgrade_refused(req, st, why);
	struct api_call *c = api_call_new(req, STORE_OP_FIND_BY_ID, STORE_USERS, ws_user_loaded);
	if (!c)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	if (store_id_parse(cl.sub, strlen(cl.sub), &c->op.id) < 0) {
		free(c);
		return app_fail(req, 401, "UNAUTHORIZED", "invalid or expired token");
	}
	c->data = u;
	return api_call_submit(c);
}

/* ------------------------------------------------------------ lifecycle */

/* Test hooks (RESIL_TEST_HOOKS=1 outside production) shorten the
 * keep-alive timers so the integration tests run in seconds. */
static uint32_t test_ms(const char *name)
{
	const char *on = getenv("RESIL_TEST_HOOKS");
	const char *v = getenv(name);
	if (!on || strcmp(on, "1") != 0 || !v || g.cfg->env == CONFIG_ENV_PRODUCTION)
		return 0;
	char *end;
	unsigned long ms = strtoul(v, &end, 10);
	return *end || ms < 10 || ms > 3600000 ? 0 : (uint32_t)ms;
}

static int ws_route(struct http_request *req)
{
	return ws_route_proto(req, 0);
}

/* GET /socket.io/?EIO=4&transport=websocket: Engine.IO v4, websocket only. */
static int sio_route(struct http_request *req)
{
	const struct json_value *q = req->query_len ? app_query(req) : NULL;
	size_t el = 0, tl = 0;
	const char *eio = q ? json_get_str(q, "EIO", &el) : NULL;
	const char *tr = q ? json_get_str(q, "transport", &tl) : NULL;
	if (!eio || el != 1 || eio[0] != '4')
		return app_fail(req, 400, "BAD_REQUEST", "unsupported protocol version: EIO=4 is required");
	if (!tr || tl != 9 || memcmp(tr, "websocket", 9) != 0)
		return app_fail(req, 400, "BAD_REQUEST", "only the websocket transport is supported");
	return ws_route_proto(req, 1);
}

int chat_routes(struct app *app)
{
	if (app_get(app, "/ws", ws_route) < 0)
		return -1;
	return app_get(app, "/socket.io", sio_route);
}

int chat_start(struct worker *w)
{
	memset(&g, 0, sizeof(g));
	g.cfg = w->cfg;
	g.rate = (double)w->cfg->ws_message_rate;
	g.burst = g.rate * CHAT_BURST_S;
	g.sbe = w->sbe;
	g.pid_tag = (uint64_t)(uint32_t)getpid() << 32;
	g.gen = yajl_gen_alloc(NULL);
	struct ws_limits lim = {
		.ping_idle_ms = test_ms("RESIL_TEST_WS_PING_MS"),
		.idle_timeout_ms = test_ms("RESIL_TEST_WS_IDLE_MS"),
	};
	lim.text_ping = "2"; /* Engine.IO ping, for /socket.io/ sockets */
	g.ping_ms = lim.ping_idle_ms ? lim.ping_idle_ms : 25000;
	randombytes_buf(&g.sid_key, sizeof(g.sid_key));
	g.sio_auth_ms = test_ms("RESIL_TEST_SIO_AUTH_MS");
	if (!g.sio_auth_ms)
		g.sio_auth_ms = SIO_AUTH_TIMEOUT_MS;
	struct ws_handlers h = {.on_text = on_text, .on_close = on_close, .on_count = on_count};
	int fd = w->bus_fd;
	w->bus_fd = -1; /* ours now: the bus closes it, also on failure */
	g.ws = g.gen ? ws_server_new(w->base, &lim, &h) : NULL;
	if (g.ws)
		g.bus = bus_open(w->base, fd, chat_deliver, NULL);
	else if (fd >= 0)
		close(fd);
	if (!g.bus) {
		log_error(NULL, "cannot start the websocket chat", LF_STR("error", strerror(errno)));
		chat_stop();
		return -1;
	}
	on_count(0, NULL);
	return 0;
}

void chat_drain(void (*done)(void *ud), void *ud)
{
	if (!g.ws) {
		done(ud);
		return;
	}
	ws_server_drain(g.ws, done, ud);
}

void chat_stop(void)
{
	ws_server_free(g.ws); /* closes every socket: on_close empties the registry */
	g.ws = NULL;
	bus_close(g.bus);
	g.bus = NULL;
	free(g.buckets);
	g.buckets = NULL;
	g.nbuckets = g.nrooms = 0;
	if (g.gen)
		yajl_gen_free(g.gen);
	g.gen = NULL;
}
