"""The FiftyOne App server: launch on a free loopback port, stop by PID, and the
``python -m bdd_engine app`` command that serves until Ctrl-C / SIGTERM / SIGHUP.

FiftyOne runs the App server as a child process tree; a plain SIGTERM to our process
would leave it running, so :func:`main_app` turns the stop signals into a clean
shutdown and :meth:`AppHandle.stop` ends the tree by PID (children first).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import psutil

from bdd_engine.config import load_config, parse_overrides
from bdd_engine.explorer.dataset import dataset_name
from bdd_engine.explorer.db import disconnect
from bdd_engine.explorer.errors import ExplorerError
from bdd_engine.explorer.sync import get_dataset

log = logging.getLogger(__name__)


def port_in_use(address: str, port: int) -> bool:
    """True when something accepts TCP connections on ``address:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((address, port)) == 0


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port the OS says is free on ``address`` (free now, not reserved)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout: float) -> None:
    """Poll ``url`` until it answers HTTP 200; ExplorerError after ``timeout`` seconds."""
    deadline = time.time() + timeout
    last: Exception | None = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status == 200:
                    return
        except Exception as e:  # connection refused while the server boots
            last = e
        time.sleep(0.5)
    raise ExplorerError(f"FiftyOne App did not answer at {url} within {timeout:.0f} s ({last})")


@dataclass
class AppHandle:
    """A running App: ``url``, the server process tree, ``stop()``."""

    session: Any
    url: str
    port: int
    pids: list[int] = field(default_factory=list)

    def stop(self, timeout: float = 15.0) -> None:
        """Close the session and end the server tree by PID (children first)."""
        import fiftyone.core.session.session as fss  # heavy optional dependency: imported on use

        try:
            self.session.close()
        except Exception as e:  # still kill the processes below
            log.warning("explorer: session.close() failed: %s", e)
        service = fss._server_services.pop(self.port, None)
        procs = []
        for pid in self.pids:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        for p in reversed(procs):  # recorded parent-first; terminate the leaves first
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        gone, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:
            p.kill()
        psutil.wait_procs(alive, timeout=5)
        if service is not None:
            service.child = None  # its __del__ would close a pipe of a dead process

    def alive(self) -> list[int]:
        """PIDs of the server tree still running (zombies count as gone)."""
        return [p for p in self.pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def _server_tree(service: Any) -> list[int]:
    """PIDs of FiftyOne's App server process and all its children, parent first."""
    if service is None or service.child is None:
        return []
    return [service.child.pid] + [c.pid for c in psutil.Process(service.child.pid).children(recursive=True)]


def launch_app(
    cfg: Mapping[str, Any],
    port: int | None = None,
    address: str = "127.0.0.1",
    dataset: Any = None,
    timeout: float = 90.0,
) -> AppHandle:
    """Serve the App for the profile's dataset on ``address:port`` (no browser opened).

    Raises ExplorerError if the port is taken (FiftyOne would silently attach to a
    server already there, possibly of another database) or the App does not answer
    within ``timeout`` seconds.
    """
    import fiftyone as fo  # heavy optional dependency (~3 s): imported on use
    import fiftyone.core.session.session as fss

    ds = dataset if dataset is not None else get_dataset(cfg)
    port = int(port or cfg["explorer_app_port"])
    if port_in_use(address, port):
        raise ExplorerError(f"port {port} on {address} is in use; pass --port N (a free port)")
    session = fo.launch_app(ds, remote=True, address=address, port=port, auto=False)
    service = fss._server_services.get(port)
    url = f"http://{address}:{port}/datasets/{urllib.request.quote(ds.name)}"
    handle = AppHandle(session=session, url=url, port=port, pids=_server_tree(service))
    try:
        _wait_http(f"http://{address}:{port}/", timeout)
    except BaseException:
        handle.stop()
        raise
    handle.pids = _server_tree(service)  # the server may spawn workers after it binds
    return handle


# ---------------------------------------------------------------- CLI
_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, n))


def _on_stop_signal(signum: int, frame: Any) -> None:
    # default SIGTERM/SIGHUP kill Python without cleanup and leave the App server running;
    # SIGINT is installed explicitly because a shell's background job starts with it ignored
    raise KeyboardInterrupt


def contents_line(ds: Any) -> str:
    """What a user can open: each model's evaluation run (with its turn's promotion) and the saved views."""
    promoted = set((ds.info.get("promoted") or {}).values())
    runs = [f"{k}{' (promoted)' if k[len('eval_'):] in promoted else ''}" for k in sorted(ds.list_evaluations())]
    return f"evaluation runs: {', '.join(runs) or 'none yet'} · saved views: {', '.join(ds.list_saved_views()) or 'none'}"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bdd_engine app", description=main_app.__doc__)
    ap.add_argument("--profile", default=None, help="tiny | demo | full (default $BDD_PROFILE or demo)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    ap.add_argument("--port", type=int, default=None, help="App port (default explorer_app_port or 5151)")
    ap.add_argument("--address", default="127.0.0.1", help="bind address (default loopback only)")
    return ap.parse_args(argv)


def main_app(argv: Sequence[str] | None = None) -> int:
    """``python -m bdd_engine app --profile P [--port N] [--set key=value]``: serve until Ctrl-C/SIGTERM."""
    args = _parse_args(argv)
    cfg = load_config(args.profile, parse_overrides(args.set or []))
    previous = {sig: signal.signal(sig, _on_stop_signal) for sig in _STOP_SIGNALS}
    handle = None
    try:
        handle = launch_app(cfg, port=args.port, address=args.address)
        print(f"FiftyOne App: {handle.url}  (dataset {dataset_name(cfg)}; Ctrl-C to stop)", flush=True)
        if handle.session.dataset is not None:
            print(contents_line(handle.session.dataset), flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping the App ...", flush=True)
    except ExplorerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        for sig in _STOP_SIGNALS:  # a second Ctrl-C must not interrupt the clean-up
            signal.signal(sig, signal.SIG_IGN)
        if handle is not None:
            handle.stop()
        disconnect()
        for sig, h in previous.items():
            signal.signal(sig, h)
    return 0
