"""The worker process: N threads that claim, run and record jobs.

Shape (after huey's consumer): each pool thread repeats a few named steps
(claim the next job while recording the last one's outcome; wait if there is
none; run it, guarded) until the stop flag is set. The main thread is the
supervisor: it sleeps on a `wake.Waker` until a process that committed work
pokes it (or one of our threads, or a signal, rings it), or until a safety
poll or the next waiting job's due time; then it reads the stopfile and the
signal flags and asks the store whether anything could give an idle thread
work. Where it cannot be poked it looks every `poll-interval`. A housekeeping
thread renews leases (the heartbeat), reloads config, recovers jobs of lost
workers and keeps the WAL small, off the job path.

Running the command itself is the runner's business (`qctl/runner.py`).
"""

import json
import logging
import os
import queue
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from . import home as qhome
from . import shapes
from .db import PRUNE_BATCH, is_url, open_store
from .errors import DatabaseDamaged, JobNotFound, QueueError
from .jobs import CANCEL, CANCELLED, COMPLETE, COMPLETED, DEAD, FAIL, FAILED, RELEASE, UNFINISHED_STATES, Outcome
from .runner import adopt_orphans, kill_lost, kill_tree, output_progress, run_command, run_identity
from .times import format_seconds

log = logging.getLogger("qctl.worker")

TICK_S = 0.5               # housekeeping thread's period for config reload and recovery
WAL_TICK_S = 0.1           # ... and for WAL upkeep, which must keep up with a full-speed drain
DAMAGED_TRIES = 3          # a damaged database: give up after this many failed claims in a row
PRUNE_EVERY_S = 10.0       # retention looks this often (at once again while it finds a full batch)
ERROR_REPEAT_S = 60.0      # the same database error is logged at most this often
SAFETY_WAKE_S = 5.0        # idle threads retry a claim at least this often, whatever the signals say
SAFETY_POLL_S = 1.0        # with wake-ups, an idle supervisor still looks this often (or every poll-interval
                           # if that is longer): a lost poke, or work another worker's commit made
CLAIM_RETRY_S = 1.0        # after a database error, a thread waits this long before claiming again
HARD_STOP_GRACE_S = 0.2    # between TERM and KILL of a command cut short by a hard stop
STOPPING_LOOK_S = 0.05     # a stopping supervisor looks this often whether its threads have all ended
SCHEDULE_LOOK_S = 0.5      # the schedules thread looks this often for a new, sooner schedule
HOOK_TIMEOUT_S = 30.0      # an on-finish hook running longer is killed, with its whole tree
HOOK_BACKLOG = 10000       # finished runs waiting for their hook; past this, hooks are skipped (logged)
HOOK_STOP_S = 30.0         # a stopping worker runs the hooks still waiting for at most this long


class Worker:
    """One worker process serving `home` with `threads` threads.

    `run()` blocks until the worker is stopped (stopfile, signal, `stop()`)
    or, with `burst`, until nothing is runnable and nothing runs.
    """

    def __init__(self, home, *, db=None, threads=None, burst=False, drain=False, queues=None, stop_generation=None,
                 allow_shared_home=False):
        self.home = home
        # --db (a PostgreSQL URL) > $QUEUECTL_DB > the home's SQLite file
        self.db = qhome.database(home, db, allow_shared=allow_shared_home)
        self.host = qhome.host()
        self.host_key = qhome.host_key()  # whose process table our pid is in: others compare it before trusting it
        self.pid = os.getpid()
        self.id = "%s:%d:%s" % (self.host, self.pid, os.urandom(3).hex())
        self.burst = burst
        self.drain = drain
        self.queues = tuple(queues) if queues else None  # None: every queue
        with open_store(self.db) as store:
            self.settings = store.config()
            # The store's clock: on PostgreSQL the server's (shared by every store of that server
            # in this process, so it goes on working once this one is closed).
            self.now = store.now
            # A stop requested after this generation stops us. `worker start --detach` passes the
            # generation it saw, so a stop issued while the child starts up is not missed.
            self.stop_generation = store.stop_generation() if stop_generation is None else stop_generation
        self.threads = threads or self.settings["worker-count"]
        self.started_at = self.now()
        self._stopping = threading.Event()   # claim nothing more
        self._done = threading.Event()       # every pool thread has returned
        self._killing = False                # kill running commands and release their jobs
        self._signals = 0                    # set only by signal handlers: counted by the supervisor
        self._cond = threading.Condition()
        self._waker = None                   # the supervisor sleeps on it (run() makes it)
        self._house_wake = threading.Event() # an idle housekeeping thread sleeps on it (see _wake)
        self._signal_fd = False              # install_signal_handlers: signals end the supervisor's sleep
        self._wake_tickets = 0               # idle threads that may go and claim (see _wake)
        self._idle = 0
        self._active = self.threads          # pool threads still looping (burst ends when all are idle)
        self._procs = {}                     # job seq -> Popen, for a hard stop
        self._unnoted = {}                   # job seq -> (job, Popen, start): pid not yet noted (_note_runs)
        self._killed = set()                 # job seqs whose command a hard stop (or a lapsed lease) killed
        self._cancelled = set()              # job seqs whose command we killed because a user cancelled it
        self._procs_lock = threading.Lock()
        self._last_error, self._last_error_at = None, 0.0  # see _log_error
        self.failure = None                  # why the worker gave up (run() then returns 1)
        self._pruned = 0                     # jobs the last retention batch removed
        self._published = {}                 # job seq -> (Popen, run, bytes read) as _publish_output last wrote it
        self._hooks = queue.Queue(HOOK_BACKLOG)  # finished runs whose on-finish hook is still to run
        self._hook_proc = None               # the hook command running now, for a hard stop
        self._hooks_cut = False              # stopping, and out of time for the hooks still waiting
        self._beat_began = time.monotonic()  # when the last heartbeat that reached the database began
        # (seq, run) of the jobs our threads claimed and have not yet recorded: the heartbeat renews only
        # these. A claim whose commit we never heard of (a connection lost during it) is not ours to keep.
        # The run is part of the key: a thread whose finish committed unheard may record it again (fenced)
        # after another thread claimed the same job's next run, and must not drop that one's lease.
        self._held = set()

    # ------------------------------------------------------------ control

    def stop(self):
        """Finish running jobs, claim no more."""
        self._stopping.set()
        self._wake()
        self._ring()

    def kill(self):
        """Kill running commands now; their jobs go back to pending without using an attempt."""
        self._killing = True
        self.stop()
        with self._procs_lock:
            procs = list(self._procs.values())
            self._killed.update(self._procs)
        if self._hook_proc is not None:
            procs.append(self._hook_proc)
        for proc in procs:
            threading.Thread(target=kill_tree, args=(proc,), kwargs={"grace_s": HARD_STOP_GRACE_S},
                             daemon=True).start()

    def install_signal_handlers(self):
        """SIGINT/SIGTERM: graceful stop; a second SIGINT: hard stop. Handlers only count."""
        def handler(signum, frame):
            self._signals = self._signals + 1 if signum == signal.SIGINT else max(self._signals, 1)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        self._signal_fd = True

    def _wake(self, count=None):
        """Send `count` idle threads (None: all) to claim. One per look: a thread that claims a
        job sends the next (`_claim_next`), so a new job costs one claim, not one per idle thread
        (empty claims take the write lock that the next enqueue waits for). A ticket given while
        no thread waits is kept: the next thread to go idle claims again at once."""
        with self._cond:
            if count is None:
                self._wake_tickets = self.threads
                self._cond.notify_all()
            else:
                self._wake_tickets = min(self.threads, self._wake_tickets + count)
                self._cond.notify(count)
        self._house_wake.set()  # the threads may start committing: the WAL needs watching again

    def _ring(self):
        """Make the supervisor look now (from any thread)."""
        waker = self._waker
        if waker is not None:
            waker.ring()

    # ------------------------------------------------------------ the pool

    def run(self):
        """Serve until stopped; returns 0, or 1 when the worker gave up (see `_give_up`)."""
        if adopt_orphans() is False:  # Linux: our commands' orphans become ours, so none escapes a kill
            log.warning("worker %s: cannot adopt orphaned processes (prctl refused): every job's end will "
                        "read every process to find what the job left running", self.id)
        self._house_store = open_store(self.db, durable=False, autocheckpoint=False)
        threads = []
        previous_fd = None
        try:
            self._waker = self._house_store.waker("%d-%s" % (self.pid, self.id.rsplit(":", 1)[1]))
            if self._waker.unavailable is not None:
                log.info("worker %s: no wake-ups (%s): looking for work every poll-interval", self.id,
                         self._waker.unavailable)
            if self._signal_fd:
                try:  # a signal must end the supervisor's sleep, not wait for its next look
                    previous_fd = signal.set_wakeup_fd(self._waker.signal_fd(), warn_on_full_buffer=False)
                except ValueError:  # not the main thread: the handlers were not installed here either
                    self._signal_fd = False
            qhome.pulse(self.home, self.id)
            self._beat()
            self._recover()
            log.info("worker %s started: %d thread%s, pid %d", self.id, self.threads,
                     "" if self.threads == 1 else "s", self.pid)
            threads = [threading.Thread(target=self._pulse_loop, name="qctl-pulse", daemon=True),
                       threading.Thread(target=self._housekeeping_loop, name="qctl-housekeeping", daemon=True),
                       threading.Thread(target=self._hook_loop, name="qctl-hooks", daemon=True)]
            if not (self.burst or self.drain):  # those exit once the queue is empty: schedules would refill it
                threads.append(threading.Thread(target=self._schedule_loop, name="qctl-schedules", daemon=True))
            for thread in threads:
                thread.start()
            with ThreadPoolExecutor(self.threads, thread_name_prefix="qctl-worker") as pool:
                futures = [pool.submit(self._thread_main) for _ in range(self.threads)]
                try:
                    self._supervise(futures)
                finally:
                    self.stop()  # a supervisor that failed must not leave the pool waiting forever
            for future in futures:
                future.result()  # _thread_main catches everything; this only surfaces a bug
        finally:
            # Whatever ended the pool, the housekeeping threads go with it, and so does our row;
            # the hooks still waiting run first, while we still heartbeat (we are still running).
            self._finish_hooks()
            self._done.set()
            try:  # the hooks thread ends now, not at its next look (every stop and burst waited for it)
                self._hooks.put_nowait(None)
            except queue.Full:
                pass  # cut short with hooks still waiting: it ends at its next look
            self._house_store.wake_upkeep()  # not a WAL tick later: every stop and burst waited for it
            self._house_wake.set()
            for thread in threads:
                thread.join()
            try:
                self._house_store.deregister(self.id)
            except QueueError as exc:
                log.error("worker %s: could not deregister: %s", self.id, exc)
            self._house_store.close()
            qhome.forget_pulse(self.home, self.id)
            if self._waker is not None:
                if self._signal_fd:
                    signal.set_wakeup_fd(-1 if previous_fd is None else previous_fd)
                waker, self._waker = self._waker, None
                waker.close()
        if self.failure is not None:
            log.error("worker %s stopped", self.id)
            return 1
        log.info("worker %s stopped", self.id)
        return 0

    def _give_up(self, why):
        """Stop (running jobs finish, nothing more is claimed) and make run() return 1; say why now."""
        if self.failure is None:
            self.failure = why
            log.error("worker %s: %s; stopping once its running jobs end", self.id, why)
        self.stop()

    def _open_store(self, doing):
        """A store for one of our threads. A database server that cannot be reached now (restarting)
        may be back soon: tried again every CLAIM_RETRY_S until it opens, or None once we stop. A
        SQLite file that cannot be opened raises at once."""
        while True:
            try:
                return open_store(self.db, durable=False, autocheckpoint=False)
            except QueueError as exc:
                if not is_url(self.db) or isinstance(exc, DatabaseDamaged):
                    raise
                self._log_error(doing, exc)
            self._obey_signals()  # the supervisor may be the one waiting here: Ctrl-C still stops us
            if self._stopping.wait(CLAIM_RETRY_S):
                return None

    def _supervise(self, futures):
        watch = self._open_store("opening the queue to watch it")
        if watch is None:
            return
        try:
            # Our threads' first claims may have come before a job committed that this first look sees
            # (and answers, once): a ticket makes the next idle thread claim again, rather than all wait
            # for the safety poll.
            try:
                if watch.poll_for_work(self.now()):
                    self._wake(1)
            except QueueError:  # a passing problem (the server restarting): the loop below looks again
                pass
            last_wake = time.monotonic()
            while not all(f.done() for f in futures):
                self._obey_signals()
                if not self._stopping.is_set() and self._stop_requested(watch):
                    log.info("worker %s stopping: stop requested", self.id)
                    self.stop()
                if self._stopping.is_set():  # nothing to wake any more: wait for the pool to end, on
                    # the waker (a second Ctrl-C rings it through set_wakeup_fd), looking often: a
                    # thread's future is done only just after the thread has said it is exiting.
                    self._waker.wait(min(self.settings["poll-interval"], STOPPING_LOOK_S))
                    continue
                if self._idle:
                    now = time.monotonic()
                    try:
                        due = watch.poll_for_work(self.now())
                    except QueueError:
                        # A passing problem (disk full, say) must not end the worker: the safety
                        # wake below sends the threads to retry, and they report what fails.
                        due = False
                    if due or now - last_wake >= SAFETY_WAKE_S:
                        self._wake(1 if due else None)
                        last_wake = now
                    if self.drain and self._idle >= self._active and self._drained(watch):
                        log.info("worker %s stopping: nothing left to drain", self.id)
                        self.stop()
                        continue
                self._waker.wait(self._sleep_s(watch))
        finally:
            watch.close()

    def _sleep_s(self, watch):
        """How long the supervisor may sleep before its next look: until a poke or a ring, but no
        longer than the safety poll (`poll-interval` when pokes cannot reach us) or the time the
        next waiting job falls due."""
        interval = self.settings["poll-interval"]
        if self._waker.renew():
            interval = max(interval, SAFETY_POLL_S)
        elif self._waker.retry_in() is not None:  # it listens again soon (PostgreSQL, once the server is back)
            interval = min(interval, max(self._waker.retry_in(), STOPPING_LOOK_S))
        due = watch.next_due() if self._idle else None
        return interval if due is None else min(interval, due - self.now())

    def _drained(self, watch):
        """--drain: whether no job of our queues is pending, processing or failed (due or not)."""
        try:
            counts = [watch.counts(queue=q) for q in self.queues] if self.queues else [watch.counts()]
        except QueueError:
            return False
        return not any(c[s] for c in counts for s in UNFINISHED_STATES)

    def _obey_signals(self):
        if self._signals == 1 and not self._stopping.is_set():
            log.info("worker %s stopping: finishing running jobs (Ctrl-C again to kill them)", self.id)
            self.stop()
        elif self._signals > 1 and not self._killing:
            log.info("worker %s killing running jobs; they go back to the queue", self.id)
            self.kill()

    def _stop_requested(self, watch):
        """Whether a stop was asked for since we started (the stopfile's generation grew; on
        PostgreSQL the database's, from any host)."""
        try:
            return watch.stop_generation() > self.stop_generation
        except QueueError:  # a passing problem: the next look asks again
            return False

    # ------------------------------------------------------------ one pool thread

    def _thread_main(self):
        try:
            store = self._open_store("opening the queue")
        except QueueError as exc:
            log.error("worker %s: a thread could not open the queue: %s", self.id, exc)
            store = None
        if store is None:
            self._thread_exit()
            return
        finish = None  # the last job's outcome, recorded with the next claim
        damaged = 0    # failed claims in a row on a damaged database
        try:
            while not self._stopping.is_set():
                try:
                    job = self._claim_next(store, finish)
                except Exception as exc:
                    self._log_error("claiming a job", exc)
                    damaged = damaged + 1 if isinstance(exc, DatabaseDamaged) else 0
                    if damaged >= DAMAGED_TRIES:
                        self._give_up("%s (gave up after %d tries; 'queuectl check' says more)" % (exc, damaged))
                    self._stopping.wait(CLAIM_RETRY_S)
                    continue
                finish, damaged = None, 0
                if job is None:
                    self._wait_for_work()
                else:
                    finish = self._run_guarded(job)
        finally:
            try:
                self._record_last(store, finish)
            finally:  # whatever recording raised: a burst ends only once every thread has exited
                store.close()
                self._thread_exit()

    def _claim_next(self, store, finish):
        """Record `finish` (if any) and claim the next job, in one transaction; the job or None.

        The claim keeps on the job the tag its command will carry (runner.TAG_VAR) and who we are:
        if we die mid-run, the worker that recovers the job kills by them what we left running.
        """
        if self._lease_lapsing():  # our heartbeats do not get through: claim nothing we could not keep
            if finish is not None:  # raises if it cannot be recorded either: the caller tries again
                self._log_recorded(finish, store.record(finish, self.settings))
                self._held.discard((finish.job["seq"], finish.job["run"]))
            return None
        tag = os.urandom(8).hex()
        process = self._process_note({"tag": tag})
        if finish is None:
            job = store.claim(self.id, self.settings["lease-seconds"], queues=self.queues, process=process)
        else:
            recorded, job = store.finish_and_claim(finish, self.settings, queues=self.queues, process=process)
            self._held.discard((finish.job["seq"], finish.job["run"]))
            self._log_recorded(finish, recorded)
            if self._idle:  # the run's end may have let a dependent job (or a queue's next) run
                self._ring()
        if job is not None:
            self._held.add((job["seq"], job["run"]))
            job["tag"] = tag
            if self._idle:  # there may be more: the next idle thread looks too
                self._wake(1)
        return job

    def _process_note(self, identity):
        """The text kept on a running job for `_kill_lost_run`: a run's identity and our process."""
        return json.dumps(dict(identity, host_key=self.host_key, worker_pid=self.pid))

    def _record_last(self, store, finish):
        if finish is None:
            return
        try:
            self._log_recorded(finish, store.record(finish, self.settings))
            self._held.discard((finish.job["seq"], finish.job["run"]))
        except QueueError as exc:
            log.error("worker %s: could not record a result: %s; the job will be recovered", self.id, exc)

    def _run_guarded(self, job):
        """`step(job)`, turning a bug into a failed run rather than a lease held forever."""
        try:
            return self.step(job)
        except Exception as exc:
            log.exception("worker %s: error running job %s", self.id, job["id"])
            return Outcome(FAIL, job, self.id, self.now(), "worker error: %s" % exc)

    def _log_error(self, doing, exc):
        """One line for a database problem (a traceback for a bug), but only once a minute for the
        same one: every thread and the housekeeping meet a full disk at once, and retry it often."""
        message, now = "%s: %s" % (type(exc).__name__, exc), time.monotonic()
        with self._cond:
            repeated = self._last_error == message and now - self._last_error_at < ERROR_REPEAT_S
            if not repeated:
                self._last_error, self._last_error_at = message, now
        if repeated:
            return
        if isinstance(exc, QueueError):
            log.error("worker %s: %s (will retry)", self.id, exc)
        else:
            log.exception("worker %s: error %s (will retry)", self.id, doing)

    def _thread_exit(self):
        with self._cond:
            self._active -= 1
            self._end_burst_if_idle()

    def _wait_for_work(self):
        with self._cond:
            self._idle += 1
            self._end_burst_if_idle()
            if self._idle == 1 or (self.drain and self._idle >= self._active):
                # The supervisor looks only while a thread is idle: work committed since it last
                # looked (it may have been poked while we all ran) must not wait for its safety poll.
                # And a --drain ends once the last thread is idle: it must look then too.
                self._ring()
            try:
                while not self._stopping.is_set():
                    if self._wake_tickets:
                        self._wake_tickets -= 1
                        break
                    self._cond.wait()
            finally:
                self._idle -= 1

    def _end_burst_if_idle(self):
        """With the condition held: the last thread to find nothing due ends a burst at once,
        rather than at the supervisor's next tick (up to a poll-interval later)."""
        if self.burst and self._idle >= self._active:
            self.stop()

    # ------------------------------------------------------------ one job

    def step(self, job):
        """Run a claimed job; return its Outcome: complete, fail, or release when a hard stop killed it."""
        settings = self.settings
        timeout = job["timeout"] or settings["job-timeout"] or None
        log.info("job %s started (attempt %d/%d, run %d)", job["id"], job["attempts"], job["max_retries"] + 1,
                 job["run"])
        started = time.monotonic()

        def track(proc):
            with self._procs_lock:
                self._procs[job["seq"]] = proc
                self._unnoted[job["seq"]] = (job, proc, time.monotonic())
                killing = self._killing
                if killing:
                    self._killed.add(job["seq"])
            if killing:
                kill_tree(proc, grace_s=HARD_STOP_GRACE_S)

        try:
            result = run_command(job["command"], cwd=job["cwd"], env=job["env"] and json.loads(job["env"]),
                                 timeout=timeout, output_limit=settings["output-limit"], on_start=track,
                                 tag=job.get("tag"))
        finally:
            with self._procs_lock:
                self._procs.pop(job["seq"], None)
                self._unnoted.pop(job["seq"], None)
        now = self.now()
        if job["seq"] in self._killed:  # whatever it exited with: we cut it short
            self._killed.discard(job["seq"])  # the job may come back to us (a lapsed lease's)
            return Outcome(RELEASE, job, self.id, now)
        took = time.monotonic() - started
        if job["seq"] in self._cancelled:
            self._cancelled.discard(job["seq"])
            return Outcome(CANCEL, job, self.id, now, None, result.exit_code, result.stdout, result.stderr, took)
        if result.error is None:
            return Outcome(COMPLETE, job, self.id, now, stdout=result.stdout, stderr=result.stderr, took=took)
        return Outcome(FAIL, job, self.id, now, result.error, result.exit_code, result.stdout, result.stderr, took)

    def _log_recorded(self, outcome, recorded):
        """One line for what became of a run, as the store recorded it."""
        job = outcome.job
        if recorded is None:
            log.warning("job %s: result not recorded: its lease was lost and another worker recovered it",
                        job["id"])
        elif outcome.kind == RELEASE:
            log.info("job %s killed; it goes back to the queue without using an attempt", job["id"])
        elif recorded.state == CANCELLED:
            log.info("job %s cancelled after %.2fs; its processes were killed", job["id"], outcome.took)
        elif recorded.state == COMPLETED:
            log.info("job %s completed in %.2fs", job["id"], outcome.took)
        elif recorded.state == FAILED:
            log.info("job %s failed: %s; retry in %ss", job["id"], outcome.error,
                     format_seconds(round(recorded.next_run_at - outcome.now, 2)))
        elif recorded.state == DEAD:
            log.info("job %s is dead after %d attempt%s: %s", job["id"], job["attempts"],
                     "" if job["attempts"] == 1 else "s", outcome.error)
        if recorded is not None and outcome.kind != RELEASE:
            self._finished(job["id"], recorded.state, outcome.exit_code if outcome.kind != COMPLETE else 0,
                           job["run"], outcome.took)

    # ------------------------------------------------------------ on-finish hooks and schedules

    def _finished(self, job_id, state, exit_code, run, took):
        """A run's end is committed: its on-finish hook (config) runs on the hooks thread, never here."""
        if not self.settings["on-finish"]:
            return
        try:
            self._hooks.put_nowait((job_id, state, exit_code, run, took))
        except queue.Full:
            log.warning("on-finish hook skipped for job %s: %d hooks are waiting already", job_id, HOOK_BACKLOG)

    def _hook_loop(self):
        """Run the on-finish hook of each finished run, one at a time, off the job path: a slow or
        failing hook delays only the hooks after it, and changes no job. Those still waiting when
        the worker stops run before it exits, for up to HOOK_STOP_S (see `_finish_hooks`)."""
        store = None
        try:
            while not (self._killing or self._hooks_cut):
                try:
                    event = self._hooks.get(timeout=SCHEDULE_LOOK_S)
                except queue.Empty:
                    if self._done.is_set():
                        return
                    continue
                if event is None:  # run() is ending (see there): what is still queued runs first
                    self._hooks.task_done()
                    if self._hooks.empty():
                        return
                    continue
                try:
                    if store is None:  # on PostgreSQL, waits for a server that is down (None: we stopped)
                        store = self._open_store("opening the queue for a hook")
                    if store is not None:
                        self._guarded("running the on-finish hook", lambda: self._run_hook(store, *event))
                except QueueError as exc:
                    self._log_error("opening the queue for a hook", exc)
                finally:
                    self._hooks.task_done()
        finally:
            if store is not None:
                store.close()

    def _finish_hooks(self):
        """A stopping worker: let the hooks still waiting run, for up to HOOK_STOP_S in all (a second
        Ctrl-C ends the wait), then kill the one running and skip the rest, saying how many."""
        deadline = time.monotonic() + HOOK_STOP_S
        while self._hooks.unfinished_tasks and not self._killing and time.monotonic() < deadline:
            time.sleep(min(self.settings["poll-interval"], SCHEDULE_LOOK_S))
            self._obey_signals()
        if self._hooks.unfinished_tasks:
            self._hooks_cut = True
            proc = self._hook_proc
            if proc is not None:
                kill_tree(proc, grace_s=HARD_STOP_GRACE_S)
            log.warning("worker %s: %d on-finish hook%s not run: the worker stopped", self.id,
                        self._hooks.unfinished_tasks, "" if self._hooks.unfinished_tasks == 1 else "s")

    def _run_hook(self, store, job_id, state, exit_code, run, took):
        hook = self.settings["on-finish"]
        if not hook:
            return
        try:
            row = store.get(job_id)
            document = shapes.job_with_runs(row, store.job_runs(row))  # env values masked, as show --json
            run = row["run"] if run is None else run
        except JobNotFound:  # deleted since
            document = {"id": job_id, "state": state}
        env = {"QUEUECTL_JOB_ID": job_id, "QUEUECTL_STATE": state,
               "QUEUECTL_EXIT_CODE": "" if exit_code is None else str(exit_code), "QUEUECTL_RUN": "" if run is None else str(run),
               "QUEUECTL_DURATION": "" if took is None else "%.3f" % took}

        def track(proc):
            self._hook_proc = proc
        try:
            result = run_command(hook, env=env, timeout=HOOK_TIMEOUT_S, output_limit=4096, on_start=track,
                                 stdin=json.dumps(document).encode("utf-8"), mask_env=False)
        finally:
            self._hook_proc = None
        if result.error is not None:
            said = result.stderr.decode("utf-8", "replace").strip().splitlines()
            log.warning("on-finish hook for job %s failed: %s%s", job_id, result.error,
                        ": " + said[-1][:200] if said else "")

    def _schedule_loop(self):
        """Fire due schedules (see `Store.fire_schedules`) on time, until the worker stops."""
        store = None
        try:
            store = self._open_store("opening the queue for the schedules")
            while store is not None and not self._stopping.is_set():
                due = None
                try:
                    due = store.next_schedule_at()
                except Exception as exc:
                    self._log_error("reading the schedules", exc)
                wait = SCHEDULE_LOOK_S if due is None else min(max(0.0, due - self.now()), SCHEDULE_LOOK_S)
                if self._stopping.wait(wait):
                    return
                if due is not None and self.now() >= due and not self._guarded("firing schedules",
                                                                              lambda: self._fire(store)):
                    self._stopping.wait(CLAIM_RETRY_S)  # a full disk, say: not again at once
        except QueueError as exc:
            log.error("worker %s: the schedules thread could not open the queue: %s", self.id, exc)
        finally:
            if store is not None:
                store.close()

    def _fire(self, store):
        for fired in store.fire_schedules(self.settings):
            if fired.job_id is not None:
                log.info("schedule %s fired: job %s", fired.name, fired.job_id)
            elif fired.failed:
                log.warning("schedule %s could not fire: %s", fired.name, fired.skipped)
            else:
                log.info("schedule %s skipped a fire: %s", fired.name, fired.skipped)

    # ------------------------------------------------------------ housekeeping thread

    def _housekeeping_loop(self):
        """Heartbeat, config reload, recovery of lost workers' jobs (every TICK_S) and WAL
        upkeep (every WAL_TICK_S, or every TICK_S once every thread has waited for work that long)."""
        last_beat = last_tick = time.monotonic()
        last_prune = 0.0
        idle_since = None  # since when every pool thread has been waiting for work
        while not self._done.is_set():
            if self._idle < self._active:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            if idle_since is not None and time.monotonic() - idle_since >= TICK_S:
                # None of our threads can commit until the supervisor wakes them (and us): fewer
                # wake-ups cost an idle worker less CPU. Woken, we tick fast again at once, before
                # a drain that starts can grow the WAL past its bound unwatched.
                if self._house_wake.wait(max(WAL_TICK_S, TICK_S - (time.monotonic() - last_tick))):
                    self._house_wake.clear()
                    idle_since = None
            else:
                self._house_store.await_upkeep(WAL_TICK_S)
            self._guarded("keeping the WAL small", self._house_store.housekeep)
            if time.monotonic() - last_tick < TICK_S:
                continue
            last_tick = time.monotonic()
            if not self._house_store.is_current():
                self._give_up("the database %s was deleted or replaced while this worker served it; "
                              "start a worker again to serve the new one" % self.db)
                continue
            # Each step on its own: one that fails (a bad config row, a full disk) must not stop the
            # heartbeat, or our leases lapse while we run.
            if time.monotonic() - last_beat >= self.settings["lease-seconds"] / 3 and self._guarded(
                    "renewing leases", self._beat):
                last_beat = time.monotonic()
            self._guarded("reloading the config", self._reload_config)
            if not self._stopping.is_set():
                self._guarded("recovering lost workers' jobs", self._recover)
            self._guarded("noting running commands", self._note_runs)
            self._guarded("cancelling jobs", self._cancel_requested)
            self._guarded("publishing running jobs' output", self._publish_output)
            if time.monotonic() - last_prune >= PRUNE_EVERY_S and self._guarded("pruning old jobs", self._prune):
                last_prune = time.monotonic() if self._pruned < PRUNE_BATCH else 0.0  # more to do: soon
        self._guarded("removing our ended runs' output", self._publish_output)  # every run has been recorded

    def _guarded(self, doing, step):
        """Run one housekeeping step; log what it raised (see _log_error). Returns whether it ran."""
        try:
            step()
            return True
        except Exception as exc:
            self._log_error(doing, exc)
            return False

    def _reload_config(self):
        self.settings = self._house_store.config()

    def _cancel_requested(self):
        """Kill the process trees of our running jobs whose cancel a user asked for; `step` then
        records them cancelled. A job not running yet (or any more) is left to its own end."""
        wanted = self._house_store.cancel_requests(self.id)
        with self._procs_lock:
            procs = [(seq, proc) for seq, proc in self._procs.items() if seq in wanted and seq not in self._cancelled]
            self._cancelled.update(seq for seq, _ in procs)
        for _, proc in procs:
            threading.Thread(target=kill_tree, args=(proc,), kwargs={"grace_s": HARD_STOP_GRACE_S},
                             daemon=True).start()

    def _publish_output(self):
        """What each running command has printed since the last tick (its totals and kept tails) into
        the store, for `logs --follow`; the rows of runs that ended go. One transaction a tick
        however many jobs run, none when nothing new came.

        From here, never from a job's thread: that thread reads the command's pipes, and a stalled
        database must not stop it (the command would block on a full pipe, and its timeout run on).
        Here a stall only delays what followers see. A run's number is asked of the store the first
        time it has printed something, and kept only if its command was running before and after
        that read: then the answer is that command's run, not the next one of the same job.
        """
        with self._procs_lock:
            running = dict(self._procs)
        known = {seq: entry for seq, entry in self._published.items() if running.get(seq) is entry[0]}
        outputs = []
        for seq, proc in running.items():
            _, run, since = known.get(seq, (proc, None, (0, 0)))
            progress = output_progress(proc, since)
            if progress is None:
                continue
            if run is None:
                run = self._house_store.running_run(seq, self.id)
                with self._procs_lock:
                    if self._procs.get(seq) is not proc:
                        run = None
                if run is None:
                    continue
            received, streams = progress
            outputs.append((seq, run, streams))
            known[seq] = (proc, run, received)
        self._house_store.publish_output(self.id, outputs, now=self.now())
        self._published = known

    def _prune(self):
        """Retention: a batch of old finished jobs (see `Store.prune`)."""
        self._pruned = self._house_store.prune(self.now(), self.settings)

    def _pulse_loop(self):
        """Touch our pulse file (see `home.pulse`) several times a lease, whatever the database does;
        where a lapsed lease alone makes us lost (PostgreSQL), watch that our heartbeats get through.
        This thread never waits on the database: a beat hung on a dead connection cannot hold it up."""
        lease_final = self._house_store.LEASE_IS_FINAL
        while not self._done.wait(qhome.pulse_interval(self.settings["lease-seconds"])):
            try:
                qhome.pulse(self.home, self.id)
            except QueueError as exc:
                self._log_error("pulsing", exc)
            if lease_final and self._lease_lapsing():
                self._lease_lapsed()

    def _lease_lapsing(self):
        """Whether our lease is running out unrenewed: it runs from when the last beat that got through
        began, and a third of it must be left for a kill to come before another worker, whose recovery
        looks every TICK_S, can take our jobs. Only where an expired lease alone decides (PostgreSQL)."""
        return (self._house_store.LEASE_IS_FINAL
                and time.monotonic() - self._beat_began > self.settings["lease-seconds"] * 2 / 3)

    def _lease_lapsed(self):
        """No heartbeat has reached the database for most of a lease (PostgreSQL: the server or the
        network is gone, or a connection hangs): another worker may recover our jobs soon. Kill
        our commands rather than let two copies run; their outcomes then record nothing (fenced),
        or give the jobs back if no one took them meanwhile."""
        with self._procs_lock:
            lapsed = [(seq, proc) for seq, proc in self._procs.items() if seq not in self._killed]
            self._killed.update(seq for seq, _ in lapsed)
        if lapsed:
            log.warning("worker %s: no heartbeat reached the database for most of a lease (%ss): killing %s running "
                        "command%s, whose jobs may run elsewhere soon", self.id,
                        format_seconds(self.settings["lease-seconds"]),
                        len(lapsed), "" if len(lapsed) == 1 else "s")
        for _, proc in lapsed:
            threading.Thread(target=kill_tree, args=(proc,), kwargs={"grace_s": HARD_STOP_GRACE_S}, daemon=True).start()

    def _beat(self):
        began = time.monotonic()
        self._house_store.heartbeat(self.id, self.settings["lease-seconds"], pid=self.pid,
                                    host=self.host, threads=self.threads, started_at=self.started_at,
                                    host_key=self.host_key,
                                    running=sorted({seq for seq, _ in list(self._held)}))
        self._beat_began = began

    def _recover(self):
        """Jobs of workers whose lease expired, or that died on this host, back to the queue."""
        for job_id, state in self._house_store.recover(self.now(), self.settings, me=self.id,
                                                       before_retry=self._kill_lost_run):
            log.info("job %s recovered from a lost worker: now %s", job_id, state)
            self._finished(job_id, state, None, None, None)

    def _note_runs(self):
        """Add its shell's pid and start time to the note of each run that has lasted a tick, so that
        a recovery also kills its session and group: the tag misses a process that cleared its
        environment. A run over within a tick costs no write."""
        now = time.monotonic()
        with self._procs_lock:
            due = [(job, proc) for job, proc, since in self._unnoted.values() if now - since >= TICK_S]
            for job, _ in due:
                del self._unnoted[job["seq"]]
        for job, proc in due:
            identity = run_identity(proc)
            if identity is not None:  # Linux: elsewhere there is nothing more to kill it by
                self._house_store.note_process(job, self.id, self._process_note(identity))

    def _kill_lost_run(self, job_id, run, process):
        """Before a lost run's job can run again: if its worker was in our process table and is dead,
        kill what the run left running. Called inside the recovery's transaction; never raises (that
        would undo the recovery)."""
        try:
            lost = json.loads(process)
            if qhome.worker_alive(lost.get("host_key"), lost.get("worker_pid")):
                return  # a worker in another process table, or still alive
            killed = kill_lost(lost)
        except Exception:
            log.exception("worker %s: could not kill what job %s's lost run %d left running", self.id, job_id, run)
            return
        if killed:
            log.info("job %s: killed %d process%s its lost run %d left running", job_id, killed,
                     "" if killed == 1 else "es", run)
