# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed
PORT ?= 8000

.PHONY: demo demo-distributed test lint typecheck pytest soak bench bench-resumable docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,unidecode]' --group dev
	touch $(STAMP)

# The demo needs the core, hypercorn and trio only: not the test and docs tool chain.
$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $(DEMO_STAMP)

# The distributed demo: Celery runs the jobs, hypercorn (two processes) streams them.
DIST_STAMP := $(VENV)/.distributed-installed
$(DIST_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[demo,celery,starlette]'
	touch $(DIST_STAMP)

demo: $(DEMO_STAMP)
	@echo "Serving the demo on http://127.0.0.1:$(PORT)  (try: curl -N 'http://127.0.0.1:$(PORT)/progress?steps=10')"
	$(BIN)/hypercorn examples.demo:app --worker-class trio --bind 127.0.0.1:$(PORT)

# redis-server, one Celery worker and two hypercorn processes, on a fresh machine
# (redis-server from scripts/system-deps.sh, installed when run as root).
demo-distributed: $(DIST_STAMP)
	-bash scripts/system-deps.sh
	$(BIN)/python scripts/distributed_demo.py --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# System packages the tests drive (nginx) are installed first when missing and run as root;
# otherwise those tests skip loudly. Best effort here: .ci/run requires them.
pytest: $(STAMP)
	-bash scripts/system-deps.sh
	$(BIN)/pytest

test: lint typecheck pytest

# The load tests at full size (1000 streams, a 2000-client storm...): not part of `make test`.
soak: $(STAMP)
	ASGI_SSE_SOAK=1 $(BIN)/pytest -m soak -s

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/report.py
	$(BIN)/python benchmarks/servers.py
	$(BIN)/python benchmarks/inprocess.py
	$(BIN)/python benchmarks/inprocess.py --anyio
	$(BIN)/python benchmarks/idle.py
	$(BIN)/python benchmarks/resumable.py
	$(BIN)/python benchmarks/engines.py
	$(BIN)/python benchmarks/coalesce.py
	$(BIN)/python benchmarks/instructions.py

# Resumable jobs alone: plain stream vs Jobs in memory vs Jobs on a redis-server it starts.
bench-resumable: $(STAMP)
	$(BIN)/python benchmarks/resumable.py

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis site
