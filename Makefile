# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv when it is
# missing and installs the project into it (pip install -e .[dev]) before running.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
WORKDIR ?= workdir/demo

.PHONY: demo test bench install clean-demo

$(INSTALLED): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(INSTALLED)

demo: $(INSTALLED)
	$(PY) train.py --config configs/plfm.py:demo --workdir $(WORKDIR)
	$(PY) evaluate.py --config configs/plfm.py:demo --workdir $(WORKDIR) --split test --overwrite
	@echo "demo done: $(WORKDIR)/samples/head.png (cloudy | prediction | ground truth), $(WORKDIR)/eval/test/summary.md"

test: $(INSTALLED)
	$(PY) -m pytest -q -n 2 --dist loadfile

# Train-step, inference and input-pipeline benchmark (issue 7; bench/README.md): about 45 minutes on 2 cores
# on 2 CPU cores; writes bench/results/<machine>.json and prints a table. BENCH_FLAGS=--quick etc.
bench: $(INSTALLED)
	$(PY) -m bench.run $(BENCH_FLAGS)

clean-demo:
	rm -rf $(WORKDIR)
