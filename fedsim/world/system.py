"""How long a client job takes in virtual seconds, and whether it drops out.

duration = τ_c · work · jitter  +  2 · (model bytes · 8 / bandwidth + latency)

(with compression the upload term uses the compressed size instead: `duration(up_bytes=...)`)

τ_c is the client's compute time per unit of work, drawn once per client from a
`compute` plugin (constant, lognormal, exponential, uniform, linear_spread = FedFix's
F-X scenario, per_client = times given per client or group); work is the job's number of
local steps (`time_per: step`) or 1 (`time_per: job`, Fraboni's time units). Channel
noise lives in fedsim.world.channel.

A FedScale device trace (`fedscale_trace`, docs/traces.md) gives each client its own compute
speed and bandwidth instead: τ_c = 3 · ms_per_sample / 1000 · batch_size per step and
model bytes · 8 / 1024 / kbit_per_s each way (FedScale's units).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedsim.errors import ConfigError
from fedsim.scenario.fields import bounded
from fedsim.scenario.schema import SystemConfig
from fedsim.world import traces


@dataclass(frozen=True, kw_only=True)
class Constant:
    """τ_c = time for every client."""

    time: float = bounded(1.0, gt=0.0, le=1e12)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Return (n,) compute times, all equal to `time`; `rng` is unused."""
        return np.full(n, self.time)


@dataclass(frozen=True, kw_only=True)
class LogNormal:
    """τ_c lognormal with the given mean and log-space sigma."""

    mean: float = bounded(1.0, gt=0.0, le=1e12)
    sigma: float = bounded(0.5, ge=0.0, le=10.0)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Return (n,) lognormal compute times whose arithmetic mean is `mean`."""
        return rng.lognormal(np.log(self.mean) - self.sigma**2 / 2, self.sigma, size=n)


@dataclass(frozen=True, kw_only=True)
class Exponential:
    """τ_c ~ Exp(mean)."""

    mean: float = bounded(1.0, gt=0.0, le=1e12)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Return (n,) exponential compute times, floored at 1e-9 so none is zero."""
        return np.maximum(rng.exponential(self.mean, size=n), 1e-9)


@dataclass(frozen=True, kw_only=True)
class UniformCompute:
    """τ_c ~ U(low, high)."""

    low: float = bounded(0.5, gt=0.0, le=1e12)
    high: float = bounded(1.5, gt=0.0, le=1e12)

    def validate(self) -> None:
        """Reject an empty interval.

        Raises:
            ValueError: if `low > high`.
        """
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Return (n,) compute times drawn i.i.d. from U(low, high)."""
        return rng.uniform(self.low, self.high, size=n)


@dataclass(frozen=True, kw_only=True)
class LinearSpread:
    """FedFix's F-X scenario: τ_i = slowest · (1 − (X/100) · i/(N−1)), deterministic.

    Client 0 is the slowest; F-80 makes the fastest client 5x faster. No randomness.

    Args:
        spread: X in percent (0 = homogeneous).  slowest: τ of client 0.

    References:
        Y. Fraboni, R. Vidal, L. Kameni and M. Lorenzi, "A General Theory for Federated
        Optimization with Asynchronous and Heterogeneous Clients Updates", JMLR 24 (2023), experiments
        (time scenarios F-0 and F-80); official code Accenture/Labs-Federated-Learning, branch
        `asynchronous_FL`, `FL/clients_schedule.py` (`--time_scenario F-X`).
    """

    spread: float = bounded(80.0, ge=0.0, lt=100.0)
    slowest: float = bounded(1.0, gt=0.0, le=1e12)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Return (n,) compute times, linearly from `slowest` (client 0) down; `rng` is unused."""
        # Same float operations, in the same order, as Fraboni et al.'s `get_tau_i`
        # (1 - i * X / 100 / (M - 1)), so schedules match theirs bit for bit from step 0.
        i = np.arange(n, dtype=np.float64)
        return self.slowest * (1.0 - i * self.spread / 100.0 / max(n - 1, 1))



@dataclass(frozen=True, kw_only=True)
class PerClient:
    """Given per-client compute times, one per client or one per group of consecutive clients.

    For the bias experiments of asynchronous FL (Fraboni et al., JMLR 2023), where chosen
    clients are slow: `{name: per_client, times: [1.0, 0.2], sizes: [5, 5]}` makes clients
    0-4 take 1.0 and clients 5-9 take 0.2; without `sizes`, `times` lists every client's time.
    No randomness.

    Args:
        times: compute time per client, or per group when `sizes` is set.
        sizes: clients per group, in client order (unset: one time per client).
    """

    times: tuple[float, ...] = (1.0,)
    sizes: tuple[int, ...] | None = None

    def validate(self) -> None:
        """Refuse non-positive times and mismatched groups.

        Raises:
            ValueError: if a time is not > 0, or `sizes` and `times` differ in length.
        """
        if not self.times or min(self.times) <= 0:
            raise ValueError("times: every compute time must be > 0")
        if self.sizes is not None and (len(self.sizes) != len(self.times) or min(self.sizes) < 1):
            raise ValueError(f"sizes: one positive group size per time ({len(self.times)} times)")

    def check_clients(self, num_clients: int) -> list[str]:
        """Problems with `num_clients` registered clients, found before any data is built."""
        count = len(self.times) if self.sizes is None else sum(self.sizes)
        key = "times" if self.sizes is None else "sizes"
        return [] if count == num_clients else [f"{key}: give {count} clients, not data.num_clients ({num_clients})"]

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Return (n,) compute times as given; `rng` is unused."""
        problems = self.check_clients(n)
        if problems:
            raise ValueError(problems[0])
        t = np.asarray(self.times, dtype=np.float64)
        return t.copy() if self.sizes is None else np.repeat(t, self.sizes)


@dataclass(frozen=True, kw_only=True)
class FedScaleDevices:
    """Per-client compute speed and bandwidth from a FedScale device trace (docs/traces.md).

    The file is fedsim's device CSV (client,compute_ms_per_sample,bandwidth_kbps) or FedScale's
    `client_device_capacity` pickle (read safely). As in FedScale (client_metadata.py
    `ClientMetadata.get_completion_time`), a job computes for augmentation_factor · batch_size ·
    local_steps · ms_per_sample / 1000 seconds and communicates (download + upload) model_kbit /
    kbit_per_s each way, with the model's size in kbit = bytes · 8 / 1024 (FedScale's
    aggregator.py measures `sys.getsizeof(pickle.dumps(model)) / 1024 * 8`; fedsim counts the
    parameters' bytes). Needs `system.time_per: step` and no `system.bandwidth_mbps`.

    Args:
        path: the device trace (relative paths are resolved against the scenario file's folder).
        mapping: which trace entry each client gets: `fedscale` (client k is FedScale's id k + 1
            and gets the entry with key (k + 1) mod L, or FedScale's default of 1 ms/sample and
            1 kbit/s when no entry has that key), `order` (the (k mod L)-th entry in file order)
            or `sample` (uniform draws, once, from the run's system stream).
        augmentation_factor: FedScale's 3: the backward pass costs about twice the forward
            latency the trace measured.

    Example:
        system: {compute: {name: fedscale_trace, path: devices.csv}}
    """

    path: str
    mapping: Literal["fedscale", "order", "sample"] = "fedscale"
    augmentation_factor: float = bounded(3.0, gt=0.0, le=1e6)
    gives_bandwidth = True  # class attribute: SystemModel takes each client's bandwidth from `profiles`

    def validate(self) -> None:
        """Read and check the trace file now, so that a bad file stops before any data loads.

        Raises:
            ConfigError: for `path`, one line naming the file (and the row of a bad CSV line).
        """
        try:
            traces.cached(self.path, "device")
        except ValueError as exc:
            raise ConfigError("path", str(exc)) from None

    def profiles(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Each client's compute seconds per sample and bandwidth in kbit/s.

        Args:
            n: number of clients.
            rng: the stream for `mapping: sample` (unused otherwise).

        Returns:
            ((n,) augmentation_factor · ms_per_sample / 1000, (n,) kbit/s).
        """
        ms, kbps = traces.device_profiles(traces.cached(self.path, "device"), n, self.mapping, rng)
        return self.augmentation_factor * ms / 1000.0, kbps

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Return (n,) compute seconds per sample (the system model multiplies by the batch size)."""
        return self.profiles(n, rng)[0]


class SystemModel:
    """Per-run system model: fixed per-client speeds, per-job draws from job-keyed streams.

    Args:
        cfg: the scenario's `system:` block.
        num_clients: N; one compute time τ_c is drawn per client.
        model_bytes: size of one model message, for the bandwidth term.
        speed_rng: stream for the per-client compute times (drawn once, here).
    """

    def __init__(self, cfg: SystemConfig, num_clients: int, model_bytes: int, speed_rng: np.random.Generator,
                 batch_size: int = 1):
        self.cfg = cfg
        self.model_bytes = model_bytes
        self.link = None  # per-client one-way transfer seconds, when a device trace gives bandwidths
        self.kbps = None  # the trace's per-client kbit/s (FedScale's units: 1 kbit = 1024 bits)
        if getattr(type(cfg.compute), "gives_bandwidth", False):  # FedScale trace: per sample, kbit/s
            per_sample, kbps = cfg.compute.profiles(num_clients, speed_rng)
            self.tau = np.asarray(per_sample, dtype=np.float64) * batch_size
            self.kbps = np.asarray(kbps, dtype=np.float64)
            self.link = model_bytes * 8 / 1024 / self.kbps
        else:
            self.tau = np.asarray(cfg.compute.draw(num_clients, speed_rng), dtype=np.float64)
        comm = 0.0
        if cfg.bandwidth_mbps:
            comm += model_bytes * 8 / (cfg.bandwidth_mbps * 1e6)
        self.comm = 2 * (comm + cfg.latency)  # download + upload

    def link_time(self, nbytes: int, client: int | None = None) -> float:
        """Virtual seconds to move `nbytes` over one link: nbytes·8/bandwidth + latency.

        Args:
            nbytes: the message size in bytes.
            client: whose link, when a device trace gives each client its own bandwidth.

        Returns:
            The one-way transfer time (latency only when no bandwidth is set).
        """
        if self.kbps is not None and client is not None:
            return nbytes * 8 / 1024 / float(self.kbps[client]) + self.cfg.latency
        comm = nbytes * 8 / (self.cfg.bandwidth_mbps * 1e6) if self.cfg.bandwidth_mbps else 0.0
        return comm + self.cfg.latency

    def duration(self, client: int, work: int, rng: np.random.Generator, up_bytes: int | None = None,
                 down_bytes: int | None = None) -> tuple[float, float, bool]:
        """Draw one job's timing and dropout.

        Without `up_bytes`/`down_bytes` both links carry one model (the symmetric formula of
        the module docstring, bit for bit); with them (compression, fedsim.pipeline.compression)
        the download takes `link_time(down_bytes)` and the upload `link_time(up_bytes)`.

        Args:
            client: the client's index (selects τ_c).
            work: the job's number of local steps (used when `time_per` is `step`).
            rng: stream keyed by (client, dispatch), so the draw does not depend on execution order.
            up_bytes: the upload's size when it is not one model (e.g. a compressed update).
            down_bytes: the download's size when it is not one model.

        Returns:
            (compute finished, upload arrived, dropped?), times in virtual seconds from dispatch.
        """
        units = work if self.cfg.time_per == "step" else 1
        jitter = rng.lognormal(-self.cfg.jitter**2 / 2, self.cfg.jitter) if self.cfg.jitter > 0 else 1.0
        dropped = bool(rng.random() < self.cfg.dropout_prob) if self.cfg.dropout_prob > 0 else False
        if up_bytes is not None or down_bytes is not None:
            down = self.link_time(self.model_bytes if down_bytes is None else down_bytes, client)
            up = self.link_time(self.model_bytes if up_bytes is None else up_bytes, client)
            finish = down + float(self.tau[client] * units * jitter)
            return finish, finish + up, dropped
        half = self.comm / 2 if self.link is None else float(self.link[client]) + self.cfg.latency
        finish = half + float(self.tau[client] * units * jitter)
        return finish, finish + half, dropped

    def mean_durations(self, work: np.ndarray) -> np.ndarray:
        """Expected job duration per client, ignoring jitter.

        An oracle, used only by the FedFix/FedBuff "weight" variants of Fraboni et al. that the
        official code computes from the precomputed schedule.

        Args:
            work: (N,) local steps per job for each client.

        Returns:
            (N,) expected durations in virtual seconds (compute plus download and upload).
        """
        units = work if self.cfg.time_per == "step" else np.ones_like(work)
        comm = self.comm if self.link is None else 2 * (self.link + self.cfg.latency)
        return self.tau * units + comm
