# Every target sets up what it needs: a local virtualenv in .venv, refreshed when pyproject.toml
# changes. Override the interpreter with `make PYTHON=python3.12 test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test docs bench faults lint typecheck unit clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip >/dev/null
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@rm -f $(VENV)/.installed-*; touch $@

demo: $(STAMP)
	@echo "== attempt 1: the pipeline crashes in step 3 (aggregate) =="
	@$(BIN)/python examples/quickstart.py --fresh --fail-at aggregate || echo "(attempt 1 exited with $$?, as planned)"
	@echo
	@echo "== attempt 2: same correlation id, resumes from the checkpoints in ./.ckpt =="
	@$(BIN)/python examples/quickstart.py

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks --json bench-results.json --plots docs/img

faults: $(STAMP)
	$(BIN)/python -m faults

lint: $(STAMP)
	$(BIN)/ruff check ckpt_core integrations tests examples benchmarks faults
	$(BIN)/ruff format --check ckpt_core integrations tests examples benchmarks faults

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck unit

clean:
	rm -rf $(VENV) .ckpt .ckpt-demo .pytest_cache .mypy_cache .ruff_cache
