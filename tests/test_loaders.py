"""Real-data loaders on small files the tests write in the real formats."""

import gzip
import pickle
import struct

import numpy as np
import pytest
from conftest import TINY, merge, read_metrics, run_raw

from fedsim.data.files import CIFAR10, MNIST, HFDisk, Npz, read_idx


def write_idx(path, arr, gz=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def fake_images(n, shape, seed):
    """Images whose label is readable from the mean brightness of one quadrant."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 60, size=(n, *shape))
    x[..., : shape[-2] // 2, : shape[-1] // 2] += (y * 19)[(...,) + (None,) * len(shape)]
    return np.clip(x, 0, 255).astype(np.uint8), y


@pytest.fixture
def mnist_dir(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    x, y = fake_images(300, (28, 28), 0)
    xt, yt = fake_images(100, (28, 28), 1)
    write_idx(d / "train-images-idx3-ubyte.gz", x, gz=True)
    write_idx(d / "train-labels-idx1-ubyte.gz", y, gz=True)
    write_idx(d / "t10k-images-idx3-ubyte", xt)
    write_idx(d / "t10k-labels-idx1-ubyte", yt)
    return d


def test_idx_round_trip(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", a)
    assert np.array_equal(read_idx(tmp_path / "a"), a)
    (tmp_path / "b").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "b")


def test_mnist_folder_trains_a_cnn(mnist_dir, tmp_path):
    pooled = MNIST(path=str(mnist_dir), limit_train=200).load(4, np.random.default_rng(0))
    assert pooled.x.shape == (200, 1, 28, 28) and pooled.x.max() <= 1.0
    raw = merge(TINY, data={"dataset": {"name": "mnist", "path": str(mnist_dir)}, "num_clients": 4},
                model={"name": "cnn", "channels": [4, 4], "hidden": 16, "device": "cpu"},
                engine={"rounds": 4}, client={"local_steps": 10, "lr": 0.1})
    run_raw(raw, tmp_path / "out")
    rows = read_metrics(tmp_path / "out")
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"]


def test_cifar_batches_and_pickle_safety(tmp_path):
    d = tmp_path / "cifar"
    d.mkdir()
    for i, name in enumerate(["data_batch_1", "data_batch_2", "test_batch"]):
        x, y = fake_images(50, (3, 32, 32), i)
        with open(d / name, "wb") as fh:
            pickle.dump({b"data": x.reshape(50, -1), b"labels": y.tolist()}, fh)
    pooled = CIFAR10(path=str(d)).load(2, np.random.default_rng(0))
    assert pooled.x.shape == (100, 3, 32, 32) and pooled.x_test.shape == (50, 3, 32, 32)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(d / "test_batch", "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh)
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        CIFAR10(path=str(d)).load(2, np.random.default_rng(0))


def test_npz_and_hf_disk(tmp_path):
    x, y = fake_images(60, (8, 8), 0)
    np.savez(tmp_path / "d.npz", x_train=x[:, None] / 255.0, y_train=y, x_test=x[:10, None] / 255.0, y_test=y[:10])
    pooled = Npz(path=str(tmp_path / "d.npz")).load(2, np.random.default_rng(0))
    assert pooled.x.shape == (60, 1, 8, 8) and pooled.num_classes == int(y.max()) + 1
    np.savez(tmp_path / "bad.npz", x_train=x)
    with pytest.raises(ValueError, match=r"lacks array\(s\)"):
        Npz(path=str(tmp_path / "bad.npz")).load(2, np.random.default_rng(0))

    from datasets import Dataset, DatasetDict

    dd = DatasetDict({"train": Dataset.from_dict({"image": x.tolist(), "label": y.tolist()}),
                      "test": Dataset.from_dict({"image": x[:10].tolist(), "label": y[:10].tolist()})})
    dd.save_to_disk(str(tmp_path / "hf"))
    pooled = HFDisk(path=str(tmp_path / "hf")).load(2, np.random.default_rng(0))
    assert pooled.x.shape == (60, 1, 8, 8) and np.allclose(pooled.x, x[:, None] / 255.0)
    with pytest.raises(ValueError, match="has no column 'img'"):
        HFDisk(path=str(tmp_path / "hf"), image_column="img").load(2, np.random.default_rng(0))


def test_missing_folder_is_a_one_line_run_error(tmp_path):
    from fedsim.errors import RunError

    raw = merge(TINY, data={"dataset": {"name": "mnist", "path": str(tmp_path / "nope")}, "num_clients": 4})
    with pytest.raises(RunError, match="^data.dataset.path: MNIST folder not found"):
        run_raw(raw, tmp_path / "out")


def _run_error(tmp_path, dataset: dict, **changes) -> str:
    from fedsim.errors import RunError

    raw = merge(TINY, data={"dataset": dataset, "num_clients": 2}, **changes)
    with pytest.raises(RunError) as info:
        run_raw(raw, tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message and "Error:" not in message  # one line, no exception class leaking
    return message


@pytest.mark.parametrize("labels, expected", [
    (np.array([0, 1, -1, 2] * 5), "must be in 0..99999, found -1..2"),
    (np.array([0.0, 1.5, 2.0, 1.0] * 5), "must be whole numbers"),
    (np.array([0.0, np.nan, 2.0, 1.0] * 5), "must be whole numbers"),
    (np.array([[0, 1]] * 20), "one label per example"),
])
def test_npz_bad_labels_are_one_line_errors(tmp_path, labels, expected):
    x = np.zeros((20, 3), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=labels, x_test=x[:4], y_test=np.zeros(4, dtype=np.int64))
    assert expected in _run_error(tmp_path, {"name": "npz", "path": str(tmp_path / "d.npz")})


@pytest.mark.parametrize("cut", ["header", "body", "gzip"])
def test_truncated_mnist_files_are_one_line_errors(mnist_dir, tmp_path, cut):
    name = "train-images-idx3-ubyte.gz" if cut == "gzip" else "t10k-images-idx3-ubyte"
    raw = (mnist_dir / name).read_bytes()
    (mnist_dir / name).write_bytes({"header": raw[:9], "body": raw[: len(raw) // 2 + 1], "gzip": raw[:40]}[cut])
    message = _run_error(tmp_path, {"name": "mnist", "path": str(mnist_dir)})
    assert message.startswith("data.dataset.path:") and ("truncated" in message or "gzip" in message)


def test_cnn_with_zero_channels_is_a_validation_error():
    from fedsim.errors import ScenarioError
    from fedsim.scenario import from_mapping

    with pytest.raises(ScenarioError, match=r"model: channels must be conv widths in 1..100000, got \[0, 4\]"):
        from_mapping(merge(TINY, model={"name": "cnn", "channels": [0, 4]}))
