"""Config keys: one table says each key's default, what it accepts and what it does.

Values are stored in the database (`Store.config` / `Store.set_config`) and
checked here once, as `config set` hands them over as text.
"""

import math
from collections import namedtuple

from .errors import ConfigError, InvalidJob
from .times import SECONDS_LIMIT, format_seconds, parse_duration

MAX_RETRIES_LIMIT = 1000


# collections' namedtuple, not typing's: typing costs every command ~3 ms of start-up where
# nothing else imports it. default: any value; parse(key, value) -> the checked value, or
# raises ConfigError; valid: what `parse` accepts, in words; meaning: a line for `config list`.
Setting = namedtuple("Setting", "default parse valid meaning")


def _int_setting(default, low, high, meaning):
    def parse(key, value):
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ConfigError("%s must be an integer, not %r" % (key, value)) from None
        if not low <= number <= high:
            raise ConfigError("%s must be %s, not %r" % (key, valid, value))
        return number
    valid = "an integer from %d to %d" % (low, high)
    return Setting(default, parse, valid, meaning)


def _seconds_setting(default, low, high, meaning, *, low_inclusive=True):
    def parse(key, value):
        try:
            seconds = parse_duration(value.strip() if isinstance(value, str) else value, key)
        except InvalidJob as exc:
            raise ConfigError(str(exc)) from None
        if seconds < low or (seconds == low and not low_inclusive) or seconds > high:
            raise ConfigError("%s must be %s, not %r" % (key, valid, value))
        return seconds
    valid = "seconds %s %s and <= %s" % (">=" if low_inclusive else ">", format_seconds(low), format_seconds(high))
    return Setting(default, parse, valid, meaning)


def _number_setting(default, low, high, meaning):
    def parse(key, value):
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ConfigError("%s must be a number, not %r" % (key, value)) from None
        if not math.isfinite(number) or not low <= number <= high:
            raise ConfigError("%s must be %s, not %r" % (key, valid, value))
        return number
    valid = "a number from %s to %s" % (format_seconds(low), format_seconds(high))
    return Setting(default, parse, valid, meaning)


def _command_setting(meaning):
    def parse(key, value):
        text = str(value).strip()
        if "\x00" in text or len(text.encode("utf-8", "surrogatepass")) > 4096:
            raise ConfigError("%s must be %s" % (key, valid))
        return text
    valid = "a shell command of at most 4096 bytes, or '' for none"
    return Setting("", parse, valid, meaning)


# Defaults live here and nowhere else.
SETTINGS = {
    "max-retries": _int_setting(3, 0, MAX_RETRIES_LIMIT, "retries after the first run, for jobs enqueued later"),
    "backoff-base": _number_setting(2.0, 1, 1000000, "retry delay is backoff-base ** failures seconds"),
    "backoff-max": _seconds_setting(3600.0, 0, SECONDS_LIMIT, "cap on one retry delay", low_inclusive=False),
    "job-timeout": _seconds_setting(0.0, 0, SECONDS_LIMIT, "default job timeout, 0 = none"),
    "worker-count": _int_setting(1, 1, 256, "threads per worker process, at its next start"),
    # Below 1 s a loaded machine cannot renew leases in time: live workers would lose their jobs.
    "lease-seconds": _seconds_setting(30.0, 1, 86400, "a running job's lease; a dead worker's jobs return after it"),
    "output-limit": _int_setting(65536, 0, 64 * 1024 * 1024, "bytes kept per stream per run (the tail)"),
    "poll-interval": _seconds_setting(0.05, 0.001, 60, "how often an idle worker looks, if not woken"),
    "retain-completed": _seconds_setting(7 * 86400.0, 0, SECONDS_LIMIT,
                                         "workers remove completed and cancelled jobs this old (0 = keep)"),
    "retain-dead": _seconds_setting(0.0, 0, SECONDS_LIMIT, "workers remove dead jobs this old (0 = keep)"),
    "on-finish": _command_setting("a shell command run after every finished run (see README: hooks)"),
}


def key(name):
    """The canonical key for `name` (max_retries and max-retries are the same key)."""
    canonical = str(name).strip().lower().replace("_", "-")
    if canonical not in SETTINGS:
        raise ConfigError("unknown config key %r (valid keys: %s)" % (name, ", ".join(SETTINGS)))
    return canonical


def value(canonical_key, raw):
    """The checked value of `raw` (text or number) for `canonical_key`."""
    return SETTINGS[canonical_key].parse(canonical_key, raw)


def defaults():
    return {name: setting.default for name, setting in SETTINGS.items()}
