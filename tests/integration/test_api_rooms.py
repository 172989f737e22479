"""Black-box tests of the rooms and messages API (SPEC section 6) against a
real resild with 2 workers, once on the embedded SQLite store and once on
the MongoDB wire-protocol test double (tests/mongo_double).

Covered: creating and listing rooms, adding members (owner only, userId
validation, unknown or inactive users, idempotence), reading and posting
messages (members only, content limits, oldest first, the last `limit`
messages with limit 1-100 and default 50), ill-formed and unknown ids, and
operator-injection shapes. POST /api/rooms/:id/messages is resil's addition
beyond the SPEC (the WebSocket chat is the usual writer)."""
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import shutil

sys.path.insert(0, os.path.dirname(__file__))
from harness import TOP, Server, run_tests  # noqa: E402

HEX24 = re.compile(r"^[0-9a-f]{24}$")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


class MongoDouble:
    """tests/mongo_double on an ephemeral port with an abstract control socket."""

    def __init__(self):
        binary = os.environ.get("MONGO_DOUBLE") or os.path.join(TOP, "tests", "mongo_double")
        if not os.access(binary, os.X_OK):
            raise AssertionError("MongoDB test double not found at %s: build it with "
                                 "`make tests/mongo_double` (make check does)" % binary)
        self.dir = tempfile.mkdtemp(prefix="resil-md-")
        port_file = os.path.join(self.dir, "port")
        self.control = "@resil-md-%d-%d" % (os.getpid(), int(time.time() * 1e6) % 10**9)
        self.log = open(os.path.join(self.dir, "double.log"), "wb")
        self.proc = subprocess.Popen([binary, "--port", "0", "--port-file", port_file, "--control", self.control,
                                      "--max-lifetime", "600"], stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        deadline = time.time() + 10
        self.port = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("mongo_double exited with %s" % self.proc.returncode)
            try:
                with open(port_file) as f:
                    self.port = int(f.readline())
                break
            except (OSError, ValueError):
                time.sleep(0.02)
        if not self.port:
            self.close()
            raise AssertionError("mongo_double did not write its port file")

    def uri(self, db):
        return "mongodb://127.0.0.1:%d/%s?serverSelectionTimeoutMS=1000" % (self.port, db)

    def cmd(self, line):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect("\0" + self.control[1:])
            s.sendall(line.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                b = s.recv(4096)
                if not b:
                    break
                data += b
        finally:
            s.close()
        reply = data.decode().strip()
        assert reply.startswith("ok"), "mongo_double %r -> %r" % (line, reply)
        return reply

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Client:
    """One keep-alive connection (so one worker serves every request)."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)

    def call(self, method, path, body=None, token=None, headers=None):
        h = dict(headers or {})
        if token:
            h["Authorization"] = "Bearer " + token
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        self.conn.request(method, path, body=body, headers=h)
        r = self.conn.getresponse()
        data = r.read()
        doc = json.loads(data) if data else None
        return r.status, doc

    def close(self):
        self.conn.close()


def call(srv, method, path, body=None, token=None, headers=None):
    h = dict(headers or {})
    if token:
        h["Authorization"] = "Bearer " + token
    return srv.json(method, path, body, h)


def register(srv, name):
    st, _, doc = srv.json("POST", "/api/auth/register",
                          {"username": name, "email": "%s@example.com" % name, "password": "pw-%s-secret" % name})
    assert st == 201, (st, doc)
    return doc["data"]["token"], doc["data"]["user"]["id"]


def assert_validation(st, doc, field):
    assert st == 400, (st, doc)
    assert doc["success"] is False and doc["code"] == "VALIDATION_ERROR", doc
    assert doc["error"].startswith("validation failed"), doc
    assert any(d["field"] == field for d in doc.get("details", [])), doc


def assert_error(st, doc, status, code):
    assert st == status, (st, doc)
    assert doc["success"] is False and doc["code"] == code and doc["requestId"], doc


class Env:
    """A resild (2 workers) on one backend with four registered users."""

    def __init__(self, backend):
        self.md = None
        db = None
        if backend == "mongodb":
            self.md = MongoDouble()
            db = self.md.uri("resil_it_rooms")
        self.srv = Server(workers=2, db=db, env={"RESIL_RATE_LIMIT": "100000/15m"})
        try:
            self.srv.start()
            self.alice, self.alice_id = register(self.srv, "alice")  # first user: admin
            self.bob, self.bob_id = register(self.srv, "bob")
            self.carol, self.carol_id = register(self.srv, "carol")
            self.dave, self.dave_id = register(self.srv, "dave")
        except Exception:
            self.close()
            raise

    def room(self, name, token=None):
        st, _, doc = call(self.srv, "POST", "/api/rooms", {"name": name}, token or self.alice)
        assert st == 201, (st, doc)
        # "Newest first" orders by createdAt (ms); two rooms created in the
        # same millisecond by different workers tie, and the ObjectId
        # tie-break is not creation order across processes. Tests that
        # assert an order create rooms at least a millisecond apart.
        time.sleep(0.003)
        return doc["data"]

    def close(self):
        try:
            self.srv.assert_clean_exit()
        finally:
            self.srv.cleanup()
            if self.md:
                self.md.close()


# ---------------------------------------------------------------- checks

def check_room_routes_require_a_token(e):
    rid = "0" * 24
    for method, path in (("POST", "/api/rooms"), ("GET", "/api/rooms"), ("POST", "/api/rooms/%s/members" % rid),
                         ("GET", "/api/rooms/%s/messages" % rid), ("POST", "/api/rooms/%s/messages" % rid)):
        st, _, doc = call(e.srv, method, path, {} if method == "POST" else None)
        assert_error(st, doc, 401, "UNAUTHORIZED")
        assert doc["error"] == "access token required", doc
    st, _, doc = call(e.srv, "GET", "/api/rooms", token="not.a.jwt")
    assert_error(st, doc, 403, "FORBIDDEN")


def check_creating_a_room_makes_the_creator_owner_and_member(e):
    st, h, doc = call(e.srv, "POST", "/api/rooms", {"name": "general", "extra": {"$gt": ""}}, e.alice)
    assert st == 201, (st, doc)
    assert doc["success"] is True
    r = doc["data"]
    assert HEX24.match(r["id"]), r
    assert r["name"] == "general"
    assert r["owner"] == e.alice_id
    assert r["members"] == [e.alice_id]
    assert ISO.match(r["createdAt"]), r
    assert "extra" not in r
    assert h["content-type"].startswith("application/json")


def check_room_names_are_validated(e):
    for body in ({}, {"name": ""}, {"name": "x" * 101}, {"name": {"$gt": ""}}, {"name": ["a"]}, {"name": 5},
                 {"name": None}):
        st, _, doc = call(e.srv, "POST", "/api/rooms", body, e.alice)
        assert_validation(st, doc, "name")
    st, _, doc = call(e.srv, "POST", "/api/rooms", None, e.alice)
    assert_validation(st, doc, "name")
    assert e.room("é" * 100)["name"] == "é" * 100  # 100 characters, 200 bytes
    st, _, doc = call(e.srv, "POST", "/api/rooms", "name=form+room", e.alice,
                      {"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 201 and doc["data"]["name"] == "form room", (st, doc)
    st, _, doc = call(e.srv, "POST", "/api/rooms", "name", e.alice, {"Content-Type": "text/plain"})
    assert_error(st, doc, 415, "UNSUPPORTED_MEDIA_TYPE")
    st, _, doc = call(e.srv, "POST", "/api/rooms", '{"name": ', e.alice, {"Content-Type": "application/json"})
    assert_error(st, doc, 400, "INVALID_JSON")


def check_listing_shows_only_my_rooms_newest_first(e):
    mine = [e.room("carol-%d" % i, e.carol)["id"] for i in range(3)]
    st, _, doc = call(e.srv, "GET", "/api/rooms", token=e.carol)
    assert st == 200, (st, doc)
    assert [r["id"] for r in doc["data"]] == mine[::-1]
    assert doc["pagination"] == {"page": 1, "limit": 25, "total": 3, "pages": 1}, doc
    for r in doc["data"]:
        assert e.carol_id in r["members"]
    # Nobody else's rooms leak in, and another user does not see carol's.
    st, _, doc = call(e.srv, "GET", "/api/rooms", token=e.dave)
    assert st == 200 and doc["data"] == [] and doc["pagination"]["total"] == 0, doc
    st, _, doc = call(e.srv, "GET", "/api/rooms", token=e.alice)
    assert not set(mine) & {r["id"] for r in doc["data"]}


def check_listing_is_paginated(e):
    ids = [e.room("page-%d" % i, e.dave)["id"] for i in range(5)][::-1]
    st, _, doc = call(e.srv, "GET", "/api/rooms?limit=2", token=e.dave)
    assert st == 200 and [r["id"] for r in doc["data"]] == ids[:2], doc
    assert doc["pagination"] == {"page": 1, "limit": 2, "total": 5, "pages": 3}, doc
    st, _, doc = call(e.srv, "GET", "/api/rooms?limit=2&page=3", token=e.dave)
    assert [r["id"] for r in doc["data"]] == ids[4:], doc
    assert doc["pagination"] == {"page": 3, "limit": 2, "total": 5, "pages": 3}, doc
    st, _, doc = call(e.srv, "GET", "/api/rooms?limit=2&page=4", token=e.dave)
    assert st == 200 and doc["data"] == [] and doc["pagination"]["total"] == 5, doc
    st, _, doc = call(e.srv, "GET", "/api/rooms?limit=5", token=e.dave)
    assert [r["id"] for r in doc["data"]] == ids and doc["pagination"]["total"] == 5, doc
    for q, field in (("limit=0", "limit"), ("limit=101", "limit"), ("limit=abc", "limit"), ("page=0", "page"),
                     ("limit=1&limit=2", "limit"), ("limit[$gt]=1&page=x", "page")):
        st, _, doc = call(e.srv, "GET", "/api/rooms?" + q, token=e.dave)
        assert_validation(st, doc, field)


def check_only_the_owner_adds_members(e):
    r = e.room("owners-only")
    path = "/api/rooms/%s/members" % r["id"]
    st, _, doc = call(e.srv, "POST", path, {"userId": e.bob_id}, e.bob)
    assert_error(st, doc, 403, "FORBIDDEN")
    st, _, doc = call(e.srv, "POST", path, {"userId": e.bob_id}, e.alice)
    assert st == 200, (st, doc)
    assert doc["data"]["id"] == r["id"] and doc["data"]["members"] == [e.alice_id, e.bob_id], doc
    # A member who is not the owner still cannot add anyone.
    st, _, doc = call(e.srv, "POST", path, {"userId": e.carol_id}, e.bob)
    assert_error(st, doc, 403, "FORBIDDEN")
    # Idempotent.
    st, _, doc = call(e.srv, "POST", path, {"userId": e.bob_id}, e.alice)
    assert st == 200 and doc["data"]["members"] == [e.alice_id, e.bob_id], doc
    st, _, doc = call(e.srv, "GET", "/api/rooms?limit=100", token=e.bob)
    assert r["id"] in [x["id"] for x in doc["data"]], doc


def check_member_user_ids_are_validated(e):
    r = e.room("validate-members")
    path = "/api/rooms/%s/members" % r["id"]
    for body in ({}, {"userId": ""}, {"userId": "xyz"}, {"userId": "g" * 24}, {"userId": e.bob_id + "0"},
                 {"userId": {"$ne": None}}, {"userId": [e.bob_id]}, {"userId": 12}):
        st, _, doc = call(e.srv, "POST", path, body, e.alice)
        assert_validation(st, doc, "userId")
    st, _, doc = call(e.srv, "POST", path, {"userId": "0123456789abcdef01234567"}, e.alice)
    assert_error(st, doc, 404, "NOT_FOUND")
    st, _, doc = call(e.srv, "POST", path, {"userId": e.bob_id.upper()}, e.alice)
    assert st == 200 and e.bob_id in doc["data"]["members"], (st, doc)


def check_inactive_users_cannot_be_added(e):
    r = e.room("no-ghosts")
    st, _, doc = call(e.srv, "DELETE", "/api/users/%s" % e.dave_id, token=e.alice)
    assert st in (200, 204), ("admin soft delete failed", st, doc)
    st, _, doc = call(e.srv, "POST", "/api/rooms/%s/members" % r["id"], {"userId": e.dave_id}, e.alice)
    assert_error(st, doc, 404, "NOT_FOUND")
    st, _, doc = call(e.srv, "GET", "/api/rooms", token=e.dave)
    assert_error(st, doc, 401, "UNAUTHORIZED")


def check_unknown_and_ill_formed_room_ids_are_404(e):
    for rid in ("xyz", "0" * 23, "0" * 25, "g" * 24, "%24gt", "0123456789abcdef01234567"):
        for method, sub, body in (("GET", "messages", None), ("POST", "messages", {"content": "hi"}),
                                  ("POST", "members", {"userId": e.bob_id})):
            st, _, doc = call(e.srv, method, "/api/rooms/%s/%s" % (rid, sub), body, e.alice)
            assert_error(st, doc, 404, "NOT_FOUND")


def check_only_members_read_and_post_messages(e):
    r = e.room("members-only")
    path = "/api/rooms/%s/messages" % r["id"]
    call(e.srv, "POST", "/api/rooms/%s/members" % r["id"], {"userId": e.bob_id}, e.alice)
    for method, body in (("GET", None), ("POST", {"content": "let me in"})):
        st, _, doc = call(e.srv, method, path, body, e.carol)
        assert_error(st, doc, 403, "FORBIDDEN")
    st, _, doc = call(e.srv, "GET", path, token=e.bob)
    assert st == 200 and doc == {"success": True, "data": []}, doc
    st, _, doc = call(e.srv, "POST", path, {"content": "hello ✓"}, e.bob)
    assert st == 201, (st, doc)
    m = doc["data"]
    assert HEX24.match(m["id"]) and m["roomId"] == r["id"] and m["content"] == "hello ✓", m
    assert m["sender"] == {"id": e.bob_id, "username": "bob"}, m
    assert ISO.match(m["createdAt"]), m
    st, _, doc = call(e.srv, "GET", path, token=e.alice)
    assert st == 200 and doc["data"] == [m], doc


def check_message_content_is_validated(e):
    r = e.room("content-rules")
    path = "/api/rooms/%s/messages" % r["id"]
    for body in ({}, {"content": ""}, {"content": "x" * 2001}, {"content": {"$gt": ""}}, {"content": 1},
                 {"content": ["a"]}):
        st, _, doc = call(e.srv, "POST", path, body, e.alice)
        assert_validation(st, doc, "content")
    st, _, doc = call(e.srv, "POST", path, {"content": "ü" * 2000}, e.alice)
    assert st == 201 and doc["data"]["content"] == "ü" * 2000, st
    for q in ("limit=0", "limit=101", "limit=-1", "limit=1.5", "limit=abc", "limit=1&limit=2"):
        st, _, doc = call(e.srv, "GET", path + "?" + q, token=e.alice)
        assert_validation(st, doc, "limit")


def check_history_returns_the_last_messages_oldest_first(e):
    r = e.room("busy")
    path = "/api/rooms/%s/messages" % r["id"]
    c = Client(e.srv.port)
    try:
        for i in range(120):
            st, doc = c.call("POST", path, {"content": "m%03d" % i}, e.alice)
            assert st == 201, (i, st, doc)
        st, doc = c.call("GET", path, token=e.alice)
        assert st == 200, (st, doc)
        got = [m["content"] for m in doc["data"]]
        assert got == ["m%03d" % i for i in range(70, 120)], got
        stamps = [m["createdAt"] for m in doc["data"]]
        assert stamps == sorted(stamps), stamps
        st, doc = c.call("GET", path + "?limit=100", token=e.alice)
        assert [m["content"] for m in doc["data"]] == ["m%03d" % i for i in range(20, 120)]
        st, doc = c.call("GET", path + "?limit=1", token=e.alice)
        assert [m["content"] for m in doc["data"]] == ["m119"], doc
        st, doc = c.call("GET", path + "?limit=7", token=e.alice)
        assert [m["content"] for m in doc["data"]] == ["m%03d" % i for i in range(113, 120)], doc
        assert all(m["sender"]["username"] == "alice" and m["roomId"] == r["id"] for m in doc["data"])
    finally:
        c.close()
    # Messages of another room never mix in.
    other = e.room("quiet")
    st, _, doc = call(e.srv, "GET", "/api/rooms/%s/messages?limit=100" % other["id"], token=e.alice)
    assert st == 200 and doc["data"] == [], doc


CHECKS = [v for k, v in list(globals().items()) if k.startswith("check_")]


def make_test(backend):
    def test():
        e = Env(backend)
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
        assert not failed, "failed on %s: %s" % (backend, ", ".join(failed))
    test.__name__ = "test_rooms_api_on_%s" % backend
    return test


if __name__ == "__main__":
    run_tests([make_test("sqlite"), make_test("mongodb")])
