/* roll.c - rolling replacement of worker slots: reload (SIGHUP, resilctl
 * reload), resilctl restart and the memory recycle all go through here.
 *
 * One slot at a time: a new process is started beside the serving one and
 * must report ready within the listen timeout; only then is the old one
 * drained (ready_cb in supervisor.c hands the slot over and calls
 * roll_next). A replacement that exits or times out ends the whole run
 * with an error and leaves the old process serving, so no connection is
 * ever refused. See sup_state.h.
 */
#include "autoconfig.h"

#include "log.h"
#include "scoreboard.h"
#include "sdnotify.h"
#include "sup_state.h"
#include "supervisor.h"

#include <event2/event.h>
#include <signal.h>
#include <string.h>
#include <sys/time.h>

void roll_timeout_cb(evutil_socket_t fd, short what, void *arg)
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
		          LF_INT("worker", slot), LF_INT("workerPid", p->pid));
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
	if (error)
		ctl_reply_error(c, error);
	else if (s->roll.is_reload)
		ctl_reply_reloaded(c, s->generation, s->restart_needed, s->nrestart_needed);
	else
		ctl_reply_restarted(c, s->roll.done, s->roll.ndone);
}

void roll_finish(struct supervisor *s, const char *error)
{
	if (!s->roll.active)
		return;
	if (s->roll.timeout_ev)
		evtimer_del(s->roll.timeout_ev);
	if (error)
		log_error(NULL, s->roll.is_reload ? "reload failed" : "restart failed", LF_STR("error", error));
	else
		log_info(NULL, s->roll.is_reload ? "reload complete" : "restart complete",
		         LF_INT("generation", s->generation), LF_INT("workers", s->roll.ndone));
	if (!error && s->roll.is_reload && s->nrestart_needed > 0) {
		char list[128];
		restart_needed_list(s, list, sizeof(list));
		log_warn(NULL, "reload complete, but a restart of resild is needed to apply some settings",
		         LF_STR("restartNeeded", list));
	}
	if (s->roll.is_reload && sdn_enabled())
		sdn_send("READY=1");
	roll_reply(s, error);
	s->roll.active = 0;
	notify_status(s);
}

void roll_next(struct supervisor *s)
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

int roll_start(struct supervisor *s, int is_reload, const int *slots, int n, struct ctl_client *c)
{
	if (s->roll.active)
		return -1;
	memset(s->roll.slots, 0, sizeof(s->roll.slots));
	s->roll.active = 1;
	s->roll.is_reload = is_reload;
	s->roll.recycle = 0;
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
