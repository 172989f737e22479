"""Black-box HTTP tests against a real resild: envelopes, headers,
keep-alive, pipelining, framing errors, limits, slowloris, CORS, bodies,
gzip, connection cap and logs."""
import gzip
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Server, parse_responses, run_tests  # noqa: E402

SECURITY = {
    "content-security-policy", "cross-origin-opener-policy", "cross-origin-resource-policy",
    "origin-agent-cluster", "referrer-policy", "strict-transport-security", "x-content-type-options",
    "x-dns-prefetch-control", "x-download-options", "x-frame-options", "x-permitted-cross-domain-policies",
    "x-xss-protection",
}

S = None


def server():
    global S
    if S is None:
        S = Server(env={"RESIL_TEST_HOOKS": "1", "RESIL_BODY_LIMIT": "64k", "RESIL_HEADER_TIMEOUT": "1s",
                        "RESIL_MAX_CONNECTIONS": "40", "RESIL_CORS_ORIGINS": "http://localhost:3000,https://app.example"})
        S.start()
    return S


def test_health_has_spec_shape_and_security_headers():
    st, h, doc = server().json("GET", "/health")
    assert st == 200, st
    assert doc["status"] == "healthy"
    for k in ("uptime", "timestamp", "version", "checks"):
        assert k in doc, k
    assert doc["checks"]["workers"]["total"] >= 1
    assert doc["checks"]["workers"]["ready"] >= 1
    assert doc["timestamp"].endswith("Z") and "T" in doc["timestamp"]
    missing = SECURITY - set(h)
    assert not missing, missing
    assert h["x-frame-options"] == "SAMEORIGIN"
    assert h["referrer-policy"] == "no-referrer"
    assert h["x-xss-protection"] == "0"
    assert "x-powered-by" not in h
    assert h["content-type"].startswith("application/json")
    assert len(h["x-request-id"]) == 36


def test_live_and_ready():
    assert server().request("GET", "/health/live")[0] == 200
    assert server().request("GET", "/health/ready")[0] == 200


def test_unknown_route_is_404_envelope():
    st, h, doc = server().json("GET", "/nope")
    assert st == 404
    assert doc == {"success": False, "error": "route not found", "code": "NOT_FOUND",
                   "requestId": h["x-request-id"]}


def test_wrong_method_is_405_with_allow():
    st, h, doc = server().json("DELETE", "/health")
    assert st == 405
    assert doc["code"] == "METHOD_NOT_ALLOWED"
    assert "GET" in h["allow"] and "HEAD" in h["allow"]


def test_request_id_is_kept_when_valid_and_replaced_otherwise():
    _, h, _ = server().request("GET", "/health/live", headers={"X-Request-ID": "abc.DEF_123-x"})
    assert h["x-request-id"] == "abc.DEF_123-x"
    _, h, _ = server().request("GET", "/health/live", headers={"X-Request-ID": "bad id!"})
    assert h["x-request-id"] != "bad id!" and len(h["x-request-id"]) == 36
    _, h, _ = server().request("GET", "/health/live", headers={"X-Request-ID": "a" * 129})
    assert len(h["x-request-id"]) == 36


def test_traceparent_trace_id_is_logged():
    tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    server().request("GET", "/health/live", headers={"traceparent": "00-%s-00f067aa0ba902b7-01" % tid,
                                                    "X-Request-ID": "trace-test-1"})
    time.sleep(0.2)
    lines = [l for l in server().log_lines() if l.get("requestId") == "trace-test-1"]
    assert lines and lines[0].get("traceId") == tid, lines


def test_access_log_lines_are_json_with_fields():
    server().request("GET", "/health/live", headers={"X-Request-ID": "log-fields-1", "User-Agent": "it/1"})
    time.sleep(0.2)
    lines = [l for l in server().log_lines() if l.get("requestId") == "log-fields-1"]
    assert lines, "no access line"
    l = lines[-1]
    for k in ("timestamp", "level", "message", "pid", "method", "path", "status", "durationMs", "bytes", "ip",
              "userAgent"):
        assert k in l, k
    assert l["status"] == 200 and l["path"] == "/health/live" and l["userAgent"] == "it/1"


def test_keep_alive_serves_several_requests_on_one_connection():
    s = socket.create_connection(("127.0.0.1", server().port), timeout=5)
    for i in range(3):
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"}"):
            data += s.recv(65536)
        assert data.startswith(b"HTTP/1.1 200"), data[:50]
    s.close()


def test_pipelined_requests_are_answered_in_order():
    req = b"".join(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Request-ID: pipe-%d\r\n\r\n" % i for i in range(5))
    req += b"GET /nope HTTP/1.1\r\nHost: x\r\nX-Request-ID: pipe-5\r\nConnection: close\r\n\r\n"
    rs = parse_responses(server().raw(req))
    assert [r[1]["x-request-id"] for r in rs] == ["pipe-%d" % i for i in range(6)], rs
    assert [r[0] for r in rs] == [200] * 5 + [404]


def test_head_has_length_but_no_body():
    data = server().raw(b"HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Length: " in head
    assert body == b""


def test_connection_close_is_honoured():
    data = server().raw(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=3)
    assert b"Connection: close" in data


def test_http10_without_host_is_served_and_closed():
    data = server().raw(b"GET /health/live HTTP/1.0\r\n\r\n", timeout=3)
    assert data.startswith(b"HTTP/1.1 200"), data[:60]


def bad(payload, status=400):
    t0 = time.time()
    data = server().raw(payload, timeout=3)
    assert time.time() - t0 < 2.5, "connection was not closed"
    rs = parse_responses(data)
    assert len(rs) == 1, (payload, data)
    assert rs[0][0] == status, (payload, data[:200])
    doc = json.loads(rs[0][2])
    assert doc["success"] is False and doc["code"] and doc["requestId"]
    return doc


def test_missing_or_duplicate_host_is_400():
    bad(b"GET /health HTTP/1.1\r\n\r\n")
    bad(b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")


def test_smuggling_shapes_are_400_and_close():
    # Both Content-Length and Transfer-Encoding: never two requests.
    bad(b"POST /__test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    bad(b"POST /__test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde")
    bad(b"POST /__test/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
    bad(b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n")
    bad(b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n")


def test_malformed_request_lines_are_400():
    bad(b"GARBAGE\r\n\r\n")
    bad(b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n")
    bad(b"GET http://evil/ HTTP/1.1\r\nHost: x\r\n\r\n")


def test_oversized_headers_are_431():
    bad(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n", 431)
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    bad(b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n", 431)


def test_long_uri_is_414():
    bad(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414)


def test_body_over_limit_is_413():
    body = b"{" + b" " * (70 * 1024) + b"}"
    bad(b"POST /__test/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % len(body) + body, 413)
    chunk = b"a" * 40000
    bad(b"POST /__test/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 2 + b"0\r\n\r\n", 413)


def test_chunked_body_is_accepted():
    payload = b'{"hello": "w\xc3\xb6rld", "n": 3}'
    req = (b"POST /__test/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
           b"Connection: close\r\n\r\n")
    req += b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, payload[:10], len(payload) - 10, payload[10:])
    rs = parse_responses(server().raw(req))
    assert rs[0][0] == 200, rs
    doc = json.loads(rs[0][2])
    assert doc["data"]["body"] == {"hello": "wörld", "n": 3}


def test_json_errors():
    st, _, doc = server().json("POST", "/__test/echo", body='{"a": ', headers={"Content-Type": "application/json"})
    assert st == 400 and doc["code"] == "INVALID_JSON"
    deep = "[" * 65 + "]" * 65
    st, _, doc = server().json("POST", "/__test/echo", body=deep, headers={"Content-Type": "application/json"})
    assert st == 400 and doc["code"] == "INVALID_JSON"
    ok = "[" * 64 + "]" * 64
    st, _, doc = server().json("POST", "/__test/echo", body=ok, headers={"Content-Type": "application/json"})
    assert st == 200
    for raw in (b'{"a":"\xc0\xaf"}', b'{"a":"\xed\xa0\x80"}', b'{"a":"\xff"}', b'{"a":"\\ud800"}'):
        st, _, doc = server().json("POST", "/__test/echo", body=raw, headers={"Content-Type": "application/json"})
        assert st == 400 and doc["code"] == "INVALID_JSON", raw


def test_wrong_content_type_is_415():
    st, _, doc = server().json("POST", "/__test/echo", body="x=1", headers={"Content-Type": "text/plain"})
    assert st == 415 and doc["code"] == "UNSUPPORTED_MEDIA_TYPE"


def test_urlencoded_body_is_parsed():
    st, _, doc = server().json("POST", "/__test/echo", body="name=J%C3%B6rg+X&n=2",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 200
    assert doc["data"]["body"] == {"name": "Jörg X", "n": "2"}


def test_form_key_with_a_raw_nul_is_400_and_the_worker_lives():
    # Found by tests/fuzz_http.c: this body used to free a value twice.
    srv = server()
    body = b"a\0b=1&c=2&c=3"
    data = srv.raw(b"POST /__test/echo HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                   b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body, timeout=3)
    rs = parse_responses(data)
    assert len(rs) == 1 and rs[0][0] == 400, data[:300]
    for _ in range(4):
        st, _, _ = srv.json("GET", "/health/live")
        assert st == 200


def test_query_string_repeated_keys_become_arrays():
    st, _, doc = server().json("GET", "/__test/echo?a=1&b=x%20y&a=2")
    assert st == 200
    assert doc["data"]["query"] == {"a": ["1", "2"], "b": "x y"}


def test_gzip_only_at_or_above_1kib_when_accepted():
    st, h, data = server().request("GET", "/__test/echo?pad=2000", headers={"Accept-Encoding": "gzip"})
    assert st == 200 and h.get("content-encoding") == "gzip"
    assert "accept-encoding" in h.get("vary", "").lower()
    doc = json.loads(gzip.decompress(data))
    assert len(doc["data"]["pad"]) == 2000
    st, h, data = server().request("GET", "/__test/echo?pad=10", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in h
    st, h, data = server().request("GET", "/__test/echo?pad=2000")
    assert "content-encoding" not in h


def test_cors_allowed_origin_is_echoed_and_preflight_is_204():
    _, h, _ = server().request("GET", "/health", headers={"Origin": "https://app.example"})
    assert h.get("access-control-allow-origin") == "https://app.example"
    assert h.get("access-control-allow-credentials") == "true"
    assert "origin" in h.get("vary", "").lower()
    _, h, _ = server().request("GET", "/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in h
    st, h, body = server().request("OPTIONS", "/health", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization"})
    assert st == 204 and body == b""
    assert "POST" in h["access-control-allow-methods"]
    assert h["access-control-allow-origin"] == "http://localhost:3000"


def test_slow_headers_are_dropped():
    s = socket.create_connection(("127.0.0.1", server().port), timeout=5)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    t0 = time.time()
    data = b""
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
    except socket.timeout:
        raise AssertionError("slow client was not dropped")
    s.close()
    took = time.time() - t0
    assert took < 4, took
    assert data == b"" or data.startswith(b"HTTP/1.1 408")


def test_trickled_headers_are_dropped_too():
    s = socket.create_connection(("127.0.0.1", server().port), timeout=5)
    s.sendall(b"GET /health HTTP/1.1\r\n")
    t0 = time.time()
    closed = False
    while time.time() - t0 < 4:
        try:
            s.sendall(b"X: y\r\n")
        except OSError:
            closed = True
            break
        time.sleep(0.2)
    s.close()
    assert closed, "slowloris connection stayed open"


def test_abrupt_disconnects_do_not_hurt_the_worker():
    for payload in (b"GET /hea", b"POST /__test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
                    b"GET /__test/slow?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n"):
        s = socket.create_connection(("127.0.0.1", server().port))
        s.sendall(payload)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    time.sleep(0.5)
    assert server().request("GET", "/health")[0] == 200


def test_connection_cap_answers_503():
    socks = []
    try:
        for _ in range(45):
            socks.append(socket.create_connection(("127.0.0.1", server().port), timeout=3))
        time.sleep(0.3)
        got503 = 0
        for s in socks:
            s.settimeout(0.2)
            try:
                d = s.recv(4096)
                if d.startswith(b"HTTP/1.1 503"):
                    got503 += 1
            except socket.timeout:
                pass
        assert got503 >= 5, got503
    finally:
        for s in socks:
            s.close()
    time.sleep(0.3)
    assert server().request("GET", "/health")[0] == 200


def test_expect_100_continue():
    s = socket.create_connection(("127.0.0.1", server().port), timeout=3)
    s.sendall(b"POST /__test/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
              b"Expect: 100-continue\r\n\r\n")
    d = s.recv(4096)
    assert d.startswith(b"HTTP/1.1 100 Continue"), d
    s.sendall(b"{}")
    d = b""
    while b'"body"' not in d:
        d += s.recv(4096)
    assert b"HTTP/1.1 200" in d
    s.close()


def test_sigterm_exits_zero():
    st = Server(env={"RESIL_TEST_HOOKS": "1"}).start()
    try:
        assert st.stop() == 0
    finally:
        st.cleanup()


def test_zz_shutdown_is_clean():
    global S
    server().assert_clean_exit()
    S.cleanup()
    S = None


if __name__ == "__main__":
    try:
        run_tests([globals()[k] for k in list(globals()) if k.startswith("test_")])
    finally:
        if S:
            S.cleanup()
