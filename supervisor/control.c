/* control.c - the control socket of resild: a Unix stream socket (0600,
 * peers checked with SO_PEERCRED: root or resild's own uid) speaking the
 * one-request, one-answer JSON line protocol of ctl_proto.h.
 *
 * Every answer is rendered here, so the supervisor stays a process-management
 * state machine that knows no JSON: status and health are built from the
 * supervisor's read-only view (sup_overview, sup_worker_row, ...) and the
 * scoreboard; requests that change something are handed to the supervisor
 * (sup_ctl_*), which answers through ctl_reply_* at once or later (reload
 * and restart answer when the rolling replacement is done).
 */
#include "autoconfig.h"

#include "ctl_proto.h"
#include "json.h"
#include "log.h"
#include "scoreboard.h"
#include "supervisor.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

struct ctl_client {
	struct control *ctl;
	struct bufferevent *bev;
	struct ctl_client *next;
	int replied;
	int deferred;
	int closing;
	int denied; /* another user: refused once its request has been read */
};

struct control {
	struct event_base *base;
	struct supervisor *sup;
	struct evconnlistener *listener;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct ctl_client *clients;
};

static void client_free(struct ctl_client *c)
{
	struct control *ctl = c->ctl;
	struct ctl_client **pp = &ctl->clients;
	while (*pp && *pp != c)
		pp = &(*pp)->next;
	if (*pp)
		*pp = c->next;
	if (c->bev)
		bufferevent_free(c->bev);
	free(c);
}

static void client_write_cb(struct bufferevent *bev, void *arg)
{
	struct ctl_client *c = arg;
	(void)bev;
	if (c->closing)
		client_free(c);
}

/* Send one complete JSON object (one line) and close the client. */
static void ctl_reply(struct ctl_client *c, const char *json, size_t len)
{
	if (!c || c->replied)
		return;
	c->replied = 1;
	c->closing = 1;
	if (!c->bev) {
		/* The peer went away while we worked: nothing to send. */
		client_free(c);
		return;
	}
	bufferevent_write(c->bev, json, len);
	bufferevent_write(c->bev, "\n", 1);
	bufferevent_disable(c->bev, EV_READ);
}

int ctl_defer(struct ctl_client *c)
{
	c->deferred = 1;
	return 0;
}

/* ---------------------------------------------------------- rendering */

/* A generator with {"ok": true, already open; NULL (and the client told)
 * when out of memory. */
static yajl_gen answer_open(struct ctl_client *c)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	if (!g) {
		ctl_reply(c, "{\"ok\":false,\"error\":\"out of memory\"}", 35);
		return NULL;
	}
	yajl_gen_map_open(g);
	json_gen_cstr(g, CTL_KEY_OK);
	yajl_gen_bool(g, 1);
	return g;
}

/* Close the answer's object, send it and free g. */
static void answer_send(struct ctl_client *c, yajl_gen g)
{
	const unsigned char *buf;
	size_t len;
	yajl_gen_map_close(g);
	if (yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok)
		ctl_reply(c, (const char *)buf, len);
	else
		ctl_reply(c, "{\"ok\":false,\"error\":\"internal error\"}", 37);
	yajl_gen_free(g);
}

void ctl_reply_error(struct ctl_client *c, const char *message)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	if (!g) {
		ctl_reply(c, "{\"ok\":false,\"error\":\"out of memory\"}", 35);
		return;
	}
	yajl_gen_map_open(g);
	json_gen_cstr(g, CTL_KEY_OK);
	yajl_gen_bool(g, 0);
	json_gen_cstr(g, CTL_KEY_ERROR);
	json_gen_cstr(g, message);
	yajl_gen_map_close(g);
	const unsigned char *buf;
	size_t len;
	yajl_gen_get_buf(g, &buf, &len);
	ctl_reply(c, (const char *)buf, len);
	yajl_gen_free(g);
}

void ctl_reply_stopping(struct ctl_client *c, pid_t pid)
{
	yajl_gen g = answer_open(c);
	if (!g)
		return;
	json_gen_cstr(g, CTL_KEY_PID);
	yajl_gen_integer(g, pid);
	answer_send(c, g);
}

void ctl_reply_scaled(struct ctl_client *c, int workers)
{
	yajl_gen g = answer_open(c);
	if (!g)
		return;
	json_gen_cstr(g, CTL_KEY_WORKERS);
	yajl_gen_integer(g, workers);
	answer_send(c, g);
}

void ctl_reply_reloaded(struct ctl_client *c, unsigned generation, const char *const *names, int n)
{
	yajl_gen g = answer_open(c);
	if (!g)
		return;
	json_gen_cstr(g, CTL_KEY_GENERATION);
	yajl_gen_integer(g, generation);
	json_gen_cstr(g, CTL_KEY_RESTART_NEEDED);
	yajl_gen_array_open(g);
	for (int i = 0; i < n; i++)
		json_gen_cstr(g, names[i]);
	yajl_gen_array_close(g);
	answer_send(c, g);
}

void ctl_reply_upgraded(struct ctl_client *c, pid_t pid)
{
	ctl_reply_stopping(c, pid); /* the same answer: {"ok": true, "pid": the new supervisor} */
}

void ctl_reply_user_created(struct ctl_client *c, const char *id)
{
	yajl_gen g = answer_open(c);
	if (!g)
		return;
	json_gen_cstr(g, CTL_KEY_ID);
	json_gen_cstr(g, id);
	answer_send(c, g);
}

void ctl_reply_restarted(struct ctl_client *c, const int *ids, int n)
{
	yajl_gen g = answer_open(c);
	if (!g)
		return;
	json_gen_cstr(g, CTL_KEY_RESTARTED);
	yajl_gen_array_open(g);
	for (int i = 0; i < n; i++)
		yajl_gen_integer(g, ids[i]);
	yajl_gen_array_close(g);
	answer_send(c, g);
}

/* Database state over the serving workers: one disconnected makes it
 * "disconnected"; none that has connected yet: "unknown". */
static const char *db_state(const struct sb_entry *const *e, int n)
{
	int conn = 0, disc = 0;
	for (int i = 0; i < n; i++) {
		int d = atomic_load(&e[i]->db_state);
		if (d == SB_DB_CONNECTED)
			conn++;
		else if (d == SB_DB_DISCONNECTED)
			disc++;
	}
	return disc ? "disconnected" : conn ? "connected" : "unknown";
}

/* {"<circuit>": "closed|open|half-open"} over the given entries, each name
 * once with its worst state (open over half-open over closed). */
static void gen_circuits(yajl_gen g, const struct sb_entry *const *e, int n)
{
	static const char *names[] = {"closed", "open", "half-open"};
	char seen[SB_MAX_CIRCUITS * 4][16];
	int worst[SB_MAX_CIRCUITS * 4];
	int nseen = 0;
	for (int i = 0; i < n; i++) {
		int nc = atomic_load(&e[i]->ncircuits);
		for (int k = 0; k < nc && k < SB_MAX_CIRCUITS; k++) {
			int st = atomic_load(&e[i]->circuits[k].state);
			if (st < 0 || st > 2)
				st = 0;
			int j;
			for (j = 0; j < nseen; j++)
				if (strncmp(seen[j], e[i]->circuits[k].name, 16) == 0)
					break;
			if (j == nseen) {
				if (nseen >= (int)(sizeof(worst) / sizeof(worst[0])))
					continue;
				memcpy(seen[nseen], e[i]->circuits[k].name, 16);
				seen[nseen][15] = '\0';
				worst[nseen++] = st;
			} else if (st == 1 || (st == 2 && worst[j] == 0)) {
				worst[j] = st;
			}
		}
	}
	yajl_gen_map_open(g);
	for (int j = 0; j < nseen; j++) {
		json_gen_cstr(g, seen[j]);
		json_gen_cstr(g, names[worst[j]]);
	}
	yajl_gen_map_close(g);
}

/* A worker's status row as an open map (the caller may add members). */
static void gen_worker_open(yajl_gen g, const struct sup_worker_row *w)
{
	const struct sb_entry *e = w->sbe;
	yajl_gen_map_open(g);
	json_gen_cstr(g, "id");
	yajl_gen_integer(g, w->id);
	json_gen_cstr(g, "pid");
	yajl_gen_integer(g, w->pid);
	json_gen_cstr(g, "state");
	json_gen_cstr(g, w->state);
	json_gen_cstr(g, "uptime_s");
	yajl_gen_integer(g, (long long)w->uptime_s);
	json_gen_cstr(g, "restarts");
	yajl_gen_integer(g, w->restarts);
	json_gen_cstr(g, "cpu_pct");
	yajl_gen_double(g, (double)((long long)(w->cpu_pct * 10 + 0.5)) / 10.0); /* one decimal */
	json_gen_cstr(g, "rss_bytes");
	yajl_gen_integer(g, (long long)w->rss_bytes);
	json_gen_cstr(g, "requests");
	yajl_gen_integer(g, e ? (long long)atomic_load(&e->requests) : 0);
	json_gen_cstr(g, "inflight");
	yajl_gen_integer(g, e ? (long long)atomic_load(&e->inflight) : 0);
	json_gen_cstr(g, "websockets");
	yajl_gen_integer(g, e ? (long long)atomic_load(&e->websockets) : 0);
	json_gen_cstr(g, "generation");
	yajl_gen_integer(g, w->generation);
	json_gen_cstr(g, "circuits");
	gen_circuits(g, &e, e ? 1 : 0);
}

static void gen_worker(yajl_gen g, const struct sup_worker_row *w)
{
	gen_worker_open(g, w);
	yajl_gen_map_close(g);
}

/* The exit status as describe shows it: "signal": 9 or "exit_code": 1, and
 * a human "status" line. */
static void gen_exit_status(yajl_gen g, int status)
{
	char how[96];
	if (WIFSIGNALED(status)) {
		json_gen_cstr(g, "signal");
		yajl_gen_integer(g, WTERMSIG(status));
		snprintf(how, sizeof(how), "signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
	} else {
		json_gen_cstr(g, "exit_code");
		yajl_gen_integer(g, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
		snprintf(how, sizeof(how), "exit %d", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	}
	json_gen_cstr(g, "status");
	json_gen_cstr(g, how);
}

static void gen_last_crash(yajl_gen g, const struct sup_crash *lc)
{
	if (!lc->real_ms) {
		yajl_gen_null(g);
		return;
	}
	char when[40];
	time_t secs = (time_t)(lc->real_ms / 1000);
	struct tm tm;
	gmtime_r(&secs, &tm);
	size_t n = strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(when + n, sizeof(when) - n, ".%03dZ", (int)(lc->real_ms % 1000));
	int64_t now = (int64_t)sb_now_real_ms();
	yajl_gen_map_open(g);
	json_gen_cstr(g, "time");
	json_gen_cstr(g, when);
	json_gen_cstr(g, "ago_s");
	yajl_gen_integer(g, now > lc->real_ms ? (now - lc->real_ms) / 1000 : 0);
	json_gen_cstr(g, "cause");
	json_gen_cstr(g, sup_restart_cause_name(lc->cause));
	json_gen_cstr(g, "pid");
	yajl_gen_integer(g, lc->pid);
	json_gen_cstr(g, "generation");
	yajl_gen_integer(g, lc->generation);
	gen_exit_status(g, lc->status);
	json_gen_cstr(g, "uptime_s");
	yajl_gen_integer(g, (long long)(lc->up_ms / 1000));
	json_gen_cstr(g, "route");
	if (lc->route[0])
		json_gen_cstr(g, lc->route);
	else
		yajl_gen_null(g);
	yajl_gen_map_close(g);
}

/* describe: {"ok", "worker": {the status row, "restarts_by_cause",
 * "last_crash", "errored", "restart_pending", "connections"}} */
static void render_describe(struct ctl_client *c, int id)
{
	struct sup_worker_detail d;
	if (sup_worker_detail(c->ctl->sup, id, &d) < 0) {
		char msg[64];
		snprintf(msg, sizeof(msg), "no such worker: %d", id);
		ctl_reply_error(c, msg);
		return;
	}
	yajl_gen g = answer_open(c);
	if (!g)
		return;
	json_gen_cstr(g, CTL_KEY_WORKER);
	gen_worker_open(g, &d.row);
	json_gen_cstr(g, "connections");
	yajl_gen_integer(g, d.row.sbe ? (long long)atomic_load(&d.row.sbe->connections) : 0);
	json_gen_cstr(g, "restarts_by_cause");
	yajl_gen_map_open(g);
	for (int i = 0; i < SUP_RESTART_CAUSES; i++) {
		json_gen_cstr(g, sup_restart_cause_name(i));
		yajl_gen_integer(g, d.restarts_by[i]);
	}
	yajl_gen_map_close(g);
	json_gen_cstr(g, "last_crash");
	gen_last_crash(g, &d.last_crash);
	json_gen_cstr(g, "errored");
	yajl_gen_bool(g, d.errored);
	json_gen_cstr(g, "restart_pending");
	yajl_gen_bool(g, d.restart_pending);
	yajl_gen_map_close(g);
	answer_send(c, g);
}

/* status: {"ok", "supervisor": {...}, "workers": [...], "crashes_by_route": {...}} */
static void render_status(struct ctl_client *c)
{
	const struct supervisor *s = c->ctl->sup;
	const struct sb_entry *serving[SB_MAX_ENTRIES];
	int nserving = sup_serving_entries(s, serving, SB_MAX_ENTRIES);
	struct sup_overview o;
	sup_overview(s, &o);
	yajl_gen g = answer_open(c);
	if (!g)
		return;
	json_gen_cstr(g, CTL_KEY_SUPERVISOR);
	yajl_gen_map_open(g);
	json_gen_cstr(g, "pid");
	yajl_gen_integer(g, o.pid);
	json_gen_cstr(g, "uptime_s");
	yajl_gen_integer(g, (long long)o.uptime_s);
	json_gen_cstr(g, "listen");
	json_gen_cstr(g, o.listen);
	json_gen_cstr(g, "db");
	json_gen_cstr(g, o.db_kind);
	json_gen_cstr(g, "db_state");
	json_gen_cstr(g, db_state(serving, nserving));
	json_gen_cstr(g, "workers_target");
	yajl_gen_integer(g, o.workers_target);
	json_gen_cstr(g, "generation");
	yajl_gen_integer(g, o.generation);
	json_gen_cstr(g, "version");
	json_gen_cstr(g, PACKAGE_VERSION);
	json_gen_cstr(g, "state");
	json_gen_cstr(g, o.state);
	yajl_gen_map_close(g);
	json_gen_cstr(g, "workers");
	yajl_gen_array_open(g);
	struct sup_worker_row w;
	for (int i = 0; sup_worker_row(s, i, &w) == 0; i++)
		gen_worker(g, &w);
	yajl_gen_array_close(g);
	json_gen_cstr(g, CTL_KEY_CRASHES);
	yajl_gen_map_open(g);
	const char *route;
	unsigned count;
	for (int i = 0; sup_crash_route(s, i, &route, &count) == 0; i++) {
		json_gen_cstr(g, route);
		yajl_gen_integer(g, count);
	}
	yajl_gen_map_close(g);
	answer_send(c, g);
}

/* health: healthy when every worker is ready and the database connected;
 * down when none is ready; degraded otherwise. */
static void render_health(struct ctl_client *c)
{
	const struct supervisor *s = c->ctl->sup;
	const struct sb_entry *serving[SB_MAX_ENTRIES];
	int nserving = sup_serving_entries(s, serving, SB_MAX_ENTRIES);
	struct sup_overview o;
	sup_overview(s, &o);
	int ready = 0;
	struct sup_worker_row w;
	for (int i = 0; sup_worker_row(s, i, &w) == 0; i++)
		ready += w.ready;
	const char *db = db_state(serving, nserving);
	const char *status = ready == 0                                                      ? CTL_HEALTH_DOWN
	                     : (ready < o.workers_target || strcmp(db, "disconnected") == 0) ? CTL_HEALTH_DEGRADED
	                                                                                     : CTL_HEALTH_HEALTHY;
	yajl_gen g = answer_open(c);
	if (!g)
		return;
	json_gen_cstr(g, CTL_KEY_STATUS);
	json_gen_cstr(g, status);
	json_gen_cstr(g, CTL_KEY_CHECKS);
	yajl_gen_map_open(g);
	json_gen_cstr(g, "database");
	json_gen_cstr(g, db);
	json_gen_cstr(g, "workers");
	yajl_gen_map_open(g);
	json_gen_cstr(g, "total");
	yajl_gen_integer(g, o.workers_target);
	json_gen_cstr(g, "ready");
	yajl_gen_integer(g, ready);
	yajl_gen_map_close(g);
	json_gen_cstr(g, "circuits");
	gen_circuits(g, serving, nserving);
	yajl_gen_map_close(g);
	answer_send(c, g);
}

/* ----------------------------------------------------------- requests */

static const char *req_str(yajl_val doc, const char *key)
{
	const char *path[] = {key, NULL};
	yajl_val v = yajl_tree_get(doc, path, yajl_t_string);
	return v ? v->u.string : NULL;
}

/* Erase the strings of a request that carried a password. */
static void wipe_strings(yajl_val doc)
{
	for (size_t i = 0; YAJL_IS_OBJECT(doc) && i < doc->u.object.len; i++) {
		yajl_val v = doc->u.object.values[i];
		if (YAJL_IS_STRING(v))
			explicit_bzero(v->u.string, strlen(v->u.string));
	}
}

static void dispatch(struct ctl_client *c, const char *line)
{
	char errbuf[128];
	yajl_val doc = yajl_tree_parse(line, errbuf, sizeof(errbuf));
	if (!doc || !YAJL_IS_OBJECT(doc)) {
		if (doc)
			yajl_tree_free(doc);
		ctl_reply_error(c, "request must be a JSON object");
		return;
	}
	const char *cmd_path[] = {CTL_KEY_CMD, NULL};
	yajl_val cmd = yajl_tree_get(doc, cmd_path, yajl_t_string);
	struct supervisor *s = c->ctl->sup;
	const char *name = cmd && cmd->u.string ? cmd->u.string : "";
	if (strcmp(name, CTL_CMD_STATUS) == 0) {
		render_status(c);
	} else if (strcmp(name, CTL_CMD_HEALTH) == 0) {
		render_health(c);
	} else if (strcmp(name, CTL_CMD_RELOAD) == 0) {
		sup_ctl_reload(s, c);
	} else if (strcmp(name, CTL_CMD_STOP) == 0) {
		sup_ctl_stop(s, c);
	} else if (strcmp(name, CTL_CMD_RESTART) == 0) {
		const char *tp[] = {CTL_KEY_TARGET, NULL};
		yajl_val t = yajl_tree_get(doc, tp, yajl_t_any);
		const char *ts = t && YAJL_IS_STRING(t) ? t->u.string : NULL;
		if (!t || (ts && strcmp(ts, CTL_TARGET_ALL) == 0)) {
			sup_ctl_restart(s, c, -1);
		} else if (YAJL_IS_INTEGER(t) && YAJL_GET_INTEGER(t) >= 0 && YAJL_GET_INTEGER(t) < 256) {
			sup_ctl_restart(s, c, (int)YAJL_GET_INTEGER(t));
		} else {
			ctl_reply_error(c, "target must be \"all\" or a worker id");
		}
	} else if (strcmp(name, CTL_CMD_UPGRADE) == 0) {
		sup_ctl_upgrade(s, c);
	} else if (strcmp(name, CTL_CMD_DESCRIBE) == 0) {
		const char *ip[] = {CTL_KEY_ID, NULL};
		yajl_val t = yajl_tree_get(doc, ip, yajl_t_number);
		if (t && YAJL_IS_INTEGER(t) && YAJL_GET_INTEGER(t) >= 0 && YAJL_GET_INTEGER(t) < 100000)
			render_describe(c, (int)YAJL_GET_INTEGER(t));
		else
			ctl_reply_error(c, "id must be a worker id (a number)");
	} else if (strcmp(name, CTL_CMD_USER_CREATE) == 0) {
		sup_ctl_user_create(s, c, req_str(doc, CTL_KEY_EMAIL), req_str(doc, CTL_KEY_USERNAME),
		                    req_str(doc, CTL_KEY_ROLE), req_str(doc, CTL_KEY_PASSWORD));
		wipe_strings(doc);
	} else if (strcmp(name, CTL_CMD_SCALE) == 0) {
		const char *wp[] = {CTL_KEY_WORKERS, NULL};
		yajl_val w = yajl_tree_get(doc, wp, yajl_t_number);
		if (!w || !YAJL_IS_INTEGER(w))
			ctl_reply_error(c, "workers must be an integer");
		else
			sup_ctl_scale(s, c, YAJL_GET_INTEGER(w) > 100000 ? 100000 : (int)YAJL_GET_INTEGER(w));
	} else {
		char msg[96];
		snprintf(msg, sizeof(msg), "unknown command: %.40s", name);
		ctl_reply_error(c, msg);
	}
	yajl_tree_free(doc);
}

static void client_read_cb(struct bufferevent *bev, void *arg)
{
	struct ctl_client *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	if (c->replied || c->deferred)
		return;
	size_t len;
	char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_LF);
	if (!line) {
		if (evbuffer_get_length(in) > CTL_MAX_REQUEST)
			ctl_reply_error(c, "request too long");
		return;
	}
	if (len > CTL_MAX_REQUEST) {
		free(line);
		ctl_reply_error(c, "request too long");
		return;
	}
	if (c->denied) {
		free(line);
		ctl_reply_error(c, "permission denied");
		return;
	}
	dispatch(c, line);
	explicit_bzero(line, len); /* a user_create request carries a password */
	free(line);
}

static void client_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct ctl_client *c = arg;
	(void)bev;
	if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)))
		return; /* only refused clients have a (read) timeout */
	if (c->deferred && !c->replied) {
		/* The supervisor still holds c: keep it, without a socket. */
		bufferevent_free(c->bev);
		c->bev = NULL;
		return;
	}
	client_free(c);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	struct control *ctl = arg;
	(void)l;
	(void)sa;
	(void)salen;
	struct ucred cred = {.pid = -1, .uid = (uid_t)-1, .gid = (gid_t)-1};
	socklen_t cl = sizeof(cred);
	int denied =
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 || (cred.uid != 0 && cred.uid != geteuid());
	if (denied)
		log_warn(NULL, "control socket: refused a client of another user",
		         LF_INT("uid", cl ? (int)cred.uid : -1), LF_INT("peerPid", cl ? (int)cred.pid : -1));
	/* A refused client still gets its answer after its request is read:
	 * closing with the request unread would reset the connection, and the
	 * client would see a broken pipe instead of "permission denied". */
	struct ctl_client *c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return;
	}
	c->ctl = ctl;
	c->denied = denied;
	c->bev = bufferevent_socket_new(ctl->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev) {
		close(fd);
		free(c);
		return;
	}
	c->next = ctl->clients;
	ctl->clients = c;
	bufferevent_setcb(c->bev, client_read_cb, client_write_cb, client_event_cb, c);
	if (denied) {
		struct timeval tv = {2, 0}; /* a refused client may not linger */
		bufferevent_set_timeouts(c->bev, &tv, NULL);
	}
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

struct control *control_open(struct event_base *base, struct supervisor *s, const char *path, int fd, char *err,
                             size_t errlen)
{
	struct control *ctl = calloc(1, sizeof(*ctl));
	if (!ctl) {
		snprintf(err, errlen, "control: out of memory");
		return NULL;
	}
	if (strlen(path) >= sizeof(ctl->path)) {
		snprintf(err, errlen, "control: socket path too long: %s", path);
		free(ctl);
		return NULL;
	}
	ctl->base = base;
	ctl->sup = s;
	snprintf(ctl->path, sizeof(ctl->path), "%s", path);
	struct sockaddr_un un;
	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	memcpy(un.sun_path, path, strlen(path) + 1);
	if (fd >= 0)
		goto watch; /* handed over by the supervisor this one replaces: already listening */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "control: socket: %s", strerror(errno));
		free(ctl);
		return NULL;
	}
	/* A socket file left by a dead resild is replaced; a live one is not. */
	if (connect(fd, (struct sockaddr *)&un, sizeof(un)) == 0) {
		snprintf(err, errlen, "control: another resild is already running on %s", path);
		close(fd);
		free(ctl);
		return NULL;
	}
	close(fd);
	struct stat st;
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	mode_t old = umask(0177);
	int rc = fd < 0 ? -1 : bind(fd, (struct sockaddr *)&un, sizeof(un));
	umask(old);
	if (rc < 0 || chmod(path, 0600) < 0 || listen(fd, 16) < 0) {
		snprintf(err, errlen, "control: cannot listen on %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		free(ctl);
		return NULL;
	}
watch:
	ctl->listener = evconnlistener_new(base, accept_cb, ctl, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
	if (!ctl->listener) {
		snprintf(err, errlen, "control: cannot watch %s", path);
		close(fd);
		free(ctl);
		return NULL;
	}
	return ctl;
}

void control_close(struct control *ctl, int unlink_path)
{
	if (!ctl)
		return;
	while (ctl->clients)
		client_free(ctl->clients);
	evconnlistener_free(ctl->listener);
	if (unlink_path)
		unlink(ctl->path);
	free(ctl);
}

void control_stop_accepting(struct control *ctl)
{
	if (ctl)
		evconnlistener_disable(ctl->listener);
}

int control_fd(const struct control *ctl)
{
	return ctl ? evconnlistener_get_fd(ctl->listener) : -1;
}
