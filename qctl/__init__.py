"""queuectl: a background job queue for shell commands, standard library only."""

__version__ = "0.1.0"
