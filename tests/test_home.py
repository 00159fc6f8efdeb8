"""The home: private files whatever the umask, every command refusing a shared home or
database, the stopfile's failure modes, and host identity (which workers' pids we may
judge), with a worker in a real PID namespace."""

import functools
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
import unittest
from unittest import mock

from tests.base import SCRIPT, HomeTestCase, wait_until
from qctl import config as qconfig
from qctl import home as qhome
from qctl import jobs
from qctl.db import SCHEMA_V1, SCHEMA_VERSION, Store
from qctl.errors import QueueError, StoreError
from qctl.worker import Worker

POSIX = os.name == "posix"
ROOT_USER = POSIX and os.geteuid() == 0
posix_only = unittest.skipUnless(POSIX, "POSIX file modes")


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# ---------------------------------------------------------------- private files

@posix_only
class PrivateFilesTest(HomeTestCase):
    def with_umask(self, umask):
        old = os.umask(umask)
        self.addCleanup(os.umask, old)

    def test_every_folder_and_file_is_private_whatever_the_umask(self):
        # 000: makedirs' parents were 0777, the stopfile and worker.log 0666.
        # 277: masks the owner's own write bit; modes must still be 0700/0600.
        existing = os.path.join(self.tmp, "existing")
        os.mkdir(existing)
        os.chmod(existing, 0o755)
        for umask in (0o000, 0o277):
            with self.subTest(umask=oct(umask)):
                self.with_umask(umask)
                top = os.path.join(existing, "fresh-%o" % umask)
                home = os.path.join(top, "a", "b", "home")
                self.assertEqual(self.cli("--home", home, "enqueue", "--command", "true").code, 0)
                self.assertEqual(self.cli("--home", home, "worker", "stop").code, 0)
                result = self.cli("--home", home, "worker", "start", "--detach", "--burst")
                self.assertEqual(result.code, 0, result)
                db = os.path.join(home, qhome.DB_NAME)
                with Store(db) as store:  # the detached worker drains the queue and deregisters
                    wait_until(lambda: store.counts()[jobs.COMPLETED] == 1 and not store.live_workers(time.time()),
                               message="the detached worker to finish")
                    for suffix in ("-wal", "-shm"):  # they exist while a connection is open
                        self.assertEqual(mode(db + suffix), 0o600, suffix)
                for folder in (top, os.path.dirname(os.path.dirname(home)), os.path.dirname(home), home):
                    self.assertEqual(mode(folder), 0o700, folder)
                for name in (qhome.DB_NAME, qhome.STOPFILE_NAME, qhome.LOG_NAME):
                    self.assertEqual(mode(os.path.join(home, name)), 0o600, name)
                self.assertEqual([n for n in os.listdir(home) if n.endswith(".tmp")], [])
        self.assertEqual(mode(existing), 0o755, "a folder queuectl did not create keeps its mode")


# ---------------------------------------------------------------- refusing a shared home

OTHER_UID = 65534  # nobody

# Every kind of command: each must refuse before it reads or writes anything.
COMMANDS = (("enqueue", "--command", "true", "--env", "TOKEN=s3cret-token"), ("list",), ("status", "--json"),
            ("show", "x"), ("logs", "x"), ("wait", "x", "--timeout", "0"), ("delete", "x"),
            ("purge", "--state", "completed"), ("dlq", "list"), ("dlq", "retry", "--all"),
            ("config", "get"), ("config", "set", "max-retries", "7"), ("config", "list"), ("stats",),
            ("worker", "list"), ("worker", "stop"))


@posix_only
class SharedHomeTest(HomeTestCase):
    def setUp(self):
        super().setUp()
        self.ok("enqueue", "--id", "x", "--command", "true")

    def assert_refused(self, result, *words):
        self.assertEqual(result.code, 1, result)
        self.assertEqual(result.stdout, "", result)
        self.assertEqual(len(result.stderr.splitlines()), 1, result)
        for word in words:
            self.assertIn(word, result.stderr)

    def assert_unchanged(self):
        with Store(self.db_path) as store:
            self.assertEqual([(j["id"], j["state"]) for j in store.list_jobs()], [("x", jobs.PENDING)])
            self.assertEqual(store.config()["max-retries"], qconfig.defaults()["max-retries"])
        self.assertFalse(os.path.exists(qhome.stopfile_path(self.home)), "a refused worker stop wrote the stopfile")

    def test_every_command_refuses_a_home_or_database_others_can_write(self):
        for path, bad in ((self.home, 0o770), (self.home, 0o707), (self.db_path, 0o660), (self.db_path, 0o606)):
            good = mode(path)
            os.chmod(path, bad)
            try:
                for argv in COMMANDS:
                    with self.subTest(path=os.path.basename(path), mode=oct(bad), command=" ".join(argv[:2])):
                        self.assert_refused(self.cli(*argv), "chmod go-w", "--allow-shared-home")
                self.assertEqual(self.cli("--allow-shared-home", "list").code, 0)
            finally:
                os.chmod(path, good)
            self.assert_unchanged()

    def test_the_worker_refuses_too_and_both_spellings_of_the_option_let_it_serve(self):
        os.chmod(self.home, 0o770)
        self.addCleanup(os.chmod, self.home, 0o700)
        with self.assertRaisesRegex(QueueError, "writable by group"):
            Worker(self.home, burst=True)
        Worker(self.home, threads=1, burst=True, allow_shared_home=True).run()
        self.assertEqual(self.job("x")["state"], jobs.COMPLETED)
        self.ok("--allow-shared-home", "enqueue", "--id", "y", "--command", "true")
        for argv in (["--allow-shared-home", "worker", "start", "--burst"],
                     ["worker", "start", "--burst", "--allow-shared-home"]):
            with self.subTest(argv=argv):
                self.assertEqual(self.run_cli(*argv).code, 0)

    def test_the_dashboard_refuses_a_shared_home(self):
        os.chmod(self.db_path, 0o666)
        self.addCleanup(os.chmod, self.db_path, 0o600)
        result = self.run_cli("dashboard", "--port", "0", timeout=20)  # were it to serve, it would never return
        self.assert_refused(result, "queue.db is writable by group and others")

    @unittest.skipUnless(ROOT_USER, "only root can give a file to another user")
    def test_a_database_linked_to_another_users_queue_is_refused_and_gets_no_secret(self):
        other = os.path.join(self.tmp, "other")
        target = qhome.ensure(other)
        Store(target).close()
        for path in (other, target):
            os.chown(path, OTHER_UID, -1)
        os.remove(self.db_path)
        os.symlink(target, self.db_path)
        for argv in COMMANDS:
            with self.subTest(command=" ".join(argv[:2])):
                self.assert_refused(self.cli(*argv), "queue.db (a link to %s) belongs to another user" % target)
        for name in os.listdir(other):
            with open(os.path.join(other, name), "rb") as fh:
                self.assertFalse(b"s3cret-token" in fh.read(), "the secret reached %s" % name)
        with Store(target) as store:
            self.assertEqual(store.list_jobs(), [])
        self.assertEqual(self.cli("--allow-shared-home", "list").code, 0)

    @unittest.skipUnless(ROOT_USER, "only root can give a file to another user")
    def test_a_home_owned_by_another_user_is_refused_before_anything_is_created(self):
        home = os.path.join(self.tmp, "theirs")
        os.mkdir(home, 0o700)
        os.chown(home, OTHER_UID, -1)
        result = self.cli("--home", home, "status")
        self.assert_refused(result, "belongs to another user (uid %d)" % OTHER_UID)
        self.assertEqual(os.listdir(home), [])

    def test_a_dangling_database_link_is_refused_and_its_target_not_created(self):
        missing = os.path.join(self.tmp, "elsewhere", "queue.db")
        os.remove(self.db_path)
        os.symlink(missing, self.db_path)
        self.assert_refused(self.cli("status"), "which does not exist")
        self.assertFalse(os.path.exists(missing))


# ---------------------------------------------------------------- the stopfile

class StopfileTest(HomeTestCase):
    def temp_files(self):
        return [n for n in os.listdir(self.home) if n.endswith(".tmp")]

    def test_a_stopfile_that_is_a_directory_gives_one_line_and_leaves_no_temp_file(self):
        os.mkdir(qhome.stopfile_path(self.home))
        result = self.cli("worker", "stop")
        self.assertEqual(result.code, 1, result)
        self.assertEqual(result.stderr.splitlines(),
                         ["queuectl: error: cannot write the stopfile %s: it is a directory (remove it, then stop "
                          "the workers again)" % qhome.stopfile_path(self.home)])
        self.assertEqual(self.temp_files(), [])

    def test_any_failed_write_removes_its_temp_file(self):
        with mock.patch("os.replace", side_effect=OSError(28, "No space left on device")):
            with self.assertRaisesRegex(StoreError, "cannot write the stopfile .*: No space left on device"):
                qhome.request_stop(self.home)
        self.assertEqual(self.temp_files(), [])
        self.assertFalse(os.path.exists(qhome.stopfile_path(self.home)))
        self.assertEqual(qhome.request_stop(self.home), 1)  # and it works once the fault is gone


# ---------------------------------------------------------------- host identity

LINUX = sys.platform.startswith("linux")


def dead_pid():
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


@functools.lru_cache(maxsize=None)
def unshare_argv():
    """`unshare` making a PID namespace (with its own /proc) whose processes die with it, or None."""
    if not (LINUX and ROOT_USER):
        return None
    argv = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
    try:
        if subprocess.run(argv + ["true"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=30).returncode == 0:
            return tuple(argv)
    except (OSError, subprocess.TimeoutExpired):
        pass
    return None


class HostKeyTest(HomeTestCase):
    def test_the_key_is_stable_within_a_process_and_across_processes(self):
        key = qhome.host_key()
        self.assertEqual(qhome.host_key(), key)
        if LINUX:
            self.assertIsNotNone(key, "Linux has a boot id and PID namespaces")
        child = subprocess.run([sys.executable, "-c", "from qctl import home; print(home.host_key())"],
                               cwd=os.path.dirname(SCRIPT), capture_output=True, text=True, timeout=60)
        self.assertEqual(child.stdout.strip(), str(key), child.stderr)

    @unittest.skipUnless(unshare_argv(), "needs root on Linux and unshare --pid --fork --mount-proc --kill-child")
    def test_the_key_differs_in_another_pid_namespace_on_the_same_boot(self):
        code = "from qctl import home; print(home.host_key()); print(home.host())"
        child = subprocess.run(list(unshare_argv()) + [sys.executable, "-c", code], cwd=os.path.dirname(SCRIPT),
                               capture_output=True, text=True, timeout=60)
        key, host = child.stdout.split()
        self.assertEqual(host, qhome.host(), "the namespace shares our hostname")
        self.assertNotEqual(key, qhome.host_key())
        self.assertEqual(key.split(":pidns:")[0], qhome.host_key().split(":pidns:")[0], "same boot")

    def test_a_pid_is_judged_only_under_our_own_key(self):
        gone = dead_pid()
        mine = qhome.host_key()
        self.assertTrue(qhome.worker_alive(mine, os.getpid()))
        self.assertTrue(qhome.worker_alive("linux:another-boot:pidns:4:1", gone), "another process table")
        self.assertTrue(qhome.worker_alive(None, gone), "no key (a worker from before schema 2): unsure")
        if mine is not None and POSIX:
            self.assertFalse(qhome.worker_alive(mine, gone))
        with mock.patch.object(qhome, "_host_key", (os.getpid(), None)):
            self.assertTrue(qhome.worker_alive(mine, gone), "we cannot tell our own key: unsure")

    def test_heartbeat_registers_the_key_and_workers_returns_it(self):
        with self.store() as store:
            store.heartbeat("w1", 30, pid=1, host="h", threads=1, started_at=100.0, host_key="k1", now=100.0)
            store.heartbeat("w2", 30, pid=2, host="h", threads=1, started_at=101.0, now=100.0)
            self.assertEqual([(w["id"], w["host"], w["host_key"]) for w in store.live_workers(101.0)],
                             [("w1", "h", "k1"), ("w2", "h", None)])

    def test_a_worker_registered_before_schema_2_is_judged_by_its_lease(self):
        path = os.path.join(self.tmp, "v1.db")
        con = sqlite3.connect(path)
        for statement in SCHEMA_V1:
            con.execute(statement)
        con.execute("PRAGMA user_version = 1")
        now = time.time()
        # Registered from this hostname, with a pid that is gone: once that meant dead.
        con.execute("INSERT INTO workers (id, pid, host, threads, started_at, heartbeat_at, lease_until) "
                    "VALUES ('old', ?, ?, 1, ?, ?, ?)", (dead_pid(), qhome.host(), now, now, now + 30))
        con.commit()
        con.close()
        with Store(path) as store:
            self.assertEqual(store._read("PRAGMA user_version")[0][0], SCHEMA_VERSION)
            self.assertEqual([(w["id"], w["host_key"]) for w in store.live_workers(now)],
                             [("old", None)])
            self.assertEqual([w["id"] for w in store.live_workers(now + 31)], [])


@unittest.skipUnless(unshare_argv(), "needs root on Linux and unshare --pid --fork --mount-proc --kill-child")
class PidNamespaceTest(HomeTestCase):
    """A host worker and a worker in its own PID namespace (a container sharing the
    hostname) serve one home. Neither may take the other's live pid for dead."""

    def hold_command(self, name):
        # Records its start, then runs until released (bounded, should the test fail).
        return ("echo %s >> %s; i=0; while [ ! -e %s ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done"
                % (name, self.starts, self.release))

    def free_pid(self):
        """A pid that no process of ours has, for the namespaced worker to take."""
        with open("/proc/sys/kernel/pid_max") as fh:
            pid = int(fh.read()) - 1000
        while qhome.pid_alive(pid):
            pid -= 1
        return pid

    def spawn_namespaced_worker(self):
        """`worker start` inside unshare; the shell (pid 1 there) gives the worker a pid unused here."""
        shell = '(echo $(($1 - 1)) > /proc/sys/kernel/ns_last_pid) 2>/dev/null; shift; "$@"; exit $?'
        log = open(os.path.join(self.tmp, "ns-worker.log"), "w+")
        self.addCleanup(log.close)
        proc = subprocess.Popen(list(unshare_argv()) + ["sh", "-c", shell, "sh", str(self.free_pid()), sys.executable,
                                                  SCRIPT, "worker", "start", "--count", "1"],
                                stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, QUEUECTL_HOME=self.home))
        proc.log = log

        def reap():
            if proc.poll() is None:
                proc.kill()  # --kill-child: everything in the namespace goes with it
            proc.wait()
        self.addCleanup(reap)
        return proc

    def processing_by(self, job_id):
        job = self.job(job_id)
        return job["state"] == jobs.PROCESSING and job["worker"]

    def test_workers_in_different_pid_namespaces_never_recover_each_others_live_jobs(self):
        self.starts = os.path.join(self.tmp, "starts")
        self.release = os.path.join(self.tmp, "release")
        self.addCleanup(lambda: open(self.release, "a").close())
        self.ok("enqueue", "--id", "host-job", "--command", self.hold_command("host-job"))
        host = self.spawn_worker("--count", 1)
        host_id = wait_until(lambda: self.processing_by("host-job"), message="the host worker to claim its job")

        # Its start-up recovery runs before it claims anything: with the host worker's pid
        # absent from its process table, that is where it used to take the host job.
        namespaced = self.spawn_namespaced_worker()
        with Store(self.db_path) as store:
            ns_worker = wait_until(lambda: [w for w in store.live_workers(time.time()) if w["id"] != host_id],
                                   message="the namespaced worker to register")[0]
        self.ok("enqueue", "--id", "ns-job", "--command", self.hold_command("ns-job"))
        self.assertEqual(wait_until(lambda: self.processing_by("ns-job"), message="the namespaced worker's claim"),
                         ns_worker["id"])

        # And a host worker's start-up recovery, where the namespaced worker's pid is not ours.
        Worker(self.home, threads=1, burst=True).run()

        for job_id, worker_id in (("host-job", host_id), ("ns-job", ns_worker["id"])):
            job = self.job(job_id)
            self.assertEqual((job["state"], job["attempts"], job["run"], job["worker"], job["last_error"]),
                             (jobs.PROCESSING, 1, 1, worker_id, None), job_id)
        listed = json.loads(self.ok("worker", "list", "--json").stdout)
        self.assertEqual(sorted((w["id"], w["running"]) for w in listed),
                         sorted([(host_id, ["host-job"]), (ns_worker["id"], ["ns-job"])]))
        self.assertEqual(json.loads(self.ok("status", "--json").stdout)["workers"]["processes"], 2)
        self.assertEqual(ns_worker["host"], qhome.host(), "the namespace shares our hostname")
        self.assertNotEqual(ns_worker["host_key"], qhome.host_key())
        self.assertFalse(qhome.pid_alive(ns_worker["pid"]), "its pid is not one of ours (ns_last_pid)")

        open(self.release, "w").close()
        wait_until(lambda: all(self.job(j)["state"] == jobs.COMPLETED for j in ("host-job", "ns-job")),
                   message="both jobs to complete")
        self.assertEqual(self.ok("worker", "stop", "--wait", "--timeout", "30").stdout.splitlines()[-1], "all stopped")
        self.assertEqual((host.wait(30), namespaced.wait(30)), (0, 0))
        with open(self.starts) as fh:
            self.assertEqual(sorted(fh.read().split()), ["host-job", "ns-job"], "each job started once")


if __name__ == "__main__":
    unittest.main()
