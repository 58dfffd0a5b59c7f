"""Every scenario shipped in scenarios/ loads and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.scenario import load

SCENARIOS = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_scenario_loads(path):
    sc = load(path)
    assert sc.name == path.stem
