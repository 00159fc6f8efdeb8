"""Human output: tables that fit the terminal, relative times, colour only for a terminal."""

import json
import os
import subprocess
import sys
import time
import unittest
from unittest import mock

from qctl import display
from tests.base import DEADLINE_S, SCRIPT, HomeTestCase

LONG_ID = "build-" + "x" * 194  # 200 characters, the longest id there is
LONG_COMMAND = "python -c 'print(42)' && " + "echo step; " * 40


class LayoutTest(unittest.TestCase):
    def test_display_width(self):
        self.assertEqual(display.display_width("pending"), 7)
        self.assertEqual(display.display_width("\x1b[33mpending\x1b[0m"), 7)
        self.assertEqual(display.display_width("日本"), 4)
        self.assertEqual(display.display_width("e\u0301"), 1)  # e + combining acute

    def test_fit(self):
        self.assertEqual(display.fit("abcdef", 6), "abcdef")
        self.assertEqual(display.fit("abcdefg", 6), "abcde\u2026")
        self.assertEqual(display.fit("日本語です", 6), "日本\u2026")  # 2 + 2 + 1: no room for a third
        self.assertLessEqual(display.display_width(display.fit("日本語です", 6)), 6)

    def test_widest_flexible_column_gives_way_first(self):
        lines = display.layout(["ID", "N", "COMMAND"], [["job-1", 3, "c" * 200]], width=40, flex=(2, 0))
        self.assertEqual(lines[1], "job-1  3  " + "c" * 29 + "\u2026")
        self.assertTrue(all(len(line) <= 40 for line in lines), lines)

    def test_two_long_columns_share_the_width(self):
        lines = display.layout(["ID", "COMMAND"], [["i" * 100, "c" * 100]], width=42, flex=(1, 0))
        self.assertEqual(lines[1], "i" * 19 + "\u2026  " + "c" * 19 + "\u2026")

    def test_right_alignment_and_colour_codes_do_not_count(self):
        lines = display.layout(["STATE", "JOBS"], [[display.paint_state("dead", True), 7], ["pending", 12]],
                               width=80, right=(1,))
        self.assertEqual(lines, ["STATE    JOBS", "\x1b[31mdead\x1b[0m        7", "pending    12"])

    def test_fixed_columns_are_never_cut(self):
        lines = display.layout(["A", "B"], [["a" * 50, "b" * 50]], width=40, flex=1)
        self.assertEqual(lines[1], "a" * 50 + "  " + "bbbb\u2026")

    def test_printable_escapes_exactly_the_control_characters(self):
        from qctl.jobs import is_control
        for code in list(range(0x3000)) + [0xfeff, 0x10ffff]:
            ch = chr(code)
            self.assertEqual(display.printable(ch) != ch, is_control(ch), hex(code))
        painted = display.paint_state("dead", True)
        self.assertIs(display.printable(painted), painted)  # our own colour codes stay
        line = display.layout(["A", "B"], [[painted, "x\x1by"]], width=80)[1]
        self.assertEqual(line, "\x1b[31mdead\x1b[0m  x\\x1by")

    def test_control_characters_are_shown_not_obeyed(self):
        self.assertEqual(display.one_line("echo \x1b[2J\n  done\t!"), "echo \\x1b[2J done !")
        self.assertEqual(display.printable("a\nb\x07", keep="\n"), "a\nb\\x07")

    def test_ago(self):
        now = 1000000.0
        for stamp, text in ((now, "now"), (now - 0.4, "now"), (now - 12, "12s ago"), (now + 4.5, "in 4s"),
                            (now - 150, "2m ago"), (now - 7300, "2h ago"), (now + 3 * 86400, "in 3d"),
                            (None, "-")):
            with self.subTest(stamp=stamp):
                self.assertEqual(display.ago(stamp, now), text)


class ColourDecisionTest(unittest.TestCase):
    def test_only_terminals_get_colour(self):
        with open(os.devnull, "w") as not_a_tty:
            self.assertFalse(display.colour_enabled(not_a_tty, {}))

    @unittest.skipUnless(hasattr(os, "openpty"), "needs a pseudo-terminal")
    def test_terminal_rules(self):
        master, slave = os.openpty()
        self.addCleanup(os.close, master)
        with open(slave, "w") as tty:
            self.assertTrue(display.colour_enabled(tty, {}, windows=False))
            self.assertFalse(display.colour_enabled(tty, {"NO_COLOR": "1"}, windows=False))
            self.assertTrue(display.colour_enabled(tty, {"NO_COLOR": ""}, windows=False))  # set but empty: ignored
            self.assertFalse(display.colour_enabled(tty, {"TERM": "dumb"}, windows=False))
            # The classic Windows console prints escape codes as text; Windows Terminal does not.
            self.assertFalse(display.colour_enabled(tty, {}, windows=True))
            self.assertTrue(display.colour_enabled(tty, {"WT_SESSION": "1"}, windows=True))


class ListOutputTest(HomeTestCase):
    def setUp(self):
        super().setUp()
        self.ok("enqueue", "--id", LONG_ID, "--command", LONG_COMMAND)
        self.ok("enqueue", "--id", "short", "--command", "echo 日本語のコマンド " * 10)
        self.ok("enqueue", "--id", "soon", "--command", "true", "--delay", "1h")

    def assert_fits(self, text, width):
        for line in text.splitlines():
            self.assertLessEqual(display.display_width(line), width, line)

    def test_list_fits_80_columns(self):
        with mock.patch.dict(os.environ, {"COLUMNS": "80"}):
            result = self.ok("list")
            dead = self.ok("dlq", "list")
        self.assertEqual(len(result.stdout.splitlines()), 4, result.stdout)
        self.assert_fits(result.stdout, 80)
        self.assertIn("\u2026", result.stdout)
        self.assertNotIn("\x1b", result.stdout)  # not a terminal: no colour
        self.assert_fits(dead.stdout, 80)

    def test_list_uses_a_wider_terminal(self):
        with mock.patch.dict(os.environ, {"COLUMNS": "1000"}):
            result = self.ok("list", "--limit", "1")
        self.assertIn(LONG_ID + "  pending", result.stdout)
        self.assertTrue(result.stdout.endswith(LONG_COMMAND.strip() + "\n"), result.stdout)

    def test_show_prints_the_whole_command(self):
        with mock.patch.dict(os.environ, {"COLUMNS": "80"}):
            result = self.ok("show", LONG_ID)
        self.assertIn("command      %s\n" % LONG_COMMAND, result.stdout)
        self.assertIn("id           %s\n" % LONG_ID, result.stdout)

    def test_json_is_whole_and_plain(self):
        with mock.patch.dict(os.environ, {"COLUMNS": "80"}):
            result = self.ok("list", "--json")
        self.assertEqual([job["command"] for job in json.loads(result.stdout)][0], LONG_COMMAND)


@unittest.skipUnless(os.name == "posix", "pseudo-terminals are POSIX only")
class TerminalColourTest(HomeTestCase):
    def run_in_pty(self, *argv, env=None):
        """Run queuectl with its stdout on a pseudo-terminal; return (exit code, stdout text)."""
        import pty
        import select
        full_env = dict(os.environ, QUEUECTL_HOME=self.home, COLUMNS="80", TERM="xterm")
        full_env.pop("NO_COLOR", None)
        full_env.update(env or {})
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen([sys.executable, SCRIPT] + list(argv), stdin=subprocess.DEVNULL, stdout=slave,
                                    stderr=subprocess.DEVNULL, env=full_env)
        finally:
            os.close(slave)
        self.addCleanup(proc.wait)
        chunks, deadline = [], time.monotonic() + DEADLINE_S
        try:
            while True:
                ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    proc.kill()
                    self.fail("queuectl %s wrote no end of output in %ss" % (" ".join(argv), DEADLINE_S))
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
        finally:
            os.close(master)
        return proc.wait(DEADLINE_S), b"".join(chunks).decode().replace("\r\n", "\n")

    def setUp(self):
        super().setUp()
        self.ok("enqueue", "--id", "a", "--command", "true")

    def test_a_terminal_gets_coloured_states(self):
        code, text = self.run_in_pty("list")
        self.assertEqual(code, 0)
        self.assertIn("\x1b[33mpending\x1b[0m", text)
        code, text = self.run_in_pty("status")
        self.assertIn("\x1b[31mdead\x1b[0m", text)

    def test_no_color_turns_it_off(self):
        code, text = self.run_in_pty("list", env={"NO_COLOR": "1"})
        self.assertEqual(code, 0)
        self.assertIn("pending", text)
        self.assertNotIn("\x1b", text)

    def test_json_on_a_terminal_is_plain_json(self):
        for argv in (("list", "--json"), ("status", "--json"), ("show", "a", "--json")):
            with self.subTest(argv=argv):
                code, text = self.run_in_pty(*argv)
                self.assertEqual(code, 0)
                self.assertNotIn("\x1b", text)
                json.loads(text)


if __name__ == "__main__":
    unittest.main()
