"""LEAF's JSON datasets (FEMNIST, Shakespeare, Sent140) read from local files, one client per user.

LEAF (Caldas et al., "LEAF: A Benchmark for Federated Settings", arXiv:1812.01097) stores a
dataset as JSON files, each an object with `users` (ids), `num_samples` (rows per user) and
`user_data` = {user: {"x": [...], "y": [...]}}. After LEAF's `preprocess.sh` a dataset folder
holds `train/*.json` and `test/*.json`; every file of a split is merged. Per task:

- `femnist`: x is 784 numbers (a 28×28 grey image flattened row by row, pixel / 255 as LEAF's
  `data_to_json.py` writes it, so the white background is 1.0 and ink is near 0; `invert: true`
  gives 1 − x, ink = 1 as in MNIST), y is the class 0..61 (digits, upper case, lower case).
  Inputs have shape (1, 28, 28).
- `shakespeare`: x is a window of 80 characters, y the next character; both are encoded with
  `fedsim.data.text.SHAKESPEARE_CHARS` (int64 tokens, 81 classes; see that module).
- `sent140`: x is [tweet id, date, query, user, text], y is 0 (negative) or 1 (positive); the
  text becomes a hashed bag of words of `num_features` dimensions (`fedsim.data.text`).

Which users become clients, and how LEAF's per-user train/test split maps onto fedsim's local
test splits and global test set, is described in `fedsim.data.natural`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from fedsim.data import natural
from fedsim.data.natural import assemble, check_count, select_users
from fedsim.data.pooled import PerClient
from fedsim.data.text import NUM_CHAR_CLASSES, encode_char_labels, encode_chars, hashed_bag_of_words
from fedsim.scenario.fields import bounded

NUM_CLASSES = {"femnist": 62, "shakespeare": NUM_CHAR_CLASSES, "sent140": 2}


def leaf_files(path: Path) -> tuple[list[Path], list[Path]]:
    """The train and test JSON files of a LEAF dataset.

    Args:
        path: a folder with `train/` and `test/` subfolders (LEAF's layout after
            `preprocess.sh`; `test/` may be missing), a folder of JSON files (all training
            data), or one JSON file.

    Returns:
        (train files, test files), each sorted by name.

    Raises:
        ValueError: if the path does not exist or holds no JSON file.
    """
    if not path.exists():
        raise ValueError(f"data.dataset.path: LEAF data not found: {path}")
    if path.is_file():
        return [path], []
    if (path / "train").is_dir():
        train = sorted((path / "train").glob("*.json"))
        test = sorted((path / "test").glob("*.json")) if (path / "test").is_dir() else []
        if not train:
            raise ValueError(f"data.dataset.path: {path / 'train'} has no .json file")
        return train, test
    files = sorted(path.glob("*.json"))
    if not files:
        raise ValueError(f"data.dataset.path: {path} has no .json file and no train/ folder")
    return files, []


def read_leaf_file(path: Path) -> dict[str, dict[str, list]]:
    """One LEAF JSON file's users and their rows, checked.

    Args:
        path: the file.

    Returns:
        {user id: {"x": list, "y": list}} with len(x) == len(y) for every user.

    Raises:
        ValueError: one line naming the file, for invalid JSON, a missing key, rows that do not
            line up, or a `num_samples` entry that disagrees with the rows.
    """
    try:
        doc = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise ValueError(f"data.dataset.path: {path}: not valid JSON ({exc.msg} at line {exc.lineno} "
                         f"column {exc.colno})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"data.dataset.path: {path}: cannot read ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("user_data"), dict):
        raise ValueError(f"data.dataset.path: {path}: not a LEAF file (needs an object with 'user_data')")
    data: dict[str, dict[str, list]] = doc["user_data"]
    for user, rows in data.items():
        if not (isinstance(rows, dict) and isinstance(rows.get("x"), list) and isinstance(rows.get("y"), list)):
            raise ValueError(f"data.dataset.path: {path}: user {user!r} needs lists 'x' and 'y'")
        if len(rows["x"]) != len(rows["y"]):
            raise ValueError(f"data.dataset.path: {path}: user {user!r} has {len(rows['x'])} x but "
                             f"{len(rows['y'])} y")
    users, counts = doc.get("users"), doc.get("num_samples")
    if isinstance(users, list) and isinstance(counts, list) and len(users) == len(counts):
        for user, n in zip(users, counts, strict=True):
            if user not in data:
                raise ValueError(f"data.dataset.path: {path}: user {user!r} is in 'users' but not in 'user_data'")
            if n != len(data[user]["y"]):
                raise ValueError(f"data.dataset.path: {path}: user {user!r}: num_samples says {n}, "
                                 f"user_data has {len(data[user]['y'])} rows")
    return data


def _merge(files: list[Path]) -> tuple[dict[str, dict[str, list]], dict[str, Path]]:
    """Every file's users in one dict; a user in two files of the same split is an error."""
    merged: dict[str, dict[str, list]] = {}
    where: dict[str, Path] = {}
    for f in files:
        for user, rows in read_leaf_file(f).items():
            if user in merged:
                raise ValueError(f"data.dataset.path: user {user!r} is in both {where[user]} and {f}")
            merged[user], where[user] = rows, f
    return merged, where


@dataclass(frozen=True, kw_only=True)
class Leaf:
    """A LEAF dataset from local JSON files: FEMNIST, Shakespeare or Sent140, one client per user.

    Use with `partition: {name: natural}`; `data.num_clients` must equal the number of users
    taken (the error says how many there are). With LEAF's train/test folders each client keeps
    its own test rows and `data.test_fraction` is not used (see `fedsim.data.natural`).

    Args:
        path: a LEAF data folder with `train/` and `test/` (e.g. leaf/data/femnist/data), a folder
            of JSON files, or one JSON file.
        task: which LEAF dataset the files hold (decides how x and y are read).
        min_samples: leave out users with fewer training examples.
        max_clients: take the first this many users in sorted id order (unset = all).
        sample_clients: take a random sample of this many users (the `dataset` stream of the seed).
        num_features: sent140 — dimensions of the hashed bag of words.
        invert: femnist — use 1 − pixel (ink = 1) instead of LEAF's values (background = 1).

    Example:
        dataset: {name: leaf, task: femnist, path: data/leaf/femnist/data, sample_clients: 100}

    References:
        S. Caldas, S. M. K. Duddu, P. Wu, T. Li, J. Konečný, H. B. McMahan, V. Smith and
        A. Talwalkar, "LEAF: A Benchmark for Federated Settings", arXiv:1812.01097 (§3, the datasets).
    """

    per_client: ClassVar[bool] = True  # the data's own partition: needs partition `natural`

    path: str
    task: Literal["femnist", "shakespeare", "sent140"]
    min_samples: int = bounded(1, ge=1, le=1_000_000_000)
    max_clients: int | None = bounded(None, ge=1, le=10_000_000)
    sample_clients: int | None = bounded(None, ge=1, le=10_000_000)
    num_features: int = bounded(1024, ge=1, le=10_000_000)
    invert: bool = False

    def validate(self) -> None:
        """Refuse both ways of choosing users at once.

        Raises:
            ValueError: if max_clients and sample_clients are both set.
        """
        natural.selection_problem(self.max_clients, self.sample_clients, "users")

    def check_clients(self, num_clients: int) -> list[str]:
        """Problems with `num_clients`, found before any file is read."""
        return natural.count_problems(self.max_clients, self.sample_clients, num_clients, "user")

    def load(self, num_clients: int, rng: np.random.Generator) -> PerClient:
        """Read and merge the JSON files, choose the users, encode x and y for the task.

        Args:
            num_clients: N; must equal the number of users taken.
            rng: the `dataset` stream (draws `sample_clients`).

        Returns:
            Per-client data, with each client's own test rows when the files have a test split.

        Raises:
            ValueError: one line naming the file (and user) for unreadable or malformed data, or
                `data.num_clients` when it does not match the users taken.
        """
        train_files, test_files = leaf_files(Path(self.path))
        train, where = _merge(train_files)
        test, twhere = _merge(test_files)
        users = sorted(train)
        sizes = np.array([len(train[u]["y"]) for u in users], dtype=np.int64)
        chosen = select_users(sizes, self.min_samples, self.max_clients, self.sample_clients, rng, self.path)
        check_count(chosen, num_clients, f"the LEAF data at {self.path} ({len(users)} users)")
        index = {u: i for i, u in enumerate(users)}
        keep = [users[i] for i in chosen]
        x, y = self._encode(keep, train, where)
        owner = np.repeat(np.arange(len(keep)), [len(train[u]["y"]) for u in keep])
        # test rows: chosen users' own, and users with test rows only (LEAF's -t user split)
        picked = set(keep)
        test_users = [u for u in sorted(test) if u in picked or u not in index]
        if not test_users:
            xt = yt = owner_t = None
        else:
            xt, yt = self._encode(test_users, test, twhere)
            pos = {u: k for k, u in enumerate(keep)}
            owner_t = np.repeat(np.array([pos.get(u, -1) for u in test_users], dtype=np.int64),
                                [len(test[u]["y"]) for u in test_users])
        if xt is not None and len(xt) == 0:
            xt = yt = owner_t = None
        if xt is not None and xt.shape[1:] != x.shape[1:]:
            raise ValueError(f"data.dataset.path: test windows have shape {xt.shape[1:]}, training {x.shape[1:]}")
        return assemble(x, y, owner, xt, yt, owner_t, np.arange(len(keep)), len(keep), NUM_CLASSES[self.task])

    def _encode(self, users: list[str], data: dict[str, dict[str, list]],
                where: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and labels of `users`, in order, encoded for the task (errors name file and user)."""
        xs, ys = [], []
        for u in users:
            if not data[u]["y"]:
                continue
            try:
                xs.append(self._inputs(data[u]["x"]))
                ys.append(self._labels(data[u]["y"]))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"data.dataset.path: {where[u]}: user {u!r}: {exc}") from None
        if not xs:
            return np.zeros((0,)), np.zeros(0, dtype=np.int64)
        shapes = {a.shape[1:] for a in xs}
        if len(shapes) > 1:
            raise ValueError(f"data.dataset.path: users' inputs differ in shape: {sorted(shapes)}")
        return np.concatenate(xs), np.concatenate(ys)

    def _inputs(self, rows: list[Any]) -> np.ndarray:
        if self.task == "femnist":
            x = np.asarray(rows, dtype=np.float32)
            if x.ndim != 2 or x.shape[1] != 784:
                raise ValueError(f"femnist x must be 784 numbers per image, got shape {x.shape}")
            if not np.all(np.isfinite(x)):
                raise ValueError("femnist x has non-finite values")
            x = x.reshape(-1, 1, 28, 28)
            return 1.0 - x if self.invert else x
        if self.task == "shakespeare":
            return encode_chars(rows)  # LEAF's windows are 80 characters
        texts = [r[4] if isinstance(r, list) and len(r) == 5 else r for r in rows]
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("sent140 x must be [id, date, query, user, text] rows (or texts)")
        return hashed_bag_of_words(texts, self.num_features)

    def _labels(self, rows: list[Any]) -> np.ndarray:
        if self.task == "shakespeare":
            return encode_char_labels(rows)
        y = np.asarray(rows)
        c = NUM_CLASSES[self.task]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.number) or (len(y) and (
                not np.all(y == np.round(y)) or y.min() < 0 or y.max() >= c)):
            raise ValueError(f"{self.task} y must be whole numbers in 0..{c - 1}")
        return y.astype(np.int64)
