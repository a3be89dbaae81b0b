# The two commands: `make demo` and `make test`. Each sets up what it needs first.
SHELL := /bin/bash
VENV := .venv
# A cue already on PATH wins; otherwise the one setup installed under .tools/bin.
export PATH := $(PATH):$(CURDIR)/.tools/bin

.PHONY: setup peers test demo lint bench clean

# git, ssh-keygen, the venv and `cue` for CUE state repositories. The first time it is
# mostly compiling cue (about 140 s of CPU; 1.5-3 min on 2 cores), then a stamp makes it free.
setup:
	@bash scripts/setup.sh

# What only the tests use besides: a registry server, skopeo, a Gitea, and the peers oras, crane
# and cosign built with Go (a few minutes the first time, then Go's caches).
peers:
	@bash scripts/setup.sh --peers

test: setup peers
	$(VENV)/bin/ruff check reconciler tests bench
	$(VENV)/bin/ruff format --check reconciler tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The demo's state is JSON, so it needs no cue: git, ssh-keygen and the venv only.
demo:
	@bash scripts/setup.sh --demo
	@bash scripts/demo.sh

lint: setup
	$(VENV)/bin/ruff check reconciler tests bench
	$(VENV)/bin/mypy

bench: setup
	$(VENV)/bin/python -m bench

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
