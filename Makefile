# The two commands a new user needs:  make run  (the whole pipeline)  and  make test.
# Both create .venv and install the project first. On CPU machines torch is pinned to the
# CPU wheel (an unpinned torch pulls several GB of CUDA packages); on GPU machines the training
# env is  make install TORCH_SPEC=torch EXTRAS=dev,dense,deepspeed,vllm  then
# .venv/bin/pip install flash-attn --no-build-isolation, and the simulator server gets its own
# env:  make install VENV=.venv-sglang TORCH_SPEC=torch EXTRAS=sglang  (README "Going to GPUs").
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,dense
BIN := $(abspath $(VENV))/bin
# Prefect's temporary local server: no telemetry (it only adds sqlite lock noise offline).
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install run test test-slow clean mlflow-ui prefect-ui deploy browser-deps
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

# The whole pipeline on params.yaml (the tiny CPU world by default); stages already up to date are skipped.
run: install
	PATH=$(BIN):$$PATH HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} dvc repro

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

clean:
	rm -rf data models metrics mlflow.db mlruns mlartifacts
