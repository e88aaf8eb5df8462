# Two commands a new machine needs: `make demo` (the main job) and `make test` (the suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
TORCH_CPU := torch==2.13.0

.PHONY: setup test lint bench demo clean

setup: $(STAMP)

# Re-run only when the project's dependencies change. torch goes first as the CPU wheel so that
# no dependency pulls a multi-GB CUDA build; machines with their own torch keep it.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_CPU)
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q tests

lint: setup
	$(BIN)/ruff check .

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

demo: setup
	$(BIN)/python -m launch.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) runs mlruns mlflow.db out
