"""Workflow: what dependencies, schedules and hooks cost.

1. Claim rate (claim + complete through the Store, no-op runner, one thread) on
   a queue of --jobs due jobs, with and without 10,000 jobs waiting on a
   dependency that never finishes; the runs alternate. Waiting jobs are kept
   out of the claim's index, so the ratio should be about 1.
2. Schedule accuracy: 3 worker processes, `schedule add tick --every 1s
   --overlap true`, --fires fires. Lateness = the job's created_at minus its
   due time (p50, max); a duplicate is two jobs for one due time.
3. Hook overhead: `worker start --count 2 --burst` over --hook-jobs `true`
   jobs with no on-finish hook and with `on-finish true`: the jobs' own drain
   rate (first start to last finish) and the worker's time to exit (it runs
   the hooks still waiting before it does).
"""

import json
import time

from bench.common import (SCRIPT, cli_env, fresh_db, home_in, machine, median, options, percentile, run_cli,
                          table, temp_home)
from bench.scale import claim_rate
from qctl import jobs
from qctl.db import Store

WAITING = 10000


def with_waiting(path):
    """Add WAITING jobs that wait for a job due in a year: pending, never claimable."""
    now = time.time()
    with Store(path) as store:
        root = jobs.validate_job({"command": "true", "id": "root", "delay": "365d"}, now=now, default_max_retries=0)
        waiting = [jobs.validate_job({"command": "true", "after": ["root"]}, now=now, default_max_retries=0)
                   for _ in range(WAITING)]
        store.enqueue([root] + waiting, now)


def schedule_accuracy(fires):
    import subprocess
    import sys
    with temp_home() as tmp:
        home = home_in(tmp)
        run_cli(home, "init")
        workers = [subprocess.Popen([sys.executable, SCRIPT, "worker", "start", "--count", "1"], env=cli_env(home),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(3)]
        try:
            time.sleep(1.0)  # the workers start up
            run_cli(home, "schedule", "add", "tick", "--every", "1s", "--overlap", "true")
            _, proc = run_cli(home, "schedule", "list", "--json", stdout=subprocess.PIPE)
            first_due = _epoch(json.loads(proc.stdout)[0]["next_run_at"])
            deadline = time.time() + fires + 10
            while time.time() < deadline:
                with Store(home + "/queue.db") as store:
                    made = store.list_jobs(limit=0)
                if len(made) >= fires:
                    break
                time.sleep(0.5)
        finally:
            run_cli(home, "worker", "stop", "--wait", "--timeout", "30")
            for proc in workers:
                proc.wait(30)
    created = sorted(job["created_at"] for job in made)[:fires]
    slots = [round(c - first_due) for c in created]
    late = [(c - (first_due + slot)) * 1000 for c, slot in zip(created, slots)]
    return late, len(slots) - len(set(slots)), len(created)


def _epoch(text):
    from datetime import datetime, timezone
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def hook_drain(count, hook):
    with temp_home() as tmp:
        home = home_in(tmp)
        if hook:
            run_cli(home, "config", "set", "on-finish", hook)
        path = fresh_db(tmp, count)
        took, _ = run_cli(home, "worker", "start", "--count", "2", "--burst")
        with Store(path) as store:
            rows = store.list_jobs(limit=0)
    started = min(r["started_at"] for r in rows)
    finished = max(r["finished_at"] for r in rows)
    return count / (finished - started), took


def main():
    def extra(parser):
        parser.add_argument("--jobs", type=int, help="due jobs per claim-rate run (default 20000, quick 2000)")
        parser.add_argument("--fires", type=int, help="schedule fires to time (default 30, quick 5)")
        parser.add_argument("--hook-jobs", type=int, help="jobs per hook drain (default 2000, quick 300)")
    args = options(__doc__, runs=5, quick_runs=1, extra=extra)
    count = args.jobs or (2000 if args.quick else 20000)
    fires = args.fires or (5 if args.quick else 30)
    hook_jobs = args.hook_jobs or (300 if args.quick else 2000)
    print(machine())
    print()

    plain, waiting = [], []
    with temp_home() as tmp:
        a, b = fresh_db(tmp + "/a", count * args.runs), fresh_db(tmp + "/b", count * args.runs)
        with_waiting(b)
        for _ in range(args.runs):
            plain.append(claim_rate(a, count))
            waiting.append(claim_rate(b, count))
    table("claim + complete, one thread, %d due jobs per run, %d runs" % (count, args.runs),
          ["queue", "jobs/s", "ratio"],
          [["due jobs only", "%.0f" % median(plain), "1.00"],
           ["and %d waiting jobs" % WAITING, "%.0f" % median(waiting), "%.2f" % (median(waiting) / median(plain))]])

    late, duplicates, made = schedule_accuracy(fires)
    table("schedule --every 1s, 3 worker processes, %d fires" % made, ["lateness p50", "lateness max", "duplicates"],
          [["%.1f ms" % percentile(late, 50), "%.1f ms" % max(late), duplicates]])

    bare, hooked = [], []
    for _ in range(args.runs):
        bare.append(hook_drain(hook_jobs, None))
        hooked.append(hook_drain(hook_jobs, "true"))
    table("worker start --count 2 --burst, %d true jobs, %d runs" % (hook_jobs, args.runs),
          ["on-finish", "jobs' drain rate", "ratio", "worker exits after"],
          [["none", "%.0f jobs/s" % median(r for r, _ in bare), "1.00", "%.2fs" % median(t for _, t in bare)],
           ["true", "%.0f jobs/s" % median(r for r, _ in hooked),
            "%.2f" % (median(r for r, _ in hooked) / median(r for r, _ in bare)),
            "%.2fs" % median(t for _, t in hooked)]])


if __name__ == "__main__":
    main()
