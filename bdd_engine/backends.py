"""Inference backends for Ultralytics detectors: eager PyTorch, ONNX Runtime, OpenVINO.

:func:`load_detector` is the package's one way to load a detector for inference. It returns
a :class:`Detector` whose ``model`` is an Ultralytics ``YOLO``: for ``torch`` the ``.pt``
itself, for ``onnx`` / ``openvino`` ``YOLO(<export>)`` — Ultralytics runs those with the
same ``predict`` API, letterbox and NMS, so callers (``train.predict``) do not change.

Exports are built once per weights file by ``YOLO.export`` (dynamic batch and image size,
so Ultralytics' minimal-padding letterbox matches torch's), cached under the sha256 of the
weights in a folder the project owns (``.cache/exports/<sha256[:16]>/<format>/``, never next
to the weights), and built atomically: in a temporary folder beside it, then renamed. New
weights at the same path have a new hash, so a stale export is never used.

``precision``: ``fp32`` everywhere; ``bf16`` is offered by OpenVINO only (its CPU plugin's
``INFERENCE_PRECISION_HINT``; on a CPU with AMX-BF16 OpenVINO would pick bf16 by itself, so
``fp32`` is set explicitly, not left to the plugin). ONNX Runtime's CPU provider has no bf16
convolutions, and int8 needs a calibration pass (NNCF) that is not installed: neither is offered.

A missing runtime is one :class:`MissingRuntimeError` line; ``auto`` falls back to torch
(logged) instead. Measured choice: ``docs/INFER.md`` (``benchmarks/bench_infer.py``).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bdd_engine.checkpoint import atomic_write_json, sha256_file
from bdd_engine.env import CACHE_DIR, setup_env

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "openvino", "auto")  # profile key infer_backend
PRECISIONS = ("fp32", "bf16")                      # profile key infer_precision
RUNTIME_PACKAGE = {"onnx": "onnxruntime", "openvino": "openvino"}  # backend -> the package it runs on
AUTO_ORDER = ("openvino", "onnx")  # what `auto` tries first (docs/INFER.md: fastest measured first)
EXPORT_DIR = CACHE_DIR / "exports"
EXPORT_MARKER = "EXPORT.json"


class BackendError(ValueError):
    """A backend or precision that cannot run here (the message is the one line to show)."""


class MissingRuntimeError(BackendError):
    """The runtime a backend needs is not importable."""


@dataclass
class Detector:
    """A detector ready for ``model.predict``. ``names``: class id -> name (from the ``.pt``);
    ``train_imgsz``: the size the weights were trained at (None if the checkpoint does not say);
    ``backend``/``precision``: what actually runs (``auto`` resolved); ``source``: the file or
    folder loaded (the ``.pt``, or its export)."""

    model: Any
    names: dict[int, str]
    train_imgsz: int | None
    backend: str
    precision: str
    source: Path


def runtime_error(backend: str) -> str | None:
    """None when ``backend``'s runtime imports, else why not (one line)."""
    pkg = RUNTIME_PACKAGE.get(backend)
    if pkg is None:
        return None
    try:
        importlib.import_module(pkg)
    except ImportError as e:
        return f"{type(e).__name__}: {e}"
    return None


def resolve_backend(backend: str, device: str = "cpu") -> str:
    """``torch`` | ``onnx`` | ``openvino`` that will run. ``auto``: torch on a GPU (``device`` not
    ``cpu``: these runtimes run here on the CPU), else the first of :data:`AUTO_ORDER` whose runtime
    imports, else torch (one log line). An explicit backend whose runtime is missing raises
    :class:`MissingRuntimeError`: no silent fallback."""
    if backend not in BACKENDS:
        raise BackendError(f"infer_backend {backend!r}: choose one of {' | '.join(BACKENDS)}")
    if backend == "auto" and str(device) != "cpu":
        return "torch"
    if backend == "auto":
        for b in AUTO_ORDER:
            if runtime_error(b) is None:
                return b
        log.warning("infer_backend auto: neither openvino nor onnxruntime imports; running torch")
        return "torch"
    why = runtime_error(backend)
    if why:
        raise MissingRuntimeError(
            f"infer_backend {backend} needs the {RUNTIME_PACKAGE[backend]} package, which does not import ({why}); "
            f"install requirements.txt (pip install -r requirements.txt), or set infer_backend: torch "
            f"(or auto, which falls back to torch)")
    return backend


def check_precision(backend: str, precision: str) -> None:
    """``bf16`` only where the runtime offers it (OpenVINO); one-line :class:`BackendError` otherwise."""
    if precision not in PRECISIONS:
        raise BackendError(f"infer_precision {precision!r}: choose one of {' | '.join(PRECISIONS)}")
    if precision == "bf16" and backend != "openvino":
        raise BackendError(f"infer_precision bf16 is offered by the openvino backend only (infer_backend is {backend}); "
                         f"set infer_precision: fp32 or infer_backend: openvino")


def effective_precision(backend: str, run: str, precision: str) -> str:
    """The precision that runs: ``auto`` asked for the best available, so a runtime without bf16
    (torch, onnx) runs fp32; an explicit backend is checked (:func:`check_precision`)."""
    if backend == "auto" and run != "openvino":
        precision = "fp32"
    check_precision(run, precision)
    return precision


def export_dir(weights: str | os.PathLike, fmt: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``weights``' ``fmt`` export lives: ``<cache_dir>/<sha256[:16]>/<fmt>/`` (content-addressed)."""
    return Path(cache_dir or EXPORT_DIR) / sha256_file(weights)[:16] / fmt


def _export_file(folder: Path, fmt: str) -> Path:
    """What ``YOLO()`` loads from an export folder: ``model.onnx`` or ``model_openvino_model/``."""
    return folder / ("model.onnx" if fmt == "onnx" else "model_openvino_model")


def ensure_export(weights: str | os.PathLike, fmt: str, *, imgsz: int,
                  cache_dir: str | os.PathLike | None = None) -> Path:
    """The ``fmt`` (``onnx`` | ``openvino``) export of ``weights``, built once (atomically) and cached.

    ``imgsz``: px, the tracing size (the export takes any batch and size). Returns the path
    to pass to ``YOLO()``."""
    weights = Path(weights)
    final = export_dir(weights, fmt, cache_dir)
    if (final / EXPORT_MARKER).is_file():
        return _export_file(final, fmt)
    setup_env()
    import ultralytics
    from ultralytics import YOLO

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{fmt}.tmp-", dir=final.parent))
    try:
        shutil.copyfile(weights, tmp / "model.pt")  # Ultralytics writes its export beside the .pt it loaded
        log.info("exporting %s to %s (once per weights file) under %s", weights.name, fmt, final)
        YOLO(str(tmp / "model.pt")).export(format=fmt, dynamic=True, imgsz=int(imgsz), simplify=True, verbose=False)
        (tmp / "model.pt").unlink()
        if not _export_file(tmp, fmt).exists():
            raise RuntimeError(f"Ultralytics' {fmt} export of {weights} wrote no {_export_file(tmp, fmt).name}")
        atomic_write_json(tmp / EXPORT_MARKER, {"weights": str(weights), "weights_sha256": sha256_file(weights),
                                                "format": fmt, "ultralytics": ultralytics.__version__,
                                                "dynamic": True, "traced_imgsz": int(imgsz)})
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished the same export first: use theirs
            if not (final / EXPORT_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _export_file(final, fmt)


def load_detector(weights: str | os.PathLike, backend: str = "torch", *, imgsz: int | None = None,
                  precision: str = "fp32", device: str = "cpu", cache_dir: str | os.PathLike | None = None) -> Detector:
    """Load an Ultralytics ``.pt`` for inference on ``backend`` (:data:`BACKENDS`).

    ``imgsz``: px, the export's tracing size (None = the training size, else 640);
    ``precision``: :data:`PRECISIONS` (:func:`check_precision`; with ``auto`` a runtime without
    bf16 runs fp32); ``device``: Ultralytics' spelling, resolved (``auto`` is torch on a GPU);
    ``cache_dir``: where exports live (default ``.cache/exports``). Missing runtime:
    :class:`MissingRuntimeError`, or torch when ``backend`` is ``auto``."""
    setup_env()
    from ultralytics import YOLO

    run = resolve_backend(backend, device)
    precision = effective_precision(backend, run, precision)
    pt = YOLO(str(weights))
    names = dict(pt.names)
    train_imgsz = ((getattr(pt, "ckpt", None) or {}).get("train_args") or {}).get("imgsz")
    train_imgsz = int(train_imgsz) if train_imgsz else None
    if run == "torch":
        return Detector(pt, names, train_imgsz, run, precision, Path(weights))
    del pt
    src = ensure_export(weights, run, imgsz=imgsz or train_imgsz or 640, cache_dir=cache_dir)
    model = YOLO(str(src), task="detect")
    if run == "openvino":
        model.add_callback("on_predict_start", _openvino_precision(precision, src))
    return Detector(model, names, train_imgsz, run, precision, src)


def _openvino_precision(precision: str, folder: Path):
    """Ultralytics callback: recompile the predictor's OpenVINO model (IR in ``folder``) with
    ``INFERENCE_PRECISION_HINT`` = ``precision`` unless it already runs at it. Ultralytics compiles
    with the plugin's default (bf16 on AMX CPUs) and offers no setting; ``on_predict_start`` runs
    after every predictor set-up, before the first batch."""
    def apply(predictor: Any) -> None:
        import openvino as ov

        be = getattr(predictor.model, "backend", None)
        compiled = getattr(be, "ov_compiled_model", None)
        if compiled is None:
            return
        want = ov.Type.bf16 if precision == "bf16" else ov.Type.f32
        if compiled.get_property("INFERENCE_PRECISION_HINT") == want:
            return
        fn = be.compile_model  # functools.partial(core.compile_model, device_name=..., config=...)
        config = {**fn.keywords.get("config", {}), "INFERENCE_PRECISION_HINT": want}
        be.compile_model = type(fn)(fn.func, **{**fn.keywords, "config": config})
        xml = next(folder.glob("*.xml"))
        be.ov_compiled_model = be.compile_model(fn.func.__self__.read_model(model=str(xml), weights=str(xml.with_suffix(".bin"))))
    return apply


def export_info(detector: Detector) -> dict[str, Any]:
    """What ran, for run cards and benchmarks: backend, precision and (exports) the marker's fields."""
    marker = detector.source.parent / EXPORT_MARKER
    extra = json.loads(marker.read_text()) if detector.backend != "torch" and marker.is_file() else {}
    return {"backend": detector.backend, "precision": detector.precision, "source": str(detector.source), **extra}


# ----------------------------------------------------------------------------- plain torch modules (embedders)
def module_runner(module: Any, example: Any, backend: str, *, key: str, precision: str = "fp32",
                  device: str = "cpu", cache_dir: str | os.PathLike | None = None):
    """``module`` (a torch module, one (N, ...) float32 tensor in, one (N, D) out) as a numpy callable
    on ``backend``, or None for torch (the caller keeps its own forward).

    The export (``onnx``: ``torch.onnx.export`` with a dynamic batch axis; ``openvino``:
    ``openvino.convert_model`` + ``save_model``) is traced on ``example`` and cached under
    ``<cache_dir>/<key[:16]>/<backend>-module/`` (``key``: a content hash of the weights and
    preprocessing), built atomically like :func:`ensure_export`."""
    run = resolve_backend(backend, device)
    precision = effective_precision(backend, run, precision)
    if run == "torch":
        return None
    final = Path(cache_dir or EXPORT_DIR) / key[:16] / f"{run}-module"
    name = "model.onnx" if run == "onnx" else "model.xml"
    if not (final / EXPORT_MARKER).is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{run}-module.tmp-", dir=final.parent))
        try:
            _export_module(module, example, run, tmp / name)
            atomic_write_json(tmp / EXPORT_MARKER, {"key": key, "format": run, "shape": list(example.shape)})
            try:
                os.replace(tmp, final)
            except OSError:  # another process finished the same export first
                if not (final / EXPORT_MARKER).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _load_module(final / name, run, precision)


def _export_module(module: Any, example: Any, run: str, path: Path) -> None:
    import torch

    module = module.eval()
    # autograd on while tracing: under no_grad, eval-mode nn.MultiheadAttention (CLIP's ViT) takes its fused
    # fast path, an operator neither exporter knows
    with torch.inference_mode(False), torch.enable_grad():
        onnx_path = path.with_suffix(".onnx")
        torch.onnx.export(module, (example,), str(onnx_path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
    if run == "openvino":  # from the ONNX graph: OpenVINO's own torch tracing fails its sanity check on CLIP
        import openvino as ov

        ov.save_model(ov.convert_model(str(onnx_path)), str(path), compress_to_fp16=False)
        onnx_path.unlink()


def _load_module(path: Path, run: str, precision: str):
    import numpy as np

    if run == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: sess.run(None, {"x": np.ascontiguousarray(x, np.float32)})[0]
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_PRECISION_HINT": ov.Type.bf16 if precision == "bf16" else ov.Type.f32,
        "PERFORMANCE_HINT": "LATENCY"})
    return lambda x: compiled(np.ascontiguousarray(x, np.float32))[0]
