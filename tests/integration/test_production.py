#!/usr/bin/env python3
"""Production (SPEC section 6, issue 13): no registration ever yields an
admin, not even the first one on an empty database; the audit trail goes
beside the SQLite database by default."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import Server, run_tests  # noqa: E402


def test_in_production_no_registration_yields_an_admin():
    srv = Server(workers=2, env={"RESIL_ENV": "production", "RESIL_JWT_SECRET": "p" * 40,
                                 "RESIL_RATE_LIMIT": "100000/15m"})
    srv.start()
    try:
        roles = []
        for name in ("first_one", "second_one"):
            st, _, doc = srv.json("POST", "/api/auth/register",
                                  {"username": name, "email": "%s@example.com" % name, "password": "long-secret-1"})
            assert st == 201, doc
            roles.append(doc["data"]["user"]["role"])
        assert roles == ["user", "user"], roles
        assert "became admin" not in srv.logs()
        # The first user cannot promote itself either.
        st, _, doc = srv.json("POST", "/api/auth/login", {"email": "first_one@example.com", "password": "long-secret-1"})
        token = doc["data"]["token"]
        uid = doc["data"]["user"]["id"]
        st, _, doc = srv.json("PATCH", "/api/users/%s" % uid, {"role": "admin"}, {"Authorization": "Bearer " + token})
        assert st == 403 and doc["code"] == "FORBIDDEN", doc
        assert os.path.exists(os.path.join(srv.dir, "audit.log")), os.listdir(srv.dir)
    finally:
        srv.assert_clean_exit()
        srv.cleanup()


if __name__ == "__main__":
    sys.exit(run_tests([test_in_production_no_registration_yields_an_admin]))
