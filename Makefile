# rwkvkit set-up. Two commands on a fresh machine:
#   make demo   create .venv, install rwkvkit, run the main job
#   make test   create .venv, install rwkvkit with its development dependencies, run every test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
# torch goes in first, pinned: a bare `torch` requirement would resolve to a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test serve lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch-installed: | $(BIN)/python
	$(PIP) install -q $(TORCH)
	touch $@

# runtime + the official package (the demo prints parity against it)
$(VENV)/.run-installed: pyproject.toml $(VENV)/.torch-installed
	$(PIP) install -q -e ".[oracle]"
	@[ -d /usr/share/datasets/fashion-mnist ] || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) || true
	touch $@

# rwkvkit serve: the serve extra (starlette, uvicorn)
$(VENV)/.serve-installed: pyproject.toml $(VENV)/.torch-installed
	$(PIP) install -q -e ".[serve]"
	touch $@

# everything the tests need (and, where apt-get can, Debian's chromium for the chat page's browser test)
$(VENV)/.dev-installed: pyproject.toml $(VENV)/.torch-installed
	$(PIP) install -q -e ".[dev,plot]"
	@[ -d /usr/share/datasets/fashion-mnist ] || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) || true
	@[ -x /usr/bin/chromedriver ] || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1) || true
	touch $@ $(VENV)/.run-installed $(VENV)/.serve-installed

demo: $(VENV)/.run-installed
	$(BIN)/python -m rwkvkit.demo

# the OpenAI-compatible server and chat page on http://127.0.0.1:8000 (options: make serve ARGS="--help")
serve: $(VENV)/.serve-installed
	$(BIN)/rwkvkit serve $(ARGS)

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(VENV)/.dev-installed
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) demo_out .pytest_cache
