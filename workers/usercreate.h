/* usercreate.h - `resilctl user create` (SPEC sections 4 and 6): the
 * operator creates a user with any role, admin included, locally through
 * the control socket. In production this is the only way to an admin.
 *
 * Two halves, so that the supervisor never opens the store (its handles,
 * pools and threads exist only after a fork):
 *   - usercreate_check() runs in the supervisor: the same field rules as
 *     POST /api/auth/register (users_new_rules) plus the role, no I/O;
 *   - usercreate_run() runs in a short-lived helper process the supervisor
 *     forks (supervisor/usercmd.c): it opens the store the way a worker
 *     does (api_open_store), hashes the password with argon2id, inserts the
 *     user, appends a user.create record to the audit trail, and reports
 *     one line on a pipe, which usercreate_answer() reads in the supervisor.
 * The password lives only in struct usercreate_req and is wiped after use;
 * nothing here logs it or the e-mail.
 */
#ifndef RESIL_USERCREATE_H
#define RESIL_USERCREATE_H

#include "handlers.h"

#include <stddef.h>

struct resil_config;

struct usercreate_req {
	char email[256]; /* lower-cased */
	char username[32];
	char role[16];
	char pw[PW_MAX_BYTES + 1];
	size_t pwlen;
};

/* Longest line usercreate_run() writes (with its newline). */
#define USERCREATE_ANSWER_MAX 256

/* Check the four fields (any may be NULL: "<field> is required") and fill
 * *out. 0, or -1 with one line naming every bad field in err. */
int usercreate_check(const char *email, const char *username, const char *role, const char *password,
                     struct usercreate_req *out, char *err, size_t errlen);

/* Erase the request (the password) from memory. */
void usercreate_wipe(struct usercreate_req *r);

/* In the helper process: create the user described by req (wiped on
 * return) in cfg's database and write the outcome as one line to fd.
 * Returns the process exit status (0 when a line was written). */
int usercreate_run(const struct resil_config *cfg, struct usercreate_req *req, int fd);

/* Read the helper's line (len bytes, no NUL needed): 0 and the new id in
 * id, or -1 and the reason in err ("a user with this email already
 * exists", ...). */
int usercreate_answer(const char *line, size_t len, char id[25], char *err, size_t errlen);

#endif
