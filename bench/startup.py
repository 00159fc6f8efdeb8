"""Start-up: what `python queuectl.py status` adds to `python -c pass`, in milliseconds.

The limit is the interpreter's own start-up: what queuectl adds is the difference
(the target is at most 8 ms). The commands run in turn, round after round, so
that load on the machine hits them alike, and each round's differences are taken
against that round's `python -c pass`; the figures are their medians, and beside
them the fastest run of each against the fastest `python -c pass`: load only
adds time, so on a busy machine those are the closer to what each costs.

`python -m qctl status` runs the same main() from queuectl.py imported as a
module, whose bytecode is cached: the difference is the compile of the script
(a script's bytecode is never cached). `-S` runs both without the `site`
module: an interpreter whose site imports nothing for anyone (this sandbox's
site-packages has a .pth that imports certifi, which brings in re, typing,
pathlib, shutil and threading before any script starts, so they cost queuectl
nothing here). `--before PATH` times another checkout's queuectl.py in the same
rounds (e.g. one exported with `git archive`), for a before/after under one load.

A breakdown of what queuectl adds, timed inside a fresh interpreter: compiling
queuectl.py, its imports, building the parser `status` needs, and the rest of
main() (parse, open the database, count, print).

    python -m bench.startup [--quick] [--runs N] [--before PATH/queuectl.py]
"""

import json
import os
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
chosen = cli.get("chosen_command")  # older queuectl.py built the whole tree
cli["build_parser"](*([chosen(["status"])] if chosen else []))
t3 = time.perf_counter()
real, sys.stdout = sys.stdout, io.StringIO()
cli["main"](["status"])
t4 = time.perf_counter()
sys.stdout = real
print(json.dumps({"compile queuectl.py": t1 - t0, "imports": t2 - t1, "build the parser status needs": t3 - t2,
                  "rest of main(): parse, open, count, print": (t4 - t3) - (t3 - t2)}))
"""


def wall(argv, env, cwd=None):
    started = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main():
    def extra(parser):
        parser.add_argument("--before", metavar="PATH", help="another queuectl.py to time in the same rounds")
    args = options(__doc__, runs=60, quick_runs=5, extra=extra)
    py = sys.executable
    # (label, argv, cwd, the bare interpreter its difference is taken against)
    commands = [("python queuectl.py status", [py, SCRIPT, "status"], None, "bare"),
                ("python -m qctl status (bytecode of queuectl.py cached)", [py, "-m", "qctl", "status"], ROOT, "bare"),
                ("python -S queuectl.py status, against python -S -c pass", [py, "-S", SCRIPT, "status"], None,
                 "bare -S")]
    if args.before:
        before = os.path.abspath(args.before)
        commands.insert(1, ("before: python %s status" % os.path.relpath(before), [py, before, "status"],
                            None, "bare"))
        commands.append(("before: python -S %s status" % os.path.relpath(before), [py, "-S", before, "status"],
                         None, "bare -S"))
    with temp_home() as tmp:
        home = home_in(tmp)
        run_cli(home, "status")  # create the home and schema: not part of what is measured
        env = cli_env(home)
        bare = {"bare": [], "bare -S": []}
        times = {label: [] for label, *_ in commands}
        diffs = {label: [] for label, *_ in commands}
        parts = []
        for run in range(args.runs):
            bare["bare"].append(wall([py, "-c", "pass"], env))
            bare["bare -S"].append(wall([py, "-S", "-c", "pass"], env))
            order = commands if run % 2 == 0 else commands[::-1]
            for label, argv, cwd, against in order:
                took = wall(argv, env, cwd)
                times[label].append(took)
                diffs[label].append(took - bare[against][-1])
            # Run from the repo root, so qctl imports as it does for `python queuectl.py`.
            parts.append(json.loads(subprocess.run([py, "-c", BREAKDOWN, SCRIPT], env=env, cwd=ROOT,
                                                   stdout=subprocess.PIPE, check=True).stdout))
    print(machine())
    rows = [["python -c pass", "%.1f" % (median(bare["bare"]) * 1000), "", "%.1f" % (min(bare["bare"]) * 1000), ""],
            ["python -S -c pass", "%.1f" % (median(bare["bare -S"]) * 1000), "",
             "%.1f" % (min(bare["bare -S"]) * 1000), ""]]
    rows += [[label, "%.1f" % (median(times[label]) * 1000), "%+.1f" % (median(diffs[label]) * 1000),
              "%.1f" % (min(times[label]) * 1000), "%+.1f" % ((min(times[label]) - min(bare[against])) * 1000)]
             for label, _, _, against in commands]
    # Load only ever adds time: on a busy machine the fastest runs are the closest to what the
    # commands cost, and the medians mostly say how busy it was.
    table("start-up, %d rounds (the target: python queuectl.py status adds at most 8 ms)" % args.runs,
          ["command", "median ms", "adds (median of rounds)", "fastest ms", "adds (fastest)"], rows)
    table("what status adds, timed inside the interpreter, median of %d runs" % args.runs, ["part", "ms"],
          [[part, "%.1f" % (median([p[part] for p in parts]) * 1000)] for part in parts[0]])


if __name__ == "__main__":
    main()
