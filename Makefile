# Two commands set up and run everything on a fresh machine (see README):
#   make run    -- install into .venv, then run the main job (MMCR on digits, about a minute)
#   make test   -- install into .venv, then run the test suite
# OMP_WAIT_POLICY=PASSIVE: PyTorch's default OpenMP busy-waiting makes SVD/eigen calls 15-200x
# slower when anything else runs on a small machine; passive waiting costs nothing measurable.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch and torchvision as pinned for CI (the CUDA build; it runs on the CPU as well).
TORCH  ?= torch==2.14.1 torchvision==0.29.1
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: run test lint install
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH) -e ".[dev]"
	touch $@

run: install
	$(BIN)/manifold-ssl pretrain

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
