/* rbus.c - the cross-host bus over Redis (see rbus.h).
 *
 * Lifetime rules for hiredis's async contexts (0.14): a context is freed
 * by hiredis itself when the connection fails or closes (the disconnect
 * callback runs first), and by redisAsyncFree() otherwise; either way every
 * pending reply callback runs once with a NULL reply. So: the disconnect
 * callback only forgets the pointer and schedules a reset; the reset (an
 * event of its own, never inside a hiredis callback) frees whatever context
 * is still open; and every reply callback owns its privdata and treats a
 * NULL reply as failure.
 */
#include "autoconfig.h"

#include "rbus.h"

#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* ---- URI ---------------------------------------------------------------- */

static int uerr(char *err, size_t errlen, const char *msg)
{
	if (err && errlen)
		snprintf(err, errlen, "%s", msg);
	return -1;
}

int rbus_parse_uri(const char *uri, struct rbus_addr *a, char *err, size_t errlen)
{
	struct rbus_addr tmp;
	if (!a)
		a = &tmp;
	memset(a, 0, sizeof(*a));
	if (strncmp(uri, "rediss://", 9) == 0)
		return uerr(err, errlen, "TLS (rediss://) is not supported yet: use redis:// on a trusted network");
	if (strncmp(uri, "redis://", 8) != 0)
		return uerr(err, errlen, "invalid URI (expected redis://host:port[/db])");
	const char *h = uri + 8;
	const char *slash = strchr(h, '/');
	size_t alen = slash ? (size_t)(slash - h) : strlen(h);
	/* Never repeat what stands before an '@': it may be a password. */
	if (memchr(h, '@', alen))
		return uerr(err, errlen, "passwords in the URI (redis://user:password@...) are not supported yet");
	for (const char *p = uri; *p; p++)
		if ((unsigned char)*p <= ' ' || *p == 0x7f)
			return uerr(err, errlen, "invalid URI (blanks or control characters)");
	const char *hend, *port = NULL;
	if (*h == '[') {
		const char *rb = memchr(h, ']', alen);
		if (!rb)
			return uerr(err, errlen, "invalid URI (unclosed [ in the host)");
		hend = rb;
		h++;
		if (rb + 1 < h - 1 + alen) {
			if (rb[1] != ':')
				return uerr(err, errlen, "invalid URI (expected redis://[IPv6]:port)");
			port = rb + 2;
		}
	} else {
		const char *colon = memchr(h, ':', alen);
		hend = colon ? colon : h + alen;
		port = colon ? colon + 1 : NULL;
	}
	size_t hl = (size_t)(hend - h);
	if (hl == 0 || hl >= sizeof(a->host))
		return uerr(err, errlen, "invalid URI (missing or too long host)");
	memcpy(a->host, h, hl);
	a->host[hl] = '\0';
	a->port = 6379;
	if (port) {
		const char *pend = uri + 8 + alen;
		char *e;
		if (port == pend)
			return uerr(err, errlen, "invalid URI (empty port)");
		long v = strtol(port, &e, 10);
		if (e != pend || v < 1 || v > 65535 || *port == '+' || *port == '-')
			return uerr(err, errlen, "invalid URI (port must be 1-65535)");
		a->port = (int)v;
	}
	if (slash && slash[1]) {
		char *e;
		long v = strtol(slash + 1, &e, 10);
		if (*e || v < 0 || v > 1023 || slash[1] == '+' || slash[1] == '-')
			return uerr(err, errlen, "invalid URI (database must be a number 0-1023)");
		a->db = (int)v;
	}
	return 0;
}

/* ---- scripts ------------------------------------------------------------ */

/* KEYS: seq counter, clock. ARGV: count. -> {first seq, first timestamp us} */
static const char reserve_lua[] = "local c = tonumber(ARGV[1])\n"
                                  "local n = redis.call('INCRBY', KEYS[1], c)\n"
                                  "local t = redis.call('TIME')\n"
                                  "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
                                  "local last = tonumber(redis.call('GET', KEYS[2]) or '0')\n"
                                  "if now <= last then now = last + 1 end\n"
                                  "redis.call('SET', KEYS[2], string.format('%.0f', now + c - 1))\n"
                                  "return {string.format('%.0f', n - c + 1), string.format('%.0f', now)}\n";

/* KEYS: released-up-to, held records (hash seq -> record), gap start, the
 * sequence counter. ARGV: channel, first seq (0: none, a tick), gap ms,
 * records... Releases in sequence order; a record behind the released point
 * (its gap was skipped) or beyond the counter (reserved before a Redis
 * restart, which starts both at 0 again) goes out at once. */
static const char publish_lua[] = "local function s(x) return string.format('%.0f', x) end\n"
                                  "local ch, first, gap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])\n"
                                  "local t = redis.call('TIME')\n"
                                  "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
                                  "local p = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
                                  "local top = tonumber(redis.call('GET', KEYS[4]) or '0')\n"
                                  "for i = 4, #ARGV do\n"
                                  "  local n = first + i - 4\n"
                                  "  if n <= p or n > top then\n"
                                  "    if #ARGV[i] > 0 then redis.call('PUBLISH', ch, ARGV[i]) end\n"
                                  "  else redis.call('HSET', KEYS[2], s(n), ARGV[i]) end\n"
                                  "end\n"
                                  "local moved = false\n"
                                  "local function drain()\n"
                                  "  while true do\n"
                                  "    local v = redis.call('HGET', KEYS[2], s(p + 1))\n"
                                  "    if not v then return end\n"
                                  "    redis.call('HDEL', KEYS[2], s(p + 1))\n"
                                  "    p = p + 1\n"
                                  "    moved = true\n"
                                  "    if #v > 0 then redis.call('PUBLISH', ch, v) end\n"
                                  "  end\n"
                                  "end\n"
                                  "drain()\n"
                                  "local held = redis.call('HLEN', KEYS[2])\n"
                                  "if held > 0 and not moved then\n"
                                  "  local since = tonumber(redis.call('GET', KEYS[3]) or '0')\n"
                                  "  if since == 0 then redis.call('SET', KEYS[3], s(now))\n"
                                  "  elseif now - since >= gap or held > 65536 then\n"
                                  "    local m = nil\n"
                                  "    for _, k in ipairs(redis.call('HKEYS', KEYS[2])) do\n"
                                  "      local x = tonumber(k)\n"
                                  "      if not m or x < m then m = x end\n"
                                  "    end\n"
                                  "    p = m - 1\n"
                                  "    drain()\n"
                                  "  end\n"
                                  "end\n"
                                  "held = redis.call('HLEN', KEYS[2])\n"
                                  "if held == 0 then redis.call('DEL', KEYS[3])\n"
                                  "elseif moved then redis.call('SET', KEYS[3], s(now)) end\n"
                                  "redis.call('SET', KEYS[1], s(p))\n"
                                  "return held\n";

/* KEYS: counter. ARGV: window ms. -> {hits, ms left}: a window opens at
 * the key's first hit (the local limiter's semantics). */
static const char count_lua[] = "local c = redis.call('INCR', KEYS[1])\n"
                                "local ttl = redis.call('PTTL', KEYS[1])\n"
                                "if c == 1 or ttl < 0 then\n"
                                "  redis.call('PEXPIRE', KEYS[1], ARGV[1])\n"
                                "  ttl = tonumber(ARGV[1])\n"
                                "end\n"
                                "return {c, ttl}\n";

/* ---- state -------------------------------------------------------------- */

enum req_kind { REQ_FIRE, REQ_RESERVE, REQ_COUNT, REQ_PING, REQ_TICK };

struct rbus_req {
	enum req_kind kind;
	size_t bytes; /* charged to inflight_bytes */
	int cancelled;
	void *ud;
	union {
		rbus_reserve_fn reserve;
		rbus_count_fn count;
	} fn;
};

static struct {
	int open;
	struct event_base *base;
	struct evdns_base *dns;
	struct evdns_getaddrinfo_request *dns_req;
	struct rbus_addr addr;
	char ip[sizeof(((struct rbus_addr *)0)->host)];
	char channel[64];
	char k_seq[48], k_clock[48], k_pub[48], k_pend[48], k_since[48], k_rl[48];
	redisAsyncContext *cmd, *sub;
	int cmd_up, sub_up;
	enum rbus_state state;
	struct event *tick_ev, *retry_ev, *reset_ev;
	unsigned backoff_ms;
	uint64_t attempt_ms;      /* when the current connect attempt began */
	uint64_t progress_ms;     /* last reply, or when the first in flight was sent */
	uint64_t last_ordered_ms; /* last rbus_publish_ordered */
	unsigned inflight;
	size_t inflight_bytes;
	int ping_out;
	rbus_deliver_fn deliver;
	void *ud;
	struct rbus_stats stats;
} B;

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

enum rbus_state rbus_state(void)
{
	return B.open ? B.state : RBUS_OFF;
}

const char *rbus_state_name(enum rbus_state s)
{
	return s == RBUS_UP ? "up" : s == RBUS_DEGRADED ? "degraded" : "off";
}

const struct rbus_stats *rbus_stats(void)
{
	return &B.stats;
}

static void set_state(enum rbus_state s)
{
	if (B.state == s)
		return;
	B.state = s;
	if (s == RBUS_UP)
		log_info(NULL, "bus connected", LF_STR("host", B.addr.host), LF_INT("port", B.addr.port));
	else
		log_warn(NULL, "bus degraded: delivering on this host only until Redis is back",
		         LF_STR("host", B.addr.host), LF_INT("port", B.addr.port));
}

static void schedule_reset(void)
{
	event_active(B.reset_ev, EV_TIMEOUT, 1);
}

/* ---- commands ------------------------------------------------------------ */

static void req_done(struct rbus_req *r)
{
	B.inflight--;
	B.inflight_bytes -= r->bytes;
	free(r);
}

static void reply_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
	(void)ac;
	redisReply *reply = reply_;
	struct rbus_req *r = priv;
	int ok = reply && reply->type != REDIS_REPLY_ERROR;
	if (reply)
		B.progress_ms = mono_ms();
	if (reply && reply->type == REDIS_REPLY_ERROR)
		log_warn(NULL, "bus command failed", LF_STR("error", reply->str));
	switch (r->kind) {
	case REQ_RESERVE: {
		uint64_t seq = 0, us = 0;
		ok = ok && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
		     reply->element[0]->type == REDIS_REPLY_STRING && reply->element[1]->type == REDIS_REPLY_STRING;
		if (ok) {
			seq = strtoull(reply->element[0]->str, NULL, 10);
			us = strtoull(reply->element[1]->str, NULL, 10);
			ok = seq > 0 && us > 0;
		}
		if (!r->cancelled)
			r->fn.reserve(r->ud, ok, seq, us);
		break;
	}
	case REQ_COUNT: {
		int64_t hits = 0, ttl = 0;
		ok = ok && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
		     reply->element[0]->type == REDIS_REPLY_INTEGER && reply->element[1]->type == REDIS_REPLY_INTEGER;
		if (ok) {
			hits = reply->element[0]->integer;
			ttl = reply->element[1]->integer;
		}
		if (!r->cancelled)
			r->fn.count(r->ud, ok, hits, ttl);
		break;
	}
	case REQ_PING: B.ping_out = 0; break;
	case REQ_FIRE:
	case REQ_TICK: break;
	}
	req_done(r);
}

/* Send argv on the command connection. The request is freed by its reply
 * callback (also on failure). -1 when not up or over the bounds. */
static int send_cmd(struct rbus_req *r, int argc, const char **argv, const size_t *lens)
{
	size_t bytes = 0;
	for (int i = 0; i < argc; i++)
		bytes += lens[i];
	if (B.state != RBUS_UP || !B.cmd || B.inflight >= RBUS_MAX_INFLIGHT ||
	    B.inflight_bytes + bytes > RBUS_MAX_INFLIGHT_BYTES) {
		B.stats.dropped++;
		free(r);
		return -1;
	}
	r->bytes = bytes;
	if (redisAsyncCommandArgv(B.cmd, reply_cb, r, argc, argv, lens) != REDIS_OK) {
		B.stats.dropped++;
		free(r);
		return -1;
	}
	if (B.inflight++ == 0)
		B.progress_ms = mono_ms();
	B.inflight_bytes += bytes;
	return 0;
}

static struct rbus_req *req_new(enum req_kind kind)
{
	struct rbus_req *r = calloc(1, sizeof(*r));
	if (r)
		r->kind = kind;
	else
		B.stats.dropped++;
	return r;
}

int rbus_publish(const void *msg, size_t len)
{
	if (B.state != RBUS_UP) {
		B.stats.dropped++;
		return -1;
	}
	struct rbus_req *r = req_new(REQ_FIRE);
	if (!r)
		return -1;
	const char *argv[3] = {"PUBLISH", B.channel, msg};
	size_t lens[3] = {7, strlen(B.channel), len};
	if (send_cmd(r, 3, argv, lens) < 0)
		return -1;
	B.stats.published++;
	return 0;
}

int rbus_reserve(unsigned count, rbus_reserve_fn done, void *ud)
{
	if (B.state != RBUS_UP || count == 0 || count > 1024)
		return -1;
	struct rbus_req *r = req_new(REQ_RESERVE);
	if (!r)
		return -1;
	r->fn.reserve = done;
	r->ud = ud;
	char n[16];
	snprintf(n, sizeof(n), "%u", count);
	const char *argv[6] = {"EVAL", reserve_lua, "2", B.k_seq, B.k_clock, n};
	size_t lens[6];
	for (int i = 0; i < 6; i++)
		lens[i] = strlen(argv[i]);
	return send_cmd(r, 6, argv, lens);
}

void rbus_stamp(uint64_t us, unsigned char id[12], int64_t *created_ms)
{
	uint32_t sec = (uint32_t)(us / 1000000u);
	for (int k = 0; k < 4; k++)
		id[k] = (unsigned char)(sec >> (24 - 8 * k));
	for (int k = 0; k < 8; k++)
		id[4 + k] = (unsigned char)(us >> (56 - 8 * k));
	*created_ms = (int64_t)(us / 1000u);
}

/* EVAL publish_lua with first seq and records (count 0: a tick). */
static int ordered(enum req_kind kind, uint64_t first_seq, const struct iovec *recs, unsigned count)
{
	if (B.state != RBUS_UP || count > 1024) {
		B.stats.dropped++;
		return -1;
	}
	const char *argv[10 + 1024];
	size_t lens[10 + 1024];
	char first[24], gap[16];
	snprintf(first, sizeof(first), "%" PRIu64, first_seq);
	snprintf(gap, sizeof(gap), "%d", RBUS_GAP_MS);
	const char *head[10] = {"EVAL", publish_lua, "4", B.k_pub, B.k_pend, B.k_since, B.k_seq, B.channel, first, gap};
	for (int i = 0; i < 10; i++) {
		argv[i] = head[i];
		lens[i] = strlen(head[i]);
	}
	for (unsigned i = 0; i < count; i++) {
		argv[10 + i] = recs[i].iov_len ? recs[i].iov_base : "";
		lens[10 + i] = recs[i].iov_len;
	}
	struct rbus_req *r = req_new(kind);
	if (!r || send_cmd(r, 10 + (int)count, argv, lens) < 0)
		return -1;
	return 0;
}

int rbus_publish_ordered(uint64_t first_seq, const struct iovec *recs, unsigned count)
{
	if (ordered(REQ_FIRE, first_seq, recs, count) < 0)
		return -1;
	B.stats.published += count;
	B.last_ordered_ms = mono_ms();
	return 0;
}

struct rbus_req *rbus_count(const char *key, size_t keylen, uint64_t window_ms, rbus_count_fn done, void *ud)
{
	if (B.state != RBUS_UP)
		return NULL;
	struct rbus_req *r = req_new(REQ_COUNT);
	if (!r)
		return NULL;
	r->fn.count = done;
	r->ud = ud;
	char k[320], w[24];
	size_t pl = strlen(B.k_rl);
	if (keylen > sizeof(k) - pl)
		keylen = sizeof(k) - pl;
	memcpy(k, B.k_rl, pl);
	memcpy(k + pl, key, keylen);
	snprintf(w, sizeof(w), "%" PRIu64, window_ms ? window_ms : 1);
	const char *argv[5] = {"EVAL", count_lua, "1", k, w};
	size_t lens[5] = {4, strlen(count_lua), 1, pl + keylen, strlen(w)};
	return send_cmd(r, 5, argv, lens) == 0 ? r : NULL;
}

void rbus_cancel(struct rbus_req *req)
{
	if (req)
		req->cancelled = 1;
}

/* ---- connections ---------------------------------------------------------- */

static void check_up(void)
{
	if (B.cmd && B.sub && B.cmd_up && B.sub_up) {
		B.backoff_ms = 0;
		set_state(RBUS_UP);
	}
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
	(void)status;
	/* hiredis frees ac after this returns: forget it, reset the rest later. */
	if (ac == B.cmd) {
		B.cmd = NULL;
		B.cmd_up = 0;
	} else if (ac == B.sub) {
		B.sub = NULL;
		B.sub_up = 0;
	} else {
		return; /* freed by reset_cb or rbus_close: already forgotten */
	}
	if (B.open)
		schedule_reset();
}

static void on_connect(const redisAsyncContext *ac, int status)
{
	if (status != REDIS_OK) {
		on_disconnect(ac, status); /* hiredis frees ac after a failed connect */
		return;
	}
	if (ac == B.cmd) {
		B.cmd_up = 1;
		check_up();
	}
}

static void sub_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
	(void)ac;
	(void)priv;
	redisReply *reply = reply_;
	if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
	    reply->element[0]->type != REDIS_REPLY_STRING)
		return;
	const char *kind = reply->element[0]->str;
	if (strcmp(kind, "subscribe") == 0) {
		B.sub_up = 1;
		check_up();
	} else if (strcmp(kind, "message") == 0 && reply->element[2]->type == REDIS_REPLY_STRING) {
		B.stats.received++;
		B.deliver((const unsigned char *)reply->element[2]->str, reply->element[2]->len, B.ud);
	}
}

static redisAsyncContext *connect_one(void)
{
	redisAsyncContext *ac = redisAsyncConnect(B.ip, B.addr.port);
	if (!ac)
		return NULL;
	if (ac->err) {
		log_warn(NULL, "bus connect failed", LF_STR("error", ac->errstr));
		redisAsyncFree(ac);
		return NULL;
	}
	if (redisLibeventAttach(ac, B.base) != REDIS_OK) {
		redisAsyncFree(ac);
		return NULL;
	}
	redisAsyncSetConnectCallback(ac, on_connect);
	redisAsyncSetDisconnectCallback(ac, on_disconnect);
	return ac;
}

static void start_connect(void)
{
	B.attempt_ms = mono_ms();
	B.cmd = connect_one();
	B.sub = connect_one();
	if (!B.cmd || !B.sub) {
		schedule_reset();
		return;
	}
	if (B.addr.db) {
		char db[16];
		snprintf(db, sizeof(db), "%d", B.addr.db);
		const char *argv[2] = {"SELECT", db};
		size_t lens[2] = {6, strlen(db)};
		/* Before any other command: queued first on the connection. */
		struct rbus_req *r = req_new(REQ_FIRE);
		if (!r || redisAsyncCommandArgv(B.cmd, reply_cb, r, 2, argv, lens) != REDIS_OK) {
			free(r);
			schedule_reset();
			return;
		}
		B.inflight++;
		B.progress_ms = mono_ms();
	}
	const char *argv[2] = {"SUBSCRIBE", B.channel};
	size_t lens[2] = {9, strlen(B.channel)};
	if (redisAsyncCommandArgv(B.sub, sub_cb, NULL, 2, argv, lens) != REDIS_OK)
		schedule_reset();
}

static void dns_cb(int result, struct evutil_addrinfo *res, void *arg)
{
	(void)arg;
	B.dns_req = NULL;
	if (result == EVUTIL_EAI_CANCEL) {
		if (res)
			evutil_freeaddrinfo(res);
		return;
	}
	int ok = 0;
	if (result == 0 && res) {
		const void *a = res->ai_family == AF_INET6
		                    ? (const void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr
		                    : (const void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr;
		ok = inet_ntop(res->ai_family, a, B.ip, sizeof(B.ip)) != NULL;
	}
	if (res)
		evutil_freeaddrinfo(res);
	if (!ok) {
		log_warn(NULL, "bus host not resolved", LF_STR("host", B.addr.host),
		         LF_STR("error", evutil_gai_strerror(result)));
		schedule_reset();
		return;
	}
	start_connect();
}

/* Drop both connections (their pending callbacks run now, with failure),
 * go degraded and try again after the backoff. */
static void reset_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	redisAsyncContext *c = B.cmd, *s = B.sub;
	B.cmd = B.sub = NULL;
	B.cmd_up = B.sub_up = 0;
	if (c)
		redisAsyncFree(c);
	if (s)
		redisAsyncFree(s);
	B.ping_out = 0;
	set_state(RBUS_DEGRADED);
	if (!B.open || evtimer_pending(B.retry_ev, NULL) || B.dns_req)
		return;
	B.backoff_ms = B.backoff_ms ? B.backoff_ms * 2 : RBUS_BACKOFF_MIN_MS;
	if (B.backoff_ms > RBUS_BACKOFF_MAX_MS)
		B.backoff_ms = RBUS_BACKOFF_MAX_MS;
	uint32_t rnd = 0;
	if (getrandom(&rnd, sizeof(rnd), GRND_NONBLOCK) != sizeof(rnd))
		rnd = (uint32_t)mono_ms();
	unsigned ms = B.backoff_ms / 2 + rnd % (B.backoff_ms / 2 + 1);
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
	evtimer_add(B.retry_ev, &tv);
	B.stats.reconnects++;
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	if (B.cmd || B.sub || B.dns_req)
		return;
	struct in6_addr a6;
	struct in_addr a4;
	if (inet_pton(AF_INET, B.addr.host, &a4) == 1 || inet_pton(AF_INET6, B.addr.host, &a6) == 1) {
		snprintf(B.ip, sizeof(B.ip), "%s", B.addr.host);
		start_connect();
		return;
	}
	/* A name: resolved without blocking the loop, on every attempt. */
	struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	if (!B.dns && !(B.dns = evdns_base_new(B.base, EVDNS_BASE_INITIALIZE_NAMESERVERS))) {
		schedule_reset();
		return;
	}
	B.dns_req = evdns_getaddrinfo(B.dns, B.addr.host, NULL, &hints, dns_cb, NULL);
	/* NULL: answered (dns_cb ran already) or failed (dns_cb ran with the error). */
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	uint64_t now = mono_ms();
	if (B.cmd || B.sub) {
		int stalled = B.inflight && now - B.progress_ms > RBUS_STALL_MS;
		int slow_connect = B.state != RBUS_UP && now - B.attempt_ms > RBUS_STALL_MS;
		if (stalled || slow_connect) {
			log_warn(NULL, "bus not answering: reconnecting", LF_INT("in_flight", (int64_t)B.inflight));
			schedule_reset();
			return;
		}
	}
	if (B.state != RBUS_UP)
		return;
	if (!B.ping_out) {
		struct rbus_req *r = req_new(REQ_PING);
		const char *argv[1] = {"PING"};
		size_t lens[1] = {4};
		if (r && send_cmd(r, 1, argv, lens) == 0)
			B.ping_out = 1;
	}
	/* While this worker has records held in Redis (a gap before them),
	 * something has to call the script for the gap to time out. */
	if (B.last_ordered_ms && now - B.last_ordered_ms < 3 * RBUS_GAP_MS)
		ordered(REQ_TICK, 0, NULL, 0);
}

int rbus_open(struct event_base *base, const char *uri, rbus_deliver_fn deliver, void *ud)
{
	char why[160];
	if (B.open)
		return -1;
	memset(&B, 0, sizeof(B));
	if (rbus_parse_uri(uri, &B.addr, why, sizeof(why)) < 0) {
		log_error(NULL, "bus: bad URI", LF_STR("error", why));
		return -1;
	}
	B.base = base;
	B.deliver = deliver;
	B.ud = ud;
	B.state = RBUS_DEGRADED;
	/* Pub/sub ignores SELECT: the channel carries the db number. */
	snprintf(B.channel, sizeof(B.channel), "resil:%d:bus", B.addr.db);
	snprintf(B.k_seq, sizeof(B.k_seq), "resil:chat:seq");
	snprintf(B.k_clock, sizeof(B.k_clock), "resil:chat:clock");
	snprintf(B.k_pub, sizeof(B.k_pub), "resil:chat:released");
	snprintf(B.k_pend, sizeof(B.k_pend), "resil:chat:held");
	snprintf(B.k_since, sizeof(B.k_since), "resil:chat:gap");
	snprintf(B.k_rl, sizeof(B.k_rl), "resil:rl:");
	B.tick_ev = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
	B.retry_ev = evtimer_new(base, retry_cb, NULL);
	B.reset_ev = event_new(base, -1, 0, reset_cb, NULL);
	struct timeval tv = {.tv_sec = RBUS_TICK_MS / 1000, .tv_usec = (RBUS_TICK_MS % 1000) * 1000};
	if (!B.tick_ev || !B.retry_ev || !B.reset_ev || event_add(B.tick_ev, &tv) < 0) {
		B.open = 1;
		rbus_close();
		return -1;
	}
	B.open = 1;
	retry_cb(-1, 0, NULL);
	return 0;
}

void rbus_close(void)
{
	if (!B.open)
		return;
	B.open = 0; /* the resets below schedule nothing */
	B.state = RBUS_DEGRADED;
	if (B.dns_req)
		evdns_getaddrinfo_cancel(B.dns_req); /* runs dns_cb with EVUTIL_EAI_CANCEL */
	B.dns_req = NULL;
	redisAsyncContext *c = B.cmd, *s = B.sub;
	B.cmd = B.sub = NULL;
	if (c)
		redisAsyncFree(c);
	if (s)
		redisAsyncFree(s);
	if (B.dns)
		evdns_base_free(B.dns, 1);
	if (B.tick_ev)
		event_free(B.tick_ev);
	if (B.retry_ev)
		event_free(B.retry_ev);
	if (B.reset_ev)
		event_free(B.reset_ev);
	memset(&B, 0, sizeof(B));
}
