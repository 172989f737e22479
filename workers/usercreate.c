/* usercreate.c - an operator's `resilctl user create` (see usercreate.h).
 *
 * The helper's line on the pipe is one of
 *   "ok <24 hex id>"         the user is stored
 *   "dup <field>"            email or username already taken
 *   "fail <reason>"          anything else (database down, out of memory)
 * and nothing else: it carries no e-mail and no password.
 */
#include "autoconfig.h"

#include "usercreate.h"

#include "api.h"
#include "audit.h"
#include "auth.h"
#include "config.h"
#include "json.h"
#include "log.h"
#include "schema.h"
#include "store.h"

#include <errno.h>
#include <event2/event.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const struct vrule role_rules[] = {
    V_ENUM("role", V_REQUIRED, USERS_ROLES),
    V_END,
};

/* Add key = s (when s is not NULL) to obj. 0 or -1. */
static int set_str(struct json_value *obj, const char *key, const char *s)
{
	if (!s)
		return 0;
	struct json_value *v = json_new_string(s, strlen(s));
	if (!v || json_object_set(obj, key, strlen(key), v) < 0) {
		json_free(v);
		return -1;
	}
	return 0;
}

/* "email must be a valid email address; role must be one of: ..." */
static void join_errors(const struct verrors *e, char *err, size_t errlen, size_t *used)
{
	for (int i = 0; i < e->count; i++) {
		int n = snprintf(err + *used, errlen - *used, "%s%s", *used ? "; " : "", e->details[i].message);
		if (n < 0 || (size_t)n >= errlen - *used)
			return;
		*used += (size_t)n;
	}
}

int usercreate_check(const char *email, const char *username, const char *role, const char *password,
                     struct usercreate_req *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	struct json_value *body = json_new_object();
	if (!body || set_str(body, "email", email) < 0 || set_str(body, "username", username) < 0 ||
	    set_str(body, "role", role) < 0 || set_str(body, "password", password) < 0) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	struct verrors e1, e2;
	int bad = validate(body, users_new_rules, &e1) + validate(body, role_rules, &e2);
	if (bad > 0) {
		size_t used = 0;
		err[0] = '\0';
		join_errors(&e1, err, errlen, &used);
		join_errors(&e2, err, errlen, &used);
		goto fail;
	}
	size_t pwlen = strlen(password), ulen = strlen(username);
	if (pwlen > PW_MAX_BYTES || ulen >= sizeof(out->username) || strlen(role) >= sizeof(out->role) ||
	    users_email_lower(email, strlen(email), out->email, sizeof(out->email)) < 0) {
		snprintf(err, errlen, "a field is too long");
		goto fail;
	}
	memcpy(out->username, username, ulen + 1);
	memcpy(out->role, role, strlen(role) + 1);
	memcpy(out->pw, password, pwlen);
	out->pwlen = pwlen;
	const struct json_value *pv = json_get(body, "password");
	sodium_memzero(pv->s, pv->len);
	json_free(body);
	return 0;
fail:
	if (body) {
		const struct json_value *pw = json_get(body, "password");
		if (pw && pw->type == JSON_STRING)
			sodium_memzero(pw->s, pw->len);
		json_free(body);
	}
	usercreate_wipe(out);
	return -1;
}

void usercreate_wipe(struct usercreate_req *r)
{
	sodium_memzero(r, sizeof(*r));
}

/* "<kind> <arg>\n" */
static int write_line(int fd, const char *kind, const char *arg)
{
	char line[USERCREATE_ANSWER_MAX];
	int n = snprintf(line, sizeof(line), "%s %s\n", kind, arg);
	if (n < 0 || (size_t)n >= sizeof(line))
		return -1;
	const char *p = line;
	size_t left = (size_t)n;
	while (left > 0) {
		ssize_t w = write(fd, p, left);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		left -= (size_t)w;
	}
	return 0;
}

/* Hash, insert, audit; the outcome line for fd into line. */
static void create(const struct resil_config *cfg, struct usercreate_req *req, int fd)
{
	char hash[AUTH_HASH_MAX];
	int rc = auth_password_hash(req->pw, req->pwlen, hash);
	sodium_memzero(req->pw, sizeof(req->pw));
	if (rc < 0) {
		write_line(fd, "fail", "cannot hash the password (out of memory)");
		return;
	}
	struct store_op op;
	store_op_init(&op, STORE_OP_INSERT, COLL_USERS);
	op.doc = users_new_doc(req->username, req->email, hash, req->role);
	sodium_memzero(hash, sizeof(hash));
	if (!op.doc) {
		write_line(fd, "fail", "out of memory");
		return;
	}
	op.deadline_ms = jobs_now_ms() + (uint64_t)cfg->request_timeout_ms;
	enum store_err err = store_exec(api_store(), &op);
	bson_oid_t oid;
	char id[25];
	if (err == STORE_OK && api_doc_oid(op.result, "_id", &oid) == 0) {
		store_id_format(&oid, id);
		/* The user exists now whatever the trail says; a failed record
		 * is logged (audit_write) and the creation is in resild's log. */
		audit_user_create(id, req->role);
		write_line(fd, "ok", id);
	} else if (err == STORE_DUPLICATE_KEY && strcmp(op.dup_field, "username") == 0) {
		write_line(fd, "dup", "username");
	} else if (err == STORE_DUPLICATE_KEY) {
		write_line(fd, "dup", "email");
	} else {
		char why[96];
		if (err == STORE_UNAVAILABLE || err == STORE_TIMEOUT || err == STORE_CIRCUIT_OPEN || err == STORE_BUSY)
			snprintf(why, sizeof(why), "the database is unavailable (%s); nothing was created",
			         store_err_name(err));
		else
			snprintf(why, sizeof(why), "database error (%s; see resild's log)",
			         store_err_name(err == STORE_OK ? STORE_INTERNAL : err));
		log_error(NULL, "user create: the insert failed", LF_STR("error", store_err_name(err)));
		write_line(fd, "fail", why);
	}
	store_op_clear(&op);
}

int usercreate_run(const struct resil_config *cfg, struct usercreate_req *req, int fd)
{
	char err[512];
	int rc = 1;
	struct event_base *base = NULL;
	if (auth_init() < 0) {
		write_line(fd, "fail", "cannot initialise libsodium");
		goto out;
	}
	base = event_base_new();
	if (!base) {
		write_line(fd, "fail", "cannot create an event loop");
		goto out;
	}
	if (api_open_store(base, cfg, err, sizeof(err)) < 0) {
		log_error(NULL, "user create: cannot open the database", LF_STR("error", err));
		write_line(fd, "fail", "cannot open the database (see resild's log)");
		goto out;
	}
	if (audit_open(cfg, err, sizeof(err)) < 0)
		log_warn(NULL, "user create: cannot open the audit trail", LF_STR("error", err));
	create(cfg, req, fd);
	rc = 0;
	api_close_store();
	audit_close();
out:
	usercreate_wipe(req);
	if (base)
		event_base_free(base);
	return rc;
}

int usercreate_answer(const char *line, size_t len, char id[25], char *err, size_t errlen)
{
	char buf[USERCREATE_ANSWER_MAX];
	if (len >= sizeof(buf))
		len = sizeof(buf) - 1;
	memcpy(buf, line, len);
	buf[len] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	bson_oid_t oid;
	if (strncmp(buf, "ok ", 3) == 0 && store_id_parse(buf + 3, strlen(buf + 3), &oid) == 0) {
		store_id_format(&oid, id);
		return 0;
	}
	if (strncmp(buf, "dup ", 4) == 0)
		snprintf(err, errlen, "a user with this %s already exists", buf + 4);
	else if (strncmp(buf, "fail ", 5) == 0)
		snprintf(err, errlen, "%s", buf + 5);
	else
		snprintf(err, errlen, "the helper process gave no result");
	return -1;
}
