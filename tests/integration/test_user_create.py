#!/usr/bin/env python3
"""`resilctl user create` against a real resild in production (SPEC
sections 4 and 6, issue 13): the operator's way to the first admin, since no
registration ever yields one there. Run once on the embedded SQLite store
and once on the MongoDB wire-protocol test double.

Covered: the password comes from standard input only (there is no flag for
it), exit 0 with the new id alone on stdout, the admin logs in and lists
users, a user.create record in the audit trail, duplicate e-mail (any case)
or username -> exit 1 with one line, bad role / e-mail / password -> exit 1
naming the field, missing flags -> 64, the password and the e-mail never in
resild's log, and no helper process left behind (each is reaped)."""
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_supervisor import ctl  # noqa: E402
from harness import Server, run_tests  # noqa: E402
from test_api_rooms import MongoDouble  # noqa: E402 (with cmd(): fault injection)

RESILCTL = os.environ.get("RESILCTL") or os.path.join(HERE, "..", "..", "resilctl")
SECRET = "resil-it-user-create-secret-0123456789abcdef"
PASSWORD = "Operator-Secret-9f3k2"
HEX24 = re.compile(r"^[0-9a-f]{24}\n$")
TIMEOUT = 300 if os.environ.get("RESIL_VALGRIND") else 90

DOUBLE = None
DB_SEQ = [0]


def started(backend):
    global DOUBLE
    db = None
    if backend == "mongodb":
        if DOUBLE is None:
            DOUBLE = MongoDouble()
        DB_SEQ[0] += 1  # a fresh, empty database per test
        db = DOUBLE.uri("resil_it_user_create_%d_%d" % (os.getpid(), DB_SEQ[0]))
    srv = Server(workers=2, db=db, env={"RESIL_ENV": "production", "RESIL_JWT_SECRET": SECRET,
                                         "RESIL_RATE_LIMIT": "100000/15m"})
    srv.env["RESIL_LOG_LEVEL"] = "debug"  # everything resild says is checked for the secret
    srv.start()
    return srv


def user_create(srv, *args, stdin=b""):
    argv = [RESILCTL, "-s", srv.env["RESIL_CONTROL"], "--timeout", str(TIMEOUT), "user", "create"] + list(args)
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=TIMEOUT + 30)


def one_line(p):
    lines = p.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resilctl: "), p.stderr
    return lines[0]


def worker_pids(srv):
    return {w["pid"] for w in ctl(srv, {"cmd": "status"}, timeout=30)["workers"]}


def helpers_of(srv):
    """Children of resild that are not its workers (user create helpers,
    or zombies nobody reaped). Titles are not used: under valgrind
    /proc/PID/cmdline is valgrind's."""
    workers = worker_pids(srv)
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == srv.proc.pid and (fields[0] == "Z" or int(d) not in workers):
            out.append((int(d), fields[0]))
    return out


def check_create_login_and_audit(backend):
    srv = started(backend)
    try:
        p = user_create(srv, "--email", "Root.Admin@Example.com", "--username", "root_admin", "--role", "admin",
                        stdin=(PASSWORD + "\n").encode())
        assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
        assert HEX24.match(p.stdout.decode()), p.stdout
        uid = p.stdout.decode().strip()
        st, _, doc = srv.json("POST", "/api/auth/login", {"email": "root.admin@example.com", "password": PASSWORD})
        assert st == 200, doc
        user = doc["data"]["user"]
        assert user["id"] == uid and user["role"] == "admin" and user["isActive"] is True, user
        assert user["email"] == "root.admin@example.com" and user["username"] == "root_admin", user
        # An admin can do admin things.
        auth = {"Authorization": "Bearer " + doc["data"]["token"]}
        st, _, doc = srv.json("GET", "/api/users", None, auth)
        assert st == 200 and [u["id"] for u in doc["data"]] == [uid], doc
        # The other roles work too; a clinician reads patients, a user cannot.
        p = user_create(srv, "--email", "doc@example.com", "--username", "dr_who", "--role", "clinician",
                        stdin=b"clinician-pass-1\r\n")
        assert p.returncode == 0 and HEX24.match(p.stdout.decode()), (p.stdout, p.stderr)
        st, _, doc = srv.json("POST", "/api/auth/login", {"email": "doc@example.com", "password": "clinician-pass-1"})
        assert st == 200 and doc["data"]["user"]["role"] == "clinician", doc
        # The audit trail names the operator's creation, without the e-mail.
        audit = os.path.join(srv.dir, "audit.log")
        recs = [json.loads(l) for l in open(audit)] if os.path.exists(audit) else []
        created = [r for r in recs if r.get("action") == "user.create"]
        assert len(created) == 2, recs
        assert created[0]["targetUserId"] == uid and created[0]["targetRole"] == "admin", created[0]
        assert created[0]["actorRole"] == "operator" and created[0]["actorId"] is None, created[0]
        assert created[0]["outcome"] == "success", created[0]
        assert "example.com" not in open(audit).read()
        logs = srv.logs()
        assert PASSWORD not in logs and "clinician-pass-1" not in logs
        assert "Root.Admin" not in logs and "root.admin@" not in logs and "doc@example.com" not in logs
        created = [l for l in srv.log_lines() if l["message"] == "user created by the operator"]
        assert [(l["userId"], l["role"]) for l in created][0] == (uid, "admin"), created
        assert helpers_of(srv) == [], helpers_of(srv)
    finally:
        srv.assert_clean_exit()
        srv.cleanup()


def check_duplicates_and_bad_input(backend):
    srv = started(backend)
    try:
        p = user_create(srv, "--email", "ops@example.com", "--username", "ops_admin", "--role", "admin",
                        stdin=(PASSWORD + "\n").encode())
        assert p.returncode == 0, p.stderr
        # The same e-mail (in any case) or username: exit 1, one clear line.
        p = user_create(srv, "--email", "OPS@example.com", "--username", "someone_else", "--role", "admin",
                        stdin=b"another-pass-1\n")
        assert p.returncode == 1 and p.stdout == b"", (p.returncode, p.stdout, p.stderr)
        assert one_line(p) == "resilctl: user create failed: a user with this email already exists", p.stderr
        p = user_create(srv, "--email", "new@example.com", "--username", "ops_admin", "--role", "user",
                        stdin=b"another-pass-1\n")
        assert p.returncode == 1, p.stderr
        assert one_line(p) == "resilctl: user create failed: a user with this username already exists", p.stderr
        # Registration sees the operator's user as taken as well.
        st, _, doc = srv.json("POST", "/api/auth/register",
                              {"username": "fresh_one", "email": "ops@example.com", "password": "long-secret-1"})
        assert st == 400 and doc["code"] == "DUPLICATE_KEY", doc
        # Validation: exit 1 and the field named, nothing created.
        for args, stdin, word in [
                (["--email", "a@example.com", "--username", "boss_1", "--role", "root"], b"long-enough-1\n", "role"),
                (["--email", "not-an-email", "--username", "boss_2", "--role", "user"], b"long-enough-1\n", "email"),
                (["--email", "b@example.com", "--username", "x", "--role", "user"], b"long-enough-1\n", "username"),
                (["--email", "c@example.com", "--username", "boss_3", "--role", "user"], b"short\n", "password"),
                (["--email", "d@example.com", "--username", "boss_4", "--role", "user"], b"\n", "password"),
                (["--email", "e@example.com", "--username", "boss_5", "--role", "user"], b"", "password"),
                (["--email", "f@example.com", "--username", "boss_6", "--role", "user"], b"p" * 600 + b"\n",
                 "password")]:
            p = user_create(srv, *args, stdin=stdin)
            assert p.returncode == 1 and p.stdout == b"", (args, p.returncode, p.stdout, p.stderr)
            assert word in one_line(p), (args, p.stderr)
        # Missing flags, a password flag, a stray argument: usage, 64.
        for args in (["--email", "g@example.com", "--username", "boss_7"],
                     ["--email", "g@example.com", "--username", "boss_7", "--role", "user", "--password", "x1234567"],
                     ["--email", "g@example.com", "--username", "boss_7", "--role", "user", "extra"],
                     ["--role"]):
            p = user_create(srv, *args, stdin=b"long-enough-1\n")
            assert p.returncode == 64 and p.stdout == b"", (args, p.returncode, p.stderr)
        st, _, doc = srv.json("POST", "/api/auth/login", {"email": "ops@example.com", "password": PASSWORD})
        auth = {"Authorization": "Bearer " + doc["data"]["token"]}
        st, _, doc = srv.json("GET", "/api/users", None, auth)
        assert st == 200 and [u["username"] for u in doc["data"]] == ["ops_admin"], doc
        logs = srv.logs()
        assert PASSWORD not in logs and "another-pass-1" not in logs and "long-enough-1" not in logs
        assert "ops@example.com" not in logs.lower()
        assert helpers_of(srv) == [], helpers_of(srv)
    finally:
        srv.assert_clean_exit()
        srv.cleanup()


def check_database_down_fails_with_a_line_and_recovers(backend):
    """The helper meets a database that is down: exit 1 with one line, in
    bounded time, the supervisor's loop answering meanwhile; once the
    database is back the same command succeeds."""
    if backend != "mongodb":
        return
    srv = started(backend)
    try:
        DOUBLE.cmd("stop")
        p = user_create(srv, "--email", "late@example.com", "--username", "late_admin", "--role", "admin",
                        stdin=b"long-enough-1\n")
        assert p.returncode == 1 and p.stdout == b"", (p.returncode, p.stdout, p.stderr)
        assert "the database is unavailable" in one_line(p), p.stderr
        DOUBLE.cmd("start")
        p = user_create(srv, "--email", "late@example.com", "--username", "late_admin", "--role", "admin",
                        stdin=b"long-enough-1\n")
        assert p.returncode == 0 and HEX24.match(p.stdout.decode()), (p.returncode, p.stdout, p.stderr)
        assert helpers_of(srv) == [], helpers_of(srv)
        assert "long-enough-1" not in srv.logs() and "late@example.com" not in srv.logs()
    finally:
        srv.assert_clean_exit()
        srv.cleanup()


def check_not_running_is_exit_3(backend):
    if backend != "sqlite":
        return
    argv = [RESILCTL, "-s", "/nonexistent/resil/control.sock", "user", "create", "--email", "a@example.com",
            "--username", "abc", "--role", "admin"]
    p = subprocess.run(argv, input=b"long-enough-1\n", capture_output=True, timeout=30)
    assert p.returncode == 3, (p.returncode, p.stderr)
    assert b"long-enough-1" not in p.stderr + p.stdout


TESTS = [check_create_login_and_audit, check_duplicates_and_bad_input,
         check_database_down_fails_with_a_line_and_recovers, check_not_running_is_exit_3]


def bind(test, backend):
    def run():
        test(backend)
    run.__name__ = "test_user_%s[%s]" % (test.__name__[len("check_"):], backend)
    return run


if __name__ == "__main__":
    try:
        run_tests([bind(t, b) for b in ("sqlite", "mongodb") for t in TESTS])
    finally:
        if DOUBLE is not None:
            DOUBLE.close()
