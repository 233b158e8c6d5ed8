PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test reproduce figures bench notebooks lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check lecopt tests

# The tests, and every docstring example in the package (doctests: pyproject testpaths).
test: $(STAMP)
	$(VENV)/bin/ruff check lecopt tests
	$(PY) -m pytest

# Writes only under results/: the checkout stays as it is.
reproduce: $(STAMP)
	$(PY) -m lecopt reproduce --out results

# A maintainer's act: the full run, and its figures and claims table copied into docs/ and
# the README.
figures: $(STAMP)
	$(PY) -m lecopt reproduce --out results --figures-dir docs

bench: $(STAMP)
	$(PY) -m lecopt bench

notebooks: $(STAMP)
	$(PY) -m pip install -q -e '.[notebooks]'
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf $(VENV) results results-quick .pytest_cache
