"""Ultralytics training and one-pass prediction, offline-safe, resumable, idempotent.

``train`` is a thin layer over ``YOLO.train``: a :class:`TrainSpec` (built from the
profile by the section runner, ``flywheel.train_spec``) becomes Ultralytics arguments,
the run lands in ``<out_dir>/<name>/`` (Ultralytics' own ``weights/last.pt``,
``results.csv``, ...) next to a ``run_card.json``. A second call with the same fingerprint
(Ultralytics arguments, data hash, model, init weights) is a no-op; a run that was
interrupted restarts from epoch 0 (``TrainSpec.resume`` False: the same numbers as an
uninterrupted run) or resumes with Ultralytics' own ``resume`` (True: saves hours, but the
numbers differ; the run card says ``resumed: true``). Either way the card counts the
interrupted attempts thrown away (``restarts_after_interrupt``).

``predict`` runs one inference pass over a list of images and returns BDD frames
(``box2d`` in pixels of the original image, ``score`` per label), ready for
:func:`bdd_engine.evaluate.evaluate`. Box convention: Ultralytics' xyxy is used as
``box2d`` unchanged, matching ``yolo.export_yolo`` which writes ``w = x2 - x1``; the
evaluator then applies BDD's +1 to GT and predictions alike.

:func:`resolve_device` is the package's one device resolver (Ultralytics' spelling);
:func:`torch_device` spells its answer for plain torch modules (the embedders).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from bdd_engine import backends, bdd
from bdd_engine import executor as executors
from bdd_engine.checkpoint import atomic_write_df, atomic_write_json, sha256_file
from bdd_engine.env import PROJECT_ROOT, setup_env
from bdd_engine import weights
from bdd_engine.weights import WEIGHTS_DIR, MissingWeightsError

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent / "models"
# Ultralytics arguments every run gets, whatever the spec. patience is Ultralytics' own
# default, pinned here (it is not a profile key): with val off (every profile) Ultralytics'
# early stopping has no fitness to watch and never fires; it is kept in the arguments so
# the fingerprint of every existing run stays the same.
FIXED_ARGS: dict[str, Any] = {"patience": 100, "deterministic": True}


@dataclass(frozen=True)
class TrainSpec:
    """Everything one training run needs besides its data and run folder.

    Built from the profile's ``train_*`` keys by the section runner (``flywheel.train_spec``;
    default.yaml documents each key); arms change ``seed``/``epochs``/``init_weights`` with
    ``dataclasses.replace``. Values reach Ultralytics as given (no casting), so the
    fingerprint of a spec equals the one the profile values always gave.
    """

    model: str                   # bdd_engine/models/ .yaml (from scratch), Ultralytics' yaml, or a .pt (weights/)
    init_weights: str | None     # a .pt to start from (wins over ``model``); None = ``model`` as given
    epochs: int                  # epochs of this run
    imgsz: int                   # px, letterboxed long side
    batch: int                   # images per batch
    nbs: int                     # nominal batch size (gradients accumulate up to it)
    optimizer: str               # Ultralytics optimizer name (explicit: ``auto`` ignores lr0)
    lr0: float                   # initial learning rate
    cos_lr: bool                 # cosine LR schedule
    warmup_epochs: int           # epochs of LR warm-up
    close_mosaic: int            # last N epochs without mosaic
    mosaic: float                # mosaic probability, 0..1
    val: bool                    # Ultralytics' per-epoch validation
    plots: bool                  # Ultralytics' training plots
    seed: int                    # Ultralytics seed (deterministic=True always)
    cpu_bf16: bool               # bf16 autocast when training on a CPU with native bf16 (:func:`cpu_has_bf16`); fp32 otherwise
    cache: str                   # Ultralytics image cache: ``ram`` | ``disk`` | ``off``
    workers: int                 # DataLoader workers (not in the fingerprint)
    device: str                  # ``auto`` | ``cpu`` | ``0``, ``1``... (:func:`resolve_device`; not in the fingerprint)
    synthetic: bool              # recorded in the run card
    profile: str                 # recorded in the run card
    resume: bool = False         # interrupted run: resume from its last epoch (True) or restart from epoch 0 (not in the fingerprint)
    lrf: float | None = None     # final LR fraction; None = Ultralytics' default (0.01), not passed
    warmup_bias_lr: float | None = None  # bias LR at warm-up start; None = Ultralytics' default (0.1), not passed

    def ultralytics_args(self) -> dict[str, Any]:
        """Keyword arguments for ``YOLO.train`` (without model/data/project/device)."""
        a = asdict(self)
        args = {k: a[k] for k in ("imgsz", "batch", "nbs", "optimizer", "lr0", "cos_lr", "warmup_epochs",
                                  "close_mosaic", "mosaic", "val")}
        args["patience"] = FIXED_ARGS["patience"]
        args["epochs"] = int(self.epochs)
        args["seed"] = int(self.seed)
        args["deterministic"] = FIXED_ARGS["deterministic"]
        args["workers"] = int(self.workers)
        args["plots"] = bool(self.plots)
        args["cache"] = False if self.cache == "off" else self.cache
        for k in ("lrf", "warmup_bias_lr"):  # passed only when set: every earlier run keeps its fingerprint
            if a[k] is not None:
                args[k] = a[k]
        return args

    def precision(self, device: str) -> str:
        """``bf16`` (CPU autocast, :func:`cpu_bf16_autocast`, channels-last model) or ``fp32``
        (GPU mixed precision is Ultralytics' own AMP, unaffected)."""
        return "bf16" if self.cpu_bf16 and device == "cpu" and cpu_has_bf16() else "fp32"


# ----------------------------------------------------------------------------- resolution
def resolve_device(device: str | None) -> str:
    """The package's one device resolver, in Ultralytics' spelling.

    ``auto`` (or None/empty) → ``"0"`` (first CUDA GPU) if torch sees one, else ``"cpu"``;
    anything else (``cpu``, ``0``, ``0,1``, ``mps``) verbatim."""
    if device in (None, "", "auto"):
        import torch

        return "0" if torch.cuda.is_available() else "cpu"
    return str(device)


def torch_device(device: str | None) -> str:
    """:func:`resolve_device`, spelled for ``torch.Tensor.to``: ``"0"`` → ``"cuda:0"``
    (a list such as ``0,1`` → its first GPU); ``cpu``/``mps``/``cuda:N`` verbatim."""
    d = resolve_device(device)
    first = d.split(",")[0].strip()
    return f"cuda:{first}" if first.isdigit() else d


def _weights_path(name: str | os.PathLike) -> Path:
    """A .pt by path (absolute or project-relative) or by bare name under weights/."""
    p = Path(name)
    for cand in ([p] if p.is_absolute() else [PROJECT_ROOT / p, WEIGHTS_DIR / p.name]):
        if cand.is_file():
            return cand
    raise MissingWeightsError(f"weights {str(name)!r} not found (looked in {PROJECT_ROOT / p} and {WEIGHTS_DIR}); {weights.HINT}")


def resolve_model(model: str, init_weights: str | os.PathLike | None = None) -> tuple[str, bool]:
    """(what to pass to ``YOLO()``, pretrained flag).

    ``init_weights`` (a .pt: COCO weights or a previous iteration) wins; else a ``.pt``
    model name must exist locally; else a ``.yaml`` from ``bdd_engine/models/`` or one of
    Ultralytics' bundled yamls (e.g. ``yolov8n.yaml``), built offline from scratch.
    """
    if init_weights:
        return str(_weights_path(init_weights)), True
    if str(model).endswith(".pt"):
        return str(_weights_path(model)), True
    if str(model).endswith((".yaml", ".yml")):
        local = MODELS_DIR / Path(model).name
        return (str(local) if local.is_file() else str(model)), False
    raise ValueError(f"train_model {model!r}: expected a .yaml (from scratch) or a .pt (weights/)")


def free_memory() -> None:
    """Give back what dropped models and finished training runs held: Python's cycles, glibc's
    freed heap (``malloc_trim``), then PyTorch's cached CUDA blocks. Measured on smoke-full
    (YOLOv8m, 640, CPU): a process sat at 3.7 GB after one training run, 0.9 GB after the trim;
    without it §8's gsam2 golden labelling stacked on §7's leftovers to a 10 GB peak.
    Called after every training run and after §7 drops its labeler."""
    import ctypes
    import gc

    import torch

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def git_commit() -> str:
    """HEAD commit of the project (+ ``-dirty`` when tracked files changed), or ``unknown``."""
    try:
        head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "-uno"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + ("-dirty" if dirty else "")) if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def checkpoint_state(last: Path) -> str:
    """What an Ultralytics ``last.pt`` is: ``"finished"`` (stripped: epoch -1, no
    optimizer), ``"resumable"`` (epochs remain), ``"finished-unstripped"`` (the last
    epoch was saved but the run died before Ultralytics stripped it — its ``resume``
    refuses such a file with "nothing to resume") or ``"unusable"`` (unreadable)."""
    import torch

    try:
        ck = torch.load(last, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated by a kill or a full disk
        log.warning("cannot read %s (%s)", last, e)
        return "unusable"
    epoch = int(ck.get("epoch", -1))
    if epoch < 0 or ck.get("optimizer") is None:
        return "finished"
    total = int((ck.get("train_args") or {}).get("epochs", 0) or 0)
    return "finished-unstripped" if total and epoch + 1 >= total else "resumable"


def finalize_unstripped(run_dir: Path) -> None:
    """Do what Ultralytics' final step would have done: strip the optimizer (and EMA
    bookkeeping) from last.pt/best.pt so the weights load as a finished run."""
    setup_env()
    from ultralytics.utils.torch_utils import strip_optimizer

    for f in (run_dir / "weights" / "last.pt", run_dir / "weights" / "best.pt"):
        if f.is_file():
            strip_optimizer(f)


def _prepare_amp(device: str) -> bool:
    """AMP only on GPU, and only when its check can run offline: Ultralytics' AMP check
    loads ``yolo26n.pt`` (downloading it when absent). We copy ``weights/yolo26n.pt``
    into Ultralytics' weights dir if shipped; otherwise AMP is off (slower, never hangs)."""
    if device == "cpu" or device.startswith("mps"):
        return False
    from ultralytics.utils import WEIGHTS_DIR as UL_WEIGHTS

    target = Path(UL_WEIGHTS) / "yolo26n.pt"
    src = weights.path("yolo26n")
    if not target.is_file() and src.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    if not target.is_file():
        log.warning("AMP disabled: weights/yolo26n.pt (Ultralytics' AMP self-check model) is absent; %s", weights.HINT)
        return False
    return True


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16 flags): there bf16
    autocast roughly halves a training step (facts.md); elsewhere it would be emulated, slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to know, stay fp32
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


@contextlib.contextmanager
def cpu_bf16_autocast(enabled: bool):
    """While active, Ultralytics' training step runs under ``torch.autocast("cpu", bfloat16)``.

    Ultralytics enables mixed precision only on CUDA (its ``autocast`` helper raises for
    bf16 on CPU), and its train loop has no hook around the forward pass, so we swap the
    helper that loop calls for the duration of one ``YOLO.train``. Weights, optimizer state
    and saved checkpoints stay fp32/fp16 as usual; only the forward/backward arithmetic
    changes. The loss's own fp32 regions (``autocast(enabled=False)`` in its module) are kept.
    """
    if not enabled:
        yield
        return
    import torch
    import ultralytics.engine.trainer as ul_trainer

    original = ul_trainer.autocast

    def autocast(amp: Any, device: str = "cuda"):
        return torch.autocast("cpu", dtype=torch.bfloat16) if device == "cpu" else original(amp, device=device)

    ul_trainer.autocast = autocast
    try:
        yield
    finally:
        ul_trainer.autocast = original


# ----------------------------------------------------------------------------- train
def fingerprint(spec: TrainSpec, data_hash: str, model: str, init_weights: str | None, precision: str = "fp32") -> str:
    """Everything that changes the trained weights: the Ultralytics arguments of ``spec``
    (device, workers, cache and paths excluded), the data hash, the model and init weights
    (sha256 when they are files; ``model``/``init_weights`` as :func:`resolve_model` gives
    them) and the arithmetic (``precision``: bf16 autocast trains different weights)."""
    init_hash = sha256_file(init_weights) if init_weights and Path(init_weights).is_file() else None
    model_hash = sha256_file(model) if Path(model).is_file() else model
    payload = {"args": {k: v for k, v in spec.ultralytics_args().items() if k not in ("workers", "cache")},
               "data": data_hash, "model": model_hash, "init": init_hash}
    if precision != "fp32":  # fp32 runs keep the fingerprint they always had
        payload["precision"] = precision
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_card(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _weights_of(run_dir: Path, val: bool) -> Path:
    """With val=False Ultralytics' 'best' is just the last epoch; return last.pt then."""
    w = run_dir / "weights"
    return w / "best.pt" if val and (w / "best.pt").exists() else w / "last.pt"


def train(spec: TrainSpec, data_yaml: str | os.PathLike, out_dir: str | os.PathLike, *, name: str,
          data_hash: str | None = None, callbacks: Mapping[str, Callable] | None = None) -> Path:
    """Train (or resume, or skip when fresh) and return the weights path.

    ``spec``: the run's hyper-parameters, model, init weights and device (:class:`TrainSpec`).
    ``data_yaml``: an Ultralytics data yaml (``yolo.export_yolo``). Run folder:
    ``<out_dir>/<name>/`` with Ultralytics' outputs and ``run_card.json`` (spec provenance,
    Ultralytics arguments, data hash, git commit, device, wall time, final Ultralytics val
    metrics). ``data_hash``: identifies the training data (pass the data manifest hash: the
    yaml alone does not change when labels do); None = sha256 of the yaml. ``callbacks``:
    extra Ultralytics callbacks {event: fn} (tests use them to interrupt a run).
    """
    setup_env()  # offline-safe Ultralytics settings before it is imported (no settings file in ~, no downloads)
    data_yaml = Path(data_yaml).resolve()
    if not data_yaml.is_file():
        raise FileNotFoundError(f"data yaml not found: {data_yaml} (export it with bdd_engine.yolo.export_yolo)")
    run_dir = Path(out_dir).resolve() / name
    card_path = run_dir / "run_card.json"
    model_src, pretrained = resolve_model(spec.model, spec.init_weights)
    dhash = data_hash or sha256_file(data_yaml)
    device = resolve_device(spec.device)
    precision = spec.precision(device)
    fp = fingerprint(spec, dhash, model_src, model_src if pretrained else None, precision)
    args = spec.ultralytics_args()
    weights = _weights_of(run_dir, bool(args["val"]))

    card = _read_card(card_path)
    same = card.get("fingerprint") == fp
    if same and card.get("finished") and weights.is_file() and (spec.resume or not card.get("resumed")):
        log.info("training %s is fresh (fingerprint %s): reusing %s", name, fp, weights)
        return weights

    state = _previous_run(run_dir, card, fp)
    if state == "finished" and (spec.resume or not card.get("resumed")):
        # every epoch ran (finalising an unstripped last epoch gives the uninterrupted weights): write the card
        return _finish_card(card_path, card, run_dir, args, spec.epochs, metrics={},
                            wall=float(card.get("wall_time_s", 0.0)), resumed=bool(card.get("resumed", False)))
    resume = state == "resumable" and spec.resume
    restarted = same and state in ("resumable", "finished") and not resume  # interrupted, and resuming is off
    if restarted:
        log.info("%s was interrupted; restarting it from epoch 0 (resuming is off: an uninterrupted run's numbers)",
                 name)
    if run_dir.exists() and not resume:
        log.info("discarding %s (different fingerprint, unusable checkpoint or an interrupted run)", run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    base_card = {**_run_card(spec, name, fp, model_src, pretrained, data_yaml, dhash, args, device),
                 "precision": precision}
    # interrupted runs thrown away so far (restarted from epoch 0), kept across further interruptions
    earlier = int(card.get("restarts_after_interrupt", 0)) if same else 0
    base_card["restarts_after_interrupt"] = earlier + int(restarted)
    if resume:
        base_card["resumed"] = True   # a kill during the resumed part must not forget it
    atomic_write_json(card_path, base_card)   # the fingerprint a later resume must match

    t0 = time.time()
    with cpu_bf16_autocast(precision == "bf16"):
        metrics = _fit(run_dir, model_src, pretrained, resume, data_yaml, device, args, callbacks,
                       bf16=precision == "bf16")
    wall = time.time() - t0
    free_memory()  # the trainer's GBs go back to the OS before the next run or section
    prev_wall = float(card.get("wall_time_s", 0.0)) if resume else 0.0
    return _finish_card(card_path, base_card, run_dir, args, spec.epochs, metrics, prev_wall + wall, resumed=resume)


def _previous_run(run_dir: Path, card: Mapping[str, Any], fp: str) -> str:
    """What an earlier run with this fingerprint left: ``"finished"`` (an unstripped last
    epoch is finalised first), ``"resumable"``, or ``"unusable"`` (none, or another fingerprint)."""
    last = run_dir / "weights" / "last.pt"
    same = card.get("fingerprint") == fp and last.is_file()
    state = checkpoint_state(last) if same else "unusable"
    if state == "finished-unstripped":
        log.info("%s: the last epoch was saved but the run was interrupted before it was finalised; finalising",
                 run_dir.name)
        finalize_unstripped(run_dir)
        state = "finished"
    return state


def _run_card(spec: TrainSpec, name: str, fp: str, model_src: str, pretrained: bool, data_yaml: Path, dhash: str,
              args: Mapping[str, Any], device: str) -> dict[str, Any]:
    """The run card written before training starts (``finished: false``)."""
    import ultralytics

    return {
        "name": name, "fingerprint": fp, "finished": False, "synthetic": bool(spec.synthetic),
        "profile": spec.profile, "model": model_src, "pretrained": pretrained,
        "init_weights": str(spec.init_weights) if spec.init_weights else None, "data_yaml": str(data_yaml),
        "data_hash": dhash, "config": dict(args),
        "git_commit": git_commit(), "device": device, "torch": _torch_version(),
        "ultralytics": ultralytics.__version__, "python": platform.python_version(),
    }


def _channels_last(trainer: Any) -> None:
    """Ultralytics callback: the model and its EMA in channels-last memory format. ``Module.to``
    keeps the Parameter objects, so the optimizer built just before still holds them."""
    import torch

    trainer.model.to(memory_format=torch.channels_last)
    if getattr(trainer, "ema", None) is not None:
        trainer.ema.ema.to(memory_format=torch.channels_last)


def _epoch_bar(name: str) -> dict[str, Callable]:
    """Ultralytics callbacks drawing one tqdm bar over a run's epochs (resumed runs start
    where they stopped), so a headless run shows training progress."""
    from tqdm.auto import tqdm

    bar: dict[str, Any] = {}

    def start(trainer: Any) -> None:
        bar["t"] = tqdm(total=int(trainer.epochs), initial=int(trainer.start_epoch), desc=f"train {name}",
                        unit="epoch", mininterval=1)

    def epoch_end(trainer: Any) -> None:
        if "t" in bar:
            bar["t"].update(1)

    def end(trainer: Any) -> None:
        if "t" in bar:
            bar.pop("t").close()

    return {"on_train_start": start, "on_train_epoch_end": epoch_end, "on_train_end": end}


def _fit(run_dir: Path, model_src: str, pretrained: bool, resume: bool, data_yaml: Path, device: str,
         args: Mapping[str, Any], callbacks: Mapping[str, Callable] | None, bf16: bool = False) -> dict[str, float]:
    """Run (or resume) ``YOLO.train``; Ultralytics' final metrics as floats. ``bf16``: the
    caller holds :func:`cpu_bf16_autocast`; the model also goes channels-last."""
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    # Ultralytics' own logger integrations switch on when their package is importable: its MLflow
    # callback would log every run a second time into ./runs/mlflow (outside outputs/), and the
    # Ray Tune one imports ray into every training. Our runs are tracked by bdd_engine itself.
    _off = {k: False for k in ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb") if SETTINGS.get(k)}
    if _off:
        SETTINGS.update(_off)
    last = run_dir / "weights" / "last.pt"
    if resume:
        log.info("resuming interrupted training %s from %s", run_dir.name, last)
        model = YOLO(str(last))
    else:
        model = YOLO(model_src)
    if bf16:  # channels-last lets oneDNN's bf16 convolutions skip a layout change per layer (~15% of a step)
        model.add_callback("on_pretrain_routine_end", _channels_last)
    for event, fn in _epoch_bar(run_dir.name).items():  # verbose=False silences Ultralytics' own bars
        model.add_callback(event, fn)
    for event, fn in (callbacks or {}).items():
        model.add_callback(event, fn)
    if resume:
        model.train(resume=True, data=str(data_yaml), device=device, workers=args["workers"])
    else:
        model.train(data=str(data_yaml), project=str(run_dir.parent), name=run_dir.name, exist_ok=True,
                    pretrained=pretrained, device=device, amp=_prepare_amp(device), verbose=False, **args)
    trainer = model.trainer
    return {k: float(v) for k, v in (getattr(trainer, "metrics", None) or {}).items()
            if isinstance(v, (int, float, np.floating))}


def _finish_card(card_path: Path, base_card: Mapping[str, Any], run_dir: Path, args: Mapping[str, Any], n_epochs: int,
                 metrics: Mapping[str, float], wall: float, resumed: bool) -> Path:
    """Mark a run finished in its run card (written last: the card is what 'fresh' reads)."""
    weights = _weights_of(run_dir, bool(args["val"]))
    if not weights.is_file():
        raise RuntimeError(f"Ultralytics finished without {weights}; see {run_dir}")
    atomic_write_json(card_path, {
        **base_card, "finished": True, "resumed": resumed,
        "epochs": int(n_epochs), "wall_time_s": round(wall, 2),
        "weights": str(weights), "weights_sha256": sha256_file(weights),
        "final_metrics": {"source": "ultralytics val on data.yaml val split (not the BDD metric)", **metrics},
    })
    return weights


def _torch_version() -> str:
    import torch

    return torch.__version__


# ----------------------------------------------------------------------------- predict
PREDICT_CHUNK_BATCHES = 16  # batches per Ultralytics predict call (see predict)


class PredictBatch:
    """The prediction stage, a batch callable: the detector loads once in ``__init__``; a batch of
    image paths in, one BDD frame per image out (``{"frame": dict, "error": str}``; see
    :func:`predict` for the arguments). One Ultralytics streaming call per batch: frames meet
    the batch-mates of their ``batch``-sized forward passes, so give it whole multiples of
    ``batch``. An unreadable image raises (the executor then redoes the batch frame by frame
    and :meth:`failed` records the frame)."""

    def __init__(self, weights: str | os.PathLike, *, conf: float, device: str, imgsz: int | None = None,
                 batch: int = 16, iou: float = 0.7, max_det: int = 300, backend: str = "torch",
                 precision: str = "fp32"):
        dev = resolve_device(device)
        det = backends.load_detector(_weights_path(weights), backend, imgsz=imgsz, precision=precision, device=dev)
        model, class_names = det.model, det.names
        unknown = sorted(set(class_names.values()) - set(bdd.CLASSES))
        if unknown:
            raise ValueError(f"model classes {unknown} are not BDD classes; was it trained on a BDD export?")
        if imgsz is None:  # infer at the training resolution, not Ultralytics' 640 default
            imgsz = det.train_imgsz or 640
        self.model, self.class_names = model, class_names
        self.kw = {"batch": batch, "conf": conf, "iou": iou, "imgsz": imgsz, "max_det": max_det,
                   "device": dev, "verbose": False}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [Path(p) for p in batch["path"]]
        frames = np.empty(len(paths), dtype=object)
        results = self.model.predict([str(p) for p in paths], stream=True, **self.kw)
        for k, (path, r) in enumerate(zip(paths, results)):
            if Path(r.path).name != path.name:  # results come back in input order; guard it
                raise RuntimeError(f"prediction order mismatch: {r.path} vs {path}")
            xyxy = r.boxes.xyxy.cpu().numpy().astype(float)
            cls = r.boxes.cls.cpu().numpy().astype(int)
            score = r.boxes.conf.cpu().numpy().astype(float)
            labels = [{"id": str(j), "category": self.class_names[int(c)],
                       "box2d": {"x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3]}, "score": s}
                      for j, (b, c, s) in enumerate(zip(xyxy.tolist(), cls, score.tolist()))]
            frames[k] = {"name": path.name, "attributes": {}, "labels": labels}
        return {"frame": frames, "error": np.full(len(paths), "", dtype=object)}

    def failed(self, batch: dict[str, np.ndarray], message: str) -> dict[str, np.ndarray]:
        frames = np.empty(len(batch["path"]), dtype=object)
        frames[:] = [{"name": Path(p).name, "attributes": {}, "labels": []} for p in batch["path"]]
        return {"frame": frames, "error": np.full(len(frames), message, dtype=object)}


def predict(weights: str | os.PathLike, image_paths: Sequence[str | os.PathLike], *, conf: float, device: str,
            imgsz: int | None = None, batch: int = 16, iou: float = 0.7, max_det: int = 300,
            progress: bool = True, executor: executors.Executor = executors.LOCAL, backend: str = "torch",
            precision: str = "fp32") -> list[dict[str, Any]]:
    """One inference pass → BDD frames ``{"name", "attributes": {}, "labels": [...]}``.

    Labels: ``category`` (the model's class name, must be a BDD class), ``box2d`` xyxy in
    pixels of the original image, ``score``. ``conf``: score threshold in [0, 1] (for mAP
    keep it low, e.g. the profile's ``eval_conf`` 0.001: COCO/BDD eval expects low-score
    detections; filter later for pictures). ``device``: ``auto`` | ``cpu`` | ``0``...
    (:func:`resolve_device`). ``batch``: images per forward pass. NMS IoU 0.7 and
    ``max_det`` 300 are Ultralytics' validation defaults. ``imgsz`` None = the size the
    weights were trained at (from the checkpoint; 640 if unknown). Missing image files raise,
    and so does an image the detector cannot read (naming it). ``executor``: where
    :class:`PredictBatch` runs (the same chunks, so the same frames, on either). ``backend`` /
    ``precision``: :func:`bdd_engine.backends.load_detector` (``torch`` | ``onnx`` | ``openvino`` |
    ``auto``; ``fp32`` | ``bf16``).
    """
    from tqdm.auto import tqdm

    paths = [Path(p) for p in image_paths]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} images missing, e.g. {missing[0]}")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise ValueError("image file names must be unique (they are the BDD frame names)")
    # Chunks of PREDICT_CHUNK_BATCHES batches, one streaming call each: one call over a whole list kept every
    # decoded frame alive until it returned (≈ 3.4 MB per 1280x720 frame: 7.1 GB for the demo's 1,853 pool
    # frames); chunks hold whole batches, so every frame meets the same batch-mates and results are unchanged.
    spans = executors.chunks(len(paths), batch * PREDICT_CHUNK_BATCHES)
    outs = executors.run(PredictBatch, (executors.take({"path": [str(p) for p in paths]}, r) for r in spans),
                         executor=executor, name="predict",
                         stage_kwargs={"weights": weights, "conf": conf, "device": device, "imgsz": imgsz,
                                       "batch": batch, "iou": iou, "max_det": max_det, "backend": backend,
                                       "precision": precision})
    frames: list[dict[str, Any]] = []
    with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
        for out in outs:
            bad = [(fr["name"], e) for fr, e in zip(out["frame"], out["error"]) if e]
            if bad:
                raise RuntimeError(f"predict: cannot read {len(bad)} image(s), e.g. {bad[0][0]}: {bad[0][1]}")
            frames += list(out["frame"])
            bar.update(len(out["frame"]))
    return frames


def save_predictions(frames: Iterable[Mapping[str, Any]], json_path: str | os.PathLike,
                     parquet_path: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """Write predictions as BDD JSON and (optionally) a columnar box table
    (``bdd.BOX_COLUMNS``; :func:`bdd_engine.evaluate.evaluate` accepts it directly)."""
    frames = list(frames)
    j = bdd.write_bdd_json(frames, json_path)
    p = atomic_write_df(parquet_path, bdd.boxes_table(frames)) if parquet_path else None
    return j, p


def filter_conf(frames: Iterable[Mapping[str, Any]], conf: float) -> list[dict[str, Any]]:
    """Copy of prediction frames keeping labels with ``score >= conf`` (for pictures)."""
    return [{**fr, "labels": [lb for lb in fr.get("labels") or [] if lb.get("score", 1.0) >= conf]} for fr in frames]
