/* sio.h - the Socket.IO v4 / Engine.IO v4 text codec (websocket transport).
 *
 * Pure: bytes in, bytes out. It knows no sockets, rooms, users or store;
 * workers/chat.c decides what a packet means for a chat socket.
 *
 *   struct sio_packet pk;
 *   if (sio_decode(msg, len, &pk) == 0 && pk.type == SIO_EVENT && sio_nsp_default(&pk))
 *           ... pk.data[0..pk.data_len) is the JSON array ["name", args...]
 *
 *   char buf[SIO_CONNECT_MAX];
 *   int n = sio_encode_connect(buf, sizeof(buf), sid);   -> 40{"sid":"..."}
 *
 * Encoders write into the caller's buffer and return the length written
 * (no NUL counted; one is added when it fits), or -1 if it does not fit.
 */
#ifndef RESIL_SIO_H
#define RESIL_SIO_H

#include <stddef.h>
#include <stdint.h>

struct json_value;

enum sio_type {
	SIO_EIO_OPEN,    /* "0{...}" (server to client) */
	SIO_EIO_CLOSE,   /* "1" */
	SIO_EIO_PING,    /* "2" [data] */
	SIO_EIO_PONG,    /* "3" [data] */
	SIO_EIO_UPGRADE, /* "5" */
	SIO_EIO_NOOP,    /* "6" */
	/* Socket.IO packets, carried in an Engine.IO message ("4"): */
	SIO_CONNECT,       /* "40" [/nsp,] [auth object] */
	SIO_DISCONNECT,    /* "41" [/nsp,] */
	SIO_EVENT,         /* "42" [/nsp,] [ack id] ["name", args...] */
	SIO_ACK,           /* "43" [/nsp,] ack id [args...] */
	SIO_CONNECT_ERROR, /* "44" [/nsp,] {"message": ...} */
	SIO_BINARY_EVENT,  /* "45" attachments "-" ... */
	SIO_BINARY_ACK,    /* "46" attachments "-" ... */
};

/* A decoded packet; the pointers point into the decoded text. */
struct sio_packet {
	enum sio_type type;
	const char *nsp; /* namespace, "/" when the packet names none */
	size_t nsp_len;
	int has_ack; /* an ack id was given (SIO_EVENT, SIO_ACK, binary ones) */
	uint64_t ack;
	uint32_t attachments; /* binary packets */
	const char *data;     /* the rest: JSON text for Socket.IO packets, the
	                       * ping/pong payload for Engine.IO ones; may be empty */
	size_t data_len;
};

/* Decode one text message. 0, or -1 when it is not a well-formed packet
 * (empty, unknown type, "4" without a Socket.IO type, bytes after "1",
 * "5" or "6", an ack id of 2^63 or more, SIO_ACK without an id, a binary
 * packet without "<n>-"). A namespace runs to the first ',' (or to the
 * end: then there is no data). */
int sio_decode(const char *msg, size_t len, struct sio_packet *out);
/* 1 if the packet is for the default namespace "/". */
int sio_nsp_default(const struct sio_packet *pk);

/* The payload of an EVENT: a JSON array whose first item is the event
 * name. On success *doc owns the parsed array (json_free), *name is its
 * first item and *arg its second (NULL when absent). */
enum sio_event_status { SIO_EVENT_OK = 0, SIO_EVENT_BAD_JSON, SIO_EVENT_NO_NAME };
enum sio_event_status sio_event_decode(const char *data, size_t len, int max_depth, struct json_value **doc,
                                       const struct json_value **name, const struct json_value **arg);

/* Engine.IO OPEN: 0{"sid":SID,"upgrades":[],"pingInterval":..,"pingTimeout":..,"maxPayload":..}.
 * sid is 1-64 characters of [0-9A-Za-z_-]; -1 otherwise. */
#define SIO_OPEN_MAX 192
int sio_encode_open(char *buf, size_t cap, const char *sid, uint32_t ping_interval_ms, uint32_t ping_timeout_ms,
                    uint32_t max_payload);
/* CONNECT answer of the default namespace: 40{"sid":SID} (same sid rules). */
#define SIO_CONNECT_MAX 88
int sio_encode_connect(char *buf, size_t cap, const char *sid);
/* CONNECT_ERROR: 44{"message":MESSAGE} for the default namespace, else
 * 44NSP,{"message":MESSAGE}. The message is escaped as a JSON string; a
 * namespace longer than SIO_NSP_ECHO_MAX bytes is cut (on a UTF-8
 * character boundary), and must contain no ','. */
#define SIO_NSP_ECHO_MAX 64
int sio_encode_connect_error(char *buf, size_t cap, const char *nsp, size_t nsp_len, const char *message);
/* EVENT: 42[NAME,DATA] from two JSON texts: name_json a JSON string (with
 * its quotes), data_json any JSON value. Needs SIO_EVENT_OVERHEAD bytes
 * beyond the two (a NUL is not added). */
#define SIO_EVENT_OVERHEAD 5
int sio_encode_event(char *buf, size_t cap, const char *name_json, size_t name_len, const char *data_json,
                     size_t data_len);
/* ACK: 43ID[DATA] answering the EVENT that carried ack id (below 2^63),
 * with data_json one JSON value (the callback's single argument). Needs
 * SIO_ACK_OVERHEAD bytes beyond data_len (a NUL is added when it fits). */
#define SIO_ACK_OVERHEAD 23 /* "43", up to 19 digits, "[" and "]" */
int sio_encode_ack(char *buf, size_t cap, uint64_t id, const char *data_json, size_t data_len);
/* A session id from 64 bits: 16 lower-case hex digits and a NUL. */
void sio_sid_format(uint64_t v, char sid[17]);

#endif
