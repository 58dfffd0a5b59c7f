"""The vectorized executor side by side with plain PyTorch, fedsim inline and plain Flower.

All contestants train the same model with the same SGD steps on the same client data (the
plain contestants are those of benchmarks/executors.py).

    python benchmarks/vectorized.py [--workload quickstart|mlp1k|logreg10k|all] [--scaling]
                                    [--repeats 1] [--device cpu|cuda] [--only NAME ...] [--json FILE]

Workloads (every one derives from scenarios/quickstart.yaml by overrides):
  quickstart  the quickstart as shipped: digits, 50 clients, 10 per round, MLP 64, 60 rounds.
  mlp1k       1,000 clients per round of an MLP 64-64-10 on digits-size inputs (LEAF synthetic,
              64 features, 10 classes, 50 examples per client), 10 steps of batch 16 (the
              shape of scenarios/scale_vectorized.yaml, with data that needs no partitioner).
  logreg10k   10,000 clients per round of logistic regression (LEAF synthetic, 60 features,
              10 classes, 25 examples per client), 5 steps of batch 16.
`--scaling` trains logreg10k's federation with 1, 10, 100, 1,000 and 10,000 clients per round.

Every contestant runs in a fresh Python process (imports and start-up included). Reported:
end to end (wall time of the process), per round (median steady-state round, rounds 3..R),
training (fedsim only: mean time per round the engine waits for client results, i.e. the
executor's work without the engine's dispatch, validation, aggregation and evaluation),
client updates per second (clients per round / per round), and peak memory (the driver's
peak RSS; with --device cuda the peak CUDA allocation instead). `fedsim_vectorized_t2` (only
with --only) is the vectorized executor with 2 torch threads; every other contestant uses 1.
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
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

import executors as bench  # noqa: E402  (the shared plain contestants)

# (b) and (c) use LEAF's synthetic federation (per-client data, no partitioner), so that
# start-up is short and the same for every contestant; accuracy is not the point here.
MLP1K = ["data={dataset: {name: synthetic, dim: 64, num_classes: 10, samples_per_client: 50, num_test: 2000}, "
         "partition: {name: natural}, num_clients: 1000, test_fraction: 0.2}",
         "participation={name: uniform, k: 1000}", "engine.rounds=6", "metrics={eval_every: 3}"]


def logreg(k: int, rounds: int = 6) -> list[str]:
    """The logreg10k federation (10,000 clients) with `k` clients per round."""
    return ["data={dataset: {name: synthetic, dim: 60, num_classes: 10, samples_per_client: 25, num_test: 2000}, "
            "partition: {name: natural}, num_clients: 10000, test_fraction: 0.2}",
            "model={name: logreg}", "client={local_steps: 5, batch_size: 16, lr: 0.05}",
            f"participation={{name: uniform, k: {k}}}", f"engine.rounds={rounds}", "metrics={eval_every: 3}"]


WORKLOADS = {"quickstart": [], "mlp1k": MLP1K, "logreg10k": logreg(10_000)}
SCALING = (1, 10, 100, 1000, 10_000)
for _k in SCALING:
    WORKLOADS[f"logreg_k{_k}"] = logreg(_k)
bench.WORKLOADS.update(WORKLOADS)  # so that the plain contestants build the same scenarios

CONTESTANTS = ("plain_torch", "fedsim_inline", "fedsim_vectorized", "fedsim_vectorized_t2", "plain_flower")
# fedsim_vectorized_t2 only on request (--only): on a shared 2-core machine a second torch
# thread competes with whatever else runs there and can be many times slower.
DEFAULT = {"quickstart": ("plain_torch", "fedsim_inline", "fedsim_vectorized", "plain_flower"),
           "mlp1k": ("plain_torch", "fedsim_inline", "fedsim_vectorized"),
           "logreg10k": ("plain_torch", "fedsim_inline", "fedsim_vectorized")}
EXECUTOR = {"fedsim_inline": "{name: inline}", "fedsim_vectorized": "{name: vectorized}",
            "fedsim_vectorized_t2": "{name: vectorized, threads: 2}"}


def clients_per_round(workload: str) -> int:
    """Clients per round of a workload (its uniform `k`, else every client)."""
    sc = bench.scenario(workload, "cpu", [])
    return int(getattr(sc.participation, "k", sc.data.num_clients))


def run_fedsim(workload: str, device: str, name: str) -> dict:
    """Run one fedsim contestant in this process.

    Args:
        workload: a key of WORKLOADS.
        device: `cpu` or `cuda`.
        name: the contestant (which executor, and its settings).

    Returns:
        Round times, total run time, final accuracy and the time spent waiting for client results.
    """
    from fedsim.runner import run

    sc = bench.scenario(workload, device, [f"executor={EXECUTOR[name]}"])
    stamps: list[float] = []
    executor, waited = sc.executor.create(), [0.0]
    next_result = executor.next_result

    def timed() -> object:  # time the engine waits for client results: the training itself
        t = time.perf_counter()
        try:
            return next_result()
        finally:
            waited[0] += time.perf_counter() - t

    executor.next_result = timed
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run(sc, Path(tmp), on_progress=lambda step, rec: stamps.append(time.perf_counter()),
                  executor=executor)
        total = time.perf_counter() - t0
    return {"rounds": bench._diffs(stamps), "run": total, "accuracy": res.final.get("test_accuracy"),
            "train": waited[0] / sc.engine.rounds}


def one(name: str, workload: str, device: str) -> dict:
    """Run contestant `name` on `workload` in this process (the child side of `measure`)."""
    if name == "plain_torch":
        out = bench.run_plain_torch(workload, device)
    elif name == "plain_flower":
        out = bench.run_plain_flower(workload, device)
    else:
        out = run_fedsim(workload, device, name)
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    if device == "cuda":
        import torch

        out["peak_cuda"] = torch.cuda.max_memory_allocated()
    return out


def measure(name: str, workload: str, device: str) -> dict:
    """Run contestant `name` in a fresh Python process (start-up included) and read its numbers.

    Returns:
        The child's measurements plus its end-to-end wall time and peak memory.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--one", name, "--workload", workload, "--device", device],
                          capture_output=True, text=True, env=env, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall"] = wall
    return res


def steady(rounds: list[float]) -> float:
    """Median round time after the first two rounds (warm-up excluded)."""
    return statistics.median(rounds[2:] if len(rounds) > 2 else rounds)


def table(workload: str, names: list[str], repeats: int, device: str) -> dict:
    """Run `names` on `workload` (repeats interleaved) and print the table and ratios."""
    k = clients_per_round(workload)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(repeats):
        for name in names:
            r = measure(name, workload, device)
            runs[name].append(r)
            print(f"[{workload} {rep + 1}/{repeats}] {name:<21} wall {r['wall']:7.2f} s  "
                  f"round {steady(r['rounds']) * 1e3:9.1f} ms  acc {r['accuracy']}", file=sys.stderr, flush=True)
    summary = {n: {"wall": statistics.median(r["wall"] for r in rs),
                   "round": statistics.median(steady(r["rounds"]) for r in rs),
                   "peak_rss": max(r["peak_rss"] for r in rs), "peak_cuda": max(r.get("peak_cuda", 0) for r in rs),
                   "train": statistics.median(r.get("train", float("nan")) for r in rs),
                   "accuracy": rs[-1]["accuracy"]} for n, rs in runs.items()}
    print(f"\n{workload} ({k} clients per round, {device}, {os.cpu_count()} CPUs, median of {repeats}):")
    print(f"  {'contestant':<21} {'end to end':>11} {'per round':>11} {'training':>11} {'updates/s':>10} "
          f"{'peak MiB':>9} {'acc':>6}")
    for n, s in summary.items():
        acc = "n/a" if s["accuracy"] is None else f"{s['accuracy']:.3f}"
        mem = (s["peak_cuda"] or s["peak_rss"]) / 2**20
        train = "" if s["train"] != s["train"] else f"{s['train'] * 1e3:8.1f} ms"
        print(f"  {n:<21} {s['wall']:9.2f} s {s['round'] * 1e3:8.1f} ms {train:>11} {k / s['round']:10.0f} "
              f"{mem:9.0f} {acc:>6}")
    for fast in ("fedsim_vectorized", "fedsim_vectorized_t2"):
        for slow in ("fedsim_inline", "plain_torch", "plain_flower"):
            if fast in summary and slow in summary:
                a, b = summary[slow], summary[fast]
                line = (f"  {fast} vs {slow}: {a['wall'] / b['wall']:.2f}x end to end, "
                        f"{a['round'] / b['round']:.2f}x per round")
                if a["train"] == a["train"]:  # both fedsim: also the training alone
                    line += f", {a['train'] / b['train']:.2f}x training (time waiting for client results)"
                print(line)
    return summary


def main() -> None:
    """Parse the command line, run the tables and print the ratios."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=[*WORKLOADS, "all", "none"], default="all")
    ap.add_argument("--scaling", action="store_true", help="also sweep clients per round (logreg, 1..10k)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--only", nargs="*", choices=CONTESTANTS, help="contestants (default: per workload)")
    ap.add_argument("--one", choices=CONTESTANTS, help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write all measurements to this file")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.workload, args.device)))
        return
    report: dict = {"device": args.device, "cpus": os.cpu_count(), "repeats": args.repeats, "workloads": {}}
    workloads = list(DEFAULT) if args.workload == "all" else [] if args.workload == "none" else [args.workload]
    for wl in workloads:
        default = DEFAULT.get(wl, DEFAULT["logreg10k"])
        names = list(default) if args.only is None else [n for n in CONTESTANTS if n in args.only]
        report["workloads"][wl] = table(wl, names, args.repeats, args.device)
    if args.scaling:
        names = list(DEFAULT["logreg10k"]) if args.only is None else [n for n in CONTESTANTS[:4] if n in args.only]
        rows = {k: table(f"logreg_k{k}", names, args.repeats, args.device) for k in SCALING}
        report["scaling"] = rows
        print("\nscaling (logreg, 10,000 clients; per round in ms / client updates per second):")
        print("  " + f"{'clients/round':>13} " + " ".join(f"{n:>26}" for n in names))
        for k, summary in rows.items():
            cells = [f"{summary[n]['round'] * 1e3:10.1f} ms {k / summary[n]['round']:9.0f}/s" for n in names]
            print("  " + f"{k:>13} " + " ".join(f"{c:>26}" for c in cells))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
