# Two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LOCK := requirements-lock.txt
STAMP := $(VENV)/.installed-$(shell cat $(LOCK) setup.py | sha256sum | cut -c1-16)
export OMP_NUM_THREADS ?= 2

.PHONY: venv demo test lint format bench clean

venv: $(STAMP)

$(STAMP): $(LOCK) setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: venv
	$(PY) tools/demo.py --output demo_output

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: venv lint
	$(PY) -m pytest -q -ra tests

bench: venv
	$(PY) benchmarks/bench_convert.py

clean:
	rm -rf $(VENV) demo_output output .pytest_cache .ruff_cache
