#!/usr/bin/env python3
"""Black-box tests of resilctl against a fake control server.

A thread in this process plays resild's side of the control protocol
(one JSON line in, one JSON line out, then close) with canned answers, so
the CLI is tested on its own: the request it sends, its output (table
alignment, human units, --json round trip), and every exit status
(0/1/2/3/4/64), including "resild is not running" and "stop" waiting for
the supervisor's pid to disappear. Standard library only.

Environment: RESILCTL = path of the binary (default ../../resilctl from
this file); RESILCTL_WRAPPER = command prefix such as
"valgrind -q --leak-check=full --error-exitcode=99".
"""
import json
import os
import pty
import re
import select
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
RESILCTL = os.environ.get("RESILCTL") or os.path.join(HERE, "..", "..", "resilctl")
WRAPPER = shlex.split(os.environ.get("RESILCTL_WRAPPER", ""))
HANG = object()  # handler answer: keep the connection open, say nothing

STATUS = {
    "ok": True,
    "supervisor": {"pid": 123, "uptime_s": 456, "listen": "127.0.0.1:8080", "db": "sqlite",
                   "db_state": "connected", "workers_target": 3, "generation": 3, "version": "0.1.0",
                   "state": "running"},
    "workers": [
        {"id": 0, "pid": 1234, "state": "ready", "uptime_s": 456, "restarts": 0, "cpu_pct": 0.5,
         "rss_bytes": 5242880, "requests": 1000, "inflight": 0, "websockets": 0, "generation": 3,
         "circuits": {"sqlite": "closed"}},
        {"id": 1, "pid": 98765, "state": "starting", "uptime_s": 7500, "restarts": 12, "cpu_pct": 12.25,
         "rss_bytes": 123456789, "requests": 1234567, "inflight": 3, "websockets": 17, "generation": 3,
         "circuits": {"sqlite": "open"}},
        {"id": 10, "pid": 5, "state": "errored", "uptime_s": 45, "restarts": 11, "cpu_pct": 0,
         "rss_bytes": 1000, "requests": 0, "inflight": 0, "websockets": 0, "generation": 2,
         "circuits": {}},
        {"id": 11, "pid": 77, "state": "draining", "uptime_s": 273600, "restarts": 1, "cpu_pct": 100.0,
         "rss_bytes": 3 * 1024 ** 3, "requests": 42, "inflight": 1, "websockets": 2, "generation": 2},
    ],
    "crashes_by_route": {"GET /x": 1, "POST /api/posts": 3},
}

STATUS_TABLE = [
    "resild 0.1.0 · pid 123 · up 7m 36s · listen 127.0.0.1:8080 · db sqlite (connected) · generation 3",
    "id    pid  state     uptime  restarts     cpu     memory  requests  inflight  ws",
    " 0   1234  ready     7m             0    0.5%    5.0 MiB      1000         0   0",
    " 1  98765  starting  2h 5m         12   12.2%  117.7 MiB   1234567         3  17",
    "10      5  errored   45s           11    0.0%     1000 B         0         0   0",
    "11     77  draining  3d 4h          1  100.0%    3.0 GiB        42         1   2",
    "worker 1: circuit sqlite open",
    "crashes by route: GET /x (1), POST /api/posts (3)",
]

HEALTH = {"ok": True, "status": "healthy",
          "checks": {"database": "connected", "workers": {"total": 2, "ready": 2}, "circuits": {"sqlite": "closed"}}}


class FakeServer:
    """resild's half of the control protocol, answering with handler(request)."""

    def __init__(self, handler, path=None):
        self.dir = tempfile.mkdtemp(prefix="resilctl-test-")
        self.path = path or os.path.join(self.dir, "control.sock")
        self.handler = handler if callable(handler) else (lambda req: handler)
        self.requests = []
        self.stopping = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.sock.settimeout(0.05)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                self._serve(conn)

    def _serve(self, conn):
        conn.settimeout(10)
        data = b""
        try:
            while b"\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            return
        self.requests.append(data)
        try:
            req = json.loads(data.decode())
        except ValueError:
            req = None
        reply = self.handler(req)
        if reply is HANG:
            self.stopping.wait(30)
            return
        if reply is None:
            return
        if not isinstance(reply, bytes):
            reply = (json.dumps(reply) + "\n").encode()
        try:
            conn.sendall(reply)
        except OSError:
            pass

    def request(self):
        assert len(self.requests) == 1, "expected one request, got %r" % self.requests
        raw = self.requests[0]
        assert raw.endswith(b"\n") and raw.count(b"\n") == 1, "request is not one line: %r" % raw
        return json.loads(raw.decode())

    def close(self):
        self.stopping.set()
        self.thread.join(10)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("RESIL_CONTROL", "RUNTIME_DIRECTORY", "NO_COLOR")}
    env.update(extra or {})
    return env


def run(args, server=None, env=None, cwd=None, timeout=60, stdin=None):
    """Run resilctl (with -s pointing at server unless server is None);
    stdin: bytes for its standard input (default: /dev/null)."""
    argv = WRAPPER + [RESILCTL] + (["-s", server.path] if server else []) + list(args)
    return subprocess.run(argv, stdin=subprocess.DEVNULL if stdin is None else None, input=stdin,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(env),
                          cwd=cwd or tempfile.gettempdir(), timeout=timeout)


def with_server(handler, args, **kw):
    srv = FakeServer(handler)
    try:
        return run(args, srv, **kw), srv.requests and srv.request()
    finally:
        srv.close()


def out(p):
    return p.stdout.decode()


def err_lines(p):
    """stderr minus valgrind's own lines (==pid== ...), when wrapped."""
    return [l for l in p.stderr.decode().splitlines() if not re.match(r"==\d+==", l)]


def expect(p, code, what=""):
    assert p.returncode == code, "%s: exit %d, expected %d\nstdout: %r\nstderr: %r" % (
        what, p.returncode, code, p.stdout, p.stderr)


TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


@test
def test_status_prints_header_and_aligned_table():
    p, req = with_server(STATUS, ["status"])
    expect(p, 0)
    assert req == {"cmd": "status"}, req
    assert out(p).splitlines() == STATUS_TABLE, "\n" + out(p)
    assert "\x1b" not in out(p), "colour on a pipe"


@test
def test_status_table_columns_line_up():
    p, _ = with_server(STATUS, ["status"])
    rows = out(p).splitlines()[1:6]
    assert len({len(r) for r in rows}) == 1, "rows differ in length:\n" + "\n".join(rows)
    head = rows[0]
    # right-aligned numbers end under their title, text starts under it
    for m in re.finditer(r"\S+", head):
        for r in rows[1:]:
            if m.group() in ("state", "uptime"):
                assert r[m.start()] != " " and (m.start() == 0 or r[m.start() - 1] == " "), (m.group(), r)
            else:
                assert r[m.end() - 1] != " " and (m.end() == len(r) or r[m.end()] == " "), (m.group(), r)


@test
def test_status_json_prints_answer_without_ok_on_one_line():
    p, req = with_server(STATUS, ["status", "--json"])
    expect(p, 0)
    assert req == {"cmd": "status"}
    text = out(p)
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    doc = json.loads(text)
    want = dict(STATUS)
    del want["ok"]
    assert doc == want, doc
    assert list(doc) == ["supervisor", "workers", "crashes_by_route"]
    assert '"cpu_pct":0.5' in text and '"cpu_pct":12.25' in text, text


@test
def test_status_colours_state_only_on_a_tty():
    srv = FakeServer(STATUS)
    master, slave = pty.openpty()
    try:
        for extra, coloured in (({}, True), ({"NO_COLOR": "1"}, False)):
            argv = WRAPPER + [RESILCTL, "-s", srv.path, "status"]
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE,
                                    env=clean_env(extra))
            _, errs = proc.communicate(timeout=60)
            assert proc.returncode == 0, errs
            data = b""
            while not data.endswith(b"\n") or b"crashes" not in data:
                data += os.read(master, 65536)
            text = data.decode().replace("\r\n", "\n")
            assert ("\x1b[32mready\x1b[0m" in text) == coloured, repr(text)
            assert ("\x1b[1;31merrored\x1b[0m" in text) == coloured, repr(text)
            plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
            assert plain.splitlines() == STATUS_TABLE, plain
    finally:
        os.close(master)
        os.close(slave)
        srv.close()


@test
def test_status_failure_exits_1_with_the_reason():
    p, _ = with_server({"ok": False, "error": "busy"}, ["status"])
    expect(p, 1)
    assert err_lines(p) == ["resilctl: status failed: busy"], p.stderr
    assert out(p) == ""


@test
def test_control_characters_from_resild_never_reach_the_terminal():
    ans = json.loads(json.dumps(STATUS))
    ans["crashes_by_route"] = {"GET /\x1b]0;owned\x07x\u009b": 2}
    p, _ = with_server(ans, ["status"])
    expect(p, 0)
    assert out(p).splitlines()[-1] == "crashes by route: GET /?]0;owned?x?? (2)", out(p)
    p, _ = with_server(ans, ["status", "--json"])
    assert json.loads(out(p))["crashes_by_route"] == ans["crashes_by_route"], out(p)
    p, _ = with_server({"ok": False, "error": "bad\x1b[2Jthing"}, ["status", "--json"])
    expect(p, 1)
    assert err_lines(p) == ["resilctl: status failed: bad?[2Jthing"], p.stderr


@test
def test_health_exit_status_follows_the_verdict():
    for verdict, code in (("healthy", 0), ("degraded", 1), ("down", 2)):
        ans = json.loads(json.dumps(HEALTH))
        ans["status"] = verdict
        ans["checks"]["workers"]["ready"] = {"healthy": 2, "degraded": 1, "down": 0}[verdict]
        p, req = with_server(ans, ["health"])
        expect(p, code, verdict)
        assert req == {"cmd": "health"}
        ready = ans["checks"]["workers"]["ready"]
        assert out(p) == "%s: %d/2 workers ready, database connected, circuits: sqlite closed\n" % (
            verdict, ready), out(p)


@test
def test_health_json_round_trips_and_keeps_the_exit_status():
    ans = dict(HEALTH, status="down")
    p, _ = with_server(ans, ["--json", "health"])
    expect(p, 2)
    want = dict(ans)
    del want["ok"]
    assert json.loads(out(p)) == want and out(p).count("\n") == 1, out(p)


@test
def test_health_with_unknown_verdict_is_a_protocol_error():
    p, _ = with_server(dict(HEALTH, status="splendid"), ["health"])
    expect(p, 4)


@test
def test_restart_sends_all_by_default_and_reports_workers():
    p, req = with_server({"ok": True, "restarted": [0, 1]}, ["restart"], timeout=60)
    expect(p, 0)
    assert req == {"cmd": "restart", "target": "all"}, req
    assert out(p) == "restarted workers 0, 1\n", out(p)
    p, req = with_server({"ok": True, "restarted": [0, 1]}, ["restart", "all"])
    assert req == {"cmd": "restart", "target": "all"}, req


@test
def test_restart_id_sends_a_number():
    p, req = with_server({"ok": True, "restarted": [3]}, ["restart", "3"])
    expect(p, 0)
    assert req == {"cmd": "restart", "target": 3} and isinstance(req["target"], int), req
    assert out(p) == "restarted worker 3\n", out(p)


@test
def test_restart_of_unknown_worker_exits_1():
    p, _ = with_server({"ok": False, "error": "no such worker: 9"}, ["restart", "9"])
    expect(p, 1)
    assert err_lines(p) == ["resilctl: restart failed: no such worker: 9"], p.stderr


@test
def test_reload_reports_generation_or_the_config_error():
    p, req = with_server({"ok": True, "generation": 4}, ["reload"])
    expect(p, 0)
    assert req == {"cmd": "reload"}
    assert out(p) == "reloaded: generation 4\n"
    p, _ = with_server({"ok": False, "error": "config: body_limit: invalid size \"x\""}, ["reload"])
    expect(p, 1)
    assert err_lines(p) == ['resilctl: reload failed: config: body_limit: invalid size "x"'], p.stderr


@test
def test_reload_lists_the_keys_that_need_a_restart_and_still_exits_0():
    p, _ = with_server({"ok": True, "generation": 5, "restart_needed": ["listen", "control"]}, ["reload"])
    expect(p, 0)
    assert out(p) == "reloaded: generation 5\nrestart needed for: listen, control\n", out(p)
    p, _ = with_server({"ok": True, "generation": 6, "restart_needed": []}, ["reload"])
    expect(p, 0)
    assert out(p) == "reloaded: generation 6\n", out(p)


@test
def test_scale_sends_worker_count():
    p, req = with_server({"ok": True, "workers": 4}, ["scale", "4"])
    expect(p, 0)
    assert req == {"cmd": "scale", "workers": 4}, req
    assert out(p) == "scaled to 4 workers\n"
    p, _ = with_server({"ok": False, "error": "workers: must be 1-256"}, ["scale", "256"])
    expect(p, 1)


@test
def test_scale_rejects_bad_counts_without_asking_resild():
    for bad in ("0", "257", "abc", "2x", ""):
        p, req = with_server({"ok": True, "workers": 1}, ["scale", bad])
        expect(p, 64, bad)
        assert req == [] and out(p) == "", (bad, req)


def running(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@test
def test_stop_returns_only_after_the_supervisor_pid_is_gone():
    # An orphaned "sleep 1" stands in for resild: someone else reaps it,
    # as systemd or the shell reaps the real one.
    sh = subprocess.run(["sh", "-c", "sleep 1 >/dev/null 2>&1 </dev/null & echo $!"],
                        stdout=subprocess.PIPE, check=True)
    pid = int(sh.stdout)
    assert running(pid)
    p, req = with_server({"ok": True, "pid": pid}, ["stop"])
    expect(p, 0)
    assert req == {"cmd": "stop"}
    assert not running(pid), "resilctl returned while pid %d still runs" % pid
    assert out(p) == "resild (pid %d) stopped\n" % pid, out(p)


@test
def test_stop_treats_an_unreaped_zombie_as_gone():
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while running(child.pid) and time.monotonic() < deadline:  # until it is a zombie
            time.sleep(0.01)
        p, _ = with_server({"ok": True, "pid": child.pid}, ["--timeout", "20", "stop"])
        expect(p, 0)
    finally:
        child.wait()


@test
def test_stop_times_out_with_status_4_when_pid_stays():
    child = subprocess.Popen(["sleep", "60"])
    try:
        p, _ = with_server({"ok": True, "pid": child.pid}, ["--timeout", "0.3", "stop"])
        expect(p, 4)
        assert child.poll() is None
        assert any("still running" in l for l in err_lines(p)), p.stderr
    finally:
        child.kill()
        child.wait()


@test
def test_stop_without_pid_is_a_protocol_error():
    for ans in ({"ok": True}, {"ok": True, "pid": 0}, {"ok": True, "pid": -1}, {"ok": True, "pid": "12"}):
        p, _ = with_server(ans, ["stop"])
        expect(p, 4, repr(ans))


@test
def test_missing_socket_means_not_running():
    d = tempfile.mkdtemp(prefix="resilctl-test-")
    try:
        path = os.path.join(d, "nothing.sock")
        p = run(["-s", path, "status"])
        expect(p, 3)
        assert err_lines(p) == ["resilctl: resild is not running (no control socket at %s; from -s)" % path], p.stderr
        assert out(p) == ""
        p = run(["-s", os.path.join(d, "no", "such", "dir.sock"), "health"])
        expect(p, 3)
    finally:
        shutil.rmtree(d)


@test
def test_stale_socket_file_means_not_running():
    d = tempfile.mkdtemp(prefix="resilctl-test-")
    try:
        path = os.path.join(d, "stale.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.close()  # the file stays, nobody listens: ECONNREFUSED
        p = run(["-s", path, "stop"])
        expect(p, 3)
        lines = err_lines(p)
        assert len(lines) == 1 and "not running" in lines[0] and path in lines[0], p.stderr
    finally:
        shutil.rmtree(d)


@test
def test_bad_answers_are_protocol_errors():
    for ans in (b"this is not json\n", b"[1,2]\n", b'{"status":"healthy"}\n', b'{"ok":"yes"}\n',
                None, b"\n", {"ok": True}):
        p, _ = with_server(ans, ["status"])
        expect(p, 4, repr(ans))
        assert len(err_lines(p)) == 1, p.stderr


@test
def test_answer_without_newline_before_close_is_accepted():
    p, _ = with_server(b'{"ok":true,"generation":7}', ["reload"])
    expect(p, 0)
    assert out(p) == "reloaded: generation 7\n"


@test
def test_silent_server_times_out_with_status_4():
    p, _ = with_server(lambda req: HANG, ["--timeout", "0.3", "status"])
    expect(p, 4)
    assert any("no answer" in l for l in err_lines(p)), p.stderr


@test
def test_socket_comes_from_option_env_or_runtime_directory():
    srv = FakeServer({"ok": True, "generation": 1})
    try:
        expect(run(["--socket=" + srv.path, "reload"]), 0, "--socket=")
        expect(run(["-s" + srv.path, "reload"]), 0, "-sPATH")
        expect(run(["reload"], env={"RESIL_CONTROL": srv.path}), 0, "RESIL_CONTROL")
        expect(run(["reload"], env={"RUNTIME_DIRECTORY": srv.dir + ":/elsewhere"}), 0, "RUNTIME_DIRECTORY")
        # -s beats the environment, the environment beats RUNTIME_DIRECTORY
        expect(run(["-s", srv.path, "reload"], env={"RESIL_CONTROL": "/nonexistent/x.sock"}), 0, "-s wins")
        p = run(["reload"], env={"RESIL_CONTROL": "/nonexistent/x.sock", "RUNTIME_DIRECTORY": srv.dir})
        expect(p, 3, "env wins")
        assert err_lines(p) == ["resilctl: resild is not running (no control socket at /nonexistent/x.sock; "
                                "from $RESIL_CONTROL)"], p.stderr
        assert len(srv.requests) == 5
    finally:
        srv.close()


@test
def test_default_socket_is_resild_sock_in_the_current_directory():
    d = tempfile.mkdtemp(prefix="resilctl-test-")
    srv = FakeServer({"ok": True, "generation": 2}, path=os.path.join(d, "resild.sock"))
    try:
        p = run(["reload"], cwd=d)
        expect(p, 0)
        p = run(["reload"])  # elsewhere: nothing there
        expect(p, 3)
        assert "./resild.sock" in err_lines(p)[0], p.stderr
        if not os.path.exists("/run/resil/control.sock"):  # the packaged unit's socket comes first
            assert err_lines(p)[0].endswith("no -s, no $RESIL_CONTROL, no /run/resil/control.sock)"), p.stderr
    finally:
        srv.close()
        shutil.rmtree(d)


DESCRIBE = {
    "ok": True,
    "worker": {"id": 1, "pid": 98765, "state": "ready", "uptime_s": 7500, "restarts": 2, "cpu_pct": 12.25,
               "rss_bytes": 123456789, "requests": 1234567, "inflight": 3, "websockets": 17, "generation": 4,
               "circuits": {"sqlite": "closed", "external-api": "open"}, "connections": 20,
               "restarts_by_cause": {"crash": 1, "hung": 1, "memory": 0, "restart": 2, "reload": 1},
               "last_crash": {"time": "2026-12-07T19:06:19.976Z", "ago_s": 95, "cause": "hung", "pid": 4321,
                              "generation": 2, "signal": 9, "status": "signal 9 (Killed)", "uptime_s": 3700,
                              "route": "GET /api/posts/:id"},
               "errored": False, "restart_pending": False},
}

DESCRIBE_TEXT = [
    "id                 1",
    "pid                98765",
    "state              ready",
    "generation         4",
    "uptime             2h 5m",
    "restarts           2",
    "restarts by cause  crash 1, hung 1, memory 0, restart 2, reload 1",
    "last crash         2026-12-07T19:06:19.976Z (1m 35s ago): signal 9 (Killed) (hung), pid 4321, generation 2, "
    "after 1h 1m up, route GET /api/posts/:id",
    "cpu                12.2%",
    "memory             117.7 MiB",
    "requests           1234567",
    "inflight           3",
    "connections        20",
    "websockets         17",
    "circuits           sqlite closed, external-api open",
]


@test
def test_describe_sends_the_id_and_prints_aligned_key_values():
    p, req = with_server(DESCRIBE, ["describe", "1"])
    expect(p, 0)
    assert req == {"cmd": "describe", "id": 1} and isinstance(req["id"], int), req
    assert out(p).splitlines() == DESCRIBE_TEXT, out(p)
    p, _ = with_server(DESCRIBE, ["describe", "1", "--json"])
    expect(p, 0)
    doc = json.loads(out(p))
    assert doc == {"worker": DESCRIBE["worker"]}, doc
    never = dict(DESCRIBE, worker=dict(DESCRIBE["worker"], last_crash=None, pid=0, circuits={}))
    p, _ = with_server(never, ["describe", "1"])
    expect(p, 0)
    lines = out(p).splitlines()
    assert "last crash         none" in lines and "pid                -" in lines, lines
    assert "circuits           none" in lines, lines
    p, _ = with_server({"ok": False, "error": "no such worker: 9"}, ["describe", "9"])
    expect(p, 1)
    assert err_lines(p) == ["resilctl: describe failed: no such worker: 9"], p.stderr
    p, _ = with_server({"ok": True}, ["describe", "1"])
    expect(p, 4)


USER = ["user", "create", "--email", "Ops@Example.com", "--username", "ops_admin", "--role", "admin"]


@test
def test_user_create_sends_the_password_read_from_stdin_and_prints_the_id():
    for stdin, pw in ((b"s3cret-pass word\n", "s3cret-pass word"), (b"crlf-pass-1\r\n", "crlf-pass-1"),
                      (b"no-newline-1", "no-newline-1"), (b"first-line-1\nsecond\n", "first-line-1")):
        srv = FakeServer({"ok": True, "id": "6b172dbe05c2b8f870010c10"})
        try:
            p = run(USER, srv, stdin=stdin)
            expect(p, 0, repr(stdin))
            assert out(p) == "6b172dbe05c2b8f870010c10\n" and p.stderr == b"", (p.stdout, p.stderr)
            assert srv.request() == {"cmd": "user_create", "email": "Ops@Example.com", "username": "ops_admin",
                                     "role": "admin", "password": pw}, srv.request()
        finally:
            srv.close()
    p, _ = with_server({"ok": False, "error": "a user with this email already exists"}, USER,
                       stdin=b"long-enough-1\n")
    expect(p, 1)
    assert err_lines(p) == ["resilctl: user create failed: a user with this email already exists"], p.stderr
    p, _ = with_server({"ok": True}, USER, stdin=b"long-enough-1\n")
    expect(p, 4)


@test
def test_user_create_refuses_a_missing_or_overlong_password_without_asking_resild():
    for stdin, word in ((b"", "no password"), (b"\n", "no password"), (b"x" * 513 + b"\n", "too long")):
        srv = FakeServer({"ok": True, "id": "6b172dbe05c2b8f870010c10"})
        try:
            p = run(USER, srv, stdin=stdin)
            expect(p, 1, repr(stdin[:10]))
            assert len(err_lines(p)) == 1 and word in err_lines(p)[0], p.stderr
            assert srv.requests == [], "asked resild anyway"
        finally:
            srv.close()


def prompted(answers):
    """resilctl user create on a terminal: answer each prompt in turn.
    Returns (exit status, stdout, what the terminal showed, requests)."""
    srv = FakeServer({"ok": True, "id": "6b172dbe05c2b8f870010c10"})
    master, slave = pty.openpty()
    try:
        argv = WRAPPER + [RESILCTL, "-s", srv.path] + USER
        proc = subprocess.Popen(argv, stdin=slave, stdout=subprocess.PIPE, stderr=slave, env=clean_env())
        seen = b""
        for answer in answers:
            deadline = time.time() + 30
            while not seen.rstrip().endswith(b":") and time.time() < deadline:
                seen += os.read(master, 4096)
            os.write(master, answer)
            seen += b"|"
        outs, _ = proc.communicate(timeout=60)
        while select.select([master], [], [], 0.5)[0]:  # what it wrote after the last answer
            try:
                data = os.read(master, 4096)
            except OSError:
                break
            if not data:
                break
            seen += data
        return proc.returncode, outs, seen, list(srv.requests)
    finally:
        os.close(master)
        os.close(slave)
        srv.close()


@test
def test_user_create_prompts_twice_without_echo_on_a_terminal():
    rc, outs, seen, reqs = prompted([b"typed-secret-1\n", b"typed-secret-1\n"])
    assert rc == 0, (rc, seen)
    assert outs == b"6b172dbe05c2b8f870010c10\n", outs
    assert b"Password for the new user:" in seen and b"Repeat it:" in seen, seen
    assert b"typed-secret-1" not in seen, "the password was echoed: %r" % seen
    assert len(reqs) == 1 and json.loads(reqs[0])["password"] == "typed-secret-1", reqs
    rc, outs, seen, reqs = prompted([b"typed-secret-1\n", b"typed-secret-2\n"])
    assert rc == 1 and outs == b"" and b"do not match" in seen and reqs == [], (rc, outs, seen, reqs)


@test
def test_usage_errors_exit_64():
    cases = [[], ["frobnicate"], ["status", "extra"], ["reload", "--json"], ["--bogus", "status"],
             ["restart", "x"], ["restart", "-1"], ["restart", "1", "2"], ["scale"], ["-s"],
             ["--timeout", "0", "status"], ["--timeout", "soon", "status"], ["-s", "x" * 200, "status"],
             ["describe"], ["describe", "x"], ["describe", "1", "2"], ["health", "1"], ["user"], ["user", "delete"],
             ["user", "create"], ["user", "create", "--email", "a@example.com", "--username", "abc"],
             USER + ["--password", "long-enough-1"], USER + ["extra"], ["status", "--role", "admin"],
             ["user", "create", "--email"]]
    for args in cases:
        p = run(args)
        expect(p, 64, repr(args))
        assert p.stderr and out(p) == "", args


@test
def test_help_and_version_exit_0():
    p = run(["--help"])
    expect(p, 0)
    for word in ("status", "restart", "reload", "stop", "scale", "health", "--timeout"):
        assert word in out(p), word
    p = run(["-V"])
    expect(p, 0)
    assert re.fullmatch(r"resilctl \d+\.\d+\S*\n", out(p)), out(p)


def main():
    if not os.access(RESILCTL, os.X_OK):
        print("resilctl binary not found at %s (set RESILCTL)" % RESILCTL)
        print("0 passed, 1 failed")
        return 1
    passed = failed = 0
    for fn in TESTS:
        try:
            fn()
        except Exception:
            failed += 1
            print("FAIL %s\n%s" % (fn.__name__, traceback.format_exc()), flush=True)
        else:
            passed += 1
            print("ok   %s" % fn.__name__, flush=True)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
