# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv when it is
# missing and installs the project into it (pip install -e .[dev]) before running.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
WORKDIR ?= workdir/demo

.PHONY: demo test install clean-demo

$(INSTALLED): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(INSTALLED)

demo: $(INSTALLED)
	$(PY) train.py --config configs/plfm.py:demo --workdir $(WORKDIR)
	@echo "demo done: sample panels in $(WORKDIR)/samples/, TensorBoard logs in $(WORKDIR)/tensorboard/"

test: $(INSTALLED)
	$(PY) -m pytest -q

clean-demo:
	rm -rf $(WORKDIR)
