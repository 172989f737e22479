/* health.c - GET /health, /health/live, /health/ready (SPEC section 6).
 * Not rate limited, no auth. The aggregate view comes from the
 * scoreboard when a supervisor runs this worker: worker counts, and the
 * circuits merged over every ready worker (each worker publishes its own
 * breakers in its scoreboard entry), so every worker answers the same as
 * `resilctl health`. The two per-process probes say which worker answered. */
#include "autoconfig.h"

#include "api.h"
#include "handlers.h"
#include "rbus.h"
#include "routes.h"
#include "scoreboard.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

/* "2026-11-25T10:42:15.123Z": the seconds part is formatted once a second. */
static size_t iso_now(char *out)
{
	static time_t cached_sec = -1;
	static char cached[24];
	struct timeval tv;
	gettimeofday(&tv, NULL);
	if (tv.tv_sec != cached_sec) {
		struct tm tm;
		gmtime_r(&tv.tv_sec, &tm);
		strftime(cached, sizeof(cached), "%Y-%m-%dT%H:%M:%S", &tm);
		cached_sec = tv.tv_sec;
	}
	memcpy(out, cached, 19);
	int ms = (int)(tv.tv_usec / 1000);
	out[19] = '.';
	out[20] = (char)('0' + ms / 100);
	out[21] = (char)('0' + ms / 10 % 10);
	out[22] = (char)('0' + ms % 10);
	out[23] = 'Z';
	return 24;
}

/* Circuits reported under checks.circuits besides the store's. */
#define MAX_EXTRA_CIRCUITS 4
static struct {
	const char *name;
	int (*state)(void);
} extra_circuits[MAX_EXTRA_CIRCUITS];
static int nextra;

void health_add_circuit(const char *name, int (*state)(void))
{
	if (nextra < MAX_EXTRA_CIRCUITS) {
		extra_circuits[nextra].name = name;
		extra_circuits[nextra].state = state;
		nextra++;
	}
}

/* The health body is small and fixed in shape: it is written by hand
 * rather than through yajl (it is the hottest route of all). Every string
 * in it is ours and needs no escaping. */
struct hbuf {
	char b[1536];
	size_t n;
};

static void hput(struct hbuf *h, const char *s, size_t n)
{
	if (h->n + n < sizeof(h->b)) {
		memcpy(h->b + h->n, s, n);
		h->n += n;
	}
}
#define HLIT(h, lit) hput(h, lit, sizeof(lit) - 1)
static void hstr(struct hbuf *h, const char *s)
{
	hput(h, s, strlen(s));
}
static void hint(struct hbuf *h, long long v)
{
	char tmp[24];
	int i = sizeof(tmp);
	int neg = v < 0;
	unsigned long long u = neg ? 0ull - (unsigned long long)v : (unsigned long long)v;
	do {
		tmp[--i] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (neg)
		tmp[--i] = '-';
	hput(h, tmp + i, sizeof(tmp) - (size_t)i);
}

static const char *circuit_name(int st)
{
	return st == 1 ? "open" : st == 2 ? "half-open" : "closed";
}

void health_publish_circuits(struct sb_entry *e)
{
	struct store *st = api_store();
	if (st)
		sb_set_circuit(e, store_backend_name(st), store_breaker_state(st));
	for (int i = 0; i < nextra; i++)
		sb_set_circuit(e, extra_circuits[i].name, extra_circuits[i].state());
}

/* This process's breakers only (no supervisor, or no ready worker yet). */
static int local_circuits(struct sb_circuit_sum *out, int max)
{
	struct store *st = api_store();
	int n = 0;
	for (int i = -1; i < nextra && n < max; i++) {
		const char *name = i < 0 ? (st ? store_backend_name(st) : NULL) : extra_circuits[i].name;
		if (!name)
			continue;
		int state = i < 0 ? store_breaker_state(st) : extra_circuits[i].state();
		if (state < 0 || state > 2)
			state = 0;
		memset(&out[n], 0, sizeof(out[n]));
		snprintf(out[n].name, sizeof(out[n].name), "%s", name);
		out[n].worst = state;
		out[n].count[state] = 1;
		n++;
	}
	return n;
}

static int health(struct http_request *req)
{
	struct worker *w = worker_current();
	struct store *st = api_store();
	int db_ok = st && store_db_state(st);
	/* /health describes the service, not this process: a worker that is
	 * draining (reload, scale down) still answers while the database is
	 * up and workers serve; /health/ready is the per-process readiness
	 * probe and turns 503 while draining. */
	int serving = w->ready && !w->draining;
	int total = 1, ready = serving;
	struct sb_circuit_sum sums[SB_MAX_CIRCUIT_NAMES];
	int nsums = 0;
	if (w->sb) {
		/* Aggregate over every worker of this resild. An errored or
		 * restarting slot has no ready process: ready < total. */
		total = atomic_load(&w->sb->hdr.workers_target);
		ready = sb_count_ready(w->sb);
		if (ready > total)
			ready = total; /* old and new generation both up mid-reload */
		if (w->sbe)
			health_publish_circuits(w->sbe); /* ours fresher than the last heartbeat */
		nsums = sb_circuits_merge(w->sb, sums, SB_MAX_CIRCUIT_NAMES);
	}
	if (nsums == 0)
		nsums = local_circuits(sums, SB_MAX_CIRCUIT_NAMES);
	/* Same verdict as `resilctl health`: healthy only when the database is
	 * connected and every worker slot is ready. The HTTP status is 503
	 * only when the service cannot answer (database down, nothing ready),
	 * so a load balancer keeps an instance that lost one worker of four. */
	/* The cross-host bus (when configured) as this worker sees it: a host
	 * without Redis still serves and delivers locally, so degraded only. */
	enum rbus_state bus = rbus_state();
	int healthy = db_ok && ready >= total && bus != RBUS_DEGRADED;
	int answers = db_ok && (ready > 0 || serving);
	struct hbuf h;
	h.n = 0;
	char ts[24];
	HLIT(&h, "{\"status\":\"");
	hstr(&h, healthy ? "healthy" : "degraded");
	HLIT(&h, "\",\"uptime\":");
	hint(&h, (long long)(time(NULL) - w->started));
	HLIT(&h, ",\"timestamp\":\"");
	hput(&h, ts, iso_now(ts));
	HLIT(&h, "\",\"version\":\"" PACKAGE_VERSION "\",\"checks\":{\"database\":\"");
	hstr(&h, db_ok ? "connected" : "disconnected");
	if (bus != RBUS_OFF) {
		HLIT(&h, "\",\"bus\":\"");
		hstr(&h, rbus_state_name(bus));
	}
	HLIT(&h, "\",\"workers\":{\"total\":");
	hint(&h, total);
	HLIT(&h, ",\"ready\":");
	hint(&h, ready);
	/* circuits: the worst state per circuit (SPEC section 6 shape);
	 * circuitsDetail: how many ready workers see each state. */
	HLIT(&h, "},\"circuits\":{");
	for (int i = 0; i < nsums; i++) {
		if (i)
			HLIT(&h, ",");
		HLIT(&h, "\"");
		hstr(&h, sums[i].name);
		HLIT(&h, "\":\"");
		hstr(&h, circuit_name(sums[i].worst));
		HLIT(&h, "\"");
	}
	HLIT(&h, "},\"circuitsDetail\":{");
	for (int i = 0; i < nsums; i++) {
		if (i)
			HLIT(&h, ",");
		HLIT(&h, "\"");
		hstr(&h, sums[i].name);
		HLIT(&h, "\":{\"closed\":");
		hint(&h, sums[i].count[0]);
		HLIT(&h, ",\"open\":");
		hint(&h, sums[i].count[1]);
		HLIT(&h, ",\"halfOpen\":");
		hint(&h, sums[i].count[2]);
		HLIT(&h, "}");
	}
	HLIT(&h, "}}}");
	evbuffer_add(http_body(req), h.b, h.n);
	http_add_header(req, "Cache-Control", "no-store");
	http_set_status(req, answers ? 200 : 503);
	http_send(req);
	return APP_DONE;
}

/* The per-process probes name the worker that answered ("worker": its
 * 0-based id, as in its log lines, its process title and resilctl). */
static void probe_body(struct http_request *req, const char *status)
{
	struct hbuf h;
	h.n = 0;
	HLIT(&h, "{\"status\":\"");
	hstr(&h, status);
	HLIT(&h, "\",\"worker\":");
	hint(&h, worker_current()->id);
	HLIT(&h, "}");
	evbuffer_add(http_body(req), h.b, h.n);
}

static int live(struct http_request *req)
{
	probe_body(req, "ok");
	http_add_header(req, "Cache-Control", "no-store");
	http_send(req);
	return APP_DONE;
}

static int ready(struct http_request *req)
{
	struct worker *w = worker_current();
	struct store *st = api_store();
	int ok = w->ready && !w->draining && st && store_db_state(st);
	probe_body(req, ok ? "ready" : "not ready");
	http_add_header(req, "Cache-Control", "no-store");
	http_set_status(req, ok ? 200 : 503);
	http_send(req);
	return APP_DONE;
}

int health_routes(struct app *app)
{
	int rc = 0;
	rc |= app_get(app, "/health", health);
	rc |= app_get(app, "/health/live", live);
	rc |= app_get(app, "/health/ready", ready);
	return rc;
}
