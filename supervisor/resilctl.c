/* resilctl.c - the operator CLI of resild (SPEC §4). One run sends one
 * request over resild's Unix control socket (protocol in ctl_proto.h),
 * waits for the one-line JSON answer within --timeout, and renders it:
 * a pm2-like table for status, a one-line outcome for everything else,
 * or the answer minus "ok" with --json. The exit status tells scripts what
 * happened (see enum ctl_exit); "stop" also waits for resild to be gone.
 */
#include "ctl_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.1.0"
#endif

/* Longest password line read (bytes, newline excluded): resild's rule is
 * 8-128 characters, at most 4 bytes each. */
#define PW_BUF (128 * 4 + 1)

enum cmd {
	CMD_STATUS,
	CMD_HEALTH,
	CMD_RESTART,
	CMD_RELOAD,
	CMD_STOP,
	CMD_SCALE,
	CMD_DESCRIBE,
	CMD_USER_CREATE,
	CMD_UPGRADE
};

static const struct {
	const char *name; /* on the wire */
	const char *cli;  /* on the command line: one word, or two ("user create") */
	double timeout_s; /* default bound of the whole command */
} cmds[] = {
    [CMD_STATUS] = {CTL_CMD_STATUS, "status", 10},
    [CMD_HEALTH] = {CTL_CMD_HEALTH, "health", 10},
    [CMD_RESTART] = {CTL_CMD_RESTART, "restart", 120},
    [CMD_RELOAD] = {CTL_CMD_RELOAD, "reload", 120},
    [CMD_STOP] = {CTL_CMD_STOP, "stop", 60},
    [CMD_SCALE] = {CTL_CMD_SCALE, "scale", 10},
    [CMD_DESCRIBE] = {CTL_CMD_DESCRIBE, "describe", 10},
    [CMD_USER_CREATE] = {CTL_CMD_USER_CREATE, "user create", 90},
    [CMD_UPGRADE] = {CTL_CMD_UPGRADE, "upgrade", 120},
};
#define NCMDS (sizeof cmds / sizeof cmds[0])

struct opts {
	const char *socket; /* NULL: the default rule */
	double timeout_s;   /* 0: the command's default */
	enum cmd cmd;
	int json;
	long target; /* restart: worker id, -1 = all; describe: worker id */
	long workers;
	const char *email, *username, *role; /* user create */
	char password[PW_BUF];               /* user create: read from stdin, wiped after use */
	size_t pwlen;
};

enum parse_result { PARSE_RUN, PARSE_HELP, PARSE_VERSION, PARSE_USAGE };

static void say(const char *hint, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static void say(const char *hint, const char *fmt, va_list ap)
{
	fputs("resilctl: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputs(hint, stderr);
}

/* One line on stderr: "resilctl: <message>". */
static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	say("\n", fmt, ap);
	va_end(ap);
}

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void usage_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	say("\nTry 'resilctl --help'.\n", fmt, ap);
	va_end(ap);
}

static void print_help(void)
{
	printf("usage: resilctl [-s SOCKET] [--timeout SEC] COMMAND\n"
	       "\n"
	       "Commands:\n"
	       "  status [--json]    supervisor and workers (pid, state, uptime, memory, ...)\n"
	       "  health [--json]    aggregated health; exit 0 healthy, 1 degraded, 2 down\n"
	       "  restart [all|ID]   rolling restart of all workers (default) or worker ID\n"
	       "  reload             re-read the configuration and replace the workers, waiting\n"
	       "                     for the outcome\n"
	       "  stop               graceful shutdown; returns once resild has exited\n"
	       "  scale N            set the number of workers (%d-%d)\n"
	       "  upgrade            replace the supervisor with the resild binary on disk,\n"
	       "                     keeping the sockets; waits for the outcome (rolled back\n"
	       "                     if the new one does not become ready)\n"
	       "  describe ID [--json]\n"
	       "                     one worker: pid, generation, restarts by cause, last crash,\n"
	       "                     memory, cpu, requests, circuits\n"
	       "  user create --email E --username U --role user|clinician|admin\n"
	       "                     create a user in resild's database; the password is read\n"
	       "                     from standard input (one line; prompted without echo on a\n"
	       "                     terminal), never from the command line; prints the new id\n"
	       "\n"
	       "Options:\n"
	       "  -s, --socket PATH  control socket (default: $" CTL_ENV_SOCKET ", else\n"
	       "                     $RUNTIME_DIRECTORY/" CTL_RUNTIME_SOCKET_NAME ", else " CTL_PACKAGED_SOCKET "\n"
	       "                     if it exists, else " CTL_DEFAULT_SOCKET ")\n"
	       "      --timeout SEC  give up after SEC seconds (default 10; restart, reload and\n"
	       "                     upgrade 120; stop 60, including the wait for resild to exit; user\n"
	       "                     create 90)\n"
	       "      --json         status, health, describe: print the answer as one JSON object\n"
	       "  -h, --help         print this help and exit\n"
	       "  -V, --version      print the version and exit\n"
	       "\n"
	       "Exit status: 0 success, 1 command failed (health: degraded), 2 health: down,\n"
	       "3 resild is not running, 4 protocol error or timeout, 64 usage error.\n",
	       CTL_SCALE_MIN, CTL_SCALE_MAX);
}

/* A whole decimal number in [lo, hi], nothing else. 0 or -1. */
static int parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	long v;

	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

/* Seconds, fractions allowed, optional "s": "10", "0.5", "90s". */
static int parse_seconds(const char *s, double *out)
{
	char *end;
	double v;

	if ((*s < '0' || *s > '9') && *s != '.')
		return -1;
	errno = 0;
	v = strtod(s, &end);
	if (*end == 's')
		end++;
	if (errno || *end || !isfinite(v) || v <= 0 || v > 86400.0 * 365)
		return -1;
	*out = v;
	return 0;
}

/* Value of an option given as "-s X", "-sX", "--socket X" or "--socket=X".
 * Returns the value (advancing *i past a separate one), NULL if a is
 * another option, and sets *missing when the value is absent. */
static const char *opt_value(int argc, char **argv, int *i, const char *shrt, const char *lng, int *missing)
{
	const char *a = argv[*i];
	size_t n = strlen(lng);

	*missing = 0;
	if ((shrt && !strcmp(a, shrt)) || !strcmp(a, lng)) {
		if (*i + 1 >= argc) {
			*missing = 1;
			return NULL;
		}
		return argv[++*i];
	}
	if (shrt && !strncmp(a, shrt, 2) && a[1] != '-' && a[2])
		return a + 2;
	if (!strncmp(a, lng, n) && a[n] == '=')
		return a + n + 1;
	return NULL;
}

static enum parse_result parse_args(int argc, char **argv, struct opts *o)
{
	const char *pos[3];
	int npos = 0, only_pos = 0;

	memset(o, 0, sizeof *o);
	o->target = -1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v;
		int missing;

		if (only_pos || a[0] != '-' || !a[1]) {
			if (npos == 3) {
				usage_error("too many arguments");
				return PARSE_USAGE;
			}
			pos[npos++] = a;
		} else if (!strcmp(a, "--")) {
			only_pos = 1;
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			return PARSE_HELP;
		} else if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
			return PARSE_VERSION;
		} else if (!strcmp(a, "--json")) {
			o->json = 1;
		} else if ((v = opt_value(argc, argv, &i, "-s", "--socket", &missing)) || missing) {
			if (missing || !*v) {
				usage_error("%s needs a socket path", a);
				return PARSE_USAGE;
			}
			o->socket = v;
		} else if ((v = opt_value(argc, argv, &i, NULL, "--timeout", &missing)) || missing) {
			if (missing || parse_seconds(v, &o->timeout_s) < 0) {
				usage_error("--timeout needs a positive number of seconds");
				return PARSE_USAGE;
			}
		} else if ((v = opt_value(argc, argv, &i, NULL, "--email", &missing)) || missing ||
		           (v = opt_value(argc, argv, &i, NULL, "--username", &missing)) || missing ||
		           (v = opt_value(argc, argv, &i, NULL, "--role", &missing)) || missing) {
			if (missing) {
				usage_error("%s needs a value", a);
				return PARSE_USAGE;
			}
			const char **slot = a[2] == 'e' ? &o->email : a[2] == 'u' ? &o->username : &o->role;
			*slot = v;
		} else {
			usage_error("unknown option '%s'", a);
			return PARSE_USAGE;
		}
	}
	if (npos == 0) {
		usage_error("no command given");
		return PARSE_USAGE;
	}
	size_t c = 0;
	while (c < NCMDS && strncmp(pos[0], cmds[c].cli, strcspn(cmds[c].cli, " ")))
		c++;
	if (c == NCMDS || strlen(pos[0]) != strcspn(cmds[c].cli, " ")) {
		usage_error("unknown command '%s'", pos[0]);
		return PARSE_USAGE;
	}
	o->cmd = (enum cmd)c;
	if (o->cmd == CMD_USER_CREATE && (npos < 2 || strcmp(pos[1], "create"))) {
		usage_error("user: the only subcommand is 'create'");
		return PARSE_USAGE;
	}
	int want = o->cmd == CMD_SCALE || o->cmd == CMD_DESCRIBE || o->cmd == CMD_USER_CREATE ? 2 : 1,
	    maxpos = o->cmd == CMD_RESTART ? 2 : want;
	if (npos < want || npos > maxpos) {
		if (o->cmd == CMD_SCALE)
			usage_error("scale needs a worker count");
		else if (o->cmd == CMD_DESCRIBE)
			usage_error("describe needs a worker id");
		else
			usage_error("wrong number of arguments for %s", cmds[o->cmd].cli);
		return PARSE_USAGE;
	}
	if (o->json && o->cmd != CMD_STATUS && o->cmd != CMD_HEALTH && o->cmd != CMD_DESCRIBE) {
		usage_error("--json only applies to status, health and describe");
		return PARSE_USAGE;
	}
	if (o->cmd != CMD_USER_CREATE && (o->email || o->username || o->role)) {
		usage_error("--email, --username and --role only apply to user create");
		return PARSE_USAGE;
	}
	if (o->cmd == CMD_USER_CREATE && (!o->email || !o->username || !o->role)) {
		usage_error(
		    "user create needs --email, --username and --role (the password comes from standard input)");
		return PARSE_USAGE;
	}
	if (o->cmd == CMD_DESCRIBE && parse_long(pos[1], 0, INT_MAX, &o->target) < 0) {
		usage_error("describe: '%s' is not a worker id", pos[1]);
		return PARSE_USAGE;
	}
	if (o->cmd == CMD_RESTART && npos == 2 && strcmp(pos[1], CTL_TARGET_ALL) &&
	    parse_long(pos[1], 0, INT_MAX, &o->target) < 0) {
		usage_error("restart: '%s' is neither 'all' nor a worker id", pos[1]);
		return PARSE_USAGE;
	}
	if (o->cmd == CMD_SCALE && parse_long(pos[1], CTL_SCALE_MIN, CTL_SCALE_MAX, &o->workers) < 0) {
		usage_error("scale: worker count must be %d-%d, got '%s'", CTL_SCALE_MIN, CTL_SCALE_MAX, pos[1]);
		return PARSE_USAGE;
	}
	if (o->socket && strlen(o->socket) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		usage_error("socket path too long: %s", o->socket);
		return PARSE_USAGE;
	}
	return PARSE_RUN;
}

/* Where the control socket path came from, for error lines. */
static const char *socket_origin = "-s";

/* -s, else $RESIL_CONTROL, else $RUNTIME_DIRECTORY/control.sock (inside the
 * unit, the rule resild applies to its own default, src/config.c), else the
 * packaged unit's CTL_PACKAGED_SOCKET when it exists, else
 * CTL_DEFAULT_SOCKET. */
static int socket_path(const char *given, char *out, size_t outlen)
{
	const char *env = getenv(CTL_ENV_SOCKET), *rd = getenv("RUNTIME_DIRECTORY");
	struct stat st;
	int n;

	if (given) {
		n = snprintf(out, outlen, "%s", given);
		socket_origin = "from -s";
	} else if (env && *env) {
		n = snprintf(out, outlen, "%s", env);
		socket_origin = "from $" CTL_ENV_SOCKET;
	} else if (rd && *rd) {
		n = snprintf(out, outlen, "%.*s/" CTL_RUNTIME_SOCKET_NAME, (int)strcspn(rd, ":"), rd);
		socket_origin = "from $RUNTIME_DIRECTORY";
	} else if (stat(CTL_PACKAGED_SOCKET, &st) == 0) {
		n = snprintf(out, outlen, "%s", CTL_PACKAGED_SOCKET);
		socket_origin = "the packaged unit's socket; no -s or $" CTL_ENV_SOCKET;
	} else {
		n = snprintf(out, outlen, "%s", CTL_DEFAULT_SOCKET);
		socket_origin = "no -s, no $" CTL_ENV_SOCKET ", no " CTL_PACKAGED_SOCKET;
	}
	return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for ev on fd until deadline: 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short ev, int64_t deadline)
{
	for (;;) {
		int64_t left = deadline - now_ms();
		struct pollfd p = {.fd = fd, .events = ev};

		if (left <= 0)
			return 0;
		int r = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
		if (r > 0)
			return 1;
		if (r < 0 && errno != EINTR)
			return -1;
	}
}

static void sleep_ms(int64_t ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int ctl_connect(const char *path, int64_t deadline, int *out)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

	if (fd < 0) {
		fail("socket: %s", strerror(errno));
		return CTL_EXIT_PROTOCOL;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1); /* length checked by the caller */
	for (;;) {
		if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
			*out = fd;
			return CTL_EXIT_OK;
		}
		int e = errno;
		if (e == EINTR)
			continue;
		/* A Unix socket with a full backlog says EAGAIN: retry until the deadline. */
		if (e == EAGAIN && now_ms() < deadline) {
			sleep_ms(10);
			continue;
		}
		close(fd);
		if (e == ENOENT || e == ENOTDIR) {
			fail("resild is not running (no control socket at %s; %s)", path, socket_origin);
			return CTL_EXIT_NOT_RUNNING;
		}
		if (e == ECONNREFUSED) {
			fail("resild is not running (nothing listens on %s; %s)", path, socket_origin);
			return CTL_EXIT_NOT_RUNNING;
		}
		if (e == EAGAIN)
			fail("timed out connecting to %s (%s; resild is busy)", path, socket_origin);
		else
			fail("cannot connect to %s (%s): %s%s", path, socket_origin, strerror(e),
			     e == EACCES || e == EPERM ? " (run resilctl as the user resild runs as)" : "");
		return CTL_EXIT_PROTOCOL;
	}
}

static int send_all(int fd, const char *buf, size_t len, int64_t deadline)
{
	while (len > 0) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

		if (n > 0) {
			buf += n;
			len -= (size_t)n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else if (n < 0 && errno == EAGAIN) {
			int w = wait_fd(fd, POLLOUT, deadline);
			if (w <= 0)
				return w == 0 ? -2 : -1;
		} else {
			return -1;
		}
	}
	return 0;
}

/* Read up to the first "\n" (or EOF). On success *out is a NUL-terminated
 * malloc'd line owned by the caller. 0, -1 I/O error, -2 timeout, -3 too long. */
static int recv_line(int fd, int64_t deadline, char **out, size_t *outlen)
{
	size_t len = 0, cap = 4096;
	char *buf = malloc(cap);

	if (!buf)
		return -1;
	for (;;) {
		if (len + 1 == cap) {
			char *nb = cap * 2 > CTL_MAX_RESPONSE + 1 ? NULL : realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				return cap * 2 > CTL_MAX_RESPONSE + 1 ? -3 : -1;
			}
			buf = nb;
			cap *= 2;
		}
		ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
		if (n > 0) {
			char *nl = memchr(buf + len, '\n', (size_t)n);
			len += (size_t)n;
			if (nl) {
				len = (size_t)(nl - buf);
				break;
			}
		} else if (n == 0) {
			break;
		} else if (errno == EINTR) {
			continue;
		} else if (errno == EAGAIN) {
			int w = wait_fd(fd, POLLIN, deadline);
			if (w <= 0) {
				free(buf);
				return w == 0 ? -2 : -1;
			}
		} else if (errno == ECONNRESET) {
			break; /* whatever arrived is judged by the parser */
		} else {
			free(buf);
			return -1;
		}
	}
	buf[len] = '\0';
	*out = buf;
	*outlen = len;
	return 0;
}

#define GEN_STR(g, s) yajl_gen_string(g, (const unsigned char *)(s), strlen(s))

static int build_request(const struct opts *o, char *out, size_t outlen, size_t *len)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	const unsigned char *buf;
	size_t n;
	int rc = -1;

	if (!g)
		return -1;
	if (yajl_gen_map_open(g) || GEN_STR(g, CTL_KEY_CMD) || GEN_STR(g, cmds[o->cmd].name))
		goto out;
	if (o->cmd == CMD_RESTART && (GEN_STR(g, CTL_KEY_TARGET) ||
	                              (o->target < 0 ? GEN_STR(g, CTL_TARGET_ALL) : yajl_gen_integer(g, o->target))))
		goto out;
	if (o->cmd == CMD_SCALE && (GEN_STR(g, CTL_KEY_WORKERS) || yajl_gen_integer(g, o->workers)))
		goto out;
	if (o->cmd == CMD_DESCRIBE && (GEN_STR(g, CTL_KEY_ID) || yajl_gen_integer(g, o->target)))
		goto out;
	if (o->cmd == CMD_USER_CREATE &&
	    (GEN_STR(g, CTL_KEY_EMAIL) || GEN_STR(g, o->email) || GEN_STR(g, CTL_KEY_USERNAME) ||
	     GEN_STR(g, o->username) || GEN_STR(g, CTL_KEY_ROLE) || GEN_STR(g, o->role) ||
	     GEN_STR(g, CTL_KEY_PASSWORD) ||
	     yajl_gen_string(g, (const unsigned char *)o->password, o->pwlen) != yajl_gen_status_ok))
		goto out;
	if (yajl_gen_map_close(g) || yajl_gen_get_buf(g, &buf, &n))
		goto out;
	if (n + 1 <= outlen) {
		memcpy(out, buf, n);
		out[n] = '\n';
		*len = n + 1;
		rc = 0;
	}
	explicit_bzero((void *)buf, n); /* it may hold the password */
out:
	yajl_gen_free(g);
	return rc;
}

/* Connect, send the request, read and parse the answer. On CTL_EXIT_OK
 * *root owns the parsed answer (an object), freed with yajl_tree_free(). */
static int exchange(const struct opts *o, const char *path, int64_t deadline, double limit_s, yajl_val *root)
{
	char req[CTL_MAX_REQUEST], errbuf[256];
	size_t reqlen, anslen;
	char *ans = NULL;
	int fd, rc;

	if (build_request(o, req, sizeof req, &reqlen) < 0) {
		explicit_bzero(req, sizeof req);
		fail("cannot build the request%s", o->cmd == CMD_USER_CREATE ? " (the fields are too long)" : "");
		return o->cmd == CMD_USER_CREATE ? CTL_EXIT_FAILED : CTL_EXIT_PROTOCOL;
	}
	if ((rc = ctl_connect(path, deadline, &fd)) != CTL_EXIT_OK) {
		explicit_bzero(req, sizeof req);
		return rc;
	}
	rc = send_all(fd, req, reqlen, deadline);
	explicit_bzero(req, sizeof req);
	if (rc == 0)
		rc = recv_line(fd, deadline, &ans, &anslen);
	int e = errno;
	close(fd);
	if (rc == -2) {
		fail("no answer from resild within %g s (%s)%s", limit_s, cmds[o->cmd].cli,
		     o->cmd == CMD_RESTART || o->cmd == CMD_RELOAD || o->cmd == CMD_UPGRADE
		         ? "; it may still be in progress"
		         : "");
		return CTL_EXIT_PROTOCOL;
	}
	if (rc == -3) {
		fail("answer from resild is larger than %d bytes", CTL_MAX_RESPONSE);
		return CTL_EXIT_PROTOCOL;
	}
	if (rc < 0) {
		fail("talking to resild on %s: %s", path, strerror(e));
		return CTL_EXIT_PROTOCOL;
	}
	if (anslen == 0) {
		free(ans);
		fail("resild closed the connection without answering (is resilctl run as resild's user?)");
		return CTL_EXIT_PROTOCOL;
	}
	errbuf[0] = '\0';
	*root = strlen(ans) == anslen ? yajl_tree_parse(ans, errbuf, sizeof errbuf) : NULL;
	free(ans);
	if (!*root || !YAJL_IS_OBJECT(*root)) {
		errbuf[strcspn(errbuf, "\n")] = '\0';
		fail("invalid answer from resild%s%s", errbuf[0] ? ": " : "", errbuf);
		yajl_tree_free(*root);
		*root = NULL;
		return CTL_EXIT_PROTOCOL;
	}
	return CTL_EXIT_OK;
}

static yajl_val get(yajl_val obj, const char *key)
{
	const char *path[] = {key, NULL};

	return obj ? yajl_tree_get(obj, path, yajl_t_any) : NULL;
}

static const char *get_str(yajl_val obj, const char *key)
{
	yajl_val v = get(obj, key);

	return YAJL_GET_STRING(v);
}

static int get_num(yajl_val obj, const char *key, double *out)
{
	yajl_val v = get(obj, key);

	if (YAJL_IS_INTEGER(v))
		*out = (double)YAJL_GET_INTEGER(v);
	else if (YAJL_IS_DOUBLE(v))
		*out = YAJL_GET_DOUBLE(v);
	else
		return -1;
	return 0;
}

static int get_int(yajl_val obj, const char *key, long long *out)
{
	yajl_val v = get(obj, key);

	if (!YAJL_IS_INTEGER(v))
		return -1;
	*out = YAJL_GET_INTEGER(v);
	return 0;
}

/* Control characters (C0, DEL, and C1 as UTF-8) become '?' so nothing
 * resild echoes (a crashed route's path, an error text) can drive the
 * operator's terminal. */
static void defang_str(char *s)
{
	for (unsigned char *p = (unsigned char *)s; *p; p++) {
		if (*p < 0x20 || *p == 0x7f)
			*p = '?';
		else if (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
			p[0] = p[1] = '?';
	}
}

/* Human output prints nothing nested deeper than a few levels. */
static void defang(yajl_val v, int depth)
{
	if (depth > 8)
		return;
	if (YAJL_IS_STRING(v))
		defang_str(v->u.string);
	else if (YAJL_IS_ARRAY(v))
		for (size_t i = 0; i < v->u.array.len; i++)
			defang(v->u.array.values[i], depth + 1);
	else if (YAJL_IS_OBJECT(v))
		for (size_t i = 0; i < v->u.object.len; i++) {
			defang_str((char *)v->u.object.keys[i]);
			defang(v->u.object.values[i], depth + 1);
		}
}

/* "45s", "7m" (or "7m 36s" when precise), "2h 5m", "3d 4h". */
static void fmt_uptime(char *b, size_t n, long long s, int precise)
{
	static const struct {
		long long secs;
		char unit;
	} u[] = {{86400, 'd'}, {3600, 'h'}, {60, 'm'}, {1, 's'}};
	size_t i = 0;

	if (s < 0) {
		snprintf(b, n, "-");
		return;
	}
	while (i < 3 && s < u[i].secs)
		i++;
	long long big = s / u[i].secs, rest = (s % u[i].secs) / (i < 3 ? u[i + 1].secs : 1);
	if (i == 3 || rest == 0 || (i == 2 && !precise))
		snprintf(b, n, "%lld%c", big, u[i].unit);
	else
		snprintf(b, n, "%lld%c %lld%c", big, u[i].unit, rest, u[i + 1].unit);
}

static void fmt_bytes(char *b, size_t n, double v)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	size_t i = 0;

	if (v < 1024) {
		snprintf(b, n, "%.0f B", v < 0 ? 0 : v);
		return;
	}
	while (v >= 1024 && i < 4) {
		v /= 1024;
		i++;
	}
	snprintf(b, n, "%.1f %s", v, units[i]);
}

enum col { C_ID, C_PID, C_STATE, C_UPTIME, C_RESTARTS, C_CPU, C_MEM, C_REQS, C_INFLIGHT, C_WS, NCOLS };
#define CELL 40

static const struct {
	const char *title;
	const char *key; /* integer field shown as is; NULL: formatted below */
	int left;        /* left-aligned (text) instead of right-aligned (numbers) */
} cols[NCOLS] = {
    [C_ID] = {"id", "id", 0},
    [C_PID] = {"pid", "pid", 0},
    [C_STATE] = {"state", NULL, 1},
    [C_UPTIME] = {"uptime", NULL, 1},
    [C_RESTARTS] = {"restarts", "restarts", 0},
    [C_CPU] = {"cpu", NULL, 0},
    [C_MEM] = {"memory", NULL, 0},
    [C_REQS] = {"requests", "requests", 0},
    [C_INFLIGHT] = {"inflight", "inflight", 0},
    [C_WS] = {"ws", "websockets", 0},
};

static const char *state_colour(const char *st)
{
	if (!strcmp(st, "ready"))
		return "\033[32m";
	if (!strcmp(st, "starting") || !strcmp(st, "draining"))
		return "\033[33m";
	if (!strcmp(st, "errored"))
		return "\033[1;31m";
	return "\033[2m";
}

static void worker_cells(yajl_val w, char cell[NCOLS][CELL])
{
	long long ll;
	double d;

	for (int c = 0; c < NCOLS; c++) {
		snprintf(cell[c], CELL, "-");
		if (cols[c].key && get_int(w, cols[c].key, &ll) == 0)
			snprintf(cell[c], CELL, "%lld", ll);
	}
	const char *st = get_str(w, "state");
	if (st)
		snprintf(cell[C_STATE], CELL, "%s", st);
	if (get_int(w, "uptime_s", &ll) == 0)
		fmt_uptime(cell[C_UPTIME], CELL, ll, 0);
	if (get_num(w, "cpu_pct", &d) == 0)
		snprintf(cell[C_CPU], CELL, "%.1f%%", d);
	if (get_num(w, "rss_bytes", &d) == 0)
		fmt_bytes(cell[C_MEM], CELL, d);
}

static void print_row(char cell[NCOLS][CELL], const size_t *width, int colour)
{
	for (int c = 0; c < NCOLS; c++) {
		int pad = (int)(width[c] - strlen(cell[c]));
		const char *sep = c ? "  " : "";

		if (!cols[c].left)
			printf("%s%*s%s", sep, pad, "", cell[c]);
		else if (colour)
			printf("%s%s%s\033[0m%*s", sep, state_colour(cell[c]), cell[c], pad, "");
		else
			printf("%s%s%*s", sep, cell[c], pad, "");
	}
	putchar('\n');
}

/* "resild 0.1.0 · pid 123 · up 7m 36s · listen ... · db sqlite (connected) · generation 3" */
static void print_supervisor(yajl_val sup)
{
	const char *s;
	long long ll;
	char buf[64];

	printf("resild");
	if ((s = get_str(sup, "version")))
		printf(" %s", s);
	if (get_int(sup, "pid", &ll) == 0)
		printf(" · pid %lld", ll);
	if (get_int(sup, "uptime_s", &ll) == 0) {
		fmt_uptime(buf, sizeof buf, ll, 1);
		printf(" · up %s", buf);
	}
	if ((s = get_str(sup, "listen")))
		printf(" · listen %s", s);
	if ((s = get_str(sup, "db"))) {
		const char *st = get_str(sup, "db_state");
		printf(" · db %s%s%s%s", s, st ? " (" : "", st ? st : "", st ? ")" : "");
	}
	if (get_int(sup, "generation", &ll) == 0)
		printf(" · generation %lld", ll);
	if ((s = get_str(sup, "state")) && strcmp(s, "running"))
		printf(" · %s", s);
	putchar('\n');
}

/* One row per worker, columns as wide as their widest cell. */
static int print_workers(yajl_val workers)
{
	size_t n = workers->u.array.len, width[NCOLS];
	char(*cells)[NCOLS][CELL] = calloc(n + 1, sizeof *cells);
	if (!cells) {
		fail("out of memory");
		return CTL_EXIT_PROTOCOL;
	}
	for (int c = 0; c < NCOLS; c++) {
		snprintf(cells[0][c], CELL, "%s", cols[c].title);
		width[c] = strlen(cols[c].title);
	}
	for (size_t i = 0; i < n; i++) {
		worker_cells(workers->u.array.values[i], cells[i + 1]);
		for (int c = 0; c < NCOLS; c++)
			if (strlen(cells[i + 1][c]) > width[c])
				width[c] = strlen(cells[i + 1][c]);
	}
	int colour = isatty(STDOUT_FILENO) && !getenv("NO_COLOR");
	for (size_t i = 0; i <= n; i++)
		print_row(cells[i], width, colour && i > 0);
	free(cells);
	return CTL_EXIT_OK;
}

/* Circuits that are not closed and crash attribution, a line each. */
static void print_notes(yajl_val workers, yajl_val crashes)
{
	long long ll;

	for (size_t i = 0; i < workers->u.array.len; i++) {
		yajl_val w = workers->u.array.values[i], circ = get(w, "circuits");
		if (!YAJL_IS_OBJECT(circ))
			continue;
		for (size_t k = 0; k < circ->u.object.len; k++) {
			const char *cs = YAJL_GET_STRING(circ->u.object.values[k]);
			if (cs && strcmp(cs, "closed") && get_int(w, "id", &ll) == 0)
				printf("worker %lld: circuit %s %s\n", ll, circ->u.object.keys[k], cs);
		}
	}
	if (YAJL_IS_OBJECT(crashes) && crashes->u.object.len > 0) {
		printf("crashes by route:");
		for (size_t k = 0; k < crashes->u.object.len; k++) {
			yajl_val v = crashes->u.object.values[k];
			printf("%s %s (%lld)", k ? "," : "", crashes->u.object.keys[k],
			       YAJL_IS_INTEGER(v) ? YAJL_GET_INTEGER(v) : 0LL);
		}
		putchar('\n');
	}
}

static int print_status(yajl_val root)
{
	yajl_val sup = get(root, CTL_KEY_SUPERVISOR), workers = get(root, "workers");

	if (!YAJL_IS_OBJECT(sup) || !YAJL_IS_ARRAY(workers)) {
		fail("invalid answer from resild: status without supervisor and workers");
		return CTL_EXIT_PROTOCOL;
	}
	print_supervisor(sup);
	if (print_workers(workers) != CTL_EXIT_OK)
		return CTL_EXIT_PROTOCOL;
	print_notes(workers, get(root, CTL_KEY_CRASHES));
	return CTL_EXIT_OK;
}

/* Re-emit a parsed value; numbers keep their original spelling. */
static int gen_value(yajl_gen g, yajl_val v)
{
	size_t i;

	switch (v->type) {
	case yajl_t_string: return GEN_STR(g, v->u.string) ? -1 : 0;
	case yajl_t_number: return yajl_gen_number(g, v->u.number.r, strlen(v->u.number.r)) ? -1 : 0;
	case yajl_t_true:
	case yajl_t_false: return yajl_gen_bool(g, v->type == yajl_t_true) ? -1 : 0;
	case yajl_t_null: return yajl_gen_null(g) ? -1 : 0;
	case yajl_t_array:
		if (yajl_gen_array_open(g))
			return -1;
		for (i = 0; i < v->u.array.len; i++)
			if (gen_value(g, v->u.array.values[i]) < 0)
				return -1;
		return yajl_gen_array_close(g) ? -1 : 0;
	case yajl_t_object:
		if (yajl_gen_map_open(g))
			return -1;
		for (i = 0; i < v->u.object.len; i++)
			if (GEN_STR(g, v->u.object.keys[i]) || gen_value(g, v->u.object.values[i]) < 0)
				return -1;
		return yajl_gen_map_close(g) ? -1 : 0;
	default: return -1;
	}
}

/* The answer minus "ok", as one line. */
static int print_json(yajl_val root)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	const unsigned char *buf;
	size_t len;
	int rc = -1;

	if (!g || yajl_gen_map_open(g))
		goto out;
	for (size_t i = 0; i < root->u.object.len; i++) {
		if (!strcmp(root->u.object.keys[i], CTL_KEY_OK))
			continue;
		if (GEN_STR(g, root->u.object.keys[i]) || gen_value(g, root->u.object.values[i]) < 0)
			goto out;
	}
	if (yajl_gen_map_close(g) || yajl_gen_get_buf(g, &buf, &len))
		goto out;
	fwrite(buf, 1, len, stdout);
	putchar('\n');
	rc = 0;
out:
	if (g)
		yajl_gen_free(g);
	if (rc < 0)
		fail("cannot re-encode resild's answer");
	return rc < 0 ? CTL_EXIT_PROTOCOL : CTL_EXIT_OK;
}

static int health_exit(yajl_val root)
{
	const char *st = get_str(root, CTL_KEY_STATUS);

	if (st && !strcmp(st, CTL_HEALTH_HEALTHY))
		return CTL_EXIT_OK;
	if (st && !strcmp(st, CTL_HEALTH_DEGRADED))
		return CTL_EXIT_FAILED;
	if (st && !strcmp(st, CTL_HEALTH_DOWN))
		return CTL_EXIT_DOWN;
	fail("invalid answer from resild: health status %s", st ? st : "missing");
	return CTL_EXIT_PROTOCOL;
}

static void print_health(yajl_val root)
{
	yajl_val checks = get(root, CTL_KEY_CHECKS), w = get(checks, "workers"), circ = get(checks, "circuits");
	const char *db = get_str(checks, "database"), *sep = ": ";
	long long total, ready;

	printf("%s", get_str(root, CTL_KEY_STATUS));
	if (get_int(w, "total", &total) == 0 && get_int(w, "ready", &ready) == 0) {
		printf("%s%lld/%lld workers ready", sep, ready, total);
		sep = ", ";
	}
	if (db) {
		printf("%sdatabase %s", sep, db);
		sep = ", ";
	}
	if (YAJL_IS_OBJECT(circ) && circ->u.object.len > 0) {
		printf("%scircuits:", sep);
		for (size_t k = 0; k < circ->u.object.len; k++) {
			const char *cs = YAJL_GET_STRING(circ->u.object.values[k]);
			printf("%s %s %s", k ? "," : "", circ->u.object.keys[k], cs ? cs : "?");
		}
	}
	putchar('\n');
}

static int print_restarted(yajl_val root)
{
	yajl_val r = get(root, CTL_KEY_RESTARTED);

	if (!YAJL_IS_ARRAY(r)) {
		fail("invalid answer from resild: restart without the restarted workers");
		return CTL_EXIT_PROTOCOL;
	}
	if (r->u.array.len == 0) {
		printf("restarted no workers\n");
		return CTL_EXIT_OK;
	}
	printf("restarted worker%s", r->u.array.len == 1 ? "" : "s");
	for (size_t i = 0; i < r->u.array.len; i++) {
		yajl_val v = r->u.array.values[i];
		printf("%s %lld", i ? "," : "", YAJL_IS_INTEGER(v) ? YAJL_GET_INTEGER(v) : -1LL);
	}
	putchar('\n');
	return CTL_EXIT_OK;
}

/* Alive unless kill() says it is gone or /proc shows a zombie (a parent
 * that has not reaped it yet: the daemon has exited all the same). */
static int pid_alive(pid_t pid)
{
	char path[64], buf[512];
	ssize_t n;
	int fd;

	if (kill(pid, 0) < 0 && errno == ESRCH)
		return 0;
	snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return errno == ENOENT ? 0 : 1;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return 1;
	buf[n] = '\0';
	const char *p = strrchr(buf, ')'); /* the command name may contain anything */
	return !(p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X'));
}

static int wait_stopped(yajl_val root, int64_t deadline, double limit_s)
{
	long long pid;

	if (get_int(root, CTL_KEY_PID, &pid) < 0 || pid < 1 || pid > INT_MAX) {
		fail("invalid answer from resild: stop without a valid pid");
		return CTL_EXIT_PROTOCOL;
	}
	while (pid_alive((pid_t)pid)) {
		int64_t left = deadline - now_ms();
		if (left <= 0) {
			fail("resild (pid %lld) is still running after %g s", pid, limit_s);
			return CTL_EXIT_PROTOCOL;
		}
		sleep_ms(left < 100 ? left : 100);
	}
	printf("resild (pid %lld) stopped\n", pid);
	return CTL_EXIT_OK;
}

/* A reload that changed restart-only keys still succeeded (exit 0); the
 * keys it could not apply are listed for the operator. */
static void print_restart_needed(yajl_val root)
{
	yajl_val a = get(root, CTL_KEY_RESTART_NEEDED);
	if (!YAJL_IS_ARRAY(a) || a->u.array.len == 0)
		return;
	printf("restart needed for: ");
	int first = 1;
	for (size_t i = 0; i < a->u.array.len; i++) {
		const char *k = YAJL_GET_STRING(a->u.array.values[i]);
		if (!k)
			continue;
		printf("%s%s", first ? "" : ", ", k);
		first = 0;
	}
	printf("\n");
}

/* ------------------------------------------------------------ describe */

/* "key               value" lines, pm2 describe's two columns. */
static void kv(const char *key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void kv(const char *key, const char *fmt, ...)
{
	va_list ap;

	printf("%-18s ", key);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

static void kv_int(yajl_val w, const char *key, const char *label)
{
	long long ll;
	if (get_int(w, key, &ll) == 0)
		kv(label, "%lld", ll);
}

static void print_last_crash(yajl_val lc)
{
	long long ll;
	char up[64];
	if (!YAJL_IS_OBJECT(lc)) {
		kv("last crash", "none");
		return;
	}
	const char *t = get_str(lc, "time"), *st = get_str(lc, "status"), *cause = get_str(lc, "cause");
	const char *route = get_str(lc, "route");
	printf("%-18s %s", "last crash", t ? t : "?");
	if (get_int(lc, "ago_s", &ll) == 0) {
		fmt_uptime(up, sizeof up, ll, 1);
		printf(" (%s ago)", up);
	}
	printf(": %s", st ? st : "?");
	if (cause && strcmp(cause, "crash"))
		printf(" (%s)", cause);
	if (get_int(lc, "pid", &ll) == 0)
		printf(", pid %lld", ll);
	if (get_int(lc, "generation", &ll) == 0)
		printf(", generation %lld", ll);
	if (get_int(lc, "uptime_s", &ll) == 0) {
		fmt_uptime(up, sizeof up, ll, 1);
		printf(", after %s up", up);
	}
	printf(", route %s\n", route ? route : "none (no request in flight)");
}

static int print_describe(yajl_val root)
{
	yajl_val w = get(root, CTL_KEY_WORKER), by = get(w, "restarts_by_cause"), circ = get(w, "circuits");
	const char *st = get_str(w, "state");
	long long ll;
	double d;
	char buf[64];
	if (!YAJL_IS_OBJECT(w) || !st) {
		fail("invalid answer from resild: describe without a worker");
		return CTL_EXIT_PROTOCOL;
	}
	kv_int(w, "id", "id");
	if (get_int(w, "pid", &ll) == 0 && ll > 0)
		kv("pid", "%lld", ll);
	else
		kv("pid", "-");
	kv("state", "%s%s", st, YAJL_IS_TRUE(get(w, "restart_pending")) ? " (restart scheduled)" : "");
	kv_int(w, "generation", "generation");
	if (get_int(w, "uptime_s", &ll) == 0) {
		fmt_uptime(buf, sizeof buf, ll, 1);
		kv("uptime", "%s", buf);
	}
	kv_int(w, "restarts", "restarts");
	if (YAJL_IS_OBJECT(by)) {
		printf("%-18s ", "restarts by cause");
		for (size_t k = 0; k < by->u.object.len; k++) {
			yajl_val v = by->u.object.values[k];
			printf("%s%s %lld", k ? ", " : "", by->u.object.keys[k],
			       YAJL_IS_INTEGER(v) ? YAJL_GET_INTEGER(v) : 0LL);
		}
		putchar('\n');
	}
	print_last_crash(get(w, "last_crash"));
	if (get_num(w, "cpu_pct", &d) == 0)
		kv("cpu", "%.1f%%", d);
	if (get_num(w, "rss_bytes", &d) == 0) {
		fmt_bytes(buf, sizeof buf, d);
		kv("memory", "%s", buf);
	}
	kv_int(w, "requests", "requests");
	kv_int(w, "inflight", "inflight");
	kv_int(w, "connections", "connections");
	kv_int(w, "websockets", "websockets");
	printf("%-18s ", "circuits");
	if (!YAJL_IS_OBJECT(circ) || circ->u.object.len == 0)
		printf("none");
	for (size_t k = 0; YAJL_IS_OBJECT(circ) && k < circ->u.object.len; k++) {
		const char *cs = YAJL_GET_STRING(circ->u.object.values[k]);
		printf("%s%s %s", k ? ", " : "", circ->u.object.keys[k], cs ? cs : "?");
	}
	putchar('\n');
	return CTL_EXIT_OK;
}

/* --------------------------------------------------------- user create */

static struct termios tty_saved;
static volatile sig_atomic_t tty_changed;

static void tty_restore(void)
{
	if (tty_changed) {
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &tty_saved);
		tty_changed = 0;
	}
}

static void tty_signal(int sig)
{
	tty_restore();
	signal(sig, SIG_DFL);
	raise(sig);
}

/* One line from fd 0 into out (NUL-terminated, newline and a CR before it
 * stripped). 0, -1 too long, -2 read error. */
static int read_line(char *out, size_t outlen, size_t *len)
{
	size_t n = 0;
	for (;;) {
		char ch;
		ssize_t r = read(STDIN_FILENO, &ch, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -2;
		if (r == 0 || ch == '\n')
			break;
		if (n + 1 >= outlen) {
			explicit_bzero(out, outlen);
			return -1;
		}
		out[n++] = ch;
	}
	if (n > 0 && out[n - 1] == '\r')
		n--;
	out[n] = '\0';
	*len = n;
	return 0;
}

/* Terminal echo off (before any prompt is shown, so nothing typed after
 * it is flushed or echoed), restored by tty_restore(), also on a signal. */
static void tty_echo_off(void)
{
	struct termios t;
	if (tcgetattr(STDIN_FILENO, &tty_saved) < 0)
		return;
	t = tty_saved;
	t.c_lflag &= ~(tcflag_t)ECHO;
	signal(SIGINT, tty_signal);
	signal(SIGTERM, tty_signal);
	signal(SIGHUP, tty_signal);
	tty_changed = tcsetattr(STDIN_FILENO, TCSAFLUSH, &t) == 0;
}

/* On a terminal (echo already off): prompt on stderr, read one line. */
static int prompt_line(const char *prompt, char *out, size_t outlen, size_t *len)
{
	fputs(prompt, stderr);
	fflush(stderr);
	int rc = read_line(out, outlen, len);
	fputc('\n', stderr);
	return rc;
}

/* The new user's password from standard input, never from argv. */
static int read_password(struct opts *o)
{
	int rc;
	if (isatty(STDIN_FILENO)) {
		char again[PW_BUF];
		size_t n2 = 0;
		tty_echo_off();
		rc = prompt_line("Password for the new user: ", o->password, sizeof o->password, &o->pwlen);
		if (rc == 0 && o->pwlen > 0)
			rc = prompt_line("Repeat it: ", again, sizeof again, &n2);
		tty_restore();
		if (rc == 0 && o->pwlen > 0 && (n2 != o->pwlen || memcmp(again, o->password, n2))) {
			explicit_bzero(again, sizeof again);
			fail("user create: the passwords do not match");
			return CTL_EXIT_FAILED;
		}
		explicit_bzero(again, sizeof again);
	} else {
		rc = read_line(o->password, sizeof o->password, &o->pwlen);
	}
	if (rc == -1) {
		fail("user create: the password is too long (at most 128 characters)");
		return CTL_EXIT_FAILED;
	}
	if (rc < 0) {
		fail("user create: cannot read the password from standard input: %s", strerror(errno));
		return CTL_EXIT_FAILED;
	}
	if (o->pwlen == 0) {
		fail("user create: no password on standard input (one line expected)");
		return CTL_EXIT_FAILED;
	}
	if (memchr(o->password, '\0', o->pwlen)) {
		fail("user create: the password must not contain a NUL byte");
		return CTL_EXIT_FAILED;
	}
	return CTL_EXIT_OK;
}

static int render(const struct opts *o, yajl_val root, int64_t deadline, double limit_s)
{
	long long n;

	switch (o->cmd) {
	case CMD_STATUS: return o->json ? print_json(root) : print_status(root);
	case CMD_HEALTH: {
		int rc = health_exit(root);
		if (rc == CTL_EXIT_PROTOCOL)
			return rc;
		if (o->json)
			return print_json(root) == CTL_EXIT_OK ? rc : CTL_EXIT_PROTOCOL;
		print_health(root);
		return rc;
	}
	case CMD_RESTART: return print_restarted(root);
	case CMD_RELOAD:
		if (get_int(root, CTL_KEY_GENERATION, &n) == 0)
			printf("reloaded: generation %lld\n", n);
		else
			printf("reloaded\n");
		print_restart_needed(root);
		return CTL_EXIT_OK;
	case CMD_STOP: return wait_stopped(root, deadline, limit_s);
	case CMD_UPGRADE:
		if (get_int(root, CTL_KEY_PID, &n) == 0)
			printf("upgraded: new supervisor pid %lld\n", n);
		else
			printf("upgraded\n");
		return CTL_EXIT_OK;
	case CMD_DESCRIBE: return o->json ? print_json(root) : print_describe(root);
	case CMD_USER_CREATE: {
		const char *id = get_str(root, CTL_KEY_ID);
		if (!id) {
			fail("invalid answer from resild: user create without an id");
			return CTL_EXIT_PROTOCOL;
		}
		printf("%s\n", id);
		return CTL_EXIT_OK;
	}
	case CMD_SCALE:
		if (get_int(root, CTL_KEY_WORKERS, &n) < 0)
			n = o->workers;
		printf("scaled to %lld worker%s\n", n, n == 1 ? "" : "s");
		return CTL_EXIT_OK;
	}
	return CTL_EXIT_PROTOCOL;
}

int main(int argc, char **argv)
{
	struct opts o;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	yajl_val root = NULL;
	int rc;

	switch (parse_args(argc, argv, &o)) {
	case PARSE_HELP: print_help(); return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_PROTOCOL;
	case PARSE_VERSION:
		printf("resilctl %s\n", PACKAGE_VERSION);
		return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_PROTOCOL;
	case PARSE_USAGE: return CTL_EXIT_USAGE;
	case PARSE_RUN: break;
	}
	if (socket_path(o.socket, path, sizeof path) < 0) {
		usage_error("control socket path too long (set -s or " CTL_ENV_SOCKET ")");
		return CTL_EXIT_USAGE;
	}
	if (o.cmd == CMD_USER_CREATE && (rc = read_password(&o)) != CTL_EXIT_OK)
		return rc;
	double limit_s = o.timeout_s > 0 ? o.timeout_s : cmds[o.cmd].timeout_s;
	int64_t deadline = now_ms() + (int64_t)(limit_s * 1000 + 0.999);

	rc = exchange(&o, path, deadline, limit_s, &root);
	explicit_bzero(o.password, sizeof o.password);
	if (rc != CTL_EXIT_OK)
		return rc;
	yajl_val ok = get(root, CTL_KEY_OK);
	if (!o.json)
		defang(root, 0);
	if (YAJL_IS_FALSE(ok)) {
		defang(get(root, CTL_KEY_ERROR), 0);
		const char *err = get_str(root, CTL_KEY_ERROR);
		fail("%s failed: %s", cmds[o.cmd].cli, err ? err : "(no reason given)");
		rc = CTL_EXIT_FAILED;
	} else if (!YAJL_IS_TRUE(ok)) {
		fail("invalid answer from resild: no \"ok\"");
		rc = CTL_EXIT_PROTOCOL;
	} else {
		rc = render(&o, root, deadline, limit_s);
	}
	yajl_tree_free(root);
	if (fflush(stdout) != 0 && rc == CTL_EXIT_OK) {
		fail("writing the output: %s", strerror(errno));
		rc = CTL_EXIT_PROTOCOL;
	}
	return rc;
}
