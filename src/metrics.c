/* metrics.c - recording into this process's scoreboard block, and the
 * Prometheus text exposition of the whole scoreboard (see metrics.h). */
#include "metrics.h"

#include "app.h"
#include "clock.h"
#include "http.h"

#include <event2/buffer.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct sb_metrics local_block;
static struct sb_name local_routes[SB_METRIC_ROUTES];
static struct sb_name local_circuits[SB_METRIC_CIRCUITS];

static struct scoreboard *g_sb;
static struct sb_metrics *self = &local_block;
static int16_t *route_map; /* app template index -> shared route index */
static int route_map_n;

/* Upper bounds in nanoseconds and as the "le" label. */
static const uint64_t bucket_ns[SB_METRIC_BUCKETS] = {
    100000,   250000,    500000,    1000000,   2500000,    5000000,    10000000,   25000000,
    50000000, 100000000, 250000000, 500000000, 1000000000, 2500000000, 5000000000, 10000000000,
};
static const char *const bucket_le[SB_METRIC_BUCKETS] = {
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
    "0.05",   "0.1",     "0.25",   "0.5",   "1",      "2.5",   "5",    "10",
};

static const char *const method_names[SB_METRIC_METHODS] = {"GET",   "HEAD",   "POST",    "PUT",
                                                            "PATCH", "DELETE", "OPTIONS", "OTHER"};
static const char *const backend_names[SB_METRIC_BACKENDS] = {"sqlite", "mongodb"};
/* enum store_kind - 1 and enum store_err (store.h checks the counts). */
static const char *const store_op_names[SB_METRIC_STORE_OPS] = {
    "insert", "find_by_id", "find_one", "find", "count", "update_by_id", "delete_by_id", "ping", "insert_many"};
static const char *const store_result_names[SB_METRIC_STORE_RESULTS] = {
    "ok", "duplicate_key", "not_found", "unavailable", "timeout", "circuit_open", "busy", "internal"};
static const char *const circuit_state_names[3] = {"closed", "open", "half-open"};
static const char *const restart_cause_names[SB_RESTART_CAUSES] = {
    [SB_RESTART_CRASH] = "crash",   [SB_RESTART_EXIT] = "exit",     [SB_RESTART_HUNG] = "hung",
    [SB_RESTART_MEMORY] = "memory", [SB_RESTART_RELOAD] = "reload", [SB_RESTART_RESTART] = "restart",
};

struct metric_row {
	const char *name;
	const char *labels; /* fixed labels ("limiter=\"api\""), or NULL */
	const char *help;
};

static const struct metric_row counter_rows[MC_COUNT] = {
    [MC_WS_MESSAGES_IN] = {"resil_websocket_messages_received_total", NULL,
                           "WebSocket text messages received from clients."},
    [MC_WS_DELIVERIES] = {"resil_websocket_frames_sent_total", NULL,
                          "WebSocket frames delivered to clients (written to their sockets)."},
    [MC_WS_SLOW_CLOSES] = {"resil_websocket_slow_reader_closes_total", NULL,
                           "WebSocket connections closed with 1013 because the client did not read."},
    [MC_RATELIMIT_API] = {"resil_ratelimit_rejections_total", "limiter=\"api\"",
                          "Requests refused with 429 by a rate limiter."},
    [MC_RATELIMIT_LOGIN] = {"resil_ratelimit_rejections_total", "limiter=\"login\"",
                            "Requests refused with 429 by a rate limiter."},
    [MC_JOBS_REJECTED] = {"resil_jobs_rejections_total", NULL, "Jobs refused because the worker's job queue was full."},
};

enum gauge_agg { AGG_SUM = 0, AGG_MAX, AGG_MIN };
static const struct {
	struct metric_row row;
	int agg;
} gauge_rows[MG_COUNT] = {
    [MG_JOBS_QUEUED] = {{"resil_jobs_queued", NULL, "Jobs waiting for a pool thread, over all workers."}, AGG_SUM},
    [MG_BUS_STATE] = {{"resil_bus_state", NULL,
                       "Cross-host bus (RESIL_BUS): 0 not configured, 1 up, 2 degraded (local delivery only); the "
                       "worst worker."},
                      AGG_MAX},
};

/* ------------------------------------------------------------ recording */

static inline void bump(atomic_uint_least64_t *c, uint64_t n)
{
	/* One writer: no locked read-modify-write on the request path. */
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}

static struct sb_name *route_names(const struct scoreboard *sb)
{
	return sb ? (struct sb_name *)sb->route_names : local_routes;
}

static struct sb_name *circuit_names(const struct scoreboard *sb)
{
	return sb ? (struct sb_name *)sb->circuit_names : local_circuits;
}

void metrics_attach(struct scoreboard *sb, int idx)
{
	if (sb && idx >= 0 && idx < SB_MAX_ENTRIES) {
		g_sb = sb;
		self = &sb->metrics[idx];
	} else {
		g_sb = NULL;
		self = &local_block;
	}
}

void metrics_detach(void)
{
	g_sb = NULL;
	self = &local_block;
	free(route_map);
	route_map = NULL;
	route_map_n = 0;
}

int metrics_bind_routes(const struct app *app)
{
	int n = app_template_count(app);
	int16_t *map = calloc(n > 0 ? (size_t)n : 1, sizeof(*map));
	if (!map)
		return -1;
	for (int i = 0; i < n; i++) {
		int k = sb_name_index(route_names(g_sb), SB_METRIC_ROUTES, app_template(app, i));
		map[i] = (int16_t)(k < 0 ? SB_METRIC_ROUTE_OTHER : k);
	}
	free(route_map);
	route_map = map;
	route_map_n = n;
	return 0;
}

int metrics_bucket(uint64_t ns)
{
	int i = 0;
	while (i < SB_METRIC_BUCKETS && ns > bucket_ns[i])
		i++;
	return i;
}

static void observe(struct sb_hist *h, uint64_t ns)
{
	bump(&h->bucket[metrics_bucket(ns)], 1);
	bump(&h->count, 1);
	bump(&h->sum_ns, ns);
}

static void observe_shared(struct sb_hist *h, uint64_t ns)
{
	atomic_fetch_add_explicit(&h->bucket[metrics_bucket(ns)], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_ns, ns, memory_order_relaxed);
}

static int method_index(int m)
{
	if (m <= 0 || m > HTTP_M_OPTIONS)
		return SB_METRIC_METHODS - 1;
	return __builtin_ctz((unsigned)m);
}

void metrics_request_done(struct http_request *req)
{
	const struct app_ctx *ctx = app_ctx(req);
	int r = SB_METRIC_ROUTE_UNMATCHED;
	if (ctx && ctx->route_index >= 0)
		r = ctx->route_index < route_map_n ? route_map[ctx->route_index] : SB_METRIC_ROUTE_OTHER;
	int cls = req->res.status / 100 - 1;
	if (cls < 0)
		cls = 0;
	else if (cls >= SB_METRIC_CLASSES)
		cls = SB_METRIC_CLASSES - 1;
	uint64_t now = clock_mono_ns();
	uint64_t ns = now > req->start_ns ? now - req->start_ns : 0;
	bump(&self->c.requests[r][method_index(req->method)][cls], 1);
	observe(&self->c.request_seconds[r], ns);
}

void metrics_count(enum metrics_counter c)
{
	if ((unsigned)c < MC_COUNT)
		bump(&self->c.counter[c], 1);
}

void metrics_gauge_set(enum metrics_gauge g, int64_t v)
{
	if ((unsigned)g < MG_COUNT)
		atomic_store_explicit(&self->g.gauge[g], v, memory_order_relaxed);
}

int metrics_backend_index(const char *name)
{
	for (int i = 0; i < SB_METRIC_BACKENDS; i++)
		if (name && strcmp(name, backend_names[i]) == 0)
			return i;
	return -1;
}

void metrics_store_op(int backend, int kind, int result, uint64_t ns)
{
	if (backend < 0 || backend >= SB_METRIC_BACKENDS || kind < 1 || kind > SB_METRIC_STORE_OPS || result < 0 ||
	    result >= SB_METRIC_STORE_RESULTS)
		return;
	struct sb_metrics *m = self;
	atomic_fetch_add_explicit(&m->c.store_ops[backend][kind - 1][result], 1, memory_order_relaxed);
	observe_shared(&m->c.store_seconds[backend][kind - 1], ns);
}

void metrics_circuit_transition(const char *name, int to)
{
	if (!name || to < 0 || to > 2)
		return;
	struct sb_metrics *m = self;
	int k = sb_name_index(circuit_names(g_sb), SB_METRIC_CIRCUITS, name);
	if (k >= 0)
		atomic_fetch_add_explicit(&m->c.circuit_transitions[k][to], 1, memory_order_relaxed);
}

/* ------------------------------------------------------------ rendering */

size_t metrics_escape_label(const char *s, char *out, size_t outlen)
{
	size_t n = 0;
	if (!outlen)
		return 0;
	for (; *s; s++) {
		const char *rep = NULL;
		char one[2] = {*s, '\0'};
		if (*s == '\\')
			rep = "\\\\";
		else if (*s == '"')
			rep = "\\\"";
		else if (*s == '\n')
			rep = "\\n";
		else
			rep = one;
		size_t rl = strlen(rep);
		if (n + rl >= outlen)
			break;
		memcpy(out + n, rep, rl);
		n += rl;
	}
	out[n] = '\0';
	return n;
}

struct out {
	struct evbuffer *b;
	int err;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (evbuffer_add_vprintf(o->b, fmt, ap) < 0)
		o->err = 1;
	va_end(ap);
}

static void head(struct out *o, const char *name, const char *type, const char *help)
{
	put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The histogram's series; labels is "route=\"/x\"" (without braces). */
static void put_hist(struct out *o, const char *name, const char *labels, const struct sb_hist *h)
{
	uint64_t cum = 0, count = h->count, sum_ns = h->sum_ns;
	for (int i = 0; i < SB_METRIC_BUCKETS; i++) {
		cum += h->bucket[i];
		put(o, "%s_bucket{%s,le=\"%s\"} %" PRIu64 "\n", name, labels, bucket_le[i], cum);
	}
	/* +Inf is the count, so a scrape between two of the writer's stores
	 * still sees buckets that never exceed it. */
	cum += h->bucket[SB_METRIC_BUCKETS];
	put(o, "%s_bucket{%s,le=\"+Inf\"} %" PRIu64 "\n", name, labels, cum > count ? cum : count);
	put(o, "%s_sum{%s} %.9f\n", name, labels, (double)sum_ns / 1e9);
	put(o, "%s_count{%s} %" PRIu64 "\n", name, labels, cum > count ? cum : count);
}

static void name_of(struct sb_name *tab, int i, char *out, size_t outlen)
{
	if (atomic_load_explicit(&tab[i].state, memory_order_acquire) != 2) {
		out[0] = '\0';
		return;
	}
	char raw[SB_NAME_LEN + 1];
	memcpy(raw, tab[i].name, SB_NAME_LEN);
	raw[SB_NAME_LEN] = '\0';
	metrics_escape_label(raw, out, outlen);
}

static void route_label(const struct scoreboard *sb, int r, char *out, size_t outlen)
{
	if (r == SB_METRIC_ROUTE_UNMATCHED)
		snprintf(out, outlen, "unmatched");
	else if (r == SB_METRIC_ROUTE_OTHER)
		snprintf(out, outlen, "other");
	else
		name_of(route_names(sb), r, out, outlen);
}

static int live(int state)
{
	return state == SB_STARTING || state == SB_READY || state == SB_DRAINING;
}

static void render_requests(struct out *o, const struct scoreboard *sb, const struct sb_counters *c)
{
	char route[2 * SB_NAME_LEN + 8];
	head(o, "resil_http_requests_total", "counter",
	     "Requests answered, by route template, method and status class.");
	for (int r = 0; r < SB_METRIC_ROUTE_SLOTS; r++) {
		route_label(sb, r, route, sizeof(route));
		if (!route[0])
			continue;
		for (int m = 0; m < SB_METRIC_METHODS; m++)
			for (int k = 0; k < SB_METRIC_CLASSES; k++) {
				uint64_t v = c->requests[r][m][k];
				if (v)
					put(o,
					    "resil_http_requests_total{route=\"%s\",method=\"%s\",status=\"%dxx\"} "
					    "%" PRIu64 "\n",
					    route, method_names[m], k + 1, v);
			}
	}
	head(o, "resil_http_request_duration_seconds", "histogram",
	     "Time from a request's first byte to its answer being queued, by route template.");
	for (int r = 0; r < SB_METRIC_ROUTE_SLOTS; r++) {
		const struct sb_hist *h = &c->request_seconds[r];
		if (!h->count)
			continue;
		route_label(sb, r, route, sizeof(route));
		if (!route[0])
			continue;
		char labels[sizeof(route) + 16];
		snprintf(labels, sizeof(labels), "route=\"%s\"", route);
		put_hist(o, "resil_http_request_duration_seconds", labels, h);
	}
}

static void render_store(struct out *o, const struct sb_counters *c)
{
	head(o, "resil_store_operations_total", "counter", "Store operations, by backend, operation and result.");
	for (int b = 0; b < SB_METRIC_BACKENDS; b++)
		for (int k = 0; k < SB_METRIC_STORE_OPS; k++)
			for (int r = 0; r < SB_METRIC_STORE_RESULTS; r++)
				if (c->store_ops[b][k][r])
					put(o,
					    "resil_store_operations_total{backend=\"%s\",op=\"%s\",result=\"%s\"} "
					    "%" PRIu64 "\n",
					    backend_names[b], store_op_names[k], store_result_names[r],
					    (uint64_t)c->store_ops[b][k][r]);
	head(o, "resil_store_operation_duration_seconds", "histogram",
	     "Store operation latency (queueing, retries and backoff included), by backend and operation.");
	for (int b = 0; b < SB_METRIC_BACKENDS; b++)
		for (int k = 0; k < SB_METRIC_STORE_OPS; k++) {
			const struct sb_hist *h = &c->store_seconds[b][k];
			if (!h->count)
				continue;
			char labels[64];
			snprintf(labels, sizeof(labels), "backend=\"%s\",op=\"%s\"", backend_names[b],
			         store_op_names[k]);
			put_hist(o, "resil_store_operation_duration_seconds", labels, h);
		}
}

static void render_row(struct out *o, const struct metric_row *row, const struct metric_row *prev, const char *type,
                       int64_t v)
{
	if (!prev || strcmp(prev->name, row->name) != 0)
		head(o, row->name, type, row->help);
	if (row->labels)
		put(o, "%s{%s} %" PRId64 "\n", row->name, row->labels, v);
	else
		put(o, "%s %" PRId64 "\n", row->name, v);
}

/* Live processes' gauges; the private block's without a scoreboard. */
static void render_gauges(struct out *o, const struct scoreboard *sb)
{
	int hwm = sb ? atomic_load_explicit(&sb->hdr.entries_hwm, memory_order_relaxed) : 0;
	if (hwm > SB_MAX_ENTRIES)
		hwm = SB_MAX_ENTRIES;
	int64_t inflight = 0, conns = 0, ws = 0, g[MG_COUNT];
	int seen = 0;
	for (int i = 0; i < MG_COUNT; i++)
		g[i] = 0;
	for (int e = sb ? 0 : -1; e < hwm; e++) {
		const struct sb_metrics *m = e < 0 ? &local_block : &sb->metrics[e];
		if (e >= 0) {
			const struct sb_entry *en = &sb->entries[e];
			if (!live(atomic_load_explicit(&en->state, memory_order_relaxed)))
				continue;
			inflight += atomic_load_explicit(&en->inflight, memory_order_relaxed);
			conns += atomic_load_explicit(&en->connections, memory_order_relaxed);
			ws += atomic_load_explicit(&en->websockets, memory_order_relaxed);
		}
		for (int i = 0; i < MG_COUNT; i++) {
			int64_t v = atomic_load_explicit(&m->g.gauge[i], memory_order_relaxed);
			if (!seen || gauge_rows[i].agg == AGG_SUM)
				g[i] = seen ? g[i] + v : v;
			else if (gauge_rows[i].agg == AGG_MAX ? v > g[i] : v < g[i])
				g[i] = v;
		}
		seen = 1;
	}
	if (sb) {
		head(o, "resil_http_requests_in_flight", "gauge", "Requests being served now, over all workers.");
		put(o, "resil_http_requests_in_flight %" PRId64 "\n", inflight);
		head(o, "resil_http_connections", "gauge", "Open HTTP connections, over all workers.");
		put(o, "resil_http_connections %" PRId64 "\n", conns);
		head(o, "resil_websocket_connections", "gauge", "Open WebSocket connections, over all workers.");
		put(o, "resil_websocket_connections %" PRId64 "\n", ws);
	}
	for (int i = 0; i < MG_COUNT; i++)
		render_row(o, &gauge_rows[i].row, i ? &gauge_rows[i - 1].row : NULL, "gauge", g[i]);
}

static void render_circuits(struct out *o, const struct scoreboard *sb, const struct sb_counters *c)
{
	if (sb) {
		struct sb_circuit_sum sums[SB_MAX_CIRCUIT_NAMES];
		int n = sb_circuits_merge(sb, sums, SB_MAX_CIRCUIT_NAMES);
		head(o, "resil_circuit_state", "gauge",
		     "Worst breaker state over ready workers: 0 closed, 1 open, 2 half-open.");
		for (int i = 0; i < n; i++) {
			char name[2 * sizeof(sums[i].name) + 1];
			metrics_escape_label(sums[i].name, name, sizeof(name));
			put(o, "resil_circuit_state{circuit=\"%s\"} %d\n", name, sums[i].worst);
		}
		head(o, "resil_circuit_workers", "gauge", "Ready workers whose breaker is in each state.");
		for (int i = 0; i < n; i++) {
			char name[2 * sizeof(sums[i].name) + 1];
			metrics_escape_label(sums[i].name, name, sizeof(name));
			for (int s = 0; s < 3; s++)
				put(o, "resil_circuit_workers{circuit=\"%s\",state=\"%s\"} %d\n", name,
				    circuit_state_names[s], sums[i].count[s]);
		}
	}
	head(o, "resil_circuit_transitions_total", "counter", "Breaker state changes, by circuit and state entered.");
	for (int k = 0; k < SB_METRIC_CIRCUITS; k++) {
		char name[2 * SB_NAME_LEN + 1];
		name_of(circuit_names(sb), k, name, sizeof(name));
		if (!name[0])
			continue;
		for (int s = 0; s < 3; s++)
			put(o, "resil_circuit_transitions_total{circuit=\"%s\",to=\"%s\"} %" PRIu64 "\n", name,
			    circuit_state_names[s], (uint64_t)c->circuit_transitions[k][s]);
	}
}

/* Per worker id: its serving process (ready before starting or draining,
 * then the newer generation), so a reload never shows one id twice. */
static void render_workers(struct out *o, const struct scoreboard *sb)
{
	int hwm = atomic_load_explicit(&sb->hdr.entries_hwm, memory_order_relaxed);
	if (hwm > SB_MAX_ENTRIES)
		hwm = SB_MAX_ENTRIES;
	int best[SB_MAX_WORKERS];
	for (int i = 0; i < SB_MAX_WORKERS; i++)
		best[i] = -1;
	for (int e = 0; e < hwm; e++) {
		const struct sb_entry *en = &sb->entries[e];
		int st = atomic_load_explicit(&en->state, memory_order_relaxed);
		int id = atomic_load_explicit(&en->worker_id, memory_order_relaxed);
		if (!live(st) || id < 0 || id >= SB_MAX_WORKERS)
			continue;
		int b = best[id];
		if (b >= 0) {
			int bst = atomic_load_explicit(&sb->entries[b].state, memory_order_relaxed);
			unsigned bg = atomic_load_explicit(&sb->entries[b].generation, memory_order_relaxed);
			unsigned g = atomic_load_explicit(&en->generation, memory_order_relaxed);
			if ((bst == SB_READY) > (st == SB_READY) || ((bst == SB_READY) == (st == SB_READY) && bg >= g))
				continue;
		}
		best[id] = e;
	}
	static const struct {
		const char *name, *type, *help;
	} rows[] = {
	    {"resil_worker_resident_memory_bytes", "gauge", "Resident memory of each worker process."},
	    {"resil_worker_cpu_seconds_total", "counter",
	     "CPU time (user + system) of each worker process since it started (resets when it is replaced)."},
	    {"resil_worker_cpu_ratio", "gauge", "CPU use of each worker process over the last 250 ms, in cores."},
	};
	for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
		head(o, rows[r].name, rows[r].type, rows[r].help);
		for (int id = 0; id < SB_MAX_WORKERS; id++) {
			if (best[id] < 0)
				continue;
			const struct sb_gauges *g = &sb->metrics[best[id]].g;
			if (r == 0)
				put(o, "%s{worker=\"%d\"} %" PRIu64 "\n", rows[r].name, id,
				    (uint64_t)atomic_load_explicit(&g->rss_bytes, memory_order_relaxed));
			else if (r == 1)
				put(o, "%s{worker=\"%d\"} %.3f\n", rows[r].name, id,
				    (double)atomic_load_explicit(&g->cpu_ns, memory_order_relaxed) / 1e9);
			else
				put(o, "%s{worker=\"%d\"} %.3f\n", rows[r].name, id,
				    (double)atomic_load_explicit(&g->cpu_permille, memory_order_relaxed) / 1000.0);
		}
	}
	head(o, "resil_worker_restarts_total", "counter", "Worker processes that died or were replaced, by cause.");
	for (int i = 0; i < SB_RESTART_CAUSES; i++)
		put(o, "resil_worker_restarts_total{cause=\"%s\"} %" PRIu64 "\n", restart_cause_names[i],
		    (uint64_t)atomic_load_explicit(&sb->restarts[i], memory_order_relaxed));
	head(o, "resil_workers", "gauge", "Worker slots configured, and how many of them serve.");
	int ready = sb_count_ready(sb), target = atomic_load_explicit(&sb->hdr.workers_target, memory_order_relaxed);
	put(o, "resil_workers{state=\"target\"} %d\nresil_workers{state=\"ready\"} %d\n", target,
	    ready > target ? target : ready);
}

int metrics_render(const struct scoreboard *sb, struct evbuffer *b, const char *version)
{
	/* A private copy (35 KiB: not on the loop's stack). */
	struct sb_counters *sum = malloc(sizeof(*sum));
	if (!sum)
		return -1;
	if (sb) {
		sb_counters_sum(sb, sum);
	} else {
		const atomic_uint_least64_t *w = (const atomic_uint_least64_t *)&local_block.c;
		atomic_uint_least64_t *to = (atomic_uint_least64_t *)sum;
		for (size_t i = 0; i < SB_COUNTER_WORDS; i++)
			atomic_store_explicit(&to[i], atomic_load_explicit(&w[i], memory_order_relaxed),
			                      memory_order_relaxed);
	}
	const struct sb_counters *c = sum;
	struct out o = {.b = b};
	char ver[64];
	metrics_escape_label(version ? version : "", ver, sizeof(ver));
	head(&o, "resil_build_info", "gauge", "Always 1; the version of the running resild.");
	put(&o, "resil_build_info{version=\"%s\"} 1\n", ver);
	if (sb) {
		head(&o, "resil_start_time_seconds", "gauge", "When resild started, in seconds since the epoch.");
		put(&o, "resil_start_time_seconds %.3f\n",
		    (double)atomic_load_explicit(&sb->hdr.started_ms, memory_order_relaxed) / 1000.0);
	}
	render_requests(&o, sb, c);
	render_gauges(&o, sb);
	for (int i = 0; i < MC_COUNT; i++)
		render_row(&o, &counter_rows[i], i ? &counter_rows[i - 1] : NULL, "counter", (int64_t)c->counter[i]);
	render_store(&o, c);
	render_circuits(&o, sb, c);
	if (sb)
		render_workers(&o, sb);
	free(sum);
	return o.err ? -1 : 0;
}
