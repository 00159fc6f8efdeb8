"""Workers on PostgreSQL, black-box through the CLI: real worker processes on a real server
(tests/pg.py; every test skips where it cannot run). Many workers run each job once; a worker
killed with -9 has its job run elsewhere; a server restart mid-drain loses nothing; `worker
stop` and wake-ups reach workers through the database; a missing psycopg or an unreachable
server is one line."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import unittest

from tests import pg
from tests.base import DEADLINE_S, POSIX, SCRIPT, HomeTestCase, wait_until

STRESS = os.environ.get("QUEUECTL_STRESS") == "1"


@unittest.skipUnless(POSIX, "kills worker process groups")
class PostgresWorkersTest(pg.OnPostgres, HomeTestCase):
    def enqueue_marking(self, count, *, seconds=0):
        """`count` jobs j0.. each appending a line to its own file in marks/ (then sleeping)."""
        marks = os.path.join(self.tmp, "marks")
        os.makedirs(marks, exist_ok=True)
        lines = "".join(json.dumps({"id": "j%d" % i, "command": "echo run >> %s/j%d%s" % (
            marks, i, "; sleep %s" % seconds if seconds else "")}) + "\n" for i in range(count))
        path = os.path.join(self.tmp, "jobs.jsonl")
        with open(path, "w") as fh:
            fh.write(lines)
        self.ok("enqueue", "--file", path)
        return marks

    def runs_of(self, marks, count):
        runs = []
        for i in range(count):
            try:
                with open(os.path.join(marks, "j%d" % i)) as fh:
                    runs.append(len(fh.readlines()))
            except FileNotFoundError:
                runs.append(0)
        return runs

    def test_four_worker_processes_run_every_job_exactly_once(self):
        count = 4000 if STRESS else 400
        marks = self.enqueue_marking(count)
        workers = [self.spawn_worker("--count", "2", "--drain") for _ in range(4)]
        for proc in workers:
            self.assertEqual(proc.wait(DEADLINE_S * (4 if STRESS else 1)), 0, self.log_of(proc))
        self.assertEqual(self.runs_of(marks, count), [1] * count)
        self.assertEqual(self.status()["jobs"]["completed"], count)

    def test_a_worker_killed_mid_job_has_its_job_run_by_another_within_the_lease(self):
        self.ok("config", "set", "lease-seconds", "2")
        marks = self.enqueue_marking(1, seconds=1)
        first = self.spawn_worker()
        wait_until(lambda: self.runs_of(marks, 1) == [1], message="the first run to start")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        killed_at = time.monotonic()
        self.spawn_worker("--drain")
        wait_until(lambda: self.job("j0")["state"] == "completed", message="the job to run again")
        # lease-seconds, then one look of the recoverer (TICK_S) and the run itself (1 s), with slack
        self.assertLess(time.monotonic() - killed_at, 2 + 0.5 + 1 + 3)
        runs = self.ok("show", "--json", "j0").stdout
        self.assertEqual([run["error"] for run in json.loads(runs)["runs"]], ["worker lost", None])

    def test_a_worker_cut_off_from_the_server_kills_its_command_before_its_lease_runs_out(self):
        import psycopg
        from qctl.pgstore import parse_url
        self.ok("config", "set", "lease-seconds", "3")
        role = "cut_%s" % os.urandom(4).hex()
        conninfo = parse_url(self.db_path)[0]

        def admin(sql):
            with psycopg.connect(conninfo, autocommit=True) as con:
                con.execute(sql)
        admin("CREATE ROLE %s LOGIN SUPERUSER" % role)
        self.addCleanup(admin, "DROP ROLE IF EXISTS %s" % role)
        pid_file = os.path.join(self.tmp, "pid")
        self.ok("enqueue", "--id", "long", "echo $$ > %s.part && mv %s.part %s && exec sleep 60"
                % (pid_file, pid_file, pid_file))
        worker = self.spawn_worker(env={"QUEUECTL_DB": self.db_path.replace("//postgres@", "//%s@" % role, 1)})
        def read(path):
            try:
                with open(path) as fh:
                    return fh.read()
            except OSError:
                return ""
        pid = int(wait_until(lambda: read(pid_file).strip(), message="the command to start"))
        # The server turns the worker away: its connections cut, and no new one let in.
        admin("ALTER ROLE %s NOLOGIN" % role)
        cut = time.monotonic()
        admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '%s'" % role)

        def command_gone():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return read("/proc/%d/stat" % pid).split()[2:3] == ["Z"]
        wait_until(command_gone, message="the cut-off worker to kill its command")
        # Within two thirds of the lease of its last beat (at most a third of a lease before the cut),
        # plus a pulse period and the kill's grace: before another worker could recover the job.
        self.assertLess(time.monotonic() - cut, 3.0, "killed only once the lease had run out")
        wait_until(lambda: "no heartbeat reached the database" in self.log_of(worker), message="the warning")
        os.killpg(worker.pid, signal.SIGKILL)

    def test_a_server_restart_during_a_drain_loses_nothing(self):
        count = 300
        marks = self.enqueue_marking(count)
        workers = [self.spawn_worker("--count", "2") for _ in range(2)]
        wait_until(lambda: self.status()["workers"]["processes"] == 2, message="both workers to register")
        wait_until(lambda: sum(self.runs_of(marks, count)) >= 30, message="the drain to get going")
        pg.restart()
        wait_until(lambda: self.status()["jobs"]["completed"] == count, timeout=DEADLINE_S * 2,
                   message="every job to complete after the restart")
        runs = self.runs_of(marks, count)
        self.assertNotIn(0, runs)
        # At least once: a run whose outcome the restart cut off runs again, and only those.
        self.assertLessEqual(sum(runs) - count, 2 * 2, runs)
        self.ok("worker", "stop", "--wait", "--timeout", "30")
        for proc in workers:
            code = proc.wait(DEADLINE_S)
            log = self.log_of(proc)
            self.assertEqual(code, 0, log)
            self.assertNotIn("Traceback", log)
            self.assertIn("PostgreSQL", log)  # it said what happened, then carried on

    def test_worker_stop_reaches_workers_through_the_database(self):
        worker = self.spawn_worker()
        wait_until(lambda: self.status()["workers"]["processes"] == 1, message="the worker to register")
        elsewhere = os.path.join(self.tmp, "another-host-home")  # no stopfile of theirs can reach it
        result = self.run_cli("worker", "stop", "--wait", "--timeout", "30", env={"QUEUECTL_HOME": elsewhere})
        self.assertEqual(result.code, 0, result)
        self.assertEqual(worker.wait(DEADLINE_S), 0)

    def test_an_idle_worker_is_woken_by_notify_not_by_its_poll(self):
        self.ok("config", "set", "poll-interval", "30")
        worker = self.spawn_worker()
        wait_until(lambda: self.status()["workers"]["processes"] == 1, message="the worker to register")
        started = time.monotonic()
        self.ok("enqueue", "--id", "a", "true")
        wait_until(lambda: self.job("a")["state"] == "completed", message="the job")
        # Its safety poll is 30 s: only the NOTIFY makes it this fast.
        self.assertLess(time.monotonic() - started, 5.0)
        os.killpg(worker.pid, signal.SIGTERM)
        self.assertEqual(worker.wait(DEADLINE_S), 0)

    def status(self):
        return json.loads(self.ok("status", "--json").stdout)

    @staticmethod
    def log_of(proc):
        proc.log.seek(0)
        return proc.log.read()


class PostgresErrorsTest(HomeTestCase):
    def test_an_unreachable_server_is_one_line_and_exit_1(self):
        url = "postgresql://nobody@/postgres?host=%s" % os.path.join(self.tmp, "no-server-here")
        if importlib.util.find_spec("psycopg") is None:
            self.skipTest("psycopg 3 is not installed")
        result = self.run_cli("--db", url, "status")
        self.assertEqual(result.code, 1, result)
        self.assertEqual(result.stdout, "")
        self.assertRegex(result.stderr, r"\Aqueuectl: error: cannot reach the PostgreSQL database [^\n]*\n\Z")

    def test_without_psycopg_one_line_says_what_to_install(self):
        # psycopg made unimportable, installed or not.
        code = ("import sys; sys.modules['psycopg'] = None; sys.argv[0] = %r; "
                "sys.path.insert(0, %r); import queuectl; sys.exit(queuectl.main(sys.argv[1:]))"
                % (SCRIPT, os.path.dirname(SCRIPT)))
        env = dict(os.environ, QUEUECTL_HOME=self.home, QUEUECTL_DB="postgresql://localhost/x")
        proc = subprocess.run([sys.executable, "-c", code, "status"], capture_output=True, text=True, env=env,
                              timeout=60)
        self.assertEqual(proc.returncode, 1, proc)
        self.assertRegex(proc.stderr, r"\Aqueuectl: error: [^\n]*psycopg[^\n]*pip install 'queuectl\[postgres\]'[^\n]*\n\Z")

    def test_a_db_that_is_not_a_url_is_refused(self):
        result = self.cli("--db", os.path.join(self.tmp, "x.db"), "status")
        self.assertEqual(result.code, 1, result)
        self.assertIn("is not a postgresql:// URL", result.stderr)

    def test_the_password_of_a_url_is_never_printed(self):
        if importlib.util.find_spec("psycopg") is None:
            self.skipTest("psycopg 3 is not installed")
        url = "postgresql://someone:sekrit@/postgres?host=%s" % os.path.join(self.tmp, "none")
        result = self.run_cli("--db", url, "status")
        self.assertEqual(result.code, 1, result)
        self.assertNotIn("sekrit", result.stderr)
        self.assertIn("someone:***@", result.stderr)

    def test_no_form_of_password_is_ever_shown(self):
        from qctl import pgstore
        from qctl.errors import StoreError
        for url in ("postgresql://u:s3cret@h/db", "postgresql://u@h/db?password=s3cret&schema=q",
                    "postgresql://u@h/db?sslpassword=s3cret"):
            with self.subTest(url=url):
                shown = pgstore.parse_url(url)[2]
                self.assertNotIn("s3cret", shown)
                self.assertIn("***", shown)
        with self.assertRaises(StoreError) as caught:  # a raw / in it: where it ends cannot be told
            pgstore.parse_url("postgresql://u:s3cr/et@h/db")
        self.assertNotIn("s3cr", str(caught.exception))
        result = self.cli("--db", "postgres+psycopg://u:s3cret@h/db", "status")
        self.assertEqual(result.code, 1, result)
        self.assertNotIn("s3cret", result.stderr)


class MigrateTest(HomeTestCase):
    """`migrate --to URL`: a SQLite home's whole queue, into an empty PostgreSQL schema."""

    def setUp(self):
        super().setUp()
        self.url = pg.url()
        self.addCleanup(pg.drop, self.url)

    def fill_home(self):
        self.ok("config", "set", "max-retries", "0")
        self.ok("queue", "set", "slow", "--concurrency", "2")
        self.ok("enqueue", "--id", "done", "--tag", "t1", "--", "echo out; echo err >&2")
        self.ok("enqueue", "--id", "bad", "--queue", "slow", "exit 3")
        self.ok("worker", "start", "--burst")
        self.ok("enqueue", "--id", "after", "--after", "bad", "--after-policy", "finished", "true")
        self.ok("enqueue", "--id", "later", "--delay", "1h", "true")
        self.ok("enqueue", "--id", "waits", "--after", "later", "--unique-key", "k1", "true")
        self.ok("schedule", "add", "tick", "--every", "1h", "--", "echo tick")

    def test_two_copies_at_once_store_one_and_refuse_the_other_in_one_line(self):
        # Both found the schema empty and then collided on the copied seqs: an "internal error"
        # (UniqueViolation), a psycopg warning and a generator's traceback.
        self.fill_home()
        for i in range(300):
            self.ok("enqueue", "--id", "more%d" % i, "true")
        procs = [subprocess.Popen([sys.executable, SCRIPT, "--home", self.home, "migrate", "--to", self.url],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = sorted((proc.wait(DEADLINE_S), proc.stdout.read(), proc.stderr.read()) for proc in procs)
        for proc in procs:
            proc.stdout.close()
            proc.stderr.close()
        self.assertEqual([code for code, _, _ in results], [0, 1], results)
        self.assertEqual(results[1][2].count("\n"), 1, results[1][2])
        self.assertIn("already holds a queue", results[1][2])

    def test_a_home_is_copied_whole_and_its_jobs_go_on_there(self):
        self.fill_home()
        before = {job_id: json.loads(self.ok("show", "--json", job_id).stdout)
                  for job_id in ("done", "bad", "after", "waits", "later")}
        lists = [self.ok(*argv).stdout for argv in (("schedule", "list", "--json"), ("config", "get", "--json"),
                                                    ("queue", "list", "--json"), ("logs", "done"))]
        result = self.ok("migrate", "--to", self.url)
        self.assertIn("copied 5 jobs, 2 runs, 1 schedule, 1 setting and 1 queue setting", result.stdout)
        on_pg = ("--db", self.url)
        for job_id, job in before.items():
            self.assertEqual(json.loads(self.ok(*on_pg, "show", "--json", job_id).stdout), job)
        self.assertEqual([self.ok(*on_pg, *argv).stdout for argv in (
            ("schedule", "list", "--json"), ("config", "get", "--json"), ("queue", "list", "--json"),
            ("logs", "done"))], lists)
        # It goes on there: new jobs are numbered past the copied ones, dependencies and keys hold.
        self.ok(*on_pg, "enqueue", "--id", "new", "true")
        self.assertIn("holds unique key", self.ok(*on_pg, "enqueue", "--unique-key", "k1", "true").stderr)
        self.ok(*on_pg, "retry", "bad")
        self.ok(*on_pg, "edit", "later", "--delay", "0")
        self.ok(*on_pg, "worker", "start", "--burst")
        states = {job["id"]: job["state"] for job in json.loads(self.ok(*on_pg, "list", "--json").stdout)}
        self.assertEqual(states, {"done": "completed", "bad": "dead", "after": "completed", "waits": "completed",
                                  "later": "completed", "new": "completed"})

    def test_a_queue_there_already_or_a_live_worker_refuses_and_copies_nothing(self):
        self.fill_home()
        self.ok("--db", self.url, "enqueue", "--id", "theirs", "true")
        result = self.cli("migrate", "--to", self.url)
        self.assertEqual(result.code, 1, result)
        self.assertIn("copies only into an empty one", result.stderr)
        self.assertEqual([job["id"] for job in json.loads(self.ok("--db", self.url, "list", "--json").stdout)],
                         ["theirs"])
        other = pg.url()
        self.addCleanup(pg.drop, other)
        worker = self.spawn_worker()
        wait_until(lambda: json.loads(self.ok("status", "--json").stdout)["workers"]["processes"] == 1,
                   message="the worker to register")
        result = self.cli("migrate", "--to", other)
        self.assertEqual(result.code, 1, result)
        self.assertIn("1 worker of this home is running: stop them first", result.stderr)
        self.assertEqual(self.ok("--db", other, "list", "--json").stdout.strip(), "[]")
        os.killpg(worker.pid, signal.SIGTERM)
        self.assertEqual(worker.wait(DEADLINE_S), 0)

    def test_only_a_postgresql_url(self):
        result = self.cli("migrate", "--to", os.path.join(self.tmp, "other.db"))
        self.assertEqual(result.code, 1, result)
        self.assertIn("--to takes a postgresql:// URL", result.stderr)


class PostgresRacesTest(pg.OnPostgres, HomeTestCase):
    """What SQLite's one writer settles by itself, between transactions that run at once here."""

    def test_two_edits_pointing_jobs_at_each_other_refuse_one_as_a_cycle_never_deadlock(self):
        import threading
        from qctl.errors import QueueError
        from tests.base import add_job
        store = self.store()
        outcomes = []
        for i in range(10):
            a, b = "a%d" % i, "b%d" % i
            add_job(store, a, now=1.0)
            add_job(store, b, now=1.0)

            def edit(job_id, after):
                with self.store() as other:
                    try:
                        other.edit(job_id, {"after": [after]}, now=2.0, default_max_retries=3)
                        outcomes.append("ok")
                    except QueueError as exc:
                        outcomes.append(type(exc).__name__)
            threads = [threading.Thread(target=edit, args=(a, b)), threading.Thread(target=edit, args=(b, a))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        self.assertEqual(sorted(outcomes), ["BadDependency"] * 10 + ["ok"] * 10)
