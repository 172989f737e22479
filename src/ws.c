/* ws.c - RFC 6455 connections over wslay (see ws.h).
 *
 * Reading: one recv() per readiness into a buffer shared by the server,
 * then the bytes go through a small frame-header tracker before wslay sees
 * them. The tracker rejects what wslay would only answer with an empty
 * close (oversized or fragmented control frames, 64-bit lengths with the
 * top bit set) so the client always gets a status code, and it knows when
 * the stream sits between messages: only then may an idle socket's wslay
 * context (about 9 KiB) be released ("parked") and rebuilt later.
 *
 * Writing: each socket has a bounded ring of frame references, written
 * with one sendmsg() per socket per loop iteration (a dirty list flushed
 * by one active event). Close frames are built here rather than by wslay
 * so that a parked socket can be closed without rebuilding its context;
 * wslay's write side is shut once our close is queued, and it only emits
 * pongs and the close frames it sends itself (protocol errors, echo).
 *
 * One file on purpose: the wslay glue, flow control and the close
 * handshake act on one struct ws_conn in a few states.
 */
#include "autoconfig.h"

#include "clock.h"
#include "ws.h"

#include "http.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "sendbatch.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nettle/sha1.h>
#include <sodium.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <wslay/wslay.h>

#define WS_READ_CHUNK 16384
#define WS_READS_PER_EVENT 4
#define WS_QUEUE_MAX 4096 /* frames queued on one socket */
#define WS_IOV_MAX 64
#define WS_BATCH 512             /* socket writes issued by one io_uring_enter() */
#define WS_PARK_AFTER_MS 2000    /* an idle socket's empty send ring is released after this */
#define WS_AFTER_CLOSE_MAX 65536 /* bytes a client may send after our close before we hang up */
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

enum { C_OPEN = 0, C_CLOSING, C_DEAD };

/* Frame headers seen so far on the client's stream. */
struct ws_track {
	uint64_t left; /* payload bytes of the current frame still to come */
	uint8_t hdr[14];
	uint8_t hlen;   /* header bytes collected */
	uint8_t in_msg; /* inside a fragmented data message */
};

struct ws_conn {
	struct ws_server *srv;
	struct ws_conn *prev, *next; /* all connections of the server */
	struct ws_conn *dirty_next;
	struct event ev;
	int fd;
	uint32_t refs;
	uint8_t state;
	uint8_t ev_flags; /* events currently registered */
	uint8_t in_dirty;
	uint8_t paused;       /* application asked us to stop reading */
	uint8_t blocked;      /* the last write did not take everything */
	uint8_t close_queued; /* a close frame is in the queue (ours or wslay's) */
	uint8_t peer_closed;  /* the client's close frame arrived */
	uint8_t wr_shut;
	uint8_t rx_dead;               /* protocol error: ignore further input */
	uint8_t in_recv;               /* inside wslay_event_recv */
	uint8_t text_ping;             /* keep-alive is the server's text ping, sent on a fixed period */
	uint16_t deadline_code;        /* open: close with this code at close_deadline_ms (0: none) */
	wslay_event_context_ptr wslay; /* NULL while parked */
	struct ws_frame **q;           /* ring, qcap a power of two */
	uint32_t qhead, qcount, qcap, qoff;
	size_t qbytes; /* unsent bytes in the ring */
	struct ws_track trk;
	uint32_t after_close; /* bytes received since our close frame went out */
	uint64_t last_rx_ms, last_tx_ms, last_ping_ms, close_deadline_ms;
	size_t btotal; /* bytes offered in the batch in flight */
	ssize_t bres;  /* its result: bytes written or -errno */
	alignas(max_align_t) unsigned char app[];
};

struct ws_server {
	struct event_base *base;
	struct ws_limits lim;
	struct ws_handlers h;
	struct ws_conn *head;
	struct ws_conn *dirty;
	struct event *flush_ev, *sweep_ev, *drained_ev;
	struct ws_frame *ping;
	struct ws_frame *text_ping; /* lim.text_ping as a text frame, or NULL */
	size_t count;
	int draining;
	int drained_called;
	void (*on_empty)(void *ud);
	void *on_empty_ud;
	struct ws_stats stats;
	struct sendbatch *batch;   /* NULL: one sendmsg() per socket */
	struct ws_conn **bconn;    /* the batch's sockets, in order */
	int flushing;              /* inside flush_cb: new dirty sockets join its loop */
	const unsigned char *feed; /* bytes wslay's recv callback hands out */
	size_t feed_len;
	unsigned char rbuf[WS_READ_CHUNK];
};

static uint64_t now_ms(void)
{
	return clock_coarse_ms();
}

/* ----------------------------------------------------------- frames */

static struct ws_frame *frame_alloc(size_t len)
{
	if (len > UINT32_MAX - sizeof(struct ws_frame))
		return NULL;
	struct ws_frame *f = malloc(sizeof(*f) + len);
	if (!f)
		return NULL;
	f->refs = 1;
	f->len = (uint32_t)len;
	return f;
}

/* Server frame header (FIN, opcode, unmasked length) into out; its size. */
static size_t frame_header(unsigned char out[10], unsigned opcode, size_t len)
{
	out[0] = (unsigned char)(0x80u | opcode);
	if (len < 126) {
		out[1] = (unsigned char)len;
		return 2;
	}
	if (len <= 0xffff) {
		out[1] = 126;
		out[2] = (unsigned char)(len >> 8);
		out[3] = (unsigned char)len;
		return 4;
	}
	out[1] = 127;
	for (int i = 0; i < 8; i++)
		out[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
	return 10;
}

static struct ws_frame *frame_build(unsigned opcode, const void *payload, size_t len)
{
	unsigned char h[10];
	size_t hl = frame_header(h, opcode, len);
	if (len > SIZE_MAX - hl)
		return NULL;
	struct ws_frame *f = frame_alloc(hl + len);
	if (!f)
		return NULL;
	memcpy(f->data, h, hl);
	if (len)
		memcpy(f->data + hl, payload, len);
	return f;
}

struct ws_frame *ws_frame_text(const char *payload, size_t len)
{
	return frame_build(0x1, payload, len);
}

void ws_frame_unref(struct ws_frame *f)
{
	if (f && --f->refs == 0)
		free(f);
}

/* ------------------------------------------------------------ queue */

static int queue_push(struct ws_conn *c, struct ws_frame *f)
{
	if (c->qcount == c->qcap) {
		uint32_t ncap = c->qcap ? c->qcap * 2 : 4;
		struct ws_frame **nq = malloc(sizeof(*nq) * ncap);
		if (!nq)
			return -1;
		for (uint32_t i = 0; i < c->qcount; i++)
			nq[i] = c->q[(c->qhead + i) & (c->qcap - 1)];
		free(c->q);
		c->q = nq;
		c->qcap = ncap;
		c->qhead = 0;
	}
	c->q[(c->qhead + c->qcount) & (c->qcap - 1)] = f;
	c->qcount++;
	c->qbytes += f->len;
	f->refs++;
	return 0;
}

/* Drop queued frames; keep_head keeps a partly written first frame (the
 * stream must stay well-formed). */
static void queue_drop(struct ws_conn *c, int keep_head)
{
	uint32_t keep = keep_head && c->qcount && c->qoff ? 1 : 0;
	while (c->qcount > keep) {
		uint32_t idx = (c->qhead + c->qcount - 1) & (c->qcap - 1);
		struct ws_frame *f = c->q[idx];
		c->qbytes -= f->len - (c->qcount == 1 ? c->qoff : 0);
		ws_frame_unref(f);
		c->qcount--;
	}
	if (!c->qcount)
		c->qoff = 0;
}

static void queue_consume(struct ws_conn *c, size_t n)
{
	c->qbytes -= n;
	while (n > 0 && c->qcount) {
		struct ws_frame *f = c->q[c->qhead];
		size_t rest = f->len - c->qoff;
		if (n < rest) {
			c->qoff += (uint32_t)n;
			return;
		}
		n -= rest;
		ws_frame_unref(f);
		c->qhead = (c->qhead + 1) & (c->qcap - 1);
		c->qcount--;
		c->qoff = 0;
		c->srv->stats.frames_out++;
		metrics_count(MC_WS_DELIVERIES);
	}
}

/* ----------------------------------------------------- frame tracker */

/* Check the client's frame headers in p[0..n). Returns 0, or a close code
 * with *ok set to how many leading bytes may still be given to wslay. */
static int track(struct ws_track *t, const unsigned char *p, size_t n, size_t *ok)
{
	size_t i = 0;
	*ok = n;
	while (i < n) {
		if (t->left) {
			size_t k = n - i < t->left ? n - i : (size_t)t->left;
			t->left -= k;
			i += k;
			continue;
		}
		t->hdr[t->hlen++] = p[i++];
		if (t->hlen < 2)
			continue;
		unsigned len7 = t->hdr[1] & 0x7fu;
		size_t need = 2u + (len7 == 126 ? 2u : len7 == 127 ? 8u : 0u) + ((t->hdr[1] & 0x80u) ? 4u : 0u);
		if (t->hlen < need)
			continue;
		unsigned fin = t->hdr[0] & 0x80u, rsv = t->hdr[0] & 0x70u, op = t->hdr[0] & 0x0fu;
		uint64_t len = len7;
		if (len7 == 126)
			len = (uint64_t)t->hdr[2] << 8 | t->hdr[3];
		else if (len7 == 127) {
			len = 0;
			for (int k = 0; k < 8; k++)
				len = len << 8 | t->hdr[2 + k];
		}
		int bad = rsv || !(t->hdr[1] & 0x80u) || (len >> 63);
		if (op & 0x8u)
			bad |= op > 0xAu || !fin || len > 125;
		else if (op == 0)
			bad |= !t->in_msg;
		else if (op == 1 || op == 2)
			bad |= t->in_msg;
		else
			bad = 1;
		if (bad) {
			*ok = i >= need ? i - need : 0;
			t->hlen = 0;
			return WS_PROTOCOL_ERROR;
		}
		if (!(op & 0x8u))
			t->in_msg = !fin;
		t->left = len;
		t->hlen = 0;
	}
	return 0;
}

static int track_idle(const struct ws_track *t)
{
	return t->hlen == 0 && t->left == 0 && !t->in_msg;
}

/* ------------------------------------------------------ connections */

static void conn_finish(struct ws_conn *c);
static void conn_update_events(struct ws_conn *c);
static void close_flushed(struct ws_conn *c);

void ws_conn_ref(struct ws_conn *c)
{
	c->refs++;
}

void ws_conn_unref(struct ws_conn *c)
{
	if (c && --c->refs == 0)
		free(c);
}

void *ws_conn_app(struct ws_conn *c)
{
	return c->app;
}

struct ws_conn *ws_conn_from_app(void *app)
{
	return (struct ws_conn *)((unsigned char *)app - offsetof(struct ws_conn, app));
}

int ws_conn_closing(const struct ws_conn *c)
{
	return c->state != C_OPEN;
}

static void mark_dirty(struct ws_conn *c)
{
	struct ws_server *s = c->srv;
	if (c->in_dirty || c->state == C_DEAD)
		return;
	c->in_dirty = 1;
	c->refs++;
	c->dirty_next = s->dirty;
	if (!s->dirty && !s->flushing)
		event_active(s->flush_ev, EV_TIMEOUT, 1);
	s->dirty = c;
}

static ssize_t cb_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *ud)
{
	struct ws_conn *c = ud;
	struct ws_server *s = c->srv;
	(void)flags;
	if (s->feed_len == 0) {
		wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
		return -1;
	}
	size_t n = len < s->feed_len ? len : s->feed_len;
	memcpy(buf, s->feed, n);
	s->feed += n;
	s->feed_len -= n;
	return (ssize_t)n;
}

/* wslay's frames (pong, its own close) join the ordered queue. */
static ssize_t cb_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags, void *ud)
{
	struct ws_conn *c = ud;
	(void)flags;
	struct ws_frame *f = c->state == C_DEAD ? NULL : frame_alloc(len);
	if (!f) {
		wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
		return -1;
	}
	memcpy(f->data, data, len);
	int rc = queue_push(c, f);
	ws_frame_unref(f);
	if (rc < 0) {
		wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
		return -1;
	}
	return (ssize_t)len;
}

static void start_closing(struct ws_conn *c)
{
	if (c->state != C_OPEN)
		return;
	c->state = C_CLOSING;
	c->deadline_code = 0;
	c->close_deadline_ms = now_ms() + c->srv->lim.close_timeout_ms;
}

/* Out of memory or an event error where the caller may be iterating over
 * connections: never finish here; cut the socket and let the next sweep
 * finish it (on_close then runs from the loop, not under the caller). */
static void conn_doom(struct ws_conn *c)
{
	start_closing(c);
	c->close_deadline_ms = 0;
	if (c->fd >= 0)
		shutdown(c->fd, SHUT_RDWR);
}

static void cb_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg, void *ud)
{
	struct ws_conn *c = ud;
	(void)ctx;
	/* wslay hands an empty message over as NULL. */
	const char *msg = arg->msg_length ? (const char *)arg->msg : "";
	switch (arg->opcode) {
	case WSLAY_TEXT_FRAME:
		if (c->state != C_OPEN)
			return;
		/* wslay checks UTF-8 as the frames arrive; this keeps the promise
		 * of ws.h whatever the library version does. */
		if (!json_utf8_valid(msg, arg->msg_length)) {
			ws_close(c, WS_INVALID_PAYLOAD, "invalid utf-8");
			return;
		}
		metrics_count(MC_WS_MESSAGES_IN);
		c->srv->h.on_text(c, msg, arg->msg_length);
		return;
	case WSLAY_BINARY_FRAME: ws_close(c, WS_UNSUPPORTED_DATA, "binary messages are not supported"); return;
	case WSLAY_CONNECTION_CLOSE:
		c->peer_closed = 1;
		start_closing(c);
		return;
	default: return; /* ping (wslay queued the pong) and pong: activity only */
	}
}

static int ensure_ctx(struct ws_conn *c)
{
	if (c->wslay)
		return 0;
	static const struct wslay_event_callbacks cbs = {
	    .recv_callback = cb_recv,
	    .send_callback = cb_send,
	    .on_msg_recv_callback = cb_msg,
	};
	if (wslay_event_context_server_init(&c->wslay, &cbs, c) != 0) {
		c->wslay = NULL;
		return -1;
	}
	wslay_event_config_set_max_recv_msg_length(c->wslay, c->srv->lim.max_message);
	if (c->close_queued)
		wslay_event_shutdown_write(c->wslay);
	return 0;
}

static void check_backlog(struct ws_conn *c)
{
	struct ws_server *s = c->srv;
	if (c->state == C_OPEN && (c->qbytes > s->lim.max_backlog || c->qcount > WS_QUEUE_MAX)) {
		s->stats.closed_backlog++;
		metrics_count(MC_WS_SLOW_CLOSES);
		ws_close(c, WS_TRY_AGAIN_LATER, "backlog too large");
	}
}

/* Give n bytes from the client to wslay (through the tracker). */
static void conn_feed(struct ws_conn *c, const unsigned char *p, size_t n)
{
	struct ws_server *s = c->srv;
	if (c->state == C_DEAD || c->rx_dead || c->peer_closed)
		return; /* nothing more is expected: discard */
	if (c->wslay && !wslay_event_get_read_enabled(c->wslay))
		return;
	size_t ok;
	int bad = track(&c->trk, p, n, &ok);
	if (ensure_ctx(c) < 0) {
		conn_finish(c);
		return;
	}
	int rc = 0;
	if (ok > 0) {
		s->feed = p;
		s->feed_len = ok;
		c->in_recv = 1;
		rc = wslay_event_recv(c->wslay);
		c->in_recv = 0;
		s->feed_len = 0;
	}
	if (c->state == C_DEAD) {
		if (c->wslay) {
			wslay_event_context_free(c->wslay);
			c->wslay = NULL;
		}
		return;
	}
	if (rc != 0) {
		conn_finish(c); /* out of memory inside wslay */
		return;
	}
	if (bad && wslay_event_get_read_enabled(c->wslay)) {
		c->rx_dead = 1;
		ws_close(c, (uint16_t)bad, "protocol error");
	}
	if (wslay_event_want_write(c->wslay) && wslay_event_send(c->wslay) != 0) {
		conn_finish(c);
		return;
	}
	if (wslay_event_get_close_sent(c->wslay))
		c->close_queued = 1;
	if (!wslay_event_get_read_enabled(c->wslay)) {
		c->rx_dead = 1; /* wslay answered a protocol error or a close */
		start_closing(c);
	}
	check_backlog(c);
	if (c->state == C_OPEN && track_idle(&c->trk)) {
		/* Between messages wslay holds nothing we need: release its ~9 KiB
		 * now (the next byte rebuilds it), so memory follows the sockets
		 * that are mid-message, not the open ones. */
		wslay_event_context_free(c->wslay);
		c->wslay = NULL;
	}
	if (c->qcount)
		mark_dirty(c);
	else if (c->state == C_CLOSING && c->close_queued)
		close_flushed(c); /* our close is out and the client's just came in */
}

static void conn_read(struct ws_conn *c)
{
	struct ws_server *s = c->srv;
	for (int round = 0; round < WS_READS_PER_EVENT; round++) {
		if (c->state == C_DEAD || (c->paused && c->state == C_OPEN))
			return;
		ssize_t n = recv(c->fd, s->rbuf, sizeof(s->rbuf), 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				conn_finish(c);
			return;
		}
		if (n == 0) {
			conn_finish(c); /* end of stream: done, or the client vanished */
			return;
		}
		c->last_rx_ms = now_ms();
		if (c->close_queued && !c->qcount) {
			/* A client that keeps sending after our close ignores it. */
			c->after_close += (uint32_t)n;
			if (c->after_close > WS_AFTER_CLOSE_MAX) {
				conn_finish(c);
				return;
			}
		}
		conn_feed(c, s->rbuf, (size_t)n);
		if ((size_t)n < sizeof(s->rbuf))
			return;
	}
}

/* The close frame and everything before it are on the wire. */
static void close_flushed(struct ws_conn *c)
{
	if (c->peer_closed) {
		conn_finish(c); /* handshake complete: the server closes first */
		return;
	}
	if (!c->wr_shut) {
		shutdown(c->fd, SHUT_WR);
		c->wr_shut = 1; /* now wait for the client's close and its FIN */
	}
}

/* The head of the queue as iovecs (at most max); their bytes in *total. */
static int conn_iov(const struct ws_conn *c, struct iovec *iov, int max, size_t *total)
{
	int n = 0;
	*total = 0;
	for (uint32_t i = 0; i < c->qcount && n < max; i++) {
		struct ws_frame *f = c->q[(c->qhead + i) & (c->qcap - 1)];
		size_t off = i == 0 ? c->qoff : 0;
		iov[n].iov_base = f->data + off;
		iov[n].iov_len = f->len - off;
		*total += f->len - off;
		n++;
	}
	return n;
}

/* w bytes of the total just offered went out: drop them from the queue.
 * Nothing here calls back into the application. */
static void conn_sent(struct ws_conn *c, size_t w, size_t total)
{
	c->srv->stats.bytes_out += (uint64_t)w;
	c->last_tx_ms = now_ms();
	queue_consume(c, w);
	c->blocked = w < total;
}

/* The queue is empty: finish a close whose frame is now on the wire. */
static void conn_flushed(struct ws_conn *c)
{
	c->blocked = 0;
	if (c->state == C_CLOSING && c->close_queued && !c->qcount)
		close_flushed(c);
}

static void conn_flush(struct ws_conn *c)
{
	while (c->qcount && c->state != C_DEAD) {
		struct iovec iov[WS_IOV_MAX];
		size_t total;
		int n = conn_iov(c, iov, WS_IOV_MAX, &total);
		struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
		ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				c->blocked = 1;
				return;
			}
			conn_finish(c);
			return;
		}
		conn_sent(c, (size_t)w, total);
		if (c->blocked)
			return;
	}
	if (c->state != C_DEAD)
		conn_flushed(c);
}

static void conn_io(evutil_socket_t fd, short what, void *arg)
{
	struct ws_conn *c = arg;
	(void)fd;
	c->refs++;
	if (what & EV_WRITE)
		conn_flush(c);
	if ((what & EV_READ) && c->state != C_DEAD)
		conn_read(c);
	if (c->state != C_DEAD)
		conn_update_events(c);
	ws_conn_unref(c);
}

static void conn_update_events(struct ws_conn *c)
{
	short want = 0;
	if (c->state != C_DEAD) {
		if (!(c->paused && c->state == C_OPEN))
			want |= EV_READ;
		if (c->blocked)
			want |= EV_WRITE;
	}
	if (want == c->ev_flags)
		return;
	if (c->ev_flags)
		event_del(&c->ev);
	c->ev_flags = 0;
	if (!want)
		return;
	if (event_assign(&c->ev, c->srv->base, c->fd, (short)(want | EV_PERSIST), conn_io, c) == 0 &&
	    event_add(&c->ev, NULL) == 0)
		c->ev_flags = (uint8_t)want;
	else
		conn_doom(c);
}

static void conn_finish(struct ws_conn *c)
{
	struct ws_server *s = c->srv;
	if (c->state == C_DEAD)
		return;
	c->state = C_DEAD;
	if (c->ev_flags)
		event_del(&c->ev);
	c->ev_flags = 0;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	queue_drop(c, 0);
	free(c->q);
	c->q = NULL;
	c->qcap = 0;
	if (c->wslay && !c->in_recv) {
		wslay_event_context_free(c->wslay);
		c->wslay = NULL;
	}
	if (c->prev)
		c->prev->next = c->next;
	else
		s->head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->prev = c->next = NULL;
	s->count--;
	if (s->h.on_close)
		s->h.on_close(c);
	if (s->h.on_count)
		s->h.on_count(s->count, s->h.ud);
	if (s->draining && s->count == 0 && !s->drained_called)
		event_active(s->drained_ev, EV_TIMEOUT, 1);
	ws_conn_unref(c); /* the server's reference */
}

void ws_conn_deadline(struct ws_conn *c, uint32_t ms, uint16_t code)
{
	if (c->state != C_OPEN)
		return;
	c->deadline_code = ms ? code : 0;
	c->close_deadline_ms = ms ? now_ms() + ms : 0;
}

void ws_conn_use_text_ping(struct ws_conn *c)
{
	c->text_ping = 1;
	c->last_ping_ms = now_ms();
}

void ws_conn_pause(struct ws_conn *c, int pause)
{
	if (c->state == C_DEAD || c->paused == (pause != 0))
		return;
	c->paused = pause != 0;
	conn_update_events(c);
}

int ws_send_frame(struct ws_conn *c, struct ws_frame *f)
{
	struct ws_server *s = c->srv;
	if (c->state != C_OPEN)
		return -1;
	/* The bound applies to what is already waiting, so one large frame
	 * (a full recent_messages) never trips it on a healthy socket. */
	if (c->qcount && (c->qbytes > s->lim.max_backlog || c->qcount >= WS_QUEUE_MAX)) {
		s->stats.closed_backlog++;
		metrics_count(MC_WS_SLOW_CLOSES);
		ws_close(c, WS_TRY_AGAIN_LATER, "backlog too large");
		return -1;
	}
	if (queue_push(c, f) < 0) {
		ws_close(c, WS_INTERNAL_ERROR, "out of memory");
		return -1;
	}
	mark_dirty(c);
	return 0;
}

int ws_send_text(struct ws_conn *c, const char *payload, size_t len)
{
	struct ws_frame *f = ws_frame_text(payload, len);
	if (!f)
		return -1;
	int rc = ws_send_frame(c, f);
	ws_frame_unref(f);
	return rc;
}

void ws_close(struct ws_conn *c, uint16_t code, const char *reason)
{
	if (c->state != C_OPEN || c->close_queued) {
		start_closing(c);
		return;
	}
	start_closing(c);
	if (code == WS_TRY_AGAIN_LATER)
		queue_drop(c, 1); /* a slow reader will not get its backlog */
	unsigned char body[125];
	size_t rl = reason ? strlen(reason) : 0;
	if (rl > sizeof(body) - 2)
		rl = sizeof(body) - 2;
	body[0] = (unsigned char)(code >> 8);
	body[1] = (unsigned char)code;
	if (rl)
		memcpy(body + 2, reason, rl);
	struct ws_frame *f = frame_build(0x8, body, rl + 2);
	if (!f || queue_push(c, f) < 0) {
		ws_frame_unref(f);
		conn_doom(c);
		return;
	}
	ws_frame_unref(f);
	c->close_queued = 1;
	if (c->wslay)
		wslay_event_shutdown_write(c->wslay); /* nothing may follow a close */
	mark_dirty(c);
}

static void conn_attach(struct ws_server *s, struct ws_conn *c, int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0 && !(fl & O_NONBLOCK))
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* fails harmlessly on AF_UNIX */
	if (s->lim.sndbuf > 0)
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &s->lim.sndbuf, sizeof(s->lim.sndbuf));
	c->srv = s;
	c->fd = fd;
	c->refs = 1;
	c->state = C_OPEN;
	c->last_rx_ms = c->last_tx_ms = c->last_ping_ms = now_ms();
	c->next = s->head;
	if (s->head)
		s->head->prev = c;
	s->head = c;
	s->count++;
	s->stats.accepted++;
	if (s->h.on_count)
		s->h.on_count(s->count, s->h.ud);
}

static struct ws_conn *conn_alloc(size_t app_size)
{
	if (app_size > SIZE_MAX / 2)
		return NULL;
	return calloc(1, sizeof(struct ws_conn) + app_size);
}

struct ws_conn *ws_conn_new(struct ws_server *s, int fd, size_t app_size)
{
	struct ws_conn *c = s->draining ? NULL : conn_alloc(app_size);
	if (!c) {
		close(fd);
		return NULL;
	}
	conn_attach(s, c, fd);
	return c;
}

int ws_conn_start(struct ws_conn *c, const void *leftover, size_t len)
{
	c->refs++;
	if (len)
		conn_feed(c, leftover, len);
	if (c->state != C_DEAD)
		conn_update_events(c);
	int rc = c->state == C_DEAD ? -1 : 0;
	ws_conn_unref(c);
	return rc;
}

/* ---------------------------------------------------------- upgrade */

int ws_accept_key(const char *key, size_t keylen, char accept[WS_ACCEPT_LEN + 1])
{
	struct sha1_ctx sc;
	uint8_t digest[SHA1_DIGEST_SIZE];
	sha1_init(&sc);
	sha1_update(&sc, keylen, (const uint8_t *)key);
	sha1_update(&sc, sizeof(WS_GUID) - 1, (const uint8_t *)WS_GUID);
	sha1_digest(&sc, sizeof(digest), digest);
	if (!sodium_bin2base64(accept, WS_ACCEPT_LEN + 1, digest, sizeof(digest), sodium_base64_VARIANT_ORIGINAL))
		return -1;
	return 0;
}

/* 1 if the comma-separated header value contains token (any case). */
static int has_token(const char *v, size_t len, const char *token)
{
	size_t tl = strlen(token);
	size_t i = 0;
	while (i < len) {
		while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		size_t start = i;
		while (i < len && v[i] != ',')
			i++;
		size_t end = i;
		while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t'))
			end--;
		if (end - start == tl && strncasecmp(v + start, token, tl) == 0)
			return 1;
	}
	return 0;
}

int ws_check_upgrade(struct http_request *req, char accept[WS_ACCEPT_LEN + 1], const char **why)
{
	size_t ul = 0, cl = 0, vl = 0, kl = 0;
	const char *up = http_header_get(req, "upgrade", &ul);
	const char *conn = http_header_get(req, "connection", &cl);
	if (!up || !has_token(up, ul, "websocket") || !conn || !has_token(conn, cl, "upgrade")) {
		http_add_header(req, "Upgrade", "websocket");
		*why = "websocket upgrade required";
		return 426;
	}
	if (req->method != HTTP_M_GET || req->http_minor < 1) {
		*why = "websocket upgrade needs GET over HTTP/1.1";
		return 400;
	}
	const char *ver = http_header_get(req, "sec-websocket-version", &vl);
	if (!ver || vl != 2 || memcmp(ver, "13", 2) != 0) {
		http_add_header(req, "Sec-WebSocket-Version", "13");
		*why = "unsupported websocket version";
		return 426;
	}
	const char *key = http_header_get(req, "sec-websocket-key", &kl);
	unsigned char raw[18];
	size_t rawlen = 0;
	if (!key || kl != 24 ||
	    sodium_base642bin(raw, sizeof(raw), key, kl, NULL, &rawlen, NULL, sodium_base64_VARIANT_ORIGINAL) != 0 ||
	    rawlen != 16) {
		*why = "invalid sec-websocket-key";
		return 400;
	}
	if (ws_accept_key(key, kl, accept) < 0) {
		*why = "internal error";
		return 500;
	}
	return 0;
}

int ws_upgrade(struct ws_server *s, struct http_request *req, const char *accept, size_t app_size,
               void (*init)(struct ws_conn *c, void *arg), void *arg)
{
	if (s->draining)
		return -1;
	char head[192];
	int hl = snprintf(head, sizeof(head),
	                  "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
	                  "Sec-WebSocket-Accept: %s\r\nX-Request-ID: %s\r\n\r\n",
	                  accept, req->request_id);
	if (hl < 0 || (size_t)hl >= sizeof(head))
		return -1;
	struct ws_conn *c = conn_alloc(app_size);
	struct evbuffer *left = evbuffer_new();
	if (!c || !left) {
		free(c);
		if (left)
			evbuffer_free(left);
		return -1;
	}
	http_set_status(req, 101);
	int fd = -1;
	if (http_takeover(req, head, (size_t)hl, &fd, left) < 0) {
		free(c);
		evbuffer_free(left);
		return -1;
	}
	/* The request is gone from here on. */
	conn_attach(s, c, fd);
	if (init)
		init(c, arg);
	size_t ll = evbuffer_get_length(left);
	const unsigned char *lp = ll ? evbuffer_pullup(left, -1) : NULL;
	if (ll && !lp)
		ll = 0;
	ws_conn_start(c, lp, ll);
	evbuffer_free(left);
	return 0;
}

/* ----------------------------------------------------------- server */

/* Pass 1 of a batch, for each socket in order: account what was written.
 * Nothing here calls back into the application, so no queue changes
 * before every result of the batch is in. */
static void batch_done(void *ud, ssize_t res, void *arg)
{
	struct ws_conn *c = ud;
	(void)arg;
	c->bres = res;
	if (res != -ECANCELED)
		c->srv->stats.batched_writes++;
	if (c->state == C_DEAD)
		return;
	if (res >= 0)
		conn_sent(c, (size_t)res, c->btotal);
	else if (res == -EAGAIN || res == -EWOULDBLOCK)
		c->blocked = 1;
}

/* Issue the batch, then pass 2: act on each result (errors finish the
 * socket, a socket with more queued goes round again). */
static void batch_run(struct ws_server *s)
{
	unsigned n = sendbatch_count(s->batch);
	if (!n)
		return;
	if (sendbatch_run(s->batch, batch_done, s) < 0) {
		log_warn(NULL, "io_uring failed: websocket writes go back to sendmsg",
		         LF_STR("error", strerror(errno)));
		sendbatch_free(s->batch);
		s->batch = NULL;
	}
	for (unsigned i = 0; i < n; i++) {
		struct ws_conn *c = s->bconn[i];
		ssize_t res = c->bres;
		if (c->state != C_DEAD) {
			if (res == -ECANCELED || res == -EINTR)
				conn_flush(c); /* never issued: the plain way */
			else if (res < 0 && res != -EAGAIN && res != -EWOULDBLOCK)
				conn_finish(c);
			else if (!c->blocked && c->qcount)
				mark_dirty(c); /* more than one request took: next round */
			else if (!c->blocked)
				conn_flushed(c);
			if (c->state != C_DEAD)
				conn_update_events(c);
		}
		ws_conn_unref(c); /* the dirty list's reference */
	}
}

static void flush_batched(struct ws_server *s)
{
	s->flushing = 1;
	while (s->dirty && s->batch) {
		struct ws_conn *list = s->dirty;
		s->dirty = NULL;
		while (list) {
			struct ws_conn *c = list;
			list = c->dirty_next;
			c->dirty_next = NULL;
			c->in_dirty = 0;
			struct iovec *iov = NULL;
			if (c->state != C_DEAD && c->qcount && s->batch && !(iov = sendbatch_iov(s->batch))) {
				batch_run(s); /* full: issue it, then start the next */
				iov = s->batch ? sendbatch_iov(s->batch) : NULL;
			}
			if (!iov) { /* nothing to write, or the ring is gone */
				if (c->state != C_DEAD) {
					conn_flush(c);
					if (c->state != C_DEAD)
						conn_update_events(c);
				}
				ws_conn_unref(c);
				continue;
			}
			int k = conn_iov(c, iov, SENDBATCH_IOV, &c->btotal);
			s->bconn[sendbatch_count(s->batch)] = c;
			sendbatch_add(s->batch, c->fd, (unsigned)k, c);
		}
		batch_run(s);
	}
	s->flushing = 0;
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct ws_server *s = arg;
	(void)fd;
	(void)what;
	if (s->batch)
		flush_batched(s); /* returns with s->dirty empty, or the ring gone */
	struct ws_conn *c;
	while ((c = s->dirty)) {
		s->dirty = c->dirty_next;
		c->dirty_next = NULL;
		c->in_dirty = 0;
		if (c->state != C_DEAD) {
			conn_flush(c);
			if (c->state != C_DEAD)
				conn_update_events(c);
		}
		ws_conn_unref(c);
	}
}

static void send_ping(struct ws_conn *c)
{
	if (queue_push(c, c->srv->ping) == 0)
		mark_dirty(c);
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
	struct ws_server *s = arg;
	(void)fd;
	(void)what;
	uint64_t now = now_ms();
	struct ws_conn *next;
	for (struct ws_conn *c = s->head; c; c = next) {
		next = c->next;
		if (c->state == C_CLOSING) {
			if (now >= c->close_deadline_ms)
				conn_finish(c);
			continue;
		}
		if (c->deadline_code && now >= c->close_deadline_ms) {
			ws_close(c, c->deadline_code, "deadline passed");
			continue;
		}
		uint64_t quiet = now - c->last_rx_ms;
		if (quiet >= s->lim.idle_timeout_ms) {
			ws_close(c, WS_GOING_AWAY, "idle timeout");
			continue;
		}
		if (c->text_ping && s->text_ping) {
			/* Engine.IO style: the client expects the server's ping
			 * every period whatever the traffic, and answers it. */
			if (now - c->last_ping_ms >= s->lim.ping_idle_ms) {
				c->last_ping_ms = now;
				if (queue_push(c, s->text_ping) == 0)
					mark_dirty(c);
			}
		} else if (quiet >= s->lim.ping_idle_ms && now - c->last_ping_ms >= s->lim.ping_idle_ms) {
			c->last_ping_ms = now;
			send_ping(c);
		}
		if (c->q && !c->qcount && now - c->last_tx_ms >= WS_PARK_AFTER_MS) {
			free(c->q);
			c->q = NULL;
			c->qcap = 0;
			c->qhead = 0;
		}
	}
}

static void drained_cb(evutil_socket_t fd, short what, void *arg)
{
	struct ws_server *s = arg;
	(void)fd;
	(void)what;
	if (s->drained_called || s->count)
		return;
	s->drained_called = 1;
	if (s->on_empty)
		s->on_empty(s->on_empty_ud);
}

struct ws_server *ws_server_new(struct event_base *base, const struct ws_limits *lim, const struct ws_handlers *h)
{
	struct ws_server *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->base = base;
	s->h = *h;
	if (lim)
		s->lim = *lim;
	if (!s->lim.ping_idle_ms)
		s->lim.ping_idle_ms = 25000;
	if (!s->lim.idle_timeout_ms)
		s->lim.idle_timeout_ms = 60000;
	if (!s->lim.close_timeout_ms)
		s->lim.close_timeout_ms = 5000;
	if (!s->lim.max_message)
		s->lim.max_message = 64 * 1024;
	if (!s->lim.max_backlog)
		s->lim.max_backlog = 256 * 1024;
	if (!s->lim.sndbuf)
		s->lim.sndbuf = 64 * 1024;
	/* Sweep often enough for the shortest timer, at most once a second. */
	uint32_t sweep = s->lim.ping_idle_ms / 4;
	if (s->lim.close_timeout_ms / 4 < sweep)
		sweep = s->lim.close_timeout_ms / 4;
	if (sweep > 1000)
		sweep = 1000;
	if (sweep < 50)
		sweep = 50;
	struct timeval tv = {(time_t)(sweep / 1000), (suseconds_t)((sweep % 1000) * 1000)};
	s->flush_ev = event_new(base, -1, 0, flush_cb, s);
	s->sweep_ev = event_new(base, -1, EV_PERSIST, sweep_cb, s);
	s->drained_ev = event_new(base, -1, 0, drained_cb, s);
	/* Without io_uring (refused by the kernel, or switched off), every
	 * socket is written with its own sendmsg(). */
	if (!s->lim.no_io_uring) {
		s->batch = sendbatch_new(WS_BATCH);
		if (!s->batch)
			log_info(NULL, "io_uring unavailable: websocket writes use sendmsg",
			         LF_STR("error", strerror(errno)));
		else if (!(s->bconn = calloc(WS_BATCH, sizeof(*s->bconn)))) {
			sendbatch_free(s->batch);
			s->batch = NULL;
		}
	}
	s->ping = frame_build(0x9, NULL, 0);
	if (s->lim.text_ping)
		s->text_ping = ws_frame_text(s->lim.text_ping, strlen(s->lim.text_ping));
	if (!s->flush_ev || !s->sweep_ev || !s->drained_ev || !s->ping || (s->lim.text_ping && !s->text_ping) ||
	    event_add(s->sweep_ev, &tv) < 0) {
		ws_server_free(s);
		return NULL;
	}
	return s;
}

void ws_server_free(struct ws_server *s)
{
	if (!s)
		return;
	while (s->head)
		conn_finish(s->head);
	/* Dirty entries hold references to connections that are now dead. */
	struct ws_conn *c;
	while ((c = s->dirty)) {
		s->dirty = c->dirty_next;
		c->in_dirty = 0;
		ws_conn_unref(c);
	}
	sendbatch_free(s->batch);
	free(s->bconn);
	if (s->flush_ev)
		event_free(s->flush_ev);
	if (s->sweep_ev)
		event_free(s->sweep_ev);
	if (s->drained_ev)
		event_free(s->drained_ev);
	ws_frame_unref(s->ping);
	ws_frame_unref(s->text_ping);
	free(s);
}

void ws_server_drain(struct ws_server *s, void (*on_empty)(void *ud), void *ud)
{
	s->on_empty = on_empty;
	s->on_empty_ud = ud;
	if (!s->draining) {
		s->draining = 1;
		struct ws_conn *next;
		for (struct ws_conn *c = s->head; c; c = next) {
			next = c->next;
			if (c->state == C_OPEN)
				ws_close(c, WS_GOING_AWAY, "server shutting down");
		}
	}
	if (s->count == 0 && !s->drained_called)
		event_active(s->drained_ev, EV_TIMEOUT, 1);
}

int ws_server_draining(const struct ws_server *s)
{
	return s->draining;
}

size_t ws_server_count(const struct ws_server *s)
{
	return s->count;
}

const struct ws_stats *ws_server_stats(const struct ws_server *s)
{
	return &s->stats;
}

int ws_server_batched(const struct ws_server *s)
{
	return s->batch != NULL;
}
