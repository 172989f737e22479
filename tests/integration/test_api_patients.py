"""Black-box tests of /api/patients and POST /api/patients/:id/sync (SPEC
section 6) against a real resild, on the embedded SQLite store and on the
MongoDB wire-protocol test double.

The external patient records API is faked by an http.server on 127.0.0.1 in
a thread of this process; its answer depends on the externalId asked for
(see FakeApi.answer). Failure scenarios run on their own single-worker
resild so the per-worker "external-api" circuit breaker starts closed and
counts only that scenario's calls."""
import http.server
import json
import os
import re
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(__file__))
from harness import run_tests  # noqa: E402
from test_api_posts import HEX24, ISO, assert_error, assert_validation, backend_server, call, register  # noqa: E402

API_KEY = "ext-key-7f3a9c1e5b"
SSN = "078-05-1120"
RECORD = "MR-CONFIDENTIAL-4242 allergic to penicillin"
EXT_RECORD = "EXT-MR-SECRET-9911 synced history"
FULL = {"id", "_id", "name", "email", "dateOfBirth", "status", "ssn", "medicalRecord", "externalId", "createdAt", "updatedAt"}


class FakeApi:
    """The external patient records API: GET /patients/<externalId>."""

    def __init__(self):
        self.calls = []  # (externalId, Authorization header)
        self.headers = []  # (externalId, {lower-case header name: value}) per call
        self.lock = threading.Lock()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = urllib.parse.unquote(self.path)
                ext = path[len("/patients/"):] if path.startswith("/patients/") else None
                with api.lock:
                    api.calls.append((ext, self.headers.get("Authorization")))
                    api.headers.append((ext, {k.lower(): v for k, v in self.headers.items()}))
                    n = sum(1 for c in api.calls if c[0] == ext)
                status, headers, body = api.answer(ext, n)
                if status is None:
                    return  # connection dropped
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout tests)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def answer(ext, n):
        good = {"name": "Synced Name", "email": "Synced@Example.org", "dateOfBirth": "1980-05-06",
                "status": "inactive", "medicalRecord": EXT_RECORD, "ssn": "999-99-9999", "role": "admin",
                "_id": "000000000000000000000000", "unknown": {"$set": 1}}
        if ext in ("ok-1", "ok-2", "ok-3", "ok-trace"):
            return 200, {}, good
        if ext == "wrapped":
            return 200, {}, {"data": {"name": "Wrapped Name", "status": "discharged"}}
        if ext == "bad-fields":
            return 200, {}, {"name": "", "status": "deceased", "email": {"$gt": ""}, "dateOfBirth": "2999-01-01",
                             "medicalRecord": "fine record"}
        if ext == "not-json":
            return 200, {}, b"<html>hello</html>"
        if ext == "missing":
            return 404, {}, {"error": "no such patient"}
        if ext == "unauthorized":
            return 401, {}, {"error": "bad key"}
        if ext == "limited-once":
            return (429, {"Retry-After": "1"}, {}) if n == 1 else (200, {}, {"name": "After Wait"})
        if ext == "limited-long":
            return 429, {"Retry-After": "120"}, {}
        if ext in ("flaky", "flaky-trace"):
            return (503, {}, {}) if n == 1 else (200, {}, {"name": "Flaky Recovered"})
        if ext == "boom":
            return 500, {}, {"error": "boom"}
        if ext == "slow":
            time.sleep(1.6)
            return 200, {}, {"name": "Too Late"}
        return 400, {}, {"error": "unexpected"}

    def count(self, ext):
        with self.lock:
            return sum(1 for c in self.calls if c[0] == ext)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def new_patient(srv, token, **fields):
    body = {"name": "Pat Doe", "email": "Pat.Doe@Example.com", "dateOfBirth": "1975-03-14", "ssn": SSN,
            "medicalRecord": RECORD}
    body.update(fields)
    body = {k: v for k, v in body.items() if v is not None}
    st, _, doc = call(srv, "POST", "/api/patients", body, token)
    assert st == 201, (st, doc)
    # Newest first orders by createdAt (ms): patients made in the same
    # millisecond by different workers tie (see README "API notes").
    time.sleep(0.003)
    return doc["data"]


def sync(srv, token, pid):
    t0 = time.time()
    st, h, doc = call(srv, "POST", "/api/patients/%s/sync" % pid, token=token)
    return st, h, doc, time.time() - t0


def assert_no_secrets_logged(srv):
    logs = srv.logs()
    for secret in (SSN, RECORD, EXT_RECORD, API_KEY, "999-99-9999"):
        assert secret not in logs, "log contains %r" % secret


class Env:
    """resild (2 workers) on one backend, the fake API, an admin, a nurse
    (role clinician, set by the admin) and a visitor (role user)."""

    def __init__(self, backend, api):
        self.backend = backend
        self.api = api
        env = {"RESIL_EXTERNAL_API_URL": api.url + "/", "RESIL_EXTERNAL_API_KEY": API_KEY,
               "RESIL_EXTERNAL_API_TIMEOUT": "1s"}
        self.srv, self.md = backend_server(backend, "patients", workers=2, env=env)
        try:
            self.admin, _ = register(self.srv, "admin")
            _, nurse = register(self.srv, "nurse")
            st, _, doc = call(self.srv, "PATCH", "/api/users/%s" % nurse["id"], {"role": "clinician"}, self.admin)
            assert st == 200 and doc["data"]["role"] == "clinician", doc
            # A token carries no authority: the role is read from the database.
            st, _, doc = self.srv.json("POST", "/api/auth/login",
                                       {"email": "nurse@example.com", "password": "pw-nurse-secret"})
            assert st == 200, doc
            self.nurse = doc["data"]["token"]
            self.visitor, _ = register(self.srv, "visitor")
        except Exception:
            self.close()
            raise

    def close(self):
        try:
            self.srv.assert_clean_exit()
        finally:
            self.srv.cleanup()
            if self.md:
                self.md.close()


# ---------------------------------------------------------------- CRUD checks

def check_admin_creates_a_patient_and_reads_it_back(e):
    st, _, doc = call(e.srv, "POST", "/api/patients",
                      {"name": "Ann Lee", "email": "Ann.Lee@Example.COM", "dateOfBirth": "1990-02-28", "ssn": SSN,
                       "medicalRecord": RECORD, "externalId": "ok-1", "role": "x", "createdAt": "1999"}, e.admin)
    assert st == 201, (st, doc)
    p = doc["data"]
    assert set(p) == FULL, p
    assert HEX24.match(p["id"]) and ISO.match(p["createdAt"]) and ISO.match(p["updatedAt"]), p
    assert p["email"] == "ann.lee@example.com" and p["status"] == "active", p
    assert (p["ssn"], p["medicalRecord"], p["externalId"]) == (SSN, RECORD, "ok-1"), p
    for token in (e.admin, e.nurse):
        st, _, doc = call(e.srv, "GET", "/api/patients/%s" % p["id"], token=token)
        assert st == 200 and doc["data"] == p, (st, doc)
    # Only name and email are required; status may be given.
    st, _, doc = call(e.srv, "POST", "/api/patients", {"name": "Min", "email": "min@example.com",
                                                       "status": "discharged"}, e.admin)
    assert st == 201 and doc["data"]["status"] == "discharged", doc
    assert "ssn" not in doc["data"] and "dateOfBirth" not in doc["data"], doc


def check_fields_are_validated(e):
    base = {"name": "Val Id", "email": "val@example.com"}
    cases = [
        ({"email": "a@b.org"}, "name"),
        ({"name": "No Mail"}, "email"),
        (dict(base, name=""), "name"),
        (dict(base, name="x" * 101), "name"),
        (dict(base, name={"$gt": ""}), "name"),
        (dict(base, email="not-an-email"), "email"),
        (dict(base, email={"$ne": None}), "email"),
        (dict(base, dateOfBirth="2020-02-30"), "dateOfBirth"),
        (dict(base, dateOfBirth="1990-1-1"), "dateOfBirth"),
        (dict(base, dateOfBirth="2999-01-01"), "dateOfBirth"),
        (dict(base, dateOfBirth=19900101), "dateOfBirth"),
        (dict(base, status="deceased"), "status"),
        (dict(base, status=["active"]), "status"),
        (dict(base, ssn="1" * 21), "ssn"),
        (dict(base, ssn=123456789), "ssn"),
        (dict(base, medicalRecord="x" * 10001), "medicalRecord"),
        (dict(base, externalId=""), "externalId"),
        (dict(base, externalId="x" * 101), "externalId"),
    ]
    for body, field in cases:
        st, _, doc = call(e.srv, "POST", "/api/patients", body, e.admin)
        assert_validation(st, doc, field)
    st, _, doc = call(e.srv, "POST", "/api/patients", {}, e.admin)
    fields = {d["field"] for d in doc["details"]}
    assert st == 400 and {"name", "email"} <= fields, doc
    # Edges that are valid.
    p = new_patient(e.srv, e.admin, name="x" * 100, dateOfBirth="2000-02-29", ssn="1" * 20,
                    medicalRecord="y" * 10000, externalId="z" * 100)
    assert len(p["medicalRecord"]) == 10000


def check_writes_are_admin_only_and_reads_need_a_token(e):
    p = new_patient(e.srv, e.admin)
    pid = p["id"]
    writes = (("POST", "/api/patients", {"name": "N", "email": "n@example.com"}),
              ("PATCH", "/api/patients/%s" % pid, {"name": "N"}),
              ("DELETE", "/api/patients/%s" % pid, None),
              ("POST", "/api/patients/%s/sync" % pid, None))
    for method, path, body in writes:
        st, _, doc = call(e.srv, method, path, body, e.nurse)
        assert_error(st, doc, 403, "FORBIDDEN")
    for method, path, body in writes + (("GET", "/api/patients", None), ("GET", "/api/patients/%s" % pid, None)):
        st, _, doc = call(e.srv, method, path, body)
        assert_error(st, doc, 401, "UNAUTHORIZED")
        st, _, doc = call(e.srv, method, path, body, "garbage.token.here")
        assert_error(st, doc, 403, "FORBIDDEN")
    st, _, doc = call(e.srv, "GET", "/api/patients/%s" % pid, token=e.nurse)
    assert st == 200 and doc["data"]["name"] == "Pat Doe", doc
    # Patient data is for clinicians and admins only (SPEC section 6).
    for method, path, body in writes + (("GET", "/api/patients", None), ("GET", "/api/patients/%s" % pid, None)):
        st, _, doc = call(e.srv, method, path, body, e.visitor)
        assert_error(st, doc, 403, "FORBIDDEN")
        assert SSN not in json.dumps(doc) and RECORD not in json.dumps(doc)


def check_list_omits_ssn_and_medical_record_newest_first(e):
    made = [new_patient(e.srv, e.admin, name="List %d" % i, status="inactive")["id"] for i in range(3)]
    st, _, doc = call(e.srv, "GET", "/api/patients?status=inactive&limit=100", token=e.nurse)
    assert st == 200, (st, doc)
    ids = [p["id"] for p in doc["data"]]
    assert ids[:3] == made[::-1], (ids, made)
    for p in doc["data"]:
        assert "ssn" not in p and "medicalRecord" not in p, p
        assert p["status"] == "inactive" and {"id", "name", "email", "createdAt", "updatedAt"} <= set(p), p
    assert doc["pagination"]["total"] == len(ids) and doc["pagination"]["page"] == 1, doc
    assert SSN not in json.dumps(doc) and RECORD not in json.dumps(doc)


def check_pagination_edges(e):
    st, _, doc = call(e.srv, "GET", "/api/patients?limit=1&page=1", token=e.admin)
    assert st == 200 and len(doc["data"]) == 1, doc
    total = doc["pagination"]["total"]
    assert doc["pagination"] == {"page": 1, "limit": 1, "total": total, "pages": total}, doc
    st, _, doc = call(e.srv, "GET", "/api/patients?limit=2&page=%d" % (total + 5), token=e.admin)
    assert st == 200 and doc["data"] == [] and doc["pagination"]["total"] == total, doc
    st, _, doc = call(e.srv, "GET", "/api/patients", token=e.admin)
    assert doc["pagination"]["limit"] == 25, doc
    for q in ("limit=0", "limit=101", "limit=abc", "page=0", "page=abc", "limit=5&limit=6"):
        st, _, doc = call(e.srv, "GET", "/api/patients?" + q, token=e.admin)
        assert st == 400 and doc["code"] == "VALIDATION_ERROR", (q, doc)


def check_status_filter_resists_operator_injection(e):
    st, _, every = call(e.srv, "GET", "/api/patients?limit=100", token=e.admin)
    for q in ("status[$ne]=x", "status%5B%24ne%5D=active", "status.%24gt="):
        st, _, doc = call(e.srv, "GET", "/api/patients?limit=100&" + q, token=e.admin)
        assert st == 200 and doc["pagination"]["total"] == every["pagination"]["total"], (q, doc)
    for q in ('status={"$ne":null}', "status=active&status=inactive", "status=", "status=ACTIVE"):
        st, _, doc = call(e.srv, "GET", "/api/patients?" + urllib.parse.quote(q, safe="=&"), token=e.admin)
        assert_validation(st, doc, "status")
    st, _, doc = call(e.srv, "GET", "/api/patients?status=discharged&limit=100", token=e.admin)
    assert st == 200 and all(p["status"] == "discharged" for p in doc["data"]) and doc["data"], doc


def check_unknown_and_ill_formed_ids_are_404(e):
    for pid in ("0" * 24, "nope", "%7B%22%24gt%22%3A%22%22%7D", "g" * 24):
        for method, path, body in (("GET", "", None), ("PATCH", "", {"name": "x"}), ("DELETE", "", None),
                                   ("POST", "/sync", None)):
            st, _, doc = call(e.srv, method, "/api/patients/%s%s" % (pid, path), body, e.admin)
            assert_error(st, doc, 404, "NOT_FOUND")


def check_admin_patches_and_deletes(e):
    p = new_patient(e.srv, e.admin)
    st, _, doc = call(e.srv, "PATCH", "/api/patients/%s" % p["id"], {"status": "discharged", "email": "NEW@x.org",
                                                                      "ssn": None}, e.admin)
    assert st == 200, (st, doc)
    q = doc["data"]
    assert (q["status"], q["email"], q["ssn"], q["name"]) == ("discharged", "new@x.org", SSN, "Pat Doe"), q
    assert q["createdAt"] == p["createdAt"] and q["id"] == p["id"], q
    for body, field in (({}, "body"), ({"status": "gone"}, "status"), ({"name": ""}, "name"),
                        ({"dateOfBirth": "2999-12-31"}, "dateOfBirth"), ({"email": ["a@b.c"]}, "email")):
        st, _, doc = call(e.srv, "PATCH", "/api/patients/%s" % p["id"], body, e.admin)
        assert_validation(st, doc, field)
    st, _, data = e.srv.request("DELETE", "/api/patients/%s" % p["id"], headers={"Authorization": "Bearer " + e.admin})
    assert st == 204 and data == b"", (st, data)
    st, _, doc = call(e.srv, "GET", "/api/patients/%s" % p["id"], token=e.admin)
    assert_error(st, doc, 404, "NOT_FOUND")


# ---------------------------------------------------------------- sync checks

def check_sync_merges_known_valid_fields(e):
    p = new_patient(e.srv, e.admin, externalId="ok-2")
    before = e.api.count("ok-2")
    st, _, doc, _ = sync(e.srv, e.admin, p["id"])
    assert st == 200, (st, doc)
    q = doc["data"]
    assert set(q) == FULL, q
    assert (q["name"], q["email"], q["dateOfBirth"], q["status"], q["medicalRecord"]) == \
        ("Synced Name", "synced@example.org", "1980-05-06", "inactive", EXT_RECORD), q
    assert q["ssn"] == SSN and q["id"] == p["id"] and q["externalId"] == "ok-2", q  # ssn is not synced
    assert e.api.count("ok-2") == before + 1
    assert ("ok-2", "Bearer " + API_KEY) in e.api.calls
    st, _, doc = call(e.srv, "GET", "/api/patients/%s" % p["id"], token=e.admin)
    assert doc["data"] == q, doc
    assert "role" not in q and "unknown" not in q


def check_sync_reads_a_data_wrapper_and_skips_invalid_fields(e):
    p = new_patient(e.srv, e.admin, externalId="wrapped")
    st, _, doc, _ = sync(e.srv, e.admin, p["id"])
    assert st == 200 and doc["data"]["name"] == "Wrapped Name" and doc["data"]["status"] == "discharged", doc
    p = new_patient(e.srv, e.admin, externalId="bad-fields")
    st, _, doc, _ = sync(e.srv, e.admin, p["id"])
    assert st == 200, (st, doc)
    q = doc["data"]
    assert (q["name"], q["status"], q["email"], q["dateOfBirth"]) == ("Pat Doe", "active", "pat.doe@example.com",
                                                                      "1975-03-14"), q
    assert q["medicalRecord"] == "fine record", q
    p = new_patient(e.srv, e.admin, externalId="not-json")
    st, _, doc, _ = sync(e.srv, e.admin, p["id"])
    assert_error(st, doc, 503, "SERVICE_UNAVAILABLE")


def check_sync_maps_external_404_and_rejections(e):
    p = new_patient(e.srv, e.admin, externalId="missing")
    st, _, doc, _ = sync(e.srv, e.admin, p["id"])
    assert_error(st, doc, 404, "NOT_FOUND")
    assert e.api.count("missing") == 1  # a 404 is not retried
    p = new_patient(e.srv, e.admin, externalId="unauthorized")
    st, _, doc, _ = sync(e.srv, e.admin, p["id"])
    assert_error(st, doc, 503, "SERVICE_UNAVAILABLE")
    assert e.api.count("unauthorized") == 1  # other 4xx: no retry


def check_sync_needs_an_external_id(e):
    p = new_patient(e.srv, e.admin)
    st, _, doc, _ = sync(e.srv, e.admin, p["id"])
    assert_validation(st, doc, "externalId")


def check_sync_honours_retry_after_then_succeeds(e):
    p = new_patient(e.srv, e.admin, externalId="limited-once")
    st, _, doc, took = sync(e.srv, e.admin, p["id"])
    assert st == 200 and doc["data"]["name"] == "After Wait", (st, doc)
    assert e.api.count("limited-once") == 2
    assert took >= 0.9, took  # waited for Retry-After: 1


def check_sync_gives_up_when_retry_after_exceeds_the_budget(e):
    p = new_patient(e.srv, e.admin, externalId="limited-long")
    st, h, doc, took = sync(e.srv, e.admin, p["id"])
    assert_error(st, doc, 503, "SERVICE_UNAVAILABLE")
    assert took < 5 and e.api.count("limited-long") == 1, (took, e.api.count("limited-long"))
    assert int(h["retry-after"]) >= 1, h


def check_sync_retries_a_transient_failure(e):
    p = new_patient(e.srv, e.admin, externalId="flaky")
    st, _, doc, _ = sync(e.srv, e.admin, p["id"])
    assert st == 200 and doc["data"]["name"] == "Flaky Recovered", (st, doc)
    assert e.api.count("flaky") == 2


TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$")


def check_sync_propagates_trace_context_and_request_id(e):
    p = new_patient(e.srv, e.admin, externalId="flaky-trace")
    trace, span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    st, h, doc = call(e.srv, "POST", "/api/patients/%s/sync" % p["id"], token=e.admin,
                      headers={"traceparent": "00-%s-%s-01" % (trace, span)})
    assert st == 200, (st, doc)
    with e.api.lock:
        seen = [hd for ext, hd in e.api.headers if ext == "flaky-trace"]
    assert len(seen) == 2, seen  # one failure, one retry
    spans = set()
    for hd in seen:
        m = TRACEPARENT.match(hd.get("traceparent", ""))
        assert m, hd
        assert m.group(1) == trace and m.group(2) != span, hd
        spans.add(m.group(2))
        assert hd.get("x-request-id") and hd["x-request-id"] == h["x-request-id"], (hd, h)
    assert len(spans) == 2, seen  # a new span per attempt
    # Without an incoming traceparent a trace id is made up, the same for every attempt.
    p = new_patient(e.srv, e.admin, externalId="ok-trace")
    st, h, doc = call(e.srv, "POST", "/api/patients/%s/sync" % p["id"], token=e.admin)
    assert st == 200, (st, doc)
    with e.api.lock:
        seen = [hd for ext, hd in e.api.headers if ext == "ok-trace"]
    assert len(seen) == 1 and TRACEPARENT.match(seen[0].get("traceparent", "")), seen
    assert seen[0]["x-request-id"] == h["x-request-id"], (seen, h)
    lines = [l for l in e.srv.log_lines() if l.get("message") == "external api call"]
    assert lines and all(isinstance(l.get("durationMs"), int) and l["durationMs"] >= 0 for l in lines), lines[-3:]


def check_logs_hold_no_patient_secrets_or_api_key(e):
    assert_no_secrets_logged(e.srv)
    assert any(l.get("message") == "patient synced" for l in e.srv.log_lines())


def check_health_lists_the_external_api_circuit(e):
    st, _, doc = call(e.srv, "GET", "/health")
    assert st == 200 and doc["checks"]["circuits"]["external-api"] == "closed", doc


CHECKS = [v for k, v in list(globals().items()) if k.startswith("check_")]


def run_checks(backend):
    api = FakeApi()
    e = Env(backend, api)
    failed = []
    try:
        for chk in CHECKS:
            t0 = time.time()
            try:
                chk(e)
                print("  ok   %s %s (%.2fs)" % (backend, chk.__name__[6:], time.time() - t0), flush=True)
            except Exception as ex:
                failed.append(chk.__name__)
                print("  FAIL %s %s: %r" % (backend, chk.__name__[6:], ex), flush=True)
                import traceback
                traceback.print_exc()
    finally:
        e.close()
        api.close()
    assert not failed, "failed on %s: %s" % (backend, ", ".join(failed))


def failure_server(backend, api, timeout="1s"):
    env = {"RESIL_EXTERNAL_API_URL": api.url, "RESIL_EXTERNAL_API_KEY": API_KEY, "RESIL_EXTERNAL_API_TIMEOUT": timeout}
    srv, md = backend_server(backend, "patients_fail", workers=1, env=env)
    try:
        token, _ = register(srv, "admin")
    except Exception:
        srv.cleanup()
        if md:
            md.close()
        raise
    return srv, md, token


def close_server(srv, md):
    try:
        srv.assert_clean_exit()
    finally:
        srv.cleanup()
        if md:
            md.close()


def check_5xx_is_retried_then_503_and_opens_the_breaker(backend):
    api = FakeApi()
    srv, md, token = failure_server(backend, api)
    try:
        p = new_patient(srv, token, externalId="boom")
        st, _, doc, _ = sync(srv, token, p["id"])
        assert_error(st, doc, 503, "SERVICE_UNAVAILABLE")
        assert api.count("boom") == 4  # 1 + 3 retries
        # The 5th failure reaches the breaker's volume at 100% failures: it
        # opens and the rest of that request's retries are refused.
        st, _, doc, _ = sync(srv, token, p["id"])
        assert_error(st, doc, 503, "CIRCUIT_OPEN")
        assert api.count("boom") == 5, api.count("boom")
        # Open: answered at once, without calling the external API, with the
        # stored patient as the fallback.
        st, h, doc, took = sync(srv, token, p["id"])
        assert_error(st, doc, 503, "CIRCUIT_OPEN")
        assert doc["fallback"] is True and doc["data"]["id"] == p["id"] and doc["data"]["name"] == "Pat Doe", doc
        assert took < 3 and api.count("boom") == 5, (took, api.count("boom"))
        st, _, health = call(srv, "GET", "/health")
        assert health["checks"]["circuits"]["external-api"] == "open", health
        assert any(l.get("message") == "circuit breaker opened" and l.get("circuit") == "external-api"
                   for l in srv.log_lines())
        assert_no_secrets_logged(srv)
    finally:
        close_server(srv, md)
        api.close()


def check_timeouts_are_retried_then_503(backend):
    api = FakeApi()
    srv, md, token = failure_server(backend, api, timeout="1s")
    try:
        p = new_patient(srv, token, externalId="slow")
        st, _, doc, took = sync(srv, token, p["id"])
        assert_error(st, doc, 503, "SERVICE_UNAVAILABLE")
        assert api.count("slow") == 4, api.count("slow")
        assert 3.9 <= took < 10, took  # four 1 s attempts plus short backoffs
        st, _, doc = call(srv, "GET", "/api/patients/%s" % p["id"], token=token)
        assert doc["data"]["name"] == "Pat Doe", doc  # nothing merged
        assert_no_secrets_logged(srv)
    finally:
        close_server(srv, md)
        api.close()


def check_sync_without_a_configured_url_is_503(backend):
    srv, md = backend_server(backend, "patients_nourl", workers=1)
    try:
        token, _ = register(srv, "admin")
        p = new_patient(srv, token, externalId="ok-3")
        st, _, doc, _ = sync(srv, token, p["id"])
        assert_error(st, doc, 503, "SERVICE_UNAVAILABLE")
        assert_no_secrets_logged(srv)
    finally:
        close_server(srv, md)


FAILURE_CHECKS = [check_5xx_is_retried_then_503_and_opens_the_breaker, check_timeouts_are_retried_then_503,
                  check_sync_without_a_configured_url_is_503]


def make_test(backend):
    def test():
        run_checks(backend)
        failed = []
        for chk in FAILURE_CHECKS:
            t0 = time.time()
            try:
                chk(backend)
                print("  ok   %s %s (%.2fs)" % (backend, chk.__name__[6:], time.time() - t0), flush=True)
            except Exception as ex:
                failed.append(chk.__name__)
                print("  FAIL %s %s: %r" % (backend, chk.__name__[6:], ex), flush=True)
                import traceback
                traceback.print_exc()
        assert not failed, "failed on %s: %s" % (backend, ", ".join(failed))
    test.__name__ = "test_patients_api_on_%s" % backend
    return test


if __name__ == "__main__":
    run_tests([make_test("sqlite"), make_test("mongodb")])
