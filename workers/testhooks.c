/* testhooks.c - routes that only the test suite uses: echo a parsed body,
 * answer slowly, crash, hang. They are mounted only when RESIL_TEST_HOOKS=1
 * and RESIL_ENV is not production; in production they cannot be enabled
 * (routes_register refuses and logs). */
#include "autoconfig.h"

#include "api.h"
#include "handlers.h"
#include "json.h"
#include "log.h"
#include "routes.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <yajl/yajl_gen.h>

static int echo(struct http_request *req)
{
	yajl_gen g = app_gen(req);
	if (!g)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	const struct json_value *b = app_body(req);
	const char *pad = NULL;
	const struct json_value *q = app_query(req);
	if (q)
		pad = json_get_str(q, "pad", NULL);
	yajl_gen_map_open(g);
	yajl_gen_string(g, (const unsigned char *)"body", 4);
	if (b)
		json_gen_value(g, b);
	else
		yajl_gen_null(g);
	yajl_gen_string(g, (const unsigned char *)"query", 5);
	if (q)
		json_gen_value(g, q);
	else
		yajl_gen_null(g);
	yajl_gen_string(g, (const unsigned char *)"bodyBytes", 9);
	yajl_gen_integer(g, (long long)req->body_len);
	if (pad) {
		long n = strtol(pad, NULL, 10);
		if (n > 0 && n <= 1 << 20) {
			char *s = http_alloc(req, (size_t)n);
			if (s) {
				memset(s, 'x', (size_t)n);
				yajl_gen_string(g, (const unsigned char *)"pad", 3);
				yajl_gen_string(g, (const unsigned char *)s, (size_t)n);
			}
		}
	}
	yajl_gen_map_close(g);
	app_send_gen(req, 200);
	return APP_DONE;
}

struct slow {
	struct http_request *req;
	struct event *ev;
};

static void slow_done(evutil_socket_t fd, short what, void *arg)
{
	struct slow *s = arg;
	(void)fd;
	(void)what;
	event_free(s->ev);
	struct http_request *req = s->req;
	free(s);
	evbuffer_add(http_body(req), "{\"success\":true,\"data\":{\"slow\":true}}", 37);
	http_send(req);
}

static int slow(struct http_request *req)
{
	const struct json_value *q = app_query(req);
	const char *ms_s = q ? json_get_str(q, "ms", NULL) : NULL;
	long ms = ms_s ? strtol(ms_s, NULL, 10) : 1000;
	if (ms < 0 || ms > 60000)
		ms = 1000;
	struct slow *s = calloc(1, sizeof(*s));
	if (!s)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	s->req = req;
	s->ev = evtimer_new(worker_current()->base, slow_done, s);
	if (!s->ev) {
		free(s);
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	}
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
	evtimer_add(s->ev, &tv);
	return APP_DONE;
}

/* GET /__test/steps?n=N&ms=M: a route job of N store round trips, M ms
 * apart, that logs how many it ran: a request abandoned by its client or
 * its deadline stops between store calls. */
struct steps_job {
	struct api_job base;
	long n, ms, ran;
};

static void steps_work(struct api_job *j)
{
	struct steps_job *sj = (struct steps_job *)j;
	for (long i = 0; i < sj->n; i++) {
		struct store_op op;
		store_op_init(&op, STORE_OP_PING, 0);
		enum store_err err = api_exec(j, &op);
		store_op_clear(&op);
		if (err != STORE_OK)
			break;
		sj->ran++;
		struct timespec ts = {sj->ms / 1000, (sj->ms % 1000) * 1000000L};
		nanosleep(&ts, NULL);
	}
	log_info(NULL, "test hook: steps job finished", LF_INT("steps", sj->ran), LF_INT("of", sj->n));
}

static void steps_done(struct api_job *j, struct http_request *req)
{
	yajl_gen g = app_gen(req);
	if (!g) {
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
		return;
	}
	yajl_gen_integer(g, ((struct steps_job *)j)->ran);
	app_send_gen(req, 200);
}

static int steps(struct http_request *req)
{
	const struct json_value *q = app_query(req);
	const char *n_s = q ? json_get_str(q, "n", NULL) : NULL;
	const char *ms_s = q ? json_get_str(q, "ms", NULL) : NULL;
	struct steps_job *sj = api_job_new(req, sizeof(*sj), steps_work, steps_done);
	if (!sj)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	sj->n = n_s ? strtol(n_s, NULL, 10) : 10;
	sj->ms = ms_s ? strtol(ms_s, NULL, 10) : 100;
	if (sj->n < 1 || sj->n > 1000 || sj->ms < 0 || sj->ms > 5000)
		return api_job_drop(&sj->base);
	api_job_reads(&sj->base);
	return api_job_submit(&sj->base);
}

static int crash(struct http_request *req)
{
	(void)req;
	log_warn(NULL, "test hook: crashing on purpose", LF_STR("hook", "crash"));
	abort();
}

static int hang(struct http_request *req)
{
	(void)req;
	log_warn(NULL, "test hook: hanging on purpose", LF_STR("hook", "hang"));
	for (;;)
		pause();
	return APP_DONE;
}

int testhooks_routes(struct app *app, const struct resil_config *cfg)
{
	const char *on = getenv("RESIL_TEST_HOOKS");
	if (!on || strcmp(on, "1") != 0)
		return 0;
	if (cfg->env == CONFIG_ENV_PRODUCTION) {
		log_warn(NULL, "RESIL_TEST_HOOKS ignored: test hooks cannot be enabled in production",
		         LF_STR("env", "production"));
		return 0;
	}
	int rc = 0;
	rc |= app_route(app, HTTP_M_GET | HTTP_M_POST | HTTP_M_PUT | HTTP_M_PATCH | HTTP_M_DELETE, "/__test/echo",
	                APP_CHAIN_(echo));
	/* The echo stands for a route that reads bodies up to the configured
	 * limit (the body, memory and drain tests use it), not for an
	 * unauthenticated one with the small public limit. */
	rc |= app_body_limit(app, HTTP_M_GET | HTTP_M_POST | HTTP_M_PUT | HTTP_M_PATCH | HTTP_M_DELETE, "/__test/echo",
	                     cfg->body_limit);
	rc |= app_get(app, "/__test/slow", slow);
	rc |= app_get(app, "/__test/crash", crash);
	rc |= app_get(app, "/__test/steps", steps);
	rc |= app_get(app, "/__test/hang", hang);
	return rc;
}
