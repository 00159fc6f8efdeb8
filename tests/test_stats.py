"""`stats`: figures from the runs table combined with silent successes (no runs row), and
their Prometheus rendering."""

import json
import re

from qctl import jobs
from qctl import stats as qstats
from tests.base import HomeTestCase, new_job, retry_in, run_next

T = 1000000.0  # "now" of the scenario: the store takes time as a parameter
WORKER = "test-worker"


class StatsScenario(HomeTestCase):
    """Runs with known times: every figure of `stats` is worked out by hand below."""

    def setUp(self):
        super().setUp()
        store = self.store()
        self.s = store

        def run(job_id, start, end, *, fail=False, output=b""):
            run_next(store, job_id, start=start, end=end, error="exit code 1" if fail else None, output=output,
                     settings=retry_in(1.0), worker=WORKER)

        store.enqueue([new_job("d", now=T - 7300, max_retries=1)], T - 7300)
        run("d", T - 7200, T - 7197, fail=True)          # 3.0 s, older than an hour
        run("d", T - 5000, T - 4996, fail=True)          # 4.0 s, a retry; now dead
        store.enqueue([new_job("c", now=T - 1100, max_retries=1)], T - 1100)
        run("c", T - 1000, T - 998, fail=True)           # 2.0 s, in the last hour
        store.enqueue([new_job("b", now=T - 31, priority=5)], T - 31)
        run("b", T - 30, T - 29.5, output=b"hello\n")    # 0.5 s, success with output: a runs row
        run("c", T - 20, T - 19)                          # 1.0 s, a retry, silent success: no runs row
        store.enqueue([new_job("a", now=T - 11)], T - 11)
        run("a", T - 10, T - 9.9)                         # 0.1 s, silent success
        store.enqueue([new_job("g", now=T - 6, priority=5)], T - 6)
        store.claim(WORKER, 30.0, now=T - 5)                  # still running: not a finished run
        store.enqueue([new_job("e", now=T - 50)], T - 50)    # waiting 50 s
        store.enqueue([new_job("f", now=T, delay=100)], T)   # not runnable yet: not waiting
        self.figures = qstats.collect(store, T)

    def test_totals_count_silent_successes_once(self):
        runs = self.figures["runs"]
        self.assertEqual((runs["total"], runs["completed"], runs["failed"]), (6, 3, 3))
        self.assertEqual(runs["retries"], 2)
        self.assertEqual(runs["success_rate"], 0.5)
        self.assertAlmostEqual(runs["seconds"], 10.6, places=3)

    def test_windows(self):
        self.assertEqual(self.figures["last_minute"],
                         {"runs": 3, "completed": 3, "failures": 0, "success_rate": 1.0})
        self.assertEqual(self.figures["last_hour"],
                         {"runs": 4, "completed": 3, "failures": 1, "success_rate": 0.75})
        self.assertEqual(self.figures["throughput_per_minute"], 3)

    def test_run_time_covers_the_last_hour(self):
        run_time = self.figures["run_time"]
        self.assertEqual(run_time["count"], 4)  # 0.1, 0.5, 1.0, 2.0
        self.assertAlmostEqual(run_time["avg"], 0.9, places=3)
        self.assertAlmostEqual(run_time["p50"], 0.5, places=3)
        self.assertAlmostEqual(run_time["p95"], 2.0, places=3)
        self.assertAlmostEqual(run_time["max"], 2.0, places=3)

    def test_jobs_workers_and_oldest_pending(self):
        self.assertEqual(self.figures["jobs"],
                         {"pending": 2, "processing": 1, "completed": 3, "failed": 0, "dead": 1, "cancelled": 0})
        self.assertEqual(self.figures["workers"], {"processes": 0, "threads": 0})
        self.assertAlmostEqual(self.figures["oldest_pending_age"], 50.0, places=3)

    def test_prometheus_text(self):
        text = qstats.prometheus(self.figures)
        samples = {}
        for line in text.splitlines():
            if line.startswith("#"):
                self.assertRegex(line, r"^# (HELP|TYPE) queuectl_[a-z_]+ \S")
                continue
            m = re.match(r'^(queuectl_[a-z_]+(?:\{[a-z]+="[^"]*"\})?) (-?[0-9.e+]+|NaN)$', line)
            self.assertIsNotNone(m, line)
            samples[m.group(1)] = float(m.group(2))
        self.assertEqual(samples['queuectl_jobs{state="dead"}'], 1)
        self.assertEqual(samples['queuectl_jobs{state="pending"}'], 2)
        self.assertEqual(samples['queuectl_runs_total{outcome="completed"}'], 3)
        self.assertEqual(samples['queuectl_runs_total{outcome="failed"}'], 3)
        self.assertEqual(samples["queuectl_workers"], 0)
        self.assertEqual(samples['queuectl_run_duration_seconds{quantile="0.95"}'], 2.0)
        self.assertEqual(samples["queuectl_run_duration_seconds_count"], 6)
        self.assertIn("# TYPE queuectl_run_duration_seconds summary", text)

    def test_an_empty_queue_has_no_made_up_numbers(self):
        with self.store() as store:
            store.purge(jobs.COMPLETED, now=T)
            store.purge(jobs.DEAD, now=T)
        figures = qstats.collect(self.s, T + 7200)
        self.assertEqual(figures["runs"]["total"], 0)
        self.assertIsNone(figures["runs"]["success_rate"])
        self.assertIsNone(figures["run_time"]["p95"])
        self.assertIn('queuectl_run_duration_seconds{quantile="0.5"} NaN', qstats.prometheus(figures))


class PercentileTest(HomeTestCase):
    def test_nearest_rank(self):
        values = list(range(1, 101))
        self.assertEqual(qstats.percentile(values, 0.5), 50)
        self.assertEqual(qstats.percentile(values, 0.95), 95)
        self.assertEqual(qstats.percentile([7], 0.95), 7)
        self.assertIsNone(qstats.percentile([], 0.5))


class StatsCommandTest(HomeTestCase):
    def test_a_real_worker_run_shows_up(self):
        # Through a real worker: silent successes, a success with output, a failure.
        self.ok("enqueue", "--command", "true")
        self.ok("enqueue", "--command", "true")
        self.ok("enqueue", "--command", "echo hi")
        self.ok("enqueue", "--command", "exit 3", "--max-retries", "0")
        worker = self.run_cli("worker", "start", "--burst")
        self.assertEqual(worker.code, 0, worker)
        figures = json.loads(self.ok("stats", "--json").stdout)
        self.assertEqual((figures["runs"]["completed"], figures["runs"]["failed"]), (3, 1))
        self.assertEqual(figures["last_minute"]["runs"], 4)
        self.assertEqual(figures["run_time"]["count"], 4)
        self.assertEqual(figures["jobs"]["dead"], 1)
        text = self.ok("stats").stdout
        self.assertRegex(text, r"runs +4: 3 completed, 1 failed, 0 retries; success rate 75\.0%")
        self.assertRegex(text, r"last minute +4 runs, 1 failure")
        self.assertIn("throughput      3 completed/min", text)

    def test_help_has_an_example(self):
        self.assertIn("queuectl stats --json", self.ok("stats", "-h").stdout)
