"""Peers: queuectl beside other job runners on the same N shell jobs, in one run.

Every anchor runs N jobs (default 3000 `true` jobs) with the same number of
parallel slots (default 2); the figure is jobs/s from starting the runner to
the last job done, the runner's own start-up included; the anchors take turns
within each run (the order rotates from run to run), so load on the machine
hits them alike; figures are the median and range over the runs (default 5).

- bare loop: `ThreadPoolExecutor(T)` of `subprocess.run(CMD, shell=True,
  capture_output=True)` in this process: the limit, what starting a shell costs.
- queuectl: `worker start --count T --burst` over a fresh home, after `enqueue
  --file` of the N jobs (not timed).
- huey: SqliteHuey (its SQLite storage), a consumer process of T threads whose
  task runs the command as the bare loop does; the tasks are enqueued
  beforehand by another process (not timed); the consumer stops once it has
  seen N tasks complete. Needs huey in a virtualenv of its own (never a
  dependency of queuectl): `--huey-python` (default /tmp/peers-venv/bin/python;
  made with `python -m venv /tmp/peers-venv && /tmp/peers-venv/bin/pip install
  huey`, see `--install`).
- task-spooler (`tsp` or `ts`, Debian's `task-spooler`) with `-S T`, on a private
  socket, each job `sh -c CMD` (ts runs its argv without a shell). ts cannot
  hold jobs back: the client that queues a job is the process that runs it, so
  its figure includes queueing them, one `tsp` process per job.

A peer that cannot be found is skipped with a one-line note. `--command 'sleep
0.05' --threads 8` measures how well the slots are kept busy: the ideal is
N x 0.05 / T seconds, and the table adds each anchor's rate against it.

    python -m bench.peers [--quick] [--runs N] [--jobs N] [--threads T] [--command CMD]
                          [--only bare,queuectl,huey,ts] [--install]
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench.common import home_in, machine, median, options, run_cli, table, temp_home
from bench.drain import bare_loop

from qctl import home as qhome
from qctl import jobs
from qctl.db import Store

HUEY_VENV = "/tmp/peers-venv"

# Run by the virtualenv's python: `enqueue DB N CMD` stores the tasks; `consume DB N T` starts a
# consumer of T threads and exits once N tasks have completed (or one failed).
HUEY_SCRIPT = r'''
import subprocess, sys, threading
from huey import SqliteHuey
from huey.signals import SIGNAL_COMPLETE, SIGNAL_ERROR

huey = SqliteHuey(filename=sys.argv[2], results=False)

@huey.task()
def shell(command):
    subprocess.run(command, shell=True, capture_output=True)

if sys.argv[1] == "enqueue":
    for _ in range(int(sys.argv[3])):
        shell(sys.argv[4])
else:
    count, done, failed = int(sys.argv[3]), [0], []
    lock, finished = threading.Lock(), threading.Event()

    @huey.signal(SIGNAL_COMPLETE, SIGNAL_ERROR)
    def seen(signal, task, exc=None):
        with lock:
            done[0] += 1
            if signal == SIGNAL_ERROR:
                failed.append(repr(exc))
            if done[0] >= count or failed:
                finished.set()

    consumer = huey.create_consumer(workers=int(sys.argv[4]), worker_type="thread", periodic=False,
                                    check_worker_health=False)
    consumer.start()
    finished.wait()
    consumer.stop(graceful=True)
    if failed:
        sys.exit("huey: a task failed: %s" % failed[0])
'''


def queuectl_run(count, threads, command):
    """Seconds for `worker start --count threads --burst` to run `count` jobs of `command`."""
    with temp_home() as tmp:
        home = home_in(tmp)
        lines = os.path.join(tmp, "jobs.jsonl")
        with open(lines, "w") as fh:
            fh.writelines(json.dumps({"command": command, "max_retries": 0}) + "\n" for _ in range(count))
        run_cli(home, "enqueue", "--file", lines)
        took, _ = run_cli(home, "worker", "start", "--count", str(threads), "--burst")
        with Store(os.path.join(home, qhome.DB_NAME)) as store:
            counts = store.counts()
        if counts[jobs.COMPLETED] != count:
            raise SystemExit("queuectl left jobs undone: %r" % counts)
        return took


def huey_run(python, count, threads, command):
    with tempfile.TemporaryDirectory(prefix="qctl-bench-huey-") as tmp:
        script, db = os.path.join(tmp, "peer_huey.py"), os.path.join(tmp, "huey.db")
        with open(script, "w") as fh:
            fh.write(HUEY_SCRIPT)
        subprocess.run([python, script, "enqueue", db, str(count), command], check=True)
        started = time.perf_counter()
        subprocess.run([python, script, "consume", db, str(count), str(threads)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - started


def ts_run(tsp, count, threads, command):
    with tempfile.TemporaryDirectory(prefix="qctl-bench-ts-") as tmp:
        # A private server: its socket, its output files, all the finished jobs kept to check them.
        env = dict(os.environ, TS_SOCKET=os.path.join(tmp, "socket"), TMPDIR=tmp,
                   TS_MAXFINISHED=str(count + 10), TS_MAXCONN=str(count + 10))

        def ts(*argv):
            return subprocess.run([tsp] + list(argv), env=env, check=True, stdout=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, text=True).stdout
        try:
            started = time.perf_counter()
            ts("-S", str(threads))  # starts the server
            ids = [ts("sh", "-c", command).strip() for _ in range(count)]
            for job_id in ids[-threads:]:  # FIFO: once the last T queued are done, all are
                ts("-w", job_id)
            took = time.perf_counter() - started
            listing = ts("-l").splitlines()[1:]
            finished = sum(1 for line in listing if line.split()[1:2] == ["finished"])
            if finished != count:
                raise SystemExit("task-spooler finished %d of %d jobs" % (finished, count))
            return took
        finally:
            subprocess.run([tsp, "-K"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def install_huey(python):
    venv = os.path.dirname(os.path.dirname(python))
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "huey"], check=True)


def find_peers(args):
    """{name: run(count, threads, command)} of the anchors to run; a note for each one skipped."""
    anchors = {"bare": lambda n, t, c: bare_loop(n, t, c)[0], "queuectl": queuectl_run}
    python = args.huey_python
    if args.install and "huey" in args.only:
        try:
            install_huey(python)
        except (OSError, subprocess.CalledProcessError) as exc:
            print("note: could not install huey into %s (%s)" % (os.path.dirname(os.path.dirname(python)), exc))
    has_huey = os.path.exists(python) and subprocess.run(
        [python, "-c", "import huey"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    if has_huey:
        anchors["huey"] = lambda n, t, c: huey_run(python, n, t, c)
    else:
        print("note: huey skipped: no %s with huey (make it with --install)" % python)
    tsp = shutil.which("tsp") or shutil.which("ts")
    if tsp and subprocess.run([tsp, "-V"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True).stdout.lower().startswith("task spooler"):
        anchors["ts"] = lambda n, t, c: ts_run(tsp, n, t, c)
    else:  # `ts` may also be moreutils' timestamp filter
        print("note: task-spooler skipped: no tsp/ts on PATH (apt-get install task-spooler)")
    return {name: run for name, run in anchors.items() if name in args.only}


LABELS = {"bare": "bare loop (ThreadPoolExecutor + subprocess.run)", "queuectl": "queuectl worker start --burst",
          "huey": "huey SqliteHuey consumer, threads", "ts": "task-spooler -S (queueing included)"}


def sleep_seconds(command):
    words = command.split()
    try:
        return float(words[1]) if len(words) == 2 and words[0] == "sleep" else None
    except ValueError:
        return None


def main():
    def extra(parser):
        parser.add_argument("--jobs", type=int, help="jobs per run (default 3000, quick 200)")
        parser.add_argument("--threads", type=int, default=2, help="parallel slots (default 2)")
        parser.add_argument("--command", default="true", help="the shell command of every job (default true)")
        parser.add_argument("--only", default="bare,queuectl,huey,ts", type=lambda v: v.split(","),
                            help="anchors to run (default bare,queuectl,huey,ts)")
        parser.add_argument("--huey-python", default=os.path.join(HUEY_VENV, "bin", "python"),
                            help="a python with huey installed (default %(default)s)")
        parser.add_argument("--install", action="store_true", help="pip install huey into --huey-python's venv")
    args = options(__doc__, runs=5, extra=extra)
    count = args.jobs or (200 if args.quick else 3000)
    anchors = find_peers(args)
    rates = {name: [] for name in anchors}
    names = list(anchors)
    for run in range(args.runs):
        order = names[run % len(names):] + names[:run % len(names)]
        for name in order:
            rates[name].append(count / anchors[name](count, args.threads, args.command))
        print("  run %d: %s" % (run + 1, ", ".join("%s %.0f/s" % (n, rates[n][-1]) for n in names)), file=sys.stderr)
    print(machine())
    ideal = sleep_seconds(args.command)
    headers = ["anchor", "jobs/s", "min-max"] + (["x bare loop"] if "bare" in rates else [])
    if ideal:
        headers.append("x ideal (%g jobs/s)" % (args.threads / ideal))
    rows = []
    for name in names:
        row = [LABELS[name], "%.0f" % median(rates[name]), "%.0f-%.0f" % (min(rates[name]), max(rates[name]))]
        if "bare" in rates:
            row.append("%.2f" % (median(rates[name]) / median(rates["bare"])))
        if ideal:
            row.append("%.2f" % (median(rates[name]) * ideal / args.threads))
        rows.append(row)
    table("%d jobs of %r, %d slots, median of %d runs" % (count, args.command, args.threads, args.runs), headers, rows)


if __name__ == "__main__":
    main()
