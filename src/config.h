/* config.h - resild configuration: one table of keys, read from a file,
 * overridden by the environment, overridden by the command line.
 *
 * The key table in config.c is the single source of truth: it drives
 * parsing, validation, --help, --check-config and man/resild.conf.5.
 * File keys are the environment names lower-cased without the RESIL_
 * prefix (RESIL_BODY_LIMIT -> body_limit).
 */
#ifndef RESIL_CONFIG_H
#define RESIL_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#define CONFIG_ERR_MAX 512

enum config_env { CONFIG_ENV_DEVELOPMENT = 0, CONFIG_ENV_PRODUCTION = 1 };
/* Same order and values as enum store_sync. */
enum config_db_sync { CONFIG_DB_SYNC_FULL = 0, CONFIG_DB_SYNC_NORMAL = 1 };
enum config_log_level { CONFIG_LOG_DEBUG = 0, CONFIG_LOG_INFO, CONFIG_LOG_WARN, CONFIG_LOG_ERROR };
enum config_log_format { CONFIG_LOG_PRETTY = 0, CONFIG_LOG_JSON = 1 };

struct resil_config {
	/* Listening address as given ("127.0.0.1:8080", "[::1]:8080",
	 * "unix:/path"). */
	char listen[512];
	int workers;        /* >= 1; "auto" is resolved to the CPU count */
	int workers_auto;   /* 1 when the value was "auto" */
	char db[2048];      /* sqlite:... or mongodb://... */
	int db_sync;        /* enum config_db_sync (SQLite durability) */
	char control[1024]; /* control socket path */
	int env;            /* enum config_env */
	unsigned char jwt_secret[512];
	size_t jwt_secret_len;
	int jwt_secret_generated; /* 1: random per start (development only) */
	int64_t jwt_expire_s;
	int64_t refresh_expire_s;
	int log_level;           /* enum config_log_level */
	int log_format;          /* enum config_log_format */
	char log_file[1024];     /* empty: none */
	char audit_log[1024];    /* empty: audit.log beside the database (workers/audit.c) */
	char cors_origins[2048]; /* comma separated, whitespace trimmed */
	int64_t rate_limit_max;
	int64_t rate_limit_window_ms;
	int64_t body_limit; /* bytes */
	int64_t shutdown_timeout_ms;
	int64_t worker_timeout_ms;
	int64_t max_memory; /* bytes, 0 = off */
	char external_api_url[1024];
	char external_api_key[512];
	int64_t external_api_timeout_ms;
	/* Not in the SPEC table; documented in resild.conf(5). */
	int64_t max_connections;      /* per worker, beyond: 503 */
	int64_t ws_message_rate;      /* chat events/s per WebSocket */
	int64_t keepalive_timeout_ms; /* idle keep-alive connection */
	int64_t header_timeout_ms;    /* slowloris: 10 s */
	int64_t request_timeout_ms;   /* request deadline: 30 s */
	int64_t listen_timeout_ms;    /* reload: wait for a new worker's ready */
	int64_t db_pool_size;
	int64_t job_threads; /* 0 = same as db_pool_size */
	char user[64];       /* drop privileges in workers; empty: no */
	char group[64];
	char trust_proxy[1024];   /* CIDRs of trusted proxies; empty: none */
	char metrics_allow[1024]; /* CIDRs whose peers may read GET /metrics; empty: none */
	char bus[512];            /* redis://host:port[/db]; empty: single host (src/rbus.h) */
	int io_uring;             /* 1: batch WebSocket writes through io_uring where possible */
	/* Command-line only. */
	int foreground;
	int check_config;
	char config_file[1024]; /* empty: none */
};

/* Fill cfg with the built-in defaults (no file, no environment): control is
 * ./resild.sock, log level/format are the development ones, jwt_secret is
 * left empty (config_load() generates or requires one). */
void config_defaults(struct resil_config *cfg);

/* Build the full configuration: defaults, then the file named by -c/--config
 * (if any), then RESIL_* environment variables, then the command line.
 * Flags: -c FILE, --listen, --workers, --db, --control, --foreground,
 * --check-config; --version and --help are reported through *action.
 * On error returns -1 and writes one line (no newline) naming the key and,
 * for file errors, the line number, e.g.
 *   "resild.conf:12: body_limit: invalid size \"ten\" (expected e.g. 512k, 10m)".
 * Returns 0 on success. On error (and for --help/--version, which skip
 * loading) cfg is left as it was, so a bad reload changes nothing. */
enum config_action { CONFIG_RUN = 0, CONFIG_HELP, CONFIG_VERSION };
int config_load(struct resil_config *cfg, int argc, char **argv, enum config_action *action, char *err, size_t errlen);

/* Same as config_load() but with an explicit environment lookup function
 * (tests pass a fake). getenv_fn(name) returns NULL when unset. */
int config_load_env(struct resil_config *cfg, int argc, char **argv, const char *(*getenv_fn)(const char *),
                    enum config_action *action, char *err, size_t errlen);

/* Value parsers shared with other modules; return 0 or -1 on bad input. */
int config_parse_duration_ms(const char *s, int64_t *out_ms);           /* "900s" "12h" "7d" "250ms" "30" (=s) */
int config_parse_size(const char *s, int64_t *out);                     /* "10m" "512k" "1g" "100" (bytes) */
int config_parse_rate(const char *s, int64_t *max, int64_t *window_ms); /* "100/15m" */

/* Validate a listen address ("127.0.0.1:8080", "[::1]:0", "unix:/run/x.sock")
 * and, when ss is not NULL, fill *ss and *sslen. Returns 0 or -1. */
int config_parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *sslen);

/* Print the effective configuration as resild.conf lines (for
 * --check-config); secrets are never printed, only whether they are set. */
void config_print_effective(const struct resil_config *cfg, FILE *out);

/* Write the whole effective configuration, secrets included, for an
 * exec'd worker of this or a newer/older binary (the lines only
 * config_import() reads: never a file an operator sees). 0, or -1 on a
 * write error. */
int config_export(const struct resil_config *cfg, FILE *out);
/* Read what config_export() wrote into cfg (defaults first; keys this
 * binary does not know are ignored). 0, or -1 with a message in err. */
int config_import(struct resil_config *cfg, FILE *in, char *err, size_t errlen);

/* Print the commented example file (etc/resild.conf) generated from the
 * key table: every key commented out with its default. */
void config_print_example(FILE *out);

/* Print the --help text (generated from the key table) to stdout. */
void config_print_help(const char *progname);

/* Keys read only at start (listen, control, log_file, log_format): for a
 * reload, find the ones whose value in loaded differs from running, put
 * running's value back into loaded (what is in effect stays what the
 * configuration says is running) and store their names (static strings)
 * in names[0..max). Returns how many differ. */
#define CONFIG_RESTART_KEYS_MAX 8
int config_restart_changes(struct resil_config *loaded, const struct resil_config *running, const char **names,
                           int max);

/* Print the key table as roff for man/resild.conf.5 (used by `make man`). */
void config_print_man_keys(void);

/* 1 if origin is in cfg->cors_origins (exact match). */
int config_origin_allowed(const struct resil_config *cfg, const char *origin, size_t len);

#endif
