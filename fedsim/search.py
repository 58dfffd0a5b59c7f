"""`fedsim sweep --optuna`: hyperparameter search with Optuna's TPE sampler, one run folder per trial.

Every trial is a normal fedsim run (one per seed) in its own subfolder of the sweep folder,
named from the trial number and its parameters (`trial-0003__client.lr=0.0123__seed=0`), so
`fedsim compare` and `fedsim plot` work on the folder as on a grid sweep. The objective is
one key of the run's final metrics record (mean over seeds when there are several).

Determinism: trials run one after another, and the sampler of trial n is a fresh
`TPESampler(seed=seed_of(root, "optuna", n) % 2**32)` (root = the scenario's seed), so trial n's
parameters depend only on the finished trials 0..n-1 and n — never on timing. The study lives
in the sweep folder (`optuna.journal`, Optuna's JournalStorage with a file backend): running
the same command again resumes, re-running a trial that was interrupted with the parameters
it had already drawn and reusing its finished seeds, so an interrupted search ends with the
same trials as an uninterrupted one. `trials.csv` and `optuna.json` (the best trial and every
trial) are rewritten after each trial.

TPE: J. Bergstra, R. Bardenet, Y. Bengio and B. Kégl, "Algorithms for Hyper-Parameter
Optimization", NeurIPS 2011 (Sec. 4); Optuna: T. Akiba, S. Sano, T. Yanase, T. Ohta and M.
Koyama, KDD 2019. Optuna starts TPE with 10 random trials (`n_startup_trials`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from fedsim import seeding
from fedsim.errors import RunError, ScenarioError, SweepError
from fedsim.scenario.loading import load, to_yaml
from fedsim.sweep import _finished, default_out, folder_name

KINDS = ("float", "loguniform", "int", "logint", "choice")
STUDY = "fedsim"
SYNTAX = "expected KEY=float:LO:HI, loguniform:LO:HI, int:LO:HI, logint:LO:HI or choice:A,B,..."


@dataclass(frozen=True)
class Param:
    """One searched scenario key: `kind` from KINDS, bounds or choices."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()

    def spec(self) -> str:
        """The `--param` text that gives this parameter back."""
        if self.kind == "choice":
            return f"{self.key}=choice:{','.join(self.choices)}"
        fmt = (lambda v: str(int(v))) if self.kind in ("int", "logint") else repr
        return f"{self.key}={self.kind}:{fmt(self.low)}:{fmt(self.high)}"

    def bounds(self) -> list[Any]:
        """The values that span the range (checked against the scenario before anything runs)."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind in ("int", "logint"):
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


@dataclass(frozen=True)
class SearchResult:
    """What a search did: the folder, every trial as in optuna.json, and the best one (or None)."""

    out: Path
    trials: tuple[dict[str, Any], ...]
    best: dict[str, Any] | None
    ran: int


def parse_param(item: str) -> Param:
    """Parse one `--param KEY=KIND:...` flag.

    Args:
        item: e.g. `client.lr=loguniform:1e-3:1`, `client.local_steps=int:1:20`,
            `strategy.name=choice:fedavg,fedprox`.

    Returns:
        The parameter.

    Raises:
        SweepError: one line for a bad key, kind, bound or choice list.
    """
    key, sep, rest = item.partition("=")
    key = key.strip()
    kind, _, args = rest.partition(":")
    kind = kind.strip()
    if not sep or not key or any(not p for p in key.split(".")) or kind not in KINDS or not args:
        raise SweepError(f"--param {item!r}: {SYNTAX}")
    if key == "seed":
        raise SweepError(f"--param {item!r}: the seed is not a hyperparameter (use --seeds)")
    if kind == "choice":
        from fedsim.sweep import split_values

        vals = tuple(split_values(args))
        if any(v == "" for v in vals) or len(set(vals)) != len(vals) or len(vals) < 2:
            raise SweepError(f"--param {item!r}: choices must be two or more distinct non-empty values")
        return Param(key, kind, choices=vals)
    parts = args.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        conv = int if kind in ("int", "logint") else float
        low, high = (conv(p) for p in parts)
    except ValueError:
        want = "integers" if kind in ("int", "logint") else "numbers"
        raise SweepError(f"--param {item!r}: {kind} takes LO:HI, two {want}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise SweepError(f"--param {item!r}: needs LO < HI, both finite")
    if kind in ("loguniform", "logint") and low <= 0:
        raise SweepError(f"--param {item!r}: a log scale needs LO > 0")
    return Param(key, kind, float(low), float(high))


def _suggest(trial: Any, p: Param) -> Any:
    if p.kind == "choice":
        return trial.suggest_categorical(p.key, list(p.choices))
    if p.kind in ("int", "logint"):
        return trial.suggest_int(p.key, int(p.low), int(p.high), log=p.kind == "logint")
    return trial.suggest_float(p.key, p.low, p.high, log=p.kind == "loguniform")


def _override(key: str, value: Any) -> str:
    return f"{key}={repr(value) if isinstance(value, float) else value}"  # repr: the exact float


def _label(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_folder(number: int, params: dict[str, Any], seed: int | None) -> str:
    """The subfolder of one trial's run: `trial-0003__client.lr=0.0123[__seed=0]`.

    Args:
        number: the Optuna trial number.
        params: the trial's parameters (floats shown with 4 significant digits).
        seed: the run's seed when `--seeds` is given, else None.

    Returns:
        A folder name (unique by its trial number).
    """
    pairs = [("trial", f"{number:04d}"), *((k, _label(v)) for k, v in params.items())]
    if seed is not None:
        pairs.append(("seed", str(seed)))
    return folder_name(pairs).replace("trial=", "trial-", 1)


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise SweepError("--optuna needs the optuna package (pip install 'fedsim[optuna]')") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _run_seed(scenario: str, overrides: list[str], folder: Path, objective: str) -> float | None:
    """Run (or reuse the finished run of) one seed of a trial; its objective value (None = not finite).

    Raises:
        RunError: the run failed.
        SweepError: the objective is not a key of the final metrics.
    """
    from fedsim.runner import run

    with contextlib.redirect_stderr(io.StringIO()):  # override notes were shown at validation
        sc = load(scenario, overrides)
    if _finished(folder, to_yaml(sc)):
        final = json.loads((folder / "summary.json").read_text(encoding="utf-8"))["final"]
    else:
        final = run(sc, folder).final
    if objective not in final:
        raise SweepError(f"--objective {objective!r}: not in the final metrics; one of: "
                         f"{', '.join(k for k, v in final.items() if isinstance(v, (int, float)))}")
    value = final[objective]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _row(t: Any) -> dict[str, Any]:
    return {"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
            "values": t.user_attrs.get("values"), "folders": t.user_attrs.get("folders", []),
            "error": t.user_attrs.get("error")}


def _write_summary(out: Path, study: Any, definition: dict[str, Any], params: Sequence[Param]) -> SearchResult:
    rows = [_row(t) for t in study.trials]
    done = [r for r in rows if r["state"] == "COMPLETE"]
    best = None
    if done:
        pick = max if definition["direction"] == "maximize" else min
        best = pick(done, key=lambda r: r["value"])  # ties: the first such trial (max/min keep it)
    (out / "optuna.json").write_text(json.dumps({**definition, "best": best, "trials": rows}, indent=2) + "\n",
                                     encoding="utf-8")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["number", "state", "value", *(p.key for p in params), "folders", "error"])
    for r in rows:
        w.writerow([r["number"], r["state"], "" if r["value"] is None else repr(r["value"]),
                    *(_csv(r["params"].get(p.key)) for p in params), ";".join(r["folders"]), r["error"] or ""])
    (out / "trials.csv").write_text(buf.getvalue(), encoding="utf-8")
    return SearchResult(out, tuple(rows), best, 0)


def _csv(v: Any) -> str:
    return "" if v is None else repr(v) if isinstance(v, float) else str(v)


def search(scenario: str | Path, params: Sequence[str], trials: int, objective: str = "test_accuracy",
           direction: str = "maximize", seeds: Sequence[int] | None = None, fixed: Sequence[str] = (),
           out: str | Path | None = None, on_event: Callable[[str, str], None] | None = None) -> SearchResult:
    """Run (or resume) an Optuna search until the study holds `trials` finished trials.

    Args:
        scenario: the scenario file.
        params: `--param` strings (see `parse_param`).
        trials: the total number of trials of the study (a rerun with a larger number extends it).
        objective: a key of the final metrics record (`test_accuracy`, `test_loss`, ...).
        direction: `maximize` or `minimize`.
        seeds: each trial runs once per seed and scores the mean; None = the scenario's seed.
        fixed: `key=value` overrides applied to every run.
        out: the sweep folder; default `runs/<name>/sweep-<time>`.
        on_event: `on_event(name, status)` reports 'start'/'done'/'fail: ...' per run folder.

    Returns:
        Every trial and the best one.

    Raises:
        SweepError: bad flags, a folder holding a different search, or an objective that is not
            a metric; ScenarioError: the scenario does not validate at a parameter's bounds.
    """
    if trials < 1:
        raise SweepError(f"--trials {trials}: must be >= 1")
    if direction not in ("maximize", "minimize"):
        raise SweepError(f"--direction {direction!r}: maximize or minimize")
    ps = [parse_param(p) for p in params]
    if not ps:
        raise SweepError("--optuna needs at least one --param KEY=KIND:...")
    if len({p.key for p in ps}) != len(ps):
        raise SweepError("the same key is given to --param twice")
    scenario = str(scenario)
    root = load(scenario, fixed).seed
    for p in ps:  # every key and both ends of its range validate before anything runs
        for v in p.bounds():
            with contextlib.redirect_stderr(io.StringIO()):
                load(scenario, [*fixed, _override(p.key, v)])
    optuna = _import_optuna()
    out = Path(out) if out is not None else default_out(scenario, fixed)
    out.mkdir(parents=True, exist_ok=True)
    definition = {"scenario": scenario, "fixed": list(fixed), "params": [p.spec() for p in ps],
                  "objective": objective, "direction": direction, "seeds": None if seeds is None else list(seeds),
                  "sampler": f"TPESampler(seed=seed_of({root}, 'optuna', trial number) % 2**32)"}
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(out / "optuna.journal")))
    study = optuna.create_study(storage=storage, study_name=STUDY, direction=direction, load_if_exists=True)
    stored = study.user_attrs.get("definition")
    if stored is None:
        study.set_user_attr("definition", definition)
    elif stored != definition:
        changed = ", ".join(k for k in definition if stored.get(k) != definition[k])
        raise SweepError(f"{out} holds a different search ({changed} differ); use another --out")
    study_id = storage.get_study_id_from_name(STUDY)
    note = on_event or (lambda name, status: None)
    seed_list: list[int | None] = list(seeds) if seeds is not None else [None]
    ran = 0

    while True:
        states = [t.state.name for t in study.trials]
        pending = [t for t in study.trials if t.state.name == "RUNNING"]  # interrupted: same params again
        if pending and set(pending[0].params) != {p.key for p in ps}:  # stopped while drawing them
            study.tell(pending[0].number, state=optuna.trial.TrialState.FAIL)
            continue
        if pending:
            number, values = pending[0].number, dict(pending[0].params)
        elif sum(s in ("COMPLETE", "FAIL", "PRUNED") for s in states) >= trials:
            break
        else:
            seed = seeding.seed_of(root, "optuna", len(study.trials)) % 2**32  # numpy's RandomState range
            study.sampler = optuna.samplers.TPESampler(seed=seed)
            trial = study.ask()
            number, values = trial.number, {p.key: _suggest(trial, p) for p in ps}
        folders, scores, error = [], [], None
        for s in seed_list:
            name = trial_folder(number, values, s)
            folders.append(name)
            overrides = [*fixed, *(_override(k, v) for k, v in values.items())]
            if s is not None:
                overrides.append(f"seed={s}")
            note(name, "start")
            try:
                score = _run_seed(scenario, overrides, out / name, objective)
            except (ScenarioError, RunError, ValueError, RuntimeError) as exc:
                if isinstance(exc, SweepError):
                    raise
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                note(name, f"fail: {error}")
                break
            note(name, "done")
            if score is None:
                error = f"{objective} is not a finite number"
                break
            scores.append(score)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        storage.set_trial_user_attr(trial_id, "folders", folders)
        if error is None:
            storage.set_trial_user_attr(trial_id, "values", scores)
            study.tell(number, sum(scores) / len(scores))
        else:
            storage.set_trial_user_attr(trial_id, "error", error)
            study.tell(number, state=optuna.trial.TrialState.FAIL)
        ran += 1
        _write_summary(out, study, definition, ps)
    res = _write_summary(out, study, definition, ps)
    return SearchResult(out, res.trials, res.best, ran)
