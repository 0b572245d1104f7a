# Container targets; the main Makefile has `include docker/docker.mk`. They need Docker with the
# compose plugin, the NVIDIA Container Toolkit and a GPU driver (docker/README.md).
DOCKER_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
DOCKER ?= docker
DOCKER_COMPOSE_FILE ?= $(DOCKER_MK_DIR)/compose.yaml
BASE_IMAGE ?= nvcr.io/nvidia/tensorflow:25.02-tf2-py3
MLFLOW_PORT ?= 5000
ARGS ?=
COMPOSE := BASE_IMAGE=$(BASE_IMAGE) MLFLOW_PORT=$(MLFLOW_PORT) \
	$(DOCKER) compose -f $(DOCKER_COMPOSE_FILE)

.PHONY: docker-check docker-build docker-bench docker-mlflow docker-down

docker-check:
	@command -v $(DOCKER) >/dev/null 2>&1 || { \
	  echo "detbench: '$(DOCKER)' not found: the docker-* targets need Docker Engine with the" \
	       "compose plugin, the NVIDIA Container Toolkit and a GPU driver (docker/README.md)" >&2; \
	  exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { \
	  echo "detbench: no Docker engine reachable ('$(DOCKER) info' failed): start the Docker" \
	       "daemon, or check DOCKER_HOST and that you may use it (the docker group)" >&2; \
	  exit 1; }
	@$(DOCKER) compose version >/dev/null 2>&1 || { \
	  echo "detbench: '$(DOCKER) compose' is not available: install the Docker Compose plugin" \
	       "(v2; docker/README.md)" >&2; \
	  exit 1; }

docker-build: docker-check ## Build the images (NGC TensorFlow 25.02 base; BASE_IMAGE=... for another)
	$(COMPOSE) build mlflow bench

docker-bench: docker-build ## Build, then run python -m runner ARGS in the GPU container (MLflow server included)
	$(COMPOSE) run --rm bench $(ARGS)

docker-mlflow: docker-check ## Start only the MLflow server of docker/compose.yaml (http://127.0.0.1:5000)
	$(COMPOSE) up -d --wait mlflow
	@echo "MLflow: http://127.0.0.1:$(MLFLOW_PORT) (make docker-down stops it; data stays in volumes)"

docker-down: docker-check ## Stop the compose containers (the volumes with runs, models and data stay)
	$(COMPOSE) down
