"""`fedsim deploy server` and `fedsim deploy client`: a scenario's strategy with real clients over gRPC.

The clients are Flower SuperNodes.

The server side starts a SuperLink (or attaches to a running one), registers the
clients' public keys (node authentication), and submits one Flower run whose ServerApp
is fedsim's (`fedsim.flower.server_app:app`, the one the flower executor uses in
simulation); that ServerApp runs the engine and writes the usual results folder. A
client starts a SuperNode whose ClientApp (`fedsim.flower.client_app:app`) trains on
its partition of the scenario's data, or on the user's own `.npz` (see local_data.py).
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from fedsim.flower import deploy as d

# run-config keys the deployment ServerApp (fedsim.flower.server_app:app) reads
RC_SCENARIO = "scenario"  # path of the resolved scenario YAML on the server machine
RC_OUT = "out"  # absolute results folder on the server machine
RC_NODES = "num-nodes"  # SuperNodes to wait for (one per client)
RC_JOB_TIMEOUT = "job-timeout"  # seconds a job may take before it counts as failed
RC_CONNECT_TIMEOUT = "connect-timeout"  # seconds to wait for every client to connect
RC_CLIENT_API = "client-api"  # "" = fedsim's ClientApp; "message" / "numpy" = the user's own ClientApp
# node-config keys a SuperNode passes to its ClientApp
NC_CLIENT = "partition-id"  # the fedsim client id (Flower's conventional key)
NC_DATA = "fedsim-data"  # path of the client's own .npz, "" = the scenario's partition
NC_FAULT = "fedsim-fault"  # testing only: make this client misbehave (see client_app.FAULTS)

INSECURE_WARNING = ("WARNING: --insecure: traffic between server and clients is NOT encrypted and any "
                    "client may join. Use only on a trusted network, for trials.")


@dataclass(frozen=True)
class ServerOptions:
    """How `serve` runs the server side (the `fedsim deploy server` flags).

    Timeouts are in seconds: `client_timeout` per job, `wait_clients` for every client to
    connect, `run_timeout` for the whole run (None = no limit).
    """

    host: str = "127.0.0.1"  # where the Control/Runtime API (HTTP) listens
    port: int | None = None  # its port (free port when None)
    fleet: str | None = None  # HOST:PORT of the gRPC Fleet API (default HOST:9092)
    tls: d.ServerTls | None = None
    insecure: bool = False
    node_keys: tuple[Path, ...] = ()  # public keys allowed to join (node auth on when given)
    attach: str | None = None  # HOST:PORT of a running SuperLink's Control API
    attach_ca: Path | None = None
    client_timeout: float = 600.0
    wait_clients: float = 600.0
    run_timeout: float | None = None
    clock: str = "wall"  # async scenarios: engine.clock of the deployed run (real arrival order)
    client_app: str | None = None  # MODULE:ATTR of the user's own Flower ClientApp (None = fedsim's)
    app_dir: Path | None = None  # the user's Flower project folder, shipped to the nodes in the app bundle
    client_api: str = "message"  # the user's ClientApp: "message" (@app.train) or "numpy" (NumPyClient)


def say(msg: str) -> None:
    """Default log function: print and flush (progress lines must show up at once)."""
    print(msg, flush=True)


def tls_from_dir(folder: Path) -> d.ServerTls:
    """The files `fedsim deploy certs` writes: ca.crt, server.pem, server.key."""
    return d.ServerTls(folder / "ca.crt", folder / "server.pem", folder / "server.key").check()


def public_keys(items: Sequence[str | Path]) -> tuple[Path, ...]:
    """Expand folders to their *.pub files."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.pub"))
            if not found:
                raise d.DeployError(f"--client-keys: no *.pub files in {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise d.DeployError(f"--client-keys: {p} does not exist")
    return tuple(out)


def with_clock(scenario, clock: str):
    """`scenario` with `engine.clock` set for an async run.

    Sync rounds keep the virtual clock: a round waits for every participant, so arrival order
    does not change the result.

    Args:
        scenario: the scenario.
        clock: "wall" (commit in real arrival order) or "virtual".

    Returns:
        The scenario, replaced only when it is async and its clock differs.

    Raises:
        DeployError: for another clock name.
    """
    from dataclasses import replace

    if clock not in ("wall", "virtual"):
        raise d.DeployError(f"--clock must be wall or virtual, got {clock!r}")
    if scenario.engine.mode != "async" or scenario.engine.clock == clock:
        return scenario
    return replace(scenario, engine=replace(scenario.engine, clock=clock))


def with_drop_on_client_error(scenario, log: Callable[[str], None] = say):
    """`scenario` with `engine.on_client_error: drop`, as every deployed run has.

    A real client's failure (or a malicious client's crafted error) must never stop the
    server, so a scenario's `raise` is overridden, with one message.

    Args:
        scenario: the scenario.
        log: receives the message when an explicit `raise` is overridden.

    Returns:
        The scenario, replaced only when its policy is not `drop` already.
    """
    from dataclasses import replace

    policy = getattr(scenario.engine, "on_client_error", None)
    if policy == "drop":
        return scenario
    if policy == "raise":
        log("engine.on_client_error: raise is ignored by the deploy server (a client's failure is a drop)")
    return replace(scenario, engine=replace(scenario.engine, on_client_error="drop"))


def check_deployable_stages(scenario) -> None:
    """Refuse, in one line, update-pipeline stages that the engine only simulates (fedsim.pipeline).

    Local DP noise, compression and secure aggregation model what a client does before it
    sends; in a deployed run the engine would apply them to what already arrived in the clear,
    so the clients' messages would be neither private, nor compressed, nor masked. Central DP
    is the server's own step and runs as in simulation.

    Args:
        scenario: the scenario.

    Raises:
        DeployError: naming the block.
    """
    dp, comp, secagg = (getattr(scenario, k, None) for k in ("dp", "compression", "secagg"))
    if getattr(type(dp), "location", None) == "local":
        raise d.DeployError("dp: {name: local} is simulated by the server on what arrived, so real clients' "
                            "messages would not be private: use dp: {name: central}, or add noise in the client")
    if comp is not None and not getattr(type(comp), "identity", True):
        raise d.DeployError("compression: simulated on the virtual clock only; a deployed client sends its full "
                            "update: use compression: {name: none}")
    if getattr(type(secagg), "active", False):
        raise d.DeployError("secagg: simulated only (the server would see every update in the clear); Flower's "
                            "SecAgg+ workflow is not wired into fedsim's server (docs/secure-aggregation.md)")


def check_own_client_app(scenario, opts: ServerOptions) -> None:
    """Refuse, in one line, what a user's own ClientApp cannot run.

    Args:
        scenario: the scenario.
        opts: the server options (`client_app`, `app_dir`, `client_api`).

    Raises:
        DeployError: for a bad MODULE:ATTR, a missing app folder, an unknown API or a strategy
            whose clients need fedsim's client rule.
    """
    from fedsim.flower import standard

    module, sep, attr = str(opts.client_app).partition(":")
    if not sep or not module or not attr:
        raise d.DeployError(f"--client-app {opts.client_app!r}: expected MODULE:ATTRIBUTE (e.g. myapp.client_app:app)")
    if opts.client_api not in standard.APIS:
        raise d.DeployError(f"--client-api must be one of {', '.join(standard.APIS)}, got {opts.client_api!r}")
    if opts.app_dir is not None and not Path(opts.app_dir).is_dir():
        raise d.DeployError(f"--app-dir {opts.app_dir} is not a folder")
    try:
        standard.check_strategy(scenario.strategy)
    except ValueError as exc:
        raise d.DeployError(f"--client-app: {exc}") from None


def own_app_config(scenario, app_dir: Path | None) -> dict[str, object]:
    """The run config a stock ClientApp reads: its own pyproject's, then the scenario's training keys.

    Args:
        scenario: the scenario (its `client:` block and rounds).
        app_dir: the user's Flower project (its `[tool.flwr.app.config]` is kept), or None.

    Returns:
        The user's config keys, with `lr`, `batch-size`, `local-steps`, `num-server-rounds` and
        (when the scenario sets it) `local-epochs` taken from the scenario.
    """
    import tomllib

    out: dict[str, object] = {}
    pyproject = Path(app_dir) / "pyproject.toml" if app_dir else None
    if pyproject is not None and pyproject.is_file():
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        out.update(data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))
    c = scenario.client
    out.update({"lr": float(c.lr), "batch-size": int(c.batch_size), "local-steps": int(c.local_steps)})
    if c.local_epochs:
        out["local-epochs"] = int(c.local_epochs)
    if scenario.engine.mode == "sync":
        out["num-server-rounds"] = int(scenario.engine.rounds)
    return {k: v for k, v in out.items() if isinstance(v, (bool, int, float, str))}


def serve(scenario, out: Path, opts: ServerOptions, log: Callable[[str], None] = say,
          on_ready: Callable[[d.SuperLink], None] | None = None) -> Path:
    """Run `scenario` against deployed clients.

    Args:
        scenario: the validated scenario.
        out: the results folder.
        opts: the server options.
        log: receives one-line progress messages.
        on_ready: called once the SuperLink listens and the client keys are registered
            (clients whose keys are not registered yet are refused, so start them after this).

    Returns:
        The results folder.

    Raises:
        DeployError: for insecure use without --insecure, or any failed deployment step.
    """
    from fedsim import scenario as scenario_mod

    scenario = with_drop_on_client_error(with_clock(scenario, opts.clock), log)
    check_deployable_stages(scenario)
    if opts.client_app:
        check_own_client_app(scenario, opts)
    if opts.tls is None and not opts.insecure and opts.attach is None:
        raise d.DeployError("no TLS files: pass --tls-dir DIR (see `fedsim deploy certs`) or "
                            "--ca/--cert/--key, or --insecure for an unencrypted trial")
    if opts.attach is not None:
        d.split_address(opts.attach)
    if opts.insecure and opts.node_keys:
        raise d.DeployError("--client-keys needs TLS (Flower refuses node authentication with --insecure)")
    if opts.insecure:
        log(INSECURE_WARNING)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    home = out / "deploy"  # FLWR_HOME of this server: connection config, logs, unpacked app
    home.mkdir(exist_ok=True)
    sl: d.SuperLink | None = None
    run_proc: d.Proc | None = None
    try:
        if opts.attach:
            ca = opts.attach_ca or (opts.tls.ca if opts.tls else None)
            sl = d.SuperLink(None, opts.attach, "", None)
            d.write_connection(home, opts.attach, ca)
            log(f"attached to SuperLink {opts.attach}")
        else:
            fleet_host, fleet_port = d.split_address(opts.fleet) if opts.fleet else (opts.host, 9092)
            sl = d.start_superlink(home, host=opts.host, control_port=opts.port, fleet_host=fleet_host,
                                   fleet_port=fleet_port, tls=opts.tls, node_auth=bool(opts.node_keys))
            d.write_connection(home, sl.control, opts.tls.ca if opts.tls else None)
            auth = (f"node authentication on ({len(opts.node_keys)} keys)" if opts.node_keys
                    else "node authentication OFF: any client may join")
            assert sl.proc is not None
            log(f"SuperLink up (pid {sl.proc.pid}): clients connect to {sl.fleet} "
                f"(gRPC{', TLS' if opts.tls else ''}); {auth}; log {sl.proc.log}")
        for key in opts.node_keys:
            node = d.register_node(home, key)
            log(f"registered {key.name} (node {node})")
        if on_ready is not None:
            on_ready(sl)
        resolved = home / "scenario.yaml"
        resolved.write_text(scenario_mod.to_yaml(scenario), encoding="utf-8")
        run_config = {
            RC_SCENARIO: str(resolved), RC_OUT: str(out), RC_NODES: int(scenario.data.num_clients),
            RC_JOB_TIMEOUT: float(opts.client_timeout), RC_CONNECT_TIMEOUT: float(opts.wait_clients),
        }
        if opts.client_app:
            run_config = {**own_app_config(scenario, opts.app_dir), **run_config,
                          RC_CLIENT_API: opts.client_api}
            log(f"clients run your ClientApp {opts.client_app} ({opts.client_api} API; standard Flower messages)")
        app = d.write_app(home / "app", run_config, client_app=opts.client_app or d.CLIENT_APP,
                          sources=opts.app_dir)
        log(f"waiting for {scenario.data.num_clients} clients, then running {scenario.name!r}; "
            f"results: {out}")
        run_proc = d.flwr_run(home, app, home / "run.log")
        deadline = None if opts.run_timeout is None else time.monotonic() + opts.run_timeout
        relayed = 0
        while run_proc.alive():
            relayed = _relay(run_proc.log_text(), relayed, log)
            if deadline is not None and time.monotonic() > deadline:
                raise d.DeployError(f"the run did not finish within {opts.run_timeout:g} s "
                                    f"(log: {run_proc.log})")
            time.sleep(0.5)
        _relay(run_proc.log_text(), relayed, log)
        if not (out / "summary.json").is_file():
            tail = " | ".join(run_proc.log_text().strip().splitlines()[-4:])
            raise d.DeployError(f"the run ended without results (exit {run_proc.popen.returncode}; "
                                f"log {run_proc.log}): {tail}")
        _note_deployment(out / "summary.json", sl, opts)
        return out
    finally:
        if run_proc is not None:
            run_proc.stop()
        if sl is not None:
            sl.stop()
        shutil.rmtree(home / "apps", ignore_errors=True)


_RELAYED = re.compile(r"^(node \d+ excluded: .*|every Flower node .*|error: .*)$", re.MULTILINE)


def _relay(text: str, done: int, log: Callable[[str], None]) -> int:
    """Pass the ServerApp's exclusion and error lines from the streamed run log to `log`.

    Args:
        text: the run log so far.
        done: how many such lines were passed already.
        log: receives each new line.

    Returns:
        The number passed so far.
    """
    lines = _RELAYED.findall(text)
    for line in lines[done:]:
        log(line.strip())
    return len(lines)


def _note_deployment(path: Path, sl: d.SuperLink, opts: ServerOptions) -> None:
    """Say in summary.json that this run was deployed, and how.

    The scenario's `executor` block was not used: the jobs went to real clients.
    """
    import json

    summary = json.loads(path.read_text(encoding="utf-8"))
    summary["executor"] = "deploy"
    summary["deploy"] = {"fleet_api": sl.fleet or None, "transport": "grpc-rere",
                         "tls": opts.tls is not None or (opts.attach is not None and not opts.insecure),
                         "node_auth": bool(opts.node_keys), "registered_keys": [p.name for p in opts.node_keys],
                         "attached": opts.attach is not None, "job_timeout": opts.client_timeout}
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class ClientOptions:
    """How `run_client` / `start_client` run one client (the `fedsim deploy client` flags).

    `data` is the client's own .npz (None = its partition of the scenario's data), `ca` and
    `key` the CA certificate and node key, `home` its FLWR_HOME.
    """

    server: str  # HOST:PORT of the SuperLink's Fleet API
    client_id: int
    data: Path | None = None
    ca: Path | None = None
    key: Path | None = None
    insecure: bool = False
    home: Path | None = None
    fault: str = ""  # testing only


def client_node_config(opts: ClientOptions) -> dict[str, object]:
    """The node config the SuperNode hands its ClientApp: client id, data path and test fault."""
    cfg: dict[str, object] = {NC_CLIENT: int(opts.client_id),
                              NC_DATA: str(Path(opts.data).resolve()) if opts.data else ""}
    if opts.fault:
        cfg[NC_FAULT] = opts.fault
    return cfg


def start_client(opts: ClientOptions, log: Callable[[str], None] = say, **kwargs) -> d.Proc:
    """Start a SuperNode for client `opts.client_id` (returns at once).

    Args:
        opts: the client options.
        log: receives the --insecure warning.
        **kwargs: passed to `deploy.start_supernode` (retries, environment).

    Returns:
        The SuperNode process.

    Raises:
        DeployError: for a bad address or id, missing files, or --insecure with --ca.
    """
    d.split_address(opts.server)
    if opts.client_id < 0:
        raise d.DeployError(f"--client-id must be >= 0, got {opts.client_id}")
    if opts.ca is None and not opts.insecure:
        raise d.DeployError("no CA certificate: pass --ca CA.crt (the server's CA), or --insecure for an "
                            "unencrypted trial")
    if opts.insecure and opts.ca is not None:
        raise d.DeployError("--insecure and --ca exclude each other")
    if opts.key is not None and not Path(opts.key).is_file():
        raise d.DeployError(f"--key {opts.key} does not exist")
    if opts.ca is not None and not Path(opts.ca).is_file():
        raise d.DeployError(f"--ca {opts.ca} does not exist")
    if opts.data is not None and not Path(opts.data).is_file():
        raise d.DeployError(f"--data {opts.data} does not exist")
    if opts.insecure:
        log(INSECURE_WARNING)
    home = Path(opts.home) if opts.home else Path.cwd() / f".fedsim-client-{opts.client_id}"
    return d.start_supernode(home, opts.server, client_node_config(opts), ca=opts.ca, private_key=opts.key,
                             name=f"client {opts.client_id}", **kwargs)


def run_client(opts: ClientOptions, log: Callable[[str], None] = say) -> int:
    """`fedsim deploy client`: run a SuperNode in the foreground until it exits or Ctrl-C.

    Its log is echoed to stdout; the SuperNode is stopped on the way out.

    Args:
        opts: the client options.
        log: receives one-line progress messages.

    Returns:
        0 when the SuperNode exited cleanly, 1 otherwise, 130 on Ctrl-C.
    """
    proc = start_client(opts, log)
    log(f"client {opts.client_id}: SuperNode pid {proc.pid} dialling {opts.server} over gRPC; log {proc.log}")
    shown = 0
    try:
        while proc.alive():
            text = proc.log_text()
            if len(text) > shown:
                sys.stdout.write(text[shown:])
                sys.stdout.flush()
                shown = len(text)
            time.sleep(0.5)
        sys.stdout.write(proc.log_text()[shown:])
        return 0 if proc.popen.returncode == 0 else 1
    except KeyboardInterrupt:
        return 130
    finally:
        proc.stop()
