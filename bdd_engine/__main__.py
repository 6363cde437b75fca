"""Command line: ``python -m bdd_engine <command> --profile P [--set key=value ...]``.

    synth     generate the synthetic BDD100K-format world for a synthetic profile
    run       execute notebook.py headless (jupytext + nbclient), optionally --from N
    status    which sections are fresh, and why the others are not
    evaluate  BDD-official detection eval of any GT/prediction JSON pair, per slice
    app       launch the FiftyOne App on the profile's dataset
    pretrain  build the demo's pretrained init on a disjoint synthetic world (profile pretrain)
    stand-in-weights  build RANDOM weights with the full profile's exact architectures (--out DIR)
    import-labels  a Label Studio JSON export of the review queue -> BDD frames (--label-studio EXPORT.json --out DIR)

Every command takes ``--profile`` and ``--set key=value`` (repeatable). A bad key or
value, a busy or read-only outputs folder, or a folder synth may not touch ends the
command with one line saying what to do, and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bdd_engine import checkpoint, flywheel, runner, synth
from bdd_engine.evaluate import main_evaluate
from bdd_engine.explorer import main_app
from bdd_engine.config import ConfigError, load_config, parse_overrides
from bdd_engine.env import setup_env


PRETRAINED_NAME = "synthpre-w0125"  # the demo profile's train_init_weights is bdd_engine/models/<this>.pt


def _cfg(args: argparse.Namespace):
    return load_config(args.profile, parse_overrides(args.set or []))


def cmd_synth(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    root = synth.generate(cfg, args.out, force=args.force)
    print(f"synthetic world ready: {root}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Generate the pretrain world, train on it, install bdd_engine/models/<name>.pt + its run card."""
    from bdd_engine import pretrain

    cfg = _cfg(args)
    world = synth.ensure_world(cfg)
    info = {"seed": int(cfg.seed), "world_hash": synth.world_hash(cfg), "path": str(cfg.data_root),
            "weather_mix": cfg.synth_weather_mix, "timeofday_mix": cfg.synth_timeofday_mix}
    card = pretrain.build(flywheel.train_spec(cfg), world, info, cfg.out, args.name,
                          list(cfg.label_files) + list(cfg.confirm_label_files),
                          list(cfg.image_sets), (int(cfg.synth_width), int(cfg.synth_height)), install=not args.no_install)
    curve = " ".join(f"{r['mAP50']:.3f}" for r in card["learning_curve"])
    print(f"pretrained {args.name}: {card['bytes'] / 2**20:.1f} MB, sha256 {card['sha256'][:16]}, "
          f"{card['wall_time_s']:.0f} s; val mAP50 per epoch (SYNTHETIC pretrain world): {curve}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    print(checkpoint.status(_cfg(args)).to_string(index=False))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Execute notebook.py headless (bdd_engine.runner); the executed .ipynb is saved beside the outputs."""
    cfg = _cfg(args)
    # fail fast, before a kernel starts, with the lock's own messages (busy: holder PID; unwritable: the folder)
    checkpoint.acquire_lock(cfg.out)
    checkpoint.release_lock(cfg.out)
    print(f"[run] profile {cfg.profile} · outputs {cfg.out}" + (" · SYNTHETIC data" if cfg.synthetic else ""), flush=True)
    flywheel.data_root(cfg)  # a synthetic world is generated here, with its progress bar in this terminal
    return runner.run_notebook(cfg, parse_overrides(args.set or []), args.set or [], args.from_section)


def cmd_evaluate(argv: list[str]) -> int:
    """``evaluate`` owns its flags; ``--profile``/``--set`` give defaults for ``--by``
    (eval_by), ``--n-boot`` (eval_n_boot) and ``--seed`` (seed) when those are not passed."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--profile", default=None)
    pre.add_argument("--set", action="append", default=None)
    known, rest = pre.parse_known_args(argv)
    if known.profile or known.set:
        cfg = load_config(known.profile, parse_overrides(known.set or []))
        defaults = {"--by": ",".join(cfg.eval_by), "--n-boot": str(cfg.eval_n_boot), "--seed": str(cfg.seed)}
        for flag, value in defaults.items():
            if not any(a == flag or a.startswith(flag + "=") for a in rest):
                rest += [flag, value]
    return int(main_evaluate(rest) or 0)


def cmd_app(argv: list[str]) -> int:
    return int(main_app(argv) or 0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bdd_engine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn in (("synth", cmd_synth), ("run", cmd_run), ("status", cmd_status), ("pretrain", cmd_pretrain)):
        sp = sub.add_parser(name)
        sp.add_argument("--profile", default=os.environ.get("BDD_PROFILE", "demo"))
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
        sp.set_defaults(fn=fn)
        if name == "synth":
            sp.add_argument("--out", type=Path, default=None, help="world root (default: the profile's data_root)")
            sp.add_argument("--force", action="store_true", help="regenerate even if the world exists")
        if name == "pretrain":
            sp.set_defaults(profile="pretrain")
            sp.add_argument("--name", default=PRETRAINED_NAME, help="file name under bdd_engine/models/ (no extension)")
            sp.add_argument("--no-install", action="store_true", help="train only; leave bdd_engine/models/ alone")
        if name == "run":
            sp.add_argument("--from", dest="from_section", type=int, default=None, choices=sorted(checkpoint.SECTIONS),
                            metavar="N", help="recompute section N (1-8) and every later one")
    sub.add_parser("evaluate", help="python -m bdd_engine evaluate --gt GT.json --pred PRED.json [--by ...] [--json OUT]")
    sub.add_parser("app", help="python -m bdd_engine app --profile P [--port N] [--set key=value]")
    sub.add_parser("stand-in-weights", help="python -m bdd_engine stand-in-weights --out DIR [--only NAME] (RANDOM weights)")
    sub.add_parser("import-labels", help="python -m bdd_engine import-labels --label-studio EXPORT.json --out DIR")
    return p


def _own_parser_command(name: str):
    """(main, its refusal error) of a command that parses its own flags; imported only on use."""
    if name == "stand-in-weights":
        from bdd_engine import standin  # imports the autolabel package and transformers: only on use

        return standin.main, standin.StandInRefused
    from bdd_engine.autolabel import review_import

    return review_import.main, review_import.ExportError


def main(argv: list[str] | None = None) -> int:
    setup_env()  # offline-safe settings for this process and the notebook kernel it starts
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "evaluate":  # these own their argument parsing
            return cmd_evaluate(argv[1:])
        if argv and argv[0] == "app":
            return cmd_app(argv[1:])
        if argv and argv[0] in ("stand-in-weights", "import-labels"):
            run, refusal = _own_parser_command(argv[0])
            try:
                return run(argv[1:])
            except refusal as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        args = _parser().parse_args(argv)
        return args.fn(args)
    except (ConfigError, synth.WorldRefused, checkpoint.OutputsBusy, checkpoint.OutputsNotWritable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
