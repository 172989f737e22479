/* sup_state.h - the supervisor's state, shared by the files that make up
 * resild's supervisor and by nobody else (the rest of resild sees only
 * supervisor.h):
 *
 *   supervisor.c  the process table's state machine: slots, spawning,
 *                 readiness, exits and the restart policy, scaling,
 *                 shutdown, signals and reload, the control actions, main
 *   roll.c        rolling replacement of slots (reload, restart, recycle)
 *   monitor.c     the 250 ms tick: heartbeats, RSS, CPU; the systemd watchdog
 *   child.c       the worker side of the fork, up to worker_run()
 *   control.c     the control socket and every answer it renders
 *   usercmd.c     resilctl user create: the helper process that opens the store
 *
 * A process table entry (struct proc) has the same index as its scoreboard
 * entry. A logical slot (worker id 0..N-1) points to its serving process
 * and, while it is being replaced, to the starting one.
 */
#ifndef RESIL_SUP_STATE_H
#define RESIL_SUP_STATE_H

#include "config.h"
#include "scoreboard.h"
#include "supervisor.h"

#include <event2/util.h>
#include <stdint.h>
#include <sys/types.h>

struct event;
struct event_base;
struct ratelimit;
struct bus_hub;
struct control;
struct ctl_client;
struct usercmd;

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
	uint64_t fresh_rss; /* RSS when it reported ready, before it served (0: unknown) */
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
	/* Memory recycling (monitor.c): backs off like crash restarts; off
	 * once a fresh worker of this slot is already over max_memory. */
	uint64_t recycle_backoff_ms;
	uint64_t recycle_last_ms;    /* monotonic, 0: never */
	uint64_t recycle_not_before; /* monotonic ms */
	unsigned recycles;
	int recycle_off;
	/* resilctl describe: replacements by cause (enum sup_restart_cause)
	 * and the last unplanned exit. */
	unsigned restarts_by[SUP_RESTART_CAUSES];
	struct sup_crash last_crash; /* .real_ms 0: none yet */
};

struct rolling {
	int active;
	int is_reload;
	int cause; /* enum sb_restart_cause of the replacements (metrics) */
	int slots[SB_MAX_WORKERS];
	int nslots, pos;
	int done[SB_MAX_WORKERS];
	int ndone;
	struct ctl_client *client;
	struct event *timeout_ev;
	int failed;
};

/* A binary upgrade in progress (upgrade.c), seen from the old supervisor. */
struct upgrade {
	pid_t pid;   /* the new supervisor, 0: none */
	int exited;  /* reaped */
	int waiting; /* for its ready byte: not yet answered */
	int fd;      /* its ready pipe, -1: none */
	struct event *ev, *timer;
	struct ctl_client *client; /* resilctl upgrade, answered at the end */
	uint64_t kill_at_ms;       /* monotonic: SIGKILL it then if still there */
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
	int sb_fd, rl_fd;     /* their memfds, handed to every exec'd worker */
	char exe[4096];       /* the resild binary on disk that workers exec ("": none found) */
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
	/* Restart-only keys the last reload found changed (config.c names). */
	const char *restart_needed[CONFIG_RESTART_KEYS_MAX];
	int nrestart_needed;
	int memory_limit_reported; /* "max_memory below a fresh worker" logged */
	struct upgrade up;
	int handed_over;          /* a new supervisor took the sockets: leave them alone */
	int handoff_ready_fd;     /* new supervisor: tell the old one when all are ready (-1: done/none) */
	struct usercmd *usercmds; /* resilctl user create helpers running (usercmd.c) */
};

/* supervisor.c */
/* First restart (and memory recycle) delay: BACKOFF_MIN_MS, or
 * RESIL_TEST_BACKOFF_MS where test hooks are allowed. */
uint64_t backoff_base_ms(const struct resil_config *cfg);
/* monitor.c */
/* Let memory recycling run again on every slot (after a reload). */
void recycle_reset(struct supervisor *s);
/* Resident memory of pid in bytes from /proc. 0 or -1. */
int monitor_read_rss(pid_t pid, uint64_t *rss);
/* The last reload's restart-only keys as "listen, control" ("" if none). */
void restart_needed_list(const struct supervisor *s, char *out, size_t outlen);
/* Start a worker process for slot (as its replacement when replacement is
 * set); on failure the slot is left as it was and the error logged. */
void spawn(struct supervisor *s, int slot, int replacement);
/* Ask process idx to finish its work and exit (SIGTERM); logged with why. */
void drain_proc(struct supervisor *s, int idx, const char *why);
/* Tell systemd (when it listens) how many workers are ready. */
void notify_status(struct supervisor *s);

/* roll.c: one rolling replacement at a time, one slot after the other; the
 * new process must report ready before the old one is drained. */
/* Replace the given slots (all active ones when n < 0); c, if any, gets the
 * answer when done. Bumps the generation. -1 if one is already running. */
int roll_start(struct supervisor *s, int is_reload, const int *slots, int n, struct ctl_client *c);
/* The current slot's replacement is ready: go on with the next one. */
void roll_next(struct supervisor *s);
/* End the replacement (error NULL: success), answer its client. */
void roll_finish(struct supervisor *s, const char *error);
/* Listen timeout of the slot being replaced (arg: the supervisor). */
void roll_timeout_cb(evutil_socket_t fd, short what, void *arg);

/* upgrade.c */
void upgrade_init(struct upgrade *u);
void upgrade_free(struct supervisor *s);
/* Start a binary upgrade (c, if any, gets the answer at the end). 0, or -1
 * when refused or failed at once (c answered). */
int upgrade_start(struct supervisor *s, struct ctl_client *c);
/* pid was reaped: 1 if it was the new supervisor (handled), else 0. */
int upgrade_reaped(struct supervisor *s, pid_t pid, int status);
/* Every tick: SIGKILL a failed new supervisor that lingers; release the
 * scoreboard entries of processes of another supervisor that are gone. */
void upgrade_tick(struct supervisor *s);
/* New supervisor: every worker is ready; tell the old one. */
void upgrade_signal_ready(struct supervisor *s);
/* supervisor.c: the new supervisor serves: drain the workers and exit
 * without touching the listening and control sockets. */
void supervisor_handover(struct supervisor *s);
/* usercmd.c */
/* pid was a user create helper (reap() got its status): 1, else 0. */
int usercmd_reaped(struct supervisor *s, pid_t pid, int status);
/* At exit: kill and reap every helper, answer their clients. */
void usercmd_stop_all(struct supervisor *s);

/* monitor.c (arg: the supervisor) */
/* Every TICK_MS: sample CPU and RSS, kill hung workers, recycle the ones
 * over RESIL_MAX_MEMORY. */
void tick_cb(evutil_socket_t fd, short what, void *arg);
/* At half of WATCHDOG_USEC: WATCHDOG=1 (the loop turns). */
void watchdog_cb(evutil_socket_t fd, short what, void *arg);

#endif
