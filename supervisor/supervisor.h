/* supervisor.h - resild's master process: keeps N worker processes serving
 * one listening socket, whatever happens to any of them (SPEC section 3).
 *
 * The supervisor owns the process table (one logical slot per worker id,
 * each with its serving process and, during a rolling replacement, a
 * starting one), the scoreboard, the restart policy, reloads, shutdown, the
 * control socket and the systemd notifications. It never serves HTTP.
 */
#ifndef RESIL_SUPERVISOR_H
#define RESIL_SUPERVISOR_H

#include "config.h"

struct supervisor;
struct ctl_client;

/* Run the supervisor until it stops. cfg is the loaded configuration;
 * argc/argv are kept to re-read the configuration on reload. listen_fd is
 * already bound. Returns the process exit status. */
int supervisor_run(struct resil_config *cfg, int argc, char **argv, int listen_fd);

/* Used by the control socket (control.c). */
void sup_ctl_status(struct supervisor *s, struct ctl_client *c);
void sup_ctl_health(struct supervisor *s, struct ctl_client *c);
void sup_ctl_restart(struct supervisor *s, struct ctl_client *c, int target); /* -1 = all */
void sup_ctl_reload(struct supervisor *s, struct ctl_client *c);
void sup_ctl_stop(struct supervisor *s, struct ctl_client *c);
void sup_ctl_scale(struct supervisor *s, struct ctl_client *c, int n);

/* Control socket server (control.c). */
struct control;
struct event_base;
struct control *control_open(struct event_base *base, struct supervisor *s, const char *path, char *err,
                             size_t errlen);
void control_close(struct control *ctl);
/* Reply with a complete JSON object (one line) and close the client. A
 * client whose peer went away is released silently. */
void ctl_reply(struct ctl_client *c, const char *json, size_t len);
void ctl_reply_error(struct ctl_client *c, const char *message);
/* Keep the client waiting for a later reply; returns 0. */
int ctl_defer(struct ctl_client *c);

#endif
