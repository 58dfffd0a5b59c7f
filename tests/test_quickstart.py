"""The README's default scenario: >= 85% global test accuracy, results folder complete."""

import json
from pathlib import Path

from fedsim.cli.app import main

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_end_to_end(tmp_path):
    out = tmp_path / "qs"
    assert main(["run", str(ROOT / "scenarios" / "quickstart.yaml"), "--out", str(out), "--quiet"]) == 0
    for name in ("metrics.jsonl", "clients.jsonl", "events.jsonl", "summary.json",
                 "scenario.resolved.yaml", "model.pt"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["test_accuracy"] >= 0.85
    assert summary["versions"]["torch"].startswith("2.13")
    # the quickstart names its device, so its numbers are the same on a GPU host; the summary
    # records what decides the floats besides the scenario
    import yaml

    assert yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text())["model"]["device"] == "cpu"
    compute = summary["compute"]
    assert compute["device"] == "cpu" and compute["model_device"] == "cpu"
    assert compute["client_threads"] == 1 and compute["torch_threads"] == 1
    assert isinstance(compute["deterministic_algorithms"], bool) and "cudnn_benchmark" in compute
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("round", "virtual_time", "wall_time", "test_accuracy", "test_loss", "client_accuracy_mean",
                "client_accuracy_std", "client_accuracy_worst10", "client_accuracy_min", "jain_index",
                "num_updates", "bytes_up", "bytes_down"):
        assert key in last, key
