"""Failure injection: crashing clients, NaN updates, stragglers and Byzantine clients.

Faults are injected by the engine, not by the client code, so they behave the same on
every executor (inline, Ray, Flower) and cost nothing when off. Every draw comes from
the `faults` stream keyed by (client, dispatch index) — or, for the fixed Byzantine set,
the `byzantine` stream — so a run with faults is as reproducible as one without.

Per job (dispatch d of client k), three uniforms u = rng(seed, faults, k, d).random(3):
  * crash when u0 < client_crash_prob: the client dies at start + u1·(compute time); the
    job is never computed and the server records a `drop` (reason `client crashed`) then;
  * NaN when u2 < nan_update_prob: the update arrives with every coordinate NaN (a
    diverged client); server validation rejects it (reason `non-finite values ...`);
  * straggler: a job whose upload would arrive more than `straggler_timeout` virtual
    seconds after dispatch is abandoned at dispatch + timeout (reason `straggler timeout`).
Byzantine clients are a fixed set of round(fraction·N) clients; every update they send is
  sign_flip: Δ' = −scale·Δ;   scaled: Δ' = scale·Δ;   random: Δ' ~ N(0, scale²·I),
where, for a strategy whose clients send their model w (ADMM), Δ = w − base (the model
the client started from) and the client sends base + Δ' — a sign flip mirrors the model
around the base instead of negating it (Baruch et al., NeurIPS 2019, §2, attack on the
proposed step).
Byzantine updates are well-formed, so validation passes them unless a norm bound
(`validation.max_norm`) catches them; robust aggregation (fedsim.engine.robust) limits the rest.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedsim import seeding
from fedsim.scenario.schema import FaultsConfig
from fedsim.types import ClientUpdate


class Faults:
    """A run's fault injector (stateless apart from the fixed Byzantine set).

    Args:
        cfg: the scenario's `faults:` block.
        root: the run's root seed; every draw comes from streams keyed under it.
        num_clients: N; round(fraction·N) of them are Byzantine.
    """

    def __init__(self, cfg: FaultsConfig, root: int, num_clients: int):
        self.cfg, self.root = cfg, root
        k = int(round(cfg.byzantine.fraction * num_clients))
        self.byzantine = np.zeros(num_clients, dtype=bool)
        if k:  # vectorised: one permutation of the client ids
            self.byzantine[seeding.rng(root, "byzantine").permutation(num_clients)[:k]] = True

    @property
    def active(self) -> bool:
        """Whether any fault is configured (when False the engine skips the injector)."""
        return self.cfg.active

    def _draws(self, client: int, dispatch: int) -> np.ndarray:
        return seeding.rng(self.root, "faults", client, dispatch).random(3)

    def on_dispatch(self, client: int, dispatch: int, start: float, finish: float,
                    arrive: float) -> tuple[str, float] | None:
        """Decide at dispatch whether this job will never arrive.

        Args:
            client: the client.
            dispatch: its dispatch index (keys the fault draws).
            start: dispatch time, virtual seconds.
            finish: when compute would finish.
            arrive: when the upload would arrive.

        Returns:
            (reason, virtual time the server learns of it) for a crash or straggler timeout,
            else None.
        """
        u = self._draws(client, dispatch)
        if u[0] < self.cfg.client_crash_prob:
            return "client crashed", start + float(u[1]) * (finish - start)
        timeout = self.cfg.straggler_timeout
        if timeout is not None and arrive - start > timeout:
            return "straggler timeout", start + timeout
        return None

    def corrupt(self, update: ClientUpdate, dispatch: int,
                base: np.ndarray | None = None) -> tuple[ClientUpdate, str | None]:
        """The update as the faulty client sends it, and which fault (None = honest).

        Args:
            update: the honest update.
            dispatch: the job's dispatch index (keys the draws).
            base: the model the client started from; a model update is attacked around
                it (the attack acts on model − base), a delta update ignores it.

        Returns:
            (the update as sent, fault name: "nan", "byzantine" or None when honest).
        """
        c = update.client
        v = update.vector
        if self.cfg.nan_update_prob and self._draws(c, dispatch)[2] < self.cfg.nan_update_prob:
            return replace(update, vector=np.full_like(v, np.nan)), "nan"
        if self.byzantine[c]:
            b = self.cfg.byzantine
            around = update.kind == "model" and base is not None
            origin = np.asarray(base, dtype=np.float64) if around else 0.0
            step = v.astype(np.float64) - origin  # the move the client proposes
            if b.kind == "sign_flip":
                bad = -b.scale * step
            elif b.kind == "scaled":
                bad = b.scale * step
            else:
                bad = seeding.rng(self.root, "faults", c, dispatch, 1).normal(0.0, b.scale, v.shape)
            return replace(update, vector=(origin + bad if around else bad).astype(np.float32)), "byzantine"
        return update, None
