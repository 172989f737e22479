#!/usr/bin/env python3
"""The cross-host bus (issue 17, SPEC section 12): two resild "hosts" (two
supervisors with their own ports and control sockets) on one MongoDB wire
double and one Debian redis-server, with RESIL_BUS set on both.

Checked: chat messages sent on both hosts at once (over WebSockets and
REST) reach every member socket
on both hosts in one order, the order of the REST history and of
recent_messages; typing crosses hosts; the /api/ rate limit is global
(exactly N of N+k requests pass, alternating hosts); a post written on one
host is listed at once on the other after it cached the list; with Redis
stopped each host keeps delivering locally and /health says bus degraded,
and once Redis is back cross-host delivery resumes within 5 s. A single
host with RESIL_BUS unset shows no bus at all.

Loopback only; the redis-server, the double and both resild are this
test's own and are ended by pid. Without redis-server the test fails and
says why (scripts/install-deps.sh --test installs it).
"""
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import require_websockets  # noqa: E402

require_websockets()  # Debian has websockets for /usr/bin/python3 only

import websockets  # noqa: E402

from harness import Server, free_port, run_tests  # noqa: E402
from test_api_rooms import MongoDouble  # noqa: E402
from test_ws import Api, ev, recv_event  # noqa: E402

SECRET = "bus-test-secret-0123456789abcdef-0123456789"
REDIS_SERVER = os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"


class Redis:
    """A redis-server of the test's own on a free loopback port, no persistence."""

    def __init__(self):
        if not os.access(REDIS_SERVER, os.X_OK):
            raise AssertionError("redis-server not found (%s): install it with scripts/install-deps.sh --test "
                                 "(Debian package redis-server); the cross-host bus cannot be tested without it"
                                 % REDIS_SERVER)
        self.dir = tempfile.mkdtemp(prefix="resil-redis-")
        self.port = free_port()
        self.proc = None
        self.start()

    def start(self):
        self.log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", self.dir,
                                      "--daemonize", "no", "--protected-mode", "yes"],
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("redis-server exited: %s" % self.logs())
            try:
                if self.command(b"PING") == b"+PONG":
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("redis-server did not answer PING: %s" % self.logs())

    def command(self, *args):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        try:
            out = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
            s.sendall(out)
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.strip()
        finally:
            s.close()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()

    def logs(self):
        with open(os.path.join(self.dir, "redis.log"), "rb") as f:
            return f.read().decode("utf-8", "replace")[-3000:]

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------ setup

ENV = None  # redis, double, host A, host B


def hosts():
    global ENV
    if ENV is None:
        started = []  # ended again if a later start fails
        try:
            redis = Redis()
            started.append(redis.close)
            double = MongoDouble()
            started.append(double.close)
            env = {"RESIL_BUS": "redis://127.0.0.1:%d/0" % redis.port, "RESIL_JWT_SECRET": SECRET,
                   "RESIL_WS_MESSAGE_RATE": "1000", "RESIL_RATE_LIMIT": "100000/15m"}
            uri = double.uri("resilbus")
            a = Server(workers=2, env=env, db=uri)
            started.append(a.cleanup)
            a.start()
            b = Server(workers=2, env=env, db=uri)
            started.append(b.cleanup)
            b.start()
            for h in (a, b):
                wait_bus(h, "up")
        except BaseException:
            for end in reversed(started):
                end()
            raise
        ENV = (redis, double, a, b)
    return ENV


def teardown():
    """Whatever is still running (after a failure): stop and remove."""
    global ENV
    if ENV is None:
        return
    redis, double, a, b = ENV
    ENV = None
    for h in (a, b):
        h.stop()
        h.cleanup()
    redis.close()
    double.close()


def stop_clean(*servers):
    """SIGTERM, exit status 0 and no valgrind or sanitizer report, then
    remove; every server is stopped even when an earlier one fails."""
    if not servers:
        return
    try:
        servers[0].assert_clean_exit()
    finally:
        try:
            servers[0].cleanup()
        finally:
            stop_clean(*servers[1:])


def test_hosts_exit_cleanly():
    global ENV
    redis, double, a, b = hosts()
    ENV = None
    try:
        stop_clean(a, b)
    finally:
        redis.close()
        double.close()


def health(srv):
    st, _, doc = srv.json("GET", "/health")
    return st, doc


def wait_bus_metric(srv, value, timeout=10.0):
    """Until /metrics shows resil_bus_state == value (the worst worker; the
    gauges are sampled every second)."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        st, _, body = srv.request("GET", "/metrics")
        if st == 200:
            for line in body.decode().splitlines():
                if line.startswith("resil_bus_state "):
                    last = float(line.split()[1])
            if last == value:
                return
        time.sleep(0.1)
    raise AssertionError("resil_bus_state never %s on port %d (last %r)" % (value, srv.port, last))


def wait_bus(srv, state, timeout=10.0):
    """Until every worker answering /health reports the bus in state (each
    worker has its own connections: ask several times in a row)."""
    deadline = time.time() + timeout
    streak = 0
    while time.time() < deadline:
        st, doc = health(srv)
        if st == 200 and doc["checks"].get("bus") == state:
            streak += 1
            if streak >= 6:
                return doc
        else:
            streak = 0
        time.sleep(0.05)
    raise AssertionError("bus never %s on port %d: %r" % (state, srv.port, health(srv)))


async def connect(srv, user):
    return await websockets.connect("ws://127.0.0.1:%d/ws?token=%s" % (srv.port, user["token"]), max_size=2 ** 22)


async def join(ws, rid):
    await ws.send(ev("join_room", roomId=rid))
    a = await recv_event(ws)
    assert a["event"] == "room_joined", a
    b = await recv_event(ws)
    assert b["event"] == "recent_messages", b
    return b["data"]


def room_with(srv, prefix, n):
    """n new users (registered on srv) and a room of theirs."""
    api = Api(srv)
    users = [api.user(prefix) for _ in range(n)]
    return users, api.room(users[0], users[1:])


async def wait_message(ws, content, timeout=5.0):
    """Until ws receives the new_message with this content (within timeout each)."""
    while True:
        got = await collect(ws, 1, timeout=timeout)
        if got[0]["content"] == content:
            return got[0]


async def collect(ws, n, timeout=30):
    got = []
    deadline = time.time() + timeout
    while len(got) < n:
        e = await recv_event(ws, max(0.1, deadline - time.time()))
        if e["event"] == "new_message":
            got.append(e["data"])
    return got


# -------------------------------------------------------------------- tests


def test_messages_from_both_hosts_reach_every_socket_in_one_order_equal_to_history():
    redis, double, a, b = hosts()
    api = Api(a)
    users = [api.user("o") for _ in range(4)]
    rid = api.room(users[0], users[1:])
    per_sender, senders_per_host = 25, 4  # 200 messages

    async def run():
        socks = []
        for i in range(6):  # three receivers on each host, more than one worker each
            socks.append(await connect(a if i % 2 == 0 else b, users[i % 4]))
        senders = []
        for i in range(2 * senders_per_host):
            senders.append((await connect(a if i % 2 == 0 else b, users[i % 4]), "AB"[i % 2] + str(i)))
        for ws in socks + [s for s, _ in senders]:
            await join(ws, rid)

        async def send_all(ws, tag):
            for k in range(per_sender):
                await ws.send(ev("send_message", roomId=rid, content="%s-%03d" % (tag, k)))

        def rest_all(h, tag, n=10):  # REST-posted messages take their place in the same order
            for k in range(n):
                st, _, doc = h.json("POST", "/api/rooms/%s/messages" % rid, {"content": "%s-%03d" % (tag, k)},
                                    {"Authorization": "Bearer " + users[3]["token"]})
                assert st == 201, (st, doc)

        total = per_sender * len(senders) + 20
        await asyncio.gather(*(send_all(ws, tag) for ws, tag in senders),
                             asyncio.to_thread(rest_all, a, "RA"), asyncio.to_thread(rest_all, b, "RB"))
        # The senders are members too: they get the same order (and reading
        # keeps their sockets drained for a prompt close).
        seen = await asyncio.gather(*(collect(ws, total) for ws in socks + [s for s, _ in senders]))
        order = [m["id"] for m in seen[0]]
        assert len(set(order)) == total, len(set(order))
        for got in seen[1:]:
            assert [m["id"] for m in got] == order, "two sockets saw different orders"
        for tag, n in [(tag, per_sender) for _, tag in senders] + [("RA", 10), ("RB", 10)]:
            mine = [m["content"] for m in seen[0] if m["content"].startswith(tag + "-")]
            assert mine == ["%s-%03d" % (tag, k) for k in range(n)], mine[:5]  # each sender's own order
        # The history (oldest first, last 100) and a late joiner's
        # recent_messages (last 50), asked on each host, are the same order.
        for h in (a, b):
            st, _, doc = h.json("GET", "/api/rooms/%s/messages?limit=100" % rid, None,
                                {"Authorization": "Bearer " + users[1]["token"]})
            assert st == 200, (st, doc)
            assert [m["id"] for m in doc["data"]] == order[-100:], "history order differs from delivery order"
            late = await connect(h, users[2])
            recent = await join(late, rid)
            assert [m["id"] for m in recent] == order[-50:]
            await late.close()
        for ws in socks + [s for s, _ in senders]:
            await ws.close()

    asyncio.run(run())


def test_typing_crosses_hosts():
    redis, double, a, b = hosts()
    (u1, u2), rid = room_with(a, "t", 2)

    async def run():
        wa, wb = await connect(a, u1), await connect(b, u2)
        await join(wa, rid)
        await join(wb, rid)
        await wa.send(ev("typing_start", roomId=rid))
        e = await recv_event(wb)
        assert e["event"] == "user_typing" and e["data"]["userId"] == u1["id"], e
        await wa.close()
        await wb.close()

    asyncio.run(run())


def test_redis_outage_local_delivery_degraded_health_then_resume_within_5s():
    redis, double, a, b = hosts()
    (u1, u2, u3), rid = room_with(a, "r", 3)

    async def run():
        a1, a2, b1 = await connect(a, u1), await connect(a, u2), await connect(b, u3)
        for ws in (a1, a2, b1):
            await join(ws, rid)
        redis.stop()
        for h in (a, b):
            doc = wait_bus(h, "degraded")
            assert doc["status"] == "degraded", doc
            st, _ = health(h)
            assert st == 200
            wait_bus_metric(h, 2)  # and in the metrics: degraded
        await a1.send(ev("send_message", roomId=rid, content="during the outage"))
        for ws in (a1, a2):
            got = await collect(ws, 1)
            assert got[0]["content"] == "during the outage"
        # Stored: a new joiner's history has it.
        late = await connect(a, u2)
        recent = await join(late, rid)
        assert [m["content"] for m in recent][-1:] == ["during the outage"], recent
        await late.close()

        redis.start()
        t0 = time.time()
        for h in (a, b):
            wait_bus(h, "up", timeout=5.0)
        # Cross-host delivery is back (every worker reconnects by itself).
        await a1.send(ev("send_message", roomId=rid, content="after the outage"))
        await wait_message(b1, "after the outage")
        assert time.time() - t0 < 5.0 + 5.0, time.time() - t0
        for h in (a, b):
            wait_bus_metric(h, 1)  # up again
        for ws in (a1, a2, b1):
            await ws.close()

    asyncio.run(run())


def test_hung_redis_counts_as_down_then_resumes():
    """SIGSTOP: the connections stay open but nothing answers; after the
    2 s stall bound each worker drops them and goes degraded."""
    redis, double, a, b = hosts()
    (u1, u2), rid = room_with(a, "h", 2)

    async def run():
        a1, b1 = await connect(a, u1), await connect(b, u2)
        for ws in (a1, b1):
            await join(ws, rid)
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            for h in (a, b):
                wait_bus(h, "degraded", timeout=15.0)
            await a1.send(ev("send_message", roomId=rid, content="while hung"))
            got = await collect(a1, 1)
            assert got[0]["content"] == "while hung"
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        for h in (a, b):
            wait_bus(h, "up", timeout=5.0)
        await b1.send(ev("send_message", roomId=rid, content="after the hang"))
        await wait_message(a1, "after the hang")
        for ws in (a1, b1):
            await ws.close()

    asyncio.run(run())


def test_api_rate_limit_is_global_across_hosts_exactly_n_of_n_plus_k():
    redis, double, _, _ = hosts()
    n, k = 30, 12
    # A pair of its own (a small limit) on Redis database 1: counters apart
    # from the other tests' hosts.
    env = {"RESIL_BUS": "redis://127.0.0.1:%d/1" % redis.port, "RESIL_JWT_SECRET": SECRET,
           "RESIL_RATE_LIMIT": "%d/10m" % n}
    uri = double.uri("resilbus_rl")
    a = Server(workers=2, env=env, db=uri)
    b = Server(workers=2, env=env, db=uri)
    try:
        a.start()
        b.start()
        for h in (a, b):
            wait_bus(h, "up")
        codes = []
        remaining = []
        for i in range(n + k):
            st, hdrs, _ = (a if i % 2 == 0 else b).request("GET", "/api/posts")
            codes.append(st)
            h = hdrs
            assert h["ratelimit-limit"] == str(n), h
            remaining.append(int(h["ratelimit-remaining"]))
            if st == 429:
                assert int(h["retry-after"]) > 0, h
        assert codes.count(200) == n and codes.count(429) == k, codes
        assert codes[:n] == [200] * n, codes
        assert remaining[:n] == list(range(n - 1, -1, -1)), remaining
    finally:
        stop_clean(a, b)


def test_post_written_on_one_host_is_listed_at_once_on_the_other():
    redis, double, a, b = hosts()
    u = Api(a).user("p")
    for _ in range(2):  # B has listed (and, single-host, would have cached) the page
        st, _, doc = b.json("GET", "/api/posts")
        assert st == 200, (st, doc)
    st, _, doc = a.json("POST", "/api/posts", {"title": "cross-host", "content": "written on A"},
                        {"Authorization": "Bearer " + u["token"]})
    assert st == 201, (st, doc)
    pid = doc["data"]["id"]
    for _ in range(4):  # every worker of B
        st, _, doc = b.json("GET", "/api/posts")
        assert st == 200 and pid in [p["id"] for p in doc["data"]], (st, doc)


def test_single_host_without_bus_reports_no_bus():
    srv = Server(workers=2, env={"RESIL_JWT_SECRET": SECRET})
    try:
        srv.start()
        st, doc = health(srv)
        assert st == 200 and "bus" not in doc["checks"], doc
    finally:
        stop_clean(srv)


def test_bad_bus_uri_is_a_clear_configuration_error_without_the_password():
    for uri, why in (("rediss://127.0.0.1:6379", "not supported yet"),
                     ("redis://user:hunter2secret@127.0.0.1:6379", "passwords"),
                     ("redis://127.0.0.1:99999", "port")):
        srv = Server(env={"RESIL_BUS": uri})
        try:
            p = subprocess.run([os.environ.get("RESILD") or os.path.join(os.path.dirname(__file__), "..", "..",
                                                                           "resild"), "--check-config"],
                               env=srv.env, cwd=srv.dir, capture_output=True, timeout=30)
            out = (p.stdout + p.stderr).decode()
            assert p.returncode != 0 and "bus" in out.lower() and why in out, (p.returncode, out)
            assert "hunter2" not in out, out
        finally:
            srv.cleanup()


if __name__ == "__main__":
    try:
        run_tests([test_bad_bus_uri_is_a_clear_configuration_error_without_the_password,
                   test_single_host_without_bus_reports_no_bus,
                   test_messages_from_both_hosts_reach_every_socket_in_one_order_equal_to_history,
                   test_typing_crosses_hosts,
                   test_api_rate_limit_is_global_across_hosts_exactly_n_of_n_plus_k,
                   test_post_written_on_one_host_is_listed_at_once_on_the_other,
                   test_redis_outage_local_delivery_degraded_health_then_resume_within_5s,
                   test_hung_redis_counts_as_down_then_resumes,
                   test_hosts_exit_cleanly])
    finally:
        teardown()
