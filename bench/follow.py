"""Follow latency: from a command printing a line to `queuectl logs ID --follow` showing it.

One worker process (`worker start --count N`) runs N jobs at once; each prints
`--lines` lines at random intervals (50-300 ms apart), each line carrying the
time it was printed. A real `logs --follow` process follows the first job; a
line's latency runs from its print to the moment the follower's line reaches
this script through a pipe. The worker publishes running output every
housekeeping tick (0.5 s) and the follower looks every 0.1 s, so the expected
p50 is about 0.3 s and the max about 0.65 s; the contract is 1 s.

Also the follower's CPU over the run (Linux /proc; elsewhere not measured).

    python -m bench.follow [--quick] [--runs N] [--lines N] [--jobs N]
"""

import os
import shlex
import subprocess
import sys
import time

from bench.common import SCRIPT, cli_env, home_in, machine, median, options, percentile, table, temp_home
from bench.latency import process_cpu_s

from qctl import home as qhome
from qctl import jobs
from qctl.db import Store

TICKER = """import random, sys, time
rng = random.Random(int(sys.argv[2]))
for i in range(int(sys.argv[1])):
    time.sleep(rng.uniform(0.05, 0.3))
    print("line %d %.6f" % (i, time.time()), flush=True)
"""


def one_run(lines, count, seed):
    """Latencies (s) of the followed job's lines, and the follower's CPU share while it followed."""
    with temp_home() as tmp:
        home = home_in(tmp)
        path = qhome.ensure(home)
        ticker = os.path.join(tmp, "ticker.py")
        with open(ticker, "w") as fh:
            fh.write(TICKER)
        command = "%s %s %d %%d" % (shlex.quote(sys.executable), shlex.quote(ticker), lines)
        with Store(path) as store:
            store.enqueue([jobs.validate_job({"id": "j%d" % n, "command": command % (seed + n)}, now=time.time(),
                                             default_max_retries=0) for n in range(count)], time.time())
        follower = subprocess.Popen([sys.executable, SCRIPT, "logs", "j0", "--follow"], env=cli_env(home),
                                    stdout=subprocess.PIPE)
        worker = subprocess.Popen([sys.executable, SCRIPT, "worker", "start", "--count", str(count)],
                                  env=cli_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        latencies = []
        try:
            for raw in iter(follower.stdout.readline, b""):
                at = time.time()
                words = raw.split()
                if len(words) == 3 and words[0] == b"line":
                    latencies.append(at - float(words[2]))
            cpu = process_cpu_s(follower.pid)  # the zombie's figures: its whole life
            follower.wait(30)
            qhome.request_stop(home)
            worker.wait(30)
        finally:
            for proc in (follower, worker):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return latencies, cpu


def main():
    def extra(parser):
        parser.add_argument("--lines", type=int, help="lines the followed job prints (default 40, quick 10)")
        parser.add_argument("--jobs", type=int, default=1, help="jobs running at once in the worker (default 1)")
        parser.add_argument("--seed", type=int, default=1, help="random seed of the intervals")
    args = options(__doc__, runs=3, extra=extra)
    lines = args.lines or (10 if args.quick else 40)
    p50, worst, cpus, spans = [], [], [], []
    for run in range(args.runs):
        started = time.perf_counter()
        latencies, cpu = one_run(lines, args.jobs, args.seed + 100 * run)
        spans.append(time.perf_counter() - started)
        if len(latencies) != lines:
            raise SystemExit("the follower showed %d of %d lines" % (len(latencies), lines))
        p50.append(percentile(latencies, 50))
        worst.append(max(latencies))
        cpus.append(cpu)
    print(machine())
    table("print-to-display latency of %d lines, %d job%s running, median of %d runs"
          % (lines, args.jobs, "" if args.jobs == 1 else "s", args.runs),
          ["p50 ms", "max ms", "follower CPU s"],
          [["%.0f" % (median(p50) * 1000), "%.0f" % (median(worst) * 1000),
            "%.2f" % median(cpus) if None not in cpus else "n/a (no /proc)"]])


if __name__ == "__main__":
    main()
