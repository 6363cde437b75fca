#!/usr/bin/env python3
"""Mutation check: apply each curated mutant of the rule modules, run the tests that
should catch it, restore the file byte-exactly, report the kill rate.

    python tests/mutants/run.py                 # every mutant in tests/mutants/mutants.yaml (make mutants)
    python tests/mutants/run.py -k eval- -k bdd-   # ids containing any of these
    python tests/mutants/run.py --list
    python tests/mutants/run.py --overlay tests   # also copy the live tests/ over the snapshot

Never touches the live tree: the runner clones the repository (``git clone --shared`` of
``--rev``, default HEAD) into a temp folder, symlinks the live ``.venv`` there, and mutates
the clone. ``--overlay PATH`` copies live, uncommitted versions of PATH (files or folders)
into the clone first, e.g. a test you are writing. Each mutant is an exact-string
replacement that must match exactly once in its file, else it is reported ``broken``.
Before a mutant is applied, ``git diff --quiet`` on its file in the clone must pass (the
runner refuses to mutate a file with uncommitted edits, e.g. an overlaid one), and the
file is restored in a ``finally`` (also on Ctrl-C) and checked byte-for-byte.

A baseline run of every listed test file on the unmutated clone must pass first (a
failing baseline would make every mutant look killed). Python never reuses bytecode
(PYTHONDONTWRITEBYTECODE, no __pycache__ in the clone): a same-size mutant within the
same second would otherwise run the cached original.

Prints one row per mutant and a final line
``RESULT {"mutants": N, "killed": K, "survived": S, "equivalent": E, "broken": B, "kill_rate": K/N, ...}``.
Exit code 0 only when the baseline passes, no mutant is broken and every survivor is
marked ``equivalent`` in the YAML.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_LIST = HERE / "mutants.yaml"
TIMEOUT_S = 300


def sh(*cmd: str, cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, check=check, text=True, capture_output=True, **kw)


def load_mutants(path: Path) -> list[dict]:
    import yaml

    items = yaml.safe_load(path.read_text())
    need = {"id", "file", "original", "replacement", "tests", "why"}
    ids = set()
    for m in items:
        missing = need - set(m)
        if missing:
            raise SystemExit(f"{path}: mutant {m.get('id', '?')!r} lacks {sorted(missing)}")
        if m["id"] in ids:
            raise SystemExit(f"{path}: duplicate mutant id {m['id']!r}")
        if m["original"] == m["replacement"]:
            raise SystemExit(f"{path}: mutant {m['id']!r} replaces a snippet by itself")
        ids.add(m["id"])
    return items


def make_clone(rev: str, overlay: list[str], keep: bool) -> Path:
    sha = sh("git", "rev-parse", "--verify", f"{rev}^{{commit}}", cwd=REPO).stdout.strip()
    root = Path(tempfile.mkdtemp(prefix="bdd_mutants_"))
    clone = root / "repo"
    sh("git", "clone", "--quiet", "--shared", "--no-checkout", str(REPO), str(clone), cwd=root)
    sh("git", "checkout", "--quiet", "--detach", sha, cwd=clone)
    for rel in overlay:
        src = REPO / rel
        if not src.exists():
            raise SystemExit(f"--overlay {rel}: not found in {REPO}")
        dst = clone / rel
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    venv = REPO / ".venv"
    if not (venv / "bin" / "python").exists():
        raise SystemExit(f"no {venv}: run `make venv` first")
    (clone / ".venv").symlink_to(venv)
    (root / "cache").mkdir()
    print(f"[mutants] snapshot {sha[:10]} ({rev}) in {clone}" + (f", overlay {overlay}" if overlay else "")
          + (" (kept)" if keep else ""), flush=True)
    return clone


def test_env(clone: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BDD_") and k not in ("PYTHONPATH", "CI")}
    env.update(PYTHONDONTWRITEBYTECODE="1", BDD_CACHE_DIR=str(clone.parent / "cache"), PYTHONHASHSEED="0")
    return env


def run_tests(clone: Path, tests: list[str], env: dict[str, str]) -> tuple[str, float, str]:
    """('pass' | 'fail' | 'timeout' | 'error', seconds, tail of output)."""
    py = clone / ".venv" / "bin" / "python"
    t0 = time.time()
    try:
        r = subprocess.run([str(py), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], cwd=clone,
                           env=env, text=True, capture_output=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return "timeout", time.time() - t0, ""
    tail = (r.stdout + r.stderr)[-1500:]
    status = {0: "pass", 1: "fail"}.get(r.returncode, "error")
    return status, time.time() - t0, tail


def sanity(clone: Path, env: dict[str, str]) -> None:
    """The clone's tests must import the clone's package, not the live one."""
    py = clone / ".venv" / "bin" / "python"
    r = subprocess.run([str(py), "-c", "import bdd_engine, sys; print(bdd_engine.__file__)"], cwd=clone, env=env,
                       text=True, capture_output=True)
    got = Path(r.stdout.strip()).resolve()
    if r.returncode != 0 or clone.resolve() not in got.parents:
        raise SystemExit(f"[mutants] the clone imports bdd_engine from {got or r.stderr}: refusing to run")


def apply_and_test(clone: Path, m: dict, env: dict[str, str]) -> dict:
    path = clone / m["file"]
    row = {"id": m["id"], "file": m["file"], "status": "", "seconds": 0.0, "detail": ""}
    if not path.exists():
        return {**row, "status": "broken", "detail": "file not found"}
    dirty = subprocess.run(["git", "diff", "--quiet", "--", m["file"]], cwd=clone).returncode
    if dirty != 0:
        raise SystemExit(f"[mutants] {m['file']} has uncommitted changes in the snapshot: refusing to mutate it")
    original = path.read_bytes()
    text = original.decode("utf-8")
    n = text.count(m["original"])
    if n != 1:
        return {**row, "status": "broken", "detail": f"snippet found {n} times (must be exactly once)"}
    digest = hashlib.sha256(original).hexdigest()
    try:
        path.write_bytes(text.replace(m["original"], m["replacement"]).encode("utf-8"))
        status, secs, tail = run_tests(clone, list(m["tests"]), env)
    finally:
        path.write_bytes(original)
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise SystemExit(f"[mutants] could not restore {path} byte-exactly")
    killed = status in ("fail", "error", "timeout")
    detail = ""
    if status == "fail":
        fails = [ln for ln in tail.splitlines() if ln.startswith(("FAILED", "ERROR"))]
        detail = fails[0][:110] if fails else ""
    elif status in ("error", "timeout"):
        detail = f"pytest {status}: " + (tail.strip().splitlines() or [""])[-1][:90]
    if killed:
        res = "killed"
    else:
        res = "equivalent" if m.get("equivalent") else "SURVIVED"
    return {**row, "status": res, "seconds": round(secs, 1), "detail": detail}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mutants", type=Path, default=DEFAULT_LIST, help="YAML list (default: %(default)s)")
    p.add_argument("-k", action="append", default=[], help="only ids containing this (repeatable)")
    p.add_argument("--rev", default="HEAD", help="commit to mutate (default HEAD)")
    p.add_argument("--overlay", action="append", default=[], help="copy this live path into the snapshot (repeatable)")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--keep", action="store_true", help="keep the temp clone (for debugging)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmutated baseline run")
    args = p.parse_args(argv)

    mutants = load_mutants(args.mutants)
    if args.k:
        mutants = [m for m in mutants if any(k in m["id"] for k in args.k)]
    if args.list:
        for m in mutants:
            print(f"{m['id']:<34} {m['file']:<26} {m['why']}")
        return 0
    if not mutants:
        raise SystemExit("no mutant selected")

    def _term(signum, frame):  # a SIGTERM restores and cleans up like Ctrl-C
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _term)
    clone = make_clone(args.rev, args.overlay, args.keep)
    rows: list[dict] = []
    t_start = time.time()
    try:
        env = test_env(clone)
        sanity(clone, env)
        files = sorted({m["file"] for m in mutants})
        for f in files:  # refuse to start on a dirty target (e.g. an overlaid rule module)
            if (clone / f).exists() and subprocess.run(["git", "diff", "--quiet", "--", f], cwd=clone).returncode:
                raise SystemExit(f"[mutants] {f} has uncommitted changes in the snapshot: refusing to start")
        if not args.no_baseline:
            tests = sorted({t for m in mutants for t in m["tests"]})
            status, secs, tail = run_tests(clone, tests, env)
            print(f"[mutants] baseline ({len(tests)} test files, unmutated): {status} in {secs:.0f} s", flush=True)
            if status != "pass":
                print(tail, file=sys.stderr)
                raise SystemExit("[mutants] the unmutated tests fail: fix that first (every mutant would look killed)")
        print(f"{'id':<34} {'file':<26} {'status':<10} {'s':>5}  detail", flush=True)
        for m in mutants:
            r = apply_and_test(clone, m, env)
            rows.append(r)
            print(f"{r['id']:<34} {r['file']:<26} {r['status']:<10} {r['seconds']:>5.1f}  {r['detail']}", flush=True)
    except KeyboardInterrupt:
        print("\n[mutants] interrupted: the file under mutation was restored; partial result below", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(clone.parent, ignore_errors=True)

    valid = [r for r in rows if r["status"] != "broken"]
    killed = sum(r["status"] == "killed" for r in valid)
    equivalent = sum(r["status"] == "equivalent" for r in valid)
    survived = sum(r["status"] == "SURVIVED" for r in valid)
    broken = len(rows) - len(valid)
    by_file: dict[str, list[int]] = {}
    for r in valid:
        k = by_file.setdefault(r["file"], [0, 0])
        k[0] += r["status"] == "killed"
        k[1] += 1
    print("\nkill rate per file:")
    for f, (k, n) in sorted(by_file.items()):
        print(f"  {f:<28} {k:>3}/{n:<3} {k / n:6.1%}")
    if broken:
        print("broken (snippet not found exactly once; update mutants.yaml): "
              + ", ".join(r["id"] for r in rows if r["status"] == "broken"))
    if survived:
        print("SURVIVED (add a test that kills it, or explain it as `equivalent:` in mutants.yaml): "
              + ", ".join(r["id"] for r in rows if r["status"] == "SURVIVED"))
    n = len(valid)
    result = {"mutants": n, "killed": killed, "survived": survived, "equivalent": equivalent, "broken": broken,
              "kill_rate": round(killed / n, 4) if n else None,
              "kill_rate_non_equivalent": round(killed / (n - equivalent), 4) if n - equivalent else None,
              "rev": args.rev, "seconds": round(time.time() - t_start)}
    print("RESULT " + json.dumps(result))
    complete = len(rows) == len(mutants)
    return 0 if complete and not broken and not survived else 1


if __name__ == "__main__":
    sys.exit(main())
