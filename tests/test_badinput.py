"""Hostile and broken input: every bad value gets exit 1 or 2, one error line, no traceback,
and leaves the database exactly as it was; a broken home or database gets a clear line too."""

import json
import os
import sqlite3
import subprocess
import sys
import time
import unittest
from unittest import mock

from tests.base import DEADLINE_S, SCRIPT, HomeTestCase, Result, mount_tmpfs, new_job, wait_until
from qctl import jobs
from qctl import home as qhome
from qctl.db import Store
from qctl.errors import StoreError
from qctl.worker import Worker

J = json.dumps

# (label, argv, stdin or None). Job ids "p1" (pending), "done" (completed) and "gone" (dead) exist.
CASES = [
    ("not JSON", ["enqueue", "{not json"], None),
    ("empty object", ["enqueue", "{}"], None),
    ("trailing garbage", ["enqueue", '{"command": "true"} x'], None),
    ("nested too deeply", ["enqueue", '{"a": ' * 100000], None),
    ("NaN literal", ["enqueue", '{"command": "true", "priority": NaN}'], None),
    ("empty command", ["enqueue", J({"command": ""})], None),
    ("blank command", ["enqueue", J({"command": "  \t"})], None),
    ("command not a string", ["enqueue", J({"command": 5})], None),
    ("command with NUL", ["enqueue", J({"command": "a\x00b"})], None),
    ("command lone surrogate", ["enqueue", '{"command": "\\ud800"}'], None),
    ("unknown field", ["enqueue", J({"command": "true", "bogus": 1})], None),
    ("id empty", ["enqueue", J({"command": "true", "id": ""})], None),
    ("id 10,000 chars", ["enqueue", J({"command": "true", "id": "x" * 10000})], None),
    ("id with newline", ["enqueue", J({"command": "true", "id": "a\nb"})], None),
    ("id with escape char", ["enqueue", J({"command": "true", "id": "a\x1b[31mb"})], None),
    ("id with NUL", ["enqueue", J({"command": "true", "id": "a\x00b"})], None),
    ("id a number", ["enqueue", J({"command": "true", "id": 7})], None),
    ("id lone surrogate", ["enqueue", '{"command": "true", "id": "\\udfff"}'], None),
    ("id duplicate", ["enqueue", J({"command": "true", "id": "p1"})], None),
    ("max_retries negative", ["enqueue", J({"command": "true", "max_retries": -1})], None),
    ("max_retries string", ["enqueue", J({"command": "true", "max_retries": "3"})], None),
    ("max_retries huge", ["enqueue", J({"command": "true", "max_retries": 10 ** 30})], None),
    ("max_retries float overflow", ["enqueue", '{"command": "true", "max_retries": 1e400}'], None),
    ("priority fractional", ["enqueue", J({"command": "true", "priority": 1.5})], None),
    ("priority boolean", ["enqueue", J({"command": "true", "priority": True})], None),
    ("timeout zero", ["enqueue", J({"command": "true", "timeout": 0})], None),
    ("timeout negative", ["enqueue", J({"command": "true", "timeout": -5})], None),
    ("timeout words", ["enqueue", J({"command": "true", "timeout": "soon"})], None),
    ("timeout infinite", ["enqueue", '{"command": "true", "timeout": 1e999}'], None),
    ("delay negative", ["enqueue", J({"command": "true", "delay": -1})], None),
    ("run_at month 13", ["enqueue", J({"command": "true", "run_at": "2026-13-01T00:00:00"})], None),
    ("run_at a number", ["enqueue", J({"command": "true", "run_at": 1700000000})], None),
    ("run_at empty", ["enqueue", J({"command": "true", "run_at": ""})], None),
    ("run_at before 1970", ["enqueue", J({"command": "true", "run_at": "1969-07-20T20:17:00Z"})], None),
    ("run_at and delay", ["enqueue", J({"command": "true", "run_at": "2030-01-01", "delay": 5})], None),
    ("env not an object", ["enqueue", J({"command": "true", "env": ["A=1"]})], None),
    ("env value a number", ["enqueue", J({"command": "true", "env": {"A": 1}})], None),
    ("env key with =", ["enqueue", J({"command": "true", "env": {"A=B": "1"}})], None),
    ("env value surrogate", ["enqueue", '{"command": "true", "env": {"A": "\\ud800x"}}'], None),
    ("cwd empty", ["enqueue", J({"command": "true", "cwd": ""})], None),
    ("option --max-retries -1", ["enqueue", "--command", "true", "--max-retries", "-1"], None),
    ("option --max-retries abc", ["enqueue", "--command", "true", "--max-retries", "abc"], None),
    ("option --priority 1e3", ["enqueue", "--command", "true", "--priority", "1e3"], None),
    ("option --timeout nan", ["enqueue", "--command", "true", "--timeout", "nan"], None),
    ("option --delay inf", ["enqueue", "--command", "true", "--delay", "inf"], None),
    ("option --run-at words", ["enqueue", "--command", "true", "--run-at", "yesterday"], None),
    ("option --env no =", ["enqueue", "--command", "true", "--env", "NOEQUALS"], None),
    ("option --id control", ["enqueue", "--command", "true", "--id", "a\tb"], None),
    ("option --command empty", ["enqueue", "--command", ""], None),
    ("no job given", ["enqueue"], None),
    ("JSON and --command", ["enqueue", J({"command": "true"}), "--command", "true"], None),
    ("--id with JSON", ["enqueue", J({"command": "true"}), "--id", "x"], None),
    ("--file missing", ["enqueue", "--file", "/nonexistent/qctl.jsonl"], None),
    ("--file a directory", ["enqueue", "--file", "/"], None),
    ("--file empty", ["enqueue", "--file", "-"], ""),
    ("--file not UTF-8", ["enqueue", "--file", "-"], b'{"command": "echo \xff\xfe"}\n'),
    ("--file bad third line", ["enqueue", "--file", "-"],
     J({"command": "true"}) + "\n" + J({"command": "true"}) + "\n{oops\n"),
    ("--file duplicate ids", ["enqueue", "--file", "-"],
     J({"command": "true", "id": "d"}) + "\n" + J({"command": "true", "id": "d"}) + "\n"),
    ("--file id already stored", ["enqueue", "--file", "-"],
     J({"command": "true", "id": "new"}) + "\n" + J({"command": "true", "id": "done"}) + "\n"),
    # Bounded input: a command under 128 KiB, one JSON job at most 1 MiB, cwd and env capped.
    ("command of 128 KiB", ["enqueue", J({"command": "x" * 128 * 1024})], None),
    ("command of 128 KiB in 2-byte chars", ["enqueue", J({"command": "\u00e9" * 64 * 1024}, ensure_ascii=False)], None),
    ("option --command of 128 KiB", ["enqueue", "--command", "x" * 128 * 1024], None),
    ("job JSON over 1 MiB", ["enqueue", '{"command": "true"%s}' % (" " * 1024 * 1024)], None),
    ("--file line over 1 MiB", ["enqueue", "--file", "-"],
     J({"command": "true"}) + "\n" + '{"command": "true"%s}\n' % (" " * 1024 * 1024)),
    ("--file command of 200 KiB", ["enqueue", "--file", "-"], J({"command": "x" * 200 * 1024}) + "\n"),
    ("--file endless line", ["enqueue", "--file", "-"], "{" + " " * 3 * 1024 * 1024),
    ("cwd over 4095 bytes", ["enqueue", J({"command": "true", "cwd": "/" + "d" * 4095})], None),
    ("env over 128 KiB", ["enqueue", J({"command": "true", "env": {"A": "x" * 65536, "B": "x" * 65536}})], None),
    ("env of 1001 variables", ["enqueue", J({"command": "true", "env": {"K%d" % i: "" for i in range(1001)}})], None),
    ("option --env over 128 KiB", ["enqueue", "--command", "true", "--env", "K=" + "x" * 128 * 1024], None),
    ("show unknown", ["show", "nope"], None),
    ("show empty id", ["show", ""], None),
    ("show undecodable id", ["show", "\udcff"], None),
    ("logs unknown", ["logs", "nope"], None),
    ("logs run 99", ["logs", "done", "--run", "99"], None),
    ("logs run abc", ["logs", "done", "--run", "abc"], None),
    ("wait unknown", ["wait", "nope", "--timeout", "1"], None),
    ("wait timeout nan", ["wait", "--timeout", "nan"], None),
    ("dlq retry unknown", ["dlq", "retry", "nope"], None),
    ("dlq retry not dead", ["dlq", "retry", "p1"], None),
    ("dlq retry id and --all", ["dlq", "retry", "gone", "--all"], None),
    ("delete unknown", ["delete", "nope"], None),
    ("list state bogus", ["list", "--state", "bogus"], None),
    ("list limit negative", ["list", "--limit", "-1"], None),
    ("list limit words", ["list", "--limit", "lots"], None),
    ("purge pending", ["purge", "--state", "pending"], None),
    ("purge older-than negative", ["purge", "--state", "dead", "--older-than", "-5"], None),
    ("config set unknown key", ["config", "set", "bogus", "1"], None),
    ("config get unknown key", ["config", "get", "bogus"], None),
    ("config max-retries -1", ["config", "set", "max-retries", "-1"], None),
    ("config max-retries huge", ["config", "set", "max-retries", "9" * 30], None),
    ("config backoff-base nan", ["config", "set", "backoff-base", "nan"], None),
    ("config backoff-base 0.5", ["config", "set", "backoff-base", "0.5"], None),
    ("config backoff-max 0", ["config", "set", "backoff-max", "0"], None),
    ("config job-timeout inf", ["config", "set", "job-timeout", "1e999"], None),
    ("config poll-interval 0", ["config", "set", "poll-interval", "0"], None),
    ("config worker-count 0", ["config", "set", "worker-count", "0"], None),
    ("config output-limit -1", ["config", "set", "output-limit", "-1"], None),
    ("config lease-seconds words", ["config", "set", "lease-seconds", "long"], None),
    ("worker --count 0", ["worker", "start", "--count", "0"], None),
    ("worker stop --timeout x", ["worker", "stop", "--timeout", "x"], None),
    ("unknown command", ["frobnicate"], None),
    ("no command", [], None),
]


def dump(db_path):
    con = sqlite3.connect(db_path)
    try:
        return list(con.iterdump())
    finally:
        con.close()


class BadInputTest(HomeTestCase):
    def setUp(self):
        super().setUp()
        self.ok("enqueue", J({"id": "p1", "command": "true", "run_at": "2999-01-01T00:00:00Z"}))
        self.ok("enqueue", J({"id": "done", "command": "echo hi", "env": {"TOKEN": "s3cret"}}))
        self.ok("enqueue", J({"id": "gone", "command": "exit 3", "max_retries": 0}))
        Worker(self.home, threads=1, burst=True).run()
        self.assertEqual(self.job("gone")["state"], jobs.DEAD)
        self.ok("config", "set", "max-retries", "5")

    def assert_rejected(self, label, result, before):
        self.assertIn(result.code, (1, 2), result)
        lines = result.stderr.splitlines()
        self.assertNotIn("Traceback", result.stderr)
        self.assertNotIn("internal error", result.stderr)
        if result.code == 1:
            self.assertEqual(len(lines), 1, result)
            self.assertTrue(lines[0].startswith("queuectl: error: "), result)
        else:  # argparse: a usage line (possibly wrapped), then one error line
            self.assertEqual(sum(1 for line in lines if "error:" in line), 1, result)
            self.assertRegex(lines[-1], r"^queuectl[ a-z]*: error: ")
        self.assertEqual(dump(self.db_path), before, "%s changed the database" % label)

    def test_every_bad_input_is_one_line_and_changes_nothing(self):
        self.assertGreaterEqual(len(CASES), 40)
        before = dump(self.db_path)
        self.assertTrue(any("p1" in line for line in before))
        for label, argv, stdin in CASES:
            with self.subTest(label):
                self.assert_rejected(label, self.cli(*argv, stdin=stdin), before)

    @unittest.skipUnless(os.name == "posix", "passes argv as raw bytes")
    def test_a_sample_through_real_processes(self):
        before = dump(self.db_path)
        for label, argv, stdin in [c for c in CASES if c[0] in (
                "not JSON", "id 10,000 chars", "id with NUL", "show unknown", "--file bad third line",
                "config backoff-base nan", "option --max-retries abc", "show undecodable id")]:
            with self.subTest(label):
                if isinstance(stdin, str):
                    stdin = stdin.encode()
                full_env = dict(os.environ, QUEUECTL_HOME=self.home)
                full_env.pop("QUEUECTL_DEBUG", None)
                # argv travels as bytes: NUL cannot, and an undecodable id is the byte \xff.
                args = [os.fsencode(a) for a in argv]
                if label == "id with NUL":
                    args = [b"enqueue", b"--file", b"-"]
                    stdin = J({"command": "true", "id": "a\x00b"}).encode()
                proc = subprocess.run([os.fsencode(sys.executable), os.fsencode(SCRIPT)] + args,
                                      input=stdin, capture_output=True, env=full_env, timeout=60)
                result = Result(proc.returncode, proc.stdout.decode("utf-8", "replace"),
                                proc.stderr.decode("utf-8", "replace"))
                self.assert_rejected(label, result, before)


class BrokenEnvironmentTest(HomeTestCase):
    def assert_one_line(self, result, *fragments):
        self.assertEqual(result.code, 1, result)
        self.assertEqual(len(result.stderr.splitlines()), 1, result)
        self.assertNotIn("internal error", result.stderr)
        for fragment in fragments:
            self.assertIn(fragment, result.stderr)

    def mount_tmpfs(self, size_kb):
        return mount_tmpfs(self, size_kb)

    def test_home_that_is_a_file(self):
        path = os.path.join(self.tmp, "afile")
        with open(path, "w") as fh:
            fh.write("x")
        self.assert_one_line(self.run_cli("--home", path, "enqueue", "--command", "true"), "not a directory")

    def test_database_that_is_not_sqlite(self):
        garbage = bytes(range(256)) * 40
        with open(self.db_path, "wb") as fh:
            fh.write(garbage)
        for argv in (["status"], ["enqueue", "--command", "true"], ["list"], ["show", "x"],
                     ["config", "set", "max-retries", "2"], ["worker", "start", "--burst"]):
            with self.subTest(argv=argv):
                self.assert_one_line(self.cli(*argv), "not a usable queuectl database")
        self.assert_one_line(self.run_cli("status"), "not a usable queuectl database")
        with open(self.db_path, "rb") as fh:
            self.assertEqual(fh.read(), garbage, "a broken database must be left alone")

    def test_database_that_is_a_directory(self):
        os.remove(self.db_path)
        os.mkdir(self.db_path)
        self.assert_one_line(self.cli("status"), "cannot open the database")

    def test_home_on_a_read_only_disk(self):
        point = self.mount_tmpfs(1024)
        home = os.path.join(point, "home")
        self.ok("--home", home, "enqueue", "--command", "true", "--id", "kept")
        subprocess.run(["mount", "-o", "remount,ro", point], check=True)
        for argv in (["enqueue", "--command", "true"], ["status"], ["delete", "kept"], ["worker", "start", "--burst"]):
            with self.subTest(argv=argv):
                self.assert_one_line(self.cli("--home", home, *argv), "database")
        self.assert_one_line(self.cli("--home", os.path.join(point, "new"), "status"), "cannot create")
        subprocess.run(["mount", "-o", "remount,rw", point], check=True)
        with Store(os.path.join(home, "queue.db")) as store:
            self.assertEqual([j["id"] for j in store.list_jobs()], ["kept"])

    def test_disk_full_mid_batch_stores_nothing(self):
        point = self.mount_tmpfs(512)
        home = os.path.join(point, "home")
        self.ok("--home", home, "enqueue", "--command", "true", "--id", "first")
        batch = "".join(J({"command": "echo " + "x" * 400 + str(i)}) + "\n" for i in range(3000))
        result = self.cli("--home", home, "enqueue", "--file", "-", stdin=batch)
        self.assert_one_line(result, "no space left")
        db_path = os.path.join(home, "queue.db")
        con = sqlite3.connect(db_path)
        try:
            self.assertEqual(con.execute("PRAGMA integrity_check").fetchone()[0], "ok")
            self.assertEqual(con.execute("SELECT id FROM jobs").fetchall(), [("first",)])
        finally:
            con.close()
        # The queue still works once the disk has room: the failed batch left no debris behind.
        self.ok("--home", home, "enqueue", "--command", "true", "--id", "second")


class BoundedInputTest(HomeTestCase):
    @unittest.skipUnless(sys.platform.startswith("linux"), "/dev/zero and RLIMIT_AS as Linux has them")
    def test_an_endless_file_is_one_error_in_bounded_memory(self):
        import resource

        def limit_memory():  # in the child: what it maps, Python included, stays under 512 MB
            resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
        self.ok("enqueue", "--id", "kept", "--command", "true")
        before = dump(self.db_path)
        env = dict(os.environ, QUEUECTL_HOME=self.home)
        env.pop("QUEUECTL_DEBUG", None)
        for argv in (["--file", "/dev/zero"], ["--file", "-"]):
            with self.subTest(argv=argv), open("/dev/zero", "rb") as zeros:
                proc = subprocess.run([sys.executable, SCRIPT, "enqueue"] + argv, stdin=zeros, capture_output=True,
                                      text=True, env=env, timeout=60, preexec_fn=limit_memory)
                self.assertEqual(proc.returncode, 1, proc)
                self.assertEqual(proc.stdout, "")
                self.assertRegex(proc.stderr, r"^queuectl: error: line 1: a job must be at most 1 MiB of JSON "
                                              r"\(1048576 bytes as UTF-8\); this line is longer "
                                              r"\(nothing was enqueued\)\n$")
                self.assertEqual(dump(self.db_path), before)

    def test_the_longest_command_allowed_runs(self):
        # The limit is where the system's own is: a command just under 128 KiB still starts.
        command = "true #" + "x" * (jobs.COMMAND_MAX_BYTES - 6)
        self.ok("enqueue", J({"id": "long", "command": command}))
        self.assertEqual(self.job("long")["command"], command)
        Worker(self.home, threads=1, burst=True).run()
        job = self.job("long")
        self.assertEqual((job["state"], job["last_error"]), (jobs.COMPLETED, None))


EVIL = "\x1b]0;PWNED\x07\x1b[2J\x9b31m"   # set the window title, clear the screen, a C1 CSI
SHOWN = "\\x1b]0;PWNED\\x07\\x1b[2J\\x9b31m"  # as people see it: escaped, still recognisable
EVIL_ID = "ev" + EVIL


class ControlCharactersTest(HomeTestCase):
    """Every field printed for people escapes control characters: a job's command, cwd
    or error, and (from a database written by anything else: enqueue refuses them) its id
    and env keys, a worker's id and host, cannot drive the terminal."""

    def setUp(self):
        super().setUp()
        # Never created: the run cannot start, and its error names the directory.
        self.cwd = os.path.join(self.tmp, "gone" + EVIL)
        self.ok("enqueue", J({"id": "evil", "command": "echo " + EVIL + "; exit 3", "cwd": self.cwd,
                              "max_retries": 0}))
        con = sqlite3.connect(self.db_path)
        try:
            with con:
                con.execute("UPDATE jobs SET id = ?, env = ? WHERE id = 'evil'",
                            (EVIL_ID, J({"K" + EVIL: "s3cret"})))
        finally:
            con.close()
        # Wide enough that no table cuts a value short: each is checked whole.
        patcher = mock.patch.dict(os.environ, {"COLUMNS": "1000"})
        patcher.start()
        self.addCleanup(patcher.stop)

    def assert_escaped(self, text, *shown):
        self.assertNotIn("\x1b", text)
        self.assertNotIn("\x07", text)
        self.assertNotIn("\x9b", text)
        for fragment in shown:
            self.assertIn(fragment, text)

    def run_to_the_dlq(self):
        worker = self.run_cli("worker", "start", "--burst")
        self.assertEqual(worker.code, 0, worker)
        job = self.job(EVIL_ID)
        self.assertEqual(job["state"], jobs.DEAD)
        self.assertIn(EVIL, job["last_error"])  # raw in the store: escaping is the printer's business
        return worker.stdout

    def test_job_fields_in_show_list_dlq_and_logs(self):
        log = self.run_to_the_dlq()
        with self.subTest("worker log"):
            self.assert_escaped(log, "job ev%s started" % SHOWN, "working directory %s/gone%s does not exist"
                                % (self.tmp, SHOWN))
        show = self.ok("show", EVIL_ID).stdout
        with self.subTest("show"):
            self.assert_escaped(show, "id           ev" + SHOWN, "command      echo %s; exit 3" % SHOWN,
                                "cwd          %s/gone%s" % (self.tmp, SHOWN), "env          K%s=***" % SHOWN,
                                "last_error   cannot start: working directory")
            self.assertNotIn("s3cret", show)
        for argv in (["list"], ["list", "--state", "dead"], ["dlq", "list"]):
            with self.subTest(argv=argv):
                self.assert_escaped(self.ok(*argv).stdout, "ev" + SHOWN, "echo %s; exit 3" % SHOWN)
        with self.subTest("dlq list"):
            self.assert_escaped(self.ok("dlq", "list").stdout, "working directory %s/gone%s" % (self.tmp, SHOWN))
        with self.subTest("logs"):
            self.assert_escaped(self.ok("logs", EVIL_ID).stdout, "== job ev%s, run 1 of 1: cannot start" % SHOWN)
        for argv in (["dlq", "retry", EVIL_ID], ["delete", EVIL_ID]):
            with self.subTest(argv=argv):
                self.assert_escaped(self.ok(*argv).stdout, "ev" + SHOWN)

    def test_worker_ids_hosts_and_running_jobs_in_worker_list(self):
        self.run_to_the_dlq()
        self.ok("enqueue", J({"id": "busy", "command": "true"}))
        con = sqlite3.connect(self.db_path)
        try:
            with con:
                con.execute("UPDATE jobs SET id = ? WHERE id = 'busy'", ("busy" + EVIL,))
        finally:
            con.close()
        now = time.time()
        with Store(self.db_path) as store:
            # A worker on another host (so its pid is not checked) with a hostile name. Every argument
            # by keyword: main's heartbeat takes `now` as a keyword, this branch's as the second argument.
            store.heartbeat("w" + EVIL, now=now, lease_s=300, pid=1, host="h" + EVIL, threads=1, started_at=now)
            self.assertEqual(store.claim("w" + EVIL, 300, now=now)["id"], "busy" + EVIL)
        self.assert_escaped(self.ok("worker", "list").stdout, "h" + SHOWN, "busy" + SHOWN)

    def test_error_lines(self):
        for argv in (["show", "nope" + EVIL], ["enqueue", "--file", os.path.join(self.tmp, "none" + EVIL)],
                     ["list", "extra" + EVIL], ["logs", EVIL_ID, "--run", "9"]):
            with self.subTest(argv=argv[0]):
                result = self.cli(*argv)
                self.assertIn(result.code, (1, 2), result)
                self.assert_escaped(result.stderr, "error: ")
                self.assertIn("PWNED", result.stderr)

    def test_a_traceback_in_the_worker_log_keeps_its_lines(self):
        import io
        import logging
        import queuectl
        stream = io.StringIO()
        handler = queuectl.worker_log_handler(stream)
        logger = logging.getLogger("qctl.test-worker-log")
        logger.propagate = False
        logger.addHandler(handler)
        self.addCleanup(logger.removeHandler, handler)
        try:
            raise ValueError("bad\n" + EVIL)
        except ValueError:
            logger.exception("job %s: error\nforged line", EVIL_ID)
        text = stream.getvalue()
        self.assert_escaped(text, "job ev%s: error\\x0aforged line\nTraceback (most recent call last):\n" % SHOWN,
                            "\nValueError: bad\n" + SHOWN + "\n")

    def test_the_detached_worker_log(self):
        started = self.run_cli("worker", "start", "--detach", "--burst")
        self.assertEqual(started.code, 0, started)
        log_path = qhome.log_path(self.home)

        def log():
            with open(log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        wait_until(lambda: os.path.exists(log_path) and " stopped" in log(), message="the detached worker's exit")
        self.assert_escaped(log(), "job ev%s started" % SHOWN, "gone%s does not exist" % SHOWN)


class DashboardBadInputTest(HomeTestCase):
    def test_hostile_requests_get_a_4xx_and_change_nothing(self):
        import http.client
        import threading
        from qctl import dashboard
        self.ok("enqueue", J({"id": "p1", "command": "true"}))
        before = dump(self.db_path)
        server = dashboard.make_server(self.db_path, host="127.0.0.1", port=0)
        thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
        thread.start()
        self.addCleanup(thread.join, 30)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        cases = [("GET", "/api/jobs?limit=99999999999999999999999", 200),
                 ("GET", "/api/jobs?limit=-1", 400), ("GET", "/api/jobs?limit=1e3", 400),
                 ("GET", "/api/jobs?state=bogus", 400), ("GET", "/api/jobs/" + "x" * 10000, 404),
                 ("GET", "/api/jobs/a%00b", 404), ("GET", "/api/jobs/%ff%fe", 404), ("GET", "/api/jobs/nope", 404),
                 ("POST", "/api/jobs/p1/retry", 403), ("DELETE", "/api/jobs/p1", 405), ("GET", "/../etc/passwd", 404)]
        for method, path, status in cases:
            with self.subTest(path=path[:60]):
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
                try:
                    conn.request(method, path)
                    response = conn.getresponse()
                    body = response.read()
                finally:
                    conn.close()
                self.assertEqual(response.status, status, body[:300])
                if status != 200:
                    self.assertIn("error", json.loads(body))
                self.assertEqual(dump(self.db_path), before)


class ForeignDatabaseTest(HomeTestCase):
    def test_another_applications_database_is_refused_and_left_unchanged(self):
        os.remove(self.db_path)
        con = sqlite3.connect(self.db_path)
        con.execute("CREATE TABLE photos (name TEXT)")
        con.execute("INSERT INTO photos VALUES ('cat.jpg')")
        con.commit()
        con.close()
        with open(self.db_path, "rb") as fh:
            before = fh.read()
        for argv in (["status"], ["enqueue", "--command", "true"], ["worker", "start", "--burst"]):
            with self.subTest(argv=argv):
                result = self.cli(*argv)
                self.assertEqual((result.code, len(result.stderr.splitlines())), (1, 1), result)
                self.assertIn("not a queuectl database", result.stderr)
        with open(self.db_path, "rb") as fh:
            self.assertEqual(fh.read(), before, "someone else's database was changed")
        self.assertFalse(os.path.exists(self.db_path + "-wal"))

    def test_a_new_database_is_marked_ours(self):
        self.ok("status")
        con = sqlite3.connect(self.db_path)
        try:
            self.assertEqual(con.execute("PRAGMA application_id").fetchone()[0], 0x7163746C)
        finally:
            con.close()


class DatabaseUnderAWorkerTest(HomeTestCase):
    def test_a_deleted_database_stops_the_worker_with_one_line(self):
        # The worker looks at the file at each tick (TICK_S, 0.5 s): 0.1 s here, which is not under test.
        proc = self.spawn_worker(periods={"TICK_S": 0.1})
        with Store(self.db_path) as store:
            wait_until(lambda: store.live_workers(time.time()), message="the worker to register")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.db_path + suffix):
                os.remove(self.db_path + suffix)
        proc.wait(DEADLINE_S)
        proc.log.seek(0)
        text = proc.log.read()
        self.assertEqual(proc.returncode, 1, text)
        self.assertIn("deleted or replaced", text)
        self.assertNotIn("internal error", text)
        # One line, or one from each part of the worker that opened the file just as it went.
        self.assertLessEqual(text.count("deleted or replaced"), 1 + 2, text)

    def test_a_deleted_database_is_not_made_again_behind_the_home(self):
        # sqlite3.connect would make an empty one with the umask's mode (0644 under 022), where
        # env secrets would follow: only home.ensure makes the file, private.
        self.store()
        os.remove(self.db_path)
        with self.assertRaisesRegex(StoreError, "the database .* was deleted or replaced"):
            Store(self.db_path)
        self.assertFalse(os.path.exists(self.db_path))

    def test_a_damaged_page_ends_a_burst_worker_instead_of_looping(self):
        store = self.store()
        store.enqueue([new_job("j%d" % i) for i in range(20)], time.time())
        root = store._read("SELECT rootpage FROM sqlite_master WHERE name = 'jobs_ready'")[0][0]
        page = store._read("PRAGMA page_size")[0][0]
        store._read("PRAGMA wal_checkpoint(TRUNCATE)")
        with open(self.db_path, "r+b") as fh:  # the claim's index page, overwritten with garbage
            fh.seek((root - 1) * page)
            fh.write(bytes(range(256)) * (page // 256))
        result = self.run_cli("worker", "start", "--burst", timeout=DEADLINE_S)
        self.assertEqual(result.code, 1, result)
        self.assertIn("malformed", result.stdout + result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
