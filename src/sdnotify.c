/* sdnotify.c - send systemd notifications over a Unix datagram socket.
 * NOTIFY_SOCKET may name a path or, starting with '@', an abstract socket. */
#include "sdnotify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int sdn_enabled(void)
{
	const char *p = getenv("NOTIFY_SOCKET");
	return p && (p[0] == '/' || p[0] == '@') && strlen(p) < sizeof(((struct sockaddr_un *)0)->sun_path);
}

int sdn_send(const char *msg)
{
	if (!sdn_enabled())
		return 1;
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un un;
	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	size_t len = strlen(path);
	memcpy(un.sun_path, path, len);
	if (un.sun_path[0] == '@')
		un.sun_path[0] = '\0';
	socklen_t sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	ssize_t n;
	do
		n = sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&un, sl);
	while (n < 0 && errno == EINTR);
	close(fd);
	return n < 0 ? -1 : 0;
}

uint64_t sdn_watchdog_usec(void)
{
	const char *u = getenv("WATCHDOG_USEC");
	if (!u)
		return 0;
	const char *wp = getenv("WATCHDOG_PID");
	if (wp && strtol(wp, NULL, 10) != (long)getpid())
		return 0;
	char *end;
	unsigned long long v = strtoull(u, &end, 10);
	if (*end || v == 0)
		return 0;
	return (uint64_t)v;
}
