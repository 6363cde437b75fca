"""Config loading rules (issue 23): `run --set` values reach the notebook kernel unchanged,
every BDD_* variable that is not a config key is listed once and accepted, and a profile
with a duplicated key or broken YAML is refused naming the file and the line."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from bdd_engine import config as C
from bdd_engine import runner
from bdd_engine.__main__ import main
from bdd_engine.config import ConfigError, load_config, parse_overrides

PKG = Path(C.__file__).resolve().parent

# null, a small float (YAML 1.1 reads '1e-05' as a string), a list, a dict, a bool, a string
# that looks like a number to str() but not to YAML, and a value with '=' in it
SETS = ["label_teacher_imgsz=null", "mine_min_distance=0.00001", "retrain_controls=[random, oracle]",
        "synth_weather_mix={clear: 2, rainy: 1.5}", "train_cos_lr=false", "train_lr0=1.0e-3",
        "label_gsam2_prompt=car . a=b", "retrain_seeds=[7]"]


def test_run_set_values_reach_the_kernel_unchanged(tmp_path, monkeypatch):
    """The real runner path: run_notebook puts the overrides into os.environ for the kernel;
    the kernel's load_config() (views.cfg) must read back exactly what the CLI parsed."""
    expected = load_config("tiny", {**parse_overrides(SETS), "outputs_dir": str(tmp_path)}, env=False)
    seen = {}

    def fake_execute(client, kernel_log, resume):  # the kernel would start here, inheriting os.environ
        seen["cfg"], seen["resume"] = load_config(), resume
        return 0

    for k in ["BDD_PROFILE", "BDD_OUTPUTS_DIR", *(f"BDD_{s.split('=')[0].upper()}" for s in SETS)]:
        monkeypatch.setenv(k, "")   # recorded, so the test's end removes what run_notebook sets (delenv of
        monkeypatch.delenv(k)       # an absent key records nothing: BDD_* would leak into later tests)
    monkeypatch.setenv("BDD_OUTPUTS_DIR", str(tmp_path))
    monkeypatch.setattr(runner, "execute", fake_execute)
    assert runner.run_notebook(expected, SETS, None) == 0
    got = seen["cfg"]
    assert got["label_teacher_imgsz"] is None
    assert got["mine_min_distance"] == 1e-05 and isinstance(got["mine_min_distance"], float)
    assert got["retrain_controls"] == ["random", "oracle"] and got["synth_weather_mix"] == {"clear": 2, "rainy": 1.5}
    assert got["label_gsam2_prompt"] == "car . a=b" and got["retrain_seeds"] == [7] and got["train_cos_lr"] is False
    assert dict(got) == dict(expected)
    # the Ctrl-C line's resume command pastes back into a shell as the same arguments
    assert shlex.split(seen["resume"]) == ["python", "-m", "bdd_engine", "run", "--profile", "tiny",
                                           *(x for s in SETS for x in ("--set", s))]
    assert (tmp_path / "notebook_tiny.ipynb").is_file()


def test_kernel_env_refuses_what_the_cli_refuses():
    with pytest.raises(ConfigError, match="key=value"):
        runner.kernel_env("tiny", ["train_epochs"])


def _bdd_env_reads() -> set[str]:
    """Every BDD_* name the package reads from the environment (os.environ.get / [..])."""
    names = set()
    for py in PKG.rglob("*.py"):
        names |= set(re.findall(r"environ(?:\.get\(|\[)\s*[\"'](BDD_[A-Z0-9_]+)", py.read_text()))
    return names


def test_every_bdd_variable_read_by_the_package_is_listed_or_a_config_key():
    defaults = C._read_yaml(C.DEFAULTS)
    reads = _bdd_env_reads()
    assert {"BDD_PROFILE", "BDD_CACHE_DIR", "BDD_WEIGHTS_DIR"} <= reads
    for name in reads:
        assert name in C.RESERVED_ENV or name[4:].lower() in defaults, name
    assert all(C.RESERVED_ENV[n] for n in C.RESERVED_ENV)      # each says who reads it
    assert not {n[4:].lower() for n in C.RESERVED_ENV} & set(defaults)   # never also a config key


def test_reserved_bdd_variables_are_accepted(monkeypatch, tmp_path):
    for name in C.RESERVED_ENV:
        monkeypatch.setenv(name, str(tmp_path) if name != "BDD_PROFILE" else "tiny")
    cfg = load_config()
    assert cfg.profile == "tiny" and "weights_dir" not in cfg and "cache_dir" not in cfg
    monkeypatch.setenv("BDD_WEIGHT_DIR", str(tmp_path))   # a typo is still refused
    with pytest.raises(ConfigError, match="unknown config key 'weight_dir'"):
        load_config()


def test_cli_runs_with_bdd_weights_dir(tmp_path, tiny_world, monkeypatch, capsys):
    monkeypatch.setenv("BDD_WEIGHTS_DIR", str(tmp_path / "w"))
    assert main(["status", "--profile", "tiny", "--set", f"data_root={tiny_world}",
                 "--set", f"outputs_dir={tmp_path / 'out'}"]) == 0
    assert "01_collect" in capsys.readouterr().out


@pytest.fixture
def own_profile(monkeypatch, tmp_path):
    """A profiles folder with default.yaml and a profile file the test writes."""
    prof = tmp_path / "profiles"
    prof.mkdir()
    (prof / "default.yaml").write_text(C.DEFAULTS.read_text())
    monkeypatch.setattr(C, "PROFILES_DIR", prof)
    monkeypatch.setattr(C, "DEFAULTS", prof / "default.yaml")
    return prof


def test_duplicated_key_in_a_profile_is_refused_with_file_line_and_key(own_profile):
    (own_profile / "mine.yaml").write_text("seed: 1\nmine_k: 5\ntrain_epochs: 3\nmine_k: 7\n")
    with pytest.raises(ConfigError) as e:
        load_config("mine", env=False)
    msg = str(e.value)
    assert msg == f"{own_profile / 'mine.yaml'}, line 4: key 'mine_k' appears twice (lines 2 and 4); keep one"


def test_duplicated_key_in_default_yaml_and_in_a_set_value_are_refused(own_profile):
    (own_profile / "mine.yaml").write_text("seed: 1\n")
    (own_profile / "default.yaml").write_text(C.DEFAULTS.read_text() + "seed: 43\n")
    with pytest.raises(ConfigError, match=r"default\.yaml, line \d+: key 'seed' appears twice"):
        load_config("mine", env=False)
    with pytest.raises(ConfigError, match="key 'clear' appears twice"):
        parse_overrides(["synth_weather_mix={clear: 1, clear: 2}"])


def test_yaml_syntax_error_names_file_and_line(own_profile):
    (own_profile / "mine.yaml").write_text("seed: 1\nmine_k: 5\n  train_epochs: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config("mine", env=False)
    msg = str(e.value)
    assert msg.startswith(f"{own_profile / 'mine.yaml'}, line 3, column ") and "not valid YAML" in msg
    assert "\n" not in msg


def test_cli_prints_one_line_for_a_broken_profile(own_profile, capsys):
    (own_profile / "mine.yaml").write_text("seed: 1\nseed: 2\n")
    assert main(["status", "--profile", "mine"]) == 2
    assert capsys.readouterr().err == f"error: {own_profile / 'mine.yaml'}, line 2: key 'seed' appears twice (lines 1 and 2); keep one\n"


@pytest.mark.parametrize("word", ["off", "on", "yes", "no"])
def test_a_str_key_keeps_a_yaml_boolean_word_from_set_and_env(word, monkeypatch):
    # YAML 1.1 reads off/on/yes/no as booleans; train_cache is documented `ram | disk | off`
    assert parse_overrides([f"train_cache={word}"]) == {"train_cache": word}
    monkeypatch.setenv("BDD_TRAIN_CACHE", word)
    assert load_config("tiny").train_cache == word
    # a bool key still gets a bool, and a str key still gets a str for any other word
    assert parse_overrides([f"train_val={word}"])["train_val"] is (word in ("on", "yes"))
    assert parse_overrides(["train_cache=disk"]) == {"train_cache": "disk"}
