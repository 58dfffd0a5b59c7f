"""Checkpoint / resume: a run killed with SIGKILL and resumed ends with exactly the files of
an uninterrupted run (apart from wall_time)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY, merge, run_raw

from fedsim.cli import app as cli
from fedsim.engine import checkpoint

ROOT = Path(__file__).resolve().parents[1]

# Stateful on every axis a resume must restore: a random participation process (its
# generator), SCAFFOLD's server and per-client state, injected faults, virtual time.
RAW = merge(TINY, name="ckpt", data={"num_clients": 8},
            participation={"name": "uniform", "k": 4},
            system={"compute": {"name": "lognormal", "mean": 1.0, "sigma": 0.5}},
            strategy={"name": "scaffold"}, faults={"client_crash_prob": 0.2},
            engine={"rounds": 150}, metrics={"eval_every": 5}, checkpoint={"every": 10})


def _rows(path: Path, drop_wall: bool = False) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    if drop_wall:
        for r in rows:
            r.pop("wall_time", None)
    return rows


def _same_run(a: Path, b: Path) -> None:
    assert _rows(a / "metrics.jsonl", True) == _rows(b / "metrics.jsonl", True)
    assert (a / "events.jsonl").read_bytes() == (b / "events.jsonl").read_bytes()
    assert (a / "clients.jsonl").read_bytes() == (b / "clients.jsonl").read_bytes()


def _reference_and_killed(tmp_path: Path, raw: dict) -> tuple[Path, Path]:
    """An uninterrupted run of `raw`, and a second run SIGKILLed after a checkpoint."""
    ref = tmp_path / "ref"
    run_raw(raw, ref)
    scenario = tmp_path / "ckpt.yaml"
    scenario.write_text(yaml.safe_dump(raw), encoding="utf-8")
    out = tmp_path / "killed"
    _kill_after_checkpoint(scenario, out, at_least=20)
    assert len(_rows(out / "metrics.jsonl")) < len(_rows(ref / "metrics.jsonl"))  # really interrupted
    assert not (out / "summary.json").exists()
    return ref, out


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path):
    ref, out = _reference_and_killed(tmp_path, RAW)
    rc = cli.main(["run", "--resume", str(out), "--quiet"])
    assert rc == 0
    _same_run(ref, out)
    assert json.loads((out / "summary.json").read_text())["final"]["round"] == 150


def test_resume_from_checkpoint_in_process_and_bad_resume(tmp_path, capsys):
    raw = merge(RAW, engine={"rounds": 20}, checkpoint={"every": 7})
    run_raw(raw, tmp_path / "ref")
    # The run folder as a crash right after the round-14 checkpoint leaves it: the finished
    # run's files are longer than the checkpoint's offsets, resume truncates and recomputes.
    import shutil

    shutil.copytree(tmp_path / "ref", tmp_path / "again")
    (tmp_path / "again" / "summary.json").unlink()
    assert checkpoint.load(tmp_path / "again")["next_round"] == 14
    assert cli.main(["run", "--resume", str(tmp_path / "again"), "--quiet"]) == 0
    _same_run(tmp_path / "ref", tmp_path / "again")

    # no checkpoint / junk checkpoint / extra arguments: one-line errors, exit 2
    run_raw(merge(raw, checkpoint={"every": None}), tmp_path / "none")
    assert cli.main(["run", "--resume", str(tmp_path / "none"), "--quiet"]) == 2
    (tmp_path / "none" / "checkpoint").mkdir()
    (tmp_path / "none" / checkpoint.FILE).write_bytes(b"\x80junk")
    assert cli.main(["run", "--resume", str(tmp_path / "none"), "--quiet"]) == 2
    assert cli.main(["run", "x.yaml", "--resume", str(tmp_path / "none")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 3 and all(ln.startswith("error: ") for ln in err)
    assert "no checkpoint" in err[0] and "unreadable checkpoint" in err[1]


def test_checkpoint_write_is_atomic(tmp_path):
    run_raw(merge(RAW, engine={"rounds": 6}, checkpoint={"every": 2}), tmp_path)
    files = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert files == ["state.pkl"]  # the temporary file was renamed over it, never left behind
    snap = checkpoint.load(tmp_path)
    assert snap["next_round"] == 4 and snap["counters"]["dispatches"] == 16  # 4 rounds x k=4
    assert set(snap["offsets"]) == {"metrics", "clients", "events"}


# Async: FedBuff with random speeds, a random (Markov) participation process whose masks
# the loop caches ahead, several jobs in flight at every checkpoint, crashes.
ASYNC = merge(TINY, name="ckpt_async", data={"num_clients": 8},
              participation={"name": "markov", "probs": {"name": "constant", "p": 0.6}, "a": 0.3},
              system={"compute": {"name": "lognormal", "mean": 1.0, "sigma": 0.5}},
              strategy={"name": "fedbuff", "buffer_size": 3}, faults={"client_crash_prob": 0.1},
              engine={"mode": "async", "concurrency": 3, "redispatch": "sample", "max_versions": 100},
              metrics={"eval_every": 5}, checkpoint={"every": 10})


def _kill_after_checkpoint(scenario: Path, out: Path, at_least: int) -> None:
    """Run the CLI in a subprocess and SIGKILL it a little after the checkpoint `at_least`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "fedsim", "run", str(scenario), "--quiet", "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            path = out / checkpoint.FILE
            if path.is_file() and checkpoint.load(out)["next_round"] >= at_least:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        time.sleep(0.05)  # let it write a row or two past the checkpoint
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_async_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path):
    raw = merge(ASYNC, engine={"max_versions": 200})  # long enough that the kill lands mid-way
    ref, out = _reference_and_killed(tmp_path, raw)
    snap = checkpoint.load(out)
    assert snap["mode"] == "async" and snap["version"] == snap["next_round"] and snap["next_round"] % 10 == 0

    assert cli.main(["run", "--resume", str(out), "--quiet"]) == 0
    _same_run(ref, out)
    assert json.loads((out / "summary.json").read_text())["final"]["version"] == 200


def test_async_resume_from_checkpoint_in_process(tmp_path):
    import shutil

    raw = merge(ASYNC, engine={"max_versions": 40}, checkpoint={"every": 7})
    run_raw(raw, tmp_path / "ref")
    snap = checkpoint.load(tmp_path / "ref")
    # the last checkpoint (version 35) holds the loop mid-flight: jobs running, events queued,
    # participation masks drawn ahead of the clock
    assert snap["next_round"] == 35 and snap["loop"]["flights"] and snap["loop"]["heap"]
    assert snap["loop"]["next_step"] > snap["loop"]["oldest"]
    assert snap["counters"]["dispatches"] > snap["counters"]["num_updates"]
    shutil.copytree(tmp_path / "ref", tmp_path / "again")
    (tmp_path / "again" / "summary.json").unlink()
    assert cli.main(["run", "--resume", str(tmp_path / "again"), "--quiet"]) == 0
    _same_run(tmp_path / "ref", tmp_path / "again")

    # on_commit dispatch with timed evaluation: clients waiting for a commit are restored too
    raw = merge(ASYNC, strategy={"name": "async_fedavg"}, metrics={"eval_every": None, "eval_every_time": 3.0},
                engine={"redispatch": "on_commit", "drop_offline": True, "max_versions": 30},
                checkpoint={"every": 4})
    run_raw(raw, tmp_path / "ref2")
    assert checkpoint.load(tmp_path / "ref2")["next_round"] == 28
    shutil.copytree(tmp_path / "ref2", tmp_path / "again2")
    assert cli.main(["run", "--resume", str(tmp_path / "again2"), "--quiet"]) == 0
    _same_run(tmp_path / "ref2", tmp_path / "again2")


@pytest.mark.parametrize("client_metrics", ["none", "all"])
def test_sigkill_loses_at_most_the_lines_since_the_last_evaluation(tmp_path, client_metrics):
    """events.jsonl and clients.jsonl are flushed at every evaluation (docs/reliability.md): after a
    SIGKILL, every event up to the commit of the last metrics row is on disk, and so is every
    per-client row of the evaluations before it."""
    raw = merge(TINY, name="flush", engine={"rounds": 5000}, participation={"name": "uniform", "k": 1},
                metrics={"eval_every": 3, "client_metrics": client_metrics},
                checkpoint={"every": None})
    scenario = tmp_path / "flush.yaml"
    scenario.write_text(yaml.safe_dump(raw), encoding="utf-8")
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "fedsim", "run", str(scenario), "--quiet", "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            metrics = out / "metrics.jsonl"
            if metrics.is_file() and metrics.read_text().count("\n") >= 12:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.endswith("}")]
    last = rows[-1]["round"]
    text = (out / "events.jsonl").read_text()
    commits = [json.loads(ln)["round"] for ln in text.splitlines() if ln.endswith("}") and '"commit"' in ln]
    assert last in commits, f"metrics reached round {last}, events only round {max(commits, default=0)}"
    if client_metrics == "all":
        seen = {json.loads(ln)["round"] for ln in (out / "clients.jsonl").read_text().splitlines() if ln.endswith("}")}
        assert {r["round"] for r in rows[:-1]} <= seen
