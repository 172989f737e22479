/* metrics.h - the process's metrics and their Prometheus text rendering
 * (GET /metrics, SPEC section 10).
 *
 * Every count lives in the shared scoreboard (struct sb_metrics, one block
 * per process, see scoreboard.h): a process writes only its own block, the
 * supervisor folds a gone process's counters into the retired totals, and
 * any worker renders retired + every block. So the numbers are the
 * service's, not the answering worker's, and survive restarts and reloads.
 * Without a supervisor (tests, in-process) the process counts into a
 * private block and renders that.
 *
 * Recording is cheap: an array index and a relaxed load + store (one
 * writer: the loop thread), or an atomic add for the few counters pool
 * threads share (store operations, breaker transitions).
 *
 * Adding a counter or gauge: one enum value below and one row in the
 * table of metrics.c (name, labels, help); then metrics_count() or
 * metrics_gauge_set() where it happens. Rows of one name are adjacent.
 */
#ifndef RESIL_METRICS_H
#define RESIL_METRICS_H

#include "scoreboard.h"

#include <stddef.h>
#include <stdint.h>

struct app;
struct evbuffer;
struct http_request;

/* Plain counters (one writer thread each). */
enum metrics_counter {
	MC_WS_MESSAGES_IN = 0, /* WebSocket text messages received */
	MC_WS_DELIVERIES,      /* WebSocket frames written out to clients */
	MC_WS_SLOW_CLOSES,     /* sockets closed (1013) for not reading */
	MC_RATELIMIT_API,      /* 429 from the /api/ rate limit */
	MC_RATELIMIT_LOGIN,    /* 429 from the login throttle */
	MC_JOBS_REJECTED,      /* jobs refused: queue full */
	MC_COUNT
};

/* Per-process gauges, aggregated over live processes as the table says. */
enum metrics_gauge {
	MG_JOBS_QUEUED = 0, /* jobs waiting for a pool thread (sampled each second) */
	MG_BUS_STATE,       /* enum rbus_state: 0 off, 1 up, 2 degraded (sampled each second) */
	MG_COUNT
};

_Static_assert(MC_COUNT <= SB_METRIC_COUNTERS, "grow SB_METRIC_COUNTERS");
_Static_assert(MG_COUNT <= SB_METRIC_GAUGES, "grow SB_METRIC_GAUGES");

/* Count into entry idx of sb from now on (sb NULL: a private block). */
void metrics_attach(struct scoreboard *sb, int idx);
/* Back to the private block; frees the route map. */
void metrics_detach(void);
/* Give every route template of app its shared index (after the routes are
 * registered, before serving). 0, or -1 on allocation failure. */
int metrics_bind_routes(const struct app *app);

/* One answered request: route, method, status class, duration (loop
 * thread; http_server_opts.on_complete calls it). */
void metrics_request_done(struct http_request *req);
void metrics_count(enum metrics_counter c);
void metrics_gauge_set(enum metrics_gauge g, int64_t v);
/* One store operation (any thread): backend index (metrics_backend_index),
 * enum store_kind, enum store_err, duration. */
void metrics_store_op(int backend, int kind, int result, uint64_t ns);
/* "sqlite" 0, "mongodb" 1, others -1 (not counted). */
int metrics_backend_index(const char *name);
/* A circuit breaker entered state to (0 closed, 1 open, 2 half-open); any thread. */
void metrics_circuit_transition(const char *name, int to);

/* Histogram slot of a duration: 0..SB_METRIC_BUCKETS (the last: +Inf). */
int metrics_bucket(uint64_t ns);
/* Escape a label value (\ " and newline) into out (NUL-terminated,
 * truncated to outlen - 1). Returns the length written. */
size_t metrics_escape_label(const char *s, char *out, size_t outlen);

/* Append the exposition (text format 0.0.4) of sb, or of the private
 * block when sb is NULL. version goes into resil_build_info. 0 or -1
 * (allocation failure). */
int metrics_render(const struct scoreboard *sb, struct evbuffer *out, const char *version);

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#endif
