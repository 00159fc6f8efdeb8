#!/usr/bin/env python3
"""queuectl: a background job queue for shell commands.

This file is the switchboard: it parses arguments, calls one `qctl` function
per command and prints. No SQL and no job logic live here.
"""

import argparse
import os
import shutil
import sys
import textwrap
import time

from qctl import __version__
from qctl import display
from qctl import home as qhome
from qctl import jobs
from qctl.errors import DuplicateJob, InvalidJob, QueueError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
WAIT_POLL_S = 0.1
HELP_WIDTH = 79  # the grouped command list in `queuectl -h` fits an 80-column terminal

# How `queuectl -h` groups the commands (as the README does). A command left out
# still shows, under "other", and tests/test_help.py fails until it has a group.
COMMAND_GROUPS = (
    ("enqueue and run", ("enqueue", "worker")),
    ("watch and inspect", ("status", "list", "show", "logs", "wait", "stats", "dashboard")),
    ("dead letter queue and clean-up", ("dlq", "delete", "purge")),
    ("settings", ("config",)),
)


# ---------------------------------------------------------------- output helpers

def out(text=""):
    sys.stdout.write(text + "\n")


def print_json(value):
    import json  # only --json output needs it: keep it off every command's start-up
    out(json.dumps(value, indent=2, ensure_ascii=False))


def error_line(message):
    # splitlines, not split("\n"): a \r in a path the user typed must not break the one line either.
    text = " ".join(str(message).splitlines())
    sys.stderr.write("queuectl: error: %s\n" % text)


def colour_state(state):
    return display.paint_state(state, display.colour_enabled(sys.stdout))


def table(headers, rows, *, flex=(), right=()):
    """Print rows as aligned columns that fit the terminal; `flex` columns are cut with an ellipsis."""
    for line in display.layout(headers, rows, width=shutil.get_terminal_size((80, 24)).columns,
                               flex=flex, right=right):
        out(line)


def plural(n, word, many=None):
    return "%d %s" % (n, word if n == 1 else many or word + "s")


# ---------------------------------------------------------------- argument types

def duration_arg(value):
    try:
        return jobs.parse_duration(value, "duration")
    except InvalidJob as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("duration must be", "must be"))


def whole_number_arg(low, high, what):
    """An argparse type: an integer from `low` to `high`, else a usage error saying `what` is allowed."""
    def convert(value):
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError("must be a whole number, not %r" % value)
        if not low <= number <= high:
            raise argparse.ArgumentTypeError("must be %s, not %d" % (what, number))
        return number
    return convert


def limit_arg(value):
    # More than SQLite's largest integer (it would overflow binding) means all of them anyway.
    return min(whole_number_arg(0, float("inf"), "0 (all) or more")(value), 2 ** 63 - 1)


def state_arg(value):
    if value not in jobs.STATES:
        raise argparse.ArgumentTypeError("unknown state %r (valid states: %s)" % (value, ", ".join(jobs.STATES)))
    return value


# ---------------------------------------------------------------- commands

def open_store(args):
    from qctl.db import Store
    return Store(qhome.ensure(args.home, allow_shared=args.allow_shared_home))


def cmd_enqueue(args):
    now = time.time()
    option_values = {"id": args.id, "max_retries": args.max_retries, "priority": args.priority,
                     "run_at": args.run_at, "delay": args.delay, "timeout": args.timeout, "cwd": args.cwd}
    given = [name for name, value in option_values.items() if value is not None] + (["env"] if args.env else [])
    sources = [s for s in (args.job, args.command, args.file) if s is not None]
    if len(sources) != 1:
        args.parser.error("give exactly one of JOB_JSON, --command or --file")
    if given and args.command is None:
        args.parser.error("--%s goes with --command; put it inside the JSON instead"
                          % given[0].replace("_", "-"))
    with open_store(args) as store:
        default_retries = store.config()["max-retries"]
        try:
            cwd = os.getcwd()
        except OSError:  # deleted under us: only jobs with an absolute cwd can go in
            cwd = None
        if args.file is not None:
            new, numbers = read_job_lines(args.file, now=now, cwd=cwd, default_max_retries=default_retries)
            try:
                ids = store.enqueue(new, now)
            except DuplicateJob as exc:
                raise QueueError("line %d: %s (nothing was enqueued)" % (numbers[exc.index], exc)) from None
            if args.json:
                print_json({"count": len(ids), "ids": ids})
            else:
                out("enqueued %s" % plural(len(ids), "job"))
            return EXIT_OK
        if args.job is not None:
            new = jobs.parse_job_json(args.job, now=now, cwd=cwd, default_max_retries=default_retries)
        else:
            raw = {k: v for k, v in option_values.items() if v is not None}
            raw["command"] = args.command
            if args.env:
                raw["env"] = dict(parse_env_pair(pair) for pair in args.env)
            new = jobs.validate_job(raw, now=now, cwd=cwd, default_max_retries=default_retries)
        job_id = store.enqueue([new], now)[0]
        if args.json:
            print_json(jobs.public_job(store.get(job_id)))
        else:
            out(job_id)
    return EXIT_OK


def parse_env_pair(pair):
    key, sep, value = pair.partition("=")
    if not sep or not key:
        raise InvalidJob("--env takes KEY=VALUE, not %r" % pair)
    return key, value


def read_job_lines(path, *, now, cwd, default_max_retries):
    """Every job of a JSON Lines file (or stdin), validated, and the line number of each.

    The first bad line raises."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as fh:
                data = fh.read()
    except OSError as exc:
        raise QueueError("cannot read %s: %s" % (path, exc.strerror or exc)) from None
    return jobs.parse_job_lines(data, "stdin" if path == "-" else path, now=now, cwd=cwd,
                                default_max_retries=default_max_retries)


def cmd_status(args):
    with open_store(args) as store:
        status = store.status(time.time(), alive=qhome.worker_alive)
    if args.json:
        print_json(status)
        return EXIT_OK
    table(["STATE", "JOBS"], [[colour_state(s), n] for s, n in status["jobs"].items()], right=(1,))
    workers = status["workers"]
    out()
    out("workers: %s, %s" % (plural(workers["processes"], "process", "processes"),
                             plural(workers["threads"], "thread")))
    return EXIT_OK


def print_jobs(rows, *, dead=False):
    now = time.time()
    if dead:
        table(["ID", "ATTEMPTS", "DIED", "LAST ERROR", "COMMAND"],
              [[r["id"], r["attempts"], display.ago(r["updated_at"], now), r["last_error"], display.one_line(r["command"])]
               for r in rows], flex=(4, 3, 0), right=(1,))
        return
    table(["ID", "STATE", "ATTEMPTS", "PRI", "UPDATED", "COMMAND"],
          [[r["id"], colour_state(r["state"]), "%d/%d" % (r["attempts"], r["max_retries"] + 1), r["priority"],
            display.ago(r["updated_at"], now), display.one_line(r["command"])] for r in rows], flex=(5, 0), right=(2, 3))


def cmd_list(args):
    with open_store(args) as store:
        rows = store.list_jobs(state=args.state, limit=args.limit)
    if args.json:
        print_json([jobs.public_job(r) for r in rows])
    elif rows:
        print_jobs(rows)
    else:
        out("no %sjobs" % (args.state + " " if args.state else ""))
    return EXIT_OK


def cmd_show(args):
    with open_store(args) as store:
        row = store.get(args.id)
        runs = [jobs.public_run(r) for r in store.job_runs(row)]
    job = jobs.public_job(row)
    if args.json:
        job["runs"] = runs
        print_json(job)
        return EXIT_OK
    now = time.time()
    # The command whole (only control characters escaped), its later lines indented under the first.
    command = display.printable(row["command"], keep="\n\t").replace("\n", "\n" + " " * 13)
    fields = [("id", job["id"]), ("command", command), ("state", colour_state(job["state"])),
              ("attempts", "%d of %d (max_retries %d)" % (job["attempts"], job["max_retries"] + 1,
                                                         job["max_retries"])),
              ("priority", job["priority"]), ("run_at", "%s (%s)" % (job["run_at"], display.ago(row["run_at"], now))),
              ("next_run_at", job["next_run_at"] and "%s (%s)" % (job["next_run_at"], display.ago(row["next_run_at"], now))),
              ("timeout", job["timeout"] and jobs.format_seconds(job["timeout"]) + "s"),
              ("cwd", job["cwd"]), ("env", job["env"] and " ".join("%s=***" % k for k in job["env"])),
              ("created_at", job["created_at"]), ("updated_at", job["updated_at"]),
              ("exit_code", job["exit_code"]), ("last_error", job["last_error"])]
    for name, value in fields:
        if value is not None:
            out("%-12s %s" % (name, value))
    if runs:
        out()
        table(["RUN", "ATTEMPT", "STARTED", "DURATION", "EXIT", "ERROR", "WORKER"],
              [[r["run"], r["attempt"], r["started_at"], "-" if r["duration"] is None else "%.2fs" % r["duration"],
                "-" if r["exit_code"] is None else r["exit_code"], r["error"] or "-", r["worker"] or "-"]
               for r in runs], flex=(5, 6), right=(0, 1, 3, 4))
    return EXIT_OK


def cmd_logs(args):
    with open_store(args) as store:
        row = store.get(args.id)
        runs = store.job_runs(row, with_output=True)
    if args.run is None:
        if not runs:
            out("job %s has not run yet" % args.id)
            return EXIT_OK
        run = runs[-1]
    else:
        matching = [r for r in runs if r["run"] == args.run]
        if not matching:
            raise QueueError("job %r has no run %d (it has run %s)" % (args.id, args.run, plural(len(runs), "time")))
        run = matching[0]
    outcome = run["error"] or ("running" if run["finished_at"] is None else "completed")
    out("== job %s, run %d of %d: %s ==" % (args.id, run["run"], len(runs), outcome))
    for name in ("stdout", "stderr"):
        data = run[name] or b""
        out("-- %s%s --" % (name, "" if data else " (empty)"))
        if data:
            text = data.decode("utf-8", "replace")
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


def cmd_wait(args):
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    unfinished = (jobs.PENDING, jobs.PROCESSING, jobs.FAILED)
    with open_store(args) as store:
        for job_id in args.ids:
            store.get(job_id)  # an unknown id is an error now, not a wait forever
        while True:
            if args.ids:
                counts = dict.fromkeys(jobs.STATES, 0)
                for job_id in args.ids:
                    counts[store.get(job_id)["state"]] += 1
            else:
                counts = store.counts()
            if not any(counts[s] for s in unfinished):
                break
            if deadline is not None and time.monotonic() >= deadline:
                error_line("timed out: %s not finished yet" % plural(sum(counts[s] for s in unfinished), "job"))
                return EXIT_TIMEOUT
            time.sleep(WAIT_POLL_S)
    out("%s finished: %d completed, %d dead" % (plural(counts[jobs.COMPLETED] + counts[jobs.DEAD], "job"),
                                                counts[jobs.COMPLETED], counts[jobs.DEAD]))
    return EXIT_ERROR if counts[jobs.DEAD] else EXIT_OK


def cmd_dlq_list(args):
    with open_store(args) as store:
        rows = store.list_jobs(state=jobs.DEAD, limit=0)
    if args.json:
        print_json([jobs.public_job(r) for r in rows])
    elif rows:
        print_jobs(rows, dead=True)
    else:
        out("the dead letter queue is empty")
    return EXIT_OK


def cmd_dlq_retry(args):
    if (args.id is None) == (not args.all):
        args.parser.error("give a job ID or --all")
    with open_store(args) as store:
        if args.all:
            out("%s back to pending" % plural(store.retry_all_dead(time.time()), "job"))
        else:
            store.retry_dead(args.id, time.time())
            out("job %s back to pending" % args.id)
    return EXIT_OK


def cmd_delete(args):
    with open_store(args) as store:
        store.delete(args.id)
    out("deleted job %s" % args.id)
    return EXIT_OK


def cmd_purge(args):
    with open_store(args) as store:
        count = store.purge(args.state, older_than_s=args.older_than or 0.0, now=time.time())
    out("purged %s" % plural(count, args.state + " job"))
    return EXIT_OK


def seconds_text(value):
    return "-" if value is None else "%.2fs" % value


def percent(rate):
    return "-" if rate is None else "%.1f%%" % (rate * 100)


def cmd_stats(args):
    from qctl import stats as qstats
    with open_store(args) as store:
        figures = qstats.collect(store, time.time())
    if args.json:
        print_json(figures)
        return EXIT_OK
    runs, run_time, workers = figures["runs"], figures["run_time"], figures["workers"]
    rows = [
        ("jobs", "  ".join("%s %d" % (colour_state(s), n) for s, n in figures["jobs"].items())),
        ("workers", "%s, %s" % (plural(workers["processes"], "process", "processes"),
                                plural(workers["threads"], "thread"))),
        ("oldest pending", "-" if figures["oldest_pending_age"] is None
         else "waiting %s" % seconds_text(figures["oldest_pending_age"])),
        ("runs", "%d: %d completed, %d failed, %s; success rate %s"
         % (runs["total"], runs["completed"], runs["failed"], "%d %s" % (runs["retries"], "retry" if runs["retries"] == 1 else "retries"), percent(runs["success_rate"]))),
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
    for name, value in rows:
        out("%-15s %s" % (name, value))
    return EXIT_OK


def cmd_dashboard(args):
    from qctl import dashboard
    server = dashboard.make_server(qhome.ensure(args.home, allow_shared=args.allow_shared_home),
                                   host=args.host, port=args.port,
                                   read_only=args.read_only)
    try:
        if not dashboard.is_loopback(args.host):
            sys.stderr.write("queuectl: warning: serving on %s, not loopback: anyone who can reach this "
                             "address can see every job%s\n"
                             % (args.host, "" if args.read_only else " and retry dead ones (try --read-only)"))
        out("dashboard: %s%s (Ctrl-C to stop)" % (server.url, " read-only" if args.read_only else ""))
        sys.stdout.flush()
        server.serve_forever()
    except KeyboardInterrupt:
        out("dashboard stopped")
    finally:
        server.server_close()
    return EXIT_OK


def format_value(value):
    return jobs.format_seconds(value) if isinstance(value, float) else str(value)


def cmd_config_get(args):
    with open_store(args) as store:
        values = store.config()
    if args.key is not None:
        key = jobs.config_key(args.key)
        if args.json:
            print_json({key: values[key]})
        else:
            out(format_value(values[key]))
        return EXIT_OK
    if args.json:
        print_json(values)
    else:
        for key, value in values.items():
            out("%s = %s" % (key, format_value(value)))
    return EXIT_OK


def cmd_config_set(args):
    key = jobs.config_key(args.key)
    value = jobs.config_value(key, args.value)
    with open_store(args) as store:
        store.set_config(key, value)
    out("%s = %s" % (key, format_value(value)))
    return EXIT_OK


def cmd_config_list(args):
    with open_store(args) as store:
        values = store.config()
    if args.json:
        print_json(values)
        return EXIT_OK
    table(["KEY", "VALUE", "DEFAULT", "MEANING"],
          [[key, format_value(values[key]), format_value(spec[0]), spec[2]] for key, spec in jobs.CONFIG.items()],
          flex=3)
    return EXIT_OK


def cmd_worker_start(args):
    import logging
    from qctl import worker as qworker
    home = args.home
    qhome.ensure(home, allow_shared=args.allow_shared_home)
    if args.detach:
        argv = [sys.executable, os.path.abspath(__file__), "--home", home, "worker", "start"]
        if args.count:
            argv += ["--count", str(args.count)]
        if args.burst:
            argv.append("--burst")
        if args.allow_shared_home:
            argv.append("--allow-shared-home")
        # The child reads the stopfile only once it runs: a stop issued before then must reach it.
        argv += ["--stop-generation", str(qhome.stop_generation(home))]
        pid = qworker.start_detached(argv, qhome.log_path(home))
        out("worker started in the background: pid %d, log %s" % (pid, qhome.log_path(home)))
        return EXIT_OK
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("qctl.worker")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        worker = qworker.Worker(home, threads=args.count, burst=args.burst, stop_generation=args.stop_generation,
                                allow_shared_home=args.allow_shared_home)
        worker.install_signal_handlers()
        return worker.run()
    finally:
        logger.removeHandler(handler)


def cmd_worker_stop(args):
    if args.timeout is not None and not args.wait:
        args.parser.error("--timeout goes with --wait")
    with open_store(args) as store:
        before = [w["id"] for w in store.workers(time.time(), alive=qhome.worker_alive)]
        qhome.request_stop(args.home)
        out("asked %s to stop" % plural(len(before), "worker"))
        if not args.wait:
            return EXIT_OK
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        while True:
            alive = set(before) & {w["id"] for w in store.workers(time.time(), alive=qhome.worker_alive)}
            if not alive:
                out("all stopped")
                return EXIT_OK
            if deadline is not None and time.monotonic() >= deadline:
                error_line("timed out: %s still running" % plural(len(alive), "worker"))
                return EXIT_TIMEOUT
            time.sleep(WAIT_POLL_S)


def cmd_worker_list(args):
    with open_store(args) as store:
        live = store.workers(time.time(), alive=qhome.worker_alive)
    if args.json:
        print_json([jobs.public_worker(w) for w in live])
    elif live:
        now = time.time()
        table(["PID", "HOST", "THREADS", "STARTED", "HEARTBEAT", "RUNNING"],
              [[w["pid"], w["host"], w["threads"], display.ago(w["started_at"], now), display.ago(w["heartbeat_at"], now),
                ", ".join(w["running"]) or "-"] for w in live], flex=(5, 1), right=(0, 2))
    else:
        out("no workers running")
    return EXIT_OK


# ---------------------------------------------------------------- the parser

def add_command(subparsers, name, func, summary, example, **kwargs):
    parser = subparsers.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                                   epilog="example:\n  " + example.replace("\n", "\n  "),
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    parser.set_defaults(func=func, parser=parser)
    return parser


def add_json(parser):
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="queuectl", usage="queuectl [-h] [--version] [--home DIR] [--allow-shared-home] COMMAND ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'queuectl COMMAND -h' for a command's options and examples.\n\nexample:\n"
               "  queuectl enqueue --command 'echo hello'\n  queuectl worker start --burst",
        allow_abbrev=False)
    parser.add_argument("--home", metavar="DIR",
                        help="data directory (default: $QUEUECTL_HOME, else ~/.queuectl)")
    parser.add_argument("--allow-shared-home", action="store_true",
                        help="use a home or database that another user owns or group or others can write "
                             "(unsafe: they can run commands as you)")
    parser.add_argument("--version", action="version", version="queuectl " + __version__)
    # The flat list of commands is hidden: the description lists them by group instead.
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", help=argparse.SUPPRESS, prog="queuectl")
    sub.required = True

    p = add_command(sub, "enqueue", cmd_enqueue, "add a job to the queue",
                    "queuectl enqueue '{\"id\": \"job1\", \"command\": \"echo hello\"}'\n"
                    "queuectl enqueue --command 'sleep 2' --max-retries 5 --delay 30s\n"
                    "queuectl enqueue --file jobs.jsonl", allow_abbrev=False)
    p.add_argument("job", nargs="?", metavar="JOB_JSON", help="the job as a JSON object")
    p.add_argument("--command", metavar="CMD", help="the shell command (options form)")
    p.add_argument("--id", help="job id (default: generated)")
    p.add_argument("--max-retries", type=int, metavar="N", help="retries after the first run")
    p.add_argument("--priority", type=int, metavar="P", help="higher runs first (default 0)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--run-at", metavar="TS", help="ISO 8601 time to run at (no zone = local time)")
    when.add_argument("--delay", metavar="SECONDS", help="run after this long (30, 30s, 5m, 2h, 1d)")
    p.add_argument("--timeout", metavar="S", help="fail the run after this long (90, 90s, 5m, 2h)")
    p.add_argument("--cwd", metavar="DIR", help="run in this directory (default: the current one)")
    p.add_argument("--env", action="append", metavar="KEY=VALUE", help="add to the environment (repeatable)")
    p.add_argument("--file", metavar="PATH", help="JSON Lines file of jobs ('-' = stdin), all or nothing")
    add_json(p)

    p = add_command(sub, "status", cmd_status, "show jobs per state and live workers", "queuectl status --json")
    add_json(p)

    p = add_command(sub, "list", cmd_list, "list jobs, oldest first", "queuectl list --state pending --limit 20")
    p.add_argument("--state", type=state_arg, help="only jobs in this state (%s)" % ", ".join(jobs.STATES))
    p.add_argument("--limit", type=limit_arg, default=100, metavar="N", help="at most N jobs (default 100, 0 = all)")
    add_json(p)

    p = add_command(sub, "show", cmd_show, "show one job with every run", "queuectl show job1")
    p.add_argument("id", metavar="ID")
    add_json(p)

    p = add_command(sub, "logs", cmd_logs, "print the output of a job's latest run (or the N-th)",
                    "queuectl logs job1 --run 2")
    p.add_argument("id", metavar="ID")
    p.add_argument("--run", type=int, metavar="N", help="run number, as 'show' lists them")

    p = add_command(sub, "wait", cmd_wait, "wait until jobs are completed or dead",
                    "queuectl wait job1 job2 --timeout 5m")
    p.add_argument("ids", nargs="*", metavar="ID",
                   help="jobs to wait for (default: all); exit 0 if all completed, 1 if any is dead")
    p.add_argument("--timeout", type=duration_arg, metavar="S", help="give up after this long (exit 3)")

    p = add_command(sub, "dlq", None, "the dead letter queue: jobs that ran out of retries",
                    "queuectl dlq list\nqueuectl dlq retry job1")
    dlq = p.add_subparsers(dest="dlq_command", metavar="ACTION")
    dlq.required = True
    q = add_command(dlq, "list", cmd_dlq_list, "list dead jobs with their last error", "queuectl dlq list --json")
    add_json(q)
    q = add_command(dlq, "retry", cmd_dlq_retry, "put dead jobs back to pending with attempts reset",
                    "queuectl dlq retry job1\nqueuectl dlq retry --all")
    q.add_argument("id", nargs="?", metavar="ID")
    q.add_argument("--all", action="store_true", help="retry every dead job")

    p = add_command(sub, "delete", cmd_delete, "remove a job that is not processing", "queuectl delete job1")
    p.add_argument("id", metavar="ID")

    p = add_command(sub, "purge", cmd_purge, "remove completed or dead jobs",
                    "queuectl purge --state completed --older-than 7d")
    p.add_argument("--state", required=True, choices=jobs.FINISHED_STATES, help="which finished jobs to remove")
    p.add_argument("--older-than", type=duration_arg, metavar="SECONDS",
                   help="only jobs finished at least this long ago (30, 5m, 2h, 1d)")

    p = add_command(sub, "worker", None, "start, stop or list worker processes",
                    "queuectl worker start --count 4\nqueuectl worker stop --wait")
    wsub = p.add_subparsers(dest="worker_command", metavar="ACTION")
    wsub.required = True
    q = add_command(wsub, "start", cmd_worker_start, "run worker threads in this process until stopped",
                    "queuectl worker start --count 4\nqueuectl worker start --burst\n"
                    "queuectl worker start --detach")
    q.add_argument("--count", type=whole_number_arg(1, 256, "from 1 to 256"), metavar="N", help="worker threads (default: config worker-count)")
    q.add_argument("--burst", action="store_true", help="exit once nothing is runnable and nothing runs")
    q.add_argument("--detach", action="store_true", help="run in the background (log: HOME/worker.log)")
    # Also here, where it began; `queuectl --allow-shared-home COMMAND` is the same for every command.
    q.add_argument("--allow-shared-home", action="store_true", default=argparse.SUPPRESS,
                   help="serve a home or database that another user owns or group or others can write (unsafe)")
    q.add_argument("--stop-generation", type=int, help=argparse.SUPPRESS)  # from --detach to its child
    q = add_command(wsub, "stop", cmd_worker_stop, "ask every worker to finish its running jobs and exit",
                    "queuectl worker stop --wait --timeout 60")
    q.add_argument("--wait", action="store_true", help="block until they have exited")
    q.add_argument("--timeout", type=duration_arg, metavar="S", help="with --wait: give up after this long (exit 3)")
    q = add_command(wsub, "list", cmd_worker_list, "list live worker processes", "queuectl worker list --json")
    add_json(q)

    p = add_command(sub, "stats", cmd_stats, "show run counts, failure rates, run times, oldest pending age",
                    "queuectl stats\nqueuectl stats --json")
    add_json(p)

    p = add_command(sub, "dashboard", cmd_dashboard, "serve a monitoring web page, a JSON API and /metrics",
                    "queuectl dashboard\nqueuectl dashboard --port 9000 --read-only")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=whole_number_arg(0, 65535, "from 0 to 65535"), default=8765, help="port to listen on (default 8765, 0 = any free one)")
    p.add_argument("--read-only", action="store_true", help="refuse every action (retry): look, don't touch")

    p = add_command(sub, "config", None, "get, set or list settings", "queuectl config set max-retries 5")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    q = add_command(csub, "get", cmd_config_get, "print one setting, or all of them",
                    "queuectl config get backoff-base")
    q.add_argument("key", nargs="?", metavar="KEY")
    add_json(q)
    q = add_command(csub, "set", cmd_config_set, "change a setting (running workers pick it up within seconds)",
                    "queuectl config set backoff-max 10m")
    q.add_argument("key", metavar="KEY", help=", ".join(jobs.CONFIG))
    q.add_argument("value", metavar="VALUE")
    q = add_command(csub, "list", cmd_config_list, "list settings with defaults and meanings",
                    "queuectl config list")
    add_json(q)
    parser.description = "A background job queue for shell commands.\n\n" + grouped_commands(sub)
    return parser


def grouped_commands(subparsers):
    """The commands under their COMMAND_GROUPS headings, each with its one-line summary."""
    summaries = {action.dest: action.help for action in subparsers._choices_actions}
    grouped = {name for _, names in COMMAND_GROUPS for name in names}
    groups = list(COMMAND_GROUPS) + [("other", tuple(n for n in summaries if n not in grouped))]
    width = max(len(name) for name in summaries)
    lines = []
    for title, names in groups:
        names = [name for name in names if name in summaries]
        if names:
            lines.append("%s:" % title)
            for name in names:
                lines += textwrap.wrap(summaries[name], HELP_WIDTH, initial_indent="  %-*s  " % (width, name),
                                       subsequent_indent=" " * (width + 4))
            lines.append("")
    return "\n".join(lines).rstrip()


def main(argv=None):
    """Run one command; return its exit code."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        args.home = qhome.resolve(args.home)
        return args.func(args)
    except SystemExit as exc:  # parser.error() inside a command
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except QueueError as exc:
        error_line(exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        error_line("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (queuectl list | head): not an error worth a word.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except Exception as exc:
        if os.environ.get("QUEUECTL_DEBUG"):
            raise
        error_line("internal error: %s: %s (this is a bug; QUEUECTL_DEBUG=1 shows the traceback)"
                   % (type(exc).__name__, exc))
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
