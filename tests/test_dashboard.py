"""The dashboard: JSON API and metrics over real HTTP, its safety rules, and the page in a real browser."""

import contextlib
import http.client
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from urllib.parse import quote

try:
    import fcntl  # DevTools, POSIX only
except ImportError:
    fcntl = None

from qctl import dashboard
from qctl import jobs
from qctl.db import RecentRun
from qctl.times import iso
from tests.base import DEADLINE_S, SCRIPT, HomeTestCase, add_job, new_job, run_next, wait_until

XSS_COMMAND = "<img src=x onerror=alert(1)>"
# The command holds no markup; its output does: printf writes <script>alert(2)</script>.
XSS_OUTPUT_COMMAND = r"printf '\074script\076alert(2)\074/script\076\n'"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Ids a path cannot carry as they are: dot segments, URL delimiters, escapes, and plain oddities.
AWKWARD_IDS = (".", "..", "a/b", "../api/status", "q?x=1", "h#frag", "p%41", "100%", "a+b", "sp ace", "ünï")
# Short, so that the tests of the idle timeout take a moment; the default is IDLE_TIMEOUT_S.
TEST_IDLE_TIMEOUT_S = 0.5


class DashboardCase(HomeTestCase):
    read_only = False

    def setUp(self):
        super().setUp()
        self.server = self.serve(read_only=self.read_only)

    def serve(self, **kwargs):
        server = dashboard.make_server(self.db_path, host="127.0.0.1", port=0, **kwargs)
        thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
        thread.start()
        self.addCleanup(server.server_close)
        self.addCleanup(thread.join, DEADLINE_S)
        self.addCleanup(server.shutdown)
        return server

    def request(self, method, path, *, headers=None, server=None):
        server = server or self.server
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=DEADLINE_S)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def raw(self, data, *, server=None):
        """Send `data` on a new connection and read until the server closes it: (status, headers, body)."""
        server = server or self.server
        with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S) as sock:
            sock.sendall(data)
            answer = read_until_closed(sock)
        return parse_answer(answer)

    def get_json(self, path, status=200):
        code, headers, body = self.request("GET", path)
        self.assertEqual(code, status, body)
        self.assertEqual(headers["Content-Type"], "application/json")
        return json.loads(body)

    def page_token(self, server=None):
        code, _, body = self.request("GET", "/", server=server)
        self.assertEqual(code, 200)
        return re.search(r'<meta name="queuectl-token" content="([^"]*)">', body.decode()).group(1)

    def finish(self, job_id, *, fail=False, output=b""):
        """Run the next due job (which must be `job_id`) to an outcome, through the store."""
        run_next(self.store(), job_id, start=time.time(), end=time.time(), error="exit code 1" if fail else None,
                 output=output)

    def dead_job(self, job_id="doomed"):
        self.ok("enqueue", json.dumps({"id": job_id, "command": "exit 1", "max_retries": 0}))
        self.finish(job_id, fail=True)

    def enqueue_many(self, count, **fields):
        """`count` pending jobs j00000, j00001, ... in one batch, through the store."""
        ids = ["j%05d" % n for n in range(count)]
        now = time.time()
        self.store().enqueue([new_job(job_id, now=now, delay=3600, **fields) for job_id in ids], now)
        return ids

    def post(self, path, *, token=True, server=None):
        """POST `path` (with the page's token unless told not to): (status, headers, JSON body)."""
        server = server or self.server
        headers = {dashboard.TOKEN_HEADER: server.token} if token else {}
        code, headers, body = self.request("POST", path, headers=headers, server=server)
        self.assertEqual(headers["Content-Type"], "application/json")
        return code, headers, json.loads(body)


def read_until_closed(sock):
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def parse_answer(answer):
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return int(lines[0].split()[1]), dict(line.split(": ", 1) for line in lines[1:]), body


class ApiTest(DashboardCase):
    def test_api_answers_as_the_cli_prints(self):
        self.dead_job()
        self.ok("enqueue", "--id", "later", "--command", "echo later", "--delay", "1h")
        self.ok("enqueue", "--id", "a/b", "--command", "echo slash", "--delay", "1h")
        self.assertEqual(self.get_json("/api/status"), json.loads(self.ok("status", "--json").stdout))
        self.assertEqual(self.get_json("/api/jobs"), json.loads(self.ok("list", "--json").stdout))
        self.assertEqual(self.get_json("/api/jobs?state=pending&limit=1"),
                         json.loads(self.ok("list", "--state", "pending", "--limit", "1", "--json").stdout))
        newest = self.get_json("/api/jobs?newest=1")
        self.assertEqual([j["id"] for j in newest], ["a/b", "later", "doomed"])
        self.assertEqual(self.get_json("/api/stats"), json.loads(self.ok("stats", "--json").stdout))
        detail = self.get_json("/api/jobs/doomed")
        shown = json.loads(self.ok("show", "doomed", "--json").stdout)
        for run in detail["runs"]:  # the page also gets each run's output tail
            self.assertEqual(run.pop("stdout"), "")
            self.assertEqual(run.pop("stderr"), "")
        self.assertEqual(detail, shown)
        self.assertEqual(self.get_json("/api/jobs/a%2Fb")["command"], "echo slash")

    def test_workers_as_worker_list_prints(self):
        self.assertEqual(self.get_json("/api/workers"), [])

    def test_unknown_paths_ids_and_bad_queries(self):
        for path in ("/nope", "/api", "/api/nope", "/api/jobs/nope", "/api/jobs/%01", "/api/jobs/" + "x" * 300,
                     "/api/jobs/a/b", "/static/../__init__.py", "/static/%2E%2E/__init__.py", "/static/index.html",
                     "/metrics/x"):
            with self.subTest(path=path):
                code, headers, body = self.request("GET", path)
                self.assertEqual(code, 404, body)
                self.assertIn("error", json.loads(body))
        for query in ("state=bogus", "limit=-1", "limit=x"):
            with self.subTest(query=query):
                self.assertIn("error", self.get_json("/api/jobs?" + query, status=400))
        self.assertEqual(self.request("DELETE", "/api/jobs/x")[0], 405)

    def test_metrics(self):
        self.dead_job()
        code, headers, body = self.request("GET", "/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers["Content-Type"].startswith("text/plain; version=0.0.4"))
        text = body.decode()
        for state in jobs.STATES:
            self.assertIn('queuectl_jobs{state="%s"} %d' % (state, 1 if state == "dead" else 0), text)
        self.assertIn('queuectl_runs_total{outcome="failed"} 1', text)
        self.assertIn("queuectl_workers 0", text)
        self.assertIn("queuectl_run_duration_seconds_count 1", text)

    def test_env_values_never_leave(self):
        self.ok("enqueue", json.dumps({"id": "secret", "command": "true", "env": {"API_KEY": "hunter2"}}))
        for path in ("/api/jobs", "/api/jobs/secret", "/", "/metrics", "/api/stats"):
            with self.subTest(path=path):
                self.assertNotIn(b"hunter2", self.request("GET", path)[2])
        self.assertEqual(self.get_json("/api/jobs/secret")["env"], {"API_KEY": "***"})

    def test_survives_a_client_that_hangs_up_mid_response(self):
        # A page of about 4 MB of JSON (1,000 jobs): far more than the socket buffers hold, so the server
        # is mid-write when we reset.
        store = self.store()
        store.enqueue([new_job(command="x" * 4000, delay=3600) for _ in range(2000)], 0)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            for _ in range(3):
                sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=DEADLINE_S)
                sock.sendall(b"GET /api/jobs?limit=0 HTTP/1.0\r\nHost: 127.0.0.1:%d\r\n\r\n" % self.server.port)
                self.assertTrue(sock.recv(1024).startswith(b"HTTP/1.0 200"))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
                sock.close()
            self.assertEqual(self.get_json("/api/status")["jobs"]["pending"], 2000)
        self.assertEqual(err.getvalue(), "")


class PagingTest(DashboardCase):
    def pages(self, path):
        """Every page from `path` on, following each answer's Link rel="next": [(jobs, headers)]."""
        pages = []
        while path:
            code, headers, body = self.request("GET", path)
            self.assertEqual(code, 200, body)
            pages.append((json.loads(body), headers))
            link = headers.get("Link")
            path = re.fullmatch(r'<(/api/jobs\?[^>]*)>; rel="next"', link).group(1) if link else None
            self.assertEqual(link is None, "X-Next-Cursor" not in headers)
            self.assertLess(len(pages), 10)
        return pages

    def test_a_page_holds_at_most_1000_jobs_and_a_cursor_to_the_rest(self):
        ids = self.enqueue_many(2500)
        for limit in ("0", "1000", "1001", "5000", str(2 ** 70)):
            with self.subTest(limit=limit):
                pages = self.pages("/api/jobs?limit=" + limit)
                self.assertEqual([len(page) for page, _ in pages], [1000, 1000, 500])
                self.assertEqual([job["id"] for page, _ in pages for job in page], ids)  # no overlap, no gap
        newest = self.pages("/api/jobs?newest=1&limit=0")
        self.assertEqual([job["id"] for page, _ in newest for job in page], ids[::-1])
        # X-Next-Cursor alone is enough to go on, with the query the client already has.
        first, headers = self.pages("/api/jobs?limit=700")[0]
        code, _, body = self.request("GET", "/api/jobs?limit=700&after=" + headers["X-Next-Cursor"])
        self.assertEqual([job["id"] for job in first + json.loads(body)], ids[:1400])
        # A page that ends exactly at the last job has no next.
        self.assertEqual([len(page) for page, _ in self.pages("/api/jobs?limit=500")], [500] * 5)

    def test_the_cursor_keeps_the_state_filter(self):
        ids = self.enqueue_many(1500)
        self.dead_job("doomed")
        pages = self.pages("/api/jobs?state=pending&limit=0")
        self.assertIn("state=pending", pages[0][1]["Link"])
        self.assertEqual([job["id"] for page, _ in pages for job in page], ids)
        self.assertEqual([job["id"] for job in self.get_json("/api/jobs?state=dead&limit=0")], ["doomed"])

    def test_the_cursor_keeps_the_queue_and_tag_filters(self):
        ids = self.enqueue_many(1200, queue="bulk", tags=["big", "x"])
        self.ok("enqueue", "--id", "other-queue", "--queue", "small", "--tag", "big", "true")
        self.ok("enqueue", "--id", "other-tag", "--queue", "bulk", "--tag", "small", "true")
        pages = self.pages("/api/jobs?queue=bulk&tag=big&limit=0")
        self.assertEqual([len(page) for page, _ in pages], [1000, 200])
        self.assertIn("queue=bulk", pages[0][1]["Link"])
        self.assertIn("tag=big", pages[0][1]["Link"])
        self.assertEqual([job["id"] for page, _ in pages for job in page], ids)

    def test_bad_cursors(self):
        for after in ("x", "-1", "1.5", str(2 ** 63)):
            with self.subTest(after=after):
                self.assertIn("error", self.get_json("/api/jobs?after=" + after, status=400))


class BoundsTest(DashboardCase):
    def setUp(self):
        super().setUp()
        self.server.idle_timeout_s = TEST_IDLE_TIMEOUT_S

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=DEADLINE_S)
        self.addCleanup(sock.close)
        return sock

    def test_the_default_idle_timeout_is_10s(self):
        self.assertEqual(dashboard.IDLE_TIMEOUT_S, 10)
        self.assertEqual(self.serve().idle_timeout_s, 10)

    def test_a_body_over_64k_gets_413_and_changes_nothing(self):
        self.dead_job()
        headers = {dashboard.TOKEN_HEADER: self.page_token(), "Content-Type": "application/octet-stream"}
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=DEADLINE_S)
        self.addCleanup(conn.close)
        # 8 MiB is more than the sockets buffer: it arrives while the server answers, which must
        # read and drop it rather than reset the connection under the client's feet.
        for size in (70 * 1024, 8 * 1024 * 1024):
            with self.subTest(size=size):
                conn.request("POST", "/api/jobs/doomed/retry", body=b"x" * size, headers=headers)
                response = conn.getresponse()
                self.assertEqual(response.status, 413)
                self.assertIn("error", json.loads(response.read()))
                self.assertEqual(self.job("doomed")["state"], jobs.DEAD)
                conn.close()
        conn.request("POST", "/api/jobs/doomed/retry", body=b"x" * dashboard.MAX_BODY_BYTES, headers=headers)
        self.assertEqual(conn.getresponse().status, 200)  # 64 KiB is still fine
        self.assertEqual(self.job("doomed")["state"], jobs.PENDING)

    def test_a_half_sent_request_is_dropped_after_the_idle_timeout(self):
        started = time.monotonic()  # before connecting: the server's clock cannot start earlier
        sock = self.connect()
        sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % self.server.port)  # no blank line
        self.assertEqual(read_until_closed(sock), b"")
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(elapsed, TEST_IDLE_TIMEOUT_S * 0.9)
        self.assertLess(elapsed, TEST_IDLE_TIMEOUT_S + 5)

    def test_a_client_sending_a_byte_now_and_then_is_dropped_too(self):
        # Never silent for the idle timeout, but the request is not whole by then.
        started = time.monotonic()
        sock = self.connect()
        request = b"GET /api/status HTTP/1.1\r\nX-Slow: " + b"x" * 1000
        sent = 0
        while time.monotonic() - started < TEST_IDLE_TIMEOUT_S + 5:
            try:
                sock.sendall(request[sent:sent + 1])
            except OSError:  # the server has closed
                break
            sent += 1
            if select.select([sock], [], [], TEST_IDLE_TIMEOUT_S / 10)[0]:  # wait a little, or for the close
                break
        with contextlib.suppress(ConnectionResetError):
            self.assertEqual(read_until_closed(sock), b"")
        self.assertGreater(sent, 3)
        self.assertLess(time.monotonic() - started, TEST_IDLE_TIMEOUT_S + 5)

    def test_a_body_shorter_than_announced_times_out_and_others_are_served_meanwhile(self):
        # The setUp's 0.5 s is long enough to see the server answer someone else first: that
        # answer, in-process, takes milliseconds.
        self.dead_job()
        started = time.monotonic()
        sock = self.connect()
        sock.sendall(b"POST /api/jobs/doomed/retry HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s: %s\r\n"
                     b"Content-Length: 100\r\n\r\nabc" % (self.server.port, dashboard.TOKEN_HEADER.encode(),
                                                          self.server.token.encode()))
        self.assertEqual(self.get_json("/api/status")["jobs"]["dead"], 1)
        answer = read_until_closed(sock)
        elapsed = time.monotonic() - started
        code, headers, body = parse_answer(answer)
        self.assertEqual(code, 408, answer)
        self.assertEqual(headers["Content-Security-Policy"], dashboard.CSP)
        self.assertIn("error", json.loads(body))
        self.assertGreaterEqual(elapsed, TEST_IDLE_TIMEOUT_S * 0.9)
        self.assertLess(elapsed, TEST_IDLE_TIMEOUT_S + 5)
        self.assertEqual(self.job("doomed")["state"], jobs.DEAD)

    def test_every_answer_carries_the_security_headers(self):
        host = b"Host: 127.0.0.1:%d\r\n" % self.server.port
        requests = {
            400: [b"GET / HTTP/1.1 extra\r\n\r\n", b"GET /api/status HTTP/1.1\r\nHost: evil.example\r\n\r\n",
                  b"POST /api/jobs/x/retry HTTP/1.1\r\n" + host + b"Content-Length: x\r\n\r\n"],
            404: [b"GET /nope HTTP/1.1\r\n" + host + b"\r\n"],
            405: [b"DELETE /api/jobs/x HTTP/1.1\r\n" + host + b"\r\n"],
            411: [b"POST /api/jobs/x/retry HTTP/1.1\r\n" + host + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"],
            413: [b"POST /api/jobs/x/retry HTTP/1.1\r\n" + host + b"Content-Length: 71680\r\n\r\n" + b"x" * 71680],
            414: [b"GET /" + b"x" * 70000 + b" HTTP/1.1\r\n" + host + b"\r\n"],
            431: [b"GET / HTTP/1.1\r\n" + host + b"X-Big: " + b"x" * 70000 + b"\r\n\r\n"],
            501: [b"BOGUS / HTTP/1.1\r\n" + host + b"\r\n"],
            505: [b"GET / HTTP/2.0\r\n" + host + b"\r\n", b"GET /\r\n\r\n"],  # the last one is HTTP/0.9
        }
        for status, variants in requests.items():
            for data in variants:
                with self.subTest(status=status, request=data[:40]):
                    code, headers, body = self.raw(data)
                    self.assertEqual(code, status, body)
                    for name, value in dashboard.SECURITY_HEADERS:
                        self.assertEqual(headers.get(name), value, name)
                    self.assertEqual(headers["Content-Type"], "application/json")
                    self.assertIn("error", json.loads(body))


class AwkwardIdTest(DashboardCase):
    def test_any_id_opens_and_retries_by_query(self):
        token = self.page_token()
        for job_id in AWKWARD_IDS:
            self.dead_job(job_id)
        for job_id in AWKWARD_IDS:
            with self.subTest(id=job_id):
                query = "?id=" + quote(job_id, safe="")
                self.assertEqual(self.get_json("/api/job" + query)["id"], job_id)
                # A client that does not normalise paths may name it there too.
                self.assertEqual(self.get_json("/api/jobs/" + quote(job_id, safe=""))["id"], job_id)
                code, _, body = self.request("POST", "/api/job/retry" + query, headers={dashboard.TOKEN_HEADER: token})
                self.assertEqual(code, 200, body)
                self.assertEqual(json.loads(body)["id"], job_id)
                self.assertEqual(self.job(job_id)["state"], jobs.PENDING)

    def test_the_query_form_refuses_what_the_path_form_does(self):
        self.dead_job()
        self.assertIn("error", self.get_json("/api/job", status=400))
        self.assertIn("error", self.get_json("/api/job?id=nope", status=404))
        self.assertIn("error", self.get_json("/api/job?id=%01", status=404))
        code, _, _ = self.request("POST", "/api/job/retry?id=doomed")
        self.assertEqual(code, 403)  # the token rule holds here too
        self.assertEqual(self.job("doomed")["state"], jobs.DEAD)

    def test_the_page_names_every_id_in_the_query(self):
        script = self.request("GET", "/static/app.js")[2].decode()
        self.assertNotIn('"/api/jobs/" +', script)  # a path the browser would resolve "." and ".." in
        self.assertIn('"?id=" + encodeURIComponent(id)', script)


class QueuesAndFiltersTest(DashboardCase):
    def enqueue_mix(self):
        self.ok("enqueue", "--id", "a1", "--queue", "a", "--tag", "x", "--tag", "y", "--delay", "1h", "echo a1")
        self.ok("enqueue", "--id", "a2", "--queue", "a", "--delay", "1h", "echo a2")
        self.ok("enqueue", "--id", "b1", "--queue", "b", "--tag", "x", "--delay", "1h", "echo b1")
        self.ok("enqueue", "--id", "d1", "--tag", "y", "--delay", "1h", "echo d1")
        self.ok("cancel", "a2")

    def test_queues_as_queue_list_prints(self):
        self.assertEqual(self.get_json("/api/queues"), [])
        self.enqueue_mix()
        self.ok("queue", "pause", "a")
        self.ok("queue", "set", "b", "--concurrency", "2")
        self.ok("queue", "set", "idle", "--concurrency", "1")  # a queue no job names yet
        queues = self.get_json("/api/queues")
        self.assertEqual(queues, json.loads(self.ok("queue", "list", "--json").stdout))
        self.assertEqual([(q["name"], q["paused"], q["concurrency"]) for q in queues],
                         [("a", True, 0), ("b", False, 2), ("default", False, 0), ("idle", False, 1)])
        counts = dict.fromkeys(jobs.STATES, 0)
        counts.update(pending=1, cancelled=1)
        self.assertEqual(queues[0]["jobs"], counts)

    def test_jobs_filter_by_queue_tag_and_state_as_list_does(self):
        self.enqueue_mix()
        for query, argv in (("queue=a", ["--queue", "a"]), ("tag=x", ["--tag", "x"]),
                            ("queue=a&tag=y", ["--queue", "a", "--tag", "y"]),
                            ("queue=a&state=cancelled", ["--queue", "a", "--state", "cancelled"]),
                            ("tag=y&state=pending", ["--tag", "y", "--state", "pending"]),
                            ("queue=nobody", ["--queue", "nobody"])):
            with self.subTest(query=query):
                self.assertEqual(self.get_json("/api/jobs?" + query),
                                 json.loads(self.ok("list", "--json", *argv).stdout))
        self.assertEqual([j["id"] for j in self.get_json("/api/jobs?tag=x&newest=1")], ["b1", "a1"])
        self.assertEqual(self.get_json("/api/jobs?queue=a&tag=x")[0]["tags"], ["x", "y"])
        for query in ("queue=no%20spaces", "queue=" + "q" * 65, "tag=" + "t" * 65, "tag=%01"):
            with self.subTest(query=query):
                self.assertIn("error", self.get_json("/api/jobs?" + query, status=400))


class ActionTest(DashboardCase):
    def test_cancel_a_pending_job(self):
        for job_id, path in (("p1", "/api/jobs/p1/cancel"), ("p/2", "/api/job/cancel?id=p%2F2"),
                             ("..", "/api/job/cancel?id=..")):
            with self.subTest(path=path):
                self.ok("enqueue", "--id", job_id, "--delay", "1h", "echo never")
                code, _, job = self.post(path)
                self.assertEqual(code, 200, job)
                self.assertEqual((job["id"], job["state"], job["last_error"]), (job_id, jobs.CANCELLED, "cancelled"))
                self.assertEqual(self.job(job_id)["state"], jobs.CANCELLED)
        self.ok("enqueue", "--id", "f1", "--max-retries", "1", "exit 1")
        self.finish("f1", fail=True)
        self.assertEqual(self.job("f1")["state"], jobs.FAILED)
        self.assertEqual(self.post("/api/job/cancel?id=f1")[2]["state"], jobs.CANCELLED)

    def test_cancel_needs_the_token_and_changes_nothing_otherwise(self):
        self.ok("enqueue", "--id", "waiting", "--delay", "1h", "echo never")
        before = self.job("waiting")
        for headers in ({}, {dashboard.TOKEN_HEADER: "guess"}, {dashboard.TOKEN_HEADER: ""}):
            for path in ("/api/jobs/waiting/cancel", "/api/job/cancel?id=waiting"):
                with self.subTest(headers=headers, path=path):
                    code, answer, body = self.request("POST", path, headers=headers)
                    self.assertEqual(code, 403, body)
                    self.assertEqual(answer["Content-Security-Policy"], dashboard.CSP)
                    self.assertIn("error", json.loads(body))
        self.assertEqual(self.job("waiting"), before)
        code, _, body = self.post("/api/jobs/nope/cancel")
        self.assertEqual(code, 404, body)
        self.assertIn("error", body)

    def test_cancel_of_a_finished_job_is_409_and_changes_nothing(self):
        self.ok("enqueue", "--id", "done", "true")
        self.finish("done")
        self.dead_job("doomed")
        self.ok("enqueue", "--id", "gone", "--delay", "1h", "true")
        self.ok("cancel", "gone")
        for job_id in ("done", "doomed", "gone"):
            with self.subTest(id=job_id):
                before = self.job(job_id)
                code, headers, body = self.post("/api/job/cancel?id=" + job_id)
                self.assertEqual(code, 409, body)
                self.assertIn("only those can be cancelled", body["error"])
                self.assertEqual(headers["Content-Security-Policy"], dashboard.CSP)
                self.assertEqual(self.job(job_id), before)

    def test_cancel_of_a_running_job_asks_its_worker(self):
        self.ok("enqueue", "--id", "busy", "sleep 100")
        store = self.store()
        claimed = store.claim("w-test", 30.0, now=time.time())
        code, _, job = self.post("/api/jobs/busy/cancel")
        self.assertEqual(code, 200, job)
        self.assertEqual(job["state"], jobs.PROCESSING)  # until its worker has killed it
        self.assertEqual(store.cancel_requests("w-test"), {claimed["seq"]})

    def test_retry_takes_any_finished_job(self):
        self.ok("enqueue", "--id", "stopped", "--delay", "1h", "echo stopped")
        self.ok("cancel", "stopped")
        self.ok("enqueue", "--id", "done", "echo done")
        self.finish("done", output=b"done\n")
        self.dead_job("doomed")
        for job_id in ("stopped", "done", "doomed"):
            with self.subTest(id=job_id):
                runs = len(self.get_json("/api/job?id=" + job_id)["runs"])
                code, _, job = self.post("/api/job/retry?id=" + job_id)
                self.assertEqual(code, 200, job)
                self.assertEqual((job["state"], job["attempts"], job["exit_code"], job["last_error"], job["finished_at"]),
                                 (jobs.PENDING, 0, None, None, None))
                self.assertEqual(self.job(job_id)["state"], jobs.PENDING)
                self.assertEqual(len(self.get_json("/api/job?id=" + job_id)["runs"]), runs)  # history kept
        code, _, body = self.post("/api/jobs/done/retry")  # pending now: not finished
        self.assertEqual(code, 409, body)
        self.assertEqual(self.job("done")["state"], jobs.PENDING)


class ChartTest(DashboardCase):
    def run_at(self, job_id, end, *, fail=False, retries=0):
        """Enqueue `job_id` and run it once, finishing at `end` (epoch seconds)."""
        add_job(self.store(), job_id, now=end - 2, max_retries=retries)
        run_next(self.store(), job_id, start=end - 1, end=end, error="exit code 1" if fail else None)

    def test_runs_and_failures_per_minute_over_the_last_hour(self):
        now = time.time()
        finished = {}  # finish time -> failed
        for job_id, ago_s, fail in (("old", 2 * 3600, False), ("half-ok", 1800, False), ("half-bad", 1795, True),
                                    ("recent", 300, False), ("just-now", 1, True)):
            self.run_at(job_id, now - ago_s, fail=fail)
            finished[now - ago_s] = fail
        # A job that failed, then completed: two runs, counted where each finished.
        self.run_at("flaky", now - 600, fail=True, retries=1)
        run_next(self.store(), "flaky", start=now - 599, end=now - 598)
        finished[now - 600], finished[now - 598] = True, False
        before = time.time()
        chart = self.get_json("/api/chart")
        after = time.time()
        self.assertEqual(len(chart), dashboard.CHART_MINUTES)
        self.assertEqual(len(chart), 60)
        self.assertEqual(set(chart[0]), {"minute", "runs", "failures"})
        first = (int(before // 60) - 59) * 60
        starts = [iso(first + 60 * n) for n in range(60)]
        if chart[-1]["minute"] != starts[-1]:  # the minute turned during the request
            first += 60
            starts = [iso(first + 60 * n) for n in range(60)]
            self.assertLessEqual(first + 59 * 60, after)
        self.assertEqual([bucket["minute"] for bucket in chart], starts)  # whole minutes, oldest first, now last
        expected = {}
        for end, fail in finished.items():
            if end >= first:
                runs, failures = expected.get(iso(end // 60 * 60), (0, 0))
                expected[iso(end // 60 * 60)] = (runs + 1, failures + fail)
        self.assertEqual({b["minute"]: (b["runs"], b["failures"]) for b in chart if b["runs"]}, expected)
        self.assertEqual(sum(b["runs"] for b in chart), 6)  # all but the one two hours ago
        self.assertEqual(sum(b["failures"] for b in chart), 3)

    def test_bucket_edges(self):
        class Runs:
            def __init__(self, ends):
                self.ends = ends

            def runs_since(self, since):
                return [RecentRun(end, 1.0, failed, 1) for end, failed in self.ends if end >= since]

        minute = 60 * 28333333.0  # 2023-11-14T22:13:00Z
        now = minute + 42.5
        first = minute - 59 * 60
        store = Runs([(first - 0.001, True), (first, True), (first + 59.999, False), (now, False),
                      (now + 120, True)])  # the last: a clock that stepped back since
        chart = dashboard.runs_per_minute(store, now)
        self.assertEqual(chart[0], {"minute": iso(first), "runs": 2, "failures": 1})
        self.assertEqual(chart[-1], {"minute": iso(minute), "runs": 1, "failures": 0})
        self.assertEqual(sum(b["runs"] for b in chart), 3)
        self.assertEqual(dashboard.runs_per_minute(Runs([]), now)[0]["runs"], 0)


class SafetyTest(DashboardCase):
    def test_host_header_must_name_the_served_address(self):
        port = self.server.port
        for host in ("evil.example:%d" % port, "evil.example", "127.0.0.1:%d" % (port + 1), "127.0.0.1",
                     "localhost.evil.example:%d" % port, "10.0.0.1:%d" % port):
            with self.subTest(host=host):
                code, _, body = self.request("GET", "/api/status", headers={"Host": host})
                self.assertEqual(code, 400, body)
                self.assertNotIn(b"pending", body)
        for host in ("127.0.0.1:%d" % port, "localhost:%d" % port, "LOCALHOST:%d" % port):
            with self.subTest(host=host):
                self.assertEqual(self.request("GET", "/api/status", headers={"Host": host})[0], 200)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_S)
        self.addCleanup(conn.close)
        conn.putrequest("GET", "/api/status", skip_host=True)
        conn.endheaders()
        self.assertEqual(conn.getresponse().status, 400)

    def test_wildcard_address_accepts_ip_literals_and_this_machine_only(self):
        allowed = dashboard.allowed_hosts("0.0.0.0", 8765)
        self.assertIn("localhost:8765", allowed)
        self.assertIn(socket.gethostname().lower() + ":8765", allowed)
        self.assertNotIn("evil.example:8765", allowed)
        self.assertTrue(dashboard.is_loopback("::1"))
        self.assertTrue(dashboard.is_loopback("127.0.0.1"))
        self.assertFalse(dashboard.is_loopback("0.0.0.0"))
        self.assertFalse(dashboard.is_loopback("192.168.1.10"))

    def test_post_needs_the_page_token(self):
        self.dead_job()
        for headers in ({}, {dashboard.TOKEN_HEADER: "guess"}, {dashboard.TOKEN_HEADER: ""}):
            with self.subTest(headers=headers):
                code, _, body = self.request("POST", "/api/jobs/doomed/retry", headers=headers)
                self.assertEqual(code, 403, body)
                self.assertEqual(self.job("doomed")["state"], jobs.DEAD)
        token = self.page_token()
        self.assertEqual(token, self.server.token)
        self.assertGreaterEqual(len(token), 32)
        code, _, body = self.request("POST", "/api/jobs/doomed/retry", headers={dashboard.TOKEN_HEADER: token})
        self.assertEqual(code, 200, body)
        self.assertEqual(json.loads(body)["state"], jobs.PENDING)
        self.assertEqual(self.job("doomed")["attempts"], 0)
        code, _, body = self.request("POST", "/api/jobs/doomed/retry", headers={dashboard.TOKEN_HEADER: token})
        self.assertEqual(code, 409, body)  # not dead any more
        code, _, _ = self.request("POST", "/api/jobs/nope/retry", headers={dashboard.TOKEN_HEADER: token})
        self.assertEqual(code, 404)
        code, _, _ = self.request("POST", "/api/jobs/doomed/nope", headers={dashboard.TOKEN_HEADER: token})
        self.assertEqual(code, 404)
        code, _, _ = self.request("POST", "/api/jobs/doomed/retry",
                                  headers={dashboard.TOKEN_HEADER: token, "Content-Length": "x"})
        self.assertEqual(code, 400)
        self.assertNotEqual(self.serve().token, token)  # per server

    def test_csp_and_no_inline_code(self):
        for path in ("/", "/static/app.js", "/static/app.css", "/api/status", "/api/queues", "/api/chart",
                     "/api/jobs?queue=a&tag=b", "/nope", "/api/job?id=nope"):
            with self.subTest(path=path):
                csp = self.request("GET", path)[1]["Content-Security-Policy"]
                self.assertIn("default-src 'none'", csp)
                self.assertIn("script-src 'self'", csp)
                self.assertIn("connect-src 'self'", csp)
                self.assertNotIn("unsafe-inline", csp)
                self.assertNotIn("unsafe-eval", csp)
        page = self.request("GET", "/")[2].decode()
        self.assertNotRegex(page, r"<script(?![^>]*\bsrc=)")  # every script is a file
        self.assertNotRegex(page, r"<style|\sstyle=|\son[a-z]+=")
        self.assertNotRegex(page, r"(src|href)=\"(https?:)?//")  # nothing from elsewhere
        script = self.request("GET", "/static/app.js")[2].decode()
        self.assertNotRegex(script, r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(")

    def test_job_data_is_json_not_html(self):
        self.ok("enqueue", json.dumps({"id": "xss", "command": XSS_COMMAND}))
        code, headers, body = self.request("GET", "/api/jobs/xss")
        self.assertEqual(headers["X-Content-Type-Options"], "nosniff")
        self.assertEqual(json.loads(body)["command"], XSS_COMMAND)
        self.assertNotIn(b"<img", self.request("GET", "/")[2])

    def test_port_in_use_is_a_one_line_error(self):
        result = self.cli("dashboard", "--port", self.server.port)
        self.assertEqual(result.code, 1)
        self.assertRegex(result.stderr, r"^queuectl: error: cannot serve the dashboard on 127\.0\.0\.1:\d+: .+\n$")


class ReadOnlyTest(DashboardCase):
    read_only = True

    def test_every_post_is_refused(self):
        self.dead_job()
        self.ok("enqueue", "--id", "waiting", "--delay", "1h", "echo never")
        self.assertEqual(self.page_token(), "")
        for path in ("/api/jobs/doomed/retry", "/api/job/retry?id=doomed", "/api/jobs/waiting/cancel",
                     "/api/job/cancel?id=waiting"):
            with self.subTest(path=path):
                code, headers, body = self.post(path)  # even with the token the server made
                self.assertEqual(code, 403, body)
                self.assertIn("read-only", body["error"])
                self.assertEqual(headers["Content-Security-Policy"], dashboard.CSP)
        self.assertEqual(self.job("doomed")["state"], jobs.DEAD)
        self.assertEqual(self.get_json("/api/jobs/doomed")["state"], jobs.DEAD)
        self.assertEqual(self.job("waiting")["state"], jobs.PENDING)


@unittest.skipUnless(hasattr(signal, "SIGINT") and os.name == "posix", "needs POSIX signals")
class CommandTest(HomeTestCase):
    def test_ctrl_c_stops_it_cleanly(self):
        env = dict(os.environ, QUEUECTL_HOME=self.home, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, SCRIPT, "dashboard", "--port", "0"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        self.addCleanup(proc.wait)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        line = proc.stdout.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_S)
        conn.request("GET", "/api/status")
        self.assertEqual(conn.getresponse().status, 200)
        conn.close()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=DEADLINE_S)
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn("dashboard stopped", out)
        self.assertEqual(err, "")


def find_browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_argv(profile):
    return [find_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--user-data-dir=" + profile]


def element(dom, tag, element_id):
    """What is inside <tag id="element_id">...</tag> in `dom` (as chromium's --dump-dom writes it)."""
    start = re.search(r'<%s\b[^>]* id="%s"[^>]*>' % (tag, element_id), dom)
    if start is None:
        raise AssertionError("no <%s id=%r> in the page" % (tag, element_id))
    depth = 1
    for match in re.finditer(r"<(/?)%s\b[^>]*>" % tag, dom[start.end():]):
        depth += -1 if match.group(1) else 1
        if not depth:
            return dom[start.end():start.end() + match.start()]
    raise AssertionError("<%s id=%r> never ends" % (tag, element_id))


def rows(tbody):
    """Each <tr> of a <tbody>'s text."""
    return re.findall(r"<tr[^>]*>(.*?)</tr>", tbody, re.S)


TO_FDS_3_AND_4 = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                  "os.close(int(sys.argv[1])); os.close(int(sys.argv[2])); os.execv(sys.argv[3], sys.argv[3:])")


class DevTools:
    """Headless chromium driven through its DevTools protocol on --remote-debugging-pipe: JSON
    messages ended by a NUL byte, read from its fd 3 and written to its fd 4. No websocket,
    so nothing beyond the standard library. Dialogs (confirm) are accepted and kept in `dialogs`."""

    def __init__(self, profile):
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        # Chromium looks for the pipe on its fds 3 and 4: a small Python puts our ends there and execs
        # it. (Not /bin/sh: dash takes only one-digit fds, and a process with many files open gets
        # bigger ones.) The ends are moved to 10 and up first, so that neither is itself 3 or 4.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
        for fd in (to_browser, from_browser):
            os.close(fd)
        self.proc = subprocess.Popen([sys.executable, "-c", TO_FDS_3_AND_4] + [str(fd) for fd in ends]
                                     + browser_argv(profile) + ["--remote-debugging-pipe"],
                                     pass_fds=ends, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in ends:
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self._targets = {}  # session: its tab's target id
        self.dialogs = []

    def close(self):
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, AssertionError):
                self._send("Browser.close", {}, None)
            try:
                self.proc.wait(DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _send(self, method, params, session):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        return self._next_id

    def call(self, method, params=None, session=None):
        """Send one command and return its result, handling events meanwhile."""
        wanted = self._send(method, params or {}, session)
        deadline = time.monotonic() + DEADLINE_S
        while True:
            while b"\0" in self._buffer:
                text, _, self._buffer = self._buffer.partition(b"\0")
                message = json.loads(text)
                if message.get("method") == "Page.javascriptDialogOpening":
                    self.dialogs.append(message["params"]["message"])
                    self._send("Page.handleJavaScriptDialog", {"accept": True}, message.get("sessionId"))
                elif message.get("id") == wanted:
                    if "error" in message:
                        raise AssertionError("%s: %s" % (method, message["error"]))
                    return message["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise AssertionError("chromium did not answer %s within %ss" % (method, DEADLINE_S))
            chunk = os.read(self._read, 65536)
            if not chunk:
                raise AssertionError("chromium exited (while waiting for %s)" % method)
            self._buffer += chunk

    def open(self, url):
        """A new tab showing `url`; returns its session for `evaluate`."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", {}, session)
        self.call("Page.navigate", {"url": url}, session)
        self._targets[session] = target
        return session

    def close_tab(self, session):
        """Close the tab `open` gave `session` for (its page stops polling its server)."""
        target = self._targets.pop(session, None)
        if target is not None and self.proc.poll() is None:
            self.call("Target.closeTarget", {"targetId": target})

    def evaluate(self, session, expression):
        """The value of a JS expression in the page (promises awaited)."""
        answer = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session)
        if "exceptionDetails" in answer:
            raise AssertionError("%s: %s" % (expression, answer["exceptionDetails"]))
        return answer["result"].get("value")

    def wait_for(self, session, expression, message):
        return wait_until(lambda: self.evaluate(session, expression), message=message)


# Until the navigation is done, this may run in about:blank, which has no #updated.
FIRST_REFRESH_JS = '(document.getElementById("updated") || {textContent: ""}).textContent.indexOf("updated") === 0'

# One headless chromium for the whole module, launched when a test first needs it (a launch takes
# most of a second on a busy machine): each test opens its own tabs, on its own server, and closes
# them. Launched again should it have died.
_BROWSER = {}


def shared_browser():
    browser = _BROWSER.get("browser")
    if browser is not None and browser.proc.poll() is None:
        return browser
    if browser is not None:
        browser.close()
    if "profile" not in _BROWSER:
        _BROWSER["profile"] = tempfile.TemporaryDirectory(prefix="qctl-chrome-")
    browser = _BROWSER["browser"] = DevTools(tempfile.mkdtemp(dir=_BROWSER["profile"].name))
    return browser


def tearDownModule():
    browser = _BROWSER.pop("browser", None)
    if browser is not None:
        browser.close()
    profile = _BROWSER.pop("profile", None)
    if profile is not None:
        profile.cleanup()


# In the page: the button labelled LABEL in the row of the jobs list whose id is ID, or null.
ROW_BUTTON_JS = """(function (id, label) {
  var found = null;
  document.querySelectorAll("#jobs tr").forEach(function (tr) {
    var b = tr.querySelector("td.action button");
    if (tr.querySelector("td.id button").textContent === id && b && b.textContent === label) found = b;
  });
  return found;
})(%s, %s)"""


@unittest.skipUnless(find_browser(), "no chromium / google-chrome on PATH")
class BrowserTest(DashboardCase):
    def dump_dom(self, path, server=None):
        """The page at `path` as its first refresh drew it: the DOM serialized as --dump-dom does,
        read from a tab of the module's one browser once the page says "updated" (every answer of
        that refresh has been rendered by then: the page writes it last)."""
        return self.dump_doms([path], server=server)[0]

    def dump_doms(self, paths, server=None):
        """`dump_dom` of each of `paths`, their tabs open at once (each page loads meanwhile)."""
        server = server or self.server
        if os.name != "posix":  # no DevTools pipe here: one chromium --dump-dom a page, as before
            return [self.dump_dom_alone(path, server) for path in paths]
        browser = shared_browser()
        sessions, doms = [], []
        try:
            for path in paths:
                sessions.append(browser.open("http://127.0.0.1:%d%s" % (server.port, path)))
            for path, session in zip(paths, sessions):
                browser.wait_for(session, FIRST_REFRESH_JS, "the page's first refresh of %s" % path)
                doms.append(browser.evaluate(session, "document.documentElement.outerHTML"))
        finally:
            for session in sessions:
                browser.close_tab(session)
        for dom in doms:
            self.assertIn("updated ", dom)  # the script ran and the API answered
        return doms

    def dump_dom_alone(self, path, server):
        profile = tempfile.mkdtemp(prefix="qctl-chrome-", dir=self.tmp)
        argv = browser_argv(profile) + ["--virtual-time-budget=5000", "--dump-dom",
                                        "http://127.0.0.1:%d%s" % (server.port, path)]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0)
        return proc.stdout

    def some_of_everything(self):
        """Jobs in queues and with tags, in every state but processing, and runs to chart."""
        self.ok("enqueue", "--id", "waiting", "--queue", "mail", "--tag", "news", "--tag", "eu", "--delay", "1h",
                "echo waiting")
        self.ok("enqueue", "--id", "done", "--queue", "reports", "--tag", "nightly", "echo done")
        self.finish("done")
        self.dead_job("doomed")
        self.ok("enqueue", "--id", "stopped", "--delay", "1h", "echo stopped")
        self.ok("cancel", "stopped")
        self.ok("queue", "pause", "mail")
        self.ok("queue", "set", "reports", "--concurrency", "3")

    def test_page_shows_queues_chart_tags_and_buttons(self):
        self.some_of_everything()
        dom = self.dump_dom("/")
        queues = {re.search(r'class="link"[^>]*>([^<]*)<', r).group(1): r for r in rows(element(dom, "tbody", "queues"))}
        self.assertEqual(sorted(queues), ["default", "mail", "reports"])
        self.assertIn(">paused<", queues["mail"])
        self.assertIn(">active<", queues["reports"])
        self.assertRegex(queues["reports"], r'<td class="num">3</td>')  # its concurrency
        self.assertIn('id="count-cancelled">1<', dom)
        chart = element(dom, "div", "chart")
        self.assertRegex(chart, r"^<svg [^>]*viewBox=")
        self.assertEqual(len(re.findall(r"<g class=\"bucket\">", chart)), 60)
        self.assertEqual(len(re.findall(r'<rect [^>]*class="runs"', chart)), 1)  # done, this minute (or the last)
        self.assertEqual(len(re.findall(r'<rect [^>]*class="failures"', chart)), 1)  # doomed
        self.assertIn(">now</text>", chart)
        self.assertIn("<title>", chart)  # each minute's tooltip
        jobs_rows = {re.search(r'<td class="id"><button[^>]*>([^<]*)<', r).group(1): r
                     for r in rows(element(dom, "tbody", "jobs"))}
        self.assertEqual(sorted(jobs_rows), sorted(["waiting", "done", "doomed", "stopped"]))
        self.assertIn('>Cancel</button>', jobs_rows["waiting"])
        for job_id in ("done", "doomed", "stopped"):
            self.assertIn('>Retry</button>', jobs_rows[job_id])
            self.assertNotIn('>Cancel</button>', jobs_rows[job_id])
        self.assertRegex(jobs_rows["waiting"], r'<button class="tag"[^>]*>eu</button><button class="tag"[^>]*>news<')
        self.assertIn('<td class="queue">mail</td>', jobs_rows["waiting"])
        options = re.findall(r"<option[^>]*>([^<]*)</option>", element(dom, "select", "filter-queue"))
        self.assertEqual(options, ["all queues", "default", "mail", "reports"])

        read_only = self.serve(read_only=True)
        dom = self.dump_dom("/", server=read_only)
        self.assertEqual(len(rows(element(dom, "tbody", "jobs"))), 4)
        self.assertNotIn(">Cancel<", dom)
        self.assertNotIn(">Retry<", dom)

    def test_filters_come_from_the_address(self):
        self.some_of_everything()
        cases = (("/#queue=mail", ["waiting"]), ("/#tag=nightly", ["done"]),
                 ("/#state=cancelled", ["stopped"]), ("/#queue=reports&tag=news", []),
                 ("/#state=dead&job=done", ["doomed"]))
        refused = "/#queue=no%20such%20name"
        doms = self.dump_doms([path for path, _ in cases] + [refused])  # all six pages load at once
        for (path, shown), dom in zip(cases, doms):
            with self.subTest(path=path):
                ids = re.findall(r'<td class="id"><button[^>]*>([^<]*)<', element(dom, "tbody", "jobs"))
                self.assertEqual(ids, shown)
        dom = doms[len(cases) - 1]  # /#state=dead&job=done
        self.assertRegex(dom, r'<section class="panel detail" id="detail">')  # #job= opens the job too
        self.assertIn('<code id="detail-id">done</code>', dom)
        # A filter the server refuses empties the list and says why; the rest of the page lives on.
        dom = doms[-1]
        self.assertEqual(rows(element(dom, "tbody", "jobs")), [])
        self.assertIn("filter: queue must be", element(dom, "div", "problem"))
        self.assertIn('id="count-cancelled">1<', dom)

    def test_job_page_shows_every_run_with_its_output_as_text(self):
        self.ok("enqueue", json.dumps({"id": "flaky", "command": "./flaky", "max_retries": 1, "queue": "etl",
                                       "tags": ["nightly"], "env": {"API_KEY": "hunter2"}}))
        store = self.store()
        run_next(store, "flaky", start=time.time(), end=time.time(), error="exit code 3", exit_code=3,
                 output=b"first try <b>bold</b>\n")
        run_next(store, "flaky", start=time.time(), end=time.time(), output=b"second try & done\n")
        dom = self.dump_dom("/#job=flaky")
        detail = element(dom, "section", "detail")
        self.assertIn('<code id="detail-id">flaky</code>', detail)
        fields = dict(re.findall(r"<dt>([^<]*)</dt><dd[^>]*>(.*?)</dd>", element(dom, "dl", "detail-fields"), re.S))
        self.assertEqual(fields["queue"], "etl")
        self.assertIn(">nightly</button>", fields["tags"])
        self.assertEqual(fields["env"], "API_KEY=***")
        self.assertNotIn("hunter2", dom)
        runs = re.findall(r'<section class="run">(.*?)</section>', element(dom, "div", "detail-runs"), re.S)
        self.assertEqual(len(runs), 2)
        self.assertIn(">run 2<", runs[0])  # the latest first
        self.assertIn('<pre class="stdout">second try &amp; done\n</pre>', runs[0])
        self.assertIn(">run 1<", runs[1])
        self.assertIn(">exit code 3<", runs[1])
        self.assertIn('<pre class="stdout">first try &lt;b&gt;bold&lt;/b&gt;\n</pre>', runs[1])
        self.assertNotIn("<b>bold", dom)
        self.assertIn('>Retry</button>', element(dom, "span", "detail-actions"))  # completed: it may run again

    def test_page_renders_counts_and_job_data_as_text(self):
        self.ok("enqueue", json.dumps({"id": "xss", "command": XSS_COMMAND, "max_retries": 0}))
        self.finish("xss", fail=True)
        self.ok("enqueue", json.dumps({"id": "xss-out", "command": XSS_OUTPUT_COMMAND}))
        self.finish("xss-out", output=b"<script>alert(2)</script>\n")
        for n in range(3):
            self.ok("enqueue", "--command", "echo %d" % n, "--delay", "1h")
        dom = self.dump_dom("/#job=xss-out")
        self.assertIn('id="count-pending">3<', dom)
        self.assertIn('id="count-completed">1<', dom)
        self.assertIn('id="count-dead">1<', dom)
        self.assertIn('id="dlq-count">1<', dom)
        self.assertIn("&lt;img src=x onerror=alert(1)&gt;", dom)  # the command, shown as characters
        self.assertIn("&lt;script&gt;alert(2)&lt;/script&gt;", dom)  # the output tail, likewise
        self.assertNotRegex(dom, r"<img[^>]*onerror")
        self.assertNotIn("<script>alert", dom)
        self.assertIn(">Retry<", dom)

    def test_page_opens_jobs_whose_ids_are_dot_segments(self):
        for job_id in ("..", "."):
            self.dead_job(job_id)
        ids = ("..", ".")
        for job_id, dom in zip(ids, self.dump_doms(["/#job=" + quote(job_id, safe="") for job_id in ids])):
            with self.subTest(id=job_id):
                self.assertIn('<code id="detail-id">%s</code>' % job_id, dom)
                self.assertRegex(dom, r'<section class="panel detail" id="detail">')  # shown, not hidden


@unittest.skipUnless(find_browser() and os.name == "posix", "no chromium / google-chrome on PATH (or not POSIX)")
class BrowserClickTest(DashboardCase):
    """The buttons clicked in a real page: the request each sends, with its token, changes the job."""

    def setUp(self):
        super().setUp()
        self.browser = shared_browser()
        self.browser.dialogs = []

    def page(self, path="/"):
        session = self.browser.open("http://127.0.0.1:%d%s" % (self.server.port, path))
        self.addCleanup(self.browser.close_tab, session)
        self.browser.wait_for(session, FIRST_REFRESH_JS, "the page's first refresh")
        return session

    def row_button(self, session, job_id, label):
        """Wait for job `job_id`'s row to show a button `label`; returns the JS that finds it."""
        button = ROW_BUTTON_JS % (json.dumps(job_id), json.dumps(label))
        self.browser.wait_for(session, button + " !== null", "a %s button for job %s" % (label, job_id))
        return button

    def click_row(self, session, job_id, label):
        self.browser.evaluate(session, self.row_button(session, job_id, label) + ".click()")

    def test_cancel_then_retry_from_the_jobs_list(self):
        self.ok("enqueue", "--id", "waiting", "--tag", "t", "--delay", "1h", "echo never")
        session = self.page()
        self.click_row(session, "waiting", "Cancel")
        wait_until(lambda: self.job("waiting")["state"] == jobs.CANCELLED, message="the cancel to land")
        self.click_row(session, "waiting", "Retry")  # the row is redrawn as cancelled, with Retry
        wait_until(lambda: self.job("waiting")["state"] == jobs.PENDING, message="the retry to land")
        self.click_row(session, "waiting", "Cancel")
        self.assertEqual(self.browser.dialogs, [])  # a job that is not running goes without asking
        self.assertFalse(self.browser.evaluate(session, '!document.getElementById("problem").hidden'))

    def test_cancel_of_a_running_job_asks_first_and_says_so(self):
        self.ok("enqueue", "--id", "busy", "sleep 100")
        claimed = self.store().claim("w-test", 30.0, now=time.time())
        session = self.page()
        self.click_row(session, "busy", "Cancel")
        wait_until(lambda: self.store().cancel_requests("w-test") == {claimed["seq"]}, message="the cancel request")
        self.assertEqual(len(self.browser.dialogs), 1)
        self.assertIn("busy", self.browser.dialogs[0])
        self.assertIn("killed", self.browser.dialogs[0])
        cancelling = self.row_button(session, "busy", "Cancelling")  # until its worker has killed it
        self.assertTrue(self.browser.evaluate(session, cancelling + ".disabled"))

    def test_retry_from_the_job_page_and_a_refusal_shown(self):
        self.ok("enqueue", "--id", "done", "echo done")
        self.finish("done")
        session = self.page("/#job=done")
        retry = 'document.querySelector("#detail-actions button")'
        self.browser.wait_for(session, retry + ' && %s.textContent === "Retry"' % retry, "the job page's Retry")
        self.browser.evaluate(session, retry + ".click()")
        wait_until(lambda: self.job("done")["state"] == jobs.PENDING, message="the retry to land")
        # Another hand cancels the job before the page knows: its Cancel gets 409, and says so.
        # Checked and clicked in one evaluation (the page's JS runs one thing at a time); should a
        # refresh have come between the CLI's cancel and the click, try again.
        click_cancel = '%s && %s.textContent === "Cancel" ? (%s.click(), true) : false' % (retry, retry, retry)
        for _ in range(3):
            self.browser.wait_for(session, retry + ' && %s.textContent === "Cancel"' % retry, "the job page redrawn")
            self.ok("cancel", "done")
            if self.browser.evaluate(session, click_cancel):
                break
            self.ok("retry", "done")
        else:
            self.fail("the page refreshed between the cancel and the click three times")
        self.browser.wait_for(session, 'document.getElementById("problem").textContent.indexOf("cancel done") === 0',
                              "the 409 shown")
        self.assertIn("only those can be cancelled", self.browser.evaluate(
            session, 'document.getElementById("problem").textContent'))

    def test_tag_and_queue_filters_follow_clicks(self):
        self.ok("enqueue", "--id", "a", "--queue", "qa", "--tag", "red", "--delay", "1h", "true")
        self.ok("enqueue", "--id", "b", "--queue", "qb", "--tag", "blue", "--delay", "1h", "true")
        session = self.page()
        shown = 'Array.from(document.querySelectorAll("#jobs td.id button")).map(function (b) { return b.textContent; }).join()'
        self.browser.wait_for(session, shown + ' === "b,a"', "both jobs")
        self.browser.evaluate(session, 'document.querySelector("#jobs button.tag").click()')  # b's tag, blue
        self.browser.wait_for(session, shown + ' === "b"', "the tag filter")
        self.assertEqual(self.browser.evaluate(session, "location.hash"), "#tag=blue")
        self.browser.evaluate(session, 'document.getElementById("filter-clear").click()')
        self.browser.wait_for(session, shown + ' === "b,a"', "the filters cleared")
        self.browser.evaluate(session, 'var s = document.getElementById("filter-queue"); s.value = "qa"; '
                                       's.dispatchEvent(new Event("change"))')
        self.browser.wait_for(session, shown + ' === "a"', "the queue filter")
        self.assertEqual(self.browser.evaluate(session, "location.hash"), "#queue=qa")



# ---------------------------------------------------------------- workflow: schedules, dependencies

from tests.base import SETTINGS  # noqa: E402  (here, with the tests that use it)

SECRET = "s3cret-value"


class WorkflowApiTest(DashboardCase):
    """GET /api/schedules and the workflow fields of a job, over real HTTP."""

    def add_schedules(self):
        """Two schedules, one with a secret in its env; `nightly` fired once (its job pending)."""
        self.ok("schedule", "add", "nightly", "--every", "1h", "--env", "TOKEN=" + SECRET, "--queue", "etl",
                "echo nightly")
        self.ok("schedule", "add", "report", "--cron", "30 6 * * 1-5", "--overlap", "make report")
        store = self.store()
        fired = store.fire_schedules(SETTINGS, now=time.time() + 3601)
        self.assertEqual([f.name for f in fired], ["nightly"])
        return fired[0].job_id

    def test_schedules_as_schedule_list_prints_env_masked(self):
        code, headers, body = self.request("GET", "/api/schedules")
        self.assertEqual((code, json.loads(body)), (200, []))
        self.assertEqual(headers["Content-Security-Policy"], dashboard.CSP)
        self.assertNotIn("X-Next-Cursor", headers)
        job_id = self.add_schedules()
        code, headers, body = self.request("GET", "/api/schedules")
        self.assertEqual(code, 200)
        self.assertNotIn(SECRET.encode(), body)
        shown = json.loads(body)
        self.assertEqual(shown, json.loads(self.ok("schedule", "list", "--json").stdout))
        nightly, report = shown
        self.assertEqual((nightly["name"], nightly["spec"], nightly["overlap"]), ("nightly", "every 1h", False))
        self.assertEqual(nightly["job"]["env"], {"TOKEN": "***"})
        self.assertEqual(nightly["job"]["command"], "echo nightly")
        self.assertEqual((nightly["last_job"], nightly["last_state"]), (job_id, jobs.PENDING))
        self.assertRegex(nightly["next_run_at"], r"Z$")
        self.assertEqual((report["spec"], report["overlap"], report["last_job"]), ("cron 30 6 * * 1-5", True, None))
        self.assertEqual(self.get_json("/api/jobs/" + job_id)["env"], {"TOKEN": "***"})  # the job it made, too
        self.ok("delete", job_id)
        self.assertEqual(self.get_json("/api/schedules")[0]["last_state"], None)  # gone

    def test_schedules_come_a_bounded_page_at_a_time(self):
        store = self.store()
        names = ["s%02d" % n for n in range(5)]
        for name in names:
            store.add_schedule(name, "every 60", json.dumps({"command": "true", "cwd": "/"}), now=time.time())
        seen, path = [], "/api/schedules?limit=2"
        while path:
            code, headers, body = self.request("GET", path)
            self.assertEqual(code, 200, body)
            page = json.loads(body)
            self.assertLessEqual(len(page), 2)
            seen += [s["name"] for s in page]
            link = headers.get("Link")
            if link:
                self.assertEqual(headers["X-Next-Cursor"], page[-1]["name"])
                path = re.match(r"<([^>]+)>; rel=\"next\"$", link).group(1)
            else:
                path = None
        self.assertEqual(seen, names)
        self.assertEqual(len(self.get_json("/api/schedules?limit=0")), 5)  # 0: a whole page
        self.assertEqual(dashboard.MAX_PAGE_SCHEDULES, 1000)
        for query in ("limit=x", "limit=-1", "after=%3Cb%3E", "after=a%2Fb"):
            with self.subTest(query=query):
                self.assertIn("error", self.get_json("/api/schedules?" + query, status=400))

    def test_job_page_names_after_waiting_for_and_unique_key(self):
        self.ok("enqueue", "--id", "a", "true")
        self.ok("enqueue", "--id", "b", "--delay", "1h", "true")
        self.ok("enqueue", "--id", "c", "--after", "a", "--after", "b", "--after-policy", "finished",
                "--unique-key", "nightly-c", "true")
        for path in ("/api/jobs/c", "/api/job?id=c"):
            with self.subTest(path=path):
                job = self.get_json(path)
                self.assertEqual(job["state"], jobs.PENDING)
                self.assertEqual((job["after"], job["after_policy"]), (["a", "b"], "finished"))
                self.assertEqual(job["waiting_for"], ["a", "b"])
                self.assertEqual(job["unique_key"], "nightly-c")
        show = json.loads(self.ok("show", "c", "--json").stdout)
        for field in ("after", "after_policy", "waiting_for", "unique_key", "state"):
            self.assertEqual(self.get_json("/api/job?id=c")[field], show[field], field)
        self.finish("a")
        self.assertEqual(self.get_json("/api/job?id=c")["waiting_for"], ["b"])
        listed = {j["id"]: j for j in self.get_json("/api/jobs")}
        self.assertEqual((listed["c"]["state"], listed["c"]["waiting_for"]), (jobs.PENDING, ["b"]))
        self.assertEqual(listed["a"]["waiting_for"], [])
        self.ok("cancel", "b")  # finished counts, whatever the outcome
        self.assertEqual(self.get_json("/api/job?id=c")["waiting_for"], [])
        self.assertEqual(self.get_json("/api/job?id=a")["after"], [])


@unittest.skipUnless(find_browser(), "no chromium / google-chrome on PATH")
class WorkflowBrowserTest(DashboardCase):
    """The schedules section, the waiting flag and the job page's dependencies, in one page load."""

    def dump(self, path):
        profile = tempfile.mkdtemp(prefix="qctl-chrome-", dir=self.tmp)
        argv = browser_argv(profile) + ["--virtual-time-budget=5000", "--dump-dom",
                                        "http://127.0.0.1:%d%s" % (self.server.port, path)]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0)
        self.assertIn("updated ", proc.stdout)  # the script ran and the API answered
        return proc.stdout

    def test_schedules_and_dependencies_render_as_text(self):
        dep = "<b>dep</b>"
        self.ok("enqueue", "--id", dep, "--delay", "1h", "true")
        self.ok("enqueue", "--id", "later", "--after", dep, "--unique-key", "k<i>1</i>", "true")
        self.ok("schedule", "add", "nightly", "--every", "1h", "--env", "TOKEN=" + SECRET, "--", "echo", XSS_COMMAND)
        self.ok("schedule", "add", "idle", "--cron", "0 3 * * *", "true")
        fired = self.store().fire_schedules(SETTINGS, now=time.time() + 3601)
        self.assertEqual(len(fired), 1)
        made = fired[0].job_id
        dom = self.dump("/#job=later")
        self.assertNotIn(SECRET, dom)
        self.assertNotRegex(dom, r"<img[^>]*onerror|<b>dep|<i>1")

        schedules = {re.search(r'<td class="name">([^<]*)</td>', r).group(1): r
                     for r in rows(element(dom, "tbody", "schedules"))}
        self.assertEqual(sorted(schedules), ["idle", "nightly"])
        self.assertIn('id="schedules-count">2<', dom)
        nightly = schedules["nightly"]
        self.assertIn('<td class="spec">every 1h</td>', nightly)
        # Fired as if an hour on, it is next due two hours from now, shown relative (the time in its title).
        self.assertRegex(nightly, r'<td class="muted" title="[^"]+">in 1h</td>')
        self.assertIn('<button class="link" title="%s">%s</button>' % (made, made), nightly)
        self.assertIn('<span class="badge pending">pending</span>', nightly)
        self.assertIn(">echo '&lt;img src=x onerror=alert(1)&gt;'</td>", nightly)
        self.assertIn('<td class="last-job muted">-</td>', schedules["idle"])
        self.assertIn('<td class="spec">cron 0 3 * * *</td>', schedules["idle"])

        listed = {re.search(r'<td class="id"><button[^>]*>([^<]*)<', r).group(1): r
                  for r in rows(element(dom, "tbody", "jobs"))}
        self.assertIn('<span class="badge pending">pending</span><span class="flag waiting" '
                      'title="waiting for: &lt;b&gt;dep&lt;/b&gt;">waiting</span>', listed["later"])
        self.assertIn('<span class="badge pending">pending</span>', listed["&lt;b&gt;dep&lt;/b&gt;"])
        self.assertNotIn("flag waiting", listed["&lt;b&gt;dep&lt;/b&gt;"])  # delayed, not waiting

        fields = dict(re.findall(r"<dt>([^<]*)</dt>(<dd[^>]*>.*?</dd>)", element(dom, "dl", "detail-fields"), re.S))
        link = '<button class="link" title="&lt;b&gt;dep&lt;/b&gt;">&lt;b&gt;dep&lt;/b&gt;</button>'
        self.assertEqual(fields["waiting for"], '<dd class="job-links waiting-for">%s</dd>' % link)
        self.assertRegex(fields["after"], r'^<dd class="job-links after">%s<span class="muted policy" title="[^"]+">'
                                          r' \(completed\)</span></dd>$' % re.escape(link))
        self.assertEqual(fields["unique key"], '<dd class="mono">k&lt;i&gt;1&lt;/i&gt;</dd>')
        self.assertIn("flag waiting", fields["state"])
