/* audit.h - the audit trail of patient data (SPEC section 6): one JSON line
 * per patient read, list, write, sync, role change and refused request,
 * appended to RESIL_AUDIT_LOG, separate from the application log.
 *
 *   {"timestamp","requestId","actorId","actorRole","action","patientId",
 *    "fields","outcome"}
 *
 * action: patient.list, patient.read, patient.create, patient.update,
 * patient.delete, patient.sync, user.role_change, user.create (an
 * operator's `resilctl user create`: actorId and requestId null, actorRole
 * "operator", plus targetUserId and targetRole); fields: the sensitive
 * fields the response disclosed (ssn, medicalRecord); outcome: success,
 * denied, not_found, failed.
 *
 * A record that discloses data is written before the response is sent, from
 * the route's job on the pool (never the loop): write(2) with O_APPEND, and
 * with db_sync=full also fdatasync(2). If it cannot be written the route
 * answers 503 and sends no data. Records of refused requests are written
 * when the refusal is answered. Every worker appends to the same file
 * (O_APPEND keeps lines whole); SIGUSR1 reopens it (logrotate).
 */
#ifndef RESIL_AUDIT_H
#define RESIL_AUDIT_H

#include "app.h"

struct resil_config;

struct audit_rec {
	const char *request_id;
	const char *actor_id;   /* NULL: anonymous */
	const char *actor_role; /* NULL: anonymous */
	const char *action;
	const char *patient_id;    /* NULL: none (a list) */
	const char *const *fields; /* NULL-terminated, may be NULL */
	const char *outcome;
	const char *target_user_id; /* user.role_change and user.create only, else NULL */
	const char *target_role;    /* user.create only, else NULL */
};

/* Who acts, copied from the request on the loop for a job to audit with. */
struct audit_actor {
	char request_id[130];
	char id[25];
	char role[16];
};
void audit_actor_from(struct audit_actor *a, struct http_request *req);
/* audit_write() with the actor's fields. */
int audit_log_as(const struct audit_actor *a, const char *action, const char *patient_id, const char *const *fields,
                 const char *outcome);

/* A role change of target (a user id): action user.role_change, with the
 * target as targetUserId (the one extra key, on these records only). */
int audit_role_change(const struct audit_actor *a, const char *target, const char *outcome);

/* The operator created user target with role (resilctl user create, from
 * the supervisor's helper process): action user.create, outcome success. */
int audit_user_create(const char *target, const char *role);

/* Open the trail (worker start, after fork). 0, or -1 with a reason. */
int audit_open(const struct resil_config *cfg, char *err, size_t errlen);
/* Reopen the file in place (SIGUSR1); writers on other threads keep going. */
int audit_reopen(void);
void audit_close(void);
/* Append one record (any thread). 0, or -1 when it could not be written. */
int audit_write(const struct audit_rec *r);
/* First in a patient route's chain: a request refused later in the chain
 * (401/403 from authentication or roles) leaves a "denied" record. */
int mw_audit(struct http_request *req);
/* The route wrote its own record: no "denied" one at the end. */
void audit_mark_written(struct http_request *req);

#endif
