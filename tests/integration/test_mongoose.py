#!/usr/bin/env python3
"""The Node app's own data layer against the MongoDB wire double (issue 15).

mongoose 8 (npm `mongodb` 6 driver underneath) with the Node app's models
(tests/mongoose/app.js: User with a bcryptjs cost-12 pre-save hook, Post,
Room, Message) writes a fixture set into tests/mongo_double and reads it back
with find/findById/populate/countDocuments, then updates it. Three
topologies, as a deployment may present them: standalone, a replica-set
primary (retryable writes with txnNumber, $clusterTime gossip) and behind a
load balancer. The npm packages are installed at test time from
tests/mongoose/package-lock.json; without node or npm the test fails with a
message, it never skips. The double runs under valgrind with RESIL_VALGRIND=1.
"""
import atexit
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import TOP, run_tests  # noqa: E402

APP_DIR = os.path.join(TOP, "tests", "mongoose")
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer",
                     "Invalid read", "Invalid write", "definitely lost", "uninitialised")
_node_dir = None


class MongoDouble:
    """tests/mongo_double on an ephemeral port, control socket in its temp dir."""

    def __init__(self, replset=None):
        binary = os.environ.get("MONGO_DOUBLE") or os.path.join(TOP, "tests", "mongo_double")
        if not os.access(binary, os.X_OK):
            raise AssertionError("MongoDB test double not found at %s: build it with "
                                 "`make tests/mongo_double` (make check does)" % binary)
        self.dir = tempfile.mkdtemp(prefix="resil-mg-")
        self.control = os.path.join(self.dir, "control.sock")
        port_file = os.path.join(self.dir, "port")
        self.log_path = os.path.join(self.dir, "double.log")
        self.log = open(self.log_path, "wb")
        argv = [binary, "--port", "0", "--port-file", port_file, "--control", self.control,
                "--max-lifetime", "600"]
        if replset:
            argv += ["--replset", replset]
        wrap = []
        if os.environ.get("RESIL_VALGRIND"):
            wrap = ["valgrind", "-q", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite"]
        self.proc = subprocess.Popen(wrap + argv, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        deadline = time.time() + (60 if wrap else 10)
        self.port = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("mongo_double exited with %s: %s" % (self.proc.returncode, self.logs()))
            try:
                with open(port_file) as f:
                    self.port = int(f.readline())
                break
            except (OSError, ValueError):
                time.sleep(0.05)
        if not self.port:
            self.close()
            raise AssertionError("mongo_double did not write its port file")

    def uri(self, db, query=""):
        return "mongodb://127.0.0.1:%d/%s%s" % (self.port, db, query)

    def cmd(self, line):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(self.control)
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

    def stats(self):
        return {k: int(v) for k, _, v in (w.partition("=") for w in self.cmd("stats").split()[1:])}

    def logs(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def close(self):
        """Stops the double (SIGTERM) and checks that it exited cleanly."""
        rc = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        else:
            rc = self.proc.returncode
        self.log.close()
        logs = self.logs()
        shutil.rmtree(self.dir, ignore_errors=True)
        for m in SANITIZER_MARKERS:
            assert m not in logs, "sanitizer/valgrind report from mongo_double:\n" + logs[-4000:]
        assert rc == 0, "mongo_double exited with %s:\n%s" % (rc, logs[-2000:])


def node_dir():
    """tests/mongoose with its npm packages installed (npm ci from the lock
    file; into a temporary copy when the source tree is read-only, as under
    make distcheck). Fails, never skips, when node or npm is missing."""
    global _node_dir
    if _node_dir:
        return _node_dir
    for tool in ("node", "npm"):
        assert shutil.which(tool), ("%s is not installed: the mongoose drop-in test needs node and npm "
                                    "(scripts/install-deps.sh --test installs them)" % tool)
    d = APP_DIR
    if not os.path.isdir(os.path.join(d, "node_modules", "mongoose")):
        if not os.access(d, os.W_OK):
            d = tempfile.mkdtemp(prefix="resil-mongoose-")
            atexit.register(shutil.rmtree, d, True)
            for f in ("package.json", "package-lock.json", "app.js"):
                shutil.copy(os.path.join(APP_DIR, f), d)
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=d,
                           capture_output=True, timeout=600)
        assert r.returncode == 0, "npm ci in %s failed: %s" % (d, r.stderr.decode(errors="replace")[-1500:])
    _node_dir = d
    return d


def node(*args, timeout=180):
    """Runs app.js; returns the JSON it printed."""
    d = node_dir()
    r = subprocess.run(["node", os.path.join(d, "app.js")] + list(args), cwd=d, capture_output=True,
                       timeout=timeout)
    out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    assert r.returncode == 0, "node app.js %s failed (%s):\n%s\n%s" % (args[1:2], r.returncode, out[-2000:],
                                                                     err[-3000:])
    return json.loads(out.strip().splitlines()[-1])


def check_fixture(md, uri):
    """Writes the fixture set through mongoose and checks what it reports and
    what a second, fresh connection reads back."""
    res = node(uri, "write")
    assert res["counts"] == {"users": 3, "posts": 3, "rooms": 1, "messages": 3}, res["counts"]
    alice, bob, carol = res["users"]
    assert alice["email"] == "alice.node@example.com" and alice["role"] == "admin", alice
    assert [p["author"] for p in res["posts"]] == [alice["id"], alice["id"], bob["id"]], res["posts"]
    assert res["rooms"][0]["members"] == [alice["id"], bob["id"], carol["id"]], res["rooms"]
    assert [m["sender"] for m in res["messages"]] == [alice["id"], bob["id"], alice["id"]], res["messages"]
    assert len({u["id"] for u in res["users"]}) == 3 and all(len(u["id"]) == 24 for u in res["users"])

    doc = node(uri, "read-user", "ALICE.node@example.com")
    assert doc["_id"] == alice["id"] and doc["username"] == "alice_node", doc
    assert doc["password"].startswith("$2a$12$") and len(doc["password"]) == 60, doc["password"]
    assert doc["__v"] == 0 and doc["isActive"] is True and doc["role"] == "admin", doc
    assert doc["createdAt"].endswith("Z") and doc["updatedAt"].endswith("Z"), doc
    assert set(doc) == {"_id", "username", "email", "password", "role", "isActive", "createdAt", "updatedAt",
                        "__v"}, doc
    assert node(uri, "read-user", "nobody@example.com") is None
    assert node(uri, "check-password", bob["email"], bob["password"]) == {"match": True}
    assert node(uri, "check-password", bob["email"], "not-" + bob["password"]) == {"match": False}
    return res


def test_mongoose_models_write_and_read_back_on_a_standalone_double():
    md = MongoDouble()
    try:
        check_fixture(md, md.uri("nodeapp"))
        st = md.stats()
        for name in ("insert", "find", "getMore", "update", "delete", "findAndModify", "aggregate",
                     "createIndexes", "create", "endSessions"):
            assert st.get(name, 0) > 0, (name, st)
        assert st["lsid"] > 0, st              # implicit sessions on every command
        assert st["retryable"] == 0, st        # a standalone takes no retryable writes
        assert st.get("unknown", 0) == 0, st   # nothing the double did not understand
        assert st["streamed"] >= 1, st         # the driver's monitor used the exhaust hello stream
        assert st["cursors"] == 0, st          # every cursor exhausted or killed
    finally:
        md.close()


def test_replica_set_primary_takes_retryable_writes_and_replays_a_lost_reply():
    md = MongoDouble(replset="rs0")
    try:
        check_fixture(md, md.uri("nodeapp"))
        st = md.stats()
        assert st["retryable"] > 0 and st["retried"] == 0, st
        assert st["sessions"] == 0, st  # endSessions at disconnect forgot them
        # The reply to one insert is lost after the write took effect; the
        # driver retries with the same lsid and txnNumber and gets the
        # recorded answer: one document, not two.
        assert node(md.uri("nodeapp"), "retry-write", md.control) == {"copies": 1}
        st = md.stats()
        assert st["retried"] == 1, st
    finally:
        md.close()


def test_load_balanced_connections_get_a_service_id():
    md = MongoDouble()
    try:
        check_fixture(md, md.uri("nodeapp_lb", "?loadBalanced=true"))
        st = md.stats()
        assert st["streamed"] == 0 and st.get("getMore", 0) > 0, st  # no monitoring behind a balancer
    finally:
        md.close()


def bson_doc(fields):
    """A minimal BSON encoder: str, int32, ("i64", n), ("oid", 12 bytes) and
    nested documents given as lists of (key, value)."""
    body = b""
    for k, v in fields:
        key = k.encode() + b"\0"
        if isinstance(v, int):
            body += b"\x10" + key + struct.pack("<i", v)
        elif isinstance(v, list):
            body += b"\x03" + key + bson_doc(v)
        elif isinstance(v, tuple) and v[0] == "i64":
            body += b"\x12" + key + struct.pack("<q", v[1])
        elif isinstance(v, tuple) and v[0] == "oid":
            body += b"\x07" + key + v[1]
        else:
            s = v.encode() + b"\0"
            body += b"\x02" + key + struct.pack("<i", len(s)) + s
    return struct.pack("<i", len(body) + 5) + body + b"\0"


EXHAUST_ALLOWED = 1 << 16
MORE_TO_COME = 1 << 1


def op_msg(req_id, doc, kind=0, flags=0):
    payload = struct.pack("<I", flags) + bytes([kind]) + doc
    return struct.pack("<iiii", 16 + len(payload), req_id, 0, 2013) + payload


def msg_header(r):
    """(requestID, responseTo, OP_MSG flags) of a reply."""
    req, to, _ = struct.unpack("<iii", r[4:16])
    return req, to, struct.unpack("<I", r[16:20])[0]


def topology_version(r):
    """(processId bytes, counter) of the topologyVersion in a raw reply."""
    i = r.find(b"\x07processId\0")
    j = r.find(b"\x12counter\0")
    assert i > 0 and j > 0, r
    return r[i + 11:i + 23], struct.unpack("<q", r[j + 9:j + 17])[0]


def recv_msg(s):
    head = b""
    while len(head) < 16:
        b = s.recv(16 - len(head))
        if not b:
            return None
        head += b
    n = struct.unpack("<i", head[:4])[0]
    body = b""
    while len(body) < n - 16:
        b = s.recv(n - 16 - len(body))
        if not b:
            return None
        body += b
    return head + body


def test_unknown_commands_and_bad_sections_get_errors_not_crashes():
    md = MongoDouble()
    try:
        s = socket.create_connection(("127.0.0.1", md.port), timeout=10)
        s.sendall(op_msg(1, bson_doc([("frobnicate", 1), ("$db", "nodeapp")])))
        r = recv_msg(s)
        assert r and b"CommandNotFound" in r and b"no such command: 'frobnicate'" in r, r
        s.sendall(op_msg(2, bson_doc([("ping", 1), ("$db", "nodeapp")])))
        r = recv_msg(s)
        assert r and b"CommandNotFound" not in r and struct.unpack("<i", r[8:12])[0] == 2, r
        # txnNumber needs a session and a retryable command: an error reply
        s.sendall(op_msg(3, bson_doc([("find", "users"), ("txnNumber", 1), ("$db", "nodeapp")])))
        r = recv_msg(s)
        assert r and b"InvalidOptions" in r, r
        s.sendall(op_msg(4, bson_doc([("endSessions", "nope"), ("$db", "admin")])))
        r = recv_msg(s)
        assert r and b"TypeMismatch" in r, r
        # An unknown section kind is a protocol error: that connection closes...
        s.sendall(op_msg(5, bson_doc([("ping", 1), ("$db", "nodeapp")]), kind=7))
        assert recv_msg(s) is None
        s.close()
        # ...and the double goes on serving others.
        s = socket.create_connection(("127.0.0.1", md.port), timeout=10)
        s.sendall(op_msg(6, bson_doc([("ping", 1), ("$db", "nodeapp")])))
        assert recv_msg(s) is not None
        s.close()
        assert md.stats()["unknown"] == 1
    finally:
        md.close()


def awaitable_hello(req_id, pid, counter, wait_ms, exhaust):
    doc = bson_doc([("hello", 1), ("maxAwaitTimeMS", wait_ms),
                    ("topologyVersion", [("processId", ("oid", pid)), ("counter", ("i64", counter))]),
                    ("$db", "admin")])
    return op_msg(req_id, doc, flags=EXHAUST_ALLOWED if exhaust else 0)


def test_awaitable_hello_streams_and_a_state_change_is_pushed():
    md = MongoDouble()
    try:
        a = socket.create_connection(("127.0.0.1", md.port), timeout=20)
        a.sendall(op_msg(1, bson_doc([("hello", 1), ("$db", "admin")])))
        r = recv_msg(a)
        pid, counter = topology_version(r)
        assert counter == 0 and msg_header(r)[2] & MORE_TO_COME == 0
        # A stale topologyVersion (another process) with exhaustAllowed: the
        # stream starts at once, every reply with moreToCome and answering
        # the previous one.
        a.sendall(awaitable_hello(2, b"\0" * 12, 0, 100, True))
        r1 = recv_msg(a)
        r2 = recv_msg(a)
        assert r1 and r2, (r1, r2)
        assert msg_header(r1)[1] == 2 and msg_header(r1)[2] & MORE_TO_COME, msg_header(r1)
        assert msg_header(r2)[1] == msg_header(r1)[0] and msg_header(r2)[2] & MORE_TO_COME, msg_header(r2)
        assert topology_version(r2) == (pid, 0)
        a.close()
        # The current topologyVersion with a long wait: nothing comes until
        # the server's state changes; an injected "shutting down" error moves
        # topologyVersion on, carries it, and pushes a hello onto the stream.
        a = socket.create_connection(("127.0.0.1", md.port), timeout=20)
        a.sendall(awaitable_hello(3, pid, 0, 120000, True))
        md.cmd("error 91 1")
        b = socket.create_connection(("127.0.0.1", md.port), timeout=20)
        b.sendall(op_msg(4, bson_doc([("ping", 1), ("$db", "nodeapp")])))
        e = recv_msg(b)
        assert b"ShutdownInProgress" in e and topology_version(e) == (pid, 1), e
        pushed = recv_msg(a)
        assert pushed and msg_header(pushed)[1] == 3 and msg_header(pushed)[2] & MORE_TO_COME
        assert topology_version(pushed) == (pid, 1)
        # Without exhaustAllowed an awaitable hello gets one plain reply.
        b.sendall(awaitable_hello(5, b"\0" * 12, 0, 100, False))
        r = recv_msg(b)
        assert msg_header(r)[1] == 5 and msg_header(r)[2] & MORE_TO_COME == 0
        a.close()
        b.close()
        assert md.stats()["streamed"] >= 3
    finally:
        md.close()


if __name__ == "__main__":
    run_tests([
        test_mongoose_models_write_and_read_back_on_a_standalone_double,
        test_replica_set_primary_takes_retryable_writes_and_replays_a_lost_reply,
        test_load_balanced_connections_get_a_service_id,
        test_unknown_commands_and_bad_sections_get_errors_not_crashes,
        test_awaitable_hello_streams_and_a_state_change_is_pushed,
    ])
