# bkv: the two commands are `make demo` and `make test` (see README.md).
# Both bootstrap first: system packages via apt-get, .venv, Python deps from PyPI.
.PHONY: setup demo test lint unit bench soak clean

VENV := .venv
PY   := $(VENV)/bin/python

setup:
	@./scripts/bootstrap.sh

demo: setup
	@$(PY) -m bkv.demo

lint: setup
	@echo "== ruff check" && $(VENV)/bin/ruff check src tests bench
	@echo "== ruff format --check" && $(VENV)/bin/ruff format --check src tests bench
	@echo "== mypy --strict src" && $(VENV)/bin/mypy --strict src
	@echo "== lint-imports (layer contracts in pyproject.toml)" && $(VENV)/bin/lint-imports --no-cache

unit: setup
	@$(PY) -m pytest -q $(PYTEST_ARGS)

test: lint unit

bench: setup
	@$(PY) -m bench $(BENCH_ARGS)

# The consensus simulator over many seeds (tests/consensus/soak.py; `make test` sweeps 500).
soak: setup
	@$(PY) tests/consensus/soak.py --seeds 10000

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build src/*.egg-info
