"""`logs ID --follow`: what a running command prints reaches the follower within a second,
through retries, with bounded memory and disk, and the follower exits with the job's outcome.

From the runner's tails (what another thread may read while a command runs) to real worker
processes and a real `queuectl logs --follow` subprocess."""

import random
import threading
import time
import unittest

from qctl.runner import Kept, RedactedTail, Tail, output_progress, run_command
from tests.base import HomeTestCase, add_job, retry_in, wait_until


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
            "echo one; sleep 0.3; echo two >&2; sleep 0.3", on_start=on_start)))
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


if __name__ == "__main__":
    unittest.main()
