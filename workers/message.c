/* message.c - a stored chat message as the API's JSON (see message.h).
 *
 * One writer for every place a message leaves the server, so the REST
 * history and the live events can never drift apart. The sender's name is
 * the senderName the message was stored with (a snapshot, as the Node app
 * stored it), so rendering needs no user lookup.
 */
#include "autoconfig.h"

#include "message.h"

#include "api.h"
#include "json.h"
#include "store.h"

static void gen_oid_field(yajl_gen g, const bson_t *msg, const char *field)
{
	bson_oid_t oid;
	char hex[25];
	if (api_doc_oid(msg, field, &oid) < 0) {
		yajl_gen_null(g);
		return;
	}
	store_id_format(&oid, hex);
	yajl_gen_string(g, (const unsigned char *)hex, 24);
}

static void gen_date_field(yajl_gen g, const bson_t *msg, const char *field, const char *fallback)
{
	bson_iter_t it;
	if ((bson_iter_init_find(&it, msg, field) && BSON_ITER_HOLDS_DATE_TIME(&it)) ||
	    (fallback && bson_iter_init_find(&it, msg, fallback) && BSON_ITER_HOLDS_DATE_TIME(&it)))
		api_gen_iso(g, bson_iter_date_time(&it));
	else
		yajl_gen_null(g);
}

/* resil's object; mongoose: with the Mongoose document's fields as well,
 * each beside its resil counterpart. */
static void gen_message(yajl_gen g, const bson_t *msg, int mongoose)
{
	bson_iter_t it;
	const char *s;
	yajl_gen_map_open(g);
	json_gen_cstr(g, "id");
	gen_oid_field(g, msg, "_id");
	if (mongoose) {
		json_gen_cstr(g, "_id");
		gen_oid_field(g, msg, "_id");
	}
	json_gen_cstr(g, "roomId");
	gen_oid_field(g, msg, "room");
	if (mongoose) {
		json_gen_cstr(g, "room");
		gen_oid_field(g, msg, "room");
	}
	json_gen_cstr(g, "content");
	if (bson_iter_init_find(&it, msg, "content") && BSON_ITER_HOLDS_UTF8(&it)) {
		uint32_t len;
		s = bson_iter_utf8(&it, &len);
		yajl_gen_string(g, (const unsigned char *)s, len);
	} else {
		yajl_gen_null(g);
	}
	json_gen_cstr(g, "sender");
	yajl_gen_map_open(g);
	json_gen_cstr(g, "id");
	gen_oid_field(g, msg, "sender");
	if (mongoose) {
		json_gen_cstr(g, "_id");
		gen_oid_field(g, msg, "sender");
	}
	json_gen_cstr(g, "username");
	if ((s = api_doc_str(msg, "senderName")))
		json_gen_cstr(g, s);
	else
		yajl_gen_null(g);
	yajl_gen_map_close(g);
	json_gen_cstr(g, "createdAt");
	gen_date_field(g, msg, "createdAt", NULL);
	if (mongoose) {
		/* A message is never edited: a document without updatedAt was
		 * last updated when it was created. */
		json_gen_cstr(g, "updatedAt");
		gen_date_field(g, msg, "updatedAt", "createdAt");
	}
	yajl_gen_map_close(g);
}

void message_gen(yajl_gen g, const bson_t *msg)
{
	gen_message(g, msg, 0);
}

void message_gen_mongoose(yajl_gen g, const bson_t *msg)
{
	gen_message(g, msg, 1);
}
