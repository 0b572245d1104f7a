# syntax=docker/dockerfile:1
# The MLflow tracking server of docker/compose.yaml: the same MLflow major version as detbench's
# client (pyproject.toml: mlflow>=3.1), on a small Python image.
FROM python:3.12-slim

ARG MLFLOW_VERSION=">=3.1,<4"
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --disable-pip-version-check "mlflow${MLFLOW_VERSION}"

RUN mkdir -p /mlflow/artifacts
VOLUME ["/mlflow"]
EXPOSE 5000
# compose.yaml gives the command (store, artifacts, allowed hosts) and the health check.
