"""Black-box tests of the WebSocket chat on GET /ws (SPEC section 7) against
a real resild: 2 workers on the embedded SQLite store, and the broadcast path
again on the MongoDB wire-protocol test double.

Clients: Debian's python3-websockets (a real RFC 6455 client) where a
well-behaved client is wanted, and a small raw-socket client where the test
needs to break the protocol (unmasked frames, invalid UTF-8, a reader that
stops reading). Users and rooms are made through the REST API.
"""
import asyncio
import base64
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import require_websockets  # noqa: E402

require_websockets()  # Debian has websockets for /usr/bin/python3 only
import websockets  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from harness import RESILD, TOP, Server, run_tests  # noqa: E402
from test_api_rooms import MongoDouble  # noqa: E402

RESILCTL = os.environ.get("RESILCTL") or os.path.join(TOP, "resilctl")
# Clients dropped mid-flood leave websockets' internal tasks behind: quiet.
logging.getLogger("asyncio").setLevel(logging.CRITICAL)
SAN_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer",
               "== ERROR SUMMARY", "definitely lost", "Invalid read", "Invalid write")

# ------------------------------------------------------------------ helpers


def stop_server(srv):
    """Stop and remove a test's own server; its logs."""
    logs = srv.logs()
    srv.stop()
    srv.cleanup()
    return logs


def assert_sanitizer_clean(logs):
    for m in SAN_MARKERS:
        assert m not in logs, logs[-3000:]



class Api:
    """Users, rooms and memberships through the REST API."""

    def __init__(self, srv):
        self.srv = srv
        self.n = 0

    def user(self, prefix="u"):
        self.n += 1
        name = "%s%d_%d" % (prefix, self.n, os.getpid() % 1000)
        st, _, doc = self.srv.json("POST", "/api/auth/register",
                                   {"username": name, "email": name + "@example.com", "password": "password123"})
        assert st == 201, (st, doc)
        return {"name": name, "id": doc["data"]["user"]["id"], "token": doc["data"]["token"]}

    def room(self, owner, members=(), name="general"):
        st, _, doc = self.srv.json("POST", "/api/rooms", {"name": name},
                                   {"Authorization": "Bearer " + owner["token"]})
        assert st == 201, (st, doc)
        rid = doc["data"]["id"]
        for m in members:
            st, _, doc = self.srv.json("POST", "/api/rooms/%s/members" % rid, {"userId": m["id"]},
                                       {"Authorization": "Bearer " + owner["token"]})
            assert st == 200, (st, doc)
        return rid


def ev(name, **data):
    return json.dumps({"event": name, "data": data})


def close_code(exc):
    rcvd = getattr(exc, "rcvd", None)
    return rcvd.code if rcvd is not None else getattr(exc, "code", None)


class Raw:
    """A minimal WebSocket client on a plain socket."""

    def __init__(self, port, token=None, rcvbuf=None, timeout=10.0):
        self.s = socket.socket()
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(timeout)
        self.s.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        path = "/ws" + ("?token=" + token if token else "")
        self.s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, key)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            b = self.s.recv(4096)
            assert b, "connection closed during the handshake: %r" % head
            head += b
        head, _, self.buf = head.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:]}

    def send_frame(self, opcode, payload, mask=True, fin=True):
        b0 = (0x80 if fin else 0) | opcode
        n = len(payload)
        mbit = 0x80 if mask else 0
        if n < 126:
            hdr = struct.pack("!BB", b0, mbit | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", b0, mbit | 126, n)
        else:
            hdr = struct.pack("!BBQ", b0, mbit | 127, n)
        if mask:
            key = os.urandom(4)
            payload = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
            hdr += key
        self.s.sendall(hdr + payload)

    def send_text(self, text):
        self.send_frame(0x1, text.encode() if isinstance(text, str) else text)

    def _need(self, n):
        while len(self.buf) < n:
            b = self.s.recv(65536)
            if not b:
                raise EOFError("connection closed")
            self.buf += b

    def recv_frame(self):
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7f
        off = 2
        if n == 126:
            self._need(4)
            n = struct.unpack("!H", self.buf[2:4])[0]
            off = 4
        elif n == 127:
            self._need(10)
            n = struct.unpack("!Q", self.buf[2:10])[0]
            off = 10
        assert not (b1 & 0x80), "server frames must not be masked"
        self._need(off + n)
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return b0 & 0x0f, payload

    def recv_event(self):
        while True:
            op, payload = self.recv_frame()
            if op == 0x1:
                return json.loads(payload)
            if op == 0x8:
                raise EOFError("closed with %r" % payload[:2])

    def wait_close(self):
        """Read until the close frame; its code (None if the socket just ended)."""
        while True:
            try:
                op, payload = self.recv_frame()
            except (EOFError, ConnectionError):
                return None
            if op == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005

    def close(self):
        self.s.close()


def handshake_status(port, path, headers=None):
    """Status line of a /ws handshake, and whether the connection upgraded."""
    h = {"Host": "x", "Upgrade": "websocket", "Connection": "Upgrade",
         "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), "Sec-WebSocket-Version": "13"}
    h.update(headers or {})
    req = "GET %s HTTP/1.1\r\n%s\r\n" % (path, "".join("%s: %s\r\n" % kv for kv in h.items() if kv[1] is not None))
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(req.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            b = s.recv(4096)
            if not b:
                break
            data += b
        head = data.split(b"\r\n\r\n")[0].decode()
        status = int(head.split()[1])
        return status, head
    finally:
        s.close()


def worker_of(srv, request_id, timeout=5.0):
    """pid of the worker that answered a request (from its access log line)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in srv.log_lines():
            if line.get("requestId") == request_id and line.get("message") == "request":
                return line["pid"]
        time.sleep(0.05)
    raise AssertionError("no access log line for request %s" % request_id)


def status_json(srv):
    p = subprocess.run([RESILCTL, "-s", srv.env["RESIL_CONTROL"], "status", "--json"], capture_output=True,
                       timeout=10)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def instrumented():
    """True under valgrind or AddressSanitizer, whose own memory (shadow,
    quarantine of freed blocks) makes RSS figures meaningless."""
    if os.environ.get("RESIL_VALGRIND"):
        return True
    try:
        out = subprocess.run(["ldd", RESILD], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "libasan" in out


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def ws_url(srv, user):
    return "ws://127.0.0.1:%d/ws?token=%s" % (srv.port, user["token"])


async def recv_event(ws, timeout=10):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def join(ws, rid):
    await ws.send(ev("join_room", roomId=rid))
    a = await recv_event(ws)
    assert a["event"] == "room_joined", a
    assert a["data"]["roomId"] == rid
    b = await recv_event(ws)
    assert b["event"] == "recent_messages", b
    return a, b


async def connect_spread(srv, users, per_user, min_per_worker=2, limit=160):
    """Open sockets round-robin over users until both workers hold at least
    min_per_worker of them (the kernel picks the accepting worker, and on a
    busy machine one worker may take a long run of accepts: a short pause
    between connects lets the other one in)."""
    socks = []
    by_pid = {}
    i = 0
    while i < limit:
        u = users[i % len(users)]
        ws = await websockets.connect(ws_url(srv, u), max_size=2 ** 20)
        pid = worker_of(srv, ws.response_headers["X-Request-ID"])
        socks.append((u, ws, pid))
        by_pid.setdefault(pid, 0)
        by_pid[pid] += 1
        i += 1
        if i >= per_user * len(users) and len(by_pid) >= 2 and min(by_pid.values()) >= min_per_worker:
            break
        if i >= per_user * len(users):
            await asyncio.sleep(0.03)
    assert len(by_pid) >= 2, "every socket landed on one worker: %r" % by_pid
    return socks


# ------------------------------------------------------------------ servers

S = None
API = None


def server():
    global S, API
    if S is None:
        S = Server(workers=2, env={"RESIL_TEST_HOOKS": "1"})
        S.start()
        API = Api(S)
    return S


# -------------------------------------------------------------------- tests


async def broadcast_scenario(srv, api, per_sender=15):
    users = [api.user("b") for _ in range(3)]
    rid = api.room(users[0], users[1:])
    socks = await connect_spread(srv, users, per_user=3)
    try:
        for _, ws, _ in socks:
            await join(ws, rid)
        pids = sorted({pid for _, _, pid in socks})
        sender_a = next(s for s in socks if s[2] == pids[0])
        sender_b = next(s for s in socks if s[2] == pids[1])

        async def send_all(sender, tag):
            for i in range(per_sender):
                await sender[1].send(ev("send_message", roomId=rid, content="%s-%02d ünïcødé ✓" % (tag, i)))

        await asyncio.gather(send_all(sender_a, "A"), send_all(sender_b, "B"))
        total = 2 * per_sender
        seen = []
        for u, ws, _ in socks:
            got = []
            while len(got) < total:
                e = await recv_event(ws)
                if e["event"] == "new_message":
                    got.append(e["data"])
            seen.append(got)
        first = [m["id"] for m in seen[0]]
        assert len(set(first)) == total
        for got in seen:
            assert [m["id"] for m in got] == first, "sockets saw different orders"
        for tag, sender in (("A", sender_a), ("B", sender_b)):
            mine = [m for m in seen[0] if m["content"].startswith(tag + "-")]
            assert [m["content"] for m in mine] == ["%s-%02d ünïcødé ✓" % (tag, i) for i in range(per_sender)]
            assert all(m["sender"] == {"id": sender[0]["id"], "username": sender[0]["name"]} for m in mine)
            assert all(m["roomId"] == rid and m["createdAt"].endswith("Z") for m in mine)
        # Stored first: the REST history and a late joiner's recent_messages have them.
        st, _, doc = srv.json("GET", "/api/rooms/%s/messages?limit=100" % rid, None,
                              {"Authorization": "Bearer " + users[2]["token"]})
        assert st == 200 and {m["id"] for m in doc["data"]} == set(first), (st, doc)
        late = await websockets.connect(ws_url(srv, users[1]))
        _, recent = await join(late, rid)
        assert {m["id"] for m in recent["data"]} == set(first)
        keys = set(recent["data"][0])
        assert keys == {"id", "roomId", "content", "sender", "createdAt"}, keys
        await late.close()
        return len(socks), len(pids)
    finally:
        for _, ws, _ in socks:
            await ws.close()


def test_broadcast_reaches_every_member_socket_on_both_workers_in_one_order():
    n, workers = asyncio.run(broadcast_scenario(server(), API))
    assert n >= 8 and workers == 2


def test_recent_messages_are_the_last_50_oldest_first():
    srv = server()

    async def run():
        a, b = API.user("r"), API.user("r")
        rid = API.room(a, [b])
        async with websockets.connect(ws_url(srv, a)) as ws:
            await join(ws, rid)
            for i in range(55):
                await ws.send(ev("send_message", roomId=rid, content="m%02d" % i))
            got = 0
            while got < 55:
                e = await recv_event(ws)
                got += e["event"] == "new_message"
        async with websockets.connect(ws_url(srv, b)) as ws:
            _, recent = await join(ws, rid)
            assert [m["content"] for m in recent["data"]] == ["m%02d" % i for i in range(5, 55)]

    asyncio.run(run())


def test_typing_goes_to_the_others_and_leave_room_stops_delivery():
    srv = server()

    async def run():
        a, b = API.user("t"), API.user("t")
        rid = API.room(a, [b])
        wa = await websockets.connect(ws_url(srv, a))
        wb = await websockets.connect(ws_url(srv, b))
        await join(wa, rid)
        await join(wb, rid)
        await wa.send(ev("typing_start", roomId=rid))
        e = await recv_event(wb)
        assert e == {"event": "user_typing", "data": {"userId": a["id"], "username": a["name"]}}, e
        await wa.send(ev("typing_stop", roomId=rid))
        e = await recv_event(wb)
        assert e == {"event": "user_stopped_typing", "data": {"userId": a["id"]}}, e
        # The typist itself got nothing: the next event it sees is its own message.
        await wb.send(ev("leave_room", roomId=rid))
        await wa.send(ev("send_message", roomId=rid, content="after leave"))
        e = await recv_event(wa)
        assert e["event"] == "new_message" and e["data"]["content"] == "after leave", e
        await wb.send(ev("send_message", roomId=rid, content="x"))
        e = await recv_event(wb)
        assert e == {"event": "error", "data": {"message": "join the room first"}}, e
        await wa.close()
        await wb.close()

    asyncio.run(run())


def test_hundreds_of_concurrent_upgrades_all_succeed():
    # More requests in flight than the HTTP core caches: the upgrade's
    # request is really freed during the takeover (an ASan build caught the
    # chat reading its state after that).
    srv = server()
    u = API.user("c")
    rid = API.room(u)
    n = 300
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
        socks.append(s)
    key = base64.b64encode(os.urandom(16)).decode()
    req = ("GET /ws?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (u["token"], key)).encode()
    for s in socks:
        s.sendall(req)
    ok = 0
    for s in socks:
        head = b""
        while b"\r\n\r\n" not in head:
            b = s.recv(4096)
            if not b:
                break
            head += b
        ok += head.startswith(b"HTTP/1.1 101")
    assert ok == n, ok
    for s in socks:
        s.close()

    async def run():
        async with websockets.connect(ws_url(srv, u)) as ws:
            await join(ws, rid)
            await ws.send(ev("send_message", roomId=rid, content="still fine"))
            e = await recv_event(ws)
            assert e["event"] == "new_message" and e["data"]["content"] == "still fine", e
            assert e["data"]["sender"]["username"] == u["name"]

    asyncio.run(run())


def test_non_member_is_refused_and_stays_connected():
    srv = server()

    async def run():
        owner, outsider = API.user("n"), API.user("n")
        rid = API.room(owner)
        async with websockets.connect(ws_url(srv, outsider)) as ws:
            for room in (rid, "0123456789abcdef01234567", "not-an-id"):
                await ws.send(ev("join_room", roomId=room))
                e = await recv_event(ws)
                assert e == {"event": "error", "data": {"message": "access denied to room"}}, e
            await ws.send(ev("send_message", roomId=rid, content="hi"))
            e = await recv_event(ws)
            assert e["event"] == "error", e
            pong = await ws.ping()
            await asyncio.wait_for(pong, 5)

    asyncio.run(run())


def test_bad_or_missing_token_is_401_without_upgrade():
    srv = server()
    u = API.user("k")
    assert handshake_status(srv.port, "/ws")[0] == 401
    assert handshake_status(srv.port, "/ws?token=garbage")[0] == 401
    forged = u["token"][:-4] + ("AAAA" if not u["token"].endswith("AAAA") else "BBBB")
    assert handshake_status(srv.port, "/ws?token=" + forged)[0] == 401
    assert handshake_status(srv.port, "/ws", {"Authorization": "Bearer nope"})[0] == 401
    st, head = handshake_status(srv.port, "/ws", {"Authorization": "Bearer " + u["token"]})
    assert st == 101 and "sec-websocket-accept" in head.lower(), head
    # A deactivated user's still-valid token is refused too (ADMIN is the
    # first user registered on this database).
    victim = API.user("k")
    st, _, doc = srv.json("DELETE", "/api/users/" + victim["id"], None, {"Authorization": "Bearer " + ADMIN["token"]})
    assert st in (200, 204), (st, doc)
    deadline = time.time() + 5
    while handshake_status(srv.port, "/ws?token=" + victim["token"])[0] != 401:
        assert time.time() < deadline, "a deactivated user still upgrades"
        time.sleep(0.1)


def test_upgrade_headers_are_checked_after_the_token():
    srv = server()
    u = API.user("h")
    q = "/ws?token=" + u["token"]
    assert handshake_status(srv.port, q, {"Sec-WebSocket-Version": "8"})[0] == 426
    assert handshake_status(srv.port, q, {"Sec-WebSocket-Key": "short"})[0] == 400
    assert handshake_status(srv.port, q, {"Upgrade": None, "Connection": None})[0] == 426
    st, _, doc = srv.json("GET", q)
    assert st == 426 and doc["success"] is False, (st, doc)


def test_bad_input_gets_error_events_and_the_socket_stays_open():
    srv = server()

    async def run():
        a = API.user("j")
        rid = API.room(a)
        async with websockets.connect(ws_url(srv, a), max_size=2 ** 20) as ws:
            cases = [
                ("{not json", "invalid JSON"),
                ("[1,2]", "invalid JSON"),
                (json.dumps({"event": "dance", "data": {}}), "unknown event"),
                (json.dumps({"data": {}}), "event name required"),
                (json.dumps({"event": "join_room", "data": "x"}), "data must be an object"),
                (ev("send_message", roomId=rid, content="x"), "join the room first"),
                (ev("send_message", roomId=rid, content=""), "content must be 1-2000 characters"),
                (ev("send_message", roomId=rid, content="é" * 2001), "content must be 1-2000 characters"),
                (ev("send_message", roomId=rid, content={"$gt": ""}), "content must be 1-2000 characters"),
                (ev("typing_start", roomId=7), "roomId must be a valid id"),
            ]
            for msg, want in cases:
                await ws.send(msg)
                e = await recv_event(ws)
                assert e == {"event": "error", "data": {"message": want}}, (msg[:40], e)
            # Exactly 64 KiB is still a message (an unknown event), not a close.
            pad = 65536 - len(json.dumps({"event": "x", "data": {"p": ""}}))
            big = json.dumps({"event": "x", "data": {"p": "a" * pad}})
            assert len(big) == 65536
            await ws.send(big)
            e = await recv_event(ws)
            assert e["data"]["message"] == "unknown event"
            await join(ws, rid)
            await ws.send(ev("send_message", roomId=rid, content="é" * 2000))
            e = await recv_event(ws)
            assert e["event"] == "new_message" and len(e["data"]["content"]) == 2000

    asyncio.run(run())


def test_message_rate_is_configurable_error_then_1008():
    # ws_message_rate = 2: a bucket of 8 events (4 s worth), then an error
    # event, then 8 more refused events close the socket with 1008.
    srv = Server(workers=1, env={"RESIL_WS_MESSAGE_RATE": "2"})
    srv.start()
    try:
        u = Api(srv).user("r")

        async def run():
            async with websockets.connect(ws_url(srv, u), max_size=2 ** 20) as ws:
                for _ in range(8):
                    await ws.send("{}")
                    e = await recv_event(ws)
                    assert e["data"]["message"] == "event name required", e
                await ws.send("{}")
                e = await recv_event(ws)
                assert e == {"event": "error", "data": {"message": "rate limited"}}, e
                try:
                    for _ in range(20):
                        await ws.send("{}")
                    await asyncio.wait_for(ws.recv(), 5)
                    raise AssertionError("still open")
                except ConnectionClosed as e:
                    assert close_code(e) == 1008, e

        asyncio.run(run())
    finally:
        logs = stop_server(srv)
    assert_sanitizer_clean(logs)


def test_message_over_64_kib_closes_with_1009():
    srv = server()

    async def run():
        a = API.user("o")
        ws = await websockets.connect(ws_url(srv, a))
        await ws.send("x" * (64 * 1024 + 1))
        try:
            await asyncio.wait_for(ws.recv(), 10)
            raise AssertionError("still open")
        except ConnectionClosed as e:
            assert close_code(e) == 1009, e

    asyncio.run(run())


def test_protocol_violations_close_with_their_codes():
    srv = server()
    u = API.user("p")
    r = Raw(srv.port, u["token"])
    assert r.status == 101
    r.send_frame(0x1, b'{"event":"\xff\xfe"}')
    assert r.wait_close() == 1007
    r.close()

    r = Raw(srv.port, u["token"])
    r.send_frame(0x1, ev("join_room", roomId="x").encode(), mask=False)
    assert r.wait_close() == 1002
    r.close()

    r = Raw(srv.port, u["token"])
    r.send_frame(0x2, b"\x00\x01")
    assert r.wait_close() == 1003
    r.close()

    r = Raw(srv.port, u["token"])
    r.send_frame(0x9, b"p" * 126)  # control frames carry at most 125 bytes
    assert r.wait_close() == 1002
    r.close()

    r = Raw(srv.port, u["token"])
    r.send_frame(0x0, b"orphan continuation")
    assert r.wait_close() == 1002
    r.close()

    # A fragmented message with a ping between its fragments is fine.
    r = Raw(srv.port, u["token"])
    msg = b'{"event":"nope","data":{}}'
    r.send_frame(0x1, msg[:5], fin=False)
    r.send_frame(0x9, b"mid")
    r.send_frame(0x0, msg[5:12], fin=False)
    r.send_frame(0x0, msg[12:], fin=True)
    frames = [r.recv_frame(), r.recv_frame()]  # the pong may come before or after the reply
    assert (0xA, b"mid") in frames, frames
    assert (0x1, b'{"event":"error","data":{"message":"unknown event"}}') in frames, frames
    # A clean close is echoed with the same code.
    r.send_frame(0x8, struct.pack("!H", 1000) + b"bye")
    assert r.wait_close() == 1000
    r.close()


def test_client_ping_gets_pong():
    srv = server()

    async def run():
        a = API.user("g")
        async with websockets.connect(ws_url(srv, a)) as ws:
            for _ in range(3):
                waiter = await ws.ping(os.urandom(8))
                await asyncio.wait_for(waiter, 5)

    asyncio.run(run())


def test_idle_socket_is_pinged_and_a_silent_one_closed():
    srv = Server(workers=1, env={"RESIL_TEST_HOOKS": "1", "RESIL_TEST_WS_PING_MS": "300",
                                 "RESIL_TEST_WS_IDLE_MS": "1500"})
    srv.start()
    try:
        u = Api(srv).user("i")
        r = Raw(srv.port, u["token"])
        t0 = time.time()
        op, _ = r.recv_frame()
        assert op == 0x9 and time.time() - t0 < 1.5, (op, time.time() - t0)
        assert r.wait_close() == 1001
        assert time.time() - t0 < 4.0
        r.close()

        async def run():
            # A client that answers pings is kept past the silence limit.
            async with websockets.connect(ws_url(srv, u), ping_interval=None) as ws:
                await asyncio.sleep(2.5)
                await ws.send("{}")
                e = await recv_event(ws)
                assert e["event"] == "error"

        asyncio.run(run())
    finally:
        logs = stop_server(srv)
    assert_sanitizer_clean(logs)


def test_slow_reader_is_closed_with_1013_while_others_keep_receiving():
    srv = server()

    async def run():
        a, b, slow = API.user("s"), API.user("s"), API.user("s")
        rid = API.room(a, [b, slow])
        reader = Raw(srv.port, slow["token"], rcvbuf=4096)
        reader.send_text(ev("join_room", roomId=rid))
        assert reader.recv_event()["event"] == "room_joined"
        assert reader.recv_event()["event"] == "recent_messages"
        # From here on the raw reader reads nothing.
        senders = [await websockets.connect(ws_url(srv, a)) for _ in range(2)]
        fast = await websockets.connect(ws_url(srv, b), max_size=2 ** 20)
        for ws in senders + [fast]:
            await join(ws, rid)
        content = "z" * 1990
        n = 180

        async def send(ws):
            for i in range(n):
                await ws.send(ev("send_message", roomId=rid, content=content))

        async def drain(ws, want):
            got = 0
            while got < want:
                e = await recv_event(ws)
                assert e["event"] == "new_message", e
                got += 1

        # Senders and the fast member read as they go (their client library
        # does); only the raw reader stalls.
        await asyncio.gather(*(send(ws) for ws in senders), *(drain(ws, 2 * n) for ws in senders + [fast]))
        for ws in senders + [fast]:
            await ws.close()
        return reader

    reader = asyncio.run(run())
    code = reader.wait_close()
    reader.close()
    assert code == 1013, code


def test_scoreboard_counts_open_websockets():
    srv = server()

    async def run():
        u = API.user("c")
        before = sum(w["websockets"] for w in status_json(srv)["workers"])
        socks = [await websockets.connect(ws_url(srv, u)) for _ in range(5)]
        deadline = time.time() + 5
        while time.time() < deadline:
            now = sum(w["websockets"] for w in status_json(srv)["workers"])
            if now == before + 5:
                break
            await asyncio.sleep(0.1)
        assert now == before + 5, (before, now)
        for ws in socks:
            await ws.close()
        deadline = time.time() + 5
        while time.time() < deadline:
            now = sum(w["websockets"] for w in status_json(srv)["workers"])
            if now == before:
                break
            await asyncio.sleep(0.1)
        assert now == before, (before, now)

    asyncio.run(run())


def test_unthrottled_flood_keeps_every_worker_alive_with_bounded_memory():
    srv = server()
    st = status_json(srv)
    pids = [w["pid"] for w in st["workers"]]
    base = {p: rss_kib(p) for p in pids}
    stats = {"sent": 0, "closed_1008": 0, "closed_1013": 0, "closed_other": 0, "delivered": 0, "errors": 0}
    users = [API.user("f") for _ in range(4)]
    rid = API.room(users[0], users[1:])
    peak = dict(base)

    def left(stop):
        return max(0.05, stop - time.time())

    async def flooder(u, stop):
        # Sends without ever waiting for delivery; its client library reads
        # (and drops) what arrives, and it reconnects whenever it is closed.
        # When the server stops reading (TCP backpressure) its sends block.
        while time.time() < stop:
            ws = reader = None
            try:
                ws = await asyncio.wait_for(websockets.connect(ws_url(srv, u), max_size=2 ** 20,
                                                               ping_interval=None), left(stop))

                async def discard(conn):
                    async for _ in conn:
                        pass
                reader = asyncio.ensure_future(discard(ws))
                await ws.send(ev("join_room", roomId=rid))
                while time.time() < stop:
                    await asyncio.wait_for(ws.send(ev("send_message", roomId=rid, content="flood " * 20)),
                                           left(stop))
                    stats["sent"] += 1
                    await asyncio.sleep(0)  # let the other clients of this process run
            except ConnectionClosed as e:
                code = close_code(e)
                key = {1008: "closed_1008", 1013: "closed_1013"}.get(code, "closed_other")
                stats[key] += 1
            except asyncio.TimeoutError:
                stats["blocked_at_end"] = stats.get("blocked_at_end", 0) + 1
            except OSError:
                stats["closed_other"] += 1
            finally:
                if reader:
                    reader.cancel()
                if ws:
                    ws.transport.abort()

    async def sink(u, stop):
        # A member that reads everything; if the flood outruns it, it is
        # closed with 1013 like any slow reader and comes back.
        while time.time() < stop:
            ws = None
            try:
                ws = await asyncio.wait_for(websockets.connect(ws_url(srv, u), max_size=2 ** 20), left(stop))
                await join(ws, rid)
                while time.time() < stop:
                    try:
                        msg = await asyncio.wait_for(ws.recv(), min(0.5, left(stop)))
                    except asyncio.TimeoutError:
                        continue
                    stats["delivered" if '"new_message"' in msg[:30] else "errors"] += 1
            except ConnectionClosed as e:
                key = "sink_closed_%s" % close_code(e)
                stats[key] = stats.get(key, 0) + 1
            except (asyncio.TimeoutError, OSError, AssertionError):
                stats["sink_other"] = stats.get("sink_other", 0) + 1
            finally:
                if ws:
                    ws.transport.abort()

    async def sleeper(u, stop):
        # Joined and never reading: its backlog must not grow without bound.
        r = Raw(srv.port, u["token"], rcvbuf=4096)
        r.send_text(ev("join_room", roomId=rid))
        while time.time() < stop:
            await asyncio.sleep(0.2)
        r.close()

    async def sampler(stop):
        while time.time() < stop:
            for p in pids:
                peak[p] = max(peak[p], rss_kib(p))
            await asyncio.sleep(0.25)

    async def run():
        stop = time.time() + 10.5
        tasks = [sink(users[1], stop), sink(users[2], stop), sampler(stop)]
        tasks += [sleeper(users[3], stop) for _ in range(3)]
        started = [asyncio.ensure_future(t) for t in tasks]
        await asyncio.sleep(0.5)  # receivers have joined
        await asyncio.gather(*started, *(flooder(users[i % 4], stop) for i in range(12)))

    t0 = time.time()
    asyncio.run(run())
    print("flood phase %.1fs" % (time.time() - t0), flush=True)
    after = status_json(srv)
    assert [w["pid"] for w in after["workers"]] == pids, "a worker died or was replaced"
    assert all(w["state"] == "ready" for w in after["workers"]), after
    growth = {p: (peak[p] - base[p]) // 1024 for p in pids}
    print("flood: %r, RSS growth MiB %r" % (stats, growth), flush=True)
    assert stats["delivered"] > 0
    if not instrumented():
        for p in pids:
            assert growth[p] < 96, "worker %d grew by %d MiB" % (p, growth[p])

    async def still_serving():
        a = API.user("f")
        r2 = API.room(a)
        async with websockets.connect(ws_url(srv, a)) as ws:
            await join(ws, r2)
            await ws.send(ev("send_message", roomId=r2, content="after the flood"))
            e = await recv_event(ws)
            assert e["event"] == "new_message"

    asyncio.run(still_serving())


def io_uring_fds(pid):
    """How many io_uring instances the process holds (its batched writer)."""
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == "anon_inode:[io_uring]":
                n += 1
        except OSError:
            pass
    return n


def test_broadcast_with_io_uring_off_writes_each_socket_itself():
    # The default server batches a loop iteration's writes through io_uring
    # where the kernel allows it (one ring per worker); io_uring = off
    # writes every socket with its own sendmsg(), with the same order and
    # the same delivery.
    on = [io_uring_fds(w["pid"]) for w in status_json(server())["workers"]]
    if on == [0] * len(on):
        print("io_uring is not available on this kernel: the default server writes with sendmsg too")
    else:
        assert on == [1] * len(on), on
    srv = Server(workers=2, env={"RESIL_TEST_HOOKS": "1", "RESIL_IO_URING": "off"})
    try:
        srv.start()
        assert [io_uring_fds(w["pid"]) for w in status_json(srv)["workers"]] == [0, 0]
        n, workers = asyncio.run(broadcast_scenario(srv, Api(srv), per_sender=8))
        assert n >= 8 and workers == 2
    finally:
        logs = stop_server(srv)
    assert_sanitizer_clean(logs)


def test_broadcast_on_the_mongodb_backend():
    md = MongoDouble()
    srv = Server(workers=2, env={"RESIL_TEST_HOOKS": "1"}, db=md.uri("resil_it_ws_%d" % os.getpid()))
    try:
        srv.start()
        n, workers = asyncio.run(broadcast_scenario(srv, Api(srv), per_sender=8))
        assert n >= 8 and workers == 2
    finally:
        logs = stop_server(srv)
        md.close()
    assert_sanitizer_clean(logs)


def test_database_outage_answers_sends_with_errors_and_keeps_the_socket():
    # The group-commit path when a batch fails: every queued sender hears
    # why, is released, and its later events still run.
    md = MongoDouble()
    srv = Server(workers=1, env={"RESIL_TEST_HOOKS": "1"}, db=md.uri("resil_it_wsdown_%d" % os.getpid()))
    try:
        srv.start()
        api = Api(srv)
        a, b = api.user("d"), api.user("d")
        rid = api.room(a, [b])

        async def run():
            wa = await websockets.connect(ws_url(srv, a))
            wb = await websockets.connect(ws_url(srv, b))
            await join(wa, rid)
            await join(wb, rid)
            await wa.send(ev("send_message", roomId=rid, content="before"))
            for w in (wa, wb):
                e = await recv_event(w)
                assert e["event"] == "new_message" and e["data"]["content"] == "before", e
            md.cmd("stop")
            for i in range(3):  # queued behind each other: all answered
                await wa.send(ev("send_message", roomId=rid, content="lost %d" % i))
            for i in range(3):
                e = await recv_event(wa, timeout=20)
                assert e["event"] == "error" and e["data"]["message"] in (
                    "service unavailable", "request timed out"), e
            await wa.send(ev("typing_start", roomId=rid))
            e = await recv_event(wb)
            assert e["event"] == "user_typing", e
            await wa.close()
            await wb.close()

        asyncio.run(run())
    finally:
        md.cmd("start")
        logs = stop_server(srv)
        md.close()
    assert_sanitizer_clean(logs)


def test_reload_closes_websockets_with_1001_and_the_new_generation_chats():
    srv = server()
    u = API.user("v")
    rid = API.room(u)
    readers = [Raw(srv.port, u["token"]) for _ in range(4)]
    assert all(r.status == 101 for r in readers)
    old = [w["pid"] for w in status_json(srv)["workers"]]
    srv.send_signal(signal.SIGHUP)
    codes = [r.wait_close() for r in readers]
    for r in readers:
        r.close()
    assert codes == [1001] * 4, codes
    deadline = time.time() + 20
    while True:
        st = status_json(srv)
        pids = [w["pid"] for w in st["workers"] if w["state"] == "ready"]
        if len(pids) == 2 and not set(pids) & set(old):
            break
        assert time.time() < deadline, st
        time.sleep(0.1)
    asyncio.run(broadcast_scenario(srv, API, per_sender=5))


def test_a_killed_worker_does_not_stop_broadcasts_between_the_others():
    srv = server()

    async def run():
        users = [API.user("w") for _ in range(2)]
        rid = API.room(users[0], users[1:])
        socks = await connect_spread(srv, users, per_user=2, min_per_worker=1)
        victim = socks[0][2]
        survivors = [s for s in socks if s[2] != victim]
        for _, ws, _ in survivors:
            await join(ws, rid)
        os.kill(victim, signal.SIGKILL)
        await survivors[0][1].send(ev("send_message", roomId=rid, content="still here"))
        for _, ws, _ in survivors:
            e = await recv_event(ws)
            assert e["event"] == "new_message" and e["data"]["content"] == "still here", e
        # The replacement joins the bus: a socket on it hears the survivors.
        deadline = time.time() + 20
        while True:
            pids = [w["pid"] for w in status_json(srv)["workers"] if w["state"] == "ready"]
            if len(pids) == 2 and victim not in pids:
                break
            assert time.time() < deadline
            await asyncio.sleep(0.1)
        fresh = await connect_spread(srv, users, per_user=2, min_per_worker=1)
        for _, ws, _ in fresh:
            await join(ws, rid)
        await survivors[0][1].send(ev("send_message", roomId=rid, content="after restart"))
        for _, ws, _ in fresh + survivors:
            while True:
                e = await recv_event(ws)
                if e["event"] == "new_message" and e["data"]["content"] == "after restart":
                    break
        for _, ws, _ in socks + fresh:
            ws.transport.abort()

    asyncio.run(run())


def test_sigterm_closes_websockets_with_1001():
    srv = server()
    u = API.user("q")
    readers = [Raw(srv.port, u["token"]) for _ in range(6)]
    assert all(r.status == 101 for r in readers)
    srv.send_signal(signal.SIGTERM)
    codes = [r.wait_close() for r in readers]
    for r in readers:
        r.close()
    assert codes == [1001] * 6, codes
    rc = srv.proc.wait(20)
    logs = srv.logs()
    for m in SAN_MARKERS:
        assert m not in logs, logs[-3000:]
    assert rc == 0, rc


ADMIN = None


def first_user_is_admin():
    global ADMIN
    server()
    ADMIN = API.user("admin")


if __name__ == "__main__":
    try:
        first_user_is_admin()
        run_tests([
            test_broadcast_reaches_every_member_socket_on_both_workers_in_one_order,
            test_recent_messages_are_the_last_50_oldest_first,
            test_typing_goes_to_the_others_and_leave_room_stops_delivery,
            test_hundreds_of_concurrent_upgrades_all_succeed,
            test_non_member_is_refused_and_stays_connected,
            test_bad_or_missing_token_is_401_without_upgrade,
            test_upgrade_headers_are_checked_after_the_token,
            test_bad_input_gets_error_events_and_the_socket_stays_open,
            test_message_rate_is_configurable_error_then_1008,
            test_message_over_64_kib_closes_with_1009,
            test_protocol_violations_close_with_their_codes,
            test_client_ping_gets_pong,
            test_idle_socket_is_pinged_and_a_silent_one_closed,
            test_slow_reader_is_closed_with_1013_while_others_keep_receiving,
            test_scoreboard_counts_open_websockets,
            test_unthrottled_flood_keeps_every_worker_alive_with_bounded_memory,
            test_broadcast_on_the_mongodb_backend,
            test_database_outage_answers_sends_with_errors_and_keeps_the_socket,
            test_reload_closes_websockets_with_1001_and_the_new_generation_chats,
            test_a_killed_worker_does_not_stop_broadcasts_between_the_others,
            test_sigterm_closes_websockets_with_1001,
        ])
    finally:
        if S is not None:
            S.cleanup()
