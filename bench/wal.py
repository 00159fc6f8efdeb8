"""WAL size over a long drain: how big queue.db-wal grows, and whether it shrinks once idle.

SPEC ("Bounded files"): over a 100,000-job drain by 4 worker processes,
queue.db-wal stays at most 64 MiB, and shrinks back once the queue is idle.
Issue #11 (item 1) saw one worker leave a 553 MB WAL after 20,000 `echo` jobs.

What is run, as a user would: N jobs (`true` unless --command says otherwise,
no retries) stored by one `enqueue --file`, then P real worker processes,
`python queuectl.py --home H worker start --count T --burst`, started together.
While they drain, a thread samples the sizes of queue.db-wal and queue.db
every --interval seconds (the WAL only grows between resets, so the peak is
not missed by much). When the last of them has exited, one non-burst worker
(`worker start --count 1`) is started and left idle for --idle seconds, since
shrinking the WAL when idle is the workers' job; the WAL is read at that
point, then the worker is stopped with `worker stop --wait`.

This script holds one idle connection to the database open from before the
drain to the end (a dashboard or a long-running worker would do the same).
Without it, the last process to close the database checkpoints and deletes
the WAL, and the figure after the drain would show SQLite's clean-up on close
rather than what the workers leave behind.

Printed: N, P, T, elapsed (first worker start to last worker exit), jobs/s,
the largest WAL seen, the WAL when the drain ended (the last sample while a
burst worker was alive), the WAL after --idle seconds of an idle worker, and
the database size; then the WAL's size over the drain, at each tenth of it.
With --runs N each run gets its own column: sizes are not averaged.

    python -m bench.wal [--quick] [--runs N] [--jobs N] [--processes P] [--threads T]
                        [--interval S] [--idle S] [--command CMD]
"""

import json
import os
import subprocess
import sys
import threading
import time

from bench.common import SCRIPT, cli_env, home_in, machine, options, run_cli, table, temp_home

from qctl import home as qhome
from qctl import jobs
from qctl.db import Store

MIB = 1024 * 1024
LIMIT_BYTES = 64 * MIB  # SPEC, "Bounded files"


def size(path):
    try:
        return os.path.getsize(path)
    except OSError:  # not there (yet, or any more)
        return 0


class Sampler:
    """Samples (seconds since start, WAL bytes, database bytes) every `interval` on a thread."""

    def __init__(self, db_path, interval):
        self.db_path, self.interval = db_path, interval
        self.samples = []
        self.done = threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def sample(self):
        taken = (time.monotonic() - self.started, size(self.db_path + "-wal"), size(self.db_path))
        self.samples.append(taken)
        return taken

    def loop(self):
        while True:
            self.sample()
            if self.done.wait(self.interval):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def start_worker(home, tmp, name, *argv):
    log = open(os.path.join(tmp, name + ".log"), "w")
    proc = subprocess.Popen([sys.executable, SCRIPT, "--home", home, "worker", "start"] + list(argv),
                            env=cli_env(home), stdout=log, stderr=subprocess.STDOUT)
    proc.log = log
    return proc


def check_exit(proc):
    proc.log.close()
    if proc.returncode != 0:
        with open(proc.log.name) as fh:
            tail = fh.read()[-2000:]
        raise SystemExit("a worker exited with code %d; the end of its log:\n%s" % (proc.returncode, tail))


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for %s" % what)
        time.sleep(0.05)


def one_run(args):
    """The figures of one drain, as a dict."""
    with temp_home() as tmp:
        home = home_in(tmp)
        db_path = qhome.ensure(home)
        jobs_file = os.path.join(tmp, "jobs.jsonl")
        with open(jobs_file, "w") as fh:
            line = json.dumps({"command": args.command, "max_retries": 0}) + "\n"
            for _ in range(args.jobs):
                fh.write(line)
        enqueue_s, _ = run_cli(home, "--home", home, "enqueue", "--file", jobs_file)
        wal_after_enqueue = size(db_path + "-wal")
        with Store(db_path) as held:  # see the docstring: keeps SQLite's close-time clean-up out of the figures
            with Sampler(db_path, args.interval) as sampler:
                drain_from = time.monotonic()
                workers = [start_worker(home, tmp, "worker-%d" % n, "--count", str(args.threads), "--burst")
                           for n in range(args.processes)]
                while any(proc.poll() is None for proc in workers):
                    # The sampler's last word while a burst worker still ran is the end-of-drain figure.
                    last_while_draining = sampler.samples[-1] if sampler.samples else (0.0, 0, 0)
                    time.sleep(args.interval / 4)
                elapsed = time.monotonic() - drain_from
                for proc in workers:
                    check_exit(proc)
                end_sample = sampler.sample()
                counts = held.counts()
                if counts[jobs.COMPLETED] != args.jobs:
                    raise SystemExit("the workers left jobs undone: %r" % counts)
                drain_samples = [s for s in sampler.samples if s[0] <= last_while_draining[0]]
                idle_from = time.monotonic()
                idle = start_worker(home, tmp, "worker-idle", "--count", "1")
                wait_for(lambda: held.live_workers(time.time()), 30, "the idle worker to register")
                time.sleep(max(0.0, args.idle - (time.monotonic() - idle_from)))
                idle_sample = sampler.sample()
                _, stop = run_cli(home, "--home", home, "worker", "stop", "--wait", "--timeout", "30", check=False)
                idle.wait(30)
                check_exit(idle)
                if stop.returncode != 0:
                    raise SystemExit("worker stop --wait failed with exit code %d" % stop.returncode)
            stopped_sample = sampler.sample()
    return {
        "enqueue_s": enqueue_s, "wal_after_enqueue": wal_after_enqueue, "elapsed": elapsed,
        "max_wal": max(s[1] for s in sampler.samples), "end_wal": last_while_draining[1],
        "exited_wal": end_sample[1], "idle_wal": idle_sample[1], "idle_s": idle_sample[0] - end_sample[0],
        "stopped_wal": stopped_sample[1], "db": stopped_sample[2], "timeline": tenths(drain_samples),
    }


def tenths(samples):
    """The WAL size at each tenth of the drain's duration (the last sample at or before it)."""
    if not samples:
        return []
    total = samples[-1][0]
    marks, i = [], 0
    for tenth in range(1, 11):
        at = total * tenth / 10
        while i + 1 < len(samples) and samples[i + 1][0] <= at:
            i += 1
        marks.append(samples[i][1])
    return marks


def mib(n):
    return "%.1f MiB" % (n / MIB)


def main():
    def extra(parser):
        parser.add_argument("--jobs", type=int, help="jobs drained (default 100000, quick 2000)")
        parser.add_argument("--processes", type=int, default=4, help="worker processes (default 4)")
        parser.add_argument("--threads", type=int, default=1, help="threads per worker process (default 1)")
        parser.add_argument("--interval", type=float, default=0.2, help="seconds between samples (default 0.2)")
        parser.add_argument("--idle", type=float, default=5.0,
                            help="seconds an idle worker runs after the drain before the WAL is read (default 5)")
        parser.add_argument("--command", default="true", help="each job's command (default: true)")
    args = options(__doc__, runs=1, extra=extra)
    args.jobs = args.jobs or (2000 if args.quick else 100000)
    results = []
    for run in range(args.runs):
        results.append(one_run(args))
        print("  run %d: %.0fs, max WAL %s" % (run + 1, results[-1]["elapsed"], mib(results[-1]["max_wal"])),
              file=sys.stderr)
    print(machine())
    print("%d `%s` jobs (enqueue --file: %.1fs, WAL after it %s), %d worker process%s x %d thread%s, "
          "sampled every %gs" % (args.jobs, args.command, results[0]["enqueue_s"], mib(results[0]["wal_after_enqueue"]),
                                  args.processes, "" if args.processes == 1 else "es", args.threads,
                                  "" if args.threads == 1 else "s", args.interval))
    measures = [
        ("elapsed (first worker start to last exit)", lambda r: "%.1f s" % r["elapsed"]),
        ("jobs/s", lambda r: "%.0f" % (args.jobs / r["elapsed"])),
        ("max WAL", lambda r: "%s (%d bytes)" % (mib(r["max_wal"]), r["max_wal"])),
        ("WAL at the end of the drain", lambda r: mib(r["end_wal"])),
        ("WAL once the burst workers exited", lambda r: mib(r["exited_wal"])),
        ("WAL after an idle worker ran", lambda r: "%s (%.1f s after the drain)" % (mib(r["idle_wal"]), r["idle_s"])),
        ("WAL after worker stop --wait", lambda r: mib(r["stopped_wal"])),
        ("database", lambda r: mib(r["db"])),
        ("max WAL <= 64 MiB", lambda r: "yes" if r["max_wal"] <= LIMIT_BYTES else "NO"),
    ]
    table("WAL over the drain (target: at most 64 MiB, shrinking back once idle)",
          ["measure"] + ["run %d" % n for n in range(1, len(results) + 1)],
          [[name] + [show(r) for r in results] for name, show in measures])
    table("WAL size at each tenth of the drain (run 1)", ["%d%%" % (10 * t) for t in range(1, 11)],
          [[mib(b) for b in results[0]["timeline"]]])


if __name__ == "__main__":
    main()
