# nem-lightning: `make train` installs and trains RNN-EM on static shapes; `make test` installs and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default; GPU users install their own torch first (any torch>=2.4 satisfies the package).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install train test quick bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

train: install
	$(BIN)/nem fit --config configs/shapes.yaml

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -p no:cacheprovider

# while developing: everything but the tests marked slow (multi-process, subprocess and kill tests, the GPU
# check's reduced run, the shipped-weights scores); `make test` (CI) runs them all
quick: install
	$(BIN)/ruff check src tests benchmarks
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

bench: install
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_datasets.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
