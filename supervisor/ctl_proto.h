/* ctl_proto.h - the control protocol between resild and resilctl, in one
 * place: the client connects to the Unix stream socket, writes ONE request
 * (a JSON object on a single line ending in "\n"), reads ONE JSON line
 * back, and the server closes. Every answer carries "ok"; a failure is
 * {"ok":false,"error":"..."}. Both sides include this header so the
 * command names, field names and limits cannot drift apart.
 */
#ifndef RESIL_CTL_PROTO_H
#define RESIL_CTL_PROTO_H

/* Socket location when neither -s / --control nor RESIL_CONTROL is given:
 * $RUNTIME_DIRECTORY (its first entry, systemd separates several with
 * ':') plus CTL_RUNTIME_SOCKET_NAME, else (resilctl only) the packaged
 * unit's CTL_PACKAGED_SOCKET if it exists, else CTL_DEFAULT_SOCKET. */
#define CTL_ENV_SOCKET "RESIL_CONTROL"
#define CTL_RUNTIME_SOCKET_NAME "control.sock"
#define CTL_PACKAGED_SOCKET "/run/resil/control.sock" /* etc/resild.service.in */
#define CTL_DEFAULT_SOCKET "./resild.sock"

/* Request: {"cmd": NAME, ...arguments} */
#define CTL_KEY_CMD "cmd"
#define CTL_CMD_STATUS "status"     /* answer: supervisor, workers, crashes_by_route */
#define CTL_CMD_HEALTH "health"     /* answer: status, checks */
#define CTL_CMD_RESTART "restart"   /* "target": "all" or a worker id; answered when done: restarted [ids] */
#define CTL_CMD_RELOAD "reload"     /* answered when done: generation, restart_needed [keys] */
#define CTL_CMD_STOP "stop"         /* answered at once with the supervisor's pid, then resild stops */
#define CTL_CMD_SCALE "scale"       /* "workers": N; answer: workers */
#define CTL_CMD_DESCRIBE "describe" /* "id": a worker id; answer: worker {...} */
/* "email", "username", "role", "password" (over this 0600, owner-checked
 * socket only; never on a command line); answered when the user is stored:
 * id. A helper process opens the store, the supervisor never does. */
#define CTL_CMD_USER_CREATE "user_create"
#define CTL_CMD_UPGRADE "upgrade" /* answered when done: pid (the new supervisor's) */

/* Request arguments and answer fields. */
#define CTL_KEY_TARGET "target"
#define CTL_TARGET_ALL "all"
#define CTL_KEY_WORKERS "workers"
#define CTL_KEY_OK "ok"
#define CTL_KEY_ERROR "error"
#define CTL_KEY_PID "pid"
#define CTL_KEY_RESTARTED "restarted"
#define CTL_KEY_GENERATION "generation"
#define CTL_KEY_RESTART_NEEDED "restart_needed" /* reload: changed keys only a restart applies */
#define CTL_KEY_STATUS "status"
#define CTL_KEY_CHECKS "checks"
#define CTL_KEY_SUPERVISOR "supervisor"
#define CTL_KEY_CRASHES "crashes_by_route"
#define CTL_KEY_ID "id"
#define CTL_KEY_WORKER "worker"
#define CTL_KEY_EMAIL "email"
#define CTL_KEY_USERNAME "username"
#define CTL_KEY_ROLE "role"
#define CTL_KEY_PASSWORD "password"

/* Values of "status" in the health answer. */
#define CTL_HEALTH_HEALTHY "healthy"
#define CTL_HEALTH_DEGRADED "degraded"
#define CTL_HEALTH_DOWN "down"

/* Limits: a request is tiny; a status answer for 256 workers with their
 * circuits and a crash table stays far below CTL_MAX_RESPONSE. */
#define CTL_MAX_REQUEST 4096
#define CTL_MAX_RESPONSE (4 * 1024 * 1024)
#define CTL_SCALE_MIN 1
#define CTL_SCALE_MAX 256

/* resilctl exit statuses (documented in resilctl(8)). */
enum ctl_exit {
	CTL_EXIT_OK = 0,
	CTL_EXIT_FAILED = 1,      /* the answer was ok:false; health: degraded */
	CTL_EXIT_DOWN = 2,        /* health: down */
	CTL_EXIT_NOT_RUNNING = 3, /* no control socket, or nobody listening on it */
	CTL_EXIT_PROTOCOL = 4,    /* bad or missing answer, timeout, I/O error */
	CTL_EXIT_USAGE = 64       /* bad command line (EX_USAGE) */
};

#endif
