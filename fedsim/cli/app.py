"""Command line: parsing and printing only; each subcommand calls one public function.

Examples:
  fedsim run scenarios/quickstart.yaml
  fedsim run scenarios/quickstart.yaml strategy.server_lr=0.5 engine.rounds=20 --out runs/try
  fedsim validate scenarios/*.yaml
  fedsim list strategies
  fedsim sweep scenarios/quickstart.yaml --seeds 0..2 --set strategy.weighting=examples,uniform --out runs/sw
  fedsim sweep scenarios/quickstart.yaml --optuna --trials 20 --param client.lr=loguniform:1e-3:1 --out runs/opt
  fedsim plot runs/sw --kind all
  fedsim compare runs/sw
  fedsim trace convert client_device_capacity devices.csv
  fedsim deploy --help
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from fedsim.errors import RunDataError, RunError, ScenarioError, SweepError
from fedsim.scenario.loading import load

EXIT_BAD_INPUT = 2


def _error(exc: BaseException | str) -> None:
    """Print a user-facing error: one `error:` line per problem it reports."""
    for line in str(exc).splitlines() or [""]:
        print(f"error: {line}", file=sys.stderr)


def _first_line(obj: object) -> str:
    doc = (obj.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def cmd_list(args: argparse.Namespace) -> int:
    """`fedsim list FAMILY`: each plugin's name and the first line of its docstring.

    Args:
        args: the parsed command line.

    Returns:
        The exit status: 0, or 2 for an unknown family (with a did-you-mean hint).
    """
    from fedsim import registry

    fams = registry.LISTINGS
    if args.family not in fams:
        import difflib

        close = difflib.get_close_matches(args.family, fams, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"fedsim list: unknown family {args.family!r}{hint}; one of: {', '.join(fams)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    table = registry.table(fams[args.family][0])
    width = max(len(k) for k in table)
    for name, cls in table.items():
        print(f"{name:<{width}}  {_first_line(cls)}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """`fedsim validate FILE...`: load and validate each scenario, one line per file.

    Args:
        args: the parsed command line.

    Returns:
        The exit status: 0 when all are valid, else 2 (each error on stderr).
    """
    bad = 0
    for path in args.files:
        try:
            sc = load(path, args.overrides)
            print(f"ok  {path}  ({sc.name}: {sc.engine.mode}, {sc.data.num_clients} clients)")
        except ScenarioError as exc:
            _error(exc)
            bad += 1
    return EXIT_BAD_INPUT if bad else 0


def _split_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    overrides = [s for s in items if "=" in s]
    other = [s for s in items if "=" not in s]
    return other, overrides


def cmd_run(args: argparse.Namespace) -> int:
    """`fedsim run`: run a scenario (or `--resume RUN_DIR`), showing progress.

    Args:
        args: the parsed command line.

    Returns:
        The exit status: 0 on success, 2 for a bad scenario or a run error, 130 when interrupted.
    """
    extra, overrides = _split_overrides(args.overrides)
    if args.resume:  # the scenario comes from the run folder; nothing may change it
        if args.scenario or args.overrides or args.out:
            print("error: --resume RUN_DIR takes no scenario, overrides or --out", file=sys.stderr)
            return EXIT_BAD_INPUT
        args.scenario, args.out = str(Path(args.resume) / "scenario.resolved.yaml"), args.resume
    elif args.scenario is None:
        print("error: fedsim run needs a scenario file (or --resume RUN_DIR)", file=sys.stderr)
        return EXIT_BAD_INPUT
    if extra:
        print(f"error: unexpected argument(s) {' '.join(extra)} (overrides look like key.path=value)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        sc = load(args.scenario, overrides)
    except ScenarioError as exc:
        _error(exc)
        return EXIT_BAD_INPUT
    from fedsim.cli.progress import run_with_progress

    try:
        result = run_with_progress(sc, Path(args.out) if args.out else None, quiet=args.quiet,
                                   resume=bool(args.resume))
    except RunError as exc:
        print(f"error: {args.scenario}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: results written so far are kept", file=sys.stderr)
        return 130
    print(f"results: {result.out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """`fedsim plot RUN...`: draw figures from run folders.

    Args:
        args: the parsed command line.

    Returns:
        The exit status: 0, or 2 for an unreadable run folder.
    """
    from fedsim.results.plots import plot

    try:
        for path in plot(args.runs, args.kind, args.output, args.weight_key, args.contribution_key):
            print(f"wrote {path}")
    except RunDataError as exc:
        _error(exc)
        return EXIT_BAD_INPUT
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """`fedsim compare RUN...`: print the comparison table and write it as Markdown and CSV.

    Args:
        args: the parsed command line.

    Returns:
        The exit status: 0, or 2 for an unreadable run folder.
    """
    from fedsim.results import compare
    from fedsim.results.plots import default_out_dir
    from fedsim.results.rundata import find_runs

    try:
        table = compare.compare(args.runs, args.target, args.per_run)
        out = Path(args.output) if args.output else default_out_dir(find_runs(args.runs)).parent / "compare"
        compare.print_table(table)
        md, csv = compare.write(table, out)
    except RunDataError as exc:
        _error(exc)
        return EXIT_BAD_INPUT
    print(f"wrote {md} and {csv}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """`fedsim sweep`: run a grid of overrides × seeds, reporting each point on stderr.

    Args:
        args: the parsed command line.

    Returns:
        The exit status: 0 when every point ran or was done already, 1 if some failed, 2 for bad
        flags, 130 when interrupted.
    """
    from fedsim.sweep import parse_seeds, sweep

    extra, fixed = _split_overrides(args.overrides)
    if extra:
        print(f"error: unexpected argument(s) {' '.join(extra)} (overrides look like key.path=value)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.optuna or args.params or args.trials is not None:
        return _optuna_sweep(args, fixed)
    try:
        seeds = parse_seeds(args.seeds) if args.seeds is not None else None
        res = sweep(args.scenario, args.sets, seeds, fixed, args.out, args.jobs, args.force,
                    on_event=lambda name, status: print(f"{status:<6} {name}", file=sys.stderr))
    except (SweepError, ScenarioError) as exc:
        _error(exc)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; run the same command to resume", file=sys.stderr)
        return 130
    print(f"results: {res.out} ({len(res.ran)} ran, {len(res.skipped)} already done, {len(res.failed)} failed)")
    for name, why in res.failed:
        print(f"failed: {name}: {why}", file=sys.stderr)
    return 1 if res.failed else 0


def cmd_trace(args: argparse.Namespace) -> int:
    """`fedsim trace convert IN OUT`: FedScale pickle <-> fedsim's plain trace schema (docs/traces.md).

    Args:
        args: the parsed command line.

    Returns:
        The exit status: 0, or 2 for an unreadable, unsafe or mismatched trace.
    """
    from fedsim.world import traces

    try:
        kind = traces.convert(args.src, args.dst, args.kind)
    except ValueError as exc:
        _error(exc)
        return EXIT_BAD_INPUT
    print(f"wrote {args.dst} ({'device capacities' if kind == 'device' else 'availability'})")
    return 0


def _optuna_sweep(args: argparse.Namespace, fixed: list[str]) -> int:
    """`fedsim sweep --optuna`: an Optuna search (fedsim.search); exit codes as cmd_sweep's."""
    from fedsim.search import search
    from fedsim.sweep import parse_seeds

    try:
        if not args.optuna:
            raise SweepError("--param and --trials belong to an Optuna search: add --optuna")
        if args.sets or args.force or args.jobs != 1:
            raise SweepError("--optuna takes --param, not --set; trials run one at a time (no --jobs), and a "
                             "rerun resumes the search (no --force: use another --out)")
        seeds = parse_seeds(args.seeds) if args.seeds is not None else None
        res = search(args.scenario, args.params, args.trials if args.trials is not None else 20, args.objective,
                     args.direction, seeds, fixed, args.out,
                     on_event=lambda name, status: print(f"{status:<6} {name}", file=sys.stderr))
    except (SweepError, ScenarioError) as exc:
        _error(exc)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: finished trials are kept; run the same command to resume", file=sys.stderr)
        return 130
    failed = [t for t in res.trials if t["state"] == "FAIL"]
    print(f"results: {res.out} ({len(res.trials)} trials, {res.ran} ran now, {len(failed)} failed)")
    if res.best is not None:
        print(f"best: trial {res.best['number']} {args.objective}={res.best['value']:.6g} "
              + " ".join(f"{k}={v}" for k, v in res.best["params"].items()))
    for t in failed:
        print(f"failed: trial {t['number']}: {t['error']}", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    """The `fedsim` argument parser, one subcommand per `cmd_*` function (plus `deploy`)."""
    parser = argparse.ArgumentParser(prog="fedsim", description="Deterministic federated-learning simulator.",
                                     epilog=__doc__.split("Examples:", 1)[1] if __doc__ else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true", help="show Ray/Flower logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a scenario")
    p.add_argument("scenario", nargs="?")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")
    p.add_argument("--out", help="results folder (default runs/<name>/<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check scenario files without running them")
    p.add_argument("files", nargs="+")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("list", help="list a plugin family")
    p.add_argument("family", help="strategies|datasets|partitions|models|participation|probs|compute|executors|robust")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("plot", help="draw figures from run folders (or folders of runs)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--output", help="figure file; .png/.svg/.pdf (default RUN_DIR/plots/KIND.png)")
    p.add_argument("--kind", default="all",
                   choices=["convergence", "fairness", "participation", "async", "contributions", "privacy",
                            "communication", "all"])
    p.add_argument("--weight-key", default="fedau_weight", help="clients.jsonl column of weight estimates")
    p.add_argument("--contribution-key", default="fedce_contribution",
                   help="clients.jsonl column of contribution estimates")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("compare", help="table of final/fairness/time-to-target numbers across runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--output", help="writes OUTPUT.md and OUTPUT.csv (default beside the runs)")
    p.add_argument("--target", type=float, help="target accuracy (or distance/loss for regression)")
    p.add_argument("--per-run", action="store_true", help="one row per run instead of per scenario")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sweep", help="run a grid of overrides x seeds into one folder")
    p.add_argument("scenario")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides applied to every run")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=V1,V2",
                   help="a grid axis (repeatable)")
    p.add_argument("--seeds", help="0..4 or 0,1,5 (default: the scenario's seed)")
    p.add_argument("--out", help="sweep folder (default runs/<name>/sweep-<timestamp>)")
    p.add_argument("--jobs", type=int, default=1, help="parallel runs (inline executor only)")
    p.add_argument("--force", action="store_true", help="rerun combinations that already finished")
    p.add_argument("--optuna", action="store_true", help="Optuna (TPE) search instead of a grid: docs/trackers.md")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="KEY=KIND:LO:HI",
                   help="--optuna: a searched key, KIND float|loguniform|int|logint (or choice:A,B,...)")
    p.add_argument("--trials", type=int, help="--optuna: trials in the study (default 20; a rerun resumes)")
    p.add_argument("--objective", default="test_accuracy", help="--optuna: final-metrics key (default test_accuracy)")
    p.add_argument("--direction", default="maximize", choices=["maximize", "minimize"], help="--optuna")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("trace", help="device and availability traces (FedScale format)")
    trace_sub = p.add_subparsers(dest="trace_command", required=True)
    p = trace_sub.add_parser("convert", help="FedScale pickle -> .csv (devices) / .jsonl (availability), or back")
    p.add_argument("src", help="a FedScale pickle, devices .csv or availability .jsonl")
    p.add_argument("dst", help=".csv / .jsonl for fedsim's plain schema; any other name writes a pickle")
    p.add_argument("--kind", choices=["device", "behave"], help="expected kind (default: from the content)")
    p.set_defaults(func=cmd_trace)

    from fedsim.flower.cli import (
        add_parser as add_deploy,  # fedsim deploy {certs,server,client}
    )

    add_deploy(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fedsim` command.

    Unexpected exceptions (bugs) print one line; `--verbose` shows the traceback instead.

    Args:
        argv: the arguments (default: sys.argv[1:]); overrides may follow options for `run`.

    Returns:
        The subcommand's exit status, or 1 for an internal error.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # overrides may follow options: run s.yaml --out x a=1
    if extra:
        if args.command != "run":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.verbose:
        os.environ["FEDSIM_VERBOSE"] = "1"
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 — a bug in fedsim: one line, traceback on --verbose
        if args.verbose:
            raise
        msg = " ".join(str(exc).split())[:500]
        print(f"internal error: {type(exc).__name__}: {msg} (rerun with --verbose for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
