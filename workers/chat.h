/* chat.h - what the chat's modules share (SPEC section 7).
 *
 * The WebSocket chat is four files behind the entry points in handlers.h
 * (chat_routes, chat_start, chat_drain, chat_stop, chat_publish_message):
 *
 *   chat.c          a socket's events: parse, per-socket queue and rate
 *                   limit, join_room / leave_room / send_message / typing,
 *                   Socket.IO packets, and the chat's lifecycle
 *   chat_rooms.c    room id -> member sockets of this worker, bus
 *                   publish and delivery, frames held during a join
 *   chat_batch.c    group commit of sent messages
 *   chat_upgrade.c  GET /ws and /socket.io/: the token, the upgrade, and
 *                   Socket.IO's CONNECT authentication
 *
 * with the pure Socket.IO codec in sio.c and the message's wire format in
 * message.c. Everything runs on the worker's loop.
 */
#ifndef RESIL_CHAT_H
#define RESIL_CHAT_H

#include "store.h"

#include <bson/bson.h>
#include <stddef.h>
#include <stdint.h>
#include <yajl/yajl_gen.h>

struct event_base;
struct json_value;
struct resil_config;
struct ws_conn;
struct ws_frame;
struct ws_limits;
struct ws_server;

#define CHAT_JSON_DEPTH 16
#define CHAT_OP_TIMEOUT_MS 10000 /* a store call made for a socket */

struct chat_member_ref; /* chat_rooms.c */
struct chat_pending;    /* chat.c */

/* Per-socket state: the application area of its ws_conn. */
struct chat_sock {
	bson_oid_t user;
	char user_hex[25];
	char username[32];
	uint64_t tag;                  /* unique per socket across workers: pid << 32 | serial */
	struct chat_member_ref *rooms; /* the rooms joined (chat_rooms.c) */
	uint16_t nrooms, caprooms;
	double tokens, abuse;
	uint64_t bucket_ms;
	int limited; /* an error was sent for the current run of refusals */
	struct chat_pending *ph, *pt;
	uint32_t npending;
	int busy;            /* a store call for this socket is in flight */
	uint8_t sio;         /* Socket.IO v4 client on /socket.io/ (Engine.IO framing) */
	uint8_t sio_ns;      /* its "/" namespace is connected */
	uint8_t authed;      /* user known (always, except a Socket.IO socket before CONNECT) */
	uint8_t user_room;   /* in its user's personal room (chat_rooms.c) */
	uint8_t ack_pending; /* the Socket.IO event being handled asked for an ack */
	uint64_t ack_id;
};

/* What the upgrade knows of a new socket (ws_upgrade's init argument). */
struct chat_peer {
	bson_oid_t user;
	char username[32];
	int sio;
	int authed;
};

/* ---- chat.c */

/* Set up the chat on base: the socket server with lim, and the bus on
 * bus_fd (taken: closed by the bus, also on failure; -1: a loopback bus
 * for a lone process). 0 or -1 (everything undone). chat_start is this
 * with the worker's base, limits and bus. */
int chat_init(struct event_base *base, const struct resil_config *cfg, const struct ws_limits *lim, int bus_fd);
/* The socket server, or NULL when the chat is down. */
struct ws_server *chat_server(void);
/* 1 when no new socket may be accepted (the chat is down or draining). */
int chat_refusing(void);
/* ws_upgrade's init for a chat socket; arg is a struct chat_peer. */
void chat_sock_init(struct ws_conn *c, void *arg);
void chat_sock_set_user(struct chat_sock *cs, const bson_oid_t *id, const char *username);
/* The socket's store call (or group commit) is over: handle the events
 * that queued behind it and drop the reference taken for the call. */
void chat_sock_resume(struct ws_conn *c);
/* The Socket.IO CONNECT succeeded / failed (CONNECT_ERROR, then close). */
void chat_sio_connected(struct ws_conn *c);
void chat_sio_refuse(struct ws_conn *c, const char *message, uint16_t code);

/* Events are written to a shared generator as {"event":NAME,"data":...}:
 * chat_gen_begin positions it at data's value; write exactly one value,
 * then chat_gen_end (the text, valid until the next chat_gen_begin) or
 * chat_send_gen (to one socket, in its protocol's framing). */
yajl_gen chat_gen_begin(const char *event);
int chat_gen_end(const char **out, size_t *len);
void chat_send_gen(struct ws_conn *c);
void chat_send_error(struct ws_conn *c, const char *message);
/* The event being handled failed: its acknowledgement says so
 * ({"ok":false,"error":MESSAGE}) when it asked for one, else an `error`
 * event. */
void chat_fail(struct ws_conn *c, const char *message);
/* Answer the acknowledgement of the event being handled, if it asked for
 * one: chat_ack_begin gives the generator inside {"ok":true, (NULL: no ack
 * is pending); write key/value pairs, then chat_ack_end sends it. An event
 * finished without an answer is acknowledged with {"ok":true} alone. */
yajl_gen chat_ack_begin(struct ws_conn *c);
void chat_ack_end(struct ws_conn *c);
/* send_message's acknowledgement: {"ok":true,"message":MSG}, msg the
 * stored document in its Mongoose shape. */
void chat_ack_message(struct ws_conn *c, const bson_t *msg);
/* An event as generated here, as a Socket.IO EVENT in a new frame (NULL
 * if it is not one, or no memory). */
struct ws_frame *chat_sio_frame(const char *json, size_t len);
/* The `error` event's message for a failed store call. */
const char *chat_store_message(enum store_err err);

/* A parsed client event (pure: no state touched). */
enum chat_kind { EV_JOIN = 1, EV_LEAVE, EV_SEND, EV_TYPING_START, EV_TYPING_STOP };
struct chat_cmd {
	int kind;
	bson_oid_t room;
	int room_ok;         /* roomId present and a valid id */
	const char *content; /* EV_SEND, into doc */
	size_t content_len;
	const char *error; /* message of the `error` event, when parsing failed */
	struct json_value *doc;
};
/* Parse a /ws text message {"event","data"} / a Socket.IO EVENT payload
 * ["name", data] into cmd. 0, or -1 with cmd->error set; free cmd with
 * chat_cmd_free() either way. */
int chat_parse(const char *msg, size_t len, struct chat_cmd *cmd);
/* Socket.IO only: join_room, leave_room and typing_* also take a bare room
 * id (["join_room","<24 hex>"]), as the Node app's clients send it. */
int chat_parse_sio(const char *msg, size_t len, struct chat_cmd *cmd);
void chat_cmd_free(struct chat_cmd *cmd);

/* ---- chat_rooms.c: addressing users (their personal rooms) */

/* Send an event (JSON text as chat_gen_end gives it) to every Socket.IO
 * socket of user, in every worker. 0, or -1 (the chat is down, or the bus
 * full: logged). */
int chat_notify_user(const bson_oid_t *user, const char *json, size_t len);
/* added_to_room {roomId, roomName} to user, from room (a rooms document).
 * For a route's done() on the loop (POST /api/rooms/:id/members). */
int chat_notify_added_to_room(const bson_oid_t *user, const bson_t *room);

#endif
