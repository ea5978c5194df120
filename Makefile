# The two commands of the README: `make app` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export AFTZOO_OFFLINE ?= 1

.PHONY: app test test-slow lint install install-test bench

app: install
	$(VENV)/bin/aftzoo app

test: install-test
	$(PY) -m pytest -q

test-slow: install-test
	$(PY) -m pytest -q -m slow

# The linter CI runs before the tests (rules in pyproject.toml).
lint: install-test
	$(VENV)/bin/ruff check .

install:
	VENV=$(VENV) scripts/install.sh

install-test:
	VENV=$(VENV) scripts/install.sh --test

# Each benchmark prints its ratio against a baseline measured in the same run.
bench: install
	$(PY) -m benchmarks.bench_logme
	$(PY) -m benchmarks.bench_extract
	$(PY) -m benchmarks.bench_train_step
	$(PY) -m benchmarks.bench_serve
	$(PY) -m benchmarks.bench_student_teacher
