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


def test_a_fresh_data_directory_gets_the_database_and_the_audit_trail():
    """The README's first command starts on a fresh clone: data/ does not
    exist yet. The worker must come up and audit beside the new database."""
    srv = Server(workers=1)
    srv.env["RESIL_DB"] = "sqlite:%s/fresh/sub/resil.db" % srv.dir
    srv.start()
    try:
        st, _, doc = srv.json("GET", "/health")
        assert st == 200 and doc["status"] == "healthy", doc
        st, _, doc = srv.json("POST", "/api/auth/register",
                              {"username": "first_admin", "email": "a@example.com", "password": "long-secret-1"})
        assert st == 201 and doc["data"]["user"]["role"] == "admin", doc
        st, _, doc = srv.json("GET", "/api/patients", None, {"Authorization": "Bearer " + doc["data"]["token"]})
        assert st == 200, doc
        path = os.path.join(srv.dir, "fresh", "sub", "audit.log")
        assert os.path.exists(path) and "patient.list" in open(path).read()
    finally:
        srv.assert_clean_exit()
        srv.cleanup()


if __name__ == "__main__":
    sys.exit(run_tests([test_in_production_no_registration_yields_an_admin,
                        test_a_fresh_data_directory_gets_the_database_and_the_audit_trail]))
