"""Server optimisers (fedsim.strategy.server_opt): each transformation a few steps by hand,
composition, immutable state, YAML loading, refused double application, and the engine's
pipeline (identity skipped, sgd equal to server_lr, checkpoint/resume with adaptive state)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import TINY, merge, run_raw

from fedsim.cli import app as cli
from fedsim.errors import ConfigError, ScenarioError
from fedsim.scenario.fields import build_plugin, to_raw
from fedsim.scenario.loading import from_mapping
from fedsim.strategy import server_opt as so

ASYNC = {"mode": "async", "max_versions": 5}
X = np.zeros(2)  # the transformations below do not depend on the parameters


def _run(opt, steps):
    state = opt.init(X[: len(steps[0])])
    out = []
    for g in steps:
        s, state = opt.update(np.asarray(g, dtype=np.float64), state, X)
        out.append(s)
    return out, state


def test_sgd_by_hand():
    # s = η Δ with η = 0.5
    (s,), _ = _run(so.Sgd(lr=0.5), [[2.0, -4.0]])
    np.testing.assert_array_equal(s, [1.0, -2.0])


def test_momentum_by_hand():
    # η = 0.1, μ = 0.9, Δ_1 = [1, 2], Δ_2 = [1, 0]
    # heavy ball: m_1 = [1, 2] -> s_1 = [0.1, 0.2]; m_2 = 0.9·[1, 2] + [1, 0] = [1.9, 1.8] -> s_2 = [0.19, 0.18]
    (s1, s2), state = _run(so.Momentum(lr=0.1, momentum=0.9), [[1.0, 2.0], [1.0, 0.0]])
    np.testing.assert_allclose(s1, [0.1, 0.2], rtol=1e-12)
    np.testing.assert_allclose(s2, [0.19, 0.18], rtol=1e-12)
    np.testing.assert_allclose(state.m, [1.9, 1.8], rtol=1e-12)
    # Nesterov: s = η(Δ + μ m): s_1 = 0.1·([1, 2] + 0.9·[1, 2]) = [0.19, 0.38];
    # s_2 = 0.1·([1, 0] + 0.9·[1.9, 1.8]) = [0.271, 0.162]
    (n1, n2), _ = _run(so.Momentum(lr=0.1, momentum=0.9, nesterov=True), [[1.0, 2.0], [1.0, 0.0]])
    np.testing.assert_allclose(n1, [0.19, 0.38], rtol=1e-12)
    np.testing.assert_allclose(n2, [0.271, 0.162], rtol=1e-12)


def test_adam_by_hand():
    # η = 0.1, β1 = 0.9, β2 = 0.99, τ = 0, Δ_1 = 2, Δ_2 = −1
    # m_1 = 0.1·2 = 0.2, v_1 = 0.01·4 = 0.04, s_1 = 0.1·0.2/0.2 = 0.1
    # m_2 = 0.18 − 0.1 = 0.08, v_2 = 0.0396 + 0.01 = 0.0496, s_2 = 0.1·0.08/√0.0496 = 0.0359211...
    opt = so.Adam(lr=0.1, b1=0.9, b2=0.99, tau=0.0)
    (s1, s2), state = _run(opt, [[2.0], [-1.0]])
    np.testing.assert_allclose(s1, [0.1], rtol=1e-12)
    np.testing.assert_allclose(s2, [0.008 / np.sqrt(0.0496)], rtol=1e-12)
    assert abs(s2[0] - 0.0359211) < 1e-7
    assert state.count == 2
    np.testing.assert_allclose([state.m[0], state.v[0]], [0.08, 0.0496], rtol=1e-12)
    # bias correction at t = 1: kingma η√(1−0.99)/(1−0.9) = 0.1 (so s_1 = 0.1 · 0.2/0.2 · 1);
    # flower uses t + 1 = 2: 0.1·√(1−0.9801)/(1−0.81) = 0.0742460...
    assert opt.lr_at(1) == 0.1
    assert so.Adam(lr=0.1, bias_correction="kingma").lr_at(1) == pytest.approx(0.1, rel=1e-12)
    assert so.Adam(lr=0.1, bias_correction="flower").lr_at(1) == pytest.approx(0.0742460, abs=1e-7)
    (k1,), _ = _run(so.Adam(lr=0.1, tau=0.0, bias_correction="flower"), [[2.0]])
    np.testing.assert_allclose(k1, [0.1 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)], rtol=1e-12)


def test_yogi_by_hand():
    # η = 0.01, β1 = 0.9, β2 = 0.99, τ = 0, Δ_1 = 2, Δ_2 = 0.1
    # v_1 = 0 − 0.01·4·sign(0 − 4) = 0.04, m_1 = 0.2, s_1 = 0.01·0.2/0.2 = 0.01
    # v_2 = 0.04 − 0.01·0.01·sign(0.04 − 0.01) = 0.0399, m_2 = 0.18 + 0.01 = 0.19,
    # s_2 = 0.01·0.19/√0.0399 = 0.00951190...
    (s1, s2), state = _run(so.Yogi(lr=0.01, tau=0.0), [[2.0], [0.1]])
    np.testing.assert_allclose(s1, [0.01], rtol=1e-12)
    np.testing.assert_allclose(state.v, [0.0399], rtol=1e-12)
    assert abs(s2[0] - 0.0095119) < 1e-7


def test_adagrad_by_hand():
    # η = 0.1, β1 = 0, τ = 0: Δ_1 = [3, 4] -> v_1 = [9, 16], s_1 = 0.1·[3/3, 4/4] = [0.1, 0.1]
    # Δ_2 = [4, 3] -> v_2 = [25, 25], s_2 = 0.1·[4/5, 3/5] = [0.08, 0.06]
    (s1, s2), state = _run(so.Adagrad(lr=0.1, tau=0.0), [[3.0, 4.0], [4.0, 3.0]])
    np.testing.assert_allclose(s1, [0.1, 0.1], rtol=1e-12)
    np.testing.assert_allclose(s2, [0.08, 0.06], rtol=1e-12)
    np.testing.assert_array_equal(state.v, [25.0, 25.0])


def test_chain_and_immutable_state():
    # momentum (η = 1, μ = 0.5) then sgd (η = 0.1): Δ = 1, 1 -> m = 1, 1.5 -> s = 0.1, 0.15
    opt = so.chain(so.Momentum(lr=1.0, momentum=0.5), so.Identity(), so.Sgd(lr=0.1))
    assert isinstance(opt, so.Chain) and len(opt.parts) == 2  # the identity is dropped
    (s1, s2), _ = _run(opt, [[1.0], [1.0]])
    np.testing.assert_allclose([s1[0], s2[0]], [0.1, 0.15], rtol=1e-12)
    assert so.is_identity(so.chain(so.Identity()))
    # update never changes the state it is given
    adam = so.Adam()
    s0 = adam.init(np.zeros(3))
    _, s1_ = adam.update(np.ones(3), s0, np.zeros(3))
    np.testing.assert_array_equal(s0.m, 0.0)
    np.testing.assert_array_equal(s0.v, 0.0)
    assert s0.count == 0 and s1_.count == 1


def test_staleness_discount_by_hand():
    # polynomial a = 0.5, τ̄ = 0: (1/(1+3))^0.5 = 0.5; with τ̄ = 3 it is 1 at τ = 3
    assert so.StalenessDiscount(kind="polynomial").weight(3) == 0.5
    assert so.StalenessDiscount(kind="polynomial", avg_staleness=3.0).weight(3) == 1.0
    # hinge a = 0.5, b = 2: τ = 2 -> 1; τ = 4 -> 1/(1 + 0.5·2) = 0.5
    hinge = so.StalenessDiscount(kind="hinge", exponent=0.5, cutoff=2)
    assert (hinge.weight(2), hinge.weight(4)) == (1.0, 0.5)
    assert so.StalenessDiscount(kind="threshold", cutoff=1, stale_value=0.2).weight(5) == 0.2
    step, _ = so.StalenessDiscount(kind="polynomial").update(np.array([2.0]), (), X, staleness=3)
    np.testing.assert_array_equal(step, [1.0])


def test_yaml_blocks_build_and_round_trip():
    s = build_plugin("strategy", {"name": "fedau", "server_opt": {"name": "adam", "lr": 0.01}}, "strategy")
    assert s.server_opt == so.Adam(lr=0.01)
    chained = {"name": "fedbuff", "server_opt": {"name": "chain", "steps": [
        {"name": "momentum", "momentum": 0.5, "nesterov": True}, {"name": "sgd", "lr": 0.5}]}}
    s = build_plugin("strategy", chained, "strategy")
    assert build_plugin("strategy", to_raw(s, "strategy"), "strategy") == s
    # fedadam keeps `adam` when only keys are given, with Flower's other defaults
    s = build_plugin("strategy", {"name": "fedyogi", "server_opt": {"lr": 0.05}}, "strategy")
    assert s.server_opt == so.Yogi(lr=0.05, tau=1e-3)
    with pytest.raises(ConfigError, match=r"strategy.server_opt.steps\[0\].name: unknown server_opt 'mom'"):
        build_plugin("strategy", {"name": "fedavg", "server_opt": {"name": "chain", "steps": [{"name": "mom"}]}},
                     "strategy")


@pytest.mark.parametrize("strategy, key", [
    ({"name": "fedavg", "server_lr": 0.5, "server_opt": {"name": "adam"}}, "strategy.server_lr"),
    ({"name": "fedadam", "server_lr": 2.0}, "strategy.server_lr"),
    ({"name": "fedbuff", "server_momentum": 0.9, "server_opt": {"name": "momentum", "lr": 1.0}},
     "strategy.server_momentum"),
])
def test_double_application_is_refused(strategy, key):
    raw = merge(TINY, strategy=strategy, engine=ASYNC if strategy["name"] == "fedbuff" else {"mode": "sync"})
    with pytest.raises(ScenarioError) as exc:
        from_mapping(raw)
    assert str(exc.value).startswith(f"<scenario>: {key}:") and "\n" not in str(exc.value)


def test_compatible_legacy_keys_are_accepted():
    from_mapping(merge(TINY, strategy={"name": "fedbuff", "server_momentum": 0.9, "server_opt": {"name": "sgd"}},
                       engine=ASYNC))
    from_mapping(merge(TINY, strategy={"name": "async_fedavg", "alpha": 0.5, "rule": "mix",
                                       "server_opt": {"name": "adam"}}, engine=ASYNC))
    with pytest.raises(ScenarioError, match="^<scenario>: strategy.alpha:"):
        from_mapping(merge(TINY, strategy={"name": "async_fedavg", "alpha": 0.5, "server_opt": {"name": "sgd"}},
                           engine=ASYNC))


def test_identity_skips_the_pipeline_and_sgd_equals_server_lr(tmp_path, monkeypatch):
    calls = []
    original = so.server_step
    monkeypatch.setattr(so, "server_step", lambda *a: calls.append(1) or original(*a))
    ref = run_raw(merge(TINY, strategy={"name": "fedavg", "server_lr": 0.5}), tmp_path / "lr")
    assert not calls  # the default never enters the pipeline
    via = run_raw(merge(TINY, strategy={"name": "fedavg", "server_opt": {"name": "sgd", "lr": 0.5}}),
                  tmp_path / "sgd")
    assert len(calls) == TINY["engine"]["rounds"]
    np.testing.assert_allclose(via.params, ref.params, atol=1e-6)


def test_async_commit_goes_through_the_server_optimiser(tmp_path):
    base = merge(TINY, engine={"mode": "async", "max_versions": 12, "concurrency": 3},
                 strategy={"name": "fedbuff", "buffer_size": 2, "server_lr": 0.5})
    ref = run_raw(base, tmp_path / "lr")
    via = run_raw(merge(base, strategy={"name": "fedbuff", "buffer_size": 2,
                                        "server_opt": {"name": "sgd", "lr": 0.5}}), tmp_path / "sgd")
    np.testing.assert_allclose(via.params, ref.params, atol=1e-6)
    adam = run_raw(merge(base, strategy={"name": "fedbuff", "buffer_size": 2,
                                         "server_opt": {"name": "adam", "lr": 0.01}}), tmp_path / "adam")
    assert np.abs(adam.params - ref.params).max() > 1e-3


def test_resume_restores_the_server_optimiser_state(tmp_path):
    raw = merge(TINY, name="ckpt", strategy={"name": "fedadam", "server_opt": {"lr": 0.05}},
                participation={"name": "uniform", "k": 3}, engine={"rounds": 20}, checkpoint={"every": 7})
    run_raw(raw, tmp_path / "ref")
    shutil.copytree(tmp_path / "ref", tmp_path / "again")
    (tmp_path / "again" / "summary.json").unlink()
    assert cli.main(["run", "--resume", str(tmp_path / "again"), "--quiet"]) == 0

    def rows(p):
        out = [json.loads(line) for line in (p / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in out]

    assert rows(tmp_path / "ref") == rows(tmp_path / "again")
    assert (tmp_path / "ref" / "events.jsonl").read_bytes() == (tmp_path / "again" / "events.jsonl").read_bytes()
