"""Waking idle workers (qctl/wake.py): a poke after a commit that makes work, the safety poll when
a poke cannot arrive, the wake files' permissions and their removal.

Real worker processes and real `queuectl` commands; a "worker" socket of the test's own stands in
for a worker only where counting the pokes a command sends is the point.
"""

import os
import signal
import socket
import stat
import time
import unittest

from qctl import Queue
from qctl import home as qhome
from qctl import wake
from qctl.worker import Worker
from tests.base import POSIX, HomeTestCase, wait_until

HAS_UNIX_DGRAM = hasattr(socket, "AF_UNIX") and POSIX
SLOW_POLL = "10"  # seconds: with no wake-up a job would wait up to this long


def sockets_in(home):
    try:
        return sorted(os.listdir(wake.directory(home)))
    except FileNotFoundError:
        return []


@unittest.skipUnless(HAS_UNIX_DGRAM, "no Unix datagram sockets here: workers poll (tested by test_worker)")
class WakeTestCase(HomeTestCase):
    def start_worker(self, *args, poll=SLOW_POLL, periods=None):
        """A real worker process, once it serves the home and listens on its wake socket."""
        self.ok("config", "set", "poll-interval", poll)
        proc = self.spawn_worker(*args, periods=periods)
        wait_until(lambda: self.live_workers() and sockets_in(self.home), message="the worker to listen")
        return proc

    def live_workers(self):
        with self.store() as store:
            return store.live_workers(time.time())

    def listener(self, name="test-listener"):
        """A socket in HOME/wake, as a worker's: counts the pokes that reach it."""
        folder = wake.directory(self.home)
        qhome.make_private_dirs(folder)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(os.path.join(folder, name))
        sock.setblocking(False)
        return sock

    def pokes(self, sock):
        count = 0
        while True:
            try:
                sock.recv(64)
            except BlockingIOError:
                return count
            count += 1

    def log_text(self, proc):
        proc.log.flush()
        proc.log.seek(0)
        return proc.log.read()

    def started_after(self, job_id):
        """Seconds from the job's enqueue (created_at, stamped as `enqueue` starts) to its claim."""
        job = wait_until(lambda: self.job(job_id)["started_at"] and self.job(job_id),
                         message="job %s to start" % job_id)
        return job["started_at"] - job["created_at"]


class PokeTest(WakeTestCase):
    def test_a_poke_starts_a_job_within_a_second_despite_a_slow_poll(self):
        self.start_worker("--count", "2")
        for n in range(3):  # by chance, with no poke, each would start within 1 s one time in 10
            result = self.run_cli("enqueue", "--id", "j%d" % n, "true")
            self.assertEqual(result.code, 0, result)
            self.assertLess(self.started_after("j%d" % n), 1.0)
            wait_until(lambda: self.job("j%d" % n)["state"] == "completed", message="j%d to complete" % n)

    def test_retry_edit_resume_and_the_python_api_wake_the_worker(self):
        self.start_worker()
        self.assertEqual(self.run_cli("enqueue", "--id", "a", "false", "--max-retries", "0").code, 0)
        wait_until(lambda: self.job("a")["state"] == "dead", message="a to die")
        self.assertEqual(self.run_cli("retry", "a").code, 0)
        wait_until(lambda: self.job("a")["attempts"] == 1 and self.job("a")["state"] == "dead",
                   timeout=3, message="the retried job to run again at once")

        self.ok("enqueue", "--id", "later", "--delay", "1h", "true")
        self.assertEqual(self.run_cli("edit", "later", "--delay", "0").code, 0)
        wait_until(lambda: self.job("later")["state"] == "completed", timeout=3, message="the edited job to run")

        self.ok("queue", "pause", "q")
        self.ok("enqueue", "--id", "paused", "--queue", "q", "true")
        self.assertEqual(self.run_cli("queue", "resume", "q").code, 0)
        wait_until(lambda: self.job("paused")["state"] == "completed", timeout=3, message="the resumed queue's job")

        job_id = Queue(self.home).enqueue("true")
        self.assertLess(self.started_after(job_id), 1.0)

    def test_worker_stop_and_a_signal_end_a_slow_poll_at_once(self):
        proc = self.start_worker()
        started = time.monotonic()
        self.assertEqual(self.run_cli("worker", "stop", "--wait", "--timeout", "5").code, 0)
        self.assertLess(time.monotonic() - started, 3.0)  # a poll-interval of 10 s, without the poke
        proc.wait(5)

        proc = self.start_worker()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(proc.returncode, 0, self.log_text(proc))

    def test_a_slot_freed_in_a_limited_queue_wakes_a_worker_of_another_process(self):
        self.ok("queue", "set", "q", "--concurrency", "1")
        go = os.path.join(self.tmp, "go")
        self.ok("enqueue", "--id", "first", "--queue", "q", "while [ ! -e %s ]; do sleep 0.02; done" % go)
        self.start_worker("--count", "1", "--queue", "q,other")
        wait_until(lambda: self.job("first")["state"] == "processing", message="first to start")
        self.spawn_worker("--count", "1", "--queue", "q")  # the only other worker of q
        wait_until(lambda: len(sockets_in(self.home)) == 2, message="the second worker to listen")
        self.ok("enqueue", "--id", "second", "--queue", "q", "true")  # q is full: it waits
        self.ok("enqueue", "--id", "other", "--queue", "other", "--priority", "5", "sleep 1")
        with open(go, "w"):
            pass
        # first's worker takes `other` next (it ranks higher) and frees q's slot: second can run only
        # on the other worker, which polls every 10 s: a poke must tell it.
        wait_until(lambda: self.job("second")["state"] == "completed", timeout=20, message="second")
        first, second = self.job("first"), self.job("second")
        self.assertNotEqual(second["worker"], first["worker"])
        self.assertLess(second["started_at"] - first["finished_at"], 1.0)

    def test_a_delayed_job_starts_on_time_despite_a_slow_poll(self):
        self.start_worker()
        # Its due time, not the poke of its enqueue (it is not due then) nor the 10 s poll, starts it.
        self.ok("enqueue", "--id", "soon", "--delay", "0.7", "true")
        job = wait_until(lambda: self.job("soon")["started_at"] and self.job("soon"), message="soon to start")
        self.assertLess(job["started_at"] - job["run_at"], 0.5)
        self.assertGreaterEqual(job["started_at"], job["run_at"])

    def test_one_poke_per_command_however_many_jobs(self):
        sock = self.listener()
        lines = "".join('{"command": "true"}\n' for _ in range(10000))
        result = self.run_cli("enqueue", "--file", "-", stdin=lines)
        self.assertEqual(result.code, 0, result)
        self.assertEqual(self.pokes(sock), 1)
        for argv in (("status",), ("list",), ("config", "set", "max-retries", "1"), ("cancel", "--all")):
            self.ok(*argv)
        self.assertEqual(self.pokes(sock), 0, "reads, config and cancel make no work: no poke")
        self.ok("retry", "--all", "--state", "cancelled")
        self.assertEqual(self.pokes(sock), 1)
        self.ok("worker", "stop")
        self.assertEqual(self.pokes(sock), 1, "worker stop pokes, so that workers read the stopfile now")

    def test_a_poke_never_fails_an_enqueue(self):
        folder = wake.directory(self.home)
        qhome.make_private_dirs(folder)
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        dead.bind(os.path.join(folder, "dead-worker"))
        dead.close()  # its file stays, bound to nobody: a worker killed with -9
        os.mkdir(os.path.join(folder, "a-folder"))
        with open(os.path.join(folder, "a-file"), "w"):
            pass
        full = self.listener("full-worker")
        full.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        for n in range(200):  # until its queue is full
            self.ok("enqueue", "--id", "j%d" % n, "true")
        self.assertNotIn("dead-worker", sockets_in(self.home), "the first poke removes a dead worker's socket")
        self.assertIn("full-worker", sockets_in(self.home))

        os.rmdir(os.path.join(folder, "a-folder"))
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)
        with open(folder, "w"):  # HOME/wake is not even a folder
            pass
        self.ok("enqueue", "--id", "still", "true")
        self.assertEqual(self.job("still")["state"], "pending")


class FallbackTest(WakeTestCase):
    def test_a_worker_whose_socket_was_deleted_still_runs_jobs(self):
        # With wake-ups, its safety poll looks every second (SAFETY_POLL_S): that it looks is under
        # test, not how often: every 0.2 s here.
        self.start_worker(poll="0.05", periods={"SAFETY_POLL_S": 0.2})
        (name,) = sockets_in(self.home)
        path = os.path.join(wake.directory(self.home), name)
        os.remove(path)
        self.ok("enqueue", "--id", "unheard", "true")  # nobody to poke
        wait_until(lambda: self.job("unheard")["state"] == "completed", message="the safety poll to find it")
        # ... and at that look it listens again
        wait_until(lambda: os.path.exists(path), message="the worker to bind its socket again")
        self.assertLess(self.started_after(self.run_and_id("heard")), 1.0)

    def run_and_id(self, job_id):
        result = self.run_cli("enqueue", "--id", job_id, "true")
        self.assertEqual(result.code, 0, result)
        return job_id

    def test_a_home_too_long_for_a_unix_socket_falls_back_to_polling(self):
        self.home = os.path.join(self.tmp, "d" * 60, "e" * 60, "home")  # > 108 bytes with wake/NAME
        self.db_path = qhome.ensure(self.home)
        self.ok("config", "set", "poll-interval", "0.05")
        proc = self.spawn_worker()
        wait_until(self.live_workers, message="the worker to start")
        self.assertEqual(sockets_in(self.home), [])
        self.ok("enqueue", "--id", "polled", "true")
        self.assertLess(self.started_after("polled"), 1.0)
        self.assertEqual(self.run_cli("worker", "stop", "--wait", "--timeout", "10").code, 0)
        proc.wait(10)
        self.assertIn("no wake-ups", self.log_text(proc))

    def test_a_waker_that_cannot_listen_still_rings(self):
        waker = wake.Waker(os.path.join(self.tmp, "x" * 120), "1-abcdef")
        self.addCleanup(waker.close)
        self.assertFalse(waker.listening)
        self.assertIn("cannot listen", waker.unavailable)
        self.assertFalse(waker.wait(0))
        waker.ring()
        self.assertTrue(waker.wait(5))
        self.assertFalse(waker.wait(0), "one ring, one wake-up")


class WakeFilesTest(WakeTestCase):
    def test_wake_folder_and_socket_are_private_whatever_the_umask(self):
        old = os.umask(0)
        try:
            proc = self.start_worker()
        finally:
            os.umask(old)
        folder = wake.directory(self.home)
        self.assertEqual(stat.S_IMODE(os.stat(folder).st_mode), 0o700)
        (name,) = sockets_in(self.home)
        info = os.stat(os.path.join(folder, name))
        self.assertTrue(stat.S_ISSOCK(info.st_mode))
        self.assertEqual(stat.S_IMODE(info.st_mode), 0o600)
        self.assertTrue(name.startswith("%d-" % proc.pid), name)

    def test_a_loose_wake_folder_is_made_private(self):
        folder = wake.directory(self.home)
        os.mkdir(folder)
        os.chmod(folder, 0o777)
        self.start_worker()
        self.assertEqual(stat.S_IMODE(os.stat(folder).st_mode), 0o700)

    def test_no_socket_is_left_after_a_worker_stops(self):
        proc = self.start_worker("--count", "2")
        self.assertEqual(self.run_cli("worker", "stop", "--wait", "--timeout", "10").code, 0)
        proc.wait(10)
        self.assertEqual(sockets_in(self.home), [])

        Worker(self.home, threads=1, burst=True).run()  # in-process, to its end
        self.assertEqual(sockets_in(self.home), [])

    def test_a_killed_workers_socket_is_removed_by_the_next_poke(self):
        proc = self.start_worker()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        self.assertEqual(len(sockets_in(self.home)), 1)
        self.ok("enqueue", "true")
        self.assertEqual(sockets_in(self.home), [])

    def test_a_poke_removes_only_sockets(self):
        folder = wake.directory(self.home)
        qhome.make_private_dirs(folder)
        keep = os.path.join(folder, "notes.txt")
        with open(keep, "w") as fh:
            fh.write("mine")
        self.ok("enqueue", "true")
        self.assertTrue(os.path.exists(keep))

    def test_a_symlinked_wake_folder_is_never_followed(self):
        victim = os.path.join(self.tmp, "victim")
        os.mkdir(victim)
        os.chmod(victim, 0o755)
        with open(os.path.join(victim, "notes.txt"), "w") as fh:
            fh.write("mine")
        os.symlink(victim, wake.directory(self.home))
        self.ok("enqueue", "--id", "a", "true")
        self.ok("config", "set", "poll-interval", "0.05")
        result = self.run_cli("worker", "start", "--burst")  # it polls instead, and still runs the job
        self.assertEqual(result.code, 0, result)
        self.assertEqual(self.job("a")["state"], "completed")
        self.assertEqual(os.listdir(victim), ["notes.txt"])
        self.assertEqual(stat.S_IMODE(os.stat(victim).st_mode), 0o755)


class StopLatencyTest(WakeTestCase):
    def test_a_drain_of_two_threads_ends_as_its_last_job_does(self):
        self.ok("config", "set", "poll-interval", SLOW_POLL)
        self.ok("enqueue", "--id", "a", "sleep 0.3")
        result = self.run_cli("worker", "start", "--drain", "--count", "2")
        self.assertEqual(result.code, 0, result)
        ended = time.time()
        self.assertLess(ended - self.job("a")["finished_at"], 3.0, "the drain waited for a poll")

    def test_a_second_ctrl_c_kills_at_once_despite_a_slow_poll(self):
        proc = self.start_worker()
        self.ok("enqueue", "--id", "long", "sleep 30")
        wait_until(lambda: self.job("long")["state"] == "processing", message="long to start")
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: "finishing running jobs" in self.log_text(proc), message="the first Ctrl-C")
        asked = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        self.assertLess(time.monotonic() - asked, 3.0)
        self.assertEqual(self.job("long")["state"], "pending")


if __name__ == "__main__":
    unittest.main()
