"""LEAF JSON loader, text encodings and the char_rnn model, on small files the tests write."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import read_metrics, run_raw

from fedsim import seeding
from fedsim.data.federated import federate
from fedsim.data.leaf import Leaf
from fedsim.data.partition import Natural
from fedsim.data.text import (
    SHAKESPEARE_CHARS,
    UNKNOWN_CHAR,
    bucket,
    encode_char_labels,
    encode_chars,
    hashed_bag_of_words,
)
from fedsim.errors import ScenarioError
from fedsim.scenario.loading import from_mapping, load

ROOT = Path(__file__).resolve().parents[1]


def write_leaf(path: Path, users: dict, num_samples=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(users)
    doc = {"users": names, "num_samples": num_samples or [len(users[u]["y"]) for u in names],
           "user_data": users}
    path.write_text(json.dumps(doc))
    return path


def img(v: float) -> list[float]:
    return [v] * 784


@pytest.fixture
def femnist_dir(tmp_path):
    """Three writers over two train files; 'b' has 1 training image, 'c' no test images."""
    d = tmp_path / "femnist"
    write_leaf(d / "train" / "part_1.json", {"c": {"x": [img(0.5), img(0.25), img(0.75)], "y": [7, 8, 61]},
                                              "a": {"x": [img(1.0), img(0.0)], "y": [0, 1]}})
    write_leaf(d / "train" / "part_0.json", {"b": {"x": [img(0.125)], "y": [35]}})
    write_leaf(d / "test" / "t.json", {"a": {"x": [img(0.5)], "y": [2]}, "b": {"x": [img(0.0), img(1.0)], "y": [3, 4]},
                                       "c": {"x": [], "y": []}})
    return d


def seed_of(stream):
    return seeding.seed_of(0, stream)


def test_femnist_clients_sizes_and_own_test_rows(femnist_dir):
    fd = federate(Leaf(path=str(femnist_dir), task="femnist"), Natural(), 3, 0.5, seed_of)
    # users sorted: a, b, c -> clients 0, 1, 2; each keeps its own rows in file order
    assert fd.num_classes == 62 and fd.input_shape == (1, 28, 28)
    assert fd.train_offsets.tolist() == [0, 2, 3, 6]
    assert fd.y_train.tolist() == [0, 1, 35, 7, 8, 61]
    assert fd.x_train[:, 0, 0, 0].tolist() == [1.0, 0.0, 0.125, 0.5, 0.25, 0.75]
    # LEAF's own test rows are the local test splits (test_fraction 0.5 is not used)
    assert fd.val_offsets.tolist() == [0, 1, 3, 3]
    assert fd.y_val.tolist() == [2, 3, 4]
    # the global test set is the union of the users' test rows
    assert fd.y_test.tolist() == [2, 3, 4] and fd.x_test.dtype == np.float32


def test_femnist_invert_min_samples_and_max_clients(femnist_dir):
    rng = np.random.default_rng(0)
    pc = Leaf(path=str(femnist_dir), task="femnist", invert=True, min_samples=2).load(2, rng)
    # b (1 image) is left out: a, c are clients 0, 1; invert gives 1 - x
    assert pc.offsets.tolist() == [0, 2, 5] and pc.y.tolist() == [0, 1, 7, 8, 61]
    assert pc.x[:, 0, 0, 0].tolist() == [0.0, 1.0, 0.5, 0.75, 0.25]
    assert pc.val_offsets.tolist() == [0, 1, 1] and pc.y_val.tolist() == [2]
    first = Leaf(path=str(femnist_dir), task="femnist", max_clients=2).load(2, rng)
    assert first.offsets.tolist() == [0, 2, 3] and first.y.tolist() == [0, 1, 35]  # a, b


def test_sample_clients_is_drawn_from_the_dataset_stream(femnist_dir):
    leaf = Leaf(path=str(femnist_dir), task="femnist", sample_clients=2)
    # by hand: the dataset stream picks 2 of the 3 sorted users, kept in sorted order
    pick = np.sort(seeding.rng(5, "dataset").choice(3, size=2, replace=False))
    per_user = {0: [0, 1], 1: [35], 2: [7, 8, 61]}
    expected = [label for u in pick for label in per_user[int(u)]]
    a = leaf.load(2, seeding.rng(5, "dataset"))
    b = leaf.load(2, seeding.rng(5, "dataset"))
    assert a.y.tolist() == b.y.tolist() == expected
    draws = {tuple(leaf.load(2, seeding.rng(s, "dataset")).y.tolist()) for s in range(12)}
    assert len(draws) == 3  # every pair of users shows up over seeds: a real sample


def test_single_file_without_test_split_uses_test_fraction(tmp_path):
    f = write_leaf(tmp_path / "all_data.json", {"u1": {"x": [img(0.1)] * 4, "y": [1, 2, 3, 4]},
                                                 "u0": {"x": [img(0.2)] * 2, "y": [5, 6]}})
    fd = federate(Leaf(path=str(f), task="femnist"), Natural(), 2, 0.5, seed_of)
    # floor(0.5 * n_k) rows of each client move to its local test split; global test = their union
    assert fd.train_offsets.tolist() == [0, 1, 3] and fd.val_offsets.tolist() == [0, 1, 3]
    assert sorted(fd.y_test.tolist()) == sorted(fd.y_val.tolist()) and len(fd.y_test) == 3


def test_test_only_users_go_to_the_global_test_set(tmp_path):
    """LEAF's `-t user` split: test users are not clients."""
    d = tmp_path / "leaf"
    write_leaf(d / "train" / "a.json", {"w1": {"x": [img(0.3)] * 5, "y": [1] * 5}})
    write_leaf(d / "test" / "a.json", {"w9": {"x": [img(0.9)] * 2, "y": [9, 9]}})
    fd = federate(Leaf(path=str(d), task="femnist"), Natural(), 1, 0.2, seed_of)
    assert fd.train_offsets.tolist() == [0, 4] and fd.val_offsets.tolist() == [0, 1]  # test_fraction split
    assert fd.y_test.tolist() == [9, 9]


def test_shakespeare_vocabulary_and_encoding(tmp_path):
    assert len(SHAKESPEARE_CHARS) == 80 and UNKNOWN_CHAR == 80
    # positions by hand: "\n" 0, " " 1, "A" 25, "[" 51, "a" 53, "}" 79; anything else 80
    assert encode_chars(["\n A[a}~é"]).tolist() == [[0, 1, 25, 51, 53, 79, 80, 80]]
    assert encode_char_labels(["z", "?"]).tolist() == [78, 24]
    with pytest.raises(ValueError, match="example 1: expected a string of 3 characters"):
        encode_chars(["abc", "ab"])
    window = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to su"
    assert len(window) == 80
    d = tmp_path / "shakespeare"
    write_leaf(d / "train" / "x.json", {"HAMLET_HAMLET": {"x": [window, window[1:] + "f"], "y": ["f", "f"]}})
    write_leaf(d / "test" / "x.json", {"HAMLET_HAMLET": {"x": [window], "y": ["e"]}})
    fd = federate(Leaf(path=str(d), task="shakespeare"), Natural(), 1, 0.0, seed_of)
    assert fd.x_train.dtype == np.int64 and fd.x_train.shape == (2, 80) and fd.input_shape == (80,)
    assert fd.num_classes == 81
    assert fd.x_train[0, :3].tolist() == [44, 67, 1]  # "T" = 25 + 19, "o" = 53 + 14, " "
    assert fd.y_train.tolist() == [58, 58] and fd.y_val.tolist() == [57]  # "f", "e"


def test_sent140_hashed_bag_of_words(tmp_path):
    # crc32 is fixed by its definition, never salted: these constants hold on every machine
    assert bucket("good", 16) == 1820610194 % 16 and bucket("day", 1000) == 3852478864 % 1000
    x = hashed_bag_of_words(["Good good DAY!", "..."], 1000)
    expected = np.zeros((2, 1000), np.float32)
    expected[0, 1820610194 % 1000] += 2 / 3
    expected[0, 3852478864 % 1000] += 1 / 3
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    d = tmp_path / "sent140"
    row = ["1467810369", "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", "alice", "Good good DAY!"]
    write_leaf(d / "train" / "s.json", {"alice": {"x": [row, row[:4] + ["..."]], "y": [1, 0]}})
    fd = federate(Leaf(path=str(d), task="sent140", num_features=1000), Natural(), 1, 0.0, seed_of)
    np.testing.assert_allclose(fd.x_train, expected, rtol=1e-6)
    assert fd.num_classes == 2 and fd.y_train.tolist() == [1, 0]


@pytest.mark.parametrize("content, match", [
    ('{"users": ["a"], "user_data": {"a": {"x": [1], "y": [', "bad.json: not valid JSON"),
    ('[1, 2]', "bad.json: not a LEAF file"),
    ('{"users": ["a"], "num_samples": [3], "user_data": {"a": {"x": [], "y": []}}}',
     "bad.json: user 'a': num_samples says 3, user_data has 0 rows"),
    ('{"user_data": {"a": {"x": [[0.5]], "y": [1]}}}', "bad.json: user 'a': femnist x must be 784 numbers"),
    ('{"user_data": {"a": {"x": [[0.5], [0.5]], "y": [1]}}}', "bad.json: user 'a' has 2 x but 1 y"),
])
def test_malformed_files_name_the_file(tmp_path, content, match):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        Leaf(path=str(tmp_path / "bad.json"), task="femnist").load(1, np.random.default_rng(0))
    assert "\n" not in str(err.value) and str(err.value).startswith("data.dataset.path: ")


def test_missing_and_duplicate_and_count_errors(tmp_path, femnist_dir):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="data.dataset.path: LEAF data not found"):
        Leaf(path=str(tmp_path / "nope"), task="femnist").load(1, rng)
    write_leaf(femnist_dir / "train" / "part_2.json", {"a": {"x": [img(0.5)], "y": [1]}})
    with pytest.raises(ValueError, match="user 'a' is in both .*part_1.json and .*part_2.json"):
        Leaf(path=str(femnist_dir), task="femnist").load(3, rng)
    (femnist_dir / "train" / "part_2.json").unlink()
    with pytest.raises(ValueError, match=r"data.num_clients: is 5, but .* \(3 users\) gives 3 clients; "
                                         "set data.num_clients: 3"):
        Leaf(path=str(femnist_dir), task="femnist").load(5, rng)
    with pytest.raises(ValueError, match="sample_clients: is 4, but .* has only 3 users"):
        Leaf(path=str(femnist_dir), task="femnist", sample_clients=4).load(4, rng)


SCENARIO = {"data": {"dataset": {"name": "leaf", "task": "femnist", "path": "x"}, "partition": {"name": "natural"},
                     "num_clients": 3}, "model": {"name": "logreg", "device": "cpu"}}


@pytest.mark.parametrize("change, expected", [
    ({"sample_clients": 2}, "data.dataset.sample_clients: is 2, but data.num_clients is 3"),
    ({"max_clients": 2, "sample_clients": 2}, "data.dataset: set max_clients (the first N users) or sample_clients"),
    ({"task": "femnis"}, "data.dataset.task: must be one of ['femnist', 'shakespeare', 'sent140'], got 'femnis'"),
])
def test_scenario_errors_are_one_line(change, expected):
    raw = json.loads(json.dumps(SCENARIO))
    raw["data"]["dataset"].update(change)
    with pytest.raises(ScenarioError) as err:
        from_mapping(raw)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_char_rnn_refuses_the_vectorized_executor():
    raw = {**SCENARIO, "model": {"name": "char_rnn"}, "executor": {"name": "vectorized"}}
    with pytest.raises(ScenarioError, match="executor.name: model 'char_rnn' has no batched form"):
        from_mapping(raw)


def test_char_rnn_forward_shape_and_one_training_step():
    import torch
    from torch.nn import functional as F

    from fedsim.training.models import CharRNN

    for cell in ("lstm", "gru"):
        torch.manual_seed(0)
        net = CharRNN(cell=cell, hidden=16, layers=2, device="cpu").build((80,), 81)
        x = torch.randint(0, 81, (5, 80))
        y = torch.randint(0, 81, (5,))
        assert net(x).shape == (5, 81)
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        before = F.cross_entropy(net(x), y)
        opt.zero_grad()
        before.backward()
        opt.step()
        assert F.cross_entropy(net(x), y).item() < before.item()
    with pytest.raises(ValueError, match="char_rnn needs token windows"):
        CharRNN().build((1, 28, 28), 62)


def test_shipped_leaf_femnist_scenario_runs_and_learns(tmp_path):
    sc = load(ROOT / "scenarios" / "leaf_femnist.yaml", ["engine.rounds=10", "metrics.eval_every=5"])
    from fedsim.runner import run

    run(sc, tmp_path / "a")
    rows = read_metrics(tmp_path / "a")
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"] + 0.2
    run(sc, tmp_path / "b")
    assert read_metrics(tmp_path / "b") == rows  # same scenario + seed => same metrics


def test_shipped_leaf_shakespeare_scenario_trains_the_char_model(tmp_path):
    raw = load(ROOT / "scenarios" / "leaf_shakespeare.yaml", ["engine.rounds=2", "metrics.eval_every=1"])
    from fedsim.runner import run

    run(raw, tmp_path / "s")
    rows = read_metrics(tmp_path / "s")
    assert rows[-1]["test_loss"] < rows[0]["test_loss"] and np.log(81) - 0.1 < rows[0]["test_loss"] < 5


def test_run_error_for_bad_leaf_data_is_one_line(tmp_path):
    from fedsim.errors import RunError

    (tmp_path / "bad.json").write_text("{")
    raw = json.loads(json.dumps(SCENARIO))
    raw["data"]["dataset"]["path"] = str(tmp_path / "bad.json")
    with pytest.raises(RunError, match=r"^data.dataset.path: .*bad.json: not valid JSON"):
        run_raw(raw, tmp_path / "out")


def test_shipped_samples_are_what_the_script_writes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_samples", ROOT / "scenarios" / "leaf" / "make_samples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.femnist(tmp_path)
    mod.shakespeare(tmp_path)
    shipped = sorted(p.relative_to(ROOT / "scenarios" / "leaf") for p in (ROOT / "scenarios" / "leaf").rglob("*.json"))
    assert shipped == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json")) and len(shipped) == 4
    for rel in shipped:
        assert (tmp_path / rel).read_bytes() == (ROOT / "scenarios" / "leaf" / rel).read_bytes(), rel
    assert max((ROOT / "scenarios" / "leaf" / rel).stat().st_size for rel in shipped) < 1_000_000  # each file < 1 MB
