#!/usr/bin/env python3
"""queuectl: a background job queue for shell commands.

This file is the switchboard: it parses arguments, calls one `qctl` function
per command and prints (what to print is built by `qctl.display`). No SQL and
no job logic live here. Each command is a handler registered with `@command`,
its arguments beside it.
"""

import argparse
import os
import sys

from qctl import __version__
from qctl import config as qconfig
from qctl import display
from qctl import home as qhome
from qctl import jobs
from qctl import shapes
from qctl.errors import BadDependency, DuplicateJob, InvalidJob, QueueError
from qctl.times import parse_duration

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
CANCEL_WAIT_S = 10.0  # cancel waits this long for running jobs' workers to kill them
HELP_WIDTH = 79  # the grouped command list in `queuectl -h` fits an 80-column terminal
DASHBOARD_HOST, DASHBOARD_PORT = "127.0.0.1", 8765  # the dashboard module's defaults, without importing it

# How `queuectl -h` groups the commands (as the README does). A command left out
# still shows, under "other", and tests/test_help.py fails until it has a group.
COMMAND_GROUPS = (
    ("enqueue and run", ("enqueue", "worker")),
    ("watch and inspect", ("status", "list", "show", "logs", "wait", "stats", "dashboard")),
    ("control", ("cancel", "retry", "edit", "queue", "schedule")),
    ("dead letter queue and clean-up", ("dlq", "delete", "purge")),
    ("settings and upkeep", ("config", "init", "check", "backup", "migrate", "completion")),
)

# Commands with actions (`queuectl dlq retry`): the group's summary and example.
ACTION_GROUPS = {
    "worker": ("start, stop or list worker processes", "queuectl worker start --count 4\nqueuectl worker stop --wait"),
    "dlq": ("the dead letter queue: jobs that ran out of retries", "queuectl dlq list\nqueuectl dlq retry job1"),
    "config": ("get, set or list settings", "queuectl config set max-retries 5"),
    "schedule": ("recurring jobs: add, list or remove a schedule",
                 "queuectl schedule add cleanup --every 1h 'rm -rf /tmp/cache'\nqueuectl schedule list"),
    "queue": ("list named queues; pause, resume or limit one",
              "queuectl queue list\nqueuectl queue pause nightly\nqueuectl queue set gpu --concurrency 1"),
}

# (name, summary, example, add_arguments, handler, parser options), in `queuectl -h` order; see `command`.
COMMANDS = []


def command(name, summary, example, arguments=None, **parser_options):
    """Register the decorated handler as `queuectl NAME` ("dlq retry": an action of a group).
    `arguments(parser)` adds its arguments."""
    def register(handler):
        COMMANDS.append((name, summary, example, arguments, handler, parser_options))
        return handler
    return register


# ---------------------------------------------------------------- output helpers

def out(text=""):
    """Print a line for people. A job's id, command, cwd or error may hold control characters:
    they are shown escaped, unless `display` has already made the text safe (`Escaped`)."""
    sys.stdout.write(display.printable(text) + "\n")


def out_lines(lines):
    for line in lines:
        out(line)


def print_json(value):
    import json  # only --json output needs it: keep it off every command's start-up
    # JSON escapes what it must itself; `out` would turn a raw U+0085 into \x85, which is not JSON.
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def error_line(message, kind="error"):
    # splitlines, not split("\n"): a \r in a path the user typed must not break the one line either.
    text = " ".join(str(message).splitlines())
    sys.stderr.write("queuectl: %s: %s\n" % (kind, display.printable(text)))


class Parser(argparse.ArgumentParser):
    """argparse's parser, but its error line escapes control characters ("unrecognized
    arguments: ..." quotes argv as given, and a script may pass anything there), and says
    where an option it does not take belongs (see `option_hint`)."""

    def __init__(self, *args, intermixed=False, **kwargs):
        # intermixed: positionals may come on both sides of options (`schedule add NAME --every 1h CMD`),
        # which plain argparse refuses once it has matched the first.
        super().__init__(*args, **kwargs)
        self.intermixed = intermixed

    def parse_known_args(self, args=None, namespace=None):
        if self.intermixed:
            self.intermixed = False  # parse_known_intermixed_args calls back here, twice
            try:
                return self.parse_known_intermixed_args(args, namespace)
            finally:
                self.intermixed = True
        # Kept for the hints: argparse hands each subcommand's parser only the words after its
        # name, and each parser's extras end with those of the subcommand it ran.
        self.words = list(sys.argv[1:] if args is None else args)
        parsed, extras = super().parse_known_args(args, namespace)
        self.extras = list(extras)
        return parsed, extras

    def error(self, message):
        if message.startswith("argument ACTION:"):
            # `queuectl worker --count 1`: argparse took the option's value for the missing action.
            message = option_hint(self, getattr(self, "words", ()), only_elsewhere=True) or message
        super().error(display.printable(" ".join(message.splitlines())))


# Options other job queues take for a task's name and arguments: queuectl runs shell commands instead.
TASK_OPTIONS = ("--type", "--task", "--payload", "--args", "--kwargs", "--data")


def unrecognized(top):
    """The usage error for words no parser took, from the parser they were given to (so its
    usage line is the one shown: `queuectl enqueue --type x` gets enqueue's), with a hint."""
    ran = [p for _, p in command_parsers(top) if hasattr(p, "extras")]  # queuectl, a group, its action
    for parser, child in zip(ran, ran[1:] + [None]):
        own = parser.extras[:len(parser.extras) - len(child.extras)] if child else parser.extras
        if own:
            hint = option_hint(parser, own, words=parser.words)
            parser.error("unrecognized arguments: %s%s" % (" ".join(own), "; " + hint if hint else ""))
    top.error("unrecognized arguments: %s" % " ".join(top.extras))  # never run a command with words left over


def option_hint(parser, extras, *, words=None, only_elsewhere=False):
    """Where the first option in `extras` that `parser` (queuectl's or a command's) did not take
    belongs, in one clause ("--count belongs to 'worker start' (queuectl worker start --count 1)"),
    or None. `words` are those `parser` was given, to rebuild a group command's line with its action."""
    import difflib
    import shlex
    here = tuple(parser.prog.split()[1:])
    words = list(extras if words is None else words)
    tree = dict(command_parsers(build_parser()))
    offered = {path: options_of(p) for path, p in tree.items()}
    for word in extras:
        if not word.startswith("--") or word == "--":
            continue
        option = word.split("=", 1)[0]
        if here == ("enqueue",) and option in TASK_OPTIONS:
            return ("queuectl runs shell commands, not named tasks: give the command itself "
                    "(queuectl enqueue 'python send.py --to ann') or --command CMD")
        owners = [path for path in tree  # the actions of this group (or of this action's group) taking it
                  if here and len(path) == 2 and path[0] == here[0] and path != here and option in offered[path]]
        if owners and len(here) == 1:  # a group: its line again, with the action in its place
            actions = {path[1] for path in tree if len(path) == 2 and path[0] == here[0]}
            fixed = "queuectl " + shlex.join(list(owners[0]) + [w for w in words if w not in actions])
            return "%s belongs to %s (%s)" % (option, quoted_names(owners), fixed)
        if owners:
            return "%s belongs to %s" % (option, quoted_names(owners))
        if only_elsewhere:
            continue
        if here and option in offered[()]:
            return "%s goes before the command (queuectl %s ... %s)" % (option, option, " ".join(here))
        close = difflib.get_close_matches(option, sorted(offered[here]), n=1, cutoff=0.75)
        if close:
            return "did you mean %s?" % close[0]
        if here == ("enqueue",):
            return "a program's own options go after --: queuectl enqueue [OPTIONS] -- PROGRAM ARG..."
    return None


def quoted_names(paths):
    names = ["'%s'" % " ".join(path) for path in paths]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def command_parsers(parser, path=()):
    """(command path, parser) for queuectl itself (path ()) and every command and action under it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_parsers(sub, path + (name,))


def options_of(parser):
    """The option strings a parser takes and shows in its help."""
    return {option for action in parser._actions if action.help is not argparse.SUPPRESS
            for option in action.option_strings}


def worker_log_handler(stream):
    """The handler for the worker's log lines (HH:MM:SS message). A job's id, a host name or
    an error may hold control characters: each line shows them escaped, so nothing read from
    the queue can move the cursor or fake a line; a traceback keeps its own newlines."""
    import logging

    class PrintableFormatter(logging.Formatter):
        def formatMessage(self, record):
            return display.printable(super().formatMessage(record))

        def formatException(self, exc_info):
            return display.printable(super().formatException(exc_info), keep="\n")

        def formatStack(self, stack_info):
            return display.printable(super().formatStack(stack_info), keep="\n")

    handler = logging.StreamHandler(stream)
    handler.setFormatter(PrintableFormatter("%(asctime)s %(message)s", "%H:%M:%S"))
    return handler


def colour():
    return display.colour_enabled(sys.stdout)


# ---------------------------------------------------------------- argument types

def duration_arg(value):
    try:
        return parse_duration(value, "duration")
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
    return whole_number_arg(0, float("inf"), "0 (all) or more")(value)  # the store takes a huge one as all


def state_arg(value):
    try:
        return jobs.check_state(value)
    except InvalidJob as exc:
        raise argparse.ArgumentTypeError(str(exc))


def queue_arg(value):
    try:
        return jobs.check_queue(value)
    except InvalidJob as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("queue must be", "must be"))


def queues_arg(value):
    return [queue_arg(name.strip()) for name in value.split(",")]


def add_json(parser):
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def database(args, *, allow_shared=False):
    """The queue's database: --db > $QUEUECTL_DB > the SQLite file in the home (a path or a URL)."""
    return qhome.database(args.home, args.db, allow_shared=allow_shared or args.allow_shared_home)


def open_store(args, *, allow_shared=False):
    from qctl.db import open_store as open_database
    return open_database(database(args, allow_shared=allow_shared))


# ---------------------------------------------------------------- enqueue and run

def job_option_arguments(p):
    """The job fields as options: enqueue's and edit's."""
    p.add_argument("--command", metavar="CMD", help="the shell command")
    p.add_argument("--max-retries", type=int, metavar="N", help="retries after the first run")
    p.add_argument("--priority", type=int, metavar="P", help="higher runs first (default 0)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--run-at", metavar="TS", help="ISO 8601 time to run at (no zone = local time)")
    when.add_argument("--delay", metavar="SECONDS", help="run after this long (30, 30s, 5m, 2h, 1d)")
    p.add_argument("--timeout", metavar="S", help="fail the run after this long (90, 90s, 5m, 2h)")
    p.add_argument("--queue", metavar="Q", help="the named queue (default: default)")
    p.add_argument("--tag", action="append", metavar="T", help="a tag (repeatable)")
    p.add_argument("--env", action="append", metavar="KEY=VALUE", help="add to the environment (repeatable)")
    p.add_argument("--after", action="append", metavar="ID",
                   help="run only once job ID has completed (repeatable)")
    p.add_argument("--after-policy", choices=jobs.AFTER_POLICIES,
                   help="completed (default: a dependency that dies or is cancelled kills this job too) or "
                        "finished (run once they have ended, however)")
    p.add_argument("--unique-key", metavar="K",
                   help="store nothing while an unfinished job holds this key (prints that job's id)")


def job_options(args):
    """The job fields given as options, as raw job fields (the names the JSON uses)."""
    raw = {name: getattr(args, name) for name in ("max_retries", "priority", "run_at", "delay", "timeout", "queue",
                                                  "after_policy", "unique_key")
           if getattr(args, name) is not None}
    if args.tag:
        raw["tags"] = args.tag
    if args.after:
        raw["after"] = args.after
    if args.env:
        raw["env"] = dict(parse_env_pair(pair) for pair in args.env)
    return raw


def enqueue_arguments(p):
    p.add_argument("job", nargs="*", metavar="JOB",
                   help="the job as a JSON object, or a plain shell command; after --, a program and its "
                        "arguments (quoted for the shell)")
    job_option_arguments(p)
    p.add_argument("--id", help="job id (default: generated)")
    p.add_argument("--cwd", metavar="DIR", help="run in this directory (default: the current one)")
    p.add_argument("--file", metavar="PATH", help="JSON Lines file of jobs ('-' = stdin), all or nothing")
    add_json(p)


def job_source(args, given):
    """The job a command's arguments name: (JSON text, None), (None, the shell command), or
    (None, None) for `--file`. JOB is JSON, or a shell command, or after -- a program and its
    arguments (quoted with shlex.join); or --command CMD. Exactly one of them (or --file, where
    the command has it) is a usage error otherwise, and so are job options (`given`) beside JSON."""
    import shlex
    json_text = command = None
    if len(args.job) == 1 and args.job[0].lstrip().startswith("{"):
        json_text = args.job[0]
    elif args.job:
        command = args.job[0] if len(args.job) == 1 else shlex.join(args.job)
    file = getattr(args, "file", None)
    if len([s for s in (json_text, command, args.command, file) if s is not None]) != 1:
        args.parser.error("give exactly one of a JOB (JSON or a command)%s --command%s"
                          % ((",", " or --file") if hasattr(args, "file") else (" or", "")))
    if given and command is None and args.command is None:
        args.parser.error("--%s goes with a command; put it inside the JSON instead"
                          % sorted(given)[0].replace("_", "-").replace("tags", "tag"))
    return json_text, args.command if command is None else command


@command("enqueue", "add a job to the queue",
         "queuectl enqueue 'sleep 1'\n"
         "queuectl enqueue --queue gpu --tag nightly -- python train.py --epochs 3\n"
         "queuectl enqueue '{\"id\": \"job1\", \"command\": \"echo hello\"}'\n"
         "queuectl enqueue --command 'sleep 2' --max-retries 5 --delay 30s\n"
         "queuectl enqueue --id report --after build --unique-key nightly-report 'make report'\n"
         "queuectl enqueue --file jobs.jsonl", enqueue_arguments, allow_abbrev=False)
def cmd_enqueue(args):
    raw = job_options(args)
    raw.update({name: getattr(args, name) for name in ("id", "cwd") if getattr(args, name) is not None})
    json_text, command = job_source(args, raw)
    with open_store(args) as store:
        now = store.now()  # on PostgreSQL the server's clock: due times are never this host's
        default_retries = store.config()["max-retries"]
        try:
            cwd = os.getcwd()
        except OSError:  # deleted under us: only jobs with an absolute cwd can go in
            cwd = None
        if args.file is not None:
            new, numbers = read_job_lines(args.file, now=now, cwd=cwd, default_max_retries=default_retries)
            try:
                ids = store.enqueue(new, now)
            except (DuplicateJob, BadDependency) as exc:
                raise QueueError("line %d: %s (nothing was enqueued)" % (numbers[exc.index], exc)) from None
            for index in ids.conflicts:
                error_line("line %d: job %s holds unique key %r already: nothing stored for it"
                           % (numbers[index], ids[index], new[index]["unique_key"]), "note")
            if args.json:
                print_json({"count": len(ids) - len(ids.conflicts), "ids": ids,
                            "conflicts": [numbers[index] for index in ids.conflicts]})
            else:
                out("enqueued %s" % display.plural(len(ids) - len(ids.conflicts), "job"))
            return EXIT_OK
        if json_text is not None:
            new = jobs.parse_job_json(json_text, now=now, cwd=cwd, default_max_retries=default_retries)
        else:
            raw["command"] = command
            new = jobs.validate_job(raw, now=now, cwd=cwd, default_max_retries=default_retries)
        stored = store.enqueue([new], now)
        job_id = stored[0]
        if stored.conflicts:
            error_line("job %s holds unique key %r already: nothing was stored" % (job_id, new["unique_key"]), "note")
        if args.json:
            print_json(dict(shapes.job(store.get(job_id)), conflict=bool(stored.conflicts)))
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

    Read line by line with bounded memory (see `jobs.parse_job_lines`); the first bad line raises."""
    source = "stdin" if path == "-" else path
    try:
        if path == "-":
            return jobs.parse_job_lines(sys.stdin.buffer, source, now=now, cwd=cwd,
                                        default_max_retries=default_max_retries)
        with open(path, "rb") as fh:
            return jobs.parse_job_lines(fh, source, now=now, cwd=cwd, default_max_retries=default_max_retries)
    except OSError as exc:
        raise QueueError("cannot read %s: %s" % (path, exc.strerror or exc)) from None


def worker_start_arguments(q):
    q.add_argument("--count", type=whole_number_arg(1, 256, "from 1 to 256"), metavar="N",
                   help="worker threads (default: config worker-count)")
    q.add_argument("--burst", action="store_true", help="exit once nothing is runnable and nothing runs")
    q.add_argument("--drain", action="store_true",
                   help="exit once no job of its queues is pending, processing or failed (waits for retries)")
    q.add_argument("--queue", type=queues_arg, metavar="Q[,Q...]", help="serve only these queues (default: all)")
    q.add_argument("--detach", action="store_true", help="run in the background (log: HOME/worker.log)")
    # Also here, where it began; `queuectl --allow-shared-home COMMAND` is the same for every command.
    q.add_argument("--allow-shared-home", action="store_true", default=argparse.SUPPRESS,
                   help="serve a home or database that another user owns or group or others can write (unsafe)")
    q.add_argument("--stop-generation", type=int, help=argparse.SUPPRESS)  # from --detach to its child


@command("worker start", "run worker threads in this process until stopped",
         "queuectl worker start --count 4\nqueuectl worker start --burst\nqueuectl worker start --detach\n"
         "queuectl worker start --queue gpu,io --drain",
         worker_start_arguments)
def cmd_worker_start(args):
    import logging
    from qctl import runner
    from qctl import worker as qworker
    home = args.home
    database(args)  # a bad --db or home: one line now, not in a detached worker's log
    if args.detach:
        argv = [sys.executable, os.path.abspath(__file__), "--home", home, "worker", "start"]
        if args.count:
            argv += ["--count", str(args.count)]
        for flag in ("burst", "drain"):
            if getattr(args, flag):
                argv.append("--" + flag)
        if args.queue:
            argv += ["--queue", ",".join(args.queue)]
        if args.allow_shared_home:
            argv.append("--allow-shared-home")
        # The child reads the stop generation only once it runs: a stop issued before then must reach it.
        with open_store(args) as store:
            argv += ["--stop-generation", str(store.stop_generation())]
        if args.db:  # in the environment, not argv: a URL may hold a password, and argv is public
            os.environ[qhome.DB_ENV] = args.db
        pid = runner.start_detached(argv, qhome.log_path(home))
        out("worker started in the background: pid %d, log %s" % (pid, qhome.log_path(home)))
        return EXIT_OK
    handler = worker_log_handler(sys.stdout)
    logger = logging.getLogger("qctl.worker")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        worker = qworker.Worker(home, db=args.db, threads=args.count, burst=args.burst, drain=args.drain, queues=args.queue,
                                stop_generation=args.stop_generation, allow_shared_home=args.allow_shared_home)
        worker.install_signal_handlers()
        return worker.run()
    finally:
        logger.removeHandler(handler)


def worker_stop_arguments(q):
    q.add_argument("--wait", action="store_true", help="block until they have exited")
    q.add_argument("--timeout", type=duration_arg, metavar="S", help="with --wait: give up after this long (exit 3)")


@command("worker stop", "ask every worker to finish its running jobs and exit",
         "queuectl worker stop --wait --timeout 60", worker_stop_arguments)
def cmd_worker_stop(args):
    if args.timeout is not None and not args.wait:
        args.parser.error("--timeout goes with --wait")
    with open_store(args) as store:
        before = [w["id"] for w in store.live_workers(store.now())]
        store.request_stop()
        out("asked %s to stop" % display.plural(len(before), "worker"))
        if not args.wait:
            return EXIT_OK
        alive = store.wait_workers_gone(before, timeout=args.timeout)
    if alive:
        error_line("timed out: %s still running" % display.plural(len(alive), "worker"))
        return EXIT_TIMEOUT
    out("all stopped")
    return EXIT_OK


@command("worker list", "list live worker processes", "queuectl worker list --json", add_json)
def cmd_worker_list(args):
    with open_store(args) as store:
        now = store.now()
        live = store.live_workers(now)
    if args.json:
        print_json([shapes.worker(w) for w in live])
    elif live:
        out_lines(display.worker_lines(live, now))
    else:
        out("no workers running")
    return EXIT_OK


# ---------------------------------------------------------------- watch and inspect

def filter_arguments(p):
    p.add_argument("--queue", type=queue_arg, metavar="Q", help="only jobs of this queue")
    p.add_argument("--tag", metavar="T", help="only jobs with this tag")


def status_arguments(p):
    filter_arguments(p)
    add_json(p)


@command("status", "show jobs per state and live workers", "queuectl status --json\nqueuectl status --queue gpu",
         status_arguments)
def cmd_status(args):
    with open_store(args) as store:
        status = shapes.status(store.counts(queue=args.queue, tag=args.tag), store.live_workers(store.now()))
    if args.json:
        print_json(status)
    else:
        out_lines(display.status_lines(status, colour()))
    return EXIT_OK


def list_arguments(p):
    p.add_argument("--state", type=state_arg, help="only jobs in this state (%s)" % ", ".join(jobs.STATES))
    filter_arguments(p)
    p.add_argument("--limit", type=limit_arg, default=jobs.DEFAULT_LIST_LIMIT, metavar="N",
                   help="at most N jobs (default %d, 0 = all)" % jobs.DEFAULT_LIST_LIMIT)
    add_json(p)


@command("list", "list jobs, oldest first", "queuectl list --state pending --limit 20", list_arguments)
def cmd_list(args):
    with open_store(args) as store:
        rows = store.list_jobs(state=args.state, queue=args.queue, tag=args.tag, limit=args.limit)
        now = store.now()
    if args.json:
        print_json([shapes.job(r) for r in rows])
    elif rows:
        out_lines(display.job_lines(rows, now, colour()))
    else:
        out("no %sjobs" % (args.state + " " if args.state else ""))
    return EXIT_OK


def id_argument(p):
    p.add_argument("id", metavar="ID")


def show_arguments(p):
    id_argument(p)
    add_json(p)


@command("show", "show one job with every run", "queuectl show job1", show_arguments)
def cmd_show(args):
    with open_store(args) as store:
        row = store.get(args.id)
        shown = shapes.job_with_runs(row, store.job_runs(row))
        now = store.now()
    if args.json:
        print_json(shown)
    else:
        out_lines(display.show_lines(row, shown, now, colour()))
    return EXIT_OK


def logs_arguments(p):
    id_argument(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--run", type=int, metavar="N", help="run number, as 'show' lists them")
    which.add_argument("-f", "--follow", action="store_true",
                       help="print the output as it comes (within a second), through retries, until the job "
                            "is finished; exit 0 if it completed, 1 if dead or cancelled. Ctrl-C stops "
                            "following, not the job")


class FollowSink:
    """Where `logs --follow` writes: the job's stdout and stderr as the command printed them, raw,
    to ours (like `logs`, the user's own output is not escaped), and our own lines, escaped, each
    at the start of a line (of stdout, or of stderr for a note about stderr)."""

    def __init__(self, stdout, stderr):
        self.streams = [self._binary(stdout), self._binary(stderr)]
        self.at_line_start = [True, True]

    @staticmethod
    def _binary(stream):
        binary = getattr(stream, "buffer", None)
        if binary is not None:
            stream.flush()  # what was written as text goes first
            return binary
        import codecs  # a text-only stream (tests' StringIO): decode, a character split across writes too
        decoder = codecs.getincrementaldecoder("utf-8")("replace")

        class Text:
            def write(self, data):
                stream.write(decoder.decode(data))

            def flush(self):
                stream.flush()
        return Text()

    def output(self, i, data):
        self.streams[i].write(data)
        self.at_line_start[i] = data.endswith(b"\n")

    def line(self, text, i=0):
        """One line of ours (display made it safe: `out` would escape it again otherwise)."""
        self.output(i, (("" if self.at_line_start[i] else "\n") + display.printable(text) + "\n").encode(
            "utf-8", "backslashreplace"))

    def flush(self):
        for stream in self.streams:
            stream.flush()


@command("logs", "print the output of a job's latest run (or the N-th), or follow it as it runs",
         "queuectl logs job1 --run 2\nqueuectl logs job1 --follow", logs_arguments)
def cmd_logs(args):
    if args.follow:
        return follow_logs(args)
    with open_store(args) as store:
        row = store.get(args.id)
        runs = store.job_runs(row)
        if args.run is None:
            if not runs:
                out("job %s has not run yet" % args.id)
                return EXIT_OK
            run = runs[-1]
        else:
            matching = [r for r in runs if r["run"] == args.run]
            if not matching:
                raise QueueError("job %r has no run %d (it has run %s)"
                                 % (args.id, args.run, display.plural(len(runs), "time")))
            run = matching[0]
        output = store.run_output(row, run["run"])
    outcome = run["error"] or ("running" if run["finished_at"] is None else "completed")
    out("== job %s, run %d of %d: %s ==" % (args.id, run["run"], len(runs), outcome))
    for name, data in zip(("stdout", "stderr"), output):
        data = data or b""
        out("-- %s%s --" % (name, "" if data else " (empty)"))
        if data:
            text = data.decode("utf-8", "replace")
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


def follow_logs(args):
    from qctl import follow
    sink = FollowSink(sys.stdout, sys.stderr)
    try:
        with open_store(args) as store:
            state = follow.follow(store, args.id, sink)
    except KeyboardInterrupt:  # stop following; the job goes on, untouched
        sink.line("queuectl: stopped following job %s (the job is not affected)" % args.id, 1)
        sink.flush()
        return 130
    return follow.exit_code(state)


def wait_arguments(p):
    p.add_argument("ids", nargs="*", metavar="ID",
                   help="jobs to wait for (default: all); exit 0 if all completed, 1 if any is dead or cancelled")
    p.add_argument("--timeout", type=duration_arg, metavar="S", help="give up after this long (exit 3)")


@command("wait", "wait until jobs are completed, dead or cancelled", "queuectl wait job1 job2 --timeout 5m", wait_arguments)
def cmd_wait(args):
    with open_store(args) as store:
        counts, finished = store.wait_finished(args.ids, timeout=args.timeout)
    if not finished:
        error_line("timed out: %s not finished yet"
                   % display.plural(sum(counts[s] for s in jobs.UNFINISHED_STATES), "job"))
        return EXIT_TIMEOUT
    finished = [counts[s] for s in jobs.FINISHED_STATES]
    out("%s finished: %s" % (display.plural(sum(finished), "job"), ", ".join(
        "%d %s" % (n, s) for n, s in zip(finished, jobs.FINISHED_STATES) if n or s != jobs.CANCELLED)))
    return EXIT_ERROR if counts[jobs.DEAD] or counts[jobs.CANCELLED] else EXIT_OK


@command("stats", "show run counts, failure rates, run times, oldest pending age",
         "queuectl stats\nqueuectl stats --json", add_json)
def cmd_stats(args):
    from qctl import stats as qstats
    with open_store(args) as store:
        figures = qstats.collect(store, store.now())
    if args.json:
        print_json(figures)
    else:
        out_lines(display.stats_lines(figures, colour()))
    return EXIT_OK


def dashboard_arguments(p):
    p.add_argument("--host", default=DASHBOARD_HOST,
                   help="address to listen on (default %s: this machine only)" % DASHBOARD_HOST)
    p.add_argument("--port", type=whole_number_arg(0, 65535, "from 0 to 65535"), default=DASHBOARD_PORT,
                   help="port to listen on (default %d, 0 = any free one)" % DASHBOARD_PORT)
    p.add_argument("--read-only", action="store_true", help="refuse every action (retry): look, don't touch")


@command("dashboard", "serve a monitoring web page, a JSON API and /metrics",
         "queuectl dashboard\nqueuectl dashboard --port 9000 --read-only", dashboard_arguments)
def cmd_dashboard(args):
    from qctl import dashboard
    server = dashboard.make_server(database(args),
                                   host=args.host, port=args.port, read_only=args.read_only)
    try:
        if not dashboard.is_loopback(args.host):
            sys.stderr.write("queuectl: warning: serving on %s, not loopback: anyone who can reach this "
                             "address can see every job%s\n"
                             % (display.printable(args.host),
                                "" if args.read_only else " and retry dead ones (try --read-only)"))
        out("dashboard: %s%s (Ctrl-C to stop)" % (server.url, " read-only" if args.read_only else ""))
        sys.stdout.flush()
        server.serve_forever()
    except KeyboardInterrupt:
        out("dashboard stopped")
    finally:
        server.server_close()
    return EXIT_OK


# ---------------------------------------------------------------- control

def pick_arguments(p, states):
    """IDs, or --all with filters: the jobs cancel and retry act on."""
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="every job matching the filters")
    p.add_argument("--state", type=lambda v: state_in(v, states), metavar="S",
                   help="with --all: only jobs in this state (%s)" % ", ".join(states))
    filter_arguments(p)


def state_in(value, states):
    try:
        return jobs.check_state(value, states)
    except InvalidJob as exc:
        raise argparse.ArgumentTypeError(str(exc))


def picked(args):
    """The ids and filters of `pick_arguments`, checked: ids or --all, never both, never neither."""
    if bool(args.ids) == bool(args.all):
        args.parser.error("give job IDs or --all")
    if args.ids and (args.state or args.queue or args.tag):
        args.parser.error("--state, --queue and --tag go with --all")
    return {"state": args.state, "queue": args.queue, "tag": args.tag}


@command("cancel", "cancel jobs: waiting ones never run, running ones are killed",
         "queuectl cancel job1 job2\nqueuectl cancel --all --queue nightly",
         lambda p: pick_arguments(p, jobs.UNFINISHED_STATES))
def cmd_cancel(args):
    filters = picked(args)
    with open_store(args) as store:
        now_cancelled, asked = store.cancel(args.ids, now=store.now(), **filters)
        for job_id in now_cancelled:
            out("job %s cancelled" % job_id)
        if not asked:
            if args.all and not now_cancelled:
                out("no jobs to cancel")
            return EXIT_OK
        # A running job ends with its worker's kill (within a couple of seconds): say how it ended.
        store.wait_finished(asked, timeout=CANCEL_WAIT_S)
        for job_id in asked:
            state = store.get(job_id)["state"]
            out("job %s %s" % (job_id, {jobs.CANCELLED: "cancelled: its processes were killed",
                                        jobs.PROCESSING: "is being cancelled: its worker has not answered yet"}
                                .get(state, "ended %s before it could be cancelled" % state)))
    return EXIT_OK


@command("retry", "put finished jobs back to pending, attempts reset",
         "queuectl retry job1\nqueuectl retry --all --state cancelled --queue nightly",
         lambda p: pick_arguments(p, jobs.FINISHED_STATES))
def cmd_retry(args):
    filters = picked(args)
    if args.all and not args.state:
        args.parser.error("--all needs --state (%s)" % ", ".join(jobs.FINISHED_STATES))
    with open_store(args) as store:
        ids = store.retry(args.ids, now=store.now(), **filters)
    if args.all:
        out("%s back to pending" % display.plural(len(ids), "job"))
    for job_id in [] if args.all else ids:
        out("job %s back to pending" % job_id)
    return EXIT_OK


def edit_arguments(p):
    id_argument(p)
    job_option_arguments(p)


@command("edit", "change a pending or failed job (validated again as enqueue would)",
         "queuectl edit job1 --priority 5 --delay 10m\nqueuectl edit job1 --tag nightly --tag big",
         edit_arguments)
def cmd_edit(args):
    changes = job_options(args)
    if args.command is not None:
        changes["command"] = args.command
    if not changes:
        args.parser.error("give at least one field to change")
    with open_store(args) as store:
        store.edit(args.id, changes, now=store.now(), default_max_retries=store.config()["max-retries"])
        job = store.get(args.id)
    out("job %s changed: %s" % (args.id, display.job_summary(shapes.job(job))))
    return EXIT_OK


@command("queue list", "list queues: paused, concurrency, jobs per state", "queuectl queue list --json", add_json)
def cmd_queue_list(args):
    with open_store(args) as store:
        queues = store.queues()
    if args.json:
        print_json(queues)
    elif queues:
        out_lines(display.queue_lines(queues, colour()))
    else:
        out("no queues yet")
    return EXIT_OK


def queue_name_argument(p):
    p.add_argument("name", type=queue_arg, metavar="Q")


@command("queue pause", "claim nothing more from a queue (running jobs finish)", "queuectl queue pause nightly",
         queue_name_argument)
def cmd_queue_pause(args):
    return set_queue(args, "queue %s paused", paused=True)


@command("queue resume", "claim from a paused queue again", "queuectl queue resume nightly", queue_name_argument)
def cmd_queue_resume(args):
    return set_queue(args, "queue %s resumed", paused=False)


def queue_set_arguments(p):
    queue_name_argument(p)
    p.add_argument("--concurrency", type=whole_number_arg(0, 1000000, "0 (no limit) or more"), required=True,
                   metavar="N", help="at most N of its jobs processing at once, across all workers (0 = no limit)")


@command("queue set", "limit how many of a queue's jobs run at once", "queuectl queue set gpu --concurrency 1",
         queue_set_arguments)
def cmd_queue_set(args):
    return set_queue(args, "queue %%s: concurrency %s" % (args.concurrency or "unlimited"),
                     concurrency=args.concurrency)


def set_queue(args, said, **change):
    with open_store(args) as store:
        store.set_queue(args.name, **change)
    out(said % args.name)
    return EXIT_OK


# ---------------------------------------------------------------- schedules

def schedule_add_arguments(p):
    p.add_argument("name", type=queue_arg, metavar="NAME", help="1-64 of A-Z a-z 0-9 _ . - (as a queue's)")
    p.add_argument("job", nargs="*", metavar="JOB",
                   help="the job as a JSON object, or a plain shell command; after --, a program and its arguments")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", metavar="DURATION", help="fire this often (90, 90s, 5m, 2h, 1d); first in one interval")
    when.add_argument("--cron", metavar='"M H DOM MON DOW"', help="fire at these local times (standard five fields)")
    p.add_argument("--overlap", action="store_true",
                   help="fire even while the schedule's last job is unfinished (default: skip that fire)")
    job_option_arguments(p)
    p.add_argument("--cwd", metavar="DIR", help="run in this directory (default: the current one)")


@command("schedule add", "enqueue a job at fixed times: every DURATION, or by a cron spec",
         "queuectl schedule add cleanup --every 1h 'find /tmp/app -mtime +1 -delete'\n"
         "queuectl schedule add report --cron '30 6 * * 1-5' --queue reports -- make report",
         schedule_add_arguments, allow_abbrev=False, intermixed=True)
def cmd_schedule_add(args):
    import json
    from qctl import cron
    from qctl.times import iso
    name = args.name
    spec = cron.every_spec(args.every) if args.every is not None else cron.cron_spec(args.cron)
    given = job_options(args)
    json_text, command = job_source(args, given)
    raw = jobs.load_job_json(json_text) if json_text is not None else dict(given, command=command)
    if args.cwd is not None:
        raw["cwd"] = args.cwd
    for field in ("id", "run_at"):
        if raw.get(field) is not None:
            raise InvalidJob("a schedule's job has no %s: each fire makes a new job, at its own time" % field)
    with open_store(args) as store:
        now = store.now()
        job = jobs.validate_job(raw, now=now, default_max_retries=store.config()["max-retries"])
        raw["cwd"] = job["cwd"]  # where it was added: a worker runs it there, wherever the worker runs
        next_at = store.add_schedule(name, spec, json.dumps(raw, sort_keys=True), overlap=args.overlap, now=now)
    out("schedule %s added: %s, next run %s" % (name, cron.describe(spec), iso(next_at)))
    return EXIT_OK


@command("schedule list", "list schedules: spec, next run, last job", "queuectl schedule list --json", add_json)
def cmd_schedule_list(args):
    with open_store(args) as store:
        rows = store.schedules()
        now = store.now()
    if args.json:
        print_json([shapes.schedule(row) for row in rows])
    elif rows:
        out_lines(display.schedule_lines(rows, now))
    else:
        out("no schedules")
    return EXIT_OK


@command("schedule remove", "remove a schedule (the jobs it enqueued stay)", "queuectl schedule remove cleanup",
         lambda p: p.add_argument("name", metavar="NAME"))
def cmd_schedule_remove(args):
    with open_store(args) as store:
        store.remove_schedule(args.name)
    out("schedule %s removed" % args.name)
    return EXIT_OK


# ---------------------------------------------------------------- dead letter queue and clean-up

@command("dlq list", "list dead jobs with their last error", "queuectl dlq list --json", status_arguments)
def cmd_dlq_list(args):
    with open_store(args) as store:
        rows = store.list_jobs(state=jobs.DEAD, queue=args.queue, tag=args.tag, limit=0)
        now = store.now()
    if args.json:
        print_json([shapes.job(r) for r in rows])
    elif rows:
        out_lines(display.dead_job_lines(rows, now))
    else:
        out("the dead letter queue is empty")
    return EXIT_OK


def dlq_retry_arguments(q):
    q.add_argument("id", nargs="?", metavar="ID")
    q.add_argument("--all", action="store_true", help="retry every dead job")


@command("dlq retry", "put dead jobs back to pending with attempts reset",
         "queuectl dlq retry job1\nqueuectl dlq retry --all", dlq_retry_arguments)
def cmd_dlq_retry(args):
    if (args.id is None) == (not args.all):
        args.parser.error("give a job ID or --all")
    with open_store(args) as store:
        if args.all:
            out("%s back to pending" % display.plural(len(store.retry(now=store.now(), only=(jobs.DEAD,))), "job"))
        else:
            store.retry([args.id], now=store.now(), only=(jobs.DEAD,))
            out("job %s back to pending" % args.id)
    return EXIT_OK


@command("delete", "remove a job that is not processing", "queuectl delete job1", id_argument)
def cmd_delete(args):
    with open_store(args) as store:
        store.delete(args.id)
    out("deleted job %s" % args.id)
    return EXIT_OK


def purge_arguments(p):
    p.add_argument("--state", required=True, choices=jobs.FINISHED_STATES, help="which finished jobs to remove")
    p.add_argument("--older-than", type=duration_arg, metavar="SECONDS",
                   help="only jobs finished at least this long ago (30, 5m, 2h, 1d)")


@command("purge", "remove finished jobs (completed, dead or cancelled)", "queuectl purge --state completed --older-than 7d",
         purge_arguments)
def cmd_purge(args):
    with open_store(args) as store:
        count = store.purge(args.state, older_than_s=args.older_than or 0.0, now=store.now())
    out("purged %s" % display.plural(count, args.state + " job"))
    return EXIT_OK


# ---------------------------------------------------------------- settings

def config_get_arguments(q):
    q.add_argument("key", nargs="?", metavar="KEY")
    add_json(q)


@command("config get", "print one setting, or all of them", "queuectl config get backoff-base",
         config_get_arguments)
def cmd_config_get(args):
    with open_store(args) as store:
        values = store.config()
    if args.key is not None:
        key = qconfig.key(args.key)
        if args.json:
            print_json({key: values[key]})
        else:
            out(display.setting_text(values[key]))
        return EXIT_OK
    if args.json:
        print_json(values)
    else:
        for key, value in values.items():
            out("%s = %s" % (key, display.setting_text(value)))
    return EXIT_OK


def config_set_arguments(q):
    q.add_argument("key", metavar="KEY", help=", ".join(qconfig.SETTINGS))
    q.add_argument("value", metavar="VALUE")


@command("config set", "change a setting (running workers pick it up within seconds)",
         "queuectl config set backoff-max 10m", config_set_arguments)
def cmd_config_set(args):
    key = qconfig.key(args.key)
    value = qconfig.value(key, args.value)
    with open_store(args) as store:
        store.set_config(key, value)
    out("%s = %s" % (key, display.setting_text(value)))
    return EXIT_OK


@command("config list", "list settings with defaults and meanings", "queuectl config list", add_json)
def cmd_config_list(args):
    with open_store(args) as store:
        values = store.config()
    if args.json:
        print_json(values)
    else:
        out_lines(display.config_lines(values, qconfig.SETTINGS))
    return EXIT_OK


# ---------------------------------------------------------------- upkeep

@command("init", "create the home and database and say where (no command needs it)", "queuectl init")
def cmd_init(args):
    with open_store(args) as store:
        where = store.path  # a PostgreSQL URL without its password
    out("home %s" % args.home)
    out("database %s" % where)
    return EXIT_OK


@command("check", "check integrity, schema, sizes, permissions and stuck jobs",
         "queuectl check\nqueuectl check --json", add_json)
def cmd_check(args):
    problems = qhome.sharing_problems(args.home)
    with open_store(args, allow_shared=True) as store:
        found, facts = store.check(store.now())
    problems += found
    if args.json:
        print_json(dict(facts, healthy=not problems, problems=problems))
    else:
        line = "database %s: schema version %d, %s" % (facts["path"], facts["schema_version"],
                                                       display.size_text(facts["database_bytes"]))
        if "wal_bytes" in facts:  # SQLite's
            line += ", WAL %s" % display.size_text(facts["wal_bytes"])
        out(line)
        for problem in problems:
            error_line(problem)
        out("healthy" if not problems else display.plural(len(problems), "problem"))
    return EXIT_ERROR if problems else EXIT_OK


def backup_arguments(p):
    p.add_argument("file", metavar="FILE", help="where the copy goes (must not exist)")


@command("backup", "copy the database consistently, even while workers run",
         "queuectl backup /backups/queue-2026-12-01.db", backup_arguments)
def cmd_backup(args):
    with open_store(args) as store:
        store.backup(args.file)
    out("backed up to %s" % args.file)
    return EXIT_OK


def migrate_arguments(p):
    p.add_argument("--to", metavar="URL", required=True, help="an empty PostgreSQL queue: postgresql://...")


@command("migrate", "copy this home's queue (jobs, runs, settings, schedules) to PostgreSQL",
         "queuectl migrate --to postgresql://queuer@db.internal/jobs", migrate_arguments)
def cmd_migrate(args):
    import contextlib
    from qctl.db import Store, is_url, open_store as open_database
    if not is_url(args.to):
        raise QueueError("--to takes a postgresql:// URL")
    with Store(qhome.ensure(args.home, allow_shared=args.allow_shared_home)) as source:
        live = source.live_workers(source.now())
        if live:
            raise QueueError("%s of this home %s running: stop them first (queuectl worker stop --wait), so that "
                             "no job changes while it is copied" % (display.plural(len(live), "worker"),
                                                                    "is" if len(live) == 1 else "are"))
        with open_database(args.to) as target:
            # Closed here, while the source is still open: a copy cut short ends its read snapshot quietly.
            with contextlib.closing(source.export_rows()) as rows:
                counts = target.import_rows(rows)
            where = target.path
    out("copied %s, %s, %s, %s and %s to %s" % (
        display.plural(counts["jobs"], "job"), display.plural(counts["runs"], "run"),
        display.plural(counts["schedules"], "schedule"), display.plural(counts["config"], "setting"),
        display.plural(counts["queues"], "queue setting"), where))
    out("point every command at it: export %s=URL (or --db URL)" % qhome.DB_ENV)
    return EXIT_OK


def completion_arguments(p):
    p.add_argument("shell", nargs="?", choices=("bash", "zsh"),
                   help='the shell; in its rc file: eval "$(queuectl completion bash)"')
    # What the script runs to offer job ids: the newest of these states (comma-separated; all when empty).
    p.add_argument("--ids", nargs="?", const="", metavar="STATES", help=argparse.SUPPRESS)


@command("completion", "print a bash or zsh completion script, built from this parser",
         "queuectl completion bash\nqueuectl completion zsh", completion_arguments)
def cmd_completion(args):
    from qctl import completion
    if args.ids is not None:
        states = [jobs.check_state(state) for state in args.ids.split(",") if state] or [None]
        if not (args.db or os.environ.get(qhome.DB_ENV)) and not os.path.exists(os.path.join(args.home, qhome.DB_NAME)):
            return EXIT_OK  # a Tab press, maybe after a mistyped --home, creates no home
        with open_store(args) as store:
            for state in states:
                out_lines(row["id"] for row in store.list_jobs(state=state, limit=completion.IDS_LIMIT,
                                                               newest_first=True))
        return EXIT_OK
    if args.shell is None:
        args.parser.error("give the shell: bash or zsh")
    # The script runs this very queuectl for job ids, however the user's own `queuectl` is spelt.
    invocation = [sys.executable or "python3", os.path.abspath(__file__)]
    sys.stdout.write(completion.script(args.shell, command_parsers(build_parser()), invocation))
    return EXIT_OK


# ---------------------------------------------------------------- the parser

def add_command(subparsers, name, func, summary, example, **kwargs):
    parser = subparsers.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                                   epilog="example:\n  " + example.replace("\n", "\n  "),
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    parser.set_defaults(func=func, parser=parser)
    return parser


def show_actions(args):
    """A group command without its action (`queuectl worker`): its actions, as -h lists them."""
    out_lines(args.parser.format_help().rstrip().splitlines())
    return EXIT_OK


def chosen_command(argv):
    """The command path that `argv` names, for `build_parser`: ("status",), ("worker", "start"), a
    group alone (("worker",): a bare group, its -h, or an action it lacks), () when no command is
    named (queuectl -h, --version, a bare queuectl), or None when unsure (an unknown command or
    option before it): then the whole tree is built, and argparse says what is wrong as ever."""
    words = iter(argv)
    for word in words:
        if word in ("--home", "--db"):
            value = next(words, None)
            if value is None or value.startswith("-"):
                return None
        elif word.startswith(("--home=", "--db=")) or word == "--allow-shared-home":
            continue
        elif word in ("-h", "--help", "--version"):
            return ()
        elif word.startswith("-"):
            return None
        else:
            break
    else:
        return ()
    names = [name.split(" ") for name, *_ in COMMANDS]
    if [word] in names:
        return (word,)
    if word not in ACTION_GROUPS:
        return None
    action = next(words, None)
    return (word, action) if [word, action] in names else (word,)


def build_parser(path=None):
    """queuectl's parser: every command, or (`path` from `chosen_command`) only what parsing that
    command needs: its own parser and arguments (a group's: every action), or for () the top level
    alone, whose -h lists every command from the summaries in COMMANDS without building them."""
    parser = Parser(
        prog="queuectl", usage="queuectl [-h] [--version] [--home DIR] [--db URL] [--allow-shared-home]\n"
              "                COMMAND ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'queuectl COMMAND -h' for a command's options and examples.\n\nexample:\n"
               "  queuectl enqueue --command 'echo hello'\n  queuectl worker start --burst",
        allow_abbrev=False)
    parser.add_argument("--home", metavar="DIR",
                        help="data directory (default: $QUEUECTL_HOME, else ~/.queuectl)")
    parser.add_argument("--db", metavar="URL",
                        help="a PostgreSQL database instead of the home's SQLite file: postgresql://... "
                             "(default: $QUEUECTL_DB)")
    parser.add_argument("--allow-shared-home", action="store_true",
                        help="use a home or database that another user owns or group or others can write "
                             "(unsafe: they can run commands as you)")
    parser.add_argument("--version", action="version", version="queuectl " + __version__)
    # The flat list of commands is hidden: the description lists them by group instead.
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", help=argparse.SUPPRESS, prog="queuectl")
    sub.required = True
    groups = {}
    for name, summary, example, arguments, handler, options in COMMANDS:
        group, _, action = name.partition(" ")
        if path is not None and (path[:1] != (group,) or path[1:] not in ((), (action,))):
            continue
        target = sub
        if action:
            if group not in groups:
                group_summary, group_example = ACTION_GROUPS[group]
                group_parser = add_command(sub, group, show_actions, group_summary, group_example)
                groups[group] = group_parser.add_subparsers(dest=group + "_command", metavar="ACTION")
            target = groups[group]
        p = add_command(target, action or name, handler, summary, example, **options)
        if arguments is not None:
            arguments(p)
    if not path:  # only these can print the top level's help: a command named takes every word after it
        parser.description = "A background job queue for shell commands.\n\n" + command_list(command_summaries())
    return parser


def command_summaries():
    """{command: its one-line summary} for queuectl's commands, in `queuectl -h` order, from COMMANDS
    alone (a group's from ACTION_GROUPS)."""
    summaries = {}
    for name, summary, *_ in COMMANDS:
        group, _, action = name.partition(" ")
        summaries.setdefault(group, ACTION_GROUPS[group][0] if action else summary)
    return summaries


def grouped_commands(subparsers):
    """The commands of `subparsers` under their COMMAND_GROUPS headings (see `command_list`)."""
    return command_list({action.dest: action.help for action in subparsers._choices_actions})


def command_list(summaries):
    """The commands under their COMMAND_GROUPS headings, each with its one-line summary."""
    import textwrap  # only a help text needs it
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
    # Only the named command's parser is built: building all of them cost every command ~4 ms of
    # start-up (see bench/startup.py).
    parser = build_parser(chosen_command(sys.argv[1:] if argv is None else argv))
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:
            unrecognized(parser)
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
