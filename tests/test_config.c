/* test_config.c - unit tests for src/config.c: defaults, the file format,
 * precedence (file < environment < command line), validation and its error
 * messages, the value parsers and the generated help/man/example output.
 * The environment is a fake getenv; files live in a mkdtemp directory that
 * each test removes.
 */
#define _GNU_SOURCE
#include "../src/config.h"
#include "../src/rbus.h"

#include <arpa/inet.h>
#include <check.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- fixtures ----------------------------------------------------------- */

static char tmpdir[64];
static char paths[8][128];
static int npaths;

static const char *fake_names[16];
static const char *fake_values[16];
static int nfake;

static const char *fake_getenv(const char *name)
{
	for (int i = 0; i < nfake; i++)
		if (strcmp(fake_names[i], name) == 0)
			return fake_values[i];
	return NULL;
}

static void env_set(const char *name, const char *value)
{
	ck_assert_int_lt(nfake, 16);
	fake_names[nfake] = name;
	fake_values[nfake++] = value;
}

static void setup(void)
{
	strcpy(tmpdir, "/tmp/test_config.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	npaths = 0;
	nfake = 0;
}

static void teardown(void)
{
	for (int i = 0; i < npaths; i++)
		unlink(paths[i]);
	rmdir(tmpdir);
}

/* Write content to a new file in tmpdir; returns its path. */
static const char *write_conf(const char *content)
{
	char *p;
	FILE *f;

	ck_assert_int_lt(npaths, 8);
	p = paths[npaths];
	snprintf(p, sizeof paths[0], "%s/c%d.conf", tmpdir, npaths);
	npaths++;
	f = fopen(p, "w");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(fputs(content, f) >= 0, 1);
	ck_assert_int_eq(fclose(f), 0);
	return p;
}

/* config_load_env with argv = {"resild", args..., NULL}. */
static int load(struct resil_config *c, const char *const *args, enum config_action *action, char *err)
{
	char *argv[24];
	int argc = 0;

	argv[argc++] = (char *)"resild";
	for (; args && *args; args++) {
		ck_assert_int_lt(argc, 23);
		argv[argc++] = (char *)*args;
	}
	argv[argc] = NULL;
	return config_load_env(c, argc, argv, fake_getenv, action, err, CONFIG_ERR_MAX);
}

static int load_ok(struct resil_config *c, const char *const *args)
{
	char err[CONFIG_ERR_MAX];
	enum config_action action;
	int rc = load(c, args, &action, err);

	ck_assert_msg(rc == 0, "unexpected error: %s", err);
	ck_assert_int_eq(action, CONFIG_RUN);
	return rc;
}

/* Load with a file holding content; expect failure and return the error. */
static const char *load_file_err(const char *content, char *err)
{
	struct resil_config c;
	const char *args[] = {"-c", write_conf(content), NULL};

	ck_assert_int_eq(load(&c, args, NULL, err), -1);
	return err;
}

#define ck_assert_err_eq(got, expected) ck_assert_str_eq(got, expected)

static const char *line_path(int idx)
{
	return paths[idx];
}

/* ---- defaults ----------------------------------------------------------- */

START_TEST(test_defaults_follow_the_spec_table)
{
	struct resil_config c;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);

	load_ok(&c, NULL);
	ck_assert_str_eq(c.listen, "127.0.0.1:8080");
	ck_assert_int_eq(c.workers_auto, 1);
	ck_assert_int_eq(c.workers, cpus < 1 ? 1 : cpus > 256 ? 256 : cpus);
	ck_assert_str_eq(c.db, "sqlite:data/resil.db");
	ck_assert_str_eq(c.control, "./resild.sock");
	ck_assert_int_eq(c.env, CONFIG_ENV_DEVELOPMENT);
	ck_assert_int_eq(c.jwt_expire_s, 15 * 60);
	ck_assert_int_eq(c.refresh_expire_s, 30 * 86400);
	ck_assert_int_eq(c.log_level, CONFIG_LOG_DEBUG);
	ck_assert_int_eq(c.log_format, isatty(2) ? CONFIG_LOG_PRETTY : CONFIG_LOG_JSON);
	ck_assert_str_eq(c.log_file, "");
	ck_assert_str_eq(c.cors_origins, "http://localhost:3000");
	ck_assert_int_eq(c.rate_limit_max, 100);
	ck_assert_int_eq(c.rate_limit_window_ms, 15 * 60 * 1000);
	ck_assert_int_eq(c.body_limit, 10 * 1024 * 1024);
	ck_assert_int_eq(c.shutdown_timeout_ms, 30000);
	ck_assert_int_eq(c.worker_timeout_ms, 30000);
	ck_assert_int_eq(c.max_memory, 0);
	ck_assert_str_eq(c.external_api_url, "");
	ck_assert_str_eq(c.external_api_key, "");
	ck_assert_int_eq(c.external_api_timeout_ms, 5000);
	ck_assert_int_eq(c.max_connections, 10000);
	ck_assert_int_eq(c.keepalive_timeout_ms, 5000);
	ck_assert_int_eq(c.header_timeout_ms, 10000);
	ck_assert_int_eq(c.request_timeout_ms, 30000);
	ck_assert_int_eq(c.listen_timeout_ms, 10000);
	ck_assert_int_eq(c.db_pool_size, 4);
	ck_assert_int_eq(c.job_threads, 0);
	ck_assert_str_eq(c.user, "");
	ck_assert_str_eq(c.group, "");
	ck_assert_int_eq(c.foreground, 0);
	ck_assert_int_eq(c.check_config, 0);
	ck_assert_str_eq(c.config_file, "");
}
END_TEST

START_TEST(test_development_generates_a_random_secret_per_load)
{
	struct resil_config a, b;

	load_ok(&a, NULL);
	load_ok(&b, NULL);
	ck_assert_int_eq(a.jwt_secret_generated, 1);
	ck_assert_int_eq(a.jwt_secret_len, 32);
	ck_assert_int_eq(b.jwt_secret_len, 32);
	ck_assert_int_ne(memcmp(a.jwt_secret, b.jwt_secret, 32), 0);
}
END_TEST

START_TEST(test_control_defaults_to_runtime_directory)
{
	struct resil_config c;

	env_set("RUNTIME_DIRECTORY", "/run/resild:/run/other");
	load_ok(&c, NULL);
	ck_assert_str_eq(c.control, "/run/resild/control.sock");
}
END_TEST

START_TEST(test_production_defaults_resolve_after_all_sources)
{
	struct resil_config c;

	env_set("RESIL_ENV", "production");
	env_set("RESIL_JWT_SECRET", "0123456789abcdef0123456789abcdef");
	load_ok(&c, NULL);
	ck_assert_int_eq(c.env, CONFIG_ENV_PRODUCTION);
	ck_assert_int_eq(c.log_level, CONFIG_LOG_INFO);
	ck_assert_int_eq(c.log_format, CONFIG_LOG_JSON);
	ck_assert_int_eq(c.jwt_secret_generated, 0);
	ck_assert_int_eq(c.jwt_secret_len, 32);
	ck_assert_int_eq(memcmp(c.jwt_secret, "0123456789abcdef0123456789abcdef", 32), 0);
}
END_TEST

START_TEST(test_explicit_log_settings_win_over_env_defaults)
{
	struct resil_config c;
	const char *args[] = {"-c", NULL, NULL};

	args[1] = write_conf("log_level = warn\nlog_format = pretty\n");
	env_set("RESIL_ENV", "production");
	env_set("RESIL_JWT_SECRET", "0123456789abcdef0123456789abcdef");
	load_ok(&c, args);
	ck_assert_int_eq(c.log_level, CONFIG_LOG_WARN);
	ck_assert_int_eq(c.log_format, CONFIG_LOG_PRETTY);
}
END_TEST

START_TEST(test_workers_auto_resolves_to_cpu_count)
{
	struct resil_config c;
	const char *args[] = {"--workers", "auto", NULL};
	const char *args3[] = {"--workers=3", NULL};
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);

	env_set("RESIL_WORKERS", "7");
	load_ok(&c, args);
	ck_assert_int_eq(c.workers_auto, 1);
	ck_assert_int_eq(c.workers, cpus < 1 ? 1 : cpus > 256 ? 256 : cpus);
	load_ok(&c, args3);
	ck_assert_int_eq(c.workers_auto, 0);
	ck_assert_int_eq(c.workers, 3);
}
END_TEST

/* ---- file format -------------------------------------------------------- */

START_TEST(test_file_accepts_comments_quotes_and_sections)
{
	struct resil_config c;
	const char *args[] = {"--config", NULL, NULL};

	args[1] = write_conf("\xef\xbb\xbf# a comment\n"
	                     "; another comment\n"
	                     "\n"
	                     "[server]\n"
	                     "  listen   =   0.0.0.0:9000   # inline comment\r\n"
	                     "workers=2;inline\n"
	                     "[security] ; comment after a section\n"
	                     "jwt_secret = \"abc#def;ghi \\\"quoted\\\" and \\\\ 0123456789\"  # comment\n"
	                     "cors_origins = http://a.example , https://b.example:8443,,\n"
	                     "log_file = \"\"\n"
	                     "Body_Limit = 512K\n"
	                     "external_api_url = https://api.example.com/v1/\n"
	                     "user = www-data\n");
	load_ok(&c, args);
	ck_assert_str_eq(c.listen, "0.0.0.0:9000");
	ck_assert_int_eq(c.workers, 2);
	ck_assert_int_eq(c.workers_auto, 0);
	ck_assert_int_eq(c.jwt_secret_len, strlen("abc#def;ghi \"quoted\" and \\ 0123456789"));
	ck_assert_int_eq(memcmp(c.jwt_secret, "abc#def;ghi \"quoted\" and \\ 0123456789", c.jwt_secret_len), 0);
	ck_assert_int_eq(c.jwt_secret_generated, 0);
	ck_assert_str_eq(c.cors_origins, "http://a.example,https://b.example:8443");
	ck_assert_str_eq(c.log_file, "");
	ck_assert_int_eq(c.body_limit, 512 * 1024);
	ck_assert_str_eq(c.external_api_url, "https://api.example.com/v1");
	ck_assert_str_eq(c.user, "www-data");
	ck_assert_str_eq(c.config_file, args[1]);
}
END_TEST

START_TEST(test_later_file_lines_override_earlier_ones)
{
	struct resil_config c;
	const char *args[] = {"-c", NULL, NULL};

	args[1] = write_conf("db_pool_size = 2\n[a]\ndb_pool_size = 8\n");
	load_ok(&c, args);
	ck_assert_int_eq(c.db_pool_size, 8);
}
END_TEST

/* ---- precedence --------------------------------------------------------- */

START_TEST(test_environment_overrides_file_and_command_line_overrides_both)
{
	struct resil_config c;
	const char *args[] = {"-c",        NULL,          "--listen",     "[::1]:7000",     "--db=mongodb://h/x",
	                      "--control", "/tmp/x.sock", "--foreground", "--check-config", NULL};

	args[1] = write_conf("listen = 10.0.0.1:1\n"
	                     "db = sqlite:file.db\n"
	                     "body_limit = 1k\n"
	                     "rate_limit = 5/1m\n"
	                     "control = /tmp/file.sock\n");
	env_set("RESIL_LISTEN", "10.0.0.2:2");
	env_set("RESIL_BODY_LIMIT", "2k");
	env_set("RESIL_DB", "sqlite:env.db");
	env_set("RESIL_TEST_WHATEVER", "ignored");
	env_set("RESIL_NOT_A_KEY", "ignored");
	load_ok(&c, args);
	ck_assert_str_eq(c.listen, "[::1]:7000");
	ck_assert_str_eq(c.db, "mongodb://h/x");
	ck_assert_str_eq(c.control, "/tmp/x.sock");
	ck_assert_int_eq(c.body_limit, 2048);
	ck_assert_int_eq(c.rate_limit_max, 5);
	ck_assert_int_eq(c.rate_limit_window_ms, 60000);
	ck_assert_int_eq(c.foreground, 1);
	ck_assert_int_eq(c.check_config, 1);
}
END_TEST

START_TEST(test_explicit_control_wins_over_runtime_directory)
{
	struct resil_config c;

	env_set("RUNTIME_DIRECTORY", "/run/resild");
	env_set("RESIL_CONTROL", "/tmp/ctl.sock");
	load_ok(&c, NULL);
	ck_assert_str_eq(c.control, "/tmp/ctl.sock");
}
END_TEST

/* ---- errors ------------------------------------------------------------- */

START_TEST(test_file_errors_name_file_line_and_key)
{
	char err[CONFIG_ERR_MAX], want[CONFIG_ERR_MAX];

	load_file_err("# ok\nworkers = 2\n\nbody_limit = ten\n", err);
	snprintf(want, sizeof want, "%s:4: body_limit: invalid size \"ten\" (expected e.g. 512k, 10m)", line_path(0));
	ck_assert_err_eq(err, want);

	load_file_err("\n\nnope = 1\n", err);
	snprintf(want, sizeof want, "%s:3: unknown key \"nope\"", line_path(1));
	ck_assert_err_eq(err, want);

	load_file_err("shutdown_timeout = 0\n", err);
	snprintf(want, sizeof want, "%s:1: shutdown_timeout: invalid duration \"0\"", line_path(2));
	ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "got: %s", err);

	load_file_err("listen = localhost:80\n", err);
	snprintf(want, sizeof want, "%s:1: listen: invalid address \"localhost:80\"", line_path(3));
	ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "got: %s", err);

	load_file_err("x\ny\n", err);
	snprintf(want, sizeof want, "%s:1: expected key = value, got \"x\"", line_path(4));
	ck_assert_err_eq(err, want);

	load_file_err("[server\n", err);
	snprintf(want, sizeof want, "%s:1: malformed section header (missing ])", line_path(5));
	ck_assert_err_eq(err, want);

	load_file_err("\ndb = \"sqlite:x\n", err);
	snprintf(want, sizeof want, "%s:2: db: unterminated quoted value", line_path(6));
	ck_assert_err_eq(err, want);

	load_file_err("db = \"sqlite:x\" trailing\n", err);
	snprintf(want, sizeof want, "%s:1: db: unexpected text after quoted value", line_path(7));
	ck_assert_err_eq(err, want);
}
END_TEST

START_TEST(test_every_value_kind_is_validated)
{
	static const struct {
		const char *line, *key;
	} bad[] = {
	    {"workers = 0", "workers"},
	    {"workers = 257", "workers"},
	    {"db = postgres://x", "db"},
	    {"db = sqlite:", "db"},
	    {"env = staging", "env"},
	    {"jwt_expire = 500ms", "jwt_expire"},
	    {"log_level = verbose", "log_level"},
	    {"log_format = xml", "log_format"},
	    {"cors_origins = localhost:3000", "cors_origins"},
	    {"cors_origins = http://a.example/path", "cors_origins"},
	    {"rate_limit = 0/15m", "rate_limit"},
	    {"rate_limit = 100", "rate_limit"},
	    {"body_limit = 0", "body_limit"},
	    {"max_memory = -1", "max_memory"},
	    {"external_api_url = ftp://x", "external_api_url"},
	    {"external_api_key = \"a b\"", "external_api_key"},
	    {"external_api_timeout = 5x", "external_api_timeout"},
	    {"max_connections = 0", "max_connections"},
	    {"ws_message_rate = 0", "ws_message_rate"},
	    {"ws_message_rate = 1000001", "ws_message_rate"},
	    {"keepalive_timeout = -5s", "keepalive_timeout"},
	    {"header_timeout = 1.5s", "header_timeout"},
	    {"request_timeout = 99999999999999999999", "request_timeout"},
	    {"listen_timeout = s", "listen_timeout"},
	    {"db_pool_size = 1025", "db_pool_size"},
	    {"job_threads = x", "job_threads"},
	    {"user = \"bad user\"", "user"},
	    {"group = -root", "group"},
	    {"listen = 1.2.3.4:65536", "listen"},
	    {"listen = [::1:80", "listen"},
	    {"listen = unix:relative.sock", "listen"},
	    {"control = \"\"", "control"},
	    {"io_uring = yes", "io_uring"},
	};
	char err[CONFIG_ERR_MAX], want[256], line[128];

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct resil_config c;
		const char *args[] = {"-c", NULL, NULL};

		npaths = 0; /* reuse the same file name */
		snprintf(line, sizeof line, "\n%s\n", bad[i].line);
		args[1] = write_conf(line);
		ck_assert_msg(load(&c, args, NULL, err) == -1, "accepted: %s", bad[i].line);
		snprintf(want, sizeof want, "%s:2: %s: ", args[1], bad[i].key);
		ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s -> %s", bad[i].line, err);
		ck_assert_ptr_null(strchr(err, '\n'));
	}
}
END_TEST

START_TEST(test_environment_errors_name_the_variable)
{
	struct resil_config c;
	char err[CONFIG_ERR_MAX];

	env_set("RESIL_WORKERS", "x");
	ck_assert_int_eq(load(&c, NULL, NULL, err), -1);
	ck_assert_str_eq(err, "RESIL_WORKERS: invalid value \"x\" (expected a number 1-256 or auto)");
}
END_TEST

START_TEST(test_command_line_errors_name_the_flag)
{
	struct resil_config c;
	char err[CONFIG_ERR_MAX];
	const char *bad_listen[] = {"--listen", "nowhere", NULL};
	const char *missing[] = {"--db", NULL};
	const char *extra[] = {"--foreground=yes", NULL};
	const char *positional[] = {"stray", NULL};

	ck_assert_int_eq(load(&c, bad_listen, NULL, err), -1);
	ck_assert_msg(strncmp(err, "--listen: invalid address \"nowhere\"", 35) == 0, "%s", err);
	ck_assert_int_eq(load(&c, missing, NULL, err), -1);
	ck_assert_str_eq(err, "--db: requires a value (URI)");
	ck_assert_int_eq(load(&c, extra, NULL, err), -1);
	ck_assert_str_eq(err, "--foreground: takes no value");
	ck_assert_int_eq(load(&c, positional, NULL, err), -1);
	ck_assert_str_eq(err, "unexpected argument \"stray\" (try --help)");
}
END_TEST

START_TEST(test_unknown_flag_is_an_error)
{
	struct resil_config c;
	char err[CONFIG_ERR_MAX];
	const char *lng[] = {"--daemon", NULL};
	const char *shrt[] = {"-x", NULL};
	const char *prefix[] = {"--listen-now=1", NULL};

	ck_assert_int_eq(load(&c, lng, NULL, err), -1);
	ck_assert_str_eq(err, "unknown option \"--daemon\" (try --help)");
	ck_assert_int_eq(load(&c, shrt, NULL, err), -1);
	ck_assert_str_eq(err, "unknown option \"-x\" (try --help)");
	ck_assert_int_eq(load(&c, prefix, NULL, err), -1);
	ck_assert_str_eq(err, "unknown option \"--listen-now\" (try --help)");
}
END_TEST

START_TEST(test_unreadable_file_is_an_error)
{
	struct resil_config c;
	char err[CONFIG_ERR_MAX], path[128], want[256];
	const char *args[] = {"-c", path, NULL};

	snprintf(path, sizeof path, "%s/missing.conf", tmpdir);
	ck_assert_int_eq(load(&c, args, NULL, err), -1);
	snprintf(want, sizeof want, "cannot read config file %s: No such file or directory", path);
	ck_assert_str_eq(err, want);

	args[1] = tmpdir; /* a directory opens but cannot be read */
	ck_assert_int_eq(load(&c, args, NULL, err), -1);
	snprintf(want, sizeof want, "cannot read config file %s: Is a directory", tmpdir);
	ck_assert_str_eq(err, want);
}
END_TEST

START_TEST(test_production_without_secret_fails)
{
	struct resil_config c;
	char err[CONFIG_ERR_MAX];

	env_set("RESIL_ENV", "production");
	ck_assert_int_eq(load(&c, NULL, NULL, err), -1);
	ck_assert_str_eq(err, "jwt_secret: required when env = production (at least 32 bytes)");
}
END_TEST

START_TEST(test_db_sync_defaults_to_full_in_production_and_normal_in_development)
{
	struct resil_config c;
	char err[CONFIG_ERR_MAX];

	ck_assert_int_eq(load(&c, NULL, NULL, err), 0);
	ck_assert_int_eq(c.db_sync, CONFIG_DB_SYNC_NORMAL);
	env_set("RESIL_ENV", "production");
	env_set("RESIL_JWT_SECRET", "0123456789abcdef0123456789abcdef");
	ck_assert_int_eq(load(&c, NULL, NULL, err), 0);
	ck_assert_int_eq(c.db_sync, CONFIG_DB_SYNC_FULL);
	env_set("RESIL_DB_SYNC", "normal");
	ck_assert_int_eq(load(&c, NULL, NULL, err), 0);
	ck_assert_int_eq(c.db_sync, CONFIG_DB_SYNC_NORMAL);
	nfake = 0;
	env_set("RESIL_DB_SYNC", "fsync");
	ck_assert_int_eq(load(&c, NULL, NULL, err), -1);
	ck_assert_str_eq(err, "RESIL_DB_SYNC: invalid value \"fsync\" (expected full or normal)");
}
END_TEST

START_TEST(test_io_uring_is_on_by_default_and_switches_off)
{
	struct resil_config c;
	char err[CONFIG_ERR_MAX];

	ck_assert_int_eq(load(&c, NULL, NULL, err), 0);
	ck_assert_int_eq(c.io_uring, 1);
	env_set("RESIL_IO_URING", "off");
	ck_assert_int_eq(load(&c, NULL, NULL, err), 0);
	ck_assert_int_eq(c.io_uring, 0);
	nfake = 0;
	env_set("RESIL_IO_URING", "1");
	ck_assert_int_eq(load(&c, NULL, NULL, err), -1);
	ck_assert_str_eq(err, "RESIL_IO_URING: invalid value \"1\" (expected on or off)");
}
END_TEST

START_TEST(test_short_secret_fails_in_both_environments)
{
	struct resil_config c;
	char err[CONFIG_ERR_MAX], want[256];
	const char *args[] = {"-c", NULL, NULL};

	env_set("RESIL_JWT_SECRET", "0123456789abcdef0123456789abcde");
	ck_assert_int_eq(load(&c, NULL, NULL, err), -1);
	ck_assert_str_eq(err, "RESIL_JWT_SECRET: too short (31 bytes, at least 32 required)");
	ck_assert_ptr_null(strstr(err, "0123"));

	nfake = 0;
	args[1] = write_conf("env = production\njwt_secret = short\n");
	ck_assert_int_eq(load(&c, args, NULL, err), -1);
	snprintf(want, sizeof want, "%s:2: jwt_secret: too short (5 bytes, at least 32 required)", args[1]);
	ck_assert_str_eq(err, want);
}
END_TEST

START_TEST(test_failed_load_leaves_config_unchanged)
{
	struct resil_config c, before;
	char err[CONFIG_ERR_MAX];
	const char *args[] = {"--workers", "9", NULL};

	load_ok(&c, args);
	before = c;
	env_set("RESIL_LISTEN", "10.1.1.1:1");
	env_set("RESIL_RATE_LIMIT", "fast");
	ck_assert_int_eq(load(&c, NULL, NULL, err), -1);
	ck_assert_int_eq(memcmp(&c, &before, sizeof c), 0);
}
END_TEST

/* ---- value parsers ------------------------------------------------------ */

START_TEST(test_duration_parser_accepts_units_and_rejects_overflow)
{
	int64_t ms = -1;

	ck_assert_int_eq(config_parse_duration_ms("250ms", &ms), 0);
	ck_assert_int_eq(ms, 250);
	ck_assert_int_eq(config_parse_duration_ms("30", &ms), 0);
	ck_assert_int_eq(ms, 30000);
	ck_assert_int_eq(config_parse_duration_ms("30S", &ms), 0);
	ck_assert_int_eq(ms, 30000);
	ck_assert_int_eq(config_parse_duration_ms("15m", &ms), 0);
	ck_assert_int_eq(ms, 900000);
	ck_assert_int_eq(config_parse_duration_ms("12h", &ms), 0);
	ck_assert_int_eq(ms, 43200000);
	ck_assert_int_eq(config_parse_duration_ms("7d", &ms), 0);
	ck_assert_int_eq(ms, 604800000);
	ck_assert_int_eq(config_parse_duration_ms("9223372036854775807ms", &ms), 0);
	ck_assert_int_eq(ms, INT64_MAX);
	ms = 42;
	ck_assert_int_eq(config_parse_duration_ms("9223372036854775807s", &ms), -1);
	ck_assert_int_eq(config_parse_duration_ms("9223372036854775808ms", &ms), -1);
	ck_assert_int_eq(config_parse_duration_ms("106751991167301d", &ms), -1);
	ck_assert_int_eq(config_parse_duration_ms("0", &ms), -1);
	ck_assert_int_eq(config_parse_duration_ms("-5s", &ms), -1);
	ck_assert_int_eq(config_parse_duration_ms("+5s", &ms), -1);
	ck_assert_int_eq(config_parse_duration_ms(" 5s", &ms), -1);
	ck_assert_int_eq(config_parse_duration_ms("5 s", &ms), -1);
	ck_assert_int_eq(config_parse_duration_ms("5w", &ms), -1);
	ck_assert_int_eq(config_parse_duration_ms("", &ms), -1);
	ck_assert_int_eq(config_parse_duration_ms("s", &ms), -1);
	ck_assert_int_eq(ms, 42);
}
END_TEST

START_TEST(test_size_parser_accepts_units_and_rejects_overflow)
{
	int64_t v = -1;

	ck_assert_int_eq(config_parse_size("512", &v), 0);
	ck_assert_int_eq(v, 512);
	ck_assert_int_eq(config_parse_size("0", &v), 0);
	ck_assert_int_eq(v, 0);
	ck_assert_int_eq(config_parse_size("64k", &v), 0);
	ck_assert_int_eq(v, 65536);
	ck_assert_int_eq(config_parse_size("64KB", &v), 0);
	ck_assert_int_eq(v, 65536);
	ck_assert_int_eq(config_parse_size("10m", &v), 0);
	ck_assert_int_eq(v, 10485760);
	ck_assert_int_eq(config_parse_size("10Mb", &v), 0);
	ck_assert_int_eq(v, 10485760);
	ck_assert_int_eq(config_parse_size("1g", &v), 0);
	ck_assert_int_eq(v, 1073741824);
	ck_assert_int_eq(config_parse_size("2GB", &v), 0);
	ck_assert_int_eq(v, 2147483648LL);
	v = 7;
	ck_assert_int_eq(config_parse_size("8589934592g", &v), -1);
	ck_assert_int_eq(config_parse_size("99999999999999999999", &v), -1);
	ck_assert_int_eq(config_parse_size("ten", &v), -1);
	ck_assert_int_eq(config_parse_size("10 m", &v), -1);
	ck_assert_int_eq(config_parse_size("10t", &v), -1);
	ck_assert_int_eq(config_parse_size("-1", &v), -1);
	ck_assert_int_eq(config_parse_size("", &v), -1);
	ck_assert_int_eq(v, 7);
}
END_TEST

START_TEST(test_rate_parser_requires_count_and_window)
{
	int64_t n = -1, w = -1;

	ck_assert_int_eq(config_parse_rate("100/15m", &n, &w), 0);
	ck_assert_int_eq(n, 100);
	ck_assert_int_eq(w, 900000);
	ck_assert_int_eq(config_parse_rate("1/1", &n, &w), 0);
	ck_assert_int_eq(n, 1);
	ck_assert_int_eq(w, 1000);
	n = w = 3;
	ck_assert_int_eq(config_parse_rate("0/15m", &n, &w), -1);
	ck_assert_int_eq(config_parse_rate("100", &n, &w), -1);
	ck_assert_int_eq(config_parse_rate("100/", &n, &w), -1);
	ck_assert_int_eq(config_parse_rate("/15m", &n, &w), -1);
	ck_assert_int_eq(config_parse_rate("100/0s", &n, &w), -1);
	ck_assert_int_eq(config_parse_rate("100 / 15m", &n, &w), -1);
	ck_assert_int_eq(config_parse_rate("99999999999999999999/1s", &n, &w), -1);
	ck_assert_int_eq(config_parse_rate("1048576/1s", &n, &w), -1); /* above the limiter's maximum */
	ck_assert_int_eq(config_parse_rate("100/50d", &n, &w), -1);    /* window over ~49.7 days */
	ck_assert_int_eq(config_parse_rate("1/9223372036854775807s", &n, &w), -1);
	ck_assert_int_eq(n, 3);
	ck_assert_int_eq(w, 3);
}
END_TEST

START_TEST(test_listen_parser_fills_socket_addresses)
{
	struct sockaddr_storage ss;
	socklen_t len;
	const struct sockaddr_in *in4 = (const struct sockaddr_in *)&ss;
	const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
	const struct sockaddr_un *un = (const struct sockaddr_un *)&ss;
	char longpath[200];

	ck_assert_int_eq(config_parse_listen("127.0.0.1:8080", &ss, &len), 0);
	ck_assert_int_eq(in4->sin_family, AF_INET);
	ck_assert_int_eq(ntohs(in4->sin_port), 8080);
	ck_assert_int_eq(ntohl(in4->sin_addr.s_addr), 0x7f000001);
	ck_assert_int_eq(len, sizeof(struct sockaddr_in));
	ck_assert_int_eq(config_parse_listen("0.0.0.0:0", &ss, &len), 0);
	ck_assert_int_eq(ntohs(in4->sin_port), 0);
	ck_assert_int_eq(config_parse_listen("[::1]:65535", &ss, &len), 0);
	ck_assert_int_eq(in6->sin6_family, AF_INET6);
	ck_assert_int_eq(ntohs(in6->sin6_port), 65535);
	ck_assert_int_eq(len, sizeof(struct sockaddr_in6));
	ck_assert_int_eq(config_parse_listen("unix:/run/resild.sock", &ss, &len), 0);
	ck_assert_int_eq(un->sun_family, AF_UNIX);
	ck_assert_str_eq(un->sun_path, "/run/resild.sock");
	ck_assert_int_eq(config_parse_listen("127.0.0.1:8080", NULL, NULL), 0);

	ck_assert_int_eq(config_parse_listen("127.0.0.1:65536", &ss, &len), -1);
	ck_assert_int_eq(config_parse_listen("127.0.0.1:", &ss, &len), -1);
	ck_assert_int_eq(config_parse_listen("127.0.0.1:-1", &ss, &len), -1);
	ck_assert_int_eq(config_parse_listen("127.0.0.1:00080x", &ss, &len), -1);
	ck_assert_int_eq(config_parse_listen("127.0.0.1", &ss, &len), -1);
	ck_assert_int_eq(config_parse_listen(":8080", &ss, &len), -1);
	ck_assert_int_eq(config_parse_listen("localhost:8080", &ss, &len), -1);
	ck_assert_int_eq(config_parse_listen("::1:8080", &ss, &len), -1);
	ck_assert_int_eq(config_parse_listen("[::1]8080", &ss, &len), -1);
	ck_assert_int_eq(config_parse_listen("[]:8080", &ss, &len), -1);
	ck_assert_int_eq(config_parse_listen("[1.2.3.4]:8080", &ss, &len), -1);
	ck_assert_int_eq(config_parse_listen("unix:", &ss, &len), -1);
	memset(longpath, 'a', sizeof longpath - 1);
	longpath[sizeof longpath - 1] = '\0';
	memcpy(longpath, "unix:/", 6);
	ck_assert_int_eq(config_parse_listen(longpath, &ss, &len), -1);
	ck_assert_int_eq(config_parse_listen(NULL, &ss, &len), -1);
}
END_TEST

/* ---- actions and generated text ----------------------------------------- */

START_TEST(test_help_and_version_are_reported_as_actions)
{
	struct resil_config c;
	enum config_action action;
	char err[CONFIG_ERR_MAX];
	const char *help[] = {"--listen", "bad", "--help", NULL};
	const char *h[] = {"-h", NULL};
	const char *version[] = {"--version", "--help", NULL};
	const char *v[] = {"-V", NULL};

	memset(&c, 0x5a, sizeof c);
	env_set("RESIL_ENV", "production"); /* would fail if the config were loaded */
	ck_assert_int_eq(load(&c, help, &action, err), 0);
	ck_assert_int_eq(action, CONFIG_HELP);
	ck_assert_int_eq(load(&c, h, &action, err), 0);
	ck_assert_int_eq(action, CONFIG_HELP);
	ck_assert_int_eq(load(&c, version, &action, err), 0);
	ck_assert_int_eq(action, CONFIG_VERSION);
	ck_assert_int_eq(load(&c, v, &action, err), 0);
	ck_assert_int_eq(action, CONFIG_VERSION);
	ck_assert_int_eq(((unsigned char *)&c)[0], 0x5a);
}
END_TEST

/* Run fn with stdout redirected into a file; return what it printed. */
static char *capture_stdout(void (*fn)(void))
{
	char path[128], *buf;
	int fd, saved;
	long n;
	FILE *f;

	snprintf(path, sizeof path, "%s/stdout", tmpdir);
	fflush(stdout);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	saved = dup(STDOUT_FILENO);
	ck_assert_int_ge(saved, 0);
	ck_assert_int_ge(dup2(fd, STDOUT_FILENO), 0);
	fn();
	fflush(stdout);
	ck_assert_int_ge(dup2(saved, STDOUT_FILENO), 0);
	close(saved);
	close(fd);
	f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	rewind(f);
	buf = calloc(1, (size_t)n + 1);
	ck_assert_ptr_nonnull(buf);
	ck_assert_int_eq(fread(buf, 1, (size_t)n, f), n);
	fclose(f);
	unlink(path);
	return buf;
}

static void print_help(void)
{
	config_print_help("/usr/sbin/resild");
}

static const char *const env_names[] = {
    "RESIL_LISTEN",
    "RESIL_WORKERS",
    "RESIL_DB",
    "RESIL_DB_SYNC",
    "RESIL_CONTROL",
    "RESIL_ENV",
    "RESIL_JWT_SECRET",
    "RESIL_JWT_EXPIRE",
    "RESIL_REFRESH_EXPIRE",
    "RESIL_LOG_LEVEL",
    "RESIL_LOG_FORMAT",
    "RESIL_LOG_FILE",
    "RESIL_AUDIT_LOG",
    "RESIL_CORS_ORIGINS",
    "RESIL_RATE_LIMIT",
    "RESIL_BODY_LIMIT",
    "RESIL_SHUTDOWN_TIMEOUT",
    "RESIL_WORKER_TIMEOUT",
    "RESIL_MAX_MEMORY",
    "RESIL_EXTERNAL_API_URL",
    "RESIL_EXTERNAL_API_KEY",
    "RESIL_EXTERNAL_API_TIMEOUT",
    "RESIL_MAX_CONNECTIONS",
    "RESIL_WS_MESSAGE_RATE",
    "RESIL_KEEPALIVE_TIMEOUT",
    "RESIL_HEADER_TIMEOUT",
    "RESIL_REQUEST_TIMEOUT",
    "RESIL_LISTEN_TIMEOUT",
    "RESIL_DB_POOL_SIZE",
    "RESIL_JOB_THREADS",
    "RESIL_USER",
    "RESIL_GROUP",
    "RESIL_TRUST_PROXY",
    "RESIL_METRICS_ALLOW",
    "RESIL_BUS",
    "RESIL_IO_URING",
};
#define NKEYS (sizeof env_names / sizeof env_names[0])

START_TEST(test_help_lists_usage_flags_and_every_key)
{
	char *out = capture_stdout(print_help);

	ck_assert_msg(strncmp(out, "Usage: resild [-c FILE] [--listen ADDR:PORT]", 44) == 0, "%s", out);
	ck_assert_ptr_nonnull(strstr(out, "--check-config"));
	ck_assert_ptr_nonnull(strstr(out, "-c, --config FILE"));
	for (size_t i = 0; i < NKEYS; i++)
		ck_assert_msg(strstr(out, env_names[i]) != NULL, "%s missing from --help", env_names[i]);
	ck_assert_ptr_nonnull(strstr(out, "  body_limit, RESIL_BODY_LIMIT\n"));
	ck_assert_ptr_nonnull(strstr(out, "      default: 10m\n"));
	free(out);
}
END_TEST

START_TEST(test_man_keys_are_roff_entries_for_every_key)
{
	char *out = capture_stdout(config_print_man_keys);
	size_t tp = 0;

	for (const char *p = out; (p = strstr(p, ".TP\n")) != NULL; p += 4)
		tp++;
	ck_assert_int_eq(tp, NKEYS);
	ck_assert_ptr_nonnull(strstr(out, ".B body_limit\n"));
	ck_assert_ptr_nonnull(strstr(out, "Environment: \\fB\\%RESIL_BODY_LIMIT\\fR; default: \\fB10m\\fR.\n"));
	ck_assert_ptr_nonnull(strstr(out, "\\fB\\%127.0.0.1:8080\\fR"));
	ck_assert_ptr_nonnull(strstr(out, "Worker processes: 1\\-256,")); /* capitalised, escaped */
	ck_assert_ptr_null(strstr(out, "\n."
	                               "\n")); /* no stray request lines */
	free(out);
}
END_TEST

/* Example file: loads to the defaults; every "#key = value" line is valid. */
START_TEST(test_example_file_is_valid_commented_and_uncommented)
{
	struct resil_config def, c;
	const char *args[] = {"-c", NULL, NULL};
	char *text = NULL, *p;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	ck_assert_ptr_nonnull(f);
	config_print_example(f);
	ck_assert_int_eq(fclose(f), 0);
	for (size_t i = 0; i < NKEYS; i++)
		ck_assert_msg(strstr(text, env_names[i]) != NULL, "%s missing from example", env_names[i]);
	load_ok(&def, NULL);
	args[1] = write_conf(text);
	load_ok(&c, args);
	ck_assert_str_eq(c.listen, def.listen);
	ck_assert_int_eq(c.body_limit, def.body_limit);
	ck_assert_int_eq(c.jwt_secret_generated, 1);

	for (p = text; (p = strstr(p, "\n#")) != NULL; p++)
		if (p[2] >= 'a' && p[2] <= 'z')
			p[1] = ' ';
	args[1] = write_conf(text);
	load_ok(&c, args);
	ck_assert_str_eq(c.listen, "127.0.0.1:8080");
	ck_assert_str_eq(c.control, "/run/resild/control.sock");
	ck_assert_int_eq(c.jwt_secret_generated, 0);
	ck_assert_int_eq(c.rate_limit_max, 100);
	ck_assert_int_eq(c.max_connections, 10000);
	free(text);
}
END_TEST

START_TEST(test_effective_config_reads_back_identically)
{
	struct resil_config a, b;
	const char *args[] = {"-c", NULL, NULL};
	const char *args2[] = {"-c", NULL, NULL};
	char *text = NULL;
	size_t len = 0;
	FILE *f;

	args[1] = write_conf("workers = 3\nlog_file = \" /tmp/odd;name#x \"\njwt_expire = 90\n"
	                     "rate_limit = 7/90s\nbody_limit = 1500\nmax_memory = 3g\n"
	                     "keepalive_timeout = 1500ms\nexternal_api_key = tok\n");
	load_ok(&a, args);
	ck_assert_int_eq(a.jwt_expire_s, 90);
	f = open_memstream(&text, &len);
	ck_assert_ptr_nonnull(f);
	config_print_effective(&a, f);
	ck_assert_int_eq(fclose(f), 0);
	ck_assert_ptr_nonnull(strstr(text, "jwt_expire = 90s\n"));
	ck_assert_ptr_nonnull(strstr(text, "rate_limit = 7/90s\n"));
	ck_assert_ptr_nonnull(strstr(text, "max_memory = 3g\n"));
	ck_assert_ptr_nonnull(strstr(text, "# jwt_secret = (generated at start, 32 bytes)\n"));
	ck_assert_ptr_null(strstr(text, "tok"));
	args2[1] = write_conf(text);
	load_ok(&b, args2);
	ck_assert_str_eq(b.log_file, " /tmp/odd;name#x ");
	ck_assert_int_eq(b.workers, 3);
	ck_assert_int_eq(b.jwt_expire_s, a.jwt_expire_s);
	ck_assert_int_eq(b.rate_limit_max, a.rate_limit_max);
	ck_assert_int_eq(b.rate_limit_window_ms, a.rate_limit_window_ms);
	ck_assert_int_eq(b.body_limit, a.body_limit);
	ck_assert_int_eq(b.max_memory, a.max_memory);
	ck_assert_int_eq(b.keepalive_timeout_ms, 1500);
	ck_assert_str_eq(b.cors_origins, a.cors_origins);
	free(text);
}
END_TEST

/* ---- CORS --------------------------------------------------------------- */

START_TEST(test_origin_allowed_only_on_exact_match)
{
	struct resil_config c;

	env_set("RESIL_CORS_ORIGINS", " http://localhost:3000 ,https://app.example.com");
	load_ok(&c, NULL);
	ck_assert_str_eq(c.cors_origins, "http://localhost:3000,https://app.example.com");
	ck_assert_int_eq(config_origin_allowed(&c, "http://localhost:3000", 21), 1);
	ck_assert_int_eq(config_origin_allowed(&c, "https://app.example.com", 23), 1);
	ck_assert_int_eq(config_origin_allowed(&c, "https://app.example.co", 22), 0);
	ck_assert_int_eq(config_origin_allowed(&c, "https://app.example.com.evil", 28), 0);
	ck_assert_int_eq(config_origin_allowed(&c, "http://localhost:3000,https://app.example.com", 45), 0);
	ck_assert_int_eq(config_origin_allowed(&c, "", 0), 0);
	ck_assert_int_eq(config_origin_allowed(&c, NULL, 0), 0);
	strcpy(c.cors_origins, "");
	ck_assert_int_eq(config_origin_allowed(&c, "http://localhost:3000", 21), 0);
}
END_TEST

/* RESIL_BUS: redis://host[:port][/db]; TLS and passwords refused (not yet),
 * the password never repeated. */
START_TEST(test_bus_uri_forms_and_refusals)
{
	struct resil_config c;
	struct rbus_addr a;
	char err[CONFIG_ERR_MAX];
	const char *args[] = {"-c", write_conf("bus = redis://10.0.0.5:6380/3\n"), NULL};

	load_ok(&c, args);
	ck_assert_str_eq(c.bus, "redis://10.0.0.5:6380/3");
	ck_assert_int_eq(rbus_parse_uri(c.bus, &a, err, sizeof err), 0);
	ck_assert_str_eq(a.host, "10.0.0.5");
	ck_assert_int_eq(a.port, 6380);
	ck_assert_int_eq(a.db, 3);
	ck_assert_int_eq(rbus_parse_uri("redis://[::1]/0", &a, err, sizeof err), 0);
	ck_assert_str_eq(a.host, "::1");
	ck_assert_int_eq(a.port, 6379);
	ck_assert_int_eq(rbus_parse_uri("redis://cache.internal", &a, err, sizeof err), 0);
	ck_assert_str_eq(a.host, "cache.internal");
	ck_assert_int_eq(a.db, 0);

	load_file_err("bus = rediss://10.0.0.5:6380\n", err);
	ck_assert_ptr_nonnull(strstr(err, "bus: TLS (rediss://) is not supported yet"));
	load_file_err("bus = redis://admin:s3cr3tpass@10.0.0.5:6380\n", err);
	ck_assert_ptr_nonnull(strstr(err, "passwords in the URI"));
	ck_assert_ptr_null(strstr(err, "s3cr3t"));
	load_file_err("bus = redis://10.0.0.5:0\n", err);
	ck_assert_ptr_nonnull(strstr(err, "port must be 1-65535"));
	load_file_err("bus = redis://10.0.0.5:6379/x\n", err);
	ck_assert_ptr_nonnull(strstr(err, "database must be a number"));
	load_file_err("bus = http://10.0.0.5\n", err);
	ck_assert_ptr_nonnull(strstr(err, "expected redis://host:port[/db]"));
	load_file_err("bus = redis://:6379\n", err);
	ck_assert_ptr_nonnull(strstr(err, "missing or too long host"));
}
END_TEST

static Suite *config_suite(void)
{
	Suite *s = suite_create("config");
	const struct {
		const char *name;
		const TTest *test;
	} cases[] = {
	    {"defaults", test_defaults_follow_the_spec_table},
	    {"generated secret", test_development_generates_a_random_secret_per_load},
	    {"runtime directory", test_control_defaults_to_runtime_directory},
	    {"production defaults", test_production_defaults_resolve_after_all_sources},
	    {"explicit log settings", test_explicit_log_settings_win_over_env_defaults},
	    {"auto workers", test_workers_auto_resolves_to_cpu_count},
	    {"file format", test_file_accepts_comments_quotes_and_sections},
	    {"repeated keys", test_later_file_lines_override_earlier_ones},
	    {"precedence", test_environment_overrides_file_and_command_line_overrides_both},
	    {"explicit control", test_explicit_control_wins_over_runtime_directory},
	    {"file errors", test_file_errors_name_file_line_and_key},
	    {"validation", test_every_value_kind_is_validated},
	    {"environment errors", test_environment_errors_name_the_variable},
	    {"command line errors", test_command_line_errors_name_the_flag},
	    {"unknown flag", test_unknown_flag_is_an_error},
	    {"unreadable file", test_unreadable_file_is_an_error},
	    {"production secret", test_production_without_secret_fails},
	    {"short secret", test_short_secret_fails_in_both_environments},
	    {"db sync", test_db_sync_defaults_to_full_in_production_and_normal_in_development},
	    {"atomic load", test_failed_load_leaves_config_unchanged},
	    {"duration parser", test_duration_parser_accepts_units_and_rejects_overflow},
	    {"size parser", test_size_parser_accepts_units_and_rejects_overflow},
	    {"rate parser", test_rate_parser_requires_count_and_window},
	    {"listen parser", test_listen_parser_fills_socket_addresses},
	    {"actions", test_help_and_version_are_reported_as_actions},
	    {"help", test_help_lists_usage_flags_and_every_key},
	    {"man keys", test_man_keys_are_roff_entries_for_every_key},
	    {"example file", test_example_file_is_valid_commented_and_uncommented},
	    {"effective config", test_effective_config_reads_back_identically},
	    {"io_uring switch", test_io_uring_is_on_by_default_and_switches_off},
	    {"cors", test_origin_allowed_only_on_exact_match},
	    {"bus uri", test_bus_uri_forms_and_refusals},
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		TCase *tc = tcase_create(cases[i].name);

		tcase_add_checked_fixture(tc, setup, teardown);
		tcase_set_timeout(tc, 30);
		tcase_add_test(tc, cases[i].test);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(config_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
