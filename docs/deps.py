"""The package's dependency picture, generated from its imports.

    python docs/deps.py          # writes docs/dependencies.md (mermaid) and docs/dependencies.png
    python docs/deps.py --check  # exit 1 on an import circle or an import running up a floor

Every ``import``/``from`` of ``bdd_engine`` inside the package counts, including imports
inside functions (they hide circles as well as top-level ones do). Sub-modules of a
package (``explorer/``, ``autolabel/``) are drawn as their package. ``LAYERS`` is the
design: a module may import its own floor or any floor below, never one above, and the
graph must have no cycle. docs/DESIGN.md describes the same floors.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "bdd_engine"

# floor → modules (bottom first). One concept per module; a floor only imports downward.
LAYERS: dict[str, tuple[str, ...]] = {
    "0 foundations": ("env", "sections", "geometry", "weights", "config", "checkpoint", "executor"),
    "1 data": ("bdd", "images", "synth", "slices", "viz", "artifacts", "synthvideo", "ingest"),
    "2 models and metrics": ("evaluate", "confusion", "yolo", "backends", "train", "embed", "curate", "mine", "collect", "pretrain", "attributes"),
    "3 labelling and experiment": ("autolabel", "gates", "tracking", "experiment", "benchstamp", "report", "figures", "explorer", "standin", "anyfolder", "trainfolder", "labelissues"),
    "4 presentation": ("views", "casestudy"),
    "5 section runners": ("flywheel",),
    "6 entry points": ("runner", "__main__"),
}
FLOOR = {m: i for i, mods in enumerate(LAYERS.values()) for m in mods}


def module_name(path: Path) -> str:
    """bdd_engine/explorer/db.py → explorer; bdd_engine/train.py → train."""
    rel = path.relative_to(PKG).with_suffix("")
    return rel.parts[0]


def imports(path: Path) -> set[str]:
    """The package modules ``path`` imports (anywhere in the file)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative import inside a sub-package: from .db import x
                base = module_name(path)
                out.add(base)
                continue
            if mod == "bdd_engine":
                out |= {a.name for a in node.names}
            elif mod.startswith("bdd_engine."):
                out.add(mod.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("bdd_engine.")}
    return out


def graph() -> dict[str, set[str]]:
    """module → the package modules it imports (the package's own __init__ excluded)."""
    files = [p for p in sorted(PKG.rglob("*.py")) if not (p.name == "__init__.py" and p.parent == PKG)]
    known = {module_name(p) for p in files}
    g: dict[str, set[str]] = {}
    for p in files:
        src = module_name(p)
        g.setdefault(src, set()).update(m for m in imports(p) if m in known and m != src)
    return g


def problems(g: dict[str, set[str]]) -> list[str]:
    """Unplaced modules, imports that run up a floor, and import cycles."""
    out = [f"{m} is on no floor (add it to LAYERS in docs/deps.py and to docs/DESIGN.md)" for m in g if m not in FLOOR]
    out += [f"{a} (floor {FLOOR[a]}) imports {b} (floor {FLOOR[b]}): up a floor"
            for a, deps in g.items() for b in deps if a in FLOOR and b in FLOOR and FLOOR[b] > FLOOR[a]]
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                out.append("import cycle: " + " -> ".join(stack[stack.index(m):] + [n, m]) if m in stack
                           else f"import cycle: {n} -> {m}")
            elif m not in state:
                visit(m, stack + [n])
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n, [])
    return out


def mermaid(g: dict[str, set[str]]) -> str:
    lines = ["flowchart BT"]
    for i, (floor, mods) in enumerate(LAYERS.items()):
        lines.append(f'  subgraph L{i}["{floor}"]')
        lines += [f"    {m.strip('_') or m}[{m}]" for m in mods if m in g]
        lines.append("  end")
    for a in sorted(g):
        lines += [f"  {a.strip('_')} --> {b.strip('_')}" for b in sorted(g[a])]
    return "\n".join(lines)


def draw(g: dict[str, set[str]], path: Path) -> None:
    """Floors as rows (bottom = foundations), an arrow per import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = {}
    for i, mods in enumerate(LAYERS.values()):
        present = [m for m in mods if m in g]
        for j, m in enumerate(present):
            pos[m] = ((j + 0.5) / max(1, len(present)), i)
    fig, ax = plt.subplots(figsize=(12, 7))
    for a, deps in g.items():
        for b in deps:
            if a in pos and b in pos:
                ax.annotate("", xy=pos[b], xytext=pos[a],
                            arrowprops=dict(arrowstyle="->", color="#8899aa", lw=0.7, shrinkA=12, shrinkB=12))
    for m, (x, y) in pos.items():
        ax.text(x, y, m, ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.3", fc="#eef3fb", ec="#4a6fa5"))
    for i, floor in enumerate(LAYERS):
        ax.text(-0.02, i, floor, ha="right", va="center", fontsize=9, color="#333")
    ax.set_xlim(-0.35, 1.02)
    ax.set_ylim(-0.6, len(LAYERS) - 0.4)
    ax.axis("off")
    ax.set_title("bdd_engine: imports point down the floors (generated by docs/deps.py)")
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check; exit 1 on a problem")
    args = ap.parse_args(argv)
    g = graph()
    bad = problems(g)
    for b in bad:
        print(b)
    if args.check:
        return 1 if bad else 0
    md = ROOT / "docs" / "dependencies.md"
    md.write_text("# Package dependencies (generated by `python docs/deps.py`; do not edit)\n\n"
                  "Arrows point from the importing module to the imported one; floors from bottom to top. "
                  "See docs/DESIGN.md for what each module is.\n\n```mermaid\n" + mermaid(g) + "\n```\n\n"
                  "![dependencies](dependencies.png)\n")
    draw(g, ROOT / "docs" / "dependencies.png")
    print(f"wrote {md} and docs/dependencies.png ({len(g)} modules, {sum(map(len, g.values()))} imports)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
