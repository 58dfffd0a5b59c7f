"""FedScale device and availability traces: safe reading, plain schema, system model, participation.

Expected values are computed by hand from FedScale's rules (client_metadata.py):
computation = 3 · batch · local_steps · ms / 1000 s, communication = (up + down) kbit / kbit/s,
online when active[j] <= t mod finish_time <= inactive[j].
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY, merge, read_metrics, run_raw

from fedsim.cli.app import main
from fedsim.errors import ScenarioError
from fedsim.scenario.loading import from_mapping, load
from fedsim.world import traces
from fedsim.world.participation import Context, FedScaleTrace
from fedsim.world.system import FedScaleDevices, SystemModel

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "fedscale_trace.yaml"

# key -> FedScale device entry, keys 0..2 in file order 1, 2, 0
DEVICES = {1: {"computation": 50.0, "communication": 1000.0},
           2: {"computation": 20.0, "communication": 250.0},
           0: {"computation": 10.0, "communication": 800.0}}
# file order A, B, C (positions 0, 1, 2), with FedScale's extra fields on A
BEHAVE = {"a": {"duration": 40, "inactive": [20, 60], "finish_time": 100, "active": [10, 50], "model": "m1"},
          "b": {"active": [0], "inactive": [5], "finish_time": 30},
          "c": {"active": [90], "inactive": [100], "finish_time": 100}}


def _pickle(path: Path, obj) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


def _system(tmp_path, devices=DEVICES, n=4, mapping="fedscale", latency=0.0, rng=None):
    path = _pickle(tmp_path / "client_device_capacity", devices)
    raw = merge(TINY, system={"compute": {"name": "fedscale_trace", "path": str(path), "mapping": mapping},
                              "latency": latency})
    raw["data"]["num_clients"] = n
    sc = from_mapping(raw)
    # 12800 bytes = 100 kbit in FedScale's unit (bytes / 1024 * 8)
    return SystemModel(sc.system, n, 12800, rng or np.random.default_rng(0), batch_size=16)


# --- safe pickles ----------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Evil(control)))  # a plain unpickler runs the command ...
    assert control.exists()
    marker = tmp_path / "pwned"
    path = _pickle(tmp_path / "client_behave_trace", {1: _Evil(marker)})
    with pytest.raises(ValueError) as exc:
        traces.load_pickle(path)
    msg = str(exc.value)
    assert msg == (f"trace file {path}: only plain dicts, lists and numbers are accepted, found a reference "
                   f"to {os.system.__module__}.system")
    assert "\n" not in msg
    assert not marker.exists()  # ... the safe reader never did


@pytest.mark.parametrize("obj, found", [
    ({1: {"computation": np.float64(1.0), "communication": 2.0}}, "a reference to numpy"),
    ({1: {"computation": 1.0, "communication": 2.0, "x": {1, 2}}}, "found a set"),
    ({1: {"computation": 1.0, "communication": b"2"}}, "found a bytes"),
])
def test_non_plain_content_is_refused(tmp_path, obj, found):
    path = _pickle(tmp_path / "t", obj)
    with pytest.raises(ValueError, match="only plain dicts, lists and numbers are accepted") as exc:
        traces.read(path, "device")
    assert found in str(exc.value) and str(path) in str(exc.value)


def test_not_a_pickle_and_bad_entries_name_the_file(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match=f"trace file {junk}: not a readable pickle"):
        traces.read(junk)
    bad = _pickle(tmp_path / "dev", {7: {"computation": 1.0, "communication": 0}})
    with pytest.raises(ValueError, match=f"trace file {bad}: client 7: 'communication' must be a finite number > 0"):
        traces.read(bad)
    uneven = _pickle(tmp_path / "beh", {3: {"active": [1, 2], "inactive": [3], "finish_time": 9}})
    with pytest.raises(ValueError, match="client 3: 'active' has 2 entries but 'inactive' has 1"):
        traces.read(uneven)
    with pytest.raises(ValueError, match="neither a device-capacity trace"):
        traces.read(_pickle(tmp_path / "other", {1: [1, 2]}))


# --- reading, kinds, convert round trips -----------------------------------------------------


def test_pickles_are_read_in_file_order_with_their_kind(tmp_path):
    kind, dev = traces.read(_pickle(tmp_path / "client_device_capacity", DEVICES))
    assert kind == "device" and dev == DEVICES and list(dev) == [1, 2, 0]
    kind, beh = traces.read(_pickle(tmp_path / "client_behave_trace", BEHAVE))
    assert kind == "behave" and beh == BEHAVE and list(beh) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="is a device trace, not an availability trace"):
        traces.read(tmp_path / "client_device_capacity", "behave")


def test_convert_round_trips_through_the_plain_schema(tmp_path):
    dev_pkl = _pickle(tmp_path / "client_device_capacity", DEVICES)
    beh_pkl = _pickle(tmp_path / "client_behave_trace", BEHAVE)
    assert main(["trace", "convert", str(dev_pkl), str(tmp_path / "devices.csv")]) == 0
    assert main(["trace", "convert", str(beh_pkl), str(tmp_path / "availability.jsonl")]) == 0
    assert (tmp_path / "devices.csv").read_text().splitlines() == [
        "client,compute_ms_per_sample,bandwidth_kbps", "1,50.0,1000.0", "2,20.0,250.0", "0,10.0,800.0"]
    first = json.loads((tmp_path / "availability.jsonl").read_text().splitlines()[0])
    assert first == {"client": "a", **BEHAVE["a"]}
    assert traces.read_device(tmp_path / "devices.csv") == traces.read_device(dev_pkl)
    assert traces.read_behave(tmp_path / "availability.jsonl") == traces.read_behave(beh_pkl)
    # and back to FedScale's pickles
    assert main(["trace", "convert", str(tmp_path / "devices.csv"), str(tmp_path / "dev.pkl")]) == 0
    assert main(["trace", "convert", str(tmp_path / "availability.jsonl"), str(tmp_path / "beh")]) == 0
    assert pickle.loads((tmp_path / "dev.pkl").read_bytes()) == DEVICES
    assert pickle.loads((tmp_path / "beh").read_bytes()) == BEHAVE


def test_convert_refuses_a_mismatched_kind_or_suffix(tmp_path, capsys):
    dev_pkl = _pickle(tmp_path / "d", DEVICES)
    assert main(["trace", "convert", str(dev_pkl), str(tmp_path / "x.jsonl")]) == 2
    assert main(["trace", "convert", "--kind", "behave", str(dev_pkl), str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {tmp_path / 'x.jsonl'}: a device trace is written as .csv (plain) or a pickle, not .jsonl",
                   f"error: trace file {dev_pkl}: is a device trace, not an availability trace"]


def test_plain_files_give_one_line_errors_with_file_and_line(tmp_path):
    csv_path = tmp_path / "devices.csv"
    csv_path.write_text("client,compute_ms_per_sample\n0,1.0\n")
    with pytest.raises(ValueError, match=f"trace file {csv_path}: lacks column\\(s\\) bandwidth_kbps"):
        traces.read(csv_path)
    csv_path.write_text("client,compute_ms_per_sample,bandwidth_kbps\n0,1.0,5\n1,fast,5\n")
    with pytest.raises(ValueError, match=f"trace file {csv_path}:3: bad row"):
        traces.read(csv_path)
    jl = tmp_path / "availability.jsonl"
    jl.write_text('{"client": 0, "active": [0], "inactive": [1], "finish_time": 5}\n'
                  '{"client": 1, "active": [0], "inactive": [1]}\n')
    with pytest.raises(ValueError, match=f"trace file {jl}:2: lacks finish_time"):
        traces.read(jl)


# --- system model: FedScale's job times --------------------------------------------------------


def test_completion_time_is_fedscales_formula():
    comp, comm = traces.completion_time(50.0, 1000.0, batch_size=16, local_steps=10, model_kbit=100.0)
    assert comp == 24.0  # 3 * 16 * 10 * 50 / 1000
    assert comm == 0.2  # (100 + 100) / 1000


def test_mapping_rules():
    assert traces.map_clients(5, 3, "fedscale", None).tolist() == [1, 2, 0, 1, 2]  # id k+1 mod L
    assert traces.map_clients(5, 3, "order", None).tolist() == [0, 1, 2, 0, 1]
    drawn = traces.map_clients(5, 3, "sample", np.random.default_rng(7))
    assert drawn.tolist() == np.random.default_rng(7).integers(0, 3, size=5).tolist()


def test_device_trace_durations_by_hand(tmp_path):
    # fedscale mapping by key: client k -> key (k+1) % 3: clients 0..3 -> keys 1, 2, 0, 1
    sm = _system(tmp_path)
    rng = np.random.default_rng(0)
    # key 1: 3*16*10*50/1000 = 24 s compute, 100 kbit / 1000 kbit/s = 0.1 s each way
    assert sm.duration(0, 10, rng) == pytest.approx((24.1, 24.2, False), rel=1e-12)
    # key 2: 9.6 s compute, 100 / 250 = 0.4 s each way
    assert sm.duration(1, 10, rng) == pytest.approx((10.0, 10.4, False), rel=1e-12)
    # key 0: 4.8 s compute, 100 / 800 = 0.125 s each way
    assert sm.duration(2, 10, rng) == pytest.approx((4.925, 5.05, False), rel=1e-12)
    assert sm.duration(3, 10, rng) == pytest.approx((24.1, 24.2, False), rel=1e-12)
    assert sm.mean_durations(np.array([10, 10, 10, 10])) == pytest.approx([24.2, 10.4, 5.05, 24.2], rel=1e-12)
    # latency adds to each way: 0.4 + 0.5 before and after the 9.6 s of compute
    lat = _system(tmp_path, latency=0.5)
    assert lat.duration(1, 10, rng) == pytest.approx((10.5, 11.4, False), rel=1e-12)


def test_fedscale_default_profile_for_a_missing_key(tmp_path):
    # keys 1..3 as FedScale's 1-based ids: client 2 is id 3 -> key 3 % 3 = 0, absent -> 1 ms/sample, 1 kbit/s
    dev = {1: DEVICES[1], 2: DEVICES[2], 3: DEVICES[0]}
    sm = _system(tmp_path, devices=dev, n=3)
    assert sm.duration(2, 10, np.random.default_rng(0)) == pytest.approx((100.48, 200.48, False), rel=1e-12)
    # `order` maps by position instead: client 2 gets the third entry (10 ms, 800 kbit/s)
    by_order = _system(tmp_path, devices=dev, n=3, mapping="order")
    assert by_order.duration(2, 10, np.random.default_rng(0)) == pytest.approx((4.925, 5.05, False), rel=1e-12)


def test_augmentation_factor_is_an_option(tmp_path):
    path = _pickle(tmp_path / "d", DEVICES)
    ms, kbps = FedScaleDevices(path=str(path), augmentation_factor=2.0).profiles(2, np.random.default_rng(0))
    assert ms.tolist() == pytest.approx([0.1, 0.04])  # 2 * 50 / 1000, 2 * 20 / 1000 s per sample
    assert kbps.tolist() == [1000.0, 250.0]


def test_without_a_trace_the_system_model_is_unchanged():
    from fedsim.scenario.schema import SystemConfig
    from fedsim.world.system import Constant

    cfg = SystemConfig(compute=Constant(time=0.5), bandwidth_mbps=8.0, latency=0.01)
    sm = SystemModel(cfg, 2, 1_000_000, np.random.default_rng(0), batch_size=32)
    comm = 2 * (1_000_000 * 8 / (8.0 * 1e6) + 0.01)
    assert sm.link is None and sm.comm == comm
    assert sm.duration(1, 4, np.random.default_rng(0)) == (comm / 2 + 0.5 * 4, comm / 2 + 0.5 * 4 + comm / 2, False)


# --- participation: online windows -------------------------------------------------------------


def _process(tmp_path, mapping="fedscale", k=None, n=3, seed=0):
    path = _pickle(tmp_path / "client_behave_trace", BEHAVE)
    plugin = FedScaleTrace(path=str(path), mapping=mapping, k=k)
    ctx = Context(n, np.random.default_rng(seed), np.random.default_rng(seed + 1), lambda: None)
    return plugin.process(ctx)


@pytest.mark.parametrize("t, expected", [
    # fedscale mapping: client 0 -> B (position 1), client 1 -> C (2), client 2 -> A (0)
    (0.0, [True, False, False]),     # B: 0 in [0, 5]
    (5.0, [True, False, False]),     # B: inactive edge included
    (5.5, [False, False, False]),
    (10.0, [False, False, True]),    # A: active edge included
    (20.0, [False, False, True]),    # A: inactive edge; B: 20 mod 30 = 20 is off
    (20.5, [False, False, False]),
    (30.0, [True, False, False]),    # B wraps: 30 mod 30 = 0
    (95.0, [True, True, False]),     # C: 95 in [90, 100]; B: 95 mod 30 = 5
    (99.999, [False, True, False]),  # C up to its period's end (t mod 100 never reaches 100)
    (155.0, [True, False, True]),    # A wraps: 155 mod 100 = 55 in [50, 60]; B: 155 mod 30 = 5
    (200.0, [False, False, False]),  # A and C: 200 mod 100 = 0; B: 200 mod 30 = 20
])
def test_online_windows_by_hand(tmp_path, t, expected):
    assert _process(tmp_path).online(0, t).tolist() == expected


def test_order_and_sample_mapping_and_k(tmp_path):
    assert _process(tmp_path, mapping="order").online(0, 95.0).tolist() == [False, True, True]  # A, B, C
    pos = np.random.default_rng(1).integers(0, 3, size=6)  # the probs stream (seed + 1) draws the mapping
    windows = {0: [20, 10], 1: [5, 0], 2: [100, 90]}  # position -> (inactive, active) of its interval at t=95
    sampled = _process(tmp_path, mapping="sample", n=6).online(0, 95.0)
    assert sampled.tolist() == [windows[p][1] <= (95.0 % [100, 30, 100][p]) <= windows[p][0] for p in pos]
    # k: at most k of the online clients, drawn from the participation stream
    full = _process(tmp_path, mapping="order", n=6).online(0, 95.0)
    assert int(full.sum()) == 4  # B, C and B, C again
    capped = _process(tmp_path, mapping="order", n=6, k=2).online(0, 95.0)
    assert int(capped.sum()) == 2 and not (capped & ~full).any()


# --- scenarios ---------------------------------------------------------------------------------


def test_scenario_errors_name_key_file_and_line(tmp_path):
    (tmp_path / "devices.csv").write_text("client,compute_ms_per_sample,bandwidth_kbps\n0,1.0,5\n1,2.0\n")
    raw = yaml.safe_load(SCENARIO.read_text())
    raw["system"]["compute"]["path"] = "devices.csv"
    raw["participation"]["path"] = "missing.jsonl"
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ScenarioError) as exc:
        load(p)
    assert str(exc.value).splitlines() == [
        f"{p}: participation.path: trace file not found: missing.jsonl",
        f"{p}: system.compute.path: trace file {tmp_path / 'devices.csv'}:3: bad row "
        "{'client': '1', 'compute_ms_per_sample': '2.0', 'bandwidth_kbps': None}",
    ]
    raw["participation"]["path"] = str(ROOT / "scenarios" / "fedscale_trace" / "availability.jsonl")
    raw["system"] = {"compute": {"name": "fedscale_trace", "path": str(ROOT / "scenarios" / "fedscale_trace" /
                                                                   "devices.csv")}, "bandwidth_mbps": 10}
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ScenarioError, match="system.bandwidth_mbps: the device trace .* unset bandwidth_mbps"):
        load(p)


def _online_by_hand(entry: dict, t: float) -> bool:
    norm = t % entry["finish_time"]
    return any(a <= norm <= b for a, b in zip(entry["active"], entry["inactive"], strict=True))


def test_shipped_scenario_runs_and_follows_the_traces(tmp_path):
    sc = load(SCENARIO, ["engine.rounds=6"])
    from fedsim.runner import run

    res = run(sc, tmp_path / "a")
    devices = list(traces.read_device(ROOT / "scenarios" / "fedscale_trace" / "devices.csv").items())
    behave = list(traces.read_behave(ROOT / "scenarios" / "fedscale_trace" / "availability.jsonl").values())
    kbit = res.params.nbytes * 8 / 1024
    events = [json.loads(line) for line in (tmp_path / "a" / "events.jsonl").read_text().splitlines()]
    dispatches = [e for e in events if e["kind"] == "dispatch"]
    arrivals = {e["job"]: e["virtual_time"] for e in events if e["kind"] == "arrive"}
    assert dispatches and len(arrivals) == len(dispatches)
    by_time: dict[float, int] = {}
    for d in dispatches:
        k, t = d["client"], d["virtual_time"]
        by_time[t] = by_time.get(t, 0) + 1
        assert _online_by_hand(behave[(k + 1) % len(behave)], t), (k, t)  # FedScale's mapping, at round start
        key, dev = devices[[c for c, _ in devices].index((k + 1) % len(devices))]
        comp, comm = traces.completion_time(dev["computation"], dev["communication"], 16, 10, kbit)
        assert arrivals[d["job"]] - t == pytest.approx(comp + comm, rel=1e-9)
    assert max(by_time.values()) <= 10  # participation.k
    # determinism: the same scenario and seed give the same metrics
    run(sc, tmp_path / "b")
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")


def test_async_mode_dispatches_only_online_clients(tmp_path):
    raw = yaml.safe_load(SCENARIO.read_text())
    base = SCENARIO.parent
    raw["participation"]["path"] = str(base / raw["participation"]["path"])
    raw["system"]["compute"]["path"] = str(base / raw["system"]["compute"]["path"])
    raw["engine"] = {"mode": "async", "max_versions": 20, "concurrency": 4, "slot": 5.0}
    raw["strategy"] = {"name": "async_fedavg"}
    run_raw(raw, tmp_path)
    behave = list(traces.read_behave(base / "fedscale_trace" / "availability.jsonl").values())
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    dispatches = [e for e in events if e["kind"] == "dispatch"]
    assert len(dispatches) >= 20
    for d in dispatches:  # the mask of the slot holding the dispatch time
        slot_start = (d["virtual_time"] // 5.0) * 5.0
        assert _online_by_hand(behave[(d["client"] + 1) % len(behave)], slot_start)


# --- FedScale's collection rules in sync rounds: lost when offline at arrival, keep the K fastest ----


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line]


def test_keep_fastest_keeps_the_k_earliest_and_ends_the_round_at_the_kth(tmp_path):
    # one job takes client k times[k] seconds and there are no links: clients 1 (1 s) and 3 (2 s) are fastest
    raw = merge(TINY, engine={"rounds": 2, "keep_fastest": 2},
                system={"compute": {"name": "per_client", "times": [3.0, 1.0, 5.0, 2.0, 6.0, 4.0]},
                        "time_per": "job"})
    res = run_raw(raw, tmp_path)
    rows = read_metrics(res.out)
    assert [r["num_updates"] for r in rows] == [0, 2, 4] and [r["num_failed"] for r in rows] == [0, 4, 8]
    assert [r["virtual_time"] for r in rows] == [0.0, 2.0, 4.0]  # the 2nd fastest (client 3, 2 s) ends a round
    ev = _events(res.out)
    assert sorted(e["client"] for e in ev if e["kind"] == "arrive" and e["virtual_time"] <= 2.0) == [1, 3]
    slow = [e for e in ev if e["kind"] == "drop"]
    assert len(slow) == 8 and {e["reason"] for e in slow} == {"not among the fastest"}
    assert sorted({e["virtual_time"] for e in slow}) == [2.0, 4.0]  # noticed when the round ends
    # every round keeps the same two fastest clients
    assert {e["client"] for e in ev if e["kind"] == "arrive"} == {1, 3}


def test_sync_drop_offline_loses_clients_offline_when_their_upload_is_due(tmp_path):
    # client k -> entry (k + 1) mod 3 (FedScale's mapping): 0 -> B, 1 -> C, 2 -> A
    path = _pickle(tmp_path / "client_behave_trace",
                   {"a": {"active": [0], "inactive": [100], "finish_time": 100},   # client 2: always on
                    "b": {"active": [0], "inactive": [1.5], "finish_time": 100},   # client 0: off after 1.5 s
                    "c": {"active": [0], "inactive": [100], "finish_time": 100}})  # client 1: always on
    raw = merge(TINY, engine={"rounds": 1, "drop_offline": True},
                participation={"name": "fedscale_trace", "path": str(path)},
                system={"compute": {"name": "per_client", "times": [2.0, 1.0, 3.0]}, "time_per": "job"})
    raw["data"]["num_clients"] = 3
    res = run_raw(raw, tmp_path / "run")
    ev = _events(res.out)
    drops = [e for e in ev if e["kind"] == "drop"]
    assert [(e["client"], e["reason"], e["virtual_time"]) for e in drops] == [(0, "offline", 2.0)]
    assert sorted(e["client"] for e in ev if e["kind"] == "arrive") == [1, 2]
    assert read_metrics(res.out)[-1]["virtual_time"] == 3.0  # the lost client does not extend the round
    # without the rule client 0's update counts, as before
    plain = run_raw(merge(raw, engine={"rounds": 1, "drop_offline": False}), tmp_path / "plain")
    assert read_metrics(plain.out)[-1]["num_updates"] == 3


def test_sync_drop_offline_needs_a_time_based_process_and_keep_fastest_needs_sync():
    with pytest.raises(ScenarioError, match=r"engine.drop_offline: in sync mode it needs a participation process"):
        from_mapping(merge(TINY, engine={"rounds": 1, "drop_offline": True}))
    with pytest.raises(ScenarioError, match=r"engine.keep_fastest: keeps the fastest arrivals of a round"):
        from_mapping(merge(TINY, engine={"mode": "async", "max_versions": 3, "keep_fastest": 2},
                           strategy={"name": "async_fedavg"}))


def test_one_clients_look_up_agrees_with_the_whole_mask(tmp_path):
    proc = _process(tmp_path)
    for t in (0.0, 5.0, 5.5, 10.0, 20.0, 20.5, 30.0, 95.0, 99.999, 155.0, 200.0, 1234.5):
        mask = proc.available(t)
        assert [proc.available_to(c, t) for c in range(3)] == mask.tolist(), t
