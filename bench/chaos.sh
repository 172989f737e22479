#!/usr/bin/env bash
# chaos.sh - resil under fire: wrk at 64 connections for 20 s against
# GET /health while a worker is killed with SIGKILL every 2 s and one
# zero-downtime reload (SIGHUP) happens halfway. Prints requests/s, socket
# errors and non-2xx responses from wrk, and for every kill the time until
# the replacement worker was ready (from resild's own log). Measures only:
# it never fails on a figure. Loopback only; stops exactly what it started.
#
#   bash bench/chaos.sh [--resild PATH] [--workers N] [--duration S]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RESILD=$ROOT/resild
WORKERS=2
DURATION=20
while [[ $# -gt 0 ]]; do
	case $1 in
	--resild) RESILD=$2; shift 2 ;;
	--workers) WORKERS=$2; shift 2 ;;
	--duration) DURATION=$2; shift 2 ;;
	*) echo "chaos: unknown option $1" >&2; exit 64 ;;
	esac
done
[[ -x $RESILD ]] || { echo "chaos: no resild at $RESILD (build first)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "chaos: wrk is not installed (apt-get install wrk)" >&2; exit 1; }
RESILCTL=$(dirname "$RESILD")/resilctl
TMP=$(mktemp -d /tmp/resil-chaos.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PID=
cleanup() {
	[[ -n $PID ]] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

(cd "$TMP" && RESIL_LOG_FORMAT=json RESIL_LOG_LEVEL=info RESIL_ENV=production \
	RESIL_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') \
	RESIL_CONTROL="$TMP/control.sock" RESIL_DB="sqlite:$TMP/chaos.db" \
	exec "$RESILD" --listen 127.0.0.1:$PORT --workers "$WORKERS" --foreground 2>"$TMP/resild.log") &
PID=$!
for _ in $(seq 100); do
	curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
	sleep 0.1
done

wrk -t2 -c64 -d"${DURATION}s" --latency "http://127.0.0.1:$PORT/health" >"$TMP/wrk.out" 2>&1 &
WRK=$!
kills=0
for ((t = 2; t < DURATION; t += 2)); do
	sleep 2
	if ((t == DURATION / 2)); then
		kill -HUP "$PID"
		echo "t=${t}s: reload (SIGHUP)"
		continue
	fi
	victim=$("$RESILCTL" -s "$TMP/control.sock" status --json | python3 -c '
import json, sys
w = [x for x in json.load(sys.stdin)["workers"] if x["state"] == "ready" and x["pid"]]
print(w[int(sys.argv[1]) % len(w)]["pid"] if w else "")' "$kills")
	if [[ -n $victim ]]; then
		kill -KILL "$victim"
		kills=$((kills + 1))
		echo "t=${t}s: SIGKILL worker pid $victim"
	fi
done
wait "$WRK" || true

echo
grep -E 'Requests/sec|Socket errors|Non-2xx|requests in|99%' "$TMP/wrk.out" || true
python3 - "$TMP/resild.log" <<'PY'
import json, sys
from datetime import datetime
def ts(d):
    return datetime.strptime(d["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
died = {}
gaps = []
for line in open(sys.argv[1], errors="replace"):
    if '"message":"worker died' not in line and '"message":"worker ready"' not in line:
        continue
    try:
        d = json.loads(line)
    except ValueError:
        continue
    if d["message"].startswith("worker died") and "workerId" in d:
        died[d["workerId"]] = ts(d)
    elif d["message"] == "worker ready" and "workerId" in d and d["workerId"] in died:
        gaps.append((ts(d) - died.pop(d["workerId"])) * 1000)
if gaps:
    print("kill -> replacement ready: %d kills, min %.0f ms, max %.0f ms, mean %.0f ms"
          % (len(gaps), min(gaps), max(gaps), sum(gaps) / len(gaps)))
else:
    print("no kill -> ready pairs found in the log")
PY
"$RESILCTL" -s "$TMP/control.sock" status || true
echo "kills sent: $kills"
