#!/usr/bin/env python3
"""A route job stops between store calls once its request is abandoned
(issue 12): by the client going away (the access log records 499) or by the
request's deadline (504 at once). Uses the /__test/steps hook: N store round
trips M ms apart in one job, logging how many ran."""
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Server, run_tests  # noqa: E402


def steps_logged(srv, deadline_s=10):
    end = time.time() + deadline_s
    while time.time() < end:
        for line in srv.logs().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("message") == "test hook: steps job finished":
                return rec
        time.sleep(0.1)
    raise AssertionError("the steps job never finished:\n" + srv.logs()[-3000:])


def test_client_gone_stops_the_job_between_store_calls():
    srv = Server(workers=1, env={"RESIL_TEST_HOOKS": "1"})
    srv.start()
    try:
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"GET /__test/steps?n=50&ms=100 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)
        s.close()  # about 5 of the 50 steps have run
        rec = steps_logged(srv)
        assert rec["of"] == 50 and 1 <= rec["steps"] < 25, rec
        access = [json.loads(l) for l in srv.logs().splitlines() if '"/__test/steps' in l and '"status"' in l]
        assert access and access[-1]["status"] == 499, access
    finally:
        srv.assert_clean_exit()
        srv.cleanup()


def test_the_deadline_answers_504_and_stops_the_job():
    srv = Server(workers=1, env={"RESIL_TEST_HOOKS": "1", "RESIL_REQUEST_TIMEOUT": "500ms"})
    srv.start()
    try:
        t0 = time.time()
        st, _, doc = srv.json("GET", "/__test/steps?n=50&ms=100")
        took = time.time() - t0
        assert st == 504 and doc["code"] == "TIMEOUT", (st, doc)
        assert took < 3, took  # answered at the deadline, not after the 5 s of steps
        rec = steps_logged(srv)
        assert rec["steps"] < 25, rec
    finally:
        srv.assert_clean_exit()
        srv.cleanup()


if __name__ == "__main__":
    sys.exit(run_tests([test_client_gone_stops_the_job_between_store_calls,
                        test_the_deadline_answers_504_and_stops_the_job]))
