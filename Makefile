# Quick start: `make demo` and `make test` do all set-up (virtualenv, native build, deps).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
NATIVE := $(shell find ops_native -name '*.c' -o -name '*.h' -o -name '*.pyx' -o -name '*.pxi' -o -name '*.pxd' 2>/dev/null)
PYTEST_ARGS ?=
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all install build demo demo-loop test test-native test-py test-c test-asan test-arm bench lint clean

all: install

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q "setuptools>=77" wheel "Cython>=3.0" "numpy>=1.24"
	touch $@

# Editable install without build isolation; setup.py compiles on every core into build/native-objects,
# so after the install's build `build_ext --inplace` recompiles only what changed.
$(VENV)/.installed: $(VENV)/.deps pyproject.toml setup.py
	$(PY) -m pip install -q --no-compile --no-build-isolation -e '.[test,demo,dashboard]'
	touch $@

$(VENV)/.built: $(VENV)/.installed $(NATIVE)
	$(PY) setup.py -q build_ext --inplace
	touch $@

install: $(VENV)/.built

build: install

# DEMO_DASHBOARD=1 make demo: the same demo, then the dashboard URL, serving until Ctrl-C
demo: install
	$(VENV)/bin/edge-agent demo $(if $(DEMO_DASHBOARD),--dashboard)

# The demo N times in a row (default 20), each a fresh broker and fleet; stops at the first failure.
DEMO_RUNS ?= 20
demo-loop: install
	@for i in $$(seq 1 $(DEMO_RUNS)); do \
		echo "== demo run $$i/$(DEMO_RUNS)"; \
		$(VENV)/bin/edge-agent demo > /tmp/edge-agent-demo-$$i.log 2>&1 || { cat /tmp/edge-agent-demo-$$i.log; echo "demo run $$i failed"; exit 1; }; \
	done; echo "$(DEMO_RUNS) demo runs passed"

test: install test-native test-py

# The three C builds side by side: one's compile fills the cores while another runs its binaries.
test-native:
	@$(MAKE) --no-print-directory -j3 test-c test-asan test-arm

# Tests that start no broker, agent or mDNS responder run on every core; the others one at a time (two
# simulated fleets would collide on loopback mDNS device names, and they measure nothing in parallel).
LOCAL_TESTS := $(sort $(wildcard tests/test_ops_native_*.py tests/test_models_*.py)) tests/test_corpus_native.py \
	tests/test_fuzz_native.py tests/test_fuzz_messages.py tests/test_messages.py tests/test_security.py \
	tests/test_security_gate.py tests/test_cluster.py tests/test_agent_reconcile.py tests/test_backend.py \
	tests/test_inspect.py tests/test_lab_device.py
FLEET_TESTS := $(filter-out $(LOCAL_TESTS),$(sort $(wildcard tests/test_*.py)))

# As root (CI), each fleet-test worker runs in a network namespace of its own (tests/conftest.py), so
# the fleet tests run side by side too, one test file per worker at a time; otherwise serially.
FLEET_WORKERS := $(shell [ "$$(id -u)" = 0 ] && unshare --net true 2>/dev/null && echo $(JOBS))
FLEET_ARGS := $(if $(FLEET_WORKERS),-n $(FLEET_WORKERS) --dist loadfile,)

test-py: install
	$(PY) -m pytest -q -ra -n $(JOBS) $(PYTEST_ARGS) $(LOCAL_TESTS)
	$(if $(FLEET_WORKERS),EDGE_AGENT_TEST_NETNS=1) $(PY) -m pytest -q -ra $(FLEET_ARGS) $(PYTEST_ARGS) $(FLEET_TESTS)

# C kernel tests: native, under ASan+UBSan, and the NEON path under qemu-aarch64.
test-c:
	$(MAKE) -C ops_native/tests -j$(JOBS) run

test-asan:
	$(MAKE) -C ops_native/tests -j$(JOBS) asan

test-arm:
	$(MAKE) -C ops_native/tests -j$(JOBS) arm

bench: install
	$(PY) -m benchmarks

lint: install
	$(VENV)/bin/ruff check edge_agent discovery models ops_native tests benchmarks

clean:
	rm -rf build ops_native/*.so ops_native/_core.c *.egg-info
	$(MAKE) -C ops_native/tests clean
