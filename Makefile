# Two entry points; each creates or updates .venv itself, so they work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench venv constraints postgres photos

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

# The real photographs the zoo models train on (data_prep/photos.py names them and their
# Debian packages, about 190 MB); then DAVIS-like clips of them and their shards, data/photos.
photos: $(STAMP)
	@pkgs=$$($(PY) -c 'from data_prep.photos import PACKAGES; print(*PACKAGES)'); \
	  dpkg -s $$pkgs >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkgs; }
	$(PY) -m data_prep photos --out data/photos
	$(PY) -m data_prep davis --root data/photos/davis --out data/photos/shards --shard-size 8

RAY_HEAVY := tests/test_faults.py tests/test_full_disks.py tests/test_node_loss.py \
  tests/test_train_ray.py tests/test_train_rerun.py tests/test_tune.py

test: $(STAMP) postgres
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	# Four pytest processes, two at a time (tests/pair.sh: one in the background, printed
	# after). test_engine.py (OpenVINO) needs a process of its own: in a process that had run
	# the tests before it, the next session-fixture teardown (or, in one long process, a test
	# in test_faults.py) ended in a segfault, exit 139, after every engine test had passed;
	# alone, and after the other tests in their own process, everything exits cleanly. The
	# tests that start Ray Train worker groups again and again (RAY_HEAVY) run beside the
	# other f-z tests: on 2 cores, 30 min instead of 35 min one after the other.
	# test_full_disks.py joined them after a CI whose halves took 1419 s and 1801 s.
	bash tests/pair.sh $(PY) tests/test_engine.py -- \
	  $(filter-out tests/test_engine.py,$(wildcard tests/test_[a-e]*.py))
	bash tests/pair.sh $(PY) $(RAY_HEAVY) -- $(filter-out $(RAY_HEAVY),$(wildcard tests/test_[f-z]*.py))

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
