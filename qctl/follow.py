"""Following a job's output while it runs: `logs ID --follow`. No SQL, no terminal of its own.

A worker's housekeeping publishes, at most every half second, what each running command has
printed so far: each stream's total and its kept tail (`Store.publish_output`). `follow` polls
the store and writes what is new since what it wrote: from the totals, the bytes that arrived
since, or, if more arrived than a tail holds, a note of how many were not kept and then the tail.
When a run ends, the rest comes from the run's stored tail and total (`Store.kept_output`);
each later run (a retry) follows, until the job is finished.

It starts with the job's latest run: the running one, from what is kept of it so far, or the
last one that ended.
"""

import time

from . import display
from .jobs import COMPLETED, FINISHED_STATES, PROCESSING

POLL_S = 0.1  # between looks at the store (each costs a PRAGMA when nothing changed)
STREAMS = ("stdout", "stderr")


def unseen(written, total, tail):
    """(bytes not kept, bytes to write) of a stream of which `written` bytes were written before,
    that has `total` bytes now (None: not known), the last len(tail) of them in `tail`."""
    tail = tail or b""
    if total is None:  # a run recorded without a total: its tail, unless some of it was shown
        return 0, (b"" if written else tail)
    new = total - written
    if new <= 0:
        return 0, b""
    if new <= len(tail):
        return 0, tail[len(tail) - new:]
    return new - len(tail), tail


class Follower:
    """Writes one job's output, run after run, to `sink`: `sink.output(i, data)` for the bytes of
    stream i (0 stdout, 1 stderr), `sink.line(text, i)` for a line of ours at the start of a line
    of stream i, `sink.flush()`."""

    def __init__(self, store, job_id, sink):
        self.store, self.job_id, self.sink = store, job_id, sink
        self.next_run = None  # the first run not shown yet; None until the first look
        self.open = None      # the running run being shown: {"run", "started_at", "written": [out, err]}

    def look(self, now):
        """One look at the store: write what is new. Returns the job's state once it is finished
        and all of it has been shown, else None."""
        job, live = self.store.live_output(self.job_id)
        running = job["state"] == PROCESSING
        if self.next_run is None:  # the first look: from the latest run on
            self.next_run = max(job["run"], 1)
            if not job["run"] and job["state"] not in FINISHED_STATES:
                self.sink.line(display.follow_waiting(self.job_id, job["state"]))
        if self.open is not None and (not running or (job["run"], job["started_at"]) != self._claim()):
            self._close(job, now)
        last_ended = job["run"] - 1 if running else job["run"]
        while self.next_run <= last_ended:  # runs that ended while we were not looking
            self._whole(job, self.next_run, now)
            self.next_run += 1
        if running and self.open is None and job["run"] == self.next_run:
            self.open = {"run": job["run"], "started_at": job["started_at"], "written": [0, 0]}
            self.sink.line(display.follow_started(self.job_id, job["run"]))
        if self.open is not None and live is not None and (live["run"], live["started_at"]) == self._claim():
            self._write(self.open["written"], [(live[name], live[name + "_total"]) for name in STREAMS])
        self.sink.flush()
        if job["state"] in FINISHED_STATES and self.open is None:
            if not job["run"]:
                self.sink.line(display.follow_never_ran(self.job_id, job["state"]))
                self.sink.flush()
            return job["state"]
        return None

    def _claim(self):
        return self.open["run"], self.open["started_at"]

    def _write(self, written, streams):
        """Write what is new of each stream, (tail, total), past `written[i]` bytes; count it there."""
        for i, (tail, total) in enumerate(streams):
            dropped, data = unseen(written[i], total, tail)
            if dropped:
                self.sink.line(display.not_kept(dropped), i)
            if data:
                self.sink.output(i, data)
            if total is not None:
                written[i] = max(total, written[i])

    def _close(self, job, now):
        """The run we were showing has ended: the rest of its output, and how it ended."""
        run = self.open["run"]
        if job["run"] < run or (job["run"] == run and job["started_at"] != self.open["started_at"]):
            # A hard stop gave the run back: it was not recorded, and runs again under its number.
            self.sink.line(display.follow_given_back(self.job_id, run))
            self.open, self.next_run = None, run
            return
        self._write(self.open["written"], self.store.kept_output(job, run))
        self.open, self.next_run = None, run + 1
        self._ended(job, run, now)

    def _whole(self, job, run, now):
        """A run that started and ended between two looks (or the latest, at the first look)."""
        self.sink.line(display.follow_started(self.job_id, run))
        self._write([0, 0], self.store.kept_output(job, run))
        self._ended(job, run, now)

    def _ended(self, job, run, now):
        """The line saying how run `run` ended (and, for the job's latest, what comes next)."""
        row = next((r for r in self.store.job_runs(job) if r["run"] == run), None)
        self.sink.line(display.follow_ended(self.job_id, run, row, job if run == job["run"] else None, now))


def follow(store, job_id, sink, *, poll_s=POLL_S):
    """Write job `job_id`'s output to `sink` as it comes (see `Follower`) until the job is finished;
    returns its state (completed, dead or cancelled). Ctrl-C (KeyboardInterrupt) goes to the caller:
    the job is not touched."""
    follower = Follower(store, job_id, sink)
    while True:
        state = follower.look(store.now())
        if state is not None:
            return state
        time.sleep(poll_s)


def exit_code(state):
    """0 for a completed job, 1 for a dead or cancelled one."""
    return 0 if state == COMPLETED else 1
