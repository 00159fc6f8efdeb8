"""Workflow: dependencies (after, after_policy), unique keys, schedules and the on-finish hook."""

import json
import os
import shlex
import subprocess
import sys
import textwrap
import threading
import time
import unittest

from qctl import worker as qworker
from qctl.db import SCHEMA_VERSION
from qctl.errors import BadDependency, InvalidState
from qctl.jobs import Outcome, CANCEL

from tests.base import POSIX, SCRIPT, SETTINGS, HomeTestCase, add_job, new_job, run_next, wait_until
from tests.test_tree import alive, read


class DependencyTest(HomeTestCase):
    def test_a_waiting_job_is_pending_but_never_claimed_until_its_dependency_completes(self):
        store = self.store()
        add_job(store, "build", now=1.0)
        add_job(store, "test", now=1.0, after=["build"], priority=9)  # higher priority: still waits
        self.assertEqual(store.get("test")["state"], "pending")
        self.assertEqual(store.get("test")["waiting_for"], ["build"])
        run_next(store, "build", start=2.0, end=3.0)
        self.assertEqual(store.get("test")["waiting_for"], [])
        run_next(store, "test", start=4.0, end=5.0)
        self.assertEqual(store.get("test")["state"], "completed")

    def test_a_job_waits_for_all_of_its_dependencies(self):
        store = self.store()
        for job_id in ("a", "b"):
            add_job(store, job_id, now=1.0)
        add_job(store, "c", now=1.0, after=["a", "b"])
        run_next(store, "a", start=2.0, end=2.0)
        self.assertEqual(store.get("c")["waiting_for"], ["b"])
        run_next(store, "b", start=3.0, end=3.0)  # b is next, not c
        run_next(store, "c", start=4.0, end=4.0)

    def test_a_dead_dependency_kills_the_whole_chain_in_one_transaction(self):
        store = self.store()
        add_job(store, "a", now=1.0, max_retries=0)
        add_job(store, "b", now=1.0, after=["a"])
        add_job(store, "c", now=1.0, after=["b"])
        add_job(store, "d", now=1.0, after=["a"], after_policy="finished")
        recorded = run_next(store, "a", start=2.0, end=3.0, error="exit code 1")
        self.assertEqual(recorded.state, "dead")
        self.assertEqual((store.get("b")["state"], store.get("b")["last_error"]), ("dead", "dependency a dead"))
        self.assertEqual((store.get("c")["state"], store.get("c")["last_error"]), ("dead", "dependency b dead"))
        self.assertEqual(store.get("c")["finished_at"], 3.0)
        # after_policy finished: it runs whatever its dependency came to.
        self.assertEqual(store.get("d")["waiting_for"], [])
        run_next(store, "d", start=4.0, end=4.0)

    def test_a_cancelled_dependency_kills_its_dependents(self):
        store = self.store()
        add_job(store, "a", now=1.0)
        add_job(store, "b", now=1.0, after=["a"])
        store.cancel(["a"], now=2.0)
        self.assertEqual(store.get("b")["last_error"], "dependency a cancelled")

    def test_a_cancel_of_a_running_dependency_kills_dependents_once_recorded(self):
        store = self.store()
        add_job(store, "a", now=1.0)
        add_job(store, "b", now=1.0, after=["a"])
        job = store.claim("w", 30, now=2.0)
        store.cancel(["a"], now=2.5)
        self.assertEqual(store.get("b")["state"], "pending")
        store.record(Outcome(CANCEL, job, "w", 3.0), SETTINGS)
        self.assertEqual(store.get("b")["last_error"], "dependency a cancelled")

    def test_retrying_a_dead_dependency_does_not_revive_dead_dependents(self):
        store = self.store()
        add_job(store, "a", now=1.0, max_retries=0)
        add_job(store, "b", now=1.0, after=["a"])
        run_next(store, "a", start=2.0, end=3.0, error="exit code 1")
        store.retry(["a"], now=4.0)
        run_next(store, "a", start=5.0, end=6.0)
        self.assertEqual(store.get("b")["state"], "dead")

    def test_retrying_a_dependent_of_a_dead_job_alone_is_refused(self):
        store = self.store()
        add_job(store, "x", now=1.0, max_retries=0)
        add_job(store, "d", now=1.0, after=["x"])
        run_next(store, "x", start=2.0, end=3.0, error="exit code 1")
        with self.assertRaisesRegex(InvalidState, "job 'd' waits for job 'x', which is dead: retry 'x' too"):
            store.retry(["d"], now=4.0)
        self.assertEqual(store.get("d")["state"], "dead")
        store.retry(["x", "d"], now=4.0)  # both: d waits for x again
        self.assertEqual(store.get("d")["waiting_for"], ["x"])

    def test_edit_of_the_policy_keeps_a_dependency_that_gave_way_to_a_unique_key(self):
        store = self.store()
        add_job(store, "holder", now=1.0, unique_key="k")
        store.enqueue([new_job("e", unique_key="k"), new_job("f", after=["e"])], 2.0)
        store.edit("f", {"after_policy": "finished"}, now=3.0, default_max_retries=3)
        self.assertEqual(store.get("f")["waiting_for"], ["holder"])
        self.assertEqual(store.get("f")["after_policy"], "finished")

    def test_a_dependency_retrying_keeps_its_dependent_waiting(self):
        store = self.store()
        add_job(store, "a", now=1.0, max_retries=1)
        add_job(store, "b", now=1.0, after=["a"])
        run_next(store, "a", start=2.0, end=3.0, error="exit code 1")  # failed: a retry is due
        self.assertEqual(store.get("b")["waiting_for"], ["a"])
        run_next(store, "a", start=3.0, end=4.0)
        self.assertEqual(store.get("b")["waiting_for"], [])

    def test_a_retried_completed_dependency_makes_its_pending_dependents_wait_again(self):
        store = self.store()
        add_job(store, "a", now=1.0)
        add_job(store, "b", now=1.0)
        add_job(store, "c", now=1.0, after=["a", "b"])
        run_next(store, "a", start=2.0, end=2.0)
        store.retry(["a"], now=3.0)
        self.assertEqual(store.get("c")["waiting_for"], ["a", "b"])

    def test_a_dependency_that_is_dead_already_kills_the_new_job_at_once(self):
        store = self.store()
        add_job(store, "a", now=1.0, max_retries=0)
        run_next(store, "a", start=2.0, end=3.0, error="exit code 1")
        add_job(store, "b", now=4.0, after=["a"])
        self.assertEqual((store.get("b")["state"], store.get("b")["last_error"]), ("dead", "dependency a dead"))
        add_job(store, "c", now=4.0, after=["a"], after_policy="finished")
        self.assertEqual((store.get("c")["state"], store.get("c")["waiting_for"]), ("pending", []))

    def test_unknown_dependencies_and_cycles_store_nothing(self):
        store = self.store()
        with self.assertRaisesRegex(BadDependency, "waits for 'nope', which is not a known job"):
            store.enqueue([new_job("a"), new_job("b", after=["nope"])], 1.0)
        with self.assertRaisesRegex(BadDependency, "cycle: 'x' -> 'y' -> 'x'") as caught:
            store.enqueue([new_job("w"), new_job("x", after=["y"]), new_job("y", after=["x"])], 1.0)
        self.assertEqual(caught.exception.index, 1)
        with self.assertRaisesRegex(Exception, "cannot wait for itself"):
            new_job("s", after=["s"])
        self.assertEqual(store.list_jobs(limit=0), [])

    def test_a_batch_may_name_jobs_of_later_lines(self):
        store = self.store()
        store.enqueue([new_job("deploy", after=["build", "test"]), new_job("test", after=["build"]),
                       new_job("build")], 1.0)
        self.assertEqual(store.get("deploy")["waiting_for"], ["build", "test"])
        for job_id in ("build", "test", "deploy"):
            run_next(store, job_id, start=2.0, end=2.0)

    def test_edit_sets_dependencies_and_refuses_a_cycle(self):
        store = self.store()
        add_job(store, "a", now=1.0)
        add_job(store, "b", now=1.0, after=["a"])
        with self.assertRaisesRegex(BadDependency, "cycle"):
            store.edit("a", {"after": ["b"]}, now=2.0, default_max_retries=3)
        add_job(store, "c", now=1.0)
        store.edit("a", {"after": ["c"]}, now=2.0, default_max_retries=3)
        self.assertEqual(store.get("a")["waiting_for"], ["c"])
        store.edit("a", {"after": []}, now=2.0, default_max_retries=3)
        self.assertEqual(store.get("a")["waiting_for"], [])

    def test_a_job_others_wait_for_cannot_be_deleted_but_a_purged_one_frees_them(self):
        store = self.store()
        add_job(store, "a", now=1.0, max_retries=0)
        add_job(store, "b", now=1.0, after=["a"], after_policy="finished")
        with self.assertRaisesRegex(InvalidState, "jobs wait for 'a' \\('b'\\)"):
            store.delete("a")
        run_next(store, "a", start=2.0, end=2.0, error="exit code 1")
        store.purge("dead", now=3.0)
        self.assertEqual(store.get("b")["after"], ["a"])
        run_next(store, "b", start=4.0, end=4.0)

    def test_waiting_jobs_stay_out_of_the_claims_index(self):
        store = self.store()
        store.enqueue([new_job("root")] + [new_job(after=["root"]) for _ in range(50)], 1.0)
        (in_index,) = store.con.execute("SELECT count(*) FROM jobs INDEXED BY jobs_ready "
                                        "WHERE state IN ('pending', 'failed') AND waiting = 0").fetchone()
        self.assertEqual(in_index, 1)
        plan = " ".join(row[-1] for row in store.con.execute(
            "EXPLAIN QUERY PLAN " + __import__("qctl.db", fromlist=["x"])._claim_select(0), (1.0,)))
        self.assertIn("jobs_ready", plan)
        self.assertNotIn("TEMP B-TREE", plan)

    def test_cli_after_options_and_show(self):
        self.ok("enqueue", "--id", "a", "true")
        self.ok("enqueue", "--id", "b", "--after", "a", "--after-policy", "finished", "true")
        shown = json.loads(self.ok("show", "b", "--json").stdout)
        self.assertEqual((shown["after"], shown["after_policy"], shown["waiting_for"]), (["a"], "finished", ["a"]))
        self.assertIn("waiting_for  a", self.ok("show", "b").stdout)
        result = self.cli("enqueue", "--after", "nope", "true")
        self.assertEqual(result.code, 1)
        self.assertEqual(result.stderr, "queuectl: error: the job waits for 'nope', which is not a known job\n")

    def test_file_batch_errors_name_the_line(self):
        path = os.path.join(self.tmp, "jobs.jsonl")
        with open(path, "w") as fh:
            fh.write('{"id": "a", "command": "true"}\n\n{"id": "b", "command": "true", "after": ["zz"]}\n')
        result = self.cli("enqueue", "--file", path)
        self.assertEqual(result.code, 1)
        self.assertIn("line 3: job 'b' waits for 'zz', which is not a known job (nothing was enqueued)", result.stderr)
        with open(path, "w") as fh:
            fh.write('{"id": "a", "command": "true", "after": ["b"]}\n{"id": "b", "command": "true", "after": ["a"]}\n')
        self.assertIn("line 1: jobs wait for each other in a cycle", self.cli("enqueue", "--file", path).stderr)
        self.assertEqual(self.store().list_jobs(limit=0), [])

    def test_a_duplicate_id_after_generated_ones_names_its_line(self):
        self.ok("enqueue", "--id", "x", "true")
        result = self.cli("enqueue", "--file", "-", stdin='{"command": "true"}\n{"command": "true"}\n'
                                                          '{"id": "x", "command": "true"}\n')
        self.assertEqual(result.stderr, "queuectl: error: line 3: a job with id 'x' already exists "
                                        "(nothing was enqueued)\n")

    @unittest.skipUnless(POSIX, "wake-ups are datagrams on POSIX")
    def test_a_dependency_finished_by_one_worker_wakes_another_for_its_dependent(self):
        # Worker a serves queue a, worker b queue b; b polls only every 10 s, so only a poke
        # from the commit that finished x can start y on time.
        self.ok("config", "set", "poll-interval", "10")
        workers = [self.spawn_worker("--queue", queue) for queue in ("a", "b")]
        wait_until(lambda: len(self.store().live_workers(time.time())) == 2, message="two workers")
        self.ok("enqueue", "--id", "x", "--queue", "a", "--delay", "0.5", "true")
        self.ok("enqueue", "--id", "y", "--queue", "b", "--after", "x", "true")
        wait_until(lambda: self.job("y")["state"] == "completed", timeout=20, message="y")
        x, y = self.job("x"), self.job("y")
        self.assertLess(y["started_at"] - x["finished_at"], 3.0, "y waited for a poll, not a poke")
        self.ok("worker", "stop", "--wait", "--timeout", "30")
        for proc in workers:
            self.assertEqual(proc.wait(30), 0)

    def test_the_schema_is_current(self):
        self.assertEqual(self.store().con.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)


class UniqueKeyTest(HomeTestCase):
    def test_an_unfinished_job_holds_its_key(self):
        store = self.store()
        first = store.enqueue([new_job(unique_key="nightly")], 1.0)
        again = store.enqueue([new_job(unique_key="nightly", command="other")], 2.0)
        self.assertEqual(list(again), list(first))
        self.assertEqual(again.conflicts, [0])
        self.assertEqual(len(store.list_jobs(limit=0)), 1)
        run_next(store, first[0], start=3.0, end=3.0)
        later = store.enqueue([new_job(unique_key="nightly")], 4.0)
        self.assertNotEqual(list(later), list(first))
        # A finished job cannot come back while another holds its key.
        with self.assertRaisesRegex(InvalidState, "holds its unique key 'nightly'"):
            store.retry([first[0]], now=5.0)

    def test_a_batch_conflicts_with_itself_and_its_dependents_follow_the_holder(self):
        store = self.store()
        holder = add_job(store, "holder", now=1.0, unique_key="k")
        ids = store.enqueue([new_job("again", unique_key="k"), new_job("next", after=["again"])], 2.0)
        self.assertEqual(list(ids), ["holder", "next"])
        self.assertEqual(store.get("next")["waiting_for"], [holder])

    def test_cli_prints_the_existing_id_exit_0(self):
        first = self.ok("enqueue", "--unique-key", "k", "sleep 1").stdout.strip()
        result = self.cli("enqueue", "--unique-key", "k", "sleep 2")
        self.assertEqual((result.code, result.stdout.strip()), (0, first))
        self.assertEqual(result.stderr, "queuectl: note: job %s holds unique key 'k' already: nothing was stored\n"
                         % first)
        shown = json.loads(self.ok("enqueue", "--unique-key", "k", "--json", "sleep 2").stdout)
        self.assertEqual((shown["id"], shown["conflict"], shown["command"]), (first, True, "sleep 1"))
        fresh = json.loads(self.ok("enqueue", "--unique-key", "other", "--json", "true").stdout)
        self.assertIs(fresh["conflict"], False)

    def test_racing_processes_store_one_job(self):
        # Eight processes enqueue the same key at once, five rounds: one job each round.
        for round_ in range(3):
            procs = [subprocess.Popen([sys.executable, SCRIPT, "--home", self.home, "enqueue", "--unique-key",
                                       "race-%d" % round_, "echo %d" % n], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for n in range(6)]
            outs = [p.communicate(timeout=60) for p in procs]
            self.assertEqual([p.returncode for p in procs], [0] * 6, outs)
            self.assertEqual(len({out.strip() for out, _ in outs}), 1, outs)
        self.assertEqual(len(self.store().list_jobs(limit=0)), 3)


class ScheduleStoreTest(HomeTestCase):
    def add(self, store, name="tick", spec="every 10", now=100.0, overlap=False, **job):
        store.add_schedule(name, spec, json.dumps(dict({"command": "true", "cwd": "/"}, **job)), overlap=overlap,
                           now=now)

    def test_each_due_time_fires_once_however_many_ask(self):
        store, other = self.store(), self.store()
        self.add(store)
        self.assertEqual(store.fire_schedules(SETTINGS, now=105.0), [])
        fired = store.fire_schedules(SETTINGS, now=110.5)
        self.assertEqual(other.fire_schedules(SETTINGS, now=110.6), [])  # another worker, a moment later
        self.assertEqual(len(fired), 1)
        job = store.get(fired[0].job_id)
        self.assertTrue(job["id"].startswith("tick-"))
        self.assertEqual((job["command"], job["created_at"], fired[0].due_at), ("true", 110.5, 110.0))
        self.assertEqual(store.next_schedule_at(), 120.0)

    def test_no_overlap_by_default(self):
        store = self.store()
        self.add(store)
        first = store.fire_schedules(SETTINGS, now=110.0)[0].job_id
        skipped = store.fire_schedules(SETTINGS, now=120.0)
        self.assertEqual((skipped[0].job_id, skipped[0].skipped), (None, "its last job %s is not finished" % first))
        self.assertEqual(store.next_schedule_at(), 130.0)
        run_next(store, first, start=121.0, end=122.0)
        self.assertIsNotNone(store.fire_schedules(SETTINGS, now=130.0)[0].job_id)
        self.add(store, "both", overlap=True, now=200.0)
        store.fire_schedules(SETTINGS, now=210.0)
        fired = {f.name: f for f in store.fire_schedules(SETTINGS, now=220.0)}
        self.assertIsNotNone(fired["both"].job_id)  # its last job is unfinished too: it fires anyway

    def test_missed_fires_are_caught_up_by_one_job(self):
        store = self.store()
        self.add(store)
        fired = store.fire_schedules(SETTINGS, now=1000.0)  # 89 due times passed with no worker
        self.assertEqual(len(fired), 1)
        self.assertEqual(len(store.list_jobs(limit=0)), 1)
        self.assertEqual(store.next_schedule_at(), 1010.0)

    def test_schedules_survive_a_restart_and_can_be_removed(self):
        self.add(self.store(), spec="cron 0 3 * * *", now=time.time())
        with self.store() as again:
            (row,) = again.schedules()
            self.assertEqual((row["name"], row["spec"]), ("tick", "cron 0 3 * * *"))
            self.assertGreater(row["next_at"], time.time())
            again.remove_schedule("tick")
            self.assertEqual(again.schedules(), [])
            with self.assertRaisesRegex(Exception, "no schedule named 'tick'"):
                again.remove_schedule("tick")

    def test_a_fire_whose_unique_key_is_held_makes_no_job(self):
        store = self.store()
        add_job(store, "holder", now=1.0, unique_key="uk")
        self.add(store, overlap=True, unique_key="uk")
        (fired,) = store.fire_schedules(SETTINGS, now=110.0)
        self.assertEqual((fired.job_id, fired.failed), (None, False))
        self.assertIn("job holder holds its unique key 'uk'", fired.skipped)
        self.assertIsNone(store.schedules()[0]["last_job"])

    def test_a_fire_that_cannot_make_its_job_skips_only_that_fire(self):
        store = self.store()
        add_job(store, "dep", now=1.0)
        self.add(store, after=["dep"])
        store.delete("dep")  # nothing waits for it: the schedule names it, but has no job yet
        fired = store.fire_schedules(SETTINGS, now=110.0)
        self.assertIn("not a known job", fired[0].skipped)
        self.assertTrue(fired[0].failed)
        self.assertIn("not a known job", store.schedules()[0]["last_error"])
        self.assertEqual(store.next_schedule_at(), 120.0)


class ScheduleCliTest(HomeTestCase):
    def test_add_list_remove(self):
        said = self.ok("schedule", "add", "report", "--cron", "30 6 * * 1-5", "--queue", "reports", "--env",
                       "TOKEN=secret", "--", "make", "report").stdout
        self.assertRegex(said, r"^schedule report added: cron 30 6 \* \* 1-5, next run \d{4}-")
        self.ok("schedule", "add", "tick", "--every", "1h", '{"command": "echo hi", "priority": 3}')
        (report, tick) = json.loads(self.ok("schedule", "list", "--json").stdout)
        self.assertEqual(report["job"], {"command": "make report", "cwd": os.getcwd(), "queue": "reports",
                                         "env": {"TOKEN": "***"}})
        self.assertEqual((tick["spec"], tick["overlap"], tick["last_job"]), ("every 1h", False, None))
        self.assertNotIn("secret", self.ok("schedule", "list").stdout)
        self.ok("schedule", "remove", "report")
        self.assertEqual(len(json.loads(self.ok("schedule", "list", "--json").stdout)), 1)

    def test_bad_input_is_one_line_and_stores_nothing(self):
        cases = [(["tick", "--every", "0.5", "true"], "--every must be at least 1s"),
                 (["tick", "--cron", "61 * * * *", "true"], "cron minute: a value must be 0-59, not 61"),
                 (["tick", "--every", "1m", '{"command": "true", "id": "x"}'], "a schedule's job has no id"),
                 (["tick", "--every", "1m", "--run-at", "2030-01-01T00:00:00", "true"], "has no run_at"),
                 (["tick", "--every", "1m", '{"command": 5}'], "command must be a string")]
        for argv, message in cases:
            with self.subTest(argv=argv):
                result = self.cli("schedule", "add", *argv)
                self.assertEqual(result.code, 1, result)
                self.assertEqual(len(result.stderr.splitlines()), 1, result)
                self.assertIn(message, result.stderr)
        result = self.cli("schedule", "add", "tick", "--every", "1m", "--after", "nosuch", "true")
        self.assertIn("the schedule's job waits for 'nosuch', which is not a known job", result.stderr)
        self.ok("schedule", "add", "tick", "--every", "1m", "true")
        result = self.cli("schedule", "add", "tick", "--every", "1m", "true")
        self.assertIn("a schedule named 'tick' exists already", result.stderr)
        self.assertEqual(self.cli("schedule", "add", "b d", "--every", "1m", "true").code, 2)
        self.assertEqual(len(json.loads(self.ok("schedule", "list", "--json").stdout)), 1)

    def test_three_worker_processes_fire_each_time_once(self):
        # Added as of half a period ago: its first fire is due half a second from now, not a whole
        # second (the workers' start fits in that half), and the next a period later.
        with self.store() as store:
            store.add_schedule("tick", "every 1", json.dumps({"command": "true", "cwd": "/"}), overlap=True,
                               now=time.time() - 0.5)
        workers = [self.spawn_worker("--count", "1") for _ in range(3)]
        # Two fires: a due time fired twice would show as two jobs made within moments of each other.
        wait_until(lambda: len(self.store().list_jobs(limit=0)) >= 2, message="two fires")
        self.ok("worker", "stop", "--wait", "--timeout", "30")
        created = sorted(job["created_at"] for job in self.store().list_jobs(limit=0))
        gaps = [b - a for a, b in zip(created, created[1:])]
        self.assertGreater(min(gaps), 0.5, "two fires of one due time: %s" % gaps)
        for proc in workers:
            self.assertEqual(proc.wait(30), 0)


HOOK = textwrap.dedent("""\
    import json, os, sys
    doc = json.load(sys.stdin)
    keys = ("QUEUECTL_JOB_ID", "QUEUECTL_STATE", "QUEUECTL_EXIT_CODE", "QUEUECTL_RUN", "QUEUECTL_DURATION")
    with open(sys.argv[1], "a") as fh:
        fh.write(json.dumps({"env": {k: os.environ.get(k) for k in keys}, "job": doc}) + "\\n")
""")


@unittest.skipUnless(POSIX, "the hook commands here are POSIX shell")
class HookTest(HomeTestCase):
    def setUp(self):
        super().setUp()
        self.script = os.path.join(self.tmp, "hook.py")
        with open(self.script, "w") as fh:
            fh.write(HOOK)
        self.calls = os.path.join(self.tmp, "calls.jsonl")

    def read_calls(self):
        try:
            with open(self.calls) as fh:
                return [json.loads(line) for line in fh]
        except FileNotFoundError:
            return []

    def test_every_finished_run_calls_the_hook_with_env_and_masked_json(self):
        self.ok("config", "set", "on-finish", "%s %s %s" % (sys.executable, self.script, self.calls))
        self.ok("config", "set", "backoff-max", "0.05")  # bad's retry at once: its delay is not under test
        self.ok("enqueue", "--id", "ok", "--env", "TOKEN=hunter22", "echo fine")
        self.ok("enqueue", "--id", "bad", "--max-retries", "1", "exit 3")
        self.ok("worker", "start", "--drain")  # --drain waits for bad's retry
        calls = {(c["env"]["QUEUECTL_JOB_ID"], c["env"]["QUEUECTL_RUN"]): c for c in self.read_calls()}
        self.assertEqual(sorted(calls), [("bad", "1"), ("bad", "2"), ("ok", "1")])
        ok = calls[("ok", "1")]
        self.assertEqual((ok["env"]["QUEUECTL_STATE"], ok["env"]["QUEUECTL_EXIT_CODE"]), ("completed", "0"))
        self.assertGreaterEqual(float(ok["env"]["QUEUECTL_DURATION"]), 0.0)
        self.assertEqual((ok["job"]["id"], ok["job"]["env"], ok["job"]["state"]), ("ok", {"TOKEN": "***"}, "completed"))
        self.assertNotIn("hunter22", json.dumps(list(calls.values())))
        self.assertEqual(calls[("bad", "1")]["env"]["QUEUECTL_STATE"], "failed")
        self.assertEqual(calls[("bad", "2")]["env"]["QUEUECTL_STATE"], "dead")
        self.assertEqual(calls[("bad", "2")]["env"]["QUEUECTL_EXIT_CODE"], "3")

    def test_a_failing_hook_is_logged_and_changes_no_job(self):
        self.ok("config", "set", "on-finish", "echo oops >&2; exit 4")
        self.ok("enqueue", "--id", "k", "true")
        result = self.run_cli("worker", "start", "--drain")
        self.assertEqual(result.code, 0, result)
        self.assertIn("on-finish hook for job k failed: exit code 4: oops", result.stdout)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        job = self.job("k")
        self.assertEqual((job["state"], job["attempts"], job["last_error"]), ("completed", 1, None))

    def test_a_hanging_hook_delays_no_job_and_a_hard_stop_kills_it(self):
        self.ok("config", "set", "on-finish", "sleep 60")
        for n in range(3):
            self.ok("enqueue", "--id", "j%d" % n, "true")
        worker = self.spawn_worker("--count", "1")
        wait_until(lambda: all(self.job("j%d" % n)["state"] == "completed" for n in range(3)), timeout=20,
                   message="jobs finishing while the first one's hook hangs")
        worker.send_signal(2)
        wait_until(lambda: "finishing running jobs" in read(worker.log.name), message="the first Ctrl-C")
        worker.send_signal(2)  # it waits for the hooks still to run; a hard stop kills the hanging one
        self.assertEqual(worker.wait(30), 0, read(worker.log.name))
        self.assertRegex(read(worker.log.name), "on-finish hook for job j0 failed: (killed by signal|exit code 143)")

    def test_a_stopping_worker_stays_live_while_its_hooks_run(self):
        self.ok("config", "set", "lease-seconds", "1")
        self.ok("config", "set", "on-finish", "sleep 1.5")  # past the 1 s lease: it must keep beating
        self.ok("enqueue", "--id", "a", "true")
        worker = self.spawn_worker("--count", "1")
        wait_until(lambda: self.job("a")["state"] == "completed", message="a")
        started = time.monotonic()
        self.ok("worker", "stop", "--wait", "--timeout", "30")
        self.assertGreater(time.monotonic() - started, 1.2, "stop --wait returned while the worker ran its hook")
        self.assertEqual(worker.wait(10), 0)

    @unittest.skipUnless(sys.platform.startswith("linux"), "reads process states from /proc (Linux)")
    def test_a_hook_past_its_limit_is_killed_with_its_tree(self):
        # In-process worker, its limit cut to 0.5 s for the test. The hook leaves a child of its own
        # that would sleep on: it must die with the hook. The child is a shell, not a Python that
        # takes a loaded machine's 0.1-0.3 s to start: it writes its pid well within the limit.
        self.addCleanup(setattr, qworker, "HOOK_TIMEOUT_S", qworker.HOOK_TIMEOUT_S)
        qworker.HOOK_TIMEOUT_S = 0.5
        pidfile = os.path.join(self.tmp, "child.pid")
        child = "echo $$ > %s; exec sleep 60" % shlex.quote(pidfile)
        self.ok("config", "set", "on-finish", "sh -c %s & sleep 60" % shlex.quote(child))
        self.ok("enqueue", "--id", "a", "true")
        w = qworker.Worker(self.home, threads=1)
        thread = threading.Thread(target=w.run)
        self.addCleanup(thread.join)
        self.addCleanup(w.stop)
        thread.start()
        wait_until(lambda: os.path.exists(pidfile) and read(pidfile), message="the hook's child")
        with open(pidfile) as fh:
            pid = int(fh.read())
        wait_until(lambda: not alive(pid), timeout=15, message="the hook's child killed")
        self.assertEqual(self.job("a")["state"], "completed")
        w.stop()
        thread.join(20)
        self.assertFalse(thread.is_alive())


if __name__ == "__main__":
    unittest.main()
