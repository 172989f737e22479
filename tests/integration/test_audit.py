#!/usr/bin/env python3
"""The audit trail of patient data (SPEC section 6, README "Security"): one
JSON line per patient list, read, write and refused request, written before
the answer; when it cannot be written the data is not sent (503)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import run_tests  # noqa: E402
from test_api_posts import backend_server, call, register  # noqa: E402

SSN = "078-05-1120"
RECORD = "MR-AUDIT-7731 allergic to latex"
KEYS = {"timestamp", "requestId", "actorId", "actorRole", "action", "patientId", "fields", "outcome"}


def clinician(srv, admin, name):
    """A registered user promoted to clinician by the admin, logged in again."""
    _, user = register(srv, name)
    st, _, doc = call(srv, "PATCH", "/api/users/%s" % user["id"], {"role": "clinician"}, admin)
    assert st == 200, doc
    st, _, doc = srv.json("POST", "/api/auth/login", {"email": "%s@example.com" % name, "password": "pw-%s-secret" % name})
    assert st == 200, doc
    return doc["data"]["token"], user["id"]


def records(path):
    with open(path) as f:
        lines = [json.loads(line) for line in f]
    for r in lines:
        extra = {"targetUserId"} if r.get("action") == "user.role_change" else set()
        assert set(r) == KEYS | extra, r
    return lines


def test_every_patient_access_is_audited_before_the_answer():
    srv, _ = backend_server("sqlite", "audit", env={"RESIL_AUDIT_LOG": "audit.log"})
    try:
        path = os.path.join(srv.dir, "audit.log")
        admin, admin_user = register(srv, "admin")
        nurse, nurse_id = clinician(srv, admin, "nurse")
        visitor, visitor_user = register(srv, "visitor")
        st, _, doc = call(srv, "POST", "/api/patients",
                          {"name": "Ann Lee", "email": "ann@example.com", "ssn": SSN, "medicalRecord": RECORD}, admin)
        assert st == 201, doc
        pid = doc["data"]["id"]
        st, h, doc = call(srv, "GET", "/api/patients/%s" % pid, token=nurse)
        assert st == 200 and doc["data"]["ssn"] == SSN, doc
        read_id = {k.lower(): v for k, v in h.items()}["x-request-id"]
        st, h, doc = call(srv, "GET", "/api/patients?limit=10", token=nurse)
        assert st == 200 and "ssn" not in doc["data"][0], doc
        list_id = {k.lower(): v for k, v in h.items()}["x-request-id"]
        st, _, _ = call(srv, "GET", "/api/patients/%s" % pid, token=visitor)
        assert st == 403
        st, _, _ = call(srv, "GET", "/api/patients/%s" % pid)
        assert st == 401
        st, _, _ = call(srv, "GET", "/api/patients/%s" % ("0" * 24), token=nurse)
        assert st == 404
        st, _, _ = call(srv, "DELETE", "/api/patients/%s" % pid, token=nurse)
        assert st == 403

        recs = records(path)
        by_req = {r["requestId"]: r for r in recs}
        r = by_req[read_id]
        assert (r["action"], r["patientId"], r["actorId"], r["actorRole"], r["outcome"]) == \
            ("patient.read", pid, nurse_id, "clinician", "success"), r
        assert sorted(r["fields"]) == ["medicalRecord", "ssn"], r
        r = by_req[list_id]
        assert (r["action"], r["patientId"], r["fields"], r["outcome"]) == ("patient.list", None, [], "success"), r
        actions = [(r["action"], r["actorRole"], r["outcome"]) for r in recs]
        assert [r["targetUserId"] for r in recs if r["action"] == "user.role_change"] == [nurse_id], recs
        assert ("patient.create", "admin", "success") in actions, actions
        assert ("patient.read", "user", "denied") in actions, actions
        assert ("patient.read", None, "denied") in actions, actions
        assert ("patient.read", "clinician", "not_found") in actions, actions
        assert ("patient.write", "clinician", "denied") in actions, actions
        # The trail never repeats the data itself.
        text = open(path).read()
        assert SSN not in text and RECORD not in text
        assert SSN not in srv.logs() and RECORD not in srv.logs()
        assert visitor_user["id"] and admin_user["id"]
    finally:
        srv.assert_clean_exit()
        srv.cleanup()


def test_no_phi_is_sent_when_the_audit_record_cannot_be_written():
    # /dev/full opens, but every write fails with ENOSPC.
    srv, _ = backend_server("sqlite", "audit_full", env={"RESIL_AUDIT_LOG": "/dev/full"})
    try:
        admin, _ = register(srv, "admin")
        st, _, doc = call(srv, "POST", "/api/patients",
                          {"name": "Ann Lee", "email": "ann@example.com", "ssn": SSN, "medicalRecord": RECORD}, admin)
        # The write landed but its record could not be written: 503, nothing disclosed.
        assert st == 503 and SSN not in json.dumps(doc) and RECORD not in json.dumps(doc), (st, doc)
        st, _, doc = call(srv, "GET", "/api/patients?limit=10", token=admin)
        assert st == 503 and doc["code"] == "SERVICE_UNAVAILABLE", doc
        assert "audit" in srv.logs()
    finally:
        srv.assert_clean_exit()
        srv.cleanup()


if __name__ == "__main__":
    sys.exit(run_tests([test_every_patient_access_is_audited_before_the_answer,
                        test_no_phi_is_sent_when_the_audit_record_cannot_be_written]))
