#!/usr/bin/env python3
"""Socket.IO v4 compatibility on /socket.io/ (SPEC section 7, last
paragraphs): Engine.IO v4 over the websocket transport, spoken here packet by
packet with python3-websockets, and with the npm socket.io-client running the
Node app's client calls (installed into bench/ws/ by `npm install`; the test
says why when it cannot run). The Node handler's semantics: bare room ids,
acknowledgements, send without join, the personal room and added_to_room, the
Mongoose-shaped new_message; /ws unchanged."""
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import TOP, Server, run_tests  # noqa: E402
from test_ws import Api, assert_sanitizer_clean, stop_server, close_code, ev, join, recv_event, ws_url, worker_of  # noqa: E402

import websockets  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

S = None
API = None


def server():
    global S, API
    if S is None:
        S = Server(workers=2, env={"RESIL_TEST_HOOKS": "1", "RESIL_TEST_SIO_AUTH_MS": "1500"})
        S.start()
        API = Api(S)
    return S


def sio_url(srv, user=None, eio="4", transport="websocket"):
    q = "EIO=%s&transport=%s" % (eio, transport)
    if user:
        q += "&token=" + user["token"]
    return "ws://127.0.0.1:%d/socket.io/?%s" % (srv.port, q)


async def sio_recv(ws, timeout=10):
    """The next Socket.IO EVENT as (name, data); Engine.IO pings answered."""
    while True:
        p = await asyncio.wait_for(ws.recv(), timeout)
        if p == "2":
            await ws.send("3")
            continue
        assert p.startswith("42["), p
        arr = json.loads(p[2:])
        return arr[0], arr[1] if len(arr) > 1 else None


async def sio_ack(ws, want_id, timeout=10):
    """The next packet, which must be the ACK with want_id: its arguments."""
    while True:
        p = await asyncio.wait_for(ws.recv(), timeout)
        if p == "2":
            await ws.send("3")
            continue
        prefix = "43%d[" % want_id
        assert p.startswith(prefix), (want_id, p)
        return json.loads(p[len(prefix) - 1:])


async def silent(ws, seconds=0.5):
    """Nothing but pings arrives on ws for a while."""
    try:
        while True:
            p = await asyncio.wait_for(ws.recv(), seconds)
            if p == "2":
                await ws.send("3")
                continue
            raise AssertionError("unexpected: %s" % p)
    except asyncio.TimeoutError:
        return True


MONGOOSE_KEYS = {"id", "_id", "roomId", "room", "content", "sender", "createdAt", "updatedAt"}


def assert_mongoose_message(m, rid, user, content):
    """new_message as the Node app's clients read it, beside resil's fields."""
    assert set(m) == MONGOOSE_KEYS, m
    assert m["_id"] == m["id"] and len(m["id"]) == 24, m
    assert m["room"] == m["roomId"] == rid, m
    assert m["sender"] == {"id": user["id"], "_id": user["id"], "username": user["name"]}, m
    assert m["content"] == content, m
    assert m["updatedAt"] == m["createdAt"] and m["createdAt"].endswith("Z"), m


async def sio_connect(srv, user):
    ws = await websockets.connect(sio_url(srv, user), max_size=2 ** 20)
    opened = await asyncio.wait_for(ws.recv(), 10)
    assert opened.startswith("0{"), opened
    await ws.send("40")
    ok = await asyncio.wait_for(ws.recv(), 10)
    assert ok.startswith("40{"), ok
    return ws, json.loads(opened[1:]), json.loads(ok[2:])


async def sio_join(ws, rid):
    await ws.send("42" + json.dumps(["join_room", {"roomId": rid}]))
    name, data = await sio_recv(ws)
    assert (name, data["roomId"]) == ("room_joined", rid), (name, data)
    name, recent = await sio_recv(ws)
    assert name == "recent_messages", name
    return recent


def test_handshake_connect_and_chat_events():
    srv = server()

    async def run():
        a, b = API.user("sa"), API.user("sb")
        rid = API.room(a, [b])
        ws, opened, ok = await sio_connect(srv, a)
        assert set(opened) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}, opened
        assert opened["upgrades"] == [] and opened["pingInterval"] == 25000
        assert opened["pingTimeout"] == 20000 and opened["maxPayload"] == 65536
        assert len(opened["sid"]) == 16 and ok["sid"] == opened["sid"]
        assert await sio_join(ws, rid) == []
        # An acknowledgement id is answered with the stored message.
        await ws.send("427" + json.dumps(["send_message", {"roomId": rid, "content": "hi ✓"}]))
        ack = await sio_ack(ws, 7)
        assert len(ack) == 1 and ack[0]["ok"] is True and set(ack[0]) == {"ok", "message"}, ack
        name, m = await sio_recv(ws)
        assert name == "new_message", (name, m)
        assert_mongoose_message(m, rid, a, "hi ✓")
        assert ack[0]["message"] == m
        # A second socket of another member: typing reaches the others only.
        wb, _, _ = await sio_connect(srv, b)
        recent = await sio_join(wb, rid)
        assert [x["id"] for x in recent] == [m["id"]]
        await ws.send("42" + json.dumps(["typing_start", {"roomId": rid}]))
        assert await sio_recv(wb) == ("user_typing", {"userId": a["id"], "username": a["name"]})
        await ws.send("42" + json.dumps(["typing_stop", {"roomId": rid}]))
        assert await sio_recv(wb) == ("user_stopped_typing", {"userId": a["id"]})
        # "41" leaves the namespace: the server closes normally.
        await wb.send("41")
        try:
            await asyncio.wait_for(wb.recv(), 5)
            raise AssertionError("still open after 41")
        except ConnectionClosed as e:
            assert close_code(e) == 1000, e
        await ws.close()

    asyncio.run(run())


def test_socketio_and_plain_websocket_clients_share_rooms_across_workers():
    srv = server()

    async def run():
        users = [API.user("m") for _ in range(3)]
        rid = API.room(users[0], users[1:])
        plain, sio = [], []
        pids = set()
        for i in range(6):
            u = users[i % 3]
            w = await websockets.connect(ws_url(srv, u), max_size=2 ** 20)
            pids.add(worker_of(srv, w.response_headers["X-Request-ID"]))
            await join(w, rid)
            plain.append(w)
            s, _, _ = await sio_connect(srv, u)
            pids.add(worker_of(srv, s.response_headers["X-Request-ID"]))
            await sio_join(s, rid)
            sio.append(s)
        await sio[0].send("42" + json.dumps(["send_message", {"roomId": rid, "content": "from socket.io"}]))
        await plain[0].send(ev("send_message", roomId=rid, content="from /ws"))
        orders = []
        for w in plain:
            got = []
            while len(got) < 2:
                e = await recv_event(w)
                if e["event"] == "new_message":
                    got.append((e["data"]["id"], e["data"]["content"]))
            orders.append(got)
        for s in sio:
            got = []
            while len(got) < 2:
                name, d = await sio_recv(s)
                if name == "new_message":
                    got.append((d["id"], d["content"]))
            orders.append(got)
        assert all(o == orders[0] for o in orders), orders
        assert sorted(c for _, c in orders[0]) == ["from /ws", "from socket.io"]
        for w in plain + sio:
            await w.close()
        return len(pids)

    workers = asyncio.run(run())
    print("sockets spread over %d worker(s)" % workers)


def test_refusals_and_bad_packets():
    srv = server()
    u = API.user("r")
    for q, want in (("EIO=3&transport=websocket", "EIO=4"), ("EIO=4&transport=polling", "websocket transport"),
                    ("transport=websocket", "EIO=4")):
        st, _, doc = srv.json("GET", "/socket.io/?%s&token=%s" % (q, u["token"]))
        assert st == 400 and want in doc["error"] and doc["code"] == "BAD_REQUEST", (q, st, doc)

    async def run():
        # A bad token in the URL is refused before the upgrade.
        try:
            await websockets.connect(sio_url(srv, {"token": "garbage"}))
            raise AssertionError("upgraded with a bad token")
        except websockets.exceptions.InvalidStatusCode as e:
            assert e.status_code == 401
        ws = await websockets.connect(sio_url(srv, u))
        assert (await recv_raw(ws)).startswith("0{")
        await ws.send("42" + json.dumps(["join_room", {"roomId": "x"}]))
        assert await sio_recv(ws) == ("error", {"message": "connect to the namespace first"})
        await ws.send("40/admin,")
        assert await recv_raw(ws) == '44/admin,{"message":"Invalid namespace"}'
        await ws.send("40")
        assert (await recv_raw(ws)).startswith("40{")
        for bad, want in (("42{nope", "invalid JSON"), ("42[]", "event name required"), ("42[7]", "event name required"),
                          ('42["dance",{}]', "unknown event"),
                          ('42["join_room"]', "data must be a room id or an object"),
                          ('42["send_message","%s"]' % ("0" * 24), "data must be an object"),
                          ("45-[]", "unsupported packet"), ("42/x,[]", "unsupported packet")):
            await ws.send(bad)
            assert await sio_recv(ws) == ("error", {"message": want}), bad
        await ws.send("2")  # a client ping gets a pong
        assert await recv_raw(ws) == "3"
        await ws.send("1")  # Engine.IO close
        try:
            await asyncio.wait_for(ws.recv(), 5)
            raise AssertionError("still open after 1")
        except ConnectionClosed as e:
            assert close_code(e) == 1000

    asyncio.run(run())


async def recv_raw(ws, timeout=10):
    return await asyncio.wait_for(ws.recv(), timeout)


async def closed_with(ws, timeout=5):
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as e:
        return close_code(e)


def test_token_in_the_connect_packets_auth_object():
    srv = server()
    a, b = API.user("au"), API.user("au")
    rid = API.room(a, [b])

    async def run():
        # No token with the upgrade: the CONNECT packet's auth carries it.
        ws = await websockets.connect(sio_url(srv, None), max_size=2 ** 20)
        opened = json.loads((await recv_raw(ws))[1:])
        await ws.send('42["join_room",{"roomId":"%s"}]' % rid)  # not connected yet
        assert await sio_recv(ws) == ("error", {"message": "connect to the namespace first"})
        await ws.send("40" + json.dumps({"token": a["token"]}))
        ok = json.loads((await recv_raw(ws))[2:])
        assert ok == {"sid": opened["sid"]}, ok
        assert await sio_join(ws, rid) == []
        await ws.send("42" + json.dumps(["send_message", {"roomId": rid, "content": "auth object"}]))
        name, m = await sio_recv(ws)
        assert name == "new_message", (name, m)
        assert_mongoose_message(m, rid, a, "auth object")
        await ws.close()
        # Events right behind the CONNECT wait for it.
        wb = await websockets.connect(sio_url(srv, None))
        await recv_raw(wb)
        await wb.send("40" + json.dumps({"token": b["token"]}))
        await wb.send('42["join_room",{"roomId":"%s"}]' % rid)
        assert (await recv_raw(wb)).startswith("40{")
        name, _ = await sio_recv(wb)
        assert name == "room_joined", name
        await wb.close()
        # Refusals: CONNECT_ERROR, then a 1008 close.
        for auth, want in ((None, "access token required"), ({"token": 7}, "access token required"),
                           ({"token": "garbage"}, "invalid or expired token"),
                           ({"token": a["token"][:-2] + "xx"}, "invalid or expired token")):
            w = await websockets.connect(sio_url(srv, None))
            await recv_raw(w)
            await w.send("40" + (json.dumps(auth) if auth is not None else ""))
            assert await recv_raw(w) == '44{"message":"%s"}' % want, auth
            assert await closed_with(w) == 1008
        # A socket that never authenticates is closed (test hook: 1.5 s).
        w = await websockets.connect(sio_url(srv, None), ping_interval=None)
        await recv_raw(w)
        t0 = time.time()
        assert await closed_with(w, 6) == 1008
        assert 1.0 < time.time() - t0 < 4.0, time.time() - t0

    asyncio.run(run())


def test_engineio_pings_keep_an_answering_client_and_drop_a_silent_one():
    srv = Server(workers=1, env={"RESIL_TEST_HOOKS": "1", "RESIL_TEST_WS_PING_MS": "300",
                                 "RESIL_TEST_WS_IDLE_MS": "1500"})
    srv.start()
    try:
        u = Api(srv).user("p")

        async def run():
            ws = await websockets.connect(sio_url(srv, u), ping_interval=None)
            opened = json.loads((await recv_raw(ws))[1:])
            assert opened["pingInterval"] == 300
            await ws.send("40")
            assert (await recv_raw(ws)).startswith("40{")
            # Keep sending events: the server's "2" comes on its period
            # whatever the traffic; answering "3" keeps the socket open.
            pings = 0
            t0 = time.time()
            while time.time() - t0 < 2.5:
                await ws.send('42["dance",{}]')
                p = await recv_raw(ws, 2)
                if p == "2":
                    pings += 1
                    await ws.send("3")
                await asyncio.sleep(0.05)
            assert pings >= 4, pings
            await ws.close()
            # One that never answers is closed after the silence limit.
            silent = await websockets.connect(sio_url(srv, u), ping_interval=None)
            t0 = time.time()
            try:
                while True:
                    await recv_raw(silent, 5)
            except ConnectionClosed as e:
                assert close_code(e) == 1001, e
            assert 1.0 < time.time() - t0 < 4.0

        asyncio.run(run())
    finally:
        logs = stop_server(srv)
    assert_sanitizer_clean(logs)


def test_bare_ids_acks_and_send_without_join():
    srv = server()
    a, b, out = API.user("ba"), API.user("bb"), API.user("bo")
    rid = API.room(a, [b], name="bare ids")

    async def run():
        wa, _, _ = await sio_connect(srv, a)
        wb, _, _ = await sio_connect(srv, b)
        wo, _, _ = await sio_connect(srv, out)
        # socket.emit('join_room', roomId, cb): room_joined, recent_messages, then the ack.
        await wa.send("421" + json.dumps(["join_room", rid]))
        assert await sio_recv(wa) == ("room_joined", {"roomId": rid, "roomName": "bare ids"})
        assert await sio_recv(wa) == ("recent_messages", [])
        assert await sio_ack(wa, 1) == [{"ok": True, "roomId": rid, "roomName": "bare ids"}]
        # A bare id without an ack: no ack, the same events.
        await wb.send("42" + json.dumps(["join_room", rid]))
        assert (await sio_recv(wb))[0] == "room_joined"
        assert (await sio_recv(wb))[0] == "recent_messages"
        # Refusals answer the ack instead of an `error` event.
        await wo.send("422" + json.dumps(["join_room", rid]))
        assert await sio_ack(wo, 2) == [{"ok": False, "error": "access denied to room"}]
        await wo.send("423" + json.dumps(["join_room", "not-an-id"]))
        assert await sio_ack(wo, 3) == [{"ok": False, "error": "access denied to room"}]
        await wo.send("424" + json.dumps(["dance", rid]))
        assert await sio_ack(wo, 4) == [{"ok": False, "error": "unknown event"}]
        await wo.send("42" + json.dumps(["join_room", rid]))
        assert await sio_recv(wo) == ("error", {"message": "access denied to room"})
        # Typing with bare ids; acks say ok; the other member hears it.
        await wa.send("425" + json.dumps(["typing_start", rid]))
        assert await sio_ack(wa, 5) == [{"ok": True}]
        assert await sio_recv(wb) == ("user_typing", {"userId": a["id"], "username": a["name"]})
        await wa.send("42" + json.dumps(["typing_stop", rid]))
        assert await sio_recv(wb) == ("user_stopped_typing", {"userId": a["id"]})
        await wo.send("426" + json.dumps(["typing_start", rid]))
        assert await sio_ack(wo, 6) == [{"ok": False, "error": "join the room first"}]
        # B leaves (bare id, ack) and sends without being joined: the
        # stored membership is what counts; A, joined, gets it.
        await wb.send("427" + json.dumps(["leave_room", rid]))
        assert await sio_ack(wb, 7) == [{"ok": True}]
        await wb.send("428" + json.dumps(["send_message", {"roomId": rid, "content": "no join needed"}]))
        ack = await sio_ack(wb, 8)
        assert ack[0]["ok"] is True, ack
        assert_mongoose_message(ack[0]["message"], rid, b, "no join needed")
        name, m = await sio_recv(wa)
        assert name == "new_message" and m == ack[0]["message"], (name, m)
        await silent(wb, 0.3)  # not in the room: no new_message for B
        # Without an ack id as well; a non-member is refused either way.
        await wb.send("42" + json.dumps(["send_message", {"roomId": rid, "content": "again"}]))
        name, m = await sio_recv(wa)
        assert name == "new_message" and m["content"] == "again", (name, m)
        await wo.send("429" + json.dumps(["send_message", {"roomId": rid, "content": "intruder"}]))
        assert await sio_ack(wo, 9) == [{"ok": False, "error": "access denied to room"}]
        await wo.send("42" + json.dumps(["send_message", {"roomId": "0" * 24, "content": "nowhere"}]))
        assert await sio_recv(wo) == ("error", {"message": "access denied to room"})
        await wo.send("4210" + json.dumps(["send_message", {"roomId": rid, "content": ""}]))
        assert await sio_ack(wo, 10) == [{"ok": False, "error": "content must be 1-2000 characters"}]
        await silent(wa, 0.3)  # the refused ones were never delivered
        # Acks of queued events come back in order, each once.
        for i in range(11, 16):
            await wa.send("42%d" % i + json.dumps(["typing_stop", rid]))
        for i in range(11, 16):
            assert await sio_ack(wa, i) == [{"ok": True}]
        # recent_messages on /socket.io/ carry the Mongoose fields too.
        await wa.send("4216" + json.dumps(["join_room", {"roomId": rid}]))
        await sio_recv(wa)
        name, recent = await sio_recv(wa)
        assert name == "recent_messages" and [x["content"] for x in recent] == ["no join needed", "again"], recent
        assert all(set(x) == MONGOOSE_KEYS for x in recent), recent
        assert (await sio_ack(wa, 16))[0]["ok"] is True
        for w in (wa, wb, wo):
            await w.close()

    asyncio.run(run())


def test_plain_websocket_protocol_is_unchanged():
    srv = server()
    a, b = API.user("pa"), API.user("pb")
    rid = API.room(a, [b])

    async def run():
        w = await websockets.connect(ws_url(srv, b), max_size=2 ** 20)
        await w.send(json.dumps({"event": "join_room", "data": rid}))
        assert await recv_event(w) == {"event": "error", "data": {"message": "data must be an object"}}
        await w.send(ev("send_message", roomId=rid, content="not joined"))
        assert await recv_event(w) == {"event": "error", "data": {"message": "join the room first"}}
        await join(w, rid)
        await w.send(ev("send_message", roomId=rid, content="plain"))
        e = await recv_event(w)
        assert e["event"] == "new_message", e
        assert set(e["data"]) == {"id", "roomId", "content", "sender", "createdAt"}, e
        assert e["data"]["sender"] == {"id": b["id"], "username": b["name"]}
        # The REST history keeps resil's shape as well.
        st, _, doc = srv.json("GET", "/api/rooms/%s/messages" % rid, None, {"Authorization": "Bearer " + a["token"]})
        assert st == 200 and [set(x) for x in doc["data"]] == [{"id", "roomId", "content", "sender", "createdAt"}]
        # added_to_room is for Socket.IO sockets: a /ws socket hears nothing.
        rid2 = API.room(a, [b], name="later")
        try:
            e = await recv_event(w, 0.5)
            raise AssertionError("unexpected on /ws: %s" % e)
        except asyncio.TimeoutError:
            pass
        assert rid2
        await w.close()

    asyncio.run(run())


def test_personal_room_gets_added_to_room_on_every_socket_across_workers():
    srv = server()
    owner, b, other = API.user("po"), API.user("pb"), API.user("px")

    async def run():
        socks, pids = [], set()
        # B's sockets, until they sit on both workers (bounded).
        # One worker may take a run of accepts on a busy machine: keep
        # connecting (a short pause lets the other worker's accept in).
        while len(socks) < 3 or (len(pids) < 2 and len(socks) < 100):
            s, _, _ = await sio_connect(srv, b)
            pids.add(worker_of(srv, s.response_headers["X-Request-ID"]))
            socks.append(s)
            await asyncio.sleep(0.05)
        ws_other, _, _ = await sio_connect(srv, other)
        st, _, doc = srv.json("POST", "/api/rooms", {"name": "surprise"}, {"Authorization": "Bearer " + owner["token"]})
        assert st == 201, doc
        rid = doc["data"]["id"]
        st, _, doc = srv.json("POST", "/api/rooms/%s/members" % rid, {"userId": b["id"]},
                              {"Authorization": "Bearer " + owner["token"]})
        assert st == 200 and b["id"] in doc["data"]["members"], doc
        for s in socks:
            assert await sio_recv(s) == ("added_to_room", {"roomId": rid, "roomName": "surprise"})
        await silent(ws_other, 0.3)
        # The added user joins with the Node client's call and is in.
        await socks[-1].send("421" + json.dumps(["join_room", rid]))
        assert await sio_recv(socks[-1]) == ("room_joined", {"roomId": rid, "roomName": "surprise"})
        # A socket that left is no longer addressed; the others still are.
        await socks[0].close()
        st, _, _ = srv.json("POST", "/api/rooms/%s/members" % rid, {"userId": b["id"]},
                            {"Authorization": "Bearer " + owner["token"]})
        assert st == 200
        for s in socks[1:-1]:
            assert await sio_recv(s) == ("added_to_room", {"roomId": rid, "roomName": "surprise"})
        for s in socks[1:] + [ws_other]:
            await s.close()
        return len(pids)

    workers = asyncio.run(run())
    assert workers == 2, "sockets on %d worker(s)" % workers


def node_client_dir():
    """bench/ws has socket.io-client in its package.json; install it there
    when node and npm exist and it is missing. Returns (dir, why_not)."""
    d = os.path.join(TOP, "bench", "ws")
    if not shutil.which("node"):
        return None, "node is not installed"
    if not os.path.isdir(os.path.join(d, "node_modules", "socket.io-client")):
        if not os.access(d, os.W_OK):
            return None, "bench/ws is read-only here (make distcheck) and has no node_modules"
        if not shutil.which("npm"):
            return None, "npm is not installed"
        r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=d,
                           capture_output=True, timeout=600)
        if r.returncode != 0:
            return None, "npm install in bench/ws failed: %s" % r.stderr.decode(errors="replace")[-300:]
    return d, None


def test_npm_socketio_client_connects_with_the_websocket_transport():
    d, why = node_client_dir()
    if not d:
        print("SKIP test_npm_socketio_client_connects_with_the_websocket_transport: %s" % why)
        return
    srv = server()
    a, b = API.user("n"), API.user("n")
    rid = API.room(a, [b])
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sio_client.js")
    r = subprocess.run(["node", script, str(srv.port), rid, a["token"], b["token"], b["id"]], cwd=d,
                       capture_output=True, timeout=60)
    out = r.stdout.decode()
    assert r.returncode == 0, (out, r.stderr.decode()[-2000:])
    res = json.loads(out.strip().splitlines()[-1])
    assert res["received"]["content"] == "hello from socket.io-client", res
    assert res["received"]["sender"]["id"] == a["id"]
    assert res["typing"] == {"userId": a["id"], "username": a["name"]}
    assert res["error"] == {"message": "content must be 1-2000 characters"}
    assert res["bad_token"] == "connect_error"
    assert res["auth_object"]["content"] == "hello from socket.io-client", res
    # The Node app's client calls: bare ids, acks, send without join, the
    # personal room (sockets spread over the server's 2 workers).
    assert res["join_ack"] == {"ok": True, "roomId": rid, "roomName": "general"}, res
    assert res["typing_bare"] == {"userId": a["id"], "username": a["name"]}
    assert res["stopped_bare"] == {"userId": a["id"]}
    assert res["send_ack"]["ok"] is True, res
    b_user = {"id": b["id"], "name": b["name"]}
    assert_mongoose_message(res["send_ack"]["message"], rid, b_user, "sent without joining")
    assert res["send_without_join"] == res["send_ack"]["message"], res
    assert res["added"] == [{"roomId": res["room2"], "roomName": "added later"}] * 2, res
    assert res["join2_ack"] == {"ok": True, "roomId": res["room2"], "roomName": "added later"}, res
    assert res["leave_ack"] == {"ok": True}
    assert res["denied_ack"] == {"ok": False, "error": "access denied to room"}, res


if __name__ == "__main__":
    try:
        run_tests([
            test_handshake_connect_and_chat_events,
            test_socketio_and_plain_websocket_clients_share_rooms_across_workers,
            test_refusals_and_bad_packets,
            test_bare_ids_acks_and_send_without_join,
            test_plain_websocket_protocol_is_unchanged,
            test_personal_room_gets_added_to_room_on_every_socket_across_workers,
            test_token_in_the_connect_packets_auth_object,
            test_engineio_pings_keep_an_answering_client_and_drop_a_silent_one,
            test_npm_socketio_client_connects_with_the_websocket_transport,
        ])
    finally:
        if S is not None:
            assert_sanitizer_clean(stop_server(S))
