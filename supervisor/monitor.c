/* monitor.c - what the supervisor watches on its 250 ms tick (see
 * sup_state.h): each worker's CPU and RSS from /proc (shown by resilctl
 * status), its heartbeat in the scoreboard (older than RESIL_WORKER_TIMEOUT:
 * SIGKILL, and the restart policy takes over), and RESIL_MAX_MEMORY (over
 * it: a graceful recycle through roll.c). Also the systemd watchdog ping.
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
			log_error(NULL, "worker heartbeat too old; killing it", LF_INT("worker", p->slot),
			          LF_INT("workerPid", p->pid), LF_INT("heartbeatAgeMs", now - hb),
			          LF_INT("timeoutMs", s->cfg->worker_timeout_ms));
			p->hung_killed = 1;
			kill(p->pid, SIGKILL);
			continue;
		}
		if (s->cfg->max_memory > 0 && p->state == P_READY && rss > (uint64_t)s->cfg->max_memory &&
		    !s->roll.active && s->slots[p->slot].proc == i && s->slots[p->slot].pending < 0) {
			log_warn(NULL, "worker over the memory limit; recycling it gracefully",
			         LF_INT("worker", p->slot), LF_INT("workerPid", p->pid), LF_INT("rssBytes", rss),
			         LF_INT("maxMemory", s->cfg->max_memory));
			int slot = p->slot;
			roll_start(s, 0, &slot, 1, NULL);
		}
	}
}

void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	sdn_send("WATCHDOG=1");
}
