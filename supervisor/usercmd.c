/* usercmd.c - `resilctl user create` on the supervisor's side: a
 * short-lived helper process per request (see workers/usercreate.h).
 *
 * The supervisor never opens the store: libmongoc pools, SQLite handles and
 * the job pool's threads exist only after a fork. So the control request is
 * checked here (no I/O), then a helper is forked that opens the store as a
 * worker does, inserts the user and writes one line on a pipe. The pipe is
 * watched by an event on the supervisor's loop, the helper is reaped by the
 * SIGCHLD path (reap() in supervisor.c hands its pid here), and the client
 * is answered once both happened, or at the timeout (the helper is then
 * killed and still reaped). Nothing blocks the loop; the password is wiped
 * in this process as soon as the fork is done and is never logged, nor is
 * the e-mail (PII): the log line names the new id and its role.
 */
#include "autoconfig.h"

#include "child.h"
#include "log.h"
#include "proctitle.h"
#include "sup_state.h"
#include "supervisor.h"
#include "usercreate.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define USERCMD_MAX 4            /* helpers at once (argon2id takes 64 MiB each) */
#define USERCMD_TIMEOUT_MS 60000 /* the store's open and insert take far less */

struct usercmd {
	struct usercmd *next;
	struct supervisor *sup;
	pid_t pid;
	int fd; /* read end of the helper's pipe, -1 once at EOF */
	struct event *read_ev;
	struct event *timer_ev;
	struct ctl_client *client; /* NULL once answered */
	char role[16];
	char buf[USERCREATE_ANSWER_MAX];
	size_t len;
	int reaped;
	int status;
};

static void usercmd_free(struct usercmd *u)
{
	struct usercmd **pp = &u->sup->usercmds;
	while (*pp && *pp != u)
		pp = &(*pp)->next;
	if (*pp)
		*pp = u->next;
	if (u->read_ev)
		event_free(u->read_ev);
	if (u->timer_ev)
		event_free(u->timer_ev);
	if (u->fd >= 0)
		close(u->fd);
	free(u);
}

static void answer(struct usercmd *u, const char *error)
{
	struct ctl_client *c = u->client;
	u->client = NULL;
	if (c && error)
		ctl_reply_error(c, error);
	else if (c)
		ctl_reply_user_created(c, u->buf);
}

/* Both the line (or EOF) and the exit are in: answer and forget it. */
static void finish(struct usercmd *u)
{
	if (u->fd >= 0 || !u->reaped)
		return;
	char id[25], err[USERCREATE_ANSWER_MAX + 32];
	if (u->len == 0) {
		if (WIFSIGNALED(u->status))
			snprintf(err, sizeof(err), "user create failed: the helper process died (signal %d)",
			         WTERMSIG(u->status));
		else
			snprintf(err, sizeof(err), "user create failed: the helper process exited with status %d",
			         WIFEXITED(u->status) ? WEXITSTATUS(u->status) : -1);
		log_error(NULL, "user create failed", LF_STR("error", err));
		answer(u, err);
	} else if (usercreate_answer(u->buf, u->len, id, err, sizeof(err)) < 0) {
		log_warn(NULL, "user create refused", LF_STR("reason", err), LF_STR("role", u->role));
		answer(u, err);
	} else {
		log_info(NULL, "user created by the operator", LF_STR("userId", id), LF_STR("role", u->role));
		memcpy(u->buf, id, sizeof(id));
		answer(u, NULL);
	}
	usercmd_free(u);
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct usercmd *u = arg;
	(void)what;
	ssize_t n;
	do
		n = read(fd, u->buf + u->len, sizeof(u->buf) - 1 - u->len);
	while (n < 0 && errno == EINTR);
	if (n < 0 && errno == EAGAIN)
		return;
	if (n > 0) {
		u->len += (size_t)n;
		if (u->len < sizeof(u->buf) - 1)
			return; /* more may come; EOF ends it */
	}
	/* EOF, an error, or a full buffer: the line is what we have. */
	event_free(u->read_ev);
	u->read_ev = NULL;
	close(u->fd);
	u->fd = -1;
	finish(u);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct usercmd *u = arg;
	(void)fd;
	(void)what;
	log_error(NULL, "user create: the helper process did not finish in time; killing it",
	          LF_INT("helperPid", u->pid), LF_INT("timeoutMs", USERCMD_TIMEOUT_MS));
	answer(u, "user create timed out (see resild's log); the user may or may not exist");
	kill(u->pid, SIGKILL); /* reaped and freed as usual */
}

/* The helper, right after fork(): leave the supervisor's signals and
 * descriptors alone, become the workers' user, create, exit. */
static void __attribute__((noreturn)) helper_main(struct supervisor *s, struct usercreate_req *req, int wfd)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	for (int sig = 1; sig < NSIG; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			sigaction(sig, &sa, NULL); /* libevent's handlers would write to the supervisor's pipe */
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
	int keep[2] = {wfd, log_file_fd()};
	child_close_fds_except(keep, 2);
	proctitle_set("resild: user create");
	int rc = 1;
	if (child_drop_privileges(s->cfg) == 0)
		rc = usercreate_run(s->cfg, req, wfd);
	usercreate_wipe(req);
	close(wfd);
	log_flush();
	_exit(rc);
}

void sup_ctl_user_create(struct supervisor *s, struct ctl_client *c, const char *email, const char *username,
                         const char *role, const char *password)
{
	if (s->stopping) {
		ctl_reply_error(c, "shutting down");
		return;
	}
	int n = 0;
	for (struct usercmd *u = s->usercmds; u; u = u->next)
		n++;
	if (n >= USERCMD_MAX) {
		ctl_reply_error(c, "too many user creations in progress; try again");
		return;
	}
	struct usercreate_req req;
	char err[512];
	if (usercreate_check(email, username, role, password, &req, err, sizeof(err)) < 0) {
		ctl_reply_error(c, err);
		return;
	}
	struct usercmd *u = calloc(1, sizeof(*u));
	int pfd[2] = {-1, -1};
	if (!u || pipe2(pfd, O_CLOEXEC) < 0) {
		log_error(NULL, "user create: cannot start the helper", LF_STR("error", strerror(errno)));
		ctl_reply_error(c, "cannot start the helper process (see resild's log)");
		free(u);
		usercreate_wipe(&req);
		return;
	}
	u->sup = s;
	u->fd = pfd[0];
	snprintf(u->role, sizeof(u->role), "%s", req.role);
	u->read_ev = event_new(s->base, pfd[0], EV_READ | EV_PERSIST, read_cb, u);
	u->timer_ev = evtimer_new(s->base, timeout_cb, u);
	if (!u->read_ev || !u->timer_ev || fcntl(pfd[0], F_SETFL, O_NONBLOCK) < 0) {
		ctl_reply_error(c, "out of memory");
		close(pfd[1]);
		usercmd_free(u); /* not linked yet: frees the events and the read end */
		usercreate_wipe(&req);
		return;
	}
	log_flush();
	pid_t pid = fork();
	if (pid == 0) {
		/* The child's copy of u: neither event was added to the loop yet,
		 * so freeing them touches nothing of the supervisor's; this also
		 * closes the read end. */
		usercmd_free(u);
		helper_main(s, &req, pfd[1]);
	}
	usercreate_wipe(&req);
	close(pfd[1]);
	if (pid < 0) {
		log_error(NULL, "user create: fork failed", LF_STR("error", strerror(errno)));
		ctl_reply_error(c, "cannot start the helper process (see resild's log)");
		usercmd_free(u);
		return;
	}
	u->pid = pid;
	u->client = c;
	u->next = s->usercmds;
	s->usercmds = u;
	ctl_defer(c);
	event_add(u->read_ev, NULL);
	struct timeval tv = {USERCMD_TIMEOUT_MS / 1000, (USERCMD_TIMEOUT_MS % 1000) * 1000};
	evtimer_add(u->timer_ev, &tv);
	log_info(NULL, "user create: helper started", LF_INT("helperPid", pid), LF_STR("role", u->role));
}

int usercmd_reaped(struct supervisor *s, pid_t pid, int status)
{
	for (struct usercmd *u = s->usercmds; u; u = u->next) {
		if (u->pid != pid)
			continue;
		u->reaped = 1;
		u->status = status;
		evtimer_del(u->timer_ev);
		finish(u);
		return 1;
	}
	return 0;
}

void usercmd_stop_all(struct supervisor *s)
{
	while (s->usercmds) {
		struct usercmd *u = s->usercmds;
		answer(u, "resild is shutting down");
		if (!u->reaped) {
			kill(u->pid, SIGKILL);
			while (waitpid(u->pid, NULL, 0) < 0 && errno == EINTR)
				;
		}
		usercmd_free(u);
	}
}
