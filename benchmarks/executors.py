"""Executors side by side on one workload, all doing the same training.

The contestants: a plain PyTorch loop (one process, and a pool of 2 worker processes: what
the machine's cores give without any framework), fedsim inline,
fedsim ray (2 actors; and with `warmup_inline: false`, so the actors run every job),
fedsim flower, and a plain Flower `run_simulation` FedAvg app, all training the same
model with the same SGD steps on the same client data.

    python benchmarks/executors.py [--workload quickstart|heavy|both] [--repeats 3] [--device cpu|cuda]

Workloads: `quickstart` is scenarios/quickstart.yaml as shipped (digits, 50 clients, 10 per
round, 10 local steps of batch 16, MLP 64, 60 rounds, evaluation every 5 rounds). `heavy`
is the same federation with a small CNN (32-32 conv, 128 FC) and 50 local steps of batch 32,
20 rounds. Every contestant runs in a fresh Python process (imports, Ray start and shutdown
included), repeats are interleaved so machine noise hits all alike, and the report gives
medians of:
  end to end   wall time of the whole process, as a user waits for it;
  per round    steady-state round time (median over rounds 3..R; evaluation rounds included
               on every side alike).
`--device cuda` runs every model on the GPU; the ray and flower executors then reserve
`num_gpus: 0.25` per client actor (4 clients per GPU) and take as many actors as fit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONTESTANTS = ("plain_torch", "plain_torch_2proc", "fedsim_inline", "fedsim_ray", "fedsim_ray_actors",
               "fedsim_flower", "plain_flower")
WORKLOADS = {
    "quickstart": [],
    "heavy": ["model={name: cnn, channels: [32, 32], hidden: 128}", "client.local_steps=50",
              "client.batch_size=32", "engine.rounds=20"],
}


def scenario(workload: str, device: str, executor: list[str]):
    """The quickstart scenario with the workload's, the device's and the executor's overrides."""
    from fedsim.scenario.loading import load

    return load(ROOT / "scenarios" / "quickstart.yaml", WORKLOADS[workload] + [f"model.device={device}"] + executor)


def executor_overrides(name: str, device: str) -> list[str]:
    """The `executor=` override for contestant `name` (fedsim_ray, fedsim_ray_actors, fedsim_flower, else inline)."""
    gpu = device == "cuda"
    if name == "fedsim_ray":
        return ["executor={name: ray, num_gpus: 0.25}"] if gpu else ["executor={name: ray, actors: 2}"]
    if name == "fedsim_ray_actors":  # no warm-up in the driver: the actors run every job
        return ["executor={name: ray, num_gpus: 0.25, warmup_inline: false}"] if gpu else \
            ["executor={name: ray, actors: 2, warmup_inline: false}"]
    if name == "fedsim_flower":
        return ["executor={name: flower, num_gpus: 0.25}"] if gpu else ["executor={name: flower}"]
    return ["executor={name: inline}"]


# -- contestants (each runs in its own process and prints one JSON line) ----------------------

def run_fedsim(workload: str, device: str, name: str) -> dict:
    """Run one fedsim contestant; returns its per-round seconds, total run seconds and final test accuracy."""
    from fedsim.runner import run

    sc = scenario(workload, device, executor_overrides(name, device))
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run(sc, Path(tmp), on_progress=lambda step, rec: stamps.append(time.perf_counter()))
        total = time.perf_counter() - t0
    return {"rounds": _diffs(stamps), "run": total, "accuracy": res.final.get("test_accuracy")}


def _diffs(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)]


def _plain_setup(workload: str, device: str):
    import torch

    from fedsim.runner import build_data
    from fedsim.training.flat import initial_params

    sc = scenario(workload, device, [])
    data = build_data(sc)
    init = initial_params(sc.model, data.input_shape, data.num_classes, 0)
    return sc, data, init, torch


def _train(torch, model, x, y, steps: int, bs: int, lr: float, seed: int) -> float:
    from torch.nn import functional as F

    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    perm, pos, loss = torch.randperm(len(y), generator=g), 0, None
    for _ in range(steps):
        if pos >= len(y):
            perm, pos = torch.randperm(len(y), generator=g), 0
        idx = perm[pos:pos + bs].to(x.device)
        pos += bs
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
    return float(loss.detach())


def _plain_model(sc, data, init, torch, device: str):
    torch.set_num_threads(1)
    dev = torch.device(device)
    model = sc.model.build(data.input_shape, data.num_classes).to(dev)
    torch.nn.utils.vector_to_parameters(torch.from_numpy(init).to(dev), model.parameters())
    x_all, y_all = torch.from_numpy(data.x_train).to(dev), torch.from_numpy(data.y_train).to(dev)
    return model, x_all, y_all


_PROC: dict = {}  # a plain_torch_2proc worker's resident model and data


def _proc_init(workload: str, device: str) -> None:
    sc, data, init, torch = _plain_setup(workload, device)
    model, x_all, y_all = _plain_model(sc, data, init, torch, device)
    _PROC.update(sc=sc, data=data, torch=torch, model=model, x=x_all, y=y_all)


def _proc_train(glob: dict, k: int, r: int) -> tuple[dict, int]:
    p, torch = _PROC, _PROC["torch"]
    c, sl = p["sc"].client, p["data"].train_slice(k)
    p["model"].load_state_dict({n: torch.from_numpy(v) for n, v in glob.items()})
    _train(torch, p["model"], p["x"][sl], p["y"][sl], c.local_steps, c.batch_size, c.lr, k * 1000 + r)
    # copies: a pool worker may run several tasks before their results are pickled
    return {n: v.detach().cpu().numpy().copy() for n, v in p["model"].state_dict().items()}, sl.stop - sl.start


def run_plain_torch(workload: str, device: str, processes: int = 0) -> dict:
    """What a researcher writes by hand: state_dict in, SGD, weighted average.

    processes=0: one process; processes=n: each round's clients trained by a pool of n worker processes
    (each holding its model and data), the simplest way to use n cores without a framework.
    """
    import multiprocessing

    import numpy as np

    t0 = time.perf_counter()
    sc, data, init, torch = _plain_setup(workload, device)
    model, x_all, y_all = _plain_model(sc, data, init, torch, device)
    dev = torch.device(device)
    glob = {k: v.clone() for k, v in model.state_dict().items()}
    xt, yt = torch.from_numpy(data.x_test).to(dev), torch.from_numpy(data.y_test).to(dev)
    pool = None
    if processes:
        pool = multiprocessing.get_context("spawn").Pool(processes, _proc_init, (workload, device))
    rng = np.random.default_rng(0)
    c = sc.client
    stamps, acc = [time.perf_counter()], None
    for r in range(sc.engine.rounds):
        chosen = [int(k) for k in rng.choice(data.num_clients, sc.participation.k, replace=False)]
        if pool is not None:
            glob_np = {n: v.cpu().numpy() for n, v in glob.items()}
            out = pool.starmap(_proc_train, [(glob_np, k, r) for k in chosen], chunksize=1)
            states = [{n: torch.from_numpy(v).to(dev) for n, v in s.items()} for s, _ in out]
            weights = [n for _, n in out]
        else:
            states, weights = [], []
            for k in chosen:
                sl = data.train_slice(k)
                model.load_state_dict(glob)
                _train(torch, model, x_all[sl], y_all[sl], c.local_steps, c.batch_size, c.lr, k * 1000 + r)
                states.append({n: v.detach().clone() for n, v in model.state_dict().items()})
                weights.append(sl.stop - sl.start)
        w = [wi / sum(weights) for wi in weights]
        glob = {n: sum(wi * s[n] for wi, s in zip(w, states, strict=True)) for n in glob}
        if (r + 1) % sc.metrics.eval_every == 0:
            model.load_state_dict(glob)
            with torch.no_grad():
                acc = float((model(xt).argmax(1) == yt).float().mean())
        stamps.append(time.perf_counter())
    if pool is not None:
        pool.close()
        pool.join()
    return {"rounds": _diffs(stamps), "run": time.perf_counter() - t0, "accuracy": acc}


def run_plain_flower(workload: str, device: str) -> dict:
    """A plain Flower app (Message API, FedAvg strategy, run_simulation) doing the same training.

    Each ClientApp loads its partition once per actor, the model from the message's state_dict.
    """
    import logging
    import warnings

    import numpy as np

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    sc, data, init, torch = _plain_setup(workload, device)
    from flwr.app import (
        ArrayRecord,
        ConfigRecord,
        Context,
        Message,
        MetricRecord,
        RecordDict,
    )
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.ERROR)
    tmp = tempfile.mkdtemp(prefix="fsbench-")
    npz = os.path.join(tmp, "data.npz")
    np.savez(npz, x=data.x_train, y=data.y_train, off=data.train_offsets)
    c = sc.client
    spec, shape, ncls = sc.model, data.input_shape, data.num_classes
    cache: dict = {}

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = msg.content["config"]
        if "data" not in cache:
            torch.set_num_threads(1)
            d = np.load(str(cfg["path"]))
            cache["data"] = (d["x"], d["y"], d["off"])
        x, y, off = cache["data"]
        pid = int(context.node_config["partition-id"])
        dev = torch.device(str(cfg["device"]))
        xs = torch.from_numpy(x[off[pid]:off[pid + 1]]).to(dev)
        ys = torch.from_numpy(y[off[pid]:off[pid + 1]]).to(dev)
        model = spec.build(shape, ncls).to(dev)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        loss = _train(torch, model, xs, ys, int(cfg["steps"]), int(cfg["bs"]), float(cfg["lr"]),
                      pid * 1000 + int(cfg["server-round"]))
        model = model.cpu()
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                   "metrics": MetricRecord({"train_loss": loss, "num-examples": len(ys)})}),
                       reply_to=msg)

    stamps = [time.perf_counter()]
    out: dict = {}

    class TimedFedAvg(FedAvg):
        def aggregate_train(self, server_round, replies):
            res = super().aggregate_train(server_round, replies)
            if server_round % sc.metrics.eval_every:
                stamps.append(time.perf_counter())
            return res

    def evaluate_fn(server_round: int, arrays: ArrayRecord):
        if server_round == 0 or server_round % sc.metrics.eval_every:
            return None
        model = spec.build(shape, ncls).to(device)
        model.load_state_dict(arrays.to_torch_state_dict())
        with torch.no_grad():
            xt, yt = torch.from_numpy(data.x_test).to(device), torch.from_numpy(data.y_test).to(device)
            out["acc"] = float((model(xt).argmax(1) == yt).float().mean())
        stamps.append(time.perf_counter())
        return MetricRecord({"accuracy": out["acc"]})

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        model = spec.build(shape, ncls)
        torch.nn.utils.vector_to_parameters(torch.from_numpy(init), model.parameters())
        n = data.num_clients
        strategy = TimedFedAvg(fraction_train=sc.participation.k / n, fraction_evaluate=0.0,
                               min_available_nodes=n, min_train_nodes=sc.participation.k)
        cfg = ConfigRecord({"path": npz, "steps": c.local_steps, "bs": c.batch_size, "lr": c.lr,
                            "device": device})
        strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=sc.engine.rounds,
                       train_config=cfg, evaluate_fn=evaluate_fn, timeout=600)

    gpu = 0.25 if device == "cuda" else 0.0
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=data.num_clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": gpu},
                                   "init_args": {"num_cpus": os.cpu_count() or 1, "log_to_driver": False,
                                                 "logging_level": "ERROR"}})
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return {"rounds": _diffs(stamps), "run": time.perf_counter() - t0, "accuracy": out.get("acc")}


def one(name: str, workload: str, device: str) -> dict:
    """Run contestant `name` in this process and return its measurements."""
    if name == "plain_torch":
        return run_plain_torch(workload, device)
    if name == "plain_torch_2proc":
        return run_plain_torch(workload, device, processes=2)
    if name == "plain_flower":
        return run_plain_flower(workload, device)
    return run_fedsim(workload, device, name)


# -- driver -----------------------------------------------------------------------------------

def measure(name: str, workload: str, device: str) -> dict:
    """Run contestant `name` in a fresh Python process and return its measurements plus `wall`.

    Raises:
        RuntimeError: the child process failed (its stderr tail is in the message).
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


def main() -> None:
    """Parse the command line, run the contestants interleaved `--repeats` times, print the medians."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=[*WORKLOADS, "both"], default="both")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--only", nargs="*", choices=CONTESTANTS, default=list(CONTESTANTS))
    ap.add_argument("--one", choices=CONTESTANTS, help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write all measurements to this file")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.workload, args.device)))
        return
    workloads = list(WORKLOADS) if args.workload == "both" else [args.workload]
    report: dict = {"device": args.device, "cpus": os.cpu_count(), "repeats": args.repeats, "workloads": {}}
    for wl in workloads:
        runs: dict[str, list[dict]] = {n: [] for n in args.only}
        for rep in range(args.repeats):
            for name in args.only:
                runs[name].append(measure(name, wl, args.device))
                r = runs[name][-1]
                print(f"[{wl} {rep + 1}/{args.repeats}] {name:<17} wall {r['wall']:7.2f} s  "
                      f"round {statistics.median(r['rounds'][2:]) * 1e3:8.1f} ms  acc {r['accuracy']}",
                      file=sys.stderr, flush=True)
        summary = {n: {"wall": statistics.median(r["wall"] for r in rs),
                       "round": statistics.median(statistics.median(r["rounds"][2:]) for r in rs),
                       "accuracy": rs[-1]["accuracy"], "walls": [r["wall"] for r in rs]}
                   for n, rs in runs.items()}
        report["workloads"][wl] = summary
        print(f"\n{wl} ({args.device}, {os.cpu_count()} CPUs, median of {args.repeats}):")
        print(f"  {'contestant':<17} {'end to end':>11} {'per round':>11} {'accuracy':>9}")
        for n, s in summary.items():
            acc = "n/a" if s["accuracy"] is None else f"{s['accuracy']:.3f}"
            print(f"  {n:<17} {s['wall']:9.2f} s {s['round'] * 1e3:8.1f} ms {acc:>9}")
        ratios = [("plain_flower", "fedsim_ray"), ("plain_flower", "fedsim_ray_actors"),
                  ("plain_flower", "fedsim_flower"), ("fedsim_inline", "fedsim_ray"),
                  ("fedsim_inline", "fedsim_ray_actors"), ("plain_torch", "plain_torch_2proc"),
                  ("plain_torch", "fedsim_inline"), ("plain_flower", "fedsim_inline")]
        for slow, fast in ratios:
            if slow in summary and fast in summary:
                a, b = summary[slow], summary[fast]
                print(f"  {fast} vs {slow}: {a['wall'] / b['wall']:.2f}x end to end, "
                      f"{a['round'] / b['round']:.2f}x per round (>1 = {fast} faster)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
