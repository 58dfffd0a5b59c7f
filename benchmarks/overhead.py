"""fedsim's per-round overhead against a plain PyTorch loop doing the same SGD steps.

Both sides train the quickstart workload (digits, 50 clients, Dirichlet 0.3, 10 clients per
round, 10 local steps of batch 16, MLP 64) on the *same* client data, in one process, and
are timed per round with evaluation off (fedsim evaluates only before the first and after the
last round; the plain loop evaluates nothing). The plain loop is what a researcher would
write: load the global state_dict, torch.optim.SGD, loss.backward(), step, average the
state_dicts weighted by examples.

    python benchmarks/overhead.py [--rounds 60] [--repeats 3]

Prints median per-round seconds for each side and the ratio fedsim / plain (lower is
better; < 1 means fedsim is faster). The plain loop runs with one torch thread, as fedsim's
client workers do, and with torch's default thread count; the ratio is taken against the
faster of the two.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from fedsim.runner import build_data, run
from fedsim.scenario.loading import load
from fedsim.training.flat import initial_params

ROOT = Path(__file__).resolve().parents[1]


def plain_loop(sc, data, rounds: int, threads: int) -> list[float]:
    """Train `rounds` FedAvg rounds by hand with `threads` torch threads.

    Returns:
        Wall seconds of each round.
    """
    torch.set_num_threads(threads)
    model = sc.model.build(data.input_shape, data.num_classes)
    flat = torch.from_numpy(initial_params(sc.model, data.input_shape, data.num_classes, 0))
    torch.nn.utils.vector_to_parameters(flat, model.parameters())
    global_state = copy.deepcopy(model.state_dict())
    x_all, y_all = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    rng = np.random.default_rng(0)
    k, steps, bs, lr = sc.participation.k, sc.client.local_steps, sc.client.batch_size, sc.client.lr
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        clients = rng.choice(data.num_clients, k, replace=False)
        states, weights = [], []
        for c in clients:
            sl = data.train_slice(int(c))
            x, y = x_all[sl], y_all[sl]
            model.load_state_dict(global_state)
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            g = torch.Generator().manual_seed(int(c))
            perm, pos = torch.randperm(len(y), generator=g), 0
            for _ in range(steps):
                if pos >= len(y):
                    perm, pos = torch.randperm(len(y), generator=g), 0
                idx = perm[pos:pos + bs]
                pos += bs
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
            states.append({n: v.detach().clone() for n, v in model.state_dict().items()})
            weights.append(len(y))
        w = torch.tensor(weights, dtype=torch.float32) / sum(weights)
        global_state = {n: sum(wi * s[n] for wi, s in zip(w, states, strict=True)) for n in global_state}
        times.append(time.perf_counter() - t0)
    return times


def fedsim_loop(sc, rounds: int) -> list[float]:
    """Run the quickstart scenario for `rounds` rounds with evaluation only at the ends.

    Returns:
        Wall seconds of each round, without the first and the last (which include evaluation).
    """
    stamps: list[float] = []
    sc = load(ROOT / "scenarios" / "quickstart.yaml",
              [f"engine.rounds={rounds}", f"metrics.eval_every={rounds}", "metrics.client_metrics=false",
               "model.device=cpu"])
    with tempfile.TemporaryDirectory() as tmp:
        def on_progress(step: int, record: dict) -> None:
            stamps.append(time.perf_counter())

        t0 = time.perf_counter()
        run(sc, Path(tmp), on_progress=on_progress)
    # round i's time = stamp_i - stamp_{i-1}; the last round also includes the final evaluation
    edges = [t0] + stamps
    return [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)][1:-1]


def main() -> None:
    """Parse the command line, time both sides `--repeats` times and print the medians and ratio."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sc = load(ROOT / "scenarios" / "quickstart.yaml", ["model.device=cpu"])
    data = build_data(sc)
    default_threads = torch.get_num_threads()
    results: dict[str, list[float]] = {"plain (1 thread)": [], f"plain ({default_threads} threads)": [],
                                       "fedsim inline": []}
    for _ in range(args.repeats):  # interleave so machine noise hits every side alike
        results[f"plain ({default_threads} threads)"].append(
            statistics.median(plain_loop(sc, data, args.rounds, default_threads)))
        results["plain (1 thread)"].append(statistics.median(plain_loop(sc, data, args.rounds, 1)))
        results["fedsim inline"].append(statistics.median(fedsim_loop(sc, args.rounds)))
    med = {k: statistics.median(v) for k, v in results.items()}
    best_plain = min(v for k, v in med.items() if k.startswith("plain"))
    print(f"quickstart workload, {args.rounds} rounds x {args.repeats} repeats, median per-round seconds:")
    for k, v in med.items():
        print(f"  {k:<20} {v * 1e3:8.2f} ms")
    print(f"ratio fedsim / best plain loop: {med['fedsim inline'] / best_plain:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
