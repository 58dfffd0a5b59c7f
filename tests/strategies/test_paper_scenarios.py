"""The paper scenarios of this branch load, name registered strategies and run a few rounds."""

from pathlib import Path

import pytest

from fedsim import registry
from fedsim.runner import run
from fedsim.scenario.loading import load

SCENARIOS = ["fedspeed_iclr2023.yaml", "admm_noise_robust.yaml", "fedau_iclr2024.yaml", "fedce_cvpr2023.yaml"]


@pytest.mark.parametrize("file", SCENARIOS)
def test_paper_scenario_loads_and_runs(file, tmp_path):
    path = Path("scenarios") / file
    sc = load(path, ["engine.rounds=2"])
    assert sc.name == path.stem
    assert type(sc.strategy) in registry.table("strategy").values()
    res = run(sc, tmp_path)
    assert res.params.size > 0
    assert (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("overrides", [["strategy.name=fedprox", "strategy.mu=0.01"], ["strategy.name=scaffold"]])
def test_fedspeed_scenario_runs_its_baselines(tmp_path, overrides):
    # The FedSpeed paper's drift-correcting baselines, as listed in the scenario header.
    sc = load(Path("scenarios") / "fedspeed_iclr2023.yaml", overrides + ["engine.rounds=2"])
    res = run(sc, tmp_path)
    assert res.final["num_failed"] == 0 and res.final["round"] == 2
