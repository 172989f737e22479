#!/usr/bin/env python3
"""Trusted proxies (SPEC section 5, issue 13 item 5): the client address
comes from X-Forwarded-For / Forwarded only when the peer is in
RESIL_TRUST_PROXY, as the right-most address not itself trusted; rate
limiting and the access log use it. RateLimit-Policy is sent beside the
other RateLimit headers. A bad RESIL_TRUST_PROXY is a configuration error.

Standard library only; loopback only (the test's own connections come from
127.0.0.1, which is what gets trusted or not).
"""
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import RESILD, Server, run_tests  # noqa: E402

LIMIT = 3


def start(trust):
    env = {"RESIL_RATE_LIMIT": "%d/1m" % LIMIT, "RESIL_LOG_LEVEL": "info"}
    if trust is not None:
        env["RESIL_TRUST_PROXY"] = trust
    srv = Server(workers=1, env=env)
    srv.start()
    return srv


def hit(srv, headers):
    st, h, _ = srv.request("GET", "/api/posts", headers=headers)
    return st, h


def access_ips(srv, marker):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ips = [l.get("ip") for l in srv.log_lines() if l.get("requestId", "").startswith(marker)]
        if ips:
            return ips
        time.sleep(0.05)
    return []


def test_forwarded_client_is_the_rate_limit_key_only_behind_a_trusted_proxy():
    srv = start("127.0.0.1, 10.0.0.0/8")
    try:
        a = {"X-Forwarded-For": "6.6.6.6, 198.51.100.1, 10.1.2.3", "X-Request-ID": "tp-a"}
        for i in range(LIMIT):
            st, h = hit(srv, a)
            assert st == 200, st
            assert h["ratelimit-limit"] == str(LIMIT), h
            assert h["ratelimit-remaining"] == str(LIMIT - 1 - i), h
            assert h["ratelimit-policy"] == "%d;w=60" % LIMIT, h
        st, h = hit(srv, a)
        assert st == 429 and "retry-after" in h, st
        # The spoofable left part changes nothing: same client, same bucket.
        st, _ = hit(srv, {"X-Forwarded-For": "1.1.1.1, 198.51.100.1"})
        assert st == 429, st
        # Another forwarded client has its own bucket.
        st, h = hit(srv, {"X-Forwarded-For": "198.51.100.2", "X-Request-ID": "tp-b"})
        assert st == 200 and h["ratelimit-remaining"] == str(LIMIT - 1), (st, h)
        # Forwarded (RFC 7239) when there is no X-Forwarded-For.
        st, h = hit(srv, {"Forwarded": 'for="[2001:db8::7]:4711";proto=https', "X-Request-ID": "tp-c"})
        assert st == 200 and h["ratelimit-remaining"] == str(LIMIT - 1), (st, h)
        assert access_ips(srv, "tp-a") == ["198.51.100.1"] * (LIMIT + 1)
        assert access_ips(srv, "tp-b") == ["198.51.100.2"]
        assert access_ips(srv, "tp-c") == ["2001:db8::7"]
        srv.assert_clean_exit()
    finally:
        srv.cleanup()


def test_headers_from_an_untrusted_peer_are_ignored():
    srv = start(None)  # the default: trust none
    try:
        for i in range(LIMIT):
            st, h = hit(srv, {"X-Forwarded-For": "198.51.100.%d" % (10 + i), "X-Request-ID": "tp-u%d" % i})
            assert st == 200, st
            assert h["ratelimit-policy"] == "%d;w=60" % LIMIT, h
        # Every forged address shared the peer's bucket.
        st, _ = hit(srv, {"X-Forwarded-For": "198.51.100.99", "Forwarded": "for=192.0.2.1"})
        assert st == 429, st
        assert access_ips(srv, "tp-u0") == ["127.0.0.1"]
        srv.assert_clean_exit()
    finally:
        srv.cleanup()
    srv = start("10.0.0.0/8")  # a list that does not contain the peer
    try:
        for i in range(LIMIT):
            assert hit(srv, {"X-Forwarded-For": "198.51.100.%d" % i})[0] == 200
        assert hit(srv, {"X-Forwarded-For": "198.51.100.50"})[0] == 429
        srv.assert_clean_exit()
    finally:
        srv.cleanup()


def test_bad_trust_proxy_is_a_clear_configuration_error():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESIL_")}
    env["RESIL_TRUST_PROXY"] = "10.0.0.0/33"
    p = subprocess.run([RESILD, "--check-config"], env=env, capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    out = p.stdout + p.stderr
    assert "RESIL_TRUST_PROXY" in out and "10.0.0.0/33" in out, out


if __name__ == "__main__":
    run_tests([test_forwarded_client_is_the_rate_limit_key_only_behind_a_trusted_proxy,
               test_headers_from_an_untrusted_peer_are_ignored,
               test_bad_trust_proxy_is_a_clear_configuration_error])
