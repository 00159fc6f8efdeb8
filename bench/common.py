"""Helpers shared by the benchmark scripts: options, temporary homes, medians, tables.

Benchmarks print figures; they are not tests. Every script takes --quick (a
run of seconds, to smoke-test it) and --runs N (medians are over N runs).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SCRIPT = os.path.join(ROOT, "queuectl.py")


def options(description, *, runs, quick_runs=1, extra=None):
    """Parse the common options (--quick, --runs); `extra(parser)` may add more."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short run, to check the script works")
    parser.add_argument("--runs", type=int, help="repetitions; figures are medians (default %d, quick %d)"
                        % (runs, quick_runs))
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if args.runs is None:
        args.runs = quick_runs if args.quick else runs
    return args


def temp_home():
    """A TemporaryDirectory whose name is a fresh queuectl home (created 0700 by queuectl itself)."""
    return tempfile.TemporaryDirectory(prefix="qctl-bench-")


def home_in(tmp):
    return os.path.join(tmp, "home")


def cli_env(home):
    env = dict(os.environ, QUEUECTL_HOME=home)
    env.pop("QUEUECTL_DEBUG", None)
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
