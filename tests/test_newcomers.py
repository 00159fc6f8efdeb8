"""What users of other queue tools try first: init, backup, check, the Python API, a dlq
retry that really resets the job, and usage errors that say where an option belongs."""

import json
import os
import shutil
import sqlite3
import time
import unittest

from qctl import Queue, jobs
from qctl.db import SCHEMA_VERSION, Store
from qctl.errors import InvalidJob, InvalidState
from qctl.worker import Worker
from tests.base import HomeTestCase, add_job


class InitTest(HomeTestCase):
    def test_init_makes_the_home_and_says_where(self):
        fresh = os.path.join(self.tmp, "new", "home")
        result = self.cli("--home", fresh, "init")
        self.assertEqual(result.code, 0, result)
        self.assertEqual(result.stdout.splitlines(), ["home %s" % fresh, "database %s" % os.path.join(fresh, "queue.db")])
        with Store(os.path.join(fresh, "queue.db")) as store:
            self.assertEqual(store.counts()[jobs.PENDING], 0)
        self.assertEqual(self.cli("--home", fresh, "init").code, 0, "init again changes nothing")


class BackupTest(HomeTestCase):
    def test_a_backup_holds_every_acknowledged_job_while_the_wal_holds_them(self):
        # A worker's open connection keeps the WAL from being folded back: copying queue.db
        # alone then missed jobs that enqueue had acknowledged.
        keeper = self.store(durable=False, autocheckpoint=False)
        for i in range(4):
            self.ok("enqueue", "--id", "j%d" % i, "--command", "true")
        self.assertGreater(os.path.getsize(self.db_path + "-wal"), 0)
        naive = os.path.join(self.tmp, "naive.db")
        shutil.copyfile(self.db_path, naive)
        target = os.path.join(self.tmp, "backup.db")
        self.assertIn("backed up to", self.ok("backup", target).stdout)
        con = sqlite3.connect(target)
        try:
            self.assertEqual(sorted(r[0] for r in con.execute("SELECT id FROM jobs")), ["j0", "j1", "j2", "j3"])
            self.assertEqual(con.execute("PRAGMA journal_mode").fetchone()[0], "delete")
        finally:
            con.close()
        if os.name == "posix":
            self.assertEqual(os.stat(target).st_mode & 0o777, 0o600)
        result = self.cli("backup", target)
        self.assertEqual(result.code, 1, "an existing file is not overwritten")
        keeper.close()

    def test_a_restored_backup_is_a_working_home(self):
        self.ok("enqueue", "--id", "kept", "--command", "true")
        target = os.path.join(self.tmp, "b.db")
        self.ok("backup", target)
        restored = os.path.join(self.tmp, "restored")
        os.mkdir(restored, 0o700)
        shutil.copyfile(target, os.path.join(restored, "queue.db"))
        os.chmod(os.path.join(restored, "queue.db"), 0o600)
        self.assertIn("kept", self.cli("--home", restored, "list").stdout)


class CheckTest(HomeTestCase):
    def test_healthy(self):
        result = self.ok("check")
        self.assertIn("healthy", result.stdout)
        facts = json.loads(self.ok("check", "--json").stdout)
        self.assertEqual((facts["healthy"], facts["problems"], facts["schema_version"]), (True, [], SCHEMA_VERSION))

    def test_a_job_stuck_under_a_gone_worker_is_one_problem_line(self):
        store = self.store()
        add_job(store, "stuck", now=time.time() - 100)
        store.claim("gone-worker", 1, now=time.time() - 50)
        result = self.cli("check")
        self.assertEqual(result.code, 1, result)
        self.assertEqual(len(result.stderr.splitlines()), 1, result)
        self.assertIn("stuck", result.stderr)

    @unittest.skipUnless(os.name == "posix", "file modes")
    def test_a_shared_home_is_reported_not_refused(self):
        os.chmod(self.home, 0o777)
        self.addCleanup(os.chmod, self.home, 0o700)
        result = self.cli("check")
        self.assertEqual(result.code, 1, result)
        self.assertIn("writable by group and others", result.stderr)

    def test_a_damaged_page_is_reported(self):
        store = self.store()
        store.enqueue([jobs.validate_job({"command": "x" * 3000}, now=0, cwd="/", default_max_retries=0)
                       for _ in range(50)], 0)
        root = store._read("SELECT rootpage FROM sqlite_master WHERE name = 'jobs_ready'")[0][0]
        page = store._read("PRAGMA page_size")[0][0]
        store._read("PRAGMA wal_checkpoint(TRUNCATE)")
        store.close()
        with open(self.db_path, "r+b") as fh:
            fh.seek((root - 1) * page + 100)
            fh.write(b"\xff" * 200)
        result = self.cli("check")
        self.assertEqual(result.code, 1, result)
        self.assertNotIn("Traceback", result.stderr)


class DlqRetryResetsTest(HomeTestCase):
    def test_the_dead_runs_fields_leave_the_job_and_stay_in_its_runs(self):
        self.ok("enqueue", "--id", "d", "--command", "exit 3", "--max-retries", "0")
        Worker(self.home, threads=1, burst=True).run()
        self.ok("dlq", "retry", "d")
        job = json.loads(self.ok("show", "d", "--json").stdout)
        self.assertEqual([job[k] for k in ("state", "attempts", "last_error", "exit_code", "worker", "started_at",
                                          "finished_at")], ["pending", 0, None, None, None, None, None])
        self.assertEqual([(r["run"], r["exit_code"], r["error"]) for r in job["runs"]], [(1, 3, "exit code 3")])


class PythonApiTest(HomeTestCase):
    def test_enqueue_get_list_cancel_retry_wait(self):
        q = Queue(home=self.home)
        ok = q.enqueue("echo api", tags=["t"], priority=2)
        bad = q.enqueue("exit 4", max_retries=0, queue="other")
        doomed = q.enqueue("true", delay="1h")
        self.assertEqual(q.get(ok)["state"], "pending")
        self.assertEqual([j["id"] for j in q.list(tag="t")], [ok])
        self.assertEqual([j["id"] for j in q.list(queue="other")], [bad])
        self.assertEqual(q.cancel(doomed), "cancelled")
        Worker(self.home, threads=1, burst=True).run()
        self.assertEqual(q.wait([ok, bad, doomed], timeout=10), {ok: "completed", bad: "dead", doomed: "cancelled"})
        self.assertEqual(q.get(bad)["runs"][0]["exit_code"], 4)
        q.retry(bad)
        self.assertEqual(q.get(bad)["state"], "pending")
        with self.assertRaises(TimeoutError):
            q.wait([bad], timeout=0.2)
        with self.assertRaises(InvalidJob):
            q.enqueue("")
        with self.assertRaises(InvalidState):
            q.cancel(ok)


class UsageHintTest(HomeTestCase):
    """An option in the wrong place gets the usage line of the command it was given to, and
    one error line that says where it belongs; exit 2, nothing changed."""

    def usage_error(self, *argv):
        result = self.cli(*argv)
        self.assertEqual(result.code, 2, result)
        lines = result.stderr.splitlines()
        self.assertTrue(lines[0].startswith("usage: queuectl"), result)
        errors = [line for line in lines if ": error: " in line]
        self.assertEqual(errors, lines[-1:], "one error line, after the usage line")
        self.assertEqual(result.stdout, "")
        return lines[0], errors[0]

    def test_a_task_queue_habit_gets_enqueues_own_usage_and_a_hint(self):
        usage, error = self.usage_error("enqueue", "--type", "print_message", "--payload", "{}")
        self.assertTrue(usage.startswith("usage: queuectl enqueue "), usage)
        self.assertTrue(error.startswith("queuectl enqueue: error: unrecognized arguments: --type "), error)
        self.assertIn("queuectl runs shell commands", error)
        self.assertIn("--command CMD", error)
        self.assertEqual(self.store().counts()[jobs.PENDING], 0)

    def test_an_option_given_to_a_group_names_the_action_it_belongs_to(self):
        cases = (
            (("worker", "--count", "1"), "queuectl worker: error: --count belongs to 'worker start' "
                                         "(queuectl worker start --count 1)"),
            (("dlq", "--all"), "--all belongs to 'dlq retry' (queuectl dlq retry --all)"),
            (("queue", "--concurrency", "2"), "--concurrency belongs to 'queue set'"),
            (("config", "--json"), "--json belongs to 'config get' or 'config list'"),
            (("worker", "stop", "--count", "2"), "queuectl worker stop: error: unrecognized arguments: --count 2; "
                                                 "--count belongs to 'worker start'"),
        )
        for argv, expected in cases:
            with self.subTest(argv=argv):
                usage, error = self.usage_error(*argv)
                self.assertTrue(usage.startswith("usage: queuectl " + " ".join(a for a in argv[:2] if a[0] != "-")))
                self.assertIn(expected, error)

    def test_other_misplaced_or_mistyped_options(self):
        cases = (
            (("list", "--home", self.tmp), "--home goes before the command"),
            (("worker", "--burst", "start"), "queuectl worker: error: unrecognized arguments: --burst; --burst "
                                             "belongs to 'worker start' (queuectl worker start --burst)"),
            (("enqueue", "--priorty", "3", "--command", "true"), "did you mean --priority?"),
            (("enqueue", "python", "train.py", "--epochs", "3"), "a program's own options go after --"),
            (("--bogus", "status"), "queuectl: error: unrecognized arguments: --bogus"),
        )
        for argv, expected in cases:
            with self.subTest(argv=argv):
                self.assertIn(expected, self.usage_error(*argv)[1])
        self.assertEqual(self.store().counts()[jobs.PENDING], 0)

    def test_the_hint_reaches_a_real_command_line(self):
        result = self.run_cli("dlq", "--all")
        self.assertEqual(result.code, 2, result)
        self.assertEqual(result.stderr.splitlines()[-1],
                         "queuectl dlq: error: unrecognized arguments: --all; --all belongs to 'dlq retry' "
                         "(queuectl dlq retry --all)")


if __name__ == "__main__":
    unittest.main()
