/* child.h - the worker side of the supervisor's fork: everything a new
 * worker process does between fork() and worker_run() (child.c).
 */
#ifndef RESIL_CHILD_H
#define RESIL_CHILD_H

#include <stddef.h>

struct event_base;
struct resil_config;
struct worker_opts;

/* Close every descriptor above 2 but the nkeep (at most 8) in keep. */
void child_close_fds_except(const int *keep, int nkeep);
/* Become RESIL_USER / RESIL_GROUP when set. 0, or -1 (logged). */
int child_drop_privileges(const struct resil_config *cfg);

/* In the child right after fork(): reset the supervisor's signals (the
 * nsignals in signals) to their defaults, leave and free the supervisor's
 * loop sup_base, ask for SIGTERM when the supervisor dies, close every
 * descriptor but the listening socket, wo's ready and bus ends and the log
 * file, drop privileges (RESIL_USER / RESIL_GROUP), set the title
 * "resild: worker N (gen G)", then run the worker. Never returns: exits
 * with worker_run()'s status, or WORKER_EXIT_FATAL when privileges cannot
 * be dropped. */
void child_run(struct event_base *sup_base, const int *signals, size_t nsignals, const struct worker_opts *wo)
    __attribute__((noreturn));

#endif
