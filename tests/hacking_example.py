#!/usr/bin/env python3
"""Follow HACKING.md's "Adding a model" literally: copy the tree, save the
C block as workers/notes.c, apply the diff block with patch -p1, build,
start resild and call both new routes. Run by .ci/run (a full build, so it
is not part of make check)."""
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
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blocks(text):
    section = text[text.index("## Adding a model"):text.index("## Habits")]
    code = re.findall(r"^```c\n(.*?)^```", section, re.S | re.M)
    diff = re.findall(r"^```diff\n(.*?)^```", section, re.S | re.M)
    assert len(code) == 1 and len(diff) == 1, "HACKING.md: expected one c and one diff block in 'Adding a model'"
    return code[0], diff[0]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def call(port, method, path, body=None, token=None):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def main():
    code, diff = blocks(open(os.path.join(ROOT, "HACKING.md")).read())
    work = tempfile.mkdtemp(prefix="resil-hacking-")
    proc = None
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
        for f in files.decode().split("\0"):
            if f:
                os.makedirs(os.path.join(work, os.path.dirname(f)), exist_ok=True)
                shutil.copy2(os.path.join(ROOT, f), os.path.join(work, f))
        with open(os.path.join(work, "workers/notes.c"), "w") as f:
            f.write(code)
        subprocess.run(["patch", "-p1", "--quiet"], cwd=work, input=diff.encode(), check=True)
        subprocess.run("autoreconf -fi >/dev/null 2>&1 && ./configure -q --enable-werror && make -j2 >/dev/null",
                       shell=True, cwd=work, check=True)
        port = free_port()
        env = dict(os.environ, RESIL_LISTEN="127.0.0.1:%d" % port, RESIL_WORKERS="1",
                   RESIL_DB="sqlite:%s/notes.db" % work, RESIL_CONTROL="%s/ctl.sock" % work,
                   RESIL_LOG_FORMAT="json")
        proc = subprocess.Popen([os.path.join(work, "resild"), "--foreground"], env=env,
                                stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "resild.log"), "w"))
        for _ in range(100):
            try:
                if call(port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        st, doc = call(port, "POST", "/api/auth/register",
                       {"username": "nina", "email": "nina@example.com", "password": "a-long-secret"})
        assert st == 201, doc
        token = doc["data"]["token"]
        st, doc = call(port, "POST", "/api/notes", {"text": "hello"}, token)
        assert st == 201 and doc["data"]["text"] == "hello" and doc["data"]["_id"] == doc["data"]["id"], doc
        st, doc = call(port, "POST", "/api/notes", {"text": ""}, token)
        assert st == 400 and doc["code"] == "VALIDATION_ERROR", doc
        st, doc = call(port, "GET", "/api/notes", None, token)
        assert st == 200 and [n["text"] for n in doc["data"]] == ["hello"], doc
        assert doc["pagination"]["total"] == 1, doc
        st, doc = call(port, "GET", "/api/notes")
        assert st == 401, doc
        print("HACKING.md example: notes model builds and serves")
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
