/* child.c - a new worker process, from fork() to worker_run() (see
 * child.h). It runs once per fork in the child only, so it touches nothing
 * of the supervisor's but the copies fork gave it, and it keeps the
 * supervisor's shared descriptors (epoll instance, signal pipe) intact.
 */
#include "autoconfig.h"

#include "child.h"

#include "log.h"
#include "proctitle.h"
#include "ratelimit.h"
#include "scoreboard.h"
#include "worker.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
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

/* Descriptors handed to an exec'd worker, in CHILD_ENV's order. */
enum { H_LISTEN, H_READY, H_BUS, H_LOG, H_SB, H_RL, H_CFG, H_COUNT };

static void set_cloexec(int fd, int on)
{
	int fl = fcntl(fd, F_GETFD);
	if (fl >= 0)
		fcntl(fd, F_SETFD, on ? fl | FD_CLOEXEC : fl & ~FD_CLOEXEC);
}

/* The configuration for the exec'd worker, in a memfd at offset 0: -1 on
 * failure. It holds the JWT secret: it lives only in this memory file,
 * readable through this descriptor alone, never on disk or in argv/env. */
static int config_memfd(const struct resil_config *cfg)
{
	int fd = memfd_create("resil-config", MFD_CLOEXEC);
	if (fd < 0)
		return -1;
	int wfd = dup(fd);
	FILE *f = wfd >= 0 ? fdopen(wfd, "w") : NULL;
	if (!f) {
		if (wfd >= 0)
			close(wfd);
		close(fd);
		return -1;
	}
	int rc = config_export(cfg, f);
	if (fclose(f) != 0 || rc < 0 || lseek(fd, 0, SEEK_SET) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* exec the binary on disk as this worker; returns only on failure. */
static void exec_worker(const struct worker_opts *wo, const struct child_exec *ex)
{
	int cfd = config_memfd(wo->cfg);
	if (cfd < 0) {
		log_error(NULL, "cannot hand the configuration to the worker binary", LF_STR("error", strerror(errno)));
		return;
	}
	int h[H_COUNT] = {
	    [H_LISTEN] = wo->listen_fd, [H_READY] = wo->ready_fd, [H_BUS] = wo->bus_fd, [H_LOG] = log_file_fd(),
	    [H_SB] = ex->sb_fd,         [H_RL] = ex->rl_fd,       [H_CFG] = cfd};
	for (int i = 0; i < H_COUNT; i++)
		if (h[i] > 2)
			set_cloexec(h[i], 0);
	char env[256];
	snprintf(env, sizeof(env), "1:%d:%u:%d:%d:%d:%d:%d:%d:%d:%d:%d", wo->id, wo->generation, wo->sb_index,
	         h[H_LISTEN], h[H_READY], h[H_BUS], h[H_LOG], h[H_SB], h[H_RL], h[H_CFG], (int)getppid());
	char *argv[] = {(char *)ex->exe, NULL};
	if (setenv(CHILD_ENV, env, 1) == 0) {
		log_flush();
		execv(ex->exe, argv);
	}
	int e = errno;
	unsetenv(CHILD_ENV);
	close(cfd);
	log_error(NULL, "cannot run the worker binary: this worker runs the supervisor's image",
	          LF_STR("binary", ex->exe), LF_STR("error", strerror(e)));
}

void child_run(struct event_base *sup_base, const int *signals, size_t nsignals, const struct worker_opts *wo,
               const struct child_exec *ex)
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
	int keep[6] = {wo->listen_fd, wo->ready_fd, log_file_fd(), wo->bus_fd, ex->sb_fd, ex->rl_fd};
	child_close_fds_except(keep, 6);
	if (child_drop_privileges(wo->cfg) < 0) {
		log_flush();
		_exit(WORKER_EXIT_FATAL);
	}
	/* After the credentials changed (which clears it) and kept by exec. */
	prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
	if (ex->exe && ex->exe[0])
		exec_worker(wo, ex);
	char title[64];
	snprintf(title, sizeof(title), "resild: worker %d (gen %u)", wo->id, wo->generation);
	proctitle_set(title);
	int rc = worker_run(wo);
	log_flush();
	_exit(rc);
}

int child_exec_main(void)
{
	const char *v = getenv(CHILD_ENV);
	int version = 0, id = -1, idx = -1, h[H_COUNT], ppid = 0;
	unsigned gen = 0;
	if (!v ||
	    sscanf(v, "%d:%d:%u:%d:%d:%d:%d:%d:%d:%d:%d:%d", &version, &id, &gen, &idx, &h[H_LISTEN], &h[H_READY],
	           &h[H_BUS], &h[H_LOG], &h[H_SB], &h[H_RL], &h[H_CFG], &ppid) != 12 ||
	    version != 1) {
		fprintf(stderr, "resild: %s is not a worker hand-off this binary understands\n", CHILD_ENV);
		return WORKER_EXIT_FATAL;
	}
	proctitle_unsetenv(CHILD_ENV);
	for (int i = 0; i < H_COUNT; i++)
		if (h[i] > 2)
			set_cloexec(h[i], 1);
	log_set_worker(id);
	/* The supervisor may have died between fork and here. */
	prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
	if (getppid() != ppid)
		return WORKER_EXIT_OK;
	static struct resil_config cfg;
	char err[CONFIG_ERR_MAX];
	FILE *f = fdopen(h[H_CFG], "r");
	int rc = f ? config_import(&cfg, f, err, sizeof(err)) : -1;
	if (f)
		fclose(f);
	else
		close(h[H_CFG]);
	if (rc < 0) {
		if (!f)
			snprintf(err, sizeof(err), "cannot read the configuration: %s", strerror(errno));
		log_error(NULL, err);
		return WORKER_EXIT_FATAL;
	}
	log_init(cfg.log_level, cfg.log_format == CONFIG_LOG_JSON, NULL, id);
	if (h[H_LOG] >= 0 && log_adopt_file(cfg.log_file, h[H_LOG]) < 0)
		close(h[H_LOG]);
	struct scoreboard *sb = NULL;
	struct ratelimit *rl = NULL;
	if (h[H_SB] >= 0 && !(sb = sb_attach(h[H_SB]))) {
		log_error(NULL,
		          "this resild binary cannot join the running supervisor (its scoreboard has another layout): "
		          "replace the supervisor with resilctl upgrade",
		          LF_STR("error", strerror(errno)));
		return WORKER_EXIT_FATAL;
	}
	if (h[H_RL] >= 0 && !(rl = rl_attach(h[H_RL]))) {
		log_error(NULL,
		          "this resild binary cannot join the running supervisor (its rate-limit table has another "
		          "layout): replace the supervisor with resilctl upgrade",
		          LF_STR("error", strerror(errno)));
		sb_destroy(sb);
		return WORKER_EXIT_FATAL;
	}
	if (h[H_SB] >= 0)
		close(h[H_SB]);
	if (h[H_RL] >= 0)
		close(h[H_RL]);
	char title[64];
	snprintf(title, sizeof(title), "resild: worker %d (gen %u)", id, gen);
	proctitle_set(title);
	struct worker_opts wo = {
	    .cfg = &cfg,
	    .listen_fd = h[H_LISTEN],
	    .id = id,
	    .generation = gen,
	    .sb = sb,
	    .sb_index = sb ? idx : -1,
	    .rl = rl,
	    .ready_fd = h[H_READY],
	    .bus_fd = h[H_BUS],
	};
	rc = worker_run(&wo);
	log_flush();
	rl_destroy(rl);
	sb_destroy(sb);
	sodium_memzero(&cfg, sizeof(cfg));
	return rc;
}
