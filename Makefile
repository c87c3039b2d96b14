# Two commands set up and run everything on a fresh machine (see README):
#   make run    -- install into .venv, then run the main job
#   make test   -- install into .venv, then run the test suite
# OMP_WAIT_POLICY=PASSIVE: PyTorch's default OpenMP busy-waiting makes SVD/eigen calls 15-200x
# slower when anything else runs on a small machine; passive waiting costs nothing measurable.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch: small, and what CI uses. A CUDA machine may install any torch>=2.1 first.
TORCH  ?= torch==2.13.0
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: run test lint install
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)" -e ".[dev]"
	touch $@

run: install
	$(BIN)/manifold-ssl simulate

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
