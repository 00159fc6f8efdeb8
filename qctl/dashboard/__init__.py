"""The web dashboard: one page, a JSON API and Prometheus metrics, served by `http.server`.

The page's HTML, CSS and JS live in this package's `static/` folder and are
served by the dashboard itself, under a Content-Security-Policy that allows
nothing inline and nothing from elsewhere.

Safety rules (Flower, rq-dashboard and Sidekiq all had holes here):
- a request whose Host header is not the address we serve gets 400: a page on
  another site cannot reach us by rebinding its DNS name to 127.0.0.1;
- every POST (an action: cancel or retry one job) carries the per-server token
  the page embeds, else 403; a page on another origin can neither read the
  token nor send the header without CORS;
- `read_only` refuses every POST;
- job data reaches the page as JSON and the page only ever sets textContent;
- env values never leave the store: `shapes.job` masks them.

Bounds (SPEC "Bounded dashboard"): `GET /api/jobs` answers at most MAX_PAGE_JOBS
jobs (a larger `limit`, or 0, is capped); when more match, the answer stays the
array `list --json` prints and names the rest in its headers, `X-Next-Cursor: C`
and `Link: </api/jobs?...&after=C>; rel="next"`: ask again with `after=C`
(in either order, `newest=1` too). `GET /api/schedules` pages the same way, by name, at
most MAX_PAGE_SCHEDULES a page. A body over MAX_BODY_BYTES gets 413 unread.
The request line, headers and body must arrive within IDLE_TIMEOUT_S, else the
connection is closed. Every response, http.server's own errors included, carries
SECURITY_HEADERS (`end_headers` adds them).

Ids: in a path an id is percent-encoded (`a/b` is `/api/jobs/a%2Fb`). Browsers
and fetch() resolve `.` and `..` as dot segments even when sent as `%2E%2E`, so
any id may also go in the query, which nobody normalises: `GET /api/job?id=ID`,
`POST /api/job/cancel?id=ID` and `POST /api/job/retry?id=ID`. The page always
uses that form.

The chart (`GET /api/chart`): runs and failures per minute over the last hour,
CHART_MINUTES buckets of whole clock minutes, the current one last.
"""

import hmac
import io
import ipaddress
import json
import math
import os
import secrets
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from .. import jobs
from .. import shapes
from .. import stats as qstats
from ..db import SQLITE_MAX_INT, open_store
from ..errors import InvalidJob, InvalidState, JobNotFound, QueueError, StoreError
from ..times import iso

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
TOKEN_HEADER = "X-Queuectl-Token"
MAX_PAGE_JOBS = 1000  # jobs in one /api/jobs answer; the rest through its next cursor
MAX_PAGE_SCHEDULES = 1000  # schedules in one /api/schedules answer, likewise
MAX_CURSOR = SQLITE_MAX_INT  # a cursor is a job's seq
MAX_BODY_BYTES = 65536
IDLE_TIMEOUT_S = 10.0  # a request must arrive whole within this (DashboardServer.idle_timeout_s)
LINGER_S = 2.0  # at most this long draining a refused body; see Handler.finish
STATS_COST_FACTOR = 5  # see DashboardServer.cached
CHART_MINUTES = 60  # buckets of /api/chart
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_FILES = {
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)
# socket.timeout: a client that stopped reading our answer for the whole idle timeout.
_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout)


class HttpError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def is_loopback(host):
    """Whether `host` (a name or an address) only listens on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_wildcard(host):
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def allowed_hosts(host, port):
    """The Host header values a request may carry (lower case) when we serve `host`:`port`.

    A loopback address also answers to localhost. An address bound to every
    interface answers to any IP literal and to this machine's name: DNS
    rebinding needs a name that an attacker controls, which is none of these.
    """
    names = {host.lower().strip("[]")}
    if is_loopback(host):
        names |= {"localhost", "127.0.0.1", "::1"}
    if _is_wildcard(host):
        names |= {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
    allowed = set()
    for name in names:
        shown = "[%s]" % name if ":" in name else name
        allowed.add("%s:%d" % (shown, port))
        if port == 80:
            allowed.add(shown)
    return allowed


def host_allowed(header, server):
    if not header:
        return False
    header = header.strip().lower()
    if header in server.allowed_hosts:
        return True
    if not server.wildcard:
        return False
    name, _, port = header.rpartition(":")
    if not name or port != str(server.port):
        return False
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


class _DeadlineReader(io.RawIOBase):
    """A socket as a raw input stream whose reads fail with socket.timeout once `deadline`
    (time.monotonic()) has passed. A plain socket timeout restarts at every byte, so a client
    that sends one every few seconds would hold its thread for ever."""

    def __init__(self, sock, timeout_s):
        super().__init__()
        self._sock = sock
        self._timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s

    def readable(self):
        return True

    def readinto(self, buffer):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        self._sock.settimeout(left)
        try:
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(self._timeout_s)  # writes keep the whole timeout


class DashboardServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that knows its home, token and rules; see `make_server`."""

    daemon_threads = True
    idle_timeout_s = IDLE_TIMEOUT_S  # tests lower it on their server
    request_queue_size = 64  # a page asks for nine things at once; the default backlog of 5 drops some

    def __init__(self, db_path, host, port, *, read_only=False):
        if ":" in host.strip("[]"):
            self.address_family = socket.AF_INET6
        self.db_path = db_path
        self.read_only = read_only
        self.token = secrets.token_urlsafe(32)
        self._cache_lock = threading.Lock()
        self._cache = {}  # name -> (computed at, what it cost, value)
        super().__init__((host.strip("[]"), port), Handler)
        self.host = host.strip("[]")
        self.port = self.server_address[1]
        self.wildcard = _is_wildcard(self.host)
        self.allowed_hosts = allowed_hosts(self.host, self.port)

    def cached(self, name, compute):
        """`compute()`, recomputed only once the last copy is older than STATS_COST_FACTOR times
        what it cost: fresh on a small queue, at most a fifth of a core on a huge one. Both
        figures that read every run of the last hour (stats, chart) go through here."""
        with self._cache_lock:
            started = time.monotonic()
            computed_at, cost, value = self._cache.get(name, (0.0, 0.0, None))
            if value is None or started - computed_at >= STATS_COST_FACTOR * cost:
                value = compute()
                self._cache[name] = (started, time.monotonic() - started, value)
            return value

    def stats(self, store):
        """`stats --json` (see `cached`)."""
        return self.cached("stats", lambda: qstats.collect(store, store.now()))

    def chart(self, store):
        """Runs and failures per minute over the last hour (see `cached` and `runs_per_minute`)."""
        return self.cached("chart", lambda: runs_per_minute(store, store.now()))

    @property
    def url(self):
        shown = "localhost" if self.wildcard else self.host
        return "http://%s:%d/" % ("[%s]" % shown if ":" in shown else shown, self.port)

    def handle_error(self, request, client_address):
        # A client that hangs up mid-response is routine; anything else is a bug worth a line.
        exc = sys.exc_info()[1]
        if not isinstance(exc, _CLIENT_GONE):
            sys.stderr.write("queuectl: dashboard: error serving %s: %s: %s\n"
                             % (client_address[0], type(exc).__name__, exc))


def make_server(db_path, *, host=DEFAULT_HOST, port=DEFAULT_PORT, read_only=False):
    """A bound, not yet serving, dashboard server for the database at `db_path`."""
    try:
        return DashboardServer(db_path, host, port, read_only=read_only)
    except OSError as exc:
        raise QueueError("cannot serve the dashboard on %s:%s: %s" % (host, port, exc.strerror or exc)) from None


def _read_static(name):
    with open(os.path.join(STATIC_DIR, name), "rb") as fh:
        return fh.read()


class Handler(BaseHTTPRequestHandler):
    timeout = IDLE_TIMEOUT_S  # per connection, from DashboardServer.idle_timeout_s in setup

    def version_string(self):
        return "queuectl"

    # ------------------------------------------------------------ plumbing

    def log_message(self, format, *args):
        """Quiet: the page polls every 2 s, a line per request would bury everything else."""

    def setup(self):
        self.timeout = self.server.idle_timeout_s
        super().setup()
        self.rfile.close()  # the socket stays open: it is only makefile()'s reader
        self._reader = _DeadlineReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader)
        self._input_unread = False

    def handle_one_request(self):
        # The request line, headers and body together get the idle timeout.
        self._reader.deadline = time.monotonic() + self.timeout
        super().handle_one_request()

    def parse_request(self):
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":  # its answer has no headers, so no CSP; no browser sends it
            self.send_error(505, "HTTP/0.9 is not supported")
            return False
        return True

    def end_headers(self):
        # Here rather than in _send, so that no answer can go without them: not http.server's
        # own errors (send_error), nor one a later handler writes by hand.
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        super().end_headers()

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (bad request line, 414, 431, 501, 505) as JSON errors like ours.

        The status line keeps the standard reason: `message` may quote the client's bytes."""
        if self.request_version == "HTTP/0.9":  # else send_response would write no status line
            self.request_version = "HTTP/1.0"
        self.close_connection = True
        self._input_unread = True  # the rest of a request line or headers, and any body
        self._json(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def finish(self):
        if self._input_unread:
            self._linger()
        super().finish()

    def _linger(self):
        """Drop what arrives of a request we answered unread, until the client hangs up or for
        LINGER_S: closing a socket with unread input sends a reset, which can destroy our answer
        before the client has read it."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self._reader.deadline = time.monotonic() + min(LINGER_S, self.timeout)
            while self.rfile.read1(65536):
                pass
        except OSError:  # socket.timeout among them
            pass

    def _send(self, status, body, content_type, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status, value, headers=()):
        self._send(status, json.dumps(value).encode("ascii"), "application/json", headers)

    def _read_body(self):
        """The request's body, refused unread (413) when it announces more than MAX_BODY_BYTES."""
        if self.headers.get("Transfer-Encoding"):
            self._input_unread = True
            raise HttpError(411, "send a Content-Length, not a Transfer-Encoding")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._input_unread = True
            raise HttpError(400, "bad Content-Length header")
        if length > MAX_BODY_BYTES:
            self._input_unread = True
            raise HttpError(413, "request body over %d KiB" % (MAX_BODY_BYTES // 1024))
        try:
            body = self.rfile.read(length)
        except socket.timeout:
            raise HttpError(408, "the request did not arrive whole within %gs" % self.timeout) from None
        if len(body) < length:
            raise HttpError(400, "request body shorter than its Content-Length")
        return body

    def _dispatch(self, route):
        try:
            # Read it even though no action takes one: one left unread would make our close() a
            # reset that eats the answer.
            self._read_body()
            if not host_allowed(self.headers.get("Host"), self.server):
                raise HttpError(400, "unexpected Host header: use %s" % self.server.url)
            parts = urlsplit(self.path)
            # Split before unquoting, so an id may hold a "/" sent as %2F.
            segments = [unquote(s) for s in parts.path.split("/")[1:]]
            handler = route(segments, parse_qs(parts.query))
            if handler is None:
                raise HttpError(404, "not found")
            handler()
        except _CLIENT_GONE:
            return
        except HttpError as exc:
            self._json(exc.status, {"error": str(exc)})
        except JobNotFound as exc:
            self._json(404, {"error": str(exc)})
        except InvalidState as exc:
            self._json(409, {"error": str(exc)})
        except StoreError as exc:
            self._json(503, {"error": str(exc)})
        except QueueError as exc:
            self._json(400, {"error": str(exc)})
        except Exception:
            # A bug: answer, then let handle_error report it in one line.
            self._json(500, {"error": "internal error (see the dashboard's stderr)"})
            raise

    def _store(self):
        return open_store(self.server.db_path)

    # ------------------------------------------------------------ methods

    def do_GET(self):
        self._dispatch(self._get_route)

    do_HEAD = do_GET

    def do_POST(self):
        self._dispatch(self._post_route)

    def _refuse(self, *_):
        self._dispatch(self._refused_route)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _get_route(self, seg, query):
        """The handler for a GET of path segments `seg`, or None (404)."""
        if seg == [""]:
            return self._page
        if "/" + "/".join(seg) in STATIC_FILES:
            return lambda: self._static("/" + "/".join(seg))
        if seg == ["metrics"]:
            return self._metrics
        if seg[:1] != ["api"]:
            return None
        rest = seg[1:]
        if rest == ["status"]:
            return lambda: self._with_store(lambda store: shapes.status(store.counts(), store.live_workers(store.now())))
        if rest == ["stats"]:
            return lambda: self._with_store(self.server.stats)
        if rest == ["workers"]:
            return lambda: self._with_store(lambda store: [shapes.worker(w) for w in store.live_workers(store.now())])
        if rest == ["queues"]:
            return lambda: self._with_store(lambda store: store.queues())
        if rest == ["chart"]:
            return lambda: self._with_store(self.server.chart)
        if rest == ["jobs"]:
            return lambda: self._list(query)
        if rest == ["schedules"]:
            return lambda: self._schedules(query)
        if len(rest) == 2 and rest[0] == "jobs":
            return lambda: self._with_store(lambda store: job_detail(store, rest[1]))
        if rest == ["job"]:
            return lambda: self._with_store(lambda store: job_detail(store, query_id(query)))
        return None

    def _refused_route(self, seg, query):
        raise HttpError(405, "method not allowed")

    def _post_route(self, seg, query):
        if len(seg) == 4 and seg[:2] == ["api", "jobs"] and seg[3] in ACTIONS:
            return lambda: self._act(ACTIONS[seg[3]], seg[2])
        if len(seg) == 3 and seg[:2] == ["api", "job"] and seg[2] in ACTIONS:
            return lambda: self._act(ACTIONS[seg[2]], query_id(query))
        return None

    # ------------------------------------------------------------ handlers

    def _page(self):
        page = _read_static("index.html").decode("utf-8")
        page = page.replace("{{token}}", "" if self.server.read_only else self.server.token)
        page = page.replace("{{read_only}}", "1" if self.server.read_only else "0")
        self._send(200, page.encode("utf-8"), "text/html; charset=utf-8")

    def _static(self, path):
        name, content_type = STATIC_FILES[path]
        self._send(200, _read_static(name), content_type)

    def _with_store(self, query):
        with self._store() as store:
            value = query(store)
        self._json(200, value)

    def _list(self, query):
        state = (query.get("state") or [""])[-1] or None
        queue = (query.get("queue") or [""])[-1] or None
        tag = (query.get("tag") or [""])[-1] or None
        try:
            if state is not None:
                jobs.check_state(state)
            if queue is not None:
                jobs.check_queue(queue)
            if tag is not None:
                jobs.check_tags([tag])
        except InvalidJob as exc:
            raise HttpError(400, str(exc)) from None
        limit = _page_limit(query, jobs.DEFAULT_LIST_LIMIT, MAX_PAGE_JOBS)
        newest_first = (query.get("newest") or [""])[-1] in ("1", "true")
        after_text = (query.get("after") or [""])[-1]
        try:
            after = int(after_text) if after_text else None
        except ValueError:
            after = -1
        if after is not None and not 0 <= after <= MAX_CURSOR:
            raise HttpError(400, "after must be a cursor from X-Next-Cursor, not %r" % after_text)
        with self._store() as store:
            # One more than the page: whether there is a next page, without counting.
            rows = store.list_jobs(state=state, queue=queue, tag=tag, limit=limit + 1, newest_first=newest_first,
                                   after_seq=after)
        headers = ()
        if len(rows) > limit:
            rows = rows[:limit]
            cursor = str(rows[-1]["seq"])
            params = [(name, value) for name, value in (("state", state), ("queue", queue), ("tag", tag)) if value]
            params += [("limit", limit)] + ([("newest", 1)] if newest_first else []) + [("after", cursor)]
            headers = (("X-Next-Cursor", cursor), ("Link", '</api/jobs?%s>; rel="next"' % urlencode(params)))
        self._json(200, [shapes.job(r) for r in rows], headers)

    def _schedules(self, query):
        """`schedule list --json` (the jobs' env values masked), by name, a page at a time like
        `_list`: at most MAX_PAGE_SCHEDULES, the rest past the `X-Next-Cursor` name (`after=`)."""
        limit = _page_limit(query, MAX_PAGE_SCHEDULES, MAX_PAGE_SCHEDULES)
        after = (query.get("after") or [None])[-1]
        if after is not None:
            try:
                jobs.check_queue(after)  # a schedule's name has a queue's alphabet
            except InvalidJob:
                raise HttpError(400, "after must be a cursor from X-Next-Cursor, not %r" % after) from None
        with self._store() as store:
            rows = store.schedules(after=after, limit=limit + 1)
        headers = ()
        if len(rows) > limit:
            rows = rows[:limit]
            cursor = rows[-1]["name"]
            headers = (("X-Next-Cursor", cursor),
                       ("Link", '</api/schedules?%s>; rel="next"' % urlencode([("limit", limit), ("after", cursor)])))
        self._json(200, [shapes.schedule(r) for r in rows], headers)

    def _metrics(self):
        with self._store() as store:
            text = qstats.prometheus(self.server.stats(store))
        self._send(200, text.encode("utf-8"), "text/plain; version=0.0.4; charset=utf-8")

    def _act(self, action, job_id):
        """Run `action` (a value of ACTIONS) on one job and answer the job as it is after."""
        if self.server.read_only:
            raise HttpError(403, "the dashboard is read-only")
        token = self.headers.get(TOKEN_HEADER) or ""
        if not hmac.compare_digest(token.encode("utf-8", "replace"), self.server.token.encode("ascii")):
            raise HttpError(403, "missing or wrong %s header: reload the page" % TOKEN_HEADER)
        with self._store() as store:
            action(store, job_id)
            self._json(200, shapes.job(store.get(job_id)))


def _cancel(store, job_id):
    # As `cancel ID`, but without waiting for a running job's worker to kill it: the answer
    # says `processing` until then, and the page's next refresh shows how it ended.
    store.cancel([job_id], now=store.now())


def _retry(store, job_id):
    # Any finished job, as `retry ID`: `dlq retry` is the same thing for dead ones.
    store.retry([job_id], now=store.now())


# The POSTs: /api/jobs/ID/NAME or /api/job/NAME?id=ID. Unknown or finished (cancel) or
# unfinished (retry) ids raise JobNotFound (404) or InvalidState (409) and change nothing.
ACTIONS = {"cancel": _cancel, "retry": _retry}


def _page_limit(query, default, most):
    """The `limit=` of a query: `default` when absent; 0 (all) or above `most` gives `most`,
    since one answer holds a page at most."""
    limit_text = (query.get("limit") or [""])[-1]
    try:
        limit = int(limit_text) if limit_text else default
    except ValueError:
        raise HttpError(400, "limit must be a whole number, not %r" % limit_text) from None
    if limit < 0:
        raise HttpError(400, "limit must be 0 (all) or more, not %d" % limit)
    return most if limit == 0 or limit > most else limit


def query_id(query):
    """The job id a `?id=` query names: the one way to name `.` and `..` from a browser."""
    values = query.get("id")
    if not values:
        raise HttpError(400, "name the job: ?id=ID")
    return values[-1]


def runs_per_minute(store, now, *, minutes=CHART_MINUTES):
    """`minutes` buckets of whole clock minutes, oldest first, the last one holding `now`:
    [{"minute": ISO start, "runs": n, "failures": n}, ...], runs counted by when they finished."""
    first = (math.floor(now / 60.0) - (minutes - 1)) * 60.0
    buckets = [{"minute": iso(first + 60.0 * n), "runs": 0, "failures": 0} for n in range(minutes)]
    for run in store.runs_since(first):
        n = int((run.finished_at - first) // 60.0)
        if n < minutes:  # a run finished "later than now" (a clock stepped back) has no bucket yet
            buckets[n]["runs"] += 1
            buckets[n]["failures"] += run.failed
    return buckets


def job_detail(store, job_id):
    """A job as `show --json` prints it, each run with the tail of its output for the page."""
    try:
        job_id = jobs.check_id(job_id)
    except InvalidJob:
        raise JobNotFound(job_id) from None
    row = store.get(job_id)
    # Bytes, then characters: a UTF-8 character is at most 4 bytes.
    runs = store.job_runs(row, output_tail=shapes.OUTPUT_TAIL_CHARS * 4)
    return shapes.job_with_runs(row, runs, output=True)
