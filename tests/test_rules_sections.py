"""Freshness rule (issue 23 item 20): changing any config key that a section reads makes
that section, and every section that reads its outputs (transitively), stale — for every
section.

"Reads" is found in the code, not in sections.py: every ``cfg.<key>``, ``cfg["key"]`` and
``cfg.path("key")`` in the section runner ``flywheel.s<N>_*`` and in every package function
it hands the config to (followed through calls, across modules). A key a runner reads but
no section hash covers (neither its own prefixes, GLOBAL_KEYS, nor an upstream section's)
would leave a stale checkpoint looking fresh: this test names it.
"""

from __future__ import annotations

import ast
import copy
from functools import lru_cache
from pathlib import Path

import pytest

from bdd_engine import config as C
from bdd_engine.checkpoint import Section
from bdd_engine.sections import SECTIONS, SPECS, UPSTREAM

PKG = Path(C.__file__).resolve().parent
CONFIG_ATTRS = {"root", "path", "data_dir", "out", "section_hash", "hash", "get", "items", "keys", "values"}


@lru_cache(maxsize=None)
def _modules() -> dict[str, ast.Module]:
    return {".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__"): ast.parse(p.read_text())
            for p in PKG.rglob("*.py")}


@lru_cache(maxsize=None)
def _functions(mod: str) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in _modules()[mod].body if isinstance(n, ast.FunctionDef)}


@lru_cache(maxsize=None)
def _imports(mod: str) -> dict[str, tuple[str, str | None]]:
    """Local name -> (module, function or None) for the package's own imports of ``mod``."""
    out: dict[str, tuple[str, str | None]] = {}
    for node in ast.walk(_modules()[mod]):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bdd_engine"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out[a.asname or a.name] = (sub, None) if sub in _modules() else (node.module, a.name)
    return out


def _callee(mod: str, call: ast.Call) -> tuple[str, ast.FunctionDef] | None:
    imports, f = _imports(mod), call.func
    if isinstance(f, ast.Name):
        target = (mod, f.id) if f.id in _functions(mod) else imports.get(f.id)
    elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in imports:
        target = (imports[f.value.id][0], f.attr)
    else:
        return None
    if not target or target[1] is None or target[0] not in _modules():
        return None
    m = target[0]
    if target[1] not in _functions(m) and m in _modules():  # re-exported by a package __init__
        for sub, name in _imports(m).values():
            if name == target[1] and sub in _modules() and name in _functions(sub):
                m = sub
                break
    fn = _functions(m).get(target[1])
    return (m, fn) if fn else None


def _keys_read(mod: str, fn: ast.FunctionDef, cfg_name: str, seen: set) -> set[str]:
    """Config keys ``fn`` reads from its parameter ``cfg_name``, and every function it passes it to."""
    if (mod, fn.name, cfg_name) in seen:
        return set()
    seen.add((mod, fn.name, cfg_name))
    keys: set[str] = set()
    is_cfg = lambda n: isinstance(n, ast.Name) and n.id == cfg_name  # noqa: E731
    for node in ast.walk(fn):
        if isinstance(node, ast.Attribute) and is_cfg(node.value) and node.attr not in CONFIG_ATTRS:
            keys.add(node.attr)
        elif isinstance(node, ast.Subscript) and is_cfg(node.value) and isinstance(node.slice, ast.Constant):
            keys.add(node.slice.value)
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and is_cfg(f.value) and f.attr in ("path", "get") and node.args \
                    and isinstance(node.args[0], ast.Constant):
                keys.add(node.args[0].value)
            target = _callee(mod, node)
            if target is None:
                continue
            m, callee = target
            params = [a.arg for a in callee.args.args]
            for i, a in enumerate(node.args):
                if is_cfg(a) and i < len(params):
                    keys |= _keys_read(m, callee, params[i], seen)
            for kw in node.keywords:
                if is_cfg(kw.value) and kw.arg:
                    keys |= _keys_read(m, callee, kw.arg, seen)
    return keys


@lru_cache(maxsize=None)
def section_reads(n: int) -> set[str]:
    """Config keys section ``n``'s runner reads (result keys only; turn keys separately)."""
    runner = next(f for name, f in _functions("bdd_engine.flywheel").items() if name.startswith(f"s{n}_"))
    keys = _keys_read("bdd_engine.flywheel", runner, runner.args.args[0].arg, set())
    return {k for k in keys & set(_defaults()) if k not in C.NON_RESULT_KEYS}


@lru_cache(maxsize=None)
def _defaults() -> dict:
    return C._read_yaml(C.DEFAULTS)


def downstream(n: int) -> set[int]:
    """``n`` and every section that reads it, transitively."""
    out, grew = {n}, True
    while grew:
        grew = False
        for m, ups in UPSTREAM.items():
            if m not in out and out & set(ups):
                out.add(m)
                grew = True
    return out


def changed(key: str, value):
    """A different value of the declared type."""
    allowed = C.key_types().get(key, set())
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "_x"
    if isinstance(value, list):
        return [*value, value[0] if value else "x"]
    if isinstance(value, dict):
        return {**value, "x": 1}
    return {"x": 1} if "dict" in allowed else ["x"] if "list" in allowed else 1 if "int" in allowed else "x"


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory):
    """Every section's checkpoint written fresh (a placeholder artifact each) for the tiny profile."""
    cfg = C.load_config("tiny", {"outputs_dir": str(tmp_path_factory.mktemp("o"))}, env=False)
    for n in SECTIONS:
        with Section(cfg, n).writer() as w:
            w.write_json("done.json", {"section": n})
    assert all(Section(cfg, n).is_fresh() for n in SECTIONS)
    return cfg


def test_the_code_reader_finds_what_sections_are_known_to_read():
    """The static reader itself: keys read through helpers and other modules are found."""
    assert {"collect_total", "confirm_label_files", "synth_n_train", "label_files"} <= section_reads(1)
    assert {"train_epochs", "train_lr0"} <= section_reads(4)          # via flywheel.train_spec
    assert {"confirm_min_frames", "confirm_max_frames", "eval_conf"} <= section_reads(5)
    assert {"retrain_epochs", "label_accept", "train_epochs"} <= section_reads(7)
    assert "workers" not in section_reads(1) and "flywheel_reviewed" in section_reads(7)
    assert "flywheel_turns" not in section_reads(8)   # turn t's case study never depends on how many turns follow


@pytest.mark.parametrize("n", sorted(SECTIONS))
def test_changing_a_key_a_section_reads_makes_it_and_everything_after_it_stale(fresh_run, n):
    keys = sorted(section_reads(n) | {k for k in _defaults() if k.startswith(SPECS[n].prefixes)})
    assert keys
    missed = {}
    for key in keys:
        if key.startswith("flywheel_"):
            continue  # turn 1 never reads them; later turns' hashes cover SPECS[n].turn_keys (next test)
        cfg = copy.copy(fresh_run)
        cfg[key] = changed(key, cfg[key])
        memo: dict = {}
        fresh = {m for m in downstream(n) if Section(cfg, m).staleness(memo) is None}
        if fresh:
            missed[key] = sorted(fresh)
    assert not missed, f"§{n}: changing these keys leaves these sections fresh: {missed}"


@pytest.mark.parametrize("n", sorted(SECTIONS))
def test_flywheel_keys_a_section_reads_are_its_turn_keys(n):
    runner = next(f for name, f in _functions("bdd_engine.flywheel").items() if name.startswith(f"s{n}_"))
    read = {k for k in _keys_read("bdd_engine.flywheel", runner, "cfg", set()) if k.startswith("flywheel_")}
    assert read <= set(SPECS[n].turn_keys)


def test_a_key_no_section_reads_changes_no_section(fresh_run):
    cfg = copy.copy(fresh_run)
    cfg["explorer_app_port"] = 1
    cfg["workers"] = 7
    assert all(Section(cfg, n).is_fresh() for n in SECTIONS)
