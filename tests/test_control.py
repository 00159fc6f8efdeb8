"""Control: cancel, retry of any finished job, edit, named queues (pause, global concurrency),
tags, retention, worker --queue and --drain. Store-level where the rule is the point, real
worker processes where a worker has to notice something."""

import json
import os
import time
import unittest

from qctl import config as qconfig
from qctl import jobs
from qctl.errors import InvalidJob, InvalidState, JobNotFound
from tests.base import SETTINGS, HomeTestCase, add_job, new_job, run_next, wait_until
from tests.test_tree import alive, read

T = 1800000000.0
POSIX = os.name == "posix"


class ControlCase(HomeTestCase):
    def setUp(self):
        super().setUp()
        self.s = self.store()

    def state(self, job_id):
        return self.s.get(job_id)["state"]

    def json_of(self, *argv):
        return json.loads(self.ok(*argv, "--json").stdout)


class CancelStoreTest(ControlCase):
    def test_waiting_jobs_are_cancelled_at_once_and_never_claimed(self):
        add_job(self.s, "a", now=T)
        add_job(self.s, "b", now=T)
        run_next(self.s, "a", start=T, end=T, error="exit code 1", exit_code=1)  # a is failed, due again
        self.assertEqual(self.s.cancel(["a", "b"], now=T + 1), (["a", "b"], []))
        self.assertEqual((self.state("a"), self.state("b")), (jobs.CANCELLED, jobs.CANCELLED))
        self.assertEqual(self.s.get("b")["last_error"], "cancelled")
        self.assertIsNone(self.s.claim("w", 30, now=T + 100))

    def test_cancelling_a_finished_or_unknown_job_changes_nothing(self):
        add_job(self.s, "a", now=T)
        add_job(self.s, "done", now=T)
        self.s.claim("w", 30, now=T)  # a is processing
        run_next(self.s, "done", start=T, end=T)
        with self.assertRaisesRegex(InvalidState, "'done' is completed"):
            self.s.cancel(["a", "done"], now=T)
        with self.assertRaises(JobNotFound):
            self.s.cancel(["a", "nope"], now=T)
        self.assertEqual(self.s.cancel_requests("w"), set(), "a refused batch asked nothing of the worker")

    def test_a_running_job_is_asked_of_its_worker_and_recorded_fenced(self):
        add_job(self.s, "a", now=T)
        job = self.s.claim("w", 30, now=T)
        self.assertEqual(self.s.cancel(["a"], now=T + 1), ([], ["a"]))
        self.assertEqual(self.s.cancel_requests("w"), {job["seq"]})
        self.assertEqual(self.s.cancel_requests("other"), set())
        recorded = self.s.record(jobs.Outcome(jobs.CANCEL, job, "w", T + 2, exit_code=-15), SETTINGS)
        self.assertEqual(recorded.state, jobs.CANCELLED)
        runs = self.s.job_runs(self.s.get("a"))
        self.assertEqual([(r["error"], r["exit_code"]) for r in runs], [("cancelled", -15)])
        # The race's other side: the run's own outcome, recorded second, changes nothing.
        self.assertIsNone(self.s.complete(job, "w", T + 3))
        self.assertEqual(self.state("a"), jobs.CANCELLED)

    def test_a_run_that_ends_first_wins_over_the_cancel(self):
        add_job(self.s, "a", now=T)
        job = self.s.claim("w", 30, now=T)
        self.s.cancel(["a"], now=T + 1)
        self.assertEqual(self.s.complete(job, "w", T + 2).state, jobs.COMPLETED)
        self.assertIsNone(self.s.record(jobs.Outcome(jobs.CANCEL, job, "w", T + 3), SETTINGS))
        self.assertEqual(self.state("a"), jobs.COMPLETED)

    def test_cancel_all_takes_filters_in_one_transaction(self):
        add_job(self.s, "n1", now=T, queue="nightly", tags=["x"])
        add_job(self.s, "n2", now=T, queue="nightly")
        add_job(self.s, "d1", now=T, tags=["x"])
        self.assertEqual(self.s.cancel(now=T, queue="nightly", tag="x"), (["n1"], []))
        self.assertEqual(self.s.cancel(now=T, queue="nightly"), (["n2"], []))
        self.assertEqual(self.state("d1"), jobs.PENDING)

    def test_a_lost_worker_whose_job_was_being_cancelled_ends_it_cancelled(self):
        add_job(self.s, "a", now=T)
        self.s.claim("gone", 30, now=T)
        self.s.cancel(["a"], now=T + 1)
        self.assertEqual(self.s.recover(T + 100, SETTINGS), [("a", jobs.CANCELLED)])


class RetryEditStoreTest(ControlCase):
    def test_retry_of_any_finished_job_resets_attempts_clears_fields_keeps_history(self):
        add_job(self.s, "a", now=T)
        run_next(self.s, "a", start=T, end=T + 1)
        self.assertEqual(self.s.retry(["a"], now=T + 5), ["a"])
        job = self.s.get("a")
        self.assertEqual((job["state"], job["attempts"], job["run"]), (jobs.PENDING, 0, 1))
        self.assertEqual([job[k] for k in ("exit_code", "last_error", "worker", "started_at", "finished_at")],
                         [None] * 5)
        run_next(self.s, "a", start=T + 6, end=T + 7)
        self.assertEqual([r["run"] for r in self.s.job_runs(self.s.get("a"))], [1, 2])
        add_job(self.s, "c", now=T)
        self.s.cancel(["c"], now=T)
        self.assertEqual(self.s.retry(now=T, state=jobs.CANCELLED), ["c"])
        with self.assertRaisesRegex(InvalidState, "'c' is pending"):
            self.s.retry(["c"], now=T)

    def test_edit_validates_the_whole_job_and_only_pending_or_failed(self):
        add_job(self.s, "a", now=T, priority=1, env={"TOKEN": "s3cret"}, tags=["old"])
        self.s.edit("a", {"priority": 9, "queue": "gpu", "tags": ["new", "two"]}, now=T, default_max_retries=3)
        job = self.s.get("a")
        self.assertEqual((job["priority"], job["queue"], job["tags"]), (9, "gpu", ["new", "two"]))
        self.assertEqual(json.loads(job["env"]), {"TOKEN": "s3cret"}, "fields not named are kept")
        self.assertEqual(job["next_run_at"], T, "the due time moves only with run_at or delay")
        self.s.edit("a", {"delay": 60}, now=T + 10, default_max_retries=3)
        self.assertEqual(self.s.get("a")["next_run_at"], T + 70)
        before = self.s.get("a")
        for bad in ({"priority": "high"}, {"queue": "no spaces"}, {"command": ""}, {"tags": ["x"] * 17}):
            with self.subTest(bad=bad), self.assertRaises(InvalidJob):
                self.s.edit("a", bad, now=T, default_max_retries=3)
        self.assertEqual(self.s.get("a"), before)
        self.s.claim("w", 30, now=T + 100)
        with self.assertRaisesRegex(InvalidState, "processing"):
            self.s.edit("a", {"priority": 1}, now=T, default_max_retries=3)


class QueueStoreTest(ControlCase):
    def test_a_paused_queue_is_passed_over_not_waited_behind(self):
        add_job(self.s, "n", now=T, queue="nightly", priority=9)
        add_job(self.s, "d", now=T)
        self.s.set_queue("nightly", paused=True)
        self.assertEqual(self.s.claim("w", 30, now=T)["id"], "d")
        self.assertIsNone(self.s.claim("w", 30, now=T))
        self.s.set_queue("nightly", paused=False)
        self.assertEqual(self.s.claim("w", 30, now=T)["id"], "n")

    def test_concurrency_counts_every_workers_jobs(self):
        for i in range(3):
            add_job(self.s, "g%d" % i, now=T, queue="gpu", priority=5)
        add_job(self.s, "d", now=T)
        self.s.set_queue("gpu", concurrency=2)
        other = self.store()
        self.assertEqual(self.s.claim("w1", 30, now=T)["id"], "g0")
        self.assertEqual(other.claim("w2", 30, now=T)["id"], "g1")
        self.assertEqual(other.claim("w2", 30, now=T)["id"], "d", "the full queue is passed over")
        self.assertIsNone(self.s.claim("w1", 30, now=T))
        job = {"seq": self.s.get("g0")["seq"], "run": 1}
        self.assertEqual(self.s.complete(job, "w1", T + 1).state, jobs.COMPLETED)
        self.assertEqual(other.claim("w2", 30, now=T + 1)["id"], "g2")

    def test_a_worker_serves_only_its_queues(self):
        add_job(self.s, "d", now=T)
        add_job(self.s, "g", now=T, queue="gpu")
        self.assertEqual(self.s.claim("w", 30, now=T, queues=("gpu", "io"))["id"], "g")
        self.assertIsNone(self.s.claim("w", 30, now=T, queues=("gpu", "io")))

    def test_queue_list_names_every_queue_with_its_counts(self):
        add_job(self.s, "g", now=T, queue="gpu")
        self.s.set_queue("empty", concurrency=3)
        queues = {q["name"]: q for q in self.s.queues()}
        self.assertEqual(sorted(queues), ["empty", "gpu"])
        self.assertEqual((queues["empty"]["concurrency"], queues["gpu"]["jobs"]["pending"]), (3, 1))


class RetentionStoreTest(ControlCase):
    def test_old_finished_jobs_go_in_small_batches_and_the_rest_stays(self):
        self.s.enqueue([new_job("old%d" % i, now=T) for i in range(7)] + [new_job("recent", now=T)] +
                       [new_job("dead", now=T, max_retries=0), new_job("waiting", now=T)], T)
        for i in range(7):
            run_next(self.s, "old%d" % i, start=T, end=T + 1)
        run_next(self.s, "recent", start=T, end=T + 86400 * 7)
        run_next(self.s, "dead", start=T, end=T + 1, error="exit code 1")
        settings = qconfig.defaults()
        now = T + 86400 * 7 + 10  # the old ones finished 7 days and 9 s ago, "recent" 10 s ago
        self.assertEqual(self.s.prune(now, settings, batch=3), 3)
        self.assertEqual(self.s.prune(now, settings, batch=3), 3)
        self.assertEqual(self.s.prune(now, settings, batch=3), 1)
        self.assertEqual(self.s.prune(now, settings, batch=3), 0)
        self.assertEqual(sorted(j["id"] for j in self.s.list_jobs(limit=0)), ["dead", "recent", "waiting"],
                         "dead jobs are kept forever by default")
        self.assertEqual(self.s.prune(now, dict(settings, **{"retain-dead": 1.0})), 1)


class ControlCommandTest(ControlCase):
    def test_plain_commands_and_the_program_form(self):
        first = self.ok("enqueue", "echo hi there").stdout.strip()
        second = self.ok("enqueue", "--queue", "q1", "--tag", "t", "--", "printf", "%s\\n", "it's").stdout.strip()
        self.assertEqual(self.s.get(first)["command"], "echo hi there")
        job = self.s.get(second)
        self.assertEqual((job["command"], job["queue"], job["tags"]), ("printf '%s\\n' 'it'\"'\"'s'", "q1", ["t"]))
        result = self.cli("enqueue", '{"command": "x", "priority": "high"}')
        self.assertEqual(result.code, 1, "a bad JSON object keeps its precise error")
        self.assertIn("priority must be an integer", result.stderr)

    def test_filters_cancel_retry_edit_and_queues_from_the_command_line(self):
        self.ok("enqueue", "--id", "a", "--queue", "nightly", "--tag", "big", "--command", "true")
        self.ok("enqueue", "--id", "b", "--command", "true")
        self.assertEqual([j["id"] for j in self.json_of("list", "--queue", "nightly")], ["a"])
        self.assertEqual([j["id"] for j in self.json_of("list", "--tag", "big")], ["a"])
        self.assertEqual(self.json_of("status", "--queue", "nightly")["jobs"]["pending"], 1)
        self.assertIn("job a changed", self.ok("edit", "a", "--priority", "4").stdout)
        self.assertIn("job a cancelled", self.ok("cancel", "a").stdout)
        self.assertEqual(self.cli("cancel", "a").code, 1, "a finished job cannot be cancelled")
        self.assertEqual(self.cli("edit", "a", "--priority", "1").code, 1)
        self.assertEqual(self.cli("cancel").code, 2)
        self.assertEqual(self.cli("retry", "--all").code, 2, "--all needs --state")
        self.assertIn("1 job back to pending", self.ok("retry", "--all", "--state", "cancelled").stdout)
        self.ok("queue", "pause", "nightly")
        self.ok("queue", "set", "nightly", "--concurrency", "2")
        queues = {q["name"]: q for q in self.json_of("queue", "list")}
        self.assertEqual((queues["nightly"]["paused"], queues["nightly"]["concurrency"]), (True, 2))
        self.assertEqual(self.cli("queue", "pause", "bad name").code, 2)


@unittest.skipUnless(POSIX, "process trees and signals")
class CancelWorkerTest(ControlCase):
    def test_cancel_from_another_shell_kills_the_tree_and_the_worker_goes_on(self):
        pidfile = os.path.join(self.tmp, "pid")
        self.ok("enqueue", "--id", "long", "--command", "sh -c 'echo $$ > %s; exec sleep 30' & wait" % pidfile)
        self.ok("enqueue", "--id", "next", "--command", "true", "--priority", "-1")
        # The worker looks for cancel requests at each tick (TICK_S, 0.5 s): 0.1 s here. That the
        # cancel kills the tree and waits for it is under test, not how often the worker looks.
        self.spawn_worker("--count", "1", periods={"TICK_S": 0.1})
        pid = int(wait_until(lambda: read(pidfile), message="the job to start"))
        started = time.monotonic()
        result = self.run_cli("cancel", "long")  # a separate process with only the home
        self.assertIn("job long cancelled", result.stdout, result)
        self.assertLess(time.monotonic() - started, 2 + 1.0, "the cancel took longer than its 2 s (+ start-up)")
        wait_until(lambda: not alive(pid), message="the tree to be gone")
        self.assertEqual(self.state("long"), jobs.CANCELLED)
        self.assertEqual([r["error"] for r in self.s.job_runs(self.s.get("long"))], ["cancelled"])
        wait_until(lambda: self.state("next") == jobs.COMPLETED, message="the worker to go on")


@unittest.skipUnless(POSIX, "real worker processes")
class QueueWorkerTest(ControlCase):
    def test_concurrency_is_global_across_worker_processes(self):
        log = os.path.join(self.tmp, "log")
        # Each run lasts long enough (0.15 s, many claim polls) for a second claim to overlap it, were one allowed.
        cmd = "echo start $(date +%%s.%%N) >> %s; sleep 0.15; echo end $(date +%%s.%%N) >> %s" % (log, log)
        self.ok("queue", "set", "gpu", "--concurrency", "1")
        self.s.enqueue([new_job("g%d" % i, command=cmd, queue="gpu", priority=5) for i in range(4)] +
                       [new_job("d%d" % i, command="true") for i in range(4)], time.time())
        for _ in range(2):
            self.spawn_worker("--count", "2", "--burst")
        wait_until(lambda: self.s.counts()[jobs.COMPLETED] == 8, message="every job to complete")
        events = [line.split() for line in read(log).splitlines()]
        running = peak = 0
        for kind, _ in sorted(events, key=lambda e: float(e[1])):
            running += 1 if kind == "start" else -1
            peak = max(peak, running)
        self.assertEqual(peak, 1, "two jobs of a concurrency-1 queue ran at once")

    def test_drain_waits_for_retries_then_exits_and_serves_only_its_queues(self):
        marker = os.path.join(self.tmp, "ran-once")
        self.ok("config", "set", "backoff-max", "0.3")  # a retry not yet due when the first run fails
        self.ok("enqueue", "--id", "flaky", "--queue", "q", "--max-retries", "1",
                "--command", "test -e %s || { touch %s; exit 1; }" % (marker, marker))
        self.ok("enqueue", "--id", "other", "--command", "true")
        result = self.run_cli("worker", "start", "--queue", "q", "--drain", timeout=30)
        self.assertEqual(result.code, 0, result)
        self.assertEqual(self.state("flaky"), jobs.COMPLETED, "--drain waited out the retry's delay")
        self.assertEqual(self.state("other"), jobs.PENDING, "a job of another queue was served")


if __name__ == "__main__":
    unittest.main()
