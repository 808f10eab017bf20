# Two commands on a fresh machine with Python 3.11:
#   make run    create .venv, install dlrun, train the default experiment
#   make test   install if needed, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstall only when the package description changes; sources are installed editable.
STAMP := $(VENV)/.installed

.PHONY: run test install clean

run: $(STAMP)
	$(BIN)/dlrun $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
