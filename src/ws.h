/* ws.h - RFC 6455 WebSocket connections for a worker's event loop.
 *
 * The upgrade is validated here (ws_check_upgrade) and the socket taken
 * over from the HTTP core (ws_upgrade). Incoming frames are parsed by wslay
 * (fragmentation, control frames, masking, close handshake, UTF-8 of text
 * messages, 64 KiB message limit); outgoing data frames bypass wslay's
 * copying queue: a frame is built once (struct ws_frame, reference
 * counted) and the same bytes are queued to every socket that receives it,
 * which is what makes a room broadcast cheap. wslay's own control frames
 * (pong, close) are written into the same ordered queue.
 *
 * Every queue is bounded: a socket whose unsent backlog already exceeds
 * ws_limits.max_backlog when another frame comes is closed with 1013 (its
 * backlog dropped), so a socket holds at most the bound plus one frame; idle
 * sockets are pinged; silent ones closed; a connection that does not finish
 * its close handshake is dropped after close_timeout_ms. An idle socket
 * keeps no wslay context (it is rebuilt on the next byte), so an idle
 * connection costs a few hundred bytes of user memory.
 *
 * Single-threaded: everything runs on the loop of the server's base.
 */
#ifndef RESIL_WS_H
#define RESIL_WS_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct http_request;
struct ws_server;
struct ws_conn;

#define WS_ACCEPT_LEN 28 /* base64 of a SHA-1 digest */

enum ws_close_code {
	WS_NORMAL = 1000,
	WS_GOING_AWAY = 1001,
	WS_PROTOCOL_ERROR = 1002,
	WS_UNSUPPORTED_DATA = 1003,
	WS_INVALID_PAYLOAD = 1007,
	WS_POLICY_VIOLATION = 1008,
	WS_MESSAGE_TOO_BIG = 1009,
	WS_INTERNAL_ERROR = 1011,
	WS_TRY_AGAIN_LATER = 1013,
};

struct ws_limits {
	uint32_t ping_idle_ms;     /* ping a socket silent this long: 25000 */
	uint32_t idle_timeout_ms;  /* close a socket silent this long: 60000 */
	uint32_t close_timeout_ms; /* finish the close handshake within: 5000 */
	size_t max_message;        /* largest incoming message: 64 KiB (1009 beyond) */
	size_t max_backlog;        /* unsent bytes per socket before 1013: 256 KiB */
	int sndbuf;                /* SO_SNDBUF of each socket, 0 = kernel default: 64 KiB */
	/* Text message sent every ping_idle_ms to sockets that asked for it
	 * with ws_conn_use_text_ping() (Engine.IO's "2"); NULL: none. */
	const char *text_ping;
	/* 1: write each socket with its own sendmsg() even where io_uring
	 * could issue a loop iteration's writes in one call. */
	int no_io_uring;
};

struct ws_handlers {
	/* A complete text message: valid UTF-8, at most max_message bytes. */
	void (*on_text)(struct ws_conn *c, const char *msg, size_t len);
	/* The socket is gone (closed, reset, timed out). Runs once; the
	 * connection's memory stays valid while references remain. */
	void (*on_close)(struct ws_conn *c);
	/* The number of open connections changed (may be NULL). */
	void (*on_count)(size_t open, void *ud);
	void *ud;
};

struct ws_stats {
	uint64_t accepted;
	uint64_t closed_backlog; /* 1013: slow readers */
	uint64_t frames_out;
	uint64_t bytes_out;
	uint64_t batched_writes; /* socket writes issued through io_uring (src/sendbatch.h) */
};

/* A server frame (header and payload) shared by the sockets it is queued on. */
struct ws_frame {
	uint32_t refs;
	uint32_t len;
	unsigned char data[];
};

/* Create the connection set on base. lim NULL: the defaults above; zero
 * fields take their default. NULL on allocation failure. */
struct ws_server *ws_server_new(struct event_base *base, const struct ws_limits *lim, const struct ws_handlers *h);
/* Close every socket now (no handshake) and free. NULL is a no-op. */
void ws_server_free(struct ws_server *s);
/* Start a close with 1001 on every socket; refuse new ones; on_empty(ud)
 * runs (from the loop, once) when the last socket is gone. */
void ws_server_drain(struct ws_server *s, void (*on_empty)(void *ud), void *ud);
int ws_server_draining(const struct ws_server *s);
size_t ws_server_count(const struct ws_server *s);
const struct ws_stats *ws_server_stats(const struct ws_server *s);
/* 1 while writes are batched through io_uring, 0 when each socket gets its
 * own sendmsg() (io_uring off, refused by the kernel, or failed). */
int ws_server_batched(const struct ws_server *s);

/* Validate a GET upgrade request (Upgrade: websocket, Connection: upgrade,
 * Sec-WebSocket-Version: 13, a Sec-WebSocket-Key of 16 base64 bytes) and
 * compute Sec-WebSocket-Accept into accept (NUL-terminated). Returns 0, or
 * the HTTP status to answer (400, or 426 for a wrong version or no
 * upgrade) with a lower-case message in *why. */
int ws_check_upgrade(struct http_request *req, char accept[WS_ACCEPT_LEN + 1], const char **why);
/* Sec-WebSocket-Accept for a key: base64(SHA-1(key GUID)). 0 or -1. */
int ws_accept_key(const char *key, size_t keylen, char accept[WS_ACCEPT_LEN + 1]);

/* Answer 101 and take the socket over from the HTTP core (not from inside
 * the synchronous part of a handler: after an asynchronous step). A new
 * connection with app_size zeroed bytes of application state is created;
 * init(c, arg) runs before any byte from the client is processed, after
 * the request is released: arg must not live in the request's
 * arena (http_alloc) or anything freed with it. Returns
 * 0 (the request is released), or -1 when the upgrade was impossible
 * (client gone, no memory, server draining): the request is then still
 * owned by the caller, who must answer it. */
int ws_upgrade(struct ws_server *s, struct http_request *req, const char *accept, size_t app_size,
               void (*init)(struct ws_conn *c, void *arg), void *arg);

/* Lower level (tests, fuzzing): serve an already connected non-blocking
 * socket fd (taken over: closed by the server, also on failure). Call
 * ws_conn_start() after initialising the application state. */
struct ws_conn *ws_conn_new(struct ws_server *s, int fd, size_t app_size);
/* Begin serving: bytes already read from the socket (leftover) are
 * processed first. 0, or -1 if the connection died (it is then closed). */
int ws_conn_start(struct ws_conn *c, const void *leftover, size_t len);

/* The application area of a connection (app_size bytes, max-aligned). */
void *ws_conn_app(struct ws_conn *c);
struct ws_conn *ws_conn_from_app(void *app);
/* 1 once the connection is closing or closed: nothing more can be sent. */
int ws_conn_closing(const struct ws_conn *c);
/* Keep the connection's memory alive across asynchronous work. */
void ws_conn_ref(struct ws_conn *c);
void ws_conn_unref(struct ws_conn *c);
/* Stop (1) or resume (0) reading the socket: inbound backpressure. */
/* Close this open socket with code unless ws_conn_deadline(c, 0, 0) is
 * called within ms (checked by the sweep, so up to a second late). */
void ws_conn_deadline(struct ws_conn *c, uint32_t ms, uint16_t code);
/* Keep this socket alive with lim.text_ping every ping_idle_ms, whatever
 * the traffic, instead of control pings after silence (the silence limit
 * still applies: the client's answers count as traffic). */
void ws_conn_use_text_ping(struct ws_conn *c);
void ws_conn_pause(struct ws_conn *c, int pause);

/* Build a text frame for payload (copied). refs = 1. NULL on failure. */
struct ws_frame *ws_frame_text(const char *payload, size_t len);
void ws_frame_unref(struct ws_frame *f);
/* Queue f on c (takes its own reference). When the unsent backlog already
 * exceeds the bound the socket is closed with 1013 and -1 returned; -1
 * also when closing. */
int ws_send_frame(struct ws_conn *c, struct ws_frame *f);
/* Convenience: frame payload and queue it. 0 or -1. */
int ws_send_text(struct ws_conn *c, const char *payload, size_t len);
/* Start the close handshake with code and a short reason (<= 123 bytes);
 * queued data is still sent first, except for 1013 which drops it. */
void ws_close(struct ws_conn *c, uint16_t code, const char *reason);

#endif
