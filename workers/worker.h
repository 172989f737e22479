/* worker.h - one worker process: a libevent loop serving the reference
 * API on an inherited listening socket. Everything that is not fork-safe
 * (store handles, threads, random state) is created inside worker_run().
 */
#ifndef RESIL_WORKER_H
#define RESIL_WORKER_H

#include "config.h"

/* Exit statuses a worker reports to the supervisor. */
#define WORKER_EXIT_OK 0
#define WORKER_EXIT_FATAL 78 /* EX_CONFIG: cannot start; do not respawn */

struct scoreboard;
struct ratelimit;

struct worker_opts {
	const struct resil_config *cfg;
	int listen_fd;
	int id; /* slot number, 0-based */
	unsigned generation;
	struct scoreboard *sb; /* NULL when running without a supervisor */
	int sb_index;          /* this process's scoreboard entry */
	struct ratelimit *rl;  /* shared rate-limit table (NULL: no limiting) */
	int ready_fd;          /* write one byte when serving; -1: none */
	int bus_fd;            /* worker end of the broadcast bus (src/bus.h); <= 2: none */
};

/* Run until drained (SIGTERM) or stopped (SIGQUIT); returns the exit
 * status for the process. */
int worker_run(const struct worker_opts *opts);

#endif
