"""Every configuration block of a scenario, as frozen dataclasses (YAML keys = fields).

Plain values only: no torch, no data, no behaviour beyond cross-field checks in
`validate()`. A block chosen by `name:` (dataset, model, participation, compute, strategy,
executor, robust, ...) is a plugin from `fedsim.registry` and lives beside its code; the
blocks here are the fixed ones. docs/reference-scenario.md is generated from this module
and the registry.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Literal

from fedsim.errors import ConfigError, ConfigErrors
from fedsim.scenario import fields as config
from fedsim.scenario.fields import bounded, plugin


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """Local training: `local_steps` minibatch SGD steps, or `local_epochs` passes over the data.

    An epoch is ceil(n_k / batch_size) steps; the last batch may be short.

    Args:
        local_steps: Q (FedAU), n_SGD (Fraboni).  local_epochs: E (overrides local_steps).
        batch_size: B.  lr: γ, local learning rate.  lr_decay: γ_t = γ · lr_decay^t. Sync: t is the round.
            Async: t is the client's own local round, the number of jobs this client started
            before this one (every dispatch counts, also one that later dropped out), not the
            server version: the analogue of a per-round schedule when each client advances at
            its own pace. Known at dispatch, so deterministic.
        momentum: heavy-ball momentum (buffer starts at 0 every job).  weight_decay: L2 on w.
        clip_norm: clip the step direction to this global norm (off when unset).
    """

    local_steps: int = bounded(10, ge=1, le=10_000_000)
    local_epochs: int | None = bounded(None, ge=1, le=100_000)
    batch_size: int = bounded(16, ge=1, le=10_000_000)
    lr: float = bounded(0.05, gt=0.0, le=1e6)
    lr_decay: float = bounded(1.0, gt=0.0, le=1.0)
    momentum: float = bounded(0.0, ge=0.0, lt=1.0)
    weight_decay: float = bounded(0.0, ge=0.0)
    clip_norm: float | None = bounded(None, gt=0.0)
    optimizer: Literal["sgd"] = "sgd"


@dataclass(frozen=True, kw_only=True)
class ChannelConfig:
    """Communication channel: additive Gaussian noise on both links and uplink packet loss.

    Args:
        downlink_noise_std: σ_d; client k receives z + N(0, σ_d² I).
        uplink_noise_std: σ_u; the server receives the client's message + N(0, σ_u² I).
        loss_prob: probability that an uplink message is lost, drawn at dispatch per (client,
            dispatch index). The client still trains and keeps its own state (e.g. SCAFFOLD's
            c_i); only the server never receives the update (a `drop`, `lost in channel`).
    """

    downlink_noise_std: float = bounded(0.0, ge=0.0, le=1e6)
    uplink_noise_std: float = bounded(0.0, ge=0.0, le=1e6)
    loss_prob: float = bounded(0.0, ge=0.0, le=1.0)

    @property
    def noisy(self) -> bool:
        """Whether either link adds noise (loss alone does not count)."""
        return self.downlink_noise_std > 0 or self.uplink_noise_std > 0


@dataclass(frozen=True, kw_only=True)
class SystemConfig:
    """Client speeds, links and dropout.

    Args:
        compute: per-client compute time τ_c (a plugin from COMPUTE).
        time_per: τ_c is per local step (`step`) or per whole job (`job`).
        jitter: per-job multiplicative lognormal noise (log-space sigma; 0 = none).
        bandwidth_mbps: link speed for model up/download (unset = instantaneous).
        latency: one-way latency in virtual seconds.
        dropout_prob: probability that a job never returns.
    """

    compute: Any = plugin("compute", {"name": "constant", "time": 1.0})
    time_per: Literal["step", "job"] = "step"
    jitter: float = bounded(0.0, ge=0.0, le=10.0)
    bandwidth_mbps: float | None = bounded(None, gt=0.0)
    latency: float = bounded(0.0, ge=0.0, le=1e12)
    dropout_prob: float = bounded(0.0, ge=0.0, le=1.0)

    def validate(self) -> None:
        """Refuse what a device trace (a compute plugin that gives bandwidths) contradicts.

        Raises:
            ConfigError: `bandwidth_mbps` set, or `time_per: job`, with a trace that gives both.
        """
        if getattr(type(self.compute), "gives_bandwidth", False):
            if self.bandwidth_mbps is not None:
                raise ConfigError("bandwidth_mbps", "the device trace (compute) gives each client's bandwidth: "
                                  "unset bandwidth_mbps")
            if self.time_per != "step":
                raise ConfigError("time_per", "the device trace (compute) gives time per sample: use time_per: step")


@dataclass(frozen=True, kw_only=True)
class ByzantineConfig:
    """Byzantine clients: a fixed set that sends adversarial but well-formed updates.

    Args:
        fraction: share of clients that are Byzantine (a fixed set, drawn once).
        kind: sign_flip (−scale·Δ), scaled (scale·Δ) or random (N(0, scale²) per coordinate).
        scale: attack strength.
    """

    fraction: float = bounded(0.0, ge=0.0, le=1.0)
    kind: Literal["sign_flip", "scaled", "random"] = "sign_flip"
    scale: float = bounded(1.0, gt=0.0, le=1e12)


@dataclass(frozen=True, kw_only=True)
class FaultsConfig:
    """Injected failures: crashes, NaN updates, straggler timeouts and Byzantine clients.

    Args:
        client_crash_prob: probability that a job's client crashes before uploading.
        nan_update_prob: probability that a job's update is all NaN.
        straggler_timeout: abandon jobs whose upload arrives later than this many virtual
            seconds after dispatch (unset = wait forever; works in sync and async mode).
        byzantine: clients that send adversarial updates (see ByzantineConfig).
    """

    client_crash_prob: float = bounded(0.0, ge=0.0, le=1.0)
    nan_update_prob: float = bounded(0.0, ge=0.0, le=1.0)
    straggler_timeout: float | None = bounded(None, gt=0.0)
    byzantine: ByzantineConfig = field(default_factory=ByzantineConfig)

    @property
    def active(self) -> bool:
        """Whether any fault is configured; when False the engine skips fault injection."""
        return bool(self.client_crash_prob or self.nan_update_prob or self.straggler_timeout is not None
                    or self.byzantine.fraction)


@dataclass(frozen=True, kw_only=True)
class ValidationConfig:
    """Server-side checks every update must pass before aggregation.

    Args:
        max_norm: reject updates whose delta has L2 norm above this (null = no bound). The default
            1e6 is far above any honest update and stops absurd ones from corrupting the model.
            Shapes and finiteness are always checked.
    """

    max_norm: float | None = bounded(1e6, gt=0.0)


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """Periodic snapshots of the engine state, for `fedsim run --resume`.

    Args:
        every: save the engine state after every this many rounds (sync) or committed model
            versions (async); unset = never.
    """

    every: int | None = bounded(None, ge=1, le=1_000_000_000)


@dataclass(frozen=True, kw_only=True)
class HardClients:
    """Make some clients' data harder, to study per-client fairness (e.g. with FedCE).

    Their training data and local test split are altered alike; the global test set is untouched.
    FedCE (M. Jiang, H. R. Roth, W. Li, D. Yang, C. Zhao, V. Nath, D. Xu, Q. Dou and Z. Xu, "Fair
    Federated Medical Image Segmentation via Client Contribution Estimation", CVPR 2023) is
    evaluated on sites with a shifted domain; `negate` is a synthetic stand-in for one.

    Args:
        clients: explicit client ids; when empty, `fraction` of the clients are drawn at random.
        fraction: share of clients picked when `clients` is empty (rounded up).
        label_noise: probability that a label is replaced by a uniformly drawn *other* class
            (classification only).
        feature_noise: std of Gaussian noise added to every input value.
        negate: x → −x, a covariate shift the other clients never see (a 'different scanner').
    """

    clients: tuple[int, ...] = ()
    fraction: float = bounded(0.0, ge=0.0, le=1.0)
    label_noise: float = bounded(0.0, ge=0.0, le=1.0)
    feature_noise: float = bounded(0.0, ge=0.0)
    negate: bool = False


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The federation's data: which dataset, how it is split, and how many clients.

    Args:
        dataset: which data (see `fedsim list datasets`).
        partition: how a pooled dataset is split across clients (`natural` for per-client data).
        num_clients: N.
        test_fraction: share of each client's data kept as its local test split (fairness).
        hard_clients: optionally make some clients' data harder (label noise, feature noise, a
            negated input domain); unset = nobody.
    """

    dataset: Any = plugin("dataset")
    partition: Any = plugin("partition", {"name": "iid"})
    num_clients: int = bounded(10, ge=1, le=10_000_000)
    test_fraction: float = bounded(0.2, ge=0.0, lt=1.0)
    hard_clients: HardClients | None = None


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """How the simulation advances: synchronous rounds or asynchronous arrivals on a clock.

    Args:
        mode: `sync` rounds or `async` arrivals on the virtual clock.
        rounds: sync rounds to run.
        deadline: sync only — clients still running this many virtual seconds after the round
            started are dropped (unset = wait for the slowest).
        empty_round_time: virtual seconds a round lasts when nobody takes part.
        concurrency: async — jobs in flight.
        max_versions / max_time / max_updates: async stop conditions (first reached wins).
        slot: async — participation is redrawn every `slot` virtual seconds.
        client_state: precision of stored per-client strategy state (`float16` halves its
            memory; see fedsim.engine.client_state).
        redispatch: async — `sample`: a freed slot goes at once to a uniformly drawn online idle
            client; `on_commit`: a client whose update arrived restarts from the next committed
            model (Fraboni et al.'s schedules). See docs/explanation-virtual-clock.md.
        drop_offline: async — a job whose client goes offline before its upload arrives is dropped
            (at the slot boundary where it goes offline). Sync — a client that is offline when its
            upload would arrive is lost for the round, as FedScale's aggregator does
            (`tictak_client_tasks`: "not active by the time of collection"); needs a participation
            process that knows who is online at any time (`fedscale_trace`).
        keep_fastest: sync — aggregate only the K earliest arrivals of a round and end the round at
            the K-th; the others are dropped (`not among the fastest`) and never computed.
            FedScale's over-commitment: select ⌈1.3·K⌉ clients (e.g. `participation.k`), keep K.
        max_failed_streak: async — stop with an error after this many jobs in a row brought no usable
        update (every client dropped out, crashed or was rejected); unset = never.
    clock: async — `virtual`: the system model fixes when each update arrives (reproducible);
            `wall`: updates are committed in the order real clients return them, times are wall
            seconds since the start (`fedsim deploy server` sets it; see docs/how-to-deploy.md).
        on_client_error: what an exception in a client's job (a bug in the strategy's client
            rule, a failing data loader) does. `raise`: the run stops with one line naming the
            client, the job and the error (metrics written so far are kept); `drop`: the job is
            recorded as a `drop` and the run goes on. Unset = `raise` on simulated executors and
            `drop` for deployed runs (`fedsim deploy server` sets it: a real client's failure
            never stops the server). Injected faults (`faults:`) and channel losses are never
            client errors: they are always drops.
    """

    mode: Literal["sync", "async"] = "sync"
    rounds: int = bounded(100, ge=1, le=100_000_000)
    deadline: float | None = bounded(None, gt=0.0)
    empty_round_time: float = bounded(1.0, gt=0.0)
    concurrency: int = bounded(10, ge=1, le=10_000_000)
    max_versions: int | None = bounded(None, ge=1, le=1_000_000_000)
    max_time: float | None = bounded(None, gt=0.0)
    max_updates: int | None = bounded(None, ge=1, le=1_000_000_000)
    slot: float = bounded(1.0, gt=0.0)
    client_state: Literal["float32", "float16"] = "float32"
    redispatch: Literal["sample", "on_commit"] = "sample"
    drop_offline: bool = False
    keep_fastest: int | None = bounded(None, ge=1, le=10_000_000)
    clock: Literal["virtual", "wall"] = "virtual"
    max_failed_streak: int | None = bounded(1000, ge=1, le=1_000_000_000)
    on_client_error: Literal["raise", "drop"] | None = None

    def validate(self) -> None:
        """Check the cross-field rules of the block.

        Raises:
            ConfigError: for the wall clock outside async mode, or an async run with no stop condition.
        """
        if self.clock == "wall" and self.mode != "async":
            raise ConfigError("clock", "the wall clock is implemented for engine.mode async only")
        if self.keep_fastest is not None and self.mode != "sync":
            raise ConfigError("keep_fastest", "keeps the fastest arrivals of a round: engine.mode sync only "
                              "(async commits arrivals as they come; see engine.concurrency)")
        if self.mode == "async" and self.max_versions is None and self.max_time is None \
                and self.max_updates is None:
            raise ConfigError("max_versions", "async mode needs a stop condition: set max_versions, "
                              "max_time or max_updates")


# The import names each metrics sink needs (the `mlflow` extra brings SQLAlchemy and Alembic
# for its SQLite store); checked at validation, imported only when a run opens the sink.
SINK_PACKAGES: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy", "alembic"), "csv": (),
}


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """When to evaluate the global model, and which per-client numbers to record.

    Args:
        eval_every: evaluate every this many rounds (sync) or versions (async); unset = every
            round / version, except in async runs that set eval_every_time.
        eval_every_time: async — evaluate every this many virtual seconds.
        client_metrics: per-client rows in clients.jsonl at each evaluation: `all` (true),
            `participants` (clients that have taken part so far) or `none` (false).
        client_sample: per-client evaluation (clients.jsonl accuracy/loss and the fairness
            metrics) on a fixed random sample of this many clients; unset = every client.
        sinks: trackers that get a copy of every metrics.jsonl record: `tensorboard`
            (<out>/tensorboard/), `mlflow` (<out>/mlflow.db, an MLflow SQLite store), `csv`
            (<out>/metrics.csv). Each needs its optional extra (`pip install 'fedsim[NAME]'`);
            see docs/trackers.md.
    """

    eval_every: int | None = bounded(None, ge=1, le=1_000_000_000)
    eval_every_time: float | None = bounded(None, gt=0.0)
    client_metrics: bool | Literal["all", "participants", "none"] = True
    client_sample: int | None = bounded(None, ge=1, le=10_000_000)
    sinks: tuple[Literal["tensorboard", "mlflow", "csv"], ...] = ()

    def validate(self) -> None:
        """Check that no sink is named twice and that each sink's packages are installed.

        Raises:
            ConfigError: `sinks: tensorboard needs the tensorboard package (pip install 'fedsim[tensorboard]')`.
        """
        import importlib.util

        if len(set(self.sinks)) != len(self.sinks):
            raise ConfigError("sinks", f"a sink is named twice: {list(self.sinks)}")
        for sink in self.sinks:
            for package in SINK_PACKAGES[sink]:
                if importlib.util.find_spec(package) is None:
                    raise ConfigError("sinks", f"{sink} needs the {package} package (pip install 'fedsim[{sink}]')")


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """A whole experiment. See docs/reference-scenario.md for every key.

    Args:
        name: label of the experiment; runs go to runs/<name>/<time>/ unless --out is given.
        seed: root seed; every random stream derives from it and stable ids (client, dispatch).
    """

    name: str = "scenario"
    seed: int = bounded(0, ge=0, le=2**63 - 1)
    data: DataConfig
    model: Any = plugin("model", {"name": "mlp"})
    client: ClientConfig = field(default_factory=ClientConfig)
    participation: Any = plugin("participation", {"name": "full"})
    system: SystemConfig = field(default_factory=SystemConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    strategy: Any = plugin("strategy", {"name": "fedavg"})
    executor: Any = plugin("executor", {"name": "inline"})
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    robust: Any = plugin("robust", {"name": "none"})
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    secagg: Any = plugin("secagg", {"name": "none"})
    dp: Any = plugin("dp", {"name": "none"}, doc="client-level differential privacy (docs/privacy.md).")
    compression: Any = plugin("compression", {"name": "none"}, doc="compressed uploads with error feedback "
                              "(docs/compression.md).")

    def validate(self) -> None:
        """Check the rules that span blocks, reporting every problem at once.

        Mode vs strategy, dataset vs partition and model, participation vs number of clients...

        Raises:
            ConfigError: one problem, naming the offending key (`ConfigErrors` for several).
        """
        errors = [ConfigError(path, msg) for path, msg in self._cross_field_problems()]
        if errors:
            raise errors[0] if len(errors) == 1 else ConfigErrors(errors)

    def _cross_field_problems(self) -> list[tuple[str, str]]:
        """Every (dotted path, message) that only a view of the whole scenario can find.

        All of them, so that `fedsim validate` reports each in one pass before any data is built.
        """
        out: list[tuple[str, str]] = []
        # Plugins that can be wrong for a number of clients say so (`check_clients`).
        for path, block in (("participation", self.participation), ("strategy", self.strategy),
                            ("data.dataset", self.data.dataset), ("system.compute", self.system.compute)):
            check = getattr(type(block), "check_clients", None)
            if check is not None:
                for msg in check(block, self.data.num_clients):  # "key: what is wrong"
                    key, _, what = msg.partition(": ")
                    out.append((f"{path}.{key}", what))
        if getattr(self.participation, "by", "time") == "round" and self.engine.mode != "sync":
            out.append(("participation.by", "a trace keyed by round needs engine.mode: sync (async runs "
                        "replay a trace in virtual time: by: time)"))
        if not self.name or self.name.startswith(".") or any(c in self.name for c in "/\\\0") \
                or len(self.name) > 200:
            out.append(("name", f"{self.name!r} cannot name a results folder (no '/', '\\', "
                              "leading '.', at most 200 characters)"))
        if self.checkpoint.every is not None and self.engine.clock == "wall":
            # The wall-clock loop commits updates in real arrival order; a snapshot of it could not
            # be replayed deterministically, and saving one silently nothing was worse than refusing.
            out.append(("checkpoint.every", "checkpoints are not implemented for engine.clock: wall (deployed "
                        "async runs); unset checkpoint.every"))
        if self.engine.mode == "async" and config.plugin_name("robust", self.robust) != "none":
            out.append(("robust.name", "robust aggregation needs a cohort (engine.mode: sync)"))
        supported = tuple(getattr(type(self.strategy), "modes", ()))  # declared (fedsim.check_strategy)
        if self.engine.mode not in supported:
            out.append(("engine.mode", f"strategy {config.plugin_name('strategy', self.strategy)!r} "
                              f"runs in {'/'.join(supported) or 'no'} mode, not {self.engine.mode!r}"))
        # Capabilities are class attributes of the plugins, so no plugin module is imported here.
        per_client = getattr(type(self.data.dataset), "per_client", False)
        natural = getattr(type(self.data.partition), "natural", False)
        if per_client and not natural:
            out.append(("data.partition.name", f"dataset {config.plugin_name('dataset', self.data.dataset)!r}"
                              " is generated per client: use partition {name: natural}"))
        if natural and not per_client:
            out.append(("data.partition.name", "'natural' needs a dataset that comes split by client "
                        "(synthetic, linear_regression, least_squares_groups, leaf, hf_natural)"))
        if self.engine.mode == "sync" and self.engine.drop_offline \
                and not getattr(type(self.participation), "time_based", False):
            out.append(("engine.drop_offline", f"in sync mode it needs a participation process that says who is "
                        f"online at any virtual time (fedscale_trace), not "
                        f"{config.plugin_name('participation', self.participation)!r}"))
        out += self._secagg_problems()
        out += self._dp_problems()
        regression = getattr(type(self.data.dataset), "regression", False)
        if regression != getattr(type(self.model), "regression", False):
            out.append(("model.name", "linear_regression data needs model 'linear' (and 'linear' "
                              "needs linear_regression data)"))
        if not getattr(type(self.compression), "identity", True) and getattr(type(self.strategy), "sends",
                                                                             "delta") == "model":
            out.append(("compression.name", f"strategy {config.plugin_name('strategy', self.strategy)!r} sends "
                        "whole models (sends = 'model'); compression applies to deltas only: use name: none"))
        if not getattr(type(self.compression), "identity", True) and self.engine.clock == "wall":
            out.append(("compression.name", "compression is simulated by the engine on the virtual clock; a "
                        "deployed run (engine.clock: wall) would compress after the real upload: use name: none"))
        if not getattr(type(self.model), "vectorizable", True) \
                and config.plugin_name("executor", self.executor) == "vectorized":
            out.append(("executor.name", f"model {config.plugin_name('model', self.model)!r} has no batched "
                        "form (torch.func.vmap cannot batch it: LSTM/GRU layers, or a module of your own): "
                        "use executor inline, ray or flower"))
        return out

    def _secagg_problems(self) -> list[tuple[str, str]]:
        """What cannot run under secure aggregation, where the server sees only the cohort's sum."""
        if not getattr(type(self.secagg), "active", False):
            return []
        out: list[tuple[str, str]] = []
        name = config.plugin_name("strategy", self.strategy)
        if self.engine.mode != "sync":
            out.append(("secagg", "needs engine.mode: sync (an async server commits single arrivals, and the "
                        "secure sum of one update is that update)"))
        elif not getattr(type(self.strategy), "secure_sum", False):
            out.append(("secagg", f"strategy {name} needs per-client updates (its aggregate is not a weighted "
                        "sum the clients can compute: it does not declare secure_sum)"))
        if config.plugin_name("robust", self.robust) != "none":
            out.append(("robust.name", "robust aggregation needs per-client updates; under secagg the server "
                        "sees only their sum"))
        if self.channel.uplink_noise_std > 0:
            out.append(("channel.uplink_noise_std", "secagg uploads masked integers mod 2^b, which analogue "
                        "noise would turn into garbage; unset it or secagg"))
        if self.faults.byzantine.fraction > 0:
            out.append(("faults.byzantine.fraction", "under secagg validation.max_norm is each client's own "
                        "check, which Byzantine clients would skip; no server defence sees their updates"))
        if getattr(type(self.dp), "location", None) == "central":
            out.append(("dp.name", "central DP re-clips each arrived update, which a server that sees only the "
                        "secure sum cannot do: use dp: {name: local} (clients clip and noise before masking)"))
        return out

    def _dp_problems(self) -> list[tuple[str, str]]:
        """Combinations for which the `dp:` block could not give the guarantee it reports (docs/privacy.md)."""
        where = getattr(type(self.dp), "location", None)  # a class attribute: no plugin module imported
        if where is None:
            return []
        out: list[tuple[str, str]] = []
        if importlib.util.find_spec("dp_accounting") is None:  # the accountant, imported only when the run starts
            out.append(("dp.accountant", "needs dp-accounting: pip install 'fedsim[privacy]'"))
        strategy = config.plugin_name("strategy", self.strategy)
        if getattr(type(self.strategy), "sends", "delta") != "delta":
            out.append(("dp.name", f"strategy {strategy!r} sends whole models, which clipping cannot bound; "
                        "client-level DP needs a strategy that sends deltas"))
        up = getattr(type(self.strategy), "up_type", None)
        if up is not None:
            out.append(("dp.name", f"strategy {strategy!r} sends an extra up message ({up.__name__}) that DP "
                        "neither clips nor noises; it cannot be made private"))
        if getattr(self.dp, "adaptive", None) is not None and self.engine.mode != "sync":
            out.append(("dp.adaptive", "adaptive clipping needs a cohort per round (engine.mode: sync)"))
        if where == "central" and self.engine.mode == "sync" and getattr(self.dp, "accountant", "rdp") == "pld" \
                and config.plugin_name("participation", self.participation) == "uniform":
            out.append(("dp.accountant", "dp-accounting's PLD accountant has no sampling-without-replacement "
                        "event (participation uniform): use accountant: rdp"))
        return out
