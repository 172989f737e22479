/* health.c - GET /health, /health/live, /health/ready (SPEC section 6).
 * Not rate limited, no auth. The aggregate view comes from the
 * scoreboard when a supervisor runs this worker. */
#include "autoconfig.h"

#include "api.h"
#include "handlers.h"
#include "routes.h"
#include "scoreboard.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <event2/buffer.h>
#include <yajl/yajl_gen.h>

#define GS(g, s) yajl_gen_string(g, (const unsigned char *)(s), strlen(s))

static void iso_now(char *out, size_t len)
{
	struct timeval tv;
	struct tm tm;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	size_t n = strftime(out, len, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out + n, len - n, ".%03dZ", (int)(tv.tv_usec / 1000));
}

static int health(struct http_request *req)
{
	struct worker *w = worker_current();
	yajl_gen g = yajl_gen_alloc(NULL);
	if (!g)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	char ts[40];
	iso_now(ts, sizeof(ts));
	struct store *st = api_store();
	int db_ok = st && store_db_state(st);
	int healthy = w->ready && !w->draining && db_ok;
	int total = 1, ready = healthy;
	if (w->sb) {
		/* Aggregate over every worker of this resild. */
		total = atomic_load(&w->sb->hdr.workers_target);
		ready = sb_count_ready(w->sb);
		if (ready > total)
			ready = total; /* old and new generation both up mid-reload */
	}
	yajl_gen_map_open(g);
	GS(g, "status");
	GS(g, healthy ? "healthy" : "degraded");
	GS(g, "uptime");
	yajl_gen_integer(g, (long long)(time(NULL) - w->started));
	GS(g, "timestamp");
	GS(g, ts);
	GS(g, "version");
	GS(g, PACKAGE_VERSION);
	GS(g, "checks");
	yajl_gen_map_open(g);
	GS(g, "database");
	GS(g, db_ok ? "connected" : "disconnected");
	GS(g, "workers");
	yajl_gen_map_open(g);
	GS(g, "total");
	yajl_gen_integer(g, total);
	GS(g, "ready");
	yajl_gen_integer(g, ready);
	yajl_gen_map_close(g);
	GS(g, "circuits");
	yajl_gen_map_open(g);
	if (st) {
		static const char *names[] = {"closed", "open", "half-open"};
		int bs = store_breaker_state(st);
		GS(g, store_backend_name(st));
		GS(g, names[bs >= 0 && bs <= 2 ? bs : 0]);
	}
	yajl_gen_map_close(g);
	yajl_gen_map_close(g);
	yajl_gen_map_close(g);
	const unsigned char *buf;
	size_t len;
	yajl_gen_get_buf(g, &buf, &len);
	evbuffer_add(http_body(req), buf, len);
	yajl_gen_free(g);
	http_add_header(req, "Cache-Control", "no-store");
	http_set_status(req, healthy ? 200 : 503);
	http_send(req);
	return APP_DONE;
}

static int live(struct http_request *req)
{
	evbuffer_add(http_body(req), "{\"status\":\"ok\"}", 15);
	http_add_header(req, "Cache-Control", "no-store");
	http_send(req);
	return APP_DONE;
}

static int ready(struct http_request *req)
{
	struct worker *w = worker_current();
	struct store *st = api_store();
	int ok = w->ready && !w->draining && st && store_db_state(st);
	if (ok)
		evbuffer_add(http_body(req), "{\"status\":\"ready\"}", 18);
	else
		evbuffer_add(http_body(req), "{\"status\":\"not ready\"}", 22);
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
