"""Black-box tests of /api/posts (SPEC section 6) against a real resild with
2 workers, once on the embedded SQLite store and once on the MongoDB
wire-protocol test double (tests/mongo_double).

Covered: the success shape of every endpoint (author embedded as {id,
username, email}), field validation, permissions (author or admin; no
token 401, bad token 403), pagination edges, newest-first order, the
category filter, 404 for unknown and ill-formed ids, operator-injection
shapes in bodies and query strings, and the per-worker list cache being
invalidated in every worker by any post write.

MongoDouble is also used by test_api_patients.py."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(__file__))
from harness import TOP, Server, run_tests  # noqa: E402

HEX24 = re.compile(r"^[0-9a-f]{24}$")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class MongoDouble:
    """tests/mongo_double on an ephemeral port, stopped by close()."""

    def __init__(self):
        binary = os.environ.get("MONGO_DOUBLE") or os.path.join(TOP, "tests", "mongo_double")
        if not os.access(binary, os.X_OK):
            raise AssertionError("MongoDB test double missing at %s (build it: make tests/mongo_double)" % binary)
        self.dir = tempfile.mkdtemp(prefix="resil-md-")
        port_file = os.path.join(self.dir, "port")
        control = "@resil-md-posts-%d-%d" % (os.getpid(), int(time.time() * 1e6) % 10**9)
        self.control = control
        self.log = open(os.path.join(self.dir, "double.log"), "wb")
        self.proc = subprocess.Popen([binary, "--port", "0", "--port-file", port_file, "--control", control,
                                      "--max-lifetime", "600"], stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        self.port = None
        deadline = time.time() + 10
        while time.time() < deadline and self.port is None:
            if self.proc.poll() is not None:
                self.close()
                raise AssertionError("mongo_double exited with status %s" % self.proc.returncode)
            try:
                with open(port_file) as f:
                    self.port = int(f.readline())
            except (OSError, ValueError):
                time.sleep(0.02)
        if self.port is None:
            self.close()
            raise AssertionError("mongo_double did not write its port file")

    def uri(self, db):
        return "mongodb://127.0.0.1:%d/%s?serverSelectionTimeoutMS=1000" % (self.port, db)

    def stat(self, name):
        """A counter of the double's `stats` reply (0 when absent)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect("\0" + self.control[1:])
            s.sendall(b"stats\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        reply = data.decode().split()
        assert reply and reply[0] == "ok", reply
        for kv in reply[1:]:
            k, _, v = kv.partition("=")
            if k == name:
                return int(v)
        return 0

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


def call(srv, method, path, body=None, token=None, headers=None):
    """One request on a fresh connection: (status, headers, json)."""
    h = dict(headers or {})
    if token:
        h["Authorization"] = "Bearer " + token
    return srv.json(method, path, body, h)


def register(srv, name):
    st, _, doc = srv.json("POST", "/api/auth/register",
                          {"username": name, "email": "%s@Example.com" % name, "password": "pw-%s-secret" % name})
    assert st == 201, (st, doc)
    return doc["data"]["token"], doc["data"]["user"]


def assert_validation(st, doc, field):
    assert st == 400, (st, doc)
    assert doc["success"] is False and doc["code"] == "VALIDATION_ERROR", doc
    assert doc["error"].startswith("validation failed"), doc
    assert any(d["field"] == field for d in doc.get("details", [])), doc


def assert_error(st, doc, status, code):
    assert st == status, (st, doc)
    assert doc["success"] is False and doc["code"] == code, doc
    assert doc["requestId"], doc


def backend_server(backend, name, workers=2, env=None):
    """(Server, MongoDouble or None), started."""
    md = None
    db = None
    if backend == "mongodb":
        md = MongoDouble()
        db = md.uri("resil_it_%s" % name)
    e = {"RESIL_RATE_LIMIT": "100000/15m"}
    e.update(env or {})
    srv = Server(workers=workers, db=db, env=e)
    try:
        srv.start()
    except Exception:
        srv.cleanup()
        if md:
            md.close()
        raise
    return srv, md


class Env:
    """resild (2 workers) on one backend with three users: admin (first), alice, bob."""

    def __init__(self, backend):
        self.srv, self.md = backend_server(backend, "posts")
        try:
            self.admin, self.admin_user = register(self.srv, "admin")
            self.alice, self.alice_user = register(self.srv, "alice")
            self.bob, self.bob_user = register(self.srv, "bob")
            assert self.admin_user["role"] == "admin" and self.alice_user["role"] == "user"
        except Exception:
            self.close()
            raise

    def post(self, token, title, content="body text", category=None):
        body = {"title": title, "content": content}
        if category is not None:
            body["category"] = category
        st, _, doc = call(self.srv, "POST", "/api/posts", body, token)
        assert st == 201, (st, doc)
        # Newest first orders by createdAt (ms): posts made in the same
        # millisecond by different workers tie (see README "API notes").
        time.sleep(0.003)
        return doc["data"]

    def close(self):
        try:
            self.srv.assert_clean_exit()
        finally:
            self.srv.cleanup()
            if self.md:
                self.md.close()


def list_ids(srv, query=""):
    st, _, doc = call(srv, "GET", "/api/posts" + query)
    assert st == 200, (st, doc)
    return [p["id"] for p in doc["data"]], doc


# ---------------------------------------------------------------- checks

def check_create_returns_201_with_the_post_and_its_author(e):
    st, h, doc = call(e.srv, "POST", "/api/posts", {"title": "Hello", "content": "World", "category": "news",
                                                    "unknownField": {"$gt": 1}}, e.alice)
    assert st == 201, (st, doc)
    p = doc["data"]
    assert doc["success"] is True
    assert set(p) == {"id", "title", "content", "category", "author", "createdAt", "updatedAt"}, p
    assert HEX24.match(p["id"]) and ISO.match(p["createdAt"]) and ISO.match(p["updatedAt"]), p
    assert (p["title"], p["content"], p["category"]) == ("Hello", "World", "news")
    assert p["author"] == {"id": e.alice_user["id"], "username": "alice", "email": "alice@example.com"}, p
    # Without a category the field is absent.
    p2 = e.post(e.bob, "No category")
    assert "category" not in p2 and p2["author"]["username"] == "bob", p2


def check_get_by_id_returns_the_post_publicly(e):
    p = e.post(e.alice, "Readable", "some content", "misc")
    st, _, doc = call(e.srv, "GET", "/api/posts/%s" % p["id"])
    assert st == 200, (st, doc)
    assert doc["data"] == p, (doc["data"], p)
    # Read by someone else (the author is looked up, not taken from the caller).
    st, _, doc = call(e.srv, "GET", "/api/posts/%s" % p["id"], token=e.bob)
    assert st == 200 and doc["data"]["author"]["username"] == "alice", doc


def check_unknown_and_ill_formed_ids_are_404(e):
    for pid in ("0" * 24, "abc", "zzzzzzzzzzzzzzzzzzzzzzzz", "%7B%22%24gt%22%3A%22%22%7D", "0" * 25):
        st, _, doc = call(e.srv, "GET", "/api/posts/%s" % pid)
        assert_error(st, doc, 404, "NOT_FOUND")
        st, _, doc = call(e.srv, "PATCH", "/api/posts/%s" % pid, {"title": "x"}, e.admin)
        assert_error(st, doc, 404, "NOT_FOUND")
        st, _, doc = call(e.srv, "DELETE", "/api/posts/%s" % pid, token=e.admin)
        assert_error(st, doc, 404, "NOT_FOUND")


def check_fields_are_validated(e):
    cases = [
        ({"content": "c"}, "title"),
        ({"title": "t"}, "content"),
        ({"title": "", "content": "c"}, "title"),
        ({"title": "x" * 201, "content": "c"}, "title"),
        ({"title": "t", "content": ""}, "content"),
        ({"title": "t", "content": "x" * 50001}, "content"),
        ({"title": "t", "content": "c", "category": "x" * 51}, "category"),
        ({"title": "t", "content": "c", "category": ""}, "category"),
        ({"title": {"$gt": ""}, "content": "c"}, "title"),
        ({"title": ["a"], "content": "c"}, "title"),
        ({"title": "t", "content": 5}, "content"),
        ({"title": "t", "content": "c", "category": {"$ne": None}}, "category"),
    ]
    for body, field in cases:
        st, _, doc = call(e.srv, "POST", "/api/posts", body, e.alice)
        assert_validation(st, doc, field)
    # Limits are characters, not bytes: 200 two-byte characters are fine.
    p = e.post(e.alice, "\u00e9" * 200, "x" * 50000, "c" * 50)
    assert len(p["title"]) == 200 and len(p["content"]) == 50000
    st, _, doc = call(e.srv, "POST", "/api/posts", "[1,2]", e.alice, {"Content-Type": "application/json"})
    assert_validation(st, doc, "body")


def check_writes_need_a_valid_token(e):
    p = e.post(e.alice, "Guarded")
    for method, path, body in (("POST", "/api/posts", {"title": "t", "content": "c"}),
                               ("PATCH", "/api/posts/%s" % p["id"], {"title": "t"}),
                               ("DELETE", "/api/posts/%s" % p["id"], None)):
        st, _, doc = call(e.srv, method, path, body)
        assert_error(st, doc, 401, "UNAUTHORIZED")
        assert doc["error"] == "access token required", doc
        st, _, doc = call(e.srv, method, path, body, "not.a.jwt")
        assert_error(st, doc, 403, "FORBIDDEN")


def check_only_the_author_or_an_admin_may_patch(e):
    p = e.post(e.alice, "Original", "text", "one")
    st, _, doc = call(e.srv, "PATCH", "/api/posts/%s" % p["id"], {"title": "Hijacked"}, e.bob)
    assert_error(st, doc, 403, "FORBIDDEN")
    st, _, doc = call(e.srv, "PATCH", "/api/posts/%s" % p["id"], {"title": "Edited", "category": "two"}, e.alice)
    assert st == 200, (st, doc)
    q = doc["data"]
    assert (q["id"], q["title"], q["content"], q["category"]) == (p["id"], "Edited", "text", "two"), q
    assert q["author"]["username"] == "alice" and q["createdAt"] == p["createdAt"], q
    assert q["updatedAt"] >= p["updatedAt"], q
    # An admin edits someone else's post; the author stays alice.
    st, _, doc = call(e.srv, "PATCH", "/api/posts/%s" % p["id"], {"content": "moderated"}, e.admin)
    assert st == 200 and doc["data"]["content"] == "moderated", (st, doc)
    assert doc["data"]["author"] == p["author"], doc
    st, _, doc = call(e.srv, "GET", "/api/posts/%s" % p["id"])
    assert doc["data"]["title"] == "Edited" and doc["data"]["content"] == "moderated", doc
    # Validation on PATCH.
    for body, field in (({}, "body"), ({"title": ""}, "title"), ({"content": "x" * 50001}, "content"),
                        ({"category": {"$gt": ""}}, "category"), ({"author": e.bob_user["id"]}, "body")):
        st, _, doc = call(e.srv, "PATCH", "/api/posts/%s" % p["id"], body, e.alice)
        assert_validation(st, doc, field)
    st, _, doc = call(e.srv, "GET", "/api/posts/%s" % p["id"])
    assert doc["data"]["author"]["id"] == e.alice_user["id"], doc


def check_only_the_author_or_an_admin_may_delete(e):
    p = e.post(e.alice, "Doomed")
    st, _, doc = call(e.srv, "DELETE", "/api/posts/%s" % p["id"], token=e.bob)
    assert_error(st, doc, 403, "FORBIDDEN")
    st, _, data = e.srv.request("DELETE", "/api/posts/%s" % p["id"], headers={"Authorization": "Bearer " + e.alice})
    assert st == 204 and data == b"", (st, data)
    st, _, doc = call(e.srv, "GET", "/api/posts/%s" % p["id"])
    assert_error(st, doc, 404, "NOT_FOUND")
    st, _, doc = call(e.srv, "DELETE", "/api/posts/%s" % p["id"], token=e.alice)
    assert_error(st, doc, 404, "NOT_FOUND")
    q = e.post(e.bob, "Moderated away")
    st, _, _ = e.srv.request("DELETE", "/api/posts/%s" % q["id"], headers={"Authorization": "Bearer " + e.admin})
    assert st == 204


def check_list_is_newest_first_with_pagination(e):
    mine = []
    for i in range(5):
        mine.append(e.post(e.alice, "order %d" % i, category="order-test")["id"])
        time.sleep(0.005)
    ids, doc = list_ids(e.srv, "?category=order-test")
    assert ids == mine[::-1], (ids, mine)
    assert doc["pagination"] == {"page": 1, "limit": 25, "total": 5, "pages": 1}, doc
    item = doc["data"][0]
    assert set(item) == {"id", "title", "content", "category", "author", "createdAt", "updatedAt"}, item
    assert item["author"] == {"id": e.alice_user["id"], "username": "alice", "email": "alice@example.com"}, item
    ids, doc = list_ids(e.srv, "?category=order-test&limit=2&page=2")
    assert ids == [mine[2], mine[1]], ids
    assert doc["pagination"] == {"page": 2, "limit": 2, "total": 5, "pages": 3}, doc
    ids, doc = list_ids(e.srv, "?category=order-test&limit=2&page=3")
    assert ids == [mine[0]], ids
    ids, doc = list_ids(e.srv, "?category=order-test&limit=2&page=4")
    assert ids == [] and doc["pagination"]["total"] == 5 and doc["pagination"]["pages"] == 3, doc
    ids, doc = list_ids(e.srv, "?category=order-test&page=1000000")
    assert ids == [], doc
    # Unfiltered: every post, newest first, default limit 25.
    ids, doc = list_ids(e.srv, "?limit=100")
    assert ids[:5] == mine[::-1], ids
    stamps = [p["createdAt"] for p in doc["data"]]
    assert stamps == sorted(stamps, reverse=True), stamps
    assert doc["pagination"]["limit"] == 100 and doc["pagination"]["total"] == len(ids)


def check_bad_pagination_is_400(e):
    for q in ("limit=0", "limit=101", "limit=abc", "limit=-1", "page=0", "page=-3", "page=x", "limit=1.5",
              "limit=", "page=1&page=2", "limit[$gt]=0&limit=1000"):
        st, _, doc = call(e.srv, "GET", "/api/posts?" + q)
        assert st == 400 and doc["code"] == "VALIDATION_ERROR", (q, st, doc)
        assert doc["error"].startswith("validation failed"), doc


def check_category_filter_and_query_injection(e):
    a = e.post(e.alice, "cat a", category="alpha")["id"]
    b = e.post(e.bob, "cat b", category="beta")["id"]
    ids, doc = list_ids(e.srv, "?category=alpha")
    assert a in ids and b not in ids and all(p["category"] == "alpha" for p in doc["data"]), doc
    # Operator shapes are literal strings or unknown keys, never operators.
    for raw in ('{"$gt":""}', '{"$ne":null}', "$where", "alpha' OR '1'='1"):
        ids, doc = list_ids(e.srv, "?category=" + urllib.parse.quote(raw))
        assert ids == [] and doc["pagination"]["total"] == 0, (raw, doc)
    ids_all, _ = list_ids(e.srv, "?limit=100")
    for q in ("category[$ne]=x", "category%5B%24gt%5D=", "category.%24ne=x"):
        ids, _ = list_ids(e.srv, "?limit=100&" + q)
        assert ids == ids_all, q  # unknown key: ignored
    st, _, doc = call(e.srv, "GET", "/api/posts?category=alpha&category=beta")
    assert_validation(st, doc, "category")
    st, _, doc = call(e.srv, "GET", "/api/posts?category=" + "x" * 51)
    assert_validation(st, doc, "category")
    ids, _ = list_ids(e.srv, "?limit=100&category=")
    assert ids == ids_all  # empty category: no filter


def check_list_cache_is_invalidated_in_every_worker(e):
    def listing():
        ids, _ = list_ids(e.srv, "?category=cached")
        return ids
    first = e.post(e.alice, "cached 0", category="cached")["id"]
    for _ in range(10):  # warm both workers' caches (fresh connection each time)
        assert listing() == [first]
    new = e.post(e.bob, "cached 1", category="cached")["id"]
    for _ in range(20):
        assert listing() == [new, first]
    st, _, doc = call(e.srv, "PATCH", "/api/posts/%s" % new, {"title": "cached 1 edited"}, e.bob)
    assert st == 200, (st, doc)
    for _ in range(20):
        _, doc = list_ids(e.srv, "?category=cached")
        assert doc["data"][0]["title"] == "cached 1 edited", doc
    st, _, _ = e.srv.request("DELETE", "/api/posts/%s" % first, headers={"Authorization": "Bearer " + e.alice})
    assert st == 204
    for _ in range(20):
        assert listing() == [new]
    # Both workers served the list (the cache was tested in each).
    pids = {l.get("pid") for l in e.srv.log_lines() if l.get("path", "").startswith("/api/posts")}
    assert len(pids) >= 2, pids


def check_repeated_lists_are_served_from_the_cache(e):
    if not e.md:
        return  # only the MongoDB double counts database commands
    e.post(e.alice, "hot", category="hot")
    finds = e.md.stat("find")
    for _ in range(12):
        ids, _ = list_ids(e.srv, "?category=hot")
        assert len(ids) == 1
    # At most one miss per worker: the page and its authors.
    assert e.md.stat("find") - finds <= 4, (finds, e.md.stat("find"))


def check_cached_responses_keep_a_fresh_request_id(e):
    e.post(e.alice, "rid", category="rid-test")
    seen = set()
    for i in range(6):
        st, h, doc = call(e.srv, "GET", "/api/posts?category=rid-test", headers={"X-Request-ID": "rid-%d" % i})
        assert st == 200 and h["x-request-id"] == "rid-%d" % i and len(doc["data"]) == 1, (h, doc)
        seen.add(h["x-request-id"])
    assert len(seen) == 6


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
    test.__name__ = "test_posts_api_on_%s" % backend
    return test


if __name__ == "__main__":
    run_tests([make_test("sqlite"), make_test("mongodb")])
