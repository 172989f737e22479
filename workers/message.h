/* message.h - the one wire format of a chat message.
 *
 * The WebSocket chat's new_message and recent_messages events (SPEC
 * section 7) and the REST history GET /api/rooms/:id/messages (section 6)
 * send the same object, written here:
 *
 *   {"id", "roomId", "content", "sender": {"id", "username"}, "createdAt"}
 *
 * from a stored messages document {_id, room, sender, senderName, content,
 * createdAt}. Only these fields are written, whatever else the document
 * holds.
 */
#ifndef RESIL_MESSAGE_H
#define RESIL_MESSAGE_H

#include <bson/bson.h>
#include <yajl/yajl_gen.h>

/* Append msg as one JSON object to g (at a value position: an array item,
 * a map value, or the top level). Ids are 24-hex strings, createdAt is ISO
 * 8601 UTC; a field that is missing or of another type is written as null,
 * so the object always has the same keys. Never fails on a document: yajl's
 * own state errors are left for the caller's yajl_gen_get_buf to report. */
void message_gen(yajl_gen g, const bson_t *msg);
/* The same object with the Mongoose document's fields beside resil's, for
 * the Node app's Socket.IO clients (SPEC section 7):
 *
 *   {"id", "_id", "roomId", "room", "content",
 *    "sender": {"id", "_id", "username"}, "createdAt", "updatedAt"}
 *
 * updatedAt falls back to createdAt when the document has none. */
void message_gen_mongoose(yajl_gen g, const bson_t *msg);

#endif
