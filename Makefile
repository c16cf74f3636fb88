# The README's two commands: `make demo` and `make test`. Both install what is missing first
# (Debian packages through apt-get, Python packages into .venv through pip).
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python

.PHONY: setup demo demo-stop test unit fleet faults systemd-host bench lint clean

setup: $(VENV)/.installed
	@scripts/install-system-deps.sh | grep -v '^found:' || true

$(VENV)/.installed: pyproject.toml
	scripts/install-system-deps.sh
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

## a real blue-green deploy of the bundled example app on this machine
demo: setup
	scripts/demo.sh

demo-stop:
	scripts/demo-nginx.sh reset

## lint + the whole suite (unit, integration with real nginx/sshd/git, short zero-failure check)
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -p no:cacheprovider

unit: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit

## the whole 16-host fleet run (network namespaces, non-root deploy user, two lua traffic
## hosts): `make test` runs its bounded part; this adds ten deploys under load, rolling batches
fleet: setup
	BLUEGREEN_FLEET=full $(VENV)/bin/pytest -q -p no:cacheprovider -m fleet tests/integration

## the whole fault suite: every fault x point x switch mode x host type, then its table
## (`make test` runs a bounded subset; -m here overrides pyproject's "not faults_full")
faults: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider -m faults tests/faults

## build the cached Debian 12 root filesystem the systemd backend's tests boot (about
## 1-2.5 min, once; `make test` builds it on first use otherwise) and boot it once
systemd-host: setup
	$(PY) -m testkit.systemd_host

## every benchmark (bench/run.py), one result line each; `$(PY) -m bench.NAME` runs one
bench: setup
	$(PY) -m bench.run

clean: demo-stop
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
