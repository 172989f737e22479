/* config.c - resild configuration (SPEC section 2).
 *
 * One table, keys[] below, describes every setting: its file key, its
 * RESIL_* environment name, its type, its default and a one-line meaning.
 * The table drives parsing of the INI-style file, of the environment and
 * of the command line, validation of every value, --help, --check-config
 * output, the example etc/resild.conf and the key list in resild.conf(5).
 * Loading fills a scratch copy and only copies it out when everything is
 * valid, so a bad configuration (on start or on reload) changes nothing.
 *
 * One file on purpose: one key table drives parsing, validation, defaults,
 * --help, the example file and the man page's key list.
 */
#define _GNU_SOURCE
#include "config.h"

#include "cidr.h"
#include "rbus.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <unistd.h>

#define WORKERS_MAX 256
#define JWT_SECRET_MIN 32

enum key_type {
	KT_LISTEN,   /* listen address */
	KT_WORKERS,  /* 1-256 or auto */
	KT_DB,       /* sqlite: / mongodb:// URI */
	KT_SOCKPATH, /* Unix socket path */
	KT_ENV,      /* development | production */
	KT_SYNC,     /* full | normal */
	KT_SECRET,   /* jwt_secret */
	KT_DURATION, /* int64 milliseconds, > 0 */
	KT_SECONDS,  /* a duration stored as int64 seconds, >= 1 s */
	KT_LEVEL,    /* log level */
	KT_FORMAT,   /* log format */
	KT_PATH,     /* any string, empty = unset */
	KT_ORIGINS,  /* comma-separated origins */
	KT_RATE,     /* N/WINDOW */
	KT_SIZE,     /* int64 bytes, >= min */
	KT_URL,      /* http(s) URL, empty = unset */
	KT_TOKEN,    /* visible ASCII, empty = unset */
	KT_INT,      /* int64 in [min, max] */
	KT_NAME,     /* user or group name, empty = unset */
	KT_CIDRS,    /* comma-separated networks, empty = none */
	KT_BUS,      /* redis://host:port[/db], empty = none */
	KT_SWITCH,   /* on | off, stored as int 1 | 0 */
};

enum key_id {
	K_LISTEN,
	K_WORKERS,
	K_DB,
	K_DB_SYNC,
	K_CONTROL,
	K_ENV,
	K_JWT_SECRET,
	K_JWT_EXPIRE,
	K_REFRESH_EXPIRE,
	K_LOG_LEVEL,
	K_LOG_FORMAT,
	K_LOG_FILE,
	K_AUDIT_LOG,
	K_CORS_ORIGINS,
	K_RATE_LIMIT,
	K_BODY_LIMIT,
	K_SHUTDOWN_TIMEOUT,
	K_WORKER_TIMEOUT,
	K_MAX_MEMORY,
	K_EXT_URL,
	K_EXT_KEY,
	K_EXT_TIMEOUT,
	K_MAX_CONNECTIONS,
	K_WS_MESSAGE_RATE,
	K_KEEPALIVE_TIMEOUT,
	K_HEADER_TIMEOUT,
	K_REQUEST_TIMEOUT,
	K_LISTEN_TIMEOUT,
	K_DB_POOL_SIZE,
	K_JOB_THREADS,
	K_USER,
	K_GROUP,
	K_TRUST_PROXY,
	K_METRICS_ALLOW,
	K_BUS,
	K_IO_URING,
	K_COUNT
};

struct key_def {
	const char *name; /* file key */
	const char *env;  /* environment variable */
	enum key_type type;
	size_t off, cap;     /* field offset and size (generic types) */
	int64_t min, max;    /* KT_INT range, KT_SIZE minimum */
	const char *def;     /* applied by config_defaults(); NULL: resolved after loading */
	const char *doc_def; /* default as documented, when it differs from def */
	const char *example; /* value shown in the example file, when def is no example */
	const char *help;    /* one-line meaning */
	int restart_only;    /* read only at start: a reload reports a change and keeps the running value */
};

#define FIELD(f) .off = offsetof(struct resil_config, f), .cap = sizeof(((struct resil_config *)0)->f)

static const struct key_def keys[K_COUNT] = {
    [K_LISTEN] = {"listen", "RESIL_LISTEN", KT_LISTEN, FIELD(listen), .def = "127.0.0.1:8080",
                  .help = "address to listen on: IPv4:port, [IPv6]:port or unix:/path (port 0: any)",
                  .restart_only = 1},
    [K_WORKERS] = {"workers", "RESIL_WORKERS", KT_WORKERS, FIELD(workers), .def = "auto",
                   .help = "worker processes: 1-256, or auto (= number of online CPUs)"},
    [K_DB] = {"db", "RESIL_DB", KT_DB, FIELD(db), .def = "sqlite:data/resil.db",
              .help = "database: sqlite:///abs/path.db, sqlite:rel/path.db or a mongodb:// URI"},
    [K_DB_SYNC] = {"db_sync", "RESIL_DB_SYNC", KT_SYNC, FIELD(db_sync),
                   .doc_def = "full in production, normal in development", .example = "full",
                   .help = "SQLite durability: full (no acknowledged write lost on power loss; the WAL is "
                           "fsynced at every commit) or normal (a power loss may drop the last commits)"},
    [K_CONTROL] = {"control", "RESIL_CONTROL", KT_SOCKPATH, FIELD(control), .def = "./resild.sock",
                   .doc_def = "$RUNTIME_DIRECTORY/control.sock, else ./resild.sock",
                   .example = "/run/resild/control.sock", .help = "control socket path used by resilctl",
                   .restart_only = 1},
    [K_ENV] = {"env", "RESIL_ENV", KT_ENV, FIELD(env), .def = "development", .help = "development or production"},
    [K_JWT_SECRET] = {"jwt_secret", "RESIL_JWT_SECRET", KT_SECRET, FIELD(jwt_secret),
                      .doc_def = "production: required; development: random per start",
                      .example = "\"replace-with-at-least-32-random-bytes\"",
                      .help = "HS256 signing key for access tokens, at least 32 bytes"},
    [K_JWT_EXPIRE] = {"jwt_expire", "RESIL_JWT_EXPIRE", KT_SECONDS, FIELD(jwt_expire_s), .def = "15m",
                      .help = "access token lifetime (e.g. 15m, 12h, 900s)"},
    [K_REFRESH_EXPIRE] = {"refresh_expire", "RESIL_REFRESH_EXPIRE", KT_SECONDS, FIELD(refresh_expire_s), .def = "30d",
                          .help = "refresh token (session) lifetime (e.g. 30d, 12h)"},
    [K_LOG_LEVEL] = {"log_level", "RESIL_LOG_LEVEL", KT_LEVEL, FIELD(log_level),
                     .doc_def = "info in production, debug in development", .example = "info",
                     .help = "lowest level logged: debug, info, warn or error"},
    [K_LOG_FORMAT] = {"log_format", "RESIL_LOG_FORMAT", KT_FORMAT, FIELD(log_format),
                      .doc_def = "json in production, else pretty if stderr is a TTY, else json", .example = "json",
                      .help = "log line format: json or pretty", .restart_only = 1},
    [K_LOG_FILE] = {"log_file", "RESIL_LOG_FILE", KT_PATH, FIELD(log_file), .def = "", .doc_def = "unset",
                    .example = "/var/log/resild/resild.log",
                    .help = "also append JSON log lines to this file (reopened on SIGUSR1)", .restart_only = 1},
    [K_AUDIT_LOG] = {"audit_log", "RESIL_AUDIT_LOG", KT_PATH, FIELD(audit_log), .def = "",
                     .doc_def = "audit.log beside the SQLite database (MongoDB: in the working directory)",
                     .example = "/var/lib/resil/audit.log",
                     .help =
                         "append-only audit trail of patient data access, one JSON line each (reopened on SIGUSR1)"},
    [K_CORS_ORIGINS] = {"cors_origins", "RESIL_CORS_ORIGINS", KT_ORIGINS, FIELD(cors_origins),
                        .def = "http://localhost:3000",
                        .help = "comma-separated origins allowed by CORS (exact match)"},
    [K_RATE_LIMIT] = {"rate_limit", "RESIL_RATE_LIMIT", KT_RATE, FIELD(rate_limit_max), .def = "100/15m",
                      .help = "per-client request limit for /api/ as N/WINDOW (e.g. 100/15m)"},
    [K_BODY_LIMIT] = {"body_limit", "RESIL_BODY_LIMIT", KT_SIZE, FIELD(body_limit), .min = 1, .def = "10m",
                      .help = "largest request body accepted (e.g. 512k, 10m); larger gets 413"},
    [K_SHUTDOWN_TIMEOUT] = {"shutdown_timeout", "RESIL_SHUTDOWN_TIMEOUT", KT_DURATION, FIELD(shutdown_timeout_ms),
                            .def = "30s", .help = "graceful drain limit before remaining workers get SIGKILL"},
    [K_WORKER_TIMEOUT] = {"worker_timeout", "RESIL_WORKER_TIMEOUT", KT_DURATION, FIELD(worker_timeout_ms), .def = "30s",
                          .help = "heartbeat age after which a worker counts as hung and is killed"},
    [K_MAX_MEMORY] = {"max_memory", "RESIL_MAX_MEMORY", KT_SIZE, FIELD(max_memory), .min = 0, .def = "0",
                      .help = "worker RSS above which it is gracefully recycled (0 = off)"},
    [K_EXT_URL] = {"external_api_url", "RESIL_EXTERNAL_API_URL", KT_URL, FIELD(external_api_url), .def = "",
                   .doc_def = "unset (patient sync returns 503)", .example = "https://records.example.com/api",
                   .help = "base URL of the external patient records API"},
    [K_EXT_KEY] = {"external_api_key", "RESIL_EXTERNAL_API_KEY", KT_TOKEN, FIELD(external_api_key), .def = "",
                   .doc_def = "unset", .example = "your-api-token", .help = "bearer token sent to the external API"},
    [K_EXT_TIMEOUT] = {"external_api_timeout", "RESIL_EXTERNAL_API_TIMEOUT", KT_DURATION,
                       FIELD(external_api_timeout_ms), .def = "5s", .help = "per-call timeout for the external API"},
    [K_MAX_CONNECTIONS] = {"max_connections", "RESIL_MAX_CONNECTIONS", KT_INT, FIELD(max_connections), .min = 1,
                           .max = 1000000, .def = "10000",
                           .help = "open connections per worker; beyond it new ones get 503"},
    [K_WS_MESSAGE_RATE] = {"ws_message_rate", "RESIL_WS_MESSAGE_RATE", KT_INT, FIELD(ws_message_rate), .min = 1,
                           .max = 1000000, .def = "50",
                           .help = "chat events per second one WebSocket may send (bursts of 4 s worth); "
                                   "beyond: an error event, then close 1008"},
    [K_KEEPALIVE_TIMEOUT] = {"keepalive_timeout", "RESIL_KEEPALIVE_TIMEOUT", KT_DURATION, FIELD(keepalive_timeout_ms),
                             .def = "5s", .help = "idle time after which a keep-alive connection is closed"},
    [K_HEADER_TIMEOUT] = {"header_timeout", "RESIL_HEADER_TIMEOUT", KT_DURATION, FIELD(header_timeout_ms), .def = "10s",
                          .help = "time a client has to send complete request headers"},
    [K_REQUEST_TIMEOUT] = {"request_timeout", "RESIL_REQUEST_TIMEOUT", KT_DURATION, FIELD(request_timeout_ms),
                           .def = "30s", .help = "deadline of each request; when it passes the answer is 504"},
    [K_LISTEN_TIMEOUT] = {"listen_timeout", "RESIL_LISTEN_TIMEOUT", KT_DURATION, FIELD(listen_timeout_ms), .def = "10s",
                          .help = "on reload, how long to wait for a new worker to become ready"},
    [K_DB_POOL_SIZE] = {"db_pool_size", "RESIL_DB_POOL_SIZE", KT_INT, FIELD(db_pool_size), .min = 1, .max = 1024,
                        .def = "4", .help = "database connections per worker (1-1024)"},
    [K_JOB_THREADS] = {"job_threads", "RESIL_JOB_THREADS", KT_INT, FIELD(job_threads), .min = 0, .max = 1024,
                       .def = "0", .doc_def = "0 (= db_pool_size)",
                       .help = "database job threads per worker (0-1024, 0 = db_pool_size)"},
    [K_USER] = {"user", "RESIL_USER", KT_NAME, FIELD(user), .def = "", .doc_def = "unset", .example = "resil",
                .help = "user the workers run as (unset: not changed)"},
    [K_GROUP] = {"group", "RESIL_GROUP", KT_NAME, FIELD(group), .def = "", .doc_def = "unset", .example = "resil",
                 .help = "group the workers run as (unset: not changed)"},
    [K_TRUST_PROXY] = {"trust_proxy", "RESIL_TRUST_PROXY", KT_CIDRS, FIELD(trust_proxy), .def = "",
                       .doc_def = "empty: trust none", .example = "10.0.0.0/8, ::1",
                       .help = "comma-separated CIDRs of trusted proxies: from these peers the client address is the "
                               "right-most X-Forwarded-For (else Forwarded) address not itself trusted"},
    [K_METRICS_ALLOW] = {"metrics_allow", "RESIL_METRICS_ALLOW", KT_CIDRS, FIELD(metrics_allow),
                         .def = "127.0.0.0/8,::1",
                         .help = "comma-separated CIDRs allowed to read GET /metrics, matched against the "
                                 "socket's peer address (never a forwarded one); others get 403"},
    [K_BUS] = {"bus", "RESIL_BUS", KT_BUS, FIELD(bus), .def = "", .doc_def = "unset: single host",
               .example = "redis://127.0.0.1:6379/0",
               .help = "cross-host bus: redis://host:port[/db] (chat, /api/ rate limit and post cache across "
                       "hosts); unset: single host",
               .restart_only = 1},
    [K_IO_URING] = {"io_uring", "RESIL_IO_URING", KT_SWITCH, FIELD(io_uring), .def = "on",
                    .help = "on: a worker issues each loop iteration's WebSocket writes with one io_uring call where "
                            "the kernel allows it (else, and when off, one sendmsg per socket)"},
};

static const char *const env_names[] = {"development", "production"};
static const char *const sync_names[] = {"full", "normal"};
static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const format_names[] = {"pretty", "json"};
static const char *const switch_names[] = {"off", "on"};

/* ---- small helpers ------------------------------------------------------ */

static int __attribute__((format(printf, 3, 4))) errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -1;
}

/* A value as it may appear inside "..." in an error: escaped and cut. */
struct shown {
	char s[80];
};

static const char *show(const char *v, struct shown *b)
{
	const unsigned char *p = (const unsigned char *)v;
	size_t o = 0;

	for (; *p && o < 64; p++) {
		if (*p == '"' || *p == '\\') {
			b->s[o++] = '\\';
			b->s[o++] = (char)*p;
		} else if (*p < 0x20 || *p == 0x7f) {
			o += (size_t)snprintf(b->s + o, sizeof b->s - o, "\\x%02x", *p);
		} else {
			b->s[o++] = (char)*p;
		}
	}
	if (*p) {
		memcpy(b->s + o, "...", 3);
		o += 3;
	}
	b->s[o] = '\0';
	return b->s;
}

/* Unsigned decimal at the start of s (no sign, no blanks); *end after it. */
static int parse_uint(const char *s, const char **end, int64_t *out)
{
	char *e;
	long long v;

	if (!s || !isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtoll(s, &e, 10);
	if (errno == ERANGE)
		return -1;
	*out = v;
	*end = e;
	return 0;
}

static int parse_int_full(const char *s, int64_t *out)
{
	const char *e;

	return parse_uint(s, &e, out) || *e ? -1 : 0;
}

static int lookup_name(const char *v, const char *const *names, int n)
{
	for (int i = 0; i < n; i++)
		if (strcasecmp(v, names[i]) == 0)
			return i;
	return -1;
}

static int has_ctl_or_space(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s <= 0x20 || *s == 0x7f)
			return 1;
	return 0;
}

/* ---- value parsers ------------------------------------------------------ */

int config_parse_duration_ms(const char *s, int64_t *out_ms)
{
	static const struct {
		const char *unit;
		int64_t ms;
	} units[] = {{"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
	const char *u;
	int64_t v, r;

	if (parse_uint(s, &u, &v))
		return -1;
	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
		if (strcasecmp(u, units[i].unit) != 0)
			continue;
		if (__builtin_mul_overflow(v, units[i].ms, &r) || r <= 0)
			return -1;
		*out_ms = r;
		return 0;
	}
	return -1;
}

int config_parse_size(const char *s, int64_t *out)
{
	static const struct {
		const char *unit;
		int64_t mul;
	} units[] = {{"", 1},        {"b", 1},        {"k", 1024},       {"kb", 1024},
	             {"m", 1048576}, {"mb", 1048576}, {"g", 1073741824}, {"gb", 1073741824}};
	const char *u;
	int64_t v, r;

	if (parse_uint(s, &u, &v))
		return -1;
	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
		if (strcasecmp(u, units[i].unit) != 0)
			continue;
		if (__builtin_mul_overflow(v, units[i].mul, &r))
			return -1;
		*out = r;
		return 0;
	}
	return -1;
}

int config_parse_rate(const char *s, int64_t *max, int64_t *window_ms)
{
	const char *e;
	int64_t n, w;

	/* Bounds of the shared limiter's table entries (src/ratelimit.h:
	 * RL_LIMIT_MAX, RL_WINDOW_MAX_MS): larger values would be clamped there. */
	if (parse_uint(s, &e, &n) || n < 1 || n > 1048575 || *e != '/' || config_parse_duration_ms(e + 1, &w) ||
	    w > 4294967295LL)
		return -1;
	*max = n;
	*window_ms = w;
	return 0;
}

static int parse_port(const char *s, in_port_t *port)
{
	int64_t v;

	if (strlen(s) > 5 || parse_int_full(s, &v) || v > 65535)
		return -1;
	*port = htons((uint16_t)v);
	return 0;
}

int config_parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *sslen)
{
	struct sockaddr_storage st;
	socklen_t len;
	char host[INET6_ADDRSTRLEN];
	const char *sep;
	size_t n;

	if (!s)
		return -1;
	memset(&st, 0, sizeof st);
	if (strncmp(s, "unix:", 5) == 0) {
		struct sockaddr_un un = {.sun_family = AF_UNIX};

		n = strlen(s + 5);
		if (s[5] != '/' || n >= sizeof un.sun_path)
			return -1;
		memcpy(un.sun_path, s + 5, n + 1);
		len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
		memcpy(&st, &un, sizeof un);
	} else if (s[0] == '[') {
		struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};

		sep = strchr(s, ']');
		if (!sep || sep[1] != ':' || (n = (size_t)(sep - s - 1)) == 0 || n >= sizeof host)
			return -1;
		memcpy(host, s + 1, n);
		host[n] = '\0';
		if (inet_pton(AF_INET6, host, &in6.sin6_addr) != 1 || parse_port(sep + 2, &in6.sin6_port))
			return -1;
		len = sizeof in6;
		memcpy(&st, &in6, sizeof in6);
	} else {
		struct sockaddr_in in4 = {.sin_family = AF_INET};

		sep = strrchr(s, ':');
		if (!sep || (n = (size_t)(sep - s)) == 0 || n >= INET_ADDRSTRLEN)
			return -1;
		memcpy(host, s, n);
		host[n] = '\0';
		if (inet_pton(AF_INET, host, &in4.sin_addr) != 1 || parse_port(sep + 1, &in4.sin_port))
			return -1;
		len = sizeof in4;
		memcpy(&st, &in4, sizeof in4);
	}
	if (ss)
		*ss = st;
	if (sslen)
		*sslen = len;
	return 0;
}

/* scheme://host[:port], no path, no blanks. */
static int origin_valid(const char *s, size_t n)
{
	size_t skip;

	if (n > 8 && strncmp(s, "https://", 8) == 0)
		skip = 8;
	else if (n > 7 && strncmp(s, "http://", 7) == 0)
		skip = 7;
	else
		return 0;
	for (size_t i = skip; i < n; i++)
		if ((unsigned char)s[i] <= 0x20 || s[i] == 0x7f || s[i] == '/' || s[i] == ',')
			return 0;
	return 1;
}

/* ---- setting one key ---------------------------------------------------- */

static int set_string(struct resil_config *c, const struct key_def *k, const char *v, const char *who, char *err,
                      size_t errlen)
{
	size_t n = strlen(v);

	if (n >= k->cap)
		return errf(err, errlen, "%s: value too long (at most %zu bytes)", who, k->cap - 1);
	memcpy((char *)c + k->off, v, n + 1);
	return 0;
}

/* Store "a , b,,c" as "a,b,c" after checking each origin. */
static int set_origins(struct resil_config *c, const struct key_def *k, const char *v, const char *who, char *err,
                       size_t errlen)
{
	char *dst = (char *)c + k->off;
	size_t o = 0;
	struct shown q;

	while (*v) {
		const char *e = strchrnul(v, ',');
		const char *a = v, *b = e;

		while (a < b && isspace((unsigned char)*a))
			a++;
		while (b > a && isspace((unsigned char)b[-1]))
			b--;
		if (b > a) {
			size_t n = (size_t)(b - a);
			char one[256];

			if (!origin_valid(a, n)) {
				snprintf(one, sizeof one, "%.*s", (int)n, a);
				return errf(err, errlen,
				            "%s: invalid origin \"%s\" (expected scheme://host[:port], e.g. "
				            "http://localhost:3000)",
				            who, show(one, &q));
			}
			if (o + (o > 0) + n >= k->cap)
				return errf(err, errlen, "%s: value too long (at most %zu bytes)", who, k->cap - 1);
			if (o > 0)
				dst[o++] = ',';
			memcpy(dst + o, a, n);
			o += n;
		}
		v = *e ? e + 1 : e;
	}
	dst[o] = '\0';
	return 0;
}

static int key_set(struct resil_config *c, const struct key_def *k, const char *v, const char *who, char *err,
                   size_t errlen)
{
	char *field = (char *)c + k->off;
	struct shown q;
	int64_t n, w;
	size_t len;
	int i;

	switch (k->type) {
	case KT_LISTEN:
		if (config_parse_listen(v, NULL, NULL))
			return errf(err, errlen,
			            "%s: invalid address \"%s\" (expected IPv4:port, [IPv6]:port or unix:/path, "
			            "port 0-65535)",
			            who, show(v, &q));
		return set_string(c, k, v, who, err, errlen);
	case KT_WORKERS:
		if (strcasecmp(v, "auto") == 0) {
			long cpus = sysconf(_SC_NPROCESSORS_ONLN);

			c->workers = cpus < 1 ? 1 : cpus > WORKERS_MAX ? WORKERS_MAX : (int)cpus;
			c->workers_auto = 1;
			return 0;
		}
		if (parse_int_full(v, &n) || n < 1 || n > WORKERS_MAX)
			return errf(err, errlen, "%s: invalid value \"%s\" (expected a number 1-%d or auto)", who,
			            show(v, &q), WORKERS_MAX);
		c->workers = (int)n;
		c->workers_auto = 0;
		return 0;
	case KT_DB:
		if (has_ctl_or_space(v) ||
		    !((strncmp(v, "sqlite:", 7) == 0 && v[7]) || (strncmp(v, "mongodb://", 10) == 0 && v[10]) ||
		      (strncmp(v, "mongodb+srv://", 14) == 0 && v[14])))
			return errf(err, errlen,
			            "%s: invalid URI \"%s\" (expected sqlite:PATH, mongodb://... or "
			            "mongodb+srv://...)",
			            who, show(v, &q));
		return set_string(c, k, v, who, err, errlen);
	case KT_SOCKPATH: {
		struct sockaddr_un un;

		if (!*v)
			return errf(err, errlen, "%s: empty path", who);
		if (strlen(v) >= sizeof un.sun_path)
			return errf(err, errlen, "%s: path too long for a Unix socket (at most %zu bytes)", who,
			            sizeof un.sun_path - 1);
		return set_string(c, k, v, who, err, errlen);
	}
	case KT_ENV:
		if ((i = lookup_name(v, env_names, 2)) < 0)
			return errf(err, errlen, "%s: invalid value \"%s\" (expected development or production)", who,
			            show(v, &q));
		c->env = i;
		return 0;
	case KT_SYNC:
		if ((i = lookup_name(v, sync_names, 2)) < 0)
			return errf(err, errlen, "%s: invalid value \"%s\" (expected full or normal)", who,
			            show(v, &q));
		c->db_sync = i;
		return 0;
	case KT_LEVEL:
		if ((i = lookup_name(v, level_names, 4)) < 0)
			return errf(err, errlen, "%s: invalid value \"%s\" (expected debug, info, warn or error)", who,
			            show(v, &q));
		c->log_level = i;
		return 0;
	case KT_SWITCH: {
		int on;
		if ((on = lookup_name(v, switch_names, 2)) < 0)
			return errf(err, errlen, "%s: invalid value \"%s\" (expected on or off)", who, show(v, &q));
		memcpy(field, &on, sizeof on);
		return 0;
	}
	case KT_FORMAT:
		if ((i = lookup_name(v, format_names, 2)) < 0)
			return errf(err, errlen, "%s: invalid value \"%s\" (expected json or pretty)", who,
			            show(v, &q));
		c->log_format = i;
		return 0;
	case KT_SECRET:
		/* Never echo the secret itself. */
		len = strlen(v);
		if (len < JWT_SECRET_MIN)
			return errf(err, errlen, "%s: too short (%zu bytes, at least %d required)", who, len,
			            JWT_SECRET_MIN);
		if (len > sizeof c->jwt_secret)
			return errf(err, errlen, "%s: too long (at most %zu bytes)", who, sizeof c->jwt_secret);
		memcpy(c->jwt_secret, v, len);
		c->jwt_secret_len = len;
		c->jwt_secret_generated = 0;
		return 0;
	case KT_DURATION:
	case KT_SECONDS:
		if (config_parse_duration_ms(v, &n))
			return errf(err, errlen,
			            "%s: invalid duration \"%s\" (expected a positive duration, e.g. 250ms, 30s, 15m, "
			            "12h, 7d)",
			            who, show(v, &q));
		if (k->type == KT_SECONDS) {
			if (n < 1000)
				return errf(err, errlen, "%s: invalid duration \"%s\" (at least 1s)", who, show(v, &q));
			n /= 1000;
		}
		memcpy(field, &n, sizeof n);
		return 0;
	case KT_SIZE:
		if (config_parse_size(v, &n))
			return errf(err, errlen, "%s: invalid size \"%s\" (expected e.g. 512k, 10m)", who, show(v, &q));
		if (n < k->min)
			return errf(err, errlen, "%s: invalid size \"%s\" (must be at least %" PRId64 ")", who,
			            show(v, &q), k->min);
		memcpy(field, &n, sizeof n);
		return 0;
	case KT_RATE:
		if (config_parse_rate(v, &n, &w))
			return errf(err, errlen,
			            "%s: invalid rate \"%s\" (expected N/WINDOW with 1 <= N <= 1048575 and WINDOW up "
			            "to 49d, e.g. 100/15m)",
			            who, show(v, &q));
		c->rate_limit_max = n;
		c->rate_limit_window_ms = w;
		return 0;
	case KT_INT:
		if (parse_int_full(v, &n) || n < k->min || n > k->max)
			return errf(err, errlen, "%s: invalid value \"%s\" (expected a number %" PRId64 "-%" PRId64 ")",
			            who, show(v, &q), k->min, k->max);
		memcpy(field, &n, sizeof n);
		return 0;
	case KT_ORIGINS: return set_origins(c, k, v, who, err, errlen);
	case KT_CIDRS: {
		struct cidr_list l;
		char why[160];
		if (cidr_list_parse(v, &l, why, sizeof(why)) < 0)
			return errf(err, errlen, "%s: %s", who, why);
		return set_string(c, k, v, who, err, errlen);
	}
	case KT_URL:
		if (*v) {
			size_t skip = strncmp(v, "https://", 8) == 0 ? 8 : strncmp(v, "http://", 7) == 0 ? 7 : 0;

			if (!skip || !v[skip] || v[skip] == '/' || has_ctl_or_space(v))
				return errf(err, errlen,
				            "%s: invalid URL \"%s\" (expected http://HOST... or https://HOST...)", who,
				            show(v, &q));
		}
		if (set_string(c, k, v, who, err, errlen))
			return -1;
		/* "{url}/patients/..." must not get a double slash. */
		len = strlen(field);
		while (len > 0 && field[len - 1] == '/')
			field[--len] = '\0';
		return 0;
	case KT_TOKEN:
		/* Sent in a header: no blanks or control bytes (no header injection). */
		if (has_ctl_or_space(v))
			return errf(err, errlen, "%s: invalid token (blanks or control characters)", who);
		return set_string(c, k, v, who, err, errlen);
	case KT_NAME:
		for (const char *p = v; *p; p++)
			if (!isalnum((unsigned char)*p) && *p != '_' && *p != '.' && (*p != '-' || p == v))
				return errf(err, errlen, "%s: invalid name \"%s\" (expected letters, digits, . _ -)",
				            who, show(v, &q));
		return set_string(c, k, v, who, err, errlen);
	case KT_PATH: return set_string(c, k, v, who, err, errlen);
	case KT_BUS: {
		char why[160];

		if (*v && rbus_parse_uri(v, NULL, why, sizeof why) < 0)
			return errf(err, errlen, "%s: %s", who, why);
		return set_string(c, k, v, who, err, errlen);
	}
	}
	abort();
}

static int key_find(const char *name)
{
	for (int i = 0; i < K_COUNT; i++)
		if (strcasecmp(name, keys[i].name) == 0)
			return i;
	return -1;
}

void config_defaults(struct resil_config *cfg)
{
	char err[CONFIG_ERR_MAX];

	memset(cfg, 0, sizeof *cfg);
	for (int i = 0; i < K_COUNT; i++)
		if (keys[i].def && key_set(cfg, &keys[i], keys[i].def, keys[i].name, err, sizeof err))
			abort(); /* the table's own defaults must be valid */
	cfg->log_level = CONFIG_LOG_DEBUG;
	cfg->db_sync = CONFIG_DB_SYNC_NORMAL;
	cfg->log_format = isatty(STDERR_FILENO) ? CONFIG_LOG_PRETTY : CONFIG_LOG_JSON;
}

/* ---- sources ------------------------------------------------------------ */

static char *trim(char *s)
{
	char *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

static int parse_line(struct resil_config *c, unsigned char *set, const char *path, int lineno, char *line, char *err,
                      size_t errlen)
{
	char *s = trim(line), *eq, *v, *key;
	char who[CONFIG_ERR_MAX];
	struct shown q;
	int idx;

	if (!*s || *s == '#' || *s == ';')
		return 0;
	if (*s == '[') {
		char *rb = strchr(s, ']');

		if (!rb)
			return errf(err, errlen, "%s:%d: malformed section header (missing ])", path, lineno);
		rb = trim(rb + 1);
		if (*rb && *rb != '#' && *rb != ';')
			return errf(err, errlen, "%s:%d: unexpected text after section header", path, lineno);
		return 0;
	}
	eq = strchr(s, '=');
	if (!eq)
		return errf(err, errlen, "%s:%d: expected key = value, got \"%s\"", path, lineno, show(s, &q));
	*eq = '\0';
	key = trim(s);
	if ((idx = key_find(key)) < 0)
		return errf(err, errlen, "%s:%d: unknown key \"%s\"", path, lineno, show(key, &q));
	snprintf(who, sizeof who, "%s:%d: %s", path, lineno, keys[idx].name);
	v = eq + 1;
	while (isspace((unsigned char)*v))
		v++;
	if (*v == '"') {
		char *r = v + 1, *w = v;

		for (; *r && *r != '"'; r++) {
			if (*r == '\\' && (r[1] == '"' || r[1] == '\\'))
				r++;
			*w++ = *r;
		}
		if (*r != '"')
			return errf(err, errlen, "%s: unterminated quoted value", who);
		*w = '\0';
		r = trim(r + 1);
		if (*r && *r != '#' && *r != ';')
			return errf(err, errlen, "%s: unexpected text after quoted value", who);
	} else {
		v[strcspn(v, "#;")] = '\0';
		v = trim(v);
	}
	if (key_set(c, &keys[idx], v, who, err, errlen))
		return -1;
	set[idx] = 1;
	return 0;
}

static int load_file(struct resil_config *c, unsigned char *set, const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "re");
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int lineno = 0, rc = 0, e;

	if (!f)
		return errf(err, errlen, "cannot read config file %s: %s", path, strerror(errno));
	errno = 0;
	while ((n = getline(&line, &cap, f)) >= 0) {
		char *s = line;

		lineno++;
		if (memchr(line, '\0', (size_t)n)) {
			rc = errf(err, errlen, "%s:%d: NUL byte in line", path, lineno);
			break;
		}
		if (lineno == 1 && strncmp(s, "\xef\xbb\xbf", 3) == 0)
			s += 3; /* UTF-8 byte order mark */
		if ((rc = parse_line(c, set, path, lineno, s, err, errlen)) != 0)
			break;
		errno = 0;
	}
	e = errno;
	if (rc == 0 && ferror(f))
		rc = errf(err, errlen, "cannot read config file %s: %s", path, strerror(e ? e : EIO));
	if (line)
		sodium_memzero(line, cap); /* it may have held jwt_secret */
	free(line);
	fclose(f);
	return rc;
}

/* Defaults that depend on other keys or on the process, once all sources
 * are read. */
static int resolve(struct resil_config *c, const unsigned char *set, const char *(*getenv_fn)(const char *), char *err,
                   size_t errlen)
{
	if (!set[K_CONTROL]) {
		const char *rd = getenv_fn("RUNTIME_DIRECTORY");

		if (rd && *rd) {
			struct sockaddr_un un;
			size_t n = strcspn(rd, ":"); /* systemd lists several as a:b */

			if (n + sizeof "/control.sock" > sizeof un.sun_path)
				return errf(err, errlen,
				            "control: $RUNTIME_DIRECTORY/control.sock is too long for a Unix socket "
				            "(at most %zu bytes); set control",
				            sizeof un.sun_path - 1);
			snprintf(c->control, sizeof c->control, "%.*s/control.sock", (int)n, rd);
		}
	}
	if (!set[K_DB_SYNC])
		c->db_sync = c->env == CONFIG_ENV_PRODUCTION ? CONFIG_DB_SYNC_FULL : CONFIG_DB_SYNC_NORMAL;
	if (!set[K_LOG_LEVEL])
		c->log_level = c->env == CONFIG_ENV_PRODUCTION ? CONFIG_LOG_INFO : CONFIG_LOG_DEBUG;
	if (!set[K_LOG_FORMAT])
		c->log_format =
		    c->env == CONFIG_ENV_PRODUCTION || !isatty(STDERR_FILENO) ? CONFIG_LOG_JSON : CONFIG_LOG_PRETTY;
	if (!set[K_JWT_SECRET]) {
		if (c->env == CONFIG_ENV_PRODUCTION)
			return errf(err, errlen, "jwt_secret: required when env = production (at least %d bytes)",
			            JWT_SECRET_MIN);
		if (sodium_init() < 0)
			return errf(err, errlen, "jwt_secret: cannot initialise libsodium to generate a secret");
		randombytes_buf(c->jwt_secret, JWT_SECRET_MIN);
		c->jwt_secret_len = JWT_SECRET_MIN;
		c->jwt_secret_generated = 1;
	}
	return 0;
}

/* ---- command line ------------------------------------------------------- */

enum flag_kind { F_KEY, F_CONFIG, F_FOREGROUND, F_CHECK, F_VERSION, F_HELP };

static const struct cli_flag {
	const char *lng;
	char shrt;
	enum flag_kind kind;
	int key;
	const char *arg; /* value placeholder for --help; NULL: no value */
	const char *help;
} flags[] = {
    {"config", 'c', F_CONFIG, -1, "FILE", "read settings from FILE"},
    {"listen", 0, F_KEY, K_LISTEN, "ADDR:PORT", "address to listen on (listen)"},
    {"workers", 0, F_KEY, K_WORKERS, "N|auto", "number of worker processes (workers)"},
    {"db", 0, F_KEY, K_DB, "URI", "database URI (db)"},
    {"control", 0, F_KEY, K_CONTROL, "PATH", "control socket path (control)"},
    {"foreground", 0, F_FOREGROUND, -1, NULL, "stay in the foreground, do not detach"},
    {"check-config", 0, F_CHECK, -1, NULL, "validate the configuration and exit 0 or 1"},
    {"version", 'V', F_VERSION, -1, NULL, "print the version and exit"},
    {"help", 'h', F_HELP, -1, NULL, "print this help and exit"},
};
#define NFLAGS (sizeof flags / sizeof flags[0])

struct cli {
	const char *val[K_COUNT]; /* last value given per key, NULL: none */
	const char *who[K_COUNT];
	const char *config;
	int foreground, check;
	enum config_action action;
};

static int parse_cli(struct cli *cl, int argc, char **argv, char *err, size_t errlen)
{
	struct shown q;

	for (int i = 1; i < argc && argv[i]; i++) {
		const char *a = argv[i], *val = NULL;
		const struct cli_flag *f = NULL;

		if (strcmp(a, "--") == 0) {
			if (i + 1 < argc && argv[i + 1])
				return errf(err, errlen, "unexpected argument \"%s\" (try --help)",
				            show(argv[i + 1], &q));
			break;
		}
		if (a[0] == '-' && a[1] == '-') {
			size_t n = strcspn(a + 2, "=");

			for (size_t j = 0; j < NFLAGS; j++)
				if (strlen(flags[j].lng) == n && memcmp(flags[j].lng, a + 2, n) == 0)
					f = &flags[j];
			if (!f) {
				char name[64];

				snprintf(name, sizeof name, "%.*s", (int)(n < 60 ? n : 60), a + 2);
				return errf(err, errlen, "unknown option \"--%s\" (try --help)", show(name, &q));
			}
			if (a[2 + n] == '=')
				val = a + 3 + n;
		} else if (a[0] == '-' && a[1]) {
			for (size_t j = 0; j < NFLAGS; j++)
				if (flags[j].shrt && flags[j].shrt == a[1])
					f = &flags[j];
			if (!f || (a[2] && !f->arg))
				return errf(err, errlen, "unknown option \"%s\" (try --help)", show(a, &q));
			if (a[2])
				val = a + 2;
		} else {
			return errf(err, errlen, "unexpected argument \"%s\" (try --help)", show(a, &q));
		}
		if (f->arg && !val) {
			if (i + 1 >= argc || !argv[i + 1])
				return errf(err, errlen, "--%s: requires a value (%s)", f->lng, f->arg);
			val = argv[++i];
		} else if (!f->arg && val) {
			return errf(err, errlen, "--%s: takes no value", f->lng);
		}
		switch (f->kind) {
		case F_KEY:
			cl->val[f->key] = val;
			cl->who[f->key] = f->lng;
			break;
		case F_CONFIG: cl->config = val; break;
		case F_FOREGROUND: cl->foreground = 1; break;
		case F_CHECK: cl->check = 1; break;
		case F_VERSION:
			if (cl->action == CONFIG_RUN)
				cl->action = CONFIG_VERSION;
			break;
		case F_HELP:
			if (cl->action == CONFIG_RUN)
				cl->action = CONFIG_HELP;
			break;
		}
	}
	return 0;
}

static const char *real_getenv(const char *name)
{
	return getenv(name);
}

int config_load_env(struct resil_config *cfg, int argc, char **argv, const char *(*getenv_fn)(const char *),
                    enum config_action *action, char *err, size_t errlen)
{
	struct resil_config *tmp;
	struct cli cl;
	unsigned char set[K_COUNT];
	char who[80];
	int rc = -1;

	if (!getenv_fn)
		getenv_fn = real_getenv;
	memset(&cl, 0, sizeof cl);
	memset(set, 0, sizeof set);
	if (action)
		*action = CONFIG_RUN;
	if (err && errlen)
		err[0] = '\0';
	if (parse_cli(&cl, argc, argv, err, errlen))
		return -1;
	if (cl.action != CONFIG_RUN) {
		if (action)
			*action = cl.action;
		return 0;
	}
	/* On the heap: the struct is ~10 KiB and the secret is wiped below. */
	if (!(tmp = malloc(sizeof *tmp)))
		return errf(err, errlen, "cannot load configuration: %s", strerror(errno));
	config_defaults(tmp);
	if (cl.config) {
		if (strlen(cl.config) >= sizeof tmp->config_file) {
			errf(err, errlen, "--config: path too long (at most %zu bytes)", sizeof tmp->config_file - 1);
			goto out;
		}
		strcpy(tmp->config_file, cl.config);
		if (load_file(tmp, set, cl.config, err, errlen))
			goto out;
	}
	for (int i = 0; i < K_COUNT; i++) {
		const char *v = getenv_fn(keys[i].env);

		if (v) {
			if (key_set(tmp, &keys[i], v, keys[i].env, err, errlen))
				goto out;
			set[i] = 1;
		}
	}
	for (int i = 0; i < K_COUNT; i++) {
		if (!cl.val[i])
			continue;
		snprintf(who, sizeof who, "--%s", cl.who[i]);
		if (key_set(tmp, &keys[i], cl.val[i], who, err, errlen))
			goto out;
		set[i] = 1;
	}
	tmp->foreground = cl.foreground;
	tmp->check_config = cl.check;
	if (resolve(tmp, set, getenv_fn, err, errlen))
		goto out;
	*cfg = *tmp;
	rc = 0;
out:
	sodium_memzero(tmp, sizeof *tmp);
	free(tmp);
	return rc;
}

int config_load(struct resil_config *cfg, int argc, char **argv, enum config_action *action, char *err, size_t errlen)
{
	return config_load_env(cfg, argc, argv, real_getenv, action, err, errlen);
}

/* ---- output ------------------------------------------------------------- */

static void fmt_duration(int64_t ms, char *buf, size_t n)
{
	static const struct {
		int64_t ms;
		const char *unit;
	} u[] = {{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}};

	for (size_t i = 0; i < sizeof u / sizeof u[0]; i++) {
		if (ms % u[i].ms == 0) {
			snprintf(buf, n, "%" PRId64 "%s", ms / u[i].ms, u[i].unit);
			return;
		}
	}
	snprintf(buf, n, "%" PRId64 "ms", ms);
}

static void fmt_size(int64_t v, char *buf, size_t n)
{
	if (v > 0 && v % 1073741824 == 0)
		snprintf(buf, n, "%" PRId64 "g", v / 1073741824);
	else if (v > 0 && v % 1048576 == 0)
		snprintf(buf, n, "%" PRId64 "m", v / 1048576);
	else if (v > 0 && v % 1024 == 0)
		snprintf(buf, n, "%" PRId64 "k", v / 1024);
	else
		snprintf(buf, n, "%" PRId64, v);
}

/* The value of key k in cfg as it would be written in the file. */
static const char *key_value(const struct resil_config *c, const struct key_def *k, char *buf, size_t n)
{
	const char *field = (const char *)c + k->off;
	int64_t v;

	switch (k->type) {
	case KT_WORKERS:
		if (c->workers_auto)
			return "auto";
		snprintf(buf, n, "%d", c->workers);
		return buf;
	case KT_ENV: return env_names[c->env == CONFIG_ENV_PRODUCTION];
	case KT_SYNC: return sync_names[c->db_sync == CONFIG_DB_SYNC_NORMAL];
	case KT_LEVEL: return c->log_level >= 0 && c->log_level < 4 ? level_names[c->log_level] : "info";
	case KT_FORMAT: return format_names[c->log_format == CONFIG_LOG_JSON];
	case KT_SWITCH: {
		int on;
		memcpy(&on, field, sizeof on);
		return switch_names[on != 0];
	}
	case KT_SECRET: return "";
	case KT_DURATION:
		memcpy(&v, field, sizeof v);
		fmt_duration(v, buf, n);
		return buf;
	case KT_SECONDS:
		memcpy(&v, field, sizeof v);
		if (v > INT64_MAX / 1000)
			snprintf(buf, n, "%" PRId64 "s", v);
		else
			fmt_duration(v * 1000, buf, n);
		return buf;
	case KT_SIZE:
		memcpy(&v, field, sizeof v);
		fmt_size(v, buf, n);
		return buf;
	case KT_INT:
		memcpy(&v, field, sizeof v);
		snprintf(buf, n, "%" PRId64, v);
		return buf;
	case KT_RATE: {
		char w[32];

		fmt_duration(c->rate_limit_window_ms, w, sizeof w);
		snprintf(buf, n, "%" PRId64 "/%s", c->rate_limit_max, w);
		return buf;
	}
	case KT_LISTEN:
	case KT_DB:
	case KT_SOCKPATH:
	case KT_PATH:
	case KT_ORIGINS:
	case KT_URL:
	case KT_TOKEN:
	case KT_NAME:
	case KT_BUS:
	case KT_CIDRS: return field;
	}
	abort();
}

/* Write v so that the file parser reads it back unchanged. */
static void put_value(FILE *out, const char *v)
{
	if (*v && !strpbrk(v, "#;\"\\") && !isspace((unsigned char)*v) && !isspace((unsigned char)v[strlen(v) - 1])) {
		fputs(v, out);
		return;
	}
	fputc('"', out);
	for (; *v; v++) {
		if (*v == '"' || *v == '\\')
			fputc('\\', out);
		fputc(*v, out);
	}
	fputc('"', out);
}

void config_print_effective(const struct resil_config *cfg, FILE *out)
{
	char buf[64];

	for (int i = 0; i < K_COUNT; i++) {
		const struct key_def *k = &keys[i];

		if (k->type == KT_SECRET) {
			if (cfg->jwt_secret_generated)
				fprintf(out, "# %s = (generated at start, %zu bytes)\n", k->name, cfg->jwt_secret_len);
			else
				fprintf(out, "# %s = (set, %zu bytes, not shown)\n", k->name, cfg->jwt_secret_len);
		} else if (k->type == KT_TOKEN && cfg->external_api_key[0]) {
			fprintf(out, "# %s = (set, not shown)\n", k->name);
		} else {
			fprintf(out, "%s = ", k->name);
			put_value(out, key_value(cfg, k, buf, sizeof buf));
			fputc('\n', out);
		}
	}
	if (cfg->workers_auto)
		fprintf(out, "# workers = auto resolved to %d\n", cfg->workers);
}

/* ---- handing the configuration to an exec'd worker ----------------------- */

/* Lines the worker's import reads besides the table's keys: the values no
 * key writes back as given (the secret, which may be random bytes, and the
 * facts about how the supervisor got its configuration). */
#define EXPORT_SECRET_HEX "@jwt_secret_hex"
#define EXPORT_SECRET_GENERATED "@jwt_secret_generated"
#define EXPORT_WORKERS_AUTO "@workers_auto"
#define EXPORT_FOREGROUND "@foreground"
#define EXPORT_CONFIG_FILE "@config_file"

int config_export(const struct resil_config *cfg, FILE *out)
{
	char buf[64], hex[2 * sizeof cfg->jwt_secret + 1];

	for (int i = 0; i < K_COUNT; i++) {
		const struct key_def *k = &keys[i];

		if (k->type == KT_SECRET)
			continue;
		fprintf(out, "%s = ", k->name);
		put_value(out, key_value(cfg, k, buf, sizeof buf));
		fputc('\n', out);
	}
	sodium_bin2hex(hex, sizeof hex, cfg->jwt_secret, cfg->jwt_secret_len);
	fprintf(out, "%s = %s\n%s = %d\n%s = %d\n%s = %d\n%s = ", EXPORT_SECRET_HEX, hex, EXPORT_SECRET_GENERATED,
	        cfg->jwt_secret_generated, EXPORT_WORKERS_AUTO, cfg->workers_auto, EXPORT_FOREGROUND, cfg->foreground,
	        EXPORT_CONFIG_FILE);
	put_value(out, cfg->config_file);
	fputc('\n', out);
	sodium_memzero(hex, sizeof hex);
	return fflush(out) == 0 && !ferror(out) ? 0 : -1;
}

/* One "@name = value" line of config_export(). */
static int import_extra(struct resil_config *c, const char *name, const char *v, char *err, size_t errlen)
{
	if (strcmp(name, EXPORT_SECRET_HEX) == 0) {
		size_t len = 0;

		if (sodium_hex2bin(c->jwt_secret, sizeof c->jwt_secret, v, strlen(v), NULL, &len, NULL) < 0 ||
		    len < JWT_SECRET_MIN)
			return errf(err, errlen, "exported configuration: bad jwt_secret");
		c->jwt_secret_len = len;
	} else if (strcmp(name, EXPORT_SECRET_GENERATED) == 0) {
		c->jwt_secret_generated = atoi(v) != 0;
	} else if (strcmp(name, EXPORT_WORKERS_AUTO) == 0) {
		c->workers_auto = atoi(v) != 0;
	} else if (strcmp(name, EXPORT_FOREGROUND) == 0) {
		c->foreground = atoi(v) != 0;
	} else if (strcmp(name, EXPORT_CONFIG_FILE) == 0) {
		snprintf(c->config_file, sizeof c->config_file, "%s", v);
	}
	/* Other @names come from a newer binary: ignored, like unknown keys. */
	return 0;
}

int config_import(struct resil_config *cfg, FILE *in, char *err, size_t errlen)
{
	unsigned char set[K_COUNT] = {0};
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int lineno = 0, rc = 0;

	config_defaults(cfg);
	while (rc == 0 && (n = getline(&line, &cap, in)) >= 0) {
		char *s = trim(line), *eq = strchr(s, '=');

		lineno++;
		if (!*s)
			continue;
		if (!eq) {
			rc = errf(err, errlen, "exported configuration: line %d: expected key = value", lineno);
			break;
		}
		char name[64];
		size_t nl = (size_t)(eq - s);

		while (nl && isspace((unsigned char)s[nl - 1]))
			nl--;
		snprintf(name, sizeof name, "%.*s", (int)nl, s);
		if (*name == '@') {
			char *v = trim(eq + 1);

			if (*v == '"') { /* only @config_file may be quoted: undo put_value */
				char *r = v + 1, *w = v;

				for (; *r && *r != '"'; r++) {
					if (*r == '\\' && (r[1] == '"' || r[1] == '\\'))
						r++;
					*w++ = *r;
				}
				*w = '\0';
			}
			rc = import_extra(cfg, name, v, err, errlen);
			continue;
		}
		if (key_find(name) < 0)
			continue; /* a key this binary does not know: the supervisor is newer or older */
		rc = parse_line(cfg, set, "exported configuration", lineno, s, err, errlen);
	}
	if (line)
		sodium_memzero(line, cap);
	free(line);
	if (rc == 0 && !cfg->jwt_secret_len)
		rc = errf(err, errlen, "exported configuration: no jwt_secret");
	return rc;
}

static const char *doc_default(const struct key_def *k)
{
	return k->doc_def ? k->doc_def : k->def;
}

void config_print_example(FILE *out)
{
	fputs("# resild.conf - configuration of resild(8); see resild.conf(5).\n"
	      "#\n"
	      "# Format: \"key = value\" lines. \"#\" or \";\" start a comment, also after a\n"
	      "# value; quote a value (\"...\", with \\\" and \\\\ escapes) to keep a \"#\" or \";\"\n"
	      "# in it. [section] headers are accepted and ignored: all keys are global.\n"
	      "# Durations: 250ms, 30s, 15m, 12h, 7d (a bare number is seconds).\n"
	      "# Sizes: 512, 64k, 10m, 1g (also kb, mb, gb; 1k = 1024 bytes).\n"
	      "#\n"
	      "# Precedence: built-in defaults < this file < RESIL_* environment\n"
	      "# variables < command line. Every setting below is commented out and\n"
	      "# shows its default (or, where the default is computed, an example).\n",
	      out);
	for (int i = 0; i < K_COUNT; i++) {
		const struct key_def *k = &keys[i];

		fprintf(out, "\n# %s\n# environment: %s\n", k->help, k->env);
		if (k->doc_def)
			fprintf(out, "# default: %s\n", k->doc_def);
		fprintf(out, "#%s = %s\n", k->name, k->example ? k->example : k->def);
	}
}

void config_print_help(const char *progname)
{
	const char *p = progname && *progname ? progname : "resild";
	const char *base = strrchr(p, '/');

	p = base ? base + 1 : p;
	printf("Usage: %s [-c FILE] [--listen ADDR:PORT] [--workers N|auto] [--db URI]\n"
	       "       %*s [--control PATH] [--foreground] [--check-config]\n"
	       "       %*s [--version] [--help]\n\n"
	       "Options:\n",
	       p, (int)strlen(p), "", (int)strlen(p), "");
	for (size_t i = 0; i < NFLAGS; i++) {
		char spec[48];

		snprintf(spec, sizeof spec, "%c%c%c --%s%s%s", flags[i].shrt ? '-' : ' ',
		         flags[i].shrt ? flags[i].shrt : ' ', flags[i].shrt ? ',' : ' ', flags[i].lng,
		         flags[i].arg ? " " : "", flags[i].arg ? flags[i].arg : "");
		printf("  %-28s %s\n", spec, flags[i].help);
	}
	printf("\nSettings (file key, environment variable). The environment overrides\n"
	       "the file (-c), the command line overrides both.\n");
	for (int i = 0; i < K_COUNT; i++)
		printf("  %s, %s\n      %s\n      default: %s%s\n", keys[i].name, keys[i].env, keys[i].help,
		       *doc_default(&keys[i]) ? doc_default(&keys[i]) : "unset",
		       keys[i].restart_only ? " (restart only: a reload keeps the running value)" : "");
}

/* Only plain values are restart-only: strings (NUL-terminated in their
 * field) and integers (compared bytewise). */
static int key_is_string(enum key_type t)
{
	return t == KT_LISTEN || t == KT_SOCKPATH || t == KT_PATH;
}

int config_restart_changes(struct resil_config *loaded, const struct resil_config *running, const char **names, int max)
{
	int n = 0;
	for (int i = 0; i < K_COUNT; i++) {
		if (!keys[i].restart_only)
			continue;
		char *nv = (char *)loaded + keys[i].off;
		const char *rv = (const char *)running + keys[i].off;
		int differs =
		    key_is_string(keys[i].type) ? strncmp(nv, rv, keys[i].cap) != 0 : memcmp(nv, rv, keys[i].cap) != 0;
		if (!differs)
			continue;
		memcpy(nv, rv, keys[i].cap);
		if (n < max)
			names[n] = keys[i].name;
		n++;
	}
	return n;
}

/* roff-escape one line of text; cap: start it with a capital letter.
 * Words that look like paths, URIs or names get \% so that they are never
 * hyphenated. */
static void roff_puts(const char *s, int cap)
{
	for (const char *p = s; *p; p++) {
		if (p == s || p[-1] == ' ') {
			size_t n = strcspn(p, " ");

			/* trailing punctuation does not count */
			for (size_t i = 0; i + 1 < n; i++) {
				if (strchr("/:_$.@", p[i])) {
					fputs("\\%", stdout);
					break;
				}
			}
		}
		if (p == s && cap && islower((unsigned char)*p))
			putchar(toupper((unsigned char)*p));
		else if (*p == '\\')
			fputs("\\e", stdout);
		else if (*p == '-')
			fputs("\\-", stdout);
		else
			putchar(*p);
	}
}

void config_print_man_keys(void)
{
	for (int i = 0; i < K_COUNT; i++) {
		const char *d = doc_default(&keys[i]);

		printf(".TP\n.B %s\n", keys[i].name); /* [a-z_]: nothing to escape */
		roff_puts(keys[i].help, 1);
		printf(".\n.br\nEnvironment: \\fB");
		roff_puts(keys[i].env, 0);
		printf("\\fR; default: ");
		if (*d) {
			printf("\\fB");
			roff_puts(d, 0);
			printf("\\fR");
		} else {
			printf("unset");
		}
		printf(".\n");
		if (keys[i].restart_only)
			printf(".br\nRestart only: a reload reports a change and keeps the running value.\n");
	}
}

int config_origin_allowed(const struct resil_config *cfg, const char *origin, size_t len)
{
	const char *p = cfg->cors_origins;

	if (!origin || len == 0)
		return 0;
	for (;;) {
		const char *e = strchrnul(p, ',');
		const char *a = p, *b = e;

		while (a < b && (*a == ' ' || *a == '\t'))
			a++;
		while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
			b--;
		if ((size_t)(b - a) == len && memcmp(a, origin, len) == 0)
			return 1;
		if (!*e)
			return 0;
		p = e + 1;
	}
}
