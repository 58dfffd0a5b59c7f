"""Code style: `ruff check` is clean, and public API carries docstrings.

The ruff configuration lives in pyproject.toml ([tool.ruff]); ruff is a dev dependency.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedsim", "strategies")
MIN_COVERAGE = 0.95

EXCLUDED: tuple[str, ...] = ()  # every public object of fedsim/ and strategies/ counts


def _ruff() -> str | None:
    try:
        from ruff.__main__ import find_ruff_bin
    except ImportError:
        return shutil.which("ruff")
    try:
        return str(find_ruff_bin())
    except FileNotFoundError:
        return shutil.which("ruff")


def test_ruff_check_is_clean():
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    res = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", "."],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"ruff check found problems:\n{res.stdout}{res.stderr}"


def _public(name: str) -> bool:
    return not name.startswith("_")


def _api(tree: ast.Module) -> list[tuple[str, bool]]:
    """(qualified name, has docstring) for each public class, function and method.

    Public: no leading underscore, at module level or directly in a public class (methods of
    private classes and functions nested in functions are not API). Magic methods are skipped;
    their meaning is fixed by the language.
    """
    out = []

    def visit(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef) and _public(node.name):
                out.append((prefix + node.name, ast.get_docstring(node) is not None))
                visit(node.body, prefix + node.name + ".")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _public(node.name):
                if any(isinstance(d, ast.Name) and d.id == "overload" for d in node.decorator_list):
                    continue
                out.append((prefix + node.name, ast.get_docstring(node) is not None))

    visit(tree.body, "")
    return out


def test_docstring_coverage():
    found, missing = 0, []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(EXCLUDED):
                continue
            for name, documented in _api(ast.parse(path.read_text(encoding="utf-8"))):
                found += 1
                if not documented:
                    missing.append(f"{rel}:{name}")
    assert found > 0
    coverage = 1 - len(missing) / found
    assert coverage >= MIN_COVERAGE, (
        f"docstring coverage {coverage:.1%} of {found} public objects < {MIN_COVERAGE:.0%}; missing:\n"
        + "\n".join(missing))
