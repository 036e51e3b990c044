# Two entry points: `make train` (default experiment on bundled data) and `make test`.
# Both create the virtualenv on first use; only Python 3.11+ and make are needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.installed-test-stamp
# No byte-compiling at install (pip's default): Python compiles what is imported, once; the test
# virtualenv installs in ~1 min instead of ~3.
PIP := $(BIN)/pip install --quiet --no-compile
WORKDIR ?= runs/digits

.PHONY: train test test-slow test-vision bench speech-corpus export-deps export-tf-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e .
	touch $(STAMP)

EXPORT_STAMP := $(VENV)/.installed-export-stamp
JAX2ONNX := jax2onnx==0.17.1

# ONNX export (`jaxdl export --format onnx`): the `export` extra, then jax2onnx without its
# dependencies (its wheel pins an old orbax-checkpoint that it never imports).
$(EXPORT_STAMP): $(STAMP)
	$(PIP) -e ".[export]"
	$(PIP) --no-deps "$(JAX2ONNX)"
	touch $(EXPORT_STAMP)

export-deps: $(EXPORT_STAMP)

# TF SavedModel / TFLite export (`jaxdl export --format savedmodel|tflite`): the `tf` extra
# (TensorFlow, several hundred MB): `make test-slow` installs it for the TF parity tests; `make
# test` does not.
EXPORT_TF_STAMP := $(VENV)/.installed-export-tf-stamp
$(EXPORT_TF_STAMP): $(STAMP)
	$(PIP) -e ".[tf]"
	touch $(EXPORT_TF_STAMP)

export-tf-deps: $(EXPORT_TF_STAMP)

# Tests also need the dev tools, torch (reference schedules/optimisers), libtpu (the
# `jaxdl compile` test AOT-compiles for a TPU topology on this CPU machine) and the ONNX export.
$(TEST_STAMP): $(STAMP) $(EXPORT_STAMP)
	$(PIP) -e ".[dev,tpu,export]"
	touch $(TEST_STAMP)

# Trains, then writes the test split's predictions and error analysis (WORKDIR/analysis).
train: $(STAMP)
	$(BIN)/jaxdl train --config experiments/digits_resnet.py --workdir $(WORKDIR)
	$(BIN)/jaxdl predict --workdir $(WORKDIR)

# The suite without the slow end-to-end runs, compiled at LLVM -O0 (tests/conftest.py): CI.
test: $(TEST_STAMP)
	$(BIN)/ruff check jaxdl tests benchmarks experiments
	$(BIN)/pytest -q -n 2 -m "not slow" --durations=25

# End-to-end runs of the shipped experiments (minutes each): run before resolving an issue.
# Also installs the tf extra, for the SavedModel/TFLite parity tests, and runs test-vision.
test-slow: $(TEST_STAMP) $(EXPORT_TF_STAMP) test-vision
	$(BIN)/pytest -q -m slow

# The torchvision parity tests (every zoo model, DeepLabv3, the weight importer) in their own
# virtualenv with torch 2.14.1 + torchvision 0.29.1 (the `vision` extra: ~5.5 GB, see pyproject).
VISION_VENV ?= .venv-vision
VISION_STAMP := $(VISION_VENV)/.installed-stamp
VISION_TESTS := tests/test_torchvision_import.py tests/test_zoo_mobile.py tests/test_zoo_dense.py \
	tests/test_deeplab.py
$(VISION_STAMP): pyproject.toml
	test -x $(VISION_VENV)/bin/python || $(PYTHON) -m venv $(VISION_VENV)
	$(VISION_VENV)/bin/pip install --quiet --upgrade pip
	$(VISION_VENV)/bin/pip install --quiet -e ".[vision]"
	touch $(VISION_STAMP)

test-vision: $(VISION_STAMP)
	$(VISION_VENV)/bin/python -c "import torchvision"
	$(VISION_VENV)/bin/pytest -q -m "slow or not slow" $(VISION_TESTS)

# The synthesised speech corpus (experiments/speech_conformer.py's data), cached outside the repo;
# installs Debian's espeak-ng and sox first when they are missing (needs root or sudo).
speech-corpus: $(STAMP)
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null || \
		{ SUDO=$$(command -v sudo || true); $$SUDO apt-get update -q && $$SUDO apt-get install -y -q espeak-ng sox; }
	$(BIN)/jaxdl speech-corpus

bench: $(STAMP)
	$(BIN)/python benchmarks/digits_time_to_accuracy.py

clean:
	rm -rf $(VENV) $(VISION_VENV) runs .pytest_cache .ruff_cache
