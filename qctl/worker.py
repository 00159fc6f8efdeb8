"""The worker process: N threads that claim, run and record jobs.

Shape (after huey's consumer): `Worker.step()` claims one job and runs it; each
pool thread repeats it until the stop flag is set. The main thread is the
supervisor: every `poll-interval` it reads the stopfile and the signal flags and
looks (`PRAGMA data_version`, no disk read) whether anything changed that could
give an idle thread work. A heartbeat thread renews leases, reloads config,
recovers jobs of dead workers and checkpoints the WAL, off the job path.

Running a command lives here too: `run_command` starts it through the platform
shell in its own session / process group, keeps only the tail of its output,
and kills the whole tree on timeout.
"""

import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

from . import home as qhome
from . import jobs
from .db import Store
from .errors import QueueError

log = logging.getLogger("qctl.worker")

POSIX = os.name == "posix"
KILL_GRACE_S = 2.0         # between TERM and KILL of a timed-out job's process tree
ORPHAN_PIPE_GRACE_S = 1.0  # read this long after the shell exits if a grandchild holds its pipes
TICK_S = 0.5               # heartbeat thread's period for config reload, recovery, checkpoint
SAFETY_WAKE_S = 5.0        # idle threads retry a claim at least this often, whatever the signals say
READ_CHUNK = 65536
SECRET_MIN_CHARS = 4       # env values this long or longer are masked in stored output
NOT_FOUND_EXIT = 9009 if not POSIX else 127
# Win32 process creation flags; subprocess defines them only on Windows, and the
# Windows branches are built (and tested) on every platform.
CREATE_NEW_PROCESS_GROUP = 0x00000200
DETACHED_PROCESS = 0x00000008
CREATE_NO_WINDOW = 0x08000000


# ---------------------------------------------------------------- running one command

class Tail:
    """The last `limit` bytes written to it, in bounded memory."""

    def __init__(self, limit):
        self.limit = limit
        self.buf = bytearray()

    def add(self, data):
        self.buf += data
        if len(self.buf) > 2 * self.limit + READ_CHUNK:
            del self.buf[:-self.limit or len(self.buf)]

    def value(self):
        return bytes(self.buf[-self.limit:]) if self.limit else b""


class RedactedTail(Tail):
    """A Tail that replaces every occurrence of each secret with `***` before keeping it.

    Only a match that starts at least len(longest secret) - 1 bytes before the
    end of what has arrived is decided; the rest waits for more, so a secret
    split across two reads is still caught (and not cut short by a shorter
    secret that is its prefix). The tail is cut only after redaction: no part of
    a secret survives at its front either.
    """

    MASK = b"***"

    def __init__(self, limit, secrets):
        super().__init__(limit)
        longest_first = sorted(set(secrets), key=len, reverse=True)
        self.pattern = re.compile(b"|".join(re.escape(s) for s in longest_first))
        self.hold = len(longest_first[0]) - 1
        self.pending = b""

    def add(self, data):
        data = self.pending + data
        cut = len(data) - self.hold
        done, kept = 0, []
        for match in self.pattern.finditer(data):
            if match.start() >= cut:
                break
            kept += [data[done:match.start()], self.MASK]
            done = match.end()
        end = max(done, cut)
        kept.append(data[done:end])
        self.pending = data[end:]
        super().add(b"".join(kept))

    def value(self):
        if self.pending:
            super().add(self.pattern.sub(self.MASK, self.pending))
            self.pending = b""
        return super().value()


def secrets_of(env):
    """The env values to mask in captured output: those of at least SECRET_MIN_CHARS characters
    (shorter ones, like "1", would mask innocent output and hide little)."""
    return [v.encode("utf-8") for v in (env or {}).values() if len(v) >= SECRET_MIN_CHARS]


class Result:
    __slots__ = ("exit_code", "error", "stdout", "stderr")

    def __init__(self, exit_code, error, stdout=b"", stderr=b""):
        self.exit_code, self.error, self.stdout, self.stderr = exit_code, error, stdout, stderr


def popen_options(posix=POSIX):
    """Popen arguments that put the command in a process tree we can kill as a whole.

    POSIX: its own session, so the terminal's Ctrl-C reaches only the worker.
    Windows: its own process group (Ctrl-C stays with the worker, as on POSIX)
    and no console window: a detached worker has no console, and every command
    would otherwise pop up one of its own.
    """
    if posix:
        return {"start_new_session": True}
    return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}


def detach_options(posix=POSIX):
    """Popen arguments for a worker that outlives the terminal (or console) that started it."""
    if posix:
        return {"start_new_session": True}
    return {"creationflags": CREATE_NEW_PROCESS_GROUP | DETACHED_PROCESS}


def kill_tree_argv(pid):
    """The Windows command that kills `pid` and every process it started."""
    return ["taskkill", "/T", "/F", "/PID", str(pid)]


def kill_tree(proc, *, grace_s=KILL_GRACE_S):
    """TERM the command's process group, then KILL it after `grace_s` (POSIX); taskkill /T /F (Windows)."""
    if not POSIX:
        try:
            subprocess.run(kill_tree_argv(proc.pid), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           creationflags=CREATE_NO_WINDOW)
        except OSError:  # no taskkill (a stripped-down Windows): the shell at least
            proc.kill()
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            pass
        # Even when the shell is gone, its children may linger in the group: KILL reaches them.


def describe_exit(code):
    if code == 0:
        return None
    if code == NOT_FOUND_EXIT:
        return "command not found"
    if code < 0:
        try:
            return "killed by signal %d (%s)" % (-code, signal.Signals(-code).name)
        except ValueError:
            return "killed by signal %d" % -code
    return "exit code %d" % code


def run_command(command, *, cwd=None, env=None, timeout=None, output_limit=65536, on_start=None):
    """Run `command` through the platform shell; return a Result.

    Output beyond `output_limit` bytes per stream is dropped from the front, and
    every `env` value (see `secrets_of`) is replaced by *** in it.
    `on_start(proc)` is called once the process exists (the worker keeps it to
    kill on a hard stop).
    """
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        proc = subprocess.Popen(command, shell=True, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen_options())
    except OSError as exc:
        if cwd and not os.path.isdir(cwd):
            return Result(None, "cannot start: working directory %s does not exist" % cwd)
        return Result(None, "cannot start: %s" % (exc.strerror or exc))
    if on_start is not None:
        on_start(proc)
    secrets = secrets_of(env)
    if secrets:
        out, err = RedactedTail(output_limit, secrets), RedactedTail(output_limit, secrets)
    else:
        out, err = Tail(output_limit), Tail(output_limit)
    deadline = None if not timeout else time.monotonic() + timeout
    reader = _read_posix if POSIX else _read_threads
    timed_out = reader(proc, out, err, deadline)
    if not timed_out:
        # The pipes are done, but a command that closed or redirected its stdio may still run.
        try:
            code = proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    if timed_out:
        kill_tree(proc)
        return Result(proc.wait(), "timed out after %ss" % jobs.format_seconds(timeout), out.value(), err.value())
    return Result(code, describe_exit(code), out.value(), err.value())


def _read_posix(proc, out, err, deadline):
    """Read both pipes until EOF; True if `deadline` passed first."""
    import selectors
    # poll(2), as subprocess.communicate uses: one syscall a wait, where epoll
    # costs four more per command (create, two registrations, close).
    with selectors.PollSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        orphan_deadline = None
        while sel.get_map():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                _close_pipes(sel)
                return True
            if orphan_deadline is not None and now >= orphan_deadline:
                _close_pipes(sel)  # a background grandchild keeps them open: stop listening
                break
            wait = 0.5 if deadline is None else min(0.5, deadline - now)
            ready = sel.select(wait)
            for key, _ in ready:
                data = os.read(key.fd, READ_CHUNK)
                if data:
                    key.data.add(data)
                else:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
            # Every time round, not only when idle: a chatty grandchild must not hold the job.
            if orphan_deadline is None and proc.poll() is not None:
                orphan_deadline = time.monotonic() + ORPHAN_PIPE_GRACE_S
    return False


def _close_pipes(sel):
    for key in list(sel.get_map().values()):
        sel.unregister(key.fileobj)
        key.fileobj.close()


def _read_threads(proc, out, err, deadline):
    """Windows pipes cannot be selected: one reader thread per stream."""
    def pump(pipe, tail):
        with pipe:
            for chunk in iter(lambda: pipe.read1(READ_CHUNK) if hasattr(pipe, "read1") else pipe.read(READ_CHUNK),
                              b""):
                tail.add(chunk)
    readers = [threading.Thread(target=pump, args=(pipe, tail), daemon=True)
               for pipe, tail in ((proc.stdout, out), (proc.stderr, err))]
    for reader in readers:
        reader.start()
    try:
        proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return True
    for reader in readers:
        reader.join(ORPHAN_PIPE_GRACE_S)
    return False


# ---------------------------------------------------------------- the worker process

class Worker:
    """One worker process serving `home` with `threads` threads.

    `run()` blocks until the worker is stopped (stopfile, signal, `stop()`)
    or, with `burst`, until nothing is runnable and nothing runs.
    """

    def __init__(self, home, *, threads=None, burst=False, stop_generation=None, allow_shared_home=False):
        self.home = home
        self.db_path = qhome.ensure(home, allow_shared=allow_shared_home)
        self.host = qhome.host()
        self.host_key = qhome.host_key()  # whose process table our pid is in: others compare it before trusting it
        self.pid = os.getpid()
        self.id = "%s:%d:%s" % (self.host, self.pid, os.urandom(3).hex())
        self.burst = burst
        with Store(self.db_path) as store:
            self.settings = store.config()
        self.threads = threads or self.settings["worker-count"]
        self.started_at = time.time()
        # A stop requested after this generation stops us. `worker start --detach` passes the
        # generation it saw, so a stop issued while the child starts up is not missed.
        self.stop_generation = qhome.stop_generation(home) if stop_generation is None else stop_generation
        self._stopfile = qhome.stopfile_path(home)
        self._stopfile_seen = ()
        self._stopping = threading.Event()   # claim nothing more
        self._done = threading.Event()       # every pool thread has returned
        self._killing = False                # kill running commands and release their jobs
        self._signals = 0                    # set only by signal handlers: counted by the supervisor
        self._cond = threading.Condition()
        self._wake_gen = 0
        self._idle = 0
        self._active = self.threads          # pool threads still looping (burst ends when all are idle)
        self._procs = {}                     # job seq -> Popen, for a hard stop
        self._killed = set()                 # job seqs whose command a hard stop killed
        self._procs_lock = threading.Lock()

    # ------------------------------------------------------------ control

    def stop(self):
        """Finish running jobs, claim no more."""
        self._stopping.set()
        self._wake()

    def kill(self):
        """Kill running commands now; their jobs go back to pending without using an attempt."""
        self._killing = True
        self.stop()
        with self._procs_lock:
            procs = list(self._procs.values())
            self._killed.update(self._procs)
        for proc in procs:
            threading.Thread(target=kill_tree, args=(proc,), kwargs={"grace_s": 0.2}, daemon=True).start()

    def install_signal_handlers(self):
        """SIGINT/SIGTERM: graceful stop; a second SIGINT: hard stop. Handlers only count."""
        def handler(signum, frame):
            self._signals = self._signals + 1 if signum == signal.SIGINT else max(self._signals, 1)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def _wake(self):
        with self._cond:
            self._wake_gen += 1
            self._cond.notify_all()

    # ------------------------------------------------------------ the pool

    def run(self):
        """Serve until stopped; returns 0."""
        self._heartbeat_store = Store(self.db_path, durable=False, autocheckpoint=False)
        try:
            self._beat()
            self._recover()
            log.info("worker %s started: %d thread%s, pid %d", self.id, self.threads,
                     "" if self.threads == 1 else "s", self.pid)
            heart = threading.Thread(target=self._heartbeat_loop, name="qctl-heartbeat", daemon=True)
            heart.start()
            with ThreadPoolExecutor(self.threads, thread_name_prefix="qctl-worker") as pool:
                futures = [pool.submit(self._thread_main) for _ in range(self.threads)]
                try:
                    self._supervise(futures)
                finally:
                    self.stop()  # a supervisor that failed must not leave the pool waiting forever
            self._done.set()
            heart.join()
            for future in futures:
                future.result()  # _thread_main catches everything; this only surfaces a bug
            self._heartbeat_store.deregister(self.id)
            log.info("worker %s stopped", self.id)
        finally:
            self._heartbeat_store.close()
        return 0

    def _supervise(self, futures):
        watch = Store(self.db_path, durable=False, autocheckpoint=False)
        try:
            version = watch.data_version()
            next_due = watch.next_due()  # jobs already waiting (delay, retry backoff) wake us on time too
            last_wake = time.monotonic()
            while not all(f.done() for f in futures):
                poll = self.settings["poll-interval"]
                if self._signals == 1 and not self._stopping.is_set():
                    log.info("worker %s stopping: finishing running jobs (Ctrl-C again to kill them)", self.id)
                    self.stop()
                elif self._signals > 1 and not self._killing:
                    log.info("worker %s killing running jobs; they go back to the queue", self.id)
                    self.kill()
                if not self._stopping.is_set() and self._stop_requested():
                    log.info("worker %s stopping: stop requested", self.id)
                    self.stop()
                with self._cond:
                    idle = self._idle
                if idle and not self._stopping.is_set():
                    now = time.monotonic()
                    try:
                        changed = watch.data_version()
                        due = changed != version or (next_due is not None and time.time() >= next_due)
                        if changed != version:
                            version, next_due = changed, watch.next_due()
                        elif due:
                            next_due = None
                    except QueueError:
                        # A passing problem (disk full, say) must not end the worker: the safety
                        # wake below sends the threads to retry, and they report what fails.
                        due = False
                    if due or now - last_wake >= SAFETY_WAKE_S:
                        self._wake()
                        last_wake = now
                wait_futures(futures, timeout=poll)
        finally:
            watch.close()

    def _stop_requested(self):
        """Whether the stopfile's generation grew since we started; reads it only when it changed."""
        try:
            st = os.stat(self._stopfile)
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            signature = None
        if signature == self._stopfile_seen:
            return False
        self._stopfile_seen = signature
        return qhome.stop_generation(self.home) > self.stop_generation

    def _thread_main(self):
        try:
            store = Store(self.db_path, durable=False, autocheckpoint=False)
        except QueueError as exc:
            log.error("worker %s: a thread could not open the queue: %s", self.id, exc)
            self._thread_exit()
            return
        finish = None
        try:
            while not self._stopping.is_set():
                with self._cond:
                    generation = self._wake_gen
                try:
                    job = store.claim(self.id, time.time(), self.settings["lease-seconds"], finish=finish)
                    if finish is not None and not store.finish_recorded:
                        self._log_lost(finish)
                    finish = None
                except Exception as exc:
                    if isinstance(exc, QueueError):
                        log.error("worker %s: %s (will retry)", self.id, exc)
                    else:
                        log.exception("worker %s: error claiming a job (will retry)", self.id)
                    self._stopping.wait(1.0)
                    continue
                if job is None:
                    self._wait_for_work(generation)
                    continue
                try:
                    finish = self.step(job)
                except Exception as exc:  # a bug: fail the job rather than hold its lease forever
                    log.exception("worker %s: error running job %s", self.id, job["id"])
                    finish = ("fail", dict(job=job, worker=self.id, now=time.time(), error="worker error: %s" % exc,
                                           exit_code=None, retry_delay_s=self._backoff(job["attempts"])))
        finally:
            try:
                if finish is not None and not store.record(finish):
                    self._log_lost(finish)
            except QueueError as exc:
                log.error("worker %s: could not record a result: %s; the job will be recovered", self.id, exc)
            store.close()
            self._thread_exit()

    def _thread_exit(self):
        with self._cond:
            self._active -= 1
            self._end_burst_if_idle()

    def _log_lost(self, outcome):
        log.warning("job %s: result not recorded: its lease was lost and another worker recovered it",
                    outcome[1]["job"]["id"])

    def _wait_for_work(self, generation):
        with self._cond:
            self._idle += 1
            self._end_burst_if_idle()
            try:
                while self._wake_gen == generation and not self._stopping.is_set():
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
        """Run a claimed job; return its outcome for `Store.record` / `Store.claim(finish=...)`:
        complete, fail, or release when a hard stop killed it."""
        settings = self.settings
        timeout = job["timeout"] or settings["job-timeout"] or None
        log.info("job %s started (attempt %d/%d, run %d)", job["id"], job["attempts"], job["max_retries"] + 1,
                 job["runs"])
        started = time.monotonic()

        def track(proc):
            with self._procs_lock:
                self._procs[job["seq"]] = proc
                killing = self._killing
                if killing:
                    self._killed.add(job["seq"])
            if killing:
                kill_tree(proc, grace_s=0.2)

        try:
            result = run_command(job["command"], cwd=job["cwd"], env=job["env"] and json.loads(job["env"]),
                                 timeout=timeout,
                                 output_limit=settings["output-limit"], on_start=track)
        finally:
            with self._procs_lock:
                self._procs.pop(job["seq"], None)
        took = time.monotonic() - started
        if job["seq"] in self._killed:  # whatever it exited with: we cut it short
            log.info("job %s killed; it goes back to the queue without using an attempt", job["id"])
            return "release", {"job": job, "worker": self.id, "now": time.time()}
        common = {"job": job, "worker": self.id, "now": time.time(), "stdout": result.stdout,
                  "stderr": result.stderr}
        if result.error is None:
            log.info("job %s completed in %.2fs", job["id"], took)
            return "complete", common
        if jobs.retries_left(job["attempts"], job["max_retries"]):
            delay = self._backoff(job["attempts"])
            log.info("job %s failed: %s; retry in %ss", job["id"], result.error, jobs.format_seconds(round(delay, 2)))
        else:
            delay = 0.0
            log.info("job %s is dead after %d attempt%s: %s", job["id"], job["attempts"],
                     "" if job["attempts"] == 1 else "s", result.error)
        return "fail", dict(common, error=result.error, exit_code=result.exit_code, retry_delay_s=delay)

    # ------------------------------------------------------------ heartbeat thread

    def _heartbeat_loop(self):
        last_beat = time.monotonic()
        # Tick at least three times a lease: a lease shorter than our tick must not lapse between beats.
        while not self._done.wait(min(TICK_S, self.settings["lease-seconds"] / 3)):
            try:
                self.settings = self._heartbeat_store.config()
                if time.monotonic() - last_beat >= self.settings["lease-seconds"] / 3:
                    self._beat()
                    last_beat = time.monotonic()
                if not self._stopping.is_set():
                    self._recover()
                self._heartbeat_store.checkpoint()
            except QueueError as exc:
                log.error("worker %s heartbeat: %s (will retry)", self.id, exc)
            except Exception:  # a bug; the heartbeat must go on or our leases lapse
                log.exception("worker %s heartbeat failed (will retry)", self.id)

    def _beat(self):
        self._heartbeat_store.heartbeat(self.id, time.time(), self.settings["lease-seconds"], pid=self.pid,
                                        host=self.host, threads=self.threads, started_at=self.started_at,
                                        host_key=self.host_key)

    def _recover(self):
        """Jobs of workers whose lease expired, or that died in our process table, back to the queue."""
        store, now = self._heartbeat_store, time.time()
        dead = [w["id"] for w in store.workers(now) if not qhome.worker_alive(w["host_key"], w["pid"])]
        for job_id, state in store.recover(now, self._backoff, dead_workers=dead):
            log.info("job %s recovered from a lost worker: now %s", job_id, state)

    def _backoff(self, failures):
        return jobs.backoff_delay(failures, self.settings["backoff-base"], self.settings["backoff-max"])


def start_detached(argv, log_file):
    """Start `argv` (a worker command line) in the background; return its pid."""
    out = qhome.open_private_log(log_file)  # 0600 whatever the umask: it names every job and error
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                close_fds=True, **detach_options())
    finally:
        out.close()
    return proc.pid

