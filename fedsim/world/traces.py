"""FedScale's device and availability traces: safe reading, validation, fedsim's plain schema.

FedScale (F. Lai, Y. Dai, S. S. V. Singapuram, J. Liu, X. Zhu, H. V. Madhyastha and M.
Chowdhury, "FedScale: Benchmarking Model and System Performance of Federated Learning at
Scale", ICML 2022) ships two pickled dicts (`benchmark/dataset/data/device_info/` in
SymbioticLab/FedScale, described in that folder's README.md):

* `client_device_capacity`: {client id: {"computation": ms per sample, "communication": kbit/s}};
* `client_behave_trace`: {client id: {"active": [s], "inactive": [s], "finish_time": s, ...}},
  client online when active[j] <= t mod finish_time <= inactive[j].

A pickle can run code when it is loaded, so `load_pickle` uses an unpickler that refuses every
global reference (plain dicts, lists, tuples, numbers, strings, booleans and None need none) and
the readers then check the structure. fedsim's own plain-text schema (docs/traces.md) is a CSV
file for devices (client,compute_ms_per_sample,bandwidth_kbps) and a JSON-lines file for
availability (one object per client with FedScale's own field names); `convert` turns either
format into the other. Every reader returns FedScale's dict shape, in file order (the order is
part of the client-to-trace mapping, see `map_clients`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np

DEVICE_COLUMNS = ("client", "compute_ms_per_sample", "bandwidth_kbps")
BEHAVE_FIELDS = ("active", "inactive", "finish_time")
# FedScale's profile for a client id that is not in the device file (aggregator.py,
# `client_register_handler`: `client_profiles.get(mapped_id, {...})`).
FEDSCALE_DEFAULT_DEVICE = {"computation": 1.0, "communication": 1.0}
PLAIN_SUFFIX = {"device": ".csv", "behave": ".jsonl"}

Kind = Literal["device", "behave"]
TraceMapping = Literal["fedscale", "order", "sample"]


# --- safe pickles ----------------------------------------------------------------------------


class _Refused(Exception):
    """A pickle asked for a global (a class or a function)."""


class _PlainUnpickler(pickle.Unpickler):
    """An unpickler that cannot build anything but built-in containers and scalars.

    Every class or function a pickle names goes through `find_class` (GLOBAL, STACK_GLOBAL,
    EXT*), and REDUCE/NEWOBJ/BUILD can only call what came from there, so refusing it here
    means no code named by the file ever runs.
    """

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 — pickle's hook
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102 — pickle's hook
        raise _Refused(f"persistent id {pid!r}")


def _plain_error(path: Path, found: str) -> ValueError:
    return ValueError(f"trace file {path}: only plain dicts, lists and numbers are accepted, found {found}")


def load_pickle(path: str | Path) -> Any:
    """Load a pickle that may hold only plain data, never running code it names.

    Args:
        path: the file.

    Returns:
        The unpickled dicts, lists, tuples, numbers, strings, booleans and None.

    Raises:
        ValueError: one line naming the file: missing, unreadable, not a pickle, or a pickle
            that refers to a class or function ("found a reference to os.system").
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"trace file not found: {p}") from None
    except OSError as exc:
        raise ValueError(f"trace file {p}: cannot read ({exc.strerror or exc})") from None
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except _Refused as exc:
        raise _plain_error(p, f"a reference to {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, MemoryError, RecursionError, UnicodeDecodeError) as exc:
        raise ValueError(f"trace file {p}: not a readable pickle ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]})") from None


# --- structure checks ------------------------------------------------------------------------


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _what(x: Any) -> str:
    return f"a {type(x).__name__}"


def _check_plain(path: Path, x: Any, depth: int = 0) -> None:
    """Refuse anything but dict/list/tuple/int/float/str/bool/None (sets, bytes, ...)."""
    if depth > 8:
        raise _plain_error(path, "data nested deeper than 8 levels")
    if x is None or isinstance(x, (bool, int, float, str)):
        return
    if isinstance(x, (list, tuple)):
        for v in x:
            _check_plain(path, v, depth + 1)
        return
    if isinstance(x, dict):
        for k, v in x.items():
            _check_plain(path, k, depth + 1)
            _check_plain(path, v, depth + 1)
        return
    raise _plain_error(path, _what(x))


def detect_kind(data: Any) -> Kind | None:
    """Which FedScale trace a loaded dict is: device capacities or availability, or None.

    Args:
        data: the unpickled object.

    Returns:
        `device` when its first entry has `computation`, `behave` when it has `active`.
    """
    if not isinstance(data, dict) or not data:
        return None
    first = next(iter(data.values()))
    if isinstance(first, dict) and "computation" in first and "communication" in first:
        return "device"
    if isinstance(first, dict) and "active" in first:
        return "behave"
    return None


def _int_key(path: Path, key: Any) -> int:
    if isinstance(key, bool) or not isinstance(key, int):
        raise ValueError(f"trace file {path}: client id {key!r} is not an integer")
    return key


def check_device(path: str | Path, data: Any) -> dict[int, dict[str, float]]:
    """Validate a device-capacity dict and return it as {client: {computation, communication}}.

    Args:
        path: the file it came from (for messages).
        data: the loaded object.

    Returns:
        The entries in file order, each with exactly FedScale's two fields.

    Raises:
        ValueError: one line naming the file and the client.
    """
    p = Path(path)
    _check_plain(p, data)
    if not isinstance(data, dict) or not data:
        raise ValueError(f"trace file {p}: expected a non-empty dict of client id -> "
                         "{'computation': ms/sample, 'communication': kbit/s}, got " + _what(data))
    out: dict[int, dict[str, float]] = {}
    for key, entry in data.items():
        c = _int_key(p, key)
        if not isinstance(entry, dict):
            raise ValueError(f"trace file {p}: client {c}: expected a dict with computation and communication, "
                             f"got {_what(entry)}")
        for field in ("computation", "communication"):
            v = entry.get(field)
            if not _number(v) or v <= 0:
                raise ValueError(f"trace file {p}: client {c}: {field!r} must be a finite number > 0, got {v!r}")
        out[c] = {"computation": entry["computation"], "communication": entry["communication"]}
    return out


def check_behave(path: str | Path, data: Any, where: str = "") -> dict[Any, dict[str, Any]]:
    """Validate an availability dict and return it as {client: {active, inactive, finish_time, ...}}.

    Fields other than the three FedScale reads (its trace also has `duration` and `model`) are
    kept as they are, so a converted file converts back to the same dict.

    Args:
        path: the file it came from (for messages).
        data: the loaded object.
        where: a location to name instead of the client (e.g. `:5` for line 5 of a JSONL file).

    Returns:
        The entries in file order.

    Raises:
        ValueError: one line naming the file and the client (or `where`).
    """
    p = Path(path)
    _check_plain(p, data)
    if not isinstance(data, dict) or not data:
        raise ValueError(f"trace file {p}: expected a non-empty dict of client id -> "
                         "{'active': [...], 'inactive': [...], 'finish_time': ...}, got " + _what(data))
    for key, entry in data.items():
        at = where or f": client {key!r}"
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise ValueError(f"trace file {p}{at}: client id {key!r} is not an integer or a string")
        if not isinstance(entry, dict):
            raise ValueError(f"trace file {p}{at}: expected a dict with active, inactive and finish_time, "
                             f"got {_what(entry)}")
        missing = [f for f in BEHAVE_FIELDS if f not in entry]
        if missing:
            raise ValueError(f"trace file {p}{at}: lacks {', '.join(missing)}")
        act, ina, fin = entry["active"], entry["inactive"], entry["finish_time"]
        if not _number(fin) or fin <= 0:
            raise ValueError(f"trace file {p}{at}: 'finish_time' must be a finite number > 0, got {fin!r}")
        for name, seq in (("active", act), ("inactive", ina)):
            if not isinstance(seq, (list, tuple)) or not seq or not all(_number(v) and v >= 0 for v in seq):
                raise ValueError(f"trace file {p}{at}: {name!r} must be a non-empty list of numbers >= 0")
        if len(act) != len(ina):
            raise ValueError(f"trace file {p}{at}: 'active' has {len(act)} entries but 'inactive' has {len(ina)}")
    return dict(data)


# --- fedsim's plain schema -------------------------------------------------------------------


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"trace file not found: {p}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"trace file {p}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"trace file {p}: cannot read ({exc.strerror or exc})") from None


def read_device_csv(path: str | Path) -> dict[int, dict[str, float]]:
    """Read fedsim's device CSV (client,compute_ms_per_sample,bandwidth_kbps) into FedScale's dict.

    Args:
        path: the CSV file.

    Returns:
        {client: {"computation": ms/sample, "communication": kbit/s}} in row order.

    Raises:
        ValueError: one line naming the file, and the line for a bad row.
    """
    p = Path(path)
    reader = csv.DictReader(io.StringIO(_read_text(p), newline=""))
    try:
        missing = [c for c in DEVICE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"trace file {p}: lacks column(s) {', '.join(missing)} "
                             f"(expected {','.join(DEVICE_COLUMNS)})")
        out: dict[int, dict[str, float]] = {}
        for line, row in enumerate(reader, start=2):
            try:
                c = int(row["client"])
                ms, kbps = float(row["compute_ms_per_sample"]), float(row["bandwidth_kbps"])
            except (TypeError, ValueError):
                raise ValueError(f"trace file {p}:{line}: bad row {dict(row)}") from None
            if not (math.isfinite(ms) and ms > 0 and math.isfinite(kbps) and kbps > 0):
                raise ValueError(f"trace file {p}:{line}: compute_ms_per_sample and bandwidth_kbps must be "
                                 "finite numbers > 0")
            if c in out:
                raise ValueError(f"trace file {p}:{line}: client {c} appears twice")
            out[c] = {"computation": ms, "communication": kbps}
    except csv.Error as exc:
        raise ValueError(f"trace file {p}: not a CSV file ({exc})") from None
    if not out:
        raise ValueError(f"trace file {p}: has no rows")
    return out


def read_behave_jsonl(path: str | Path) -> dict[Any, dict[str, Any]]:
    """Read fedsim's availability JSON lines into FedScale's dict.

    Each non-empty line is an object `{"client": id, "active": [...], "inactive": [...],
    "finish_time": s, ...}`; other fields are kept.

    Args:
        path: the JSONL file.

    Returns:
        {client: {"active", "inactive", "finish_time", ...}} in line order.

    Raises:
        ValueError: one line naming the file and the line.
    """
    p = Path(path)
    out: dict[Any, dict[str, Any]] = {}
    for line, text in enumerate(_read_text(p).splitlines(), start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"trace file {p}:{line}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or "client" not in obj:
            raise ValueError(f"trace file {p}:{line}: expected an object with a 'client' field")
        key = obj.pop("client")
        if isinstance(key, (int, str)) and not isinstance(key, bool) and key in out:
            raise ValueError(f"trace file {p}:{line}: client {key!r} appears twice")
        check_behave(p, {key: obj}, where=f":{line}")
        out[key] = obj
    if not out:
        raise ValueError(f"trace file {p}: has no lines")
    return out


def _num(x: float) -> str:
    return repr(x)  # shortest string that reads back to the same float (or int)


def device_csv(data: dict[int, dict[str, float]]) -> str:
    """The device CSV text (fedsim's plain schema) of a FedScale device dict, numbers exact.

    Args:
        data: {client: {"computation": ms/sample, "communication": kbit/s}}.

    Returns:
        The CSV text, header first, one row per client in dict order.
    """
    rows = [",".join(DEVICE_COLUMNS)]
    rows += [f"{c},{_num(e['computation'])},{_num(e['communication'])}" for c, e in data.items()]
    return "\n".join(rows) + "\n"


def behave_jsonl(data: dict[Any, dict[str, Any]]) -> str:
    """The availability JSONL text (fedsim's plain schema) of a FedScale availability dict.

    Args:
        data: {client: {"active", "inactive", "finish_time", ...}}.

    Returns:
        One JSON object per line, `client` first, then the entry's fields in their order.
    """
    return "".join(json.dumps({"client": c, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in e.items()}})
                   + "\n" for c, e in data.items())


# --- reading any format ------------------------------------------------------------------------


def read(path: str | Path, kind: Kind | None = None) -> tuple[Kind, dict]:
    """Read a trace in fedsim's plain schema (`.csv` devices, `.jsonl` availability) or FedScale's pickle.

    Args:
        path: the file; any suffix other than `.csv` and `.jsonl` is read as a pickle.
        kind: the expected kind (None: detected from the content).

    Returns:
        (kind, FedScale-shaped dict in file order).

    Raises:
        ValueError: one line naming the file.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        found, data = "device", read_device_csv(p)
    elif suffix == ".jsonl":
        found, data = "behave", read_behave_jsonl(p)
    else:
        raw = load_pickle(p)
        found = detect_kind(raw) or kind
        if found is None:
            raise ValueError(f"trace file {p}: neither a device-capacity trace (entries with computation "
                             "and communication) nor an availability trace (entries with active, inactive, "
                             "finish_time)")
        if found == kind or kind is None:
            data = check_device(p, raw) if found == "device" else check_behave(p, raw)
    if kind is not None and found != kind:
        raise ValueError(f"trace file {p}: is {'a device' if found == 'device' else 'an availability'} trace, "
                         f"not {'a device' if kind == 'device' else 'an availability'} trace")
    return found, data  # type: ignore[return-value]


def read_device(path: str | Path) -> dict[int, dict[str, float]]:
    """Read a device-capacity trace (CSV or FedScale pickle).

    Args:
        path: the file.

    Returns:
        {client: {"computation": ms/sample, "communication": kbit/s}} in file order.
    """
    return read(path, "device")[1]


def read_behave(path: str | Path) -> dict[Any, dict[str, Any]]:
    """Read an availability trace (JSONL or FedScale pickle).

    Args:
        path: the file.

    Returns:
        {client: {"active", "inactive", "finish_time", ...}} in file order.
    """
    return read(path, "behave")[1]


def convert(src: str | Path, dst: str | Path, kind: Kind | None = None) -> Kind:
    """Convert a trace between FedScale's pickle and fedsim's plain schema (either way).

    The destination's suffix picks its format: `.csv` (devices) or `.jsonl` (availability) for
    the plain schema, anything else a pickle of plain dicts that FedScale reads as it is.

    Args:
        src: the trace to read (see `read`).
        dst: the file to write.
        kind: `device` or `behave` (None: detected from the content).

    Returns:
        The kind of trace converted.

    Raises:
        ValueError: one line, for a bad source or a destination suffix of the other kind.
    """
    found, data = read(src, kind)
    d = Path(dst)
    suffix = d.suffix.lower()
    other = PLAIN_SUFFIX["behave" if found == "device" else "device"]
    if suffix == other:
        raise ValueError(f"{d}: a {found} trace is written as {PLAIN_SUFFIX[found]} (plain) or a pickle, "
                         f"not {other}")
    try:
        if suffix == PLAIN_SUFFIX[found]:
            d.write_text(device_csv(data) if found == "device" else behave_jsonl(data), encoding="utf-8")
        else:
            d.write_bytes(pickle.dumps(data, protocol=4))
    except OSError as exc:
        raise ValueError(f"cannot write {d}: {exc.strerror or exc}") from None
    return found


# --- which trace entry each fedsim client gets ------------------------------------------------


def map_clients(num_clients: int, num_entries: int, mapping: TraceMapping,
                rng: np.random.Generator | None) -> np.ndarray:
    """The trace entry (0-based position in file order) of each fedsim client.

    `fedscale`: fedsim client k is FedScale's client id k + 1 (FedScale numbers clients from 1,
    aggregator.py `client_register_handler`), and FedScale gives id c the availability entry at
    position c mod L (client_manager.py `register_client`: `user_trace_keys[int(client_id) %
    len(self.user_trace)]`). For device profiles FedScale looks up the *key* c mod L instead
    (see `device_profiles`). `order`: client k gets entry k mod L. `sample`: each client gets an
    entry drawn uniformly (with replacement) from `rng`, once.

    Args:
        num_clients: N.
        num_entries: L, the number of entries in the trace.
        mapping: `fedscale`, `order` or `sample`.
        rng: the stream for `sample` (unused otherwise).

    Returns:
        (N,) int64 positions in 0..L-1.
    """
    k = np.arange(num_clients, dtype=np.int64)
    if mapping == "fedscale":
        return (k + 1) % num_entries
    if mapping == "order":
        return k % num_entries
    assert rng is not None, "mapping 'sample' needs a random stream"
    return rng.integers(0, num_entries, size=num_clients, dtype=np.int64)


def device_profiles(data: dict[int, dict[str, float]], num_clients: int, mapping: TraceMapping,
                    rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """Each fedsim client's compute speed (ms per sample) and bandwidth (kbit/s).

    With `fedscale` mapping FedScale's lookup is reproduced exactly: client id c = k + 1 gets
    the profile whose key is c mod L, and a key the file lacks gives FedScale's default of 1 ms
    per sample and 1 kbit/s (aggregator.py `client_register_handler`, `mapped_id`). With keys
    1..L, as FedScale's ids are, the client whose id is a multiple of L gets that default.

    Args:
        data: the device trace (see `read_device`).
        num_clients: N.
        mapping: `fedscale` (by key), `order` or `sample` (by position, see `map_clients`).
        rng: the stream for `sample`.

    Returns:
        (ms per sample (N,), kbit/s (N,)) as float64.
    """
    if mapping == "fedscale":
        n = len(data)
        entries = [data.get((k + 1) % n, FEDSCALE_DEFAULT_DEVICE) for k in range(num_clients)]
    else:
        values = list(data.values())
        entries = [values[i] for i in map_clients(num_clients, len(values), mapping, rng)]
    ms = np.array([float(e["computation"]) for e in entries], dtype=np.float64)
    kbps = np.array([float(e["communication"]) for e in entries], dtype=np.float64)
    return ms, kbps


def completion_time(ms_per_sample: float, kbps: float, batch_size: int, local_steps: int, model_kbit: float,
                    augmentation_factor: float = 3.0) -> tuple[float, float]:
    """FedScale's job time of one client: (computation, communication) in seconds.

    computation = augmentation_factor · batch_size · local_steps · ms_per_sample / 1000 (forward
    latency plus about twice that for the backward pass), communication = (upload + download)
    / bandwidth with both sizes the model's size in kbit (client_metadata.py
    `ClientMetadata.get_completion_time`). fedsim's system model does the same arithmetic per
    client (fedsim.world.system); this function states it once, for tests and users.

    Args:
        ms_per_sample: the device's `computation`.
        kbps: the device's `communication`.
        batch_size: B.
        local_steps: local steps per job.
        model_kbit: model size in kbit (FedScale: bytes / 1024 · 8).
        augmentation_factor: FedScale's 3.

    Returns:
        (computation seconds, communication seconds).
    """
    return (augmentation_factor * batch_size * local_steps * float(ms_per_sample) / 1000.0,
            (model_kbit + model_kbit) / float(kbps))


def behave_arrays(data: dict[Any, dict[str, Any]], num_clients: int, mapping: TraceMapping,
                  rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every fedsim client's availability intervals, flattened for vectorised look-ups.

    Args:
        data: the availability trace (see `read_behave`).
        num_clients: N.
        mapping: see `map_clients`.
        rng: the stream for `sample`.

    Returns:
        (finish_time (N,), owner (M,), active (M,), inactive (M,)): interval j belongs to
        client owner[j]; M is the total number of intervals over the N clients.
    """
    entries = list(data.values())
    pos = map_clients(num_clients, len(entries), mapping, rng)
    finish = np.array([float(entries[i]["finish_time"]) for i in pos], dtype=np.float64)
    lengths = np.array([len(entries[i]["active"]) for i in range(len(entries))], dtype=np.int64)
    act = [np.asarray(e["active"], dtype=np.float64) for e in entries]
    ina = [np.asarray(e["inactive"], dtype=np.float64) for e in entries]
    owner = np.repeat(np.arange(num_clients, dtype=np.int64), lengths[pos])
    active = np.concatenate([act[i] for i in pos]) if num_clients else np.zeros(0)
    inactive = np.concatenate([ina[i] for i in pos]) if num_clients else np.zeros(0)
    return finish, owner, active, inactive


# --- cached reads for the scenario plugins ------------------------------------------------------

_CACHE: dict[tuple[str, int, int, str], dict] = {}


def cached(path: str | Path, kind: Kind) -> dict:
    """`read(path, kind)`, remembered while the file is unchanged (validation, then the run).

    Args:
        path: the trace file.
        kind: `device` or `behave`.

    Returns:
        The trace's dict (shared: do not modify it).

    Raises:
        ValueError: one line naming the file.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ValueError(f"trace file not found: {p}") from None
    except OSError as exc:
        raise ValueError(f"trace file {p}: cannot read ({exc.strerror or exc})") from None
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size, kind)
    if key not in _CACHE:
        if len(_CACHE) > 16:
            _CACHE.clear()
        _CACHE[key] = read(p, kind)[1]
    return _CACHE[key]
