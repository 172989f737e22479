/* listen.c - listening sockets for TCP (IPv4/IPv6) and Unix paths. */
#include "autoconfig.h"

#include "listen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int parse_port(const char *s, int *port)
{
	char *end;
	if (!*s)
		return -1;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || v < 0 || v > 65535)
		return -1;
	*port = (int)v;
	return 0;
}

int listen_open(const char *addr, int backlog, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	memset(&ss, 0, sizeof(ss));
	int fam;
	if (strncmp(addr, "unix:", 5) == 0) {
		struct sockaddr_un *un = (struct sockaddr_un *)&ss;
		const char *path = addr + 5;
		if (!*path || strlen(path) >= sizeof(un->sun_path)) {
			snprintf(err, errlen, "listen: invalid unix socket path \"%s\"", path);
			return -1;
		}
		un->sun_family = AF_UNIX;
		memcpy(un->sun_path, path, strlen(path) + 1);
		sl = (socklen_t)sizeof(*un);
		fam = AF_UNIX;
		struct stat st;
		if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
			unlink(path);
	} else {
		char host[256];
		const char *colon;
		int port;
		if (addr[0] == '[') {
			const char *rb = strchr(addr, ']');
			if (!rb || rb[1] != ':' || (size_t)(rb - addr - 1) >= sizeof(host)) {
				snprintf(err, errlen, "listen: invalid address \"%s\" (expected [ipv6]:port)", addr);
				return -1;
			}
			memcpy(host, addr + 1, (size_t)(rb - addr - 1));
			host[rb - addr - 1] = '\0';
			colon = rb + 1;
		} else {
			colon = strrchr(addr, ':');
			if (!colon || (size_t)(colon - addr) >= sizeof(host)) {
				snprintf(err, errlen, "listen: invalid address \"%s\" (expected host:port)", addr);
				return -1;
			}
			memcpy(host, addr, (size_t)(colon - addr));
			host[colon - addr] = '\0';
		}
		if (parse_port(colon + 1, &port) < 0) {
			snprintf(err, errlen, "listen: invalid port in \"%s\"", addr);
			return -1;
		}
		struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
		if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
			in4->sin_family = AF_INET;
			in4->sin_port = htons((uint16_t)port);
			sl = sizeof(*in4);
			fam = AF_INET;
		} else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
			in6->sin6_family = AF_INET6;
			in6->sin6_port = htons((uint16_t)port);
			sl = sizeof(*in6);
			fam = AF_INET6;
		} else {
			snprintf(err, errlen, "listen: \"%s\" is not a numeric IPv4 or IPv6 address", host);
			return -1;
		}
	}
	int fd = socket(fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "listen: socket: %s", strerror(errno));
		return -1;
	}
	int one = 1;
	if (fam != AF_UNIX)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (fam == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sl) < 0) {
		snprintf(err, errlen, "listen: cannot bind %s: %s", addr, strerror(errno));
		close(fd);
		return -1;
	}
	if (listen(fd, backlog) < 0) {
		snprintf(err, errlen, "listen: %s: %s", addr, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

int listen_describe(int fd, char *out, size_t outlen)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
		return -1;
	char host[INET6_ADDRSTRLEN];
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &in4->sin_addr, host, sizeof(host));
		snprintf(out, outlen, "%s:%u", host, ntohs(in4->sin_port));
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		snprintf(out, outlen, "[%s]:%u", host, ntohs(in6->sin6_port));
	} else {
		struct sockaddr_un *un = (struct sockaddr_un *)&ss;
		snprintf(out, outlen, "unix:%s", un->sun_path);
	}
	return 0;
}
