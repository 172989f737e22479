/* log.h - structured logging (SPEC section 10).
 *
 * One event = one line: JSON (`{"timestamp":"2026-11-25T10:42:15.123Z",
 * "level":"info","message":"...","pid":123,"worker":0,"requestId":...,
 * "traceId":...,"userId":..., <fields>}`) or a colourised single "pretty"
 * line for terminals. "worker" is the 0-based worker id, the same number
 * as in the process title, `resilctl status` and the scoreboard; the
 * supervisor's own lines have no base "worker" key, and its lines about a
 * worker carry that worker's id as a field named "worker" too.
 *
 * No line ever repeats a key. The base keys (timestamp, level, message,
 * pid, worker when set) and the request context's (requestId, traceId,
 * userId, when given) always win; a caller field whose key is already on
 * the line is renamed "<key>_2" ("<key>_3", ... "<key>_9": the first name
 * still free), so its value is kept and the clash shows; a field that finds
 * no free name is dropped. Both formats apply the same renaming. Secrets never leave this module: fields whose key
 * names a secret are written as "[REDACTED]" and e-mail addresses anywhere
 * in string values or the message are masked as "j***@example.com".
 * Each line is written with a single write(2) so lines from several
 * processes sharing stderr or a file (O_APPEND) never interleave.
 */
#ifndef RESIL_LOG_H
#define RESIL_LOG_H

#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_LVL_DEBUG = 0, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };

enum log_field_type { LF_T_STR, LF_T_INT, LF_T_DBL, LF_T_BOOL, LF_T_STRN };

struct log_field {
	const char *key;
	int type;
	const char *s; /* LF_T_STR (NUL-terminated, may be NULL = null), LF_T_STRN */
	size_t n;      /* LF_T_STRN length */
	int64_t i;     /* LF_T_INT, LF_T_BOOL */
	double d;      /* LF_T_DBL */
};

#define LF_STR(k, v) ((struct log_field){.key = (k), .type = LF_T_STR, .s = (v)})
#define LF_STRN(k, v, len) ((struct log_field){.key = (k), .type = LF_T_STRN, .s = (v), .n = (len)})
#define LF_INT(k, v) ((struct log_field){.key = (k), .type = LF_T_INT, .i = (int64_t)(v)})
#define LF_DBL(k, v) ((struct log_field){.key = (k), .type = LF_T_DBL, .d = (double)(v)})
#define LF_BOOL(k, v) ((struct log_field){.key = (k), .type = LF_T_BOOL, .i = (v) ? 1 : 0})

/* Request context attached to every line logged inside a request. */
struct log_ctx {
	const char *request_id; /* NULL: omitted */
	const char *trace_id;
	const char *user_id;
};

/* Configure the process-wide logger. json: 1 JSON lines, 0 pretty.
 * file: NULL or path also receiving JSON lines (O_APPEND|O_CREAT, 0640).
 * worker: 0-based worker id written as "worker" (-1: omitted, e.g. the
 * supervisor).
 * Returns 0, or -1 if the file cannot be opened (errno set). */
int log_init(int level, int json, const char *file, int worker);
void log_set_worker(int worker);
/* The log file's descriptor (-1: none); kept open across fork. */
int log_file_fd(void);
/* Take over fd, already open on file (inherited across exec), as the log
 * file; file is kept for log_reopen(). 0, or -1 (nothing changed). */
int log_adopt_file(const char *file, int fd);
void log_set_level(int level);
int log_enabled(int level);
/* Reopen the log file (SIGUSR1 / logrotate). Returns 0 or -1. */
int log_reopen(void);
/* Redirect the primary stream (default fd 2); tests use a pipe or file.
 * Like log_init, re-checks whether the stream is the journal. */
void log_set_fd(int fd);
/* 1 if fd is systemd's journal stream: JOURNAL_STREAM ("<dev>:<ino>")
 * names fd's st_dev:st_ino. Lines to the primary stream then start with
 * their syslog priority (sd-daemon(3): "<3>" error, "<4>" warn, "<6>"
 * info, "<7>" debug) so `journalctl -p err` filters; the file never
 * gets the prefix. */
int log_stream_is_journal(int fd);
/* 1 if the primary stream was found to be the journal. */
int log_to_journal(void);
/* Close the file; the logger keeps writing to the primary stream. */
void log_shutdown(void);

/* Batching for the calling thread (a worker's loop): lines are collected
 * and written together (each write at most PIPE_BUF bytes of whole lines).
 * need_flush(ud) is called when the first line of a batch is queued; the
 * owner must then call log_flush() soon (end of the loop iteration).
 * Warn and error lines are written at once. on = 0 flushes and stops. */
int log_set_batching(int on, void (*need_flush)(void *ud), void *ud);
void log_flush(void);

/* Emit one event. ctx may be NULL. */
void log_emit(int level, const struct log_ctx *ctx, const char *message, const struct log_field *fields,
              size_t nfields);

#define LOG_FIELDS_(...) ((const struct log_field[]){__VA_ARGS__})
#define LOG_NFIELDS_(...) (sizeof(LOG_FIELDS_(__VA_ARGS__)) / sizeof(struct log_field))
/* log_info(ctx, "message", LF_STR("k", v), LF_INT("n", 3)); at least one field
 * is needed by the macro form; use log_emit(..., NULL, 0) for none. */
#define log_debug(ctx, msg, ...)                                                                                       \
	do {                                                                                                           \
		if (log_enabled(LOG_LVL_DEBUG))                                                                        \
			log_emit(LOG_LVL_DEBUG, ctx, msg, LOG_FIELDS_(__VA_ARGS__), LOG_NFIELDS_(__VA_ARGS__));        \
	} while (0)
#define log_info(ctx, msg, ...)                                                                                        \
	do {                                                                                                           \
		if (log_enabled(LOG_LVL_INFO))                                                                         \
			log_emit(LOG_LVL_INFO, ctx, msg, LOG_FIELDS_(__VA_ARGS__), LOG_NFIELDS_(__VA_ARGS__));         \
	} while (0)
#define log_warn(ctx, msg, ...) log_emit(LOG_LVL_WARN, ctx, msg, LOG_FIELDS_(__VA_ARGS__), LOG_NFIELDS_(__VA_ARGS__))
#define log_error(ctx, msg, ...) log_emit(LOG_LVL_ERROR, ctx, msg, LOG_FIELDS_(__VA_ARGS__), LOG_NFIELDS_(__VA_ARGS__))
#define log_msg(level, ctx, msg) log_emit(level, ctx, msg, NULL, 0)

/* Redaction helpers, exported for tests and for other writers. */
/* 1 if a field with this key must be written as "[REDACTED]"
 * (password, token, authorization, ssn, medicalRecord, secret, apiKey, ...,
 * case-insensitive, also as a suffix like "jwtSecret", "accessToken"). */
int log_key_is_secret(const char *key);
/* Copy src to dst masking every e-mail address ("john@x.org" -> "j***@x.org").
 * Always NUL-terminates; returns the length written. */
size_t log_mask_emails(const char *src, size_t len, char *dst, size_t dstlen);
/* Like log_mask_emails, and also "Bearer <token>" -> "Bearer [REDACTED]" and
 * JWTs (eyJ...x.y.z) -> "[REDACTED]": what log lines do to every string. */
size_t log_redact_text(const char *src, size_t len, char *dst, size_t dstlen);

#endif
