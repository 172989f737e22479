#!/usr/bin/env bash
# bench/ws.sh - WebSocket chat benchmark: resil against Socket.io 4 with the
# Redis adapter (SPEC §11), both in cluster mode with the same number of
# workers, in one run.  Installs what is missing (redis-server, node/npm as
# root through apt-get; the npm modules of bench/ws), builds resild when
# needed, then runs bench/ws/bench.js with the arguments given.  Never decides
# pass/fail on a figure: it exits non-zero only when something cannot be
# installed or built, or a server does not start.  See bench/README.md.
#
#   bench/ws.sh                                  # all four scenarios, full size
#   bench/ws.sh --idle 500 --receivers 100 --messages 50 --duration 3
#   bench/ws.sh --only fanout,throughput --servers resil
#   RESIL_BIN=/usr/local/bin/resild bench/ws.sh  # use this binary, no build
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
WS_DIR=$BENCH_DIR/ws

die() {
    echo "bench: $*" >&2
    exit 1
}

for a in "$@"; do
    if [[ $a == -h || $a == --help ]]; then
        cat <<EOF
usage: bench/ws.sh [--only idle,fanout,throughput,flood] [--servers resil,socketio]
                   [--idle N] [--receivers N] [--messages M] [--rate R]
                   [--duration S] [--workers N]
  --only LIST      scenarios to run, in this order (default: all four)
  --servers LIST   resil, socketio or both (default: both, resil first)
  --idle N         idle connections (default 10000)
  --receivers N    fan-out receivers in one room (default 1000)
  --messages M     fan-out messages (default 200)
  --rate R         fan-out messages per second (default 20)
  --duration S     seconds of the throughput and flood runs (default 10)
  --workers N      worker processes of each server (default 2)
environment: RESIL_BIN=/path/to/resild (resilctl beside it) skips the build;
BENCH_KEEP_TMP=1 keeps the temp dir with the server logs;
BENCH_START_TIMEOUT=S waits that long for a server (default 30).
EOF
        exit 0
    fi
done

APT_UPDATED=0
apt_install() {
    ((EUID == 0)) || die "missing: $* (install them, or run as root to let bench/ws.sh apt-get them)"
    command -v apt-get >/dev/null || die "missing: $* (no apt-get here: install them by hand)"
    if ((APT_UPDATED == 0)); then
        echo "bench: apt-get update" >&2
        timeout 600 apt-get update -qq >&2 || die "apt-get update failed"
        APT_UPDATED=1
    fi
    echo "bench: apt-get install -y $*" >&2
    DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get install -y -qq "$@" >&2 ||
        die "apt-get install $* failed"
}

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
((${#missing[@]} == 0)) || apt_install "${missing[@]}"

if [[ ! -d $WS_DIR/node_modules/socket.io || $WS_DIR/package.json -nt $WS_DIR/node_modules/.package-lock.json ]]; then
    echo "bench: npm install in bench/ws" >&2
    (cd "$WS_DIR" && timeout 600 npm install --no-audit --no-fund --loglevel=error >&2) ||
        die "npm install in $WS_DIR failed"
fi

if [[ -n ${RESIL_BIN:-} ]]; then
    [[ -x $RESIL_BIN ]] || die "RESIL_BIN=$RESIL_BIN is not an executable"
elif [[ ! -x $ROOT/resild || ! -x $ROOT/resilctl ]]; then
    if [[ -f $ROOT/Makefile ]]; then
        echo "bench: make -j2 in $ROOT" >&2
        (cd "$ROOT" && timeout 1800 make -j2 >&2) || die "make failed in $ROOT"
    else
        die "no resild in $ROOT: build it first (./configure && make), or set RESIL_BIN"
    fi
fi

exec node "$WS_DIR/bench.js" "$@"
