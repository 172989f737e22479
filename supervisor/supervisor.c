/* supervisor.c - the process table, restart policy, rolling replacement
 * (reload, restart, memory recycle), scaling, shutdown and systemd
 * notifications of resild (see supervisor.h, SPEC section 3).
 *
 * Everything happens on one libevent loop: signals arrive as events, child
 * exits are reaped on SIGCHLD, a tick every 250 ms checks heartbeats, RSS and
 * CPU. Decisions are logged with worker id, pid and exit status or signal.
 *
 * A process table entry has the same index as its scoreboard entry. A
 * logical slot (worker id 0..N-1) points to its serving process and, while
 * it is being replaced, to the starting one. Replacements are rolling: one
 * slot at a time, the new process must report ready (one byte on a pipe)
 * before the old one is asked to drain, so no connection is refused.
 */
#include "autoconfig.h"

#include "supervisor.h"

#include "ctl_proto.h"
#include "listen.h"
#include "log.h"
#include "proctitle.h"
#include "ratelimit.h"
#include "scoreboard.h"
#include "sdnotify.h"
#include "worker.h"
#include "bus.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <yajl/yajl_gen.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 15000
#define BACKOFF_RESET_UP_MS 30000
#define CRASH_WINDOW_MS 60000
#define CRASH_LIMIT 10 /* more than this many in the window: errored */
#define TICK_MS 250
#define MAX_ROUTES 32

enum proc_state { P_NONE = 0, P_STARTING, P_READY, P_DRAINING };

struct proc {
	int state;
	pid_t pid;
	int slot;
	unsigned generation;
	uint64_t started_ms; /* monotonic */
	int ready_fd;
	struct event *ready_ev;
	int hung_killed;
	uint64_t cpu_prev_ticks;
	uint64_t cpu_prev_ms;
	double cpu_pct;
	uint64_t rss;
};

struct slot {
	int active;  /* id < target */
	int proc;    /* serving process, -1 none */
	int pending; /* replacement starting, -1 none */
	unsigned restarts;
	uint64_t crashes[CRASH_LIMIT + 1]; /* ring of recent crash times */
	int ncrash;
	uint64_t backoff_ms;
	int errored;
	int fatal;
	struct event *restart_ev;
	int restart_scheduled;
};

struct rolling {
	int active;
	int is_reload;
	int slots[SB_MAX_WORKERS];
	int nslots, pos;
	int done[SB_MAX_WORKERS];
	int ndone;
	struct ctl_client *client;
	struct event *timeout_ev;
	int failed;
};

struct route_count {
	char route[SB_ROUTE_LEN];
	unsigned count;
};

struct supervisor {
	struct resil_config *cfg; /* current, owned (heap) */
	int argc;
	char **argv;
	struct event_base *base;
	int listen_fd;
	char listen_desc[600];
	struct scoreboard *sb;
	struct ratelimit *rl; /* shared by all workers: created before any fork */
	struct bus_hub *hub;  /* WebSocket broadcast between workers (bus.h); NULL: none */
	struct proc procs[SB_MAX_ENTRIES];
	struct slot slots[SB_MAX_WORKERS];
	int target;
	unsigned generation;
	struct rolling roll;
	struct route_count routes[MAX_ROUTES];
	int nroutes;
	int stopping;
	int exit_code;
	int ever_ready;
	int notified_ready;
	uint64_t started_ms;
	struct event *tick_ev, *kill_ev, *watchdog_ev;
	struct event *sig_ev[10];
	struct control *ctl;
	struct ctl_client *stop_client;
};

static void spawn(struct supervisor *s, int slot, int replacement);
static void roll_next(struct supervisor *s);
static void roll_finish(struct supervisor *s, const char *error);
static void maybe_finish_shutdown(struct supervisor *s);

static uint64_t mono_ms(void)
{
	return sb_now_mono_ms();
}

/* First restart delay. RESIL_TEST_BACKOFF_MS lowers it (1..100 ms) so the
 * crash-loop test runs in seconds; honoured only where the test hook routes
 * are (RESIL_TEST_HOOKS=1 outside production, see workers/testhooks.c). The
 * doubling, the cap and the crash window stay as in production. */
static uint64_t backoff_base_ms(const struct resil_config *cfg)
{
	const char *on = getenv("RESIL_TEST_HOOKS");
	const char *v = getenv("RESIL_TEST_BACKOFF_MS");
	if (!v || !on || strcmp(on, "1") != 0 || cfg->env == CONFIG_ENV_PRODUCTION)
		return BACKOFF_MIN_MS;
	char *end;
	unsigned long ms = strtoul(v, &end, 10);
	if (*end || ms < 1 || ms > BACKOFF_MIN_MS)
		return BACKOFF_MIN_MS;
	return ms;
}

static void describe_status(int status, char *out, size_t len)
{
	if (WIFEXITED(status))
		snprintf(out, len, "exit %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(out, len, "signal %d (%s)%s", WTERMSIG(status), strsignal(WTERMSIG(status)),
		         WCOREDUMP(status) ? ", core dumped" : "");
	else
		snprintf(out, len, "status %d", status);
}

static void notify_status(struct supervisor *s)
{
	if (!sdn_enabled())
		return;
	int ready = sb_count_ready(s->sb);
	char msg[160];
	snprintf(msg, sizeof(msg), "STATUS=%s: %d/%d workers ready, generation %u",
	         s->stopping ? "stopping" : "serving", ready, s->target, s->generation);
	sdn_send(msg);
}

/* ----------------------------------------------------------- spawning */

static void close_fds_except(const int *keep, int nkeep)
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

static int drop_privileges(const struct resil_config *cfg)
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
	if (setgid(gid) < 0 || (pw && initgroups(pw->pw_name, gid) < 0) || (!pw && setgroups(0, NULL) < 0 && errno != EPERM) ||
	    setuid(uid) < 0) {
		log_error(NULL, "cannot drop privileges", LF_STR("error", strerror(errno)));
		return -1;
	}
	return 0;
}

static const int sup_signals[] = {SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGTTIN, SIGTTOU, SIGCHLD};
#define NSUPSIG (sizeof(sup_signals) / sizeof(sup_signals[0]))

static void child_main(struct supervisor *s, int idx, int ready_wr, int bus_fd)
{
	struct proc *p = &s->procs[idx];
	/* Undo the supervisor's signal handling before anything else: the
	 * inherited handlers would write into the supervisor's signal pipe. */
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	for (size_t i = 0; i < NSUPSIG; i++)
		sigaction(sup_signals[i], &sa, NULL);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* Drop the supervisor's loop: while it exists libevent counts it as the
	 * owner of signals, and the worker's own signal events make it print a
	 * non-JSON warning on stderr. event_reinit() first detaches the base
	 * from the epoll instance and signal pipe shared with the supervisor,
	 * so freeing it cannot unregister the supervisor's descriptors. */
	if (event_reinit(s->base) == 0) {
		event_base_free(s->base);
		s->base = NULL;
	}
	prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
	int keep[4] = {s->listen_fd, ready_wr, log_file_fd(), bus_fd};
	close_fds_except(keep, 4);
	if (drop_privileges(s->cfg) < 0)
		_exit(WORKER_EXIT_FATAL);
	char title[64];
	snprintf(title, sizeof(title), "resild: worker %d (gen %u)", p->slot, p->generation);
	proctitle_set(title);
	struct worker_opts wo = {
		.cfg = s->cfg,
		.listen_fd = s->listen_fd,
		.id = p->slot,
		.generation = p->generation,
		.sb = s->sb,
		.sb_index = idx,
		.rl = s->rl,
		.ready_fd = ready_wr,
		.bus_fd = bus_fd,
	};
	int rc = worker_run(&wo);
	log_flush();
	_exit(rc);
}

static void ready_cb(evutil_socket_t fd, short what, void *arg);

static void proc_clear(struct supervisor *s, int idx)
{
	struct proc *p = &s->procs[idx];
	if (p->ready_ev) {
		event_free(p->ready_ev);
		p->ready_ev = NULL;
	}
	if (p->ready_fd >= 0)
		close(p->ready_fd);
	memset(p, 0, sizeof(*p));
	p->ready_fd = -1;
	p->slot = -1;
	bus_hub_detach(s->hub, idx);
	sb_release(s->sb, idx);
}

static void spawn(struct supervisor *s, int slot, int replacement)
{
	struct slot *sl = &s->slots[slot];
	int idx = sb_claim(s->sb, slot, s->generation);
	if (idx < 0) {
		log_error(NULL, "no free scoreboard entry for a new worker", LF_INT("workerId", slot));
		return;
	}
	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		log_error(NULL, "cannot create ready pipe", LF_STR("error", strerror(errno)));
		sb_release(s->sb, idx);
		return;
	}
	struct proc *p = &s->procs[idx];
	memset(p, 0, sizeof(*p));
	p->state = P_STARTING;
	p->slot = slot;
	p->generation = s->generation;
	p->started_ms = mono_ms();
	p->ready_fd = pfd[0];
	int bus_fd = -1;
	if (s->hub && bus_hub_attach(s->hub, idx, &bus_fd) < 0) {
		log_warn(NULL, "cannot create the broadcast bus: websocket broadcasts stay inside this worker",
		         LF_STR("error", strerror(errno)), LF_INT("workerId", slot));
		bus_fd = -1;
	}
	log_flush();
	pid_t pid = fork();
	if (pid < 0) {
		log_error(NULL, "fork failed", LF_STR("error", strerror(errno)), LF_INT("workerId", slot));
		close(pfd[0]);
		close(pfd[1]);
		if (bus_fd >= 0)
			close(bus_fd);
		p->ready_fd = -1;
		proc_clear(s, idx);
		return;
	}
	if (pid == 0) {
		close(pfd[0]);
		child_main(s, idx, pfd[1], bus_fd);
	}
	close(pfd[1]);
	if (bus_fd >= 0)
		close(bus_fd); /* the worker's end */
	p->pid = pid;
	atomic_store(&s->sb->entries[idx].pid, pid);
	p->ready_ev = event_new(s->base, pfd[0], EV_READ, ready_cb, s);
	if (p->ready_ev)
		event_add(p->ready_ev, NULL);
	if (replacement)
		sl->pending = idx;
	else
		sl->proc = idx;
	log_info(NULL, "worker started", LF_INT("workerId", slot), LF_INT("workerPid", pid),
	         LF_INT("generation", s->generation), LF_BOOL("replacement", replacement));
}

static int proc_index_by_fd(struct supervisor *s, int fd)
{
	for (int i = 0; i < SB_MAX_ENTRIES; i++)
		if (s->procs[i].state != P_NONE && s->procs[i].ready_fd == fd)
			return i;
	return -1;
}

static int proc_index_by_pid(struct supervisor *s, pid_t pid)
{
	for (int i = 0; i < SB_MAX_ENTRIES; i++)
		if (s->procs[i].state != P_NONE && s->procs[i].pid == pid)
			return i;
	return -1;
}

static void drain_proc(struct supervisor *s, int idx, const char *why)
{
	struct proc *p = &s->procs[idx];
	if (p->state == P_DRAINING || p->state == P_NONE)
		return;
	p->state = P_DRAINING;
	sb_set_state(&s->sb->entries[idx], SB_DRAINING);
	log_info(NULL, "draining worker", LF_INT("workerId", p->slot), LF_INT("workerPid", p->pid), LF_STR("reason", why));
	kill(p->pid, SIGTERM);
}

static void check_all_ready(struct supervisor *s)
{
	if (s->notified_ready || s->stopping)
		return;
	int ready = 0;
	for (int i = 0; i < s->target; i++) {
		struct slot *sl = &s->slots[i];
		if (sl->proc >= 0 && s->procs[sl->proc].state == P_READY)
			ready++;
	}
	if (ready == s->target) {
		s->notified_ready = 1;
		char msg[96];
		snprintf(msg, sizeof(msg), "READY=1\nMAINPID=%d", (int)getpid());
		sdn_send(msg);
		log_info(NULL, "all workers ready", LF_INT("workers", s->target), LF_STR("listen", s->listen_desc));
		notify_status(s);
	}
}

static void ready_cb(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *s = arg;
	(void)what;
	int idx = proc_index_by_fd(s, fd);
	if (idx < 0)
		return;
	struct proc *p = &s->procs[idx];
	char b;
	ssize_t n = read(fd, &b, 1);
	event_free(p->ready_ev);
	p->ready_ev = NULL;
	close(p->ready_fd);
	p->ready_fd = -1;
	if (n != 1 || p->state != P_STARTING)
		return; /* exited before ready: the SIGCHLD path handles it */
	p->state = P_READY;
	s->ever_ready = 1;
	struct slot *sl = &s->slots[p->slot];
	log_info(NULL, "worker ready", LF_INT("workerId", p->slot), LF_INT("workerPid", p->pid),
	         LF_INT("generation", p->generation), LF_INT("startMs", (int64_t)(mono_ms() - p->started_ms)));
	if (sl->pending == idx) {
		/* A rolling replacement is up: retire the old process. */
		int old = sl->proc;
		sl->proc = idx;
		sl->pending = -1;
		if (old >= 0)
			drain_proc(s, old, s->roll.is_reload ? "reload" : "restart");
		if (s->roll.active && s->roll.pos < s->roll.nslots && s->roll.slots[s->roll.pos] == p->slot) {
			s->roll.done[s->roll.ndone++] = p->slot;
			s->roll.pos++;
			if (s->roll.timeout_ev)
				evtimer_del(s->roll.timeout_ev);
			roll_next(s);
		}
	}
	check_all_ready(s);
	notify_status(s);
}

/* --------------------------------------------------------- restarts */

static void restart_cb(evutil_socket_t fd, short what, void *arg);

static void schedule_restart(struct supervisor *s, int slot, uint64_t delay_ms)
{
	struct slot *sl = &s->slots[slot];
	if (!sl->restart_ev)
		sl->restart_ev = evtimer_new(s->base, restart_cb, sl);
	if (!sl->restart_ev)
		return;
	struct timeval tv = {(time_t)(delay_ms / 1000), (suseconds_t)((delay_ms % 1000) * 1000)};
	evtimer_add(sl->restart_ev, &tv);
	sl->restart_scheduled = 1;
}

static struct supervisor *g_sup; /* for slot -> supervisor in timer callbacks */

static void restart_cb(evutil_socket_t fd, short what, void *arg)
{
	struct slot *sl = arg;
	struct supervisor *s = g_sup;
	(void)fd;
	(void)what;
	sl->restart_scheduled = 0;
	int slot = (int)(sl - s->slots);
	if (s->stopping || !sl->active || sl->errored || sl->proc >= 0 || sl->pending >= 0)
		return;
	spawn(s, slot, 0);
}

static void record_route_crash(struct supervisor *s, const char *route)
{
	if (!route[0])
		route = "(no request)";
	for (int i = 0; i < s->nroutes; i++)
		if (strcmp(s->routes[i].route, route) == 0) {
			s->routes[i].count++;
			return;
		}
	if (s->nroutes < MAX_ROUTES) {
		snprintf(s->routes[s->nroutes].route, sizeof(s->routes[0].route), "%s", route);
		s->routes[s->nroutes++].count = 1;
	}
}

static void handle_exit(struct supervisor *s, pid_t pid, int status)
{
	int idx = proc_index_by_pid(s, pid);
	if (idx < 0)
		return;
	struct proc *p = &s->procs[idx];
	int slot = p->slot;
	struct slot *sl = &s->slots[slot];
	char how[96];
	describe_status(status, how, sizeof(how));
	char route[SB_ROUTE_LEN];
	sb_get_route(&s->sb->entries[idx], route, sizeof(route));
	int was_state = p->state;
	uint64_t up = mono_ms() - p->started_ms;
	int hung = p->hung_killed;
	unsigned gen = p->generation;
	proc_clear(s, idx);

	if (was_state == P_DRAINING) {
		log_info(NULL, "worker exited", LF_INT("workerId", slot), LF_INT("workerPid", pid), LF_STR("status", how));
		if (sl->proc == idx)
			sl->proc = -1;
		maybe_finish_shutdown(s);
		notify_status(s);
		return;
	}
	if (sl->pending == idx) {
		/* A replacement died before it was ready: keep the old one. */
		sl->pending = -1;
		log_error(NULL, "replacement worker exited before it was ready; keeping the old one",
		          LF_INT("workerId", slot), LF_INT("workerPid", pid), LF_STR("status", how));
		if (s->roll.active)
			roll_finish(s, "a new worker exited before it was ready");
		maybe_finish_shutdown(s);
		return;
	}
	if (sl->proc == idx)
		sl->proc = -1;
	if (s->stopping) {
		log_info(NULL, "worker exited", LF_INT("workerId", slot), LF_INT("workerPid", pid), LF_STR("status", how));
		maybe_finish_shutdown(s);
		return;
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == WORKER_EXIT_FATAL) {
		sl->fatal = 1;
		sl->errored = 1;
		log_error(NULL, "worker could not start (fatal); not restarting it", LF_INT("workerId", slot),
		          LF_INT("workerPid", pid), LF_STR("status", how), LF_INT("generation", gen));
		if (!s->ever_ready) {
			int alive = 0;
			for (int i = 0; i < SB_MAX_ENTRIES; i++)
				if (s->procs[i].state != P_NONE)
					alive++;
			if (alive == 0) {
				log_error(NULL, "no worker of the first generation became ready; exiting", LF_INT("workers", s->target));
				s->exit_code = 1;
				s->stopping = 1;
				maybe_finish_shutdown(s);
			}
		}
		notify_status(s);
		return;
	}
	/* A crash (or a clean exit nobody asked for). */
	sl->restarts++;
	uint64_t now = mono_ms();
	sl->crashes[sl->ncrash % (CRASH_LIMIT + 1)] = now;
	sl->ncrash++;
	int recent = 0;
	for (int i = 0; i < CRASH_LIMIT + 1 && i < sl->ncrash; i++)
		if (now - sl->crashes[i] <= CRASH_WINDOW_MS)
			recent++;
	if (WIFSIGNALED(status) && !hung)
		record_route_crash(s, route);
	if (up >= BACKOFF_RESET_UP_MS || sl->backoff_ms == 0)
		sl->backoff_ms = backoff_base_ms(s->cfg);
	uint64_t delay = sl->backoff_ms;
	sl->backoff_ms = sl->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : sl->backoff_ms * 2;
	if (recent > CRASH_LIMIT) {
		sl->errored = 1;
		log_error(NULL, "worker crashed more than 10 times in 60 s; marking it errored (resilctl restart to retry)",
		          LF_INT("workerId", slot), LF_INT("workerPid", pid), LF_STR("status", how),
		          LF_INT("restarts", sl->restarts));
		notify_status(s);
		return;
	}
	log_error(NULL, hung ? "hung worker killed; restarting" : "worker died; restarting", LF_INT("workerId", slot),
	          LF_INT("workerPid", pid), LF_STR("status", how), LF_STR("route", route[0] ? route : NULL),
	          LF_INT("restartInMs", delay), LF_INT("restarts", sl->restarts), LF_INT("uptimeMs", up));
	schedule_restart(s, slot, delay);
	notify_status(s);
}

static void reap(struct supervisor *s)
{
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		if (pid <= 0)
			break;
		handle_exit(s, pid, status);
	}
}

/* ---------------------------------------------------- rolling replace */

static void roll_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *s = arg;
	(void)fd;
	(void)what;
	if (!s->roll.active || s->roll.pos >= s->roll.nslots)
		return;
	int slot = s->roll.slots[s->roll.pos];
	struct slot *sl = &s->slots[slot];
	if (sl->pending >= 0) {
		struct proc *p = &s->procs[sl->pending];
		log_error(NULL, "new worker not ready within the listen timeout; killing it and keeping the old one",
		          LF_INT("workerId", slot), LF_INT("workerPid", p->pid));
		p->state = P_DRAINING; /* its exit is expected now */
		kill(p->pid, SIGKILL);
		sl->pending = -1;
	}
	roll_finish(s, "a new worker did not become ready in time");
}

static void roll_reply(struct supervisor *s, const char *error)
{
	struct ctl_client *c = s->roll.client;
	s->roll.client = NULL;
	if (!c)
		return;
	if (error) {
		ctl_reply_error(c, error);
		return;
	}
	char buf[4096];
	size_t n;
	if (s->roll.is_reload) {
		n = (size_t)snprintf(buf, sizeof(buf), "{\"ok\":true,\"generation\":%u}", s->generation);
	} else {
		n = (size_t)snprintf(buf, sizeof(buf), "{\"ok\":true,\"restarted\":[");
		for (int i = 0; i < s->roll.ndone && n < sizeof(buf) - 16; i++)
			n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s%d", i ? "," : "", s->roll.done[i]);
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "]}");
	}
	ctl_reply(c, buf, n);
}

static void roll_finish(struct supervisor *s, const char *error)
{
	if (!s->roll.active)
		return;
	if (s->roll.timeout_ev)
		evtimer_del(s->roll.timeout_ev);
	if (error)
		log_error(NULL, s->roll.is_reload ? "reload failed" : "restart failed", LF_STR("error", error));
	else
		log_info(NULL, s->roll.is_reload ? "reload complete" : "restart complete", LF_INT("generation", s->generation),
		         LF_INT("workers", s->roll.ndone));
	if (s->roll.is_reload && sdn_enabled())
		sdn_send("READY=1");
	roll_reply(s, error);
	s->roll.active = 0;
	notify_status(s);
}

static void roll_next(struct supervisor *s)
{
	while (s->roll.pos < s->roll.nslots) {
		int slot = s->roll.slots[s->roll.pos];
		struct slot *sl = &s->slots[slot];
		if (!sl->active) {
			s->roll.pos++;
			continue;
		}
		if (sl->proc < 0 || sl->errored) {
			/* Nothing serving (errored or waiting for a restart): start
			 * fresh instead of replacing. */
			sl->errored = 0;
			sl->fatal = 0;
			sl->ncrash = 0;
			sl->backoff_ms = 0;
			if (sl->restart_scheduled) {
				evtimer_del(sl->restart_ev);
				sl->restart_scheduled = 0;
			}
		}
		spawn(s, slot, 1);
		if (sl->pending < 0) {
			roll_finish(s, "cannot start a new worker");
			return;
		}
		struct timeval tv = {(time_t)(s->cfg->listen_timeout_ms / 1000),
		                     (suseconds_t)((s->cfg->listen_timeout_ms % 1000) * 1000)};
		evtimer_add(s->roll.timeout_ev, &tv);
		return;
	}
	roll_finish(s, NULL);
}

/* Start a rolling replacement of the given slots (all when n < 0). */
static int roll_start(struct supervisor *s, int is_reload, const int *slots, int n, struct ctl_client *c)
{
	if (s->roll.active)
		return -1;
	memset(s->roll.slots, 0, sizeof(s->roll.slots));
	s->roll.active = 1;
	s->roll.is_reload = is_reload;
	s->roll.pos = 0;
	s->roll.ndone = 0;
	s->roll.client = c;
	s->roll.nslots = 0;
	if (n < 0) {
		for (int i = 0; i < s->target; i++)
			s->roll.slots[s->roll.nslots++] = i;
	} else {
		for (int i = 0; i < n; i++)
			s->roll.slots[s->roll.nslots++] = slots[i];
	}
	s->generation++;
	atomic_store(&s->sb->hdr.generation, s->generation);
	if (is_reload && sdn_enabled())
		sdn_send("RELOADING=1");
	roll_next(s);
	return 0;
}

/* ------------------------------------------------------------ scaling */

static void scale_to(struct supervisor *s, int n)
{
	if (n < 1)
		n = 1;
	if (n > SB_MAX_WORKERS)
		n = SB_MAX_WORKERS;
	int old = s->target;
	s->target = n;
	atomic_store(&s->sb->hdr.workers_target, n);
	for (int i = old; i < n; i++) {
		struct slot *sl = &s->slots[i];
		sl->active = 1;
		sl->errored = 0;
		sl->fatal = 0;
		sl->ncrash = 0;
		sl->backoff_ms = 0;
		if (sl->proc < 0 && !s->stopping)
			spawn(s, i, 0);
	}
	for (int i = n; i < old; i++) {
		struct slot *sl = &s->slots[i];
		sl->active = 0;
		if (sl->restart_scheduled) {
			evtimer_del(sl->restart_ev);
			sl->restart_scheduled = 0;
		}
		if (sl->pending >= 0)
			drain_proc(s, sl->pending, "scale down");
		if (sl->proc >= 0)
			drain_proc(s, sl->proc, "scale down");
		sl->proc = -1;
		sl->pending = -1;
	}
	if (n != old)
		log_info(NULL, "worker count changed", LF_INT("from", old), LF_INT("to", n));
	notify_status(s);
}

/* ----------------------------------------------------------- shutdown */

static void kill_all(struct supervisor *s, int sig)
{
	for (int i = 0; i < SB_MAX_ENTRIES; i++)
		if (s->procs[i].state != P_NONE && s->procs[i].pid > 0)
			kill(s->procs[i].pid, sig);
}

static void maybe_finish_shutdown(struct supervisor *s)
{
	if (!s->stopping)
		return;
	for (int i = 0; i < SB_MAX_ENTRIES; i++)
		if (s->procs[i].state != P_NONE)
			return;
	event_base_loopexit(s->base, NULL);
}

static void kill_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *s = arg;
	(void)fd;
	(void)what;
	int n = 0;
	for (int i = 0; i < SB_MAX_ENTRIES; i++)
		if (s->procs[i].state != P_NONE)
			n++;
	if (n) {
		log_warn(NULL, "workers still running after the shutdown timeout; killing them", LF_INT("workers", n),
		         LF_INT("timeoutMs", s->cfg->shutdown_timeout_ms));
		kill_all(s, SIGKILL);
	}
}

static void begin_shutdown(struct supervisor *s, int immediate)
{
	if (s->stopping && !immediate)
		return;
	s->stopping = 1;
	sdn_send("STOPPING=1");
	/* Stop accepting at once, in every process: the listening socket is
	 * shared with the workers, and shutting it down (not just closing our
	 * descriptor) takes it out of the listen state, so a new connection is
	 * refused instead of waiting in a backlog nobody will accept from. */
	if (s->listen_fd >= 0 && shutdown(s->listen_fd, SHUT_RD) < 0 && errno != ENOTCONN)
		log_warn(NULL, "cannot shut the listening socket down", LF_STR("error", strerror(errno)));
	log_info(NULL, immediate ? "immediate shutdown" : "graceful shutdown", LF_INT("workers", s->target),
	         LF_INT("timeoutMs", immediate ? 0 : s->cfg->shutdown_timeout_ms));
	if (s->roll.active)
		roll_finish(s, "shutting down");
	for (int i = 0; i < SB_MAX_WORKERS; i++)
		if (s->slots[i].restart_scheduled) {
			evtimer_del(s->slots[i].restart_ev);
			s->slots[i].restart_scheduled = 0;
		}
	for (int i = 0; i < SB_MAX_ENTRIES; i++) {
		struct proc *p = &s->procs[i];
		if (p->state == P_NONE)
			continue;
		if (immediate) {
			kill(p->pid, SIGQUIT);
		} else if (p->state != P_DRAINING) {
			p->state = P_DRAINING;
			sb_set_state(&s->sb->entries[i], SB_DRAINING);
			kill(p->pid, SIGTERM);
		}
		p->state = P_DRAINING;
	}
	int64_t ms = immediate ? 1000 : s->cfg->shutdown_timeout_ms;
	struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
	evtimer_add(s->kill_ev, &tv);
	maybe_finish_shutdown(s);
}

/* --------------------------------------------------------------- tick */

static int read_proc_stat(pid_t pid, uint64_t *ticks, uint64_t *rss)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	if (!p)
		return -1;
	/* Fields after the command: state(3) ... utime(14) stime(15) ... rss(24). */
	unsigned long long ut = 0, st = 0;
	long long rs = 0;
	int field = 2;
	char *save = NULL;
	for (char *tok = strtok_r(p + 1, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		field++;
		if (field == 14)
			ut = strtoull(tok, NULL, 10);
		else if (field == 15)
			st = strtoull(tok, NULL, 10);
		else if (field == 24) {
			rs = strtoll(tok, NULL, 10);
			break;
		}
	}
	*ticks = ut + st;
	*rss = rs > 0 ? (uint64_t)rs * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
	return 0;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *s = arg;
	(void)fd;
	(void)what;
	uint64_t now = mono_ms();
	long hz = sysconf(_SC_CLK_TCK);
	for (int i = 0; i < SB_MAX_ENTRIES; i++) {
		struct proc *p = &s->procs[i];
		if (p->state == P_NONE)
			continue;
		uint64_t ticks = 0, rss = 0;
		if (read_proc_stat(p->pid, &ticks, &rss) == 0) {
			if (p->cpu_prev_ms && now > p->cpu_prev_ms && hz > 0)
				p->cpu_pct = (double)(ticks - p->cpu_prev_ticks) * 1000.0 * 100.0 / (double)hz /
				             (double)(now - p->cpu_prev_ms);
			p->cpu_prev_ticks = ticks;
			p->cpu_prev_ms = now;
			p->rss = rss;
		}
		if (s->stopping)
			continue;
		uint64_t hb = atomic_load(&s->sb->entries[i].heartbeat_ms);
		if ((p->state == P_READY || p->state == P_DRAINING) && !p->hung_killed && now > hb &&
		    (int64_t)(now - hb) > s->cfg->worker_timeout_ms) {
			log_error(NULL, "worker heartbeat too old; killing it", LF_INT("workerId", p->slot),
			          LF_INT("workerPid", p->pid), LF_INT("heartbeatAgeMs", now - hb),
			          LF_INT("timeoutMs", s->cfg->worker_timeout_ms));
			p->hung_killed = 1;
			kill(p->pid, SIGKILL);
			continue;
		}
		if (s->cfg->max_memory > 0 && p->state == P_READY && rss > (uint64_t)s->cfg->max_memory && !s->roll.active &&
		    s->slots[p->slot].proc == i && s->slots[p->slot].pending < 0) {
			log_warn(NULL, "worker over the memory limit; recycling it gracefully", LF_INT("workerId", p->slot),
			         LF_INT("workerPid", p->pid), LF_INT("rssBytes", rss), LF_INT("maxMemory", s->cfg->max_memory));
			int slot = p->slot;
			roll_start(s, 0, &slot, 1, NULL);
		}
	}
}

static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	sdn_send("WATCHDOG=1");
}

/* ------------------------------------------------------------ signals */

static int reload_config(struct supervisor *s, char *err, size_t errlen)
{
	struct resil_config *nc = calloc(1, sizeof(*nc));
	if (!nc) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	enum config_action act;
	if (config_load(nc, s->argc, s->argv, &act, err, errlen) < 0) {
		free(nc);
		return -1;
	}
	if (strcmp(nc->listen, s->cfg->listen) != 0)
		log_warn(NULL, "listen address changes need a restart of resild; keeping the bound socket",
		         LF_STR("listen", s->cfg->listen));
	if (nc->jwt_secret_generated && s->cfg->jwt_secret_generated) {
		/* Keep the development secret so tokens survive the reload. */
		memcpy(nc->jwt_secret, s->cfg->jwt_secret, sizeof(nc->jwt_secret));
		nc->jwt_secret_len = s->cfg->jwt_secret_len;
	}
	snprintf(nc->listen, sizeof(nc->listen), "%s", s->cfg->listen);
	log_set_level(nc->log_level);
	int workers = nc->workers;
	free(s->cfg);
	s->cfg = nc;
	if (workers != s->target)
		scale_to(s, workers);
	return 0;
}

static void do_reload(struct supervisor *s, struct ctl_client *c)
{
	char err[CONFIG_ERR_MAX];
	if (s->stopping) {
		if (c)
			ctl_reply_error(c, "shutting down");
		return;
	}
	if (s->roll.active) {
		log_warn(NULL, "reload ignored: a reload or restart is already in progress", LF_INT("generation", s->generation));
		if (c)
			ctl_reply_error(c, "a reload or restart is already in progress");
		return;
	}
	log_info(NULL, "reloading configuration", LF_INT("generation", s->generation));
	if (reload_config(s, err, sizeof(err)) < 0) {
		log_error(NULL, "reload rejected: invalid configuration; keeping the running workers", LF_STR("error", err));
		if (c) {
			char msg[CONFIG_ERR_MAX + 32];
			snprintf(msg, sizeof(msg), "config: %s", err);
			ctl_reply_error(c, msg);
		}
		return;
	}
	roll_start(s, 1, NULL, -1, c);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct supervisor *s = arg;
	(void)what;
	switch (sig) {
	case SIGCHLD: reap(s); break;
	case SIGTERM:
	case SIGINT: begin_shutdown(s, 0); break;
	case SIGQUIT: begin_shutdown(s, 1); break;
	case SIGHUP: do_reload(s, NULL); break;
	case SIGUSR1:
		if (log_reopen() < 0)
			log_error(NULL, "cannot reopen the log file", LF_STR("error", strerror(errno)));
		else
			log_info(NULL, "log file reopened", LF_STR("file", s->cfg->log_file));
		for (int i = 0; i < SB_MAX_ENTRIES; i++)
			if (s->procs[i].state != P_NONE)
				kill(s->procs[i].pid, SIGUSR1);
		break;
	case SIGTTIN:
		if (!s->stopping)
			scale_to(s, s->target + 1);
		break;
	case SIGTTOU:
		if (!s->stopping && s->target > 1)
			scale_to(s, s->target - 1);
		break;
	default: break;
	}
}

/* ------------------------------------------------------------ control */

#define GS(g, str) yajl_gen_string(g, (const unsigned char *)(str), strlen(str))

static void reply_gen(struct ctl_client *c, yajl_gen g)
{
	const unsigned char *buf;
	size_t len;
	if (yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok)
		ctl_reply(c, (const char *)buf, len);
	else
		ctl_reply_error(c, "internal error");
	yajl_gen_free(g);
}

static const char *db_kind(const struct resil_config *cfg)
{
	return strncmp(cfg->db, "mongodb", 7) == 0 ? "mongodb" : "sqlite";
}

/* Aggregate database state and circuits over serving workers. */
static const char *db_state_agg(struct supervisor *s)
{
	int conn = 0, disc = 0;
	for (int i = 0; i < SB_MAX_ENTRIES; i++) {
		if (s->procs[i].state != P_READY)
			continue;
		int d = atomic_load(&s->sb->entries[i].db_state);
		if (d == SB_DB_CONNECTED)
			conn++;
		else if (d == SB_DB_DISCONNECTED)
			disc++;
	}
	if (disc)
		return "disconnected";
	if (conn)
		return "connected";
	return "unknown";
}

static void gen_circuits(struct supervisor *s, yajl_gen g, int only_idx)
{
	static const char *names[] = {"closed", "open", "half-open"};
	char seen[SB_MAX_CIRCUITS * 4][16];
	int worst[SB_MAX_CIRCUITS * 4];
	int n = 0;
	for (int i = 0; i < SB_MAX_ENTRIES; i++) {
		if (only_idx >= 0 && i != only_idx)
			continue;
		if (s->procs[i].state != P_READY && only_idx < 0)
			continue;
		struct sb_entry *e = &s->sb->entries[i];
		int nc = atomic_load(&e->ncircuits);
		for (int k = 0; k < nc && k < SB_MAX_CIRCUITS; k++) {
			int st = atomic_load(&e->circuits[k].state);
			if (st < 0 || st > 2)
				st = 0;
			int j;
			for (j = 0; j < n; j++)
				if (strncmp(seen[j], e->circuits[k].name, 16) == 0)
					break;
			if (j == n) {
				if (n >= (int)(sizeof(worst) / sizeof(worst[0])))
					continue;
				memcpy(seen[n], e->circuits[k].name, 16);
				seen[n][15] = '\0';
				worst[n++] = st;
			} else if (st == 1 || (st == 2 && worst[j] == 0)) {
				worst[j] = st;
			}
		}
	}
	yajl_gen_map_open(g);
	for (int j = 0; j < n; j++) {
		GS(g, seen[j]);
		GS(g, names[worst[j]]);
	}
	yajl_gen_map_close(g);
}

void sup_ctl_status(struct supervisor *s, struct ctl_client *c)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	if (!g) {
		ctl_reply_error(c, "out of memory");
		return;
	}
	uint64_t now = mono_ms();
	yajl_gen_map_open(g);
	GS(g, "ok");
	yajl_gen_bool(g, 1);
	GS(g, "supervisor");
	yajl_gen_map_open(g);
	GS(g, "pid");
	yajl_gen_integer(g, getpid());
	GS(g, "uptime_s");
	yajl_gen_integer(g, (long long)((now - s->started_ms) / 1000));
	GS(g, "listen");
	GS(g, s->listen_desc);
	GS(g, "db");
	GS(g, db_kind(s->cfg));
	GS(g, "db_state");
	GS(g, db_state_agg(s));
	GS(g, "workers_target");
	yajl_gen_integer(g, s->target);
	GS(g, "generation");
	yajl_gen_integer(g, s->generation);
	GS(g, "version");
	GS(g, PACKAGE_VERSION);
	GS(g, "state");
	GS(g, s->stopping ? "stopping" : s->roll.active ? "reloading" : "running");
	yajl_gen_map_close(g);
	GS(g, "workers");
	yajl_gen_array_open(g);
	for (int i = 0; i < s->target; i++) {
		struct slot *sl = &s->slots[i];
		int idx = sl->proc;
		struct proc *p = idx >= 0 ? &s->procs[idx] : NULL;
		struct sb_entry *e = idx >= 0 ? &s->sb->entries[idx] : NULL;
		const char *state = sl->errored ? "errored" : !p ? "stopped" : p->state == P_STARTING ? "starting"
		                                            : p->state == P_DRAINING               ? "draining"
		                                                                                   : "ready";
		yajl_gen_map_open(g);
		GS(g, "id");
		yajl_gen_integer(g, i);
		GS(g, "pid");
		yajl_gen_integer(g, p ? p->pid : 0);
		GS(g, "state");
		GS(g, state);
		GS(g, "uptime_s");
		yajl_gen_integer(g, p ? (long long)((now - p->started_ms) / 1000) : 0);
		GS(g, "restarts");
		yajl_gen_integer(g, sl->restarts);
		GS(g, "cpu_pct");
		yajl_gen_double(g, p ? (double)((long long)(p->cpu_pct * 10 + 0.5)) / 10.0 : 0.0);
		GS(g, "rss_bytes");
		yajl_gen_integer(g, p ? (long long)p->rss : 0);
		GS(g, "requests");
		yajl_gen_integer(g, e ? (long long)atomic_load(&e->requests) : 0);
		GS(g, "inflight");
		yajl_gen_integer(g, e ? (long long)atomic_load(&e->inflight) : 0);
		GS(g, "websockets");
		yajl_gen_integer(g, e ? (long long)atomic_load(&e->websockets) : 0);
		GS(g, "generation");
		yajl_gen_integer(g, p ? p->generation : 0);
		GS(g, "circuits");
		if (idx >= 0)
			gen_circuits(s, g, idx);
		else {
			yajl_gen_map_open(g);
			yajl_gen_map_close(g);
		}
		yajl_gen_map_close(g);
	}
	yajl_gen_array_close(g);
	GS(g, "crashes_by_route");
	yajl_gen_map_open(g);
	for (int i = 0; i < s->nroutes; i++) {
		GS(g, s->routes[i].route);
		yajl_gen_integer(g, s->routes[i].count);
	}
	yajl_gen_map_close(g);
	yajl_gen_map_close(g);
	reply_gen(c, g);
}

void sup_ctl_health(struct supervisor *s, struct ctl_client *c)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	if (!g) {
		ctl_reply_error(c, "out of memory");
		return;
	}
	int ready = 0;
	for (int i = 0; i < s->target; i++)
		if (s->slots[i].proc >= 0 && s->procs[s->slots[i].proc].state == P_READY)
			ready++;
	const char *db = db_state_agg(s);
	const char *status = ready == 0 ? CTL_HEALTH_DOWN
	                     : (ready < s->target || strcmp(db, "disconnected") == 0) ? CTL_HEALTH_DEGRADED
	                                                                              : CTL_HEALTH_HEALTHY;
	yajl_gen_map_open(g);
	GS(g, "ok");
	yajl_gen_bool(g, 1);
	GS(g, "status");
	GS(g, status);
	GS(g, "checks");
	yajl_gen_map_open(g);
	GS(g, "database");
	GS(g, db);
	GS(g, "workers");
	yajl_gen_map_open(g);
	GS(g, "total");
	yajl_gen_integer(g, s->target);
	GS(g, "ready");
	yajl_gen_integer(g, ready);
	yajl_gen_map_close(g);
	GS(g, "circuits");
	gen_circuits(s, g, -1);
	yajl_gen_map_close(g);
	yajl_gen_map_close(g);
	reply_gen(c, g);
}

void sup_ctl_restart(struct supervisor *s, struct ctl_client *c, int target)
{
	if (s->stopping) {
		ctl_reply_error(c, "shutting down");
		return;
	}
	if (target >= s->target) {
		char msg[64];
		snprintf(msg, sizeof(msg), "no such worker: %d", target);
		ctl_reply_error(c, msg);
		return;
	}
	if (s->roll.active) {
		ctl_reply_error(c, "a reload or restart is already in progress");
		return;
	}
	ctl_defer(c);
	log_info(NULL, "rolling restart requested", LF_INT("target", target));
	if (target >= 0)
		roll_start(s, 0, &target, 1, c);
	else
		roll_start(s, 0, NULL, -1, c);
}

void sup_ctl_reload(struct supervisor *s, struct ctl_client *c)
{
	ctl_defer(c);
	do_reload(s, c);
}

void sup_ctl_stop(struct supervisor *s, struct ctl_client *c)
{
	char buf[64];
	int n = snprintf(buf, sizeof(buf), "{\"ok\":true,\"pid\":%d}", (int)getpid());
	ctl_reply(c, buf, (size_t)n);
	begin_shutdown(s, 0);
}

void sup_ctl_scale(struct supervisor *s, struct ctl_client *c, int n)
{
	if (n < CTL_SCALE_MIN || n > CTL_SCALE_MAX) {
		ctl_reply_error(c, "workers must be between 1 and 256");
		return;
	}
	if (s->stopping) {
		ctl_reply_error(c, "shutting down");
		return;
	}
	scale_to(s, n);
	char buf[64];
	int len = snprintf(buf, sizeof(buf), "{\"ok\":true,\"workers\":%d}", n);
	ctl_reply(c, buf, (size_t)len);
}

/* --------------------------------------------------------------- main */

int supervisor_run(struct resil_config *cfg, int argc, char **argv, int listen_fd)
{
	static struct supervisor sup;
	struct supervisor *s = &sup;
	g_sup = s;
	memset(s, 0, sizeof(*s));
	s->cfg = malloc(sizeof(*cfg));
	if (!s->cfg)
		return 1;
	memcpy(s->cfg, cfg, sizeof(*cfg));
	s->argc = argc;
	s->argv = argv;
	s->listen_fd = listen_fd;
	s->started_ms = mono_ms();
	s->generation = 1;
	for (int i = 0; i < SB_MAX_ENTRIES; i++) {
		s->procs[i].ready_fd = -1;
		s->procs[i].slot = -1;
	}
	for (int i = 0; i < SB_MAX_WORKERS; i++) {
		s->slots[i].proc = -1;
		s->slots[i].pending = -1;
	}
	if (listen_describe(listen_fd, s->listen_desc, sizeof(s->listen_desc)) < 0)
		snprintf(s->listen_desc, sizeof(s->listen_desc), "%s", cfg->listen);
	proctitle_set("resild: supervisor");
	s->sb = sb_create();
	s->rl = rl_create(0);
	s->base = event_base_new();
	if (!s->sb || !s->base || !s->rl) {
		log_error(NULL, "cannot create the scoreboard or event loop", LF_STR("error", strerror(errno)));
		return 1;
	}
	s->hub = bus_hub_new(s->base, SB_MAX_ENTRIES);
	if (!s->hub)
		log_warn(NULL, "cannot create the broadcast bus: websocket broadcasts stay inside each worker",
		         LF_STR("error", strerror(errno)));
	atomic_store(&s->sb->hdr.supervisor_pid, getpid());
	atomic_store(&s->sb->hdr.started_ms, sb_now_real_ms());
	atomic_store(&s->sb->hdr.generation, s->generation);
	char err[512];
	s->ctl = control_open(s->base, s, cfg->control, err, sizeof(err));
	if (!s->ctl) {
		log_error(NULL, err, LF_STR("control", cfg->control));
		bus_hub_free(s->hub);
		event_base_free(s->base);
		sb_destroy(s->sb);
		return 1;
	}
	for (size_t i = 0; i < NSUPSIG; i++) {
		s->sig_ev[i] = evsignal_new(s->base, sup_signals[i], signal_cb, s);
		if (s->sig_ev[i])
			event_add(s->sig_ev[i], NULL);
	}
	s->tick_ev = event_new(s->base, -1, EV_PERSIST, tick_cb, s);
	struct timeval tick = {0, TICK_MS * 1000};
	event_add(s->tick_ev, &tick);
	s->kill_ev = evtimer_new(s->base, kill_timeout_cb, s);
	s->roll.timeout_ev = evtimer_new(s->base, roll_timeout_cb, s);
	uint64_t wd = sdn_watchdog_usec();
	if (wd) {
		s->watchdog_ev = event_new(s->base, -1, EV_PERSIST, watchdog_cb, s);
		struct timeval tv = {(time_t)(wd / 2 / 1000000), (suseconds_t)((wd / 2) % 1000000)};
		event_add(s->watchdog_ev, &tv);
	}
	log_info(NULL, "supervisor started", LF_STR("listen", s->listen_desc), LF_INT("workers", cfg->workers),
	         LF_STR("db", db_kind(cfg)), LF_STR("control", cfg->control));
	if (backoff_base_ms(cfg) != BACKOFF_MIN_MS)
		log_warn(NULL, "test hook: first restart delay lowered by RESIL_TEST_BACKOFF_MS",
		         LF_INT("backoffMs", backoff_base_ms(cfg)));
	scale_to(s, cfg->workers);
	event_base_dispatch(s->base);

	/* Stopped: every worker has exited (or we were never able to start). */
	kill_all(s, SIGKILL);
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	for (int i = 0; i < SB_MAX_ENTRIES; i++)
		if (s->procs[i].state != P_NONE)
			proc_clear(s, i);
	for (int i = 0; i < SB_MAX_WORKERS; i++)
		if (s->slots[i].restart_ev)
			event_free(s->slots[i].restart_ev);
	control_close(s->ctl);
	for (size_t i = 0; i < NSUPSIG; i++)
		if (s->sig_ev[i])
			event_free(s->sig_ev[i]);
	event_free(s->tick_ev);
	event_free(s->kill_ev);
	event_free(s->roll.timeout_ev);
	if (s->watchdog_ev)
		event_free(s->watchdog_ev);
	bus_hub_free(s->hub);
	event_base_free(s->base);
	sb_destroy(s->sb);
	rl_destroy(s->rl);
	int rc = s->exit_code;
	log_info(NULL, "resild stopped", LF_INT("exitCode", rc));
	free(s->cfg);
	return rc;
}
