"""FedAdam, FedYogi, FedAdagrad (Reddi et al., ICLR 2021): FedAvg, then an adaptive server step.

Update rule (Reddi et al., Alg. 2), per round t with cohort S_t:
    Δ_t = Σ_{i∈S_t} a_i Δ_i               (FedAvg's weights a_i, `weighting`)
    m_t = β1 m_{t−1} + (1 − β1) Δ_t
    v_t = β2 v_{t−1} + (1 − β2) Δ_t²                    (FedAdam)
        = v_{t−1} − (1 − β2) Δ_t² sign(v_{t−1} − Δ_t²)  (FedYogi)
        = v_{t−1} + Δ_t²                                (FedAdagrad)
    x_{t+1} = x_t + η m_t / (√v_t + τ)
Each aggregates as `fedavg` (x + Σ a_i Δ_i) and differs only in its default `server_opt`
(fedsim.strategy.server_opt), so `strategy: {name: fedadam}` equals `strategy: {name: fedavg,
server_opt: {name: adam}}`; the defaults are those of Flower's FedAdam / FedYogi / FedAdagrad:

    strategy     η       β1    β2     τ      η_l (client.lr)
    fedadam      0.1     0.9   0.99   1e-9   0.1
    fedyogi      0.01    0.9   0.99   1e-3   0.0316
    fedadagrad   0.1     0     —      1e-9   0.1

η_l is the clients' learning rate, the scenario's `client.lr` (Flower's strategies only record
it). m_{-1} = v_{-1} = 0 as in Flower; no bias correction (the paper; Flower's FedAdam adds one
since its PR #4362: `server_opt: {bias_correction: flower}`). Empty round: no change, and
the moments are not updated.

Example:
    strategy: {name: fedadam, server_opt: {lr: 0.01, tau: 1e-3}}

References:
    Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, "Adaptive Federated
    Optimization", ICLR 2021. https://arxiv.org/abs/2003.00295
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

from fedsim.scenario.fields import plugin
from fedsim.strategy.maths import apply_delta, averaged_delta
from fedsim.strategy.server_opt import SERVER_OPT_DOC
from fedsim.types import ClientUpdate, Params, RoundInfo


@dataclass(frozen=True, kw_only=True)
class FedAdam:
    """FedAvg aggregation with a server Adam step (Reddi et al., ICLR 2021, Alg. 2).

    Args:
        weighting: `examples` (a_i ∝ n_i, Flower's) or `uniform`.
        server_opt: the adaptive step; `{name: adam}` with Flower's η = 0.1, β1 = 0.9, β2 = 0.99, τ = 1e-9.
    """

    modes: ClassVar[tuple[str, ...]] = ("sync",)
    uses_oracle: ClassVar[bool] = False
    sends: ClassVar[Literal["delta", "model"]] = "delta"
    down_type: ClassVar[type | None] = None
    up_type: ClassVar[type | None] = None
    secure_sum: ClassVar[bool] = True  # FedAvg's proposal from the weighted mean (fedsim.pipeline.secagg)

    weighting: Literal["examples", "uniform"] = "examples"
    server_opt: Any = plugin("server_opt", {"name": "adam"}, doc=SERVER_OPT_DOC)

    def init(self, params: Params, num_clients: int) -> None:
        """No server state besides the optimiser's, which the engine keeps."""
        return None

    def aggregate(self, state: None, params: Params, updates: Sequence[ClientUpdate],
                  info: RoundInfo) -> tuple[None, Params]:
        """Propose FedAvg's model x + Σ a_i Δ_i (the engine's server_opt turns it into the adaptive step).

        An empty round leaves the model, and the optimiser's moments, unchanged.
        """
        return state, (apply_delta(params, averaged_delta(updates, self.weighting)) if updates else params)


@dataclass(frozen=True, kw_only=True)
class FedYogi:
    """FedAvg aggregation with a server Yogi step (Reddi et al., ICLR 2021, Alg. 2).

    Args:
        weighting: `examples` (a_i ∝ n_i, Flower's) or `uniform`.
        server_opt: the adaptive step; `{name: yogi}` with Flower's η = 0.01, β1 = 0.9, β2 = 0.99, τ = 1e-3.
    """

    modes: ClassVar[tuple[str, ...]] = ("sync",)
    uses_oracle: ClassVar[bool] = False
    sends: ClassVar[Literal["delta", "model"]] = "delta"
    down_type: ClassVar[type | None] = None
    up_type: ClassVar[type | None] = None
    secure_sum: ClassVar[bool] = True  # FedAvg's proposal from the weighted mean (fedsim.pipeline.secagg)

    weighting: Literal["examples", "uniform"] = "examples"
    server_opt: Any = plugin("server_opt", {"name": "yogi"}, doc=SERVER_OPT_DOC)

    def init(self, params: Params, num_clients: int) -> None:
        """No server state besides the optimiser's, which the engine keeps."""
        return None

    def aggregate(self, state: None, params: Params, updates: Sequence[ClientUpdate],
                  info: RoundInfo) -> tuple[None, Params]:
        """Propose FedAvg's model x + Σ a_i Δ_i (the engine's server_opt turns it into the adaptive step).

        An empty round leaves the model, and the optimiser's moments, unchanged.
        """
        return state, (apply_delta(params, averaged_delta(updates, self.weighting)) if updates else params)


@dataclass(frozen=True, kw_only=True)
class FedAdagrad:
    """FedAvg aggregation with a server Adagrad step (Reddi et al., ICLR 2021, Alg. 2).

    Args:
        weighting: `examples` (a_i ∝ n_i, Flower's) or `uniform`.
        server_opt: the adaptive step; `{name: adagrad}` with Flower's η = 0.1, β1 = 0, τ = 1e-9.
    """

    modes: ClassVar[tuple[str, ...]] = ("sync",)
    uses_oracle: ClassVar[bool] = False
    sends: ClassVar[Literal["delta", "model"]] = "delta"
    down_type: ClassVar[type | None] = None
    up_type: ClassVar[type | None] = None
    secure_sum: ClassVar[bool] = True  # FedAvg's proposal from the weighted mean (fedsim.pipeline.secagg)

    weighting: Literal["examples", "uniform"] = "examples"
    server_opt: Any = plugin("server_opt", {"name": "adagrad"}, doc=SERVER_OPT_DOC)

    def init(self, params: Params, num_clients: int) -> None:
        """No server state besides the optimiser's, which the engine keeps."""
        return None

    def aggregate(self, state: None, params: Params, updates: Sequence[ClientUpdate],
                  info: RoundInfo) -> tuple[None, Params]:
        """Propose FedAvg's model x + Σ a_i Δ_i (the engine's server_opt turns it into the adaptive step).

        An empty round leaves the model, and the optimiser's moments, unchanged.
        """
        return state, (apply_delta(params, averaged_delta(updates, self.weighting)) if updates else params)
