"""Batch enqueue: jobs/s of `queuectl enqueue --file` end to end, interpreter start included.

The file is JSON Lines, one `{"command": ...}` object a line (ids generated,
as most batch users would). The limit it is compared with is reading the file
and parsing every line with `json.loads` in the same interpreter: the part no
implementation can skip.

    python -m bench.enqueue [--quick] [--runs N] [--jobs N]
"""

import json
import os
import subprocess
import sys
import time

from bench.common import home_in, machine, median, options, run_cli, table, temp_home

from qctl import home as qhome
from qctl.db import Store


def parse_only(path):
    """Seconds for a fresh interpreter to read and json.loads every line: the floor."""
    code = ("import json, sys\n"
            "with open(sys.argv[1], 'rb') as fh:\n"
            "    [json.loads(line) for line in fh.read().decode('utf-8').splitlines()]")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, path], check=True)
    return time.perf_counter() - started


def main():
    def extra(parser):
        parser.add_argument("--jobs", type=int, help="jobs in the file (default 100000, quick 5000)")
    args = options(__doc__, runs=3, extra=extra)
    count = args.jobs or (5000 if args.quick else 100000)
    ours, floor, size = [], [], 0
    with temp_home() as tmp:
        path = os.path.join(tmp, "jobs.jsonl")
        with open(path, "w") as fh:
            for n in range(count):
                fh.write(json.dumps({"command": "echo job %d" % n}) + "\n")
        for run in range(args.runs):
            home = home_in(tmp) + str(run)
            floor.append(count / parse_only(path))
            took, _ = run_cli(home, "enqueue", "--file", path)
            ours.append(count / took)
            with Store(qhome.ensure(home)) as store:
                stored = sum(store.counts().values())
            if stored != count:
                raise SystemExit("%d of %d jobs were stored" % (stored, count))
            size = os.path.getsize(os.path.join(home, qhome.DB_NAME))
    print(machine())
    table("batch enqueue of %d jobs from a file, end to end, median of %d runs" % (count, args.runs),
          ["what", "jobs/s", "x floor"],
          [["python: read + json.loads each line (floor)", "%.0f" % median(floor), "1.00"],
           ["queuectl enqueue --file", "%.0f" % median(ours), "%.2f" % (median(ours) / median(floor))]])
    print("database after one batch: %.0f bytes per job" % (size / count))


if __name__ == "__main__":
    main()
