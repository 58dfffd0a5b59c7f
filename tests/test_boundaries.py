"""The layering of fedsim's packages, enforced.

Two kinds of check:
* static: every import in fedsim/ and strategies/ (module level and inside functions, but
  not `if TYPE_CHECKING:` blocks) goes from a package to one it may depend on (`ALLOWED`),
  and the module import graph has no cycle;
* dynamic: in a fresh interpreter, importing a layer (or running `fedsim validate`) leaves
  the heavy libraries it must not need out of `sys.modules`.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASE = {"errors", "types", "seeding", "registry"}

# package -> the fedsim packages it may import (besides itself and BASE). "strategies" is the
# top-level package of algorithms; every other name is a fedsim subpackage or top-level module.
ALLOWED: dict[str, set[str]] = {
    "errors": set(), "types": set(), "seeding": set(), "registry": {"strategies"},
    "scenario": set(),
    "strategy": {"scenario"},
    "data": {"scenario"},
    "world": {"scenario"},
    "results": set(),
    "training": {"scenario", "data", "results", "strategy"},
    "pipeline": {"scenario", "strategy"},  # update stages: DP, compression, secure aggregation
    "engine": {"scenario", "world", "strategy", "results", "pipeline"},
    "executors": {"scenario", "data", "training", "strategy", "strategies"},  # vectorized: batched client rules
    "runner": {"scenario", "data", "world", "training", "engine", "executors", "results", "strategy", "pipeline"},
    "sweep": {"scenario", "runner", "results"},
    "search": {"scenario", "runner", "sweep"},  # fedsim sweep --optuna
    "cli": {"scenario", "runner", "sweep", "results", "flower", "world", "search"},  # world: fedsim trace convert
    "flower": {"scenario", "data", "training", "engine", "executors", "runner", "results", "strategy"},
    "strategies": {"scenario", "strategy"},
    "__init__": {"scenario", "runner", "strategy"},
    "__main__": {"cli"},
}


@functools.cache
def _modules() -> dict[str, Path]:
    out = {}
    for top in ("fedsim", "strategies"):
        for path in (ROOT / top).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "strategies":
        return "strategies"
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every fedsim/strategies import outside TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            mods = _modules()  # cached: one tree walk per session
            # `from fedsim.engine import checkpoint` imports the submodule fedsim.engine.checkpoint
            out += [(node.lineno, f"{name}.{a.name}" if f"{name}.{a.name}" in mods else name) for a in node.names]
    return [(ln, m) for ln, m in out if m.split(".")[0] in ("fedsim", "strategies")]


def test_packages_import_only_what_their_layer_allows():
    bad = []
    for module, path in sorted(_modules().items()):
        src = _package(module)
        for line, target in _imports(path, module):
            dst = _package(target)
            if dst == src or dst in BASE or dst in ALLOWED[src]:
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line}: {src} imports {target} ({dst})")
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_no_import_cycles():
    mods = _modules()
    graph = {m: sorted({t for _, t in _imports(p, m) if t in mods and t != m}) for m, p in mods.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _fresh(code: str) -> set[str]:
    """Top-level names in sys.modules after running `code` in a fresh interpreter."""
    res = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted({m.split('.')[0] "
                          "for m in sys.modules})))"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    return set(res.stdout.split())


HEAVY = {"torch", "flwr", "ray", "matplotlib"}
LIGHT_LAYERS = ["fedsim", "fedsim.scenario", "fedsim.registry", "fedsim.data.datasets", "fedsim.data.files",
                "fedsim.data.federated", "fedsim.world.participation", "fedsim.world.system", "fedsim.world.faults",
                "fedsim.engine.engine", "fedsim.engine.checkpoint", "fedsim.results.rundata",
                "fedsim.results.compare", "fedsim.strategy", "fedsim.training.models",
                "fedsim.pipeline.dp", "fedsim.pipeline.accounting", "fedsim.pipeline.compression",
                "fedsim.pipeline.secagg", "fedsim.world.traces", "fedsim.data.leaf", "fedsim.results.sinks"]


@pytest.mark.parametrize("module", LIGHT_LAYERS)
def test_light_layers_import_no_heavy_library(module):
    loaded = _fresh(f"import {module}")
    assert not loaded & HEAVY, f"import {module} loads {sorted(loaded & HEAVY)}"


def test_every_strategy_imports_without_torch_flwr_ray():
    from strategies import STRATEGIES

    modules = [entry.split(":")[0] for entry in STRATEGIES.values()]
    code = "import importlib\n" + "\n".join(f"importlib.import_module({m!r})" for m in modules)
    loaded = _fresh(code)
    assert not loaded & HEAVY, sorted(loaded & HEAVY)


def test_core_run_imports_no_flwr_ray_matplotlib():
    loaded = _fresh("import fedsim.runner, fedsim.executors.inline, fedsim.training.runtime")
    assert "torch" in loaded  # sanity: the probe does see heavy imports
    assert not loaded & {"flwr", "ray", "matplotlib"}, sorted(loaded & {"flwr", "ray", "matplotlib"})


def test_fedsim_validate_imports_no_torch():
    scenarios = sorted(str(p) for p in (ROOT / "scenarios").glob("*.yaml"))
    loaded = _fresh("import sys\nfrom fedsim.cli import app\n"
                    f"rc = app.main(['validate', *{scenarios!r}])\nassert rc == 0, rc")
    assert not loaded & HEAVY, f"fedsim validate loads {sorted(loaded & HEAVY)}"
