"""`logs ID --follow`: what a running command prints reaches the follower within a second,
through retries, with bounded memory and disk, and the follower exits with the job's outcome.

From the runner's tails (what another thread may read while a command runs) to real worker
processes and a real `queuectl logs --follow` subprocess."""

import io
import os
import queue
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
import unittest

import queuectl
from qctl import follow
from qctl import jobs
from qctl.runner import Kept, RedactedTail, Tail, output_progress, run_command
from tests.base import DEADLINE_S, POSIX, SCRIPT, HomeTestCase, add_job, retry_in, wait_until

LINUX = sys.platform.startswith("linux")
# Starts queuectl with Ctrl-C raising KeyboardInterrupt, as in a terminal, even when the tests
# themselves were started with SIGINT ignored (a background job of a non-interactive shell).
WITH_CTRL_C = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


class TailProgressTest(unittest.TestCase):
    def test_progress_gives_the_total_so_far_and_the_last_limit_bytes(self):
        tail = Tail(4)
        self.assertEqual(tail.progress(), (0, b""))
        tail.add(b"abc")
        self.assertEqual(tail.progress(), (3, b"abc"))
        tail.add(b"defgh")
        self.assertEqual(tail.progress(), (8, b"efgh"))
        kept = tail.value()
        self.assertIsInstance(kept, Kept)
        self.assertEqual((kept, kept.total), (b"efgh", 8))

    def test_a_limit_of_zero_keeps_nothing_but_counts(self):
        tail = Tail(0)
        tail.add(b"x" * 100)
        self.assertEqual(tail.progress(), (100, b""))
        self.assertEqual(tail.value().total, 100)

    def test_a_line_that_cannot_start_a_secret_is_shown_at_once(self):
        # `add` alone holds the last len(longest secret) - 1 bytes; progress decides what cannot
        # grow into a secret any more, so a command that prints a line and waits is seen.
        tail = RedactedTail(100, [b"fast", b"hunter2-Tr0ub4dor"])
        tail.add(b"line1\n")
        self.assertEqual(tail.progress(), (6, b"line1\n"))
        tail.add(b"token: hun")  # could be the start of a secret: held
        self.assertEqual(tail.progress(), (13, b"line1\ntoken: "))
        tail.add(b"ter2-Tr0ub4dor\n")
        self.assertEqual(tail.progress(), (17, b"line1\ntoken: ***\n"))
        self.assertEqual(tail.value(), b"line1\ntoken: ***\n")

    def test_looking_while_it_runs_never_changes_the_masked_stream(self):
        # Random secrets (prefixes of one another, overlapping) and random reads, with progress
        # taken at random between them: the final value is what it is without any progress, and
        # every progress is a piece of that same stream.
        rng = random.Random(7)
        for _ in range(3000):
            secrets = list({bytes(rng.choice(b"ab\n") for _ in range(rng.randint(1, 6)))
                            for _ in range(rng.randint(1, 3))})
            data = bytes(rng.choice(b"abc\n") for _ in range(rng.randint(0, 60)))
            plain, looked = RedactedTail(1000, secrets), RedactedTail(1000, secrets)
            seen, at = [], 0
            while at < len(data):
                n = rng.randint(1, 6)
                plain.add(data[at:at + n])
                looked.add(data[at:at + n])
                at += n
                if rng.random() < 0.6:
                    seen.append(looked.progress())
            final = looked.value()
            self.assertEqual(final, plain.value(), (secrets, data))
            self.assertEqual(final.total, len(final))
            for total, tail in seen:
                self.assertEqual(final[total - len(tail):total], tail, (secrets, data))

    def test_another_thread_reads_what_a_running_command_printed_so_far(self):
        started, seen = threading.Event(), []

        def on_start(proc):
            seen.append(proc)
            started.set()
        result = []
        runner = threading.Thread(target=lambda: result.append(run_command(
            "echo one; sleep 0.3; echo two >&2", on_start=on_start)))  # looked at within that 0.3 s
        runner.start()
        started.wait(10)
        proc = seen[0]
        progress = wait_until(lambda: output_progress(proc), message="the first line")
        received, ((out_total, out_tail), _) = progress
        self.assertEqual((out_total, out_tail), (4, b"one\n"))
        self.assertIsNone(output_progress(proc, received))  # nothing new: nothing copied
        runner.join(10)
        self.assertEqual(result[0].stdout.total, 4)
        self.assertEqual((result[0].stderr, result[0].stderr.total), (b"two\n", 4))


def progress(out=b"", err=b"", out_total=None, err_total=None):
    """One job's streams as `runner.output_progress` gives them (the totals default to the tails)."""
    return ((len(out) if out_total is None else out_total, out), (len(err) if err_total is None else err_total, err))


class LiveOutputStoreTest(HomeTestCase):
    def setUp(self):
        super().setUp()
        self.s = self.store()
        add_job(self.s, "j")
        self.job = self.s.claim("w1", 30.0, now=1.0)

    def live(self):
        return self.s.live_output("j")[1]

    def test_a_running_job_s_output_is_replaced_in_place(self):
        self.assertEqual(self.s.running_run(self.job["seq"], "w1"), 1)
        self.assertIsNone(self.s.running_run(self.job["seq"], "w2"))
        self.assertEqual(self.s.publish_output("w1", [(self.job["seq"], 1, progress(b"a\n"))], now=2.0), 1)
        self.assertEqual(self.s.publish_output("w1", [(self.job["seq"], 1, progress(b"b\n", b"e", 900))], now=2.5), 1)
        live = self.live()
        self.assertEqual((live["run"], live["started_at"]), (1, 1.0))
        self.assertEqual((live["stdout"], live["stdout_total"], live["stderr"], live["stderr_total"]),
                         (b"b\n", 900, b"e", 1))

    def test_only_the_claim_s_worker_and_run_may_publish(self):
        self.assertEqual(self.s.publish_output("w2", [(self.job["seq"], 1, progress(b"x"))], now=2.0), 0)
        self.assertEqual(self.s.publish_output("w1", [(self.job["seq"], 2, progress(b"x"))], now=2.0), 0)
        self.assertIsNone(self.live())

    def test_the_row_goes_once_the_run_has_ended_and_the_kept_tail_knows_its_total(self):
        self.s.publish_output("w1", [(self.job["seq"], 1, progress(b"a\n"))], now=2.0)
        self.s.complete(self.job, "w1", 3.0, stdout=Kept(b"tail\n", 5000))
        self.assertIsNotNone(self.live())  # until a worker's next tick ...
        self.assertEqual(self.s.publish_output("w2", [], now=3.5), 0)  # ... any worker's
        self.assertIsNone(self.live())
        self.assertEqual(self.s.kept_output(self.job, 1), ((b"tail\n", 5000), (None, None)))
        self.assertEqual(self.s.kept_output(self.job, 2), ((None, None), (None, None)))

    def test_a_lost_worker_s_rows_go_with_its_run(self):
        self.s.publish_output("w1", [(self.job["seq"], 1, progress(b"a\n"))], now=2.0)
        self.s.fail(self.job, "w1", 3.0, error="worker lost", settings=retry_in(60))  # as recover records it
        self.s.publish_output("w2", [], now=3.5)
        self.assertIsNone(self.live())

    def test_nothing_to_write_writes_nothing(self):
        before = self.s._read("PRAGMA data_version")[0][0]
        with self.store() as other:
            other.publish_output("w1", [], now=2.0)
        self.assertEqual(self.s._read("PRAGMA data_version")[0][0], before)


class Streams:
    """A stdout and a stderr for FollowSink, whose bytes the test reads back."""

    def __init__(self):
        self.out, self.err = io.TextIOWrapper(io.BytesIO()), io.TextIOWrapper(io.BytesIO())

    def sink(self):
        return queuectl.FollowSink(self.out, self.err)

    def value(self):
        return self.out.buffer.getvalue(), self.err.buffer.getvalue()


class FollowerTest(HomeTestCase):
    """The follower against the store's verbs, one look at a time: what it writes and when it ends."""

    def setUp(self):
        super().setUp()
        self.s = self.store()
        self.streams = Streams()
        self.follower = follow.Follower(self.s, "j", self.streams.sink())

    def look(self):
        return self.follower.look(time.time())

    def publish(self, job, *streams, worker="w1"):
        self.s.publish_output(worker, [(job["seq"], job["run"], progress(*streams))], now=time.time())

    def test_a_run_is_written_as_it_comes_then_its_end_and_the_exit(self):
        add_job(self.s, "j")
        self.assertIsNone(self.look())
        job = self.s.claim("w1", 30.0)
        self.assertIsNone(self.look())
        self.publish(job, b"one\n", b"warn")
        self.assertIsNone(self.look())
        self.publish(job, b"one\ntwo\n", b"warn")
        self.assertIsNone(self.look())
        self.s.complete(job, "w1", time.time(), stdout=Kept(b"one\ntwo\nend\n", 12), stderr=Kept(b"warn!\n", 6))
        self.assertEqual(self.look(), "completed")
        out, err = self.streams.value()
        self.assertEqual(out, b"== job j is pending: waiting for its first run ==\n== job j, run 1 ==\n"
                              b"one\ntwo\nend\n== job j, run 1: completed ==\n")
        self.assertEqual(err, b"warn!\n")

    def test_more_than_a_tail_holds_is_said_then_the_tail_written(self):
        add_job(self.s, "j")
        job = self.s.claim("w1", 30.0)
        self.publish(job, b"abc", b"", 10, 0)
        self.look()
        self.publish(job, b"xyz\n", b"", 1000, 0)
        self.look()
        self.s.complete(job, "w1", time.time(), stdout=Kept(b"end\n", 2004))
        self.assertEqual(self.look(), "completed")
        out, _ = self.streams.value()
        self.assertEqual(out, b"== job j, run 1 ==\n[... 7 bytes not kept ...]\nabc\n[... 986 bytes not kept ...]\n"
                              b"xyz\n[... 1000 bytes not kept ...]\nend\n== job j, run 1: completed ==\n")

    def test_runs_that_came_and_went_between_two_looks_are_each_written(self):
        add_job(self.s, "j", max_retries=3)
        self.look()
        for n in (1, 2):
            job = self.s.claim("w1", 30.0)
            self.s.fail(job, "w1", time.time(), error="exit code 3", exit_code=3, settings=retry_in(0),
                        stdout=Kept(b"try %d\n" % n, 6))
        job = self.s.claim("w1", 30.0)
        self.publish(job, b"third\n")
        self.assertIsNone(self.look())
        self.s.fail(job, "w1", time.time(), error="exit code 3", exit_code=3, settings=retry_in(60),
                    stdout=Kept(b"third\n", 6))
        self.assertIsNone(self.look())  # failed: it runs again in a minute
        out, _ = self.streams.value()
        self.assertEqual(out.decode(), "== job j is pending: waiting for its first run ==\n"
                         "== job j, run 1 ==\ntry 1\n== job j, run 1: exit code 3 ==\n"
                         "== job j, run 2 ==\ntry 2\n== job j, run 2: exit code 3 ==\n"
                         "== job j, run 3 ==\nthird\n== job j, run 3: exit code 3 (retry in 60s) ==\n")

    def test_a_run_given_back_by_a_hard_stop_is_followed_again(self):
        add_job(self.s, "j")
        job = self.s.claim("w1", 30.0, now=time.time())
        self.publish(job, b"first try\n")
        self.look()
        self.s.release(job, "w1", time.time())
        self.look()
        job = self.s.claim("w2", 30.0, now=time.time() + 1)
        self.publish(job, b"again\n", worker="w2")
        self.look()
        self.s.complete(job, "w2", time.time(), stdout=Kept(b"again\n", 6))
        self.assertEqual(self.look(), "completed")
        out, _ = self.streams.value()
        self.assertEqual(out.decode(), "== job j, run 1 ==\nfirst try\n"
                         "== job j, run 1: stopped by its worker (a hard stop); it will run again ==\n"
                         "== job j, run 1 ==\nagain\n== job j, run 1: completed ==\n")

    def test_a_finished_job_gives_its_last_run_at_once(self):
        add_job(self.s, "j", max_retries=0)
        job = self.s.claim("w1", 30.0)
        self.s.fail(job, "w1", time.time(), error="exit code 4", exit_code=4, settings=retry_in(0),
                    stdout=Kept(b"bye\n", 4), stderr=Kept(b"oops", 4))
        self.assertEqual(self.look(), "dead")
        self.assertEqual(self.streams.value(), (b"== job j, run 1 ==\nbye\n== job j, run 1: exit code 4 (dead) ==\n",
                                                b"oops"))

    def test_a_job_cancelled_before_it_ran(self):
        add_job(self.s, "j")
        self.s.cancel(["j"], now=time.time())
        self.assertEqual(self.look(), "cancelled")
        self.assertEqual(self.streams.value()[0], b"== job j is cancelled: it never ran ==\n")
        self.assertEqual(follow.exit_code("cancelled"), 1)

    def test_the_command_line(self):
        self.assertEqual(self.cli("logs", "nope", "--follow").code, 1)
        self.assertEqual(self.cli("logs", "j", "--follow", "--run", "1").code, 2)  # one or the other
        add_job(self.s, "j", max_retries=0)
        job = self.s.claim("w1", 30.0)
        self.s.complete(job, "w1", time.time(), stdout=Kept("h\u00e9\x1b[2J\n".encode(), 8))
        result = self.cli("logs", "j", "-f")  # a text-only stdout (StringIO): decoded; the output as printed
        self.assertEqual((result.code, result.stdout),
                         (0, "== job j, run 1 ==\nh\u00e9\x1b[2J\n== job j, run 1: completed ==\n"))

    def test_what_is_new_of_a_stream(self):
        self.assertEqual(follow.unseen(0, 3, b"abc"), (0, b"abc"))
        self.assertEqual(follow.unseen(2, 3, b"abc"), (0, b"c"))
        self.assertEqual(follow.unseen(3, 3, b"abc"), (0, b""))
        self.assertEqual(follow.unseen(3, 10, b"abc"), (4, b"abc"))
        self.assertEqual(follow.unseen(0, 5, None), (5, b""))     # output-limit 0: nothing kept
        self.assertEqual(follow.unseen(0, None, b"abc"), (0, b"abc"))  # a total not known
        self.assertEqual(follow.unseen(2, None, b"abc"), (0, b""))


class Following:
    """`queuectl logs ID --follow` as a real process: its stdout read line by line as it comes,
    each line with the time it arrived."""

    def __init__(self, test, job_id, *args):
        env = dict(os.environ, QUEUECTL_HOME=test.home)
        env.pop("QUEUECTL_DEBUG", None)
        self.proc = subprocess.Popen([sys.executable, "-c", WITH_CTRL_C, SCRIPT, "logs", job_id, "--follow"]
                                     + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        test.addCleanup(self._reap)
        self.lines, self.err = queue.Queue(), []
        self._readers = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=lambda: self.err.append(self.proc.stderr.read()), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_out(self):
        for line in iter(self.proc.stdout.readline, b""):
            self.lines.put((time.time(), line))
        self.lines.put((time.time(), None))

    def next_line(self, timeout=DEADLINE_S):
        """(when it arrived, the line) of the next line; None at the end of the output."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no line from the follower within %ss" % timeout) from None

    def until(self, text):
        """The lines up to and including the first that holds `text`; the last with its time."""
        seen = []
        while True:
            at, line = self.next_line()
            if line is None:
                raise AssertionError("the follower ended before %r; it wrote %r" % (text, seen))
            seen.append(line)
            if text.encode() in line:
                return at, seen

    def finish(self, timeout=DEADLINE_S):
        """(exit code, the rest of stdout, stderr) once it has exited."""
        code = self.proc.wait(timeout)
        rest = []
        while True:
            _, line = self.next_line()
            if line is None:
                break
            rest.append(line)
        for reader in self._readers:
            reader.join(timeout)
        return code, b"".join(rest), b"".join(self.err)

    def _reap(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


class FollowProcessTest(HomeTestCase):
    """Real workers, a real follower: what the brief of issue #12 asks, end to end."""

    def enqueue(self, job_id, command, **fields):
        with self.store() as store:
            return add_job(store, job_id, now=time.time(), command=command, cwd=self.tmp, **fields)

    def script(self, name, text):
        """A Python script in the test's folder; returns the shell command that runs it."""
        path = os.path.join(self.tmp, name)
        with open(path, "w") as fh:
            fh.write(text)
        return "%s %s" % (shlex.quote(sys.executable), shlex.quote(path))

    def test_each_line_reaches_the_follower_within_a_second_of_being_printed(self):
        self.enqueue("ticks", self.script("ticks.py", "import time\n"
                                          "for i in range(4):\n"
                                          "    print('line%d %.6f' % (i, time.time()), flush=True)\n"
                                          "    time.sleep(0.15)\n"))
        following = Following(self, "ticks")
        self.spawn_worker()
        delays = []
        for i in range(4):
            at, lines = following.until("line%d " % i)
            delays.append(at - float(lines[-1].split()[1]))
        code, rest, _ = following.finish()
        self.assertEqual(code, 0)
        self.assertIn(b"== job ticks, run 1: completed ==", rest)
        self.assertLess(max(delays), 1.0, "print-to-display delays: %s" % ["%.3f" % d for d in delays])

    def test_a_retry_is_followed_through_to_its_success(self):
        marker = os.path.join(self.tmp, "tried")
        self.enqueue("flaky", "if [ -f %s ]; then echo second try; else touch %s; echo first try; exit 3; fi"
                     % (shlex.quote(marker), shlex.quote(marker)), max_retries=2)
        self.ok("config", "set", "backoff-max", "0.1")
        following = Following(self, "flaky")
        self.spawn_worker()
        code, out, _ = following.finish()
        self.assertEqual(code, 0, out)
        text = out.decode()
        for expected in ("== job flaky, run 1 ==\nfirst try\n== job flaky, run 1: exit code 3 (retry in",
                         "== job flaky, run 2 ==\nsecond try\n== job flaky, run 2: completed ==\n"):
            self.assertIn(expected, text)
        self.assertLess(text.index("first try"), text.index("second try"))

    def test_a_dead_job_exits_1_and_so_does_following_it_once_it_is_dead(self):
        self.enqueue("doomed", "echo bye; echo oops >&2; exit 4", max_retries=0)
        following = Following(self, "doomed")
        self.spawn_worker()
        code, out, err = following.finish()
        self.assertEqual((code, err), (1, b"oops\n"))
        self.assertIn(b"bye\n== job doomed, run 1: exit code 4 (dead) ==\n", out)
        started = time.monotonic()
        code, out, err = Following(self, "doomed").finish()  # a finished job: its last run, at once
        self.assertEqual((code, err), (1, b"oops\n"))
        self.assertEqual(out, b"== job doomed, run 1 ==\nbye\n== job doomed, run 1: exit code 4 (dead) ==\n")
        self.assertLess(time.monotonic() - started, DEADLINE_S)

    # The next two wait for a worker's ticks (TICK_S, 0.5 s), which publish what a run printed and
    # find cancel requests: 0.1 s there. How soon a line is shown is the first test's, at 0.5 s.
    def test_a_job_cancelled_while_it_runs_exits_1(self):
        self.enqueue("long", "echo started; sleep 30")
        following = Following(self, "long")
        self.spawn_worker(periods={"TICK_S": 0.1})
        following.until("started")
        with self.store() as store:
            store.cancel(["long"], now=time.time())
        code, out, _ = following.finish()
        self.assertEqual(code, 1, out)
        self.assertIn(b"== job long, run 1: cancelled ==", out)

    @unittest.skipUnless(POSIX, "sends SIGINT")
    def test_ctrl_c_ends_the_follow_not_the_job(self):
        self.enqueue("long", "echo started; sleep 30")
        following = Following(self, "long")
        self.spawn_worker(periods={"TICK_S": 0.1})
        following.until("started")
        following.proc.send_signal(signal.SIGINT)
        code, _, err = following.finish()
        self.assertEqual(code, 130)
        self.assertEqual(err.decode().splitlines(), ["queuectl: stopped following job long (the job is not affected)"])
        self.assertEqual(self.job("long")["state"], jobs.PROCESSING)
        with self.store() as store:  # leave nothing running behind the test
            store.cancel(["long"], now=time.time())
        wait_until(lambda: self.job("long")["state"] == jobs.CANCELLED, message="the job to be cancelled")

    @unittest.skipUnless(LINUX, "reads peak memory from /proc and wait4")
    def test_50_mb_of_output_keeps_follower_worker_and_live_row_small(self):
        limit = 65536
        self.enqueue("flood", self.script("flood.py", "import sys, time\n"
                                          "line = b'0123456789abcdef' * 4 + b'\\n'\n"
                                          "for i in range(50):\n"
                                          "    sys.stdout.buffer.write(line * (1000000 // len(line)))\n"
                                          "    sys.stdout.buffer.flush()\n"
                                          "    time.sleep(0.02)\n"
                                          "print('END')\n"))
        following = Following(self, "flood")
        worker = self.spawn_worker()
        biggest, store = [0], self.store()

        def finished():
            row = store.live_output("flood")[1]
            if row is not None:
                biggest[0] = max(biggest[0], len(row["stdout"] or b"") + len(row["stderr"] or b""))
            return self.job("flood")["state"] == jobs.COMPLETED
        wait_until(finished, message="the flood job to finish")
        worker_peak = peak_rss(worker.pid)
        _, status, usage = os.wait4(following.proc.pid, 0)
        following.proc.returncode = os.WEXITSTATUS(status)
        code, out, _ = following.finish()
        self.assertEqual(code, 0)
        self.assertIn(b"bytes not kept ...]\n", out)
        self.assertTrue(out.endswith(b"END\n== job flood, run 1: completed ==\n"), out[-200:])
        self.assertLess(len(out), 5 * 1000 * 1000)
        self.assertLess(worker_peak, 100 * 1024 * 1024, "worker peak resident memory")
        self.assertLess(usage.ru_maxrss * 1024, 100 * 1024 * 1024, "follower peak resident memory")
        self.assertGreater(biggest[0], 0, "the live row was never seen")
        self.assertLessEqual(biggest[0], 2 * limit)
        files = sum(os.path.getsize(self.db_path + suffix) for suffix in ("", "-wal") if
                    os.path.exists(self.db_path + suffix))
        self.assertLess(files, 10 * 1000 * 1000, "queue.db and its WAL")
        sys.stderr.write("[follower %.1f MB, worker %.1f MB peak; live row at most %d KB; %d KB shown] "
                         % (usage.ru_maxrss / 1024, worker_peak / 1024 / 1024, biggest[0] // 1024,
                            len(out) // 1024))


def peak_rss(pid):
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    unittest.main()
