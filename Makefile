# The two commands a newcomer needs: `make demo` runs the product, `make test` passes the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench fuzz system-deps k8s-binaries image-base crd clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

system-deps:
	bash hack/system-deps.sh

k8s-binaries:
	bash hack/k8s-binaries.sh

## The Python base tests/image builds the Dockerfile on (debootstrap, once per machine).
image-base: system-deps
	bash hack/image-base.sh

## Runs a standalone gateway against a local capture SMTP server and sends one real message.
demo: $(STAMP)
	$(BIN)/python -m mailgate.demo

## Installs everything the suite needs (venv, Debian packages, Go-built control plane, image base) and runs it all.
test: $(STAMP) system-deps k8s-binaries image-base lint
	$(BIN)/python -m pytest -q -ra

## The suite without the Kubernetes tests, for a quick loop while coding.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not k8s'

lint: $(STAMP)
	$(BIN)/ruff check mailgate tests bench
	$(BIN)/mypy

bench: $(STAMP) system-deps
	$(BIN)/python -m bench.pool --quick

## schemathesis, every default check, 10,000+ requests to a gateway relaying to a capture server (docs/api.md).
fuzz: $(STAMP)
	$(BIN)/python -m bench.fuzz

crd: $(STAMP)
	$(BIN)/mailgate crd > crds/smtpaccounts.mailgate.dev.yaml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
