"""The job store (qctl.db.Store) on real SQLite files: schema, claim order, fencing, recovery,
run history, the no-RETURNING path, the claim's query plan, and two processes claiming at once."""

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import qctl.db
from qctl import config as qconfig
from qctl import home as qhome
from qctl import jobs
from qctl.db import SCHEMA_VERSION, Store
from qctl.errors import DuplicateJob, InvalidJob, InvalidState, JobNotFound, StoreError
from tests.base import ROOT, SETTINGS, HomeTestCase, add_job, new_job, retry_in, wait_until

T = 1800000000.0
LEASE_S = 30.0


def backoff(failures):
    return jobs.backoff_delay(failures, SETTINGS["backoff-base"], SETTINGS["backoff-max"])


def dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class StoreTestCase(HomeTestCase):
    def setUp(self):
        super().setUp()
        self.s = self.store()

    def add(self, job_id, *, at=T, store=None, **fields):
        """Enqueue one job whose run_at (and enqueue time) is `at`."""
        return add_job(store or self.s, job_id, now=at, cwd=self.tmp, **fields)

    def claim(self, worker="w1", now=T):
        return self.s.claim(worker, LEASE_S, now=now)

    def drain_ids(self, now=T):
        ids = []
        while True:
            job = self.claim(now=now)
            if job is None:
                return ids
            ids.append(job["id"])


class SchemaTest(StoreTestCase):
    def user_version(self):
        con = sqlite3.connect(self.db_path)
        try:
            return con.execute("PRAGMA user_version").fetchone()[0]
        finally:
            con.close()

    def test_opening_again_keeps_schema_and_data(self):
        self.add("a")
        self.assertEqual(self.user_version(), SCHEMA_VERSION)
        for _ in range(2):
            with Store(self.db_path) as again:
                self.assertEqual(again.get("a")["state"], jobs.PENDING)
        self.assertEqual(self.user_version(), SCHEMA_VERSION)

    def test_wal_mode(self):
        self.assertEqual(self.s._read("PRAGMA journal_mode")[0][0].lower(), "wal")

    def test_a_version_1_database_is_migrated_with_its_jobs(self):
        old = os.path.join(self.tmp, "v1.db")
        con = sqlite3.connect(old, isolation_level=None)
        for statement in qctl.db.SCHEMA_V1:
            con.execute(statement)
        con.execute("INSERT INTO jobs (id, command, state, max_retries, run_at, next_run_at, created_at, updated_at) "
                    "VALUES ('kept', 'true', 'pending', 3, 0, 0, 0, 0)")
        con.execute("PRAGMA user_version = 1")
        con.close()
        with Store(old) as store:
            self.assertEqual(store.get("kept")["state"], jobs.PENDING)
            job = store.claim("w1", LEASE_S, now=T)
            self.assertTrue(store.note_process(job, "w1", "how to find it"))
            self.assertEqual(store._read("PRAGMA user_version")[0][0], SCHEMA_VERSION)

    def test_newer_schema_is_refused(self):
        con = sqlite3.connect(self.db_path)
        con.execute("PRAGMA user_version = %d" % (SCHEMA_VERSION + 1))
        con.close()
        with self.assertRaisesRegex(StoreError, "schema version %d.*upgrade queuectl" % (SCHEMA_VERSION + 1)):
            Store(self.db_path)
        self.assertEqual(self.user_version(), SCHEMA_VERSION + 1)

    def test_first_open_waits_while_another_connection_holds_the_write_lock(self):
        # Two processes opening a new database together: one holds the write lock while the
        # other switches to WAL, which SQLite refuses at once instead of waiting.
        fresh = os.path.join(self.tmp, "fresh.db")
        other = sqlite3.connect(fresh, isolation_level=None, check_same_thread=False)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        timer = threading.Timer(0.2, other.execute, ("COMMIT",))
        timer.start()
        self.addCleanup(timer.join)
        with Store(fresh) as store:
            self.assertFalse(other.in_transaction)
            self.assertEqual(store.counts(), dict.fromkeys(jobs.STATES, 0))
            self.assertEqual(store._read("PRAGMA journal_mode")[0][0].lower(), "wal")

    def test_not_a_database_is_a_store_error(self):
        path = os.path.join(self.tmp, "junk.db")
        with open(path, "wb") as fh:
            fh.write(b"this is not sqlite" * 100)
        with self.assertRaisesRegex(StoreError, "not a usable queuectl database"):
            Store(path)


class EnqueueTest(StoreTestCase):
    def test_generated_ids_are_unique_and_everything_is_stored(self):
        job = new_job(command="echo hi", priority=4, timeout=5, env={"K": "v"}, now=T, default_max_retries=2)
        ids = self.s.enqueue([job, dict(job)], T)
        self.assertEqual(len(set(ids)), 2)
        row = self.s.get(ids[0])
        self.assertEqual((row["command"], row["state"], row["attempts"], row["max_retries"], row["priority"],
                          row["timeout"], row["run_at"], row["next_run_at"], row["created_at"]),
                         ("echo hi", jobs.PENDING, 0, 2, 4, 5.0, T, T, T))

    def test_duplicate_stored_id_stores_nothing(self):
        self.add("a")
        new = [new_job(i, now=T) for i in ("b", "a")]
        with self.assertRaisesRegex(DuplicateJob, "'a' already exists") as caught:
            self.s.enqueue(new, T)
        self.assertEqual(caught.exception.index, 1)
        self.assertEqual([j["id"] for j in self.s.list_jobs()], ["a"])

    def test_duplicate_within_a_batch_stores_nothing(self):
        new = [new_job(i, now=T) for i in ("b", "c", "b")]
        with self.assertRaisesRegex(DuplicateJob, "'b' already exists") as caught:
            self.s.enqueue(new, T)
        self.assertEqual(caught.exception.index, 2)
        self.assertEqual(self.s.list_jobs(), [])

    def test_unknown_job(self):
        with self.assertRaisesRegex(JobNotFound, "no job with id 'nope'"):
            self.s.get("nope")


class ClaimTest(StoreTestCase):
    """Claim order and fencing. Run again below with the no-RETURNING fallback."""

    def test_claim_order_priority_then_due_time_then_fifo(self):
        self.add("low-old", at=T - 10)
        self.add("high-late", at=T - 5, priority=5)
        self.add("high-early", at=T - 20, priority=5)
        self.add("low-old-2", at=T - 10)
        self.add("negative", at=T - 100, priority=-1)
        self.add("future", at=T, delay=100, priority=9)
        self.assertEqual(self.drain_ids(), ["high-early", "high-late", "low-old", "low-old-2", "negative"])
        self.assertEqual(self.drain_ids(now=T + 100), ["future"])

    def test_fifo_among_equals(self):
        names = ["j%02d" % i for i in range(20)]
        for name in names:
            self.add(name)
        self.assertEqual(self.drain_ids(), names)

    def test_claim_sets_lease_and_counts_the_run(self):
        self.add("a", max_retries=2, timeout=7)
        job = self.claim("w1", T + 1)
        self.assertEqual({k: job[k] for k in ("id", "attempts", "run", "max_retries", "timeout", "command")},
                         {"id": "a", "attempts": 1, "run": 1, "max_retries": 2, "timeout": 7.0, "command": "true"})
        row = self.s.get("a")
        self.assertEqual((row["state"], row["worker"], row["lease_until"], row["started_at"]),
                         (jobs.PROCESSING, "w1", T + 1 + LEASE_S, T + 1))
        self.assertIsNone(self.claim("w2", T + 1))

    def test_future_run_at_is_not_claimable_until_due(self):
        self.add("later", delay=60)
        self.assertIsNone(self.claim(now=T + 59.9))
        self.assertEqual(self.claim(now=T + 60)["id"], "later")

    def test_failed_job_is_claimable_only_when_due(self):
        self.add("a")
        job = self.claim()
        self.assertTrue(self.s.fail(job, "w1", T + 1, error="exit code 3", exit_code=3, settings=retry_in(10)))
        row = self.s.get("a")
        self.assertEqual((row["state"], row["next_run_at"], row["last_error"], row["exit_code"]),
                         (jobs.FAILED, T + 11, "exit code 3", 3))
        self.assertIsNone(self.claim(now=T + 10.9))
        again = self.claim(now=T + 11)
        self.assertEqual((again["id"], again["attempts"], again["run"]), ("a", 2, 2))

    def test_due_failed_job_and_pending_job_share_one_order(self):
        self.add("first", at=T - 50)
        self.s.fail(self.claim(now=T - 40), "w1", T - 40, error="e", exit_code=1, settings=retry_in(1))
        self.add("second", at=T - 30)
        # "first" is due again at T - 39, before "second" (T - 30).
        self.assertEqual(self.drain_ids(), ["first", "second"])

    def test_dead_after_max_retries_plus_one_runs(self):
        self.add("a", max_retries=2)
        states = []
        for n in range(3):
            job = self.claim(now=T + 100 * n)
            self.assertEqual(job["attempts"], n + 1)
            self.s.fail(job, "w1", T + 100 * n + 1, error="exit code 1", exit_code=1, settings=retry_in(1))
            states.append(self.s.get("a")["state"])
        self.assertEqual(states, [jobs.FAILED, jobs.FAILED, jobs.DEAD])
        self.assertIsNone(self.claim(now=T + 10000))
        self.assertEqual([r["run"] for r in self.s.job_runs(self.s.get("a"))], [1, 2, 3])

    def test_zero_retries_dies_on_first_failure(self):
        self.add("a", max_retries=0)
        self.s.fail(self.claim(), "w1", T, error="command not found", exit_code=127, settings=retry_in(0))
        self.assertEqual(self.s.get("a")["state"], jobs.DEAD)

    def test_complete(self):
        self.add("a")
        job = self.claim()
        self.assertTrue(self.s.complete(job, "w1", T + 2))
        row = self.s.get("a")
        self.assertEqual((row["state"], row["exit_code"], row["finished_at"], row["lease_until"], row["last_error"]),
                         (jobs.COMPLETED, 0, T + 2, None, None))
        self.assertIsNone(self.claim(now=T + 3))

    def test_transitions_are_fenced_by_worker_and_run(self):
        self.add("a")
        stale = self.claim("w1", T)
        # The lease runs out: w1 is presumed dead and its run counts as a failed attempt.
        self.assertEqual(self.s.recover(T + LEASE_S + 1, SETTINGS), [("a", jobs.FAILED)])
        # w1 wakes up: nothing it says changes the job.
        self.assertFalse(self.s.complete(stale, "w1", T + 40))
        self.assertFalse(self.s.fail(stale, "w1", T + 40, error="exit code 1", exit_code=1, settings=retry_in(1)))
        self.assertFalse(self.s.release(stale, "w1", T + 40))
        self.assertEqual(self.s.get("a")["state"], jobs.FAILED)
        fresh = self.claim("w2", T + 100)
        self.assertEqual(fresh["run"], 2)
        # Even with a run number that matches, another worker's result is refused ...
        self.assertFalse(self.s.complete(fresh, "w1", T + 101))
        # ... and the stale claim (run 1) cannot touch run 2.
        self.assertFalse(self.s.complete(stale, "w1", T + 101))
        self.assertFalse(self.s.release(stale, "w1", T + 101))
        row = self.s.get("a")
        self.assertEqual((row["state"], row["worker"], row["run"]), (jobs.PROCESSING, "w2", 2))
        self.assertTrue(self.s.complete(fresh, "w2", T + 102))
        self.assertFalse(self.s.complete(fresh, "w2", T + 103))
        runs = self.s.job_runs(self.s.get("a"))
        self.assertEqual([(r["run"], r["worker"], r["error"], r["exit_code"]) for r in runs],
                         [(1, "w1", "worker lost", None), (2, "w2", None, 0)])

    def test_release_gives_the_attempt_back(self):
        self.add("a")
        job = self.claim()
        self.assertTrue(self.s.release(job, "w1", T + 5))
        row = self.s.get("a")
        self.assertEqual((row["state"], row["attempts"], row["run"], row["worker"], row["next_run_at"]),
                         (jobs.PENDING, 0, 0, None, T + 5))
        again = self.claim(now=T + 5)
        self.assertEqual((again["attempts"], again["run"]), (1, 1))

    def test_claim_records_the_previous_outcome_in_the_same_transaction(self):
        self.add("a")
        self.add("b")
        first = self.claim()
        recorded, second = self.s.finish_and_claim(jobs.Outcome(jobs.COMPLETE, first, "w1", T + 1), SETTINGS,
                                                   now=T + 1)
        self.assertEqual((recorded.state, second["id"]), (jobs.COMPLETED, "b"))
        self.assertEqual(self.s.get("a")["state"], jobs.COMPLETED)
        recorded, last = self.s.finish_and_claim(
            jobs.Outcome(jobs.FAIL, second, "w1", T + 2, "exit code 2", 2), retry_in(50), now=T + 2)
        self.assertEqual(recorded, (jobs.FAILED, T + 52))
        self.assertIsNone(last)
        lost, _ = self.s.finish_and_claim(jobs.Outcome(jobs.COMPLETE, second, "w1", T + 3), SETTINGS, now=T + 3)
        self.assertIsNone(lost, "a second outcome for the same claim changes nothing")
        self.assertEqual((self.s.get("b")["state"], self.s.get("b")["next_run_at"]), (jobs.FAILED, T + 52))


class NoReturningClaimTest(ClaimTest):
    """SQLite older than 3.35 has no RETURNING: the fallback must behave identically."""

    def setUp(self):
        super().setUp()
        self.addCleanup(setattr, qctl.db, "HAS_RETURNING", qctl.db.HAS_RETURNING)
        qctl.db.HAS_RETURNING = False

    def test_fallback_is_in_use(self):
        self.assertFalse(qctl.db.HAS_RETURNING)
        statements = []
        self.s.con.set_trace_callback(statements.append)
        self.addCleanup(self.s.con.set_trace_callback, None)
        self.add("a")
        self.assertEqual(self.claim()["id"], "a")
        self.assertFalse([s for s in statements if "RETURNING" in s.upper()], statements)


class RecoveryTest(StoreTestCase):
    def test_expired_lease_is_a_failed_attempt_saying_worker_lost(self):
        self.add("a", max_retries=1)
        self.claim("w1", T)
        self.assertEqual(self.s.recover(T + LEASE_S, SETTINGS), [], "a lease is good up to its end")
        self.assertEqual(self.s.recover(T + LEASE_S + 0.5, SETTINGS), [("a", jobs.FAILED)])
        row = self.s.get("a")
        self.assertEqual((row["state"], row["attempts"], row["last_error"], row["next_run_at"]),
                         (jobs.FAILED, 1, "worker lost", T + LEASE_S + 0.5 + backoff(1)))
        self.claim("w2", T + 100)
        self.assertEqual(self.s.recover(T + 200, SETTINGS), [("a", jobs.DEAD)])
        row = self.s.get("a")
        self.assertEqual((row["state"], row["attempts"], row["last_error"]), (jobs.DEAD, 2, "worker lost"))
        self.assertEqual(self.s.recover(T + 300, SETTINGS), [])

    def test_dead_worker_is_recovered_before_its_lease_expires(self):
        self.add("a")
        self.add("b")
        self.claim("w1", T)
        self.claim("w2", T)
        self.s.heartbeat("w1", LEASE_S, pid=dead_pid(), host=qhome.host(), threads=1, started_at=T,
                         host_key=qhome.host_key(), now=T)
        self.s.heartbeat("w2", LEASE_S, pid=os.getpid(), host=qhome.host(), threads=1, started_at=T,
                         host_key=qhome.host_key(), now=T)
        self.assertEqual([w["id"] for w in self.s.live_workers(T + 1)], ["w2"], "a dead pid here is not live")
        self.assertEqual(self.s.recover(T + 1, SETTINGS), [("a", jobs.FAILED)])
        self.assertEqual(self.s.get("b")["state"], jobs.PROCESSING)
        self.assertEqual([w["id"] for w in self.s.live_workers(T + 1)], ["w2"])

    def test_the_claim_keeps_a_process_note_for_the_recovery_before_the_job_can_run_again(self):
        for job_id in "abcd":
            self.add(job_id)
        first = self.s.claim("w1", LEASE_S, now=T, process="a, run 1")
        self.s.release(first, "w1", T)
        a = self.s.claim("w1", LEASE_S, now=T, process="a, claimed again")  # a new claim, a new note
        b = self.s.claim("w1", LEASE_S, now=T)
        _, c = self.s.finish_and_claim(jobs.Outcome(jobs.COMPLETE, b, "w1", T), SETTINGS, now=T, process="c")
        self.s.claim("w1", LEASE_S, now=T)  # d: its claim kept nothing
        self.assertEqual([a["id"], c["id"]], ["a", "c"])
        self.assertFalse(self.s.note_process(a, "w2", "not w2's claim"), "fenced by the claim")
        self.assertTrue(self.s.note_process(c, "w1", "c, and its pid"))
        other = self.store()
        handed = []

        def before_retry(job_id, run, process):
            # Still processing to everyone else: nobody can claim it before this returns.
            handed.append((job_id, run, process, other.get(job_id)["state"]))
        recovered = self.s.recover(T + LEASE_S + 1, SETTINGS, before_retry=before_retry)
        self.assertEqual(sorted(recovered), [("a", jobs.FAILED), ("c", jobs.FAILED), ("d", jobs.FAILED)])
        self.assertEqual(sorted(handed), [("a", 1, "a, claimed again", jobs.PROCESSING),
                                          ("c", 1, "c, and its pid", jobs.PROCESSING)])

    def test_heartbeat_extends_the_leases_of_its_jobs(self):
        self.add("a")
        self.claim("w1", T)
        self.s.heartbeat("w1", LEASE_S, pid=1, host="h", threads=2, started_at=T, now=T + 25)
        self.assertEqual(self.s.recover(T + LEASE_S + 1, SETTINGS), [])
        self.assertEqual(self.s.live_workers(T + 26)[0]["running"], ["a"])
        self.assertEqual(self.s.live_workers(T + 26)[0]["threads"], 2)
        self.assertEqual(self.s.recover(T + 25 + LEASE_S + 1, SETTINGS), [("a", jobs.FAILED)])
        self.assertEqual(self.s.live_workers(T + 25 + LEASE_S + 1), [])

    def test_a_heartbeat_naming_its_running_jobs_renews_only_those(self):
        # A claim whose commit the worker never heard of (its connection lost during it) is not
        # renewed: it comes back once its lease runs out, rather than stay processing for ever.
        self.add("ran")
        self.add("orphan")
        ran, _ = self.claim("w1", T), self.claim("w1", T)
        self.s.heartbeat("w1", LEASE_S, pid=os.getpid(), host=qhome.host(), threads=2, started_at=T,
                         host_key=qhome.host_key(), now=T + 25, running=[ran["seq"]])
        # The worker itself takes it back where an expired lease alone decides (on SQLite its
        # pulses keep it, and such an orphan cannot happen there: the commit is local).
        self.assertEqual(self.s.recover(T + LEASE_S + 1, SETTINGS, me="w1"),
                         [("orphan", jobs.FAILED)] if self.s.LEASE_IS_FINAL else [])
        # Any other worker does, and leaves the live worker registered.
        self.assertEqual(self.s.recover(T + LEASE_S + 1, SETTINGS), [] if self.s.LEASE_IS_FINAL
                         else [("orphan", jobs.FAILED)])
        self.assertEqual(self.s.get("ran")["state"], jobs.PROCESSING)
        self.assertEqual([w["id"] for w in self.s.live_workers(T + 26)], ["w1"])


class RunHistoryTest(StoreTestCase):
    def test_runs_are_numbered_over_the_whole_life_across_dlq_retry(self):
        self.add("a", max_retries=1)
        for n in range(2):
            job = self.claim(now=T + 10 * n)
            self.s.fail(job, "w1", T + 10 * n + 1, error="exit code 4", exit_code=4, settings=retry_in(1),
                        stderr=b"oops %d" % n)
        self.assertEqual(self.s.get("a")["state"], jobs.DEAD)
        self.s.retry(["a"], now=T + 30)
        row = self.s.get("a")
        self.assertEqual((row["state"], row["attempts"], row["run"], row["next_run_at"]), (jobs.PENDING, 0, 2, T + 30))
        job = self.claim("w2", T + 30)
        self.assertEqual((job["attempts"], job["run"]), (1, 3))
        self.s.complete(job, "w2", T + 31.5)
        runs = self.s.job_runs(self.s.get("a"), output_tail=100)
        self.assertEqual([(r["run"], r["attempt"], r["exit_code"], r["error"], r["worker"]) for r in runs],
                         [(1, 1, 4, "exit code 4", "w1"), (2, 2, 4, "exit code 4", "w1"), (3, 1, 0, None, "w2")])
        self.assertEqual([r["stderr"] for r in runs], [b"oops 0", b"oops 1", None])
        self.assertEqual((runs[2]["started_at"], runs[2]["finished_at"]), (T + 30, T + 31.5))

    def test_running_job_shows_its_current_run(self):
        self.add("a")
        self.assertEqual(self.s.job_runs(self.s.get("a")), [])
        self.claim("w1", T)
        runs = self.s.job_runs(self.s.get("a"))
        self.assertEqual([(r["run"], r["attempt"], r["worker"], r["finished_at"]) for r in runs], [(1, 1, "w1", None)])

    def test_output_of_a_successful_run_is_kept(self):
        self.add("a")
        self.s.complete(self.claim(), "w1", T + 1, stdout=b"hello\n")
        runs = self.s.job_runs(self.s.get("a"), output_tail=3)
        self.assertEqual([(r["run"], r["exit_code"], r["stdout"], r["stderr"]) for r in runs],
                         [(1, 0, b"lo\n", None)], "the last 3 bytes")
        self.assertEqual(self.s.run_output(self.s.get("a"), 1), (b"hello\n", None))
        self.assertEqual(self.s.run_output(self.s.get("a"), 2), (None, None))


class UserActionTest(StoreTestCase):
    def test_retry_dead_only_for_dead_jobs(self):
        self.add("a")
        with self.assertRaisesRegex(InvalidState, "'a' is pending, not dead"):
            self.s.retry(["a"], now=T, only=(jobs.DEAD,))
        with self.assertRaises(JobNotFound):
            self.s.retry(["nope"], now=T)

    def test_retry_all_dead(self):
        for name in ("a", "b", "c"):
            self.add(name, max_retries=0)
        for _ in range(2):
            self.s.fail(self.claim(), "w1", T, error="e", exit_code=1, settings=retry_in(0))
        self.assertEqual(self.s.retry(now=T + 1, only=(jobs.DEAD,)), ["a", "b"])
        self.assertEqual(self.s.counts()[jobs.PENDING], 3)
        self.assertEqual(self.s.retry(now=T + 2, only=(jobs.DEAD,)), [])

    def test_delete(self):
        self.add("a", max_retries=0)
        self.add("b")
        self.s.fail(self.claim(), "w1", T, error="e", exit_code=1, settings=retry_in(0))
        self.claim()
        with self.assertRaisesRegex(InvalidState, "'b' is processing"):
            self.s.delete("b")
        self.s.delete("a")
        with self.assertRaises(JobNotFound):
            self.s.get("a")
        self.assertEqual(self.s._read("SELECT count(*) FROM runs")[0][0], 0)
        with self.assertRaises(JobNotFound):
            self.s.delete("a")
        self.add("a")  # the id is free again

    def test_purge_by_state_and_age(self):
        for name, at in (("old", T), ("new", T + 100)):
            self.add(name, at=at)
            self.s.complete(self.claim(now=at), "w1", at)
        self.add("waiting")
        self.assertEqual(self.s.purge(jobs.COMPLETED, older_than_s=50, now=T + 120), 1)
        self.assertEqual([j["id"] for j in self.s.list_jobs()], ["new", "waiting"])
        self.assertEqual(self.s.purge(jobs.DEAD, now=T + 120), 0)
        self.assertEqual(self.s.purge(jobs.COMPLETED, now=T + 120), 1)
        with self.assertRaisesRegex(InvalidJob, "completed, dead or cancelled"):
            self.s.purge(jobs.PENDING, now=T)
        self.assertEqual([j["id"] for j in self.s.list_jobs()], ["waiting"])

    def test_counts_and_list(self):
        self.assertEqual(self.s.counts(), dict.fromkeys(jobs.STATES, 0))
        for i in range(5):
            self.add("j%d" % i)
        self.claim()
        self.assertEqual(self.s.counts(), dict(dict.fromkeys(jobs.STATES, 0), pending=4, processing=1))
        self.assertEqual([j["id"] for j in self.s.list_jobs(limit=3)], ["j0", "j1", "j2"])
        self.assertEqual([j["id"] for j in self.s.list_jobs(limit=0)], ["j0", "j1", "j2", "j3", "j4"])
        self.assertEqual([j["id"] for j in self.s.list_jobs(state=jobs.PENDING, limit=2)], ["j1", "j2"])
        self.assertEqual(self.s.list_jobs(state=jobs.DEAD), [])

    def test_config_round_trip(self):
        self.assertEqual(self.s.config(), qconfig.defaults())
        self.s.set_config("backoff-max", 600.0)
        self.s.set_config("backoff-max", 60.0)
        self.s.set_config("worker-count", 4)
        with self.store() as other:
            self.assertEqual(other.config(), dict(qconfig.defaults(), **{"backoff-max": 60.0, "worker-count": 4}))


class WakeUpTest(StoreTestCase):
    def test_a_due_job_passed_over_does_not_hide_a_later_one_falling_due(self):
        # A worker of queue "q" passes over another queue's due job: the retry of its own that falls
        # due later must still wake it then, not at its next safety wake-up (SAFETY_WAKE_S).
        self.add("elsewhere", queue="other")            # due at T
        self.add("later", queue="q", delay=5)           # due at T + 5
        watch = self.store()
        self.assertTrue(watch.poll_for_work(T), "the first look: elsewhere is due")
        self.assertFalse(watch.poll_for_work(T + 0.1), "each due time is answered once")
        self.assertFalse(watch.poll_for_work(T + 1))
        self.assertTrue(watch.poll_for_work(T + 5), "later is due")
        self.assertFalse(watch.poll_for_work(T + 6))
        self.add("new", queue="q", delay=1, at=T + 6)  # another connection's commit: look again
        self.assertTrue(watch.poll_for_work(T + 6))


class ClaimPlanTest(StoreTestCase):
    def test_claim_reads_the_ready_index_without_sorting(self):
        for i in range(50):
            self.add("j%d" % i, priority=i % 3)
        self.s._read("ANALYZE")
        for served in ((), ("default", "other")):  # every queue, and a worker's own queues
            plan = [row[3] for row in self.s._read("EXPLAIN QUERY PLAN " + qctl.db._claim_select(len(served)),
                                                   (0.0,) + served)]
            self.assertTrue(any("jobs_ready" in step for step in plan), plan)
            self.assertFalse([step for step in plan if "TEMP B-TREE" in step.upper()], plan)


# Claims until the queue is empty, as fast as a worker whose jobs take half a millisecond,
# then prints the ids it got, one a line. After its first claim it waits for the other
# claimer's first, so the two loops surely overlap however the machine schedules them.
CLAIMER = textwrap.dedent("""\
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    import qctl.db
    db_path, worker, other, go = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
    qctl.db.HAS_RETURNING = qctl.db.HAS_RETURNING and sys.argv[6] == "returning"
    store = qctl.db.open_store(db_path, durable=False)
    open(go + "." + worker, "w").close()       # ready
    while not os.path.exists(go):              # start together
        time.sleep(0.001)
    got = []
    while True:
        job = store.claim(worker, 300, now=time.time())
        if job is None:
            break
        got.append(job["id"])
        if len(got) == 1:
            open(go + ".claimed." + worker, "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(go + ".claimed." + other) and time.monotonic() < deadline:
                time.sleep(0.001)
        time.sleep(0.0005)                     # "run" it: the other process gets a turn
    store.close()
    sys.stdout.write("\\n".join(got))
""")


class ConcurrentClaimTest(StoreTestCase):
    JOBS = 400

    def test_two_processes_never_claim_the_same_job(self):
        self.race("returning")

    def test_two_processes_never_claim_the_same_job_without_returning(self):
        self.race("fallback")

    def race(self, claim_path):
        now = time.time()  # the claimers use the real clock
        new = [new_job("job-%04d" % i, now=now) for i in range(self.JOBS)]
        self.s.enqueue(new, now)
        go = os.path.join(self.tmp, "go")
        procs = []
        for worker, other in (("wa", "wb"), ("wb", "wa")):
            proc = subprocess.Popen([sys.executable, "-c", CLAIMER, ROOT, self.db_path, worker, other, go,
                                     claim_path],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.addCleanup(proc.wait)
            self.addCleanup(lambda p=proc: p.poll() is None and p.kill())
            procs.append(proc)
        wait_until(lambda: all(os.path.exists(go + "." + w) for w in ("wa", "wb")), message="claimers ready")
        open(go, "w").close()
        got = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=120)
            self.assertEqual(proc.returncode, 0, stderr)
            got.append(stdout.split())
        a, b = set(got[0]), set(got[1])
        self.assertEqual(len(a), len(got[0]), "a process got a job twice")
        self.assertEqual(len(b), len(got[1]), "a process got a job twice")
        self.assertEqual(a & b, set(), "both processes claimed the same job")
        self.assertEqual(a | b, {j["id"] for j in new})
        self.assertTrue(a and b, (len(a), len(b)))
        self.assertEqual(self.s.counts()[jobs.PROCESSING], self.JOBS)
        self.assertEqual({r["run"] for r in self.s.list_jobs(limit=0)}, {1})
