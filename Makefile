# Every target bootstraps .venv by itself. torch==2.13.0 goes in first so that pip takes the
# CPU wheel; an unpinned torch (pulled by the `train` extra) would fetch a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv demo test test-all bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[cpu,text,train,dev,distributed]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "not gpu"

bench: $(STAMP)
	$(PY) benchmarks/funnel.py

clean:
	rm -rf $(VENV) demo_out bench_out .pytest_cache .hypothesis
