#!/usr/bin/env python3
"""Code deploys without downtime (issue 16 item 1, SPEC section 3).

resild runs from a copy of the binary in a scratch directory. The copy is
replaced on disk the way install(1) or a package manager does it (a new
file renamed over the old name: a new inode), while client threads keep
persistent connections busy. Then:

* `resilctl reload`: the new workers run the new inode (they exec the
  binary on disk), the old ones ran the old one; no request fails.
* `resilctl upgrade`: a new supervisor runs the new binary on the same
  listening and control sockets, the old one exits 0 once the new one's
  workers are ready; no request fails.
* an upgrade to a binary that exits at once, or never becomes ready, is
  rolled back: resilctl exits 1 with the reason, the running supervisor
  keeps its pid and keeps serving, no request fails.

Which file a process runs is read from /proc/PID/maps (the inode of the
mapping of the binary's path), which also holds under valgrind (where
/proc/PID/exe is valgrind's own tool). Only processes this test started are
signalled (the new supervisor by the pid resilctl reports).
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import RESILD, Server, run_tests  # noqa: E402
from test_drain import SLOW, Client, assert_no_sanitizer_report, resilctl  # noqa: E402

CLIENTS = 4


def replace_binary(path, content_from):
    """Put a copy of content_from at path as a new inode (rename over it)."""
    tmp = path + ".new"
    shutil.copy2(content_from, tmp)
    os.replace(tmp, path)
    return os.stat(path).st_ino


def write_script(path, body):
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


def binary_inode(pid, path):
    """The inode of path as mapped by process pid (None if not mapped)."""
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].strip().replace(" (deleted)", "") == path:
                return int(parts[4])
    return None


def requests_total(srv):
    """Sum of resil_http_requests_total over every series of /metrics."""
    st, _, body = srv.request("GET", "/metrics")
    assert st == 200, st
    total = 0
    for line in body.decode().splitlines():
        if line.startswith("resil_http_requests_total{"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def status(srv):
    p = resilctl(srv, "status", "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def worker_pids(srv):
    return [w["pid"] for w in status(srv)["workers"] if w["pid"]]


def alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno != errno.ESRCH
    return True


def wait_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


class Load:
    def __init__(self, port):
        self.stop = threading.Event()
        self.clients = [Client(port, i, self.stop) for i in range(CLIENTS)]
        for c in self.clients:
            c.start()

    def finish(self, label):
        """Stop the clients; assert that every request got a 200."""
        time.sleep(0.5)
        self.stop.set()
        for c in self.clients:
            c.join(40 * SLOW)
        sent = sum(c.sent for c in self.clients)
        failed = [f for c in self.clients for f in c.failed]
        bad = {}
        for c in self.clients:
            for st, n in c.statuses.items():
                if st != 200:
                    bad[st] = bad.get(st, 0) + n
        print("%s: %d requests, %d failed, non-200: %r" % (label, sent, len(failed), bad))
        assert sent > 0
        assert not failed, failed[:5]
        assert not bad, bad


def setup(workers=2, env=None):
    bindir = tempfile.mkdtemp(prefix="resil-bin-")
    binary = os.path.join(bindir, "resild")
    shutil.copy2(os.path.abspath(RESILD), binary)
    e = {"RESIL_TEST_HOOKS": "1", "RESIL_LOG_LEVEL": "warn"}
    e.update(env or {})
    srv = Server(workers=workers, env=e, binary=binary)
    srv.start()
    return srv, bindir, binary


def test_reload_runs_the_binary_replaced_on_disk_under_load():
    srv, bindir, binary = setup()
    try:
        old_ino = os.stat(binary).st_ino
        before = worker_pids(srv)
        assert len(before) == 2
        for pid in before:
            assert binary_inode(pid, binary) == old_ino, "worker %d does not run %s" % (pid, binary)
        load = Load(srv.port)
        time.sleep(0.5)
        new_ino = replace_binary(binary, RESILD)
        assert new_ino != old_ino
        p = resilctl(srv, "reload")
        assert p.returncode == 0, p.stdout + p.stderr
        after = worker_pids(srv)
        assert len(after) == 2 and not set(before) & set(after), (before, after)
        for pid in after:
            assert binary_inode(pid, binary) == new_ino, "worker %d still runs the old binary" % pid
        load.finish("reload with a replaced binary")
        srv.assert_clean_exit()
    finally:
        srv.cleanup()
        shutil.rmtree(bindir, ignore_errors=True)


def test_upgrade_replaces_the_supervisor_under_load():
    srv, bindir, binary = setup()
    new_pid = None
    try:
        old_pid = srv.proc.pid
        gen_before = status(srv)["supervisor"]["generation"]
        load = Load(srv.port)
        time.sleep(0.5)
        counted_before = requests_total(srv)
        new_ino = replace_binary(binary, RESILD)
        p = resilctl(srv, "upgrade", timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        assert p.stdout.startswith("upgraded: new supervisor pid "), p.stdout
        new_pid = int(p.stdout.split()[-1])
        assert new_pid != old_pid
        # The old supervisor drains its workers and exits 0.
        rc = srv.proc.wait(60 * SLOW)
        assert rc == 0, "old supervisor exited with %s" % rc
        # The new supervisor kept the shared scoreboard: the counters go on
        # from where they were (a new one would start from nothing).
        counted_after = requests_total(srv)
        assert counted_after >= counted_before, (counted_before, counted_after)
        doc = status(srv)
        assert doc["supervisor"]["pid"] == new_pid, doc["supervisor"]
        assert doc["supervisor"]["generation"] > gen_before, (gen_before, doc["supervisor"])
        assert binary_inode(new_pid, binary) == new_ino
        pids = [w["pid"] for w in doc["workers"] if w["pid"]]
        assert len(pids) == 2
        for pid in pids:
            assert binary_inode(pid, binary) == new_ino
            with open("/proc/%d/stat" % pid) as f:
                assert int(f.read().rsplit(")", 1)[1].split()[1]) == new_pid  # its parent
        load.finish("upgrade under load")
        # The new supervisor answers the control socket and stops cleanly.
        p = resilctl(srv, "stop", timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        assert wait_gone(new_pid, 30 * SLOW), "new supervisor still running"
        new_pid = None
        assert os.path.exists(os.path.join(srv.dir, "control.sock")) is False
        assert_no_sanitizer_report(srv)
        srv.check_log_lines()
    finally:
        if new_pid and alive(new_pid):
            os.kill(new_pid, signal.SIGTERM)
            if not wait_gone(new_pid, 30 * SLOW):
                os.kill(new_pid, signal.SIGKILL)
        srv.cleanup()
        shutil.rmtree(bindir, ignore_errors=True)


def test_failed_upgrades_roll_back():
    srv, bindir, binary = setup(env={"RESIL_LISTEN_TIMEOUT": "2s"})
    try:
        old_pid = srv.proc.pid
        pids = worker_pids(srv)
        load = Load(srv.port)
        time.sleep(0.3)
        # A binary that exits at once.
        write_script(binary, "exit 3")
        p = resilctl(srv, "upgrade", timeout=60)
        assert p.returncode == 1, p.stdout + p.stderr
        assert "exited with status 3" in p.stderr and "keeps serving" in p.stderr, p.stderr
        # A binary that never becomes ready: killed after the bound.
        write_script(binary, "exec sleep 120")
        t0 = time.monotonic()
        p = resilctl(srv, "upgrade", timeout=90)
        took = time.monotonic() - t0
        assert p.returncode == 1, p.stdout + p.stderr
        assert "not ready within" in p.stderr, p.stderr
        print("a never-ready upgrade was rolled back after %.1f s" % took)
        doc = status(srv)
        assert doc["supervisor"]["pid"] == old_pid
        assert worker_pids(srv) == pids, "the workers were touched by a failed upgrade"
        assert srv.proc.poll() is None
        load.finish("failed upgrades under load")
        # The failed candidate is gone (SIGQUIT, then SIGKILL): no sleep left behind.
        out = subprocess.run(["pgrep", "-f", "sleep 120"], capture_output=True, text=True).stdout.split()
        children = []
        for pid in out:
            try:
                with open("/proc/%s/stat" % pid) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == old_pid:
                        children.append(pid)
            except OSError:
                pass
        assert not children, "the never-ready candidate is still running: %r" % children
        srv.assert_clean_exit()
    finally:
        srv.cleanup()
        shutil.rmtree(bindir, ignore_errors=True)


if __name__ == "__main__":
    run_tests([test_reload_runs_the_binary_replaced_on_disk_under_load, test_upgrade_replaces_the_supervisor_under_load,
               test_failed_upgrades_roll_back])
