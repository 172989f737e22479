#!/usr/bin/env python3
"""Drop-in for the Node deployment (issue 15, SPEC sections 6 and 8): the
Node app's own Mongoose models (bcryptjs cost 12) write users, posts, rooms
and messages into the MongoDB wire double; resild, started on the same
database, logs those users in with their passwords, lists their posts, their
rooms and their messages, and accepts a token the Node app signed. After the
first login the stored hash is argon2id and the Node model still reads the
document. Never skipped: without node/npm the test fails (test_mongoose.py)."""
import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import Server, run_tests  # noqa: E402
from test_mongoose import MongoDouble, node  # noqa: E402
from test_socketio import sio_connect, sio_recv  # noqa: E402

MARK = "NODE-SECRET-7f31"


def no_secret(what, body):
    text = json.dumps(body)
    assert MARK not in text and "$2a$" not in text and "$2b$" not in text and "$argon2" not in text, (what, body)

SECRET = "drop-in-secret-shared-with-the-node-app-0123456789"


def call(srv, method, path, body=None, token=None):
    h = {"Authorization": "Bearer " + token} if token else {}
    return srv.json(method, path, body, h)


def login(srv, user):
    st, _, doc = srv.json("POST", "/api/auth/login", {"email": user["email"], "password": user["password"]})
    assert st == 200, (st, doc)
    return doc["data"]


def test_resild_serves_what_the_node_app_wrote():
    md = MongoDouble()
    srv = None
    try:
        uri = md.uri("nodeapp")
        fx = node(uri, "write")
        alice, bob, carol = fx["users"]
        # Fields no serializer lists, on every document of every collection.
        added = node(uri, "add-secrets", MARK)
        assert added["users"] == 3 and added["posts"] == 3 and added["messages"] == 3, added
        srv = Server(workers=2, db=uri, env={"RESIL_JWT_SECRET": SECRET, "RESIL_RATE_LIMIT": "100000/15m"})
        srv.start()

        # Passwords the Node app stored as bcrypt verify; roles come from the documents.
        a = login(srv, alice)
        assert a["user"]["id"] == alice["id"] and a["user"]["_id"] == alice["id"], a
        assert a["user"]["role"] == "admin" and a["user"]["username"] == "alice_node", a
        assert "password" not in json.dumps(a) and "$2" not in json.dumps(a), a
        st, _, doc = srv.json("POST", "/api/auth/login", {"email": bob["email"], "password": "not-bobs"})
        assert st == 401, doc
        b = login(srv, bob)

        # After the first login the hash is argon2id, and the Node model still reads the user.
        stored = node(uri, "read-user", alice["email"])
        assert stored and stored["password"].startswith("$argon2id$"), stored
        assert stored["username"] == "alice_node" and stored["_id"] == alice["id"], stored
        login(srv, alice)  # and it verifies again

        # Posts with their authors, newest first.
        st, _, doc = call(srv, "GET", "/api/posts")
        assert st == 200 and doc["pagination"]["total"] == fx["counts"]["posts"], doc
        titles = {p["title"]: p for p in doc["data"]}
        assert titles["Bob writes"]["author"]["username"] == "bob_node", doc
        assert titles["First post"]["author"]["id"] == alice["id"], doc
        assert titles["Bob writes"]["content"] == "Bob edited this", doc

        # Bob's rooms and their history, with the senders' names.
        st, _, doc = call(srv, "GET", "/api/rooms", token=b["token"])
        assert st == 200 and [r["id"] for r in doc["data"]] == [fx["rooms"][0]["id"]], doc
        room = doc["data"][0]
        assert room["name"] == "node-room-2" and room["_id"] == room["id"], room
        st, _, doc = call(srv, "GET", "/api/rooms/%s/messages" % room["id"], token=b["token"])
        assert st == 200, doc
        assert ["%s:%s" % (m["sender"]["username"], m["content"]) for m in doc["data"]] == \
            ["alice_node:hi bob", "bob_node:hi alice", "alice_node:how are you?"], doc

        # A token the Node app signed ({userId, email}, HS256, the same secret).
        tok = node("sign-token", SECRET, carol["id"], carol["email"])["token"]
        st, _, doc = call(srv, "GET", "/api/users/me", token=tok)
        assert st == 200 and doc["data"]["id"] == carol["id"] and doc["data"]["role"] == "clinician", doc
        assert "password" not in doc["data"], doc
        expired = node("sign-token", SECRET, carol["id"], carol["email"], "-10s")["token"]
        st, _, doc = call(srv, "GET", "/api/users/me", token=expired)
        assert st == 403, doc

        # No route ever sends a field its serializer does not list.
        ta, tb = a["token"], b["token"]
        pid = fx["posts"][0]["id"]
        rid = fx["rooms"][0]["id"]
        for method, path, body, tok in (
                ("GET", "/api/users/me", None, tb), ("GET", "/api/users/%s" % alice["id"], None, tb),
                ("GET", "/api/users?limit=100", None, ta), ("GET", "/api/posts?limit=100", None, None),
                ("GET", "/api/posts/%s" % pid, None, None), ("PATCH", "/api/posts/%s" % pid, {"title": "Edited"}, ta),
                ("GET", "/api/rooms", None, tb), ("GET", "/api/rooms/%s/messages" % rid, None, tb),
                ("POST", "/api/rooms/%s/messages" % rid, {"content": "from resil"}, tb),
                ("POST", "/api/rooms/%s/members" % rid, {"userId": carol["id"]}, ta),
                ("PATCH", "/api/users/%s" % bob["id"], {"username": "bob_renamed"}, tb)):
            st, _, doc = call(srv, method, path, body, tok)
            assert st in (200, 201), (method, path, st, doc)
            no_secret(path, doc)
        no_secret("login", login(srv, bob))

        # The Node-signed token on the Socket.IO handshake, and the chat's documents.
        async def chat():
            ws, _, _ = await sio_connect(srv, {"token": tok})
            try:
                await ws.send("42" + json.dumps(["join_room", rid]))
                name, data = await sio_recv(ws)
                assert name == "room_joined" and data["roomId"] == rid, (name, data)
                name, recent = await sio_recv(ws)
                assert name == "recent_messages" and any(m["content"] == "hi bob" for m in recent), recent
                no_secret("recent_messages", recent)
            finally:
                await ws.close()
        asyncio.run(chat())

        # What resild writes, the Node app reads: a user registered here.
        st, _, doc = srv.json("POST", "/api/auth/register",
                              {"username": "dave_resil", "email": "dave@example.com", "password": "dave-secret-1"})
        assert st == 201, doc
        dave = node(uri, "read-user", "dave@example.com")
        assert dave and dave["username"] == "dave_resil" and dave["password"].startswith("$argon2id$"), dave
        assert dave["role"] == "user" and dave["isActive"] is True and "createdAt" in dave, dave
    finally:
        if srv:
            srv.assert_clean_exit()
            srv.cleanup()
        md.close()


if __name__ == "__main__":
    sys.exit(run_tests([test_resild_serves_what_the_node_app_wrote]))
