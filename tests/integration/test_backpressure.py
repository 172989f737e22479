#!/usr/bin/env python3
"""Output backpressure (SPEC section 5, issue 14 item 1): clients that
pipeline requests and never read their responses must not make a worker
buffer without bound, and must not slow down the other clients.

Each round opens N pipelining connections that write `GET /health`
requests as fast as the socket takes them for a bounded time and never
read, while one normal client sends requests on its own connection. The
workers' RSS (from /proc/<pid>/status, pids from the control socket) must
stay under a bound and every normal request must be answered within 2 s.
The measured figures are printed (they are reported, not asserted).

Standard library only; everything talks to 127.0.0.1 and every process
started is stopped by pid.
"""
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Server, run_tests  # noqa: E402

RESILCTL = os.environ.get("RESILCTL") or os.path.join(HERE, "..", "..", "resilctl")
VALGRIND = bool(os.environ.get("RESIL_VALGRIND"))
FLOOD_SECONDS = 4.0
NORMAL_BOUND_S = 10.0 if VALGRIND else 2.0
REQ = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"

S = None


def server():
    global S
    if S is None:
        # warn: the access log of a flood would otherwise fill the temp dir.
        S = Server(workers=2, env={"RESIL_LOG_LEVEL": "warn", "RESIL_MAX_CONNECTIONS": "200"})
        S.start()
    return S


def instrumented():
    """Valgrind and ASan keep their own memory (shadow, quarantine), so RSS
    bounds only mean something in a plain build."""
    if VALGRIND:
        return True
    try:
        out = subprocess.run(["ldd", os.environ.get("RESILD") or os.path.join(HERE, "..", "..", "resild")],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "libasan" in out


def worker_pids(srv):
    p = subprocess.run([RESILCTL, "-s", srv.env["RESIL_CONTROL"], "status", "--json"], capture_output=True,
                       text=True, timeout=10, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    pids = [w["pid"] for w in json.loads(p.stdout)["workers"] if w["pid"] > 0]
    assert pids, p.stdout
    return pids


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def flood(port, nconn, seconds):
    """Open nconn sockets and write pipelined requests into them until
    `seconds` pass, never reading. Returns the bytes written."""
    socks = []
    for _ in range(nconn):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        # A small receive buffer: the client side holds little, so what the
        # server cannot send shows up in the server.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        socks.append(s)
    chunk = REQ * 256
    written = 0
    deadline = time.monotonic() + seconds
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            _, wr, _ = select.select([], socks, [], min(left, 0.2))
            for s in wr:
                try:
                    written += s.send(chunk)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    socks.remove(s)
                    s.close()
            if not socks:
                break
    finally:
        for s in socks:
            s.close()
    return written


class Normal(threading.Thread):
    """A well-behaved keep-alive client: one request at a time, reads each
    answer, records its latency."""

    def __init__(self, port, stop):
        super().__init__(daemon=True)
        self.port = port
        self.stop = stop
        self.lat = []
        self.errors = []

    def run(self):
        sock = None
        buf = b""
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=NORMAL_BOUND_S + 5)
                    buf = b""
                sock.sendall(REQ)
                while b"\r\n\r\n" not in buf:
                    b = sock.recv(65536)
                    if not b:
                        raise OSError("closed")
                    buf += b
                head, _, rest = buf.partition(b"\r\n\r\n")
                n = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        n = int(v)
                while len(rest) < n:
                    b = sock.recv(65536)
                    if not b:
                        raise OSError("closed mid-body")
                    rest += b
                status = int(head.split(b" ", 2)[1])
                buf = rest[n:]
                if status != 200:
                    self.errors.append("status %d" % status)
                self.lat.append(time.monotonic() - t0)
            except OSError as e:
                self.errors.append("%s after %.2fs" % (e, time.monotonic() - t0))
                if sock:
                    sock.close()
                sock = None
            time.sleep(0.02)
        if sock:
            sock.close()


def p99(xs):
    if not xs:
        return 0.0
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(len(ys) * 0.99))]


def round_with(nconn):
    srv = server()
    pids = worker_pids(srv)
    base = {pid: rss_kib(pid) for pid in pids}
    stop = threading.Event()
    normal = Normal(srv.port, stop)
    peak = dict(base)
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            for pid in pids:
                peak[pid] = max(peak[pid], rss_kib(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    normal.start()
    written = flood(srv.port, nconn, FLOOD_SECONDS)
    stop.set()
    normal.join(NORMAL_BOUND_S + 10)
    sampling.set()
    sampler.join(5)
    growth = max(peak[p] - base[p] for p in pids)
    print("  %2d pipeliners: %.1f MiB written in %.0fs; worker RSS base %s KiB, peak %s KiB (growth %.1f MiB);"
          " normal client %d requests, p99 %.1f ms, max %.1f ms"
          % (nconn, written / 1048576.0, FLOOD_SECONDS, [base[p] for p in pids], [peak[p] for p in pids],
             growth / 1024.0, len(normal.lat), p99(normal.lat) * 1000, max(normal.lat or [0]) * 1000), flush=True)
    assert not normal.errors, normal.errors[:5]
    assert normal.lat, "the normal client got no answer at all"
    assert max(normal.lat) < NORMAL_BOUND_S, "a normal request took %.2fs" % max(normal.lat)
    # Every pipelining connection may hold its bounded output (1 MiB) plus
    # one request's worth of input; the allocator adds overhead. Without a
    # bound, one connection alone grows by hundreds of MiB in a few seconds.
    bound_mib = 24 + 3 * nconn
    if not instrumented():
        assert growth < bound_mib * 1024, "worker RSS grew by %.1f MiB (bound %d MiB)" % (growth / 1024.0, bound_mib)
    # The server is still fine afterwards.
    assert srv.request("GET", "/health/live")[0] == 200


def test_one_pipeliner_that_never_reads_is_bounded():
    round_with(1)


def test_eight_pipeliners_are_bounded():
    round_with(8)


def test_fifty_pipeliners_leave_a_normal_client_its_latency():
    round_with(50)


def test_zz_shutdown_is_clean():
    if S is not None:
        S.assert_clean_exit()
        S.cleanup()


if __name__ == "__main__":
    run_tests([test_one_pipeliner_that_never_reads_is_bounded, test_eight_pipeliners_are_bounded,
               test_fifty_pipeliners_leave_a_normal_client_its_latency, test_zz_shutdown_is_clean])
