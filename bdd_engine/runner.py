"""Run notebook.py headless in a fresh kernel (jupytext + nbclient), as ``make demo`` does.

The terminal gets one line per section as it starts (the kernel's "§N: computing — why"
or "fresh" line) and ends ("[run] §N: done in S s (recomputed | fresh checkpoint
loaded)"), the progress bars, and on failure one line naming the section and the error;
Ctrl-C ends the run with one line saying how to resume. Tables and figures stay in the
executed notebook saved beside the outputs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bdd_engine import checkpoint
from bdd_engine.config import parse_overrides
from bdd_engine.env import PROJECT_ROOT

SECTION_CALL = re.compile(r"\bfw\.s(\d)_")
RECOMPUTE_CELL = ("# %%\nfrom bdd_engine import flywheel as fw\n\n"
                  "fw.recompute_from({n})  # injected by `python -m bdd_engine run --from {n}`\n")
ECHO_PREFIXES = ("§", "warning", "SYNTHETIC", "Δ ")


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


class ProgressHooks:
    """Mixed into nbclient's NotebookClient (whichever class ``nbclient`` exports at call
    time): streams the kernel's output and reports each section's start and end."""

    cfg: Any = None
    current: tuple[int, float, str | None] | None = None   # (section, start time, manifest hash before)
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

    async def _async_check_alive(self) -> None:
        # nbclient's once-a-second liveness poll can wake after a Ctrl-C clean-up closed the
        # client; it then asserts and asyncio prints "Task exception was never retrieved"
        # under our one-line message. A closed client is a gone kernel: say so the way the
        # poll expects, and it stops quietly.
        if self.kc is None:
            from nbclient.exceptions import DeadKernelError

            raise DeadKernelError("kernel client closed (interrupted)")
        await super()._async_check_alive()

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
            if ln.startswith(ECHO_PREFIXES):
                print(ln, flush=True)

    def on_start(self, cell: Any, cell_index: int) -> None:
        m = SECTION_CALL.search(cell.source) if cell.cell_type == "code" else None
        if m:
            n = int(m.group(1))
            self.current = (n, time.time(), checkpoint.Section(self.cfg, n).manifest_hash())

    def on_executed(self, cell: Any, cell_index: int, execute_reply: Any) -> None:
        failed = (execute_reply or {}).get("content", {}).get("status") == "error"
        if self.current and not failed and SECTION_CALL.search(cell.source or ""):
            n, t0, before = self.current
            how = "recomputed" if checkpoint.Section(self.cfg, n).manifest_hash() != before else "fresh checkpoint loaded"
            print(f"[run] §{n} {checkpoint.SECTIONS[n]}: done in {time.time() - t0:.1f} s ({how})", flush=True)
            self.current = None

    def where(self) -> str:
        return f"§{self.current[0]} {checkpoint.SECTIONS[self.current[0]]}" if self.current else "a cell"


def progress_client(nb: Any, cfg: Any) -> Any:
    """A NotebookClient with :class:`ProgressHooks` for ``nb``, run from the project root."""
    from nbclient import NotebookClient

    client = type("ProgressClient", (ProgressHooks, NotebookClient), {})(
        nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(PROJECT_ROOT)}})
    client.cfg = cfg
    client.on_cell_start, client.on_cell_executed = client.on_start, client.on_executed
    return client


def load_notebook(jupytext: Any, from_section: int | None) -> Any:
    """notebook.py as a notebook; ``from_section`` adds a visible first cell that makes
    the kernel recompute that section and every later one."""
    nb = jupytext.read(PROJECT_ROOT / "notebook.py")
    if from_section:
        nb.cells.insert(0, jupytext.reads(RECOMPUTE_CELL.format(n=from_section), fmt="py:percent").cells[0])
    return nb


def execute(client: Any, kernel_log: Path, resume: str) -> int:
    """Run every cell; 0 on success, 130 when interrupted (Ctrl-C / SIGTERM), 1 on a failed cell."""
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    interrupted: list[int] = []

    def on_stop(signum: int, frame: Any) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with open(kernel_log, "w") as log_fh:  # the kernel process's own stderr (its Python output streams here)
            client.execute(stderr=log_fh)
        return 0
    except BaseException as e:  # noqa: BLE001 — Ctrl-C surfaces as KeyboardInterrupt, DeadKernelError or an nbclient assertion
        if (interrupted or client.stopped_by_signal or isinstance(e, KeyboardInterrupt)
                or getattr(e, "ename", "") == "KeyboardInterrupt"):
            for sig in previous:  # a second Ctrl-C must not interrupt the clean-up
                signal.signal(sig, signal.SIG_IGN)
            with contextlib.suppress(Exception):
                client._cleanup_kernel()
            print(f"\ninterrupted in {client.where()}: finished sections are kept; to resume, run `{resume}` again",
                  file=sys.stderr)
            return 130
        if isinstance(e, CellExecutionError):
            print(f"\nerror in {client.where()}: {e.ename}: {e.evalue}", file=sys.stderr)
            return 1
        if isinstance(e, DeadKernelError):
            print(f"\nthe notebook kernel died in {client.where()} (out of memory?); its log: {kernel_log}",
                  file=sys.stderr)
            return 1
        raise
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def kernel_env(profile: str, set_args: list[str]) -> dict[str, str]:
    """The ``BDD_*`` variables that hand the profile and ``--set key=value`` overrides to the
    kernel. Each value is the user's own text, which the kernel's ``load_config`` parses exactly
    as ``parse_overrides`` did here: ``str()`` of the parsed value would turn null into 'None'
    and 0.00001 into '1e-05' (a string to YAML 1.1)."""
    parse_overrides(set_args)  # the same refusals as the CLI's own config, before a kernel starts
    env = {"BDD_PROFILE": profile}
    for pair in set_args:
        key, text = pair.split("=", 1)
        env[f"BDD_{key.strip().upper()}"] = text
    return env


def run_notebook(cfg: Any, set_args: list[str], from_section: int | None) -> int:
    """Execute notebook.py for ``cfg`` in a fresh kernel; save the executed notebook beside
    the outputs. The kernel inherits the profile and the ``--set`` overrides as ``BDD_*``
    variables (:func:`kernel_env`; the config's documented precedence)."""
    jupytext = import_jupytext()
    os.environ.update(kernel_env(cfg.profile, set_args))
    nb = load_notebook(jupytext, from_section)
    client = progress_client(nb, cfg)
    out = cfg.out / f"notebook_{cfg.profile}.ipynb"
    resume = shlex.join(["python", "-m", "bdd_engine", "run", "--profile", cfg.profile,
                         *(x for s in set_args for x in ("--set", s))])   # pastes back as the same command
    try:
        rc = execute(client, cfg.out / "kernel.log", resume)
    finally:
        checkpoint.atomic_write_text(out, jupytext.writes(nb, fmt="ipynb"))
        print(f"executed notebook: {out}")
    if rc == 1:
        print(f"(full traceback: {out})", file=sys.stderr)
    return rc
