"""Windows branches are built and checked on every platform, and no POSIX-only call
runs without a platform guard."""

import ast
import os
import subprocess
import sys
import time
import unittest

from qctl import runner
from tests.base import ROOT

# Calls and names that exist only on POSIX, or (os.kill) do something else on Windows:
# os.kill(pid, 0) there terminates the process instead of probing it.
POSIX_ONLY_ATTRIBUTES = {
    "os": {"killpg", "kill", "getuid", "geteuid", "getgid", "getegid", "getpgid", "setsid", "setpgrp", "fork",
           "forkpty", "getloadavg", "sync", "mkfifo", "WNOHANG", "wait3", "wait4"},
    "signal": {"SIGKILL", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGCHLD", "SIGALRM", "SIGQUIT", "SIGPIPE", "SIGCONT",
               "SIGSTOP", "SIGTSTP", "alarm", "setitimer", "pthread_kill", "pthread_sigmask", "siginterrupt"},
    # Windows' Python has no Unix sockets: workers there are not woken, they poll (qctl/wake.py).
    "socket": {"AF_UNIX"},
    "_socket": {"AF_UNIX"},
}
POSIX_ONLY_MODULES = {"fcntl", "pwd", "grp", "resource", "termios", "tty", "pty", "posix", "syslog"}
POSIX_ONLY_KEYWORDS = {"start_new_session", "preexec_fn", "pass_fds", "restore_signals", "process_group"}


def source_files():
    names = [os.path.join(ROOT, "queuectl.py")]
    for folder, dirs, files in os.walk(os.path.join(ROOT, "qctl")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        names += [os.path.join(folder, f) for f in files if f.endswith(".py")]
    return sorted(names)


def is_platform_test(node):
    """Whether an expression looks at the platform: POSIX/WINDOWS/LINUX flags, os.name, sys.platform, hasattr."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id.lower() in ("posix", "windows", "is_windows", "is_posix", "linux"):
            return True
        if isinstance(sub, ast.Attribute) and (sub.attr in ("platform", "POSIX", "WINDOWS") or (
                sub.attr == "name" and isinstance(sub.value, ast.Name) and sub.value.id == "os")):
            return True
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "hasattr":
            return True
    return False


def line_of(node, parents):
    """The node's line; a keyword argument has none before Python 3.9: its call's line."""
    while not hasattr(node, "lineno"):
        node = parents[node]
    return node.lineno


def guarded(node, parents):
    """A use is guarded inside an if/else on the platform, a try that catches ImportError or
    AttributeError, or a function that returns early on such an if (`if not POSIX: ... return`)."""
    child = node
    while child in parents:
        parent = parents[child]
        if isinstance(parent, (ast.If, ast.IfExp, ast.While)) and child is not parent.test and \
                is_platform_test(parent.test):
            return True
        if isinstance(parent, ast.Try) and child in parent.body and any(
                handler.type is not None and {"ImportError", "ModuleNotFoundError", "AttributeError"} &
                {n.id for n in ast.walk(handler.type) if isinstance(n, ast.Name)} for handler in parent.handlers):
            return True
        if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for statement in parent.body:
                if statement is child or (hasattr(statement, "lineno") and statement.lineno >= line_of(node, parents)):
                    break
                if isinstance(statement, ast.If) and is_platform_test(statement.test) and any(
                        isinstance(s, (ast.Return, ast.Raise)) for s in ast.walk(statement)):
                    return True
        child = parent
    return False


def unguarded_posix_calls(path):
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    found = []
    for node in ast.walk(tree):
        what = None
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.attr in POSIX_ONLY_ATTRIBUTES.get(node.value.id, ()):
            what = "%s.%s" % (node.value.id, node.attr)
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] in POSIX_ONLY_MODULES for a in node.names):
            what = "import " + ", ".join(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in POSIX_ONLY_MODULES:
            what = "from %s import" % node.module
        elif isinstance(node, ast.keyword) and node.arg in POSIX_ONLY_KEYWORDS:
            what = "%s=" % node.arg
        elif isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value in POSIX_ONLY_KEYWORDS
                                                for k in node.keys):
            what = "a %r Popen option" % next(k.value for k in node.keys if isinstance(k, ast.Constant) and
                                              k.value in POSIX_ONLY_KEYWORDS)
        if what and not guarded(node, parents):
            found.append("%s:%d: %s" % (os.path.relpath(path, ROOT), line_of(node, parents), what))
    return found


class PosixAuditTest(unittest.TestCase):
    def test_no_unguarded_posix_only_call(self):
        found = [line for path in source_files() for line in unguarded_posix_calls(path)]
        self.assertEqual(found, [], "POSIX-only calls without a platform guard and a Windows path")

    def test_the_audit_catches_what_it_should(self):
        sample = os.path.join(self.tmp_dir(), "sample.py")
        with open(sample, "w", encoding="utf-8") as fh:
            fh.write("import os, signal, subprocess\nimport fcntl\n"
                     "def f(pid):\n    os.killpg(pid, signal.SIGKILL)\n"
                     "def g(cmd):\n    return subprocess.Popen(cmd, start_new_session=True)\n"
                     "def ok(pid):\n    if not POSIX:\n        return None\n    os.kill(pid, 0)\n"
                     "def ok2():\n    return {'start_new_session': True} if posix else {}\n"
                     "def ok3(pid):\n    if not LINUX:\n        return\n    os.kill(pid, signal.SIGKILL)\n"
                     "try:\n    import pwd\nexcept ImportError:\n    pwd = None\n")
        self.assertEqual([line.split(": ", 1)[1] for line in unguarded_posix_calls(sample)],
                         ["import fcntl", "os.killpg", "signal.SIGKILL", "start_new_session="])

    def tmp_dir(self):
        import tempfile
        tmp = tempfile.TemporaryDirectory(prefix="qctl-audit-")
        self.addCleanup(tmp.cleanup)
        return tmp.name


class WindowsBranchTest(unittest.TestCase):
    def test_command_popen_options(self):
        self.assertEqual(runner.popen_options(posix=True), {"start_new_session": True})
        windows = runner.popen_options(posix=False)
        self.assertEqual(list(windows), ["creationflags"])
        self.assertEqual(windows["creationflags"], 0x00000200 | 0x08000000)  # new group, no console window

    def test_detach_options(self):
        self.assertEqual(runner.detach_options(posix=True), {"start_new_session": True})
        self.assertEqual(runner.detach_options(posix=False), {"creationflags": 0x00000200 | 0x00000008})

    @unittest.skipUnless(hasattr(subprocess, "CREATE_NO_WINDOW"), "the constants exist on Windows only")
    def test_flags_match_the_platform_constants(self):
        self.assertEqual(runner.CREATE_NEW_PROCESS_GROUP, subprocess.CREATE_NEW_PROCESS_GROUP)
        self.assertEqual(runner.DETACHED_PROCESS, subprocess.DETACHED_PROCESS)
        self.assertEqual(runner.CREATE_NO_WINDOW, subprocess.CREATE_NO_WINDOW)

    def test_kill_tree_argv(self):
        self.assertEqual(runner.kill_tree_argv(4242), ["taskkill", "/T", "/F", "/PID", "4242"])

    def test_thread_reader_collects_both_streams(self):
        # Windows reads pipes with one thread per stream; that code runs anywhere.
        proc = subprocess.Popen([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = runner.Tail(1024), runner.Tail(1024)
        self.assertFalse(runner._read_threads(proc, out, err, time.monotonic() + 60))
        self.assertEqual((out.value().strip(), err.value().strip()), (b"out", b"err"))

    def test_thread_reader_reports_a_timeout(self):
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        self.assertTrue(runner._read_threads(proc, runner.Tail(10), runner.Tail(10), time.monotonic() + 0.2))


if __name__ == "__main__":
    unittest.main()
