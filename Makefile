# Two commands on a fresh machine with Python 3.11:
#   make run    create .venv, install dlrun, train the default experiment
#   make test   install if needed, check the layering (lint-imports), run the test suite
#               (a quick loop without the slow tests: make test PYTEST_ARGS='-m "not slow"')
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstall only when the package description changes; sources are installed editable.
STAMP := $(VENV)/.installed

.PHONY: run test install clean signatures

run: $(STAMP)
	$(BIN)/dlrun $(ARGS)

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

# After changing a group option's `_target_` or its signature: the table the config checks read (no torch import).
signatures: $(STAMP)
	$(BIN)/python -c "from dlrun.config.signatures import main; main(['--write'])"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
