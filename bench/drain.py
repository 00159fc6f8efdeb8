"""Drain rate: `true` jobs drained by `worker start --count N --burst` against a bare loop.

The limit is starting processes: a bare `ThreadPoolExecutor(N)` running
`subprocess.run("true", shell=True, capture_output=True)` as fast as it can.
queuectl is timed end to end, its own interpreter start included; the jobs are
enqueued beforehand (enqueue has its own benchmark). The two alternate within
each run so that load on the machine hits both alike.

Wall-clock rates on a shared machine swing with its load, so the CPU each
takes per job is printed too (user + system, the commands' own included, from
getrusage): on saturated cores the drain ratio cannot beat the inverse ratio
of CPU per job, whatever the load.

    python -m bench.drain [--quick] [--runs N] [--jobs N] [--threads 2 8]
"""

import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from bench.common import fresh_db, home_in, machine, median, options, run_cli, table, temp_home

from qctl import jobs
from qctl.db import Store


def cpu_s(who):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def bare_loop(count, threads, command="true"):
    """(seconds, CPU seconds) for `threads` threads to run `command` through the shell `count` times."""
    def one(_):
        subprocess.run(command, shell=True, capture_output=True)
    cpu_before = cpu_s(resource.RUSAGE_SELF) + cpu_s(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(one, range(count)):
            pass
    took = time.perf_counter() - started
    return took, cpu_s(resource.RUSAGE_SELF) + cpu_s(resource.RUSAGE_CHILDREN) - cpu_before


def queuectl_drain(count, threads):
    """(seconds, CPU seconds) for `worker start --count threads --burst` to drain `count` true jobs."""
    with temp_home() as tmp:
        path = fresh_db(tmp, count)
        cpu_before = cpu_s(resource.RUSAGE_CHILDREN)
        took, _ = run_cli(home_in(tmp), "worker", "start", "--count", str(threads), "--burst")
        with Store(path) as store:
            counts = store.counts()
        if counts[jobs.COMPLETED] != count:
            raise SystemExit("the worker left jobs undone: %r" % counts)
        return took, cpu_s(resource.RUSAGE_CHILDREN) - cpu_before


def main():
    def extra(parser):
        parser.add_argument("--jobs", type=int, help="jobs per run (default 5000, quick 300)")
        parser.add_argument("--threads", type=int, nargs="+", default=[2, 8], help="thread counts (default 2 8)")
    args = options(__doc__, runs=3, extra=extra)
    count = args.jobs or (300 if args.quick else 5000)
    rows = []
    for threads in args.threads:
        bare, ours, bare_cpu, our_cpu = [], [], [], []
        for run in range(args.runs):
            # Alternate which goes first, so neither always meets a warmer or busier machine.
            order = (bare_loop, queuectl_drain) if run % 2 == 0 else (queuectl_drain, bare_loop)
            for bench in order:
                took, cpu = bench(count, threads)
                rates, cpus = (bare, bare_cpu) if bench is bare_loop else (ours, our_cpu)
                rates.append(count / took)
                cpus.append(cpu / count * 1e6)
            print("  threads %d run %d: bare %.0f/s, queuectl %.0f/s" % (threads, run + 1, bare[-1], ours[-1]),
                  file=sys.stderr)
        rows.append([threads, "%.0f" % median(bare), "%.0f" % median(ours), "%.2f" % (median(ours) / median(bare)),
                     "%.0f" % median(bare_cpu), "%.0f" % median(our_cpu),
                     "%.2f" % (median(bare_cpu) / median(our_cpu))])
    print(machine())
    table("drain of %d `true` jobs, median of %d runs" % (count, args.runs),
          ["threads", "bare loop jobs/s", "queuectl jobs/s", "ratio", "bare CPU us/job", "queuectl CPU us/job",
           "CPU ratio"], rows)


if __name__ == "__main__":
    main()
