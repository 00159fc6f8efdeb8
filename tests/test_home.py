"""The home: every folder and file queuectl makes is private whatever the umask."""

import os
import stat
import time
import unittest

from tests.base import HomeTestCase, wait_until
from qctl import home as qhome
from qctl import jobs
from qctl.db import Store

POSIX = os.name == "posix"
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


if __name__ == "__main__":
    unittest.main()
