"""The Python API: `from qctl import Queue`, the same validation and store as the command line.

    from qctl import Queue
    q = Queue()                      # the home the CLI uses: $QUEUECTL_HOME, else ~/.queuectl
    job_id = q.enqueue("make report", priority=5, tags=["nightly"])
    q.wait([job_id], timeout=600)    # {"<id>": "completed"}

Errors are the CLI's: `qctl.errors.QueueError` and its subclasses (InvalidJob,
JobNotFound, ...). Each call opens the store and closes it again, so a Queue
may be shared between threads.
"""

import os

from . import home as qhome
from . import jobs
from . import shapes
from .db import Store, is_url, open_store


class Queue:
    def __init__(self, home=None, db=None):
        """`home`: the data directory (default as the CLI's); `db`: a SQLite file instead of HOME/queue.db,
        or a postgresql:// URL (default: $QUEUECTL_DB, as the CLI's --db)."""
        self.home = qhome.resolve(home)
        self.db = db

    def _store(self):
        if self.db and not is_url(self.db):
            qhome.ensure(self.home)
            return Store(os.path.abspath(self.db))
        return open_store(qhome.database(self.home, self.db))

    def enqueue(self, command, **fields):
        """Store one job running `command` (fields as in the job JSON: id, max_retries, priority,
        run_at or delay, timeout, cwd, env, queue, tags, after, after_policy, unique_key); returns
        its id. With a unique_key that an unfinished job holds, nothing is stored and that job's
        id is returned."""
        with self._store() as store:
            now = store.now()
            job = jobs.validate_job(dict(fields, command=command), now=now,
                                    default_max_retries=store.config()["max-retries"])
            return store.enqueue([job], now)[0]

    def get(self, job_id):
        """The job as `show --json` prints it, with its runs."""
        with self._store() as store:
            row = store.get(job_id)
            return shapes.job_with_runs(row, store.job_runs(row))

    def list(self, *, state=None, queue=None, tag=None, limit=jobs.DEFAULT_LIST_LIMIT):
        """Jobs as `list --json` prints them, oldest first (limit 0: all)."""
        if state is not None:
            jobs.check_state(state)
        with self._store() as store:
            return [shapes.job(row) for row in store.list_jobs(state=state, queue=queue, tag=tag, limit=limit)]

    def cancel(self, job_id):
        """Cancel a job (a running one is killed by its worker within a second or so); returns its state
        now: `cancelled`, or `processing` while its worker has not yet killed it."""
        with self._store() as store:
            store.cancel([job_id], now=store.now())
            return store.get(job_id)["state"]

    def retry(self, job_id):
        """A finished job (completed, dead, cancelled) back to pending, attempts reset."""
        with self._store() as store:
            store.retry([job_id], now=store.now())

    def wait(self, ids, timeout=None):
        """Block until the jobs are finished; returns {id: final state}. Raises TimeoutError if
        `timeout` seconds pass first."""
        with self._store() as store:
            _, finished = store.wait_finished(list(ids), timeout=timeout)
            if not finished:
                raise TimeoutError("jobs not finished after %ss" % timeout)
            return {job_id: store.get(job_id)["state"] for job_id in ids}
