/* patients.h - what the patient routes (patients.c) and the external sync
 * (patient_sync.c) share: field validation, the record's stored fields and
 * its one wire format.
 */
#ifndef RESIL_PATIENTS_H
#define RESIL_PATIENTS_H

#include "app.h"
#include "validate.h"

#include <bson/bson.h>
#include <stdbool.h>

/* Fields the external API may change (name, email, dateOfBirth, status,
 * medicalRecord), with the same limits as a PATCH. */
extern const struct vrule patient_sync_rules[];

/* Validate body against rules, plus: a date of birth may not be in the
 * future. Returns the number of errors in e. */
int patient_check(const struct json_value *body, const struct vrule *rules, struct verrors *e);
/* Append the string fields named by rules that are present in obj and have
 * no entry in e (the email lower-cased). 0 or -1 (out of memory). */
int patient_append_fields(bson_t *doc, const struct json_value *obj, const struct vrule *rules,
                          const struct verrors *e);
/* The one wire format of a patient record; with full false (lists) ssn and
 * medicalRecord are left out. */
void patients_gen(void *yajl_gen, const bson_t *patient, bool full);
/* Answer status with {"success":true,"data":<full record>}. */
void patients_send(struct http_request *req, int status, const bson_t *patient);

/* POST /api/patients/:id/sync (patient_sync.c). */
int patient_sync_route(struct http_request *req);
/* The "external-api" breaker: set up at route registration, torn down by
 * patient_sync_stop (which answers syncs still waiting with 503). */
int patient_sync_init(void);
void patient_sync_stop(void);

#endif
