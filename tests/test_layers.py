"""The package's layering (docs/deps.py): no import circle, no import up a floor, every
module placed on a floor, and the committed picture matches the code."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _deps():
    spec = importlib.util.spec_from_file_location("deps", ROOT / "docs" / "deps.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["deps"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_no_cycle_no_upward_import_every_module_placed():
    deps = _deps()
    g = deps.graph()
    assert deps.problems(g) == []
    assert {"flywheel", "checkpoint", "evaluate"} <= set(g)


def test_checker_bites_on_a_cycle_and_an_upward_import():
    deps = _deps()
    bad = {"checkpoint": {"flywheel"}, "flywheel": {"checkpoint"}, "mystery": set()}
    found = deps.problems(bad)
    assert any("up a floor" in p and p.startswith("checkpoint") for p in found)
    assert any(p.startswith("import cycle") for p in found)
    assert any(p.startswith("mystery is on no floor") for p in found)


def test_committed_picture_matches_the_code():
    deps = _deps()
    text = (ROOT / "docs" / "dependencies.md").read_text()
    committed = re.search(r"```mermaid\n(.*?)\n```", text, re.S).group(1)
    assert committed == deps.mermaid(deps.graph()), "run: python docs/deps.py"


def test_design_doc_names_every_floor_and_module():
    deps = _deps()
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    for floor, mods in deps.LAYERS.items():
        assert floor in design
        for m in mods:
            assert f"`{m}" in design, f"docs/DESIGN.md does not describe {m}"
