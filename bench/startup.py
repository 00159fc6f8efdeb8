"""Start-up: wall time of `python queuectl.py status` against `python -c pass`.

The limit is the interpreter's own start-up: everything queuectl adds (imports,
building the parser, opening the database) is the ratio above 1.0. The two are
run alternately so that machine load hits both alike.

    python bench/startup.py [--quick] [--runs N]
"""

import subprocess
import sys
import time

from common import cli_env, home_in, machine, median, options, run_cli, table, temp_home, SCRIPT


def wall(argv, env):
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main():
    args = options(__doc__.splitlines()[0], runs=40, quick_runs=5)
    with temp_home() as tmp:
        home = home_in(tmp)
        run_cli(home, "status")  # create the home and schema: not part of what is measured
        env = cli_env(home)
        bare, status = [], []
        for _ in range(args.runs):
            bare.append(wall([sys.executable, "-c", "pass"], env))
            status.append(wall([sys.executable, SCRIPT, "status"], env))
    print(machine())
    table("start-up, median of %d alternating runs" % args.runs, ["command", "ms", "x python -c pass"],
          [["python -c pass", "%.1f" % (median(bare) * 1000), "1.00"],
           ["python queuectl.py status", "%.1f" % (median(status) * 1000), "%.2f" % (median(status) / median(bare))]])


if __name__ == "__main__":
    main()
