"""When a recurring job (a schedule) fires next: `--every DURATION` or `--cron "M H DOM MON DOW"`.

Pure functions, no SQL. A schedule's spec is kept as text: `every SECONDS` or
`cron M H DOM MON DOW`. Cron fields are the standard five, in local time, each a
comma list of `*`, `N`, `A-B`, with an optional `/STEP` (`*/15`, `1-30/5`, `5/10`
= `5-max/10`). Day of month and day of week combine as cron does: when both are
restricted (neither starts with `*`, which as in Vixie cron makes even `*/2`
unrestricted) a day matching either fires; otherwise both must match. Day of week 0 and 7 are Sunday.

Local time follows the system zone (`TZ`). When clocks go forward, a time in the
skipped hour fires once, moved on by the change (02:30 fires at 03:30, and a
quarter-hourly spec's skipped times come to one fire at 03:00); when they go
back, the repeated hour fires once, not twice (every-N-minutes specs skip its
second pass: cron's fixed-time rule, applied to all).
"""

import datetime
import time

from .errors import InvalidJob
from .times import format_seconds, parse_duration

FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12), ("day-of-week", 0, 7))
SEARCH_DAYS = 366 * 8 + 2  # Feb 29, the rarest day a spec can name, comes round within 8 years


def every_spec(text):
    """The spec of `--every TEXT` (90, 90s, 5m, 2h, 1d): at least a second apart."""
    seconds = parse_duration(text, "--every", allow_zero=False)
    if seconds < 1:
        raise InvalidJob("--every must be at least 1s, not %s" % (text,))
    return "every %s" % format_seconds(seconds)


def cron_spec(text):
    """The spec of `--cron "M H DOM MON DOW"`, checked (one error naming the bad field)."""
    if Cron(text).next_after(time.time()) is None:
        raise InvalidJob("cron %r never fires (no such day)" % (text,))
    return "cron " + " ".join(text.split())


def describe(spec):
    """A spec as people read it: `every 1h`, `cron 0 3 * * *`."""
    kind, _, rest = spec.partition(" ")
    if kind != "every":
        return spec
    seconds = float(rest)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return "every %d%s" % (seconds // size, unit)
    return "every %ss" % format_seconds(seconds)


def next_due(spec, *, now, due=None):
    """When a schedule with `spec` fires next after `now`. `due`: when it was due last (an
    `every` schedule keeps its phase: 10:00, 10:05, ... however late each fire ran);
    None for a new schedule (its first fire is one interval away, or the next cron time)."""
    kind, _, rest = spec.partition(" ")
    if kind == "every":
        step = float(rest)
        if due is None:
            return now + step
        missed = max(0, int((now - due) // step))  # fires missed while no worker ran: caught up by one
        nxt = due + (missed + 1) * step
        return nxt if nxt > now else nxt + step
    nxt = Cron(rest).next_after(now)
    if nxt is None:  # cannot be: cron_spec checked it fires
        raise InvalidJob("cron %r never fires" % (rest,))
    return nxt


class Cron:
    """A parsed five-field cron expression."""

    def __init__(self, text):
        if not isinstance(text, str):
            raise InvalidJob("a cron spec is text, like \"*/5 * * * *\"")
        parts = text.split()
        if len(parts) != 5:
            raise InvalidJob("a cron spec has 5 fields (minute hour day-of-month month day-of-week), not %d: %r"
                             % (len(parts), text))
        sets = [_field(part, *spec) for part, spec in zip(parts, FIELDS)]
        self.minutes, self.hours, self.days, self.months, weekdays = (sorted(s) for s in sets)
        self.weekdays = {day % 7 for day in weekdays}
        self.days_restricted = not parts[2].startswith("*")
        self.weekdays_restricted = not parts[4].startswith("*")

    def matches_day(self, day):
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.weekday() + 1) % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_month or in_week
        return in_month and in_week

    def next_after(self, now):
        """The first time after `now` (epoch seconds) that matches, or None within SEARCH_DAYS."""
        local = time.localtime(now)
        start = datetime.datetime(*local[:5]) + datetime.timedelta(minutes=1)  # whole minutes, after now
        day = start.date()
        for _ in range(SEARCH_DAYS):
            if self.matches_day(day):
                first = day == start.date()
                for hour in self.hours:
                    if first and hour < start.hour:
                        continue
                    for minute in self.minutes:
                        if first and hour == start.hour and minute < start.minute:
                            continue
                        # isdst -1: the zone decides. A time skipped by a change forward comes back as the
                        # moment after it (not before `now`); a repeated one as one of its two: both are
                        # checked against `now`, so nothing fires twice.
                        at = time.mktime((day.year, day.month, day.day, hour, minute, 0, 0, 0, -1))
                        if at > now:
                            return at
            day += datetime.timedelta(days=1)
        return None


def _field(text, name, low, high):
    """The set of values a cron field allows."""
    values = set()
    for item in text.split(","):
        body, slash, step_text = item.partition("/")
        step = 1
        if slash:
            step = _number(step_text, name, 1, high - low + 1, "a step")
        if body == "*":
            first, last = low, high
        elif "-" in body:
            a, _, b = body.partition("-")
            first, last = _number(a, name, low, high), _number(b, name, low, high)
            if first > last:
                raise InvalidJob("cron %s: the range %s runs backwards" % (name, body))
        else:
            first = _number(body, name, low, high)
            last = high if slash else first  # 5/10: from 5 to the end, every 10th
        values.update(range(first, last + 1, step))
    return values


def _number(text, name, low, high, what="a value"):
    if not text.isdigit() or not text.isascii():
        raise InvalidJob("cron %s: %r is not %s (use *, N, A-B, A,B or */N)" % (name, text, what))
    value = int(text)
    if not low <= value <= high:
        raise InvalidJob("cron %s: %s must be %d-%d, not %d" % (name, what, low, high, value))
    return value
