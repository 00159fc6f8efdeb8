"""The public JSON shapes: what `--json` prints and the dashboard's API returns, defined once.

Each function turns what the store returns into the documented shape:
timestamps become ISO 8601 UTC text, env values become `***`.
"""

from .jobs import FAILED, PENDING, mask_env
from .times import iso

OUTPUT_TAIL_CHARS = 4096  # of each stream, per run, in `job_detail`


def job(row):
    """A stored job as `show --json` / `list --json` print it (env values masked)."""
    state = row["state"]
    return {
        "id": row["id"], "command": row["command"], "state": state, "attempts": row["attempts"],
        "max_retries": row["max_retries"], "priority": row["priority"], "run_at": iso(row["run_at"]),
        "timeout": row["timeout"], "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"]),
        "next_run_at": iso(row["next_run_at"]) if state in (PENDING, FAILED) else None,
        "last_error": row["last_error"], "exit_code": row["exit_code"], "cwd": row["cwd"],
        "env": mask_env(row["env"]), "worker": row["worker"], "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]), "queue": row["queue"], "tags": row["tags"],
        "after": row["after"], "after_policy": row["after_policy"], "waiting_for": row["waiting_for"],
        "unique_key": row["unique_key"],
    }


def schedule(row):
    """A schedule as `schedule list --json` prints it (the job's env values masked)."""
    import json
    from .cron import describe
    job = json.loads(row["job"])
    if job.get("env"):
        job["env"] = {key: "***" for key in job["env"]}
    return {"name": row["name"], "spec": describe(row["spec"]), "overlap": bool(row["overlap"]),
            "next_run_at": iso(row["next_at"]), "last_job": row["last_job"], "last_state": row["last_state"],
            "last_fired_at": iso(row["last_fired_at"]), "last_error": row["last_error"], "job": job}


def run(row):
    """One run as `show --json` prints it."""
    duration = None
    if row["started_at"] is not None and row["finished_at"] is not None:
        duration = round(row["finished_at"] - row["started_at"], 3)
    return {"run": row["run"], "attempt": row["attempt"], "started_at": iso(row["started_at"]),
            "finished_at": iso(row["finished_at"]), "duration": duration, "exit_code": row["exit_code"],
            "error": row["error"], "worker": row["worker"]}


def job_with_runs(row, runs, *, output=False):
    """`show --json`: the job and every run; with `output`, each run carries the tail of
    its stdout and stderr as text (the dashboard's job page)."""
    shown = job(row)
    shown["runs"] = []
    for one in runs:
        entry = run(one)
        if output:
            for name in ("stdout", "stderr"):
                entry[name] = (one[name] or b"").decode("utf-8", "replace")[-OUTPUT_TAIL_CHARS:]
        shown["runs"].append(entry)
    return shown


def worker(row):
    """A live worker as `worker list --json` prints it."""
    return {"id": row["id"], "pid": row["pid"], "host": row["host"], "threads": row["threads"],
            "started_at": iso(row["started_at"]), "heartbeat_at": iso(row["heartbeat_at"]),
            "running": row["running"]}


def status(counts, live_workers):
    """`status --json`: jobs per state and the live worker processes and threads."""
    return {"jobs": counts,
            "workers": {"processes": len(live_workers), "threads": sum(w["threads"] for w in live_workers)}}
