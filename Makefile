# Two entry points; each creates or updates .venv itself, so they work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench venv constraints postgres

$(STAMP): pyproject.toml constraints.txt
	python3.11 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) ray_jobs/train.py

# The MLflow tests run their tracking server on a real PostgreSQL (tests/fixtures_postgres.py).
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { echo "installing PostgreSQL's server programs (apt-get install postgresql)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

test: $(STAMP) postgres
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	# Two processes: in one long-lived process the full suite ended in a segfault partway
	# through tests/test_faults.py (native state from earlier tests; not yet pinned down).
	$(PY) -m pytest -q $(wildcard tests/test_[a-e]*.py)
	$(PY) -m pytest -q $(wildcard tests/test_[f-z]*.py)

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
