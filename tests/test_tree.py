"""The whole tree (SPEC "Operating under load and faults"): on Linux no descendant of a job's
command survives its job, whether it ends by timeout, hard stop or on its own, and after a
kill -9 of its worker the next worker on the host kills the lost run's processes first.

Every test starts real processes that leave the command's session (`setsid`) or process
group (GNU `timeout`), and checks by pid, read from a file the process writes itself.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import unittest

from tests.base import ROOT, HomeTestCase, wait_until
from qctl import proctree, runner
from qctl.runner import run_command
from qctl.worker import Worker

LINUX = sys.platform.startswith("linux")
linux_only = unittest.skipUnless(LINUX, "the whole-tree kill is Linux only (elsewhere: the process group)")

# A grandchild in a session of its own, and one in GNU timeout's own process group.
SETSID = "setsid sh -c 'echo $$ > {d}/setsid; exec sleep 30' >/dev/null 2>&1 &"
TIMEOUT = "timeout 30 sh -c 'echo $$ > {d}/timeout; exec sleep 29' >/dev/null 2>&1 &"
# The shell waits until both have written their pid, so each exists before anything is killed.
BOTH_STARTED = "while [ ! -s {d}/setsid ] || [ ! -s {d}/timeout ]; do sleep 0.01; done"


def read(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except FileNotFoundError:
        return ""


def state_of(pid):
    """The process state letter ('S', 'Z', ...) of `pid`, or None once it is gone (reaped)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return None


def alive(pid):
    """Running: neither gone nor a zombie."""
    return state_of(pid) not in (None, "Z")


class TreeCase(HomeTestCase):
    def pid_in(self, name):
        """The pid a process of the test wrote to `name`; SIGKILLed at cleanup if still alive,
        so that a failing test (or the unfixed code) leaves nothing behind."""
        path = os.path.join(self.tmp, name)
        pid = int(wait_until(lambda: read(path), message="the pid in %s" % name))
        self.addCleanup(lambda: alive(pid) and os.kill(pid, signal.SIGKILL))
        return pid

    def pids(self, *names):
        return [self.pid_in(name) for name in names]

    def assert_gone(self, pids, what):
        # After the run is over nothing may still run; a zombie is dead but not yet collected.
        survivors = [pid for pid in pids if alive(pid)]
        self.assertEqual(survivors, [], "%s: descendants still running" % what)

    def command(self, template):
        return template.format(d=self.tmp)


@linux_only
class RunCommandTreeTest(TreeCase):
    """`run_command` alone, in a process that adopts orphans as a worker does."""

    @classmethod
    def setUpClass(cls):
        runner.adopt_orphans()

    def test_timeout_kills_descendants_in_their_own_session_or_group(self):
        result = run_command(self.command(SETSID + TIMEOUT + BOTH_STARTED + "; sleep 30"), timeout=0.5)
        self.assertEqual(result.error, "timed out after 0.5s")
        self.assert_gone(self.pids("setsid", "timeout"), "after a timeout")

    def test_timeout_kills_a_descendant_whose_parent_exited_first(self):
        # The subshell that started the setsid grandchild is gone before the timeout: the
        # grandchild was re-parented to us, and only the run's tag in its environment is left.
        result = run_command(self.command("(" + SETSID + " while [ ! -s {d}/setsid ]; do sleep 0.01; done); "
                                          "sleep 30"), timeout=0.5)
        self.assertEqual(result.error, "timed out after 0.5s")
        self.assert_gone(self.pids("setsid"), "after a timeout")

    def test_a_finished_job_leaves_nothing_running_and_no_zombie(self):
        result = run_command(self.command(SETSID + TIMEOUT + "sleep 30 >/dev/null 2>&1 & echo $! > {d}/plain; "
                                          + BOTH_STARTED + "; exit 0"))
        self.assertIsNone(result.error)
        pids = self.pids("setsid", "timeout", "plain")
        self.assert_gone(pids, "after a successful run")
        # Those re-parented to us are also reaped: no zombie of ours is left behind.
        mine = [pid for pid in pids if state_of(pid) == "Z" and ppid_of(pid) == os.getpid()]
        self.assertEqual(mine, [], "zombies left for the worker")

    def test_without_a_subreaper_the_orphans_are_still_found(self):
        # A fresh interpreter that never adopts orphans: the setsid grandchild goes to init,
        # and only the run's tag in its environment ties it to the job.
        script = textwrap.dedent("""\
            import sys
            sys.path.insert(0, %r)
            from qctl.runner import run_command
            result = run_command(sys.argv[1])
            print(result.error)
            """ % ROOT)
        proc = subprocess.run([sys.executable, "-c", script, self.command(SETSID + "while [ ! -s {d}/setsid ]; "
                                                                          "do sleep 0.01; done")],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.stdout.strip(), "None", proc)
        self.assert_gone(self.pids("setsid"), "after a run in a process that is no subreaper")

    def test_a_descendant_seen_before_it_cleared_its_environment_is_killed(self):
        # env -i drops the tag and setsid the session; its parent lives long enough (1 s) for a
        # look (every 0.5 s) to see it, then exits before the timeout. Looks happen while the
        # output is read and, once the command has closed it, while its shell is waited for.
        # That wait looks every proctree.LOOK_EVERY_S: made 0.1 s for it (how often is not under
        # test, that a look remembers the process is), so its parent lives 0.4 s, and 0.3 s
        # before the timeout as in the other case. The read's looks come every 0.5 s whatever.
        # The two cases run at once, each in a thread of its own (as a worker's threads run
        # commands): the test takes the longer one's 1.3 s, not both one after the other.
        command = ("(setsid env -i sh -c 'echo $$ > {d}/bare; exec sleep 30' >/dev/null 2>&1 & "
                   "while [ ! -s {d}/bare ]; do sleep 0.01; done; sleep %s); sleep 30")
        self.addCleanup(setattr, proctree, "LOOK_EVERY_S", proctree.LOOK_EVERY_S)
        proctree.LOOK_EVERY_S = 0.1
        cases = {False: ("bare", "1", 1.3), True: ("bare-closed", "0.4", 0.7)}
        if not hasattr(os, "pidfd_open"):
            del cases[True]  # looks while the shell is waited for need os.pidfd_open (Python 3.9)
        results = {}

        def run(closed, name, lives, timeout):
            text = (command % lives).replace("{d}/bare", "{d}/" + name)
            results[closed] = run_command(self.command(("exec >/dev/null 2>&1; " if closed else "") + text),
                                          timeout=timeout)
        threads = [threading.Thread(target=run, args=(closed,) + case) for closed, case in cases.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for closed in (False, True):
            with self.subTest(stdio_closed=closed):
                if closed not in cases:
                    self.skipTest("looks while the shell is waited for need os.pidfd_open (Python 3.9)")
                name, _, timeout = cases[closed]
                self.assertEqual(results[closed].error, "timed out after %ss" % timeout)
                self.assert_gone(self.pids(name), "after a timeout")

    def test_a_long_run_remembers_only_the_processes_that_still_run(self):
        proc = subprocess.Popen("while :; do sleep 0.01; done", shell=True, start_new_session=True)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        tree = proctree.Tree(proc.pid, "a-tag")
        seen = set()

        def look():
            tree._next_look = 0  # look now, not in LOOK_EVERY_S
            tree.look()
            seen.update(tree._seen)
            return len(seen) >= 20
        wait_until(look, interval=0.005, message="20 of the loop's sleeps to be seen")
        self.assertLessEqual(len(tree._seen), 3, "the shell and a sleep or two, not every sleep ever seen")
        tree.kill(0)
        self.assertIsNotNone(proc.wait(30))
        self.assertEqual(tree._scan(), {}, "a sleep forked between the TERM and the KILL is killed too")


@linux_only
class StartTimeTest(unittest.TestCase):
    """A Tree's start time comes from the clock around the start (see proctree._start_of), never
    other than what /proc says."""

    def setUp(self):
        saved = proctree._checks_left
        self.addCleanup(setattr, proctree, "_checks_left", saved)

    def start(self):
        before = proctree.born_ticks()
        proc = subprocess.Popen(["sleep", "30"])
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        return proc, (before, proctree.born_ticks())

    def test_the_predicted_start_is_the_one_proc_shows(self):
        proctree._checks_left = 0  # predict without checking
        for _ in range(20):
            proc, born = self.start()
            tree = proctree.Tree(proc.pid, "a-tag", born=born)
            self.assertEqual(tree.start, proctree._stat(proc.pid).start, born)

    def test_a_wrong_prediction_ends_predicting(self):
        proctree._checks_left = 2
        proc, born = self.start()
        wrong = (born[0] - 5, born[0] - 5)
        self.assertEqual(proctree.Tree(proc.pid, "a-tag", born=wrong).start, proctree._stat(proc.pid).start)
        self.assertIsNone(proctree._checks_left, "still predicting after a wrong answer")
        self.assertEqual(proctree.Tree(proc.pid, "a-tag", born=wrong).start, proctree._stat(proc.pid).start)

    def test_predictions_are_checked_before_they_are_trusted(self):
        proctree._checks_left = 3
        while proctree._checks_left:
            proc, born = self.start()
            if born[0] == born[1]:
                proctree.Tree(proc.pid, "a-tag", born=born)
        proc, _ = self.start()
        self.assertEqual(proctree.Tree(proc.pid, "a-tag", born=(7, 7)).start, 7, "a checked clock is trusted")


def ppid_of(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1])
    except OSError:
        return None


@linux_only
class WorkerTreeTest(TreeCase):
    def enqueue(self, command, **fields):
        fields["command"] = command
        return self.ok("enqueue", json.dumps(fields)).stdout.strip()

    def test_hard_stop_kills_every_descendant_and_releases_the_job(self):
        job_id = self.enqueue(self.command(SETSID + TIMEOUT + "wait"))
        worker = Worker(self.home, threads=1)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 60)
        self.addCleanup(worker.stop)
        pids = self.pids("setsid", "timeout")
        worker.kill()  # what a second Ctrl-C does
        thread.join(60)
        self.assertFalse(thread.is_alive())
        self.assertEqual(self.job(job_id)["state"], "pending")
        self.assert_gone(pids, "after a hard stop")

    def lose_a_run(self, leave, names, *, after_note):
        """Run a job whose first run leaves the processes `names` (started by the shell text `leave`)
        and execs into a sleep; kill -9 its worker (`after_note`: once the worker has noted the
        shell's pid on the job); return the pids. Run 2 writes down which of run 1's processes it
        finds running, so "before the job runs again" is checked by the job itself."""
        names = names + ("shell",)
        check = ("for f in " + " ".join(names) + "; do p=$(cat {d}/$f); "
                 "s=$(sed -n 's/^State:[[:space:]]*\\(.\\).*/\\1/p' /proc/$p/status 2>/dev/null); "
                 "if [ -n \"$s\" ] && [ \"$s\" != Z ]; then echo alive-$f >> {d}/log; fi; done")
        job_id = self.enqueue(self.command("if [ -f {d}/shell ]; then " + check + "; echo second >> {d}/log; "
                                           "else echo first >> {d}/log; " + leave
                                           + "echo $$ > {d}/shell; exec sleep 60; fi"))
        # A tick of the first worker notes the shell's pid on the job once the run has lasted a tick:
        # made 0.1 s for `after_note` (when is not under test, what the note lets the next worker
        # kill is). Without it, its first tick must not come before the kill: the usual 0.5 s.
        first = self.spawn_worker(periods={"TICK_S": 0.1} if after_note else None)
        pids = self.pids(*names)
        if after_note:
            wait_until(lambda: "pid" in json.loads(self.run_process(job_id)), message="the shell's pid noted")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        self.assertTrue(all(alive(pid) for pid in pids), "the lost run's processes outlive its worker")
        self.ok("config", "set", "backoff-max", "0.1")
        self.spawn_worker()  # same host: recovers the job at once, and kills its processes first
        wait_until(lambda: self.job(job_id)["state"] == "completed", message="the job to be recovered and rerun")
        self.assertEqual(read(os.path.join(self.tmp, "log")).split(), ["first", "second"],
                         "run 2 found run 1's processes running")
        return pids

    def run_process(self, job_id):
        con = sqlite3.connect(self.db_path)
        try:
            return con.execute("SELECT run_process FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        finally:
            con.close()

    def test_kill_9_at_once_the_next_worker_kills_the_lost_run_by_its_tag(self):
        # Before any tick of the worker: only what the claim kept, the run's tag, is known.
        pids = self.lose_a_run("(" + SETSID + " while [ ! -s {d}/setsid ]; do sleep 0.01; done); ", ("setsid",),
                               after_note=False)
        self.assert_gone(pids, "after the recovery")

    def test_kill_9_later_the_next_worker_also_kills_the_lost_run_s_session(self):
        # One orphan in a session of its own (only the tag finds it) and one without an
        # environment (only the session, noted with the shell's pid after a tick, finds it).
        leave = ("(" + SETSID + " while [ ! -s {d}/setsid ]; do sleep 0.01; done); "
                 "(env -i sh -c 'echo $$ > {d}/bare; exec sleep 60' >/dev/null 2>&1 & "
                 "while [ ! -s {d}/bare ]; do sleep 0.01; done); ")
        pids = self.lose_a_run(leave, ("setsid", "bare"), after_note=True)
        self.assert_gone(pids, "after the recovery")

if __name__ == "__main__":
    unittest.main()
