# Entry points used by the README and .ci/run. Everything installs itself on a fresh machine that
# has only python3 and pip: torch first, pinned (override: make test TORCH_SPEC=torch==2.11.0),
# then the package built against it without build isolation.
PYTHON     ?= python3
TORCH_SPEC ?= torch==2.13.0
PIP        := $(PYTHON) -m pip
PYTEST_ARGS ?=
ARGS       ?=

.PHONY: install install-test train test bench clean

install:
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "setuptools>=64" wheel ninja
	$(PIP) install -q --no-build-isolation -e ".[plot]"

install-test:
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "setuptools>=64" wheel ninja
	$(PIP) install -q --no-build-isolation -e ".[test]"

train: install
	$(PYTHON) -m rnnfast train $(ARGS)

test: install-test
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

bench: install-test
	$(PYTHON) bench/run.py $(ARGS)

clean:
	rm -rf build *.egg-info rnnfast/_C*.so .pytest_cache .benchmarks
