"""Running one command: no queue knowledge here.

`run_command` starts a command through the platform shell in its own session
(POSIX) or process group (Windows), keeps only the tail of each output stream
(with env secrets masked), and kills the whole process tree on timeout.
`start_detached` starts a worker that outlives its terminal.

Which processes make up "the whole tree" depends on the platform. On Linux it
is every descendant, wherever it moved (its own session or process group), and
what a command leaves running when it ends is killed too: `qctl/proctree.py`
finds them, with the tag each command gets in its environment (TAG_VAR) and a
worker that adopts orphans (`adopt_orphans`). On macOS it is the command's
process group, on a timeout or a hard stop only; on Windows, what taskkill /T
finds.
"""

import math
import os
import re
import signal
import subprocess
import threading
import time

from . import home as qhome
from . import proctree
from .proctree import TAG_VAR
from .times import format_seconds

POSIX = os.name == "posix"
KILL_GRACE_S = 2.0         # between TERM and KILL of a timed-out job's process tree
ORPHAN_PIPE_GRACE_S = 1.0  # read this long after the shell exits if a grandchild holds its pipes
READ_CHUNK = 65536
SECRET_MIN_CHARS = 4       # env values this long or longer are masked in stored output
NOT_FOUND_EXIT = 9009 if not POSIX else 127
# Win32 process creation flags; subprocess defines them only on Windows, and the
# Windows branches are built (and tested) on every platform.
CREATE_NEW_PROCESS_GROUP = 0x00000200
DETACHED_PROCESS = 0x00000008
CREATE_NO_WINDOW = 0x08000000


class Kept(bytes):
    """The tail kept of one output stream, which knows how long the whole stream was: `total`
    bytes (after masking), of which these are the last. The store keeps `total` beside the tail,
    so `logs --follow` can tell what it has not shown yet, and how much was not kept."""

    def __new__(cls, data, total):
        kept = super().__new__(cls, data)
        kept.total = total
        return kept


class Tail:
    """The last `limit` bytes written to it, in bounded memory.

    The thread reading the pipe adds; another may look at the same time (`progress`): a lock
    keeps `total` and the bytes in step, held only to copy at most 2 * limit + READ_CHUNK bytes.
    """

    def __init__(self, limit):
        self.limit = limit
        self.buf = bytearray()
        self.received = 0  # bytes read from the pipe (a cheap way to see that something came)
        self.total = 0     # bytes of the stream as kept (after masking), dropped ones included
        self._lock = threading.Lock()

    def add(self, data):
        with self._lock:
            self.received += len(data)
            self._take(data)

    def _take(self, data):
        self.total += len(data)
        self.buf += data
        if len(self.buf) > 2 * self.limit + READ_CHUNK:
            del self.buf[:-self.limit or len(self.buf)]

    def _settle(self, final):
        """Decide what can be decided of what was added (nothing to do here; see RedactedTail)."""

    def _last(self):
        return bytes(self.buf[-self.limit:]) if self.limit else b""

    def value(self):
        """The tail, once the stream has ended: a `Kept`."""
        with self._lock:
            self._settle(final=True)
            return Kept(self._last(), self.total)

    def progress(self):
        """(total, tail) while the stream still runs: `total` bytes so far, of which `tail` holds
        the last `limit`. Later calls (and `value`) only ever add to that stream."""
        with self._lock:
            self._settle(final=False)
            return self.total, self._last()


class RedactedTail(Tail):
    """A Tail that masks every secret before keeping it: each stretch of output that
    occurrences of secrets cover (overlapping or adjacent ones together) becomes one `***`.

    A match is decided only once no longer secret can still be arriving there:
    the last len(longest secret) - 1 bytes wait for the next read, so a secret
    split across two reads is still caught (and not cut short by a shorter
    secret that is its prefix). The bytes just before those are kept too,
    already stored, so that a secret that starts inside the last mask and ends
    after it extends that mask instead of leaking its end. The tail is cut only
    after redaction: no part of a secret survives at its front either.
    """

    MASK = b"***"
    SETTLE_SCAN_MAX = 1024  # `progress` looks for a secret's start in at most this many held bytes

    def __init__(self, limit, secrets):
        super().__init__(limit)
        longest_first = sorted(set(secrets), key=len, reverse=True)
        # Longest first: a match is the longest secret that starts where it does.
        self.pattern = re.compile(b"|".join(re.escape(s) for s in longest_first))
        self.hold = len(longest_first[0]) - 1
        self.by_first = {}   # first byte -> the secrets starting with it (see _safe_cut)
        for secret in longest_first:
            self.by_first.setdefault(secret[0], []).append(secret)
        self.pending = b""   # not decided yet
        self.context = b""   # the `hold` bytes before `pending`, already decided
        self.masked = False  # whether what was decided ends with a mask

    def add(self, data):
        with self._lock:
            self.received += len(data)
            data = self.context + self.pending + data
            self._decide(data, len(data) - self.hold)  # a match from there on may be incomplete

    def _settle(self, final):
        if self.pending:
            data = self.context + self.pending
            self._decide(data, len(data) if final else self._safe_cut(data))

    def _safe_cut(self, data):
        """Where undecided bytes must start: from the first place where what has arrived could still
        grow into a secret (a proper prefix of one; a place inside `context`, the last mask, holds
        all of `pending`). A command that prints a line and waits is then shown that line at once,
        where `add` alone would hold its last len(longest secret) - 1 bytes until more comes. Every
        match starting before that place is final: the bytes after it cannot start the same secret,
        or a longer one. Past SETTLE_SCAN_MAX held bytes (a very long secret) it is where `add` put it."""
        base, lo = len(self.context), max(0, len(data) - self.hold)
        if len(data) - lo > self.SETTLE_SCAN_MAX:
            return len(data) - self.hold
        for at in range(lo, len(data)):
            rest = data[at:]
            if any(len(s) > len(rest) and s.startswith(rest) for s in self.by_first.get(data[at], ())):
                return max(at, base)
        return len(data)

    def _decide(self, data, cut):
        """Keep data[len(context):cut] masked; what is after `cut` waits (see the class docstring)."""
        base = len(self.context)  # data[:base] was decided before
        kept, done, masked = [], base, self.masked
        for start, end in self._covered(data):
            if end <= base:
                continue
            if start >= cut:
                break
            if start > done:
                kept.append(data[done:start])
                masked = False
            if not masked:  # else it extends the mask before it: one *** for the whole stretch
                kept.append(self.MASK)
            done, masked = end, True
        if done < cut:
            kept.append(data[done:cut])
            done, masked = cut, False
        self.pending, self.context, self.masked = data[done:], data[max(0, done - self.hold):done], masked
        self._take(b"".join(kept))

    def _covered(self, data):
        """(start, end) of each stretch of `data` that secrets cover, in order; overlapping and
        adjacent matches make one stretch."""
        # Searching again one byte after each match's start, not after its end, finds the matches
        # that overlap it; output without secrets is still one search at C speed.
        search = self.pattern.search
        start = end = None
        match = search(data)
        while match is not None:
            at, to = match.span()
            if end is not None and at <= end:
                end = max(end, to)
            else:
                if end is not None:
                    yield start, end
                start, end = at, to
            match = search(data, at + 1)
        if end is not None:
            yield start, end


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


def adopt_orphans():
    """Make this process the parent of its commands' orphaned descendants (Linux), so that
    none slips out of a kill; the worker calls it once. True if it is, False if Linux refused,
    None where there is nothing to adopt them with (not Linux)."""
    return proctree.become_subreaper()


def run_identity(proc):
    """What another process needs to kill `proc`'s tree once this one has died (a dict for
    `kill_lost`), or None where that is not possible (not Linux)."""
    tree = getattr(proc, "tree", None)
    if tree is None:
        return None
    return {"pid": tree.pid, "start": tree.start, "tag": tree.tag}


def kill_lost(identity):
    """KILL what is left of a command whose worker died, from its tag and, if known, the rest of its
    `run_identity`; returns how many processes."""
    return proctree.kill_lost(identity.get("pid"), identity.get("start"), identity["tag"])


def output_progress(proc, since=(0, 0)):
    """What a command started by `run_command` has printed so far, for another thread than the one
    running it: (received, ((total, tail) of stdout, (total, tail) of stderr)), where `received`
    counts the bytes read from each pipe and each (total, tail) is as `Tail.progress` gives it.
    None when nothing was read since `received` was `since`: then nothing is copied."""
    tails = getattr(proc, "output", None)
    if tails is None:
        return None
    received = tuple(tail.received for tail in tails)
    if received == tuple(since):
        return None
    return received, tuple(tail.progress() for tail in tails)


def kill_tree(proc, *, grace_s=KILL_GRACE_S):
    """TERM the command and all it started, then KILL what is left after `grace_s`.

    Linux: every process of its tree, wherever it moved (qctl/proctree.py).
    macOS: its process group. Windows: taskkill /T /F.
    """
    if not POSIX:
        try:
            subprocess.run(kill_tree_argv(proc.pid), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           creationflags=CREATE_NO_WINDOW)
        except OSError:  # no taskkill (a stripped-down Windows): the shell at least
            proc.kill()
        return
    tree = getattr(proc, "tree", None)
    if tree is not None:
        tree.kill(grace_s)
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


def child_env(env, tag):
    """The command's environment: the worker's, with `env` added and TAG_VAR set to `tag`.

    POSIX: as bytes, copied from the bytes os.environ keeps (`_data`, which Popen would
    otherwise rebuild by decoding, then encoding again, every variable: ~25 us a command,
    a few percent of a `true` job). The same bytes Popen would send; `os.environb` if a
    Python ever lacks `_data`.
    """
    if not POSIX:
        full = dict(os.environ)
        full.update(env or {})
        full[TAG_VAR] = tag
        return full
    data = getattr(os.environ, "_data", None)
    full = dict(data) if isinstance(data, dict) else dict(os.environb)
    for key, value in (env or {}).items():
        full[os.fsencode(key)] = os.fsencode(value)
    full[_TAG_KEY] = tag.encode()
    return full


_TAG_KEY = TAG_VAR.encode()


def run_command(command, *, cwd=None, env=None, timeout=None, output_limit=65536, on_start=None, tag=None,
                stdin=None, mask_env=True):
    """Run `command` through the platform shell; return a Result.

    Output beyond `output_limit` bytes per stream is dropped from the front, and
    every `env` value (see `secrets_of`) is replaced by *** in it. The Result's
    stdout and stderr are `Kept` tails (they know how long the stream was); while
    the command runs, `output_progress(proc)` tells another thread how far it is.
    `on_start(proc)` is called once the process exists (the worker keeps it to
    kill on a hard stop); the timeout runs from before it is called.
    On Linux, what the command leaves running when it ends is killed (see the
    module docstring). `tag` (default: a random one) is set as TAG_VAR in the
    command's environment. `stdin` (bytes) is what the command reads (from a
    temporary file: a command that never reads it cannot block us); else it
    reads nothing. `mask_env=False`: the `env` values are no secrets.
    """
    tag = tag or os.urandom(8).hex()
    source = subprocess.DEVNULL
    try:
        if stdin is not None:
            import tempfile
            source = tempfile.TemporaryFile()
            source.write(stdin)
            source.seek(0)
        born = proctree.born_ticks() if proctree.SUPPORTED else None
        proc = subprocess.Popen(command, shell=True, cwd=cwd, env=child_env(env, tag), stdin=source,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen_options())
    except OSError as exc:
        if cwd and not os.path.isdir(cwd):
            return Result(None, "cannot start: working directory %s does not exist" % cwd)
        return Result(None, "cannot start: %s" % (exc.strerror or exc))
    finally:
        if stdin is not None and source is not subprocess.DEVNULL:
            source.close()  # the command has its own copy of the descriptor
    deadline = None if not timeout else time.monotonic() + timeout
    proc.tree = proctree.Tree(proc.pid, tag, born=(born, proctree.born_ticks())) if proctree.SUPPORTED else None
    secrets = secrets_of(env) if mask_env else ()
    if secrets:
        out, err = RedactedTail(output_limit, secrets), RedactedTail(output_limit, secrets)
    else:
        out, err = Tail(output_limit), Tail(output_limit)
    proc.output = (out, err)  # for `output_progress`, from another thread while this one reads the pipes
    try:
        if on_start is not None:
            on_start(proc)
        code, timed_out = _wait_for(proc, out, err, deadline)
        if timed_out:
            kill_tree(proc)
            code = proc.wait()
    except BaseException:
        kill_tree(proc, grace_s=0)  # a run cut short by a bug leaves nothing running either
        proc.wait()
        raise
    if proc.tree is not None:
        proc.tree.finish(KILL_GRACE_S)
    error = "timed out after %ss" % format_seconds(timeout) if timed_out else describe_exit(code)
    return Result(code, error, out.value(), err.value())


def _wait_for(proc, out, err, deadline):
    """Read both pipes to EOF, then wait for the shell: (exit code, whether `deadline` passed first)."""
    reader = _read_posix if POSIX else _read_threads
    if reader(proc, out, err, deadline):
        return None, True
    # The pipes are done, but a command that closed or redirected its stdio may still run.
    tree = getattr(proc, "tree", None)
    if tree is not None and proc.poll() is None and not _wait_looking(proc, tree, deadline):
        return None, True
    try:
        return proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic())), False
    except subprocess.TimeoutExpired:
        return None, True


def _wait_looking(proc, tree, deadline):
    """Wait for the shell to exit, looking at its tree meanwhile; False if `deadline` passed first.

    Through a pidfd, which poll() wakes on the moment the shell exits (Popen.wait with a
    timeout polls, half a millisecond late at best: on every run that ends). Without one
    (Python 3.8, Linux before 5.3) it returns at once, and the caller's wait goes without looks.
    """
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return True
    try:
        import select
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            wait = proctree.LOOK_EVERY_S
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return False
            if poller.poll(wait * 1000):
                return True
            tree.look()
    finally:
        os.close(fd)


def _read_posix(proc, out, err, deadline):
    """Read both pipes until EOF; True if `deadline` passed first."""
    import select
    # poll(2), as subprocess.communicate uses, but without the selectors layer (its keys and
    # registrations cost ~10 us a command): one syscall a wait, where epoll costs four more.
    tree = getattr(proc, "tree", None)
    pipes = {proc.stdout.fileno(): (proc.stdout, out), proc.stderr.fileno(): (proc.stderr, err)}
    poller = select.poll()
    for fd in pipes:
        poller.register(fd, select.POLLIN)
    orphan_deadline = None
    try:
        while pipes:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return True
            if orphan_deadline is not None and now >= orphan_deadline:
                break  # a background grandchild keeps them open: stop listening
            wait = 0.5 if deadline is None else min(0.5, deadline - now)
            for fd, _ in poller.poll(math.ceil(wait * 1000)):
                data = os.read(fd, READ_CHUNK)
                if data:
                    pipes[fd][1].add(data)
                else:
                    poller.unregister(fd)
                    pipes.pop(fd)[0].close()
            # Every time round, not only when idle: a chatty grandchild must not hold the job.
            if orphan_deadline is None and proc.poll() is not None:
                orphan_deadline = time.monotonic() + ORPHAN_PIPE_GRACE_S
            if tree is not None:
                tree.look()
    finally:
        for pipe, _ in pipes.values():
            pipe.close()
    return False


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


def start_detached(argv, log_file):
    """Start `argv` (a worker command line) in the background; return its pid."""
    out = qhome.open_private_log(log_file)  # 0600 whatever the umask: it names every job and error
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                close_fds=True, **detach_options())
    finally:
        out.close()
    return proc.pid

