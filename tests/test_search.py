"""`fedsim sweep --optuna`: `--param` parsing, the same trials on every run of a search (also
after an interrupted trial is resumed), objectives equal to the runs' final metrics, the best
trial in the summary, and one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import LINREG, merge

from fedsim import search as search_mod
from fedsim.cli.app import main
from fedsim.errors import SweepError
from fedsim.search import Param, parse_param, search, trial_folder

PARAMS = ["client.lr=loguniform:1e-3:1", "client.local_steps=int:1:5"]


@pytest.fixture
def lsq(tmp_path) -> Path:
    p = tmp_path / "lsq.yaml"
    p.write_text(yaml.safe_dump(merge(LINREG, engine={"rounds": 6}, metrics={"eval_every": 3})))
    return p


def test_parse_param():
    assert parse_param("client.lr=loguniform:1e-3:1") == Param("client.lr", "loguniform", 0.001, 1.0)
    assert parse_param("client.local_steps=int:1:20") == Param("client.local_steps", "int", 1.0, 20.0)
    assert parse_param("a.b=logint:2:64").spec() == "a.b=logint:2:64"
    assert parse_param("strategy.name=choice:fedavg,fedprox").choices == ("fedavg", "fedprox")
    bad = {
        "client.lr=log:1e-3:1": "expected KEY=float:LO:HI, loguniform:LO:HI, int:LO:HI, logint:LO:HI or choice:A,B,...",
        "client.lr": "expected KEY=float:LO:HI",
        "client.lr=float:1": "float takes LO:HI, two numbers",
        "client.local_steps=int:1:2.5": "int takes LO:HI, two integers",
        "client.lr=float:1:0.5": "needs LO < HI, both finite",
        "client.lr=loguniform:0:1": "a log scale needs LO > 0",
        "a=choice:x,x": "choices must be two or more distinct non-empty values",
        "seed=int:0:3": "the seed is not a hyperparameter (use --seeds)",
    }
    for item, msg in bad.items():
        with pytest.raises(SweepError) as err:
            parse_param(item)
        assert str(err.value).startswith(f"--param {item!r}: {msg}") and "\n" not in str(err.value)
    assert trial_folder(3, {"client.lr": 0.0123456, "client.local_steps": 7}, 0) == \
        "trial-0003__client.lr=0.01235__client.local_steps=7__seed=0"


def _trials(out: Path) -> list[tuple]:
    doc = json.loads((out / "optuna.json").read_text())
    return [(t["number"], t["state"], t["params"], t["value"], t["values"]) for t in doc["trials"]]


def test_search_is_deterministic_resumes_and_summarises(lsq, tmp_path, monkeypatch):
    a = search(lsq, PARAMS, 3, "optimum_distance", "minimize", out=tmp_path / "a")
    assert a.ran == 3 and [t["state"] for t in a.trials] == ["COMPLETE"] * 3

    # the same search again, interrupted in trial 1 and resumed: the very same trials
    real = search_mod._run_seed

    def interrupt(scenario, overrides, folder, objective):
        if folder.name.startswith("trial-0001"):
            raise KeyboardInterrupt
        return real(scenario, overrides, folder, objective)

    monkeypatch.setattr(search_mod, "_run_seed", interrupt)
    with pytest.raises(KeyboardInterrupt):
        search(lsq, PARAMS, 3, "optimum_distance", "minimize", out=tmp_path / "b")
    monkeypatch.setattr(search_mod, "_run_seed", real)
    b = search(lsq, PARAMS, 3, "optimum_distance", "minimize", out=tmp_path / "b")
    assert b.ran == 2  # the interrupted trial 1 (with the parameters it had drawn) and trial 2
    assert _trials(tmp_path / "a") == _trials(tmp_path / "b")
    assert search(lsq, PARAMS, 3, "optimum_distance", "minimize", out=tmp_path / "b").ran == 0  # done already

    distinct = set()
    for t in a.trials:
        lr, steps = t["params"]["client.lr"], t["params"]["client.local_steps"]
        assert 1e-3 <= lr <= 1 and isinstance(steps, int) and 1 <= steps <= 5
        distinct.add((lr, steps))
        (folder,) = t["folders"]
        assert folder == trial_folder(t["number"], t["params"], None)
        run = tmp_path / "a" / folder
        final = json.loads((run / "summary.json").read_text())["final"]
        assert t["value"] == final["optimum_distance"]  # the objective is the run's final metric
        resolved = yaml.safe_load((run / "scenario.resolved.yaml").read_text())
        assert resolved["client"]["lr"] == lr and resolved["client"]["local_steps"] == steps
    assert len(distinct) == 3

    doc = json.loads((tmp_path / "a" / "optuna.json").read_text())
    best = min(a.trials, key=lambda t: t["value"])
    assert doc["best"]["number"] == best["number"] and doc["best"]["params"] == best["params"]
    with (tmp_path / "a" / "trials.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["value"]) for r in rows] == [t["value"] for t in a.trials]
    assert [float(r["client.lr"]) for r in rows] == [t["params"]["client.lr"] for t in a.trials]

    # the folder is a normal sweep folder for compare
    assert main(["compare", str(tmp_path / "a"), "-o", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp.csv").exists()


def test_seeds_average_and_cli(lsq, tmp_path, capsys):
    out = tmp_path / "s"
    rc = main(["sweep", str(lsq), "--optuna", "--trials", "2", "--param", PARAMS[0], "--seeds", "0..1",
               "--objective", "test_loss", "--direction", "minimize", "--out", str(out)])
    assert rc == 0
    cap = capsys.readouterr()
    assert "results: " in cap.out and "(2 trials, 2 ran now, 0 failed)" in cap.out
    for t in json.loads((out / "optuna.json").read_text())["trials"]:
        finals = [json.loads((out / f / "summary.json").read_text())["final"]["test_loss"] for f in t["folders"]]
        assert [f.rsplit("__", 1)[1] for f in t["folders"]] == ["seed=0", "seed=1"]
        assert t["values"] == finals and t["value"] == pytest.approx(sum(finals) / 2, rel=1e-15)


@pytest.mark.parametrize(("args", "msg"), [
    (["--optuna", "--param", "client.lr=log:1e-3:1"],
     "error: --param 'client.lr=log:1e-3:1': expected KEY=float:LO:HI, loguniform:LO:HI, int:LO:HI, logint:LO:HI "
     "or choice:A,B,..."),
    (["--param", PARAMS[0]], "error: --param and --trials belong to an Optuna search: add --optuna"),
    (["--optuna", "--param", PARAMS[0], "--set", "client.lr=0.1,0.2"], "error: --optuna takes --param, not --set"),
    (["--optuna"], "error: --optuna needs at least one --param KEY=KIND:..."),
    (["--optuna", "--param", "client.lrr=float:0.1:1"], "client.lrr: unknown key (did you mean 'lr'?)"),
])
def test_bad_flags_give_one_line(lsq, tmp_path, capsys, args, msg):
    assert main(["sweep", str(lsq), *args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and (err[0].startswith(msg) or msg in err[0])
    assert not (tmp_path / "x" / "optuna.journal").exists()


def test_bad_objective_and_other_search_in_folder(lsq, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["sweep", str(lsq), "--optuna", "--trials", "1", "--param", PARAMS[0], "--objective", "acc",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: --objective 'acc': not in the final metrics; one of: ") and "optimum_distance" in err
    assert main(["sweep", str(lsq), "--optuna", "--trials", "1", "--param", PARAMS[1], "--objective", "acc",
                 "--out", str(out)]) == 2
    want = f"error: {out} holds a different search (params differ); use another --out"
    assert capsys.readouterr().err.strip() == want
