"""Queue metrics: what `stats --json` and `/api/stats` return, and the Prometheus text of `/metrics`.

No SQL here (the store hands over rows) and no printing. Totals cover every
run of the jobs still stored (purge and delete forget runs); recent figures
cover runs finished in the last minute or hour. Run-time percentiles use the
last hour only, as Prometheus client summaries use a sliding window, so one
slow day long ago does not hide today's p95.
"""

import math

from . import shapes
from .jobs import COMPLETED, FAILED, STATES

MINUTE_S = 60.0
HOUR_S = 3600.0
RUN_TIME_WINDOW_S = HOUR_S


def percentile(sorted_values, fraction):
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, int(math.ceil(fraction * len(sorted_values))))
    return sorted_values[rank - 1]


def _seconds(value):
    return None if value is None else round(value, 3)


def collect(store, now):
    """Every figure of `stats --json`, read from `store` at time `now` (epoch seconds)."""
    status = shapes.status(store.counts(), store.live_workers(now))
    totals = store.run_totals()
    recent = store.runs_since(now - HOUR_S)
    completed_n, completed_s, completed_retries = totals[COMPLETED]
    failed_n, failed_s, failed_retries = totals[FAILED]
    total = completed_n + failed_n

    def window(span_s):
        runs = [r for r in recent if r.finished_at >= now - span_s]
        failures = sum(1 for r in runs if r.failed)
        return {"runs": len(runs), "completed": len(runs) - failures, "failures": failures,
                "success_rate": round((len(runs) - failures) / len(runs), 4) if runs else None}

    durations = sorted(max(0.0, r.duration) for r in recent
                       if r.duration is not None and r.finished_at >= now - RUN_TIME_WINDOW_S)
    oldest = store.oldest_due_pending(now)
    last_minute = window(MINUTE_S)
    return {
        "jobs": status["jobs"],
        "workers": status["workers"],
        "oldest_pending_age": None if oldest is None else round(max(0.0, now - oldest), 3),
        "runs": {"total": total, "completed": completed_n, "failed": failed_n,
                 "retries": completed_retries + failed_retries,
                 "success_rate": round(completed_n / total, 4) if total else None,
                 "seconds": round(completed_s + failed_s, 3)},
        "last_minute": last_minute,
        "last_hour": window(HOUR_S),
        "throughput_per_minute": last_minute["completed"],
        "run_time": {"window_s": RUN_TIME_WINDOW_S, "count": len(durations),
                     "avg": _seconds(sum(durations) / len(durations)) if durations else None,
                     "p50": _seconds(percentile(durations, 0.5)), "p95": _seconds(percentile(durations, 0.95)),
                     "max": _seconds(durations[-1]) if durations else None},
    }


def _label(value):
    return '"%s"' % str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value):
    if value is None:
        return "NaN"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return "%d" % value
    return repr(value)


def prometheus(stats):
    """The Prometheus text exposition (format 0.0.4) of a `collect()` result."""
    lines = []

    def metric(name, kind, help_text, samples):
        lines.append("# HELP %s %s" % (name, help_text))
        lines.append("# TYPE %s %s" % (name, kind))
        for suffix, labels, value in samples:
            text = ",".join("%s=%s" % (k, _label(v)) for k, v in labels)
            lines.append("%s%s%s %s" % (name, suffix, "{%s}" % text if text else "", _number(value)))

    metric("queuectl_jobs", "gauge", "Jobs per state.",
           [("", [("state", s)], stats["jobs"][s]) for s in STATES])
    metric("queuectl_workers", "gauge", "Live worker processes.", [("", [], stats["workers"]["processes"])])
    metric("queuectl_worker_threads", "gauge", "Worker threads in live worker processes.",
           [("", [], stats["workers"]["threads"])])
    metric("queuectl_runs_total", "counter", "Finished runs of the stored jobs, by outcome.",
           [("", [("outcome", "completed")], stats["runs"]["completed"]),
            ("", [("outcome", "failed")], stats["runs"]["failed"])])
    metric("queuectl_retries_total", "counter", "Finished runs that were retries (attempt 2 or later).",
           [("", [], stats["runs"]["retries"])])
    run_time = stats["run_time"]
    metric("queuectl_run_duration_seconds", "summary",
           "Run time; quantiles over runs finished in the last hour, sum and count over all stored runs.",
           [("", [("quantile", "0.5")], run_time["p50"]), ("", [("quantile", "0.95")], run_time["p95"])]
           + [("_sum", [], stats["runs"]["seconds"]), ("_count", [], stats["runs"]["total"])])
    metric("queuectl_oldest_pending_age_seconds", "gauge",
           "How long the longest-waiting runnable pending job has waited (0 when none).",
           [("", [], stats["oldest_pending_age"] or 0)])
    return "\n".join(lines) + "\n"
