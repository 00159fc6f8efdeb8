"""Start-up: wall time of `python queuectl.py status` against `python -c pass`.

The limit is the interpreter's own start-up: everything queuectl adds is the
ratio above 1.0. The two are run alternately so that machine load hits both
alike. A breakdown of what queuectl adds, timed inside a fresh interpreter:
compiling queuectl.py (a script's bytecode is never cached), its imports,
building the argparse parser, and the rest of main() (parse, open the
database, count, print). `python -m qctl status` runs the same main() from
queuectl.py imported as a module, whose bytecode is cached: the difference is
the compile.

    python -m bench.startup [--quick] [--runs N]
"""

import json
import subprocess
import sys
import time

from bench.common import ROOT, SCRIPT, cli_env, home_in, machine, median, options, run_cli, table, temp_home

BREAKDOWN = """
import io, json, sys, time
t0 = time.perf_counter()
with open(sys.argv[1]) as fh:
    code = compile(fh.read(), sys.argv[1], "exec")
t1 = time.perf_counter()
cli = {"__name__": "queuectl_breakdown", "__file__": sys.argv[1]}
exec(code, cli)
t2 = time.perf_counter()
cli["build_parser"]()
t3 = time.perf_counter()
real, sys.stdout = sys.stdout, io.StringIO()
cli["main"](["status"])
t4 = time.perf_counter()
sys.stdout = real
print(json.dumps({"compile queuectl.py": t1 - t0, "imports": t2 - t1, "build the parser": t3 - t2,
                  "rest of main(): parse, open, count, print": (t4 - t3) - (t3 - t2)}))
"""


def wall(argv, env, cwd=None):
    started = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main():
    args = options(__doc__, runs=40, quick_runs=5)
    with temp_home() as tmp:
        home = home_in(tmp)
        run_cli(home, "status")  # create the home and schema: not part of what is measured
        env = cli_env(home)
        bare, status, module, parts = [], [], [], []
        for _ in range(args.runs):
            bare.append(wall([sys.executable, "-c", "pass"], env))
            status.append(wall([sys.executable, SCRIPT, "status"], env))
            module.append(wall([sys.executable, "-m", "qctl", "status"], env, cwd=ROOT))
            # Run from the repo root, so qctl imports as it does for `python queuectl.py`.
            parts.append(json.loads(subprocess.run([sys.executable, "-c", BREAKDOWN, SCRIPT], env=env, cwd=ROOT,
                                                   stdout=subprocess.PIPE, check=True).stdout))
    print(machine())
    table("start-up, median of %d alternating runs" % args.runs, ["command", "ms", "x python -c pass"],
          [["python -c pass", "%.1f" % (median(bare) * 1000), "1.00"],
           ["python queuectl.py status", "%.1f" % (median(status) * 1000), "%.2f" % (median(status) / median(bare))],
           ["python -m qctl status (queuectl.py's bytecode cached)", "%.1f" % (median(module) * 1000),
            "%.2f" % (median(module) / median(bare))]])
    table("what status adds, timed inside the interpreter, median of %d runs" % args.runs,
          ["part", "ms", "x python -c pass"],
          [[part, "%.1f" % (median([p[part] for p in parts]) * 1000),
            "%.2f" % (median([p[part] for p in parts]) / median(bare))] for part in parts[0]])


if __name__ == "__main__":
    main()
