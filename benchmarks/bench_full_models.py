"""Seconds per image on this CPU for the full profile's three heavy steps, at full resolution.

* ``gsam2``: §7's labeler through the package's own factory (``autolabel.get_labeler`` on the
  profile: Grounding DINO tiny + SAM 2.1 hiera-tiny, 1280x720 frames), whole ``label()`` call,
  and its two stages (``detect``: Grounding DINO + NMS; ``masks``: SAM 2.1 on the kept boxes);
* ``clip``: §2/§6's embedder (``embed.get_embedder`` + ``embed.embed_frames``: JPEG decode,
  preprocessing and the ViT-B-32 image tower);
* ``yolov8m``: inference at the profile's ``train_imgsz`` (Ultralytics ``predict``, what §5/§6/§8
  and the teacher run) and one training step (forward + backward of a batch, train mode, no
  optimizer: the bulk of §4/§7's time per image).

Default profile ``smoke-full``: STAND-IN weights (random values; exact architectures and input
sizes, so the compute per image is the real one, except that SAM's cost grows with the number
of boxes Grounding DINO keeps — reported as ``boxes_per_image``). Model loading is excluded;
one warm-up call precedes each timing. Torch uses every core it sees (set ``--threads``);
on a shared machine say what else was running.

Run: ``.venv/bin/python benchmarks/bench_full_models.py [--profile smoke-full] [--n 6]``
(~3 min on 2 cores). Last line: ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bdd_engine.env import setup_env  # noqa: E402

setup_env()  # offline-safe env before ultralytics/open_clip/transformers are imported
from bdd_engine import autolabel, bdd, embed, synth  # noqa: E402
from bdd_engine.autolabel.base import load_rgb  # noqa: E402
from bdd_engine.config import load_config  # noqa: E402
from bdd_engine.train import _weights_path, resolve_device  # noqa: E402


def timed(fn, *args, **kw) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def world_images(cfg, n: int) -> list[Path]:
    """The first ``n`` train frames of the profile's world (generated if missing)."""
    root = synth.ensure_world(cfg)
    frames = bdd.load_frames(root / "labels/det_20/det_train.json")
    index = bdd.index_images(root, cfg.image_sets)
    return [Path(index[f["name"]]) for f in frames if f["name"] in index][:n]


def bench_gsam2(cfg, paths: list[Path]) -> dict:
    labeler = autolabel.get_labeler(cfg, name="gsam2")
    frames = [{"name": p.name, "attributes": {}, "labels": []} for p in paths]
    labeler.label(frames[:1], paths[:1], progress=False)  # warm-up
    t_all, run = timed(labeler.label, frames, paths, progress=False)
    images = [load_rgb(p) for p in paths]
    t_det, dets = timed(labeler.detect, images)
    boxes = [b[: labeler.max_dets] for b, _, _ in dets]
    t_mask, _ = timed(labeler.masks, images, boxes)
    n = len(paths)
    return {"s_per_img": round(t_all / n, 3), "detect_s_per_img": round(t_det / n, 3),
            "masks_s_per_img": round(t_mask / n, 3), "boxes_per_image": round(sum(map(len, boxes)) / n, 1),
            "labels": run.n_labels, "failed": run.n_failed, "image_wh": list(images[0].size)}


def bench_clip(cfg, paths: list[Path]) -> dict:
    emb = embed.get_embedder("clip", device=str(cfg.device), imgsz=int(cfg.embed_imgsz), clip_arch=str(cfg.embed_clip_arch),
                             clip_weights=cfg.embed_clip_weights, dinov2_dir=None)
    emb.embed_batch([load_rgb(paths[0])])  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        t, (arr, _) = timed(embed.embed_frames, emb, [str(p) for p in paths], [p.name for p in paths], tmp,
                            batch_size=int(cfg.embed_batch), workers=0, progress=False)
        dim = int(arr.shape[1])
    return {"s_per_img": round(t / len(paths), 3), "dim": dim, "batch": int(cfg.embed_batch)}


def _tensors(out) -> list:
    """Every tensor in a head's training output (a list, or a dict of lists in newer Ultralytics)."""
    if hasattr(out, "float"):
        return [out]
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else []
    return [t for o in items for t in _tensors(o)]


def bench_yolov8m(cfg, paths: list[Path], batch: int) -> dict:
    import torch
    from ultralytics import YOLO

    imgsz = int(cfg.train_imgsz)
    model = YOLO(str(_weights_path(cfg.train_init_weights)))
    dev = resolve_device(str(cfg.device))
    kw = dict(imgsz=imgsz, conf=float(cfg.eval_conf), device=dev, verbose=False, batch=batch)
    list(model.predict([str(paths[0])], stream=True, **kw))  # warm-up
    t_pred, _ = timed(lambda: list(model.predict([str(p) for p in paths], stream=True, **kw)))
    net = model.model.train()
    for p in net.parameters():
        p.requires_grad_(True)
    x = torch.rand(batch, 3, imgsz, imgsz)
    step = lambda: sum(t.float().sum() for t in _tensors(net(x))).backward()  # noqa: E731 (fwd + bwd, no optimizer)
    step()  # warm-up
    t_step, _ = timed(step)
    return {"predict_s_per_img": round(t_pred / len(paths), 3), "train_step_s_per_img": round(t_step / batch, 3),
            "imgsz": imgsz, "train_batch": batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="smoke-full")
    ap.add_argument("--n", type=int, default=6, help="images per timing")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--only", action="append", choices=("gsam2", "clip", "yolov8m"))
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_config(a.profile)
    paths = world_images(cfg, a.n)
    result = {"profile": a.profile, "n_images": len(paths), "torch_threads": torch.get_num_threads(),
              "device": resolve_device(str(cfg.device))}
    steps = {"gsam2": lambda: bench_gsam2(cfg, paths), "clip": lambda: bench_clip(cfg, paths),
             "yolov8m": lambda: bench_yolov8m(cfg, paths, int(cfg.train_batch))}
    for name in a.only or steps:
        result[name] = steps[name]()
        print(f"{name}: {json.dumps(result[name])}", flush=True)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
