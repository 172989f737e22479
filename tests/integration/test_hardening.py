"""resild under the sandbox of its systemd unit (etc/resild.service.in).

systemd itself is not running where the tests run, so each restriction is
checked the way it can be outside it:

* the generated unit rates at most 2.0 on `systemd-analyze security
  --offline=true`, and says what the package relies on (empty capability
  bounding set, ProtectSystem=strict, the syscall filter, /run/resil);
* resild runs and serves under what setpriv and prlimit apply: no new
  privileges, no inheritable or ambient capabilities, an empty bounding
  set and an unprivileged account when run as root, LimitNOFILE (up to
  the machine's hard limit), no core files, UMask=0077: two workers serve
  /health, a registration and a post (the job threads and the database),
  a SIGHUP reload starts new workers, and SIGTERM ends it with status 0;
  the workers' /proc status shows the restrictions inherited;
* every system call resild makes in that run (traced with strace) is one
  the unit's SystemCallFilter allows, so the seccomp filter cannot break it,
  and the files it opens are ones the sandbox leaves (no /proc beyond
  processes' own entries, only the basic devices, writes only in its
  working directory or /tmp).
"""
import json
import os
import pwd
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import RESILD, Server, run_tests  # noqa: E402

BUILDDIR = os.path.dirname(os.path.abspath(RESILD))
UNIT = os.path.join(BUILDDIR, "etc", "resild.service")
RESILCTL = os.environ.get("RESILCTL") or os.path.join(BUILDDIR, "resilctl")
MAX_EXPOSURE = 2.0


def unit_text():
    assert os.path.exists(UNIT), "%s not built (make etc/resild.service)" % UNIT
    with open(UNIT) as f:
        return f.read()


def unit_settings():
    """{key: [values...]} of the [Service] section."""
    out, section = {}, None
    for line in unit_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]" and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_unit_exposure_is_at_most_2():
    s = unit_settings()
    for key, want in [("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("CapabilityBoundingSet", ""),
                      ("RuntimeDirectory", "resil"), ("StateDirectory", "resil"), ("LogsDirectory", "resil"),
                      ("UMask", "0077"), ("User", "resil"), ("MemoryDenyWriteExecute", "yes"),
                      ("ProtectProc", "invisible"), ("ProcSubset", "pid")]:
        assert s.get(key, [None])[-1] == want, "unit: %s=%s, want %r" % (key, s.get(key), want)
    assert "AF_INET" in s["RestrictAddressFamilies"][-1] and "AF_UNIX" in s["RestrictAddressFamilies"][-1]
    assert any("%t/resil/control.sock" in e for e in s.get("Environment", [])), "control socket not in /run/resil"
    if not shutil.which("systemd-analyze"):
        print("  systemd-analyze not installed: exposure score not measured")
        return
    p = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", UNIT],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", p.stdout)
    assert m, "no score in systemd-analyze output:\n%s%s" % (p.stdout[-2000:], p.stderr[-2000:])
    score = float(m.group(1))
    assert score <= MAX_EXPOSURE, "exposure %.1f > %.1f:\n%s" % (score, MAX_EXPOSURE, p.stdout)
    print("  systemd-analyze security --offline=true: %.1f" % score)


class Sandboxed(Server):
    """A resild started through setpriv and prlimit (and strace, if asked)."""

    def __init__(self, trace=None, **kw):
        super().__init__(**kw)
        self.trace = trace
        self.supervisor = None
        self.account = None
        self.binary = RESILD
        if os.geteuid() == 0:
            self.account = pwd.getpwnam("nobody")
            os.chown(self.dir, self.account.pw_uid, self.account.pw_gid)
            # The build tree may sit where nobody cannot reach it (/root).
            self.binary = os.path.join(self.dir, "resild")
            shutil.copy2(RESILD, self.binary)
            os.chmod(self.binary, 0o755)

    def command(self):
        # LimitNOFILE=65536, or as close as this machine's hard limit allows.
        nofile = min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        cmd = ["prlimit", "--nofile=%d" % nofile, "--core=0", "--", "setpriv", "--no-new-privs", "--inh-caps=-all"]
        if self.account:
            cmd += ["--reuid=%d" % self.account.pw_uid, "--regid=%d" % self.account.pw_gid, "--clear-groups",
                    "--bounding-set=-all"]
        cmd.append("--")
        if self.trace:
            # -C: every call (for the paths) and the summary (for the names).
            cmd += ["strace", "-f", "-qq", "-C", "-s", "256", "-e", "signal=none", "-o", self.trace, "--"]
        elif os.environ.get("RESIL_VALGRIND"):
            cmd += ["valgrind", "-q", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite",
                    "--trace-children=yes", "--child-silent-after-fork=yes",
                    "--vgdb=no"]
        return cmd + [self.binary, "--foreground"] + self.args

    def start(self, wait=True):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), env=self.env, cwd=self.dir, umask=0o077,
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready(timeout=90 if self.trace or os.environ.get("RESIL_VALGRIND") else 30)
        return self


    def stop(self, sig=signal.SIGTERM, timeout=30):
        # strace passes no signal on: stop the supervisor it traces.
        if self.trace and self.supervisor and self.proc and self.proc.poll() is None:
            os.kill(self.supervisor, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return super().stop(sig, timeout)


def status(srv):
    p = subprocess.run([RESILCTL, "-s", srv.env["RESIL_CONTROL"], "status", "--json"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, "resilctl status: %d %s" % (p.returncode, p.stderr)
    return json.loads(p.stdout)


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


def exercise(s, check_procs=True):
    """What the service does in production: health, a write through the
    job threads, a reload; then a graceful stop."""
    # Healthy once every worker reported ready (one ready is "degraded").
    wait_for(lambda: s.json("GET", "/health")[2].get("status") == "healthy", 15, "every worker ready")
    st, _, doc = s.json("GET", "/health")
    assert st == 200 and doc["status"] == "healthy", (st, doc)
    st, _, reg = s.json("POST", "/api/auth/register",
                        {"username": "sandboxed", "email": "sandboxed@example.com", "password": "correct-horse-1"})
    assert st == 201, (st, reg)
    # resilctl user create forks a helper that opens the store: traced too.
    p = subprocess.run([RESILCTL, "-s", s.env["RESIL_CONTROL"], "user", "create", "--email", "ops@example.com",
                        "--username", "sandbox_ops", "--role", "admin"], input="correct-horse-2\n",
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and len(p.stdout.strip()) == 24, ("resilctl user create", p.returncode, p.stderr)
    auth = {"Authorization": "Bearer " + reg["data"]["token"]}
    st, _, post = s.json("POST", "/api/posts", {"title": "in a sandbox", "content": "still writes"}, headers=auth)
    assert st == 201, (st, post)
    ready = lambda: (lambda d: d if len(d["workers"]) == 2 and all(w["state"] == "ready" for w in d["workers"])  # noqa: E731
                     else None)(status(s))
    before = wait_for(ready, 30, "two ready workers")
    if check_procs:
        for pid in [before["supervisor"]["pid"]] + [w["pid"] for w in before["workers"]]:
            ps = proc_status(pid)
            assert ps["NoNewPrivs"] == "1", "pid %d may gain privileges: %s" % (pid, ps)
            assert int(ps["CapEff"], 16) == 0 and int(ps["CapInh"], 16) == 0, "pid %d has capabilities" % pid
            if s.account:
                assert int(ps["CapBnd"], 16) == 0, "pid %d bounding set %s" % (pid, ps["CapBnd"])
                assert ps["Uid"].split()[0] == str(s.account.pw_uid), "pid %d runs as %s" % (pid, ps["Uid"])
    old = {w["pid"] for w in before["workers"]}
    # The supervisor, not strace when traced.
    s.supervisor = before["supervisor"]["pid"]
    os.kill(s.supervisor, signal.SIGHUP)
    wait_for(lambda: (lambda d: d if not old & {w["pid"] for w in d["workers"]} and
                      all(w["state"] == "ready" for w in d["workers"]) else None)(status(s)),
             60, "new workers after SIGHUP")
    print("  workers %s replaced by %s after SIGHUP" % (sorted(old), sorted(w["pid"] for w in status(s)["workers"])))
    st, _, got = s.json("GET", "/api/posts/" + post["data"]["id"])
    assert st == 200 and got["data"]["title"] == "in a sandbox", (st, got)
    db = [f for f in os.listdir(s.dir) if f.startswith("resil.db")]
    assert db, "no database in %s" % s.dir
    for f in db:
        mode = os.stat(os.path.join(s.dir, f)).st_mode & 0o777
        assert mode & 0o077 == 0, "%s has mode %o under UMask=0077" % (f, mode)


def test_resild_serves_under_setpriv_and_prlimit():
    if not shutil.which("setpriv") or not shutil.which("prlimit"):
        raise AssertionError("setpriv and prlimit (util-linux) are needed")
    s = Sandboxed(workers=2)
    try:
        s.start()
        exercise(s)
        s.assert_clean_exit()
    finally:
        s.cleanup()


_groups = {}


def syscall_group(name):
    """The system calls of a systemd syscall group, nested groups expanded."""
    if name not in _groups:
        p = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", name],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, "systemd-analyze syscall-filter %s: %s" % (name, p.stderr)
        calls = set()
        for line in p.stdout.splitlines()[1:]:
            item = line.strip()
            if not item or item.startswith("#"):
                continue
            calls |= syscall_group(item) if item.startswith("@") else {item}
        _groups[name] = calls
    return _groups[name]


def unit_syscall_filter():
    """(allowed, denied) sets from the unit's SystemCallFilter= lines."""
    allowed, denied = set(), set()
    for value in unit_settings()["SystemCallFilter"]:
        deny = value.startswith("~")
        for item in value.lstrip("~").split():
            calls = syscall_group(item) if item.startswith("@") else {item}
            (denied if deny else allowed).update(calls)
    return allowed - denied, denied


# What the unit leaves reachable: PrivateDevices keeps these devices and
# /dev/shm (libmongoc's counters);
# ProcSubset=pid and ProtectProc=invisible keep only processes' own /proc
# entries; ProtectSystem=strict leaves the service's directories (here: its
# working directory) writable, and /tmp private.
DEVICES = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"}
PROC_OK = re.compile(r"^/proc/(self|thread-self|\d+)(/|$)")
OPEN = re.compile(r'\bopen(?:at2?)?\((?:AT_FDCWD|\d+)?,?\s*"([^"]*)",\s*([A-Z_|]+)')


def check_paths(trace):
    bad, seen = set(), 0
    for m in OPEN.finditer(trace):
        seen += 1
        path, flags = m.group(1), m.group(2)
        writes = any(f in flags for f in ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"))
        if path.startswith("/proc/") and not PROC_OK.match(path):
            bad.add("%s (ProcSubset=pid hides it)" % path)
        elif path.startswith("/dev/") and path not in DEVICES and not path.startswith("/dev/shm/"):
            bad.add("%s (PrivateDevices hides it)" % path)
        elif writes and path.startswith("/") and not path.startswith(("/tmp/", "/dev/shm/")):
            bad.add("%s opened %s (ProtectSystem=strict makes it read-only)" % (path, flags))
    assert seen > 10, "no open calls found in the trace: is the pattern out of date?"
    assert not bad, "resild opened paths the unit's sandbox refuses:\n  " + "\n  ".join(sorted(bad))


def test_every_syscall_resild_makes_passes_the_units_filter():
    if not shutil.which("strace") or not shutil.which("systemd-analyze"):
        print("  strace or systemd-analyze missing: syscall filter not checked")
        return
    if os.environ.get("RESIL_VALGRIND"):
        print("  under valgrind: syscall filter not checked (valgrind's own calls would count)")
        return
    with open(RESILD, "rb") as f:
        if b"__asan_init" in f.read():
            print("  sanitizer build: syscall filter not checked (the runtime's own calls would count)")
            return
    allowed, denied = unit_syscall_filter()
    for need in ("execve", "clone", "eventfd2", "socket", "accept4", "epoll_wait", "prctl", "getrandom"):
        assert need in allowed, "the unit's filter forbids %s, which resild needs" % need
    s = Sandboxed(workers=2, trace="strace.txt")  # relative to the server's own directory
    trace = os.path.join(s.dir, "strace.txt")
    try:
        s.start()
        exercise(s, check_procs=False)
        s.stop()
        with open(trace) as f:
            text = f.read()
        used = {m.group(1) for m in re.finditer(r"^\s*[0-9.]+\s+[0-9.]+\s+\d+\s+\d+\s+(?:\d+\s+)?(\w+)\s*$",
                                                 text, re.M)}
        assert len(used) > 20, "strace summary unreadable:\n" + text[-2000:]
        used.discard("total")
        refused = sorted(used - allowed)
        assert not refused, "resild made system calls the unit's SystemCallFilter refuses: %s" % refused
        check_paths(text)
        print("  %d distinct system calls, all allowed by the unit: %s" % (len(used), " ".join(sorted(used))))
    finally:
        s.cleanup()


if __name__ == "__main__":
    run_tests([test_unit_exposure_is_at_most_2, test_resild_serves_under_setpriv_and_prlimit,
               test_every_syscall_resild_makes_passes_the_units_filter])
