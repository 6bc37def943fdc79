# The same commands on a laptop, in CI and in pre-commit. `make demo` and `make test` install first.
SHELL := /bin/bash
UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := $(HOME)/.local/bin/uv
endif
RUN := $(UV) run --frozen --no-sync

.PHONY: setup demo test test-fast bench bench-fleet lint format clean services services-down

setup:  ## build .venv from uv.lock (quick when nothing changed)
	@test -x "$(UV)" || python3 -m pip install --quiet --user "uv==$(UV_VERSION)"
	@$(UV) sync --frozen --quiet

demo: setup  ## the whole loop on 4 synthetic cities, with a table at the end
	$(RUN) cityml demo

test: setup  ## unit, DAG integrity, integration (Redis, Postgres) and end-to-end tests
	$(RUN) pytest

test-fast: setup  ## unit and DAG tests only
	$(RUN) pytest -m "not integration and not e2e"

bench: setup  ## benchmarks; writes bench/RESULTS.md
	$(RUN) python -m bench.run

bench-fleet: setup  ## 10, 100 and 1,000 synthetic cities through the real stack; writes bench/RESULTS.md (hours; ARGS=--resume keeps finished sizes)
	$(RUN) python -m bench.run --only fleet $(ARGS)

services: setup  ## MLflow server + Airflow (api-server, scheduler, dag-processor, triggerer, 2 Celery workers) over the local Postgres and Redis
	$(RUN) cityml services up

services-down:  ## stop what `make services` started
	$(RUN) cityml services down

lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy cityml training serving monitoring bench

format: setup
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
