"""Client-level differential privacy: L2 clipping, Gaussian noise (central or local), adaptive clipping.

The rules (docs/privacy.md has the derivations and the threat model):

* Clipping (McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent
  Language Models", ICLR 2018, Alg. 1, ClipFn): Δ_i ← Δ_i · min(1, C/‖Δ_i‖₂), done by the
  honest client before it sends (a client stage), and once more by the server on what
  arrived (so faults, compression error or channel noise cannot raise the sensitivity).
* Central (`dp: {name: central}`), sync rounds: the server adds ξ ~ N(0, z²C² I) to the SUM
  of the clipped cohort and divides by the expected cohort size m̄ = qN (the paper's
  fixed-denominator estimator f̃_f, §2; the number that arrived when the process has no
  known rate). Every update of the cohort is then replaced by that one noisy mean, with
  num_examples = 1, before robust aggregation and the strategy: any strategy (FedAvg with
  any weighting, FedAU, MIFA, FedAdam, ...) only post-processes the private mean, so one
  client moves what the strategy sees by at most C/m̄ whatever its weights.
  Async: each arriving update is clipped and gets N(0, z²C² I) before `strategy.receive`.
* Local (`dp: {name: local}`): each client adds N(0, z²C² I) to its own clipped update.
* Adaptive clip (Andrew, Thakkar, McMahan & Ramaswamy, "Differentially Private Learning
  with Adaptive Clipping", NeurIPS 2021, Alg. 1 and §3): each client also reports
  b_i = 1[‖Δ_i‖ ≤ C]; the server forms b̄ = (Σ (b_i − ½) + N(0, σ_b²))/m̄ + ½ (the centred
  bit has sensitivity ½) and sets C ← C·exp(−η_C (b̄ − γ)). The update noise uses
  z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2), so the pair costs exactly one Gaussian with multiplier z.

Random streams (fedsim.seeding): `dp_local` (client, dispatch), `dp_central` (round) in sync
and (client, dispatch) in async, `dp_bits` (round). Accounting: fedsim.pipeline.accounting.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

from fedsim import seeding
from fedsim.errors import ConfigError
from fedsim.pipeline import accounting
from fedsim.scenario.fields import bounded
from fedsim.types import ClientUpdate


def clip(vector: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """McMahan et al. 2018's ClipFn: Δ · min(1, C/‖Δ‖₂).

    Args:
        vector: the update Δ.
        c: the clip norm C.

    Returns:
        (the clipped update — `vector` itself, untouched, when ‖Δ‖₂ ≤ C; the norm ‖Δ‖₂).
    """
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if norm <= c:
        return vector, norm
    return (vector.astype(np.float64) * (c / norm)).astype(np.float32), norm


def split_noise(z: float, bit_noise: float) -> float:
    """Andrew et al. 2021's z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2): the update's share of the budget z.

    Args:
        z: the total noise multiplier.
        bit_noise: σ_b, the std of the noise on the clipped-count (must exceed z/2).

    Returns:
        z_Δ (0 when z = 0).
    """
    if z == 0:
        return 0.0
    return (z ** -2 - (2 * bit_noise) ** -2) ** -0.5


def adapt_clip(c: float, bits: Sequence[bool], bit_noise_draw: float, denominator: float,
               target_quantile: float, lr: float) -> tuple[float, float]:
    """One geometric clip update (Andrew et al. 2021, Alg. 1).

    Args:
        c: the current clip C.
        bits: b_i = 1[‖Δ_i‖ ≤ C] of the cohort.
        bit_noise_draw: the draw of N(0, σ_b²) for this round.
        denominator: m̄ (the expected cohort size, or the number that arrived).
        target_quantile: γ.
        lr: η_C.

    Returns:
        (the next clip C·exp(−η_C (b̄ − γ)), the noisy unclipped fraction b̄).
    """
    centred = sum(float(b) - 0.5 for b in bits)
    frac = (centred + bit_noise_draw) / denominator + 0.5
    return c * math.exp(-lr * (frac - target_quantile)), frac


@dataclass(frozen=True, kw_only=True)
class AdaptiveClip:
    """Adaptive clipping to a target quantile of the update norms (Andrew et al., NeurIPS 2021).

    Args:
        target_quantile: γ, the share of updates that should be unclipped.
        lr: η_C of the geometric update C ← C·exp(−η_C (b̄ − γ)) (0.2 in the paper).
        bit_noise: σ_b, std of the noise on the count of unclipped updates; with z > 0 it must
            exceed z/2 (the paper suggests σ_b = m/20 for m clients per round).
    """

    target_quantile: float = bounded(0.5, ge=0.0, le=1.0)
    lr: float = bounded(0.2, gt=0.0, le=100.0)
    bit_noise: float = bounded(0.0, ge=0.0, le=1e9)


def _common_check(z: float, delta: float) -> None:
    if not math.isfinite(z):
        raise ConfigError("noise_multiplier", "must be finite")
    if delta <= 0 or delta >= 1:
        raise ConfigError("delta", "must be in (0, 1)")


@dataclass(frozen=True, kw_only=True)
class NoDP:
    """No differential privacy (default): updates pass untouched, no ε is reported."""

    location: ClassVar[str | None] = None


@dataclass(frozen=True, kw_only=True)
class CentralDP:
    """DP-FedAvg: clients clip, the server adds N(0, z²C²) to the clipped sum (McMahan et al., ICLR 2018).

    Args:
        clip: C, the L2 clip norm of every update (the initial C with `adaptive`).
        noise_multiplier: z; the noise std on the clipped sum is z·C.
        delta: δ of the reported (ε, δ).
        accountant: `rdp` or `pld` (dp-accounting's accountants).
        adaptive: adapt C to a quantile of the update norms (sync only): `{target_quantile: γ (0.5),
            lr: η_C (0.2), bit_noise: σ_b (> z/2)}`; unset = fixed C.
    """

    location: ClassVar[str | None] = "central"
    clip: float = bounded(1.0, gt=0.0, le=1e12)
    noise_multiplier: float = bounded(1.0, ge=0.0, le=1e6)
    delta: float = bounded(1e-5, gt=0.0, lt=1.0)
    accountant: Literal["rdp", "pld"] = "rdp"
    adaptive: AdaptiveClip | None = None

    def validate(self) -> None:
        """Check the noise split of adaptive clipping.

        Raises:
            ConfigError: when `adaptive.bit_noise` ≤ z/2 (no budget left for the update noise).
        """
        _common_check(self.noise_multiplier, self.delta)
        a = self.adaptive
        if a is not None and self.noise_multiplier > 0 and not 2 * a.bit_noise > self.noise_multiplier:
            raise ConfigError("adaptive.bit_noise", f"must exceed noise_multiplier/2 = {self.noise_multiplier / 2:g} "
                              "so that z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) exists (Andrew et al. 2021)")


@dataclass(frozen=True, kw_only=True)
class LocalDP:
    """Local DP: every client adds N(0, z²C²) to its own clipped update before sending.

    Args:
        clip: C, the L2 clip norm of every update.
        noise_multiplier: z; each client's noise std is z·C.
        delta: δ of the reported (ε, δ).
        accountant: `rdp` or `pld` (dp-accounting's accountants).
    """

    location: ClassVar[str | None] = "local"
    clip: float = bounded(1.0, gt=0.0, le=1e12)
    noise_multiplier: float = bounded(1.0, ge=0.0, le=1e6)
    delta: float = bounded(1e-5, gt=0.0, lt=1.0)
    accountant: Literal["rdp", "pld"] = "rdp"

    def validate(self) -> None:
        """Check z and δ.

        Raises:
            ConfigError: for a non-finite z or δ outside (0, 1).
        """
        _common_check(self.noise_multiplier, self.delta)


class DPStage:
    """The engine-owned DP state of one run: current clip, release counts and the accountant.

    Pickled whole into checkpoints (fedsim.engine.checkpoint), so a resumed run continues
    with the same clip and the same composed accountant.

    Args:
        cfg: the `dp:` block (central or local).
        sampling: the participation's sampling assumption (fedsim.pipeline.accounting).
        mode: `sync` or `async`.
        root: the root seed.
        num_clients: N.
    """

    def __init__(self, cfg: Any, sampling: accounting.Sampling, mode: str, root: int, num_clients: int):
        self.cfg, self.sampling, self.root = cfg, sampling, int(root)
        self.central = cfg.location == "central"
        self.sync = mode == "sync"
        self.z = float(cfg.noise_multiplier)
        self.clip = float(cfg.clip)
        self.adaptive = getattr(cfg, "adaptive", None)
        self.z_update = split_noise(self.z, self.adaptive.bit_noise) if self.adaptive else self.z
        self.bits: dict[int, bool] = {}  # this round's b_i, by client (one job per client per round)
        self.releases = np.zeros(num_clients, dtype=np.int64)  # single-update mechanisms per client
        self.rounds = 0  # cohort mechanisms (sync central)
        self.per_round = self.central and self.sync
        if self.per_round:
            event = accounting.cohort_event(sampling, self.z)
            self.basis = sampling.note
            self.count_rule = "one subsampled Gaussian mechanism per sync round (the noisy clipped sum)"
        else:
            event = accounting.single_event(self.z)
            where = "client" if not self.central else "server, per arriving update (async)"
            self.basis = (f"none: noise is added to each update on its own ({where}); the server sees "
                          "who sent it, so sampling does not amplify")
            self.count_rule = ("one Gaussian mechanism (multiplier z/2, replace-one) per update a client sends; "
                               "clients compose in parallel, so the count is the largest per-client number")
        self.accountant = accounting.Accountant(cfg.accountant, event, cfg.delta,
                                                replace_one=self.per_round and sampling.kind == "without_replacement")
        self.announced = False

    # -- client side ----------------------------------------------------------------------

    def client(self, update: ClientUpdate, client: int, dispatch: int) -> ClientUpdate:
        """What an honest client sends: its clipped update (+ its own noise for local DP).

        Args:
            update: the trained update.
            client: the client id.
            dispatch: the job's dispatch index (keys the `dp_local` stream).

        Returns:
            The update to send (the same object when nothing changes it, or when its vector is not
            a float array: validation rejects that one, and no stage may crash on it).
        """
        if not (isinstance(update.vector, np.ndarray) and np.issubdtype(update.vector.dtype, np.floating)):
            return update
        vector, norm = clip(update.vector, self.clip)
        if self.adaptive is not None:
            self.bits[client] = norm <= self.clip
        if not self.central:
            self.releases[client] += 1
            if self.z > 0:
                noise = seeding.rng(self.root, "dp_local", client, dispatch).normal(
                    0.0, self.z * self.clip, vector.shape)
                vector = (vector.astype(np.float64) + noise).astype(np.float32)
        return update if vector is update.vector else replace(update, vector=vector)

    # -- server side ----------------------------------------------------------------------

    def cohort(self, updates: list[ClientUpdate], round_index: int) -> list[ClientUpdate]:
        """Sync central DP: replace the cohort by its noisy clipped mean; adapt C (local: unchanged).

        Args:
            updates: the accepted cohort of round `round_index`.
            round_index: the 0-based round (keys `dp_central` and `dp_bits`).

        Returns:
            The cohort the strategy sees: every vector the same noisy mean, num_examples 1.
        """
        if not self.per_round:
            return updates
        self.rounds += 1
        bits = [self.bits.get(u.client, True) for u in updates]
        self.bits = {}
        if not updates:
            return updates
        m = self.sampling.expected_cohort or float(len(updates))
        total = np.zeros(updates[0].vector.shape, dtype=np.float64)
        for u in sorted(updates, key=lambda u: u.client):  # canonical order: arrival order never matters
            total += clip(u.vector, self.clip)[0]  # server-side re-clip: what arrived may have changed
        if self.z_update > 0:
            total += seeding.rng(self.root, "dp_central", round_index).normal(0.0, self.z_update * self.clip,
                                                                               total.shape)
        mean = (total / m).astype(np.float32)
        if self.adaptive is not None:
            a = self.adaptive
            draw = 0.0
            if a.bit_noise:
                draw = float(seeding.rng(self.root, "dp_bits", round_index).normal(0.0, a.bit_noise))
            self.clip, _ = adapt_clip(self.clip, bits, draw, m, a.target_quantile, a.lr)
        return [replace(u, vector=mean, num_examples=1) for u in updates]

    def arrival(self, update: ClientUpdate, client: int, dispatch: int) -> ClientUpdate:
        """Async central DP: clip one arriving update and add N(0, z²C²) (local: unchanged).

        Args:
            update: the accepted update.
            client: its client.
            dispatch: its dispatch index (keys `dp_central` with the client).

        Returns:
            The update the strategy receives.
        """
        if not self.central or self.sync:
            return update
        self.releases[client] += 1
        vector = clip(update.vector, self.clip)[0]
        if self.z > 0:
            noise = seeding.rng(self.root, "dp_central", client, dispatch).normal(0.0, self.z * self.clip,
                                                                                   vector.shape)
            vector = (vector.astype(np.float64) + noise).astype(np.float32)
        return update if vector is update.vector else replace(update, vector=vector)

    # -- reporting --------------------------------------------------------------------------

    def mechanisms(self) -> int:
        """How many mechanism invocations the accountant composes (see `count_rule`)."""
        return self.rounds if self.per_round else int(self.releases.max(initial=0))

    def take_note(self) -> str | None:
        """The one-line start-of-run notice when ε gets no amplification by sampling (once per run).

        Returns:
            The notice, or None (already given, or sampling amplification applies).
        """
        if self.announced:
            return None
        self.announced = True
        if self.per_round and self.sampling.kind != "none":
            return None
        return f"dp: sampling {self.basis}"

    def metrics(self) -> dict[str, float]:
        """The row fields of an evaluation: `epsilon` (at δ) and, with adaptive clipping, `dp_clip`.

        Returns:
            The fields; composing the accountant up to the current count first.
        """
        self.accountant.compose_to(self.mechanisms())
        out = {"epsilon": self.accountant.epsilon()}
        if self.adaptive is not None:
            out["dp_clip"] = self.clip
        return out

    def summary(self) -> dict[str, Any]:
        """The `dp` entry of summary.json.

        Returns:
            ε, δ, the accountant, the sampling assumption and the mechanism count.
        """
        self.accountant.compose_to(self.mechanisms())
        return {"epsilon": self.accountant.epsilon(), "delta": self.cfg.delta, "accountant": self.cfg.accountant,
                "mechanism": self.cfg.location, "noise_multiplier": self.z, "clip": self.clip,
                "sampling": self.basis, "q": self.sampling.q if self.per_round else 1.0,
                "mechanisms": self.mechanisms(), "count": self.count_rule}


def build(cfg: Any, scenario: Any, root: int, num_clients: int) -> DPStage | None:
    """The run's DP stage, or None for `dp: {name: none}` (then the engine does no DP arithmetic).

    Args:
        cfg: the `dp:` block (None for scenario stand-ins without one).
        scenario: the scenario (participation and engine mode).
        root: the root seed.
        num_clients: N.

    Returns:
        The stage or None.
    """
    if cfg is None or getattr(type(cfg), "location", None) is None:
        return None
    sampling = accounting.sampling_of(scenario.participation, num_clients)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dp-accounting's import-time deprecation chatter
        return DPStage(cfg, sampling, scenario.engine.mode, root, num_clients)
