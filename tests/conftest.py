"""Shared test helpers: build and run small scenarios from Python dicts."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from fedsim.scenario.loading import from_mapping

# A tiny, fast scenario every test can start from and override.
TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "data": {"dataset": {"name": "gaussian_mixture", "num_samples": 600, "num_test": 200, "dim": 5},
             "partition": {"name": "iid"}, "num_clients": 6, "test_fraction": 0.2},
    "model": {"name": "logreg", "device": "cpu"},
    "client": {"local_steps": 5, "batch_size": 16, "lr": 0.1},
    "participation": {"name": "full"},
    "engine": {"mode": "sync", "rounds": 5},
    "strategy": {"name": "fedavg"},
    "metrics": {"eval_every": 1},
}

LINREG: dict[str, Any] = {
    "name": "linreg",
    "seed": 0,
    "data": {"dataset": {"name": "linear_regression", "dim": 5, "samples_per_client": 20,
                         "heterogeneity": 1.0, "noise": 0.1},
             "partition": {"name": "natural"}, "num_clients": 10, "test_fraction": 0.0},
    "model": {"name": "linear", "device": "cpu"},
    "client": {"local_steps": 1, "batch_size": 1000, "lr": 0.1},
    "participation": {"name": "full"},
    "engine": {"mode": "sync", "rounds": 300},
    "strategy": {"name": "fedavg"},
    "metrics": {"eval_every": 50, "client_metrics": False},
}


def merge(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Deep-merge `changes` into a copy of `base` (nested dicts merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and "name" not in value:
            out[key] = merge(out[key], **value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def run_raw(raw: dict[str, Any], out: Path):
    from fedsim.runner import run

    return run(from_mapping(raw), out)


def read_metrics(out: Path, drop_wall: bool = True) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    if drop_wall:
        for r in rows:
            r.pop("wall_time", None)
    return rows


@pytest.fixture
def tiny() -> dict[str, Any]:
    return copy.deepcopy(TINY)


@pytest.fixture
def linreg() -> dict[str, Any]:
    return copy.deepcopy(LINREG)
