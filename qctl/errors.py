"""Expected failures. `queuectl.main()` turns each into one line on stderr and exit 1.

Anything that is not a QueueError is a bug and is reported as one.
"""


class QueueError(Exception):
    """Base class of every error a user can cause or meet."""


class InvalidJob(QueueError):
    """A job (or a command-line value) failed validation; nothing was stored."""


class JobNotFound(QueueError):
    def __init__(self, job_id):
        super().__init__("no job with id %r" % (job_id,))
        self.job_id = job_id


class ScheduleNotFound(QueueError):
    def __init__(self, name):
        super().__init__("no schedule named %r" % (name,))


class DuplicateJob(QueueError):
    """`index`: the position of the offending job in the batch given to `Store.enqueue`."""

    def __init__(self, job_id, index=0):
        super().__init__("a job with id %r already exists" % (job_id,))
        self.job_id = job_id
        self.index = index


class BadDependency(InvalidJob):
    """A job's `after` names an unknown job, or jobs of one batch wait for each other; `index`: the
    position of the offending job in the batch given to `Store.enqueue`."""

    def __init__(self, message, index=0):
        super().__init__(message)
        self.index = index


class InvalidState(QueueError):
    """A transition asked of a job in the wrong state (retry a live job, delete a running one)."""


class ConfigError(QueueError):
    """An unknown config key or a bad value."""


class StoreError(QueueError):
    """The database could not be used: locked too long, not a database, read-only, disk full."""


class DatabaseDamaged(StoreError):
    """The database file is damaged (malformed, not a database): retrying will not help."""


def describe(value):
    """A user's value as an error message names it: `the string 'x'`, `an array`, `null`."""
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
