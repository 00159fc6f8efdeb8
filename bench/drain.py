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

With --target it prints the two figures the drain target is stated in, each
the median of 5 interleaved runs (min-max beside it), worker start-up
included: 2 threads on 3,000 `true` jobs against the bare loop, and 8 threads
on 3,000 `sleep 0.05` jobs against the ideal N x 0.05 / 8 seconds.

    python -m bench.drain [--quick] [--runs N] [--jobs N] [--threads 2 8]
    python -m bench.drain --target [--runs 5] [--jobs 3000]
    python -m bench.drain --shapes [--runs 5] [--jobs 3000]   # 4 processes x 2 threads against 1 x 8
"""

import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from bench.common import SCRIPT, cli_env, fresh_db, home_in, machine, median, options, run_cli, table, temp_home

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


def queuectl_drain(count, threads, command="true"):
    """(seconds, CPU seconds) for `worker start --count threads --burst` to drain `count` jobs of `command`."""
    with temp_home() as tmp:
        path = fresh_db(tmp, count, command)
        cpu_before = cpu_s(resource.RUSAGE_CHILDREN)
        took, _ = run_cli(home_in(tmp), "worker", "start", "--count", str(threads), "--burst")
        with Store(path) as store:
            counts = store.counts()
        if counts[jobs.COMPLETED] != count:
            raise SystemExit("the worker left jobs undone: %r" % counts)
        return took, cpu_s(resource.RUSAGE_CHILDREN) - cpu_before


SLEEP_S = 0.05  # --target: each job of the 8-thread figure sleeps this long


def processes_drain(count, processes, threads):
    """Seconds for `processes` worker processes of `threads` threads each (`worker start --burst`,
    started together on one home) to drain `count` `true` jobs."""
    with temp_home() as tmp:
        path = fresh_db(tmp, count)
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, SCRIPT, "worker", "start", "--count", str(threads), "--burst"],
                                  env=cli_env(home_in(tmp)), stdout=subprocess.DEVNULL) for _ in range(processes)]
        codes = [proc.wait() for proc in procs]
        took = time.perf_counter() - started
        with Store(path) as store:
            done = store.counts()[jobs.COMPLETED]
        if codes != [0] * processes or done != count:
            raise SystemExit("workers exited %r and left jobs undone: %d of %d" % (codes, done, count))
        return took


def shapes(args):
    """--shapes: 4 processes x 2 threads against 1 process x 8 threads on one home, interleaved."""
    count = args.jobs or (300 if args.quick else 3000)
    runs = args.runs if args.runs_given else 5
    one, four = [], []
    for run in range(runs):
        for shape in ((1, 8), (4, 2)) if run % 2 == 0 else ((4, 2), (1, 8)):
            (one if shape == (1, 8) else four).append(count / processes_drain(count, *shape))
        print("  run %d: 1x8 %.0f jobs/s, 4x2 %.0f jobs/s" % (run + 1, one[-1], four[-1]), file=sys.stderr)
    print(machine())
    table("drain of %d `true` jobs by worker processes on one home, median of %d interleaved runs" % (count, runs),
          ["shape", "jobs/s", "min-max", "ratio"],
          [["1 process x 8 threads", "%.0f" % median(one), "%.0f-%.0f" % (min(one), max(one)), "1.00"],
           ["4 processes x 2 threads", "%.0f" % median(four), "%.0f-%.0f" % (min(four), max(four)),
            "%.2f (target >= 0.9)" % (median(four) / median(one))]])


def target(args):
    """The two target figures (see the module docstring): each run's ratio, then the median."""
    count = args.jobs or (300 if args.quick else 3000)
    runs = args.runs if args.runs_given else 5
    true_ratios, true_cpu, sleep_ratios = [], [], []
    ideal = count * SLEEP_S / 8
    for run in range(runs):
        # Interleaved: each run's queuectl figure is set against a bare loop taken right beside it.
        order = (True, False) if run % 2 == 0 else (False, True)
        for bare_first in order:
            if bare_first:
                bare_s, bare_cpu = bare_loop(count, 2)
            else:
                ours_s, ours_cpu = queuectl_drain(count, 2)
        true_ratios.append(bare_s / ours_s)
        true_cpu.append((bare_cpu / count * 1e6, ours_cpu / count * 1e6))
        sleep_s, _ = queuectl_drain(count, 8, "sleep %s" % SLEEP_S)
        sleep_ratios.append(ideal / sleep_s)
        print("  run %d: 2 threads true: bare %.2fs, queuectl %.2fs (%.2fx; CPU/job %.0f vs %.0f us); "
              "8 threads sleep: %.2fs against %.2fs (%.2fx)"
              % (run + 1, bare_s, ours_s, true_ratios[-1], true_cpu[-1][0], true_cpu[-1][1], sleep_s, ideal,
                 sleep_ratios[-1]), file=sys.stderr)
    print(machine())
    table("drain target, %d jobs, median of %d interleaved runs (min-max), worker start-up included" % (count, runs),
          ["figure", "ratio", "min-max", "target"],
          [["2 threads `true` / bare loop", "%.2f" % median(true_ratios),
            "%.2f-%.2f" % (min(true_ratios), max(true_ratios)), ">= 0.95"],
           ["8 threads `sleep %s` / ideal" % SLEEP_S, "%.2f" % median(sleep_ratios),
            "%.2f-%.2f" % (min(sleep_ratios), max(sleep_ratios)), ">= 0.95"],
           ["CPU us/job, bare / queuectl", "%.0f / %.0f" % (median(c[0] for c in true_cpu),
                                                            median(c[1] for c in true_cpu)), "", ""]])


def main():
    def extra(parser):
        parser.add_argument("--jobs", type=int, help="jobs per run (default 5000, quick 300; --target 3000)")
        parser.add_argument("--threads", type=int, nargs="+", default=[2, 8], help="thread counts (default 2 8)")
        parser.add_argument("--target", action="store_true", help="print the two target figures (see above)")
        parser.add_argument("--shapes", action="store_true", help="4 processes x 2 threads against 1 x 8")
    args = options(__doc__, runs=3, extra=extra)
    if args.target:
        return target(args)
    if args.shapes:
        return shapes(args)
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
