"""Queue overhead: claim + complete through qctl/db.py with a no-op runner.

The limit is SQLite itself: a bare cycle on a raw connection with the same
schema and settings, issuing the same two statements in one transaction per
job (the complete of the previous job, then the claim of the next: the shape
`Store.claim(..., finish=...)` uses). Both run with the worker's settings
(synchronous NORMAL, no auto-checkpoint, a background thread checkpointing
every 0.5 s), alternating within each run.

Then 4 threads in 2 processes share one database, and the time each job
spends waiting is split into: the process-wide lock (threads of one process),
SQLite's write lock (BEGIN IMMEDIATE: the other process), and the
transaction itself.

    python bench/overhead.py [--quick] [--runs N] [--jobs N]
"""

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from bench.common import LEASE_S, WORKER, Checkpointer, fresh_db, machine, median, options, store_cycle, table, temp_home

from qctl import db
from qctl import jobs
from qctl.db import Store

# The same statements Store.claim and Store._complete issue, on a raw connection.
BARE_CLAIM = db._CLAIM_SQL + "(" + db._CLAIM_SELECT + ") RETURNING " + db.CLAIM_COLUMNS
BARE_COMPLETE = ("UPDATE jobs SET state = ?, exit_code = 0, last_error = NULL, finished_at = ?, updated_at = ?, "
                 "lease_until = NULL WHERE seq = ? AND state = ? AND worker = ? AND runs = ?")


def bare_cycle(path):
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA busy_timeout = %d" % int(db.BUSY_TIMEOUT_S * 1000))
    con.execute("PRAGMA synchronous = NORMAL")
    con.execute("PRAGMA wal_autocheckpoint = 0")
    done, previous = 0, None
    try:
        while True:
            con.execute("BEGIN IMMEDIATE")
            now = time.time()
            if previous is not None:
                con.execute(BARE_COMPLETE, (jobs.COMPLETED, now, now, previous[0], jobs.PROCESSING, WORKER,
                                            previous[4]))
            previous = con.execute(BARE_CLAIM, (WORKER, now + LEASE_S, now, now, now)).fetchone()
            con.execute("COMMIT")
            if previous is None:
                return done
            done += 1
    finally:
        con.close()


def timed(path, cycle_on_store):
    with Checkpointer(path):
        started = time.perf_counter()
        if cycle_on_store:
            with Store(path, durable=False, autocheckpoint=False) as store:
                done = store_cycle(store)
        else:
            done = bare_cycle(path)
        return done / (time.perf_counter() - started)


# ---------------------------------------------------------------- contention (child processes)

class TimedLock:
    """db._WRITE_LOCK with the time spent acquiring it added to a per-thread tally."""

    def __init__(self, tally):
        self.lock, self.tally = threading.Lock(), tally

    def __enter__(self):
        started = time.perf_counter()
        self.lock.acquire()
        self.tally()["process_lock"] += time.perf_counter() - started

    def __exit__(self, *exc):
        self.lock.release()


class TimedConnection:
    """A connection that adds the time BEGIN IMMEDIATE takes (waiting for SQLite's lock) to the tally."""

    def __init__(self, con, tally):
        self.con, self.tally = con, tally

    def execute(self, sql, *params):
        if sql != "BEGIN IMMEDIATE":
            return self.con.execute(sql, *params)
        started = time.perf_counter()
        try:
            return self.con.execute(sql)
        finally:
            self.tally()["sqlite_lock"] += time.perf_counter() - started

    def __getattr__(self, name):
        return getattr(self.con, name)


def child(path, threads):
    """Run `threads` store cycles once the parent says go; print their tallies as JSON."""
    local = threading.local()
    tallies = []

    def tally():
        return local.tally
    db._WRITE_LOCK = TimedLock(tally)

    def thread_main():
        local.tally = {"jobs": 0, "process_lock": 0.0, "sqlite_lock": 0.0, "busy": 0.0}
        tallies.append(local.tally)
        with Store(path, durable=False, autocheckpoint=False) as store:
            store.con = TimedConnection(store.con, tally)
            go.wait()
            started = time.perf_counter()
            local.tally["jobs"] = store_cycle(store)
            local.tally["busy"] = time.perf_counter() - started
    go = threading.Event()
    pool = [threading.Thread(target=thread_main) for _ in range(threads)]
    for thread in pool:
        thread.start()
    print("ready", flush=True)
    sys.stdin.readline()
    go.set()
    for thread in pool:
        thread.join()
    print(json.dumps(tallies), flush=True)


def contention(tmp, count, processes, threads):
    """Aggregate jobs/s and per-job waits of `processes` x `threads` store cycles on one database."""
    path = fresh_db(tmp, count)
    with Checkpointer(path):
        procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", path, str(threads)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for _ in range(processes)]
        for proc in procs:
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("a benchmark child failed to start")
        started = time.perf_counter()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        tallies = []
        for proc in procs:
            tallies += json.loads(proc.stdout.readline())
            proc.wait()
        took = time.perf_counter() - started
    done = sum(t["jobs"] for t in tallies)
    if done != count:
        raise SystemExit("%d of %d jobs were claimed" % (done, count))

    def per_job_us(key):
        return sum(t[key] for t in tallies) / done * 1e6
    waits = {k: per_job_us(k) for k in ("process_lock", "sqlite_lock", "busy")}
    waits["in_transaction"] = waits.pop("busy") - waits["process_lock"] - waits["sqlite_lock"]
    return done / took, waits


def main():
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
        return

    def extra(parser):
        parser.add_argument("--jobs", type=int, help="jobs per measurement (default 20000, quick 2000)")
    args = options(__doc__, runs=5, extra=extra)
    if not db.HAS_RETURNING:
        raise SystemExit("the bare cycle mirrors the claim's UPDATE ... RETURNING: it needs SQLite 3.35 or newer")
    count = args.jobs or (2000 if args.quick else 20000)
    bare, ours = [], []
    shapes = {(1, 1): [], (1, 4): [], (2, 2): []}
    for run in range(args.runs):
        for on_store in ((False, True) if run % 2 == 0 else (True, False)):
            with temp_home() as tmp:
                (ours if on_store else bare).append(timed(fresh_db(tmp, count), on_store))
        for shape, results in shapes.items():
            with temp_home() as tmp:
                results.append(contention(tmp, count, *shape))
    print(machine())
    table("claim + complete, one process, one thread: %d jobs, median of %d runs" % (count, args.runs),
          ["cycle", "jobs/s", "us/job", "x bare"],
          [["bare sqlite3, same statements", "%.0f" % median(bare), "%.1f" % (1e6 / median(bare)), "1.00"],
           ["qctl.db Store.claim(finish=)", "%.0f" % median(ours), "%.1f" % (1e6 / median(ours)),
            "%.2f" % (median(ours) / median(bare))]])
    rows = []
    for (processes, threads), results in shapes.items():
        rate = median([r[0] for r in results])
        waits = {k: median([r[1][k] for r in results]) for k in results[0][1]}
        rows.append(["%d x %d" % (processes, threads), "%.0f" % rate, "%.1f" % waits["process_lock"],
                     "%.1f" % waits["sqlite_lock"], "%.1f" % waits["in_transaction"]])
    table("contention: processes x threads, aggregate jobs/s and time per job (us), median of %d runs" % args.runs,
          ["shape", "jobs/s", "wait process lock", "wait sqlite lock", "transaction + python"], rows)


if __name__ == "__main__":
    main()
