"""Every command's -h has a one-line description and examples that parse (after sqlite-utils'
tests/test_docs.py); `queuectl -h` lists every command under a group. This walks the
parser, so commands added later are held to the same bar."""

import argparse
import contextlib
import io
import shlex
import unittest

import queuectl
from tests.base import HomeTestCase


def walk(parser, path=("queuectl",)):
    """(command path, parser) for every subcommand at any depth."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), sub
                yield from walk(sub, path + (name,))


def examples(parser):
    _, found, block = (parser.epilog or "").partition("example:\n")
    return [line.strip() for line in block.splitlines() if line.strip()] if found else []


class HelpTest(unittest.TestCase):
    def setUp(self):
        self.parser = queuectl.build_parser()
        self.commands = list(walk(self.parser))

    def test_the_walk_finds_nested_commands(self):
        paths = {" ".join(path) for path, _ in self.commands}
        self.assertTrue({"queuectl enqueue", "queuectl dlq retry", "queuectl worker start"} <= paths, paths)

    def test_every_command_has_a_one_line_description(self):
        for path, parser in self.commands:
            with self.subTest(command=" ".join(path)):
                text = parser.description or ""
                self.assertTrue(text.strip(), "no description")
                self.assertNotIn("\n", text.strip(), "the description is more than one line")
                self.assertLessEqual(len(text), 78, "the description does not fit a terminal line")

    def test_every_command_has_examples_that_parse(self):
        for path, parser in self.commands:
            with self.subTest(command=" ".join(path)):
                found = examples(parser)
                self.assertTrue(found, "no 'example:' section in its epilog")
                for line in found:
                    argv = shlex.split(line)
                    self.assertEqual(argv[:len(path)], list(path), "example of another command: %s" % line)
                    stderr = io.StringIO()
                    try:
                        with contextlib.redirect_stderr(stderr):
                            queuectl.build_parser().parse_args(argv[1:])
                    except SystemExit:
                        self.fail("example %r does not parse: %s" % (line, stderr.getvalue().strip()))

    def test_top_level_help_lists_every_command_under_a_group(self):
        top = self.parser.format_help()
        self.assertNotIn("\nother:", top, "a command has no group in queuectl.COMMAND_GROUPS")
        for path, _ in self.commands:
            if len(path) == 2:
                self.assertRegex(top, r"\n  %s +\S" % path[1])
        for line in top.splitlines():
            self.assertLessEqual(len(line), 80, line)
        self.assertTrue(examples(self.parser))

    def test_an_ungrouped_command_still_shows(self):
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        queuectl.add_command(sub, "list", None, "list jobs", "queuectl list")
        queuectl.add_command(sub, "frobnicate", None, "a command nobody grouped", "queuectl frobnicate")
        queuectl.add_command(sub, "explain", None, "a summary long enough to need a second line in an 80-column "
                             "terminal, indented under the first", "queuectl explain")
        text = queuectl.grouped_commands(sub)
        self.assertIn("watch and inspect:\n  list        list jobs\n", text)
        self.assertIn("other:\n  frobnicate  a command nobody grouped\n  explain     a summary long enough to need a "
                      "second line in an 80-column\n              terminal, indented under the first", text)


class HelpOutputTest(HomeTestCase):
    def test_dash_h_prints_description_and_example(self):
        result = self.cli("worker", "start", "-h")
        self.assertEqual(result.code, 0)
        self.assertTrue(result.stdout.startswith("usage: queuectl worker start "), result.stdout)
        self.assertIn("\nRun worker threads in this process until stopped.\n", result.stdout)
        self.assertIn("\nexample:\n  queuectl worker start --count 4\n", result.stdout)

    def test_no_command_is_a_usage_error(self):
        result = self.cli()
        self.assertEqual(result.code, 2)
        self.assertIn("usage: queuectl", result.stderr)


if __name__ == "__main__":
    unittest.main()
