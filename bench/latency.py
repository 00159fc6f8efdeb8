"""Latency: enqueue-to-start of jobs enqueued one at a time to an idle worker, and idle CPU.

One worker process (`worker start --count 4`) waits idle; jobs are enqueued
one at a time at random intervals (0-100 ms apart), through `Store.enqueue`
as every command and the Python API do (its commit pokes the idle workers).
A job's latency runs from just before its enqueue transaction to its claim
by the worker (`started_at`, stamped in the claim, right before the command
is started); "from enqueue's return" leaves out the enqueue call itself
(its commit, and on a loaded machine its waits for the CPU and for SQLite's
lock). The worker sleeps on its wake socket (`qctl/wake.py`), so the
limit is the wake-up itself: a datagram, a thread switch, one claim. Where
it cannot be woken (Windows, a home path too long for AF_UNIX) it polls
every `poll-interval` (default 50 ms): p50 about half of that, p99 all of it.

Idle CPU: the same worker, left with nothing to do for 20 s (after 1 s to
settle), its user + system time read from /proc (Linux only; elsewhere it is
not measured; the kernel counts in ticks of 10 ms, 0.05 % of a core over 20 s).

    python -m bench.latency [--quick] [--runs N] [--jobs N] [--idle S] [--threads N]
"""

import os
import random
import subprocess
import sys
import time

from bench.common import SCRIPT, cli_env, home_in, machine, median, options, percentile, run_cli, table, temp_home

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


def one_run(count, cli_count, idle_s, threads, rng):
    """Latencies (s) of `count` jobs, of `cli_count` jobs enqueued by `queuectl enqueue` (from the
    `created_at` it stamps as it starts, before opening the store), and the idle worker's CPU share
    over `idle_s`."""
    with temp_home() as tmp:
        home = home_in(tmp)
        path = qhome.ensure(home)
        worker = subprocess.Popen([sys.executable, SCRIPT, "worker", "start", "--count", str(threads)],
                                  env=cli_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
                    enqueued[job["id"]] = (now, time.time())
                wait_for(lambda: store.counts()[jobs.COMPLETED] == count)
                started = {job_id: store.get(job_id)["started_at"] for job_id in enqueued}
                latencies = [started[job_id] - at for job_id, (at, _) in enqueued.items()]
                after_return = [started[job_id] - done for job_id, (_, done) in enqueued.items()]
                cli = []
                for n in range(cli_count):
                    time.sleep(rng.uniform(0, 0.1))
                    run_cli(home, "enqueue", "--id", "c%d" % n, "--command", "true")
                    wait_for(lambda: store.get("c%d" % n)["started_at"] is not None)
                    job = store.get("c%d" % n)
                    cli.append(job["started_at"] - job["created_at"])
            qhome.request_stop(home)
            worker.wait(30)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    return latencies, after_return, cli, idle


def main():
    def extra(parser):
        parser.add_argument("--jobs", type=int, help="jobs per run (default 200, quick 30)")
        parser.add_argument("--idle", type=float, help="seconds of idling measured (default 20, quick 1)")
        parser.add_argument("--threads", type=int, default=4, help="the worker's threads (default 4)")
        parser.add_argument("--seed", type=int, default=1, help="random seed of the intervals")
    args = options(__doc__, runs=3, extra=extra)
    count = args.jobs or (30 if args.quick else 200)
    idle_s = args.idle or (1.0 if args.quick else 20.0)
    rng = random.Random(args.seed)
    cli_count = max(5, count // 5)
    p50, p99, worst, idle, cli, wake99 = [], [], [], [], [], []
    for _ in range(args.runs):
        latencies, after_return, cli_latencies, idle_share = one_run(count, cli_count, idle_s, args.threads, rng)
        wake99.append(percentile(after_return, 99))
        cli.append(percentile(cli_latencies, 50))
        p50.append(percentile(latencies, 50))
        p99.append(percentile(latencies, 99))
        worst.append(max(latencies))
        idle.append(idle_share)
    print(machine())
    ms = lambda values: "%.1f" % (median(values) * 1000)
    table("enqueue-to-start of %d jobs, one idle worker of %d threads, median of %d runs (per-run p50 / p99: %s)"
          % (count, args.threads, args.runs, ", ".join("%.1f/%.1f" % (a * 1000, b * 1000) for a, b in zip(p50, p99))),
          ["p50 ms", "p99 ms", "max ms", "p99 from enqueue's return"], [[ms(p50), ms(p99), ms(worst), ms(wake99)]])
    table("the same through `queuectl enqueue --command true` (%d jobs a run): from its start to the claim"
          % cli_count, ["p50 ms"], [[ms(cli)]])
    known = [share for share in idle if share is not None]
    table("idle worker CPU (worker start --count %d) over %gs, median of %d runs (per run: %s)"
          % (args.threads, idle_s, args.runs, ", ".join("%.2f" % (share * 100) for share in known) or "n/a"),
          ["% of one core"], [["%.2f" % (median(known) * 100) if known else "n/a (no /proc)"]])


if __name__ == "__main__":
    main()
