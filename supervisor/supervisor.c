/* supervisor.c - the state machine of resild's process table (see
 * supervisor.h, sup_state.h, SPEC section 3): slots and their processes,
 * spawning, readiness, exits and the restart policy (backoff, crash window,
 * errored, fatal start, crash attribution), scaling, shutdown, signals and
 * reload, the control actions and the read-only view control.c renders,
 * and main. Rolling replacement (roll.c), the monitoring tick (monitor.c),
 * the child side of the fork (child.c) and the control socket with all its
 * JSON (control.c) live beside it.
 *
 * What is left here is one unit on purpose: every transition of a slot or
 * a process (started, ready, draining, exited, crashed, errored, scaled
 * away, stopped) reads and writes the same few fields, and the restart
 * policy, scaling and shutdown each decide on all of them together.
 * Splitting it further would spread one state machine over several files.
 *
 * Everything happens on one libevent loop: signals arrive as events, child
 * exits are reaped on SIGCHLD, a tick every 250 ms checks heartbeats, RSS and
 * CPU. Decisions are logged with the worker id ("worker", the same 0-based
 * id as resilctl and the process title), pid and exit status or signal.
 *
 * A process table entry has the same index as its scoreboard entry. A
 * logical slot (worker id 0..N-1) points to its serving process and, while
 * it is being replaced, to the starting one. Replacements are rolling: one
 * slot at a time, the new process must report ready (one byte on a pipe)
 * before the old one is asked to drain, so no connection is refused.
 */
#include "autoconfig.h"

#include "supervisor.h"

#include "bus.h"
#include "child.h"
#include "ctl_proto.h"
#include "listen.h"
#include "log.h"
#include "proctitle.h"
#include "ratelimit.h"
#include "scoreboard.h"
#include "sdnotify.h"
#include "sup_state.h"
#include "worker.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void maybe_finish_shutdown(struct supervisor *s);

static uint64_t mono_ms(void)
{
	return sb_now_mono_ms();
}

/* First restart delay. RESIL_TEST_BACKOFF_MS lowers it (1..100 ms) so the
 * crash-loop test runs in seconds; honoured only where the test hook routes
 * are (RESIL_TEST_HOOKS=1 outside production, see workers/testhooks.c). The
 * doubling, the cap and the crash window stay as in production. */
uint64_t backoff_base_ms(const struct resil_config *cfg)
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

void notify_status(struct supervisor *s)
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

static const int sup_signals[] = {SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGTTIN, SIGTTOU, SIGCHLD};
#define NSUPSIG (sizeof(sup_signals) / sizeof(sup_signals[0]))

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

void spawn(struct supervisor *s, int slot, int replacement)
{
	struct slot *sl = &s->slots[slot];
	int idx = sb_claim(s->sb, slot, s->generation);
	if (idx < 0) {
		log_error(NULL, "no free scoreboard entry for a new worker", LF_INT("worker", slot));
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
		         LF_STR("error", strerror(errno)), LF_INT("worker", slot));
		bus_fd = -1;
	}
	log_flush();
	pid_t pid = fork();
	if (pid < 0) {
		log_error(NULL, "fork failed", LF_STR("error", strerror(errno)), LF_INT("worker", slot));
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
		struct worker_opts wo = {
		    .cfg = s->cfg,
		    .listen_fd = s->listen_fd,
		    .id = slot,
		    .generation = p->generation,
		    .sb = s->sb,
		    .sb_index = idx,
		    .rl = s->rl,
		    .ready_fd = pfd[1],
		    .bus_fd = bus_fd,
		};
		struct child_exec ex = {.exe = s->exe, .sb_fd = s->sb_fd, .rl_fd = s->rl_fd};
		child_run(s->base, sup_signals, NSUPSIG, &wo, &ex);
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
	log_info(NULL, "worker started", LF_INT("worker", slot), LF_INT("workerPid", pid),
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

void drain_proc(struct supervisor *s, int idx, const char *why)
{
	struct proc *p = &s->procs[idx];
	if (p->state == P_DRAINING || p->state == P_NONE)
		return;
	p->state = P_DRAINING;
	sb_set_state(&s->sb->entries[idx], SB_DRAINING);
	log_info(NULL, "draining worker", LF_INT("worker", p->slot), LF_INT("workerPid", p->pid),
	         LF_STR("reason", why));
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
		upgrade_signal_ready(s);
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
	/* Its size before any traffic: a max_memory below it cannot be met by
	 * recycling (monitor.c). */
	if (monitor_read_rss(p->pid, &p->fresh_rss) < 0)
		p->fresh_rss = 0;
	struct slot *sl = &s->slots[p->slot];
	log_info(NULL, "worker ready", LF_INT("worker", p->slot), LF_INT("workerPid", p->pid),
	         LF_INT("generation", p->generation), LF_INT("startMs", (int64_t)(mono_ms() - p->started_ms)));
	if (sl->pending == idx) {
		/* A rolling replacement is up: retire the old process. */
		int old = sl->proc;
		sl->proc = idx;
		sl->pending = -1;
		if (old >= 0) {
			sb_count_restart(s->sb, s->roll.cause);
			drain_proc(s, old, s->roll.is_reload ? "reload" : "restart");
		}
		if (s->roll.active && s->roll.pos < s->roll.nslots && s->roll.slots[s->roll.pos] == p->slot) {
			sl->restarts_by[s->roll.cause == SB_RESTART_RELOAD   ? SUP_RESTART_RELOAD
			                : s->roll.cause == SB_RESTART_MEMORY ? SUP_RESTART_MEMORY
			                                                     : SUP_RESTART_OPERATOR]++;
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
	if (upgrade_reaped(s, pid, status))
		return;
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
	/* A crash is a route's only while a request was in flight (the worker
	 * clears the route when it goes idle; this also covers a death between
	 * the two stores). */
	if (atomic_load(&s->sb->entries[idx].inflight) <= 0)
		route[0] = '\0';
	int was_state = p->state;
	uint64_t up = mono_ms() - p->started_ms;
	int hung = p->hung_killed;
	unsigned gen = p->generation;
	proc_clear(s, idx);

	if (was_state == P_DRAINING) {
		log_info(NULL, "worker exited", LF_INT("worker", slot), LF_INT("workerPid", pid),
		         LF_STR("status", how));
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
		          LF_INT("worker", slot), LF_INT("workerPid", pid), LF_STR("status", how));
		if (s->roll.active)
			roll_finish(s, "a new worker exited before it was ready");
		maybe_finish_shutdown(s);
		return;
	}
	if (sl->proc == idx)
		sl->proc = -1;
	if (s->stopping) {
		log_info(NULL, "worker exited", LF_INT("worker", slot), LF_INT("workerPid", pid),
		         LF_STR("status", how));
		maybe_finish_shutdown(s);
		return;
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == WORKER_EXIT_FATAL) {
		sl->fatal = 1;
		sl->errored = 1;
		log_error(NULL, "worker could not start (fatal); not restarting it", LF_INT("worker", slot),
		          LF_INT("workerPid", pid), LF_STR("status", how), LF_INT("generation", gen));
		if (!s->ever_ready) {
			int alive = 0;
			for (int i = 0; i < SB_MAX_ENTRIES; i++)
				if (s->procs[i].state != P_NONE)
					alive++;
			if (alive == 0) {
				log_error(NULL, "no worker of the first generation became ready; exiting",
				          LF_INT("workers", s->target));
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
	sb_count_restart(s->sb, hung ? SB_RESTART_HUNG : WIFSIGNALED(status) ? SB_RESTART_CRASH : SB_RESTART_EXIT);
	uint64_t now = mono_ms();
	sl->crashes[sl->ncrash % (CRASH_LIMIT + 1)] = now;
	sl->ncrash++;
	int recent = 0;
	for (int i = 0; i < CRASH_LIMIT + 1 && i < sl->ncrash; i++)
		if (now - sl->crashes[i] <= CRASH_WINDOW_MS)
			recent++;
	if (WIFSIGNALED(status) && !hung)
		record_route_crash(s, route);
	sl->restarts_by[hung ? SUP_RESTART_HUNG : SUP_RESTART_CRASH]++;
	sl->last_crash = (struct sup_crash){.real_ms = sb_now_real_ms(),
	                                    .pid = pid,
	                                    .generation = gen,
	                                    .status = status,
	                                    .cause = hung ? SUP_RESTART_HUNG : SUP_RESTART_CRASH,
	                                    .up_ms = up};
	memcpy(sl->last_crash.route, route, sizeof(route));
	if (up >= BACKOFF_RESET_UP_MS || sl->backoff_ms == 0)
		sl->backoff_ms = backoff_base_ms(s->cfg);
	uint64_t delay = sl->backoff_ms;
	sl->backoff_ms = sl->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : sl->backoff_ms * 2;
	if (recent > CRASH_LIMIT) {
		sl->errored = 1;
		log_error(NULL,
		          "worker crashed more than 10 times in 60 s; marking it errored (resilctl restart to retry)",
		          LF_INT("worker", slot), LF_INT("workerPid", pid), LF_STR("status", how),
		          LF_INT("restarts", sl->restarts));
		notify_status(s);
		return;
	}
	log_error(NULL, hung ? "hung worker killed; restarting" : "worker died; restarting", LF_INT("worker", slot),
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
		if (!usercmd_reaped(s, pid, status))
			handle_exit(s, pid, status);
	}
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
		sl->recycle_off = 0;
		sl->recycle_backoff_ms = 0;
		sl->recycle_not_before = 0;
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
	if (!s->handed_over)
		sdn_send("STOPPING=1");
	/* Stop accepting at once, in every process: the listening socket is
	 * shared with the workers, and shutting it down (not just closing our
	 * descriptor) takes it out of the listen state, so a new connection is
	 * refused instead of waiting in a backlog nobody will accept from.
	 * (A binary upgrade that hands the socket on must not come here.) */
	if (!s->handed_over && s->listen_fd >= 0 && shutdown(s->listen_fd, SHUT_RD) < 0 && errno != ENOTCONN)
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

/* ------------------------------------------------------------ signals */

void restart_needed_list(const struct supervisor *s, char *out, size_t outlen)
{
	size_t len = 0;
	out[0] = '\0';
	for (int i = 0; i < s->nrestart_needed && i < CONFIG_RESTART_KEYS_MAX; i++) {
		int n = snprintf(out + len, outlen - len, "%s%s", i ? ", " : "", s->restart_needed[i]);
		if (n < 0 || (size_t)n >= outlen - len)
			break;
		len += (size_t)n;
	}
}

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
	if (nc->jwt_secret_generated && s->cfg->jwt_secret_generated) {
		/* Keep the development secret so tokens survive the reload. */
		memcpy(nc->jwt_secret, s->cfg->jwt_secret, sizeof(nc->jwt_secret));
		nc->jwt_secret_len = s->cfg->jwt_secret_len;
	}
	/* Keys read only at start keep their running values; say which ones
	 * the file changed instead of reporting a reload that did not apply. */
	s->nrestart_needed = config_restart_changes(nc, s->cfg, s->restart_needed, CONFIG_RESTART_KEYS_MAX);
	if (s->nrestart_needed > 0) {
		char list[128];
		restart_needed_list(s, list, sizeof(list));
		log_warn(
		    NULL,
		    "reload: these settings only take effect after a restart of resild; keeping the running values",
		    LF_STR("restartNeeded", list));
	}
	log_set_level(nc->log_level);
	recycle_reset(s); /* max_memory may have changed */
	/* A `resilctl scale` stays until the configured count itself changes. */
	int workers_changed = nc->workers != s->cfg->workers;
	int workers = nc->workers;
	free(s->cfg);
	s->cfg = nc;
	if (workers_changed && workers != s->target)
		scale_to(s, workers);
	else if (!workers_changed && workers != s->target)
		log_info(NULL, "reload keeps the scaled worker count (the configured workers did not change)",
		         LF_INT("workers", s->target), LF_INT("configured", workers));
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
		log_warn(NULL, "reload ignored: a reload or restart is already in progress",
		         LF_INT("generation", s->generation));
		if (c)
			ctl_reply_error(c, "a reload or restart is already in progress");
		return;
	}
	log_info(NULL, "reloading configuration", LF_INT("generation", s->generation));
	if (reload_config(s, err, sizeof(err)) < 0) {
		log_error(NULL, "reload rejected: invalid configuration; keeping the running workers",
		          LF_STR("error", err));
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
	case SIGUSR2: upgrade_start(s, NULL); break;
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

/* What the control socket shows (control.c renders it, see supervisor.h). */

static const char *db_kind(const struct resil_config *cfg)
{
	return strncmp(cfg->db, "mongodb", 7) == 0 ? "mongodb" : "sqlite";
}

void sup_overview(const struct supervisor *s, struct sup_overview *out)
{
	out->pid = getpid();
	out->uptime_s = (mono_ms() - s->started_ms) / 1000;
	out->listen = s->listen_desc;
	out->db_kind = db_kind(s->cfg);
	out->workers_target = s->target;
	out->generation = s->generation;
	out->state = s->stopping ? "stopping" : s->roll.active ? "reloading" : "running";
}

int sup_worker_row(const struct supervisor *s, int id, struct sup_worker_row *out)
{
	if (id < 0 || id >= s->target)
		return -1;
	const struct slot *sl = &s->slots[id];
	const struct proc *p = sl->proc >= 0 ? &s->procs[sl->proc] : NULL;
	memset(out, 0, sizeof(*out));
	out->id = id;
	out->restarts = sl->restarts;
	out->state = sl->errored              ? "errored"
	             : !p                     ? "stopped"
	             : p->state == P_STARTING ? "starting"
	             : p->state == P_DRAINING ? "draining"
	                                      : "ready";
	if (!p)
		return 0;
	out->pid = p->pid;
	out->uptime_s = (mono_ms() - p->started_ms) / 1000;
	out->cpu_pct = p->cpu_pct;
	out->rss_bytes = p->rss;
	out->generation = p->generation;
	out->sbe = &s->sb->entries[sl->proc];
	out->ready = p->state == P_READY;
	return 0;
}

const char *sup_restart_cause_name(int cause)
{
	static const char *const names[SUP_RESTART_CAUSES] = {"crash", "hung", "memory", "restart", "reload"};
	return cause >= 0 && cause < SUP_RESTART_CAUSES ? names[cause] : "?";
}

int sup_worker_detail(const struct supervisor *s, int id, struct sup_worker_detail *out)
{
	memset(out, 0, sizeof(*out));
	if (sup_worker_row(s, id, &out->row) < 0)
		return -1;
	const struct slot *sl = &s->slots[id];
	memcpy(out->restarts_by, sl->restarts_by, sizeof(out->restarts_by));
	out->last_crash = sl->last_crash;
	out->errored = sl->errored;
	out->restart_pending = sl->restart_scheduled;
	return 0;
}

int sup_serving_entries(const struct supervisor *s, const struct sb_entry **out, int max)
{
	int n = 0;
	for (int i = 0; i < SB_MAX_ENTRIES && n < max; i++)
		if (s->procs[i].state == P_READY)
			out[n++] = &s->sb->entries[i];
	return n;
}

int sup_crash_route(const struct supervisor *s, int i, const char **route, unsigned *count)
{
	if (i < 0 || i >= s->nroutes)
		return -1;
	*route = s->routes[i].route;
	*count = s->routes[i].count;
	return 0;
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

void sup_ctl_upgrade(struct supervisor *s, struct ctl_client *c)
{
	upgrade_start(s, c);
}

void supervisor_handover(struct supervisor *s)
{
	/* Nobody new talks to this one: the new supervisor answers on the
	 * control socket (the same file) from now on. */
	control_stop_accepting(s->ctl);
	begin_shutdown(s, 0);
}

int supervisor_handed_over(void)
{
	return g_sup && g_sup->handed_over;
}

void sup_ctl_stop(struct supervisor *s, struct ctl_client *c)
{
	ctl_reply_stopping(c, getpid());
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
	ctl_reply_scaled(c, n);
}

/* --------------------------------------------------------------- main */

/* The binary workers exec: the path this supervisor was started from, so
 * a binary replaced there (install, mv) is what the next worker runs. */
static void find_exe(struct supervisor *s)
{
	ssize_t n = readlink("/proc/self/exe", s->exe, sizeof(s->exe) - 1);
	s->exe[n > 0 ? n : 0] = '\0';
	if (n <= 0 || (size_t)n >= sizeof(s->exe) - 1 || s->exe[0] != '/') {
		s->exe[0] = '\0';
		log_warn(NULL, "cannot find resild's own binary: workers run the supervisor's image (a reload does not "
		               "pick up a rebuilt binary)");
	}
}

/* The new supervisor of an upgrade joins the old one's tables (the rate
 * limits and the counters carry on); a table of another layout is not
 * joined, and this one starts its own. */
static void adopt_tables(struct supervisor *s, const struct sup_handoff *h)
{
	if (h->sb_fd >= 0 && (s->sb = sb_attach(h->sb_fd)) != NULL)
		s->sb_fd = h->sb_fd;
	if (h->rl_fd >= 0 && (s->rl = rl_attach(h->rl_fd)) != NULL)
		s->rl_fd = h->rl_fd;
	const char *lost = !s->sb && h->sb_fd >= 0
	                       ? (!s->rl && h->rl_fd >= 0 ? "scoreboard, rate limits" : "scoreboard")
	                   : !s->rl && h->rl_fd >= 0 ? "rate limits"
	                                             : NULL;
	if (lost)
		log_warn(NULL, "binary upgrade: an old shared table has another layout; starting a new one",
		         LF_STR("tables", lost));
	if (!s->sb && h->sb_fd >= 0)
		close(h->sb_fd);
	if (!s->rl && h->rl_fd >= 0)
		close(h->rl_fd);
}

int supervisor_run(struct resil_config *cfg, int argc, char **argv, int listen_fd, const struct sup_handoff *h)
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
	s->sb_fd = s->rl_fd = -1;
	s->handoff_ready_fd = h && h->active ? h->ready_fd : -1;
	upgrade_init(&s->up);
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
	if (h && h->active)
		adopt_tables(s, h);
	if (s->sb) /* the old supervisor's: its generations go on */
		s->generation = atomic_load(&s->sb->hdr.generation) + 1;
	if (!s->sb)
		s->sb = sb_create_fd(&s->sb_fd);
	if (!s->rl)
		s->rl = rl_create_fd(0, &s->rl_fd);
	find_exe(s);
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
	s->ctl = control_open(s->base, s, cfg->control, h && h->active ? h->ctl_fd : -1, err, sizeof(err));
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
	usercmd_stop_all(s);
	control_close(s->ctl, !s->handed_over);
	upgrade_free(s);
	if (s->handoff_ready_fd >= 0)
		close(s->handoff_ready_fd);
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
	if (s->sb_fd >= 0)
		close(s->sb_fd);
	if (s->rl_fd >= 0)
		close(s->rl_fd);
	int rc = s->exit_code;
	log_info(NULL, "resild stopped", LF_INT("exitCode", rc));
	free(s->cfg);
	return rc;
}
