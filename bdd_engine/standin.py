"""Stand-in weights: the full profile's models with their exact architectures and file
layouts, randomly initialised and built offline.

    python -m bdd_engine stand-in-weights --out DIR [--only NAME ...] [--if-missing]

Each file or folder lands at the path ``weights.REGISTRY`` gives it under ``DIR`` (the
layout ``./setup.sh --weights`` downloads), so ``--set``-ing a profile's weights to
``DIR`` (or ``--out weights`` explicitly) runs every loader in the package on it. The
weights are RANDOM: every output means nothing. ``DIR/STAND_IN.json`` names each file,
its measured parameter count, the published figure (with its source) and ``"random":
true``. Nothing is written unless ``--out`` names a folder; an existing file or folder
that ``STAND_IN.json`` does not list as a stand-in is never overwritten
(:class:`StandInRefused`).

Published figures (parameter counts of the real checkpoints) and where they come from:

* ``yolov8m`` 25.9M — Ultralytics docs, YOLOv8 "Performance" table (docs.ultralytics.com/models/yolov8,
  YOLOv8m: params (M) 25.9). Built from Ultralytics' ``yolov8m.yaml`` (nc=80) with the COCO
  class names of its ``coco.yaml``.
* ``clip`` 151.28M — open_clip's model profile table (``docs/model_profile.csv`` in
  mlfoundations/open_clip: ViT-B-32, 151.28M params, image + text towers). Saved as a plain state
  dict in ``open_clip_pytorch_model.bin`` (the file laion/CLIP-ViT-B-32-laion2B-s34B-b79K ships).
* ``dinov2`` 22.1M — the hub model page of facebook/dinov2-small ("Model size 22.1M params", its
  safetensors); the DINOv2 paper/README round ViT-S/14 to 21M without the 518-px position
  embeddings. Config = the hub's config.json (hidden 384, 12 layers, 6 heads, patch 14, 518 px).
* ``grounding-dino`` 172M — the hub model page of IDEA-Research/grounding-dino-tiny ("Model size
  172M params"). Config = transformers' ``GroundingDinoConfig()`` defaults, which its docstring
  states reproduce that checkpoint (Swin-T backbone, BERT-base text side, 900 queries).
* ``sam2`` 38.9M — facebookresearch/sam2 README checkpoint table (sam2.1_hiera_tiny: 38.9M).
  Hub layout of facebook/sam2.1-hiera-tiny: a ``sam2_video`` checkpoint (``Sam2VideoConfig()``
  defaults, documented as that checkpoint) + ``Sam2VideoProcessor``.

Tolerance: :data:`TOLERANCE` (1 %, issue 14's acceptance) of the published figure.

Grounding DINO's processor needs BERT tokenizer files. The real bert-base-uncased vocab
cannot be downloaded here, so :func:`bert_vocab` builds one of the real size (30,522) in
BERT's layout: [PAD] 0, [unused0-98] 1-99, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103,
[unused99-993] 104-998, the printable ASCII of the uncased vocab from 999 ('!') so '.'
is 1012 and '?' 1029 (ids Grounding DINO hard-codes), then the prompt words, '##a'-'##z'
and numbered fillers. In transformers 5.x the tokenizer must be built from the vocab
*dict* (a vocab file is silently ignored).
"""

from __future__ import annotations

import json
import re
import shutil
import string
import time
from collections.abc import Iterable
from pathlib import Path

from bdd_engine import weights
from bdd_engine.autolabel.prompts import DEFAULT_PROMPT, PHRASE_TO_CLASS
from bdd_engine.env import setup_env

MARKER = weights.STAND_IN_MARKER
TOLERANCE = 0.01  # relative, against the published figure
MODELS = ("yolov8m", "clip", "dinov2", "grounding-dino", "sam2")
BERT_VOCAB_SIZE = 30522

# name -> (published parameter count, source of that figure)
PUBLISHED: dict[str, tuple[float, str]] = {
    "yolov8m": (25.9e6, "Ultralytics docs, YOLOv8 performance table (docs.ultralytics.com/models/yolov8): 25.9M"),
    "clip": (151.28e6, "open_clip docs/model_profile.csv, ViT-B-32: 151.28M (image + text)"),
    "dinov2": (22.1e6, "hub model page facebook/dinov2-small: 22.1M params (DINOv2 README rounds ViT-S/14 to 21M)"),
    "grounding-dino": (172e6, "hub model page IDEA-Research/grounding-dino-tiny: 172M params"),
    "sam2": (38.9e6, "facebookresearch/sam2 README checkpoint table, sam2.1_hiera_tiny: 38.9M"),
}


class StandInRefused(RuntimeError):
    """The target exists and is not a stand-in this module wrote: it is left alone."""


# ---------------------------------------------------------------- layout + marker

def target(out: Path, name: str) -> Path:
    """Where ``name`` goes under ``out``: the same relative path as under weights/."""
    return Path(out) / weights.REGISTRY[name][0]


def read_marker(out: Path) -> dict:
    p = Path(out) / MARKER
    return json.loads(p.read_text()) if p.is_file() else {"files": {}}


def check_targets(out: Path, names: Iterable[str]) -> None:
    """Raise :class:`StandInRefused` if any target exists and the marker does not list it."""
    listed = read_marker(out).get("files", {})
    clash = [str(target(out, n)) for n in names
             if target(out, n).exists() and weights.REGISTRY[n][0] not in listed]
    if clash:
        raise StandInRefused(f"refusing to overwrite {', '.join(clash)}: not listed as stand-in in "
                             f"{Path(out) / MARKER} (real weights?). Choose another --out folder or move them.")


def missing(out: Path, names: Iterable[str] = MODELS) -> list[str]:
    """Models whose stand-in is not complete under ``out``: target absent, or not yet listed
    in the marker (the marker is written after each model, so a build killed mid-save is redone)."""
    listed = read_marker(out).get("files", {})
    return [n for n in names if not target(out, n).exists() or weights.REGISTRY[n][0] not in listed]


def check_count(name: str, n_params: int) -> float:
    """Relative deviation from the published figure; AssertionError beyond TOLERANCE."""
    pub = PUBLISHED[name][0]
    dev = abs(n_params - pub) / pub
    if dev > TOLERANCE:
        raise AssertionError(f"{name}: {n_params:,} parameters, published {pub:,.0f} "
                             f"({dev:.2%} off, tolerance {TOLERANCE:.0%})")
    return dev


def write_marker(out: Path, entries: dict[str, dict]) -> Path:
    marker = read_marker(out)
    marker.update({"stand_in": True, "random": True,
                   "note": "STAND-IN weights: exact architectures and file layouts, RANDOMLY initialised; "
                           "every prediction/embedding from them is meaningless. Built offline by "
                           "`python -m bdd_engine stand-in-weights`."})
    marker.setdefault("files", {}).update(entries)
    p = Path(out) / MARKER
    p.write_text(json.dumps(marker, indent=2) + "\n")
    return p


def _clear(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


def _count(model) -> int:
    return int(sum(t.numel() for t in model.parameters()))


# ---------------------------------------------------------------- BERT vocab

def prompt_words() -> list[str]:
    """Lower-cased words of the default prompt and every phrase the package maps."""
    text = " ".join([DEFAULT_PROMPT, *PHRASE_TO_CLASS])
    return sorted(set(re.findall(r"[a-z]+", text.lower())))


def bert_vocab(size: int = BERT_VOCAB_SIZE) -> dict[str, int]:
    """A BERT-base-uncased-layout vocab of ``size`` tokens (see the module docstring)."""
    special = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
    toks: list[str] = []
    unused = 0
    for i in range(999):
        if i in special:
            toks.append(special[i])
        else:
            toks.append(f"[unused{unused}]")
            unused += 1
    # printable ASCII without space and upper case, in code-point order, as in bert-base-uncased
    toks += [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    toks = list(dict.fromkeys(toks))
    assert toks[1012] == "." and toks[1029] == "?", "BERT layout broken"
    seen = set(toks)
    for t in [*prompt_words(), *(f"##{c}" for c in string.ascii_lowercase), *string.ascii_lowercase]:
        if t not in seen:
            toks.append(t)
            seen.add(t)
    toks += [f"[standin{i}]" for i in range(size - len(toks))]
    return {t: i for i, t in enumerate(toks)}


def bert_tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab=bert_vocab(), do_lower_case=True)


# ---------------------------------------------------------------- builders (each returns its parameter count)

def build_yolov8m(dest: Path) -> int:
    import yaml
    from ultralytics import YOLO
    from ultralytics.utils import ROOT as UL_ROOT

    model = YOLO("yolov8m.yaml")  # packaged architecture yaml (nc=80), never a download
    names = yaml.safe_load((UL_ROOT / "cfg" / "datasets" / "coco.yaml").read_text())["names"]
    model.model.names = dict(names)
    dest.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(dest))
    return _count(model.model)


def build_clip(dest: Path, arch: str = "ViT-B-32") -> int:
    import open_clip
    import torch

    model = open_clip.create_model(arch, pretrained=None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), dest)
    return _count(model)


def dinov2_small_config():
    from transformers import Dinov2Config

    # facebook/dinov2-small config.json
    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                        image_size=518, patch_size=14, layerscale_value=1.0, layer_norm_eps=1e-6,
                        hidden_act="gelu", qkv_bias=True, use_swiglu_ffn=False, drop_path_rate=0.0)


def build_dinov2(dest: Path, config=None) -> int:
    from transformers import BitImageProcessor, Dinov2Model

    model = Dinov2Model(config or dinov2_small_config())
    model.save_pretrained(dest)
    # the hub's preprocessor_config.json: resize shorter side 256, centre-crop 224, ImageNet mean/std
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                      do_convert_rgb=True).save_pretrained(dest)
    return _count(model)


def build_grounding_dino(dest: Path, config=None) -> int:
    from transformers import (GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoImageProcessor,
                              GroundingDinoProcessor)

    cfg = config or GroundingDinoConfig()  # defaults = IDEA-Research/grounding-dino-tiny
    tok = bert_tokenizer()
    if cfg.text_config.vocab_size != len(tok):
        raise AssertionError(f"text vocab {cfg.text_config.vocab_size} != tokenizer {len(tok)}")
    model = GroundingDinoForObjectDetection(cfg)
    model.save_pretrained(dest)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=tok).save_pretrained(dest)
    return _count(model)


def build_sam2(dest: Path, config=None) -> int:
    from transformers import Sam2ImageProcessor, Sam2VideoConfig, Sam2VideoModel, Sam2VideoProcessor
    from transformers import Sam2VideoVideoProcessor

    cfg = config or Sam2VideoConfig()  # defaults = facebook/sam2.1-hiera-tiny
    model = Sam2VideoModel(cfg)
    model.save_pretrained(dest)
    s = int(cfg.image_size)
    Sam2VideoProcessor(image_processor=Sam2ImageProcessor(size={"height": s, "width": s}),
                       video_processor=Sam2VideoVideoProcessor(size={"height": s, "width": s})).save_pretrained(dest)
    return _count(model)


BUILDERS = {"yolov8m": build_yolov8m, "clip": build_clip, "dinov2": build_dinov2,
            "grounding-dino": build_grounding_dino, "sam2": build_sam2}


def build(out: str | Path, names: Iterable[str] = MODELS, *, seed: int = 0, log=print) -> dict[str, dict]:
    """Build the stand-ins ``names`` under ``out``; check each count; update ``STAND_IN.json``.

    Refuses (before building anything) if a target exists that the marker does not list.
    Returns {registry path: marker entry}.
    """
    setup_env()
    import torch

    out = Path(out)
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise ValueError(f"unknown stand-in model(s) {unknown}; choose from {list(MODELS)}")
    check_targets(out, names)
    out.mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict] = {}
    for name in names:
        dest = target(out, name)
        _clear(dest)
        torch.manual_seed(seed)
        t0 = time.time()
        n = BUILDERS[name](dest)
        dev = check_count(name, n)
        pub, src = PUBLISHED[name]
        rel = weights.REGISTRY[name][0]
        entries[rel] = {"model": name, "stand_in": True, "random": True, "params": n, "published_params": pub,
                        "published_source": src, "deviation": round(dev, 5), "tolerance": TOLERANCE,
                        "real_source": weights.REGISTRY[name][1], "seed": seed}
        write_marker(out, entries)  # after each model: an interrupted build still marks what it wrote
        log(f"[stand-in] {name}: {n:,} params (published {pub / 1e6:.2f}M, {dev:.2%} off) -> {dest} "
            f"[{time.time() - t0:.0f} s]")
    return entries


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bdd_engine stand-in-weights",
                                description="Build RANDOM stand-in weights with the full profile's exact architectures.")
    p.add_argument("--out", type=Path, required=True, help="folder (pass `weights` explicitly to fill weights/)")
    p.add_argument("--only", action="append", choices=MODELS, help="build only this model (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--if-missing", action="store_true",
                   help="build only the models not yet complete under --out (make smoke-full; a rebuild changes file hashes)")
    a = p.parse_args(argv)
    names = a.only or MODELS
    if a.if_missing:
        names = missing(a.out, names)
        if not names:
            print(f"[stand-in] all present under {a.out} ({a.out / MARKER})")
            return 0
    build(a.out, names, seed=a.seed)
    print(f"[stand-in] marker: {a.out / MARKER} (RANDOM weights: outputs are meaningless)")
    return 0
