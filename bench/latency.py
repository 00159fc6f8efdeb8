"""Latency: enqueue-to-start of jobs enqueued one at a time to an idle worker, and idle CPU.

One worker process (`worker start --count 1`) waits idle; jobs are enqueued
one at a time at random intervals (0-100 ms apart). A job's latency runs from
just before its enqueue transaction to its claim by the worker (`started_at`,
stamped in the claim, right before the command is started). The worker finds
new work by polling every `poll-interval` (default 50 ms), so the expected
p50 is about half of that and p99 about all of it: that is the limit here.

Idle CPU: the same worker, left with nothing to do for 10 s, its user + system
time read from /proc (Linux only; elsewhere it is not measured).

    python -m bench.latency [--quick] [--runs N] [--jobs N]
"""

import os
import random
import subprocess
import sys
import time

from bench.common import SCRIPT, cli_env, home_in, machine, median, options, percentile, table, temp_home

from qctl import home as qhome
from qctl import jobs
from qctl.db import Store


def process_cpu_s(pid):
    """User + system CPU seconds of `pid` so far (Linux /proc), or None."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the worker")
        time.sleep(0.005)


def one_run(count, idle_s, rng):
    """Latencies (s) of `count` jobs and the idle worker's CPU share over `idle_s`."""
    with temp_home() as tmp:
        home = home_in(tmp)
        path = qhome.ensure(home)
        worker = subprocess.Popen([sys.executable, SCRIPT, "worker", "start", "--count", "1"], env=cli_env(home),
                                  stdout=subprocess.DEVNULL)
        try:
            with Store(path) as store:
                wait_for(lambda: store.live_workers(time.time()))
                time.sleep(1.0)  # let the worker settle into idling: start-up is not idle time
                cpu_before, idle_from = process_cpu_s(worker.pid), time.perf_counter()
                time.sleep(idle_s)
                cpu_after, idle_took = process_cpu_s(worker.pid), time.perf_counter() - idle_from
                idle = None if cpu_before is None else (cpu_after - cpu_before) / idle_took
                enqueued = {}
                for n in range(count):
                    time.sleep(rng.uniform(0, 0.1))
                    now = time.time()
                    job = jobs.validate_job({"id": "j%d" % n, "command": "true"}, now=now, default_max_retries=0)
                    store.enqueue([job], now)
                    enqueued[job["id"]] = now
                wait_for(lambda: store.counts()[jobs.COMPLETED] == count)
                latencies = [store.get(job_id)["started_at"] - at for job_id, at in enqueued.items()]
            qhome.request_stop(home)
            worker.wait(30)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    return latencies, idle


def main():
    def extra(parser):
        parser.add_argument("--jobs", type=int, help="jobs per run (default 200, quick 30)")
        parser.add_argument("--idle", type=float, help="seconds of idling measured (default 10, quick 1)")
        parser.add_argument("--seed", type=int, default=1, help="random seed of the intervals")
    args = options(__doc__, runs=3, extra=extra)
    count = args.jobs or (30 if args.quick else 200)
    idle_s = args.idle or (1.0 if args.quick else 10.0)
    rng = random.Random(args.seed)
    p50, p99, worst, idle = [], [], [], []
    for _ in range(args.runs):
        latencies, idle_share = one_run(count, idle_s, rng)
        p50.append(percentile(latencies, 50))
        p99.append(percentile(latencies, 99))
        worst.append(max(latencies))
        idle.append(idle_share)
    print(machine())
    table("enqueue-to-start of %d jobs, one idle worker, poll-interval 50 ms, median of %d runs" % (count, args.runs),
          ["p50 ms", "p99 ms", "max ms"],
          [["%.1f" % (median(p50) * 1000), "%.1f" % (median(p99) * 1000), "%.1f" % (median(worst) * 1000)]])
    known = [share for share in idle if share is not None]
    table("idle worker CPU over %gs, median of %d runs" % (idle_s, args.runs), ["% of one core"],
          [["%.2f" % (median(known) * 100) if known else "n/a (no /proc)"]])


if __name__ == "__main__":
    main()
