"""queuectl: a background job queue for shell commands, standard library only.

`from qctl import Queue` is the Python API (qctl/api.py), imported only when asked
for: every command starts through this package and pays for what it imports.
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name == "Queue":
        from .api import Queue
        return Queue
    raise AttributeError("module 'qctl' has no attribute %r" % (name,))
