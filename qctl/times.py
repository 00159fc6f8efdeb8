"""Durations and timestamps: what users type, and the ISO 8601 text we print.

Parsed by hand, not with datetime.fromisoformat: a job must mean the same
thing whichever Python (3.8 or 3.11) enqueues it.
"""

import math
import re

from .errors import InvalidJob, describe

SECONDS_LIMIT = 10 * 365 * 86400  # ten years: any longer duration is a typo
# Datetimes SQLite and every platform's C library can represent without trouble.
EARLIEST_TS = 0.0
LATEST_TS = 253402300799.0  # 9999-12-31T23:59:59Z

# The patterns are compiled on first use (by `re`'s own cache), not on import: most commands
# parse no time at all, and every command imports this module.
_DURATION_RE = r"(?i)^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$"
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# YYYY-MM-DD, then optionally T (or a space) and hh[:mm[:ss[.fraction]]], then an optional
# zone: Z, +hh, +hhmm or +hh:mm. Colons in the time may be left out (basic format).
_TIMESTAMP_RE = (
    r"^\s*(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2})(?::?(\d{2})(?::?(\d{2})(?:[.,](\d+))?)?)?)?"
    r"\s*([Zz]|[+-]\d{2}(?::?\d{2})?)?\s*$")


def parse_duration(value, what, *, allow_zero=True):
    """Seconds (>= 0, or > 0 without `allow_zero`) from a number or a string like
    "30", "1.5s", "5m", "2h", "1d". Raises InvalidJob naming `what`."""
    if isinstance(value, bool):
        raise InvalidJob("%s must be a number of seconds or a duration like 30s, 5m, 2h, 1d, not %s"
                         % (what, describe(value)))
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float (JSON allows any number of digits)
            seconds = math.inf
    elif isinstance(value, str):
        m = re.match(_DURATION_RE, value)
        if not m:
            raise InvalidJob("%s must be a number of seconds or a duration like 30s, 5m, 2h, 1d, not %r"
                             % (what, value))
        seconds = float(m.group(1)) * _UNIT_S[m.group(2).lower()]
    else:
        raise InvalidJob("%s must be a number of seconds or a duration like 30s, 5m, 2h, 1d, not %s"
                         % (what, describe(value)))
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
    from datetime import datetime, timedelta, timezone  # here: only a timestamp given needs it
    if not isinstance(value, str):
        raise InvalidJob("%s must be an ISO 8601 timestamp string, not %s" % (what, describe(value)))
    m = re.match(_TIMESTAMP_RE, value)
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
    from datetime import datetime, timezone  # here: most commands print no timestamp
    stamp = datetime.fromtimestamp(seconds, timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (stamp.microsecond // 1000)


def format_seconds(value):
    """2 -> '2', 0.5 -> '0.5': seconds as a person writes them."""
    return ("%g" % value) if value != int(value) else "%d" % value
