/* audit.c - the audit trail of patient data (see audit.h). */
#include "autoconfig.h"

#include "audit.h"

#include "authmw.h"
#include "clock.h"
#include "config.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <yajl/yajl_gen.h>

#define AUDIT_PATH_MAX 1100

static int g_fd = -1;
static pthread_mutex_t g_open_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_sync; /* fdatasync after each record (db_sync=full) */
static char g_path[AUDIT_PATH_MAX];

/* RESIL_AUDIT_LOG, else audit.log beside the SQLite file, else in the
 * working directory. */
static void resolve_path(const struct resil_config *cfg)
{
	if (cfg->audit_log[0]) {
		snprintf(g_path, sizeof(g_path), "%s", cfg->audit_log);
		return;
	}
	const char *db = cfg->db;
	if (strncmp(db, "sqlite:", 7) == 0) {
		db += 7;
		if (strncmp(db, "//", 2) == 0)
			db += 2;
		const char *slash = strrchr(db, '/');
		if (slash) {
			snprintf(g_path, sizeof(g_path), "%.*s/audit.log", (int)(slash - db), db);
			return;
		}
	}
	snprintf(g_path, sizeof(g_path), "audit.log");
}

static int open_file(void)
{
	return open(g_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
}

int audit_open(const struct resil_config *cfg, char *err, size_t errlen)
{
	resolve_path(cfg);
	g_sync = cfg->db_sync == CONFIG_DB_SYNC_FULL;
	g_fd = open_file();
	if (g_fd < 0) {
		/* Not fatal: the directory may not exist yet (the store creates
		 * it) or come back later. Until the file opens, routes that must
		 * audit answer 503 and disclose nothing; each record retries. */
		snprintf(err, errlen, "audit_log: cannot open %s: %s", g_path, strerror(errno));
		return -1;
	}
	return 0;
}

/* The descriptor, opening the file if an earlier attempt failed. */
static int audit_fd(void)
{
	int fd = __atomic_load_n(&g_fd, __ATOMIC_ACQUIRE);
	if (fd >= 0 || !g_path[0])
		return fd;
	if (pthread_mutex_lock(&g_open_lock) != 0)
		return -1;
	if (g_fd < 0) {
		fd = open_file();
		if (fd >= 0)
			__atomic_store_n(&g_fd, fd, __ATOMIC_RELEASE);
	}
	fd = g_fd;
	pthread_mutex_unlock(&g_open_lock);
	return fd;
}

int audit_reopen(void)
{
	if (g_fd < 0)
		return audit_fd() < 0 && g_path[0] ? -1 : 0;
	int fd = open_file();
	if (fd < 0)
		return -1;
	/* dup2 swaps the file under the same descriptor number: a pool thread
	 * writing now lands in the old file or the new one, never nowhere. */
	int rc = dup2(fd, g_fd) < 0 ? -1 : 0;
	close(fd);
	return rc;
}

void audit_close(void)
{
	if (g_fd >= 0)
		close(g_fd);
	g_fd = -1;
}

static void gen_str(yajl_gen g, const char *key, const char *val)
{
	yajl_gen_string(g, (const unsigned char *)key, strlen(key));
	if (val)
		yajl_gen_string(g, (const unsigned char *)val, strlen(val));
	else
		yajl_gen_null(g);
}

int audit_write(const struct audit_rec *r)
{
	int fd = audit_fd();
	if (fd < 0) {
		log_error(NULL, "cannot write the audit trail", LF_STR("file", g_path),
		          LF_STR("error", strerror(errno)));
		return -1;
	}
	struct tm tm;
	char when[40];
	int64_t ms = clock_real_ms();
	time_t secs = (time_t)(ms / 1000);
	gmtime_r(&secs, &tm);
	size_t n = strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(when + n, sizeof(when) - n, ".%03dZ", (int)(ms % 1000));
	yajl_gen g = yajl_gen_alloc(NULL);
	if (!g)
		return -1;
	yajl_gen_map_open(g);
	gen_str(g, "timestamp", when);
	gen_str(g, "requestId", r->request_id);
	gen_str(g, "actorId", r->actor_id);
	gen_str(g, "actorRole", r->actor_role);
	gen_str(g, "action", r->action);
	gen_str(g, "patientId", r->patient_id);
	yajl_gen_string(g, (const unsigned char *)"fields", 6);
	yajl_gen_array_open(g);
	for (const char *const *f = r->fields; f && *f; f++)
		yajl_gen_string(g, (const unsigned char *)*f, strlen(*f));
	yajl_gen_array_close(g);
	gen_str(g, "outcome", r->outcome);
	if (r->target_user_id)
		gen_str(g, "targetUserId", r->target_user_id);
	if (r->target_role)
		gen_str(g, "targetRole", r->target_role);
	yajl_gen_map_close(g);
	const unsigned char *buf;
	size_t len;
	int rc = -1;
	if (yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok) {
		char line[4096];
		if (len + 1 <= sizeof(line)) {
			memcpy(line, buf, len);
			line[len] = '\n';
			ssize_t w = write(fd, line, len + 1); /* one write: the line stays whole */
			rc = w == (ssize_t)(len + 1) && (!g_sync || fdatasync(fd) == 0) ? 0 : -1;
		}
	}
	yajl_gen_free(g);
	if (rc < 0)
		log_error(NULL, "cannot write the audit trail", LF_STR("file", g_path),
		          LF_STR("error", strerror(errno)));
	return rc;
}

void audit_actor_from(struct audit_actor *a, struct http_request *req)
{
	const struct principal *me = auth_principal(req);
	snprintf(a->request_id, sizeof(a->request_id), "%s", req->request_id);
	snprintf(a->id, sizeof(a->id), "%s", me ? me->id : "");
	snprintf(a->role, sizeof(a->role), "%s", me ? me->role : "");
	audit_mark_written(req); /* the job writes the record */
}

int audit_log_as(const struct audit_actor *a, const char *action, const char *patient_id, const char *const *fields,
                 const char *outcome)
{
	struct audit_rec r = {.request_id = a->request_id,
	                      .actor_id = a->id[0] ? a->id : NULL,
	                      .actor_role = a->role[0] ? a->role : NULL,
	                      .action = action,
	                      .patient_id = patient_id,
	                      .fields = fields,
	                      .outcome = outcome};
	return audit_write(&r);
}

int audit_role_change(const struct audit_actor *a, const char *target, const char *outcome)
{
	struct audit_rec r = {.request_id = a->request_id,
	                      .actor_id = a->id[0] ? a->id : NULL,
	                      .actor_role = a->role[0] ? a->role : NULL,
	                      .action = "user.role_change",
	                      .outcome = outcome,
	                      .target_user_id = target};
	return audit_write(&r);
}

int audit_user_create(const char *target, const char *role)
{
	struct audit_rec r = {.actor_role = "operator",
	                      .action = "user.create",
	                      .outcome = "success",
	                      .target_user_id = target,
	                      .target_role = role};
	return audit_write(&r);
}

/* ---- refused requests ----------------------------------------------------- */

struct audit_mark {
	int written;
	const char *action;
	void (*chained_free)(struct http_request *req);
};

static void mark_free(struct http_request *req)
{
	struct audit_mark *m = req->app_data[3];
	req->app_data[3] = NULL;
	if (m && !m->written && (req->res.status == 401 || req->res.status == 403)) {
		const struct principal *me = auth_principal(req);
		struct audit_rec r = {.request_id = req->request_id,
		                      .actor_id = me ? me->id : NULL,
		                      .actor_role = me ? me->role : NULL,
		                      .action = m->action,
		                      .outcome = "denied"};
		audit_write(&r);
	}
	if (m && m->chained_free)
		m->chained_free(req);
}

int mw_audit(struct http_request *req)
{
	struct audit_mark *m = http_alloc(req, sizeof(*m));
	if (!m)
		return app_fail(req, 503, "SERVICE_UNAVAILABLE", "service unavailable");
	memset(m, 0, sizeof(*m));
	m->action = req->method == HTTP_M_GET ? "patient.read" : "patient.write";
	m->chained_free = req->on_free;
	req->on_free = mark_free;
	req->app_data[3] = m;
	return APP_NEXT;
}

void audit_mark_written(struct http_request *req)
{
	struct audit_mark *m = req->app_data[3];
	if (m)
		m->written = 1;
}
