# Two entry points: `make train` (default experiment on bundled data) and `make test`.
# Both create the virtualenv on first use; only Python 3.11+ and make are needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
WORKDIR ?= runs/digits

.PHONY: train test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/jaxdl train --config experiments/digits_resnet.py --workdir $(WORKDIR)

test: $(STAMP)
	$(BIN)/ruff check jaxdl tests benchmarks experiments
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/digits_time_to_accuracy.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
