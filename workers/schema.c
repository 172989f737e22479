/* schema.c - the reference API's collections as the store sees them (see
 * schema.h and the schema section of store.h).
 *
 * SQLite: each collection is a table `id TEXT PRIMARY KEY, doc BLOB` plus
 * one column per field listed in `columns` (copied from the document on
 * every write, so filters and sorts on them use the indexes created by the
 * migrations; UNIQUE columns give DUPLICATE_KEY). rooms.members is an array:
 * its elements are mirrored into room_members, which keeps "rooms I am a
 * member of" an index lookup. MongoDB: `indexes` are created at start.
 */
#include "schema.h"

#define N(a) (unsigned)(sizeof(a) / sizeof((a)[0]))

static const struct store_column users_cols[] = {
    {"createdAt", "created_at"}, {"email", "email"}, {"username", "username"}};
static const struct store_column posts_cols[] = {
    {"createdAt", "created_at"}, {"category", "category"}, {"author", "author"}};
static const struct store_column patients_cols[] = {{"createdAt", "created_at"}, {"status", "status"}};
static const struct store_column rooms_cols[] = {{"createdAt", "created_at"}, {"owner", "owner"}};
static const struct store_column messages_cols[] = {{"createdAt", "created_at"}, {"room", "room"}};

/* Refresh-token sessions (sessions.c): parentHash is unique so that a
 * token can be spent once only. */
static const struct store_column sessions_cols[] = {{"createdAt", "created_at"},
                                                    {"tokenHash", "token_hash"},
                                                    {"parentHash", "parent_hash"},
                                                    {"userId", "user_id"},
                                                    {"family", "family"}};

static const struct store_array_mirror rooms_members = {
    .field = "members", .table = "room_members", .value_column = "member", .id_column = "room_id"};

static const struct store_index users_ix[] = {
    {"email_1", {{"email", 1}}, true},
    {"username_1", {{"username", 1}}, true},
};
static const struct store_index posts_ix[] = {
    {"createdAt_-1", {{"createdAt", -1}}, false},
    {"category_1_createdAt_-1", {{"category", 1}, {"createdAt", -1}}, false},
    {"author_1_createdAt_-1", {{"author", 1}, {"createdAt", -1}}, false},
};
static const struct store_index patients_ix[] = {{"status_1", {{"status", 1}}, false}};
static const struct store_index rooms_ix[] = {{"members_1", {{"members", 1}}, false}};
static const struct store_index messages_ix[] = {{"room_1_createdAt_1", {{"room", 1}, {"createdAt", 1}}, false}};

static const struct store_index sessions_ix[] = {
    {"tokenHash_1", {{"tokenHash", 1}}, true},
    {"parentHash_1", {{"parentHash", 1}}, true},
    {"userId_1", {{"userId", 1}}, false},
    {"family_1", {{"family", 1}}, false},
};

static const struct store_collection collections[COLL_COUNT] = {
    [COLL_USERS] = {"users", users_cols, N(users_cols), NULL, users_ix, N(users_ix)},
    [COLL_POSTS] = {"posts", posts_cols, N(posts_cols), NULL, posts_ix, N(posts_ix)},
    [COLL_PATIENTS] = {"patients", patients_cols, N(patients_cols), NULL, patients_ix, N(patients_ix)},
    [COLL_ROOMS] = {"rooms", rooms_cols, N(rooms_cols), &rooms_members, rooms_ix, N(rooms_ix)},
    [COLL_MESSAGES] = {"messages", messages_cols, N(messages_cols), NULL, messages_ix, N(messages_ix)},
    [COLL_SESSIONS] = {"sessions", sessions_cols, N(sessions_cols), NULL, sessions_ix, N(sessions_ix)},
};

/* Forward-only: step i brings PRAGMA user_version from i to i + 1. Never
 * edit a shipped step (databases in the field are at its version): append. */
static const char *const sqlite_migrations[] = {
    "CREATE TABLE users (id TEXT PRIMARY KEY NOT NULL, doc BLOB NOT NULL, created_at,"
    "  email UNIQUE, username UNIQUE);"
    "CREATE TABLE posts (id TEXT PRIMARY KEY NOT NULL, doc BLOB NOT NULL, created_at, category, author);"
    "CREATE INDEX posts_created ON posts (created_at, id);"
    "CREATE INDEX posts_category ON posts (category, created_at, id);"
    "CREATE INDEX posts_author ON posts (author, created_at, id);"
    "CREATE TABLE patients (id TEXT PRIMARY KEY NOT NULL, doc BLOB NOT NULL, created_at, status);"
    "CREATE INDEX patients_status ON patients (status, created_at, id);"
    "CREATE TABLE rooms (id TEXT PRIMARY KEY NOT NULL, doc BLOB NOT NULL, created_at, owner);"
    "CREATE INDEX rooms_owner ON rooms (owner);"
    "CREATE TABLE room_members (member NOT NULL, room_id TEXT NOT NULL, PRIMARY KEY (member, room_id))"
    "  WITHOUT ROWID;"
    "CREATE INDEX room_members_room ON room_members (room_id);"
    "CREATE TABLE messages (id TEXT PRIMARY KEY NOT NULL, doc BLOB NOT NULL, created_at, room);"
    "CREATE INDEX messages_room ON messages (room, created_at, id);",
    "CREATE TABLE sessions (id TEXT PRIMARY KEY NOT NULL, doc BLOB NOT NULL, created_at,"
    "  token_hash UNIQUE, parent_hash UNIQUE, user_id, family);"
    "CREATE INDEX sessions_user ON sessions (user_id);"
    "CREATE INDEX sessions_family ON sessions (family);",
};

const struct store_schema app_schema = {
    .collections = collections,
    .ncollections = COLL_COUNT,
    .sqlite_migrations = sqlite_migrations,
    .nsqlite_migrations = N(sqlite_migrations),
};
