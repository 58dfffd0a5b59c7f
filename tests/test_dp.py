"""Client-level DP (fedsim.pipeline.dp, fedsim.pipeline.accounting): hand-computed clipping, noise and
clip updates; ε against dp-accounting and a published figure; runs, refusals, determinism, resume."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil

import dp_accounting
import numpy as np
import pytest
from conftest import TINY, merge, read_metrics, run_raw

from fedsim import seeding
from fedsim.cli import app as cli
from fedsim.errors import ScenarioError
from fedsim.pipeline import accounting
from fedsim.pipeline import dp as dpm
from fedsim.scenario.loading import from_mapping
from fedsim.types import ClientUpdate
from fedsim.world.participation import Bernoulli, ConstantProb, Full, Markov, UniformSample
from strategies import STRATEGIES

ROOT = 7
# Local and async DP (and non-sampling participation) announce "no amplification" once per run, by design.
pytestmark = pytest.mark.filterwarnings("ignore:dp. sampling none:RuntimeWarning")


def upd(client: int, *values: float) -> ClientUpdate:
    return ClientUpdate(client, np.array(values, dtype=np.float32), 10 + client, 0)


def stage(cfg, participation, n: int = 4, mode: str = "sync") -> dpm.DPStage:
    return dpm.DPStage(cfg, accounting.sampling_of(participation, n), mode, ROOT, n)


# --- the rules by hand ---------------------------------------------------------------------


def test_clip_by_hand():
    out, norm = dpm.clip(np.array([3.0, 4.0, 0.0], dtype=np.float32), 1.0)
    assert norm == 5.0
    np.testing.assert_allclose(out, [0.6, 0.8, 0.0], rtol=1e-7)
    v = np.array([0.3, 0.4], dtype=np.float32)
    same, _ = dpm.clip(v, 0.6)  # ‖v‖ ≈ 0.5 ≤ C: untouched, the very same array
    assert same is v


def test_noise_split_and_clip_update_by_hand():
    # z = 1, σ_b = 1: z_Δ = (1 − 1/4)^(−1/2) = 2/√3
    assert dpm.split_noise(1.0, 1.0) == pytest.approx(2 / math.sqrt(3), rel=1e-12)
    assert dpm.split_noise(0.0, 0.0) == 0.0
    # bits T, T, F, T: Σ(b − ½) = 1; noise 0.4; m̄ = 4 → b̄ = 1.4/4 + ½ = 0.85; C = 1·exp(−0.2·(0.85 − 0.5))
    c, frac = dpm.adapt_clip(1.0, [True, True, False, True], 0.4, 4.0, 0.5, 0.2)
    assert frac == pytest.approx(0.85, rel=1e-12)
    assert c == pytest.approx(math.exp(-0.07), rel=1e-12)


def test_central_cohort_is_the_noisy_clipped_mean_of_the_documented_stream():
    # k = 2 of N = 4: m̄ = 2. Client 0 sends (3,4,0) → clipped (0.6,0.8,0); client 1 (0,0,0.5) unclipped.
    s = stage(dpm.CentralDP(clip=1.0, noise_multiplier=2.0), UniformSample(k=2))
    sent = [s.client(upd(1, 0, 0, 0.5), 1, 11), s.client(upd(0, 3, 4, 0), 0, 10)]
    np.testing.assert_allclose(sent[1].vector, [0.6, 0.8, 0.0], rtol=1e-7)
    out = s.cohort(sent, round_index=3)
    draw = seeding.rng(ROOT, "dp_central", 3).standard_normal(3)
    expect = (np.array([0.6, 0.8, 0.5]) + 2.0 * 1.0 * draw) / 2  # (Σ clip(Δ_i) + z·C·ξ) / m̄
    for u in out:
        np.testing.assert_allclose(u.vector, expect, rtol=1e-6)
        assert u.num_examples == 1
    assert [u.client for u in out] == [1, 0]  # order and ids kept
    assert s.mechanisms() == 1


def test_adaptive_clip_round_by_hand():
    z, sb = 1.0, 2.0
    s = stage(dpm.CentralDP(clip=1.0, noise_multiplier=z,
                            adaptive=dpm.AdaptiveClip(target_quantile=0.5, lr=0.2, bit_noise=sb)), Full())
    cohort = [s.client(upd(c, *v), c, c) for c, v in enumerate([(3, 4), (0.1, 0), (0, 0.2), (0, -2)])]
    out = s.cohort(cohort, round_index=0)
    z_delta = (z ** -2 - (2 * sb) ** -2) ** -0.5
    total = np.array([0.6, 0.8]) + [0.1, 0] + [0, 0.2] + [0, -1.0]
    noise = seeding.rng(ROOT, "dp_central", 0).standard_normal(2) * z_delta * 1.0
    np.testing.assert_allclose(out[0].vector, (total + noise) / 4, rtol=1e-6)  # full: m̄ = N = 4
    bit = seeding.rng(ROOT, "dp_bits", 0).standard_normal() * sb
    frac = (2 * 0.5 - 2 * 0.5 + bit) / 4 + 0.5  # two unclipped, two clipped
    assert s.clip == pytest.approx(math.exp(-0.2 * (frac - 0.5)), rel=1e-12)
    assert s.metrics()["dp_clip"] == s.clip


def test_local_noise_is_the_clients_own_stream():
    s = stage(dpm.LocalDP(clip=0.5, noise_multiplier=0.8), Full())
    out = s.client(upd(2, 3, 4), 2, 17)
    draw = seeding.rng(ROOT, "dp_local", 2, 17).standard_normal(2)
    np.testing.assert_allclose(out.vector, np.array([0.3, 0.4]) + 0.8 * 0.5 * draw, rtol=1e-6)
    assert s.cohort([out], 0) == [out]  # nothing happens at the server
    assert s.releases.tolist() == [0, 0, 1, 0]


def test_async_central_noise_per_arrival():
    s = stage(dpm.CentralDP(clip=1.0, noise_multiplier=1.5), Full(), mode="async")
    out = s.arrival(upd(1, 0, 3, 4), 1, 5)
    draw = seeding.rng(ROOT, "dp_central", 1, 5).standard_normal(3)
    np.testing.assert_allclose(out.vector, np.array([0, 0.6, 0.8]) + 1.5 * draw, rtol=1e-6)
    assert s.mechanisms() == 1


# --- accounting ----------------------------------------------------------------------------


def _direct(event, steps: int, delta: float, kind: str = "rdp", replace_one: bool = False) -> float:
    rel = dp_accounting.NeighboringRelation
    relation = rel.REPLACE_ONE if replace_one else rel.ADD_OR_REMOVE_ONE
    acc = (dp_accounting.rdp.RdpAccountant(neighboring_relation=relation) if kind == "rdp"
           else dp_accounting.pld.PLDAccountant(neighboring_relation=relation))
    acc.compose(event, steps)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_epsilon_equals_dp_accounting_for_poisson_sampling(kind):
    # q = 0.01 (bernoulli p = 0.01), z = 1.1, 1000 rounds, δ = 1e-5
    s = stage(dpm.CentralDP(noise_multiplier=1.1, delta=1e-5, accountant=kind),
              Bernoulli(probs=ConstantProb(p=0.01)), n=1000)
    assert s.sampling.kind == "poisson" and s.sampling.q == 0.01 and s.sampling.expected_cohort == 10
    s.rounds = 1000
    expect = _direct(dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.1)), 1000, 1e-5, kind)
    assert s.metrics()["epsilon"] == pytest.approx(expect, rel=1e-9)
    assert 0 < expect < 10


def test_epsilon_matches_abadi_et_al_published_figure():
    # Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, §3.1: q = 0.01, σ = 4, δ = 1e-5 and
    # T = 10,000 steps give ε ≈ 1.26 with the moments accountant. The same RDP curve from dp-accounting with the
    # paper's conversion ε = min_α RDP(α) + log(1/δ)/(α − 1), on TF-Privacy's classic orders, rounds to 1.26;
    # the adapter's ε uses the library's tighter conversion, so it is below that figure.
    orders = [1 + x / 10 for x in range(1, 100)] + list(range(12, 64))
    acc = dp_accounting.rdp.RdpAccountant(orders)
    acc.compose(dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(4.0)), 10_000)
    classic = min(r + math.log(1e5) / (a - 1) for a, r in zip(orders, acc._rdp, strict=True))  # noqa: SLF001
    assert round(classic, 2) == 1.26
    s = stage(dpm.CentralDP(noise_multiplier=4.0), Bernoulli(probs=ConstantProb(p=0.01)), n=100)
    s.rounds = 10_000
    eps = s.metrics()["epsilon"]
    assert eps == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9) and eps < 1.26


def test_uniform_sampling_uses_without_replacement_with_replace_one():
    s = stage(dpm.CentralDP(noise_multiplier=2.0), UniformSample(k=5), n=50)
    s.rounds = 30
    expect = _direct(dp_accounting.SampledWithoutReplacementDpEvent(50, 5, dp_accounting.GaussianDpEvent(1.0)),
                     30, 1e-5, replace_one=True)
    assert s.metrics()["epsilon"] == pytest.approx(expect, rel=1e-9)


def test_non_sampling_processes_account_full_participation():
    for proc in (Markov(), Bernoulli(probs=__import__("fedsim.world.participation", fromlist=["UniformProb"])
                                      .UniformProb())):
        s = stage(dpm.CentralDP(noise_multiplier=1.0), proc, n=10)
        assert s.sampling.kind == "none" and s.sampling.expected_cohort is None
        s.rounds = 7
        assert s.metrics()["epsilon"] == pytest.approx(_direct(dp_accounting.GaussianDpEvent(1.0), 7, 1e-5), rel=1e-9)
    local = stage(dpm.LocalDP(noise_multiplier=1.0), UniformSample(k=2))
    local.releases[:] = [3, 1, 0, 2]  # per-client releases compose in parallel: the largest count, z/2
    assert local.metrics()["epsilon"] == pytest.approx(_direct(dp_accounting.GaussianDpEvent(0.5), 3, 1e-5), rel=1e-9)


# --- runs ----------------------------------------------------------------------------------

CENTRAL = {"name": "central", "clip": 0.5, "noise_multiplier": 1.0}


def test_markov_run_reports_full_participation_accounting(tmp_path):
    raw = merge(TINY, participation={"name": "markov", "probs": {"name": "constant", "p": 0.5}}, dp=CENTRAL)
    with pytest.warns(RuntimeWarning, match="markov participation is not a sampling process"):
        res = run_raw(raw, tmp_path / "m")
    dp = res.summary["dp"]
    assert dp["sampling"] == ("none: markov participation is not a sampling process; accounted as full "
                              "participation") and dp["q"] == 1.0 and dp["mechanisms"] == 5
    rows = read_metrics(tmp_path / "m")
    assert [r["epsilon"] for r in rows][0] == 0.0
    for r in rows[1:]:
        assert r["epsilon"] == pytest.approx(_direct(dp_accounting.GaussianDpEvent(1.0), r["round"], 1e-5), rel=1e-9)
    warnings_ = [json.loads(line) for line in (tmp_path / "m" / "events.jsonl").read_text().splitlines()
                 if '"warning"' in line]
    assert len(warnings_) == 1 and "accounted as full participation" in warnings_[0]["message"]
    saved = json.loads((tmp_path / "m" / "summary.json").read_text())["dp"]
    assert saved["epsilon"] == pytest.approx(rows[-1]["epsilon"])


def _without(rows, key="epsilon"):
    return [{k: v for k, v in r.items() if k != key} for r in rows]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_local_dp_with_zero_noise_and_huge_clip_is_transparent(tmp_path, mode):
    base = TINY if mode == "sync" else merge(TINY, engine={"mode": "async", "max_versions": 10, "concurrency": 3},
                                             strategy={"name": "fedbuff", "buffer_size": 2})
    ref = run_raw(base, tmp_path / "ref")
    via = run_raw(merge(base, dp={"name": "local", "clip": 1e9, "noise_multiplier": 0.0}), tmp_path / "dp")
    assert np.array_equal(ref.params, via.params)  # bit for bit
    assert _without(read_metrics(tmp_path / "dp")) == read_metrics(tmp_path / "ref")
    assert via.summary["dp"]["epsilon"] is None or math.isinf(via.summary["dp"]["epsilon"])  # z = 0: no privacy


def test_central_dp_with_zero_noise_and_huge_clip_is_the_uniform_fedavg(tmp_path):
    # The central stage replaces the cohort by its uniform mean (num_examples 1): equal to FedAvg with uniform
    # weights in exact arithmetic; summed in another order, so equal to float32 rounding, not bit for bit.
    base = merge(TINY, strategy={"name": "fedavg", "weighting": "uniform"})
    ref = run_raw(base, tmp_path / "ref")
    via = run_raw(merge(base, dp={"name": "central", "clip": 1e9, "noise_multiplier": 0.0}), tmp_path / "dp")
    np.testing.assert_allclose(via.params, ref.params, atol=1e-6)


def test_dp_run_is_deterministic_and_noise_changes_it(tmp_path):
    raw = merge(TINY, participation={"name": "bernoulli", "probs": {"name": "constant", "p": 0.5}}, dp=CENTRAL)
    a, b = run_raw(raw, tmp_path / "a"), run_raw(raw, tmp_path / "b")
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    assert np.array_equal(a.params, b.params)
    ref = run_raw(merge(raw, dp={"name": "none"}), tmp_path / "ref")
    assert not np.allclose(ref.params, a.params, atol=1e-3)
    assert a.summary["dp"]["sampling"].startswith("poisson") and a.summary["dp"]["epsilon"] > 0


@pytest.mark.slow
def test_dp_run_is_identical_on_the_ray_executor(tmp_path):
    raw = merge(TINY, dp={"name": "local", "clip": 0.5, "noise_multiplier": 0.5}, engine={"rounds": 3})
    run_raw(raw, tmp_path / "inline")
    run_raw(merge(raw, executor={"name": "ray", "actors": 2, "warmup_inline": False}), tmp_path / "ray")
    assert read_metrics(tmp_path / "inline") == read_metrics(tmp_path / "ray")


def test_resume_restores_the_dp_stage(tmp_path):
    raw = merge(TINY, name="ckpt", participation={"name": "uniform", "k": 3}, engine={"rounds": 12},
                checkpoint={"every": 5},
                dp={"name": "central", "clip": 0.3, "noise_multiplier": 1.0,
                    "adaptive": {"target_quantile": 0.5, "lr": 0.2, "bit_noise": 1.0}})
    run_raw(raw, tmp_path / "ref")
    shutil.copytree(tmp_path / "ref", tmp_path / "again")
    (tmp_path / "again" / "summary.json").unlink()
    assert cli.main(["run", "--resume", str(tmp_path / "again"), "--quiet"]) == 0
    ref, again = read_metrics(tmp_path / "ref"), read_metrics(tmp_path / "again")
    assert ref == again
    assert len({r["dp_clip"] for r in ref}) > 2  # the clip really moved
    assert (tmp_path / "ref" / "events.jsonl").read_bytes() == (tmp_path / "again" / "events.jsonl").read_bytes()


# --- refusals and every strategy -----------------------------------------------------------

REFUSED = {
    "scaffold": r"dp\.name: strategy 'scaffold' sends an extra up message \(ScaffoldUp\)",
    "fedce": r"dp\.name: strategy 'fedce' sends an extra up message",
    "admm": r"dp\.name: strategy 'admm' sends whole models",
    "admm_standard": r"dp\.name: strategy 'admm_standard' sends whole models",
}
ASYNC = {"fedbuff", "fedfix", "async_fedavg"}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("where", ["central", "local"])
def test_every_strategy_runs_private_or_is_refused_in_one_line(tmp_path, name, where):
    raw = merge(TINY, strategy={"name": name}, engine={"rounds": 2},
                dp={"name": where, "clip": 0.5, "noise_multiplier": 1.0})
    if name in ASYNC:
        raw = merge(raw, engine={"mode": "async", "max_versions": 50, "max_updates": 3, "concurrency": 3})
    if name in REFUSED:
        with pytest.raises(ScenarioError, match=REFUSED[name]) as err:
            from_mapping(raw)
        assert "\n" not in str(err.value)
        return
    res = run_raw(raw, tmp_path / name)
    assert 0 < res.summary["dp"]["epsilon"] < math.inf
    assert all("epsilon" in r for r in read_metrics(tmp_path / name))


@pytest.mark.parametrize(("change", "match"), [
    ({"dp": {"name": "central", "adaptive": {"bit_noise": 1.0}}, "engine": {"mode": "async", "max_versions": 3},
      "strategy": {"name": "fedbuff"}}, r"dp\.adaptive: adaptive clipping needs a cohort"),
    ({"dp": {"name": "central", "accountant": "pld"}, "participation": {"name": "uniform", "k": 2}},
     r"dp\.accountant: dp-accounting's PLD accountant has no sampling-without-replacement"),
    ({"dp": {"name": "central", "noise_multiplier": 2.0, "adaptive": {"bit_noise": 1.0}}},
     r"dp\.adaptive\.bit_noise: must exceed noise_multiplier/2 = 1"),
    ({"dp": {"name": "local", "adaptive": {}}}, r"dp\.adaptive: unknown key"),
    ({"dp": {"name": "centrl"}}, r"dp\.name: unknown dp 'centrl' \(did you mean 'central'\?\)"),
])
def test_bad_dp_blocks_give_one_line(change, match):
    with pytest.raises(ScenarioError, match=match) as err:
        from_mapping(merge(TINY, **change))
    assert "\n" not in str(err.value)


def test_missing_library_is_a_one_line_install_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "dp_accounting" else real(name, *a))
    with pytest.raises(ScenarioError, match=r"dp\.accountant: needs dp-accounting: pip install 'fedsim\[privacy\]'"):
        from_mapping(merge(TINY, dp=CENTRAL))
    from_mapping(TINY)  # without a dp: block nothing needs the library


# --- the privacy plot ----------------------------------------------------------------------


def test_privacy_plot_draws_one_curve_per_dp_run_and_a_baseline(tmp_path):
    from fedsim.results import plots
    from fedsim.results.rundata import find_runs, group_runs

    base = merge(TINY, engine={"rounds": 3},
                 participation={"name": "bernoulli", "probs": {"name": "constant", "p": 0.5}})
    for z in (0.5, 2.0):
        run_raw(merge(base, dp={"name": "central", "clip": 0.5, "noise_multiplier": z}), tmp_path / "sw" / f"z{z}")
    run_raw(base, tmp_path / "sw" / "none")
    groups = group_runs(find_runs([tmp_path / "sw"]))
    fig = plots.privacy(groups)
    left, right = fig.axes[:2]
    assert len(left.lines) == 2 + 1  # a curve per DP run, the baseline's dashed line
    finals = right.collections  # one point per DP run, at its final ε
    eps = sorted(float(c.get_offsets()[0][0]) for c in finals)
    want = sorted(json.loads((tmp_path / "sw" / f"z{z}" / "summary.json").read_text())["dp"]["epsilon"]
                  for z in (0.5, 2.0))
    assert eps == pytest.approx(want)
    (png,) = plots.plot([tmp_path / "sw"], "privacy", tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "privacy" in [k for k in plots.KINDS if plots.applicable(k, groups)]
    assert not plots.applicable("privacy", group_runs(find_runs([tmp_path / "sw" / "none"])))
    assert cli.main(["plot", str(tmp_path / "sw"), "--kind", "privacy", "-o", str(tmp_path / "cli.png")]) == 0


def test_default_none_does_no_dp_arithmetic(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the DP stage ran without a dp: block")

    monkeypatch.setattr(dpm, "clip", boom)
    monkeypatch.setattr(dpm.DPStage, "__init__", boom)
    res = run_raw(TINY, tmp_path / "plain")
    assert "dp" not in res.summary and "epsilon" not in read_metrics(tmp_path / "plain")[-1]
    assert dpm.build(dpm.NoDP(), from_mapping(TINY), 0, 6) is None


def test_async_resume_restores_the_dp_stage(tmp_path):
    raw = merge(TINY, name="ackpt", engine={"mode": "async", "max_versions": 12, "concurrency": 3},
                strategy={"name": "fedbuff", "buffer_size": 2}, checkpoint={"every": 4},
                dp={"name": "central", "clip": 0.3, "noise_multiplier": 0.7})
    run_raw(raw, tmp_path / "ref")
    shutil.copytree(tmp_path / "ref", tmp_path / "again")
    (tmp_path / "again" / "summary.json").unlink()
    assert cli.main(["run", "--resume", str(tmp_path / "again"), "--quiet"]) == 0
    assert read_metrics(tmp_path / "ref") == read_metrics(tmp_path / "again")
    s_ref = json.loads((tmp_path / "ref" / "summary.json").read_text())["dp"]
    s_again = json.loads((tmp_path / "again" / "summary.json").read_text())["dp"]
    assert s_ref == s_again and s_ref["mechanisms"] >= 2
