"""The job store: every SQL statement of queuectl lives in this module.

One SQLite file in WAL mode. Connections run with implicit transactions off and
every write goes through `Store._write()`, which issues BEGIN IMMEDIATE, so
writers queue on SQLite's lock (with a busy timeout) instead of failing.

Times are epoch seconds (REAL); `now` is a parameter of every function that
needs one, so tests can move time without sleeping.

A job row carries its latest run (started_at, finished_at, worker, exit_code);
the `runs` table holds one row per run that has something to say: every failed
run, and every run that printed output. A successful run with no output writes
no row; `job_runs` rebuilds it from the job. That keeps the hot path at one
row written per job.

The store's verbs, which a second backend would implement one for one:
  enqueue                                  store new jobs, all or none
  claim, finish_and_claim                  the next due job -> processing (with the last one's outcome)
  record, complete, fail, release          a claimed job's outcome, fenced by its claim
  note_process                             more on how to find a claimed job's command (for recover)
  heartbeat, deregister, live_workers      worker registration and liveness
  recover                                  jobs of lost workers back to the queue
  poll_for_work, housekeep                 an idle worker's wake-up check; WAL upkeep
  counts, list_jobs, get, job_runs, run_totals, runs_since, oldest_due_pending   queries
  wait_finished, wait_workers_gone         block until jobs finish / workers exit (polling)
  retry_dead, retry_all_dead, delete, purge   user actions
  config, set_config                       settings
"""

import os
import shutil
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import NamedTuple, Optional

from . import config as qconfig
from . import home as qhome
from .errors import DatabaseDamaged, DuplicateJob, InvalidJob, InvalidState, JobNotFound, StoreError
from .jobs import (COMPLETE, COMPLETED, DEAD, FAIL, FAILED, FINISHED_STATES, PENDING, PROCESSING, RELEASE, STATES,
                   UNFINISHED_STATES, DEFAULT_LIST_LIMIT, Outcome, after_failure)

BUSY_TIMEOUT_S = 30.0
WAL_RETRY_S = 0.005
WAIT_POLL_S = 0.1  # wait_finished / wait_workers_gone look this often
WAL_RESTART_BYTES = 16 * 1024 * 1024  # past this, housekeep() makes the WAL start over (and SQLite cuts it back)
WAL_SMALL_BYTES = 256 * 1024  # a WAL this small is never worth a RESTART checkpoint
WAL_IDLE_S = 2.0   # no other commit for this long: housekeep() truncates the WAL to nothing
PULSE_GRACE_S = 1.0  # a pulse file's mtime may be as coarse as a second (HFS+)
CHECKPOINT_BUSY_MS = 100  # a checkpoint waits this long for readers, then tries again next time
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
SQLITE_MAX_INT = 2 ** 63 - 1

# ---------------------------------------------------------------- schema

SCHEMA_V1 = (
    """CREATE TABLE jobs (
        seq          INTEGER PRIMARY KEY,   -- enqueue order (FIFO tie-break)
        id           TEXT NOT NULL UNIQUE,
        command      TEXT NOT NULL,
        state        TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,  -- runs since enqueue or dlq retry
        runs         INTEGER NOT NULL DEFAULT 0,  -- runs over the job's whole life: the fence
        max_retries  INTEGER NOT NULL,
        priority     INTEGER NOT NULL DEFAULT 0,
        run_at       REAL NOT NULL,
        next_run_at  REAL NOT NULL,           -- when it may be claimed: run_at, then retry time
        timeout      REAL,
        cwd          TEXT,
        env          TEXT,
        created_at   REAL NOT NULL,
        updated_at   REAL NOT NULL,
        started_at   REAL,
        finished_at  REAL,
        worker       TEXT,
        lease_until  REAL,
        exit_code    INTEGER,
        last_error   TEXT
    )""",
    # The claim reads this index in claim order and stops at the first due row:
    # no sort, and finished jobs are not in it at all.
    """CREATE INDEX jobs_ready ON jobs (priority DESC, next_run_at, seq)
        WHERE state IN ('pending', 'failed')""",
    # Counting per state, list --state, the running jobs of a worker. seq (the
    # rowid) is implicitly last, so list --state reads it in enqueue order.
    "CREATE INDEX jobs_state ON jobs (state)",
    """CREATE TABLE runs (
        job_seq      INTEGER NOT NULL,
        run          INTEGER NOT NULL,
        attempt      INTEGER NOT NULL,
        worker       TEXT,
        started_at   REAL,
        finished_at  REAL,
        exit_code    INTEGER,
        error        TEXT,
        stdout       BLOB,
        stderr       BLOB,
        PRIMARY KEY (job_seq, run)
    ) WITHOUT ROWID""",
    "CREATE INDEX runs_finished ON runs (finished_at)",
    "CREATE TABLE config (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE workers (
        id           TEXT PRIMARY KEY,
        pid          INTEGER NOT NULL,
        host         TEXT NOT NULL,
        threads      INTEGER NOT NULL,
        started_at   REAL NOT NULL,
        heartbeat_at REAL NOT NULL,
        lease_until  REAL NOT NULL
    ) WITHOUT ROWID""",
)

# Marks the file as ours ("qctl"), so that another application's SQLite file is never taken over.
APPLICATION_ID = 0x7163746C
SCHEMA_V2 = (
    "PRAGMA application_id = %d" % APPLICATION_ID,
    # What makes a worker's pid meaningful to another (qctl.home.host_key): the same
    # hostname is not the same process table. NULL (workers before V2): unsure.
    "ALTER TABLE workers ADD COLUMN host_key TEXT",
)
# What a worker on the same host needs to kill a run's processes once the run's worker died
# (opaque to the store: the claim writes it, `note_process` adds to it, `recover` hands it back).
SCHEMA_V3 = ("ALTER TABLE jobs ADD COLUMN run_process TEXT",)

MIGRATIONS = (SCHEMA_V1, SCHEMA_V2, SCHEMA_V3)  # MIGRATIONS[n] takes user_version n to n + 1
OUR_TABLES = {"jobs", "runs", "config", "workers"}
SCHEMA_VERSION = len(MIGRATIONS)

# `runs`, the column, counts the job's runs over its whole life; rows call it `run`: the number
# of its latest run (the `runs` table holds the runs themselves).
JOB_COLUMNS = ("seq, id, command, state, attempts, runs AS run, max_retries, priority, run_at, next_run_at, "
               "timeout, cwd, env, created_at, updated_at, started_at, finished_at, worker, "
               "lease_until, exit_code, last_error")
CLAIM_COLUMNS = "seq, id, command, attempts, runs AS run, max_retries, timeout, cwd, env"

class Recorded(NamedTuple):
    """A recorded outcome: the job's new state, and when it may run again (a retry)."""
    state: str
    next_run_at: Optional[float]


class RunTotals(NamedTuple):
    runs: int
    seconds: float   # time run, in all
    retries: int     # runs with attempt > 1


class RecentRun(NamedTuple):
    finished_at: float
    duration: Optional[float]
    failed: bool
    attempt: int


# Set by a commit that found the WAL past its bound: the process's housekeeping runs at once.
_UPKEEP = threading.Event()

# Threads of one process queue on this lock before SQLite's: SQLite's busy
# handler sleeps in growing steps, a Python lock hands over at once. Safety
# between processes still rests on BEGIN IMMEDIATE alone.
_WRITE_LOCK = threading.Lock()


def _sqlite_message(exc, path):
    text = str(exc)
    low = text.lower()
    if "locked" in low or "busy" in low:
        return "the database %s stayed locked by another process for over %ds; try again" % (path, BUSY_TIMEOUT_S)
    if "not a database" in low or "malformed" in low or "encrypted" in low:
        return "%s is not a usable queuectl database (%s)" % (path, text)
    if "readonly" in low or "read-only" in low:
        return "the database %s is read-only (%s)" % (path, text)
    if "full" in low:
        return "no space left to write the database %s (%s)" % (path, text)
    if "unable to open" in low or "disk i/o" in low:
        return "cannot open the database %s (%s)" % (path, text)
    return "database error on %s: %s" % (path, text)


def _store_error(exc, path):
    """The StoreError for an sqlite3 error: DatabaseDamaged when retrying cannot help."""
    low = str(exc).lower()
    damaged = "malformed" in low or "not a database" in low or "corrupt" in low
    return (DatabaseDamaged if damaged else StoreError)(_sqlite_message(exc, path))


def _not_unicode(exc):
    # A value typed by the user (a job id from argv) held bytes that are not UTF-8:
    # Python passes them on as lone surrogates, which SQLite cannot bind.
    return InvalidJob("%r is not valid Unicode text (it holds bytes that are not UTF-8)" % (exc.object[:60],))


class Store:
    """One connection to the queue database. Not shared between threads: each opens its own.

    `durable=True` (the CLI) commits with synchronous=FULL, so an acknowledged
    enqueue survives a power cut. Workers pass `durable=False` (NORMAL in WAL:
    a transition lost in a power cut re-runs a job, which at-least-once allows)
    and `autocheckpoint=False` (they checkpoint from their heartbeat thread, off
    the job path).
    """

    def __init__(self, path, *, durable=True, autocheckpoint=True):
        self.path = path
        self.home = os.path.dirname(path)
        self._seen_version = None  # poll_for_work: PRAGMA data_version last time
        self._next_due = None      # poll_for_work: when the earliest waiting job falls due
        self._house_version = None # housekeep: PRAGMA data_version, and since when it has not changed
        self._quiet_since = time.monotonic()
        self._durable, self._autocheckpoint = durable, autocheckpoint
        self._stuck = False        # a write failed for want of space: open afresh before the next
        self._connect()
        try:
            st = os.stat(path)
            self._identity = (st.st_dev, st.st_ino)
            self._migrate()
        except sqlite3.Error as exc:
            self.con.close()
            raise _store_error(exc, path) from None
        except BaseException:
            self.con.close()
            raise

    def _connect(self):
        try:
            self.con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as exc:
            raise _store_error(exc, self.path) from None
        try:
            self.con.execute("PRAGMA busy_timeout = %d" % int(BUSY_TIMEOUT_S * 1000))
            self.con.execute("PRAGMA synchronous = %s" % ("FULL" if self._durable else "NORMAL"))
            # When the WAL starts over, its file is cut back to this size instead of staying at its peak.
            self.con.execute("PRAGMA journal_size_limit = %d" % WAL_RESTART_BYTES)
            if not self._autocheckpoint:
                self.con.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            self.con.close()
            raise _store_error(exc, self.path) from None

    def _unstick(self):
        """After a write failed for want of space, SQLite can keep answering "disk is full" on
        that connection even once space is freed (seen with a worker's threads on a full tmpfs):
        the next use opens a fresh one."""
        if self._stuck:
            self.con.close()
            self._connect()
            self._stuck = False

    def _note(self, exc):
        """The StoreError for `exc`, remembering when the connection must be opened afresh."""
        error = _store_error(exc, self.path)
        if "full" in str(exc).lower() or "disk i/o" in str(exc).lower():
            self._stuck = True
        return error

    def close(self):
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ plumbing

    def _migrate(self):
        version = self.con.execute("PRAGMA user_version").fetchone()[0]
        if self.con.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID and not self._unmarked_ours(version):
            raise StoreError("%s is not a queuectl database (another application's SQLite file?): it was left "
                             "unchanged; give queuectl a home of its own (--home or QUEUECTL_HOME)" % self.path)
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError("the database %s has schema version %d; this queuectl knows up to %d: upgrade queuectl"
                             % (self.path, version, SCHEMA_VERSION))
        if self.con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            mode = self._switch_to_wal()
            if mode.lower() != "wal":
                raise StoreError("cannot put %s in WAL mode (got %s): is it on a network filesystem?"
                                 % (self.path, mode))
        with self._write() as con:
            # Another process may have migrated between our check and our lock.
            version = con.execute("PRAGMA user_version").fetchone()[0]
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    con.execute(statement)
            con.execute("PRAGMA user_version = %d" % SCHEMA_VERSION)

    def _unmarked_ours(self, version):
        """Whether a database without our application_id is a new empty one, or one queuectl made
        before it marked its files (schema version 1). Reads only: nothing is changed before this."""
        tables = {name for (name,) in self.con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return not tables if version == 0 else version == 1 and OUR_TABLES <= tables

    def is_current(self):
        """Whether the file at our path is still the database we opened (not deleted or replaced)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def _switch_to_wal(self):
        """PRAGMA journal_mode = WAL, retried while another connection holds a lock.

        SQLite answers this switch with "database is locked" at once, without its
        busy handler, when another connection holds a write lock: which happens
        when two processes open a new database together (each then migrates).
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                return self.con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc).lower() or time.monotonic() >= deadline:
                    raise
            time.sleep(WAL_RETRY_S)

    @contextmanager
    def _write(self):
        """One BEGIN IMMEDIATE transaction: commit on success, roll back and re-raise on error."""
        with _WRITE_LOCK:
            try:
                self._unstick()
                self.con.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._note(exc) from None
            try:
                yield self.con
                self.con.execute("COMMIT")
                self._check_wal()
            except BaseException as exc:
                if self.con.in_transaction:
                    try:
                        self.con.execute("ROLLBACK")
                    except sqlite3.Error:  # SQLite rolled back already, or cannot: start afresh
                        self._stuck = True
                if isinstance(exc, UnicodeEncodeError):
                    raise _not_unicode(exc) from None
                if isinstance(exc, sqlite3.IntegrityError) or not isinstance(exc, sqlite3.Error):
                    raise
                raise self._note(exc) from None

    def _read(self, sql, params=()):
        try:
            self._unstick()
            return self.con.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._note(exc) from None
        except UnicodeEncodeError as exc:
            raise _not_unicode(exc) from None

    # ------------------------------------------------------------ an idle worker's upkeep

    def poll_for_work(self, now):
        """Whether a job may have become claimable since the last call: another
        connection committed, or a waiting job (delay, retry backoff) fell due.

        Cheap when nothing changed: PRAGMA data_version reads no disk. The
        first call answers True.
        """
        version = self._read("PRAGMA data_version")[0][0]
        if version != self._seen_version:
            self._seen_version = version
            self._next_due = self._next_due_at()
            return True
        if self._next_due is not None and now >= self._next_due:
            self._next_due = None
            return True
        return False

    def _next_due_at(self):
        # The claim's index covers this query, where the planner's own choice (the state
        # index) also reads every waiting row (12 ms against 5.6 ms with 100,000 future jobs).
        return self._read("SELECT min(next_run_at) FROM jobs INDEXED BY jobs_ready "
                          "WHERE state IN ('pending', 'failed')")[0][0]

    def _check_wal(self):
        """After a commit: a WAL past its bound wakes the housekeeping (see `await_upkeep`) at once.
        A stat, no more, when it is within bounds: at full speed the WAL grows ~30 MB a second."""
        try:
            size = os.path.getsize(self.path + "-wal")
        except OSError:
            return
        if size > WAL_SMALL_BYTES and size > self._wal_limit():
            _UPKEEP.set()

    def _wal_limit(self):
        """WAL_RESTART_BYTES, or a quarter of the free disk space if that is less: the checkpoint
        that lets the WAL start over needs room to grow the database file itself."""
        try:
            return min(WAL_RESTART_BYTES, shutil.disk_usage(self.home).free / 4)
        except OSError:
            return WAL_RESTART_BYTES

    @staticmethod
    def await_upkeep(timeout):
        """Block until `housekeep` is due: a commit found the WAL past its bound, or `timeout` passed."""
        _UPKEEP.wait(timeout)
        _UPKEEP.clear()

    def housekeep(self):
        """Keep the WAL small, off the job path; cheap enough to call several times a second
        (a stat and a PRAGMA data_version when there is nothing to do).

        A PASSIVE checkpoint never lets the WAL start over while commits keep
        coming: it grew to 553 MB in a 20,000-job drain. So past
        WAL_RESTART_BYTES this runs a RESTART checkpoint (the next commit writes
        the WAL from its start, and journal_size_limit cuts the file back), and
        once no other connection has committed for WAL_IDLE_S a TRUNCATE one
        (an idle queue's WAL shrinks to nothing). Either waits at most
        CHECKPOINT_BUSY_MS for readers and writers, since it holds new writers
        back while it waits; a busy checkpoint is simply tried again next call.
        On a nearly full disk the WAL starts over sooner (see `_wal_limit`), and
        a commit that finds the WAL past its bound wakes the caller's
        `await_upkeep` rather than waiting for its next tick.
        """
        try:
            size = os.path.getsize(self.path + "-wal")
        except OSError:
            return
        version = self._read("PRAGMA data_version")[0][0]
        if version != self._house_version:
            self._house_version, self._quiet_since = version, time.monotonic()
        if size > 0 and time.monotonic() - self._quiet_since >= WAL_IDLE_S:
            mode = "TRUNCATE"
        elif size > WAL_SMALL_BYTES and size > self._wal_limit():
            mode = "RESTART"
        else:
            return
        with _WRITE_LOCK:  # our own threads queue here rather than in SQLite's busy handler
            self._read("PRAGMA busy_timeout = %d" % CHECKPOINT_BUSY_MS)
            try:
                self._read("PRAGMA wal_checkpoint(%s)" % mode)
            finally:
                self._read("PRAGMA busy_timeout = %d" % int(BUSY_TIMEOUT_S * 1000))

    # ------------------------------------------------------------ enqueue

    def enqueue(self, new_jobs, now):
        """Store validated jobs (from `jobs.validate_job`) as `pending`, all or none.

        Returns their ids in order. A duplicate id (stored or within the batch)
        raises DuplicateJob, naming the first job that repeats one, and stores nothing.
        """
        rows = []
        for job in new_jobs:
            job_id = job["id"] or os.urandom(8).hex()
            rows.append((job_id, job["command"], PENDING, job["max_retries"], job["priority"],
                         job["run_at"], job["run_at"], job["timeout"], job["cwd"], job["env"], now, now))
        try:
            with self._write() as con:
                con.executemany(
                    "INSERT INTO jobs (id, command, state, max_retries, priority, run_at, next_run_at, "
                    "timeout, cwd, env, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows)
        except sqlite3.IntegrityError:
            ids = [row[0] for row in rows]
            index = self._first_duplicate(ids)
            raise DuplicateJob(ids[index], index) from None
        return [row[0] for row in rows]

    def _first_duplicate(self, ids):
        """The position of the first id that is stored already or repeats an earlier one."""
        seen = set()
        for index, job_id in enumerate(ids):
            if job_id in seen or self._read("SELECT 1 FROM jobs WHERE id = ?", (job_id,)):
                return index
            seen.add(job_id)
        return 0

    # ------------------------------------------------------------ the worker's transitions

    def claim(self, worker, lease_s, *, now=None, process=None):
        """pending/due failed -> processing for the next job in claim order, atomically.

        Order: priority (high first), then due time, then enqueue order. Sets a
        lease until now + lease_s and counts the run. Returns a dict of the
        job's CLAIM_COLUMNS, or None when nothing is due. `now` defaults to the
        time the write lock was granted: a claim that waited for the lock must
        not start with a lease already spent. `process` (text) is kept on the job
        for `recover` while the run lasts (see `note_process`).
        """
        with self._write() as con:
            return self._claim(con, worker, lease_s, time.time() if now is None else now, process)

    def finish_and_claim(self, outcome, settings, *, now=None, process=None):
        """`record(outcome)` and `claim` in one transaction: one commit per job instead of two.

        Returns (what `record` returns, the next job or None).
        """
        with self._write() as con:
            state = self._record(con, outcome, settings)
            return state, self._claim(con, outcome.worker, settings["lease-seconds"],
                                      time.time() if now is None else now, process)

    def _claim(self, con, worker, lease_s, now, process=None):
        params = (worker, now + lease_s, now, now, process)
        if HAS_RETURNING:
            row = con.execute(_CLAIM_RETURNING_SQL, params + (now,)).fetchone()
        else:
            # SQLite < 3.35 has no RETURNING. Still atomic: we hold the write lock.
            found = con.execute(_CLAIM_SELECT, (now,)).fetchone()
            row = None
            if found is not None:
                con.execute(_CLAIM_SQL + "?", params + found)
                row = con.execute("SELECT " + CLAIM_COLUMNS + " FROM jobs WHERE seq = ?", found).fetchone()
        return None if row is None else dict(zip(_CLAIM_KEYS, row))

    def record(self, outcome, settings):
        """Record a run's `Outcome` (see `jobs.Outcome`); `settings` gives the retry backoff.

        Returns a Recorded (the job's new state and when it is due next), or
        None if the claim was lost (another worker recovered the job): then
        nothing changes.
        """
        with self._write() as con:
            return self._record(con, outcome, settings)

    def complete(self, job, worker, now, *, stdout=b"", stderr=b""):
        """processing -> completed (exit 0), fenced by the claim (worker and run number)."""
        return self.record(Outcome(COMPLETE, job, worker, now, stdout=stdout, stderr=stderr), None)

    def fail(self, job, worker, now, *, error, exit_code=None, settings, stdout=b"", stderr=b""):
        """processing -> failed (due again after its backoff) or dead (no retries left), fenced."""
        return self.record(Outcome(FAIL, job, worker, now, error, exit_code, stdout, stderr), settings)

    def _record(self, con, outcome, settings):
        if outcome.kind == COMPLETE:
            return self._complete(con, outcome)
        if outcome.kind == FAIL:
            return self._fail(con, outcome, settings)
        return self._release(con, outcome)

    def release(self, job, worker, now):
        """processing -> pending without using an attempt (the worker was told to stop at once)."""
        return self.record(Outcome(RELEASE, job, worker, now), None)

    def _release(self, con, outcome):
        job, worker, now = outcome.job, outcome.worker, outcome.now
        # The run never happened: attempts and the run number go back. That reuses the run
        # number as a fence, which is safe because the releasing thread records nothing after.
        cur = con.execute(
            "UPDATE jobs SET state = ?, attempts = attempts - 1, runs = runs - 1, next_run_at = ?, "
            "updated_at = ?, lease_until = NULL, started_at = NULL, worker = NULL "
            "WHERE seq = ? AND state = ? AND worker = ? AND runs = ?",
            (PENDING, now, now, job["seq"], PROCESSING, worker, job["run"]))
        return Recorded(PENDING, now) if cur.rowcount == 1 else None

    def _complete(self, con, outcome):
        job, now = outcome.job, outcome.now
        cur = con.execute(
            "UPDATE jobs SET state = ?, exit_code = 0, last_error = NULL, finished_at = ?, updated_at = ?, "
            "lease_until = NULL WHERE seq = ? AND state = ? AND worker = ? AND runs = ?",
            (COMPLETED, now, now, job["seq"], PROCESSING, outcome.worker, job["run"]))
        if cur.rowcount != 1:
            return None
        if outcome.stdout or outcome.stderr:
            self._insert_run(con, job["seq"], job["run"], 0, None, now, outcome.stdout, outcome.stderr)
        return Recorded(COMPLETED, None)

    def _fail(self, con, outcome, settings):
        job, now = outcome.job, outcome.now
        state, next_run_at = after_failure(job["attempts"], job["max_retries"], settings, now)
        cur = con.execute(
            "UPDATE jobs SET state = ?, exit_code = ?, last_error = ?, finished_at = ?, updated_at = ?, "
            "next_run_at = ?, lease_until = NULL WHERE seq = ? AND state = ? AND worker = ? AND runs = ?",
            (state, outcome.exit_code, outcome.error, now, now, next_run_at,
             job["seq"], PROCESSING, outcome.worker, job["run"]))
        if cur.rowcount != 1:
            return None
        self._insert_run(con, job["seq"], job["run"], outcome.exit_code, outcome.error, now,
                         outcome.stdout, outcome.stderr)
        return Recorded(state, next_run_at)

    @staticmethod
    def _insert_run(con, job_seq, run, exit_code, error, now, stdout, stderr):
        # The run's start and worker are still on the job row: copy them across.
        con.execute(
            "INSERT OR REPLACE INTO runs (job_seq, run, attempt, worker, started_at, finished_at, exit_code, "
            "error, stdout, stderr) SELECT seq, ?, attempts, worker, started_at, ?, ?, ?, ?, ? FROM jobs WHERE seq = ?",
            (run, now, exit_code, error, stdout or None, stderr or None, job_seq))

    def heartbeat(self, worker, lease_s, *, pid, host, threads, started_at, host_key=None, now=None):
        """Renew this worker's row and the leases of every job it is running.

        `host_key` says whose process table `pid` belongs to (None: unsure).
        `now` defaults to when the write lock was granted: a beat that waited
        long for the lock must not renew to a time already past.
        """
        with self._write() as con:
            now = time.time() if now is None else now
            con.execute(
                # Plain INSERT OR REPLACE, not an upsert: ON CONFLICT DO UPDATE needs SQLite 3.24.
                "INSERT OR REPLACE INTO workers (id, pid, host, threads, started_at, heartbeat_at, lease_until, "
                "host_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (worker, pid, host, threads, started_at, now, now + lease_s, host_key))
            con.execute("UPDATE jobs SET lease_until = ? WHERE state = ? AND worker = ?",
                        (now + lease_s, PROCESSING, worker))

    def note_process(self, job, worker, process):
        """Replace the `process` text that a processing job's claim kept, fenced by the claim.

        Returns whether it was kept (False: the claim was lost).
        """
        with self._write() as con:
            return con.execute(
                "UPDATE jobs SET run_process = ? WHERE seq = ? AND state = ? AND worker = ? AND runs = ?",
                (process, job["seq"], PROCESSING, worker, job["run"])).rowcount == 1

    def deregister(self, worker):
        with self._write() as con:
            con.execute("DELETE FROM workers WHERE id = ?", (worker,))

    def recover(self, now, settings, *, me=None, before_retry=None):
        """processing -> failed/dead ("worker lost") for every job whose worker is lost;
        forget lost workers. Returns the recovered jobs as (id, new state) pairs.

        A worker is lost when it died in our process table (its pid is gone), or when
        its lease expired and it has stopped pulsing (see `home.pulse`): a lease
        that lapsed while a long transaction held the lock, or while we were
        frozen ourselves, is not a lost worker. `me`, the caller, is never lost.
        Fenced by the run number, like every transition. `before_retry(id, run,
        process)` is called for each job whose claim kept a process text (see
        `claim`), inside the transaction: the job cannot be claimed again before
        it returns.
        """
        lease_s = settings["lease-seconds"]

        def lost(worker):
            if worker == me:
                return False
            age = qhome.pulse_age(self.home, worker)
            return age is None or age > lease_s + PULSE_GRACE_S

        dead_workers = {worker for worker, key, pid in self._read(
            "SELECT id, host_key, pid FROM workers WHERE lease_until >= ?", (now,)) if not qhome.worker_alive(key, pid)}
        # Read first: almost always there is nothing to do, and then no write lock is taken.
        if not dead_workers and not self._read(
                "SELECT 1 FROM jobs WHERE state = ? AND lease_until < ? UNION ALL "
                "SELECT 1 FROM workers WHERE lease_until < ? LIMIT 1", (PROCESSING, now, now)):
            return []
        recovered = []
        with self._write() as con:
            expired = {w for (w,) in con.execute("SELECT id FROM workers WHERE lease_until < ?", (now,))}
            rows = [row for row in con.execute(
                        "SELECT seq, id, attempts, max_retries, runs, worker, lease_until < ?, run_process FROM jobs "
                        "WHERE state = ?", (now, PROCESSING))
                    if row[5] in dead_workers or (row[6] and lost(row[5]))]
            gone = dead_workers | {w for w in expired if lost(w)} | {row[5] for row in rows}
            for seq, job_id, attempts, max_retries, run, worker, _, process in rows:
                if before_retry is not None and process is not None:
                    before_retry(job_id, run, process)
                job = {"seq": seq, "attempts": attempts, "max_retries": max_retries, "run": run}
                recovered.append((job_id, self._fail(con, Outcome(FAIL, job, worker, now, "worker lost"), settings).state))
            con.executemany("DELETE FROM workers WHERE id = ?", [(w,) for w in gone])
        for worker in gone:
            qhome.forget_pulse(self.home, worker)
        return recovered

    def live_workers(self, now):
        """Live worker processes, each with the ids of the jobs it runs.

        Live means its lease has not expired and, for a worker registered in
        our process table (same host key), that its process still exists.
        """
        rows = [r for r in self._read("SELECT id, pid, host, threads, started_at, heartbeat_at, host_key "
                                      "FROM workers WHERE lease_until >= ? ORDER BY started_at", (now,))
                if qhome.worker_alive(r[6], r[1])]
        running = {}
        for worker, job_id in self._read("SELECT worker, id FROM jobs WHERE state = ? ORDER BY started_at",
                                         (PROCESSING,)):
            running.setdefault(worker, []).append(job_id)
        return [{"id": r[0], "pid": r[1], "host": r[2], "threads": r[3], "started_at": r[4],
                 "heartbeat_at": r[5], "host_key": r[6], "running": running.get(r[0], [])} for r in rows]

    # ------------------------------------------------------------ queries

    def counts(self):
        """Jobs per state, all five states present."""
        counts = dict.fromkeys(STATES, 0)
        for state, n in self._read("SELECT state, count(*) FROM jobs GROUP BY state"):
            counts[state] = n
        return counts

    def wait_finished(self, ids, *, timeout=None):
        """Block until the jobs `ids` (all jobs when empty) are finished, or `timeout` passes.

        Returns (counts per state of those jobs, whether all finished). An
        unknown id raises JobNotFound at once rather than waiting forever.
        """
        for job_id in ids:
            self.get(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if ids:
                counts = dict.fromkeys(STATES, 0)
                for job_id in ids:
                    counts[self.get(job_id)["state"]] += 1
            else:
                counts = self.counts()
            if not any(counts[s] for s in UNFINISHED_STATES):
                return counts, True
            if deadline is not None and time.monotonic() >= deadline:
                return counts, False
            time.sleep(WAIT_POLL_S)

    def wait_workers_gone(self, worker_ids, *, timeout=None):
        """Block until none of `worker_ids` is a live worker; returns those still alive at `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            alive = set(worker_ids) & {w["id"] for w in self.live_workers(time.time())}
            if not alive or (deadline is not None and time.monotonic() >= deadline):
                return alive
            time.sleep(WAIT_POLL_S)

    def list_jobs(self, *, state=None, limit=DEFAULT_LIST_LIMIT, newest_first=False, after_seq=None):
        """Jobs in enqueue order (oldest first, or newest first), at most `limit` (0 = all).

        `after_seq` continues a listing: only the jobs after that `seq` (each row has its own) in this order.
        """
        sql = "SELECT " + JOB_COLUMNS + " FROM jobs"
        params = []
        if state is not None:
            sql += " WHERE state = ?"
            params.append(state)
        if after_seq is not None:
            sql += (" AND " if params else " WHERE ") + ("seq < ?" if newest_first else "seq > ?")
            params.append(after_seq)
        sql += " ORDER BY seq DESC" if newest_first else " ORDER BY seq"
        if 0 < limit <= SQLITE_MAX_INT:  # a larger limit means all, as 0 does: SQLite cannot bind it
            sql += " LIMIT ?"
            params.append(limit)
        return [_job_dict(row) for row in self._read(sql, params)]

    def get(self, job_id):
        rows = self._read("SELECT " + JOB_COLUMNS + " FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise JobNotFound(job_id)
        return _job_dict(rows[0])

    def job_runs(self, job, *, with_output=False):
        """Every run of `job` (a dict from `get`), numbered over its whole life."""
        cols = "run, attempt, worker, started_at, finished_at, exit_code, error" + (", stdout, stderr" if with_output else "")
        runs = [dict(zip(cols.split(", "), row))
                for row in self._read("SELECT " + cols + " FROM runs WHERE job_seq = ? ORDER BY run",
                                      (job["seq"],))]
        # The latest run has no row while it runs, or if it succeeded silently.
        if job["run"] and (not runs or runs[-1]["run"] < job["run"]):
            latest = {"run": job["run"], "attempt": job["attempts"], "worker": job["worker"], "started_at": job["started_at"],
                      "finished_at": None, "exit_code": None, "error": None}
            if job["state"] == COMPLETED:
                latest.update(finished_at=job["finished_at"], exit_code=0)
            if with_output:
                latest.update(stdout=None, stderr=None)
            runs.append(latest)
        return runs

    def run_totals(self):
        """Every finished run of the stored jobs, per outcome: {"completed": RunTotals, "failed": RunTotals}.

        A retry is a run with attempt > 1. Silent successes have no runs row:
        they come from completed jobs' own times.
        """
        totals = {COMPLETED: RunTotals(0, 0.0, 0), FAILED: RunTotals(0, 0.0, 0)}
        for failed, n, seconds, retries in self._read(
                "SELECT error IS NOT NULL, count(*), total(finished_at - started_at), total(attempt > 1) "
                "FROM runs GROUP BY error IS NOT NULL"):
            totals[FAILED if failed else COMPLETED] = RunTotals(n, seconds, int(retries))
        n, seconds, retries = self._read(
            "SELECT count(*), total(finished_at - started_at), total(attempts > 1) FROM jobs "
            "WHERE state = ? AND " + _SILENT_SUCCESS, (COMPLETED,))[0]
        done = totals[COMPLETED]
        totals[COMPLETED] = RunTotals(done.runs + n, done.seconds + seconds, done.retries + int(retries))
        return totals

    def runs_since(self, since):
        """Runs finished at or after `since`, as RecentRun rows."""
        return [RecentRun(r[0], r[1], bool(r[2]), r[3]) for r in self._read(
            "SELECT finished_at, finished_at - started_at, error IS NOT NULL, attempt FROM runs "
            "WHERE finished_at >= ? "
            "UNION ALL SELECT finished_at, finished_at - started_at, 0, attempts FROM jobs "
            "WHERE state = ? AND finished_at >= ? AND " + _SILENT_SUCCESS, (since, COMPLETED, since))]

    def oldest_due_pending(self, now):
        """When the longest-waiting runnable pending job became runnable, or None."""
        return self._read("SELECT min(next_run_at) FROM jobs WHERE state = ? AND next_run_at <= ?",
                          (PENDING, now))[0][0]

    # ------------------------------------------------------------ user actions

    def retry_dead(self, job_id, now):
        """dead -> pending with attempts reset. Raises if the job is not dead."""
        with self._write() as con:
            if con.execute(_RETRY_DEAD_SQL + " AND id = ?", (PENDING, now, now, DEAD, job_id)).rowcount == 1:
                return
            row = con.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        raise InvalidState("job %r is %s, not dead: only dead jobs can be retried" % (job_id, row[0]))

    def retry_all_dead(self, now):
        """Every dead job -> pending with attempts reset. Returns how many."""
        with self._write() as con:
            return con.execute(_RETRY_DEAD_SQL, (PENDING, now, now, DEAD)).rowcount

    def delete(self, job_id):
        """Remove a job that is not processing, with its runs."""
        with self._write() as con:
            row = con.execute("SELECT seq, state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            if row[1] == PROCESSING:
                raise InvalidState("job %r is processing: wait for it to finish (or stop its worker) first"
                                   % (job_id,))
            con.execute("DELETE FROM runs WHERE job_seq = ?", (row[0],))
            con.execute("DELETE FROM jobs WHERE seq = ?", (row[0],))

    def purge(self, state, *, older_than_s=0.0, now):
        """Remove `completed` or `dead` jobs last updated at least `older_than_s` ago. Returns how many."""
        if state not in FINISHED_STATES:
            raise InvalidJob("purge removes completed or dead jobs, not %s" % state)
        with self._write() as con:
            cutoff = now - older_than_s
            con.execute("DELETE FROM runs WHERE job_seq IN (SELECT seq FROM jobs WHERE state = ? "
                        "AND updated_at <= ?)", (state, cutoff))
            return con.execute("DELETE FROM jobs WHERE state = ? AND updated_at <= ?", (state, cutoff)).rowcount

    # ------------------------------------------------------------ config

    def config(self):
        """Every key with its value: stored, else the default."""
        import json  # here, not at the top: most commands never read the config
        values = qconfig.defaults()
        for key, text in self._read("SELECT key, value FROM config"):
            if key in values:
                values[key] = json.loads(text)
        return values

    def set_config(self, key, value):
        """Store a value already checked by `config.value`."""
        import json
        with self._write() as con:
            con.execute("INSERT OR REPLACE INTO config (key, value) VALUES (?, ?)", (key, json.dumps(value)))


# A completed job whose latest run wrote no runs row: it succeeded without output.
_SILENT_SUCCESS = "NOT EXISTS (SELECT 1 FROM runs WHERE runs.job_seq = jobs.seq AND runs.run = jobs.runs)"
_CLAIM_SELECT = ("SELECT seq FROM jobs INDEXED BY jobs_ready WHERE state IN ('pending', 'failed') AND next_run_at <= ? "
                 "ORDER BY priority DESC, next_run_at, seq LIMIT 1")
_CLAIM_SQL = ("UPDATE jobs SET state = 'processing', attempts = attempts + 1, runs = runs + 1, worker = ?, "
              "lease_until = ?, started_at = ?, finished_at = NULL, updated_at = ?, run_process = ? WHERE seq = ")
# Built once: the claim runs once per job, and sqlite3 finds its cached statement by the text.
_CLAIM_RETURNING_SQL = _CLAIM_SQL + "(" + _CLAIM_SELECT + ") RETURNING " + CLAIM_COLUMNS
_CLAIM_KEYS = tuple(column.split()[-1] for column in CLAIM_COLUMNS.split(", "))
_JOB_KEYS = tuple(column.split()[-1] for column in JOB_COLUMNS.split(", "))


_RETRY_DEAD_SQL = "UPDATE jobs SET state = ?, attempts = 0, next_run_at = ?, updated_at = ? WHERE state = ?"


def _job_dict(row):
    return dict(zip(_JOB_KEYS, row))
