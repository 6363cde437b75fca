# The newcomer path is two commands: `make demo` and `make test`. Both create the venv if needed.
PY      := .venv/bin/python
PROFILE ?= demo

.PHONY: venv demo smoke-full test test-all mutants bench status app clean-outputs

venv:                      ## create .venv + install pinned requirements (no-op when up to date)
	@./setup.sh

demo: venv                 ## the whole notebook headless (a synthetic profile generates its world first; real data is only read)
	$(PY) -m bdd_engine run --profile $(PROFILE)

smoke-full: venv           ## full profile's code path on a 1280x720 SYNTHETIC world + STAND-IN (random) weights, 2 CPU cores (<= 20 min)
	$(PY) -m bdd_engine stand-in-weights --out weights/stand-in --if-missing
	$(PY) -m bdd_engine run --profile smoke-full

test: venv                 ## the test suite (< ~10 min on 2 cores; excludes @slow)
	$(PY) -m pytest -q -m "not slow"

test-all: venv
	$(PY) -m pytest -q

mutants: venv              ## mutation check of the rule modules on a temp clone of HEAD (~3 min; MUTANTS_ARGS="--overlay tests" adds uncommitted tests)
	$(PY) tests/mutants/run.py $(MUTANTS_ARGS)

bench: venv                ## benchmarks/ (each ends with a RESULT {json} line)
	$(PY) benchmarks/bench_eval.py
	$(PY) benchmarks/bench_mine.py
	$(PY) benchmarks/bench_embed_retrieval.py

status: venv               ## which notebook sections are fresh
	$(PY) -m bdd_engine status --profile $(PROFILE)

app: venv                  ## FiftyOne App on 127.0.0.1
	$(PY) -m bdd_engine app --profile $(PROFILE)

clean-outputs:             ## delete every generated artifact (data/ is left alone)
	rm -rf outputs/0* outputs/runs outputs/figures outputs/case_study outputs/*.ipynb outputs/.cache outputs/mlflow
