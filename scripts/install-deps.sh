#!/bin/sh
# install-deps.sh - install the Debian 12 packages resil needs to build and
# test, only those that are missing. Runs as root or through sudo.
set -eu

PKGS="autoconf automake libtool pkg-config make gcc
libevent-dev libyajl-dev libmongoc-dev libbson-dev libsodium-dev check
libsqlite3-dev zlib1g-dev libwslay-dev node-llhttp nettle-dev libcrypt-dev libhiredis-dev liburing-dev
python3 curl procps"
# Extra tools for the test suite (valgrind step, WebSocket client).
if [ "${1:-}" = "--test" ]; then
	PKGS="$PKGS clang-format valgrind python3-websockets clang libclang-rt-14-dev wrk"
	# The OpenAPI test reads YAML; the sandbox test runs resild through
	# setpriv/prlimit (util-linux) and strace, and scores the unit with
	# systemd-analyze; CI builds and installs the Debian package.
	PKGS="$PKGS python3-yaml util-linux strace systemd dpkg-dev debhelper fakeroot"
	# The cross-host bus test (test_bus.py) runs a redis-server of its own.
	PKGS="$PKGS redis-server"
	# node and npm run the npm socket.io-client test; any install will do.
	command -v node >/dev/null 2>&1 || PKGS="$PKGS nodejs"
	command -v npm >/dev/null 2>&1 || PKGS="$PKGS npm"
fi

missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO=sudo
	else
		echo "install-deps: missing packages:$missing (run as root or install sudo)" >&2
		exit 1
	fi
fi
echo "install-deps: installing$missing" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
