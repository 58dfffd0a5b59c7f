"""Real datasets read from a local folder (nothing is downloaded at run time).

- `mnist`: the four IDX files of MNIST (or Fashion-MNIST), optionally gzipped.
- `cifar10`: the `cifar-10-batches-py` folder (data_batch_1..5, test_batch). These files
  are Python pickles; they are read with an unpickler that only rebuilds plain containers
  and numpy arrays, so a crafted file cannot run code.
- `npz`: one `.npz` file with x_train, y_train, x_test, y_test (your own data).
- `hf_disk`: a Hugging Face `datasets` dataset saved with `save_to_disk` (e.g. a cached
  copy of an MNIST/CIFAR hub dataset), with `train`/`test` splits.
- `hf_natural`: a saved Hugging Face dataset split by a natural id column (writer, speaker,
  user), one client per id, as flwr-datasets' NaturalIdPartitioner splits it.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from fedsim.data import natural
from fedsim.data.pooled import PerClient, Pooled
from fedsim.scenario.fields import bounded


def _folder(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise ValueError(f"data.dataset.path: {what} not found: {path}")
    return p


def _limit(x: np.ndarray, y: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    return (x, y) if n is None else (x[:n], y[:n])


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (MNIST's format): magic 0x0000 | dtype code | ndim, big-endian dims.

    Args:
        path: the file; a `.gz` suffix means gzip-compressed.

    Returns:
        The array with the header's shape and dtype.

    Raises:
        ValueError: if the file is not IDX, has an unknown type code or is truncated.
    """
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise ValueError(f"data.dataset.path: {path} is not a complete gzip file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"data.dataset.path: {path} is not an IDX file")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"data.dataset.path: {path} has unknown IDX type code {raw[2]:#x}")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"data.dataset.path: {path} is truncated (header of {ndim} dimensions incomplete)")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    itemsize = np.dtype(dtypes[raw[2]]).itemsize
    body = len(raw) - 4 - 4 * ndim
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], count=body // itemsize, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"data.dataset.path: {path} is truncated ({data.size} values, header says {dims})")
    return data.reshape(dims)


MAX_CLASSES = 100_000


def _labels(y: np.ndarray, where: Path, name: str) -> np.ndarray:
    """Class labels as int64, or a one-line error.

    Labels must be whole numbers in 0..MAX_CLASSES-1: a negative or fractional label would
    index past the model's outputs.
    """
    if y.ndim != 1:
        raise ValueError(f"data.dataset.path: {where}: {name} must be one label per example, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"data.dataset.path: {where}: {name} must be integer class labels, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y) & (y == np.round(y))):
        raise ValueError(f"data.dataset.path: {where}: {name} must be whole numbers (class labels), "
                         "found fractional or non-finite values")
    if len(y) and (y.min() < 0 or y.max() >= MAX_CLASSES):
        raise ValueError(f"data.dataset.path: {where}: {name} must be in 0..{MAX_CLASSES - 1}, "
                         f"found {y.min():g}..{y.max():g}")
    return y.astype(np.int64)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"data.dataset.path: {folder} has no {stem}[.gz]")


@dataclass(frozen=True, kw_only=True)
class MNIST:
    """MNIST / Fashion-MNIST from the four IDX files in `path`, scaled to [0, 1], shape (1, 28, 28).

    Args:
        path: folder with train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
            t10k-labels-idx1-ubyte (each optionally .gz).
        limit_train / limit_test: use only the first n examples (quick runs).
    """

    path: str
    limit_train: int | None = bounded(None, ge=1)
    limit_test: int | None = bounded(None, ge=1)

    def load(self, num_clients: int, rng: np.random.Generator) -> Pooled:
        """Read the four IDX files, scale pixels to [0, 1] and add a channel axis.

        Args:
            num_clients: N (used only by datasets generated per client).
            rng: the `dataset` stream (random held-out split or generation).

        Returns:
            Pooled training and global test arrays, float32 inputs and int64 labels.

        Raises:
            ValueError: if a file is missing, not IDX or truncated.
        """
        folder = _folder(self.path, "MNIST folder")
        x = read_idx(_find(folder, "train-images-idx3-ubyte"))
        y = read_idx(_find(folder, "train-labels-idx1-ubyte"))
        xt = read_idx(_find(folder, "t10k-images-idx3-ubyte"))
        yt = read_idx(_find(folder, "t10k-labels-idx1-ubyte"))
        x, y = _limit(x, y, self.limit_train)
        xt, yt = _limit(xt, yt, self.limit_test)
        if len(x) != len(y) or len(xt) != len(yt):
            raise ValueError(f"data.dataset.path: {folder}: image and label files have different lengths")
        y, yt = _labels(y, folder, "train labels"), _labels(yt, folder, "test labels")
        prep = lambda a: (a.astype(np.float32) / 255.0)[:, None, :, :]  # noqa: E731
        return Pooled(prep(x), y.astype(np.int64), prep(xt), yt.astype(np.int64), 10)


class _SafeUnpickler(pickle.Unpickler):
    """Rebuild only numpy arrays and plain containers (CIFAR batches need nothing else)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "bytes")}

    def find_class(self, module: str, name: str):
        """Resolve only the allowed numpy globals; anything else raises `UnpicklingError`."""
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, TypeError, EOFError, ValueError) as exc:
        raise ValueError(f"data.dataset.path: {path} is not a CIFAR-10 batch ({exc})") from None
    return data.reshape(-1, 3, 32, 32), labels


@dataclass(frozen=True, kw_only=True)
class CIFAR10:
    """CIFAR-10 from the `cifar-10-batches-py` folder, scaled to [0, 1], shape (3, 32, 32).

    Args:
        path: folder with data_batch_1..5 and test_batch.
        limit_train / limit_test: use only the first n examples.
    """

    path: str
    limit_train: int | None = bounded(None, ge=1)
    limit_test: int | None = bounded(None, ge=1)

    def load(self, num_clients: int, rng: np.random.Generator) -> Pooled:
        """Read the pickled CIFAR-10 batches with the restricted unpickler, pixels scaled to [0, 1].

        Args:
            num_clients: N (used only by datasets generated per client).
            rng: the `dataset` stream (random held-out split or generation).

        Returns:
            Pooled training and global test arrays, float32 inputs and int64 labels.

        Raises:
            ValueError: if the folder lacks a batch or a batch is not a CIFAR-10 pickle.
        """
        folder = _folder(self.path, "CIFAR-10 folder")
        batches = sorted(folder.glob("data_batch_*"))
        if not batches or not (folder / "test_batch").is_file():
            raise ValueError(f"data.dataset.path: {folder} needs data_batch_1..5 and test_batch")
        parts = [_cifar_batch(b) for b in batches]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        xt, yt = _cifar_batch(folder / "test_batch")
        x, y = _limit(x, y, self.limit_train)
        xt, yt = _limit(xt, yt, self.limit_test)
        return Pooled(x.astype(np.float32) / 255.0, y, xt.astype(np.float32) / 255.0, yt, 10)


@dataclass(frozen=True, kw_only=True)
class Npz:
    """Your own data: one .npz with x_train, y_train (int labels), x_test, y_test.

    Inputs keep their shape (use (C, H, W) for the cnn model).
    """

    path: str

    def load(self, num_clients: int, rng: np.random.Generator) -> Pooled:
        """Read the four arrays from the .npz (no pickles); C is one more than the largest label.

        Args:
            num_clients: N (used only by datasets generated per client).
            rng: the `dataset` stream (random held-out split or generation).

        Returns:
            Pooled training and global test arrays, float32 inputs and int64 labels.

        Raises:
            ValueError: if the file is unreadable, lacks an array or x and y lengths differ.
        """
        p = _folder(self.path, ".npz file")
        try:
            with np.load(p, allow_pickle=False) as z:
                missing = {"x_train", "y_train", "x_test", "y_test"} - set(z.files)
                if missing:
                    raise ValueError(f"data.dataset.path: {p} lacks array(s) {sorted(missing)}")
                x, y, xt, yt = (z[k] for k in ("x_train", "y_train", "x_test", "y_test"))
        except (OSError, ValueError) as exc:
            raise ValueError(str(exc) if "data.dataset.path" in str(exc)
                             else f"data.dataset.path: cannot read {p} ({exc})") from None
        if len(x) != len(y) or len(xt) != len(yt):
            raise ValueError(f"data.dataset.path: {p}: x and y lengths differ")
        for name, arr in (("x_train", x), ("x_test", xt)):
            if not np.issubdtype(arr.dtype, np.number) or arr.ndim < 2:
                raise ValueError(f"data.dataset.path: {p}: {name} must be a numeric array of shape (n, ...), "
                                 f"got dtype {arr.dtype} and shape {arr.shape}")
        y, yt = _labels(y, p, "y_train"), _labels(yt, p, "y_test")
        classes = int(max(y.max(initial=0), yt.max(initial=0))) + 1
        return Pooled(x.astype(np.float32), y.astype(np.int64), xt.astype(np.float32), yt.astype(np.int64), classes)


@dataclass(frozen=True, kw_only=True)
class HFDisk:
    """A Hugging Face dataset saved with `DatasetDict.save_to_disk` (train/test splits).

    Args:
        path: the saved folder.  image_column / label_column: column names.
        scale: divide inputs by this (255 for 8-bit images).
    """

    path: str
    image_column: str = "image"
    label_column: str = "label"
    scale: float = bounded(255.0, gt=0.0)

    def load(self, num_clients: int, rng: np.random.Generator) -> Pooled:
        """Load the saved splits, scale inputs by `scale` and move image channels first.

        Args:
            num_clients: N (used only by datasets generated per client).
            rng: the `dataset` stream (random held-out split or generation).

        Returns:
            Pooled training and global test arrays, float32 inputs and int64 labels.

        Raises:
            ValueError: if the folder is not a saved dataset or lacks a split or column.
        """
        from datasets import load_from_disk

        p = _folder(self.path, "saved dataset")
        try:
            dd = load_from_disk(str(p))
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"data.dataset.path: {p} is not a saved dataset ({exc})") from None
        if "train" not in dd or "test" not in dd:
            raise ValueError(f"data.dataset.path: {p} needs 'train' and 'test' splits")

        def arrays(split):
            cols = dd[split].column_names
            for col in (self.image_column, self.label_column):
                if col not in cols:
                    raise ValueError(f"data.dataset: split {split!r} has no column {col!r} (columns: {cols})")
            ds = dd[split].with_format("numpy")
            x = np.asarray(ds[self.image_column], dtype=np.float32) / self.scale
            if x.ndim == 3:  # (n, H, W) grey images -> (n, 1, H, W)
                x = x[:, None]
            elif x.ndim == 4 and x.shape[-1] in (1, 3):  # channels last -> first
                x = np.transpose(x, (0, 3, 1, 2))
            return np.ascontiguousarray(x), np.asarray(ds[self.label_column], dtype=np.int64)

        x, y = arrays("train")
        xt, yt = arrays("test")
        return Pooled(x, y, xt, yt, int(max(y.max(), yt.max())) + 1)


def _hf_inputs(ds, column: str, kind: str, scale: float, num_features: int) -> np.ndarray:
    """A saved dataset's input column as an array, encoded as `HFNatural.input` says."""
    if kind == "chars":
        from fedsim.data.text import encode_chars

        return encode_chars(list(ds[column]))
    if kind == "text":
        from fedsim.data.text import hashed_bag_of_words

        return hashed_bag_of_words(list(ds[column]), num_features)
    x = np.asarray(ds.with_format("numpy")[column], dtype=np.float32) / scale
    if kind == "image":
        if x.ndim == 3:  # (n, H, W) grey images -> (n, 1, H, W)
            x = x[:, None]
        elif x.ndim == 4 and x.shape[-1] in (1, 3):  # channels last -> first
            x = np.transpose(x, (0, 3, 1, 2))
    return np.ascontiguousarray(x)


def _hf_labels(values: list, kind: str, where: str) -> np.ndarray:
    if kind == "chars":
        from fedsim.data.text import encode_char_labels

        return encode_char_labels(values)
    y = np.asarray(values)
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"data.dataset.label_column: {where}: labels must be integer classes, got {y.dtype}")
    return _labels(y, Path(where), "labels")


@dataclass(frozen=True, kw_only=True)
class HFNatural:
    """A saved Hugging Face dataset split by a natural id column: one client per writer/speaker/user.

    The split is flwr-datasets' NaturalIdPartitioner's: one client per distinct value of
    `partition_by` in the training split, clients numbered in sorted id order, each client's
    rows in dataset order; `min_samples`, `max_clients` and `sample_clients` then choose the
    clients (`fedsim.data.natural`). A test split with the id column gives each client its
    own test rows; one without it is the global test set only; without a test split, the local
    test splits are cut by `data.test_fraction` and the global test set is their union.
    Use with `partition: {name: natural}`; `data.num_clients` must equal the number of clients
    taken.

    Args:
        path: the folder written by `save_to_disk` (a DatasetDict, or a single Dataset = train).
        partition_by: the natural id column (`writer_id` in flwrlabs/femnist, `character_id` in
            flwrlabs/shakespeare, `user` in flwrlabs/sent140).
        feature_column / label_column: the input and label columns.
        input: `image` (decoded to floats / `scale`, channels first), `vector` (numbers / `scale`),
            `chars` (strings of equal length → `fedsim.data.text` character tokens; labels are
            single characters) or `text` (hashed bag of words of `num_features` dimensions).
        scale: divide image / vector inputs by this (255 for 8-bit images).
        num_features: `text` inputs — hashed dimensions.
        train_split / test_split: split names in a DatasetDict (a missing test split is allowed).
        min_samples / max_clients / sample_clients: which ids become clients (see `fedsim.data.natural`).

    Example:
        dataset: {name: hf_natural, path: data/femnist, partition_by: writer_id, label_column: character}
    """

    per_client: ClassVar[bool] = True  # the data's own partition: needs partition `natural`

    path: str
    partition_by: str = "writer_id"
    feature_column: str = "image"
    label_column: str = "character"
    input: Literal["image", "vector", "chars", "text"] = "image"
    scale: float = bounded(255.0, gt=0.0)
    num_features: int = bounded(1024, ge=1, le=10_000_000)
    train_split: str = "train"
    test_split: str = "test"
    min_samples: int = bounded(1, ge=1, le=1_000_000_000)
    max_clients: int | None = bounded(None, ge=1, le=10_000_000)
    sample_clients: int | None = bounded(None, ge=1, le=10_000_000)

    def validate(self) -> None:
        """Refuse both ways of choosing clients at once.

        Raises:
            ValueError: if max_clients and sample_clients are both set.
        """
        natural.selection_problem(self.max_clients, self.sample_clients, "ids")

    def check_clients(self, num_clients: int) -> list[str]:
        """Problems with `num_clients`, found before the dataset is read."""
        return natural.count_problems(self.max_clients, self.sample_clients, num_clients, "id")

    def load(self, num_clients: int, rng: np.random.Generator) -> PerClient:
        """Load the saved dataset, group the training split by `partition_by`, choose and encode clients.

        Args:
            num_clients: N; must equal the number of clients taken.
            rng: the `dataset` stream (draws `sample_clients`).

        Returns:
            Per-client data (see the class docstring for the test rows).

        Raises:
            ValueError: if the folder is not a saved dataset, lacks the split or a column, or
                `data.num_clients` does not match the clients taken.
        """
        from datasets import Dataset, load_from_disk

        from fedsim.data.natural import assemble, check_count, select_users

        p = _folder(self.path, "saved dataset")
        try:
            saved = load_from_disk(str(p))
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"data.dataset.path: {p} is not a saved dataset ({exc})") from None
        if isinstance(saved, Dataset):
            train, test = saved, None
        else:
            if self.train_split not in saved:
                raise ValueError(f"data.dataset.train_split: {p} has no split {self.train_split!r} "
                                 f"(splits: {sorted(saved)})")
            train = saved[self.train_split]
            test = saved[self.test_split] if self.test_split in saved else None
        for key in ("partition_by", "feature_column", "label_column"):
            col = getattr(self, key)
            if col not in train.column_names:
                raise ValueError(f"data.dataset.{key}: split {self.train_split!r} has no column {col!r} "
                                 f"(columns: {train.column_names})")
        ids = train[self.partition_by]
        users = sorted(set(ids))  # NaturalIdPartitioner numbers partitions in sorted id order
        index = {u: i for i, u in enumerate(users)}
        owner_all = np.fromiter((index[u] for u in ids), dtype=np.int64, count=len(ids))
        sizes = np.bincount(owner_all, minlength=len(users))
        chosen = select_users(sizes, self.min_samples, self.max_clients, self.sample_clients, rng, self.path)
        check_count(chosen, num_clients, f"{self.path} ({len(users)} distinct {self.partition_by})")
        client_of = np.full(len(users), -1, dtype=np.int64)
        client_of[chosen] = np.arange(len(chosen))
        rows = np.nonzero(client_of[owner_all] >= 0)[0]
        picked = train.select(rows)
        x = _hf_inputs(picked, self.feature_column, self.input, self.scale, self.num_features)
        y = _hf_labels(picked[self.label_column], self.input, f"{p}:{self.train_split}")
        owner = client_of[owner_all[rows]]
        xt = yt = owner_t = None
        if test is not None:
            for col in (self.feature_column, self.label_column):
                if col not in test.column_names:
                    raise ValueError(f"data.dataset.{'feature' if col == self.feature_column else 'label'}_column: "
                                     f"split {self.test_split!r} has no column {col!r} (columns: {test.column_names})")
            if self.partition_by in test.column_names:
                tid = test[self.partition_by]
                owner_t = np.fromiter((client_of[index[u]] if u in index else -1 for u in tid), dtype=np.int64,
                                      count=len(tid))
                # rows of ids that are not clients but have training rows belong to nobody: dropped
                unpicked = np.fromiter((u in index and client_of[index[u]] < 0 for u in tid), dtype=bool,
                                       count=len(tid))
                trows = np.nonzero(~unpicked)[0]
                test, owner_t = test.select(trows), owner_t[trows]
            else:
                owner_t = np.full(len(test), -1, dtype=np.int64)
            if len(test):
                xt = _hf_inputs(test, self.feature_column, self.input, self.scale, self.num_features)
                yt = _hf_labels(test[self.label_column], self.input, f"{p}:{self.test_split}")
            else:
                xt = yt = owner_t = None
        if self.input == "chars":
            from fedsim.data.text import NUM_CHAR_CLASSES

            classes = NUM_CHAR_CLASSES
        else:
            classes = int(max(y.max(initial=0), -1 if yt is None else yt.max(initial=0))) + 1
        return assemble(x, y, owner, xt, yt, owner_t, np.arange(len(chosen)), len(chosen), classes)
