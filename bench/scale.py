"""Scale: `status`, `list` and the claim rate on a database of 1,000,000 jobs.

The database is built through qctl.db itself, as a worker would leave it:
1,000,000 jobs enqueued, the first 900,000 claimed and completed (no-op
runner), 100,000 left pending. Building it takes a minute or two.

`status` and `list --state pending --limit 20` are timed in-process through
`queuectl.main()` (interpreter start-up excluded; `bench/startup.py` measures
that). The claim rate (claim + complete, no-op runner, one thread) on the big
database is compared with the rate on a database holding only the jobs being
claimed, alternating the two. The limit each is measured against: the
targets of issue 5 (status < 200 ms, list < 100 ms, claim rate within 20%).

    python -m bench.scale [--quick] [--runs N] [--jobs N]
"""

import contextlib
import io
import os
import time

from bench.common import Checkpointer, enqueue_true, fresh_db, home_in, machine, median, options, store_cycle, table, temp_home

import queuectl
from qctl import home as qhome
from qctl.db import Store

CLAIMED_PER_RUN = 10000


def cli_ms(home, *argv):
    """Milliseconds queuectl.main() takes to run one command (its output is discarded)."""
    with contextlib.redirect_stdout(io.StringIO()):
        started = time.perf_counter()
        code = queuectl.main(["--home", home] + list(argv))
        took = time.perf_counter() - started
    if code != 0:
        raise SystemExit("queuectl %s failed with exit code %d" % (" ".join(argv), code))
    return took * 1000


def claim_rate(path, count):
    with Checkpointer(path), Store(path, durable=False, autocheckpoint=False) as store:
        started = time.perf_counter()
        done = store_cycle(store, count)
        took = time.perf_counter() - started
    if done != count:
        raise SystemExit("only %d of %d jobs could be claimed" % (done, count))
    return done / took


def main():
    def extra(parser):
        parser.add_argument("--jobs", type=int, help="jobs in the big database (default 1000000, quick 20000)")
    args = options(__doc__, runs=5, quick_runs=3, extra=extra)
    total = args.jobs or (20000 if args.quick else 1000000)
    pending = total // 10
    claimed = min(CLAIMED_PER_RUN, pending // (args.runs + 1))
    with temp_home() as tmp:
        home = home_in(tmp)
        path = qhome.ensure(home)
        started = time.perf_counter()
        enqueue_true(path, total)
        with Checkpointer(path), Store(path, durable=False, autocheckpoint=False) as store:
            store_cycle(store, total - pending)
        with Store(path) as store:
            store.housekeep()
            counts = store.counts()
        built = time.perf_counter() - started
        size = sum(os.path.getsize(path + suffix) for suffix in ("", "-wal") if os.path.exists(path + suffix))
        status, listing, big, empty = [], [], [], []
        cli_ms(home, "status")  # the first call pays for imports done lazily
        for run in range(args.runs):
            status.append(cli_ms(home, "status"))
            listing.append(cli_ms(home, "list", "--state", "pending", "--limit", "20"))
            for on_big in ((True, False) if run % 2 == 0 else (False, True)):
                if on_big:
                    big.append(claim_rate(path, claimed))
                else:
                    with temp_home() as small:
                        empty.append(claim_rate(fresh_db(small, claimed), claimed))
    print(machine())
    print("database: %d jobs (%d completed, %d pending), built in %.0fs, %.0f bytes per job"
          % (total, counts["completed"], counts["pending"], built, size / total))
    table("%d-job database, median of %d runs" % (total, args.runs), ["measure", "value", "target"],
          [["status (in-process)", "%.1f ms" % median(status), "< 200 ms"],
           ["list --state pending --limit 20 (in-process)", "%.1f ms" % median(listing), "< 100 ms"],
           ["claim + complete, empty database", "%.0f jobs/s" % median(empty), ""],
           ["claim + complete, big database", "%.0f jobs/s" % median(big), ""],
           ["big / empty", "%.2f" % (median(big) / median(empty)), ">= 0.80"]])


if __name__ == "__main__":
    main()
