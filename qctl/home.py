"""The data directory ("home"): where it is, how it is protected, the stopfile, and
which workers' pids we may judge (host identity).

The stop protocol lives here in three small functions (request, read, and the
generation a worker compares against), like rq's suspension module.
"""

import os
import stat
import sys

from .errors import QueueError, StoreError

DB_NAME = "queue.db"
STOPFILE_NAME = "stop"
LOG_NAME = "worker.log"
POSIX = os.name == "posix"


def resolve(home=None):
    """`--home` > $QUEUECTL_HOME > ~/.queuectl, as an absolute path."""
    chosen = home or os.environ.get("QUEUECTL_HOME") or os.path.join(os.path.expanduser("~"), ".queuectl")
    try:
        return os.path.abspath(chosen)
    except OSError as exc:  # a relative home, and the working directory was deleted
        raise StoreError("cannot find the queuectl home %s: %s" % (chosen, exc.strerror or exc)) from None


DB_ENV = "QUEUECTL_DB"


def database(home, db=None, *, allow_shared=False):
    """Where the queue is: `db` (--db) > $QUEUECTL_DB > the SQLite file in `home`. A PostgreSQL URL
    is returned as it is (the home is still made: it holds a worker's log and pulse files); else
    `ensure(home)`'s database path."""
    chosen = db or os.environ.get(DB_ENV)
    if chosen:
        from .db import is_url
        if not is_url(chosen):
            # Not echoed: it may hold a password.
            raise StoreError("--db / %s is not a postgresql:// URL: they name a PostgreSQL database (a SQLite "
                             "queue is chosen with --home)" % DB_ENV)
        ensure(home, allow_shared=allow_shared, database=False)
        return chosen
    return ensure(home, allow_shared=allow_shared)


def ensure(home, *, allow_shared=False, database=True):
    """Create the home (0700) and, with `database`, an empty database file (0600) if missing;
    return the database path.

    Every command opens the store through here, so none can forget the check:
    unless `allow_shared`, a home or database that another user owns, or
    group or others can write (they could run commands as us), is refused
    before anything is written to it. POSIX only: Windows homes live in the
    user's profile, protected by its ACL. A symlink is judged by its target:
    a queue.db linked to another user's file is theirs.
    """
    try:
        make_private_dirs(home)
    except OSError as exc:
        raise StoreError("cannot create the queuectl home %s: %s" % (home, exc.strerror or exc)) from None
    if not os.path.isdir(home):
        raise StoreError("cannot use %s as the queuectl home: it is not a directory" % home)
    if not allow_shared:
        _refuse_if_shared(home)
    path = os.path.join(home, DB_NAME)
    if not database:
        return path
    if not os.path.exists(path):
        # Create it 0600 before SQLite does (with the umask's 0644): its -wal and
        # -shm files take the database file's mode.
        try:
            os.close(_create_private(path, os.O_WRONLY | os.O_EXCL))
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError("cannot create the database %s: %s" % (path, exc.strerror or exc)) from None
    if not allow_shared:
        _refuse_if_shared(path)
    return path


def make_private_dirs(path):
    """os.makedirs, but every folder made is 0700 whatever the umask.

    makedirs gives the parents it creates 0777 less the umask (so 0777 under
    umask 000), and mode bits are masked by the umask anyway: each level is
    made here and chmod-ed. Folders that exist already are left as they are.
    """
    head, tail = os.path.split(path)
    if not tail:  # a trailing separator
        head, tail = os.path.split(head)
    if head and tail and not os.path.exists(head):
        make_private_dirs(head)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:  # a file there is reported by the caller: "not a directory"
        return
    except OSError:
        if os.path.isdir(path):  # there already (Windows may say so with another error): not ours to chmod
            return
        raise
    if POSIX:
        os.chmod(path, 0o700)


def _create_private(path, flags):
    """os.open(path, flags | O_CREAT) with mode 0600 whatever the umask; returns the fd.

    The fchmod also tightens a file that existed already (a stale temp file).
    """
    fd = os.open(path, flags | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o600)
    if POSIX:
        try:
            os.fchmod(fd, 0o600)
        except BaseException:
            os.close(fd)
            raise
    return fd


def open_private_log(path):
    """The worker log, opened to append (binary), created 0600 whatever the umask."""
    try:
        return os.fdopen(_create_private(path, os.O_WRONLY | os.O_APPEND), "ab")
    except OSError as exc:
        raise StoreError("cannot open the worker log %s: %s" % (path, exc.strerror or exc)) from None


def sharing_problems(home):
    """What `ensure` would refuse about `home` and its database, as messages (for `check`)."""
    problems = []
    for path in (home, os.path.join(home, DB_NAME)):
        try:
            _refuse_if_shared(path)
        except QueueError as exc:
            problems.append(str(exc))
    return problems


def _refuse_if_shared(path):
    if not POSIX:
        return
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            # SQLite would create the target through the link, with its own mode.
            raise QueueError("%s is a symlink to %s, which does not exist: remove the link or create its "
                             "target" % (path, os.path.realpath(path))) from None
        return
    except OSError as exc:
        raise StoreError("cannot check the permissions of %s: %s" % (path, exc.strerror or exc)) from None
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.geteuid():
        # Its owner can always chmod it and write jobs: same danger as a writable mode.
        raise QueueError(
            "%s belongs to another user (uid %d): they could run commands as you. Use a home of "
            "your own (--home or QUEUECTL_HOME), or run queuectl --allow-shared-home COMMAND"
            % (_described(path), info.st_uid))
    if mode & 0o022:
        raise QueueError(
            "%s is writable by %s (mode %03o): anyone who can write the queue can run commands "
            "as you. Fix it with: chmod go-w %s (or run queuectl --allow-shared-home COMMAND)"
            % (_described(path), "group and others" if mode & 0o022 == 0o022 else ("group" if mode & 0o020 else "others"),
               mode, path))


def _described(path):
    """The path, and where it leads when it is a symlink."""
    return "%s (a link to %s)" % (path, os.path.realpath(path)) if os.path.islink(path) else path


# ---------------------------------------------------------------- stop protocol

def stopfile_path(home):
    return os.path.join(home, STOPFILE_NAME)


def stop_generation(home):
    """The generation the stopfile holds (0 when there is none)."""
    try:
        with open(stopfile_path(home), encoding="ascii") as fh:
            return int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def request_stop(home):
    """Ask every worker running now to stop: bump the stopfile's generation.

    A worker remembers the generation it started under and stops once the file
    holds a larger one, so a worker started after this call is not affected.
    Written to a temporary file (0600) and renamed, so a reader never sees half
    of it; on any failure the temporary file is removed. Then the workers are
    poked (`wake.poke`), so they read it now rather than at their next look.
    """
    generation = stop_generation(home) + 1
    path = stopfile_path(home)
    if os.path.isdir(path):
        raise StoreError("cannot write the stopfile %s: it is a directory (remove it, then stop the workers "
                         "again)" % path)
    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        fd = _create_private(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, b"%d\n" % generation)
        finally:
            os.close(fd)  # before the rename: Windows cannot rename an open file
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise StoreError("cannot write the stopfile %s: %s" % (path, exc.strerror or exc)) from None
        raise
    from . import wake  # here: wake imports this module
    wake.poke(home)
    return generation


def log_path(home):
    return os.path.join(home, LOG_NAME)


# ---------------------------------------------------------------- worker liveness

def host():
    """This machine's name, as workers register themselves.

    Asked for, not computed at import: importing socket would cost every
    command about 2 ms of start-up, and only worker liveness needs it.
    """
    import socket
    return socket.gethostname()


def pid_alive(pid):
    """Whether a process with this pid exists here (POSIX; elsewhere assume it does)."""
    if not POSIX:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_alive(key, pid):
    """False for a worker whose process we can see is gone; True otherwise (its lease decides).

    We can see it only when it registered our `host_key()`: the same boot and
    the same PID namespace. A same-named host is not enough: a container
    sharing the hostname has its own process table, where our pids do not
    exist. An older worker's row has no key (None): unsure, so alive.
    """
    mine = host_key()
    return key is None or mine is None or key != mine or pid_alive(pid)


_host_key = (None, None)  # (pid that computed it, key): a forked child in another namespace recomputes


def host_key():
    """What makes pids comparable: equal keys mean the same process table.

    Linux: the boot id and the PID namespace (its inode), so containers that
    share a hostname (or a kernel) still differ. macOS has no PID namespaces:
    the hostname and boot time. Elsewhere None: unsure, and liveness falls
    back to leases. Computed once per process.
    """
    global _host_key
    pid = os.getpid()
    if _host_key[0] != pid:
        _host_key = (pid, _compute_host_key())
    return _host_key[1]


def _compute_host_key():
    try:
        if sys.platform.startswith("linux"):
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
                boot = fh.read().strip()
            ns = os.stat("/proc/self/ns/pid")
            return "linux:%s:pidns:%d:%d" % (boot, ns.st_dev, ns.st_ino) if boot else None
        if sys.platform == "darwin":
            booted = _darwin_boot_time()
            return None if booted is None else "darwin:%s:boot:%s" % (host(), booted)
    except (OSError, ValueError):
        pass
    return None


def _darwin_boot_time():
    """sysctl kern.boottime as "seconds.microseconds", or None (through libc: no subprocess)."""
    try:
        import ctypes
        import struct
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(16)  # struct timeval: int64 tv_sec, int32 tv_usec, padding
        size = ctypes.c_size_t(len(buf))
        if libc.sysctlbyname(b"kern.boottime", buf, ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
            return None
        seconds, micros = struct.unpack_from("=qi", buf.raw)
        return "%d.%06d" % (seconds, micros) if seconds > 0 else None
    except Exception:  # no ctypes, no such sysctl: unsure
        return None


# ---------------------------------------------------------------- the pulse: liveness no database lock can block

PULSE_DIR = "pulse"
PULSE_MAX_S = 1.0  # a worker pulses this often, or four times a lease if that is more often


def pulse_interval(lease_s):
    return min(PULSE_MAX_S, lease_s / 4)


def pulse_path(home, worker_id):
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in worker_id)
    return os.path.join(home, PULSE_DIR, safe)


def pulse(home, worker_id):
    """Touch the worker's pulse file (creating it 0600): "this process is alive and serving".

    Leases live in the database, and a transaction that holds SQLite's lock
    (a huge enqueue --file, a frozen process) blocks their renewal. The pulse
    is a file's mtime, which no database lock can hold back: a lease that
    lapsed while its owner still pulses was a stall, not a lost worker.
    """
    path = pulse_path(home, worker_id)
    try:
        try:
            os.utime(path)
        except FileNotFoundError:
            make_private_dirs(os.path.dirname(path))
            os.close(_create_private(path, os.O_WRONLY))
    except OSError as exc:
        raise StoreError("cannot touch the pulse file %s: %s" % (path, exc.strerror or exc)) from None


def pulse_mtime(home, worker_id):
    """When the worker last pulsed (epoch seconds), or None if it never did (or its file is gone)."""
    try:
        return os.stat(pulse_path(home, worker_id)).st_mtime
    except OSError:
        return None


def forget_pulse(home, worker_id):
    try:
        os.remove(pulse_path(home, worker_id))
    except OSError:
        pass
