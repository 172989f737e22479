/* routes.c - mounts the reference API: the standard middleware chain of
 * SPEC section 5 and every route group. */
#include "autoconfig.h"

#include "routes.h"

#include "api.h"
#include "audit.h"
#include "authmw.h"
#include "handlers.h"
#include "log.h"
#include "middleware.h"

int routes_register(struct app *app, struct worker *w)
{
	/* Order per SPEC section 5 (request id and security headers are applied
	 * by the HTTP core to every response, access log on completion). */
	if (auth_init() < 0)
		return -1;
	authmw_init(w->rl, w->cfg);
	app_use(app, mw_cors);
	app_use(app, mw_rate_limit);
	app_use(app, mw_body);

	int rc = 0;
	rc |= health_routes(app);
	rc |= metrics_routes(app, w->cfg);
	rc |= auth_routes(app);
	rc |= users_routes(app);
	rc |= rooms_routes(app);
	rc |= posts_routes(app);
	rc |= patients_routes(app);
	rc |= chat_routes(app);
	rc |= testhooks_routes(app, w->cfg);
	return rc ? -1 : 0;
}

int routes_start(struct worker *w)
{
	char err[512];
	if (api_open_store(w->base, w->cfg, err, sizeof(err)) < 0) {
		log_error(NULL, "cannot open the database", LF_STR("error", err));
		return -1;
	}
	/* After the store, which creates the database's directory. */
	if (audit_open(w->cfg, err, sizeof(err)) < 0)
		log_error(NULL, "cannot open the audit trail; patient routes answer 503 until it opens",
		          LF_STR("error", err));
	if (chat_start(w) < 0)
		return -1;
	return 0;
}

void routes_stop(struct worker *w)
{
	(void)w;
	patients_stop(); /* answers syncs waiting on the external API */
	posts_stop();
	api_close_store();
	authmw_shutdown();
	chat_stop(); /* after the store: its last callbacks may still broadcast */
	audit_close();
}
