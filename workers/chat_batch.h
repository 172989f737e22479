/* chat_batch.h - group commit of the chat's messages (chat_batch.c).
 *
 *   if (chat_batch_add(c, doc) < 0) ... "server busy, try again" ...
 */
#ifndef RESIL_CHAT_BATCH_H
#define RESIL_CHAT_BATCH_H

#include "chat.h"

#define CHAT_BATCH_MAX 1024 /* messages waiting for the next group commit (as many as */
                            /* the store takes in flight: beyond, "server busy") */

/* Store doc (a messages document, taken on success) from the socket c in
 * the next batch, then publish it as new_message. The socket is busy and
 * referenced until then (chat_sock_resume). 0, or -1 when the queue is
 * full (doc not taken). */
int chat_batch_add(struct ws_conn *c, bson_t *doc);
/* 1 if chat_batch_add would refuse now. */
int chat_batch_full(void);

#endif
