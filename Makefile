# Two commands on a fresh machine with Python 3.11 and make:
#   make quickstart   creates .venv, installs, runs studies/quickstart.yaml
#   make test         creates .venv if needed, runs the test suite against a local Ray
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install quickstart test test-all smoke bench clean

install: $(STAMP)

# escnn is installed without its dependencies: its py3nj dependency needs a Fortran
# compiler and is only used for SO(3). torchattacks pins an old `requests` that
# Ray's dashboard cannot use, and pyhessian pins nothing useful; both run fine
# with the versions pyproject.toml installs (see docs/INSTALL notes in README).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev,tune,tracking]"
	$(BIN)/pip install -q --no-deps escnn==1.0.11 torchattacks==3.5.1 pyhessian==0.1
	@touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/raystudy run studies/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

smoke: $(STAMP)
	for f in studies/*.yaml; do $(BIN)/raystudy run $$f --smoke --results results/smoke || exit 1; done

# Foolbox is a benchmark-only reference: the `bench` extra installs it.
bench: $(STAMP)
	$(BIN)/pip install -q -e ".[bench]"
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf results/smoke .pytest_cache
