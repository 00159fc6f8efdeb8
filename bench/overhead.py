"""Queue overhead: claim + complete through the Store's verbs with a no-op runner.

queuectl's side is the worker's job path without the process: `claim`, then
`finish_and_claim` (the last job's outcome and the next claim in one
transaction) until nothing is due, through qctl.db.Store's public verbs only.

The limit is SQLite itself: a bare cycle on a raw `sqlite3` connection, on the
same database (schema made by the Store), doing the same work per job in one
transaction: BEGIN IMMEDIATE, an UPDATE completing the previous job, an
UPDATE ... RETURNING claiming the next, COMMIT. Its SQL is this script's own,
written from the claim docs/architecture.md describes (one statement
over the claim index `jobs_ready`, in claim order); it is not read from
qctl/db.py, so if the store's statements change, this limit has to follow by
hand. Both run with the worker's settings (synchronous NORMAL, no
auto-checkpoint, a background thread calling `Store.housekeep()` every 0.5 s),
alternating within each run.

Then 4 threads share one database, in 1 process or 2, and each thread times
its verb calls: the time per job inside the Store (waiting for the write lock
plus the transaction). How that wait splits between the Store's process-wide
lock and SQLite's lock is not measured: that needs the Store's internals.

    python -m bench.overhead [--quick] [--runs N] [--jobs N]
"""

import json
import sqlite3
import subprocess
import sys
import threading
import time

from bench.common import (LEASE_S, ROOT, WORKER, Checkpointer, fresh_db, machine, median, options, store_cycle,
                          table, temp_home)

from qctl import db
from qctl import jobs
from qctl.db import Store

# The bare cycle's statements: this script's own SQL, doing what a claim and a complete must.
BARE_COLUMNS = "seq, id, command, attempts, runs, max_retries, timeout, cwd, env"
BARE_SELECT = ("SELECT seq FROM jobs INDEXED BY jobs_ready WHERE state IN ('pending', 'failed') AND waiting = 0 "
               "AND next_run_at <= ? ORDER BY priority DESC, next_run_at, seq LIMIT 1")
BARE_UPDATE = ("UPDATE jobs SET state = 'processing', attempts = attempts + 1, runs = runs + 1, worker = ?, "
               "lease_until = ?, started_at = ?, finished_at = NULL, updated_at = ? WHERE seq = ")
BARE_CLAIM = BARE_UPDATE + "(" + BARE_SELECT + ") RETURNING " + BARE_COLUMNS
BARE_COMPLETE = ("UPDATE jobs SET state = 'completed', exit_code = 0, last_error = NULL, finished_at = ?, "
                 "updated_at = ?, lease_until = NULL WHERE seq = ? AND state = 'processing' AND worker = ? "
                 "AND runs = ?")
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)


def bare_claim(con, now):
    params = (WORKER, now + LEASE_S, now, now)
    if HAS_RETURNING:
        return con.execute(BARE_CLAIM, params + (now,)).fetchone()
    found = con.execute(BARE_SELECT, (now,)).fetchone()  # no RETURNING before SQLite 3.35
    if found is None:
        return None
    con.execute(BARE_UPDATE + "?", params + found)
    return con.execute("SELECT " + BARE_COLUMNS + " FROM jobs WHERE seq = ?", found).fetchone()


def bare_cycle(path):
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    if not con.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'jobs_ready'").fetchone():
        raise SystemExit("the store's schema has no index jobs_ready: update this script's bare cycle")
    con.execute("PRAGMA busy_timeout = %d" % int(db.BUSY_TIMEOUT_S * 1000))
    con.execute("PRAGMA synchronous = NORMAL")
    con.execute("PRAGMA wal_autocheckpoint = 0")
    done, previous = 0, None
    try:
        while True:
            con.execute("BEGIN IMMEDIATE")
            now = time.time()
            if previous is not None:
                con.execute(BARE_COMPLETE, (now, now, previous[0], WORKER, previous[4]))
            previous = bare_claim(con, now)
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
        took = time.perf_counter() - started
    with Store(path) as store:
        completed = store.counts()[jobs.COMPLETED]
    if completed != done:
        raise SystemExit("%d jobs claimed but %d completed" % (done, completed))
    return done / took


# ---------------------------------------------------------------- contention (child processes)

def child(path, threads):
    """Run `threads` store cycles once the parent says go; print each thread's tally as JSON."""
    tallies = []
    go = threading.Event()

    def thread_main():
        tally = {"jobs": 0, "in_store": 0.0}
        tallies.append(tally)

        def on_verb(seconds):
            tally["in_store"] += seconds
        with Store(path, durable=False, autocheckpoint=False) as store:
            go.wait()
            tally["jobs"] = store_cycle(store, on_verb=on_verb)
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
    """Aggregate jobs/s, and µs per job spent inside Store verbs, of `processes` x `threads` store cycles."""
    path = fresh_db(tmp, count)
    with Checkpointer(path):
        procs = [subprocess.Popen([sys.executable, "-m", "bench.overhead", "--child", path, str(threads)],
                                  cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
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
    return done / took, sum(t["in_store"] for t in tallies) / done * 1e6


def main():
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
        return

    def extra(parser):
        parser.add_argument("--jobs", type=int, help="jobs per measurement (default 20000, quick 2000)")
    args = options(__doc__, runs=5, extra=extra)
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
          [["bare sqlite3, the same work in one transaction", "%.0f" % median(bare), "%.1f" % (1e6 / median(bare)),
            "1.00"],
           ["Store.claim / finish_and_claim", "%.0f" % median(ours), "%.1f" % (1e6 / median(ours)),
            "%.2f" % (median(ours) / median(bare))]])
    rows = []
    for (processes, threads), results in shapes.items():
        rows.append(["%d x %d" % (processes, threads), "%.0f" % median([r[0] for r in results]),
                     "%.1f" % median([r[1] for r in results])])
    table("contention: processes x threads, aggregate jobs/s, median of %d runs" % args.runs,
          ["shape", "jobs/s", "us/job inside Store verbs (lock wait + transaction)"], rows)


if __name__ == "__main__":
    main()
