# Trellis: build and test. `make test` runs everything (as root on Debian 12, see README).
#
# Test layers (each test says which one it needs):
#   pure    `cargo test` as any user: planner, diff, defaults, rendering; the Helm chart
#           rendered, linted and schema-checked by real Helm v4 (`make test-helm`).
#   root    #[ignore = "root: ..."] tests: network namespaces, netlink, nftables, the real API
#           server (kube-apiserver-lite, started here; its KUBECONFIG is exported), and the
#           chart's helm install/upgrade/uninstall against it (e2e/helm/test_release.py).
#   vm      tests named `vm_*` (#[ignore]): kernel features the host lacks (ipip), run inside
#           a throw-away VM with a full Debian kernel (e2e/testbed/kernel-vm).
SHELL := /bin/bash
KAPI := $(CURDIR)/e2e/testbed/kube-apiserver-lite
KVM := $(CURDIR)/e2e/testbed/kernel-vm
CARGO ?= cargo
# The Helm tests call libhelm through PyPI's helm-python-sdk (.ci/run installs it with pytest).
PYTEST ?= python3 -m pytest
# The binaries `build` made, for the tests that start agents and operators: without these the
# tests run `cargo build -p ...`, whose per-package feature set rebuilds shared dependencies
# and invalidates the workspace's test artifacts.
BIN_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/debug
export KAPI_STATE ?= /tmp/trellis-kapi-$(shell printf %s "$(CURDIR)" | sha256sum | cut -c1-8)

.PHONY: all build test lint test-pure test-helm test-root test-vm crds apiserver-start apiserver-stop clean bench bench-smoke images lab lab-down

all: build

build:
	$(CARGO) build --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

crds:
	$(CARGO) run -q -p trellis-api --bin crdgen -- crds/yaml charts/trellis/crds

test: lint test-pure test-root test-vm

test-pure: test-helm
	$(CARGO) test --workspace

# The chart offline: strict lint, rendering with default and custom values, the schema's refusals.
test-helm:
	$(PYTEST) -q -p no:cacheprovider e2e/helm/test_chart.py

# The API server gets a state dir of its own per checkout (two checkouts can test at once) and
# starts with an empty etcd; the trap stops it however the tests end, and their status is kept.
test-root: build
	@[ "$$(id -u)" = 0 ] || { echo "test-root needs root (network namespaces, netlink)"; exit 1; }
	@set -euo pipefail; \
	  trap '$(KAPI) stop' EXIT; trap 'exit 130' INT TERM; \
	  KUBECONFIG=$$($(KAPI) restart); export KUBECONFIG; \
	  echo "test-root: API server up, KUBECONFIG=$$KUBECONFIG"; \
	  export TRELLIS_AGENT_BIN=$(BIN_DIR)/trellis-agent TRELLIS_OPERATOR_BIN=$(BIN_DIR)/trellis-operator; \
	  export IMAGES_AGENT_BIN=$$TRELLIS_AGENT_BIN IMAGES_OPERATOR_BIN=$$TRELLIS_OPERATOR_BIN; $(CURDIR)/images/build all; \
	  $(CARGO) test --workspace -- --ignored --skip vm_; \
	  $(PYTEST) -q -p no:cacheprovider e2e/helm/test_release.py

# For working by hand: `eval $$(make -s apiserver-start)`, then `cargo test -p ... -- --ignored`.
apiserver-start:
	@$(KAPI) env

apiserver-stop:
	@$(KAPI) stop

# One VM boot runs every vm_ test (or only those matching VM_TESTS, e.g. VM_TESTS=vm_ipip_mtu).
test-vm: build
	@[ "$$(id -u)" = 0 ] || { echo "test-vm needs root"; exit 1; }
	$(CURDIR)/e2e/testbed/run-vm-tests $(VM_TESTS)

# Container images (podman; the base is Debian 12 from debootstrap, no registry needed):
# localhost/trellis/{agent,operator}:VERSION from images/Containerfile.*, cached (images/build).
# Release binaries here and in `make lab`; `make test-root` builds them from the debug binaries
# `make build` made (IMAGES_AGENT_BIN/IMAGES_OPERATOR_BIN: no ~10 CPU-minute release build in CI).
images:
	@[ "$$(id -u)" = 0 ] || { echo "images needs root (podman)"; exit 1; }
	$(CURDIR)/images/build all

# The lab (README's main command): installs what it needs with the installer .ci/run uses
# (e2e/testbed/install-deps), builds the images and the lab, brings up a 3-node cluster from
# the chart with podman and runs the experiments (e2e/src/bin/lab.rs). KEEP=1 leaves the
# cluster up until Ctrl-C; NO_VM=1 skips the IPIP part in the VM.
lab:
	@[ "$$(id -u)" = 0 ] || { echo "make lab needs root (apt, podman, network namespaces)"; exit 1; }
	@set -euo pipefail; . $(CURDIR)/e2e/testbed/install-deps; install_deps; \
	  $(CURDIR)/images/build all; \
	  $(CARGO) build -q -p trellis-agent -p trellis-operator -p trellis-e2e --bin trellis-agent --bin trellis-operator --bin lab; \
	  export TRELLIS_AGENT_BIN=$(BIN_DIR)/trellis-agent TRELLIS_OPERATOR_BIN=$(BIN_DIR)/trellis-operator; \
	  exec $(BIN_DIR)/lab $(if $(KEEP),--keep) $(if $(NO_VM),--no-vm)

# Removes whatever a killed or kept lab left (namespaces, containers, API server, files).
lab-down:
	@[ "$$(id -u)" = 0 ] || { echo "make lab-down needs root"; exit 1; }
	@$(CARGO) build -q -p trellis-e2e --bin lab && $(BIN_DIR)/lab down

# Benchmarks (root, a quiet machine): release builds of the agent, the operator and the
# trellis-bench runner, which measures every figure next to its reference in the same run and
# writes docs/benchmarks.md. `make bench-smoke` runs each benchmark once at a small size (debug
# builds, report to stdout): it proves they work; `make test-root` runs it as a root test.
TARGET_DIR ?= $(CURDIR)/target
bench:
	@[ "$$(id -u)" = 0 ] || { echo "bench needs root (network namespaces)"; exit 1; }
	$(CARGO) build --release -p trellis-agent -p trellis-operator -p trellis-bench
	TRELLIS_AGENT_BIN=$(TARGET_DIR)/release/trellis-agent TRELLIS_OPERATOR_BIN=$(TARGET_DIR)/release/trellis-operator \
	  $(TARGET_DIR)/release/trellis-bench --profile release --command "make bench" --out docs/benchmarks.md

bench-smoke:
	@[ "$$(id -u)" = 0 ] || { echo "bench-smoke needs root (network namespaces)"; exit 1; }
	$(CARGO) build -p trellis-agent -p trellis-operator -p trellis-bench
	TRELLIS_AGENT_BIN=$(TARGET_DIR)/debug/trellis-agent TRELLIS_OPERATOR_BIN=$(TARGET_DIR)/debug/trellis-operator \
	  $(TARGET_DIR)/debug/trellis-bench --smoke --profile debug --command "make bench-smoke"

clean:
	$(CARGO) clean
