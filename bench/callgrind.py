#!/usr/bin/env python3
"""Instructions per request in the worker, counted with callgrind: the
same figure on a busy machine as on a quiet one.

resild runs under `valgrind --tool=callgrind` with one worker; N0 and then
N1 requests go to it on one keep-alive connection; the worker's
instruction count of the N0 run is subtracted from the N1 run's and
divided by N1 - N0, which removes start-up, shutdown and most of the
once-a-second work. Prints a markdown table; decides nothing.

  bench/callgrind.py --resild ./resild --path /health --path /api/posts
  bench/callgrind.py --resild /tmp/before/resild --resild ./resild --path /health
"""
import argparse
import glob
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
from harness import free_port  # noqa: E402


def worker_instructions(resild, path, n, warm):
    """Ir of the worker process for warm + n requests of path."""
    d = tempfile.mkdtemp(prefix="resil-cg-")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESIL_")}
    env.update({"RESIL_LISTEN": "127.0.0.1:%d" % port, "RESIL_WORKERS": "1", "RESIL_DB": "sqlite:%s/db" % d,
                "RESIL_CONTROL": os.path.join(d, "control.sock"), "RESIL_ENV": "production",
                "RESIL_JWT_SECRET": "x" * 40, "RESIL_LOG_LEVEL": "info", "RESIL_LOG_FORMAT": "json",
                "RESIL_LOG_FILE": "", "RESIL_RATE_LIMIT": "1000000/15m"})
    log = open(os.path.join(d, "log"), "wb")
    p = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=%s/cg.%%p" % d, resild,
                          "--foreground"], env=env, cwd=d, stdout=subprocess.DEVNULL, stderr=log,
                         stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                c.request("GET", "/health/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or p.poll() is not None:
                raise RuntimeError("resild did not start under valgrind (see %s/log)" % d)
            time.sleep(0.2)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(warm + n):
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            if r.status >= 500:
                raise RuntimeError("%s answered %d" % (path, r.status))
        c.close()
        p.send_signal(signal.SIGTERM)
        p.wait(120)
        irs = []
        for f in glob.glob(os.path.join(d, "cg.*")):
            if f.endswith(".%d" % p.pid):
                continue  # the supervisor
            with open(f) as fh:
                for line in fh:
                    m = re.match(r"(?:summary|totals): (\d+)", line)
                    if m:
                        irs.append(int(m.group(1)))
                        break
        if not irs:
            raise RuntimeError("no worker profile in %s" % d)
        return max(irs)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resild", action="append", required=True, help="a resild binary (repeat to compare)")
    ap.add_argument("--path", action="append", required=True, help="a GET path (repeat)")
    ap.add_argument("--n0", type=int, default=1000)
    ap.add_argument("--n1", type=int, default=3000)
    a = ap.parse_args()
    print("| path | " + " | ".join(a.resild) + " |")
    print("|---|" + "---:|" * len(a.resild))
    for path in a.path:
        row = []
        for r in a.resild:
            # the same warm-up (the list cache, the first token) in both runs
            lo = worker_instructions(r, path, a.n0, 20)
            hi = worker_instructions(r, path, a.n1, 20)
            row.append("{:,}".format(round((hi - lo) / (a.n1 - a.n0))))
        print("| GET %s | %s |" % (path, " | ".join(row)), flush=True)


if __name__ == "__main__":
    main()
