"""The generated reference pages are current, and the results script reads scenario headers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, DOCS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("page", ["reference-scenario.md", "reference-strategies.md"])
def test_reference_pages_are_current(page):
    pages = _module("make_reference").render()
    assert (DOCS / page).read_text(encoding="utf-8") == pages[page], (
        f"docs/{page} is out of date: run `python docs/make_reference.py` and commit the result")


def test_reference_covers_every_plugin_and_strategy():
    from fedsim import registry
    from strategies import STRATEGIES

    ref = _module("make_reference")
    scenario, strategies = ref.scenario_page(), ref.strategies_page()
    for fam in ref.FAMILY_PATHS:
        for name in registry.names(fam):
            assert f"### `{name}`" in scenario, (fam, name)
    for name in STRATEGIES:
        assert f"## {name}" in strategies


def test_arg_docs_parses_grouped_and_inline_fields():
    from fedsim.scenario.schema import ClientConfig, EngineConfig

    ref = _module("make_reference")
    eng = ref.arg_docs(EngineConfig)
    assert eng["max_versions"] == eng["max_time"] == eng["max_updates"]
    assert eng["max_time"].startswith("async stop conditions")
    cli = ref.arg_docs(ClientConfig)
    assert cli["batch_size"] == "B." and cli["lr"] == "γ, local learning rate."


def test_results_plan_reads_header_comments(tmp_path):
    res = _module("make_results")
    src = (DOCS.parent / "scenarios" / "quickstart.yaml").read_text()
    p = tmp_path / "mine.yaml"
    p.write_text("# A test scenario.\n# compare: strategy.weighting=examples,uniform\n"
                 "# compare: client.lr=0.1,0.05\n# results: seeds=0..1 client.local_steps=2\n" + src)
    plan = res.read_plan(p, rounds=10)
    assert plan.sets == ("strategy.weighting=examples,uniform", "client.lr=0.1,0.05")
    assert plan.seeds == "0..1" and plan.fixed == ("client.local_steps=2", "engine.rounds=10")
    assert plan.description.startswith("A test scenario. Digits")  # prose lines, commands skipped
    p.write_text("# Prose.\n# results: engine.rounds=99\n" + src)
    assert res.read_plan(p, rounds=10).fixed == ("engine.rounds=99",)  # an explicit budget is kept
    # no header: the script's table, and the scenario's own rounds when under the cap
    plan = res.read_plan(DOCS.parent / "scenarios" / "quickstart.yaml", rounds=1000)
    assert plan.sets == tuple(res.COMPARE["quickstart"]) and plan.fixed == ()


def test_results_page_has_every_scenario():
    text = (DOCS / "results.md").read_text(encoding="utf-8")
    for path in sorted((DOCS.parent / "scenarios").glob("*.yaml")):
        assert f"## {path.stem}" in text, f"docs/results.md lacks {path.stem}: run python docs/make_results.py"
    for ref in [line.split("](", 1)[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]:
        assert (DOCS / ref).is_file(), ref


def test_how_to_add_a_strategy_example_satisfies_the_contract_and_runs(tmp_path, monkeypatch):
    """The page's example is real code: it passes check_strategy, a misspelt copy does not, and it
    runs as an out-of-tree `module:Class` plugin from a scenario."""
    import dataclasses
    import re
    import sys

    from conftest import TINY, merge, read_metrics, run_raw

    import fedsim
    from fedsim.errors import ContractError

    text = (DOCS / "how-to-add-a-strategy.md").read_text(encoding="utf-8")
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    (tmp_path / "clipped_example.py").write_text(code, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    import clipped_example

    fedsim.check_strategy(clipped_example.ClippedFedAvg)
    broken = type("Broken", (), {"aggregat": lambda self: None, "modes": ("sync",), "__doc__": "x"})
    with pytest.raises(ContractError):
        fedsim.check_strategy(dataclasses.dataclass(frozen=True)(broken))
    run_raw(merge(TINY, strategy={"name": "clipped_example:ClippedFedAvg", "clip": 0.5}), tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    assert rows[-1]["test_loss"] < rows[0]["test_loss"]
    sys.modules.pop("clipped_example", None)
