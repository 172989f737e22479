/* child.c - a new worker process, from fork() to worker_run() (see
 * child.h). It runs once per fork in the child only, so it touches nothing
 * of the supervisor's but the copies fork gave it, and it keeps the
 * supervisor's shared descriptors (epoll instance, signal pipe) intact.
 */
#include "autoconfig.h"

#include "child.h"

#include "log.h"
#include "proctitle.h"
#include "worker.h"

#include <errno.h>
#include <event2/event.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

void child_close_fds_except(const int *keep, int nkeep)
{
	/* keep is small; close every other descriptor above 2. */
	int sorted[8];
	int n = 0;
	for (int i = 0; i < nkeep && n < 8; i++)
		if (keep[i] > 2)
			sorted[n++] = keep[i];
	for (int i = 0; i < n; i++)
		for (int j = i + 1; j < n; j++)
			if (sorted[j] < sorted[i]) {
				int t = sorted[i];
				sorted[i] = sorted[j];
				sorted[j] = t;
			}
	unsigned lo = 3;
	for (int i = 0; i < n; i++) {
		if ((unsigned)sorted[i] > lo)
			syscall(SYS_close_range, lo, (unsigned)sorted[i] - 1, 0);
		lo = (unsigned)sorted[i] + 1;
	}
	syscall(SYS_close_range, lo, ~0u, 0);
}

int child_drop_privileges(const struct resil_config *cfg)
{
	if (!cfg->user[0] && !cfg->group[0])
		return 0;
	gid_t gid = getgid();
	uid_t uid = getuid();
	struct passwd *pw = NULL;
	if (cfg->user[0]) {
		pw = getpwnam(cfg->user);
		if (!pw) {
			log_error(NULL, "user: no such user", LF_STR("user", cfg->user));
			return -1;
		}
		uid = pw->pw_uid;
		gid = pw->pw_gid;
	}
	if (cfg->group[0]) {
		struct group *gr = getgrnam(cfg->group);
		if (!gr) {
			log_error(NULL, "group: no such group", LF_STR("group", cfg->group));
			return -1;
		}
		gid = gr->gr_gid;
	}
	if (setgid(gid) < 0 || (pw && initgroups(pw->pw_name, gid) < 0) ||
	    (!pw && setgroups(0, NULL) < 0 && errno != EPERM) || setuid(uid) < 0) {
		log_error(NULL, "cannot drop privileges", LF_STR("error", strerror(errno)));
		return -1;
	}
	return 0;
}

void child_run(struct event_base *sup_base, const int *signals, size_t nsignals, const struct worker_opts *wo)
{
	/* This process's log lines carry its worker id from the first one on. */
	log_set_worker(wo->id);
	/* Undo the supervisor's signal handling before anything else: the
	 * inherited handlers would write into the supervisor's signal pipe. */
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	for (size_t i = 0; i < nsignals; i++)
		sigaction(signals[i], &sa, NULL);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* Drop the supervisor's loop: while it exists libevent counts it as the
	 * owner of signals, and the worker's own signal events make it print a
	 * non-JSON warning on stderr. event_reinit() first detaches the base
	 * from the epoll instance and signal pipe shared with the supervisor,
	 * so freeing it cannot unregister the supervisor's descriptors. */
	if (event_reinit(sup_base) == 0)
		event_base_free(sup_base);
	prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
	int keep[4] = {wo->listen_fd, wo->ready_fd, log_file_fd(), wo->bus_fd};
	child_close_fds_except(keep, 4);
	if (child_drop_privileges(wo->cfg) < 0) {
		log_flush();
		_exit(WORKER_EXIT_FATAL);
	}
	char title[64];
	snprintf(title, sizeof(title), "resild: worker %d (gen %u)", wo->id, wo->generation);
	proctitle_set(title);
	int rc = worker_run(wo);
	log_flush();
	_exit(rc);
}
