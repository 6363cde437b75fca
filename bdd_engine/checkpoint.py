"""Numbered, resumable section checkpoints and atomic writes.

Layout under ``cfg.out`` (``outputs/`` by default)::

    01_collect/ 02_curate/ 03_pools/ 04_train/ 05_eval_iter0/ 06_mine/
    07_autolabel_retrain/ 08_delta/           <- one folder per notebook section
    runs/iter0|iter1|...  figures/  case_study/   <- shared, written file-by-file atomically
    turn2/05_eval_iter0/ ... turn2/08_delta/ turn2/runs/ turn2/figures/ ...  <- flywheel turn 2 (§5–§8 again)

A section writes everything into a staging folder (``.03_pools.staging``), then its
``manifest.json`` **last**, then swaps the staging folder in with two renames. A kill at
any moment therefore leaves either the old complete folder or the new complete folder
(:func:`recover` finishes an interrupted swap). The manifest holds config hash, upstream
manifest hashes, input and artifact sha256s and counts; the section's own wall time goes to
``timing.json`` beside it. Manifests are byte-identical across runs only where the
artifacts are: training run cards (§4, §7) record wall times and commits, so manifests
from §4 on differ between two runs even when every number is the same.

A flywheel turn t > 1 repeats §5–§8 in ``turn<t>/`` with the same layout; its sections also
depend on the previous turn's (``sections.SPECS[n].previous_turn``), so a change anywhere in
turn t-1 makes turn t stale.

A section is *fresh* when its manifest exists, its config hash and upstream hashes match
the current ones, every upstream section is itself fresh, every recorded input file (§1:
label files and images) still has its content hash, and every artifact still has the
recorded sha256.

One process at a time computes into an outputs folder: :func:`acquire_lock` takes an
exclusive ``flock`` on ``<outputs>/.lock`` while a section computes (the OS releases it
when a process dies, so a crash never leaves a stale lock) and a second process is
refused naming the holder's PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd

from bdd_engine.sections import SECTIONS, SPECS, TURN_SECTIONS, UPSTREAM, turn_folder  # the one section table


# ----------------------------------------------------------------------------- atomic I/O
def _umask() -> int:
    """The process umask, read without changing it (Linux /proc; else the set-and-restore
    dance, done lazily here rather than at import)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success rename it onto ``path``.

    For writers that want a filename (np.save, fig.savefig, torch.save). On error the
    temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a normal file honours the umask
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:  # data on disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Strict JSON: NaN/inf become ``null`` (bare ``NaN`` is rejected by strict parsers)."""
    text = json.dumps(strict_json(obj), indent=indent, sort_keys=False, default=_json_default, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (Python or numpy) replaced by None, recursively."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    return obj


def atomic_write_df(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    """CSV (``.csv``), parquet (``.parquet``) or markdown (``.md``) by suffix; index dropped."""
    path = Path(path)
    if path.suffix == ".csv":
        buf = io.StringIO()
        df.to_csv(buf, index=False, lineterminator="\n")
        return atomic_write_text(path, buf.getvalue())
    if path.suffix == ".parquet":
        with atomic_path(path) as tmp:
            df.to_parquet(tmp, index=False)
        return path
    if path.suffix == ".md":
        return atomic_write_text(path, df_to_markdown(df) + "\n")
    raise ValueError(f"atomic_write_df: unsupported suffix {path.suffix!r} ({path})")


def atomic_write_npy(path: str | os.PathLike, arr: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
    return Path(path)


def atomic_save_fig(path: str | os.PathLike, fig: Any, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically. ``metadata`` is pinned so the PNG bytes
    are deterministic (matplotlib stamps its version/date otherwise)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png",
                    metadata={"Software": None} if path.suffix == ".png" else None)
    return path


def df_to_markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """GitHub markdown table without the optional `tabulate` dependency."""
    def fmt(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "–" if np.isnan(v) else format(float(v), floatfmt)
        return str(v).replace("|", "\\|")

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def tree_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of the regular files under ``path`` (a file: its size; a symlink counts
    as the link, never its target — linked dataset images are not ours; missing: 0)."""
    p = Path(path)
    if p.is_symlink() or not p.exists():
        return 0
    if p.is_file():
        return p.stat().st_size
    total = 0
    for dirpath, _, files in os.walk(p):
        for f in files:
            fp = Path(dirpath) / f
            if not fp.is_symlink():
                total += fp.stat().st_size
    return total


def _digest(p: Path) -> str:
    """sha256 of a file; for a symlink (linked dataset images), of its target path —
    hashing gigabytes of linked source images on every freshness check would be wasteful,
    and the sources under data/ are read-only anyway."""
    if p.is_symlink():
        return "link:" + hashlib.sha256(os.readlink(p).encode()).hexdigest()
    return sha256_file(p)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ----------------------------------------------------------------------------- run lock
class OutputsBusy(RuntimeError):
    """Another process is computing into the same outputs folder."""


class OutputsNotWritable(PermissionError):
    """The outputs folder cannot be written (permissions, read-only file system)."""


_LOCKS: dict[Path, Any] = {}  # outputs folder -> open lock file held by this process


def acquire_lock(root: str | os.PathLike) -> None:
    """Take the exclusive run lock of an outputs folder while this process computes a section.

    Held from the moment a section decides to compute until its writer commits or fails
    (:func:`release_lock`); re-entrant within a process. Raises :class:`OutputsBusy` naming the holder's PID when
    another live process holds it, :class:`OutputsNotWritable` naming the folder when it
    cannot be created or written. Finishes any swap a killed run interrupted (only the
    lock holder may rename section folders).
    """
    root = Path(root).resolve()
    if root in _LOCKS:
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        fh = open(root / ".lock", "a+")
    except OSError as e:  # read-only file system, permissions, a file where the folder should be
        raise OutputsNotWritable(
            f"outputs folder {root} is not writable ({e.strerror or e}): fix its permissions, or write "
            f"elsewhere with --set outputs_dir=/some/writable/dir (BDD_OUTPUTS_DIR=... in a notebook)") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise OutputsBusy(
            f"outputs folder {root} is in use by PID {holder} (another run, or a notebook kernel that "
            f"computed a section). Wait for it to finish, or stop it (kill {holder}), then run again; "
            f"or use another folder with --set outputs_dir=...") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    _LOCKS[root] = fh
    for old in [*root.glob(".*.old"), *root.glob("turn*/.*.old")]:
        recover(old.parent, old.name[1:-len(".old")])


def release_lock(root: str | os.PathLike) -> None:
    """Release this process's run lock of ``root`` (no-op when it holds none)."""
    fh = _LOCKS.pop(Path(root).resolve(), None)
    if fh is not None:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def why_not_writable(folder: str | os.PathLike) -> str | None:
    """None when a file can be created in ``folder`` (made if missing), else the OS's reason."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test"):
            return None
    except OSError as e:
        return str(e.strerror or e)


# ----------------------------------------------------------------------------- owned folders
class FolderRefused(RuntimeError):
    """A command will not write into a folder it did not create (or made with other settings)."""


def claim_folder(path: str | os.PathLike, marker: str, generator: str, params: Mapping[str, Any]) -> Path:
    """Make ``path`` this ``generator``'s folder, or check that it already is.

    A missing folder is created already marked (``<path>/<marker>``: strict JSON with
    ``generator`` and ``params``): it is made and marked under a hidden temporary name beside
    it, then renamed into place, so a kill at any point never leaves an unmarked folder that
    the next run would refuse (the temporary of a killed claim is removed by the next one).
    An existing folder is accepted only with that marker, the same ``generator`` and the same
    ``params`` (so resuming never mixes settings); anything else raises :class:`FolderRefused`
    naming the folder and the fix.
    """
    path = Path(path)
    params = strict_json(json.loads(json.dumps(dict(params), default=_json_default)))
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.claim-*"):  # a killed claim's temporary: empty or our marker only
            if stale.is_dir() and all(q.name == marker or q.name.startswith(f".{marker}.") for q in stale.iterdir()):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = path.parent / f".{path.name}.claim-{os.getpid()}"
        tmp.mkdir()
        atomic_write_json(tmp / marker, {"generator": generator, "params": params})
        os.rename(tmp, path)
        return path
    try:
        m = json.loads((path / marker).read_text())
    except (OSError, json.JSONDecodeError):
        m = None
    if not isinstance(m, dict) or m.get("generator") != generator:
        raise FolderRefused(f"{path} exists and was not created by {generator} (no {marker}); it never writes "
                            f"into a folder it did not create. Pass a new path (it will be created).")
    if m.get("params") != params:
        raise FolderRefused(f"{path} was written by {generator} with other settings {m.get('params')} "
                            f"(now {params}); resume with the same settings, or pass a new path.")
    return path


# ----------------------------------------------------------------------------- inputs
INPUT_COLUMNS = ["path", "kind", "size", "mtime_ns", "sha256"]


def dir_listing_digest(path: Path) -> str:
    """sha256 of a folder's sorted entry names: adding or removing a file changes it."""
    with os.scandir(path) as it:
        names = sorted(e.name for e in it)
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def input_row(path: str | os.PathLike, kind: str = "file", sha256: str | None = None) -> dict[str, Any]:
    """One row of an inputs table (a file by content hash, a dir by its listing)."""
    p = Path(path)
    st = p.stat()
    if kind == "dir":
        return {"path": str(p), "kind": "dir", "size": 0, "mtime_ns": 0, "sha256": dir_listing_digest(p)}
    return {"path": str(p), "kind": "file", "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256": sha256 or sha256_file(p)}


def inputs_changed(table: pd.DataFrame) -> str | None:
    """None when every recorded input still has its content, else what changed first.

    Size + mtime equal means unchanged (the hash is not recomputed); otherwise the content
    hash decides, so a ``touch`` alone never makes a section stale."""
    for r in table.itertuples(index=False):
        p = Path(r.path)
        if r.kind == "dir":
            if not p.is_dir():
                return f"input folder missing: {p}"
            if dir_listing_digest(p) != r.sha256:
                return f"input folder changed (files added or removed): {p}"
            continue
        try:
            st = p.stat()
        except OSError:
            return f"input missing: {p}"
        if st.st_size == int(r.size) and st.st_mtime_ns == int(r.mtime_ns):
            continue
        if sha256_file(p) != r.sha256:
            return f"input changed: {p}"
    return None


# ----------------------------------------------------------------------------- sections
class Section:
    """One notebook section's checkpoint folder.

    >>> sec = Section(cfg, 3)
    >>> if not sec.is_fresh():
    ...     with sec.writer() as w:
    ...         w.write_df("train.csv", df)
    ...         w.counts["train"] = len(df)
    >>> pd.read_csv(sec.dir / "train.csv")

    Reading never renames or deletes anything; only the lock holder's :meth:`writer` does.
    ``turn`` > 1 (§5–§8 only) is that section of a later flywheel turn, in ``turn<t>/``.
    """

    def __init__(self, cfg: Any, number: int, turn: int = 1):
        if number not in SECTIONS:
            raise ValueError(f"no section {number}; sections are {sorted(SECTIONS)}")
        if int(turn) > 1 and number not in TURN_SECTIONS:
            raise ValueError(f"§{number} runs once; only §{TURN_SECTIONS[0]}–§{TURN_SECTIONS[-1]} repeat per turn")
        self.cfg = cfg
        self.number = number
        self.turn = int(turn)
        self.name = SECTIONS[number]
        self.root: Path = cfg.out
        self.base: Path = self.root / turn_folder(self.turn) if self.turn > 1 else self.root  # the turn's outputs
        self.dir: Path = self.base / self.name
        self.key = self.dir.relative_to(self.root).as_posix()  # its name in manifests: 05_eval_iter0, turn2/05_eval_iter0

    # -- identity ------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    def upstream(self) -> list["Section"]:
        """The sections this one reads: its upstream in this turn (§1–§4 exist once), and
        from turn 2 on the previous turn's sections it builds on."""
        ups = [Section(self.cfg, k, self.turn if k in TURN_SECTIONS else 1) for k in UPSTREAM[self.number]]
        if self.turn > 1:
            ups += [Section(self.cfg, k, self.turn - 1) for k in SPECS[self.number].previous_turn]
        return ups

    def expected(self) -> dict[str, Any]:
        """What the manifest must say for this section to be fresh."""
        upstream = {up.key: up.manifest_hash() for up in self.upstream()}
        return {"section": self.name, "config_hash": self.cfg.section_hash(self.number, self.turn), "upstream": upstream,
                **({"turn": self.turn} if self.turn > 1 else {})}

    def manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError):  # absent, or a path that cannot be a folder
            return None

    def manifest_hash(self) -> str | None:
        try:
            return hashlib.sha256(self.manifest_path.read_bytes()).hexdigest()[:16]
        except OSError:
            return None

    def staleness(self, _memo: dict[int, str | None] | None = None) -> str | None:
        """None when fresh, else a short human reason (shown by the notebook).

        Transitive: a section whose upstream is stale (config, inputs, a failed rerun) is
        stale too, so a failure can never leave later sections looking fresh."""
        memo = {} if _memo is None else _memo
        if self.key not in memo:
            memo[self.key] = self._staleness(memo)
        return memo[self.key]

    def _staleness(self, memo: dict[str, str | None]) -> str | None:
        man = self.manifest()
        if man is None:
            interrupted = (self.base / f".{self.name}.old").exists()
            return "interrupted while swapping in (recovered on the next run)" if interrupted \
                else "no manifest (never run, or interrupted)"
        exp = self.expected()
        if man.get("config_hash") != exp["config_hash"]:
            return "config changed"
        for up in self.upstream():
            h = exp["upstream"][up.key]
            if h is None:
                return f"upstream {up.key} missing"
            if man.get("upstream", {}).get(up.key) != h:
                return f"upstream {up.key} changed"
            if up.staleness(memo) is not None:
                return f"upstream {up.key} is stale"
        inputs = man.get("inputs")
        if inputs:
            table_path = self.root / inputs["table"]
            if not table_path.exists():
                return f"inputs table missing: {inputs['table']}"
            why = inputs_changed(pd.read_csv(table_path, keep_default_na=False))
            if why:
                return why
        for rel, digest in man.get("artifacts", {}).items():
            p = self.root / rel
            if not p.exists():
                return f"artifact missing: {rel}"
            if _digest(p) != digest:
                return f"artifact changed: {rel}"
        return None

    def is_fresh(self) -> bool:
        return self.staleness() is None

    # -- writing ---------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self) -> Iterator["SectionWriter"]:
        acquire_lock(self.root)  # one process at a time; raises naming the holder
        recover(self.base, self.name)
        staging = self.base / f".{self.name}.staging"
        if staging.exists():
            shutil.rmtree(staging)  # leftovers of a killed run: never trusted
        staging.mkdir(parents=True)
        w = SectionWriter(self, staging)
        t0 = getattr(self, "started", None) or time.time()  # needs_run's decision: training happens before the writer
        try:
            yield w
            w._commit(time.time() - t0)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            release_lock(self.root)

    def load_json(self, rel: str) -> Any:
        return json.loads((self.dir / rel).read_text())

    def read_df(self, rel: str) -> pd.DataFrame:
        p = self.dir / rel
        if p.suffix == ".parquet":
            return pd.read_parquet(p)
        # keep_default_na=False: BDD values like "undefined" and frame names stay strings
        return pd.read_csv(p, keep_default_na=False, na_values=[""])


def reset_peak_rss() -> None:
    """Restart this process's peak-RSS count (Linux ``clear_refs`` 5), so that the peak read at
    a section's end is that section's own, not the largest of every section before it."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process since the last :func:`reset_peak_rss`, in MB
    (``VmHWM``); None where /proc is not available. Ultralytics trains with 0 workers on CPU,
    so the section's work happens in this process."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


class SectionWriter:
    """Collects a section's artifacts in its staging folder; commits on context exit."""

    def __init__(self, section: Section, staging: Path):
        self.section = section
        self.dir = staging  # write section-local files here
        self.counts: dict[str, Any] = {}
        self.external: list[Path] = []  # files outside the section folder (figures, runs)
        self.inputs: dict[str, Any] | None = None

    def path(self, rel: str) -> Path:
        p = self.dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_df(self, rel: str, df: pd.DataFrame) -> Path:
        return atomic_write_df(self.path(rel), df)

    def write_json(self, rel: str, obj: Any) -> Path:
        return atomic_write_json(self.path(rel), obj)

    def write_text(self, rel: str, text: str) -> Path:
        return atomic_write_text(self.path(rel), text)

    def write_npy(self, rel: str, arr: np.ndarray) -> Path:
        return atomic_write_npy(self.path(rel), arr)

    def add_external(self, path: str | os.PathLike) -> Path:
        """Record a file written elsewhere under outputs/ (already atomically)."""
        p = Path(path).resolve()
        if not p.exists():
            raise FileNotFoundError(f"artifact {p} was not written")
        self.external.append(p)
        return p

    def record_inputs(self, table: pd.DataFrame, **provenance: Any) -> None:
        """Files outside outputs/ this section read (rows of :func:`input_row`). Their
        content hashes become part of freshness; ``provenance`` (e.g. label-file sha256s)
        goes into the manifest verbatim."""
        self.write_df("inputs.csv", table[INPUT_COLUMNS].sort_values("path", kind="stable"))
        digest = hashlib.sha256("\n".join(sorted(f"{p}\t{h}" for p, h in zip(table["path"], table["sha256"]))).encode())
        self.inputs = {"table": f"{self.section.key}/inputs.csv", "n": int(len(table)),
                       "digest": digest.hexdigest(), **provenance}

    def save_fig(self, name: str, fig: Any, dpi: int = 110) -> Path:
        """Figures live in the turn's figures/ (outputs/figures/ for turn 1; the case study links them there)."""
        p = atomic_save_fig(self.section.base / "figures" / name, fig, dpi=dpi)
        return self.add_external(p)

    def _commit(self, seconds: float) -> None:
        sec = self.section
        root = sec.root.resolve()
        artifacts: dict[str, str] = {}
        for p in sorted(self.dir.rglob("*")):
            if p.is_file() and p.name not in ("manifest.json", "timing.json"):
                artifacts[f"{sec.key}/{p.relative_to(self.dir).as_posix()}"] = _digest(p)
        for p in sorted(set(self.external)):
            artifacts[p.relative_to(root).as_posix()] = sha256_file(p)
        manifest = {**sec.expected(), **({"inputs": self.inputs} if self.inputs else {}),
                    "artifacts": artifacts, "counts": self.counts}
        atomic_write_json(self.dir / "timing.json", {"seconds": round(seconds, 2), "peak_rss_mb": peak_rss_mb(),
                                                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        atomic_write_json(self.dir / "manifest.json", manifest)  # last: marks completeness
        _swap_in(self.dir, sec.dir)


STAGING_RE = re.compile(r"^\.(.+)\.staging$")  # Section.writer's staging folder: .<name>.staging


def committed_path(path: str | os.PathLike) -> Path:
    """Where ``path``, written inside a section's staging folder, lives once the section
    commits (``.<name>.staging`` -> ``<name>``); any other path is returned as it is."""
    p = Path(path)
    return Path(*(m.group(1) if (m := STAGING_RE.match(part)) else part for part in p.parts)) if p.parts else p


def _swap_in(staging: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)      # kill here: recover() puts the old one back
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)


def recover(root: Path, name: str) -> None:
    """Finish or roll back a swap interrupted between its two renames (lock holder only)."""
    final, old = root / name, root / f".{name}.old"
    if old.exists():
        if final.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final)


def status(cfg: Any) -> pd.DataFrame:
    """One row per section (and per later flywheel turn's §5–§8): fresh or why not (for the
    notebook's title cell and the CLI)."""
    rows, memo = [], {}
    secs = [Section(cfg, n) for n in SECTIONS]
    secs += [Section(cfg, n, t) for t in range(2, int(cfg.flywheel_turns) + 1) for n in TURN_SECTIONS]
    for sec in secs:
        reason = sec.staleness(memo)
        rows.append({"section": sec.number, "folder": sec.key, "fresh": reason is None, "reason": reason or ""})
    return pd.DataFrame(rows)
