# Two entry points: `make serve` and `make test`. Both build .venv from nothing on a fresh machine
# and are no-ops for the parts already in place (stamp files inside .venv track what was installed).
PY      := python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
HOST    ?= 127.0.0.1
PORT    ?= 8188
PYTEST_ARGS ?=

.PHONY: serve test lint browser-deps clean

$(VENV)/.torch:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: the pinned CPU wheel, so no later requirement can pull a CUDA build.
	$(BIN)/pip install --quiet $(TORCH)
	touch $@

$(VENV)/.base: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.base pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,distributed]'
	# k-diffusion is only a parity reference; its package __init__ drags in training deps we never use.
	$(BIN)/pip install --quiet --no-deps k-diffusion==0.1.1.post1
	touch $@

browser-deps:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

serve: $(VENV)/.base
	$(BIN)/loom serve --host $(HOST) --port $(PORT)

test: $(VENV)/.test browser-deps lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Lint, format and type checks (settings in pyproject.toml); part of make test.
lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV)
