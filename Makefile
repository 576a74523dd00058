# copyflow: `make run` (install + the main job on the embedded default) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PROFILE ?= quick
# The machine's local wheel folder (a CPU torch build), only when PIP_FIND_LINKS names one.
FIND_LINKS := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),)

export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export ORT_DISABLE_TELEMETRY := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export GX_ANALYTICS_ENABLED := false
export PYTHONUNBUFFERED := 1
# numpy's AVX2 kernels return corrupted tail elements on some shared VMs while other processes
# are busy (infra/simd_check.py shows it); its SSE baseline does not. Override with
# NPY_DISABLE_CPU_FEATURES= (empty) on hardware you trust.
export NPY_DISABLE_CPU_FEATURES ?= X86_V3 X86_V4 AVX512_ICL AVX512_SPR

.PHONY: install run test bench lock ui up down deploy worker clean

# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (common in containers, and on these
# machines) every process would otherwise recompile torch/lightning/mlflow on import, about 25 s
# per training or DVC stage subprocess.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(BIN)/uv pip install -q --python $(PY) $(FIND_LINKS) --compile-bytecode -r requirements.lock
	$(BIN)/uv pip install -q --python $(PY) --no-deps -e .
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/copyflow retrain --profile $(PROFILE)

test: install
	$(BIN)/pytest

bench: install
	$(BIN)/python -m benchmarks.run

# With the machine's wheel folder, lock its CPU build of torch: left to choose, uv takes PyPI's
# build of the same version, which pulls in the CUDA libraries (several GB). The sed drops the
# local version label, so the lock also installs on a box with internet and no wheel folder.
lock:
	$(if $(PIP_FIND_LINKS),printf 'torch==2.13.0+cpu\n' > $(VENV)/lock-overrides.txt,: > $(VENV)/lock-overrides.txt)
	$(BIN)/uv pip compile pyproject.toml --extra dev $(FIND_LINKS) --override $(VENV)/lock-overrides.txt -q -o requirements.lock
	sed -i 's/^torch==\([0-9.]*\)+cpu/torch==\1/' requirements.lock

ui: install
	$(BIN)/copyflow ui

# Local Prefect server + MLflow server in the background (logs, pids: .run/); `make down` stops them.
up: install
	bash infra/up.sh

down:
	bash infra/down.sh

# Deploy prefect.yaml (nightly retrain, promote, rollback, nightly prune) to the server `make up` started.
deploy: install
	bash infra/deploy.sh

worker: install
	bash infra/worker.sh

clean:
	rm -rf artifacts state .pytest_cache
