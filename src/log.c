/* log.c - structured logging (SPEC section 10), see log.h.
 *
 * Every event is formatted into a buffer on the caller's stack (growing to
 * the heap only for huge lines) and handed to the kernel with one write(2),
 * so workers, the supervisor and job-pool threads can share stderr and the
 * log file without interleaving. String values pass through one scanner
 * that escapes JSON, replaces invalid UTF-8 with U+FFFD and masks e-mail
 * addresses, "Bearer <token>" and JWTs in the same pass; secret keys are
 * replaced wholesale. Settings are atomics written at start-up; the log
 * file keeps one fd number for its whole life (log_reopen dup3()s the new
 * file over it), so a thread racing a reopen writes to the old or the new
 * file, never to a closed or recycled descriptor.
 *
 * One file on purpose: the line builder, the escaping and masking scanner
 * and the sinks share one per-thread buffer and its invariants.
 */
#define _GNU_SOURCE
#include "log.h"
#include "clock.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LOG_STACK_BUF 4096
#define LOG_VALUE_MAX 8192 /* input bytes kept per string value */
#define LOG_WRITE_POLLS 20 /* EAGAIN retries of 50 ms before a line is dropped */

static atomic_int g_level = LOG_LVL_INFO;
static atomic_int g_json = 1;
static atomic_int g_worker = -1;
static atomic_int g_fd = 2;
static atomic_int g_journal; /* the primary stream is systemd's journal */
static atomic_int g_file_fd = -1;
static atomic_int g_pid;
static char *g_path; /* owned; written only by init/shutdown */
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;

static const char *const level_json[] = {"debug", "info", "warn", "error"};
static const char *const level_pretty[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};
/* sd-daemon(3) prefixes: SD_DEBUG, SD_INFO, SD_WARNING, SD_ERR. */
static const char *const level_prio[] = {"<7>", "<6>", "<4>", "<3>"};
static const char *const level_colour[] = {"\x1b[90m", "\x1b[32m", "\x1b[33m", "\x1b[31m"};
#define ANSI_RESET "\x1b[0m"
#define ANSI_DIM "\x1b[2m"
#define REDACTED "[REDACTED]"
#define ELLIPSIS "\xe2\x80\xa6"

/* ---- output buffer ------------------------------------------------------ */

struct lbuf {
	char *p;
	size_t len, cap;
	int heap;   /* p is malloc'ed */
	int fixed;  /* may not grow (caller's dst) */
	int failed; /* out of space: later appends are dropped */
};

static int lb_reserve(struct lbuf *b, size_t n)
{
	if (b->failed)
		return 0;
	if (n <= b->cap - b->len)
		return 1;
	if (b->fixed || n > SIZE_MAX / 2 - b->len) {
		b->failed = 1;
		return 0;
	}
	size_t ncap = b->cap * 2;
	if (ncap < b->len + n + 256)
		ncap = b->len + n + 256;
	char *np = b->heap ? realloc(b->p, ncap) : malloc(ncap);
	if (!np) {
		b->failed = 1;
		return 0;
	}
	if (!b->heap)
		memcpy(np, b->p, b->len);
	b->p = np;
	b->cap = ncap;
	b->heap = 1;
	return 1;
}

static void lb_put(struct lbuf *b, const char *s, size_t n)
{
	if (n && lb_reserve(b, n)) {
		memcpy(b->p + b->len, s, n);
		b->len += n;
	} else if (n && b->fixed && b->len < b->cap) {
		/* caller's dst is full: keep what fits (masking decisions are
		 * made before text is appended, so a prefix reveals nothing) */
		memcpy(b->p + b->len, s, b->cap - b->len);
		b->len = b->cap;
	}
}

#define lb_lit(b, s) lb_put((b), (s), sizeof(s) - 1)

static void lb_putc(struct lbuf *b, char c)
{
	if (lb_reserve(b, 1))
		b->p[b->len++] = c;
}

static void lb_int(struct lbuf *b, int64_t v)
{
	char tmp[24];
	char *e = tmp + sizeof(tmp), *p = e;
	uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
	do {
		*--p = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		*--p = '-';
	lb_put(b, p, (size_t)(e - p));
}

/* Up to three decimals, trailing zeros dropped; JSON has no NaN/Inf. */
static void lb_double(struct lbuf *b, double d)
{
	if (d != d || d > 1e300 || d < -1e300) {
		lb_lit(b, "null");
		return;
	}
	if (d >= 9e12 || d <= -9e12) {
		char tmp[40];
		int n = snprintf(tmp, sizeof(tmp), "%.17g", d);
		if (n > 0 && (size_t)n < sizeof(tmp))
			lb_put(b, tmp, (size_t)n);
		return;
	}
	int64_t m = (int64_t)(d * 1000.0 + (d < 0 ? -0.5 : 0.5));
	uint64_t u = m < 0 ? (uint64_t)0 - (uint64_t)m : (uint64_t)m;
	if (m < 0)
		lb_putc(b, '-');
	lb_int(b, (int64_t)(u / 1000));
	unsigned frac = (unsigned)(u % 1000);
	if (frac) {
		char f[4] = {'.', (char)('0' + frac / 100), (char)('0' + frac / 10 % 10), (char)('0' + frac % 10)};
		size_t n = 4;
		while (f[n - 1] == '0')
			n--;
		lb_put(b, f, n);
	}
}

/* ---- text scanner: escaping, UTF-8 repair, masking ---------------------- */

enum esc_mode { ESC_JSON, ESC_PRETTY, ESC_RAW };
enum { MASK_EMAIL = 1, MASK_TOKENS = 2, MASK_ALL = 3 };

/* Byte classes, one table lookup per input byte on the hot path. */
enum {
	C_SAFE = 1, /* printable ASCII copied verbatim into a JSON string */
	C_ALNUM = 2,
	C_LOCAL = 4,  /* e-mail local part [A-Za-z0-9._%+-] */
	C_DOMAIN = 8, /* e-mail domain [A-Za-z0-9.-] */
	C_B64 = 16,   /* base64url [A-Za-z0-9_-] */
	C_TOKEN = 32, /* may start "Bearer" or "eyJ" */
	C_WORD = C_SAFE | C_ALNUM | C_LOCAL | C_DOMAIN | C_B64,
};
static const unsigned char cls[256] = {
    [' ' ... '!'] = C_SAFE,
    ['#' ... '$'] = C_SAFE,
    ['%'] = C_SAFE | C_LOCAL,
    ['&' ... '*'] = C_SAFE,
    ['+'] = C_SAFE | C_LOCAL,
    [','] = C_SAFE,
    ['-'] = C_SAFE | C_LOCAL | C_DOMAIN | C_B64,
    ['.'] = C_SAFE | C_LOCAL | C_DOMAIN,
    ['/'] = C_SAFE,
    ['0' ... '9'] = C_WORD,
    [':' ... '@'] = C_SAFE,
    ['A'] = C_WORD,
    ['B'] = C_WORD | C_TOKEN,
    ['C' ... 'Z'] = C_WORD,
    ['['] = C_SAFE,
    [']' ... '^'] = C_SAFE,
    ['_'] = C_SAFE | C_LOCAL | C_B64,
    ['`'] = C_SAFE,
    ['a'] = C_WORD,
    ['b'] = C_WORD | C_TOKEN,
    ['c' ... 'd'] = C_WORD,
    ['e'] = C_WORD | C_TOKEN,
    ['f' ... 'z'] = C_WORD,
    ['{' ... '~'] = C_SAFE,
};

static int is_alnum(unsigned char c)
{
	return cls[c] & C_ALNUM;
}

static int is_domain(unsigned char c)
{
	return cls[c] & C_DOMAIN;
}

static int is_b64url(unsigned char c)
{
	return cls[c] & C_B64;
}

static int is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* End of the e-mail domain starting at s[i], or 0 if there is none. */
static size_t domain_end(const unsigned char *s, size_t i, size_t avail)
{
	size_t j = i;
	while (j < avail && is_domain(s[j]))
		j++;
	while (j > i && (s[j - 1] == '.' || s[j - 1] == '-'))
		j--;
	if (j == i || !is_alnum(s[i]) || !memchr(s + i, '.', j - i))
		return 0;
	return j;
}

/* End of "Bearer <token>" starting at s[i], or 0. */
static size_t bearer_end(const unsigned char *s, size_t i, size_t avail)
{
	static const char word[] = "bearer";
	if (avail - i < 8)
		return 0;
	for (size_t k = 0; k < 6; k++)
		if ((s[i + k] | 0x20) != word[k])
			return 0;
	size_t j = i + 6;
	if (s[j] != ' ' && s[j] != '\t')
		return 0;
	while (j < avail && (s[j] == ' ' || s[j] == '\t'))
		j++;
	size_t t = j;
	while (j < avail && !is_space(s[j]) && s[j] != '"')
		j++;
	return j > t ? j : 0;
}

/* End of a JWT (eyJ<b64url>.<b64url>.<b64url>) starting at s[i], or 0. */
static size_t jwt_end(const unsigned char *s, size_t i, size_t avail)
{
	if (avail - i < 6 || s[i + 1] != 'y' || s[i + 2] != 'J')
		return 0;
	size_t j = i + 3;
	for (int seg = 0; seg < 2; seg++) {
		size_t t = j;
		while (j < avail && is_b64url(s[j]))
			j++;
		if (j == t || j >= avail || s[j] != '.')
			return 0;
		j++;
	}
	while (j < avail && is_b64url(s[j]))
		j++;
	return j;
}

/* Length of the well-formed UTF-8 sequence at s[i] (lead byte >= 0x80), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t i, size_t n)
{
	unsigned char c = s[i];
	size_t len;
	unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
	if (c >= 0xc2 && c <= 0xdf)
		len = 2;
	else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		if (c == 0xe0)
			lo = 0xa0; /* overlong */
		else if (c == 0xed)
			hi = 0x9f; /* surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f; /* > U+10FFFF */
	} else
		return 0;
	if (n - i < len || s[i + 1] < lo || s[i + 1] > hi)
		return 0;
	for (size_t k = 2; k < len; k++)
		if ((s[i + k] & 0xc0) != 0x80)
			return 0;
	return len;
}

static void put_escape(struct lbuf *b, unsigned char c)
{
	static const char hex[] = "0123456789abcdef";
	switch (c) {
	case '"': lb_lit(b, "\\\""); break;
	case '\\': lb_lit(b, "\\\\"); break;
	case '\n': lb_lit(b, "\\n"); break;
	case '\r': lb_lit(b, "\\r"); break;
	case '\t': lb_lit(b, "\\t"); break;
	case '\b': lb_lit(b, "\\b"); break;
	case '\f': lb_lit(b, "\\f"); break;
	default: {
		char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
		lb_put(b, u, sizeof(u));
	}
	}
}

/* Append s[0..n) escaped for mode with the masks applied. Matches that start
 * before n may read on up to avail so a cut never reveals half an address. */
static void put_text(struct lbuf *b, const char *src, size_t n, size_t avail, enum esc_mode mode, int mask)
{
	const unsigned char *s = (const unsigned char *)src;
	size_t i = 0, lit = 0; /* s[lit..i) is pending verbatim output */
	size_t run = SIZE_MAX; /* start of the current local-part run */

	while (i < n) {
		unsigned char c = s[i];
		unsigned char cl = cls[c];
		size_t k;
		if ((cl & C_TOKEN) && (mask & MASK_TOKENS) && (i == 0 || !is_alnum(s[i - 1]))) {
			if (c != 'e' && (k = bearer_end(s, i, avail))) {
				lb_put(b, src + lit, i + 6 - lit);
				lb_lit(b, " " REDACTED);
				i = lit = k;
				run = SIZE_MAX;
				continue;
			}
			if (c == 'e' && (i == 0 || !is_b64url(s[i - 1])) && (k = jwt_end(s, i, avail))) {
				lb_put(b, src + lit, i - lit);
				lb_lit(b, REDACTED);
				i = lit = k;
				run = SIZE_MAX;
				continue;
			}
		}
		if (cl & C_LOCAL) {
			if (run == SIZE_MAX)
				run = i;
			i++;
			continue;
		}
		if (c == '@' && (mask & MASK_EMAIL) && run != SIZE_MAX && (k = domain_end(s, i + 1, avail))) {
			lb_put(b, src + lit, run + 1 - lit);
			lb_lit(b, "***@");
			lb_put(b, src + i + 1, k - i - 1);
			i = lit = k;
			run = SIZE_MAX;
			continue;
		}
		run = SIZE_MAX;
		if ((cl & C_SAFE) || mode == ESC_RAW || (mode == ESC_PRETTY && (c == '"' || c == '\\'))) {
			i++;
			continue;
		}
		if (c >= 0x80 && (k = utf8_len(s, i, n))) {
			i += k;
			continue;
		}
		lb_put(b, src + lit, i - lit);
		if (c >= 0x80)
			lb_lit(b, "\xef\xbf\xbd");
		else
			put_escape(b, c);
		lit = ++i;
	}
	/* Cut inside a local part: look ahead so "john.do…" cannot leak. */
	if (run != SIZE_MAX && (mask & MASK_EMAIL) && avail > n) {
		size_t j = n, k;
		while (j < avail && (cls[s[j]] & C_LOCAL))
			j++;
		if (j < avail && s[j] == '@' && (k = domain_end(s, j + 1, avail))) {
			lb_put(b, src + lit, run + 1 - lit);
			lb_lit(b, "***@");
			lb_put(b, src + j + 1, k - j - 1);
			i = lit = k;
		}
	}
	if (i > lit)
		lb_put(b, src + lit, i - lit);
}

/* A string value: capped at LOG_VALUE_MAX input bytes (cut on a character
 * boundary, marked with an ellipsis). */
static void put_value(struct lbuf *b, const char *s, size_t n, enum esc_mode mode)
{
	size_t cut = n;
	if (n > LOG_VALUE_MAX) {
		cut = LOG_VALUE_MAX;
		while (cut > 0 && ((unsigned char)s[cut] & 0xc0) == 0x80)
			cut--;
	}
	put_text(b, s, cut, n, mode, MASK_ALL);
	if (cut < n)
		lb_lit(b, ELLIPSIS);
}

static void put_jstring(struct lbuf *b, const char *s, size_t n)
{
	lb_putc(b, '"');
	put_value(b, s, n, ESC_JSON);
	lb_putc(b, '"');
}

/* A key of len bytes, renamed "<key>_<suffix>" when suffix > 0 (see
 * plan_keys). */
static void put_key_text(struct lbuf *b, const char *key, size_t len, int suffix, enum esc_mode mode)
{
	if (key)
		put_text(b, key, len, len, mode, 0);
	if (suffix > 0) {
		char s[2] = {'_', (char)('0' + suffix)};
		lb_put(b, s, sizeof(s));
	}
}

/* ---- public helpers ----------------------------------------------------- */

int log_key_is_secret(const char *key)
{
	/* Compared as suffixes of the key lower-cased with '-' and '_' removed, so
	 * "accessToken", "refresh_token", "set-cookie", "jwt_secret", "x-api-key"
	 * and "medical_record" all match. */
#define W(s)                                                                                                           \
	{                                                                                                              \
		s, sizeof(s) - 1                                                                                       \
	}
	static const struct {
		const char *w;
		size_t n;
	} words[] = {W("password"), W("passwd"), W("token"), W("authorization"), W("cookie"),
	             W("secret"),   W("apikey"), W("ssn"),   W("medicalrecord"), W("creditcard")};
#undef W
	char tail[16];
	size_t t = sizeof(tail); /* tail[t..16) holds the normalized end of key */
	if (!key || !key[0])
		return 0;
	/* Quick reject: every word above ends in d, e, n, t or y (any case, and
	 * a key may end in '-' or '_' only after a word... which we strip). */
	{
		size_t kl = strlen(key);
		unsigned char last = (unsigned char)key[kl - 1] | 0x20;
		if (last != 'd' && last != 'e' && last != 'n' && last != 't' && last != 'y' && key[kl - 1] != '-' &&
		    key[kl - 1] != '_')
			return 0;
	}
	for (size_t i = strlen(key); i > 0 && t > 0; i--) {
		unsigned char c = (unsigned char)key[i - 1];
		if (c == '-' || c == '_')
			continue;
		tail[--t] = (char)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
	}
	size_t have = sizeof(tail) - t;
	for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++) {
		if (words[w].n <= have && memcmp(tail + sizeof(tail) - words[w].n, words[w].w, words[w].n) == 0)
			return 1;
	}
	return 0;
}

static size_t mask_into(const char *src, size_t len, char *dst, size_t dstlen, int mask)
{
	if (!dst || dstlen == 0)
		return 0;
	struct lbuf b = {.p = dst, .cap = dstlen - 1, .fixed = 1};
	if (src)
		put_text(&b, src, len, len, ESC_RAW, mask);
	dst[b.len] = '\0';
	return b.len;
}

size_t log_mask_emails(const char *src, size_t len, char *dst, size_t dstlen)
{
	return mask_into(src, len, dst, dstlen, MASK_EMAIL);
}

size_t log_redact_text(const char *src, size_t len, char *dst, size_t dstlen)
{
	return mask_into(src, len, dst, dstlen, MASK_ALL);
}

/* ---- configuration ------------------------------------------------------ */

static void refresh_pid_after_fork(void)
{
	atomic_store_explicit(&g_pid, 0, memory_order_relaxed);
}

static void register_atfork(void)
{
	(void)pthread_atfork(NULL, NULL, refresh_pid_after_fork);
}

static int current_pid(void)
{
	int pid = atomic_load_explicit(&g_pid, memory_order_relaxed);
	if (pid == 0) {
		(void)pthread_once(&g_atfork_once, register_atfork);
		pid = (int)getpid();
		atomic_store_explicit(&g_pid, pid, memory_order_relaxed);
	}
	return pid;
}

static int clamp_level(int level)
{
	return level < LOG_LVL_DEBUG ? LOG_LVL_DEBUG : level > LOG_LVL_ERROR ? LOG_LVL_ERROR : level;
}

static int open_log_file(const char *path)
{
	int fd;
	do
		fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	while (fd < 0 && errno == EINTR);
	return fd;
}

int log_stream_is_journal(int fd)
{
	const char *js = getenv("JOURNAL_STREAM");
	if (!js || !*js || fd < 0)
		return 0;
	char *end;
	errno = 0;
	unsigned long long dev = strtoull(js, &end, 10);
	if (errno || end == js || *end != ':')
		return 0;
	const char *ip = end + 1;
	unsigned long long ino = strtoull(ip, &end, 10);
	if (errno || end == ip || *end)
		return 0;
	struct stat st;
	if (fstat(fd, &st) != 0)
		return 0;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

int log_to_journal(void)
{
	return atomic_load(&g_journal);
}

int log_init(int level, int json, const char *file, int worker)
{
	atomic_store(&g_journal, log_stream_is_journal(atomic_load(&g_fd)));
	atomic_store(&g_level, clamp_level(level));
	atomic_store(&g_json, json ? 1 : 0);
	atomic_store(&g_worker, worker);
	(void)current_pid();
	log_shutdown();
	if (!file || !*file)
		return 0;
	char *path = strdup(file);
	if (!path)
		return -1;
	int fd = open_log_file(path);
	if (fd < 0) {
		int e = errno;
		free(path);
		errno = e;
		return -1;
	}
	g_path = path;
	atomic_store(&g_file_fd, fd);
	return 0;
}

int log_adopt_file(const char *file, int fd)
{
	char *path = strdup(file);
	if (!path)
		return -1;
	log_shutdown();
	g_path = path;
	atomic_store(&g_file_fd, fd);
	return 0;
}

int log_file_fd(void)
{
	return atomic_load(&g_file_fd);
}

void log_set_worker(int worker)
{
	atomic_store(&g_worker, worker);
}

void log_set_level(int level)
{
	atomic_store(&g_level, clamp_level(level));
}

int log_enabled(int level)
{
	return level >= atomic_load_explicit(&g_level, memory_order_relaxed);
}

void log_set_fd(int fd)
{
	atomic_store(&g_journal, log_stream_is_journal(fd));
	atomic_store(&g_fd, fd);
}

int log_reopen(void)
{
	if (!g_path)
		return 0;
	int nfd = open_log_file(g_path);
	if (nfd < 0)
		return -1;
	int old = atomic_load(&g_file_fd);
	if (old < 0) {
		atomic_store(&g_file_fd, nfd);
		return 0;
	}
	/* Keep the fd number: writers racing us hit the old or the new file. */
	int rc;
	do
		rc = dup3(nfd, old, O_CLOEXEC);
	while (rc < 0 && errno == EINTR);
	int e = errno;
	close(nfd);
	if (rc < 0) {
		errno = e;
		return -1;
	}
	return 0;
}

void log_shutdown(void)
{
	int fd = atomic_exchange(&g_file_fd, -1);
	if (fd >= 0)
		close(fd);
	free(g_path);
	g_path = NULL;
}

/* ---- line assembly ------------------------------------------------------ */

/* "YYYY-MM-DDTHH:MM:SS" for the current second, cached per thread. */
struct ts_cache {
	time_t sec;
	char text[20];
};
static _Thread_local struct ts_cache t_ts = {.sec = -1};

static void put2(char *p, int v)
{
	p[0] = (char)('0' + v / 10 % 10);
	p[1] = (char)('0' + v % 10);
}

static const char *timestamp(unsigned *ms)
{
	struct timespec now = clock_real_ts();
	*ms = (unsigned)(now.tv_nsec / 1000000);
	if (now.tv_sec != t_ts.sec) {
		struct tm tm;
		if (!gmtime_r(&now.tv_sec, &tm))
			memset(&tm, 0, sizeof(tm));
		int y = tm.tm_year + 1900;
		char *p = t_ts.text;
		put2(p, y / 100);
		put2(p + 2, y % 100);
		p[4] = '-';
		put2(p + 5, tm.tm_mon + 1);
		p[7] = '-';
		put2(p + 8, tm.tm_mday);
		p[10] = 'T';
		put2(p + 11, tm.tm_hour);
		p[13] = ':';
		put2(p + 14, tm.tm_min);
		p[16] = ':';
		put2(p + 17, tm.tm_sec);
		p[19] = '\0';
		t_ts.sec = now.tv_sec;
	}
	return t_ts.text;
}

static void put_ms(struct lbuf *b, unsigned ms)
{
	char m[4] = {'.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10)};
	lb_put(b, m, sizeof(m));
}

/* INT, DBL and BOOL values (and null for anything else): same in both formats. */
static void put_scalar(struct lbuf *b, const struct log_field *f)
{
	if (f->type == LF_T_INT)
		lb_int(b, f->i);
	else if (f->type == LF_T_DBL)
		lb_double(b, f->d);
	else if (f->type == LF_T_BOOL && f->i)
		lb_lit(b, "true");
	else if (f->type == LF_T_BOOL)
		lb_lit(b, "false");
	else
		lb_lit(b, "null");
}

/* The request context as up to three fields, in SPEC order. */
static size_t ctx_fields(const struct log_ctx *ctx, struct log_field out[3])
{
	size_t n = 0;
	if (!ctx)
		return 0;
	if (ctx->request_id)
		out[n++] = LF_STR("requestId", ctx->request_id);
	if (ctx->trace_id)
		out[n++] = LF_STR("traceId", ctx->trace_id);
	if (ctx->user_id)
		out[n++] = LF_STR("userId", ctx->user_id);
	return n;
}

/* ---- unique keys ---------------------------------------------------------
 *
 * A line never repeats a key (SPEC section 10). The base keys come first and
 * always win; a caller field whose key is already on the line (a base key, or
 * an earlier field of the same call) is renamed "<key>_2", "<key>_3", ... up
 * to "<key>_9", the first of these not yet on the line, so its value is kept
 * and the collision is visible; a field that finds no free name is dropped.
 * The decision is made once per event (plan_keys) and shared by the JSON and
 * pretty builders so both formats name fields alike. */

static const char *const base_keys[] = {"timestamp", "level", "message", "pid", "worker"};
#define BASE_KEYS_NO_WORKER 4 /* "worker" is last and present only when set */

/* 1 if key k renamed with suffix ks (0: not renamed) is the same text as
 * key o renamed with suffix os. A NULL key is written as "". */
static int same_key(const char *k, int ks, const char *o, int os)
{
	if (!k)
		k = "";
	if (!o)
		o = "";
	if (ks == os)
		return k[0] == o[0] && strcmp(k, o) == 0;
	if (ks && os)
		return 0; /* "x_2" and "y_3" end in different digits */
	if (ks) {         /* is o == k + "_" + ks ? */
		const char *t = k;
		int ts = ks;
		k = o;
		ks = os;
		o = t;
		os = ts;
	}
	size_t n = strlen(o);
	return strncmp(k, o, n) == 0 && k[n] == '_' && k[n + 1] == (char)('0' + os) && k[n + 2] == '\0';
}

/* How a field's key is written: its length (computed once per event) and
 * its rename suffix (0 as is, 2..9 "<key>_<n>", -1 dropped). */
struct key_plan {
	uint32_t len;
	signed char suffix;
};

/* A 128-bit filter of the keys written so far, indexed by a hash of a
 * key's first and last bytes and its length as written. Equal keys always
 * hash alike, so a key whose bit is clear is not on the line yet; only a set
 * bit (a clash, or now and then two keys sharing a bit) costs comparing it
 * with every key written so far. */
struct key_filter {
	uint64_t w[2];
};

static unsigned key_hash(unsigned first, unsigned last, size_t len)
{
	uint64_t x = (uint64_t)first | (uint64_t)last << 8 | (uint64_t)(len & 0xffff) << 16;
	return (unsigned)((x * 0x9E3779B97F4A7C15u) >> 57); /* 0..127 */
}

/* Hash of key (len bytes) as written with suffix. */
static unsigned key_hash_of(const char *key, size_t len, int suffix)
{
	if (suffix > 0)
		return key_hash(len ? (unsigned char)key[0] : '_', (unsigned)('0' + suffix), len + 2);
	return key_hash(len ? (unsigned char)key[0] : 0, len ? (unsigned char)key[len - 1] : 0, len);
}

/* Set bit h; 1 if it was set already. */
static int filter_test_set(struct key_filter *f, unsigned h)
{
	uint64_t bit = (uint64_t)1 << (h & 63);
	int was = (f->w[h >> 6] & bit) != 0;
	f->w[h >> 6] |= bit;
	return was;
}

/* The base keys' filters, with and without "worker", computed once. */
static struct key_filter base_filter[2];
static pthread_once_t base_filter_once = PTHREAD_ONCE_INIT;

static void base_filter_init(void)
{
	for (size_t j = 0; j < sizeof(base_keys) / sizeof(base_keys[0]); j++) {
		unsigned h = key_hash_of(base_keys[j], strlen(base_keys[j]), 0);
		if (j < BASE_KEYS_NO_WORKER)
			filter_test_set(&base_filter[0], h);
		filter_test_set(&base_filter[1], h);
	}
}

/* 1 if key renamed with s is already on the line: a base key, a context
 * key, or one of the first i caller fields as planned. */
static int key_taken(const char *key, int s, size_t nbase, const struct log_field *cf, size_t nctx,
                     const struct log_field *fields, size_t i, const struct key_plan *plan)
{
	for (size_t j = 0; j < nbase; j++)
		if (same_key(key, s, base_keys[j], 0))
			return 1;
	for (size_t j = 0; j < nctx; j++)
		if (same_key(key, s, cf[j].key, 0))
			return 1;
	for (size_t j = 0; j < i; j++)
		if (plan[j].suffix >= 0 && same_key(key, s, fields[j].key, plan[j].suffix))
			return 1;
	return 0;
}

/* Plan each caller field's key (see struct key_plan). cf/nctx are the
 * request-context fields of the line, cplan gets their lengths. On the
 * hot path (no clash) this is one strlen and one hash per field. */
static void plan_keys(int has_worker, const struct log_field *cf, size_t nctx, struct key_plan *cplan,
                      const struct log_field *fields, size_t nfields, struct key_plan *plan)
{
	size_t nbase = has_worker ? sizeof(base_keys) / sizeof(base_keys[0]) : BASE_KEYS_NO_WORKER;
	(void)pthread_once(&base_filter_once, base_filter_init);
	struct key_filter seen = base_filter[has_worker ? 1 : 0];
	for (size_t j = 0; j < nctx; j++) {
		cplan[j].len = (uint32_t)strlen(cf[j].key);
		cplan[j].suffix = 0;
		filter_test_set(&seen, key_hash_of(cf[j].key, cplan[j].len, 0));
	}
	for (size_t i = 0; i < nfields; i++) {
		const char *key = fields[i].key;
		size_t len = key ? strnlen(key, UINT32_MAX) : 0;
		int s = 0;
		if (filter_test_set(&seen, key_hash_of(key, len, 0))) {
			while (key_taken(key, s, nbase, cf, nctx, fields, i, plan)) {
				s = s == 0 ? 2 : s + 1;
				if (s > 9) {
					s = -1;
					break;
				}
			}
			if (s > 0)
				filter_test_set(&seen, key_hash_of(key, len, s));
		}
		plan[i].len = (uint32_t)len;
		plan[i].suffix = (signed char)s;
	}
}

/* One event, as the builders see it. */
struct event {
	int level;
	const char *ts; /* "YYYY-MM-DDTHH:MM:SS" */
	unsigned ms;
	int worker; /* -1: no "worker" key */
	const char *message;
	struct log_field cf[3]; /* request context */
	struct key_plan cplan[3];
	size_t nctx;
	const struct log_field *fields;
	const struct key_plan *plan; /* plan_keys() for fields */
	size_t nfields;
};

/* Field i of the line after the base keys: context first, then the
 * caller's; *kp says how its key is written. */
static const struct log_field *event_field(const struct event *ev, size_t i, const struct key_plan **kp)
{
	if (i < ev->nctx) {
		*kp = &ev->cplan[i];
		return &ev->cf[i];
	}
	*kp = &ev->plan[i - ev->nctx];
	return &ev->fields[i - ev->nctx];
}

static void build_json(struct lbuf *b, const struct event *ev)
{
	lb_lit(b, "{\"timestamp\":\"");
	lb_put(b, ev->ts, 19);
	put_ms(b, ev->ms);
	lb_lit(b, "Z\",\"level\":\"");
	lb_put(b, level_json[ev->level], strlen(level_json[ev->level]));
	lb_lit(b, "\",\"message\":");
	put_jstring(b, ev->message, strlen(ev->message));
	lb_lit(b, ",\"pid\":");
	lb_int(b, current_pid());
	if (ev->worker != -1) {
		lb_lit(b, ",\"worker\":");
		lb_int(b, ev->worker);
	}
	for (size_t i = 0; i < ev->nctx + ev->nfields; i++) {
		const struct key_plan *kp;
		const struct log_field *f = event_field(ev, i, &kp);
		if (kp->suffix < 0)
			continue;
		lb_lit(b, ",\"");
		put_key_text(b, f->key, kp->len, kp->suffix, ESC_JSON);
		lb_lit(b, "\":");
		if (i >= ev->nctx && log_key_is_secret(f->key))
			lb_lit(b, "\"" REDACTED "\"");
		else if ((f->type == LF_T_STR || f->type == LF_T_STRN) && f->s)
			put_jstring(b, f->s, f->type == LF_T_STR ? strlen(f->s) : f->n);
		else
			put_scalar(b, f);
	}
	lb_lit(b, "}\n");
}

/* Pretty values are bare unless they would be ambiguous as key=value. */
static void put_pretty_value(struct lbuf *b, const char *s, size_t n)
{
	int quote = n == 0;
	for (size_t i = 0; i < n && !quote; i++)
		quote = s[i] == ' ' || s[i] == '"' || s[i] == '=';
	if (quote)
		lb_putc(b, '"');
	put_value(b, s, n, quote ? ESC_JSON : ESC_PRETTY);
	if (quote)
		lb_putc(b, '"');
}

static void build_pretty(struct lbuf *b, const struct event *ev)
{
	lb_lit(b, ANSI_DIM);
	lb_put(b, ev->ts + 11, 8);
	put_ms(b, ev->ms);
	lb_lit(b, ANSI_RESET " ");
	lb_put(b, level_colour[ev->level], strlen(level_colour[ev->level]));
	lb_put(b, level_pretty[ev->level], 5);
	lb_lit(b, ANSI_RESET);
	if (ev->worker != -1) {
		lb_lit(b, " [w");
		lb_int(b, ev->worker);
		lb_putc(b, ']');
	}
	lb_putc(b, ' ');
	put_value(b, ev->message, strlen(ev->message), ESC_PRETTY);
	for (size_t i = 0; i < ev->nctx + ev->nfields; i++) {
		const struct key_plan *kp;
		const struct log_field *f = event_field(ev, i, &kp);
		if (kp->suffix < 0)
			continue;
		lb_lit(b, " " ANSI_DIM);
		put_key_text(b, f->key, kp->len, kp->suffix, ESC_PRETTY);
		lb_lit(b, "=" ANSI_RESET);
		if (i >= ev->nctx && log_key_is_secret(f->key))
			lb_lit(b, REDACTED);
		else if ((f->type == LF_T_STR || f->type == LF_T_STRN) && f->s)
			put_pretty_value(b, f->s, f->type == LF_T_STR ? strlen(f->s) : f->n);
		else
			put_scalar(b, f);
	}
	lb_putc(b, '\n');
}

/* One write(2) per line; the loop only runs again after a signal or a
 * partial write to a full pipe. A line that cannot be written is dropped. */
static void write_line(int fd, const char *p, size_t n)
{
	int polls = 0;
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w > 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && polls++ < LOG_WRITE_POLLS) {
			struct pollfd pfd = {.fd = fd, .events = POLLOUT};
			(void)poll(&pfd, 1, 50);
			continue;
		}
		return;
	}
}

/* Batching (opt-in per thread, used by a worker's loop thread): whole lines
 * are collected and written together, at most PIPE_BUF bytes per write(2)
 * so that writes to a pipe shared by several processes stay atomic. The
 * owner is told when a batch starts so that it can schedule log_flush()
 * at the end of its loop iteration. */
#define LOG_BATCH_MAX 4096
struct log_batch {
	int on;
	void (*need_flush)(void *ud);
	void *ud;
	size_t len[2];
	char buf[2][LOG_BATCH_MAX];
};
static __thread struct log_batch *tl_batch;
static __thread int tl_urgent; /* warn and error lines bypass the batch */

int log_set_batching(int on, void (*need_flush)(void *ud), void *ud)
{
	if (!on) {
		if (tl_batch) {
			log_flush();
			free(tl_batch);
			tl_batch = NULL;
		}
		return 0;
	}
	if (!tl_batch) {
		tl_batch = calloc(1, sizeof(*tl_batch));
		if (!tl_batch)
			return -1;
	}
	tl_batch->on = 1;
	tl_batch->need_flush = need_flush;
	tl_batch->ud = ud;
	return 0;
}

static void batch_flush_one(struct log_batch *bt, int i, int fd)
{
	if (bt->len[i] && fd >= 0)
		write_line(fd, bt->buf[i], bt->len[i]);
	bt->len[i] = 0;
}

void log_flush(void)
{
	struct log_batch *bt = tl_batch;
	if (!bt)
		return;
	batch_flush_one(bt, 0, atomic_load_explicit(&g_fd, memory_order_relaxed));
	batch_flush_one(bt, 1, atomic_load_explicit(&g_file_fd, memory_order_relaxed));
}

/* Write or batch one line for output i (0: primary, 1: file). */
static void emit_line(int i, int fd, const char *p, size_t n)
{
	struct log_batch *bt = tl_batch;
	if (!bt || !bt->on || n > LOG_BATCH_MAX || tl_urgent) {
		if (bt && bt->len[i])
			batch_flush_one(bt, i, fd); /* keep lines in order */
		write_line(fd, p, n);
		return;
	}
	if (bt->len[i] + n > LOG_BATCH_MAX)
		batch_flush_one(bt, i, fd);
	int was_empty = bt->len[0] == 0 && bt->len[1] == 0;
	memcpy(bt->buf[i] + bt->len[i], p, n);
	bt->len[i] += n;
	if (was_empty && bt->need_flush)
		bt->need_flush(bt->ud);
}

/* Out of memory for a huge line: say so instead of writing a cut line.
 * The first pre bytes (the journal priority) are kept. */
static void build_oom(struct lbuf *b, const struct event *ev, size_t pre)
{
	struct event oom = {.level = ev->level,
	                    .ts = ev->ts,
	                    .ms = ev->ms,
	                    .worker = ev->worker,
	                    .message = "log line dropped: out of memory"};
	b->len = pre;
	b->failed = 0;
	build_json(b, &oom);
}

#define LOG_PLAN_STACK 64 /* fields planned without an allocation */

void log_emit(int level, const struct log_ctx *ctx, const char *message, const struct log_field *fields, size_t nfields)
{
	if (!log_enabled(level))
		return;
	int saved_errno = errno; /* callers log right before reporting errno */
	struct event ev = {.level = clamp_level(level),
	                   .message = message ? message : "",
	                   .fields = fields,
	                   .nfields = fields ? nfields : 0};
	ev.worker = atomic_load_explicit(&g_worker, memory_order_relaxed);
	ev.nctx = ctx_fields(ctx, ev.cf);
	struct key_plan plan_stack[LOG_PLAN_STACK];
	struct key_plan *plan = plan_stack;
	if (ev.nfields > LOG_PLAN_STACK) {
		plan = malloc(ev.nfields * sizeof(*plan)); /* nfields counts an array in memory: no overflow */
		if (!plan)
			ev.nfields = 0; /* build_oom below says the line was dropped */
	}
	plan_keys(ev.worker != -1, ev.cf, ev.nctx, ev.cplan, ev.fields, ev.nfields, plan);
	ev.plan = plan;
	tl_urgent = ev.level >= LOG_LVL_WARN;
	char stack[LOG_STACK_BUF];
	struct lbuf b = {.p = stack, .cap = sizeof(stack)};
	ev.ts = timestamp(&ev.ms);
	int json = atomic_load_explicit(&g_json, memory_order_relaxed);
	int fd = atomic_load_explicit(&g_fd, memory_order_relaxed);
	int file_fd = atomic_load_explicit(&g_file_fd, memory_order_relaxed);
	int oom = plan == NULL;
	/* The journal reads "<N>" at the start of a line as its priority; the
	 * log file never gets it. */
	size_t pre = 0;
	if (fd >= 0 && atomic_load_explicit(&g_journal, memory_order_relaxed)) {
		lb_put(&b, level_prio[ev.level], 3);
		pre = 3;
	}

	if (json) {
		build_json(&b, &ev);
		if (b.failed || oom)
			build_oom(&b, &ev, pre);
		if (fd >= 0)
			emit_line(0, fd, b.p, b.len);
		if (file_fd >= 0)
			emit_line(1, file_fd, b.p + pre, b.len - pre);
	} else {
		if (fd >= 0) {
			build_pretty(&b, &ev);
			if (b.failed || oom)
				build_oom(&b, &ev, pre);
			emit_line(0, fd, b.p, b.len);
		}
		if (file_fd >= 0) {
			b.len = 0;
			b.failed = 0;
			build_json(&b, &ev);
			if (b.failed || oom)
				build_oom(&b, &ev, 0);
			emit_line(1, file_fd, b.p, b.len);
		}
	}
	if (b.heap)
		free(b.p);
	if (plan != plan_stack)
		free(plan);
	errno = saved_errno;
}
