# Two commands do all set-up on a fresh machine:  `make run`  and  `make test`.
VENV ?= .venv
PYTHON ?= python3
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Headless plotting; no usage telemetry from MLflow (its documented opt-out) and no progress bars.
export MPLBACKEND := Agg
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

SNAKEMAKE_ARGS ?=

.PHONY: install run test test-fast lint ui status clean

install: $(VENV)/.installed

# torch is pinned in the same command as everything else: an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet torch==2.13.0 -e '.[test,lmms]'
	@# PyPI's torchvision (pulled in by lmms-eval) cannot load beside the CPU build of torch, and transformers
	@# then fails to import any model; nothing vlmscale runs needs it, so it goes where it does not import.
	$(VENV)/bin/python -c "import torchvision" 2>/dev/null || $(VENV)/bin/pip uninstall --quiet -y torchvision
	touch $@

run: install  ## the default tiny grid end to end: data, tower, cells, evaluation, FLOPs, law, report
	snakemake --profile profiles/local $(SNAKEMAKE_ARGS)

test: lint  ## lint, then every test, the end-to-end workflow ones included
	pytest -q

test-fast: lint  ## lint, then the unit tests only
	pytest -q -m "not slow"

lint: install  ## ruff on the Python, snakefmt and Snakemake's linter on the workflow
	ruff check src tests benchmarks
	ruff format --check src tests benchmarks
	snakefmt --check Snakefile workflow
	@# Every lint but the per-rule conda environment (the rules run in the environment `make install` builds).
	@snakemake --lint > .lint.txt 2>&1 || true
	@grep -q '^Lints for' .lint.txt || { cat .lint.txt; exit 1; }
	@! grep -E '^ +\* ' .lint.txt | grep -v 'Specify a conda environment or container'
	@rm -f .lint.txt

ui: install  ## MLflow UI on the local store, http://127.0.0.1:5000
	vlmscale ui --uri sqlite:///results/mlflow.db

clean:
	rm -rf results .snakemake
