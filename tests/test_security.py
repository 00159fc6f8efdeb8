"""Security: commands are data, SQL is never built from user values, the home is private,
output cannot flood a worker, and env values (secrets) are never shown or stored."""

import ast
import http.client
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import unittest

from tests.base import ROOT, SCRIPT, HomeTestCase, wait_until
from qctl import jobs
from qctl.runner import RedactedTail, run_command
from qctl.worker import Worker

POSIX = os.name == "posix"
posix_only = unittest.skipUnless(POSIX, "POSIX shell, modes and /proc")


def masked(stream, secrets):
    """`stream` with every byte that lies in any occurrence of any secret hidden, each run of
    hidden bytes shown as one *** (what RedactedTail must produce, whatever the reads)."""
    hidden = [False] * len(stream)
    for secret in secrets:
        start = stream.find(secret)
        while start != -1:
            hidden[start:start + len(secret)] = [True] * len(secret)
            start = stream.find(secret, start + 1)
    out, i = [], 0
    while i < len(stream):
        if hidden[i]:
            while i < len(stream) and hidden[i]:
                i += 1
            out.append(b"***")
        else:
            out.append(stream[i:i + 1])
            i += 1
    return b"".join(out)


class HostileCommandTest(HomeTestCase):
    @posix_only
    def test_quotes_separators_substitutions_and_newlines_run_as_written(self):
        out = os.path.join(self.tmp, "out")
        canary = os.path.join(self.tmp, "PWNED")
        texts = ["it's \"quoted\"", "a; touch %s" % canary, "$(touch %s)" % canary, "`touch %s`" % canary,
                 "| touch %s &" % canary, "héllo wörld ✓ 日本", "line1\nline2", "'; DROP TABLE jobs; --"]
        for n, text in enumerate(texts):
            # The shell quoting is the user's: printf %s of a single-quoted literal.
            literal = "'" + text.replace("'", "'\\''") + "'"
            command = "printf '%%s\\n' %s >> %s" % (literal, out)
            job_id = "'; DROP TABLE jobs; -- %d" % n
            self.ok("enqueue", json.dumps({"id": job_id, "command": command}, ensure_ascii=False))
            self.assertEqual(self.job(job_id)["command"], command)
        Worker(self.home, threads=1, burst=True).run()
        with open(out, encoding="utf-8") as fh:
            self.assertEqual(fh.read(), "".join(t + "\n" for t in texts))
        self.assertFalse(os.path.exists(canary))
        self.assertEqual(json.loads(self.ok("status", "--json").stdout)["jobs"]["completed"], len(texts))


def _is_constant(node, local_ok):
    """Whether `node` can only be text fixed in the source: literals, UPPER_CASE module
    constants, safe names, + of those, a conditional between them, int()/str() of them."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id.lstrip("_").isupper() or node.id in local_ok
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _is_constant(node.left, local_ok) and _is_constant(node.right, local_ok)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Mod)):
        # "%d" % CONSTANT is a constant; "%s" % user_value is not.
        return _is_constant(node.left, local_ok) and _is_constant(node.right, local_ok)
    if isinstance(node, ast.IfExp):
        return _is_constant(node.body, local_ok) and _is_constant(node.orelse, local_ok)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in SQL_BUILDERS:
        return True  # their own results are checked: SqlSourceTest.test_sql_builders_return_constant_text
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("int", "str", "_pg"):
        # _pg: pgstore's spelling of a statement for PostgreSQL (text in, text out)
        return all(_is_constant(arg, local_ok) for arg in node.args) and not node.keywords
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        # self._FOR_UPDATE: a class constant of a store (SqlSourceTest checks they are literals)
        return node.attr.lstrip("_").isupper()
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"
            and isinstance(node.func.value, ast.Call) and getattr(node.func.value.func, "id", None) == "SQL"):
        # psycopg's SQL("... {}").format(Identifier(name)): the name is quoted as an identifier
        return (_is_constant(node.func.value.args[0], local_ok) and not node.keywords
                and all(isinstance(a, ast.Call) and getattr(a.func, "id", None) == "Identifier" for a in node.args))
    if isinstance(node, ast.Subscript):
        return _is_constant(node.value, local_ok)
    if isinstance(node, ast.Tuple):
        return all(_is_constant(e, local_ok) for e in node.elts)
    return False


def _joins_constant_clauses(node, function):
    """`" WHERE " + " AND ".join(clauses) if clauses else ""` where every clauses.append(...) is constant."""
    appended = [c.args[0] for c in ast.walk(function) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
                and c.func.attr == "append" and isinstance(c.func.value, ast.Name) and c.func.value.id == "clauses"]
    return bool(appended) and all(_is_constant(a, set()) for a in appended)


SQL_CALLS = ("execute", "executemany", "executescript", "_read", "_forget", "together")
# Functions of db.py that return SQL text (or (text, params)) built only from constants and
# placeholders: a call to one is as constant as a literal.
SQL_BUILDERS = ("_placeholders", "_filters", "_claim_select", "_claim_returning")


def sql_built_from_values(source):
    """(line, call) for each execute/executemany/_read whose SQL is not made of constants only.

    A local name counts as constant when every assignment to it in its function (=, +=,
    for-loop target) is made of constants. `_read` passes its `sql` parameter on: its
    callers are the ones checked.
    """
    bad, seen = [], set()
    tree = ast.parse(source)
    scopes = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)] + [tree]
    for scope in scopes:
        assigned = {}
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        assigned.setdefault(target.id, []).append(node.value)
                    elif isinstance(target, ast.Tuple):  # where, params = _filters(...)
                        for element in target.elts:
                            if isinstance(element, ast.Name):
                                assigned.setdefault(element.id, []).append(node.value)
            elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
                assigned.setdefault(node.target.id, []).append(node.value)
            elif isinstance(node, ast.For):  # for name in ...: / for a, b in ...:
                targets = node.target.elts if isinstance(node.target, ast.Tuple) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        assigned.setdefault(target.id, []).append(node.iter)
        local_ok = set()
        if isinstance(scope, ast.FunctionDef) and scope.name in SQL_CALLS:
            local_ok |= {arg.arg for arg in scope.args.args + [scope.args.vararg] if arg is not None}
        for _ in range(3):  # names built from other constant names
            local_ok |= {name for name, values in assigned.items()
                         if all(_is_constant(v, local_ok) for v in values)}
        for node in ast.walk(scope):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in SQL_CALLS and node.args and id(node) not in seen):
                seen.add(id(node))
                # together((sql, params), ...): pgstore's statements sent at once, each checked
                statements = ([arg.elts[0] if isinstance(arg, ast.Tuple) else arg for arg in node.args]
                              if node.func.attr == "together" else node.args[:1])
                for sql in statements:
                    if not _is_constant(sql, local_ok):
                        bad.append((node.lineno, ast.dump(sql)[:120]))
    return bad, len(seen)


STORE_MODULES = (os.path.join("qctl", "db.py"), os.path.join("qctl", "pgstore.py"))


class SqlSourceTest(unittest.TestCase):
    def test_db_builds_no_sql_from_values(self):
        for name, least in zip(STORE_MODULES, (30, 10)):
            with self.subTest(name), open(os.path.join(ROOT, name), encoding="utf-8") as fh:
                bad, checked = sql_built_from_values(fh.read())
                self.assertGreater(checked, least, "the scan found too few statements: is it still looking?")
                self.assertEqual(bad, [])

    def test_the_stores_sql_constants_are_literals(self):
        # What the scan takes as constant in `self.UPPER`: class attributes that are string literals.
        for name in STORE_MODULES:
            with open(os.path.join(ROOT, name), encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
            for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
                for node in (n for n in cls.body if isinstance(n, ast.Assign)):
                    for target in node.targets:
                        if isinstance(target, ast.Name) and target.id.startswith("_") and target.id.lstrip("_").isupper():
                            with self.subTest(name=name, attribute=target.id):
                                self.assertTrue(_is_constant(node.value, set()), ast.dump(node.value)[:200])

    def test_sql_builders_return_constant_text(self):
        with open(os.path.join(ROOT, "qctl", "db.py"), encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        builders = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name in SQL_BUILDERS}
        self.assertEqual(set(builders), set(SQL_BUILDERS))
        placeholders = builders.pop("_placeholders")
        # The one builder of text from a number: "?" joined, nothing else.
        self.assertEqual(ast.dump(placeholders.body[-1].value),
                         ast.dump(ast.parse('", ".join("?" * n)', mode="eval").body))
        for name, function in builders.items():
            for ret in (n for n in ast.walk(function) if isinstance(n, ast.Return)):
                value = ret.value.elts[0] if isinstance(ret.value, ast.Tuple) else ret.value
                local = {a.id for a in ast.walk(function) if isinstance(a, ast.Name) and a.id in ("clauses",)}
                with self.subTest(builder=name):
                    self.assertTrue(_is_constant(value, local) or _joins_constant_clauses(value, function),
                                    ast.dump(value)[:200])

    def test_no_other_module_runs_sql(self):
        names = [os.path.join("qctl", n) for n in os.listdir(os.path.join(ROOT, "qctl")) if n.endswith(".py")]
        for name in names + ["queuectl.py"]:
            if name in STORE_MODULES:
                continue
            with self.subTest(name), open(os.path.join(ROOT, name), encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
            imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                        for alias in node.names} | {node.module for node in ast.walk(tree)
                                                    if isinstance(node, ast.ImportFrom)}
            self.assertNotIn("sqlite3", imported, name)
            calls = [node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call)
                     and isinstance(node.func, ast.Attribute) and node.func.attr in ("execute", "executemany")]
            self.assertEqual(calls, [], name)

    def test_the_scan_catches_formatted_sql(self):
        for snippet in ['def f(con, job_id):\n    con.execute("SELECT * FROM jobs WHERE id = \'%s\'" % job_id)\n',
                        'def f(con, job_id):\n    con.execute(f"DELETE FROM jobs WHERE id = {job_id}")\n',
                        'def f(con, state):\n    con.execute("SELECT * FROM jobs WHERE state = {}".format(state))\n',
                        'def f(self, key):\n    sql = "SELECT " + key\n    self._read(sql)\n']:
            with self.subTest(snippet=snippet):
                self.assertEqual(len(sql_built_from_values(snippet)[0]), 1)


@posix_only
class PrivateHomeTest(HomeTestCase):
    def run_umask(self, umask, *argv):
        return subprocess.run([sys.executable, SCRIPT] + list(argv), capture_output=True, text=True, timeout=60,
                              preexec_fn=lambda: os.umask(umask), env=dict(os.environ, QUEUECTL_DEBUG=""))

    def mode(self, path):
        return stat.S_IMODE(os.stat(path).st_mode)

    def test_home_and_database_files_are_private_under_umask_022(self):
        home = os.path.join(self.tmp, "fresh", "home")
        self.assertEqual(self.run_umask(0o022, "--home", home, "enqueue", "--command", "true").returncode, 0)
        self.assertEqual(self.run_umask(0o022, "--home", home, "worker", "start", "--burst").returncode, 0)
        # -wal and -shm exist while a connection is open: hold one.
        import sqlite3
        con = sqlite3.connect(os.path.join(home, "queue.db"))
        self.addCleanup(con.close)
        con.execute("SELECT count(*) FROM jobs").fetchone()
        self.assertEqual(self.mode(home), 0o700)
        for name in ("queue.db", "queue.db-wal", "queue.db-shm"):
            with self.subTest(name):
                self.assertEqual(self.mode(os.path.join(home, name)), 0o600)

    def test_worker_refuses_a_home_or_database_others_can_write(self):
        # The workers below run in-process: the one that serves installs its signal handlers here.
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))
        self.ok("enqueue", "--command", "true")
        for path, mode in ((self.home, 0o770), (self.home, 0o707), (self.db_path, 0o660), (self.db_path, 0o606)):
            with self.subTest(path=path, mode=oct(mode)):
                os.chmod(path, mode)
                # In-process, as the hook tests run theirs: the refusal is main()'s, not the process's.
                result = self.cli("worker", "start", "--burst")
                self.assertEqual(result.code, 1, result)
                self.assertEqual(len(result.stderr.splitlines()), 1, result)
                self.assertIn("chmod go-w", result.stderr)
                # Every command refuses a shared home now (tests/test_home.py): look with the override.
                self.assertIn("pending", self.ok("--allow-shared-home", "list").stdout, "a refused worker ran nothing")
                shared = self.cli("worker", "start", "--burst", "--allow-shared-home")
                self.assertEqual(shared.code, 0, shared)
                os.chmod(path, 0o700 if path == self.home else 0o600)
                self.ok("enqueue", "--command", "true")

    @unittest.skipUnless(POSIX and os.geteuid() == 0, "only root can give a file to another user")
    def test_worker_refuses_a_database_owned_by_another_user(self):
        os.chown(self.db_path, 65534, -1)
        result = self.run_cli("worker", "start", "--burst")
        self.assertEqual(result.code, 1, result)
        self.assertIn("belongs to another user", result.stderr)
        self.assertEqual(self.run_cli("worker", "start", "--burst", "--allow-shared-home").code, 0)


class OutputFloodTest(HomeTestCase):
    @unittest.skipUnless(sys.platform.startswith("linux"), "reads VmHWM from /proc")
    def test_200_mb_of_output_keeps_the_worker_small_and_stores_the_tail(self):
        self.ok("config", "set", "output-limit", "1000")
        self.ok("enqueue", json.dumps({"id": "flood", "command": "head -c 200000000 /dev/zero; echo END; "
                                       "head -c 3000000 /dev/zero >&2"}))
        worker = self.spawn_worker("--count", 1)
        peak = [0]

        def finished():
            with open("/proc/%d/status" % worker.pid) as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        peak[0] = int(line.split()[1]) * 1024
            return self.job("flood")["state"] == jobs.COMPLETED
        wait_until(finished, timeout=120, message="the flood job to finish")
        self.assertLess(peak[0], 100 * 1024 * 1024, "worker peak resident memory")
        self.ok("worker", "stop")
        worker.wait(60)
        from qctl.db import Store
        with Store(self.db_path) as store:
            job = self.job("flood")
            stdout, stderr = store.run_output(job, job["run"])
        self.assertEqual(len(stdout), 1000)
        self.assertTrue(stdout.endswith(b"\0END\n"))
        self.assertEqual(stderr, b"\0" * 1000)
        sys.stderr.write("[worker VmHWM %.1f MB] " % (peak[0] / 1e6))


class SecretTest(HomeTestCase):
    SECRET = "hunter2-Tr0ub4dor"

    def test_redaction_survives_any_split_and_the_tail_cut(self):
        secret = self.SECRET.encode()
        stream = b"A" * 70 + secret + b"B" * 9 + secret + secret[:5] + b"C" + secret
        expected = stream.replace(secret, b"***")
        for limit in (3, 10, 25, 1000):
            for chunk in (1, 2, 5, 16, 17, 64):
                with self.subTest(limit=limit, chunk=chunk):
                    tail = RedactedTail(limit, [secret, secret[:6]])  # a secret that is another's prefix
                    for i in range(0, len(stream), chunk):
                        tail.add(stream[i:i + chunk])
                    got = tail.value()
                    self.assertEqual(got, expected.replace(secret[:6], b"***")[-limit:])

    def test_overlapping_secrets_leave_no_part_of_either_in_any_split(self):
        # Overlapping, adjacent, self-overlapping and chained matches, and a chain far longer than
        # any secret (which must not make the tail hold it all back).
        secrets = [b"abcd1234", b"1234wxyz", b"aaaa"]
        stream = (b"<abcd1234wxyz> 1234wxyz abcd1234abcd1234 abcd1234wxyzabcd1234 aaaaaaa abcd123 234wxyz "
                  + b"a" * 300 + b" end")
        for limit in (3, 10, 1000):
            for chunk in (1, 2, 3, 5, 7, 8, 13, 64, 1000):
                with self.subTest(limit=limit, chunk=chunk):
                    tail = RedactedTail(limit, secrets)
                    for i in range(0, len(stream), chunk):
                        tail.add(stream[i:i + chunk])
                        self.assertLess(len(tail.pending), 2 * 8 + chunk, "the hold-back stays bounded")
                    self.assertEqual(tail.value(), masked(stream, secrets)[-limit:])
        self.assertEqual(masked(b"abcd1234wxyz", secrets), b"***")

    @posix_only
    def test_a_command_printing_two_overlapping_secrets_stores_neither(self):
        result = run_command("printf '%s%s\\n' \"$A\" wxyz; printf '%s\\n' \"$A$B\" >&2",
                             env={"A": "abcd1234", "B": "1234wxyz"})
        self.assertEqual((result.stdout, result.stderr), (b"***\n", b"***\n"))

    def dashboard_pages(self, *paths):
        from qctl import dashboard
        server = dashboard.make_server(self.db_path, host="127.0.0.1", port=0)
        thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
        thread.start()
        bodies = []
        try:
            for path in paths:
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
                try:
                    conn.request("GET", path)
                    response = conn.getresponse()
                    self.assertEqual(response.status, 200, path)
                    bodies.append(response.read().decode("utf-8"))
                finally:
                    conn.close()
        finally:
            server.shutdown()
            server.server_close()
            thread.join(30)
        return bodies

    @posix_only
    def test_env_values_never_appear_in_any_output(self):
        env = {"API_TOKEN": self.SECRET, "SHORT": "ab"}
        # Prints its secret whole, after 65,530 bytes (across the 64 KiB read boundary) and to stderr.
        command = ('echo "token=$API_TOKEN"; head -c 65530 /dev/zero; printf %s "$API_TOKEN"; '
                   'echo "$API_TOKEN" >&2; exit 1')
        self.ok("enqueue", json.dumps({"id": "s1", "command": command, "env": env, "max_retries": 0}))
        self.ok("enqueue", "--command", "printf %s \"$API_TOKEN\"", "--id", "s2", "--env", "API_TOKEN=" + self.SECRET)
        self.ok("config", "set", "output-limit", "70000")
        worker = self.spawn_worker("--count", 2)
        wait_until(lambda: self.job("s1")["state"] == jobs.DEAD and self.job("s2")["state"] == jobs.COMPLETED,
                   message="both jobs finished")
        self.ok("worker", "stop")
        worker.wait(60)
        worker.log.seek(0)
        shown = [worker.log.read()]
        for argv in (["list"], ["list", "--json"], ["show", "s1"], ["show", "s1", "--json"], ["logs", "s1"],
                     ["logs", "s2"], ["dlq", "list"], ["dlq", "list", "--json"], ["status", "--json"]):
            shown.append(self.ok(*argv).stdout)
        pages = self.dashboard_pages("/", "/api/jobs?limit=0", "/api/jobs/s1", "/api/jobs/s2", "/api/status",
                                     "/api/stats", "/metrics")
        self.assertTrue('"stdout": "***"' in pages[3], "the dashboard shows the job's output, masked")
        shown += pages
        everything = "\n".join(shown)
        for leak in (self.SECRET, self.SECRET[:8], self.SECRET[-8:]):
            where = [n for n, text in enumerate(shown) if leak in text]
            self.assertEqual(where, [], "%r leaked (outputs %s)" % (leak, where))
        self.assertIn("token=***", everything)
        self.assertIn('"API_TOKEN": "***"', everything)
        logs = self.ok("logs", "s1").stdout
        self.assertIn("\0***", logs)
        self.assertEqual(self.ok("logs", "s2").stdout.splitlines()[2], "***")
