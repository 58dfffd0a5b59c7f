"""The paper scenarios of this branch load, name registered strategies and run a few rounds."""

from pathlib import Path

import pytest

from fedsim.run import run
from fedsim.scenario import load
from strategies import STRATEGIES

SCENARIOS = ["fedspeed_iclr2023.yaml", "admm_noise_robust.yaml"]


@pytest.mark.parametrize("file", SCENARIOS)
def test_paper_scenario_loads_and_runs(file, tmp_path):
    path = Path("scenarios") / file
    sc = load(path, ["engine.rounds=2"])
    assert sc.name == path.stem
    assert type(sc.strategy) in STRATEGIES.values()
    res = run(sc, tmp_path)
    assert res.params.size > 0
    assert (tmp_path / "metrics.jsonl").exists()
