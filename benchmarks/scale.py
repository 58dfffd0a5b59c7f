"""Peak memory and per-round time with 1k, 10k and 100k registered clients.

Each size runs in a fresh subprocess (so peak RSS is that run's own) on the same workload:
linear_regression (dim 10, 20 examples per client), 100 clients per round (uniform k),
1 local step, FedAvg, evaluation every 10 rounds with per-client rows only for clients
that have participated (`metrics.client_metrics: participants`) and fairness metrics on a
fixed sample of 1,000 clients (`metrics.client_sample`).

    python benchmarks/scale.py [--sizes 1000 10000 100000] [--rounds 50] [--k 100]

Prints, per size: setup seconds (data + engine start), median seconds per round (rounds
without an evaluation), mean seconds per round including evaluations, peak RSS (MiB) and
the ratio of per-round time to the smallest size's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def scenario(n: int, rounds: int, k: int) -> dict:
    """The benchmark scenario as a mapping: n clients, `rounds` FedAvg rounds of k clients each."""
    return {
        "name": f"scale-{n}", "seed": 0,
        "data": {"dataset": {"name": "linear_regression", "dim": 10, "samples_per_client": 20, "num_test": 2000},
                 "partition": {"name": "natural"}, "num_clients": n, "test_fraction": 0.2},
        "model": {"name": "linear", "device": "cpu"},
        "client": {"local_steps": 1, "batch_size": 32, "lr": 0.05},
        "participation": {"name": "uniform", "k": k},
        "engine": {"mode": "sync", "rounds": rounds},
        "strategy": {"name": "fedavg"},
        "metrics": {"eval_every": 10, "client_metrics": "participants", "client_sample": 1000},
    }


def child(n: int, rounds: int, k: int) -> dict:
    """Run one size in this process.

    Returns:
        Setup, first-round, median and mean round seconds and peak RSS (MiB), as JSON-able values.
    """
    from fedsim.runner import run
    from fedsim.scenario.loading import from_mapping

    t0 = time.perf_counter()
    stamps: list[tuple[int, float, bool]] = []
    started: list[float] = []
    sc = from_mapping(scenario(n, rounds, k))
    with tempfile.TemporaryDirectory() as out:
        run(sc, Path(out), on_progress=lambda r, rec: stamps.append((r, time.perf_counter(), bool(rec))),
            on_start=lambda _: started.append(time.perf_counter()))
    first = stamps[0][1]
    gaps = [(b[1] - a[1], b[2]) for a, b in zip(stamps, stamps[1:], strict=False)]
    plain = [g for g, evaluated in gaps if not evaluated]
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"clients": n, "setup_s": started[0] - t0, "first_round_s": first - started[0],
            "round_median_s": statistics.median(plain),
            "round_mean_s": (stamps[-1][1] - first) / (len(stamps) - 1),
            "peak_rss_mib": peak_kib / 1024}


def main() -> None:
    """Parse the command line, run each size in a fresh subprocess and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rounds, args.k)))
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rows = []
    for n in args.sizes:
        res = subprocess.run([sys.executable, __file__, "--child", str(n), "--rounds", str(args.rounds),
                              "--k", str(args.k)], capture_output=True, text=True, env=env, cwd=ROOT)
        if res.returncode != 0:
            sys.exit(f"{n} clients failed:\n{res.stderr[-3000:]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    base = rows[0]["round_median_s"]
    print(f"{'clients':>8} {'setup s':>8} {'round s (median)':>17} {'round s (mean, with evals)':>27} "
          f"{'peak RSS MiB':>13} {'round / smallest':>17}")
    for r in rows:
        print(f"{r['clients']:>8,} {r['setup_s']:>8.2f} {r['round_median_s']:>17.4f} {r['round_mean_s']:>27.4f} "
              f"{r['peak_rss_mib']:>13.0f} {r['round_median_s'] / base:>17.2f}")


if __name__ == "__main__":
    main()
