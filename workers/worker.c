/* worker.c - the worker process: event loop, signals, HTTP server and the
 * reference API's routes. The supervisor forks, then calls worker_run();
 * without a supervisor (tests, --workers 1 in-process) it is called
 * directly.
 *
 * Signals (handled by libevent, never in async-signal context):
 *   TERM, INT  drain: stop accepting, finish in-flight requests, exit 0
 *   QUIT       exit now
 *   USR1       reopen the log file
 */
#include "autoconfig.h"

#include "audit.h"
#include "worker.h"

#include "api.h"
#include "app.h"
#include "cidr.h"
#include "handlers.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "middleware.h"
#include "routes.h"
#include "scoreboard.h"

#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static struct worker *current;

struct worker *worker_current(void)
{
	return current;
}

static void on_ws_closed(void *ud)
{
	struct worker *w = ud;
	log_info(NULL, "worker drained", LF_INT("requests", http_server_stats(w->http)->requests));
	event_base_loopexit(w->base, NULL);
}

/* HTTP is done: now close the WebSockets with 1001 (SPEC section 3). */
static void on_drained(void *ud)
{
	chat_drain(on_ws_closed, ud);
}

void worker_drain(struct worker *w)
{
	if (w->draining)
		return;
	w->draining = 1;
	if (w->sbe)
		sb_set_state(w->sbe, SB_DRAINING);
	log_info(NULL, "worker draining", LF_INT("connections", http_server_stats(w->http)->connections));
	http_server_drain(w->http, on_drained, w);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct worker *w = arg;
	(void)what;
	switch (sig) {
	case SIGTERM:
	case SIGINT: worker_drain(w); break;
	case SIGQUIT:
		w->exit_code = WORKER_EXIT_OK;
		event_base_loopbreak(w->base);
		break;
	case SIGUSR1:
		if (log_reopen() < 0)
			log_error(NULL, "cannot reopen log file", LF_STR("error", strerror(errno)));
		if (audit_reopen() < 0)
			log_error(NULL, "cannot reopen the audit trail", LF_STR("error", strerror(errno)));
		break;
	default: break;
	}
}

/* Access-log lines of one loop iteration are written together. */
static void log_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	log_flush();
}

static void log_need_flush(void *ud)
{
	struct worker *w = ud;
	event_active(w->log_flush_ev, EV_TIMEOUT, 0);
}

/* The heartbeat proves that this loop turns (the supervisor kills a
 * worker whose heartbeat is older than RESIL_WORKER_TIMEOUT). */
static void heartbeat_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	(void)fd;
	(void)what;
	if (!w->sbe)
		return;
	sb_heartbeat(w->sbe);
	struct store *st = api_store();
	if (st) {
		atomic_store_explicit(&w->sbe->db_state, store_db_state(st) ? SB_DB_CONNECTED : SB_DB_DISCONNECTED,
		                      memory_order_relaxed);
	}
	health_publish_circuits(w->sbe);
	metrics_publish_gauges();
}

/* Each answered request: its metrics, then its access line. */
static void on_complete(struct http_request *req, size_t bytes_out, void *ud)
{
	metrics_request_done(req);
	mw_access_log(req, bytes_out, ud);
}

/* Counters for the scoreboard (cheap relaxed stores). */
static void http_stats_cb(void *ud)
{
	struct worker *w = worker_current();
	(void)ud;
	if (!w || !w->sbe || !w->http)
		return;
	const struct http_stats *st = http_server_stats(w->http);
	atomic_store_explicit(&w->sbe->requests, st->requests, memory_order_relaxed);
	atomic_store_explicit(&w->sbe->inflight, st->inflight, memory_order_relaxed);
	atomic_store_explicit(&w->sbe->connections, st->connections, memory_order_relaxed);
	/* Nothing in flight: a later crash is not any route's. */
	if (st->inflight == 0 && w->sbe->route[0])
		sb_set_route(w->sbe, "");
}

static void route_hook(struct http_request *req, const char *route)
{
	struct worker *w = worker_current();
	(void)req;
	if (w && w->sbe)
		sb_set_route(w->sbe, route);
}

static const int handled_signals[] = {SIGTERM, SIGINT, SIGQUIT, SIGUSR1};
#define NSIGNALS (sizeof(handled_signals) / sizeof(handled_signals[0]))

int worker_run(const struct worker_opts *opts)
{
	struct worker w;
	memset(&w, 0, sizeof(w));
	w.cfg = opts->cfg;
	w.id = opts->id;
	w.generation = opts->generation;
	w.sb = opts->sb;
	w.rl = opts->rl;
	w.bus_fd = opts->bus_fd > 2 ? opts->bus_fd : -1;
	w.exit_code = WORKER_EXIT_OK;
	w.started = time(NULL);
	if (opts->sb && opts->sb_index >= 0)
		w.sbe = &opts->sb->entries[opts->sb_index];
	current = &w;
	metrics_attach(opts->sb, opts->sb_index);
	log_set_worker(opts->id); /* the 0-based id of the title, resilctl and the scoreboard */

	signal(SIGPIPE, SIG_IGN);
	if (sodium_init() < 0) {
		log_msg(LOG_LVL_ERROR, NULL, "libsodium initialisation failed");
		return WORKER_EXIT_FATAL;
	}
	struct event_config *ec = event_config_new();
	if (ec)
		event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
	w.base = ec ? event_base_new_with_config(ec) : NULL;
	if (ec)
		event_config_free(ec);
	if (!w.base) {
		log_msg(LOG_LVL_ERROR, NULL, "cannot create event loop");
		return WORKER_EXIT_FATAL;
	}
	struct event *sigev[NSIGNALS] = {0};
	for (size_t i = 0; i < NSIGNALS; i++) {
		sigev[i] = evsignal_new(w.base, handled_signals[i], on_signal, &w);
		if (!sigev[i] || event_add(sigev[i], NULL) < 0) {
			log_error(NULL, "cannot install signal handler", LF_INT("signal", handled_signals[i]));
			w.exit_code = WORKER_EXIT_FATAL;
			goto out;
		}
	}
	w.log_flush_ev = event_new(w.base, -1, 0, log_flush_cb, &w);
	if (!w.log_flush_ev || log_set_batching(1, log_need_flush, &w) < 0) {
		w.exit_code = WORKER_EXIT_FATAL;
		goto out;
	}
	struct mw_config mc = {.cors_origins = w.cfg->cors_origins, .json_max_depth = 64};
	w.app = app_new();
	if (!w.app || mw_configure(&mc) < 0) {
		w.exit_code = WORKER_EXIT_FATAL;
		goto out;
	}
	app_set_route_hook(w.app, route_hook);
	if (routes_register(w.app, &w) < 0) {
		log_msg(LOG_LVL_ERROR, NULL, "cannot register routes");
		w.exit_code = WORKER_EXIT_FATAL;
		goto out;
	}
	if (metrics_bind_routes(w.app) < 0) {
		w.exit_code = WORKER_EXIT_FATAL;
		goto out;
	}
	/* Validated when the configuration was loaded. */
	struct cidr_list trust_proxy;
	char cidr_err[160];
	if (cidr_list_parse(w.cfg->trust_proxy, &trust_proxy, cidr_err, sizeof(cidr_err)) < 0) {
		log_error(NULL, "invalid trust_proxy", LF_STR("error", cidr_err));
		w.exit_code = WORKER_EXIT_FATAL;
		goto out;
	}
	struct http_server_opts ho = {
	    .body_limit = w.cfg->body_limit,
	    .max_connections = w.cfg->max_connections,
	    .header_timeout_ms = w.cfg->header_timeout_ms,
	    .keepalive_timeout_ms = w.cfg->keepalive_timeout_ms,
	    .body_timeout_ms = w.cfg->request_timeout_ms,
	    /* A little inside the supervisor's SIGKILL deadline. */
	    .drain_timeout_ms = w.cfg->shutdown_timeout_ms - w.cfg->shutdown_timeout_ms / 10,
	    .trust_proxy = &trust_proxy,
	    .on_headers = app_headers,
	    .on_request = app_handle,
	    .on_complete = on_complete,
	    .fixed_headers = mw_security_headers(),
	    .on_stats = http_stats_cb,
	    .ud = w.app,
	};
	w.http = http_server_new(w.base, opts->listen_fd, &ho);
	if (!w.http) {
		log_msg(LOG_LVL_ERROR, NULL, "cannot serve on the listening socket");
		w.exit_code = WORKER_EXIT_FATAL;
		goto out;
	}
	if (routes_start(&w) < 0) {
		w.exit_code = WORKER_EXIT_FATAL;
		goto out;
	}
	w.heartbeat_ev = event_new(w.base, -1, EV_PERSIST, heartbeat_cb, &w);
	struct timeval hb = {1, 0};
	if (!w.heartbeat_ev || event_add(w.heartbeat_ev, &hb) < 0) {
		w.exit_code = WORKER_EXIT_FATAL;
		goto out;
	}
	/* Publish the database state and the circuits first: a reader counts
	 * only READY entries, and must never see this one without them. */
	heartbeat_cb(-1, 0, &w);
	if (w.sbe)
		sb_set_state(w.sbe, SB_READY);
	w.ready = 1;
	log_info(NULL, "worker ready", LF_INT("generation", opts->generation));
	if (opts->ready_fd >= 0) {
		char one = 'R';
		ssize_t n;
		do
			n = write(opts->ready_fd, &one, 1);
		while (n < 0 && errno == EINTR);
		close(opts->ready_fd);
	}
	event_base_dispatch(w.base);
	log_info(NULL, "worker exiting");
out:
	log_set_batching(0, NULL, NULL);
	if (w.sbe)
		sb_set_state(w.sbe, SB_STOPPED);
	if (w.heartbeat_ev)
		event_free(w.heartbeat_ev);
	if (w.log_flush_ev)
		event_free(w.log_flush_ev);
	routes_stop(&w); /* joins the pool threads: nothing counts after it */
	metrics_detach();
	if (w.bus_fd >= 0)
		close(w.bus_fd); /* never handed to the chat */
	http_server_free(w.http);
	app_free(w.app);
	mw_shutdown();
	for (size_t i = 0; i < NSIGNALS; i++)
		if (sigev[i])
			event_free(sigev[i]);
	event_base_free(w.base);
	current = NULL;
	return w.exit_code;
}
