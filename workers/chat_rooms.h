/* chat_rooms.h - the chat's room registry and broadcast (chat_rooms.c).
 *
 *   if (chat_rooms_join(cs, &room, 1) == 0) ... room_joined, history ...
 *   chat_rooms_release_hold(cs, &room, history, n);
 *   chat_rooms_publish(&room, &message_id, 0, json, len, NULL, 0);
 */
#ifndef RESIL_CHAT_ROOMS_H
#define RESIL_CHAT_ROOMS_H

#include "chat.h"

#define CHAT_ROOMS_PER_SOCKET 64

/* Open the bus on fd (taken; -1: loopback) and, when bus_uri is set, the
 * cross-host bus (src/rbus.h), through which records then go while it is
 * up. 0 or -1. */
int chat_rooms_open(struct event_base *base, int bus_fd, const char *bus_uri);
/* Close the cross-host bus only (its pending callbacks run now). */
void chat_rooms_close_rbus(void);
/* Close the bus and free the registry (every socket has left). */
void chat_rooms_close(void);
/* Rooms with at least one member socket in this worker. */
uint32_t chat_rooms_count(void);

/* Make cs a member of room (nothing if it is one). hold: until
 * chat_rooms_release_hold, live frames for cs in this room are kept
 * back instead of sent (while its history loads). 0, or -1: no memory, or
 * cs is in CHAT_ROOMS_PER_SOCKET rooms already. */
int chat_rooms_join(struct chat_sock *cs, const bson_oid_t *room, int hold);
/* Make cs (authenticated) a member of its user's personal room, which does
 * not count against CHAT_ROOMS_PER_SOCKET. 0, or -1: no memory. */
int chat_rooms_join_user(struct chat_sock *cs);
/* 1 if cs may join no more chat rooms. */
int chat_rooms_full(const struct chat_sock *cs);
/* 1 if cs joined the chat room (its personal room is not one). */
int chat_rooms_is_member(struct chat_sock *cs, const bson_oid_t *room);
void chat_rooms_leave(struct chat_sock *cs, const bson_oid_t *room);
void chat_rooms_leave_all(struct chat_sock *cs);
/* Send what was held for cs in room, except messages whose _id is among
 * docs (the history just sent), and stop holding. */
void chat_rooms_release_hold(struct chat_sock *cs, const bson_oid_t *room, bson_t **docs, size_t ndocs);

/* Publish an event (JSON text as chat_gen_end gives it) to every member
 * socket of room in every worker, except the socket tagged exclude (0:
 * none). mid: the message it carries, or NULL. sio_json: the event as
 * Socket.IO sockets get it, when it differs (NULL, 0: the same event).
 * 0, or -1 (bus full or too large: logged). */
int chat_rooms_publish(const bson_oid_t *room, const bson_oid_t *mid, uint64_t exclude, const char *json, size_t len,
                       const char *sio_json, size_t sio_len);

/* The new_message record of a stored message document (malloc'd: free
 * it), for an ordered cross-host release (chat_batch.c). 0 or -1. */
int chat_message_record(const bson_t *msg, unsigned char **rec, size_t *len);
/* Send a built record on this host's bus only (the Redis bus is down). */
int chat_publish_local(const unsigned char *rec, size_t len);

#endif
