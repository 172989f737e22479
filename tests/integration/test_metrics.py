"""Black-box tests of GET /metrics (SPEC section 10, issue 16 item 2): the
answer is strict Prometheus text 0.0.4; counts are the service's (summed
over workers, whichever worker answers) and survive a reload and a killed
worker without ever going back; requests are counted by route template,
method and status class; store operations, rate-limit rejections and
restarts are counted; only RESIL_METRICS_ALLOW peers may read it, and the
socket peer is what is checked, never a forwarded address."""
import http.client
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import RESILD, Server, run_tests  # noqa: E402
# At the top: without python3-websockets, test_ws re-runs this file with
# /usr/bin/python3 (Debian's), which must happen before any test starts.
from test_api_rooms import MongoDouble  # noqa: E402
from test_ws import Api, Raw, ev  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESILCTL = os.environ.get("RESILCTL") or os.path.join(HERE, "..", "..", "resilctl")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE_RE = re.compile(r"^(%s)(?:\{(.*)\})? (\S+)$" % NAME)
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def parse_labels(s):
    """Parse `a="x",b="y\\"z"` strictly (escapes: \\\\ \\" \\n)."""
    out = {}
    i = 0
    while i < len(s):
        m = LABEL_NAME_RE.match(s, i)
        assert m, "bad label name at %r" % s[i:]
        name = m.group(0)
        i = m.end()
        assert s[i:i + 2] == '="', "expected =\" after %s in %r" % (name, s)
        i += 2
        val = []
        while True:
            assert i < len(s), "unterminated label value in %r" % s
            ch = s[i]
            if ch == "\\":
                nxt = s[i + 1:i + 2]
                assert nxt in ("\\", '"', "n"), "bad escape \\%s in %r" % (nxt, s)
                val.append({"\\": "\\", '"': '"', "n": "\n"}[nxt])
                i += 2
            elif ch == '"':
                i += 1
                break
            else:
                assert ch != "\n"
                val.append(ch)
                i += 1
        assert name not in out, "label %s repeated in %r" % (name, s)
        out[name] = "".join(val)
        if i < len(s):
            assert s[i] == ",", "expected , in %r" % s
            i += 1
    return out


def parse(text):
    """Strict text-format parser: every family has one HELP and one TYPE
    before its samples, samples of a family are contiguous, no series
    twice, values are floats, counters never negative, histograms have
    monotonic cumulative buckets ending in +Inf == _count, with _sum.
    Returns {(name, frozenset(labels)): value} and {family: type}."""
    assert text.endswith("\n"), "the exposition ends with a newline"
    samples, types, helps = {}, {}, {}
    done = set()  # families whose block has ended
    current = None
    for n, line in enumerate(text.split("\n")[:-1], 1):
        assert line.strip() == line and line, "line %d: empty or padded %r" % (n, line)
        if line.startswith("#"):
            parts = line.split(" ", 3)
            assert parts[0] == "#" and parts[1] in ("HELP", "TYPE") and len(parts) == 4, "line %d: %r" % (n, line)
            fam = parts[2]
            assert re.fullmatch(NAME, fam), line
            assert fam not in done, "line %d: family %s comes back after another one" % (n, fam)
            if current and current != fam:
                done.add(current)
            current = fam
            if parts[1] == "HELP":
                assert fam not in helps and fam not in types, "line %d: HELP of %s not first / repeated" % (n, fam)
                helps[fam] = parts[3]
            else:
                assert fam in helps and fam not in types, "line %d: TYPE of %s without HELP / repeated" % (n, fam)
                assert parts[3] in TYPES, line
                types[fam] = parts[3]
            continue
        m = SAMPLE_RE.match(line)
        assert m, "line %d: not a sample: %r" % (n, line)
        name, labels, value = m.group(1), parse_labels(m.group(2) or ""), float(m.group(3))
        fam = name
        if current and types.get(current) == "histogram" and name in (current + "_bucket", current + "_sum",
                                                                       current + "_count"):
            fam = current
        assert fam == current and fam in types, "line %d: sample %s outside its family block" % (n, name)
        if types[fam] == "counter":
            assert name.endswith("_total") and value >= 0, line
        key = (name, frozenset(labels.items()))
        assert key not in samples, "line %d: series repeated: %r" % (n, line)
        samples[key] = value
    for fam, t in types.items():
        if t != "histogram":
            continue
        series = {}
        for (name, labels), v in samples.items():
            if name == fam + "_bucket":
                d = dict(labels)
                le = d.pop("le")
                series.setdefault(frozenset(d.items()), []).append((math.inf if le == "+Inf" else float(le), v))
        for labels, buckets in series.items():
            buckets.sort()
            assert buckets[-1][0] == math.inf, "%s %s: no +Inf bucket" % (fam, dict(labels))
            counts = [v for _, v in buckets]
            assert counts == sorted(counts), "%s %s: buckets not monotonic: %r" % (fam, dict(labels), buckets)
            assert samples[(fam + "_count", labels)] == counts[-1], "%s: +Inf != _count" % fam
            assert (fam + "_sum", labels) in samples, "%s: no _sum" % fam
    return samples, types


def scrape(srv, headers=None):
    st, h, data = srv.request("GET", "/metrics", headers=headers)
    assert st == 200, (st, data[:300])
    assert h["content-type"] == CONTENT_TYPE, h
    samples, _ = parse(data.decode("utf-8"))
    return samples


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests_total(samples, route, method, status):
    return value(samples, "resil_http_requests_total", route=route, method=method, status=status)


def counters(samples):
    """Every counter-like series: _total, histogram _bucket/_count/_sum."""
    return {k: v for k, v in samples.items()
            if k[0].endswith(("_total", "_bucket", "_count", "_sum")) and not k[0].startswith("resil_worker_cpu")}


def assert_not_below(before, after, what):
    for k, v in before.items():
        assert after.get(k, 0.0) >= v, "%s: %s %s went back from %s to %s" % (
            what, k[0], dict(k[1]), v, after.get(k, 0.0))


def get_fresh(port, path, timeout=10):
    """GET on a new connection; (status, parsed JSON body)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        data = r.read()
        return r.status, json.loads(data) if data else None
    finally:
        c.close()


def ctl_status(srv):
    p = subprocess.run([RESILCTL, "-s", srv.env["RESIL_CONTROL"], "status", "--json"], capture_output=True,
                       text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def ready_pids(srv, n):
    st = ctl_status(srv)
    ws = st["workers"]
    if len(ws) != n or any(w["state"] != "ready" or w["pid"] <= 0 for w in ws):
        return None
    return sorted(w["pid"] for w in ws)


def wait_for(fn, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.05)


def test_exposition_is_strict_prometheus_text_with_every_family():
    srv = Server(workers=2).start()
    try:
        srv.request("GET", "/health")
        srv.request("GET", "/api/posts")
        samples = scrape(srv)
        st, h, data = srv.request("GET", "/metrics")
        _, types = parse(data.decode())
        for fam, t in [("resil_http_requests_total", "counter"),
                       ("resil_http_request_duration_seconds", "histogram"),
                       ("resil_http_requests_in_flight", "gauge"),
                       ("resil_websocket_connections", "gauge"),
                       ("resil_websocket_messages_received_total", "counter"),
                       ("resil_websocket_frames_sent_total", "counter"),
                       ("resil_websocket_slow_reader_closes_total", "counter"),
                       ("resil_ratelimit_rejections_total", "counter"),
                       ("resil_store_operations_total", "counter"),
                       ("resil_store_operation_duration_seconds", "histogram"),
                       ("resil_circuit_state", "gauge"),
                       ("resil_circuit_transitions_total", "counter"),
                       ("resil_jobs_queued", "gauge"),
                       ("resil_jobs_rejections_total", "counter"),
                       ("resil_worker_restarts_total", "counter"),
                       ("resil_worker_resident_memory_bytes", "gauge"),
                       ("resil_worker_cpu_seconds_total", "counter"),
                       ("resil_build_info", "gauge")]:
            assert types.get(fam) == t, "%s: %s" % (fam, types.get(fam))
        assert requests_total(samples, "/health", "GET", "2xx") >= 1
        assert value(samples, "resil_circuit_state", circuit="sqlite") == 0
        wait_for(lambda: value(scrape(srv), "resil_workers", state="ready") == 2, 15, "2 ready workers")
        # a worker that has been up a moment has a sampled RSS
        wait_for(lambda: all(value(scrape(srv), "resil_worker_resident_memory_bytes", worker=w) > 0
                             for w in ("0", "1")), 10, "RSS of both workers")
        # route templates only: no raw path or id becomes a label
        srv.request("GET", "/api/posts/5f0000000000000000000001")
        srv.request("GET", "/no/such/path/secret-token")
        text = srv.request("GET", "/metrics")[2].decode()
        assert "5f0000000000000000000001" not in text and "secret-token" not in text
        assert 'route="/api/posts/:id"' in text and 'route="unmatched"' in text
        # gzip when asked (a scraper's Accept-Encoding)
        st, h, data = srv.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
        assert st == 200 and h.get("content-encoding") == "gzip", h
        srv.assert_clean_exit()  # exit 0, no sanitizer or valgrind report
    finally:
        srv.cleanup()


def test_counts_are_summed_over_both_workers_exactly():
    srv = Server(workers=2).start()
    try:
        before = scrape(srv)
        seen, n = set(), 0
        # fresh connections until both workers answered, at least 40
        while n < 40 or len(seen) < 2:
            st, doc = get_fresh(srv.port, "/health/live")
            assert st == 200
            seen.add(doc["worker"])
            n += 1
            assert n < 2000, "one worker took every connection"
        after = scrape(srv)  # from either worker: the same totals
        assert requests_total(after, "/health/live", "GET", "2xx") - \
            requests_total(before, "/health/live", "GET", "2xx") == n
        h = "resil_http_request_duration_seconds_count"
        assert value(after, h, route="/health/live") - value(before, h, route="/health/live") == n
        again = scrape(srv)
        assert requests_total(again, "/health/live", "GET", "2xx") == requests_total(after, "/health/live", "GET",
                                                                                     "2xx")
        srv.assert_clean_exit()  # exit 0, no sanitizer or valgrind report
    finally:
        srv.cleanup()


def test_status_classes_store_ops_and_rate_limit_rejections_are_counted():
    srv = Server(workers=2, env={"RESIL_TEST_HOOKS": "1", "RESIL_RATE_LIMIT": "3/10m"}).start()
    try:
        b = scrape(srv)
        assert srv.request("GET", "/no/such/route")[0] == 404
        assert srv.request("DELETE", "/health")[0] == 405
        assert srv.request("GET", "/__test/steps?n=0")[0] == 503  # a dropped job
        assert srv.request("GET", "/api/posts")[0] == 200
        assert srv.request("POST", "/api/posts", body={"title": "x"})[0] == 401
        a = scrape(srv)
        d = lambda r, m, s: requests_total(a, r, m, s) - requests_total(b, r, m, s)  # noqa: E731
        assert d("unmatched", "GET", "4xx") == 1
        assert d("unmatched", "DELETE", "4xx") == 1
        assert d("/__test/steps", "GET", "5xx") == 1
        assert d("/api/posts", "GET", "2xx") == 1
        assert d("/api/posts", "POST", "4xx") == 1
        # the list ran its store operation (a count: no post, so no page to find) on SQLite
        for op in ("count",):
            k = dict(backend="sqlite", op=op, result="ok")
            assert value(a, "resil_store_operations_total", **k) > value(b, "resil_store_operations_total", **k), op
            hk = dict(backend="sqlite", op=op)
            assert value(a, "resil_store_operation_duration_seconds_count", **hk) > \
                value(b, "resil_store_operation_duration_seconds_count", **hk)
        # 3 per 10 minutes and 2 /api/ requests made: the 2nd next one is refused, and the one after
        codes = [srv.request("GET", "/api/posts")[0] for _ in range(3)]
        assert codes == [200, 429, 429], codes
        c = scrape(srv)
        assert value(c, "resil_ratelimit_rejections_total", limiter="api") - \
            value(b, "resil_ratelimit_rejections_total", limiter="api") == 2
        assert requests_total(c, "/api/posts", "GET", "4xx") - requests_total(b, "/api/posts", "GET", "4xx") == 2
        # /metrics itself is outside the limit
        for _ in range(5):
            scrape(srv)
        srv.assert_clean_exit()  # exit 0, no sanitizer or valgrind report
    finally:
        srv.cleanup()


def test_counters_survive_reload_and_a_killed_worker_and_never_go_back():
    srv = Server(workers=2).start()
    stop = threading.Event()
    problems = []

    def scraper():
        last = {}
        while not stop.is_set():
            try:
                cur = counters(scrape(srv))
            except (OSError, http.client.HTTPException):
                continue  # a connection to a draining worker
            except AssertionError as e:
                problems.append(str(e))
                return
            for k, v in last.items():
                if cur.get(k, 0.0) < v:
                    problems.append("%s %s went back from %s to %s" % (k[0], dict(k[1]), v, cur.get(k, 0.0)))
                    return
            last = cur
            time.sleep(0.01)

    t = threading.Thread(target=scraper)
    try:
        wait_for(lambda: ready_pids(srv, 2), 15, "2 ready workers")
        for _ in range(30):
            assert get_fresh(srv.port, "/health")[0] == 200
        base = scrape(srv)
        assert requests_total(base, "/health", "GET", "2xx") >= 30
        t.start()
        p = subprocess.run([RESILCTL, "-s", srv.env["RESIL_CONTROL"], "reload"], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stdout + p.stderr
        pids = wait_for(lambda: ready_pids(srv, 2), 15, "2 ready workers after the reload")
        after_reload = scrape(srv)
        assert_not_below(counters(base), counters(after_reload), "after reload")
        assert value(after_reload, "resil_worker_restarts_total", cause="reload") - \
            value(base, "resil_worker_restarts_total", cause="reload") == 2
        for _ in range(10):
            assert get_fresh(srv.port, "/health")[0] == 200
        before_kill = scrape(srv)
        os.kill(pids[0], signal.SIGKILL)
        wait_for(lambda: (ready_pids(srv, 2) or [pids[0]])[0] != pids[0] and pids[0] not in ready_pids(srv, 2),
                 15, "the killed worker replaced")
        after_kill = scrape(srv)
        assert_not_below(counters(before_kill), counters(after_kill), "after SIGKILL")
        assert requests_total(after_kill, "/health", "GET", "2xx") >= requests_total(base, "/health", "GET",
                                                                                     "2xx") + 10
        assert value(after_kill, "resil_worker_restarts_total", cause="crash") - \
            value(before_kill, "resil_worker_restarts_total", cause="crash") == 1
        stop.set()
        t.join(30)
        assert not problems, problems
        srv.assert_clean_exit()  # exit 0, no sanitizer or valgrind report
    finally:
        stop.set()
        if t.is_alive():
            t.join(30)
        srv.cleanup()


def test_websocket_connections_messages_and_deliveries_are_counted():
    srv = Server(workers=1).start()
    sock = None
    try:
        api = Api(srv)
        u = api.user("m")
        rid = api.room(u)
        b = scrape(srv)
        sock = Raw(srv.port, token=u["token"])
        assert sock.status == 101, sock.status
        sock.send_text(ev("join_room", roomId=rid))
        assert sock.recv_event()["event"] == "room_joined"
        assert sock.recv_event()["event"] == "recent_messages"
        sock.send_text(ev("send_message", roomId=rid, content="hello metrics"))
        while sock.recv_event()["event"] != "new_message":
            pass
        a = wait_for(lambda: (lambda m: m if value(m, "resil_websocket_frames_sent_total") -
                              value(b, "resil_websocket_frames_sent_total") >= 3 else None)(scrape(srv)),
                     10, "three frames delivered")
        assert value(a, "resil_websocket_connections") == 1
        assert value(a, "resil_websocket_messages_received_total") - \
            value(b, "resil_websocket_messages_received_total") == 2
        assert requests_total(a, "/ws", "GET", "1xx") - requests_total(b, "/ws", "GET", "1xx") == 1
        assert value(a, "resil_store_operations_total", backend="sqlite", op="insert_many", result="ok") > \
            value(b, "resil_store_operations_total", backend="sqlite", op="insert_many", result="ok")
        sock.close()
        sock = None
        wait_for(lambda: value(scrape(srv), "resil_websocket_connections") == 0, 10, "the socket gone")
        srv.assert_clean_exit()  # exit 0, no sanitizer or valgrind report
    finally:
        if sock:
            sock.close()
        srv.cleanup()


def test_mongodb_failures_and_breaker_transitions_are_counted():
    md = MongoDouble()
    srv = Server(workers=1, db=md.uri("resil_it_metrics_%d" % os.getpid()),
                 env={"RESIL_RATE_LIMIT": "100000/15m"})
    try:
        srv.start()
        st, _, doc = srv.json("POST", "/api/auth/register",
                              {"username": "mia", "email": "mia@example.com", "password": "password123"})
        assert st == 201, (st, doc)
        auth = {"Authorization": "Bearer " + doc["data"]["token"]}
        assert srv.json("GET", "/api/rooms", None, auth)[0] == 200
        b = scrape(srv)
        assert value(b, "resil_store_operations_total", backend="mongodb", op="insert", result="ok") >= 1
        assert value(b, "resil_circuit_state", circuit="mongodb") == 0
        md.cmd("stop")
        codes, n503 = set(), 0
        deadline = time.monotonic() + 25
        while "CIRCUIT_OPEN" not in codes and time.monotonic() < deadline:
            st, _, doc = srv.json("GET", "/api/rooms", None, auth)
            assert st == 503, (st, doc)
            codes.add(doc["code"])
            n503 += 1
        assert "CIRCUIT_OPEN" in codes, codes
        a = scrape(srv)
        failed = sum(value(a, "resil_store_operations_total", backend="mongodb", op=op, result=r)
                     for op in ("find", "count") for r in ("unavailable", "timeout"))
        assert failed >= 1, [k for k in a if k[0] == "resil_store_operations_total"]
        assert sum(v for k, v in a.items() if k[0] == "resil_store_operations_total" and
                   ("result", "circuit_open") in k[1]) >= 1, [(k, v) for k, v in a.items()
                                                              if k[0] == "resil_store_operations_total"]
        assert value(a, "resil_circuit_transitions_total", circuit="mongodb", to="open") - \
            value(b, "resil_circuit_transitions_total", circuit="mongodb", to="open") >= 1
        assert requests_total(a, "/api/rooms", "GET", "5xx") - requests_total(b, "/api/rooms", "GET", "5xx") == n503
        wait_for(lambda: value(scrape(srv), "resil_circuit_state", circuit="mongodb") in (1, 2), 10,
                 "the breaker open in the scoreboard")
        srv.assert_clean_exit()  # exit 0, no sanitizer or valgrind report
    finally:
        md.cmd("start")
        srv.cleanup()
        md.close()


def test_only_allowed_peers_read_metrics_and_the_socket_peer_is_checked():
    # ::1 only: 127.0.0.1 is refused, with the JSON error envelope
    srv = Server(workers=1, env={"RESIL_METRICS_ALLOW": "::1"}).start()
    try:
        st, h, doc = srv.json("GET", "/metrics")
        assert st == 403 and doc["success"] is False and doc["code"] == "FORBIDDEN", (st, doc)
    finally:
        srv.cleanup()
    # a trusted proxy forwarding an allowed address does not open it
    srv = Server(workers=1, env={"RESIL_METRICS_ALLOW": "10.0.0.0/8", "RESIL_TRUST_PROXY": "127.0.0.1"}).start()
    try:
        st, h, doc = srv.json("GET", "/metrics", headers={"X-Forwarded-For": "10.1.2.3"})
        assert st == 403 and doc["code"] == "FORBIDDEN", (st, doc)
    finally:
        srv.cleanup()
    # the default: loopback reads it
    srv = Server(workers=1).start()
    try:
        scrape(srv)
    finally:
        srv.cleanup()
    # a bad list is a configuration error, found before anything starts
    srv = Server(workers=1, env={"RESIL_METRICS_ALLOW": "10.0.0.0/99"})
    try:
        p = subprocess.run([RESILD, "--check-config"], env=srv.env, cwd=srv.dir, capture_output=True, text=True,
                           timeout=30, stdin=subprocess.DEVNULL)
        assert p.returncode != 0 and "RESIL_METRICS_ALLOW" in p.stderr, (p.returncode, p.stderr)
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run_tests([
        test_exposition_is_strict_prometheus_text_with_every_family,
        test_counts_are_summed_over_both_workers_exactly,
        test_status_classes_store_ops_and_rate_limit_rejections_are_counted,
        test_counters_survive_reload_and_a_killed_worker_and_never_go_back,
        test_websocket_connections_messages_and_deliveries_are_counted,
        test_mongodb_failures_and_breaker_transitions_are_counted,
        test_only_allowed_peers_read_metrics_and_the_socket_peer_is_checked,
    ])
