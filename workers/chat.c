/* chat.c - the WebSocket chat's events (SPEC section 7), on GET /ws and,
 * as Socket.IO v4, on GET /socket.io/. See chat.h for the other modules:
 * who a socket is (chat_upgrade.c), which rooms it is in and broadcast
 * (chat_rooms.c), storing messages (chat_batch.c).
 *
 * Events of one socket are handled strictly in arrival order: while one
 * waits for the store (join_room, send_message, a Socket.IO CONNECT's
 * user), later ones queue on the socket (bounded; past a few dozen the
 * socket is no longer read, so a fast sender is slowed by TCP instead of
 * by our memory). A token bucket per socket limits the rate: excess
 * messages get an `error` event, and a sender that keeps going is closed
 * with 1008.
 *
 * Events are generated once as {"event":NAME,"data":DATA}, the /ws
 * framing; a Socket.IO socket gets the same event re-framed as
 * 42[NAME,DATA] by the codec in sio.c.
 *
 * On /socket.io/ the Node app's handler is the reference: join, leave and
 * typing take a bare room id too; an event that carries an ack id is
 * answered 43<id>[{"ok":true,...}] / [{"ok":false,"error":...}] (the
 * failure then replaces the `error` event); send_message needs the room's
 * stored membership, not a join; and the socket is in its user's personal
 * room from CONNECT on. The one event in flight per socket owns the ack.
 */
#include "autoconfig.h"

#include "chat.h"
#include "clock.h"

#include "api.h"
#include "chat_batch.h"
#include "chat_rooms.h"
#include "chat_upgrade.h"
#include "config.h"
#include "handlers.h"
#include "json.h"
#include "log.h"
#include "message.h"
#include "routes.h"
#include "scoreboard.h"
#include "sio.h"
#include "ws.h"

#include <errno.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHAT_HISTORY 50
#define CHAT_CONTENT_MAX 2000 /* characters (code points) */
#define CHAT_PENDING_PAUSE 32 /* queued events before the socket stops being read */
#define CHAT_PENDING_MAX 512  /* beyond: the event is refused */
#define CHAT_BURST_S 4.0      /* token bucket: ws_message_rate events/s, 4 s worth of burst; */
                              /* as many refused events (refilled at the rate) before 1008 */
#define SIO_PING_TIMEOUT_MS 20000
#define SIO_AUTH_TIMEOUT_MS 10000 /* a Socket.IO socket without a token must CONNECT with one within this */
#define SIO_MAX_PAYLOAD (64u * 1024u)

struct chat_pending {
	struct chat_pending *next;
	size_t len;
	char data[];
};

static struct {
	struct ws_server *ws;
	yajl_gen gen;
	uint32_t serial;
	uint64_t pid_tag;
	struct sb_entry *sbe;
	double rate, burst;   /* ws_message_rate, CHAT_BURST_S of it */
	uint32_t ping_ms;     /* keep-alive period (Engine.IO pingInterval) */
	uint64_t sid_key;     /* masks Socket.IO session ids */
	uint32_t sio_auth_ms; /* see SIO_AUTH_TIMEOUT_MS */
} g;

static uint64_t now_ms(void)
{
	return clock_coarse_ms();
}

/* ------------------------------------------------------------- parsing */

static size_t utf8_chars(const char *s, size_t len)
{
	size_t n = 0;
	for (size_t i = 0; i < len; i++)
		n += ((unsigned char)s[i] & 0xC0u) != 0x80u;
	return n;
}

void chat_cmd_free(struct chat_cmd *cmd)
{
	json_free(cmd->doc);
	cmd->doc = NULL;
}

static int parse_event(struct chat_cmd *cmd, const char *ev, size_t el, const struct json_value *data, int sio)
{
	static const struct {
		const char *name;
		int kind;
	} names[] = {{"join_room", EV_JOIN},
	             {"leave_room", EV_LEAVE},
	             {"send_message", EV_SEND},
	             {"typing_start", EV_TYPING_START},
	             {"typing_stop", EV_TYPING_STOP}};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strlen(names[i].name) == el && memcmp(names[i].name, ev, el) == 0)
			cmd->kind = names[i].kind;
	if (!cmd->kind) {
		cmd->error = "unknown event";
		return -1;
	}
	if (sio && cmd->kind != EV_SEND && data && data->type == JSON_STRING) {
		/* socket.emit('join_room', roomId) */
		cmd->room_ok = store_id_parse(data->s, data->len, &cmd->room) == 0;
		goto room;
	}
	if (!data || data->type != JSON_OBJECT) {
		cmd->error =
		    sio && cmd->kind != EV_SEND ? "data must be a room id or an object" : "data must be an object";
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
room:
	if (!cmd->room_ok && cmd->kind != EV_JOIN) {
		cmd->error = "roomId must be a valid id";
		return -1;
	}
	return 0;
}

int chat_parse(const char *msg, size_t len, struct chat_cmd *cmd)
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
	return parse_event(cmd, ev, el, json_get(cmd->doc, "data"), 0);
}

int chat_parse_sio(const char *msg, size_t len, struct chat_cmd *cmd)
{
	memset(cmd, 0, sizeof(*cmd));
	const struct json_value *name, *arg;
	switch (sio_event_decode(msg, len, CHAT_JSON_DEPTH, &cmd->doc, &name, &arg)) {
	case SIO_EVENT_OK: return parse_event(cmd, name->s, name->len, arg, 1);
	case SIO_EVENT_NO_NAME: cmd->error = "event name required"; return -1;
	default: cmd->error = "invalid JSON"; return -1;
	}
}

void chat_sock_set_user(struct chat_sock *cs, const bson_oid_t *id, const char *username)
{
	cs->user = *id;
	store_id_format(id, cs->user_hex);
	snprintf(cs->username, sizeof(cs->username), "%s", username ? username : "");
}

/* ------------------------------------------------------------- output */

yajl_gen chat_gen_begin(const char *event)
{
	yajl_gen gn = g.gen;
	yajl_gen_clear(gn);
	yajl_gen_reset(gn, NULL);
	yajl_gen_map_open(gn);
	json_gen_cstr(gn, "event");
	json_gen_cstr(gn, event);
	json_gen_cstr(gn, "data");
	return gn;
}

int chat_gen_end(const char **out, size_t *len)
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

struct ws_frame *chat_sio_frame(const char *json, size_t len)
{
	/* {"event":"NAME","data":DATA}: the name as a JSON string and DATA */
	static const char pre[] = "{\"event\":", mid[] = ",\"data\":";
	const size_t pl = sizeof(pre) - 1, ml = sizeof(mid) - 1;
	if (len < pl + 2 + ml + 2 || memcmp(json, pre, pl) != 0 || json[pl] != '"' || json[len - 1] != '}')
		return NULL;
	const char *name = json + pl;
	const char *q = memchr(name + 1, '"', len - pl - 1); /* generated names need no escapes */
	if (!q || (size_t)(json + len - (q + 1)) < ml + 2 || memcmp(q + 1, mid, ml) != 0)
		return NULL;
	size_t nl = (size_t)(q + 1 - name);
	const char *data = q + 1 + ml;
	size_t dl = (size_t)(json + len - 1 - data);
	size_t cap = nl + dl + SIO_EVENT_OVERHEAD;
	char stack[4096];
	char *out = cap <= sizeof(stack) ? stack : malloc(cap);
	if (!out)
		return NULL;
	int n = sio_encode_event(out, cap, name, nl, data, dl);
	struct ws_frame *f = n > 0 ? ws_frame_text(out, (size_t)n) : NULL;
	if (out != stack)
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
	struct ws_frame *f = chat_sio_frame(buf, len);
	if (f) {
		ws_send_frame(c, f);
		ws_frame_unref(f);
	}
}

void chat_send_gen(struct ws_conn *c)
{
	const char *buf;
	size_t len;
	if (chat_gen_end(&buf, &len) == 0)
		send_event(c, buf, len);
}

void chat_send_error(struct ws_conn *c, const char *message)
{
	yajl_gen gn = chat_gen_begin("error");
	yajl_gen_map_open(gn);
	json_gen_cstr(gn, "message");
	json_gen_cstr(gn, message);
	yajl_gen_map_close(gn);
	chat_send_gen(c);
}

/* ---- Socket.IO acknowledgements */

static void ack_send(struct ws_conn *c)
{
	struct chat_sock *cs = ws_conn_app(c);
	const unsigned char *json;
	size_t len;
	cs->ack_pending = 0;
	if (yajl_gen_get_buf(g.gen, &json, &len) != yajl_gen_status_ok || ws_conn_closing(c) ||
	    len > SIZE_MAX - SIO_ACK_OVERHEAD - 1)
		return;
	size_t cap = len + SIO_ACK_OVERHEAD + 1;
	char stack[4096];
	char *out = cap <= sizeof(stack) ? stack : malloc(cap);
	if (!out)
		return;
	int n = sio_encode_ack(out, cap, cs->ack_id, (const char *)json, len);
	if (n > 0)
		ws_send_text(c, out, (size_t)n);
	if (out != stack)
		free(out);
}

/* The generator at a fresh top level, inside {"ok":OK */
static yajl_gen ack_open(int ok)
{
	yajl_gen gn = g.gen;
	yajl_gen_clear(gn);
	yajl_gen_reset(gn, NULL);
	yajl_gen_map_open(gn);
	json_gen_cstr(gn, "ok");
	yajl_gen_bool(gn, ok);
	return gn;
}

yajl_gen chat_ack_begin(struct ws_conn *c)
{
	struct chat_sock *cs = ws_conn_app(c);
	return cs->ack_pending ? ack_open(1) : NULL;
}

void chat_ack_end(struct ws_conn *c)
{
	yajl_gen_map_close(g.gen);
	ack_send(c);
}

void chat_ack_message(struct ws_conn *c, const bson_t *msg)
{
	yajl_gen gn = chat_ack_begin(c);
	if (!gn)
		return;
	json_gen_cstr(gn, "message");
	message_gen_mongoose(gn, msg);
	chat_ack_end(c);
}

void chat_fail(struct ws_conn *c, const char *message)
{
	struct chat_sock *cs = ws_conn_app(c);
	if (!cs->ack_pending) {
		chat_send_error(c, message);
		return;
	}
	yajl_gen gn = ack_open(0);
	json_gen_cstr(gn, "error");
	json_gen_cstr(gn, message);
	yajl_gen_map_close(gn);
	ack_send(c);
}

/* The event is over: an ack it asked for and nobody answered says ok. */
static void ack_flush(struct ws_conn *c)
{
	if (chat_ack_begin(c))
		chat_ack_end(c);
}

const char *chat_store_message(enum store_err err)
{
	switch (err) {
	case STORE_TIMEOUT: return "request timed out";
	case STORE_BUSY: return "server busy, try again";
	default: return "service unavailable";
	}
}

/* ------------------------------------------------------- store calls */

struct chat_op;
typedef void (*chat_step)(struct chat_op *o, struct ws_conn *c, enum store_err err);

struct chat_op {
	struct store_op op;
	struct ws_conn *c;
	chat_step step;
	bson_oid_t room;
	char *name;  /* join: the room's name, for the ack */
	bson_t *doc; /* send: the message, until handed to the group commit */
};

static void op_free(struct chat_op *o)
{
	store_op_clear(&o->op);
	free(o->name);
	if (o->doc)
		bson_destroy(o->doc);
	free(o);
}

static void op_done(struct store_op *sop, enum store_err err)
{
	struct chat_op *o = sop->user;
	struct ws_conn *c = o->c;
	struct chat_sock *cs = ws_conn_app(c);
	cs->busy = 0;
	o->step(o, c, err); /* may submit the next call (busy again) */
	op_free(o);
	if (!cs->busy) {
		chat_sock_resume(c);
		return;
	}
	ws_conn_unref(c); /* the next call holds its own reference */
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
		op_free(o);
		chat_fail(c, "service unavailable");
		return -1;
	}
	cs->busy = 1;
	ws_conn_ref(c);
	return 0;
}

/* ---- join_room: the room (membership), room_joined, then its history */

static void history_loaded(struct chat_op *o, struct ws_conn *c, enum store_err err)
{
	struct chat_sock *cs = ws_conn_app(c);
	if (ws_conn_closing(c))
		return;
	if (err != STORE_OK) {
		chat_fail(c, chat_store_message(err));
		chat_rooms_release_hold(cs, &o->room, NULL, 0);
		return;
	}
	/* Fetched newest first (so the limit keeps the latest); sent oldest
	 * first; in the Mongoose shape too for the Node app's clients. */
	yajl_gen gn = chat_gen_begin("recent_messages");
	yajl_gen_array_open(gn);
	for (size_t i = o->op.ndocs; i-- > 0;)
		(cs->sio ? message_gen_mongoose : message_gen)(gn, o->op.docs[i]);
	yajl_gen_array_close(gn);
	chat_send_gen(c);
	chat_rooms_release_hold(cs, &o->room, o->op.docs, o->op.ndocs);
	if ((gn = chat_ack_begin(c))) {
		json_gen_cstr(gn, "roomId");
		gen_oid(gn, &o->room);
		json_gen_cstr(gn, "roomName");
		json_gen_cstr(gn, o->name ? o->name : "");
		chat_ack_end(c);
	}
}

/* A room lookup for c's user came back: 0 if the user is a member (the
 * room in o->op.result), else -1 after answering the socket. */
static int member_checked(struct chat_op *o, struct ws_conn *c, enum store_err err)
{
	struct chat_sock *cs = ws_conn_app(c);
	if (ws_conn_closing(c))
		return -1;
	if (err == STORE_NOT_FOUND || (err == STORE_OK && !rooms_has_member(o->op.result, &cs->user))) {
		chat_fail(c, "access denied to room");
		return -1;
	}
	if (err != STORE_OK) {
		chat_fail(c, chat_store_message(err));
		return -1;
	}
	return 0;
}

static void room_loaded(struct chat_op *o, struct ws_conn *c, enum store_err err)
{
	struct chat_sock *cs = ws_conn_app(c);
	if (member_checked(o, c, err) < 0)
		return;
	if (chat_rooms_join(cs, &o->room, 1) < 0) {
		chat_fail(c, chat_rooms_full(cs) ? "too many rooms joined" : "service unavailable");
		return;
	}
	const char *name = api_doc_str(o->op.result, "name");
	yajl_gen gn = chat_gen_begin("room_joined");
	yajl_gen_map_open(gn);
	json_gen_cstr(gn, "roomId");
	gen_oid(gn, &o->room);
	json_gen_cstr(gn, "roomName");
	json_gen_cstr(gn, name ? name : "");
	yajl_gen_map_close(gn);
	chat_send_gen(c);

	struct chat_op *h = op_new(c, STORE_OP_FIND, COLL_MESSAGES, history_loaded);
	if (!h) {
		chat_fail(c, "service unavailable");
		chat_rooms_release_hold(cs, &o->room, NULL, 0);
		return;
	}
	h->room = o->room;
	if ((cs->ack_pending && !(h->name = strdup(name ? name : ""))) ||
	    store_filter_oid(&h->op.filter, "room", STORE_EQ, &o->room) < 0 ||
	    store_filter_sort(&h->op.filter, "createdAt", -1) < 0) {
		op_free(h);
		chat_fail(c, "service unavailable");
		chat_rooms_release_hold(cs, &o->room, NULL, 0);
		return;
	}
	store_filter_page(&h->op.filter, 0, CHAT_HISTORY);
	if (op_submit(h) < 0)
		chat_rooms_release_hold(cs, &o->room, NULL, 0);
}

static void do_join(struct ws_conn *c, const struct chat_cmd *cmd)
{
	if (!cmd->room_ok) {
		chat_fail(c, "access denied to room");
		return;
	}
	struct chat_op *o = op_new(c, STORE_OP_FIND_BY_ID, COLL_ROOMS, room_loaded);
	if (!o) {
		chat_fail(c, "service unavailable");
		return;
	}
	o->room = cmd->room;
	o->op.id = cmd->room;
	op_submit(o);
}

/* ---- send_message: stored by the group commit, then published */

/* The Socket.IO sender's room, loaded: a member (in the stored room) may
 * send without having joined, as in the Node app. */
static void send_checked(struct chat_op *o, struct ws_conn *c, enum store_err err)
{
	if (member_checked(o, c, err) < 0)
		return;
	if (chat_batch_add(c, o->doc) < 0) {
		chat_fail(c, "server busy, try again");
		return;
	}
	o->doc = NULL; /* the group commit's now */
}

static void do_send(struct ws_conn *c, const struct chat_cmd *cmd)
{
	struct chat_sock *cs = ws_conn_app(c);
	int joined = chat_rooms_is_member(cs, &cmd->room);
	if (!joined && !cs->sio) {
		chat_fail(c, "join the room first");
		return;
	}
	if (cmd->content_len > INT32_MAX) {
		chat_fail(c, "content must be 1-2000 characters");
		return;
	}
	if (chat_batch_full()) {
		chat_fail(c, "server busy, try again");
		return;
	}
	bson_t *doc = bson_new();
	if (!doc || !bson_append_oid(doc, "room", 4, &cmd->room) || !bson_append_oid(doc, "sender", 6, &cs->user) ||
	    !bson_append_utf8(doc, "senderName", 10, cs->username, -1) ||
	    !bson_append_utf8(doc, "content", 7, cmd->content, (int)cmd->content_len))
		goto fail;
	if (joined) {
		if (chat_batch_add(c, doc) < 0)
			goto fail;
		return;
	}
	struct chat_op *o = op_new(c, STORE_OP_FIND_BY_ID, COLL_ROOMS, send_checked);
	if (!o)
		goto fail;
	o->room = cmd->room;
	o->op.id = cmd->room;
	o->doc = doc;
	op_submit(o); /* frees doc on failure */
	return;
fail:
	if (doc)
		bson_destroy(doc);
	chat_fail(c, "service unavailable");
}

/* ---- typing: straight to the others in the room, never stored */

static void do_typing(struct ws_conn *c, const struct chat_cmd *cmd)
{
	struct chat_sock *cs = ws_conn_app(c);
	if (!chat_rooms_is_member(cs, &cmd->room)) {
		chat_fail(c, "join the room first");
		return;
	}
	int start = cmd->kind == EV_TYPING_START;
	yajl_gen gn = chat_gen_begin(start ? "user_typing" : "user_stopped_typing");
	yajl_gen_map_open(gn);
	json_gen_cstr(gn, "userId");
	json_gen_cstr(gn, cs->user_hex);
	if (start) {
		json_gen_cstr(gn, "username");
		json_gen_cstr(gn, cs->username);
	}
	yajl_gen_map_close(gn);
	const char *buf;
	size_t len;
	if (chat_gen_end(&buf, &len) == 0)
		chat_rooms_publish(&cmd->room, NULL, cs->tag, buf, len, NULL, 0);
}

/* ---------------------------------------------------------- Socket.IO
 *
 * Engine.IO v4 over the websocket transport only (no long-polling), the
 * default namespace, no binary events; an event's acknowledgement id is
 * answered when the event is over (see chat_ack_begin). The token comes with the
 * upgrade (?token= or Authorization), as on /ws, or in the CONNECT
 * packet's auth object. */

/* The socket's tag (unique across workers) masked with a per-worker random
 * key, so a session id tells nothing about pids or connection counts. */
static void sio_sid(const struct chat_sock *cs, char sid[17])
{
	sio_sid_format(cs->tag ^ g.sid_key, sid);
}

static void sio_open(struct ws_conn *c)
{
	char sid[17], open[SIO_OPEN_MAX];
	sio_sid(ws_conn_app(c), sid);
	int n = sio_encode_open(open, sizeof(open), sid, g.ping_ms, SIO_PING_TIMEOUT_MS, SIO_MAX_PAYLOAD);
	ws_conn_use_text_ping(c);
	if (n > 0)
		ws_send_text(c, open, (size_t)n);
}

void chat_sio_connected(struct ws_conn *c)
{
	struct chat_sock *cs = ws_conn_app(c);
	char sid[17], ok[SIO_CONNECT_MAX];
	if (chat_rooms_join_user(cs) < 0) { /* io.to(`user_${id}`) reaches it from now on */
		chat_sio_refuse(c, "server busy, try again", WS_TRY_AGAIN_LATER);
		return;
	}
	sio_sid(cs, sid);
	int n = sio_encode_connect(ok, sizeof(ok), sid);
	cs->sio_ns = 1;
	if (n > 0)
		ws_send_text(c, ok, (size_t)n);
}

void chat_sio_refuse(struct ws_conn *c, const char *message, uint16_t code)
{
	char buf[160];
	int n = sio_encode_connect_error(buf, sizeof(buf), "/", 1, message);
	if (n > 0)
		ws_send_text(c, buf, (size_t)n);
	ws_close(c, code, message);
}

/* An Engine.IO / Socket.IO packet. 0 with *msg and *len set to an EVENT's
 * JSON array for the chat; 1 if the packet was handled here. */
static int sio_packet(struct ws_conn *c, const char **msg, size_t *len)
{
	struct chat_sock *cs = ws_conn_app(c);
	struct sio_packet pk;
	if (sio_decode(*msg, *len, &pk) < 0)
		goto unsupported;
	switch (pk.type) {
	case SIO_EIO_PONG: return 1; /* the traffic already counted */
	case SIO_EIO_PING: {
		char pong[128];
		if (pk.data_len > sizeof(pong) - 1)
			goto unsupported;
		pong[0] = '3';
		memcpy(pong + 1, pk.data, pk.data_len);
		ws_send_text(c, pong, 1 + pk.data_len);
		return 1;
	}
	case SIO_EIO_CLOSE: ws_close(c, WS_NORMAL, "client closed"); return 1;
	case SIO_CONNECT:
		if (!sio_nsp_default(&pk)) { /* only the default namespace exists */
			char err[160];
			int n = sio_encode_connect_error(err, sizeof(err), pk.nsp, pk.nsp_len, "Invalid namespace");
			if (n > 0)
				ws_send_text(c, err, (size_t)n);
		} else if (!cs->authed) {
			chat_upgrade_connect(c, pk.data, pk.data_len);
		} else {
			chat_sio_connected(c);
		}
		return 1;
	case SIO_DISCONNECT:
		cs->sio_ns = 0;
		ws_close(c, WS_NORMAL, "client namespace disconnect");
		return 1;
	case SIO_EVENT:
		if (!cs->sio_ns || !sio_nsp_default(&pk))
			goto unsupported;
		*msg = pk.data;
		*len = pk.data_len;
		cs->ack_pending = (uint8_t)pk.has_ack;
		cs->ack_id = pk.ack;
		return 0;
	default: break;
	}
unsupported:
	chat_send_error(c, cs->sio_ns ? "unsupported packet" : "connect to the namespace first");
	return 1;
}

/* ------------------------------------------------------------- events */

static void handle_event(struct ws_conn *c, const char *msg, size_t len)
{
	struct chat_cmd cmd;
	struct chat_sock *cs = ws_conn_app(c);
	if (cs->sio && sio_packet(c, &msg, &len) != 0)
		return; /* an Engine.IO / Socket.IO control packet, handled */
	if ((cs->sio ? chat_parse_sio(msg, len, &cmd) : chat_parse(msg, len, &cmd)) < 0) {
		chat_fail(c, cmd.error);
		chat_cmd_free(&cmd);
		return;
	}
	switch (cmd.kind) {
	case EV_JOIN: do_join(c, &cmd); break;
	case EV_LEAVE: chat_rooms_leave(cs, &cmd.room); break;
	case EV_SEND: do_send(c, &cmd); break;
	default: do_typing(c, &cmd); break;
	}
	chat_cmd_free(&cmd);
	if (!cs->busy)
		ack_flush(c);
}

static void process_pending(struct ws_conn *c)
{
	struct chat_sock *cs = ws_conn_app(c);
	while (!cs->busy && cs->ph && !ws_conn_closing(c)) {
		struct chat_pending *p = cs->ph;
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

void chat_sock_resume(struct ws_conn *c)
{
	struct chat_sock *cs = ws_conn_app(c);
	cs->busy = 0;
	ack_flush(c);       /* the event that waited is over */
	process_pending(c); /* may make the socket busy again */
	ws_conn_unref(c);
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
		chat_send_error(c, "rate limited");
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
		chat_send_error(c, "server busy, try again");
		return;
	}
	struct chat_pending *p = malloc(sizeof(*p) + len);
	if (!p) {
		chat_send_error(c, "server busy, try again");
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
	chat_rooms_leave_all(cs);
	struct chat_pending *p = cs->ph, *next;
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

void chat_sock_init(struct ws_conn *c, void *arg)
{
	const struct chat_peer *p = arg;
	struct chat_sock *cs = ws_conn_app(c);
	chat_sock_set_user(cs, &p->user, p->username);
	cs->tag = g.pid_tag | ++g.serial;
	cs->tokens = g.burst;
	cs->abuse = g.burst;
	cs->bucket_ms = now_ms();
	cs->sio = (uint8_t)p->sio;
	cs->authed = (uint8_t)p->authed;
	if (cs->sio)
		sio_open(c);
	if (!cs->authed)
		ws_conn_deadline(c, g.sio_auth_ms, WS_POLICY_VIOLATION);
}

/* ------------------------------------------------------------ lifecycle */

struct ws_server *chat_server(void)
{
	return g.ws;
}

int chat_refusing(void)
{
	struct worker *w = worker_current();
	return !g.ws || !w || w->draining || ws_server_draining(g.ws);
}

/* Test hooks (RESIL_TEST_HOOKS=1 outside production) shorten the
 * keep-alive timers so the integration tests run in seconds. */
static uint32_t test_ms(const struct resil_config *cfg, const char *name)
{
	const char *on = getenv("RESIL_TEST_HOOKS");
	const char *v = getenv(name);
	if (!on || strcmp(on, "1") != 0 || !v || cfg->env == CONFIG_ENV_PRODUCTION)
		return 0;
	char *end;
	unsigned long ms = strtoul(v, &end, 10);
	return *end || ms < 10 || ms > 3600000 ? 0 : (uint32_t)ms;
}

int chat_init(struct event_base *base, const struct resil_config *cfg, const struct ws_limits *lim, int bus_fd)
{
	memset(&g, 0, sizeof(g));
	g.rate = (double)cfg->ws_message_rate;
	g.burst = g.rate * CHAT_BURST_S;
	g.pid_tag = (uint64_t)(uint32_t)getpid() << 32;
	if (cfg->bus[0]) {
		/* Tags travel to other hosts, where pids repeat: random high bits. */
		uint32_t salt;
		randombytes_buf(&salt, sizeof(salt));
		g.pid_tag ^= (uint64_t)(salt & 0xffc00000u) << 32; /* pids stay below 2^22 */
	}
	g.ping_ms = lim->ping_idle_ms ? lim->ping_idle_ms : 25000;
	randombytes_buf(&g.sid_key, sizeof(g.sid_key));
	g.sio_auth_ms = test_ms(cfg, "RESIL_TEST_SIO_AUTH_MS");
	if (!g.sio_auth_ms)
		g.sio_auth_ms = SIO_AUTH_TIMEOUT_MS;
	g.gen = yajl_gen_alloc(NULL);
	struct ws_handlers h = {.on_text = on_text, .on_close = on_close, .on_count = on_count};
	g.ws = g.gen ? ws_server_new(base, lim, &h) : NULL;
	if (!g.ws) {
		if (bus_fd >= 0)
			close(bus_fd);
		chat_stop();
		return -1;
	}
	if (chat_rooms_open(base, bus_fd, cfg->bus) < 0) { /* the bus closed bus_fd */
		chat_stop();
		return -1;
	}
	return 0;
}

int chat_start(struct worker *w)
{
	struct ws_limits lim = {
	    .ping_idle_ms = test_ms(w->cfg, "RESIL_TEST_WS_PING_MS"),
	    .idle_timeout_ms = test_ms(w->cfg, "RESIL_TEST_WS_IDLE_MS"),
	    .text_ping = "2", /* Engine.IO ping, for /socket.io/ sockets */
	    .no_io_uring = !w->cfg->io_uring,
	};
	int fd = w->bus_fd;
	w->bus_fd = -1; /* ours now: the bus closes it, also on failure */
	if (chat_init(w->base, w->cfg, &lim, fd) < 0) {
		log_error(NULL, "cannot start the websocket chat", LF_STR("error", strerror(errno)));
		return -1;
	}
	g.sbe = w->sbe;
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
	chat_rooms_close_rbus(); /* its failed callbacks may still answer sockets */
	ws_server_free(g.ws);    /* closes every socket: on_close empties the registry */
	g.ws = NULL;
	chat_rooms_close();
	if (g.gen)
		yajl_gen_free(g.gen);
	g.gen = NULL;
}
