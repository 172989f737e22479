/* chat_upgrade.c - GET /ws and GET /socket.io/: from an HTTP request to an
 * authenticated chat socket (SPEC section 7).
 *
 * The token (?token= first, else Authorization: Bearer) is resolved to a
 * user through authmw's auth_resolve, the same path every HTTP route
 * takes: a bad token is refused with 401 before the upgrade, as is a user
 * since deleted or deactivated. Then the upgrade headers are checked
 * (400 / 426) and src/ws.c answers 101 and takes the socket.
 *
 * ws_upgrade may not run inside the synchronous part of a handler, so when
 * the user is known at once (from the cache) the takeover runs on the next
 * loop turn; after a store load it runs from the load's callback. Until it
 * is answered, the request stays ours, even if the client went away.
 *
 * A Socket.IO client may come without a token and send it in the CONNECT
 * packet's auth object instead: such a socket is upgraded unauthenticated
 * and chat_upgrade_connect() resolves the token when the packet comes
 * (chat.c closes the socket if it does not come in time).
 */
#include "autoconfig.h"

#include "chat_upgrade.h"

#include "api.h"
#include "authmw.h"
#include "handlers.h"
#include "json.h"
#include "routes.h"
#include "ws.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

/* An authenticated upgrade waiting for its user (in the request's arena). */
struct upgrade {
	struct http_request *req;
	int sio;
};

/* The takeover, on the next loop turn (malloc'd: outlives the handler). */
struct upgrade_later {
	struct http_request *req;
	char accept[WS_ACCEPT_LEN + 1];
	struct chat_peer peer;
};

static int refuse_draining(struct http_request *req)
{
	return app_fail(req, 503, "SHUTTING_DOWN", "server is shutting down");
}

/* ws_check_upgrade()'s refusal as an error envelope. */
static int upgrade_refused(struct http_request *req, int st, const char *why)
{
	return app_fail(req, st, st == 426 ? "UPGRADE_REQUIRED" : st == 400 ? "BAD_REQUEST" : "INTERNAL", why);
}

/* Hand the socket to ws.c, or answer the request when that is impossible. */
static void take_over(struct http_request *req, const char *accept, struct chat_peer *peer)
{
	if (chat_refusing()) {
		refuse_draining(req);
		return;
	}
	/* ws_upgrade() releases the request before it calls chat_sock_init():
	 * peer must not live in the request's arena. */
	if (ws_upgrade(chat_server(), req, accept, sizeof(struct chat_sock), chat_sock_init, peer) < 0)
		app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
}

static void later_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct upgrade_later *l = arg;
	struct http_request *req = l->req;
	struct chat_peer peer = l->peer;
	char accept[WS_ACCEPT_LEN + 1];
	memcpy(accept, l->accept, sizeof(accept));
	free(l);
	take_over(req, accept, &peer);
}

/* Check the upgrade headers, then take the socket over: now (after an
 * asynchronous step) or on the next loop turn. APP_DONE either way. */
static int upgrade(struct http_request *req, const struct chat_peer *peer, int now)
{
	char accept[WS_ACCEPT_LEN + 1];
	const char *why = NULL;
	int st = ws_check_upgrade(req, accept, &why);
	if (st)
		return upgrade_refused(req, st, why);
	if (now) {
		struct chat_peer p = *peer;
		take_over(req, accept, &p);
		return APP_DONE;
	}
	struct worker *w = worker_current();
	struct upgrade_later *l = calloc(1, sizeof(*l));
	if (!l)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	l->req = req;
	memcpy(l->accept, accept, sizeof(l->accept));
	l->peer = *peer;
	struct timeval zero = {0, 0};
	if (!w || event_base_once(w->base, -1, EV_TIMEOUT, later_cb, l, &zero) < 0) {
		free(l);
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	}
	return APP_DONE;
}

/* The token resolved: refuse, or upgrade as that user. */
static int authed(struct upgrade *u, const struct auth_result *r, int now)
{
	struct http_request *req = u->req;
	switch (r->status) {
	case AUTH_OK: break;
	case AUTH_GONE: return app_fail(req, 401, "UNAUTHORIZED", "user no longer exists or is inactive");
	case AUTH_STORE: return api_fail_store(req, r->err, NULL);
	case AUTH_MISSING: return app_fail(req, 401, "UNAUTHORIZED", "access token required");
	default: return app_fail(req, 401, "UNAUTHORIZED", "invalid or expired token");
	}
	if (chat_refusing())
		return refuse_draining(req);
	struct chat_peer peer = {.user = r->who->oid, .sio = u->sio, .authed = 1};
	snprintf(peer.username, sizeof(peer.username), "%s", r->who->username);
	char *uid = http_alloc(req, sizeof(r->who->id));
	if (uid) {
		memcpy(uid, r->who->id, sizeof(r->who->id));
		app_ctx(req)->principal_id = uid; /* the access log's userId */
	}
	return upgrade(req, &peer, now);
}

static void user_loaded(void *ud, const struct auth_result *r)
{
	authed(ud, r, 1);
}

static int ws_route_proto(struct http_request *req, int sio)
{
	if (chat_refusing())
		return refuse_draining(req);
	const char *tok = NULL;
	size_t tl = 0;
	const struct json_value *q = req->query_len ? app_query(req) : NULL;
	if (q)
		tok = json_get_str(q, "token", &tl);
	if (!tok || !tl) {
		size_t hl;
		const char *h = http_header_get(req, "authorization", &hl);
		if (!h || auth_bearer_token(h, hl, &tok, &tl) < 0)
			tok = NULL, tl = 0;
	}
	if ((!tok || !tl) && sio) {
		/* The CONNECT packet will carry the token. */
		struct chat_peer peer = {.sio = 1, .authed = 0};
		return upgrade(req, &peer, 0);
	}
	struct upgrade *u = http_alloc(req, sizeof(*u));
	if (!u)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	u->req = req;
	u->sio = sio;
	struct auth_result r;
	if (auth_resolve(req, tok, tl, user_loaded, u, &r) == AUTH_PENDING)
		return APP_DONE;
	return authed(u, &r, 0);
}

static int ws_route(struct http_request *req)
{
	return ws_route_proto(req, 0);
}

/* GET /socket.io/?EIO=4&transport=websocket: Engine.IO v4, websocket only. */
static int sio_route(struct http_request *req)
{
	const struct json_value *q = req->query_len ? app_query(req) : NULL;
	size_t el = 0, tl = 0;
	const char *eio = q ? json_get_str(q, "EIO", &el) : NULL;
	const char *tr = q ? json_get_str(q, "transport", &tl) : NULL;
	if (!eio || el != 1 || eio[0] != '4')
		return app_fail(req, 400, "BAD_REQUEST", "unsupported protocol version: EIO=4 is required");
	if (!tr || tl != 9 || memcmp(tr, "websocket", 9) != 0)
		return app_fail(req, 400, "BAD_REQUEST", "only the websocket transport is supported");
	return ws_route_proto(req, 1);
}

int chat_routes(struct app *app)
{
	if (app_get(app, "/ws", ws_route) < 0)
		return -1;
	return app_get(app, "/socket.io", sio_route);
}

/* ------------------------------------------------ Socket.IO CONNECT */

static void connect_authed(struct ws_conn *c, const struct auth_result *r)
{
	struct chat_sock *cs = ws_conn_app(c);
	if (ws_conn_closing(c))
		return;
	switch (r->status) {
	case AUTH_OK:
		chat_sock_set_user(cs, &r->who->oid, r->who->username);
		cs->authed = 1;
		ws_conn_deadline(c, 0, 0);
		chat_sio_connected(c);
		return;
	case AUTH_GONE: chat_sio_refuse(c, "user no longer exists or is inactive", WS_POLICY_VIOLATION); return;
	case AUTH_STORE: chat_sio_refuse(c, chat_store_message(r->err), WS_TRY_AGAIN_LATER); return;
	case AUTH_MISSING: chat_sio_refuse(c, "access token required", WS_POLICY_VIOLATION); return;
	default: chat_sio_refuse(c, "invalid or expired token", WS_POLICY_VIOLATION); return;
	}
}

static void connect_loaded(void *ud, const struct auth_result *r)
{
	struct ws_conn *c = ud;
	connect_authed(c, r);
	chat_sock_resume(c);
}

void chat_upgrade_connect(struct ws_conn *c, const char *auth, size_t len)
{
	struct json_value *doc = NULL;
	const char *tok = NULL;
	size_t tl = 0;
	if (len && json_parse(auth, len, CHAT_JSON_DEPTH, 0, &doc) == JSON_OK && doc->type == JSON_OBJECT)
		tok = json_get_str(doc, "token", &tl);
	struct auth_result r;
	enum auth_status st = auth_resolve(NULL, tok, tok ? tl : 0, connect_loaded, c, &r);
	json_free(doc);
	if (st == AUTH_PENDING) {
		/* Later events wait for the user, and the socket's memory too. */
		struct chat_sock *cs = ws_conn_app(c);
		cs->busy = 1;
		ws_conn_ref(c);
		return;
	}
	connect_authed(c, &r);
}
