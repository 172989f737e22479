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
 * the Socket.IO members. While a socket's join loads the room's history,
 * live frames for it are held (bounded) and released after
 * recent_messages, minus the messages the history already contained, so
 * the socket sees each message once and in order.
 */
#include "autoconfig.h"

#include "chat_rooms.h"

#include "api.h"
#include "bus.h"
#include "handlers.h"
#include "log.h"
#include "message.h"
#include "ws.h"

#include <stdlib.h>
#include <string.h>

#define CHAT_JOIN_HOLD 128 /* live frames held while a join loads history */

/* Bus record: kind, room id, message id (zero: none), excluded socket tag
 * (zero: none), then the event's JSON text. */
#define REC_ROOM_EVENT 1
#define REC_HDR (1 + 12 + 12 + 8)

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

struct chat_member_ref {
	struct room *room;
	uint32_t idx; /* position in room->m */
};

static struct {
	struct bus *bus;
	struct room **buckets;
	uint32_t nbuckets, nrooms;
} reg;

uint32_t chat_rooms_count(void)
{
	return reg.nrooms;
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
	if (!reg.nbuckets)
		return NULL;
	for (struct room *r = reg.buckets[room_hash(id) & (reg.nbuckets - 1)]; r; r = r->next)
		if (bson_oid_equal(&r->id, id))
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
			uint32_t k = room_hash(&r->id) & (nb - 1);
			r->next = b[k];
			b[k] = r;
		}
	}
	free(reg.buckets);
	reg.buckets = b;
	reg.nbuckets = nb;
	return 0;
}

static struct room *room_get(const bson_oid_t *id)
{
	struct room *r = room_find(id);
	if (r)
		return r;
	if (reg.nrooms >= reg.nbuckets && registry_grow() < 0)
		return NULL;
	r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->id = *id;
	uint32_t k = room_hash(id) & (reg.nbuckets - 1);
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
	struct room **pp = &reg.buckets[room_hash(&r->id) & (reg.nbuckets - 1)];
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
	struct room *r = room_find(id);
	int k = r ? member_index(cs, r) : -1;
	return k < 0 ? NULL : &r->m[cs->rooms[k].idx];
}

int chat_rooms_join(struct chat_sock *cs, const bson_oid_t *id, int hold)
{
	struct room *r = room_get(id);
	if (!r)
		return -1;
	struct room_member *m;
	int k = member_index(cs, r);
	if (k >= 0) {
		m = &r->m[cs->rooms[k].idx];
		goto joined;
	}
	if (cs->nrooms >= CHAT_ROOMS_PER_SOCKET)
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
joined:
	if (hold && !m->hold)
		m->hold = calloc(1, sizeof(*m->hold)); /* NULL: no holding, live frames flow at once */
	return 0;
fail:
	room_release(r);
	return -1;
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
	struct room *r = room_find(id);
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

int chat_rooms_publish(const bson_oid_t *room, const bson_oid_t *mid, uint64_t exclude, const char *json, size_t len)
{
	unsigned char rec[REC_HDR + 16384];
	unsigned char *p = rec;
	unsigned char *heap = NULL;
	if (!reg.bus)
		return -1;
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
	int rc = bus_publish(reg.bus, p, REC_HDR + len);
	free(heap);
	if (rc < 0)
		log_warn(NULL, "chat broadcast dropped: bus queue full", LF_INT("bytes", (int64_t)len));
	return rc;
}

int chat_publish_message(const bson_t *msg)
{
	bson_oid_t room, mid;
	if (!reg.bus || api_doc_oid(msg, "room", &room) < 0)
		return -1;
	int has_mid = api_doc_oid(msg, "_id", &mid) == 0;
	message_gen(chat_gen_begin("new_message"), msg);
	const char *buf;
	size_t len;
	if (chat_gen_end(&buf, &len) < 0)
		return -1;
	return chat_rooms_publish(&room, has_mid ? &mid : NULL, 0, buf, len);
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
			if (!fs && !(fs = chat_sio_frame(json, len - REC_HDR)))
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

int chat_rooms_open(struct event_base *base, int bus_fd)
{
	reg.bus = bus_open(base, bus_fd, deliver, NULL);
	return reg.bus ? 0 : -1;
}

void chat_rooms_close(void)
{
	bus_close(reg.bus);
	reg.bus = NULL;
	free(reg.buckets);
	reg.buckets = NULL;
	reg.nbuckets = reg.nrooms = 0;
}
