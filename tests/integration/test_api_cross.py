"""Cross-cutting behaviour of the /api/ routes against a real resild:

* the shared per-IP rate limit with 2 workers (exactly N of N+k requests on
  fresh connections pass, 429 RATE_LIMITED with Retry-After for the rest,
  RateLimit-* headers on every /api/ response, /health exempt, a new window
  after the old one ends);
* security headers, CORS, 405 with Allow, 415, INVALID_JSON and the nesting
  limit on /api/ routes;
* the request deadline (RESIL_REQUEST_TIMEOUT=1s against a MongoDB test
  double that answers 2 s late: 504 TIMEOUT in time, the loop keeps serving);
* a database outage through HTTP (the double stopped: 503 DB_UNAVAILABLE,
  then 503 CIRCUIT_OPEN fast, /health degraded, /health/live fine; the
  double started again: recovery without restarting resild);
* no password, token, Authorization value, ssn or medicalRecord in any log
  line written during the suite, and e-mail addresses only masked.
"""
import http.client
import json
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Server, run_tests  # noqa: E402
from test_api_rooms import MongoDouble, register  # noqa: E402

SECURITY = {
    "content-security-policy", "cross-origin-opener-policy", "cross-origin-resource-policy",
    "origin-agent-cluster", "referrer-policy", "strict-transport-security", "x-content-type-options",
    "x-dns-prefetch-control", "x-download-options", "x-frame-options", "x-permitted-cross-domain-policies",
    "x-xss-protection",
}
ORIGIN = "https://app.example"
JWT_SECRET = "cross-suite-secret-0123456789abcdef0123456789"
# Everything secret that this suite sends; none of it may reach a log.
PASSWORDS = ["pw-erin-secret", "pw-frank-secret", "Wrong-Passw0rd!", "N3w-Passw0rd-xyz"]
SSN = "987-65-4321"
MEDICAL = "MRN-TOPSECRET-DIAGNOSIS-77"
TOKENS = []
LOGS = []  # (name, text) of every resild this suite started

SERVERS = {}
MD = None


SANITIZER_MARKERS = ("== ERROR SUMMARY", "definitely lost", "Invalid read", "Invalid write", "AddressSanitizer",
                     "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")


def finish(name, srv):
    """Stop srv (SIGTERM), keep its log and exit status for the final checks, clean up."""
    rc = srv.stop()
    LOGS.append((name, srv.logs(), rc))
    srv.cleanup()


def api_server():
    """SQLite, 2 workers, generous rate limit: headers, bodies, logs."""
    if "api" not in SERVERS:
        s = Server(workers=2, env={"RESIL_RATE_LIMIT": "100000/15m", "RESIL_CORS_ORIGINS": ORIGIN,
                                   "RESIL_JWT_SECRET": JWT_SECRET})
        SERVERS["api"] = s.start()
    return SERVERS["api"]


def double():
    global MD
    if MD is None:
        MD = MongoDouble()
    return MD


def timed(srv, method, path, body=None, headers=None):
    t0 = time.time()
    st, h, doc = srv.json(method, path, body, headers)
    return st, h, doc, time.time() - t0


def auth(token):
    return {"Authorization": "Bearer " + token}


# ---------------------------------------------------------------- rate limit

def test_rate_limit_is_shared_by_both_workers():
    srv = Server(workers=2, env={"RESIL_RATE_LIMIT": "20/5s"})
    srv.start()
    try:
        n, k = 20, 6
        results = []
        lock = threading.Lock()
        paths = ["/api/rooms", "/api/no-such-route"]

        def one(i):
            r = srv.request("GET", paths[i % 2], headers={"X-Request-ID": "rl%d-%d" % (attempt, i)})
            with lock:
                results.append(r)

        for attempt in range(3):
            del results[:]
            threads = [threading.Thread(target=one, args=(i,)) for i in range(n + k)]
            t0 = time.time()
            for i in range(0, len(threads), 4):  # bursts of 4 fresh connections
                batch = threads[i:i + 4]
                for t in batch:
                    t.start()
                for t in batch:
                    t.join()
            assert time.time() - t0 < 4, "burst too slow for a 5 s window"
            passed = [r for r in results if r[0] != 429]
            limited = [r for r in results if r[0] == 429]
            assert len(passed) == n and len(limited) == k, sorted(r[0] for r in results)
            for st, h, body in results:
                assert h["ratelimit-limit"] == "20", h
                assert 0 <= int(h["ratelimit-remaining"]) < n, h
                assert 1 <= int(h["ratelimit-reset"]) <= 5, h
            # Every allowed hit was counted exactly once, whichever worker took it.
            assert sorted(int(h["ratelimit-remaining"]) for _, h, _ in passed) == list(range(n))
            for st, h, body in limited:
                doc = json.loads(body)
                assert doc["success"] is False and doc["code"] == "RATE_LIMITED" and doc["requestId"], doc
                assert h["ratelimit-remaining"] == "0"
                assert 1 <= int(h["retry-after"]) <= 5, h
            # Health checks are never limited and carry no RateLimit headers.
            for _ in range(3):
                st, h, _ = srv.request("GET", "/health")
                assert st == 200 and "ratelimit-limit" not in h, (st, h)
            st, h, _ = srv.request("GET", "/health/live")
            assert st == 200
            # Both workers answered part of the burst (fresh connections). The
            # kernel may hand every connection to one worker (it did under
            # valgrind): then the burst is repeated in a new window.
            time.sleep(0.3)
            tag = "rl%d-" % attempt
            workers = {l.get("worker") for l in srv.log_lines() if str(l.get("requestId", "")).startswith(tag)}
            if len(workers) == 2:
                break
            time.sleep(min(max(int(h["ratelimit-reset"]) for _, h, _ in results), 5) + 0.3)
        assert len(workers) == 2, "one worker served every burst: %r" % workers
        # A new window after the old one ended.
        wait = max(int(h["ratelimit-reset"]) for _, h, _ in results)
        time.sleep(min(wait, 5) + 0.3)
        st, h, _ = srv.request("GET", "/api/rooms")
        assert st == 401 and h["ratelimit-remaining"] == "19", (st, h)
    finally:
        finish("ratelimit", srv)


# ---------------------------------------------------------------- HTTP rules on /api/

def test_api_responses_carry_security_and_cors_headers():
    srv = api_server()
    for method, path, body, want in (("GET", "/api/rooms", None, 401), ("GET", "/api/nope", None, 404),
                                     ("POST", "/api/auth/login", {"email": "x"}, 400)):
        st, h, doc = srv.json(method, path, body, {"Origin": ORIGIN})
        assert st == want, (path, st, doc)
        missing = SECURITY - set(h)
        assert not missing, (path, missing)
        assert "x-powered-by" not in h
        assert h["access-control-allow-origin"] == ORIGIN and h["access-control-allow-credentials"] == "true"
        assert "origin" in h["vary"].lower()
        assert "ratelimit-limit" in h and "ratelimit-remaining" in h and "ratelimit-reset" in h, h
        assert doc["requestId"] == h["x-request-id"]
    _, h, _ = srv.json("GET", "/api/rooms", None, {"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in h
    st, h, body = srv.request("OPTIONS", "/api/rooms", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert st == 204 and body == b"", st
    assert "POST" in h["access-control-allow-methods"] and h["access-control-allow-origin"] == ORIGIN
    assert "authorization" in h["access-control-allow-headers"].lower()


def test_api_wrong_method_is_405_with_allow():
    srv = api_server()
    for method, path, allowed in (("DELETE", "/api/rooms", {"GET", "POST"}), ("PUT", "/api/auth/register", {"POST"}),
                                  ("PATCH", "/api/rooms/%s/messages" % ("0" * 24), {"GET", "POST"})):
        st, h, doc = srv.json(method, path, {} if method != "DELETE" else None)
        assert st == 405 and doc["code"] == "METHOD_NOT_ALLOWED", (path, st, doc)
        allow = {m.strip() for m in h["allow"].split(",")}
        assert allowed <= allow, (path, allow)


def test_api_bodies_are_checked_before_the_handler():
    srv = api_server()
    tok, _ = register(srv, "erin")
    TOKENS.append(tok)
    st, _, doc = srv.json("POST", "/api/rooms", "name=x", dict(auth(tok), **{"Content-Type": "text/plain"}))
    assert st == 415 and doc["code"] == "UNSUPPORTED_MEDIA_TYPE", (st, doc)
    st, _, doc = srv.json("POST", "/api/auth/register", "<xml/>", {"Content-Type": "application/xml"})
    assert st == 415 and doc["code"] == "UNSUPPORTED_MEDIA_TYPE", (st, doc)
    st, _, doc = srv.json("POST", "/api/rooms", '{"name": "x",', dict(auth(tok), **{"Content-Type": "application/json"}))
    assert st == 400 and doc["code"] == "INVALID_JSON", (st, doc)
    st, _, doc = srv.json("POST", "/api/auth/login", b'{"email": "\xff"}', {"Content-Type": "application/json"})
    assert st == 400 and doc["code"] == "INVALID_JSON", (st, doc)
    # The outer object is level 1: 63 arrays inside make 64 (allowed), 64 make 65.
    ok = '{"name": ' + "[" * 63 + "]" * 63 + "}"
    st, _, doc = srv.json("POST", "/api/rooms", ok, dict(auth(tok), **{"Content-Type": "application/json"}))
    assert st == 400 and doc["code"] == "VALIDATION_ERROR", (st, doc)
    deep = '{"name": ' + "[" * 64 + "]" * 64 + "}"
    st, _, doc = srv.json("POST", "/api/rooms", deep, dict(auth(tok), **{"Content-Type": "application/json"}))
    assert st == 400 and doc["code"] == "INVALID_JSON", (st, doc)


def test_secrets_pass_through_requests_without_being_logged():
    """Drive requests that carry every kind of secret (logs checked at the end)."""
    srv = api_server()
    st, _, doc = srv.json("POST", "/api/auth/register",
                          {"username": "frank", "email": "Frank.Sender@Example.com", "password": "pw-frank-secret"})
    assert st == 201, (st, doc)
    tok, uid = doc["data"]["token"], doc["data"]["user"]["id"]
    TOKENS.append(tok)
    st, _, doc = srv.json("POST", "/api/auth/login", {"email": "frank.sender@example.com", "password": "Wrong-Passw0rd!"})
    assert st == 401, (st, doc)
    st, _, doc = srv.json("POST", "/api/auth/login", {"email": "frank.sender@example.com", "password": "pw-frank-secret"})
    assert st == 200, (st, doc)
    TOKENS.append(doc["data"]["token"])
    st, _, doc = srv.json("PATCH", "/api/users/%s" % uid, {"password": "N3w-Passw0rd-xyz", "currentPassword": "pw-frank-secret"},
                          auth(tok))
    assert st == 200, (st, doc)
    # A forged token in the Authorization header.
    forged = tok[:-4] + ("AAAA" if not tok.endswith("AAAA") else "BBBB")
    TOKENS.append(forged)
    st, _, doc = srv.json("GET", "/api/users/me", None, auth(forged))
    assert st == 403, (st, doc)
    # Patient data (whatever the patients routes answer, the body must not be logged).
    admin_tok = TOKENS[0]  # erin registered first on this server: admin
    srv.json("POST", "/api/patients", {"name": "Pat Doe", "email": "pat.doe@example.com", "dateOfBirth": "1970-01-01",
                                       "status": "active", "ssn": SSN, "medicalRecord": MEDICAL, "externalId": "x1"},
             auth(admin_tok))
    srv.json("POST", "/api/rooms", {"name": "room with %s" % SSN}, auth(tok))


# ---------------------------------------------------------------- deadline

def test_request_deadline_answers_504_and_the_loop_keeps_serving():
    md = double()
    # Register through a normal server; the 1 s server shares its database and key.
    reg = Server(workers=1, db=md.uri("resil_it_cross"), env={"RESIL_JWT_SECRET": JWT_SECRET})
    srv = Server(workers=1, db=md.uri("resil_it_cross"),
                 env={"RESIL_JWT_SECRET": JWT_SECRET, "RESIL_REQUEST_TIMEOUT": "1s", "RESIL_RATE_LIMIT": "100000/15m"})
    try:
        reg.start()
        tok, _ = register(reg, "grace")
        TOKENS.append(tok)
        srv.start()
        st, _, doc = srv.json("GET", "/api/rooms", None, auth(tok))
        assert st == 200, (st, doc)
        md.cmd("delay 2000")
        try:
            # Not cached in this worker yet: the user lookup hits the database.
            st, h, doc, took = timed(srv, "GET", "/api/users/%s" % ("0" * 24), None, auth(tok))
            assert st == 504 and doc["code"] == "TIMEOUT", (st, doc)
            assert 0.8 <= took <= 1.5, took
            # While a delayed call is in flight, the loop answers at once.
            out = []
            t = threading.Thread(target=lambda: out.append(timed(srv, "GET", "/api/rooms", None, auth(tok))))
            t.start()
            time.sleep(0.2)
            for _ in range(3):
                t0 = time.time()
                st, _, _ = srv.request("GET", "/health/live")
                assert st == 200 and time.time() - t0 < 0.3, time.time() - t0
            t.join()
            st, _, doc, took = out[0]
            assert (st == 504 and doc["code"] == "TIMEOUT" and took <= 1.5) or st == 200, (st, doc, took)
        finally:
            md.cmd("delay 0")
        time.sleep(2.2)  # the late replies drain
        st, _, doc = srv.json("GET", "/api/rooms", None, auth(tok))
        assert st == 200, (st, doc)
    finally:
        finish("deadline-register", reg)
        finish("deadline", srv)


# ---------------------------------------------------------------- outage

def poll(fn, timeout, what):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last is True:
            return
        time.sleep(0.2)
    raise AssertionError("%s within %ss; last: %r" % (what, timeout, last))


def test_database_outage_degrades_and_recovers_without_restart():
    md = double()
    srv = Server(workers=2, db=md.uri("resil_it_cross"),
                 env={"RESIL_JWT_SECRET": JWT_SECRET, "RESIL_RATE_LIMIT": "100000/15m"})
    try:
        srv.start()
        tok, _ = register(srv, "heidi")
        TOKENS.append(tok)
        st, _, doc = srv.json("GET", "/api/rooms", None, auth(tok))
        assert st == 200, (st, doc)
        assert srv.json("GET", "/health")[0] == 200
        pid = srv.proc.pid

        md.cmd("stop")
        # First failures: the database is unreachable (after server selection, 1 s).
        st, _, doc, took = timed(srv, "GET", "/api/rooms", None, auth(tok))
        assert st == 503 and doc["code"] in ("DB_UNAVAILABLE", "CIRCUIT_OPEN"), (st, doc)
        assert took < 3.0, took
        seen = {doc["code"]}
        # Keep calling (bursts reach both workers) until every breaker is open.
        fast_open = 0
        deadline = time.time() + 25
        while fast_open < 6 and time.time() < deadline:
            res = []
            threads = [threading.Thread(target=lambda: res.append(timed(srv, "GET", "/api/rooms", None, auth(tok))))
                       for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for st, _, doc, took in res:
                assert st == 503 and doc["code"] in ("DB_UNAVAILABLE", "CIRCUIT_OPEN"), (st, doc)
                seen.add(doc["code"])
                if doc["code"] == "CIRCUIT_OPEN":
                    assert took < 0.5, took
                    fast_open += 1
                else:
                    fast_open = 0
        assert "DB_UNAVAILABLE" in seen and fast_open >= 6, (seen, fast_open)

        def degraded():
            st, _, doc = srv.json("GET", "/health")
            return st == 503 and doc["status"] == "degraded" and doc["checks"]["database"] == "disconnected" or (st, doc)
        poll(lambda: all(degraded() is True for _ in range(4)) or "not all degraded", 8, "/health degraded")
        st, _, doc = srv.json("GET", "/health")
        assert doc["checks"]["circuits"].get("mongodb") in ("open", "half-open"), doc
        for _ in range(4):
            st, _, _, took = timed(srv, "GET", "/health/live")
            assert st == 200 and took < 0.3, (st, took)

        md.cmd("start")
        t_start = time.time()

        def healthy():
            st, _, doc = srv.json("GET", "/health")
            return st == 200 and doc["status"] == "healthy" and doc["checks"]["database"] == "connected" or (st, doc)
        poll(lambda: all(healthy() is True for _ in range(4)) or "not all healthy", 10, "/health healthy again")

        # API calls recover once each worker's breaker lets a trial through
        # (reset timeout 30 s after it opened).
        def api_ok():
            rs = [srv.json("GET", "/api/rooms", None, auth(tok))[0] for _ in range(6)]
            return rs == [200] * 6 or rs
        poll(api_ok, 40, "/api calls succeed again")
        print("  outage: /api recovered %.1fs after the database came back" % (time.time() - t_start))
        assert srv.proc.pid == pid and srv.proc.poll() is None
        # Each worker has its own breaker: the GETs above may all have
        # landed on one worker, so the write is retried within the bound too.
        def post_ok():
            st, _, doc = srv.json("POST", "/api/rooms", {"name": "after the outage"}, auth(tok))
            return st == 201 or (st, doc)
        poll(post_ok, 40, "a write succeeds again")
    finally:
        finish("outage", srv)


# ---------------------------------------------------------------- logs

EMAIL = re.compile(r"([A-Za-z0-9._%+*-]+)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")


def test_zz_logs_hold_no_secrets_and_only_masked_emails():
    srv = SERVERS.pop("api", None)
    if srv:
        finish("api", srv)
    assert LOGS, "no server logs were captured"
    assert TOKENS, "no tokens were issued"
    for name, text, rc in LOGS:
        assert text.strip(), "%s: empty log" % name
        for marker in SANITIZER_MARKERS:
            assert marker not in text, "%s: sanitizer report:\n%s" % (name, text[-4000:])
        assert rc == 0, "%s: resild exited with %s" % (name, rc)
        low = text.lower()
        for secret in PASSWORDS + [SSN, MEDICAL, JWT_SECRET]:
            assert secret.lower() not in low, "%s: %r in the log" % (name, secret)
        for tok in TOKENS:
            for part in tok.split("."):
                assert part not in text, "%s: token part in the log" % name
        assert "bearer " not in low, "%s: Authorization value in the log" % name
        for m in EMAIL.finditer(text):
            local = m.group(1)
            assert re.match(r"^[^*]?\*\*\*$", local), "%s: unmasked e-mail %r" % (name, m.group(0))
        for line in text.splitlines():
            if line.startswith("{"):
                doc = json.loads(line)
                for key in ("password", "token", "authorization", "ssn", "medicalRecord"):
                    v = doc.get(key)
                    assert v in (None, "[REDACTED]"), "%s: %s=%r" % (name, key, v)


if __name__ == "__main__":
    try:
        run_tests([globals()[k] for k in list(globals()) if k.startswith("test_")])
    finally:
        for s in SERVERS.values():
            s.cleanup()
        if MD:
            MD.close()
