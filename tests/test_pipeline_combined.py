"""The update pipeline's stages together: DP, compression with error feedback and secure aggregation.

Each stage has its own tests (test_dp.py, test_compression.py, test_secagg.py); these check that
they compose in the documented order, stay deterministic, survive a resume together and that the
clock prices both the compressed upload and the protocol's extra rounds.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import TINY, merge, read_metrics, run_raw

from fedsim.errors import ScenarioError
from fedsim.pipeline import compression as comp
from fedsim.pipeline import dp as dp_stage
from fedsim.scenario.loading import from_mapping

ALL = merge(TINY, engine={"rounds": 6}, system={"dropout_prob": 0.1, "bandwidth_mbps": 1.0, "latency": 0.01},
            dp={"name": "local", "clip": 0.5, "noise_multiplier": 0.3},
            compression={"name": "topk", "fraction": 0.25, "error_feedback": "ef"},
            secagg={"name": "secagg_plus"})


def _events(out):
    rows = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line]
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]


def test_all_stages_together_are_deterministic_and_survive_a_resume(tmp_path):
    from fedsim import cli
    from fedsim.engine import checkpoint

    raw = merge(ALL, checkpoint={"every": 3})
    a = run_raw(raw, tmp_path / "a")
    b = run_raw(merge(raw, executor={"name": "inline", "workers": 2}), tmp_path / "b")
    assert read_metrics(a.out) == read_metrics(b.out) and np.array_equal(a.params, b.params)
    assert _events(a.out) == _events(b.out)
    rows = read_metrics(a.out)
    assert rows[-1]["num_updates"] > 0 and np.isfinite(rows[-1]["epsilon"])
    assert rows[-1]["epsilon"] > rows[1]["epsilon"] > 0  # ε grows with every release
    shutil.copytree(a.out, tmp_path / "again")  # a crash after the round-3 checkpoint
    (tmp_path / "again" / "summary.json").unlink()
    assert checkpoint.load(tmp_path / "again")["next_round"] == 3
    assert cli.main(["run", "--resume", str(tmp_path / "again"), "--quiet"]) == 0
    assert read_metrics(tmp_path / "again") == read_metrics(a.out)
    assert _events(tmp_path / "again") == _events(a.out)


def test_dp_clips_before_compression_compresses(tmp_path):
    # One client, one round, FedAvg with server_lr 1: the committed step is exactly what the client sent.
    # Clip-then-compress (the documented order) sends top-k(clip(Δ)), whose norm is strictly below C for a
    # dense Δ with ‖Δ‖ > C; compress-then-clip would send a vector of norm exactly C.
    from fedsim.runner import build_data, build_model

    c = 0.05
    raw = merge(TINY, engine={"rounds": 1}, data={"num_clients": 1},
                dp={"name": "local", "clip": c, "noise_multiplier": 0.0},
                compression={"name": "topk", "fraction": 0.3})
    sc = from_mapping(raw)
    x0, _ = build_model(sc, build_data(sc))
    clipped_only = run_raw(merge(raw, compression={"name": "none"}), tmp_path / "clip").params
    both = run_raw(raw, tmp_path / "both").params
    step_clip = clipped_only.astype(np.float64) - x0
    step_both = both.astype(np.float64) - x0
    assert np.linalg.norm(step_clip) == pytest.approx(c, rel=1e-5)  # the trained Δ was longer than C
    assert np.linalg.norm(step_both) < c * (1 - 1e-3)
    k = comp.TopK(fraction=0.3).kept(x0.size)
    expected = comp.TopK(fraction=0.3).compress(step_clip.astype(np.float32))  # top-k of the clipped Δ
    assert np.count_nonzero(step_both) == k
    np.testing.assert_allclose(step_both, expected, atol=1e-6)
    assert dp_stage.clip(np.array([3.0, -4.0], dtype=np.float32), 1.0)[1] == pytest.approx(5.0)


def test_compressed_upload_and_protocol_rounds_both_move_the_clock(tmp_path):
    base = merge(TINY, engine={"rounds": 2}, system={"bandwidth_mbps": 0.1, "latency": 0.0})
    plain = read_metrics(run_raw(base, tmp_path / "plain").out)
    small = read_metrics(run_raw(merge(base, compression={"name": "sign"}), tmp_path / "sign").out)
    both = read_metrics(run_raw(merge(base, compression={"name": "sign"}, secagg={"name": "secagg"}),
                                tmp_path / "both").out)
    assert small[-1]["virtual_time"] < plain[-1]["virtual_time"]  # fewer bytes up, earlier
    assert small[-1]["bytes_up"] < plain[-1]["bytes_up"]
    assert both[-1]["virtual_time"] > small[-1]["virtual_time"]  # the protocol's extra rounds cost time


@pytest.mark.parametrize("changes, line", [
    ({"dp": {"name": "central", "clip": 1.0, "noise_multiplier": 1.0}, "secagg": {"name": "secagg"}},
     "dp.name: central DP re-clips each arrived update"),
    ({"compression": {"name": "topk"}, "strategy": {"name": "admm"}}, "compression.name: strategy 'admm'"),
])
def test_combinations_that_cannot_work_are_refused_in_one_line(changes, line):
    with pytest.raises(ScenarioError) as info:
        from_mapping(merge(TINY, **changes))
    assert line in str(info.value) and "\n" not in str(info.value)
