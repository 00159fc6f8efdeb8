"""Helpers shared by the benchmark scripts: options, temporary homes, medians, tables.

Benchmarks print figures; they are not tests. Every script takes --quick (a
run of seconds, to smoke-test it) and --runs N (medians are over N runs).
Run them from the repo root as modules (`python -m bench.NAME`), so that
`qctl` and `bench` import as they are, without touching sys.path. They use
the store only through its public verbs (listed in qctl/db.py's docstring).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from qctl import config as qconfig
from qctl import home as qhome
from qctl import jobs
from qctl.db import Store
from qctl.worker import WAL_TICK_S  # how often a worker looks after its WAL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "queuectl.py")

WORKER = "bench:1:000000"
LEASE_S = 30.0
ENQUEUE_BATCH = 100000
SETTINGS = dict(qconfig.defaults(), **{"lease-seconds": LEASE_S})


def options(description, *, runs, quick_runs=1, extra=None):
    """Parse the common options (--quick, --runs); `extra(parser)` may add more."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run, to check the script works")
    parser.add_argument("--runs", type=int, help="repetitions; figures are medians (default %d, quick %d)"
                        % (runs, quick_runs))
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    args.runs_given = args.runs is not None
    if args.runs is None:
        args.runs = quick_runs if args.quick else runs
    return args


def temp_home():
    """A TemporaryDirectory whose name is a fresh queuectl home (created 0700 by queuectl itself)."""
    return tempfile.TemporaryDirectory(prefix="qctl-bench-")


def home_in(tmp):
    return os.path.join(tmp, "home")


# Set by some CI and sandbox shells, not by a user's: without bytecode caching
# every start compiles qctl/ again, and unbuffered stdout turns each worker log
# line into extra write calls. queuectl is measured as a user runs it.
UNUSUAL_ENV = ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "QUEUECTL_DEBUG")


def cli_env(home):
    env = dict(os.environ, QUEUECTL_HOME=home)
    for name in UNUSUAL_ENV:
        env.pop(name, None)
    return env


def run_cli(home, *argv, check=True, **kwargs):
    """Run `python queuectl.py ARGV` against `home`; returns (seconds of wall time, CompletedProcess)."""
    kwargs.setdefault("stdout", subprocess.DEVNULL)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, SCRIPT] + list(argv), env=cli_env(home), **kwargs)
    took = time.perf_counter() - started
    if check and proc.returncode != 0:
        raise SystemExit("queuectl %s failed with exit code %d" % (" ".join(argv), proc.returncode))
    return took, proc


def median(values):
    return statistics.median(values)


def percentile(values, p):
    """The p-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    rank = max(1, int(round(p / 100.0 * len(ordered) + 0.5 - 1e-9)))
    return ordered[min(rank, len(ordered)) - 1]


def table(title, headers, rows):
    """Print a small aligned table under a title line."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print(title)
    for row in [list(headers)] + cells:
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    print()


def machine():
    """One line saying where and under what load the figures were taken."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    import sqlite3
    return "python %s, sqlite %s, %d cpus, load average %.2f" % (
        sys.version.split()[0], sqlite3.sqlite_version, os.cpu_count() or 0, load)


# ---------------------------------------------------------------- the job path without processes

def fresh_db(tmp, count, command="true"):
    """A new database in `tmp` holding `count` pending jobs of `command`; returns its path."""
    path = qhome.ensure(home_in(tmp))
    enqueue_true(path, count, command)
    return path


def enqueue_true(path, count, command="true"):
    now = time.time()
    with Store(path) as store:
        for first in range(0, count, ENQUEUE_BATCH):
            store.enqueue([jobs.validate_job({"command": command}, now=now, default_max_retries=0)
                           for _ in range(min(ENQUEUE_BATCH, count - first))], now)


class Checkpointer:
    """The worker's housekeeping thread, reduced to its WAL upkeep: `Store.housekeep()` every 0.5 s,
    off the job path."""

    def __init__(self, path):
        self.store = Store(path, durable=False, autocheckpoint=False)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.done.is_set():  # as a worker's housekeeping thread keeps the WAL small
            self.store.await_upkeep(WAL_TICK_S)
            self.store.housekeep()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.store.close()


def store_cycle(store, limit=None, on_verb=None):
    """Claim and complete jobs through the Store as a worker thread does, with a no-op runner,
    until none is due (or `limit` are done); returns how many.

    As the worker does: the first job by `claim`, then each job's outcome and the
    next claim in one `finish_and_claim`, the last outcome by `record`.
    `on_verb(seconds)`, if given, is told how long each of those calls took.
    """
    done, finish = 0, None
    while limit is None or done < limit:
        started = time.perf_counter() if on_verb is not None else 0.0
        if finish is None:
            job = store.claim(WORKER, LEASE_S)
        else:
            job = store.finish_and_claim(finish, SETTINGS)[1]
        if on_verb is not None:
            on_verb(time.perf_counter() - started)
        finish = None
        if job is None:
            break
        done += 1
        finish = jobs.Outcome(jobs.COMPLETE, job, WORKER, time.time())
    if finish is not None:
        store.record(finish, SETTINGS)
    return done
