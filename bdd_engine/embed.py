"""Image embedders behind one interface, and a cached, resumable embedding store.

Embedders (:func:`get_embedder`; the profile's ``embed_model``):

``gradhist``
    An offline, weight-free global image descriptor (no download, no training):
    Hellinger-mapped (square-rooted) histograms in three equally weighted blocks —
    (a) global colour: hue (weighted by chroma, plus an achromatic bin), saturation and
    value histograms; (b) layout: a 4x4 grid of 4-bin luminance histograms; (c) a
    HOG-style 4x4 grid of gradient-orientation histograms (8 unsigned orientations x
    {weak, strong} magnitude + a "flat" bin). Every sub-histogram sums to 1, so the
    cosine of two descriptors is the mean Bhattacharyya coefficient of their blocks.
    Why this one: the conditions that make a detector fail (fog, night, rain, glare)
    change exactly what it measures — contrast (flat-bin mass, weak vs strong edges),
    brightness layout and colour cast — while scene type shows in the edge layout.
    It is *not* a learned or pretrained network and is never labelled as one.
    Measured on the demo synthetic world (``benchmarks/bench_embed_retrieval.py``:
    prototype of <= 15 val frames per slice, top-100 of 3.1K train frames): mean slice
    precision 0.44, lift over base rate >= 4.8 on all 20 slices (median 12.6); the naive
    32x18 RGB thumbnail reaches 0.22 and finds nothing on night slices (lift < 1 on 10
    of 20). Time of day is near-trivial for it (0.999 match), weather is not (0.67).
``clip``
    open_clip (default ViT-B-32) image tower, weights from a local file under weights/.
``dinov2``
    transformers ``Dinov2Model`` (CLS token after the final layer norm), from a local
    folder under weights/.

Model embedders never touch a hub: missing weights raise ``weights.MissingWeightsError``
naming ``./setup.sh --weights``.

:func:`embed_frames` streams images from disk through a ``torch`` DataLoader (decode +
preprocessing in worker processes), writes L2-normalised rows batch by batch into a
memory-mapped ``.npy`` (row i ↔ ``names[i]``; float32, or float16 for pools too large for
RAM: 10M x 512 is 10 GB on disk, never loaded whole), caches by (embedder name + params,
weights hash, frame-set hash, dtype) and resumes an interrupted run from its last flushed
row.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from bdd_engine import executor as executors
from bdd_engine import weights
from bdd_engine.checkpoint import atomic_write_json, sha256_file
from bdd_engine.env import PROJECT_ROOT, setup_env
from bdd_engine.train import torch_device
from bdd_engine.weights import MissingWeightsError

EMBEDDERS = ("gradhist", "clip", "dinov2")
DTYPES = ("float32", "float16")  # the embedding file's row type (profile key embed_dtype)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- interface
class Embedder(ABC):
    """One image → one float32 vector.

    Attributes: ``name`` (str, no pretrained name for random nets), ``dim`` (D),
    ``weights_hash`` (sha256 hex of the weights + preprocessing params; a constant for
    weight-free descriptors). ``preprocess`` runs per image in DataLoader workers
    and must return a fixed-shape float32 array; ``forward`` maps a stacked batch to
    (N, D) float32 (not yet normalised).
    """

    name: str
    dim: int
    weights_hash: str
    spec: dict[str, Any] | None = None  # get_embedder's keywords that rebuild it (set by get_embedder)

    @abstractmethod
    def preprocess(self, image: Image.Image) -> np.ndarray: ...

    @abstractmethod
    def forward(self, batch: np.ndarray) -> np.ndarray: ...

    def embed_batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images → (N, D) float32, *not* L2-normalised (``embed_frames`` normalises)."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        x = np.stack([self.preprocess(im.convert("RGB")) for im in images])
        return np.ascontiguousarray(self.forward(x), dtype=np.float32)


# ----------------------------------------------------------------------------- gradhist
class GradHistEmbedder(Embedder):
    """Weight-free colour + luminance-layout + gradient-orientation histogram descriptor.

    ``imgsz``: shorter image side (px) after resizing; ``grid``: cells per side for the
    layout and gradient blocks. D = (13 + 8 + 16) + grid² x 4 + grid² x (2*8 + 1)
    (= 373 for grid 4). Gradient magnitudes are in luminance units (0..1) per pixel at
    the resized scale; ``weak``/``strong`` are the magnitude thresholds of the votes.
    """

    VERSION = "1"
    N_HUE, N_SAT, N_VAL, N_LUM, N_ORI = 12, 8, 16, 4, 8

    def __init__(self, imgsz: int, grid: int = 4, weak: float = 0.02, strong: float = 0.08):
        self.imgsz, self.grid, self.weak, self.strong = int(imgsz), int(grid), float(weak), float(strong)
        g2 = self.grid**2
        self.dim = (self.N_HUE + 1 + self.N_SAT + self.N_VAL) + g2 * self.N_LUM + g2 * (2 * self.N_ORI + 1)
        self.name = "gradhist"
        self.weights_hash = _hash_json({"v": self.VERSION, "imgsz": self.imgsz, "grid": self.grid,
                                        "weak": self.weak, "strong": self.strong})

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return gradhist_descriptor(_resize_short(image, self.imgsz), self.grid, self.weak, self.strong)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch, np.float32)  # descriptors are computed in the workers


def gradhist_descriptor(image: Image.Image, grid: int = 4, weak: float = 0.02, strong: float = 0.08) -> np.ndarray:
    """RGB PIL image → (D,) float32 descriptor, see :class:`GradHistEmbedder`."""
    g = GradHistEmbedder
    hsv = np.asarray(image.convert("HSV"), dtype=np.float32) / 255.0
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    rgb = np.asarray(image, dtype=np.float32) / 255.0
    lum = rgb @ np.array([0.299, 0.587, 0.114], np.float32)  # (H, W) in 0..1

    # (a) colour: hue weighted by chroma (s*v) so grey pixels vote "achromatic" instead
    chroma = (s * v).ravel()
    hue_bins = np.minimum((h.ravel() * g.N_HUE).astype(np.int64), g.N_HUE - 1)
    hue = np.bincount(hue_bins, weights=chroma, minlength=g.N_HUE)
    hue = np.append(hue, (1.0 - chroma).sum())
    colour = [hue, _hist01(s, g.N_SAT), _hist01(v, g.N_VAL)]

    # (b) layout: per-cell luminance histograms (dark .. bright)
    lum_bin = np.minimum((lum * g.N_LUM).astype(np.int64), g.N_LUM - 1)
    # (c) HOG-style: unsigned orientation x {weak, strong}, plus "flat" (below weak)
    gy, gx = np.gradient(lum)
    mag = np.hypot(gx, gy)
    ori = np.minimum(((np.arctan2(gy, gx) % np.pi) / np.pi * g.N_ORI).astype(np.int64), g.N_ORI - 1)
    grad_bin = np.where(mag < weak, 2 * g.N_ORI, ori + g.N_ORI * (mag >= strong))

    cell = _cell_index(lum.shape, grid)  # (H, W) cell id, row-major
    n_cells = grid * grid
    layout = np.bincount((cell * g.N_LUM + lum_bin).ravel(), minlength=n_cells * g.N_LUM).reshape(n_cells, g.N_LUM)
    nb = 2 * g.N_ORI + 1
    grads = np.bincount((cell * nb + grad_bin).ravel(), minlength=n_cells * nb).reshape(n_cells, nb)

    blocks = [colour, list(layout.astype(np.float64)), list(grads.astype(np.float64))]
    parts = []
    for hists in blocks:
        # each histogram → distribution → sqrt (Hellinger); each block gets unit weight
        scale = 1.0 / np.sqrt(len(hists))
        parts += [np.sqrt(hh / max(hh.sum(), 1e-12)) * scale for hh in hists]
    out = np.concatenate(parts).astype(np.float32)
    return out / np.float32(np.sqrt(len(blocks)))


def _hist01(x: np.ndarray, bins: int) -> np.ndarray:
    return np.bincount(np.minimum((x.ravel() * bins).astype(np.int64), bins - 1), minlength=bins).astype(np.float64)


def _cell_index(shape: tuple[int, int], grid: int) -> np.ndarray:
    H, W = shape
    ry = np.minimum(np.arange(H) * grid // H, grid - 1)
    rx = np.minimum(np.arange(W) * grid // W, grid - 1)
    return ry[:, None] * grid + rx[None, :]


def _resize_short(image: Image.Image, short: int) -> Image.Image:
    w, h = image.size
    scale = short / min(w, h)
    return image.convert("RGB").resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)


# ----------------------------------------------------------------------------- torch models
class _TorchEmbedder(Embedder):
    model: Any
    device: str
    _runner: Callable[[np.ndarray], np.ndarray] | None = None  # an ONNX Runtime / OpenVINO export (use_backend)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        import torch

        if self._runner is not None:
            return np.asarray(self._runner(batch), np.float32)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            return self._encode(x).float().cpu().numpy()

    @abstractmethod
    def _encode(self, x: Any) -> Any: ...

    def use_backend(self, backend: str, precision: str = "fp32") -> "_TorchEmbedder":
        """Run ``forward`` on ``backend`` (:func:`bdd_engine.backends.module_runner`: an export of
        ``_encode`` cached under the weights hash). A non-torch backend gives slightly different
        vectors, so it joins ``weights_hash`` (the embedding cache key); torch/fp32 keep theirs."""
        import torch

        from bdd_engine import backends

        class _Encode(torch.nn.Module):
            def __init__(self, emb: "_TorchEmbedder"):
                super().__init__()
                self.emb, self.inner = emb, emb.model

            def forward(self, x: Any) -> Any:
                return self.emb._encode(x)

        example = torch.from_numpy(self.preprocess(Image.new("RGB", (64, 36)))[None])
        key = _hash_json({"weights": self.weights_hash, "name": self.name})
        device = "cpu" if str(self.device) == "cpu" else "gpu"
        self._runner = backends.module_runner(_Encode(self), example, backend, key=key, precision=precision,
                                              device=device)
        if self._runner is not None:
            run = backends.resolve_backend(backend, device)
            self.weights_hash = _hash_json({"weights": self.weights_hash, "backend": run,
                                            "precision": backends.effective_precision(backend, run, precision)})
        return self


class ClipEmbedder(_TorchEmbedder):
    """open_clip image tower. ``weights_file``: a local checkpoint file (state dict, .bin/.pt/
    .safetensors) for architecture ``arch``; never a hub tag. ``device``: a torch device
    (``train.torch_device``). Output: ``encode_image`` (N, embed_dim)."""

    def __init__(self, arch: str, weights_file: str | os.PathLike, device: str):
        path = Path(weights_file)
        if not path.is_file():
            raise MissingWeightsError(f"embedder 'clip' ({arch}) needs its weights file {path}, which is missing; {weights.HINT}")
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(path), device=device)
        self.model, self._tf, self.device = model.eval(), preprocess, device
        self.dim = int(model.visual.output_dim)
        self.name = f"clip-{arch}"
        self.weights_hash = _hash_json({"file": sha256_file(path), "arch": arch})

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self._tf(image.convert("RGB")).numpy()

    def _encode(self, x: Any) -> Any:
        return self.model.encode_image(x)


class Dinov2Embedder(_TorchEmbedder):
    """transformers DINOv2 from a local ``save_pretrained`` folder. Preprocessing as the
    official processor: resize shorter side to imgsz*256/224, centre-crop imgsz (rounded
    to the patch size), ImageNet mean/std. Output: ``pooler_output`` (N, hidden_size)."""

    def __init__(self, folder: str | os.PathLike, *, imgsz: int, device: str):
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise MissingWeightsError(f"embedder 'dinov2' needs a model folder {folder} (config.json + weights), which is missing; {weights.HINT}")
        from transformers import Dinov2Model

        model = Dinov2Model.from_pretrained(str(folder), local_files_only=True)
        self.model, self.device = model.eval().to(device), device
        patch = int(model.config.patch_size)
        self.crop = max(patch, int(imgsz) // patch * patch)
        self.resize = round(self.crop * 256 / 224)
        self.dim = int(model.config.hidden_size)
        self.name = "dinov2"
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".bin"))
        self.weights_hash = _hash_json({"files": {p.name: sha256_file(p) for p in files}, "crop": self.crop})

    def preprocess(self, image: Image.Image) -> np.ndarray:
        im = _resize_short(image, self.resize)
        w, h = im.size
        left, top = (w - self.crop) // 2, (h - self.crop) // 2
        im = im.crop((left, top, left + self.crop, top + self.crop))
        x = np.asarray(im, np.float32) / 255.0
        x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def _encode(self, x: Any) -> Any:
        return self.model(pixel_values=x).pooler_output


# ----------------------------------------------------------------------------- factory
def get_embedder(name: str, *, device: str, imgsz: int, clip_arch: str, clip_weights: str | os.PathLike | None,
                 dinov2_dir: str | os.PathLike | None, backend: str = "torch", precision: str = "fp32") -> Embedder:
    """Build the embedder ``name`` (one of :data:`EMBEDDERS`).

    ``device``: ``auto`` | ``cpu`` | ``0``... (``train.resolve_device``; used by clip and
    dinov2). ``imgsz``: px, the shorter side fed to gradhist, the crop of dinov2 (clip uses
    its own preprocessing). ``clip_arch``: open_clip architecture name (clip only).
    ``clip_weights`` (a weights file) / ``dinov2_dir`` (a ``save_pretrained`` folder):
    absolute or project-relative paths; None = the ``weights.REGISTRY`` path, which must
    exist (``./setup.sh --weights``). ``backend`` / ``precision``: clip and dinov2 run on
    ``torch`` | ``onnx`` | ``openvino`` | ``auto`` (:meth:`_TorchEmbedder.use_backend`); gradhist
    has no model and ignores them.
    """
    setup_env()  # offline-safe hub settings before open_clip/transformers are imported
    if name == "gradhist":
        emb: Embedder = GradHistEmbedder(imgsz=imgsz)
    elif name == "clip":
        emb = ClipEmbedder(clip_arch, _weights_path(clip_weights, "clip"), torch_device(device)).use_backend(
            backend, precision)
    elif name == "dinov2":
        emb = Dinov2Embedder(_weights_path(dinov2_dir, "dinov2"), imgsz=imgsz, device=torch_device(device)).use_backend(
            backend, precision)
    else:
        raise ValueError(f"unknown embed_model {name!r}; choose one of {EMBEDDERS}")
    # how to build it again in another process (a Ray actor), instead of shipping its weights
    emb.spec = {"name": name, "device": device, "imgsz": imgsz, "clip_arch": clip_arch,
                "clip_weights": clip_weights, "dinov2_dir": dinov2_dir, "backend": backend,
                "precision": precision}
    return emb


def _weights_path(path: str | os.PathLike | None, registry_name: str) -> Path:
    """``path`` (relative → project root) if set, else the registry path, which must
    exist (``weights.require`` raises the one setup message)."""
    if not path:
        return weights.require(registry_name)
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else PROJECT_ROOT / p


# ----------------------------------------------------------------------------- store
class EmbedBatch:
    """The embedding stage, a batch callable: image paths in, L2-normalised rows out.

    Built once per process (or Ray actor) from an :class:`Embedder` or from
    :func:`get_embedder`'s keywords (``spec``). ``__call__({"path": ...})`` → ``{"emb": (N, D)
    float32, "error": str per frame}``: a missing or undecodable image gets an all-zero row and
    ``error`` "unreadable image" (counted, never raised). Its two halves, :meth:`load` (decode +
    preprocess one image) and :meth:`finish` (forward + normalise a stacked batch), are what
    :func:`embed_frames`' local path runs in its DataLoader workers and main process.
    """

    def __init__(self, embedder: Embedder | None = None, **spec: Any):
        self.embedder = embedder if embedder is not None else get_embedder(**spec)
        self.blank = np.zeros_like(self.embedder.preprocess(Image.new("RGB", (64, 36))))

    def load(self, path: str) -> tuple[np.ndarray, bool]:
        """(preprocessed array, ok); a bad image → (zeros, False), never an exception."""
        try:
            with Image.open(path) as im:
                return self.embedder.preprocess(im.convert("RGB")), True
        # Exception, not just OSError: Ultralytics' PIL hook turns an undecodable file into an
        # ImportError (it tries the optional pi_heif) once ultralytics has been imported.
        except Exception:  # missing / truncated / not an image
            return self.blank, False

    def finish(self, x: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Stacked preprocessed batch → (N, D) float32 L2-normalised, rows of bad images zero."""
        emb = l2_normalize(self.embedder.forward(x))
        emb[~ok] = 0.0
        if emb.shape != (len(ok), self.embedder.dim):
            raise RuntimeError(f"embedder {self.embedder.name} returned {emb.shape}, expected ({len(ok)}, {self.embedder.dim})")
        return emb

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        loaded = [self.load(p) for p in batch["path"]]
        ok = np.array([o for _, o in loaded], bool)
        emb = self.finish(np.stack([x for x, _ in loaded]), ok)
        return {"emb": emb, "error": np.array(["" if o else "unreadable image" for o in ok], dtype=object)}


class _Frames:
    """torch Dataset over image paths [start, n): (row, preprocessed array, ok flag) from
    :meth:`EmbedBatch.load` (a bad image: zeros and ok=False; it never raises mid-run)."""

    def __init__(self, paths: Sequence[str], load: Callable[[str], tuple[np.ndarray, bool]], start: int):
        self.paths, self.load, self.start = list(paths), load, start

    def __len__(self) -> int:
        return len(self.paths) - self.start

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, bool]:
        row = self.start + i
        return (row, *self.load(self.paths[row]))


def frameset_hash(names: Sequence[str], image_paths: Sequence[str | os.PathLike]) -> str:
    """sha256 over (name, size, mtime_ns) in row order: renaming, reordering or
    re-generating a frame gives a new cache entry. Missing files hash as (-1, -1)."""
    h = hashlib.sha256()
    for n, p in zip(names, image_paths):
        try:
            st = os.stat(p)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        h.update(f"{n}\t{size}\t{mtime}\n".encode())
    return h.hexdigest()


def cache_key(embedder: Embedder, fset_hash: str, dtype: str = "float32") -> str:
    """Folder name of a cache entry: ``<name>-<weights hash 12>-<frame-set hash 12>``, plus
    ``-float16`` for a float16 file (float32 entries keep their name)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", embedder.name)
    return f"{safe}-{embedder.weights_hash[:12]}-{fset_hash[:12]}" + ("" if dtype == "float32" else f"-{dtype}")


def embed_frames(embedder: Embedder, image_paths: Sequence[str | os.PathLike], names: Sequence[str],
                 cache_dir: str | os.PathLike, *, batch_size: int, workers: int, flush_every: int = 8,
                 progress: bool = True, dtype: str = "float32",
                 executor: executors.Executor = executors.LOCAL) -> tuple[np.memmap, list[str]]:
    """Embed every image; return ((N, D) read-only memmap of L2-normalised rows, names).

    ``image_paths``/``names``: one per frame (names unique); ``batch_size``: images per
    forward pass; ``workers``: DataLoader worker processes (0 = decode in this process).
    Row i belongs to ``names[i]``. The result lives in
    ``cache_dir/<cache_key>/embeddings.npy`` (+ ``names.json``, ``meta.json``); an
    existing entry is returned without recomputation. While running, rows go to
    ``embeddings.npy.partial`` and ``progress.json`` records the rows flushed to disk
    (every ``flush_every`` batches and on any exception, including Ctrl-C); a re-run
    resumes from there with the batch size recorded then, so the result is
    bit-identical to an uninterrupted run. The final rename is atomic.
    Unreadable or missing images get an all-zero row, are listed in ``meta.json``
    ("unreadable") and warned about; consumers skip zero rows. ``dtype`` (:data:`DTYPES`): the
    file's row type; rows are computed in float32 and stored as ``dtype`` batch by batch, so
    at most one batch is in RAM (float16: half the disk, cosines within ~1e-3). ``executor``:
    where :class:`EmbedBatch` runs (``local``: this process, ``workers`` decoding; ``ray``: an
    actor pool built from the embedder's ``spec``); the same batches give the same rows.
    """
    names = [str(n) for n in names]
    paths = [str(p) for p in image_paths]
    if len(names) != len(paths):
        raise ValueError(f"embed_frames: {len(names)} names but {len(paths)} image paths")
    if len(set(names)) != len(names):
        raise ValueError("embed_frames: frame names must be unique (they index the rows)")
    if not names:
        raise ValueError("embed_frames: no frames to embed")
    if dtype not in DTYPES:
        raise ValueError(f"embed_dtype {dtype!r} is not one of {DTYPES}")
    entry = Path(cache_dir) / cache_key(embedder, frameset_hash(names, paths), dtype)
    final, partial, prog = entry / "embeddings.npy", entry / "embeddings.npy.partial", entry / "progress.json"
    if final.exists() and (entry / "names.json").exists():
        return _open_entry(entry)
    entry.mkdir(parents=True, exist_ok=True)

    n, d = len(names), int(embedder.dim)
    arr, start, batch_size, unreadable = _open_partial(partial, prog, n, d, batch_size, dtype)
    if start < n:
        _fill(arr, embedder, paths, names, start, unreadable, prog, batch_size=batch_size, workers=workers,
              flush_every=flush_every, progress=progress, executor=executor)
    arr.flush()
    del arr
    if unreadable:
        warnings.warn(f"embed_frames: {len(unreadable)} of {n} images missing or unreadable; their rows are zero "
                      f"(first: {unreadable[:3]})", stacklevel=2)
    atomic_write_json(entry / "names.json", names, indent=None)
    atomic_write_json(entry / "meta.json", {
        "embedder": embedder.name, "dim": d, "n": n, "weights_hash": embedder.weights_hash,
        "batch_size": batch_size, "unreadable": unreadable, "l2_normalised": True, "dtype": dtype,
    })
    os.replace(partial, final)  # atomic: embeddings.npy exists only when complete
    prog.unlink(missing_ok=True)
    return _open_entry(entry)


def _open_partial(partial: Path, prog: Path, n: int, d: int, batch_size: int,
                  dtype: str = "float32") -> tuple[np.memmap, int, int, list[str]]:
    """(writable (n, d) memmap, first row to compute, batch size, unreadable names so far):
    a matching interrupted run resumes with the batch size it recorded, else a new file starts."""
    state = _read_progress(prog)
    if partial.exists() and state and state.get("shape") == [n, d]:
        arr = np.lib.format.open_memmap(partial, mode="r+")
        return arr, int(state["rows_done"]), int(state["batch_size"]), list(state.get("unreadable", []))
    arr = np.lib.format.open_memmap(partial, mode="w+", dtype=np.dtype(dtype), shape=(n, d))
    _write_progress(prog, arr, 0, batch_size, [], n, d)
    return arr, 0, batch_size, []


def _fill(arr: np.memmap, embedder: Embedder, paths: list[str], names: list[str], start: int, unreadable: list[str],
          prog: Path, *, batch_size: int, workers: int, flush_every: int, progress: bool,
          executor: executors.Executor = executors.LOCAL) -> None:
    """Embed rows ``start..n`` into ``arr`` (appending unreadable names), recording progress
    every ``flush_every`` batches and on any exception."""
    from tqdm.auto import tqdm

    n, d = arr.shape
    done = start
    bar = tqdm(total=n, initial=start, unit="img", desc=f"embed {embedder.name}", disable=not progress)
    try:
        for i, (rows, emb, ok) in enumerate(_batches(embedder, paths, start, batch_size, workers, executor)):
            arr[rows[0]: rows[-1] + 1] = emb  # cast to the file's dtype on the way
            unreadable += [names[r] for r in rows[~ok]]
            done = int(rows[-1]) + 1
            bar.update(len(rows))
            if (i + 1) % max(1, flush_every) == 0:
                _write_progress(prog, arr, done, batch_size, unreadable, n, d)
    finally:
        bar.close()
        _write_progress(prog, arr, done, batch_size, unreadable, n, d)  # Ctrl-C keeps finished rows


def _batches(embedder: Embedder, paths: list[str], start: int, batch_size: int, workers: int,
             executor: executors.Executor) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(row numbers, normalised rows, ok flags) per batch of ``batch_size`` rows from ``start``:
    locally :class:`EmbedBatch`'s halves around a DataLoader (``workers`` decode), on Ray the
    whole callable per batch in an actor built from ``embedder.spec``."""
    if executor.is_local:
        stage = EmbedBatch(embedder)
        for rows, x, ok in _loader(_Frames(paths, stage.load, start), batch_size, workers):
            ok = ok.numpy().astype(bool)
            yield rows.numpy(), stage.finish(x.numpy(), ok), ok
        return
    spans = executors.chunks(len(paths), batch_size, start)
    spec = getattr(embedder, "spec", None)
    kwargs = spec if spec is not None else {"embedder": embedder}  # a hand-built embedder travels pickled
    outs = executors.run(EmbedBatch, [executors.take({"path": paths}, r) for r in spans], executor=executor,
                         stage_kwargs=kwargs, name=f"embed-{embedder.name}")
    for r, out in zip(spans, outs):
        yield np.arange(r.start, r.stop), out["emb"], out["error"] == ""


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float32; all-zero rows stay zero."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, np.float32(eps))).astype(np.float32)


def load_meta(embeddings: np.memmap) -> dict[str, Any]:
    """``meta.json`` of the cache entry an :func:`embed_frames` result came from."""
    return json.loads((Path(embeddings.filename).parent / "meta.json").read_text())


def _open_entry(entry: Path) -> tuple[np.memmap, list[str]]:
    arr = np.load(entry / "embeddings.npy", mmap_mode="r")
    names = json.loads((entry / "names.json").read_text())
    if arr.shape[0] != len(names):
        raise RuntimeError(f"corrupt embedding cache {entry}: {arr.shape[0]} rows vs {len(names)} names; delete the folder")
    return arr, names


def _loader(ds: _Frames, batch_size: int, workers: int) -> Any:
    from torch.utils.data import DataLoader

    kw: dict[str, Any] = {}
    if workers > 0:
        kw = {"multiprocessing_context": "fork", "persistent_workers": False, "prefetch_factor": 2}
    # shuffle=False: rows are written in order, so "rows done" is a prefix (resumable)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, **kw)


def _read_progress(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_progress(path: Path, arr: np.memmap, rows_done: int, batch_size: int, unreadable: list[str], n: int, d: int) -> None:
    arr.flush()  # rows on disk before the progress file claims them
    atomic_write_json(path, {"rows_done": rows_done, "batch_size": batch_size, "shape": [n, d],
                             "unreadable": unreadable, "time": time.time()}, indent=None)


def _hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
