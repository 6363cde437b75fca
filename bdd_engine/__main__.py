"""Command line: ``python -m bdd_engine <command> --profile P``.

    synth     generate the synthetic BDD100K-format world for a profile
    run       execute notebook.py headless (jupytext + nbclient), optionally --from N
    status    which sections are fresh, and why the others are not
    evaluate  BDD-official detection eval of any GT/prediction JSON pair, per slice
    app       launch the FiftyOne App on the profile's dataset
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import bdd_engine  # noqa: F401  (offline-safe environment first)
from bdd_engine.config import load_config, parse_overrides
from bdd_engine.env import PROJECT_ROOT


def _cfg(args: argparse.Namespace):
    return load_config(args.profile, parse_overrides(args.set or []))


def cmd_synth(args: argparse.Namespace) -> int:
    from bdd_engine import synth

    cfg = _cfg(args)
    root = synth.generate(cfg, args.out, force=args.force)
    print(f"synthetic world ready: {root}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from bdd_engine.checkpoint import status

    print(status(_cfg(args)).to_string(index=False))
    return 0


def import_jupytext() -> Any:
    """``import jupytext`` without running our notebook.

    Without jupyter_server installed, jupytext falls back to ``import notebook.transutils``;
    with the project root on ``sys.path`` (``python -m`` puts the cwd there) that imports
    *our* ``notebook.py`` and executes it as a module. Hide the root for the import.
    """
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != PROJECT_ROOT.resolve()]
    try:
        import jupytext
    finally:
        sys.path[:] = saved
    return jupytext


def cmd_run(args: argparse.Namespace) -> int:
    """Execute notebook.py headless; the executed .ipynb is saved beside the outputs."""
    from nbclient import NotebookClient

    from bdd_engine.checkpoint import atomic_write_text

    jupytext = import_jupytext()
    cfg = _cfg(args)
    env = {"BDD_PROFILE": cfg.profile}
    for k, v in parse_overrides(args.set or []).items():
        env[f"BDD_{k.upper()}"] = str(v)
    if args.from_section:
        env["BDD_FROM"] = str(args.from_section)
    os.environ.update(env)  # the kernel inherits this process's environment
    nb = jupytext.read(PROJECT_ROOT / "notebook.py")
    client = NotebookClient(nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(PROJECT_ROOT)}})
    try:
        client.execute()
    finally:
        out = cfg.out / f"notebook_{cfg.profile}.ipynb"
        atomic_write_text(out, jupytext.writes(nb, fmt="ipynb"))
        print(f"executed notebook: {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace, rest: list[str]) -> int:
    from bdd_engine.evaluate import main_evaluate

    return int(main_evaluate(rest) or 0)


def cmd_app(args: argparse.Namespace, rest: list[str]) -> int:
    from bdd_engine.explorer import main_app

    return int(main_app(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("evaluate", "app"):  # these own their argument parsing
        ns = argparse.Namespace()
        return (cmd_evaluate if argv[0] == "evaluate" else cmd_app)(ns, argv[1:])
    p = argparse.ArgumentParser(prog="python -m bdd_engine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn in (("synth", cmd_synth), ("run", cmd_run), ("status", cmd_status)):
        sp = sub.add_parser(name)
        sp.add_argument("--profile", default=os.environ.get("BDD_PROFILE", "demo"))
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
        sp.set_defaults(fn=fn)
        if name == "synth":
            sp.add_argument("--out", type=Path, default=None, help="world root (default: the profile's data_root)")
            sp.add_argument("--force", action="store_true", help="regenerate even if the world exists")
        if name == "run":
            sp.add_argument("--from", dest="from_section", type=int, default=None,
                            help="recompute section N and every later one")
    sub.add_parser("evaluate", help="python -m bdd_engine evaluate --gt GT.json --pred PRED.json [--by ...] [--json OUT]")
    sub.add_parser("app", help="python -m bdd_engine app --profile P [--port N]")
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
