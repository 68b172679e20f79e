# Two entry points for a fresh machine (see README): `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: setup run test test-slow lint clean

# torch is pinned to the CPU build that pip finds locally; a looser request pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,lint,slurm]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) -m experiments.run

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

# ruff (lint and format check) over the code and tests, mypy over the library
lint: setup
	$(VENV)/bin/ruff check adaptive_tts experiments hydra_plugins tests notebooks/build.py
	$(VENV)/bin/ruff format --check adaptive_tts experiments hydra_plugins tests notebooks/build.py
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) outputs multirun
