/* child.h - the worker side of the supervisor's fork: everything a new
 * worker process does between fork() and worker_run() (child.c).
 *
 * A worker runs the resild binary on disk, not the supervisor's image: the
 * forked child execs it (so a reload serves a rebuilt binary, like
 * `pm2 reload`), handing over its descriptors - the listening socket, the
 * ready pipe, the bus end, the log file, the scoreboard and rate-limit
 * memfds and a memfd with the effective configuration - and their numbers
 * in CHILD_ENV. resild's main() sees CHILD_ENV and calls
 * child_exec_main() instead of starting a supervisor.
 */
#ifndef RESIL_CHILD_H
#define RESIL_CHILD_H

#include <stddef.h>

struct event_base;
struct resil_config;
struct worker_opts;

#define CHILD_ENV "RESIL_WORKER_HANDOFF"

/* What the exec needs beyond the worker's options. */
struct child_exec {
	const char *exe; /* the binary on disk; NULL or "": run in this image */
	int sb_fd;       /* scoreboard memfd (-1: none) */
	int rl_fd;       /* rate-limit memfd (-1: none) */
};

/* Close every descriptor above 2 but the nkeep (at most 8) in keep. */
void child_close_fds_except(const int *keep, int nkeep);
/* Become RESIL_USER / RESIL_GROUP when set. 0, or -1 (logged). */
int child_drop_privileges(const struct resil_config *cfg);

/* In the child right after fork(): reset the supervisor's signals (the
 * nsignals in signals) to their defaults, leave and free the supervisor's
 * loop sup_base, ask for SIGTERM when the supervisor dies, close every
 * descriptor but the ones the worker keeps, drop privileges (RESIL_USER /
 * RESIL_GROUP), then exec ex->exe as a worker. Should the exec fail, the
 * worker runs in this image, with an error logged. Never returns: exits
 * with worker_run()'s status, or WORKER_EXIT_FATAL when privileges cannot
 * be dropped. */
void child_run(struct event_base *sup_base, const int *signals, size_t nsignals, const struct worker_opts *wo,
               const struct child_exec *ex) __attribute__((noreturn));

/* main() of an exec'd worker (CHILD_ENV is set): take the handed-over
 * descriptors, read the configuration, join the scoreboard, set the
 * title and run the worker. Returns the process's exit status. */
int child_exec_main(void);

#endif
