"""Regenerate docs/results.md and docs/figures/: one section per scenario in scenarios/,
each with its figures and comparison table, from runs made by `fedsim sweep`.

    python docs/make_results.py                    # every scenario (a few minutes on 2 cores)
    python docs/make_results.py --only quickstart  # rerun some; the others reuse finished runs
    python docs/make_results.py --rounds 20        # smaller budget for a quick look

What each scenario compares comes from comment lines in the scenario file, else from the
`COMPARE` table below, else the scenario is run as it is:

    # compare: strategy.name=fedavg,fedau          (a sweep axis; repeatable)
    # results: seeds=0..2 engine.rounds=80         (gallery settings: seeds, fixed overrides)

Runs go to runs/results/<scenario>/ (one subfolder per combination) and are reused when
they already hold a finished run of the same resolved scenario, so adding a scenario only
runs the new one (`--force` reruns everything, e.g. after a change to the engine). Sync
rounds are capped at --rounds and async runs at --versions model versions
(engine.max_versions) to keep the whole gallery small; the overrides used are printed in each
section.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

# Scenarios without `# compare:` lines: name -> sweep axes (`key=v1,v2`).
COMPARE: dict[str, list[str]] = {
    "quickstart": ["strategy.weighting=examples,uniform"],
    "async_comparison": ["strategy.name=fedbuff,fedfix,async_fedavg"],
    "async_linreg_fedfix": ["strategy.name=fedbuff,fedfix,async_fedavg"],
    "admm_noise_robust": ["strategy.name=admm,admm_standard,fedavg"],
    "fedspeed_iclr2023": ["strategy.name=fedspeed,fedavg"],
    "fedau_iclr2024": ["strategy.name=fedau,average_participating,known_probability"],
    "fedce_cvpr2023": ["strategy.name=fedce,fedavg"],
}
# Scenarios without a `# results:` line: name -> fixed gallery overrides. Async comparisons
# get a virtual-time budget (equal for every strategy) instead of the version cap.
RESULTS: dict[str, list[str]] = {
    "async_comparison": ["engine.max_time=20"],
    "async_linreg_fedfix": ["engine.max_time=60"],
    "admm_noise_robust": ["engine.rounds=300"],  # the claim is about the steady state
    "fedau_iclr2024": ["engine.rounds=150"],  # bias shows after the transient; 300 in the file
}
DEFAULT_SEEDS = "0..2"
DEFAULT_ROUNDS = 60
DEFAULT_VERSIONS = 300


@dataclass(frozen=True)
class Plan:
    name: str  # file stem
    path: Path
    description: str
    sets: tuple[str, ...]
    fixed: tuple[str, ...]
    seeds: str


def read_plan(path: Path, rounds: int, seeds: str | None = None, versions: int = 300) -> Plan:
    """The scenario's header comments -> what the gallery runs."""
    from fedsim.scenario.loading import load

    lines = path.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line[1:].strip())
    sets = [m.group(1).strip() for h in header if (m := re.match(r"compare:\s*(.+)", h))]
    items = [item for h in header if (m := re.match(r"results:\s*(.+)", h)) for item in m.group(1).split()]
    if not any(re.match(r"results:", h) for h in header):
        items = list(RESULTS.get(path.stem, []))
    plan_seeds = next((i.split("=", 1)[1] for i in items if i.startswith("seeds=")), DEFAULT_SEEDS)
    fixed = [i for i in items if not i.startswith("seeds=")]
    if not sets:
        sets = COMPARE.get(path.stem, [])
    described: list[str] = []  # the header's prose up to its first example command
    for h in header:
        if re.match(r"(compare|results):", h) or re.match(r"[A-Z][a-z]+:\s", h):  # `Run: ...` lines
            continue
        if re.match(r"(fedsim|python) ", h) or "fedsim run" in h:
            if described:
                break
            continue
        described.append(h)
    description = " ".join(described)
    sc = load(path, fixed)
    budget = {i.split("=", 1)[0] for i in fixed}
    if sc.engine.mode == "sync" and sc.engine.rounds > rounds and "engine.rounds" not in budget:
        fixed.append(f"engine.rounds={rounds}")
    elif (sc.engine.mode == "async" and not budget & {"engine.max_time", "engine.max_versions", "engine.max_updates"}
          and (sc.engine.max_versions is None or sc.engine.max_versions > versions)):
        fixed.append(f"engine.max_versions={versions}")
    return Plan(path.stem, path, description, tuple(sets), tuple(fixed), seeds or plan_seeds)


def run_plan(plan: Plan, runs: Path, jobs: int, force: bool = False) -> Path:
    from fedsim.sweep import parse_seeds, sweep

    out = runs / plan.name
    res = sweep(plan.path, plan.sets, parse_seeds(plan.seeds), plan.fixed, out, jobs, force,
                on_event=lambda n, s: print(f"  {s:<6} {plan.name}/{n}", file=sys.stderr))
    if res.failed:
        raise RuntimeError(f"{plan.name}: {len(res.failed)} run(s) failed, first: {res.failed[0][1]}")
    return out


def section(plan: Plan, out: Path, figures: Path) -> str:
    from fedsim.results import compare, plots
    from fedsim.results.rundata import find_runs, group_runs

    groups = group_runs(find_runs([out]))
    kinds = ["convergence"] + [k for k in ("fairness", "async", "contributions", "privacy", "communication")
                                if plots.applicable(k, groups)]
    if any(plots.WEIGHT_KEY in r.client_keys() for g in groups for r in g.runs):
        kinds.append("participation")
    rel = []
    for k in kinds:
        path = plots.save(plots.FIGURES[k](groups), figures / f"{plan.name}-{k}.png")
        rel.append((k, path.relative_to(DOCS).as_posix()))
    table = compare.compare([out])
    rel_path = plan.path.relative_to(ROOT).as_posix()
    cmd = " ".join(["fedsim sweep", rel_path, *plan.fixed, "--seeds", plan.seeds,
                    *[f"--set {shlex.quote(s)}" for s in plan.sets], f"--out runs/results/{plan.name}"])
    lines = [f"## {plan.name}", "", f"Scenario: [`{rel_path}`](../{rel_path})."
             + (f" {plan.description}" if plan.description else ""), "",
             f"Compared: {', '.join(f'`{s}`' for s in plan.sets) or 'the scenario as written'}; "
             f"seeds {plan.seeds}; gallery overrides: {', '.join(f'`{f}`' for f in plan.fixed) or 'none'}.", "",
             "Reproduce:", "", "```bash", cmd, f"fedsim plot runs/results/{plan.name}",
             f"fedsim compare runs/results/{plan.name}", "```", ""]
    lines += [f"![{plan.name} {k}]({p})" for k, p in rel] + [""]
    lines += [compare.to_markdown(table)]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="scenario names to (re)run; others reuse their finished runs")
    ap.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="cap on engine.rounds (sync)")
    ap.add_argument("--versions", type=int, default=DEFAULT_VERSIONS, help="cap on engine.max_versions (async)")
    ap.add_argument("--seeds", help=f"override every scenario's seeds (default {DEFAULT_SEEDS})")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "results"), help="where the runs go")
    ap.add_argument("--jobs", type=int, default=1, help="parallel runs per scenario")
    ap.add_argument("--force", action="store_true",
                    help="rerun finished runs too (after code changes that alter results)")
    args = ap.parse_args(argv)
    runs, figures = Path(args.runs), DOCS / "figures"
    sections, t0 = [], time.perf_counter()
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        try:
            plan = read_plan(path, args.rounds, args.seeds, args.versions)
        except Exception as exc:  # a scenario this build cannot load: say so in the page
            sections.append(f"## {path.stem}\n\nNot included: {str(exc).splitlines()[0]}\n")
            print(f"skip {path.name}: {exc}", file=sys.stderr)
            continue
        print(f"{plan.name}: {len(plan.sets)} axis/axes, seeds {plan.seeds}", file=sys.stderr)
        out = runs / plan.name
        if args.only is None or plan.name in args.only:
            run_plan(plan, runs, args.jobs, args.force)
        elif not out.exists():
            sections.append(f"## {plan.name}\n\nNot run yet: `python docs/make_results.py --only {plan.name}`.\n")
            continue
        sections.append(section(plan, out, figures))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip() or "unknown"
    head = ["# Results gallery", "",
            "<!-- Generated by docs/make_results.py; do not edit by hand. -->", "",
            "One section per scenario in `scenarios/`: convergence (mean ± std over seeds; accuracy and "
            "loss against rounds, virtual time and wall time), fairness across clients, and a comparison "
            "table. Budgets are reduced so the whole page regenerates in minutes on a laptop CPU: numbers "
            "show trends, not the papers' final accuracies. Wall times depend on the machine.", "",
            f"Generated from commit `{commit}` on {time.strftime('%Y-%m-%d')} with "
            f"`python docs/make_results.py --rounds {args.rounds} --versions {args.versions}`.", ""]
    (DOCS / "results.md").write_text("\n".join(head + sections).rstrip() + "\n", encoding="utf-8")
    print(f"wrote docs/results.md ({len(sections)} sections) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
