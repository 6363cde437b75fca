"""A deterministic synthetic BDD100K world in the official on-disk layout.

Why: BDD100K needs a licence and a login, and our machines are offline. The pipeline
must not branch on "is this synthetic", so this module writes exactly what a user
downloads::

    <root>/images/100k/{train,val}/<group>-<video>.jpg
    <root>/images/10k/{train,val}/...          (a few frames that exist only here, like real BDD)
    <root>/labels/det_20/det_{train,val}.json   (Scalabel det_20 schema, every frame labelled)
    <root>/SYNTHETIC.md                         (says what this is)

Scenes are drawn with a pinhole camera (horizon, road and lanes converging, roadside
per scene type) and the 10 classes as distinct shapes at metric sizes, so far objects
are small, like BDD. Frame attributes follow BDD's published marginals (facts.md),
drives (4 frames sharing a group prefix) share weather and time of day. Adverse
conditions *vary in strength and overlap* (light haze in overcast vs dense fog, dusk vs
night, drizzle vs rain) so retrieval is not trivially easy and detection genuinely
suffers: fog = contrast loss growing with depth, night = darkness + lamp glare + sensor
noise, rain = streaks + blur, snow = flakes + low contrast, dawn/dusk = low-sun tint.

Every frame is rendered from its own seed (``seed`` + frame index), so the world is
bit-identical whatever the number of worker processes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

# BDD100K train marginals (facts.md, third-party count over the 100K images).
WEATHER_P = {"clear": 37412, "overcast": 8784, "undefined": 8134, "snowy": 5571,
             "rainy": 5083, "partly cloudy": 4886, "foggy": 130}
TIMEOFDAY_P = {"daytime": 36800, "night": 28028, "dawn/dusk": 5033, "undefined": 139}
SCENE_P = {"city street": 43581, "highway": 17414, "residential": 8105, "parking lot": 378,
           "undefined": 366, "tunnel": 129, "gas stations": 27}

# Expected objects per frame by class (BDD's skew: car >> sign ~ light >> pedestrian >> ...),
# scaled by scene below. Metric (width, height) of each class as seen by the camera.
BASE_RATE = {"car": 5.0, "traffic sign": 1.8, "traffic light": 1.4, "pedestrian": 1.2, "truck": 0.45,
             "bus": 0.22, "bicycle": 0.12, "rider": 0.14, "motorcycle": 0.10, "train": 0.03}
SIZE_M = {"car": (1.8, 1.5), "truck": (2.5, 3.4), "bus": (2.6, 3.2), "pedestrian": (0.55, 1.75),
          "bicycle": (1.6, 1.05), "motorcycle": (1.9, 1.2), "train": (16.0, 3.6),
          "traffic light": (0.38, 0.95), "traffic sign": (0.8, 0.8)}
SCENE_RATE = {  # multiplier per class group
    "city street": {"pedestrian": 1.5, "traffic light": 1.4, "traffic sign": 1.1, "bicycle": 1.4, "rider": 1.4},
    "highway": {"pedestrian": 0.05, "truck": 2.2, "traffic light": 0.15, "bicycle": 0.0, "rider": 0.1, "bus": 0.6, "traffic sign": 1.2},
    "residential": {"car": 0.6, "pedestrian": 1.0, "bicycle": 2.0, "rider": 1.5, "traffic light": 0.3, "truck": 0.5},
    "parking lot": {"car": 1.8, "pedestrian": 1.2, "traffic light": 0.0, "truck": 0.6},
    "gas stations": {"car": 1.0, "pedestrian": 0.8, "traffic light": 0.0, "traffic sign": 1.5},
    "tunnel": {"pedestrian": 0.0, "traffic light": 0.0, "bicycle": 0.0, "rider": 0.0, "traffic sign": 0.6, "truck": 1.5},
    "undefined": {},
}
ROAD_HALF_M = {"city street": 6.0, "highway": 9.0, "residential": 4.0, "parking lot": 16.0,
               "gas stations": 7.0, "tunnel": 4.5, "undefined": 5.5}

CAM_H = 1.45  # camera height above the road, metres


# ----------------------------------------------------------------------------- attributes
def _sample(rng: np.random.Generator, table: dict[str, int]) -> str:
    keys = list(table)
    p = np.array([table[k] for k in keys], float)
    return keys[rng.choice(len(keys), p=p / p.sum())]


def _mix(mix: dict[str, float] | None, bdd: dict[str, int], key: str) -> dict[str, float]:
    """A condition mix (value → relative frequency); None = BDD100K's own marginals. Values
    must be BDD's own attribute values, so slices of a mixed world still read as BDD slices."""
    if mix is None:
        return dict(bdd)
    unknown = sorted(set(mix) - set(bdd))
    if unknown or not mix or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise ValueError(f"{key}: {dict(mix)} must map BDD values {sorted(bdd)} to non-negative frequencies"
                         + (f" (unknown: {unknown})" if unknown else ""))
    return {k: float(v) for k, v in mix.items()}


@dataclass
class FrameSpec:
    name: str
    split: str
    image_set: str          # "100k" or "10k"
    weather: str
    timeofday: str
    scene: str
    seed: int
    width: int
    height: int
    label_noise: float
    jpeg_quality: int


def plan_world(cfg: Any) -> list[FrameSpec]:
    """Decide every frame's name, split and attributes (cheap; rendering is separate)."""
    rng = np.random.default_rng(cfg.seed)
    weather_p = _mix(cfg.synth_weather_mix, WEATHER_P, "synth_weather_mix")
    tod_p = _mix(cfg.synth_timeofday_mix, TIMEOFDAY_P, "synth_timeofday_mix")
    n_train, n_val = int(cfg.synth_n_train), int(cfg.synth_n_val)
    n_10k = int(round((n_train + n_val) * float(cfg.synth_share_10k)))
    per_drive = max(1, int(cfg.synth_frames_per_drive))
    specs: list[FrameSpec] = []
    used: set[str] = set()
    splits = ["train"] * n_train + ["val"] * n_val + ["train" if i % 5 else "val" for i in range(n_10k)]
    sets = ["100k"] * (n_train + n_val) + ["10k"] * n_10k
    i = 0
    while i < len(splits):
        group = f"{rng.integers(0, 2**32):08x}"
        weather, tod = _sample(rng, weather_p), _sample(rng, tod_p)
        scene = _sample(rng, SCENE_P)
        for _ in range(per_drive):
            if i >= len(splits) or (_ > 0 and (splits[i] != splits[i - 1] or sets[i] != sets[i - 1])):
                break  # a drive never straddles splits or image sets
            if rng.random() < 0.25:  # drives pass through different scenes now and then
                scene = _sample(rng, SCENE_P)
            while True:
                name = f"{group}-{rng.integers(0, 2**32):08x}.jpg"
                if name not in used:
                    used.add(name)
                    break
            specs.append(FrameSpec(name, splits[i], sets[i], weather, tod, scene, int(cfg.seed) * 1_000_003 + i,
                                   int(cfg.synth_width), int(cfg.synth_height), float(cfg.synth_label_noise),
                                   int(cfg.synth_jpeg_quality)))
            i += 1
    return specs



# ----------------------------------------------------------------------------- planted label errors
# Confusions a hurried annotator makes (car/truck, pedestrian/rider, two-wheelers, the two signal classes).
SWAP = {"car": "truck", "truck": "car", "bus": "truck", "train": "bus", "pedestrian": "rider", "rider": "pedestrian",
        "bicycle": "motorcycle", "motorcycle": "bicycle", "traffic light": "traffic sign", "traffic sign": "traffic light"}
NOISE_KINDS = ("dropped", "shifted", "swapped", "spurious")
PLANTED_FILE = "planted_errors.json"  # sidecar at the world root, written only when synth_label_noise > 0


def _noise_kind(rng: np.random.Generator) -> str:
    return NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))]


def _shift(rng: np.random.Generator, box: list[float], W: int, H: int) -> list[float] | None:
    """Every edge moved by up to ±15% of the box's width/height, clipped; None if it collapses."""
    x1, y1, x2, y2 = box
    j = rng.uniform(-0.15, 0.15, 4) * np.array([x2 - x1, y2 - y1, x2 - x1, y2 - y1])
    out = [float(np.clip(x1 + j[0], 0, W - 1)), float(np.clip(y1 + j[1], 0, H - 1)),
           float(np.clip(x2 + j[2], 0, W - 1)), float(np.clip(y2 + j[3], 0, H - 1))]
    return out if out[2] - out[0] >= 1 and out[3] - out[1] >= 1 else None


def _spurious_box(rng: np.random.Generator, box: list[float], real: list[list[float]], W: int,
                  H: int) -> list[float] | None:
    """A box of ``box``'s size at a random place that overlaps no real box (None after 10 tries)."""
    w, h = box[2] - box[0], box[3] - box[1]
    if w >= W - 2 or h >= H - 2:
        return None
    for _ in range(10):
        x1, y1 = rng.uniform(0, W - 1 - w), rng.uniform(0, H - 1 - h)
        if all(x1 + w <= r[0] or r[2] <= x1 or y1 + h <= r[1] or r[3] <= y1 for r in real):
            return [float(x1), float(y1), float(x1 + w), float(y1 + h)]
    return None


def _xyxy(label: dict[str, Any]) -> list[float]:
    b = label["box2d"]
    return [b["x1"], b["y1"], b["x2"], b["y2"]]


def _plant(planted: list[dict[str, Any]], spec: FrameSpec, kind: str, label_id: str | None, true_cat: str | None,
           noisy_cat: str, true_box: list[float] | None, noisy_box: list[float] | None) -> None:
    """One planted error: ``label_id`` = the id of the written (wrong) label, None for a dropped box;
    ``true_*`` = what the label should be (None for a spurious box: nothing is there), boxes xyxy px."""
    planted.append({"name": spec.name, "split": spec.split, "kind": kind, "label_id": label_id,
                    "true_category": true_cat, "category": noisy_cat,
                    "true_box": None if true_box is None else [round(float(v), 3) for v in true_box],
                    "box": noisy_box})


# ----------------------------------------------------------------------------- rendering
class _Cam:
    """Pinhole camera: ground point (x lateral m, z depth m) → pixel (u, v)."""

    def __init__(self, w: int, h: int, horizon: float, yaw_px: float):
        self.w, self.h = w, h
        self.f = 0.75 * w
        self.cx = w / 2 + yaw_px
        self.hy = horizon

    def u(self, x: float, z: float) -> float:
        return self.cx + self.f * x / z

    def v(self, y_up: float, z: float) -> float:
        """Image row of a point ``y_up`` metres above the road at depth z."""
        return self.hy + self.f * (CAM_H - y_up) / z


def _sky(rng, tod: str, weather: str) -> tuple[np.ndarray, np.ndarray]:
    """Top and horizon sky colours (RGB float)."""
    if tod == "night":
        top, hor = np.array([8, 10, 24]), np.array([28, 30, 48])
    elif tod == "dawn/dusk":
        top, hor = np.array([70, 80, 130]), np.array([235, 150, 90])
    else:
        top, hor = np.array([70, 130, 210]), np.array([170, 200, 230])
    if weather in ("overcast", "rainy", "snowy", "foggy"):
        grey = np.array([150, 152, 158]) if tod != "night" else np.array([25, 25, 30])
        top, hor = 0.25 * top + 0.75 * grey, 0.3 * hor + 0.7 * (grey + 15)
    return top.astype(float), hor.astype(float)


def _jitter_color(rng, base, amount=25):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in base)


CAR_COLORS = [(200, 30, 30), (30, 60, 160), (220, 220, 225), (40, 40, 45), (150, 150, 155), (20, 110, 60), (230, 180, 40), (110, 70, 40)]


# Long on purpose: one drawing recipe per class side by side; split up, the shapes' proportions scatter.
def _draw_object(d: ImageDraw.ImageDraw, rng, cls: str, box: tuple[float, float, float, float], night: bool) -> None:
    """Draw one object whose visible extent is ``box`` (xyxy px). Shapes are distinct per class."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    if cls == "car":
        col = CAR_COLORS[rng.integers(len(CAR_COLORS))]
        d.rounded_rectangle([x1, y1 + 0.3 * h, x2, y2 - 0.12 * h], radius=max(1, w * 0.08), fill=col)
        d.rounded_rectangle([x1 + 0.15 * w, y1, x2 - 0.15 * w, y1 + 0.42 * h], radius=max(1, w * 0.1), fill=_jitter_color(rng, col, 10))
        d.rectangle([x1 + 0.22 * w, y1 + 0.07 * h, x2 - 0.22 * w, y1 + 0.34 * h], fill=(45, 60, 75))  # rear window
        for wx in (x1 + 0.05 * w, x2 - 0.25 * w):
            d.rectangle([wx, y2 - 0.2 * h, wx + 0.2 * w, y2], fill=(15, 15, 15))  # tyres
        lamp = (255, 40, 30) if night else (180, 20, 20)
        d.rectangle([x1 + 0.04 * w, y1 + 0.45 * h, x1 + 0.2 * w, y1 + 0.58 * h], fill=lamp)
        d.rectangle([x2 - 0.2 * w, y1 + 0.45 * h, x2 - 0.04 * w, y1 + 0.58 * h], fill=lamp)
    elif cls == "truck":
        col = _jitter_color(rng, (225, 225, 215), 20)
        d.rectangle([x1, y1, x2, y2 - 0.12 * h], fill=col, outline=(90, 90, 90))
        for k in range(1, 4):
            yy = y1 + k * 0.22 * h
            d.line([x1, yy, x2, yy], fill=(160, 160, 150), width=max(1, int(h * 0.02)))
        d.rectangle([x1 + 0.05 * w, y2 - 0.14 * h, x1 + 0.3 * w, y2], fill=(15, 15, 15))
        d.rectangle([x2 - 0.3 * w, y2 - 0.14 * h, x2 - 0.05 * w, y2], fill=(15, 15, 15))
        lamp = (255, 60, 30) if night else (170, 30, 20)
        d.rectangle([x1, y2 - 0.25 * h, x1 + 0.12 * w, y2 - 0.17 * h], fill=lamp)
        d.rectangle([x2 - 0.12 * w, y2 - 0.25 * h, x2, y2 - 0.17 * h], fill=lamp)
    elif cls == "bus":
        col = [(230, 190, 30), (200, 40, 40), (40, 90, 180), (240, 240, 240)][rng.integers(4)]
        d.rounded_rectangle([x1, y1, x2, y2 - 0.08 * h], radius=max(1, w * 0.06), fill=col)
        n = 3
        for k in range(n):  # big front/rear windows band + destination sign
            wx1 = x1 + 0.08 * w + k * 0.84 * w / n
            d.rectangle([wx1, y1 + 0.12 * h, wx1 + 0.84 * w / n - 0.04 * w, y1 + 0.45 * h], fill=(40, 55, 70))
        d.rectangle([x1 + 0.2 * w, y1 + 0.03 * h, x2 - 0.2 * w, y1 + 0.1 * h], fill=(255, 160, 0) if night else (20, 20, 20))
        d.rectangle([x1 + 0.08 * w, y2 - 0.1 * h, x1 + 0.28 * w, y2], fill=(15, 15, 15))
        d.rectangle([x2 - 0.28 * w, y2 - 0.1 * h, x2 - 0.08 * w, y2], fill=(15, 15, 15))
    elif cls == "train":
        col = _jitter_color(rng, (160, 165, 175), 30)
        d.rectangle([x1, y1 + 0.1 * h, x2, y2 - 0.1 * h], fill=col, outline=(60, 60, 70))
        d.rectangle([x1, y1 + 0.55 * h, x2, y1 + 0.65 * h], fill=(200, 40, 40))
        n = max(3, int(w / max(h * 0.5, 1)))
        for k in range(n):
            wx = x1 + (k + 0.2) * w / n
            d.rectangle([wx, y1 + 0.2 * h, wx + 0.55 * w / n, y1 + 0.45 * h], fill=(255, 230, 150) if night else (40, 50, 60))
        d.rectangle([x1, y2 - 0.1 * h, x2, y2], fill=(50, 50, 50))
    elif cls in ("pedestrian", "rider_person"):
        skin = _jitter_color(rng, (200, 160, 130), 40)
        shirt = _jitter_color(rng, [(200, 50, 50), (40, 80, 160), (230, 230, 230), (30, 30, 30), (60, 140, 70)][rng.integers(5)], 20)
        hr = 0.1 * h
        cx = (x1 + x2) / 2
        d.ellipse([cx - hr * 0.9, y1, cx + hr * 0.9, y1 + 2 * hr], fill=skin)
        d.rectangle([x1 + 0.15 * w, y1 + 2 * hr, x2 - 0.15 * w, y1 + 0.58 * h], fill=shirt)
        if cls == "pedestrian":
            lw = max(1, int(w * 0.22))
            d.line([cx - 0.12 * w, y1 + 0.58 * h, x1 + 0.1 * w, y2], fill=(35, 35, 60), width=lw)
            d.line([cx + 0.12 * w, y1 + 0.58 * h, x2 - 0.1 * w, y2], fill=(35, 35, 60), width=lw)
    elif cls in ("bicycle", "motorcycle"):
        r = 0.32 * h if cls == "bicycle" else 0.36 * h
        lw = max(1, int(h * (0.06 if cls == "bicycle" else 0.14)))
        c1, c2 = (x1 + r, y2 - r), (x2 - r, y2 - r)
        for c in (c1, c2):
            d.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], outline=(20, 20, 20), width=lw)
        if cls == "bicycle":
            top = ((c1[0] + c2[0]) / 2, y1 + 0.15 * h)
            d.line([c1, top, c2], fill=_jitter_color(rng, (30, 120, 200), 60), width=max(1, lw))
            d.line([c1, ((c1[0] + c2[0]) / 2, c1[1]), c2], fill=(80, 80, 80), width=max(1, lw))
        else:
            d.rounded_rectangle([x1 + 0.25 * w, y1 + 0.15 * h, x2 - 0.2 * w, y2 - 0.45 * h], radius=max(1, h * 0.1),
                                fill=_jitter_color(rng, (150, 20, 20), 60))
            if night:
                d.ellipse([x2 - 0.12 * w, y1 + 0.2 * h, x2, y1 + 0.35 * h], fill=(255, 250, 210))
    elif cls == "traffic light":
        d.rectangle([x1, y1, x2, y2], fill=(25, 25, 25))
        lit = rng.integers(3)
        for k, col in enumerate([(255, 40, 30), (255, 200, 0), (40, 230, 90)]):
            cy = y1 + (k + 0.5) * h / 3
            r = 0.36 * w
            fill = col if k == lit else tuple(c // 5 for c in col)
            d.ellipse([(x1 + x2) / 2 - r, cy - r, (x1 + x2) / 2 + r, cy + r], fill=fill)
    elif cls == "traffic sign":
        kind = rng.integers(3)
        if kind == 0:  # round regulatory sign
            d.ellipse([x1, y1, x2, y2], fill=(210, 20, 20))
            d.ellipse([x1 + 0.18 * w, y1 + 0.18 * h, x2 - 0.18 * w, y2 - 0.18 * h], fill=(245, 245, 245))
        elif kind == 1:  # warning diamond
            d.polygon([((x1 + x2) / 2, y1), (x2, (y1 + y2) / 2), ((x1 + x2) / 2, y2), (x1, (y1 + y2) / 2)], fill=(250, 200, 0), outline=(20, 20, 20))
        else:  # blue information square
            d.rectangle([x1, y1, x2, y2], fill=(20, 70, 170), outline=(240, 240, 240))
            d.rectangle([x1 + 0.3 * w, y1 + 0.2 * h, x2 - 0.3 * w, y2 - 0.2 * h], fill=(240, 240, 240))
    elif cls == "other vehicle":  # ignore region: a cart / odd vehicle
        d.rectangle([x1, y1 + 0.3 * h, x2, y2], fill=(120, 100, 70))
        d.ellipse([x1, y2 - 0.3 * h, x1 + 0.3 * h, y2], fill=(20, 20, 20))
    elif cls == "trailer":
        d.rectangle([x1, y1, x2, y2 - 0.15 * h], fill=(140, 140, 130), outline=(60, 60, 60))
        d.rectangle([x1 + 0.1 * w, y2 - 0.15 * h, x1 + 0.3 * w, y2], fill=(20, 20, 20))


# Long on purpose: sky, road, lanes and roadside drawn in painting order; the order is the recipe.
def _background(rng, spec: FrameSpec, cam: _Cam) -> Image.Image:
    W, H = spec.width, spec.height
    top, hor = _sky(rng, spec.timeofday, spec.weather)
    t = np.clip(np.arange(H)[:, None] / max(cam.hy, 1), 0, 1)[..., None]
    sky = (1 - t) * top + t * hor
    img = np.broadcast_to(sky, (H, W, 3)).copy()
    night = spec.timeofday == "night"
    ground = np.array([70, 95, 60]) if spec.scene in ("residential", "highway") else np.array([95, 95, 92])
    if spec.weather == "snowy":
        ground = np.array([215, 218, 225])
    if night:
        ground = ground * 0.35
    img[int(cam.hy):] = ground
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    if spec.weather == "partly cloudy" and not night:
        for _ in range(rng.integers(2, 6)):
            cx, cy = rng.uniform(0, W), rng.uniform(0, cam.hy * 0.7)
            rx, ry = rng.uniform(30, 90), rng.uniform(10, 25)
            d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=(235, 238, 242))
    half = ROAD_HALF_M[spec.scene]
    zfar, znear = 400.0, 2.0
    road_col = (55, 55, 58) if not night else (25, 25, 28)
    if spec.weather in ("rainy",):
        road_col = (40, 42, 48) if not night else (20, 20, 25)
    if spec.scene == "tunnel":  # walls and ceiling close in; artificial light
        wall = (120, 110, 90)
        d.polygon([(0, 0), (W, 0), (cam.u(half + 1, 40), cam.v(5, 40)), (cam.u(-half - 1, 40), cam.v(5, 40))], fill=(70, 65, 55))
        d.polygon([(0, 0), (cam.u(-half - 1, 40), cam.v(5, 40)), (cam.u(-half - 1, 40), cam.v(0, 40)), (0, H)], fill=wall)
        d.polygon([(W, 0), (cam.u(half + 1, 40), cam.v(5, 40)), (cam.u(half + 1, 40), cam.v(0, 40)), (W, H)], fill=wall)
        d.rectangle([cam.u(-half - 1, 40), cam.v(5, 40), cam.u(half + 1, 40), cam.v(0, 40)], fill=(15, 15, 15))
        for z in (6, 10, 16, 25, 38):
            u1, u2, v = cam.u(-1.0, z), cam.u(1.0, z), cam.v(4.9, z)
            d.rectangle([u1, v - 300 / z / 3, u2, v], fill=(255, 230, 160))
    d.polygon([(cam.u(-half, znear), cam.v(0, znear)), (cam.u(half, znear), cam.v(0, znear)),
               (cam.u(half, zfar), cam.v(0, zfar)), (cam.u(-half, zfar), cam.v(0, zfar))], fill=road_col)
    # lane markings: dashed, converging to the vanishing point
    lane_w = 3.5
    lanes = np.arange(-half + lane_w, half - 0.5, lane_w) if spec.scene != "parking lot" else np.arange(-half, half, 2.8)
    mark = (230, 230, 230) if not night else (120, 120, 110)
    for x in lanes:
        for z0 in np.arange(3.0, 120.0, 9.0):
            z1 = z0 + 4.0
            lw = max(1, int(cam.f * 0.1 / z0))
            d.line([(cam.u(x, z0), cam.v(0, z0)), (cam.u(x, z1), cam.v(0, z1))], fill=mark, width=lw)
    # roadside per scene
    if spec.scene == "city street":
        for side in (-1, 1):
            z = 6.0
            while z < 150:
                depth = rng.uniform(8, 20)
                hgt = rng.uniform(8, 35)
                x = side * (half + rng.uniform(3, 5))
                col = _jitter_color(rng, (150, 135, 120) if not night else (40, 38, 36), 30)
                quad = [(cam.u(x, z), cam.v(0, z)), (cam.u(x, z), cam.v(hgt, z)), (cam.u(x, z + depth), cam.v(hgt, z + depth)), (cam.u(x, z + depth), cam.v(0, z + depth))]
                d.polygon(quad, fill=col)
                for k in range(int(hgt // 3)):  # windows; lit at night
                    yy = 1.5 + 3 * k
                    zz = z + depth * 0.5
                    lit = night and rng.random() < 0.4
                    d.line([(cam.u(x, z + 1), cam.v(yy, z + 1)), (cam.u(x, zz), cam.v(yy, zz))],
                           fill=(255, 220, 140) if lit else (60, 70, 85), width=max(1, int(cam.f / z / 2)))
                z += depth + rng.uniform(0, 3)
    elif spec.scene == "residential":
        for side in (-1, 1):
            for z in np.arange(8.0, 120.0, rng.uniform(10, 16)):
                x = side * (half + rng.uniform(4, 8))
                hw, hh = 4.0, rng.uniform(4, 6)
                col = _jitter_color(rng, (200, 180, 150) if not night else (50, 45, 40), 40)
                u1, u2 = sorted((cam.u(x - 2, z), cam.u(x + 2, z)))
                vb, vt = cam.v(0, z), cam.v(hh, z)
                d.rectangle([u1, vt, u2, vb], fill=col)
                d.polygon([(u1 - 2, vt), (u2 + 2, vt), ((u1 + u2) / 2, cam.v(hh + 2.5, z))], fill=(120, 50, 40) if not night else (35, 20, 18))
                if rng.random() < 0.7:  # tree
                    tx = side * (half + 1.5)
                    r = cam.f * 1.8 / z
                    d.ellipse([cam.u(tx, z) - r, cam.v(4.5, z) - r, cam.u(tx, z) + r, cam.v(4.5, z) + r], fill=(40, 110, 45) if not night else (12, 30, 14))
    elif spec.scene == "highway":
        for side in (-1, 1):
            x = side * (half + 0.5)
            d.line([(cam.u(x, 3), cam.v(0.8, 3)), (cam.u(x, 300), cam.v(0.8, 300))], fill=(170, 170, 170) if not night else (60, 60, 60), width=3)
        d.polygon([(0, cam.hy), (W * 0.3, cam.hy - 25), (W * 0.6, cam.hy - 10), (W, cam.hy - 30), (W, cam.hy), (0, cam.hy)],
                  fill=(90, 110, 120) if not night else (15, 18, 25))
    elif spec.scene == "gas stations":
        z = rng.uniform(12, 20)
        x = rng.choice([-1, 1]) * (half + 3)
        d.rectangle([cam.u(x - 6, z), cam.v(5.5, z), cam.u(x + 6, z), cam.v(4.8, z)], fill=(230, 230, 230) if not night else (200, 200, 190))
        for px in (-3, 0, 3):
            d.rectangle([cam.u(x + px - 0.4, z), cam.v(1.6, z), cam.u(x + px + 0.4, z), cam.v(0, z)], fill=(200, 40, 40))
    return im


def _place(rng, cls: str, scene: str, cam: _Cam) -> tuple[float, float, float, float, float] | None:
    """Metric placement → (x1, y1, x2, y2, depth) in pixels, or None if off-screen."""
    half = ROAD_HALF_M[scene]
    zmin, zmax = 5.0, 90.0
    if cls in ("traffic light", "traffic sign"):
        zmax = 70.0
    if cls == "train":
        zmin, zmax = 35.0, 120.0
    z = float(zmin * math.exp(rng.uniform(0, math.log(zmax / zmin))))  # log-uniform: many small far objects
    wm, hm = SIZE_M[cls if cls != "rider" else "bicycle"]
    base = 0.0
    if cls in ("car", "truck", "bus", "motorcycle"):
        x = float(rng.uniform(-half + 1, half - 1)) if scene != "parking lot" else float(rng.uniform(-half, half))
    elif cls in ("pedestrian", "bicycle", "rider"):
        x = float(rng.choice([-1, 1]) * rng.uniform(half + 0.5, half + 3.5)) if rng.random() < 0.8 else float(rng.uniform(-half, half))
    elif cls == "traffic light":
        x = float(rng.uniform(-half, half))
        base = float(rng.uniform(4.5, 5.8))
    elif cls == "traffic sign":
        x = float(rng.choice([-1, 1]) * rng.uniform(half + 0.5, half + 2.5))
        base = float(rng.uniform(2.0, 3.2))
    elif cls == "train":
        x = float(rng.uniform(-20, 20))
    else:
        x = float(rng.uniform(-half, half))
    cu, vb = cam.u(x, z), cam.v(base, z)
    wpx, hpx = cam.f * wm / z, cam.f * hm / z
    box = (cu - wpx / 2, vb - hpx, cu + wpx / 2, vb, z)
    if box[2] < 0 or box[0] > cam.w or box[3] < 0 or box[1] > cam.h:
        return None
    return box


# Long on purpose: the weather/light effects applied in physical order (fog by depth, night, glare, noise).
def _effects(rng, img: np.ndarray, spec: FrameSpec, cam: _Cam, lamps: list[tuple[float, float, float]]) -> np.ndarray:
    """Weather / time-of-day rendering on float RGB (H, W, 3) in [0, 255]. Strength varies per frame."""
    H, W = img.shape[:2]
    rows = np.arange(H, dtype=np.float32)[:, None]
    # depth proxy per row: ~infinite at/above the horizon, near at the bottom
    dist = np.where(rows > cam.hy + 1, cam.f * CAM_H / np.maximum(rows - cam.hy, 1), 400.0)
    haze = {"foggy": rng.uniform(0.035, 0.09), "overcast": rng.uniform(0.0, 0.012),
            "rainy": rng.uniform(0.004, 0.02), "snowy": rng.uniform(0.008, 0.03)}.get(spec.weather, 0.0)
    if spec.weather == "undefined":
        haze = rng.uniform(0, 0.015)
    if haze > 0:  # Koschmieder: transmission = exp(-beta * d); fog colour depends on light
        t = np.exp(-haze * dist)[..., None]
        fog_col = np.array([195, 198, 202]) if spec.timeofday != "night" else np.array([55, 55, 60])
        img = img * t + fog_col * (1 - t)
    if spec.timeofday == "night":
        dark = rng.uniform(0.35, 0.7)
        img = img * dark
    elif spec.timeofday == "dawn/dusk":
        k = rng.uniform(0.55, 0.85)
        tint = np.array([1.15, 0.88, 0.7])
        img = img * k * tint
        sx = rng.uniform(0, W)  # low sun glare at the horizon
        yy, xx = np.mgrid[0:H, 0:W]
        g = np.exp(-(((xx - sx) / (W * 0.25)) ** 2 + ((yy - cam.hy) / (H * 0.2)) ** 2))
        img = img + rng.uniform(40, 110) * g[..., None] * np.array([1.0, 0.75, 0.45])
    if spec.timeofday in ("night", "dawn/dusk") and lamps:  # headlight / taillight / street-lamp glare
        glare = np.zeros((H, W), np.float32)
        for (u, v, r) in lamps[:40]:  # each lamp only touches a local window (speed)
            r = max(r, 1.5)
            x0, x1 = max(0, int(u - 4 * r)), min(W, int(u + 4 * r) + 1)
            y0, y1 = max(0, int(v - 4 * r)), min(H, int(v + 4 * r) + 1)
            if x1 <= x0 or y1 <= y0:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1]
            glare[y0:y1, x0:x1] += np.exp(-(((xx - u) ** 2 + (yy - v) ** 2) / (2 * r * r)))
        strength = 170 if spec.timeofday == "night" else 60
        img = img + strength * glare[..., None] * np.array([1.0, 0.92, 0.75])
    if spec.weather == "rainy":
        im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(im)
        n = int(rng.uniform(150, 700))
        slant = rng.uniform(-0.3, 0.3)
        for _ in range(n):
            x, y, L = rng.uniform(0, W), rng.uniform(0, H), rng.uniform(6, 18)
            c = int(rng.uniform(150, 210)) if spec.timeofday != "night" else int(rng.uniform(60, 110))
            d.line([(x, y), (x + slant * L, y + L)], fill=(c, c, c + 10), width=1)
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.6)))
        img = np.asarray(im, np.float32)
    elif spec.weather == "snowy":
        img = img * 0.8 + 0.2 * 215  # low contrast
        im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.uniform(150, 600))):
            x, y, r = rng.uniform(0, W), rng.uniform(0, H), rng.uniform(0.6, 2.2)
            d.ellipse([x - r, y - r, x + r, y + r], fill=(245, 245, 250))
        img = np.asarray(im.filter(ImageFilter.GaussianBlur(0.5)), np.float32)
    sigma = {"night": rng.uniform(5, 14), "dawn/dusk": rng.uniform(2, 6)}.get(spec.timeofday, rng.uniform(0.5, 2.5))
    img = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)  # sensor noise, worse in the dark
    return img


# Long on purpose: the frame's generation order (camera, background, objects, effects, labels) is one seeded RNG stream; splitting it risks reordering draws and changing every world.
def render_frame(spec: FrameSpec, planted: list[dict[str, Any]] | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Render one frame → (uint8 RGB image (H, W, 3), det_20 labels with box2d in pixels).

    With ``spec.label_noise`` > 0, each non-crowd box of the 10 classes is, with that
    probability, dropped, shifted/scaled, class-swapped or joined by a spurious box
    (:data:`NOISE_KINDS`, equally likely); ``planted`` (if given) receives one record per
    planted error (:func:`_plant`). With noise 0 no extra random number is drawn."""
    planted = [] if planted is None else planted
    rng = np.random.default_rng(spec.seed)
    W, H = spec.width, spec.height
    cam = _Cam(W, H, horizon=H * rng.uniform(0.40, 0.50), yaw_px=rng.uniform(-0.06, 0.06) * W)
    im = _background(rng, spec, cam)
    d = ImageDraw.Draw(im)
    mult = SCENE_RATE[spec.scene]
    objs: list[tuple[str, tuple[float, float, float, float, float], dict]] = []
    for cls, rate in BASE_RATE.items():
        lam = rate * mult.get(cls, 1.0)
        for _ in range(rng.poisson(lam)):
            placed = _place(rng, cls, spec.scene, cam)
            if placed:
                objs.append((cls, placed, {}))
    if spec.scene in ("city street", "residential") and rng.random() < 0.12:  # a far crowd → one crowd box
        p = _place(rng, "pedestrian", spec.scene, cam)
        if p and p[4] > 25:
            x1, y1, x2, y2, z = p
            objs.append(("crowd", (x1 - 2.5 * (x2 - x1), y1, x2 + 2.5 * (x2 - x1), y2, z), {}))
    if rng.random() < 0.08:  # ignored categories (other vehicle, trailer) → ignore regions in eval
        cls = "other vehicle" if rng.random() < 0.6 else "trailer"
        p = _place(rng, "car" if cls == "other vehicle" else "truck", spec.scene, cam)
        if p:
            objs.append((cls, p, {}))
    objs.sort(key=lambda o: -o[1][4])  # far to near: painter's algorithm gives real occlusion
    night = spec.timeofday == "night"
    labels: list[dict[str, Any]] = []
    drawn: list[tuple[float, float, float, float]] = []
    lamps: list[tuple[float, float, float]] = []
    for cls, (x1, y1, x2, y2, z), _ in objs:
        if cls == "crowd":
            n = 5
            for k in range(n):
                bw = (x2 - x1) / n
                _draw_object(d, rng, "pedestrian", (x1 + k * bw, y1 + rng.uniform(0, 0.1) * (y2 - y1), x1 + (k + 1) * bw, y2), night)
            boxes = [("pedestrian", (x1, y1, x2, y2), True)]
        elif cls == "rider":
            vehicle = "bicycle" if rng.random() < 0.6 else "motorcycle"
            bh = y2 - y1
            _draw_object(d, rng, vehicle, (x1, y1, x2, y2), night)
            pw = (x2 - x1) * 0.4
            px = (x1 + x2) / 2 - pw / 2
            person = (px, y1 - 1.0 * bh, px + pw, y1 + 0.55 * bh)
            _draw_object(d, rng, "rider_person", person, night)
            boxes = [("rider", (person[0], person[1], person[2], person[3]), False), (vehicle, (x1, y1, x2, y2), False)]
        else:
            _draw_object(d, rng, cls, (x1, y1, x2, y2), night)
            boxes = [(cls, (x1, y1, x2, y2), False)]
        if night and cls in ("car", "truck", "bus", "motorcycle"):
            r = 0.09 * (x2 - x1) + 1
            lamps += [(x1 + 0.12 * (x2 - x1), y1 + 0.52 * (y2 - y1), r), (x2 - 0.12 * (x2 - x1), y1 + 0.52 * (y2 - y1), r)]
        for cat, (bx1, by1, bx2, by2), crowd in boxes:
            truncated = bx1 < 0 or by1 < 0 or bx2 > W or by2 > H
            cx1, cy1, cx2, cy2 = max(0.0, bx1), max(0.0, by1), min(W - 1.0, bx2), min(H - 1.0, by2)
            if cx2 - cx1 < 1.0 or cy2 - cy1 < 1.0:
                continue
            labels.append({"category": cat, "box": [cx1, cy1, cx2, cy2], "truncated": truncated, "crowd": crowd, "z": z})
            drawn.append((cx1, cy1, cx2, cy2))
    if night:  # street lamps / oncoming headlights that are not objects
        for _ in range(rng.integers(2, 7)):
            lamps.append((rng.uniform(0, W), rng.uniform(cam.hy - 40, cam.hy + 20), rng.uniform(2, 6)))
    img = _effects(rng, np.asarray(im, np.float32), spec, cam, lamps)
    img = np.clip(img, 0, 255).astype(np.uint8)
    # occlusion flag: covered >30% by nearer boxes (later in the list = nearer)
    out = []
    for i, lb in enumerate(labels):
        x1, y1, x2, y2 = lb["box"]
        area = (x2 - x1) * (y2 - y1)
        cover = 0.0
        for (a1, b1, a2, b2) in drawn[i + 1:]:
            iw, ih = min(x2, a2) - max(x1, a1), min(y2, b2) - max(y1, b1)
            if iw > 0 and ih > 0:
                cover += iw * ih
        cat, box = lb["category"], list(lb["box"])
        noisy = spec.label_noise > 0 and not lb["crowd"] and cat in SWAP and rng.random() < spec.label_noise
        kind = _noise_kind(rng) if noisy else None  # no draw at all when clean: noise 0 keeps every world
        if kind == "dropped":
            _plant(planted, spec, kind, None, cat, cat, lb["box"], None)
            continue  # missed box
        if kind == "shifted":
            box = _shift(rng, box, W, H)
            if box is None:
                _plant(planted, spec, "dropped", None, cat, cat, lb["box"], None)
                continue
        if kind == "swapped":
            cat = SWAP[cat]
        label = {
            "id": str(len(out)),
            "category": cat,
            "attributes": {"occluded": bool(cover > 0.3 * area), "truncated": bool(lb["truncated"]), "crowd": bool(lb["crowd"])},
            "box2d": {k: round(float(v), 3) for k, v in zip(("x1", "y1", "x2", "y2"), box)},
        }
        out.append(label)
        if kind in ("shifted", "swapped"):
            _plant(planted, spec, kind, label["id"], lb["category"], cat, lb["box"], _xyxy(label))
        if kind == "spurious":  # the true box stays; the annotator also drew one where nothing is
            fake = _spurious_box(rng, box, [lb2["box"] for lb2 in labels], W, H)
            if fake is not None:
                out.append({"id": str(len(out)), "category": cat,
                            "attributes": {"occluded": False, "truncated": False, "crowd": False},
                            "box2d": {k: round(float(v), 3) for k, v in zip(("x1", "y1", "x2", "y2"), fake)}})
                _plant(planted, spec, kind, out[-1]["id"], None, cat, None, _xyxy(out[-1]))
    return img, out


def _render_and_write(args: tuple[FrameSpec, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the frame's det_20 entry, its planted label errors)."""
    spec, path = args
    planted: list[dict[str, Any]] = []
    img, labels = render_frame(spec, planted)
    Image.fromarray(img).save(path, quality=spec.jpeg_quality)
    return ({"name": spec.name, "attributes": {"weather": spec.weather, "timeofday": spec.timeofday, "scene": spec.scene},
             "timestamp": 10000, "labels": labels}, planted)


# ----------------------------------------------------------------------------- world
MARKER = "SYNTHETIC.json"      # machine-readable: who made this folder, from which keys
PARTIAL_MARKER = ".bdd_engine_synth_partial"  # first file in a .partial folder we create


class WorldRefused(RuntimeError):
    """synth will not write into, or delete, a folder it did not create."""


def world_hash(cfg: Any) -> str:
    """The keys a world is drawn from (seed + every ``synth_*`` key); any change regenerates it."""
    keys = {k: v for k, v in cfg.items() if k == "seed" or k.startswith("synth_")}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def world_marker(root: str | os.PathLike) -> dict[str, Any] | None:
    """The marker of a world this module wrote, or None (not ours, or not a world at all).

    Worlds from before the JSON marker carry only SYNTHETIC.md; they count as ours with
    an unknown hash (so they are regenerated once)."""
    root = Path(root)
    try:
        m = json.loads((root / MARKER).read_text())
        if isinstance(m, dict) and m.get("generator") == "bdd_engine.synth":
            return m
    except (OSError, json.JSONDecodeError):
        pass
    md = root / "SYNTHETIC.md"
    if md.is_file() and md.read_text(errors="replace").startswith("# SYNTHETIC data — not BDD100K"):
        return {"generator": "bdd_engine.synth", "world_hash": None}
    return None


def world_complete(root: Path) -> bool:
    return world_marker(root) is not None


def ensure_world(cfg: Any) -> Path:
    """The profile's data root; a synthetic profile's world is generated first if missing
    or drawn from other ``synth_*`` keys. A real-data profile's root is returned untouched."""
    return generate(cfg) if cfg["synthetic"] else Path(cfg.data_dir)


def _refuse_foreign(root: Path, what: str) -> None:
    raise WorldRefused(
        f"{root} exists and is not a synthetic world made by bdd_engine (no {MARKER}); {what} "
        f"would overwrite it, and synth never writes into or deletes a folder it did not create. "
        f"Move it away, or point the profile elsewhere (--set data_root=data/synth_<name>).")


def _claim_staging(tmp: Path, poll_s: float = 2.0) -> Path | None:
    """Create ``tmp`` as this process's staging folder (mkdir is the atomic claim) and mark
    it with our PID. If another live process is generating into it, wait until it is done
    and return None (the caller re-checks the world). A staging folder of a dead process is
    ours to delete; one without our marker is refused."""
    while True:
        try:
            tmp.mkdir(parents=True)
        except FileExistsError:
            owner = _partial_owner(tmp)
            if owner is None:
                _refuse_foreign(tmp, "the staging folder of a world")
            if owner != os.getpid() and _alive(owner):
                print(f"waiting for PID {owner}, which is generating {tmp.with_suffix('')} ...", flush=True)
                while tmp.exists() and _alive(owner):
                    time.sleep(poll_s)
                return None
            shutil.rmtree(tmp, ignore_errors=True)  # our own killed attempt
            continue
        (tmp / PARTIAL_MARKER).write_text(f"{os.getpid()}\nbdd_engine.synth staging folder; safe to delete\n")
        return tmp


def _partial_owner(tmp: Path) -> int | None:
    """PID written in a staging folder's marker (0 when unreadable), None if not ours."""
    for _ in range(20):  # the claimant writes the marker right after mkdir
        try:
            first = (tmp / PARTIAL_MARKER).read_text().split("\n", 1)[0]
            return int(first) if first.isdigit() else 0
        except FileNotFoundError:
            if not tmp.exists():
                return 0
            time.sleep(0.05)
    return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def generate(cfg: Any, out_root: str | os.PathLike | None = None, workers: int | None = None, force: bool = False) -> Path:
    """Write the synthetic world for ``cfg`` under ``out_root`` (default ``cfg.data_dir``).

    Writes into ``<root>.partial`` (marked as ours before anything else) and renames at
    the end, so a killed run never leaves a half world that looks complete. No-op if our
    world with the same :func:`world_hash` exists, unless ``force``. Raises
    :class:`WorldRefused` for a real-data profile (``synthetic: false``) and for any
    existing folder without our marker: a user's ``data/bdd100k`` is never touched.
    """
    root = Path(out_root) if out_root else cfg.data_dir
    if not cfg["synthetic"]:
        raise WorldRefused(
            f"profile {cfg['profile']!r} reads real data (synthetic: false) from {root}; synth only writes "
            f"synthetic worlds. Use a synthetic profile (demo, tiny), or see README 'Real BDD100K'.")
    h = world_hash(cfg)
    while True:
        marker = world_marker(root)
        if root.exists() and marker is None:
            _refuse_foreign(root, "generating a world")
        if marker is not None and marker.get("world_hash") == h and not force:
            return root
        tmp = _claim_staging(root.with_name(root.name + ".partial"))
        if tmp is None:  # another process just generated it: take theirs if it is the same world
            force = False
            continue
        done = world_marker(root)
        if done is not None and done.get("world_hash") == h and not force:  # finished while we claimed
            shutil.rmtree(tmp)
            return root
        break
    t0 = time.time()
    specs = plan_world(cfg)
    for s in ("100k", "10k"):
        for split in ("train", "val"):
            (tmp / "images" / s / split).mkdir(parents=True, exist_ok=True)
    (tmp / "labels" / "det_20").mkdir(parents=True)
    jobs = [(sp, str(tmp / "images" / sp.image_set / sp.split / sp.name)) for sp in specs]
    workers = workers if workers is not None else min(os.cpu_count() or 1, 4)
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            done = list(tqdm(ex.map(_render_and_write, jobs, chunksize=16), total=len(jobs), desc="synth world", mininterval=2))
    else:
        done = [_render_and_write(j) for j in tqdm(jobs, desc="synth world", mininterval=2)]
    frames = [f for f, _ in done]
    if float(cfg.synth_label_noise) > 0:  # the answer key of the noise; a clean world has no such file
        (tmp / PLANTED_FILE).write_text(json.dumps({"synthetic": True, "label_noise": float(cfg.synth_label_noise),
                                                    "kinds": list(NOISE_KINDS),
                                                    "errors": [e for _, p in done for e in p]}) + "\n")
    for split in ("train", "val"):
        sel = [fr for fr, sp in zip(frames, specs) if sp.split == split]
        with open(tmp / "labels" / "det_20" / f"det_{split}.json", "w") as fh:
            json.dump(sel, fh)
    n_boxes = sum(len(f["labels"]) for f in frames)
    (tmp / "SYNTHETIC.md").write_text(
        "# SYNTHETIC data — not BDD100K\n\n"
        f"Generated by `python -m bdd_engine synth --profile {cfg.profile}` (bdd_engine/synth.py), seed {cfg.seed}.\n"
        f"{len(frames)} frames ({cfg.synth_width}x{cfg.synth_height}), {n_boxes} labels, BDD100K det_20 layout.\n"
        f"Built in {time.time() - t0:.1f} s. Numbers measured on this world are synthetic numbers.\n"
    )
    (tmp / MARKER).write_text(json.dumps({"generator": "bdd_engine.synth", "synthetic": True, "profile": cfg.profile,
                                          "seed": int(cfg.seed), "world_hash": h, "frames": len(frames),
                                          "labels": n_boxes}, indent=2) + "\n")
    if root.exists():
        if world_marker(root) is None:  # re-checked right before the only delete
            _refuse_foreign(root, "replacing the world")
        shutil.rmtree(root)
    os.replace(tmp, root)
    (root / PARTIAL_MARKER).unlink()  # after the rename: a waiting process never sees an unmarked staging folder
    return root
