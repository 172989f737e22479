/* schema.h - the reference API's collections, declared for the store.
 *
 * src/store knows no application: this file names the collections the
 * handlers use (their ids index app_schema.collections), and schema.c
 * declares for each one its SQLite table layout and migrations, its
 * MongoDB indexes and its unique keys. api_open_store() registers
 * app_schema with store_register_schema() before store_open().
 *
 * Adding a model: append an id to enum app_coll (before COLL_COUNT), a
 * store_collection entry in schema.c at the same index, and - for SQLite -
 * a new migration step that creates its table (never edit a shipped step).
 */
#ifndef RESIL_SCHEMA_H
#define RESIL_SCHEMA_H

#include "store.h"

enum app_coll { COLL_USERS = 0, COLL_POSTS, COLL_PATIENTS, COLL_ROOMS, COLL_MESSAGES, COLL_SESSIONS, COLL_COUNT };

/* The reference API's schema (collections in enum app_coll order). */
extern const struct store_schema app_schema;

#endif
