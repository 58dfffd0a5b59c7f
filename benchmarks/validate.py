"""How long `fedsim validate scenarios/*.yaml` takes, and which heavy libraries it loads.

Each run is a fresh interpreter (what a user waits for). With `--vs-ref REF`, the same
command runs from a temporary checkout of git revision REF, alternating with this tree's
runs, and the script prints the ratio of medians; e.g. against the last commit before the
package restructuring:

    python benchmarks/validate.py --vs-ref 263a502 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import sys, runpy; sys.argv = ['fedsim', 'validate', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('fedsim', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'flwr', 'ray', 'matplotlib'}),"
         " file=sys.stderr)")


def _time_once(tree: Path, files: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", PROBE, *files], cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"validate failed in {tree}: {res.stderr.strip().splitlines()[-1:]}")
    heavy = next((ln for ln in res.stderr.splitlines() if ln.startswith("HEAVY")), "HEAVY ?")
    return wall, heavy.removeprefix("HEAVY ")


def main() -> None:
    """Parse the command line, time `fedsim validate` on every scenario file and print the medians."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--vs-ref", help="git revision to compare against (checked out to a temporary folder)")
    args = ap.parse_args()
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scenarios").glob("*.yaml"))
    trees = {"this tree": ROOT}
    tmp = None
    if args.vs_ref:
        tmp = tempfile.mkdtemp(prefix="fedsim-ref-")
        subprocess.run(["git", "worktree", "add", "--detach", tmp, args.vs_ref], cwd=ROOT, check=True,
                       capture_output=True)
        trees[args.vs_ref] = Path(tmp)
    try:
        times: dict[str, list[float]] = {k: [] for k in trees}
        heavy: dict[str, str] = {}
        for tree in trees.values():  # warm-up (file cache, .pyc)
            _time_once(tree, files)
        for _ in range(args.repeats):
            for name, tree in trees.items():  # alternate, so drift hits both alike
                wall, heavy[name] = _time_once(tree, files)
                times[name].append(wall)
        print(f"fedsim validate on {len(files)} scenarios, {args.repeats} fresh processes each (median wall s)")
        for name in trees:
            print(f"  {name:<12} {statistics.median(times[name]):6.3f} s   heavy libraries loaded: {heavy[name]}")
        if args.vs_ref:
            ratio = statistics.median(times[args.vs_ref]) / statistics.median(times["this tree"])
            print(f"  speed-up vs {args.vs_ref}: {ratio:.2f}x")
    finally:
        if tmp:
            subprocess.run(["git", "worktree", "remove", "--force", tmp], cwd=ROOT, capture_output=True)


if __name__ == "__main__":
    main()
