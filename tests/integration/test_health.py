"""Black-box tests of GET /health aggregated over workers (SPEC section 6,
issue 16 item 5): a circuit breaker opened in one worker shows in /health
from every worker, as the worst state ("circuits", SPEC shape) with how
many ready workers see each state ("circuitsDetail"), and /health agrees
with `resilctl health`.

The external-api breaker of one worker is opened by patient syncs sent on
one keep-alive connection (so to one worker) while the external API is a
closed loopback port (connection refused counts as a failure)."""
import http.client
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Server, run_tests  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESILCTL = os.environ.get("RESILCTL") or os.path.join(HERE, "..", "..", "resilctl")


def closed_port():
    """A loopback port nobody listens on (bound then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def call(conn, method, path, body=None, token=None):
    h = {}
    if body is not None:
        body = json.dumps(body)
        h["Content-Type"] = "application/json"
    if token:
        h["Authorization"] = "Bearer " + token
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    return r.status, json.loads(data) if data else None


def health_via_worker(srv, want_id, tries=60):
    """GET /health on a connection served by worker want_id (found by its
    /health/live answer on the same keep-alive connection)."""
    for _ in range(tries):
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        try:
            st, doc = call(c, "GET", "/health/live")
            if st == 200 and doc["worker"] == want_id:
                return call(c, "GET", "/health")
        finally:
            c.close()
        time.sleep(0.01)
    raise AssertionError("no connection reached worker %d" % want_id)


def test_breaker_opened_in_one_worker_shows_in_health_from_every_worker():
    srv = Server(workers=2, env={"RESIL_TEST_HOOKS": "1",
                                 "RESIL_EXTERNAL_API_URL": "http://127.0.0.1:%d" % closed_port(),
                                 "RESIL_EXTERNAL_API_KEY": "test-key", "RESIL_EXTERNAL_API_TIMEOUT": "1s"}).start()
    try:
        deadline = time.time() + 15
        while time.time() < deadline:
            st, _, doc = srv.json("GET", "/health")
            if doc["checks"]["workers"] == {"total": 2, "ready": 2}:
                break
            time.sleep(0.05)
        assert doc["status"] == "healthy" and doc["checks"]["circuits"]["external-api"] == "closed", doc
        assert doc["checks"]["circuitsDetail"]["external-api"] == {"closed": 2, "open": 0, "halfOpen": 0}, doc

        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=15)
        st, live = call(c, "GET", "/health/live")
        opened_in = live["worker"]
        st, doc = call(c, "POST", "/api/auth/register",
                       {"username": "admin", "email": "admin@example.com", "password": "correct-horse-1"})
        assert st == 201 and doc["data"]["user"]["role"] == "admin", (st, doc)
        token = doc["data"]["token"]
        st, doc = call(c, "POST", "/api/patients", {"name": "Pat Doe", "email": "pat@example.com",
                                                    "dateOfBirth": "1975-03-14", "ssn": "078-05-1120",
                                                    "medicalRecord": "MR-1", "externalId": "ext-1"}, token)
        assert st == 201, (st, doc)
        pid = doc["data"]["id"]
        codes = []
        for _ in range(6):
            st, doc = call(c, "POST", "/api/patients/%s/sync" % pid, token=token)
            codes.append(doc.get("code"))
            if doc.get("code") == "CIRCUIT_OPEN":
                break
        c.close()
        assert codes[-1] == "CIRCUIT_OPEN", codes

        other = 1 - opened_in
        for wid in (opened_in, other, opened_in, other):
            st, doc = health_via_worker(srv, wid)
            circ = doc["checks"]["circuits"]
            assert circ["external-api"] == "open", (wid, doc)
            assert circ["sqlite"] == "closed", (wid, doc)
            assert doc["checks"]["circuitsDetail"]["external-api"] == {"closed": 1, "open": 1, "halfOpen": 0}, \
                (wid, doc)
            assert doc["checks"]["circuitsDetail"]["sqlite"] == {"closed": 2, "open": 0, "halfOpen": 0}, (wid, doc)
            # the database is up and every slot ready: the service is healthy
            assert st == 200 and doc["status"] == "healthy", (st, doc)

        p = subprocess.run([RESILCTL, "-s", srv.env["RESIL_CONTROL"], "health", "--json"], capture_output=True,
                           text=True, timeout=30, stdin=subprocess.DEVNULL)
        ans = json.loads(p.stdout)
        assert p.returncode == 0 and ans["status"] == "healthy", (p.returncode, p.stdout, p.stderr)
        assert ans["checks"]["circuits"]["external-api"] == "open", ans
        srv.assert_clean_exit()
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run_tests([test_breaker_opened_in_one_worker_shows_in_health_from_every_worker])
