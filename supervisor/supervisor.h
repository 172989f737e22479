/* supervisor.h - resild's master process: keeps N worker processes serving
 * one listening socket, whatever happens to any of them (SPEC section 3).
 *
 * The supervisor owns the process table (one logical slot per worker id,
 * each with its serving process and, during a rolling replacement, a
 * starting one), the scoreboard, the restart policy, reloads, shutdown and
 * the systemd notifications. It never serves HTTP. The control socket
 * (control.c) reads its state through the view below and asks for changes
 * through the sup_ctl_* actions.
 */
#ifndef RESIL_SUPERVISOR_H
#define RESIL_SUPERVISOR_H

#include "config.h"
#include "scoreboard.h"

#include <stdint.h>
#include <sys/types.h>

struct supervisor;
struct ctl_client;
struct sb_entry;

/* What a binary upgrade hands the new supervisor (upgrade.c): descriptor
 * numbers, in UPGRADE_ENV. */
#define UPGRADE_ENV "RESIL_UPGRADE_HANDOFF"
struct sup_handoff {
	int active; /* this process is the new supervisor of an upgrade */
	int listen_fd, ctl_fd, sb_fd, rl_fd;
	int ready_fd; /* write one byte when every worker is ready */
	int old_pid;
};
/* Read UPGRADE_ENV: 1 (h filled, descriptors close-on-exec again), 0 when
 * absent, -1 when malformed. */
int upgrade_handoff_parse(struct sup_handoff *h);

/* Run the supervisor until it stops. cfg is the loaded configuration;
 * argc/argv are kept to re-read the configuration on reload (and to exec
 * the new binary on upgrade). listen_fd is already bound. h: NULL, or what
 * the old supervisor handed over. Returns the process exit status. */
int supervisor_run(struct resil_config *cfg, int argc, char **argv, int listen_fd, const struct sup_handoff *h);
/* After supervisor_run(): 1 when a new supervisor took over the sockets
 * (the caller must not unlink them). */
int supervisor_handed_over(void);

/* ---- The control socket (control.c) ----------------------------------
 *
 * control.c owns the socket and every byte of JSON it sends; the supervisor
 * owns the state. Requests that change something go to the sup_ctl_*
 * actions, which answer through the ctl_reply_* functions below, at once or
 * (restart, reload) when the rolling replacement is done. status and health
 * are rendered by control.c alone from the read-only view that follows. */

void sup_ctl_restart(struct supervisor *s, struct ctl_client *c, int target); /* -1 = all */
void sup_ctl_reload(struct supervisor *s, struct ctl_client *c);
void sup_ctl_stop(struct supervisor *s, struct ctl_client *c);
void sup_ctl_scale(struct supervisor *s, struct ctl_client *c, int n);
void sup_ctl_upgrade(struct supervisor *s, struct ctl_client *c);
/* resilctl user create (usercmd.c): any field may be NULL (then refused);
 * answered with the new id once a helper process has stored the user. */
void sup_ctl_user_create(struct supervisor *s, struct ctl_client *c, const char *email, const char *username,
                         const char *role, const char *password);

/* The supervisor as a whole. Strings point into the supervisor (or are
 * literals) and stay valid until it next changes state: render at once. */
struct sup_overview {
	pid_t pid;
	uint64_t uptime_s;
	const char *listen;  /* the bound address, as resolved */
	const char *db_kind; /* "sqlite" or "mongodb" */
	int workers_target;
	unsigned generation;
	const char *state; /* "running", "reloading" or "stopping" */
};
void sup_overview(const struct supervisor *s, struct sup_overview *out);

/* One logical worker (id 0..workers_target-1): its serving process, if any. */
struct sup_worker_row {
	int id;
	pid_t pid;         /* 0: no process */
	const char *state; /* "starting", "ready", "draining", "stopped" or "errored" */
	uint64_t uptime_s;
	unsigned restarts;
	double cpu_pct;
	uint64_t rss_bytes;
	unsigned generation;
	const struct sb_entry *sbe; /* its scoreboard entry; NULL: no process */
	int ready;                  /* serving and not draining */
};
/* 0, or -1 when id is not below workers_target. */
int sup_worker_row(const struct supervisor *s, int id, struct sup_worker_row *out);

/* Why a slot's process was replaced (resilctl describe). */
enum sup_restart_cause {
	SUP_RESTART_CRASH = 0, /* it died unasked (a signal or an exit) */
	SUP_RESTART_HUNG,      /* killed for a heartbeat older than worker_timeout */
	SUP_RESTART_MEMORY,    /* recycled for RSS over max_memory */
	SUP_RESTART_OPERATOR,  /* resilctl restart */
	SUP_RESTART_RELOAD,    /* SIGHUP or resilctl reload */
	SUP_RESTART_CAUSES
};
/* "crash", "hung", "memory", "restart", "reload". */
const char *sup_restart_cause_name(int cause);

/* A slot's last unplanned exit. */
struct sup_crash {
	int64_t real_ms; /* wall clock, ms since the epoch; 0: never */
	pid_t pid;
	unsigned generation;
	int status;               /* as waitpid() gave it */
	int cause;                /* SUP_RESTART_CRASH or SUP_RESTART_HUNG */
	uint64_t up_ms;           /* how long that process had run */
	char route[SB_ROUTE_LEN]; /* the request in flight ("" none): crash attribution */
};

/* One worker in detail (resilctl describe): its row plus its history. */
struct sup_worker_detail {
	struct sup_worker_row row;
	unsigned restarts_by[SUP_RESTART_CAUSES];
	struct sup_crash last_crash;
	int errored;
	int restart_pending; /* a crash restart is scheduled (backing off) */
};
/* 0, or -1 when id is not below workers_target. */
int sup_worker_detail(const struct supervisor *s, int id, struct sup_worker_detail *out);

/* The scoreboard entries of every process that serves now (ready, not
 * draining), for aggregates; returns how many were stored (at most max). */
int sup_serving_entries(const struct supervisor *s, const struct sb_entry **out, int max);

/* Entry i of the crashes-by-route table: 0, or -1 past its end. */
int sup_crash_route(const struct supervisor *s, int i, const char **route, unsigned *count);

/* Control socket server. */
struct control;
struct event_base;
/* fd >= 0: adopt that listening socket (a binary upgrade's) instead of
 * binding path. */
struct control *control_open(struct event_base *base, struct supervisor *s, const char *path, int fd, char *err,
                             size_t errlen);
/* Close; unlink_path 0 leaves the socket file to the supervisor that took it. */
void control_close(struct control *ctl, int unlink_path);
int control_fd(const struct control *ctl);
/* Accept no new clients (the ones connected still get their answers). */
void control_stop_accepting(struct control *ctl);

/* Answers. Each sends one JSON line and closes the client; a client whose
 * peer went away is released silently. */
void ctl_reply_error(struct ctl_client *c, const char *message);
void ctl_reply_stopping(struct ctl_client *c, pid_t pid);
void ctl_reply_scaled(struct ctl_client *c, int workers);
/* names[0..n): restart-only keys the reload could not apply ("restart_needed"). */
void ctl_reply_reloaded(struct ctl_client *c, unsigned generation, const char *const *names, int n);
void ctl_reply_restarted(struct ctl_client *c, const int *ids, int n);
void ctl_reply_upgraded(struct ctl_client *c, pid_t pid);
/* user create: {"ok": true, "id": id} */
void ctl_reply_user_created(struct ctl_client *c, const char *id);
/* Keep the client waiting for a later answer; returns 0. */
int ctl_defer(struct ctl_client *c);

#endif
