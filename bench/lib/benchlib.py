#!/usr/bin/env python3
"""Helpers for bench/run.sh: free ports, /proc process-tree CPU and RSS, wrk
output parsing, nginx config generation and the result tables.

Subcommands (all print to stdout, exit 1 with a message on stderr on failure):
  port                         a free TCP port on 127.0.0.1
  tree PID                     PID and all its descendants, one per line
  cpu PID                      CPU seconds (utime+stime+cutime+cstime) of the tree
  rss PID                      "SUM_KIB KIB/KIB/..." of the workers (descendants;
                               the root itself when it has none)
  machine                      "BUSY_S UPTIME_S": CPU seconds the whole machine has
                               spent in user, system and steal time (all cores,
                               /proc/stat) and the wall time
  wrk FILE                     "rps p50_ms p99_ms requests non2xx socket_errors"
  nginx-conf TEMPLATE HDRFILE BODYFILE KEY=VALUE...
                               the filled-in nginx config
  json-get FILE PATH           the value at a dotted PATH of a JSON file
                               (strings raw, anything else as JSON)
  meta KEY=VALUE...            the run's description as a JSON object; keys
                               "ratio:TARGET" collect under "ratio_notes"
  report TSV META_JSON [WARMUP_TSV]
                               the console table and the markdown section;
                               WARMUP_TSV lists unexpected warm-up statuses
"""

import json
import os
import re
import socket
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")


def die(msg):
    sys.stderr.write("benchlib: %s\n" % msg)
    sys.exit(1)


# ---------------------------------------------------------------- processes

def read_stat(pid):
    """Fields of /proc/PID/stat after the comm field, or None if gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    return data[data.rindex(")") + 2:].split()


def children_map():
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = read_stat(int(name))
        if st is None:
            continue
        kids.setdefault(int(st[1]), []).append(int(name))  # st[1] is ppid
    return kids


def tree(root):
    kids = children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(sorted(kids.get(pid, [])))
    return out


def cpu_seconds(root):
    """utime+stime of every process in the tree.  /proc/PID/stat of a process
    already sums all its threads, live and exited; cutime/cstime add children
    that exited and were reaped during the run (a restarted worker)."""
    ticks = 0
    for pid in tree(root):
        st = read_stat(pid)
        if st is None:
            continue
        # after comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
        ticks += int(st[11]) + int(st[12]) + int(st[13]) + int(st[14])
    return ticks / CLK_TCK


def vm_rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss(root):
    pids = tree(root)
    workers = pids[1:] or pids[:1]
    sizes = [s for s in (vm_rss_kib(p) for p in workers) if s is not None]
    if not sizes:
        die("no process left in the tree of %d" % root)
    return "%d %s" % (sum(sizes), "/".join(str(s) for s in sizes))


def machine():
    with open("/proc/stat") as f:
        cpu = f.readline().split()
    # user nice system idle iowait irq softirq steal (guest is inside user).
    # irq/softirq are left out: loopback TCP processing of the benchmark itself
    # is accounted there rather than to the server's or wrk's stime.
    busy = sum(int(cpu[i]) for i in (1, 2, 3, 8))
    with open("/proc/uptime") as f:
        uptime = f.read().split()[0]
    return "%.2f %s" % (busy / CLK_TCK, uptime)


# ---------------------------------------------------------------------- wrk

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if not m:
        die("cannot read the latency %r" % text)
    return float(m.group(1)) * UNIT_MS[m.group(2)]


def parse_wrk(path):
    with open(path) as f:
        text = f.read()
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    reqs = re.search(r"^\s*(\d+) requests in ", text, re.M)
    p50 = re.search(r"^\s*50(?:\.0+)?%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+(\S+)", text, re.M)
    if not (rps and reqs and p50 and p99):
        die("unexpected wrk output in %s:\n%s" % (path, text))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return "%s %.4f %.4f %s %d %d" % (
        rps.group(1), to_ms(p50.group(1)), to_ms(p99.group(1)), reqs.group(1),
        int(non2xx.group(1)) if non2xx else 0,
        sum(int(g) for g in sock.groups()) if sock else 0)


# -------------------------------------------------------------------- nginx

SKIP_HEADERS = {
    "date", "content-length", "content-type", "connection", "keep-alive",
    "transfer-encoding", "server", "etag", "last-modified", "x-powered-by",
    "content-encoding", "x-request-id",
}


def nginx_headers(path):
    """add_header lines replicating the headers of a raw HTTP response head."""
    lines = ['            add_header X-Request-ID $request_id always;']
    with open(path, "rb") as f:
        head = f.read().decode("latin-1")
    for raw in head.replace("\r\n", "\n").split("\n")[1:]:
        if ":" not in raw:
            continue
        name, value = raw.split(":", 1)
        name, value = name.strip(), value.strip()
        low = name.lower()
        if low in SKIP_HEADERS or low.startswith("ratelimit"):
            continue
        if "$" in value or not re.fullmatch(r"[A-Za-z0-9-]+", name):
            sys.stderr.write("benchlib: not replicating header %s in nginx\n" % name)
            continue
        value = value.replace("\\", "\\\\").replace('"', '\\"')
        lines.append('            add_header %s "%s" always;' % (name, value))
    return "\n".join(lines)


def nginx_conf(template, hdrfile, bodyfile, pairs):
    with open(template) as f:
        text = f.read()
    with open(bodyfile) as f:
        body = f.read().strip()
    if "$" in body:
        die("the /health body contains '$', which nginx would expand")
    values = dict(p.split("=", 1) for p in pairs)
    values["HEADERS"] = nginx_headers(hdrfile)
    values["BODY"] = body.replace("\\", "\\\\").replace("'", "\\'")
    for key, val in values.items():
        text = text.replace("@%s@" % key, val)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        die("unfilled placeholders in %s: %s" % (template, " ".join(left)))
    return text


# --------------------------------------------------------------------- json

def json_get(path, dotted):
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        die("%s: %s" % (path, e))
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            die("%s: no %s" % (path, dotted))
        value = value[key]
    print(value if isinstance(value, str) else json.dumps(value, separators=(",", ":")))


# ------------------------------------------------------------------- report

def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def load_rows(path):
    cols = ["target", "server", "round", "rps", "p50", "p99", "requests",
            "non2xx", "sockerr", "cpu_s", "rss_kib", "rss_each", "other", "expect"]
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(dict(zip(cols, line.rstrip("\n").split("\t"))))
    return rows


def summarise(rows):
    """{target: {server: summary}} keeping first-seen order."""
    out = {}
    for r in rows:
        out.setdefault(r["target"], {}).setdefault(r["server"], []).append(r)
    summary = {}
    for target, servers in out.items():
        summary[target] = {}
        for server, rs in servers.items():
            rps = [float(r["rps"]) for r in rs]
            req = sum(int(r["requests"]) for r in rs)
            cpu = sum(float(r["cpu_s"]) for r in rs)
            last = rs[-1]
            # With an expected 4xx, wrk's non-2xx count is the expected
            # answers; the 2xx/3xx left over are the errors.
            expected = last.get("expect", "2xx") not in ("", "2xx")
            non2xx = sum(int(r["non2xx"]) for r in rs)
            sockerr = sum(int(r["sockerr"]) for r in rs)
            summary[target][server] = {
                "best": max(rps), "mean": mean(rps),
                "p50": mean([float(r["p50"]) for r in rs]),
                "p99": mean([float(r["p99"]) for r in rs]),
                "cpu_us": cpu * 1e6 / req if req else float("nan"),
                "rss": "%.1f (%s)" % (int(last["rss_kib"]) / 1024.0, "/".join(
                    "%.1f" % (int(k) / 1024.0) for k in last["rss_each"].split("/"))),
                "errors": (req - non2xx + sockerr) if expected else (non2xx + sockerr),
                "expected": non2xx if expected else None,
                "expect": last.get("expect", "2xx"),
                "rounds": len(rs),
                "other": mean([float(r["other"]) for r in rs]),
            }
    return summary


HEAD = ["server", "req/s best", "req/s mean", "p50 ms", "p99 ms", "CPU µs/req",
        "worker RSS MiB (each)", "errors", "other load %"]


OTHER_NOTE = ("other load % = CPU time used during the measured runs by processes other "
              "than the server and wrk, as a share of all cores; figures taken while it "
              "is above a few % are disturbed by other work on the machine.")


API_NOTES = [
    "Setup: resil runs with RESIL_ENV=production, a 64-hex-char RESIL_JWT_SECRET, "
    "RESIL_RATE_LIMIT=%(rate_limit)s (Express's limiter gets the same), SQLite in a temp dir; "
    "a user is registered over HTTP (the first user: an admin) and %(posts)s posts are created "
    "with its token. Express serves that same user and posts (same ids, fields and timestamps; "
    "without resil in the run, a generated user and posts of the same sizes), and signs its own token for that user with jsonwebtoken (HS256, the same key).",
    "GET /api/users/me: resil verifies the JWT, then its auth middleware checks that the user "
    "still exists and is active through a per-worker cache (5 s TTL, invalidated in every worker "
    "on any user write), then the handler reads the user from SQLite through the worker's thread "
    "pool. Express verifies with jsonwebtoken given a KeyObject made once (with the secret string, "
    "jsonwebtoken 9 spends hundreds of µs per verify on a failed createPublicKey: "
    "auth0/node-jsonwebtoken#966), then looks the user up in a Map in each worker, in "
    "the middleware and again in the handler (no database, nothing to invalidate).",
    "POST /api/posts with `{\"title\": \"\", \"content\": 5}`: auth as above, then validation "
    "answers 400 VALIDATION_ERROR with two details; no database on either side. Express's checks "
    "are hand-written (cheaper than express-validator), producing resil's envelope and messages. "
    "These 400s are counted as expected, not as errors.",
    "GET /api/posts: public, page 1 of 25. resil counts and reads SQLite through its thread pool "
    "and keeps the page's JSON in a 5 s per-worker cache (dropped on any post write); Express "
    "serialises the page from an in-memory array on every request. A comparison of the whole "
    "stack, not like for like.",
    "Express has the full middleware stack of the health suite (request id, JSON access log, "
    "helmet, cors, rate limit on /api/ with a per-worker MemoryStore where resil's is shared by "
    "all workers, compression, JSON and urlencoded parsing). wrk sends no Accept-Encoding, so "
    "neither server compresses.",
]


def cells(name, s, with_expected=False):
    out = [name, "%.0f" % s["best"], "%.0f" % s["mean"], "%.3f" % s["p50"],
           "%.3f" % s["p99"], "%.1f" % s["cpu_us"], s["rss"], str(s["errors"])]
    if with_expected:
        out.append("" if s["expected"] is None else str(s["expected"]))
    out.append("%.0f" % s["other"])
    return out


def head_for(servers):
    """The column titles of one target's table, and whether it has expected 4xx."""
    exp = [s["expect"] for s in servers.values() if s["expected"] is not None]
    if not exp:
        return HEAD, False
    return HEAD[:-1] + ["expected %ss" % exp[0], HEAD[-1]], True


def ratios(servers, note=None):
    out = []
    r = servers.get("resil")
    if not r:
        return out
    if note is not None:
        e = servers.get("express")
        if e:
            out.append("resil/express req/s (mean) = %.1f (%s)" % (r["mean"] / e["mean"], note))
            out.append("express/resil CPU per request = %.1f" % (e["cpu_us"] / r["cpu_us"]))
        return out
    n, e = servers.get("nginx"), servers.get("express")
    if n:
        out.append("resil/nginx req/s (mean) = %.2f (SPEC target >= 0.70)" % (r["mean"] / n["mean"]))
        out.append("resil p99 / nginx p99 = %.2f (SPEC target <= 1.5)" % (r["p99"] / n["p99"]))
        out.append("resil/nginx CPU per request = %.2f (SPEC target <= 1.5)" % (r["cpu_us"] / n["cpu_us"]))
    if e:
        out.append("resil/express req/s (mean) = %.1f (SPEC target >= 10)" % (r["mean"] / e["mean"]))
    return out


def load_warmup(path):
    """{target: ["server: text", ...]} from run.sh's warm-up check file."""
    out = {}
    if not path or not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 3:
                out.setdefault(parts[0], []).append("%s, %s" % (parts[1], parts[2]))
    return out


def report(tsv, meta_path, warmup_path=None):
    with open(meta_path) as f:
        meta = json.load(f)
    summary = summarise(load_rows(tsv))
    if not summary:
        die("no results to report")
    notes = meta.get("ratio_notes", {})
    warmup = load_warmup(warmup_path)
    api = meta.get("suite") == "api"
    wrk = "wrk -t%s -c%s -d%ss --latency" % (meta["threads"], meta["connections"], meta["duration"])
    # console table
    for target, servers in summary.items():
        head, with_exp = head_for(servers)
        print()
        print("== %s  (%s, %s round(s), %s workers, errors = %s + socket errors)"
              % (target, wrk, meta["rounds"], meta["workers"],
                 "2xx/3xx" if with_exp else "non-2xx"))
        table = [head] + [cells(name, s, with_exp) for name, s in servers.items()]
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        for row in table:
            print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(row, widths))))
        for line in ratios(servers, notes.get(target)):
            print("  " + line)
        for line in warmup.get(target, []):
            print("  unexpected warm-up responses: " + line)
    print()
    print(OTHER_NOTE)
    # markdown
    print()
    print("----- markdown for bench/RESULTS.md -----")
    print()
    print("### %s — %s" % (meta["date"], ", ".join(summary)))
    print()
    print("* Machine: %s, %s, nproc %s" % (meta["uname"], meta["cpu"], meta["nproc"]))
    print("* Command: `%s`" % meta["command"])
    print("* Load: `%s`, %s round(s), servers alternated, 2 s warm-up before each run; "
          "%s workers each" % (wrk, meta["rounds"], meta["workers"]))
    print("* Versions: %s" % meta["versions"])
    if api:
        for note in API_NOTES:
            print("* " + note % meta)
        if meta.get("bodies"):
            print("* Response bytes (checked with curl before the load): %s" % meta["bodies"])
    print("* " + OTHER_NOTE)
    for target, servers in summary.items():
        head, with_exp = head_for(servers)
        print()
        print("%s:" % target)
        print()
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
        for name, s in servers.items():
            print("| " + " | ".join(cells(name, s, with_exp)) + " |")
        rl = ratios(servers, notes.get(target)) + [
            "unexpected warm-up responses: " + w for w in warmup.get(target, [])]
        if rl:
            print()
            for line in rl:
                print("* " + line)
    print()


# --------------------------------------------------------------------- main

def main(argv):
    if len(argv) < 2:
        die(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "port":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            print(s.getsockname()[1])
    elif cmd == "tree" and len(args) == 1:
        print("\n".join(str(p) for p in tree(int(args[0]))))
    elif cmd == "cpu" and len(args) == 1:
        print("%.2f" % cpu_seconds(int(args[0])))
    elif cmd == "rss" and len(args) == 1:
        print(rss(int(args[0])))
    elif cmd == "machine" and not args:
        print(machine())
    elif cmd == "wrk" and len(args) == 1:
        print(parse_wrk(args[0]))
    elif cmd == "nginx-conf" and len(args) >= 3:
        sys.stdout.write(nginx_conf(args[0], args[1], args[2], args[3:]))
    elif cmd == "json-get" and len(args) == 2:
        json_get(args[0], args[1])
    elif cmd == "meta":
        meta = {"ratio_notes": {}}
        for a in args:
            key, value = a.split("=", 1)
            if key.startswith("ratio:"):
                meta["ratio_notes"][key[len("ratio:"):]] = value
            else:
                meta[key] = value
        print(json.dumps(meta))
    elif cmd == "report" and len(args) in (2, 3):
        report(*args)
    else:
        die("bad usage\n" + __doc__)


if __name__ == "__main__":
    main(sys.argv)
