"""Plots from small real runs: every kind renders to a non-empty image of the expected
pixel size; missing or corrupt run files give one-line errors (exit code 2 on the CLI)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import LINREG, TINY, merge, run_raw

from fedsim.cli.app import main
from fedsim.errors import RunDataError
from fedsim.results import plots
from fedsim.results.rundata import find_runs, group_runs


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) > 5000, f"{path} is suspiciously small"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two seeds of TINY, a uniform-weighting variant, and a regression run."""
    base = tmp_path_factory.mktemp("runs")
    tiny = merge(TINY, engine={"rounds": 4},
                 participation={"name": "bernoulli", "probs": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]})
    out = {}
    for name, raw in {"s0": tiny, "s1": merge(tiny, seed=1),
                      "uniform": merge(tiny, strategy={"name": "fedavg", "weighting": "uniform"}),
                      "linreg": merge(LINREG, engine={"rounds": 20}, metrics={"eval_every": 5, "client_metrics": True})
                      }.items():
        run_raw(raw, base / name)
        out[name] = base / name
    return out


@pytest.fixture(scope="module")
def logged(runs, tmp_path_factory) -> Path:
    """A copy of a run whose clients.jsonl carries FedAU-style weights and FedCE-style
    contributions, as those strategies log them (values are synthetic, for drawing only)."""
    dst = tmp_path_factory.mktemp("logged") / "run"
    shutil.copytree(runs["s0"], dst)
    probs = json.loads((dst / "participation.json").read_text())["probs"]
    rows = [json.loads(line) for line in (dst / "clients.jsonl").read_text().splitlines()]
    for r in rows:
        r["fedau_weight"] = 1.0 / probs[r["client"]] * (1 + 0.05 * r["client"])
        r["fedce_contribution"] = 0.1 * (r["client"] + 1) * (1 + r["round"])
    (dst / "clients.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


@pytest.fixture
def async_run(runs, tmp_path) -> Path:
    """A hand-written async event log (4 clients, concurrency 2) on top of a real run's files."""
    dst = tmp_path / "async"
    shutil.copytree(runs["s0"], dst)
    sc = (dst / "scenario.resolved.yaml").read_text().replace("mode: sync", "mode: async")
    (dst / "scenario.resolved.yaml").write_text(sc)
    ev = []
    for j, (c, t0, t1, base, arr) in enumerate([(0, 0.0, 1.0, 0, 0), (1, 0.0, 2.5, 0, 1), (2, 1.0, 2.0, 1, 1),
                                                 (3, 2.0, 4.0, 2, 3), (0, 2.5, 3.0, 3, 3)]):
        ev.append({"kind": "dispatch", "client": c, "job": j, "virtual_time": t0, "version": base, "staleness": None})
        ev.append({"kind": "arrive", "client": c, "job": j, "virtual_time": t1, "version": arr,
                   "staleness": arr - base})
        ev.append({"kind": "commit", "client": None, "virtual_time": t1, "version": arr + 1, "staleness": None})
    ev.append({"kind": "drop", "client": 5, "job": 9, "virtual_time": 3.5, "version": 4, "staleness": None,
               "reason": "dropout"})
    (dst / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ev))
    return dst


def test_grouping_pools_seeds_and_labels_differences(runs):
    groups = group_runs(find_runs([runs["s0"], runs["s1"], runs["uniform"]]))
    assert [len(g.runs) for g in groups] == [2, 1]
    assert groups[0].label == "strategy.weighting=examples" and groups[1].label == "strategy.weighting=uniform"
    assert sorted(groups[0].seeds) == [0, 1]


def test_labels_leave_out_keys_implied_by_a_plugin_choice(tmp_path):
    import yaml

    for name, part in {"a": {"name": "full"}, "b": {"name": "bernoulli", "probs": {"name": "constant", "p": 0.5}},
                       "c": {"name": "bernoulli", "probs": {"name": "constant", "p": 0.2}}}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "scenario.resolved.yaml").write_text(yaml.safe_dump(merge(TINY, participation=part)))
    labels = [g.label for g in group_runs(find_runs([tmp_path]))]
    assert labels == ["participation.name=full", "participation.name=bernoulli, participation.probs.p=0.5",
                      "participation.name=bernoulli, participation.probs.p=0.2"]


@pytest.mark.parametrize("kind, size", [("convergence", (1300, 740)), ("fairness", (1200, 800)),
                                        ("participation", (1100, 780)), ("async", (1400, 440))])
def test_every_kind_renders_png_of_expected_size(runs, tmp_path, kind, size):
    (path,) = plots.plot([runs["s0"], runs["s1"], runs["uniform"]], kind, tmp_path / f"{kind}.png")
    assert png_size(path) == size


def test_weights_and_contributions_render(logged, tmp_path):
    (p,) = plots.plot([logged], "participation", tmp_path / "p.png")
    assert png_size(p) == (1400, 420)  # 3 panels: heatmap, rate vs p, weight vs 1/p
    (c,) = plots.plot([logged], "contributions", tmp_path / "c.png")
    assert png_size(c) == (1300, 400)


def test_async_from_hand_written_events(async_run, tmp_path):
    written = plots.plot([async_run], "all", tmp_path / "a.png")
    names = sorted(p.name for p in written)
    assert names == ["a-async.png", "a-convergence.png", "a-fairness.png", "a-participation.png"]
    assert png_size(tmp_path / "a-async.png") == (1400, 440)


def test_regression_run_plots_distance_and_loss(runs, tmp_path):
    fig = plots.convergence(group_runs(find_runs([runs["linreg"]])))
    labels = {ax.get_ylabel() for ax in fig.axes}
    assert labels == {"optimum distance", "test loss"}
    (p,) = plots.plot([runs["linreg"]], "fairness", tmp_path / "f.png")
    assert png_size(p) == (1200, 800)


def test_all_kinds_default_location_and_formats(runs, tmp_path):
    written = plots.plot([runs["linreg"]], "all")
    assert {p.name for p in written} == {"convergence.png", "fairness.png", "participation.png"}
    assert all(p.parent == runs["linreg"] / "plots" for p in written)
    svg = plots.plot([runs["s0"]], "convergence", tmp_path / "c.svg")[0].read_text()
    assert "<svg" in svg[:500]
    assert plots.plot([runs["s0"]], "fairness", tmp_path / "f.pdf")[0].read_bytes()[:5] == b"%PDF-"
    with pytest.raises(plots.PlotError, match="unsupported format '.gif'"):
        plots.plot([runs["s0"]], "convergence", tmp_path / "c.gif")


def test_sweep_folder_expands_to_its_runs(runs):
    found = find_runs([runs["s0"].parent])
    assert {r.path.name for r in found} == {"s0", "s1", "uniform", "linreg"}


def _broken(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage, kind, message", [
    (lambda d: (d / "metrics.jsonl").unlink(), "convergence", "metrics.jsonl: missing"),
    (lambda d: (d / "metrics.jsonl").write_text('{"round": 0,\n'), "convergence", "metrics.jsonl:1: not valid JSON"),
    (lambda d: (d / "metrics.jsonl").write_text(""), "convergence", "no evaluation points"),
    (lambda d: (d / "metrics.jsonl").write_text('{"round": 0}\n'), "convergence", "missing key(s) virtual_time"),
    (lambda d: (d / "metrics.jsonl").write_text("[1, 2]\n"), "convergence", "expected a JSON object"),
    (lambda d: (d / "clients.jsonl").unlink(), "fairness", "clients.jsonl: missing"),
    (lambda d: (d / "clients.jsonl").write_text(""), "fairness", "no per-client rows"),
    (lambda d: (d / "events.jsonl").write_bytes(b"\xff\xfe\n"), "participation", "events.jsonl"),
    (lambda d: (d / "scenario.resolved.yaml").write_text("a: [1\n"), "convergence", "scenario.resolved.yaml: corrupt"),
    (lambda d: (d / "participation.json").write_text("{"), "participation", "participation.json: corrupt"),
])
def test_missing_or_corrupt_files_give_one_line_error(runs, tmp_path, capsys, damage, kind, message):
    d = _broken(runs["s0"], tmp_path / "run")
    damage(d)
    with pytest.raises(RunDataError) as exc:
        plots.plot([d], kind, tmp_path / "x.png")
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert main(["plot", str(d), "--kind", kind, "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "x.png").exists()


def test_not_a_run_folder(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_fairness_numbers_match_metrics_file(runs):
    # The fairness panels recompute Jain/std from clients.jsonl; they must equal what the
    # engine logged in metrics.jsonl from the same per-client accuracies.
    run = find_runs([runs["s0"]])[0]
    _, vals = run.client_matrix("accuracy")
    stats = plots._fair_stats(vals, regression=False)
    np.testing.assert_allclose(stats[5], run.series("jain_index"), rtol=1e-12)
    np.testing.assert_allclose(stats[4], run.series("client_accuracy_std"), rtol=1e-12)
    np.testing.assert_allclose(stats[3], run.series("client_accuracy_worst10"), rtol=1e-12)


def test_legend_names_a_shared_block_once():
    from fedsim.results.plots import _strip_common_block

    labels = ["compression.name=none (3 seeds)", "compression.name=topk, compression.error_feedback=ef (3 seeds)"]
    assert _strip_common_block(labels) == ["compression: name=none (3 seeds)", "name=topk, error_feedback=ef (3 seeds)"]
    mixed = ["dp.name=none", "dp.name=central, strategy.server_lr=0.5"]
    assert _strip_common_block(mixed) == mixed  # two blocks: labels stay as they are
    assert _strip_common_block(["seed=0", "seed=1"]) == ["seed=0", "seed=1"]
