"""Flat, commented YAML profiles (bdd_engine/profiles/*.yaml) with overrides.

Precedence (last wins): profile file < ``BDD_<KEY>`` environment variables <
explicit overrides (CLI ``--set key=value`` or a dict). Values given as strings are
parsed as YAML, so ``BDD_TRAIN_EPOCHS=3`` is an int and ``BDD_RETRAIN_CONTROLS=[random]``
a list.

Keys are grouped by the section that reads them through a prefix (``collect_`` for §1,
``pool_`` for §3, ...). A section's config hash covers only the global keys and its
own prefixes, so changing ``mine_k`` re-runs §6 onward but not training.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from bdd_engine.env import PROJECT_ROOT

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"

# Keys every section depends on (they change what the data *is*).
GLOBAL_KEYS = ("seed", "data_root", "synthetic", "label_files", "image_sets")

# Which key prefixes each section reads (beyond GLOBAL_KEYS). Upstream sections are
# covered through their manifest hashes, not repeated here.
SECTION_PREFIXES: dict[int, tuple[str, ...]] = {
    1: ("synth_", "collect_"),
    2: ("embed_", "curate_"),
    3: ("pool_",),
    4: ("train_",),
    5: ("eval_",),
    6: ("mine_",),
    7: ("label_", "retrain_"),
    8: ("report_",),
}

# BDD_* environment variables that are not config keys (profile choice, cache dir, `run --from`).
RESERVED_ENV = ("BDD_PROFILE", "BDD_CACHE_DIR", "BDD_FROM")

# Keys that never change results (where things go, how loud they are).
NON_RESULT_KEYS = ("profile", "outputs_dir", "device", "workers", "fiftyone_dataset")


class ConfigError(ValueError):
    """A bad profile name, key or value; the message names the key and the fix."""


class Config(dict):
    """A dict with attribute access. Unknown attributes raise with the profile name."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(
                f"config key {key!r} is not set in profile {self.get('profile')!r} "
                f"({PROFILES_DIR / (str(self.get('profile')) + '.yaml')})"
            ) from None

    # -- paths resolved against the project root (config values stay relative) --
    @property
    def root(self) -> Path:
        return PROJECT_ROOT

    def path(self, key: str) -> Path:
        p = Path(os.path.expanduser(str(self[key])))
        return p if p.is_absolute() else PROJECT_ROOT / p

    @property
    def data_dir(self) -> Path:
        return self.path("data_root")

    @property
    def out(self) -> Path:
        return self.path("outputs_dir")

    def section_hash(self, section: int) -> str:
        """sha256 over GLOBAL_KEYS + this section's prefixed keys (canonical JSON)."""
        prefixes = SECTION_PREFIXES[section]
        sub = {k: v for k, v in self.items() if k in GLOBAL_KEYS or k.startswith(prefixes)}
        return _hash(sub)

    def hash(self) -> str:
        """Identifies a whole run: every key that can change a result."""
        return _hash({k: v for k, v in self.items() if k not in NON_RESULT_KEYS})


def _hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["train_epochs=3", "retrain_controls=[random]"]`` → dict with YAML-typed values."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like key=value (e.g. --set train_epochs=3)")
        key, value = pair.split("=", 1)
        out[key.strip()] = _yaml_value(value, key.strip())
    return out


def _yaml_value(text: str, key: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config key {key!r}: cannot parse value {text!r} ({str(e).splitlines()[0]})") from None


def _type_name(v: Any) -> str:
    return "null" if v is None else {bool: "bool", int: "int", float: "float", str: "str",
                                     list: "list", dict: "dict"}.get(type(v), type(v).__name__)


def key_types() -> dict[str, set[str]]:
    """Allowed value types per key: the union over every shipped profile (a key that is
    ``null`` in one profile and a path in another accepts both)."""
    types: dict[str, set[str]] = {}
    for p in PROFILES_DIR.glob("*.yaml"):
        for k, v in (yaml.safe_load(p.read_text()) or {}).items():
            types.setdefault(k, set()).add(_type_name(v))
    return types


def _type_ok(value: Any, allowed: set[str]) -> bool:
    t = _type_name(value)
    if t in allowed or allowed <= {"null"}:  # null everywhere: any value is a choice
        return True
    if t == "int" and "float" in allowed:  # 3 is a fine learning rate
        return True
    if t == "null" and "str" in allowed:  # an optional path/name may be unset
        return True
    return False


def check_overrides(overrides: Mapping[str, Any], cfg: Mapping[str, Any], profile: str) -> None:
    """Reject unknown keys (naming the nearest valid one) and values of the wrong type,
    like Ultralytics' check_dict_alignment: a typo must never silently become a no-op."""
    types = key_types()
    for key, value in overrides.items():
        if key not in cfg:
            near = difflib.get_close_matches(key, list(cfg), n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else f"; see {PROFILES_DIR / (profile + '.yaml')}"
            raise ConfigError(f"unknown config key {key!r} for profile {profile!r}{hint}")
        allowed = types.get(key, {_type_name(cfg[key])})
        if not _type_ok(value, allowed):
            raise ConfigError(f"config key {key!r} expects {' or '.join(sorted(allowed))}, got {value!r} "
                              f"({_type_name(value)}); e.g. {key}={cfg[key]!r}")


def load_config(
    profile: str | None = None, overrides: Mapping[str, Any] | None = None, env: bool = True
) -> Config:
    """Load a profile (default: ``$BDD_PROFILE`` or ``demo``) and apply overrides.

    Raises ConfigError (a ValueError) for an unknown profile, an override key the profile
    lacks (naming the nearest valid key) or a value of the wrong type.
    """
    profile = profile or os.environ.get("BDD_PROFILE", "demo")
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown profile {profile!r}; available: {available_profiles()}")
    cfg = Config(yaml.safe_load(path.read_text()) or {})
    cfg["profile"] = profile

    merged: dict[str, Any] = {}
    if env:
        for key, value in os.environ.items():
            if key.startswith("BDD_") and key not in RESERVED_ENV:
                merged[key[4:].lower()] = _yaml_value(value, key)
    merged.update(overrides or {})
    check_overrides(merged, cfg, profile)
    cfg.update(merged)
    return cfg
