"""Numbered, resumable section checkpoints and atomic writes.

Layout under ``cfg.out`` (``outputs/`` by default)::

    01_collect/ 02_curate/ 03_pools/ 04_train/ 05_eval_iter0/ 06_mine/
    07_autolabel_retrain/ 08_delta/           <- one folder per notebook section
    runs/iter0|iter1|...  figures/  case_study/   <- shared, written file-by-file atomically

A section writes everything into a staging folder (``.03_pools.staging``), then its
``manifest.json`` **last**, then swaps the staging folder in with two renames. A kill at
any moment therefore leaves either the old complete folder or the new complete folder
(:func:`recover` finishes an interrupted swap). The manifest holds only deterministic
facts (config hash, upstream manifest hashes, artifact sha256s, counts), so an
interrupted-then-resumed run produces a byte-identical manifest; wall-clock timings go
to ``timing.json`` beside it.

A section is *fresh* when its manifest exists, its config hash and upstream hashes
match the current ones, and every artifact still has the recorded sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

SECTIONS: dict[int, str] = {
    1: "01_collect",
    2: "02_curate",
    3: "03_pools",
    4: "04_train",
    5: "05_eval_iter0",
    6: "06_mine",
    7: "07_autolabel_retrain",
    8: "08_delta",
}
# Which earlier sections each section reads (its manifest hash depends on theirs).
UPSTREAM: dict[int, tuple[int, ...]] = {
    1: (),
    2: (1,),
    3: (1,),
    4: (3,),
    5: (3, 4),
    6: (2, 3, 5),
    7: (3, 4, 6),
    8: (3, 5, 6, 7),
}


# ----------------------------------------------------------------------------- atomic I/O
_UMASK = os.umask(0)
os.umask(_UMASK)


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
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a normal file honours the umask
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
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


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
        return None if np.isnan(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ----------------------------------------------------------------------------- sections
class Section:
    """One notebook section's checkpoint folder.

    >>> sec = Section(cfg, 3)
    >>> if not sec.is_fresh():
    ...     with sec.writer() as w:
    ...         w.write_df("train.csv", df)
    ...         w.counts["train"] = len(df)
    >>> pd.read_csv(sec.dir / "train.csv")
    """

    def __init__(self, cfg: Any, number: int):
        if number not in SECTIONS:
            raise ValueError(f"no section {number}; sections are {sorted(SECTIONS)}")
        self.cfg = cfg
        self.number = number
        self.name = SECTIONS[number]
        self.root: Path = cfg.out
        self.dir: Path = self.root / self.name
        recover(self.root, self.name)

    # -- identity ------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    def expected(self) -> dict[str, Any]:
        """What the manifest must say for this section to be fresh."""
        upstream = {}
        for k in UPSTREAM[self.number]:
            up = Section(self.cfg, k)
            upstream[up.name] = up.manifest_hash()
        return {"section": self.name, "config_hash": self.cfg.section_hash(self.number), "upstream": upstream}

    def manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.manifest_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def manifest_hash(self) -> str | None:
        try:
            return hashlib.sha256(self.manifest_path.read_bytes()).hexdigest()[:16]
        except FileNotFoundError:
            return None

    def staleness(self) -> str | None:
        """None when fresh, else a short human reason (shown by the notebook)."""
        man = self.manifest()
        if man is None:
            return "no manifest (never run, or interrupted)"
        exp = self.expected()
        if man.get("config_hash") != exp["config_hash"]:
            return "config changed"
        for name, h in exp["upstream"].items():
            if h is None:
                return f"upstream {name} missing"
            if man.get("upstream", {}).get(name) != h:
                return f"upstream {name} changed"
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
        staging = self.root / f".{self.name}.staging"
        if staging.exists():
            shutil.rmtree(staging)  # leftovers of a killed run: never trusted
        staging.mkdir(parents=True)
        w = SectionWriter(self, staging)
        t0 = time.time()
        try:
            yield w
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        w._commit(time.time() - t0)

    def load_json(self, rel: str) -> Any:
        return json.loads((self.dir / rel).read_text())

    def read_df(self, rel: str) -> pd.DataFrame:
        p = self.dir / rel
        if p.suffix == ".parquet":
            return pd.read_parquet(p)
        # keep_default_na=False: BDD values like "undefined" and frame names stay strings
        return pd.read_csv(p, keep_default_na=False, na_values=[""])


class SectionWriter:
    """Collects a section's artifacts in its staging folder; commits on context exit."""

    def __init__(self, section: Section, staging: Path):
        self.section = section
        self.dir = staging  # write section-local files here
        self.counts: dict[str, Any] = {}
        self.external: list[Path] = []  # files outside the section folder (figures, runs)

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

    def save_fig(self, name: str, fig: Any, dpi: int = 110) -> Path:
        """Figures live in outputs/figures/ (the case study links them there)."""
        p = atomic_save_fig(self.section.root / "figures" / name, fig, dpi=dpi)
        return self.add_external(p)

    def _commit(self, seconds: float) -> None:
        sec = self.section
        root = sec.root.resolve()
        artifacts: dict[str, str] = {}
        for p in sorted(self.dir.rglob("*")):
            if p.is_file() and p.name not in ("manifest.json", "timing.json"):
                artifacts[f"{sec.name}/{p.relative_to(self.dir).as_posix()}"] = _digest(p)
        for p in sorted(set(self.external)):
            artifacts[p.relative_to(root).as_posix()] = sha256_file(p)
        manifest = {**sec.expected(), "artifacts": artifacts, "counts": self.counts}
        atomic_write_json(self.dir / "timing.json", {"seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        atomic_write_json(self.dir / "manifest.json", manifest)  # last: marks completeness
        _swap_in(self.dir, sec.dir)


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
    """Finish or roll back a swap interrupted between its two renames."""
    final, old = root / name, root / f".{name}.old"
    if old.exists():
        if final.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final)


def status(cfg: Any) -> pd.DataFrame:
    """One row per section: fresh or why not (for the notebook's title cell and the CLI)."""
    rows = []
    for n, name in SECTIONS.items():
        reason = Section(cfg, n).staleness()
        rows.append({"section": n, "folder": name, "fresh": reason is None, "reason": reason or ""})
    return pd.DataFrame(rows)
