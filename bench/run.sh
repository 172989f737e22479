#!/usr/bin/env bash
# bench/run.sh - load benchmark of resild against the reference servers of
# SPEC §11: nginx answering GET /health from a `return 200` location and
# Express 4 with the enterprise middleware chain in node cluster mode, all with
# the same number of workers, measured with wrk over loopback.  Suites:
# `health` (GET /health against nginx and Express), `api` (GET /api/users/me,
# a POST /api/posts that fails validation, GET /api/posts on SQLite, against
# Express with jsonwebtoken) and `chaos` (runs bench/chaos.sh).  Prints req/s,
# p50/p99 latency, server CPU time per request, worker RSS and errors, then the
# same as markdown for bench/RESULTS.md.  Never decides pass/fail on a timing:
# it exits non-zero only when something cannot be installed or built, a server
# does not start (or dies), answers a target with the wrong status, or wrk
# fails.  See bench/README.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
LIB="$BENCH_DIR/lib/benchlib.py"
BUILD_DIR="$BENCH_DIR/.build"
COMMAND_LINE=bench/run.sh
for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./,=:@%+-]+$ ]]; then COMMAND_LINE+=" $a"; else COMMAND_LINE+=" $(printf '%q' "$a")"; fi
done

DURATION=${DURATION:-10}
WARMUP=2
WORKERS=2
ROUNDS=2
THREADS=2
CONNECTIONS=64
ONLY=
SUITE=health
DURATION_SET=0
START_TIMEOUT=${BENCH_START_TIMEOUT:-30}
# resil clamps a limit to 1048575 per window (RL_LIMIT_MAX), so a long window
# would trip during the api suite; one second at a million is never reached.
RATE_LIMIT=${BENCH_RATE_LIMIT:-1000000/1s}
TARGET_PATHS=()
TARGET_SCRIPTS=()
# Loads of the api suite (one entry per target; see api_targets).
T_LABEL=() T_PATH=() T_SCRIPT=() T_EXPECT=() T_METHOD=() T_BODY=() T_AUTH=()
API_SCRIPT=$BENCH_DIR/wrk/api.lua
CHECK_WARMUP=0
# Content of each benchmark post (the same text as Express's generated posts).
POST_CONTENT='This post was created by bench/run.sh to give GET /api/posts a realistic page of content: a few sentences of plain text, long enough that serialising the list costs something, short enough to stay a typical blog teaser. '
API_POSTS=30

# A /health body of resil's shape, used when resil is not part of the run.
PLACEHOLDER_BODY='{"status":"healthy","uptime":12.345678901,"timestamp":"2026-01-01T00:00:00.000Z","version":"0.1.0","checks":{"database":"connected","workers":{"total":2,"ready":2},"circuits":{}}}'

usage() {
    cat <<EOF
usage: bench/run.sh [options]
  --suite NAME        health (default): GET /health against nginx and Express;
                      api: GET /api/users/me, POST /api/posts failing validation
                      (400) and GET /api/posts (SQLite, $API_POSTS posts) against Express;
                      chaos: bench/chaos.sh (kill -9 and reload under load)
  --duration S        seconds per measured wrk run (default \$DURATION or 10;
                      for chaos, passed on to chaos.sh only when given)
  --workers N         worker processes for every server (default 2)
  --rounds R          rounds; servers alternate within a round (default 2)
  --only LIST         comma-separated subset of resil,nginx,express (default: all
                      of the suite's: health resil,nginx,express; api resil,express)
  --path P            URL path to load (repeatable; default /health; health suite)
  --script FILE       wrk Lua script for the preceding --path (POST bodies, headers)
  --connections C     wrk connections (default 64)
  --threads T         wrk threads (default 2)
  -h, --help          this text
environment: RESIL_BIN=/path/to/resild skips the build; BENCH_LOG_DIR=DIR keeps
server logs there (default: discarded); BENCH_KEEP_TMP=1 keeps the temp dir.
EOF
}

die() {
    echo "bench: $*" >&2
    exit 1
}

is_uint() {
    [[ $1 =~ ^[1-9][0-9]*$ ]]
}

# ------------------------------------------------------------------ options

while (($#)); do
    case $1 in
        --suite) SUITE=${2:-}; shift 2 ;;
        --duration) DURATION=${2:-}; DURATION_SET=1; shift 2 ;;
        --workers) WORKERS=${2:-}; shift 2 ;;
        --rounds) ROUNDS=${2:-}; shift 2 ;;
        --only) ONLY=${2:-}; shift 2 ;;
        --connections) CONNECTIONS=${2:-}; shift 2 ;;
        --threads) THREADS=${2:-}; shift 2 ;;
        --path)
            [[ ${2:-} == /* ]] || die "--path needs a path starting with /"
            TARGET_PATHS+=("$2"); TARGET_SCRIPTS+=(""); shift 2 ;;
        --script)
            [[ -r ${2:-} ]] || die "--script: cannot read '${2:-}'"
            ((${#TARGET_PATHS[@]})) || { TARGET_PATHS+=("/health"); TARGET_SCRIPTS+=(""); }
            TARGET_SCRIPTS[${#TARGET_SCRIPTS[@]}-1]=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
            shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done
for v in DURATION WORKERS ROUNDS CONNECTIONS THREADS; do
    is_uint "${!v}" || die "--${v,,} needs a positive integer, got '${!v}'"
done
case $SUITE in
    health)
        [[ -n $ONLY ]] || ONLY=resil,nginx,express
        ((${#TARGET_PATHS[@]})) || { TARGET_PATHS=("/health"); TARGET_SCRIPTS=(""); } ;;
    api|chaos)
        ((${#TARGET_PATHS[@]} == 0)) || die "--path and --script belong to the health suite"
        if [[ $SUITE == chaos ]]; then
            [[ -z $ONLY || $ONLY == resil ]] || die "the chaos suite runs resil only"
            ONLY=resil
        fi
        [[ -n $ONLY ]] || ONLY=resil,express ;;
    *) die "--suite: unknown suite '$SUITE' (health, api, chaos)" ;;
esac
IFS=, read -r -a LIST <<<"$ONLY"
declare -A WANT=()
SERVERS=()
for s in "${LIST[@]}"; do
    case $s in
        resil|nginx|express) [[ -n ${WANT[$s]:-} ]] || SERVERS+=("$s"); WANT[$s]=1 ;;
        *) die "--only: unknown server '$s' (resil, nginx, express)" ;;
    esac
done
((${#SERVERS[@]})) || die "--only needs at least one server"
[[ $SUITE != api || -z ${WANT[nginx]:-} ]] || die "nginx is not part of the api suite (resil, express)"

# ------------------------------------------------------ temp dir and cleanup

declare -A PID_OF=() PORT_OF=() TOKEN_OF=()
STARTED=()
# HS256 key of resil and, for the api suite, of Express: 64 hex characters.
JWT_SECRET=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
WRK_PID=
TMP=$(mktemp -d "${TMPDIR:-/tmp}/resil-bench.XXXXXX")

proc_state() {  # PID -> one-letter state, empty when gone
    local line
    read -r line 2>/dev/null <"/proc/$1/stat" || return 0
    line=${line##*) }
    printf '%s' "${line%% *}"
}

stop_pid() {  # stop one server we started and whatever it forked
    local pid=$1 kids i state
    kids=$(python3 "$LIB" tree "$pid" 2>/dev/null | tail -n +2 || true)
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        state=$(proc_state "$pid")
        [[ -z $state || $state == Z ]] && break
        sleep 0.1
    done
    state=$(proc_state "$pid")
    if [[ -n $state && $state != Z ]]; then
        echo "bench: pid $pid did not stop within 10 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for i in $kids; do
        state=$(proc_state "$i")
        if [[ -n $state && $state != Z ]]; then kill -KILL "$i" 2>/dev/null || true; fi
    done
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    if [[ -n $WRK_PID ]]; then
        kill -TERM "$WRK_PID" 2>/dev/null || true
        wait "$WRK_PID" 2>/dev/null || true
    fi
    for pid in "${STARTED[@]}"; do
        stop_pid "$pid"
    done
    if [[ ${BENCH_KEEP_TMP:-0} == 1 ]]; then
        echo "bench: kept $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------- packages

APT_UPDATED=0
apt_install() {
    ((EUID == 0)) || die "missing: $* (install with: apt-get install -y $*, or run as root)"
    command -v apt-get >/dev/null || die "missing: $* and no apt-get to install them"
    if ((APT_UPDATED == 0)); then
        apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    echo "bench: installing $*" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null ||
        die "apt-get install $* failed"
}

find_nginx() {
    command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true
}

ensure_packages() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v curl >/dev/null || missing+=(curl)
    command -v python3 >/dev/null || missing+=(python3)
    if [[ -n ${WANT[nginx]:-} && -z $(find_nginx) ]]; then missing+=(nginx-light); fi
    if [[ -n ${WANT[express]:-} ]]; then
        command -v node >/dev/null || missing+=(nodejs)
        command -v npm >/dev/null || missing+=(npm)
    fi
    if [[ -n ${WANT[resil]:-} && -z ${RESIL_BIN:-} && -f $ROOT/scripts/install-deps.sh ]]; then
        # the project's own list of build dependencies
        sh "$ROOT/scripts/install-deps.sh" || die "scripts/install-deps.sh failed"
    elif [[ -n ${WANT[resil]:-} && -z ${RESIL_BIN:-} ]]; then
        command -v autoreconf >/dev/null || missing+=(autoconf automake libtool)
        command -v make >/dev/null && command -v cc >/dev/null || missing+=(build-essential)
        command -v pkg-config >/dev/null || missing+=(pkg-config)
        if ((EUID == 0)) && command -v dpkg-query >/dev/null; then
            local p
            for p in libevent-dev libyajl-dev libmongoc-dev libbson-dev libsodium-dev \
                     libsqlite3-dev zlib1g-dev nettle-dev check libwslay-dev node-llhttp; do
                dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
                    missing+=("$p")
            done
        fi
    fi
    ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
}

ensure_express_modules() {
    local dir="$BENCH_DIR/express"
    if [[ ! -d $dir/node_modules/express || $dir/package.json -nt $dir/node_modules/.package-lock.json ]]; then
        echo "bench: npm install in bench/express" >&2
        (cd "$dir" && timeout 600 npm install --no-audit --no-fund --loglevel=error >&2) ||
            die "npm install in $dir failed"
    fi
}

# -------------------------------------------------------------------- build

build_resil() {
    if [[ -n ${RESIL_BIN:-} ]]; then
        [[ -x $RESIL_BIN ]] || die "RESIL_BIN=$RESIL_BIN is not an executable"
        RESILD=$RESIL_BIN
        return
    fi
    [[ -f $ROOT/configure.ac ]] || die "no configure.ac in $ROOT"
    if [[ ! -x $ROOT/configure ]]; then
        echo "bench: autoreconf -fi" >&2
        (cd "$ROOT" && autoreconf -fi >"$TMP/autoreconf.log" 2>&1) ||
            { tail -n 30 "$TMP/autoreconf.log" >&2; die "autoreconf failed"; }
    fi
    # Out of tree in bench/.build.  A source tree configured in place blocks
    # that (and its config.h would leak into the build), so then build in a
    # copy of the sources, bench/.build/src, leaving the developer's build alone.
    local dir=$BUILD_DIR configure=../../configure log=$BUILD_DIR/build.log
    mkdir -p "$BUILD_DIR"
    if [[ -f $ROOT/config.status ]]; then
        dir=$BUILD_DIR/src configure=./configure
        echo "bench: $ROOT is configured in place; building from a copy in $dir" >&2
        mkdir -p "$dir"
        # what configure generated in place (Makefile, the config header) stays out
        local generated=() f
        # shellcheck disable=SC2013  # the lists are space-separated words
        for f in $(sed -n 's/^config_\(files\|headers\)="\(.*\)"$/\2/p' "$ROOT/config.status"); do
            generated+=("--exclude=./${f%%:*}")
        done
        tar -C "$ROOT" -cf - "${generated[@]}" --exclude-vcs --exclude=./bench/.build --exclude=node_modules \
            --exclude=./data --exclude=autom4te.cache --exclude=.deps --exclude=.libs \
            --exclude=.dirstamp --exclude='*.o' --exclude='*.lo' --exclude='*.la' --exclude='*.a' \
            --exclude='*.log' --exclude='*.trs' --exclude=Makefile --exclude=./config.status \
            --exclude=./config.h --exclude=./stamp-h1 --exclude=./libtool . |
            tar -C "$dir" -xf - || die "cannot copy the sources to $dir"
    fi
    echo "bench: building resild (-O2 -g -DNDEBUG) in $dir, log in $log" >&2
    {
        if [[ ! -f $dir/Makefile ]]; then
            (cd "$dir" && "$configure" CFLAGS="-O2 -g -DNDEBUG")
        fi &&
        (cd "$dir" && timeout 1800 make -j2)
    } >"$log" 2>&1 || { tail -n 40 "$log" >&2; die "building resild failed (log: $log)"; }
    RESILD=$dir/resild
    if [[ ! -x $RESILD ]]; then
        RESILD=$(find "$dir" -name resild -type f -perm -u+x -print -quit)
        [[ -n $RESILD ]] || die "the build produced no resild binary under $dir"
    fi
}

# ------------------------------------------------------------------ servers

free_port() {
    python3 "$LIB" port
}

log_for() {  # NAME -> where the server's stderr goes
    if [[ -n ${BENCH_LOG_DIR:-} ]]; then
        mkdir -p "$BENCH_LOG_DIR"
        echo "$BENCH_LOG_DIR/$1.log"
    else
        echo /dev/null
    fi
}

wait_health() {  # NAME URL: until it answers 200, bounded; dies otherwise
    local name=$1 url=$2 pid=${PID_OF[$1]} deadline=$((SECONDS + START_TIMEOUT)) code state
    while ((SECONDS < deadline)); do
        state=$(proc_state "$pid")
        if [[ -z $state || $state == Z ]]; then
            wait "$pid" 2>/dev/null || true
            return 1
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
        [[ $code == 200 ]] && return 0
        sleep 0.2
    done
    return 1
}

start_bg() {  # NAME STDERR CMD...: start one server in the background
    local name=$1 errlog=$2
    shift 2
    "$@" </dev/null >/dev/null 2>"$errlog" &
    PID_OF[$name]=$!
    STARTED+=("$!")
}

fetch_reference() {  # NAME: save the /health head and body of a running server
    local port=${PORT_OF[$1]}
    curl -s --max-time 5 -D "$TMP/$1.head" -o "$TMP/$1.body" "http://127.0.0.1:$port/health" ||
        die "$1: cannot fetch /health"
}

start_resil() {
    local port dir="$TMP/resil" out v unset=()
    port=$(free_port)
    mkdir -p "$dir"
    for v in $(compgen -e); do
        [[ $v == RESIL_* ]] && unset+=(-u "$v")
    done
    local run=(env "${unset[@]}"
        RESIL_ENV=production RESIL_JWT_SECRET="$JWT_SECRET" RESIL_LOG_LEVEL=info
        RESIL_LOG_FORMAT=json RESIL_CONTROL="$dir/control.sock"
        RESIL_RATE_LIMIT="$RATE_LIMIT" RESIL_SHUTDOWN_TIMEOUT=5s RESIL_DB="sqlite://$dir/bench.db"
        "$RESILD" --listen "127.0.0.1:$port" --workers "$WORKERS"
        --db "sqlite://$dir/bench.db" --foreground)
    if ! out=$(timeout 10 "${run[@]}" --check-config 2>&1); then
        echo "bench: warning: resild --check-config failed:" >&2
        printf '%s\n' "$out" | head -n 20 >&2
    fi
    PORT_OF[resil]=$port
    start_bg resil "$(log_for resil)" "${run[@]}"
    wait_health resil "http://127.0.0.1:$port/health" ||
        die "resil did not answer GET /health with 200 within ${START_TIMEOUT}s (rerun with BENCH_LOG_DIR=/tmp/benchlogs to keep its log)"
    fetch_reference resil
}

# Express's key, and (when resil set them up) resil's user and posts to serve.
EXPRESS_ENV=(BENCH_JWT_SECRET="$JWT_SECRET")

start_express() {
    local port body
    port=$(free_port)
    if [[ -f $TMP/resil.body ]]; then body=$(<"$TMP/resil.body"); else body=$PLACEHOLDER_BODY; fi
    PORT_OF[express]=$port
    start_bg express "$(log_for express)" env "${EXPRESS_ENV[@]}" NODE_ENV=production PORT="$port" \
        BENCH_WORKERS="$WORKERS" BENCH_HEALTH_BODY="$body" BENCH_RATE_LIMIT="$RATE_LIMIT" \
        node "$BENCH_DIR/express/server.js"
    wait_health express "http://127.0.0.1:$port/health" ||
        die "express did not answer GET /health with 200 within ${START_TIMEOUT}s (rerun with BENCH_LOG_DIR=/tmp/benchlogs to keep its log)"
    fetch_reference express
}

start_nginx() {
    local port nginx dir="$TMP/nginx" head body user_line out
    nginx=$(find_nginx)
    port=$(free_port)
    mkdir -p "$dir"
    # Same body and headers as resil; without resil, resil's shape and helmet's headers.
    if [[ -f $TMP/resil.body ]]; then
        head=$TMP/resil.head body=$TMP/resil.body
    else
        printf '%s' "$PLACEHOLDER_BODY" >"$dir/placeholder.body"
        body=$dir/placeholder.body
        if [[ -f $TMP/express.head ]]; then head=$TMP/express.head; else head=$BENCH_DIR/nginx/default-headers.txt; fi
    fi
    user_line="# running as uid $EUID"
    python3 "$LIB" nginx-conf "$BENCH_DIR/nginx/nginx.conf.in" "$head" "$body" \
        "USER_LINE=$user_line" "WORKERS=$WORKERS" "PREFIX=$dir" "LISTEN=127.0.0.1:$port" \
        >"$dir/nginx.conf" || die "cannot generate the nginx config"
    out=$("$nginx" -t -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" 2>&1) ||
        { printf '%s\n' "$out" >&2; die "nginx rejected $dir/nginx.conf"; }
    PORT_OF[nginx]=$port
    start_bg nginx "$(log_for nginx)" "$nginx" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log"
    wait_health nginx "http://127.0.0.1:$port/health" ||
        { tail -n 20 "$dir/error.log" >&2 || true; die "nginx did not answer GET /health with 200 within ${START_TIMEOUT}s"; }
    fetch_reference nginx
}

# ---------------------------------------------------------------- api suite

# The three loads; the wrk script wrk/api.lua reads BENCH_METHOD, BENCH_BODY
# and BENCH_TOKEN (sent as `Authorization: Bearer`) from its environment.
api_targets() {
    T_LABEL=("GET /api/users/me" "POST /api/posts (invalid body: 400)" "GET /api/posts ($API_POSTS posts, resil on SQLite)")
    T_PATH=(/api/users/me /api/posts /api/posts)
    T_SCRIPT=("$API_SCRIPT" "$API_SCRIPT" "$API_SCRIPT")
    T_EXPECT=(2xx 400 2xx)
    T_METHOD=(GET POST GET)
    T_BODY=("" '{"title": "", "content": 5}' "")
    T_AUTH=(1 1 0)
}

# api_call SERVER METHOD PATH BODY TOKEN OUTFILE -> prints the HTTP status
api_call() {
    local args=(-s --max-time 30 -o "$6" -w '%{http_code}' -X "$2")
    [[ -n $4 ]] && args+=(-H 'Content-Type: application/json' --data-binary "$4")
    [[ -n $5 ]] && args+=(-H "Authorization: Bearer $5")
    curl "${args[@]}" "http://127.0.0.1:${PORT_OF[$1]}$3" || true
}

json_get() {  # FILE DOTTED.PATH -> the value (strings raw, others as JSON)
    python3 "$LIB" json-get "$1" "$2"
}

# Register the benchmark user on resil (the first user: an admin), keep its
# token, create the posts, and save the user and the list for Express.
setup_resil_api() {
    local dir="$TMP/api" code password i body
    mkdir -p "$dir"
    password=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
    code=$(api_call resil POST /api/auth/register \
        "{\"username\":\"benchuser\",\"email\":\"bench@example.com\",\"password\":\"$password\"}" "" "$dir/register.json")
    [[ $code == 201 ]] || { cat "$dir/register.json" >&2; echo >&2; die "resil: POST /api/auth/register answered $code, not 201"; }
    TOKEN_OF[resil]=$(json_get "$dir/register.json" data.token) || die "resil: no token in the register answer"
    json_get "$dir/register.json" data.user >"$dir/user.json" || die "resil: no user in the register answer"
    for ((i = 1; i <= API_POSTS; i++)); do
        body="{\"title\":\"Benchmark post $i\",\"content\":\"$POST_CONTENT$i\",\"category\":\"bench\"}"
        code=$(api_call resil POST /api/posts "$body" "${TOKEN_OF[resil]}" "$dir/post.json")
        [[ $code == 201 ]] || { cat "$dir/post.json" >&2; echo >&2; die "resil: POST /api/posts answered $code, not 201"; }
    done
    code=$(api_call resil GET "/api/posts?limit=100" "" "" "$dir/list.json")
    [[ $code == 200 ]] || die "resil: GET /api/posts answered $code, not 200"
    json_get "$dir/list.json" data >"$dir/posts.json" || die "resil: no data in the GET /api/posts answer"
    EXPRESS_ENV+=(BENCH_USER_FILE="$dir/user.json" BENCH_POSTS_FILE="$dir/posts.json")
}

# Express's user lives in its Map: sign a token for it with the same key.
setup_express_api() {
    TOKEN_OF[express]=$(env "${EXPRESS_ENV[@]}" node "$BENCH_DIR/express/server.js" --print-token) ||
        die "express: cannot sign a token (node server.js --print-token)"
}

# Each target once on each server with curl: the status must be the expected
# one (400 VALIDATION_ERROR for the invalid post); records the body sizes.
check_api_targets() {
    local i s code token out want
    API_BODIES=
    for i in "${!T_LABEL[@]}"; do
        [[ -n $API_BODIES ]] && API_BODIES+="; "
        API_BODIES+="${T_LABEL[$i]}"
        for s in "${SERVERS[@]}"; do
            token=
            [[ ${T_AUTH[$i]} == 1 ]] && token=${TOKEN_OF[$s]}
            out="$TMP/check.$s.$i.json"
            code=$(api_call "$s" "${T_METHOD[$i]}" "${T_PATH[$i]}" "${T_BODY[$i]}" "$token" "$out")
            want=${T_EXPECT[$i]}
            if [[ $want == 2xx ]]; then want=200; fi
            if [[ $code != "$want" ]] || { [[ $want == 400 ]] && ! grep -q '"code":"VALIDATION_ERROR"' "$out"; }; then
                head -c 600 "$out" >&2; echo >&2
                die "$s answered ${T_LABEL[$i]} with $code, expected $want"
            fi
            API_BODIES+=" $s $(wc -c <"$out")"
        done
    done
    echo "bench: response bytes: $API_BODIES" >&2
}

# ------------------------------------------------------------------ chaos

run_chaos() {
    local args=(--resild "$RESILD" --workers "$WORKERS") rc=0 pid
    [[ -x $(dirname "$RESILD")/resilctl ]] || die "chaos.sh needs resilctl next to $RESILD"
    ((DURATION_SET)) && args+=(--duration "$DURATION")
    echo "bench: bash bench/chaos.sh ${args[*]}" >&2
    bash "$BENCH_DIR/chaos.sh" "${args[@]}" &
    pid=$!
    STARTED+=("$pid")
    wait "$pid" || rc=$?
    local kept=() p
    for p in "${STARTED[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
    STARTED=("${kept[@]}")  # reaped: never signal that pid again
    ((rc == 0)) || die "bench/chaos.sh exited with status $rc"
}

# -------------------------------------------------------------------- load

RESULTS_TSV=$TMP/results.tsv
ROUND=0

run_wrk() {  # SECONDS OUTFILE URL [wrk args...]: one wrk run, dies if wrk fails
    local secs=$1 out=$2 url=$3 rc=0
    shift 3
    timeout -k 5 $((secs + 30)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${secs}s" --latency \
        "$@" "$url" >"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || rc=$?
    WRK_PID=
    ((rc == 0)) || { cat "$out" >&2; die "wrk failed (status $rc) against $url"; }
}

children_cpu() {  # user+sys seconds of this shell's reaped children (wrk, via timeout)
    times >"$TMP/times"
    awk 'NR == 2 {
        t = 0
        for (i = 1; i <= 2; i++) { split($i, p, "m"); sub("s", "", p[2]); t += p[1] * 60 + p[2] }
        printf "%.3f", t }' "$TMP/times"
}

# warmup_check SERVER TARGET EXPECT FILE: the status tally wrk/api.lua printed
# for the warm-up; anything but the expected status is reported (stderr and
# the markdown), since the measured run only counts non-2xx responses.
warmup_check() {
    local server=$1 target=$2 expect=$3 file=$4 bad
    bad=$(awk -v e="$expect" '$1 == "bench-status" {
        ok = (e == "2xx") ? ($2 >= 200 && $2 < 300) : ($2 == e)
        if (!ok) printf "%s%s x %s", (n++ ? ", " : ""), $3, $2 }' "$file")
    grep -q '^bench-status ' "$file" || bad="no status tally from wrk/api.lua"
    if [[ -n $bad ]]; then
        echo "bench: warning: $server, $target, warm-up: unexpected responses: $bad" >&2
        printf '%s\t%s\t%s\n' "$target" "$server" "round $ROUND warm-up: $bad" >>"$TMP/warmup.tsv"
    fi
}

# bench_target SERVER TARGET EXPECT URL [wrk args...]: warm-up, then one
# measured run with the server tree's CPU time around it and its workers' RSS
# after it.  EXPECT is 2xx, or a status (400) whose responses are counted as
# expected rather than as errors.  New loads (paths, POST bodies via
# `-s script.lua`, headers via `-H`) only need another call of this.
bench_target() {
    local server=$1 target=$2 expect=$3 url=$4
    shift 4
    local pid=${PID_OF[$server]} out="$TMP/wrk.$server.$ROUND.${#STARTED[@]}.$RANDOM"
    local cpu0 cpu1 mach0 mach1 wrk0 wrk1 other parsed rss state rps p50 p99 reqs non2xx sockerr
    if ((CHECK_WARMUP)); then
        BENCH_CHECK=1 run_wrk "$WARMUP" "$out.warmup" "$url" "$@"
        warmup_check "$server" "$target" "$expect" "$out.warmup"
    else
        run_wrk "$WARMUP" "$out.warmup" "$url" "$@"
    fi
    cpu0=$(python3 "$LIB" cpu "$pid")
    mach0=$(python3 "$LIB" machine)
    wrk0=$(children_cpu)
    run_wrk "$DURATION" "$out" "$url" "$@"
    wrk1=$(children_cpu)
    mach1=$(python3 "$LIB" machine)
    cpu1=$(python3 "$LIB" cpu "$pid")
    # CPU the rest of the machine used meanwhile, in % of all cores
    other=$(awk -v m0="$mach0" -v m1="$mach1" -v w0="$wrk0" -v w1="$wrk1" -v c0="$cpu0" \
        -v c1="$cpu1" -v n="$(nproc)" 'BEGIN {
        split(m0, a, " "); split(m1, b, " "); wall = b[2] - a[2]
        o = (b[1] - a[1]) - (w1 - w0) - (c1 - c0)
        printf "%.1f", (o > 0 && wall > 0) ? 100 * o / (n * wall) : 0 }')
    state=$(proc_state "$pid")
    [[ -n $state && $state != Z ]] || die "$server exited during the benchmark"
    rss=$(python3 "$LIB" rss "$pid")
    parsed=$(python3 "$LIB" wrk "$out") || die "cannot read wrk's output for $server"
    read -r rps p50 p99 reqs non2xx sockerr <<<"$parsed"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$server" "$ROUND" \
        "$rps" "$p50" "$p99" "$reqs" "$non2xx" "$sockerr" \
        "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')" \
        "${rss%% *}" "${rss#* }" "$other" "$expect" >>"$RESULTS_TSV"
    # with an expected 4xx, wrk's non-2xx count is the expected answers and
    # what is left of the requests (2xx/3xx) is wrong
    local errors=$((non2xx + sockerr)) expected=""
    if [[ $expect != 2xx ]]; then
        errors=$((reqs - non2xx + sockerr)) expected=", $non2xx expected ${expect}s"
    fi
    awk -v r="$ROUND" -v n="$ROUNDS" -v s="$server" -v t="$target" -v rps="$rps" \
        -v p50="$p50" -v p99="$p99" -v q="$reqs" -v c0="$cpu0" -v c1="$cpu1" \
        -v rss="${rss%% *}" -v e="$errors" -v x="$expected" -v o="$other" 'BEGIN {
        printf "bench: round %d/%d %-7s %s: %.0f req/s, p50 %.3f ms, p99 %.3f ms, %.1f us CPU/req, RSS %.1f MiB, %d errors%s, other load %s%%\n",
            r, n, s, t, rps, p50, p99, (c1 - c0) * 1e6 / (q ? q : 1), rss / 1024, e, x, o }' >&2
}

versions() {
    local v=() x
    if [[ -n ${WANT[resil]:-} ]]; then
        x=$("$RESILD" --version 2>&1 | head -n 1 || true)
        [[ $x == resil* ]] || x="resild $x"
        v+=("$x")
    fi
    if [[ -n ${WANT[nginx]:-} ]]; then x=$("$(find_nginx)" -v 2>&1 || true); v+=("${x#nginx version: }"); fi
    if [[ -n ${WANT[express]:-} ]]; then
        x=$(node -p "require('$BENCH_DIR/express/node_modules/express/package.json').version" 2>/dev/null || echo '?')
        if [[ $SUITE == api ]]; then
            x+=" + jsonwebtoken $(node -p "require('$BENCH_DIR/express/node_modules/jsonwebtoken/package.json').version" 2>/dev/null || echo '?')"
        fi
        v+=("node $(node --version) + express $x")
    fi
    x=$(wrk -v 2>&1 | head -n 1 || true)
    v+=("${x%% Copyright*}")
    local IFS=';' joined
    joined="${v[*]}"
    echo "${joined//;/; }"
}

# --------------------------------------------------------------------- main

ensure_packages
[[ -n ${WANT[express]:-} ]] && ensure_express_modules
[[ -n ${WANT[resil]:-} ]] && build_resil

if [[ $SUITE == chaos ]]; then
    run_chaos
    exit 0
fi

if [[ $SUITE == api ]]; then
    api_targets
    CHECK_WARMUP=1
else
    for i in "${!TARGET_PATHS[@]}"; do
        if [[ -n ${TARGET_SCRIPTS[$i]} ]]; then
            T_LABEL+=("${TARGET_PATHS[$i]} (wrk -s $(basename "${TARGET_SCRIPTS[$i]}"))")
        else
            T_LABEL+=("GET ${TARGET_PATHS[$i]}")
        fi
        T_PATH+=("${TARGET_PATHS[$i]}") T_SCRIPT+=("${TARGET_SCRIPTS[$i]}") T_EXPECT+=(2xx)
        T_METHOD+=("") T_BODY+=("") T_AUTH+=(0)
    done
fi

# resil first: nginx and Express copy its /health body (and nginx its headers),
# and in the api suite Express serves the user and posts made on resil.
[[ -n ${WANT[resil]:-} ]] && start_resil
[[ $SUITE == api && -n ${WANT[resil]:-} ]] && setup_resil_api
[[ -n ${WANT[express]:-} ]] && start_express
[[ $SUITE == api && -n ${WANT[express]:-} ]] && setup_express_api
[[ -n ${WANT[nginx]:-} ]] && start_nginx
for s in "${SERVERS[@]}"; do
    printf 'bench: %-7s pid %s on 127.0.0.1:%s, GET /health %s bytes\n' "$s" "${PID_OF[$s]}" \
        "${PORT_OF[$s]}" "$(wc -c <"$TMP/$s.body")" >&2
done
API_BODIES=
[[ $SUITE == api ]] && check_api_targets

: >"$RESULTS_TSV"
: >"$TMP/warmup.tsv"
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    for i in "${!T_LABEL[@]}"; do
        for s in "${SERVERS[@]}"; do
            args=()
            [[ -n ${T_SCRIPT[$i]} ]] && args=(-s "${T_SCRIPT[$i]}")
            token=
            [[ ${T_AUTH[$i]} == 1 ]] && token=${TOKEN_OF[$s]}
            BENCH_METHOD=${T_METHOD[$i]} BENCH_BODY=${T_BODY[$i]} BENCH_TOKEN=$token \
                bench_target "$s" "${T_LABEL[$i]}" "${T_EXPECT[$i]}" \
                "http://127.0.0.1:${PORT_OF[$s]}${T_PATH[$i]}" "${args[@]}"
        done
    done
done

meta=("date=$(date -u '+%Y-%m-%d %H:%M UTC')" "uname=$(uname -srm)"
    "cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)" "nproc=$(nproc)"
    "command=$COMMAND_LINE" "versions=$(versions)" "duration=$DURATION" "rounds=$ROUNDS"
    "workers=$WORKERS" "threads=$THREADS" "connections=$CONNECTIONS" "suite=$SUITE"
    "rate_limit=$RATE_LIMIT" "posts=$API_POSTS" "bodies=$API_BODIES")
if [[ $SUITE == api ]]; then
    meta+=("ratio:${T_LABEL[0]}=target >= 10" "ratio:${T_LABEL[1]}=target >= 10"
        "ratio:${T_LABEL[2]}=whole stack, not like for like: Express lists an in-memory array")
fi
python3 "$LIB" meta "${meta[@]}" >"$TMP/meta.json"
python3 "$LIB" report "$RESULTS_TSV" "$TMP/meta.json" "$TMP/warmup.tsv"
