/* chat_rooms.c - which sockets of this worker are in which room, and
 * broadcast through the bus (see chat_rooms.h).
 *
 * The registry is a hash table room id -> member sockets; each socket
 * keeps the rooms it is in with its index in the room's member array, so
 * leaving is O(rooms of the socket) and a member swap-removes itself.
 *
 * Broadcast: a publisher writes a record to the bus (src/bus.h); every
 * worker, this one included, receives all records from the supervisor in
 * one total order and queues one shared frame (built once, reference
 * counted) on each local member socket, plus one Socket.IO variant for
 * the Socket.IO members (or, when the publisher gave one, a Socket.IO text
 * of its own: new_message carries more fields there). While a socket's
 * join loads the room's history, live frames for it are held (bounded) and
 * released after recent_messages, minus the messages the history already
 * contained, so the socket sees each message once and in order.
 *
 * Every authenticated Socket.IO socket is also in its user's personal room
 * (the Node app's `user_<id>`): a registry entry keyed by the user's id and
 * marked personal, so it can never be confused with a chat room of the
 * same id. Records addressed to a user reach every socket of theirs, on
 * every worker, the same way.
 */
#include "autoconfig.h"

#include "chat_rooms.h"

#include "api.h"
#include "bus.h"
#include "handlers.h"
#include "json.h"
#include "log.h"
#include "message.h"
#include "rbus.h"
#include "ws.h"

#include <stdlib.h>
#include <string.h>

#define CHAT_JOIN_HOLD 128 /* live frames held while a join loads history */

/* Bus record: kind, room (or user) id, message id (zero: none), excluded
 * socket tag (zero: none), the length of the /ws text (32 bits), the
 * event's /ws JSON text, then its Socket.IO JSON text (empty: the /ws text
 * re-framed). Integers little-endian. */
#define REC_ROOM_EVENT 1
#define REC_USER_EVENT 2 /* to a user's personal room */
#define REC_HDR (1 + 12 + 12 + 8 + 4)

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
	int personal;      /* a user's personal room: id is the user's */
	struct room *next; /* hash chain */
	struct room_member *m;
	uint32_t n, cap;
};

struct chat_member_ref {
	struct room *room;
	uint32_t idx; /* position in room->m */
};

static struct {
	struct bus *bus;
	int rbus; /* the cross-host bus (src/rbus.h) is open */
	struct room **buckets;
	uint32_t nbuckets, nrooms;
} reg;

uint32_t chat_rooms_count(void)
{
	return reg.nrooms;
}

/* ------------------------------------------------------------ registry */

static uint32_t room_hash(const bson_oid_t *id, int personal)
{
	uint32_t h = personal ? 2166136261u ^ 0x5bd1e995u : 2166136261u;
	for (int i = 0; i < 12; i++)
		h = (h ^ id->bytes[i]) * 16777619u;
	return h;
}

static struct room *room_find(const bson_oid_t *id, int personal)
{
	if (!reg.nbuckets)
		return NULL;
	for (struct room *r = reg.buckets[room_hash(id, personal) & (reg.nbuckets - 1)]; r; r = r->next)
		if (r->personal == personal && bson_oid_equal(&r->id, id))
			return r;
	return NULL;
}

static int registry_grow(void)
{
	uint32_t nb = reg.nbuckets ? reg.nbuckets * 2 : 64;
	struct room **b = calloc(nb, sizeof(*b));
	if (!b)
		return -1;
	for (uint32_t i = 0; i < reg.nbuckets; i++) {
		struct room *r = reg.buckets[i], *next;
		for (; r; r = next) {
			next = r->next;
			uint32_t k = room_hash(&r->id, r->personal) & (nb - 1);
			r->next = b[k];
			b[k] = r;
		}
	}
	free(reg.buckets);
	reg.buckets = b;
	reg.nbuckets = nb;
	return 0;
}

static struct room *room_get(const bson_oid_t *id, int personal)
{
	struct room *r = room_find(id, personal);
	if (r)
		return r;
	if (reg.nrooms >= reg.nbuckets && registry_grow() < 0)
		return NULL;
	r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->id = *id;
	r->personal = personal;
	uint32_t k = room_hash(id, personal) & (reg.nbuckets - 1);
	r->next = reg.buckets[k];
	reg.buckets[k] = r;
	reg.nrooms++;
	return r;
}

/* Free r once it has no member left. */
static void room_release(struct room *r)
{
	if (r->n)
		return;
	struct room **pp = &reg.buckets[room_hash(&r->id, r->personal) & (reg.nbuckets - 1)];
	while (*pp && *pp != r)
		pp = &(*pp)->next;
	if (*pp)
		*pp = r->next;
	reg.nrooms--;
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

static struct room_member *member_get(struct chat_sock *cs, const bson_oid_t *id)
{
	struct room *r = room_find(id, 0);
	int k = r ? member_index(cs, r) : -1;
	return k < 0 ? NULL : &r->m[cs->rooms[k].idx];
}

int chat_rooms_full(const struct chat_sock *cs)
{
	return cs->nrooms - cs->user_room >= CHAT_ROOMS_PER_SOCKET;
}

/* Make cs a member of the room (personal: the user's room) id. */
static int join(struct chat_sock *cs, const bson_oid_t *id, int personal, int hold)
{
	struct room *r = room_get(id, personal);
	if (!r)
		return -1;
	struct room_member *m;
	int k = member_index(cs, r);
	if (k >= 0) {
		m = &r->m[cs->rooms[k].idx];
		goto joined;
	}
	if (!personal && chat_rooms_full(cs))
		goto fail;
	if (cs->nrooms == cs->caprooms) {
		uint16_t nc = cs->caprooms ? (uint16_t)(cs->caprooms * 2) : 2;
		struct chat_member_ref *nr = realloc(cs->rooms, sizeof(*nr) * nc);
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
	cs->rooms[cs->nrooms++] = (struct chat_member_ref){.room = r, .idx = r->n};
	m = &r->m[r->n++];
	if (personal)
		cs->user_room = 1;
joined:
	if (hold && !m->hold)
		m->hold = calloc(1, sizeof(*m->hold)); /* NULL: no holding, live frames flow at once */
	return 0;
fail:
	room_release(r);
	return -1;
}

int chat_rooms_join(struct chat_sock *cs, const bson_oid_t *id, int hold)
{
	return join(cs, id, 0, hold);
}

int chat_rooms_join_user(struct chat_sock *cs)
{
	return join(cs, &cs->user, 1, 0);
}

int chat_rooms_is_member(struct chat_sock *cs, const bson_oid_t *room)
{
	return member_get(cs, room) != NULL;
}

static void member_remove_at(struct chat_sock *cs, int k)
{
	struct room *r = cs->rooms[k].room;
	uint32_t idx = cs->rooms[k].idx;
	hold_free(r->m[idx].hold);
	if (r->personal)
		cs->user_room = 0;
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

void chat_rooms_leave(struct chat_sock *cs, const bson_oid_t *id)
{
	struct room *r = room_find(id, 0);
	int k = r ? member_index(cs, r) : -1;
	if (k >= 0)
		member_remove_at(cs, k);
}

void chat_rooms_leave_all(struct chat_sock *cs)
{
	while (cs->nrooms)
		member_remove_at(cs, cs->nrooms - 1);
}

void chat_rooms_release_hold(struct chat_sock *cs, const bson_oid_t *room, bson_t **docs, size_t ndocs)
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

/* ------------------------------------------------------------ broadcast */

/* Build one record (see REC_HDR) in buf when it fits in cap bytes, else in
 * a malloc'd buffer (*out != buf: the caller frees it). 0 or -1. */
static int record_build(int kind, const bson_oid_t *id, const bson_oid_t *mid, uint64_t exclude, const char *json,
                        size_t len, const char *sio_json, size_t sio_len, unsigned char *buf, size_t cap,
                        unsigned char **out, size_t *outlen)
{
	if (len > BUS_MAX_MSG - REC_HDR || sio_len > BUS_MAX_MSG - REC_HDR - len) {
		log_warn(NULL, "chat broadcast dropped: too large", LF_INT("bytes", (int64_t)(len + sio_len)));
		return -1;
	}
	size_t total = REC_HDR + len + sio_len;
	unsigned char *p = total <= cap ? buf : malloc(total);
	if (!p)
		return -1;
	p[0] = (unsigned char)kind;
	memcpy(p + 1, id->bytes, 12);
	if (mid)
		memcpy(p + 13, mid->bytes, 12);
	else
		memset(p + 13, 0, 12);
	for (int i = 0; i < 8; i++)
		p[25 + i] = (unsigned char)(exclude >> (8 * i));
	for (int i = 0; i < 4; i++)
		p[33 + i] = (unsigned char)((uint32_t)len >> (8 * i));
	memcpy(p + REC_HDR, json, len);
	if (sio_len)
		memcpy(p + REC_HDR + len, sio_json, sio_len);
	*out = p;
	*outlen = total;
	return 0;
}

/* Send a built record: across hosts when the Redis bus is up (this host
 * then delivers what comes back from Redis), else on this host's bus. */
static int record_send(const unsigned char *rec, size_t len)
{
	if (!reg.bus)
		return -1;
	if (reg.rbus && rbus_state() == RBUS_UP && rbus_publish(rec, len) == 0)
		return 0;
	int rc = bus_publish(reg.bus, rec, len);
	if (rc < 0)
		log_warn(NULL, "chat broadcast dropped: bus queue full", LF_INT("bytes", (int64_t)len));
	return rc;
}

static int publish(int kind, const bson_oid_t *id, const bson_oid_t *mid, uint64_t exclude, const char *json,
                   size_t len, const char *sio_json, size_t sio_len)
{
	unsigned char stack[REC_HDR + 16384], *rec;
	size_t total;
	if (!reg.bus ||
	    record_build(kind, id, mid, exclude, json, len, sio_json, sio_len, stack, sizeof(stack), &rec, &total) < 0)
		return -1;
	int rc = record_send(rec, total);
	if (rec != stack)
		free(rec);
	return rc;
}

int chat_rooms_publish(const bson_oid_t *room, const bson_oid_t *mid, uint64_t exclude, const char *json, size_t len,
                       const char *sio_json, size_t sio_len)
{
	return publish(REC_ROOM_EVENT, room, mid, exclude, json, len, sio_json, sio_len);
}

int chat_notify_user(const bson_oid_t *user, const char *json, size_t len)
{
	return publish(REC_USER_EVENT, user, NULL, 0, json, len, NULL, 0);
}

int chat_notify_added_to_room(const bson_oid_t *user, const bson_t *room)
{
	bson_oid_t id;
	const char *name = api_doc_str(room, "name");
	if (!reg.bus || api_doc_oid(room, "_id", &id) < 0)
		return -1;
	char hex[25];
	store_id_format(&id, hex);
	yajl_gen gn = chat_gen_begin("added_to_room");
	yajl_gen_map_open(gn);
	json_gen_cstr(gn, "roomId");
	json_gen_cstr(gn, hex);
	json_gen_cstr(gn, "roomName");
	json_gen_cstr(gn, name ? name : "");
	yajl_gen_map_close(gn);
	const char *buf;
	size_t len;
	if (chat_gen_end(&buf, &len) < 0)
		return -1;
	return chat_notify_user(user, buf, len);
}

/* The new_message record of msg, in buf when it fits (see record_build). */
static int message_record(const bson_t *msg, unsigned char *stack, size_t cap, unsigned char **rec, size_t *len)
{
	bson_oid_t room, mid;
	if (api_doc_oid(msg, "room", &room) < 0)
		return -1;
	int has_mid = api_doc_oid(msg, "_id", &mid) == 0;
	/* The /ws text is copied: the generator is reused for the Socket.IO one. */
	message_gen(chat_gen_begin("new_message"), msg);
	const char *buf;
	size_t plen;
	if (chat_gen_end(&buf, &plen) < 0)
		return -1;
	char *plain = malloc(plen ? plen : 1);
	if (!plain)
		return -1;
	memcpy(plain, buf, plen);
	message_gen_mongoose(chat_gen_begin("new_message"), msg);
	size_t sio_len;
	int rc = -1;
	if (chat_gen_end(&buf, &sio_len) == 0)
		rc = record_build(REC_ROOM_EVENT, &room, has_mid ? &mid : NULL, 0, plain, plen, buf, sio_len, stack,
		                  cap, rec, len);
	free(plain);
	return rc;
}

int chat_message_record(const bson_t *msg, unsigned char **rec, size_t *len)
{
	return message_record(msg, NULL, 0, rec, len);
}

int chat_publish_message(const bson_t *msg)
{
	unsigned char stack[REC_HDR + 16384], *rec;
	size_t len;
	if (!reg.bus || message_record(msg, stack, sizeof(stack), &rec, &len) < 0)
		return -1;
	int rc = record_send(rec, len);
	if (rec != stack)
		free(rec);
	return rc;
}

int chat_publish_local(const unsigned char *rec, size_t len)
{
	return reg.bus ? bus_publish(reg.bus, rec, len) : -1;
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
static void deliver(const unsigned char *rec, size_t len, void *ud)
{
	(void)ud;
	if (len < REC_HDR || (rec[0] != REC_ROOM_EVENT && rec[0] != REC_USER_EVENT))
		return;
	bson_oid_t room, mid;
	memcpy(room.bytes, rec + 1, 12);
	memcpy(mid.bytes, rec + 13, 12);
	static const unsigned char zero[12];
	int has_mid = memcmp(mid.bytes, zero, 12) != 0;
	uint64_t exclude = 0;
	for (int i = 0; i < 8; i++)
		exclude |= (uint64_t)rec[25 + i] << (8 * i);
	uint32_t plain_len = 0;
	for (int i = 0; i < 4; i++)
		plain_len |= (uint32_t)rec[33 + i] << (8 * i);
	if (plain_len > len - REC_HDR)
		return;
	struct room *r = room_find(&room, rec[0] == REC_USER_EVENT);
	if (!r || !r->n)
		return;
	const char *json = (const char *)rec + REC_HDR;
	const char *sio_json = json + plain_len;
	size_t sio_len = len - REC_HDR - plain_len;
	if (!sio_len) {
		sio_json = json;
		sio_len = plain_len;
	}
	struct ws_frame *f = ws_frame_text(json, plain_len);
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
			if (!fs && !(fs = chat_sio_frame(sio_json, sio_len)))
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

/* ------------------------------------------------------------ lifecycle */

int chat_rooms_open(struct event_base *base, int bus_fd, const char *bus_uri)
{
	reg.bus = bus_open(base, bus_fd, deliver, NULL);
	if (!reg.bus)
		return -1;
	if (bus_uri && *bus_uri) {
		/* After fork, in this worker: one subscriber and one command
		 * connection of its own (hiredis contexts are not fork-safe). */
		if (rbus_open(base, bus_uri, deliver, NULL) < 0) {
			bus_close(reg.bus);
			reg.bus = NULL;
			return -1;
		}
		reg.rbus = 1;
	}
	return 0;
}

void chat_rooms_close_rbus(void)
{
	if (reg.rbus)
		rbus_close();
	reg.rbus = 0;
}

void chat_rooms_close(void)
{
	chat_rooms_close_rbus();
	bus_close(reg.bus);
	reg.bus = NULL;
	free(reg.buckets);
	reg.buckets = NULL;
	reg.nbuckets = reg.nrooms = 0;
}
