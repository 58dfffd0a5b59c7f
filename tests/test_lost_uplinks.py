"""Lost uplinks (channel.loss_prob): decided at dispatch; the client still trains and keeps its state."""

import json

import numpy as np
from conftest import TINY, merge, read_metrics, run_raw

from fedsim.engine import checkpoint


def _events(out):
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def test_scaffold_client_keeps_advancing_c_i_when_every_upload_is_lost(tmp_path):
    raw = merge(TINY, engine={"rounds": 3}, strategy={"name": "scaffold"}, channel={"loss_prob": 1.0},
                checkpoint={"every": 1})
    run_raw(raw, tmp_path / "one")
    c1 = checkpoint.load(tmp_path / "one")["client_states"]
    assert all(np.any(np.asarray(c1.get(k)) != 0) for k in range(6))  # after round 2, c_i is set for every client
    run_raw(merge(raw, engine={"rounds": 2}), tmp_path / "two")  # its checkpoint is after round 1
    c2 = checkpoint.load(tmp_path / "two")["client_states"]
    assert not np.array_equal(np.asarray(c1.get(0)), np.asarray(c2.get(0)))  # round 2 advanced it again
    rows = read_metrics(tmp_path / "one")
    assert rows[-1]["num_updates"] == 0 and rows[0]["test_loss"] == rows[-1]["test_loss"]
    drops = [e for e in _events(tmp_path / "one") if e["kind"] == "drop"]
    assert len(drops) == 18 and all(e["reason"] == "lost in channel" for e in drops)


class _Counting:
    """Executor wrapper counting submitted jobs."""

    def __init__(self, inner):
        self.inner, self.jobs = inner, 0

    def submit(self, jobs):
        self.jobs += len(jobs)
        return self.inner.submit(jobs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_lost_uploads_of_stateless_clients_are_not_computed(tmp_path):
    from fedsim.runner import run
    from fedsim.scenario.loading import from_mapping

    sc = from_mapping(merge(TINY, engine={"rounds": 3}, channel={"loss_prob": 0.5}))
    ex = _Counting(sc.executor.create())
    run(sc, tmp_path, executor=ex)
    evs = _events(tmp_path)
    lost = [e for e in evs if e["kind"] == "drop" and e["reason"] == "lost in channel"]
    arrived = [e for e in evs if e["kind"] == "arrive"]
    assert lost and arrived and len(lost) + len(arrived) == 18
    assert ex.jobs == len(arrived)  # lost jobs of plain local SGD never run
