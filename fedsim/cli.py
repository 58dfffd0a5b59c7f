"""Command line: parsing and printing only; each subcommand calls one public function.

Examples:
  fedsim run scenarios/quickstart.yaml
  fedsim run scenarios/quickstart.yaml strategy.server_lr=0.5 engine.rounds=20 --out runs/try
  fedsim validate scenarios/*.yaml
  fedsim list strategies
  fedsim deploy --help
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

EXIT_BAD_INPUT = 2


def _families() -> dict[str, tuple[str, str]]:
    # list name -> (module, table attribute)
    return {
        "strategies": ("strategies", "STRATEGIES"),
        "datasets": ("fedsim.datasets", "DATASETS"),
        "partitions": ("fedsim.partition", "PARTITIONERS"),
        "models": ("fedsim.models", "MODELS"),
        "participation": ("fedsim.participation", "MODELS"),
        "probs": ("fedsim.participation", "PROBS"),
        "compute": ("fedsim.system", "COMPUTE"),
        "executors": ("fedsim.executors", "EXECUTORS"),
    }


def _first_line(obj: object) -> str:
    doc = (obj.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def cmd_list(args: argparse.Namespace) -> int:
    import importlib

    fams = _families()
    if args.family not in fams:
        import difflib

        close = difflib.get_close_matches(args.family, fams, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"fedsim list: unknown family {args.family!r}{hint}; one of: {', '.join(fams)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    module, attr = fams[args.family]
    table = getattr(importlib.import_module(module), attr)
    width = max(len(k) for k in table)
    for name, cls in table.items():
        print(f"{name:<{width}}  {_first_line(cls)}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from fedsim.scenario import ScenarioError, load

    bad = 0
    for path in args.files:
        try:
            sc = load(path, args.overrides)
            print(f"ok  {path}  ({sc.name}: {sc.engine.mode}, {sc.data.num_clients} clients)")
        except ScenarioError as exc:
            print(f"error: {exc}", file=sys.stderr)
            bad += 1
    return EXIT_BAD_INPUT if bad else 0


def _split_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    overrides = [s for s in items if "=" in s]
    other = [s for s in items if "=" not in s]
    return other, overrides


def cmd_run(args: argparse.Namespace) -> int:
    from fedsim.scenario import ScenarioError, load

    extra, overrides = _split_overrides(args.overrides)
    if extra:
        print(f"error: unexpected argument(s) {' '.join(extra)} (overrides look like key.path=value)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        sc = load(args.scenario, overrides)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from fedsim.progress import run_with_progress
    from fedsim.run import RunError

    try:
        result = run_with_progress(sc, Path(args.out) if args.out else None, quiet=args.quiet)
    except RunError as exc:
        print(f"error: {args.scenario}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: results written so far are kept", file=sys.stderr)
        return 130
    print(f"results: {result.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsim", description="Deterministic federated-learning simulator.",
                                     epilog=__doc__.split("Examples:", 1)[1] if __doc__ else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true", help="show Ray/Flower logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a scenario")
    p.add_argument("scenario")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")
    p.add_argument("--out", help="results folder (default runs/<name>/<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check scenario files without running them")
    p.add_argument("files", nargs="+")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("list", help="list a plugin family")
    p.add_argument("family", help="strategies|datasets|partitions|models|participation|probs|compute|executors")
    p.set_defaults(func=cmd_list)

    from fedsim.flower.cli import add_parser as add_deploy  # fedsim deploy {certs,server,client}

    add_deploy(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        os.environ["FEDSIM_VERBOSE"] = "1"
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
