# detbench: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# tf-cpu keeps the install small; use TF_EXTRA=tf for a CUDA machine outside the container.
TF_EXTRA ?= tf-cpu
ARGS ?=
MLFLOW_URI ?= sqlite:///mlflow.db
MLFLOW_PORT ?= 5000

.DEFAULT_GOAL := help
.PHONY: help install lock bench test test-slow test-all lint mlflow-ui table sync perf train-demo clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[$(TF_EXTRA),dev]"
	touch $@

install: $(VENV)/.installed ## Create .venv and install the project, versions pinned by constraints.txt

lock: ## Refresh constraints.txt from the versions installed in .venv (then commit it)
	$(PY) scripts/lock.py $(TF_EXTRA) dev > constraints.txt.new && mv constraints.txt.new constraints.txt
	@echo "constraints.txt: $$(grep -c '==' constraints.txt) pinned packages"

bench: install ## Run one benchmark job (python -m runner $(ARGS)); e.g. make bench ARGS="benchmark.warmup=10"
	$(PY) -m runner $(ARGS)

# The fast lane leaves out the tests marked slow (pyproject.toml: real jobs end to end, model
# conversions, benchmark scripts) and runs on TEST_WORKERS pytest-xdist workers (--dist loadfile:
# a module's tests, and its module-scoped fixtures, stay on one worker; TEST_WORKERS=0: none).
# The slow lane runs serially: its signal and timeout tests wait on jobs that must get the CPU.
# CI (.ci/run) runs both lanes.
TEST_WORKERS ?= 2
test: install ## The fast lane: every test not marked slow, on 2 workers (README: Tests)
	$(PY) -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile $(ARGS)

test-slow: install ## The slow lane: end-to-end jobs, signals, conversions, benchmark scripts
	$(PY) -m pytest -m slow $(ARGS)

test-all: install ## Both lanes in one pytest run
	$(PY) -m pytest $(ARGS)

lint: install ## ruff and mypy
	$(VENV)/bin/ruff check runner tests benchmarks scripts
	$(VENV)/bin/mypy

mlflow-ui: install ## Open the MLflow UI on the local store (http://127.0.0.1:$(MLFLOW_PORT))
	@echo "runs table: http://127.0.0.1:$(MLFLOW_PORT)/#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=detbench"
	$(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_URI) --host 127.0.0.1 --port $(MLFLOW_PORT)

table: install ## Export MLflow runs to results/ (table.md, table.csv, plots); e.g. make table ARGS="--parent RUN_ID --extra p90,ci"
	$(PY) -m runner.results.export $(ARGS)

sync: install ## Upload job directories that could not be logged (tracking server was down)
	$(PY) -m runner.sync $(ARGS)

perf: install ## Performance scripts, figures as side-by-side ratios (ARGS=--quick for a short run)
	$(PY) benchmarks/run_all.py $(ARGS)

train-demo: install ## Retrain the shipped demo detector (about 20 minutes on 2 cores)
	$(PY) -m runner.demo.train --out runner/demo/assets/demo_centernet

clean: ## Remove outputs and the local MLflow store (keeps .venv)
	rm -rf outputs multirun mlflow.db mlartifacts mlruns results

include docker/docker.mk
