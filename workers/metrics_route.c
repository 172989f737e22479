/* metrics_route.c - GET /metrics (SPEC section 10): the Prometheus text
 * exposition of the whole service (src/metrics.c renders the shared
 * scoreboard, so any worker answers for all of them).
 *
 * Access: only socket peers inside metrics_allow (RESIL_METRICS_ALLOW,
 * default loopback). The peer is checked, never the client address a
 * trusted proxy forwarded: a proxy in front of resil must not turn the
 * internet into an allowed scraper. Others get 403 FORBIDDEN in the usual
 * error envelope. Like /health the route is outside /api/, so it is not
 * rate limited; it is logged like any request (a scrape every 15 s is a
 * line every 15 s).
 */
#include "autoconfig.h"

#include "api.h"
#include "cidr.h"
#include "config.h"
#include "handlers.h"
#include "jobs.h"
#include "log.h"
#include "metrics.h"
#include "rbus.h"
#include "routes.h"

static struct cidr_list allow;

void metrics_publish_gauges(void)
{
	metrics_gauge_set(MG_BUS_STATE, rbus_state());
	struct store *st = api_store();
	struct job_pool *pool = st ? store_job_pool(st) : NULL;
	if (!pool)
		return;
	struct jobs_stats js;
	jobs_stats(pool, &js);
	metrics_gauge_set(MG_JOBS_QUEUED, js.queued);
}

static int metrics_get(struct http_request *req)
{
	if (!cidr_list_match(&allow, req->peer_ip))
		return app_fail(req, 403, "FORBIDDEN", "metrics are not available to this address");
	struct worker *w = worker_current();
	metrics_publish_gauges(); /* ours fresher than the last heartbeat */
	if (metrics_render(w ? w->sb : NULL, http_body(req), PACKAGE_VERSION) < 0)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	req->res.content_type = METRICS_CONTENT_TYPE;
	http_add_header(req, "Cache-Control", "no-store");
	http_send(req);
	return APP_DONE;
}

int metrics_routes(struct app *app, const struct resil_config *cfg)
{
	char err[160];
	if (cidr_list_parse(cfg->metrics_allow, &allow, err, sizeof(err)) < 0) {
		log_error(NULL, "invalid metrics_allow", LF_STR("error", err));
		return -1;
	}
	return app_get(app, "/metrics", metrics_get);
}
