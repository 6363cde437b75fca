"""Command line: ``python -m bdd_engine <command> --profile P [--set key=value ...]``.

    synth     generate the synthetic BDD100K-format world for a synthetic profile
    run       execute notebook.py headless (jupytext + nbclient), optionally --from N
    status    which sections are fresh, and why the others are not
    evaluate  BDD-official detection eval of any GT/prediction JSON pair, per slice
    app       launch the FiftyOne App on the profile's dataset

Every command takes ``--profile`` and ``--set key=value`` (repeatable). A bad key or
value, a busy or read-only outputs folder, or a folder synth may not touch ends the
command with one line saying what to do, and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import bdd_engine  # noqa: F401  (offline-safe environment first)
from bdd_engine import checkpoint
from bdd_engine.config import ConfigError, load_config, parse_overrides
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
    print(checkpoint.status(_cfg(args)).to_string(index=False))
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


_SECTION_CALL = re.compile(r"\bfw\.s(\d)_")
RECOMPUTE_CELL = ("# %%\nfrom bdd_engine import flywheel as fw\n\n"
                  "fw.recompute_from({n})  # injected by `python -m bdd_engine run --from {n}`\n")
_ECHO_PREFIXES = ("§", "warning", "SYNTHETIC", "Δ ")


def _progress_client(nb: Any, cfg: Any) -> Any:
    """An nbclient NotebookClient that streams the kernel's stdout/stderr (section lines,
    tqdm bars) to this terminal as they arrive, and prints one line per section:
    start, done, seconds, and whether it recomputed or loaded its checkpoint."""
    from nbclient import NotebookClient

    class ProgressClient(NotebookClient):
        current: tuple[int, float, str | None] | None = None
        stopped_by_signal = False
        _partial = ""

        async def _async_cleanup_kernel(self) -> None:
            # nbclient answers SIGINT/SIGTERM itself (its loop handler shuts the kernel down,
            # then the cell fails with DeadKernelError and a second clean-up trips an assert).
            # A clean-up with no exception in flight, mid-notebook, is that handler.
            if sys.exc_info()[0] is None and self.current is not None:
                self.stopped_by_signal = True
            if self.km is None:
                return
            await super()._async_cleanup_kernel()

        def output(self, outs, msg, display_id, cell_index):  # noqa: ANN001 (nbclient's signature)
            if msg["msg_type"] == "stream":
                self._echo(msg["content"].get("name"), msg["content"].get("text", ""))
            return super().output(outs, msg, display_id, cell_index)

        def _echo(self, name: str, text: str) -> None:
            """stderr (tqdm bars, warnings) verbatim; of stdout only the section status lines
            and warnings — tables and notes stay in the executed notebook."""
            if name == "stderr":
                sys.stderr.write(text)
                sys.stderr.flush()
                return
            *lines, self._partial = (self._partial + text).split("\n")
            for ln in lines:
                if ln.startswith(_ECHO_PREFIXES):
                    print(ln, flush=True)

    def on_start(cell: Any, cell_index: int) -> None:
        m = _SECTION_CALL.search(cell.source) if cell.cell_type == "code" else None
        if m:
            n = int(m.group(1))
            client.current = (n, time.time(), checkpoint.Section(cfg, n).manifest_hash())
            # the start line is the kernel's own "§N ...: computing — <reason>" / "fresh" line

    def on_executed(cell: Any, cell_index: int, execute_reply: Any) -> None:
        failed = (execute_reply or {}).get("content", {}).get("status") == "error"
        if client.current and not failed and _SECTION_CALL.search(cell.source or ""):
            n, t0, before = client.current
            after = checkpoint.Section(cfg, n).manifest_hash()
            how = "recomputed" if after != before else "fresh checkpoint loaded"
            print(f"[run] §{n} {checkpoint.SECTIONS[n]}: done in {time.time() - t0:.1f} s ({how})", flush=True)
            client.current = None

    client = ProgressClient(nb, timeout=None, kernel_name="python3",
                            resources={"metadata": {"path": str(PROJECT_ROOT)}},
                            on_cell_start=on_start, on_cell_executed=on_executed)
    return client


def cmd_run(args: argparse.Namespace) -> int:
    """Execute notebook.py headless; the executed .ipynb is saved beside the outputs."""
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    from bdd_engine import flywheel

    jupytext = import_jupytext()
    cfg = _cfg(args)
    holder = checkpoint.lock_holder(cfg.out)
    if holder is not None:
        raise checkpoint.OutputsBusy(f"outputs folder {cfg.out} is in use by PID {holder}: wait for that run to "
                                     f"finish or stop it (kill {holder}); or use --set outputs_dir=...")
    checkpoint.check_writable(cfg.out)
    print(f"[run] profile {cfg.profile} · outputs {cfg.out}" + (" · SYNTHETIC data" if cfg.synthetic else ""), flush=True)
    flywheel.data_root(cfg)  # a synthetic world is generated here, with its progress bar in this terminal
    env = {"BDD_PROFILE": cfg.profile}
    for k, v in parse_overrides(args.set or []).items():
        env[f"BDD_{k.upper()}"] = str(v)
    os.environ.update(env)  # the kernel inherits the profile and overrides (config precedence: BDD_<KEY>)
    nb = jupytext.read(PROJECT_ROOT / "notebook.py")
    if args.from_section:  # visible in the executed notebook, not hidden in the environment
        nb.cells.insert(0, jupytext.reads(RECOMPUTE_CELL.format(n=args.from_section), fmt="py:percent").cells[0])
    client = _progress_client(nb, cfg)
    out = cfg.out / f"notebook_{cfg.profile}.ipynb"
    resume = f"python -m bdd_engine run --profile {cfg.profile}" + "".join(f" --set {s}" for s in args.set or [])
    interrupted: list[int] = []

    def on_stop(signum: int, frame: Any) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    kernel_log = cfg.out / "kernel.log"  # the kernel process's own stderr (its Python output streams here)
    try:
        with open(kernel_log, "w") as log_fh:
            client.execute(stderr=log_fh)
    except BaseException as e:  # noqa: BLE001 — a Ctrl-C surfaces as KeyboardInterrupt, DeadKernelError or an nbclient clean-up assertion
        where = f"§{client.current[0]} {checkpoint.SECTIONS[client.current[0]]}" if client.current else "a cell"
        if (interrupted or client.stopped_by_signal or isinstance(e, KeyboardInterrupt)
                or getattr(e, "ename", "") == "KeyboardInterrupt"):
            for sig in previous:  # a second Ctrl-C must not interrupt the clean-up
                signal.signal(sig, signal.SIG_IGN)
            with contextlib.suppress(Exception):
                client._cleanup_kernel()
            print(f"\ninterrupted in {where}: finished sections are kept; to resume, run `{resume}` again",
                  file=sys.stderr)
            return 130
        if isinstance(e, CellExecutionError):
            print(f"\nerror in {where}: {e.ename}: {e.evalue}\n(full traceback: {out})", file=sys.stderr)
            return 1
        if isinstance(e, DeadKernelError):
            print(f"\nthe notebook kernel died in {where} (out of memory?); its log: {kernel_log}", file=sys.stderr)
            return 1
        raise
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
        checkpoint.atomic_write_text(out, jupytext.writes(nb, fmt="ipynb"))
        print(f"executed notebook: {out}")
    return 0


def cmd_evaluate(argv: list[str]) -> int:
    """``evaluate`` owns its flags; ``--profile``/``--set`` give defaults for ``--by``
    (eval_by), ``--n-boot`` (eval_n_boot) and ``--seed`` (seed) when those are not passed."""
    from bdd_engine.evaluate import main_evaluate

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
    from bdd_engine.explorer import main_app

    return int(main_app(argv) or 0)


def _parser() -> argparse.ArgumentParser:
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
            sp.add_argument("--from", dest="from_section", type=int, default=None, choices=sorted(checkpoint.SECTIONS),
                            metavar="N", help="recompute section N (1-8) and every later one")
    sub.add_parser("evaluate", help="python -m bdd_engine evaluate --gt GT.json --pred PRED.json [--by ...] [--json OUT]")
    sub.add_parser("app", help="python -m bdd_engine app --profile P [--port N] [--set key=value]")
    return p


def main(argv: list[str] | None = None) -> int:
    from bdd_engine.synth import WorldRefused

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "evaluate":  # these own their argument parsing
            return cmd_evaluate(argv[1:])
        if argv and argv[0] == "app":
            return cmd_app(argv[1:])
        args = _parser().parse_args(argv)
        return args.fn(args)
    except (ConfigError, WorldRefused, checkpoint.OutputsBusy, checkpoint.OutputsNotWritable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
