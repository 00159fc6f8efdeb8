"""A real PostgreSQL server for the tests (and benchmarks) that need one.

`server()` starts one per process, the first time it is asked (initdb and pg_ctl in a temporary
directory, on a Unix socket in a directory of its own), and stops it at exit. PostgreSQL refuses
to run as root, so as root the server runs as `nobody` (runuser). Every test then takes a schema
of its own (`url(schema)`), which is a fresh queue. Where psycopg or the server's binaries are
missing, `server()` raises unittest.SkipTest with the reason. QUEUECTL_TEST_PG (a URL) uses a
server that is running already instead. `listening(...)` starts a server of a test's own that
also listens on TCP (for workers in network namespaces, tests/test_pgnetwork.py).
"""

import atexit
import glob
import os
import shutil
import subprocess
import tempfile
import unittest
import uuid

SERVER_ENV = "QUEUECTL_TEST_PG"
_server = {}  # "url" once started, or "skip": why not


def _binaries():
    """The folder holding initdb and pg_ctl, or None."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return os.path.dirname(found)
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(folder, "pg_ctl")) and os.path.exists(os.path.join(folder, "initdb")):
            return folder
    return None


def _as_server_user(argv):
    """`argv` run as the server's user: ourselves, or `nobody` when we are root."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return ["runuser", "-u", "nobody", "--"] + argv
    return argv


def server():
    """The base URL of a running PostgreSQL server (started on first use), or raise SkipTest."""
    if "url" in _server:
        return _server["url"]
    if "skip" in _server:
        raise unittest.SkipTest(_server["skip"])
    try:
        import psycopg
    except ImportError:
        _server["skip"] = "psycopg 3 is not installed (pip install 'psycopg[binary]')"
        raise unittest.SkipTest(_server["skip"]) from None
    del psycopg  # only whether it imports
    if os.environ.get(SERVER_ENV):
        _server["url"] = os.environ[SERVER_ENV]
        return _server["url"]
    binaries = _binaries()
    if binaries is None or os.name != "posix":
        _server["skip"] = "PostgreSQL's initdb and pg_ctl are not on PATH"
        raise unittest.SkipTest(_server["skip"])
    try:
        _server["url"] = _start(binaries)
    except (OSError, subprocess.SubprocessError) as exc:
        _server["skip"] = "could not start a PostgreSQL server: %s" % exc
        raise unittest.SkipTest(_server["skip"]) from None
    return _server["url"]


def _start(binaries):
    started = _launch(binaries)
    _server.update((key, started[key]) for key in ("data", "binaries", "options", "log", "folder"))
    return started["url"]


def _launch(binaries, *, listen="", hba=(), port=None):
    """initdb and pg_ctl start in a new temporary directory, stopped at exit: a dict of where its
    data, options, log and folder are, and its `url` (the Unix socket). `listen` is the server's
    listen_addresses (none: the socket only), `hba` lines added to pg_hba.conf, `port` its port."""
    folder = tempfile.mkdtemp(prefix="qctl-pg-")
    atexit.register(shutil.rmtree, folder, True)
    os.chmod(folder, 0o755)
    data, sockets = os.path.join(folder, "data"), os.path.join(folder, "sock")
    os.mkdir(sockets)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        import pwd
        nobody = pwd.getpwnam("nobody")
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        os.chown(sockets, nobody.pw_uid, nobody.pw_gid)
    run = dict(capture_output=True, text=True, timeout=120, cwd=folder)
    proc = subprocess.run(_as_server_user([os.path.join(binaries, "initdb"), "-D", data, "-U", "postgres",
                                           "-A", "trust", "--no-sync", "-E", "UTF8"]), **run)
    if proc.returncode != 0:
        raise OSError("initdb: %s" % (proc.stderr.strip() or proc.stdout.strip()))
    if hba:
        with open(os.path.join(data, "pg_hba.conf"), "a") as fh:  # the server's user owns it: root appends
            fh.write("".join(line + "\n" for line in hba))
    options = "-k %s -c listen_addresses='%s' -c fsync=off -c synchronous_commit=off -c full_page_writes=off " \
              "-c max_connections=200" % (sockets, listen)
    if port is not None:
        options += " -p %d" % port
    log = os.path.join(folder, "server.log")
    proc = subprocess.run(_as_server_user([os.path.join(binaries, "pg_ctl"), "-D", data, "-o", options, "-l", log,
                                           "-w", "-t", "60", "start"]), **run)
    if proc.returncode != 0:
        raise OSError("pg_ctl start: %s" % (proc.stderr.strip() or proc.stdout.strip()))
    atexit.register(subprocess.run, _as_server_user([os.path.join(binaries, "pg_ctl"), "-D", data, "-m",
                                                     "immediate", "stop"]), capture_output=True, cwd=folder)
    url = "postgresql://postgres@/postgres?host=%s" % sockets
    if port is not None:
        url += "&port=%d" % port
    return dict(data=data, binaries=binaries, options=options, log=log, folder=folder, url=url)


class Server:
    """A PostgreSQL server of one test's own (see `listening`), apart from the shared `server()`."""

    def __init__(self, started, port):
        self.port = port
        self.url = started["url"]  # over its Unix socket, from this host
        self.log = started["log"]
        self._started = started

    def tcp_url(self, address, schema):
        """The URL of queue `schema` on this server, over TCP to `address` (one it listens on)."""
        return "postgresql://postgres@%s:%d/postgres?schema=%s" % (address, self.port, schema)

    def stop(self):
        """Stop it now (immediate mode); nothing if it is stopped already."""
        subprocess.run(_as_server_user([os.path.join(self._started["binaries"], "pg_ctl"), "-D",
                                        self._started["data"], "-m", "immediate", "stop"]),
                       capture_output=True, timeout=120, cwd=self._started["folder"])


def listening(listen, *, hba=(), port=5432):
    """Start a server of the caller's own that also listens on TCP at `listen` (listen_addresses:
    addresses that exist on this host), `port`, with `hba` lines added to pg_hba.conf (e.g. "host
    all all 10.213.0.0/24 trust"). Returns a `Server`, stopped at exit if not before (call its
    `stop` at cleanup). Raises SkipTest with the reason where psycopg or the binaries are missing
    or the server cannot start. QUEUECTL_TEST_PG is not used: its server listens where it does."""
    try:
        import psycopg
    except ImportError:
        raise unittest.SkipTest("psycopg 3 is not installed (pip install 'psycopg[binary]')") from None
    del psycopg  # only whether it imports
    binaries = _binaries()
    if binaries is None or os.name != "posix":
        raise unittest.SkipTest("PostgreSQL's initdb and pg_ctl are not on PATH")
    try:
        return Server(_launch(binaries, listen=listen, hba=hba, port=port), port)
    except (OSError, subprocess.SubprocessError) as exc:
        raise unittest.SkipTest("could not start a PostgreSQL server: %s" % exc) from None


def restart():
    """Restart the server (`pg_ctl restart`, fast mode: every connection is cut); only ours."""
    if "data" not in _server:
        raise unittest.SkipTest("the server is not one these tests started (%s)" % SERVER_ENV)
    proc = subprocess.run(_as_server_user([os.path.join(_server["binaries"], "pg_ctl"), "-D", _server["data"],
                                           "-o", _server["options"], "-l", _server["log"], "-m", "fast", "-w",
                                           "-t", "60", "restart"]), capture_output=True, text=True, timeout=120,
                          cwd=_server["folder"])
    if proc.returncode != 0:
        raise AssertionError("pg_ctl restart failed: %s" % (proc.stderr.strip() or proc.stdout.strip()))


def url(schema=None):
    """The URL of a fresh queue on the server: a schema no other test uses."""
    base = server()
    return "%s%sschema=%s" % (base, "&" if "?" in base else "?", schema or "t_" + uuid.uuid4().hex[:16])


def drop(queue_url):
    """Remove the schema of `queue_url` (a test's cleanup)."""
    import psycopg
    from psycopg.sql import SQL, Identifier
    from qctl.pgstore import parse_url
    conninfo, schema, _ = parse_url(queue_url)
    with psycopg.connect(conninfo, autocommit=True) as con:
        con.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))


class OnPostgres:
    """Mixin for a test case of the SQLite store or the CLI: the same tests, on a fresh schema of the
    PostgreSQL server. `db_path` is its URL, and QUEUECTL_DB names it to every command and worker the
    test runs, in this process or another."""

    def database(self):
        queue = url()
        self.addCleanup(drop, queue)  # among the last cleanups: after the test's stores and workers
        previous = os.environ.get("QUEUECTL_DB")
        os.environ["QUEUECTL_DB"] = queue
        self.addCleanup(_restore, "QUEUECTL_DB", previous)
        os.makedirs(self.home, mode=0o700, exist_ok=True)
        return queue


def _restore(name, value):
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def postgres_cases(namespace, *cases, sqlite_only=()):
    """For each TestCase class of `cases`, a class `PgNAME` (OnPostgres first) in `namespace`; the
    tests named in `sqlite_only` ("Class.test", about SQLite's files or planner) skip there."""
    for case in cases:
        skipped = {name.split(".", 1)[1]: unittest.skip("about SQLite only")(getattr(case, name.split(".", 1)[1]))
                   for name in sqlite_only if name.split(".", 1)[0] == case.__name__}
        skipped["__module__"] = namespace["__name__"]
        namespace["Pg" + case.__name__] = type("Pg" + case.__name__, (OnPostgres, case), skipped)
