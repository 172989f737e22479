/* test_log.c - unit tests for src/log.c: JSON line shape, escaping, UTF-8
 * repair, redaction and masking, level filtering, the log file with
 * logrotate-style reopen, the pretty format, unique keys (a caller's field
 * never repeats a key already on the line), and lines from several threads.
 * Lines are captured through a non-blocking pipe (log_set_fd) and parsed
 * with yajl so every assertion is about valid JSON. */
#define _GNU_SOURCE
#include "log.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <yajl/yajl_tree.h>

static int pipefd[2] = {-1, -1};
static char line[65536];

static void setup(void)
{
	ck_assert_int_eq(pipe2(pipefd, O_NONBLOCK | O_CLOEXEC), 0);
	ck_assert_int_eq(log_init(LOG_LVL_DEBUG, 1, NULL, 1), 0);
	log_set_fd(pipefd[1]);
}

static void teardown(void)
{
	log_shutdown();
	log_set_fd(2);
	close(pipefd[0]);
	close(pipefd[1]);
}

/* Everything written to the pipe since the last call ("" when nothing). */
static const char *drain(void)
{
	size_t len = 0;
	for (;;) {
		ssize_t n = read(pipefd[0], line + len, sizeof(line) - 1 - len);
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	line[len] = '\0';
	return line;
}

/* Read exactly one JSON line from the pipe and parse it. */
static yajl_val next_json(void)
{
	char err[256];
	const char *s = drain();
	size_t len = strlen(s);
	ck_assert_msg(len > 0 && s[len - 1] == '\n', "no complete line: '%s'", s);
	ck_assert_msg(memchr(s, '\n', len) == s + len - 1, "more than one line: '%s'", s);
	yajl_val v = yajl_tree_parse(s, err, sizeof(err));
	ck_assert_msg(v != NULL && YAJL_IS_OBJECT(v), "invalid JSON (%s): %s", err, s);
	return v;
}

static yajl_val get(yajl_val obj, const char *key)
{
	const char *path[] = {key, NULL};
	return yajl_tree_get(obj, path, yajl_t_any);
}

static const char *get_str(yajl_val obj, const char *key)
{
	yajl_val v = get(obj, key);
	ck_assert_msg(v && YAJL_IS_STRING(v), "field %s is not a string", key);
	return YAJL_GET_STRING(v);
}

static int64_t get_int(yajl_val obj, const char *key)
{
	yajl_val v = get(obj, key);
	ck_assert_msg(v && YAJL_IS_INTEGER(v), "field %s is not an integer", key);
	return YAJL_GET_INTEGER(v);
}

START_TEST(test_log_json_line_has_timestamp_level_message_pid_worker)
{
	log_info(NULL, "server started", LF_INT("port", 8080));
	yajl_val v = next_json();
	const char *ts = get_str(v, "timestamp");
	/* 2026-11-25T10:42:15.123Z */
	ck_assert_uint_eq(strlen(ts), 24);
	for (int i = 0; i < 24; i++) {
		char want = "dddd-dd-ddTdd:dd:dd.dddZ"[i];
		if (want == 'd')
			ck_assert_msg(ts[i] >= '0' && ts[i] <= '9', "bad timestamp %s", ts);
		else
			ck_assert_msg(ts[i] == want, "bad timestamp %s", ts);
	}
	ck_assert_str_eq(get_str(v, "level"), "info");
	ck_assert_str_eq(get_str(v, "message"), "server started");
	ck_assert_int_eq(get_int(v, "pid"), getpid());
	ck_assert_int_eq(get_int(v, "worker"), 1);
	ck_assert_int_eq(get_int(v, "port"), 8080);
	ck_assert_ptr_null(get(v, "requestId"));
	yajl_tree_free(v);

	static const char *names[] = {"debug", "info", "warn", "error"};
	for (int lvl = LOG_LVL_DEBUG; lvl <= LOG_LVL_ERROR; lvl++) {
		log_msg(lvl, NULL, "x");
		v = next_json();
		ck_assert_str_eq(get_str(v, "level"), names[lvl]);
		yajl_tree_free(v);
	}
}
END_TEST

START_TEST(test_log_worker_is_omitted_when_minus_one)
{
	log_set_worker(-1);
	log_msg(LOG_LVL_INFO, NULL, "supervisor line");
	yajl_val v = next_json();
	ck_assert_ptr_null(get(v, "worker"));
	ck_assert_int_eq(get_int(v, "pid"), getpid());
	yajl_tree_free(v);

	log_set_worker(0);
	log_msg(LOG_LVL_INFO, NULL, "worker zero");
	v = next_json();
	ck_assert_int_eq(get_int(v, "worker"), 0);
	yajl_tree_free(v);
}
END_TEST

START_TEST(test_log_request_context_and_fields_keep_their_order)
{
	struct log_ctx ctx = {.request_id = "req-1", .trace_id = "trace-9", .user_id = "u42"};
	log_info(&ctx, "request", LF_STR("method", "GET"), LF_STR("path", "/health"), LF_INT("status", 200));
	yajl_val v = next_json();
	static const char *order[] = {"timestamp", "level",  "message", "pid",  "worker", "requestId",
	                              "traceId",   "userId", "method",  "path", "status"};
	ck_assert_uint_eq(v->u.object.len, sizeof(order) / sizeof(order[0]));
	for (size_t i = 0; i < v->u.object.len; i++)
		ck_assert_str_eq(v->u.object.keys[i], order[i]);
	ck_assert_str_eq(get_str(v, "requestId"), "req-1");
	ck_assert_str_eq(get_str(v, "traceId"), "trace-9");
	ck_assert_str_eq(get_str(v, "userId"), "u42");
	yajl_tree_free(v);

	struct log_ctx partial = {.request_id = "req-2"};
	log_emit(LOG_LVL_INFO, &partial, "partial", NULL, 0);
	v = next_json();
	ck_assert_str_eq(get_str(v, "requestId"), "req-2");
	ck_assert_ptr_null(get(v, "traceId"));
	ck_assert_ptr_null(get(v, "userId"));
	yajl_tree_free(v);
}
END_TEST

START_TEST(test_log_field_types_are_written_as_json_types)
{
	log_info(NULL, "types", LF_STR("s", "text"), LF_STRN("sn", "abcdef", 3), LF_STR("nul", NULL),
	         LF_INT("neg", -42), LF_INT("min", INT64_MIN), LF_INT("max", INT64_MAX), LF_DBL("d1", 0.4),
	         LF_DBL("d2", 12.34567), LF_DBL("d3", -1.5), LF_DBL("d4", 2.0), LF_DBL("d5", -0.0004),
	         LF_DBL("nan", NAN), LF_DBL("inf", INFINITY), LF_DBL("big", 1.5e20), LF_BOOL("t", 7), LF_BOOL("f", 0));
	const char *raw = line;
	yajl_val v = next_json();
	ck_assert_str_eq(get_str(v, "s"), "text");
	ck_assert_str_eq(get_str(v, "sn"), "abc");
	ck_assert(YAJL_IS_NULL(get(v, "nul")));
	ck_assert_int_eq(get_int(v, "neg"), -42);
	ck_assert(strstr(raw, "\"min\":-9223372036854775808,") != NULL);
	ck_assert_int_eq(get_int(v, "max"), INT64_MAX);
	ck_assert(strstr(raw, "\"d1\":0.4,") != NULL);
	ck_assert(strstr(raw, "\"d2\":12.346,") != NULL);
	ck_assert(strstr(raw, "\"d3\":-1.5,") != NULL);
	ck_assert(strstr(raw, "\"d4\":2,") != NULL);
	ck_assert(strstr(raw, "\"d5\":0,") != NULL);
	ck_assert(YAJL_IS_NULL(get(v, "nan")));
	ck_assert(YAJL_IS_NULL(get(v, "inf")));
	ck_assert(YAJL_IS_DOUBLE(get(v, "big")));
	ck_assert(YAJL_GET_DOUBLE(get(v, "big")) == 1.5e20);
	ck_assert(YAJL_IS_TRUE(get(v, "t")));
	ck_assert(YAJL_IS_FALSE(get(v, "f")));
	yajl_tree_free(v);
}
END_TEST

START_TEST(test_log_escapes_quotes_backslashes_newlines_and_control_chars)
{
	const char *msg = "say \"hi\"\\ now\nnext\tline\r\x01\x1f\x7f\x1b[31m end";
	log_info(NULL, msg, LF_STR("v", "a\"b\\c\nd\be\ff"), LF_STR("we\"ird\nkey", "x"));
	ck_assert(strstr(line, "\x1b") == NULL);
	yajl_val v = next_json();
	ck_assert_str_eq(get_str(v, "message"), msg);
	ck_assert_str_eq(get_str(v, "v"), "a\"b\\c\nd\be\ff");
	ck_assert_str_eq(get_str(v, "we\"ird\nkey"), "x");
	yajl_tree_free(v);
}
END_TEST

START_TEST(test_log_replaces_invalid_utf8_so_the_line_stays_valid_json)
{
	/* lone continuation, truncated sequence, overlong '/', surrogate, > U+10FFFF, 0xff */
	const char bad[] = "a\x80"
	                   "b\xc3"
	                   "c\xc0\xaf"
	                   "d\xed\xa0\x80"
	                   "e\xf4\x90\x80\x80"
	                   "f\xff";
	log_info(NULL, bad, LF_STRN("v", bad, sizeof(bad) - 1),
	         LF_STR("ok", "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80"));
	yajl_val v = next_json();
	const char *fffd = "\xef\xbf\xbd";
	char want[128];
	snprintf(want, sizeof(want), "a%sb%sc%s%sd%s%s%se%s%s%s%sf%s", fffd, fffd, fffd, fffd, fffd, fffd, fffd, fffd,
	         fffd, fffd, fffd, fffd);
	ck_assert_str_eq(get_str(v, "message"), want);
	ck_assert_str_eq(get_str(v, "v"), want);
	ck_assert_str_eq(get_str(v, "ok"), "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80");
	yajl_tree_free(v);
}
END_TEST

START_TEST(test_log_redacts_every_secret_key_form)
{
	static const char *secret[] = {
	    "password",     "PASSWORD",      "newPassword",   "passwd",         "token",      "accessToken",
	    "refreshToken", "refresh_token", "authorization", "Authorization",  "cookie",     "Set-Cookie",
	    "secret",       "jwtSecret",     "jwt_secret",    "apiKey",         "api_key",    "x-api-key",
	    "ssn",          "SSN",           "medicalRecord", "medical_record", "creditCard", "credit_card"};
	static const char *plain[] = {"username", "email", "tokenCount", "passwordless", "status", "", "k"};
	for (size_t i = 0; i < sizeof(secret) / sizeof(secret[0]); i++) {
		ck_assert_msg(log_key_is_secret(secret[i]), "%s not secret", secret[i]);
		log_info(NULL, "secret", LF_STR(secret[i], "hunter2"), LF_INT("n", 1));
		log_info(NULL, "secret", LF_INT(secret[i], 123456789));
		log_info(NULL, "secret", LF_STR(secret[i], NULL), LF_BOOL("b", 1));
		const char *out = drain();
		ck_assert_msg(strstr(out, "hunter2") == NULL && strstr(out, "123456789") == NULL, "%s leaked: %s",
		              secret[i], out);
		ck_assert_msg(strstr(out, ":null") == NULL, "%s written as null", secret[i]);
		for (int k = 0; k < 3; k++) {
			char *nl = strchr(out, '\n');
			ck_assert_ptr_nonnull(nl);
			*nl = '\0';
			char err[128];
			yajl_val v = yajl_tree_parse(out, err, sizeof(err));
			ck_assert_ptr_nonnull(v);
			ck_assert_str_eq(get_str(v, secret[i]), "[REDACTED]");
			yajl_tree_free(v);
			out = nl + 1;
		}
	}
	ck_assert(!log_key_is_secret(NULL));
	for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
		ck_assert_msg(!log_key_is_secret(plain[i]), "%s is secret", plain[i]);
		log_info(NULL, "plain", LF_STR(plain[i], "visible"));
		yajl_val v = next_json();
		ck_assert_str_eq(get_str(v, plain[i]), "visible");
		yajl_tree_free(v);
	}
}
END_TEST

START_TEST(test_log_masks_emails_in_message_and_values)
{
	struct log_ctx ctx = {.request_id = "r", .user_id = "owner: ann@corp.example.org"};
	log_info(&ctx, "login for john.doe@example.com (alt: a+b_c%d-e@mail.co.uk).",
	         LF_STR("email", "Jane.Roe@Example.com"), LF_STR("note", "x <bob@host.io>, end@domain.com."));
	const char *raw = line;
	yajl_val v = next_json();
	ck_assert(strstr(raw, "john") == NULL && strstr(raw, "Jane") == NULL && strstr(raw, "bob@") == NULL);
	ck_assert_str_eq(get_str(v, "message"), "login for j***@example.com (alt: a***@mail.co.uk).");
	ck_assert_str_eq(get_str(v, "email"), "J***@Example.com");
	ck_assert_str_eq(get_str(v, "note"), "x <b***@host.io>, e***@domain.com.");
	ck_assert_str_eq(get_str(v, "userId"), "owner: a***@corp.example.org");
	yajl_tree_free(v);

	char out[128];
	const char *in = "mail john.doe@example.com or x@y.z now";
	size_t n = log_mask_emails(in, strlen(in), out, sizeof(out));
	ck_assert_str_eq(out, "mail j***@example.com or x***@y.z now");
	ck_assert_uint_eq(n, strlen(out));
	/* not addresses: no local part, no dotted domain, domain starting with '.' */
	in = "@example.com a@localhost b@.com c@ 100% @ home";
	log_mask_emails(in, strlen(in), out, sizeof(out));
	ck_assert_str_eq(out, in);
	/* only len bytes are read; tiny buffers truncate without leaking */
	log_mask_emails("abc@example.comXYZ", 15, out, sizeof(out));
	ck_assert_str_eq(out, "a***@example.com");
	n = log_mask_emails("john.doe@example.com", 20, out, 8);
	ck_assert_str_eq(out, "j***@ex");
	ck_assert_uint_eq(n, 7);
	n = log_mask_emails("hello world", 11, out, 6);
	ck_assert_str_eq(out, "hello");
	ck_assert_uint_eq(log_mask_emails("x", 1, out, 1), 0);
	ck_assert_str_eq(out, "");
	/* log_mask_emails leaves tokens alone; log_redact_text does everything */
	in = "a@b.io Bearer abc";
	log_mask_emails(in, strlen(in), out, sizeof(out));
	ck_assert_str_eq(out, "a***@b.io Bearer abc");
	log_redact_text(in, strlen(in), out, sizeof(out));
	ck_assert_str_eq(out, "a***@b.io Bearer [REDACTED]");
}
END_TEST

START_TEST(test_log_masks_bearer_tokens_and_jwts_in_free_text)
{
	const char *jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlX2hlcmU";
	char msg[256];
	snprintf(msg, sizeof(msg), "upstream said: Authorization: Bearer abc.DEF-123_x/y= and token %s done", jwt);
	char hdr[200];
	snprintf(hdr, sizeof(hdr), "bearer\t%s", jwt);
	log_warn(NULL, msg, LF_STR("header", hdr), LF_STR("raw", jwt), LF_STR("word", "Bearer"),
	         LF_STR("notjwt", "eyJust.text"), LF_STR("glued", "xBearer abc"));
	const char *raw = line;
	yajl_val v = next_json();
	ck_assert(strstr(raw, "abc.DEF") == NULL && strstr(raw, "eyJhbGci") == NULL);
	ck_assert_str_eq(get_str(v, "message"),
	                 "upstream said: Authorization: Bearer [REDACTED] and token [REDACTED] done");
	ck_assert_str_eq(get_str(v, "header"), "bearer [REDACTED]");
	ck_assert_str_eq(get_str(v, "raw"), "[REDACTED]");
	ck_assert_str_eq(get_str(v, "word"), "Bearer");
	ck_assert_str_eq(get_str(v, "notjwt"), "eyJust.text");
	ck_assert_str_eq(get_str(v, "glued"), "xBearer abc");
	yajl_tree_free(v);
}
END_TEST

START_TEST(test_log_filters_events_below_the_level)
{
	log_set_level(LOG_LVL_WARN);
	ck_assert(!log_enabled(LOG_LVL_DEBUG));
	ck_assert(!log_enabled(LOG_LVL_INFO));
	ck_assert(log_enabled(LOG_LVL_WARN));
	ck_assert(log_enabled(LOG_LVL_ERROR));
	log_debug(NULL, "hidden", LF_INT("n", 1));
	log_info(NULL, "hidden", LF_INT("n", 2));
	log_emit(LOG_LVL_INFO, NULL, "hidden", NULL, 0);
	ck_assert_str_eq(drain(), "");
	log_warn(NULL, "shown", LF_INT("n", 3));
	yajl_val v = next_json();
	ck_assert_str_eq(get_str(v, "level"), "warn");
	yajl_tree_free(v);
	log_set_level(LOG_LVL_ERROR);
	log_warn(NULL, "hidden", LF_INT("n", 4));
	ck_assert_str_eq(drain(), "");
	log_error(NULL, "shown", LF_INT("n", 5));
	v = next_json();
	ck_assert_str_eq(get_str(v, "level"), "error");
	yajl_tree_free(v);
}
END_TEST

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "r");
	ck_assert_msg(f != NULL, "cannot open %s", path);
	static char buf[8192];
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

static int count_lines(const char *s)
{
	int n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

START_TEST(test_log_file_gets_json_and_reopen_follows_logrotate)
{
	char dir[] = "/tmp/test_log.XXXXXX";
	ck_assert_ptr_nonnull(mkdtemp(dir));
	char path[64], rotated[64];
	snprintf(path, sizeof(path), "%s/resil.log", dir);
	snprintf(rotated, sizeof(rotated), "%s/resil.log.1", dir);

	mode_t old_mask = umask(022);
	ck_assert_int_eq(log_init(LOG_LVL_INFO, 1, path, 3), 0);
	umask(old_mask);
	log_set_fd(pipefd[1]);
	struct stat st;
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0640);
	log_info(NULL, "before rotate", LF_STR("password", "pw1"));
	yajl_val v = next_json(); /* the primary stream got it too */
	yajl_tree_free(v);

	ck_assert_int_eq(rename(path, rotated), 0);
	log_info(NULL, "still old file", LF_INT("n", 1));
	ck_assert_int_eq(log_reopen(), 0);
	log_info(NULL, "after rotate", LF_INT("n", 2));
	drain();
	log_shutdown();
	log_info(NULL, "after shutdown", LF_INT("n", 3));
	drain();

	char *old = read_file(rotated);
	ck_assert_int_eq(count_lines(old), 2);
	ck_assert(strstr(old, "before rotate") && strstr(old, "still old file") && !strstr(old, "pw1"));
	char *first_nl = strchr(old, '\n');
	*first_nl = '\0';
	char err[128];
	v = yajl_tree_parse(old, err, sizeof(err));
	ck_assert_ptr_nonnull(v);
	ck_assert_str_eq(get_str(v, "password"), "[REDACTED]");
	ck_assert_int_eq(get_int(v, "worker"), 3);
	yajl_tree_free(v);

	char *cur = read_file(path);
	ck_assert_int_eq(count_lines(cur), 1);
	ck_assert(strstr(cur, "after rotate") != NULL);
	v = yajl_tree_parse(cur, err, sizeof(err));
	ck_assert_ptr_nonnull(v);
	yajl_tree_free(v);

	ck_assert_int_eq(log_init(LOG_LVL_INFO, 1, "/nonexistent-dir/x/resil.log", 1), -1);
	ck_assert_int_eq(errno, ENOENT);
	ck_assert_int_eq(log_reopen(), 0); /* no file configured: nothing to do */

	unlink(path);
	unlink(rotated);
	rmdir(dir);
}
END_TEST

/* JOURNAL_STREAM naming the primary stream: each line starts with its
 * syslog priority; the log file gets plain JSON; a JOURNAL_STREAM naming
 * another file (or none) adds nothing. */
START_TEST(test_log_prefixes_syslog_priorities_when_stderr_is_the_journal)
{
	char path[] = "/tmp/test_log_journal.XXXXXX";
	int tfd = mkstemp(path);
	ck_assert_int_ge(tfd, 0);
	close(tfd);
	struct stat st;
	ck_assert_int_eq(fstat(pipefd[1], &st), 0);
	char js[64];
	snprintf(js, sizeof(js), "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
	ck_assert_int_eq(setenv("JOURNAL_STREAM", js, 1), 0);
	ck_assert_int_eq(log_init(LOG_LVL_DEBUG, 1, path, 1), 0);
	log_set_fd(pipefd[1]);
	ck_assert_int_eq(log_to_journal(), 1);

	static const struct {
		int level;
		const char *prio;
	} want[] = {{LOG_LVL_ERROR, "<3>{"}, {LOG_LVL_WARN, "<4>{"}, {LOG_LVL_INFO, "<6>{"}, {LOG_LVL_DEBUG, "<7>{"}};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		log_emit(want[i].level, NULL, "prio", (const struct log_field[]){LF_INT("n", (int)i)}, 1);
		const char *got = drain();
		ck_assert_msg(strncmp(got, want[i].prio, 4) == 0, "level %d: '%s'", want[i].level, got);
		char err[128];
		yajl_val v = yajl_tree_parse(got + 3, err, sizeof(err));
		ck_assert_msg(v != NULL, "not JSON after the prefix: %s", got);
		yajl_tree_free(v);
	}
	log_shutdown();
	char *text = read_file(path);
	ck_assert_int_eq(count_lines(text), 4);
	for (const char *l = text; *l; l = strchr(l, '\n') + 1)
		ck_assert_msg(l[0] == '{', "file line has a prefix: %s", l);

	/* Same device, another inode: not the journal. */
	snprintf(js, sizeof(js), "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino + 1);
	ck_assert_int_eq(setenv("JOURNAL_STREAM", js, 1), 0);
	log_set_fd(pipefd[1]);
	ck_assert_int_eq(log_to_journal(), 0);
	log_info(NULL, "plain", LF_INT("n", 9));
	ck_assert_int_eq(drain()[0], '{');
	ck_assert_int_eq(setenv("JOURNAL_STREAM", "garbage", 1), 0);
	ck_assert_int_eq(log_stream_is_journal(pipefd[1]), 0);
	ck_assert_int_eq(unsetenv("JOURNAL_STREAM"), 0);
	ck_assert_int_eq(log_stream_is_journal(pipefd[1]), 0);
	log_set_fd(pipefd[1]);
	unlink(path);
}
END_TEST

START_TEST(test_log_pretty_line_has_message_and_no_secrets_while_file_gets_json)
{
	char path[] = "/tmp/test_log_pretty.XXXXXX";
	int tfd = mkstemp(path);
	ck_assert_int_ge(tfd, 0);
	close(tfd);
	ck_assert_int_eq(log_init(LOG_LVL_DEBUG, 0, path, 2), 0);
	log_set_fd(pipefd[1]);
	struct log_ctx ctx = {.request_id = "req-7", .user_id = "u1"};
	log_info(&ctx, "GET /health 200 0.4ms for mary@example.com", LF_STR("token", "tok-SECRET"),
	         LF_STR("authorization", "Bearer eyJx.eyJy.zzz"), LF_INT("ssn", 123456789),
	         LF_STR("ua", "curl/8.0 (x)"), LF_DBL("durationMs", 0.4), LF_STR("note", "Bearer abc123"),
	         LF_STR("ctl", "a\nb\x1b[2J"), LF_BOOL("cached", 1));
	const char *p = drain();
	ck_assert_int_eq(count_lines(p), 1);
	ck_assert(strstr(p, "INFO") != NULL);
	ck_assert(strstr(p, "\x1b[32m") != NULL);
	ck_assert(strstr(p, "[w2]") != NULL);
	ck_assert(strstr(p, "GET /health 200 0.4ms for m***@example.com") != NULL);
	ck_assert(strstr(p, "requestId=\x1b[0mreq-7") != NULL);
	ck_assert(strstr(p, "ua=\x1b[0m\"curl/8.0 (x)\"") != NULL);
	ck_assert(strstr(p, "durationMs=\x1b[0m0.4") != NULL);
	ck_assert(strstr(p, "cached=\x1b[0mtrue") != NULL);
	ck_assert(strstr(p, "ctl=\x1b[0ma\\nb\\u001b[2J") != NULL);
	ck_assert(strstr(p, "tok-SECRET") == NULL && strstr(p, "eyJx") == NULL && strstr(p, "123456789") == NULL &&
	          strstr(p, "abc123") == NULL && strstr(p, "mary") == NULL);
	ck_assert(strstr(p, "token=\x1b[0m[REDACTED]") != NULL);

	log_error(NULL, "boom", LF_INT("code", 1));
	p = drain();
	ck_assert(strstr(p, "\x1b[31mERROR") != NULL);

	log_shutdown();
	char *file = read_file(path);
	ck_assert_int_eq(count_lines(file), 2);
	ck_assert(strstr(file, "\x1b") == NULL && strstr(file, "tok-SECRET") == NULL);
	*strchr(file, '\n') = '\0';
	char err[128];
	yajl_val v = yajl_tree_parse(file, err, sizeof(err));
	ck_assert_msg(v != NULL, "file line is not JSON: %s", err);
	ck_assert_str_eq(get_str(v, "message"), "GET /health 200 0.4ms for m***@example.com");
	ck_assert_str_eq(get_str(v, "token"), "[REDACTED]");
	ck_assert_str_eq(get_str(v, "requestId"), "req-7");
	yajl_tree_free(v);
	unlink(path);
}
END_TEST

START_TEST(test_log_truncates_huge_values_with_an_ellipsis)
{
	size_t big = 20000;
	char *s = malloc(big + 1);
	ck_assert_ptr_nonnull(s);
	memset(s, 'x', big);
	s[big] = '\0';
	/* a two-byte character straddling the cut is not split */
	s[8191] = '\xc3';
	s[8192] = '\xa9';
	/* an address straddling the cut is still masked */
	char *e = malloc(big + 1);
	ck_assert_ptr_nonnull(e);
	memset(e, ' ', big);
	memcpy(e + 8185, "john.doe@example.com", 20);
	e[big] = '\0';
	log_info(NULL, s, LF_STR("v", s), LF_STR("e", e), LF_STR("after", "still here"));
	yajl_val v = next_json();
	const char *m = get_str(v, "message");
	ck_assert_uint_eq(strlen(m), 8191 + 3);
	ck_assert_str_eq(m + 8191, "\xe2\x80\xa6");
	ck_assert_str_eq(get_str(v, "v"), m);
	const char *ev = get_str(v, "e");
	ck_assert(strstr(ev, "j***@example.com\xe2\x80\xa6") != NULL);
	ck_assert(strstr(line, "john") == NULL);
	ck_assert_str_eq(get_str(v, "after"), "still here");
	yajl_tree_free(v);
	free(s);
	free(e);
}
END_TEST

START_TEST(test_log_handles_null_message_and_empty_fields)
{
	log_emit(LOG_LVL_INFO, NULL, NULL, NULL, 3);
	yajl_val v = next_json();
	ck_assert_str_eq(get_str(v, "message"), "");
	yajl_tree_free(v);
	int before = errno = EPIPE;
	log_info(NULL, "keeps errno", LF_STR("k", ""));
	ck_assert_int_eq(errno, before);
	v = next_json();
	ck_assert_str_eq(get_str(v, "k"), "");
	yajl_tree_free(v);
}
END_TEST

/* Fail unless every key of the object is unique (yajl keeps repeats). */
static void assert_unique_keys(yajl_val v)
{
	for (size_t i = 0; i < v->u.object.len; i++)
		for (size_t j = i + 1; j < v->u.object.len; j++)
			ck_assert_msg(strcmp(v->u.object.keys[i], v->u.object.keys[j]) != 0, "key %s repeated",
			              v->u.object.keys[i]);
}

START_TEST(test_log_renames_a_field_that_collides_with_a_base_key)
{
	log_set_worker(0);
	log_info(NULL, "base wins", LF_INT("worker", 5), LF_STR("message", "caller's"), LF_STR("level", "x"),
	         LF_INT("pid", 1), LF_STR("timestamp", "t"), LF_INT("port", 80));
	yajl_val v = next_json();
	assert_unique_keys(v);
	ck_assert_int_eq(get_int(v, "worker"), 0);
	ck_assert_str_eq(get_str(v, "message"), "base wins");
	ck_assert_str_eq(get_str(v, "level"), "info");
	ck_assert_int_eq(get_int(v, "pid"), getpid());
	ck_assert_uint_eq(strlen(get_str(v, "timestamp")), 24);
	ck_assert_int_eq(get_int(v, "worker_2"), 5);
	ck_assert_str_eq(get_str(v, "message_2"), "caller's");
	ck_assert_str_eq(get_str(v, "level_2"), "x");
	ck_assert_int_eq(get_int(v, "pid_2"), 1);
	ck_assert_str_eq(get_str(v, "timestamp_2"), "t");
	ck_assert_int_eq(get_int(v, "port"), 80);
	ck_assert_uint_eq(v->u.object.len, 11);
	yajl_tree_free(v);

	/* The request context's keys are base keys too. */
	struct log_ctx ctx = {.request_id = "req-1", .user_id = "u1"};
	log_info(&ctx, "ctx wins", LF_STR("requestId", "other"), LF_STR("userId", "u2"), LF_STR("traceId", "t1"));
	v = next_json();
	assert_unique_keys(v);
	ck_assert_str_eq(get_str(v, "requestId"), "req-1");
	ck_assert_str_eq(get_str(v, "requestId_2"), "other");
	ck_assert_str_eq(get_str(v, "userId"), "u1");
	ck_assert_str_eq(get_str(v, "userId_2"), "u2");
	ck_assert_str_eq(get_str(v, "traceId"), "t1"); /* no trace id in ctx: the caller's stays */
	yajl_tree_free(v);

	/* Without a worker id (the supervisor) "worker" is the caller's. */
	log_set_worker(-1);
	log_info(NULL, "worker started", LF_INT("worker", 3), LF_INT("workerPid", 42));
	v = next_json();
	assert_unique_keys(v);
	ck_assert_int_eq(get_int(v, "worker"), 3);
	ck_assert_ptr_null(get(v, "worker_2"));
	yajl_tree_free(v);
}
END_TEST

START_TEST(test_log_renames_repeated_caller_keys_and_drops_past_nine)
{
	log_info(NULL, "repeats", LF_INT("a", 1), LF_INT("a", 2), LF_INT("a_2", 3), LF_INT("a", 4), LF_STR("a_3", "x"));
	yajl_val v = next_json();
	assert_unique_keys(v);
	ck_assert_int_eq(get_int(v, "a"), 1);
	ck_assert_int_eq(get_int(v, "a_2"), 2);
	ck_assert_int_eq(get_int(v, "a_2_2"), 3); /* "a_2" was taken by the rename */
	ck_assert_int_eq(get_int(v, "a_3"), 4);
	ck_assert_str_eq(get_str(v, "a_3_2"), "x");
	yajl_tree_free(v);

	struct log_field f[11];
	for (int i = 0; i < 11; i++)
		f[i] = LF_INT("k", i);
	log_emit(LOG_LVL_INFO, NULL, "eleven", f, 11);
	v = next_json();
	assert_unique_keys(v);
	ck_assert_int_eq(get_int(v, "k"), 0);
	for (int i = 2; i <= 9; i++) {
		char key[8];
		snprintf(key, sizeof(key), "k_%d", i);
		ck_assert_int_eq(get_int(v, key), i - 1);
	}
	ck_assert_uint_eq(v->u.object.len, 5 + 9); /* base keys + k, k_2..k_9; the last two dropped */
	yajl_tree_free(v);

	/* A NULL key is "" and takes part like any other. */
	log_info(NULL, "null keys", LF_INT(NULL, 1), LF_INT("", 2));
	v = next_json();
	assert_unique_keys(v);
	ck_assert_int_eq(get_int(v, ""), 1);
	ck_assert_int_eq(get_int(v, "_2"), 2);
	yajl_tree_free(v);
}
END_TEST

START_TEST(test_log_keeps_keys_unique_in_a_line_of_many_fields)
{
	/* More fields than the planner keeps on the stack. */
	enum { N = 150 };
	static char keys[N][8];
	struct log_field f[N];
	for (int i = 0; i < N; i++) {
		snprintf(keys[i], sizeof(keys[i]), "f%d", i % 100); /* f0..f49 appear twice */
		f[i] = LF_INT(keys[i], i);
	}
	log_emit(LOG_LVL_INFO, NULL, "many", f, N);
	yajl_val v = next_json();
	assert_unique_keys(v);
	ck_assert_uint_eq(v->u.object.len, 5 + N);
	ck_assert_int_eq(get_int(v, "f7"), 7);
	ck_assert_int_eq(get_int(v, "f7_2"), 107);
	ck_assert_int_eq(get_int(v, "f99"), 99);
	yajl_tree_free(v);
}
END_TEST

START_TEST(test_log_pretty_line_renames_like_json)
{
	ck_assert_int_eq(log_init(LOG_LVL_DEBUG, 0, NULL, 4), 0);
	log_set_fd(pipefd[1]);
	log_info(NULL, "pretty", LF_INT("worker", 9), LF_INT("n", 1), LF_INT("n", 2));
	const char *p = drain();
	ck_assert_int_eq(count_lines(p), 1);
	ck_assert(strstr(p, "[w4]") != NULL);
	ck_assert(strstr(p, " \x1b[2mworker_2=\x1b[0m9") != NULL);
	ck_assert(strstr(p, "\x1b[2mworker=") == NULL);
	ck_assert(strstr(p, " \x1b[2mn=\x1b[0m1") != NULL && strstr(p, " \x1b[2mn_2=\x1b[0m2") != NULL);
}
END_TEST

START_TEST(test_log_pid_follows_fork)
{
	log_msg(LOG_LVL_INFO, NULL, "parent");
	yajl_val v = next_json();
	ck_assert_int_eq(get_int(v, "pid"), getpid());
	yajl_tree_free(v);
	pid_t child = fork();
	ck_assert_int_ge(child, 0);
	if (child == 0) {
		log_msg(LOG_LVL_INFO, NULL, "child");
		_exit(0);
	}
	int status;
	ck_assert_int_eq(waitpid(child, &status, 0), child);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	v = next_json();
	ck_assert_str_eq(get_str(v, "message"), "child");
	ck_assert_int_eq(get_int(v, "pid"), child);
	yajl_tree_free(v);
}
END_TEST

#define THREADS 4
#define PER_THREAD 300

static void *log_thread(void *arg)
{
	long id = (long)(intptr_t)arg;
	char big[1500];
	memset(big, 'a' + (int)id, sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	for (int i = 0; i < PER_THREAD; i++)
		log_info(NULL, "from thread", LF_INT("thread", id), LF_INT("i", i), LF_STR("pad", big),
		         LF_STR("email", "someone@example.com"));
	return NULL;
}

START_TEST(test_log_lines_from_several_threads_never_interleave)
{
	char path[] = "/tmp/test_log_threads.XXXXXX";
	int fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	int afd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
	ck_assert_int_ge(afd, 0);
	log_set_fd(afd);
	pthread_t th[THREADS];
	for (long t = 0; t < THREADS; t++)
		ck_assert_int_eq(pthread_create(&th[t], NULL, log_thread, (void *)(intptr_t)t), 0);
	for (int t = 0; t < THREADS; t++)
		ck_assert_int_eq(pthread_join(th[t], NULL), 0);
	log_set_fd(pipefd[1]);
	close(afd);

	FILE *f = fdopen(fd, "r");
	ck_assert_ptr_nonnull(f);
	char *buf = NULL;
	size_t cap = 0;
	int count[THREADS] = {0};
	ssize_t n;
	while ((n = getline(&buf, &cap, f)) > 0) {
		char err[128];
		yajl_val v = yajl_tree_parse(buf, err, sizeof(err));
		ck_assert_msg(v != NULL, "interleaved line: %s", err);
		int64_t t = get_int(v, "thread");
		ck_assert(t >= 0 && t < THREADS);
		ck_assert_int_eq(get_int(v, "i"), count[t]); /* per-thread order kept */
		count[t]++;
		ck_assert_str_eq(get_str(v, "email"), "s***@example.com");
		ck_assert_uint_eq(strlen(get_str(v, "pad")), 1499);
		yajl_tree_free(v);
	}
	free(buf);
	fclose(f);
	unlink(path);
	for (int t = 0; t < THREADS; t++)
		ck_assert_int_eq(count[t], PER_THREAD);
}
END_TEST

static Suite *log_suite(void)
{
	Suite *s = suite_create("log");
	struct {
		const char *name;
		const TTest *test;
	} cases[] = {
	    {"json line", test_log_json_line_has_timestamp_level_message_pid_worker},
	    {"worker omitted", test_log_worker_is_omitted_when_minus_one},
	    {"request context", test_log_request_context_and_fields_keep_their_order},
	    {"field types", test_log_field_types_are_written_as_json_types},
	    {"escaping", test_log_escapes_quotes_backslashes_newlines_and_control_chars},
	    {"utf8 repair", test_log_replaces_invalid_utf8_so_the_line_stays_valid_json},
	    {"secret keys", test_log_redacts_every_secret_key_form},
	    {"email masking", test_log_masks_emails_in_message_and_values},
	    {"token masking", test_log_masks_bearer_tokens_and_jwts_in_free_text},
	    {"level filter", test_log_filters_events_below_the_level},
	    {"log file", test_log_file_gets_json_and_reopen_follows_logrotate},
	    {"journal priorities", test_log_prefixes_syslog_priorities_when_stderr_is_the_journal},
	    {"pretty", test_log_pretty_line_has_message_and_no_secrets_while_file_gets_json},
	    {"truncation", test_log_truncates_huge_values_with_an_ellipsis},
	    {"null message", test_log_handles_null_message_and_empty_fields},
	    {"base key clash", test_log_renames_a_field_that_collides_with_a_base_key},
	    {"repeated keys", test_log_renames_repeated_caller_keys_and_drops_past_nine},
	    {"many fields", test_log_keeps_keys_unique_in_a_line_of_many_fields},
	    {"pretty renames", test_log_pretty_line_renames_like_json},
	    {"fork", test_log_pid_follows_fork},
	    {"threads", test_log_lines_from_several_threads_never_interleave},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		TCase *tc = tcase_create(cases[i].name);
		tcase_add_checked_fixture(tc, setup, teardown);
		tcase_set_timeout(tc, 20);
		tcase_add_test(tc, cases[i].test);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(log_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
