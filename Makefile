# Two entry points; each creates or updates .venv itself, so they work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench venv constraints

$(STAMP): pyproject.toml constraints.txt
	python3.11 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) ray_jobs/train.py

test: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/train_step.py
	$(PY) bench/inference.py

# After changing dependencies in pyproject.toml: resolve afresh, test, then commit the file.
constraints:
	rm -rf $(VENV)
	python3.11 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable \
	  | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > constraints.tmp
	mv constraints.tmp constraints.txt
	touch $(STAMP)
