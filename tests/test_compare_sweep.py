"""`fedsim compare` numbers against the metrics files, and `fedsim sweep` grids, names,
resume and parallel determinism."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml
from conftest import LINREG, TINY, merge, read_metrics, run_raw

from fedsim.cli.app import main
from fedsim.errors import SweepError
from fedsim.results import compare
from fedsim.sweep import folder_name, grid, parse_seeds, parse_set, split_values, sweep


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cmp")
    tiny = merge(TINY, engine={"rounds": 4})
    run_raw(tiny, base / "a0")
    run_raw(merge(tiny, seed=1), base / "a1")
    run_raw(merge(tiny, client={"lr": 0.01}), base / "b0")
    return base


def test_compare_rows_match_metrics(three):
    c = compare.compare([three / "a0", three / "a1", three / "b0"], target=0.6)
    assert [(label, n) for label, n, _ in c.rows] == [("client.lr=0.1", 2), ("client.lr=0.01", 1)]
    m0, m1 = read_metrics(three / "a0"), read_metrics(three / "a1")
    cells = dict(zip([col.key for col in c.columns], c.rows[0][2], strict=True))
    assert cells["final_accuracy"].values == (m0[-1]["test_accuracy"], m1[-1]["test_accuracy"])
    assert cells["jain"].values == (m0[-1]["jain_index"], m1[-1]["jain_index"])
    assert cells["worst10_accuracy"].values == (m0[-1]["client_accuracy_worst10"], m1[-1]["client_accuracy_worst10"])
    first = [next((r["round"] for r in m if r["test_accuracy"] >= 0.6), None) for m in (m0, m1)]
    want = tuple(float("nan") if f is None else float(f) for f in first)
    got = cells["rounds_to_target"].values
    assert [g for g in got if g == g] == [w for w in want if w == w]
    assert cells["mbytes"].values[0] == (m0[-1]["bytes_up"] + m0[-1]["bytes_down"]) / 1e6


def test_compare_default_target_and_outputs(three, tmp_path, capsys):
    assert main(["compare", str(three / "a0"), str(three / "b0"), "-o", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "target: test_accuracy ≥" in out and "client.lr=0.01" in out
    md = (tmp_path / "t.md").read_text()
    assert md.count("\n|") == 4 and "| run | seeds | final accuracy |" in md
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    finals = [read_metrics(three / d)[-1]["test_accuracy"] for d in ("a0", "b0")]
    assert [float(r["final_accuracy_mean"]) for r in rows] == pytest.approx(finals, abs=1e-9)
    target = float(rows[0]["target"])
    assert target == pytest.approx(int(0.95 * min(finals) * 100) / 100)
    # the default target is reached by every row by construction
    assert all(r["rounds_to_target_n"] == "1" for r in rows)


def test_compare_regression_and_bad_folder(tmp_path, capsys):
    run_raw(merge(LINREG, engine={"rounds": 20}), tmp_path / "lr")
    c = compare.compare([tmp_path / "lr"], target=0.5)
    assert c.metric == "optimum_distance" and c.columns[0].key == "final_distance"
    assert main(["compare", str(tmp_path / "nothing")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_sweep_argument_parsing():
    assert parse_seeds("0..4") == [0, 1, 2, 3, 4] and parse_seeds("3") == [3] and parse_seeds("0,5") == [0, 5]
    for bad in ("4..0", "a", "1,1", "-1"):
        with pytest.raises(SweepError):
            parse_seeds(bad)
    assert split_values("fedavg,fedau") == ["fedavg", "fedau"]
    assert split_values("[64,64],[32], {a: 1, b: 2}") == ["[64,64]", "[32]", "{a: 1, b: 2}"]
    assert parse_set("model.hidden=[64,64],[32]") == ("model.hidden", ["[64,64]", "[32]"])
    for bad in ("noequals", "seed=1,2", "a.b=x,x", "a..b=1", "a.b=1,"):
        with pytest.raises(SweepError):
            parse_set(bad)
    pts = grid([("strategy.name", ["fedavg", "fedau"]), ("client.lr", ["0.1"])], [0, 1])
    assert [p.name for p in pts] == [
        "strategy.name=fedavg__client.lr=0.1__seed=0", "strategy.name=fedavg__client.lr=0.1__seed=1",
        "strategy.name=fedau__client.lr=0.1__seed=0", "strategy.name=fedau__client.lr=0.1__seed=1"]
    assert pts[3].overrides == ("strategy.name=fedau", "client.lr=0.1", "seed=1")
    assert folder_name([("model.hidden", "[64, 64]")]) == "model.hidden=-64--64-"
    assert len(folder_name([("k", "x" * 500)])) <= 120


@pytest.fixture
def scenario_file(tmp_path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(merge(TINY, engine={"rounds": 2})))
    return p


def test_sweep_runs_grid_resumes_and_feeds_compare(scenario_file, tmp_path, capsys):
    out = tmp_path / "sw"
    args = ["sweep", str(scenario_file), "client.local_steps=2", "--seeds", "0..1",
            "--set", "strategy.weighting=examples,uniform", "--out", str(out)]
    assert main(args) == 0
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == ["strategy.weighting=examples__seed=0", "strategy.weighting=examples__seed=1",
                     "strategy.weighting=uniform__seed=0", "strategy.weighting=uniform__seed=1"]
    resolved = yaml.safe_load((out / names[3] / "scenario.resolved.yaml").read_text())
    assert resolved["seed"] == 1 and resolved["strategy"]["weighting"] == "uniform"
    assert resolved["client"]["local_steps"] == 2
    assert json.loads((out / "sweep.json").read_text())["runs"][names[0]] == ["strategy.weighting=examples", "seed=0"]
    capsys.readouterr()
    assert main(args) == 0  # nothing left to do
    assert "(0 ran, 4 already done, 0 failed)" in capsys.readouterr().out
    c = compare.compare([out])
    assert [(label, n) for label, n, _ in c.rows] == [("strategy.weighting=examples", 2),
                                                      ("strategy.weighting=uniform", 2)]


def test_sweep_validates_every_combination_first(scenario_file, tmp_path, capsys):
    code = main(["sweep", str(scenario_file), "--set", "client.lr=0.1,-1", "--out", str(tmp_path / "x")])
    assert code == 2 and "client.lr: must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing ran
    assert main(["sweep", str(scenario_file), "--seeds", "9..1"]) == 2


@pytest.mark.slow  # spawns worker processes (each imports torch): ~30 s on 2 busy cores
def test_parallel_sweep_matches_sequential(scenario_file, tmp_path):
    a = sweep(scenario_file, ["client.lr=0.1,0.05"], [0], out=tmp_path / "seq", jobs=1)
    b = sweep(scenario_file, ["client.lr=0.1,0.05"], [0], out=tmp_path / "par", jobs=2)
    assert not a.failed and not b.failed and a.points == b.points
    for p in a.points:
        assert read_metrics(tmp_path / "seq" / p.name) == read_metrics(tmp_path / "par" / p.name)
