"""queuectl on PostgreSQL, in one run (a server of its own, started as tests/pg.py starts one):

- claim + complete through PgStore's verbs against a bare psycopg loop doing the same two
  statements (the claim's CTE with FOR UPDATE SKIP LOCKED, then the fenced UPDATE), 1 thread;
- enqueue-to-start latency with an idle worker, woken by LISTEN/NOTIFY (p50, p99);
- the drain rate of 4 worker processes x 2 threads of `true` jobs on PostgreSQL against the same
  on SQLite.

    python -m bench.pg [--quick] [--runs N] [--jobs N]

Needs psycopg 3 and PostgreSQL's initdb/pg_ctl (or QUEUECTL_TEST_PG, a URL); says so otherwise.
"""

import os
import subprocess
import sys
import time
import unittest

from bench.common import (ENQUEUE_BATCH, SCRIPT, cli_env, home_in, machine, median, options, percentile, store_cycle,
                          table, temp_home)
from qctl import jobs
from qctl.db import Store, open_store


def server():
    """tests/pg.py, with its server started (it is stopped when this process exits)."""
    from tests import pg
    try:
        pg.server()
    except unittest.SkipTest as exc:
        raise SystemExit("bench.pg: %s" % exc) from None
    return pg


def fill(store, count):
    now = store.now()
    for first in range(0, count, ENQUEUE_BATCH):
        store.enqueue([jobs.validate_job({"command": "true"}, now=now, default_max_retries=0)
                       for _ in range(min(ENQUEUE_BATCH, count - first))], now)


def bare_cycle(conninfo, schema, count):
    """Seconds for a bare psycopg loop to claim and complete `count` jobs: the same two statements
    (the claim, then the fenced completion), one transaction each, as queuectl's worker does them."""
    import psycopg
    from psycopg.sql import SQL, Identifier
    with psycopg.connect(conninfo, autocommit=False) as con:
        con.execute(SQL("SET search_path TO {}").format(Identifier(schema)))
        con.execute("SET synchronous_commit TO off")
        con.commit()
        started = time.perf_counter()
        for _ in range(count):
            now = time.time()
            row = con.execute(
                "WITH next AS (SELECT seq FROM jobs WHERE state IN ('pending', 'failed') AND waiting = 0 "
                "AND next_run_at <= %s ORDER BY priority DESC, next_run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) "
                "UPDATE jobs SET state = 'processing', attempts = attempts + 1, runs = runs + 1, worker = %s, "
                "lease_until = %s, started_at = %s, updated_at = %s FROM next WHERE jobs.seq = next.seq "
                "RETURNING jobs.seq, runs", (now, "bare", now + 30, now, now)).fetchone()
            con.execute("UPDATE jobs SET state = 'completed', exit_code = 0, finished_at = %s, updated_at = %s, "
                        "lease_until = NULL WHERE seq = %s AND state = 'processing' AND worker = %s AND runs = %s",
                        (now, now, row[0], "bare", row[1]))
            con.commit()
        return time.perf_counter() - started


def cycle_figures(pg, count, runs):
    from qctl.pgstore import parse_url
    ours, bare = [], []
    for _ in range(runs):
        url = pg.url()
        try:
            with open_store(url) as store:
                fill(store, 2 * count)
            conninfo, schema, _ = parse_url(url)
            bare.append(count / bare_cycle(conninfo, schema, count))
            with open_store(url, durable=False) as store:
                started = time.perf_counter()
                done = store_cycle(store, limit=count)
                ours.append(done / (time.perf_counter() - started))
        finally:
            pg.drop(url)
    return median(ours), median(bare)


def latency_figures(pg, samples):
    url = pg.url()
    waits = []
    with temp_home() as tmp:
        env = dict(cli_env(home_in(tmp)), QUEUECTL_DB=url)
        worker = subprocess.Popen([sys.executable, SCRIPT, "worker", "start"], env=env, stdout=subprocess.DEVNULL)
        try:
            with open_store(url) as store:
                store.set_config("poll-interval", 10.0)  # read by the worker at its next reload: NOTIFY, not polling
                deadline = time.monotonic() + 30
                while not store.live_workers(store.now()) and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(1.0)  # its config reload (every 0.5 s) has seen poll-interval
                for i in range(samples):
                    job = jobs.validate_job({"id": "l%d" % i, "command": "true"}, now=store.now(), default_max_retries=0)
                    enqueued = store.now()
                    store.enqueue([job], enqueued)
                    while True:
                        row = store.get("l%d" % i)
                        if row["started_at"] is not None:
                            waits.append((row["started_at"] - enqueued) * 1000)
                            break
                        time.sleep(0.0005)
                    time.sleep(0.05)  # idle again
        finally:
            worker.terminate()
            worker.wait()
            pg.drop(url)
    return percentile(waits, 50), percentile(waits, 99)


def drain(count, url=None):
    """Seconds for 4 worker processes x 2 threads (`--burst`) to drain `count` `true` jobs, on
    PostgreSQL at `url` or on a SQLite home."""
    with temp_home() as tmp:
        env = cli_env(home_in(tmp))
        if url:
            env["QUEUECTL_DB"] = url
            with open_store(url) as store:
                fill(store, count)
        else:
            from qctl import home as qhome
            with Store(qhome.ensure(home_in(tmp))) as store:
                fill(store, count)
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, SCRIPT, "worker", "start", "--count", "2", "--burst"], env=env,
                                  stdout=subprocess.DEVNULL) for _ in range(4)]
        codes = [proc.wait() for proc in procs]
        took = time.perf_counter() - started
        with (open_store(url) if url else Store(os.path.join(home_in(tmp), "queue.db"))) as store:
            done = store.counts()[jobs.COMPLETED]
        if codes != [0] * 4 or done != count:
            raise SystemExit("workers exited %r and left jobs undone: %d of %d" % (codes, done, count))
        return took


def main():
    args = options(__doc__, runs=3, extra=lambda p: p.add_argument("--jobs", type=int, help="jobs per drain"))
    pg = server()
    print(machine())
    print()
    cycles = 500 if args.quick else 5000
    ours, bare = cycle_figures(pg, cycles, args.runs)
    table("claim + complete, 1 thread, %d jobs (median of %d)" % (cycles, args.runs), ("loop", "jobs/s", "x bare"),
          [("bare psycopg, 2 statements", "%.0f" % bare, "1.00"), ("queuectl PgStore", "%.0f" % ours, "%.2f" % (ours / bare))])
    p50, p99 = latency_figures(pg, 20 if args.quick else 200)
    table("enqueue to start, idle worker woken by NOTIFY (poll-interval 10 s)", ("p50 ms", "p99 ms"),
          [("%.1f" % p50, "%.1f" % p99)])
    count = args.jobs or (300 if args.quick else 3000)
    on_pg, on_sqlite = [], []
    for _ in range(args.runs):
        url = pg.url()
        try:
            on_pg.append(count / drain(count, url))
        finally:
            pg.drop(url)
        on_sqlite.append(count / drain(count))
    table("drain, 4 worker processes x 2 threads, %d `true` jobs (median of %d, interleaved)" % (count, args.runs),
          ("store", "jobs/s", "x SQLite"),
          [("SQLite", "%.0f" % median(on_sqlite), "1.00"),
           ("PostgreSQL", "%.0f" % median(on_pg), "%.2f" % (median(on_pg) / median(on_sqlite)))])


if __name__ == "__main__":
    main()
