"""Shared test scaffolding: a temporary home per test, in-process and subprocess CLI runs,
and waiting on a condition with a deadline (never a bare sleep)."""

import atexit
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import queuectl  # noqa: E402
from qctl import config as qconfig  # noqa: E402
from qctl import home as qhome  # noqa: E402
from qctl import jobs  # noqa: E402
from qctl.db import open_store  # noqa: E402

SCRIPT = os.path.join(ROOT, "queuectl.py")

POSIX = os.name == "posix"
# Deadlines are generous: CI runs on a busy 2-core machine. A passing test never waits them out.
DEADLINE_S = float(os.environ.get("QUEUECTL_TEST_DEADLINE", "30"))


ENVIRON_AS_GIVEN = dict(os.environ)  # before cache_bytecode_outside_the_tree


def cache_bytecode_outside_the_tree():
    """With PYTHONDONTWRITEBYTECODE set (the test machine's environment sets it: no bytecode in
    the tree), every process a test starts (several hundred workers and commands) compiled qctl
    afresh: 20-35 ms of each start, on the critical path of most process tests. Those processes cache it in a
    folder of this run's instead (PYTHONPYCACHEPREFIX, removed at exit): still nothing in the
    tree, and each module is compiled once. A prefix set already is left as it is."""
    if not os.environ.get("PYTHONDONTWRITEBYTECODE") or os.environ.get("PYTHONPYCACHEPREFIX"):
        return
    # Under a prefix the stdlib's and site-packages' own __pycache__ go unread: what a process
    # imports is compiled once, into the prefix. Worth it for qctl; not for a build that imports
    # all of pip and setuptools once (test_packaging runs those with ENVIRON_AS_GIVEN).
    prefix = tempfile.mkdtemp(prefix="qctl-test-pycache-")
    atexit.register(shutil.rmtree, prefix, True)
    del os.environ["PYTHONDONTWRITEBYTECODE"]
    os.environ["PYTHONPYCACHEPREFIX"] = prefix


cache_bytecode_outside_the_tree()


SETTINGS = qconfig.defaults()  # what a fresh home's workers run with: backoff 2 ** k, lease 30 s


def retry_in(seconds):
    """Settings under which every failed run is due again after exactly `seconds` (the cap wins)."""
    return dict(SETTINGS, **{"backoff-base": 1e6, "backoff-max": seconds})


def new_job(job_id=None, *, now=0.0, cwd="/", default_max_retries=3, **fields):
    """A validated job, as `Store.enqueue` takes it; `command` defaults to `true`."""
    raw = dict(fields)
    raw.setdefault("command", "true")
    if job_id is not None:
        raw["id"] = job_id
    return jobs.validate_job(raw, now=now, cwd=cwd, default_max_retries=default_max_retries)


def add_job(store, job_id=None, *, now=0.0, **fields):
    """Enqueue one job (see `new_job`) at `now`; returns its id."""
    return store.enqueue([new_job(job_id, now=now, **fields)], now)[0]


def run_next(store, job_id, *, start, end, error=None, exit_code=1, output=b"", settings=None, worker="w-test"):
    """Claim the next due job at `start` (it must be `job_id`) and record its outcome at `end`:
    completed when `error` is None, else failed with `exit_code`; `output` is its stdout."""
    job = store.claim(worker, 30.0, now=start)
    if job is None or job["id"] != job_id:
        raise AssertionError("the next due job is %r, not %r" % (job and job["id"], job_id))
    if error is None:
        return store.complete(job, worker, end, stdout=output)
    return store.fail(job, worker, end, error=error, exit_code=exit_code, settings=settings or retry_in(0), stdout=output)


def wait_until(predicate, timeout=DEADLINE_S, interval=0.02, message="condition"):
    """Poll `predicate` until it returns a truthy value (returned) or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, message))
        time.sleep(interval)


# `python -c WITH_PERIODS PERIODS SCRIPT ARGS...`: qctl.worker's periods set (PERIODS, JSON), then
# SCRIPT run as __main__ with ARGS, as `python SCRIPT ARGS...` would run it.
WITH_PERIODS = ("import json, os, runpy, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[2]))); "
                "import qctl.worker as w; [setattr(w, k, v) for k, v in json.loads(sys.argv[1]).items()]; "
                "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')")


class Result:
    def __init__(self, code, stdout, stderr):
        self.code, self.stdout, self.stderr = code, stdout, stderr

    def __repr__(self):
        return "Result(code=%r, stdout=%r, stderr=%r)" % (self.code, self.stdout[-500:], self.stderr[-500:])


class HomeTestCase(unittest.TestCase):
    """Each test gets its own empty home directory, removed afterwards."""

    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="qctl-test-")
        self.addCleanup(tmp.cleanup)
        self.tmp = tmp.name
        self.home = os.path.join(self.tmp, "home")
        self.db_path = self.database()

    def database(self):
        """Where the test's queue is (a SQLite file; tests/pg.py's OnPostgres: a PostgreSQL URL)."""
        return qhome.ensure(self.home)

    def store(self, **kwargs):
        store = open_store(self.db_path, **kwargs)
        self.addCleanup(store.close)
        return store

    def cli(self, *argv, stdin=None):
        """Run queuectl in-process; returns Result(code, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        old_stdin = sys.stdin
        if stdin is not None:
            sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode() if isinstance(stdin, str) else stdin))
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = queuectl.main(["--home", self.home] + [str(a) for a in argv])
        finally:
            sys.stdin = old_stdin
        return Result(code, out.getvalue(), err.getvalue())

    def ok(self, *argv, **kwargs):
        result = self.cli(*argv, **kwargs)
        self.assertEqual(result.code, 0, result)
        return result

    def run_cli(self, *argv, stdin=None, timeout=60, env=None):
        """Run queuectl in a real subprocess."""
        full_env = dict(os.environ, QUEUECTL_HOME=self.home)
        full_env.pop("QUEUECTL_DEBUG", None)
        if env:
            full_env.update(env)
        proc = subprocess.run([sys.executable, SCRIPT] + [str(a) for a in argv], input=stdin,
                              capture_output=True, text=True, timeout=timeout, env=full_env)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def spawn_worker(self, *args, env=None, periods=None):
        """Start `queuectl worker start ARGS` as a real process in its own session (so kill -9 of
        its whole group is possible); its group is killed at cleanup if it is still alive.
        Its output goes to `proc.log`. `periods` ({"TICK_S": 0.1}) sets qctl.worker's periods in
        that process before queuectl.py runs, for a test that waits on one but is not about it."""
        full_env = dict(os.environ, QUEUECTL_HOME=self.home)
        if env:
            full_env.update(env)
        log = open(os.path.join(self.tmp, "worker-%d.log" % time.monotonic_ns()), "w+")
        self.addCleanup(log.close)
        argv = [SCRIPT, "worker", "start"] + [str(a) for a in args]
        if periods:
            import qctl.worker
            unknown = [name for name in periods if not hasattr(qctl.worker, name)]
            if unknown:
                raise ValueError("qctl.worker has no %s" % ", ".join(unknown))
            argv = ["-c", WITH_PERIODS, json.dumps(periods)] + argv
        proc = subprocess.Popen([sys.executable] + argv,
                                stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=POSIX)
        proc.log = log

        def reap():
            if proc.poll() is None:
                if POSIX:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            proc.wait()
        self.addCleanup(reap)
        return proc

    def job(self, job_id):
        with open_store(self.db_path) as store:
            return store.get(job_id)


def mount_tmpfs(test, size_kb):
    """A small tmpfs of `test`'s own, unmounted at cleanup (root on Linux only: it is how a test
    as root gets a read-only or full disk, since root ignores file modes); skips elsewhere."""
    if not (os.name == "posix" and hasattr(os, "geteuid") and os.geteuid() == 0 and sys.platform.startswith("linux")):
        test.skipTest("needs root on Linux to mount a small tmpfs (root ignores file modes)")
    point = os.path.join(test.tmp, "mnt")
    os.mkdir(point)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dk,mode=0700" % size_kb, "tmpfs", point],
                          capture_output=True)
    if proc.returncode != 0:
        test.skipTest("cannot mount a tmpfs here: %s" % proc.stderr.decode().strip())
    test.addCleanup(subprocess.run, ["umount", "-l", point], capture_output=True)
    return point


# ---------------------------------------------------------------- test times, for .ci/run

TEST_TIMES_ENV = "QUEUECTL_TEST_TIMES"


def record_test_times(path):
    """Make every test append "seconds<TAB>test id" to `path` as it ends (setUp and cleanups included).

    `.ci/run` sets QUEUECTL_TEST_TIMES and prints the slowest. Python 3.12's
    `unittest --durations` does the same, but CI may run an older Python. This
    patches unittest.TestCase itself, once, and unittest imports every test
    module before it runs any test: so tests in modules that never import this
    one are timed too, as long as one module does.
    """
    original = unittest.TestCase.run
    if getattr(original, "queuectl_timed", False):
        return

    def run(self, result=None):
        started = time.perf_counter()
        try:
            return original(self, result)
        finally:
            took = time.perf_counter() - started
            try:
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write("%.3f\t%s\n" % (took, self.id()))
            except OSError:
                pass  # timing is a report, never a reason for a test to fail
    run.queuectl_timed = True
    unittest.TestCase.run = run


if os.environ.get(TEST_TIMES_ENV):
    record_test_times(os.environ[TEST_TIMES_ENV])
