"""Text for people: column layout, terminal widths, relative times, colour.

Pure functions that return strings; `queuectl.py` decides where they are printed.
Nothing here is used for `--json` output, which never has colour or extra text.

Every value shown to people may hold what a job's author (or a file name) put
there, so control characters are escaped where text is rendered: each table cell
and `show` value goes through `printable`, and what comes out is `Escaped`.
`queuectl.out` escapes any other text it is given, so only `Escaped` text (our
own colour codes, a command's kept newlines) reaches the terminal as it is.
"""

import os
import re
import time

from .jobs import DEAD, FAILED
from .times import format_seconds

ELLIPSIS = "\u2026"
MIN_CUT_WIDTH = 5      # a column cut to fit is never narrower than this (or its header)
COLUMN_GAP = 2
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # what jobs.is_control says
_STATE_COLOURS = {"pending": "33", "processing": "36", "completed": "32", "failed": "35", "dead": "31"}


def colour_enabled(stream, environ=None, *, windows=None):
    """Colour only for a terminal, and never when NO_COLOR is set (no-color.org) or TERM=dumb.

    The Windows console shows escape codes as text unless it is Windows Terminal
    (WT_SESSION) or a terminal that sets TERM (mintty, ConEmu with ANSICON).
    """
    environ = os.environ if environ is None else environ
    windows = os.name == "nt" if windows is None else windows
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return not windows or any(environ.get(name) for name in ("WT_SESSION", "TERM", "ANSICON"))


class Escaped(str):
    """Text made safe for a terminal (control characters escaped, our own colour codes
    added): `printable` and the table layout pass it through unchanged."""
    __slots__ = ()


def paint_state(state, enabled):
    """`state` (escaped) in its colour when `enabled`, else just escaped."""
    if not enabled:
        return printable(state)
    return Escaped("\x1b[%sm%s\x1b[0m" % (_STATE_COLOURS.get(state, "0"), printable(state)))


def display_width(text):
    """Columns `text` takes on a terminal: colour codes take none, wide (CJK) characters two."""
    text = _ANSI_RE.sub("", text)
    if text.isascii():
        return len(text)
    import unicodedata
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
               for ch in text)


def fit(text, width):
    """`text` cut to `width` columns, ending in an ellipsis when cut."""
    if display_width(text) <= width:
        return text
    kept, used = [], 0
    for ch in text:
        used += display_width(ch)
        if used > width - 1:
            break
        kept.append(ch)
    return "".join(kept) + ELLIPSIS


def printable(text, keep=""):
    """`text` with control characters (other than those in `keep`) shown as \\xNN escapes,
    so a job's command cannot move the cursor or recolour the terminal. `Escaped` text is
    returned as it is; anything else is made a string first."""
    if isinstance(text, Escaped):
        return text
    text = str(text)
    if _CONTROL_RE.search(text) is None:
        return Escaped(text)

    def escape(match):
        ch = match.group()
        return ch if ch in keep else "\\x%02x" % ord(ch) if ord(ch) < 256 else "\\u%04x" % ord(ch)
    return Escaped(_CONTROL_RE.sub(escape, text))


def one_line(text):
    """`text` on one line: runs of whitespace (newlines too) become one space."""
    return printable(" ".join(text.split()))


def layout(headers, rows, *, width, flex=(), right=()):
    """Lines of an aligned table at most `width` columns wide.

    Columns in `flex` may be cut (with an ellipsis) to fit: the widest of them
    gives up a column first, so a long command shrinks before a short id does.
    Other columns are never cut; if they alone are wider than `width`, the
    lines are too.
    """
    flex = (flex,) if isinstance(flex, int) else tuple(flex)
    headers = [printable(h) for h in headers]
    rows = [["" if cell is None else printable(cell) for cell in row] for row in rows]
    widths = [max([display_width(h)] + [display_width(r[i]) for r in rows]) for i, h in enumerate(headers)]
    floors = {i: max(display_width(headers[i]), MIN_CUT_WIDTH) for i in flex}
    excess = sum(widths) + COLUMN_GAP * (len(widths) - 1) - width
    while excess > 0:
        cuttable = [i for i in flex if widths[i] > floors[i]]
        if not cuttable:
            break
        widest = max(cuttable, key=lambda i: widths[i])
        others = [widths[i] for i in cuttable if i != widest]
        # Cut the widest down to the next widest (or as far as needed) in one go.
        step = min(excess, widths[widest] - max(others + [floors[widest]]) or 1)
        widths[widest] -= step
        excess -= step
    lines = []
    for row in [list(headers)] + rows:
        cells = []
        for i, cell in enumerate(row):
            if i in flex:
                cell = fit(cell, widths[i])
            pad = " " * (widths[i] - display_width(cell))
            cells.append(pad + cell if i in right else cell + pad)
        lines.append(Escaped((" " * COLUMN_GAP).join(cells).rstrip()))
    return lines


def ago(seconds, now=None):
    """A timestamp relative to `now`: '12s ago', 'in 4s', '3m ago', '2d ago'; 'now' within a second."""
    if seconds is None:
        return "-"
    delta = (time.time() if now is None else now) - seconds
    span = abs(delta)
    if span < 1:
        return "now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if span >= size:
            text = "%d%s" % (span // size, unit)
            break
    return text + " ago" if delta > 0 else "in " + text


# ---------------------------------------------------------------- what commands print

def plural(n, word, many=None):
    return "%d %s" % (n, word if n == 1 else many or word + "s")


def terminal_width():
    import shutil
    return shutil.get_terminal_size((80, 24)).columns


def table(headers, rows, *, flex=(), right=()):
    """Rows as aligned columns that fit the terminal; `flex` columns are cut with an ellipsis."""
    return layout(headers, rows, width=terminal_width(), flex=flex, right=right)


def seconds_text(value):
    return "-" if value is None else "%.2fs" % value


def percent(rate):
    return "-" if rate is None else "%.1f%%" % (rate * 100)


def setting_text(value):
    """A config value as `config get` prints it: 2.0 -> 2, 0.5 -> 0.5."""
    return format_seconds(value) if isinstance(value, float) else str(value)


def workers_text(workers):
    return "%s, %s" % (plural(workers["processes"], "process", "processes"), plural(workers["threads"], "thread"))


def status_lines(status, colour):
    lines = table(["STATE", "JOBS"], [[paint_state(s, colour), n] for s, n in status["jobs"].items()], right=(1,))
    return lines + ["", "workers: " + workers_text(status["workers"])]


def job_lines(rows, now, colour):
    """`list`: one line a job."""
    return table(["ID", "STATE", "ATTEMPTS", "PRI", "UPDATED", "COMMAND"],
                 [[r["id"], paint_state(r["state"], colour), "%d/%d" % (r["attempts"], r["max_retries"] + 1),
                   r["priority"], ago(r["updated_at"], now), one_line(r["command"])] for r in rows],
                 flex=(5, 0), right=(2, 3))


def dead_job_lines(rows, now):
    """`dlq list`: one line a dead job, with its last error."""
    return table(["ID", "ATTEMPTS", "DIED", "LAST ERROR", "COMMAND"],
                 [[r["id"], r["attempts"], ago(r["updated_at"], now), r["last_error"], one_line(r["command"])]
                  for r in rows], flex=(4, 3, 0), right=(1,))


def show_lines(row, shown, now, colour):
    """`show`: the job's fields, one a line, then its runs. `shown` is `shapes.job_with_runs(row, ...)`."""
    # The command whole (only control characters escaped), its later lines indented under the first.
    command = Escaped(printable(row["command"], keep="\n\t").replace("\n", "\n" + " " * 13))
    fields = [("id", shown["id"]), ("command", command), ("state", paint_state(shown["state"], colour)),
              ("attempts", "%d of %d (max_retries %d)" % (shown["attempts"], shown["max_retries"] + 1,
                                                         shown["max_retries"])),
              ("priority", shown["priority"]), ("run_at", "%s (%s)" % (shown["run_at"], ago(row["run_at"], now))),
              ("next_run_at", shown["next_run_at"] and "%s (%s)" % (shown["next_run_at"],
                                                                    ago(row["next_run_at"], now))),
              ("timeout", shown["timeout"] and format_seconds(shown["timeout"]) + "s"),
              ("cwd", shown["cwd"]), ("env", shown["env"] and " ".join("%s=***" % k for k in shown["env"])),
              ("created_at", shown["created_at"]), ("updated_at", shown["updated_at"]),
              ("exit_code", shown["exit_code"]), ("last_error", shown["last_error"]),
              ("after", "%s (%s)" % (", ".join(shown["after"]), shown["after_policy"]) if shown["after"] else None),
              ("waiting_for", ", ".join(shown["waiting_for"]) or None),
              ("unique_key", shown["unique_key"])]
    lines = [Escaped("%-12s %s" % (name, printable(value))) for name, value in fields if value is not None]
    runs = shown["runs"]
    if runs:
        lines.append("")
        lines += table(["RUN", "ATTEMPT", "STARTED", "DURATION", "EXIT", "ERROR", "WORKER"],
                       [[r["run"], r["attempt"], r["started_at"], "-" if r["duration"] is None else "%.2fs" % r["duration"],
                         "-" if r["exit_code"] is None else r["exit_code"], r["error"] or "-", r["worker"] or "-"]
                        for r in runs], flex=(5, 6), right=(0, 1, 3, 4))
    return lines


def stats_lines(figures, colour):
    """`stats`: one line per figure."""
    runs, run_time = figures["runs"], figures["run_time"]
    rows = [
        ("jobs", Escaped("  ".join("%s %d" % (paint_state(s, colour), n) for s, n in figures["jobs"].items()))),
        ("workers", workers_text(figures["workers"])),
        ("oldest pending", "-" if figures["oldest_pending_age"] is None
         else "waiting %s" % seconds_text(figures["oldest_pending_age"])),
        ("runs", "%d: %d completed, %d failed, %s; success rate %s"
         % (runs["total"], runs["completed"], runs["failed"], plural(runs["retries"], "retry", "retries"),
            percent(runs["success_rate"]))),
    ]
    for name in ("last_minute", "last_hour"):
        window = figures[name]
        rows.append((name.replace("_", " "), "%s, %s; success rate %s"
                     % (plural(window["runs"], "run"), plural(window["failures"], "failure"),
                        percent(window["success_rate"]))))
    rows.append(("throughput", "%d completed/min" % figures["throughput_per_minute"]))
    rows.append(("run time", "avg %s  p50 %s  p95 %s  max %s  (%s in the last hour)"
                 % (seconds_text(run_time["avg"]), seconds_text(run_time["p50"]), seconds_text(run_time["p95"]),
                    seconds_text(run_time["max"]), plural(run_time["count"], "run"))))
    return [Escaped("%-15s %s" % (name, printable(value))) for name, value in rows]


def worker_lines(live, now):
    """`worker list`: one line a live worker process."""
    return table(["PID", "HOST", "THREADS", "STARTED", "HEARTBEAT", "RUNNING"],
                 [[w["pid"], w["host"], w["threads"], ago(w["started_at"], now), ago(w["heartbeat_at"], now),
                   ", ".join(w["running"]) or "-"] for w in live], flex=(5, 1), right=(0, 2))


def config_lines(values, settings):
    """`config list`: every key with its value, default and meaning."""
    return table(["KEY", "VALUE", "DEFAULT", "MEANING"],
                 [[key, setting_text(values[key]), setting_text(s.default), s.meaning] for key, s in settings.items()],
                 flex=(3, 1))


def queue_lines(queues, colour):
    """`queue list`: one line a queue."""
    return table(["QUEUE", "PAUSED", "CONCURRENCY", "JOBS"],
                 [[q["name"], "yes" if q["paused"] else "no", q["concurrency"] or "-",
                   "  ".join("%s %d" % (paint_state(s, colour), n) for s, n in q["jobs"].items() if n) or "-"]
                  for q in queues], flex=(3, 0), right=(2,))


def schedule_lines(rows, now):
    """`schedule list`: one line a schedule. `rows`: the store's, with the job's input."""
    import json
    from .cron import describe
    return table(["NAME", "SPEC", "NEXT RUN", "LAST JOB", "COMMAND"],
                 [[r["name"], describe(r["spec"]), ago(r["next_at"], now),
                   "failed: %s" % r["last_error"] if r["last_error"] else
                   "%s (%s)" % (r["last_job"], r["last_state"] or "gone") if r["last_job"] else "-",
                   one_line(json.loads(r["job"])["command"])] for r in rows], flex=(4, 0))


def job_summary(job):
    """One line of a job's fields that `edit` changes."""
    fields = [("queue", job["queue"]), ("priority", job["priority"]), ("max_retries", job["max_retries"]),
              ("next_run_at", job["next_run_at"]), ("timeout", job["timeout"] and format_seconds(job["timeout"]) + "s"),
              ("tags", ",".join(job["tags"]) or None), ("command", one_line(job["command"]))]
    return printable("  ".join("%s %s" % (name, value) for name, value in fields if value is not None))


def size_text(n):
    """1536 -> '1.5 KiB'."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" if unit == "bytes" else "%.1f %s") % (n, unit)
        n /= 1024.0


# ---------------------------------------------------------------- logs --follow

def follow_started(job_id, run):
    return printable("== job %s, run %d ==" % (job_id, run))


def follow_ended(job_id, run, row, job, now):
    """How run `run` ended (`row`, from Store.job_runs); for the job's latest run (`job` given),
    also what comes next: a retry, or the end of the job."""
    if row is None or (row["error"] is None and row["finished_at"] is None):
        outcome = "ended"
    else:
        outcome = row["error"] or "completed"
    if job is not None and job["state"] == FAILED:
        outcome += " (retry in %ss)" % format_seconds(max(0.0, round(job["next_run_at"] - now, 1)))
    elif job is not None and job["state"] == DEAD:
        outcome += " (dead)"
    return printable("== job %s, run %d: %s ==" % (job_id, run, outcome))


def follow_waiting(job_id, state):
    return printable("== job %s is %s: waiting for its first run ==" % (job_id, state))


def follow_never_ran(job_id, state):
    return printable("== job %s is %s: it never ran ==" % (job_id, state))


def follow_given_back(job_id, run):
    return printable("== job %s, run %d: stopped by its worker (a hard stop); it will run again ==" % (job_id, run))


def not_kept(n):
    return Escaped("[... %s not kept ...]" % plural(n, "byte"))
