/* bus.c - the supervisor hub and the worker end of the broadcast bus (see
 * bus.h). Records are refcounted so that a record queued for several slow
 * workers exists once; queues are rings of record pointers. */
#include "autoconfig.h"

#include "bus.h"

#include "log.h"

#include <errno.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define HUB_READS_PER_EVENT 64
#define BUS_READS_PER_EVENT 256
#define BUS_SOCKBUF (1 << 20)

struct bus_msg {
	uint32_t refs;
	uint32_t len;
	size_t *account; /* total bytes counter this record is charged to */
	unsigned char data[];
};

static struct bus_msg *msg_new(const void *data, size_t len, size_t *account)
{
	struct bus_msg *m = malloc(sizeof(*m) + len);
	if (!m)
		return NULL;
	m->refs = 1;
	m->len = (uint32_t)len;
	m->account = account;
	memcpy(m->data, data, len);
	if (account)
		*account += len;
	return m;
}

static void msg_unref(struct bus_msg *m)
{
	if (m && --m->refs == 0) {
		if (m->account)
			*m->account -= m->len;
		free(m);
	}
}

/* Bounded FIFO of record references. */
struct msgq {
	struct bus_msg **ring;
	uint32_t head, count, cap;
	size_t bytes;
};

static int msgq_push(struct msgq *q, struct bus_msg *m, uint32_t max_msgs, size_t max_bytes)
{
	if (q->count >= max_msgs || q->bytes + m->len > max_bytes)
		return -1;
	if (q->count == q->cap) {
		uint32_t ncap = q->cap ? q->cap * 2 : 16;
		struct bus_msg **nr = malloc(sizeof(*nr) * ncap);
		if (!nr)
			return -1;
		for (uint32_t i = 0; i < q->count; i++)
			nr[i] = q->ring[(q->head + i) & (q->cap - 1)];
		free(q->ring);
		q->ring = nr;
		q->cap = ncap;
		q->head = 0;
	}
	q->ring[(q->head + q->count) & (q->cap - 1)] = m;
	q->count++;
	q->bytes += m->len;
	m->refs++;
	return 0;
}

static struct bus_msg *msgq_front(const struct msgq *q)
{
	return q->count ? q->ring[q->head] : NULL;
}

static void msgq_pop(struct msgq *q)
{
	struct bus_msg *m = q->ring[q->head];
	q->head = (q->head + 1) & (q->cap - 1);
	q->count--;
	q->bytes -= m->len;
	msg_unref(m);
}

static void msgq_clear(struct msgq *q)
{
	while (q->count)
		msgq_pop(q);
	free(q->ring);
	memset(q, 0, sizeof(*q));
}

static void set_bufs(int fd)
{
	int sz = BUS_SOCKBUF;
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)); /* capped by the kernel: best effort */
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
}

static int would_block(int e)
{
	return e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS || e == ENOMEM;
}

/* ================================================================ hub */

struct hub_peer {
	int fd;
	int attached;
	int broken; /* write side failed: the worker is gone */
	struct event *rev, *wev;
	struct msgq q;
	uint64_t dropped;
	struct bus_hub *hub;
};

struct bus_hub {
	struct event_base *base;
	int max_peers;
	struct hub_peer *peers;
	int *active; /* attached peer indexes, in attach order */
	int nactive;
	size_t held_bytes;
	struct bus_stats stats;
	unsigned char *buf;
};

static void peer_write_cb(evutil_socket_t fd, short what, void *arg);
static void peer_read_cb(evutil_socket_t fd, short what, void *arg);

static void peer_drop(struct bus_hub *h, struct hub_peer *p)
{
	p->dropped++;
	h->stats.dropped++;
	if (p->dropped == 1 || p->dropped % 1000 == 0)
		log_warn(NULL, "bus queue to a worker is full: broadcasts dropped",
		         LF_INT("peer", (int64_t)(p - h->peers)), LF_INT("dropped", (int64_t)p->dropped));
}

/* Write the peer's queue until it would block. */
static void peer_flush(struct bus_hub *h, struct hub_peer *p)
{
	struct bus_msg *m;
	while ((m = msgq_front(&p->q))) {
		ssize_t w = send(p->fd, m->data, m->len, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && would_block(errno)) {
			event_add(p->wev, NULL);
			return;
		}
		if (w < 0) {
			p->broken = 1;
			msgq_clear(&p->q);
			break;
		}
		h->stats.forwarded++;
		msgq_pop(&p->q);
	}
	event_del(p->wev);
}

static void hub_forward(struct bus_hub *h, const unsigned char *data, size_t len)
{
	struct bus_msg *m = NULL;
	h->stats.received++;
	for (int i = 0; i < h->nactive; i++) {
		struct hub_peer *p = &h->peers[h->active[i]];
		if (p->broken)
			continue;
		if (p->q.count == 0) {
			ssize_t w;
			do
				w = send(p->fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
			while (w < 0 && errno == EINTR);
			if (w >= 0) {
				h->stats.forwarded++;
				continue;
			}
			if (!would_block(errno)) {
				p->broken = 1;
				continue;
			}
		}
		if (!m && h->held_bytes + len <= BUS_HUB_BYTES)
			m = msg_new(data, len, &h->held_bytes);
		if (!m || msgq_push(&p->q, m, BUS_PEER_QUEUE_MSGS, BUS_PEER_QUEUE_BYTES) < 0) {
			peer_drop(h, p);
			continue;
		}
		event_add(p->wev, NULL);
	}
	msg_unref(m);
}

/* Read and forward up to max records from the peer; -1 at end of stream. */
static int peer_read(struct bus_hub *h, struct hub_peer *p, int max)
{
	for (int i = 0; i < max; i++) {
		ssize_t n = recv(p->fd, h->buf, BUS_MAX_MSG, MSG_DONTWAIT | MSG_TRUNC);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return would_block(errno) ? 0 : -1;
		}
		if (n == 0)
			return -1;
		if ((size_t)n > BUS_MAX_MSG) {
			h->stats.dropped++;
			continue;
		}
		hub_forward(h, h->buf, (size_t)n);
	}
	return 0;
}

static void peer_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct hub_peer *p = arg;
	(void)fd;
	(void)what;
	if (peer_read(p->hub, p, HUB_READS_PER_EVENT) < 0)
		event_del(p->rev); /* the worker closed its end; detach cleans up */
}

static void peer_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct hub_peer *p = arg;
	(void)fd;
	(void)what;
	peer_flush(p->hub, p);
}

struct bus_hub *bus_hub_new(struct event_base *base, int max_peers)
{
	if (max_peers <= 0)
		return NULL;
	struct bus_hub *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->base = base;
	h->max_peers = max_peers;
	h->peers = calloc((size_t)max_peers, sizeof(*h->peers));
	h->active = calloc((size_t)max_peers, sizeof(*h->active));
	h->buf = malloc(BUS_MAX_MSG);
	if (!h->peers || !h->active || !h->buf) {
		bus_hub_free(h);
		return NULL;
	}
	for (int i = 0; i < max_peers; i++) {
		h->peers[i].fd = -1;
		h->peers[i].hub = h;
	}
	return h;
}

void bus_hub_detach(struct bus_hub *h, int idx)
{
	if (!h || idx < 0 || idx >= h->max_peers || !h->peers[idx].attached)
		return;
	struct hub_peer *p = &h->peers[idx];
	/* Records the worker sent before it went away still reach the others. */
	peer_read(h, p, 1 << 20);
	for (int i = 0; i < h->nactive; i++)
		if (h->active[i] == idx) {
			memmove(&h->active[i], &h->active[i + 1], sizeof(int) * (size_t)(h->nactive - i - 1));
			h->nactive--;
			break;
		}
	event_free(p->rev);
	event_free(p->wev);
	close(p->fd);
	msgq_clear(&p->q);
	memset(p, 0, sizeof(*p));
	p->fd = -1;
	p->hub = h;
}

int bus_hub_attach(struct bus_hub *h, int idx, int *child_fd)
{
	if (!h || idx < 0 || idx >= h->max_peers) {
		errno = EINVAL;
		return -1;
	}
	bus_hub_detach(h, idx);
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	set_bufs(sv[0]);
	set_bufs(sv[1]);
	struct hub_peer *p = &h->peers[idx];
	p->fd = sv[0];
	p->rev = event_new(h->base, sv[0], EV_READ | EV_PERSIST, peer_read_cb, p);
	p->wev = event_new(h->base, sv[0], EV_WRITE | EV_PERSIST, peer_write_cb, p);
	if (!p->rev || !p->wev || event_add(p->rev, NULL) < 0) {
		int e = errno;
		if (p->rev)
			event_free(p->rev);
		if (p->wev)
			event_free(p->wev);
		close(sv[0]);
		close(sv[1]);
		memset(p, 0, sizeof(*p));
		p->fd = -1;
		p->hub = h;
		errno = e ? e : ENOMEM;
		return -1;
	}
	p->attached = 1;
	h->active[h->nactive++] = idx;
	*child_fd = sv[1];
	return 0;
}

void bus_hub_free(struct bus_hub *h)
{
	if (!h)
		return;
	if (h->peers)
		for (int i = 0; i < h->max_peers; i++)
			if (h->peers[i].attached) {
				struct hub_peer *p = &h->peers[i];
				event_free(p->rev);
				event_free(p->wev);
				close(p->fd);
				msgq_clear(&p->q);
			}
	free(h->peers);
	free(h->active);
	free(h->buf);
	free(h);
}

const struct bus_stats *bus_hub_stats(const struct bus_hub *h)
{
	return &h->stats;
}

/* ============================================================= worker */

struct bus {
	struct event_base *base;
	int fd;
	struct event *rev, *wev, *loop_ev;
	struct msgq out; /* to the hub, or looped back without a hub */
	bus_deliver_fn deliver;
	void *ud;
	struct bus_stats stats;
	unsigned char *buf;
	int hub_gone;
};

static void bus_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bus *b = arg;
	(void)fd;
	(void)what;
	struct bus_msg *m;
	while ((m = msgq_front(&b->out))) {
		ssize_t w = send(b->fd, m->data, m->len, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && would_block(errno))
			return; /* the persistent write event fires again */
		if (w < 0) {
			b->hub_gone = 1;
			b->stats.dropped += b->out.count;
			msgq_clear(&b->out);
			break;
		}
		msgq_pop(&b->out);
	}
	event_del(b->wev);
}

static void bus_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bus *b = arg;
	(void)what;
	for (int i = 0; i < BUS_READS_PER_EVENT; i++) {
		ssize_t n = recv(fd, b->buf, BUS_MAX_MSG, MSG_DONTWAIT | MSG_TRUNC);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (would_block(errno))
				return;
			n = 0;
		}
		if (n == 0) {
			/* The supervisor is gone (the worker follows it shortly). */
			event_del(b->rev);
			b->hub_gone = 1;
			return;
		}
		if ((size_t)n > BUS_MAX_MSG)
			continue;
		b->stats.received++;
		b->deliver(b->buf, (size_t)n, b->ud);
	}
}

/* Without a hub: deliver the looped-back records in order. */
static void bus_loop_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bus *b = arg;
	(void)fd;
	(void)what;
	/* Records published while delivering wait for the next turn. */
	uint32_t n = b->out.count;
	struct bus_msg *m;
	while (n-- && (m = msgq_front(&b->out))) {
		m->refs++;
		msgq_pop(&b->out);
		b->stats.received++;
		b->deliver(m->data, m->len, b->ud);
		msg_unref(m);
	}
	if (b->out.count)
		event_active(b->loop_ev, EV_TIMEOUT, 1);
}

struct bus *bus_open(struct event_base *base, int fd, bus_deliver_fn deliver, void *ud)
{
	struct bus *b = calloc(1, sizeof(*b));
	if (!b) {
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	b->base = base;
	b->fd = fd;
	b->deliver = deliver;
	b->ud = ud;
	int ok;
	if (fd >= 0) {
		b->buf = malloc(BUS_MAX_MSG);
		b->rev = event_new(base, fd, EV_READ | EV_PERSIST, bus_read_cb, b);
		b->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, bus_write_cb, b);
		ok = b->buf && b->rev && b->wev && event_add(b->rev, NULL) == 0;
	} else {
		b->loop_ev = event_new(base, -1, 0, bus_loop_cb, b);
		ok = b->loop_ev != NULL;
	}
	if (!ok) {
		bus_close(b);
		return NULL;
	}
	return b;
}

int bus_publish(struct bus *b, const void *msg, size_t len)
{
	if (len == 0 || len > BUS_MAX_MSG || b->hub_gone) {
		b->stats.dropped++;
		return -1;
	}
	if (b->fd >= 0 && b->out.count == 0) {
		ssize_t w;
		do
			w = send(b->fd, msg, len, MSG_DONTWAIT | MSG_NOSIGNAL);
		while (w < 0 && errno == EINTR);
		if (w >= 0) {
			b->stats.forwarded++;
			return 0;
		}
		if (!would_block(errno)) {
			b->hub_gone = 1;
			b->stats.dropped++;
			return -1;
		}
	}
	struct bus_msg *m = msg_new(msg, len, NULL);
	if (!m || msgq_push(&b->out, m, BUS_OUT_QUEUE_MSGS, BUS_OUT_QUEUE_BYTES) < 0) {
		msg_unref(m);
		b->stats.dropped++;
		return -1;
	}
	msg_unref(m);
	b->stats.forwarded++;
	if (b->fd >= 0)
		event_add(b->wev, NULL);
	else if (b->out.count == 1)
		event_active(b->loop_ev, EV_TIMEOUT, 1);
	return 0;
}

void bus_close(struct bus *b)
{
	if (!b)
		return;
	if (b->rev)
		event_free(b->rev);
	if (b->wev)
		event_free(b->wev);
	if (b->loop_ev)
		event_free(b->loop_ev);
	if (b->fd >= 0)
		close(b->fd);
	msgq_clear(&b->out);
	free(b->buf);
	free(b);
}

const struct bus_stats *bus_stats(const struct bus *b)
{
	return &b->stats;
}
