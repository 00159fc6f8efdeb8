"""The job store: every SQL statement of queuectl lives in this module.

One SQLite file in WAL mode. Connections run with implicit transactions off and
every write goes through `Store._write()`, which issues BEGIN IMMEDIATE, so
writers queue on SQLite's lock (with a busy timeout) instead of failing. A
write that may make a job claimable now (enqueue, retry, edit, set_queue)
pokes the home's idle workers once it has committed (`qctl/wake.py`): how
workers are woken stays behind the verbs, as LISTEN/NOTIFY would.

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
  running_run, publish_output              what running commands have printed so far (for logs --follow)
  heartbeat, deregister, live_workers      worker registration and liveness
  recover                                  jobs of lost workers back to the queue
  poll_for_work, next_due, housekeep       an idle worker's wake-up check and how long it may sleep; WAL upkeep
  counts, list_jobs, get, job_runs, run_output, run_totals, runs_since, oldest_due_pending   queries
  live_output, kept_output                 a job with its running output; a run's tails with their totals
  wait_finished, wait_workers_gone         block until jobs finish / workers exit (polling)
  cancel, cancel_requests, retry, edit, delete, purge, prune   user actions (prune: retention)
  queues, set_queue                        named queues: paused, concurrency
  check, backup                            health, and a consistent copy while workers run
  config, set_config                       settings
  add_schedule, schedules, remove_schedule recurring jobs;
  next_schedule_at, fire_schedules           ... and their firing (a worker's)
  stop_generation, request_stop            stopping every worker (the stopfile; on PostgreSQL a row)
  export_rows, import_rows                 a whole queue, copied to another store (`migrate --to`)
"""

import functools
import os
import pathlib
import sqlite3
import threading
import time
from collections import namedtuple
from contextlib import contextmanager

from . import config as qconfig
from . import cron as qcron
from . import home as qhome
from . import wake
from .errors import (BadDependency, DatabaseDamaged, DuplicateJob, InvalidJob, InvalidState, JobNotFound,
                     ScheduleNotFound, StoreError)
from .jobs import (COMPLETE, COMPLETED, DEAD, FAIL, FAILED, FINISHED_STATES, PENDING, PROCESSING, RELEASE, STATES,
                   UNFINISHED_STATES, DEFAULT_LIST_LIMIT, DEFAULT_QUEUE, CANCEL, CANCELLED, CANCELLED_ERROR,
                   EDITABLE_STATES, Outcome, after_failure, as_input, check_batch_after, validate_job)

BUSY_TIMEOUT_S = 30.0
WAL_RETRY_S = 0.005
PRUNE_BATCH = 500  # jobs removed by one retention transaction
EXPORT_BATCH = 1000  # rows a batch of export_rows (of runs, which may hold 2 x output-limit bytes each: 20)
WAIT_POLL_S = 0.1  # wait_finished / wait_workers_gone look this often
LIMITS_SEEN_S = 1.0  # a finish reads again whether its queue has a concurrency limit after this long
WAL_RESTART_BYTES = 16 * 1024 * 1024  # past this, housekeep() makes the WAL start over (and SQLite cuts it back)
WAL_SMALL_BYTES = 256 * 1024  # a WAL this small is never worth a RESTART checkpoint
WAL_IDLE_S = 2.0   # no other commit for this long: housekeep() truncates the WAL to nothing
PULSE_GRACE_S = 1.0  # a pulse file's mtime may be as coarse as a second (HFS+)
CHECKPOINT_BUSY_MS = 100  # a checkpoint waits this long for readers, then tries again next time
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
SQLITE_MAX_INT = 2 ** 63 - 1

def is_url(target):
    """Whether a --db / QUEUECTL_DB value names a PostgreSQL server rather than a SQLite file."""
    return target.startswith(("postgresql://", "postgres://"))


def open_store(target, **options):
    """The store at `target`: a PostgreSQL URL (`qctl.pgstore`, imported only then) or a SQLite file.
    `options` are Store's (durable, autocheckpoint); a PostgreSQL store takes and ignores them."""
    if is_url(target):
        from .pgstore import PgStore
        return PgStore(target, **options)
    return Store(target, **options)


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

# Control: named queues (paused, a concurrency limit), tags, cancelling a running job.
SCHEMA_V4 = (
    "ALTER TABLE jobs ADD COLUMN queue TEXT NOT NULL DEFAULT 'default'",
    "ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
    # The claim skips jobs of paused or saturated queues as it walks this index: the queue
    # is in it, so skipping costs no table read.
    "DROP INDEX jobs_ready",
    """CREATE INDEX jobs_ready ON jobs (priority DESC, next_run_at, seq, queue)
        WHERE state IN ('pending', 'failed')""",
    # Retention finds finished jobs by when they finished. (Partial on IS NOT NULL: SQLite sees that
    # any `finished_at < ?` implies it; it cannot see that a narrower IN implies a wider one.)
    "CREATE INDEX jobs_finished ON jobs (state, finished_at) WHERE finished_at IS NOT NULL",
    """CREATE TABLE queues (
        name         TEXT PRIMARY KEY,
        paused       INTEGER NOT NULL DEFAULT 0,
        concurrency  INTEGER NOT NULL DEFAULT 0   -- 0: no limit
    ) WITHOUT ROWID""",
    "CREATE TABLE job_tags (tag TEXT NOT NULL, job_seq INTEGER NOT NULL, PRIMARY KEY (tag, job_seq)) WITHOUT ROWID",
    "CREATE INDEX job_tags_job ON job_tags (job_seq)",
)

# Following a running job's output (`logs --follow`). live_output: what each running command has
# printed so far, as its worker's housekeeping publishes it (one row per running job, replaced in
# place, removed once the run has ended). runs.*_total: how many bytes a recorded run printed in
# all, of which its stdout/stderr are the kept tail (NULL: not known, as for a lost run).
SCHEMA_V5 = (
    """CREATE TABLE live_output (
        job_seq      INTEGER PRIMARY KEY,
        run          INTEGER NOT NULL,
        started_at   REAL,               -- the claim's: a run number given back by a hard stop is used again
        stdout       BLOB,               -- the last output-limit bytes printed so far (masked)
        stderr       BLOB,
        stdout_total INTEGER NOT NULL,   -- bytes printed so far
        stderr_total INTEGER NOT NULL,
        updated_at   REAL NOT NULL
    )""",
    "ALTER TABLE runs ADD COLUMN stdout_total INTEGER",
    "ALTER TABLE runs ADD COLUMN stderr_total INTEGER",
)

# Workflow: dependencies, unique keys, schedules.
# jobs.waiting: how many of its dependencies have not ended as its after_policy needs. Finishing
# a job updates its dependents' counts in the same transaction, and the claim's index leaves out
# every waiting job: 10,000 of them cost a claim nothing. jobs.after: the ids it was given
# (TAG_SEPARATOR between them), as shown; job_deps holds the same edges by seq, for the counting.
# jobs_unique: the atom of unique keys: two unfinished jobs can never hold the same one.
SCHEMA_V6 = (
    "ALTER TABLE jobs ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN after TEXT",
    "ALTER TABLE jobs ADD COLUMN after_policy TEXT",
    "ALTER TABLE jobs ADD COLUMN unique_key TEXT",
    "DROP INDEX jobs_ready",
    """CREATE INDEX jobs_ready ON jobs (priority DESC, next_run_at, seq, queue)
        WHERE state IN ('pending', 'failed') AND waiting = 0""",
    """CREATE UNIQUE INDEX jobs_unique ON jobs (unique_key)
        WHERE unique_key IS NOT NULL AND state IN ('pending', 'processing', 'failed')""",
    "CREATE TABLE job_deps (dep_seq INTEGER NOT NULL, job_seq INTEGER NOT NULL, PRIMARY KEY (dep_seq, job_seq)) "
    "WITHOUT ROWID",
    "CREATE INDEX job_deps_job ON job_deps (job_seq)",
    """CREATE TABLE schedules (
        name         TEXT PRIMARY KEY,
        spec         TEXT NOT NULL,       -- 'every 90s' or 'cron M H DOM MON DOW', as qctl.cron parses it
        job          TEXT NOT NULL,       -- the job to enqueue, as JSON input (validated when added)
        overlap      INTEGER NOT NULL DEFAULT 0,
        next_at      REAL NOT NULL,       -- when it fires next
        last_job     TEXT,                -- the id of the job it enqueued last
        last_fired_at REAL,
        last_error   TEXT,                -- why its last fire could not make a job, or NULL
        created_at   REAL NOT NULL
    ) WITHOUT ROWID""",
)

MIGRATIONS = (SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6)  # MIGRATIONS[n]: version n -> n + 1
OUR_TABLES = {"jobs", "runs", "config", "workers"}
V1_JOB_COLUMNS = {"seq", "runs", "next_run_at", "lease_until", "last_error"}  # telling enough to be ours
SCHEMA_VERSION = len(MIGRATIONS)

# Whether dependency `dep` of the job `jobs` holds it back: it has not completed, and has not ended
# otherwise either where the job's after_policy is `finished`.
_UNSATISFIED = ("dep.state <> 'completed' AND NOT (jobs.after_policy = 'finished' "
                "AND dep.state IN ('dead', 'cancelled'))")
# How many of its dependencies hold the job `jobs` back.
_WAITING = ("(SELECT count(*) FROM job_deps AS d JOIN jobs AS dep ON dep.seq = d.dep_seq "
            "WHERE d.job_seq = jobs.seq AND " + _UNSATISFIED + ")")

# `runs`, the column, counts the job's runs over its whole life; rows call it `run`: the number
# of its latest run (the `runs` table holds the runs themselves).
JOB_COLUMNS = ("seq, id, command, state, attempts, runs AS run, max_retries, priority, run_at, next_run_at, "
               "timeout, cwd, env, created_at, updated_at, started_at, finished_at, worker, "
               "lease_until, exit_code, last_error, queue, cancel_requested, "
               "(SELECT group_concat(tag, char(31)) FROM job_tags WHERE job_seq = jobs.seq) AS tags, "
               "after, after_policy, unique_key, waiting, "
               "CASE WHEN waiting > 0 THEN (SELECT group_concat(dep.id, char(31)) FROM job_deps AS d "
               "JOIN jobs AS dep ON dep.seq = d.dep_seq WHERE d.job_seq = jobs.seq AND " + _UNSATISFIED + ") "
               "END AS waiting_for")
_JOB_KEYS = ("seq", "id", "command", "state", "attempts", "run", "max_retries", "priority", "run_at", "next_run_at",
             "timeout", "cwd", "env", "created_at", "updated_at", "started_at", "finished_at", "worker",
             "lease_until", "exit_code", "last_error", "queue", "cancel_requested", "tags",
             "after", "after_policy", "unique_key", "waiting", "waiting_for")
CLAIM_COLUMNS = "seq, id, command, attempts, runs AS run, max_retries, timeout, cwd, env, queue"
_LIVE_KEYS = ("run", "started_at", "stdout", "stderr", "stdout_total", "stderr_total")
# A live_output row whose run has ended: its job is no longer processing that claim.
_LIVE_ENDED = ("NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.seq = live_output.job_seq AND jobs.state = 'processing' "
               "AND jobs.runs = live_output.run AND jobs.started_at IS live_output.started_at)")
TAG_SEPARATOR = "\x1f"  # tags have no control characters

class Enqueued(list):
    """What `Store.enqueue` returns: the jobs' ids in order. `conflicts`: the positions of jobs not
    stored because an unfinished job held their unique key; their place holds that job's id."""
    conflicts = ()


# collections' namedtuples, not typing's (see config.Setting).
# A recorded outcome: the job's new state, and when it may run again (a retry; or None).
Recorded = namedtuple("Recorded", "state next_run_at")
# What `fire_schedules` did for one due schedule: the job it enqueued, or (job_id None) why not, and
# whether that is a failure (its job is invalid now) rather than a skip (overlap, a unique key held).
Fired = namedtuple("Fired", "name due_at job_id skipped failed")
# runs; seconds: time run, in all; retries: runs with attempt > 1.
RunTotals = namedtuple("RunTotals", "runs seconds retries")
# finished_at; duration (or None); failed (bool); attempt.
RecentRun = namedtuple("RecentRun", "finished_at duration failed attempt")


# Set by a commit that found the WAL past its bound: the process's housekeeping runs at once.
_UPKEEP = threading.Event()

# Threads of one process queue on this lock before SQLite's: SQLite's busy
# handler sleeps in growing steps, a Python lock hands over at once. Safety
# between processes still rests on BEGIN IMMEDIATE alone.
_WRITE_LOCK = threading.Lock()


# What SQLite's message says -> (our message, error class, whether the connection must be
# opened afresh before its next use). The first match wins.
_SQLITE_ERRORS = (
    (("locked", "busy"), "the database %(path)s stayed locked by another process for over %(busy)ds; try again",
     StoreError, False),
    (("not a database", "malformed", "corrupt", "encrypted"), "%(path)s is not a usable queuectl database (%(text)s)",
     DatabaseDamaged, False),
    (("readonly", "read-only"), "the database %(path)s is read-only (%(text)s)", StoreError, False),
    (("full",), "no space left to write the database %(path)s (%(text)s)", StoreError, True),
    (("unable to open", "disk i/o"), "cannot open the database %(path)s (%(text)s)", StoreError, True),
)


def _store_error(exc, path):
    """(the StoreError for an sqlite3 error, whether its connection must be opened afresh).
    DatabaseDamaged: retrying cannot help."""
    text = str(exc)
    values = {"path": path, "text": text, "busy": BUSY_TIMEOUT_S}
    for words, message, error, stuck in _SQLITE_ERRORS:
        if any(word in text.lower() for word in words):
            return error(message % values), stuck
    return StoreError("database error on %(path)s: %(text)s" % values), False


def _not_unicode(exc):
    # A value typed by the user (a job id from argv) held bytes that are not UTF-8:
    # Python passes them on as lone surrogates, which SQLite cannot bind.
    return InvalidJob("%r is not valid Unicode text (it holds bytes that are not UTF-8)" % (exc.object[:60],))


class Store:
    """One connection to the queue database. Not shared between threads: each opens its own.

    `durable=True` (the CLI) commits with synchronous=FULL, so an acknowledged
    enqueue survives a power cut. Workers pass `durable=False` (NORMAL in WAL:
    a transition lost in a power cut re-runs a job, which at-least-once allows)
    and `autocheckpoint=False` (they checkpoint from their housekeeping thread, off
    the job path).
    """

    def __init__(self, path, *, durable=True, autocheckpoint=True):
        self.path = path
        self.home = os.path.dirname(path)
        self._start_verbs()
        self._house_version = None # housekeep: PRAGMA data_version, and since when it has not changed
        self._quiet_since = time.monotonic()
        self._pulses_seen = {}     # recover: worker -> (stale pulse mtime, when we first saw it)
        self._restart_after = 0.0  # housekeep: a busy RESTART checkpoint is not retried before this
        self._restart_backoff_s = 0.0
        self._durable, self._autocheckpoint = durable, autocheckpoint
        self._stuck = False        # a write failed for want of space: open afresh before the next
        self._stopfile_seen, self._stop_generation = (), 0  # stop_generation: the file's signature, its value
        self._connect()
        try:
            try:
                st = os.stat(path)
            except OSError:  # it was there a moment ago, when SQLite opened it
                raise StoreError("the database %s was deleted or replaced while it was being opened" % path) from None
            self._identity = (st.st_dev, st.st_ino)
            self._migrate()
        except sqlite3.Error as exc:
            self.con.close()
            raise _store_error(exc, path)[0] from None
        except BaseException:
            self.con.close()
            raise

    def _start_verbs(self):
        """What the verbs keep between calls, on every store."""
        self._seen_version = None  # poll_for_work: _data_version() last time
        self._next_due = None      # poll_for_work: when the earliest waiting job falls due
        self._live_seen = None     # live_output: ((data version, own changes), job id, answer) last time
        self._poke = False         # _write: poke idle workers once this transaction has committed
        self._limits_seen = {}     # _limited: queue -> (whether it has a concurrency limit, when read)

    def _connect(self):
        try:
            # mode=rw: never create the file. Only home.ensure does, private; a database deleted
            # under us must not come back as an empty one with the umask's mode.
            self.con = sqlite3.connect(pathlib.Path(os.path.abspath(self.path)).as_uri() + "?mode=rw",
                                       timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False,
                                       uri=True)
        except sqlite3.Error as exc:
            if not os.path.exists(self.path):  # home.ensure makes it: someone removed it since, or it never was
                raise StoreError("the database %s does not exist: it was deleted or replaced (or never made: "
                                 "'queuectl init' makes it)" % self.path) from None
            raise self._note(exc) from None
        try:
            self.con.execute("PRAGMA busy_timeout = %d" % int(BUSY_TIMEOUT_S * 1000))
            self.con.execute("PRAGMA synchronous = %s" % ("FULL" if self._durable else "NORMAL"))
            # When the WAL starts over, its file is cut back to this size instead of staying at its peak.
            self.con.execute("PRAGMA journal_size_limit = %d" % WAL_RESTART_BYTES)
            if not self._autocheckpoint:
                self.con.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            self.con.close()
            raise self._note(exc) from None

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
        error, stuck = _store_error(exc, self.path)
        self._stuck = self._stuck or stuck
        return error

    def close(self):
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ what a second backend changes
    # The verbs below are written once, in SQL both stores read; these are where they differ.

    IntegrityError = sqlite3.IntegrityError  # a constraint (unique id, unique key, primary key) refused a write
    _FOR_UPDATE = ""  # after a SELECT of rows the transaction then changes: SQLite's write lock covers them
    _SKIP_LOCKED = ""  # ... and of rows that only one of many callers at once may take (due schedules)
    # Whether an expired lease alone means a worker is lost. Not on SQLite: a worker on this host may
    # be alive and pulsing while a long transaction of another kept its heartbeat out (see `recover`).
    LEASE_IS_FINAL = False

    @staticmethod
    def now():
        """The time this store's verbs go by (epoch seconds): this host's clock, since the file is on it."""
        return time.time()

    @staticmethod
    def _is_key_conflict(exc):
        """Whether IntegrityError `exc` is a unique key that an unfinished job holds."""
        return "unique_key" in str(exc)

    @contextmanager
    def _savepoint(self, con):
        """Around a statement whose IntegrityError the transaction handles and goes on from: a failed
        statement leaves a SQLite transaction as it was before it."""
        yield

    _OUTPUT_TAILS = "substr(stdout, -?), substr(stderr, -?)"  # the last ? bytes of a run's stdout and stderr

    def _lock_dependency_graph(self, con):
        """Before a transaction changes which jobs a stored job waits for (`edit --after`): its cycle
        check must see every other such change. SQLite's write lock is that already."""

    def _data_version(self):
        """A number that changes when another connection commits (PRAGMA data_version reads no disk)."""
        return self._read("PRAGMA data_version")[0][0]

    def _own_changes(self):
        """A number that changes when this connection writes."""
        return self.con.total_changes

    def waker(self, name):
        """What a worker's supervisor sleeps on until work may have come (see `qctl.wake`)."""
        waker = wake.Waker(self.home, name)
        wake.poke(self.home)  # once: removes the sockets of dead workers (and wakes the others, harmlessly)
        return waker

    def stop_generation(self):
        """How many times a stop of every worker was asked for (the stopfile's generation). Reads the
        file only when it changed since this store's last call."""
        try:
            st = os.stat(qhome.stopfile_path(self.home))
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            signature = None
        if signature != self._stopfile_seen:
            self._stopfile_seen, self._stop_generation = signature, qhome.stop_generation(self.home)
        return self._stop_generation

    def request_stop(self):
        """Ask every worker running now to stop (see `home.request_stop`)."""
        qhome.request_stop(self.home)

    # ------------------------------------------------------------ plumbing

    def _migrate(self):
        # One read transaction: three separate reads could see another process's migration
        # half-way (version 0, then its tables) and refuse a fresh home as not ours.
        self.con.execute("BEGIN")
        try:
            version = self.con.execute("PRAGMA user_version").fetchone()[0]
            ours = (self.con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
                    or self._unmarked_ours(version))
        finally:
            self.con.execute("COMMIT")
        if not ours:
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
        if version == 0:
            return not tables
        columns = {row[1] for row in self.con.execute("PRAGMA table_info(jobs)")}
        return version == 1 and OUR_TABLES <= tables and V1_JOB_COLUMNS <= columns

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
    def _write(self, *, wakes_workers=False):
        """One BEGIN IMMEDIATE transaction: commit on success, roll back and re-raise on error.

        `wakes_workers`: the transaction may make a job claimable now, so once it has committed
        the home's idle workers are poked (`wake.poke`): one poke per transaction, however many
        jobs it wrote. The worker's own transactions poke only when they make jobs claimable
        for others (a finished job's dependents, a schedule's fire: see `_poke`); the rest
        is either due later (a retry's backoff, which the next-due look catches) or claimed in
        the same transaction."""
        with _WRITE_LOCK:
            self._poke = wakes_workers  # the transaction's verbs may set it too
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
        if self._poke:  # committed: outside the lock, which our other threads may be waiting for
            wake.poke(os.path.dirname(self.path))

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
        """Whether a job may have become claimable since the last call: a waiting
        job (new, retried, delayed, backing off) is due now, after another
        connection committed or because its time came. A commit that left
        nothing due (a job claimed, one delayed) answers False.

        Cheap when nothing changed: PRAGMA data_version reads no disk. The
        first call answers True.

        Once a due time has come, the next one is the earliest still to come:
        a job due already that the caller passes over (another queue's, a
        paused queue's) must not hide a retry falling due later, or a worker
        of `--queue q` would see that retry only at its next safety wake-up.
        """
        version = self._data_version()
        if version != self._seen_version:
            self._seen_version = version
            self._next_due = self._next_due_at()
        if self._next_due is not None and now >= self._next_due:
            self._next_due = self._next_due_at(after=now)
            return True
        return False

    def next_due(self):
        """When the earliest waiting job falls due (epoch seconds), as of the last `poll_for_work`;
        None when none waits or that time has been answered already. An idle worker sleeps no
        longer than that."""
        return self._next_due

    def _next_due_at(self, after=None):
        # The claim's index covers this query, where the planner's own choice (the state
        # index) also reads every waiting row (12 ms against 5.6 ms with 100,000 future jobs).
        sql = "SELECT min(next_run_at) FROM jobs INDEXED BY jobs_ready WHERE state IN ('pending', 'failed') AND waiting = 0"
        if after is None:
            return self._read(sql)[0][0]
        return self._read(sql + " AND next_run_at > ?", (after,))[0][0]

    def _check_wal(self):
        """After a commit: a WAL past its bound wakes the housekeeping (see `await_upkeep`) at once.
        A stat, no more, when it is within bounds: at full speed the WAL grows ~30 MB a second."""
        try:
            size = os.path.getsize(self.path + "-wal")
        except OSError:
            return
        if self._wal_over(size):
            _UPKEEP.set()

    def _wal_over(self, size):
        """Whether a WAL of `size` bytes is past its bound. The free space is asked for only past
        WAL_SMALL_BYTES: this runs after every commit."""
        return size > WAL_SMALL_BYTES and size > self._wal_limit()

    def _wal_limit(self):
        """WAL_RESTART_BYTES, or a quarter of the free disk space if that is less: the checkpoint
        that lets the WAL start over needs room to grow the database file itself."""
        import shutil  # here: only a WAL past WAL_SMALL_BYTES asks, and every command imports this module
        try:
            return min(WAL_RESTART_BYTES, shutil.disk_usage(self.home).free / 4)
        except OSError:
            return WAL_RESTART_BYTES

    def await_upkeep(self, timeout):
        """Block until `housekeep` is due: a commit found the WAL past its bound, or `timeout` passed
        (just `timeout` while a busy checkpoint backs off)."""
        if time.monotonic() < self._restart_after:
            time.sleep(timeout)
        else:
            _UPKEEP.wait(timeout)
        _UPKEEP.clear()

    @staticmethod
    def wake_upkeep():
        """End an `await_upkeep` of this process now (a worker that is stopping: its housekeeping
        thread then sees that at once, rather than a WAL tick later)."""
        _UPKEEP.set()

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
        version = self._data_version()
        if version != self._house_version:
            self._house_version, self._quiet_since = version, time.monotonic()
        if size > 0 and time.monotonic() - self._quiet_since >= WAL_IDLE_S:
            mode = "TRUNCATE"
        elif self._wal_over(size) and time.monotonic() >= self._restart_after:
            # Below its usual bound (a nearly full disk) the file itself must shrink, not just start over.
            mode = "RESTART" if self._wal_limit() >= WAL_RESTART_BYTES else "TRUNCATE"
        else:
            return
        with _WRITE_LOCK:  # our own threads queue here rather than in SQLite's busy handler
            self._read("PRAGMA busy_timeout = %d" % CHECKPOINT_BUSY_MS)
            try:
                busy = self._read("PRAGMA wal_checkpoint(%s)" % mode)[0][0]
            finally:
                self._read("PRAGMA busy_timeout = %d" % int(BUSY_TIMEOUT_S * 1000))
        # A reader kept it from finishing (a long `list`, the dashboard): every try holds writers back
        # for up to CHECKPOINT_BUSY_MS, so wait longer each time (up to 2 s) rather than at every commit.
        self._restart_backoff_s = min(2.0, max(0.1, 2 * self._restart_backoff_s)) if busy else 0.0
        self._restart_after = time.monotonic() + self._restart_backoff_s

    # ------------------------------------------------------------ enqueue

    def enqueue(self, new_jobs, now):
        """Store validated jobs (from `jobs.validate_job`) as `pending`, all or none.

        Returns their ids in order, as an `Enqueued` list. A duplicate id (stored or within
        the batch) raises DuplicateJob, naming the first job that repeats one, and stores
        nothing; so does a dependency (`after`) on an unknown job, or a cycle among the
        batch's jobs (BadDependency). A job whose unique key an unfinished job holds is not
        stored: its place holds that job's id, and `conflicts` its position.
        """
        ids = [job["id"] or os.urandom(8).hex() for job in new_jobs]
        try:
            with self._write(wakes_workers=True) as con:
                return self._insert(con, new_jobs, ids, now)
        except self.IntegrityError:
            index = self._first_duplicate(ids)
            raise DuplicateJob(ids[index], index) from None

    def _insert(self, con, new_jobs, ids, now):
        """`enqueue`'s work, inside the caller's transaction (a schedule's fire is another)."""
        self._poke = True
        check_batch_after(new_jobs, ids, lambda job_id: self._seq_of(con, job_id) is not None)
        rows = [(job_id, job["command"], PENDING, job["max_retries"], job["priority"], job["run_at"], job["run_at"],
                 job["timeout"], job["cwd"], job["env"], now, now, job.get("queue") or DEFAULT_QUEUE,
                 TAG_SEPARATOR.join(job.get("after") or ()) or None,
                 job.get("after_policy") if job.get("after") else None, job.get("unique_key"))
                for job, job_id in zip(new_jobs, ids)]
        stored = Enqueued(ids)
        if not any(job.get("unique_key") for job in new_jobs):
            con.executemany(_INSERT_JOB, rows)  # the common case: one statement for the whole batch
        else:
            stored.conflicts = []
            for index, row in enumerate(rows):
                try:
                    with self._savepoint(con):
                        con.execute(_INSERT_JOB, row)
                except self.IntegrityError as exc:
                    if not self._is_key_conflict(exc):
                        raise
                    stored[index] = self._key_holder(con, row[-1])
                    stored.conflicts.append(index)
        kept = [index for index in range(len(rows)) if index not in stored.conflicts]
        con.executemany("INSERT INTO job_tags (tag, job_seq) SELECT ?, seq FROM jobs WHERE id = ?",
                        [(tag, ids[i]) for i in kept for tag in new_jobs[i].get("tags") or ()])
        waiting = [i for i in kept if new_jobs[i].get("after")]
        if waiting:
            # A dependency that gave way to another job's unique key is that job now.
            given = {ids[i]: stored[i] for i in stored.conflicts}
            con.executemany("INSERT OR IGNORE INTO job_deps (dep_seq, job_seq) SELECT dep.seq, job.seq "
                            "FROM jobs AS dep, jobs AS job WHERE dep.id = ? AND job.id = ?",
                            [(given.get(dep, dep), ids[i]) for i in waiting for dep in new_jobs[i]["after"]])
            seqs = [self._seq_of(con, ids[i]) for i in waiting]
            self._count_waiting(con, seqs)
            # Dependencies that ended dead or cancelled already: as if they had ended just now.
            self._settle(con, self._ended_badly(con, seqs), now, dependents=set(seqs))
        return stored

    @staticmethod
    def _ended_badly(con, seqs):
        """The dependencies of jobs `seqs` that are dead or cancelled (seqs)."""
        found = set()
        for chunk in _chunks(seqs):
            found.update(seq for (seq,) in con.execute(
                "SELECT d.dep_seq FROM job_deps AS d JOIN jobs AS dep ON dep.seq = d.dep_seq "
                "WHERE d.job_seq IN (%s) AND dep.state IN ('dead', 'cancelled')" % _placeholders(len(chunk)), chunk))
        return sorted(found)

    @staticmethod
    def _seq_of(con, job_id):
        row = con.execute("SELECT seq FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _key_holder(con, key):
        """The id of the unfinished job that holds unique key `key`."""
        return con.execute("SELECT id FROM jobs INDEXED BY jobs_unique WHERE unique_key = ? "
                           "AND state IN ('pending', 'processing', 'failed')", (key,)).fetchone()[0]

    def _count_waiting(self, con, seqs):
        """Count again how many dependencies hold each job of `seqs` back."""
        for chunk in _chunks(seqs):
            con.execute("UPDATE jobs SET waiting = " + _WAITING + " WHERE seq IN (%s)" % _placeholders(len(chunk)),
                        chunk)

    def _settle(self, con, seqs, now, *, dependents=None):
        """Jobs `seqs` changed state (finished, or retried): bring the jobs that wait for them up to
        date, in the caller's transaction. A dependent whose after_policy is `completed` and
        whose dependency ended dead or cancelled becomes dead itself ("dependency ID dead"), and
        so on down the chain; every other one has its waiting count taken again. Only jobs not
        yet run to the end (pending, failed) are touched: one that died stays dead. `dependents`:
        look only at these of the first jobs' dependents (a new job's dependencies).

        On the job path (every finished job) this is one probe of job_deps' key."""
        if len(seqs) == 1 and con.execute(_HAS_DEPENDENTS, seqs).fetchone() is None:
            return  # the job path's common case: nothing waits for the job that just finished
        while seqs:
            rows = []
            for chunk in _chunks(seqs):
                rows += con.execute(
                    # CROSS JOIN keeps job_deps the outer loop: given a few hundred seqs, the planner
                    # would otherwise walk every pending job (by the state index) once per chunk.
                    "SELECT d.job_seq, dep.id, dep.state, job.after_policy FROM job_deps AS d "
                    "CROSS JOIN jobs AS dep ON dep.seq = d.dep_seq CROSS JOIN jobs AS job ON job.seq = d.job_seq "
                    "WHERE d.dep_seq IN (%s) AND job.state IN ('pending', 'failed')" % _placeholders(len(chunk)),
                    chunk).fetchall()
            if dependents is not None:
                rows, dependents = [row for row in rows if row[0] in dependents], None
            doomed = {}
            for job_seq, dep_id, dep_state, policy in rows:
                if dep_state in (DEAD, CANCELLED) and policy != "finished":
                    doomed.setdefault(job_seq, "dependency %s %s" % (dep_id, dep_state))
            con.executemany("UPDATE jobs SET state = ?, last_error = ?, finished_at = ?, updated_at = ?, "
                            "next_run_at = ?, waiting = 0 WHERE seq = ?",
                            [(DEAD, error, now, now, now, seq) for seq, error in doomed.items()])
            recount = sorted({row[0] for row in rows} - set(doomed))
            if recount:
                self._count_waiting(con, recount)
                self._poke = True  # some may be claimable now: by any worker, not only ours
            seqs = sorted(doomed)

    def _first_duplicate(self, ids):
        """The position of the first id that is stored already or repeats an earlier one."""
        seen = set()
        for index, job_id in enumerate(ids):
            if job_id in seen or self._read("SELECT 1 FROM jobs WHERE id = ?", (job_id,)):
                return index
            seen.add(job_id)
        return 0

    # ------------------------------------------------------------ the worker's transitions

    def claim(self, worker, lease_s, *, now=None, queues=None, process=None):
        """pending/due failed -> processing for the next job in claim order, atomically.

        Order: priority (high first), then due time, then enqueue order, among
        the jobs of `queues` (None: every queue) that are neither paused nor at
        their concurrency limit: those are passed over, not waited behind.
        Sets a lease until now + lease_s and counts the run. Returns a dict of
        the job's CLAIM_COLUMNS, or None when nothing is due. `now` defaults to
        the time the write lock was granted: a claim that waited for the lock
        must not start with a lease already spent. `process` (text) is kept on
        the job for `recover` while the run lasts (see `note_process`).
        """
        with self._write() as con:
            return self._claim(con, worker, lease_s, self.now() if now is None else now, queues, process)

    def finish_and_claim(self, outcome, settings, *, now=None, queues=None, process=None):
        """`record(outcome)` and `claim` in one transaction: one commit per job instead of two.

        Returns (what `record` returns, the next job or None).
        """
        with self._write() as con:
            state = self._record(con, outcome, settings)
            return state, self._claim(con, outcome.worker, settings["lease-seconds"],
                                      self.now() if now is None else now, queues, process)

    def _claim(self, con, worker, lease_s, now, queues, process=None):
        select = _claim_select(len(queues) if queues else 0)
        select_params = (now,) + tuple(queues or ())
        params = (worker, now + lease_s, now, now, process)
        if HAS_RETURNING:
            row = con.execute(_claim_returning(len(queues) if queues else 0), params + select_params).fetchone()
        else:
            # SQLite < 3.35 has no RETURNING. Still atomic: we hold the write lock.
            found = con.execute(select, select_params).fetchone()
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
            recorded = self._complete(con, outcome)
        elif outcome.kind == FAIL:
            recorded = self._fail(con, outcome, settings)
        elif outcome.kind == CANCEL:
            recorded = self._cancelled(con, outcome)
        else:
            recorded = self._release(con, outcome)
        if recorded is not None and (outcome.kind == RELEASE or self._limited(con, outcome.job.get("queue"))):
            # Work for a worker of another process: a job given back by a hard stop, due now, or a
            # free slot of a limited queue.
            self._poke = True
        return recorded

    def _limited(self, con, queue):
        """Whether `queue` has a concurrency limit, as read at most LIMITS_SEEN_S ago. Only whether a
        finish pokes other workers hangs on it, a hint whose loss costs a safety poll: not worth a
        query (on PostgreSQL a round trip) for every job."""
        now = time.monotonic()
        seen = self._limits_seen.get(queue)
        if seen is None or now - seen[1] > LIMITS_SEEN_S:
            if len(self._limits_seen) > 1000:  # queue names are the user's: keep this small
                self._limits_seen.clear()
            seen = self._limits_seen[queue] = (con.execute(_LIMITED_QUEUE, (queue,)).fetchone() is not None, now)
        return seen[0]

    def _cancelled(self, con, outcome):
        job, now = outcome.job, outcome.now
        cur = con.execute(
            "UPDATE jobs SET state = ?, exit_code = ?, last_error = ?, finished_at = ?, updated_at = ?, "
            "lease_until = NULL, cancel_requested = 0 WHERE seq = ? AND state = ? AND worker = ? AND runs = ?",
            (CANCELLED, outcome.exit_code, CANCELLED_ERROR, now, now, job["seq"], PROCESSING, outcome.worker,
             job["run"]))
        if cur.rowcount != 1:
            return None
        self._insert_run(con, job["seq"], job["run"], outcome.exit_code, CANCELLED_ERROR, now,
                         outcome.stdout, outcome.stderr)
        self._settle(con, [job["seq"]], now)
        return Recorded(CANCELLED, None)

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
        self._settle(con, [job["seq"]], now)
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
        if state == DEAD:
            self._settle(con, [job["seq"]], now)
        return Recorded(state, next_run_at)

    @staticmethod
    def _insert_run(con, job_seq, run, exit_code, error, now, stdout, stderr):
        # The run's start and worker are still on the job row: copy them across. The runner's tails
        # (runner.Kept) know how long their stream was: kept beside them, for `logs --follow`.
        con.execute(
            "INSERT OR REPLACE INTO runs (job_seq, run, attempt, worker, started_at, finished_at, exit_code, "
            "error, stdout, stderr, stdout_total, stderr_total) "
            "SELECT seq, ?, attempts, worker, started_at, ?, ?, ?, ?, ?, ?, ? FROM jobs WHERE seq = ?",
            (run, now, exit_code, error, stdout or None, stderr or None, getattr(stdout, "total", None),
             getattr(stderr, "total", None), job_seq))

    def heartbeat(self, worker, lease_s, *, pid, host, threads, started_at, host_key=None, now=None, running=None):
        """Renew this worker's row and the leases of the jobs it is running: `running` (seqs), or every
        job it holds when None. A job it holds but does not name (a claim that committed while the
        worker was told it failed) keeps its lease no longer: it is recovered when that runs out.

        `host_key` says whose process table `pid` belongs to (None: unsure).
        `now` defaults to when the write lock was granted: a beat that waited
        long for the lock must not renew to a time already past.
        """
        with self._write() as con:
            now = self.now() if now is None else now
            con.execute(
                # Plain INSERT OR REPLACE, not an upsert: ON CONFLICT DO UPDATE needs SQLite 3.24.
                "INSERT OR REPLACE INTO workers (id, pid, host, threads, started_at, heartbeat_at, lease_until, "
                "host_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (worker, pid, host, threads, started_at, now, now + lease_s, host_key))
            if running is None:
                con.execute("UPDATE jobs SET lease_until = ? WHERE state = ? AND worker = ?",
                            (now + lease_s, PROCESSING, worker))
            for chunk in _chunks(running or ()):
                con.execute("UPDATE jobs SET lease_until = ? WHERE state = ? AND worker = ? AND seq IN (%s)"
                            % _placeholders(len(chunk)), (now + lease_s, PROCESSING, worker) + tuple(chunk))

    def note_process(self, job, worker, process):
        """Replace the `process` text that a processing job's claim kept, fenced by the claim.

        Returns whether it was kept (False: the claim was lost).
        """
        with self._write() as con:
            return con.execute(
                "UPDATE jobs SET run_process = ? WHERE seq = ? AND state = ? AND worker = ? AND runs = ?",
                (process, job["seq"], PROCESSING, worker, job["run"])).rowcount == 1

    def running_run(self, job_seq, worker):
        """The run number of job `job_seq` if `worker` is processing it, else None."""
        rows = self._read("SELECT runs FROM jobs WHERE seq = ? AND state = ? AND worker = ?",
                          (job_seq, PROCESSING, worker))
        return rows[0][0] if rows else None

    def publish_output(self, worker, outputs, *, now):
        """Replace the live output of `worker`'s running jobs (for `logs --follow`), and remove that
        of every run that has ended (recorded, given back by a hard stop, or lost with its worker).

        `outputs`: (job seq, run, ((stdout total, stdout tail), (stderr total, stderr tail))) each,
        as runner.output_progress gives them. Each row is fenced by its claim: a run recorded (or
        recovered) meanwhile gets none. One transaction, and none at all when there is nothing to
        write or remove. Returns how many rows were written.
        """
        if not outputs and not self._read("SELECT 1 FROM live_output WHERE " + _LIVE_ENDED + " LIMIT 1"):
            return 0
        with self._write() as con:
            written = 0
            for seq, run, ((out_total, out_tail), (err_total, err_tail)) in outputs:
                written += con.execute(
                    "INSERT OR REPLACE INTO live_output (job_seq, run, started_at, stdout, stderr, stdout_total, "
                    "stderr_total, updated_at) SELECT seq, runs, started_at, ?, ?, ?, ?, ? FROM jobs "
                    "WHERE seq = ? AND state = ? AND worker = ? AND runs = ?",
                    (out_tail, err_tail, out_total, err_total, now, seq, PROCESSING, worker, run)).rowcount
            con.execute("DELETE FROM live_output WHERE " + _LIVE_ENDED)
        return written

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
        lost = {}  # worker -> whether it stopped pulsing, looked up once a call

        def is_lost(worker):
            if worker not in lost:
                # Where the lease alone decides, a job of ours whose lease ran out is one we no longer
                # hold (see `heartbeat`'s `running`): it comes back as any lost worker's would.
                lost[worker] = (worker != me or self.LEASE_IS_FINAL) and self._stopped_pulsing(worker, lease_s)
            return lost[worker]

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
                        "SELECT seq, id, attempts, max_retries, runs, worker, lease_until < ?, run_process, "
                        "cancel_requested FROM jobs WHERE state = ?", (now, PROCESSING))
                    if row[5] in dead_workers or (row[6] and is_lost(row[5]))]
            # A worker whose own lease holds stays registered, though a job it no longer held came back.
            gone = (dead_workers | {w for w in expired if is_lost(w)}) - {me}
            for seq, job_id, attempts, max_retries, run, worker, _, process, cancelling in rows:
                if before_retry is not None and process is not None:
                    before_retry(job_id, run, process)
                job = {"seq": seq, "attempts": attempts, "max_retries": max_retries, "run": run}
                # A job whose cancel was asked for while its worker was lost ends cancelled.
                outcome = Outcome(CANCEL if cancelling else FAIL, job, worker, now, "worker lost")
                recorded = self._record(con, outcome, settings)
                if recorded is not None:  # None: another worker's recovery took it first (PostgreSQL)
                    recovered.append((job_id, recorded.state))
            con.executemany("DELETE FROM workers WHERE id = ?", [(w,) for w in gone])
        for worker in gone:
            self._forget_pulse(worker)
        return recovered

    def _forget_pulse(self, worker):
        qhome.forget_pulse(self.home, worker)
        self._pulses_seen.pop(worker, None)

    def _stopped_pulsing(self, worker, lease_s):
        """Whether `worker` has stopped pulsing (see `home.pulse`): it never did, or its pulse is
        older than its lease and has not moved while we watched it for three of its pulse periods.

        The watching is what a frozen recoverer needs: a worker frozen with us (a paused VM, a
        suspended laptop) or a clock stepped forward makes every pulse look old when we wake,
        but a live worker's moves again within a period, before we have watched long enough.
        """
        mtime = qhome.pulse_mtime(self.home, worker)
        if mtime is None:
            return True  # no pulse to go by (a worker from before pulses, its file removed): the lease decides
        if time.time() - mtime <= lease_s + PULSE_GRACE_S:
            self._pulses_seen.pop(worker, None)
            return False
        seen_mtime, since = self._pulses_seen.get(worker, (None, None))
        if seen_mtime != mtime:
            self._pulses_seen[worker] = (mtime, time.monotonic())
            return False
        return time.monotonic() - since >= 3 * qhome.pulse_interval(lease_s)

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

    def counts(self, *, queue=None, tag=None):
        """Jobs per state (every state present), of `queue` and with `tag` if given."""
        counts = dict.fromkeys(STATES, 0)
        where, params = _filters(queue=queue, tag=tag)
        for state, n in self._read("SELECT state, count(*) FROM jobs" + where + " GROUP BY state", params):
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
            alive = set(worker_ids) & {w["id"] for w in self.live_workers(self.now())}
            if not alive or (deadline is not None and time.monotonic() >= deadline):
                return alive
            time.sleep(WAIT_POLL_S)

    def list_jobs(self, *, state=None, queue=None, tag=None, limit=DEFAULT_LIST_LIMIT, newest_first=False,
                  after_seq=None):
        """Jobs in enqueue order (oldest first, or newest first), at most `limit` (0 = all), of
        `state`, `queue` and with `tag` when given.

        `after_seq` continues a listing: only the jobs after that `seq` (each row has its own) in this order.
        """
        where, params = _filters(states=None if state is None else [state], queue=queue, tag=tag)
        if after_seq is not None:
            where += (" AND " if params else " WHERE ") + ("seq < ?" if newest_first else "seq > ?")
            params.append(after_seq)
        sql = "SELECT " + JOB_COLUMNS + " FROM jobs" + where
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

    def job_runs(self, job, *, output_tail=0):
        """Every run of `job` (a dict from `get`), numbered over its whole life; with `output_tail`,
        each with the last that many bytes of its stdout and stderr (cut in SQL: a job retried a
        thousand times may hold a gigabyte of output)."""
        keys = ["run", "attempt", "worker", "started_at", "finished_at", "exit_code", "error"]
        cols = "run, attempt, worker, started_at, finished_at, exit_code, error"
        params = [job["seq"]]
        if output_tail:
            keys += ["stdout", "stderr"]
            cols += ", " + self._OUTPUT_TAILS
            params[:0] = [output_tail, output_tail]
        runs = [dict(zip(keys, row))
                for row in self._read("SELECT " + cols + " FROM runs WHERE job_seq = ? ORDER BY run", params)]
        # The latest run has no row while it runs, or if it succeeded silently.
        if job["run"] and (not runs or runs[-1]["run"] < job["run"]):
            latest = {"run": job["run"], "attempt": job["attempts"], "worker": job["worker"], "started_at": job["started_at"],
                      "finished_at": None, "exit_code": None, "error": None}
            if job["state"] == COMPLETED:
                latest.update(finished_at=job["finished_at"], exit_code=0)
            if output_tail:
                latest.update(stdout=None, stderr=None)
            runs.append(latest)
        return runs

    def run_output(self, job, run):
        """(stdout, stderr) kept of run number `run` of `job`: (None, None) if it printed nothing."""
        rows = self._read("SELECT stdout, stderr FROM runs WHERE job_seq = ? AND run = ?", (job["seq"], run))
        return tuple(rows[0]) if rows else (None, None)

    def live_output(self, job_id):
        """(job, live) in one read: the job (as `get` gives it) and what its running command has
        printed so far, as its worker last published it: {"run", "started_at", "stdout", "stderr",
        "stdout_total", "stderr_total"}, or None. A live row belongs to the job's current run only
        if its run and started_at are the job's. Cheap when nothing changed since the last call
        (PRAGMA data_version for other connections' commits, total_changes for this one's): the
        same answer comes back without a query."""
        version = (self._data_version(), self._own_changes())
        if self._live_seen is not None and self._live_seen[:2] == (version, job_id):
            return self._live_seen[2]
        rows = self._read("SELECT j.*, l.run, l.started_at, l.stdout, l.stderr, l.stdout_total, l.stderr_total "
                          "FROM (SELECT " + JOB_COLUMNS + " FROM jobs WHERE id = ?) AS j "
                          "LEFT JOIN live_output AS l ON l.job_seq = j.seq", (job_id,))
        if not rows:
            raise JobNotFound(job_id)
        row, n = rows[0], len(_JOB_KEYS)
        live = None if row[n] is None else dict(zip(_LIVE_KEYS, row[n:]))
        answer = (_job_dict(row[:n]), live)
        self._live_seen = (version, job_id, answer)
        return answer

    def kept_output(self, job, run):
        """((stdout, total), (stderr, total)) of run number `run` of `job`: each stream's kept tail
        and how many bytes it printed in all (None when not known); (None, None) each if the run
        has no row (it printed nothing, or has not ended)."""
        rows = self._read("SELECT stdout, stdout_total, stderr, stderr_total FROM runs WHERE job_seq = ? AND run = ?",
                          (job["seq"], run))
        out, out_total, err, err_total = rows[0] if rows else (None,) * 4
        return (out, out_total), (err, err_total)

    def run_totals(self):
        """Every finished run of the stored jobs, per outcome: {"completed": RunTotals, "failed": RunTotals}.

        A retry is a run with attempt > 1. Silent successes have no runs row:
        they come from completed jobs' own times.
        """
        totals = {COMPLETED: RunTotals(0, 0.0, 0), FAILED: RunTotals(0, 0.0, 0)}
        for failed, n, seconds, retries in self._read(
                "SELECT error IS NOT NULL, count(*), " + _TOTAL_SECONDS + ", " + _RETRIES % "attempt" + " "
                "FROM runs GROUP BY error IS NOT NULL"):
            totals[FAILED if failed else COMPLETED] = RunTotals(n, seconds, int(retries))
        n, seconds, retries = self._read(
            "SELECT count(*), " + _TOTAL_SECONDS + ", " + _RETRIES % "attempts" + " FROM jobs "
            "WHERE state = ? AND " + _SILENT_SUCCESS, (COMPLETED,))[0]
        done = totals[COMPLETED]
        totals[COMPLETED] = RunTotals(done.runs + n, done.seconds + seconds, done.retries + int(retries))
        return totals

    def runs_since(self, since):
        """Runs finished at or after `since`, as RecentRun rows."""
        return [RecentRun(r[0], r[1], bool(r[2]), r[3]) for r in self._read(
            "SELECT finished_at, finished_at - started_at, CASE WHEN error IS NULL THEN 0 ELSE 1 END, attempt FROM runs "
            "WHERE finished_at >= ? "
            "UNION ALL SELECT finished_at, finished_at - started_at, 0, attempts FROM jobs "
            "WHERE state = ? AND finished_at >= ? AND " + _SILENT_SUCCESS, (since, COMPLETED, since))]

    def oldest_due_pending(self, now):
        """When the longest-waiting runnable pending job became runnable, or None."""
        return self._read("SELECT min(next_run_at) FROM jobs WHERE state = ? AND waiting = 0 AND next_run_at <= ?",
                          (PENDING, now))[0][0]

    # ------------------------------------------------------------ user actions

    def cancel(self, ids=(), *, now, state=None, queue=None, tag=None):
        """Cancel jobs: `ids`, or with no ids every unfinished job matching the filters. One
        transaction: an unknown or finished id raises and cancels nothing.

        pending/failed -> cancelled at once. processing: its cancel is requested and its
        worker (which looks every half second) kills its process tree and records the run
        as cancelled, fenced like any outcome: if the run ends first, that outcome stands.
        Returns (ids cancelled now, ids whose worker was asked to).
        """
        with self._write() as con:
            rows = self._pick(con, ids, UNFINISHED_STATES, "cancelled", state=state, queue=queue, tag=tag)
            waiting = [seq for seq, _, st in rows if st != PROCESSING]
            running = [seq for seq, _, st in rows if st == PROCESSING]
            con.executemany(
                "UPDATE jobs SET state = ?, last_error = ?, next_run_at = ?, finished_at = ?, updated_at = ? "
                "WHERE seq = ? AND state IN (?, ?)",
                [(CANCELLED, CANCELLED_ERROR, now, now, now, seq, PENDING, FAILED) for seq in waiting])
            self._settle(con, waiting, now)
            con.executemany("UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE seq = ? AND state = ?",
                            [(now, seq, PROCESSING) for seq in running])
        names = {seq: job_id for seq, job_id, _ in rows}
        return [names[seq] for seq in waiting], [names[seq] for seq in running]

    def cancel_requests(self, worker):
        """The seqs of `worker`'s processing jobs whose cancel was requested."""
        return {seq for (seq,) in self._read("SELECT seq FROM jobs WHERE state = ? AND worker = ? AND cancel_requested = 1",
                                             (PROCESSING, worker))}

    def retry(self, ids=(), *, now, state=None, queue=None, tag=None, only=FINISHED_STATES):
        """Finished jobs (`only` of them) -> pending with attempts reset and the last run's fields
        cleared (the runs keep them; run numbers go on). `ids`, or with no ids every job in
        `only` matching the filters; one transaction: an unknown or unfinished id raises and
        retries nothing. Returns the ids retried."""
        with self._write(wakes_workers=True) as con:
            rows = self._pick(con, ids, only, "retried", state=state, queue=queue, tag=tag)
            # A silent success has no runs row (the job row carries it): write it before the job
            # row forgets it, so the history survives the retry.
            con.executemany(
                "INSERT OR IGNORE INTO runs (job_seq, run, attempt, worker, started_at, finished_at, exit_code, error) "
                "SELECT seq, runs, attempts, worker, started_at, finished_at, exit_code, last_error FROM jobs "
                "WHERE seq = ? AND runs > 0", [(seq,) for seq, _, _ in rows])
            for seq, job_id, _ in rows:
                try:
                    with self._savepoint(con):
                        con.execute(
                            "UPDATE jobs SET state = ?, attempts = 0, next_run_at = ?, updated_at = ?, exit_code = NULL, "
                            "last_error = NULL, worker = NULL, started_at = NULL, finished_at = NULL, "
                            "cancel_requested = 0 WHERE seq = ?", (PENDING, now, now, seq))
                except self.IntegrityError:
                    raise self._key_taken(con, job_id) from None
            seqs = [seq for seq, _, _ in rows]
            # It waits again for its own dependencies; those waiting for it wait again for it.
            self._count_waiting(con, seqs)
            self._refuse_doomed(con, seqs)
            self._settle(con, seqs, now)
        return [job_id for _, job_id, _ in rows]

    def _refuse_doomed(self, con, seqs):
        """Raise InvalidState if a job of `seqs` (just retried) would wait for a dependency that is dead
        or cancelled, and that its after_policy needs completed: it would wait forever."""
        for chunk in _chunks(seqs):
            row = con.execute(
                "SELECT job.id, dep.id, dep.state FROM job_deps AS d CROSS JOIN jobs AS job ON job.seq = d.job_seq "
                "CROSS JOIN jobs AS dep ON dep.seq = d.dep_seq WHERE d.job_seq IN (%s) "
                "AND dep.state IN ('dead', 'cancelled') AND job.after_policy = 'completed' LIMIT 1"
                % _placeholders(len(chunk)), chunk).fetchone()
            if row is not None:
                raise InvalidState("job %r waits for job %r, which is %s: retry %r too (it would wait forever)"
                                   % (row[0], row[1], row[2], row[1]))

    def _key_taken(self, con, job_id):
        """The error for job `job_id` becoming unfinished while another unfinished job holds its unique key."""
        key = con.execute("SELECT unique_key FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        return InvalidState("job %r cannot be unfinished again: job %r holds its unique key %r"
                            % (job_id, self._key_holder(con, key), key))

    def _pick(self, con, ids, allowed, doing, *, state, queue, tag):
        """(seq, id, state) of the jobs an action takes: each of `ids`, which must exist and be in
        `allowed` (else raise: the caller's transaction then changes nothing), or with no ids
        every job in `allowed` matching the filters."""
        if ids:
            rows = []
            for job_id in dict.fromkeys(ids):
                row = con.execute("SELECT seq, id, state FROM jobs WHERE id = ?" + self._FOR_UPDATE, (job_id,)).fetchone()
                if row is None:
                    raise JobNotFound(job_id)
                if row[2] not in allowed:
                    raise InvalidState("job %r is %s, not %s: only those can be %s"
                                       % (job_id, row[2], _either(allowed), doing))
                rows.append(tuple(row))
            return rows
        states = [s for s in allowed if state is None or s == state]
        where, params = _filters(states=states, queue=queue, tag=tag)
        return [tuple(row) for row in con.execute("SELECT seq, id, state FROM jobs" + where + " ORDER BY seq" + self._FOR_UPDATE, params)]

    def edit(self, job_id, changes, *, now, default_max_retries):
        """Change fields of a pending or failed job; the whole job is validated again, as
        `enqueue` would. Any other state raises InvalidState and changes nothing. `changes`:
        raw job fields (as in the JSON), e.g. {"priority": 5, "delay": "10m"}."""
        with self._write(wakes_workers=True) as con:
            if "after" in changes:
                self._lock_dependency_graph(con)
            rows = con.execute("SELECT " + JOB_COLUMNS + " FROM jobs WHERE id = ?" + self._FOR_UPDATE, (job_id,)).fetchall()
            if not rows:
                raise JobNotFound(job_id)
            row = _job_dict(rows[0])
            if row["state"] not in EDITABLE_STATES:
                raise InvalidState("job %r is %s: only pending or failed jobs can be edited" % (job_id, row["state"]))
            raw = as_input(row, row["tags"])
            if "run_at" in changes or "delay" in changes:
                raw.pop("run_at")
            raw.update(changes)
            new = validate_job(raw, now=now, cwd=row["cwd"], default_max_retries=default_max_retries)
            moved = "run_at" in changes or "delay" in changes
            run_at = new["run_at"] if moved else row["run_at"]
            next_run_at = new["run_at"] if moved else row["next_run_at"]
            try:
                with self._savepoint(con):
                    con.execute(
                        "UPDATE jobs SET command = ?, max_retries = ?, priority = ?, run_at = ?, next_run_at = ?, "
                        "timeout = ?, cwd = ?, env = ?, queue = ?, after = ?, after_policy = ?, unique_key = ?, "
                        "updated_at = ? WHERE seq = ? AND state IN (?, ?)",
                        (new["command"], new["max_retries"], new["priority"], run_at, next_run_at, new["timeout"],
                         new["cwd"], new["env"], new["queue"], TAG_SEPARATOR.join(new["after"]) or None,
                         new["after_policy"] if new["after"] else None, new["unique_key"], now, row["seq"])
                        + EDITABLE_STATES)
            except self.IntegrityError:
                raise InvalidState("unique key %r is held by job %r already"
                                   % (new["unique_key"], self._key_holder(con, new["unique_key"]))) from None
            con.execute("DELETE FROM job_tags WHERE job_seq = ?", (row["seq"],))
            con.executemany("INSERT INTO job_tags (tag, job_seq) VALUES (?, ?)", [(t, row["seq"]) for t in new["tags"]])
            if "after" in changes:
                self._wait_for(con, row, new["after"], now)
            elif new["after_policy"] != row["after_policy"] and row["after"]:
                # The same dependencies (edges kept: one may have given way to a unique key's holder).
                self._count_waiting(con, [row["seq"]])
                self._settle(con, self._ended_badly(con, [row["seq"]]), now, dependents={row["seq"]})

    def _wait_for(self, con, row, after, now):
        """Job `row` (pending or failed) waits for the jobs `after` (ids) from now on."""
        deps = []
        for dep in after:
            seq = self._seq_of(con, dep)
            if seq is None:
                raise BadDependency("job %r waits for %r, which is not a known job" % (row["id"], dep))
            # A cycle: the new dependency waits, through its own, for this job.
            if con.execute("WITH RECURSIVE up(seq) AS (SELECT CAST(? AS INTEGER) UNION SELECT d.dep_seq FROM job_deps AS d "
                           "JOIN up ON d.job_seq = up.seq) SELECT 1 FROM up WHERE seq = ?", (seq, row["seq"])).fetchone():
                raise BadDependency("jobs would wait for each other in a cycle: %r waits for %r" % (dep, row["id"]))
            deps.append(seq)
        con.execute("DELETE FROM job_deps WHERE job_seq = ?", (row["seq"],))
        con.executemany("INSERT INTO job_deps (dep_seq, job_seq) VALUES (?, ?)", [(dep, row["seq"]) for dep in deps])
        self._count_waiting(con, [row["seq"]])
        self._settle(con, deps, now, dependents={row["seq"]})

    def delete(self, job_id):
        """Remove a job that is not processing, with its runs."""
        with self._write() as con:
            row = con.execute("SELECT seq, state FROM jobs WHERE id = ?" + self._FOR_UPDATE, (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            if row[1] == PROCESSING:
                raise InvalidState("job %r is processing: cancel it (or wait for it to finish) first" % (job_id,))
            waiting = [dep for (dep,) in con.execute(
                "SELECT job.id FROM job_deps AS d JOIN jobs AS job ON job.seq = d.job_seq "
                "WHERE d.dep_seq = ? AND job.state IN ('pending', 'failed') ORDER BY job.seq LIMIT 3", (row[0],))]
            if waiting:
                raise InvalidState("jobs wait for %r (%s): cancel it instead, or delete them first"
                                   % (job_id, ", ".join(repr(dep) for dep in waiting)))
            self._forget("seq = ?", (row[0],), con=con)

    def purge(self, state, *, older_than_s=0.0, now):
        """Remove finished jobs in `state` last updated at least `older_than_s` ago. Returns how many."""
        if state not in FINISHED_STATES:
            raise InvalidJob("purge removes %s jobs, not %s" % (_either(FINISHED_STATES), state))
        with self._write() as con:
            return self._forget("state = ? AND updated_at <= ?", (state, now - older_than_s), con=con)

    def prune(self, now, settings, *, batch=PRUNE_BATCH):
        """Retention: remove at most `batch` jobs (with their runs) that finished longer ago than
        config retain-completed (completed and cancelled jobs) or retain-dead allows (0: keep).
        A small transaction each time: claims never wait long behind it. Returns how many."""
        removed = 0
        for states, key in (("'completed', 'cancelled'", "retain-completed"), ("'dead'", "retain-dead")):
            keep_s = settings[key]
            if not keep_s or removed >= batch:
                continue
            with self._write() as con:
                seqs = [seq for (seq,) in con.execute(
                    "SELECT seq FROM jobs INDEXED BY jobs_finished WHERE state IN (" + states + ") "
                    "AND finished_at < ? LIMIT ?", (now - keep_s, batch - removed))]
                removed += self._forget("seq IN (%s)" % _placeholders(len(seqs)), seqs, con=con) if seqs else 0
        return removed

    def _forget(self, where, params, *, con):
        """Delete the jobs matching `where` (constant text and placeholders) with their runs and tags;
        returns how many jobs."""
        # A job that still waits for one of them waits for it no more (delete refuses a job that is waited for).
        waiting = [seq for (seq,) in con.execute(
            "SELECT DISTINCT d.job_seq FROM job_deps AS d JOIN jobs AS job ON job.seq = d.job_seq "
            "WHERE d.dep_seq IN (SELECT seq FROM jobs WHERE %s) AND job.waiting > 0" % where, params)]
        for table in ("runs", "job_tags", "job_deps"):
            con.execute("DELETE FROM %s WHERE job_seq IN (SELECT seq FROM jobs WHERE %s)" % (table, where), params)
        con.execute("DELETE FROM job_deps WHERE dep_seq IN (SELECT seq FROM jobs WHERE %s)" % where, params)
        removed = con.execute("DELETE FROM jobs WHERE " + where, params).rowcount
        self._count_waiting(con, waiting)
        return removed

    # ------------------------------------------------------------ health and backup

    def check(self, now):
        """Health: (problems, facts). Problems are one line each: what the database's own check
        found, jobs processing under no live worker past their lease. Facts: schema version, sizes."""
        problems, facts = self._storage_check()
        live = {w["id"] for w in self.live_workers(now)}
        stuck = [job_id for job_id, worker in self._read(
            "SELECT id, worker FROM jobs WHERE state = ? AND lease_until < ?", (PROCESSING, now)) if worker not in live]
        if stuck:
            problems.append("%d job%s processing under a worker that is gone (the next worker recovers them): %s"
                            % (len(stuck), "" if len(stuck) == 1 else "s", ", ".join(stuck[:10])))
        facts["jobs"] = self.counts()
        return problems, facts

    def _storage_check(self):
        """(problems, facts) of the database itself: SQLite's integrity check; the file sizes."""
        problems = ["integrity check: %s" % line for (line,) in self._read("PRAGMA integrity_check") if line != "ok"]
        sizes = {}
        for name, suffix in (("database_bytes", ""), ("wal_bytes", "-wal")):
            try:
                sizes[name] = os.path.getsize(self.path + suffix)
            except OSError:
                sizes[name] = 0
        return problems, dict(sizes, path=self.path, schema_version=self._read("PRAGMA user_version")[0][0])

    def backup(self, target):
        """A consistent copy of the database at `target` (SQLite's online backup API: right while
        workers write). The copy is made 0600 beside `target` and renamed into place."""
        if os.path.exists(target):
            raise StoreError("%s exists already: remove it or choose another name" % target)
        partial = "%s.%d.partial" % (target, os.getpid())
        try:
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            if os.name == "posix":
                os.chmod(partial, 0o600)
            copy = sqlite3.connect(partial)
            try:
                self.con.backup(copy)
                copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
            finally:
                copy.close()
            os.replace(partial, target)
        except (OSError, sqlite3.Error) as exc:
            try:
                os.remove(partial)
            except OSError:
                pass
            if isinstance(exc, sqlite3.Error):
                raise self._note(exc) from None
            raise StoreError("cannot write the backup %s: %s" % (target, exc.strerror or exc)) from None

    # ------------------------------------------------------------ queues

    def queues(self):
        """Every queue (named by a job or by a setting), with paused, concurrency and counts per state."""
        found = {}
        for name, paused, concurrency in self._read("SELECT name, paused, concurrency FROM queues"):
            found[name] = {"name": name, "paused": bool(paused), "concurrency": concurrency,
                           "jobs": dict.fromkeys(STATES, 0)}
        for name, state, n in self._read("SELECT queue, state, count(*) FROM jobs GROUP BY queue, state"):
            queue = found.setdefault(name, {"name": name, "paused": False, "concurrency": 0,
                                            "jobs": dict.fromkeys(STATES, 0)})
            queue["jobs"][state] = n
        return [found[name] for name in sorted(found)]

    def set_queue(self, name, *, paused=None, concurrency=None):
        """Pause or resume queue `name`, or set its concurrency (0: no limit)."""
        with self._write(wakes_workers=True) as con:
            con.execute("INSERT OR IGNORE INTO queues (name) VALUES (?)", (name,))
            if paused is not None:
                con.execute("UPDATE queues SET paused = ? WHERE name = ?", (int(paused), name))
            if concurrency is not None:
                con.execute("UPDATE queues SET concurrency = ? WHERE name = ?", (concurrency, name))

    # ------------------------------------------------------------ schedules

    def add_schedule(self, name, spec, job, *, overlap=False, now):
        """A new schedule `name`: enqueue `job` (the job's input as JSON text, checked already)
        at each time `spec` gives (see qctl.cron), the first after `now`. Returns when that is."""
        import json
        with self._write() as con:
            for dep in json.loads(job).get("after") or ():
                if self._seq_of(con, dep) is None:
                    raise BadDependency("the schedule's job waits for %r, which is not a known job" % (dep,))
            next_at = qcron.next_due(spec, now=now)
            try:
                con.execute("INSERT INTO schedules (name, spec, job, overlap, next_at, created_at) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (name, spec, job, int(overlap), next_at, now))
            except self.IntegrityError:
                raise InvalidJob("a schedule named %r exists already: remove it first" % (name,)) from None
        return next_at

    def schedules(self, *, after=None, limit=None):
        """Every schedule, by name: name, spec, job (JSON text), overlap, next_at, last_job,
        last_fired_at, last_error (why its last fire failed), last_state (of its last job: None if
        none, or it is gone). A page:
        `after` (a name) starts past it, `limit` (> 0) returns at most that many."""
        keys = ("name", "spec", "job", "overlap", "next_at", "last_job", "last_fired_at", "last_error", "last_state")
        params = ([after] if after is not None else []) + ([int(limit)] if limit is not None else [])
        return [dict(zip(keys, row)) for row in self._read(
            "SELECT s.name, s.spec, s.job, s.overlap, s.next_at, s.last_job, s.last_fired_at, s.last_error, j.state "
            "FROM schedules AS s LEFT JOIN jobs AS j ON j.id = s.last_job "
            + ("WHERE s.name > ? " if after is not None else "") + "ORDER BY s.name"
            + (" LIMIT ?" if limit is not None else ""), tuple(params))]

    def remove_schedule(self, name):
        """Remove schedule `name` (the jobs it enqueued stay)."""
        with self._write() as con:
            if con.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount != 1:
                raise ScheduleNotFound(name)

    def next_schedule_at(self):
        """When the next schedule is due, or None when there is none."""
        return self._read("SELECT min(next_at) FROM schedules")[0][0]

    def fire_schedules(self, settings, *, now=None):
        """Enqueue a job for every schedule that is due, and move each to its next time, in one
        transaction: however many workers call this at once, each due time fires once. A
        schedule whose last job is unfinished is skipped this time (unless it allows overlap);
        however many times were missed (no worker ran), one job is enqueued. `now` defaults
        to when the write lock was granted. Returns a Fired per due schedule."""
        import json
        fired = []
        with self._write() as con:
            now = self.now() if now is None else now
            due = con.execute("SELECT name, spec, job, overlap, next_at, last_job FROM schedules "
                              "WHERE next_at <= ? ORDER BY next_at, name" + self._SKIP_LOCKED, (now,)).fetchall()
            for name, spec, job_text, overlap, due_at, last_job in due:
                job_id = error = None
                failed = False  # a fire that could not make its job (not one skipped on purpose)
                if not overlap and last_job and con.execute(
                        "SELECT 1 FROM jobs WHERE id = ? AND state IN (?, ?, ?)", (last_job,) + UNFINISHED_STATES
                        ).fetchone():
                    error = "its last job %s is not finished" % last_job
                else:
                    try:
                        job = validate_job(json.loads(job_text), now=now, default_max_retries=settings["max-retries"])
                        stored = self._insert(con, [job], ["%s-%s" % (name, os.urandom(4).hex())], now)
                        if stored.conflicts:
                            error = "job %s holds its unique key %r" % (stored[0], job["unique_key"])
                        else:
                            job_id = stored[0]
                    except InvalidJob as exc:  # a dependency that is gone since: this fire only fails
                        error, failed = str(exc), True
                con.execute("UPDATE schedules SET next_at = ?, last_job = coalesce(?, last_job), "
                            "last_fired_at = coalesce(?, last_fired_at), last_error = ? WHERE name = ?",
                            (qcron.next_due(spec, now=now, due=due_at), job_id, None if job_id is None else now,
                             error if failed else None, name))
                fired.append(Fired(name, due_at, job_id, error, failed))
        return fired

    # ------------------------------------------------------------ copying a queue

    def export_rows(self, *, batch=EXPORT_BATCH):
        """Every row of the queue that another store needs to go on from where this one is: (table,
        columns, rows) in batches of at most `batch` rows, each table in key order (referenced jobs
        first), all from one moment of the queue, which nothing may change until the last batch has
        been taken (on SQLite the write lock is held meanwhile). Workers, live output and the stop
        generation stay: they belong to this store's workers."""
        with self._snapshot():
            for table, columns, key in COPIED_TABLES:
                first, rest = _EXPORT_SQL[table]
                size = max(1, batch // 50) if table == "runs" else batch  # a run may hold 2 x output-limit
                rows = self._read(first, (size,))
                while rows:
                    yield table, columns, [tuple(row) for row in rows]
                    rows = self._read(rest, tuple(rows[-1][columns.index(k)] for k in key) + (size,))

    @contextmanager
    def _snapshot(self):
        """Reads that all see one moment of the queue, which nothing changes meanwhile (the write lock
        is held: a worker that starts now waits, so its first write is not lost to the copy)."""
        self._read("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            self._read("COMMIT")

    def import_rows(self, batches):
        """Store every row of `batches` (as `export_rows` gives them) in one transaction, into a queue
        that holds no job, schedule, setting or queue yet (else StoreError, and nothing is stored).
        Returns {table: rows stored}."""
        try:
            with self._write(wakes_workers=True) as con:
                self._lock_for_import(con)
                for name, _, _ in COPIED_TABLES:
                    if con.execute("SELECT 1 FROM %s LIMIT 1" % name).fetchone():
                        raise StoreError("%s already holds a queue (its %s table has rows): queuectl copies only "
                                         "into an empty one" % (self.path, name))
                counts = dict.fromkeys((table for table, _, _ in COPIED_TABLES), 0)
                for table, _, rows in batches:
                    con.executemany(_IMPORT_SQL[table], rows)
                    counts[table] += len(rows)
                self._imported(con)
        except self.IntegrityError as exc:  # a row the emptiness check could not see (never expected)
            raise StoreError("cannot copy into %s: %s" % (self.path, str(exc).strip().splitlines()[0])) from None
        return counts

    def _lock_for_import(self, con):
        """Before `import_rows` looks whether the queue is empty: no other write may come between that
        look and its own rows. SQLite's write lock is that already."""

    def _imported(self, con):
        """After `import_rows` stored jobs with their own seqs: nothing to do on SQLite (a new seq is
        always past the largest)."""

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
# Seconds run, and how many runs were retries (attempt > 1), in plain SQL both stores read alike.
_TOTAL_SECONDS = "coalesce(sum(finished_at - started_at), 0)"
_RETRIES = "coalesce(sum(CASE WHEN %s > 1 THEN 1 ELSE 0 END), 0)"
_SILENT_SUCCESS = "NOT EXISTS (SELECT 1 FROM runs WHERE runs.job_seq = jobs.seq AND runs.run = jobs.runs)"
# The queues a claim passes over: paused ones, and those with as many jobs processing as their
# concurrency allows. Not correlated with the job rows, so SQLite works it out once a claim.
_BLOCKED_QUEUES = ("SELECT name FROM queues WHERE paused = 1 OR (concurrency > 0 AND concurrency <= "
                   "(SELECT count(*) FROM jobs AS running WHERE running.queue = queues.name "
                   "AND running.state = 'processing'))")
_CLAIM_SELECT = ("SELECT seq FROM jobs INDEXED BY jobs_ready WHERE state IN ('pending', 'failed') AND waiting = 0 "
                 "AND next_run_at <= ? "
                 "AND queue NOT IN (" + _BLOCKED_QUEUES + ") %s"
                 "ORDER BY priority DESC, next_run_at, seq LIMIT 1")


@functools.lru_cache(maxsize=None)
def _claim_select(served):
    """The claim's row lookup for a worker serving `served` named queues (0: every queue). Built
    once per shape: sqlite3 finds its cached statement by the text."""
    return _CLAIM_SELECT % ("AND queue IN (%s) " % _placeholders(served) if served else "")


@functools.lru_cache(maxsize=None)
def _claim_returning(served):
    """The whole claim, one statement (SQLite 3.35+), for `_claim_select(served)`'s row."""
    return _CLAIM_SQL + "(" + _claim_select(served) + ") RETURNING " + CLAIM_COLUMNS


_CLAIM_SQL = ("UPDATE jobs SET state = 'processing', attempts = attempts + 1, runs = runs + 1, worker = ?, "
              "lease_until = ?, started_at = ?, finished_at = NULL, updated_at = ?, run_process = ? WHERE seq = ")
_CLAIM_KEYS = tuple(column.split()[-1] for column in CLAIM_COLUMNS.split(", "))


_HAS_DEPENDENTS = "SELECT 1 FROM job_deps WHERE dep_seq = ? LIMIT 1"
_LIMITED_QUEUE = "SELECT 1 FROM queues WHERE name = ? AND concurrency > 0"
_INSERT_JOB = ("INSERT INTO jobs (id, command, state, max_retries, priority, run_at, next_run_at, timeout, cwd, env, "
               "created_at, updated_at, queue, after, after_policy, unique_key) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
CHUNK = 500  # values bound to one IN (...): old SQLite allows 999 variables a statement
# What `export_rows` copies, in this order: (table, columns, key). The same columns on every store.
COPIED_TABLES = (
    ("jobs", ("seq", "id", "command", "state", "attempts", "runs", "max_retries", "priority", "run_at", "next_run_at",
              "timeout", "cwd", "env", "created_at", "updated_at", "started_at", "finished_at", "worker",
              "lease_until", "exit_code", "last_error", "run_process", "queue", "cancel_requested", "waiting",
              "after", "after_policy", "unique_key"), ("seq",)),
    ("runs", ("job_seq", "run", "attempt", "worker", "started_at", "finished_at", "exit_code", "error", "stdout",
              "stderr", "stdout_total", "stderr_total"), ("job_seq", "run")),
    ("job_tags", ("tag", "job_seq"), ("tag", "job_seq")),
    ("job_deps", ("dep_seq", "job_seq"), ("dep_seq", "job_seq")),
    ("config", ("key", "value"), ("key",)),
    ("queues", ("name", "paused", "concurrency"), ("name",)),
    ("schedules", ("name", "spec", "job", "overlap", "next_at", "last_job", "last_fired_at", "last_error",
                   "created_at"), ("name",)),
)
# Per table: (its first batch, the batch after a key), in key order; and the insert of a row.
_EXPORT_SQL = {table: tuple("SELECT %s FROM %s%s ORDER BY %s LIMIT ?" % (", ".join(columns), table, where, ", ".join(key))
                            for where in ("", " WHERE (%s) > (%s)" % (", ".join(key), ", ".join("?" * len(key)))))
               for table, columns, key in COPIED_TABLES}
_IMPORT_SQL = {table: "INSERT INTO %s (%s) VALUES (%s)" % (table, ", ".join(columns), ", ".join("?" * len(columns)))
               for table, columns, _ in COPIED_TABLES}


def _chunks(values):
    values = list(values)
    return [values[i:i + CHUNK] for i in range(0, len(values), CHUNK)]


def _filters(*, states=None, queue=None, tag=None):
    """(" WHERE ..." or "", params) selecting jobs in `states` (None: any), of `queue`, with `tag`."""
    clauses, params = [], []
    if states is not None:
        clauses.append("state IN (%s)" % _placeholders(len(states)) if states else "1 = 0")
        params += states
    if queue is not None:
        clauses.append("queue = ?")
        params.append(queue)
    if tag is not None:
        clauses.append("seq IN (SELECT job_seq FROM job_tags WHERE tag = ?)")
        params.append(tag)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _either(states):
    """("completed", "dead", "cancelled") -> "completed, dead or cancelled"."""
    return " or ".join(filter(None, (", ".join(states[:-1]), states[-1])))


def _placeholders(n):
    """`?, ?, ?` for n values: the only text an SQL statement is ever built from, besides constants."""
    return ", ".join("?" * n)


def _job_dict(row):
    job = dict(zip(_JOB_KEYS, row))
    job["tags"] = sorted(job["tags"].split(TAG_SEPARATOR)) if job["tags"] else []
    job["after"] = job["after"].split(TAG_SEPARATOR) if job["after"] else []
    waiting = set(job["waiting_for"].split(TAG_SEPARATOR)) if job["waiting_for"] else set()
    # In the order given (a unique key's holder, which replaced a dependency, last).
    job["waiting_for"] = [dep for dep in job["after"] if dep in waiting] + sorted(waiting - set(job["after"]))
    return job
