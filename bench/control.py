"""Control under load: cancel latency, a saturated queue beside another, a long prune.

Three figures, each as a user meets it (issue #12):
1. cancel: the time from starting `queuectl cancel ID` (a separate process) to the
   job's process tree being gone, over --cancels cancels of a running `sleep`, one
   real worker process: p50 and max. The SPEC asks for "within 2 s".
2. no head-of-line blocking: --jobs `true` jobs in queue "other", drained by a
   real worker (--threads threads), first alone, then with as many jobs of a
   queue "gpu" of concurrency 1 ahead of them in claim order (higher priority) that
   each sleep 0.05 s. The ratio of the two drain rates of "other" (goal >= 0.9).
3. retention: --prune jobs completed 8 days ago, pruned by `Store.prune` batch by
   batch (as workers do) while another thread claims and completes jobs in a loop:
   the longest single claim+complete during the prune (goal: under 100 ms).
"""

import os
import subprocess
import sys
import threading
import time

from bench.common import SCRIPT, SETTINGS, home_in, options, temp_home
from qctl import home as qhome
from qctl import jobs
from qctl.db import Store


def new_job(job_id=None, command="true", now=None, **fields):
    return jobs.validate_job(dict(fields, id=job_id, command=command), now=time.time() if now is None else now,
                             cwd="/", default_max_retries=0)


def run_cli(home, *argv):
    return subprocess.run([sys.executable, SCRIPT, "--home", home] + list(argv), capture_output=True, text=True)


def worker(home, *argv):
    return subprocess.Popen([sys.executable, SCRIPT, "--home", home, "worker", "start"] + list(argv),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cancel_latency(count):
    with temp_home() as tmp:
        home = home_in(tmp)
        proc = worker(home, "--count", "1")
        times = []
        try:
            for i in range(count):
                pidfile = os.path.join(tmp, "pid%d" % i)
                run_cli(home, "enqueue", "--id", "c%d" % i, "--command", "echo $$ > %s; exec sleep 60" % pidfile)
                while not (os.path.exists(pidfile) and open(pidfile).read().strip()):
                    time.sleep(0.01)
                pid = int(open(pidfile).read())
                started = time.monotonic()
                run_cli(home, "cancel", "c%d" % i)
                while alive(pid):
                    time.sleep(0.005)
                times.append(time.monotonic() - started)
        finally:
            proc.kill()
            proc.wait()
    times.sort()
    return times[len(times) // 2], times[-1]


def drain_other(n, threads, *, with_gpu):
    with temp_home() as tmp:
        home = home_in(tmp)
        path = qhome.ensure(home)
        with Store(path) as store:
            batch = [new_job("o%d" % i, queue="other") for i in range(n)]
            if with_gpu:
                store.set_queue("gpu", concurrency=1)
                batch += [new_job("g%d" % i, queue="gpu", priority=5, command="sleep 0.05") for i in range(n)]
            store.enqueue(batch, time.time())
        started = time.monotonic()
        proc = worker(home, "--count", str(threads))
        with Store(path) as store:
            while store.counts(queue="other")[jobs.COMPLETED] < n:
                time.sleep(0.01)
        took = time.monotonic() - started
        proc.terminate()
        proc.wait()
    return n / took


def prune_stall(n):
    with temp_home() as tmp:
        path = qhome.ensure(home_in(tmp))
        store = Store(path)
        old = time.time() - 8 * 86400
        for start in range(0, n, 10000):
            store.enqueue([new_job(now=old) for _ in range(min(10000, n - start))], old)
        claimer = Store(path)
        while claimer.claim("old", 30, now=old) is not None:  # finish them all, 8 days ago
            pass
        for job in store.list_jobs(state=jobs.PROCESSING, limit=0):
            store.complete(job, "old", old)
        store.enqueue([new_job("live%d" % i) for i in range(100000)], time.time())
        store.close()
        # As in a worker: job threads and the housekeeping thread (which prunes, and keeps the
        # WAL small) on connections of their own, NORMAL sync, no checkpoints on the job path.
        store = Store(path, durable=False, autocheckpoint=False)
        done, worst = threading.Event(), [0.0]

        def claim_loop():
            own = Store(path, durable=False, autocheckpoint=False)
            while not done.is_set():
                started = time.monotonic()
                job = own.claim("live", 30)
                if job is not None:
                    own.complete(job, "live", time.time())
                worst[0] = max(worst[0], time.monotonic() - started)
            own.close()
        thread = threading.Thread(target=claim_loop)
        thread.start()
        started, removed = time.monotonic(), 0
        while True:
            batch = store.prune(time.time(), SETTINGS)
            store.housekeep()
            removed += batch
            if not batch:
                break
        took = time.monotonic() - started
        done.set()
        thread.join()
        store.close()
        claimer.close()
    return removed, took, worst[0]


def main():
    def extra(parser):
        parser.add_argument("--cancels", type=int, default=20)
        parser.add_argument("--jobs", type=int, default=1000)
        parser.add_argument("--threads", type=int, default=4)
        parser.add_argument("--prune", type=int, default=100000)
    args = options(__doc__, runs=1, extra=extra)
    if args.quick:
        args.cancels, args.jobs, args.prune = 3, 100, 5000
    print("python %s, %d cpus" % (sys.version.split()[0], os.cpu_count() or 0))
    p50, worst = cancel_latency(args.cancels)
    print("cancel to tree gone (%d cancels): p50 %.0f ms, max %.0f ms" % (args.cancels, p50 * 1000, worst * 1000))
    alone = drain_other(args.jobs, args.threads, with_gpu=False)
    beside = drain_other(args.jobs, args.threads, with_gpu=True)
    print("queue 'other', %d jobs, %d threads: %.0f jobs/s alone, %.0f jobs/s beside a saturated queue of %d: "
          "%.2fx" % (args.jobs, args.threads, alone, beside, args.jobs, beside / alone))
    removed, took, stall = prune_stall(args.prune)
    print("prune of %d old jobs: %.1f s in batches; longest claim+complete meanwhile %.0f ms"
          % (removed, took, stall * 1000))


if __name__ == "__main__":
    main()
