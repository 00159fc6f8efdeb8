"""Every process of one command, on Linux: find them, kill them, reap those we adopt.

A command runs in a session of its own (`runner.popen_options`), and killing
its process group used to be the whole kill. A descendant can leave both:
`setsid` starts a new session, GNU `timeout` a new process group, and once its
parent exits it is re-parented to init with nothing left to tie it to the job.
Three things keep track of it here:

- The worker is a child subreaper (`become_subreaper`, prctl
  PR_SET_CHILD_SUBREAPER): a descendant whose parent exits is re-parented to
  the worker instead of init, so whatever is left of a job hangs below one of
  the worker's children.
- Each command's environment holds TAG_VAR=<a tag of the run>, which every
  descendant inherits through fork, exec, setsid and setpgid.
- While the command runs, its Tree looks at its processes at most every
  LOOK_EVERY_S (reading only their own /proc files) and remembers each one it
  sees, by pid and start time (a pid reused since is not it).

A process belongs to the tree if it is in the shell's session or process
group, was seen in the tree before, or carries the tag; and so does everything
below it. Only processes that nothing else ties to the tree are read for the
tag: the worker's own children (where orphans land), or, without a subreaper,
every process started after the shell. A descendant that leaves the session,
clears its environment (`env -i`) and loses its parent before a look has seen
it escapes: the one hole, and it takes all three.

Killing: TERM every member, wait until they are gone or a grace has passed,
then KILL members, looking afresh every round, until a look finds none
running (one that forked between a look and its KILL is found by the next).
A command that ends on its own is killed the same way once its shell has
exited: whatever the outcome, no descendant outlives its job. As subreaper
that costs one read of our children list when nothing is left.

Reaping: orphans re-parented to the worker become its zombies when they die,
and only the worker can collect them. subprocess.Popen waits for its own
children by pid; collecting one of those first would hand it a wrong exit
status (0). So nothing here calls os.wait() or waitpid(-1): `_reap` calls
waitpid(pid, WNOHANG) only for a zombie child of ours that a look or kill tied
to a tree, checked again (zombie, our child, same start time) under a lock. A
Popen's child is never such a member: it is a shell, in a session of its own.
A zombie that nothing tied to a tree (the hole above, once it exits) stays
until the worker exits.

After a kill -9 of the worker its commands' trees lose their subreaper; the
next worker on the host calls `kill_lost` with what the lost one recorded: the
tag, kept by the claim before the command started, and once the run had lasted
a tick the shell's pid (its session and group id) and start time. It KILLs
every process carrying the tag and, when known, that session and group. A
descendant that cleared its environment escapes if it left the session too,
or if the run was lost within its first tick.

Only Linux has /proc and subreapers: elsewhere `runner.kill_tree` kills the
process group (macOS) or runs taskkill /T (Windows), as before.
"""

import os
import signal
import sys
import threading
import time
from typing import NamedTuple

LINUX = sys.platform.startswith("linux")
SUPPORTED = LINUX and os.path.exists("/proc/self/stat")
TAG_VAR = "QUEUECTL_RUN_TAG"  # set in every command's environment to its run's tag
LOOK_EVERY_S = 0.5            # a running command's tree is looked at at most this often
KILL_FOR_S = 5.0              # KILL what a fresh look finds for this long at most (a process
                              # stuck in the kernel, state D, can outlast it)
SETTLE_S = 0.01               # between signals and the look that checks them
PR_SET_CHILD_SUBREAPER = 36   # <linux/prctl.h>
# Kernels built without CONFIG_PROC_CHILDREN cannot list a process's children: read every process instead.
_HAS_CHILDREN = SUPPORTED and os.path.exists("/proc/self/task/%d/children" % os.getpid())

# Start times are in clock ticks since boot (CLOCK_BOOTTIME); see `born_ticks`.
_CLK_TCK = os.sysconf("SC_CLK_TCK") if SUPPORTED else 100
_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)
PREDICT_CHECKS = 8            # start times taken from the clock are read from /proc too this many times first

_subreaper = False
_reap_lock = threading.Lock()
_checks_left = PREDICT_CHECKS  # None once a predicted start time was wrong: read them all from then on
_checks_lock = threading.Lock()


class _Stat(NamedTuple):
    ppid: int
    pgrp: int
    sid: int
    start: int   # clock ticks after boot: with the pid, names one process for good
    dead: bool   # a zombie: exited, not yet reaped


def become_subreaper():
    """Make this process the parent of its orphaned descendants (Linux 3.4+); True if it is,
    None where this module does nothing (not Linux, or no /proc)."""
    global _subreaper
    if not SUPPORTED:
        return None
    if not _subreaper:
        try:
            import ctypes  # here: only a worker pays for importing it
            _subreaper = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        except (OSError, AttributeError):
            pass
    return _subreaper


class Tree:
    """The processes of one command: its shell `pid` and all that came from it (see the module docstring).

    `lost`: the tree of a run whose worker died, which is not our business to
    reap and whose orphans went elsewhere: look for the tag in every process.
    """

    def __init__(self, pid, tag, *, start=None, lost=False, born=None):
        self.pid = pid
        self.tag = tag
        self.start = _start_of(pid, born) if start is None else start
        self.lost = lost
        self._entry = b"\0%s=%s\0" % (TAG_VAR.encode(), tag.encode())
        self._seen = {}   # pid -> start time of the members running at the last look or kill
        self._lock = threading.Lock()
        self._next_look = time.monotonic() + LOOK_EVERY_S

    def look(self):
        """Remember the processes now in the tree; does nothing if the last look was under LOOK_EVERY_S ago."""
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + LOOK_EVERY_S
        found = self._walk() if _HAS_CHILDREN else self._scan()
        with self._lock:
            # Every member seen before that still runs is in `found` (the walk starts from them):
            # replacing keeps the memory to what runs now, however many processes a long job starts.
            self._seen = found

    def kill(self, grace_s):
        """TERM every member; once they are gone or `grace_s` has passed, KILL until none is left.

        Returns how many processes were still there to KILL.
        """
        if not LINUX:
            return 0
        victims = self._scan()
        _send(victims, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while victims and time.monotonic() < deadline:
            time.sleep(SETTLE_S)
            victims = {pid: start for pid, start in victims.items() if _running(pid, start)}
        return self.kill_now()

    def kill_now(self):
        """KILL every member, looking afresh each round, until a look finds none; returns how many."""
        if not LINUX:
            return 0
        killed = set()
        deadline = time.monotonic() + KILL_FOR_S
        while True:
            victims = self._scan()
            if not victims or time.monotonic() >= deadline:
                return len(killed)
            _send(victims, signal.SIGKILL)
            killed.update(victims)
            time.sleep(SETTLE_S)

    def finish(self, grace_s):
        """Once the shell has exited (any outcome): kill what is left of the tree, as `kill` does."""
        if not LINUX:
            return 0
        children = _our_children() if _subreaper else None
        if children is not None:
            # As subreaper, all that is left hangs below a child of ours: usually there is none.
            children.discard(self.pid)
            if not any(self._adopted(pid) for pid in children):
                return 0
        return self.kill(grace_s)

    # ------------------------------------------------------------ finding members

    def _scan(self):
        """pid -> start time of every running member, from one read of every process.

        Remembers them (in place of what was remembered: those still running are among
        them), and reaps the members that are zombies of ours.
        """
        table = _table()
        me = os.getpid()
        leader = table.get(self.pid)
        # While the shell or anything of its session lives, its pid is nobody else's session or
        # group id. Once it belongs to another process (another start time), it means nothing.
        ours = leader is None or leader.start == self.start
        anywhere = self.lost or not _subreaper
        with self._lock:
            seen = dict(self._seen)
        below = {}
        for pid, info in table.items():
            below.setdefault(info.ppid, []).append(pid)
        todo = [pid for pid, info in table.items()
                if (ours and self.pid in (info.sid, info.pgrp)) or seen.get(pid) == info.start
                or (not info.dead and info.start >= self.start and (anywhere or info.ppid == me)
                    and _tagged(pid, self._entry))]
        members = {}
        while todo:
            pid = todo.pop()
            if pid != me and pid not in members:
                members[pid] = table[pid]
                todo += below.get(pid, ())
        running = {pid: info.start for pid, info in members.items() if not info.dead}
        with self._lock:
            self._seen = running
        for pid, info in members.items():
            if info.dead and info.ppid == me and pid != self.pid:  # the shell is its Popen's to reap
                _reap(pid, info.start)
        return running

    def _walk(self):
        """pid -> start time of the running processes below the shell and below every member seen
        before, reading only their own /proc files (a look, every LOOK_EVERY_S, must be cheap)."""
        with self._lock:
            todo = [(self.pid, self.start)] + list(self._seen.items())
        found = {}
        while todo:
            pid, start = todo.pop()
            if pid in found:
                continue
            info = _stat(pid)
            if info is None or info.dead or (start is not None and info.start != start):
                continue
            found[pid] = info.start
            todo += [(child, None) for child in _children(pid)]
        return found

    def _adopted(self, pid):
        """Whether our child `pid` is a member, from its own /proc files."""
        info = _stat(pid)
        if info is None:
            return False
        with self._lock:
            seen = self._seen.get(pid)
        return self.pid in (info.sid, info.pgrp) or seen == info.start or (
            not info.dead and info.start >= self.start and _tagged(pid, self._entry))


def born_ticks():
    """Now, in the unit and clock of a process's start time: taken just before and just after
    starting a process, they give its `Tree` the start time without reading /proc (`born`)."""
    if _BOOTTIME is None:
        return None
    return time.clock_gettime_ns(_BOOTTIME) * _CLK_TCK // 1000000000


def _start_of(pid, born):
    """`pid`'s start time (0 if it is gone): from `born` (born_ticks() before and after it started)
    when both fall in the same tick, else from /proc.

    Reading /proc/PID/stat of a process that has just been started waits for its exec: ~120 us,
    on every job. The kernel stamps a new process with CLOCK_BOOTTIME, and shows it in ticks,
    rounded down: two readings in one tick around its start name that tick. The first few such
    answers are checked against /proc, and one wrong answer ends predicting for good.
    """
    global _checks_left
    checks_left = _checks_left  # once: another thread may set it to None meanwhile
    predicted = born is not None and born[0] is not None and born[0] == born[1] and checks_left is not None
    if predicted and checks_left <= 0:
        return born[0]
    info = _stat(pid)
    start = info.start if info else 0
    if predicted and info is not None:
        with _checks_lock:
            if _checks_left is not None:
                _checks_left = _checks_left - 1 if start == born[0] else None
    return start


def kill_lost(pid, start, tag):
    """KILL what is left of a run whose worker died: every process carrying `tag`, the session and
    process group of its shell if known (`pid`, started at `start`), and all below them. Returns how
    many. Without a start time every process is read for the tag."""
    if not SUPPORTED:
        return 0
    return Tree(pid, tag, start=start or 0, lost=True).kill_now()


# ---------------------------------------------------------------- /proc

def _read(path, size=4096):
    """The bytes of a /proc file, or None if it (or its process) is gone or not ours to read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, size)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)


def _stat(pid):
    """`pid`'s _Stat from /proc/PID/stat, or None once it is gone."""
    data = _read("/proc/%d/stat" % pid)
    if not data:
        return None
    try:
        # The command name (field 2) is in parentheses and may hold anything, ")" too: split after the last one.
        fields = data[data.rindex(b")") + 2:].split()
        return _Stat(int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]), fields[0] in (b"Z", b"X"))
    except (ValueError, IndexError):
        return None


def _table():
    """pid -> _Stat of every process."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = _stat(int(name))
            if info is not None:
                table[int(name)] = info
    return table


def _tagged(pid, entry):
    """Whether `pid`'s environment holds `entry` (b"\\0NAME=VALUE\\0"); False if it cannot be read
    (a zombie has none; another user's process is not ours to read)."""
    data = _read("/proc/%d/environ" % pid, 65536)
    return bool(data) and entry in b"\0" + data


def _children(pid, tids=None):
    """The children of every thread of `pid` (or of the threads `tids`)."""
    if tids is None:
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except OSError:
            return []
    children = []
    for tid in tids:
        data = _read("/proc/%d/task/%s/children" % (pid, tid))
        if data:
            children += [int(child) for child in data.split()]
    return children


def _our_children():
    """Our children as far as orphans go, or None if the kernel cannot list them: those of the main
    thread, where Linux 3.19 and later re-parent orphans, and of the calling thread, which started
    the command (older kernels re-parent its orphans to it)."""
    if not _HAS_CHILDREN:
        return None
    me = os.getpid()
    return set(_children(me, {str(me), str(threading.get_native_id())}))


def _running(pid, start):
    info = _stat(pid)
    return info is not None and not info.dead and info.start == start


def _send(victims, sig):
    """Signal every pid of `victims`; those gone meanwhile are skipped (their start time was checked
    by the look that found them, microseconds ago: pids are handed out in turn, not reused at once)."""
    if not LINUX:
        return
    for pid in victims:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reap(pid, start):
    """Collect a zombie child of ours that a tree found; see the module docstring for why only those."""
    if not LINUX:
        return
    with _reap_lock:
        info = _stat(pid)
        if info is None or not info.dead or info.start != start or info.ppid != os.getpid():
            return
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
