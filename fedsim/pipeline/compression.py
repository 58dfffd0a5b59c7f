"""Compressed uploads with error feedback: compressors, their wire sizes and the per-client memory.

The `compression:` block chooses one compressor C (a plugin, `none` by default). An honest
client compresses what it sends before it leaves the device, so the engine applies this
stage in `Engine.accept` before injected faults, validation and uplink noise
(docs/explanation-architecture.md, "The server pipeline"). The server receives C(x) as a
dense float32 vector; the strategy runs unchanged on it.

Error feedback (`error_feedback: ef`; Seide, Fu, Droppo, Li, Yu, "1-Bit Stochastic Gradient
Descent and its Application to Data-Parallel Distributed Training of Speech DNNs",
Interspeech 2014; Stich, Cordonnier, Jaggi, "Sparsified SGD with Memory", NeurIPS 2018,
Alg. 1; Karimireddy, Rebjock, Stich, Jaggi, "Error Feedback Fixes SignSGD and other
Gradient Compression Schemes", ICML 2019, Alg. 2 (EF-SGD)): client i keeps a memory e_i
(zero at first) and, for its update Δ,

    p = Δ + e_i,    sends C(p),    e_i ← p − C(p).

The engine keeps e_i (executors may run a client anywhere), saves it in checkpoints and
updates it whenever the client computed its update — also when the upload is then lost in
the channel or rejected by the server. Every ndarray field of the strategy's up message
(SCAFFOLD's Δc_i) is compressed the same way, with its own memory; scalar fields travel as
they are.

EF21 (`error_feedback: ef21`; Richtárik, Sokolov, Fatkhullin, "EF21: A New, Simpler,
Theoretically Better, and Practically Faster Error Feedback", NeurIPS 2021, Alg. 1): client i
and the server both keep g_i (zero at first); the client sends c = C(Δ − g_i), both set
g_i ← g_i + c, and the strategy receives g_i, the server's running estimate of the client's
update. Only the clients that take part move their g_i (partial participation, as in the
paper's extension).

Strategies that send whole models (`sends = "model"`, the ADMMs) are refused
at load time (fedsim.scenario.schema).

Wire format (what `nbytes(d)` counts for one vector of d float32 values, and what drives
the upload time on the virtual clock; the sizes depend on d only, so the system model knows
them at dispatch):

* `topk`: k values (float32) and k indices of ⌈log₂ d⌉ bits each, bit-packed:
  ⌈k·(32 + ⌈log₂ d⌉)/8⌉ bytes.
* `randomk`: k float32 values and the 8-byte seed of the index set (the server draws the
  same k indices from it): 4k + 8 bytes.
* `qsgd`: the norm (float32) and per coordinate one sign bit and the level 0..s in
  ⌈log₂(s+1)⌉ bits, fixed-length codes (no Elias coding): 4 + ⌈d·(1 + ⌈log₂(s+1)⌉)/8⌉ bytes.
* `sign`: one bit per coordinate and the scale (float32): ⌈d/8⌉ + 4 bytes.
* `quantize`: d codes of `bits` bits and the offset and step (float32 each): d·bits/8 + 8 bytes.

Downlink (`downlink: true`): the server keeps, per client, the model x̂_i that client holds
(the initial model until its first download) and sends C(x − x̂_i); the client trains from
x̂_i ← x̂_i + C(x − x̂_i). What a download leaves out stays in x − x̂_i and is sent later, so
no separate memory is needed. The download then takes `nbytes(d)` bytes (`bytes_down`, the
clock); the strategy's down message (SCAFFOLD's c) travels uncompressed, as before.

Random draws (random-k's index set, QSGD's rounding) come from the stream
`seeding.rng(root, "compression", client, dispatch, field)` (field 0 = the vector, 1, 2, ...
= the up message's ndarray fields in declaration order; the download uses the key
(client, dispatch, 0, 1)), never from arrival order.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np

from fedsim import seeding
from fedsim.scenario.fields import bounded
from fedsim.types import ClientUpdate

Feedback = Literal["none", "ef", "ef21"]


def index_bits(d: int) -> int:
    """⌈log₂ d⌉ (at least 1): the bits of one coordinate index of a d-vector.

    Args:
        d: the vector's length (≥ 1).

    Returns:
        The number of bits that can hold every index 0..d−1.
    """
    return max(1, (d - 1).bit_length())


def _k_of(k: int | None, fraction: float, d: int) -> int:
    """The number of kept coordinates: `k`, else ⌈fraction·d⌉, within 1..d."""
    if k is None:
        k = math.ceil(fraction * d - 1e-9)  # 0.07·100 is 7.000000000000001 in floats, not 8
    return min(max(int(k), 1), d)


@dataclass(frozen=True, kw_only=True)
class NoCompression:
    """Send the update as it is (default): no arithmetic at all, runs are bit-identical."""

    identity: ClassVar[bool] = True


@dataclass(frozen=True, kw_only=True)
class TopK:
    """Keep the k coordinates of largest magnitude, zero the rest (biased; use error feedback).

    Ties are broken by the lower index. Stich, Cordonnier, Jaggi, "Sparsified SGD with
    Memory", NeurIPS 2018 (top-k with memory, Alg. 1).

    Args:
        fraction: k = ⌈fraction·d⌉ when `k` is unset (0.01 = top-1%).
        k: the number of coordinates kept (overrides `fraction`; at most d).
        error_feedback: `ef` keeps the per-client memory e ← p − C(p); `ef21` sends C(Δ − g) and
            both sides move g ← g + C(Δ − g); `none` sends C(Δ).
        downlink: also compress the model broadcast: the client receives x̂ + C(x − x̂), where x̂
            is the model it holds (docs/compression.md, "Downlink").
    """

    fraction: float = bounded(0.01, gt=0.0, le=1.0)
    k: int | None = bounded(None, ge=1, le=10_000_000_000)
    error_feedback: Feedback = "none"
    downlink: bool = False
    identity: ClassVar[bool] = False
    randomized: ClassVar[bool] = False

    def kept(self, d: int) -> int:
        """The number of coordinates kept of a d-vector."""
        return _k_of(self.k, self.fraction, d)

    def compress(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """C(x): x on its k largest-|x_j| coordinates, 0 elsewhere.

        Args:
            x: the (d,) vector.
            rng: unused (top-k is deterministic).

        Returns:
            The (d,) float32 compressed vector.
        """
        k = self.kept(x.size)
        idx = np.argsort(-np.abs(x), kind="stable")[:k]
        out = np.zeros(x.size, dtype=np.float32)
        out[idx] = x[idx]
        return out

    def nbytes(self, d: int) -> int:
        """Wire size of C(x) for a d-vector: ⌈k·(32 + ⌈log₂ d⌉)/8⌉ bytes."""
        return math.ceil(self.kept(d) * (32 + index_bits(d)) / 8)


@dataclass(frozen=True, kw_only=True)
class RandomK:
    """Keep k coordinates drawn uniformly without replacement; optionally scaled by d/k.

    With `scaled: true` (default) C(x) = (d/k)·x on the drawn set, which is unbiased:
    each coordinate is kept with probability k/d, so E[C(x)] = x (Stich, Cordonnier,
    Jaggi, NeurIPS 2018, rand-k; Wangni, Wang, Liu, Zhang, "Gradient Sparsification for
    Communication-Efficient Distributed Optimization", NeurIPS 2018). With `scaled: false`
    the kept values are sent as they are (biased, contractive: the form used with memory).

    Args:
        fraction: k = ⌈fraction·d⌉ when `k` is unset.
        k: the number of coordinates kept (overrides `fraction`; at most d).
        scaled: multiply the kept values by d/k (unbiased) or not.
        error_feedback: `ef` keeps the per-client memory e ← p − C(p); `ef21` sends C(Δ − g) and
            both sides move g ← g + C(Δ − g); `none` sends C(Δ).
        downlink: also compress the model broadcast: the client receives x̂ + C(x − x̂), where x̂
            is the model it holds (docs/compression.md, "Downlink").
    """

    fraction: float = bounded(0.01, gt=0.0, le=1.0)
    k: int | None = bounded(None, ge=1, le=10_000_000_000)
    scaled: bool = True
    error_feedback: Feedback = "none"
    downlink: bool = False
    identity: ClassVar[bool] = False
    randomized: ClassVar[bool] = True

    def kept(self, d: int) -> int:
        """The number of coordinates kept of a d-vector."""
        return _k_of(self.k, self.fraction, d)

    def compress(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """C(x): x (times d/k when scaled) on k indices drawn with `rng.choice(d, k, replace=False)`.

        Args:
            x: the (d,) vector.
            rng: the job's compression stream (required).

        Returns:
            The (d,) float32 compressed vector.
        """
        assert rng is not None, "random-k needs the job's compression stream"
        d = x.size
        k = self.kept(d)
        idx = rng.choice(d, size=k, replace=False)
        out = np.zeros(d, dtype=np.float32)
        scale = d / k if self.scaled else 1.0
        out[idx] = (x[idx].astype(np.float64) * scale).astype(np.float32)
        return out

    def nbytes(self, d: int) -> int:
        """Wire size of C(x) for a d-vector: 4k value bytes + the 8-byte seed of the index set."""
        return 4 * self.kept(d) + 8


@dataclass(frozen=True, kw_only=True)
class QSGD:
    """QSGD: stochastic rounding of |x_j|/‖x‖₂ to s levels; unbiased.

    Alistarh, Grubic, Li, Tomioka, Vojnovic, "QSGD: Communication-Efficient SGD via Gradient
    Quantization and Encoding", NeurIPS 2017, Sec. 3.1: Q_s(x)_j = ‖x‖₂ · sgn(x_j) · ξ_j/s,
    where with r = s·|x_j|/‖x‖₂ and l = ⌊r⌋, ξ_j = l + 1 with probability r − l and l
    otherwise (so E[ξ_j] = r and E[Q_s(x)] = x). Fixed-length codes, no Elias coding.

    Args:
        levels: s, the number of quantisation levels (s = 1: ternary {−‖x‖, 0, ‖x‖}).
        error_feedback: `ef` keeps the per-client memory e ← p − C(p); `ef21` sends C(Δ − g) and
            both sides move g ← g + C(Δ − g); `none` sends C(Δ).
        downlink: also compress the model broadcast: the client receives x̂ + C(x − x̂), where x̂
            is the model it holds (docs/compression.md, "Downlink").
    """

    levels: int = bounded(4, ge=1, le=65_535)
    error_feedback: Feedback = "none"
    downlink: bool = False
    identity: ClassVar[bool] = False
    randomized: ClassVar[bool] = True

    def compress(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Q_s(x), with the rounding draws u_j = `rng.random(d)` (ξ_j = l + [u_j < r − l]).

        Args:
            x: the (d,) vector.
            rng: the job's compression stream (required).

        Returns:
            The (d,) float32 quantised vector (zero when x = 0).
        """
        assert rng is not None, "QSGD needs the job's compression stream"
        v = x.astype(np.float64)
        u = rng.random(v.size)  # drawn even for x = 0, so the stream's use does not depend on x
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            return np.zeros(v.size, dtype=np.float32)
        r = np.abs(v) / norm * self.levels
        low = np.floor(r)
        xi = low + (u < r - low)
        return (norm * np.sign(v) * xi / self.levels).astype(np.float32)

    def nbytes(self, d: int) -> int:
        """Wire size for a d-vector: 4 (norm) + ⌈d·(1 + ⌈log₂(s+1)⌉)/8⌉ bytes."""
        return 4 + math.ceil(d * (1 + int(self.levels).bit_length()) / 8)


@dataclass(frozen=True, kw_only=True)
class Sign:
    """Scaled sign (1 bit per coordinate): C(x) = (‖x‖₁/d) · sign(x), with sign(0) = +1.

    Karimireddy, Rebjock, Stich, Jaggi, "Error Feedback Fixes SignSGD and other Gradient
    Compression Schemes", ICML 2019, Alg. 2 (EF-SignSGD's compressor ‖p‖₁/d · sign(p));
    with `error_feedback: ef` it is their EF-SignSGD. One bit cannot say 0, so 0 is sent as +.

    Args:
        error_feedback: `ef` keeps the per-client memory e ← p − C(p); `ef21` sends C(Δ − g) and
            both sides move g ← g + C(Δ − g); `none` sends C(Δ).
        downlink: also compress the model broadcast: the client receives x̂ + C(x − x̂), where x̂
            is the model it holds (docs/compression.md, "Downlink").
    """

    error_feedback: Feedback = "none"
    downlink: bool = False
    identity: ClassVar[bool] = False
    randomized: ClassVar[bool] = False

    def compress(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """(‖x‖₁/d) · sign(x).

        Args:
            x: the (d,) vector.
            rng: unused (deterministic).

        Returns:
            The (d,) float32 compressed vector.
        """
        v = x.astype(np.float64)
        scale = float(np.abs(v).sum()) / v.size
        return np.where(v >= 0, scale, -scale).astype(np.float32)

    def nbytes(self, d: int) -> int:
        """Wire size for a d-vector: ⌈d/8⌉ sign bytes + 4 (the scale)."""
        return math.ceil(d / 8) + 4


@dataclass(frozen=True, kw_only=True)
class Quantize:
    """Uniform 8- or 16-bit quantisation between the vector's min and max, nearest rounding.

    With lo = min x, step = (max x − lo)/(2^bits − 1): q_j = round((x_j − lo)/step) and the
    server reads lo + q_j·step (deterministic and biased by at most step/2 per coordinate; a
    constant vector is sent exactly).

    Args:
        bits: 8 or 16 bits per coordinate.
        error_feedback: `ef` keeps the per-client memory e ← p − C(p); `ef21` sends C(Δ − g) and
            both sides move g ← g + C(Δ − g); `none` sends C(Δ).
        downlink: also compress the model broadcast: the client receives x̂ + C(x − x̂), where x̂
            is the model it holds (docs/compression.md, "Downlink").
    """

    bits: Literal[8, 16] = 8
    error_feedback: Feedback = "none"
    downlink: bool = False
    identity: ClassVar[bool] = False
    randomized: ClassVar[bool] = False

    def compress(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Dequantise: lo + round((x − lo)/step)·step, computed in float64 (numpy's round: halves to even).

        Args:
            x: the (d,) vector.
            rng: unused (deterministic).

        Returns:
            The (d,) float32 dequantised vector.
        """
        v = x.astype(np.float64)
        lo, hi = float(v.min()), float(v.max())
        if hi == lo:
            return np.full(v.size, lo, dtype=np.float32)
        step = (hi - lo) / (2 ** self.bits - 1)
        return (lo + np.rint((v - lo) / step) * step).astype(np.float32)

    def nbytes(self, d: int) -> int:
        """Wire size for a d-vector: d·bits/8 + 8 (offset and step, float32 each)."""
        return d * self.bits // 8 + 8


def is_identity(cfg: Any) -> bool:
    """Whether the `compression:` block sends updates unchanged (`none`, or the block is absent)."""
    return cfg is None or getattr(type(cfg), "identity", False)


def array_fields(up_type: type | None) -> tuple[str, ...]:
    """The fields of an up-message type annotated as numpy arrays, in declaration order.

    Args:
        up_type: the strategy's declared `up_type` (a dataclass), or None.

    Returns:
        Their names (empty without an up message).
    """
    if up_type is None or not dataclasses.is_dataclass(up_type):
        return ()
    try:
        hints = typing.get_type_hints(up_type)
    except Exception:  # unresolvable annotations: fall back to what the fields say literally
        hints = {f.name: f.type for f in dataclasses.fields(up_type)}
    return tuple(f.name for f in dataclasses.fields(up_type)
                 if hints.get(f.name) is np.ndarray or hints.get(f.name) in ("np.ndarray", "numpy.ndarray"))


class CompressionStage:
    """The engine-owned client stage: compresses each update and keeps every client's memory.

    Args:
        cfg: the `compression:` block (not `none`).
        root: the run's root seed.
        size: d, the model size.
        up_type: the strategy's up-message type (its ndarray fields are compressed too).

    Attributes:
        memory: client → {"vector" or up field name: e_i (`ef`) or g_i (`ef21`)} (float32); with
            `downlink`, also {"<model>": x̂_i}, the model the client holds. Saved in checkpoints
            (fedsim.engine.checkpoint).
        upload_bytes: the wire size of one upload (vector and up-message arrays), known at dispatch.
        download_bytes: the wire size of one compressed download, or None (`downlink` off).
    """

    def __init__(self, cfg: Any, root: int, size: int, up_type: type | None = None,
                 initial: np.ndarray | None = None):
        self.cfg = cfg
        self.root = int(root)
        self.size = int(size)
        self.fields = array_fields(up_type)
        self.mode = getattr(cfg, "error_feedback", "none")  # none | ef | ef21
        self.feedback = self.mode != "none"
        self.memory: dict[int, dict[str, np.ndarray]] = {}
        self.upload_bytes = int(cfg.nbytes(self.size)) * (1 + len(self.fields))
        self.downlink = bool(getattr(cfg, "downlink", False))
        self.download_bytes = int(cfg.nbytes(self.size)) if self.downlink else None
        # what every client holds before its first download (it knows the initial model)
        self.initial = None if initial is None or not self.downlink else np.array(initial, dtype=np.float32)

    def download(self, params: np.ndarray, client: int, dispatch: int) -> np.ndarray:
        """The model client `client` holds after job `dispatch`'s compressed download: x̂ + C(x − x̂).

        Args:
            params: x, the server's current model.
            client: the receiving client.
            dispatch: the job's dispatch index (keys the random draws).

        Returns:
            The client's new model x̂ (float32), also remembered for its next download.
        """
        held = self.memory.get(client, {}).get("<model>")
        base = self.initial if held is None else held
        if base is None:
            base = np.zeros(self.size, dtype=np.float32)
        rng = seeding.rng(self.root, "compression", client, dispatch, 0, 1) if self.cfg.randomized else None
        diff = (np.asarray(params, dtype=np.float32) - base).astype(np.float32)
        new = (base + np.asarray(self.cfg.compress(diff, rng), dtype=np.float32)).astype(np.float32)
        self.memory.setdefault(client, {})["<model>"] = new
        return new

    @property
    def stateful(self) -> bool:
        """Whether clients keep state of their own (the error-feedback memory)."""
        return self.feedback

    def _sendable(self, update: Any) -> bool:
        """Whether `update` is a well-formed finite delta (else it is passed on for validation to reject)."""
        if not isinstance(update, ClientUpdate) or update.kind != "delta":
            return False
        arrays = [update.vector] + [getattr(update.up, f, None) for f in self.fields]
        return all(isinstance(a, np.ndarray) and a.shape == (self.size,) and np.issubdtype(a.dtype, np.floating)
                   and bool(np.all(np.isfinite(a))) for a in arrays)

    def _one(self, key: str, x: np.ndarray, client: int, dispatch: int, field: int) -> np.ndarray:
        """Compress one vector of client `client`'s job `dispatch`, with error feedback when on."""
        rng = seeding.rng(self.root, "compression", client, dispatch, field) if self.cfg.randomized else None
        if self.mode == "ef21":  # send C(Δ − g_i); client and server both move g_i by what was sent
            g = self.memory.get(client, {}).get(key)
            g = np.zeros(self.size, dtype=np.float32) if g is None else g
            sent = np.asarray(self.cfg.compress((x.astype(np.float32) - g).astype(np.float32), rng),
                              dtype=np.float32)
            self.memory.setdefault(client, {})[key] = (g + sent).astype(np.float32)
            return sent
        p = x.astype(np.float32)
        if self.feedback:
            e = self.memory.get(client, {}).get(key)
            if e is not None:
                p = p + e
        c = np.asarray(self.cfg.compress(p, rng), dtype=np.float32)
        if self.feedback:
            self.memory.setdefault(client, {})[key] = p - c
        return c

    def receive(self, update: ClientUpdate, client: int) -> ClientUpdate:
        """The server's decoding of an accepted update: with `ef21`, g_i ← g_i + c, and g_i goes on.

        The server keeps its own copy of each g_i, moved only by what it accepted, so an upload
        lost in the channel or rejected leaves the two copies apart, as it would in a real
        deployment. Without `ef21` the update is returned as it is.

        Args:
            update: the validated update as received (the compressed c, after uplink noise).
            client: the sender.

        Returns:
            The update the strategy sees.
        """
        if self.mode != "ef21":
            return update
        mem = self.memory.setdefault(client, {})

        def decode(key: str, c: np.ndarray) -> np.ndarray:
            g = mem.get("server:" + key)
            g = (np.asarray(c, dtype=np.float32) if g is None else g + np.asarray(c, dtype=np.float32))
            mem["server:" + key] = g.astype(np.float32)
            return mem["server:" + key]

        up = update.up
        if self.fields:
            up = replace(up, **{f: decode(f, getattr(up, f)) for f in self.fields})
        return replace(update, vector=decode("vector", update.vector), up=up)

    def apply(self, update: Any, client: int, dispatch: int) -> Any:
        """What the client sends: its update with the vector and up-message arrays compressed.

        A malformed or non-finite update is returned unchanged (validation rejects it) and
        leaves the memory alone, so one broken job cannot poison a client's memory.

        Args:
            update: the client's update as trained.
            client: the client.
            dispatch: the job's dispatch index (keys the random draws).

        Returns:
            The compressed update (dense float32 vectors, as the server decodes them).
        """
        if not self._sendable(update):
            return update
        vector = self._one("vector", update.vector, client, dispatch, 0)
        up = update.up
        if self.fields:
            up = replace(up, **{f: self._one(f, getattr(up, f), client, dispatch, i + 1)
                                for i, f in enumerate(self.fields)})
        return replace(update, vector=vector, up=up)
