/* upgrade.c - binary upgrade of the supervisor itself (SIGUSR2, `resilctl
 * upgrade`), the way nginx upgrades on the fly: the running supervisor
 * (the old one) forks and execs the resild binary on disk, handing it the
 * listening socket, the control socket, the scoreboard and the rate-limit
 * table. The new supervisor starts its own workers on the same sockets
 * (both generations serve side by side for a moment) and, once all of them
 * are ready, writes one byte on a pipe. Only then does the old one hand
 * over: it tells systemd the new main pid, stops answering on the control
 * socket, drains its own workers without touching the shared sockets, and
 * exits. If the new supervisor exits, or is not ready within its bound,
 * the old one kills it and goes on as before (the rollback): nothing was
 * handed over yet.
 *
 * The new supervisor's pid differs (its own children are its workers); the
 * packaged unit is Type=notify, and MAINPID= moves systemd's main pid.
 */
#include "autoconfig.h"

#include "config.h"
#include "log.h"
#include "proctitle.h"
#include "scoreboard.h"
#include "sdnotify.h"
#include "sup_state.h"
#include "supervisor.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* How long a new supervisor may take to have every worker ready. */
static int64_t upgrade_timeout_ms(const struct supervisor *s)
{
	int64_t ms = 2 * s->cfg->listen_timeout_ms;
	return ms < 10000 ? 10000 : ms;
}

static void clear_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFD);
	if (fl >= 0)
		fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC);
}

static void upgrade_clear(struct supervisor *s)
{
	struct upgrade *u = &s->up;
	if (u->ev)
		event_free(u->ev);
	if (u->timer)
		event_free(u->timer);
	if (u->fd >= 0)
		close(u->fd);
	u->ev = u->timer = NULL;
	u->fd = -1;
	u->client = NULL;
	u->waiting = 0;
}

/* The new supervisor failed: stop it, keep serving with this one. */
static void upgrade_fail(struct supervisor *s, const char *why)
{
	struct upgrade *u = &s->up;
	log_error(NULL, "binary upgrade failed: the running supervisor and its workers stay", LF_STR("reason", why),
	          LF_INT("newPid", u->pid));
	if (u->pid > 0 && !u->exited) {
		/* Immediate shutdown of it and its workers; SIGKILL in the tick if it lingers. */
		kill(u->pid, SIGQUIT);
		u->kill_at_ms = sb_now_mono_ms() + 3000;
	}
	if (u->client) {
		char msg[256];
		snprintf(msg, sizeof(msg), "%s; the running resild (pid %d) keeps serving", why, (int)getpid());
		ctl_reply_error(u->client, msg);
	}
	if (u->exited)
		u->pid = 0;
	upgrade_clear(s);
	sdn_send("READY=1\nSTATUS=binary upgrade failed; the running supervisor keeps serving");
}

/* The new supervisor has every worker ready: hand over and leave. */
static void upgrade_done(struct supervisor *s)
{
	struct upgrade *u = &s->up;
	pid_t pid = u->pid;
	char msg[64];
	snprintf(msg, sizeof(msg), "MAINPID=%d\nREADY=1", (int)pid);
	sdn_send(msg);
	log_info(NULL, "binary upgrade: the new supervisor serves; this one drains its workers and exits",
	         LF_INT("newPid", pid));
	if (u->client)
		ctl_reply_upgraded(u->client, pid);
	u->client = NULL;
	upgrade_clear(s);
	u->pid = 0; /* no longer ours to watch: it outlives us */
	s->handed_over = 1;
	supervisor_handover(s);
}

static void upgrade_pipe_cb(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *s = arg;
	(void)what;
	char b;
	ssize_t n = read(fd, &b, 1);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n == 1) {
		upgrade_done(s);
		return;
	}
	/* Closed without a word: it is exiting. Its exit status, reaped on
	 * SIGCHLD, is the answer (the timer still bounds the wait). */
	struct upgrade *u = &s->up;
	event_free(u->ev);
	u->ev = NULL;
	close(u->fd);
	u->fd = -1;
}

static void upgrade_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *s = arg;
	(void)fd;
	(void)what;
	char why[96];
	snprintf(why, sizeof(why), "the new resild was not ready within %lld ms", (long long)upgrade_timeout_ms(s));
	upgrade_fail(s, why);
}

/* In the forked child: exec the binary on disk as the new supervisor. */
static void __attribute__((noreturn)) exec_new_supervisor(struct supervisor *s, int wfd)
{
	int fds[] = {s->listen_fd, control_fd(s->ctl), s->sb_fd, s->rl_fd, wfd};
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (fds[i] > 2)
			clear_cloexec(fds[i]);
	char env[160];
	snprintf(env, sizeof(env), "1:%d:%d:%d:%d:%d:%d", s->listen_fd, control_fd(s->ctl), s->sb_fd, s->rl_fd, wfd,
	         (int)getppid());
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	setenv(UPGRADE_ENV, env, 1);
	execv(s->exe, s->argv);
	/* Nothing to log to safely here (the supervisor's logger is ours too,
	 * but a short line on stderr is enough): the old one sees the exit. */
	fprintf(stderr, "resild: binary upgrade: cannot exec %s: %s\n", s->exe, strerror(errno));
	_exit(127);
}

int upgrade_start(struct supervisor *s, struct ctl_client *c)
{
	struct upgrade *u = &s->up;
	const char *busy = NULL;
	if (s->stopping)
		busy = "resild is stopping";
	else if (u->pid > 0)
		busy = "an upgrade is already running";
	else if (s->roll.active)
		busy = "a reload or restart is running";
	else if (!s->exe[0])
		busy = "resild's own binary was not found at start";
	if (busy) {
		log_warn(NULL, "binary upgrade refused", LF_STR("reason", busy));
		if (c)
			ctl_reply_error(c, busy);
		return -1;
	}
	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		log_error(NULL, "binary upgrade: cannot create a pipe", LF_STR("error", strerror(errno)));
		if (c)
			ctl_reply_error(c, "cannot create a pipe");
		return -1;
	}
	log_info(NULL, "binary upgrade: starting a new supervisor from the binary on disk", LF_STR("binary", s->exe));
	sdn_send("RELOADING=1\nSTATUS=binary upgrade");
	log_flush();
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		close(pfd[0]);
		close(pfd[1]);
		log_error(NULL, "binary upgrade: fork failed", LF_STR("error", strerror(e)));
		if (c)
			ctl_reply_error(c, "fork failed");
		sdn_send("READY=1");
		return -1;
	}
	if (pid == 0) {
		close(pfd[0]);
		exec_new_supervisor(s, pfd[1]);
	}
	close(pfd[1]);
	u->pid = pid;
	u->exited = 0;
	u->kill_at_ms = 0;
	u->fd = pfd[0];
	u->client = c;
	u->waiting = 1;
	u->ev = event_new(s->base, u->fd, EV_READ | EV_PERSIST, upgrade_pipe_cb, s);
	u->timer = evtimer_new(s->base, upgrade_timeout_cb, s);
	int64_t ms = upgrade_timeout_ms(s);
	struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
	if (!u->ev || !u->timer || event_add(u->ev, NULL) < 0 || evtimer_add(u->timer, &tv) < 0) {
		upgrade_fail(s, "out of memory");
		return -1;
	}
	if (c)
		ctl_defer(c);
	return 0;
}

int upgrade_reaped(struct supervisor *s, pid_t pid, int status)
{
	struct upgrade *u = &s->up;
	if (pid <= 0 || pid != u->pid)
		return 0;
	u->exited = 1;
	if (u->waiting) {
		/* Still waiting for it: the exit is the answer. */
		char why[96];
		if (WIFEXITED(status))
			snprintf(why, sizeof(why), "the new resild exited with status %d", WEXITSTATUS(status));
		else
			snprintf(why, sizeof(why), "the new resild was killed by signal %d",
			         WIFSIGNALED(status) ? WTERMSIG(status) : 0);
		upgrade_fail(s, why);
	}
	u->pid = 0;
	return 1;
}

void upgrade_tick(struct supervisor *s)
{
	struct upgrade *u = &s->up;
	if (u->pid > 0 && !u->exited && u->kill_at_ms && sb_now_mono_ms() >= u->kill_at_ms) {
		kill(u->pid, SIGKILL);
		u->kill_at_ms = 0;
	}
	/* Entries this supervisor does not own belong to the other side of an
	 * upgrade (the old supervisor's draining workers, or a failed new
	 * one's); once their process is gone nobody else will free them. */
	int hwm = atomic_load(&s->sb->hdr.entries_hwm);
	for (int i = 0; i < hwm && i < SB_MAX_ENTRIES; i++) {
		if (s->procs[i].state != P_NONE || atomic_load(&s->sb->entries[i].state) == SB_FREE)
			continue;
		pid_t pid = atomic_load(&s->sb->entries[i].pid);
		if (pid > 0 && kill(pid, 0) < 0 && errno == ESRCH)
			sb_release(s->sb, i);
	}
}

void upgrade_init(struct upgrade *u)
{
	memset(u, 0, sizeof(*u));
	u->fd = -1;
}

void upgrade_free(struct supervisor *s)
{
	upgrade_clear(s);
}

/* ---- the new supervisor's side ---- */

int upgrade_handoff_parse(struct sup_handoff *h)
{
	const char *v = getenv(UPGRADE_ENV);
	int version = 0;
	memset(h, 0, sizeof(*h));
	if (!v)
		return 0;
	if (sscanf(v, "%d:%d:%d:%d:%d:%d:%d", &version, &h->listen_fd, &h->ctl_fd, &h->sb_fd, &h->rl_fd, &h->ready_fd,
	           &h->old_pid) != 7 ||
	    version != 1)
		return -1;
	proctitle_unsetenv(UPGRADE_ENV);
	int fds[] = {h->listen_fd, h->ctl_fd, h->sb_fd, h->rl_fd, h->ready_fd};
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (fds[i] > 2) {
			int fl = fcntl(fds[i], F_GETFD);
			if (fl < 0)
				return -1;
			fcntl(fds[i], F_SETFD, fl | FD_CLOEXEC);
		}
	h->active = 1;
	return 1;
}

void upgrade_signal_ready(struct supervisor *s)
{
	if (s->handoff_ready_fd < 0)
		return;
	char one = 1;
	ssize_t n;
	do
		n = write(s->handoff_ready_fd, &one, 1);
	while (n < 0 && errno == EINTR);
	close(s->handoff_ready_fd);
	s->handoff_ready_fd = -1;
	log_info(NULL, "binary upgrade: every worker is ready; the old supervisor hands over");
}
