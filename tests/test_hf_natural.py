"""hf_natural: a dataset saved with `save_to_disk`, split by a natural id column."""

import json

import numpy as np
import pytest
from conftest import read_metrics, run_raw
from datasets import Dataset, DatasetDict

from fedsim import seeding
from fedsim.data.federated import federate
from fedsim.data.files import HFNatural
from fedsim.data.partition import Natural


def seed_of(stream):
    return seeding.seed_of(0, stream)


def images(values):
    return [np.full((4, 4), v, dtype=np.uint8).tolist() for v in values]


@pytest.fixture
def femnist_like(tmp_path):
    """Writers in first-seen order w2, w0, w1 (sorted: w0, w1, w2); a test split with the id column."""
    train = Dataset.from_dict({"writer_id": ["w2", "w0", "w2", "w1", "w0", "w2"],
                               "image": images([10, 20, 30, 40, 50, 60]), "character": [1, 2, 3, 4, 5, 6]})
    test = Dataset.from_dict({"writer_id": ["w1", "w9", "w0"], "image": images([70, 80, 90]),
                              "character": [7, 8, 9]})
    path = tmp_path / "femnist"
    DatasetDict({"train": train, "test": test}).save_to_disk(str(path))
    return path


def test_clients_follow_sorted_ids_like_natural_id_partitioner(femnist_like):
    from datasets import load_from_disk
    from flwr_datasets.partitioner import NaturalIdPartitioner

    fd = federate(HFNatural(path=str(femnist_like), scale=10.0), Natural(), 3, 0.5, seed_of)
    # sorted ids w0, w1, w2 -> clients 0, 1, 2; rows in dataset order
    assert fd.train_offsets.tolist() == [0, 2, 3, 6]
    assert fd.y_train.tolist() == [2, 5, 4, 1, 3, 6]
    assert fd.input_shape == (1, 4, 4) and fd.x_train[:, 0, 0, 0].tolist() == [2.0, 5.0, 4.0, 1.0, 3.0, 6.0]
    # the same partitions as flwr-datasets' NaturalIdPartitioner
    part = NaturalIdPartitioner(partition_by="writer_id")
    part.dataset = load_from_disk(str(femnist_like))["train"]
    theirs = [part.load_partition(i)["character"] for i in range(part.num_partitions)]
    assert theirs == [fd.y_train[fd.train_slice(c)].tolist() for c in range(3)]
    # test rows of clients are their local test splits; w9 (no training rows) is global test only
    assert fd.val_offsets.tolist() == [0, 1, 2, 2] and fd.y_val.tolist() == [9, 7]
    assert fd.y_test.tolist() == [9, 7, 8]
    assert fd.num_classes == 10  # max label 9 + 1


def test_cap_and_sample_choose_ids(femnist_like):
    first = HFNatural(path=str(femnist_like), max_clients=2).load(2, np.random.default_rng(0))
    assert first.offsets.tolist() == [0, 2, 3] and first.y.tolist() == [2, 5, 4]  # w0, w1
    assert first.y_val.tolist() == [9, 7] and first.y_test.tolist() == [9, 7, 8]  # w9: global test only
    big = HFNatural(path=str(femnist_like), min_samples=2).load(2, np.random.default_rng(0))
    assert big.y.tolist() == [2, 5, 1, 3, 6]  # w0 (2 rows), w2 (3 rows)
    # w1 is not a client: its test row is dropped (it has training rows, so it is not a test-only id)
    assert big.val_offsets.tolist() == [0, 1, 1] and big.y_val.tolist() == [9] and big.y_test.tolist() == [9, 8]
    pick = np.sort(seeding.rng(3, "dataset").choice(3, size=2, replace=False))
    rows = {0: [2, 5], 1: [4], 2: [1, 3, 6]}
    got = HFNatural(path=str(femnist_like), sample_clients=2).load(2, seeding.rng(3, "dataset"))
    assert got.y.tolist() == [v for u in pick for v in rows[int(u)]]


def test_test_split_without_id_column_and_single_dataset(tmp_path):
    train = Dataset.from_dict({"user": ["b", "a", "b", "a"], "features": [[1.0, 2.0]] * 4, "label": [0, 1, 0, 1]})
    test = Dataset.from_dict({"features": [[3.0, 4.0]], "label": [1]})
    DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    cfg = dict(partition_by="user", feature_column="features", label_column="label", input="vector", scale=1.0)
    fd = federate(HFNatural(path=str(tmp_path / "dd"), **cfg), Natural(), 2, 0.5, seed_of)
    # no ids in the test split: it is the global test set; local tests cut by test_fraction
    assert fd.y_test.tolist() == [1] and fd.val_offsets.tolist() == [0, 1, 2] and fd.train_offsets.tolist() == [0, 1, 2]
    train.save_to_disk(str(tmp_path / "single"))
    fd = federate(HFNatural(path=str(tmp_path / "single"), **cfg), Natural(), 2, 0.5, seed_of)
    assert len(fd.y_test) == 2 and fd.y_test.tolist() == fd.y_val.tolist()  # union of local test splits


def test_chars_and_text_inputs(tmp_path):
    w = "x" * 79 + "a"
    Dataset.from_dict({"character_id": ["c1", "c1", "c0"], "x": [w, w, w], "y": ["b", "}", "~"]}).save_to_disk(
        str(tmp_path / "shake"))
    pc = HFNatural(path=str(tmp_path / "shake"), partition_by="character_id", feature_column="x", label_column="y",
                   input="chars").load(2, np.random.default_rng(0))
    assert pc.x.dtype == np.int64 and pc.x.shape == (3, 80) and pc.x[0, -1] == 53 and pc.x[0, 0] == 76
    assert pc.y.tolist() == [80, 54, 79] and pc.num_classes == 81  # c0 first: "~" unknown; then "b", "}"
    Dataset.from_dict({"user": ["u"], "text": ["Good good DAY"], "target": [1]}).save_to_disk(str(tmp_path / "s140"))
    pc = HFNatural(path=str(tmp_path / "s140"), partition_by="user", feature_column="text", label_column="target",
                   input="text", num_features=1000).load(1, np.random.default_rng(0))
    assert pc.x[0, 1820610194 % 1000] == pytest.approx(2 / 3) and pc.x.sum() == pytest.approx(1.0)


def test_decoded_image_column(tmp_path):
    from PIL import Image

    pics = [Image.fromarray(np.full((28, 28), v, dtype=np.uint8), mode="L") for v in (0, 255, 51)]
    Dataset.from_dict({"writer_id": ["a", "b", "a"], "image": pics, "character": [0, 61, 3]}).save_to_disk(
        str(tmp_path / "img"))
    pc = HFNatural(path=str(tmp_path / "img")).load(2, np.random.default_rng(0))
    assert pc.x.shape == (3, 1, 28, 28) and pc.x.dtype == np.float32
    assert pc.x[:, 0, 0, 0].tolist() == pytest.approx([0.0, 0.2, 1.0]) and pc.y.tolist() == [0, 3, 61]


@pytest.mark.parametrize("change, match", [
    ({"partition_by": "writer"}, "data.dataset.partition_by: split 'train' has no column 'writer'"),
    ({"label_column": "label"}, "data.dataset.label_column: split 'train' has no column 'label'"),
    ({"train_split": "training"}, "data.dataset.train_split: .* has no split 'training'"),
])
def test_wrong_columns_are_one_line(femnist_like, change, match):
    with pytest.raises(ValueError, match=match) as err:
        HFNatural(path=str(femnist_like), **change).load(3, np.random.default_rng(0))
    assert "\n" not in str(err.value)


def test_missing_folder_and_scenario_run(tmp_path, femnist_like):
    from fedsim.errors import RunError

    raw = {"name": "hf", "data": {"dataset": {"name": "hf_natural", "path": str(tmp_path / "nope")},
                                  "partition": {"name": "natural"}, "num_clients": 3},
           "model": {"name": "logreg", "device": "cpu"}, "engine": {"rounds": 3}, "metrics": {"eval_every": 1}}
    with pytest.raises(RunError, match="^data.dataset.path: saved dataset not found"):
        run_raw(raw, tmp_path / "bad")
    raw["data"]["dataset"]["path"] = str(femnist_like)
    run_raw(raw, tmp_path / "ok")
    rows = read_metrics(tmp_path / "ok")
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert len(rows) == 4 and summary["num_clients"] == 3 and all(np.isfinite(r["test_loss"]) for r in rows)
