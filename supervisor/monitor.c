/* monitor.c - what the supervisor watches on its 250 ms tick (see
 * sup_state.h): each worker's CPU and RSS from /proc (shown by resilctl
 * status), its heartbeat in the scoreboard (older than RESIL_WORKER_TIMEOUT:
 * SIGKILL, and the restart policy takes over), and RESIL_MAX_MEMORY (over
 * it: a graceful recycle through roll.c). Also the systemd watchdog ping.
 *
 * Recycling backs off per slot like crash restarts (the next recycle of a
 * slot waits 100 ms doubling to 15 s, back to 100 ms after 30 s without
 * one), and a limit below a fresh worker's RSS (its RSS when it reported
 * ready, sampled by ready_cb) is reported once and stops recycling for that slot
 * until the next reload: replacing it would only start another worker
 * just as big.
 */
#include "autoconfig.h"

#include "log.h"
#include "scoreboard.h"
#include "sdnotify.h"
#include "sup_state.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

int monitor_read_rss(pid_t pid, uint64_t *rss)
{
	uint64_t ticks;
	return read_proc_stat(pid, &ticks, rss);
}

void recycle_reset(struct supervisor *s)
{
	s->memory_limit_reported = 0;
	for (int i = 0; i < SB_MAX_WORKERS; i++) {
		s->slots[i].recycle_off = 0;
		s->slots[i].recycle_backoff_ms = 0;
		s->slots[i].recycle_last_ms = 0;
		s->slots[i].recycle_not_before = 0;
	}
	/* The reload's new workers are judged by their own fresh RSS. */
}

/* A fresh worker is already over the limit: no recycle can help. */
static void recycle_give_up(struct supervisor *s, struct proc *p, struct slot *sl, uint64_t rss)
{
	sl->recycle_off = 1;
	if (s->memory_limit_reported)
		return;
	s->memory_limit_reported = 1;
	log_error(NULL,
	          "max_memory is below the memory of a freshly started worker; not recycling it (raise max_memory "
	          "and reload)",
	          LF_INT("worker", p->slot), LF_INT("workerPid", p->pid), LF_INT("rssBytes", rss),
	          LF_INT("maxMemory", s->cfg->max_memory));
}

/* Over the limit: recycle now unless this slot's backoff says wait. */
static void recycle_maybe(struct supervisor *s, struct proc *p, struct slot *sl, uint64_t rss, uint64_t now)
{
	if (now < sl->recycle_not_before)
		return;
	if (sl->recycle_backoff_ms == 0 || now - sl->recycle_last_ms >= BACKOFF_RESET_UP_MS)
		sl->recycle_backoff_ms = backoff_base_ms(s->cfg);
	uint64_t wait = sl->recycle_backoff_ms;
	sl->recycle_backoff_ms = wait * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : wait * 2;
	sl->recycle_last_ms = now;
	sl->recycle_not_before = now + wait;
	sl->recycles++;
	log_warn(NULL, "worker over the memory limit; recycling it gracefully", LF_INT("worker", p->slot),
	         LF_INT("workerPid", p->pid), LF_INT("rssBytes", rss), LF_INT("maxMemory", s->cfg->max_memory),
	         LF_INT("recycles", sl->recycles), LF_INT("nextRecycleAfterMs", wait));
	int slot = p->slot;
	if (roll_start(s, 0, &slot, 1, NULL) == 0)
		s->roll.recycle = 1;
}

void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *s = arg;
	(void)fd;
	(void)what;
	uint64_t now = sb_now_mono_ms();
	long hz = sysconf(_SC_CLK_TCK);
	for (int i = 0; i < SB_MAX_ENTRIES; i++) {
		struct proc *p = &s->procs[i];
		if (p->state == P_NONE)
			continue;
		uint64_t ticks = 0, rss = 0;
		int sampled = read_proc_stat(p->pid, &ticks, &rss) == 0;
		if (sampled) {
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
			log_error(NULL, "worker heartbeat too old; killing it", LF_INT("worker", p->slot),
			          LF_INT("workerPid", p->pid), LF_INT("heartbeatAgeMs", now - hb),
			          LF_INT("timeoutMs", s->cfg->worker_timeout_ms));
			p->hung_killed = 1;
			kill(p->pid, SIGKILL);
			continue;
		}
		if (s->cfg->max_memory <= 0 || p->state != P_READY || !sampled)
			continue;
		struct slot *sl = &s->slots[p->slot];
		if (rss <= (uint64_t)s->cfg->max_memory || sl->recycle_off)
			continue;
		if (p->fresh_rss > (uint64_t)s->cfg->max_memory) {
			recycle_give_up(s, p, sl, rss);
			continue;
		}
		if (!s->roll.active && sl->proc == i && sl->pending < 0)
			recycle_maybe(s, p, sl, rss, now);
	}
}

void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	sdn_send("WATCHDOG=1");
}
