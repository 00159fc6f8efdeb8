"""The home: private files whatever the umask, every command refusing a shared home or
database, and the stopfile's failure modes."""

import os
import stat
import time
import unittest
from unittest import mock

from tests.base import HomeTestCase, wait_until
from qctl import home as qhome
from qctl import jobs
from qctl.db import Store
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
                    wait_until(lambda: store.counts()[jobs.COMPLETED] == 1 and not store.workers(time.time()),
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
            self.assertEqual(store.config()["max-retries"], jobs.config_defaults()["max-retries"])
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


if __name__ == "__main__":
    unittest.main()
