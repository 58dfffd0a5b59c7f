"""Compression with error feedback: exact compressed values and wire sizes, EF memory, the clock."""

from __future__ import annotations

import json
import math
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, merge, read_metrics, run_raw
from test_executors import ray_cluster  # noqa: F401 — the module's Ray cluster on 127.0.0.1 (slow tests)

from fedsim import seeding
from fedsim.engine import checkpoint
from fedsim.errors import ScenarioError
from fedsim.pipeline.compression import (
    QSGD,
    CompressionStage,
    NoCompression,
    Quantize,
    RandomK,
    Sign,
    TopK,
    array_fields,
    index_bits,
)
from fedsim.runner import run
from fedsim.scenario.loading import from_mapping, load
from fedsim.types import ClientUpdate

ROOT = Path(__file__).resolve().parents[1]
X = np.array([0.5, -2.0, 1.0, 0.0, -0.25, 3.0, -1.0, 0.75], dtype=np.float32)  # d = 8


@dataclass(frozen=True)
class Up:
    """An up message with one array field (like SCAFFOLD's Δc_i) and one scalar."""

    c: np.ndarray
    score: float = 0.0


def _update(vec, client: int = 0, up=None) -> ClientUpdate:
    return ClientUpdate(client, np.asarray(vec, dtype=np.float32), 10, 0, {}, up)


# --- each compressor's exact output and wire size ----------------------------------------


def test_topk_keeps_largest_magnitudes_ties_to_lower_index():
    # |x| = .5 2 1 0 .25 3 1 .75: the top 3 are 3 (j=5), 2 (j=1), then the tie 1 = |−1| goes to j=2
    out = TopK(k=3).compress(X)
    assert out.tolist() == [0.0, -2.0, 1.0, 0.0, 0.0, 3.0, 0.0, 0.0]
    assert TopK(fraction=0.3).kept(8) == 3  # ⌈2.4⌉
    assert TopK(fraction=0.07).kept(100) == 7  # not ⌈7.000000000000001⌉ = 8
    assert TopK(k=99).kept(8) == 8
    # k·(32 + ⌈log₂ 8⌉) bits = 3·35 = 105 bits → 14 bytes; d = 4810, k = 49: 49·45 bits → 276 bytes
    assert TopK(k=3).nbytes(8) == 14
    assert index_bits(4810) == 13 and TopK(fraction=0.01).kept(4810) == 49
    assert TopK(fraction=0.01).nbytes(4810) == math.ceil(49 * 45 / 8) == 276


def test_sign_is_l1_scaled_with_zero_sent_as_plus():
    out = Sign().compress(X)
    s = 8.5 / 8  # ‖x‖₁ = .5 + 2 + 1 + 0 + .25 + 3 + 1 + .75
    assert out.tolist() == [s, -s, s, s, -s, s, -s, s]
    assert Sign().nbytes(8) == 1 + 4 and Sign().nbytes(9) == 2 + 4


def test_quantize_8_and_16_bit_codes():
    y = np.array([0.6, -2.0, 1.0, 3.0, 0.1], dtype=np.float32)
    # lo = −2, step = 5/255; (y − lo)/step = 132.6, 0, 153, 255, 107.1 → codes 133, 0, 153, 255, 107
    out = Quantize(bits=8).compress(y)
    expected = (-2.0 + np.array([133, 0, 153, 255, 107]) * (5.0 / 255)).astype(np.float32)
    np.testing.assert_array_equal(out, expected)
    assert np.max(np.abs(out - y)) <= 5.0 / 255 / 2 + 1e-7
    # 16 bits: step 5/65535; codes of 2.6/step = 34078.2, 3/step = 39321 exactly, 2.1/step = 27524.7
    out16 = Quantize(bits=16).compress(y)
    expected16 = (-2.0 + np.array([34078, 0, 39321, 65535, 27525]) * (5.0 / 65535)).astype(np.float32)
    np.testing.assert_array_equal(out16, expected16)
    assert Quantize(bits=8).compress(np.full(3, 0.25, np.float32)).tolist() == [0.25] * 3  # constant: exact
    assert Quantize(bits=8).nbytes(10) == 10 + 8 and Quantize(bits=16).nbytes(10) == 20 + 8


def test_qsgd_rounding_from_the_recomputed_stream():
    x = np.array([3.0, -4.0, 0.0, 0.0], dtype=np.float32)  # ‖x‖₂ = 5
    stage = CompressionStage(QSGD(levels=2), root=7, size=4)
    out = stage.apply(_update(x, client=3), client=3, dispatch=11).vector
    # r = 2|x|/5 = 1.2, 1.6, 0, 0 → l = 1, 1, 0, 0, round up with probability 0.2, 0.6
    u = seeding.rng(7, "compression", 3, 11, 0).random(4)
    xi = np.array([1 + (u[0] < 0.2), 1 + (u[1] < 0.6), 0, 0])
    np.testing.assert_array_equal(out, (5.0 * np.array([1, -1, 0, 0]) * xi / 2).astype(np.float32))
    assert QSGD(levels=2).nbytes(4) == 4 + math.ceil(4 * 3 / 8)  # sign + 2 bits for levels 0..2
    assert QSGD(levels=1).nbytes(16) == 4 + 4 and QSGD(levels=4).nbytes(8) == 4 + 4  # 1+1 and 1+3 bits
    assert QSGD(levels=3).compress(np.zeros(3, np.float32), np.random.default_rng(0)).tolist() == [0.0] * 3


def test_randomk_indices_from_the_recomputed_stream():
    stage = CompressionStage(RandomK(k=3), root=5, size=8)
    out = stage.apply(_update(X, client=2), client=2, dispatch=9).vector
    idx = seeding.rng(5, "compression", 2, 9, 0).choice(8, size=3, replace=False)
    expected = np.zeros(8, np.float32)
    expected[idx] = X[idx] * (8 / 3)
    np.testing.assert_array_equal(out, expected)
    plain = CompressionStage(RandomK(k=3, scaled=False), root=5, size=8)
    np.testing.assert_array_equal(plain.apply(_update(X, 2), 2, 9).vector[idx], X[idx])
    assert np.count_nonzero(plain.apply(_update(X, 2), 2, 9).vector) == np.count_nonzero(X[idx])
    assert RandomK(k=3).nbytes(8) == 3 * 4 + 8


def test_qsgd_and_scaled_randomk_are_unbiased():
    x = np.array([0.3, -1.2, 0.05, 2.0, 0.0, -0.7], dtype=np.float64)
    n = 20_000
    for comp, name in ((QSGD(levels=2), "qsgd"), (RandomK(k=2), "randomk")):
        draws = np.stack([comp.compress(x.astype(np.float32), np.random.default_rng([i, 1])) for i in range(n)])
        mean, std = draws.mean(axis=0), draws.std(axis=0)
        # 5 standard errors per coordinate (a true mean outside it has probability < 1e-6)
        assert np.all(np.abs(mean - x) <= 5 * std / math.sqrt(n) + 1e-6), name
    assert not np.allclose(np.mean([RandomK(k=2, scaled=False).compress(x.astype(np.float32),
                                                                          np.random.default_rng([i, 1]))
                                    for i in range(2000)], axis=0), x, atol=0.1)  # unscaled: E = (k/d)·x


# --- error feedback ---------------------------------------------------------------------


def test_error_feedback_memory_over_two_steps():
    stage = CompressionStage(TopK(k=1, error_feedback="ef"), root=0, size=3)
    # step 1: p = Δ₁ = (1, −3, 2), C(p) = (0, −3, 0), e = (1, 0, 2)
    assert stage.apply(_update([1, -3, 2]), 0, 0).vector.tolist() == [0, -3, 0]
    assert stage.memory[0]["vector"].tolist() == [1, 0, 2]
    # step 2: p = Δ₂ + e = (1, 1, −1) + (1, 0, 2) = (2, 1, 1), C(p) = (2, 0, 0), e = (0, 1, 1)
    assert stage.apply(_update([1, 1, -1]), 0, 1).vector.tolist() == [2, 0, 0]
    assert stage.memory[0]["vector"].tolist() == [0, 1, 1]
    assert stage.stateful and list(stage.memory) == [0]  # other clients' memories untouched
    # without EF nothing is remembered
    plain = CompressionStage(TopK(k=1), root=0, size=3)
    assert plain.apply(_update([1, 1, -1]), 0, 1).vector.tolist() == [1, 0, 0] and plain.memory == {}


def test_ef21_over_two_steps_and_a_lost_upload():
    # Richtárik et al. 2021, Alg. 1: send c = C(Δ − g), both sides g ← g + c, the strategy gets g.
    stage = CompressionStage(TopK(k=1, error_feedback="ef21"), root=0, size=3)
    sent = stage.apply(_update([3, -1, 0.5]), 0, 0)  # Δ₁ − g = (3, −1, 0.5): c = (3, 0, 0)
    assert sent.vector.tolist() == [3, 0, 0] and stage.memory[0]["vector"].tolist() == [3, 0, 0]
    assert stage.receive(sent, 0).vector.tolist() == [3, 0, 0]  # the server's g₀
    sent = stage.apply(_update([1, -2, 0.5]), 0, 1)  # Δ₂ − g = (−2, −2, 0.5): tie, lower index: c = (−2, 0, 0)
    assert sent.vector.tolist() == [-2, 0, 0]
    assert stage.receive(sent, 0).vector.tolist() == [1, 0, 0] and stage.memory[0]["vector"].tolist() == [1, 0, 0]
    # a lost upload moves the client's g only: the server's copy stays where it was
    stage.apply(_update([1, 5, 0.5]), 0, 2)  # Δ₃ − g = (0, 5, 0.5): c = (0, 5, 0), never received
    assert stage.memory[0]["vector"].tolist() == [1, 5, 0] and stage.memory[0]["server:vector"].tolist() == [1, 0, 0]
    assert stage.stateful
    # without ef21 `receive` passes the update through
    ef = CompressionStage(TopK(k=1, error_feedback="ef"), root=0, size=3)
    u = ef.apply(_update([1, 2, 3]), 0, 0)
    assert ef.receive(u, 0) is u


def test_ef21_run_is_deterministic_and_resumes(tmp_path):
    from fedsim import cli

    raw = merge(TINY, engine={"rounds": 6}, participation={"name": "uniform", "k": 3},
                channel={"loss_prob": 0.2}, checkpoint={"every": 3},
                compression={"name": "topk", "fraction": 0.3, "error_feedback": "ef21"})
    a = run(from_mapping(raw), tmp_path / "a")
    b = run(from_mapping(merge(raw, executor={"name": "inline", "workers": 2})), tmp_path / "b")
    assert read_metrics(a.out) == read_metrics(b.out)
    shutil.copytree(a.out, tmp_path / "again")
    (tmp_path / "again" / "summary.json").unlink()
    assert cli.main(["run", "--resume", str(tmp_path / "again"), "--quiet"]) == 0
    assert read_metrics(tmp_path / "again") == read_metrics(a.out)


def test_up_message_arrays_are_compressed_with_their_own_memory():
    assert array_fields(Up) == ("c",) and array_fields(None) == ()
    stage = CompressionStage(TopK(k=1, error_feedback="ef"), root=0, size=3, up_type=Up)
    sent = stage.apply(_update([1, -3, 2], up=Up(np.array([0.5, 0.25, -1.0], np.float32), 0.7)), 0, 0)
    assert sent.vector.tolist() == [0, -3, 0] and sent.up.c.tolist() == [0, 0, -1.0] and sent.up.score == 0.7
    assert stage.memory[0]["c"].tolist() == [0.5, 0.25, 0.0]
    assert stage.upload_bytes == 2 * TopK(k=1).nbytes(3)


def test_malformed_or_nonfinite_updates_pass_through_and_leave_memory_alone():
    stage = CompressionStage(TopK(k=1, error_feedback="ef"), root=0, size=3)
    bad = _update([np.nan, 1, 2])
    assert stage.apply(bad, 0, 0) is bad and stage.memory == {}
    wrong = _update([1, 2])
    assert stage.apply(wrong, 0, 0) is wrong and stage.apply(None, 0, 0) is None


def test_downlink_sends_the_change_from_the_model_the_client_holds():
    stage = CompressionStage(TopK(k=1, downlink=True), root=0, size=3, initial=np.zeros(3, np.float32))
    # first download: held x̂ = x₀ = 0; x − x̂ = (1, −3, 2) → C = (0, −3, 0)
    assert stage.download(np.array([1, -3, 2], np.float32), 4, 0).tolist() == [0, -3, 0]
    # next: x − x̂ = (1, −3, 3) − (0, −3, 0) = (1, 0, 3) → x̂ = (0, −3, 3); the residual 1 waits
    assert stage.download(np.array([1, -3, 3], np.float32), 4, 1).tolist() == [0, -3, 3]
    assert stage.download(np.array([1, -3, 3], np.float32), 4, 2).tolist() == [1, -3, 3]
    assert stage.download_bytes == TopK(k=1).nbytes(3) and not stage.stateful
    assert CompressionStage(TopK(k=1), 0, 3).download_bytes is None


# --- scenario keys and refusals ---------------------------------------------------------


def test_scenario_block_and_refusals():
    sc = from_mapping(merge(TINY, compression={"name": "topk", "fraction": 0.05, "error_feedback": "ef"}))
    assert isinstance(sc.compression, TopK) and sc.compression.error_feedback == "ef"
    assert isinstance(from_mapping(TINY).compression, NoCompression)
    assert from_mapping(merge(TINY, compression={"name": "quantize", "bits": 16})).compression.bits == 16
    with pytest.raises(ScenarioError, match=r"compression\.bits"):
        from_mapping(merge(TINY, compression={"name": "quantize", "bits": 4}))
    with pytest.raises(ScenarioError, match=r"compression\.error_feedback"):
        from_mapping(merge(TINY, compression={"name": "sign", "error_feedback": "ef22"}))
    with pytest.raises(ScenarioError, match=r"compression\.name: strategy 'admm' sends whole models"):
        from_mapping(merge(TINY, strategy={"name": "admm"}, compression={"name": "topk"}))
    from_mapping(merge(TINY, strategy={"name": "admm"}))  # fine uncompressed
    with pytest.raises(ScenarioError, match=r"compression\.name: compression is simulated"):
        from_mapping(merge(TINY, engine={"mode": "async", "clock": "wall", "max_versions": 3},
                           strategy={"name": "fedbuff"}, compression={"name": "sign"}))


# --- the engine: bytes, the virtual clock, determinism, checkpoints ---------------------

CLOCK = merge(TINY, engine={"rounds": 3}, metrics={"eval_every": 3, "client_metrics": False},
              system={"compute": {"name": "constant", "time": 1.0}, "bandwidth_mbps": 0.001, "latency": 0.5})


def test_compressed_uploads_finish_earlier_by_exactly_the_byte_time(tmp_path):
    run_raw(CLOCK, tmp_path / "plain")
    run_raw(merge(CLOCK, compression={"name": "topk", "k": 2}), tmp_path / "topk")
    plain, topk = read_metrics(tmp_path / "plain")[-1], read_metrics(tmp_path / "topk")[-1]
    updates = 6 * 3  # full participation of 6 clients, 3 rounds
    assert plain["num_updates"] == topk["num_updates"] == updates
    d = plain["bytes_up"] // (4 * updates)  # uncompressed: d float32 values per update
    up = math.ceil(2 * (32 + index_bits(d)) / 8)
    assert topk["bytes_up"] == updates * up and topk["bytes_down"] == plain["bytes_down"]
    link = 8 / (0.001 * 1e6)  # seconds per byte
    # each round: download + 5 local steps of 1 s + upload, two latencies of 0.5 s
    assert plain["virtual_time"] == pytest.approx(3 * (2 * (4 * d * link + 0.5) + 5.0), rel=1e-12)
    assert topk["virtual_time"] == pytest.approx(3 * ((4 * d * link + 0.5) + 5.0 + (up * link + 0.5)), rel=1e-12)
    assert plain["virtual_time"] - topk["virtual_time"] == pytest.approx(3 * (4 * d - up) * link, rel=1e-9)


def test_compressed_downlink_counts_and_prices_the_download(tmp_path):
    run_raw(CLOCK, tmp_path / "plain")
    run_raw(merge(CLOCK, compression={"name": "quantize", "bits": 8, "downlink": True}), tmp_path / "q8")
    plain, q8 = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "q8")
    d = plain[-1]["bytes_up"] // (4 * 18)
    size = Quantize(bits=8).nbytes(d)
    assert q8[-1]["bytes_down"] == 18 * size and q8[-1]["bytes_up"] == 18 * size
    link = 8 / (0.001 * 1e6)
    assert q8[-1]["virtual_time"] == pytest.approx(3 * (2 * (size * link + 0.5) + 5.0), rel=1e-12)
    # 8 bits each way on logistic regression: the accuracy stays close
    assert abs(q8[-1]["test_accuracy"] - plain[-1]["test_accuracy"]) <= 0.05


@pytest.mark.filterwarnings("ignore:round .* every one of its:RuntimeWarning")  # a round can lose all 6
def test_error_feedback_memory_moves_for_lost_uploads_and_survives_resume(tmp_path):
    raw = merge(CLOCK, engine={"rounds": 6}, channel={"loss_prob": 0.5}, checkpoint={"every": 3},
                compression={"name": "randomk", "k": 3, "error_feedback": "ef"})
    run_raw(raw, tmp_path / "ref")
    snap = pickle.loads((tmp_path / "ref" / checkpoint.FILE).read_bytes())  # written after round 3
    lost = {e["client"] for e in map(json.loads, (tmp_path / "ref" / "events.jsonl").read_text().splitlines())
            if e["kind"] == "drop" and e["reason"] == "lost in channel"}
    assert lost and set(snap["compression"]) == set(range(6))  # every client computed, lost or not
    # resume from the round-3 checkpoint: the rest of the run is identical to the uninterrupted one
    resumed = tmp_path / "resumed"
    run_raw(raw, resumed)
    run(from_mapping(raw), resumed, resume=True)
    assert read_metrics(resumed) == read_metrics(tmp_path / "ref")
    assert (resumed / "events.jsonl").read_bytes() == (tmp_path / "ref" / "events.jsonl").read_bytes()


def test_scaffold_async_and_threads_identical(tmp_path):
    raw = merge(TINY, engine={"rounds": 3}, strategy={"name": "scaffold"},
                compression={"name": "qsgd", "levels": 4, "error_feedback": "ef"})
    run_raw(raw, tmp_path / "serial")
    run_raw(merge(raw, executor={"name": "inline", "workers": 2}), tmp_path / "threads")
    rows = read_metrics(tmp_path / "serial")
    assert rows == read_metrics(tmp_path / "threads")
    assert rows[-1]["bytes_up"] == rows[-1]["num_updates"] * 2 * QSGD(levels=4).nbytes(24)
    araw = merge(TINY, engine={"mode": "async", "max_versions": 8, "concurrency": 3},
                 strategy={"name": "fedbuff", "buffer_size": 2},
                 compression={"name": "sign", "error_feedback": "ef"})
    run_raw(araw, tmp_path / "async")
    run_raw(merge(araw, executor={"name": "inline", "workers": 2}), tmp_path / "async2")
    arows = read_metrics(tmp_path / "async")
    assert arows == read_metrics(tmp_path / "async2") and arows[-1]["bytes_up"] == arows[-1]["num_updates"] * 7


def test_compression_none_is_the_uncompressed_run(tmp_path):
    run_raw(TINY, tmp_path / "default")
    run_raw(merge(TINY, compression={"name": "none"}), tmp_path / "none")
    assert read_metrics(tmp_path / "default") == read_metrics(tmp_path / "none")
    rows = read_metrics(tmp_path / "default")
    assert rows[-1]["bytes_up"] == rows[-1]["num_updates"] * 24 * 4  # logreg 5 → 4 classes: d = 24


@pytest.mark.slow
def test_inline_and_ray_identical_with_compression(tmp_path, ray_cluster):  # noqa: F811
    raw = merge(TINY, engine={"rounds": 3}, channel={"loss_prob": 0.3},
                compression={"name": "randomk", "fraction": 0.25, "error_feedback": "ef"})
    run_raw(raw, tmp_path / "inline")
    run_raw(merge(raw, executor={"name": "ray", "address": ray_cluster, "warmup_inline": False}), tmp_path / "ray")
    assert read_metrics(tmp_path / "inline") == read_metrics(tmp_path / "ray")
    events = [(tmp_path / k / "events.jsonl").read_text() for k in ("inline", "ray")]
    assert events[0] == events[1]


def test_compression_scenario_file_loads():
    sc = load(ROOT / "scenarios" / "compression.yaml")
    assert isinstance(sc.compression, TopK) and sc.compression.error_feedback == "ef"


@pytest.mark.slow
def test_quickstart_top1pct_error_feedback_closes_most_of_the_gap(tmp_path):
    """Top-1% and top-10% on the quickstart (60 rounds), seeds 0..2, against no compression.

    Measured (docs/compression.md): uncompressed 0.928/0.914/0.891, top-1% + EF
    0.875/0.799/0.802, top-1% alone 0.852/0.666/0.727, top-10% + EF 0.911/0.908/0.883.
    The issue's "top-1% with EF within 2 points" does NOT hold in 60 rounds (mean gap 8.5
    points with EF, 16.3 without); top-10% with EF does (at most 1.7 points). The bounds
    asserted are what held on every seed measured.
    """
    acc = {}
    for label, over in (("none", []), ("ef", ["compression.name=topk", "compression.error_feedback=ef"]),
                        ("plain", ["compression.name=topk"]),
                        ("ef10", ["compression.name=topk", "compression.fraction=0.1",
                                  "compression.error_feedback=ef"])):
        for seed in range(3):
            sc = load(ROOT / "scenarios" / "quickstart.yaml", [f"seed={seed}", *over])
            run(sc, tmp_path / f"{label}{seed}")
            acc[label, seed] = read_metrics(tmp_path / f"{label}{seed}")[-1]["test_accuracy"]
    gap = {k: np.mean([acc["none", s] - acc[k, s] for s in range(3)]) for k in ("ef", "plain")}
    assert all(acc["ef", s] >= acc["plain", s] + 0.01 for s in range(3))  # EF helps on every seed
    assert gap["ef"] <= 0.10 and gap["plain"] >= 0.12
    assert all(acc["none", s] - acc["ef10", s] <= 0.02 for s in range(3))  # top-10% + EF: within 2 points


def test_communication_plot_kind(tmp_path):
    from fedsim.results import plots
    from fedsim.results.rundata import find_runs, group_runs

    raw = merge(TINY, engine={"rounds": 2})
    run_raw(raw, tmp_path / "runs" / "plain")
    run_raw(merge(raw, compression={"name": "sign"}), tmp_path / "runs" / "sign")
    plain = group_runs(find_runs([tmp_path / "runs" / "plain"]))
    assert not plots.applicable("communication", plain)  # `--kind all` skips it without compression
    both = group_runs(find_runs([tmp_path / "runs"]))
    assert plots.applicable("communication", both)
    fig = plots.communication(both)
    assert [ax.get_xlabel() for ax in fig.axes] == ["bytes up (compressed wire size)", "virtual time (s)"]
    assert fig.axes[0].get_xscale() == "log" and len(fig.axes[0].lines) == 2
    written = plots.plot([tmp_path / "runs"], "communication", tmp_path / "c.png")
    assert written == [tmp_path / "c.png"] and (tmp_path / "c.png").stat().st_size > 0
