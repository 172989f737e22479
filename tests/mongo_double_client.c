/* mongo_double_client.c - test-side helpers for the MongoDB test double.
 *
 * Forks and execs tests/mongo_double, waits for the port file it writes into a
 * private temp directory (removed as soon as it has been read), and talks to
 * its abstract-namespace control socket one line at a time (see
 * mongo_double.h). Linked into tests only.
 */
#define _GNU_SOURCE
#include "mongo_double.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MDOUBLE_START_WAIT_MS 10000
#define MDOUBLE_STOP_WAIT_MS 5000
#define MDOUBLE_DEFAULT_LIFETIME 600

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static int try_binary(char *out, size_t len, const char *dir, const char *name)
{
	int n = snprintf(out, len, "%s%s%s", dir, dir[0] ? "/" : "", name);

	return n > 0 && (size_t)n < len && access(out, X_OK) == 0 ? 0 : -1;
}

/* Locates the mongo_double executable (see mongo_double.h for the order). */
static int find_binary(char *out, size_t len)
{
	const char *env = getenv("MONGO_DOUBLE");
	char self[PATH_MAX];
	ssize_t n;

	if (env && env[0])
		return try_binary(out, len, "", env);
	if (try_binary(out, len, "tests", "mongo_double") == 0)
		return 0;
	n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n > 0) {
		char *slash;

		self[n] = '\0';
		slash = strrchr(self, '/');
		if (slash) {
			*slash = '\0';
			if (try_binary(out, len, self, "mongo_double") == 0)
				return 0;
			slash = strrchr(self, '/');
			if (slash && strcmp(slash, "/.libs") == 0) {
				*slash = '\0';
				if (try_binary(out, len, self, "mongo_double") == 0)
					return 0;
			}
		}
	}
	return try_binary(out, len, ".", "mongo_double");
}

/* Removes the start-up directory and its port file once they are no longer needed. */
static void remove_dir(struct mdouble *md)
{
	char path[96];

	if (!md->dir[0])
		return;
	snprintf(path, sizeof path, "%s/port", md->dir);
	unlink(path);
	snprintf(path, sizeof path, "%s/port.tmp", md->dir);
	unlink(path);
	rmdir(md->dir);
	md->dir[0] = '\0';
}

static int read_port(const char *path)
{
	FILE *f = fopen(path, "re");
	int port = 0;

	if (!f)
		return 0;
	if (fscanf(f, "%d", &port) != 1 || port <= 0 || port > 65535)
		port = 0;
	fclose(f);
	return port;
}

int mdouble_start_lifetime(struct mdouble *md, int max_lifetime_s)
{
	char bin[PATH_MAX], port_file[96], lifetime[16];
	char *argv[12];
	int argc = 0;
	pid_t parent = getpid(), pid;

	memset(md, 0, sizeof *md);
	if (max_lifetime_s <= 0 || find_binary(bin, sizeof bin) != 0)
		return -1;
	strcpy(md->dir, "/tmp/mdouble.XXXXXX");
	if (!mkdtemp(md->dir)) {
		md->dir[0] = '\0';
		return -1;
	}
	snprintf(port_file, sizeof port_file, "%s/port", md->dir);
	/* Abstract socket: nothing to clean up on disk, even if the test crashes. */
	snprintf(md->control, sizeof md->control, "@%s.%ld", md->dir + 5, (long)parent);
	snprintf(lifetime, sizeof lifetime, "%d", max_lifetime_s);
	argv[argc++] = bin;
	argv[argc++] = "--port";
	argv[argc++] = "0";
	argv[argc++] = "--port-file";
	argv[argc++] = port_file;
	argv[argc++] = "--control";
	argv[argc++] = md->control;
	argv[argc++] = "--max-lifetime";
	argv[argc++] = lifetime;
	if (getenv("MONGO_DOUBLE_VERBOSE"))
		argv[argc++] = "--verbose";
	argv[argc] = NULL;

	pid = fork();
	if (pid < 0) {
		mdouble_stop(md);
		return -1;
	}
	if (pid == 0) {
		int fd = open("/dev/null", O_RDONLY);

		/* The double must never outlive the test that started it. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(127);
		if (fd > 0) {
			dup2(fd, 0);
			close(fd);
		}
		execv(bin, argv);
		_exit(127);
	}
	md->pid = pid;
	for (int waited = 0; waited < MDOUBLE_START_WAIT_MS; waited += 10) {
		int port = read_port(port_file);

		if (port > 0) {
			md->port = port;
			snprintf(md->uri, sizeof md->uri,
			         "mongodb://127.0.0.1:%d/resil_test?serverSelectionTimeoutMS=1000", port);
			remove_dir(md);
			return 0;
		}
		if (waitpid(pid, NULL, WNOHANG) == pid) {
			md->pid = 0;
			break;
		}
		sleep_ms(10);
	}
	mdouble_stop(md);
	return -1;
}

int mdouble_start(struct mdouble *md)
{
	return mdouble_start_lifetime(md, MDOUBLE_DEFAULT_LIFETIME);
}

static int send_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int mdouble_query(struct mdouble *md, const char *line, char *out, size_t outlen)
{
	struct sockaddr_un sa;
	size_t clen = strlen(md->control);
	struct timeval tv = {5, 0};
	char buf[1024];
	size_t got = 0;
	char *nl;
	int fd, rc = -1;

	if (out && outlen)
		out[0] = '\0';
	if (md->pid <= 0 || strchr(line, '\n') || clen < 2 || clen >= sizeof sa.sun_path)
		return -1;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	memset(&sa, 0, sizeof sa);
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, md->control, clen);
	if (md->control[0] == '@')
		sa.sun_path[0] = '\0';
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0 ||
	    connect(fd, (struct sockaddr *)&sa,
	            (socklen_t)(offsetof(struct sockaddr_un, sun_path) + clen + (md->control[0] != '@'))) != 0 ||
	    send_all(fd, line, strlen(line)) != 0 || send_all(fd, "\n", 1) != 0) {
		close(fd);
		return -1;
	}
	while (got < sizeof buf - 1 && !memchr(buf, '\n', got)) {
		ssize_t n = recv(fd, buf + got, sizeof buf - 1 - got, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	buf[got] = '\0';
	nl = strchr(buf, '\n');
	if (nl) {
		*nl = '\0';
		rc = strncmp(buf, "ok", 2) == 0 ? 0 : -1;
		if (out && outlen)
			snprintf(out, outlen, "%s", buf);
	}
	return rc;
}

int mdouble_cmd(struct mdouble *md, const char *line)
{
	return mdouble_query(md, line, NULL, 0);
}

long long mdouble_stat(struct mdouble *md, const char *name)
{
	char reply[1024], pattern[64];
	const char *p;

	if (mdouble_query(md, "stats", reply, sizeof reply) != 0)
		return -1;
	if ((size_t)snprintf(pattern, sizeof pattern, " %s=", name) >= sizeof pattern)
		return -1;
	p = strstr(reply, pattern);
	return p ? strtoll(p + strlen(pattern), NULL, 10) : 0;
}

void mdouble_stop(struct mdouble *md)
{
	if (md->pid > 0) {
		int status;

		kill(md->pid, SIGTERM);
		for (int waited = 0;; waited += 10) {
			pid_t r = waitpid(md->pid, &status, WNOHANG);

			if (r == md->pid || (r < 0 && errno != EINTR))
				break;
			if (waited >= MDOUBLE_STOP_WAIT_MS) {
				kill(md->pid, SIGKILL);
				while (waitpid(md->pid, &status, 0) < 0 && errno == EINTR)
					;
				break;
			}
			sleep_ms(10);
		}
		md->pid = 0;
	}
	remove_dir(md);
}
