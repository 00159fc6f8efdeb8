"""The worker runtime: real commands, real worker processes, real signals."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import unittest

import qctl.db
import qctl.worker
from tests.base import SCRIPT, HomeTestCase, Result, wait_until
from qctl import home as qhome
from qctl.db import Store
from qctl import runner
from qctl.runner import run_command
from qctl.worker import Worker

POSIX = os.name == "posix"
posix_only = unittest.skipUnless(POSIX, "POSIX signals and process groups")


def pid_gone(pid):
    """True once `pid` no longer exists (a zombie counts as gone)."""
    try:
        with open("/proc/%d/status" % pid) as fh:
            return "\nState:\tZ" in fh.read()
    except FileNotFoundError:
        return True
    except OSError:
        return not qhome.pid_alive(pid)


def read(path):
    with open(path) as fh:
        return fh.read()


class WorkerTestCase(HomeTestCase):
    def enqueue(self, command, **fields):
        fields["command"] = command
        return self.ok("enqueue", json.dumps(fields)).stdout.strip()

    def state(self, job_id):
        return self.job(job_id)["state"]

    def burst(self, threads=2):
        """Run an in-process worker until nothing is runnable."""
        return Worker(self.home, threads=threads, burst=True).run()

    def background_worker(self, threads=2):
        """An in-process worker in a thread; stopped and joined at cleanup."""
        w = Worker(self.home, threads=threads)
        thread = threading.Thread(target=w.run, daemon=True)
        thread.start()

        def stop():
            w.stop()
            thread.join(60)
        self.addCleanup(stop)
        return w

    def show(self, job_id):
        return json.loads(self.ok("show", job_id, "--json").stdout)

    def log_text(self, proc):
        proc.log.flush()
        return read(proc.log.name)


class HeldLeaseTest(WorkerTestCase):
    """The heartbeat renews the jobs our threads hold: by run, not only by job."""

    def test_a_finish_recorded_again_after_another_thread_claimed_the_next_run_keeps_that_runs_lease(self):
        # Thread A's finish committed but A was told it failed (its connection cut at COMMIT); the
        # job's retry, due at once, is claimed by thread B; A then records its finish again (fenced,
        # nothing changes). B's run must still be renewed, and never recovered from under it.
        from qctl.jobs import FAIL, Outcome
        store = self.store()
        store.set_config("backoff-max", 0.01)
        store.set_config("lease-seconds", 1.0)
        self.enqueue("true", id="x")
        w = Worker(self.home, threads=2)
        w._house_store = self.store()
        thread_a, thread_b = self.store(), self.store()
        first = w._claim_next(thread_a, None)
        outcome = Outcome(FAIL, first, w.id, w.now(), "exit 1", 1)
        thread_a.record(outcome, w.settings)  # committed, unheard of
        time.sleep(0.05)
        second = w._claim_next(thread_b, None)
        self.assertEqual((second["id"], second["run"]), ("x", 2))
        self.assertIsNone(w._claim_next(thread_a, outcome))  # fenced; nothing else to claim
        time.sleep(0.6)
        w._beat()
        time.sleep(0.6)  # past the claim's own lease, within the renewed one
        self.assertEqual(w._house_store.recover(w.now(), w.settings, me=w.id), [])
        self.assertEqual((self.job("x")["state"], self.job("x")["worker"]), ("processing", w.id))


class RunCommandTest(unittest.TestCase):
    """`run_command` alone: exit codes, errors, output tails, timeouts."""

    def test_exit_codes_and_errors(self):
        self.assertEqual(run_command("exit 0").error, None)
        self.assertEqual(run_command("exit 3").error, "exit code 3")
        self.assertEqual(run_command("exit 3").exit_code, 3)
        self.assertEqual(run_command("definitely-not-a-command-qctl").error, "command not found")
        missing = run_command("true", cwd="/nonexistent/qctl-dir")
        self.assertEqual(missing.error, "cannot start: working directory /nonexistent/qctl-dir does not exist")

    def test_output_of_both_streams(self):
        result = run_command("echo out; echo err >&2")
        self.assertEqual((result.stdout, result.stderr), (b"out\n", b"err\n"))

    def test_twenty_megabytes_keep_memory_bounded_and_only_the_tail(self):
        command = '"%s" -c "import sys; [sys.stdout.write(\'%%1023d\\n\' %% i) for i in range(20480)]"' % (
            sys.executable,)
        tracemalloc.start()
        try:
            result = run_command(command, output_limit=4096)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertIsNone(result.error, result.stderr)
        self.assertEqual(len(result.stdout), 4096)
        self.assertTrue(result.stdout.endswith(b"%1023d\n" % (20 * 1024 - 1)))
        self.assertLess(peak, 2 * 1024 * 1024, "20 MB of output must not be held in memory")

    @posix_only
    def test_timeout_kills_the_whole_tree(self):
        with tempfile.TemporaryDirectory() as tmp:
            pidfile = os.path.join(tmp, "pid")
            started = time.monotonic()
            result = run_command("sleep 300 & echo $! > %s; wait" % pidfile, timeout=0.3)
            self.assertLess(time.monotonic() - started, 20)
            self.assertEqual(result.error, "timed out after 0.3s")
            grandchild = int(read(pidfile))
            wait_until(lambda: pid_gone(grandchild), message="the grandchild sleep to be killed")

    @posix_only
    def test_timeout_holds_for_a_command_that_closed_its_output(self):
        started = time.monotonic()
        result = run_command("exec sleep 30 >/dev/null 2>&1", timeout=0.3)
        self.assertEqual(result.error, "timed out after 0.3s")
        self.assertLess(time.monotonic() - started, 15)

    @posix_only
    def test_a_chatty_background_grandchild_does_not_hold_the_run(self):
        # How long the run reads after the shell exits (ORPHAN_PIPE_GRACE_S, 1 s) is not under test,
        # that the grandchild's output, every 0.1 s for 10 s, does not extend it is: 0.3 s here.
        self.addCleanup(setattr, runner, "ORPHAN_PIPE_GRACE_S", runner.ORPHAN_PIPE_GRACE_S)
        runner.ORPHAN_PIPE_GRACE_S = 0.3
        started = time.monotonic()
        result = run_command("(for i in $(seq 100); do echo x; sleep 0.1; done) & exit 0")
        self.assertIsNone(result.error)
        self.assertLess(time.monotonic() - started, 8, "the run ends about a second after the shell exits")

    def test_windows_branches_build_the_right_arguments(self):
        self.assertEqual(runner.kill_tree_argv(1234), ["taskkill", "/T", "/F", "/PID", "1234"])


class JobLifecycleTest(WorkerTestCase):
    def test_success_failure_not_found_and_dlq(self):
        self.ok("config", "set", "backoff-base", "1")
        ok = self.enqueue("echo hello", id="ok")
        bad = self.enqueue("exit 7", id="bad", max_retries=0)
        missing = self.enqueue("no-such-command-qctl", id="missing", max_retries=0)
        self.assertEqual(self.burst(), 0)
        self.assertEqual(self.state(ok), "completed")
        self.assertEqual(self.ok("logs", ok).stdout.splitlines()[2], "hello")
        bad_job = self.show(bad)
        self.assertEqual((bad_job["state"], bad_job["last_error"], bad_job["exit_code"]), ("dead", "exit code 7", 7))
        self.assertEqual(self.show(missing)["last_error"], "command not found")
        dead = [j["id"] for j in json.loads(self.ok("dlq", "list", "--json").stdout)]
        self.assertEqual(sorted(dead), ["bad", "missing"])
        self.ok("dlq", "retry", bad)
        retried = self.show(bad)
        self.assertEqual((retried["state"], retried["attempts"]), ("pending", 0))
        self.burst()
        again = self.show(bad)
        self.assertEqual(again["state"], "dead")
        self.assertEqual([r["run"] for r in again["runs"]], [1, 2], "runs are numbered over the whole life")
        self.assertEqual([r["attempt"] for r in again["runs"]], [1, 1])

    def test_logs_picks_a_run_and_refuses_one_that_does_not_exist(self):
        job_id = self.enqueue("echo run-$(ls %s | wc -l); touch %s/$$; exit 1" % (self.tmp, self.tmp), max_retries=1)
        self.assertEqual(self.ok("logs", job_id).stdout, "job %s has not run yet\n" % job_id)
        missing = self.cli("logs", job_id, "--run", "1")
        self.assertEqual((missing.code, missing.stderr.count("\n")), (1, 1), missing)
        self.ok("config", "set", "backoff-max", "0.05")  # the retry at once: its delay is not under test
        self.background_worker(threads=1)
        wait_until(lambda: self.state(job_id) == "dead", message="both runs")
        first, second = (self.ok("logs", job_id, "--run", n).stdout for n in (1, 2))
        self.assertIn("run 1 of 2: exit code 1", first)
        self.assertIn("run 2 of 2: exit code 1", second)
        self.assertNotEqual(first.splitlines()[2], second.splitlines()[2])
        self.assertEqual(self.cli("logs", job_id, "--run", "3").code, 1)

    def test_retry_gaps_follow_the_backoff(self):
        self.ok("config", "set", "backoff-base", "1.2")
        # One retry: that base ** k holds for every k is jobs.after_failure's test (test_jobs).
        job_id = self.enqueue("exit 1", max_retries=1)
        self.background_worker(threads=1)
        wait_until(lambda: self.state(job_id) == "dead", message="the job to die")
        runs = self.job_runs(job_id)
        self.assertEqual(len(runs), 2)
        gap = runs[1]["started_at"] - runs[0]["finished_at"]
        self.assertGreaterEqual(gap, 1.2 - 0.01)
        self.assertLess(gap, 1.2 + 5)

    def job_runs(self, job_id):
        with Store(self.db_path) as store:
            return store.job_runs(store.get(job_id))

    def test_timeout_is_a_failed_attempt(self):
        job_id = self.enqueue("sleep 30", timeout=0.3, max_retries=0)
        self.burst()
        self.assertEqual(self.show(job_id)["last_error"], "timed out after 0.3s")

    def test_priority_then_run_at_then_fifo(self):
        order = os.path.join(self.tmp, "order")
        for name, fields in (("low", {}), ("high", {"priority": 5}), ("low2", {}),
                             ("later", {"priority": 9, "delay": 3600})):
            self.enqueue("echo %s >> %s" % (name, order), id=name, **fields)
        self.burst(threads=1)
        with open(order) as fh:
            self.assertEqual(fh.read().split(), ["high", "low", "low2"])
        self.assertEqual(self.state("later"), "pending", "a job is not started before its run_at")

    def test_cwd_and_env_are_honoured_and_env_values_not_shown(self):
        workdir = os.path.join(self.tmp, "work")
        os.mkdir(workdir)
        job_id = self.enqueue("pwd; echo $QCTL_GREETING | tr a-z A-Z", cwd=workdir,
                              env={"QCTL_GREETING": "hi-there"})
        self.burst()
        stdout = self.ok("logs", job_id).stdout
        self.assertIn(os.path.realpath(workdir), stdout)
        self.assertIn("HI-THERE", stdout)  # the value itself would be stored as ***
        self.assertNotIn("hi-there", self.ok("show", job_id).stdout)
        self.assertEqual(self.show(job_id)["env"], {"QCTL_GREETING": "***"})

    def test_live_config_reaches_a_running_worker(self):
        # That a reload reaches it is under test, not its period (TICK_S, 0.5 s): 0.1 s here.
        self.addCleanup(setattr, qctl.worker, "TICK_S", qctl.worker.TICK_S)
        qctl.worker.TICK_S = 0.1
        running = self.background_worker(threads=1)
        self.ok("config", "set", "job-timeout", "0.3")
        wait_until(lambda: running.settings["job-timeout"] == 0.3, message="the worker to reload its config")
        job_id = self.enqueue("sleep 30", max_retries=0)
        wait_until(lambda: self.state(job_id) == "dead", message="the new timeout to apply")
        self.assertEqual(self.show(job_id)["last_error"], "timed out after 0.3s")

    def test_a_failing_supervisor_stops_the_worker_instead_of_hanging(self):
        class Broken(Worker):
            def _supervise(self, futures):
                raise RuntimeError("supervisor bug")
        worker = Broken(self.home, threads=2)
        failures = []

        def run():
            try:
                worker.run()
            except RuntimeError as exc:
                failures.append(exc)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(30)
        self.assertFalse(thread.is_alive(), "the worker hung")
        self.assertEqual([str(e) for e in failures], ["supervisor bug"])
        self.assertEqual([t.name for t in threading.enumerate() if t.name.startswith("qctl-")], [],
                         "a thread of the failed worker lives on")
        with Store(self.db_path) as store:
            self.assertEqual(store.live_workers(time.time()), [], "its registration stays behind")

    def test_healthy_worker_keeps_the_shortest_lease_on_a_long_job(self):
        self.ok("config", "set", "lease-seconds", "1")
        go = os.path.join(self.tmp, "go")
        # The job runs until the test lets it go (at most 60 s): once it has outlived its first lease
        # by half and its lease is seen renewed past now. A fixed sleep 2.5 waited a second longer.
        job_id = self.enqueue("i=0; while [ ! -e %s ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i+1)); done" % go)
        self.background_worker(threads=1)
        self.background_worker(threads=1)  # a second worker that would recover an expired lease

        def outlived_its_lease():
            job, now = self.job(job_id), time.time()
            if job["state"] != "processing":
                return job["state"] != "pending"  # recovered, or ended: the checks below say which
            return now > job["started_at"] + 1.5 and job["lease_until"] > now
        wait_until(outlived_its_lease, message="the job to outlive its first lease, renewed")
        open(go, "w").close()
        wait_until(lambda: self.state(job_id) == "completed", message="the long job to complete")
        job = self.show(job_id)
        self.assertEqual((job["attempts"], len(job["runs"])), (1, 1))


class WorkerProcessTest(WorkerTestCase):
    """Real worker processes: stop, signals, crashes, several processes at once."""

    def test_graceful_stop_finishes_the_running_job(self):
        done, go = os.path.join(self.tmp, "done"), os.path.join(self.tmp, "go")
        # The job runs until the test lets it go (at most 60 s), once the worker has seen the stop.
        job_id = self.enqueue("i=0; while [ ! -e %s ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i+1)); done; "
                              "echo yes > %s" % (go, done))
        proc = self.spawn_worker()
        wait_until(lambda: self.state(job_id) == "processing", message="the job to start")
        stopping = subprocess.Popen([sys.executable, SCRIPT, "worker", "stop", "--wait", "--timeout", "60"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=dict(os.environ, QUEUECTL_HOME=self.home))
        self.addCleanup(lambda: stopping.poll() is None and stopping.kill())
        wait_until(lambda: "stopping: stop requested" in self.log_text(proc), message="the worker to see the stop")
        self.assertEqual(self.state(job_id), "processing", "the stop cut the running job short")
        open(go, "w").close()
        out, err = stopping.communicate(timeout=60)
        stop = Result(stopping.returncode, out, err)
        self.assertEqual(stop.code, 0, stop)
        self.assertEqual(proc.wait(30), 0)
        self.assertEqual(self.state(job_id), "completed")
        self.assertTrue(os.path.exists(done))
        self.assertEqual(json.loads(self.ok("worker", "list", "--json").stdout), [])

    def test_worker_started_after_stop_keeps_running(self):
        self.ok("worker", "stop")
        proc = self.spawn_worker()
        job_id = self.enqueue("true")
        wait_until(lambda: self.state(job_id) == "completed", message="the new worker to run a job")
        self.assertIsNone(proc.poll())
        workers = json.loads(self.ok("worker", "list", "--json").stdout)
        self.assertEqual([w["pid"] for w in workers], [proc.pid])
        self.assertEqual(json.loads(self.ok("status", "--json").stdout)["workers"], {"processes": 1, "threads": 1})
        self.assertEqual(self.run_cli("worker", "stop", "--wait", "--timeout", "60").code, 0)
        self.assertEqual(proc.wait(30), 0)

    @posix_only
    def test_kill_9_mid_job_and_the_job_runs_again(self):
        log = os.path.join(self.tmp, "runs")
        marker = os.path.join(self.tmp, "marker")
        job_id = self.enqueue("if [ -f {m} ]; then echo second >> {l}; else touch {m}; echo first >> {l}; "
                              "echo $$ > {m}; exec sleep 60; fi".format(m=marker, l=log))
        first = self.spawn_worker()
        wait_until(lambda: os.path.exists(log), message="the first run to start")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        orphan = int(wait_until(lambda: read(marker).strip(), message="the first run's pid"))
        self.addCleanup(lambda: os.path.exists("/proc/%d" % orphan) and os.killpg(orphan, signal.SIGKILL))
        self.ok("config", "set", "backoff-max", "0.05")  # the rerun at once: its delay is not under test
        self.spawn_worker()  # same host: notices the dead pid without waiting for the lease
        wait_until(lambda: self.state(job_id) == "completed", message="the job to be recovered and rerun")
        job = self.show(job_id)
        self.assertEqual(job["attempts"], 2)
        self.assertEqual(job["runs"][0]["error"], "worker lost")
        self.assertEqual(read(log).split(), ["first", "second"])

    @posix_only
    def test_sigstopped_worker_changes_nothing_after_its_job_was_recovered(self):
        self.ok("config", "set", "lease-seconds", "1")
        self.ok("config", "set", "backoff-max", "0.05")  # the rerun at once: its delay is not under test
        # The first run lasts a second (the worker is frozen before it ends); the rescuer's rerun is quick.
        job_id = self.enqueue("if [ -e {m} ]; then echo rerun >> {r}; else touch {m}; sleep 1; echo ran >> {r}; fi"
                              .format(m=os.path.join(self.tmp, "first"), r=os.path.join(self.tmp, "ran")))
        paused = self.spawn_worker()
        wait_until(lambda: self.state(job_id) == "processing", message="the first worker to claim")
        os.kill(paused.pid, signal.SIGSTOP)
        self.addCleanup(lambda: paused.poll() is None and os.kill(paused.pid, signal.SIGCONT))
        # The rescuer runs here, in this process: without the second of grace a pulse file's mtime gets
        # for coarse file systems (PULSE_GRACE_S, for HFS+; not what this test is about), it takes the
        # frozen worker's job a second sooner. The lease and the still pulse still decide.
        self.addCleanup(setattr, qctl.db, "PULSE_GRACE_S", qctl.db.PULSE_GRACE_S)
        qctl.db.PULSE_GRACE_S = 0.0
        # Nor is how often the rescuer looks for lost workers (TICK_S, 0.5 s): 0.1 s here, which
        # takes up to 0.4 s off its finding the lease out and the pulse still for 0.75 s.
        self.addCleanup(setattr, qctl.worker, "TICK_S", qctl.worker.TICK_S)
        qctl.worker.TICK_S = 0.1
        rescuer = self.background_worker(threads=1)
        wait_until(lambda: self.state(job_id) == "completed", message="another worker to recover and finish it")
        before = self.show(job_id)
        self.assertEqual(before["worker"], rescuer.id)
        os.kill(paused.pid, signal.SIGCONT)
        wait_until(lambda: "result not recorded" in self.log_text(paused),
                   message="the resumed worker to find its claim lost")
        after = self.show(job_id)
        self.assertEqual(after, before)
        self.assertEqual([r["error"] for r in after["runs"]], ["worker lost", None])

    def hard_stop(self, command):
        """Start `command` under a worker process, send SIGINT twice; return the job afterwards."""
        job_id = self.enqueue(command)
        proc = self.spawn_worker()
        wait_until(lambda: self.state(job_id) == "processing", message="the job to start")
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: "stopping" in self.log_text(proc), message="the first SIGINT to be seen")
        self.assertEqual(self.state(job_id), "processing", "the first SIGINT lets the job run")
        proc.send_signal(signal.SIGINT)
        self.assertEqual(proc.wait(30), 0)
        return self.show(job_id)

    @posix_only
    def test_second_sigint_kills_and_returns_the_job_without_an_attempt(self):
        job = self.hard_stop("sleep 60")
        self.assertEqual((job["state"], job["attempts"], job["runs"]), ("pending", 0, []))

    @posix_only
    def test_hard_stop_releases_a_killed_job_even_if_it_exits_0(self):
        job = self.hard_stop('trap "exit 0" TERM; sleep 30 & wait')
        self.assertEqual((job["state"], job["attempts"]), ("pending", 0))

    def test_stop_right_after_detach_reaches_the_new_worker(self):
        started = self.run_cli("worker", "start", "--detach")
        pid = int(started.stdout.split("pid ")[1].split(",")[0])
        self.addCleanup(lambda: POSIX and qhome.pid_alive(pid) and os.kill(pid, signal.SIGKILL))
        self.assertEqual(self.run_cli("worker", "stop").code, 0)
        if POSIX:
            wait_until(lambda: pid_gone(pid), message="the detached worker to obey the stop")

    def test_stop_timeout_needs_wait(self):
        self.assertEqual(self.cli("worker", "stop", "--timeout", "5").code, 2)

    def test_three_processes_run_600_jobs_exactly_once(self):
        out = os.path.join(self.tmp, "out")
        lines = "".join(json.dumps({"id": "j%03d" % i, "command": "echo j%03d >> %s" % (i, out)}) + "\n"
                        for i in range(600))
        self.ok("enqueue", "--file", "-", stdin=lines)
        procs = [self.spawn_worker("--count", "4", "--burst") for _ in range(3)]
        for proc in procs:
            self.assertEqual(proc.wait(120), 0, self.log_text(proc))
        ran = read(out).split()
        self.assertEqual(len(ran), 600)
        self.assertEqual(sorted(ran), ["j%03d" % i for i in range(600)])
        status = json.loads(self.ok("status", "--json").stdout)
        self.assertEqual(status["jobs"]["completed"], 600)
        started_by = {j["worker"] for j in json.loads(self.ok("list", "--limit", "0", "--json").stdout)}
        self.assertGreater(len(started_by), 1, "the work was shared between processes")

    def test_detach_and_wait(self):
        result = self.run_cli("worker", "start", "--detach")
        self.assertEqual(result.code, 0, result)
        pid = int(result.stdout.split("pid ")[1].split(",")[0])
        self.addCleanup(lambda: POSIX and qhome.pid_alive(pid) and os.kill(pid, signal.SIGKILL))
        good = self.enqueue("true")
        self.assertEqual(self.run_cli("wait", good, "--timeout", "60").code, 0)
        bad = self.enqueue("exit 1", max_retries=0)
        self.assertEqual(self.run_cli("wait", good, bad, "--timeout", "60").code, 1)
        later = self.enqueue("true", delay=3600)
        self.assertEqual(self.run_cli("wait", later, "--timeout", "0.2").code, 3)
        self.assertEqual(self.run_cli("worker", "stop", "--wait", "--timeout", "60").code, 0)
        wait_until(lambda: pid_gone(pid) if POSIX else True, message="the detached worker to exit")
        self.assertTrue(os.path.exists(os.path.join(self.home, "worker.log")))


if __name__ == "__main__":
    unittest.main()
