# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv when it is
# missing and installs the project into it (pip install -e .[dev]) before running.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
WORKDIR ?= workdir/demo
# Transparent huge pages for malloc where they help (plfm_jax/hugepages.py): training steps on
# XLA:CPU ran 20-30% faster. glibc reads the tunable only when a process starts, so every command
# started here gets it; PLFM_HUGE_PAGES=0 turns it off.
export GLIBC_TUNABLES := $(shell PYTHONPATH=. $(PYTHON) -m plfm_jax.hugepages 2>/dev/null)

.PHONY: demo test test-fast bench install clean-demo

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

# The inner loop: everything but the tests marked slow (subprocesses, CLIs, kill/resume, the
# benchmark); `make test` and CI run them all.
test-fast: $(INSTALLED)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

# Train-step, inference and input-pipeline benchmark (bench/README.md): about 45 minutes
# on 2 CPU cores; writes bench/results/<machine>.json and prints a table. BENCH_FLAGS=--quick etc.
bench: $(INSTALLED)
	$(PY) -m bench.run $(BENCH_FLAGS)

clean-demo:
	rm -rf $(WORKDIR)
