"""The job model: states, config keys, validation, time and backoff.

Pure functions only: no SQL, no printing, no processes. Everything a user types
(a job's JSON, a config value, a duration, a timestamp) is checked here once and
turned into the canonical value the store keeps, or rejected with InvalidJob /
ConfigError naming what is wrong.

`json` is imported where it is used: `status` and the worker's job path do
not need it, and every command pays for start-up.
"""

import math
import os
import re
from datetime import datetime, timedelta, timezone

from .errors import ConfigError, InvalidJob

# The five states, exactly as stored.
PENDING = "pending"
PROCESSING = "processing"
COMPLETED = "completed"
FAILED = "failed"
DEAD = "dead"
STATES = (PENDING, PROCESSING, COMPLETED, FAILED, DEAD)
FINISHED_STATES = (COMPLETED, DEAD)

ID_MAX_CHARS = 200
MAX_RETRIES_LIMIT = 1000
PRIORITY_LIMIT = 1000000000
SECONDS_LIMIT = 10 * 365 * 86400  # ten years: any longer duration is a typo
# Datetimes SQLite and every platform's C library can represent without trouble.
EARLIEST_TS = 0.0
LATEST_TS = 253402300799.0  # 9999-12-31T23:59:59Z

JOB_FIELDS = ("id", "command", "max_retries", "priority", "run_at", "delay", "timeout", "cwd", "env")

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# YYYY-MM-DD, then optionally T (or a space) and hh[:mm[:ss[.fraction]]], then an optional
# zone: Z, +hh, +hhmm or +hh:mm. Colons in the time may be left out (basic format).
_TIMESTAMP_RE = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2})(?::?(\d{2})(?::?(\d{2})(?:[.,](\d+))?)?)?)?"
    r"\s*([Zz]|[+-]\d{2}(?::?\d{2})?)?\s*$")


# ---------------------------------------------------------------- durations and times

def parse_duration(value, what, *, allow_zero=True):
    """Seconds (>= 0, or > 0 without `allow_zero`) from a number or a string like
    "30", "1.5s", "5m", "2h", "1d". Raises InvalidJob naming `what`."""
    if isinstance(value, bool):
        raise InvalidJob("%s must be a number of seconds or a duration like 30s, 5m, 2h, 1d, not %s"
                         % (what, _describe(value)))
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float (JSON allows any number of digits)
            seconds = math.inf
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise InvalidJob("%s must be a number of seconds or a duration like 30s, 5m, 2h, 1d, not %r"
                             % (what, value))
        seconds = float(m.group(1)) * _UNIT_S[m.group(2).lower()]
    else:
        raise InvalidJob("%s must be a number of seconds or a duration like 30s, 5m, 2h, 1d, not %s"
                         % (what, _describe(value)))
    if not math.isfinite(seconds) or seconds > SECONDS_LIMIT:
        raise InvalidJob("%s must be at most %d seconds (ten years)" % (what, SECONDS_LIMIT))
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise InvalidJob("%s must be %s 0 seconds" % (what, "at least" if allow_zero else "more than"))
    return seconds


def parse_timestamp(value, what="run_at"):
    """Epoch seconds from ISO 8601 text; no zone means local time, `Z` means UTC.

    Parsed by hand, not with datetime.fromisoformat: before Python 3.11 that
    refuses `Z`, `+0200`, `+02` and fractions that are not 3 or 6 digits, and
    a job must mean the same thing whichever Python enqueues it.
    """
    if not isinstance(value, str):
        raise InvalidJob("%s must be an ISO 8601 timestamp string, not %s" % (what, _describe(value)))
    m = _TIMESTAMP_RE.match(value)
    try:
        if not m:
            raise ValueError
        year, month, day, hour, minute, second, fraction, zone = m.groups()
        micro = int((fraction or "0")[:6].ljust(6, "0"))
        tz = None
        if zone and zone in "Zz":
            tz = timezone.utc
        elif zone:
            sign = -1 if zone[0] == "-" else 1
            digits = zone[1:].replace(":", "")
            tz = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0)))
        stamp = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
                         micro, tz)
        seconds = stamp.timestamp()  # a naive datetime is taken as local time
    except (ValueError, OverflowError, OSError):
        raise InvalidJob("%s must be an ISO 8601 timestamp like 2026-01-31T09:00:00Z, not %r"
                         % (what, value)) from None
    if not EARLIEST_TS <= seconds <= LATEST_TS:
        raise InvalidJob("%s must be between 1970 and 9999, not %r" % (what, value))
    return seconds


def iso(seconds):
    """ISO 8601 UTC text with milliseconds and a `Z`, or None."""
    if seconds is None:
        return None
    stamp = datetime.fromtimestamp(seconds, timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (stamp.microsecond // 1000)


def retries_left(attempts, max_retries):
    """Whether a job that has started `attempts` runs may run again after a failure."""
    return attempts <= max_retries


def backoff_delay(failures, base, cap):
    """Seconds to wait after the `failures`-th failed run: min(base ** failures, cap)."""
    try:
        return min(float(base) ** failures, float(cap))
    except OverflowError:
        return float(cap)


# ---------------------------------------------------------------- jobs

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
        raise InvalidJob("a job must be a JSON object, not %s" % _describe(raw))
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
        raise InvalidJob("command must be a string, not %s" % _describe(command))
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
        raise InvalidJob("id must be a string, not %s" % _describe(job_id))
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
        raise InvalidJob("env must be an object of strings, not %s" % _describe(env))
    for key, value in env.items():
        # A control character in a name would also break the lines of list and show.
        if not key or "=" in key or any(is_control(ch) for ch in key):
            raise InvalidJob("env key %r is not a valid variable name" % (key,))
        if not isinstance(value, str):
            raise InvalidJob("env value of %r must be a string, not %s" % (key, _describe(value)))
        if "\x00" in value:
            raise InvalidJob("env value of %r must not contain a NUL character" % (key,))
        check_unicode(key, "env key")
        check_unicode(value, "env value of %r" % (key,), secret=True)
    return env


def _int_field(value, name, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJob("%s must be an integer, not %s" % (name, _describe(value)))
    if not low <= value <= high:
        raise InvalidJob("%s must be between %d and %d (got %d)" % (name, low, high, value))
    return value


def is_control(ch):
    code = ord(ch)
    return code < 32 or 127 <= code < 160 or code in (0x2028, 0x2029)


def _reject_constant(name):
    raise ValueError("%s is not a number JSON allows" % name)


def _describe(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "the number %s" % (value,)
    if isinstance(value, str):
        return "the string %r" % (value[:60],)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def format_seconds(value):
    """2 -> '2', 0.5 -> '0.5': seconds as a person writes them."""
    return ("%g" % value) if value != int(value) else "%d" % value


# ---------------------------------------------------------------- config

def _int_setting(low, high=None):
    def check(key, value):
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ConfigError("%s must be an integer, not %r" % (key, value)) from None
        if number < low or (high is not None and number > high):
            raise ConfigError("%s must be %s, not %r" % (key, _range_text(low, high), value))
        return number
    check.valid = "integer " + _range_text(low, high)
    return check


def _seconds_setting(low, high=None, *, low_inclusive=True):
    def check(key, value):
        try:
            seconds = parse_duration(value if not isinstance(value, str) else value.strip(), key)
        except InvalidJob as exc:
            raise ConfigError(str(exc)) from None
        if seconds < low or (seconds == low and not low_inclusive) or (high is not None and seconds > high):
            raise ConfigError("%s must be %s, not %r" % (key, valid_text, value))
        return seconds
    valid_text = "seconds %s %s%s" % (">=" if low_inclusive else ">", format_seconds(low),
                                      "" if high is None else " and <= %s" % format_seconds(high))
    check.valid = valid_text
    return check


def _number_setting(low, high):
    def check(key, value):
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ConfigError("%s must be a number, not %r" % (key, value)) from None
        if not math.isfinite(number) or not low <= number <= high:
            raise ConfigError("%s must be a number from %s to %s, not %r" % (key, format_seconds(low), format_seconds(high), value))
        return number
    check.valid = "number from %s to %s" % (format_seconds(low), format_seconds(high))
    return check


def _range_text(low, high):
    return ">= %d" % low if high is None else "from %d to %d" % (low, high)


# key: (default, checker, what it does). Defaults live here and nowhere else.
CONFIG = {
    "max-retries": (3, _int_setting(0, MAX_RETRIES_LIMIT), "retries after the first run, for jobs enqueued later"),
    "backoff-base": (2.0, _number_setting(1, 1000000), "retry delay is backoff-base ** failures seconds"),
    "backoff-max": (3600.0, _seconds_setting(0, SECONDS_LIMIT, low_inclusive=False), "cap on one retry delay"),
    "job-timeout": (0.0, _seconds_setting(0, SECONDS_LIMIT), "default job timeout, 0 = none"),
    "worker-count": (1, _int_setting(1, 256), "threads per worker process, at its next start"),
    "lease-seconds": (30.0, _seconds_setting(0, 86400, low_inclusive=False),
                      "a running job's lease; a dead worker's jobs return after it"),
    "output-limit": (65536, _int_setting(0, 64 * 1024 * 1024), "bytes kept per stream per run (the tail)"),
    "poll-interval": (0.05, _seconds_setting(0.001, 60), "how often an idle worker looks for work"),
}


def config_key(name):
    """The canonical key for `name` (max_retries and max-retries are the same key)."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in CONFIG:
        raise ConfigError("unknown config key %r (valid keys: %s)" % (name, ", ".join(CONFIG)))
    return key


def config_value(key, value):
    """The checked value of `value` (text or number) for canonical `key`."""
    return CONFIG[key][1](key, value)


def config_defaults():
    return {key: spec[0] for key, spec in CONFIG.items()}


# ---------------------------------------------------------------- the public shape

def public_job(row):
    """A stored job as `show --json` / `list --json` print it (env values masked)."""
    state = row["state"]
    return {
        "id": row["id"], "command": row["command"], "state": state, "attempts": row["attempts"],
        "max_retries": row["max_retries"], "priority": row["priority"], "run_at": iso(row["run_at"]),
        "timeout": row["timeout"], "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"]),
        "next_run_at": iso(row["next_run_at"]) if state in (PENDING, FAILED) else None,
        "last_error": row["last_error"], "exit_code": row["exit_code"], "cwd": row["cwd"],
        "env": mask_env(row["env"]), "worker": row["worker"], "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
    }


def public_worker(worker):
    """A live worker as `worker list --json` prints it."""
    return {"id": worker["id"], "pid": worker["pid"], "host": worker["host"], "threads": worker["threads"],
            "started_at": iso(worker["started_at"]), "heartbeat_at": iso(worker["heartbeat_at"]),
            "running": worker["running"]}


def public_run(run):
    """One run as `show --json` prints it."""
    duration = None
    if run["started_at"] is not None and run["finished_at"] is not None:
        duration = round(run["finished_at"] - run["started_at"], 3)
    return {"run": run["run"], "attempt": run["attempt"], "started_at": iso(run["started_at"]),
            "finished_at": iso(run["finished_at"]), "duration": duration, "exit_code": run["exit_code"],
            "error": run["error"], "worker": run["worker"]}
