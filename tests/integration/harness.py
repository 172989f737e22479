"""Shared helpers for resil's black-box integration tests.

Each test starts its own resild on a free loopback port in its own temp
directory, talks real HTTP to it (raw sockets or http.client), and stops
exactly the processes it started. No third-party Python modules.

Every line resild writes is checked when its Server is cleaned up: it must
be one JSON object with no key repeated at any depth (SPEC section 10), so
every integration test also tests the log format. Lines from valgrind or a
sanitizer ("==PID==...", "--PID--...") are left to assert_clean_exit.
"""
import http.client
import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

RESILD = os.environ.get("RESILD") or os.path.join(os.path.dirname(__file__), "..", "..", "resild")
TOP = os.environ.get("RESIL_TOP_SRCDIR") or os.path.join(os.path.dirname(__file__), "..", "..")


class DuplicateKeyError(ValueError):
    pass


def _unique_object(pairs):
    """object_pairs_hook for json.loads: a repeated key is an error."""
    seen = set()
    for k, _ in pairs:
        if k in seen:
            raise DuplicateKeyError("duplicate key %r" % k)
        seen.add(k)
    return dict(pairs)


def parse_log_line(line):
    """One log line as a dict; ValueError (DuplicateKeyError for a repeated
    key, at any depth) when it is not exactly one JSON object."""
    doc = json.loads(line, object_pairs_hook=_unique_object)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


_TOOL_LINE = re.compile(r"^(==\d+==|--\d+--)")  # valgrind (errors, warnings), AddressSanitizer, LeakSanitizer


def log_problems(text):
    """The lines of resild output text that are not one JSON object with
    unique keys, as (line number, reason, line) tuples. Empty lines and
    valgrind/sanitizer lines are skipped."""
    bad = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or _TOOL_LINE.match(line):
            continue
        try:
            parse_log_line(line)
        except ValueError as e:
            bad.append((n, str(e), line))
    return bad


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def import_system_module(name):
    """Import a module Debian installs for the system interpreter only
    (python3-websockets, python3-yaml): when `python3` is another one (pyenv,
    a venv) without it, run this test file again with /usr/bin/python3, once.
    Returns the module, or None when it is missing there too."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("RESIL_SYSPY_REEXEC") != "1" and os.path.exists("/usr/bin/python3") and \
                os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3"):
            os.environ["RESIL_SYSPY_REEXEC"] = "1"
            os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
        return None


def require_websockets():
    """Import websockets (see import_system_module); FAIL if it is missing."""
    if import_system_module("websockets") is None:
        print("FAIL: the python3 websockets module is missing (Debian: apt-get install -y python3-websockets, "
              "which scripts/install-deps.sh --test does)", flush=True)
        print("0 passed, 1 failed")
        sys.exit(1)


class Server:
    """A resild process with its own directory, port and log capture."""

    def __init__(self, workers=1, env=None, args=None, db=None, binary=None):
        self.dir = tempfile.mkdtemp(prefix="resil-it-")
        self.binary = binary or RESILD
        self.port = free_port()
        self.log_path = os.path.join(self.dir, "stderr.log")
        e = {k: v for k, v in os.environ.items() if not k.startswith("RESIL_") or k.startswith("RESIL_TEST_")}
        e.update({
            "RESIL_LISTEN": "127.0.0.1:%d" % self.port,
            "RESIL_WORKERS": str(workers),
            "RESIL_DB": db or "sqlite:%s/resil.db" % self.dir,
            "RESIL_CONTROL": os.path.join(self.dir, "control.sock"),
            "RESIL_LOG_FORMAT": "json",
            "RESIL_LOG_LEVEL": "debug",
            "RESIL_ENV": "development",
            # libmongoc counters in memory, not /dev/shm (see supervisor/resild.c)
            "MONGOC_DISABLE_SHM": "1",
        })
        if os.environ.get("RESIL_VALGRIND"):
            # Under valgrind every worker is a new valgrind process (workers
            # exec the binary): its start takes seconds, not milliseconds.
            e["RESIL_LISTEN_TIMEOUT"] = "90s"
            # argon2id is ~50x slower there: a registration on a loaded
            # machine can pass the 30 s request deadline.
            e["RESIL_REQUEST_TIMEOUT"] = "120s"
        if env:
            e.update(env)
        self.env = e
        self.args = args or []
        self.proc = None

    def start(self, wait=True):
        self.log = open(self.log_path, "ab")
        wrap = []
        if os.environ.get("RESIL_VALGRIND"):
            wrap = ["valgrind", "-q", "--error-exitcode=99", "--leak-check=full",
                    "--errors-for-leak-kinds=definite", "--trace-children=yes", "--child-silent-after-fork=yes",
                    "--vgdb=no"]
        self.proc = subprocess.Popen(wrap + [self.binary, "--foreground"] + self.args, env=self.env, cwd=self.dir,
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=30.0):
        if os.environ.get("RESIL_VALGRIND"):
            timeout = max(timeout, 120.0)  # the supervisor and each exec'd worker start under valgrind
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("resild exited with %s:\n%s" % (self.proc.returncode, self.logs()))
            try:
                st, _, _ = self.request("GET", "/health/live")
                if st == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("resild did not become ready:\n" + self.logs())

    def logs(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_lines(self):
        out = []
        for line in self.logs().splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(parse_log_line(line))
                except ValueError as e:
                    raise AssertionError("log line is not one JSON object with unique keys (%s): %r" % (e, line))
        return out

    def log_files(self):
        """Every file resild wrote log lines to: its stderr/stdout capture
        and, when RESIL_LOG_FILE is set, that file."""
        files = [self.log_path]
        extra = self.env.get("RESIL_LOG_FILE")
        if extra:
            files.append(extra if os.path.isabs(extra) else os.path.join(self.dir, extra))
        return files

    def check_log_lines(self):
        """AssertionError naming each line resild wrote that is not one JSON
        object with unique keys (checked at cleanup by every test)."""
        report = []
        for path in self.log_files():
            try:
                with open(path, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except FileNotFoundError:
                continue
            for n, why, line in log_problems(text):
                report.append("%s:%d: %s: %r" % (os.path.basename(path), n, why, line[:300]))
        if report:
            raise AssertionError("resild wrote %d bad log line(s):\n%s" % (len(report), "\n".join(report[:20])))

    def request(self, method, path, body=None, headers=None, timeout=10):
        if os.environ.get("RESIL_VALGRIND"):
            timeout = max(timeout, 90)  # argon2id and friends are ~50x slower under valgrind
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            h = dict(headers or {})
            if body is not None and not isinstance(body, (bytes, str)):
                body = json.dumps(body)
                h.setdefault("Content-Type", "application/json")
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def json(self, method, path, body=None, headers=None):
        st, h, data = self.request(method, path, body, headers)
        try:
            doc = json.loads(data) if data else None
        except ValueError:
            raise AssertionError("response is not JSON: %r" % data[:200])
        return st, h, doc

    def raw(self, payload, timeout=5.0, read_until_close=True):
        """Send raw bytes, return everything read until close or timeout."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        try:
            s.sendall(payload)
            chunks = []
            if read_until_close:
                while True:
                    try:
                        b = s.recv(65536)
                    except socket.timeout:
                        break
                    if not b:
                        break
                    chunks.append(b)
            return b"".join(chunks)
        finally:
            s.close()

    def send_signal(self, sig):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if not self.proc:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def assert_clean_exit(self):
        """Stop with SIGTERM; exit status 0 and no sanitizer report."""
        rc = self.stop()
        logs = self.logs()
        for marker in ("== ERROR SUMMARY", "definitely lost", "Invalid read", "Invalid write", "AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer"):
            assert marker not in logs, "sanitizer report in resild output:\n" + logs[-4000:]
        assert rc == 0, "resild exited with %s" % rc

    def cleanup(self):
        try:
            self.stop()
            self.check_log_lines()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def parse_responses(data):
    """Split a byte stream into (status, headers, body) tuples."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for l in lines[1:]:
            k, _, v = l.partition(b":")
            hdrs.setdefault(k.strip().lower().decode(), v.strip().decode())
        n = int(hdrs.get("content-length", "0"))
        out.append((status, hdrs, rest[:n]))
        data = rest[n:]
    return out


def run_tests(tests):
    """Run test functions; print a summary line the CI understands."""
    passed = failed = 0
    only = os.environ.get("TEST_ONLY")
    for t in tests:
        if only and only not in t.__name__:
            continue
        t0 = time.time()
        try:
            t()
            passed += 1
            print("PASS %s (%.2fs)" % (t.__name__, time.time() - t0), flush=True)
        except Exception:
            failed += 1
            print("FAIL %s" % t.__name__, flush=True)
            traceback.print_exc()
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)
