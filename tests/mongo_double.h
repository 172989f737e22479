/* mongo_double.h - start, steer and stop the MongoDB test double from a test.
 *
 * tests/mongo_double is a standalone MongoDB wire-protocol server for tests
 * (see mongo_double.c). These helpers (tests/mongo_double_client.c) fork+exec
 * it on an ephemeral 127.0.0.1 port with a private control socket, so a test
 * can point libmongoc at md.uri and inject faults with mdouble_cmd():
 *
 *   delay MS | drop | drop-next [N] | drop-reply [N] | error CODE [N] |
 *   refuse on|off | stop | start | reset | clear | stats | ping
 *
 * "error", "drop-next" and "drop-reply" count only data commands (everything
 * except hello/isMaster and endSessions), so driver monitoring never consumes
 * them. drop-next closes the connection before the command runs, drop-reply
 * after it took effect (a retryable write then replays). These helpers start
 * a standalone; the binary's --replset NAME makes it a replica-set primary.
 * The binary is found through $MONGO_DOUBLE, ./tests/mongo_double, next to
 * the running test executable (or its parent when run from .libs/), or
 * ./mongo_double. The double dies with the thread that started it
 * (PR_SET_PDEATHSIG), so start it from the test's main thread.
 */
#ifndef RESIL_TESTS_MONGO_DOUBLE_H
#define RESIL_TESTS_MONGO_DOUBLE_H

#include <stddef.h>
#include <sys/types.h>

struct mdouble {
	pid_t pid;         /* the double's process, 0 when not running */
	int port;          /* its MongoDB port on 127.0.0.1 */
	char uri[128];     /* mongodb://127.0.0.1:PORT/resil_test?serverSelectionTimeoutMS=1000 */
	char dir[64];      /* temp directory for the port file, empty once started */
	char control[128]; /* control socket, "@name" in the abstract namespace */
};

/* Starts a double (default --max-lifetime 600 s) and waits until it listens.
 * Returns 0 and fills md, or -1 with nothing left running. */
int mdouble_start(struct mdouble *md);

/* Like mdouble_start with --max-lifetime seconds (> 0). */
int mdouble_start_lifetime(struct mdouble *md, int max_lifetime_s);

/* Sends one control line and waits (up to 5 s) for its reply.
 * Returns 0 if the double answered "ok...", -1 otherwise. */
int mdouble_cmd(struct mdouble *md, const char *line);

/* Like mdouble_cmd, also copying the reply line (without newline) to out. */
int mdouble_query(struct mdouble *md, const char *line, char *out, size_t outlen);

/* Reads counter NAME (e.g. "getMore", "accepted") from the "stats" reply;
 * returns its value, 0 if absent, or -1 if the double did not answer. */
long long mdouble_stat(struct mdouble *md, const char *name);

/* Terminates the double (SIGTERM, then SIGKILL after 5 s) and reaps it.
 * Safe to call twice or after a failed start. */
void mdouble_stop(struct mdouble *md);

#endif
