#!/usr/bin/env python3
"""Auth before body (SPEC section 5, issue 13 item 7): on a route that
requires a token, a missing or bad token is answered at header time without
reading the body, and the connection is closed after the answer; requests
that are not authenticated get a small body limit (16 KiB; register and
login 64 KiB); an authenticated request keeps RESIL_BODY_LIMIT.

The load round sends 100 unauthenticated 10 MiB uploads, 20 at a time, and
checks that each is refused (401/403/413) within a bound while the workers'
RSS stays bounded. Standard library only; loopback only; bounded waits.
"""
import concurrent.futures
import json
import os
import select
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Server, run_tests  # noqa: E402
from test_backpressure import instrumented, rss_kib, worker_pids  # noqa: E402

VALGRIND = bool(os.environ.get("RESIL_VALGRIND"))
ANSWER_BOUND_S = 20.0 if VALGRIND else 2.0
TEN_MIB = 10 * 1024 * 1024

S = None
TOKEN = None


def server():
    global S, TOKEN
    if S is None:
        S = Server(workers=2, env={"RESIL_LOG_LEVEL": "warn", "RESIL_RATE_LIMIT": "100000/1m",
                                   "RESIL_BODY_LIMIT": "10m"})
        S.start()
        st, _, doc = S.json("POST", "/api/auth/register",
                            {"username": "uploader", "email": "up@example.com", "password": "correct horse 1"})
        assert st == 201, (st, doc)
        TOKEN = doc["data"]["token"]
    return S


def upload(path, length, headers=b"", chunked=False, body_byte=b"x"):
    """Send a request head announcing `length` body bytes, then write the
    body while watching for an answer. Returns (status, headers, seconds to
    the answer, body bytes written before it)."""
    srv = server()
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.setblocking(False)
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: %d\r\n" % length
    head = (b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" % path.encode()) + framing + \
        headers + b"\r\n"
    chunk = body_byte * 65536
    if chunked:
        chunk = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    pending = head
    left = length
    written = 0
    got = b""
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < ANSWER_BOUND_S + 5:
            want_w = [s] if (pending or left > 0) else []
            r, w, _ = select.select([s], want_w, [], 0.5)
            if r:
                try:
                    b = s.recv(65536)
                except ConnectionResetError:
                    b = b""
                if not b and not got:
                    raise AssertionError("%s: connection closed without an answer" % path)
                got += b
                if b"\r\n\r\n" in got or not b:
                    break
            if w:
                if not pending:
                    n = min(left, 65536)
                    pending = chunk if chunked else chunk[:n]
                    left -= n
                try:
                    k = s.send(pending)
                    written += k
                    pending = pending[k:]
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    pending = b""
                    left = 0
        elapsed = time.monotonic() - t0
        assert b"\r\n\r\n" in got, "%s: no answer within %.0fs (%d bytes written)" % (path, elapsed, written)
        # The rest of the answer (its small body) follows.
        headpart, _, rest = got.partition(b"\r\n\r\n")
        lines = headpart.split(b"\r\n")
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            hdrs[k.strip().lower().decode()] = v.strip().decode()
        n = int(hdrs.get("content-length", "0"))
        s.setblocking(True)
        s.settimeout(5)
        while len(rest) < n:
            b = s.recv(65536)
            if not b:
                break
            rest += b
        hdrs["_body"] = rest[:n]
        return int(lines[0].split()[1]), hdrs, elapsed, written
    finally:
        s.close()


def error_code(hdrs):
    return json.loads(hdrs["_body"])["code"]


def test_missing_token_is_401_before_the_body_and_the_connection_closes():
    st, h, secs, written = upload("/api/posts", TEN_MIB)
    assert st == 401, st
    assert error_code(h) == "UNAUTHORIZED"
    assert h.get("connection", "").lower() == "close", h
    assert "ratelimit-limit" in h and "x-request-id" in h, h  # the whole chain answered
    assert secs < ANSWER_BOUND_S, secs
    assert written < TEN_MIB, "the whole body was taken before the answer"


def test_bad_token_is_refused_before_the_body():
    st, h, secs, written = upload("/api/posts", TEN_MIB, b"Authorization: Bearer not.a.token\r\n")
    assert st == 403, st
    assert error_code(h) == "FORBIDDEN"
    assert h.get("connection", "").lower() == "close", h
    assert written < TEN_MIB
    st, h, _, _ = upload("/api/rooms", TEN_MIB, chunked=True)
    assert st == 401, st


def test_public_routes_get_a_small_body_limit():
    # Register and login: 64 KiB. A 10 MiB or 100 KiB body is 413 at once.
    st, h, secs, written = upload("/api/auth/register", TEN_MIB)
    assert st == 413 and error_code(h) == "PAYLOAD_TOO_LARGE", st
    assert written < TEN_MIB
    st, h, _, _ = upload("/api/auth/login", 100 * 1024)
    assert st == 413, st
    st, h, _, _ = upload("/api/auth/login", 100 * 1024, chunked=True)
    assert st == 413, st
    # 20 KiB fits register's own limit: parsed and validated (not 413).
    st, h, _, _ = upload("/api/auth/register", 20 * 1024, body_byte=b" ")
    assert st == 400, st
    # Anything else unauthenticated: 16 KiB.
    st, h, _, _ = upload("/api/nope", 20 * 1024)
    assert st == 413, st
    st, h, _, _ = upload("/api/nope", 1024, body_byte=b" ")
    assert st == 400 and error_code(h) == "INVALID_JSON", st  # read (and parsed): under the limit


def test_an_authenticated_request_keeps_the_full_body_limit():
    srv = server()
    body = json.dumps({"title": "big", "content": "y" * 60000})  # over the 50000 content limit
    st, _, doc = srv.json("POST", "/api/posts", body, headers={"Authorization": "Bearer " + TOKEN,
                                                                "Content-Type": "application/json"})
    assert st == 400 and doc["code"] == "VALIDATION_ERROR", (st, doc)
    body = json.dumps({"title": "fits", "content": "z" * 40000})
    st, _, doc = srv.json("POST", "/api/posts", body, headers={"Authorization": "Bearer " + TOKEN,
                                                                "Content-Type": "application/json"})
    assert st == 201, (st, doc)
    # Keep-alive is untouched for requests whose body was read.
    c = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        req = (b"POST /api/posts HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
               b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}" % TOKEN.encode())
        c.sendall(req + req)
        data = b""
        deadline = time.monotonic() + 10
        while data.count(b"HTTP/1.1 400") < 2 and time.monotonic() < deadline:
            b = c.recv(65536)
            if not b:
                break
            data += b
        assert data.count(b"HTTP/1.1 400") == 2, data[:400]
    finally:
        c.close()


def test_a_hundred_anonymous_ten_mib_uploads_keep_memory_bounded():
    srv = server()
    pids = worker_pids(srv)
    base = {p: rss_kib(p) for p in pids}
    peak = dict(base)
    kinds = [("/api/posts", b""), ("/api/patients", b"Authorization: Bearer x.y.z\r\n"),
             ("/api/auth/register", b""), ("/api/rooms", b"")]

    def one(i):
        path, hdr = kinds[i % len(kinds)]
        st, _, secs, _ = upload(path, TEN_MIB, hdr)
        for p in pids:
            peak[p] = max(peak[p], rss_kib(p))
        return st, secs

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as ex:
        results = list(ex.map(one, range(100)))
    for p in pids:
        peak[p] = max(peak[p], rss_kib(p))
    statuses = sorted({st for st, _ in results})
    slowest = max(secs for _, secs in results)
    growth = max(peak[p] - base[p] for p in pids)
    print("  100 x 10 MiB anonymous uploads, 20 at a time: statuses %r, slowest answer %.0f ms, worker RSS base %r"
          " KiB, peak %r KiB (growth %.1f MiB)" % (statuses, slowest * 1000, [base[p] for p in pids],
                                                    [peak[p] for p in pids], growth / 1024.0), flush=True)
    assert set(statuses) <= {401, 403, 413}, statuses
    assert slowest < ANSWER_BOUND_S, slowest
    if not instrumented():
        assert growth < 24 * 1024, "worker RSS grew by %.1f MiB" % (growth / 1024.0)
    assert srv.request("GET", "/health/live")[0] == 200


def test_zz_shutdown_is_clean():
    if S is not None:
        S.assert_clean_exit()
        S.cleanup()


if __name__ == "__main__":
    run_tests([test_missing_token_is_401_before_the_body_and_the_connection_closes,
               test_bad_token_is_refused_before_the_body,
               test_public_routes_get_a_small_body_limit,
               test_an_authenticated_request_keeps_the_full_body_limit,
               test_a_hundred_anonymous_ten_mib_uploads_keep_memory_bounded,
               test_zz_shutdown_is_clean])
