"""Sessions (SPEC section 6): refresh-token rotation, reuse detection,
logout, and the revocations a password or role change causes - against a
real resild with 2 workers, once on the embedded SQLite store and once on
the MongoDB wire-protocol test double.

"On every worker at once": each check right after a revocation makes
several requests on fresh connections, each with its own X-Request-ID, and
then reads from the access log which worker (pid) answered them: both must
have refused the token."""
import json
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Server, run_tests  # noqa: E402
from test_api_users import MongoDouble, make_jwt, claims_of  # noqa: E402

SECRET = "resil-it-sessions-jwt-secret-0123456789abcdef"
HEX24 = re.compile(r"^[0-9a-f]{24}$")
REFRESH = re.compile(r"^[A-Za-z0-9_-]{43}$")
SEQ = [0]
DOUBLE = [None]
SECRETS = set()  # every password and token handed out: never in the logs


def uniq(prefix="s"):
    SEQ[0] += 1
    return "%s%d_%d" % (prefix, SEQ[0], os.getpid() % 1000)


def new_server(backend, env=None):
    db = None
    if backend == "mongodb":
        if DOUBLE[0] is None:
            DOUBLE[0] = MongoDouble()
        db = DOUBLE[0].uri("resil_it_sessions_%d_%s" % (os.getpid(), uniq("db")))
    e = {"RESIL_JWT_SECRET": SECRET, "RESIL_RATE_LIMIT": "100000/15m"}
    e.update(env or {})
    s = Server(workers=2, db=db, env=e)
    s.start()
    return s


def note(doc):
    if isinstance(doc, dict) and isinstance(doc.get("data"), dict):
        for k in ("token", "refreshToken"):
            if k in doc["data"]:
                SECRETS.add(doc["data"][k])
    return doc


def call(S, method, path, token=None, body=None, rid=None):
    h = {}
    if token:
        h["Authorization"] = "Bearer " + token
    if rid:
        h["X-Request-ID"] = rid
    st, _, doc = S.json(method, path, body, h)
    return st, note(doc)


def register(S):
    name = uniq("u")
    pw = "Pw-%s-secret" % uniq()
    SECRETS.add(pw)
    st, doc = call(S, "POST", "/api/auth/register", body={"username": name, "email": name + "@example.org",
                                                          "password": pw})
    assert st == 201, doc
    d = doc["data"]
    assert set(d) == {"user", "token", "refreshToken"}, d
    assert REFRESH.match(d["refreshToken"]), d["refreshToken"]
    assert HEX24.match(claims_of(d["token"])["sid"]), claims_of(d["token"])
    return {"id": d["user"]["id"], "email": name + "@example.org", "pw": pw, "token": d["token"],
            "refresh": d["refreshToken"]}


def login(S, u, pw=None):
    st, doc = call(S, "POST", "/api/auth/login", body={"email": u["email"], "password": pw or u["pw"]})
    return st, doc


def refresh(S, tok):
    return call(S, "POST", "/api/auth/refresh", body={"refreshToken": tok})


def assert_401(st, doc):
    assert st == 401, (st, doc)
    assert doc["success"] is False and doc["code"] == "UNAUTHORIZED" and doc["requestId"], doc


def on_every_worker(S, token, status, batch=4, rounds=30):
    """Requests on fresh connections (batches of concurrent ones, so that
    the kernel hands them to both workers) all answer status, until the
    access log shows that both workers answered."""
    tag = uniq("rid")
    n = 0
    for _ in range(rounds):
        out = [None] * batch

        def one(i, rid):
            out[i] = call(S, "GET", "/api/users/me", token, rid=rid)
        threads = [threading.Thread(target=one, args=(i, "%s-%d" % (tag, n + i))) for i in range(batch)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        n += batch
        for st, doc in out:
            assert st == status, (st, doc)
            if status == 401:
                assert_401(st, doc)
        time.sleep(0.05)  # the access log line follows the response
        pids = {l.get("pid") for l in S.log_lines() if str(l.get("requestId", "")).startswith(tag + "-")}
        pids.discard(None)
        if len(pids) >= 2:
            return
    raise AssertionError("only worker(s) %s answered %d requests" % (pids, n))


# ------------------------------------------------------------ tests

def test_refresh_rotates_the_token(S):
    u = register(S)
    st, doc = refresh(S, u["refresh"])
    assert st == 200 and doc["success"] is True, doc
    assert set(doc["data"]) == {"token", "refreshToken"}, doc
    new = doc["data"]
    assert REFRESH.match(new["refreshToken"]) and new["refreshToken"] != u["refresh"]
    old_cl, new_cl = claims_of(u["token"]), claims_of(new["token"])
    assert new_cl["sub"] == u["id"] and new_cl["sid"] == old_cl["sid"], (old_cl, new_cl)
    assert new_cl["exp"] - new_cl["iat"] == 15 * 60, new_cl  # RESIL_JWT_EXPIRE default
    on_every_worker(S, new["token"], 200)
    # Rotating again works with the new one.
    st, doc = refresh(S, new["refreshToken"])
    assert st == 200, doc


def test_unknown_malformed_and_missing_refresh_tokens(S):
    assert_401(*refresh(S, "A" * 43))
    assert_401(*refresh(S, "x" * 100))
    st, doc = call(S, "POST", "/api/auth/refresh", body={})
    assert st == 400 and doc["code"] == "VALIDATION_ERROR", doc
    assert doc["details"][0]["field"] == "refreshToken", doc
    st, doc = call(S, "POST", "/api/auth/refresh", body={"refreshToken": {"$ne": None}})
    assert st == 400 and doc["code"] == "VALIDATION_ERROR", doc


def test_reusing_a_spent_token_revokes_the_family(S):
    u = register(S)
    st, doc = refresh(S, u["refresh"])
    assert st == 200, doc
    second = doc["data"]
    on_every_worker(S, second["token"], 200)
    assert_401(*refresh(S, u["refresh"]))  # spent: reuse
    assert_401(*refresh(S, second["refreshToken"]))  # the whole family is revoked
    on_every_worker(S, second["token"], 401)
    on_every_worker(S, u["token"], 401)
    # Another session of the same user is not affected.
    st, doc = login(S, u)
    assert st == 200, doc
    on_every_worker(S, doc["data"]["token"], 200)
    assert refresh(S, doc["data"]["refreshToken"])[0] == 200


def test_concurrent_refreshes_of_one_token_cannot_both_succeed(S):
    u = register(S)
    out = [None] * 6

    def one(i):
        out[i] = refresh(S, u["refresh"])
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(out))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    ok = [d for st, d in out if st == 200]
    assert len(ok) <= 1, out
    for st, d in out:
        if st != 200:
            assert_401(st, d)


def test_logout_revokes_the_access_token_on_every_worker(S):
    u = register(S)
    st, doc = login(S, u)  # a second session that must survive
    assert st == 200, doc
    other = doc["data"]
    on_every_worker(S, u["token"], 200)  # warm both workers' caches
    st, h, body = S.request("POST", "/api/auth/logout", headers={"Authorization": "Bearer " + u["token"]})
    assert st == 204 and body == b"", (st, body)
    on_every_worker(S, u["token"], 401)
    assert_401(*refresh(S, u["refresh"]))
    # The WebSocket upgrade refuses it too (before the upgrade, SPEC section 7).
    ws = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    for _ in range(4):
        st, _, _ = S.request("GET", "/ws?token=" + u["token"], headers=ws)
        assert st == 401, st
    on_every_worker(S, other["token"], 200)
    assert refresh(S, other["refreshToken"])[0] == 200
    st, doc = call(S, "POST", "/api/auth/logout")
    assert_401(st, doc)
    assert doc["error"] == "access token required", doc


def test_logout_with_a_token_without_session_revokes_it(S):
    u = register(S)
    now = int(time.time())
    legacy = make_jwt({"sub": u["id"], "email": u["email"], "role": "user", "iat": now - 30, "exp": now + 600},
                      key=SECRET.encode())
    SECRETS.add(legacy)
    node = make_jwt({"userId": u["id"], "email": u["email"], "iat": now - 30, "exp": now + 600},
                    key=SECRET.encode())
    SECRETS.add(node)
    on_every_worker(S, legacy, 200)
    on_every_worker(S, node, 200)
    st, _, _ = S.request("POST", "/api/auth/logout", headers={"Authorization": "Bearer " + legacy})
    assert st == 204
    on_every_worker(S, legacy, 401)
    on_every_worker(S, node, 401)


def test_password_change_needs_the_current_password_and_revokes(S):
    u = register(S)
    st, doc = refresh(S, u["refresh"])
    assert st == 200, doc
    cur = doc["data"]
    st, doc = login(S, u)
    assert st == 200, doc
    other = doc["data"]
    on_every_worker(S, cur["token"], 200)
    on_every_worker(S, other["token"], 200)
    path = "/api/users/" + u["id"]
    new_pw = "Pw-%s-new" % uniq()
    SECRETS.add(new_pw)
    st, doc = call(S, "PATCH", path, cur["token"], {"password": new_pw})
    assert st == 400 and doc["code"] == "VALIDATION_ERROR", doc
    assert doc["error"].startswith("validation failed")
    assert [d["field"] for d in doc["details"]] == ["currentPassword"], doc
    st, doc = call(S, "PATCH", path, cur["token"], {"password": new_pw, "currentPassword": "Wrong-" + u["pw"]})
    assert_401(st, doc)
    on_every_worker(S, cur["token"], 200)  # nothing was revoked
    st, doc = call(S, "PATCH", path, cur["token"], {"password": new_pw, "currentPassword": u["pw"]})
    assert st == 200 and doc["success"] is True, doc
    d = doc["data"]
    assert d["id"] == u["id"] and d["_id"] == u["id"] and d["email"] == u["email"], d
    assert "passwordHash" not in d and "password" not in d and "tokensValidAfter" not in d, d
    assert REFRESH.match(d["refreshToken"]) and claims_of(d["token"])["sub"] == u["id"], d
    # Every older access and refresh token is refused, on every worker.
    for tok in (u["token"], cur["token"], other["token"]):
        on_every_worker(S, tok, 401)
    for r in (cur["refreshToken"], other["refreshToken"]):
        assert_401(*refresh(S, r))
    # The fresh pair works.
    on_every_worker(S, d["token"], 200)
    st, doc = refresh(S, d["refreshToken"])
    assert st == 200, doc
    assert login(S, u)[0] == 401
    assert login(S, u, new_pw)[0] == 200


def test_admin_role_change_and_delete_revoke(S):
    admin = S.admin
    u = register(S)
    on_every_worker(S, u["token"], 200)
    st, doc = call(S, "PATCH", "/api/users/" + u["id"], admin["token"], {"role": "clinician"})
    assert st == 200 and doc["data"]["role"] == "clinician", doc
    on_every_worker(S, u["token"], 401)
    assert_401(*refresh(S, u["refresh"]))
    st, doc = login(S, u)
    assert st == 200 and doc["data"]["user"]["role"] == "clinician", doc
    tok, ref = doc["data"]["token"], doc["data"]["refreshToken"]
    on_every_worker(S, tok, 200)
    # A PATCH that does not touch role or password revokes nothing.
    st, doc = call(S, "PATCH", "/api/users/" + u["id"], admin["token"], {"username": uniq("r")})
    assert st == 200, doc
    on_every_worker(S, tok, 200)
    st, _, _ = S.request("DELETE", "/api/users/" + u["id"], headers={"Authorization": "Bearer " + admin["token"]})
    assert st == 204
    on_every_worker(S, tok, 401)
    assert_401(*refresh(S, ref))


def test_logs_hold_no_tokens_or_passwords(S):
    time.sleep(0.3)
    logs = S.logs()
    assert "logged out" in logs, "expected a logout event in the log"
    for s in SECRETS:
        assert s not in logs, "a secret is in the log"
        parts = s.split(".")
        if len(parts) == 3:
            assert parts[2] not in logs, "a token signature is in the log"
    S.assert_clean_exit()


def test_expired_refresh_token_is_refused(backend):
    S = new_server(backend, {"RESIL_REFRESH_EXPIRE": "1s"})
    try:
        u = register(S)
        time.sleep(1.5)
        assert_401(*refresh(S, u["refresh"]))
        S.assert_clean_exit()
    finally:
        S.cleanup()


TESTS = [
    test_refresh_rotates_the_token,
    test_unknown_malformed_and_missing_refresh_tokens,
    test_reusing_a_spent_token_revokes_the_family,
    test_concurrent_refreshes_of_one_token_cannot_both_succeed,
    test_logout_revokes_the_access_token_on_every_worker,
    test_logout_with_a_token_without_session_revokes_it,
    test_password_change_needs_the_current_password_and_revokes,
    test_admin_role_change_and_delete_revoke,
    test_logs_hold_no_tokens_or_passwords,
]


def bind(test, backend):
    def run():
        if test is test_expired_refresh_token_is_refused:
            return test(backend)
        if backend not in SERVERS:
            S = new_server(backend)
            SERVERS[backend] = S
            S.admin = register(S)  # the first user on an empty database (development): admin
            assert claims_of(S.admin["token"])["role"] == "admin"
        return test(SERVERS[backend])
    run.__name__ = "%s[%s]" % (test.__name__, backend)
    return run


SERVERS = {}

if __name__ == "__main__":
    try:
        run_tests([bind(t, b) for b in ("sqlite", "mongodb")
                   for t in TESTS[:-1] + [test_expired_refresh_token_is_refused, TESTS[-1]]])
    finally:
        for srv in SERVERS.values():
            srv.cleanup()
        if DOUBLE[0] is not None:
            DOUBLE[0].close()
