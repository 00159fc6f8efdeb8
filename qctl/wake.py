"""Waking idle workers: a datagram poked at each worker's socket after a commit that makes work.

Each worker process binds one Unix datagram socket in `HOME/wake/` (the folder
0700, the socket 0600) and its supervisor sleeps on it (`Waker.wait`). A
process that has just committed work (the store, after `enqueue`, `retry`,
`edit`, `set_queue`; `request_stop` after writing the stopfile) calls
`poke(home)`: one empty datagram to every socket there, a few microseconds
each. A poke is only a hint to look now: what there is to do is always read
from the database, so a lost poke costs latency, never a job. Workers keep
a slower safety poll for that, and poll at `poll-interval` where they cannot
bind a socket at all (Windows, no AF_UNIX, a home whose path is longer than
AF_UNIX allows: about 104-108 bytes).

`poke` never raises: an enqueue that committed must not fail because of a
wake-up. A socket nobody is bound to any more (a worker killed with -9) is
removed by the first poke that meets it.
"""

import os
import stat

from . import home as qhome

WAKE_DIR = "wake"


def directory(home):
    return os.path.join(home, WAKE_DIR)


def poke(home):
    """Wake every worker serving `home`: one datagram to each socket in HOME/wake; never raises.

    Costs a listdir when no worker listens. `_socket`, not `socket`: importing
    `socket` (and with it `selectors`, `enum`'s users, `array`) costs a command
    about 2 ms, which would come straight after the commit and before the wake-up.
    """
    folder = directory(home)
    try:
        if not _own_folder(folder):
            return
        names = os.listdir(folder)
    except OSError:  # no worker ever listened here (or no home at all)
        return
    if not names:
        return
    try:
        import _socket
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    except (ImportError, AttributeError, OSError):  # no Unix sockets here: workers poll
        return
    try:
        sock.setblocking(False)
        for name in names:
            path = os.path.join(folder, name)
            try:
                sock.sendto(b"", path)
            except ConnectionRefusedError:  # nobody is bound to it: its worker died (if it is a socket)
                _remove_socket(path)
            except OSError:  # its queue is full (it has wake-ups waiting), gone, a path too long
                pass
    except Exception:  # a wake-up is a hint: nothing here may fail the caller's committed work
        pass
    finally:
        sock.close()


def _own_folder(folder):
    """Whether `folder` is a real directory (not a symlink to one) of this user: the only kind a poke
    may send into, and a worker bind in. Raises OSError if it cannot be looked at."""
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        return False
    if not hasattr(os, "geteuid"):  # Windows: no owners to compare (and no Unix sockets either)
        return True
    return info.st_uid == os.geteuid()


def _remove_socket(path):
    """Remove `path` if it is a socket: nothing else in the wake folder is ours to delete."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.remove(path)
    except OSError:
        pass


def drain(sock):
    """Take every wake-up waiting on non-blocking socket `sock`."""
    try:
        while True:
            sock.recv(64)
    except OSError:  # BlockingIOError: taken them all
        pass


class Waker:
    """What a worker's supervisor sleeps on: its socket in HOME/wake (woken by `poke`) and a
    socket pair its own threads and signals ring (`ring`, `signal_fd`).

    `listening` says whether pokes can reach it; when not (see `unavailable`)
    the caller must poll as often as it would with no wake-ups at all. Used by
    one thread, the supervisor, apart from `ring`, which any thread may call.
    """

    def __init__(self, home, name):
        self._make_ring()
        self.path = os.path.join(directory(home), name)
        self._sock = None
        self._bound = None  # (st_dev, st_ino) of the socket file we bound
        self.unavailable = None  # why pokes cannot reach us, when they cannot
        self._bind()

    def _make_ring(self):
        import select
        import socket
        self._select = select.select
        self._socket = socket
        self._ring_in, self._ring_out = socket.socketpair()
        self._ring_in.setblocking(False)
        self._ring_out.setblocking(False)

    @property
    def listening(self):
        return self._sock is not None

    def _bind(self):
        socket = self._socket
        if not hasattr(socket, "AF_UNIX"):
            self.unavailable = "this platform has no Unix sockets"
            return
        sock = None
        try:
            folder = os.path.dirname(self.path)
            qhome.make_private_dirs(folder)
            if qhome.POSIX:
                if not _own_folder(folder):  # a symlink, a file, another user's: never bind or chmod there
                    self.unavailable = "%s is not a folder of this user's own" % folder
                    return
                info = os.lstat(folder)
                if stat.S_IMODE(info.st_mode) & 0o077:  # made by hand: ours only, or not at all
                    os.chmod(folder, 0o700)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            _remove_socket(self.path)  # one left by a process with our pid and name: never bound now
            sock.bind(self.path)
            try:
                # bind made it with the umask's mode; the folder (0700) kept others out meanwhile
                os.chmod(self.path, 0o600)
                info = os.stat(self.path)
            except BaseException:
                _remove_socket(self.path)
                raise
            sock.setblocking(False)
        except OSError as exc:  # a path too long for AF_UNIX, a read-only home, no AF_UNIX after all
            if sock is not None:
                sock.close()
            self.unavailable = "cannot listen at %s: %s" % (self.path, exc.strerror or exc)
            return
        self._sock, self._bound, self.unavailable = sock, (info.st_dev, info.st_ino), None

    def renew(self):
        """Bind again if our socket file was deleted or replaced (no poke could reach us);
        returns `listening`. A stat when all is well."""
        if self._sock is not None:
            try:
                info = os.stat(self.path)
                if (info.st_dev, info.st_ino) == self._bound:
                    return True
            except OSError:
                pass
            self._sock.close()
            self._sock = self._bound = None
            self._bind()
        return self._sock is not None

    def retry_in(self):
        """Seconds until `renew` may listen again when it cannot now; None: not by waiting (here a
        socket that cannot be bound stays so)."""
        return None

    def wait(self, timeout):
        """Sleep until poked or rung, or `timeout` seconds passed; True if woken. Every waiting
        wake-up is taken: many pokes while we were busy make one look."""
        socks = [self._ring_in] if self._sock is None else [self._ring_in, self._sock]
        ready = self._select(socks, [], [], max(0.0, timeout))[0]
        for sock in ready:
            drain(sock)
        return bool(ready)

    def ring(self):
        """Wake the sleeping supervisor from another thread of this process; never raises."""
        try:
            self._ring_out.send(b"\0")
        except OSError:  # full: it has a wake-up waiting already; closed: it is gone
            pass

    def signal_fd(self):
        """The fd for `signal.set_wakeup_fd`: a signal then ends `wait` at once."""
        return self._ring_out.fileno()

    def close(self):
        """Close the sockets and remove our socket file (if it still is ours)."""
        if self._sock is not None:
            self._sock.close()
            try:
                info = os.stat(self.path)
                if (info.st_dev, info.st_ino) == self._bound:
                    _remove_socket(self.path)
            except OSError:
                pass
            self._sock = self._bound = None
        self._ring_in.close()
        self._ring_out.close()
