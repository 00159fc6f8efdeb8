#!/usr/bin/env python3
"""queuectl end to end: success, failure with retries and backoff, the DLQ, and a retry from it.

Runs the real CLI in a temporary home (nothing else is touched), streams the
worker's own log as it happens, and exits 0 only if every job ends as expected.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
QUEUECTL = os.path.join(HERE, "queuectl.py")
DEADLINE_S = 60


def queuectl(home, *args, show=True, check=True):
    """Run one queuectl command, echoing it like a shell session; return its stdout."""
    if show:
        print("$ queuectl %s" % " ".join(_quote(a) for a in args), flush=True)
    proc = subprocess.run([sys.executable, QUEUECTL, "--home", home] + list(args),
                          capture_output=True, text=True)
    if show and proc.stdout.strip():
        print(_indent(proc.stdout.rstrip()), flush=True)
    if proc.stderr.strip():
        print(_indent(proc.stderr.rstrip()), flush=True)
    if check and proc.returncode != 0:
        raise SystemExit("demo: 'queuectl %s' exited %d" % (" ".join(args), proc.returncode))
    return proc.stdout


def _quote(arg):
    return "'%s'" % arg if any(c in arg for c in " {\"$;") else arg


def _indent(text):
    return "\n".join("  " + line for line in text.splitlines())


def stream(proc):
    for line in proc.stdout:
        print("  worker | " + line.rstrip(), flush=True)


def main():
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="queuectl-demo-") as tmp:
        home = os.path.join(tmp, "home")
        flag = os.path.join(tmp, "ready")
        print("== queuectl demo (home: %s)\n" % home)

        print("-- settings: retry after 2s, then 4s (backoff-base 2)")
        queuectl(home, "config", "set", "backoff-base", "2")

        print("\n-- five jobs")
        jobs = [
            ("hello", {"command": "echo hello from queuectl"}, "completed"),
            ("flaky", {"command": "echo trying; exit 3", "max_retries": 2}, "dead"),
            ("typo", {"command": "ech0 oops", "max_retries": 1}, "dead"),
            ("slow", {"command": "sleep 2 && echo slow job done", "priority": 5}, "completed"),
            ("needs-fix", {"command": "test -f %s" % json.dumps(flag)[1:-1], "max_retries": 0}, "completed"),
        ]
        for job_id, fields, _ in jobs:
            queuectl(home, "enqueue", json.dumps(dict(fields, id=job_id)))

        print("\n-- two worker threads (their log, live)")
        worker = subprocess.Popen([sys.executable, QUEUECTL, "--home", home, "worker", "start", "--count", "2"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        reader = threading.Thread(target=stream, args=(worker,), daemon=True)
        reader.start()
        try:
            queuectl(home, "wait", "--timeout", str(DEADLINE_S), check=False, show=False)
            time.sleep(0.2)  # let the worker's last lines reach the screen before ours

            print("\n-- the dead letter queue")
            queuectl(home, "dlq", "list")

            print("\n-- fix what 'needs-fix' was missing, then retry it from the DLQ")
            open(flag, "w").close()
            queuectl(home, "dlq", "retry", "needs-fix")
            queuectl(home, "wait", "needs-fix", "--timeout", str(DEADLINE_S), show=False)
            time.sleep(0.2)

            print("\n-- what a failed job looks like")
            queuectl(home, "show", "flaky")
            queuectl(home, "logs", "hello")
        finally:
            queuectl(home, "worker", "stop", "--wait", "--timeout", "30", show=False, check=False)
            if worker.poll() is None:
                worker.wait(30)
            reader.join(5)

        print("\n-- summary")
        queuectl(home, "status")
        listed = {j["id"]: j for j in json.loads(queuectl(home, "list", "--json", show=False))}
        good = True
        print("\n  %-10s %-10s %-10s %s" % ("JOB", "EXPECTED", "GOT", "RUNS"))
        for job_id, _, expected in jobs:
            job = json.loads(queuectl(home, "show", job_id, "--json", show=False))
            ok = listed[job_id]["state"] == expected
            good = good and ok
            print("  %-10s %-10s %-10s %d  %s" % (job_id, expected, job["state"], len(job["runs"]),
                                                 "ok" if ok else "UNEXPECTED"))
        flaky = json.loads(queuectl(home, "show", "flaky", "--json", show=False))["runs"]
        gaps = [_parse(flaky[k]["started_at"]) - _parse(flaky[k - 1]["finished_at"]) for k in (1, 2)]
        print("\n  retry gaps of 'flaky': %s (backoff-base 2: at least 2s, then 4s)"
              % ", ".join("%.2fs" % g for g in gaps))
        good = good and gaps[0] >= 2 - 0.01 and gaps[1] >= 4 - 0.01
        took = time.monotonic() - started
        print("\n%s in %.1fs" % ("every job ended as expected" if good else "SOMETHING WENT WRONG", took))
        return 0 if good else 1


def _parse(stamp):
    from datetime import datetime, timezone
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


if __name__ == "__main__":
    sys.exit(main())
