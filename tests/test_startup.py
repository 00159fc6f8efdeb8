"""Start-up stays small: a command builds only its own parser and imports only what it uses
(bench/startup.py has the figures). The lazily built parsers must say exactly what the whole
tree says, so -h, usage errors and completion are unchanged."""

import json
import subprocess
import sys
import unittest

import queuectl
from tests.base import SCRIPT, HomeTestCase

# What `status` must not import: the modules of other commands and the stdlib they need.
NOT_FOR_STATUS = ("qctl.dashboard", "qctl.worker", "qctl.runner", "qctl.proctree", "qctl.follow", "qctl.stats",
                  "qctl.completion", "qctl.api", "json", "shlex", "difflib", "textwrap", "logging", "typing",
                  "subprocess", "http.server", "concurrent.futures")

# Runs queuectl.py as `python queuectl.py` does and prints the modules it imported (not those the
# interpreter's site had imported already).
# Not through runpy: it imports pkgutil, and with it typing, where site has not already (a venv).
PROBE = """
import os, sys
before = set(sys.modules)
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
with open(sys.argv[0], encoding="utf-8") as fh:
    code = compile(fh.read(), sys.argv[0], "exec")
try:
    exec(code, {"__name__": "__main__", "__file__": sys.argv[0]})
except SystemExit:
    pass
sys.stderr.write("\\nIMPORTED " + " ".join(sorted(set(sys.modules) - before)) + "\\n")
"""


class LazyImportTest(HomeTestCase):
    def imported(self, *argv):
        proc = subprocess.run([sys.executable, "-c", PROBE, SCRIPT, "--home", self.home] + list(argv),
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return set(proc.stderr.rpartition("\nIMPORTED ")[2].split())

    def test_status_imports_only_what_it_uses(self):
        imported = self.imported("status")
        self.assertIn("qctl.db", imported)  # the probe sees what it should
        self.assertEqual(sorted(set(NOT_FOR_STATUS) & imported), [])

    def test_status_json_imports_json_and_still_no_worker(self):
        imported = self.imported("status", "--json")
        self.assertIn("json", imported)
        self.assertNotIn("qctl.worker", imported)
        self.assertNotIn("qctl.dashboard", imported)


class LazyParserTest(unittest.TestCase):
    def setUp(self):
        self.full = dict(queuectl.command_parsers(queuectl.build_parser()))

    def test_chosen_command(self):
        cases = {(): (), ("-h",): (), ("--version",): (), ("--home", "h", "--help", "status"): (),
                 ("status", "--json"): ("status",), ("--home", "h", "status"): ("status",),
                 ("--home=h", "--allow-shared-home", "list"): ("list",),
                 ("worker", "start", "--count", "2"): ("worker", "start"), ("dlq", "retry", "--all"): ("dlq", "retry"),
                 ("worker",): ("worker",), ("worker", "-h", "start"): ("worker",), ("worker", "--count", "2"): ("worker",),
                 ("worker", "begin"): ("worker",),
                 ("bogus",): None, ("--bogus", "status"): None, ("--home",): None, ("--home", "-h"): None}
        for argv, path in cases.items():
            self.assertEqual(queuectl.chosen_command(list(argv)), path, argv)

    def test_a_command_builds_its_own_parser_alone(self):
        self.assertEqual([path for path, _ in queuectl.command_parsers(queuectl.build_parser(("status",)))],
                         [(), ("status",)])
        self.assertEqual([path for path, _ in queuectl.command_parsers(queuectl.build_parser(("worker", "start")))],
                         [(), ("worker",), ("worker", "start")])
        self.assertEqual([path for path, _ in queuectl.command_parsers(queuectl.build_parser(()))], [()])

    def test_lazy_parsers_say_what_the_whole_tree_says(self):
        self.assertEqual(queuectl.build_parser(()).format_help(), self.full[()].format_help())
        for path, parser in self.full.items():
            if path:
                with self.subTest(command=" ".join(path)):
                    lazy = dict(queuectl.command_parsers(queuectl.build_parser(path[:2])))[path]
                    self.assertEqual(lazy.format_help(), parser.format_help())
                    self.assertEqual(queuectl.chosen_command(list(path) + ["-h"]), path)


class LazyCliTest(HomeTestCase):
    def test_hints_still_name_the_command_an_option_belongs_to(self):
        result = self.cli("worker", "--count", "2")
        self.assertEqual(result.code, 2)
        self.assertIn("--count belongs to 'worker start' (queuectl worker start --count 2)", result.stderr)
        result = self.cli("status", "--home", "x")
        self.assertEqual(result.code, 2)
        self.assertIn("--home goes before the command", result.stderr)

    def test_an_unknown_command_lists_every_command(self):
        result = self.cli("bogus")
        self.assertEqual(result.code, 2)
        for name in ("enqueue", "worker", "status", "dlq", "completion"):
            self.assertIn("'%s'" % name, result.stderr)

    def test_status_json_unchanged(self):
        status = json.loads(self.ok("status", "--json").stdout)
        self.assertEqual(status["workers"], {"processes": 0, "threads": 0})


if __name__ == "__main__":
    unittest.main()
