/* listen.h - open the listening socket described by RESIL_LISTEN
 * ("127.0.0.1:8080", "[::1]:8080", "unix:/path"). Bound once by the
 * supervisor before fork; workers inherit it. */
#ifndef RESIL_LISTEN_H
#define RESIL_LISTEN_H

#include <stddef.h>

/* Returns a non-blocking, close-on-exec listening fd, or -1 with a
 * one-line reason in err. For unix: a stale socket file is replaced. */
int listen_open(const char *addr, int backlog, char *err, size_t errlen);
/* The actual bound address ("127.0.0.1:41234"), useful with port 0. */
int listen_describe(int fd, char *out, size_t outlen);

#endif
