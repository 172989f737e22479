/* control.c - the control socket of resild: a Unix stream socket (0600,
 * peers checked with SO_PEERCRED: root or resild's own uid) speaking the
 * one-request, one-answer JSON line protocol of ctl_proto.h. Requests are
 * handed to the supervisor (sup_ctl_*), which answers at once or later
 * (reload and restart answer when the rolling replacement is done).
 */
#include "autoconfig.h"

#include "ctl_proto.h"
#include "log.h"
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

void ctl_reply(struct ctl_client *c, const char *json, size_t len)
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

void ctl_reply_error(struct ctl_client *c, const char *message)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	if (!g) {
		ctl_reply(c, "{\"ok\":false,\"error\":\"out of memory\"}", 35);
		return;
	}
	yajl_gen_map_open(g);
	yajl_gen_string(g, (const unsigned char *)CTL_KEY_OK, strlen(CTL_KEY_OK));
	yajl_gen_bool(g, 0);
	yajl_gen_string(g, (const unsigned char *)CTL_KEY_ERROR, strlen(CTL_KEY_ERROR));
	yajl_gen_string(g, (const unsigned char *)message, strlen(message));
	yajl_gen_map_close(g);
	const unsigned char *buf;
	size_t len;
	yajl_gen_get_buf(g, &buf, &len);
	ctl_reply(c, (const char *)buf, len);
	yajl_gen_free(g);
}

int ctl_defer(struct ctl_client *c)
{
	c->deferred = 1;
	return 0;
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
		sup_ctl_status(s, c);
	} else if (strcmp(name, CTL_CMD_HEALTH) == 0) {
		sup_ctl_health(s, c);
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
	int denied = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 || (cred.uid != 0 && cred.uid != geteuid());
	if (denied)
		log_warn(NULL, "control socket: refused a client of another user", LF_INT("uid", cl ? (int)cred.uid : -1),
		         LF_INT("peerPid", cl ? (int)cred.pid : -1));
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

struct control *control_open(struct event_base *base, struct supervisor *s, const char *path, char *err,
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
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
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
	ctl->listener = evconnlistener_new(base, accept_cb, ctl, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
	if (!ctl->listener) {
		snprintf(err, errlen, "control: cannot watch %s", path);
		close(fd);
		free(ctl);
		return NULL;
	}
	return ctl;
}

void control_close(struct control *ctl)
{
	if (!ctl)
		return;
	while (ctl->clients)
		client_free(ctl->clients);
	evconnlistener_free(ctl->listener);
	unlink(ctl->path);
	free(ctl);
}
