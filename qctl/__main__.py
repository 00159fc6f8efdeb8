"""`python -m qctl`: the same command line as `queuectl` and `python queuectl.py`."""

import sys

from queuectl import main

sys.exit(main())
