"""The job model: states, validation, and the rule for a failed run.

Pure functions only: no SQL, no printing, no processes. Everything a user types
for a job is checked here once and turned into the canonical value the store
keeps, or rejected with InvalidJob naming what is wrong.

`json` is imported where it is used: `status` and the worker's job path do
not need it, and every command pays for start-up.
"""

import os
from typing import NamedTuple, Optional

from .config import MAX_RETRIES_LIMIT
from .errors import InvalidJob, describe
from .times import parse_duration, parse_timestamp

# The five states, exactly as stored.
PENDING = "pending"
PROCESSING = "processing"
COMPLETED = "completed"
FAILED = "failed"
DEAD = "dead"
STATES = (PENDING, PROCESSING, COMPLETED, FAILED, DEAD)
FINISHED_STATES = (COMPLETED, DEAD)
UNFINISHED_STATES = (PENDING, PROCESSING, FAILED)

ID_MAX_CHARS = 200
PRIORITY_LIMIT = 1000000000
DEFAULT_LIST_LIMIT = 100  # list, and the dashboard's /api/jobs, without a limit

JOB_FIELDS = ("id", "command", "max_retries", "priority", "run_at", "delay", "timeout", "cwd", "env")


# ---------------------------------------------------------------- a run's outcome

COMPLETE, FAIL, RELEASE = "complete", "fail", "release"


class Outcome(NamedTuple):
    """What one run of a claimed job came to, for `Store.record` or `Store.claim(finish=...)`.

    `kind`: COMPLETE (exit 0), FAIL (anything else: `error` says what) or
    RELEASE (a hard stop cut it short: back to pending, no attempt used).
    """
    kind: str
    job: dict
    worker: str
    now: float
    error: Optional[str] = None
    exit_code: Optional[int] = None
    stdout: bytes = b""
    stderr: bytes = b""
    took: float = 0.0   # seconds the run took (for the log; the store keeps wall-clock times)


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
    """Validate one job given as JSON text; see `validate_job`."""
    import json
    try:
        raw = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise InvalidJob("job is not valid JSON: %s" % (exc,)) from None
    except RecursionError:
        raise InvalidJob("job is not valid JSON: nested too deeply") from None
    return validate_job(raw, now=now, cwd=cwd, default_max_retries=default_max_retries)


def parse_job_lines(data, source, *, now, cwd=None, default_max_retries):
    """Every job of JSON Lines bytes (one job a line), validated, with the line number of each.

    The first bad line raises InvalidJob naming it: all or nothing.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidJob("%s is not UTF-8 text (byte %d)" % (source, exc.start)) from None
    new, numbers = [], []
    # JSON Lines ends lines at \n only: splitlines() would also cut at U+2028, \x1c, \x85 ...
    # which JSON allows raw inside strings. A \r before the \n is whitespace to json.
    for number, line in enumerate(text.split("\n"), 1):
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
    timeout, cwd, env (a JSON string or None).
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
    check_unicode(command, "command")

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
    check_unicode(job_cwd, "cwd")

    env = raw.get("env")
    if env is not None:
        import json
        env = json.dumps(_check_env(env), sort_keys=True)

    return {"id": job_id, "command": command, "max_retries": max_retries, "priority": priority,
            "run_at": run_at, "timeout": timeout, "cwd": job_cwd, "env": env}


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
    if not isinstance(job_id, str):
        raise InvalidJob("id must be a string, not %s" % describe(job_id))
    if not job_id:
        raise InvalidJob("id must not be empty")
    if len(job_id) > ID_MAX_CHARS:
        raise InvalidJob("id must be at most %d characters (got %d)" % (ID_MAX_CHARS, len(job_id)))
    if any(is_control(ch) for ch in job_id):
        raise InvalidJob("id must not contain control characters: %r" % (job_id[:60],))
    return check_unicode(job_id, "id")


def check_unicode(text, what, *, secret=False):
    """`text` if it can be stored. Bytes that are not UTF-8 reach Python as lone surrogates
    (from argv, a file name, or a JSON \\ud800 escape) and SQLite cannot store those.
    A `secret` (an env value) is not quoted in the error."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidJob("%s is not valid Unicode text (it holds bytes that are not UTF-8)%s"
                         % (what, "" if secret else ": %r" % (text[:60],))) from None
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
