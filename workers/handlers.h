/* handlers.h - route groups of the reference API. Each registers its
 * routes on the app and returns 0 or -1. */
#ifndef RESIL_HANDLERS_H
#define RESIL_HANDLERS_H

#include "app.h"
#include "validate.h"

#include <bson/bson.h>

int health_routes(struct app *app);
/* POST /api/auth/register and /api/auth/login (auth_routes.c). */
int auth_routes(struct app *app);
/* /api/users (users.c); users_gen writes the one wire format of a user
 * (a yajl_gen value; NULL doc: null). */
int users_routes(struct app *app);
void users_gen(void *yajl_gen, const bson_t *user);
/* The stored password hash: `password` as the Node app's Mongoose model
 * keeps it (bcrypt or, once resil re-hashed it, argon2id), else
 * `passwordHash` of databases written by resil before 0.2. NULL: none. */
const char *users_password_hash(const bson_t *user);
/* A new user's fields, shared by POST /api/auth/register (auth_routes.c)
 * and the operator's `resilctl user create` (usercreate.c):
 * users_new_rules checks username, email and password (SPEC section 6);
 * USERS_ROLES lists the roles for V_ENUM; PW_MAX_BYTES bounds a password
 * (128 code points of UTF-8); users_new_doc builds the document to insert
 * (email already lower-cased, hash from auth_password_hash), NULL when out
 * of memory. */
#define USERS_ROLES "user", "clinician", "admin"
#define PW_MAX_BYTES 512
extern const struct vrule users_new_rules[];
bson_t *users_new_doc(const char *username, const char *email, const char *hash, const char *role);
/* Copy s[0..len) into out (outlen bytes) with ASCII letters lower-cased, as
 * e-mails are stored; -1 (out untouched) when it does not fit. */
int users_email_lower(const char *s, size_t len, char *out, size_t outlen);
/* Report another circuit breaker (name, state 0 closed / 1 open / 2 half-open) in /health. */
void health_add_circuit(const char *name, int (*state)(void));
/* Write this process's breaker states (the store's and the added ones)
 * into its scoreboard entry e, for /health and resilctl to merge. */
struct sb_entry;
void health_publish_circuits(struct sb_entry *e);
/* Rooms and their message history (rooms.c); rooms_has_member: whether a
 * stored room document lists user in members (REST and the chat). */
int rooms_routes(struct app *app);
int rooms_has_member(const bson_t *room, const bson_oid_t *user);
/* /api/posts with the per-worker list cache (posts.c); posts_stop frees the cache. */
int posts_routes(struct app *app);
void posts_stop(void);
/* /api/patients and the external-API sync (patients.c). patients_stop
 * answers syncs still waiting on the external API (503) and frees the
 * client; patients_breaker_state is the "external-api" breaker's state. */
int patients_routes(struct app *app);
void patients_stop(void);
int patients_breaker_state(void);
/* WebSocket chat on GET /ws (chat.c). chat_start (after the store is open)
 * takes w->bus_fd; chat_drain closes every socket with 1001 and calls
 * done(ud) once none is left; chat_stop (after the store is closed) frees
 * everything. */
struct worker;
int chat_routes(struct app *app);
int chat_start(struct worker *w);
void chat_drain(void (*done)(void *ud), void *ud);
void chat_stop(void);
/* Broadcast a stored message document (messages collection, as returned
 * by the store) as new_message to every member socket in every worker, as
 * the WebSocket send_message does; for other writers such as POST
 * /api/rooms/:id/messages. 0, or -1 when the chat is down or the bus full. */
int chat_publish_message(const bson_t *msg);
/* GET /metrics, readable from cfg->metrics_allow peers (metrics_route.c);
 * metrics_publish_gauges samples this process's gauges (job queue) into
 * its scoreboard block (the heartbeat calls it each second). */
struct resil_config;
int metrics_routes(struct app *app, const struct resil_config *cfg);
void metrics_publish_gauges(void);
/* Test-only routes; mounted only with RESIL_TEST_HOOKS=1 outside production. */
struct resil_config;
int testhooks_routes(struct app *app, const struct resil_config *cfg);

#endif
