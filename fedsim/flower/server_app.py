"""fedsim's Flower `ServerApp`s: the engine runs inside the ServerApp's main function.

Its executor is a `GridExecutor` over the ServerApp's Grid.

- `hosting_app(body)`: a ServerApp whose main calls `body(grid, context)`; the `flower`
  executor uses it to run the engine of an ordinary `fedsim run` on Flower's simulation
  engine.
- `app`: the deployment entry point (`flwr run`), configured by run config keys:
  `scenario` (path to a scenario YAML on the server), `overrides` (space-separated
  `key.path=value`), `out` (results folder), `num-nodes` (SuperNodes to wait for),
  `job-timeout` / `connect-timeout` (wall seconds; set by `fedsim deploy server`),
  `client-api` ("" = fedsim's ClientApp; "message" or "numpy" = the user's own ClientApp,
  spoken to in the standard Flower contents of `fedsim.flower.standard`).
  fedsim's clients rebuild the federation from the resolved scenario sent with each message.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsim.flower.client_app import SCENARIO, SETUP_KEY, SHAPE
from fedsim.flower.grid import GridExecutor, NoNodesLeft
from fedsim.strategy.contracts import declared


def hosting_app(body: Callable[[Grid, Context], None]) -> ServerApp:
    """A ServerApp whose main function calls `body(grid, context)` (the `flower` executor's host).

    Args:
        body: runs the engine with the Grid Flower passes in.

    Returns:
        The ServerApp.
    """
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        body(grid, context)

    return server


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Deployment entry point: load the scenario named in the run config and run it on the Grid.

    Args:
        grid: Flower's Grid to the connected SuperNodes.
        context: carries the run config keys listed in the module docstring.
    """
    from fedsim import scenario as scenario_mod
    from fedsim.runner import build_data, run

    cfg = context.run_config
    sc = scenario_mod.load(str(cfg["scenario"]), str(cfg.get("overrides", "")).split())
    text = scenario_mod.to_yaml(sc)
    setup_config = {SETUP_KEY: hashlib.sha256(text.encode()).hexdigest(), SCENARIO: text}
    # shapes for clients that train on their own .npz (`fedsim deploy client --data`)
    data = build_data(sc)
    setup_config[SHAPE] = json.dumps({"num_clients": data.num_clients, "num_classes": data.num_classes,
                                      "input_shape": list(data.input_shape)})
    api = str(cfg.get("client-api", "")) or None
    standard_opts = {}
    if api is not None:  # the user's own ClientApp: standard contents, the model as a state_dict
        from fedsim.flower import standard

        standard.check_strategy(sc.strategy)
        standard_opts = {"client_api": api, "client_cfg": sc.client, "sends": declared(sc.strategy, "sends"),
                         "layout": standard.layout_of(sc.model, data.input_shape, data.num_classes)}
    executor = GridExecutor(grid, setup_config, int(cfg.get("num-nodes", 1)),
                            job_timeout=float(cfg.get("job-timeout", 3600.0)),
                            connect_timeout=float(cfg.get("connect-timeout", 600.0)),
                            up_type=declared(sc.strategy, "up_type"),
                            state_type=declared(sc.strategy, "client_state_type"), **standard_opts)
    out = Path(str(cfg["out"])) if "out" in cfg else None
    try:
        run(sc, out, executor=executor)
    except NoNodesLeft as exc:  # one line; metrics.jsonl and events.jsonl keep what was computed
        print(f"error: {exc}", flush=True)
