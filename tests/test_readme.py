"""The README's shell lines (`$ python queuectl.py ...` in its ``` blocks) run in order, in a
temporary home and working directory, and exit as the README says: 0, or the code its
comment gives (`# exit 1`). So the README cannot drift from the command line (after
sqlite-utils' tests/test_docs.py). They run in-process, as `main(argv)`, to stay fast."""

import contextlib
import faulthandler
import io
import os
import re
import shlex
import signal
import tempfile
import unittest

import queuectl
from tests.base import POSIX, ROOT

README = os.path.join(ROOT, "README.md")
PROMPT = "$ python queuectl.py "
FIRST_SCREEN_LINES = 45
LINE_DEADLINE_S = 60  # a README line that hangs fails the run with a traceback instead of hanging it

# README lines that cannot run in a test, and why. Keep it short: fix a line rather than skip it.
SKIP = {
    ("dashboard",): "serves until Ctrl-C",
    ("worker", "start", "--detach"): "leaves a worker running in the background after the test",
    ("logs", "deploy", "--follow"): "shows a job with a retry that is not part of the README's flow",
}


def readme_lines(text):
    """(line number, argv after queuectl.py, expected exit code) for each shell line of the
    README's ``` blocks, and {name: text} of the files its `$ cat NAME` blocks show."""
    commands, files = [], {}
    fenced, shown = False, None
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fenced, shown = not fenced, None
            continue
        if not fenced:
            continue
        if line.startswith("$ "):
            shown = None
            if line.startswith("$ cat "):
                shown = line[len("$ cat "):].strip()
                files[shown] = ""
            elif line.startswith(PROMPT):
                expected = re.search(r"#\s*exit (\d+)", line)
                commands.append((number, shlex.split(line[len(PROMPT):], comments=True),
                                 int(expected.group(1)) if expected else 0))
        elif shown is not None:
            files[shown] += line + "\n"
    return commands, files


@unittest.skipUnless(POSIX, "the README's lines are POSIX shell (quoting, sleep, /bin/sh)")
class ReadmeTest(unittest.TestCase):
    def setUp(self):
        with open(README, encoding="utf-8") as fh:
            self.text = fh.read()
        self.commands, self.files = readme_lines(self.text)

    def test_every_shell_line_runs_and_exits_as_it_says(self):
        tmp = tempfile.TemporaryDirectory(prefix="qctl-readme-")
        self.addCleanup(tmp.cleanup)
        work = os.path.join(tmp.name, "work")
        os.mkdir(work)
        for name, content in self.files.items():
            with open(os.path.join(work, name), "w", encoding="utf-8") as fh:
                fh.write(content)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(work)
        old_home = os.environ.get("QUEUECTL_HOME")
        self.addCleanup(lambda: os.environ.pop("QUEUECTL_HOME", None) if old_home is None
                        else os.environ.__setitem__("QUEUECTL_HOME", old_home))
        os.environ["QUEUECTL_HOME"] = os.path.join(tmp.name, "home")
        self.assertGreater(len(self.commands), 30, "the README's shell lines were not found")
        skipped = set()
        for number, argv, expected in self.commands:
            skip = [prefix for prefix in SKIP if tuple(argv[:len(prefix)]) == prefix]
            if skip:
                skipped.add(skip[0])
                continue
            code, out, err = self.run_line(argv)
            self.assertEqual(code, expected, "README.md line %d: $ python queuectl.py %s\n%s%s"
                             % (number, shlex.join(argv), out[-2000:], err[-2000:]))
        self.assertEqual(skipped, set(SKIP), "a skipped line is gone from the README: drop it from SKIP")

    def run_line(self, argv):
        out, err = io.StringIO(), io.StringIO()
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        faulthandler.dump_traceback_later(LINE_DEADLINE_S, exit=True)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = queuectl.main(argv)
        finally:
            faulthandler.cancel_dump_traceback_later()
            for signum, handler in handlers.items():  # a worker's line installs its own
                signal.signal(signum, handler)
        return code, out.getvalue(), err.getvalue()

    def test_the_first_screen_answers_what_newcomers_ask(self):
        first = "\n".join(self.text.splitlines()[:FIRST_SCREEN_LINES])
        for answer in ("Nothing to install", "~/.queuectl", "--detach", "wait", "--drain", "max_retries 2",
                       "Celery", "RQ", "Sidekiq", "pueue", "task-spooler"):
            self.assertIn(answer, first)


if __name__ == "__main__":
    unittest.main()
