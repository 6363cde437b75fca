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
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from bdd_engine.env import PROJECT_ROOT
from bdd_engine.sections import SECTION_PREFIXES, SPECS

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULTS = PROFILES_DIR / "default.yaml"  # every key once, `key: value  # (type) meaning`

# Keys every section depends on (they change what the data *is*).
GLOBAL_KEYS = ("seed", "data_root", "synthetic", "label_files", "confirm_label_files", "image_sets", "pool_sources",
               "ingest_dir")

# Every BDD_* environment variable that is not a config key, and who reads it (the one list:
# load_config skips these; any other BDD_<KEY> must name a config key). They choose where
# things live, never a result.
RESERVED_ENV: dict[str, str] = {
    "BDD_PROFILE": "profile when --profile is not given (load_config, the CLI; the notebook kernel's profile)",
    "BDD_CACHE_DIR": "cache folder for Ultralytics/matplotlib/model caches (env.CACHE_DIR; default <project>/.cache)",
    "BDD_WEIGHTS_DIR": "model weights folder (weights.WEIGHTS_DIR; default <project>/weights)",
}

# Keys that enter a section hash only when they differ from this value (the behaviour every
# existing checkpoint was computed with): outputs made before the key existed stay fresh.
HASH_UNLESS: dict[str, Any] = {"infer_backend": "torch", "infer_precision": "fp32"}
_ALWAYS = object()

# Keys that never change results (where things go, how loud they are).
NON_RESULT_KEYS = ("profile", "outputs_dir", "device", "workers", "fiftyone_dataset", "mlflow_tracking_uri",
                   "executor", "ray_address", "ray_workers", "ray_cpus_per_actor", "ray_gpus_per_actor", "ray_max_restarts")  # where, not what


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

    def section_hash(self, section: int, turn: int = 1) -> str:
        """sha256 over GLOBAL_KEYS + this section's prefixed keys (canonical JSON). From
        turn 2 on it also covers the turn number and the first ``turn - 1`` entries of the
        section's turn keys (turn 1's hash never includes them)."""
        prefixes = SECTION_PREFIXES[section]
        sub = {k: v for k, v in self.items() if (k in GLOBAL_KEYS or k.startswith(prefixes))
               and HASH_UNLESS.get(k, _ALWAYS) != v}
        if int(turn) > 1:
            sub["__turn__"] = int(turn)
            sub.update({k: list(self[k])[:int(turn) - 1] for k in SPECS[section].turn_keys})
        return _hash(sub)

    def hash(self) -> str:
        """Identifies a whole run: every key that can change a result (``flywheel_*`` keys
        never change turn 1; later turns' sections hash what they read of them)."""
        return _hash({k: v for k, v in self.items() if k not in NON_RESULT_KEYS and not k.startswith("flywheel_")
                      and HASH_UNLESS.get(k, _ALWAYS) != v})


def _hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml") if p != DEFAULTS)


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["train_epochs=3", "retrain_controls=[random]"]`` → dict with YAML-typed values."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like key=value (e.g. --set train_epochs=3)")
        key, value = pair.split("=", 1)
        out[key.strip()] = _yaml_value(value, key.strip())
    return out


class DuplicateKey(yaml.YAMLError):
    def __init__(self, message: str, line: int):
        super().__init__(message)
        self.line = line


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a mapping with the same key twice (PyYAML keeps the last)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise DuplicateKey(f"key {key!r} appears twice (lines {seen[key]} and {line}); keep one", line)
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _yaml_load(text: str, source: str) -> Any:
    """YAML text -> value; a syntax error or a duplicated key raises ConfigError naming
    ``source`` and the line (one line, as the CLI prints it)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except DuplicateKey as e:
        raise ConfigError(f"{source}, line {e.line}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(x for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) \
            or str(e).splitlines()[0]
        raise ConfigError(f"{source}{where}: not valid YAML ({what})") from None


def _yaml_value(text: str, key: str) -> Any:
    """A command-line / environment value parsed as YAML, except that a str-only key keeps
    the user's word: YAML 1.1 reads ``off``/``on``/``yes``/``no`` as booleans, so
    ``--set train_cache=off`` (documented ``ram | disk | off``) would arrive as False."""
    value = _yaml_load(text, f"config key {key!r}: value {text!r}")
    name = key[4:].lower() if key.startswith("BDD_") else key
    allowed = key_types().get(name, set())
    if isinstance(value, bool) and "str" in allowed and "bool" not in allowed:
        return text.strip()
    return value


def _type_name(v: Any) -> str:
    return "null" if v is None else {bool: "bool", int: "int", float: "float", str: "str",
                                     list: "list", dict: "dict"}.get(type(v), type(v).__name__)


_TYPE_COMMENT = re.compile(r"^([a-z0-9_]+):.*#\s*\(([^)]*)\)")


def key_types() -> dict[str, set[str]]:
    """Declared types per key from default.yaml's ``# (type) meaning`` comments:
    ``int``, ``float``, ``bool``, ``str``, ``list[str]``, ``str | null``, ...
    (element types are documentation; ``list[...]`` checks that it is a list)."""
    types: dict[str, set[str]] = {}
    for line in DEFAULTS.read_text().splitlines():
        m = _TYPE_COMMENT.match(line)
        if m:
            types[m.group(1)] = {t.strip().split("[")[0] for t in m.group(2).split("|")}
    return types


def _type_ok(value: Any, allowed: set[str]) -> bool:
    t = _type_name(value)
    return t in allowed or (t == "int" and "float" in allowed)  # 3 is a fine learning rate


def check_keys(values: Mapping[str, Any], defaults: Mapping[str, Any], source: str) -> None:
    """Reject unknown keys (naming the nearest valid one) and values of the wrong type,
    like Ultralytics' check_dict_alignment: a typo must never silently become a no-op."""
    types = key_types()
    for key, value in values.items():
        if key not in defaults:
            near = difflib.get_close_matches(key, list(defaults), n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else f"; every key is listed in {DEFAULTS}"
            raise ConfigError(f"unknown config key {key!r} in {source}{hint}")
        allowed = types.get(key) or {_type_name(defaults[key])}
        if not _type_ok(value, allowed):
            raise ConfigError(f"config key {key!r} in {source} expects {' or '.join(sorted(allowed))}, got {value!r} "
                              f"({_type_name(value)}); e.g. {key}={defaults[key]!r}")


def _read_yaml(path: Path) -> dict[str, Any]:
    data = _yaml_load(path.read_text(), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected `key: value` lines, got a {type(data).__name__}")
    return data


def load_config(
    profile: str | None = None, overrides: Mapping[str, Any] | None = None, env: bool = True
) -> Config:
    """Load a profile (default: ``$BDD_PROFILE`` or ``demo``) and apply overrides.

    Raises ConfigError (a ValueError) for an unknown profile, an override key the profile
    lacks (naming the nearest valid key) or a value of the wrong type.
    """
    profile = profile or os.environ.get("BDD_PROFILE", "demo")
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.exists() or profile == "default":
        raise ConfigError(f"unknown profile {profile!r}; available: {available_profiles()}")
    defaults = _read_yaml(DEFAULTS)
    own = _read_yaml(path)
    check_keys(own, defaults, str(path))
    cfg = Config({**defaults, **own})
    cfg["profile"] = profile

    merged: dict[str, Any] = {}
    if env:
        for key, value in os.environ.items():
            if key.startswith("BDD_") and key not in RESERVED_ENV:
                merged[key[4:].lower()] = _yaml_value(value, key)
    merged.update(overrides or {})
    check_keys(merged, defaults, f"the overrides of profile {profile!r}")
    cfg.update(merged)
    return cfg
