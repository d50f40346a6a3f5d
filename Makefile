# The two commands a new user needs:  make run  (the whole pipeline)  and  make test.
# Both create .venv and install the project first. On CPU machines torch is pinned to the
# CPU wheel (an unpinned torch pulls several GB of CUDA packages) and every other dependency to
# the exact versions of requirements/cpu.lock (the tested set; `make lock` refreshes it). On GPU
# machines the training env is  make install LOCK= TORCH_SPEC=torch EXTRAS=dev,dense,deepspeed,vllm
# then .venv/bin/pip install flash-attn --no-build-isolation, and the simulator server gets its
# own env:  make install LOCK= VENV=.venv-sglang TORCH_SPEC=torch EXTRAS=sglang  (README "Going to GPUs").
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,dense
# Exact versions for everything but torch ('' to resolve from pyproject.toml's ranges instead).
LOCK ?= requirements/cpu.lock
BIN := $(abspath $(VENV))/bin
# Prefect's temporary local server: no telemetry (it only adds sqlite lock noise offline).
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install lock run replicate test test-slow clean mlflow-ui prefect-ui deploy browser-deps plots-template
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(if $(LOCK),$(BIN)/python -m pip install -q -r $(LOCK))
	$(BIN)/python -m pip install -q $(if $(LOCK),--no-deps) -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip check
	touch $@

# Refresh requirements/cpu.lock: the newest versions pyproject.toml allows (torch stays
# TORCH_SPEC's and is left out), resolved by uv for Linux x86_64, Python 3.11, against the CPU
# torch wheel (PyTorch's CPU index; where that is unreachable but a local wheel exists:
# make lock TORCH_SOURCE="--find-links DIR"). Then make install && make test && make run, and
# commit the lock with the results.
TORCH_SOURCE ?= --torch-backend cpu
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	echo "$(TORCH_SPEC)" > $(VENV)/torch-constraint.txt
	{ sed -n '1,3p' requirements/cpu.lock; $(BIN)/uv pip compile pyproject.toml --extra dev --extra dense \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 -c $(VENV)/torch-constraint.txt $(TORCH_SOURCE) \
	  --no-emit-package torch --no-header --no-annotate --quiet; } > requirements/cpu.lock.new
	mv requirements/cpu.lock.new requirements/cpu.lock

# The whole pipeline on params.yaml (the tiny CPU world by default); stages already up to date are skipped.
run: install
	PATH=$(BIN):$$PATH HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} dvc repro

# The replication study (configs/studies/replication.yaml): every variant x seed a DVC experiment, run
# one at a time and resumable (finished experiments are skipped), then docs/REPLICATION.md and
# metrics/replication.json. Select with REPLICATE_ARGS, e.g. "--claims 1,2 --seeds 2" or
# "--dry-run" (the plan and an estimated time); ~10 h on 2 cores for the whole study.
REPLICATE_ARGS ?=
replicate: install
	PATH=$(BIN):$$PATH HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(BIN)/zerosearch replicate $(REPLICATE_ARGS)

# The fast test suite (slow end-to-end tests are excluded; `make test-slow` runs them).
test: install
	PATH=$(BIN):$$PATH $(BIN)/python -m pytest -q

test-slow: install
	PATH=$(BIN):$$PATH $(BIN)/python -m pytest -q -m slow

# The MLflow UI and tracking server on http://127.0.0.1:5000 over ./mlflow.db. While it runs,
# export MLFLOW_TRACKING_URI=http://127.0.0.1:5000 so every process logs through it.
mlflow-ui: install
	$(BIN)/zerosearch ui

# The Prefect UI and API on http://127.0.0.1:4200 (flow runs, deployments, artifacts).
prefect-ui: install
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

# Serve the pipeline deployment (schedule from params.yaml `orchestration`) against that server.
deploy: install
	PATH=$(BIN):$$PATH PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:4200/api} $(BIN)/zerosearch deploy

# Headless Chromium for the UI tests (tests/test_ui_browser.py, marked browser); Debian, as root.
browser-deps:
	command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

# `dvc plots show` offline: rebuild configs/plots/offline.html (Vega, Vega-Lite, Vega-Embed inlined,
# the versions dvc_render names) from the npm registry. The built file is committed.
VEGA_PACKAGES = vega/-/vega-5.20.2 vega-lite/-/vega-lite-5.2.0 vega-embed/-/vega-embed-6.18.2
plots-template:
	rm -rf .plots-template && mkdir -p .plots-template
	for p in $(VEGA_PACKAGES); do name=$${p%%/*}; mkdir -p .plots-template/$$name && \
	  curl -fsSL https://registry.npmjs.org/$$p.tgz | tar xz -C .plots-template/$$name || exit 1; done
	$(PYTHON) configs/plots/build_offline_template.py .plots-template
	rm -rf .plots-template

clean:
	rm -rf data models metrics mlflow.db mlruns mlartifacts
