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
#   BENCH_BASE_REF=main bench/ws.sh --suite bus  # scale-out across two hosts,
#                                                # and single-host against main
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
usage: bench/ws.sh [--only idle,fanout,throughput,flood] [--servers LIST]
                   [--suite bus] [--idle N] [--receivers N] [--messages M]
                   [--rate R] [--duration S] [--workers N] [--hosts N]
                   [--host-workers N]
  --only LIST      scenarios to run, in this order (default: all four)
  --servers LIST   of resil, resil-base, resil-sio, resil-bus, socketio,
                   socketio-bus (default: resil,socketio)
  --suite bus      scale-out (issue 17): --only fanout,throughput --servers
                   resil,[resil-base,]resil-bus,socketio-bus unless given
  --idle N         idle connections (default 10000)
  --receivers N    fan-out receivers in one room (default 1000)
  --messages M     fan-out messages (default 200)
  --rate R         fan-out messages per second (default 20)
  --duration S     seconds of the throughput and flood runs (default 10)
  --workers N      worker processes of each single-host server (default 2)
  --hosts N        hosts of resil-bus and socketio-bus (default 2)
  --host-workers N worker processes per host of those (default 1)
environment: RESIL_BIN=/path/to/resild (resilctl beside it) skips the build;
RESIL_BASE_BIN=/path/to/resild is the resil-base server (a build without the
feature under test); BENCH_BASE_REF=REV builds REV for it (git archive, then
configure with CFLAGS="-O2 -g -DNDEBUG", in bench/.build/base-SHA);
BENCH_KEEP_TMP=1 keeps the temp dir with the server logs;
BENCH_RESIL_ENV="RESIL_IO_URING=off ..." adds settings to every resild;
BENCH_REDIS_STATS=1 prints redis-server's INFO commandstats before it stops;
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

# A revision to compare with (resil-base): its own release build, kept
# between runs under bench/.build/base-SHA.
if [[ -z ${RESIL_BASE_BIN:-} && -n ${BENCH_BASE_REF:-} ]]; then
    sha=$(git -C "$ROOT" rev-parse --short "$BENCH_BASE_REF^{commit}" 2>/dev/null) ||
        die "BENCH_BASE_REF=$BENCH_BASE_REF is not a revision of $ROOT"
    base=$BENCH_DIR/.build/base-$sha
    if [[ ! -x $base/resild || ! -x $base/resilctl ]]; then
        echo "bench: building $BENCH_BASE_REF ($sha) in $base (log: $base.log)" >&2
        rm -rf "$base"
        mkdir -p "$base"
        git -C "$ROOT" archive "$sha" | tar -x -C "$base" || die "git archive $sha failed"
        (cd "$base" && timeout 600 autoreconf -fi && ./configure CFLAGS="-O2 -g -DNDEBUG" &&
            timeout 1800 make -j2) >"$base.log" 2>&1 || die "building $sha failed: see $base.log"
    fi
    export RESIL_BASE_BIN=$base/resild
fi
if [[ -n ${RESIL_BASE_BIN:-} ]]; then
    [[ -x $RESIL_BASE_BIN ]] || die "RESIL_BASE_BIN=$RESIL_BASE_BIN is not an executable"
fi

exec node "$WS_DIR/bench.js" "$@"
