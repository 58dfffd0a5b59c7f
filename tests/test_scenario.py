"""Scenario loading: every shipped file validates; bad input gives one line with the dotted path."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedsim import scenario as sc_mod
from fedsim.errors import ScenarioError
from fedsim.scenario.loading import load

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_every_shipped_scenario_validates(path):
    sc = load(path)
    assert sc.name


def _write(tmp_path, raw, name="s.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw) if not isinstance(raw, str) else raw)
    return p


BASE = {"data": {"dataset": {"name": "digits"}, "num_clients": 5}}


@pytest.mark.parametrize("raw, expected", [
    ({"data": {"dataset": {"name": "digits"}, "num_clints": 5}},
     "data.num_clints: unknown key (did you mean 'num_clients'?)"),
    ({**BASE, "client": {"lr": "fast"}}, "client.lr: expected a number, got 'fast'"),
    ({"data": {"dataset": {"name": "digits"}, "num_clients": -3}}, "data.num_clients: must be >= 1, got -3"),
    ({**BASE, "strategy": {"name": "fedavgg"}}, "strategy.name: unknown strategy 'fedavgg' (did you mean 'fedavg'?)"),
    ({**BASE, "strategy": {"name": "fedavg", "server_lr": 1, "weighting": "exmples"}},
     "strategy.weighting: must be one of ['examples', 'uniform'], got 'exmples' (did you mean 'examples'?)"),
    ({**BASE, "model": {"name": "mlp", "hidden": [0]}}, "model: hidden widths must be in 1..1000000"),
    ({**BASE, "engine": {"rounds": 1.5}}, "engine.rounds: expected an integer, got 1.5"),
    ({**BASE, "data": {"dataset": {"name": "linear_regression"}, "partition": {"name": "iid"}, "num_clients": 5},
      "model": {"name": "linear"}},
     "data.partition.name: dataset 'linear_regression' is generated per client"),
    ({"data": {"num_clients": 5}}, "data.dataset: is required"),
    ({**BASE, "participation": {"name": "bernoulli", "probs": {"name": "uniform", "low": 0.9, "high": 0.1}}},
     "participation.probs: low (0.9) must be <= high (0.1)"),
    # strategy constraints on the number of clients are found by `fedsim validate`, before data is built
    ({**BASE, "engine": {"mode": "async", "max_versions": 3},
      "strategy": {"name": "fedbuff", "buffer_size": 6, "one_per_client": True}},
     "strategy.buffer_size: 6 is larger than data.num_clients (5) with one_per_client"),
    ({**BASE, "strategy": {"name": "fedavg", "server_lr": -1.0}}, "strategy.server_lr: must be > 0"),
    ({**BASE, "strategy": {"name": "fedavg", "server_lr": 1e9}}, "strategy.server_lr: must be <= 1000000"),
])
def test_bad_values_name_the_dotted_path(tmp_path, raw, expected):
    p = _write(tmp_path, raw)
    with pytest.raises(ScenarioError) as err:
        load(p)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(str(p) + ": ")
    assert expected in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ScenarioError, match="file not found"):
        load(tmp_path / "nope.yaml")
    with pytest.raises(ScenarioError, match=r"s.yaml:2:\d+: invalid YAML"):
        load(_write(tmp_path, "a: [1, 2\nb: 3\n"))


def test_overrides_apply_before_validation(tmp_path):
    p = _write(tmp_path, BASE)
    sc = load(p, ["engine.rounds=3", "strategy.server_lr=0.5", "model.hidden=[8, 8]"])
    assert sc.engine.rounds == 3 and sc.strategy.server_lr == 0.5 and sc.model.hidden == (8, 8)
    with pytest.raises(ScenarioError, match="engine.round: unknown key"):
        load(p, ["engine.round=3"])
    with pytest.raises(ScenarioError, match="not of the form"):
        load(p, ["engine.rounds"])


def test_resolved_yaml_round_trips(tmp_path):
    sc = load(ROOT / "scenarios" / "quickstart.yaml")
    again = sc_mod.from_mapping(yaml.safe_load(sc_mod.to_yaml(sc)))
    assert again == sc


def test_cli_reports_one_line_and_exit_2(tmp_path):
    p = _write(tmp_path, {"data": {"dataset": {"name": "digits"}, "num_clients": "many"}})
    res = subprocess.run([sys.executable, "-m", "fedsim", "run", str(p)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {p}: data.num_clients: expected an integer, got 'many'"]


def test_cli_validate_and_list(capsys):
    from fedsim.cli.app import main

    assert main(["validate", str(ROOT / "scenarios" / "quickstart.yaml")]) == 0
    assert main(["list", "strategies"]) == 0
    assert "fedavg" in capsys.readouterr().out
    assert main(["list", "strategys"]) == 2
    assert "did you mean 'strategies'" in capsys.readouterr().err
