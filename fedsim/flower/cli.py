"""`fedsim deploy {certs,server,client}`: argument parsing and printing only."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from fedsim.errors import ScenarioError
from fedsim.scenario.loading import load

EXIT_BAD_INPUT = 2

DESCRIPTION = """Run a scenario's strategy with real clients: a Flower 1.39 SuperLink, one SuperNode per
client, gRPC between them, TLS and node authentication (docs/how-to-deploy.md).

  fedsim deploy certs creds/ --hosts 127.0.0.1 localhost --clients 3
  fedsim deploy server scenarios/deploy.yaml --tls-dir creds/ --client-keys creds/ --out runs/deploy
  fedsim deploy client --server 127.0.0.1:9092 --client-id 0 --ca creds/ca.crt --key creds/client_0
"""


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


class Terminated(Exception):
    """SIGTERM arrived."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def cmd_certs(args: argparse.Namespace) -> int:
    """`fedsim deploy certs DIR`: write a self-signed test CA, server certificate and client key pairs.

    Args:
        args: the parsed command line.

    Returns:
        The exit status: 0, or 2 if the files cannot be made.
    """
    from fedsim.flower.certs import make_credentials

    try:
        cr = make_credentials(Path(args.dir), hosts=args.hosts, clients=args.clients, days=args.days)
    except (ValueError, OSError) as exc:
        return _err(f"deploy certs: {exc}")
    print(f"wrote test credentials to {cr.dir} (self-signed, for trials only):")
    print(f"  CA certificate      {cr.ca_cert}   (give to every client: --ca)")
    print(f"  server cert / key   {cr.server_cert}, {cr.server_key}   (SAN: {', '.join(args.hosts)})")
    for k, key in enumerate(cr.client_keys):
        print(f"  client {k} key pair   {key}  (+ .pub, registered by the server)")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    """`fedsim deploy server`: start (or attach to) a SuperLink and run the scenario's strategy on it.

    Args:
        args: the parsed command line.

    Returns:
        The exit status: 0 on success, 2 for a bad scenario or deployment error, 130 on Ctrl-C or SIGTERM.
    """
    from fedsim.flower import deploy as d
    from fedsim.flower import serve

    extra = [s for s in args.overrides if "=" not in s]
    if extra:
        return _err(f"unexpected argument(s) {' '.join(extra)} (overrides look like key.path=value)")
    try:
        sc = load(args.scenario, args.overrides)
    except ScenarioError as exc:
        return _err(str(exc))
    try:
        tls = None
        attach_ca = None
        if args.superlink:  # attach: only the CA that signed the running SuperLink's certificate
            if args.cert or args.key:
                return _err("deploy server: --superlink attaches to a running SuperLink; give only --ca")
            attach_ca = Path(args.tls_dir) / "ca.crt" if args.tls_dir else (Path(args.ca) if args.ca else None)
            if attach_ca is not None and not attach_ca.is_file():
                return _err(f"deploy server: CA certificate {attach_ca} does not exist")
            if attach_ca is None and not args.insecure:
                return _err("deploy server: --superlink needs --ca (its CA certificate) or --insecure")
        elif args.tls_dir:
            tls = serve.tls_from_dir(Path(args.tls_dir))
        elif args.ca or args.cert or args.key:
            if not (args.ca and args.cert and args.key):
                return _err("deploy server: give all of --ca, --cert and --key (or --tls-dir)")
            tls = d.ServerTls(Path(args.ca), Path(args.cert), Path(args.key)).check()
        if tls is not None and args.insecure:
            return _err("deploy server: --insecure and TLS files exclude each other")
        opts = serve.ServerOptions(
            host=args.host, port=args.port, fleet=args.fleet_address, tls=tls, insecure=args.insecure,
            node_keys=serve.public_keys(args.client_keys), attach=args.superlink, attach_ca=attach_ca,
            client_timeout=args.client_timeout, wait_clients=args.wait_clients, run_timeout=args.run_timeout,
            clock=args.clock, client_app=args.client_app, app_dir=Path(args.app_dir) if args.app_dir else None,
            client_api=args.client_api)
        from fedsim.runner import default_out

        signal.signal(signal.SIGTERM, _terminate)  # run the cleanup (stop the SuperLink) on SIGTERM too
        out = serve.serve(sc, Path(args.out) if args.out else default_out(sc), opts)
    except d.DeployError as exc:
        return _err(f"deploy server: {exc}")
    except (KeyboardInterrupt, Terminated):
        print("interrupted: SuperLink stopped; results written so far are kept", file=sys.stderr)
        return 130
    print(f"results: {out}")
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    """`fedsim deploy client`: run one SuperNode holding one client's data until the server stops.

    Args:
        args: the parsed command line.

    Returns:
        The exit status: 0 when the SuperNode exits cleanly, else 1; 2 for a deployment error, 130 on
        Ctrl-C, 143 on SIGTERM.
    """
    from fedsim.flower import deploy as d
    from fedsim.flower import serve

    opts = serve.ClientOptions(server=args.server, client_id=args.client_id,
                               data=Path(args.data) if args.data else None,
                               ca=Path(args.ca) if args.ca else None, key=Path(args.key) if args.key else None,
                               insecure=args.insecure, home=Path(args.home) if args.home else None,
                               fault=args.fault or "")
    signal.signal(signal.SIGTERM, _terminate)  # stop the SuperNode on SIGTERM too
    try:
        return serve.run_client(opts)
    except d.DeployError as exc:
        return _err(f"deploy client: {exc}")
    except Terminated:
        return 143


def add_parser(sub) -> None:
    """Add `deploy` and its subcommands to the top-level subparsers `sub`."""
    p = sub.add_parser("deploy", help="run a scenario with real clients over gRPC (Flower SuperLink/SuperNodes)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = p.add_subparsers(dest="deploy_command", required=True)

    c = dsub.add_parser("certs", help="write a self-signed test CA, server certificate and client keys")
    c.add_argument("dir")
    c.add_argument("--hosts", nargs="+", default=["127.0.0.1", "::1", "localhost"],
                   help="addresses/DNS names clients dial (the certificate's SAN)")
    c.add_argument("--clients", type=int, default=3, help="number of client key pairs")
    c.add_argument("--days", type=int, default=30)
    c.set_defaults(func=cmd_certs)

    s = dsub.add_parser("server", help="start a SuperLink and run the scenario's strategy against clients")
    s.add_argument("scenario")
    s.add_argument("overrides", nargs="*", help="key.path=value overrides")
    s.add_argument("--out", help="results folder (default runs/<name>/<timestamp>)")
    s.add_argument("--host", default="127.0.0.1", help="bind address of both APIs (default 127.0.0.1; "
                   "0.0.0.0 to accept clients from other machines)")
    s.add_argument("--port", type=int, help="Control/Runtime API port (HTTP(S); default: a free port)")
    s.add_argument("--fleet-address", help="HOST:PORT of the gRPC Fleet API clients dial (default HOST:9092)")
    s.add_argument("--tls-dir", help="folder with ca.crt, server.pem, server.key (`fedsim deploy certs`)")
    s.add_argument("--ca", help="CA certificate (PEM)")
    s.add_argument("--cert", help="server certificate (PEM)")
    s.add_argument("--key", help="server private key (PEM)")
    s.add_argument("--client-keys", nargs="+", default=[], metavar="PUB",
                   help="public keys (or folders of *.pub) of the clients allowed to join; turns node "
                        "authentication on")
    s.add_argument("--insecure", action="store_true", help="no TLS (prints a warning; trials only)")
    s.add_argument("--superlink", metavar="HOST:PORT", help="attach to a running SuperLink's Control API "
                   "instead of starting one (with --ca for its CA)")
    s.add_argument("--client-timeout", type=float, default=600.0,
                   help="seconds a client job may take before it is recorded as failed")
    s.add_argument("--wait-clients", type=float, default=600.0,
                   help="seconds to wait for every client to connect before the first round")
    s.add_argument("--run-timeout", type=float, help="give up after this many seconds")
    s.add_argument("--clock", choices=["wall", "virtual"], default="wall",
                   help="async scenarios: commit updates in the order clients really return them, with "
                        "wall-clock times (wall, default), or in the simulated order of the virtual clock")
    s.add_argument("--client-app", metavar="MODULE:ATTR", help="the clients run your own Flower ClientApp "
                   "(e.g. myapp.client_app:app) instead of fedsim's; the server then speaks the standard Flower "
                   "messages (docs/how-to-deploy.md, 'If you already have a Flower ClientApp')")
    s.add_argument("--app-dir", help="your Flower project folder: its files are shipped to the nodes with the run")
    s.add_argument("--client-api", choices=["message", "numpy"], default="message",
                   help="your ClientApp's API: message (@app.train, default) or numpy (NumPyClient via client_fn)")
    s.set_defaults(func=cmd_server)

    k = dsub.add_parser("client", help="start a SuperNode that trains this client's partition")
    k.add_argument("--server", required=True, metavar="HOST:PORT", help="the server's Fleet API (gRPC) address")
    k.add_argument("--client-id", type=int, required=True, help="fedsim client id (its data partition)")
    k.add_argument("--data", help="train on this .npz (x_train, y_train[, x_test, y_test]) instead of the "
                   "scenario's partition")
    k.add_argument("--ca", help="the server's CA certificate (PEM)")
    k.add_argument("--key", help="this client's private key (OpenSSH ECDSA; `fedsim deploy certs`)")
    k.add_argument("--insecure", action="store_true", help="no TLS (prints a warning; trials only)")
    k.add_argument("--home", help="working folder of this client (default ./.fedsim-client-<id>)")
    k.add_argument("--fault", help=argparse.SUPPRESS)  # testing only: see fedsim/flower/client_app.py
    k.set_defaults(func=cmd_client)
