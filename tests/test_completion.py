"""`queuectl completion bash|zsh`: the scripts are sourced in a real shell and their
completion function is called as the shell would call it, with the words typed so far."""

import os
import shlex
import shutil
import subprocess
import unittest

import queuectl
from qctl import config as qconfig
from qctl import jobs
from tests.base import POSIX, HomeTestCase, add_job, retry_in, run_next

BASH = shutil.which("bash") if POSIX else None
ZSH = shutil.which("zsh") if POSIX else None


class CompletionCommandTest(HomeTestCase):
    def test_a_script_per_shell_and_a_usage_error_without_one(self):
        for shell in ("bash", "zsh"):
            script = self.ok("completion", shell).stdout
            self.assertIn("queuectl completion %s" % shell, script.splitlines()[0])
        self.assertEqual(self.cli("completion").code, 2)
        self.assertEqual(self.cli("completion", "fish").code, 2)

    def test_ids_are_the_newest_of_the_states_asked_for_and_a_missing_home_stays_missing(self):
        store = self.store()
        for job_id in ("old", "new"):
            add_job(store, job_id)
        self.assertEqual(self.ok("completion", "--ids").stdout.split(), ["new", "old"])
        self.assertEqual(self.ok("completion", "--ids", "dead,cancelled").stdout, "")
        missing = os.path.join(self.tmp, "typo")
        self.assertEqual(self.ok("--home", missing, "completion", "--ids").stdout, "")
        self.assertFalse(os.path.exists(missing), "pressing Tab must not create a home")


@unittest.skipUnless(BASH, "needs bash")
class BashCompletionTest(HomeTestCase):
    def setUp(self):
        super().setUp()
        self.script = os.path.join(self.tmp, "queuectl.bash")
        with open(self.script, "w") as fh:
            fh.write(self.ok("completion", "bash").stdout)
        store = self.store()
        add_job(store, "gone-job", now=0, max_retries=0)
        run_next(store, "gone-job", start=1, end=2, error="exit code 1", settings=retry_in(0))
        add_job(store, "waiting-job", now=3)
        self.assertEqual(store.get("gone-job")["state"], jobs.DEAD)

    def complete(self, *queries, env=None):
        """What bash offers for each query (the words typed, the last one being completed),
        calling the function that `complete -p queuectl` names, as bash does on Tab."""
        lines = ["source %s" % shlex.quote(self.script),
                 'read -r _ _ fn _ <<< "$(complete -p queuectl)"',
                 "complete -p queuectl.py >/dev/null || exit 9"]
        for words in queries:
            lines.append("COMP_WORDS=(queuectl %s); COMP_CWORD=%d; COMPREPLY=(); $fn; printf '%%s\\n' \"${COMPREPLY[*]}\""
                         % (" ".join(shlex.quote(w) for w in words), len(words)))
        proc = subprocess.run([BASH, "--norc", "--noprofile", "-c", "\n".join(lines)], capture_output=True, text=True,
                              timeout=60, env=dict(os.environ, QUEUECTL_HOME=self.home, **(env or {})))
        self.assertEqual((proc.returncode, proc.stderr), (0, ""), proc)
        answers = proc.stdout.split("\n")[:-1]
        self.assertEqual(len(answers), len(queries), proc.stdout)
        return [answer.split() for answer in answers]

    def test_every_command_action_and_option_of_the_parser(self):
        tree = list(queuectl.command_parsers(queuectl.build_parser()))
        children = {path: sorted(p[-1] for p, _ in tree if p[:-1] == path and p) for path, _ in tree}
        groups = [(path, names) for path, names in children.items() if names]  # queuectl, worker, dlq, ...
        got = self.complete(*([list(path) + [""] for path, _ in groups] + [list(path) + ["-"] for path, _ in tree]))
        for (path, names), offered in zip(groups, got):
            self.assertEqual(sorted(offered), names, path)
        self.assertIn("completion", got[0])
        self.assertGreaterEqual(len(groups), 5)
        for (path, parser), offered in zip(tree, got[len(groups):]):
            self.assertEqual(sorted(offered), sorted(queuectl.options_of(parser)), path)

    def test_prefixes_values_and_positions(self):
        keys = sorted(qconfig.SETTINGS)
        os.mkdir(os.path.join(self.tmp, "subdir"))
        cases = [
            (["enq"], ["enqueue"]),
            (["worker", "st"], ["start", "stop"]),
            (["worker", "start", "--count", "2", "--dr"], ["--drain"]),
            (["list", "--state", ""], sorted(jobs.STATES)),
            (["list", "--state", "=", "p"], ["pending", "processing"]),  # bash splits --state=p at the =
            (["cancel", "--all", "--state", ""], sorted(jobs.UNFINISHED_STATES)),
            (["purge", "--state", "d"], ["dead"]),
            (["config", "set", ""], keys),
            (["config", "get", "max"], ["max-retries"]),
            (["config", "set", "max-retries", ""], []),
            (["completion", ""], ["bash", "zsh"]),
            (["enqueue", "--cwd", os.path.join(self.tmp, "sub")], [os.path.join(self.tmp, "subdir")]),
            (["--home", os.path.join(self.tmp, "sub")], [os.path.join(self.tmp, "subdir")]),
            (["enqueue", "--", "python", "-"], []),
            (["frobnicate", "-"], []),
        ]
        got = self.complete(*[words for words, _ in cases])
        for (words, expected), offered in zip(cases, got):
            self.assertEqual(sorted(offered), expected, words)

    def test_job_ids_from_the_queue_of_the_right_states(self):
        other = os.path.join(self.tmp, "other")
        self.ok("--home", other, "enqueue", "--id", "elsewhere", "true")
        cases = [
            (["show", ""], ["gone-job", "waiting-job"]),
            (["logs", "wa"], ["waiting-job"]),
            (["wait", "gone-job", ""], ["gone-job", "waiting-job"]),
            (["show", "gone-job", ""], []),
            (["dlq", "retry", ""], ["gone-job"]),
            (["retry", ""], ["gone-job"]),
            (["cancel", ""], ["waiting-job"]),
            (["edit", ""], ["waiting-job"]),
            (["--home", other, "show", ""], ["elsewhere"]),
            (["--home=" + other, "delete", ""], ["elsewhere"]),
        ]
        got = self.complete(*[words for words, _ in cases])
        for (words, expected), offered in zip(cases, got):
            self.assertEqual(sorted(offered), expected, words)


@unittest.skipUnless(ZSH, "needs zsh")
class ZshCompletionTest(HomeTestCase):
    def test_the_script_parses_and_its_walk_reads_the_words_in_zsh(self):
        script = os.path.join(self.tmp, "queuectl.zsh")
        with open(script, "w") as fh:
            fh.write(self.ok("completion", "zsh").stdout)
        proc = subprocess.run([ZSH, "-n", script], capture_output=True, text=True, timeout=60)
        self.assertEqual((proc.returncode, proc.stderr), (0, ""))
        add_job(self.store(), "zsh-job")
        # The walk shared with bash, under zsh's own rules (arrays from 1, no word splitting,
        # $path tied to $PATH); compadd and _files need a live line editor, so they are not called.
        body = "\n".join([
            "autoload -Uz compinit && compinit -u -D",
            "source %s" % shlex.quote(script),
            "(( $+_comps[queuectl] )) || exit 9",
            "_queuectl_complete 1 queuectl enq; print -r -- \"$_qc_kind|$_qc_words\"",
            "_queuectl_complete 2 queuectl list --state=p; print -r -- \"$_qc_kind|$_qc_prefix|$_qc_cur|$_qc_words\"",
            "_queuectl_complete 3 queuectl config set ''; print -r -- \"$_qc_kind|$_qc_words\"",
            "_queuectl_complete 2 queuectl show ''; print -r -- \"$_qc_kind|${(f)_qc_words}\"",
        ])
        proc = subprocess.run([ZSH, "-f", "-c", body], capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, QUEUECTL_HOME=self.home, HOME=self.tmp))
        self.assertEqual((proc.returncode, proc.stderr), (0, ""), proc)
        lines = proc.stdout.splitlines()
        self.assertTrue(lines[0].startswith("w|enqueue worker "), lines)
        self.assertEqual(lines[1], "w|--state=|p|" + " ".join(jobs.STATES))
        self.assertEqual(lines[2], "w|" + " ".join(qconfig.SETTINGS))
        self.assertEqual(lines[3], "ids|zsh-job")


if __name__ == "__main__":
    unittest.main()
