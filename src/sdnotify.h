/* sdnotify.h - the systemd notify protocol (sd_notify(3)) without
 * libsystemd: one datagram per message to $NOTIFY_SOCKET. */
#ifndef RESIL_SDNOTIFY_H
#define RESIL_SDNOTIFY_H

#include <stdint.h>

/* 1 if NOTIFY_SOCKET is set (and usable). */
int sdn_enabled(void);
/* Send a message such as "READY=1\nSTATUS=serving". 0 sent, 1 not enabled,
 * -1 error. */
int sdn_send(const char *msg);
/* Watchdog interval in microseconds from WATCHDOG_USEC (if WATCHDOG_PID
 * is unset or ours), else 0. */
uint64_t sdn_watchdog_usec(void);

#endif
