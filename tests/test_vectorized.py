"""The vectorized executor: same minibatches as inline, same results up to float rounding
(docs/how-to-scale.md gives the tolerance), identical files whatever the chunk size,
per-client fallback for rules with no batched form, client failures as drops."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, merge, read_metrics, run_raw

from fedsim import registry
from fedsim.strategy.contracts import supports_sync
from strategies.fedprox import FedProx

# The documented tolerance between inline and vectorized metrics (relative, with an
# absolute floor for values near 0): batched kernels round differently, nothing else differs.
RTOL, ATOL = 1e-5, 1e-7

SYNC = merge(TINY, participation={"name": "uniform", "k": 4}, engine={"rounds": 3},
             client={"momentum": 0.5, "clip_norm": 1.0, "weight_decay": 1e-3})
ASYNC = merge(TINY, engine={"mode": "async", "concurrency": 3, "max_versions": 6},
              system={"compute": {"name": "lognormal", "mean": 0.1, "sigma": 1.0}}, client={"lr_decay": 0.9})
# unequal clients: fewer examples than the batch, partial last batches, unequal step counts
UNEVEN = merge(TINY, data={"partition": {"name": "quantity_skew", "distribution": "exponential"}},
               client={"local_epochs": 2, "batch_size": 32, "momentum": 0.9}, engine={"rounds": 3})


def _rows(out: Path, name: str) -> list[dict]:
    return [json.loads(x) for x in (out / name).read_text().splitlines() if x]


def _close(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for k, va in ra.items():
            if isinstance(va, float):
                assert va == pytest.approx(rb[k], rel=RTOL, abs=ATOL, nan_ok=True), (k, ra, rb)
            else:
                assert va == rb[k], (k, ra, rb)


def _events(out: Path) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "wall_time"} for e in _rows(out, "events.jsonl")]


def _vectorized(raw: dict, chunk_size: int = 1024) -> dict:
    return merge(raw, executor={"name": "vectorized", "chunk_size": chunk_size})


@pytest.mark.parametrize("name", registry.names("strategy"))
def test_every_strategy_matches_inline_and_ignores_chunk_size(tmp_path, name):
    raw = merge(SYNC if supports_sync(registry.load("strategy", name)) else ASYNC, strategy={"name": name})
    run_raw(raw, tmp_path / "inline")
    run_raw(_vectorized(raw), tmp_path / "v")
    run_raw(_vectorized(raw, chunk_size=1), tmp_path / "v1")
    _close(read_metrics(tmp_path / "inline"), read_metrics(tmp_path / "v"))
    _close(_rows(tmp_path / "inline", "clients.jsonl"), _rows(tmp_path / "v", "clients.jsonl"))
    assert read_metrics(tmp_path / "v") == read_metrics(tmp_path / "v1")  # bit for bit
    assert _rows(tmp_path / "v", "clients.jsonl") == _rows(tmp_path / "v1", "clients.jsonl")
    assert _events(tmp_path / "v") == _events(tmp_path / "v1")
    assert read_metrics(tmp_path / "v")[-1]["num_failed"] == 0


@pytest.mark.parametrize("strategy", ["fedavg", "fedspeed"])
def test_uneven_clients_match_inline_at_every_chunk_size(tmp_path, strategy):
    raw = merge(UNEVEN, strategy={"name": strategy})
    run_raw(raw, tmp_path / "inline")
    for size in (1, 4, 1024):
        run_raw(_vectorized(raw, size), tmp_path / f"v{size}")
    _close(read_metrics(tmp_path / "inline"), read_metrics(tmp_path / "v1024"))
    assert read_metrics(tmp_path / "v1") == read_metrics(tmp_path / "v4") == read_metrics(tmp_path / "v1024")


@pytest.mark.parametrize(("n", "batch", "steps"), [(5, 16, 3), (40, 16, 7), (32, 16, 4), (1, 4, 2)])
def test_draw_batches_are_the_inline_minibatches(n, batch, steps):
    from fedsim.executors.vectorized.batched import draw_batches

    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    n_batches, width = -(-n // batch), min(batch, n)
    expected = []
    while len(expected) < steps:  # LocalTrainer.batches, written out
        perm = torch.randperm(n, generator=gen_a)
        expected += [perm[i:i + batch] for i in range(0, n, batch)][:steps - len(expected)]
    got = draw_batches(gen_b, n, batch, steps, width)
    assert got.shape == (steps, width) and n_batches >= 1
    for row, exp in zip(got, expected, strict=True):
        assert row[row >= 0].tolist() == exp.tolist()
    assert torch.equal(gen_a.get_state(), gen_b.get_state())  # the stream goes on in step


class CustomProx(FedProx):
    """A FedProx whose client rule is overridden: the batched FedProx rule must not be used."""

    def client_update(self, task, trainer, state):
        new, loss = trainer.sgd(task.params, lr=trainer.lr * 0.5)
        return trainer.make_update(new, loss), state


@pytest.fixture
def custom(monkeypatch):
    import strategies

    monkeypatch.setitem(strategies.STRATEGIES, "custom_prox", f"{__name__}:CustomProx")


def test_unbatchable_rule_runs_per_client_and_says_so_once(tmp_path, custom, caplog):
    raw = merge(SYNC, strategy={"name": "custom_prox"})
    run_raw(raw, tmp_path / "inline")
    with caplog.at_level(logging.WARNING, logger="fedsim.vectorized"):
        run_raw(_vectorized(raw), tmp_path / "v")
    said = [r for r in caplog.records if r.name == "fedsim.vectorized"]
    assert len(said) == 1 and "CustomProx" in said[0].getMessage() and "one client at a time" in said[0].getMessage()
    assert read_metrics(tmp_path / "inline") == read_metrics(tmp_path / "v")  # the inline code, exactly


def test_rule_table_only_for_the_rules_it_reproduces():
    from fedsim.executors.vectorized import rules

    assert rules.rule_for(registry.load("strategy", "fedavg")()) is rules.plain_sgd
    assert rules.rule_for(FedProx()) is rules.fedprox
    assert rules.rule_for(CustomProx()) is None


def test_a_failing_client_is_a_drop_and_the_cohort_goes_on(tmp_path, monkeypatch):
    from fedsim.executors.vectorized import rules

    plain = rules.plain_sgd

    def flaky(strategy, task, trainer, state):
        if task.client == 2:
            raise ValueError("client 2 is broken on purpose")
        return (yield from plain(strategy, task, trainer, state))

    monkeypatch.setattr(rules, "plain_sgd", flaky)
    run_raw(_vectorized(merge(TINY, engine={"rounds": 2, "on_client_error": "drop"})), tmp_path)
    last = read_metrics(tmp_path)[-1]
    assert last["num_failed"] == 2 and last["num_updates"] == 10
    drops = [e for e in _rows(tmp_path, "events.jsonl") if e["kind"] == "drop"]
    assert [d["client"] for d in drops] == [2, 2] and all("broken on purpose" in d["reason"] for d in drops)
    # by default (engine.on_client_error unset, a simulated run) the same bug stops the run loudly
    from fedsim.errors import RunError

    with pytest.raises(RunError, match="client 2 failed job 2 .*broken on purpose"):
        run_raw(_vectorized(merge(TINY, engine={"rounds": 2})), tmp_path / "strict")


def test_empty_client_returns_its_start():
    from fedsim.executors.vectorized.batched import BatchedModel, SgdCall, run_calls

    module = torch.nn.Sequential(torch.nn.Linear(3, 2))
    model = BatchedModel(module, regression=False)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    start = np.arange(model.size, dtype=np.float32)
    calls = [SgdCall(start=start, steps=3, lr=0.1), SgdCall(start=start, steps=3, lr=0.1)]
    out = run_calls(model, x, y, calls, [torch.Generator().manual_seed(s) for s in (0, 1)], [0, 4], [0, 0],
                    batch=2, width=2, chunk_size=8)
    assert np.array_equal(out[0][0], start) and np.isnan(out[0][1])
    assert not np.array_equal(out[1][0], start) and np.isfinite(out[1][1])


def test_cuda_without_gpu_is_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "fedsim", "run", str(root / "scenarios" / "quickstart.yaml"),
                           "executor.name=vectorized", "model.device=cuda", "engine.rounds=1", "--quiet",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=root)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], proc.stderr
