#!/usr/bin/env python3
"""bench/ws_bench.py - WebSocket chat figures for resil (issue 8, SPEC section 11).

Starts its own resild (2 workers, SQLite in a temp dir, log level warn) and
measures, over loopback, with raw-socket clients spread over several client
processes (stdlib only):

  idle      N idle connections (each joined to a room, after the server has
            parked their parser state): worker RSS growth per connection
  fanout    R receivers in one room over both workers, one sender, M messages
            at 20/s: delivery latency p50/p99 over all deliveries, and losses
  throughput 10 rooms x 10 members, one sender per room that sends its next
            message when its previous one came back, 10 s: delivered
            messages/s and worker CPU (utime+stime, all threads) per delivery
  flood     the same rooms, senders that never wait: workers alive, RSS peak,
            what happened to the excess

Prints a table; never decides pass/fail on a timing (STYLE.md).

  python3 bench/ws_bench.py                  # all, 10,000 idle, 1,000 fan-out
  python3 bench/ws_bench.py --only fanout --receivers 300
  RESIL_BIN=/path/to/resild python3 bench/ws_bench.py
"""
import argparse
import base64
import json
import multiprocessing as mp
import os
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
CLK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------ the server

class Resild:
    def __init__(self, workers=2):
        self.bin = os.environ.get("RESIL_BIN") or os.path.join(TOP, "resild")
        self.dir = tempfile.mkdtemp(prefix="resil-wsb-")
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESIL_")}
        env.update({"RESIL_LISTEN": "127.0.0.1:%d" % self.port, "RESIL_WORKERS": str(workers),
                    "RESIL_DB": "sqlite:%s/bench.db" % self.dir, "RESIL_CONTROL": self.dir + "/ctl.sock",
                    "RESIL_LOG_LEVEL": "warn", "RESIL_LOG_FORMAT": "json", "RESIL_RATE_LIMIT": "1000000/1s",
                    "RESIL_MAX_CONNECTIONS": "20000", "RESIL_WS_MESSAGE_RATE": "1000000"})
        self.log = open(self.dir + "/stderr.log", "wb")
        self.proc = subprocess.Popen([self.bin, "--foreground"], env=env, cwd=self.dir, stdout=self.log,
                                     stderr=self.log, stdin=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if urllib.request.urlopen("http://127.0.0.1:%d/health/live" % self.port, timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("resild did not start: see " + self.dir)
        self.ctl = self.dir + "/ctl.sock"

    def status(self):
        out = subprocess.run([os.path.join(TOP, "resilctl"), "-s", self.ctl, "status", "--json"],
                             capture_output=True, timeout=10).stdout
        return json.loads(out)

    def worker_pids(self):
        return [w["pid"] for w in self.status()["workers"]]

    def api(self, method, path, body=None, token=None):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", "Bearer " + token)
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime of every thread


# ------------------------------------------------------------ raw clients

def ws_connect(port, token):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as ws and socket.io clients do
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /ws?token=%s HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (token, key)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(4096)
        if not b:
            raise OSError("closed during handshake")
        head += b
    if not head.startswith(b"HTTP/1.1 101"):
        raise OSError("handshake refused: %r" % head[:40])
    return s, head.split(b"\r\n\r\n", 1)[1]


def frame(text):
    p = text.encode()
    n = len(p)
    hdr = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, n)
    return hdr + b"\0\0\0\0" + p  # a zero mask key leaves the payload as is


def ev(name, **data):
    return frame(json.dumps({"event": name, "data": data}))


def parse(buf):
    """Split complete server frames off buf: ([(opcode, payload)], rest)."""
    out = []
    while len(buf) >= 2:
        n = buf[1] & 0x7f
        o = 2
        if n == 126:
            if len(buf) < 4:
                break
            n = struct.unpack("!H", buf[2:4])[0]
            o = 4
        elif n == 127:
            if len(buf) < 10:
                break
            n = struct.unpack("!Q", buf[2:10])[0]
            o = 10
        if len(buf) < o + n:
            break
        out.append((buf[0] & 0x0f, buf[o:o + n]))
        buf = buf[o + n:]
    return out, buf


def recv_until(s, buf, pred, timeout=30):
    s.settimeout(timeout)
    while True:
        frames, buf = parse(buf)
        for op, p in frames:
            if op == 1 and pred(json.loads(p)):
                return buf
        b = s.recv(65536)
        if not b:
            raise OSError("closed")
        buf += b


def join_all(socks, rid):
    for s, _ in socks:
        s.sendall(ev("join_room", roomId=rid))
    out = []
    for s, buf in socks:
        buf = recv_until(s, buf, lambda e: e["event"] == "recent_messages")
        out.append((s, buf))
    return out


# ------------------------------------------------------------ scenarios

def setup_users(srv, n):
    users = []
    for i in range(n):
        name = "wsb%d_%d" % (i, os.getpid() % 10000)
        d = srv.api("POST", "/api/auth/register", {"username": name, "email": name + "@b.io", "password": "password123"})
        users.append({"id": d["data"]["user"]["id"], "token": d["data"]["token"]})
    return users


def make_room(srv, owner, members):
    rid = srv.api("POST", "/api/rooms", {"name": "bench"}, owner["token"])["data"]["id"]
    for m in members:
        srv.api("POST", "/api/rooms/%s/members" % rid, {"userId": m["id"]}, owner["token"])
    return rid


def idle(srv, users, rid, n):
    pids = srv.worker_pids()
    time.sleep(1)
    before = sum(rss(p) for p in pids)
    socks = []
    for i in range(n):
        socks.append(ws_connect(srv.port, users[i % len(users)]["token"]))
        if len(socks) % 500 == 0:
            socks[-500:] = join_all(socks[-500:], rid)
    socks[len(socks) - len(socks) % 500:] = join_all(socks[len(socks) - len(socks) % 500:], rid)
    time.sleep(4)  # idle sockets park their parser state after 2 s
    after = sum(rss(p) for p in pids)
    per = (after - before) / n
    counts = [w["websockets"] for w in srv.status()["workers"]]
    for s, _ in socks:
        s.close()
    return {"connections": n, "per_worker": counts, "rss_growth_mib": (after - before) / 2 ** 20,
            "bytes_per_connection": per}


def fanout_receiver(port, tokens, rid, expect, q, ready):
    socks = join_all([ws_connect(port, t) for t in tokens], rid)
    sel = selectors.DefaultSelector()
    bufs = {}
    for s, buf in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        bufs[s] = buf
    ready.put(len(socks))
    lat = []
    deadline = None
    while True:
        if expect and len(lat) >= expect:
            break
        if deadline is None and os.path.exists("/tmp/.wsb_done_%d" % port):
            deadline = time.time() + 3
        if deadline and time.time() > deadline:
            break
        for key, _ in sel.select(0.2):
            s = key.fileobj
            try:
                b = s.recv(262144)
            except BlockingIOError:
                continue
            if not b:
                sel.unregister(s)
                continue
            now = time.time()
            frames, bufs[s] = parse(bufs[s] + b)
            for op, p in frames:
                if op == 1 and p.startswith(b'{"event":"new_message"'):
                    i = p.index(b'"content":"') + 11
                    sent = float(p[i:p.index(b'"', i)])
                    lat.append(now - sent)
    for s, _ in socks:
        s.close()
    q.put(lat)


def fanout(srv, users, rid, receivers, messages, rate, procs=4):
    tokens = [users[i % len(users)]["token"] for i in range(receivers)]
    q, ready = mp.Queue(), mp.Queue()
    flag = "/tmp/.wsb_done_%d" % srv.port
    if os.path.exists(flag):
        os.unlink(flag)
    chunks = [tokens[i::procs] for i in range(procs)]
    ps = [mp.Process(target=fanout_receiver, args=(srv.port, c, rid, len(c) * messages, q, ready)) for c in chunks]
    for p in ps:
        p.start()
    joined = sum(ready.get(timeout=120) for _ in ps)
    counts = [w["websockets"] for w in srv.status()["workers"]]
    s, buf = ws_connect(srv.port, users[0]["token"])
    join_all([(s, buf)], rid)
    t0 = time.time()
    for i in range(messages):
        target = t0 + i / rate
        d = target - time.time()
        if d > 0:
            time.sleep(d)
        s.sendall(ev("send_message", roomId=rid, content="%.6f" % time.time()))
    open(flag, "w").close()
    lat = []
    for _ in ps:
        lat += q.get(timeout=120)
    for p in ps:
        p.join()
    os.unlink(flag)
    s.close()
    lat.sort()
    pct = (lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000) if lat else (lambda f: float("nan"))
    return {"receivers": joined, "per_worker": counts, "messages": messages, "deliveries": len(lat),
            "lost": joined * messages - len(lat), "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


def room_worker(port, tokens, rid, duration, flood, q):
    socks = join_all([ws_connect(port, t) for t in tokens], rid)
    sender = socks[0][0]
    sel = selectors.DefaultSelector()
    bufs = {}
    for s, buf in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        bufs[s] = buf
    delivered = errors = closed = sent = 0
    stop = time.time() + duration
    waiting = False
    closes = {}
    payload = ev("send_message", roomId=rid, content="x" * 64)
    while time.time() < stop:
        if flood or not waiting:
            try:
                sender.send(payload * (20 if flood else 1))
                sent += 20 if flood else 1
                waiting = True
            except (BlockingIOError, OSError):
                pass
        for key, _ in sel.select(0 if flood else 0.1):
            s = key.fileobj
            try:
                b = s.recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                b = b""
            if not b:
                sel.unregister(s)
                closed += 1
                continue
            frames, bufs[s] = parse(bufs[s] + b)
            for op, p in frames:
                if op == 8:
                    code = struct.unpack("!H", p[:2])[0] if len(p) >= 2 else 1005
                    closes[code] = closes.get(code, 0) + 1
                elif op == 1 and p.startswith(b'{"event":"new_message"'):
                    delivered += 1
                    if s is sender:
                        waiting = False
                elif op == 1:
                    errors += 1
                    if errors <= 2:
                        sys.stderr.write("event: %s\n" % p[:120].decode(errors="replace"))
    for s, _ in socks:
        s.close()
    q.put({"delivered": delivered, "errors": errors, "sent": sent, "closes": closes})


def rooms_run(srv, users, duration, flood):
    rooms = []
    for r in range(10):
        members = users[r * 10:(r + 1) * 10]
        rooms.append((make_room(srv, members[0], members[1:]), [m["token"] for m in members]))
    pids = srv.worker_pids()
    sup = srv.status()["supervisor"].get("pid")
    q = mp.Queue()
    cpu0 = {p: cpu_s(p) for p in pids}
    sup0 = cpu_s(sup) if sup else 0
    peak = {p: rss(p) for p in pids}
    ps = [mp.Process(target=room_worker, args=(srv.port, toks, rid, duration, flood, q)) for rid, toks in rooms]
    for p in ps:
        p.start()
    t0 = time.time()
    while any(p.is_alive() for p in ps):
        for p in pids:
            try:
                peak[p] = max(peak[p], rss(p))
            except OSError:
                pass
        time.sleep(0.25)
    elapsed = time.time() - t0
    res = [q.get(timeout=30) for _ in ps]
    cpu = sum(cpu_s(p) - cpu0[p] for p in pids)
    sup_cpu = (cpu_s(sup) - sup0) if sup else 0
    delivered = sum(r["delivered"] for r in res)
    closes = {}
    for r in res:
        for k, v in r["closes"].items():
            closes[k] = closes.get(k, 0) + v
    alive = [w["pid"] for w in srv.status()["workers"]] == pids
    return {"delivered": delivered, "per_s": delivered / elapsed, "worker_cpu_s": cpu,
            "us_per_delivery": cpu * 1e6 / delivered if delivered else float("nan"),
            "supervisor_cpu_s": sup_cpu, "sent": sum(r["sent"] for r in res),
            "errors": sum(r["errors"] for r in res), "closes": closes, "workers_alive": alive,
            "rss_peak_mib": {p: peak[p] / 2 ** 20 for p in pids}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="idle,fanout,throughput,flood")
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--receivers", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=10.0)
    a = ap.parse_args()
    only = a.only.split(",")
    srv = Resild()
    results = {}
    try:
        users = setup_users(srv, 100)
        big = make_room(srv, users[0], users[1:10])
        if "idle" in only:
            results["idle"] = idle(srv, users[:10], big, a.idle)
        if "fanout" in only:
            results["fanout"] = fanout(srv, users[:10], big, a.receivers, a.messages, a.rate)
        if "throughput" in only:
            results["throughput"] = rooms_run(srv, users, a.duration, False)
        if "flood" in only:
            results["flood"] = rooms_run(srv, users, a.duration, True)
    finally:
        srv.stop()
    print("\n| scenario | figures |\n|---|---|")
    for k, v in results.items():
        print("| %s | %s |" % (k, ", ".join("%s=%s" % (kk, ("%.2f" % vv) if isinstance(vv, float) else vv)
                                               for kk, vv in v.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
