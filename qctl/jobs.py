"""The job model: states, validation, and the rule for a failed run.

Pure functions only: no SQL, no printing, no processes. Everything a user types
for a job is checked here once and turned into the canonical value the store
keeps, or rejected with InvalidJob naming what is wrong.

`json` is imported where it is used: `status` and the worker's job path do
not need it, and every command pays for start-up.
"""

import os
import re
from collections import namedtuple

from .config import MAX_RETRIES_LIMIT
from .errors import BadDependency, InvalidJob, describe
from .times import parse_duration, parse_timestamp

# The states, exactly as stored.
PENDING = "pending"
PROCESSING = "processing"
COMPLETED = "completed"
FAILED = "failed"
DEAD = "dead"
CANCELLED = "cancelled"
STATES = (PENDING, PROCESSING, COMPLETED, FAILED, DEAD, CANCELLED)
FINISHED_STATES = (COMPLETED, DEAD, CANCELLED)
UNFINISHED_STATES = (PENDING, PROCESSING, FAILED)
EDITABLE_STATES = (PENDING, FAILED)
CANCELLED_ERROR = "cancelled"  # a cancelled run's error

ID_MAX_CHARS = 200
# Bounded input: nothing stored can be too big to run, to list, or to read back.
JOB_JSON_MAX_BYTES = 1024 * 1024    # one JSON job: the JOB_JSON argument, or one line of --file
# Linux refuses one argument (`sh -c COMMAND`) of 128 KiB or more: its limit counts the NUL
# that ends the string, so a command of exactly 128 KiB could never start.
COMMAND_MAX_BYTES = 128 * 1024 - 1
CWD_MAX_BYTES = 4095                # Linux's PATH_MAX (4096) counts the NUL too
ENV_MAX_BYTES = 128 * 1024          # a job's whole env as its process gets it: KEY=VALUE\0 each
ENV_MAX_KEYS = 1000
PRIORITY_LIMIT = 1000000000
DEFAULT_LIST_LIMIT = 100  # list, and the dashboard's /api/jobs, without a limit

JOB_FIELDS = ("id", "command", "max_retries", "priority", "run_at", "delay", "timeout", "cwd", "env", "queue", "tags",
              "after", "after_policy", "unique_key")
AFTER_POLICIES = ("completed", "finished")  # after_policy: what its dependencies must end as
AFTER_LIMIT = 100   # dependencies of one job
DEFAULT_QUEUE = "default"
TAGS_LIMIT = 16
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # a queue's name


# ---------------------------------------------------------------- a run's outcome

COMPLETE, FAIL, RELEASE, CANCEL = "complete", "fail", "release", "cancel"


# collections' namedtuple, not typing's (see config.Setting).
Outcome = namedtuple("Outcome", "kind job worker now error exit_code stdout stderr took",
                     defaults=(None, None, b"", b"", 0.0))
Outcome.__doc__ = """What one run of a claimed job came to, for `Store.record` or `Store.finish_and_claim`.

`kind`: COMPLETE (exit 0), FAIL (anything else: `error` says what),
RELEASE (a hard stop cut it short: back to pending, no attempt used) or
CANCEL (a user cancelled it while it ran: cancelled, the run's error
`cancelled`). `job` (dict), `worker` (str), `now` (float); `error` (str or
None), `exit_code` (int or None), `stdout` and `stderr` (bytes), `took`
(seconds the run took, for the log; the store keeps wall-clock times).
"""


def after_failure(attempts, max_retries, settings, now):
    """(state, next_run_at) for a job whose `attempts`-th run failed at `now`.

    With retries left: FAILED, due again after min(backoff-base ** attempts,
    backoff-max) seconds. Otherwise DEAD.
    """
    if attempts > max_retries:
        return DEAD, now
    return FAILED, now + backoff_delay(attempts, settings["backoff-base"], settings["backoff-max"])


def backoff_delay(failures, base, cap):
    """Seconds to wait after the `failures`-th failed run: min(base ** failures, cap)."""
    try:
        return min(float(base) ** failures, float(cap))
    except OverflowError:
        return float(cap)


def check_state(value, valid=STATES):
    """`value` if it names a state in `valid`, else InvalidJob listing them."""
    if value not in valid:
        raise InvalidJob("unknown state %r (valid states: %s)" % (value, ", ".join(valid)))
    return value


# ---------------------------------------------------------------- validation

def parse_job_json(text, *, now, cwd=None, default_max_retries):
    """Validate one job given as JSON text (at most JOB_JSON_MAX_BYTES as UTF-8); see `validate_job`."""
    return validate_job(load_job_json(text), now=now, cwd=cwd, default_max_retries=default_max_retries)


def load_job_json(text):
    """One job's JSON text (at most JOB_JSON_MAX_BYTES as UTF-8) as the value it holds, not yet validated."""
    import json
    # Every character is at least one byte and at most four: encode only when it could matter.
    if len(text) * 4 > JOB_JSON_MAX_BYTES:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > JOB_JSON_MAX_BYTES:
            raise InvalidJob("%s, not %d bytes" % (_JOB_TOO_LONG, size))
    try:
        raw = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise InvalidJob("job is not valid JSON: %s" % (exc,)) from None
    except RecursionError:
        raise InvalidJob("job is not valid JSON: nested too deeply") from None
    return raw


_JOB_TOO_LONG = "a job must be at most 1 MiB of JSON (%d bytes as UTF-8)" % JOB_JSON_MAX_BYTES


def parse_job_lines(stream, source, *, now, cwd=None, default_max_retries):
    """Every job of a JSON Lines binary stream (one job a line), validated, with the line number of each.

    Reads one line at a time, never more than JOB_JSON_MAX_BYTES + 1 bytes of it: a longer line
    (an endless one, like /dev/zero's) is refused without reading the rest. The validated jobs
    are kept for the one transaction that stores them all (all or nothing): a few hundred bytes
    a job beyond its own text, so a 1,000,000-job file holds some hundreds of MB at once.
    The first bad line raises InvalidJob naming it: nothing is stored. `source` names the
    stream in the error when it holds no job.
    """
    new, numbers = [], []
    offset = 0  # of the line, in the stream: where a byte that is not UTF-8 sits
    # JSON Lines ends lines at \n only (a binary readline splits nowhere else): splitlines()
    # would also cut at U+2028, \x1c, \x85 ... which JSON allows raw inside strings.
    # A \r before the \n is whitespace to json.
    number = 0
    while True:
        data = stream.readline(JOB_JSON_MAX_BYTES + 1)
        if not data:
            break
        number += 1
        if len(data) > JOB_JSON_MAX_BYTES and not data.endswith(b"\n"):
            raise InvalidJob("line %d: %s; this line is longer (nothing was enqueued)" % (number, _JOB_TOO_LONG))
        try:
            # A byte order mark may start the file, and nowhere else. The newline is not the job's.
            line = data[:-1 if data.endswith(b"\n") else None].decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJob("line %d: this line is not UTF-8 text (byte %d of %s; nothing was enqueued)"
                             % (number, offset + exc.start, source)) from None
        offset += len(data)
        if not line.strip():
            continue
        try:
            new.append(parse_job_json(line, now=now, cwd=cwd, default_max_retries=default_max_retries))
        except InvalidJob as exc:
            raise InvalidJob("line %d: %s (nothing was enqueued)" % (number, exc)) from None
        numbers.append(number)
    if not new:
        raise InvalidJob("%s holds no jobs" % source)
    return new, numbers


def validate_job(raw, *, now, cwd=None, default_max_retries):
    """A checked, complete job dict from user input, ready for `Store.enqueue`.

    Returns keys: id (None = generate), command, max_retries, priority, run_at,
    timeout, cwd, env (a JSON string or None), queue, tags, after (ids, maybe
    empty), after_policy, unique_key (or None).
    """
    if not isinstance(raw, dict):
        raise InvalidJob("a job must be a JSON object, not %s" % describe(raw))
    unknown = sorted(set(raw) - set(JOB_FIELDS))
    if unknown:
        raise InvalidJob("unknown job field %s (valid fields: %s)"
                         % (", ".join(repr(k) for k in unknown), ", ".join(JOB_FIELDS)))

    job_id = raw.get("id")
    if job_id is not None:
        job_id = check_id(job_id)

    if "command" not in raw:
        raise InvalidJob("a job needs a 'command'")
    command = raw["command"]
    if not isinstance(command, str):
        raise InvalidJob("command must be a string, not %s" % describe(command))
    if not command.strip():
        raise InvalidJob("command must not be empty")
    if "\x00" in command:
        raise InvalidJob("command must not contain a NUL character")
    check_unicode(command, "command", max_bytes=COMMAND_MAX_BYTES)

    max_retries = raw.get("max_retries")
    max_retries = default_max_retries if max_retries is None else _int_field(
        max_retries, "max_retries", 0, MAX_RETRIES_LIMIT)
    priority = _int_field(raw.get("priority", 0), "priority", -PRIORITY_LIMIT, PRIORITY_LIMIT)

    if raw.get("run_at") is not None and raw.get("delay") is not None:
        raise InvalidJob("give run_at or delay, not both")
    if raw.get("run_at") is not None:
        run_at = parse_timestamp(raw["run_at"])
    elif raw.get("delay") is not None:
        run_at = now + parse_duration(raw["delay"], "delay")
    else:
        run_at = now

    timeout = raw.get("timeout")
    if timeout is not None:
        timeout = parse_duration(timeout, "timeout", allow_zero=False)

    job_cwd = raw.get("cwd")
    if job_cwd is None:
        job_cwd = _base_dir(cwd)
    elif not isinstance(job_cwd, str) or not job_cwd or "\x00" in job_cwd:
        raise InvalidJob("cwd must be a non-empty path string")
    elif not os.path.isabs(job_cwd):
        job_cwd = os.path.join(_base_dir(cwd), job_cwd)
    check_unicode(job_cwd, "cwd", max_bytes=CWD_MAX_BYTES)

    env = raw.get("env")
    if env is not None:
        import json
        env = json.dumps(_check_env(env), sort_keys=True)

    queue = raw.get("queue")
    queue = DEFAULT_QUEUE if queue is None else check_queue(queue)
    tags = check_tags(raw.get("tags") or [])
    after = check_after(raw.get("after") or [], job_id)
    after_policy = raw.get("after_policy")
    after_policy = AFTER_POLICIES[0] if after_policy is None else check_after_policy(after_policy)
    unique_key = raw.get("unique_key")
    if unique_key is not None:
        unique_key = _check_name(unique_key, "unique_key")

    return {"id": job_id, "command": command, "max_retries": max_retries, "priority": priority,
            "run_at": run_at, "timeout": timeout, "cwd": job_cwd, "env": env, "queue": queue, "tags": tags,
            "after": after, "after_policy": after_policy, "unique_key": unique_key}


def check_after(after, job_id=None):
    """The ids a job waits for: up to AFTER_LIMIT distinct job ids, in the order given, not its own."""
    if not isinstance(after, list):
        raise InvalidJob("after must be an array of job ids, not %s" % describe(after))
    if len(after) > AFTER_LIMIT:
        raise InvalidJob("a job waits for at most %d jobs, not %d" % (AFTER_LIMIT, len(after)))
    after = [_check_name(dep, "an id in after") for dep in after]
    if job_id is not None and job_id in after:
        raise InvalidJob("job %r cannot wait for itself" % (job_id,))
    return list(dict.fromkeys(after))


def check_batch_after(new_jobs, ids, is_stored):
    """Raise BadDependency (naming the job's position) unless every id in each job's `after`
    is a job of the batch (`ids`, in order) or a stored one (`is_stored(id)`), and no jobs of
    the batch wait for each other in a cycle."""
    position = {job_id: index for index, job_id in enumerate(ids)}
    edges = {}
    for index, job in enumerate(new_jobs):
        for dep in job.get("after") or ():
            if dep in position:
                edges.setdefault(index, []).append(position[dep])
            elif not is_stored(dep):
                raise BadDependency("%s waits for %r, which is not a known job"
                                    % ("job %r" % ids[index] if job.get("id") else "the job", dep), index)
    done, path = set(), []
    for start in sorted(edges):
        # Depth first, without recursion: a chain may be as long as the batch.
        stack = [(start, iter(edges.get(start, ())))]
        on_path = {start}
        while stack:
            node, todo = stack[-1]
            nxt = next(todo, None)
            if nxt is None:
                stack.pop()
                on_path.discard(node)
                done.add(node)
            elif nxt in on_path:
                path = [n for n, _ in stack] + [nxt]
                cycle = path[path.index(nxt):]
                raise BadDependency("jobs wait for each other in a cycle: %s"
                                    % " -> ".join(repr(ids[i]) for i in cycle), min(cycle[:-1]))
            elif nxt not in done:
                stack.append((nxt, iter(edges.get(nxt, ()))))
                on_path.add(nxt)
    return edges


def check_after_policy(policy):
    if policy not in AFTER_POLICIES:
        raise InvalidJob("after_policy must be %s, not %s" % (" or ".join(AFTER_POLICIES), describe(policy)))
    return policy


def check_queue(name):
    """A queue's name: 1-64 of A-Z a-z 0-9 _ . -"""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidJob("queue must be 1-64 of the characters A-Z a-z 0-9 _ . -, not %s" % describe(name))
    return name


def check_tags(tags):
    """Up to TAGS_LIMIT distinct tags of 1-64 characters, no control characters; in the order given."""
    if not isinstance(tags, list):
        raise InvalidJob("tags must be an array of strings, not %s" % describe(tags))
    if len(tags) > TAGS_LIMIT:
        raise InvalidJob("a job has at most %d tags, not %d" % (TAGS_LIMIT, len(tags)))
    for tag in tags:
        if not isinstance(tag, str) or not 1 <= len(tag) <= 64 or any(is_control(ch) for ch in tag):
            raise InvalidJob("a tag must be a string of 1-64 characters without control characters, not %s"
                             % describe(tag))
        check_unicode(tag, "tag")
    return list(dict.fromkeys(tags))


def as_input(row, tags):
    """A stored job as the JSON a user would enqueue it with (env values included: for `edit`,
    which re-validates the whole job after changing some fields)."""
    import json
    from .times import iso
    raw = {"id": row["id"], "command": row["command"], "max_retries": row["max_retries"],
           "priority": row["priority"], "run_at": iso(row["run_at"]), "timeout": row["timeout"],
           "cwd": row["cwd"], "queue": row["queue"], "tags": tags, "after": row["after"],
           "after_policy": row["after_policy"], "unique_key": row["unique_key"]}
    if row["env"]:
        raw["env"] = json.loads(row["env"])
    return raw


def _base_dir(cwd):
    """`cwd` if given, else this process's working directory."""
    if cwd is not None:
        return cwd
    try:
        return os.getcwd()
    except OSError as exc:  # it was deleted under us
        raise InvalidJob("cannot read the current directory (%s): give the job an absolute cwd"
                         % (exc.strerror or exc,)) from None


def check_id(job_id):
    """A job id: a string of 1-200 characters with no control characters."""
    return _check_name(job_id, "id")


def _check_name(value, what):
    """An id or a unique key: a string of 1-200 characters with no control characters."""
    if not isinstance(value, str):
        raise InvalidJob("%s must be a string, not %s" % (what, describe(value)))
    if not value:
        raise InvalidJob("%s must not be empty" % what)
    if len(value) > ID_MAX_CHARS:
        raise InvalidJob("%s must be at most %d characters (got %d)" % (what, ID_MAX_CHARS, len(value)))
    if any(is_control(ch) for ch in value):
        raise InvalidJob("%s must not contain control characters: %r" % (what, value[:60]))
    return check_unicode(value, what)


def check_unicode(text, what, *, secret=False, max_bytes=None):
    """`text` if it can be stored, and is at most `max_bytes` long as UTF-8 (if given).

    Bytes that are not UTF-8 reach Python as lone surrogates (from argv, a file
    name, or a JSON \\ud800 escape) and SQLite cannot store those.
    A `secret` (an env value) is not quoted in the error."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidJob("%s is not valid Unicode text (it holds bytes that are not UTF-8)%s"
                         % (what, "" if secret else ": %r" % (text[:60],))) from None
    if max_bytes is not None and size > max_bytes:
        raise InvalidJob("%s must be at most %d bytes as UTF-8, not %d bytes" % (what, max_bytes, size))
    return text


def mask_env(env_json):
    """The env as shown to people: its keys, every value replaced by ***."""
    import json
    if not env_json:
        return None
    return {key: "***" for key in json.loads(env_json)}


def _check_env(env):
    if not isinstance(env, dict):
        raise InvalidJob("env must be an object of strings, not %s" % describe(env))
    if len(env) > ENV_MAX_KEYS:
        raise InvalidJob("env must hold at most %d variables, not %d" % (ENV_MAX_KEYS, len(env)))
    size = 0
    for key, value in env.items():
        # A control character in a name would also break the lines of list and show.
        if not key or "=" in key or any(is_control(ch) for ch in key):
            raise InvalidJob("env key %r is not a valid variable name" % (key,))
        if not isinstance(value, str):
            raise InvalidJob("env value of %r must be a string, not %s" % (key, describe(value)))
        if "\x00" in value:
            raise InvalidJob("env value of %r must not contain a NUL character" % (key,))
        check_unicode(key, "env key")
        check_unicode(value, "env value of %r" % (key,), secret=True)
        size += len(key.encode("utf-8")) + len(value.encode("utf-8")) + 2  # KEY=VALUE\0
    if size > ENV_MAX_BYTES:
        raise InvalidJob("env must be at most 128 KiB (%d bytes as KEY=VALUE strings in UTF-8, with their "
                         "NULs), not %d bytes" % (ENV_MAX_BYTES, size))
    return env


def _int_field(value, name, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJob("%s must be an integer, not %s" % (name, describe(value)))
    if not low <= value <= high:
        raise InvalidJob("%s must be between %d and %d (got %d)" % (name, low, high, value))
    return value


def is_control(ch):
    code = ord(ch)
    return code < 32 or 127 <= code < 160 or code in (0x2028, 0x2029)


def _reject_constant(name):
    raise ValueError("%s is not a number JSON allows" % name)
